"""``tiffpipe start`` and ``tiffpipe status`` against a stack deployed in moto.

moto runs the deployed state machine for real (``execute_state_machine``), and its Lambda
invokes are served in this process by the real handlers (as AWS would run the images), so
``start --wait`` follows a real run: a manifest uploaded to the stack bucket, real TIFFs in
(mocked) S3, Distributed Map runs, the report the Report step writes. Other tests point
``--state-machine`` at small stand-in state machines to get a failed or a running execution.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tifffile
from conftest import bucket_conditions_unchecked, moto_keeps_versions_as_aws, read_pages
from moto import mock_aws

from pipeline import cli, handlers
from pipeline.adapters import storage
from pipeline.aws import BUCKET_TAG, STEPS, Clients, StackNames
from pipeline.aws.deploy_steps import DeployConfig, deploy
from pipeline.aws.images import tag_prefix
from pipeline.aws.policies import DataLocation
from pipeline.aws.resources import EXECUTION_ID, schedule_input
from pipeline.core import plan as plan_mod
from pipeline.engine.moto_run import served_by
from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(120)

REGION = "us-east-1"
STACK = "t2"
NAMES = StackNames(STACK, "123456789012", REGION)
DATA = "tiffpipe-test-data"
RUN_NAME = re.compile(r"^run-\d{8}-\d{6}-[0-9a-f]{6}$")


@dataclass
class Stack:
    session: Any
    tmp: Path

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=REGION)

    def tiffpipe(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*args])
        return code, out.getvalue(), err.getvalue()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        found = self.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]

    def manifest(self, name: str, doc: Any) -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(doc))
        return path


class _InProcess:
    """Runs the real handlers in this process (moto's own Lambda backend only echoes)."""

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        assert function in STEPS, function
        try:
            return True, handlers.dispatch(function, event)
        except Exception as exc:  # noqa: BLE001 - Lambda reports any exception by its name
            # as the images' runtime client (awslambdaric's build_fault_result) reports it:
            # Step Functions makes this JSON the Cause of the failed state
            return False, {"errorMessage": str(exc), "errorType": type(exc).__name__,
                           "requestId": "", "stackTrace": traceback.format_list(
                               traceback.extract_tb(exc.__traceback__))}


def _handlers_in_process() -> contextlib.AbstractContextManager[None]:
    return served_by(_InProcess())


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Stack]:
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setattr(storage, "_client", None)
    bucket_conditions_unchecked(monkeypatch)  # (the stack bucket's HTTPS-only statement)
    logging_off = {"stepfunctions": {"execute_state_machine": True},
                   "lambda": {"use_docker": False}}
    with mock_aws(config=logging_off), _handlers_in_process():  # type: ignore[arg-type]
        session = boto3.Session(region_name=REGION)
        ecr = session.client("ecr")
        for step in STEPS:
            ecr.create_repository(repositoryName=NAMES.repository(step),  # (as deploy does)
                                  tags=[{"Key": "tiffpipe:stack", "Value": STACK}])
            layer = "sha256:" + hashlib.sha256(step.encode()).hexdigest()
            ecr.put_image(repositoryName=NAMES.repository(step),
                          imageTag=tag_prefix(DeployConfig(STACK).arch) + "v1",
                          imageManifest=json.dumps({
                              "schemaVersion": 2, "layers": [{"digest": layer}],
                              "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}))
        s3 = session.client("s3")
        s3.create_bucket(Bucket=DATA)  # (deploy checks that a data location's bucket exists)
        deploy(DeployConfig(STACK, skip_build=True, data=[DataLocation(DATA)]),
               Clients(REGION, session=session), log=lambda _: None, sleep=lambda _: None)
        source = tmp_path / "img.tif"
        write_sample(str(source), [SamplePage(200, 260, 3), SamplePage(130, 150, 1, "uint16")],
                     tile=64, compression="zstd")
        for key in ("in/a.tif", "incoming/x.tif", "incoming/day2/y.tiff"):
            s3.upload_file(str(source), DATA, key)
        yield Stack(session, tmp_path)


def _pages(data: bytes, tmp: Path) -> list[np.ndarray]:
    path = tmp / "got.tif"
    path.write_bytes(data)
    return read_pages(path)


JOBS = {"defaults": {"tile": 128, "output_options": {"tile": 64}}, "jobs": [
    {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif",
     "ops": [{"op": "invert"}]},
    {"input": f"s3://{DATA}/in/missing.tif", "output": f"s3://{DATA}/out/missing.tif"},
]}


def test_start_uploads_a_local_manifest_and_wait_shows_the_summary(
        stack: Stack, monkeypatch: pytest.MonkeyPatch):
    # the two-page job as a ProcessUnits Map (this small, it would be one ProcessJob): the
    # progress line shows the Map run's items
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 0)
    manifest = stack.manifest("m.json", JOBS)
    code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--region",
                                    REGION, "--wait", "--poll", "0.05")
    assert code == 1, err  # the missing input fails its job (exit 1, as tiffpipe run)
    assert "Traceback" not in err
    arn = out.splitlines()[0]
    name = arn.rsplit(":", 1)[-1]
    assert RUN_NAME.match(name), name
    run_id = name.removeprefix("run-")

    # the manifest was uploaded under the run id, and the execution input names it
    assert f"uploaded {manifest} to s3://{NAMES.bucket}/manifests/{run_id}.json" in err
    assert json.loads(stack.client("s3").get_object(
        Bucket=NAMES.bucket, Key=f"manifests/{run_id}.json")["Body"].read()) == JOBS
    desc = stack.client("stepfunctions").describe_execution(executionArn=arn)
    assert json.loads(desc["input"]) == {
        "manifest": f"s3://{NAMES.bucket}/manifests/{run_id}.json",
        "work": f"s3://{NAMES.bucket}/work/{run_id}/", "run_id": run_id,
        "report": f"s3://{NAMES.bucket}/reports/{run_id}.json"}
    assert "ProcessUnits" in err and "items" in err  # map run progress (a fused job)
    assert re.search(r"RUNNING: jobs [0-2]/2 done", err), err  # the Jobs map's items first

    # the summary table, as tiffpipe run prints it, from the report the Report step wrote
    assert f"run {run_id}: 1 succeeded, 1 failed" in out
    assert f"s3://{DATA}/out/a.tif" in out and "InputNotFoundError" in out
    assert f"report: s3://{NAMES.bucket}/reports/{run_id}.json" in out
    report = json.loads(stack.client("s3").get_object(
        Bucket=NAMES.bucket, Key=f"reports/{run_id}.json")["Body"].read())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED", "FAILED"]
    got = _pages(stack.client("s3").get_object(Bucket=DATA, Key="out/a.tif")["Body"].read(),
                 stack.tmp)
    with tifffile.TiffFile(stack.tmp / "img.tif") as tf:
        assert np.array_equal(got[0], ~tf.pages[0].asarray())
    assert stack.keys(DATA, "out/") == ["out/a.tif"]

    # status shows the finished execution the same way, with the same exit code
    code, again, err = stack.tiffpipe("status", arn)
    assert code == 1, err
    assert again == out[len(arn) + 1:]


def _push_images(stack: Stack, version: str) -> None:
    """New images of the three functions (a new release), the only ones in their
    repositories: what --skip-build deploys next."""
    ecr = stack.client("ecr")
    for step in STEPS:
        repo = NAMES.repository(step)
        ecr.batch_delete_image(repositoryName=repo,
                               imageIds=ecr.list_images(repositoryName=repo)["imageIds"])
        layer = "sha256:" + hashlib.sha256(f"{step}-{version}".encode()).hexdigest()
        ecr.put_image(repositoryName=repo, imageTag=tag_prefix(DeployConfig(STACK).arch) + version,
                      imageManifest=json.dumps({
                          "schemaVersion": 2, "layers": [{"digest": layer}],
                          "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}))


def _redeploy(stack: Stack) -> dict[str, Any]:
    return deploy(DeployConfig(STACK, skip_build=True), Clients(REGION, session=stack.session),
                  log=lambda _: None, sleep=lambda _: None)


def _versions(stack: Stack, step: str) -> list[str]:
    return [v["Version"] for v in stack.client("lambda").list_versions_by_function(
        FunctionName=NAMES.function(step))["Versions"] if v["Version"] != "$LATEST"]


def test_a_run_goes_on_to_its_end_on_the_code_it_started_with(
        stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """Redeploys while a run goes on: the run's every task (its jobs' Distributed Map
    children too) runs the release it started on, not the new one (the definition naming
    the functions unversioned, every task after a deploy ran the new code on the old
    code's events and work files); a run started after runs the new release; the versions
    a running execution uses are kept until it ends, then deleted by the next deploy."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 0)  # the units as a Distributed Map
    served = LambdaSimpleBackend.invoke  # (served_by's: the real handlers)
    invoked: list[tuple[str, str]] = []  # (the version invoked, the event)
    held, release = threading.Event(), threading.Event()

    def invoke(self: Any, name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: dict[str, str]) -> bytes:
        event = json.loads(body or "{}")
        if event.get("action") == "plan_run" and not held.is_set():
            held.set()  # the first run waits in its PlanRun while the stack is redeployed
            release.wait(60)
        self.get_function(name, qualifier)  # (as AWS: a version deleted cannot be invoked)
        version = qualifier or name.split(":function:", 1)[-1].partition(":")[2] or "$LATEST"
        invoked.append((version, json.dumps(event)))
        return served(self, name, qualifier, body, headers, response_headers)

    def start(out: str) -> tuple[int, str, str]:
        manifest = stack.manifest(f"{out}.json", {"jobs": [{
            "input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/{out}.tif",
            "ops": [{"op": "invert"}], "tile": 128, "output_options": {"tile": 64}}]})
        return stack.tiffpipe("start", str(manifest), "--stack", STACK, "--region", REGION,
                              *(["--wait", "--poll", "0.05"] if out != "first" else []))

    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        with moto_keeps_versions_as_aws():
            code, out, err = start("first")
            assert code == 0, err
            first = out.strip()
            assert held.wait(30), "the first run did not reach its PlanRun"
            _push_images(stack, "v2")
            assert _redeploy(stack)["versions"] == dict.fromkeys(STEPS, "2")
            _push_images(stack, "v3")
            assert _redeploy(stack)["versions"] == dict.fromkeys(STEPS, "3")
            for step in STEPS:  # 1: the running run's; 2: the definition 3 replaced
                assert _versions(stack, step) == ["1", "2", "3"], step
            code, out, err = start("second")  # on the new definition, to its end
            assert code == 0, err
            second = out.splitlines()[0]
            release.set()
            code, out, err = stack.tiffpipe("status", first, "--wait", "--poll", "0.05")
            assert code == 0, err
            assert "1 succeeded, 0 failed" in out

            _push_images(stack, "v4")  # no run now: what none can invoke goes
            assert _redeploy(stack)["versions"] == dict.fromkeys(STEPS, "4")
            for step in STEPS:
                assert _versions(stack, step) == ["3", "4"], step
    finally:
        release.set()
        LambdaSimpleBackend.invoke = served  # type: ignore[method-assign]

    runs = {}
    for arn in (first, second):
        run_id = arn.rsplit(":", 1)[-1].removeprefix("run-")
        runs[arn] = [(v, e) for v, e in invoked if f"work/{run_id}/" in e]
    assert sum(map(len, runs.values())) == len(invoked), "a task of neither run"
    actions = {json.loads(e)["action"] for _, e in runs[first]}
    assert {"plan_run", "plan_job", "process_unit", "merge", "report"} <= actions, actions
    assert {v for v, _ in runs[first]} == {"1"}  # started on 1: all of it on 1
    assert {v for v, _ in runs[second]} == {"3"}


def test_a_scan_started_twice_does_no_work_twice(stack: Stack):
    scan = stack.manifest("scan.json", {"scan": {
        "input": f"s3://{DATA}/incoming/", "output": f"s3://{DATA}/processed/",
        "tile": 128, "output_options": {"tile": 64, "compression": "deflate"}}})
    code, out, err = stack.tiffpipe("start", str(scan), "--stack", STACK, "--region", REGION,
                                    "--wait", "--poll", "0.05")
    assert code == 0, err
    assert "2 succeeded, 0 failed" in out
    found = f"scan of s3://{DATA}/incoming/ into s3://{DATA}/processed/: 2 TIFF(s)"
    assert f"{found}, 0 done before, 2 new" in out.splitlines(), out
    assert stack.keys(DATA, "processed/") == ["processed/day2/y.tiff", "processed/x.tif"]
    before = {k: stack.client("s3").head_object(Bucket=DATA, Key=k)["ETag"]
              for k in stack.keys(DATA, "processed/")}
    code, out, err = stack.tiffpipe("start", str(scan), "--stack", STACK, "--region", REGION,
                                    "--wait", "--poll", "0.05")
    assert code == 0, err
    assert "0 succeeded, 0 failed" in out  # nothing new: an empty run that succeeds
    assert f"{found}, 2 done before, 0 new" in out.splitlines(), out  # (not an empty folder)
    # the report the Report step wrote in S3 from the run's work (run.json) says it too
    report_url = re.search(r"^report: (s3://\S+)$", out, re.MULTILINE)
    assert report_url, out
    bucket, _, key = report_url.group(1)[len("s3://"):].partition("/")
    report = json.loads(stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    assert report["scan"] == {
        "input": f"s3://{DATA}/incoming/", "output": f"s3://{DATA}/processed/", "tiffs": 2,
        "done_before": 2, "jobs": 0,
        "left_out": {"name_collision": 0, "link_outside": 0, "link_to_nothing": 0,
                     "name_not_utf8": 0}}
    assert {k: stack.client("s3").head_object(Bucket=DATA, Key=k)["ETag"]
            for k in stack.keys(DATA, "processed/")} == before


def test_start_rejects_local_paths_and_names_the_job_and_field(stack: Stack):
    manifest = stack.manifest("local.json", {"jobs": [
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif"},
        {"input": "slides/b.tif", "output": f"s3://{DATA}/out/b.tif"},
        {"input": f"s3://{DATA}/in/a.tif", "output": "/tmp/out/c.tif"}]})
    code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--region",
                                    REGION)
    assert code == 2
    assert out == ""
    assert 'jobs[1].input: expected an s3:// URL for a run on AWS, got "slides/b.tif"' in err
    assert ('jobs[1].input: expected an s3:// URL for a run on AWS, got "slides/b.tif": a '
            "Lambda function cannot read this machine's files: upload it and give its "
            "s3://bucket/key") in err
    # an output is written, not read: no "upload it" (before, the input's advice)
    assert ('jobs[2].output: expected an s3:// URL for a run on AWS, got "/tmp/out/c.tif": a '
            "Lambda function cannot write to this machine's files: give the s3://bucket/key "
            "to write the output to, in one of the stack's data locations (deploy.py "
            "--data-bucket), and download it after the run") in err, err
    assert err.count("upload it") == 1
    assert stack.keys(NAMES.bucket, "manifests/") == []
    assert stack.client("stepfunctions").list_executions(
        stateMachineArn=NAMES.state_machine_arn)["executions"] == []

    # the same as a bare list of jobs, saved by an editor that writes a byte-order mark
    listed = stack.manifest("listed.json", [
        {"input": "slides/b.tif", "output": f"s3://{DATA}/out/b.tif"}])
    listed.write_bytes(b"\xef\xbb\xbf" + listed.read_bytes())
    code, _, err = stack.tiffpipe("start", str(listed), "--stack", STACK, "--region", REGION)
    assert code == 2
    assert 'jobs[0].input: expected an s3:// URL for a run on AWS, got "slides/b.tif"' in err

    invalid = stack.manifest("invalid.json", {"jobs": [{"input": f"s3://{DATA}/in/a.tif"}]})
    code, _, err = stack.tiffpipe("start", str(invalid), "--stack", STACK, "--region", REGION)
    assert code == 2 and "jobs[0].output: expected" in err

    # a scan's: a folder each, so a prefix to give
    scan = stack.manifest("scan.json", {"scan": {"input": "slides/", "output": "done/"}})
    code, _, err = stack.tiffpipe("start", str(scan), "--stack", STACK, "--region", REGION)
    assert code == 2
    assert ('scan.input: expected an s3:// URL for a run on AWS, got "slides/": a Lambda '
            "function cannot read this machine's files: upload the folder and give its "
            "s3://bucket/prefix/") in err, err
    assert ('scan.output: expected an s3:// URL for a run on AWS, got "done/": a Lambda '
            "function cannot write to this machine's files: give the s3://bucket/prefix/ to "
            "write the outputs under") in err, err


def test_start_refuses_locations_the_stacks_functions_cannot_reach(stack: Stack):
    """Inputs, outputs and an S3 manifest outside the stack's data locations (its functions'
    roles, read back) are refused before anything starts, naming the field and the
    locations; on AWS each job would fail on access denied only when the run reached it."""
    other = "tiffpipe-test-other"
    stack.client("s3").create_bucket(Bucket=other)
    manifest = stack.manifest("far.json", {"jobs": [
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif"},
        {"input": f"s3://{other}/in/b.tif", "output": f"s3://{DATA}/out/b.tif"},
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{other}/out/c.tif"}]})
    code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--region",
                                    REGION)
    assert (code, out) == (2, "")
    assert (f"jobs[1].input: s3://{other}/in/b.tif is outside what the stack's functions may "
            f"read (s3://{DATA}/)") in err
    assert (f"jobs[2].output: s3://{other}/out/c.tif is outside what the stack's functions may "
            f"write (s3://{DATA}/)") in err
    assert f"deploy.py --stack {STACK} --data-bucket" in err and "jobs[0]" not in err
    stack.client("s3").put_object(Bucket=other, Key="m.json", Body=json.dumps(
        {"jobs": [{"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif"}]}))
    code, out, err = stack.tiffpipe("start", f"s3://{other}/m.json", "--stack", STACK,
                                    "--region", REGION)
    assert (code, out) == (2, "")
    assert (f"manifest: s3://{other}/m.json is outside what the stack's functions may read "
            f"(s3://{NAMES.bucket}/manifests/, s3://{DATA}/)") in err
    assert stack.keys(NAMES.bucket, "manifests/") == []
    assert stack.client("stepfunctions").list_executions(
        stateMachineArn=NAMES.state_machine_arn)["executions"] == []
    # a state machine of another account with this stack's name: its roles are not these
    from pipeline.aws.executions import Target, stack_reach

    clients = Clients(REGION, session=stack.session)
    ours = Target(NAMES.state_machine_arn, NAMES.bucket, STACK)
    assert stack_reach(clients, ours) is not None
    other = NAMES.state_machine_arn.replace(f":{NAMES.account}:", ":210987654321:")
    assert stack_reach(clients, Target(other, NAMES.bucket, STACK)) is None


def test_executions_get_unique_readable_names_and_an_s3_manifest_is_used_in_place(stack: Stack):
    """Two runs started back to back get names of their own. Their manifests write different
    outputs: moto fails one of two PutObject calls on one key at once
    (docs/moto-bugs/concurrent_put_same_key.py; AWS keeps the last)."""
    for k in range(2):
        stack.client("s3").put_object(Bucket=DATA, Key=f"manifests/m{k}.json", Body=json.dumps(
            {"jobs": [{"input": "../in/a.tif", "output": f"../out/rel{k}.tif"}]}).encode())
    arns = []
    for k in range(2):
        code, out, err = stack.tiffpipe("start", f"s3://{DATA}/manifests/m{k}.json", "--stack",
                                        STACK, "--region", REGION)
        assert code == 0, err
        assert "tiffpipe status arn:" in err
        arns.append(out.strip())
    names = [a.rsplit(":", 1)[-1] for a in arns]
    assert all(RUN_NAME.match(n) for n in names) and names[0] != names[1]
    assert stack.keys(NAMES.bucket, "manifests/") == []  # not uploaded: already in S3
    code, out, err = stack.tiffpipe("status", arns[0], "--wait", "--poll", "0.05")
    assert code == 0, err
    assert f"s3://{DATA}/out/rel0.tif" in out


def _stand_in(stack: Stack, name: str, states: dict[str, Any]) -> str:
    """A small state machine tagged with the stack's bucket (as deploy.py tags its own)."""
    sfn = stack.client("stepfunctions")
    return sfn.create_state_machine(
        name=name, roleArn=NAMES.role_arn(NAMES.state_machine_role),
        definition=json.dumps({"StartAt": "Only", "States": {"Only": states}}),
        tags=[{"key": BUCKET_TAG, "value": NAMES.bucket}])["stateMachineArn"]


def test_status_renders_a_report_and_a_failed_execution(stack: Stack):
    report = {"run_id": "r1", "manifest": "s3://x/m.json", "seconds": 3.5, "succeeded": 1,
              "failed": 0, "jobs": [{"job": 0, "status": "SUCCEEDED", "input": "s3://x/a.tif",
                                     "output": "s3://x/out/a.tif", "pages": 2,
                                     "megapixels": 1.5, "seconds": 3.1}]}
    stack.client("s3").put_object(Bucket=NAMES.bucket, Key="reports/r1.json",
                                  Body=json.dumps(report).encode())
    done = _stand_in(stack, "tiffpipe-done", {"Type": "Pass", "End": True, "Result": {
        "report": f"s3://{NAMES.bucket}/reports/r1.json", "succeeded": 1, "failed": 0}})
    manifest = stack.manifest("m.json", JOBS)
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", done, "--wait",
                                    "--region", REGION, "--poll", "0.05")
    assert code == 0, err
    # a state machine of no stack (no stack tag): no roles to read the locations from
    assert ("the manifest's locations are not checked against the stack's data locations: "
            "the state machine has no tiffpipe:stack tag") in err
    assert "run r1: 1 succeeded, 0 failed" in out and "s3://x/out/a.tif" in out

    boom = _stand_in(stack, "tiffpipe-boom", {"Type": "Fail", "Error": "StorageError",
                                              "Cause": "the bucket went away"})
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", boom, "--wait",
                                    "--region", REGION, "--poll", "0.05")
    assert code == 1
    assert "ended FAILED: StorageError: the bucket went away" in err

    # PlanRun's ManifestError of a manifest that is not JSON (its lines, the caret under
    # the column): the line that says how the run ended says it on one line
    from pipeline.core.manifest import load_manifest
    from pipeline.errors import ManifestError

    with pytest.raises(ManifestError) as invalid:
        load_manifest('{"jobs": [1,]}', "s3://b/m.json", "s3://b")
    cause = {"errorType": "ManifestError", "errorMessage": str(invalid.value),
             "stackTrace": []}
    planned = _stand_in(stack, "tiffpipe-badjson", {"Type": "Fail", "Error": "ManifestError",
                                                    "Cause": json.dumps(cause)})
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", planned,
                                    "--wait", "--region", REGION, "--poll", "0.05")
    assert code == 1
    ended = [line for line in err.splitlines() if "ended FAILED" in line]
    assert len(ended) == 1 and ended[0].endswith(
        "ended FAILED: ManifestError: s3://b/m.json: 1 problem(s) in the manifest: line 1, "
        "column 13: invalid JSON: Expecting value; a trailing comma (line 1, column 12) "
        'before ]: remove it, JSON takes no comma after the last item | {"jobs": [1,]}'), err


class _Gone(io.StringIO):
    """A stream whose reader has gone (``| head`` has ended): every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_status_exits_with_what_the_run_did_when_its_output_cannot_be_shown(stack: Stack):
    """``tiffpipe status ARN | head`` (and ``2>&1 | head``): the summary (or the line that
    says the run failed) cannot be written, its reader gone; the exit code is still the
    run's, as ``tiffpipe run``'s is (it was 0, whatever the run did)."""
    report = {"run_id": "r2", "manifest": "s3://x/m.json", "seconds": 1.0, "succeeded": 0,
              "failed": 1, "jobs": [{"job": 0, "status": "FAILED", "input": "s3://x/a.tif",
                                     "output": "s3://x/out/a.tif",
                                     "error": {"type": "CorruptTiffError", "message": "bad"}}]}
    stack.client("s3").put_object(Bucket=NAMES.bucket, Key="reports/r2.json",
                                  Body=json.dumps(report).encode())
    failed_job = _stand_in(stack, "tiffpipe-failed-job", {"Type": "Pass", "End": True,
                                                          "Result": {
        "report": f"s3://{NAMES.bucket}/reports/r2.json", "succeeded": 0, "failed": 1}})
    boom = _stand_in(stack, "tiffpipe-boom2", {"Type": "Fail", "Error": "StorageError",
                                               "Cause": "the bucket went away"})
    sfn = stack.client("stepfunctions")
    for machine in (failed_job, boom):
        arn = sfn.start_execution(stateMachineArn=machine, name="run-x")["executionArn"]
        with contextlib.redirect_stdout(_Gone()), contextlib.redirect_stderr(_Gone()):
            assert cli.main(["status", arn, "--wait", "--poll", "0.05"]) == 1, machine


def test_a_run_that_fails_before_its_jobs_says_why_in_words(stack: Stack):
    """A run whose PlanRun fails (a scheduled run's manifest broken since the deploy) ends
    FAILED with Lambda's error as its Cause: the JSON of the error, its request id and its
    stack trace, which ``status`` printed as it was, the manifest's problems on one line
    between escaped newlines. It says the error's name and message, as the report would."""
    s3 = stack.client("s3")
    s3.put_object(Bucket=NAMES.bucket, Key="manifests/schedule.json", Body=json.dumps(
        {"jobs": [{"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/s.tif",
                   "ops": [{"op": "gaussian_blur", "sigma": -1}]}]}).encode())
    # what the schedule deploy.py makes starts (the Scheduler fills in its execution id)
    scheduled = json.dumps(schedule_input(NAMES, f"s3://{NAMES.bucket}/manifests/schedule.json"))
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=NAMES.state_machine_arn, name="sched-1",
                              input=scheduled.replace(EXECUTION_ID, "sched-1"))["executionArn"]
    code, out, err = stack.tiffpipe("status", arn, "--wait", "--poll", "0.05")
    assert code == 1 and out == "", err
    assert (f"the run sched-1 ended FAILED: ManifestError: s3://{NAMES.bucket}/manifests/"
            "schedule.json: 1 problem(s) in the manifest: "
            "jobs[0].ops[0].sigma: expected a number > 0") in err, err
    assert "stackTrace" not in err and "errorType" not in err and "\\n" not in err


def test_a_rerun_manifest_of_a_running_run_is_said_not_written(stack: Stack, tmp_path: Path):
    """``status ARN --rerun-manifest rr.json`` of a run still going exited 0 writing no file
    and saying nothing: a script went on to start a manifest that was not there. It says no
    rerun manifest was written because the run is still running, and how to have it when it
    ends; exit 0, as status of a running run (the rerun's absence is said, not an error)."""
    slow = _stand_in(stack, "tiffpipe-slow2", {"Type": "Wait", "Seconds": 30, "End": True})
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=slow, name="run-slow2",
                              input="{}")["executionArn"]
    rerun = tmp_path / "rr.json"
    try:
        for json_flag in ([], ["--json"]):
            code, out, err = stack.tiffpipe("status", arn, "--rerun-manifest", str(rerun),
                                            *json_flag)
            assert code == 0, err
            assert ("RUNNING" in out) and not rerun.exists()
            assert err == (f"tiffpipe: no --rerun-manifest written: the run run-slow2 is still "
                           "running (the jobs a rerun may mend are known when it has ended): "
                           f"run tiffpipe status {arn} --wait --rerun-manifest {rerun} to write "
                           "it when the run ends, or this command again then\n"), err
    finally:
        sfn.stop_execution(executionArn=arn)


