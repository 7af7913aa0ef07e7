"""read_window: decoded windows equal tifffile's whole-page read, and only the segments that
touch a window are read, each once."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline import cli
from pipeline.adapters.tiff_read import (
    PageReader,
    check_segments_in_file,
    get_page,
    open_tiff,
    planned_page,
    read_infos,
    read_infos_and_version,
    read_window,
)
from pipeline.core.grid import Rect, columns_still_read
from pipeline.errors import CorruptTiffError, PageNotFoundError, UnsupportedTiffError

H, W = 150, 173  # sizes no segment divides


def make_page(seed: int, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    shape = (height, width) if channels == 1 else (height, width, channels)
    base = (yy * 3 + xx * 5)[..., None] if channels > 1 else yy * 3 + xx * 5
    if np.dtype(dtype).kind == "f":
        return (rng.normal(0, 1, shape) + base / 100).astype(dtype)
    info = np.iinfo(dtype)
    noise = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    # smooth areas (for JPEG) next to noise
    smooth = (base % (int(info.max) + 1)).astype(dtype) if info.max < 2**31 else noise
    out = np.where((yy // 20 + xx // 30)[..., None] % 2 == 0 if channels > 1
                   else (yy // 20 + xx // 30) % 2 == 0, smooth, noise)
    return np.ascontiguousarray(out.astype(dtype))


#: id -> (dtype, channels, writer kwargs)
FILES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "u8-c3-tiles32x48-none": ("uint8", 3, {"tile": (32, 48)}),
    "u8-c1-strips7-zlib": ("uint8", 1, {"rowsperstrip": 7, "compression": "zlib"}),
    "u8-c1-strips1-lzw": ("uint8", 1, {"rowsperstrip": 1, "compression": "lzw"}),
    "u16-c3-tiles16-lzw-separate": ("uint16", 3, {"tile": (16, 16), "compression": "lzw",
                                                  "planarconfig": "separate"}),
    "u16-c4-strips16-zstd-predictor": ("uint16", 4, {"rowsperstrip": 16, "compression": "zstd",
                                                     "predictor": True}),
    "u16-c1-tiles64-packbits": ("uint16", 1, {"tile": (64, 64), "compression": "packbits"}),
    "f32-c1-tiles48x32-zstd-predictor": ("float32", 1, {"tile": (48, 32), "compression": "zstd",
                                                        "predictor": True}),
    "f32-c2-strips5-packbits-separate": ("float32", 2, {"rowsperstrip": 5,
                                                        "compression": "packbits",
                                                        "planarconfig": "separate"}),
    "f32-c3-strips-whole-deflate": ("float32", 3, {"rowsperstrip": H, "compression": "deflate"}),
    "u8-c3-tiles32-jpeg": ("uint8", 3, {"tile": (32, 32), "compression": "jpeg"}),
    "u8-c1-strips16-jpeg": ("uint8", 1, {"rowsperstrip": 16, "compression": "jpeg"}),
    "u8-c3-tiles32-jpeg-ycbcr": ("uint8", 3, {"tile": (32, 32), "compression": "jpeg",
                                              "photometric": "ycbcr", "subsampling": (2, 2)}),
    "u8-c3-strips16-jpeg-ycbcr": ("uint8", 3, {"rowsperstrip": 16, "compression": "jpeg",
                                               "photometric": "ycbcr", "subsampling": (2, 2)}),
    "u8-c4-tiles16x32-packbits-separate": ("uint8", 4, {"tile": (16, 32),
                                                        "compression": "packbits",
                                                        "planarconfig": "separate"}),
    "i16-c1-strips-none": ("int16", 1, {"rowsperstrip": 40}),
    "f64-c1-tiles32-deflate": ("float64", 1, {"tile": (32, 32), "compression": "deflate"}),
    "u16-c3-tiles32-zstd-bigtiff": ("uint16", 3, {"tile": (32, 32), "compression": "zstd",
                                                  "bigtiff": True}),
    "u8-c1-strips9-lzw-bigtiff": ("uint8", 1, {"rowsperstrip": 9, "compression": "lzw",
                                               "bigtiff": True}),
    "u8-c3-strips10-none-bigtiff-separate": ("uint8", 3, {"rowsperstrip": 10, "bigtiff": True,
                                                          "planarconfig": "separate"}),
    "u16-c1-strips13-none-bigendian": ("uint16", 1, {"rowsperstrip": 13, "byteorder": ">"}),
    "f32-c3-tiles32-zlib-bigendian-separate": ("float32", 3, {"tile": (32, 32),
                                                              "compression": "zlib",
                                                              "byteorder": ">",
                                                              "planarconfig": "separate"}),
    "u16-c2-strips-whole-none-bigendian-bigtiff": ("uint16", 2, {"rowsperstrip": H,
                                                                 "byteorder": ">",
                                                                 "bigtiff": True}),
}


def write(path: Path, page: np.ndarray, kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)
    ch = 1 if page.ndim == 2 else page.shape[2]
    kwargs.setdefault("photometric", "rgb" if ch >= 3 else "minisblack")
    if ch > 1:
        kwargs.setdefault("planarconfig", "contig")
    if ch == 4:
        kwargs["extrasamples"] = ["unassalpha"]
    data = page
    if kwargs["planarconfig" if ch > 1 else "photometric"] == "separate":
        data = np.ascontiguousarray(np.moveaxis(page, -1, 0))
    tifffile.imwrite(path, data, metadata=None, **kwargs)


def as_hwc(page: tifffile.TiffPage) -> np.ndarray:
    data = page.asarray()
    if page.planarconfig == 2 and page.samplesperpixel > 1:
        data = np.moveaxis(data, 0, -1)
    return data


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    """id -> (path, the written array, tifffile's whole-page read)."""
    folder = tmp_path_factory.mktemp("tiff_read")
    out = {}
    for i, (name, (dtype, ch, kwargs)) in enumerate(FILES.items()):
        page = make_page(i, H, W, ch, dtype)
        path = folder / f"{name}.tif"
        write(path, page, kwargs)
        whole = tifffile.imread(path)
        if kwargs.get("planarconfig") == "separate":
            whole = np.moveaxis(whole, 0, -1)
        if "jpeg" not in name:
            assert np.array_equal(whole, page)
        out[name] = (path, page, whole)
    return out


def _windows(seed: int, height: int = H, width: int = W) -> list[Rect]:
    fixed = [
        Rect(0, 0, height, width),  # the whole page
        Rect(0, 0, 1, 1), Rect(height - 1, width - 1, height, width),  # corner pixels
        Rect(0, width - 1, 1, width), Rect(height - 1, 0, height, 1),
        Rect(height // 2, width // 2, height // 2 + 1, width // 2 + 1),  # one pixel inside
        Rect(height - 1, 0, height, width), Rect(0, 0, height, 1),  # last row, first column
        Rect(0, width - 1, height, width),  # last column
        Rect(31, 47, 33, 49), Rect(15, 15, 17, 17), Rect(6, 0, 8, width),  # across segments
        Rect(5, 3, height - 10, width - 3), Rect(64, 64, 128, 128), Rect(32, 32, 64, 64),
        Rect(height - 20, width - 30, height, width),  # bottom-right edge segment
    ]
    rng = np.random.default_rng(seed)
    rand = []
    for _ in range(12):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        rand.append(Rect(y0, x0, int(rng.integers(y0 + 1, height + 1)),
                         int(rng.integers(x0 + 1, width + 1))))
    return fixed + rand


@pytest.mark.parametrize("name", list(FILES))
def test_windows_equal_the_whole_page_read(files, name):
    path, _, whole = files[name]
    url = str(path)
    with open_tiff(url) as tf:
        page = get_page(tf, url, 0)
        for rect in _windows(len(name)):
            got = read_window(tf, page, url, 0, rect)
            want = whole[rect.y0:rect.y1, rect.x0:rect.x1]
            assert got.dtype == want.dtype and got.shape == want.shape, (rect, got.shape)
            assert np.array_equal(got, want, equal_nan=True), rect


@pytest.mark.parametrize("name", [n for n in FILES if "strips" in n])
def test_stitched_strip_windows_equal_the_whole_page(files, name):
    """Strips decoded window by window (as split units do) give the whole-page read."""
    path, _, whole = files[name]
    url = str(path)
    out = np.zeros_like(whole)
    with open_tiff(url) as tf:
        page = get_page(tf, url, 0)
        for y in range(0, H, 37):
            for x in range(0, W, 41):
                r = Rect(y, x, min(y + 37, H), min(x + 41, W))
                out[r.y0:r.y1, r.x0:r.x1] = read_window(tf, page, url, 0, r)
        assert np.array_equal(out, whole)
        assert np.array_equal(read_window(tf, page, url, 0, Rect(0, 0, H, W)), whole)


def test_multi_page_file(tmp_path):
    """Pages of different sizes, dtypes and layouts in one file (one of them BigTIFF-free)."""
    pages = [make_page(1, 100, 77, 3, "uint8"), make_page(2, 64, 150, 1, "uint16"),
             make_page(3, 130, 90, 4, "float32")]
    kws = [{"tile": (16, 16), "compression": "zstd"},
           {"rowsperstrip": 7, "compression": "lzw"},
           {"rowsperstrip": 9, "planarconfig": "separate", "compression": "deflate"}]
    path = tmp_path / "multi.tif"
    with tifffile.TiffWriter(path) as tw:
        for page, kw in zip(pages, kws, strict=True):
            ch = 1 if page.ndim == 2 else page.shape[2]
            data = np.moveaxis(page, -1, 0) if kw.get("planarconfig") == "separate" else page
            tw.write(data, photometric="rgb" if ch >= 3 else "minisblack", metadata=None,
                     extrasamples=["unassalpha"] if ch == 4 else None, **kw)
    url = str(path)
    infos = read_infos(url, None)
    assert [(i.index, i.height, i.width, i.channels, i.dtype, i.tiled, i.segment_rows)
            for i in infos] == [(0, 100, 77, 3, "uint8", True, 16),
                                (1, 64, 150, 1, "uint16", False, 7),
                                (2, 130, 90, 4, "float32", False, 9)]
    assert [i.index for i in read_infos(url, [2, 0])] == [2, 0]
    with open_tiff(url) as tf:
        for index in (2, 0, 1):
            want = pages[index]
            page = get_page(tf, url, index)
            h, w = want.shape[:2]
            for rect in _windows(index, h, w):
                rect = Rect(min(rect.y0, h - 1), min(rect.x0, w - 1), min(rect.y1, h),
                            min(rect.x1, w))
                got = read_window(tf, page, url, index, rect)
                assert np.array_equal(got, want[rect.y0:rect.y1, rect.x0:rect.x1]), (index, rect)


def test_a_planned_page_is_read_at_its_ifd_without_walking_the_pages(tmp_path):
    """``planned_page``: the page at the IFD offset the plan recorded is the page the chain
    gives, read without walking the file's chain of pages (a file of many pages walked it
    for every unit). A page there that is not the planned one, or an offset that holds no
    IFD (the file changed since it was planned), is a CorruptTiffError naming the page."""
    path = tmp_path / "pages.tif"
    pages = [make_page(i, 40 + i, 30 + 2 * i, 1, "uint8") for i in range(50)]
    with tifffile.TiffWriter(path) as tw:
        for page in pages:
            tw.write(page, tile=(16, 16), compression="zlib", metadata=None)
    url = str(path)
    infos = read_infos(url, None)
    assert all(i.ifd_offset > 0 for i in infos)
    walked: list[int] = []
    for info in (infos[49], infos[3], infos[0]):
        with open_tiff(url) as tf:
            real_seek = tf.pages._seek
            tf.pages._seek = lambda index, real=real_seek: walked.append(index) or real(index)
            page = planned_page(tf, url, info)
            assert np.array_equal(read_window(tf, page, url, info.index,
                                              Rect(0, 0, info.height, info.width)),
                                  pages[info.index])
    assert walked == []  # no page was looked up along the chain
    with open_tiff(url) as tf:  # an older plan, without offsets: the chain, as before
        old = dataclasses.replace(infos[7], ifd_offset=0)
        assert planned_page(tf, url, old).shape == pages[7].shape
        with pytest.raises(CorruptTiffError, match="page 7 is 44 x 47 px, planned as 30 x 40"):
            planned_page(tf, url, dataclasses.replace(infos[0], index=7,
                                                      ifd_offset=infos[7].ifd_offset))
        with pytest.raises(CorruptTiffError, match="page 3: its IFD at offset 1 cannot be read"):
            planned_page(tf, url, dataclasses.replace(infos[3], ifd_offset=1))


@pytest.mark.parametrize("name,tiled,segment_rows,channels,dtype", [
    ("u8-c3-tiles32x48-none", True, 32, 3, "uint8"),
    ("u8-c1-strips7-zlib", False, 7, 1, "uint8"),
    ("f32-c3-strips-whole-deflate", False, H, 3, "float32"),
    ("u16-c3-tiles16-lzw-separate", True, 16, 3, "uint16"),
    ("u8-c3-tiles32-jpeg-ycbcr", True, 32, 3, "uint8"),
    ("u16-c3-tiles32-zstd-bigtiff", True, 32, 3, "uint16"),
])
def test_page_info(files, name, tiled, segment_rows, channels, dtype):
    (info,) = read_infos(str(files[name][0]), [0])
    assert (info.height, info.width, info.channels, info.dtype) == (H, W, channels, dtype)
    assert (info.tiled, info.segment_rows) == (tiled, segment_rows)
    assert info.photometric == ("rgb" if channels >= 3 else "minisblack")


# --- only the needed segments are read -------------------------------------------------


class CountingBytesIO(io.BytesIO):
    """A file that records (offset, length) of every read while ``recording``."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.recording = False
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1) -> bytes:
        pos = self.tell()
        data = super().read(size)
        if self.recording:
            self.reads.append((pos, len(data)))
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        pos = self.tell()
        n = super().readinto(buffer)
        if self.recording:
            self.reads.append((pos, n))
        return n


def expected_segments(page: tifffile.TiffPage, rect: Rect) -> set[int]:
    """Indices of the segments a window touches, from the page geometry."""
    if page.is_tiled:
        sh, sw = page.tilelength, page.tilewidth
    else:
        sh, sw = min(page.rowsperstrip, page.imagelength), page.imagewidth
    rows, cols = -(-page.imagelength // sh), -(-page.imagewidth // sw)
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    return {p * rows * cols + r * cols + c
            for p in range(planes)
            for r in range(rows) for c in range(cols)
            if r * sh < rect.y1 and rect.y0 < (r + 1) * sh
            and c * sw < rect.x1 and rect.x0 < (c + 1) * sw}


def check_reads(page: tifffile.TiffPage, rect: Rect, reads: list[tuple[int, int]]) -> None:
    """Each segment the window touches is read once, in one contiguous read inside it, and
    nothing else is read. A whole segment for compressed data; an uncompressed strip may be
    read partially, but the read covers at least the window's rows of it."""
    offsets, counts = page.dataoffsets, page.databytecounts
    needed = expected_segments(page, rect)
    raw_strips = int(page.compression) == 1 and not page.is_tiled
    seen: list[int] = []
    for start, n in reads:
        hits = [i for i in needed if offsets[i] <= start and start + n <= offsets[i] + counts[i]]
        assert len(hits) == 1, f"read of {n} bytes at {start} is outside the needed segments"
        seg = hits[0]
        seen.append(seg)
        if not raw_strips:
            assert (start, n) == (offsets[seg], counts[seg]), "a partial segment read"
            continue
        rows_per_strip = min(page.rowsperstrip, page.imagelength)
        row_bytes = counts[0] // rows_per_strip
        strips = -(-page.imagelength // rows_per_strip)
        strip_y = (seg % strips) * rows_per_strip
        y0, y1 = max(rect.y0, strip_y), min(rect.y1, strip_y + rows_per_strip)
        lo = offsets[seg] + (y0 - strip_y) * row_bytes
        hi = offsets[seg] + (y1 - strip_y) * row_bytes
        assert start <= lo and hi <= start + n, "the read misses rows of the window"
    assert sorted(seen) == sorted(needed), "a segment read twice, or a needed one not read"


@pytest.mark.parametrize("name", ["u8-c3-tiles32x48-none", "u8-c1-strips7-zlib",
                                  "u16-c3-tiles16-lzw-separate",
                                  "u8-c4-tiles16x32-packbits-separate",
                                  "u8-c3-tiles32-jpeg", "u8-c3-strips16-jpeg-ycbcr",
                                  "u8-c3-strips10-none-bigtiff-separate",
                                  "i16-c1-strips-none", "f32-c3-strips-whole-deflate",
                                  "u16-c1-strips13-none-bigendian",
                                  "u16-c2-strips-whole-none-bigendian-bigtiff",
                                  "f32-c1-tiles48x32-zstd-predictor"])
def test_reads_only_the_needed_segments(files, name):
    path, _, whole = files[name]
    fh = CountingBytesIO(path.read_bytes())
    with tifffile.TiffFile(fh) as tf:
        page = tf.pages[0]
        # what tifffile reads lazily from the IFD or the first segment (once per page)
        _ = page.dataoffsets, page.databytecounts, page.jpegtables, page.shape, page.dtype
        _ = getattr(page, "is_jfif", None)
        for rect in _windows(3):
            fh.reads.clear()
            fh.recording = True
            got = read_window(tf, page, name, 0, rect)
            fh.recording = False
            assert np.array_equal(got, whole[rect.y0:rect.y1, rect.x0:rect.x1], equal_nan=True)
            check_reads(page, rect, fh.reads)
        # a one-pixel window reads one segment per plane
        fh.reads.clear()
        fh.recording = True
        read_window(tf, page, name, 0, Rect(H // 2, W // 2, H // 2 + 1, W // 2 + 1))
        fh.recording = False
        planes = page.samplesperpixel if page.planarconfig == 2 else 1
        assert len(fh.reads) == planes
        if len(page.dataoffsets) > planes:
            assert sum(n for _, n in fh.reads) < sum(page.databytecounts)


def test_truncated_file_fails_only_for_windows_on_missing_segments(tmp_path):
    page = make_page(5, H, W, 1, "uint8")
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, page, rowsperstrip=10, metadata=None)
    with tifffile.TiffFile(path) as tf:
        last = int(tf.pages[0].dataoffsets[-1])
    data = path.read_bytes()
    assert last > len(data) // 2  # the IFD comes before the pixel data
    path.write_bytes(data[:last + 5])
    url = str(path)
    with open_tiff(url) as tf:
        p = get_page(tf, url, 0)
        top = read_window(tf, p, url, 0, Rect(0, 0, 50, W))
        assert np.array_equal(top, page[:50])
        with pytest.raises(CorruptTiffError, match="truncated"):
            read_window(tf, p, url, 0, Rect(H - 3, 0, H, 5))


def test_a_page_cut_short_is_refused_only_for_a_window_on_its_lost_segments(tmp_path):
    """check_segments_in_file with the window a job reads (a crop's): the strips of each
    plane of a page whose samples are stored apart are counted, so a window of the top rows
    reads the first strips of every plane, whole, and passes; one of the bottom rows reads
    the last plane's last strip, lost, and is refused naming it; no window: the page."""
    page = np.random.default_rng(3).integers(0, 255, (3, 40, 30), np.uint8)
    path = tmp_path / "planes.tif"
    tifffile.imwrite(path, page, photometric="rgb", planarconfig="separate",
                     rowsperstrip=10, compression="zlib", metadata=None)
    with tifffile.TiffFile(path) as tf:
        offsets = [int(o) for o in tf.pages[0].dataoffsets]
    assert len(offsets) == 12 and offsets[11] == max(offsets)  # plane 2's strip 3 last
    path.write_bytes(path.read_bytes()[:offsets[11] + 2])
    url = str(path)
    with open_tiff(url) as tf:
        p = get_page(tf, url, 0)
        check_segments_in_file(p, "planes.tif: page 0", Rect(0, 0, 30, 30))  # rows 0-29
        for window in (Rect(30, 5, 31, 6), None):
            with pytest.raises(CorruptTiffError, match=r"^planes\.tif: page 0: segment 11 "
                                                       r"ends at byte \d+ but the file has"):
                check_segments_in_file(p, "planes.tif: page 0", window)


@pytest.mark.parametrize("layout", [
    {"tile": (32, 48), "planarconfig": "separate"}, {"tile": (32, 48)},
    {"rowsperstrip": 7, "planarconfig": "separate"}, {"rowsperstrip": 7}])
def test_the_segments_a_window_is_checked_for_are_those_the_reader_reads(tmp_path, layout):
    """check_segments_in_file counts the segments of the window a job reads
    (``_read_segments``) as PageReader reads them (one :class:`SegmentGrid`): tiles or strips,
    every plane of a planar page; a window past the page's edges is cut to it."""
    from pipeline.adapters.tiff_read import SegmentGrid, _read_segments

    path = tmp_path / "page.tif"
    pixels = make_page(4, H, W, 3, "uint8")
    if layout.get("planarconfig"):  # (tifffile takes a planar page's samples first)
        pixels = np.moveaxis(pixels, -1, 0)
    tifffile.imwrite(path, pixels, photometric="rgb", compression="zlib", metadata=None,
                     **layout)
    url = str(path)
    with open_tiff(url) as tf:
        p = get_page(tf, url, 0)
        count = len(p.dataoffsets)
        reader = PageReader(tf, p, url, 0)
        assert (p.imagelength, p.imagewidth) == (H, W)
        for window in (Rect(0, 0, 1, 1), Rect(31, 47, 33, 49), Rect(-5, -5, H + 9, W + 9),
                       Rect(100, 60, 150, 173), Rect(H, 0, H + 4, W)):
            inside = Rect(max(window.y0, 0), max(window.x0, 0), min(window.y1, H),
                          min(window.x1, W))
            read = sorted(seg for seg, _, _ in reader._segments(inside)) \
                if inside.y0 < inside.y1 else []
            said = _read_segments(p, SegmentGrid.of(p), window, count)
            assert np.flatnonzero(said).tolist() == read, window
        whole = {seg for seg, _, _ in reader._segments(Rect(0, 0, H, W))}
        assert whole == set(range(count))


@pytest.mark.parametrize("tiled", [True, False])
def test_sparse_segments_read_as_zeros(tmp_path, tiled):
    """A segment with byte count 0 (a sparse file) of a page without GDAL_NODATA reads as
    zeros, like libtiff and tifffile (with one: tests/test_nodata_fill.py)."""
    page = make_page(6, H, W, 1, "uint16")
    path = tmp_path / "sparse.tif"
    kw = {"tile": (32, 32)} if tiled else {"rowsperstrip": 16}
    tifffile.imwrite(path, page, compression="zlib", metadata=None, bigtiff=False, **kw)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        for code in (324, 325) if tiled else (273, 279):  # offsets and byte counts: 0, 0
            tag = tf.pages[0].tags[code]
            kind = {3: "<u2", 4: "<u4"}[int(tag.dtype)]  # SHORT or LONG
            at, n = tag.valueoffset, tag.count
            values = np.frombuffer(data, kind, count=n, offset=at).copy()
            sparse = [0, 3, n - 1]
            values[sparse] = 0
            data[at:at + values.nbytes] = values.tobytes()
    path.write_bytes(bytes(data))
    want = tifffile.imread(path)
    url = str(path)
    with open_tiff(url) as tf:
        p = get_page(tf, url, 0)
        assert [int(c) for c in np.array(p.databytecounts)[sparse]] == [0, 0, 0]
        got = read_window(tf, p, url, 0, Rect(0, 0, H, W))
        assert np.array_equal(got, want)
        assert not got[:16, :16].any() and got[H - 1, W - 1] == 0
        assert np.array_equal(read_window(tf, p, url, 0, Rect(10, 20, 70, 150)),
                              want[10:70, 20:150])


@pytest.mark.parametrize("name", list(FILES))
def test_prefetched_sweep_decodes_in_threads_and_reads_the_same(files, name):
    """A downward sweep as a fused unit makes it (prefetching the next windows into a
    decoder pool, forgetting rows passed, and along a band the columns passed): the same
    pixels as the whole-page read, every segment decoded once."""
    path, _, whole = files[name]
    url = str(path)
    step = 40
    windows = [Rect(y, x, min(y + step, H), min(x + step, W))
               for y in range(0, H, step) for x in range(0, W, step)]
    still_read = columns_still_read(windows)
    with open_tiff(url) as tf, ThreadPoolExecutor(3) as decoder:
        reader = PageReader(tf, get_page(tf, url, 0), url, 0, decoder=decoder)
        out = np.zeros_like(whole)
        for i, rect in enumerate(windows):
            for ahead in windows[i:i + 3]:
                reader.prefetch(ahead)
            got = reader.read(rect)
            out[rect.y0:rect.y1, rect.x0:rect.x1] = got.reshape(out[rect.y0:rect.y1,
                                                                    rect.x0:rect.x1].shape)
            if rect.x1 == W:
                reader.forget_above(rect.y1)
            else:
                reader.forget_left(*still_read[i])
        assert not reader.pending
        assert np.array_equal(out, whole, equal_nan=True)
        page = tf.pages[0]
        if not reader.raw_strips:  # uncompressed strips are read by rows, not decoded
            assert reader.decoded == len(page.dataoffsets)


def test_a_prefetched_damaged_segment_fails_its_read_by_name(tmp_path):
    page = make_page(7, H, W, 1, "uint8")
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, page, tile=(32, 32), compression="zlib", metadata=None)
    with tifffile.TiffFile(path) as tf:
        at = int(tf.pages[0].dataoffsets[1])
    data = bytearray(path.read_bytes())
    data[at:at + 16] = b"\xff" * 16  # the second tile's stream is garbage
    path.write_bytes(bytes(data))
    url = str(path)
    with open_tiff(url) as tf, ThreadPoolExecutor(2) as decoder:
        reader = PageReader(tf, get_page(tf, url, 0), url, 0, decoder=decoder)
        reader.prefetch(Rect(0, 0, 32, 96))
        assert np.array_equal(reader.read(Rect(0, 0, 32, 32)), page[:32, :32])
        with pytest.raises(CorruptTiffError, match=r"page 0: segment 1 .*cannot be decoded") \
                as caught:
            reader.read(Rect(0, 32, 32, 64))
    # the error says what to do, after what the codec said
    assert str(caught.value).startswith(f"{url}: page 0: segment 1 (ADOBE_DEFLATE) cannot be "
                                        "decoded (")
    assert str(caught.value).endswith("; the file is damaged: copy it again from its source or "
                                      "export it again, then check that tifffile.imread or "
                                      "tiffinfo -D reads it whole"), caught.value


def test_a_thread_keeps_its_last_local_tiff_open_while_it_is_unchanged(tmp_path):
    """kept_tiff: the same open TiffFile for a thread's next unit of an unchanged file, a
    new one once the file changes or after a failure in use, one per thread, and none left
    open after close_all (what the engine calls when a run ends). Open files are counted
    by the process's file descriptors."""
    import os
    import threading

    from pipeline.adapters import kept_files
    from pipeline.adapters.tiff_read import kept_tiff

    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((40, 40), 3, np.uint8), tile=(16, 16), metadata=None)
    url = str(path)

    def open_fds() -> int:
        fds = os.listdir("/proc/self/fd")
        return sum(1 for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}") == str(path))

    kept_files.close_all()
    with kept_tiff(url) as a:
        assert int(a.pages[0].asarray()[0, 0]) == 3
    with kept_tiff(url) as b:
        assert b is a
    assert open_fds() == 1
    others: list = []

    def other_thread() -> None:
        with kept_tiff(url) as tf:
            others.append(tf)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert others[0] is not a and kept_files.count() == 2 and open_fds() == 2  # its own
    tifffile.imwrite(path, np.full((40, 40), 9, np.uint8), tile=(16, 16), metadata=None)
    os.utime(path, ns=(1, 1))  # a changed file, whatever the clock's resolution
    with kept_tiff(url) as c:
        assert c is not a and int(c.pages[0].asarray()[0, 0]) == 9
    assert open_fds() == 2  # the one it replaced is closed
    with pytest.raises(ValueError), kept_tiff(url) as d:
        raise ValueError("a unit failed")
    assert open_fds() == 1
    with kept_tiff(url) as e:
        assert e is not d
    # a second file opened by the thread while its kept one is in use: opened for that use
    # only, and the one in use stays open and kept
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.full((40, 40), 5, np.uint8), tile=(16, 16), metadata=None)
    held = open_fds()  # this thread's and the other thread's
    with kept_tiff(url) as outer:
        assert outer is e
        with kept_tiff(str(other)) as inner:
            assert int(inner.pages[0].asarray()[0, 0]) == 5
        assert int(outer.pages[0].asarray()[0, 0]) == 9 and open_fds() == held
        assert not [fd for fd in os.listdir("/proc/self/fd")
                    if os.path.realpath(f"/proc/self/fd/{fd}") == str(other)]
    with kept_tiff(url) as again:
        assert again is e
    kept_files.close_all()
    assert kept_files.count() == 0 and open_fds() == 0
    with pytest.raises(Exception, match="missing.tif"), kept_tiff(str(tmp_path / "missing.tif")):
        pass
    assert kept_files.count() == 0


def test_a_jpeg_page_read_in_decoder_threads_never_shares_the_file_handle(tmp_path):
    """tifffile makes a JPEG page's decode function when first asked, and reads its first
    segment's header then (a seek and a read on the file handle). PageReader makes it in
    the thread that reads the segments' bytes: made in a decoder thread, it moved the
    handle under those reads, and previews of such pages failed about one run in two (or
    could decode a segment in the wrong color space). Real RGB JPEG tiles (libjpeg-turbo
    through imagecodecs, Adobe marker), the page read afresh many times as the preview
    reads it (its segments decoded ahead in a pool while it sums)."""
    import imagecodecs

    from pipeline.preview import thumbnail

    yy, xx = np.mgrid[0:1024, 0:1024]
    page = np.stack([(xx // 4) % 256, (yy // 4) % 256, ((xx + yy) // 8) % 256],
                    -1).astype(np.uint8)
    tiles = [imagecodecs.jpeg8_encode(page[r:r + 256, c:c + 256], level=90, colorspace="RGB",
                                      outcolorspace="RGB")
             for r in range(0, 1024, 256) for c in range(0, 1024, 256)]
    path = tmp_path / "rgb-jpeg.tif"
    tifffile.imwrite(path, iter(tiles), shape=page.shape, dtype=np.uint8, photometric="rgb",
                     compression="jpeg", tile=(256, 256))
    whole = tifffile.imread(path)
    assert np.abs(whole.astype(int) - page).mean() < 1  # the tiles as encoded
    url = str(path)
    with open_tiff(url) as tf:
        tiff_page = get_page(tf, url, 0)
        assert "decode" not in tiff_page.__dict__  # tifffile makes it when first asked
        PageReader(tf, tiff_page, url, 0)
        # made by the reader, in its own thread (tifffile caches it in the page: a decoder
        # thread finds it made and touches no file)
        assert "decode" in tiff_page.__dict__
    # the race is one of timing: before the fix, this loop failed on this machine in 2
    # to 15 runs of 30, depending on the file's place in the page cache
    first = thumbnail(url, 0, 32, exact=True)
    for _ in range(30):
        again = thumbnail(url, 0, 32, exact=True)
        assert np.array_equal(np.asarray(again.image), np.asarray(first.image))


# --- the end of the chain of pages ---------------------------------------------------------


def _three_pages(path: Path, bigtiff: bool = False) -> list[int]:
    """Three deflate pages; the byte offsets of their IFDs."""
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for k in range(3):
            tw.write(np.full((300, 300), k * 50, np.uint8), compression="deflate",
                     metadata=None)
    with tifffile.TiffFile(path) as tf:
        return [int(page.offset) for page in tf.pages]


def _next_pointer_at(path: Path, ifd: int, bigtiff: bool) -> int:
    """Where the next-IFD pointer of the IFD at ``ifd`` is."""
    raw = path.read_bytes()
    if bigtiff:
        return ifd + 8 + int.from_bytes(raw[ifd:ifd + 8], "little") * 20
    return ifd + 2 + int.from_bytes(raw[ifd:ifd + 2], "little") * 12


@pytest.mark.parametrize("bigtiff", [False, True])
def test_a_multi_page_file_cut_short_is_corrupt_not_fewer_pages(tmp_path: Path, bigtiff: bool):
    """A copy cut off before its last page's IFD: tifffile reads two pages and only logs
    the bad pointer; the pages would be lost without a word, so it is a CorruptTiffError
    naming where the chain breaks."""
    whole = tmp_path / "whole.tif"
    offsets = _three_pages(whole, bigtiff)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:offsets[2]])
    with tifffile.TiffFile(cut) as tf:
        assert len(tf.pages) == 2  # what tifffile makes of it
    with pytest.raises(CorruptTiffError, match=r"cut.tif: the chain of pages \(IFDs\) breaks "
                       r"after page 1: its pointer to the next page points to byte \d+, past "
                       r"the end of the file"):
        read_infos(str(cut), None)
    assert len(read_infos(str(whole), None)) == 3
    # the pages a job asks for that are there are read (salvage); one beyond: the break
    assert [i.index for i in read_infos(str(cut), [1, 0])] == [1, 0]
    with pytest.raises(CorruptTiffError, match="breaks after page 1"):
        read_infos(str(cut), [0, 2])
    with tifffile.TiffFile(cut) as tf, pytest.raises(CorruptTiffError, match="breaks after"):
        get_page(tf, str(cut), 2, "--page")  # (preview's: not "has 2 pages")


def test_a_pointer_to_no_page_is_corrupt_and_a_loop_is_not(tmp_path: Path):
    """The last page's pointer to a place in the file that holds no IFD (a tag count above
    what tifffile reads): corrupt. To a page already read (a loop): the chain's end."""
    path = tmp_path / "p.tif"
    offsets = _three_pages(path)
    with tifffile.TiffFile(path) as tf:
        data = int(tf.pages[2].dataoffsets[0])  # page 2's pixels, not an IFD
    at = _next_pointer_at(path, offsets[1], False)
    raw = bytearray(path.read_bytes())
    raw[at:at + 4] = data.to_bytes(4, "little")
    raw[data:data + 2] = (60000).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptTiffError, match="breaks after page 1: its pointer to the next "
                       rf"page points to byte {data}, where no page is \(60000 tags\)"):
        read_infos(str(path), None)
    raw[at:at + 4] = offsets[0].to_bytes(4, "little")  # page 1 -> page 0: a loop
    path.write_bytes(bytes(raw))
    assert len(read_infos(str(path), None)) == 2


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_a_loop_back_to_any_page_keeps_every_page_before_it(tmp_path: Path, bigtiff: bool,
                                                            target: int):
    """The last page points back to page ``target``: the chain is the three pages, each read
    with its own pixels. tifffile's len() ends such a loop at its 100th offset and cuts it at
    that offset's first occurrence (a loop to page 0 read as 1 page, its pages 1 and 2
    dropped without a word); tiffpipe walks the IFD offsets with the ones seen."""
    path = tmp_path / "loop.tif"
    offsets = _three_pages(path, bigtiff)
    at = _next_pointer_at(path, offsets[2], bigtiff)
    size = 8 if bigtiff else 4
    raw = bytearray(path.read_bytes())
    raw[at:at + size] = offsets[target].to_bytes(size, "little")
    path.write_bytes(bytes(raw))
    left: list[Any] = []
    infos = read_infos_and_version(str(path), None, left_out=left)[0]
    assert [i.index for i in infos] == [0, 1, 2]
    assert [i.ifd_offset for i in infos] == offsets
    # the job's note and inspect say that the chain loops (it was said nowhere)
    assert left == [(2, "loop", target, False)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["inspect", str(path)]) == 0
    assert (f"note: the chain of pages (IFDs) loops: page 2's pointer to the next page leads "
            f"back to page {target}, so pages 0..2 are read") in out.getvalue()
    with tifffile.TiffFile(path) as tf:
        assert get_page(tf, str(path), 2).offset == offsets[2]
        assert [int(read_window(tf, get_page(tf, str(path), k), str(path), k,
                                Rect(0, 0, 2, 2))[0, 0]) for k in range(3)] == [0, 50, 100]
        with pytest.raises(PageNotFoundError,
                           match=r"page 3 asked for, the file has 3 page\(s\) \(0\.\.2\)"):
            get_page(tf, str(path), 3)


