"""The operation registry: each op is an OpenCV call (its function in
:mod:`pipeline.core.op_functions`), its parameters, and its halo.

An op's *halo* is how many pixels around a tile its output depends on. Tiles are
read with the chain's halo clipped at the true page border and the op runs on the
haloed tile; cropping the core then gives exactly the pixels of one call on the
whole page (see README, "Operations"). Chains add their halos; how ops that need the
whole page, clahe and downsample fit in is pipeline.core.chain's business.

Pure module: arrays in, arrays out. No I/O (a custom op imports its user function).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import field
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.core import canny as canny_mod
from pipeline.core import convert as convert_mod
from pipeline.core import custom as custom_mod
from pipeline.core import dtypes
from pipeline.core import geometry as geo
from pipeline.core import op_functions as fn
from pipeline.core import stats as stats_mod
from pipeline.core.opencv import gaussian_radius
from pipeline.core.params import Param, check_object, close_name, show
from pipeline.core.record import record
from pipeline.core.reduce import METHODS
from pipeline.errors import OperationError

#: Crop origins of haloed tiles are multiples of this, so SIMD paths of OpenCV see
#: the same alignment as in a whole-page call (float32 filters differ otherwise).
HALO_ALIGN = 16

#: the sample types a chain may get (every TIFF integer and float type); which of them each
#: op takes is its ``accepts`` (docs/sample-types.md has the table)
SUPPORTED_DTYPES = dtypes.ALL


@record(frozen=True)
class Op:
    """One operation of the registry."""

    name: str
    help: str
    params: tuple[Param, ...]
    apply: Callable[[np.ndarray, dict[str, Any]], np.ndarray]
    halo: Callable[[dict[str, Any], np.dtype], int] = lambda p, dt: 0
    #: None when the op accepts the page, else why not (named in the error)
    accepts: Callable[[dict[str, Any], np.dtype, int], str | None] = lambda p, dt, ch: None
    #: channels of the output given the input's
    out_channels: Callable[[int], int] = lambda ch: ch
    #: the sample type of the output given the parameters and the input's
    #: (normalized_difference: float32; convert: its ``dtype``)
    out_dtype: Callable[[dict[str, Any], np.dtype], np.dtype] = lambda p, dt: dt
    #: the input band each output band is (select_bands), else None: every band stays
    #: itself (per-band ops), or the op makes its own (to_gray, canny, normalized_difference)
    picks: Callable[[dict[str, Any]], list[int]] | None = None
    #: the names (GDAL band descriptions) of the bands the op makes, given the parameters and
    #: its input bands' names (:func:`chain_band_names`): normalized_difference's formula of
    #: them; None: the op makes no named bands
    names: Callable[[dict[str, Any], list[str]], list[str]] | None = None
    #: the op is given its input's no-data value (None: none) as the parameter
    #: ``input_nodata`` (:func:`with_nodata`): normalized_difference, convert, downsample, the
    #: blurs (gaussian_blur, unsharp_mask), dilate and erode (of the valid samples alone), the
    #: whole-page ops (equalize_hist, otsu_threshold, percentile_stretch, normalize:
    #: statistics of the data), canny (its blur)
    reads_nodata: bool = False
    #: the op is given its input's valid-data mask (the page's carried internal mask, moved
    #: and reduced to the op's pixels: an (h, w) bool array; None: none) as the parameter
    #: ``input_valid``, by the tiled path (pipeline.steps.evaluate): downsample, the blurs,
    #: dilate and erode, the whole-page ops (their statistics and their output leave the
    #: masked-out pixels out), canny (its blur)
    reads_mask: bool = False
    #: bytes a sample of its tile the op holds beyond its input and output on a page with a
    #: no-data value or a carried mask (the blurs of the valid samples: four float64 arrays,
    #: the sums and weights and their blurs; dilate, erode: the validity and a copy of the
    #: tile, 9 at most); the memory model counts them (pipeline.estimate)
    valid_bytes: int = 0
    #: the op is given its input's bands' GDAL scale and offset (``[(scale, offset), ...]``,
    #: None: no band has one) as the parameter ``input_scaling`` (:func:`with_nodata`):
    #: normalized_difference, whose index is of the physical values
    reads_scaling: bool = False
    #: the no-data value the op's output has, given the parameters (normalized_difference:
    #: NaN; convert: its ``nodata``), else None
    own_nodata: Callable[[dict[str, Any]], float | None] = lambda p: None
    #: ``(a, b)`` when the op maps every value v of its input's sample type to a v + b
    #: (a convert that clips no value, invert of integers), else None (:func:`chain_linear`)
    linear: Callable[[dict[str, Any], np.dtype], tuple[float, float] | None] = \
        lambda p, dt: None
    #: the op reads a page's bands as gray or RGB(A) colours (a gray value of red, green and
    #: blue), or as bands of their own (select_bands, normalized_difference: an ink picked
    #: would be written as a gray or RGB band): not defined on CMYK pages, whose bands are inks
    colour: bool = False
    #: the op reads a page's bands as red, green and blue (to_gray's weights): refused on a
    #: page of gray channels (MINISBLACK with 2 extra samples or more: fluorescence
    #: channels, a multispectral stack), which it would mix (:func:`_gray_bands`)
    reads_rgb: bool = False
    #: the op's output at a pixel is made of input values around it (a filter, downsample):
    #: a no-data value keeps marking the pixels without data (GDAL_NODATA is kept); False:
    #: the op remaps values (a pixel with data may take the no-data value, or the reverse)
    keeps_values: bool = False
    #: the op remaps values but writes its input's no-data pixels back unchanged (its
    #: ``input_nodata``, :attr:`reads_nodata`) and sends no data pixel onto that value (but
    #: otsu_threshold's classes): the no-data value keeps marking the pixels without data
    #: (GDAL_NODATA is kept, :func:`chain_keeps_nodata`), though band scales, offsets and
    #: statistics go (the histogram ops, normalize)
    keeps_nodata: bool = False
    halo_help: str = "0 (a point operation)"
    exact: str = ("bit-identical to the OpenCV call on the whole page (types OpenCV lacks: "
                  "to its definition in docs/sample-types.md)")
    extra: dict[str, Any] = field(default_factory=dict)
    #: "local": the output depends on the pixels within the halo only; "stats": a point op
    #: whose table comes from statistics of the whole page (a statistics round); "canny":
    #: edges whose hysteresis follows chains across the page (a statistics round of labels);
    #: "geometry": each output pixel is one input pixel, moved (rotate, flip, crop)
    kind: str = "local"
    #: the margin of input pixels the op needs around a region so that its output is exact on
    #: that region grown by ``needed`` (None: ``needed + halo``); see pipeline.core.chain
    reach: Callable[[dict[str, Any], np.dtype, int], int] | None = None
    #: crop origins must be multiples of this, in the op's input pixels (clahe: its cell)
    align: Callable[[dict[str, Any]], int] = lambda p: 1
    #: the op shrinks the page by this factor (downsample)
    factor: Callable[[dict[str, Any]], int] = lambda p: 1
    #: a problem between parameters (checked with the manifest), else None
    check: Callable[[dict[str, Any]], str | None] = lambda p: None
    #: "stats" ops: how to gather, reduce and apply their statistics (pipeline.core.stats)
    stats: Any = None
    #: geometric ops (kind "geometry"): the transform of the page, given the parameters
    #: (pipeline.core.geometry: a Turn or a Crop)
    geometry: Callable[[dict[str, Any]], Any] | None = None
    #: what the op does to a page of two values, 0 and its type's maximum (black and white:
    #: all a 1-bit output holds), given the parameters: "makes" them of any input
    #: (threshold, otsu_threshold, canny), "keeps" them (each output pixel one of its
    #: input's, moved, picked or a window's maximum, minimum or median; or 0 and the
    #: maximum swapped or kept: invert, gamma, normalize), "grays" them wherever black and
    #: white meet (a blur's weighted means, a downsample's block means); "": not known
    #: before the pixels are (a convert maps them to two values of its own, to_gray mixes
    #: bands, a custom op's output is its function's) (:func:`chain_binary`)
    binary: Callable[[dict[str, Any]], str] = lambda p: ""
    #: what the op (its JSON) is told when given another tool's parameters for its own, in
    #: place of its other problems (crop's box by its corners: :func:`_corners_advice`),
    #: else None
    respelt: Callable[[dict[str, Any]], str | None] = lambda item: None

    def reach_for(self, params: dict[str, Any], dtype: np.dtype, needed: int) -> int:
        if self.reach is not None:
            return self.reach(params, dtype, needed)
        return needed + self.halo(params, dtype)


@record(frozen=True)
class OpCall:
    """An op with its checked parameters, as a chain holds it."""

    op: Op
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op.name, **self.params}

    def out_channels(self, channels: int) -> int:
        picks = self.op.picks
        return len(picks(self.params)) if picks else self.op.out_channels(channels)

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(self.op.out_dtype(self.params, np.dtype(dtype)))


def _clahe_reach(p: dict[str, Any], dtype: np.dtype, needed: int) -> int:
    """A pixel x is interpolated between the cells floor(x / cell - 0.5) and the next one; so
    a region grown by ``needed`` reads whole cells reaching this far beyond the (cell-aligned)
    core: one cell when needed is 0."""
    cell = p["cell"]
    before = cell * (-(-(2 * needed + cell) // (2 * cell)))
    after = cell if needed == 0 else cell * ((2 * (needed - 1) - cell) // (2 * cell) + 2)
    return max(before, after)


class ObjectParam(Param):
    """A parameter whose value is any JSON object (the ``params`` of a custom op)."""

    def expectation(self) -> str:
        return "an object"

    def check(self, value: Any) -> str | None:
        if isinstance(value, dict):
            return None
        return f"expected {self.expectation()}, got {json.dumps(value, default=repr)}"


class BandsParam(Param):
    """A list of 0-based band indices (``select_bands``): at least one, repeats allowed."""

    def expectation(self) -> str:
        return "a list of one or more band indices (integers from 0 to 65534)"

    def check(self, value: Any) -> str | None:
        if isinstance(value, list) and value and all(
                _BAND.check(v) is None for v in value):
            return None
        return f"expected {self.expectation()}, got {show(value)}"

    def value(self, value: Any) -> Any:
        """Each index an int (``[2.0, 1]`` is ``[2, 1]``: numpy indexes with ints only)."""
        return [int(v) for v in value]


def _band(name: str, help_: str) -> Param:
    """A required 0-based band index (TIFF's SamplesPerPixel is at most 65535)."""
    return Param(name, "integer", help_, required=True, ge=0, le=65534)


_BAND = _band("band", "a 0-based band index")


class FunctionParam(Param):
    """The ``function`` of a custom op: a string naming ``package.module:function``, checked
    as a parameter, so that its problem is at its own path, with the op's other problems."""

    def check(self, value: Any) -> str | None:
        return super().check(value) or custom_mod.spec_problem(value)


def _only(dtypes: tuple[str, ...], channels: tuple[int, ...] | None, name: str,
          why: str = "") -> Callable[[dict[str, Any], np.dtype, int], str | None]:
    def accepts(p: dict[str, Any], dtype: np.dtype, ch: int) -> str | None:
        if np.dtype(dtype).name not in dtypes:
            return (f"{name} needs {' or '.join(dtypes)} pixels, the page has "
                    f"{np.dtype(dtype).name}{why}")
        if channels is not None and ch not in channels:
            if channels == (1,):
                fix = "put to_gray before it" if ch <= 4 else \
                    f"a page of {ch} bands has no gray version (to_gray takes 1 to 4 bands)"
                return f"{name} needs 1 channel(s), the page has {ch}; {fix}"
            return (f"{name} needs {channels[0]} to {channels[-1]} bands (gray, gray + alpha, "
                    f"RGB or RGBA), the page has {ch} bands")
        return None
    return accepts


#: what a hint to put a convert before an op adds (convert needs a range on float pages)
_RANGE_TOO = ", with an \"in_range\" on float pages"


def _percentile_check(p: dict[str, Any]) -> str | None:
    if p["p_low"] >= p["p_high"]:
        return f"p_low ({p['p_low']}) must be below p_high ({p['p_high']})"
    return None


# --- the registry -------------------------------------------------------------------


#: the types other than uint8 whose median is cv2.medianBlur's (int8 and float16 through
#: int16 and float32; docs/sample-types.md): 32 and 64-bit integers and float64 have numpy's
_OPENCV_MEDIAN_TYPES = frozenset(
    {t for t in dtypes.CV_MEDIAN if t != "uint8"}
    | {t for t, wider in dtypes.EXACT_WIDER.items() if np.dtype(wider).name in dtypes.CV_MEDIAN})


def _median_accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    if np.dtype(dtype) != np.uint8 and p["ksize"] > 5:
        how = ("OpenCV's medianBlur takes ksize 3 or 5 only" if np.dtype(dtype).name in
               _OPENCV_MEDIAN_TYPES else "its median is tiffpipe's own (OpenCV has none for "
               "it), up to ksize 5 as OpenCV's for other types")
        return f"median_blur with ksize {p['ksize']} needs uint8 pixels (for " \
               f"{np.dtype(dtype).name} {how}); use ksize <= 5, or convert to uint8 first"
    return None


def _to_gray_accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    if channels in (1, 2, 3, 4):
        return None
    return (f"to_gray needs 1 to 4 bands (gray, gray + alpha, RGB or RGBA), the page has "
            f"{channels} bands: a gray value of {channels} bands is not defined")


def _bands_accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    named = ([(f"bands[{i}]", b) for i, b in enumerate(p["bands"])] if "bands" in p
             else [("a", p["a"]), ("b", p["b"])])
    wrong = [f"{name} is {band}" for name, band in named if band >= channels]
    if not wrong:
        return None
    if channels == 1:  # (one band: index 0, the only one to pick)
        has = "the page has 1 band (index 0)"
        fix = ("pick band 0" if "bands" in p else
               "it needs 2 bands or more: leave the page out of the job's pages")
    else:
        has = f"the page has {channels} band(s) (indices 0 to {channels - 1})"
        fix = f"pick bands from 0 to {channels - 1}"
    return f"{', '.join(wrong)}, {has}; {fix}"


def _keeps(p: dict[str, Any]) -> str:
    """:attr:`Op.binary` of an op that keeps a page of 0 and the maximum one."""
    return "keeps"


def _makes(p: dict[str, Any]) -> str:
    """:attr:`Op.binary` of an op whose output holds 0 and the maximum only."""
    return "makes"


#: a gaussian_blur of this sigma or more grays black and white wherever they meet (a pixel
#: by a straight edge takes 27 of 255 from its neighbour at 0.5; measured on uint8, whose
#: steps are the coarsest: from 0.29 by 1, while up to 0.28 the kernel's outer weights
#: round away and a 0/255 page stays one); below it, the pixels tell (Op.binary "")
GRAYING_SIGMA = 0.5

#: the start of the advice to a rotate angle given counter-clockwise (-90)
_CLOCKWISE = "angles are clockwise: "


def _geometric(name: str, help_: str, params: tuple[Param, ...],
               transform: Callable[[dict[str, Any]], Any], exact: str, **more: Any) -> Op:
    """A geometric op: any sample type and band count, values moved as they are."""
    return Op(name, help_, params, lambda img, p: transform(p).page(img), kind="geometry",
              geometry=transform, keeps_values=True, binary=_keeps, exact=exact,
              halo_help="0 (moves pixels; tiles are laid on the page it makes)", **more)


def _box(name: str, help_: str, low: int) -> Param:
    return Param(name, "integer", help_, required=True, ge=low, le=2**31 - 1)


#: the names other tools give a box's edges (left, top, right, bottom: PIL's crop, rasterio's
#: and shapely's bounds), for a crop given them: crop's box is x, y, width, height
BOX_CORNERS: tuple[tuple[str, str, str, str], ...] = (
    ("left", "top", "right", "bottom"), ("left", "upper", "right", "lower"),
    ("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"),
    ("minx", "miny", "maxx", "maxy"))


def _corners_advice(item: dict[str, Any]) -> str | None:
    """What a crop given its box by edges (:data:`BOX_CORNERS`) is told: its own parameters
    with the box converted (width = right - left; x and y given stand for left and top),
    where an edge is not a number given, the formula of it; else None."""
    names = next((n for n in BOX_CORNERS if item.keys() & set(n)), None)
    if names is None:
        return None
    left, top, right, bottom = names

    def number(key: str) -> float | None:
        value = item.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value if ok else None

    starts, sizes = {}, {}
    for start, size, low, high in (("x", "width", left, right), ("y", "height", top, bottom)):
        first = number(low) if low in item else number(start)
        last = number(high)
        starts[start] = low if first is None else json.dumps(first)
        sizes[size] = (f"{high} - {low}" if first is None or last is None
                       else json.dumps(last - first))
    box = ", ".join(f'"{key}": {value}' for key, value in {**starts, **sizes}.items())
    return (f"crop takes x, y, width and height (the box's first column and row, and its "
            f'size), not {", ".join(names)}: give {{"op": "crop", {box}}}')


def _differ(p: dict[str, Any]) -> str | None:
    return f"a and b must be different bands (both are {p['a']})" if p["a"] == p["b"] else None


#: the blurs' :attr:`Op.exact`: OpenCV's, but on a page with no-data or a mask
_VALID_BLUR_EXACT = (
    "bit-identical to the OpenCV call on the whole page (types OpenCV lacks: to its definition "
    "in docs/sample-types.md); on a page with a no-data value or a carried mask, to the blur "
    "of the valid samples alone (normalized convolution) of the whole page")

_SIGMA = Param("sigma", "number", "standard deviation of the Gaussian, in pixels",
               required=True, gt=0, le=500)
_KSIZE_MORPH = Param("ksize", "integer", "side of the square kernel, in pixels",
                     default=3, ge=1, le=255)
_MORPH_HALO = "(ksize // 2) * iterations"
_ITER = Param("iterations", "integer", "how many times to apply it", default=1, ge=1, le=100)

#: normalize's and percentile_stretch's statistics of each band for that band (a DAPI
#: channel 10x brighter than the others, QGIS's per-band 2-98% of a true-colour composite)
_PER_BAND = Param("per_band", "boolean", "statistics of each band for that band alone "
                  "(false: over all channels)", default=False)

_NO_MEDIAN = 'a block\'s median is not offered: "mean" (its mean), or "mode" for class labels'
_INTERPOLATING = ("interpolating methods are not offered: a block becomes its mean (as "
                  "INTER_AREA) or one of its samples")
#: what downsample's ``method`` and ``output_options.pyramid_resampling`` tell the names
#: other tools give theirs (GDAL's ``-r``, ArcGIS, QGIS) and the methods they do not offer:
#: (name, advice) pairs, as :attr:`Param.hints`
METHOD_HINTS: tuple[tuple[str, str], ...] = (
    *((name, f'GDAL\'s "{name}" is "{ours}" here') for name, ours in
      (("average", "mean"), ("near", "nearest"))),
    ("majority", 'ArcGIS\'s and QGIS\'s "majority" is "mode" here'),
    *((name, _NO_MEDIAN) for name in ("median", "med")),
    *((name, _INTERPOLATING) for name in ("bilinear", "cubic", "cubicspline", "lanczos")),
)


OPS: dict[str, Op] = {op.name: op for op in (
    Op("gaussian_blur", "cv2.GaussianBlur(img, (0, 0), sigma)", (_SIGMA,), fn.gaussian_blur,
       halo=lambda p, dt: gaussian_radius(p["sigma"], dt), keeps_values=True,
       reads_nodata=True, reads_mask=True, valid_bytes=32, exact=_VALID_BLUR_EXACT,
       binary=lambda p: "grays" if p["sigma"] >= GRAYING_SIGMA else "",
       halo_help="the radius OpenCV gives the kernel: (round(sigma * k * 2 + 1) | 1) // 2, "
                 "k = 3 for uint8, 4 otherwise"),
    Op("median_blur", "cv2.medianBlur(img, ksize)",
       (Param("ksize", "integer", "aperture size", required=True, ge=3, le=255, odd=True),),
       fn.median_blur, halo=lambda p, dt: p["ksize"] // 2, accepts=_median_accepts,
       keeps_values=True, binary=_keeps,
       halo_help="ksize // 2"),
    Op("dilate", "cv2.dilate(img, ones((ksize, ksize)), iterations=iterations)",
       (_KSIZE_MORPH, _ITER), fn.dilate, halo=lambda p, dt: (p["ksize"] // 2) * p["iterations"],
       keeps_values=True, binary=_keeps, reads_nodata=True, reads_mask=True, valid_bytes=9,
       halo_help=_MORPH_HALO),
    Op("erode", "cv2.erode(img, ones((ksize, ksize)), iterations=iterations)",
       (_KSIZE_MORPH, _ITER), fn.erode, halo=lambda p, dt: (p["ksize"] // 2) * p["iterations"],
       keeps_values=True, binary=_keeps, reads_nodata=True, reads_mask=True, valid_bytes=9,
       halo_help=_MORPH_HALO),
    Op("unsharp_mask",
       "cv2.addWeighted(img, 1 + amount, cv2.GaussianBlur(img, (0, 0), sigma), -amount, 0)",
       (_SIGMA, Param("amount", "number", "strength of the sharpening", default=1.0,
                      ge=0, le=100)),
       fn.unsharp_mask, halo=lambda p, dt: gaussian_radius(p["sigma"], dt), keeps_values=True,
       reads_nodata=True, reads_mask=True, valid_bytes=32, exact=_VALID_BLUR_EXACT,
       halo_help="as gaussian_blur"),
    Op("invert", "cv2.bitwise_not(img) for integers (max - v unsigned, -1 - v signed); "
       "1 - img for floats", (), fn.invert, linear=fn.invert_linear, binary=_keeps),
    Op("gamma", "max * (max(img, 0) / max) ** (1 / gamma), rounded (a LUT for integers); "
       "floats: max(img, 0) ** (1 / gamma)",
       (Param("gamma", "number", "gamma; > 1 brightens", required=True, gt=0, le=100),), fn.gamma,
       binary=_keeps),
    Op("threshold", "cv2.threshold(img, value, max, THRESH_BINARY); max = dtype max (1.0 float)",
       (Param("value", "number", "pixels > value become max, others 0", required=True),),
       fn.threshold, binary=_makes),
    Op("to_gray", "cv2.cvtColor(img, COLOR_RGB2GRAY / COLOR_RGBA2GRAY); gray+alpha keeps gray",
       (), fn.to_gray, accepts=_to_gray_accepts, out_channels=lambda ch: 1, colour=True,
       reads_rgb=True),
    Op("select_bands", "img[:, :, bands]: the bands listed, in that order",
       (BandsParam("bands", "array", "0-based band indices, in output order; repeats allowed",
                   required=True),),
       fn.select_bands, accepts=_bands_accepts, picks=lambda p: p["bands"],
       keeps_values=True, colour=True, binary=_keeps,
       exact="bit-identical to the numpy selection on the whole page"),
    Op("normalized_difference", "(a - b) / (a + b) in float64, as float32, of the bands' "
       "physical values (scale * v + offset, GDAL_METADATA) when their offsets or scales "
       "differ from 0 and each other; 0 where a + b == 0, NaN where a or b is the page's "
       "no-data value",
       (_band("a", "0-based index of the first band (NIR for NDVI)"),
        _band("b", "0-based index of the second band (red for NDVI)")),
       fn.normalized_difference, accepts=_bands_accepts, check=_differ,
       out_channels=lambda ch: 1, out_dtype=lambda p, dt: np.dtype(np.float32),
       reads_nodata=True, reads_scaling=True, own_nodata=lambda p: float("nan"), colour=True,
       names=lambda p, n: [f"({n[p['a']]} - {n[p['b']]}) / ({n[p['a']]} + {n[p['b']]})"],
       exact="bit-identical to the numpy formula on the whole page"),
    Op("convert", "olo + (v - lo) / (hi - lo) * (ohi - olo) in float64, clipped to out_range "
       "[olo, ohi], rounded half to even (saturate_cast) or cast to dtype; [lo, hi] = in_range",
       convert_mod.PARAMS, convert_mod.convert, accepts=convert_mod.accepts,
       check=convert_mod.check, out_dtype=convert_mod.out_dtype, reads_nodata=True,
       own_nodata=convert_mod.own_nodata, linear=convert_mod.linear,
       exact="bit-identical to the numpy formula on the whole page"),
    Op("equalize_hist", "cv2.equalizeHist(page)", (), fn.whole_page_stats(stats_mod.EQUALIZE),
       kind="stats", stats=stats_mod.EQUALIZE, reads_nodata=True, reads_mask=True,
       keeps_nodata=True,
       accepts=_only(("uint8",), (1,), "equalize_hist",
                     " (OpenCV's equalizeHist is 8-bit only); put {\"op\": \"convert\", "
                     "\"dtype\": \"uint8\"} before it" + _RANGE_TOO + " (or use normalize, or "
                     "percentile_stretch on 8 and 16-bit pages, instead)"),
       halo_help="0 (a table from the page's histogram: a statistics round)"),
    Op("otsu_threshold", "cv2.threshold(page, 0, max, THRESH_BINARY | THRESH_OTSU); max = "
       "the dtype's maximum", (),
       fn.whole_page_stats(stats_mod.OTSU), kind="stats", stats=stats_mod.OTSU, binary=_makes,
       reads_nodata=True, reads_mask=True, keeps_nodata=True,
       accepts=_only(("uint8", "uint16"), (1,), "otsu_threshold",
                     " (OpenCV's Otsu takes 8 and 16-bit unsigned pages only); put "
                     "{\"op\": \"convert\", \"dtype\": \"uint16\"} (or uint8) before it"
                     + _RANGE_TOO + ", or use threshold with a value"),
       halo_help="0 (a threshold from the page's histogram: a statistics round)"),
    Op("normalize", "cv2.normalize(page, None, 0, max, NORM_MINMAX); max = dtype max (1.0 float); "
       "per_band: each band by its own minimum and maximum",
       (_PER_BAND,), fn.whole_page_stats(stats_mod.NORMALIZE), kind="stats",
       stats=stats_mod.NORMALIZE,
       binary=_keeps, reads_nodata=True, reads_mask=True, keeps_nodata=True,
       accepts=_only(dtypes.ALL, None, "normalize"),
       halo_help="0 (the page's minimum and maximum over all channels, or per band: a "
                 "statistics round)"),
    Op("percentile_stretch",
       "clip(rint((v - lo) / (hi - lo) * max), 0, max); lo, hi = np.percentile(page, "
       "(p_low, p_high), method='lower') over all channels (per_band: of each band, "
       "np.percentile(page[..., b], ...), for that band)",
       (Param("p_low", "number", "percentile mapped to 0", default=1.0, ge=0, le=100),
        Param("p_high", "number", "percentile mapped to the maximum", default=99.0, ge=0,
              le=100), _PER_BAND),
       fn.whole_page_stats(stats_mod.STRETCH), kind="stats", stats=stats_mod.STRETCH,
       reads_nodata=True, reads_mask=True, keeps_nodata=True,
       accepts=_only(dtypes.HISTOGRAM, None, "percentile_stretch",
                     " (exact percentiles come from a histogram); use normalize"),
       check=_percentile_check, exact="bit-identical to the numpy formula on the whole page",
       halo_help="0 (a table from the page's histogram: a statistics round)"),
    Op("clahe",
       "cv2.createCLAHE(clip_limit, (width / cell, height / cell)).apply(page); a page that is "
       "not a whole number of cells is first mirrored (BORDER_REFLECT_101) to one, then cropped",
       (Param("clip_limit", "number", "contrast limit (0: none)", default=2.0, ge=0, le=1000),
        Param("cell", "integer", "side of a CLAHE cell in pixels (a power of two)", default=64,
              choices=(8, 16, 32, 64, 128, 256, 512, 1024))),
       fn.clahe, halo=lambda p, dt: p["cell"], reach=_clahe_reach, align=lambda p: p["cell"],
       accepts=_only(("uint8", "uint16"), (1,), "clahe",
                     " (OpenCV's CLAHE takes 8 and 16-bit unsigned pages only); put "
                     "{\"op\": \"convert\", \"dtype\": \"uint16\"} (or uint8) before it"
                     + _RANGE_TOO),
       halo_help="one cell (1.5 cells when an op with a halo follows); tiles and halos are "
                 "multiples of the cell"),
    Op("canny", "cv2.Canny(cv2.GaussianBlur(page, (0, 0), sigma), low, high); no blur when "
       "sigma is 0",
       (Param("low", "number", "hysteresis threshold: weak edges", required=True, ge=0,
              le=100000),
        Param("high", "number", "hysteresis threshold: strong edges", required=True, ge=0,
              le=100000),
        Param("sigma", "number", "Gaussian blur before the edges (0: none)", default=0.0, ge=0,
              le=100)),
       fn.canny, kind="canny", halo=lambda p, dt: canny_mod.reach(p, 0),
       reach=lambda p, dt, needed: canny_mod.reach(p, needed),
       accepts=_only(("uint8",), (1, 2, 3, 4), "canny",
                     " (OpenCV's Canny is 8-bit only); put {\"op\": \"convert\", "
                     "\"dtype\": \"uint8\"} before it" + _RANGE_TOO),
       out_channels=lambda ch: 1, binary=_makes,
       reads_nodata=True, reads_mask=True, valid_bytes=32,
       colour=True, halo_help="blur radius + 2 (Sobel and non-maximum suppression); the hysteresis "
                 "follows edges across the page in a statistics round of its own"),
    Op("downsample",
       "cv2.resize(page, (width // factor, height // factor), interpolation=INTER_AREA) of "
       "the page cropped to multiples of factor; on a page with a no-data value or a carried "
       "mask, each block's mean over its valid samples alone (GDAL's average resampling); "
       "method nearest, mode, min or max: one valid sample of each block (GDAL's -r of "
       "that name), for class labels, bit masks and palette indices",
       (Param("factor", "integer", "the output is this many times smaller", required=True,
              ge=2, le=64),
        Param("method", "string", "how a block becomes a pixel: its mean, or the sample "
              "nearest its centre, its most frequent, smallest or largest value",
              default="mean", choices=METHODS,
              hints=METHOD_HINTS)),
       fn.downsample, reach=lambda p, dt, needed: needed * p["factor"],
       align=lambda p: p["factor"], factor=lambda p: p["factor"], keeps_values=True,
       binary=lambda p: "grays" if p["method"] == "mean" else "keeps",
       reads_nodata=True, reads_mask=True,
       exact="bit-identical to the OpenCV call on the whole page (types OpenCV lacks: to its "
             "definition in docs/sample-types.md); on a page with a no-data value or a "
             "carried mask, to GDAL's average resampling of the whole page; the other "
             "methods to their definition in docs/manifest-and-ops.md, \"Categorical data\"",
       halo_help="0; ops after it count their halos in output pixels (x factor); tiles are "
                 "multiples of 16 x factor"),
    _geometric("rotate", "cv2.rotate(img, ROTATE_90_CLOCKWISE / ROTATE_180 / "
               "ROTATE_90_COUNTERCLOCKWISE) for angle 90 / 180 / 270 (clockwise)",
               (Param("angle", "integer", "degrees, clockwise as the page is stored (row 0 "
                      "at the top)", required=True, choices=(90, 180, 270),
                      hints=((-90, _CLOCKWISE + "a quarter turn counter-clockwise is 270"),
                             (-180, _CLOCKWISE + "a half turn is 180"),
                             (-270, _CLOCKWISE + "a three-quarter turn counter-clockwise "
                                                 "is 90"))),),
               lambda p: geo.ROTATIONS[p["angle"]],
               "bit-identical to cv2.rotate on the whole page (np.rot90 beyond 4 bands, "
               "which OpenCV refuses)"),
    _geometric("flip", "cv2.flip(img, 1) for axis horizontal (left and right swap), "
               "cv2.flip(img, 0) for vertical (top and bottom swap)",
               (Param("axis", "string", "horizontal: mirror left to right; vertical: top to "
                      "bottom", required=True, choices=("horizontal", "vertical")),),
               lambda p: geo.FLIPS[p["axis"]],
               "bit-identical to cv2.flip on the whole page (np.flip beyond 4 bands)"),
    _geometric("crop", "img[y:y + height, x:x + width]: the box, in pixels of the page as "
               "the op gets it",
               (_box("x", "first column of the box", 0), _box("y", "first row of the box", 0),
                _box("width", "columns of the box", 1), _box("height", "rows of the box", 1)),
               lambda p: geo.Crop(p["x"], p["y"], p["width"], p["height"]),
               "bit-identical to the numpy slice of the whole page", respelt=_corners_advice),
    Op("custom", "function(tile, **params), a user function (package.module:function) "
       "returning a tile of the same shape and dtype",
       (FunctionParam("function", "string", "the function, as package.module:function",
                      required=True),
        Param("halo", "integer", "pixels around a tile the function's output depends on",
              default=0, ge=0, le=4096),
        ObjectParam("params", "object", "keyword arguments of the function", default={})),
       fn.custom, halo=lambda p, dt: p["halo"],
       halo_help="the halo given", exact="exact when the function only looks `halo` pixels "
                                         "away and not at where the tile lies"),
)}

def chain_turns(ops: list[dict[str, Any]]) -> bool:
    """Whether a chain (its JSON, validated) rotates or flips its pages
    (pipeline.core.geometry: a Turn, not a Crop)."""
    return any((make := OPS[op["op"]].geometry) is not None and make(op).turns for op in ops)


def chain_keeps_indices(ops: list[dict[str, Any]]) -> bool:
    """Whether every op of a chain (its JSON) makes each output pixel one of its input's,
    never a mix of values: it only moves pixels (rotate, flip, crop), or picks one of each
    block (a downsample by a method other than "mean"); true of an empty chain. A palette
    page's indices then stay indices."""
    return all(op.get("op") in OPS and (OPS[op["op"]].geometry is not None or (
        op["op"] == "downsample" and op.get("method", "mean") != "mean")) for op in ops)


def chain_keeps_values(ops: list[dict[str, Any]]) -> bool:
    """Whether every op of a chain (its JSON) keeps values (:attr:`Op.keeps_values`): an
    input's no-data value still marks the pixels without data in its output."""
    return all(OPS[op["op"]].keeps_values for op in ops)


def chain_keeps_nodata(ops: list[dict[str, Any]]) -> bool:
    """Whether every op of a chain (its JSON) keeps values or writes its input's no-data
    pixels back unchanged (:attr:`Op.keeps_values`, :attr:`Op.keeps_nodata`): an input's
    no-data value still marks the pixels without data in its output (GDAL_NODATA is
    kept)."""
    return all((o := OPS[op["op"]]).keeps_values or o.keeps_nodata for op in ops)


def chain_binary(calls: list[OpCall]) -> tuple[int | None, str]:
    """What a chain's output makes of black and white (:attr:`Op.binary`): its last op that
    does not keep them decides, so (that op's index, "makes", "grays" or ""), or
    (None, "keeps") when every op keeps them (the output then holds what the page holds).
    The one walk :func:`chain_grays`, :func:`pipeline.core.plan.auto_one_bit` and
    :func:`pipeline.core.plan.one_bit_note` read."""
    for i in range(len(calls) - 1, -1, -1):
        kind = calls[i].op.binary(calls[i].params)
        if kind != "keeps":
            return i, kind
    return None, "keeps"


def chain_grays(calls: list[OpCall]) -> int | None:
    """The index of the op whose gray values (between 0 and the maximum, wherever black and
    white meet) a chain's output holds: its last op that does not keep two values
    (:func:`chain_binary`), when that one grays them; None when it makes them (a threshold),
    when its output is not known before the pixels are (a convert, a custom op), or when
    every op keeps them (the output then holds what the page holds)."""
    last, kind = chain_binary(calls)
    return last if kind == "grays" else None


def chain_keeps_statistics(ops: list[dict[str, Any]]) -> bool:
    """Whether every op of a chain (its JSON) keeps each band's values as they are, only
    moved (rotate, flip) or picked (select_bands): the statistics of a band (GDAL_METADATA's
    STATISTICS_*) still hold in its output."""
    return all((o := OPS[op["op"]]).picks is not None
               or o.geometry is not None and o.geometry(op).turns for op in ops)


#: ops whose result depends on whole-page statistics: each needs a statistics round
GLOBAL_KINDS = ("stats", "canny")


def _op_key_slip(item: Any) -> str | None:
    """The key of an op (a dict without ``"op"``) that most likely stands for ``"op"``: a
    misspelling of it (``opp``, ``Op``, ``OP``: :func:`close_name`, case ignored), or one
    whose value names an op (``"operation": "gaussian_blur"``); None if none does."""
    if not isinstance(item, dict) or "op" in item:
        return None
    keys = [k for k in item if isinstance(k, str)]
    near = [k for k in keys if close_name(k.lower(), ["op"])]
    named = [k for k in keys if isinstance(item[k], str) and item[k] in OPS]
    return (near or named or [None])[0]


_DOWNSAMPLE = ('downsample, by an integer factor ({"op": "downsample", "factor": 2}: half '
               'the width and height, each pixel the mean of its block)')
#: names other tools give to what an op does (libvips, PIL, OpenCV, scikit-image,
#: ImageMagick, GDAL), lower case, and the op here: told instead of a spelling guess
OTHER_NAMES: dict[str, str] = {
    **dict.fromkeys(("resize", "scale", "shrink", "reduce", "thumbnail", "pyrdown",
                     "rescale", "zoom"), _DOWNSAMPLE),
    **dict.fromkeys(("blur", "gaussblur", "gaussian", "smooth"), "gaussian_blur"),
    **dict.fromkeys(("median", "medianfilter", "median_filter"), "median_blur"),
    **dict.fromkeys(("sharpen", "unsharp", "unsharpmask"), "unsharp_mask"),
    **dict.fromkeys(("grayscale", "greyscale", "grey", "gray", "rgb2gray", "desaturate",
                     "colourspace", "colorspace", "cvtcolor"), "to_gray"),
    **dict.fromkeys(("binarize", "binarise", "otsu", "threshold_otsu", "auto_threshold"),
                    "otsu_threshold (or threshold, at a value you give)"),
    **dict.fromkeys(("histeq", "equalize", "equalise", "equalize_histogram",
                     "equalizehist", "hist_equalize"), "equalize_hist"),
    **dict.fromkeys(("stretch", "autocontrast", "auto_contrast", "contrast_stretch",
                     "rescale_intensity", "autolevel", "normalise"),
                    "percentile_stretch (or normalize, to the full range)"),
    **dict.fromkeys(("mirror", "flop", "flipx", "flipy", "fliplr", "flipud"), "flip"),
    **dict.fromkeys(("rot90", "rotate90", "rot"), "rotate"),
    "transpose": ('rotate then flip (a transpose, rows and columns swapped, is {"op": '
                  '"rotate", "angle": 90} then {"op": "flip", "axis": "horizontal"})'),
    **dict.fromkeys(("cast", "astype", "cast_format", "to_uint8", "depth"), "convert"),
    **dict.fromkeys(("ndvi", "ndwi", "band_ratio"), "normalized_difference"),
    **dict.fromkeys(("edges", "edge", "edge_detect", "edge_detection", "find_edges"),
                    "canny"),
    **dict.fromkeys(("negate", "negative", "invert_colors", "bitwise_not"), "invert"),
    **dict.fromkeys(("erosion", "min_filter", "minfilter"), "erode"),
    **dict.fromkeys(("dilation", "max_filter", "maxfilter"), "dilate"),
    **dict.fromkeys(("extract_band", "extract_bands", "bands", "channels", "band_select"),
                    "select_bands"),
    **dict.fromkeys(("clip", "extract_area", "cut"), "crop"),
    "resample": _DOWNSAMPLE,  # (given a factor: see NOT_OFFERED)
}

_REPROJECT = "tiffpipe does not reproject: reproject with gdalwarp first (or after)"
#: what tiffpipe does not do on purpose, by the names other tools give it (lower case): said
#: instead of a spelling guess
NOT_OFFERED: dict[str, str] = {
    **dict.fromkeys(("warp", "gdalwarp", "reproject", "reprojection", "resample"), _REPROJECT),
    **dict.fromkeys(("deskew", "straighten"),
                    "no op deskews (rotate takes quarter turns): deskew before tiffpipe, see "
                    'docs/manifest-and-ops.md#geometric-ops-rotate-flip-crop ("No deskew")'),
}
#: a name of NOT_OFFERED that is one of OTHER_NAMES when the op gives this parameter (a
#: "resample" by a "factor" is a downsample)
OURS_WITH: dict[str, str] = {"resample": "factor"}


def _unknown_op_hint(name: str, item: dict[str, Any]) -> str:
    """What an unknown op name (of the op ``item``) most likely means: what tiffpipe does not
    do (:data:`NOT_OFFERED`), or the op of another tool's name for it (any case: ``DILATE``
    too), else the op it misspells, else nothing."""
    lower = name.lower()
    if lower in OPS:
        return f"; ops are lower case: {lower}"
    if lower in NOT_OFFERED and OURS_WITH.get(lower) not in item:
        return f"; {NOT_OFFERED[lower]}"
    if lower in OTHER_NAMES:
        return f"; tiffpipe's op for it is {OTHER_NAMES[lower]}"
    near = close_name(name, OPS)
    return f"; did you mean {near}?" if near else ""


def parse_chain(ops: Any, path: str = "ops", hint: dict[str, str] | None = None
                ) -> tuple[list[OpCall], list[str]]:
    """Parse a JSON op chain; return (calls, problems), every problem with its JSON path.
    ``hint``: what to add for an unknown parameter of some names (a job's field given in
    an op: :func:`pipeline.core.job_fields.misplaced`)."""
    if not isinstance(ops, list):
        return [], [f"{path}: expected a list of ops, got {show(ops)}"]
    calls: list[OpCall] = []
    problems: list[str] = []
    for i, item in enumerate(ops):
        here = f"{path}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            slip = _op_key_slip(item)
            problems.append(f"{here}.{slip}: unknown field; did you mean op?" if slip else
                            f'{here}: expected an object with "op": one of {", ".join(OPS)}')
            continue
        op = OPS.get(item["op"])
        if op is None:
            guess = _unknown_op_hint(item["op"], item)
            problems.append(f"{here}.op: unknown op {item['op']!r}{guess} (known: "
                            f"{', '.join(OPS)})")
            continue
        told = op.respelt(item)
        if told:
            problems.append(f"{here}: {told}")
            continue
        values, probs = check_object(item, op.params, here, reserved=("op",), hint=hint)
        if all(p.name in values for p in op.params):  # each valid: how they relate, too
            why = op.check(values)
            if why:
                probs.append(f"{here}: {why}")
        problems.extend(probs)
        if not probs:
            calls.append(OpCall(op, values))
    if not problems:  # (each op valid: where the geometric ones stand)
        problems += [f"{path}{p.removeprefix('ops')}" for p in geo.order_problems(calls)]
    return calls, problems


def made_types(calls: list[OpCall]
               ) -> list[tuple[np.dtype | None, int | None, int | None, int | None]]:
    """For each op's input (and last, the output): the sample type and band count that ops
    before it made whatever the page's (None: the page's own, unknown before a page is read),
    the index of the op that made that type (``normalized_difference``: one float32 band;
    ``convert``: its type) and the index of the op that made that count (``select_bands``:
    its bands; ``to_gray``, ``canny``, ``normalized_difference``: one)."""
    dtype: np.dtype | None = None
    channels: int | None = None
    made: int | None = None
    counted: int | None = None
    out = [(dtype, channels, made, counted)]
    for i, call in enumerate(calls):
        types = {call.out_dtype(np.dtype(t)) for t in ("uint8", "float64")}
        if len(types) == 1:  # (the same from any type: made here)
            dtype, made = types.pop(), i
        counts = {call.out_channels(c) for c in (1, 5)}
        if len(counts) == 1:
            channels, counted = counts.pop(), i
        out.append((dtype, channels, made, counted))
    return out


def made_problems(calls: list[OpCall], path: str = "ops") -> list[str]:
    """What PlanJob would refuse on every page, known from the chain (its parsed ``calls``)
    alone: an op that does not take the sample type and band count ops before it made (a
    convert of float32 without in_range after a normalized_difference), or the type alone
    whatever the page's band count (canny after a convert to int8)."""
    problems = []
    for i, (call, (dtype, channels, made, _)) in enumerate(zip(calls, made_types(calls),
                                                               strict=False)):
        if dtype is None or made is None:
            continue
        # (a band count not known yet: a refusal on every count (1 to 4, and 5: more) alone)
        whys = {call.op.accepts(call.params, dtype, c)
                for c in ((channels,) if channels is not None else (1, 2, 3, 4, 5))}
        why = whys.pop() if len(whys) == 1 else None
        if why:
            has = f"the page has {dtype.name}"
            why = why.replace(has, f"{has} after ops[{made}] ({calls[made].op.name})", 1)
            problems.append(f"{path}[{i}] ({call.op.name}): {why}")
    return problems


def chain_from_json(ops: list[dict[str, Any]]) -> list[OpCall]:
    """A chain from JSON that was validated before (raises on any problem)."""
    calls, problems = parse_chain(ops)
    if problems:
        raise OperationError("; ".join(problems))
    return calls


def chain_halo(chain: list[OpCall], dtype: np.dtype) -> int:
    """The halo of the input tiles of a chain: for local ops the sum of their halos, rounded
    up to HALO_ALIGN (0 stays 0); in general ``ChainLayout.split_halo``."""
    from pipeline.core.chain import ChainLayout

    return ChainLayout.of(chain, dtype).split_halo


def chain_out_channels(chain: list[OpCall], channels: int) -> int:
    for call in chain:
        channels = call.out_channels(channels)
    return channels


def chain_bands(ops: list[dict[str, Any]], channels: int) -> tuple[int, ...] | None:
    """The input band each output band of a chain (its JSON) is, on pages of ``channels``
    bands: a ``select_bands`` picks them; None when an op makes bands of its own (to_gray,
    canny, normalized_difference: the output's interpretation is then its band count's)."""
    bands: tuple[int, ...] | None = tuple(range(channels))
    for call in chain_from_json(ops):
        if call.op.picks is not None:
            bands = None if bands is None else tuple(bands[i] for i in call.op.picks(
                call.params))
        elif bands is not None and call.out_channels(len(bands)) != len(bands):
            bands = None
    return bands


def chain_band_names(ops: list[dict[str, Any]], names: list[str]) -> list[str | None]:
    """The name of each output band of a chain (its JSON) on a page whose bands are named
    ``names`` (their GDAL descriptions, else ``band n``, 1-based as GDAL numbers them):
    a ``select_bands`` picks them, an op with :attr:`Op.names` names the bands it makes
    (normalized_difference: ``(B08 - B04) / (B08 + B04)``), per-band ops keep them; None for
    a band an op made without a name (to_gray, canny, a custom op that changes the count)."""
    out: list[str | None] = list(names)
    for call in chain_from_json(ops):
        known = [f"band {i + 1}" if n is None else n for i, n in enumerate(out)]
        if call.op.picks is not None:
            out = [out[i] for i in call.op.picks(call.params)]
        elif call.op.names is not None:
            out = list(call.op.names(call.params, known))
        elif call.out_channels(len(out)) != len(out):
            out = [None] * call.out_channels(len(out))
    return out


def chain_linear(ops: list[dict[str, Any]], dtype: np.dtype | str
                 ) -> tuple[Fraction, Fraction] | None:
    """``(a, b)`` when the chain (its JSON) maps each value v of a page of ``dtype`` to
    a v + b as far as a band's scale and offset go: its ops keep values (:attr:`Op.
    keeps_values`: a mean, a maximum or a moved pixel of a v + b values is one too) or map
    them linearly (:attr:`Op.linear`: a convert that clips none, invert of integers); else
    None. Composed as exact fractions (:func:`pipeline.core.convert.exact`): no float error
    builds up over several maps."""
    dtype = np.dtype(dtype)
    a, b = Fraction(1), Fraction(0)
    for call in chain_from_json(ops):
        if (mine := call.op.linear(call.params, dtype)) is not None:
            ma, mb = map(convert_mod.exact, mine)
            a, b = ma * a, ma * b + mb
        elif not call.op.keeps_values:
            return None
        dtype = call.out_dtype(dtype)
    return a, b


def chain_own_nodata(ops: list[dict[str, Any]]) -> float | None:
    """The no-data value an op of the chain (its JSON) gives its output (``Op.own_nodata``:
    normalized_difference's NaN, convert's ``nodata``) when every op after it keeps values
    or keeps the no-data pixels (:func:`chain_keeps_nodata`); else None."""
    own = None
    for op in ops:
        o = OPS[op["op"]]
        mine = o.own_nodata(op)
        own = mine if mine is not None else own if o.keeps_values or o.keeps_nodata else None
    return own


def with_nodata(chain: list[OpCall], nodata: Callable[[int], float | None],
                scaling: Callable[[int], list[tuple[float, float]] | None] | None = None
                ) -> list[OpCall]:
    """The chain with each op that takes its input's no-data value (``Op.reads_nodata``) given
    it as the parameter ``input_nodata``: ``nodata(i)``, the value at op i's input (None:
    none); and each op that takes its input's band scales and offsets (``Op.reads_scaling``)
    given ``scaling(i)`` as ``input_scaling``."""
    out = []
    for i, c in enumerate(chain):
        params = c.params
        if c.op.reads_nodata:
            params = {**params, "input_nodata": nodata(i)}
        if c.op.reads_scaling and scaling is not None:
            params = {**params, "input_scaling": scaling(i)}
        out.append(c if params is c.params else OpCall(c.op, params))
    return out


#: TIFF ExtraSamples values of an alpha band (associated, unassociated)
_ALPHA = (1, 2)


def _gray_bands(photometric: str, channels: int, extrasamples: Sequence[int] = ()) -> bool:
    """Whether a page's bands are gray channels of their own, not red, green and blue:
    MINISBLACK with two extra samples or more (a fluorescence image's channels stored as
    samples of one page, a multispectral stack), or with one that is no alpha (two bands, as
    GDAL writes them: a gray + alpha page's, to_gray keeps the first, which would drop the
    second band's data)."""
    if photometric != "minisblack":
        return False
    return channels >= 3 or (channels == 2 and not (extrasamples and
                                                    extrasamples[0] in _ALPHA))


def _gray_bands_problem(call: OpCall, why: str | None, channels: int) -> str | None:
    """``why`` (the op's own problem, None: none) on a page of gray channels: to_gray, which
    would weigh them as red, green and blue, is refused, and a one-channel op's hint to put
    to_gray before it becomes one to pick a channel."""
    pick = '{"op": "select_bands", "bands": [0]}'
    if not why and call.op.reads_rgb:
        extra = channels - 1
        if channels == 2:  # (to_gray keeps band 0: the gray of gray + alpha)
            return (f"{call.op.name} of 2 bands keeps band 0 as gray + alpha's gray and drops "
                    "band 1, and the page's 2 bands are gray channels (MINISBLACK with an extra "
                    "sample that is no alpha: ExtraSamples 0, as GDAL writes 2 bands), not "
                    f"gray + alpha; keep the band you want with {pick} (or [1]) instead of "
                    f"{call.op.name} (a job per band for the other)")
        return (f"{call.op.name} makes a gray value of RGB colours, and the page's {channels} "
                f"bands are gray channels (MINISBLACK with {extra} extra "
                f"sample{'s' if extra > 1 else ''}: fluorescence channels or a multispectral "
                f"stack), not red, green and blue; pick the channel you want with {pick} "
                "before it (a job per channel for the others)")
    if why and why.endswith("; put to_gray before it"):
        return (why.removesuffix("put to_gray before it") + f"its {channels} bands are gray "
                f"channels, not RGB: put {pick} before it (a job per channel for the others)")
    return why


def chain_problems(chain: list[OpCall], dtype: np.dtype, channels: int,
                   photometric: str = "", extrasamples: Sequence[int] = ()) -> list[str]:
    """Why this chain cannot run on pages of this dtype, channel count, photometric and
    ExtraSamples (empty if it can): "separated" (CMYK) pages refuse the ops that read
    colours, and pages of gray channels (:func:`_gray_bands`) the ops that read red, green
    and blue."""
    problems: list[str] = []
    if chain and np.dtype(dtype).name not in SUPPORTED_DTYPES:  # (TIFF has no other type)
        problems.append(f"pixels of type {np.dtype(dtype).name} are not supported by the ops "
                        f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        return problems
    made = ""  # the op whose output's type the next ops get, if not the page's
    for i, call in enumerate(chain):
        why = call.op.accepts(call.params, dtype, channels)
        if not why and call.op.colour and photometric == "separated":
            why = (f"{call.op.name} needs gray or RGB, the page is CMYK (its inks become RGB "
                   "only through its colour management); convert the file to RGB first")
        if _gray_bands(photometric, channels, extrasamples):
            why = _gray_bands_problem(call, why, channels)
        has = f"the page has {np.dtype(dtype).name}"
        if why and made and has in why:  # (the page's own type is another)
            why = why.replace(has, f"{has} after {made}", 1)
        if why:
            problems.append(f"ops[{i}] ({call.op.name}): {why}")
        if call.out_channels(channels) != channels:
            photometric = ""  # bands of the op's own making (to_gray, canny: gray)
        channels = call.out_channels(channels)
        if call.out_dtype(dtype) != dtype:
            dtype, made = call.out_dtype(dtype), f"ops[{i}] ({call.op.name})"
    return problems


def apply_chain(img: np.ndarray, chain: list[OpCall]) -> np.ndarray:
    """Run a chain on an array ((h, w) or (h, w, c)) taken as the WHOLE page (ops with
    whole-page statistics use the array's); each op's result has its input's dtype (but for
    ``Op.out_dtype``). The tiled path runs chains with pipeline.steps.evaluate instead."""
    for call in chain:
        out = call.op.apply(img, call.params)
        if out.dtype != (want := call.out_dtype(img.dtype)):
            out = out.astype(want)
        img = out
    return img