def test_status_wait_json_stopped_by_ctrl_c_prints_its_error_document(stack: Stack):
    """``status --wait --json`` promises one JSON document on stdout in every outcome, but
    Ctrl-C while it followed a run printed none (only "tiffpipe: interrupted" on stderr,
    exit 130): a script's json.load of its output failed. It prints the error document
    now, type KeyboardInterrupt; without --json, nothing on stdout, as before."""
    import signal
    import threading

    slow = _stand_in(stack, "tiffpipe-slow3", {"Type": "Wait", "Seconds": 30, "End": True})
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=slow, name="run-slow3",
                              input="{}")["executionArn"]
    try:
        for json_flag in (["--json"], []):
            ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
            ctrl_c.start()  # (as a terminal's Ctrl-C: SIGINT, while status --wait follows)
            try:
                code, out, err = stack.tiffpipe("status", arn, "--wait", "--poll", "0.05",
                                                *json_flag)
            finally:
                ctrl_c.join()
            assert code == 130 and err.endswith("tiffpipe: interrupted (Ctrl-C): the run goes "
                                                "on, on AWS\n" if json_flag else
                                                "tiffpipe: interrupted\n"), err
            if json_flag:
                doc = json.loads(out)
                assert doc["execution"] == arn and doc["error"] == {
                    "type": "KeyboardInterrupt",
                    "message": "interrupted (Ctrl-C): the run goes on, on AWS"}
            else:
                assert "{" not in out, out
    finally:
        sfn.stop_execution(executionArn=arn)


