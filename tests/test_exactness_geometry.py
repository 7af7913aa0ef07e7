"""The geometric ops (rotate, flip, crop) through the real tiled path, in-process as in
test_exactness.py: bit-identical to cv2.rotate / cv2.flip / the numpy slice of the whole
page, alone and in chains with local and whole-page ops before and after them, on odd page
sizes, tiled and stripped inputs, fused and split units; how the plan lays a turned page's
units out and reads its strips; what they refuse; the output's tags (resolution, Orientation,
GeoTIFF, OME physical sizes).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as GIS tools read the outputs
import tifffile
from test_exactness import assert_identical, make_image, run_tiled, write_tiff
from test_global_ops import ref_global
from test_metadata import _world  # raster to world, from the tags as GDAL reads them

from pipeline.adapters import tiff_read
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import plan as plan_mod
from pipeline.core.chain import page_geometry
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.core.ops import parse_chain
from pipeline.steps import split as split_mod

ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def geo_ref(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """The reference of one op on the whole page: OpenCV's calls, a numpy slice (the other
    ops: test_global_ops.py's references)."""
    name = p["op"]
    if name == "rotate":
        return cv2.rotate(img, ROTATE[p["angle"]])
    if name == "flip":
        return cv2.flip(img, 1 if p["axis"] == "horizontal" else 0)
    if name == "crop":
        return np.ascontiguousarray(img[p["y"]:p["y"] + p["height"], p["x"]:p["x"] + p["width"]])
    return ref_global(img, p)


def reference(page: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    img = np.ascontiguousarray(page)
    for p in ops:
        img = geo_ref(img, p)
    return img


def R(angle: int) -> dict[str, Any]:
    return {"op": "rotate", "angle": angle}


def F(axis: str) -> dict[str, Any]:
    return {"op": "flip", "axis": axis}


def C(x: int, y: int, width: int, height: int) -> dict[str, Any]:
    return {"op": "crop", "x": x, "y": y, "width": width, "height": height}


G = {"op": "gaussian_blur", "sigma": 2.5}

#: (ops, dtype, channels): each geometric op alone, then with ops before and after it
CASES: list[tuple[list[dict[str, Any]], str, int]] = [
    *[([R(a)], dt, ch) for a, dt, ch in [(90, "uint8", 3), (180, "uint16", 1),
                                          (270, "float32", 4), (90, "uint16", 2),
                                          (270, "uint8", 1), (180, "float32", 3)]],
    *[([F(a)], dt, ch) for a, dt, ch in [("horizontal", "uint8", 3), ("vertical", "uint16", 4),
                                          ("vertical", "float32", 1),
                                          ("horizontal", "float32", 2)]],
    ([C(13, 7, 200, 150)], "uint8", 3), ([C(0, 0, 389, 1)], "uint16", 1),
    ([C(100, 41, 1, 216)], "float32", 3),
    # local ops before: they see the input page; after: the turned one
    *[([G, R(a)], dt, ch) for a, dt, ch in [(90, "float32", 3), (270, "uint8", 1),
                                             (180, "uint16", 3)]],
    *[([R(a), G], dt, ch) for a, dt, ch in [(90, "float32", 1), (270, "uint16", 3)]],
    ([G, R(270), {"op": "dilate", "ksize": 3}], "float32", 3),
    ([{"op": "median_blur", "ksize": 5}, F("vertical"), {"op": "unsharp_mask", "sigma": 1.5}],
     "uint8", 3),
    ([G, F("horizontal"), {"op": "median_blur", "ksize": 3}, R(90), C(5, 30, 100, 201),
      {"op": "unsharp_mask", "sigma": 1.5}], "float32", 1),
    ([G, C(31, 17, 250, 199), {"op": "erode", "ksize": 5, "iterations": 2}], "uint16", 3),
    ([C(31, 17, 250, 199), G], "float32", 3),
    ([{"op": "invert"}, R(90), {"op": "gamma", "gamma": 2.2}], "uint16", 3),
    # whole-page statistics before and after
    ([G, R(90), {"op": "equalize_hist"}], "uint8", 1),
    ([{"op": "equalize_hist"}, R(270), G], "uint8", 1),
    ([C(20, 10, 301, 222), {"op": "normalize"}, F("vertical")], "float32", 3),
    ([G, R(90), {"op": "to_gray"}, {"op": "equalize_hist"}, F("horizontal")], "uint8", 3),
    # ops whose tiles are laid on the turned page
    ([R(90), {"op": "downsample", "factor": 2}], "uint8", 3),
    ([F("vertical"), C(1, 2, 300, 250), {"op": "downsample", "factor": 3}], "float32", 1),
    ([G, R(270), {"op": "downsample", "factor": 2}, G], "uint16", 3),
    ([R(90), {"op": "canny", "low": 20, "high": 60}], "uint8", 1),
    ([G, F("horizontal"), {"op": "canny", "low": 30, "high": 90, "sigma": 1},
      {"op": "dilate", "ksize": 3}], "uint8", 3),
    ([R(270), {"op": "clahe", "cell": 16}], "uint8", 1),
    ([C(9, 5, 333, 201), {"op": "clahe", "cell": 32, "clip_limit": 3}], "uint16", 1),
]

#: (input layout, units budget, fuse)
RUNS = [
    ({"tiled": False, "rowsperstrip": 16}, None, True),
    ({"tiled": True, "tile": (32, 48)}, "tiny", True),
    ({"tiled": False, "rowsperstrip": 7, "compression": "lzw"}, "small", False),
    ({"tiled": False, "rowsperstrip": None, "compression": "deflate"}, "tiny", False),
    ({"tiled": True, "tile": (16, 64), "compression": "none"}, None, False),
]


def _name(ops: list[dict[str, Any]]) -> str:
    return "+".join(o["op"] + "".join(f"-{v}" for k, v in o.items() if k != "op") for o in ops)


def _tile(ops: list[dict[str, Any]]) -> int:
    factor = max([o.get("factor", 1) for o in ops if o["op"] == "downsample"] or [1])
    return 64 * factor


@pytest.mark.parametrize("run", range(len(RUNS)))
@pytest.mark.parametrize("ops,dtype,channels", CASES,
                         ids=[f"{_name(o)}-{d}-c{c}" for o, d, c in CASES])
def test_geometric_chain_equals_the_whole_page(tmp_path, ops, dtype, channels, run):
    layout_, units, fuse = RUNS[(run + len(ops)) % len(RUNS)]  # (each case, every layout)
    page = make_image(sum(map(ord, _name(ops) + dtype)), 257, 389, channels, dtype)
    src = tmp_path / "in.tif"
    write_tiff(src, [page], **layout_)
    (got,), _ = run_tiled(tmp_path, src, ops, _tile(ops), 64, units=units, fuse=fuse,
                          tiles_per_batch=3)
    assert_identical(got, reference(page, ops), _name(ops))


def test_multi_page_of_several_sizes_and_types(tmp_path):
    """Pages of different sizes, types and band counts in one job: each turned on its own."""
    pages = [make_image(1, 257, 389, 3, "uint8"), make_image(2, 100, 61, 1, "uint8"),
             make_image(3, 130, 300, 4, "uint8")]
    src = tmp_path / "in.tif"
    write_tiff(src, pages, tiled=False, rowsperstrip=5)
    ops = [G, R(90), {"op": "dilate", "ksize": 3}]
    for fuse in (True, False):
        got, plan = run_tiled(tmp_path, src, ops, 64, 32, units="small", fuse=fuse)
        for g, p in zip(got, pages, strict=True):
            assert_identical(g, reference(p, ops), f"fuse={fuse}")
        assert [(pp.grid.height, pp.grid.width) for pp in plan.pages] == [
            (389, 257), (61, 100), (300, 130)]


def test_square_page_and_a_crop_then_rotate(tmp_path):
    page = make_image(4, 200, 200, 3, "uint16")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True, tile=(32, 32))
    for ops in ([R(90)], [C(3, 9, 151, 170), R(270), C(0, 40, 100, 60), F("horizontal")]):
        (got,), _ = run_tiled(tmp_path, src, ops, 64, 32, units="tiny")
        assert_identical(got, reference(page, ops), _name(ops))


