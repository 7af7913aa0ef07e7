"""tiffpipe's outputs opened in GDAL (through rasterio, whose wheels bundle it), as a GIS
analyst opens them in QGIS: georeferencing, no-data, bands and sample types, the SubIFD
pyramid levels seen as overviews, and pixels equal to tifffile's read. Real GeoTIFFs written
by tifffile go through one ``tiffpipe run``.

Pyramid levels of a page with a no-data value leave that value out of their means, as
GDAL's own average overviews do (docs/outputs.md): a mean of -9999 and 120 (-4940) would be
neither, and GDAL and QGIS would show it as data.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import gdal_average
from rasterio.enums import Resampling

from pipeline import cli
from pipeline.core.events import MergeEvent
from pipeline.steps import layout
from pipeline.steps import merge as merge_mod
from pipeline.steps.common import forget_plans
from pipeline.steps.pyramid import reduce2

pytestmark = pytest.mark.timeout(240)

#: a UTM scene: 30 m pixels, EPSG:32611
GEO = [(33550, "d", 3, (30.0, 30.0, 0.0), True),
       (33922, "d", 6, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0), True),
       (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611), True),
       (34737, "s", 0, "WGS 84 / UTM zone 11N|", True)]
TRANSFORM = (30.0, 0.0, 440720.0, 0.0, -30.0, 3751320.0)
BLUR = [{"op": "gaussian_blur", "sigma": 1.5}]
NDVI = {"op": "normalized_difference", "a": 3, "b": 2}


def nodata_tag(text: str) -> tuple[int, str, int, str, bool]:
    return (42113, "s", 0, text, True)


def scene(height: int, width: int, bands: int, dtype: str, nodata: float) -> np.ndarray:
    """A smooth ramp (a few noisy levels) with no-data areas whose edges are at odd rows and
    columns, so that level blocks mix no-data and data."""
    rng = np.random.default_rng(bands)
    yy, xx = np.mgrid[0:height, 0:width]
    img = 100 + yy / 10 + xx / 20 + rng.normal(0, 2, (bands, height, width))
    img = np.moveaxis(img, 0, -1).astype(dtype) if bands > 1 else img[0].astype(dtype)
    img[:101, :203] = nodata
    img[300:333, 401:451] = nodata
    return img


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gis")
    inputs = {
        "f32": (scene(600, 700, 1, "float32", -9999), "-9999", "zlib"),
        "f64_nan": (scene(600, 700, 1, "float64", np.nan), "nan", "zstd"),
        "u16x6": (scene(600, 700, 6, "uint16", 0), "0", "zlib"),
        "i16": (scene(600, 700, 1, "int16", -32768), "-32768", None),
    }
    for name, (img, text, compression) in inputs.items():
        tifffile.imwrite(root / f"{name}.tif", img, photometric="minisblack",
                         planarconfig="contig", tile=(128, 128), compression=compression,
                         metadata=None, extratags=[*GEO, nodata_tag(text)])
    # pages the reader converts: their no-data value is mapped as their pixels are
    white = scene(600, 700, 1, "uint16", 0)
    tifffile.imwrite(root / "white.tif", white, photometric="miniswhite", tile=(128, 128),
                     metadata=None, extratags=[*GEO, nodata_tag("0")])
    tifffile.imwrite(root / "bilevel.tif", white > 130, photometric="miniswhite",
                     metadata=None, extratags=[*GEO, nodata_tag("1")])
    colormap = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    tifffile.imwrite(root / "palette.tif", (white % 256).astype(np.uint8), photometric="palette",
                     colormap=colormap, metadata=None, extratags=[*GEO, nodata_tag("0")])
    # odd sizes, for downsamples that drop the rows and columns past their last block
    tifffile.imwrite(root / "u8.tif", scene(301, 403, 3, "uint8", 0), photometric="rgb",
                     tile=(64, 64), compression="zlib", metadata=None,
                     extratags=[*GEO, nodata_tag("0")])
    tifffile.imwrite(root / "f32_nan.tif", scene(301, 403, 1, "float32", np.nan),
                     rowsperstrip=16, metadata=None, extratags=[*GEO, nodata_tag("nan")])
    rgb = np.clip(scene(600, 700, 3, "float32", 0), 0, 255).astype("uint8")
    tifffile.imwrite(root / "rgb.tif", rgb, photometric="rgb", tile=(128, 128),
                     metadata=None, extratags=GEO)
    pyr = {"pyramid": True, "tile": 64}
    jobs = {
        # (a copy: a blur mixes no-data into data near its edges, docs/inputs.md, Metadata)
        "f32": {"input": "f32.tif", "output_options": {**pyr, "compression": "zstd"}},
        "f64_nan": {"input": "f64_nan.tif", "output_options": {**pyr, "compression": "deflate"}},
        # not fused: its level units (then merge, below) build the levels
        "u16x6": {"input": "u16x6.tif", "ops": [{"op": "dilate", "ksize": 1}], "fuse": False,
                  "output_options": {**pyr, "compression": "deflate"}},
        "i16": {"input": "i16.tif", "tile": 96, "output_options": {"pyramid": True, "tile": 32}},
        "i16_threshold": {"input": "i16.tif", "ops": [{"op": "threshold", "value": 150}],
                          "output_options": pyr},
        "rgb_jpeg": {"input": "rgb.tif", "ops": BLUR,
                     "output_options": {**pyr, "compression": "jpeg"}},
        "f32_down": {"input": "f32.tif", "ops": [{"op": "downsample", "factor": 2}]},
        "u8_down3": {"input": "u8.tif", "ops": [{"op": "downsample", "factor": 3}],
                     "tile": 96, "fuse": False, "output_options": {"tile": 32}},
        "u16x6_down3": {"input": "u16x6.tif", "ops": [{"op": "downsample", "factor": 3}],
                        "tile": 192, "output_options": {"tile": 64}},
        "f32_nan_down2": {"input": "f32_nan.tif", "ops": [{"op": "downsample", "factor": 2}],
                          "tile": 64, "fuse": False, "output_options": {"tile": 32}},
        "white": {"input": "white.tif", "ops": [], "output_options": pyr},
        "bilevel": {"input": "bilevel.tif", "ops": []},
        "palette_rgb": {"input": "palette.tif", "ops": BLUR},
        # band ops: an index (no-data NaN where a band had none), a false-colour composite
        "u16x6_ndvi": {"input": "u16x6.tif", "ops": [NDVI], "output_options": pyr},
        "u16x6_ndvi_split": {"input": "u16x6.tif", "fuse": False, "ops": [
            {"op": "select_bands", "bands": [4, 1]},
            {"op": "normalized_difference", "a": 0, "b": 1}, *BLUR],
            "output_options": {**pyr, "compression": "deflate"}},
        "u16x6_rgb": {"input": "u16x6.tif", "ops": [{"op": "select_bands", "bands": [3, 2, 1]}],
                      "output_options": pyr},
        # the index as bytes for viewers: 1..255, no data 0
        "u16x6_ndvi_byte": {"input": "u16x6.tif", "ops": [
            NDVI, {"op": "convert", "dtype": "uint8", "in_range": [-1, 1], "nodata": 0}],
            "output_options": {**pyr, "compression": "deflate"}},
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {**job, "input": str(root / job["input"]), "output": str(root / "out" / f"{n}.tif")}
        for n, job in jobs.items()]}))
    out, err = io.StringIO(), io.StringIO()
    work = root / "work"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet", "--keep-work", "--work", str(work)])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    outputs = {n: Path(job["output"]) for n, job in zip(jobs, report["jobs"], strict=True)}
    return {"root": root, "work": work, "outputs": outputs,
            "jobs": {n: i for i, n in enumerate(jobs)}}


def _read(path: Path | str, **kwargs: Any) -> tuple[Any, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, **kwargs) as ds:
            return (ds.profile | {"overviews": ds.overviews(1), "crs": ds.crs},
                    np.moveaxis(ds.read(), 0, -1))


@pytest.mark.parametrize("name,dtype,bands,nodata", [
    ("f32", "float32", 1, -9999), ("f64_nan", "float64", 1, np.nan),
    ("u16x6", "uint16", 6, 0), ("i16", "int16", 1, -32768), ("rgb_jpeg", "uint8", 3, None),
    ("u16x6_ndvi", "float32", 1, np.nan), ("u16x6_ndvi_split", "float32", 1, np.nan),
    ("u16x6_rgb", "uint16", 3, 0)])
def test_gdal_reads_georeferencing_nodata_bands_and_overviews(run, name, dtype, bands, nodata):
    path = run["outputs"][name]
    profile, pixels = _read(path)
    assert profile["crs"].to_epsg() == 32611
    assert tuple(profile["transform"])[:6] == TRANSFORM
    assert profile["count"] == bands and profile["dtype"] == dtype
    if nodata is None:
        assert profile["nodata"] is None
    else:
        assert np.array_equal(profile["nodata"], nodata, equal_nan=True)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        levels = [sub.asarray() for sub in page.pages]
        want = page.asarray()
    # every SubIFD level is an overview to GDAL, with the levels' pixels
    assert profile["overviews"] == [2 ** (k + 1) for k in range(len(levels))]
    assert len(levels) >= 3
    if name == "rgb_jpeg":  # GDAL's libjpeg decodes the same tiles a few levels apart
        assert np.abs(pixels.astype(int) - want).max() <= 32
        return
    np.testing.assert_array_equal(pixels.reshape(want.shape), want)
    for k, level in enumerate(levels):
        _, overview = _read(path, overview_level=k)
        np.testing.assert_array_equal(overview.reshape(level.shape), level)


@pytest.mark.parametrize("name", ["f32", "f64_nan", "u16x6", "i16", "u16x6_ndvi",
                                  "u16x6_ndvi_split", "u16x6_rgb"])
def test_overviews_keep_nodata_out_of_their_means_as_gdal_does(run, name, tmp_path):
    """No overview pixel mixes no-data and data: every level's valid values lie within the
    page's, and a pixel is no-data exactly where its block holds no valid pixel. Where
    GDAL's overview of the same pixels has the same geometry (the factor divides the page's
    sides: GDAL maps its blocks by the size ratio, tiffpipe halves level by level), it is
    no-data at the same pixels and within rounding of the same values."""
    path = run["outputs"][name]
    profile, base = _read(path)
    nodata = profile["nodata"]
    count = len(profile["overviews"])
    # GDAL's own average overviews of the same pixels, as gdaladdo makes them
    ours = tmp_path / "gdal.tif"
    keep = ("driver", "dtype", "nodata", "width", "height", "count", "crs", "transform")
    with rasterio.open(ours, "w", **{k: profile[k] for k in keep}) as ds:
        ds.write(np.moveaxis(base, -1, 0))
        ds.build_overviews([2 ** (k + 1) for k in range(count)], Resampling.average)

    def missing(a: np.ndarray) -> np.ndarray:
        return np.isnan(a) if np.isnan(nodata) else a == nodata

    valid = base[~missing(base)]
    low, high = valid.min(), valid.max()
    above = missing(base)
    for k in range(count):
        _, got = _read(path, overview_level=k)
        h, w = above.shape[:2]
        pad = np.ones((h + h % 2, w + w % 2, above.shape[2]), bool)
        pad[:h, :w] = above
        want = pad[0::2, 0::2] & pad[1::2, 0::2] & pad[0::2, 1::2] & pad[1::2, 1::2]
        np.testing.assert_array_equal(missing(got), want, err_msg=f"level {k + 1}")
        assert want.any() and not want.all()
        assert low <= got[~want].min() and got[~want].max() <= high  # no no-data mixed in
        if profile["width"] % 2 ** (k + 1) == 0 and profile["height"] % 2 ** (k + 1) == 0:
            _, gdal = _read(ours, overview_level=k)
            np.testing.assert_array_equal(missing(gdal), want, err_msg=f"level {k + 1}")
            assert np.abs(got[~want].astype(float) - gdal[~want]).max() <= 1.0
        above = want


def test_merge_builds_the_same_levels_as_the_units(run, monkeypatch):
    """The levels merge builds itself (UNIT_LEVELS off) leave no-data out as the units' do:
    the same bytes."""
    name = "u16x6"
    out = run["outputs"][name]
    before = out.read_bytes()
    out.unlink()
    monkeypatch.setattr(merge_mod, "UNIT_LEVELS", False)
    forget_plans()
    try:
        merge_mod.merge(MergeEvent(layout.plan_file(str(
            run["work"] / "jobs" / f"{run['jobs'][name]:05d}"))))
    finally:
        forget_plans()
    assert out.read_bytes() == before


def test_a_chain_that_remaps_values_drops_nodata_and_averages_every_pixel(run):
    # a threshold's output has no no-data value (its 0 is data): its levels are plain means
    path = run["outputs"]["i16_threshold"]
    profile, _ = _read(path)
    assert profile["nodata"] is None
    with tifffile.TiffFile(path) as tf:
        base, first = tf.pages[0].asarray(), tf.pages[0].pages[0].asarray()
    np.testing.assert_array_equal(first, reduce2(base[..., None])[..., 0])


def test_a_normalized_difference_is_nan_where_a_band_had_no_data(run):
    """GDAL reads the index of the input it reads: (b3 - b2) / (b3 + b2) in float64, as
    float32, NaN wherever either band holds the input's no-data value (0), GDAL_NODATA nan;
    the false-colour composite keeps the input's 0 and is RGB."""
    _, scene = _read(run["root"] / "u16x6.tif")
    _, got = _read(run["outputs"]["u16x6_ndvi"])
    a, b = scene[..., 3].astype(np.float64), scene[..., 2].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = ((a - b) / (a + b)).astype(np.float32)
    want[(a == 0) | (b == 0)] = np.nan
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(got[..., 0], want)
    with rasterio.open(run["outputs"]["u16x6_ndvi"]) as ds:
        assert np.isnan(ds.nodata) and ds.colorinterp[0].name == "gray"
        # GDAL's mask of the band: no data exactly where the index is NaN
        np.testing.assert_array_equal(ds.read_masks(1) == 0, np.isnan(want))
    with rasterio.open(run["outputs"]["u16x6_rgb"]) as ds:
        assert ds.nodata == 0 and [c.name for c in ds.colorinterp] == ["red", "green", "blue"]
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), scene[..., [3, 2, 1]])


