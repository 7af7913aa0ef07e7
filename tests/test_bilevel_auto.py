"""``output_options.bilevel`` "auto": a scanned book of 1-bit CCITT text pages and 8-bit
gray and colour plates, copied or cropped into one output, each page in its own kind: the
text pages 1-bit in ``bilevel_compression`` (group4 unless set), the others as a job
without ``bilevel`` writes them, in ``compression``; a chain that ends black and white
(otsu_threshold) makes every page 1-bit. Runs of the local engine on a book made of the
libtiff corpus's real fax page, each output page's BitsPerSample, Photometric and
Compression read back and its pixels compared with the input's; what validate refuses;
what ``tiffpipe inspect``, the report and ``tiffpipe estimate`` say of each page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import mixed_book, one_bit_pages_state_their_bits
from test_estimate import FAST_IO
from test_estimate_bilevel import _cal

from pipeline import cli
from pipeline import estimate as est
from pipeline.core.manifest import parse_manifest
from pipeline.core.plan import held_bytes, raw_output_bytes
from pipeline.errors import ManifestError
from pipeline.runner import run_local
from pipeline.steps.planning import read_plan

FAX = Path(__file__).parent / "data" / "libtiff" / "testfax4.tiff"
CROP = {"op": "crop", "x": 10, "y": 20, "width": 120, "height": 100}
#: TIFF Compression codes
CODES = {"zstd": 50000, "deflate": 8, "lzw": 5, "jpeg": 7, "group4": 4}
JOBS = {
    "copy": {"output_options": {"bilevel": "auto"}},
    "crop": {"ops": [CROP], "output_options": {"bilevel": "auto", "compression": "lzw",
                                               "bilevel_compression": "deflate"}},
    "jpeg": {"output_options": {"bilevel": "auto", "compression": "jpeg"}},
    "otsu": {"ops": [{"op": "to_gray"}, {"op": "otsu_threshold"}],
             "output_options": {"bilevel": "auto"}},
    "otsu_8bit": {"ops": [{"op": "to_gray"}, {"op": "otsu_threshold"}]},
    "ome": {"output_options": {"bilevel": "auto", "ome": True}},
}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bilevel_auto")
    pages = mixed_book(tmp / "book.tif", FAX)
    (tmp / "m.json").write_text(json.dumps({"jobs": [
        {"input": "book.tif", "output": f"{name}.tif", **job} for name, job in JOBS.items()]}))
    result = run_local(str(tmp / "m.json"), 2)
    return tmp, pages, {j["output"].rsplit("/", 1)[-1][:-4]: j for j in result.jobs}


def kinds(path: Path) -> list[tuple[int, int, int]]:
    """Each page's (BitsPerSample, Photometric, Compression)."""
    with tifffile.TiffFile(path) as tf:
        return [(p.bitspersample, int(p.photometric), int(p.compression)) for p in tf.pages]