def test_status_of_a_running_execution_and_of_unknown_ones(stack: Stack):
    slow = _stand_in(stack, "tiffpipe-slow", {"Type": "Wait", "Seconds": 30, "End": True})
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=slow, name="run-slow", input="{}")["executionArn"]
    try:
        code, out, err = stack.tiffpipe("status", arn)
        assert code == 0, err
        assert out.strip() == "run-slow: RUNNING: planning (no map run yet)"
        code, out, err = stack.tiffpipe("status", arn, "--region", REGION)
        assert code == 0 and out.strip().startswith("run-slow: RUNNING"), err
        other = "eu-west-1" if REGION != "eu-west-1" else "us-east-1"
        code, out, err = stack.tiffpipe("status", arn, "--region", other)
        assert code == 2 and out == ""
        assert f"--region {other} is not the region of {arn} ({REGION})" in err
    finally:
        sfn.stop_execution(executionArn=arn)

    code, _, err = stack.tiffpipe("status", arn.replace("run-slow", "run-none"))
    assert code == 2 and "no execution" in err
    code, _, err = stack.tiffpipe("start", str(stack.manifest("m.json", JOBS)), "--stack",
                                  "nope", "--region", REGION)
    assert code == 2 and "deploy it first" in err


def test_start_refuses_a_list_of_jobs_a_running_execution_is_running(stack: Stack):
    """``start`` of a list of jobs while an execution of the same jobs is running (the same
    S3 manifest, or the same local file, which each start uploads anew) is refused before
    anything is uploaded or started, exit 2, naming that execution and what to do, as a
    local run of the same manifest is (exit 75: try again later); another manifest's jobs
    and a scan start. Before,
    both ran every job at once, writing the same outputs. (A stand-in state machine whose
    execution waits: one of the stack's would end within the test.)"""
    slow = _stand_in(stack, "tiffpipe-slow", {"Type": "Wait", "Seconds": 60, "End": True})
    sfn = stack.client("stepfunctions")
    manifest = stack.manifest("m.json", JOBS)
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", slow)
    assert code == 0, err
    first = out.strip()
    uploaded = stack.keys(NAMES.bucket, "manifests/")
    try:
        again = stack.manifest("again.json", JOBS)  # the same jobs, under another name
        for given in (manifest, again):
            code, out, err = stack.tiffpipe("start", str(given), "--state-machine", slow)
            assert (code, out) == (75, ""), err  # (try again later: EX_TEMPFAIL)
            assert (f"tiffpipe: {given}: execution {first} is running this manifest (the same "
                    "jobs) now: a second run would do every job again and write the same "
                    f"outputs at once. Wait for it to end (tiffpipe status {first} --wait), or "
                    "stop it (aws stepfunctions stop-execution --execution-arn "
                    f"{first}), then start again") in err, err
        assert stack.keys(NAMES.bucket, "manifests/") == uploaded  # nothing uploaded
        url = f"s3://{DATA}/manifests/m.json"
        stack.client("s3").put_object(Bucket=DATA, Key="manifests/m.json",
                                      Body=manifest.read_bytes())
        code, _, err = stack.tiffpipe("start", url, "--state-machine", slow)
        assert code == 75 and f"{url}: execution {first} is running" in err, err
        other = stack.manifest("other.json", {"jobs": JOBS["jobs"][:1]})
        code, out, err = stack.tiffpipe("start", str(other), "--state-machine", slow)
        assert code == 0, err
        sfn.stop_execution(executionArn=out.strip())
        scan = stack.manifest("scan.json", {"scan": {"input": f"s3://{DATA}/incoming/",
                                                     "output": f"s3://{DATA}/processed/"}})
        for _ in range(2):  # (its PlanRun defers to the earlier run)
            code, out, err = stack.tiffpipe("start", str(scan), "--state-machine", slow)
            assert code == 0, err
            sfn.stop_execution(executionArn=out.strip())
    finally:
        sfn.stop_execution(executionArn=first)
    code, out, err = stack.tiffpipe("start", str(again), "--state-machine", slow)
    assert code == 0, err  # that execution has ended
    sfn.stop_execution(executionArn=out.strip())


