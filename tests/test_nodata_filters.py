"""The filters of a GeoTIFF with no-data or a mask: ``gaussian_blur`` and ``unsharp_mask``
read the valid samples alone (normalized convolution, as astropy's ``convolve`` of NaN: each
valid output sample is ``sum(w v x) / sum(w v)``), ``dilate`` and ``erode`` take the maximum
and minimum of the valid samples alone; all keep the no-data (masked-out) pixels as they are
and GDAL_NODATA on the output. Real GeoTIFFs (uint8, uint16 bands, float32 NaN written by
tifffile; a masked one by GDAL) go through one ``tiffpipe run`` in small tiles, fused and in
batches; the outputs are compared with a whole-page numpy reference written out below, not
with tiffpipe's functions, and with the same op on the whole page, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import gdal_masked, reference_blur, run_in_units

from pipeline import estimate as est
from pipeline.core import op_functions as fn
from pipeline.estimate.model import local_peaks

pytestmark = pytest.mark.timeout(240)

GDAL_NODATA = 42113
BLUR = {"op": "gaussian_blur", "sigma": 2.0}
SHARPEN = {"op": "unsharp_mask", "sigma": 1.5, "amount": 1.5}
DILATE = {"op": "dilate", "ksize": 5, "iterations": 2}
ERODE = {"op": "erode", "ksize": 3, "iterations": 1}
CANNY = {"op": "canny", "low": 15, "high": 45, "sigma": 1.5}


def scene(h: int, w: int, bands: int, dtype: str, seed: int) -> np.ndarray:
    """A smooth ramp with noise and bright and dark patches: data values well inside the
    type (1 and up for integers), so that only the no-data value written after is one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + yy / 4 + xx / 5 + rng.normal(0, 6, (bands, h, w))
    img[:, 150:190, 200:260] = 230  # bright, next to no-data: the fill would darken it
    img[:, 190:200, 200:260] = 3  # dark next to bright: unsharp_mask sends it below 0
    img = np.moveaxis(img, 0, -1) if bands > 1 else img[0]
    if dtype == "uint16":
        img = img * 200
    return np.clip(img, 1, None).astype(dtype)