def _set_tag(path: Path, code: int, value: int | None) -> None:
    """Page 0's tag ``code`` (one SHORT or LONG value) set to ``value``; None: its code
    renamed to an unknown private one (65000, the IFD no longer sorted), the tag gone."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[code]
    if value is None:
        data[tag.offset:tag.offset + 2] = (65000).to_bytes(2, "little")
    else:
        assert tag.count == 1
        size = {3: 2, 4: 4}[int(tag.dtype)]
        data[tag.valueoffset:tag.valueoffset + size] = value.to_bytes(size, "little")
    path.write_bytes(bytes(data))


def _small(path: Path, tiled: bool, compression: str | None = "zlib") -> np.ndarray:
    page = make_page(8, 64, 48, 1, "uint8")
    kw = {"tile": (32, 32)} if tiled else {"rowsperstrip": 16}
    tifffile.imwrite(path, page, compression=compression, metadata=None, **kw)
    return page


@pytest.mark.parametrize(("code", "name", "tiled"), [
    (256, "ImageWidth", True), (257, "ImageLength", True), (256, "ImageWidth", False),
    (257, "ImageLength", False), (322, "TileWidth", True), (323, "TileLength", True),
    (278, "RowsPerStrip", False), (277, "SamplesPerPixel", False),
    (258, "BitsPerSample", True)])
def test_a_zero_size_tag_is_corrupt_naming_the_tag(tmp_path: Path, code: int, name: str,
                                                   tiled: bool):
    """A width, length, tile size, RowsPerStrip, SamplesPerPixel or BitsPerSample of 0
    (libtiff refuses each): a CorruptTiffError naming the tag and the page, from the plan's
    read of the page and from the reader (it was a ZeroDivisionError naming nothing, or an
    empty page; a SamplesPerPixel of 0 was inspected as "0 x uint8 gray")."""
    path = tmp_path / "zero.tif"
    _small(path, tiled)
    _set_tag(path, code, 0)
    url = str(path)
    want = rf"zero.tif: page 0: its {name} tag \({code}\) is 0"
    with pytest.raises(CorruptTiffError, match=want):
        read_infos(url, None)
    with open_tiff(url) as tf, pytest.raises(CorruptTiffError, match=want):
        PageReader(tf, get_page(tf, url, 0), url, 0)


def test_preview_of_a_zero_size_tag_is_the_named_error(tmp_path: Path):
    """``tiffpipe preview``: exit 1 with the named error, no traceback (it was ``min() arg
    is an empty sequence``)."""
    path = tmp_path / "zero.tif"
    _small(path, True)
    _set_tag(path, 257, 0)
    png = tmp_path / "p.png"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["preview", str(path), "-o", str(png)])
    assert code == 1, err.getvalue()
    assert "CorruptTiffError" in err.getvalue() and "ImageLength tag (257) is 0" in err.getvalue()
    assert "Traceback" not in err.getvalue() and not png.exists()


@pytest.mark.parametrize("tiled", [True, False])
def test_a_zero_byte_count_at_an_offset_is_corrupt_not_sparse(tmp_path: Path, tiled: bool):
    """Sparse is offset 0 and byte count 0 (test_sparse_segments_read_as_zeros); a byte
    count of 0 with an offset (libtiff: "Invalid tile byte count") was read as a black
    segment: a CorruptTiffError naming the segment."""
    path = tmp_path / "zero_count.tif"
    _small(path, tiled)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[325 if tiled else 279]
        kind = {3: "<u2", 4: "<u4"}[int(tag.dtype)]
        counts = np.frombuffer(data, kind, count=tag.count, offset=tag.valueoffset).copy()
        counts[1] = 0
        data[tag.valueoffset:tag.valueoffset + counts.nbytes] = counts.tobytes()
    path.write_bytes(bytes(data))
    url = str(path)
    with open_tiff(url) as tf:
        page = get_page(tf, url, 0)
        assert int(page.dataoffsets[1]) > 0
        with pytest.raises(CorruptTiffError, match=r"page 0: segment 1 has a byte count of 0 "
                           r"at offset \d+ \(a segment left empty has offset 0"):
            read_window(tf, page, url, 0, Rect(0, 0, 64, 48))


def test_an_uncompressed_strip_shorter_than_its_rows_is_corrupt(tmp_path: Path):
    """Uncompressed strips are read by rows from their offset: a byte count below what the
    strip's rows need was ignored (the rows read from the bytes after it); now refused."""
    path = tmp_path / "short_strip.tif"
    page = _small(path, False, None)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[279]
        kind = {3: "<u2", 4: "<u4"}[int(tag.dtype)]
        counts = np.frombuffer(data, kind, count=tag.count, offset=tag.valueoffset).copy()
        counts[2] = 16 * 48 - 1
        data[tag.valueoffset:tag.valueoffset + counts.nbytes] = counts.tobytes()
    path.write_bytes(bytes(data))
    url = str(path)
    with open_tiff(url) as tf:
        p = get_page(tf, url, 0)
        assert np.array_equal(read_window(tf, p, url, 0, Rect(0, 0, 32, 48)), page[:32])
        with pytest.raises(CorruptTiffError, match=r"page 0: segment 2 \(an uncompressed "
                           r"strip\) has a byte count of 767, its 16 rows need 768"):
            read_window(tf, p, url, 0, Rect(40, 0, 41, 48))


