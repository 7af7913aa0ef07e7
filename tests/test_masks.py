"""A GeoTIFF's internal mask (GDAL's valid-data mask: the 1-bit page after the image) carried
into the output: the inputs are written by GDAL itself (rasterio's ``write_mask`` with
``GDAL_TIFF_INTERNAL_MASK``), go through one ``tiffpipe run`` blurred and rotated, flipped or
cropped, and the outputs are read back by GDAL (rasterio): its mask is the input's moved as
the pixels were, the pixels are those of the same job without the mask but near the mask's
edge (the blur leaves the masked-out pixels out, tests/test_nodata_filters.py), and the mask
page is laid out as GDAL lays out its own. A ``downsample`` and the pyramid levels reduce
the mask as GDAL reduces one for its average overviews (a pixel is valid where its block
holds a valid one), each level's mask after it as in a COG, and the levels' pixels leave the
masked-out pixels out of their means as GDAL's do.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import (
    gdal_average,
    gdal_masked,
    one_bit_pages_state_their_bits,
    run_in_units,
    run_named_jobs,
    tiff_pages,
)
from rasterio.enums import MaskFlags

from pipeline import cli

pytestmark = pytest.mark.timeout(240)

BLUR = {"op": "gaussian_blur", "sigma": 2}
TURNED = [BLUR, {"op": "rotate", "angle": 90}, {"op": "crop", "x": 10, "y": 20, "width": 250,
                                                 "height": 400}]
FLIPPED = [BLUR, {"op": "flip", "axis": "horizontal"}]
#: how each job moves the input's pixels, on a numpy array
MOVES = {
    "rgb": lambda m: np.rot90(m, -1)[20:420, 10:260],
    "rgb_batches": lambda m: np.rot90(m, -1)[20:420, 10:260],
    "u16": lambda m: m[:, ::-1],
    "small": lambda m: np.rot90(m, 1),
    "bilevel": lambda m: m,
}
PYRAMID = {"pyramid": True, "pyramid_layout": "pages"}


def collar(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene and its valid area: a slanted swath, as a satellite scene's, with a hole."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    valid = (xx > yy // 3 + 17) & (xx < w - 23 - (h - yy) // 4) & (yy > 5) & (yy < h - 9)
    valid[h // 3:h // 3 + 21, w // 2:w // 2 + 33] = False
    base = 60 + yy / 4 + xx / 6 + rng.normal(0, 6, (h, w))
    return base, valid


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("masks")
    base, valid = collar(300, 500, 1)
    rgb = np.stack([base, base * 0.8, base * 0.6], -1).clip(0, 255).astype(np.uint8)
    rgb[~valid] = 0  # the collar's fill: black data, but for the mask
    gdal_masked(root / "rgb.tif", rgb, valid, block=128)
    base16, valid16 = collar(300, 500, 2)
    gdal_masked(root / "u16.tif", (base16 * 100).astype(np.uint16), valid16, block=None)
    small, valid_small = collar(100, 120, 3)
    gdal_masked(root / "small.tif", small.clip(0, 255).astype(np.uint8), valid_small,
                block=None)
    rgb_in, u16_in = str(root / "rgb.tif"), str(root / "u16.tif")
    jobs = {
        "rgb": {"input": rgb_in, "ops": TURNED},
        "rgb_batches": {"input": rgb_in, "ops": TURNED, "fuse": False},
        "rgb_off": {"input": rgb_in, "ops": TURNED, "output_options": {"masks": False}},
        "u16": {"input": u16_in, "ops": FLIPPED},
        "u16_off": {"input": u16_in, "ops": FLIPPED, "output_options": {"masks": False}},
        # a page smaller than a quarter of the output tile is written as one strip
        "small": {"input": str(root / "small.tif"), "tile": 512,
                  "ops": [BLUR, {"op": "rotate", "angle": 270}],
                  "output_options": {"tile": 512}},
        "bilevel": {"input": rgb_in, "ops": [{"op": "to_gray"}, {"op": "otsu_threshold"}],
                    "output_options": {"bilevel": True, "compression": "group4"}},
        "down": {"input": rgb_in, "ops": [BLUR, {"op": "downsample", "factor": 2}]},
        "down_turned": {"input": rgb_in, "ops": [*TURNED, {"op": "downsample", "factor": 2}]},
        # levels as pages (GDAL's layout), and as SubIFDs from a job of batches
        "pyr_pages": {"input": rgb_in, "ops": TURNED, "output_options": PYRAMID},
        "pyr_subifds": {"input": rgb_in, "ops": TURNED, "fuse": False,
                        "output_options": {"pyramid": True}},
        "pyr_off": {"input": rgb_in, "ops": TURNED,
                    "output_options": {**PYRAMID, "masks": False}},
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": {"tile": 128, "output_options": {"tile": 64}},
        "jobs": [{**job, "output": str(root / "out" / f"{name}.tif")}
                 for name, job in jobs.items()]}))
    # units of two processing tiles, run as a Map: a page's mask is several segments
    report, err = run_in_units(manifest, 2 * 128 * 128, "--workers", "2", "--keep-work",
                               "--work", str(root / "work"))
    return {"root": root, "jobs": dict(zip(jobs, report["jobs"], strict=True)), "stderr": err}


def gdal_mask(path: str) -> tuple[np.ndarray, list[list[MaskFlags]]]:
    """The dataset's mask as GDAL reads it (0 or 255), and each band's mask flags."""
    with rasterio.open(path) as ds:
        return ds.read_masks(1), [list(flags) for flags in ds.mask_flag_enums]


@pytest.mark.parametrize("name", list(MOVES))
def test_gdal_reads_the_inputs_mask_moved_as_the_pixels(runs, name):
    job = runs["jobs"][name]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 1 and job["masks"] == 1
    assert "message" not in job  # nothing left out: the mask is in the output
    want, _ = gdal_mask(job["input"])
    got, flags = gdal_mask(job["output"])
    assert set(np.unique(want)) == {0, 255}
    np.testing.assert_array_equal(got, MOVES[name](want))
    assert all(band == [MaskFlags.per_dataset] for band in flags)


@pytest.mark.parametrize("name", ["rgb", "rgb_batches"])
def test_each_unit_writes_the_mask_of_its_tiles(runs, name):
    """The units (fused, or split units of a job of batches) each wrote their tiles' mask
    segment, which merge laid out as one page (above: GDAL reads it whole)."""
    job = runs["jobs"][name]["job"]
    found = list(runs["root"].glob(f"work/**/jobs/{job:05d}/out-0000-u*_mask.seg"))
    assert len(found) >= 2


@pytest.mark.parametrize(("name", "off"), [("rgb", "rgb_off"), ("rgb_batches", "rgb_off"),
                                           ("u16", "u16_off")])
def test_the_blur_leaves_the_masked_out_pixels_out_and_the_job_without_the_mask_not(runs, name,
                                                                                    off):
    """The mask goes through the geometric ops only, and the blur before them reads it
    (``gaussian_blur`` of the valid pixels alone): the masked-out pixels keep the input's
    fill, moved; a pixel whose blur window holds none of them is the same as in the job told
    to leave masks out (``output_options.masks`` false), which writes the image alone, which
    GDAL reads as all valid, as before, and whose blur mixes the fill into the data near the
    mask's edge, where the two differ."""
    with tifffile.TiffFile(runs["jobs"][name]["output"]) as tf:
        assert len(tf.pages) == 2
        pixels = tf.pages[0].asarray()
    with tifffile.TiffFile(runs["jobs"][off]["output"]) as tf:
        assert len(tf.pages) == 1
        plain = tf.pages[0].asarray()
    mask, _ = gdal_mask(runs["jobs"][name]["input"])
    move = MOVES[name]
    page, valid = move(tifffile.imread(runs["jobs"][name]["input"])), move(mask) > 0
    k = 2 * (6 if pixels.dtype == np.uint8 else 8) + 1  # (the window of sigma 2)
    whole = move(cv2.erode(mask, np.ones((k, k), np.uint8))) > 0
    np.testing.assert_array_equal(pixels[~valid], page[~valid])
    np.testing.assert_array_equal(pixels[whole], plain[whole])
    assert (pixels != plain)[valid & ~whole].any()
    assert gdal_mask(runs["jobs"][off]["output"])[1][0] == [MaskFlags.all_valid]
    assert "masks" not in runs["jobs"][off]
    assert "output_options.masks is false" in runs["jobs"][off]["message"]


