"""The night after a batch on AWS partly failed: what ``tiffpipe status`` (and ``start
--wait``) tells the on-call engineer, from the real handlers run by moto's Step Functions on
a deployed stack (the fixture of tests/test_start_status.py), with failures made the way
they happen there: a damaged TIFF in S3, a missing object, S3 answering 403 AccessDenied (a
bucket policy), an invocation stopped by Lambda's timeout, an execution stopped."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_start_status
import tifffile
from botocore.awsrequest import AWSResponse
from test_start_status import DATA, NAMES, STACK, Stack, _InProcess

from pipeline.adapters import storage
from pipeline.engine.moto_run import served_by

pytestmark = pytest.mark.timeout(120)
stack = test_start_status.stack  # the fixture: a stack deployed in moto

_DENIED = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
           b"<Message>Access Denied</Message></Error>")


class _Body:
    def stream(self, **_: Any) -> Any:
        yield _DENIED


def deny(key: str) -> Callable[..., Any]:
    """A botocore hook answering S3's 403 AccessDenied (what a bucket policy's Deny gives)
    for every request on ``key``, before it is sent."""
    def hook(request: Any, **_: Any) -> Any:
        if f"/{key}" in request.url:
            return AWSResponse(request.url, 403, {}, _Body())
        return None
    return hook


class Lambda(_InProcess):
    """The real handlers; an invocation whose event names a job in ``timeouts`` ends as
    Lambda ends one its function's timeout stops (Sandbox.Timedout)."""

    def __init__(self, timeouts: tuple[int, ...] = (), before: Any = None) -> None:
        self.timeouts, self.before = timeouts, before

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        if self.before is not None:
            self.before(function, event)
        text = json.dumps(event)
        if event.get("action") != "plan_job" and any(
                f"/jobs/{j:05d}/" in text for j in self.timeouts):
            return False, {"errorType": "Sandbox.Timedout", "errorMessage": "RequestId: 5f1c "
                           "Error: Task timed out after 900.00 seconds"}
        return super().invoke(function, event)


def _inputs(stack: Stack, tmp: Path) -> Callable[..., Any]:
    """in/good.tif, in/bad.tif (its segment data damaged), in/denied.tif (S3 denies it: the
    hook returned), in/slow.tif."""
    s3 = stack.client("s3")
    src = tmp / "src.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)
    tifffile.imwrite(src, pixels, tile=(64, 64), compression="zlib")
    for key in ("good", "denied", "slow"):
        s3.upload_file(str(src), DATA, f"in/{key}.tif")
    damaged = bytearray(src.read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 2000] = bytes(2000)
    s3.put_object(Bucket=DATA, Key="in/bad.tif", Body=bytes(damaged))
    hook = deny("in/denied.tif")
    storage.s3_client().meta.events.register("before-send.s3", hook)
    return hook


def _job(name: str) -> dict[str, Any]:
    return {"input": f"s3://{DATA}/in/{name}.tif", "output": f"s3://{DATA}/out/{name}.tif",
            "ops": [{"op": "invert"}]}


NIGHT = {"defaults": {"tile": 128, "output_options": {"tile": 64}},
         "jobs": [_job(n) for n in ("good", "bad", "missing", "denied", "slow")]}


def _report(stack: Stack, arn: str) -> dict[str, Any]:
    run_id = arn.rsplit(":", 1)[-1].removeprefix("run-")
    body = stack.client("s3").get_object(Bucket=NAMES.bucket, Key=f"reports/{run_id}.json")
    return json.loads(body["Body"].read())


