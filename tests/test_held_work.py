"""A local run's plans and results held in the engine's memory (pipeline/steps/held_work.py):
a job whose tasks all run in the engine's process writes no plan.json, no result.json and
no job folder; a job with a task in a worker gets its plan written first; a run that keeps
its work writes them all; the report and the failed jobs' records are the same either way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from test_exactness import make_image, write_tiff

from pipeline.adapters import storage
from pipeline.core.constants import KEEP_SEGMENTS_ENV
from pipeline.runner import run_local
from pipeline.steps import held_work, layout

pytestmark = pytest.mark.timeout(300)

G = {"op": "gaussian_blur", "sigma": 1.5}


def _inputs(folder: Path) -> None:
    """Two good one-page files and one whose first tile's deflate stream is damaged: its
    IFDs read well (PlanJob plans it), its pixels do not (ProcessJob fails)."""
    write_tiff(folder / "a.tif", [make_image(1, 300, 260, 3, "uint8")], tiled=True)
    write_tiff(folder / "b.tif", [make_image(2, 200, 330, 1, "uint8")], tiled=True)
    tifffile.imwrite(folder / "bad.tif", make_image(3, 256, 256, 3, "uint8"),
                     tile=(128, 128), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(folder / "bad.tif") as tf:
        offset, count = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    with open(folder / "bad.tif", "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(range(256)) * (count // 256) + b"\xff" * (count % 256))


def _manifest(folder: Path) -> str:
    jobs = [{"input": f"{name}.tif", "output": f"out/{name}.tif", "ops": [G]}
            for name in ("a", "bad", "b")]
    defaults = {"tile": 256, "output_options": {"tile": 128}}
    (folder / "m.json").write_text(json.dumps({"defaults": defaults, "jobs": jobs}))
    return str(folder / "m.json")


def _writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the run writes through the storage adapter (the writes still happen)."""
    written: list[str] = []
    real = storage.write_bytes

    def write_bytes(url: str, data: bytes) -> None:
        written.append(url)
        real(url, data)

    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    return written


