"""The optional fields of a job, or of a manifest's ``defaults``: each field's check, the
built-in defaults, how ``defaults`` and a job's own fields stack (:func:`effective`), and
the rules across fields (:func:`cross_problems`). Every problem is a message
``<json path>: <what was expected>, got <what came>``. Pure module.
"""

from __future__ import annotations

import json
import math
from dataclasses import field
from typing import TYPE_CHECKING, Any

from pipeline.core.models import (
    BILEVEL_COMPRESSIONS,
    COMPRESSIONS,
    DEFAULT_OUTPUT_TILE,
    DEFAULT_TILE,
    PYRAMID_LAYOUTS,
    JobSpec,
    OutputOptions,
)
from pipeline.core.ops import METHOD_HINTS, made_problems, made_types, parse_chain
from pipeline.core.params import Param, show, unknown_field_problems
from pipeline.core.record import record
from pipeline.core.reduce import METHODS

if TYPE_CHECKING:
    from pipeline.core.chain import ChainLayout

OPTION_FIELDS = ("compression", "level", "quality", "tile", "pyramid", "pyramid_layout",
                 "pyramid_resampling", "ome", "bilevel", "bilevel_compression", "masks",
                 "bigtiff", "cog")

#: where each field of a manifest goes (the first row naming it), for one given in another
#: place: (fields, where they go), told instead of a spelling guess (:func:`misplaced`)
BELONGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("defaults",), "goes at the top of the manifest, beside jobs"),
    (("jobs", "scan"), "goes at the top of the manifest"),
    (("input", "output"), "is set in each job"),
    (("pages", "ops", "tile", "fuse", "if_exists"), "is a job field (or in defaults)"),
    (OPTION_FIELDS, "is an output option: put it in output_options"),
)
#: each place a field is checked in, as the advice of a field misplaced there names it
#: ("": said well enough by where it goes)
PLACES = {"top": "", "job": "", "defaults": "", "output_options": "an output option",
          "op": "an op parameter"}


def misplaced(place: str) -> dict[str, str]:
    """The advice for each field of :data:`BELONGS` given in ``place`` (a key of
    :data:`PLACES`), for :func:`~pipeline.core.params.unknown_field_problems` (the fields
    ``place`` allows are not unknown there, so not told)."""
    advice: dict[str, str] = {}
    for fields, goes in BELONGS:
        for name in fields:
            advice.setdefault(name, f"; {name} {goes}" + (f", not {PLACES[place]}"
                                                           if PLACES[place] else ""))
    return advice


#: processing tile: (smallest, largest), a multiple of TILE_STEP
TILE_RANGE = (64, 8192)
#: output tile: (smallest, largest), a multiple of TILE_STEP
OUTPUT_TILE_RANGE = (16, 4096)
TILE_STEP = 16
#: compression -> (lowest, highest) level; other compressions take no level
LEVELS = {"zstd": (1, 22), "deflate": (1, 9)}
QUALITY_COMPRESSIONS = ("jpeg",)

_COMPRESSION = Param("compression", "string", "codec of the output tiles", default="zstd",
                     choices=COMPRESSIONS)
_LEVEL = Param("level", "integer", "codec level (zstd 1-22, deflate 1-9)")
_QUALITY = Param("quality", "integer", "jpeg quality", default=90, ge=1, le=100)
_PAGE = Param("page", "integer", "page index", ge=0)
_PYRAMID = Param("pyramid", "boolean", "reduced-resolution levels", default=False)
_PYRAMID_LAYOUT = Param("pyramid_layout", "string", "where the levels go: SubIFDs of their "
                        "page, or pages after it", default="subifds", choices=PYRAMID_LAYOUTS)
_PYRAMID_RESAMPLING = Param("pyramid_resampling", "string", "how a level's 2 x 2 blocks "
                            "become its pixels: their mean, the pixel GDAL's nearest "
                            "overviews take (gdaladdo -r nearest), their most frequent, "
                            "smallest or largest value",
                            default="mean", choices=METHODS, hints=METHOD_HINTS)
_OME = Param("ome", "boolean", "write OME-TIFF", default=False)
_BILEVEL_COMPRESSION = Param("bilevel_compression", "string", 'codec of the 1-bit pages of a '
                             '"bilevel": "auto" job', default="group4",
                             choices=BILEVEL_COMPRESSIONS)