#: the tags of a mask page that say how it is cut (tiles or strips: GDAL cuts the mask as
#: its image, and tiffpipe's output pages are tiled, or a small one a strip) and where
WHERE = {273, 278, 279, 322, 323, 324, 325}


@pytest.mark.parametrize("name", ["rgb", "u16", "small", "bilevel", "down"])
def test_the_mask_page_is_laid_out_as_gdal_lays_out_its_own(runs, name):
    """The page right after its image: NewSubfileType 4, Photometric MASK, one 1-bit sample,
    deflate, tiled as the image page (or one strip, as it is), none of GDAL's tags missing
    but those whose value is TIFF's default (PlanarConfiguration 1, ...; BitsPerSample 1 is
    there, as GDAL writes it), no other tag (no resolution, software or description)."""
    job = runs["jobs"][name]
    with tifffile.TiffFile(job["input"]) as tf:
        gdal = {t.code for t in tf.pages[1].tags}
    with tifffile.TiffFile(job["output"]) as tf:
        image, mask = tf.pages
        tags = {t.code: t.value for t in mask.tags}
        assert (int(mask.subfiletype), int(mask.photometric), int(mask.compression)) == (4, 4, 8)
        assert (mask.samplesperpixel, mask.bitspersample, mask.shape) == (1, 1, image.shape[:2])
        assert set(tags) - WHERE <= gdal - WHERE
        assert gdal - set(tags) - WHERE <= {284, 317, 339}  # (their defaults)
        assert tags[258] == 1
        assert mask.is_tiled == image.is_tiled
        if image.is_tiled:
            assert (mask.tilewidth, mask.tilelength) == (image.tilewidth, image.tilelength)
        else:  # one strip, as its image
            assert len(mask.dataoffsets) == len(image.dataoffsets) == 1
        if name == "bilevel":  # the image page is group4; its mask stays deflate
            assert int(image.compression) == 4


