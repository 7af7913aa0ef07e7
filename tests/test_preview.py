"""Pictures: ``tiffpipe preview`` thumbnails (bounded memory, strided reads, pyramid levels,
display scaling) and the contact sheet ``tiffpipe run`` writes next to its report."""

from __future__ import annotations

import contextlib
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

import pipeline.preview as preview_module
from pipeline import cli
from pipeline.adapters.tiff_read import read_infos
from pipeline.contact_sheet import (
    CELL,
    LABEL_W,
    PAD,
    PALE_RED,
    layout_size,
    render,
)
from pipeline.core.models import JobSpec
from pipeline.core.thumbs import contact_sheet_url
from pipeline.errors import CorruptTiffError, PageNotFoundError
from pipeline.preview import fit, thumbnail, type_label

pytestmark = pytest.mark.timeout(300)


def smooth(height: int, width: int, channels: int, dtype: str, y0: int = 0,
           x0: int = 0) -> np.ndarray:
    """A smooth picture (so strided and area-averaged thumbnails agree closely)."""
    yy, xx = np.mgrid[y0:y0 + height, x0:x0 + width].astype(np.float64)
    planes = [(np.sin(yy / 97.0 + c) * np.cos(xx / 131.0 - c) + 1) / 2 for c in range(channels)]
    img = np.stack(planes, -1) if channels > 1 else planes[0]
    top = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0
    return (img * top).round().astype(dtype) if np.dtype(dtype).kind in "ui" \
        else img.astype(dtype)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# --- a big page, one tile at a time ----------------------------------------------------------

BIG_H, BIG_W, BIG_TILE = 6144, 8192, 256  # 151 MB of RGB pixels


#: eight different tiles, placed by a hash of the tile position (cheap to write and check)
_TILES = [smooth(BIG_TILE, BIG_TILE, 3, "uint8", 311 * k, 173 * k) for k in range(8)]


def _tile_kind(ty: int, tx: int) -> int:
    return (ty * 7 + tx * 3 + (ty * tx) % 5) % 8


