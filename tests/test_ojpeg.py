"""Old-style JPEG (OJPEG, compression 6) pages: decoded whole by libtiff (imagecodecs;
pipeline/adapters/ojpeg.py) from a page-sized TIFF built in memory, so a local file and an
S3 object (ranged GETs) alike give libtiff's own read of the whole file; refused with a named
error where they cannot be read in bounded memory; processed end to end by ``tiffpipe run``.

The expected pixels are another build of libtiff's read of the whole original file (Pillow's
wheel bundles its own) for colour pages, and OpenCV's decode of the page's JPEG stream for
gray ones (which Pillow reads as YCbCr, wrongly): never tiffpipe's.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import LIBTIFF_CORPUS, moto_s3
from ojpeg_files import write_ojpeg
from PIL import Image

from pipeline import cli
from pipeline.adapters import ojpeg, storage, tiff_read
from pipeline.adapters.tiff_read import PageReader, get_page, open_tiff, page_info
from pipeline.core.grid import Rect
from pipeline.errors import CorruptTiffError, UnsupportedTiffError
from pipeline.preview import thumbnail

CORPUS_FILES = ["ojpeg_chewey_subsamp21_multi_strip.tiff",
                "ojpeg_single_strip_no_rowsperstrip.tiff",
                "ojpeg_zackthecat_subsamp22_single_strip.tiff"]
SHAPES = [(700, 900), (300, 500)]


def libtiff_pages(path: Path | str) -> list[np.ndarray]:
    """Every page as libtiff reads it from the whole file (Pillow)."""
    pages = []
    with Image.open(path) as image:
        for i in range(getattr(image, "n_frames", 1)):
            image.seek(i)
            pages.append(np.asarray(image))
    return pages


def _picture(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth RGB picture with edges and a little noise: what a scanner gives."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    px = np.stack([x * 200 // w, y * 200 // h, ((x // 40 + y // 40) % 2) * 150], axis=-1)
    return (px + rng.integers(0, 30, px.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """Two colour OJPEG pages of different sizes in one file, and each page's JPEG stream."""
    path = tmp_path_factory.mktemp("ojpeg") / "two.tif"
    streams = write_ojpeg(path, [_picture(s, i) for i, s in enumerate(SHAPES)])
    return path, streams