def _set_counts(path: Path, seg: int, count: int) -> None:
    """Page 0's byte count of segment ``seg`` (StripByteCounts) set to ``count``."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[279]
    fmt = {3: "<H", 4: "<I"}[int(tag.dtype)]
    struct.pack_into(fmt, data, tag.valueoffset + seg * struct.calcsize(fmt), count)
    path.write_bytes(bytes(data))


def test_strip_entries_past_the_pages_strips_are_not_checked(tmp_path: Path):
    """The plan's check of uncompressed strip byte counts tested every listed entry, also
    those past the page's strips, which no reader reads. tifffile cuts the lists to the
    strips it counts, but counts ImageDepth's too: a page of ImageDepth 2 (ImageLength 32,
    16 rows a strip: 2 strips, 4 entries) whose 4th entry is short was refused for that
    entry, not as what it is, a volumetric page; a short strip of the page's is still
    named."""
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, make_page(8, 64, 48, 1, "uint8"), rowsperstrip=16, metadata=None,
                     extratags=[(65000, "I", 1, 2, False)])
    data = bytearray(path.read_bytes())  # (tifffile writes no ImageDepth: its entry renamed)
    with tifffile.TiffFile(path) as tf:
        entry = tf.pages[0].tags[65000].offset
    data[entry:entry + 2] = (32997).to_bytes(2, "little")  # ImageDepth 2
    path.write_bytes(bytes(data))
    _set_tag(path, 257, 32)
    _set_counts(path, 3, 5)
    url = str(path)
    with pytest.raises(UnsupportedTiffError, match=r"deep.tif: page 0: volumetric pages "
                                                   r"\(ImageDepth 2\) are not supported"):
        read_infos(url, None)
    _set_counts(path, 1, 5)
    with pytest.raises(CorruptTiffError, match=r"deep.tif: page 0: segment 1 \(an "
                                               r"uncompressed strip\) has a byte count of 5, "
                                               r"its 16 rows need 768"):
        read_infos(url, None)


@pytest.mark.parametrize("tiled", [True, False])
def test_missing_byte_counts_name_the_tag(tmp_path: Path, tiled: bool):
    """No StripByteCounts (or TileByteCounts): tifffile makes up one count; the error names
    the missing tag and the number of offsets (it said "has 8 segment offsets, 8 expected")."""
    path = tmp_path / "no_counts.tif"
    _small(path, tiled)
    kind = "Tile" if tiled else "Strip"
    _set_tag(path, 325 if tiled else 279, None)
    url = str(path)
    n, code = 4, 325 if tiled else 279  # 64 x 48 px: 2 x 2 tiles of 32, or 4 strips of 16
    with open_tiff(url) as tf, pytest.raises(
            CorruptTiffError, match=rf"page 0: has no {kind}ByteCounts tag \({code}\), while "
            rf"its {kind}Offsets has {n} value\(s\); its {n} {kind.lower()}\(s\) need {n} of each"):
        PageReader(tf, get_page(tf, url, 0), url, 0)


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("rows", [16, 64])
def test_an_uncompressed_page_without_byte_counts_is_read(tmp_path: Path, tiled: bool,
                                                          rows: int):
    """Uncompressed, the bytes of each segment follow from its size: a page without its
    StripByteCounts (or TileByteCounts) is read as libtiff and Pillow read it (a file of one
    such strip read before the error above named the missing tag; refused then)."""
    path = tmp_path / "raw.tif"
    page = make_page(8, 50, 48, 1, "uint8")  # the last strip of 16 rows is 2 rows
    kw = {"tile": (32, 32)} if tiled else {"rowsperstrip": rows}
    tifffile.imwrite(path, page, metadata=None, **kw)
    _set_tag(path, 325 if tiled else 279, None)
    url = str(path)
    with open_tiff(url) as tf:
        p = get_page(tf, url, 0)
        assert np.array_equal(read_window(tf, p, url, 0, Rect(0, 0, 50, 48)), page)


def test_segments_read_whole_are_capped_counting_every_plane(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """The cap on a segment read whole (MAX_SEGMENT_BYTES, 512 MiB) counts an uncompressed
    tile (read whole: a 20000 x 20000 RGB page in one tile took 2.3 GB a process) and every
    plane of a planar page (a window holds each plane's strip: three planes of 441 MB each
    took 2.4 GB); an uncompressed strip is read by rows, whatever its size."""
    from pipeline.adapters import tiff_read
    from pipeline.errors import UnsupportedTiffError

    monkeypatch.setattr(tiff_read, "MAX_SEGMENT_BYTES", 100_000)  # 98 KiB here
    rgb = np.zeros((200, 200, 3), np.uint8)  # 120,000 bytes
    tifffile.imwrite(tmp_path / "tile.tif", rgb, tile=(208, 208), photometric="rgb")
    tifffile.imwrite(tmp_path / "strip.tif", rgb, rowsperstrip=200, photometric="rgb")
    tifffile.imwrite(tmp_path / "planes.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate", rowsperstrip=200, compression="zlib")
    with pytest.raises(UnsupportedTiffError, match=r"page 0: one tile decodes to 0 MiB"):
        read_infos(str(tmp_path / "tile.tif"), [0])
    with pytest.raises(UnsupportedTiffError, match=r"page 0: one strip decodes"):
        read_infos(str(tmp_path / "planes.tif"), [0])  # 40,000 bytes a plane
    (info,) = read_infos(str(tmp_path / "strip.tif"), [0])
    assert not info.tiled and info.segment_rows == 200


def test_a_reader_given_its_columns_caches_only_them(tmp_path: Path):
    """A unit of a few columns of a wide stripped page (a strip spans the page): its reader
    keeps each decoded strip cut to the unit's columns, not whole (a 300,000 px wide page
    held 759 MB a process); the pixels read are the same."""
    rng = np.random.default_rng(5)
    page = rng.integers(0, 256, (64, 3000, 3), dtype=np.uint8)
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, page, rowsperstrip=8, compression="zlib", photometric="rgb")
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, tf.pages[0], str(path), 0, columns=(1000, 1300))
        for y0 in range(0, 64, 16):
            rect = Rect(y0, 1000, y0 + 16, 1300)
            np.testing.assert_array_equal(reader.read(rect), page[y0:y0 + 16, 1000:1300])
            assert all(px.shape[1] == 300 and x == 1000 for px, _, _, x in reader.cache.values())
            reader.forget_above(y0 + 16)
        whole = PageReader(tf, tf.pages[0], str(path), 0)
        np.testing.assert_array_equal(whole.read(Rect(0, 0, 64, 3000)), page)


def test_a_reader_drops_the_columns_a_band_has_passed(tmp_path: Path):
    """forget_left: a strip wholly left of the column goes, one that straddles it is cut
    once at least half its columns can go (so a strip is copied about once in all), and
    strips reaching below the row given are kept whole; what is read after is the same."""
    rng = np.random.default_rng(6)
    page = rng.integers(0, 256, (32, 1000, 3), dtype=np.uint8)
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, page, rowsperstrip=8, compression="zlib", photometric="rgb")
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, tf.pages[0], str(path), 0)
        reader.read(Rect(0, 0, 32, 100))

        def widths() -> list[int]:
            return [px.shape[1] for px, *_ in reader.cache.values()]
        reader.forget_left(400, 16)  # less than half of a strip's columns: kept whole
        assert widths() == [1000] * 4
        reader.forget_left(600, 16)  # the two strips above row 16 cut, the rest kept
        assert widths() == [400, 400, 1000, 1000]
        assert reader.cache[0][3] == 600
        np.testing.assert_array_equal(reader.read(Rect(0, 600, 32, 1000)), page[:, 600:])
        reader.forget_left(1000, 32)
        assert not reader.cache
        assert reader.decoded == 4


def _last_strip_replaced(path: Path, dtype: str, stream: Any, codec: str) -> np.ndarray:
    """A 20-row page in strips of 16 (``codec``; with the predictor for uint16) whose last
    strip (4 rows) is replaced by ``stream(strip)``: ``strip`` is that strip's rows written
    as a whole strip of 16 (the 4 rows and 12 more), by tifffile's own encoder. The new
    stream is appended to the file and the strip's offset and byte count point to it."""
    page = make_page(9, 20, 37, 1, dtype)
    kw = {"compression": codec, "metadata": None, "rowsperstrip": 16,
          "predictor": np.dtype(dtype).itemsize > 1}
    full = path.with_name("full.tif")  # the page with its last strip 16 rows tall
    tifffile.imwrite(full, np.vstack([page, make_page(10, 12, 37, 1, dtype)]), **kw)
    with tifffile.TiffFile(full) as tf:
        p = tf.pages[0]
        tf.filehandle.seek(p.dataoffsets[1])
        strip = tf.filehandle.read(p.databytecounts[1])
    tifffile.imwrite(path, page, **kw)
    data = bytearray(path.read_bytes())
    new = stream(strip)
    with tifffile.TiffFile(path) as tf:
        for code, value in ((273, len(data)), (279, len(new))):
            tag = tf.pages[0].tags[code]
            size = {3: 2, 4: 4}[int(tag.dtype)]
            at = tag.valueoffset + size  # the second strip's value
            data[at:at + size] = value.to_bytes(size, "little")
    path.write_bytes(bytes(data) + new)
    return page


