"""ProcessJob: a fused job of one unit runs as one task, its unit and then its merge
(pipeline/steps/single.py), instead of the ProcessUnits Map and the Merge task. The output
must be byte-identical to the Map's; a small output is composed from memory, leaving no
segment in the work location (unless the run keeps its work); a failure publishes nothing.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from test_exactness import make_image, write_tiff

from pipeline.adapters import segments
from pipeline.core import plan as plan_mod
from pipeline.core.constants import KEEP_SEGMENTS_ENV
from pipeline.runner import run_local

pytestmark = pytest.mark.timeout(300)

G = {"op": "gaussian_blur", "sigma": 1.5}
_UUID = re.compile(rb"urn:uuid:[0-9a-f-]{36}")  # OME-XML's, new in every write
#: jobs of one page each (one unit), with what outputs differ in
JOBS: dict[str, dict[str, Any]] = {
    "deflate": {"input": "rgb.tif", "ops": [G], "output_options": {"compression": "deflate"}},
    "jpeg": {"input": "rgb.tif", "ops": [G], "output_options": {"compression": "jpeg",
                                                                 "quality": 85}},
    "zstd16": {"input": "gray16.tif", "ops": [{"op": "median_blur", "ksize": 3}]},
    "rgba_lzw": {"input": "rgba.tif", "ops": [{"op": "invert"}],
                 "output_options": {"compression": "lzw"}},
    "pyramid": {"input": "rgb.tif", "ops": [G], "output_options": {"pyramid": True}},
    "ome": {"input": "gray16.tif", "output_options": {"ome": True}},
    "downsample": {"input": "rgb.tif", "ops": [{"op": "downsample", "factor": 2}]},
}


def _inputs(folder: Path) -> None:
    write_tiff(folder / "rgb.tif", [make_image(1, 700, 650, 3, "uint8")], tiled=True)
    with tifffile.TiffWriter(folder / "gray16.tif") as tw:
        tw.write(make_image(2, 500, 333, 1, "uint16"), tile=(64, 64), compression="zlib",
                 resolution=((300, 1), (300, 1)), resolutionunit=2,
                 description="page zero", metadata=None)
    tifffile.imwrite(folder / "rgba.tif", make_image(3, 300, 420, 4, "uint8"),
                     photometric="rgb", extrasamples=[2], tile=(128, 128))


def _run(folder: Path, name: str, jobs: dict[str, dict[str, Any]] | None = None,
         **kwargs: Any) -> tuple[dict[str, bytes], list[str], Any]:
    """Run ``jobs`` (default: every job of JOBS) into ``folder/name/``; the outputs' bytes
    and the actions run."""
    jobs = JOBS if jobs is None else jobs
    out = folder / name
    (folder / f"{name}.json").write_text(json.dumps({
        "defaults": {"tile": 256, "output_options": {"tile": 128}},
        "jobs": [{**job, "output": str(out / f"{j}.tif")} for j, job in jobs.items()]}))
    actions: list[str] = []
    lock = threading.Lock()

    def listener(function: str, event: dict[str, Any], ok: bool, payload: Any) -> None:
        with lock:
            actions.append(event["action"])

    result = run_local(str(folder / f"{name}.json"), 1, listener=listener, **kwargs)
    assert result.ok, (result.error, result.report)
    return ({j: _UUID.sub(b"uuid", (out / f"{j}.tif").read_bytes()) for j in jobs}, actions,
            result)


def test_a_job_of_one_unit_is_one_task_with_the_maps_output(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """Every job here is one page in one unit: one process_job each (no process_unit, no
    merge); each output byte for byte what the ProcessUnits Map and Merge write, whether
    its segment was held in memory (the default for these sizes) or stored."""
    _inputs(tmp_path)
    one, actions, _ = _run(tmp_path, "single")
    assert actions.count("process_job") == len(JOBS)
    assert not {"process_unit", "merge", "split", "process"} & set(actions)
    monkeypatch.setenv(KEEP_SEGMENTS_ENV, "1")
    stored, actions, _ = _run(tmp_path, "stored")
    assert actions.count("process_job") == len(JOBS)
    monkeypatch.delenv(KEEP_SEGMENTS_ENV)
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_JOBS", False)  # one worker: all in here
    mapped, actions, _ = _run(tmp_path, "map")
    assert actions.count("process_unit") == actions.count("merge") == len(JOBS)
    assert "process_job" not in actions
    for job in JOBS:
        assert one[job] == mapped[job], job
        assert stored[job] == mapped[job], job
    with tifffile.TiffFile(tmp_path / "single" / "pyramid.tif") as tf:
        assert len(tf.series[0].levels) > 1  # its units' levels, through the stored path


def test_a_held_job_writes_no_segment_unless_the_work_is_kept(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """A small ProcessJob leaves nothing in the work location (its segment stayed in
    memory, as did its plan and result: pipeline/steps/held_work.py; the pyramid job's units
    store their segments); ``--keep-work`` (``keep_work``) stores every segment, for the
    run only."""
    _inputs(tmp_path)
    monkeypatch.setenv(KEEP_SEGMENTS_ENV, "0")  # kept work, segments held
    _, _, result = _run(tmp_path, "held", keep_work=True)
    jobs = Path(result.work) / "jobs"
    for n, job in enumerate(JOBS):
        folder = jobs / f"{n:05d}"
        names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        if job == "pyramid":
            assert "out-0000-u000000.seg" in names and "plan.json" not in names
        else:
            assert names == [], (job, names)
    monkeypatch.delenv(KEEP_SEGMENTS_ENV)
    _, _, result = _run(tmp_path, "kept", keep_work=True)
    assert KEEP_SEGMENTS_ENV not in os.environ  # set for the run only
    for n in range(len(JOBS)):
        names = {p.name for p in (Path(result.work) / "jobs" / f"{n:05d}").iterdir()}
        assert {"out-0000-u000000.seg", "out-0000-u000000.json"} <= names
    assert segments._held == {}


def test_a_failed_process_job_publishes_nothing_and_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A ProcessJob whose op fails fails its own job with the op's error (no Map between:
    the task's error is the job's); its output is not written, no temporary file is left
    beside it, nothing stays held; the job beside it succeeds."""
    folder = tmp_path / "userops"
    folder.mkdir()
    (folder / "tiffpipe_failing_op.py").write_text(
        "def fail(tile):\n    raise ValueError('this op refuses every tile')\n")
    page = make_image(4, 300, 280, 1, "uint8")
    write_tiff(tmp_path / "in.tif", [page], tiled=True)
    out = tmp_path / "out"
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "out/failed.tif",
         "ops": [{"op": "custom", "function": "tiffpipe_failing_op:fail"}]},
        {"input": "in.tif", "output": "out/blurred.tif", "ops": [G]}]}))
    monkeypatch.syspath_prepend(str(folder))  # workers get the parent's sys.path
    result = run_local(str(tmp_path / "m.json"), 2)
    assert result.status == "SUCCEEDED" and result.report is not None
    failed, blurred = result.report["jobs"]
    assert failed["status"] == "FAILED", failed
    assert "this op refuses every tile" in failed["error"]["message"]
    assert blurred["status"] == "SUCCEEDED"
    assert sorted(p.name for p in out.iterdir()) == ["blurred.tif"]
    assert segments._held == {}
    blurred = tifffile.imread(out / "blurred.tif")
    assert blurred.dtype == page.dtype and blurred.shape == (300, 280)
    assert np.array_equal(blurred, cv2.GaussianBlur(page, (0, 0), G["sigma"]))


