"""GDAL's metadata tag (GDAL_METADATA, 42112: band names, scale and offset, units,
statistics, the scene's items) carried to the output where its items still hold: real
GeoTIFFs written by tifffile with the XML GDAL writes, run through the tiled path
in-process, read back by GDAL (rasterio) as a GIS analyst's tools read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as GIS tools read the outputs
import tifffile
from PIL import Image
from test_exactness import run_tiled

from pipeline.adapters.metadata import gdal_metadata, output_tags
from pipeline.adapters.tiff_read import read_infos
from pipeline.inspection import _kept

#: a UTM scene: 30 m pixels
GEO = [(33550, 12, 3, (30.0, 30.0, 0.0)),
       (33922, 12, 6, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0)),
       (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611))]
NAMES = ("Red", "Green", "NIR")


def band_items(b: int) -> str:
    return (f'  <Item name="DESCRIPTION" sample="{b}" role="description">{NAMES[b]}</Item>\n'
            f'  <Item name="SCALE" sample="{b}" role="scale">0.0001</Item>\n'
            f'  <Item name="OFFSET" sample="{b}" role="offset">-0.{b + 1}</Item>\n'
            f'  <Item name="UNITTYPE" sample="{b}" role="unittype">reflectance</Item>\n'
            f'  <Item name="STATISTICS_MINIMUM" sample="{b}">{b + 1}</Item>\n'
            f'  <Item name="STATISTICS_MAXIMUM" sample="{b}">{900 + b}</Item>\n'
            f'  <Item name="WAVELENGTH" sample="{b}">{(665, 560, 842)[b]}</Item>\n')


#: as GDAL writes it (gdal_translate with band descriptions, scale/offset, -stats, -mo)
XML = ('<GDALMetadata>\n  <Item name="ACQUISITION_DATE">2024-06-01</Item>\n'
       '  <Item name="CLOUD_COVER" domain="IMAGERY">3</Item>\n'
       '  <Item name="LINE_OFF" domain="RPC">100</Item>\n'
       + "".join(band_items(b) for b in range(3)) + "</GDALMetadata>\n")


def scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.integers(1, 1000, (70, 90, 3), dtype=np.uint16),
                     photometric="minisblack", planarconfig="contig", tile=(32, 32),
                     metadata=None, extratags=[*GEO, (42112, 2, 0, XML, True)])
    return src


def gdal_view(path: Path | str) -> dict[str, Any]:
    """What GDAL shows of a file's metadata."""
    with rasterio.open(path) as ds:
        return {"descriptions": ds.descriptions, "scales": ds.scales, "offsets": ds.offsets,
                "units": ds.units, "scene": ds.tags(),
                "imagery": ds.tags(ns="IMAGERY"),
                "bands": [{k: v for k, v in ds.tags(b).items()} for b in ds.indexes]}


def _xml(path: Path | str) -> bytes | None:
    """The tag's bytes as stored (tifffile's value is stripped)."""
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags.get(42112)
        if tag is None:
            return None
        tf.filehandle.seek(tag.valueoffset)
        return tf.filehandle.read(tag.valuebytecount)


BAND = [{"STATISTICS_MINIMUM": str(b + 1), "STATISTICS_MAXIMUM": str(900 + b),
         "WAVELENGTH": str((665, 560, 842)[b])} for b in range(3)]
NO_STATS = [{"WAVELENGTH": str((665, 560, 842)[b])} for b in range(3)]


def test_the_input_is_what_gdal_writes_and_reads(tmp_path):
    src = scene(tmp_path)
    (info,) = read_infos(str(src), None)
    assert _kept(info.metadata)[-2:] == ["GeoTIFF", "GDAL_METADATA"]  # (tiffpipe inspect)
    view = gdal_view(src)
    assert view["descriptions"] == NAMES and view["scales"] == (0.0001,) * 3
    assert view["offsets"] == (-0.1, -0.2, -0.3) and view["units"] == ("reflectance",) * 3
    assert view["scene"]["ACQUISITION_DATE"] == "2024-06-01"
    assert view["imagery"] == {"CLOUD_COVER": "3"} and view["bands"] == BAND


