"""The pixel functions of the ops: each an OpenCV (or numpy) call on an array, ``(img,
params) -> img``. The registry in :mod:`pipeline.core.ops` gives each its parameters, halo
and checks. Pure module: arrays in, arrays out.

Every op takes every TIFF sample type its registry entry accepts: OpenCV directly where it
takes the type (the ``CV_*`` lists of :mod:`pipeline.core.dtypes`), else the definition
written next to the op (mostly: the same OpenCV call in float64, rounded and saturated back).
Any number of bands: OpenCV takes up to :data:`CV_MAX_CHANNELS`; beyond, band by band.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core import canny as canny_mod
from pipeline.core import custom as custom_mod
from pipeline.core import dtypes
from pipeline.core import stats as stats_mod
from pipeline.core.dtypes import CV_COLOR, CV_FILTER, CV_MEDIAN, natively
from pipeline.core.opencv import cv2, gaussian_radius
from pipeline.core.reduce import block_reduce, valid_samples

#: the most channels OpenCV's Python binding passes in one array (OpenCV 5.1: "must be in
#: [1, 128]"); pages with more bands run band by band
CV_MAX_CHANNELS = 128




def _per_channel(func: Callable[[np.ndarray], np.ndarray], img: np.ndarray,
                 native: Callable[[int], bool] = lambda ch: ch <= CV_MAX_CHANNELS) -> np.ndarray:
    """Apply ``func`` directly when it takes the channel count, else plane by plane."""
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1 or native(channels):
        return func(img)
    return np.dstack([func(np.ascontiguousarray(img[:, :, c])) for c in range(channels)])


# --- the op functions ---------------------------------------------------------------


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _per_channel(lambda a: cv2.GaussianBlur(a, (0, 0), sigma), x)


def gaussian_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """cv2.GaussianBlur; on a page with a no-data value or a mask (``p["input_nodata"]``,
    ``p["input_valid"]``, given by the tiled path), of the valid samples alone
    (:func:`_valid_blur`), the others kept."""
    return _of_valid(img, p, lambda x: _blur(x, p["sigma"]),
                     lambda x, valid: _valid_blur(x, p["sigma"], valid))


def _of_valid(img: np.ndarray, p: dict[str, Any], plain: Callable[[np.ndarray], np.ndarray],
              of_valid: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """A blur's result on ``img`` (``plain``, OpenCV's, in a type it takes natively): on an
    array with samples left out (:func:`_validity`), ``of_valid`` (of the valid samples
    alone), the others written back (:func:`pipeline.core.stats.keep_nodata`); in either
    case a data sample sent onto the page's no-data value goes to the next value, so that
    whether it reads as no-data does not hang on its tile's holding a no-data sample."""
    valid = _validity(img, p)
    if valid is not None:
        out = natively(lambda x: of_valid(x, valid), img, CV_FILTER)
        return stats_mod.keep_nodata(out, img, ~valid, p)
    out = _per_channel(lambda a: natively(plain, a, CV_FILTER), img)
    nodata = stats_mod.nodata_in_type(p, img.dtype)
    if nodata is not None:  # (every sample here is data)
        np.putmask(out, out == nodata, stats_mod.nodata_step(nodata, img.dtype))
    return out


def _validity(img: np.ndarray, p: dict[str, Any]) -> np.ndarray | None:
    """Which samples the blurs read as data on a page with a no-data value or a mask
    (:func:`pipeline.core.reduce.valid_samples`; NaN left out too, as astropy's convolve
    leaves it out), or None: every one (no no-data value, no mask, or none of the array's
    samples is left out: the blur is OpenCV's, as on any page)."""
    nodata, mask = p.get("input_nodata"), p.get("input_valid")
    if nodata is None and mask is None:
        return None
    valid = _data_samples(img, nodata)
    if mask is not None:
        pixels = valid_samples(img, None, mask)  # (a read-only broadcast over the bands)
        valid = pixels if valid is None else valid & pixels
    return None if valid is None or valid.all() else valid