def no_data_area(h: int, w: int) -> np.ndarray:
    """Where a scene has no data: a slanted swath edge, a hole, a corner block (their edges
    at odd rows and columns, across the tiles' borders)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = xx < yy // 3 + 9
    out[101:133, 61:97] = True
    out[200:, 261:] = True
    return out


def reference_extreme(page: np.ndarray, reach: int, valid: np.ndarray,
                      largest: bool) -> np.ndarray:
    """The maximum (``largest``) or minimum of the valid samples of each (2 reach + 1)-wide
    window, clipped at the border (``iterations`` windows of ``ksize``: reach
    ``(ksize // 2) * iterations``), band by band; the invalid samples as they are."""
    if page.dtype.kind == "f":
        lose = -np.inf if largest else np.inf
    else:
        lose = np.iinfo(page.dtype).min if largest else np.iinfo(page.dtype).max
    planes = np.where(valid, page, lose).reshape(*page.shape[:2], -1)
    out = np.empty_like(planes)
    for c in range(planes.shape[2]):
        windows = np.lib.stride_tricks.sliding_window_view(
            np.pad(planes[:, :, c], reach, constant_values=lose), (2 * reach + 1,) * 2)
        out[:, :, c] = windows.max(axis=(-2, -1)) if largest else windows.min(axis=(-2, -1))
    return np.where(valid, out.reshape(page.shape), page)


def nodata_tag(text: str) -> tuple[int, str, int, str, bool]:
    return (GDAL_NODATA, "s", 0, text, True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("nodata_filters")
    h, w = 300, 410
    none = no_data_area(h, w)
    u8 = scene(h, w, 1, "uint8", 1)
    u8[none] = 0
    u16 = scene(h, w, 3, "uint16", 2)
    u16[none] = 0
    u16[40:70, 300:340, 1] = 0  # no data in one band only: validity is per sample
    f32 = scene(h, w, 1, "float32", 3) / 7
    f32[none] = np.nan
    inputs = {"u8": (u8, "0", (64, 64)), "u16": (u16, "0", None),
              "f32": (f32, "nan", (64, 64)), "plain": (u8, None, (64, 64))}
    pages = {}
    for name, (img, text, tile) in inputs.items():
        tags = [] if text is None else [nodata_tag(text)]
        layout = {"tile": tile} if tile else {"rowsperstrip": 16}
        tifffile.imwrite(root / f"{name}.tif", img, photometric="minisblack",
                         planarconfig="contig", compression="zlib", metadata=None,
                         extratags=tags, **layout)
        pages[name] = img
    # a mask written by GDAL: the masked-out pixels hold a fill that is no no-data value
    masked = scene(h, w, 1, "uint8", 4)
    masked[none] = 255
    gdal_masked(root / "masked.tif", masked, ~none, block=128)
    pages["masked"] = masked
    jobs = {
        "u8": ("u8", [BLUR], True), "u8_batches": ("u8", [BLUR], False),
        "u16_sharpen": ("u16", [SHARPEN], False), "f32": ("f32", [{**BLUR, "sigma": 1.5}], True),
        "masked": ("masked", [BLUR], True), "plain": ("plain", [BLUR], True),
        "plain_sharpen": ("plain", [SHARPEN], False),
        "u8_dilate": ("u8", [DILATE], False), "u16_erode": ("u16", [ERODE], True),
        "masked_erode": ("masked", [ERODE], True), "plain_dilate": ("plain", [DILATE], True),
        "u8_canny": ("u8", [CANNY], False), "plain_canny": ("plain", [CANNY], True),
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": {"tile": 64, "output_options": {"tile": 32, "compression": "deflate"}},
        "jobs": [{"input": str(root / f"{src}.tif"), "output": str(root / "out" / f"{n}.tif"),
                  "ops": ops, "fuse": fuse} for n, (src, ops, fuse) in jobs.items()]}))
    # units of four tiles, run as a Map: tiles meet no-data edges in units and batches
    run_in_units(manifest, 4 * 64 * 64, "--workers", "1", "--quiet", "--no-contact-sheet")
    return {"pages": pages, "none": none, "jobs": {n: (src, ops) for n, (src, ops, _) in
                                                   jobs.items()},
            "out": {n: root / "out" / f"{n}.tif" for n in jobs}}


def read(path: Path) -> tuple[np.ndarray, str | None]:
    """An output's first page and its GDAL_NODATA text (None: no tag)."""
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags.get(GDAL_NODATA)
        return tf.pages[0].asarray(), None if tag is None else tag.value


def sample_validity(page: np.ndarray, none: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:  # (a mask: per pixel)
        return np.broadcast_to((~none).reshape(none.shape + (1,) * (page.ndim - 2)), page.shape)
    return ~np.isnan(page) if np.isnan(nodata) else page != nodata


@pytest.mark.parametrize("name,nodata", [("u8", 0), ("u8_batches", 0), ("f32", np.nan),
                                         ("masked", None)])
def test_a_blur_of_a_page_with_nodata_is_the_blur_of_its_valid_samples(run, name, nodata):
    """Each valid output sample is the whole-page reference (the blur of the valid samples
    alone); each no-data or masked-out pixel is the input's, exactly; GDAL_NODATA is kept
    (the mask too); a valid pixel next to no-data equals the reference, where a plain blur
    mixes the fill in; and the tiled run is the op on the whole page, bit for bit."""
    src, ops = run["jobs"][name]
    page, none = run["pages"][src], run["none"]
    sigma = ops[0]["sigma"]
    got, tag = read(run["out"][name])
    valid = sample_validity(page, none, nodata)
    want = reference_blur(page, sigma, valid)
    assert got.dtype == page.dtype and got.shape == page.shape
    np.testing.assert_array_equal(got[valid], want[valid])
    np.testing.assert_array_equal(got[~valid], page[~valid])  # (NaN where NaN)
    if nodata is None:
        assert tag is None
        with rasterio.open(run["out"][name]) as ds:
            np.testing.assert_array_equal(ds.read_masks(1) > 0, ~none)
    else:
        assert tag == "0" if nodata == 0 else tag.lower() == "nan"
        assert not np.isnan(got[valid]).any()
    # an edge pixel: valid, its left neighbour no data
    y, x = 150, 59  # (the swath edge at x = 150 // 3 + 9 = 59)
    assert none[y, x - 1] and not none[y, x]
    plain = cv2.GaussianBlur(page, (0, 0), sigma)
    assert got[y, x] == want[y, x] and got[y, x] != plain[y, x]
    whole = fn.gaussian_blur(page, {"sigma": sigma, "input_nodata": nodata,
                                    "input_valid": ~none if nodata is None else None})
    np.testing.assert_array_equal(got, whole)


def test_a_sharpened_page_keeps_its_nodata_and_no_data_pixel_takes_its_value(run):
    """unsharp_mask of uint16 bands with no-data 0 (one band has a hole of its own): the
    sharpening of the valid samples' blur (OpenCV's addWeighted of the reference blur); the
    samples it sends to 0, the no-data value, go to 1; the no-data samples stay 0."""
    page = run["pages"]["u16"]
    got, tag = read(run["out"]["u16_sharpen"])
    valid = page != 0
    a = SHARPEN["amount"]
    want = cv2.addWeighted(page, 1 + a, reference_blur(page, SHARPEN["sigma"], valid), -a, 0)
    assert ((want == 0) & valid).sum() > 20  # (the dark strip by the bright patch)
    want[(want == 0) & valid] = 1
    assert tag == "0"
    np.testing.assert_array_equal(got[valid], want[valid])
    np.testing.assert_array_equal(got[~valid], 0)
    assert not valid[40:70, 300:340, 1].any() and valid[40:70, 300:340, 0].all()


@pytest.mark.parametrize("name,op", [("plain", BLUR), ("plain_sharpen", SHARPEN)])
def test_a_page_without_nodata_is_opencvs_blur_as_before(run, name, op):
    """The same scene without GDAL_NODATA: every pixel is OpenCV's call on the whole page,
    the zeros read as data, bit for bit; no GDAL_NODATA is written."""
    page = run["pages"]["plain"]
    got, tag = read(run["out"][name])
    blur = cv2.GaussianBlur(page, (0, 0), op["sigma"])
    want = blur if op is BLUR else cv2.addWeighted(page, 1 + op["amount"], blur,
                                                   -op["amount"], 0)
    assert tag is None
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name,nodata", [("u8_dilate", 0), ("u16_erode", 0),
                                         ("masked_erode", None)])
