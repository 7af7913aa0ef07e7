"""The real-world corpus: every file of ``tests/data/libtiff/`` through ``tiffpipe run``
(one manifest: every file with an empty op chain and with gaussian_blur).

Each job either gives, page by page, exactly the pixels of tifffile's whole-page read (for
old-style JPEG and LIBTIFF_READ, which tifffile does not decode, libtiff's, Pillow's build)
with the
documented conversion (tiff_kinds.py: bilevel, miniswhite, palette) and the op applied,
or fails with the named error this test expects for that file, whose message names the file
and says why. Crafted IFD loops terminate (the run has a timeout).

A second manifest puts every file through rotate, flip, crop, downsample and pyramid levels
(both layouts), compared page by page and level by level with numpy and cv2.resize of the
same read and the levels' rule of docs/outputs.md."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import time
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from conftest import LIBTIFF_CORPUS as CORPUS
from conftest import chain_pages
from tiff_kinds import documented, whole_page

from pipeline import __version__, cli

#: the corpus is in the repository: no file (or no folder) is a failure, never a skip
FILES = sorted(p.name for p in CORPUS.iterdir() if p.is_file() and p.suffix in (".tif", ".tiff"))
pytestmark = pytest.mark.timeout(600)

SIGMA = 1.5
MODES: dict[str, list[dict[str, Any]]] = {
    "copy": [], "blur": [{"op": "gaussian_blur", "sigma": SIGMA}]}
#: (file, mode or None for both) -> (error type, words the message must contain)
FAILURES: dict[tuple[str, str | None], tuple[str, tuple[str, ...]]] = {
    ("logluv-3c-16b.tiff", None): ("UnsupportedTiffError", ("SGILOG", "float32")),
}
#: files tifffile does not decode, compared with libtiff's read (Pillow's build): the last
#: strip of deflate-last-strip-extra-data.tiff holds 16 rows where the page has 4 left
#: (test_the_last_strip_holds_a_whole_strip)
LIBTIFF_READ = {"deflate-last-strip-extra-data.tiff"}


def expected_failure(name: str, mode: str) -> tuple[str, tuple[str, ...]] | None:
    return FAILURES.get((name, mode)) or FAILURES.get((name, None))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("corpus")
    keys = [(name, mode) for name in FILES for mode in MODES]
    jobs = [{"input": str(CORPUS / name), "output": str(root / "out" / f"{name}.{mode}.tif"),
             "ops": MODES[mode]} for name, mode in keys]
    manifest = root / "corpus.json"
    manifest.write_text(json.dumps({"jobs": jobs}, indent=1))
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet"])
    report = json.loads((root / "corpus.report.json").read_text())
    return {"code": code, "err": err.getvalue(), "seconds": time.monotonic() - started,
            "root": root, "jobs": dict(zip(keys, report["jobs"], strict=True))}


def test_every_file_of_the_corpus_was_run(run):
    assert len(FILES) == 30, FILES
    assert {name for name, _ in FAILURES} <= set(FILES)
    assert len(run["jobs"]) == len(FILES) * len(MODES)
    assert run["code"] == 1  # the corpus has files that must fail
    assert "Traceback" not in run["err"]


def _pages(path: Path | str) -> list[tifffile.TiffPage]:
    """Up to the chain's end or a loop back to a page read (test_ifd_loop_subifd.tif: 5
    pages, as libtiff and Pillow read it; tifffile's len() cuts its loop after 4)."""
    return chain_pages(tifffile.TiffFile(path))


def _resolution(page: tifffile.TiffPage) -> tuple[Fraction, Fraction, int] | None:
    x, y = page.tags.valueof(282), page.tags.valueof(283)
    if not x or not y or not x[1] or not y[1]:
        return None
    return Fraction(*x), Fraction(*y), int(page.tags.valueof(296) or 2)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", FILES)