def _data_samples(img: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Which samples of ``img`` are data by their values, on a page with a no-data value or
    a mask: not ``nodata`` (:func:`pipeline.core.reduce.valid_samples`) and, in a float
    array, not NaN; None: every one (an integer array without a no-data value)."""
    valid = valid_samples(img, nodata)
    if img.dtype.kind == "f" and not (nodata is not None and np.isnan(nodata)):  # (NaN's:
        valid = ~np.isnan(img) if valid is None else valid & ~np.isnan(img)  # done there)
    return valid


#: the side of the blocks :func:`_valid_blur` blurs its sums and weights in (those with a
#: sample next to a left-out one only), or 4 kernel radii when larger (the halo adds at most
#: half); 64 was faster than 32, 128 and 256 on collar tiles (1024 x 1024 RGB, sigma 2)
VALID_BLOCK = 64


def _valid_blur(x: np.ndarray, sigma: float, valid: np.ndarray) -> np.ndarray:
    """The Gaussian blur of the ``valid`` samples of ``x`` alone (normalized convolution):
    ``sum(w * v * x) / sum(w * v)`` over OpenCV's kernel ``w`` (its size for the page's type,
    the border reflected as OpenCV's), both sums blurred in float64 and the quotient
    rounded to ``x``'s type (:func:`pipeline.core.dtypes.saturate`: half to even); where a
    sample's whole window is valid, the OpenCV blur as on a page without no-data, bit for
    bit. The samples left out get a value too (the caller writes them back).

    The quotient is needed only at the valid samples whose window is not all valid
    (``near``): the sums are blurred over the blocks that hold one (:data:`VALID_BLOCK`; a
    row's adjacent blocks as one box, and the rows that repeat it with it), each box read
    with a halo of the kernel's radius clipped at the array's edges. A value at least the
    radius inside a cut edge reads samples inside alone, and at the array's own edges the
    box reflects them as the whole array does, so it is the whole array's blur, bit for bit
    (``tests/test_valid_blur_blocks.py``). When
    every band has the same validity (a mask; a no-data value all of a pixel's bands hold),
    the weights are blurred once, for all bands."""
    k = 2 * gaussian_radius(sigma, x.dtype) + 1
    r = k // 2
    out = _blur(x, sigma)
    v = _pixel_validity(valid)
    whole = _per_channel(lambda a: cv2.erode(a, kernel(k)), v.view(np.uint8))
    near = v & (whole == 0)  # (the border: outside the array is valid to erode)
    h, w = near.shape[:2]
    side = max(VALID_BLOCK, 4 * r)
    flat = near if near.ndim == 2 else _any_band(near)
    busy = np.logical_or.reduceat(np.logical_or.reduceat(flat, range(0, w, side), axis=1),
                                  range(0, h, side), axis=0)  # (columns first: faster)
    for by0, by1, bx0, bx1 in _boxes(busy):
        y0, y1, x0, x1 = by0 * side, min(h, by1 * side), bx0 * side, min(w, bx1 * side)
        ya, yb, xa, xb = max(0, y0 - r), min(h, y1 + r), max(0, x0 - r), min(w, x1 + r)
        part = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
        here, vs, xs = near[y0:y1, x0:x1], v[ya:yb, xa:xb], x[ya:yb, xa:xb]
        sums = _per_channel(lambda a: cv2.GaussianBlur(a, (k, k), sigma), np.where(
            vs if vs.ndim == xs.ndim else vs[:, :, None], xs, np.float64(0.0)))[part]
        norms = _per_channel(lambda a: cv2.GaussianBlur(a, (k, k), sigma),
                             vs.astype(np.float64))[part]
        with np.errstate(divide="ignore", invalid="ignore"):
            quotient = sums[here] / (norms[here] if norms.ndim == sums.ndim
                                     else norms[here][:, None])
        out[y0:y1, x0:x1][here] = dtypes.saturate(quotient, x.dtype)
    return out


def _boxes(busy: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes ``(row0, row1, col0, col1)`` (stops excluded) covering the True cells of a 2-d
    bool array: each row's runs, one box for the rows that repeat a row's pattern."""
    boxes: list[tuple[int, int, int, int]] = []
    row0 = 0
    while row0 < len(busy):
        row1 = row0 + 1
        while row1 < len(busy) and np.array_equal(busy[row1], busy[row0]):
            row1 += 1
        edges = np.flatnonzero(np.diff(np.concatenate(([0], busy[row0].view(np.int8), [0]))))
        boxes += [(row0, row1, c0, c1) for c0, c1 in zip(edges[::2].tolist(),
                                                         edges[1::2].tolist(), strict=True)]
        row0 = row1
    return boxes


def _pixel_validity(valid: np.ndarray) -> np.ndarray:
    """``valid`` as a C-contiguous bool array, (h, w) when every band of a pixel has the
    same validity (a mask, a no-data value in all of a pixel's bands), else as it is."""
    if valid.ndim == 2:
        return np.ascontiguousarray(valid)
    if valid.strides[2] == 0:
        return np.ascontiguousarray(valid[:, :, 0])
    valid = np.ascontiguousarray(valid)
    planes = (cv2.split(valid.view(np.uint8)) if valid.shape[2] <= 4  # (5x a strided compare)
              else [valid[:, :, c] for c in range(valid.shape[2])])
    return planes[0].view(bool) if all(np.array_equal(planes[0], q) for q in planes[1:]) \
        else valid


def _any_band(a: np.ndarray) -> np.ndarray:
    """``a.any(axis=2)`` band plane by band plane (numpy reduces a short last axis slowly)."""
    out = a[:, :, 0].copy()
    for c in range(1, a.shape[2]):
        out |= a[:, :, c]
    return out


def median_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """cv2.medianBlur where it takes the type (or an exactly wider one: int8, float16); else
    the exact median of each window with the border replicated
    (:func:`pipeline.core.dtypes.window_median`), band by band."""
    k = p["ksize"]
    takes = img.dtype.name in CV_MEDIAN or img.dtype.name in dtypes.EXACT_WIDER

    def one(a: np.ndarray) -> np.ndarray:  # one band, or 3 or 4 where medianBlur takes them
        return dtypes.selecting(lambda x: cv2.medianBlur(x, k), a, CV_MEDIAN,
                                lambda x: dtypes.window_median(x, k))
    return _per_channel(one, img, lambda ch: takes and ch in (3, 4))


def kernel(ksize: int) -> np.ndarray:
    return np.ones((ksize, ksize), np.uint8)


def _morph(img: np.ndarray, p: dict[str, Any], largest: bool) -> np.ndarray:
    """cv2.dilate/erode where it takes the type or an exactly wider one (int8 in int16,
    float16 in float32), through float64 for 32-bit integers (a maximum of exactly converted
    values is exact), numpy for 64-bit integers. On a page with a no-data value or a mask
    (:func:`_validity`), the maximum (minimum) of the valid samples alone: the others take
    the value that never wins (the type's lowest, highest; -inf, inf) and are written back
    after; a valid sample's window holds itself, so its result is a valid value (never the
    no-data value: it is none of the valid samples'). A tile with none left out takes the
    plain path (:func:`_left_out`)."""
    left_out = _left_out(img, p)
    if left_out is not None:
        samples, pixels = left_out
        lose = img.dtype.type((-np.inf if largest else np.inf) if img.dtype.kind == "f" else
                              np.iinfo(img.dtype).min if largest else np.iinfo(img.dtype).max)
        # (one scratch copy, the left-out samples set in place: np.where took 10x OpenCV's
        # time, 25x with a mask broadcast over the bands)
        scratch = np.array(img, order="C")
        if samples is not None:
            np.copyto(scratch, lose, where=samples)
        if pixels is not None:
            np.copyto(_by_pixel(scratch), _by_pixel(np.full((1, 1, *img.shape[2:]), lose)),
                      where=pixels)
        out = np.ascontiguousarray(_morph(scratch, {**p, "input_nodata": None,
                                                    "input_valid": None}, largest))
        if samples is not None:  # (written back as they are: stats.keep_nodata's copyto)
            np.copyto(out, img, where=samples)
        if pixels is not None:
            np.copyto(_by_pixel(out), _by_pixel(np.ascontiguousarray(img)), where=pixels)
        return out
    k, n = p["ksize"], p["iterations"]
    if img.dtype.kind in "ui" and img.dtype.itemsize == 8:
        for _ in range(n):
            img = dtypes.window_extreme(img, k, largest)
        return img
    func = cv2.dilate if largest else cv2.erode
    return _per_channel(lambda a: dtypes.selecting(
        lambda x: func(x, kernel(k), iterations=n), a, CV_FILTER,
        lambda x: dtypes.through_float64(lambda y: func(y, kernel(k), iterations=n), x)), img)


def _left_out(img: np.ndarray, p: dict[str, Any]
              ) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The samples of ``img`` that dilate and erode leave out, those :func:`_validity` does,
    as ``(samples, pixels)``: the samples that are no data by their value (of ``img``'s
    shape) and the pixels the mask leaves out (``(h, w)``), each None when there are none;
    None when none is left out (the plain path). Kept apart, so a mask is never broadcast
    over the bands (:func:`_by_pixel` writes whole pixels)."""
    nodata, mask = p.get("input_nodata"), p.get("input_valid")
    if nodata is None and mask is None:
        return None
    data = _data_samples(img, nodata)
    samples = None if data is None or data.all() else ~data
    pixels = None if mask is None or mask.all() else ~mask
    return None if samples is None and pixels is None else (samples, pixels)


def _by_pixel(a: np.ndarray) -> np.ndarray:
    """A C-contiguous (h, w) or (h, w, c) array as (h, w), each element a pixel's c samples
    (a void view: writable, as ``a`` is), so that a mask of pixels selects whole pixels
    without being broadcast over the bands."""
    if a.ndim == 2:
        return a
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[2])))[:, :, 0]


def dilate(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return _morph(img, p, True)


def erode(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return _morph(img, p, False)


def _sharpen(x: np.ndarray, blur: np.ndarray, amount: float) -> np.ndarray:
    """``cv2.addWeighted(x, 1 + amount, blur, -amount, 0)``, band by band beyond
    :data:`CV_MAX_CHANNELS`."""
    if x.ndim == 3 and x.shape[2] > CV_MAX_CHANNELS:
        return np.dstack([_sharpen(np.ascontiguousarray(x[:, :, c]),
                                   np.ascontiguousarray(blur[:, :, c]), amount)
                          for c in range(x.shape[2])])
    return cv2.addWeighted(x, 1 + amount, blur, -amount, 0)


def unsharp_mask(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """``x (1 + amount) - amount * blur``, OpenCV's; on a page with a no-data value or a
    mask, the blur is of the valid samples alone (:func:`_valid_blur`), the others kept."""
    return _of_valid(
        img, p, lambda x: _sharpen(x, cv2.GaussianBlur(x, (0, 0), p["sigma"]), p["amount"]),
        lambda x, valid: _sharpen(x, _valid_blur(x, p["sigma"], valid), p["amount"]))


def invert(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Floats: 1 - v in the type; integers: the bitwise complement (max - v unsigned,
    -1 - v signed: min and max swap)."""
    if img.dtype.kind == "f":
        return img.dtype.type(1.0) - img
    if img.dtype.itemsize == 8:
        return np.invert(img)
    return _per_channel(cv2.bitwise_not, img)


def invert_linear(p: dict[str, Any], dtype: np.dtype) -> tuple[float, float] | None:
    """``(a, b)``: invert maps every value v of an integer ``dtype`` to ``a v + b`` exactly,
    ``max - v`` unsigned (-1, max), ``-1 - v`` signed (-1, -1: the bitwise complement in
    two's complement). None on floats: ``1 - v`` is rounded to the type, which near 1 loses
    a small value's digits (in float32, 1 - 1e-9 is 1), so no scale and offset give its
    physical value back. A band's GDAL scale and offset are kept through it
    (pipeline.core.ops.chain_linear)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return -1.0, float(np.iinfo(dtype).max)
    if dtype.kind == "i":
        return -1.0, -1.0
    return None


def gamma_values(values: np.ndarray, gamma: float, dtype: np.dtype) -> np.ndarray:
    """round(max * (max(v, 0) / max) ** (1/gamma)) in float64, saturated to ``dtype``."""
    top = dtypes.white(dtype)
    return dtypes.saturate(top * (np.clip(values, 0, None) / top) ** (1.0 / gamma), dtype)


def gamma_lut(gamma: float, dtype: np.dtype) -> np.ndarray:
    """The lookup table of ``gamma`` for an 8 or 16-bit integer dtype, in table index order
    (:func:`pipeline.core.dtypes.offset_index`)."""
    return gamma_values(dtypes.all_values(dtype).astype(np.float64), gamma, dtype)


def gamma(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if img.dtype == np.uint8:
        return _per_channel(lambda a: cv2.LUT(a, gamma_lut(p["gamma"], img.dtype)), img)
    if img.dtype.kind in "ui" and img.dtype.itemsize <= 2:
        return gamma_lut(p["gamma"], img.dtype)[dtypes.offset_index(img)]
    if img.dtype.kind in "ui":
        return gamma_values(img.astype(np.float64), p["gamma"], img.dtype)
    return np.power(np.clip(img, 0, None), np.float32(1.0 / p["gamma"])).astype(img.dtype)


def threshold(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """cv2.threshold where it takes the type (float16 through float64); other integers:
    ``max`` where v > floor(value), else 0, as OpenCV compares its integer types."""
    top = dtypes.white(img.dtype)
    if img.dtype.name in CV_FILTER or img.dtype.kind == "f":
        return _per_channel(lambda a: natively(
            lambda x: cv2.threshold(x, p["value"], top, cv2.THRESH_BINARY)[1], a, CV_FILTER), img)
    info = np.iinfo(img.dtype)
    t = int(np.floor(p["value"]))
    if t < info.min or t >= info.max:
        return np.full_like(img, info.max if t < info.min else 0)
    return np.where(img > img.dtype.type(t), img.dtype.type(info.max), img.dtype.type(0))


#: the weights of cv2.COLOR_RGB2GRAY, used in float64 for the types cvtColor lacks
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def to_gray(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return img
    if channels == 2:  # gray + alpha: keep the gray plane
        return np.ascontiguousarray(img[:, :, 0])
    if img.dtype.name not in CV_COLOR:
        rgb = img[:, :, :3].astype(np.float64)
        r, g, b = GRAY_WEIGHTS
        return dtypes.saturate(rgb[:, :, 0] * r + rgb[:, :, 1] * g + rgb[:, :, 2] * b, img.dtype)
    code = cv2.COLOR_RGB2GRAY if channels == 3 else cv2.COLOR_RGBA2GRAY
    return cv2.cvtColor(img, code)


def select_bands(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """The bands listed, in that order (repeats allowed): ``img[:, :, bands]``."""
    if img.ndim == 2:  # one band: it can only be picked again
        return img if len(p["bands"]) == 1 else np.dstack([img] * len(p["bands"]))
    bands = p["bands"]
    return np.ascontiguousarray(img[:, :, bands[0]] if len(bands) == 1 else img[:, :, bands])


def normalized_difference(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """``(a - b) / (a + b)`` of bands a and b, in float64 (the samples converted), rounded
    to float32; 0 where ``a + b == 0``; NaN where band a or b holds ``p["input_nodata"]``
    (the page's no-data value, given by the tiled path: :func:`pipeline.core.ops.with_nodata`).
    The samples are the bands' physical values, ``scale * v + offset``, when
    ``p["input_scaling"]`` (GDAL's scales and offsets of the bands, given the same way) gives
    them an offset or two scales (a scene stored as counts with an offset, as Sentinel-2's
    reflectances since 2022: the index of the counts is not the index of the reflectances)."""
    x, y = img[:, :, p["a"]], img[:, :, p["b"]]
    a, b = x.astype(np.float64), y.astype(np.float64)
    if scaling := p.get("input_scaling"):  # (the bands' GDAL scale and offset)
        (sa, oa), (sb, ob) = scaling[p["a"]], scaling[p["b"]]
        if oa or ob or sa != sb:  # (else the same index: a common scale cancels)
            a, b = a * sa + oa, b * sb + ob
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total == 0, 0.0, (a - b) / total).astype(np.float32)
    nodata = p.get("input_nodata")
    if nodata is not None:
        out[(x == nodata) | (y == nodata)] = np.nan
    return out


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


def canny_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """canny's pre-blur: :func:`gaussian_blur` of ``sigma`` (``cv2.GaussianBlur``; on a page
    with a no-data value or a mask, of the valid samples alone, the others kept, as the
    ``gaussian_blur`` op's); ``img`` itself when ``sigma`` is 0."""
    return gaussian_blur(img, p) if p["sigma"] > 0 else img


def canny(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    low, high = canny_mod.thresholds(p)
    return cv2.Canny(canny_blur(img, p), low, high)


def _area2(block: np.ndarray) -> np.ndarray:
    """OpenCV's means of the whole 2 x 2 blocks of ``block`` (``masked_mean``'s ``area2``)."""
    h, w = block.shape[:2]
    return cv2.resize(block, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def downsample(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """``cv2.resize(img, (w // f, h // f), INTER_AREA)`` of the array cropped to multiples of f
    (a mean of each f x f block); types resize lacks go through float64. On a page with a
    no-data value (``p["input_nodata"]``) or a mask (``p["input_valid"]``, the array's
    pixels' validity), both given by the tiled path: the mean of each block's valid samples
    alone, as GDAL's average resampling makes it (:func:`pipeline.core.reduce.masked_mean`,
    the pyramid levels' formula). ``method`` other than "mean" ("nearest", "mode", "min",
    "max"): one valid sample of each block (:func:`pipeline.core.reduce.block_pick`)."""
    f, method = p["factor"], p.get("method", "mean")
    h, w = img.shape[0] // f, img.shape[1] // f
    if h == 0 or w == 0:
        return np.zeros((h, w, *img.shape[2:]), img.dtype)
    nodata, valid = p.get("input_nodata"), p.get("input_valid")
    if nodata is not None or valid is not None or method != "mean":
        return block_reduce(img[:h * f, :w * f], f, method, nodata,
                            None if valid is None else valid[:h * f, :w * f], area2=_area2)
    crop = img if img.shape[:2] == (h * f, w * f) else np.ascontiguousarray(img[:h * f, :w * f])
    return _per_channel(lambda a: natively(
        lambda x: cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA), a, CV_FILTER), crop)


def custom(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return custom_mod.call(p["function"], img, p["params"])