# --- the plan: units, reads, decodes -----------------------------------------------------


def _plan(tmp_path: Path, src: Path, ops: list[dict[str, Any]], tile: int = 64,
          **options: Any) -> plan_mod.JobPlan:
    spec = JobSpec(input=str(src), output=str(tmp_path / "out.tif"), ops=ops, tile=tile,
                   output_options=OutputOptions(tile=64), **options)
    plan, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path),
                                        0.0)
    assert problems == []
    return plan


@pytest.mark.parametrize("angle", [90, 270])
def test_a_quarter_turn_cuts_units_one_column_wide(tmp_path, angle, monkeypatch):
    """On a page turned a quarter, a unit is one tile column of the turned page: one band
    of the input's tile rows, its columns cut by the cache budget as a band's are."""
    page = make_image(5, 300, 700, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=8)
    for budget in ("SPLIT_CACHE_BUDGET", "STRIPED_CACHE_BUDGET"):  # (zstd strips)
        monkeypatch.setattr(plan_mod, budget, (64 + 8) * 64 * 3 * 4)  # 4 columns
    plan = _plan(tmp_path, src, [R(angle)])
    grid = plan.pages[0].grid
    assert (grid.height, grid.width) == (700, 300)
    assert {u.col1 - u.col0 for u in plan.units} == {1}
    assert {u.row1 - u.row0 for u in plan.units} == {4, 3}  # 11 rows: 4 + 4 + 3
    assert len(plan.units) == 3 * 5
    geo = page_geometry(plan, 0)
    bands = set()
    for unit in plan.units:  # a unit reads one input band of 64 rows, or of the 44 left
        window = geo.unit_read(unit)
        bands.add((window.y0, window.y1))
        order = geo.order(unit)
        assert [c for _, c in order] == [unit.col0] * unit.tiles
        rows = [r for r, _ in order]
        assert rows == sorted(rows, reverse=angle == 270)  # left to right on the input
    # the bands lie on the turned page's grid: from the input's bottom (90) or top (270)
    edges = [44, 108, 172, 236] if angle == 90 else [64, 128, 192, 256]
    assert sorted(bands) == list(zip([0, *edges], [*edges, 300], strict=True))


