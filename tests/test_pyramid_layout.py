"""``output_options.pyramid_layout``: pyramid levels as SubIFDs of their page (the default,
OME-TIFF's layout) or as pages of the main chain right after it, marked reduced-resolution
(NewSubfileType 1): the layout OpenSlide's generic TIFF reader and GDAL's overviews read.

The same jobs run both ways on the local engine (real TIFFs, real files): the levels are the
same pixels, tiled and compressed as their page, only where their IFDs are differs. The S3
merge of the "pages" layout is tested with the other S3 merges (tests/test_s3_merge.py).
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
from test_s3_merge import _plan, run_two_pages

from pipeline.adapters.segments import compose
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import tiff_layout
from pipeline.steps import merge as merge_mod

pytestmark = pytest.mark.timeout(300)

#: name -> (job fields); each "pages" job has its "subifds" twin (the same job otherwise)
JOBS: dict[str, dict[str, Any]] = {
    "subifds": {"output_options": {"pyramid": True}},
    "pages": {"output_options": {"pyramid": True, "pyramid_layout": "pages"}},
    # not fused: level units (BuildLevels) build the levels, merge places them
    # small tiles: several batches a page, whose tiles interleave in row-major order
    "subifds_batches": {"fuse": False, "ops": [{"op": "invert"}], "tile": 64,
                        "output_options": {"pyramid": True, "compression": "deflate",
                                           "tile": 32}},
    "pages_batches": {"fuse": False, "ops": [{"op": "invert"}], "tile": 64,
                      "output_options": {"pyramid": True, "compression": "deflate",
                                         "tile": 32, "pyramid_layout": "pages"}},
    "pages_one": {"pages": [0], "output_options": {"pyramid": True, "pyramid_layout": "pages"}},
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
    """The "pages" output is the SubIFD output's pages, each followed by its levels as
    pages marked NewSubfileType 1 (no SubIFDs): the same pixels, tiles, compression and
    every other tag but where the tiles are."""
    subifds, pages = (run["outputs"][name] for name in pair)
    with tifffile.TiffFile(pages) as tf:
        assert not any(page.subifds for page in tf.pages)
        kinds = [int(page.subfiletype) for page in tf.pages]
        shapes = [page.shape for page in tf.pages]
    with tifffile.TiffFile(subifds) as tf:
        assert [1 + len(page.subifds) for page in tf.pages] == counts
    assert kinds == [k > 0 for n in counts for k in range(n)]
    assert shapes[0] == (700, 900, 3) and shapes[counts[0]] == (500, 333)
    assert shapes[1:3] == [(350, 450, 3), (175, 225, 3)]
    want, got = pyramid_levels(subifds), pyramid_levels(pages)
    assert [len(p) for p in got] == [len(p) for p in want] == counts
    for page_want, page_got in zip(want, got, strict=True):
        for (pixels_w, tags_w), (pixels_g, tags_g) in zip(page_want, page_got, strict=True):
            np.testing.assert_array_equal(pixels_g, pixels_w)
            tags_w.pop(325, None), tags_g.pop(325, None)  # (the same, in another order)
            assert tags_g == tags_w


def test_gdal_reads_the_levels_as_overviews(run):
    """GDAL (rasterio) takes the reduced-resolution pages after a page for its overviews,
    with the levels' pixels; in a file of several pages, the first page's (a later page,
    a subdataset, gets none: docs/outputs.md)."""
    levels = pyramid_levels(run["outputs"]["pages_one"])[0][1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        for name in ("pages_one", "pages"):
            with rasterio.open(run["outputs"][name]) as ds:
                assert (ds.height, ds.width, ds.count) == (700, 900, 3)
                assert ds.overviews(1) == [2, 4, 8]
            for k, (pixels, _) in enumerate(levels):
                with rasterio.open(run["outputs"][name], overview_level=k) as ds:
                    np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), pixels)


def test_tiffpipe_reads_back_the_pages_without_their_levels(run):
    """A job reading a "pages" output without ``pages`` reads its two pages: the levels
    after each are reduced-resolution pages of it, left out."""
    infos = read_infos(run["outputs"]["pages"], None)
    assert [(i.index, i.height, i.width) for i in infos] == [(0, 700, 900), (4, 500, 333)]


@pytest.mark.parametrize("limit", ["ROW_MAJOR_RUNS", "ROW_MAJOR_READ_THROUGH"])
def test_a_page_laid_out_by_segment_keeps_its_levels_as_pages(run, monkeypatch, tmp_path,
                                                               limit):
    """A page whose tiles are laid out segment after segment (forced here) has its
    TileOffsets patched in its own IFD, found with its levels after it: the same pixels."""
    monkeypatch.setattr(tiff_layout, limit, 0)
    moved: list[int] = []
    by_segment = merge_mod._by_segment
    monkeypatch.setattr(merge_mod, "_by_segment", lambda recorder, ifd, table: (
        moved.append(ifd), by_segment(recorder, ifd, table)))
    plan = _plan(run["work"], list(JOBS).index("pages_batches"))
    out = tmp_path / "by_segment.tif"
    compose(merge_mod.output_pieces(plan), str(out))
    want, got = pyramid_levels(run["outputs"]["pages_batches"]), pyramid_levels(str(out))
    assert len(moved) == 2  # (both pages: their batches interleave in row-major order)
    assert [len(p) for p in got] == [len(p) for p in want] == [6, 5]
    for page_want, page_got in zip(want, got, strict=True):
        for (pixels_w, _), (pixels_g, _) in zip(page_want, page_got, strict=True):
            np.testing.assert_array_equal(pixels_g, pixels_w)


def test_a_page_without_resolution_and_its_level_pages_get_none(tmp_path):
    """Pages Pillow wrote without resolution come out without XResolution, YResolution and
    ResolutionUnit on each page and each of its level pages: merge finds every IFD of a
    page (its levels after it) to drop tifffile's default from."""
    from PIL import Image

    import pipeline

    big = np.arange(300 * 280 * 3, dtype=np.uint32).reshape(300, 280, 3).astype(np.uint8)
    second = (np.arange(200 * 190, dtype=np.uint32).reshape(200, 190) % 251).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "none.tif", compression="tiff_lzw",
                              append_images=[Image.fromarray(second)], save_all=True)
    result = pipeline.run({"jobs": [{"input": "none.tif", "output": "out/none.tif",
                                     "output_options": {"pyramid": True, "tile": 64,
                                                        "pyramid_layout": "pages"}}]},
                          workers=1, base=tmp_path)
    assert result.ok, result.jobs
    with tifffile.TiffFile(tmp_path / "out" / "none.tif") as tf:
        pages = list(tf.pages)
        # 300 x 280 down to 38 x 35 (3 levels), 200 x 190 down to 50 x 48 (2 levels)
        assert [int(p.subfiletype) for p in pages] == [0, 1, 1, 1, 0, 1, 1]
        for page in pages:
            assert [page.tags.get(code) for code in (282, 283, 296)] == [None] * 3, page
        np.testing.assert_array_equal(pages[0].asarray(), big)
        np.testing.assert_array_equal(pages[4].asarray(), second)