def reduce_any(valid: np.ndarray, f: int) -> np.ndarray:
    """GDAL's mask of an average overview by ``f`` (checked with GDAL 3.10.3 on masks of
    even sizes, docs/outputs.md): valid where any pixel of the f x f block (those present,
    at an odd edge) is."""
    h, w = valid.shape
    padded = np.zeros((-(-h // f) * f, -(-w // f) * f), bool)
    padded[:h, :w] = valid
    return padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).any(axis=(1, 3))


@pytest.mark.parametrize(("name", "move"), [("down", lambda m: m),
                                            ("down_turned", MOVES["rgb"])])
def test_a_downsample_reduces_the_mask(runs, name, move):
    """The downsampled page's mask: the input's moved as the pixels were, each 2 x 2 block
    valid where any of its pixels is (the rows and columns past the last block dropped, as
    the downsample drops them)."""
    job = runs["jobs"][name]
    assert job["status"] == "SUCCEEDED" and job["masks"] == 1 and "message" not in job
    want = move(gdal_mask(job["input"])[0] > 0)
    h, w = want.shape[0] // 2 * 2, want.shape[1] // 2 * 2
    got, flags = gdal_mask(job["output"])
    np.testing.assert_array_equal(got > 0, reduce_any(want[:h, :w], 2))
    assert flags[0] == [MaskFlags.per_dataset]


def test_a_downsample_after_the_geometric_ops_averages_the_valid_pixels_as_gdal_does(runs):
    """The turned job's output (blurred, rotated, cropped, with its mask) is what its
    downsample gets: GDAL's average of it (valid pixels only, 0 where a block has none) is
    the downsampled job's output, each mask read moved and reduced per tile."""
    want, valid = gdal_average(runs["jobs"]["rgb"]["output"], 2)
    with rasterio.open(runs["jobs"]["down_turned"]["output"]) as ds:
        got = np.moveaxis(ds.read(), 0, -1)
        np.testing.assert_array_equal(ds.read_masks(1) > 0, reduce_any(valid, 2))
    np.testing.assert_array_equal(got, want)
    assert (got[~reduce_any(valid, 2)] == 0).all()
    # the plain mean of each block (the fill mixed in) differs where a block is part valid
    with rasterio.open(runs["jobs"]["rgb"]["output"]) as ds:
        page = np.moveaxis(ds.read(), 0, -1)
    h, w = got.shape[:2]
    plain = cv2.resize(page[:2 * h, :2 * w], (w, h), interpolation=cv2.INTER_AREA)
    edge, inside = reduce_any(valid, 2) & reduce_any(~valid, 2), ~reduce_any(~valid, 2)
    assert (plain != got)[edge].any() and (plain == got)[inside].all()


#: downsample jobs on masked inputs of odd sizes: (input, factor, fuse)
DOWN = {"u8_f2": ("u8", 2, True), "u8_f3_batches": ("u8", 3, False),
        "u16_f3": ("u16", 3, True), "u16_f2_batches": ("u16", 2, False),
        "f32_f2_batches": ("f32", 2, False), "f32_f3": ("f32", 3, True)}


@pytest.fixture(scope="module")
def down_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Masked GeoTIFFs written by GDAL (RGB uint8 in tiles, uint16 in strips, float32 in
    tiles; odd sizes: blocks past the last whole one dropped), downsampled by 2 and 3 in
    units of two tiles, fused and in batches; the uint8 one also with ``"masks": false``."""
    root = tmp_path_factory.mktemp("down")
    base, valid = collar(301, 407, 4)
    rgb = np.stack([base, base * 0.8, base * 0.6], -1).clip(0, 255).astype(np.uint8)
    rgb[~valid] = 0
    gdal_masked(root / "u8.tif", rgb, valid, block=128)
    base, valid = collar(250, 333, 5)
    u16 = (base * 300).astype(np.uint16)
    u16[~valid] = 65535  # a fill that is no no-data value: the mask alone says it
    gdal_masked(root / "u16.tif", u16, valid, block=None)
    base, valid = collar(211, 262, 6)
    gdal_masked(root / "f32.tif", np.where(valid, base / 7, -1e6).astype(np.float32), valid,
                block=64)
    jobs = {name: {"input": str(root / f"{src}.tif"), "tile": 64 * f, "fuse": fuse,
                   "ops": [{"op": "downsample", "factor": f}]}
            for name, (src, f, fuse) in DOWN.items()}
    jobs["u8_f2_off"] = {**jobs["u8_f2"], "output_options": {"tile": 32, "masks": False}}
    return run_named_jobs(root, jobs, {"output_options": {"tile": 32}}, 2 * 192 * 192,
                          "--workers", "2")


@pytest.mark.parametrize("name", list(DOWN))
def test_a_downsample_of_a_masked_page_is_gdals_average(down_runs, name):
    """Each output pixel is GDAL's average resampling of the input (rasterio's read with
    ``out_shape``, as ``gdal_translate -r average``): the rounded mean of the valid pixels
    of its block, 0 where none is; its mask valid where any is. Tiles, units and batches
    change nothing: it is GDAL's whole-page result, bit for bit."""
    job, (_, f, _) = down_runs[name], DOWN[name]
    assert job["status"] == "SUCCEEDED" and job["masks"] == 1 and "message" not in job
    want, valid = gdal_average(job["input"], f)
    with rasterio.open(job["output"]) as ds:
        got = np.moveaxis(ds.read(), 0, -1)
        np.testing.assert_array_equal(ds.read_masks(1) > 0, reduce_any(valid, f))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    edge = reduce_any(valid, f) & reduce_any(~valid, f)
    assert edge.sum() > 50  # blocks part valid: there the fill would have been mixed in


def test_a_downsample_without_the_mask_is_the_plain_mean_as_before(down_runs):
    """``"masks": false``: no mask carried, every pixel is data, the output is
    ``cv2.resize(..., INTER_AREA)`` of the page as before (the fill mixed in at the edge)."""
    with rasterio.open(down_runs["u8_f2_off"]["output"]) as ds:
        got = np.moveaxis(ds.read(), 0, -1)
        assert list(ds.mask_flag_enums[0]) == [MaskFlags.all_valid]
    page = tifffile.imread(down_runs["u8_f2_off"]["input"], key=0)
    h, w = got.shape[:2]
    want = cv2.resize(page[:2 * h, :2 * w], (w, h), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got, want)
    assert (got != gdal_average(down_runs["u8_f2"]["input"], 2)[0]).any()


@pytest.mark.parametrize("name", ["pyr_pages", "pyr_subifds"])
def test_gdal_reads_each_overviews_mask_reduced_from_the_pages(runs, name):
    """GDAL's overviews are the levels (as pages, or SubIFDs), each with its mask: the
    output page's mask (the input's, moved) reduced as GDAL reduces one."""
    job = runs["jobs"][name]
    assert job["status"] == "SUCCEEDED" and job["masks"] == 1 and "message" not in job
    page = MOVES["rgb"](gdal_mask(job["input"])[0] > 0)
    np.testing.assert_array_equal(gdal_mask(job["output"])[0] > 0, page)
    with rasterio.open(job["output"]) as ds:
        assert ds.overviews(1) == [2, 4, 8]  # 400 x 250 -> 200 x 125, 100 x 63, 50 x 32
    for k, factor in enumerate([2, 4, 8]):
        with rasterio.open(job["output"], overview_level=k) as ds:
            assert list(ds.mask_flag_enums[0]) == [MaskFlags.per_dataset]
            np.testing.assert_array_equal(ds.read_masks(1) > 0, reduce_any(page, factor))


def test_the_levels_pixels_leave_the_masked_out_pixels_out_as_gdal_does(runs, tmp_path):
    """GDAL's own average overview of the output page with its mask (``gdaladdo -r
    average``) is the level: the same mask, the same pixels (the mean of the valid pixels of
    each block, 0 where none is), not the mean of the collar's fill and the data."""
    from rasterio.enums import Resampling
    from rasterio.env import Env

    job = runs["jobs"]["pyr_pages"]
    with rasterio.open(job["output"]) as ds:
        pixels, valid = ds.read(), ds.read_masks(1) > 0
    gdal = tmp_path / "gdal.tif"
    gdal_masked(gdal, np.moveaxis(pixels, 0, -1), valid, block=64)
    with Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(gdal, "r+") as ds:
        ds.build_overviews([2], Resampling.average)
    with rasterio.open(gdal, overview_level=0) as want, \
            rasterio.open(job["output"], overview_level=0) as got:
        mask, level = got.read_masks(1), got.read()
        np.testing.assert_array_equal(mask, want.read_masks(1))
        np.testing.assert_array_equal(level, want.read())
    assert (level[:, mask == 0] == 0).all()
    # the same job without the mask averages the fill in: the levels differ at the collar
    with rasterio.open(runs["jobs"]["pyr_off"]["output"], overview_level=0) as off:
        assert (off.read() != level).any()


@pytest.mark.parametrize(("name", "chain"), [
    ("pyr_pages", [(0, 2), (4, 4), (1, 2), (5, 4), (1, 2), (5, 4), (1, 2), (5, 4)]),
    ("pyr_subifds", [(0, 2), (4, 4), (5, 4), (5, 4), (5, 4)])])
def test_the_levels_masks_are_laid_out_as_gdal_lays_out_a_cogs(runs, name, chain):
    """Each level's mask (NewSubfileType 5, Photometric MASK, 1-bit, deflate, tiled as its
    level, no resolution) right after the level page, as a COG has it; with SubIFD levels,
    after the page's mask in the main chain, where GDAL finds them too (above)."""
    with tifffile.TiffFile(runs["jobs"][name]["output"]) as tf:
        pages = list(tf.pages)
        assert [(int(p.subfiletype), int(p.photometric)) for p in pages] == chain
        levels = [p for p in pages if int(p.subfiletype) == 1] or list(pages[0].pages)
        masks = [p for p in pages if int(p.subfiletype) == 5]
        assert len(levels) == len(masks) == 3
        for level, mask in zip(levels, masks, strict=True):
            assert mask.shape == level.shape[:2] and mask.bitspersample == 1
            assert int(mask.compression) == 8 and mask.tilewidth == level.tilewidth == 64
            assert not {282, 283, 296} & {t.code for t in mask.tags}


def test_a_job_that_leaves_masks_out_has_the_pyramid_as_before(runs):
    job = runs["jobs"]["pyr_off"]
    assert "masks" not in job and "output_options.masks is false" in job["message"]
    with tifffile.TiffFile(job["output"]) as tf:
        assert [int(p.subfiletype) for p in tf.pages] == [0, 1, 1, 1]
    for k in range(3):
        with rasterio.open(job["output"], overview_level=k) as ds:
            assert list(ds.mask_flag_enums[0]) == [MaskFlags.all_valid]


#: the jobs whose output carries the mask, and its 1-bit pages (masks; the bilevel job's
#: image page too)
ONE_BIT = {"rgb": 1, "rgb_batches": 1, "u16": 1, "small": 1, "bilevel": 2, "down": 1,
           "down_turned": 1, "pyr_pages": 4, "pyr_subifds": 4}


@pytest.mark.parametrize("name", list(ONE_BIT))
def test_every_1bit_page_states_its_bits_per_sample(runs, name):
    """Each mask (the page's, its levels') and the bilevel image page has BitsPerSample 1
    (SHORT, count 1), which tifffile writes on no 1-bit page, the entries in ascending
    order, and libtiff reads it as tifffile does; the pages without a mask carry none."""
    assert one_bit_pages_state_their_bits(runs["jobs"][name]["output"]) == ONE_BIT[name]
    off = name.split("_")[0] + "_off"
    if off in runs["jobs"]:
        assert one_bit_pages_state_their_bits(runs["jobs"][off]["output"]) == 0


@pytest.mark.parametrize("name", ["rgb", "pyr_pages", "pyr_subifds"])
def test_only_the_1bit_pages_gain_bits_per_sample(runs, name, tmp_path, monkeypatch):
    """The output merged again as before (tifffile's layout of a mask page: no
    BitsPerSample) against the output: every page that is not 1-bit has the same tags but
    where its data is, and the same tile bytes; each mask the same, and BitsPerSample 1."""
    from pipeline.adapters.segments import compose
    from pipeline.adapters.tile_codec import MASK_WRITER_KWARGS
    from pipeline.steps import layout
    from pipeline.steps import merge as merge_mod
    from pipeline.steps.common import forget_plans, load_plan

    forget_plans()
    job = runs["jobs"][name]
    plan = load_plan(layout.plan_file(layout.job_dir(str(runs["root"] / "work"), job["job"])))
    monkeypatch.setattr(merge_mod, "MASK_WRITER_KWARGS", {
        k: v for k, v in MASK_WRITER_KWARGS.items() if k != "extratags"})
    monkeypatch.setattr(merge_mod, "state_bits_per_sample", lambda recorder, ifd: None)
    before = tmp_path / "before.tif"
    compose(merge_mod.output_pieces(plan), str(before))
    new, old = tiff_pages(job["output"]), tiff_pages(str(before))
    assert [bits for bits, _, _ in new] == [bits for bits, _, _ in old]
    assert sum(bits == 1 for bits, _, _ in new) == ONE_BIT[name]
    for (bits, tags, tiles), (_, tags_before, tiles_before) in zip(new, old, strict=True):
        assert tiles == tiles_before
        if bits == 1:
            assert tags.pop(258) == (3, 1, 1) and 258 not in tags_before
        assert tags == tags_before


def test_openslide_opens_a_masked_pyramid_of_pages(runs):
    """OpenSlide (its generic-tiff reader) opens the levels-as-pages output of a masked page:
    before, it failed on the mask pages ("Cannot get required TIFF tag: 258"). It takes
    every tiled page marked reduced-resolution for a level, the level masks too (NewSubfileType
    5), as it does a GDAL COG's: the page, then each level and its mask (the page's own mask,
    NewSubfileType 4, is none); the image levels read as tifffile reads them."""
    import openslide  # in the dev extra

    path = runs["jobs"]["pyr_pages"]["output"]
    with tifffile.TiffFile(path) as tf:
        pages = [p.asarray() for p in tf.pages]
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_dimensions == ((250, 400), (125, 200), (125, 200), (63, 100),
                                          (63, 100), (32, 50), (32, 50))
        for level, page in [(0, 0), (1, 2), (3, 4), (5, 6)]:
            width, height = slide.level_dimensions[level]
            rgba = np.asarray(slide.read_region((0, 0), level, (width, height)))
            np.testing.assert_array_equal(rgba[..., :3], pages[page], err_msg=f"level {level}")



@pytest.fixture(scope="module")
def thumb_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A job on a file of two masked pages with a thumbnail between them: an image of its own
    (other samples than the page before it: not its overview), kept marked reduced-resolution
    (NewSubfileType 1), as an Aperio label is."""
    root = tmp_path_factory.mktemp("thumb")
    _, valid = collar(48, 64, 4)
    gray = (np.arange(48 * 64) % 251).reshape(48, 64).astype(np.uint8)
    thumb = np.full((12, 16, 3), (200, 100, 50), np.uint8)
    with tifffile.TiffWriter(root / "in.tif") as tw:
        tw.write(gray, tile=(16, 16), compression="zlib")
        tw.write(valid, compression="zlib", subfiletype=4)
        tw.write(thumb, compression="zlib", subfiletype=1)
        tw.write(gray[::-1], tile=(16, 16), compression="zlib")
        tw.write(valid[::-1], compression="zlib", subfiletype=4)
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(root / "in.tif"), "output": str(root / "out.tif"), "tile": 64,
        "output_options": {"tile": 16}}]}))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["run", str(manifest), "--workers", "2"])
    report = json.loads((root / "m.report.json").read_text())
    return {"code": code, "report": report, "job": report["jobs"][0], "manifest": manifest,
            "pages": [gray, valid, thumb, gray[::-1], valid[::-1]]}


def test_a_page_kept_marked_reduced_between_masked_pages(thumb_run):
    """merge tells the output's pages apart by what it wrote for each, not by their marks:
    before, it took the thumbnail for a level of the page before it and failed the job
    with an IndexError. Each mask follows its page, the thumbnail stays marked."""
    job = thumb_run["job"]
    assert thumb_run["code"] == 0 and job["status"] == "SUCCEEDED", job
    assert job["pages"] == 3 and job["masks"] == 2 and job["input_pages"] == [0, 2, 3]
    with tifffile.TiffFile(job["output"]) as tf:
        assert [int(p.subfiletype) for p in tf.pages] == [0, 4, 1, 0, 4]
        pages = [p.asarray() for p in tf.pages]
    for got, want in zip(pages, thumb_run["pages"], strict=True):
        np.testing.assert_array_equal(got, want)
    assert one_bit_pages_state_their_bits(job["output"]) == 2


def test_the_contact_sheet_draws_a_page_kept_marked_reduced(thumb_run):
    """The contact sheet's row of each input page shows its output page: the thumbnail's
    (file page 2, marked reduced-resolution) and the page after it (file page 3), not the
    one in the other's place (before, it skipped every page marked reduced-resolution)."""
    from pipeline.contact_sheet import sheet_rows
    from pipeline.core.manifest import parse_manifest

    manifest = thumb_run["manifest"]
    specs = parse_manifest(json.loads(manifest.read_text()), str(manifest),
                           str(manifest.parent))
    rows = sheet_rows(thumb_run["report"], specs)
    assert [(row.in_page, row.out_file_page) for row in rows] == [(0, 0), (2, 2), (3, 3)]


# --- multi-page outputs: which page GDAL pairs each mask with -------------------------------

#: the pages of the multi-page inputs (GDAL's own files: each page written after the last,
#: its mask after it): (height, width, which mask: a turn of the collar's, None for none)
MULTI = {
    "same": [(192, 256, 0), (192, 256, 1), (192, 256, 2)],
    "sizes": [(192, 256, 0), (120, 80, 1), (192, 256, 2)],
    # a first page without mask, then one of its size, and one of its second level's size
    "bare": [(192, 256, None), (192, 256, 1), (96, 128, 2)],
}
#: the jobs (input, pages, output options) on them, all blurred and flipped (FLIPPED)
MULTI_JOBS = {
    "same": ("same", None, {}),
    "same_pyr": ("same", None, {"pyramid": True}),
    "sizes": ("sizes", None, {}),
    "sizes_pyr": ("sizes", None, {"pyramid": True}),
    "first_and_last_pyr": ("same", [0, 4], {"pyramid": True}),  # file page 2 left out
    "later_pyr": ("same", [2, 4], {"pyramid": True}),  # page 0 left out
    "bare": ("bare", None, {}),
    "bare_pyr": ("bare", None, {"pyramid": True}),
    "bare_small": ("bare", [0, 3], {}),  # (no levels: nothing of page 0's size)
    "bare_small_pyr": ("bare", [0, 3], {"pyramid": True}),
    "bare_off": ("bare", None, {"pyramid": True, "masks": False}),
}
REFUSED = {"bare", "bare_pyr", "bare_small_pyr"}


def turned_collar(h: int, w: int, turn: int) -> np.ndarray:
    """A valid area of its own for each page: the collar's, flipped ``turn`` ways."""
    valid = collar(h, w, 5)[1]
    return [valid, valid[::-1], valid[::-1, ::-1]][turn]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multi")
    masks: dict[str, dict[int, np.ndarray | None]] = {}  # file page -> its mask
    for name, pages in MULTI.items():
        masks[name], file_page = {}, 0
        for k, (h, w, turn) in enumerate(pages):
            valid = None if turn is None else turned_collar(h, w, turn)
            pixels = (collar(h, w, k)[0] * (k + 1) % 200).astype(np.uint8)
            gdal_masked(root / f"{name}.tif", pixels, valid, block=64, append=k > 0)
            masks[name][file_page] = valid
            file_page += 1 if valid is None else 2
    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": {"tile": 128, "ops": FLIPPED, "output_options": {"tile": 32}},
        "jobs": [{"input": str(root / f"{src}.tif"), "output": str(root / "out" / f"{name}.tif"),
                  **({"pages": pages} if pages else {}),
                  "output_options": {"tile": 32, **options}}
                 for name, (src, pages, options) in MULTI_JOBS.items()]}))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["run", str(manifest), "--workers", "2"])
    report = json.loads((root / "m.report.json").read_text())
    return {"code": code, "jobs": dict(zip(MULTI_JOBS, report["jobs"], strict=True)),
            "masks": masks}