@pytest.mark.parametrize("ops", [[], [R(90)], [R(270)], [R(180)], [F("vertical")],
                                 [G, R(90)], [C(10, 20, 600, 250)]],
                         ids=["copy", "r90", "r270", "r180", "flipv", "blur-r90", "crop"])
@pytest.mark.parametrize("budget", [None, (64 + 32 + 8) * 96 * 3 * 4])
def test_each_strip_is_decoded_once_per_unit_and_reads_stay_small(tmp_path, ops, budget,
                                                                  monkeypatch):
    """A sweep decodes every strip its unit's input window touches once (a turned page's
    too: its tiles are read in the input's order), and no read is larger than a haloed
    tile: memory is bounded by the unit, and the decodes are those the plan predicts. Under
    the striped budget (plan.STRIPED_CACHE_BUDGET) a band is one unit, however small the
    budget of tiles and raw strips: a strip is decoded once, twice where a halo reaches
    across a band's border; a smaller striped budget cuts bands into column chunks, each
    decoding the band's strips (docs/manifest-and-ops.md, "What turning a page costs")."""
    page = make_image(6, 300, 700, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=8, compression="lzw")
    if budget:  # (LZW strips: the striped budget)
        monkeypatch.setattr(plan_mod, "STRIPED_CACHE_BUDGET", budget)
    else:  # the 32 MB budget of tiles and raw strips cuts nothing here
        monkeypatch.setattr(plan_mod, "SPLIT_CACHE_BUDGET", (64 + 32 + 8) * 96 * 3 * 4)
    decodes: dict[int, int] = {}
    largest = [0]

    class Counting(tiff_read.PageReader):
        def segment_bytes(self, seg: int) -> bytes | None:
            decodes[seg] = decodes.get(seg, 0) + 1
            return super().segment_bytes(seg)

        def read(self, rect):  # type: ignore[no-untyped-def]
            largest[0] = max(largest[0], rect.height * rect.width)
            return super().read(rect)

    monkeypatch.setattr(split_mod, "PageReader", Counting)
    (got,), plan = run_tiled(tmp_path, src, ops, 64, 64)
    assert_identical(got, reference(page, ops))
    geo = page_geometry(plan, 0)
    want: dict[int, int] = {}
    for unit in plan.units:
        window = geo.unit_read(unit)
        for seg in range(window.y0 // 8, (window.y1 - 1) // 8 + 1):
            want[seg] = want.get(seg, 0) + 1
    assert decodes == want
    side = 64 + 2 * plan.pages[0].grid.halo
    assert largest[0] <= side * side
    if budget is None:
        assert max(decodes.values()) <= 2


@pytest.mark.parametrize("fuse", [True, False])
def test_a_page_in_one_strip_turned_a_quarter_is_decoded_once(tmp_path, fuse, monkeypatch):
    """Its strip spans every band of the input: a unit then takes all of them (every tile
    column of the turned page), so the strip is decoded once per column chunk, not once per
    tile column."""
    page = make_image(15, 300, 700, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=None, compression="deflate")
    decodes = []

    class Counting(tiff_read.PageReader):
        def segment_bytes(self, seg: int) -> bytes | None:
            decodes.append(seg)
            return super().segment_bytes(seg)

    monkeypatch.setattr(split_mod, "PageReader", Counting)
    (got,), plan = run_tiled(tmp_path, src, [G, R(90)], 64, 64, fuse=fuse)
    assert_identical(got, reference(page, [G, R(90)]))
    assert [(u.col0, u.col1) for u in plan.units] == [(0, 5)] and decodes == [0]


# --- what is refused ------------------------------------------------------------------


@pytest.mark.parametrize("ops,problem", [
    ([{"op": "downsample", "factor": 2}, R(90)],
     "ops[1] (rotate): comes after ops[0] (downsample); put it before downsample"),
    ([{"op": "clahe"}, F("vertical")], "ops[1] (flip): comes after ops[0] (clahe)"),
    ([{"op": "canny", "low": 10, "high": 30}, C(0, 0, 5, 5)],
     "ops[1] (crop): comes after ops[0] (canny)"),
    ([G, {"op": "equalize_hist"}, C(0, 0, 5, 5)],
     ("ops[2] (crop): comes after ops[1] (equalize_hist), whose result comes from the "
      "whole page's statistics; put crop before equalize_hist")),
    # (normalize has no table: its minimum and maximum are the statistics)
    ([{"op": "normalize"}, C(0, 0, 5, 5)],
     ("ops[1] (crop): comes after ops[0] (normalize), whose result comes from the whole "
      "page's statistics; put crop before normalize")),
    ([R(45)], "ops[0].angle: expected one of 90, 180, 270, got 45"),
    # a turn counter-clockwise is said the way rotate counts it
    ([R(-90)], ("ops[0].angle: expected one of 90, 180, 270, got -90; angles are clockwise: "
                "a quarter turn counter-clockwise is 270")),
    ([R(-270)], ("ops[0].angle: expected one of 90, 180, 270, got -270; angles are "
                 "clockwise: a three-quarter turn counter-clockwise is 90")),
    ([F("diagonal")], 'ops[0].axis: expected one of "horizontal", "vertical", got "diagonal"'),
    ([C(0, 0, 0, 5)], "ops[0].width: expected an integer >= 1 and <= 2147483647, got 0"),
    ([{"op": "crop", "x": 1, "y": 1, "width": 5}], "ops[0].height: required"),
])
def test_chains_that_cannot_run_are_refused_with_the_op_named(ops, problem):
    _, problems = parse_chain(ops)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_equalize_then_rotate_and_crop_then_equalize_are_fine():
    for ops in ([{"op": "equalize_hist"}, R(90)], [C(0, 0, 5, 5), {"op": "equalize_hist"}]):
        assert parse_chain(ops)[1] == []


def test_a_crop_box_outside_the_page_names_the_page_and_the_box(tmp_path):
    """The box is checked against each page as the ops before the crop made it: page 0
    (257 x 389, turned: 389 high) holds it, page 1 (300 x 100, turned: 100 high) does not."""
    src = tmp_path / "in.tif"
    write_tiff(src, [make_image(7, 257, 389, 1, "uint8"), make_image(8, 300, 100, 1, "uint8")],
               tiled=True)
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=[R(90), C(0, 300, 50, 50)])
    _, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    assert list(map(str, problems)) == [(
        "page 1: ops[1] (crop): the box does not fit the page of 300 x 100 pixels (width x "
        "height): y + height = 300 + 50 = 350 is more than its height, 100; give a box inside "
        "it (x from 0 to 299, y from 0 to 99) (the page as ops[0] (rotate) made it); or give "
        'this job "pages" with the pages that hold the box (0) and page 1 a job of its own')]