def _windows(height: int, width: int) -> list[Rect]:
    """The whole page, a window inside it, and one at its bottom-right corner."""
    return [Rect(0, 0, height, width), Rect(height // 3, width // 4, height // 2, width // 2),
            Rect(height - 37, width - 53, height, width)]


def _check_reader(url: str, index: int, want: np.ndarray) -> PageReader:
    with open_tiff(url) as tf:
        page = get_page(tf, url, index)
        reader = PageReader(tf, page, url, index)
        for rect in _windows(*want.shape[:2]):
            got = reader.read(rect)
            np.testing.assert_array_equal(got, want[rect.y0:rect.y1, rect.x0:rect.x1])
        return reader


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_the_corpus_files_read_as_libtiff_reads_them(name):
    path = LIBTIFF_CORPUS / name
    want = libtiff_pages(path)[0]
    reader = _check_reader(str(path), 0, want)
    assert reader.decoded == 1  # the page is one segment, decoded once for every window
    with tifffile.TiffFile(path) as tf:
        info = page_info(tf.pages[0], str(path), 0)
    assert (info.compression, info.photometric, info.channels, info.dtype) == \
        ("ojpeg", "rgb", 3, "uint8")
    assert not info.tiled and info.segment_rows == info.height  # one piece, whatever it says


def test_crafted_pages_read_as_libtiff_reads_them(crafted):
    path, _ = crafted
    pages = libtiff_pages(path)
    assert [p.shape[:2] for p in pages] == SHAPES
    for index, want in enumerate(pages):
        _check_reader(str(path), index, want)


def test_a_big_endian_file_reads_as_libtiff_reads_it(tmp_path):
    """Motorola byte order (MM), as Macintosh-era writers stored it: the page's TIFF keeps
    it, and the values copied from the file with it."""
    path = tmp_path / "mm.tif"
    write_ojpeg(path, [_picture(s, i) for i, s in enumerate(SHAPES)], byteorder=">")
    with tifffile.TiffFile(path) as tf:
        assert tf.byteorder == ">"
    for index, want in enumerate(libtiff_pages(path)):
        _check_reader(str(path), index, want)


def test_the_page_tiff_holds_that_page_only(crafted):
    """What libtiff is given is the page: its decoding tags and the bytes they point to,
    not the file (an S3 input is never fetched whole)."""
    path, streams = crafted
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[1]

        def read(offset: int, length: int) -> bytes:
            tf.filehandle.seek(offset)
            return tf.filehandle.read(length)

        data = ojpeg.page_tiff(page, read)
        assert streams[1] in data and streams[0] not in data
        assert len(data) < len(streams[1]) + 1024
        with tifffile.TiffFile(io.BytesIO(data)) as alone:
            assert len(alone.pages) == 1 and alone.pages[0].shape == page.shape
            assert int(alone.pages[0].compression) == ojpeg.OJPEG
        np.testing.assert_array_equal(ojpeg.decode(data, *SHAPES[1], 3), libtiff_pages(path)[1])


def test_an_s3_input_reads_the_page_by_ranged_gets(tmp_path, monkeypatch):
    """A small page after a large one: its read fetches about its own bytes."""
    path = tmp_path / "large-then-small.tif"
    noisy = np.random.default_rng(7).integers(0, 256, (2000, 2400, 3), dtype=np.uint8)
    streams = write_ojpeg(path, [noisy, _picture(SHAPES[1], 1)])
    assert len(streams[0]) > 4 * storage.READ_BUFFER
    with moto_s3(monkeypatch, "tp-bucket") as client:
        client.upload_file(str(path), "tp-bucket", "scans/two.tif")
        url = "s3://tp-bucket/scans/two.tif"
        ranges: list[str] = []
        storage.s3_client().meta.events.register(
            "provide-client-params.s3.GetObject",
            lambda params, **_: ranges.append(params.get("Range", "whole")))
        with open_tiff(url) as tf:
            page = get_page(tf, url, 1)
            got = PageReader(tf, page, url, 1).read(Rect(0, 0, *SHAPES[1]))
        np.testing.assert_array_equal(got, libtiff_pages(path)[1])
        spans = [tuple(map(int, r.removeprefix("bytes=").split("-"))) for r in ranges]
        assert ranges and len(spans) == len(ranges)  # ranged GETs only
        fetched = sum(hi - lo + 1 for lo, hi in spans)
        assert fetched < len(streams[1]) + 2 * storage.READ_BUFFER  # not page 0's stream


def test_gray_pages_read_as_their_jpeg_streams_decode(tmp_path):
    """A gray page's JPEG stream has no subsampling nor colour conversion: libtiff's read is
    what any JPEG decoder gives for it (OpenCV's, here)."""
    path = tmp_path / "gray.tif"
    pages = [np.ascontiguousarray(_picture(s, i)[..., 1]) for i, s in enumerate(SHAPES)]
    streams = write_ojpeg(path, pages)
    for index, stream in enumerate(streams):
        want = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_UNCHANGED)
        assert want.shape == SHAPES[index]
        _check_reader(str(path), index, want)
    with tifffile.TiffFile(path) as tf:
        info = page_info(tf.pages[1], str(path), 1)
    assert (info.photometric, info.channels, info.segment_rows) == ("minisblack", 1, 300)


def test_a_page_over_the_segment_bound_is_refused(crafted, monkeypatch):
    """The page is one segment: the reader's bound on a decoded segment applies to it."""
    path, _ = crafted
    monkeypatch.setattr(tiff_read, "MAX_SEGMENT_BYTES", 1_000_000)  # page 0: 1.9 MB; 1 fits
    with tifffile.TiffFile(path) as tf:
        with pytest.raises(UnsupportedTiffError) as err:
            page_info(tf.pages[0], str(path), 0)
        assert page_info(tf.pages[1], str(path), 1).height == SHAPES[1][0]
    for word in (str(path), "page 0", "old-style JPEG page, decoded whole", "new-style JPEG"):
        assert word in str(err.value)


def test_a_truncated_page_is_a_corrupt_tiff_error(tmp_path):
    path = tmp_path / "cut.tif"
    write_ojpeg(path, [_picture(s, i) for i, s in enumerate(SHAPES)], truncate_last=400)
    url = str(path)
    with open_tiff(url) as tf:
        _check_reader(url, 0, libtiff_pages(path)[0])  # the whole first page still reads
        page = get_page(tf, url, 1)
        with pytest.raises(CorruptTiffError) as err:
            PageReader(tf, page, url, 1).read(Rect(0, 0, 10, 10))
    for word in (url, "page 1", "truncated"):
        assert word in str(err.value)