def test_corpus_file(run, name, mode):
    job = run["jobs"][(name, mode)]
    described = json.dumps(job, indent=1)
    failure = expected_failure(name, mode)
    if failure is not None:
        error, words = failure
        assert job["status"] == "FAILED", described
        assert job["error"]["type"] == error, described
        message = job["error"]["message"]
        assert str(CORPUS / name) in message, described  # names the file
        for word in words:  # and says why
            assert word in message, (word, described)
        assert not Path(job["output"]).exists()
        return
    assert job["status"] == "SUCCEEDED", described
    inputs, outputs = _pages(CORPUS / name), _pages(job["output"])
    assert len(outputs) == len(inputs) == job["pages"]
    for i, (src, out) in enumerate(zip(inputs, outputs, strict=True)):
        want = documented(src, keep_palette=not MODES[mode], libtiff=name in LIBTIFF_READ)
        if MODES[mode]:
            want = cv2.GaussianBlur(want, (0, 0), SIGMA)
        got = out.asarray()
        assert got.dtype == want.dtype and got.shape == want.shape, (i, got.shape, want.shape)
        assert np.array_equal(got, want, equal_nan=True), \
            f"page {i}: max diff {np.abs(got.astype(float) - want).max()}"
        # the metadata that says how to show and measure the page comes along
        assert out.software == f"tiffpipe {__version__}"
        assert _resolution(out) == _resolution(src) or _resolution(src) is None
        if int(src.photometric) == 3 and not MODES[mode]:
            assert out.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert tuple(out.extrasamples) == tuple(src.extrasamples)


def test_the_last_strip_holds_a_whole_strip():
    """What deflate-last-strip-extra-data.tiff holds, decoded here by zlib: 500 x 500 uint8
    in strips of 16 rows, every stream whole (no byte after it); the last strip's stream
    holds 16 rows (the page's last 4, then 12 rows of 0), tifffile fails on it, and
    libtiff's read (Pillow's), the reference of test_corpus_file, is each strip's first rows."""
    path = CORPUS / "deflate-last-strip-extra-data.tiff"
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert (page.shape, page.dtype, page.rowsperstrip, page.predictor) == \
            ((500, 500), np.uint8, 16, 1)
        strips = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            tf.filehandle.seek(offset)
            stream = zlib.decompressobj()
            strips.append(stream.decompress(tf.filehandle.read(count)))
            assert stream.eof and not stream.unused_data
        with pytest.raises(Exception, match="INSUFFICIENT_SPACE"):
            page.asarray()
    assert [len(s) for s in strips] == [16 * 500] * 32  # 512 rows, the page has 500
    rows = np.frombuffer(b"".join(strips), np.uint8).reshape(512, 500)
    assert not rows[500:].any()
    assert np.array_equal(whole_page(page, libtiff=True), rows[:500])


# --- the geometric ops, downsample and pyramid levels over the corpus (a second run) ------

#: mode -> (ops, output_options); "crop" gets an odd box inside each file's pages
MOVES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "rotate90": ([{"op": "rotate", "angle": 90}], {}),
    "flip": ([{"op": "flip", "axis": "horizontal"}], {}),
    "crop": ([], {}),
    "downsample": ([{"op": "downsample", "factor": 2}], {}),
    "rotate270_levels": ([{"op": "rotate", "angle": 270}], {"pyramid": True}),
    "levels_as_pages": ([], {"pyramid": True, "pyramid_layout": "pages"}),
}
#: the files of one pixel, which a downsample by 2 cannot make a page of
ONE_PIXEL = {"custom_dir_EXIF_GPS.tiff", "test_ifd_loop_subifd.tif",
             "test_ifd_loop_to_first.tif", "test_two_ifds.tif"}


def _moves(name: str) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Each mode's ops and output options for file ``name``."""
    page = _pages(CORPUS / name)[0]
    h, w = page.imagelength, page.imagewidth
    x, y = (1, 1) if min(h, w) > 4 else (0, 0)
    box = {"op": "crop", "x": x, "y": y, "width": max(1, (w - x - 2) | 1 if w > 4 else w),
           "height": max(1, (h - y - 2) | 1 if h > 4 else h)}
    tile = 128 if max(h, w) > 1000 else 32  # (levels on the small pages too)
    return {mode: ([box] if mode == "crop" else ops,
                   {**options, "tile": tile} if options else {})
            for mode, (ops, options) in MOVES.items()}