def test_a_converted_index_is_bytes_with_its_nodata_marked(run):
    """NDVI converted to uint8 (-1..1 to 1..255, no data 0): GDAL reads GDAL_NODATA 0 and
    masks exactly the pixels where a band had no data, keeps the georeferencing, and sees
    the pyramid as uint8 overviews."""
    _, scene = _read(run["root"] / "u16x6.tif")
    a, b = scene[..., 3].astype(np.float64), scene[..., 2].astype(np.float64)
    none = (a == 0) | (b == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        index = ((a - b) / (a + b)).astype(np.float32).astype(np.float64)
    want = np.clip(np.rint(1 + (index + 1) / 2 * 254), 1, 255)
    want[none] = 0
    with rasterio.open(run["outputs"]["u16x6_ndvi_byte"]) as ds:
        assert (ds.nodata, ds.dtypes[0], ds.crs.to_epsg()) == (0, "uint8", 32611)
        assert tuple(ds.transform)[:6] == TRANSFORM and ds.overviews(1)
        np.testing.assert_array_equal(ds.read(1), want.astype(np.uint8))
        np.testing.assert_array_equal(ds.read_masks(1) == 0, none)


def test_a_downsample_keeps_the_scene_where_it_is(run):
    profile, _ = _read(run["outputs"]["f32_down"])
    assert tuple(profile["transform"])[:6] == (60.0, 0.0, 440720.0, 0.0, -60.0, 3751320.0)
    assert profile["nodata"] == -9999 and profile["crs"].to_epsg() == 32611


@pytest.mark.parametrize("name,f", [("f32_down", 2), ("u8_down3", 3), ("u16x6_down3", 3),
                                    ("f32_nan_down2", 2)])
def test_a_downsample_leaves_nodata_out_of_its_means_as_gdal_does(run, name, f):
    """A downsampled page with a no-data value is GDAL's average resampling of the input
    (rasterio's read with ``out_shape``, as ``gdal_translate -r average``): each sample the
    rounded mean of its block's samples that are not no-data, no-data where none is, bit
    for bit, in tiles and batches; before, the no-data value was averaged in as data."""
    path = run["outputs"][name]
    want, _ = gdal_average(run["root"] / f"{name.split('_down')[0]}.tif", f)
    profile, got = _read(path)
    assert profile["nodata"] is not None
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    none = np.isnan(want) if np.isnan(profile["nodata"]) else want == profile["nodata"]
    assert none.any() and not none.all()


def random_block(dtype: str, nodata: float, shape: tuple[int, ...]) -> np.ndarray:
    """Samples over the type's whole range (floats: wide), a share of them ``nodata``, its
    top-left corner all ``nodata``."""
    rng = np.random.default_rng(3)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        block = rng.normal(0, 1000, shape).astype(dt)
    else:
        info = np.iinfo(dt)
        block = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    block[rng.random(shape) < 0.4] = nodata
    block[:2, :2] = nodata
    return block


def valid_mean(block: np.ndarray, f: int, y: int, x: int, c: int, nodata: float,
               mask: np.ndarray | None = None) -> Any:
    """The documented mean of sample c of the f x f block (y, x), written out: over the
    samples present that are not no-data (and valid in ``mask``), floats summed block
    column by block column in float64 and divided by n, integers ``(s + n // 2) // n``;
    no-data where there is none."""
    dt = block.dtype
    good = [block[yy, xx, c] for xx in range(f * x, f * x + f) for yy in range(f * y, f * y + f)
            if yy < block.shape[0] and xx < block.shape[1]
            and not (np.isnan(block[yy, xx, c]) if np.isnan(nodata) else block[yy, xx, c] == nodata)
            and (mask is None or mask[yy, xx])]
    if not good:
        return dt.type(nodata)
    if dt.kind == "f":
        total = np.float64(good[0])
        for v in good[1:]:
            total = total + np.float64(v)
        return dt.type(total / len(good))
    return dt.type((sum(int(v) for v in good) + len(good) // 2) // len(good))


@pytest.mark.parametrize("dtype,nodata", [
    ("uint8", 0), ("int16", -32768), ("uint32", 7), ("int64", -9), ("uint64", 2 ** 64 - 1),
    ("float32", -9999.0), ("float64", np.nan)])
def test_reduce2_with_nodata_is_the_mean_of_the_valid_samples(dtype, nodata):
    """Each sample of a level pixel: the documented mean (integers ``(s + n // 2) // n``,
    floats ``((p00 + p10) + p01) + p11`` in float64 divided by n) over the n samples present
    that are not no-data, no-data where there is none; the same as without no-data when a
    block holds none (64-bit integers exact near their limits)."""
    shape = (7, 9, 2)
    dt = np.dtype(dtype)
    block = random_block(dtype, nodata, shape)
    got = reduce2(block, nodata=nodata)
    assert got.dtype == dt and got.shape == (4, 5, 2)
    for y, x, c in np.ndindex(got.shape):
        want = valid_mean(block, 2, y, x, c, nodata)
        assert np.array_equal(got[y, x, c], want, equal_nan=True), (y, x, c)
    plain = block.copy()
    plain[np.isnan(plain) if np.isnan(nodata) else plain == nodata] = 1
    np.testing.assert_array_equal(reduce2(plain, nodata=nodata), reduce2(plain))


@pytest.mark.parametrize("dtype,nodata", [
    ("uint8", 0), ("int16", -32768), ("uint16", 65535), ("int64", -9), ("uint64", 2 ** 64 - 1),
    ("float32", -9999.0), ("float32", np.nan)])
@pytest.mark.parametrize("f", [3, 4])
def test_masked_mean_of_larger_blocks_is_the_mean_of_the_valid_samples(dtype, nodata, f):
    """What a ``downsample`` by f makes of a page with no-data or a mask
    (``reduce.masked_mean``): the same mean as the levels' over f x f blocks, a mask's
    invalid pixels left out too, exact for 64-bit integers near their limits; blocks of
    more samples than a 16-bit sum holds (17 x 17 of 255) do not overflow, nor the largest
    of 16-bit samples (64 x 64 of 65535, of -32768)."""
    from pipeline.core.reduce import masked_mean

    block = random_block(dtype, nodata, (11, 13, 2))
    mask = np.random.default_rng(4).random((11, 13)) > 0.3
    for m in (None, mask):
        got = masked_mean(block, f, nodata, m)
        assert got.dtype == block.dtype and got.shape == (-(-11 // f), -(-13 // f), 2)
        for y, x, c in np.ndindex(got.shape):
            want = valid_mean(block, f, y, x, c, nodata, m)
            assert np.array_equal(got[y, x, c], want, equal_nan=True), (m is None, y, x, c)
    assert (masked_mean(np.full((17, 17), 255, np.uint8), 17) == 255).all()
    assert (masked_mean(np.full((64, 64), 65535, np.uint16), 64) == 65535).all()
    assert (masked_mean(np.full((64, 64), -32768, np.int16), 64, 0) == -32768).all()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_a_downsample_by_2_of_valid_blocks_is_the_exact_rounded_mean(dtype, channels):
    """``downsample`` by 2 of a page with no-data whose blocks are all valid (most of such a
    page) takes OpenCV's area resize for 8 and 16-bit integers of 1, 3 or 4 channels
    (``reduce.masked_mean``'s ``area2``): the mean ``(s + 2) // 4`` sample for sample, as
    the sums of ``masked_mean`` alone give it, the type's extremes included; 2 channels
    (which OpenCV rounds otherwise) take the sums."""
    from pipeline.core.op_functions import downsample
    from pipeline.core.reduce import OPENCV_MEAN4, masked_mean

    info = np.iinfo(dtype)
    assert np.dtype(dtype).str[1:] in OPENCV_MEAN4
    rng = np.random.default_rng(channels)
    shape = (64, 96, channels)  # (one band as (h, w, 1), as the tiles hold it)
    block = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    block[:8] = rng.choice([info.min, info.max], (8,) + shape[1:])  # sums at the limits
    nodata = 7
    block[block == nodata] = 8  # present nowhere: every sample valid
    wide = block.astype(np.int64)
    want = (wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2] + 2) // 4
    for b, w in ((block, want), (block[..., 0], want[..., 0])):  # (h, w) too
        for got in (downsample(b, {"factor": 2, "input_nodata": nodata}),
                    masked_mean(b, 2, nodata)):
            assert got.dtype == b.dtype and got.shape == w.shape
            np.testing.assert_array_equal(got, w.astype(dtype))


def test_a_converted_page_keeps_its_nodata_pixels_marked(run):
    # miniswhite becomes minisblack (65535 - v): its no-data 0 becomes 65535, and the levels
    # leave those pixels out; a bilevel page's 1 (black, as white is 0) becomes 0
    profile, pixels = _read(run["outputs"]["white"])
    assert profile["nodata"] == 65535
    with tifffile.TiffFile(run["root"] / "white.tif") as tf:
        stored = tf.pages[0].asarray()
    np.testing.assert_array_equal(pixels[..., 0] == 65535, stored == 0)
    with tifffile.TiffFile(run["outputs"]["white"]) as tf:
        base, first = tf.pages[0].asarray(), tf.pages[0].pages[0].asarray()
    np.testing.assert_array_equal(first, reduce2(base[..., None], nodata=65535)[..., 0])
    assert np.all(first[:50, :101] == 65535) and first[60, 150] != 65535
    profile, pixels = _read(run["outputs"]["bilevel"])
    assert profile["nodata"] == 0
    with tifffile.TiffFile(run["root"] / "bilevel.tif") as tf:
        stored = tf.pages[0].asarray()
    np.testing.assert_array_equal(pixels[..., 0] == 0, stored)


def test_a_palette_page_made_rgb_drops_its_nodata_index(run):
    # index 0 says nothing of the RGB pixels it became (no one RGB value marks them)
    profile, _ = _read(run["outputs"]["palette_rgb"])
    assert profile["nodata"] is None and profile["count"] == 3
    assert profile["crs"].to_epsg() == 32611
