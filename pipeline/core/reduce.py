"""Block reductions: the rounded mean of 2 x 2 blocks for the integer types whose sum of four
overflows every wider numpy type (64-bit: pyramid levels of int64 and uint64 pages), the
mean of f x f blocks over their valid samples alone (:func:`masked_mean`: pyramid levels
and ``downsample`` of a page with no-data or a mask), and the other :data:`METHODS` of
categorical data (:func:`block_pick`: a sample of each block, never a mix of them).
Pure module: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def mean4(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``(a + b + c + d + 2) // 4`` (floor division, as for the narrower integer types),
    exact in the arrays' own 64-bit type: each value is ``4 * (v // 4) + v % 4`` with
    ``v % 4`` in 0..3, so the sum is ``4 * q + r`` and the mean ``q + (r + 2) // 4``, where
    neither ``q`` (the sum of the quarters) nor the result can overflow."""
    four = a.dtype.type(4)
    q = a // four + b // four + c // four + d // four
    r = a % four + b % four + c % four + d % four
    return q + (r + a.dtype.type(2)) // four


#: the integer types (numpy's ``dtype.str`` without its byte order) whose 2 x 2 block means
#: of 1, 3 or 4 channels OpenCV's INTER_AREA resize gives exactly as ``(s + 2) // 4``, the
#: means of :func:`masked_mean` with every sample valid (a sum of the four, plus 2, shifted
#: right by 2; ``tests/test_gis_readers.py`` checks it sample for sample, extreme values
#: too; of 2 channels it rounds otherwise): ``area2`` of :func:`masked_mean`
OPENCV_MEAN4 = ("u1", "u2", "i2")

#: integer type that holds the sum of four values of a type without overflow (2 x 2 blocks:
#: the pyramid levels'); larger blocks sum in int32 (8 and 16-bit types) or int64
WIDE = {"u1": np.uint16, "i1": np.int16, "u2": np.uint32, "i2": np.int32, "u4": np.int64,
         "i4": np.int64}


#: how a block of samples becomes one (``downsample``'s ``method``,
#: ``output_options.pyramid_resampling``): "mean" (GDAL's average), or one of the block's
#: valid samples: the one nearest its centre, the most frequent, the smallest, the largest
#: (GDAL's nearest, mode, min, max: for class labels, bit masks, palette indices)
METHODS = ("mean", "nearest", "mode", "min", "max")

#: samples :func:`_mode` sorts at once (its temporaries: about 50 bytes a sample)
_MODE_CHUNK = 1 << 18


def valid_samples(block: np.ndarray, nodata: float | None = None,
                  mask: np.ndarray | None = None) -> np.ndarray | None:
    """Which samples of ``block`` (h, w) or (h, w, c) are data: not equal to ``nodata`` (not
    NaN for NaN) and at a pixel ``mask`` (h, w, bool) marks valid; None when neither is
    given (every sample is). A bool array of the block's shape (a read-only broadcast of
    ``mask`` when it alone is given)."""
    valid: np.ndarray | None = None
    if nodata is not None:
        valid = (~np.isnan(block) if block.dtype.kind == "f" and np.isnan(nodata)
                 else block != block.dtype.type(nodata))
    if mask is not None:
        pixels = mask.reshape(mask.shape + (1,) * (block.ndim - 2))
        valid = np.broadcast_to(pixels, block.shape) if valid is None else valid & pixels
    return valid


