"""A GeoTIFF's internal mask (GDAL's valid-data mask: the 1-bit page after the image) carried
into the output: the inputs are written by GDAL itself (rasterio's ``write_mask`` with
``GDAL_TIFF_INTERNAL_MASK``), go through one ``tiffpipe run`` blurred and rotated, flipped or
cropped, and the outputs are read back by GDAL (rasterio): its mask is the input's moved as
the pixels were, the pixels are those of the same job without the mask, and the mask page is
laid out as GDAL lays out its own. A ``downsample`` still leaves the mask out, and says so.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import gdal_masked
from rasterio.enums import MaskFlags

from pipeline import cli
from pipeline.core import plan as plan_mod

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
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": {"tile": 128, "output_options": {"tile": 64}},
        "jobs": [{**job, "output": str(root / "out" / f"{name}.tif")}
                 for name, job in jobs.items()]}))
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(err):
        # units of two processing tiles, run as a Map: a page's mask is several segments
        mp.setattr(plan_mod, "SINGLE_TASK_JOBS", False)
        mp.setattr(plan_mod, "FUSED_UNIT_PIXELS", 2 * 128 * 128)
        mp.setattr(plan_mod, "SPLIT_UNIT_PIXELS", 2 * 128 * 128)
        code = cli.main(["run", str(manifest), "--workers", "2", "--keep-work", "--work",
                         str(root / "work")])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, report
    return {"root": root, "jobs": dict(zip(jobs, report["jobs"], strict=True)),
            "stderr": err.getvalue()}


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
def test_the_pixels_are_those_of_the_job_without_the_mask(runs, name, off):
    """The mask goes through the geometric ops only: the image page is the same, and the
    job told to leave masks out (``output_options.masks`` false) writes it alone, which GDAL
    reads as all valid, as before."""
    with tifffile.TiffFile(runs["jobs"][name]["output"]) as tf:
        assert len(tf.pages) == 2
        pixels = tf.pages[0].asarray()
    with tifffile.TiffFile(runs["jobs"][off]["output"]) as tf:
        assert len(tf.pages) == 1
        np.testing.assert_array_equal(pixels, tf.pages[0].asarray())
    assert gdal_mask(runs["jobs"][off]["output"])[1][0] == [MaskFlags.all_valid]
    assert "masks" not in runs["jobs"][off]
    assert "output_options.masks is false" in runs["jobs"][off]["message"]


#: the tags of a mask page that say how it is cut (tiles or strips: GDAL cuts the mask as
#: its image, and tiffpipe's output pages are tiled, or a small one a strip) and where
WHERE = {273, 278, 279, 322, 323, 324, 325}


@pytest.mark.parametrize("name", ["rgb", "u16", "small", "bilevel"])
def test_the_mask_page_is_laid_out_as_gdal_lays_out_its_own(runs, name):
    """The page right after its image: NewSubfileType 4, Photometric MASK, one 1-bit sample,
    deflate, tiled as the image page (or one strip, as it is), none of GDAL's tags missing
    but those whose value is TIFF's default (BitsPerSample 1, ...), no other tag (no
    resolution, software or description)."""
    job = runs["jobs"][name]
    with tifffile.TiffFile(job["input"]) as tf:
        gdal = {t.code for t in tf.pages[1].tags}
    with tifffile.TiffFile(job["output"]) as tf:
        image, mask = tf.pages
        tags = {t.code: t.value for t in mask.tags}
        assert (int(mask.subfiletype), int(mask.photometric), int(mask.compression)) == (4, 4, 8)
        assert (mask.samplesperpixel, mask.bitspersample, mask.shape) == (1, 1, image.shape[:2])
        assert set(tags) - WHERE <= gdal - WHERE
        assert gdal - set(tags) - WHERE <= {258, 284, 317, 339}  # (their defaults)
        assert mask.is_tiled == image.is_tiled
        if image.is_tiled:
            assert (mask.tilewidth, mask.tilelength) == (image.tilewidth, image.tilelength)
        else:  # one strip, as its image
            assert len(mask.dataoffsets) == len(image.dataoffsets) == 1
        if name == "bilevel":  # the image page is group4; its mask stays deflate
            assert int(image.compression) == 4


def test_a_downsample_leaves_the_mask_out_and_says_why(runs):
    job = runs["jobs"]["down"]
    assert job["status"] == "SUCCEEDED" and "masks" not in job
    with tifffile.TiffFile(job["output"]) as tf:
        assert len(tf.pages) == 1
    assert gdal_mask(job["output"])[1][0] == [MaskFlags.all_valid]
    assert job["message"] == (
        "page 1 left out: the transparency mask of page 0 (NewSubfileType bit 2, Photometric "
        "MASK), not an image: the output has no mask (downsample makes a smaller page, for "
        "which no reduced mask is made), its masked-out area is data like any other")