def test_dilate_and_erode_of_a_page_with_nodata_take_its_valid_samples_alone(run, name,
                                                                             nodata):
    """The maximum (minimum) of each window's valid samples alone: the no-data area neither
    grows (a dilate of a page with no-data 0 took every data value into it) nor eats the
    data (an erode took 0 into every data pixel by it); no-data and masked-out pixels keep
    their value, GDAL_NODATA is kept; tiles and iterations change nothing."""
    src, (op,) = run["jobs"][name]
    page, none = run["pages"][src], run["none"]
    got, tag = read(run["out"][name])
    valid = sample_validity(page, none, nodata)
    largest = op["op"] == "dilate"
    want = reference_extreme(page, (op["ksize"] // 2) * op["iterations"], valid, largest)
    np.testing.assert_array_equal(got, want)
    assert tag == (None if nodata is None else "0")
    plain = (cv2.dilate if largest else cv2.erode)(
        page, np.ones((op["ksize"],) * 2, np.uint8), iterations=op["iterations"])
    assert (plain != got).any()  # (by the no-data edges, where the fill took part)


#: tiles of each path of dilate and erode: (dtype, bands); int8 through int16, int32 through
#: float64, int64 in numpy (dtypes.window_extreme), float32 with NaN besides its no-data value
TILE_KINDS = [("uint8", 3), ("uint16", 4), ("int8", 1), ("int32", 2), ("int64", 3),
              ("float32", 3)]


def morph_tile(dtype: str, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile cut out of a larger page (not contiguous: a tiled evaluator's crop) with
    no-data 7 in a swath edge, in one band alone in a block, and a mask that leaves out a
    hole and a corner; a float tile has NaN samples too. The tile, and its mask."""
    page = scene(120, 150, bands, dtype, 6)
    page = page if page.ndim == 3 else page[:, :, None]
    none = no_data_area(120, 150)
    page[none] = 7
    page[70:90, 20:50, -1] = 7  # (no data in one band only)
    if dtype == "float32":
        page[5:15, 100:140, 0] = np.nan
    mask = np.ones((120, 150), bool)
    mask[30:52, 90:121] = False
    mask[100:, :40] = False
    tile = page[3:115, 5:141] if bands > 1 else page[3:115, 5:141, 0]
    assert not tile.flags.c_contiguous
    return tile, mask[3:115, 5:141]


@pytest.mark.parametrize("dtype,bands", TILE_KINDS)
@pytest.mark.parametrize("given", ["nodata", "mask", "both"])
@pytest.mark.parametrize("op", [DILATE, ERODE])
def test_dilate_and_erode_of_a_tile_leave_out_samples_by_value_and_pixels_by_mask(
        dtype, bands, given, op):
    """On a tile (a crop, not contiguous) of every path's types: the maximum (minimum) of
    the valid samples alone, those no data by their value (the no-data value, NaN) and by
    the mask's pixels, each kept apart or both; the others as they were, bit for bit."""
    tile, mask = morph_tile(dtype, bands)
    p = {"ksize": op["ksize"], "iterations": op["iterations"],
         "input_nodata": 7.0 if given != "mask" else None,
         "input_valid": mask if given != "nodata" else None}
    got = getattr(fn, op["op"])(tile, p)
    valid = np.ones(tile.shape, bool)
    if given != "mask":
        valid &= tile != 7
    if given != "nodata":
        valid &= mask.reshape(mask.shape + (1,) * (tile.ndim - 2))
    if dtype == "float32":
        valid &= ~np.isnan(tile)
    want = reference_extreme(tile, (op["ksize"] // 2) * op["iterations"], valid,
                             op["op"] == "dilate")
    assert got.dtype == tile.dtype and got.shape == tile.shape
    np.testing.assert_array_equal(got, want)  # (NaN where NaN, as it was)


@pytest.mark.parametrize("op", [DILATE, ERODE])
def test_dilate_and_erode_of_a_tile_without_a_left_out_sample_are_opencvs(op):
    """A tile of a page with a no-data value and a mask that holds no no-data sample and no
    masked-out pixel takes the plain path: OpenCV's result, bit for bit."""
    tile = scene(64, 80, 3, "uint8", 7)
    assert tile.min() >= 1
    func = cv2.dilate if op["op"] == "dilate" else cv2.erode
    want = func(tile, np.ones((op["ksize"],) * 2, np.uint8), iterations=op["iterations"])
    for extra in ({"input_nodata": 0.0}, {"input_valid": np.ones((64, 80), bool)},
                  {"input_nodata": 0.0, "input_valid": np.ones((64, 80), bool)}):
        got = getattr(fn, op["op"])(tile, {"ksize": op["ksize"],
                                           "iterations": op["iterations"], **extra})
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", [DILATE, ERODE])
def test_dilate_and_erode_of_a_tile_with_no_valid_sample_keep_it_as_it_is(op):
    """A tile all no data (a masked-out fill of 200 and no-data samples of 0), or all masked
    out, comes out as it went in."""
    tile = np.full((40, 50, 3), 200, np.uint8)
    tile[:, :25] = 0
    left = np.zeros((40, 50), bool)
    left[:, :25] = True  # (the mask keeps the no-data half alone)
    p = {"ksize": op["ksize"], "iterations": op["iterations"]}
    for extra in ({"input_nodata": 0.0, "input_valid": left},
                  {"input_valid": np.zeros((40, 50), bool)}):
        np.testing.assert_array_equal(getattr(fn, op["op"])(tile, {**p, **extra}), tile)


def test_a_dilate_without_nodata_is_opencvs_as_before(run):
    page = run["pages"]["plain"]
    got, tag = read(run["out"]["plain_dilate"])
    assert tag is None
    np.testing.assert_array_equal(got, cv2.dilate(page, np.ones((5, 5), np.uint8),
                                                  iterations=2))


def test_the_memory_model_counts_the_float_buffers_on_pages_with_nodata(tmp_path):
    """A blur of a page with GDAL_NODATA holds float64 sums and weights per tile (the
    estimate's "valid samples" part), fused or in batches; without the tag it does not."""
    img = scene(600, 700, 3, "uint16", 5)
    for name, tags in (("nodata", [nodata_tag("0")]), ("plain", [])):
        tifffile.imwrite(tmp_path / f"{name}.tif", img, photometric="rgb", tile=(256, 256),
                         metadata=None, extratags=tags)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": f"{name}.tif", "output": f"out/{name}_{fuse}.tif", "ops": [BLUR],
         "fuse": fuse}
        for name in ("nodata", "plain") for fuse in (True, False)]}))
    planned = est.plan_manifest(str(manifest))
    assert planned.problems == []
    parts = [local_peaks(plan, est.load_calibration(), 2)["process"].parts
             for plan in planned.plans]
    assert parts[0]["valid samples"] > 0 and parts[1]["valid samples"] > 0
    assert not parts[2].get("valid samples") and not parts[3].get("valid samples")


