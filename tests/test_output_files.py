"""What a run leaves beside and around its outputs: the temporary files of a merge whose
worker was killed (removed before the retry, and by RecordFailure), outputs and reports
inside the work location (refused), names too long for a temporary name, and writes the
file system refuses (not retried)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_exactness import make_image, write_tiff

from pipeline.adapters import storage
from pipeline.adapters.storage import write_json
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import plan as plan_mod
from pipeline.core.constants import RUN_TAG_ENV
from pipeline.core.events import FailureEvent, UnitEvent
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.engine.workers import WorkerPool
from pipeline.steps import layout
from pipeline.steps.common import forget_plans
from pipeline.steps.planning import write_run
from pipeline.steps.process import process_unit
from pipeline.steps.report import record_failure

RUN = "20261206-060647-cb375c"


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _planned_job(tmp_path: Path) -> tuple[str, JobSpec, Any]:
    """A fused job of one page, planned and its units processed: what its merge reads."""
    src = tmp_path / "in.tif"
    write_tiff(src, [make_image(1, 96, 128, 3, "uint8")], tiled=True)
    work = str(tmp_path / "work")
    spec = JobSpec(input=str(src), output=str(tmp_path / "out" / "x.tif"),
                   output_options=OutputOptions(compression="deflate", tile=32),
                   ops=[{"op": "invert"}])
    run_url = write_run(work, [spec], RUN, str(tmp_path / "m.json"), str(tmp_path / "r.json"))
    plan, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None),
                                        layout.job_dir(work, 0), time.time())
    assert problems == [] and plan.fused
    plan_url = layout.plan_file(plan.work)
    write_json(plan_url, plan.to_json())
    forget_plans()
    for i in range(len(plan.units)):
        process_unit(UnitEvent(plan_url, i))
    return run_url, spec, plan


def test_a_merge_killed_mid_write_leaves_no_temporary_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """A worker killed (SIGKILL) while its merge writes the output's temporary file: the
    engine's pool removes this run's temporaries of that output before the task is retried,
    the retry publishes the output, and nothing else is left beside it; another run's
    temporary file of the same output stays. The merge is held mid-write by a segment
    replaced with a FIFO (opened after the temporary file), so the kill lands there."""
    monkeypatch.setenv(RUN_TAG_ENV, RUN)
    _, spec, plan = _planned_job(tmp_path)
    out_dir = Path(spec.output).parent
    out_dir.mkdir()
    other = out_dir / f".x.tif.tiffpipe-20250101-000000-abcdef-{'0' * 32}.tmp"
    other.write_bytes(b"another run's")
    [segment] = [p for p in Path(plan.work).iterdir() if p.suffix == ".seg"]
    kept = segment.read_bytes()
    segment.unlink()
    os.mkfifo(segment)
    pool = WorkerPool(1)
    try:
        ok, payload = pool.invoke("split", {"action": "no_such_action"})
        assert not ok and payload["errorType"] == "EventError"
        [pid] = pool.peaks_kb
        result: list[tuple[bool, dict[str, Any]]] = []
        merging = threading.Thread(target=lambda: result.append(
            pool.invoke("merge", {"action": "merge", "plan": layout.plan_file(plan.work)})))
        merging.start()
        for _ in range(600):  # until the merge's temporary file is there (it then blocks)
            if len(_temps(out_dir)) == 2:
                break
            time.sleep(0.05)
        [mine] = [t for t in _temps(out_dir) if RUN in t]
        assert not result
        os.kill(pid, signal.SIGKILL)
        merging.join(60)
        [(ok, payload)] = result
        assert not ok and payload["errorType"] == "WorkerCrashedError"
        assert _temps(out_dir) == [other.name], "the killed merge's temporary file stayed"
        segment.unlink()
        segment.write_bytes(kept)
        ok, payload = pool.invoke("merge", {"action": "merge",
                                            "plan": layout.plan_file(plan.work)})
        assert ok, payload
        assert sorted(p.name for p in out_dir.iterdir()) == sorted(["x.tif", other.name])
        assert mine not in os.listdir(out_dir)
    finally:
        with contextlib.suppress(OSError):  # if the kill did not happen, unblock the worker
            os.close(os.open(segment, os.O_WRONLY | os.O_NONBLOCK))
        pool.close()


def test_record_failure_removes_this_runs_temporary_files(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """A job that failed with its merge killed (WorkerCrashedError, its retries spent):
    RecordFailure removes the temporary files this run left beside its output, not another
    run's, and never the output's folder's other files."""
    monkeypatch.setenv(RUN_TAG_ENV, RUN)
    run_url, spec, _ = _planned_job(tmp_path)
    out_dir = Path(spec.output).parent
    out_dir.mkdir()
    mine = [out_dir / f".x.tif.tiffpipe-{RUN}-{os.urandom(16).hex()}.tmp" for _ in range(2)]
    other = out_dir / f".x.tif.tiffpipe-{RUN}-2-{'0' * 32}.tmp"  # run <RUN>-2, not this one
    for path in [*mine, other]:
        path.write_bytes(b"partial")
    (out_dir / "y.tif").write_bytes(b"someone's")
    reply = record_failure(FailureEvent(run_url, 0, {
        "Error": "WorkerCrashedError", "Cause": "a worker process died while running merge"}))
    assert reply["status"] == "FAILED"
    assert sorted(os.listdir(out_dir)) == sorted([other.name, "y.tif"])
    assert storage.temp_output_paths(spec.output, RUN) == []