def _twice(codec: str) -> Any:
    """A stream of ``codec`` holding its stream's bytes twice (more than a whole strip)."""
    if codec == "zstd":
        return lambda s: imagecodecs.zstd_encode(imagecodecs.zstd_decode(s) * 2)
    return lambda s: zlib.compress(zlib.decompress(s) * 2)


#: (codec, a last strip's stream) -> whether the page reads as libtiff reads it
LAST_STRIPS = {
    # a complete stream of a whole strip's rows (libtiff's test file
    # deflate-last-strip-extra-data.tiff): libtiff reads the rows the strip has
    ("zlib", "full_height"): (lambda s: s, True),
    ("zlib", "full_height_then_bytes"): (lambda s: s + b"\0\0 not deflate", True),
    ("zstd", "full_height"): (lambda s: s, True),
    ("lzw", "full_height"): (lambda s: s, True),
    # the stream cut short, its checksum wrong, more rows than a whole strip: damaged
    ("zlib", "truncated"): (lambda s: s[:-9], False),
    ("zlib", "bad_checksum"): (lambda s: s[:-1] + bytes([s[-1] ^ 1]), False),
    ("zlib", "more_than_a_strip"): (_twice("zlib"), False),
    ("zstd", "truncated"): (lambda s: s[:-9], False),
    ("zstd", "more_than_a_strip"): (_twice("zstd"), False),
}


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize(("codec", "case"), list(LAST_STRIPS))
def test_a_last_strip_stored_whole_height_reads_as_libtiff_reads_it(tmp_path: Path, codec: str,
                                                                    case: str, dtype: str):
    """A writer that stores the last strip (shorter than RowsPerStrip) as a whole strip:
    libtiff reads its rows and ignores the rest; it was a CorruptTiffError ("cannot be
    decoded", tifffile's buffer of the strip's rows too small). A stream that is not whole
    (cut short, a wrong checksum) or holds more than a whole strip still fails."""
    stream, reads = LAST_STRIPS[(codec, case)]
    path = tmp_path / "last.tif"
    page = _last_strip_replaced(path, dtype, stream, codec)
    url = str(path)
    with open_tiff(url) as tf:
        reader = PageReader(tf, get_page(tf, url, 0), url, 0)
        np.testing.assert_array_equal(reader.read(Rect(0, 0, 16, 37)), page[:16])
        if reads:
            np.testing.assert_array_equal(reader.read(Rect(0, 0, 20, 37)), page)
            with Image.open(path) as image:  # libtiff's read (Pillow's build)
                np.testing.assert_array_equal(np.asarray(image), page)
        else:
            with pytest.raises(CorruptTiffError, match=r"last.tif: page 0: segment 1 "
                               r"\((ADOBE_DEFLATE|ZSTD)\) cannot be decoded \(.*the file is "
                               r"damaged"):
                reader.read(Rect(16, 0, 20, 37))


