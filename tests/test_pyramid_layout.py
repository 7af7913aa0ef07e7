"""``output_options.pyramid_layout``: pyramid levels as SubIFDs of their page (the default,
OME-TIFF's layout) or as pages of the main chain right after it, marked reduced-resolution
(NewSubfileType 1): the layout OpenSlide's generic TIFF reader and GDAL's overviews read.

The same jobs run both ways on the local engine (real TIFFs, real files): the levels are the
same pixels, tiled and compressed as their page, only where their IFDs are differs. Level
pages are for outputs of one page (GDAL and OpenSlide misread them in a file of several:
docs/outputs.md), so each page of the input gets its own "pages" job, and PlanJob refuses a
job of both. The S3 merge of the "pages" layout is tested with the other S3 merges
(tests/test_s3_merge.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import pyramid_levels
from test_s3_merge import _plan, _two_pages, run_two_pages

from pipeline.adapters.segments import compose
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import tiff_layout
from pipeline.steps import merge as merge_mod

pytestmark = pytest.mark.timeout(300)

PAGES = {"pyramid": True, "pyramid_layout": "pages"}
#: name -> (job fields); each "pages_N" job (page N) has its "subifds" twin (the same job of
#: both pages otherwise)
JOBS: dict[str, dict[str, Any]] = {
    "subifds": {"output_options": {"pyramid": True}},
    "pages_0": {"pages": [0], "output_options": PAGES},
    "pages_1": {"pages": [1], "output_options": PAGES},
    # not fused: level units (BuildLevels) build the levels, merge places them
    # small tiles: several batches a page, whose tiles interleave in row-major order
    "subifds_batches": {"fuse": False, "ops": [{"op": "invert"}], "tile": 64,
                        "output_options": {"pyramid": True, "compression": "deflate",
                                           "tile": 32}},
    **{f"pages_batches_{n}": {"pages": [n], "fuse": False, "ops": [{"op": "invert"}],
                              "tile": 64, "output_options": {
                                  **PAGES, "compression": "deflate", "tile": 32}}
       for n in (0, 1)},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # (700 x 900 RGB, 500 x 333 uint16 gray)
    return run_two_pages(tmp_path_factory.mktemp("pyramid_layout"), JOBS)


@pytest.mark.parametrize(("pair", "counts"), [
    (("subifds", "pages"), [4, 3]),  # 700 x 900 down to 88 x 113, 500 x 333 to 125 x 84
    (("subifds_batches", "pages_batches"), [6, 5]),  # (tile 32: down to 22 x 29, 32 x 21)
])
def test_levels_as_pages_follow_their_page_with_the_subifd_levels_pixels(run, pair, counts):
    """Each page's "pages" output is that page of the SubIFD output, followed by its levels
    as pages marked NewSubfileType 1 (no SubIFDs): the same pixels, tiles, compression and
    every other tag but where the tiles are."""
    subifds, pages = pair
    with tifffile.TiffFile(run["outputs"][subifds]) as tf:
        assert [1 + len(page.subifds) for page in tf.pages] == counts
    want = pyramid_levels(run["outputs"][subifds])
    for n, count in enumerate(counts):
        out = run["outputs"][f"{pages}_{n}"]
        with tifffile.TiffFile(out) as tf:
            assert not any(page.subifds for page in tf.pages)
            kinds = [int(page.subfiletype) for page in tf.pages]
            shapes = [page.shape for page in tf.pages]
        assert kinds == [k > 0 for k in range(count)]
        assert shapes[0] == [(700, 900, 3), (500, 333)][n]
        assert n or shapes[1:3] == [(350, 450, 3), (175, 225, 3)]
        got = pyramid_levels(out)
        assert [len(p) for p in got] == [count]
        for (pixels_w, tags_w), (pixels_g, tags_g) in zip(want[n], got[0], strict=True):
            np.testing.assert_array_equal(pixels_g, pixels_w)
            tags_w.pop(325, None), tags_g.pop(325, None)  # (the same, in another order)
            assert tags_g == tags_w


def _gdal_levels(path: str) -> tuple[tuple[int, int, int], list[int], list[np.ndarray]]:
    """(height, width, bands), overview factors and each overview's pixels (as tifffile's
    arrays) of the file's first page, as GDAL (rasterio) reads them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            shape, factors = (ds.height, ds.width, ds.count), ds.overviews(1)
        pixels = []
        for k in range(len(factors)):
            with rasterio.open(path, overview_level=k) as ds:
                pixels.append(np.moveaxis(ds.read(), 0, -1))
    return shape, factors, pixels