def test_each_failed_job_says_whose_fault_it_is_and_what_to_do(stack: Stack, tmp_path: Path):
    """A damaged input and a missing one are the data's fault (a rerun fails the same: skip
    them); S3's AccessDenied and Lambda's timeout the platform's (fix it, then rerun). The
    report says so for each failed job (its error's ``fault``), ``status`` counts them by
    fault with what to do, and the summary names the input of an error that does not
    (Lambda's timeout knows no file)."""
    hook = _inputs(stack, tmp_path)
    manifest = stack.manifest("night.json", NIGHT)
    with served_by(Lambda(timeouts=(4,))):
        code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--wait",
                                        "--poll", "0.05")
    assert code == 1, err
    arn = out.splitlines()[0]
    report = _report(stack, arn)
    got = {j["job"]: (j["status"], (j.get("error") or {}).get("type"),
                      (j.get("error") or {}).get("fault")) for j in report["jobs"]}
    assert got == {0: ("SUCCEEDED", None, None),
                   1: ("FAILED", "CorruptTiffError", "input"),
                   2: ("FAILED", "InputNotFoundError", "input"),
                   3: ("FAILED", "AccessDeniedError", "platform"),
                   4: ("FAILED", "Sandbox.Timedout", "platform")}, got
    assert "page 0: segment" in report["jobs"][1]["error"]["message"]
    assert stack.keys(DATA, "out/") == ["out/good.tif"]  # no failed job's output, nor a part
    assert not stack.client("s3").list_multipart_uploads(Bucket=DATA).get("Uploads")
    assert (f"s3://{DATA}/in/slow.tif: Sandbox.Timedout: RequestId: 5f1c Error: Task timed "
            "out after 900.00 seconds: the function's timeout") in out
    assert "tiffpipe: 2 jobs failed of the input (job 1, 2): the input or its job is at " \
           "fault, a rerun fails the same" in err, err
    assert "tiffpipe: 2 jobs failed of the platform (job 3, 4): where it ran is at fault" in err
    code, again, err2 = stack.tiffpipe("status", arn)
    assert (code, again) == (1, out[len(arn) + 1:])
    assert "failed of the input (job 1, 2)" in err2

    # the platform mended (the bucket policy, the function's timeout): rerun exactly the jobs
    # a rerun may mend, the good one not done again, the damaged and missing inputs left out
    rerun = tmp_path / "rerun.json"
    code, _, err = stack.tiffpipe("status", arn, "--rerun-manifest", str(rerun))
    assert code == 1
    assert (f"wrote {rerun}: 2 failed job(s) to run again (tiffpipe start {rerun}); left "
            "out, the input's fault (a rerun fails the same): job 1, 2") in err, err
    assert json.loads(rerun.read_text()) == {"jobs": [
        {**_job(n), "tile": 128, "output_options": {"tile": 64}, "fuse": True,
         "if_exists": "overwrite"} for n in ("denied", "slow")]}
    storage.s3_client().meta.events.unregister("before-send.s3", hook)
    good = stack.client("s3").head_object(Bucket=DATA, Key="out/good.tif")["LastModified"]
    with served_by(Lambda()):
        code, out, err = stack.tiffpipe("start", str(rerun), "--stack", STACK, "--wait",
                                        "--poll", "0.05")
    assert code == 0, err
    assert "2 succeeded, 0 failed" in out
    assert stack.keys(DATA, "out/") == ["out/denied.tif", "out/good.tif", "out/slow.tif"]
    assert stack.client("s3").head_object(Bucket=DATA, Key="out/good.tif")[
        "LastModified"] == good


class Timeouts(_InProcess):
    """The real handlers; the invocations of the (job, action) pairs ``timed_out`` end as
    Lambda ends one its function's timeout stops (Sandbox.Timedout)."""

    def __init__(self, timed_out: set[tuple[int, str]]) -> None:
        self.timed_out = timed_out

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        text = json.dumps(event)
        if any(event.get("action") == action and f"/jobs/{j:05d}/" in text
               for j, action in self.timed_out):
            return False, {"errorType": "Sandbox.Timedout", "errorMessage": "RequestId: 5f1c "
                           "Error: Task timed out after 900.00 seconds"}
        return super().invoke(function, event)


def test_each_failed_job_says_the_step_it_failed_in(stack: Stack, tmp_path: Path):
    """Which step a job failed in: the state that caught its error (PlanJob, Merge, a small
    job's ProcessJob), or, for a unit or batch, the Map that runs it and the item, which the
    Map's own error does not name. The report says it (the error's ``step``), and so do the
    summary of ``start --wait`` and ``status``, and its ``--json``."""
    _inputs(stack, tmp_path)
    apart = {"fuse": False}  # Split, Process, then a Merge task
    manifest = stack.manifest("night.json", {**NIGHT, "jobs": [
        _job("missing"), _job("bad"), {**_job("bad"), **apart, "output": f"s3://{DATA}/o/b.tif"},
        {**_job("good"), **apart}, _job("slow")]})
    with served_by(Timeouts({(3, "merge"), (4, "process_job")})):
        code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--wait",
                                        "--poll", "0.05")
    assert code == 1, err
    arn = out.splitlines()[0]
    report = _report(stack, arn)
    got = [(j["error"]["type"], j["error"].get("step")) for j in report["jobs"]]
    assert got == [("InputNotFoundError", "PlanJob"),
                   ("CorruptTiffError", "ProcessJob (unit 0)"),
                   ("CorruptTiffError", "Split (unit 0)"),
                   ("Sandbox.Timedout", "Merge"),
                   ("Sandbox.Timedout", "ProcessJob")], got
    assert re.search(r"InputNotFoundError: .* \(in PlanJob\)", out), out
    assert "(in Split (unit 0))" in out and "seconds: the function's timeout" in out
    code, again, _ = stack.tiffpipe("status", arn)
    assert (code, again) == (1, out[len(arn) + 1:])
    code, doc, _ = stack.tiffpipe("status", arn, "--json")
    assert [j["error"]["step"] for j in json.loads(doc)["report"]["jobs"]] == [
        step for _, step in got]