@pytest.mark.parametrize("ops,want", [
    # a copy: byte for byte
    ([], {"same": True}),
    # turned: every item holds but the RPC domain (it maps pixel positions)
    ([{"op": "rotate", "angle": 90}], {"bands": BAND, "rpc": False}),
    # values kept, but not each band's set of them: the statistics go
    ([{"op": "gaussian_blur", "sigma": 1.5}], {"bands": NO_STATS, "rpc": True}),
    ([{"op": "crop", "x": 3, "y": 4, "width": 40, "height": 30}],
     {"bands": NO_STATS, "rpc": False}),
    ([{"op": "downsample", "factor": 2}], {"bands": NO_STATS, "rpc": False}),
    # picked bands: each its own items, renumbered; a band picked twice has them twice
    ([{"op": "select_bands", "bands": [2, 0, 2]}], {"order": [2, 0, 2], "rpc": True}),
    # values remapped: only the band names stay
    ([{"op": "convert", "dtype": "uint8", "in_range": [0, 1000]}],
     {"names_only": True, "rpc": True}),
    ([{"op": "gamma", "gamma": 2.0}], {"names_only": True, "rpc": True}),
    # new bands: no band item holds but the index's own name, of its bands'; the scene's
    # items do
    ([{"op": "normalized_difference", "a": 2, "b": 0}], {"no_bands": True, "rpc": True}),
], ids=lambda v: repr(v)[:60])
def test_gdal_metadata_is_kept_where_it_still_holds(tmp_path, ops, want):
    src = scene(tmp_path)
    _, plan = run_tiled(tmp_path, src, ops, 64, 32 // (2 if ops and ops[0]["op"] ==
                                                         "downsample" else 1))
    out = plan.spec.output
    xml = _xml(out)
    if want.get("same"):
        assert xml == XML.encode() + b"\0"
        return
    assert (b'domain="RPC"' in xml) == want["rpc"]
    with Image.open(out) as im:  # Pillow (libtiff's tags) reads the same text
        assert im.tag_v2[42112].rstrip("\0") == xml.rstrip(b"\0").decode()
    view = gdal_view(out)
    assert view["scene"]["ACQUISITION_DATE"] == "2024-06-01"
    assert view["imagery"] == {"CLOUD_COVER": "3"}
    n = len(view["descriptions"])
    if want.get("no_bands"):
        a, b = NAMES[ops[0]["a"]], NAMES[ops[0]["b"]]
        assert n == 1 and view["descriptions"] == (f"({a} - {b}) / ({a} + {b})",)
        assert view["bands"] == [{}]
        assert view["scales"] == (1.0,) and view["offsets"] == (0.0,)
        return
    if want.get("names_only"):
        assert view["descriptions"] == NAMES and view["bands"] == [{}] * 3
        assert view["scales"] == (1.0,) * 3 and view["offsets"] == (0.0,) * 3
        assert view["units"] == (None,) * 3
        return
    order = want.get("order", [0, 1, 2])
    assert view["descriptions"] == tuple(NAMES[b] for b in order)
    assert view["offsets"] == tuple((-0.1, -0.2, -0.3)[b] for b in order)
    assert view["scales"] == (0.0001,) * n and view["units"] == ("reflectance",) * n
    assert view["bands"] == [want.get("bands", BAND)[b] for b in order]


def test_what_cannot_be_judged_is_dropped():
    """An XML that does not parse says nothing of what holds; a tag whose every item goes
    is not written."""
    import binascii

    def b64(text: str) -> str:
        return binascii.b2a_base64(text.encode(), newline=False).decode()

    assert gdal_metadata(b64("<GDALMetadata><Item"), (0,), True, True, False) is None
    only_stats = '<GDALMetadata><Item name="STATISTICS_MEAN" sample="0">4</Item></GDALMetadata>'
    assert gdal_metadata(b64(only_stats), (0,), True, False, False) is None
    assert gdal_metadata(b64(only_stats), (0,), True, True, False) == only_stats.encode()


@pytest.mark.parametrize("photometric,want", [
    # values inverted: the name stays, scale and offset are rescaled, the statistics go
    ("miniswhite", (b'role="description">Red<', b"STATISTICS_")),
    ("palette", (None, None, None)),  # an index made RGB: new bands
])
def test_a_page_the_reader_converts_keeps_what_still_holds(tmp_path, photometric, want):
    src = tmp_path / "c.tif"
    page = np.random.default_rng(4).integers(0, 255, (20, 30), dtype=np.uint8)
    kwargs = {"colormap": np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))} \
        if photometric == "palette" else {}
    tifffile.imwrite(src, page, photometric=photometric, metadata=None,
                     extratags=[(42112, 2, 0, XML, True)], **kwargs)
    (info,) = read_infos(str(src), None)
    tags = output_tags(info, 20, 30, info.channels, True, stats=True)
    xml = next((t[3] for t in tags.get("extratags", []) if t[0] == 42112), None)
    assert b"ACQUISITION_DATE" in xml
    kept, *gone = want
    if kept is None:
        assert b"sample=" not in xml
    else:
        assert kept in xml and all(g not in xml for g in gone)