def test_gdal_reads_the_levels_as_overviews(run):
    """GDAL (rasterio) takes the reduced-resolution pages after the page for its overviews,
    with the levels' pixels: each page's own output, 700 x 900 RGB and 500 x 333 gray."""
    for name, shape, factors in [("pages_0", (700, 900, 3), [2, 4, 8]),
                                 ("pages_1", (500, 333, 1), [2, 4])]:
        levels = pyramid_levels(run["outputs"][name])[0][1:]
        got_shape, got_factors, pixels = _gdal_levels(run["outputs"][name])
        assert (got_shape, got_factors) == (shape, factors)
        for (want, _), got in zip(levels, pixels, strict=True):
            np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_a_pages_job_of_several_pages_is_refused_its_subifds_twin_runs(tmp_path):
    """GDAL lists the later pages' level pages among the first page's overviews (800 x 600
    and 500 x 400 pages, 3 levels each: overviews [2, 4, 8, 3, 6], page 1's pixels shown
    zoomed out on page 0), and OpenSlide takes them for levels of one slide: PlanJob fails
    a "pages" job of both pages of the input, naming the file, the pages and what to write
    instead, before anything is written; the SubIFD job beside it runs, and GDAL reads its
    first page's overviews right."""
    import pipeline

    _two_pages(tmp_path / "in.tif")
    result = pipeline.run({"defaults": {"output_options": {"tile": 128}}, "jobs": [
        {"input": "in.tif", "output": "out/pages.tif", "output_options": PAGES},
        {"input": "in.tif", "output": "out/subifds.tif", "output_options": {"pyramid": True}}]},
        workers=1, base=tmp_path)
    refused, subifds = result.jobs
    assert (refused["status"], subifds["status"]) == ("FAILED", "SUCCEEDED"), result.jobs
    message = refused["error"]["message"]
    assert str(tmp_path / "in.tif") in message, message
    assert "the output would have 2 pages (0-1)" in message
    assert "GDAL" in message and "OpenSlide" in message
    assert '"pages": [n]' in message and '"pyramid_layout": "subifds"' in message
    assert not (tmp_path / "out" / "pages.tif").exists()
    levels = pyramid_levels(str(tmp_path / "out" / "subifds.tif"))[0]
    shape, factors, pixels = _gdal_levels(str(tmp_path / "out" / "subifds.tif"))
    assert (shape, factors) == ((700, 900, 3), [2, 4, 8])  # (page 0's levels only)
    for (want, _), got in zip(levels[1:], pixels, strict=True):
        np.testing.assert_array_equal(got, want)


def test_tiffpipe_reads_back_the_page_without_its_levels(run):
    """A job reading a "pages" output without ``pages`` reads its page: the levels after it
    are reduced-resolution pages of it, left out."""
    for n, size in enumerate([(700, 900), (500, 333)]):
        infos = read_infos(run["outputs"][f"pages_{n}"], None)
        assert [(i.index, i.height, i.width) for i in infos] == [(0, *size)]


@pytest.mark.parametrize("limit", ["ROW_MAJOR_RUNS", "ROW_MAJOR_READ_THROUGH"])
def test_a_page_laid_out_by_segment_keeps_its_levels_as_pages(run, monkeypatch, tmp_path,
                                                               limit):
    """A page whose tiles are laid out segment after segment (forced here) has its
    TileOffsets patched in its own IFD, found with its levels after it: the same pixels
    (each page's own output)."""
    monkeypatch.setattr(tiff_layout, limit, 0)
    moved: list[int] = []
    by_segment = merge_mod._by_segment
    monkeypatch.setattr(merge_mod, "_by_segment", lambda recorder, ifd, table: (
        moved.append(ifd), by_segment(recorder, ifd, table)))
    for n, count in enumerate([6, 5]):
        moved.clear()
        name = f"pages_batches_{n}"
        plan = _plan(run["work"], list(JOBS).index(name))
        out = tmp_path / f"by_segment_{n}.tif"
        compose(merge_mod.output_pieces(plan), str(out))
        want, got = pyramid_levels(run["outputs"][name]), pyramid_levels(str(out))
        assert len(moved) == 1  # (its batches interleave in row-major order)
        assert [len(p) for p in got] == [len(p) for p in want] == [count]
        for (pixels_w, _), (pixels_g, _) in zip(want[0], got[0], strict=True):
            np.testing.assert_array_equal(pixels_g, pixels_w)


