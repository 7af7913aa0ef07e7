"""The sample types TIFF carries, which of them each OpenCV call takes, and how the others
are computed (docs/sample-types.md has the table). Pure module: arrays in, arrays out.

Where an OpenCV function does not take a type, the op converts the pixels to float64 (every
value of int8..uint32 and float16 is a float64 exactly; 64-bit integers beyond 2**53 become
the nearest float64), runs the same OpenCV call in float64, and converts back with
:func:`saturate`: integers rounded half to even and clipped to the type's range, floats cast.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: every sample type of TIFF (SampleFormat 1, 2 and 3 with 8 to 64 bits)
ALL = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
       "float32", "float64")
#: GaussianBlur, dilate, erode, threshold, resize (probed on OpenCV 5.1)
CV_FILTER = ("uint8", "uint16", "int16", "float32", "float64")
#: medianBlur (ksize 3 and 5; larger apertures only for uint8)
CV_MEDIAN = ("uint8", "uint16", "int16", "float32")
#: cvtColor RGB(A) -> gray
CV_COLOR = ("uint8", "uint16", "float32")
#: normalize (convertTo with a scale and shift in the type's own arithmetic)
CV_NORMALIZE = ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")
#: histograms are exact and small for these (256 or 65536 bins, signed ones offset)
HISTOGRAM = ("uint8", "int8", "uint16", "int16")


def name(dtype: np.dtype | str) -> str:
    return np.dtype(dtype).name


def white(dtype: np.dtype) -> float:
    """The value white has in this dtype: the integer maximum, or 1.0 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 values -> ``dtype``: integers rounded half to even and clipped to the type's
    range (NaN becomes 0), floats cast (float16 overflows to inf, as a cast does)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    x = np.rint(values)
    x = np.nan_to_num(x, nan=0.0, posinf=np.inf, neginf=-np.inf)
    # float(info.max) of a 64-bit type is 2**63 or 2**64, beyond the type: handle it apart
    top = x >= float(info.max)
    out = np.clip(x, float(info.min), np.nextafter(float(info.max), 0)).astype(dtype)
    out[top] = info.max
    return out


def through_float64(func: Callable[[np.ndarray], np.ndarray], img: np.ndarray) -> np.ndarray:
    """``func`` (an OpenCV call) computed in float64 and converted back with :func:`saturate`."""
    return saturate(func(img.astype(np.float64)), img.dtype)


def natively(func: Callable[[np.ndarray], np.ndarray], img: np.ndarray,
             native: tuple[str, ...]) -> np.ndarray:
    """``func(img)`` when OpenCV takes the type, else through float64."""
    return func(img) if img.dtype.name in native else through_float64(func, img)


#: a wider type OpenCV's filters take that holds every value of these exactly: what ops that
#: select a value (median, dilate, erode) run in, since they select the same value there
EXACT_WIDER = {"int8": np.int16, "float16": np.float32}


def selecting(func: Callable[[np.ndarray], np.ndarray], img: np.ndarray, native: tuple[str, ...],
              other: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A selecting op (its output values are input values): ``func`` where OpenCV takes the
    type or an exactly wider one (int8 -> int16, float16 -> float32), else ``other``."""
    if img.dtype.name in native:
        return func(img)
    wider = EXACT_WIDER.get(img.dtype.name)
    if wider is not None:
        # (NaN in a window may let OpenCV's border value, -FLT_MAX or FLT_MAX, be selected:
        # it becomes -inf or inf in float16, as the cast defines, without a warning)
        with np.errstate(over="ignore"):
            return func(img.astype(wider)).astype(img.dtype)
    return other(img)


def offset_index(img: np.ndarray) -> np.ndarray:
    """The values of an 8 or 16-bit integer image as table indices 0..2**bits - 1: unsigned
    values as they are, signed ones shifted by -min (a view with the sign bit flipped)."""
    if img.dtype.kind == "u":
        return img
    unsigned = np.dtype(f"u{img.dtype.itemsize}")
    return img.view(unsigned) ^ unsigned.type(1 << (8 * img.dtype.itemsize - 1))


def all_values(dtype: np.dtype) -> np.ndarray:
    """Every value of an 8 or 16-bit integer type, in table index order (min..max)."""
    info = np.iinfo(dtype)
    return np.arange(int(info.min), int(info.max) + 1).astype(dtype)


def window_extreme(img: np.ndarray, ksize: int, largest: bool) -> np.ndarray:
    """The maximum (``largest``) or minimum over a ``ksize`` x ``ksize`` window anchored at
    ``ksize // 2``, the window clipped at the border: ``cv2.dilate``/``cv2.erode`` with
    ``ones((ksize, ksize))``, exactly, for types OpenCV lacks (64-bit integers)."""
    info = np.iinfo(img.dtype)
    fill = info.min if largest else info.max
    pick = np.maximum if largest else np.minimum
    before, after = ksize // 2, ksize - 1 - ksize // 2
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (before, after)
        padded = np.pad(out, pad, constant_values=fill)
        n = out.shape[axis]
        acc = padded.take(range(n), axis=axis)
        for k in range(1, ksize):
            acc = pick(acc, padded.take(range(k, k + n), axis=axis))
        out = acc
    return out


#: pixels whose windows :func:`window_median` copies at once (x ksize**2 samples)
MEDIAN_BAND_PIXELS = 64 * 1024


def window_median(img: np.ndarray, ksize: int) -> np.ndarray:
    """The median of each ``ksize`` x ``ksize`` window, the border replicated: what
    ``cv2.medianBlur`` computes, for types it lacks (a selection, so exact for every type).
    One plane (h, w)."""
    r, mid = ksize // 2, ksize * ksize // 2
    padded = np.pad(img, r, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (ksize, ksize))
    out = np.empty_like(img)
    # a band of rows at a time: the windows' copy is ksize**2 times the pixels it covers
    rows = max(1, MEDIAN_BAND_PIXELS // max(1, img.shape[1]))
    for y in range(0, img.shape[0], rows):
        flat = windows[y:y + rows].reshape(-1, img.shape[1], ksize * ksize)
        out[y:y + rows] = np.partition(flat, mid, axis=2)[:, :, mid]
    return out