def physical(path: Path | str) -> tuple[np.ndarray, dict[str, Any]]:
    """Each band's physical values as GDAL gives them (scale * value + offset), and its view."""
    with rasterio.open(path) as ds:
        values = ds.read().astype(np.float64)
        scales, offsets = np.array(ds.scales), np.array(ds.offsets)
    return values * scales[:, None, None] + offsets[:, None, None], gdal_view(path)


@pytest.mark.parametrize("ops,within", [
    # to float32 (v / 65535 in 0..1): float32's precision (2**-24) times the new scale
    ([{"op": "convert", "dtype": "float32", "in_range": [0, 65535]}], 2**-24 * 6.5535),
    # to uint8, 0 the no-data value (1..255): half an output step (the rounding), times the
    # input's scale
    ([{"op": "convert", "dtype": "uint8", "nodata": 0}], 0.0001 * 65535 / 254 / 2),
    # to int16 over a range wider than uint16's, then back to a float: both maps composed
    ([{"op": "convert", "dtype": "int16", "in_range": [-10, 65545]},
      {"op": "gaussian_blur", "sigma": 0.0001},
      {"op": "convert", "dtype": "float64", "in_range": [-32768, 32767],
       "out_range": [-5, 5]}], 0.0001 * 65555 / 65535 / 2),
], ids=["float32", "uint8-nodata", "int16-blur-float64"])
def test_a_convert_that_clips_nothing_keeps_each_bands_physical_values(tmp_path, ops,
                                                                        within):
    """out = a v + b for every uint16 value: a band's scale and offset become scale / a and
    offset - scale b / a, so GDAL's scale * out + offset is the input's physical value (to
    the output's rounding); the unit still holds, the band names too, the statistics not."""
    src = tmp_path / "wide.tif"
    pixels = np.random.default_rng(5).integers(0, 65536, (70, 90, 3), dtype=np.uint16)
    tifffile.imwrite(src, pixels, photometric="minisblack", planarconfig="contig",
                     tile=(32, 32), metadata=None, extratags=[*GEO, (42112, 2, 0, XML, True)])
    _, plan = run_tiled(tmp_path, src, ops, 64, 32)
    want, _ = physical(src)
    got, view = physical(plan.spec.output)
    assert np.abs(got - want).max() <= within * (1 + 1e-9)
    assert view["scales"] != (1.0,) * 3 and view["units"] == ("reflectance",) * 3
    assert view["descriptions"] == NAMES and view["bands"] == [{}] * 3


@pytest.mark.parametrize("ops", [
    # values outside in_range are clipped: their physical values are lost
    [{"op": "convert", "dtype": "uint8", "in_range": [0, 1000]}],
    # float pages: any in_range may clip
    [{"op": "convert", "dtype": "float32", "in_range": [0, 65535]},
     {"op": "convert", "dtype": "uint8", "in_range": [0, 1]}],
    # a map that is not linear after a linear one
    [{"op": "convert", "dtype": "uint8"}, {"op": "gamma", "gamma": 2.0}],
    # invert of a float page: 1 - v rounded to float32 loses a small value's digits
    [{"op": "convert", "dtype": "float32", "in_range": [0, 65535]}, {"op": "invert"}],
], ids=["clipped", "float-clipped", "then-gamma", "float-invert"])
def test_a_convert_that_may_clip_drops_scale_offset_and_unit(tmp_path, ops):
    _, plan = run_tiled(tmp_path, scene(tmp_path), ops, 64, 32)
    view = gdal_view(plan.spec.output)
    assert view["descriptions"] == NAMES and view["bands"] == [{}] * 3
    assert view["scales"] == (1.0,) * 3 and view["offsets"] == (0.0,) * 3
    assert view["units"] == (None,) * 3