def _big_tiles() -> Iterator[np.ndarray]:
    for ty in range(BIG_H // BIG_TILE):
        for tx in range(BIG_W // BIG_TILE):
            yield _TILES[_tile_kind(ty, tx)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.tif"
    tifffile.imwrite(path, _big_tiles(), shape=(BIG_H, BIG_W, 3), dtype="uint8",
                     tile=(BIG_TILE, BIG_TILE), compression="zstd", photometric="rgb",
                     metadata=None)
    return path


def test_thumbnail_of_a_big_page_holds_one_tile_at_a_time(big):
    tracemalloc.start()
    try:
        thumb = thumbnail(str(big), 0, 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    raw = BIG_H * BIG_W * 3
    tiles = (BIG_H // BIG_TILE) * (BIG_W // BIG_TILE)
    assert thumb.image.size == (256, 192)
    assert thumb.largest_read <= BIG_TILE * BIG_TILE, "a window larger than one segment"
    assert thumb.decoded == tiles and not thumb.strided  # every tile once: an exact average
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {raw / 2**20:.0f} MiB page"
    # the exact area average: each thumbnail pixel is the mean of a 32 x 32 block
    blocks = [t.reshape(8, 32, 8, 32, 3).mean(axis=(1, 3)) for t in _TILES]
    want = np.zeros((192, 256, 3))
    for ty in range(BIG_H // BIG_TILE):
        for tx in range(BIG_W // BIG_TILE):
            want[ty * 8:(ty + 1) * 8, tx * 8:(tx + 1) * 8] = blocks[_tile_kind(ty, tx)]
    assert np.abs(as_array(thumb.image).astype(int) - np.rint(want)).max() <= 1


def test_short_strips_are_read_strided(tmp_path):
    """A 4000-row page in 8-row strips, thumbnail 100 rows high: one strip per thumbnail row."""
    page = smooth(4000, 3000, 1, "uint16")
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, page, rowsperstrip=8, compression="deflate", metadata=None)
    thumb = thumbnail(str(path), 0, 100)
    assert thumb.image.size == (75, 100)
    assert thumb.strided and thumb.decoded == 100  # of 500 strips
    assert thumb.largest_read <= 8 * 3000
    want = cv2.resize(page.astype(np.float64), (75, 100), interpolation=cv2.INTER_AREA)
    got = as_array(thumb.image)[..., 0].astype(float)
    assert np.abs(got - want / 257).mean() < 1.0  # smooth page: sampling loses nearly nothing


def test_uncompressed_single_strip_is_read_in_bands(tmp_path, monkeypatch):
    page = smooth(3000, 2000, 1, "uint8")
    path = tmp_path / "one_strip.tif"
    tifffile.imwrite(path, page, metadata=None)  # one strip of 6 MB
    monkeypatch.setattr(preview_module, "RAW_BAND_BYTES", 64 * 1024)
    thumb = thumbnail(str(path), 0, 150)
    assert thumb.largest_read <= 32 * 2000  # 64 KiB bands of 2000-byte rows
    want = cv2.resize(page, (100, 150), interpolation=cv2.INTER_AREA)
    assert np.abs(as_array(thumb.image)[..., 0].astype(int) - want).mean() < 1.0


def test_an_exact_factor_equals_opencv_inter_area(tmp_path):
    page = smooth(600, 800, 3, "uint8") ^ np.random.default_rng(1).integers(
        0, 40, (600, 800, 3), dtype=np.uint8)  # texture, not only smooth
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, page, tile=(128, 128), compression="zstd", metadata=None,
                     photometric="rgb")
    thumb = thumbnail(str(path), 0, 200)
    assert thumb.image.size == (200, 150) and not thumb.strided
    want = cv2.resize(page, (200, 150), interpolation=cv2.INTER_AREA)
    diff = np.abs(as_array(thumb.image).astype(int) - want)
    assert diff.max() <= 1 and diff.mean() < 0.1


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "int32", "uint64", "float32"])
@pytest.mark.parametrize("shape", [(300, 500), (97, 61)])
def test_downsample_is_the_mean_of_the_pixels_of_each_thumbnail_pixel(tmp_path, dtype, shape):
    """Each thumbnail pixel is the mean of the page pixels that map to it (row y to
    y * th // height), summed exactly: integers of up to 32 bits as integers, the full range
    of values, uneven factors, one page pixel a thumbnail pixel when the page fits (64-bit
    integers and floats are summed as float64: equal to a few units in the last place)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(7)
    if dt.kind == "f":
        page = rng.normal(0, 1e3, (*shape, 2)).astype(dt)
    else:
        info = np.iinfo(dt)
        page = rng.integers(info.min, info.max, (*shape, 2), dtype=dt, endpoint=True)
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, page, tile=(32, 48), metadata=None, planarconfig="contig")
    th, tw = (64, 107) if shape[0] > 100 else shape  # a factor of 4.69 x 4.67, or none
    with tifffile.TiffFile(path) as tf:
        reader = preview_module.PageReader(tf, tf.pages[0], str(path), 0)
        got, strided, scale = preview_module.downsample(reader, th, tw)
    ty = np.arange(shape[0]) * th // shape[0]
    tx = np.arange(shape[1]) * tw // shape[1]
    want = np.zeros((th, tw, 2))
    for t in range(th):
        for u in range(tw):
            block = page[ty == t][:, tx == u].astype(np.float64)
            want[t, u] = block.mean(axis=(0, 1)) if dt.kind == "f" else \
                [float(sum(int(v) for v in block[..., c].ravel())) / block[..., c].size
                 for c in range(2)]
    assert not strided and scale == 1
    if (th, tw) == shape and dt.kind != "f":  # the page is its thumbnail: read, not summed
        assert got.dtype == dt
    if dt.kind == "f" or dt.itemsize == 8:
        np.testing.assert_allclose(got, want, rtol=1e-12)
    else:
        np.testing.assert_array_equal(got, want)


def test_small_pages_are_not_enlarged(tmp_path):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, smooth(30, 50, 1, "uint8"), metadata=None)
    thumb = thumbnail(str(path), 0, 512)
    assert thumb.image.size == (50, 30)
    assert np.array_equal(as_array(thumb.image)[..., 0], smooth(30, 50, 1, "uint8"))
    assert fit(30, 50, 512) == (30, 50) and fit(1000, 10, 100) == (100, 1)


#: a page as a viewer shows it, for each TIFF Orientation, from the TIFF 6.0 definitions
#: ("the 0th row represents the visual ... side, the 0th column the visual ... side")
SHOWN = {
    1: lambda a: a,                        # top, left
    2: lambda a: a[:, ::-1],               # top, right
    3: lambda a: a[::-1, ::-1],            # bottom, right
    4: lambda a: a[::-1],                  # bottom, left
    5: lambda a: a.swapaxes(0, 1),         # left, top
    6: lambda a: np.rot90(a, -1),          # right, top: turned a quarter clockwise
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # right, bottom
    8: lambda a: np.rot90(a, 1),           # left, bottom
}


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_a_page_is_shown_as_its_orientation_says(tmp_path, orientation):
    stored = smooth(30, 50, 3, "uint8")
    stored[:4, :6] = (255, 0, 0)  # a red mark in the stored first row's first columns
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, stored, photometric="rgb", metadata=None,
                     extratags=[(274, "H", 1, orientation, True)])
    thumb = thumbnail(str(path), 0, 512)
    np.testing.assert_array_equal(as_array(thumb.image), SHOWN[orientation](stored))
    assert ("turned as Orientation" in thumb.description) == (orientation != 1)


def test_the_contact_sheet_turns_pages_as_their_orientation_says(tmp_path):
    # summed by the run's steps (a page well above the thumbnail) or read from the file
    stored = smooth(1300, 1100, 3, "uint8")
    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, stored, photometric="rgb", metadata=None, tile=(256, 256),
                     extratags=[(274, "H", 1, 6, True)])
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": str(path),
                                              "output": str(tmp_path / "o.tif")}]}))
    code, _, err = _cli(["run", str(manifest), "--quiet"])
    assert code == 0, err
    sheet = np.asarray(Image.open(tmp_path / "m.report.contact.png").convert("RGB"))
    for thumb in (thumbnail(str(path), 0, CELL), thumbnail(str(tmp_path / "o.tif"), 0, CELL)):
        assert thumb.image.size == fit(1300, 1100, CELL)  # stored (h, w): shown (w, h)
        image = as_array(thumb.image)
        h, w = image.shape[:2]
        ys, xs = np.nonzero((sheet == image[0, 0]).all(-1))
        assert any(np.array_equal(sheet[y:y + h, x:x + w], image) for y, x in zip(ys, xs)), (
            "the turned thumbnail is not on the sheet")


# --- pyramids ------------------------------------------------------------------------------


def test_subifd_pyramid_level_is_used(tmp_path):
    base = smooth(2048, 2048, 1, "uint8")
    levels = [base, cv2.resize(base, (1024, 1024), interpolation=cv2.INTER_AREA),
              cv2.resize(base, (512, 512), interpolation=cv2.INTER_AREA)]
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(256, 256), subifds=2, metadata=None, compression="zstd")
        for level in levels[1:]:
            tw.write(level, tile=(256, 256), subfiletype=1, metadata=None, compression="zstd")
    thumb = thumbnail(str(path), 0, 512)
    assert thumb.source.startswith("SubIFD level 2") and thumb.image.size == (512, 512)
    assert thumb.decoded == 4  # the 512 x 512 level's tiles, not the base's 64
    assert (thumb.height, thumb.width) == (2048, 2048)
    assert np.array_equal(as_array(thumb.image)[..., 0], levels[2])
    smaller = thumbnail(str(path), 0, 300)  # 512 is the smallest level >= 300
    assert smaller.source.startswith("SubIFD level 2") and smaller.image.size == (300, 300)


def test_reduced_resolution_pages_after_a_page_are_used(tmp_path):
    base = smooth(1600, 1200, 3, "uint8")
    path = tmp_path / "reduced.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), photometric="rgb", metadata=None)
        for f in (2, 4):
            tw.write(cv2.resize(base, (1200 // f, 1600 // f), interpolation=cv2.INTER_AREA),
                     tile=(128, 128), photometric="rgb", subfiletype=1, metadata=None)
        tw.write(smooth(300, 300, 3, "uint8")[::-1], photometric="rgb", metadata=None)  # page 3
    thumb = thumbnail(str(path), 0, 256)
    assert thumb.source.startswith("reduced-resolution page 2 (300x400)")
    assert thumb.image.size == (192, 256)
    want = cv2.resize(base, (192, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(as_array(thumb.image).astype(int) - want).mean() < 1.5
    last = thumbnail(str(path), 3, 256)  # a full-resolution page again: its own pixels
    assert last.source == "page 3" and last.image.size == (256, 256)


def test_an_svs_files_levels_are_used(tmp_path):
    """Aperio SVS: the base page, a thumbnail page, then the base's levels, which are not
    marked reduced-resolution (NewSubfileType 0, as Aperio writes them): tifffile's SVS
    series gives them."""
    base = smooth(1024, 1536, 3, "uint8")
    head = "Aperio Image Library v12.0.0\r\n1536x1024 "
    path = tmp_path / "slide.svs"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), photometric="rgb", metadata=None,
                 description=head + "[0,0 1536x1024] (256x256) RAW|AppMag = 20|MPP = 0.5")
        tw.write(base[::8, ::8], photometric="rgb", metadata=None,
                 description=head + "-> 192x128 - ")
        for f in (2, 4):
            tw.write(cv2.resize(base, (1536 // f, 1024 // f), interpolation=cv2.INTER_AREA),
                     tile=(128, 128), photometric="rgb", metadata=None,
                     description=head + f"-> {1536 // f}x{1024 // f} - ")
    thumb = thumbnail(str(path), 0, 256)
    assert thumb.source == "SVS level 2 (384x256)", thumb.source
    assert thumb.decoded == 6  # the 384 x 256 level's tiles, not the base's 24
    assert (thumb.height, thumb.width) == (1024, 1536) and thumb.image.size == (256, 171)
    assert thumbnail(str(path), 1, 64).source == "page 1"  # the thumbnail page: itself


# --- what is shown ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,values,shown", [
    ("uint16", [0, 65535, 32896], [0, 255, 128]),
    # a 12-bit (10-bit) camera's values in uint16: from their own range, 0..4095 (1023),
    # not 0..65535 (all but black: its brightest pixel was 16 of 255, every fluorescence
    # thumbnail near black)
    ("uint16", [0, 4095, 2048], [0, 255, 128]),
    ("uint16", [0, 1023, 512], [0, 255, 128]),
    ("uint16", [1000, 3000, 2000], [0, 255, 128]),  # from the minimum, not from 0
    ("float32", [0.0, 1.0, 0.5], [0, 255, 128]),  # values in [0, 1]: 0..1
    ("float32", [-10.0, 10.0, 0.0], [0, 255, 128]),  # otherwise: min..max
    ("int16", [-32768, 32767, 0], [0, 255, 128]),
])
def test_display_scaling(tmp_path, dtype, values, shown):
    page = np.repeat(np.array(values, dtype)[None, :], 4, axis=0).repeat(4, axis=1)
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, page, metadata=None)
    got = as_array(thumbnail(str(path), 0, 64).image)[0, ::4, 0]
    assert got.tolist() == shown


@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint32"])
def test_wide_integers_are_shown_from_the_thumbnails_own_range(tmp_path, dtype):
    """A Sentinel-2 scene's reflectances, 0 to 10000 of uint16 (its no-data collar 0), or a
    12-bit camera's counts: shown from the thumbnail's own minimum to its maximum, as GIS
    and image viewers stretch them, not from the type's full range, where 3000 of 65535
    came out at 12 of 255: a black picture in every preview and contact sheet."""
    rng = np.random.default_rng(4)
    page = rng.integers(500, 3001, (4, 240, 320), dtype=np.int64)
    page[:, :, :80] = 0  # the collar
    page[0, 100:140, 100:140] = 3000  # a bright field
    path = tmp_path / "s2.tif"
    tifffile.imwrite(path, page.astype(dtype), photometric="minisblack",
                     planarconfig="separate", metadata=None)
    shown = as_array(thumbnail(str(path), 0, 160).image)
    assert shown[:, :40].max() == 0  # the collar: the thumbnail's minimum
    assert shown[50:70, 50:70, 0].min() == 255  # the bright field: its maximum
    assert 100 < shown[:, 60:, 1].mean() < 160  # the data between


def test_a_flat_wide_integer_page_is_shown_from_the_types_range(tmp_path):
    """A page of one value has no range of its own: the type's, as before (white)."""
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, np.full((32, 32), 65535, np.uint16), metadata=None)
    assert (as_array(thumbnail(str(path), 0, 16).image) == 255).all()


@pytest.mark.parametrize("channels,extrasamples", [(1, []), (3, []), (4, [0]), (4, [2]),
                                                  (2, [1]), (2, [0]), (2, [])])
def test_8_bit_pixels_are_shown_as_the_means_of_8_bit_pixels_are(channels, extrasamples):
    """``to_display`` of 8-bit pixels as read (a page that is its own thumbnail) shows what it
    shows of the same values as float64 means (any other page's thumbnail): the values
    themselves, gray as RGB, alpha composited when it is alpha (1, 2), else ignored."""
    from pipeline.preview import to_display

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (40, 56, channels), np.uint8)
    pixels[0, :2] = [[0] * channels, [255] * channels]
    read = as_array(to_display(pixels, np.dtype("uint8"), extrasamples))
    summed = as_array(to_display(pixels.astype(np.float64), np.dtype("uint8"), extrasamples))
    assert read.shape == (40, 56, 3) and np.array_equal(read, summed)
    if extrasamples in ([], [0]):
        colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
        assert np.array_equal(read, colour)


def test_nan_does_not_spoil_a_thumbnail(tmp_path):
    page = np.full((64, 64), 0.25, np.float32)
    page[::7, ::5] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, page, metadata=None)
    got = as_array(thumbnail(str(path), 0, 16).image)
    assert got.max() <= 64 and got.min() >= 48  # about 0.25, minus the NaNs counted as 0