def test_a_reader_of_recent_reads_drops_what_they_no_longer_use(tmp_path):
    """``recent``: a segment none of the last ``recent`` reads used is dropped, so reads
    along a row of tiles hold about that row's segments; one a read used again is decoded
    once."""
    path = tmp_path / "tiles.tif"
    tifffile.imwrite(path, np.arange(256 * 256, dtype=np.uint32).reshape(256, 256)
                     .astype(np.uint16), tile=(64, 64), compression="zlib")
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, tf.pages[0], str(path), 0, recent=2)
        want = tf.pages[0].asarray()
        for x in (0, 40, 100, 160):  # 32 px wide reads along the top row of segments
            got = reader.read(Rect(0, x, 32, x + 32))
            np.testing.assert_array_equal(got, want[0:32, x:x + 32])
        # segments 0 (x 0-63), 1 (64-127), 2 (128-191): 0 was last read at x 40, 2 reads ago
        assert sorted(reader.cache) == [1, 2] and reader.decoded == 3
        reader.read(Rect(0, 100, 32, 132))  # segments 1, 2 again: cached, not decoded
        assert reader.decoded == 3


def test_a_reader_without_recent_keeps_its_segments(tmp_path):
    """Without ``recent`` (a sweep that forgets rows itself), nothing is dropped by reads."""
    path = tmp_path / "tiles.tif"
    tifffile.imwrite(path, np.zeros((128, 256), np.uint8), tile=(64, 64), compression="zlib")
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, tf.pages[0], str(path), 0)
        for x in (0, 64, 128, 192):
            reader.read(Rect(0, x, 16, x + 16))
        assert sorted(reader.cache) == [0, 1, 2, 3]