@pytest.mark.parametrize("dtype,b", [("uint16", 65535), ("int16", -1), ("uint8", 255)])
def test_invert_of_integers_keeps_each_bands_physical_values(tmp_path, dtype, b):
    """invert maps every integer v to -v + b exactly (max - v unsigned, -1 - v signed): a
    band's scale and offset become -scale and offset + scale b, so GDAL's scale * out +
    offset is the input's physical value; the unit and band names still hold, the
    statistics not. Before, invert dropped scale, offset and unit."""
    src = tmp_path / "wide.tif"
    limits = np.iinfo(dtype)
    pixels = np.random.default_rng(6).integers(limits.min, limits.max, (70, 90, 3),
                                               dtype=dtype, endpoint=True)
    pixels[0, 0], pixels[0, 1] = limits.min, limits.max  # (both ends of the type)
    tifffile.imwrite(src, pixels, photometric="minisblack", planarconfig="contig",
                     tile=(32, 32), metadata=None, extratags=[*GEO, (42112, 2, 0, XML, True)])
    (got,), plan = run_tiled(tmp_path, src, [{"op": "invert"}], 64, 32)
    assert np.array_equal(got.astype(np.int64), b - pixels.astype(np.int64))
    want, _ = physical(src)
    out, view = physical(plan.spec.output)
    assert np.abs(out - want).max() <= 1e-9
    assert view["scales"] == (-0.0001,) * 3
    assert view["offsets"] == pytest.approx([-0.1 + 0.0001 * b, -0.2 + 0.0001 * b,
                                             -0.3 + 0.0001 * b], abs=1e-12)
    assert view["units"] == ("reflectance",) * 3
    assert view["descriptions"] == NAMES and view["bands"] == [{}] * 3


#: a thermal band with a unit but no scale or offset (its value is its physical value, in
#: kelvin), and a band with only a name (its values have no physical meaning to keep)
UNIT_ONLY = ('<GDALMetadata>\n'
             '  <Item name="UNITTYPE" sample="0" role="unittype">K</Item>\n'
             '  <Item name="DESCRIPTION" sample="1" role="description">Mask</Item>\n'
             '</GDALMetadata>\n')


def test_a_band_with_a_unit_only_keeps_its_physical_values_through_a_convert(tmp_path):
    """A band with a UNITTYPE but no SCALE or OFFSET has GDAL's 1 and 0: after v -> a v + b
    it gets scale 1 / a and offset -b / a, and keeps its unit, so GDAL reads the same
    physical values (uint16 -> uint8: within half an output step, 257 / 2 K). A band with
    none of them gets none. Before, the unit-only band lost its unit and read back as
    the 0..255 output values."""
    src = tmp_path / "kelvin.tif"
    pixels = np.random.default_rng(7).integers(0, 65536, (40, 50, 2), dtype=np.uint16)
    tifffile.imwrite(src, pixels, photometric="minisblack", planarconfig="contig",
                     tile=(32, 32), metadata=None,
                     extratags=[*GEO, (42112, 2, 0, UNIT_ONLY, True)])
    assert gdal_view(src)["units"] == ("K", None)
    _, plan = run_tiled(tmp_path, src, [{"op": "convert", "dtype": "uint8"}], 64, 32)
    want, _ = physical(src)
    got, view = physical(plan.spec.output)
    assert view["units"] == ("K", None) and view["descriptions"] == (None, "Mask")
    assert view["scales"] == pytest.approx((65535 / 255, 1.0)) and view["offsets"] == (0, 0)
    assert np.abs(got[0] - want[0]).max() <= 65535 / 255 / 2 * (1 + 1e-9)


#: a miniswhite band's scale, offset and unit (of the samples as stored: GDAL reads them so)
WHITE = ('<GDALMetadata>\n'
         '  <Item name="DESCRIPTION" sample="0" role="description">Depth</Item>\n'
         '  <Item name="SCALE" sample="0" role="scale">0.01</Item>\n'
         '  <Item name="OFFSET" sample="0" role="offset">-273.15</Item>\n'
         '  <Item name="UNITTYPE" sample="0" role="unittype">K</Item>\n'
         '  <Item name="STATISTICS_MAXIMUM" sample="0">65535</Item>\n'
         '</GDALMetadata>\n')


