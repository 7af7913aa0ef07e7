"""A step retried by the state machine: what an attempt that failed leaves must not decide the
job once a retry succeeded (Step Functions retries ``StorageError`` and Lambda's own errors;
on AWS an item fails, e.g. on S3's SlowDown, and its retry finishes it).

The steps are called as the state machine calls them (``handlers.dispatch``, one event at a
time), on a real local work folder; a failed attempt is a real exception from the writer it
happens in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from pipeline import handlers
from pipeline.adapters import segments, storage
from pipeline.errors import StorageError, TiffpipeError, WorkMissingError
from pipeline.steps import layout


def _run(tmp_path: Path, ops: list[dict[str, Any]]) -> tuple[dict[str, Any], str, np.ndarray]:
    """A planned job that is not fused (a Split, then Process batches: 12 tiles of 64, two
    batches), its PlanJob answer, the run file and the input's pixels."""
    px = np.random.default_rng(3).integers(0, 256, (200, 150), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", px, tile=(64, 64))
    manifest = {"defaults": {"tile": 64, "fuse": False, "output_options": {"tile": 32}},
                "jobs": [{"input": "a.tif", "output": "out/a.tif", "ops": ops}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    run = handlers.dispatch("split", {"action": "plan_run", "manifest": str(tmp_path / "m.json"),
                                      "work": str(tmp_path / "work"), "run_id": "r1",
                                      "report": str(tmp_path / "report.json")})
    job = handlers.dispatch("process", {"action": "plan_job", "run": run["run"], "job": 0})
    assert not job["fused"] and len(job["batches"]) == 2
    for unit in job["units"]:
        handlers.dispatch("split", {"action": "split", "plan": job["plan"], "unit": unit})
    return job, run["run"], px


def _failing_once(monkeypatch: pytest.MonkeyPatch, segment: str) -> list[str]:
    """The first close of the segment named ``segment`` fails as an S3 PUT answered SlowDown
    would (after the writer's own handling: it discards the segment); what failed, listed."""
    close, failed = segments.SegmentWriter.close, []

    def flaky(self: segments.SegmentWriter) -> None:
        if self.url.endswith(segment) and not failed:
            failed.append(self.url)
            self.abort()
            raise StorageError(f"{self.url}: cannot write: SlowDown (transient)")
        close(self)

    monkeypatch.setattr(segments.SegmentWriter, "close", flaky)
    return failed


def _batch(job: dict[str, Any], batch: int) -> dict[str, Any]:
    return handlers.dispatch("process", {"action": "process", "plan": job["plan"],
                                         "batch": batch})


def test_a_batch_retried_to_success_leaves_no_error_for_merge(tmp_path, monkeypatch):
    """Batch 0 fails once (its error recorded, as for any failing item), its retry succeeds:
    merge publishes the output, no error record is left, and the output is what a run
    without the failure writes."""
    job, _, px = _run(tmp_path, [{"op": "invert"}])
    failed = _failing_once(monkeypatch, "b000000.seg")
    with pytest.raises(StorageError, match="SlowDown"):
        _batch(job, 0)
    work = str(Path(job["plan"]).parent)
    assert storage.exists(layout.error_file(work, "process", 0))  # the attempt's record
    assert failed and _batch(job, 0)["tiles"] == 8  # the retry
    _batch(job, 1)
    assert not storage.exists(layout.error_file(work, "process", 0))
    merged = handlers.dispatch("merge", {"action": "merge", "plan": job["plan"]})
    assert np.array_equal(tifffile.imread(merged["output"]), 255 - px)


def test_a_statistics_batch_retried_to_success_leaves_no_error_for_reduce(tmp_path,
                                                                          monkeypatch):
    """The same for a Stats batch and ReduceStats (a chain with whole-page statistics)."""
    job, _, px = _run(tmp_path, [{"op": "normalize"}])
    assert job["stats"]["more"]
    work = str(Path(job["plan"]).parent)
    save, failed = storage.write_bytes, []

    def flaky(url: str, data: bytes) -> None:
        if "stats" in url and not failed:
            failed.append(url)
            raise StorageError(f"{url}: cannot write: SlowDown (transient)")
        save(url, data)

    event = {"action": "stats", "plan": job["plan"], "batch": 0, "round": 0}
    monkeypatch.setattr(storage, "write_bytes", flaky)
    with pytest.raises(StorageError, match="SlowDown"):
        handlers.dispatch("process", event)
    assert failed and storage.exists(layout.error_file(work, "stats", 0))
    handlers.dispatch("process", event)  # the retry
    handlers.dispatch("process", {**event, "batch": 1})
    assert not storage.exists(layout.error_file(work, "stats", 0))
    reduced = handlers.dispatch("process", {"action": "reduce_stats", "plan": job["plan"],
                                            "round": 0})
    assert reduced["more"] is False
    for batch in job["batches"]:
        _batch(job, batch)
    merged = handlers.dispatch("merge", {"action": "merge", "plan": job["plan"]})
    expected = cv2.normalize(px, None, 0, 255, cv2.NORM_MINMAX)
    assert np.array_equal(tifffile.imread(merged["output"]), expected)


def test_merge_names_the_recorded_error_of_a_batch_that_never_finished(tmp_path, monkeypatch):
    """An engine that goes on after a failed item (moto's swallows them): merge meets the
    batch's missing segment and fails with the batch's own recorded error, not a
    WorkMissingError; no output is published."""
    job, _, _ = _run(tmp_path, [{"op": "invert"}])

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise tifffile.TiffFileError("not a TIFF: a codec error for this test")

    _batch(job, 0)
    from pipeline.steps import process as process_step

    monkeypatch.setattr(process_step.TileOutput, "encode_tile", broken)
    with pytest.raises(tifffile.TiffFileError):
        _batch(job, 1)
    monkeypatch.undo()
    with pytest.raises(TiffpipeError) as caught:
        handlers.dispatch("merge", {"action": "merge", "plan": job["plan"]})
    assert not isinstance(caught.value, WorkMissingError)
    assert "a codec error for this test" in str(caught.value)
    assert not (tmp_path / "out" / "a.tif").exists()


def test_merge_without_records_reports_the_missing_work(tmp_path):
    """Work missing and nothing recorded (a batch killed mid-way records nothing): merge's
    WorkMissingError names the missing segment."""
    job, _, _ = _run(tmp_path, [{"op": "invert"}])
    _batch(job, 0)
    with pytest.raises(WorkMissingError, match="b000001"):
        handlers.dispatch("merge", {"action": "merge", "plan": job["plan"]})


def test_record_failure_reports_the_failure_not_a_retried_one(tmp_path, monkeypatch):
    """Batch 0 failed once and its retry succeeded; batch 1 then timed out (killed: it
    records nothing). RecordFailure reports the Map's error, not batch 0's overcome one."""
    job, run, _ = _run(tmp_path, [{"op": "invert"}])
    _failing_once(monkeypatch, "b000000.seg")
    with pytest.raises(StorageError):
        _batch(job, 0)
    _batch(job, 0)
    error = {"Error": "States.Timeout", "Cause": "ProcessBatch timed out"}
    recorded = handlers.dispatch("merge", {"action": "record_failure", "run": run, "job": 0,
                                           "error": error})
    assert recorded["error"] == "States.Timeout"


def test_record_failure_says_what_a_failure_nothing_recorded_means(tmp_path):
    """A Map failed and no item recorded an error (a unit killed by its timeout, or out of
    memory): the report says so, and where to look, besides the Map's generic error."""
    job, run, _ = _run(tmp_path, [{"op": "invert"}])
    error = {"Error": "States.ExceedToleratedFailureThreshold",
             "Cause": "The specified tolerated failure threshold was exceeded"}
    handlers.dispatch("merge", {"action": "record_failure", "run": run, "job": 0,
                                "error": error})
    result = json.loads((Path(job["plan"]).parent / "result.json").read_text())
    assert result["error"]["type"] == "States.ExceedToleratedFailureThreshold"
    message = result["error"]["message"]
    assert message.startswith("The specified tolerated failure threshold was exceeded; ")
    assert "no unit or batch recorded an error" in message and "Map Run" in message



@pytest.mark.parametrize("caller, option", [("python", "work="), ("", "tiffpipe run --work")])
def test_what_a_failure_nothing_recorded_means_is_said_in_the_callers_words(
        tmp_path, monkeypatch, caller, option):
    """What the report adds to such a failure tells a local run to give the run another work
    location in the words of what started it: ``pipeline.run``'s argument (``work=``), else
    the command's option. It said "give tiffpipe run another --work", which the report
    rewrote for ``pipeline.run``'s caller into "give tiffpipe run another work=", a
    command's name and an argument in one phrase."""
    from pipeline.core.constants import CALLER_ENV

    monkeypatch.setenv(CALLER_ENV, caller)
    job, run, _ = _run(tmp_path, [{"op": "invert"}])
    error = {"Error": "States.ExceedToleratedFailureThreshold",
             "Cause": "The specified tolerated failure threshold was exceeded"}
    handlers.dispatch("merge", {"action": "record_failure", "run": run, "job": 0,
                                "error": error})
    message = json.loads((Path(job["plan"]).parent / "result.json").read_text())["error"][
        "message"]
    assert ("(full, read-only). Locally, free space there or give the run another work "
            f"location ({option}); on AWS, the failed items") in message, message
    assert "tiffpipe run another" not in message
    assert ("--work" in message) == (caller != "python")

def test_a_huge_error_message_is_cut_in_the_report():
    """A cause of a megabyte (a user function's message, a codec's dump): the report keeps
    its start and end, a few kilobytes, and says how much was cut."""
    from pipeline.steps.report import failure_record

    cause = json.dumps({"errorType": "CustomOperationError",
                        "errorMessage": "custom op m:f raised: " + "y" * 1_000_000 + " the end"})
    record = failure_record({"Error": "CustomOperationError", "Cause": cause})
    assert record["type"] == "CustomOperationError" and len(record["message"]) < 4200
    assert record["message"].startswith("custom op m:f raised: yyy")
    assert record["message"].endswith("yyy the end") and "characters cut]" in record["message"]


def test_an_error_without_a_message_says_where_it_was_raised(monkeypatch):
    """An error raised with no message (an assert, a bare raise in a user function): the
    report says so and where, not the raw Lambda payload with its stack trace. The payload
    is the one a local worker makes of it."""
    from pipeline.engine import workers
    from pipeline.steps.report import failure_record

    def bare(function: str, event: dict[str, Any]) -> None:
        raise RuntimeError

    monkeypatch.setattr(handlers, "dispatch", bare)
    ok, payload, _, _ = workers._invoke("process", {"action": "process_unit"})
    assert not ok and payload["errorMessage"] == ""
    record = failure_record({"Error": "RuntimeError", "Cause": json.dumps(payload)})
    assert record["type"] == "RuntimeError"
    assert record["message"].startswith("RuntimeError raised with no message (File ")
    assert "test_step_retries.py" in record["message"] and "in bare" in record["message"]
    assert "stackTrace" not in record["message"]


def test_a_job_without_a_result_is_timed_from_its_plan(tmp_path):
    """The report of a run that ended before a job recorded its result (stopped, or killed
    items): a job that had been planned ran from its plan's start until the report (not
    blank timings, as if it never ran); one never planned has none; the summary leaves its
    seconds blank, not 0.0."""
    from pipeline.ui import summary_rows

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint8))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "a.tif", "output": f"out/{i}.tif"} for i in range(2)]}))
    run = handlers.dispatch("split", {"action": "plan_run", "manifest": str(tmp_path / "m.json"),
                                      "work": str(tmp_path / "work"), "run_id": "r1",
                                      "report": str(tmp_path / "report.json")})
    job = handlers.dispatch("process", {"action": "plan_job", "run": run["run"], "job": 0})
    assert job["plan"]
    handlers.dispatch("merge", {"action": "report", "run": run["run"]})
    doc = json.loads((tmp_path / "report.json").read_text())
    planned, never = doc["jobs"]
    assert planned["error"]["type"] == never["error"]["type"] == "NoResultError"
    assert doc["started_at"] <= planned["started_at"] <= planned["finished_at"]
    assert planned["seconds"] == pytest.approx(planned["finished_at"] - planned["started_at"],
                                               abs=0.01)
    assert "started_at" not in never and "seconds" not in never
    _, rows = summary_rows(doc)
    assert rows[0][4] == f"{planned['seconds']:.1f}" and rows[1][4] == ""