def test_a_claimed_segment_is_decoded_once_by_the_thread_that_claimed_it(tmp_path):
    """Threads sharing a reader: the first to claim a window's segments decodes them; a
    second claim of them gets none, and its read waits for the first's decode instead of
    decoding them again; a decode that fails is raised by the read that gets it."""
    path = tmp_path / "tiles.tif"
    want = np.arange(128 * 128, dtype=np.uint32).reshape(128, 128).astype(np.uint16)
    tifffile.imwrite(path, want, tile=(64, 64), compression="zlib")
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, tf.pages[0], str(path), 0, recent=4)
        first = reader.claim(Rect(0, 0, 64, 128))
        assert [seg for seg, _, _ in first] == [0, 1]
        assert reader.claim(Rect(0, 32, 64, 96)) == []  # both being decoded: none to claim
        waiter = ThreadPoolExecutor(1).submit(reader.read, Rect(0, 32, 64, 96))
        reader.decode_claimed(first)
        np.testing.assert_array_equal(waiter.result(timeout=30), want[0:64, 32:96])
        assert reader.decoded == 2
        broken = [(seg, future, b"not zlib") for seg, future, _ in reader.claim(
            Rect(64, 0, 128, 64))]
        reader.decode_claimed(broken)
        with pytest.raises(CorruptTiffError, match="segment 2 .* cannot be decoded"):
            reader.read(Rect(64, 0, 128, 64))