def test_progress_shows_the_jobs_first_then_the_running_jobs_maps():
    from pipeline.aws.executions import progress_line

    totals = {"Process": {"runs": 2, "total": 10, "succeeded": 4, "running": 6},
              "Split": {"runs": 2, "total": 4, "succeeded": 4},
              "Jobs": {"runs": 1, "total": 1000, "succeeded": 12, "running": 8}}
    assert progress_line(totals) == ("jobs 12/1000 done; Split 4/4 items (2 map run(s)); "
                                     "Process 4/10 items (2 map run(s))")


@pytest.mark.parametrize(("given", "what"), [
    ("nonsense", "not an execution ARN"),
    ("20261127-152810-e8cdad", "a run's id, not its execution ARN (on AWS the id ends the ARN)"),
    ("run-20261127-152810-e8cdad",
     "a run's id, not its execution ARN (on AWS the id ends the ARN)"),
    (f"arn:aws:states:{REGION}:123456789012:stateMachine:tiffpipe-main",
     "a state machine's ARN, not an execution's"),
    (f"arn:aws:states:{REGION}:123456789012:execution:tiffpipe-main",
     "not an execution ARN"),  # (no name)
])
def test_status_of_what_is_no_execution_arn_says_what_it_takes(
        given: str, what: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``tiffpipe status nonsense`` said the AWS region was missing (or the credentials):
    the argument is checked first, exit 2, naming what status takes, before any AWS call
    (here none could be made: no region, no credentials)."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        code = cli.main(["status", given])
    assert (code, out.getvalue()) == (2, "")
    assert err.getvalue() == (
        f"tiffpipe: status: {given!r} is {what}: status takes the one tiffpipe start printed "
        "(arn:aws:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME), of a run on AWS; a "
        "local run (tiffpipe run) has no status to follow: its report "
        "(<manifest>.report.json beside its manifest) says how it went\n")


@pytest.mark.parametrize(("given", "what"), [
    ("tiffpipe-main", "a name, not an ARN"),
    ("arn:aws:states:eu-west-2:1234:stateMachine:tiffpipe-main", "not a state machine ARN"),
    ("arn:aws:lambda:eu-west-2:123456789012:function:tiffpipe-main-split",
     "not a state machine ARN"),
    ("arn:aws:states:eu-west-2:123456789012:execution:tiffpipe-main:run-x",
     "an execution's ARN, not its state machine's"),
    ("arn:aws:states:eu-west-2:123456789012:stateMachine:tiffpipe-main:3",
     "a state machine version's or alias's ARN, not the state machine's"),
])
def test_start_with_what_is_no_state_machine_arn_says_what_it_takes(
        given: str, what: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``tiffpipe start m.json --state-machine tiffpipe-main`` went to AWS with it (and was
    told of a missing region, or credentials, or a state machine not deployed): the value
    is checked first, exit 2, naming the option and what it takes, before any AWS call
    (here none could be made: no region, no credentials)."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        code = cli.main(["start", str(tmp_path / "m.json"), "--state-machine", given])
    assert (code, out.getvalue()) == (2, "")
    assert err.getvalue() == (
        f"tiffpipe: start: --state-machine {given!r} is {what}: --state-machine takes the "
        "state machine's ARN (arn:aws:states:REGION:ACCOUNT:stateMachine:NAME, as deploy.py "
        "prints it); for a stack deploy.py made, give --stack NAME instead\n")
    # a state machine's ARN (any partition) passes, on to AWS: here, no credentials
    for arn in ("arn:aws:states:eu-west-2:123456789012:stateMachine:tiffpipe-main",
                "arn:aws-cn:states:cn-north-1:123456789012:stateMachine:tiffpipe-main"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["start", str(tmp_path / "m.json"), "--state-machine", arn])
        assert code == 2 and "no AWS credentials found" in err.getvalue(), err.getvalue()


def _served_stand_in(session: Any, endpoint: str, names: StackNames) -> str:
    """A stack of ``names`` on the server at ``endpoint``: its bucket, and a state machine
    of one Pass state tagged with it; the state machine's ARN."""
    session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=names.bucket)
    return str(session.client("stepfunctions", endpoint_url=endpoint).create_state_machine(
        name=names.state_machine, roleArn=names.role_arn(names.state_machine_role),
        definition=json.dumps({"StartAt": "Only", "States": {"Only": {"Type": "Pass",
                                                                      "End": True}}}),
        tags=[{"key": BUCKET_TAG, "value": names.bucket}])["stateMachineArn"])


def test_start_and_status_send_every_call_to_the_endpoint_url(
        moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``--endpoint-url``, as deploy.py has it: start and status took their endpoint from
    AWS_ENDPOINT_URL only. Given it, every call of theirs goes to a moto server (the state
    machine's tag, the manifest's upload, the check for a running run, the start, the
    status), though AWS_ENDPOINT_URL names a port where nothing answers; a value that is no
    URL is a usage error naming the option, before any call."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(storage, "_client", None)
    session = boto3.Session(region_name=REGION)
    s3 = session.client("s3", endpoint_url=moto_server)
    sfn = session.client("stepfunctions", endpoint_url=moto_server)
    machine = _served_stand_in(session, moto_server, NAMES)
    stack = Stack(session, tmp_path)
    manifest = stack.manifest("m.json", JOBS)
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", machine,
                                    "--endpoint-url", moto_server)
    assert code == 0, err
    arn = out.strip()
    run_id = arn.rsplit(":", 1)[-1].removeprefix("run-")
    assert f"uploaded {manifest} to s3://{NAMES.bucket}/manifests/{run_id}.json" in err
    assert json.loads(s3.get_object(Bucket=NAMES.bucket, Key=f"manifests/{run_id}.json")
                      ["Body"].read()) == JOBS
    assert json.loads(sfn.describe_execution(executionArn=arn)["input"])["run_id"] == run_id
    code, out, err = stack.tiffpipe("status", arn, "--json", "--endpoint-url", moto_server)
    assert code == 0, err
    assert json.loads(out)["execution"] == arn
    assert json.loads(out)["schema"] == 1  # (the layout's version, as every --json's)
    for command in (["status", arn], ["start", str(manifest), "--state-machine", machine]):
        code, out, err = stack.tiffpipe(*command, "--endpoint-url", "localhost:4566")
        assert (code, out) == (2, ""), err
        assert err == ("tiffpipe: --endpoint-url 'localhost:4566': expected an http:// or "
                       "https:// URL, e.g. http://localhost:4566\n")


def test_status_json_says_its_error_as_json_and_an_unreachable_endpoint_exits_75(
        moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``status --json`` promises one JSON document on stdout; an execution that does not
    exist, an endpoint that does not answer and an argument that is no ARN printed nothing
    there (exit 2, 1, 2). Each now prints ``{"execution", "error": {"type", "message"}}``,
    the message said on stderr as before; an endpoint that cannot be reached, a condition
    to try again later, exits 75 (EX_TEMPFAIL), for start too (it was 1, as a failed call)."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_CONFIG_FILE", str(tmp_path / "none")), ("AWS_MAX_ATTEMPTS", "1")):
        monkeypatch.setenv(var, value)
    stack = Stack(boto3.Session(region_name=REGION), tmp_path)
    arn = f"arn:aws:states:{REGION}:123456789012:execution:tiffpipe-x:run-none"
    nowhere = "http://127.0.0.1:9"  # (the discard port: nothing answers there)
    outcomes = {}
    for label, args in (("missing", [arn, "--endpoint-url", moto_server]),
                        ("unreachable", [arn, "--endpoint-url", nowhere]),
                        ("usage", ["run-none"])):
        code, out, err = stack.tiffpipe("status", "--json", *args)
        doc = json.loads(out)
        assert doc["execution"] == args[0]
        assert err == f"tiffpipe: {doc['error']['message']}\n", err
        outcomes[label] = (code, doc["error"]["type"])
    assert outcomes == {"missing": (2, "StackNotFoundError"),
                        "unreachable": (75, "EndpointConnectionError"),
                        "usage": (2, "UsageError")}
    manifest = stack.manifest("m.json", JOBS)
    machine = f"arn:aws:states:{REGION}:123456789012:stateMachine:tiffpipe-x"
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", machine,
                                    "--endpoint-url", nowhere)
    assert (code, out) == (75, ""), err
    assert "Could not connect to the endpoint URL" in err, err