def test_alpha_is_composited_over_a_checkerboard(tmp_path):
    page = np.zeros((32, 32, 4), np.uint8)
    page[..., 0] = 200
    page[:, 16:, 3] = 255  # right half opaque red, left half transparent
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, page, photometric="rgb", extrasamples=["unassalpha"], metadata=None)
    got = as_array(thumbnail(str(path), 0, 64).image)
    assert got[:, 16:].tolist() == [[[200, 0, 0]] * 16] * 32
    assert {tuple(v) for v in got[:, :16].reshape(-1, 3)} == {(255, 255, 255), (204, 204, 204)}


def test_miniswhite_and_palette_look_as_they_are_processed(tmp_path):
    gray = smooth(40, 60, 1, "uint8")
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, gray, photometric="miniswhite", metadata=None)
    assert np.array_equal(as_array(thumbnail(str(path), 0, 64).image)[..., 0], 255 - gray)
    cmap = np.random.default_rng(3).integers(0, 256, (3, 256)).astype(np.uint16) * 257
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, gray, photometric="palette", colormap=cmap, metadata=None)
    want = (cmap // 257).T[gray].astype(np.uint8)
    thumb = thumbnail(str(path), 0, 64)
    assert np.array_equal(as_array(thumb.image), want)
    assert thumb.dtype == "8-bit palette"  # its samples' type, not the colour map's uint16
    kept = read_infos(str(path), None, keep_palette=True)[0]  # as a job that keeps it reads it
    assert (kept.photometric, type_label(kept)) == ("palette", "8-bit palette")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_a_gray_class_map_is_drawn_through_its_colour_table(tmp_path, dtype):
    """A gray class map with a colour table (MINISBLACK and a ColorMap, as rasterio's
    ``write_colormap`` stores it: GDAL and QGIS draw it as a palette) is previewed in the
    table's colours, as a palette page is, from the page and from a pyramid level; a
    thumbnail pixel over one class is that class's colour. Before, it was drawn gray (its
    values, uint16 stretched to their range). A gray page without a ColorMap stays gray."""
    import rasterio
    from rasterio.enums import Resampling

    classes = np.array([0, 11, 41, 82, 95] if dtype == "uint8" else [0, 110, 4100, 65535],
                       dtype)
    labels = np.random.default_rng(5).integers(0, len(classes), (12, 16))
    page = classes[np.kron(labels, np.ones((8, 8), int))]  # (96 x 128: 8 x 8 blocks)
    colours = {int(c): (40 * k + 10, 255 - 50 * k, 90 + 30 * k, 255)
               for k, c in enumerate(classes)}
    path = tmp_path / "classes.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=96, count=1, dtype=dtype,
                       tiled=True, blockxsize=32, blockysize=32) as ds:
        ds.write(page, 1)
        ds.write_colormap(1, colours)
    with tifffile.TiffFile(path) as tf:  # (as rasterio stores it)
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert 320 in tf.pages[0].tags
    want = np.array([colours[int(c)][:3] for c in classes], np.uint8)[labels]
    thumb = thumbnail(str(path), 0, 16)  # (each thumbnail pixel: one 8 x 8 block)
    np.testing.assert_array_equal(as_array(thumb.image), want)
    assert thumb.dtype == dtype
    with rasterio.open(path, "r+") as ds:  # a level (GDAL's nearest keeps the classes)
        ds.build_overviews([2, 4], Resampling.nearest)
    thumb = thumbnail(str(path), 0, 16)
    assert thumb.source != "page 0"
    np.testing.assert_array_equal(as_array(thumb.image), want)
    tifffile.imwrite(tmp_path / "plain.tif", page, photometric="minisblack", metadata=None)
    shown = as_array(thumbnail(str(tmp_path / "plain.tif"), 0, 16).image)
    assert (shown[..., 0] == shown[..., 1]).all() and (shown[..., 1] == shown[..., 2]).all()