def _set_type(path: Path, code: int, kind: int, page: int = 0) -> None:
    """Page ``page``'s entry of tag ``code`` given the TIFF type ``kind`` (its count and value
    bytes as they were), as a fuzzer's flipped bits make it."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        entry = tf.pages[page].tags[code].offset
    data[entry + 2:entry + 4] = kind.to_bytes(2, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("code", "name", "kind", "kind_name"), [
    (258, "BitsPerSample", 8195, "8195"), (277, "SamplesPerPixel", 7, "UNDEFINED")])
def test_a_layout_tag_tifffile_cannot_read_is_corrupt_naming_it(
        tmp_path: Path, code: int, name: str, kind: int, kind_name: str):
    """A layout tag whose entry has a type that is no TIFF type (tifffile drops it: an 8-bit
    page was read as 1-bit, with its default, a wrong output, exit 0) or that holds no
    integers (an UNDEFINED SamplesPerPixel: a TypeError inside tifffile, a traceback from
    inspect and preview): a CorruptTiffError naming the file, the page, the tag and its type,
    from the plan's read, from inspect and from preview."""
    path = tmp_path / "flipped.tif"
    _small(path, tiled=False, compression=None)
    _set_type(path, code, kind)
    url = str(path)
    want = rf"flipped.tif: page 0: its {name} tag \({code}\) is stored as type {kind_name}"
    with pytest.raises(CorruptTiffError, match=want):
        read_infos(url, None)
    for command in (["inspect", url], ["preview", url, "-o", str(tmp_path / "p.png")]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert cli.main(command) == 1, command
        said = out.getvalue() + err.getvalue()
        assert f"its {name} tag ({code}) is stored as type {kind_name}" in said, said
        assert "Traceback" not in said


def test_a_layout_tag_stored_twice_is_read_from_its_first_entry(tmp_path: Path):
    """A layout tag whose IFD holds a second entry of it: tifffile keeps the first (libtiff
    ignores the later ones), but the check refused the page if any copy had no integer
    type. Only the first is checked now: a later copy of a type that is no TIFF type is
    ignored, as the readers ignore it."""
    path = tmp_path / "twice.tif"
    page = make_page(5, 32, 32, 1, "uint8")
    tifffile.imwrite(path, page, metadata=None, extratags=[(65000, "H", 1, 8, False)])
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        entry = tf.pages[0].tags[65000].offset
    data[entry:entry + 4] = struct.pack("<HH", 258, 8195)  # a second BitsPerSample
    path.write_bytes(bytes(data))
    (info,) = read_infos(str(path), None)
    assert (info.dtype, info.channels) == ("uint8", 1)
    with open_tiff(str(path)) as tf:
        got = read_window(tf, get_page(tf, str(path), 0), str(path), 0, Rect(0, 0, 32, 32))
    np.testing.assert_array_equal(got.reshape(32, 32), page)


@pytest.mark.parametrize("page", [1, 2])
def test_an_undefined_samples_per_pixel_past_page_0_is_corrupt_naming_it(tmp_path: Path,
                                                                          page: int):
    """An UNDEFINED SamplesPerPixel on the last page (a bare TypeError from tifffile: the job
    failed as a platform fault, inspect printed a traceback) or a middle one ("its IFD is
    damaged ('>' not supported ...)", the tag unnamed): a CorruptTiffError naming the file,
    the page and the tag, from the plan's read (all pages or that page) and from inspect."""
    path = tmp_path / "flipped.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(np.full((32, 32), k, np.uint8), metadata=None)
    _set_type(path, 277, 7, page)
    url = str(path)
    said = f"page {page}: its SamplesPerPixel tag (277) is stored as type UNDEFINED"
    for pages in (None, [page]):
        with pytest.raises(CorruptTiffError, match=re.escape(f"flipped.tif: {said}")):
            read_infos(url, pages)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["inspect", url]) == 1
    told = out.getvalue() + err.getvalue()
    assert said in told, told
    assert "Traceback" not in told


def _fax(path: Path) -> np.ndarray:
    """A one-strip CCITT Group 4 page (libtiff's encoder), its strip before its IFD; its
    pixels (True: black)."""
    black = np.zeros((64, 48), bool)
    black[10:30, 5:40] = True
    path.write_bytes(imagecodecs.tiff_encode(black, compression="ccittfax4", bitspersample=1,
                                             photometric="miniswhite", rowsperstrip=64))
    return black


def test_a_fax_page_of_more_than_1_bit_is_corrupt(tmp_path: Path):
    """CCITT codes 1-bit pixels: a Group 4 page whose BitsPerSample says 8 was read as an
    8-bit page (a fuzzed 64 as uint64), a wrong output; a CorruptTiffError naming it."""
    path = tmp_path / "fax.tif"
    _fax(path)
    _set_tag(path, 258, 8)
    with pytest.raises(CorruptTiffError, match=r"fax.tif: page 0: compression CCITTFAX4 codes "
                                               r"1-bit pixels of one sample, its BitsPerSample "
                                               r"is 8"):
        read_infos(str(path), None)


