"""A scan's run defers to an earlier run of the same scan still running on AWS
(pipeline/adapters/earlier_runs.py): Step Functions is moto's (its executions stay RUNNING
until stopped: none is executed here); the run's planning and report are the real steps, on
a local folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from pipeline import ui
from pipeline.adapters import earlier_runs
from pipeline.core.constants import RUN_TAG_ENV
from pipeline.core.events import ReportEvent, RunEvent
from pipeline.sample import SamplePage, write_sample
from pipeline.steps import layout, planning
from pipeline.steps import report as report_step

REGION = "us-east-1"
MACHINE = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}


@pytest.fixture
def sfn(monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's Step Functions with one state machine, as seen from a Lambda function."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SFN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "tiffpipe-t1-split")
    with mock_aws():
        client = boto3.client("stepfunctions", region_name=REGION)
        machine = client.create_state_machine(
            name="tiffpipe-t1", definition=json.dumps(MACHINE),
            roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        client.machine = machine  # type: ignore[attr-defined]
        yield client


def _start(sfn: Any, manifest: str) -> str:
    return str(sfn.start_execution(stateMachineArn=sfn.machine,
                                   input=json.dumps({"manifest": manifest}))["executionArn"])


def test_the_earlier_running_execution_of_the_same_manifest(
        sfn: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Of the running executions, one that started before this one on a manifest the caller
    says is the same scan; not a later one, not another's, not a stopped one; nothing off
    Lambda or for what is not an execution ARN; a Step Functions error (no permission) is a
    warning and no earlier run."""
    scan, other = "s3://b/manifests/schedule.json", "s3://b/manifests/other.json"
    first, second, third = _start(sfn, scan), _start(sfn, scan), _start(sfn, other)
    is_scan, is_other = scan.__eq__, other.__eq__
    assert earlier_runs.earlier_run(second, is_scan) == first
    assert earlier_runs.earlier_run(first, is_scan) is None
    assert earlier_runs.earlier_run(third, is_other) is None
    assert earlier_runs.earlier_run(third, is_scan) == first
    assert earlier_runs.state_machine_of(first) == sfn.machine
    assert earlier_runs.state_machine_of("") is None
    # a Distributed Map's child execution is not a run of its own
    assert earlier_runs.state_machine_of(first.replace(":execution:tiffpipe-t1:",
                                                       ":execution:tiffpipe-t1/Jobs:")) is None
    assert earlier_runs.earlier_run("", is_scan) is None
    with monkeypatch.context() as mp:
        mp.delenv("AWS_LAMBDA_FUNCTION_NAME")
        assert earlier_runs.earlier_run(second, is_scan) is None
    # a local run that inherited Lambda's environment is a local run: its earlier runs are
    # this machine's (local_runs), not the state machine's
    with monkeypatch.context() as mp:
        mp.setenv(RUN_TAG_ENV, "20260101-000000-abcdef")
        assert not earlier_runs.on_lambda()
        assert earlier_runs.earlier_run(second, is_scan) is None
    sfn.stop_execution(executionArn=first)
    assert earlier_runs.earlier_run(second, is_scan) is None

    denied = boto3.client("stepfunctions", region_name=REGION)

    def deny(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not "
                                     "authorized to perform: states:ListExecutions"}},
                          "ListExecutions")

    denied.meta.events.register("before-call.states.ListExecutions", deny)
    with caplog.at_level(logging.WARNING, logger="pipeline.adapters.earlier_runs"):
        assert earlier_runs.earlier_run(third, is_other, client=denied) is None
    assert "AccessDeniedException" in caplog.text and "the run goes on" in caplog.text