def test_the_contact_sheet_shows_each_page_not_a_level_of_the_one_before(run):
    """The sheet numbers a "pages" output's pages as the file does (its second page is the
    file's page 4, after page 0's three levels) and draws that page, from the thumbnails
    the steps summed as from the file; not, at position 1, page 0's first level."""
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
    assert [(r.out_page, r.out_file_page) for r in by_job["pages"]] == [(0, 0), (1, 4)]
    assert [r.out_file_page for r in by_job["subifds"]] == [0, 1]
    assert [r.out_file_page for r in by_job["pages_one"]] == [0]
    out = run["outputs"]["pages"]
    drawn = contact_sheet._thumbnails([(out, 4)], {})[(out, 4)]
    want = thumbnail(out, 4, contact_sheet.CELL)
    assert (drawn.height, drawn.width) == (500, 333) == (want.height, want.width)
    np.testing.assert_array_equal(np.asarray(drawn.image), np.asarray(want.image))
    from_parts = contact_sheet.render(report, specs, run["work"])
    from_files = contact_sheet.render(report, specs)
    np.testing.assert_array_equal(from_parts, from_files)
    written = Image.open(run["root"] / "m.report.contact.png").convert("RGB")
    np.testing.assert_array_equal(np.asarray(written), from_parts)
