"""The ops that remap values (contrast stretches, a threshold, an index, a convert) as a GIS
analyst sees their outputs in QGIS: real GeoTIFFs written by rasterio (GDAL), run through the
real tiled path (split, statistics rounds, process, merge) and read back by rasterio, for
their no-data value (GDAL_NODATA), band descriptions, scales and offsets.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
from rasterio.transform import Affine
from test_exactness import assert_identical, run_tiled

#: a UTM scene, 10 m pixels (EPSG:32633)
CRS, TRANSFORM = "EPSG:32633", Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 5100000.0)


def write_scene(path: Path, bands: np.ndarray, nodata: float | None, *,
                descriptions: tuple[str, ...] = (), scales: tuple[float, ...] = (),
                offsets: tuple[float, ...] = ()) -> Path:
    """A tiled GeoTIFF written by GDAL: ``bands`` (count, height, width)."""
    count, height, width = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=bands.dtype, crs=CRS, transform=TRANSFORM, nodata=nodata,
                       tiled=True, blockxsize=32, blockysize=32) as ds:
        ds.write(bands)
        for i, text in enumerate(descriptions, 1):
            ds.set_band_description(i, text)
        if scales:
            ds.scales = scales
        if offsets:
            ds.offsets = offsets
    return path


def read(path: Path | str) -> tuple[dict[str, Any], np.ndarray]:
    """What GDAL reads of an output: its no-data value, band descriptions, scales and offsets,
    and its pixels (count, height, width)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ({"nodata": ds.nodata, "descriptions": ds.descriptions,
                     "scales": ds.scales, "offsets": ds.offsets, "crs": ds.crs,
                     "dtype": ds.dtypes[0]}, ds.read())


def run(tmp_path: Path, src: Path, ops: list[dict[str, Any]]) -> tuple[dict[str, Any],
                                                                        np.ndarray]:
    """The job through the tiled path (tiles of 64, a statistics round over several units),
    its output as GDAL reads it."""
    _pages, plan = run_tiled(tmp_path, src, ops, 64, 32, fuse=False, units="small")
    assert plan.tiles > 4
    return read(plan.spec.output)


def collar_scene(dtype: str, nodata: int, height: int = 150, width: int = 211) -> np.ndarray:
    """A scene (one band) whose left third is outside the swath, at ``nodata``; its data a
    ramp with noise over most of the type's range, holding no ``nodata``."""
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (yy / height + xx / width) / 2 * (top * 0.7) + top * 0.1
    page = np.clip(ramp + rng.normal(0, top * 0.03, ramp.shape), 1, top - 1).astype(dtype)
    page[page == nodata] += 1
    page[:, :70] = nodata
    return page[None]


def stretch(data: np.ndarray, p_low: float, p_high: float, top: int) -> np.ndarray:
    """percentile_stretch's formula on the pixels with data (float64)."""
    lo, hi = (float(np.percentile(data, p, method="lower")) for p in (p_low, p_high))
    return np.clip(np.rint((data.astype(np.float64) - lo) / (hi - lo) * top), 0, top)


# --- no-data through the histogram ops ---------------------------------------------------


def test_a_stretch_then_a_convert_keeps_the_collar_no_data(tmp_path):
    """A Sentinel-2 tile's collar (GDAL_NODATA 0) stays no-data through percentile_stretch:
    its pixels are written back as 0 and GDAL_NODATA 0 is kept, so the convert after it
    maps them to its own no-data value (0) and QGIS shows the collar as transparent. Before,
    the collar came out as 1 (data) with GDAL_NODATA 0. The data pixels that the stretch
    sends to 0 (those at or below the low percentile) are sent to 1 instead: they stay
    data."""
    scene = collar_scene("uint16", 0)
    src = write_scene(tmp_path / "s2.tif", scene, 0)
    none = scene[0] == 0
    meta, got = run(tmp_path, src, [{"op": "percentile_stretch", "p_low": 2, "p_high": 98}])
    assert meta["nodata"] == 0 and meta["crs"].to_epsg() == 32633
    want = stretch(scene[0][~none], 2, 98, 65535)
    assert (want == 0).sum() > 50  # (data the stretch sends onto the no-data value)
    want[want == 0] = 1
    assert (got[0][none] == 0).all()
    assert_identical(got[0][~none], want.astype(np.uint16), "stretched data")
    meta, got = run(tmp_path, src, [{"op": "percentile_stretch", "p_low": 2, "p_high": 98},
                                    {"op": "convert", "dtype": "uint8", "nodata": 0}])
    assert meta["nodata"] == 0 and meta["dtype"] == "uint8"
    assert (got[0][none] == 0).all() and (got[0][~none] >= 1).all()


