"""Whole-page references for every sample type, written out from the table of
docs/sample-types.md with OpenCV and numpy (never with pipeline's own functions), and test
pages of every type.

Where OpenCV takes the type, the reference is the OpenCV call itself; where it does not, the
documented definition: the OpenCV call in float64, rounded half to even and saturated back
(integers) or cast (floats), or the numpy definition written next to the op.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from test_exactness import make_image
from test_exactness import ref_op as exactness_ref

ALL = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
       "float32", "float64")
#: what OpenCV 5.1 takes, per family of calls
FILTER = ("uint8", "uint16", "int16", "float32", "float64")
MEDIAN = ("uint8", "uint16", "int16", "float32")
COLOR = ("uint8", "uint16", "float32")
NORMALIZE = ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")


def typed_image(seed: int, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """make_image's content over the whole range of ``dtype``: its minimum and maximum occur
    (the flat black and white rectangles), 64-bit integers have every bit in use, floats
    reach below 0 and above 1."""
    dt = np.dtype(dtype)
    base = make_image(seed, height, width, channels, "float32").astype(np.float64)
    if dt.kind == "f":
        return (base * 3 - 1).astype(dt)
    u = np.clip((base + 0.1) / 1.2, 0, 1)
    bits = 8 * dt.itemsize
    if bits < 64:
        unsigned = np.rint(u * (2**bits - 1)).astype(f"u{dt.itemsize}")
    else:  # 20 bits from the content, the 44 low bits random (beyond float64's 53)
        q = np.minimum(np.floor(u * 2**20), 2**20 - 1).astype(np.uint64)
        low = np.random.default_rng(seed).integers(0, 2**44, q.shape, dtype=np.uint64)
        unsigned = q * np.uint64(2**44) + low
        unsigned[u >= 1] = np.iinfo(np.uint64).max
        unsigned[u <= 0] = 0
    if dt.kind == "u":
        return unsigned
    sign = unsigned.dtype.type(1 << (bits - 1))
    return (unsigned ^ sign).view(dt)


def top(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else 1.0


def back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 -> dtype: rint + clip for integers, a cast for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    out = np.empty(values.shape, dtype)
    x = np.rint(values)
    hi = x >= float(info.max)
    lo = x <= float(info.min)
    mid = ~(hi | lo)
    out[mid] = x[mid].astype(dtype)
    out[hi], out[lo] = info.max, info.min
    return out


def via64(func, img: np.ndarray, native: tuple[str, ...]) -> np.ndarray:
    if img.dtype.name in native:
        return func(img)
    return back(func(img.astype(np.float64)), img.dtype)


def planes(img: np.ndarray) -> list[np.ndarray]:
    return [img] if img.ndim == 2 else [np.ascontiguousarray(img[:, :, c])
                                         for c in range(img.shape[2])]


def stack(ps: list[np.ndarray]) -> np.ndarray:
    return ps[0] if len(ps) == 1 else np.dstack(ps)


def shifted(img: np.ndarray, k: int, fill: Any | None) -> list[np.ndarray]:
    """The k * k windows' members of each pixel (anchor k // 2), padded with ``fill`` (None:
    the border replicated)."""
    a, b = k // 2, k - 1 - k // 2
    pad = [(a, b), (a, b)] + [(0, 0)] * (img.ndim - 2)
    padded = np.pad(img, pad, mode="edge") if fill is None else \
        np.pad(img, pad, constant_values=fill)
    h, w = img.shape[:2]
    return [padded[dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)]


def ref_op(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    name, dt = p["op"], img.dtype
    if name == "gaussian_blur":
        return via64(lambda x: cv2.GaussianBlur(x, (0, 0), p["sigma"]), img, FILTER)
    if dt.name == "float16" and name in ("median_blur", "dilate", "erode"):
        # the documented definition: OpenCV on float32 (the same as exact, but with NaN)
        with np.errstate(over="ignore"):  # OpenCV's border value selected (NaN): +-inf
            return ref_op(img.astype(np.float32), p).astype(dt)
    if name == "median_blur":
        k = p["ksize"]
        if dt.name in MEDIAN:
            return stack([cv2.medianBlur(c, k) for c in planes(img)])
        return np.sort(np.stack(shifted(img, k, None)), axis=0)[k * k // 2]
    if name in ("dilate", "erode"):
        k, n = p.get("ksize", 3), p.get("iterations", 1)
        if dt.kind in "ui" and dt.itemsize == 8:
            info = np.iinfo(dt)
            for _ in range(n):
                members = np.stack(shifted(img, k, info.min if name == "dilate" else info.max))
                img = members.max(axis=0) if name == "dilate" else members.min(axis=0)
            return img
        func = cv2.dilate if name == "dilate" else cv2.erode
        return via64(lambda x: func(x, np.ones((k, k), np.uint8), iterations=n), img, FILTER)
    if name == "unsharp_mask":
        a = p.get("amount", 1.0)
        return via64(lambda x: cv2.addWeighted(x, 1 + a, cv2.GaussianBlur(x, (0, 0), p["sigma"]),
                                               -a, 0), img, FILTER)
    if name == "invert":
        if dt.kind == "f":
            return (1 - img.astype(np.float64)).astype(dt)
        return (np.iinfo(dt).min + np.iinfo(dt).max - img.astype(object)).astype(dt)
    if name == "gamma":
        if dt.kind == "f":
            return np.power(np.clip(img, 0, None), np.float32(1.0 / p["gamma"])).astype(dt)
        t = top(dt)
        return back(t * (np.clip(img.astype(np.float64), 0, None) / t) ** (1.0 / p["gamma"]), dt)
    if name == "threshold":
        if dt.name in FILTER or dt.kind == "f":
            return via64(lambda x: cv2.threshold(x, p["value"], top(dt), cv2.THRESH_BINARY)[1],
                         img, FILTER)
        bound = int(np.floor(p["value"]))
        return np.where(img.astype(object) > bound, np.iinfo(dt).max, 0).astype(dt)
    if name == "to_gray":
        if img.ndim == 2 or img.shape[2] < 3 or dt.name in COLOR:
            return exactness_ref(img, p)  # the plane itself, or cv2.cvtColor
        x = img.astype(np.float64)
        return back(0.299 * x[:, :, 0] + 0.587 * x[:, :, 1] + 0.114 * x[:, :, 2], dt)
    if name == "normalize":
        if dt.name in NORMALIZE:
            return cv2.normalize(img, None, 0, top(dt), cv2.NORM_MINMAX)
        lo, hi = float(img.min()), float(img.max())
        scale = top(dt) * (1.0 / (hi - lo) if hi - lo > np.finfo(np.float64).eps else 0.0)
        return back(img.astype(np.float64) * scale + (-lo * scale), dt)
    if name == "percentile_stretch":
        lo, hi = (float(v) for v in np.percentile(img, (p.get("p_low", 1.0),
                                                        p.get("p_high", 99.0)), method="lower"))
        v = img.astype(np.float64)
        if hi == lo:
            return np.where(v > lo, top(dt), 0).astype(dt)
        return np.clip(np.rint((v - lo) / (hi - lo) * top(dt)), 0, top(dt)).astype(dt)
    if name == "equalize_hist":
        return cv2.equalizeHist(img)
    if name == "otsu_threshold":
        return cv2.threshold(img, 0, top(dt), cv2.THRESH_BINARY | cv2.THRESH_OTSU)[1]
    if name == "downsample":
        f = p["factor"]
        h, w = img.shape[0] // f, img.shape[1] // f
        crop = np.ascontiguousarray(img[:h * f, :w * f])
        return via64(lambda x: cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA), crop, FILTER)
    if name in ("rotate", "flip"):  # OpenCV where it takes the page, else numpy's
        code, k = {90: (cv2.ROTATE_90_CLOCKWISE, -1), 180: (cv2.ROTATE_180, 2),
                   270: (cv2.ROTATE_90_COUNTERCLOCKWISE, 1), "horizontal": (1, None),
                   "vertical": (0, None)}[p.get("angle", p.get("axis"))]
        if (img.ndim == 2 or img.shape[2] <= 4) and dt.name != "int64":  # (cv2: int64 -> int32)
            return cv2.rotate(img, code) if name == "rotate" else cv2.flip(img, code)
        if name == "rotate":
            return np.ascontiguousarray(np.rot90(img, k))
        return np.ascontiguousarray(np.flip(img, code))  # (cv2.flip 0: rows, 1: columns)
    if name == "crop":
        return np.ascontiguousarray(img[p["y"]:p["y"] + p["height"], p["x"]:p["x"] + p["width"]])
    raise AssertionError(f"no reference for {name}")


def valid_mean(img: np.ndarray, f: int, nodata: float) -> np.ndarray:
    """``downsample`` by ``f`` of a page whose no-data value is ``nodata`` (GDAL's average,
    docs/manifest-and-ops.md), written out: each f x f block's samples that are not
    ``nodata`` (not NaN for NaN), floats summed block column by block column in float64
    (-0.0 for those left out) over their count n, integers ``(s + n // 2) // n``; ``nodata``
    where n is 0."""
    h, w = img.shape[0] // f, img.shape[1] // f
    crop = img[:h * f, :w * f]
    ok = np.isnan(crop) if np.isnan(nodata) else crop == crop.dtype.type(nodata)
    ok = ~ok
    floats = img.dtype.kind == "f"
    s = np.full((h, w) + img.shape[2:], -0.0 if floats else 0,
                np.float64 if floats else np.int64)
    n = np.zeros(s.shape, np.int64)
    for dx in range(f):
        for dy in range(f):
            good = ok[dy::f, dx::f]
            s = s + np.where(good, crop[dy::f, dx::f], -0.0 if floats else 0)
            n += good
    none = n == 0
    n[none] = 1
    out = s / n if floats else (s + n // 2) // n
    out[none] = nodata
    return out.astype(img.dtype)


#: the most channels OpenCV's Python binding takes in one array; ops are per band
CV_CHANNELS = 128
#: ops whose statistics are over all channels: on more than CV_CHANNELS, the page's samples
#: as one plane (the same statistics, the same value for each sample)
ALL_CHANNELS = ("normalize", "percentile_stretch")


def reference(page: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    img = np.ascontiguousarray(page)
    for p in ops:
        if img.ndim == 3 and img.shape[2] > CV_CHANNELS and p["op"] in ALL_CHANNELS:
            img = ref_op(img.reshape(img.shape[0], -1), p).reshape(img.shape)
        elif img.ndim == 3 and img.shape[2] > CV_CHANNELS:
            img = stack([ref_op(c, p) for c in planes(img)])
        else:
            img = ref_op(img, p)
        assert img.dtype == page.dtype, (p, img.dtype)
    return img