# --- the output's tags ----------------------------------------------------------------------

GEO = [(33550, 12, 3, (10.0, 20.0, 0.0)), (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 4e6, 0.0)),
       (34735, 3, 8, (1, 1, 0, 1, 1024, 0, 1, 1))]


def _tagged(path: Path, page: np.ndarray, extratags: list, **kwargs: Any) -> None:
    tifffile.imwrite(path, page, photometric="minisblack", tile=(32, 32), metadata=None,
                     extratags=extratags, **kwargs)


def _tags(path: Path) -> dict[int, Any]:
    with tifffile.TiffFile(path) as tf:
        return {t.code: t.value for t in tf.pages[0].tags}


def test_a_quarter_turn_swaps_the_resolution_and_drops_orientation(tmp_path):
    page = make_image(9, 120, 90, 1, "uint8")
    src = tmp_path / "in.tif"
    _tagged(src, page, [(274, 3, 1, 6, True)], resolution=((300, 1), (200, 1)),
            resolutionunit=2)
    (got,), plan = run_tiled(tmp_path, src, [R(90)], 64, 32)
    assert_identical(got, reference(page, [R(90)]))
    tags = _tags(Path(plan.spec.output))
    assert tags[282] == (200, 1) and tags[283] == (300, 1) and tags[296] == 2
    assert 274 not in tags  # stored as it is to be shown: a viewer must not turn it again
    (got,), plan = run_tiled(tmp_path, src, [C(5, 6, 50, 40)], 64, 32)  # a crop keeps both
    tags = _tags(Path(plan.spec.output))
    assert tags[282] == (300, 1) and tags[283] == (200, 1) and tags[274] == 6


def test_a_crop_moves_the_georeferencing(tmp_path):
    page = make_image(10, 120, 90, 1, "uint8")
    src = tmp_path / "in.tif"
    _tagged(src, page, GEO)
    (got,), plan = run_tiled(tmp_path, src, [C(7, 11, 50, 40)], 64, 32)
    assert_identical(got, page[11:51, 7:57])
    tags = _tags(Path(plan.spec.output))
    assert tags[33550] == (10.0, 20.0, 0.0)
    assert tags[33922] == (-7.0, -11.0, 0.0, 500000.0, 4e6, 0.0)  # raster (-7, -11) is there
    assert tags[34735] == GEO[2][3]
    matrix = (10.0, 0.0, 0.0, 500000.0, 0.0, -20.0, 0.0, 4e6, 0, 0, 0, 0, 0, 0, 0, 1.0)
    _tagged(src, page, [(34264, 12, 16, matrix), GEO[2]])
    (_,), plan = run_tiled(tmp_path, src, [C(7, 11, 50, 40), {"op": "downsample", "factor": 2}],
                           64, 32)
    moved = _tags(Path(plan.spec.output))[34264]
    # pixel (0, 0) of the output is (7, 11) of the input: x 500070, y 4e6 - 220; then 2x
    assert moved[:8] == (20.0, 0.0, 0.0, 500070.0, 0.0, -40.0, 0.0, 4e6 - 220)


