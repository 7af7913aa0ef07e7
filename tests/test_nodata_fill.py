"""What a page's pixels without data read as: segments left empty (sparse) and the invalid
pixels of a LERC segment's mask, read as GDAL reads them (docs/inputs.md, "Pixels without
data").

- A segment left empty (offset 0 and byte count 0: GDAL's SPARSE_OK, a block never
  written) holds the page's no-data value (GDAL_NODATA) when it has one, as GDAL and
  tifffile's ``asarray`` fill it; zeros otherwise (test_tiff_read's sparse test).
- A LERC segment (GDAL's LERC, LERC_DEFLATE, LERC_ZSTD) stores which pixels are valid;
  libtiff, in GDAL, reads the invalid pixels of a float page as NaN. tifffile's decode drops
  the mask (it reads them as 0.0), so here the reference is the written array itself, NaN
  in place, not tifffile's read.

The inputs are written by tifffile and imagecodecs' LERC encoder (which stores a float
array's NaN as the mask), and run through ``tiffpipe run`` (the ``engine`` tests).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from test_nodata_filters import reference_blur

import pipeline.preview as preview_module
from pipeline import cli
from pipeline.adapters.tiff_read import get_page, open_tiff, read_window
from pipeline.core.grid import Rect

H, W, T = 96, 128, 32
NODATA = 42113  # GDAL_NODATA


def _page(dtype: str, channels: int = 1, height: int = H, width: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    base = (yy * 7 + xx * 3) % 1000 + 100
    page = np.dstack([base + 11 * c for c in range(channels)]) if channels > 1 else base
    return page.astype(dtype) / 1000 if dtype.startswith("float") else page.astype(dtype)


def _nodata(text: str | None) -> list[tuple[int, str, int, str, bool]]:
    return [] if text is None else [(NODATA, "s", 0, text, True)]


def _make_sparse(path: Path, segments: list[int]) -> None:
    """Set the offsets and byte counts of ``segments`` of the first page to 0 (left empty)."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        for code in (324, 325) if page.is_tiled else (273, 279):
            tag = page.tags[code]
            kind = {3: "<u2", 4: "<u4"}[int(tag.dtype)]  # SHORT or LONG
            values = np.frombuffer(data, kind, count=tag.count, offset=tag.valueoffset).copy()
            values[segments] = 0
            data[tag.valueoffset:tag.valueoffset + values.nbytes] = values.tobytes()
    path.write_bytes(bytes(data))


def _read(path: Path, rect: Rect | None = None) -> np.ndarray:
    url = str(path)
    with open_tiff(url) as tf:
        page = get_page(tf, url, 0)
        return read_window(tf, page, url, 0, rect or Rect(0, 0, page.imagelength,
                                                          page.imagewidth))


# --- sparse segments -------------------------------------------------------------------------

#: layout name -> tifffile.imwrite arguments (uncompressed strips: read by rows, PageReader)
LAYOUTS = {
    "tiles": {"tile": (T, T), "compression": "zlib"},
    "strips": {"rowsperstrip": 16, "compression": "zlib"},
    "raw strips": {"rowsperstrip": 16, "compression": None},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", "7"), ("int16", "-9999"),
                                                ("float32", "nan"), ("float32", "-3.5")])
def test_sparse_segments_hold_the_pages_nodata(tmp_path, layout, dtype, nodata):
    """A segment left empty in a page with GDAL_NODATA reads as that value (NaN too), as
    tifffile's whole-page read and GDAL fill it, in every window that touches it."""
    page = _page(dtype)
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, page, metadata=None, extratags=_nodata(nodata), **LAYOUTS[layout])
    _make_sparse(path, [0, 3])
    want = tifffile.imread(path)
    value = np.array(float(nodata)).astype(dtype)
    if "tiles" in layout:
        empty = want[:T, :T], want[:T, 3 * T:4 * T]
    else:
        empty = want[:16], want[48:64]
    for block in empty:
        assert np.array_equal(block, np.full_like(block, value), equal_nan=True)
    assert np.array_equal(_read(path), want, equal_nan=True)
    assert np.array_equal(_read(path, Rect(5, 20, 70, 110)), want[5:70, 20:110], equal_nan=True)


def test_a_sparse_jpeg_segment_previewed_at_an_eighth_holds_the_nodata(tmp_path):
    """The preview's scaled JPEG decode has its own reading of a segment left empty: the
    page's no-data value too, not black."""
    rng = np.random.default_rng(1)
    page = rng.integers(40, 60, (1024, 1024), dtype=np.uint8)
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, page, compression="jpeg", tile=(256, 256), metadata=None,
                     extratags=_nodata("200"))
    _make_sparse(path, [5])  # rows 256-511, columns 256-511
    with tifffile.TiffFile(path) as tf:
        reader = preview_module.PageReader(tf, tf.pages[0], str(path), 0)
        got, _, scale = preview_module.downsample(reader, 64, 64, exact=False)
    assert scale == 8
    assert np.all(got[17:31, 17:31] == 200)  # inside the empty tile
    assert got[:15, :15].max() < 70