@pytest.mark.parametrize(("bits", "label"), [(1, "1-bit"), (4, "4-bit gray")])
def test_a_page_of_bits_is_captioned_by_its_bits_not_as_read(tmp_path, bits, label):
    """A 1-bit (fax, scan) or 4-bit gray page is read as uint8; its caption says what the
    file holds, as a palette page's does."""
    page = (smooth(40, 64, 1, "uint8") >> (8 - bits)).astype(np.uint8)
    path = tmp_path / f"bits{bits}.tif"
    if bits == 1:
        tifffile.imwrite(path, page.astype(bool), photometric="miniswhite", metadata=None)
    else:
        tifffile.imwrite(path, page, bitspersample=bits, photometric="minisblack",
                         metadata=None)
    assert thumbnail(str(path), 0, 64).dtype == label
    assert type_label(read_infos(str(path), None)[0]) == label


# --- the command ---------------------------------------------------------------------------


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


# --- JPEG pages decoded at 1/8 ---------------------------------------------------------------


def _photo(height: int, width: int, channels: int) -> np.ndarray:
    """Smooth areas, sharp edges and noise (what a JPEG thumbnail can get wrong), in 5..250
    as a photograph's pixels mostly are (a scaled decode's block value is the mean before
    the full decode clips its pixels to 0..255: noise at black or white moves it)."""
    rng = np.random.default_rng(5)
    img = smooth(height, width, channels, "uint8").astype(np.int16)
    yy, xx = np.mgrid[0:height, 0:width]
    edges = ((yy // 37 + xx // 53) % 2 * 90)[..., None] if channels > 1 else \
        (yy // 37 + xx // 53) % 2 * 90
    noise = rng.integers(-15, 16, img.shape)
    return np.clip(img // 2 + 20 + edges + noise, 0, 255).astype(np.uint8)


def _aperio_like(stream: bytes) -> bytes:
    """An RGB JPEG stream as Aperio's scanners write them in SVS files: no Adobe marker and
    component ids 1, 2, 3, so libjpeg alone takes it for YCbCr (tifffile decodes it as RGB
    from the TIFF's photometric tag). Made from libjpeg-turbo's own RGB stream by dropping
    its APP14 segment and renumbering the components of its SOF and SOS."""
    out, at = bytearray(stream[:2]), 2
    while at < len(stream):
        marker, length = stream[at + 1], int.from_bytes(stream[at + 2:at + 4], "big")
        segment = bytearray(stream[at:at + 2 + length])
        if marker == 0xEE:  # APP14 "Adobe": dropped
            at += 2 + length
            continue
        if marker == 0xC0:  # SOF0: components at 10, 13, 16
            for k in range(3):
                segment[10 + 3 * k] = k + 1
        if marker == 0xDA:  # SOS: components at 5, 7, 9, then the entropy-coded data
            for k in range(3):
                segment[5 + 2 * k] = k + 1
            out += segment + stream[at + 2 + length:]
            return bytes(out)
        out += segment
        at += 2 + length
    raise ValueError("no SOS segment")


@pytest.mark.parametrize("kind", ["ycbcr tiles", "gray tiles", "ycbcr strips", "rgb tiles"])
def test_large_jpeg_pages_are_previewed_from_an_eighth_decode(tmp_path, kind):
    """A JPEG page 16 times the thumbnail or more is decoded at 1/8 (libjpeg's DCT scaling:
    a pixel an 8 x 8 block), each segment once, and the thumbnail is the exact one within
    a few levels (below one on average); ``exact`` decodes it in full, as the preview of any
    other page. Pages
    written by tifffile (libjpeg-turbo: YCbCr subsampled 2 x 2, gray, strips of 64 rows, RGB
    with its Adobe marker), of sizes no block or segment divides (the edge segments are
    decoded in full: the encoder's padding is in their part blocks; strips only as wide as a
    whole number of blocks, or every strip would be)."""
    height, width = 1500, 1232 if "strips" in kind else 1227
    channels = 1 if kind.startswith("gray") else 3
    page = _photo(height, width, channels)
    path = tmp_path / "jpeg.tif"
    layout = {"rowsperstrip": 64} if "strips" in kind else {"tile": (128, 128)}
    tifffile.imwrite(path, page, compression="jpeg", compressionargs={"level": 90}, metadata=None,
                     photometric="rgb" if channels == 3 else "minisblack", **layout)
    if kind == "rgb tiles":  # RGB JPEG streams (an Adobe marker says so)
        import imagecodecs

        tiles = [imagecodecs.jpeg8_encode(
            np.pad(page[r:r + 128, c:c + 128], ((0, max(0, r + 128 - height)),
                                                  (0, max(0, c + 128 - width)), (0, 0)),
                   mode="edge"), level=90, colorspace="RGB", outcolorspace="RGB")
            for r in range(0, height, 128) for c in range(0, width, 128)]
        tifffile.imwrite(path, iter(tiles), shape=page.shape, dtype=np.uint8,
                         photometric="rgb", compression="jpeg", tile=(128, 128),
                         compressionargs={"outcolorspace": "RGB"}, subsampling=(1, 1))
    with tifffile.TiffFile(path) as tf:
        segments = len(tf.pages[0].dataoffsets)
    fast = thumbnail(str(path), 0, 32)  # 47 page pixels a thumbnail pixel
    exact = thumbnail(str(path), 0, 32, exact=True)
    assert fast.jpeg_scale == 8 and "1/8 JPEG decode" in fast.description
    assert exact.jpeg_scale == 1 and "JPEG" not in exact.description
    assert fast.decoded == exact.decoded == segments  # each segment read once
    assert fast.image.size == exact.image.size == (round(32 * width / height), 32)
    # a block across two thumbnail pixels is shared by pixel counts: an edge of 90 levels
    # inside it moves them by up to ~90 * 4 / 47
    diff = np.abs(as_array(fast.image).astype(int) - as_array(exact.image))
    assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


def test_an_eighth_decode_weighs_each_block_by_the_page_pixels_it_shares(tmp_path):
    """On a page of flat 8 x 8 blocks (a JPEG's DC terms hold them whole) the 1/8 thumbnail
    is the exact area average, to the level, although its pixels' edges cut through blocks
    (1000 x 904 into 50 x 45: 20 page pixels a thumbnail pixel) and the page ends in part
    blocks."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (125, 113), dtype=np.uint8)
    page = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:1000, :904]
    path = tmp_path / "blocks.tif"
    tifffile.imwrite(path, page, compression="jpeg", compressionargs={"level": 100},
                     tile=(64, 64), metadata=None,
                     photometric="minisblack")
    fast, exact = thumbnail(str(path), 0, 50), thumbnail(str(path), 0, 50, exact=True)
    assert fast.jpeg_scale == 8 and fast.image.size == (45, 50)
    diff = np.abs(as_array(fast.image).astype(int) - as_array(exact.image))
    assert diff.max() <= 1


def test_a_damaged_jpeg_tile_is_read_as_the_full_decode_reads_it(tmp_path):
    """A tile whose stream is cut short (its byte count halved in the IFD) or is not JPEG
    at all: OpenCV refuses both at 1/8, so they are decoded in full, as --exact does: the
    short one reads as libjpeg through imagecodecs reads it, the same thumbnail both ways;
    the other fails both ways with the error naming its segment."""
    import struct

    page = _photo(1024, 1024, 3)
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, page, compression="jpeg", tile=(256, 256), photometric="rgb",
                     metadata=None)
    with tifffile.TiffFile(path) as tf:
        p = tf.pages[0]
        offsets, counts = p.dataoffsets, p.databytecounts
        tag = p.tags["TileByteCounts"]  # SHORT, LONG or LONG8 values
        code = {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
        at, order = tag.valueoffset + 5 * struct.calcsize(code), tf.byteorder
    data = bytearray(path.read_bytes())
    data[at:at + struct.calcsize(code)] = struct.pack(order + code, int(counts[5]) // 2)
    path.write_bytes(bytes(data))
    short = data[int(offsets[5]):int(offsets[5]) + int(counts[5]) // 2]
    assert cv2.imdecode(np.frombuffer(bytes(short), np.uint8), cv2.IMREAD_REDUCED_COLOR_8) is None
    fast, exact = thumbnail(str(path), 0, 32), thumbnail(str(path), 0, 32, exact=True)
    assert fast.jpeg_scale == 8
    assert np.abs(as_array(fast.image).astype(int) - as_array(exact.image)).mean() < 1.5
    data[int(offsets[6]):int(offsets[6]) + int(counts[6])] = b"\x55" * int(counts[6])
    path.write_bytes(bytes(data))
    for exact_mode in (False, True):
        with pytest.raises(CorruptTiffError, match=r"page 0: segment 6 .*cannot be decoded"
                           r".*; the file is damaged: copy it again from its source"):
            thumbnail(str(path), 0, 32, exact=exact_mode)


def test_a_jpeg_page_libjpeg_alone_reads_in_another_color_space_is_decoded_in_full(tmp_path):
    """An SVS-like page (RGB tiles without the Adobe marker, tagged RGB): libjpeg on its own
    takes its streams for YCbCr, tifffile reads them as the tag says. The first segment's
    1/8 decode disagrees with its full decode, so the page is decoded in full: the
    thumbnail is the exact one, in the colors tiffpipe's steps read."""
    import imagecodecs

    page = _photo(1024, 1024, 3)
    tiles = [_aperio_like(imagecodecs.jpeg8_encode(page[r:r + 256, c:c + 256], level=90,
                                                   colorspace="RGB", outcolorspace="RGB"))
             for r in range(0, 1024, 256) for c in range(0, 1024, 256)]
    path = tmp_path / "svs-like.tif"
    tifffile.imwrite(path, iter(tiles), shape=page.shape, dtype=np.uint8, photometric="rgb",
                     compression="jpeg", tile=(256, 256), compressionargs={"outcolorspace": "RGB"},
                     subsampling=(1, 1))
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].photometric == 2 and not tf.pages[0].is_jfif
        assert np.abs(tf.pages[0].asarray().astype(int) - page).mean() < 6  # read as RGB
    assert np.abs(cv2.imdecode(np.frombuffer(tiles[0], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                  .astype(int) - page[:256, :256]).mean() > 20  # libjpeg alone: YCbCr
    fast, exact = thumbnail(str(path), 0, 64), thumbnail(str(path), 0, 64, exact=True)
    assert fast.jpeg_scale == 1 and fast.decoded == 16 + 1 and exact.decoded == 16  # + check
    np.testing.assert_array_equal(as_array(fast.image), as_array(exact.image))


@pytest.mark.parametrize(("rows", "compression", "said"), [
    (300, None, "1 uncompressed strip(s) read"),  # one strip: it said 0 segment(s) decoded
    (300, "zlib", "1 segment(s) decoded"),
    (16, None, "19 uncompressed strip(s) read"),  # every strip, each read by rows
    (16, "zlib", "19 segment(s) decoded"),
])
def test_preview_says_how_many_strips_it_read_or_decoded(tmp_path, rows, compression, said):
    """An uncompressed strip is read as rows, not decoded: the line counts it as read (a
    one-strip page was "0 segment(s) decoded", as if nothing had been read)."""
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, smooth(300, 400, 1, "uint8"), rowsperstrip=rows,
                     compression=compression, metadata=None)
    png = tmp_path / "strips.png"
    code, out, err = _cli(["preview", str(path), "-o", str(png), "--size", "64"])
    assert code == 0, err
    assert out == (f"{png}: 64x48 thumbnail of page 0 (400x300 uint8) from page 0, area "
                   f"average, {said}\n")


def test_preview_command(tmp_path):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(smooth(300, 400, 3, "uint8"), photometric="rgb", metadata=None)
        tw.write(smooth(200, 100, 1, "uint16"), metadata=None)
    png = tmp_path / "p" / "one.png"
    code, out, err = _cli(["preview", str(path), "-o", str(png), "--page", "1", "--size", "64"])
    assert code == 0, err
    assert Image.open(png).size == (32, 64)
    assert str(png) in out and "page 1" in out and "100x200 uint16" in out
    code, _, err = _cli(["preview", str(path), "-o", str(png), "--page", "5"])
    assert code == 1 and "PageNotFoundError" in err and "page 5" in err
    # the advice is about the option that gave the page, and names the pages there are
    assert "the file has 2 page(s) (0..1)" in err and "give --page a page from 0 to 1" in err, err
    assert "job" not in err, err
    assert _cli(["preview", str(path), "--size", "5"])[0] == 2
    # a preview is a PNG: a name for another format is refused, not given PNG bytes
    code, _, err = _cli(["preview", str(path), "-o", str(tmp_path / "p.jpg")])
    assert code == 2 and "a preview is a PNG: give a name ending in .png" in err
    assert not (tmp_path / "p.jpg").exists()
    # a local place that cannot be written: advice about paths, not S3's
    code, _, err = _cli(["preview", str(path), "-o", "/proc/no/such/p.png"])
    assert code == 1 and "/proc/no/such/p.png" in err and "check the path" in err, err
    assert "bucket" not in err
    notes = tmp_path / "notes.tif"
    notes.write_text("not a TIFF")
    code, _, err = _cli(["preview", str(notes), "-o", str(tmp_path / "n.png")])
    assert code == 1 and "NotATiffError" in err and "Traceback" not in err
    with pytest.raises(PageNotFoundError):
        thumbnail(str(path), 2)
    # a JPEG page: decoded at 1/8 unless --exact
    jpeg = tmp_path / "jpeg.tif"
    tifffile.imwrite(jpeg, _photo(1024, 768, 3), compression="jpeg", tile=(128, 128),
                     photometric="rgb", metadata=None)
    code, out, err = _cli(["preview", str(jpeg), "-o", str(png), "--size", "64"])
    assert code == 0 and "area average of a 1/8 JPEG decode" in out, err
    code, out, err = _cli(["preview", str(jpeg), "-o", str(png), "--size", "64", "--exact"])
    assert code == 0 and "area average," in out and "JPEG" not in out, err


def test_preview_replaces_only_a_png(tmp_path, monkeypatch):
    """The preview's PNG replaces a PNG there (an earlier preview) or an empty file, never
    another file: a TIFF named .png previewed without -o (its default name is its own) was
    replaced by its thumbnail, and a file of the user's at <stem>.png was lost."""
    monkeypatch.chdir(tmp_path)
    page = smooth(120, 90, 1, "uint8")
    scan = tmp_path / "scan.png"  # a TIFF, named .png
    tifffile.imwrite(scan, page, metadata=None)
    before = scan.read_bytes()
    code, out, err = _cli(["preview", "scan.png"])
    assert code == 2 and out == "", err
    assert err == (f"tiffpipe: -o {scan}: is the TIFF previewed, which the preview would "
                   "replace: give -o another name\n")
    assert scan.read_bytes() == before
    notes = tmp_path / "letter.png"
    notes.write_text("my notes on the letter")
    tifffile.imwrite(tmp_path / "letter.tif", page, metadata=None)
    code, out, err = _cli(["preview", "letter.tif"])
    assert code == 2 and out == "", err
    assert err == (f"tiffpipe: -o {notes}: exists and is not a PNG (it begins b'my n'), which "
                   "the preview would replace: give -o another name, or move that file "
                   "away\n")
    assert notes.read_text() == "my notes on the letter"
    notes.unlink()
    for there in (b"", None):  # an empty file, then the PNG of the run before: replaced
        if there is not None:
            notes.write_bytes(there)
        code, out, err = _cli(["preview", "letter.tif"])
        assert code == 0 and f"{notes}: " in out, err
        assert Image.open(notes).size == (90, 120)
    (tmp_path / "pictures.png").mkdir()  # a folder named .png: said so, not a StorageError
    code, out, err = _cli(["preview", "letter.tif", "-o", "pictures.png"])  # of a temp file
    assert code == 2 and out == "", err
    assert err == (f"tiffpipe: -o {tmp_path / 'pictures.png'}: is a folder: give -o the PNG "
                   "file's name (a name in it: FOLDER/NAME.png)\n")


# --- the contact sheet ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sheet_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sheet")
    with tifffile.TiffWriter(root / "two.tif") as tw:
        tw.write(smooth(300, 400, 3, "uint8"), photometric="rgb", tile=(64, 64), metadata=None)
        tw.write(smooth(500, 250, 1, "uint16"), rowsperstrip=50, metadata=None)
    (root / "notes.tif").write_text("not a TIFF")
    manifest = {"jobs": [
        {"input": "two.tif", "output": "out/copy.tif"},
        {"input": "two.tif", "output": "out/blur.tif", "pages": [1],
         "ops": [{"op": "gaussian_blur", "sigma": 4}]},
        {"input": "notes.tif", "output": "out/notes.tif"},
    ]}
    (root / "m.json").write_text(json.dumps(manifest))
    code, out, err = _cli(["run", str(root / "m.json"), "--workers", "2",
                           "--report", str(root / "reports" / "run1.json")])
    return {"root": root, "code": code, "out": out, "err": err, "manifest": manifest}


def test_run_writes_a_contact_sheet_next_to_its_report(sheet_run):
    root = sheet_run["root"]
    path = root / "reports" / "run1.contact.png"
    assert sheet_run["code"] == 1  # the not-a-TIFF job fails
    assert f"contact sheet: {path}" in sheet_run["out"]
    assert sheet_run["out"].rstrip().endswith(f"report: {root / 'reports' / 'run1.json'}")
    image = Image.open(path)
    rows = 2 + 1 + 1  # two pages copied, one page blurred, one failed job
    assert image.size == layout_size(rows)
    pixels = as_array(image)
    x_in = PAD + LABEL_W + PAD
    x_out = x_in + CELL + PAD
    for row in range(3):  # succeeded rows: both cells hold a picture
        y = 64 + row * (CELL + 20 + PAD)
        for x in (x_in, x_out):
            cell = pixels[y + 20:y + CELL - 20, x + 20:x + CELL - 20]
            assert cell.std() > 10, (row, x)
    y = 64 + 3 * (CELL + 20 + PAD)  # the failed job: its error on a pale red cell
    assert tuple(pixels[y + CELL - 10, x_out + CELL - 10]) == PALE_RED


def test_contact_sheet_url_and_truncation(sheet_run, monkeypatch):
    assert contact_sheet_url("/a/b/m.report.json") == "/a/b/m.report.contact.png"
    assert contact_sheet_url("s3://bkt/runs/r.json") == "s3://bkt/runs/r.contact.png"
    root = sheet_run["root"]
    report = json.loads((root / "reports" / "run1.json").read_text())
    specs = [JobSpec(input=str(root / j["input"]), output=str(root / j["output"]),
                     pages=j.get("pages"), ops=j.get("ops", []))
             for j in sheet_run["manifest"]["jobs"]]
    monkeypatch.setattr("pipeline.contact_sheet.MAX_ROWS", 2)
    width, height = layout_size(2, truncated=True)
    assert render(report, specs).shape == (height, width, 3)


def test_the_sheet_is_the_same_whatever_rows_are_made_and_drawn_together(sheet_run,
                                                                        monkeypatch):
    """The sheet's bands are drawn BLOCK_ROWS rows' thumbnails at a time: rows one by one, two
    by two (a block holding the pages of a file another block also shows) or all together
    give the same pixels, and the PNG tiffpipe run wrote holds them."""
    import pipeline.contact_sheet as sheet

    root = sheet_run["root"]
    report = json.loads((root / "reports" / "run1.json").read_text())
    specs = [JobSpec(input=str(root / j["input"]), output=str(root / j["output"]),
                     pages=j.get("pages"), ops=j.get("ops", []))
             for j in sheet_run["manifest"]["jobs"]]
    drawn = []
    for rows in (1, 2, sheet.MAX_ROWS):
        monkeypatch.setattr(sheet, "BLOCK_ROWS", rows)
        width, height, bands = sheet.draw(report, specs)
        bands = list(bands)
        assert [b.shape[0] for b in bands] == [sheet.HEADER] + [sheet.ROW_H] * 4 + [PAD]
        assert all(b.shape[1:] == (width, 3) for b in bands)
        drawn.append(np.concatenate(bands))
        assert drawn[-1].shape == (height, width, 3)
    assert all(np.array_equal(d, drawn[0]) for d in drawn[1:])
    written = as_array(Image.open(root / "reports" / "run1.contact.png"))
    assert np.array_equal(written, drawn[0])


def test_the_sheet_makes_thumbnails_on_the_cores_and_more_threads_for_s3(monkeypatch):
    """Local files: a thread a core (decoding and summing are CPU work); S3: at least
    S3_THREADS, their reads waiting on the network."""
    import pipeline.contact_sheet as sheet

    monkeypatch.setattr(sheet, "usable_cores", lambda: 2)
    assert sheet.thumbnail_threads(["/a.tif", "/b.tif"]) == 2
    assert sheet.thumbnail_threads(["/a.tif", "s3://bkt/b.tif"]) == sheet.S3_THREADS == 4
    monkeypatch.setattr(sheet, "usable_cores", lambda: 16)
    assert sheet.thumbnail_threads(["s3://bkt/b.tif"]) == 16


def test_no_contact_sheet_option(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", smooth(64, 64, 1, "uint8"), metadata=None)
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [{"input": "a.tif",
                                                           "output": "out/a.tif"}]}))
    code, out, err = _cli(["run", str(tmp_path / "m.json"), "--workers", "1",
                           "--no-contact-sheet"])
    assert code == 0, err
    assert "contact sheet" not in out
    assert not list(tmp_path.glob("*.png"))


def test_png_bytes_round_trips_an_image_handed_over_in_bands(monkeypatch: pytest.MonkeyPatch):
    """png_bytes (Up filter, compressed in bands by threads) of a Pillow image given to the
    writer a few rows at a time: the PNG decodes to the image's pixels exactly."""
    from pipeline import preview

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    pixels[10:20] = 255  # flat rows, as a sheet's background
    monkeypatch.setattr(preview, "COPY_ROWS", 8)  # five blocks, the last one short
    data = preview.png_bytes(Image.fromarray(pixels, "RGB"))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), pixels)