_MASKS = Param("masks", "boolean", "carry the input pages' internal masks (valid data)",
               default=True)
_COG = Param("cog", "boolean", "lay the output out as a Cloud Optimized GeoTIFF",
             default=False)
_FUSE = Param("fuse", "boolean", "split and process each unit in one invocation",
              default=True)
#: what a job does when its output exists already
IF_EXISTS = ("overwrite", "skip", "fail")
_IF_EXISTS = Param("if_exists", "string", "when the output exists: overwrite it, skip the "
                   "job, or fail it", default="overwrite", choices=IF_EXISTS)

#: the setting of every optional field when neither the job nor the defaults set it
_BUILTIN: dict[str, Any] = {
    "pages": None,
    "ops": [],
    "tile": DEFAULT_TILE,
    "output_options.compression": OutputOptions.compression,
    "output_options.level": None,
    "output_options.quality": OutputOptions.quality,
    "output_options.tile": DEFAULT_OUTPUT_TILE,
    "output_options.pyramid": OutputOptions.pyramid,
    "output_options.pyramid_layout": OutputOptions.pyramid_layout,
    "output_options.pyramid_resampling": OutputOptions.pyramid_resampling,
    "output_options.ome": OutputOptions.ome,
    "output_options.bilevel": OutputOptions.bilevel,
    "output_options.bilevel_compression": OutputOptions.bilevel_compression,
    "output_options.masks": OutputOptions.masks,
    "output_options.bigtiff": OutputOptions.bigtiff,
    "output_options.cog": OutputOptions.cog,
    "fuse": JobSpec.fuse,
    "if_exists": JobSpec.if_exists,
}


# --- the layers: defaults, then a job ------------------------------------------------


@record
class Layer:
    """The optional fields one object (``defaults`` or a job) sets.

    Keys are flat: ``tile``, ``output_options.level``... ``values`` holds the valid
    ones; ``bad`` the ones present but invalid (already reported).
    """

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)

    def set_keys(self) -> list[str]:
        return [k for k in _BUILTIN if k in self.values or k in self.bad]

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"


@record
class Setting:
    """A field's effective value and the layer that set it (None: built in)."""

    value: Any
    layer: Layer | None
    ok: bool = True


def effective(layers: list[Layer]) -> dict[str, Setting]:
    """The settings after stacking ``layers`` (later ones win) on the built-in defaults.

    A layer that changes the compression drops the ``level`` and ``quality`` that
    earlier layers set: they were meant for the other compression.
    """
    eff = {key: Setting(value, None) for key, value in _BUILTIN.items()}
    for layer in layers:
        new = layer.values.get("output_options.compression")
        if new is not None and new != eff["output_options.compression"].value:
            for key in ("output_options.level", "output_options.quality"):
                eff[key] = Setting(_BUILTIN[key], None)
        for key in layer.set_keys():
            eff[key] = Setting(layer.values.get(key), layer, key not in layer.bad)
    return eff


def job_fields(eff: dict[str, Setting]) -> dict[str, Any]:
    """The optional job fields (pages, ops, tile, output_options, fuse, if_exists) of the
    settings."""
    options = {k: eff[f"output_options.{k}"].value
               for k in OPTION_FIELDS}
    tile = eff["tile"].value
    if eff["tile"].layer is None:  # not set: the default, fitted to the chain
        tile = fitted_default_tile(eff["ops"].value, options["tile"])
    return {"pages": None if eff["pages"].value is None else list(eff["pages"].value),
            "ops": [dict(op) for op in eff["ops"].value], "tile": tile,
            "output_options": OutputOptions(**options), "fuse": bool(eff["fuse"].value),
            "if_exists": str(eff["if_exists"].value)}


def fitted_default_tile(ops: list[dict[str, Any]], out_tile: int) -> int:
    """The processing tile of a job that sets none: DEFAULT_TILE, or where the chain or the
    output tile does not divide it the next size up that fits: a multiple of the chain's
    alignment (16 x a downsampling factor, a clahe cell) and of the output tile in input
    pixels (a downsample by 3 with 512 px output tiles: 1536). DEFAULT_TILE if none does
    within TILE_RANGE: the plan then says which tiles fit."""
    align, out_step = TILE_STEP, out_tile
    layout = _chain_layout(ops)
    if layout is not None:
        align, out_step = layout.align, out_tile * layout.factor
    return tile_at_least(DEFAULT_TILE, tile_step(align, out_step)) or DEFAULT_TILE