def test_starts_follow_hint_repeats_the_profile_endpoint_and_region(
        moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``follow it with: tiffpipe status ARN`` left out the ``--profile`` and
    ``--endpoint-url`` start was given: run as printed, status went to AWS (or to
    AWS_ENDPOINT_URL) without those credentials. Now it repeats them, and ``--region`` when
    given; run as printed, it shows the run."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
    credentials = tmp_path / "credentials"
    credentials.write_text("[ops]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(storage, "_client", None)
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    machine = _served_stand_in(session, moto_server, StackNames("hint", "123456789012", REGION))
    stack = Stack(session, tmp_path)
    manifest = stack.manifest("m.json", JOBS)
    code, out, err = stack.tiffpipe("start", str(manifest), "--state-machine", machine,
                                    "--profile", "ops", "--region", REGION,
                                    "--endpoint-url", moto_server)
    assert code == 0, err
    arn = out.strip()
    hint = (f"tiffpipe status {arn} --region {REGION} --profile ops --endpoint-url "
            f"{moto_server}")
    assert f"follow it with: {hint}\n" in err, err
    code, out, err = stack.tiffpipe(*shlex.split(hint)[1:], "--json")
    assert code == 0, err
    assert json.loads(out)["execution"] == arn


def test_status_without_credentials_gives_starts_advice(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path):
    """No credentials anywhere: status stops as start does (exit 2, what to configure), not
    with botocore's bare "Unable to locate credentials" (exit 1)."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # (a valid manifest: start checks it before any AWS call)
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif"}]}))
    outcomes = {}
    for args in (["status", f"arn:aws:states:{REGION}:123456789012:execution:tiffpipe-main:run-x"],
                 ["start", str(tmp_path / "m.json"), "--region", REGION]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(args)
        outcomes[args[0]] = (code, err.getvalue())
    assert outcomes["status"] == outcomes["start"]
    code, err = outcomes["status"]
    assert code == 2
    assert "no AWS credentials found" in err and "aws configure" in err, err


@pytest.mark.parametrize(("region", "default", "expected"), [
    ("eu-west-2", None, "eu-west-2"), ("eu-west-2", "us-east-1", "eu-west-2"),
    (None, "us-east-1", "us-east-1"), (None, None, None)])
def test_the_region_is_aws_regions_as_for_the_aws_cli(monkeypatch, tmp_path, region, default,
                                                      expected):
    """AWS_REGION (what the AWS CLI v2 and the SDKs read first, and what the messages name)
    gives the region of `start`, `status`, deploy.py and the S3 client of a run, though
    boto3 reads only AWS_DEFAULT_REGION; without either (and no profile's), a named error."""
    from pipeline.aws import AwsError

    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))  # no profile's region
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for var, value in (("AWS_REGION", region), ("AWS_DEFAULT_REGION", default)):
        if value:
            monkeypatch.setenv(var, value)
        else:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(storage, "_client", None)
    if expected is None:
        with pytest.raises(AwsError, match="pass --region, or set AWS_REGION"):
            Clients().region  # noqa: B018
        return
    assert Clients().region == expected
    assert Clients()("stepfunctions").meta.region_name == expected
    assert storage.s3_client().meta.region_name == expected


def test_start_lists_local_paths_and_unreachable_locations_at_once(stack: Stack):
    """Every problem of the manifest in one refusal: a local path in one job and a location
    outside the stack's data locations in another (the second was only said once the first
    was mended)."""
    other = "tiffpipe-test-elsewhere"
    stack.client("s3").create_bucket(Bucket=other)
    manifest = stack.manifest("both.json", {"jobs": [
        {"input": "slides/b.tif", "output": f"s3://{DATA}/out/b.tif"},
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{other}/out/c.tif"}]})
    code, out, err = stack.tiffpipe("start", str(manifest), "--stack", STACK, "--region",
                                    REGION)
    assert (code, out) == (2, "")
    assert "2 problem(s)" in err
    assert 'jobs[0].input: expected an s3:// URL for a run on AWS, got "slides/b.tif"' in err
    assert (f"jobs[1].output: s3://{other}/out/c.tif is outside what the stack's functions may "
            f"write (s3://{DATA}/)") in err
    assert stack.keys(NAMES.bucket, "manifests/") == []


def test_start_lists_the_manifests_problems_whatever_the_stack(stack: Stack):
    """``tiffpipe start bad.json --stack prod`` (a stack mistyped): start looked the stack
    up before it read the manifest, and said only that no such stack was deployed; its
    problems came one fix later. The manifest is checked first, as docs/aws.md says: its
    problems, exit 2, nothing started; a valid one then meets the stack's error."""
    bad = stack.manifest("bad.json", {"jobs": [
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif",
         "ops": [{"op": "gaussian_blur", "sigma": "two"}]},
        {"input": "slides/b.tif", "output": f"s3://{DATA}/out/b.tif"}]})
    code, out, err = stack.tiffpipe("start", str(bad), "--stack", "prod", "--region", REGION)
    assert (code, out) == (2, ""), err
    assert "2 problem(s)" in err and "jobs[0].ops[0].sigma" in err, err
    assert 'jobs[1].input: expected an s3:// URL for a run on AWS' in err
    assert "no state machine" not in err
    good = stack.manifest("good.json", {"jobs": [
        {"input": f"s3://{DATA}/in/a.tif", "output": f"s3://{DATA}/out/a.tif"}]})
    code, out, err = stack.tiffpipe("start", str(good), "--stack", "prod", "--region", REGION)
    assert out == "" and code != 0
    assert "stack 'prod': no state machine" in err, err
    assert stack.keys(NAMES.bucket, "manifests/") == []
    assert stack.client("stepfunctions").list_executions(
        stateMachineArn=NAMES.state_machine_arn)["executions"] == []
