"""The pixel functions of the ops: each an OpenCV (or numpy) call on an array, ``(img,
params) -> img``. The registry in :mod:`pipeline.core.ops` gives each its parameters, halo
and checks. Pure module: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core import canny as canny_mod
from pipeline.core import custom as custom_mod
from pipeline.core import stats as stats_mod
from pipeline.core.opencv import cv2


def dtype_max(dtype: np.dtype) -> float:
    """The value white has in this dtype: the integer maximum, or 1.0 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def gaussian_radius(sigma: float, dtype: np.dtype) -> int:
    """Radius of ``cv2.GaussianBlur(img, (0, 0), sigma)``: OpenCV picks the kernel size
    ``round(sigma * (3 if uint8 else 4) * 2 + 1) | 1`` (createGaussianKernels)."""
    factor = 3 if np.dtype(dtype) == np.uint8 else 4
    ksize = round(sigma * factor * 2 + 1) | 1  # Python's round, like cvRound, is half-to-even
    return ksize // 2


def _per_channel(func: Callable[[np.ndarray], np.ndarray], img: np.ndarray,
                 native: tuple[int, ...]) -> np.ndarray:
    """Apply ``func`` directly when OpenCV supports the channel count, else plane by plane."""
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in native:
        return func(img)
    return np.dstack([func(np.ascontiguousarray(img[:, :, c])) for c in range(channels)])


# --- the op functions ---------------------------------------------------------------


def gaussian_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), p["sigma"])


def median_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return _per_channel(lambda a: cv2.medianBlur(a, p["ksize"]), img, (1, 3, 4))


def kernel(ksize: int) -> np.ndarray:
    return np.ones((ksize, ksize), np.uint8)


def dilate(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.dilate(img, kernel(p["ksize"]), iterations=p["iterations"])


def erode(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.erode(img, kernel(p["ksize"]), iterations=p["iterations"])


def unsharp_mask(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    blur = cv2.GaussianBlur(img, (0, 0), p["sigma"])
    return cv2.addWeighted(img, 1 + p["amount"], blur, -p["amount"], 0)


def invert(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if img.dtype.kind == "f":
        return np.float32(1.0) - img
    return cv2.bitwise_not(img)


def gamma_lut(gamma: float, dtype: np.dtype) -> np.ndarray:
    """The lookup table of ``gamma`` for an integer dtype: round(max * (v / max) ** (1/gamma))."""
    top = dtype_max(dtype)
    v = np.arange(int(top) + 1, dtype=np.float64) / top
    return np.clip(np.rint(top * v ** (1.0 / gamma)), 0, top).astype(dtype)


def gamma(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if img.dtype == np.uint8:
        return cv2.LUT(img, gamma_lut(p["gamma"], img.dtype))
    if img.dtype == np.uint16:
        return gamma_lut(p["gamma"], img.dtype)[img]
    return np.power(np.clip(img, 0, None), np.float32(1.0 / p["gamma"])).astype(img.dtype)


def threshold(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    top = dtype_max(img.dtype)
    return cv2.threshold(img, p["value"], top, cv2.THRESH_BINARY)[1]


def to_gray(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return img
    if channels == 2:  # gray + alpha: keep the gray plane
        return np.ascontiguousarray(img[:, :, 0])
    code = cv2.COLOR_RGB2GRAY if channels == 3 else cv2.COLOR_RGBA2GRAY
    return cv2.cvtColor(img, code)


# --- ops with whole-page statistics, clahe, canny, downsample, custom -------------------
#
# ``apply`` of a "stats" or "canny" op treats the array it gets as the whole page (so
# ``apply_chain`` on a page is the reference result); the tiled path never calls it on a tile:
# pipeline.steps.evaluate gathers the page's statistics first (see pipeline.core.stats).


def whole_page_stats(spec: stats_mod.StatsSpec) -> Callable[[np.ndarray, dict[str, Any]],
                                                              np.ndarray]:
    def apply(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
        return spec.apply(img, p, spec.finish(spec.partial(img, p), p, img.dtype))
    return apply


def clahe(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """CLAHE with square cells of ``cell`` pixels from the array's origin. When the array is
    not a whole number of cells it is extended at the bottom and right by mirroring
    (BORDER_REFLECT_101) to the next multiple of the cell, and the result cropped back."""
    cell, (h, w) = p["cell"], img.shape[:2]
    ph, pw = (-h) % cell, (-w) % cell
    ext = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_REFLECT_101) if ph or pw else img
    out = cv2.createCLAHE(p["clip_limit"], ((w + pw) // cell, (h + ph) // cell)).apply(ext)
    return out if not (ph or pw) else np.ascontiguousarray(out[:h, :w])


def canny(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    x = cv2.GaussianBlur(img, (0, 0), p["sigma"]) if p["sigma"] > 0 else img
    low, high = canny_mod.thresholds(p)
    return cv2.Canny(x, low, high)


def downsample(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """``cv2.resize(img, (w // f, h // f), INTER_AREA)`` of the array cropped to multiples of f
    (a mean of each f x f block)."""
    f = p["factor"]
    h, w = img.shape[0] // f, img.shape[1] // f
    if h == 0 or w == 0:
        return np.zeros((h, w, *img.shape[2:]), img.dtype)
    crop = img if img.shape[:2] == (h * f, w * f) else np.ascontiguousarray(img[:h * f, :w * f])
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def custom(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return custom_mod.call(p["function"], img, p["params"])