def test_the_unit_takes_the_input_plan_job_opened(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """PlanJob hands its open input over to the job's unit when that runs in the same
    process (another thread): each job's input is opened, and its first IFD parsed, once,
    not twice; what is still handed over is closed when the run ends. The outputs are the
    same (the unit reads the page the plan names)."""
    from pipeline.adapters import kept_files, tiff_read

    _inputs(tmp_path)
    opened: list[str] = []
    real = tiff_read._parsed  # every open of a TIFF parses its header and first IFD there

    def counting(fh: Any, url: str) -> Any:
        opened.append(Path(url).name)
        return real(fh, url)

    monkeypatch.setattr(tiff_read, "_parsed", counting)
    jobs = {j: JOBS[j] for j in ("deflate", "zstd16", "rgba_lzw")}
    outputs, actions, _ = _run(tmp_path, "handed", jobs)
    assert actions.count("process_job") == len(jobs)
    assert sorted(opened) == sorted(job["input"] for job in jobs.values())  # once a job
    assert kept_files.count() == 0
    opened.clear()
    monkeypatch.setattr(kept_files, "HANDED_MAX", 0)  # nothing handed over: opened twice
    again, _, _ = _run(tmp_path, "again", jobs)
    assert len(opened) == 2 * len(jobs)
    assert again == outputs


def test_a_small_job_of_several_pages_is_one_task_its_units_side_by_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fused job of several units (pages) whose pages hold at most plan.SINGLE_TASK_PIXELS
    is one ProcessJob too: its units run side by side in the task's threads, then its
    merge; the output is byte for byte the Map's, composed from memory (nothing but the
    plan and the result in the work location). A unit that fails fails the job: nothing
    is published, nothing stays held."""
    from pipeline.steps import single

    pages = [make_image(5 + k, 300 + 40 * k, 280, 3, "uint8") for k in range(4)]
    write_tiff(tmp_path / "pages.tif", pages, tiled=True)
    jobs = {"pages": {"input": "pages.tif", "ops": [G],
                      "output_options": {"compression": "deflate"}}}
    real = single.process_unit
    lock = threading.Lock()
    running: list[int] = []
    most = [0]
    meet = threading.Barrier(2, timeout=30)  # units 0 and 1 wait for each other

    def watched(event: Any, shared: Any = None, **kwargs: Any) -> Any:
        with lock:
            running.append(event.unit)
            most[0] = max(most[0], len(running))
        try:
            if event.unit < 2:
                meet.wait()  # broken (the job fails) unless both run at once
            return real(event, shared, **kwargs)
        finally:
            with lock:
                running.remove(event.unit)

    monkeypatch.setattr(single, "process_unit", watched)
    monkeypatch.setattr(single, "tile_threads", lambda: 2)  # two units at a time, any machine
    monkeypatch.setenv(KEEP_SEGMENTS_ENV, "0")  # kept work, segments held
    one, actions, result = _run(tmp_path, "single", jobs, keep_work=True)
    assert actions.count("process_job") == 1
    assert not {"process_unit", "merge"} & set(actions)
    assert most[0] == 2
    assert not (Path(result.work) / "jobs" / "00000").exists()  # its work all held
    monkeypatch.delenv(KEEP_SEGMENTS_ENV)
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 0)  # the Map of four units
    mapped, actions, _ = _run(tmp_path, "map", jobs)
    assert actions.count("process_unit") == len(pages) and "process_job" not in actions
    assert one == mapped
    with tifffile.TiffFile(tmp_path / "single" / "pages.tif") as tf:
        assert [p.shape[:2] for p in tf.pages] == [p.shape[:2] for p in pages]
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 16_000_000)

    def failing(event: Any, shared: Any = None, **kwargs: Any) -> Any:
        if event.unit == 2:
            raise ValueError("unit 2 refuses")
        return real(event, shared, **kwargs)

    monkeypatch.setattr(single, "process_unit", failing)
    out = tmp_path / "failed"
    (tmp_path / "failed.json").write_text(json.dumps({"jobs": [
        {**jobs["pages"], "output": str(out / "pages.tif")}]}))
    failed = run_local(str(tmp_path / "failed.json"), 1)
    assert failed.report is not None and failed.report["jobs"][0]["status"] == "FAILED"
    assert "unit 2 refuses" in failed.report["jobs"][0]["error"]["message"]
    assert not out.exists() or list(out.iterdir()) == []
    assert segments._held == {}
