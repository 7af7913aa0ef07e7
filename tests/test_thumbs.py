"""Thumbnails summed by the process steps (pipeline/steps/thumbs.py) for the contact sheet of
``tiffpipe run``: the same exact area average the preview computes from the files, whatever
the path (one task, a Map of units, process batches), pixel type, alpha or downsampling; no
part where the step's pixels are not what a reader of the file sees; a sheet drawn from them
identical to one drawn from the files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from test_exactness import make_image, write_tiff

from pipeline import contact_sheet
from pipeline.core import plan as plan_mod
from pipeline.core import thumbs as core_thumbs
from pipeline.core.constants import THUMBNAILS_ENV
from pipeline.core.models import JobPlan, JobSpec
from pipeline.core.thumbs import PART_MAGIC, BlockThumb, ThumbSums, fit, worth_summing
from pipeline.preview import thumbnail, to_display, type_label
from pipeline.runner import run_local
from pipeline.steps import layout
from pipeline.steps import thumbs as steps_thumbs

pytestmark = pytest.mark.timeout(300)

G = {"op": "gaussian_blur", "sigma": 1.5}


# --- the sums -------------------------------------------------------------------------


@pytest.mark.parametrize("box", [40, 12])  # blocks of 7-8 rows (integral image), 25 (reduce)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32"])
def test_pieces_in_any_order_add_up_to_the_whole_page(dtype: str, box: int):
    page = make_image(5, 301, 257, 3, dtype)
    th, tw = fit(301, 257, box)
    whole = ThumbSums(301, 257, th, tw, 3)
    whole.add(page, 0, 0)
    pieces = [ThumbSums(301, 257, th, tw, 3) for _ in range(3)]
    cuts = [(0, 0, 97, 257), (97, 0, 301, 130), (97, 130, 301, 257)]  # three uneven pieces
    for k, (y0, x0, y1, x1) in enumerate(cuts):
        pieces[(k * 2) % 3].add(page[y0:y1, x0:x1], y0, x0)
    total = ThumbSums(301, 257, th, tw, 3)
    for piece in reversed(pieces):
        total.add_part(piece.part())
    assert total.complete() and whole.complete()
    np.testing.assert_array_equal(total.counts, whole.counts)
    if dtype == "float32":  # summed in another order: equal to rounding
        np.testing.assert_allclose(total.mean(), whole.mean(), rtol=1e-12)
    else:
        np.testing.assert_array_equal(total.mean(), whole.mean())
    # the definition: pixel (ty, tx) is the mean of the page pixels y * th // 301 == ty and
    # x * tw // 257 == tx
    ty, tx = np.arange(301) * th // 301, np.arange(257) * tw // 257
    for t, s in ((0, 0), (th // 2, tw // 3), (th - 1, tw - 1)):
        block = page[ty == t][:, tx == s].reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(whole.mean()[t, s], block.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_block_sums_block_row_by_block_row_equal_the_integral_images(dtype: str):
    """Tall blocks of 8 and 16-bit pixels are summed block row by block row (cv2.reduce),
    others from the integral image: the same sums, on column slices of a page (rows not
    contiguous), of any size and channel count, negative pixels included."""
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    for _ in range(25):
        h, w, c = (int(rng.integers(10, 260)), int(rng.integers(1, 150)),
                   int(rng.integers(1, 6)))
        page = rng.integers(info.min, info.max, (h, w + 9, c), dtype=dtype, endpoint=True)
        px = page[:, 4:4 + w]
        th = int(rng.integers(1, h // core_thumbs.REDUCE_ROWS_FROM + 1))
        tw = int(rng.integers(1, w + 1))
        rstarts = core_thumbs._starts(np.arange(h) * th // h)
        cstarts = core_thumbs._starts(np.arange(w) * tw // w)
        by_rows = core_thumbs._row_block_sums(px, rstarts, cstarts)
        assert np.array_equal(by_rows, core_thumbs.block_sums(px, rstarts, cstarts))
        integral = cv2.integral(np.ascontiguousarray(px), sdepth=cv2.CV_64F).reshape(
            h + 1, w + 1, c)
        t = integral.take(np.append(rstarts, h), 0).take(np.append(cstarts, w), 1)
        assert np.array_equal(by_rows, t[1:, 1:] - t[1:, :-1] - t[:-1, 1:] + t[:-1, :-1])
    # more bands than OpenCV takes in one array (its integral image): summed all the same
    page = rng.integers(info.min, info.max, (40, 6, 600), dtype=dtype, endpoint=True)
    rstarts, cstarts = np.array([0, 13, 27]), np.array([0, 4])
    expected = np.array([[page[a:b, x:y].sum(axis=(0, 1)) for x, y in ((0, 4), (4, 6))]
                         for a, b in ((0, 13), (13, 27), (27, 40))])
    assert np.array_equal(core_thumbs.block_sums(page, rstarts, cstarts), expected)


def test_a_missing_piece_is_seen_and_nonfinite_pixels_do_not_poison():
    page = np.ones((64, 64), np.float32)
    page[3, 3] = np.nan
    sums = ThumbSums(64, 64, 8, 8, 1)
    sums.add(page[:32], 0, 0)
    assert not sums.complete()
    half = sums.part()
    assert len(half) == len(PART_MAGIC) + 9 * 8 + 4 * 8 * 8 * 2  # only the rows touched
    sums.add(page[32:], 32, 0)
    assert sums.complete() and np.isfinite(sums.mean()).all()
    again = ThumbSums.of_part(half)
    again.add_part(half)
    again.add_part(ThumbSums(64, 64, 8, 8, 1).part())  # an empty part adds nothing
    np.testing.assert_array_equal(again.acc[:4], sums.acc[:4])
    assert not again.complete() and again.rows == [0, 4]
    with pytest.raises(ValueError, match="p.part: a part of a 8x8x1 thumbnail of a 64x64 page"):
        ThumbSums(64, 65, 8, 8, 1).add_part(sums.part(), "p.part")
    with pytest.raises(ValueError, match="p.part: the part is damaged"):
        again.add_part(half[:-8], "p.part")
    with pytest.raises(ValueError, match="p.part is not a thumbnail part"):
        ThumbSums.of_part(b"PK\x03\x04" + half[4:], "p.part")


@pytest.mark.parametrize("height, width, size", [(1001, 777, 31), (5000, 3000, 256),
                                                 (4096, 4096, 256), (160, 2000, 40)])
def test_block_means_weighed_by_shared_pixels_are_the_exact_average(height: int, width: int,
                                                                       size: int):
    """BlockThumb: a page of flat 8 x 8 blocks (ending in part blocks), given as its block
    means in pieces of any shape and order, makes ThumbSums's exact thumbnail, although
    thumbnail pixels begin and end inside blocks."""
    th, tw = fit(height, width, size)
    blocks = np.random.default_rng(height).integers(0, 256, (-(-height // 8), -(-width // 8), 3))
    page = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:height, :width].astype(np.uint8)
    exact = ThumbSums(height, width, th, tw, 3)
    exact.add(page, 0, 0)
    made = BlockThumb(height, width, th, tw, 3, 8)
    pieces = [(y, x) for y in range(0, blocks.shape[0], 7) for x in range(0, blocks.shape[1], 5)]
    for y, x in reversed(pieces):
        made.add(blocks[y:y + 7, x:x + 5].astype(np.float32), y, x)
    np.testing.assert_allclose(made.mean(), exact.mean(), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="less than 16 times"):
        BlockThumb(15 * th, width, th, tw, 3, 8)


def test_only_pages_well_above_the_thumbnail_are_summed():
    assert worth_summing(1024, 1024, 256) and worth_summing(4000, 300, 256)
    assert not worth_summing(992, 992, 256) and not worth_summing(512, 512, 256)


# --- the run's steps ------------------------------------------------------------------


def _inputs(folder: Path) -> None:
    write_tiff(folder / "rgb.tif", [make_image(1, 700, 650, 3, "uint8"),
                                   make_image(4, 520, 610, 3, "uint8")],
               tiled=True, tile=(64, 64))
    write_tiff(folder / "gray16.tif", [make_image(2, 600, 533, 1, "uint16")], tiled=False,
               rowsperstrip=40)
    write_tiff(folder / "float.tif", [make_image(6, 530, 540, 1, "float32") * 3 - 1],
               tiled=True, tile=(64, 64))
    tifffile.imwrite(folder / "rgba.tif", make_image(3, 560, 620, 4, "uint8"),
                     photometric="rgb", extrasamples=[2], tile=(128, 128), compression="zlib")
    write_tiff(folder / "gray8.tif", [make_image(8, 540, 560, 1, "uint8")], tiled=True,
               tile=(64, 64))
    write_tiff(folder / "small.tif", [make_image(7, 200, 180, 3, "uint8")], tiled=False)
    tifffile.imwrite(folder / "bands5.tif", make_image(13, 520, 560, 5, "uint16"),
                     photometric="minisblack", planarconfig="contig", tile=(64, 64))
    colormap = np.random.default_rng(11).integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(folder / "palette.tif", make_image(12, 300, 320, 1, "uint8"),
                     photometric="palette", colormap=colormap, tile=(64, 64))
    # a gray class map with a colour table, as rasterio's write_colormap stores it
    tifffile.imwrite(folder / "classes.tif", (make_image(14, 300, 320, 1, "uint8") // 64) * 40,
                     photometric="minisblack", metadata=None, tile=(64, 64),
                     extratags=[(320, "H", 3 * 256, colormap.ravel(), True)])


#: job name -> (job, sides summed per page position)
JOBS: dict[str, tuple[dict[str, Any], dict[int, set[str]]]] = {
    "rgb_units": ({"input": "rgb.tif", "ops": [G], "output_options": {"compression": "deflate"}},
                  {0: {"in", "out"}, 1: {"in", "out"}}),
    "gray16_batches": ({"input": "gray16.tif", "ops": [{"op": "median_blur", "ksize": 3}],
                        "fuse": False}, {0: {"in", "out"}}),
    "float": ({"input": "float.tif", "ops": [G]}, {0: {"in", "out"}}),
    "rgba": ({"input": "rgba.tif", "ops": [{"op": "invert"}],
              "output_options": {"compression": "lzw"}}, {0: {"in", "out"}}),
    "downsample": ({"input": "rgb.tif", "pages": [0], "tile": 256,
                    "ops": [{"op": "downsample", "factor": 2}]},
                   {0: {"in", "out"}}),
    "jpeg": ({"input": "rgb.tif", "pages": [1], "ops": [G],
              "output_options": {"compression": "jpeg"}}, {0: {"in"}}),
    "pyramid": ({"input": "rgb.tif", "pages": [0], "ops": [G],
                 "output_options": {"pyramid": True}}, {0: {"in"}}),
    "canny": ({"input": "gray8.tif", "ops": [{"op": "canny", "low": 100, "high": 300}]},
              {0: {"out"}}),  # its batches read edges, not the input
    "small": ({"input": "small.tif", "ops": [G]}, {}),
    # five bands (multispectral): the first three shown, from the sums as from the file
    "bands5": ({"input": "bands5.tif", "ops": [G]}, {0: {"in", "out"}}),
    # no op, lossless: the palette's indices are kept, which are not what a reader shows
    "palette": ({"input": "palette.tif", "output_options": {"compression": "lzw"}}, {}),
    # with an op it is read as RGB, as the preview shows it
    "palette_blur": ({"input": "palette.tif", "ops": [G]}, {0: {"in", "out"}}),
    # a gray class map kept with its colour table: drawn in its colours by the preview, as
    # a reader shows it, not summed as gray; blurred, the output drops the table: summed
    "classes": ({"input": "classes.tif", "output_options": {"compression": "lzw"}}, {}),
    "classes_blur": ({"input": "classes.tif", "ops": [G]}, {0: {"out"}}),
    # a 1-bit output: captioned as such, from the sums as from the file
    "bilevel": ({"input": "gray8.tif", "ops": [{"op": "threshold", "value": 127}],
                 "output_options": {"bilevel": True, "compression": "group4"}},
                {0: {"in", "out"}}),
}


def _run(folder: Path, jobs: dict[str, tuple[dict[str, Any], Any]],
         **kwargs: Any) -> tuple[Any, dict[str, int]]:
    out = folder / "out"
    (folder / "m.json").write_text(json.dumps({
        "defaults": {"tile": 128, "output_options": {"tile": 128}},
        "jobs": [{**job, "input": str(folder / job["input"]), "output": str(out / f"{j}.tif")}
                 for j, (job, _) in jobs.items()]}))
    result = run_local(str(folder / "m.json"), 1, **kwargs)
    assert result.ok, (result.error, result.report)
    return result, {j: k for k, j in enumerate(jobs)}


#: the thumbnails' box in the tests of the steps: pages of a few hundred pixels are then well
#: above their thumbnail (MIN_REDUCTION)
BOX = 64


@pytest.fixture
def small_box(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THUMBNAILS_ENV, str(BOX))  # tiffpipe run's own 256 is left unset


@pytest.fixture
def several_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused jobs run as a Map of units of a few tile rows, not one task."""
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 0)
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_JOBS", False)
    monkeypatch.setattr(plan_mod, "FUSED_UNIT_PIXELS", 128 * 650 * 2)


