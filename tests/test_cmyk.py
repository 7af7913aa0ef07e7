"""CMYK pages (photometric SEPARATED, InkSet CMYK) are kept as CMYK: read as their 4 inks
(and extra samples), processed band by band like any multi-band page, written SEPARATED with
InkSet CMYK and a CMYK ICC profile carried; the ops that read bands as gray or RGB, JPEG
output, JPEG-compressed CMYK and other ink sets are refused with named errors; previews and
contact sheets show the inks on white paper. Real files written by tifffile, real runs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from pipeline import cli
from pipeline.adapters.tiff_read import PageReader, page_info
from pipeline.core.grid import Rect
from pipeline.errors import UnsupportedTiffError
from pipeline.preview import cmyk_rgb, thumbnail

H, W = 300, 420
#: a (fake but well-formed enough) ICC header of a CMYK profile: the colour space at 16..20
CMYK_ICC = bytes(16) + b"CMYK" + bytes(16) + b"acsp" + bytes(160)


def inks(dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Gradients of cyan across, magenta down, a yellow checkerboard, black in a corner."""
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:H, 0:W]
    noise = np.random.default_rng(seed).integers(0, top // 20, (H, W, 4))
    px = np.stack([x * top // W, y * top // H, ((x // 30 + y // 30) % 2) * (top * 3 // 4),
                   (x * y) * (top // 2) // (H * W)], axis=-1) + noise
    return np.clip(px, 0, top).astype(dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmyk")
    made = {"u8": root / "cmyk8.tif", "u16a": root / "cmyk16a.tif", "jpeg": root / "jpeg.tif",
            "inks2": root / "inks2.tif", "float": root / "float.tif"}
    tifffile.imwrite(made["u8"], inks(), photometric="separated", tile=(64, 64),
                     compression="zlib", iccprofile=CMYK_ICC, resolution=(300, 300))
    alpha = np.full((H, W, 1), 65535, np.uint16)
    alpha[:40] = 0
    tifffile.imwrite(made["u16a"], np.dstack([inks("uint16", 1), alpha]),
                     photometric="separated", extrasamples=[2], rowsperstrip=32,
                     compression="zstd")
    tifffile.imwrite(made["jpeg"], inks(), photometric="separated", tile=(64, 64),
                     compression="jpeg")
    tifffile.imwrite(made["inks2"], inks(), photometric="separated", extratags=[
        (332, 3, 1, (2,), True)])
    tifffile.imwrite(made["float"], inks().astype(np.float32) / 255, photometric="separated")
    return made


def test_cmyk_pages_are_read_as_their_inks(files):
    for name in ("u8", "u16a"):
        path = files[name]
        want = tifffile.imread(path)
        with tifffile.TiffFile(path) as tf:
            info = page_info(tf.pages[0], str(path), 0)
            assert (info.photometric, info.channels, info.dtype) == \
                ("separated", want.shape[2], want.dtype.name)
            got = PageReader(tf, tf.pages[0], str(path), 0).read(Rect(17, 23, 250, 400))
        np.testing.assert_array_equal(got, want[17:250, 23:400])


@pytest.mark.parametrize(("name", "words"), [
    ("jpeg", ("JPEG-compressed CMYK", "lossless")),
    ("inks2", ("InkSet 2", "CMYK (InkSet 1, 4 inks) only")),
    ("float", ("CMYK with float32 samples is not supported", "8 and 16-bit unsigned")),
])
def test_other_separations_are_refused_saying_why(files, name, words):
    path = files[name]
    with tifffile.TiffFile(path) as tf, pytest.raises(UnsupportedTiffError) as err:
        page_info(tf.pages[0], str(path), 0)
    for word in (str(path), "page 0", *words):
        assert word in str(err.value)


@pytest.fixture(scope="module")
def run(files, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One `tiffpipe run` of every job below, its contact sheet written; what the sheet's
    thumbnails were drawn as is recorded (the real drawing runs: a spy, not a stand-in)."""
    from pipeline import contact_sheet, preview

    shown: list[tuple[int, str]] = []

    def spy(pixels, dtype, extrasamples, photometric=""):
        shown.append((pixels.shape[2], photometric))
        return drawn(pixels, dtype, extrasamples, photometric)

    drawn = preview.to_display
    root = tmp_path_factory.mktemp("cmyk-run")
    blur = [{"op": "gaussian_blur", "sigma": 2.0}]
    jobs = {
        "blur8": {"input": files["u8"], "ops": blur},
        "tiles16": {"input": files["u16a"], "ops": blur, "fuse": False, "tile": 128,
                    "output_options": {"tile": 64}},
        "invert8": {"input": files["u8"], "ops": [{"op": "invert"}],
                    "output_options": {"pyramid": True, "tile": 64}},
        "to_gray": {"input": files["u8"], "ops": [{"op": "to_gray"}]},
        "canny": {"input": files["u8"], "ops": [{"op": "canny", "low": 50, "high": 150}]},
        "jpeg_out": {"input": files["u8"], "output_options": {"compression": "jpeg"}},
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {**{k: str(v) if isinstance(v, Path) else v for k, v in job.items()},
         "output": str(root / f"{name}.tif")} for name, job in jobs.items()]}))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(contact_sheet, "to_display", spy)
        mp.setattr(preview, "to_display", spy)
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet"])
    report = json.loads((root / "m.report.json").read_text())
    return {"code": code, "err": err.getvalue(), "root": root, "shown": shown,
            "jobs": dict(zip(jobs, report["jobs"], strict=True))}


@pytest.mark.parametrize(("name", "source", "op"), [
    ("blur8", "u8", lambda px: cv2.GaussianBlur(px, (0, 0), 2.0)),
    ("tiles16", "u16a", lambda px: cv2.GaussianBlur(px, (0, 0), 2.0)),
    ("invert8", "u8", lambda px: np.iinfo(px.dtype).max - px),
])
def test_a_cmyk_job_writes_cmyk(run, files, name, source, op):
    """Each band processed as OpenCV processes the whole page; the output SEPARATED with
    InkSet CMYK, its extra samples, the CMYK profile and the resolution carried; pyramid
    levels CMYK too."""
    job = run["jobs"][name]
    assert job["status"] == "SUCCEEDED", job
    want = op(tifffile.imread(files[source]))
    with tifffile.TiffFile(run["root"] / f"{name}.tif") as tf:
        page = tf.pages[0]
        np.testing.assert_array_equal(page.asarray(), want)
        assert page.photometric == tifffile.PHOTOMETRIC.SEPARATED
        assert page.tags.valueof(332) == 1
        with tifffile.TiffFile(files[source]) as src:
            assert page.extrasamples == src.pages[0].extrasamples
            assert page.iccprofile == src.pages[0].iccprofile
        for level in page.pages if name == "invert8" else []:
            assert level.photometric == tifffile.PHOTOMETRIC.SEPARATED and level.shape[2] == 4
    if name == "invert8":
        assert len(page.pages) >= 2  # (the test asks for a pyramid)


@pytest.mark.parametrize(("name", "words"), [
    ("to_gray", ("to_gray needs gray or RGB, the page is CMYK", "convert the file to RGB")),
    ("canny", ("canny needs gray or RGB, the page is CMYK",)),
    ("jpeg_out", ("jpeg output needs 1 or 3 bands", "has 4", "gray or RGB only",
                  "(a CMYK page: choose zstd")),
])
def test_what_cmyk_cannot_take_is_refused_before_any_work(run, name, words):
    job = run["jobs"][name]
    assert job["status"] == "FAILED" and job["error"]["type"] == "OperationError", job
    for word in ("page 0", *words):
        assert word in job["error"]["message"]
    assert "alpha" not in job["error"]["message"]  # four inks, not RGB and alpha
    assert not (run["root"] / f"{name}.tif").exists()


def test_previews_show_the_inks_on_white_paper(files):
    """Pure inks as the screen's cyan, magenta, yellow and black; a page's preview is the
    area average of its inks so shown, whatever its depth."""
    pure = np.array([[[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255],
                      [0, 0, 0, 0], [128, 0, 0, 128]]], np.uint8)
    assert cmyk_rgb(pure, np.dtype(np.uint8)).tolist() == [[
        [0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 0, 0], [255, 255, 255],
        [63, 127, 127]]]
    for name in ("u8", "u16a"):
        got = thumbnail(str(files[name]), 0, size=W)  # the page's own size: no averaging
        source = tifffile.imread(files[name])
        np.testing.assert_array_equal(np.asarray(got.image),
                                      cmyk_rgb(source, source.dtype))


def test_the_contact_sheet_shows_cmyk_pages_as_cmyk(run):
    """Every CMYK thumbnail of the sheet, input and output, summed by the steps or read from
    a file, was drawn as CMYK (4 inks, or 4 and alpha); the gray ones (none here) as gray."""
    assert run["code"] == 1  # the refused jobs
    assert (run["root"] / "m.report.contact.png").stat().st_size > 0
    shown = run["shown"]
    # the 2 input pages (one thumbnail a page, however many jobs read it) and the outputs of
    # the 3 jobs that succeeded
    assert len(shown) == 5 and {channels for channels, _ in shown} == {4, 5}
    assert all(photometric == "separated" for _, photometric in shown), shown


def test_the_ops_that_read_colours_say_so_in_the_registry():
    """The ops that read bands as gray or RGB declare it (Op.colour), and a chain on a CMYK
    page is refused at each of them, not at the ops that take any bands."""
    from pipeline.core.ops import OPS, chain_from_json, chain_problems

    assert sorted(name for name, op in OPS.items() if op.colour) == [
        "canny", "normalized_difference", "select_bands", "to_gray"]
    chain = chain_from_json([{"op": "gaussian_blur", "sigma": 1}, {"op": "to_gray"}])
    problems = chain_problems(chain, np.dtype(np.uint8), 4, "separated")
    assert len(problems) == 1 and problems[0].startswith("ops[1] (to_gray): to_gray needs")
    assert chain_problems(chain, np.dtype(np.uint8), 4, "rgb") == []