def _check_report(result: Any, started: float) -> None:
    jobs = result.report["jobs"]
    assert [j["status"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert jobs[1]["error"]["type"] == "CorruptTiffError", jobs[1]["error"]
    assert "bad.tif" in jobs[1]["error"]["message"]
    for job in jobs:  # PlanJob's start, from the plan held or written
        assert started <= job["started_at"] <= job["finished_at"] <= time.time()
        assert job["seconds"] == round(job["finished_at"] - job["started_at"], 3)


def test_a_run_holds_the_plans_and_results_of_jobs_its_engine_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No plan.json, result.json or job folder is written; the report is whole (a failed
    job's record keeps its plan's start) and the outputs are the blur of the inputs."""
    monkeypatch.delenv(KEEP_SEGMENTS_ENV, raising=False)
    _inputs(tmp_path)
    written = _writes(monkeypatch)
    started = time.time()
    result = run_local(_manifest(tmp_path), 1, work=str(tmp_path / "w"))
    _check_report(result, started)
    assert not [u for u in written if u.endswith(("/plan.json", "/result.json"))], written
    # the good jobs' folders were never made (the bad job's holds its unit's error record)
    assert not [u for u in written if "/jobs/00000/" in u or "/jobs/00002/" in u], written
    assert [u for u in written if "/jobs/00001/" in u]
    assert not (tmp_path / "out" / "bad.tif").exists()
    import cv2

    for name in ("a", "b"):
        page = tifffile.imread(tmp_path / f"{name}.tif")
        want = cv2.GaussianBlur(page, (0, 0), 1.5)
        assert np.array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tif"), want)
    # let go at the run's end
    assert not held_work._plans and not held_work._results and not held_work._runs


def test_a_run_that_keeps_its_work_writes_every_plan_and_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``--keep-work`` (``TIFFPIPE_KEEP_SEGMENTS=1`` for the run): each job's plan.json and
    result.json are in the work location, the results the report holds (the report adds a
    failed job's ``fault``: pipeline.errors.fault_of)."""
    monkeypatch.delenv(KEEP_SEGMENTS_ENV, raising=False)
    _inputs(tmp_path)
    started = time.time()
    result = run_local(_manifest(tmp_path), 1, work=str(tmp_path / "w"), keep_work=True)
    _check_report(result, started)
    for job, reported in enumerate(result.report["jobs"]):
        job_work = layout.job_dir(str(tmp_path / "w"), job)
        assert json.loads(Path(layout.plan_file(job_work)).read_text())["job"] == job
        if "error" in reported:
            reported["error"].pop("fault")
        assert json.loads(Path(layout.result_file(job_work)).read_text()) == reported


def test_a_held_plan_is_written_before_a_worker_needs_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """``write_plan`` (the engine, before it sends a task to a worker) writes the held plan
    and lets it go; ``load_plan`` finds a plan held or written; the job's end releases a
    plan still held; leaving :func:`held_work.holding` drops what is held."""
    from pipeline.core.events import JobEvent, RunEvent
    from pipeline.steps import common
    from pipeline.steps.planning import plan_run
    from pipeline.steps.stats import plan_job

    monkeypatch.delenv(KEEP_SEGMENTS_ENV, raising=False)
    _inputs(tmp_path)
    run = plan_run(RunEvent(manifest=_manifest(tmp_path), work=str(tmp_path / "w"),
                            run_id="r"))["run"]
    with held_work.holding():
        urls = [plan_job(JobEvent(run=run, job=job))["plan"] for job in range(3)]
        assert not any(Path(u).exists() for u in urls)
        common.forget_plans()  # as a process whose cache no longer has them
        plans = [common.load_plan(u) for u in urls]
        assert [p.job for p in plans] == [0, 1, 2]
        held_work.write_plan(urls[0])
        assert json.loads(Path(urls[0]).read_text()) == plans[0].to_json()
        assert held_work.held_plan(urls[0]) is None
        held_work.write_plan(urls[0])  # written once: nothing held is left to write
        held_work.release(urls[1])
        assert held_work.held_plan(urls[1]) is None and not Path(urls[1]).exists()
        assert held_work.held_plan(urls[2]) is plans[2]
    assert held_work.held_plan(urls[2]) is None and not Path(urls[2]).exists()


def test_results_are_files_outside_a_run_and_held_within_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Outside :func:`held_work.holding` (a Lambda, a worker process), and within it when
    every work file is kept, a result is a file, which ``load_result`` reads; else it is
    held, not written."""
    result = {"job": 0, "status": "SUCCEEDED"}
    held_work.save_result(str(tmp_path / "one.json"), result)
    monkeypatch.setenv(KEEP_SEGMENTS_ENV, "1")
    with held_work.holding():
        held_work.save_result(str(tmp_path / "kept.json"), result)
    for name in ("one", "kept"):
        assert json.loads((tmp_path / f"{name}.json").read_text()) == result
        assert held_work.load_result(str(tmp_path / f"{name}.json")) == result
    monkeypatch.delenv(KEEP_SEGMENTS_ENV)
    with held_work.holding():
        held_work.save_result(str(tmp_path / "two.json"), result)
        assert held_work.load_result(str(tmp_path / "two.json")) == result
        assert not (tmp_path / "two.json").exists()


def test_a_plan_the_contact_sheet_reads_is_written(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    """A job whose steps sum thumbnails for the contact sheet (pages of 16 times its box and
    more) has its plan written, which the sheet reads after the run; a small job's plan is
    held as ever."""
    monkeypatch.delenv(KEEP_SEGMENTS_ENV, raising=False)
    write_tiff(tmp_path / "big.tif", [make_image(9, 1100, 1040, 3, "uint8")], tiled=True,
               tile=(256, 256))
    write_tiff(tmp_path / "small.tif", [make_image(10, 300, 260, 3, "uint8")], tiled=True)
    jobs = [{"input": f"{name}.tif", "output": f"out/{name}.tif", "ops": [G],
             "output_options": {"compression": "deflate"}} for name in ("big", "small")]
    (tmp_path / "m.json").write_text(json.dumps(
        {"defaults": {"tile": 256, "output_options": {"tile": 128}}, "jobs": jobs}))
    written = _writes(monkeypatch)
    result = run_local(str(tmp_path / "m.json"), 1, work=str(tmp_path / "w"),
                       contact_sheet=True)
    assert result.ok and result.contact_sheet and Path(result.contact_sheet).exists()
    plans = [u for u in written if u.endswith("/plan.json")]
    assert plans == [layout.plan_file(layout.job_dir(str(tmp_path / "w"), 0))]
    assert [u for u in written if u.endswith(".part") and "/jobs/00000/" in u]