def test_a_page_without_resolution_and_its_level_pages_get_none(tmp_path):
    """Pages Pillow wrote without resolution come out without XResolution, YResolution and
    ResolutionUnit on each page and each of its level pages (a job each): merge finds every
    IFD of a page (its levels after it) to drop tifffile's default from."""
    from PIL import Image

    import pipeline

    big = np.arange(300 * 280 * 3, dtype=np.uint32).reshape(300, 280, 3).astype(np.uint8)
    second = (np.arange(200 * 190, dtype=np.uint32).reshape(200, 190) % 251).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "none.tif", compression="tiff_lzw",
                              append_images=[Image.fromarray(second)], save_all=True)
    result = pipeline.run({"jobs": [{"input": "none.tif", "output": f"out/none{n}.tif",
                                     "pages": [n], "output_options": {**PAGES, "tile": 64}}
                                    for n in (0, 1)]}, workers=1, base=tmp_path)
    assert result.ok, result.jobs
    # 300 x 280 down to 38 x 35 (3 levels), 200 x 190 down to 50 x 48 (2 levels)
    for n, (pixels, kinds) in enumerate([(big, [0, 1, 1, 1]), (second, [0, 1, 1])]):
        with tifffile.TiffFile(tmp_path / "out" / f"none{n}.tif") as tf:
            pages = list(tf.pages)
            assert [int(p.subfiletype) for p in pages] == kinds
            for page in pages:
                assert [page.tags.get(code) for code in (282, 283, 296)] == [None] * 3, page
            np.testing.assert_array_equal(pages[0].asarray(), pixels)


def test_the_contact_sheet_shows_each_page_not_its_levels(run):
    """The sheet numbers a "pages" output's page as the file does (page 0: the level pages
    after it are no pages of the sheet) and draws that page, from the thumbnails the steps
    summed as from the file; the SubIFD output of both pages has them as file pages 0, 1."""
    from PIL import Image

    from pipeline import contact_sheet
    from pipeline.core.models import JobSpec
    from pipeline.preview import thumbnail
    from pipeline.steps import layout

    report = json.loads((run["root"] / "m.report.json").read_text())
    doc = json.loads(Path(layout.run_file(run["work"])).read_text())
    specs = [JobSpec.from_json(j) for j in doc["jobs"]]
    rows = contact_sheet.sheet_rows(report, specs)
    by_job = {name: [r for r in rows if r.output == run["outputs"][name]] for name in JOBS}
    for name in ("pages_0", "pages_1", "pages_batches_0", "pages_batches_1"):
        assert [(r.out_page, r.out_file_page) for r in by_job[name]] == [(0, 0)], name
    assert [r.out_file_page for r in by_job["subifds"]] == [0, 1]
    out = run["outputs"]["pages_1"]
    drawn = contact_sheet._thumbnails([(out, 0)], {})[(out, 0)]
    want = thumbnail(out, 0, contact_sheet.CELL)
    assert (drawn.height, drawn.width) == (500, 333) == (want.height, want.width)
    np.testing.assert_array_equal(np.asarray(drawn.image), np.asarray(want.image))
    from_parts = contact_sheet.render(report, specs, run["work"])
    from_files = contact_sheet.render(report, specs)
    np.testing.assert_array_equal(from_parts, from_files)
    written = Image.open(run["root"] / "m.report.contact.png").convert("RGB")
    np.testing.assert_array_equal(np.asarray(written), from_parts)