# --- LERC masks --------------------------------------------------------------------------


def _lerc_tiles(page: np.ndarray, masks: np.ndarray | None = None, planar: bool = False
                ) -> Iterator[bytes]:
    """The LERC-encoded tiles of ``page`` (T x T, padded at the edges), with ``masks`` of
    valid pixels ((h, w), or (h, w, s) with ``planar``: a tile with invalid pixels is one
    band a sample, each with its mask, as libtiff writes a float tile whose pixels have NaN
    in some of their samples only; the other tiles interleaved, without a mask)."""
    for y in range(0, page.shape[0], T):
        for x in range(0, page.shape[1], T):
            pad = ((0, T - page[y:y + T].shape[0]), (0, T - page[:, x:x + T].shape[1]))
            tile = np.pad(page[y:y + T, x:x + T], pad + ((0, 0),) * (page.ndim - 2))
            mask = None if masks is None else np.pad(masks[y:y + T, x:x + T],
                                                     pad + ((0, 0),) * (masks.ndim - 2))
            if planar and not mask.all():  # (as libtiff: tiles without NaN interleaved)
                tile, mask = np.moveaxis(tile, -1, 0), np.moveaxis(mask, -1, 0)
            elif planar:
                mask = None
            yield imagecodecs.lerc_encode(np.ascontiguousarray(tile), level=0.0, masks=mask,
                                          planar=True if planar and mask is not None else None)


def _float_with_nan(dtype: str = "float32", channels: int = 1) -> np.ndarray:
    page = _page(dtype, channels)
    page[:40, :50] = np.nan
    page[70:, 100:] = np.nan
    return page


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["tiles", "strips"])
@pytest.mark.parametrize("nodata", ["nan", "-9999", None])
def test_lerc_invalid_float_pixels_read_as_nan(tmp_path, dtype, layout, nodata):
    """A float LERC page's pixels outside its segments' masks (NaN where it was written:
    the encoder keeps NaN as the mask) read as NaN, as libtiff (GDAL) reads them whatever
    the page's GDAL_NODATA; tifffile's read has 0.0 there."""
    page = _float_with_nan(dtype)
    path = tmp_path / "lerc.tif"
    kw = {"tile": (T, T)} if layout == "tiles" else {"rowsperstrip": 40}  # a short last strip
    tifffile.imwrite(path, page, compression="lerc", metadata=None, extratags=_nodata(nodata),
                     **kw)
    with tifffile.TiffFile(path) as tf:
        assert int(tf.pages[0].compression) == 34887
    tiffs = tifffile.imread(path)
    assert not np.isnan(tiffs).any() and not tiffs[:40, :50].any()  # tifffile: 0.0
    assert np.array_equal(_read(path), page, equal_nan=True)
    assert np.array_equal(_read(path, Rect(30, 40, 80, 110)), page[30:80, 40:110],
                          equal_nan=True)


@pytest.mark.parametrize("nodata", ["7", None])
def test_lerc_invalid_integer_pixels_read_as_the_nodata(tmp_path, nodata):
    """An integer LERC page's invalid pixels read as its no-data value when it has one; with
    none, as LERC decodes them (0, tifffile's read; GDAL fails to read such a segment)."""
    page = _page("uint16")
    valid = np.ones((H, W), bool)
    valid[:40, :50] = False
    path = tmp_path / "lerc_int.tif"
    tifffile.imwrite(path, _lerc_tiles(page, valid), shape=page.shape, dtype=page.dtype,
                     tile=(T, T), compression="lerc", metadata=None, extratags=_nodata(nodata))
    want = page.copy()
    want[~valid] = 7 if nodata else 0
    assert np.array_equal(_read(path), want)
    if nodata is None:
        assert np.array_equal(tifffile.imread(path), want)


def test_lerc_per_band_masks_are_interleaved(tmp_path):
    """A contiguous float page's LERC segment of one band a sample, each with its mask (what
    libtiff writes when a pixel has NaN in some of its samples only), reads interleaved with
    NaN where each band is invalid (tifffile reads its bands as if interleaved)."""
    page = _page("float32", 3)
    valid = np.ones(page.shape, bool)
    valid[:40, :50, 0] = False
    valid[60:, 90:, 2] = False
    path = tmp_path / "lerc_bands.tif"
    tifffile.imwrite(path, _lerc_tiles(page, valid, planar=True), shape=page.shape,
                     dtype=page.dtype, tile=(T, T), compression="lerc", photometric="rgb",
                     planarconfig="contig", metadata=None, extratags=_nodata("nan"))
    want = np.where(valid, page, np.nan).astype(np.float32)
    assert not np.array_equal(tifffile.imread(path)[~np.isnan(want)], want[~np.isnan(want)])
    assert np.array_equal(_read(path), want, equal_nan=True)


