"""The point ops whose table depends on the whole page: equalize_hist, otsu_threshold,
normalize, percentile_stretch.

Each is computed exactly as in three steps, so the result is bit-identical to one call on the
whole page whatever the tiling:

1. ``partial``: per tile, statistics of the core pixels that reach the op (a histogram of
   256 or 65536 bins, or the minimum and maximum);
2. ``combine`` + ``finish``: the partial statistics of the page are added up (min/max taken)
   and turned into the op's *state*: a lookup table, or a scale and shift for float32;
3. ``apply``: per haloed tile, the state is applied pixel by pixel.

With ``per_band`` (percentile_stretch, normalize: :func:`per_band_option`) each band goes
through the three steps as a page of its own, its statistics stacked on a first axis.

The formulas below replicate OpenCV's own arithmetic (float32 where OpenCV computes in float,
double where it computes in double), checked against the OpenCV calls in
``tests/test_global_ops.py``.

Pure module: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core import dtypes
from pipeline.core.opencv import cv2
from pipeline.core.record import record
from pipeline.core.reduce import valid_samples

State = dict[str, np.ndarray]


@record(frozen=True)
class StatsSpec:
    """How one op gathers, reduces and applies its statistics."""

    #: statistics of the core pixels of one tile (never called on an empty array)
    partial: Callable[[np.ndarray, dict[str, Any]], State]
    #: the reduced statistics of a page -> the op's state
    finish: Callable[[State, dict[str, Any], np.dtype], State]
    #: the op on a tile, given the page's state
    apply: Callable[[np.ndarray, dict[str, Any], State], np.ndarray]


def combine(parts: list[State]) -> State:
    """Reduce partial statistics: histograms and counts add up, ``min``/``max`` (and
    ``data_min``/``data_max``) are taken."""
    out: State = {}
    for part in parts:
        for key, value in part.items():
            value = np.asarray(value)
            if key not in out:
                out[key] = value.copy()
            elif key in ("min", "data_min"):  # (NaN: a tile with no other value)
                out[key] = np.fmin(out[key], value)
            elif key in ("max", "data_max"):
                out[key] = np.fmax(out[key], value)
            else:
                out[key] = out[key] + value
    return out


def _top(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


def histogram(img: np.ndarray) -> np.ndarray:
    """Counts of every value of an 8 or 16-bit integer image (all channels), int64, one bin
    per value of the type from its minimum (signed types: bin ``v - min``)."""
    bins = 1 << (8 * img.dtype.itemsize)
    return np.bincount(dtypes.offset_index(img).ravel(), minlength=bins).astype(np.int64)


def unmasked(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """The samples of ``img`` at the pixels its carried mask (``p["input_valid"]``, (h, w)
    bool, given by the tiled path: pipeline.steps.evaluate) marks valid, as a flat array;
    ``img`` itself when the page has no mask. The statistics leave the others out, as they
    leave out the no-data value."""
    mask = p.get("input_valid")
    return img if mask is None else img[valid_samples(img, None, mask)]


def keep_masked(out: np.ndarray, img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """``out`` (a table's result on ``img``: no-data already kept, :func:`keep_nodata_lut`)
    with the masked-out samples (``p["input_valid"]``) written back as ``img`` holds them
    (:func:`keep_nodata`, nothing moved: the table avoided the no-data value where it
    should); ``out`` as it is on a page without a mask."""
    mask = p.get("input_valid")
    if mask is None:
        return out
    return keep_nodata(out, img, ~valid_samples(img, None, mask), p, avoid=False)


#: the most pixels of a tile whose histogram OpenCV counts (:func:`_calchist`): calcHist
#: counts in int32 and returns float32 counts, exact up to 2**24 in a bin
CALCHIST_PIXELS = 1 << 24
#: the band counts for which OpenCV's histogram under the mask is faster than the copy of the
#: valid samples and its np.bincount (measured on 1024 x 1024 tiles, a swath mask: uint8 2-12x
#: faster at 1 to 16 bands; uint16 1.8-3.6x at 2 to 8, but slower at 1: calcHist's generic
#: path computes each 16-bit sample's bin in double)
CALCHIST_BANDS = {"uint8": range(1, 17), "uint16": range(2, 9)}


def _calchist(img: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """:func:`histogram` of the samples of ``img`` at the pixels ``mask`` ((h, w) bool, the
    page's carried mask) marks valid, counted by ``cv2.calcHist`` under the mask (its bytes
    as calcHist's uint8 mask: no copy of the valid samples), band by band, where that is
    exact and faster (:data:`CALCHIST_BANDS`, :data:`CALCHIST_PIXELS`: each bin's float32
    count is exact; uniform ranges [0, 2**bits) with a bin a value: bin = value); None where
    it is not (no mask, other types, signed, floats: :func:`unmasked` and np.bincount)."""
    bands = img.shape[2] if img.ndim == 3 else 1
    if (mask is None or mask.dtype != bool or mask.shape != img.shape[:2]
            or not img.dtype.isnative or bands not in CALCHIST_BANDS.get(img.dtype.name, ())
            or mask.size > CALCHIST_PIXELS):
        return None
    bins = 1 << (8 * img.dtype.itemsize)
    weights = mask.view(np.uint8)
    hist = np.zeros(bins, np.int64)
    for band in range(bands):
        hist += cv2.calcHist([img], [band], weights, [bins], [0, bins]).ravel().astype(np.int64)
    return hist


def _hist_partial(img: np.ndarray, p: dict[str, Any]) -> State:
    """:func:`histogram` of the valid samples (:func:`unmasked`): OpenCV's count under the
    mask where it is exact and faster (:func:`_calchist`), the same counts."""
    hist = _calchist(img, p.get("input_valid"))
    return {"hist": histogram(unmasked(img, p)) if hist is None else hist}


def data_histogram(hist: np.ndarray, p: dict[str, Any], dtype: np.dtype) -> np.ndarray:
    """The page's histogram without its no-data value's bin (``p["input_nodata"]``, the
    value at the op's input, given by the tiled path: :func:`pipeline.core.ops.with_nodata`),
    so that the statistics are of the pixels with data, as GDAL's are; the whole histogram
    when the page has no such value, or holds nothing else. A page whose every pixel its
    mask leaves out (an empty histogram) counts as one pixel of bin 0: its table is never
    used (every pixel is written back, :func:`keep_masked`), but it is one."""
    if not np.any(hist):
        hist = np.zeros(len(hist), np.int64)
        hist[0] = 1
        return hist
    nodata = nodata_in_type(p, dtype)
    if nodata is None:  # (NaN: no bin of an integer page)
        return hist
    index = nodata - int(np.iinfo(dtype).min)
    if hist[index] == np.asarray(hist).sum():
        return hist
    hist = np.array(hist, copy=True)
    hist[index] = 0
    return hist


def nodata_step(nodata: float, dtype: np.dtype) -> Any:
    """The value next to the no-data value ``nodata`` that a data pixel the op would send onto
    it takes instead (so that it stays data): one above, or one below at the type's
    maximum (floats: the next float up, or down from 1.0, the top of normalize's output)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        toward = -np.inf if nodata >= dtypes.white(dtype) else np.inf
        return np.nextafter(dtype.type(nodata), dtype.type(toward))
    return dtype.type(nodata - 1 if nodata == np.iinfo(dtype).max else nodata + 1)


def nodata_in_type(p: dict[str, Any], dtype: np.dtype) -> float | None:
    """The op's input no-data value (``p["input_nodata"]``) when it is a value of ``dtype``'s,
    else None (NaN too: it stays NaN through the ops' formulas, and an integer page has
    none)."""
    nodata = p.get("input_nodata")
    if nodata is None or np.isnan(nodata):
        return None
    if np.dtype(dtype).kind == "f":
        return float(nodata)
    limits = np.iinfo(dtype)
    return int(nodata) if float(nodata).is_integer() and limits.min <= nodata <= limits.max \
        else None


def keep_nodata_lut(lut: np.ndarray, p: dict[str, Any], dtype: np.dtype,
                    avoid: bool = True) -> np.ndarray:
    """An op's table (in table index order) with the no-data value (``p["input_nodata"]``)
    written back unchanged, so that GDAL_NODATA still marks the pixels without data after the
    op (:attr:`pipeline.core.ops.Op.keeps_nodata`); ``avoid``: the values the table sends
    onto it go to the next value (:func:`nodata_step`), so that no data pixel reads as
    no-data."""
    nodata = nodata_in_type(p, dtype)
    if nodata is None:
        return lut
    lut = np.array(lut, copy=True)
    if avoid:
        lut[lut == nodata] = nodata_step(nodata, dtype)
    lut[nodata - int(np.iinfo(dtype).min)] = nodata
    return lut


def keep_nodata(out: np.ndarray, img: np.ndarray, none: np.ndarray,
                p: dict[str, Any], avoid: bool = True) -> np.ndarray:
    """``out``, an op's result on ``img``, with the samples ``none`` marks (no data: the
    no-data value, NaN or a masked-out fill) written back as ``img`` holds them, and the data
    samples it sent onto the no-data value (``p["input_nodata"]``, :func:`nodata_in_type`)
    moved to the next value (:func:`nodata_step`), as :func:`keep_nodata_lut` does to a
    table: GDAL_NODATA still marks the pixels without data, and only them (``avoid`` False:
    none moved, as ``keep_nodata_lut``'s). In place."""
    nodata = nodata_in_type(p, img.dtype)
    if nodata is not None and avoid:
        moved = out == nodata
        moved &= ~none
        np.putmask(out, moved, nodata_step(nodata, img.dtype))
    # (copyto, not out[none] = img[none]: 5x faster, 50x on a mask broadcast over the bands)
    np.copyto(out, img, where=none)
    return out


def apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut`` (in table index order, see pipeline.core.dtypes.offset_index) on an 8 or
    16-bit integer image."""
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] <= 128):  # cv2's limit
        return cv2.LUT(img, lut)
    return lut[dtypes.offset_index(img)]


def _lut_apply(img: np.ndarray, p: dict[str, Any], state: State) -> np.ndarray:
    return keep_masked(apply_lut(img, state["lut"]), img, p)


# --- equalize_hist --------------------------------------------------------------------


def equalize_lut(hist: np.ndarray) -> np.ndarray:
    """The table of ``cv2.equalizeHist`` for a page with this 256-bin histogram.

    OpenCV (histogram.cpp, EqualizeHistLut_Invoker): ``i`` = the first non-empty bin; if it
    holds every pixel the page becomes ``i``; else ``scale = 255.f / (total - hist[i])`` in
    float and ``lut[j] = saturate_cast<uchar>(sum_j * scale)`` for j > i, where ``sum_j`` is
    the count of pixels in bins (i, j] converted to float: float32 arithmetic, rounded half
    to even. (OpenCV counts in ``int``: pages of 2**31 pixels or more overflow it there.)
    """
    hist = np.asarray(hist, np.int64)
    total = int(hist.sum())
    i = int(np.flatnonzero(hist)[0])
    if hist[i] == total:
        return np.full(256, i, np.uint8)
    scale = np.float32(255.0) / np.float32(total - int(hist[i]))
    sums = np.cumsum(hist) - np.cumsum(hist)[i]
    lut = np.zeros(256, np.uint8)
    lut[i + 1:] = np.clip(np.rint(sums[i + 1:].astype(np.float32) * scale), 0, 255)
    return lut


def _equalize_finish(st: State, p: dict[str, Any], dtype: np.dtype) -> State:
    return {"lut": keep_nodata_lut(equalize_lut(data_histogram(st["hist"], p, dtype)), p,
                                   dtype)}


# --- otsu_threshold ---------------------------------------------------------------------

_FLT_EPSILON = float(np.finfo(np.float32).eps)


def otsu_threshold(hist: np.ndarray) -> int:
    """The threshold ``cv2.threshold(..., THRESH_OTSU)`` picks for a page with this 256-bin
    (uint8) or 65536-bin (uint16) histogram: OpenCV's getThreshVal_Otsu, step by step in
    double precision (including its ``mu1 *= q1`` before the bins it skips)."""
    counts = [int(c) for c in hist]
    scale = 1.0 / sum(counts)
    mu = 0.0
    for i, c in enumerate(counts):
        mu += i * float(c)
    mu *= scale
    mu1 = q1 = max_sigma = 0.0
    max_val = 0
    for i, c in enumerate(counts):
        p_i = c * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma = sigma
            max_val = i
    return max_val


def _otsu_finish(st: State, p: dict[str, Any], dtype: np.dtype) -> State:
    t = otsu_threshold(data_histogram(st["hist"], p, dtype))
    top = _top(dtype)
    lut = np.where(np.arange(top + 1) > t, top, 0).astype(dtype)
    # (its classes stay 0 and the maximum: a no-data value of either marks that class too)
    return {"lut": keep_nodata_lut(lut, p, dtype, avoid=False), "threshold": np.array([t])}


# --- normalize ----------------------------------------------------------------------------


def _minmax_partial(img: np.ndarray, p: dict[str, Any]) -> State:
    """The minimum and maximum, in the image's own type (exact for 64-bit integers too), of
    the values that are not NaN (NaN if there are none); and, on a page with a no-data value
    (``p["input_nodata"]``), ``data_min`` and ``data_max``: those of the values that are not
    it either (none when the tile holds no other value). On a masked page, of the valid
    pixels' samples alone (:func:`unmasked`); where the tile has none, the identities of
    :func:`combine`'s reduction (:func:`_no_data_yet`). Where OpenCV counts the valid
    samples' histogram (:func:`_calchist`: uint8, uint16), its first and last bins that are
    not empty (:func:`_histogram_extremes`), with no copy of the samples."""
    hist = _calchist(img, p.get("input_valid"))
    if hist is not None:
        return _histogram_extremes(hist, p, img.dtype)
    img = unmasked(img, p)
    if not img.size:
        return {k: _no_data_yet(k, img.dtype) for k in ("min", "max")}
    state = {"min": np.array([np.fmin.reduce(img, axis=None)]),
             "max": np.array([np.fmax.reduce(img, axis=None)])}
    nodata = nodata_in_type(p, img.dtype)
    if nodata is None:
        return state
    if nodata not in (state["min"][0], state["max"][0]):  # (NaN: never; fmin skips it)
        # inside the range, or absent: leaving it out moves neither end (no copy of the tile)
        state["data_min"], state["data_max"] = state["min"], state["max"]
    elif (data := img[img != nodata]).size:
        state["data_min"] = np.array([np.fmin.reduce(data)])
        state["data_max"] = np.array([np.fmax.reduce(data)])
    return state


def _histogram_extremes(hist: np.ndarray, p: dict[str, Any], dtype: np.dtype) -> State:
    """:func:`_minmax_partial` of the samples of an unsigned 8 or 16-bit tile counted by
    ``hist`` (bin = value): its first and last bins that are not empty (and those but the
    no-data value's: ``data_min``, ``data_max``, none when it holds no other value)."""
    full = np.flatnonzero(hist)
    if not full.size:
        return {k: _no_data_yet(k, dtype) for k in ("min", "max")}
    state = {"min": np.array([full[0]], dtype), "max": np.array([full[-1]], dtype)}
    nodata = nodata_in_type(p, dtype)
    if nodata is not None and (data := full[full != nodata]).size:
        state["data_min"] = np.array([data[0]], dtype)
        state["data_max"] = np.array([data[-1]], dtype)
    return state


def normalize_state(smin: float, smax: float, dtype: np.dtype) -> State:
    """What ``cv2.normalize(page, None, 0, max, NORM_MINMAX)`` applies to each pixel of a page
    whose minimum and maximum (over all channels) are ``smin`` and ``smax``.

    8 and 16-bit integers: the table of OpenCV's own conversion, made by normalising the
    values ``smin..smax`` (an array with the page's minimum and maximum, hence the same scale
    and shift). float32: ``scale = (float)((1 - 0) * (1 / (smax - smin)))`` (0 when the range
    is below DBL_EPSILON) and ``shift = (float)0 - (float)(smin * scale)``, applied as
    ``(float)(v * scale + shift)`` with one rounding (as OpenCV's fused multiply-add).
    int32, float64: OpenCV itself, on each tile's values bracketed by the page's minimum and
    maximum (:func:`_opencv_normalize`). uint32, int64, uint64, float16 (OpenCV lacks them):
    ``scale = max * (1 / (smax - smin))`` (0 below DBL_EPSILON), ``shift = -smin * scale``
    and ``v * scale + shift``, all in float64, saturated to the type.
    """
    dtype = np.dtype(dtype)
    top = dtypes.white(dtype)
    if dtype.name in dtypes.HISTOGRAM:
        lo, hi = int(smin), int(smax)
        values = np.arange(lo, hi + 1).astype(dtype).reshape(1, -1)
        lut = np.zeros(1 << (8 * dtype.itemsize), dtype)
        lut[dtypes.offset_index(values.ravel())] = cv2.normalize(values, None, 0, top,
                                                                 cv2.NORM_MINMAX).ravel()
        return {"lut": lut}
    if dtype.name in dtypes.CV_NORMALIZE and dtype.name != "float32":
        return {"min": np.array([smin], dtype), "max": np.array([smax], dtype)}
    if dtype.name != "float32":
        span = float(smax) - float(smin)
        scale = top * (1.0 / span if span > np.finfo(np.float64).eps else 0.0)
        return {"scale": np.array([scale]), "shift": np.array([-float(smin) * scale])}
    smin, smax = float(smin), float(smax)
    span = smax - smin
    scale = (1.0 - 0.0) * (1.0 / span if span > np.finfo(np.float64).eps else 0.0)
    scale32 = np.float32(scale)
    shift32 = np.float32(np.float32(0.0) - np.float32(smin * float(scale32)))
    return {"scale": np.array([scale32], np.float32), "shift": np.array([shift32], np.float32)}


def _normalize_finish(st: State, p: dict[str, Any], dtype: np.dtype) -> State:
    """The state of the page's minimum and maximum: of its data (the values that are not its
    no-data value, ``data_min``/``data_max``) when it has any, as the histogram ops'
    statistics are (:func:`data_histogram`). An integer page whose every pixel its mask
    leaves out (its minimum above its maximum: :func:`_no_data_yet`) takes the type's lowest
    value for both: its state is never used (every pixel is written back), but it is one."""
    data = "data_min" in st and not np.isnan(st["data_min"][0])
    lo, hi = (st["data_min"], st["data_max"]) if data else (st["min"], st["max"])
    if np.dtype(dtype).kind != "f" and lo[0] > hi[0]:
        lo = hi = np.array([np.iinfo(dtype).min], dtype)
    state = normalize_state(lo[0], hi[0], dtype)
    if "lut" in state:
        state["lut"] = keep_nodata_lut(state["lut"], p, dtype)
    return state


def _normalize_apply(img: np.ndarray, p: dict[str, Any], state: State) -> np.ndarray:
    if "lut" in state:
        return keep_masked(apply_lut(img, state["lut"]), img, p)
    if "min" in state:
        out = _opencv_normalize(img, state["min"], state["max"])
    else:
        scale, shift = float(state["scale"][0]), float(state["shift"][0])
        if img.dtype == np.float32:
            out = (img.astype(np.float64) * scale + shift).astype(np.float32)
        else:
            out = dtypes.saturate(img.astype(np.float64) * scale + shift, img.dtype)
    nodata = nodata_in_type(p, img.dtype)
    if nodata is not None:  # (as keep_nodata_lut does to a table)
        keep_nodata(out, img, img == nodata, p)
    return keep_masked(out, img, p)


def _opencv_normalize(img: np.ndarray, smin: np.ndarray, smax: np.ndarray) -> np.ndarray:
    """OpenCV's normalize of a tile of a page whose extremes are ``smin`` and ``smax``: on
    the tile's values followed by the extremes, so that OpenCV takes the page's scale and
    shift. Values beyond them (the outer ring of a halo that an op before could not make
    exact; it is cut off later) are clipped to them first, and NaN, which OpenCV's minimum
    and maximum may or may not skip, is set to the minimum and put back after: NaN stays
    NaN, the rest is scaled by the range of the other values."""
    if np.isnan(smin[0]):  # a page of NaN only
        return img.copy()
    values = np.clip(img.ravel(), smin[0], smax[0])
    nan = np.isnan(values) if img.dtype.kind == "f" else None
    if nan is not None and nan.any():
        values[nan] = smin[0]
    else:
        nan = None
    flat = np.concatenate([values, smin, smax]).reshape(1, -1)
    out = cv2.normalize(flat, None, 0, dtypes.white(img.dtype), cv2.NORM_MINMAX).ravel()[:-2]
    if nan is not None:
        out[nan] = np.nan
    return out.reshape(img.shape)


# --- percentile_stretch -------------------------------------------------------------------


def rank_value(hist: np.ndarray, percent: float) -> int:
    """``np.percentile(page, percent, method="lower")`` from the page's histogram: the bin
    (the value, for unsigned types; value - min for signed) of rank
    ``floor((n - 1) * percent / 100)`` (0-based) among the page's sorted samples."""
    hist = np.asarray(hist, np.int64)
    n = int(hist.sum())
    rank = int(np.floor((n - 1) * (np.float64(percent) / 100)))
    rank = min(max(rank, 0), n - 1)
    return int(np.searchsorted(np.cumsum(hist), rank, side="right"))


def stretch_lut(lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
    """``clip(rint((v - lo) / (hi - lo) * max), 0, max)`` for every value v of an 8 or 16-bit
    type, in table index order (float64, rounded half to even); when ``hi == lo``: 0 up to
    lo, max above."""
    top = _top(dtype)
    v = dtypes.all_values(dtype).astype(np.float64)
    if hi == lo:
        return np.where(v > lo, top, 0).astype(dtype)
    return np.clip(np.rint((v - lo) / (hi - lo) * top), 0, top).astype(dtype)


def _stretch_finish(st: State, p: dict[str, Any], dtype: np.dtype) -> State:
    base, hist = int(np.iinfo(dtype).min), data_histogram(st["hist"], p, dtype)
    lo, hi = (base + rank_value(hist, p[k]) for k in ("p_low", "p_high"))
    return {"lut": keep_nodata_lut(stretch_lut(lo, hi, np.dtype(dtype)), p, dtype),
            "range": np.array([lo, hi])}


# --- per_band: each band its own statistics -------------------------------------------


def _planes(img: np.ndarray) -> list[np.ndarray]:
    """The bands of an image, each a contiguous (h, w) array (a 2-D image: itself)."""
    if img.ndim == 2:
        return [img]
    return [np.ascontiguousarray(img[:, :, b]) for b in range(img.shape[2])]


def _no_data_yet(key: str, dtype: np.dtype) -> np.ndarray | None:
    """What a band stands for a key its op's partial leaves out when the band's part of the
    tile holds no data (``data_min``/``data_max`` of a band of no-data only; ``min``/``max``
    of a tile its mask leaves out whole): the identity of
    :func:`combine`'s reduction (the type's maximum for a minimum, its minimum for a
    maximum; NaN for floats, which ``fmin``/``fmax`` skip), so that it stays one array."""
    if key not in ("min", "max", "data_min", "data_max"):
        return None
    if np.dtype(dtype).kind == "f":
        return np.array([np.nan], dtype)
    limits = np.iinfo(dtype)
    return np.array([limits.max if key.endswith("min") else limits.min], dtype)


def _band_partial(spec: StatsSpec) -> Callable[[np.ndarray, dict[str, Any]], State]:
    def partial(img: np.ndarray, p: dict[str, Any]) -> State:
        parts = [spec.partial(plane, p) for plane in _planes(img)]
        keys = list(dict.fromkeys(k for part in parts for k in part))
        return {k: np.stack([part[k] if k in part else _no_data_yet(k, img.dtype)
                             for part in parts]) for k in keys}
    return partial


def _band_finish(spec: StatsSpec) -> Callable[[State, dict[str, Any], np.dtype], State]:
    def finish(st: State, p: dict[str, Any], dtype: np.dtype) -> State:
        states = []
        for b in range(len(next(iter(st.values())))):
            mine = {k: v[b] for k, v in st.items()}
            if "data_min" in mine and not mine["data_min"][0] <= mine["data_max"][0]:
                del mine["data_min"], mine["data_max"]  # (no data in the band: its stand-in)
            states.append(spec.finish(mine, p, dtype))
        return {k: np.stack([s[k] for s in states]) for k in states[0]}
    return finish


def _band_apply(spec: StatsSpec) -> Callable[[np.ndarray, dict[str, Any], State], np.ndarray]:
    def apply(img: np.ndarray, p: dict[str, Any], state: State) -> np.ndarray:
        out = [spec.apply(plane, p, {k: v[b] for k, v in state.items()})
               for b, plane in enumerate(_planes(img))]
        return out[0] if img.ndim == 2 else np.stack(out, axis=2)
    return apply


def per_band_option(spec: StatsSpec) -> StatsSpec:
    """``spec`` with the parameter ``per_band``: when true, each band is an op of its own on
    the page's band (its own statistics, no-data and NaN left out per band, its own table or
    scale); the statistics are ``spec``'s of each band, stacked on a first axis of the band
    count (a 16-bit page's histograms: bands x 65536 counts), which :func:`combine` reduces
    as it does one band's. False (the default): ``spec`` itself, over all channels. A page
    of one band gets the same result either way."""
    banded = StatsSpec(_band_partial(spec), _band_finish(spec), _band_apply(spec))

    def pick(p: dict[str, Any]) -> StatsSpec:
        return banded if p.get("per_band") else spec
    return StatsSpec(lambda img, p: pick(p).partial(img, p),
                     lambda st, p, dtype: pick(p).finish(st, p, dtype),
                     lambda img, p, state: pick(p).apply(img, p, state))


EQUALIZE = StatsSpec(_hist_partial, _equalize_finish, _lut_apply)
OTSU = StatsSpec(_hist_partial, _otsu_finish, _lut_apply)
NORMALIZE = per_band_option(StatsSpec(_minmax_partial, _normalize_finish, _normalize_apply))
STRETCH = per_band_option(StatsSpec(_hist_partial, _stretch_finish, _lut_apply))