@pytest.mark.parametrize("shape", [(1, 1), (1, 4000), (7, 3), (300, 2), (257, 129)])
def test_png_bands_compressed_by_threads_make_one_valid_file(monkeypatch: pytest.MonkeyPatch,
                                                             shape: tuple[int, int]):
    """png_write: bands of a few rows (or less than one: one row a band), compressed by
    threads, make one zlib stream whose checks libpng (imagecodecs' png_decode) and Pillow
    accept, decoding to the pixels; noise, flat rows and a gradient (the Up filter's
    differences wrap around)."""
    import imagecodecs

    from pipeline.adapters import png_write

    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    pixels[shape[0] // 3:shape[0] // 2] = 255
    pixels[shape[0] // 2:] = (np.arange(shape[1])[None, :, None] * 7 % 256).astype(np.uint8)
    monkeypatch.setattr(png_write, "BAND_BYTES", 3 * 2 * shape[1] + 5)  # two rows a band
    for deflater in (png_write.DEFAULT, png_write.ZLIB):
        for threads in (1, 3):
            data = png_write.encode_rgb(pixels, threads, deflater)
            assert np.array_equal(imagecodecs.png_decode(data), pixels)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    with pytest.raises(ValueError, match="RGB uint8 pixels expected"):
        png_write.encode_rgb(pixels[..., :2], 1)


def test_a_png_given_rows_in_blocks_of_any_size_is_the_png_of_the_whole(
        monkeypatch: pytest.MonkeyPatch):
    """RgbPngWriter (and encode_rows over an iterator of blocks): rows given one at a time, in
    blocks across bands, or more than a band at once make the file encode_rgb makes of them
    all (more bands than the threads keep waiting); rows of another width or type, too many
    rows, or too few at the end are errors."""
    from pipeline.adapters import png_write

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (61, 17, 3), dtype=np.uint8)
    pixels[20:40] = 7
    monkeypatch.setattr(png_write, "BAND_BYTES", 3 * 17 * 4 + 4)  # four rows a band
    whole = png_write.encode_rgb(pixels, 2)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(whole))), pixels)
    for sizes in ([1] * 61, [3, 5, 9, 1, 43], [30, 31], [61]):
        for threads in (1, 2):
            with png_write.RgbPngWriter(17, 61, threads) as png:
                at = 0
                for size in sizes:
                    png.add(pixels[at:at + size])
                    at += size
                assert png.finish() == whole, (sizes, threads)
    blocks = (pixels[at:at + 9] for at in range(0, 61, 9))  # made as they are asked for
    assert png_write.encode_rows(17, 61, blocks, 2) == whole
    with png_write.RgbPngWriter(17, 61, 2) as png:
        with pytest.raises(ValueError, match="rows of 17 RGB uint8 pixels expected"):
            png.add(pixels[:3, :16])
        with pytest.raises(ValueError, match="rows of 17 RGB uint8 pixels expected"):
            png.add(pixels[:3].astype(np.uint16))
        png.add(pixels[:60])
        with pytest.raises(ValueError, match="more than the PNG's 61 rows given"):
            png.add(pixels[:2])
        with pytest.raises(ValueError, match="60 of the PNG's 61 rows given"):
            png.finish()
    with pytest.raises(ValueError, match="a PNG of 0 x 5 pixels cannot be written"):
        png_write.RgbPngWriter(0, 5)