def moved_masks(multi_run: dict[str, Any], name: str) -> list[np.ndarray | None]:
    """The masks of the job's output pages: their input pages', flipped as the pixels."""
    masks = multi_run["masks"][MULTI_JOBS[name][0]]
    return [None if masks[i] is None else masks[i][:, ::-1]
            for i in multi_run["jobs"][name]["input_pages"]]


def subdatasets(path: str) -> list[str]:
    """The file's GTIFF_DIR subdatasets in file order (rasterio sorts them as text)."""
    with rasterio.open(path) as ds:
        return sorted(ds.subdatasets, key=lambda name: int(name.split(":")[1]))


OK = [name for name in MULTI_JOBS if name not in REFUSED]


@pytest.mark.parametrize("name", OK)
def test_gdal_pairs_the_first_page_and_its_overviews_with_their_own_masks(multi_run, name):
    """GDAL applies a mask to the file opened as a whole (its first page): the first output
    page's own, and each overview's the page's reduced (read by ``overview_level`` and by a
    reduced read of the page's mask), never a later page's, whatever the later pages' sizes
    and masks and the pages a job leaves out; as it reads GDAL's own input file (where its
    first page has a mask: below)."""
    job = multi_run["jobs"][name]
    assert job["status"] == "SUCCEEDED", job
    first = moved_masks(multi_run, name)[0]
    pyramid = MULTI_JOBS[name][2].get("pyramid") and MULTI_JOBS[name][2].get("masks", True)
    with rasterio.open(job["output"]) as ds:
        got, flags, factors = ds.read_masks(1) > 0, list(ds.mask_flag_enums[0]), ds.overviews(1)
        reduced = [ds.read_masks(1, out_shape=reduce_any(got, f).shape) > 0 for f in factors]
    if first is None:  # (or masks left out)
        assert flags == [MaskFlags.all_valid] and got.all()
    else:
        assert flags == [MaskFlags.per_dataset]
        np.testing.assert_array_equal(got, first)
    assert factors == ([2, 4, 8] if pyramid or name == "bare_off" else [])
    for k, factor in enumerate(factors):
        with rasterio.open(job["output"], overview_level=k) as ov:
            want = np.ones(ov.shape, bool) if first is None else reduce_any(first, factor)
            assert list(ov.mask_flag_enums[0]) == flags
            np.testing.assert_array_equal(ov.read_masks(1) > 0, want)
            np.testing.assert_array_equal(reduced[k], want)
    valid = multi_run["masks"][MULTI_JOBS[name][0]][0]
    if valid is not None:  # GDAL reads the input's first page with its own mask (not "bare")
        with rasterio.open(job["input"]) as ds:
            np.testing.assert_array_equal(ds.read_masks(1) > 0, valid)


