"""What tiffpipe tells an archive that writes a scanned book (1-bit text pages and an RGB
plate) with ``output_options.bilevel``: a "auto" job whose mean downsample grays the text
pages says so apart from the plates, and which method keeps them 1-bit (a run of the local
engine, its pages read back); a true job is told the downsample's picking method first, and
``"bilevel": "auto"`` first for the plates it cannot hold; and the refusal of a 1-bit
pyramid says why for the resampling asked, and what works (an 8-bit pyramid job).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline import cli
from pipeline.core.manifest import parse_manifest
from pipeline.core.plan import grouped_by_page
from pipeline.errors import ManifestError
from pipeline.runner import run_local
from pipeline.steps.planning import read_plan

CROP = {"op": "crop", "x": 8, "y": 8, "width": 160, "height": 200}
MEAN = {"op": "downsample", "factor": 2}
MODE = {"op": "downsample", "factor": 2, "method": "mode"}


def text_page(seed: int, height: int = 220, width: int = 180) -> np.ndarray:
    """A scanned text page as tifffile's bool (True: black ink): lines of words."""
    rng = np.random.default_rng(seed)
    ink = np.zeros((height, width), bool)
    for y in range(12, height - 12, 14):
        x = 10
        while x < width - 20:
            n = int(rng.integers(6, 30))
            ink[y:y + 7, x:x + n] = True
            x += n + int(rng.integers(4, 9))
    return ink


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """book.tif: 1-bit text pages 0 and 2 (miniswhite, as CCITT scans are) and an RGB
    plate, page 1."""
    tmp = tmp_path_factory.mktemp("hints")
    plate = np.random.default_rng(3).integers(0, 256, (230, 240, 3), np.uint8)
    with tifffile.TiffWriter(tmp / "book.tif") as tw:
        tw.write(text_page(1), photometric="miniswhite", compression="zlib")
        tw.write(plate, photometric="rgb", compression="zstd")
        tw.write(text_page(2), photometric="miniswhite", compression="zlib")
    return tmp


def kinds(path: Path) -> list[tuple[int, int]]:
    """Each page's (BitsPerSample, Compression)."""
    with tifffile.TiffFile(path) as tf:
        return [(p.bitspersample, int(p.compression)) for p in tf.pages]


def plan_problems(book: Path, ops: list, options: dict, pages: list | None = None
                  ) -> list[str]:
    job = {"input": "book.tif", "output": "o.tif", "ops": ops, "output_options": options}
    spec = parse_manifest({"jobs": [{**job, **({"pages": pages} if pages else {})}]},
                          "m.json", str(book))[0]
    return grouped_by_page(read_plan(0, spec, "w", 0.0)[1])


GRAYED = ('bilevel "auto": page 1 as it is in jpeg; 1-bit pages 0, 2 grayed by ops[1] '
          '(downsample, mean): written 8-bit in jpeg; "method": "mode" (or "nearest", "min") '
          "keeps them black and white and 1-bit")


def test_auto_tells_the_text_pages_a_mean_downsample_grays_apart_and_the_fix(book, capsys):
    """The text pages of a crop and mean downsample come out 8-bit JPEG: the note (run
    report, validate --inputs) says they were grayed by the downsample, not "as they are",
    and the method it names writes them 1-bit in group4, the plate still JPEG."""
    (book / "m.json").write_text(json.dumps({
        "defaults": {"output_options": {"bilevel": "auto", "compression": "jpeg"}},
        "jobs": [{"input": "book.tif", "output": "mean.tif", "ops": [CROP, MEAN]},
                 {"input": "book.tif", "output": "mode.tif", "ops": [CROP, MODE]}]}))
    assert cli.main(["validate", "--inputs", str(book / "m.json")]) == 0
    assert f"  jobs[0] ({book / 'book.tif'}): {GRAYED}\n" in capsys.readouterr().out
    result = run_local(str(book / "m.json"), 2)
    mean, mode = result.jobs
    assert mean["status"] == mode["status"] == "SUCCEEDED", result.jobs
    assert mean["message"] == GRAYED
    assert kinds(book / "mean.tif") == [(8, 7)] * 3  # (JPEG, the text pages' grays in it)
    with tifffile.TiffFile(book / "mean.tif") as tf:
        values = np.unique(tf.pages[0].asarray())
    assert len(values) > 2  # (grays: what the note says)
    assert mode["message"] == ('bilevel "auto": pages 0, 2 written 1-bit in group4; page 1 as '
                               "it is in jpeg")
    assert kinds(book / "mode.tif") == [(1, 4), (8, 7), (1, 4)]