#: the georeferencings a turn is checked on, as GeoTIFF tags (code, kind, count, value): a
#: north-up pixel scale and tiepoint (the tiepoint not at the corner), a rotated and sheared
#: ModelTransformation, and ground control points alone (no affine: GDAL reads them as GCPs)
GEOREFERENCINGS = {
    "tiepoint": [(33550, 12, 3, (10.0, 20.0, 0.0)),
                 (33922, 12, 6, (4.0, 3.0, 0.0, 500000.0, 4e6, 0.0))],
    "transformation": [(34264, 12, 16, (8.0, 3.0, 0.0, 500000.0, -2.5, -19.0, 0.0, 4e6,
                                        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))],
    "gcps": [],  # (made by the test: GCP_PIXELS, at their centres)
}
#: ground control points: the (column, row) of a pixel and the world (x, y) of its centre
GCP_PIXELS = {(0, 0): (500000.0, 4e6), (40, 10): (500400.0, 4e6 - 150),
              (3, 59): (500020.0, 4e6 - 1180)}


def _gcps(tags: dict[int, Any]) -> dict[tuple[float, float, float], tuple[float, float]]:
    """Each ground control point's world (x, y, z) and its raster position (i, j)."""
    ties = tags[33922]
    return {tuple(ties[n + 3:n + 6]): (ties[n], ties[n + 1]) for n in range(0, len(ties), 6)}


@pytest.mark.parametrize("raster_type", [1, 2])  # PixelIsArea, PixelIsPoint
@pytest.mark.parametrize("model", list(GEOREFERENCINGS))
@pytest.mark.parametrize("ops", [
    [R(90)], [R(180)], [R(270)], [F("horizontal")], [F("vertical")],
    [C(3, 5, 37, 50), R(90), F("horizontal")], [R(270), C(4, 2, 30, 20)],
    [R(90), R(270), C(1, 2, 20, 30)],  # turned back: a pixel scale and tiepoint again
    [F("vertical"), {"op": "downsample", "factor": 2}]], ids=repr)
def test_a_turn_moves_the_georeferencing_with_the_pixels(tmp_path, ops, model, raster_type):
    """Every output pixel is where its input pixel was in the world: a page of pixel
    indices goes through the chain (the reference, OpenCV's calls), which says which input
    pixel each output pixel is; the corner pixels' centres of the output page, mapped by
    the output's tags, are the world positions of their input pixels' centres by the
    input's tags (raster positions of centres: c + 0.5 with PixelIsArea, c with
    PixelIsPoint). GCPs: each one's raster position is its input pixel's position on the
    output page. A downsample's output pixel is the mean of a 2 x 2 block: its corner
    (PixelIsArea) or centre (PixelIsPoint) is the block's."""
    height, width = 60, 45
    index = np.arange(height * width, dtype=np.uint16).reshape(height, width)
    keys = (1, 1, 0, 2, 1024, 0, 1, 1, 1025, 0, 1, raster_type)
    src = tmp_path / "in.tif"
    at = 0.5 if raster_type == 1 else 0.0  # a pixel's centre: its raster position + at
    gcps = [v for (c, r), (x, y) in GCP_PIXELS.items() for v in (c + at, r + at, 0, x, y, 0)]
    georeferencing = GEOREFERENCINGS[model] or [(33922, 12, len(gcps), tuple(gcps))]
    _tagged(src, index, [*georeferencing, (34735, 3, len(keys), keys)])
    geometric = [op for op in ops if op["op"] != "downsample"]
    came = reference(index, geometric)  # the input pixel each output pixel is
    factor = 1 if geometric == ops else 2
    (got,), plan = run_tiled(tmp_path, src, ops, 32, 32 // factor)
    if factor == 1:
        assert_identical(got, came)
    before, after = _tags(src), _tags(Path(plan.spec.output))
    assert after[34735] == keys
    if model == "gcps":
        assert set(after) & {33550, 34264} == set()
        moved = _gcps(after)
        assert len(moved) == len(GCP_PIXELS)  # (one cropped away still ties its place)
        for (c, r), (x, y) in GCP_PIXELS.items():
            # (a downsample divides positions; PixelIsPoint's position 0 is then the centre of
            # the first block, (factor - 1) / 2 turned pixels in)
            shift = 0 if raster_type == 1 else (factor - 1) / 2
            for r_out, c_out in np.argwhere(came == r * width + c):
                assert moved[(x, y, 0.0)] == ((c_out + at - shift) / factor,
                                              (r_out + at - shift) / factor)
        return
    turned_back = ops == [R(90), R(270), C(1, 2, 20, 30)]
    if any(op["op"] != "crop" for op in geometric) and not turned_back:
        assert 34264 in after and set(after) & {33550, 33922} == set()
    else:
        assert set(after) & {33550, 33922, 34264} == set(before) & {33550, 33922, 34264}
    out_h, out_w = came.shape[0] // factor, came.shape[1] // factor
    for r, c in ((0, 0), (0, out_w - 1), (out_h - 1, 0), (out_h - 1, out_w - 1)):
        # the output pixel's block of input pixels (1 x 1 without a downsample): its centre
        block = came[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
        ys, xs = np.divmod(block.astype(np.int64), width)
        want = _world(before, xs.mean() + 0.5, ys.mean() + 0.5) if raster_type == 1 else \
            _world(before, xs.mean(), ys.mean())
        assert _world(after, c + at, r + at) == pytest.approx(want, abs=1e-6), (r, c)
    with rasterio.open(src) as a, rasterio.open(plan.spec.output) as b:  # GDAL agrees
        r, c = out_h - 1, 0
        ys, xs = np.divmod(came[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
                           .astype(np.int64), width)
        assert b.transform @ (c + 0.5, r + 0.5) == pytest.approx(
            a.transform @ (xs.mean() + 0.5, ys.mean() + 0.5), abs=1e-6)


@pytest.mark.parametrize("tags,why", [
    ([(33550, 12, 3, (10.0, 20.0, 0.0)),
      (33922, 12, 12, (0.0, 0.0, 0.0, 5e5, 4e6, 0.0, 9.0, 9.0, 0.0, 5e5 + 90, 4e6 - 180, 0.0))],
     ("a ModelPixelScale with 2 ModelTiepoints: GDAL places the page by the first and leaves "
      "the others")),
    ([(33550, 12, 3, (10.0, 20.0, 0.0))], "a ModelPixelScale without a ModelTiepoint"),
    ([(34264, 12, 6, (1.0, 0.0, 5e5, 0.0, -1.0, 4e6))],
     "a ModelTransformation of 6 values, not 16"),
])
def test_turning_a_page_whose_georeferencing_cannot_turn_is_refused(tmp_path, tags, why):
    src = tmp_path / "in.tif"
    _tagged(src, make_image(11, 120, 90, 1, "uint8"), tags)
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=[G, F("vertical")])
    _, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    assert list(map(str, problems)) == [(
        f"page 0: ops[1] (flip): the page is georeferenced ({why}), which cannot be turned "
        "with its pixels: the output would put them in the wrong place; leave flip out (GIS "
        "software shows a map by its georeferencing), turn the page with GDAL (gdalwarp), or "
        "give it one georeferencing first (gdal_translate writes a pixel scale and one "
        "tiepoint, or a ModelTransformation)")]
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=[G, C(0, 0, 9, 9)])
    assert plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)[1] == []