def test_a_one_strip_fax_page_without_its_byte_count_is_read_whole(tmp_path: Path):
    """The documented exception to "a byte count of 0 at an offset is corrupt": a one-strip
    CCITT page's strip is read to the end of the file (or its next IFD), as libtiff and
    tifffile read it (fax software wrote 0 for a count it did not know); the decoder stops at
    the page's rows, so the bytes after the strip are not taken for pixels."""
    path = tmp_path / "fax.tif"
    black = _fax(path)
    _set_tag(path, 279, 0)
    (info,) = read_infos(str(path), None)
    with open_tiff(str(path)) as tf:
        px = PageReader(tf, get_page(tf, str(path), 0), str(path), 0).read(Rect(0, 0, 64, 48))
    np.testing.assert_array_equal(px.reshape(64, 48), np.where(black, 0, 255))
    assert (info.height, info.width) == (64, 48)


def _tiled_20(path: Path) -> np.ndarray:
    """A 40 x 40 uint8 page in uncompressed tiles of 20 x 20, written byte by byte (tifffile
    writes no tile that is no multiple of 16); its pixels."""
    page = (np.arange(40 * 40) % 251).astype(np.uint8).reshape(40, 40)
    tiles = [page[r:r + 20, c:c + 20].tobytes() for r in (0, 20) for c in (0, 20)]
    tags = [(256, 40), (257, 40), (258, 8), (259, 1), (262, 1), (277, 1), (322, 20), (323, 20)]
    ifd_size = 2 + (len(tags) + 2) * 12 + 4
    offsets_at = 8 + ifd_size
    data_at = offsets_at + 32
    entries = b"".join(struct.pack("<HHIHH", code, 3, 1, value, 0) for code, value in tags)
    entries += struct.pack("<HHII", 324, 4, 4, offsets_at)
    entries += struct.pack("<HHII", 325, 4, 4, offsets_at + 16)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags) + 2)
                     + entries + struct.pack("<I", 0)
                     + struct.pack("<4I", *[data_at + 400 * i for i in range(4)])
                     + struct.pack("<4I", *[400] * 4) + b"".join(tiles))
    return page


def test_tiles_of_no_multiple_of_16_are_read(tmp_path: Path):
    """TIFF requires a tile's width and length to be multiples of 16, but libtiff (with a
    warning) and tifffile read tiles of any size: so does tiffpipe. A damaged tile size is
    caught by the segment counts or a JPEG stream's size (the tests below)."""
    path = tmp_path / "tiles20.tif"
    page = _tiled_20(path)
    np.testing.assert_array_equal(tifffile.imread(path), page)
    (info,) = read_infos(str(path), None)
    assert (info.height, info.width) == (40, 40)
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, get_page(tf, str(path), 0), str(path), 0)
        np.testing.assert_array_equal(reader.read(Rect(5, 7, 35, 32)).reshape(30, 25),
                                      page[5:35, 7:32])


def test_a_jpeg_tile_stream_of_another_size_than_its_tile_is_corrupt(tmp_path: Path):
    """A JPEG tile's stream is its tile's size: one of 32 x 32 in a page whose TileLength
    says 64 (a multiple of 16, the tiles' count still enough) was pasted as half a tile, a
    wrong output; the reader refuses it from the stream's header, before decoding."""
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, make_page(3, 64, 64, 1, "uint8"), tile=(32, 32), compression="jpeg",
                     metadata=None)
    _set_tag(path, 323, 64)
    with open_tiff(str(path)) as tf:
        reader = PageReader(tf, get_page(tf, str(path), 0), str(path), 0)
        with pytest.raises(CorruptTiffError, match=r"jpeg.tif: page 0: segment 0 \(JPEG\) "
                                                   r"is a stream of 32 x 32 pixels, its tile "
                                                   r"32 x 64"):
            reader.read(Rect(0, 0, 64, 64))


def _jpeg_tile_replaced(path: Path, seg: int, stream: bytes) -> None:
    """Tile ``seg`` of page 0 made ``stream`` (appended to the file, its offset and byte
    count pointed at it)."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        offsets, counts = tf.pages[0].tags[324], tf.pages[0].tags[325]
        for tag, value in ((offsets, len(data)), (counts, len(stream))):
            fmt = {3: "<H", 4: "<I"}[int(tag.dtype)]
            struct.pack_into(fmt, data, tag.valueoffset + seg * struct.calcsize(fmt), value)
    path.write_bytes(bytes(data) + stream)


def test_a_jpeg_edge_tile_cropped_to_the_image_is_read(tmp_path: Path):
    """Some writers (not libtiff) crop a JPEG edge tile to the image's part of it; libtiff
    warns and reads it, tifffile reads it, but tiffpipe refused every stream smaller than
    its tile. One in the last tile row and column that covers the image's part is read;
    one smaller than that, or a smaller one anywhere else, is still refused."""
    path = tmp_path / "cropped.tif"
    page = (np.arange(40 * 40) % 251).astype(np.uint8).reshape(40, 40)
    tifffile.imwrite(path, page, tile=(32, 32), compression="jpeg", metadata=None)
    _jpeg_tile_replaced(path, 3, imagecodecs.jpeg8_encode(page[32:, 32:].copy(), level=95))
    url = str(path)
    with open_tiff(url) as tf:
        got = PageReader(tf, get_page(tf, url, 0), url, 0).read(Rect(0, 0, 40, 40))
    np.testing.assert_array_equal(got.reshape(40, 40), tifffile.imread(path))
    for seg, part in ((3, page[32:36, 32:]), (0, page[:8, :8])):
        _jpeg_tile_replaced(path, seg, imagecodecs.jpeg8_encode(part.copy(), level=95))
        with open_tiff(url) as tf:
            reader = PageReader(tf, get_page(tf, url, 0), url, 0)
            with pytest.raises(CorruptTiffError, match=rf"cropped.tif: page 0: segment {seg} "
                                                       r"\(JPEG\) is a stream of 8 x \d pixels"):
                reader.read(Rect(0, 0, 40, 40))


def test_inspect_of_a_file_without_a_first_ifd_is_the_named_error(tmp_path: Path):
    """A file cut after its header (8 bytes: no first IFD): ``tiffpipe inspect`` says what
    run and validate say (it was an IndexError traceback)."""
    path = tmp_path / "cut.tif"
    path.write_bytes(b"II*\0" + (8).to_bytes(4, "little"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["inspect", str(path)]) == 1
    said = out.getvalue() + err.getvalue()
    assert "cut.tif: the TIFF has no readable page (its first IFD is missing" in said, said
    assert "Traceback" not in said


def test_segment_tags_that_do_not_fit_the_page_are_refused_at_the_plan(tmp_path: Path):
    """Headers that only a unit's read refused before: ``read_infos`` (PlanJob's and
    ``validate --inputs``' read) refuses an uncompressed strip shorter than its rows (an
    ImageWidth made 10 times larger) and strip lists shorter than the page's strips (an
    ImageLength made 65535, whose plan said the job needed too many work items instead)."""
    wide = tmp_path / "wide.tif"
    _small(wide, tiled=False, compression=None)
    _set_tag(wide, 256, 480)
    with pytest.raises(CorruptTiffError, match=r"wide.tif: page 0: segment 0 \(an "
                                               r"uncompressed strip\) has a byte count of "
                                               r"768, its 16 rows need 7680"):
        read_infos(str(wide), None)
    long = tmp_path / "long.tif"
    tifffile.imwrite(long, make_page(8, 64, 48, 1, "uint8"), compression="lzw",
                     rowsperstrip=64, metadata=None)
    _set_tag(long, 257, 65535)
    with pytest.raises(CorruptTiffError, match=r"long.tif: page 0: has 1 StripOffsets and 1 "
                                               r"StripByteCounts, 1024 of each expected"):
        read_infos(str(long), None)


def test_a_bigtiff_byte_count_past_the_end_is_refused_as_a_classic_tiffs(tmp_path: Path):
    """One rule for both: a strip that runs past the end of the file is refused. A
    BigTIFF's 64-bit count near 2**64 wrapped offset + count round to a small end, and the
    strip was read (a classic TIFF's 32-bit one could not wrap)."""
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, make_page(8, 64, 48, 1, "uint8"), bigtiff=True, metadata=None)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        entry = tf.pages[0].tags[279].offset
    data[entry + 2:entry + 4] = (16).to_bytes(2, "little")  # LONG8, one value
    data[entry + 12:entry + 20] = (2**64 - 16).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptTiffError, match=r"big.tif: page 0: segment 0 ends at byte "
                                               r"\d+ but the file has \d+ bytes"):
        read_infos(str(path), None)