@pytest.mark.parametrize(("error", "kind", "says"), [
    ({"Error": "States.Timeout"}, "States.Timeout", "ran past the TimeoutSeconds"),
    ({"Error": "Sandbox.Timedout", "Cause": json.dumps(
        {"errorMessage": "2026-12-06T16:00:00.000Z abc Task timed out after 900.00 seconds"})},
     "Sandbox.Timedout", "Task timed out after 900.00 seconds: the function's timeout stopped"),
    ({"Error": "Runtime.OutOfMemory", "Cause": json.dumps(
        {"errorType": "Runtime.OutOfMemory",
         "errorMessage": "RequestId: abc Error: Runtime exited with error: signal: killed"})},
     "Runtime.OutOfMemory", "signal: killed: the function ran out of memory: give the job"),
    ({"Error": "Lambda.Unknown", "Cause": json.dumps(
        {"errorMessage": "RequestId: abc Error: Runtime exited with error: signal: killed"})},
     "Lambda.Unknown", "the function ran out of memory"),
])
def test_errors_aws_raises_for_an_invocation_say_what_to_do(error, kind, says):
    """A Lambda timeout, a state's TimeoutSeconds (which gives no Cause at all) and a process
    killed out of memory: the report's message says what happened and what to do, not an
    empty or bare AWS text."""
    from pipeline.steps.report import failure_record

    record = failure_record(error)
    assert record["type"] == kind
    assert says in record["message"]
    assert "tiffpipe estimate" in record["message"] or "memory" in record["message"]
