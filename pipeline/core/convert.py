"""The ``convert`` op: samples mapped linearly to another sample type, with the ranges stated
(docs/manifest-and-ops.md, "convert"). Pure module: arrays in, arrays out.

Each sample v becomes ``olo + (v - lo) / (hi - lo) * (ohi - olo)`` computed in float64,
clipped to ``[olo, ohi]``, then rounded to the nearest integer, half to even (as OpenCV's
``saturate_cast`` rounds), or cast to a float type; ``[lo, hi]`` is ``in_range`` (an integer
page's default: its type's full range) and ``[olo, ohi]`` is ``out_range`` (default: the
output type's full range, 0..1 for floats, less the end that ``nodata`` takes). Samples that
are NaN, or the input's no-data value, become ``nodata`` (the output's GDAL_NODATA); without
one, NaN becomes ``olo`` in an integer output and the input's no-data value is converted as
a value, and a float output keeps NaN as its no-data value.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.core import dtypes
from pipeline.core.params import Param, show

#: the sample types convert writes (64-bit integers, beyond float64's 53 bits, and float16
#: are left out: no scaling to them could be exact)
TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: samples converted through float64 at once (each temporary array: 2 MiB)
CHUNK_SAMPLES = 1 << 18


def _number(value: Any) -> bool:
    return Param("v", "number", "").check(value) is None


class RangeParam(Param):
    """``[low, high]``: two finite numbers, low below high; null (or left out): the default."""

    def expectation(self) -> str:
        return "[low, high]: two numbers with low < high, or null"

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        if not (isinstance(value, list) and len(value) == 2 and all(map(_number, value))):
            return f"expected {self.expectation()}, got {show(value)}"
        if value[0] == value[1]:
            return (f"expected [low, high] with low < high, got {show(value)}: an empty range "
                    "maps no values; give the range the values span")
        if value[0] > value[1]:
            return (f"expected [low, high] with low < high, got {show(value)}: an inverted "
                    "range; give [low, high], and to invert the values put an invert op after "
                    "the convert")
        return None

    def value(self, value: Any) -> Any:
        return None if value is None else [value[0], value[1]]


class NullableNumber(Param):
    """A number, or null (or left out): none."""

    def expectation(self) -> str:
        return "a number, or null"

    def check(self, value: Any) -> str | None:
        if value is None or _number(value):
            return None
        return f"expected {self.expectation()}, got {show(value)}"


PARAMS = (
    Param("dtype", "string", "the output's sample type", required=True, choices=TYPES),
    RangeParam("in_range", "array", "the input values mapped to out_range's ends (default: "
               "the input type's full range; float pages must give it)"),
    RangeParam("out_range", "array", "where in_range goes (default: the output type's full "
               "range, 0 to 1 for floats, less the end nodata takes)"),
    NullableNumber("nodata", "number", "the output's no-data value (GDAL_NODATA): NaN and the "
                   "input's no-data samples become it (default: NaN for float outputs, none "
                   "for integers)"),
)


def type_range(dtype: np.dtype | str) -> tuple[float, float]:
    """An integer type's whole range; [0, 1] for floats (white is 1.0 in tiffpipe)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def _limits(dtype: np.dtype) -> tuple[float, float]:
    """The values a sample of ``dtype`` holds (finite ones for floats)."""
    if dtype.kind in "ui":
        return type_range(dtype)
    top = float(np.finfo(dtype).max)
    return -top, top


def out_range(p: dict[str, Any]) -> tuple[float, float]:
    """``out_range``, or its default: the output type's range less the end ``nodata`` is."""
    if p.get("out_range") is not None:
        return float(p["out_range"][0]), float(p["out_range"][1])
    dtype = np.dtype(p["dtype"])
    lo, hi = type_range(dtype)
    nodata = p.get("nodata")
    if dtype.kind in "ui" and nodata is not None:
        lo, hi = lo + (nodata == lo), hi - (nodata == hi)
    return lo, hi


def in_range(p: dict[str, Any], dtype: np.dtype) -> tuple[float, float]:
    """``in_range``, or the input type's full range (integer pages: :func:`accepts` refuses
    float pages without one)."""
    if p.get("in_range") is not None:
        return float(p["in_range"][0]), float(p["in_range"][1])
    return type_range(dtype)


def check(p: dict[str, Any]) -> str | None:
    """What is wrong between the parameters (each valid on its own), else None."""
    dtype = np.dtype(p["dtype"])
    name, integer = dtype.name, dtype.kind in "ui"
    lo, hi = _limits(dtype)
    span = f"whole numbers from {lo:.0f} to {hi:.0f}" if integer else f"numbers a {name} holds"
    given = p.get("out_range")
    if given is not None and not all((v == int(v) or not integer) and lo <= v <= hi
                                     for v in given):
        return f"out_range {show(given)} does not fit {name}: give {span}"
    nodata = p.get("nodata")
    if nodata is None:
        return None
    if not ((nodata == int(nodata) or not integer) and lo <= nodata <= hi):
        return f"nodata {show(nodata)} is no {name} value: give one of the {span}"
    olo, ohi = out_range(p)
    if olo <= nodata <= ohi:
        if given is None:
            return (f"nodata {show(nodata)} is inside {name}'s default out_range "
                    f"[{olo:g}, {ohi:g}], where data would take it too: give an out_range "
                    "that leaves it out" + (" (an integer nodata at the type's lowest or "
                                            "highest value leaves it out by itself)"
                                            if integer else ""))
        return (f"nodata {show(nodata)} is inside out_range {show(given)}, where data "
                "would take it too: give an out_range that leaves it out")
    return None


def accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    """Float pages need an ``in_range``: they have no range of their own."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and p.get("in_range") is None:
        return (f"convert needs \"in_range\" on float pixels, the page has {dtype.name}: "
                "floats have no full range to map; give \"in_range\": [low, high] (the values "
                "mapped to out_range's ends, e.g. [-1, 1] for a normalized difference)")
    return None


def out_dtype(p: dict[str, Any], dtype: np.dtype) -> np.dtype:
    return np.dtype(p["dtype"])


def own_nodata(p: dict[str, Any]) -> float | None:
    """The no-data value convert's output has: ``nodata``, else NaN for float outputs."""
    if p.get("nodata") is not None:
        return p["nodata"]  # (as given: GDAL_NODATA says 0, not 0.0, for an integer 0)
    return float("nan") if np.dtype(p["dtype"]).kind == "f" else None


def exact(x: float | Fraction) -> Fraction:
    """The number a float stands for, as a fraction: the shortest decimal that reads back as
    it (``0.1``, not the binary 0.1000000000000000055...), which is what a manifest or GDAL's
    GDAL_METADATA (``-0.10000000000000001``) wrote. Maps composed of such numbers as fractions
    and rounded once come out as the round values they are (a scale of 1, not
    1.0000000000000002)."""
    if isinstance(x, Fraction | int):
        return Fraction(x)
    return Fraction(repr(float(x)))


def linear(p: dict[str, Any], dtype: np.dtype) -> tuple[Fraction, Fraction] | None:
    """``(a, b)`` when the convert maps every sample ``v`` a page of ``dtype`` can hold to
    ``a * v + b`` (rounding aside): ``in_range`` spans every value of ``dtype``, so none is
    clipped. None when some value may be clipped (a float page, or an ``in_range`` narrower
    than the type): the samples clipped lose their value. The output's GDAL_METADATA keeps a
    band's scale and offset through it (pipeline.adapters.metadata.gdal_metadata). Exact
    fractions of the ranges given (:func:`exact`), so that maps compose without float
    error."""
    (lo, hi), (olo, ohi) = in_range(p, dtype), out_range(p)
    low, high = _limits(np.dtype(dtype))
    if not lo <= low < high <= hi:
        return None
    lo, hi, olo, ohi = map(exact, (lo, hi, olo, ohi))
    a = (ohi - olo) / (hi - lo)
    return a, olo - lo * a


def _mapped(x: np.ndarray, lo: float, hi: float, olo: float, ohi: float,
            dtype: np.dtype) -> np.ndarray:
    """float64 samples ``x`` mapped from [lo, hi] to [olo, ohi], clipped, then rounded half to
    even (integers) or cast (floats); NaN stays NaN in floats and is ``olo`` in integers."""
    y = olo + (x - lo) / (hi - lo) * (ohi - olo)
    np.clip(y, olo, ohi, out=y)
    if dtype.kind == "f":
        return y.astype(dtype)
    np.rint(y, out=y)
    y[np.isnan(y)] = olo
    return y.astype(dtype)


def convert(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """The samples of ``img`` converted (see the module's docstring). ``p["input_nodata"]``:
    the input's no-data value, given by the tiled path (:func:`pipeline.core.ops.with_nodata`).
    8 and 16-bit integer pages go through a table of every value, others a band of rows at a
    time through float64."""
    dtype = np.dtype(p["dtype"])
    (lo, hi), (olo, ohi) = in_range(p, img.dtype), out_range(p)
    fill = own_nodata(p)
    marked = p.get("input_nodata") if fill is not None else None
    if img.dtype.kind in "ui" and img.dtype.itemsize <= 2:
        values = dtypes.all_values(img.dtype)
        table = _mapped(values.astype(np.float64), lo, hi, olo, ohi, dtype)
        if marked is not None and not math.isnan(marked):
            table[values == marked] = fill
        return table[dtypes.offset_index(img)]
    out = np.empty(img.shape, dtype)
    rows = max(1, CHUNK_SAMPLES // max(1, img[:1].size))
    for y in range(0, img.shape[0], rows):
        part = img[y:y + rows]
        mapped = _mapped(part.astype(np.float64), lo, hi, olo, ohi, dtype)
        if fill is not None:
            none = np.isnan(part) if img.dtype.kind == "f" else np.zeros(part.shape, bool)
            if marked is not None and not math.isnan(marked):
                none |= part == marked
            mapped[none] = fill
        out[y:y + rows] = mapped
    return out