@pytest.mark.parametrize("path", ["one task", "units"])
def test_summed_thumbnails_are_the_previews_of_the_files(tmp_path: Path, path: str,
                                                         request: pytest.FixtureRequest,
                                                         small_box: None):
    """Every summed thumbnail is pixel for pixel the preview's of the input page or the output
    page, on a single task or a Map of several units a page (the rgb job's pages: parts from
    several units, summed in several processes' order), process batches (gray16), floats,
    alpha, five bands, a palette read as RGB; the sides the steps cannot sum (a JPEG or
    pyramid output, a canny's input, a page near the thumbnail's size, a palette kept as
    indices) have no parts."""
    if path == "units":
        request.getfixturevalue("several_units")
    _inputs(tmp_path)
    result, index = _run(tmp_path, JOBS, contact_sheet=True, keep_work=True)
    for name, (job, sides) in JOBS.items():
        job_work = layout.job_dir(result.work, index[name])
        plan = JobPlan.from_json(json.loads(Path(layout.plan_file(job_work)).read_text()))
        parts = steps_thumbs.summed_parts(job_work)
        assert {(p, s) for p, ss in sides.items() for s in ss} == set(parts), name
        if name == "rgb_units" and path == "units":
            assert len(plan.units) > 2 and min(len(v) for v in parts.values()) >= 2
        for (page, side), urls in parts.items():
            made = steps_thumbs.load_summed(plan, page, side, urls, BOX)
            assert made is not None, (name, page, side)
            url = (str(tmp_path / job["input"]) if side == "in"
                   else str(tmp_path / "out" / f"{name}.tif"))
            in_page = plan.pages[page].info.index if side == "in" else page
            expected = thumbnail(url, in_page, BOX)
            shown = to_display(made.pixels, np.dtype(made.dtype), made.extrasamples)
            assert (made.height, made.width) == (expected.height, expected.width)
            # the caption's type: the pixels', but a palette page's is its indices', a 1-bit
            # output's its bits
            assert expected.dtype == (type_label(plan.pages[page].info) if side == "in"
                                      else "1-bit" if name == "bilevel" else made.dtype)
            np.testing.assert_array_equal(np.asarray(shown), np.asarray(expected.image),
                                          err_msg=f"{name} page {page} {side}")


