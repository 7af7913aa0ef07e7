"""Categorical data: ``downsample``'s ``method`` (nearest, mode, min, max) and
``output_options.pyramid_resampling``, run by ``tiffpipe run`` in units of a few tiles,
with two processing tile sizes: each output is
the method's reference of the whole page (:func:`reference`, a brute-force numpy
definition written apart from :func:`pipeline.core.reduce.block_pick`), bit for bit, and
where GDAL has the method (rasterio's ``read(out_shape=...)``, as ``gdal_translate -r``)
GDAL's result too. Inputs: land-cover classes (uint8), labels (uint16), a float32 page
with NaN no-data, a page with an internal mask written by GDAL, and palette pages of land
cover with a no-data index (GDAL_NODATA 0, 255), whose levels are compared with
``gdaladdo``'s too.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import gdal_masked, pyramid_levels, run_named_jobs
from rasterio.enums import Resampling
from rasterio.windows import Window

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

#: land-cover classes (NLCD's codes): the mean of 11 and 41 is 26, no class
CLASSES = np.array([11, 21, 22, 41, 42, 82], np.uint8)
METHODS = ("nearest", "mode", "min", "max")
#: input -> (factor, the two processing tiles)
INPUTS = {"u8": (3, (96, 192)), "u16": (3, (96, 192)), "f32_nan": (2, (64, 128)),
          "masked": (2, (64, 128))}


def patches(h: int, w: int, values: np.ndarray, seed: int) -> np.ndarray:
    """A class map: patches of 1 to 4 pixels' side, so blocks mix classes and tie."""
    rng = np.random.default_rng(seed)
    out = values[rng.integers(0, len(values), (h // 2 + 1, w // 2 + 1))]
    out = np.repeat(np.repeat(out, 2, 0), 2, 1)[:h, :w]
    noise = rng.random((h, w)) < 0.3
    out[noise] = values[rng.integers(0, len(values), noise.sum())]
    return out


def reference(page: np.ndarray, f: int, method: str, nodata: float | None = None,
              mask: np.ndarray | None = None) -> np.ndarray:
    """``method`` of each f x f block of ``page`` (h, w) or (h, w, c), blocks at an odd edge
    of the pixels present, over its valid samples (not ``nodata``, not NaN for NaN; where
    ``mask``): nearest, the valid sample nearest the centre (the lower, then the right one
    of those as near); mode, the most frequent value, of those as frequent the one whose
    last sample (row-major in the block) comes first; min; max (NaN wins). ``nodata`` (0)
    where no sample is valid. Every pair of samples compared: slow, plain."""
    a = page if page.ndim == 3 else page[..., None]
    h, w, c = a.shape
    hb, wb, k = -(-h // f), -(-w // f), f * f
    vals = np.zeros((hb * f, wb * f, c), a.dtype)
    vals[:h, :w] = a
    ok = np.zeros((hb * f, wb * f, c), bool)
    ok[:h, :w] = True if mask is None else mask[..., None]
    if nodata is not None:
        ok[:h, :w] &= ~np.isnan(a) if np.isnan(nodata) else a != nodata

    def blocks(x: np.ndarray) -> np.ndarray:  # (hb, wb, c, k), row-major in the block
        return x.reshape(hb, f, wb, f, c).transpose(0, 2, 4, 1, 3).reshape(hb, wb, c, k)

    v, o = blocks(vals), blocks(ok)
    pos = np.arange(k)
    dy, dx = pos // f, pos % f
    if method == "nearest":
        far = (2 * dy + 1 - f) ** 2 + (2 * dx + 1 - f) ** 2
        rank = np.lexsort((-dx, -dy, far)).argsort()  # 0: the first pick
        score = np.where(o, k - rank, 0)
    elif method == "mode":
        same = (v[..., :, None] == v[..., None, :]) | (np.isnan(v[..., :, None])
                                                     & np.isnan(v[..., None, :]))
        same &= o[..., :, None] & o[..., None, :]
        count = same.sum(-1)
        last = np.where(same, pos, -1).max(-1)
        score = np.where(o, count * (k + 1) + (k - last), 0)
    else:
        x = v.astype(np.float64)
        key = -x if method == "min" else x
        key = np.where(np.isnan(x), np.inf, key)  # (a NaN sample wins)
        score = np.where(o, key, -np.inf)
    best = np.argmax(score, -1)
    out = np.take_along_axis(v, best[..., None], -1)[..., 0]
    out[~o.any(-1)] = 0 if nodata is None else nodata
    return out if page.ndim == 3 else out[..., 0]


def gdal(path: str | Path, f: int, method: str) -> np.ndarray:
    """GDAL's ``method`` resampling of a file's bands by ``f`` over its whole blocks, bands
    last (its mask left out, as ``gdal_translate -r`` does)."""
    with rasterio.open(path) as ds:
        h, w = ds.height // f, ds.width // f
        bands = ds.read(window=Window(0, 0, w * f, h * f), out_shape=(ds.count, h, w),
                        resampling=getattr(Resampling, method))
    return np.moveaxis(bands, 0, -1)


def collar(h: int, w: int) -> np.ndarray:
    """A scene's valid area: a slanted swath with a hole."""
    yy, xx = np.mgrid[0:h, 0:w]
    valid = (xx > yy // 3 + 17) & (xx < w - 23 - (h - yy) // 4) & (yy > 5) & (yy < h - 9)
    valid[h // 3:h // 3 + 21, w // 2:w // 2 + 33] = False
    return valid


#: the no-data indices of the palette pages with one: 0 (a land-cover map's), 255 (the other
#: end: min and max each leave one of them out)
PALETTE_NODATA = (0, 255)


def palette_classes(nodata: int) -> np.ndarray:
    """A land-cover map as indices (152 x 208: each level of its pyramid down to 19 x 26 is
    half the one above), about a third of it the no-data index ``nodata``."""
    return patches(152, 208, np.array([nodata] * 3 + [11, 41, 82, 95], np.uint8), 10)


def write_palette(path: Path, indices: np.ndarray, nodata: int | None) -> None:
    """A palette page of ``indices``, its colormap, and GDAL_NODATA ``nodata`` (None: none),
    tiled 32 x 32, as a GIS writes a class map."""
    colormap = np.random.default_rng(9).integers(0, 65536, (3, 256), dtype=np.uint16)
    tags = [] if nodata is None else [(42113, "s", 0, f"{nodata}", True)]
    tifffile.imwrite(path, indices, photometric="palette", colormap=colormap, tile=(32, 32),
                     extratags=tags)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The inputs (odd sizes: a downsample drops the rows and columns past the last whole
    block, the levels reduce an odd edge's pixels present), each downsampled by every
    method with two processing tiles, and pyramids by "mode" and "max"; one run."""
    root = tmp_path_factory.mktemp("resample")
    u8 = patches(301, 407, CLASSES, 1)
    tifffile.imwrite(root / "u8.tif", u8, tile=(64, 64), compression="zlib")
    u16 = patches(250, 333, np.array([0, 7, 300, 65535, 1000], np.uint16), 2)
    tifffile.imwrite(root / "u16.tif", u16, rowsperstrip=16)
    f32 = patches(211, 262, np.array([0.5, -3.25, 1e6], np.float32), 3)
    f32[patches(211, 262, np.array([0, 0, 1], np.uint8), 4) == 1] = np.nan
    tifffile.imwrite(root / "f32_nan.tif", f32, tile=(32, 32),
                     extratags=[(42113, "s", 0, "nan", True)])
    valid = collar(233, 301)
    rgb = np.stack([patches(233, 301, CLASSES, s) for s in (5, 6, 7)], -1)
    rgb[~valid] = 0
    gdal_masked(root / "masked.tif", rgb, valid, block=64)
    jobs: dict[str, dict[str, Any]] = {}
    for src, (f, tiles) in INPUTS.items():
        for method in METHODS:
            for tile in tiles:
                jobs[f"{src}_{method}_{tile}"] = {
                    "input": str(root / f"{src}.tif"), "tile": tile,
                    "ops": [{"op": "downsample", "factor": f, "method": method}]}
    for src, method in (("u8", "mode"), ("masked", "mode"), ("f32_nan", "max")):
        jobs[f"{src}_pyramid_{method}"] = {
            "input": str(root / f"{src}.tif"), "tile": 128,
            "output_options": {"pyramid": True, "pyramid_resampling": method}}
    indices = patches(150, 203, np.arange(0, 256, 9, dtype=np.uint8), 8)
    colormap = np.random.default_rng(9).integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(root / "palette.tif", indices, photometric="palette", colormap=colormap,
                     tile=(32, 32))
    for method in ("mode", "mean"):
        jobs[f"palette_{method}"] = {
            "input": str(root / "palette.tif"), "tile": 64,
            "ops": [{"op": "rotate", "angle": 90},
                    {"op": "downsample", "factor": 2, "method": method}]}
    gray0 = palette_classes(0)  # (a gray class map, GDAL_NODATA 0; 152 x 208: even levels
    tifffile.imwrite(root / "gray0.tif", gray0, tile=(32, 32),  # down to 19 x 26)
                     extratags=[(42113, "s", 0, "0", True)])
    for src, tile in (("u8", 128), ("gray0", 64), ("masked", 64)):  # (odd from the base;
        # gray0: from level 3)
        jobs[f"{src}_pyramid_nearest"] = {
            "input": str(root / f"{src}.tif"), "tile": tile,
            "output_options": {"pyramid": True, "pyramid_resampling": "nearest"}}
    jobs["palette_pyramid_mode"] = {
        "input": str(root / "palette.tif"), "tile": 64,
        "output_options": {"pyramid": True, "pyramid_resampling": "mode"}}
    for nodata in PALETTE_NODATA:  # (a class map's no-data index, GDAL_NODATA)
        name = f"pal{nodata}"
        write_palette(root / f"{name}.tif", palette_classes(nodata), nodata)
        for method in (*METHODS, "mean"):
            jobs[f"{name}_{method}"] = {"input": str(root / f"{name}.tif"), "tile": 64,
                                        "ops": [{"op": "downsample", "factor": 2,
                                                 "method": method}]}
        for method in ("mode", "min", "mean"):
            jobs[f"{name}_pyramid_{method}"] = {
                "input": str(root / f"{name}.tif"), "tile": 64,
                "output_options": {"pyramid": True, "pyramid_resampling": method}}
    return {"root": root, "jobs": run_named_jobs(root, jobs, {"output_options": {"tile": 16}},
                                                 2 * 192 * 192, "--workers", "2")}


def page_of(src: str, root: Path) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """The input's pixels, its no-data value and its mask (None: none)."""
    with tifffile.TiffFile(root / f"{src}.tif") as tf:
        page = tf.pages[0].asarray()
        mask = tf.pages[1].asarray() > 0 if len(tf.pages) > 1 else None
    return page, (np.nan if src == "f32_nan" else None), mask


@pytest.mark.parametrize("src", list(INPUTS))
@pytest.mark.parametrize("method", METHODS)
def test_each_method_is_its_reference_on_the_whole_page_whatever_the_tiles(runs, src, method):
    """Both tile sizes give the reference of the whole page, bit for bit: each output pixel
    is one of its block's valid samples (no mix of classes), the no-data value where the
    block has none; the output mask (a masked page) is valid where any of the block is."""
    f, tiles = INPUTS[src]
    page, nodata, mask = page_of(src, runs["root"])
    h, w = page.shape[0] // f, page.shape[1] // f
    want = reference(page[:h * f, :w * f], f, method, nodata,
                     None if mask is None else mask[:h * f, :w * f])
    for tile in tiles:
        job = runs["jobs"][f"{src}_{method}_{tile}"]
        assert job["status"] == "SUCCEEDED", job
        got = tifffile.imread(job["output"], key=0)
        assert got.dtype == page.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if mask is not None:
            with rasterio.open(job["output"]) as ds:
                np.testing.assert_array_equal(
                    ds.read_masks(1) > 0,
                    mask[:h * f, :w * f].reshape(h, f, w, f).any(axis=(1, 3)))
    if src == "u8":  # no mean of classes: every pixel is a class
        assert set(np.unique(got)) <= set(CLASSES.tolist())
    if nodata is not None:  # some blocks all no-data, some mixed
        assert np.isnan(got).any() and not np.isnan(got).all()


@pytest.mark.parametrize("src", ["u8", "u16", "masked"])
@pytest.mark.parametrize("method", ["nearest", "mode"])
def test_nearest_and_mode_are_gdals(runs, src, method):
    """GDAL's nearest (for a reduction by f: each block's sample at (f // 2, f // 2)) and
    mode (its ties: the value first to reach the highest count, row-major) are the outputs
    on pages without a mask. GDAL 3.10's nearest and mode (``gdal_translate -r``) take a
    masked-out pixel's fill as a value; tiffpipe leaves it out: on the masked page they
    agree where GDAL's pick is valid (nearest: the block's centre pixel; mode: every pixel
    of the block, or none) and differ elsewhere (a class here, the fill 0 there)."""
    f = INPUTS[src][0]
    job = runs["jobs"][f"{src}_{method}_{INPUTS[src][1][0]}"]
    got = tifffile.imread(job["output"], key=0)
    got = got.reshape(got.shape[:2] + (-1,))
    want = gdal(job["input"], f, method)
    if src == "masked":
        _, _, mask = page_of(src, runs["root"])
        h, w = got.shape[:2]
        count = mask[:h * f, :w * f].reshape(h, f, w, f).sum(axis=(1, 3))
        same = (mask[f // 2::f, f // 2::f][:h, :w] if method == "nearest"
                else (count == 0) | (count == f * f))
        np.testing.assert_array_equal(got[same], want[same])
        assert (got[~same] != want[~same]).any()
        return
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("src", "method"), [("u8", "mode"), ("masked", "mode"),
                                             ("f32_nan", "max")])
def test_pyramid_resampling_reduces_each_level_by_its_method(runs, src, method):
    """Each pyramid level is the method's reference of the level above by 2 (the pixels
    present at an odd edge), no-data and the mask left out; so a level of classes holds
    classes only."""
    job = runs["jobs"][f"{src}_pyramid_{method}"]
    assert job["status"] == "SUCCEEDED", job
    page, nodata, mask = page_of(src, runs["root"])
    levels = pyramid_levels(job["output"])[0]
    assert len(levels) >= 4
    above, valid = page, mask
    for pixels, _ in levels[1:]:
        want = reference(above, 2, method, nodata, valid)
        np.testing.assert_array_equal(pixels, want)
        if valid is not None:
            h, w = valid.shape
            padded = np.zeros((h + h % 2, w + w % 2), bool)
            padded[:h, :w] = valid
            valid = padded.reshape(padded.shape[0] // 2, 2, -1, 2).any(axis=(1, 3))
        above = pixels
    if src == "u8":
        assert set(np.unique(levels[-1][0])) <= set(CLASSES.tolist())


def test_a_palette_page_keeps_its_indices_and_colormap_through_a_downsample_by_mode(runs):
    """A downsample that picks a sample of each block (after a rotate) keeps a palette
    page's indices and colormap, as the geometric ops do: the indices are the mode of the
    rotated indices, and its pyramid levels by "mode" the mode of the level above. The
    mean (a mix of unrelated colours' indices) still makes it RGB first."""
    with tifffile.TiffFile(runs["root"] / "palette.tif") as tf:
        indices, colormap = tf.pages[0].asarray(), tf.pages[0].colormap
    turned = np.rot90(indices, -1)
    h, w = turned.shape[0] // 2, turned.shape[1] // 2
    with tifffile.TiffFile(runs["jobs"]["palette_mode"]["output"]) as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        np.testing.assert_array_equal(page.colormap, colormap)
        np.testing.assert_array_equal(page.asarray(),
                                      reference(turned[:2 * h, :2 * w], 2, "mode"))
    with tifffile.TiffFile(runs["jobs"]["palette_mean"]["output"]) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    levels = pyramid_levels(runs["jobs"]["palette_pyramid_mode"]["output"])[0]
    assert len(levels) >= 2
    above = indices
    for pixels, tags in levels[1:]:
        assert tags[262] == tifffile.PHOTOMETRIC.PALETTE
        np.testing.assert_array_equal(pixels, reference(above, 2, "mode"))
        above = pixels


def gdal_warp(path: Path, f: int, method: str) -> np.ndarray:
    """GDAL's ``method`` of a file's first band by ``f`` over its whole blocks through its
    warper (``gdalwarp -r min``, ``max``: GDAL reads no ``out_shape`` by them), its no-data
    value left out."""
    from rasterio.transform import Affine
    from rasterio.warp import reproject

    with rasterio.open(path) as ds:
        page, nodata = ds.read(1), ds.nodata
    h, w = page.shape[0] // f, page.shape[1] // f
    out = np.zeros((h, w), page.dtype)
    # (a UTM zone's metres, 1 a pixel: the warper maps f x f blocks onto output pixels)
    reproject(page[:h * f, :w * f], out, src_transform=Affine(1, 0, 5e5, 0, -1, 5.4e6),
              dst_transform=Affine(f, 0, 5e5, 0, -f, 5.4e6), src_crs="EPSG:32633",
              dst_crs="EPSG:32633", src_nodata=nodata, dst_nodata=nodata,
              resampling=getattr(Resampling, method))
    return out


def gdaladdo(path: str, method: str, count: int, tmp: Path) -> list[np.ndarray]:
    """The ``count`` overviews ``gdaladdo -r method`` makes (rasterio's ``build_overviews``,
    factors 2, 4, ...) of a copy of the base page of ``path`` as GDAL writes it (a palette
    page with its colormap, a gray one; GDAL_NODATA), its one band's samples contiguous
    (PlanarConfiguration 1), as tiffpipe writes it: GDAL 3.10 makes the nearest overviews
    of such a file (and the COG driver's) each from the one above, of a file written
    "interleave": "band" (PlanarConfiguration 2, what ``ds.profile`` says of a single band)
    each from the base page."""
    with rasterio.open(path) as ds:
        profile, page = ds.profile, ds.read(1)
        colormap = ds.colormap(1) if ds.colorinterp[0].name == "palette" else None
    profile.pop("interleave", None)
    copy = tmp / f"gdaladdo_{method}.tif"
    with rasterio.open(copy, "w", **{**profile, "photometric": "palette" if colormap
                                     else "minisblack"}) as out:
        if colormap:
            out.write_colormap(1, colormap)
        out.write(page, 1)
    with rasterio.open(copy, "r+") as out:
        out.build_overviews([2 ** k for k in range(1, count + 1)], getattr(Resampling, method))
    levels = []
    for k in range(count):
        with rasterio.open(copy, overview_level=k) as ds:
            levels.append(ds.read(1))
    return levels


def gdal_mode_windows(above: np.ndarray, h: int, w: int, nodata: int) -> np.ndarray:
    """GDAL's mode overview (3.10) of ``above`` as an ``h x w`` level: pixel (y, x) is the
    mode (its tie rule, ``nodata`` left out) of rows ``floor(y r)`` to ``ceil((y + 1) r)``
    (exclusive) of ``above``, ``r`` its rows / h, and the columns likewise: the 2 x 2 block
    where ``r`` is 2, 3 rows or columns (one shared with the block before) where the level
    above has an odd number of them and ``r`` is a little under 2."""
    def span(i: int, r: float, n: int) -> slice:
        return slice(int(i * r + 1e-8), min(n, max(int(i * r + 1e-8) + 1,
                                                   int(np.ceil((i + 1) * r - 1e-8)))))

    out = np.full((h, w), nodata, above.dtype)
    ry, rx = above.shape[0] / h, above.shape[1] / w
    for y in range(h):
        for x in range(w):
            counts: dict[int, int] = {}
            best = 0
            for v in above[span(y, ry, above.shape[0]), span(x, rx, above.shape[1])].ravel():
                if v != nodata:
                    counts[v] = counts.get(v, 0) + 1
                    if counts[v] > best:
                        out[y, x], best = v, counts[v]
    return out


@pytest.mark.parametrize("nodata", PALETTE_NODATA)
@pytest.mark.parametrize("method", METHODS)
def test_a_palette_page_leaves_its_no_data_index_out_of_each_block(runs, nodata, method):
    """A downsample that picks (its indices kept) leaves a palette page's no-data index
    (GDAL_NODATA) out of each block as it leaves a gray page's no-data value out: the output
    is the method's reference with that value, a palette page with its colormap and
    GDAL_NODATA; and GDAL's: ``mode`` (``gdal_translate -r mode``), ``min`` and ``max``
    (``gdalwarp -r``) bit for bit, ``nearest`` wherever GDAL's pick, the block's centre
    sample, is valid or no sample is (elsewhere GDAL takes the centre's no-data index, and
    tiffpipe the valid sample nearest it, as on a gray page). Before, the index counted as a
    class: a block 95, 82, 0, 0 by mode gave 0 (GDAL: 95), by min 0 wherever a block held it."""
    src = runs["root"] / f"pal{nodata}.tif"
    page = tifffile.imread(src)
    job = runs["jobs"][f"pal{nodata}_{method}"]
    assert job["status"] == "SUCCEEDED", job
    with tifffile.TiffFile(job["output"]) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        got = tf.pages[0].asarray()
    np.testing.assert_array_equal(got, reference(page, 2, method, nodata))
    with rasterio.open(job["output"]) as ds:
        assert ds.nodata == nodata and ds.colorinterp[0].name == "palette"
    if method in ("min", "max"):
        np.testing.assert_array_equal(got, gdal_warp(src, 2, method))
        return
    theirs = gdal(src, 2, method)[..., 0]
    if method == "mode":
        np.testing.assert_array_equal(got, theirs)
        return
    h, w = got.shape
    same = (page[1::2, 1::2] != nodata) | (page.reshape(h, 2, w, 2) == nodata).all(axis=(1, 3))
    np.testing.assert_array_equal(got[same], theirs[same])
    assert (theirs[~same] == nodata).all() and (got[~same] != nodata).all() and (~same).any()


@pytest.mark.parametrize("nodata", PALETTE_NODATA)
@pytest.mark.parametrize("method", ["mode", "min"])
def test_a_palette_pages_levels_leave_its_no_data_index_out(runs, nodata, method):
    """``pyramid_resampling`` mode and min leave a palette page's no-data index out of each
    2 x 2 block of the level above, as on a gray page: each level is the method's reference
    with that value, a palette level; the base keeps GDAL_NODATA. Before, the index counted
    as a class (min: the no-data index wherever a block held it, at every level)."""
    job = runs["jobs"][f"pal{nodata}_pyramid_{method}"]
    assert job["status"] == "SUCCEEDED", job
    levels = pyramid_levels(job["output"])[0]
    assert len(levels) >= 4
    above = tifffile.imread(runs["root"] / f"pal{nodata}.tif")
    np.testing.assert_array_equal(levels[0][0], above)
    for pixels, tags in levels[1:]:
        assert tags[262] == tifffile.PHOTOMETRIC.PALETTE
        np.testing.assert_array_equal(pixels, reference(above, 2, method, nodata))
        above = pixels
    with rasterio.open(job["output"]) as ds:
        assert ds.nodata == nodata


def test_palette_mode_levels_are_gdaladdos_where_a_level_halves_the_one_above(runs, tmp_path):
    """``gdaladdo -r mode`` on a copy of the output's base page (GDAL 3.10.3, through
    rasterio's ``build_overviews``) makes each level from the one above too, by the same
    mode, no-data index left out: its levels 1 to 3 (76 x 104, 38 x 52, 19 x 26, each half
    the one above) are tiffpipe's. Level 4 (10 x 13) is made of 19 rows: GDAL's blocks there
    are 1.9 rows high (rows floor(1.9 y) to ceil(1.9 (y + 1)), 3 rows from the second on),
    tiffpipe's 2 rows (the last one 1), so they differ."""
    job = runs["jobs"]["pal0_pyramid_mode"]
    ours = [pixels for pixels, _ in pyramid_levels(job["output"])[0]]
    assert [p.shape for p in ours] == [(152, 208), (76, 104), (38, 52), (19, 26), (10, 13)]
    theirs = gdaladdo(job["output"], "mode", 4, tmp_path)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(theirs[k - 1], ours[k])
    np.testing.assert_array_equal(theirs[3], gdal_mode_windows(theirs[2], 10, 13, 0))
    assert (theirs[3] != ours[4]).any()


@pytest.mark.parametrize("nodata", PALETTE_NODATA)
def test_a_palette_pages_mean_levels_are_gdals_nearest_no_data_index_or_not(runs, tmp_path,
                                                                           nodata):
    """With ``pyramid_resampling`` mean (the default) a palette page's levels take each
    block's top-left index, the no-data index too when it is that one: GDAL's nearest
    overviews (``gdaladdo -r nearest``, what GDAL's COG driver makes of a palette page)
    take the same, no-data or not, at every level: the 10 x 13 level of the 19 x 26 one too,
    where GDAL takes, past half way, the row and column before each block (before, tiffpipe
    took the top-left one there too); the base keeps GDAL_NODATA."""
    job = runs["jobs"][f"pal{nodata}_pyramid_mean"]
    assert job["status"] == "SUCCEEDED", job
    ours = [pixels for pixels, _ in pyramid_levels(job["output"])[0]]
    assert [p.shape for p in ours] == [(152, 208), (76, 104), (38, 52), (19, 26), (10, 13)]
    for above, pixels in list(pairwise(ours))[:3]:
        np.testing.assert_array_equal(pixels, above[0::2, 0::2])
    assert (ours[1] == nodata).any()
    theirs = gdaladdo(job["output"], "nearest", 4, tmp_path)
    for k in (1, 2, 3, 4):
        np.testing.assert_array_equal(theirs[k - 1], ours[k])
    with rasterio.open(job["output"]) as ds:
        assert ds.nodata == nodata


def test_overview_picks_are_the_pixels_gdaladdo_nearest_takes(tmp_path):
    """GDAL's nearest overviews (``gdaladdo -r nearest``: rasterio's ``build_overviews``, GDAL
    3.10) of a page whose pixels are their own row and column, odd and even sizes: each
    overview takes, of the one above (not of the base), the rows and columns
    :func:`overview_picks` says: each block's top-left pixel where the level above is even,
    past half way the pixel before the block where it is odd (the ratio is a little under 2).
    Not :func:`pipeline.core.reduce.nearest_order`'s pick (the block's lower-right, GDAL's
    RasterIO nearest, ``downsample``'s)."""
    from pipeline.core.reduce import nearest_order, overview_picks

    for h, w in ((8, 12), (7, 9), (21, 19), (37, 75), (5, 22)):
        yy, xx = np.mgrid[0:h, 0:w]
        with rasterio.open(tmp_path / "at.tif", "w", driver="GTiff", height=h, width=w,
                           count=1, dtype="uint16") as ds:
            ds.write((yy * 100 + xx).astype(np.uint16), 1)
        with rasterio.open(tmp_path / "at.tif", "r+") as ds:
            ds.build_overviews([2, 4, 8], Resampling.nearest)
        above_rows, above_cols = np.arange(h), np.arange(w)
        for k in range(3):
            with rasterio.open(tmp_path / "at.tif", overview_level=k) as ds:
                level = ds.read(1)
            above_rows = above_rows[overview_picks(len(above_rows))]
            above_cols = above_cols[overview_picks(len(above_cols))]
            np.testing.assert_array_equal(level, above_rows[:, None] * 100 + above_cols)
    assert overview_picks(7).tolist() == [0, 2, 4, 5] and overview_picks(8).tolist() == [
        0, 2, 4, 6]
    assert nearest_order(2)[0] == (1, 1)


@pytest.mark.parametrize("src", ["u8", "gray0"])
def test_pyramid_nearest_levels_are_gdaladdos(runs, src, tmp_path):
    """``pyramid_resampling`` "nearest" makes each level what ``gdaladdo -r nearest`` makes
    of a copy of the output's base page (GDAL 3.10.3, through rasterio's
    ``build_overviews``), every level, odd ones too: a gray class map of odd size (301 x
    407) and one of even size with GDAL_NODATA 0 (152 x 208, odd from its 19 x 26 level),
    whose no-data pixels GDAL takes as any other. Before, each block's lower-right valid
    pixel (``downsample``'s nearest, GDAL's RasterIO's): not GDAL's overviews."""
    job = runs["jobs"][f"{src}_pyramid_nearest"]
    assert job["status"] == "SUCCEEDED", job
    ours = [pixels for pixels, _ in pyramid_levels(job["output"])[0]]
    assert len(ours) >= 5 and any(p.shape[0] % 2 for p in ours[:-1])
    np.testing.assert_array_equal(ours[0], tifffile.imread(runs["root"] / f"{src}.tif"))
    theirs = gdaladdo(job["output"], "nearest", len(ours) - 1, tmp_path)
    for k in range(1, len(ours)):
        np.testing.assert_array_equal(theirs[k - 1], ours[k])
    if src == "gray0":
        with rasterio.open(job["output"]) as ds:
            assert ds.nodata == 0
        assert (ours[1] == 0).any()


def test_pyramid_nearest_levels_of_a_masked_page_take_the_pixel_and_its_mask_bit(runs):
    """On a page that carries its mask (233 x 301), each ``nearest`` level takes the pixel
    :func:`overview_picks` says of the level above, masked out or not (GDAL's overview
    nearest leaves none out), and that pixel's mask bit, tiles crossed where the pick is the
    row or column before a block. Before, the valid pixel nearest each block's centre,
    valid where any of the block was."""
    from pipeline.core.reduce import overview_picks

    job = runs["jobs"]["masked_pyramid_nearest"]
    assert job["status"] == "SUCCEEDED", job
    page, _, mask = page_of("masked", runs["root"])
    image, mask_page = pyramid_levels(job["output"])  # (the mask: a page after the image)
    pixels, masks = [p for p, _ in image], [p > 0 for p, _ in mask_page]
    assert len(pixels) == len(masks) >= 4
    above, valid = page, mask
    for got, got_mask in zip(pixels[1:], masks[1:], strict=True):
        rows, cols = overview_picks(above.shape[0]), overview_picks(above.shape[1])
        above, valid = above[rows][:, cols], valid[rows][:, cols]
        np.testing.assert_array_equal(got, above)
        np.testing.assert_array_equal(got_mask, valid)


#: what a job of a palette page with GDAL_NODATA 0 whose downsample is a mean says
PALETTE_MEAN_NOTE = (
    "the palette no-data index (GDAL_NODATA) 0 of page 0 is lost: ops[0] (downsample by its "
    "default mean) makes the page RGB through its colormap, so the no-data pixels become that "
    "index's colour, data to GDAL and QGIS, and the output has no GDAL_NODATA to mark them; "
    'give ops[0] (downsample) "method": "mode" (or "nearest"), which keeps the indices, their '
    "colormap and GDAL_NODATA")


def test_a_mean_downsample_of_a_palette_page_says_its_no_data_index_is_lost(runs, tmp_path,
                                                                             capsys):
    """A palette page with GDAL_NODATA downsampled by the default mean is made RGB through
    its colormap: its no-data pixels become that index's colour, under no GDAL_NODATA. The
    job's report message (and ``validate --inputs``) now says so and that "method": "mode"
    keeps them, where nothing did; not of a palette page without GDAL_NODATA, nor of one
    whose downsample picks."""
    from pipeline import cli

    job = runs["jobs"]["pal0_mean"]
    assert job["status"] == "SUCCEEDED" and job["message"] == PALETTE_MEAN_NOTE, job
    with rasterio.open(job["output"]) as ds:
        assert ds.count == 3 and ds.nodata is None and ds.mask_flag_enums[0] == [
            rasterio.enums.MaskFlags.all_valid]
    write_palette(tmp_path / "plain.tif", palette_classes(0), None)
    mean = [{"op": "downsample", "factor": 2}]
    jobs = [{"input": str(runs["root"] / "pal0.tif"), "output": "a.tif", "ops": mean},
            {"input": "plain.tif", "output": "b.tif", "ops": mean},
            {"input": str(runs["root"] / "pal0.tif"), "output": "c.tif",
             "ops": [{"op": "downsample", "factor": 2, "method": "mode"}]}]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"  jobs[0] ({runs['root'] / 'pal0.tif'}): {PALETTE_MEAN_NOTE}"]


def test_inspect_ops_says_a_palette_page_stays_one(runs, capsys):
    """``inspect --ops`` of a palette page says the output page of a chain that keeps its
    indices is a palette page, its colormap and GDAL_NODATA kept (before: "1 x uint8", as
    a gray page's); of one that makes it RGB, its RGB, as before."""
    from pipeline import cli

    kept = "1 x uint8 palette (indices, colormap and GDAL_NODATA 0 kept)"
    for method, said in (("mode", kept), ("mean", "3 x uint16")):  # (16-bit colormap)
        ops = [{"op": "downsample", "factor": 2, "method": method}]
        assert cli.main(["inspect", str(runs["root"] / "pal0.tif"), "--ops",
                         json.dumps(ops)]) == 0
        assert capsys.readouterr().out.splitlines()[2] == f"    ops: run -> 104 x 76, {said}"


def test_nan_without_a_no_data_value_is_a_value(tmp_path: Path):
    """On a float page whose NaN marks no no-data (no GDAL_NODATA), NaN is a value: mode
    counts the NaNs as one value (GDAL's mode too: NaN, NaN before 3, 3 in row-major order
    reaches two first), min and max give NaN (as the mean does), nearest takes the sample
    at (1, 1)."""
    from pipeline.core.op_functions import downsample

    page = np.array([[np.nan, 3, 5, 5], [np.nan, 3, np.nan, 2]], np.float32)
    tifffile.imwrite(tmp_path / "nan.tif", page)
    got = {m: downsample(page, {"factor": 2, "method": m}) for m in METHODS}
    np.testing.assert_array_equal(got["mode"], [[np.nan, 5]])
    np.testing.assert_array_equal(got["mode"], gdal(tmp_path / "nan.tif", 2, "mode")[..., 0])
    np.testing.assert_array_equal(got["min"], [[np.nan, np.nan]])
    np.testing.assert_array_equal(got["max"], [[np.nan, np.nan]])
    np.testing.assert_array_equal(got["nearest"], [[3, 2]])
    assert all(a.dtype == np.float32 for a in got.values())