def test_a_blur_that_grays_the_text_pages_is_told_a_threshold(book):
    spec = parse_manifest({"jobs": [{
        "input": "book.tif", "output": "o.tif", "pages": [0],
        "ops": [{"op": "gaussian_blur", "sigma": 2}],
        "output_options": {"bilevel": "auto"}}]}, "m.json", str(book))[0]
    plan, problems = read_plan(0, spec, "w", 0.0)
    assert problems == [] and plan.note == (
        'bilevel "auto": 1-bit page 0 grayed by ops[0] (gaussian_blur): written 8-bit in zstd; '
        'add {"op": "threshold", "value": 127} after it to write it 1-bit')


def test_true_with_a_mean_downsample_is_told_the_picking_method_first(book):
    refusal = plan_problems(book, [MEAN], {"bilevel": True, "compression": "group4"}, [0, 2])
    assert refusal == [(
        'output_options.bilevel: ops[0] (downsample) makes gray values wherever black and '
        'white meet, and a 1-bit output holds 0 and 255 only; give it "method": "mode" (or '
        '"nearest", "min") to keep them, or add {"op": "threshold", "value": 127} (or '
        'otsu_threshold) after it, or drop "bilevel" for an 8-bit output')]
    # the fix it names plans, every page 1-bit
    assert plan_problems(book, [MODE], {"bilevel": True, "compression": "group4"}, [0, 2]) == []


PLATE = ("page 1: output_options.bilevel: a 1-bit output holds one band of uint8, 0 and 255 "
         "only, the output is uint8 with 3 bands; ")
BINARISE = ('end the ops with {"op": "to_gray"}, then {"op": "threshold", "value": V} (V a '
            "value of the page's own: the pixels above it become 255, the others 0; or "
            '{"op": "otsu_threshold"}), or drop "bilevel"')


def test_true_on_a_book_with_plates_is_told_auto_first(book):
    """A whole book with "bilevel": true: the plate's refusal names "auto" (with a codec
    for the plate: group4 holds 1-bit pages only) before the ops that would binarise the
    plate; the job of its other pages is still offered. Following it plans."""
    assert plan_problems(book, [], {"bilevel": True, "compression": "group4"}) == [
        PLATE + ('set "bilevel": "auto" with a "compression" for the others (zstd, deflate, '
                 "lzw, jpeg or none; group4 holds 1-bit pages only) to write pages 0, 2 1-bit "
                 "and the others as they are; or ") + BINARISE,
        ('pages 0, 2 have none of these problems: give this job "pages": [0, 2] to run them, '
         "and page 1 a job of its own with ops and output options that fit it")]
    # in zstd: "auto" keeps the 1-bit pages in it by bilevel_compression (group4 unless set)
    assert plan_problems(book, [], {"bilevel": True, "compression": "zstd"})[0] == (
        PLATE + 'set "bilevel": "auto" with "bilevel_compression": "zstd" (the 1-bit pages\' '
        "codec, group4 unless set) to write pages 0, 2 1-bit and the others as they are; or "
        + BINARISE)
    assert plan_problems(book, [], {"bilevel": "auto", "compression": "zstd"}) == []
    # a job of the plate alone: "auto" would write nothing 1-bit, so it is not offered
    assert plan_problems(book, [], {"bilevel": True}, [1]) == [PLATE + BINARISE]


def manifest_problems(options: dict) -> list[str]:
    try:
        parse_manifest({"jobs": [{"input": "a.tif", "output": "b.tif",
                                  "output_options": options}]}, "m.json", ".")
    except ManifestError as exc:
        return exc.problems
    return []


APART = ('write the levels in a job of their own (the same input, "bilevel": false, '
         '"pyramid": true: an 8-bit pyramid file beside the 1-bit one), or drop "pyramid" or '
         '"bilevel"')


@pytest.mark.parametrize("method", ["mode", "nearest", "min", "max"])
def test_a_1bit_pyramid_of_a_picking_resampling_is_refused_for_what_is_true(method):
    """Levels of mode (nearest, min, max) are black and white: the refusal no longer says
    they are means, but that levels are written 8-bit only, and what works."""
    assert manifest_problems({"bilevel": "auto", "pyramid": True,
                              "pyramid_resampling": method}) == [
        f'jobs[0].output_options.bilevel: "auto" with pyramid true: pyramid levels of '
        f'"pyramid_resampling" "{method}" keep black and white, but pyramid levels are '
        "written 8-bit only, and a 1-bit page's levels would have to be 1-bit too; " + APART]
    # the job of its own it names is valid
    assert manifest_problems({"bilevel": False, "pyramid": True,
                              "pyramid_resampling": method}) == []