#: a georeferencing stored as FLOATs (GeoTIFF defines DOUBLEs; some writers store float32):
#: values float32 does not hold exactly, so a value rounded twice would show
FLOAT_GEOREFERENCINGS = {
    "tiepoint": [(33550, "f", 3, (10.3, 20.7, 0.0)),
                 (33922, "f", 6, (4.0, 3.0, 0.0, 500000.3, 4e6 + 0.7, 0.0))],
    "transformation": [(34264, "f", 16, (8.1, 3.3, 0.0, 500000.3, -2.7, -19.1, 0.0, 4e6,
                                         0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))],
}


#: the chains a georeferencing not stored as DOUBLE is moved through: a crop, turns, a flip,
#: a downsample after a crop
MOVES = [[C(7, 11, 30, 40)], [R(90)], [F("horizontal")], [C(3, 5, 37, 50), R(270)],
         [C(2, 4, 40, 50), {"op": "downsample", "factor": 2}]]


def _model_kinds(path: Path | str) -> dict[int, int]:
    """The TIFF type of each GeoTIFF model tag of a file's first page."""
    with tifffile.TiffFile(path) as tf:
        return {t.code: int(t.dtype) for t in tf.pages[0].tags
                if t.code in (33550, 33922, 34264)}


#: a GeoKeyDirectory that says PixelIsArea
AREA_KEYS = [(34735, 3, 8, (1, 1, 0, 1, 1025, 0, 1, 1))]


