"""What a run leaves beside and around its outputs: the temporary files of a merge whose
worker was killed (removed before the retry, and by RecordFailure), outputs and reports
inside the work location (refused), names too long for a temporary name, and writes the
file system refuses (not retried)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import small_file_system
from test_exactness import make_image, write_tiff

from pipeline import cli
from pipeline.adapters import storage
from pipeline.adapters.storage import inside, write_json
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import plan as plan_mod
from pipeline.core.constants import RUN_TAG_ENV, WORK_ENV
from pipeline.core.events import FailureEvent, RunEvent, UnitEvent
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.engine.workers import WorkerPool
from pipeline.errors import OutputNotWritableError, WorkLocationError
from pipeline.runner import run_local
from pipeline.steps import layout
from pipeline.steps.common import PUBLISHING_ACTIONS, forget_plans
from pipeline.steps.planning import plan_run, write_run
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


# --- outputs inside the work location ---------------------------------------------------


def _manifest(tmp_path: Path, output: str) -> Path:
    write_tiff(tmp_path / "in.tif", [make_image(2, 40, 48, 3, "uint8")], tiled=False)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "out/a.tif", "ops": [{"op": "invert"}]},
        {"input": "in.tif", "output": output, "ops": [{"op": "invert"}]}]}))
    return manifest


@pytest.mark.parametrize("output", ["wo/jobs/00000/x.tif", "wo/x.tif", "link/jobs/x.tif"])
def test_an_output_inside_the_work_location_is_refused(tmp_path: Path, output: str,
                                                       capsys: pytest.CaptureFixture):
    """`tiffpipe run m.json --work wo` with a job writing into wo (under another name too:
    a link to it): refused before anything runs (exit 2), naming the job's field and
    --work; no output is written (the run's work removal took jobs/, and the output
    with it, after the summary said SUCCEEDED)."""
    (tmp_path / "wo").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "wo")
    manifest = _manifest(tmp_path, output)
    assert cli.main(["run", str(manifest), "--work", str(tmp_path / "wo"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "jobs[1].output" in err and "inside the work location" in err, err
    assert "--work" in err and "Traceback" not in err
    assert os.listdir(tmp_path / "wo") == [] and not (tmp_path / "out").exists()
    assert not (tmp_path / "m.report.json").exists()


def test_a_report_inside_the_work_location_is_refused(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    (tmp_path / "wo").mkdir()
    manifest = _manifest(tmp_path, "out/b.tif")
    report = tmp_path / "wo" / "r.json"
    assert cli.main(["run", str(manifest), "--work", str(tmp_path / "wo"), "--report",
                     str(report), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(report) in err and "--report" in err and "--work" in err, err
    assert os.listdir(tmp_path / "wo") == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("scan", [False, True])
def test_plan_run_refuses_outputs_inside_the_work_location(tmp_path: Path, scan: bool):
    """PlanRun checks it too, for every caller (an S3 work prefix, a scan's output folder),
    before any job is planned."""
    if scan:
        doc = {"scan": {"input": "s3://b/in/", "output": "s3://b/work/r1/out/"}}
    else:
        doc = {"jobs": [{"input": "s3://b/in/a.tif", "output": "s3://b/work/r1/jobs/a.tif"}]}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    with pytest.raises(WorkLocationError, match="inside the work location s3://b/work/r1/"):
        plan_run(RunEvent(manifest=str(manifest), work="s3://b/work/r1/", run_id="r1",
                          report=""))
    assert not (tmp_path / "run.json").exists()
    assert not inside("s3://b/work/r10/x.tif", "s3://b/work/r1")
    assert inside("s3://b/work/r1/x.tif", "s3://b/work/r1")


# --- writes the file system refuses -----------------------------------------------------


def test_a_full_output_file_system_fails_the_job_once(tmp_path: Path):
    """An output on a file system too small for it (a real tmpfs: ENOSPC as merge writes):
    the job fails with OutputNotWritableError naming the output and what to do, after one
    attempt (it was a StorageError, retried three times with backoff, the merge redone each
    time), and nothing is left in the output's folder."""
    with small_file_system(tmp_path / "small", "64k") as small:
        rng = np.random.default_rng(3)
        tifffile.imwrite(tmp_path / "in.tif", rng.integers(0, 255, (256, 256, 3), np.uint8),
                         photometric="rgb", tile=(64, 64), metadata=None)
        manifest = tmp_path / "m.json"
        manifest.write_text(json.dumps({"jobs": [
            {"input": "in.tif", "output": str(small / "out.tif"),
             "output_options": {"compression": "deflate"}, "ops": [{"op": "invert"}]}]}))
        publishing: list[str] = []

        def listen(function: str, event: Any, ok: bool, payload: Any) -> None:
            if isinstance(event, dict) and event.get("action") in PUBLISHING_ACTIONS:
                publishing.append(event["action"])

        result = run_local(str(manifest), 1, work=str(tmp_path / "work"), listener=listen)
        [job] = result.report["jobs"]
        assert job["status"] == "FAILED", job  # (it was reported SUCCEEDED, its file short)
        assert job["error"]["type"] == "OutputNotWritableError", job["error"]
        message = job["error"]["message"]
        assert "out.tif" in message and "No space left" in message, message
        assert "free space" in message
        assert len(publishing) == 1, publishing
        assert os.listdir(small) == []


def test_a_read_only_output_file_system_is_not_retried(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    """compose onto a file system that became read-only after the job was planned (EROFS):
    OutputNotWritableError (not retried), not StorageError."""
    from pipeline.adapters.segments import compose
    from pipeline.core.tiff_layout import Literal

    monkeypatch.setenv(RUN_TAG_ENV, RUN)
    with small_file_system(tmp_path / "small", "64k") as small:
        storage.check_writable(str(small / "a.tif"))
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        with pytest.raises(OutputNotWritableError, match="Read-only file system") as info:
            compose([Literal(b"II*\x00" + b"\x00" * 100)], str(small / "a.tif"))
        assert str(small / "a.tif") in str(info.value)


def test_a_full_work_location_is_named_with_work(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    """A work file the work location's file system cannot take (ENOSPC) is a
    WorkLocationError (not retried) naming the file, the work location and --work."""
    with small_file_system(tmp_path / "work", "64k") as work:
        monkeypatch.setenv(WORK_ENV, str(work))
        url = str(work / "jobs" / "00000" / "out-0000-u0.seg")
        with pytest.raises(WorkLocationError) as info:
            storage.write_bytes(url, b"x" * 200_000)
        message = str(info.value)
        assert url in message and "No space left" in message and "--work" in message
        assert [p for p in (work / "jobs" / "00000").iterdir()] == []
        monkeypatch.setenv(WORK_ENV, str(tmp_path / "elsewhere"))  # not the run's work
        with pytest.raises(OutputNotWritableError):
            storage.write_bytes(url, b"x" * 200_000)


def test_a_map_failure_without_a_record_claims_no_cause(tmp_path: Path):
    """A job whose Map failed with no unit's error recorded (the work location too full to
    take it, a unit killed): the report lists what may have happened, the work location
    and --work among it, without claiming one (it said "one was killed")."""
    run_url, _, _ = _planned_job(tmp_path)
    record_failure(FailureEvent(run_url, 0, {"Error": "States.ExceedToleratedFailureThreshold",
                                             "Cause": "The specified tolerated failure "
                                                      "threshold was exceeded"}))
    doc = json.loads(Path(layout.result_file(layout.job_dir(str(tmp_path / "work"), 0)))
                     .read_text())
    message = doc["error"]["message"]
    assert "not known" in message and "may have been killed" in message
    assert "work location" in message and "--work" in message
    assert "one was killed" not in message


# --- messages that name what to change ----------------------------------------------------


def test_an_unwritable_report_names_report(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A report that cannot be written (its folder a file here; a read-only folder alike):
    exit 2 before anything runs, saying to give --report another path (it said "choose
    another output path")."""
    manifest = _manifest(tmp_path, "out/b.tif")
    (tmp_path / "afile").write_text("x")
    assert cli.main(["run", str(manifest), "--report", str(tmp_path / "afile" / "r.json"),
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "report" in err and "give --report another path" in err, err
    assert "output path" not in err and not (tmp_path / "out").exists()


def test_dangling_links_are_named_with_their_target(tmp_path: Path):
    """An input that is a link to nothing: InputNotFoundError saying so, with the target;
    an output through a folder that is a link to nothing: OutputNotWritableError saying so
    when planned and when written (it said ``[Errno 17] File exists``)."""
    from pipeline.errors import InputNotFoundError

    (tmp_path / "in.tif").symlink_to(tmp_path / "gone.tif")
    with pytest.raises(InputNotFoundError, match="is a link to .*gone.tif, which does not "
                       "exist"):
        storage.open_input(str(tmp_path / "in.tif"))
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    output = str(tmp_path / "out" / "sub" / "x.tif")
    for call in (storage.check_writable, storage.temp_output_path):
        with pytest.raises(OutputNotWritableError) as info:
            call(output)
        message = str(info.value)
        assert f"{tmp_path / 'out'} is a link to {tmp_path / 'nowhere'}" in message, message
        assert "File exists" not in message and output in message