def masked_mean(block: np.ndarray, factor: int, nodata: float | None = None,
                mask: np.ndarray | None = None,
                area2: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block of ``block`` (h, w) or (h, w, c), over
    its valid samples: those present (a block past an edge the page does not fill has fewer),
    not equal to ``nodata`` (not NaN for NaN), at the pixels ``mask`` (h, w, bool: None, all)
    says are valid. With ``n`` valid samples summing to ``s``: floats ``s / n`` in float64,
    ``s`` summed block column by block column, top to bottom (for 2 x 2: ``((p00 + p10) +
    p01) + p11``), the samples left out counted as -0.0 (``v + -0.0`` is ``v``, signs of
    zero and NaN included); integers ``(s + n // 2) // n``, exact (64-bit ones too). Where
    ``n`` is 0: ``nodata`` (0 without one). What the pyramid levels of a page with no-data or
    a mask are made of (``factor`` 2), and ``downsample`` on such a page: GDAL's average
    resampling, which leaves those samples out. ``area2``: a faster function of the same
    means of whole 2 x 2 blocks, for a block all valid of :data:`OPENCV_MEAN4`'s types and 1,
    3 or 4 channels (OpenCV's area resize, where it is loaded: ``downsample``, 20-40x
    faster than the sums here)."""
    h, w = block.shape[:2]
    dtype, f = block.dtype, factor
    valid = valid_samples(block, nodata, mask)  # (None: every sample present is valid)
    shape = (-(-h // f) * f, -(-w // f) * f) + block.shape[2:]
    order = [(dy, dx) for dx in range(f) for dy in range(f)]
    if shape == block.shape and (valid is None or valid.all()):  # whole blocks, none left out:
        if (area2 is not None and f == 2 and dtype.str[1:] in OPENCV_MEAN4
                and block.size // (h * w) in (1, 3, 4)):
            return area2(block).reshape((h // 2, w // 2) + block.shape[2:])  # (h, w, 1) too
        ok, n, none = None, np.int64(f * f), None  # no count, nothing to blank
    else:
        ok = np.zeros(shape, bool)
        ok[:h, :w] = True if valid is None else valid
        n = np.zeros((shape[0] // f, shape[1] // f) + shape[2:], np.int64)
        for dy, dx in order:
            n += ok[dy::f, dx::f]
        none = n == 0
        n[none] = 1
    if dtype.kind in "iu" and dtype.str[1:] not in WIDE:
        out = _mean_of_64bit(block if ok is None or valid is None else np.where(valid, block, 0),
                             shape, n, f)
    else:
        floats = dtype.kind == "f"
        # (larger blocks: 4096 samples of 16 bits at most sum below 2**31)
        wide = (np.float64 if floats else WIDE[dtype.str[1:]] if f == 2
                else np.int32 if dtype.itemsize <= 2 else np.int64)
        if ok is None:
            b = block  # (the sums in ``wide``: the first term cast, the others added to it)
        else:
            b = np.full(shape, -0.0) if floats else np.zeros(shape, wide)
            b[:h, :w] = block
            b[~ok] = -0.0 if floats else 0
        s = b[0::f, 0::f].astype(wide)
        for dy, dx in order[1:]:
            s += b[dy::f, dx::f]
        out = s / n if floats else (s + n // 2) // n
    if none is not None:
        out[none] = 0 if nodata is None else nodata
    return out.astype(dtype)


def _mean_of_64bit(block: np.ndarray, shape: tuple[int, ...], n: np.ndarray,
                   f: int) -> np.ndarray:
    """``(s + n // 2) // n`` of f x f blocks of 64-bit integers (the invalid ones 0),
    exactly: each value is ``hi * 2**32 + lo`` (``lo`` in 0..2**32 - 1), the sums of the
    halves fit in int64 (f * f <= 4096 values), and ``floor((S_hi * 2**32 + S_lo + n // 2) /
    n)`` is ``q * 2**32 + (r * 2**32 + S_lo + n // 2) // n`` with ``S_hi = q * n + r``,
    computed modulo 2**64 in the block's type (the result is in range, so it comes out
    exact)."""
    h, w = block.shape[:2]
    hi = np.zeros(shape, np.int64)
    lo = np.zeros(shape, np.int64)
    hi[:h, :w] = block >> 32  # (arithmetic: floor for int64)
    lo[:h, :w] = block & 0xFFFFFFFF
    s_hi, s_lo = hi[0::f, 0::f].copy(), lo[0::f, 0::f].copy()
    for dy in range(f):
        for dx in range(f):
            if dy or dx:
                s_hi += hi[dy::f, dx::f]
                s_lo += lo[dy::f, dx::f]
    q, r = np.divmod(s_hi, n)
    low = (r * 2**32 + s_lo + n // 2) // n
    return (q.astype(block.dtype) << block.dtype.type(32)) + low.astype(block.dtype)


def block_reduce(block: np.ndarray, factor: int, method: str, nodata: float | None = None,
                 mask: np.ndarray | None = None,
                 area2: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Each ``factor`` x ``factor`` block of ``block`` reduced by ``method`` (one of
    :data:`METHODS`) over its valid samples: :func:`masked_mean` for "mean", else
    :func:`block_pick`."""
    if method == "mean":
        return masked_mean(block, factor, nodata, mask, area2)
    return block_pick(block, factor, method, nodata, mask)


def block_pick(block: np.ndarray, factor: int, method: str, nodata: float | None = None,
               mask: np.ndarray | None = None) -> np.ndarray:
    """One sample of each ``factor`` x ``factor`` block of ``block`` (h, w) or (h, w, c),
    band by band, among its valid samples: those present (a block past an edge the page
    does not fill has fewer), not equal to ``nodata`` (not NaN for NaN), at the pixels
    ``mask`` (h, w, bool) says are valid. Where a block has none: ``nodata`` (0 without
    one), as :func:`masked_mean`. ``method``:

    - "nearest": the valid sample nearest the block's centre; of samples as near, the lower
      one, then the right one (:func:`nearest_order`). With every sample valid that is the
      sample at (f // 2, f // 2) of the block, GDAL's nearest for a reduction by f;
    - "mode": the most frequent value; of values as frequent, the one whose last sample,
      in row-major order in the block, comes first: GDAL's mode, which keeps the first
      value to reach the highest count (NaN, without a no-data value, is one value);
    - "min", "max": the smallest, the largest (a NaN sample, without a no-data value, makes
      the block NaN, as its mean).
    """
    h, w = block.shape[:2]
    f = factor
    valid = valid_samples(block, nodata, mask)
    shape = (-(-h // f) * f, -(-w // f) * f) + block.shape[2:]
    if shape == block.shape:
        b, ok = block, valid  # (None: every sample valid)
    else:
        b = np.zeros(shape, block.dtype)
        b[:h, :w] = block
        ok = np.zeros(shape, bool)
        ok[:h, :w] = True if valid is None else valid
    if method == "mode":
        out, none = _mode(b, ok, f)
    else:
        order = nearest_order(f) if method == "nearest" else \
            [(dy, dx) for dy in range(f) for dx in range(f)]
        out, none = _pick(b, ok, f, order, method)
    if none is not None and none.any():
        out[none] = 0 if nodata is None else nodata
    return out


def nearest_order(f: int) -> list[tuple[int, int]]:
    """The (dy, dx) of an f x f block, nearest its centre first (a sample's centre is at
    (dy + 0.5, dx + 0.5), the block's at (f / 2, f / 2)); of those as near, the lower one,
    then the right one: (f // 2, f // 2) first, GDAL's pick."""
    return sorted(((dy, dx) for dy in range(f) for dx in range(f)),
                  key=lambda d: ((2 * d[0] + 1 - f) ** 2 + (2 * d[1] + 1 - f) ** 2,
                                 -d[0], -d[1]))


def overview_picks(n: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """The rows (or columns) of a level of ``n`` rows that GDAL's nearest overviews
    (``gdaladdo -r nearest``, GDAL 3.10, each overview made from the one above) take for the
    ``ceil(n / 2)`` rows of the level below: row ``i`` takes row ``int(0.5 + i * (n /
    ceil(n / 2)))``, GDAL's formula in doubles. For an even ``n`` that is ``2 i``, each 2 x 2
    block's top-left pixel; for an odd ``n`` (ratio a little under 2), ``2 i`` for the rows
    up to half way (``i <= ceil(n / 2) / 2``), then ``2 i - 1``: the last row of the block
    above. The pyramid levels' "nearest" (``downsample``'s is :func:`block_pick`'s: GDAL's
    RasterIO nearest, the block's centre). ``start``, ``stop``: those rows only (of a band
    or processing row of the level below), the same values without the level's whole
    width."""
    m = -(-n // 2)
    return (0.5 + np.arange(start, m if stop is None else stop) * (n / m)).astype(np.int64)


def _pick(b: np.ndarray, ok: np.ndarray | None, f: int, order: list[tuple[int, int]],
          method: str) -> tuple[np.ndarray, np.ndarray | None]:
    """"nearest" (the first valid sample of ``order``), "min" or "max" of the f x f blocks
    of ``b`` (whole blocks; ``ok``: which samples are valid, None: all), and where no
    sample is valid (None: every block has one)."""
    first = b[0::f, 0::f]
    if ok is None:
        if method == "nearest":
            dy, dx = order[0]
            return b[dy::f, dx::f].copy(), None
        combine = np.minimum if method == "min" else np.maximum
        out = first.copy()
        for dy, dx in order[1:]:
            combine(out, b[dy::f, dx::f], out=out)
        return out, None
    out = np.zeros_like(first)
    have = np.zeros(first.shape, bool)
    for dy, dx in order:
        v, o = b[dy::f, dx::f], ok[dy::f, dx::f]
        if method == "nearest":
            take = o & ~have
        else:  # (min, max: a NaN sample wins, as np.minimum keeps NaN)
            better = v < out if method == "min" else v > out
            if b.dtype.kind == "f":
                better |= np.isnan(v)
                better &= ~np.isnan(out)
            take = o & (~have | better)
        out[take] = v[take]
        have |= o
    return out, ~have


def _mode(b: np.ndarray, ok: np.ndarray | None, f: int
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """The mode of each f x f block of ``b`` (whole blocks; ``ok``: which samples are valid,
    None: all), GDAL's tie rule (:func:`block_pick`), and where no sample is valid. Each
    block's samples are sorted by value (stably: equal values keep their order), the
    invalid ones after; a run of equal values ends at its last sample, which scores its
    count, then how early that sample comes. Done :data:`_MODE_CHUNK` samples at a time."""
    hb, wb = b.shape[0] // f, b.shape[1] // f
    extra = b.shape[2:]
    k = f * f

    def blocks(a: np.ndarray) -> np.ndarray:  # (hb, wb, ...extra, k): row-major in the block
        a = a.reshape((hb, f, wb, f) + extra)
        a = np.moveaxis(a, (1, 3), (-2, -1))
        return a.reshape(a.shape[:-2] + (k,))

    vals = blocks(b).reshape(-1, k)
    oks = None if ok is None else blocks(ok).reshape(-1, k)
    out = np.empty(len(vals), b.dtype)
    none = None if ok is None else np.zeros(len(vals), bool)
    rows = max(1, _MODE_CHUNK // k)
    j = np.arange(k)
    for r0 in range(0, len(vals), rows):
        v = vals[r0:r0 + rows]
        n = len(v)
        idx = np.argsort(v, axis=1, kind="stable")
        if oks is not None:
            bad = np.take_along_axis(~oks[r0:r0 + rows], idx, 1)
            again = np.argsort(bad, axis=1, kind="stable")  # (the invalid ones last)
            idx = np.take_along_axis(idx, again, 1)
        s = np.take_along_axis(v, idx, 1)
        same = s[:, 1:] == s[:, :-1]
        if b.dtype.kind == "f":
            same |= np.isnan(s[:, 1:]) & np.isnan(s[:, :-1])
        if oks is not None:
            sv = np.take_along_axis(oks[r0:r0 + rows], idx, 1)
            same &= sv[:, 1:] == sv[:, :-1]
        start = np.ones((n, k), bool)
        start[:, 1:] = ~same
        end = np.ones((n, k), bool)
        end[:, :-1] = start[:, 1:]
        begun = np.maximum.accumulate(np.where(start, j, 0), axis=1)
        score = np.where(end, (j - begun + 1) * (k + 1) + (k - idx), 0)
        if oks is not None:
            score[~sv] = 0
        best = np.argmax(score, axis=1)
        out[r0:r0 + n] = s[np.arange(n), best]
        if none is not None:
            none[r0:r0 + n] = score[np.arange(n), best] == 0
    shape = (hb, wb) + extra
    return out.reshape(shape), None if none is None else none.reshape(shape)