def test_a_stopped_run_still_says_what_it_did_and_status_json_serves_scripts(
        stack: Stack, tmp_path: Path):
    """An execution stopped (``stop-execution``, or Step Functions' own timeout) runs no
    Report step, and ``status`` said only ``ended ABORTED: see the execution history``: which
    jobs had finished, and which outputs exist, was not said anywhere. It rebuilds the
    report from the jobs' results in the work location (the jobs that had not finished
    STOPPED, never published); ``--json`` gives the same to a script, as it does a running
    execution's progress and a finished one's report."""
    _inputs(stack, tmp_path)
    sfn = stack.client("stepfunctions")

    def stop_once_jobs_0_and_1_ended(function: str, event: dict[str, Any]) -> None:
        if event.get("action") != "plan_job" or event.get("job") != 2:
            return
        for _ in range(200):  # jobs 0 and 1 ended (they run beside this one)
            keys = stack.keys(NAMES.bucket)
            if all(any(k.endswith(f"/jobs/0000{j}/result.json") for k in keys) for j in (0, 1)):
                break
            time.sleep(0.05)
        arn = sfn.list_executions(stateMachineArn=NAMES.state_machine_arn)["executions"][0]
        sfn.stop_execution(executionArn=arn["executionArn"], error="OnCall",
                           cause="stopped by the on-call engineer")

    manifest = stack.manifest("night.json", {**NIGHT, "jobs": NIGHT["jobs"][:3]})
    with served_by(Lambda(before=stop_once_jobs_0_and_1_ended)):
        code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--wait",
                                        "--poll", "0.05")
        time.sleep(1)  # (the stopped jobs' threads end)
    assert code == 1, err
    arn = out.splitlines()[0]
    assert "ended ABORTED" in err and "Traceback" not in err
    assert stack.keys(NAMES.bucket, "reports/") == []  # the Report step never ran
    assert "report: none written; the summary above is rebuilt from the jobs' results in " \
           f"s3://{NAMES.bucket}/work/" in out, out
    assert re.search(rf"0  SUCCEEDED .* s3://{DATA}/out/good.tif", out), out
    assert "STOPPED" in out and "the run was stopped before this job finished" in out, out
    assert "its output was not published; run the job again" in out
    assert stack.keys(DATA, "out/") == ["out/good.tif"]
    assert "failed of the transient (job 2): a failure that may pass" in err, err

    code, doc, _ = stack.tiffpipe("status", arn, "--json")
    assert code == 1
    got = json.loads(doc)
    assert (got["execution"], got["status"], got["report_url"]) == (arn, "ABORTED", None)
    assert got["problem"].startswith(f"the run {arn.rsplit(':', 1)[-1]} ended ABORTED")
    jobs = got["report"]["jobs"]
    assert [j["status"] for j in jobs] == ["SUCCEEDED", "FAILED", "FAILED"]
    assert (jobs[1]["error"]["type"], jobs[1]["error"]["fault"]) == ("CorruptTiffError",
                                                                     "input")
    assert (jobs[2]["error"]["type"], jobs[2]["error"]["fault"]) == ("RunInterruptedError",
                                                                     "transient")

    # a finished run's report, and a running one's progress, as JSON
    with served_by(Lambda()):
        code, out, err = stack.tiffpipe("start", str(stack.manifest("one.json", {
            **NIGHT, "jobs": NIGHT["jobs"][:1]})), "--stack", STACK, "--wait", "--poll", "0.05")
    assert code == 0, err
    code, doc, _ = stack.tiffpipe("status", out.splitlines()[0], "--json")
    got = json.loads(doc)
    assert (code, got["status"], got["problem"]) == (0, "SUCCEEDED", None)
    assert got["uploads"] is None  # (its own steps ended its uploads: none looked for)
    assert got["report_url"].startswith(f"s3://{NAMES.bucket}/reports/")
    assert got["report"]["succeeded"] == 1 and got["report"]["jobs"][0]["output"] == \
        f"s3://{DATA}/out/good.tif"
    slow = test_start_status._stand_in(stack, "tiffpipe-slow", {"Type": "Wait", "Seconds": 30,
                                                                 "End": True})
    running = sfn.start_execution(stateMachineArn=slow, name="r", input="{}")["executionArn"]
    try:
        code, doc, _ = stack.tiffpipe("status", running, "--json")
        assert code == 0 and json.loads(doc) == {
            "schema": 1, "execution": running, "name": "r", "status": "RUNNING",
            "progress": {}}
    finally:
        sfn.stop_execution(executionArn=running)