@pytest.mark.parametrize("ops,scale,within", [
    ([], -0.01, 1e-9),  # max - v only: exact
    ([{"op": "invert"}], 0.01, 1e-9),  # inverted back: the input's own values and items
    ([{"op": "convert", "dtype": "uint8"}], -0.01 * 257, 0.01 * 257 / 2),  # half a step
], ids=["copy", "invert", "uint8"])
def test_a_miniswhite_page_keeps_each_bands_physical_values(tmp_path, ops, scale, within):
    """GDAL reads a miniswhite page's samples as stored (not inverted) and applies its scale
    and offset to them; the reader makes the page minisblack (max - v), so the band's scale
    and offset are rescaled (a = -1, b = max: -scale, offset + scale max), then by the
    chain's own linear map: GDAL reads the output as the same physical values, with the
    unit and the band's name. Before, scale, offset and unit were dropped."""
    src = tmp_path / "white.tif"
    pixels = np.random.default_rng(8).integers(0, 65536, (40, 50), dtype=np.uint16)
    pixels[0, 0], pixels[0, 1] = 0, 65535
    tifffile.imwrite(src, pixels, photometric="miniswhite", tile=(32, 32), metadata=None,
                     extratags=[*GEO, (42112, 2, 0, WHITE, True)])
    with rasterio.open(src) as ds:  # (as stored: 0 is white, and not read as 65535)
        assert np.array_equal(ds.read(1), pixels)
    _, plan = run_tiled(tmp_path, src, ops, 64, 32)
    want, _ = physical(src)
    out, view = physical(plan.spec.output)
    with tifffile.TiffFile(plan.spec.output) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert np.abs(out - want).max() <= within * (1 + 1e-9)
    assert view["scales"] == pytest.approx((scale,), rel=1e-12)
    assert view["units"] == ("K",) and view["descriptions"] == ("Depth",)
    assert view["bands"] == [{}]


def _index(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x + y == 0, 0.0, (x - y) / (x + y)).astype(np.float32)


@pytest.mark.parametrize("ops", [
    [{"op": "normalized_difference", "a": 2, "b": 0}],
    # the bands picked first: their scales and offsets follow them
    [{"op": "select_bands", "bands": [1, 2, 0]}, {"op": "normalized_difference", "a": 1,
                                                   "b": 2}],
    # through a blur (values kept): the same scales and offsets
    [{"op": "median_blur", "ksize": 1 + 2}, {"op": "normalized_difference", "a": 2, "b": 0}],
], ids=["direct", "select_bands", "median"])
def test_normalized_difference_is_of_the_bands_physical_values(tmp_path, ops):
    """NDVI of a scene stored as counts with an offset (each band's GDAL scale 0.0001 and
    offset -0.1 to -0.3, as Sentinel-2 reflectances since 2022 and Landsat's): the index of
    the reflectances GDAL reads (scale * v + offset), not of the stored counts, which differ
    wherever the offset does not cancel. Before, it was the index of the counts."""
    src = scene(tmp_path)
    values, _ = physical(src)
    if ops[0]["op"] == "median_blur":
        with rasterio.open(src) as ds:
            counts, scales, offsets = ds.read(), np.array(ds.scales), np.array(ds.offsets)
        blurred = np.stack([cv2.medianBlur(np.ascontiguousarray(c), 3) for c in counts])
        values = blurred * scales[:, None, None] + offsets[:, None, None]
    (got,), _plan = run_tiled(tmp_path, src, ops, 64, 32, fuse=True)
    want = _index(values[2], values[0])
    np.testing.assert_array_equal(got, want)
    with rasterio.open(src) as ds:
        counts = ds.read().astype(np.float64)
    assert not np.array_equal(want, _index(counts[2], counts[0]))


def test_a_common_scale_without_offsets_gives_the_index_of_the_counts(tmp_path):
    """Bands of one scale and no offset: the scale cancels, and the index is the counts'
    own, bit for bit, as before."""
    src = tmp_path / "scaled.tif"
    xml = ("<GDALMetadata>\n" + "".join(
        f'  <Item name="SCALE" sample="{b}" role="scale">0.0001</Item>\n' for b in range(3))
        + "</GDALMetadata>\n")
    counts = np.random.default_rng(9).integers(0, 10000, (70, 90, 3), dtype=np.uint16)
    tifffile.imwrite(src, counts, photometric="minisblack", planarconfig="contig",
                     tile=(32, 32), metadata=None, extratags=[*GEO, (42112, 2, 0, xml, True)])
    (got,), _plan = run_tiled(tmp_path, src, [{"op": "normalized_difference", "a": 2, "b": 0}],
                              64, 32)
    c = counts.astype(np.float64)
    np.testing.assert_array_equal(got, _index(c[:, :, 2], c[:, :, 0]))