def _moved(data: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    """``data`` through the chain, by the docs' definitions (numpy, cv2.resize)."""
    for op in ops:
        if op["op"] == "rotate":
            data = np.rot90(data, -op["angle"] // 90)
        elif op["op"] == "flip":
            data = np.flip(data, 1)
        elif op["op"] == "crop":
            data = data[op["y"]:op["y"] + op["height"], op["x"]:op["x"] + op["width"]]
        else:  # downsample: INTER_AREA of the page cut to multiples of the factor
            f = op["factor"]
            h, w = data.shape[0] // f, data.shape[1] // f
            data = cv2.resize(np.ascontiguousarray(data[:h * f, :w * f]), (w, h),
                              interpolation=cv2.INTER_AREA).reshape(h, w, *data.shape[2:])
    return np.ascontiguousarray(data)


def _level(page: np.ndarray, palette: bool) -> np.ndarray:
    """The next pyramid level by docs/outputs.md's rule: each 2 x 2 block's rounded mean of
    the pixels that exist (floats: the mean), a palette's index GDAL's nearest overviews
    take (:func:`pipeline.core.reduce.overview_picks`: the top-left one of each block, but
    past half way down or across a level of odd size the one before the block)."""
    if palette:
        from pipeline.core.reduce import overview_picks

        return page[overview_picks(page.shape[0])][:, overview_picks(page.shape[1])]
    h, w = -(-page.shape[0] // 2), -(-page.shape[1] // 2)
    kind = np.float64 if page.dtype.kind == "f" else np.int64
    total = np.zeros((h, w, *page.shape[2:]), kind)
    count = np.zeros((h, w) + (1,) * (page.ndim - 2), np.int64)
    for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1)):
        block = page[dy::2, dx::2]
        total[:block.shape[0], :block.shape[1]] += block
        count[:block.shape[0], :block.shape[1]] += 1
    mean = total / count if kind is np.float64 else (total + count // 2) // count
    return mean.astype(page.dtype)


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    root = tmp_path_factory.mktemp("corpus_moves")
    keys, jobs = [], []
    for name in FILES:
        several = len(_pages(CORPUS / name)) > 1
        for mode, (ops, options) in _moves(name).items():
            keys.append((name, mode))
            jobs.append({"input": str(CORPUS / name), "output": str(root / f"{name}.{mode}.tif"),
                         "ops": ops, "output_options": options})
            if several and options.get("pyramid_layout") == "pages":
                jobs[-1]["pages"] = [0]  # (level pages: outputs of one page, docs/outputs.md)
    manifest = root / "moves.json"
    manifest.write_text(json.dumps({"jobs": jobs}, indent=1))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(["run", str(manifest), "--workers", "2", "--quiet"])
    report = json.loads((root / "moves.report.json").read_text())
    return dict(zip(keys, zip(jobs, report["jobs"], strict=True), strict=True))


@pytest.mark.parametrize("mode", list(MOVES))
@pytest.mark.parametrize("name", FILES)
def test_corpus_file_turned_cropped_downsampled_and_levelled(moved, name, mode):
    """rotate, flip, crop, downsample and pyramid levels (SubIFDs of a turned page, and pages)
    give, page by page and level by level, the documented pixels of tifffile's read."""
    spec, job = moved[(name, mode)]
    described = json.dumps(job, indent=1)
    failure = expected_failure(name, "copy")
    if failure is None and mode == "downsample" and name in ONE_PIXEL:
        failure = ("OperationError", ("1 x 1 pixels is smaller than the downsampling factor 2",
                                      "leave the page out"))
    if failure is not None:
        assert job["status"] == "FAILED", described
        assert job["error"]["type"] == failure[0], described
        assert all(w in job["error"]["message"] for w in (str(CORPUS / name), *failure[1]))
        return
    assert job["status"] == "SUCCEEDED", described
    ops, options = spec["ops"], spec["output_options"]
    output = _pages(job["output"])
    outs = [p for p in output if not int(p.subfiletype) & 1]  # (the level pages left out)
    inputs = _pages(CORPUS / name)
    inputs = [inputs[p] for p in spec["pages"]] if "pages" in spec else inputs
    assert len(outs) == len(inputs) == job["pages"]
    moves_only = all(op["op"] in ("rotate", "flip", "crop") for op in ops)
    for i, (src, out) in enumerate(zip(inputs, outs, strict=True)):
        want = _moved(documented(src, keep_palette=moves_only, libtiff=name in LIBTIFF_READ),
                      ops)
        got = whole_page(out)
        assert got.dtype == want.dtype and got.shape == want.shape, (i, got.shape, want.shape)
        assert np.array_equal(got, want, equal_nan=True), \
            f"page {i}: max diff {np.abs(got.astype(float) - want).max()}"
        if not options:
            continue
        if options.get("pyramid_layout") == "pages":
            after = output[output.index(out) + 1:]
            levels = list(itertools.takewhile(lambda p: int(p.subfiletype) & 1, after))
        else:
            levels = list(out.pages) if out.subifds else []
        wants = []  # down to the first level that fits in one output tile
        while max(want.shape[:2]) > options["tile"]:
            want = _level(want, int(out.photometric) == 3)
            wants.append(want)
        assert [lv.shape[:2] for lv in levels] == [w.shape[:2] for w in wants], i
        for k, (lv, want) in enumerate(zip(levels, wants, strict=True), 1):
            assert np.array_equal(whole_page(lv), want, equal_nan=True), f"page {i} level {k}"