def pages_of(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [p.asarray() for p in tf.pages]


def test_a_copy_keeps_the_text_page_1bit_and_the_plates_as_they_are(book):
    tmp, pages, jobs = book
    assert jobs["copy"]["status"] == "SUCCEEDED", jobs["copy"]
    # 1-bit miniswhite group4; 8-bit gray and RGB in zstd (the default compression)
    assert kinds(tmp / "copy.tif") == [(1, 0, 4), (8, 1, CODES["zstd"]),
                                       (8, 2, CODES["zstd"])]
    got = pages_of(tmp / "copy.tif")
    for k, (a, b) in enumerate(zip(got, pages, strict=True)):
        assert a.dtype == b.dtype and np.array_equal(a, b), k
    assert one_bit_pages_state_their_bits(tmp / "copy.tif") == 1
    # the report says which pages are 1-bit, in what, and the others in what
    assert jobs["copy"]["message"] == ('bilevel "auto": page 0 written 1-bit in group4; '
                                       "pages 1-2 as they are in zstd")


def test_a_crop_writes_each_page_in_its_codec(book):
    tmp, pages, jobs = book
    assert jobs["crop"]["status"] == "SUCCEEDED", jobs["crop"]
    assert kinds(tmp / "crop.tif") == [(1, 0, CODES["deflate"]), (8, 1, CODES["lzw"]),
                                       (8, 2, CODES["lzw"])]
    box = (slice(20, 120), slice(10, 130))
    for k, (a, b) in enumerate(zip(pages_of(tmp / "crop.tif"), pages, strict=True)):
        assert np.array_equal(a, b[box]), k


def test_jpeg_plates_with_group4_text(book):
    """compression jpeg is the plates' (lossy, as asked); the text page, which JPEG cannot
    hold in 1 bit, takes bilevel_compression: group4, its bits exactly the input's."""
    tmp, pages, jobs = book
    assert jobs["jpeg"]["status"] == "SUCCEEDED", jobs["jpeg"]
    assert kinds(tmp / "jpeg.tif") == [(1, 0, 4), (8, 1, 7), (8, 6, 7)]  # (RGB as YCbCr)
    got = pages_of(tmp / "jpeg.tif")
    assert np.array_equal(got[0], pages[0])
    assert np.abs(got[1].astype(int) - pages[1]).mean() < 8


def test_a_chain_that_ends_black_and_white_makes_every_page_1bit(book):
    tmp, _, jobs = book
    assert jobs["otsu"]["status"] == "SUCCEEDED", jobs["otsu"]
    assert kinds(tmp / "otsu.tif") == [(1, 0, 4)] * 3
    eight = pages_of(tmp / "otsu_8bit.tif")  # the same chain without bilevel: 0 and 255
    for k, (a, b) in enumerate(zip(pages_of(tmp / "otsu.tif"), eight, strict=True)):
        assert np.array_equal(np.where(a, 0, 255), b), k  # (miniswhite: a 1 is black)
    assert jobs["otsu"]["message"] == 'bilevel "auto": pages 0-2 written 1-bit in group4'


def test_an_ome_tiff_types_each_image_as_its_page(book):
    """OME-XML gives each Image the type of its page: "bit" for the 1-bit text page, uint8
    for the plates; tifffile reads each series as the input page."""
    tmp, pages, jobs = book
    assert jobs["ome"]["status"] == "SUCCEEDED", jobs["ome"]
    assert kinds(tmp / "ome.tif") == [(1, 0, 4), (8, 1, CODES["zstd"]), (8, 2, CODES["zstd"])]
    with tifffile.TiffFile(tmp / "ome.tif") as tf:
        assert re.findall(r'Type="(\w+)"', tf.ome_metadata) == ["bit", "uint8", "uint8"]
        for k, (series, page) in enumerate(zip(tf.series, pages, strict=True)):
            assert np.array_equal(series.asarray(), page), k


def test_the_plan_counts_each_page_in_its_own_bits(book):
    """held_bytes and raw_output_bytes (which decide a held output and a BigTIFF) count the
    text page at a bit a pixel (group4: up to 7) and the plates at their bytes."""
    tmp, pages, _ = book
    spec = parse_manifest({"jobs": [{"input": str(tmp / "book.tif"), "output": "o.tif",
                                     **JOBS["copy"]}]}, "m.json", str(tmp))[0]
    plan, problems = read_plan(0, spec, "w", 0.0)
    assert problems == [] and [p.one_bit for p in plan.pages] == [True, False, False]
    h, w = pages[0].shape
    plates = pages[1].size + pages[2].size
    assert raw_output_bytes(plan) == h * -(-w // 8) + plates
    assert held_bytes(plan) == h * -(-w // 8) * 7 + plates


def problems(options: dict, ops: list | None = None) -> list[str]:
    job = {"input": "a.tif", "output": "b.tif", "output_options": options, "ops": ops or []}
    try:
        parse_manifest({"jobs": [job]}, "m.json", ".")
    except ManifestError as exc:
        return exc.problems
    return []


def test_validate_takes_auto_and_refuses_what_cannot_work():
    assert problems({"bilevel": "auto", "compression": "jpeg"}) == []
    assert problems({"bilevel": "auto", "bilevel_compression": "zstd"}) == []
    # a chain that makes no one band of uint8: those pages are written as they are
    assert problems({"bilevel": "auto"}, [{"op": "convert", "dtype": "uint16"}]) == []
    assert problems({"bilevel": "yes"}) == [
        ('jobs[0].output_options.bilevel: expected true (every page 1-bit), false or "auto" '
         "(the pages whose output is black and white 1-bit, the others as they are), got "
         '"yes"')]
    assert problems({"bilevel": "auto", "bilevel_compression": "jpeg"}) == [
        ('jobs[0].output_options.bilevel_compression: expected one of "zstd", "deflate", '
         '"lzw", "group4", "none", got "jpeg"')]
    assert problems({"bilevel": "auto", "compression": "group4"}) == [
        ('jobs[0].output_options.compression: "group4" with bilevel "auto": with "auto", '
         "compression is the codec of the pages that are not 1-bit (the 1-bit ones take "
         "bilevel_compression, group4 unless set), and group4 (CCITT T.6) writes 1-bit pages "
         "only; choose zstd, deflate, lzw, jpeg or none for the other pages, or set "
         '"bilevel": true for every page 1-bit')]
    assert problems({"bilevel": "auto", "pyramid": True}) == [
        ('jobs[0].output_options.bilevel: "auto" with pyramid true: pyramid levels are means '
         "of the page (grays), which 1 bit cannot hold; write the levels in a job of their own "
         '(the same input, "bilevel": false, "pyramid": true: an 8-bit pyramid file beside '
         'the 1-bit one), or drop "pyramid" or "bilevel"')]
    assert problems({"bilevel": True, "bilevel_compression": "zstd"}) == [
        ('jobs[0].output_options.bilevel_compression: "zstd" with bilevel true: it is the '
         'codec of the 1-bit pages of a "bilevel": "auto" job, and every page of a "bilevel": '
         'true job takes compression; set "bilevel": "auto", or drop "bilevel_compression"')]
    assert problems({"bilevel_compression": "lzw"}) == [
        ('jobs[0].output_options.bilevel_compression: "lzw" with bilevel false (the default '
         'output_options.bilevel): it is the codec of the 1-bit pages of a "bilevel": "auto" '
         'job, and a "bilevel": false job writes no 1-bit page; set "bilevel": "auto", or '
         'drop "bilevel_compression"')]


def test_inspect_says_which_pages_are_written_1bit_and_in_what(book, capsys):
    tmp = book[0]
    args = ["inspect", str(tmp / "book.tif"), "--output-options",
            '{"bilevel": "auto", "compression": "jpeg"}']
    assert cli.main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    outs = [p["ops"]["out"] for p in doc["files"][0]["pages"]]
    assert [(out["one_bit"], out["compression"]) for out in outs] == [
        (True, "group4"), (False, "jpeg"), (False, "jpeg")]
    assert cli.main(args) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()
             if "ops: run" in line]
    assert lines == ["ops: run -> 2453 x 3369, 1 x uint8, written 1-bit in group4",
                     "ops: run -> 260 x 300, 1 x uint8", "ops: run -> 180 x 200, 3 x uint8"]


def test_estimate_sizes_each_page_as_its_kind(book):
    """The estimate of the copy sizes the text page by the 1-bit group4 measurements and
    the plates by zstd's: its tiles' bytes are those of a group4 job of the text page and a
    zstd job of the plates together, and it says which pages are 1-bit as the report does."""
    tmp = book[0]
    m = tmp / "estimate.json"
    m.write_text(json.dumps({"jobs": [
        {"input": "book.tif", "output": "e_auto.tif", **JOBS["copy"]},
        {"input": "book.tif", "output": "e_text.tif", "pages": [0],
         "output_options": {"bilevel": True, "compression": "group4"}},
        {"input": "book.tif", "output": "e_plates.tif", "pages": [1, 2]}]}))
    planned = est.plan_manifest(str(m))
    assert planned.problems == []
    rows = est.estimate(planned.plans, _cal(), FAST_IO, input_bytes=planned.sizes)["jobs"]
    tiles = [row["output_bytes"] - row["header_bytes"] for row in rows]
    assert tiles[0] == pytest.approx(tiles[1] + tiles[2])
    assert rows[0]["message"] == ('bilevel "auto": page 0 written 1-bit in group4; pages 1-2 '
                                  "as they are in zstd")


def test_a_kept_no_data_value_other_than_0_and_255_makes_auto_write_the_page_8bit(
        tmp_path, capsys):
    """A page whose no-data value (GDAL_NODATA 17: a scanner's gray frame) otsu_threshold
    keeps (it writes the no-data pixels back) cannot be 1-bit: "auto" writes it 8-bit, its
    GDAL_NODATA kept, and the page beside it without one 1-bit, and says why of the first
    in the report's message and ``validate --inputs``; ``inspect`` shows it not 1-bit.
    Before, the job was refused when planned, as ``"bilevel": true`` still refuses it
    (tests/test_bilevel.py)."""
    from test_bilevel import scan_page

    framed, plain = scan_page(4, 150, 170), scan_page(5, 150, 170)
    framed[:, :20] = 17
    with tifffile.TiffWriter(tmp_path / "scans.tif") as tw:
        tw.write(framed, metadata=None, extratags=[(42113, "s", 0, "17", True)])
        tw.write(plain, metadata=None)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": "scans.tif", "output": "out.tif", "ops": [{"op": "otsu_threshold"}],
        "output_options": {"bilevel": "auto"}}]}))
    said = ('bilevel "auto": page 1 written 1-bit in group4; page 0 written 8-bit in zstd: '
            "its no-data value 17 (GDAL_NODATA) is kept through the ops, and a 1-bit page "
            'holds only 0 and 255; end the ops with {"op": "threshold", "value": 127} to '
            "write it 1-bit (the no-data pixels are then thresholded as data and GDAL_NODATA "
            "is dropped)")
    assert cli.main(["validate", "--inputs", str(manifest)]) == 0
    assert said in capsys.readouterr().out
    (job,) = run_local(str(manifest), 1).jobs
    assert job["status"] == "SUCCEEDED", job
    assert job["message"] == said
    assert kinds(tmp_path / "out.tif") == [(8, 1, CODES["zstd"]), (1, 0, CODES["group4"])]
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert tf.pages[0].tags[42113].value == "17"
        assert 42113 not in tf.pages[1].tags
    # (each page's Otsu threshold of its pixels with data; the no-data pixels stay 17)
    wants = []
    for page, data in ((framed, framed != 17), (plain, np.ones(plain.shape, bool))):
        t, _ = cv2.threshold(page[data].reshape(1, -1), 0, 255,
                             cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        wants.append(np.where(data, np.where(page > t, 255, 0), 17).astype(np.uint8))
    got = pages_of(tmp_path / "out.tif")
    assert got[0].dtype == np.uint8 and np.array_equal(got[0], wants[0])
    assert np.array_equal(np.where(got[1], 0, 255), wants[1])  # (miniswhite: 1 is black)
    assert cli.main(["inspect", str(tmp_path / "scans.tif"), "--ops",
                     '[{"op": "otsu_threshold"}]', "--output-options",
                     '{"bilevel": "auto"}', "--json"]) == 0
    outs = [p["ops"]["out"] for p in json.loads(capsys.readouterr().out)["files"][0]["pages"]]
    assert [(out["one_bit"], out["compression"]) for out in outs] == [
        (False, "zstd"), (True, "group4")]
