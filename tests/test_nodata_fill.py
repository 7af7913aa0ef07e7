"""What a page's pixels without data read as: segments left empty (sparse), read as GDAL
reads them (docs/inputs.md, "Pixels without data").

- A segment left empty (offset 0 and byte count 0: GDAL's SPARSE_OK, a block never
  written) holds the page's no-data value (GDAL_NODATA) when it has one, as GDAL and
  tifffile's ``asarray`` fill it; zeros otherwise (test_tiff_read's sparse test).

The inputs are written by tifffile, and run through ``tiffpipe run`` (the ``engine`` tests).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

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


# --- tiffpipe run ------------------------------------------------------------------------

BLUR = [{"op": "gaussian_blur", "sigma": 2}]


@pytest.mark.engine
def test_run_keeps_what_has_no_data_without_data(tmp_path):
    """``tiffpipe run`` of a sparse page with GDAL_NODATA, copied and blurred: the copy is
    the page as GDAL reads it (the no-data value in the empty tiles) and the blur is
    OpenCV's of that page, with GDAL_NODATA kept."""
    sparse = _page("uint16", height=300, width=260)
    sparse_path = tmp_path / "sparse.tif"
    tifffile.imwrite(sparse_path, sparse, tile=(64, 64), compression="zlib", metadata=None,
                     extratags=_nodata("7"))
    _make_sparse(sparse_path, [0, 1, 7])  # tiles (0, 0), (0, 1), (1, 2): 5 to a row
    sparse[:64, :128] = 7
    sparse[64:128, 128:192] = 7
    jobs = [{"input": str(src), "output": str(tmp_path / "out" / f"{name}_{i}.tif"),
             "ops": ops}
            for name, src in (("sparse", sparse_path),)
            for i, ops in enumerate(([], BLUR))]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 128, "output_options": {"tile": 64}},
                                     "jobs": jobs}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet"])
    assert code == 0, err.getvalue()
    for name, want in (("sparse", sparse),):
        for i, ref in enumerate((want, cv2.GaussianBlur(want, (0, 0), 2))):
            with tifffile.TiffFile(tmp_path / "out" / f"{name}_{i}.tif") as tf:
                got = tf.pages[0].asarray()
                assert NODATA in tf.pages[0].tags
            assert np.array_equal(got, ref, equal_nan=True), (name, i)