@pytest.mark.parametrize("dtype,nodata", [("uint8", 255), ("int16", -32768), ("uint16", 500)])
def test_percentile_stretch_writes_the_no_data_pixels_back(tmp_path, dtype, nodata):
    """Whatever the no-data value (the type's top, its bottom, one among the data's), its
    pixels keep it, GDAL_NODATA is kept, and the data are stretched as without them; a data
    pixel the stretch would send onto the no-data value goes to the next value (one below
    the type's maximum, else one above)."""
    scene = collar_scene(dtype, nodata)
    src = write_scene(tmp_path / "collar.tif", scene, nodata)
    none = scene[0] == nodata
    meta, got = run(tmp_path, src, [{"op": "percentile_stretch", "p_low": 1, "p_high": 99}])
    assert meta["nodata"] == nodata
    top = np.iinfo(dtype).max
    want = stretch(scene[0][~none], 1, 99, top)
    want[want == nodata] = nodata - 1 if nodata == top else nodata + 1
    assert (got[0][none] == nodata).all()
    assert_identical(got[0][~none], want.astype(dtype), "stretched data")


def test_equalize_hist_and_otsu_keep_the_no_data_pixels(tmp_path):
    """equalize_hist writes the collar back as 0 and moves the data it would send to 0 to 1;
    otsu_threshold's classes stay 0 and 255 (a 1-bit output stays possible), so with a
    no-data value of 0 the class below its threshold reads as no-data too, as GDAL's own
    gdal_translate -scale lets data fall on the no-data value."""
    import cv2

    scene = collar_scene("uint8", 0)
    src = write_scene(tmp_path / "collar8.tif", scene, 0)
    none = scene[0] == 0
    data = scene[0][~none].reshape(1, -1)
    meta, got = run(tmp_path, src, [{"op": "equalize_hist"}])
    assert meta["nodata"] == 0
    want = cv2.equalizeHist(data).ravel()
    assert (want == 0).any()
    want[want == 0] = 1
    assert (got[0][none] == 0).all()
    assert_identical(got[0][~none], want, "equalized data")
    meta, got = run(tmp_path, src, [{"op": "otsu_threshold"}])
    assert meta["nodata"] == 0
    t, _ = cv2.threshold(data, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    assert_identical(got[0], np.where(scene[0] > t, 255, 0).astype(np.uint8), "otsu")


def test_a_convert_that_drops_the_no_data_value_says_so(tmp_path, capsys):
    """A convert to an integer type without "nodata" of a page with a no-data value (a
    GeoTIFF's GDAL_NODATA 0 kept through a stretch; an index's NaN) writes the collar as
    data under no GDAL_NODATA: the job's result now says so and what to give, where nothing
    did (``validate --inputs`` and the run tell the plan's note). Not of a convert with a
    "nodata", to a float type, or of a page without a no-data value."""
    from pipeline import cli

    scene = collar_scene("uint16", 0)
    src = write_scene(tmp_path / "s2.tif", scene, 0)
    two = write_scene(tmp_path / "nir_red.tif", np.concatenate([scene, scene // 2]), 0)
    write_scene(tmp_path / "plain.tif", scene, None)  # (no GDAL_NODATA: nothing to say)
    stretch8 = [{"op": "percentile_stretch"}, {"op": "convert", "dtype": "uint8"}]
    jobs = [{"input": "s2.tif", "output": "a.tif", "ops": stretch8},
            {"input": "nir_red.tif", "output": "b.tif",
             "ops": [{"op": "normalized_difference", "a": 0, "b": 1},
                     {"op": "convert", "dtype": "int16", "in_range": [-1, 1]}]},
            {"input": "s2.tif", "output": "c.tif",
             "ops": [{"op": "convert", "dtype": "uint8", "nodata": 0}]},
            {"input": "s2.tif", "output": "d.tif",
             "ops": [{"op": "convert", "dtype": "float32", "in_range": [0, 65535]}]},
            {"input": "plain.tif", "output": "e.tif", "ops": stretch8}]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        (f'  jobs[0] ({src}): ops[1] (convert) to uint8 has no "nodata": the no-data value 0 '
         "(page 0) is converted as data and the output has no GDAL_NODATA, so GDAL and QGIS "
         'show the no-data area as data; give it "nodata": 0 to keep it (the no-data area 0, '
         "the data 1..255)"),
        (f'  jobs[1] ({two}): ops[1] (convert) to int16 has no "nodata": the no-data value NaN '
         "(page 0) is converted as data and the output has no GDAL_NODATA, so GDAL and QGIS "
         'show the no-data area as data; give it "nodata": -32768 to keep it (the no-data area '
         "-32768, the data -32767..32767)")]
    # what it says: the collar written as data (0, the stretch's low end's too), no GDAL_NODATA
    meta, got = run(tmp_path, src, stretch8)
    assert meta["nodata"] is None and (got[0][scene[0] == 0] == 0).all()


# --- normalize: the no-data value out of its minimum and maximum ---------------------------


def dem(dtype: str, nodata: float) -> np.ndarray:
    """A DEM (metres, 120..1850) whose corner and a lake are outside the survey
    (``nodata``)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:150, 0:211]
    page = 120 + yy * 7.5 + xx * 3 + rng.normal(0, 4, yy.shape)
    page = page.astype(dtype)
    page[:40, :90] = nodata
    page[100:120, 150:190] = nodata
    return page[None]


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "int32"])
def test_normalize_leaves_the_no_data_value_out(tmp_path, dtype):
    """A DEM with GDAL_NODATA -9999 is scaled from its data's minimum and maximum (before:
    from -9999, the data squeezed into 0.93..1), the -9999 pixels stay -9999 and GDAL_NODATA
    -9999 is kept; the data are OpenCV's normalize of the data alone."""
    import cv2

    scene = dem(dtype, -9999)
    src = write_scene(tmp_path / "dem.tif", scene, -9999)
    none = scene[0] == -9999
    meta, got = run(tmp_path, src, [{"op": "normalize"}])
    assert meta["nodata"] == -9999
    top = 1 if scene.dtype.kind == "f" else np.iinfo(dtype).max
    want = cv2.normalize(scene[0][~none].reshape(1, -1), None, 0, top, cv2.NORM_MINMAX)
    assert abs(want.min()) < 1e-6 and abs(want.max() - top) < 1e-6  # (the data's span)
    assert (got[0][none] == -9999).all()
    assert_identical(got[0][~none], want.ravel(), "normalized data")


def test_normalize_moves_data_off_a_no_data_value_of_0(tmp_path):
    """uint16 with no-data 0 (the table path): the data's minimum would become 0, the no-data
    value; it becomes 1, and the collar stays 0 under GDAL_NODATA 0."""
    import cv2

    scene = collar_scene("uint16", 0)
    src = write_scene(tmp_path / "u16.tif", scene, 0)
    none = scene[0] == 0
    meta, got = run(tmp_path, src, [{"op": "normalize"}])
    assert meta["nodata"] == 0
    want = cv2.normalize(scene[0][~none].reshape(1, -1), None, 0, 65535,
                         cv2.NORM_MINMAX).ravel()
    assert (want == 0).any()
    want[want == 0] = 1
    assert (got[0][none] == 0).all()
    assert_identical(got[0][~none], want, "normalized data")


def test_normalize_keeps_nan_as_nan_under_gdal_nodata_nan(tmp_path):
    """A float page whose no-data value is NaN: NaN stays NaN, GDAL_NODATA nan is kept."""
    scene = dem("float32", np.nan)
    src = write_scene(tmp_path / "nan.tif", scene, np.nan)
    meta, got = run(tmp_path, src, [{"op": "normalize"}])
    assert np.isnan(meta["nodata"])
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(scene[0]))
    assert abs(np.nanmin(got)) < 1e-6 and abs(np.nanmax(got) - 1) < 1e-6


def test_normalize_moves_float_data_off_a_no_data_value_in_its_range():
    """A float page whose no-data value is one normalize makes (1.0, the data's maximum's
    image): that data pixel becomes the float below it, the no-data pixels stay 1.0."""
    from pipeline.core.ops import OPS

    page = np.array([[5.0, 1.0, 7.0, 9.0, 1.0]], np.float32)
    got = OPS["normalize"].apply(page, {"input_nodata": 1.0})
    below = np.nextafter(np.float32(1), np.float32(0))
    np.testing.assert_array_equal(got, np.array([[0.0, 1.0, 0.5, below, 1.0]], np.float32))


# --- the band description of an index -------------------------------------------------


def s2_stack(with_names: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """Sentinel-2's B02, B03, B04, B08 as one 4-band uint16 stack (no-data 0)."""
    rng = np.random.default_rng(9)
    bands = rng.integers(200, 6000, (4, 90, 130)).astype(np.uint16)
    bands[:, :20, :30] = 0
    return bands, ("B02", "B03", "B04", "B08") if with_names else ()


@pytest.mark.parametrize("ops,want", [
    ([{"op": "normalized_difference", "a": 3, "b": 2}], "(B08 - B04) / (B08 + B04)"),
    ([{"op": "select_bands", "bands": [2, 3]}, {"op": "normalized_difference", "a": 1, "b": 0},
      {"op": "convert", "dtype": "uint8", "in_range": [-1, 1], "nodata": 0}],
     "(B08 - B04) / (B08 + B04)"),
    ([{"op": "normalized_difference", "a": 1, "b": 3}], "(B03 - B08) / (B03 + B08)"),
])
def test_an_index_band_is_described_by_its_input_bands(tmp_path, ops, want):
    """GDAL (and QGIS's layer properties) shows the index band's description, made of the
    input bands' descriptions, through a select_bands before it and a convert after it;
    before, the band had none."""
    bands, names = s2_stack(True)
    src = write_scene(tmp_path / "s2.tif", bands, 0, descriptions=names)
    meta, got = run(tmp_path, src, ops)
    assert meta["descriptions"] == (want,) and got.shape[0] == 1


def test_an_index_band_of_unnamed_bands_is_described_by_their_numbers(tmp_path):
    """Input bands without descriptions are named by the numbers GDAL and QGIS show (1-based:
    the op's ``a`` 3 is "band 4"), through a select_bands before the index too."""
    bands, _ = s2_stack(False)
    src = write_scene(tmp_path / "stack.tif", bands, 0)
    meta, _ = run(tmp_path, src, [{"op": "normalized_difference", "a": 3, "b": 2}])
    assert meta["descriptions"] == ("(band 4 - band 3) / (band 4 + band 3)",)
    meta, _ = run(tmp_path, src, [{"op": "select_bands", "bands": [3, 2]},
                                  {"op": "normalized_difference", "a": 0, "b": 1}])
    assert meta["descriptions"] == ("(band 4 - band 3) / (band 4 + band 3)",)


# --- band scales and offsets through a convert ------------------------------------------

#: Sentinel-2 L2A since 2022: reflectance = 0.0001 * count - 0.1
L2A = {"scales": (0.0001,), "offsets": (-0.1,)}
#: the docs' recipe: uint16 counts to float32 reflectance, nothing clipped
TO_REFLECTANCE = {"op": "convert", "dtype": "float32", "in_range": [0, 65535],
                  "out_range": [-0.1, 6.4535]}


@pytest.mark.parametrize("ops,scale,offset", [
    # the samples are the reflectances: scale 1 and offset 0, not 1.0000000000000002 and
    # 1.4e-17
    ([TO_REFLECTANCE], 1.0, 0.0),
    # inverted first (65535 - v): reflectance = -v' + 6.3535
    ([{"op": "invert"}, TO_REFLECTANCE], -1.0, 6.3535),
    # to bytes (v / 257): 0.0257 * v' - 0.1
    ([{"op": "convert", "dtype": "uint8"}], 0.0257, -0.1),
])
def test_a_convert_rescales_the_band_scale_and_offset_without_float_noise(tmp_path, ops,
                                                                          scale, offset):
    """The output's scale and offset, as GDAL reads them, are the exact values of the maps
    composed (the decimals the manifest and GDAL_METADATA give, composed as fractions and
    rounded once), so that the recipe's reflectances read as scale 1, offset 0."""
    bands = np.random.default_rng(4).integers(1, 12000, (1, 90, 150)).astype(np.uint16)
    src = write_scene(tmp_path / "l2a.tif", bands, None, **L2A)
    with rasterio.open(src) as ds:
        assert (ds.scales, ds.offsets) == ((0.0001,), (-0.1,))
    meta, got = run(tmp_path, src, ops)
    assert (meta["scales"], meta["offsets"]) == ((scale,), (offset,))
    physical = bands.astype(np.float64) * 0.0001 - 0.1
    step = abs(scale) / 2 if got.dtype.kind == "u" else 1e-6  # (to the output's rounding)
    np.testing.assert_allclose(got * scale + offset, physical, rtol=0, atol=step)