def test_lerc_alpha_stored_as_the_mask_is_read_back(tmp_path):
    """An 8-bit RGBA page whose alpha (unassociated, 0 or 255) libtiff stored as the LERC
    mask of its colour samples reads with that alpha, its colour 0 where it is 0 (LERC keeps
    no values there), as libtiff reads it (tifffile cannot read the page)."""
    page = (_page("uint16", 3) % 256).astype(np.uint8)
    valid = np.ones((H, W), bool)
    valid[:40, :50] = False
    path = tmp_path / "lerc_rgba.tif"
    tifffile.imwrite(path, _lerc_tiles(page, valid), shape=(H, W, 4), dtype=np.uint8,
                     tile=(T, T), compression="lerc", photometric="rgb",
                     extrasamples=["unassalpha"], metadata=None)
    alpha = valid.astype(np.uint8) * 255
    assert np.array_equal(_read(path), np.dstack([np.where(valid[..., None], page, 0), alpha]))
    with pytest.raises(Exception, match="reshape"):
        tifffile.imread(path)


# --- tiffpipe run ------------------------------------------------------------------------

BLUR = [{"op": "gaussian_blur", "sigma": 2}]


@pytest.mark.engine
def test_run_keeps_what_has_no_data_without_data(tmp_path):
    """``tiffpipe run`` of a sparse page with GDAL_NODATA and of a LERC float page with NaN
    no-data, copied and blurred: the copy is the page as GDAL reads it (the no-data value
    in the empty tiles, NaN where LERC's mask says invalid) and the blur is that of the
    page's valid samples alone (tests/test_nodata_filters.py), with GDAL_NODATA kept."""
    sparse = _page("uint16", height=300, width=260)
    sparse_path = tmp_path / "sparse.tif"
    tifffile.imwrite(sparse_path, sparse, tile=(64, 64), compression="zlib", metadata=None,
                     extratags=_nodata("7"))
    _make_sparse(sparse_path, [0, 1, 7])  # tiles (0, 0), (0, 1), (1, 2): 5 to a row
    sparse[:64, :128] = 7
    sparse[64:128, 128:192] = 7
    lerc = _page("float32", height=300, width=260)
    lerc[:100, :100] = np.nan
    lerc_path = tmp_path / "lerc.tif"
    tifffile.imwrite(lerc_path, lerc, tile=(64, 64), compression="lerc", metadata=None,
                     extratags=_nodata("nan"))
    jobs = [{"input": str(src), "output": str(tmp_path / "out" / f"{name}_{i}.tif"),
             "ops": ops}
            for name, src in (("sparse", sparse_path), ("lerc", lerc_path))
            for i, ops in enumerate(([], BLUR))]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 128, "output_options": {"tile": 64}},
                                     "jobs": jobs}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet"])
    assert code == 0, err.getvalue()
    for name, want in (("sparse", sparse), ("lerc", lerc)):
        valid = want != 7 if name == "sparse" else ~np.isnan(want)
        blur = np.where(valid, reference_blur(want, 2, valid), want)
        blur[(blur == 7) & valid] = 8  # (data kept off the no-data value; NaN: none is)
        for i, ref in enumerate((want, blur)):
            with tifffile.TiffFile(tmp_path / "out" / f"{name}_{i}.tif") as tf:
                got = tf.pages[0].asarray()
                assert NODATA in tf.pages[0].tags
            assert np.array_equal(got, ref, equal_nan=True), (name, i)
    assert int(np.isnan(lerc).sum()) == 10_000


def test_a_sparse_segment_of_a_16_bit_palette_page_holds_its_nodata_index(tmp_path):
    """A 16-bit palette page's indices are 16-bit: a no-data index above 255 fills a segment
    left empty (it was filled as 8-bit: a raw OverflowError, no named error), and reads as
    that index's colour, as tifffile's indices and the colormap give it."""
    rng = np.random.default_rng(3)
    cmap = rng.integers(0, 65536, (3, 65536), dtype=np.uint16)
    index = (_page("uint16") % 1000).astype(np.uint16)
    path = tmp_path / "palette16.tif"
    tifffile.imwrite(path, index, photometric="palette", colormap=cmap, tile=(T, T),
                     compression="zlib", metadata=None, extratags=_nodata("300"))
    _make_sparse(path, [1])
    indices = tifffile.imread(path)
    assert np.all(indices[:T, T:2 * T] == 300)
    got = _read(path)
    assert got.dtype == np.uint16 and got.shape == (H, W, 3)
    assert np.array_equal(got, cmap.T[indices])