def _chain_layout(ops: Any) -> ChainLayout | None:
    """The alignment and factor of the op chain ``ops`` (its JSON; any dtype), or None when
    it has no op or does not parse (its problems are said where it is parsed)."""
    calls, problems = parse_chain(ops)
    if problems or not calls:
        return None
    from pipeline.core.chain import ChainLayout

    return ChainLayout.of(calls, "uint8")


def tile_step(align: int, out_step: int) -> int:
    """The step of the processing tiles that fit an op chain: the multiples of TILE_STEP, of
    the chain's alignment ``align`` and of the output tile in input pixels ``out_step`` (the
    output tile times the downsampling factor)."""
    return math.lcm(TILE_STEP, align, out_step)


def tile_at_least(size: int, step: int) -> int | None:
    """The smallest multiple of ``step`` from ``size`` up; None above TILE_RANGE."""
    tile = -(-size // step) * step
    return tile if tile <= TILE_RANGE[1] else None


def chain_tile_problem(layout: ChainLayout, tile: int, out_tile: int, tile_from: str = ""
                       ) -> str | None:
    """Why the processing tile ``tile`` does not fit the op chain of ``layout``: it is no
    multiple of the chain's alignment (16 x a downsampling factor, a clahe cell), or after a
    downsample it writes a number of output pixels the output tile ``out_tile`` does not
    divide; None: it fits. The manifest alone says it (``validate``, :func:`cross_problems`;
    PlanJob too, :func:`pipeline.core.plan.geometry_problems`). ``tile_from``: where the
    tile was set, told after its value (`` (from defaults.tile)``)."""
    f = layout.factor
    if tile % layout.align:
        why = []
        if f > 1:
            why.append(f"16 x the downsampling factor {f}")
        cells = sorted({c.params["cell"] * s for c, s in zip(layout.calls, layout.scales,
                                                              strict=False)
                        if c.op.name == "clahe"})
        if cells:
            why.append("the clahe cell " + ", ".join(map(str, cells)) + " (in input pixels)")
        return (f"tile {tile}{tile_from} must be a multiple of {layout.align} for this op "
                f"chain ({' and '.join(why) or 'alignment'}); "
                + _fitting_tiles(tile, layout.align, out_tile * f))
    if f > 1 and (tile // f) % out_tile:
        return (f"with downsampling by {f} a processing tile of {tile}{tile_from} writes "
                f"{tile // f} output pixels, which output_options.tile {out_tile} must divide; "
                + _fitting_tiles(tile, layout.align, out_tile * f) + " (or a smaller output tile)")
    return None


def _fitting_tiles(tile: int, align: int, out_step: int) -> str:
    """The advice of a tile that does not fit the chain: the nearest tiles either side of
    ``tile`` that do (multiples of the alignment, of the output tile in input pixels and of
    16, within the manifest's range)."""
    step = tile_step(align, out_step)
    lo, hi = TILE_RANGE
    fits = [m for m in (tile // step * step, (tile // step + 1) * step) if lo <= m <= hi]
    if not fits:
        return (f"no tile from {lo} to {hi} is a multiple of {step}: choose a smaller "
                "output_options.tile")
    return "use tile " + " or ".join(map(str, fits))


def _size_problem(value: Any, lo: int, hi: int) -> str | None:
    """None if ``value`` is a tile size in [lo, hi] and a multiple of TILE_STEP."""
    ok = Param("size", "integer", "", ge=lo, le=hi).check(value) is None
    if ok and int(value) % TILE_STEP == 0:
        return None
    return f"expected an integer multiple of {TILE_STEP} from {lo} to {hi}, got {show(value)}"


def _parse_pages(value: Any, path: str, problems: list[str]) -> tuple[bool, list[int] | None]:
    if value is None:
        return True, None  # explicit null: every page (undoes a default)
    if not isinstance(value, list) or not value:
        problems.append(f"{path}: expected a non-empty list of page indices (integers >= 0), "
                        f"or null for every page, got {show(value)}")
        return False, None
    pages: list[int] = []
    seen: dict[int, int] = {}
    ok = True
    for i, item in enumerate(value):
        message = _PAGE.check(item)
        if message:
            problems.append(f"{path}[{i}]: {message}")
            ok = False
            continue
        page = int(item)
        if page in seen:
            problems.append(f"{path}[{i}]: expected a page not listed before, got {page} "
                            f"again (already {path}[{seen[page]}])")
            ok = False
            continue
        seen[page] = i
        pages.append(page)
    return ok, pages


def unknown_fields(obj: dict[str, Any], allowed: tuple[str, ...], path: str, problems: list[str],
                   hint: dict[str, str] | None = None, required: tuple[str, ...] = ()
                   ) -> set[str]:
    """:func:`~pipeline.core.params.unknown_field_problems`, its problems added to
    ``problems``; returns the ``required`` fields a misspelling stood for."""
    found, stood_for = unknown_field_problems(obj, allowed, path, required, hint)
    problems.extend(found)
    return stood_for


def parse_layer(obj: dict[str, Any], path: str, problems: list[str]) -> Layer:
    """Check the optional fields of a job or of ``defaults`` (each on its own)."""
    layer = Layer(path)

    def put(key: str, ok: bool, value: Any) -> None:
        if ok:
            layer.values[key] = value
        else:
            layer.bad.add(key)

    if "pages" in obj:
        ok, pages = _parse_pages(obj["pages"], f"{path}.pages", problems)
        put("pages", ok, pages)
    if "ops" in obj:
        calls, probs = parse_chain(obj["ops"], f"{path}.ops", misplaced("op"))
        probs = probs or made_problems(calls, f"{path}.ops")
        problems.extend(probs)
        put("ops", not probs, [c.to_json() for c in calls])
    if "tile" in obj:
        message = _size_problem(obj["tile"], *TILE_RANGE)
        if message:
            problems.append(f"{path}.tile: {message}")
        put("tile", not message, None if message else int(obj["tile"]))
    if "output_options" in obj:
        _parse_options(obj["output_options"], f"{path}.output_options", layer, problems)
    if "fuse" in obj:
        message = _FUSE.check(obj["fuse"])
        if message:
            problems.append(f"{path}.fuse: {message}")
        put("fuse", not message, obj["fuse"])
    if "if_exists" in obj:
        message = _IF_EXISTS.check(obj["if_exists"])
        if message:
            problems.append(f"{path}.if_exists: {message}")
        put("if_exists", not message, obj["if_exists"])
    return layer


def _parse_options(opts: Any, path: str, layer: Layer, problems: list[str]) -> None:
    if not isinstance(opts, dict):
        problems.append(f"{path}: expected an object with any of "
                        f"{', '.join(OPTION_FIELDS)}, got {show(opts)}")
        layer.bad.update(f"output_options.{k}" for k in OPTION_FIELDS)
        return
    unknown_fields(opts, OPTION_FIELDS, path, problems, misplaced("output_options"))
    checks = {
        "compression": _COMPRESSION.check,
        "level": _LEVEL.check,
        "quality": _QUALITY.check,
        "tile": lambda v: _size_problem(v, *OUTPUT_TILE_RANGE),
        "pyramid": _PYRAMID.check,
        "pyramid_layout": _PYRAMID_LAYOUT.check,
        "pyramid_resampling": _PYRAMID_RESAMPLING.check,
        "ome": _OME.check,
        "bilevel": _bilevel_problem,
        "bilevel_compression": _BILEVEL_COMPRESSION.check,
        "masks": _MASKS.check,
        "bigtiff": _bigtiff_problem,
        "cog": _COG.check,
    }
    for name, check in checks.items():
        if name not in opts:
            continue
        key = f"output_options.{name}"
        message = check(opts[name])
        if message:
            problems.append(f"{path}.{name}: {message}")
            layer.bad.add(key)
        else:
            value = opts[name]  # (the numbers as ints: a JSON 512.0 is a tile of 512)
            layer.values[key] = int(value) if name in ("level", "quality", "tile") else value


def _bilevel_problem(value: Any) -> str | None:
    """None if ``value`` is what ``output_options.bilevel`` takes: true (every page 1-bit),
    false (none) or "auto" (each page whose output is black and white), true and false as
    JSON booleans; else the message."""
    if isinstance(value, bool) or value == "auto":
        return None
    return (f'expected true (every page 1-bit), false or "auto" (the pages whose output is '
            f"black and white 1-bit, the others as they are), got {show(value)}")


def _bigtiff_problem(value: Any) -> str | None:
    """None if ``value`` is what ``output_options.bigtiff`` takes: true (a BigTIFF), false (a
    classic TIFF) or "auto" (by the output's size), true and false as JSON booleans (a 1 is
    no true); else the message."""
    if isinstance(value, bool) or value == "auto":
        return None
    return f'expected true, false or "auto", got {show(value)}'


# --- rules across fields -------------------------------------------------------------


def _from(setting: Setting, layer: Layer, key: str) -> str:
    """`` (from defaults.tile)`` when ``setting`` was not set by ``layer`` itself."""
    if setting.layer is layer:
        return ""
    if setting.layer is None:
        return f" (the default {key})"
    return f" (from {setting.layer.where(key)})"


def cross_problems(eff: dict[str, Setting], layer: Layer) -> list[str]:
    """Problems between fields, for the fields ``layer`` set (others were reported already)."""
    problems: list[str] = []
    comp = eff["output_options.compression"]
    level = eff["output_options.level"]
    quality = eff["output_options.quality"]
    tile = eff["tile"]
    out_tile = eff["output_options.tile"]

    if level.layer is layer and level.ok and comp.ok:
        shown = f"compression {json.dumps(comp.value)}" \
                f"{_from(comp, layer, 'output_options.compression')}"
        where = layer.where("output_options.level")
        if comp.value not in LEVELS:
            problems.append(f"{where}: expected no level with {shown}: level applies to "
                            f"{' and '.join(LEVELS)} only, got {level.value}")
        else:
            lo, hi = LEVELS[comp.value]
            if not lo <= level.value <= hi:
                problems.append(f"{where}: expected an integer from {lo} to {hi} for {shown}, "
                                f"got {level.value}")

    if quality.layer is layer and quality.ok and comp.ok and comp.value not in QUALITY_COMPRESSIONS:
        shown = f"compression {json.dumps(comp.value)}" \
                f"{_from(comp, layer, 'output_options.compression')}"
        problems.append(f"{layer.where('output_options.quality')}: expected no quality with "
                        f"{shown}: quality applies to {' and '.join(QUALITY_COMPRESSIONS)} only, "
                        f"got {quality.value}")

    if (layer in (tile.layer, out_tile.layer) and tile.layer is not None and tile.ok
            and out_tile.ok and tile.value % out_tile.value != 0):  # (a default tile fits)
        problems.append(_tile_problem(tile, out_tile, layer))

    ops = eff["ops"]
    if (layer in (tile.layer, out_tile.layer, ops.layer) and tile.layer is not None
            and tile.ok and out_tile.ok and ops.ok and tile.value % out_tile.value == 0):
        problems += _chain_tile_problems(tile, out_tile, ops, layer)
    if layer in (comp.layer, ops.layer) and comp.ok and ops.ok and comp.value == "jpeg":
        problems += _jpeg_problems(ops, comp, layer)
    problems += _bilevel_problems(eff, layer)
    problems += _layout_problems(eff, layer)
    problems += _cog_problems(eff, layer)
    return problems


def _chain_tile_problems(tile: Setting, out_tile: Setting, ops: Setting, layer: Layer
                         ) -> list[str]:
    """A processing tile set in the manifest that does not fit the op chain (a downsample
    by 3 takes multiples of 48: :func:`chain_tile_problem`), at the field ``layer`` set
    (``tile``, else ``ops``, else ``output_options.tile``). A job that sets no tile gets
    one that fits (:func:`fitted_default_tile`). Before, ``validate`` said such a manifest
    was valid, and its run failed the job in PlanJob with a message that named no field."""
    layout = _chain_layout(ops.value)
    text = None if layout is None else chain_tile_problem(layout, tile.value, out_tile.value,
                                                           _from(tile, layer, "tile"))
    if text is None:
        return []
    key = ("tile" if tile.layer is layer else "ops" if ops.layer is layer
           else "output_options.tile")
    return [f"{layer.where(key)}: {text}"]


def _cog_problems(eff: dict[str, Setting], layer: Layer) -> list[str]:
    """A COG (``cog``) without what GDAL's COG layout is made of: overviews (``pyramid``),
    as pages of the main chain after their page (``pyramid_layout`` "pages": GDAL reads
    SubIFDs as no overviews). Those two also refuse what a COG cannot be: an OME-TIFF (its
    levels are SubIFDs), a 1-bit output (no levels) and an output of several pages
    (:func:`pipeline.core.plan.level_page_problems`)."""
    cog, pyramid = eff["output_options.cog"], eff["output_options.pyramid"]
    layout = eff["output_options.pyramid_layout"]
    if not (cog.ok and pyramid.ok and layout.ok and cog.value):
        return []
    problems = []
    if layer in (cog.layer, pyramid.layer) and not pyramid.value:
        problems.append(_pair_problem(
            layer, ("cog", cog), ("pyramid", pyramid),
            "a Cloud Optimized GeoTIFF carries its overviews (GDAL's COG layout)",
            'set "pyramid": true and "pyramid_layout": "pages", or drop "cog"'))
    elif layer in (cog.layer, layout.layer) and layout.value != "pages":
        problems.append(_pair_problem(
            layer, ("cog", cog), ("pyramid_layout", layout),
            "a Cloud Optimized GeoTIFF's overviews are pages of the main chain after the "
            "image (GDAL reads SubIFDs as no overviews)",
            'set "pyramid_layout": "pages", or drop "cog"'))
    return problems


def _layout_problems(eff: dict[str, Setting], layer: Layer) -> list[str]:
    """A pyramid layout or resampling without a pyramid (it would be ignored), and levels as
    pages in an OME-TIFF (whose pyramids are SubIFDs: Bio-Formats reads no other)."""
    layout, pyramid = eff["output_options.pyramid_layout"], eff["output_options.pyramid"]
    ome = eff["output_options.ome"]
    if not (layout.ok and pyramid.ok and ome.ok):
        return []
    problems = []
    for name, says in (("pyramid_layout", "where pyramid levels go"),
                       ("pyramid_resampling", "how pyramid levels are reduced")):
        setting = eff[f"output_options.{name}"]
        if setting.layer is layer and setting.ok and not pyramid.value:
            problems.append(
                f"{layer.where(f'output_options.{name}')}: expected no {name} with pyramid "
                f"false{_from(pyramid, layer, 'output_options.pyramid')}: it says {says}, got "
                f"{json.dumps(setting.value)}; set \"pyramid\": true, or drop \"{name}\"")
    if layout.value == "pages" and ome.value and layer in (layout.layer, ome.layer):
        problems.append(_pair_problem(
            layer, ("pyramid_layout", layout), ("ome", ome),
            "an OME-TIFF's pyramid levels are SubIFDs of their page (Bio-Formats reads no "
            "other layout)",
            'set "pyramid_layout" to "subifds" for an OME-TIFF, or drop "ome" for levels as '
            "pages (OpenSlide, GDAL)"))
    return problems


def _bilevel_problems(eff: dict[str, Setting], layer: Layer) -> list[str]:
    """A 1-bit output (``bilevel``) with what cannot go with it: a compression TIFF has no
    1-bit form of (JPEG), pyramid levels (means of the page: grays), a chain that makes
    another type than uint8 or another band count than one; and group4 without it. With
    "auto" (:func:`_auto_problems`) the chain is no problem: a page it makes no black and
    white of is written as it is."""
    bilevel, comp = eff["output_options.bilevel"], eff["output_options.compression"]
    pyramid, ops = eff["output_options.pyramid"], eff["ops"]
    codec = eff["output_options.bilevel_compression"]
    if not (bilevel.ok and comp.ok):
        return []
    problems = []
    if codec.layer is layer and codec.ok and bilevel.value != "auto":
        every = ("every page of a \"bilevel\": true job takes compression"
                 if bilevel.value else "a \"bilevel\": false job writes no 1-bit page")
        problems.append(_pair_problem(
            layer, ("bilevel_compression", codec), ("bilevel", bilevel),
            f'it is the codec of the 1-bit pages of a "bilevel": "auto" job, and {every}',
            'set "bilevel": "auto", or drop "bilevel_compression"'))
    levels = ([_pair_problem(layer, ("bilevel", bilevel), ("pyramid", pyramid),
                             *_one_bit_levels_refusal(eff["output_options.pyramid_resampling"]))]
              if pyramid.ok and pyramid.value and layer in (pyramid.layer, bilevel.layer)
              else [])
    if bilevel.value == "auto":
        if comp.value == "group4" and layer in (comp.layer, bilevel.layer):
            problems.append(_pair_problem(
                layer, ("compression", comp), ("bilevel", bilevel),
                'with "auto", compression is the codec of the pages that are not 1-bit '
                "(the 1-bit ones take bilevel_compression, group4 unless set), and group4 "
                "(CCITT T.6) writes 1-bit pages only",
                "choose zstd, deflate, lzw, jpeg or none for the other pages, or set "
                '"bilevel": true for every page 1-bit'))
        return problems + levels
    if not bilevel.value:
        if comp.value == "group4" and layer in (comp.layer, bilevel.layer):
            problems.append(_pair_problem(
                layer, ("compression", comp), ("bilevel", bilevel),
                "group4 (CCITT T.6) writes 1-bit pages only",
                'set "bilevel": true (one band of 0 and 255 only), or "auto" (the pages '
                "whose output is black and white 1-bit, in bilevel_compression: group4)"))
        return problems
    if comp.value not in BILEVEL_COMPRESSIONS and layer in (comp.layer, bilevel.layer):
        problems.append(_pair_problem(
            layer, ("bilevel", bilevel), ("compression", comp),
            f"a 1-bit output cannot be {comp.value}-compressed",
            f"choose {', '.join(BILEVEL_COMPRESSIONS[:-1])} or none, or set \"bilevel\": "
            '"auto" (the 1-bit pages in bilevel_compression, the others in '
            f"{comp.value})"))
    problems += levels
    if layer in (bilevel.layer, ops.layer) and ops.ok:
        problems += _holds_problems(ops, bilevel, layer, "output_options.bilevel",
                                    ("a 1-bit output", "1-bit output"), 'or drop "bilevel"',
                                    (1,))
    return problems


def _one_bit_levels_refusal(resampling: Setting) -> tuple[str, str]:
    """Why a 1-bit output (``bilevel``) has no pyramid, and what works, for the pyramid's
    resampling: mean levels gray black and white; the methods that pick a block's sample
    (nearest, mode, min, max) keep them, but tiffpipe writes its levels 8-bit only (no 1-bit
    level: merge and the level units encode levels of the page's bytes). Either way, a
    job of its own writes the levels as an 8-bit pyramid file beside the 1-bit one."""
    method = resampling.value if resampling.ok else "mean"
    apart = ('write the levels in a job of their own (the same input, "bilevel": false, '
             '"pyramid": true: an 8-bit pyramid file beside the 1-bit one), or drop '
             '"pyramid" or "bilevel"')
    if method == "mean":
        return "pyramid levels are means of the page (grays), which 1 bit cannot hold", apart
    return ((f'pyramid levels of "pyramid_resampling" {json.dumps(method)} keep black and '
            "white, but pyramid levels are written 8-bit only, and a 1-bit page's levels "
            "would have to be 1-bit too"), apart)


def _pair_problem(layer: Layer, first: tuple[str, Setting], second: tuple[str, Setting],
                  why: str, fix: str) -> str:
    """Two output options that do not go together, at the one ``layer`` set (``first``'s
    when it set both), naming where the other came from."""
    (a, sa), (b, sb) = (first, second) if first[1].layer is layer else (second, first)
    key = f"output_options.{b}"
    return (f"{layer.where(f'output_options.{a}')}: {json.dumps(sa.value)} with {b} "
            f"{json.dumps(sb.value)}{_from(sb, layer, key)}: {why}; {fix}")


def _jpeg_problems(ops: Setting, comp: Setting, layer: Layer) -> list[str]:
    """JPEG output of a chain that makes another type than uint8 whatever the pages (a
    convert to uint16, a normalized_difference's float32), or another band count than 1 or 3
    (a select_bands of 2 or 4 bands): refused before any page is read, each problem naming
    the op that makes it."""
    return _holds_problems(ops, comp, layer, "output_options.compression",
                           ("jpeg", "jpeg output"), "or choose zstd, deflate, lzw or none", (1, 3),
                           "or choose another compression")


def _holds_problems(ops: Setting, option: Setting, layer: Layer, key: str,
                    output: tuple[str, str],
                    other: str, counts: tuple[int, ...], other_at_op: str | None = None
                    ) -> list[str]:
    """An output (``output``: its names as a subject and after "the", set by the option
    ``key``) that holds uint8 samples of
    ``counts`` bands only, refused for a chain that makes another type or band count whatever
    the pages, each problem naming the op that makes it; ``other``: the other way out."""
    calls, probs = parse_chain(ops.value)
    if probs:
        return []
    dtype, channels, made, counted = made_types(calls)[-1]
    problems = []
    shown = " or ".join(str(c) for c in counts)
    at_op = other_at_op or other
    if dtype is not None and made is not None and dtype.name != "uint8":
        name = calls[made].op.name
        fix = ('set its "dtype" to "uint8"' if name == "convert" else
               'end the ops with {"op": "convert", "dtype": "uint8", "in_range": [low, high]}')
        problems.append(_holds_problem(
            ops, option, layer, key, output, made, "uint8 samples", dtype.name,
            ".dtype" if name == "convert" else "", (fix, other, at_op)))
    if channels is not None and counted is not None and channels not in counts:
        picks = calls[counted].op.picks is not None
        fix = (f'give its "bands" {shown} bands' if picks else
               f'end the ops with a {{"op": "select_bands", "bands": [...]}} of {shown} bands')
        kinds = " (gray or RGB)" if counts == (1, 3) else " (gray)"
        problems.append(_holds_problem(
            ops, option, layer, key, output, counted, f"{shown} band{'s' * (counts != (1,))}"
            f"{kinds}", f"{channels} bands", ".bands" if picks else "", (fix, other, at_op)))
    return problems


def _holds_problem(ops: Setting, option: Setting, layer: Layer, key: str,
                   output: tuple[str, str],
                   index: int, holds: str, makes: str, field_: str,
                   fixes: tuple[str, str, str]) -> str:
    """The output refused for what ops[index] makes, at the field ``layer`` set (the output
    option ``key``, else the op's ``field_``), naming the other one."""
    name = ops.value[index]["op"]
    fix, other, at_op = fixes
    if option.layer is layer:
        return (f"{layer.where(key)}: {output[0]} holds {holds} only, and "
                f"ops[{index}] ({name}){_from(ops, layer, 'ops')} makes {makes}; {fix}, "
                f"{other}")
    return (f"{layer.where(f'ops[{index}]')}{field_}: {name} makes {makes}, and the {output[1]}"
            f"{_from(option, layer, key)} holds {holds} only; {fix}, {at_op}")


def _tile_problem(tile: Setting, out_tile: Setting, layer: Layer) -> str:
    t, o = tile.value, out_tile.value
    lo, hi = TILE_RANGE
    tiles = [m for m in ((t // o) * o, (t // o + 1) * o) if lo <= m <= hi]
    outs = [d for d in range(OUTPUT_TILE_RANGE[1], OUTPUT_TILE_RANGE[0] - 1, -TILE_STEP)
            if t % d == 0 and d < o]
    fixes = []
    if tiles:
        fixes.append("tile to " + " or ".join(str(m) for m in tiles))
    if outs:
        fixes.append(f"output_options.tile to {outs[0]} (or another divisor of {t})")
    fix = "; set " + ", or ".join(fixes) if fixes else ""
    if tile.layer is layer:
        return (f"{layer.where('tile')}: expected a multiple of the output tile size {o}"
                f"{_from(out_tile, layer, 'output_options.tile')}, got {t}{fix}")
    return (f"{layer.where('output_options.tile')}: expected a size that divides the processing "
            f"tile {t}{_from(tile, layer, 'tile')}, got {o}{fix}")