def _moved_as_gdal_reads(tmp_path: Path, ops: list[dict[str, Any]], tags: list[Any],
                         stored: int, geo: list[Any] = AREA_KEYS) -> tuple[Path, Path]:
    """Run ``ops`` on a page of pixel indices georeferenced by ``tags`` (model tags stored as
    TIFF type ``stored``) and the other GeoTIFF tags ``geo`` (PixelIsArea): GDAL puts each
    corner pixel of the output (its 2 x 2 block of input pixels after a downsample) where
    the input put that pixel (block). The input's path and the output's."""
    height, width = 60, 45
    index = np.arange(height * width, dtype=np.uint16).reshape(height, width)
    src = tmp_path / "in.tif"
    _tagged(src, index, [*tags, *geo])
    assert set(_model_kinds(src).values()) == {stored}
    geometric = [op for op in ops if op["op"] != "downsample"]
    came = reference(index, geometric)  # the input pixel each output pixel is
    factor = 1 if geometric == ops else 2
    (_,), plan = run_tiled(tmp_path, src, ops, 32, 32 // factor)
    with rasterio.open(src) as a, rasterio.open(plan.spec.output) as b:
        assert not b.transform.is_identity
        out_h, out_w = b.height, b.width
        for r, c in ((0, 0), (0, out_w - 1), (out_h - 1, 0), (out_h - 1, out_w - 1)):
            ys, xs = np.divmod(came[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
                               .astype(np.int64), width)
            assert b.transform @ (c + 0.5, r + 0.5) == pytest.approx(
                a.transform @ (xs.mean() + 0.5, ys.mean() + 0.5), abs=1e-6), (r, c)
    return src, Path(plan.spec.output)


@pytest.mark.parametrize("model", list(FLOAT_GEOREFERENCINGS))
@pytest.mark.parametrize("ops", MOVES, ids=repr)
def test_a_georeferencing_stored_as_float_moves_with_the_pixels(tmp_path, ops, model):
    """Model tags stored as FLOAT are read as GDAL reads them (widened to doubles), moved
    with the pixels and written as the DOUBLEs GeoTIFF defines. Before, a crop or a
    downsample dropped them without a word and a rotate or flip was refused."""
    _, out = _moved_as_gdal_reads(tmp_path, ops, FLOAT_GEOREFERENCINGS[model], 11)
    assert _model_kinds(out) and set(_model_kinds(out).values()) == {12}


def _rationals(values: tuple[float, ...]) -> tuple[int, ...]:
    """``values`` as (S)RATIONAL pairs, numerator and denominator, in tenths."""
    return tuple(n for v in values for n in (round(v * 10), 10))


#: a georeferencing stored as RATIONALs (the transformation, with negative values, as
#: SRATIONALs): tenths, which a double does not hold exactly
RATIONAL_GEOREFERENCINGS = {
    "tiepoint": [(33550, "2I", 3, _rationals((10.3, 20.7, 0.0))),
                 (33922, "2I", 6, _rationals((4.0, 3.0, 0.0, 500000.3, 4e6 + 0.7, 0.0)))],
    "transformation": [(34264, "2i", 16, _rationals(FLOAT_GEOREFERENCINGS["transformation"]
                                                    [0][3]))],
}
#: the other GeoTIFF tags, of the types GeoTIFF defines: a GeoKeyDirectory (SHORT) whose
#: keys point into GeoDoubleParams (DOUBLE) and GeoAsciiParams (ASCII)
GEO_PARAMS = [(34735, 3, 20, (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 1026, 34737, 7, 0,
                              2057, 34736, 1, 0)),
              (34736, 12, 1, (6378137.0,)), (34737, 2, 0, "UTM 11|")]


@pytest.mark.parametrize("model", list(RATIONAL_GEOREFERENCINGS))
@pytest.mark.parametrize("ops", [[], *MOVES], ids=repr)
def test_a_georeferencing_stored_as_rationals_is_kept_and_moves_with_the_pixels(
        tmp_path, ops, model):
    """Model tags stored as RATIONAL or SRATIONAL are read as GDAL reads them (numerator /
    denominator, in double precision) and written as DOUBLE, moved with the pixels or not:
    a chain that does not move the page keeps the very doubles GDAL read from the input.
    The other GeoTIFF tags are copied as they were. Before, such model tags were never read:
    every output, a plain copy too, lost its place in the world without a word."""
    src, out = _moved_as_gdal_reads(tmp_path, ops, RATIONAL_GEOREFERENCINGS[model],
                                    5 if model == "tiepoint" else 10, GEO_PARAMS)
    assert _model_kinds(out) and set(_model_kinds(out).values()) == {12}
    if not ops:
        with rasterio.open(src) as a, rasterio.open(out) as b:
            assert b.transform == a.transform  # the same doubles, not rounded again
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(out) as b:
        for code in (34735, 34736, 34737):
            kept, given = b.pages[0].tags[code], a.pages[0].tags[code]
            assert (int(kept.dtype), kept.value) == (int(given.dtype), given.value)


@pytest.mark.parametrize("ops,first", [([G, C(0, 0, 9, 9)], "ops[1] (crop)"),
                                        ([F("vertical")], "ops[0] (flip)"),
                                        ([{"op": "downsample", "factor": 2}],
                                         "ops[0] (downsample)")])
def test_moving_a_georeferencing_not_stored_as_numbers_is_refused(tmp_path, ops, first):
    """A model tag stored as bytes (BYTE, ASCII, UNDEFINED) is not read as numbers, so it
    cannot be moved: refused at plan time, naming the page, the op and the tag, rather than
    written where the pixels no longer are or dropped. A chain that does not move the page
    copies it as it is."""
    src = tmp_path / "in.tif"
    _tagged(src, make_image(11, 120, 90, 1, "uint8"),
            [(33550, 12, 3, (10.0, 20.0, 0.0)), (33922, 1, 6, (0, 0, 0, 50, 40, 0))])
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=ops)
    _, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    assert list(map(str, problems)) == [(
        f"page 0: {first}: the page is georeferenced (its ModelTiepoint (TIFF type 1) not "
        "stored as numbers), which cannot be moved with its pixels: the output would lose its "
        f"place in the world; leave {first.split('(')[1][:-1]} out, or write the "
        "georeferencing again with GDAL first (gdal_translate writes its model tags as "
        "DOUBLE values)")]
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=[G])
    assert plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)[1] == []