def test_pngs_are_compressed_by_isal_where_its_wheels_are():
    """python-isal is a dependency wherever it has wheels (pyproject's marker): there the
    PNGs are compressed by ISA-L, and the level is one ISA-L takes (0-3)."""
    import platform

    from pipeline.adapters import png_write

    if platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        pytest.skip(f"python-isal has no wheel for {platform.machine()}: zlib is used")
    assert png_write.ISAL is not None and png_write.DEFAULT is png_write.ISAL
    module, level = png_write.ISAL
    assert module.__name__ == "isal.isal_zlib" and 0 <= level <= 3


def test_adler32_of_bands_combined_is_the_adler32_of_the_whole():
    import zlib

    from pipeline.adapters.png_write import adler32_combine

    rng = np.random.default_rng(4)
    for _ in range(500):
        a = rng.bytes(int(rng.integers(0, 200)))
        b = rng.bytes(int(rng.integers(0, 200_000)))
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    big = b"\xff" * 70_000  # sums past the modulus
    assert adler32_combine(zlib.adler32(big), zlib.adler32(big), len(big)) == \
        zlib.adler32(big + big)


def test_several_pages_of_a_file_open_it_once_and_each_page_gets_its_own_error(tmp_path):
    """preview.thumbnails: the file opened once for all its pages asked for; a page that
    cannot be shown gets its error in its place, the others their thumbnails; a file that
    cannot be opened gives every page its error."""
    from pipeline import preview
    from pipeline.errors import NotATiffError, PageNotFoundError

    path = tmp_path / "three.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(np.full((40, 30), 50 * k, np.uint8), photometric="minisblack")
    opened = []
    real_open = preview.open_tiff

    def counting(url: str):  # type: ignore[no-untyped-def]
        opened.append(url)
        return real_open(url)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preview, "open_tiff", counting)
        made = preview.thumbnails(str(path), [2, 7, 0], 16)
    assert opened == [str(path)]
    assert [m.page for m in made if isinstance(m, preview.Thumbnail)] == [2, 0]
    assert isinstance(made[1], PageNotFoundError) and "page 7" in str(made[1])
    assert np.asarray(made[0].image).mean() == 100 and np.asarray(made[2].image).max() == 0
    (tmp_path / "not.tif").write_bytes(b"hello, world")
    assert all(isinstance(m, NotATiffError)
               for m in preview.thumbnails(str(tmp_path / "not.tif"), [0, 1], 16))