def test_cannys_blur_of_a_page_with_nodata_is_the_blur_of_its_valid_samples(run):
    """canny's ``sigma`` blur on a page with no-data 0 is gaussian_blur's: the reference blur
    of the valid samples alone, the no-data pixels kept (0), then OpenCV's Canny; tiled in
    batches as on the whole page. The same scene without GDAL_NODATA is OpenCV's Canny of
    OpenCV's blur, as before, and differs along the no-data edges."""
    page, none = run["pages"]["u8"], run["none"]
    sigma = CANNY["sigma"]
    got, tag = read(run["out"]["u8_canny"])
    blurred = np.where(none, page, reference_blur(page, sigma, ~none))
    blurred[(blurred == 0) & ~none] = 1  # (data kept off the no-data value, as the blur's)
    np.testing.assert_array_equal(got, cv2.Canny(blurred, CANNY["low"], CANNY["high"]))
    assert tag is None  # (edges: 0 and 255, no no-data value)
    plain, _ = read(run["out"]["plain_canny"])
    np.testing.assert_array_equal(plain, cv2.Canny(cv2.GaussianBlur(page, (0, 0), sigma),
                                                   CANNY["low"], CANNY["high"]))
    assert (got != plain)[~none].any()


@pytest.mark.parametrize("op,nodata", [("unsharp_mask", 0), ("gaussian_blur", 140)])
def test_a_tile_without_no_data_keeps_data_off_the_no_data_value_too(op, nodata):
    """A data sample a blur sends onto the no-data value goes to the next value in a tile
    that holds no no-data sample as in one that does: whether it reads as no-data must not
    hang on the tiling (an unsharp mask's overshoot sends dark data by bright to 0; a blur
    of 100 next to 200 passes through a no-data value of 140)."""
    page = np.full((64, 160), 40 if op == "unsharp_mask" else 100, np.uint8)
    page[:, 24:40] = 250 if op == "unsharp_mask" else 200
    page[60:, 150:] = nodata  # no-data, far from the edge
    p = {"sigma": 2.0, "input_nodata": nodata, **({"amount": 1.5} if op == "unsharp_mask"
                                                   else {})}
    whole = getattr(fn, op)(page, p)
    left = np.ascontiguousarray(page[:, :100])
    assert not (left == nodata).any()  # (the tile holds no no-data sample)
    tile = getattr(fn, op)(left, p)
    np.testing.assert_array_equal(tile[:, :80], whole[:, :80])
    assert not (whole[:, :80] == nodata).any()  # (all data there: none reads as no-data)
    plain = cv2.GaussianBlur(left, (0, 0), 2.0) if op == "gaussian_blur" else \
        cv2.addWeighted(left, 2.5, cv2.GaussianBlur(left, (0, 0), 2.0), -1.5, 0)
    assert (plain == nodata).any()  # (OpenCV's own result lands on it: the case tested)
