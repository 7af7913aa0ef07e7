"""``output_options.cog``: the output laid out as a Cloud Optimized GeoTIFF, GDAL's COG layout
(every IFD first, then the overviews' tiles from the smallest, the image's last, each IFD's
row-major), for GIS readers that read it over HTTP range requests (QGIS ``/vsicurl/``,
TiTiler). Real GeoTIFFs written by rasterio (GDAL), run on the local engine; each COG job
has a twin without ``cog`` (levels as pages, tifffile's layout) whose pixels, overviews and
tags it must keep. The S3 merge of a COG is tested with the other S3 merges
(tests/test_s3_merge.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import cog_layout_problems, gdal_masked
from rasterio.transform import Affine
from test_s3_merge import _plan

from pipeline.adapters.segments import compose
from pipeline.core import tiff_layout
from pipeline.steps import merge as merge_mod

pytestmark = pytest.mark.timeout(300)

PAGES = {"pyramid": True, "pyramid_layout": "pages"}
COG = {**PAGES, "cog": True}
#: name -> (input, job fields); each "*_cog" job has its twin without ``cog``
JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "nodata_cog": ("nodata.tif", {"output_options": COG}),
    "nodata": ("nodata.tif", {"output_options": PAGES}),
    "masked_cog": ("masked.tif", {"output_options": COG}),
    "masked": ("masked.tif", {"output_options": PAGES}),
    # not fused: the level units build the levels; a BigTIFF's 8-byte offsets
    "batches_cog": ("nodata.tif", {"fuse": False, "ops": [{"op": "invert"}],
                                   "output_options": {**COG, "bigtiff": True}}),
    "batches": ("nodata.tif", {"fuse": False, "ops": [{"op": "invert"}],
                               "output_options": {**PAGES, "bigtiff": True}}),
}
H, W = 2300, 3100


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A uint16 scene with a corner of no-data (0), and a valid area with a hole."""
    yy, xx = np.mgrid[0:H, 0:W]
    pixels = ((np.sin(yy / 37) + np.cos(xx / 53) + 2) * 60 + 1).astype(np.uint16)
    pixels[:200, :300] = 0
    valid = np.ones((H, W), bool)
    valid[1000:1400, 500:2500] = False
    return pixels, valid


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import pipeline

    root = tmp_path_factory.mktemp("cog")
    pixels, valid = _scene()
    with rasterio.open(root / "nodata.tif", "w", driver="GTiff", height=H, width=W, count=1,
                       dtype="uint16", crs="EPSG:32633", nodata=0, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate",
                       transform=Affine(10, 0, 500_000, 0, -10, 4_000_000)) as ds:
        ds.write(pixels, 1)
    rgb = np.stack([pixels // 2, pixels // 3, 255 - pixels // 2], -1).astype(np.uint8)
    gdal_masked(root / "masked.tif", rgb, valid)
    result = pipeline.run({"defaults": {"tile": 512, "output_options": {"tile": 256}},
                           "jobs": [{"input": src, "output": f"out/{name}.tif", **fields}
                                    for name, (src, fields) in JOBS.items()]},
                          workers=2, base=root, work=str(root / "work"), keep_work=True)
    assert [j["status"] for j in result.jobs] == ["SUCCEEDED"] * len(JOBS), result.jobs
    return {"root": root, "pixels": pixels, "valid": valid, "rgb": rgb,
            "work": str(root / "work")}


def _out(run: dict[str, Any], name: str) -> Path:
    return run["root"] / "out" / f"{name}.tif"


@pytest.mark.parametrize("name", ["nodata", "masked", "batches"])
def test_a_cog_keeps_gdals_cog_layout_its_twin_does_not(run, name):
    """The COG passes every check of GDAL's validator on its bytes; tifffile's layout of the
    same job (each level's IFD right before its tiles, the image's tiles first) does not."""
    assert cog_layout_problems(_out(run, f"{name}_cog")) == []
    twin = cog_layout_problems(_out(run, name))
    assert any("comes after tile data" in p for p in twin), twin
    assert any("the tiles of overview 0 come after those of the image" in p for p in twin)


@pytest.mark.parametrize("name", ["nodata", "masked", "batches"])
def test_a_cog_has_its_twins_pages_tags_and_tiles(run, name):
    """Only where things are moves: the same pages (image, masks, levels) in the same order,
    every tag but TileOffsets the same, every tile the same bytes."""
    with tifffile.TiffFile(_out(run, f"{name}_cog")) as cog, \
            tifffile.TiffFile(_out(run, name)) as twin:
        assert len(cog.pages) == len(twin.pages) > 3
        for a, b in zip(cog.pages, twin.pages, strict=True):
            tags = {t.code: t.value for t in a.tags if t.code != 324}
            assert tags == {t.code: t.value for t in b.tags if t.code != 324}
            for (oa, na), (ob, nb) in zip(zip(a.dataoffsets, a.databytecounts),
                                          zip(b.dataoffsets, b.databytecounts), strict=True):
                assert na == nb
                cog.filehandle.seek(oa)
                twin.filehandle.seek(ob)
                assert cog.filehandle.read(na) == twin.filehandle.read(nb)


def test_a_cogs_tiles_stay_row_major_where_a_page_would_go_by_segment(run, monkeypatch,
                                                                      tmp_path):
    """Where merge would lay a page's tiles out segment after segment (a page of many
    interleaving batches' runs, forced here), a COG's stay row-major, as GDAL's COG layout
    has them: the same file as without the limit. Its twin's are moved."""
    monkeypatch.setattr(tiff_layout, "ROW_MAJOR_RUNS", 0)
    monkeypatch.setattr(tiff_layout, "ROW_MAJOR_READ_THROUGH", 0)
    for name in ("batches_cog", "batches"):
        out = tmp_path / f"{name}.tif"
        compose(merge_mod.output_pieces(_plan(run["work"], list(JOBS).index(name))), str(out))
        problems = cog_layout_problems(out)
        if name == "batches":
            assert "IFD 0's tiles are not in row-major order" in problems, problems
        else:
            assert problems == []
            assert out.read_bytes() == _out(run, name).read_bytes()


@pytest.mark.parametrize("name", ["nodata_cog", "masked_cog"])
def test_merge_walks_a_cogs_ifds_once(run, name, monkeypatch, tmp_path):
    """Merge walks the IFD chain once, for its patches (a mask's BitsPerSample, the
    resolution dropped) and the COG's order alike (it walked it again for the order): the
    file is the one the run published."""
    walks = []
    image_ifds = merge_mod.image_ifds
    monkeypatch.setattr(merge_mod, "image_ifds",
                        lambda *args: walks.append(args) or image_ifds(*args))
    out = tmp_path / f"{name}.tif"
    compose(merge_mod.output_pieces(_plan(run["work"], list(JOBS).index(name))), str(out))
    assert len(walks) == 1
    assert out.read_bytes() == _out(run, name).read_bytes()
    assert cog_layout_problems(out) == []


def test_gdal_reads_the_cog_georeferenced_with_its_overviews_and_mask(run):
    """rasterio (GDAL) reads the COGs' georeferencing, no-data, pixels, overviews and mask as
    the inputs', and finds their IFDs and first tiles where the validator wants them (the
    same ``IFD_OFFSET`` and ``BLOCK_OFFSET_0_0`` items it reads). No ghost header: GDAL
    reports no ``LAYOUT=COG`` (docs/outputs.md says why)."""
    for name, want in (("nodata_cog", run["pixels"][None]),
                       ("masked_cog", np.moveaxis(run["rgb"], -1, 0))):
        with rasterio.open(_out(run, name)) as ds, \
                rasterio.open(run["root"] / name.replace("_cog", ".tif")) as src:
            assert (ds.crs, ds.transform, ds.nodata) == (src.crs, src.transform, src.nodata)
            np.testing.assert_array_equal(ds.read(), want)
            assert ds.overviews(1) == [2, 4, 8, 16]  # (down to one 256 px tile)
            assert "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE")
            ifds = [int(ds.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=i))
                    for i in range(4)]
            blocks = [int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=i))
                      for i in range(4)]
            first = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
            assert int(ds.get_tag_item("IFD_OFFSET", "TIFF", bidx=1)) == 8
            # the IFDs in order, then the first tiles from the smallest overview's
            assert [8, *ifds, *reversed(blocks), first] == sorted({8, *ifds, *blocks, first})
            if name == "masked_cog":
                np.testing.assert_array_equal(ds.read_masks(1) > 0, run["valid"])
                for i, factor in enumerate(ds.overviews(1)):
                    with rasterio.open(_out(run, "masked"), overview_level=i) as twin, \
                            rasterio.open(_out(run, name), overview_level=i) as level:
                        assert level.shape == (-(-H // factor), -(-W // factor))
                        np.testing.assert_array_equal(level.read(), twin.read())
                        np.testing.assert_array_equal(level.read_masks(), twin.read_masks())


def test_a_cog_of_several_pages_is_refused(tmp_path):
    """A COG is one image: a job of two pages is refused before anything is written, as any
    job of levels as pages of several pages is (GDAL would take the later pages' levels for
    the first page's overviews), naming the file and what to do."""
    import pipeline

    with tifffile.TiffWriter(tmp_path / "two.tif") as tw:
        for _ in range(2):
            tw.write(np.zeros((600, 800), np.uint8), tile=(256, 256), metadata=None)
    result = pipeline.run({"jobs": [{"input": "two.tif", "output": "out/two.tif",
                                     "output_options": COG}]}, workers=1, base=tmp_path)
    (job,) = result.jobs
    assert job["status"] == "FAILED"
    message = job["error"]["message"]
    assert str(tmp_path / "two.tif") in message and "2 pages" in message, message
    assert '"pages": [n]' in message
    assert not (tmp_path / "out" / "two.tif").exists()