@pytest.mark.parametrize("name", [name for name in OK if name != "bare_off"])
def test_each_page_is_followed_by_its_own_mask_and_its_levels_masks(multi_run, name):
    """In the main chain each image page is followed by its mask (NewSubfileType 4), the
    input page's moved, then (SubIFD levels) its levels' masks (5), the mask reduced: as
    GDAL writes a multi-page file (image, mask, image, mask, ...: the input)."""
    job, masks = multi_run["jobs"][name], moved_masks(multi_run, name)
    with tifffile.TiffFile(job["output"]) as tf:  # (subfiletype, pixels, its SubIFD levels)
        pages = [(int(p.subfiletype), p.asarray(), len(p.pages or [])) for p in tf.pages]
    images = [i for i, (kind, _, _) in enumerate(pages) if kind == 0]
    assert len(images) == len(masks) == job["pages"]
    for i, end, mask in zip(images, images[1:] + [len(pages)], masks, strict=True):
        after = pages[i + 1:end]
        if mask is None:
            assert after == []
            continue
        assert [kind for kind, _, _ in after] == [4] + [5] * pages[i][2]
        np.testing.assert_array_equal(after[0][1] > 0, mask)
        for k, (_, level, _) in enumerate(after[1:], 1):
            np.testing.assert_array_equal(level > 0, reduce_any(mask, 2 ** k))
    if name == "same":
        with tifffile.TiffFile(job["input"]) as tf:
            assert [int(p.subfiletype) for p in tf.pages] == [0, 4, 0, 4, 0, 4]
        assert [kind for kind, _, _ in pages] == [0, 4, 0, 4, 0, 4]