def test_the_sheet_drawn_from_summed_thumbnails_is_the_one_drawn_from_the_files(
        tmp_path: Path):
    """tiffpipe run's own box (256): pages of a megapixel and more are summed."""
    _inputs(tmp_path)
    write_tiff(tmp_path / "big.tif", [make_image(9, 1100, 1040, 3, "uint8"),
                                     make_image(10, 1040, 1100, 3, "uint8")], tiled=True,
               tile=(256, 256))
    big = {"input": "big.tif", "ops": [G], "output_options": {"compression": "deflate"}}
    bilevel = {"input": "big.tif", "pages": [0], "output_options": {"bilevel": True},
               "ops": [{"op": "select_bands", "bands": [1]}, {"op": "threshold", "value": 99}]}
    # bilevel "auto" of an 8-bit band: written 8-bit, captioned so
    auto = {"input": "big.tif", "pages": [1], "output_options": {"bilevel": "auto"},
            "ops": [{"op": "select_bands", "bands": [1]}]}
    jobs = {"big": (big, None), "big_jpeg": ({**JOBS["jpeg"][0], "input": "big.tif"}, None),
            "rgba": JOBS["rgba"], "small": JOBS["small"], "bilevel": (bilevel, None),
            "auto": (auto, None)}
    result, _ = _run(tmp_path, jobs, contact_sheet=True, keep_work=True)
    run = json.loads(Path(layout.run_file(result.work)).read_text())
    specs = [JobSpec.from_json(j) for j in run["jobs"]]
    summed = contact_sheet._summed_sources(contact_sheet.sheet_rows(result.report, specs),
                                           result.work)
    # big: 2 pages x 2 sides (the JPEG job's input page is the same page 1); rgba and small
    # are below 16 times the thumbnail
    assert set(summed) == {(str(tmp_path / "big.tif"), 0), (str(tmp_path / "big.tif"), 1),
                           (str(tmp_path / "out" / "big.tif"), 0),
                           (str(tmp_path / "out" / "big.tif"), 1),
                           (str(tmp_path / "out" / "bilevel.tif"), 0),
                           (str(tmp_path / "out" / "auto.tif"), 0)}
    from_parts = contact_sheet.render(result.report, specs, result.work)
    from_files = contact_sheet.render(result.report, specs)
    np.testing.assert_array_equal(np.asarray(from_parts), np.asarray(from_files))
    # the sheet tiffpipe run wrote is that one
    written = Image.open(result.contact_sheet).convert("RGB")
    np.testing.assert_array_equal(np.asarray(written), np.asarray(from_parts))