def test_a_report_written_before_faults_were_said_gets_them_from_the_errors(
        stack: Stack, tmp_path: Path):
    """A report written by a stack deployed before reports gave each failed job's error a
    ``fault`` (kept in ``reports/`` for good) has none: ``status`` counted every failed job
    as the platform's, a damaged input too ("fix what the message says, then rerun"), and
    ``--rerun-manifest`` put the jobs a rerun fails the same into the rerun. The fault is
    now the error type's, as the report would say it now."""
    _inputs(stack, tmp_path)
    with served_by(Lambda(timeouts=(2,))):
        code, out, _ = stack.tiffpipe("start", str(stack.manifest("old.json", {
            **NIGHT, "jobs": [_job(n) for n in ("good", "bad", "slow")]})), "--stack", STACK,
            "--wait", "--poll", "0.05")
    assert code == 1
    arn = out.splitlines()[0]
    old = _report(stack, arn)
    for job in old["jobs"]:
        (job.get("error") or {}).pop("fault", None)
    run_id = arn.rsplit(":", 1)[-1].removeprefix("run-")
    stack.client("s3").put_object(Bucket=NAMES.bucket, Key=f"reports/{run_id}.json",
                                  Body=json.dumps(old).encode())
    rerun = tmp_path / "rerun.json"
    code, _, err = stack.tiffpipe("status", arn, "--rerun-manifest", str(rerun))
    assert code == 1
    assert "tiffpipe: 1 job failed of the input (job 1)" in err, err
    assert "tiffpipe: 1 job failed of the platform (job 2)" in err, err
    assert [j["input"] for j in json.loads(rerun.read_text())["jobs"]] == [
        f"s3://{DATA}/in/slow.tif"]


def test_a_rerun_manifest_is_written_only_when_there_are_jobs_to_rerun(
        stack: Stack, tmp_path: Path):
    """``--rerun-manifest`` of a run whose failed jobs are all the input's fault wrote
    ``{"jobs": []}`` and said to ``tiffpipe start`` it, which refuses it (a manifest needs a
    job); of a run whose work is gone (kept 7 days; the report is kept for good) it ended
    in a traceback (WorkMissingError) without the run's summary. Each now says why no
    manifest was written, after which the summary as ever; nor does a folder that is not
    there end it so."""
    _inputs(stack, tmp_path)
    with served_by(Lambda()):
        code, out, _ = stack.tiffpipe("start", str(stack.manifest("a.json", {
            **NIGHT, "jobs": [_job("good"), _job("bad")]})), "--stack", STACK, "--wait",
            "--poll", "0.05")
    assert code == 1
    arn = out.splitlines()[0]
    rerun = tmp_path / "rerun.json"
    code, out, err = stack.tiffpipe("status", arn, "--rerun-manifest", str(rerun))
    assert code == 1 and "1  FAILED" in out, out
    assert ("tiffpipe: no --rerun-manifest written: no failed job a rerun may mend; left out, "
            "the input's fault (a rerun fails the same): job 1") in err, err
    assert not rerun.exists()

    with served_by(Lambda(timeouts=(1,))):
        code, out, _ = stack.tiffpipe("start", str(stack.manifest("b.json", {
            **NIGHT, "jobs": [_job("good"), _job("slow")]})), "--stack", STACK, "--wait",
            "--poll", "0.05")
    arn = out.splitlines()[0]
    code, out, err = stack.tiffpipe("status", arn, "--rerun-manifest",
                                    str(tmp_path / "nope" / "rerun.json"))
    assert code == 1 and "no --rerun-manifest written: " in err and "nope" in err, err
    s3 = stack.client("s3")
    for key in stack.keys(NAMES.bucket, "work/"):  # (the bucket's lifecycle rule, a week on)
        s3.delete_object(Bucket=NAMES.bucket, Key=key)
    code, out, err = stack.tiffpipe("status", arn, "--rerun-manifest", str(rerun))
    assert code == 1 and "1  FAILED" in out, out
    assert "/run.json, the jobs as the run ran them, is gone (a run's work is kept 7 days): " \
           "run jobs 1 of its manifest again" in err, err
    assert not rerun.exists()