@pytest.mark.parametrize("name", ["same", "same_pyr", "sizes_pyr"])
def test_gdal_applies_no_mask_to_a_later_page_in_its_own_files_either(multi_run, name):
    """GDAL 3.10 opens a page by its subdataset (``GTIFF_DIR:n``) alone: all valid, its
    overviews (the page's SubIFD levels) too, though its mask follows it; it reads the
    input it wrote itself the same way, so a later page's mask is there for the readers
    that take the next page for it (tifffile, tiffpipe), not for GDAL."""
    job = multi_run["jobs"][name]
    for path in (job["output"], job["input"]):
        names = subdatasets(path)
        assert len(names) == 3
        for sub in names:
            with rasterio.open(sub) as ds:
                assert list(ds.mask_flag_enums[0]) == [MaskFlags.all_valid]
                assert (ds.read_masks(1) == 255).all()
                for k in range(len(ds.overviews(1))):
                    with rasterio.open(sub, overview_level=k) as ov:
                        assert list(ov.mask_flag_enums[0]) == [MaskFlags.all_valid]


def test_a_first_page_without_mask_before_a_masked_one_gdal_would_pair_is_refused(multi_run):
    """GDAL takes the first page's mask from any mask page of its size, and each overview's
    from any level mask of its size: with a first page that has no mask, the input as GDAL
    reads it shows page 1's mask on page 0, and an output would show it there (page 1 of
    its size), or another page's level masks on its overviews (page 3, a quarter of it):
    PlanJob refuses such jobs, saying what to write instead. A later mask GDAL would not
    take (no levels, another size) and a job that leaves masks out run."""
    jobs, masks = multi_run["jobs"], multi_run["masks"]["bare"]
    assert multi_run["code"] == 1
    assert {name for name, job in jobs.items() if job["status"] != "SUCCEEDED"} == REFUSED
    with rasterio.open(jobs["bare"]["input"]) as ds:  # GDAL's own file, misread alike
        np.testing.assert_array_equal(ds.read_masks(1) > 0, masks[1])
    for name in REFUSED:
        message = jobs[name]["error"]["message"]
        assert message.startswith(f"{jobs[name]['input']}: the job cannot run: page 0, the "
                                  "output's first page, carries no internal mask, but page")
        assert '"pages": [n]' in message and '"masks": false' in message, message
        assert not Path(jobs[name]["output"]).exists()
    assert "pages 1, 3 carry masks" in jobs["bare_pyr"]["error"]["message"]
    assert "page 3 carries one" in jobs["bare_small_pyr"]["error"]["message"]
    assert jobs["bare_small"]["masks"] == 1 and "masks" not in jobs["bare_off"]