def test_a_scan_run_leaves_its_jobs_to_an_earlier_run_of_the_scan(sfn: Any, tmp_path: Path):
    """PlanRun of a scan whose earlier run is still running plans no job; run.json and the
    report name that run, and the summary says why there is no job. Without it, the same
    scan plans its new file. A list of jobs defers to an earlier execution of the same
    manifest URL only (a schedule's runs): another key of the same jobs (``tiffpipe
    start`` uploads each start's manifest to a key of its own, and refuses it before it
    starts) is not deferred here."""
    (tmp_path / "in").mkdir()
    write_sample(str(tmp_path / "in" / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"jobs": [{"input": "in/a.tif", "output": "out/a.tif"}]}))

    def plan(manifest: Path, execution: str, name: str) -> tuple[dict[str, Any], Any]:
        work = str(tmp_path / "work" / name)
        event = RunEvent(manifest=str(manifest), work=work, run_id=name,
                         report=str(tmp_path / f"{name}.report.json"), execution=execution)
        planned = planning.plan_run(event)
        return planned, json.loads(Path(layout.run_file(work)).read_text())

    earlier = _start(sfn, str(scan))
    later = _start(sfn, str(scan))
    planned, run = plan(scan, later, "deferred")
    assert planned["jobs"] == 0 and run["jobs"] == [] and run["deferred_to"] == earlier
    report_step.report(ReportEvent(run=layout.run_file(str(tmp_path / "work" / "deferred"))))
    report = json.loads((tmp_path / "deferred.report.json").read_text())
    assert report["deferred_to"] == earlier and report["jobs"] == []
    title, rows = ui.summary_rows(report)
    assert f"an earlier run of this manifest is still running ({earlier})" in title
    assert rows == []

    planned, run = plan(scan, earlier, "first")  # the earlier run itself goes on
    assert planned["jobs"] == 1 and "deferred_to" not in run
    assert run["jobs"][0]["input"] == str(tmp_path / "in" / "a.tif")
    first_jobs = _start(sfn, str(jobs))
    planned, run = plan(jobs, first_jobs, "jobs-first")  # the earliest goes on
    assert planned["jobs"] == 1 and "deferred_to" not in run
    deferred = _start(sfn, str(jobs))
    planned, run = plan(jobs, deferred, "jobs")
    assert planned["jobs"] == 0 and run["jobs"] == [] and run["deferred_to"] == first_jobs
    same_jobs = tmp_path / "same-jobs.json"
    same_jobs.write_text(jobs.read_text())
    planned, run = plan(same_jobs, _start(sfn, str(same_jobs)), "same-jobs")
    assert planned["jobs"] == 1 and "deferred_to" not in run
    for ended in (first_jobs, deferred):  # (moto's executions run until stopped)
        sfn.stop_execution(executionArn=ended)  # none running: the next run does the jobs
    planned, run = plan(jobs, _start(sfn, str(jobs)), "jobs-after")
    assert planned["jobs"] == 1 and "deferred_to" not in run

    # another manifest of the same scan (tiffpipe start uploads a local one to a key of
    # its own) defers too; a scan of the same input into another output does not
    copy = tmp_path / "copy.json"
    copy.write_text(scan.read_text())
    planned, run = plan(copy, _start(sfn, str(copy)), "copy")
    assert planned["jobs"] == 0 and run["deferred_to"] == earlier
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"scan": {"input": "in", "output": "out2"}}))
    planned, run = plan(elsewhere, _start(sfn, str(elsewhere)), "elsewhere")
    assert planned["jobs"] == 1 and "deferred_to" not in run


@pytest.mark.engine  # a scan run on the embedded engine (the other tests here are unit tests)
@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_the_state_machine_hands_plan_run_its_execution(tmp_path: Path, interpreter: str):
    """The definition passes PlanRun its execution's ARN ($$.Execution.Id), on both of the
    embedded engine's interpreters as on AWS: what a scan's run looks earlier runs up by."""
    from pipeline.runner import run_local

    (tmp_path / "in").mkdir()
    write_sample(str(tmp_path / "in" / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    manifest = tmp_path / "scan.json"
    manifest.write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))
    events: list[dict[str, Any]] = []

    def listen(function: str, event: dict[str, Any], ok: bool, payload: Any) -> None:
        if event.get("action") == "plan_run":
            events.append(event)

    result = run_local(str(manifest), 1, interpreter=interpreter, listener=listen)
    assert result.ok and result.report is not None and len(result.report["jobs"]) == 1
    [event] = events
    machine = earlier_runs.state_machine_of(event["execution"])
    assert machine is not None and machine.endswith(":stateMachine:tiffpipe-local")
    assert event["execution"].endswith(f":run-{result.report['run_id']}")