def test_an_incomplete_thumbnail_falls_back_to_the_file(tmp_path: Path,
                                                        several_units: None, small_box: None):
    """A part missing (a unit that failed, a damaged work location): the page's thumbnail is
    not summed, the sheet decodes the file as before."""
    _inputs(tmp_path)
    result, _ = _run(tmp_path, {"rgb_units": JOBS["rgb_units"]}, keep_work=True,
                     contact_sheet=True)
    job_work = layout.job_dir(result.work, 0)
    plan = JobPlan.from_json(json.loads(Path(layout.plan_file(job_work)).read_text()))
    parts = steps_thumbs.summed_parts(job_work)
    # what else a folder may hold (a write's temporary file left by a crash) is not a part
    Path(layout.thumbs_dir(job_work), ".in-0000-u000001.part.tmp").write_bytes(b"x")
    Path(layout.thumbs_dir(job_work), "stray").write_bytes(b"x")
    assert steps_thumbs.summed_parts(job_work) == parts
    os.remove(parts[(0, "in")][0])
    assert steps_thumbs.load_summed(plan, 0, "in", parts[(0, "in")][1:], BOX) is None
    assert steps_thumbs.load_summed(plan, 0, "out", parts[(0, "out")], BOX) is not None
    # parts of another box than the sheet's are not used either
    assert steps_thumbs.load_summed(plan, 0, "out", parts[(0, "out")], 256) is None
    run = json.loads(Path(layout.run_file(result.work)).read_text())
    specs = [JobSpec.from_json(j) for j in run["jobs"]]
    incomplete = (plan, 0, "in", parts[(0, "in")][1:])
    assert contact_sheet._summed_thumb(incomplete) is None
    key = (str(tmp_path / "rgb.tif"), 0)
    (thumb,) = contact_sheet._file_thumbnails(key[0], [key[1]], {key: incomplete})
    assert not isinstance(thumb, str) and thumb.decoded > 0  # read from the file
    assert thumb.image.size == (238, 256)  # (width, height): the sheet's box
    np.testing.assert_array_equal(
        np.asarray(contact_sheet.render(result.report, specs, result.work)),
        np.asarray(contact_sheet.render(result.report, specs)))