def test_a_damaged_stream_is_a_corrupt_tiff_error(tmp_path):
    """The bytes are all there, but not a JPEG stream libtiff can decode."""
    path = tmp_path / "garbled.tif"
    streams = write_ojpeg(path, [_picture((64, 80), 5)])
    data = bytearray(path.read_bytes())
    at = bytes(data).index(streams[0])
    data[at + 2:at + len(streams[0]) - 2] = bytes(len(streams[0]) - 4)  # all but SOI, EOI
    path.write_bytes(bytes(data))
    url = str(path)
    with open_tiff(url) as tf:
        reader = PageReader(tf, get_page(tf, url, 0), url, 0)
        with pytest.raises(CorruptTiffError) as err:
            reader.read(Rect(0, 0, 64, 80))
    for word in (url, "page 0", "OJPEG", "cannot be decoded", "damaged"):
        assert word in str(err.value)


def test_tiffpipe_run_processes_ojpeg_pages(crafted, tmp_path):
    """Fused in one task, split into work tiles (not fused), copied, and a gray file: each
    output page is libtiff's read of the input page, blurred as OpenCV blurs the page."""
    path, _ = crafted
    gray = tmp_path / "gray-ojpeg.tif"
    streams = write_ojpeg(gray, [np.ascontiguousarray(_picture(SHAPES[0], 4)[..., 0])])
    sources = {path: libtiff_pages(path),
               gray: [cv2.imdecode(np.frombuffer(streams[0], np.uint8), cv2.IMREAD_UNCHANGED)]}
    blur = [{"op": "gaussian_blur", "sigma": 2.0}]
    jobs = {"fused": {"ops": blur}, "tiles": {"ops": blur, "fuse": False, "tile": 256},
            "copy": {"ops": []}, "gray": {"ops": blur, "input": str(gray)}}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": str(path), "output": str(tmp_path / f"{name}.tif"),
         "output_options": {"compression": "zstd", "tile": 128}, **job}
        for name, job in jobs.items()]}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet"])
    assert code == 0, err.getvalue()
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED"] * len(jobs)
    for name, job in jobs.items():
        source = sources[Path(job.get("input", path))]
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tf:
            assert len(tf.pages) == len(source)
            for page, want in zip(tf.pages, source, strict=True):
                if job["ops"]:
                    want = cv2.GaussianBlur(want, (0, 0), 2.0)
                np.testing.assert_array_equal(page.asarray(), want, err_msg=name)
                assert page.photometric == (tifffile.PHOTOMETRIC.RGB if want.ndim == 3 else
                                            tifffile.PHOTOMETRIC.MINISBLACK)
                assert page.tags.valueof(282) == (300, 1)  # the resolution comes along


@pytest.mark.parametrize("page", [0, 1])
def test_a_preview_is_that_of_libtiffs_pixels(crafted, tmp_path, page):
    """`tiffpipe preview` of an OJPEG page: the thumbnail of the same pixels stored plainly."""
    path, _ = crafted
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, libtiff_pages(path)[page], photometric="rgb", rowsperstrip=64,
                     compression="zlib")
    got = thumbnail(str(path), page, size=128)
    want = thumbnail(str(plain), 0, size=128)
    assert got.image.size == want.image.size and max(got.image.size) == 128
    np.testing.assert_array_equal(np.asarray(got.image), np.asarray(want.image))
    assert got.decoded == 1  # the page is decoded once, as one segment


def test_the_page_tiff_reads_each_piece_of_the_file_once():
    """The tables (Q, DC, AC) and the strips of a corpus page are read in as many reads as
    the pieces they lie in, each byte once: no read of a Huffman table's counts first (on
    S3 a ranged GET each)."""
    path = LIBTIFF_CORPUS / "ojpeg_single_strip_no_rowsperstrip.tiff"
    reads: list[tuple[int, int]] = []
    with tifffile.TiffFile(path) as tf:
        def read(offset: int, length: int) -> bytes:
            reads.append((offset, length))
            tf.filehandle.seek(offset)
            return tf.filehandle.read(length)

        data = ojpeg.page_tiff(tf.pages[0], read)
    spans = sorted((o, o + n) for o, n in reads)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # disjoint
    assert len(reads) == 1  # the strip and the tables after it lie in one piece
    np.testing.assert_array_equal(ojpeg.decode(data, 213, 234, 3), libtiff_pages(path)[0])
