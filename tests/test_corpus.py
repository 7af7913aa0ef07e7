"""The real-world corpus: every file of ``tests/data/libtiff/`` through ``tiffpipe run``
(one manifest: every file with an empty op chain and with gaussian_blur).

Each job either gives, page by page, exactly the pixels of tifffile's whole-page read (for
old-style JPEG and LIBTIFF_READ, which tifffile does not decode, libtiff's, Pillow's build)
with the
documented conversion (tiff_kinds.py: bilevel, miniswhite, palette) and the op applied,
or fails with the named error this test expects for that file, whose message names the file
and says why. Crafted IFD loops terminate (the run has a timeout)."""

from __future__ import annotations

import contextlib
import io
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