def test_no_thumbnails_without_a_contact_sheet_nor_past_the_sheets_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _inputs(tmp_path)
    jobs = {"rgb_units": JOBS["rgb_units"]}
    result, _ = _run(tmp_path, jobs, keep_work=True)
    assert not os.path.exists(layout.thumbs_dir(layout.job_dir(result.work, 0)))
    assert THUMBNAILS_ENV not in os.environ  # the run's, for the run only
    monkeypatch.setenv(THUMBNAILS_ENV, str(BOX))
    monkeypatch.setattr(steps_thumbs, "MAX_PAGES", 1)  # the sheet would show one page
    result, _ = _run(tmp_path, jobs, keep_work=True, contact_sheet=True)
    parts = steps_thumbs.summed_parts(layout.job_dir(result.work, 0))
    assert set(parts) == {(0, "in"), (0, "out")}


def test_a_sheet_row_gives_the_output_pages_megapixels_after_a_downsample_or_crop(
        tmp_path: Path):
    """A row's label gave the input's megapixels only, beside an output cell a quarter its
    size: it gives the output's after an arrow, as the run's summary does."""
    _inputs(tmp_path)
    crop = {"input": "small.tif", "ops": [{"op": "crop", "x": 0, "y": 0, "width": 100,
                                           "height": 50}]}
    jobs = {"downsample": JOBS["downsample"], "crop": (crop, None), "small": JOBS["small"]}
    result, _ = _run(tmp_path, jobs)
    specs = [JobSpec.from_json({**j, "ops": j.get("ops", [])}) for j in
             json.loads((tmp_path / "m.json").read_text())["jobs"]]
    details = [row.detail.rsplit(", ", 1)[0]
               for row in contact_sheet.sheet_rows(result.report, specs)]
    # 700 x 650 -> 350 x 325; 200 x 180 -> 100 x 50; 200 x 180 blurred
    assert details == ["0.46 -> 0.11 MP", "0.036 -> 0.005 MP", "0.036 MP"]
