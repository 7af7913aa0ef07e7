"""rotate, flip and crop on the embedded engine: every path of the state machine (ProcessJob,
the ProcessUnits Map, Split -> Stats -> Process -> Merge, Split -> Process with fuse off),
and the commands that check a chain before it runs (validate, validate --inputs, inspect
--ops, estimate). The pixels are compared with OpenCV on the whole page; the tiled path's
exactness in every layout is tests/test_exactness_geometry.py's.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from conftest import read_pages

from pipeline import cli
from pipeline.runner import run_local
from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(300)

G = {"op": "gaussian_blur", "sigma": 1.5}


def _rot(img: np.ndarray, angle: int) -> np.ndarray:
    return cv2.rotate(img, {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
                            270: cv2.ROTATE_90_COUNTERCLOCKWISE}[angle])


def test_each_path_of_the_state_machine_turns_and_crops(tmp_path: Path):
    """Six jobs, each on its branch: a small page (one ProcessJob task), a page of 18 Mpx
    (the ProcessUnits Map of one-column units), a whole-page statistic after the rotation
    (Split, Stats, Process, Merge), fuse off (Split, Process, Merge), a multi-page file
    cropped then flipped, and a turned page with pyramid levels."""
    small = tmp_path / "small.tif"
    write_sample(str(small), [SamplePage(301, 517, 3)], tile=128, compression="deflate")
    big = tmp_path / "big.tif"
    write_sample(str(big), [SamplePage(3001, 6003, 1)], tile=512, compression="zstd")
    pages = tmp_path / "pages.tif"
    write_sample(str(pages), [SamplePage(400, 300, 1, "uint16"), SamplePage(400, 300, 1)],
                 tile=64, compression="lzw")
    crop = {"op": "crop", "x": 10, "y": 21, "width": 250, "height": 260}
    chains: list[tuple[Path, list[dict[str, Any]], dict[str, Any]]] = [
        (small, [{"op": "rotate", "angle": 90}], {}),
        (big, [G, {"op": "rotate", "angle": 270}], {"tile": 512}),
        (small, [{"op": "rotate", "angle": 90}, {"op": "to_gray"}, {"op": "equalize_hist"}], {}),
        (small, [{"op": "flip", "axis": "vertical"}, crop], {"fuse": False}),
        (pages, [crop, {"op": "flip", "axis": "horizontal"}], {}),
        (small, [{"op": "rotate", "angle": 270}],
         {"tile": 128, "output_options": {"pyramid": True, "tile": 64}}),
    ]
    jobs = [{"input": str(src), "output": str(tmp_path / f"out{i}.tif"), "ops": ops, **extra}
            for i, (src, ops, extra) in enumerate(chains)]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    actions: dict[int, set[str]] = {}
    lock = threading.Lock()

    def listener(function: str, event: dict[str, Any], ok: bool, payload: dict[str, Any]):
        assert ok, payload
        if isinstance(job := payload.get("job"), int):
            with lock:
                actions.setdefault(job, set()).add(f"{function}.{event['action']}")

    result = run_local(str(tmp_path / "m.json"), 2, listener=listener)
    assert result.ok, result.error
    assert actions[0] == {"process.plan_job", "process.process_job"}
    assert actions[1] == {"process.plan_job", "process.process_unit", "merge.merge"}
    assert {"split.split", "process.stats", "process.process", "merge.merge"} <= actions[2]
    assert actions[3] == {"process.plan_job", "split.split", "process.process", "merge.merge"}
    rgb, gray = read_pages(small)[0], read_pages(big)[0]
    want = [
        [_rot(rgb, 90)],
        [_rot(cv2.GaussianBlur(gray, (0, 0), 1.5), 270)],
        [cv2.equalizeHist(cv2.cvtColor(_rot(rgb, 90), cv2.COLOR_RGB2GRAY))],
        [cv2.flip(rgb, 0)[21:281, 10:260]],
        [cv2.flip(p[21:281, 10:260], 1) for p in read_pages(pages)],
        [_rot(rgb, 270)],
    ]
    for i, pages_wanted in enumerate(want):
        got = read_pages(tmp_path / f"out{i}.tif")
        assert len(got) == len(pages_wanted)
        for g, w in zip(got, pages_wanted, strict=True):
            assert g.dtype == w.dtype and np.array_equal(g, w), i
    # a turned page's pyramid levels are built by merge, from its output tiles
    with tifffile.TiffFile(tmp_path / "out5.tif") as tf:
        levels = [level.shape[:2] for level in tf.series[0].levels]
        level1 = tf.series[0].levels[1].asarray()
    assert levels == [(517, 301), (259, 151), (130, 76), (65, 38), (33, 19)]
    assert actions[5] == {"process.plan_job", "process.process_job"}
    half = want[5][0][:516, :300].reshape(258, 2, 150, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(level1[:258, :150].astype(np.float64) - half).max() <= 1


def test_a_crop_box_outside_a_page_fails_its_job_naming_the_page(tmp_path: Path):
    src = tmp_path / "scan.tif"
    write_sample(str(src), [SamplePage(200, 300, 1), SamplePage(100, 300, 1)], tile=64)
    ok = tmp_path / "ok.tif"
    write_sample(str(ok), [SamplePage(200, 300, 1)], tile=64)
    crop = [{"op": "crop", "x": 0, "y": 50, "width": 300, "height": 100}]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(src), "output": str(tmp_path / "a.tif"), "ops": crop},
        {"input": str(ok), "output": str(tmp_path / "b.tif"), "ops": crop}]}))
    result = run_local(str(tmp_path / "m.json"), 1)
    assert not result.ok
    failed, done = result.jobs
    assert failed["status"] == "FAILED" and done["status"] == "SUCCEEDED"
    error = failed["error"]
    assert error["type"] == "OperationError" and error["message"].startswith(f"{src}: ")
    assert "page 1: ops[0] (crop): the box does not fit the page of 300 x 100 pixels" \
        in error["message"]
    # page 0 holds the box: the message says how to run the pages apart
    assert error["message"].endswith(
        'or give this job "pages" with the pages that hold the box (0) and page 1 a job '
        'of its own')
    assert not (tmp_path / "a.tif").exists()  # nothing half-written
    assert np.array_equal(read_pages(tmp_path / "b.tif")[0], read_pages(ok)[0][50:150])
    # validate --inputs tells the same before anything runs
    assert cli.main(["validate", str(tmp_path / "m.json"), "--inputs"]) == 2


def test_validate_names_an_op_out_of_place(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "a.tif", "output": "o.tif",
         "ops": [{"op": "downsample", "factor": 2}, {"op": "rotate", "angle": 90}]}]}))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "jobs[0].ops[1] (rotate): comes after ops[0] (downsample); put it before " \
        "downsample" in err


def test_inspect_and_estimate_see_the_turned_page(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture):
    src = tmp_path / "scan.tif"
    write_sample(str(src), [SamplePage(200, 300, 3)], tile=64)
    chain = json.dumps([{"op": "rotate", "angle": 270}, {"op": "downsample", "factor": 2}])
    assert cli.main(["inspect", str(src), "--ops", chain, "--json"]) == 0
    page = json.loads(capsys.readouterr().out)["files"][0]["pages"][0]
    assert page["ops"] == {"runs": True, "problems": [], "out": {
        "width": 100, "height": 150, "bands": 3, "dtype": "uint8", "one_bit": False,
        "compression": "zstd"}}
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "missing.tif", "output": "o.tif", "ops": [{"op": "rotate", "angle": 90}]}]}))
    assert cli.main(["estimate", str(tmp_path / "m.json"), "--assume-pages",
                     "20000x30000x3", "--json"]) == 0
    job = json.loads(capsys.readouterr().out)["jobs"][0]
    # one unit per tile column of the turned page (1024 px tiles: 30 of them), 3 columns of
    # 10,240 px of it each: the cache budget's (docs/manifest-and-ops.md)
    assert job["fused"] and job["units"] == 30 * 3
    assert job["largest_job"]["bounds"]["units"] < 100  # gigapixels: its units are small


def test_a_palette_page_turned_keeps_its_indices_and_colormap(tmp_path: Path):
    """A chain that only moves pixels keeps a palette page's indices and colormap (as an
    empty chain does), turned; an op that mixes values makes it RGB first
    (tests/test_resample.py: a downsample that picks a sample of each block does not)."""
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 256, (150, 97), dtype=np.uint8)
    colormap = rng.integers(0, 65536, (3, 256), dtype=np.uint16)
    src = tmp_path / "palette.tif"
    tifffile.imwrite(src, indices, photometric="palette", colormap=colormap, tile=(32, 32))
    ops = [{"op": "rotate", "angle": 90}, {"op": "crop", "x": 5, "y": 7, "width": 120,
                                            "height": 80}]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(src), "output": str(tmp_path / "out.tif"), "ops": ops}]}))
    result = run_local(str(tmp_path / "m.json"), 1)
    assert result.ok, result.error
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(page.colormap, colormap)
        assert np.array_equal(page.asarray(), _rot(indices, 90)[7:87, 5:125])


def _cut_scan(path: Path, pages: int = 1) -> tuple[list[np.ndarray], int, list[int]]:
    """A tiled scan of 256 x 256 pixels a page (4 x 4 tiles of 64), its tiles in row-major
    order after its header, cut inside the last page's tile 14 (row 3, column 2): tiles 14
    and 15 of that page are lost, rows 192-255 from column 128 on. Its pages as written
    (the intact original's), the file's size after the cut, and where each lost tile ends."""
    rng = np.random.default_rng(7)
    original = [rng.integers(0, 255, (256, 256), np.uint8) for _ in range(pages)]
    with tifffile.TiffWriter(path) as w:
        for page in original:
            w.write(page, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        last = tf.pages[-1]
        assert last.offset < min(last.dataoffsets)  # its header before its pixels
        cut = int(last.dataoffsets[14]) + 10
        ends = [int(o) + int(c) for o, c in zip(last.dataoffsets, last.databytecounts,
                                                strict=True)]
    path.write_bytes(path.read_bytes()[:cut])
    return original, cut, ends[14:]


def test_a_crop_of_the_intact_part_of_a_scan_cut_short_runs(tmp_path: Path):
    """A file cut short (its copy stopped part way) was refused at plan whatever the job
    read of it; a job that reads only whole segments now runs, so the intact part of a
    damaged scan can be cropped out, and equals the same crop of the intact original. Where
    a job reads the lost part it is refused as before, naming the page and the segment:
    a crop box in it; a crop box of whole tiles whose blur before it reaches the lost
    rows; a box whole on the page turned by the rotate before it, lost on the input."""
    src = tmp_path / "scan.tif"
    [page], size, ends = _cut_scan(src)
    blur = {"op": "gaussian_blur", "sigma": 1.5}

    def crop(x: int, y: int, width: int, height: int) -> dict[str, Any]:
        return {"op": "crop", "x": x, "y": y, "width": width, "height": height}

    chains: list[list[dict[str, Any]]] = [
        [crop(0, 0, 256, 192)],  # tile rows 0-2: whole
        [crop(0, 192, 128, 64)],  # row 3, tiles 12 and 13: whole
        [blur, crop(0, 0, 256, 160)],  # the blur's halo stays above row 192
        [{"op": "rotate", "angle": 180}, crop(128, 128, 128, 128)],  # the input's top left
        [crop(100, 100, 100, 100)],  # reaches tile 14
        [blur, crop(0, 0, 256, 180)],  # the box whole, the blur's halo reaches tile 14
        [{"op": "rotate", "angle": 180}, crop(0, 0, 128, 64)],  # the input's bottom right
        [],  # the whole page
    ]
    jobs = [{"input": str(src), "output": str(tmp_path / f"out{i}.tif"), "ops": ops}
            for i, ops in enumerate(chains)]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    result = run_local(str(tmp_path / "m.json"), 2)
    assert [j["status"] for j in result.jobs] == ["SUCCEEDED"] * 4 + ["FAILED"] * 4
    want = [page[:192], page[192:, :128], cv2.GaussianBlur(page, (0, 0), 1.5)[:160],
            _rot(page, 180)[128:, 128:]]
    for i, expected in enumerate(want):
        [got] = read_pages(tmp_path / f"out{i}.tif")
        assert np.array_equal(got, expected), i
    message = (f"{src}: page 0: segment 14 ends at byte {ends[0]} but the file has {size} "
               "bytes; the file is truncated: copy it again from its source or export it "
               "again, then check that tifffile.imread or tiffinfo -D reads it whole")
    for job in result.jobs[4:]:
        assert (job["error"]["type"], job["error"]["step"]) == ("CorruptTiffError", "PlanJob")
        assert job["error"]["message"] == message, job
        assert not Path(job["output"]).exists()


def test_pages_that_leave_out_the_page_cut_short_run(tmp_path: Path):
    """A job whose pages leave out the page cut short runs (its output that page's pixels);
    one that lists it, or leaves pages out (every page), is refused at plan."""
    src = tmp_path / "scan.tif"
    original, _, _ = _cut_scan(src, pages=2)
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(src), "output": str(tmp_path / "first.tif"), "pages": [0]},
        {"input": str(src), "output": str(tmp_path / "second.tif"), "pages": [1]},
        {"input": str(src), "output": str(tmp_path / "all.tif")}]}))
    result = run_local(str(tmp_path / "m.json"), 2)
    assert [j["status"] for j in result.jobs] == ["SUCCEEDED", "FAILED", "FAILED"]
    assert np.array_equal(read_pages(tmp_path / "first.tif")[0], original[0])
    for job in result.jobs[1:]:
        assert "page 1: segment 14 ends at byte" in job["error"]["message"], job