def test_ome_physical_sizes_follow_a_quarter_turn(tmp_path):
    """An OME-TIFF output's PhysicalSizeX/Y come from the resolution, which a quarter turn
    swaps: the input's 10 um x 5 um pixels are 5 um x 10 um turned."""
    page = make_image(12, 120, 90, 1, "uint16")
    src = tmp_path / "in.tif"
    _tagged(src, page, [], resolution=((1000, 1), (2000, 1)), resolutionunit=3)
    sizes = []
    for ops in ([], [R(270)]):
        (got,), plan = run_tiled(tmp_path, src, ops, 64, 32, ome=True)
        assert_identical(got, reference(page, ops))
        with tifffile.TiffFile(plan.spec.output) as tf:
            pixels = ET.fromstring(tf.ome_metadata).find(".//{*}Pixels")
        sizes.append((float(pixels.get("PhysicalSizeX")), float(pixels.get("PhysicalSizeY"))))
    assert sizes == [(10.0, 5.0), (5.0, 10.0)]


@pytest.mark.parametrize("orientation,ops", [
    (2, [F("horizontal")]), (3, [R(180)]), (4, [F("vertical")]),
    (5, [R(90), F("horizontal")]), (6, [R(90)]), (7, [R(90), F("vertical")]), (8, [R(270)])])
def test_the_ops_that_bake_each_orientation(orientation, ops):
    """docs/manifest-and-ops.md's table: the chain that stores a page as a viewer shows it
    by its Orientation (as PIL's exif_transpose turns it, which the previews use)."""
    from PIL import Image

    from pipeline.core.ops import apply_chain, chain_from_json
    from pipeline.preview import turned

    page = make_image(13, 37, 53, 3, "uint8")
    shown = np.asarray(turned(Image.fromarray(page), orientation))
    assert np.array_equal(apply_chain(page, chain_from_json(ops)), shown)


def test_the_contact_sheets_thumbnails_of_a_turned_page(tmp_path, monkeypatch):
    """The process steps sum a turned page's input thumbnail from each tile's input core
    (its window on the input page), and its output thumbnail: both the exact area average
    of the whole page. A crop's tiles hold the box only: its input is left to the preview."""
    from pipeline.core.constants import THUMBNAILS_ENV
    from pipeline.core.thumbs import ThumbSums, fit
    from pipeline.steps import thumbs as steps_thumbs

    monkeypatch.setenv(THUMBNAILS_ENV, "16")
    page = make_image(14, 257, 389, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=16)
    for ops, fuse in (([G, R(90)], True), ([F("vertical"), R(270)], False),
                      ([C(3, 4, 300, 200)], True)):
        (got,), plan = run_tiled(tmp_path, src, ops, 64, 64, units="tiny", fuse=fuse)
        parts = steps_thumbs.summed_parts(plan.work)
        assert ((0, "in") in parts) == (ops[0]["op"] != "crop")
        for side, pixels in (("in", page), ("out", got)):
            if (0, side) not in parts:
                continue
            made = steps_thumbs.load_summed(plan, 0, side, parts[(0, side)], 16)
            h, w = pixels.shape[:2]
            whole = ThumbSums(h, w, *fit(h, w, 16), 3)
            whole.add(pixels, 0, 0)
            assert made is not None, (ops, side)
            np.testing.assert_array_equal(made.pixels, whole.mean())


@pytest.mark.parametrize("ops", [[G], [G, R(90)], [R(270)], [G, C(40, 10, 2000, 250)]],
                         ids=["blur", "blur-r90", "r270", "blur-crop"])
def test_a_wide_band_in_strips_holds_one_row_of_its_strips_not_two(tmp_path, ops,
                                                                   monkeypatch):
    """A strip spans the page: the sweep of a wide band holds the band's strips until its
    last tile, and decodes the next band's strips ahead while it reads that band's last
    tiles. The reader drops the columns the sweep has passed (PageReader.forget_left), so
    what it holds at most (cached and decoded ahead) is about one band's rows of the unit's
    width (and at most twice the few tiles' columns left to read), not two bands' rows;
    pixels and decodes unchanged (each strip still decoded once or, where a halo crosses a
    band's border, twice)."""
    page = make_image(16, 300, 2400, 3, "uint8")  # 38 tiles of 64 across
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=8, compression="lzw")
    held = [0]
    decodes: dict[int, int] = {}

    class Measuring(tiff_read.PageReader):
        def segment_bytes(self, seg: int) -> bytes | None:
            decodes[seg] = decodes.get(seg, 0) + 1
            return super().segment_bytes(seg)

        def read(self, rect):  # type: ignore[no-untyped-def]
            out = super().read(rect)
            strip = self.seg_h * (self.columns[1] - self.columns[0]) * self.samples
            held[0] = max(held[0], sum(px.nbytes for px, *_ in self.cache.values())
                          + strip * len(self.pending))  # decoded ahead: whole strips
            return out

    monkeypatch.setattr(split_mod, "PageReader", Measuring)
    (got,), plan = run_tiled(tmp_path, src, ops, 64, 64)
    assert_identical(got, reference(page, ops))
    assert max(decodes.values()) <= 2
    geo = page_geometry(plan, 0)
    rows = geo.tile_read(0, 0).height + 8  # a haloed tile's rows and the strip below
    widest = max(geo.unit_read(u).width for u in plan.units)
    assert held[0] <= 1.3 * rows * widest * 3, (held[0], rows * widest * 3)
