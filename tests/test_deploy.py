"""deploy.py against moto: every AWS call it makes, no real AWS and no docker.

Images come from ``--skip-build`` (fake images put into moto's ECR) or from a fake
``build_and_push``; the real docker build and push are tested with the images. A botocore
``before-call`` hook on the session records every API call, so "changes nothing" and
"writes nothing" are asserted on the calls themselves, not only on the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.awsrequest
import botocore.config
import pytest
from botocore.exceptions import ClientError
from conftest import (
    BUFFERING,
    bucket_conditions_unchecked,
    command_env,
    moto_keeps_versions_as_aws,
    run_without_reader,
)
from moto import mock_aws

from pipeline.aws import (
    STEPS,
    StackNames,
    check_region,
    check_schedule,
    deploy_steps,
    policies,
)
from pipeline.aws import images as docker_images
from pipeline.aws.actions import call_failed
from pipeline.aws.lock import LOCK_KEY
from pipeline.aws.policies import (
    LOG_DELIVERY_ACTIONS,
    DataLocation,
    function_policy,
    kms_keys_of,
    parse_kms_key,
    scheduler_policy,
    state_machine_policy,
)
from pipeline.aws.versions import PREVIOUS_KEY
from pipeline.core.constants import FUNCTION_SIZES as SIZES
from pipeline.engine import definition

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parents[1]
REGION = "eu-west-1"
ACCOUNT = "123456789012"
STACK = "t1"
NAMES = StackNames(STACK, ACCOUNT, REGION)
WRITE = re.compile(r"^(Create|Put|Update|Delete|Tag|Untag|Attach|Detach|Start|Stop|Upload|"
                   r"Complete|Abort|Batch|Set|Publish)")
_spec = importlib.util.spec_from_file_location("deploy_script", ROOT / "deploy.py")
assert _spec and _spec.loader
deploy_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy_script)


@dataclass
class Aws:
    session: Any
    calls: list[str] = field(default_factory=list)  # "service.Operation" of every call

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=REGION)

    def writes(self) -> list[str]:
        """The write calls made to the stack, the deploy lock's left out (every command that
        changes a stack takes and releases it: see the tests of the lock)."""
        return [c for c in self.calls if WRITE.match(c.split(".", 1)[1])
                and not c.endswith(LOCKED)]

    def deploy(self, *args: str, **hooks: Any) -> tuple[int, dict[str, Any] | None, str]:
        """Run deploy.py's main; (exit code, stdout JSON, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        hooks.setdefault("sleep", lambda s: None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = deploy_script.main(["--stack", STACK, "--region", REGION, *args],
                                      session=self.session, **hooks)
        return code, json.loads(out.getvalue()) if out.getvalue().strip() else None, \
            err.getvalue()


#: the tag deploy puts on every resource it makes (the stack's: not another's)
STACK_TAG = {"Key": "tiffpipe:stack", "Value": STACK}
#: what ends the record of a call on the deploy lock's object
LOCKED = " " + LOCK_KEY


def _recording_session(calls: list[str]) -> Any:
    session = boto3.Session(region_name=REGION)

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        on_lock = str(params.get("url_path", "")).split("?")[0].endswith(LOCK_KEY)
        calls.append(f"{model.service_model.service_name}.{model.name}"
                     + (LOCKED if on_lock else ""))
    session.events.register("before-call.*.*", record)
    return session


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)


#: the buckets the tests name as data locations, made by the fixture (not by deploy)
DATA_BUCKETS = ("data-in", "data-out", "more-data", "results", "slides")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    _clean_env(monkeypatch)
    bucket_conditions_unchecked(monkeypatch)  # (the stack bucket's HTTPS-only statement)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        calls: list[str] = []
        session = _recording_session(calls)
        for bucket in DATA_BUCKETS:  # deploy checks that a data location's bucket exists
            session.client("s3").create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        calls.clear()
        yield Aws(session, calls)


def push_fake_images(aws: Aws, version: str = "v1", arch: str = "arm64",
                     keep_old: bool = False) -> dict[str, str]:
    """What a build would leave: the stack's repositories (tagged as deploy makes them),
    each with one image tagged as built for ``arch`` (older ones are removed unless
    ``keep_old``: moto's push times have whole seconds, so "the latest" would be a tie)."""
    ecr = aws.client("ecr")
    digests = {}
    for step in STEPS:
        name = NAMES.repository(step)
        with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
            ecr.create_repository(repositoryName=name, tags=[STACK_TAG])
        old = ecr.list_images(repositoryName=name)["imageIds"]
        if old and not keep_old:
            ecr.batch_delete_image(repositoryName=name, imageIds=old)
        layer = "sha256:" + hashlib.sha256(f"{step}-{version}-{arch}".encode()).hexdigest()
        manifest = {"schemaVersion": 2, "config": {"size": 1000},
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "layers": [{"digest": layer}]}
        image = ecr.put_image(repositoryName=name, imageManifest=json.dumps(manifest),
                              imageTag=docker_images.tag_prefix(arch) + version)["image"]
        digests[step] = image["imageId"]["imageDigest"]
    return digests


#: data locations that hold scan_manifest's input and output
SCAN_LOCATIONS = ("--data-bucket", "data-in/incoming", "--data-bucket", "data-out")


def scan_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps({"scan": {"input": "s3://data-in/incoming/",
                                         "output": "s3://data-out/processed/",
                                         "ops": [{"op": "gaussian_blur", "sigma": 2}]}}))
    return path


def fake_docker(calls: list[list[str]] | None = None, fail: str | None = None) -> Any:
    """A ``subprocess.run`` for docker commands: every command succeeds, except those
    containing ``fail``."""
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append(list(args))
        if fail and fail in " ".join(args):
            return subprocess.CompletedProcess(args, 1, "", f"{fail}: failed for the test")
        return subprocess.CompletedProcess(args, 0, "", "")
    return run


def fake_build(built: list[str], fail_on: str | None = None) -> Any:
    def build(step: str, arch: str, repo_uri: str, **_: Any) -> str:
        if step == fail_on:
            raise docker_images.DockerError(f"docker push {repo_uri}:x failed: connection reset")
        built.append(step)
        return "sha256:" + hashlib.sha256(f"{step}-{arch}".encode()).hexdigest()
    return build


def docker_builds(builds: list[list[str]], on_build: Any = None) -> Any:
    """A ``subprocess.run`` for the real ``build_and_push``: every docker command succeeds;
    ``docker build`` commands are kept in ``builds`` (``on_build`` sees each first, while its
    build context exists), an image's id is its step's, a push answers a digest."""
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        words = " ".join(args[1:])
        out = ""
        if words.startswith("build --help"):
            out = "  --provenance string   Shorthand for ..."
        elif args[1] == "build":
            builds.append(list(args))
            if on_build is not None:
                on_build(args)
        elif words.startswith("image inspect"):
            out = "sha256:" + hashlib.sha256(args[-1].encode()).hexdigest()
        elif args[1] == "push":
            out = f"v1: digest: sha256:{hashlib.sha256(args[-1].encode()).hexdigest()} size: 9\n"
        return subprocess.CompletedProcess(args, 0, out, "")
    return run


def build_args_of(command: list[str]) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == "--build-arg"]


# --- deploy, deploy again ----------------------------------------------------------------


def test_deploy_twice_the_second_changes_nothing_and_says_so(aws: Aws, tmp_path: Path):
    digests = push_fake_images(aws)
    manifest = scan_manifest(tmp_path)
    args = ("--skip-build", "--schedule", "cron(0 2 * * ? *)", "--schedule-manifest",
            str(manifest), "--data-bucket", "data-in/incoming", "--data-bucket", "data-out")
    code, first, err = aws.deploy(*args)
    assert code == 0, err
    assert first is not None and first["changes"], err
    assert first["functions"] == {s: NAMES.function_arn(s) for s in STEPS}
    assert first["state_machine"] == NAMES.state_machine_arn
    assert first["bucket"] == NAMES.bucket
    for step in STEPS:
        assert first["images"][step].endswith(f"/{NAMES.repository(step)}@{digests[step]}")

    aws.calls.clear()
    code, second, err = aws.deploy(*args)
    assert code == 0, err
    assert second is not None and second["changes"] == []
    assert "nothing changed: the stack is up to date" in err
    assert "unchanged" in err and "would" not in err
    assert aws.writes() == [], "a deploy with nothing changed made write calls"
    assert any(c.endswith("GetFunction") for c in aws.calls)  # it did look
    assert {k: v for k, v in second.items() if k != "changes"} == \
        {k: v for k, v in first.items() if k != "changes"}


def test_a_new_image_or_setting_updates_only_what_changed(aws: Aws):
    push_fake_images(aws, "v1")
    assert aws.deploy("--skip-build")[0] == 0
    new = push_fake_images(aws, "v2")
    aws.calls.clear()
    code, result, err = aws.deploy("--skip-build", "--data-bucket", "more-data")
    assert code == 0, err
    assert result is not None
    writes = aws.writes()
    assert writes.count("lambda.UpdateFunctionCode") == 3
    # every role names the new bucket (split and process read inputs, merge writes outputs);
    # each new image is a new version, which the state machine names (the one it replaces
    # is kept for --rollback; the new data locations are recorded in the bucket too)
    assert sorted(writes) == ["iam.PutRolePolicy"] * 3 + ["lambda.PublishVersion"] * 3 + [
        "lambda.UpdateFunctionCode"] * 3 + ["s3.PutObject"] * 2 + [
        "stepfunctions.UpdateStateMachine"]
    lam = aws.client("lambda")
    for step in STEPS:
        uri = lam.get_function(FunctionName=NAMES.function(step))["Code"]["ImageUri"]
        assert uri.endswith(f"@{new[step]}")
    # each change under the heading of the resource it is of (the definition kept for
    # --rollback was said under the merge function's), and named so in stdout's "changes"
    # ("update the permissions" three times: of which role?)
    assert _heading_of(err, "keep the definition it replaces") == \
        f"state machine {NAMES.state_machine}"
    assert _heading_of(err, "record the data locations") == f"bucket {NAMES.bucket}"
    assert [c for c in result["changes"] if "permissions" in c] == [
        f"IAM role {NAMES.function_role(s)}: update the permissions" for s in STEPS]
    assert all(NAMES.prefix in change for change in result["changes"]), result["changes"]


def _heading_of(log: str, text: str) -> str:
    """The heading (a line not indented) the first line of ``log`` holding ``text`` is
    under."""
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if text in line)
    return next(line for line in reversed(lines[:at]) if not line.startswith(" "))


def _definition_versions(aws: Aws) -> dict[str, str]:
    """The version of each function the deployed state machine invokes (one each)."""
    text = aws.client("stepfunctions").describe_state_machine(
        stateMachineArn=NAMES.state_machine_arn)["definition"]
    named = {}
    for arn in re.findall(r'"FunctionName": "([^"]+)"', text):
        base, _, version = arn.rpartition(":")
        step = next(s for s in STEPS if base == NAMES.function_arn(s))
        assert named.setdefault(step, version) == version, f"{step}: {arn} and {named[step]}"
    return named


def test_a_redeploy_without_data_buckets_keeps_the_deployed_ones(aws: Aws):
    """The data locations are kept unless named again, as the schedule is: a redeploy for
    another change (an image, a schedule) must not take the functions' access to the
    inputs and outputs away (every run would then fail with AccessDenied)."""
    push_fake_images(aws, "v1")
    code, _, err = aws.deploy("--skip-build", "--data-bucket", "slides/in",
                              "--data-bucket", "results")
    assert code == 0, err
    iam = aws.client("iam")

    def reads() -> list[str]:
        doc = iam.get_role_policy(RoleName=NAMES.function_role("split"),
                                  PolicyName="tiffpipe")["PolicyDocument"]
        return next(s["Resource"] for s in doc["Statement"] if s["Sid"] == "ReadInputs")

    assert reads() == ["arn:aws:s3:::results/*", "arn:aws:s3:::slides/in/*"]
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "data locations kept" in err and "s3://slides/in/" in err
    assert reads() == ["arn:aws:s3:::results/*", "arn:aws:s3:::slides/in/*"]
    assert "iam.PutRolePolicy" not in aws.writes()  # nothing changed
    # named again: replaced
    assert aws.deploy("--skip-build", "--data-bucket", "results")[0] == 0
    assert reads() == ["arn:aws:s3:::results/*"]


def test_input_buckets_are_read_only_and_kept_until_named(aws: Aws):
    """--input-bucket: originals the functions read and no output can replace (no PutObject
    on them for any role); kept by a redeploy that does not name them, removed by
    --no-input-buckets."""
    push_fake_images(aws, "v1")
    code, _, err = aws.deploy("--skip-build", "--input-bucket", "slides/in",
                              "--data-bucket", "results")
    assert code == 0, err
    iam = aws.client("iam")

    def statement(step: str, sid: str) -> list[str] | None:
        doc = iam.get_role_policy(RoleName=NAMES.function_role(step),
                                  PolicyName="tiffpipe")["PolicyDocument"]
        return next((s["Resource"] for s in doc["Statement"] if s["Sid"] == sid), None)

    def check(inputs: list[str]) -> None:
        reads = sorted(["arn:aws:s3:::results/*", *inputs])
        assert statement("split", "ReadInputs") == statement("process", "ReadInputs") == reads
        for step in ("process", "merge"):
            assert statement(step, "WriteOutputs") == ["arn:aws:s3:::results/*"]
        assert statement("merge", "ListOpenUploads") == [NAMES.bucket_arn]
        lists = sorted({"arn:aws:s3:::results"} | {i.split("/")[0] for i in inputs})
        assert statement("split", "ListDataBuckets") == lists

    check(["arn:aws:s3:::slides/in/*"])
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "read-only input locations kept (no --input-bucket): s3://slides/in/" in err
    assert "data locations kept (no --data-bucket): s3://results/" in err
    assert "iam.PutRolePolicy" not in aws.writes()
    check(["arn:aws:s3:::slides/in/*"])
    assert aws.deploy("--skip-build", "--no-input-buckets")[0] == 0
    check([])
    code, _, err = aws.deploy("--skip-build", "--no-input-buckets", "--input-bucket", "more-data")
    assert code == 2 and "contradict" in err


def test_environment_variables_an_earlier_deploy_set_are_removed(aws: Aws):
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    lam = aws.client("lambda")
    for step in STEPS:  # what earlier deploys set, and nothing read
        lam.update_function_configuration(FunctionName=NAMES.function(step), Environment={
            "Variables": {"TIFFPIPE_STACK": STACK, "TIFFPIPE_BUCKET": NAMES.bucket}})
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert sorted(aws.writes()) == ["lambda.UpdateFunctionConfiguration"] * 3
    for step in STEPS:
        config = lam.get_function_configuration(FunctionName=NAMES.function(step))
        assert not config.get("Environment", {}).get("Variables")
    aws.calls.clear()
    assert aws.deploy("--skip-build")[0] == 0
    assert aws.writes() == []


def test_a_new_size_or_schedule_updates_only_that(aws: Aws, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    push_fake_images(aws)
    manifest = str(scan_manifest(tmp_path))
    assert aws.deploy("--skip-build", "--schedule", "rate(1 day)", "--schedule-manifest",
                      manifest, *SCAN_LOCATIONS)[0] == 0
    # the /tmp size stays: moto's update_function_configuration ignores EphemeralStorage
    # (moto 5.2.5), so a changed one would read back unchanged and be "updated" again
    monkeypatch.setitem(SIZES, "merge", SIZES["merge"].__class__(4096, 600,
                                                                 SIZES["merge"].ephemeral))
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(12 hours)",
                              "--schedule-manifest", manifest)
    assert code == 0, err
    # a new version of merge alone (its configuration), which the state machine then names
    assert sorted(aws.writes()) == ["lambda.PublishVersion", "lambda.UpdateFunctionConfiguration",
                                    "s3.PutObject", "scheduler.UpdateSchedule",
                                    "stepfunctions.UpdateStateMachine"]
    assert _definition_versions(aws) == {"split": "1", "process": "1", "merge": "2"}
    config = aws.client("lambda").get_function_configuration(FunctionName=NAMES.function("merge"))
    assert (config["MemorySize"], config["Timeout"]) == (4096, 600)
    schedule = aws.client("scheduler").get_schedule(Name=NAMES.schedule)
    assert schedule["ScheduleExpression"] == "rate(12 hours)"

    aws.calls.clear()
    code, result, err = aws.deploy("--skip-build")  # no --schedule: the schedule is kept
    assert code == 0 and "kept as it is" in err and aws.writes() == []
    assert result is not None and result["schedule"] == schedule["Arn"]
    code, result, err = aws.deploy("--skip-build", "--no-schedule")
    assert code == 0, err
    assert aws.client("scheduler").list_schedules()["Schedules"] == []
    assert result is not None and result["schedule"] is None


def test_build_path_pushes_then_deploys_by_digest(aws: Aws):
    built: list[str] = []
    commands: list[list[str]] = []
    code, _, err = aws.deploy("--arch", "amd64", build=fake_build(built),
                              run=fake_docker(commands))
    assert code == 0, err
    assert built == list(STEPS)
    assert commands[0][:2] == ["docker", "info"]
    login = next(c for c in commands if c[1] == "login")
    assert login[2:5] == ["--username", "AWS", "--password-stdin"]
    lam = aws.client("lambda")
    for step in STEPS:
        fn = lam.get_function(FunctionName=NAMES.function(step))
        assert re.search(r"@sha256:[0-9a-f]{64}$", fn["Code"]["ImageUri"])
        assert fn["Configuration"]["Architectures"] == ["x86_64"]


def test_skip_build_deploys_the_latest_image_of_the_asked_architecture(aws: Aws):
    """An amd64 image pushed after the arm64 one is not what an arm64 deploy takes: Lambda
    would accept it and fail every invocation (exec format error)."""
    arm = push_fake_images(aws, "v1", "arm64")
    amd = push_fake_images(aws, "v1", "amd64", keep_old=True)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    lam = aws.client("lambda")
    for step in STEPS:
        fn = lam.get_function(FunctionName=NAMES.function(step))
        assert fn["Code"]["ImageUri"].endswith(f"@{arm[step]}")
        assert fn["Configuration"]["Architectures"] == ["arm64"]
    sent: list[dict[str, Any]] = []  # moto's update_function_code ignores Architectures
    aws.session.events.register("provide-client-params.lambda.UpdateFunctionCode",
                                lambda params, **_: sent.append(dict(params)))
    code, _, err = aws.deploy("--skip-build", "--arch", "amd64")
    assert code == 0, err
    assert sorted(p["ImageUri"] for p in sent) == sorted(
        f"{NAMES.registry()}/{NAMES.repository(step)}@{amd[step]}" for step in STEPS)
    assert all(p["Architectures"] == ["x86_64"] for p in sent)


def test_skip_build_without_an_image_of_the_architecture_changes_nothing(aws: Aws):
    push_fake_images(aws, "v1", "amd64")
    ecr = aws.client("ecr")  # and one pushed by a tiffpipe that did not tag the architecture
    ecr.put_image(repositoryName=NAMES.repository("split"), imageTag="img-" + "ab" * 8,
                  imageManifest=json.dumps({
                      "schemaVersion": 2, "config": {"size": 1}, "layers": [
                          {"digest": "sha256:" + "0" * 64}],
                      "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}))
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 1
    assert f"none of the 2 image(s) in the ECR repository {NAMES.repository('split')}" in err
    assert "built for arm64 (img-arm64-...)" in err and "without --skip-build" in err
    assert aws.writes() == []


def test_skip_build_without_the_repositories_says_they_do_not_exist(aws: Aws):
    """A stack never built (or one in another region): --skip-build said "no image in the
    ECR repository", as if it were there, empty."""
    code, _, err = aws.deploy("--skip-build")
    assert code == 1, err
    assert (f"--skip-build: there is no ECR repository {NAMES.repository('split')} (in this "
            "account and region) to deploy an image from: deploy once without --skip-build, "
            "which makes the repositories") in err
    assert aws.writes() == []

def _deployed_concurrency(aws: Aws) -> int:
    """What the deployed state machine's PlanRun shares out between a run's jobs."""
    doc = json.loads(aws.client("stepfunctions").describe_state_machine(
        stateMachineArn=NAMES.state_machine_arn)["definition"])
    return int(doc["States"]["PlanRun"]["Parameters"]["Payload"]["concurrency"])


def test_concurrency_is_set_in_the_definition_and_a_redeploy_keeps_it(aws: Aws):
    push_fake_images(aws)
    code, result, err = aws.deploy("--skip-build", "--concurrency", "100")
    assert code == 0, err
    assert result is not None and result["concurrency"] == 100
    assert _deployed_concurrency(aws) == 100
    aws.calls.clear()
    code, result, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "concurrency kept (no --concurrency): at most 100" in err
    assert result is not None and result["concurrency"] == 100 and aws.writes() == []
    code, result, err = aws.deploy("--skip-build", "--concurrency", "20000")
    assert code == 0 and _deployed_concurrency(aws) == 8000  # 8 jobs x 1,000 items at most
    for bad in ("0", "-3"):
        code, _, err = aws.deploy("--skip-build", "--concurrency", bad)
        assert code == 2 and f"--concurrency {bad}: expected at least 1" in err


def test_a_new_stack_takes_the_accounts_unreserved_concurrency(aws: Aws):
    """A new account may run 10 Lambda invocations at once: a run of 8 jobs x 1,000 would
    be throttled until its retries gave up. moto has no GetAccountSettings: its answer is
    given here, as Lambda documents it."""
    push_fake_images(aws)
    _account_concurrency(aws, 10)
    code, result, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "at most 10 Lambda invocations at once, the account's unreserved" in err
    assert result is not None and result["concurrency"] == 10
    assert _deployed_concurrency(aws) == 10


def test_a_concurrency_above_what_a_run_uses_is_said_capped(aws: Aws):
    """--concurrency 100000 was cut to 8,000 (8 jobs x 1,000 items: the most a run makes)
    without a word, and so was an account's unreserved concurrency above it. Both are said
    on stderr, with why and what to give; a total within it is not."""
    push_fake_images(aws)
    _account_concurrency(aws, 10000)
    code, result, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert ("the account's unreserved concurrency 10,000 is more than a run can use: capped "
            "at 8,000 Lambda invocations at once, the most a run makes (8 jobs at once x "
            "1,000 items of each job's map, the state machine's limits); give --concurrency "
            "8000 or less to set it exactly") in err, err
    assert result is not None and result["concurrency"] == 8000
    code, result, err = aws.deploy("--skip-build", "--concurrency", "100000")
    assert code == 0, err
    assert "--concurrency 100,000 is more than a run can use: capped at 8,000 " in err, err
    assert result is not None and result["concurrency"] == 8000
    assert _deployed_concurrency(aws) == 8000
    code, result, err = aws.deploy("--skip-build", "--concurrency", "8000")
    assert code == 0 and "capped" not in err, err


def test_a_capped_concurrency_is_said_once_with_the_value_deployed(aws: Aws):
    """An unreserved concurrency above 8,000 was said twice, the lines contradicting each
    other ("at most 10000 Lambda invocations at once", then "capped at 8,000"), and the
    capping returned the uncapped total (only the definition's limit cut it): one line now,
    the capped value, which is what the deploy goes on with."""
    push_fake_images(aws)
    _account_concurrency(aws, 10000)
    code, result, err = aws.deploy("--skip-build")
    assert code == 0, err
    said = [line for line in err.splitlines() if "Lambda invocations at once" in line]
    assert len(said) == 1 and "capped at 8,000 Lambda invocations at once" in said[0], err
    assert "at most 10000" not in err and result is not None and result["concurrency"] == 8000
    lines: list[str] = []
    assert deploy_steps._capped(100000, "--concurrency", lines.append) == 8000
    assert len(lines) == 1
    assert deploy_steps._capped(8000, "--concurrency", lines.append) == 8000 and len(lines) == 1


def _account_concurrency(aws: Aws, unreserved: int) -> None:
    """GetAccountSettings answers as Lambda documents it (moto has none)."""
    answer = {"AccountLimit": {"TotalCodeSize": 80530636800, "CodeSizeUnzipped": 262144000,
                               "CodeSizeZipped": 52428800, "ConcurrentExecutions": unreserved,
                               "UnreservedConcurrentExecutions": unreserved},
              "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 0}}
    aws.session.events.register(
        "before-call.lambda.GetAccountSettings",
        lambda **_: (type("Response", (), {"status_code": 200})(), answer))


def test_without_the_accounts_concurrency_the_definitions_limits_stay(aws: Aws):
    push_fake_images(aws)  # moto answers GetAccountSettings with an error
    code, result, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "the account's Lambda concurrency could not be read" in err
    assert "give --concurrency to set it" in err
    assert result is not None and result["concurrency"] == 8000
    assert _deployed_concurrency(aws) == 0  # no total: 8 jobs x 1,000 items
    _account_concurrency(aws, 500)  # readable now: the next deploy takes it
    code, result, err = aws.deploy("--skip-build")
    assert code == 0 and result is not None and result["concurrency"] == 500, err


# --- what was made ---------------------------------------------------------------------------


def test_created_resources_are_configured(aws: Aws, tmp_path: Path):
    push_fake_images(aws)
    manifest = scan_manifest(tmp_path)
    code, result, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                                   "--schedule-manifest", str(manifest), *SCAN_LOCATIONS)
    assert code == 0, err

    s3 = aws.client("s3")
    rule = s3.get_bucket_encryption(Bucket=NAMES.bucket)["ServerSideEncryptionConfiguration"][
        "Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=NAMES.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=NAMES.bucket)["Rules"]
    assert rule["Filter"] == {"Prefix": "work/"} and rule["Expiration"] == {"Days": 7}
    uploaded = s3.get_object(Bucket=NAMES.bucket, Key="manifests/schedule.json")["Body"].read()
    assert uploaded == manifest.read_bytes()

    ecr = aws.client("ecr")
    for step in STEPS:
        repo = ecr.describe_repositories(repositoryNames=[NAMES.repository(step)])[
            "repositories"][0]
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
        policy = json.loads(ecr.get_lifecycle_policy(repositoryName=NAMES.repository(step))[
            "lifecyclePolicyText"])
        assert policy["rules"][0]["selection"]["countNumber"] == 10

    lam = aws.client("lambda")
    for step in STEPS:
        config = lam.get_function(FunctionName=NAMES.function(step))["Configuration"]
        size = SIZES[step]
        assert (config["PackageType"], config["MemorySize"], config["Timeout"],
                config["EphemeralStorage"]["Size"]) == ("Image", size.memory, size.timeout,
                                                         size.ephemeral)
        assert config["Role"] == NAMES.role_arn(NAMES.function_role(step))
        assert config["Architectures"] == ["arm64"]
        assert not config.get("Environment", {}).get("Variables")  # none is read there

    sfn = aws.client("stepfunctions")
    machine = sfn.describe_state_machine(stateMachineArn=NAMES.state_machine_arn)
    assert "${" not in machine["definition"]
    resources = re.findall(r'"FunctionName": "([^"]+)"', machine["definition"])
    assert set(resources) == {f"{NAMES.function_arn(s)}:1" for s in STEPS}  # their versions
    assert machine["roleArn"] == NAMES.role_arn(NAMES.state_machine_role)
    [dest] = machine["loggingConfiguration"]["destinations"]
    assert dest["cloudWatchLogsLogGroup"]["logGroupArn"] == \
        NAMES.log_group_arn(NAMES.state_machine_log_group)
    groups = [g["logGroupName"] for g in aws.client("logs").describe_log_groups()["logGroups"]]
    assert sorted(groups) == sorted(NAMES.log_groups)

    schedule = aws.client("scheduler").get_schedule(Name=NAMES.schedule)
    assert schedule["ScheduleExpression"] == "rate(1 day)"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert target["Arn"] == NAMES.state_machine_arn
    assert target["RoleArn"] == NAMES.role_arn(NAMES.scheduler_role)
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    run_id = "<aws.scheduler.execution-id>"
    assert json.loads(target["Input"]) == {
        "manifest": f"s3://{NAMES.bucket}/manifests/schedule.json",
        "work": f"s3://{NAMES.bucket}/work/{run_id}/", "run_id": run_id,
        "report": f"s3://{NAMES.bucket}/reports/{run_id}.json"}
    assert result is not None and result["schedule"] == schedule["Arn"]


def _statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["Statement"]


def _resources(statement: dict[str, Any]) -> list[str]:
    res = statement["Resource"]
    return [res] if isinstance(res, str) else res


def test_every_role_is_scoped(aws: Aws, tmp_path: Path):
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                              "--schedule-manifest", str(scan_manifest(tmp_path)),
                              *SCAN_LOCATIONS)
    assert code == 0, err
    iam = aws.client("iam")
    roles = {r["RoleName"]: r for r in iam.list_roles()["Roles"]}
    assert set(roles) == {NAMES.function_role(s) for s in STEPS} | {
        NAMES.state_machine_role, NAMES.scheduler_role}
    for name in roles:
        assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
        [policy] = iam.list_role_policies(RoleName=name)["PolicyNames"]
        doc = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        for statement in _statements(doc):
            assert statement["Effect"] == "Allow"
            if "*" in _resources(statement):
                # only the CloudWatch Logs delivery actions, which AWS cannot scope
                assert name == NAMES.state_machine_role
                assert set(statement["Action"]) <= set(LOG_DELIVERY_ACTIONS)

    def doc(role: str) -> dict[str, Any]:
        return iam.get_role_policy(RoleName=role, PolicyName="tiffpipe")["PolicyDocument"]

    states = _statements(doc(NAMES.state_machine_role))
    invoke = [s for s in states if "lambda:InvokeFunction" in s["Action"]]
    assert len(invoke) == 1
    arns = [NAMES.function_arn(s) for s in STEPS]
    assert sorted(_resources(invoke[0])) == sorted(arns + [f"{a}:*" for a in arns])
    start = [s for s in states if "states:StartExecution" in s["Action"]]
    assert [_resources(s) for s in start] == [[NAMES.state_machine_arn]]
    # the Jobs map's ItemReader: the job lists of the stack's runs, read only
    reads = [s for s in states if any(a.startswith("s3:") for a in s["Action"])]
    assert [(s["Action"], _resources(s)) for s in reads] == [
        (["s3:GetObject"], [f"{NAMES.bucket_arn}/work/*/jobs.json"])]

    assert _statements(doc(NAMES.scheduler_role)) == [{
        "Sid": "StartOwnStateMachine", "Effect": "Allow", "Action": ["states:StartExecution"],
        "Resource": [NAMES.state_machine_arn]}]
    trust = roles[NAMES.scheduler_role]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}

    # S3: the stack bucket's prefixes and the named data locations, nothing else
    allowed = (f"{NAMES.bucket_arn}/work/*", f"{NAMES.bucket_arn}/manifests/*",
               f"{NAMES.bucket_arn}/reports/*", "arn:aws:s3:::data-in/incoming/*",
               "arn:aws:s3:::data-out/*", f"{NAMES.bucket_arn}/work/*/errors/*",
               f"{NAMES.bucket_arn}/work/*/jobs/*/uploads/*")
    for step in STEPS:
        for statement in _statements(doc(NAMES.function_role(step))):
            for resource in _resources(statement):
                if resource.startswith("arn:aws:s3"):
                    if statement["Action"] in (["s3:ListBucket"],
                                               ["s3:ListBucketMultipartUploads"]):
                        assert resource in (NAMES.bucket_arn, "arn:aws:s3:::data-in",
                                            "arn:aws:s3:::data-out")
                    else:
                        assert resource in allowed, (step, resource)
                elif resource.startswith("arn:aws:states"):
                    # split's plan_run of a scan: the stack's own running executions, read
                    assert step == "split", (step, statement)
                    assert (statement["Action"], resource) in (
                        (["states:ListExecutions"], NAMES.state_machine_arn),
                        (["states:DescribeExecution"], NAMES.executions_arn))
                else:
                    assert resource == NAMES.log_group_arn(NAMES.function_log_group(step))


def test_policy_documents_are_pure_and_least_privilege():
    data = [DataLocation.parse("s3://in-bucket/raw/"), DataLocation.parse("out-bucket")]
    process = function_policy("process", NAMES, data)
    split = function_policy("split", NAMES, data)
    for doc_ in (split, process):  # process reads inputs for fused units, never writes them
        reads = next(s for s in doc_["Statement"] if s["Sid"] == "ReadInputs")
        assert reads["Action"] == ["s3:GetObject"]
        assert reads["Resource"] == ["arn:aws:s3:::in-bucket/raw/*", "arn:aws:s3:::out-bucket/*"]
        assert "s3:PutObject" not in json.dumps(reads)
    # process writes work files, and outputs (a ProcessJob publishes its job's, as merge)
    data_writes = [s for s in process["Statement"] if "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in data_writes] == [
        [f"{NAMES.bucket_arn}/work/*"],
        ["arn:aws:s3:::in-bucket/raw/*", "arn:aws:s3:::out-bucket/*"]]
    assert data_writes[1]["Action"] == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert "WriteReports" not in json.dumps(process)
    assert "ReadManifests" not in json.dumps(process)
    merge = function_policy("merge", NAMES, data)
    # merge reads an XMP packet too large for the plan from the input, and may list the
    # data buckets as split and process may: an input deleted since is a 404 (not found),
    # not a 403 (denied), to it as to them
    reads = next(s for s in merge["Statement"] if s["Sid"] == "ReadInputs")
    assert reads["Action"] == ["s3:GetObject"]
    assert reads["Resource"] == ["arn:aws:s3:::in-bucket/raw/*", "arn:aws:s3:::out-bucket/*"]
    for doc_ in (split, process, merge):
        lists = next(s for s in doc_["Statement"] if s["Sid"] == "ListDataBuckets")
        assert (lists["Action"], lists["Resource"]) == (
            ["s3:ListBucket"], ["arn:aws:s3:::in-bucket", "arn:aws:s3:::out-bucket"])
    writes = next(s for s in merge["Statement"] if s["Sid"] == "WriteOutputs")
    assert writes["Action"] == ["s3:AbortMultipartUpload", "s3:PutObject"]
    looks = next(s for s in merge["Statement"] if s["Sid"] == "LookAtOutputs")
    assert (looks["Action"], looks["Resource"]) == (["s3:GetObject"], writes["Resource"])
    # the failure sweep lists open uploads under the stack bucket's work only: an output's
    # are aborted by the ids its merge recorded (another run's there are not the job's)
    uploads = next(s for s in merge["Statement"] if s["Sid"] == "ListOpenUploads")
    assert uploads["Action"] == ["s3:ListBucketMultipartUploads"]
    assert uploads["Resource"] == [NAMES.bucket_arn]
    assert not any("ListBucketMultipartUploads" in json.dumps(s) for s in (split, process))
    # nothing is deleted but the error records a retried item's failed attempt left (split,
    # process) and the records of the output uploads a step ended (process, merge)
    errors = (["s3:DeleteObject"], [f"{NAMES.bucket_arn}/work/*/errors/*"])
    records = (["s3:DeleteObject"], [f"{NAMES.bucket_arn}/work/*/jobs/*/uploads/*"])
    for doc_, want in ((split, [errors]), (process, [errors, records]), (merge, [records])):
        deletes = [s for s in doc_["Statement"] if "s3:DeleteObject" in s["Action"]]
        assert [(s["Action"], s["Resource"]) for s in deletes] == want
    assert scheduler_policy(NAMES)["Statement"][0]["Resource"] == [NAMES.state_machine_arn]
    children = next(s for s in state_machine_policy(NAMES)["Statement"]
                    if s["Sid"] == "ManageOwnChildren")
    assert children["Resource"] == [NAMES.executions_arn, NAMES.executions_arn.rsplit(":", 1)[0]
                                    + "/*"]  # execution:<machine>/<label>:<id>, nested too
    star = [s for s in state_machine_policy(NAMES)["Statement"] if s["Resource"] == "*"]
    assert [s["Sid"] for s in star] == ["LogDelivery"]
    with pytest.raises(ValueError):
        DataLocation.parse("s3:///prefix")


def test_the_writers_may_remove_the_records_of_the_uploads_they_ended():
    """Merge (and ProcessJob, RecordFailure) remove an output upload's record once it is
    completed or ended: S3 denied it to every role (a warning in merge's log, the records
    left for status); now process and merge may delete those records, and nothing else of
    the work (a job's segments, results, a run's report are no step's to delete)."""
    from pipeline.steps import layout

    job = layout.job_dir(f"s3://{NAMES.bucket}/work/run-1/", 3)
    record = layout.upload_file(job, "abc.def")
    arn = f"{NAMES.bucket_arn}/{record.split('/', 3)[3]}"
    data = [DataLocation("data-out")]
    for step in ("process", "merge"):
        policy = function_policy(step, NAMES, data)
        assert _allowed(policy, "s3:DeleteObject", arn), step
        for other in (layout.result_file(job), layout.plan_file(job),
                      f"s3://{NAMES.bucket}/reports/run-1.json", "s3://data-out/out/x.tif"):
            bucket, _, key = other[len("s3://"):].partition("/")
            assert not _allowed(policy, "s3:DeleteObject", f"arn:aws:s3:::{bucket}/{key}")
    assert not _allowed(function_policy("split", NAMES, data), "s3:DeleteObject", arn)


@pytest.mark.parametrize("text,why", [
    ("My_Bucket", "not an S3 bucket name"), ("ab", "not an S3 bucket name"),
    ("*", "not an S3 bucket name"), ("data-", "not an S3 bucket name"),
    ("a..b", "not an S3 bucket name"), ("192.168.1.1", "not an S3 bucket name"),
    ("data/in/*", "wildcard"), ("data/day?", "wildcard"), ("data/${aws:username}/", "wildcard"),
])
def test_a_data_location_grants_exactly_what_it_names(aws: Aws, text: str, why: str):
    """A bucket name S3 would refuse, or a prefix a policy would read as a wildcard or a
    variable (``*`` would grant every bucket), is a usage error before any AWS call."""
    with pytest.raises(ValueError, match=why):
        DataLocation.parse(text)
    code, _, err = aws.deploy("--skip-build", "--data-bucket", text)
    assert code == 2 and why in err and "--data-bucket" in err
    assert aws.calls == []
    assert DataLocation.parse("s3://my.data-1/a/b/").holds("s3://my.data-1/a/b/c.tif")
    assert not DataLocation.parse("my.data-1/a/b").holds("s3://my.data-1/a/bc.tif")


def test_a_data_bucket_that_does_not_exist_stops_the_deploy(aws: Aws):
    push_fake_images(aws)
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build", "--data-bucket", "results",
                              "--input-bucket", "no-such-bucket-xyz/in")
    assert code == 1
    assert "--input-bucket no-such-bucket-xyz: no such bucket: create it first" in err
    assert aws.writes() == []


def test_a_schedule_manifest_outside_the_stacks_locations_or_missing_is_usage(
        aws: Aws, tmp_path: Path):
    push_fake_images(aws)
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                              "--schedule-manifest", str(scan_manifest(tmp_path)),
                              "--data-bucket", "data-in/incoming")
    assert code == 2, err
    assert ("scan.output: s3://data-out/processed/ is outside what the stack's functions may "
            "write (s3://data-in/incoming/)") in err
    assert "scan.input" not in err
    assert aws.writes() == []
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                              "--schedule-manifest", str(tmp_path / "none.json"))
    assert code == 2
    assert f"deploy.py: --schedule-manifest: {tmp_path / 'none.json'} does not exist" in err
    assert aws.writes() == []


KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_kms_keys_are_used_only_through_s3_and_only_as_each_step_needs():
    """SSE-KMS data: reading an object needs kms:Decrypt, writing one kms:GenerateDataKey
    (a multipart upload: both); only through S3 (kms:ViaService), on the named keys."""
    data = [DataLocation.parse("slides")]
    for step, actions in (("split", ["kms:Decrypt"]),
                          ("process", ["kms:Decrypt", "kms:GenerateDataKey"]),
                          ("merge", ["kms:Decrypt", "kms:GenerateDataKey"])):
        doc = function_policy(step, NAMES, data, [], [KEY, KEY])
        [keys] = [s for s in doc["Statement"] if s["Sid"] == "DataKeys"]
        assert keys["Action"] == actions and keys["Resource"] == [KEY]
        assert keys["Condition"] == {"StringEquals": {
            "kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
        assert kms_keys_of(doc) == [KEY]
        assert "kms:" not in json.dumps(function_policy(step, NAMES, data))
    with pytest.raises(ValueError, match="expected a key ARN.*not by an alias"):
        parse_kms_key(f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/slides")


def test_kms_keys_are_granted_kept_and_removed(aws: Aws):
    push_fake_images(aws)
    iam = aws.client("iam")

    def granted() -> dict[str, list[str]]:
        return {step: kms_keys_of(iam.get_role_policy(
            RoleName=NAMES.function_role(step), PolicyName="tiffpipe")["PolicyDocument"])
            for step in STEPS}

    code, _, err = aws.deploy("--skip-build", "--data-bucket", "slides", "--kms-key", KEY)
    assert code == 0, err
    assert granted() == {step: [KEY] for step in STEPS}
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0 and f"KMS keys kept (no --kms-key): {KEY}" in err
    assert aws.writes() == [] and granted() == {step: [KEY] for step in STEPS}
    code, _, err = aws.deploy("--skip-build", "--no-kms-keys")
    assert code == 0 and granted() == {step: [] for step in STEPS}
    for args, why in ((("--kms-key", "alias/slides"), "expected a key ARN"),
                      (("--kms-key", KEY, "--no-kms-keys"), "contradict each other")):
        code, _, err = aws.deploy("--skip-build", *args)
        assert code == 2 and why in err


# --- the buckets' policies: HTTPS only -------------------------------------------------------


def _bucket_policy(aws: Aws, bucket: str) -> dict[str, Any]:
    return dict(json.loads(aws.client("s3").get_bucket_policy(Bucket=bucket)["Policy"]))


HTTPS_ONLY = {"Sid": "TiffpipeHttpsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
              "Resource": [NAMES.bucket_arn, f"{NAMES.bucket_arn}/*"],
              "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def test_the_stack_bucket_refuses_plain_http_and_keeps_its_owners_statements(aws: Aws):
    """Manifests, work and reports are reached over HTTPS only: deploy puts the statement in
    the stack bucket's policy (moto takes it), a redeploy leaves it as it is, and a
    statement the bucket's owner added is kept; one of ours removed is put back."""
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0 and "set the bucket policy: HTTPS only" in err, err
    assert _bucket_policy(aws, NAMES.bucket)["Statement"] == [HTTPS_ONLY]
    theirs = {"Sid": "Audit", "Effect": "Allow",
              "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "s3:GetObject",
              "Resource": f"{NAMES.bucket_arn}/reports/*"}
    s3 = aws.client("s3")
    s3.put_bucket_policy(Bucket=NAMES.bucket, Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": [theirs, HTTPS_ONLY]}))
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0 and "bucket policy (HTTPS only): unchanged" in err, err
    assert aws.writes() == []
    s3.put_bucket_policy(Bucket=NAMES.bucket, Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": [theirs]}))
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert _bucket_policy(aws, NAMES.bucket)["Statement"] == [theirs, HTTPS_ONLY]


def _printed_bucket_policy(aws: Aws, *args: str) -> tuple[dict[str, Any], str]:
    aws.calls.clear()
    code, policy, err = aws.deploy(*args)
    assert code == 0 and policy is not None, err
    assert aws.calls == ["sts.GetCallerIdentity"]  # nothing else asked, nothing changed
    return policy, err


def test_a_data_buckets_policy_is_printed_https_only_and_with_the_outputs_encryption(aws: Aws):
    """--print-bucket-policy BUCKET: the policy a data bucket (the user's: deploy does not
    change it) needs, valid JSON that S3 (moto) takes: plain HTTP refused on the whole
    bucket; with --sse, a write under its --data-bucket locations without that encryption,
    with another or (--sse-kms-key-id) another key refused; how to apply it on stderr."""
    policy, err = _printed_bucket_policy(
        aws, "--print-bucket-policy", "data-out", "--data-bucket", "data-out/results",
        "--data-bucket", "data-in", "--sse", "aws:kms", "--sse-kms-key-id", KEY)
    arn = "arn:aws:s3:::data-out"
    assert policy["Version"] == "2012-10-17"
    https, unencrypted, other, other_key = policy["Statement"]
    assert https == {**HTTPS_ONLY, "Resource": [arn, f"{arn}/*"]}
    assert all(s["Effect"] == "Deny" and s["Principal"] == "*" and s["Action"] == "s3:PutObject"
               and s["Resource"] == [f"{arn}/results/*"]
               for s in (unencrypted, other, other_key))
    header = "s3:x-amz-server-side-encryption"
    assert unencrypted["Condition"] == {"Null": {header: "true"}}
    assert other["Condition"] == {"StringNotEquals": {header: "aws:kms"}}
    assert other_key["Condition"] == {"StringNotEquals": {f"{header}-aws-kms-key-id": KEY}}
    assert "aws s3api put-bucket-policy --bucket data-out" in err
    aws.client("s3").put_bucket_policy(Bucket="data-out", Policy=json.dumps(policy))
    assert _bucket_policy(aws, "data-out") == policy

    # without --sse: plain HTTP refused only; a bucket no --data-bucket names: the whole
    # bucket's writes
    policy, _ = _printed_bucket_policy(aws, "--print-bucket-policy", "s3://slides")
    assert policy["Statement"] == [{**HTTPS_ONLY, "Resource": [
        "arn:aws:s3:::slides", "arn:aws:s3:::slides/*"]}]
    policy, _ = _printed_bucket_policy(aws, "--print-bucket-policy", "slides", "--sse", "AES256")
    assert [s["Resource"] for s in policy["Statement"][1:]] == [["arn:aws:s3:::slides/*"]] * 2
    # the stack's own bucket: what deploy puts there; its work files carry no header
    policy, err = _printed_bucket_policy(aws, "--print-bucket-policy", NAMES.bucket,
                                         "--sse", "AES256")
    assert policy["Statement"] == [HTTPS_ONLY]
    assert "deploy puts the HTTPS-only statement in its policy itself" in err
    assert "no encryption statement" in err
    code, _, err = aws.deploy("--print-bucket-policy", "data-out/results")
    assert code == 2 and "give the bucket alone" in err


def test_a_bucket_no_output_is_written_to_gets_no_encryption_statements(aws: Aws):
    """--print-bucket-policy of a bucket that holds none of the --data-bucket locations given
    (the originals of an --input-bucket, which the functions only read): HTTPS only, and why
    on stderr, not Denies of every unencrypted write to the whole bucket, which would refuse
    the owner's own uploads of originals for outputs never written there."""
    policy, err = _printed_bucket_policy(
        aws, "--print-bucket-policy", "originals", "--data-bucket", "data-out/results",
        "--input-bucket", "originals", "--sse", "AES256")
    assert policy["Statement"] == [{**HTTPS_ONLY, "Resource": [
        "arn:aws:s3:::originals", "arn:aws:s3:::originals/*"]}]
    assert ("originals holds none of the --data-bucket locations (s3://data-out/results/): the "
            "functions write no output there, so no encryption statement") in err, err


def test_one_policy_printed_at_a_time(aws: Aws):
    """Two --print-* options: a usage error naming both, not one policy printed and the other
    left out without a word (a file saved from it would hold the wrong one)."""
    aws.calls.clear()
    code, out, err = aws.deploy("--print-bucket-policy", "data-out", "--print-operator-policy")
    assert code == 2 and out is None
    assert ("--print-operator-policy and --print-bucket-policy: give one at a time (each "
            "prints one JSON document)") in err, err
    assert aws.calls == []


def _state(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The state ``name`` of a definition, wherever it is nested (Map processors)."""
    for key, value in doc.items():
        if key == "States" and name in value:
            return dict(value[name])
        for child in value.values() if isinstance(value, dict) and key == "States" else (
                [value] if isinstance(value, dict) else []):
            with contextlib.suppress(KeyError):
                return _state(child, name)
    raise KeyError(name)


def test_planning_a_job_probes_its_output_with_the_permission_writing_it_needs(
        monkeypatch: pytest.MonkeyPatch):
    """PlanJob checks the job's output (storage.check_writable: a multipart upload started
    and aborted) on the function whose role writes outputs, so an output the stack may not
    write fails the job before its pixels are processed, not at its merge. moto enforces
    IAM here: the function's real policy, as deploy.py gives it, attached to a user."""
    from moto.core import set_initial_no_auth_action_count

    from pipeline.adapters import storage
    from pipeline.engine.definition import PLACEHOLDERS, definition_text
    from pipeline.errors import OutputNotWritableError

    planner = _state(json.loads(definition_text()), "PlanJob")["Parameters"]["FunctionName"]
    step = PLACEHOLDERS[planner.strip("${}")]
    policy = function_policy(step, NAMES, [DataLocation.parse("data-out/results")],
                             [DataLocation.parse("data-out/originals")])
    _clean_env(monkeypatch)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)

    @set_initial_no_auth_action_count(4)  # the set-up's calls; then every call is checked
    @mock_aws
    def probe() -> None:
        admin = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name=REGION)
        iam = admin.client("iam")
        iam.create_user(UserName="fn")
        iam.put_user_policy(UserName="fn", PolicyName="tiffpipe",
                            PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="fn")["AccessKey"]
        admin.client("s3").create_bucket(
            Bucket="data-out", CreateBucketConfiguration={"LocationConstraint": REGION})
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setattr(storage, "_client", None)
        monkeypatch.setattr(storage, "_writable", {})
        storage.check_writable("s3://data-out/results/day1/a.tif")
        for denied in ("s3://data-out/originals/a.tif", "s3://data-out/elsewhere/a.tif"):
            with pytest.raises(OutputNotWritableError, match="writing there is not allowed"
                               ".*--data-bucket"):
                storage.check_writable(denied)
    probe()


# --- dry run, destroy --------------------------------------------------------------------------


def test_dry_run_makes_no_write_call_and_no_docker_call(aws: Aws, tmp_path: Path):
    def no_docker(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a dry run ran {args}")

    code, result, err = aws.deploy("--dry-run", "--schedule", "rate(1 day)",
                                   "--schedule-manifest", str(scan_manifest(tmp_path)),
                                   *SCAN_LOCATIONS, run=no_docker, build=no_docker)
    assert code == 0, err
    assert aws.writes() == []
    for line in ("would create bucket", "would build images/split/Dockerfile",
                 "would create function tiffpipe-t1-merge", "would create state machine",
                 "would create schedule", "nothing was changed"):
        assert line in err
    assert result is not None and result["dry_run"] and result["changes"]
    assert [b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]] == [*DATA_BUCKETS]

    # on a deployed stack, a dry run that would change things still writes nothing
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    push_fake_images(aws, "v2")
    aws.calls.clear()
    code, result, err = aws.deploy("--skip-build", "--dry-run", "--data-bucket", "more-data")
    assert code == 0, err
    assert "would deploy" in err and "would update the permissions" in err
    assert aws.writes() == []
    aws.calls.clear()
    code, result, err = aws.deploy("--destroy", "--delete-bucket", "--dry-run")
    assert code == 0, err
    assert "would delete state machine" in err
    assert aws.writes() == []
    assert aws.client("lambda").list_functions()["Functions"]


def _everything(aws: Aws) -> dict[str, list[str]]:
    """Every resource of every kind deploy makes, in the whole (mocked) account."""
    return {
        "buckets": [b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]
                    if b["Name"] not in DATA_BUCKETS],
        "repositories": [r["repositoryName"] for r in
                         aws.client("ecr").describe_repositories()["repositories"]],
        "functions": [f["FunctionName"] for f in
                      aws.client("lambda").list_functions()["Functions"]],
        "roles": [r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]],
        "state machines": [m["name"] for m in
                           aws.client("stepfunctions").list_state_machines()["stateMachines"]],
        "log groups": [g["logGroupName"] for g in
                       aws.client("logs").describe_log_groups()["logGroups"]],
        "schedules": [s["Name"] for s in aws.client("scheduler").list_schedules()["Schedules"]],
    }


def test_destroy_leaves_nothing(aws: Aws, tmp_path: Path):
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                              "--schedule-manifest", str(scan_manifest(tmp_path)),
                              *SCAN_LOCATIONS)
    assert code == 0, err
    aws.client("s3").put_object(Bucket=NAMES.bucket, Key="reports/r.json", Body=b"{}")
    assert all(_everything(aws).values())

    code, result, err = aws.deploy("--destroy")
    assert code == 0, err
    left = _everything(aws)
    assert left.pop("buckets") == [NAMES.bucket], "the bucket is kept without --delete-bucket"
    assert all(v == [] for v in left.values()), left
    assert "--delete-bucket removes it" in err

    code, result, err = aws.deploy("--destroy", "--delete-bucket")
    assert code == 0, err
    assert all(v == [] for v in _everything(aws).values())
    assert result is not None and result["deleted"] == [
        f"delete bucket {NAMES.bucket} and everything in it"]
    assert "not found, nothing to delete" in err


def test_destroy_under_running_executions_is_refused_and_changes_nothing(aws: Aws):
    # a run going on would have its functions deleted under it: its tasks fail and the
    # uploads of its outputs stay open in the data buckets
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    sfn = aws.client("stepfunctions")
    running = sfn.start_execution(stateMachineArn=NAMES.state_machine_arn, name="run-1",
                                  input="{}")["executionArn"]
    before = _everything(aws)
    aws.calls.clear()

    code, result, err = aws.deploy("--destroy", "--delete-bucket")
    assert code == 1 and result is None, err
    assert f"1 execution(s) of {NAMES.state_machine} are running ({running})" in err
    assert "tiffpipe status ARN --wait" in err and "aws stepfunctions stop-execution" in err
    assert "Nothing was changed" in err
    assert aws.writes() == [] and _everything(aws) == before

    sfn.stop_execution(executionArn=running)  # it ended: the stack may go
    code, _, err = aws.deploy("--destroy", "--delete-bucket")
    assert code == 0, err
    assert all(v == [] for v in _everything(aws).values())


# --- resources of the stack's names that it did not make -------------------------------------

#: what the stack tag is, as a tag key
STACK_KEY = STACK_TAG["Key"]
#: someone else's state machine (a schedule of the stack's name may start it)
THEIR_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:their-machine"


def _make_theirs(aws: Aws, kind: str) -> tuple[str, str]:
    """Turn the deployed stack's resource of ``kind`` (an _everything key) into one it did
    not make, as someone else's of its name is: its stack tag removed (the schedule, which
    has no tags: starting another state machine). (what deploy.py calls it, its name)"""
    if kind == "buckets":
        aws.client("s3").delete_bucket_tagging(Bucket=NAMES.bucket)
        return f"bucket {NAMES.bucket}", NAMES.bucket
    if kind == "repositories":
        name = NAMES.repository("split")
        ecr = aws.client("ecr")
        arn = ecr.describe_repositories(repositoryNames=[name])["repositories"][0][
            "repositoryArn"]
        ecr.untag_resource(resourceArn=arn, tagKeys=[STACK_KEY])
        return f"ECR repository {name}", name
    if kind == "roles":
        aws.client("iam").untag_role(RoleName=NAMES.state_machine_role, TagKeys=[STACK_KEY])
        return f"IAM role {NAMES.state_machine_role}", NAMES.state_machine_role
    if kind == "functions":
        aws.client("lambda").untag_resource(Resource=NAMES.function_arn("merge"),
                                            TagKeys=[STACK_KEY])
        return f"function {NAMES.function('merge')}", NAMES.function("merge")
    if kind == "state machines":
        aws.client("stepfunctions").untag_resource(resourceArn=NAMES.state_machine_arn,
                                                   tagKeys=[STACK_KEY])
        return f"state machine {NAMES.state_machine}", NAMES.state_machine
    if kind == "log groups":
        group = NAMES.function_log_group("process")
        aws.client("logs").untag_log_group(logGroupName=group, tags=[STACK_KEY])
        return f"log group {group}", group
    assert kind == "schedules"
    scheduler = aws.client("scheduler")
    schedule = scheduler.get_schedule(Name=NAMES.schedule)
    scheduler.update_schedule(Name=NAMES.schedule, ScheduleExpression="rate(1 hour)",
                              FlexibleTimeWindow={"Mode": "OFF"},
                              Target={"Arn": THEIR_MACHINE,
                                      "RoleArn": schedule["Target"]["RoleArn"]})
    return f"schedule {NAMES.schedule}", NAMES.schedule


@pytest.mark.parametrize("kind", ["buckets", "repositories", "roles", "functions",
                                  "state machines", "log groups", "schedules"])
def test_a_resource_of_the_stacks_name_it_did_not_make_is_refused_and_left(
        aws: Aws, tmp_path: Path, kind: str):
    """A resource of one of the stack's names without its tiffpipe:stack tag is another's
    (docs: every resource deploy makes is tagged): a deploy took it over (rewrote its
    settings and permissions) and --destroy deleted it. Now the deploy is refused before any
    change, naming it, its tags and what to do, and --destroy leaves it (saying why) and
    deletes the rest."""
    _scheduled_stack(aws, tmp_path)
    what, name = _make_theirs(aws, kind)
    aws.calls.clear()
    for dry_run in ([], ["--dry-run"]):
        code, result, err = aws.deploy("--skip-build", *dry_run)
        assert code == 2 and result is None, err
        assert "1 resource(s) of its names exist that it did not make" in err
        why = (f"it starts {THEIR_MACHINE}, not stack t1's" if kind == "schedules" else
               "it is not tagged tiffpipe:stack=t1 (its tags: ")
        assert f"\n  {what}: {why}" in err, err
        assert "Give this stack another --stack name" in err and "Nothing was changed" in err
        assert aws.writes() == []
    if kind != "repositories":  # (a rollback changes the state machine only: no image)
        code, _, err = aws.deploy("--rollback")
        assert code == 2 and "a --rollback would take them over" in err, err
        assert aws.writes() == []

    code, result, err = aws.deploy("--destroy", "--delete-bucket")
    assert code == 0, err
    assert result is not None and result["left"] == [what]
    assert f"  {what}: left as it is, not made by this stack: {why}" in err
    assert not any(f"{change} ".startswith(f"delete {what} ") for change in result["deleted"])
    assert {k: v for k, v in _everything(aws).items() if v} == {kind: [name]}


def _their_repository(aws: Aws) -> dict[str, Any]:
    """Another team's ECR repository named as the stack's split one (in place of the one
    push_fake_images made): their image, their lifecycle rule, their tag (not the stack's)."""
    ecr = aws.client("ecr")
    name = NAMES.repository("split")
    ecr.delete_repository(repositoryName=name, force=True)
    ecr.create_repository(repositoryName=name, tags=[{"Key": "team", "Value": "imaging"}])
    manifest = {"schemaVersion": 2, "config": {"size": 1}, "layers": [{"digest": "sha256:"
                                                                          + "ab" * 32}],
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    ecr.put_image(repositoryName=name, imageManifest=json.dumps(manifest),
                  imageTag="their-prod-1.4")
    ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps({"rules": [{
        "rulePriority": 1, "description": "theirs", "selection": {
            "tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
            "countNumber": 90}, "action": {"type": "expire"}}]}))
    return _repository_state(aws)


def _repository_state(aws: Aws) -> dict[str, Any]:
    ecr, name = aws.client("ecr"), NAMES.repository("split")
    return {"images": ecr.list_images(repositoryName=name)["imageIds"],
            "lifecycle": ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"]}


def test_someone_elses_repository_keeps_its_images_and_lifecycle(aws: Aws):
    """An ECR repository named as the stack's made by another team: a deploy replaced its
    lifecycle rule (expiring their images) and --destroy force-deleted it with their
    images. Now both leave it as it is; the tag advice names its ARN and the options that
    reach it."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    before = _their_repository(aws)  # (the stack's deleted, another's made in its place)
    arn = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{NAMES.repository('split')}"
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 2, err
    assert (f"  ECR repository {NAMES.repository('split')}: it is not tagged "
            "tiffpipe:stack=t1 (its tags: team=imaging)") in err
    assert (f"  aws ecr tag-resource --resource-arn {arn} --tags "
            f"Key=tiffpipe:stack,Value=t1 --region {REGION}") in err
    assert aws.writes() == [] and _repository_state(aws) == before

    code, result, err = aws.deploy("--destroy")
    assert code == 0, err
    assert result is not None
    assert result["left"] == [f"ECR repository {NAMES.repository('split')}"]
    assert [c for c in result["deleted"] if "ECR" in c] == [
        f"delete ECR repository {NAMES.repository(s)} and its images"
        for s in ("process", "merge")]
    assert _repository_state(aws) == before


def test_someone_elses_role_keeps_its_trust_and_policies_until_tagged_as_the_stacks(
        aws: Aws):
    """An IAM role named as the stack's merge function's, made by someone else (trusting
    EC2, their inline policy): a deploy rewrote its trust to Lambda's (breaking their use)
    and kept their policy (the function could do what it grants); --destroy deleted it.
    Now the deploy is refused and --destroy leaves it; tagged as the stack's (a role that is
    really its), the deploy goes on and makes it the function's."""
    iam = aws.client("iam")
    role = NAMES.function_role("merge")
    ec2 = policies.trust_policy("ec2")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(ec2),
                    Tags=[{"Key": "team", "Value": "gis"}])
    iam.put_role_policy(RoleName=role, PolicyName="theirs", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                  "Resource": "arn:aws:s3:::gis-data/*"}]}))

    def state() -> tuple[Any, list[str]]:
        return (iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"],
                iam.list_role_policies(RoleName=role)["PolicyNames"])
    before = state()
    push_fake_images(aws)
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 2, err
    assert f"  IAM role {role}: it is not tagged tiffpipe:stack=t1 (its tags: team=gis)" in err
    assert f"  aws iam tag-role --role-name {role} --tags Key=tiffpipe:stack,Value=t1" in err
    assert aws.writes() == [] and state() == before

    code, result, err = aws.deploy("--destroy")  # (the stack's repositories: deleted)
    assert code == 0 and result is not None, err
    assert result["left"] == [f"IAM role {role}"] and state() == before

    push_fake_images(aws)
    iam.tag_role(RoleName=role, Tags=[STACK_TAG])  # as the advice says, for a role of its
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert state()[0] == policies.trust_policy("lambda")


# --- one stack name, two regions: the roles are global ---------------------------------------

OTHER_REGION = "us-east-1"


def _roles(aws: Aws) -> dict[str, dict[str, Any]]:
    """Every role of the stack there is: its tags and its inline policy."""
    iam, found = aws.client("iam"), {}
    for role in [*(NAMES.function_role(s) for s in STEPS), NAMES.state_machine_role,
                 NAMES.scheduler_role]:
        with contextlib.suppress(iam.exceptions.NoSuchEntityException):
            tags = iam.get_role(RoleName=role)["Role"].get("Tags", [])
            found[role] = {"tags": {t["Key"]: t["Value"] for t in tags},
                           "policy": iam.get_role_policy(RoleName=role, PolicyName="tiffpipe")[
                               "PolicyDocument"]}
    return found


def _delete_roles(aws: Aws) -> None:
    """Delete the stack's roles under it, as a --destroy of its name in another region did."""
    iam = aws.client("iam")
    for role in _roles(aws):
        iam.delete_role_policy(RoleName=role, PolicyName="tiffpipe")
        iam.delete_role(RoleName=role)


def _scheduled_stack(aws: Aws, tmp_path: Path) -> None:
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                              "--schedule-manifest", str(scan_manifest(tmp_path)),
                              "--input-bucket", "slides", "--kms-key", KEY, *SCAN_LOCATIONS)
    assert code == 0, err


def test_a_deploy_in_another_region_is_refused_and_the_stacks_roles_kept(aws: Aws,
                                                                        tmp_path: Path):
    """The roles of stack t1 in eu-west-1 are those a deploy of t1 in us-east-1 would
    rewrite for us-east-1's resources (IAM is global): refused before any change, and
    --rollback there too."""
    _scheduled_stack(aws, tmp_path)
    before = _roles(aws)
    assert len(before) == 5
    aws.calls.clear()
    code, _, err = aws.deploy("--region", OTHER_REGION, build=fake_build([]),
                              run=fake_docker())
    assert code == 2, err
    assert f"stack 't1' is deployed in {REGION}: its IAM roles (tiffpipe-t1-split-fn" in err
    assert "give it another --stack name" in err
    assert f"deploy.py --stack t1 --region {REGION} --destroy" in err
    assert "data locations kept" not in err and "nothing was changed" in err
    assert aws.writes() == [] and _roles(aws) == before
    code, _, err = aws.deploy("--region", OTHER_REGION, "--rollback")
    assert code == 2 and f"give --region {REGION}" in err
    assert aws.writes() == []
    assert all(r["tags"].get("tiffpipe:region") == REGION for r in before.values())


def test_a_destroy_in_another_region_is_refused_and_the_roles_stay(aws: Aws):
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    before = _roles(aws)
    aws.calls.clear()
    code, result, err = aws.deploy("--region", OTHER_REGION, "--destroy")
    assert code == 2 and result is None, err
    assert f"Destroy the stack in its region: deploy.py --stack t1 --region {REGION} " \
           "--destroy" in err
    assert aws.writes() == [] and _roles(aws) == before


def test_roles_made_before_the_region_tag_have_their_policies_region(aws: Aws):
    """A role made before tiffpipe:region: its region is read from the ARNs of its policy
    (the log groups', the functions', the state machine's); the next deploy in that region
    tags it."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    iam = aws.client("iam")
    for role in _roles(aws):
        iam.untag_role(RoleName=role, TagKeys=["tiffpipe:region"])
    before = _roles(aws)
    code, _, err = aws.deploy("--region", OTHER_REGION, "--destroy")
    assert code == 2 and f"stack 't1' is deployed in {REGION}" in err
    assert _roles(aws) == before
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert sorted(aws.writes()) == ["iam.TagRole"] * 4
    assert all(r["tags"]["tiffpipe:region"] == REGION for r in _roles(aws).values())
    aws.calls.clear()
    assert aws.deploy("--skip-build")[0] == 0 and aws.writes() == []


def test_destroying_a_stack_that_is_not_in_the_region_says_so(aws: Aws):
    code, result, err = aws.deploy("--destroy")
    assert code == 1 and result is None, err
    assert f"no stack 't1' in {REGION}: check --stack and --region" in err
    assert "not found, nothing to delete" not in err and aws.writes() == []


def test_roles_lost_are_made_again_with_the_recorded_locations(aws: Aws, tmp_path: Path):
    """The stack's roles deleted under it (a destroy of its name in another region, before
    the refusal): a redeploy makes them again with the data locations recorded in the
    bucket, and the role of the schedule it keeps too."""
    _scheduled_stack(aws, tmp_path)
    before = _roles(aws)
    _delete_roles(aws)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert (f"data locations kept (no --data-bucket; from s3://{NAMES.bucket}/deploys/"
            "locations.json, the function roles being gone): s3://data-in/incoming/, "
            "s3://data-out/") in err
    assert "WARNING" not in err
    assert _roles(aws) == before  # the scheduler's too


def test_roles_lost_without_a_record_are_warned_of(aws: Aws, tmp_path: Path):
    """A stack deployed before the record: its data locations went with its roles; the
    redeploy says so and which options to give again (and makes the schedule's role)."""
    _scheduled_stack(aws, tmp_path)
    aws.client("s3").delete_object(Bucket=NAMES.bucket, Key="deploys/locations.json")
    _delete_roles(aws)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "WARNING: the function roles of stack t1 are gone" in err
    assert "they could not be read" in err
    assert "Give --data-bucket, --input-bucket, --kms-key again" in err
    assert set(_roles(aws)) == {*(NAMES.function_role(s) for s in STEPS),
                                NAMES.state_machine_role, NAMES.scheduler_role}


# --- stops with a clear message, and a rerun finishes ---------------------------------------


def test_missing_credentials_stop_before_anything(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path):
    _clean_env(monkeypatch)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    calls: list[str] = []
    aws = Aws(_recording_session(calls), calls)
    code, result, err = aws.deploy("--skip-build", run=fake_docker())
    assert code != 0
    assert result is None
    assert "no AWS credentials found" in err and "nothing was changed" in err
    assert "Traceback" not in err
    assert aws.calls == ["sts.GetCallerIdentity"]


def test_a_dry_run_stopped_by_a_failed_call_says_nothing_was_changed(aws: Aws):
    """A failed call ended every command with "every step is re-runnable and resumes where
    this one stopped", a dry run's too (which changes nothing to resume)."""
    def deny(**_: Any) -> tuple[Any, dict[str, Any]]:  # (as AWS answers a missing permission)
        return (botocore.awsrequest.AWSResponse("", 403, {}, None),
                {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}})
    aws.session.events.register("before-call.lambda.GetFunction", deny)
    code, _, err = aws.deploy("--skip-build", "--dry-run")
    assert code == 1, err
    assert ("the GetFunction call failed (HTTP 403, error code AccessDeniedException): not "
            "authorized\nFix the cause and run it again (a dry run: nothing was changed)") in err
    assert "resumes" not in err


def _denied(code: str = "AccessDenied") -> Any:
    """A ``before-call`` hook answering a call as AWS answers a missing permission."""
    def deny(**_: Any) -> tuple[Any, dict[str, Any]]:
        return (botocore.awsrequest.AWSResponse("", 403, {}, None),
                {"Error": {"Code": code, "Message": "not authorized"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}})
    return deny


def _stack_bucket_tags(aws: Aws) -> list[dict[str, str]] | None:
    """The stack bucket's tags (None: there is no such bucket)."""
    try:
        return aws.client("s3").get_bucket_tagging(Bucket=NAMES.bucket)["TagSet"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchBucket", exc
        return None


def test_a_bucket_left_untagged_by_a_failed_or_killed_deploy_is_made_the_stacks_on_rerun(
        aws: Aws):
    """The bucket step made the bucket, then tagged it: a tagging that failed (throttled,
    refused) or a deploy killed between the two left a bucket of the stack's name without
    its tag, and every later deploy was refused, as for another's bucket, though the
    failure said "rerun deploy.py: resumes". A failed tagging now removes the empty bucket
    it made, and a rerun makes it again; an untagged bucket that holds nothing (what a kill
    leaves) is taken as the stack's and tagged, saying so; one that holds data is not."""
    push_fake_images(aws)
    deny = _denied()
    aws.session.events.register("before-call.s3.PutBucketTagging", deny)
    code, _, err = aws.deploy("--skip-build")
    assert code == 1 and "PutBucketTagging" in err, err
    assert _stack_bucket_tags(aws) is None  # (removed: the rerun makes it)
    aws.session.events.unregister("before-call.s3.PutBucketTagging", deny)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert STACK_TAG in (_stack_bucket_tags(aws) or [])
    code, _, err = aws.deploy("--destroy", "--delete-bucket")
    assert code == 0, err

    push_fake_images(aws)
    s3 = aws.client("s3")  # (a deploy killed between the bucket's making and its tagging)
    s3.create_bucket(Bucket=NAMES.bucket, CreateBucketConfiguration={
        "LocationConstraint": REGION})
    s3.delete_bucket_tagging(Bucket=NAMES.bucket)  # (moto keeps a deleted bucket's tags)
    code, result, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert (f"  tag bucket {NAMES.bucket} as stack {STACK}'s: an earlier deploy made it and "
            "stopped before tagging it (it is empty)") in err
    assert result is not None and STACK_TAG in (_stack_bucket_tags(aws) or [])

    s3.delete_bucket_tagging(Bucket=NAMES.bucket)
    s3.put_object(Bucket=NAMES.bucket, Key="slides/a.tif", Body=b"data")
    code, _, err = aws.deploy("--skip-build")
    assert code == 2 and f"  bucket {NAMES.bucket}: it is not tagged" in err, err


@pytest.mark.parametrize(("call", "action"), [
    ("s3.GetBucketTagging", "s3:GetBucketTagging"),
    ("ecr.ListTagsForResource", "ecr:ListTagsForResource"),
    ("logs.ListTagsLogGroup", "logs:ListTagsLogGroup"),
    ("stepfunctions.ListTagsForResource", "states:ListTagsForResource"),
])
def test_a_tag_read_the_deployer_may_not_do_is_a_usage_error_naming_it(
        aws: Aws, call: str, action: str):
    """Every deploy, --rollback and --destroy reads the tags of the stack's resources first
    (whose they are); a deployer policy printed before it did lacks those actions, and the
    AccessDenied ended the command, exit 1, "every step is re-runnable", which no rerun
    mends. Exit 2 now, naming the action and the option that prints the policy."""
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    service = call.split(".")[0]
    aws.session.events.register(f"before-call.{call}", _denied(
        "AccessDenied" if service == "s3" else "AccessDeniedException"))
    aws.calls.clear()
    rollback = [] if service == "ecr" else [["--rollback"]]  # (it reads no repository)
    for command in (["--skip-build"], *rollback, ["--destroy"]):
        code, result, err = aws.deploy(*command)
        assert (code, result) == (2, None), err
        assert f"{action} was refused (the " in err, err
        assert "deploy.py --print-deployer-policy prints now" in err
        assert "Nothing was changed" in err and "re-runnable" not in err
    assert aws.writes() == []


def test_a_region_aws_has_not_is_a_usage_error_before_any_call(aws: Aws):
    """A mistyped --region (an availability zone) failed at the first call, "Could not
    connect to the endpoint URL https://sts.eu-west-1a...", exit 1, and said a rerun
    "resumes where this one stopped", a dry run's too."""
    code, result, err = aws.deploy("--region", "eu-west-1a", "--dry-run")
    assert code == 2 and result is None, err
    assert ("deploy.py: region 'eu-west-1a' is not an AWS region (did you mean eu-west-1"
            in err), err
    assert "nothing was changed" in err and aws.calls == []


def test_a_region_of_a_regions_form_botocore_lists_not_is_warned_of():
    warning = check_region("eu-wset-1")
    assert warning is not None and warning.startswith(
        "region 'eu-wset-1' is not one this botocore knows (did you mean eu-west-1")
    assert check_region("eu-west-1") is None
    assert check_region("local", "http://localhost:4566") is None  # (an emulator's: any)


def test_no_region_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _clean_env(monkeypatch)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = deploy_script.main(["--stack", STACK, "--dry-run"], session=boto3.Session())
    assert code == 2, err.getvalue()
    assert "deploy.py: no AWS region: pass --region" in err.getvalue()


def test_missing_docker_stops_before_anything(aws: Aws):
    def no_docker(args: list[str], **_: Any) -> Any:
        raise FileNotFoundError(args[0])

    code, _, err = aws.deploy(run=no_docker)
    assert code == 1
    assert "no Docker engine" in err and "--skip-build" in err
    assert aws.writes() == []


def test_build_args_reach_every_docker_build(aws: Aws):
    """images/README.md documents PIP_INDEX_URL and PIP_FIND_LINKS build arguments (a pip
    mirror, a wheelhouse), but deploy.py had no way to pass them: a user behind a mirror
    could not deploy. --build-arg KEY=VALUE (or KEY alone: its value from the environment,
    as docker build takes it) goes to each of the three builds; the log names the keys, not
    the values (a mirror's URL may hold a token)."""
    builds: list[list[str]] = []
    mirror = "https://user:s3cret@pypi.example.com/simple"
    code, _, err = aws.deploy("--build-arg", f"PIP_INDEX_URL={mirror}",
                              "--build-arg", "PIP_FIND_LINKS", "--base-image", "base:1",
                              run=docker_builds(builds))
    assert code == 0, err
    assert [c[c.index("-f") + 1].split("/")[-2] for c in builds] == list(STEPS)
    for command in builds:
        assert build_args_of(command) == ["BASE_IMAGE=base:1", f"PIP_INDEX_URL={mirror}",
                                          "PIP_FIND_LINKS"]
    assert "build args: PIP_INDEX_URL, PIP_FIND_LINKS" in err and "s3cret" not in err
    # the same again: nothing changes (the functions keep their digests)
    aws.calls.clear()
    code, _, err = aws.deploy("--build-arg", f"PIP_INDEX_URL={mirror}",
                              "--build-arg", "PIP_FIND_LINKS", "--base-image", "base:1",
                              run=docker_builds([]))
    assert code == 0 and "nothing changed" in err, err


@pytest.mark.parametrize(("args", "message"), [
    (["--build-arg", "PIP INDEX=x"], "--build-arg 'PIP INDEX=x': expected KEY=VALUE or KEY"),
    (["--build-arg", "=x"], "--build-arg '=x': expected KEY=VALUE or KEY"),
    (["--build-arg", "BASE_IMAGE=x"], "--build-arg BASE_IMAGE: give --base-image instead"),
    (["--build-arg", "PIP_NO_INDEX=1", "--skip-build"],
     "--build-arg goes with a build: leave out --skip-build"),
])
def test_build_arg_usage_errors(aws: Aws, args: list[str], message: str):
    code, result, err = aws.deploy(*args, run=docker_builds([]))
    assert (code, result) == (2, None), err
    assert message in err, err
    assert aws.calls == []


def _my_packages(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A requirements file, a project folder (with a .git and caches beside its code) and a
    wheel: what a user gives deploy for their custom ops."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("scikit-image==0.25.2  # for mylab\n")
    project = tmp_path / "mylab"
    (project / "mylab" / "__pycache__").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'mylab'\nversion = '1'\n")
    (project / "mylab" / "filters.py").write_text("def flatten(tile): return tile\n")
    (project / "mylab" / "__pycache__" / "filters.cpython-312.pyc").write_bytes(b"x")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))
    return requirements, project, wheel


def test_your_packages_go_into_the_process_images_build_context(aws: Aws, tmp_path: Path):
    """docs said a custom op's module must be "installed in the process image", but deploy
    rebuilt the image from the clone alone: no way to put it there. --requirements FILE and
    --package PATH (a project folder or a wheel, repeatable) make the build context hold
    them in images/process/user/, which the process Dockerfile's user stage installs (the
    real build: tests/test_images.py); the context is removed afterwards."""
    requirements, project, wheel = _my_packages(tmp_path)
    builds: list[list[str]] = []
    seen: dict[str, set[str]] = {}

    def look(command: list[str]) -> None:
        context = Path(command[-1])
        user = context / "images" / "process" / "user"
        seen[command[command.index("-f") + 1].split("/")[-2]] = {
            str(f.relative_to(user)) for f in user.rglob("*") if f.is_file()}
        assert (user / "requirements.txt").read_text() == requirements.read_text()
        assert (context / "pipeline" / "handlers.py").is_file()
        assert not list(context.rglob("__pycache__"))

    code, _, err = aws.deploy("--requirements", str(requirements), "--package", str(project),
                              "--package", str(wheel), run=docker_builds(builds, look))
    assert code == 0, err
    assert seen["process"] == {"requirements.txt", "packages/00/mylab/pyproject.toml",
                               "packages/00/mylab/mylab/filters.py",
                               "packages/01/other-1.0-py3-none-any.whl"}, seen
    assert f"the process image with your packages: --requirements {requirements}" in err
    assert not Path(builds[0][-1]).exists()  # the context made for the build is gone
    # the same again: nothing changes
    code, _, err = aws.deploy("--requirements", str(requirements), "--package", str(project),
                              "--package", str(wheel), run=docker_builds([]))
    assert code == 0 and "nothing changed" in err, err


@pytest.mark.parametrize(("args", "message"), [
    (["--requirements", "{tmp}/missing.txt"], "--requirements {tmp}/missing.txt: no such file"),
    (["--requirements", "{tmp}/nested.txt"],
     ("--requirements {tmp}/nested.txt, line 2: '-r base.txt' names another file or a local "
      "path, which the image build cannot see: give a local package with --package PATH")),
    (["--requirements", "{tmp}/local.txt"], "line 1: './mylab' names another file"),
    (["--package", "{tmp}/requirements.txt"],
     "--package {tmp}/requirements.txt: expected a wheel (.whl) or a project folder"),
    (["--package", "{tmp}/missing-1.0-py3-none-any.whl"],
     "--package {tmp}/missing-1.0-py3-none-any.whl: no such file or folder"),
    (["--package", "{tmp}/mylab", "--skip-build"],
     "--package goes with a build: leave out --skip-build"),
    (["--no-packages", "--skip-build"], "--no-packages goes with a build: leave out --skip-build"),
    (["--no-packages", "--package", "{tmp}/mylab"],
     "--no-packages and --package contradict each other"),
    (["--no-packages", "--requirements", "{tmp}/requirements.txt"],
     "--no-packages and --requirements contradict each other"),
])
def test_your_packages_usage_errors(aws: Aws, tmp_path: Path, args: list[str], message: str):
    _my_packages(tmp_path)
    (tmp_path / "nested.txt").write_text("numpy\n-r base.txt\n")
    (tmp_path / "local.txt").write_text("./mylab\n")
    code, result, err = aws.deploy(*[a.format(tmp=tmp_path) for a in args],
                                   run=docker_builds([]))
    assert (code, result) == (2, None), err
    assert message.format(tmp=tmp_path) in err, err
    assert aws.calls == []


@pytest.mark.parametrize("line", [
    "-rbase.txt", "-c constraints.txt", "--requirement=base.txt", "-e ./mylab",
    "./mylab", "/home/me/mylab", "~/mylab", "file:///home/me/mylab",
    "mylab @ file:///home/me/mylab", "mylab@file:../mylab",
    "--find-links ./wheels", "-f /srv/wheels", "--find-links=wheels", "-fwheels",
    "--find-links file:///srv/wheels",
])
def test_a_requirement_the_build_cannot_see_is_refused(tmp_path: Path, line: str):
    """docs/aws.md: a requirements line naming another file or a local path is refused
    (the image build sees the file alone); a PEP 508 reference to a local file (``name @
    file:...``), a local --find-links folder and ``-rFILE`` written without a space passed,
    and the build failed minutes later in pip inside docker."""
    requirements = tmp_path / "r.txt"
    requirements.write_text(f"numpy\n{line}  # mine\n")
    with pytest.raises(ValueError, match="line 2: .* names another file or a local path"):
        docker_images.check_user_packages(str(requirements), [])


@pytest.mark.parametrize("line", [
    "scikit-image==0.25.2", "mylib @ https://example.com/mylib-1.0-py3-none-any.whl",
    "--find-links https://example.com/wheels/", "-f https://example.com/wheels/",
    "--index-url https://mirror.example/simple", "--extra-index-url=https://x.example/s",
    "--only-binary=:all:", "# -r other.txt",
])
def test_a_requirement_the_build_can_fetch_is_taken(tmp_path: Path, line: str):
    requirements = tmp_path / "r.txt"
    requirements.write_text(f"{line}\n")
    docker_images.check_user_packages(str(requirements), [])


def _package_tags(aws: Aws, step: str = "process") -> dict[str, str]:
    tags = aws.client("lambda").get_function(FunctionName=NAMES.function(step)).get("Tags", {})
    return {k: v for k, v in tags.items() if k != "tiffpipe:stack"}


def test_a_build_that_would_drop_the_deployed_packages_is_refused(aws: Aws, tmp_path: Path):
    """A deploy without --package/--requirements rebuilt the process image without the
    user's packages, silently (a deploy only to change --schedule was enough): every job
    with a custom op then failed at PlanJob. The process function now records what its
    image has (tags: the names, and a digest of the files); a build that would drop them is
    a usage error naming them, unless --no-packages says so. --skip-build keeps the images,
    so it says nothing; a changed set of packages is a rebuild."""
    requirements, project, wheel = _my_packages(tmp_path)
    mine = ("--requirements", str(requirements), "--package", str(project),
            "--package", str(wheel))
    code, _, err = aws.deploy(*mine, run=docker_builds([]))
    assert code == 0, err
    tags = _package_tags(aws)
    assert tags.pop("tiffpipe:packages") == "mylab other-1.0-py3-none-any.whl"
    assert tags.pop("tiffpipe:requirements") == "requirements.txt: scikit-image"
    assert re.fullmatch(r"[0-9a-f]{64}", tags.pop("tiffpipe:packages-sha256"))
    assert tags == {}
    assert _package_tags(aws, "split") == _package_tags(aws, "merge") == {}

    for dry in ((), ("--dry-run",)):
        builds: list[list[str]] = []
        aws.calls.clear()
        code, result, err = aws.deploy(*dry, run=docker_builds(builds))
        assert (code, result) == (2, None), err
        assert ("the deployed process function has your packages (--package mylab "
                "other-1.0-py3-none-any.whl; --requirements requirements.txt: scikit-image), "
                "and this deploy would build its image without them") in err, err
        assert "give the same --package/--requirements again" in err
        assert "--no-packages" in err and "nothing was changed" in err
        assert builds == [] and aws.writes() == []

    # --skip-build keeps the deployed images: nothing to say, the record stays
    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "packages" not in err
    assert _package_tags(aws)["tiffpipe:packages"] == "mylab other-1.0-py3-none-any.whl"

    # a changed set is a rebuild with it; the record follows
    code, _, err = aws.deploy("--package", str(project), run=docker_builds([]))
    assert code == 0, err
    assert "your packages changed since the last deploy" in err
    tags = _package_tags(aws)
    assert tags["tiffpipe:packages"] == "mylab" and "tiffpipe:requirements" not in tags
    (project / "mylab" / "filters.py").write_text("def flatten(tile): return tile + 0\n")
    code, _, err = aws.deploy("--package", str(project), run=docker_builds([]))
    assert code == 0, err
    assert _package_tags(aws)["tiffpipe:packages-sha256"] != tags["tiffpipe:packages-sha256"]
    # the same again: nothing changes
    aws.calls.clear()
    code, _, err = aws.deploy("--package", str(project), run=docker_builds([]))
    assert code == 0 and "nothing changed" in err, err
    assert aws.writes() == []

    # --no-packages drops them, and says so; then a build without them is fine
    code, _, err = aws.deploy("--no-packages", run=docker_builds([]))
    assert code == 0, err
    assert "--no-packages: the process image is built without your packages (--package mylab)" \
        in err
    assert _package_tags(aws) == {}
    aws.calls.clear()
    code, _, err = aws.deploy(run=docker_builds([]))
    assert code == 0 and "nothing changed" in err, err


def test_the_record_of_your_packages_fits_lambdas_tags(tmp_path: Path):
    """Tag values take letters, digits, spaces and _.:/=+-@, at most 256 characters: the
    names are the projects a requirements file lists (not its options, versions, extras,
    markers or URLs) and the packages' file or folder names; the digest covers the files
    as the build context holds them (not a folder's caches or .git)."""
    requirements, project, wheel = _my_packages(tmp_path)
    requirements.write_text("--index-url https://mirror.example/simple\n# a comment\n\n"
                            "scikit-image[data]==0.25.2  # for mylab\n"
                            "pillow>=10 ; python_version < '3.13'\n"
                            "mylib @ https://example.com/mylib-1.0-py3-none-any.whl\n"
                            "https://example.com/other-2.0-py3-none-any.whl\n")
    odd = tmp_path / "lab, v2 (copy)"
    odd.mkdir()
    (odd / "setup.py").write_text("")
    tags = docker_images.package_tags(str(requirements), [str(project), str(wheel), str(odd)])
    assert tags[docker_images.REQUIREMENTS_TAG] == \
        "requirements.txt: scikit-image pillow mylib"
    assert tags[docker_images.PACKAGES_TAG] == \
        "mylab other-1.0-py3-none-any.whl lab_ v2 _copy_"
    assert docker_images.describe_packages(tags) == (
        "--package mylab other-1.0-py3-none-any.whl lab_ v2 _copy_; "
        "--requirements requirements.txt: scikit-image pillow mylib")
    # caches and .git are not part of it; a file of the package is
    (project / ".git" / "HEAD").write_text("ref: refs/heads/other\n")
    (project / "mylab" / "__pycache__" / "x.pyc").write_bytes(b"y")
    again = docker_images.package_tags(str(requirements), [str(project), str(wheel), str(odd)])
    assert again == tags
    (project / "mylab" / "more.py").write_text("")
    assert docker_images.package_tags(str(requirements), [str(project), str(wheel), str(odd)])[
        docker_images.PACKAGES_DIGEST_TAG] != tags[docker_images.PACKAGES_DIGEST_TAG]
    many = [tmp_path / f"{'x' * 40}-{n}.whl" for n in range(10)]
    for path in many:
        path.write_bytes(b"PK")
    long = docker_images.package_tags(None, [str(path) for path in many])
    assert len(long[docker_images.PACKAGES_TAG]) == 256
    assert long[docker_images.PACKAGES_TAG].endswith(" ...")
    assert docker_images.package_tags(None, []) == {}


def test_the_digest_covers_what_a_symlinked_folder_puts_in_the_image(tmp_path: Path):
    """A project folder may link a folder of its code from elsewhere (mylab/ops ->
    ../../shared/ops): the build context copies its files (copytree follows the link), but
    the digest (os.walk, which does not) left them out, so a change there did not show in
    the record of the packages (tiffpipe:packages-sha256) while the image changed."""
    _, project, _ = _my_packages(tmp_path)
    shared = tmp_path / "shared" / "ops"
    shared.mkdir(parents=True)
    (shared / "blur.py").write_text("def blur(tile): return tile\n")
    (project / "mylab" / "ops").symlink_to(shared, target_is_directory=True)
    before = docker_images.package_tags(None, [str(project)])
    (shared / "blur.py").write_text("def blur(tile): return tile + 1\n")
    after = docker_images.package_tags(None, [str(project)])
    key = docker_images.PACKAGES_DIGEST_TAG
    assert after[key] != before[key]
    with docker_images.user_context(None, [str(project)], root=ROOT) as context:
        assert context is not None
        copied = context / "images/process/user/packages/00/mylab/mylab/ops/blur.py"
        assert copied.read_text() == (shared / "blur.py").read_text()


def test_a_stack_deployed_without_the_record_is_not_refused(aws: Aws):
    """A process function without the tags (a stack deployed before them, or never with
    packages): nothing says it has packages, so a build without them goes on."""
    assert aws.deploy(run=docker_builds([]))[0] == 0
    assert _package_tags(aws) == {}
    code, _, err = aws.deploy(run=docker_builds([]))
    assert code == 0 and "nothing changed" in err, err


def test_failed_push_stops_and_a_rerun_finishes(aws: Aws):
    built: list[str] = []
    code, result, err = aws.deploy(build=fake_build(built, fail_on="process"),
                                   run=fake_docker())
    assert code == 1
    assert "docker push" in err and "connection reset" in err and "Traceback" not in err
    assert aws.client("lambda").list_functions()["Functions"] == []  # nothing refers to it

    code, result, err = aws.deploy(build=fake_build(built), run=fake_docker())
    assert code == 0, err
    assert result is not None
    assert len(aws.client("lambda").list_functions()["Functions"]) == 3
    assert "create bucket" not in err  # resumed: the bucket and repositories were there


def test_docker_login_failure_is_reported(aws: Aws):
    code, _, err = aws.deploy(build=fake_build([]), run=fake_docker(fail="login"))
    assert code == 1
    assert "docker login" in err and "failed" in err


def test_schedule_needs_a_valid_manifest(aws: Aws, tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "b.tif"}]}))
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                              "--schedule-manifest", str(bad))
    assert code == 2
    assert "jobs[0].input: expected an s3:// URL" in err
    assert aws.writes() == []
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)")
    assert code == 2 and "--schedule needs --schedule-manifest" in err


def test_a_jobs_manifest_on_a_schedule_must_say_what_a_rerun_does(aws: Aws, tmp_path: Path):
    """The docs describe schedules for scans (each run picks up the new files), but a
    manifest of jobs was taken as well: every scheduled run then did all its jobs again,
    replacing their outputs (a job's if_exists is overwrite unless set), a bill per run for
    the same results. A jobs manifest is refused for a schedule (exit 2, nothing changed)
    unless each job's if_exists is set, by the job or its defaults: skip (each run does
    only the jobs whose output is missing), or overwrite/fail on purpose."""
    push_fake_images(aws)
    jobs = [{"input": f"s3://data-in/incoming/{n}.tif", "output": f"s3://data-out/{n}.tif"}
            for n in "abcdefg"]
    manifest = tmp_path / "nightly.json"

    def deploy(data: Any, url: str | None = None) -> tuple[int, str]:
        manifest.write_text(json.dumps(data))
        code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)",
                                  "--schedule-manifest", url or str(manifest), *SCAN_LOCATIONS)
        return code, err

    aws.calls.clear()
    code, err = deploy({"jobs": jobs})
    assert code == 2, err
    assert ('jobs: every scheduled run would do these jobs again, replacing their outputs: '
            'jobs[0], jobs[1], jobs[2], jobs[3], jobs[4] and 2 more leave "if_exists" unset '
            '(overwrite)') in err, err
    assert '"if_exists": "skip" in "defaults"' in err and '"scan"' in err
    assert aws.writes() == []
    code, err = deploy(jobs)  # a bare list of jobs: the same manifest
    assert code == 2 and 'and 2 more leave "if_exists" unset' in err, err
    assert '"defaults" (the manifest as {"defaults": {"if_exists": "skip"}, "jobs"' in err
    # one job unset among explicit ones: that one is named
    code, err = deploy({"jobs": [{**j, "if_exists": "overwrite"} for j in jobs[:2]] + jobs[2:3]})
    assert code == 2 and "jobs[2] leaves" in err and "jobs[0]" not in err, err
    # an S3 schedule manifest is checked as well
    aws.client("s3").put_object(Bucket="data-in", Key="incoming/m.json",
                                Body=json.dumps({"jobs": jobs}).encode())
    aws.calls.clear()
    code, err = deploy({"jobs": jobs}, "s3://data-in/incoming/m.json")
    assert code == 2 and "leave \"if_exists\" unset" in err, err
    assert aws.writes() == []

    for ok in ({"defaults": {"if_exists": "skip"}, "jobs": jobs},
               {"defaults": {"if_exists": "skip"},
                "jobs": [{**jobs[0], "if_exists": "overwrite"}, *jobs[1:]]},
               {"jobs": [{**j, "if_exists": "overwrite"} for j in jobs]}):
        code, err = deploy(ok)
        assert code == 0, err
    # a scan: its jobs are for outputs that do not exist
    code, _, err = aws.deploy("--skip-build", "--schedule", "rate(1 day)", "--schedule-manifest",
                              str(scan_manifest(tmp_path)))
    assert code == 0, err


@pytest.mark.parametrize("expression", ["every day", "rate(1 days)", "rate(2 day)",
                                        "rate(0 hours)", "cron(0 2 * * ?)", "rate(1 week)"])
def test_a_schedule_scheduler_would_refuse_is_a_usage_error(aws: Aws, tmp_path: Path,
                                                             expression: str):
    """Checked before any AWS call (AWS would refuse it only at the deploy's last step, with
    every other resource made): exit 2, saying what is expected."""
    err = _refused_schedule(aws, tmp_path, expression)
    assert f"--schedule {expression!r}: expected" in err and "cron(0 2 * * ? *)" in err


def _refused_schedule(aws: Aws, tmp_path: Path, expression: str) -> str:
    """deploy.py's stderr for a schedule of ``expression``, refused before any AWS call."""
    manifest = tmp_path / "night.json"
    manifest.write_text(json.dumps({"scan": {"input": "s3://slides/in/", "output":
                                             "s3://results/"}}))
    code, result, err = aws.deploy("--skip-build", "--schedule", expression,
                                   "--schedule-manifest", str(manifest))
    assert (code, result) == (2, None), err
    assert aws.calls == []
    return err


@pytest.mark.parametrize(("expression", "said"), [
    ("cron(0 25 * * ? *)", "hours '25': expected 0-23"),
    ("cron(60 2 * * ? *)", "minutes '60': expected 0-59"),
    ("cron(0 2 0 * ? *)", "day-of-month '0': expected 1-31"),
    ("cron(0 2 * 13 ? *)", "month '13': expected 1-12 or JAN-DEC"),
    ("cron(0 2 ? * 8 *)", "day-of-week '8': expected 1-7 or SUN-SAT"),
    ("cron(0 2 * * ? 1969)", "year '1969': expected 1970-2199"),
    ("cron(0 2 * * * *)", ("day-of-month '*' and day-of-week '*': expected exactly one of "
                           "them to be \"?\"")),
    ("cron(0 2 ? * ? *)", "day-of-month '?' and day-of-week '?': expected exactly one"),
])
def test_a_cron_field_scheduler_would_refuse_is_named_before_any_call(
        aws: Aws, tmp_path: Path, expression: str, said: str):
    """Six fields are not enough: each is checked as EventBridge Scheduler documents it
    (hours 0-23, minutes 0-59, ..., one of day-of-month and day-of-week "?"), before any AWS
    call; before, these were taken and the schedule call failed after the functions and the
    state machine had been updated."""
    err = _refused_schedule(aws, tmp_path, expression)
    assert f"deploy.py: --schedule {expression!r}: {said}" in err, err
    assert "cron(0 2 * * ? *)" in err and "cron(0 2 ? * MON *)" in err


@pytest.mark.parametrize("expression", [
    "cron(0/15 8-17 ? * MON-FRI *)", "cron(0 2 L * ? *)", "cron(30 23 ? * 6L 2027-2030)",
    "cron(0 2 ? * 3#2 *)", "cron(0 2 15W JAN,JUL ? *)", "cron(0 */6 1 * ? *)"])
def test_the_cron_wildcards_scheduler_documents_are_taken(expression: str):
    check_schedule(expression, "s3://slides/night.json")


# --- build_and_push, the CLI as a program --------------------------------------------------


def test_build_and_push_commands_and_digest(tmp_path: Path):
    (tmp_path / "images" / "split").mkdir(parents=True)
    (tmp_path / "images" / "split" / "Dockerfile").write_text("FROM scratch\n")
    digest = "sha256:" + "ab" * 32
    commands: list[list[str]] = []

    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        commands.append(list(args))
        out = {"build --help": "  --provenance string   Shorthand for ...",
               "image inspect": "sha256:" + "cd" * 32,
               "push": f"v1: digest: {digest} size: 1234\n"}
        text = next((v for k, v in out.items() if " ".join(args[1:]).startswith(k)), "")
        return subprocess.CompletedProcess(args, 0, text, "")

    got = docker_images.build_and_push("split", "arm64", "localhost:5000/tp-split",
                                       base_image="base:1", context=tmp_path, run=run)
    assert got == digest
    build = next(c for c in commands if c[1] == "build" and "--help" not in c)
    assert build[build.index("--platform") + 1] == "linux/arm64"
    assert "--provenance=false" in build
    assert build[build.index("-f") + 1] == str(tmp_path / "images" / "split" / "Dockerfile")
    assert "BASE_IMAGE=base:1" in build and build[-1] == str(tmp_path)
    tag = "localhost:5000/tp-split:img-arm64-" + "cd" * 8
    assert ["docker", "tag", "tiffpipe-split:build-arm64", tag] in commands
    assert commands[-1] == ["docker", "push", tag]


def test_the_script_runs_against_an_endpoint(monkeypatch: pytest.MonkeyPatch,
                                             moto_server: str):
    """deploy.py as a program, every call sent to a moto server by --endpoint-url."""
    endpoint = moto_server
    _clean_env(monkeypatch)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    aws = Aws(session)
    aws.client = lambda service: session.client(  # type: ignore[method-assign]
        service, region_name=REGION, endpoint_url=endpoint)
    push_fake_images(aws)

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "deploy.py"), "--stack", STACK, "--region", REGION,
             "--endpoint-url", endpoint, *args], capture_output=True, text=True, env=env,
            timeout=90, check=False)

    done = script("--skip-build")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state_machine"] == NAMES.state_machine_arn
    # an endpoint of plain HTTP: an HTTPS-only bucket would refuse every request of the stack
    assert f"HTTPS only left out, S3 is reached over plain HTTP here ({endpoint}" in done.stderr
    # moto's server has no GetAccountSettings: it answers its web server's HTML 404 page,
    # which was shown whole; now a line naming the call, the status and the code
    [concurrency] = [line for line in done.stderr.splitlines()
                     if "concurrency could not be read" in line]
    assert concurrency.endswith(
        ": the GetAccountSettings call failed (HTTP 404, error code 404): an HTML page titled "
        '"404 Not Found" instead of an AWS error: the endpoint does not serve this API (an '
        "emulator without it, or a proxy)"), concurrency
    assert "<" not in done.stderr and "give --concurrency to set it" in concurrency
    with pytest.raises(aws.client("s3").exceptions.ClientError, match="NoSuchBucketPolicy"):
        aws.client("s3").get_bucket_policy(Bucket=NAMES.bucket)
    again = script("--skip-build")
    assert again.returncode == 0 and "nothing changed" in again.stderr
    gone = script("--destroy", "--delete-bucket")
    assert gone.returncode == 0, gone.stderr
    assert aws.client("lambda").list_functions()["Functions"] == []


@pytest.mark.parametrize("buffering", sorted(BUFFERING))
def test_a_reader_that_goes_early_ends_the_script_quietly(moto_server: str, buffering: str):
    """``deploy.py --print-operator-policy | head -3`` ended in a BrokenPipeError traceback
    (exit 1; or "Exception ignored", exit 120, where the output waited for the exit's flush):
    now exit 0 and nothing on stderr, whether the reader is gone before the first write
    (``| head -0``; ``--help`` too, which argparse ends), or after the first line of more
    than the pipe holds (a policy of 2000 data locations, ~140 kB: the write after the
    reader's close must fail, however the two processes are scheduled)."""
    env = command_env(buffering, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    script = [sys.executable, str(ROOT / "deploy.py"), "--region", REGION, "--endpoint-url",
              moto_server]
    for args in (["--print-operator-policy"], ["--help"]):
        assert run_without_reader([*script, *args], env) == (0, ""), args
    many = [a for k in range(2000) for a in ("--data-bucket", f"data-{k}")]
    proc = subprocess.Popen([*script, "--print-deployer-policy", *many], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"{\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=90), err) == (0, "")


def test_a_failed_call_is_said_on_one_line(moto_server: str):
    """What an endpoint answers a call with, said on one line (call_failed): an HTML page by
    its title, AWS's error (JSON for Lambda, a body-less 404 for S3's HeadObject, XML for
    IAM) with its code and message."""
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    said = {}
    for service, call in (
            ("lambda", lambda c: c.get_account_settings()),
            ("lambda", lambda c: c.get_function(FunctionName="nope")),
            ("s3", lambda c: c.head_object(Bucket="nope", Key="k")),
            ("iam", lambda c: c.get_role(RoleName="nope"))):
        client = session.client(service, endpoint_url=moto_server)
        with pytest.raises(ClientError) as caught:
            call(client)
        said[caught.value.operation_name] = call_failed(caught.value)
    assert said == {
        "GetAccountSettings": "the GetAccountSettings call failed (HTTP 404, error code 404): "
                              'an HTML page titled "404 Not Found" instead of an AWS error: '
                              "the endpoint does not serve this API (an emulator without it, "
                              "or a proxy)",
        "GetFunction": "the GetFunction call failed (HTTP 404, error code "
                       "ResourceNotFoundException): Function not found: arn:aws:lambda:"
                       f"{REGION}:{ACCOUNT}:function:nope",
        "HeadObject": "the HeadObject call failed (HTTP 404, error code 404): Not Found",
        "GetRole": "the GetRole call failed (HTTP 404, error code NoSuchEntity): Role nope not "
                   "found"}


def test_an_aws_error_sent_as_html_is_said_with_its_code_and_message():
    """AWS's XML error sent as text/html (a 403 AccessDenied from moto's IAM-enforcing
    server; a proxy) was said to be "an HTML page instead of an AWS error: the endpoint
    does not serve this API": whatever the service's protocol (JSON for Logs, which botocore
    cannot parse it as; XML for S3 and IAM), its code and message are said."""
    body = (b'<?xml version="1.0" encoding="UTF-8"?><ErrorResponse><Error><Code>AccessDenied'
            b"</Code><Message>User: arn:aws:iam::123456789012:user/deployer is not authorized "
            b"to perform: logs:PutRetentionPolicy</Message></Error><RequestId>r</RequestId>"
            b"</ErrorResponse>")

    class Denying(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(403)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_PUT = do_POST

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Denying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    try:
        for service, call in (
                ("logs", lambda c: c.put_retention_policy(logGroupName="/g", retentionInDays=1)),
                ("s3", lambda c: c.put_bucket_tagging(Bucket="bkt", Tagging={"TagSet": []})),
                ("iam", lambda c: c.get_role(RoleName="r"))):
            client = session.client(service, endpoint_url=f"http://127.0.0.1:{server.server_port}",
                                    config=botocore.config.Config(retries={"max_attempts": 1}))
            with pytest.raises(ClientError) as caught:
                call(client)
            assert call_failed(caught.value) == (
                f"the {caught.value.operation_name} call failed (HTTP 403, error code "
                "AccessDenied): User: arn:aws:iam::123456789012:user/deployer is not "
                "authorized to perform: logs:PutRetentionPolicy")
    finally:
        server.shutdown()
        server.server_close()


def test_an_invalid_stack_name_is_a_usage_error(aws: Aws):
    """A --stack that cannot name a bucket: exit 2 (usage), before any AWS call."""
    code, result, err = aws.deploy("--skip-build", "--stack", "Bad_Name")
    assert (code, result) == (2, None)
    assert "--stack 'Bad_Name': expected 1 to 20 lower-case letters" in err
    assert aws.calls == []


def test_an_endpoint_url_that_is_no_url_is_a_usage_error(aws: Aws):
    """``--endpoint-url localhost:4566`` (no scheme) ended in botocore's ValueError traceback
    at the first client: exit 2 naming the option and what it takes, before any AWS call."""
    code, result, err = aws.deploy("--skip-build", "--endpoint-url", "localhost:4566")
    assert (code, result) == (2, None)
    assert err == ("deploy.py: --endpoint-url 'localhost:4566': expected an http:// or "
                   "https:// URL, e.g. http://localhost:4566\n")
    assert aws.calls == []


def test_a_function_in_a_failed_state_is_deployed_again(aws: Aws):
    """A function Lambda could not set up (State Failed, e.g. its image's repository no
    longer readable) is repaired by a redeploy, which would otherwise find its image and
    settings unchanged and do nothing. moto cannot make a function fail: its GetFunction
    answer is changed to what Lambda says then (the only stand-in of this test)."""
    push_fake_images(aws, "v1")
    assert aws.deploy("--skip-build")[0] == 0
    broken = NAMES.function("process")

    def failed(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        config = parsed.get("Configuration", {})
        if config.get("FunctionName") == broken:
            config.update(State="Failed", StateReasonCode="ImageAccessDenied",
                          StateReason="Lambda does not have permission to access the image")

    aws.session.events.register("after-call.lambda.GetFunction", failed)
    aws.calls.clear()
    try:
        code, _, err = aws.deploy("--skip-build")
    finally:
        aws.session.events.unregister("after-call.lambda.GetFunction", failed)
    assert code == 0, err
    assert "failed state (ImageAccessDenied Lambda does not have permission" in err
    assert aws.writes().count("lambda.UpdateFunctionCode") == 1  # that function only


# --- who may deploy ----------------------------------------------------------------------------

#: S3 operations whose IAM action has another name (HeadBucket is allowed by s3:ListBucket)
_S3_ACTIONS = {
    "HeadBucket": ["ListBucket"], "ListObjectVersions": ["ListBucketVersions"],
    "ListObjectsV2": ["ListBucket"], "HeadObject": ["GetObject"],
    "GetBucketEncryption": ["GetEncryptionConfiguration"],
    "PutBucketEncryption": ["PutEncryptionConfiguration"],
    "GetPublicAccessBlock": ["GetBucketPublicAccessBlock"],
    "PutPublicAccessBlock": ["PutBucketPublicAccessBlock"],
    "GetBucketLifecycleConfiguration": ["GetLifecycleConfiguration"],
    "PutBucketLifecycleConfiguration": ["PutLifecycleConfiguration"],
    "DeleteObjects": ["DeleteObject", "DeleteObjectVersion"],
}


def _iam_request(service: str, operation: str, params: dict[str, Any]
                 ) -> tuple[list[str], str] | None:
    """The IAM actions and the resource ARN an API call is authorised as (None: a call that
    needs no permission)."""
    if service == "sts":
        return None  # GetCallerIdentity: always allowed
    if service == "s3":
        key = params.get("Key") or next(
            (o["Key"] for o in params.get("Delete", {}).get("Objects", [])), None)
        arn = f"arn:aws:s3:::{params['Bucket']}" + (f"/{key}" if key else "")
        return [f"s3:{a}" for a in _S3_ACTIONS.get(operation, [operation])], arn
    prefix = {"stepfunctions": "states"}.get(service, service)
    if service == "kms":  # (S3's, for the caller: see decrypted_by_s3)
        return [f"kms:{operation}"], params["KeyId"]
    if service == "iam":
        arn = NAMES.role_arn(params["RoleName"])
    elif service == "lambda":
        name = params.get("FunctionName") or params.get("Resource")
        arn = "*" if name is None else (
            name if name.startswith("arn:") else NAMES.function_arn("x").replace(
                NAMES.function("x"), name)) + (f":{params['Qualifier']}"
                                               if "Qualifier" in params else "")
    elif service == "ecr":
        name = params.get("repositoryName") or (params.get("repositoryNames") or [None])[0]
        arn = params.get("resourceArn") or (
            "*" if name is None else f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}")
    elif service == "logs":
        arn = (NAMES.log_group_arn(params["logGroupName"]) if "logGroupName" in params
               else f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*")
    elif service == "stepfunctions":
        arn = params.get("stateMachineArn") or params.get("executionArn") or \
            NAMES.state_machine_arn
    elif service == "scheduler":
        arn = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/{params['Name']}"
    else:
        raise AssertionError(f"deploy.py calls {service}.{operation}: add it to this test")
    return [f"{prefix}:{operation}"], arn


def _allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    import fnmatch

    return any(action in s["Action"] and any(
        r == "*" or fnmatch.fnmatchcase(resource, r) for r in _resources(s))
        for s in _statements(policy))


def denied_calls(policy: dict[str, Any], requests: list[tuple[str, str, dict[str, Any]]],
                 as_request: Any) -> list[str]:
    """The recorded API calls (service, operation, parameters) that ``policy`` does not
    allow, "action on resource" each; ``as_request`` names a call's IAM actions and resource
    (None: a call no policy statement covers, such as STS's)."""
    denied = set()
    for service, operation, params in requests:
        request = as_request(service, operation, params)
        if request is None:
            continue
        actions, resource = request
        denied |= {f"{a} on {resource}" for a in actions if not _allowed(policy, a, resource)}
    return sorted(denied)


def test_the_deployer_policy_allows_every_call_deploy_and_destroy_make(aws: Aws, tmp_path: Path):
    """Every API call of a first deploy (images built and pushed, a schedule, data
    locations), a redeploy that changes it while an execution runs, the schedule's removal
    (the versions no execution uses deleted), a rollback and a destroy with the bucket is
    allowed by deploy.py --print-deployer-policy, on the resource it names."""
    requests: list[tuple[str, str, dict[str, Any]]] = []

    recording = [True]  # (not the calls of push_fake_images, the test's stand-in build)

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if recording[0]:
            requests.append((model.service_model.service_name, model.name, dict(params)))
    aws.session.events.register("provide-client-params.*.*", record)
    manifest = scan_manifest(tmp_path)
    code, _, err = aws.deploy("--schedule", "rate(1 day)", "--schedule-manifest", str(manifest),
                              "--input-bucket", "slides", *SCAN_LOCATIONS,
                              build=fake_build([]), run=fake_docker())
    assert code == 0, err
    recording[0] = False  # (a run, started by another identity: not deploy.py's call)
    run = aws.client("stepfunctions").start_execution(
        stateMachineArn=NAMES.state_machine_arn, name="run-1", input="{}")["executionArn"]
    recording[0] = True
    manifest.write_text(manifest.read_text().replace('"sigma": 2', '"sigma": 3'))
    code, _, err = aws.deploy("--schedule", "rate(2 days)", "--schedule-manifest",
                              str(manifest), "--concurrency", "7", "--requirements",
                              str(_my_packages(tmp_path)[0]),
                              build=lambda step, *_, **__: "sha256:" + hashlib.sha256(
                                  f"{step}-v2".encode()).hexdigest(), run=fake_docker())
    assert code == 0, err
    for args in (["--no-schedule", "--skip-build"], ["--rollback"],
                 ["--destroy", "--delete-bucket"]):
        if args[0] == "--no-schedule":
            recording[0] = False
            push_fake_images(aws, "v3")
            recording[0] = True
        if args[0] == "--destroy":  # (a destroy waits for the runs: the run's owner stops it)
            recording[0] = False
            aws.client("stepfunctions").stop_execution(executionArn=run)
            recording[0] = True
        code, _, err = aws.deploy(*args)
        assert code == 0, err

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert deploy_script.main(["--stack", STACK, "--region", REGION,
                                   "--print-deployer-policy", "--input-bucket", "slides",
                                   *SCAN_LOCATIONS], session=aws.session) == 0
    policy = json.loads(out.getvalue())
    assert not (denied := denied_calls(policy, requests, _iam_request)), denied
    made = {f"{s}.{o}" + (":version" if "Qualifier" in p else "") for s, o, p in requests}
    assert made >= {"lambda.PublishVersion", "lambda.DeleteFunction:version",
                    "lambda.GetFunctionConfiguration:version",
                    "stepfunctions.DescribeStateMachineForExecution"}, made
    assert {s for s, _, _ in requests} >= {"s3", "ecr", "iam", "lambda", "logs",
                                           "stepfunctions", "scheduler"}


def decrypted_by_s3(s3: Any, requests: list[tuple[str, str, dict[str, Any]]]
                    ) -> list[tuple[str, str, dict[str, Any]]]:
    """What S3 asks of KMS for the caller of ``requests`` (moto does not): a kms:Decrypt
    with the key of each SSE-KMS object read (one not there: nothing)."""
    found = []
    for service, operation, params in requests:
        if (service, operation) == ("s3", "GetObject"):
            try:
                head = s3.head_object(Bucket=params["Bucket"], Key=params["Key"])
            except s3.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] != "404":
                    raise
                continue
            if head.get("ServerSideEncryption") == "aws:kms":
                found.append(("kms", "Decrypt", {"KeyId": head["SSEKMSKeyId"]}))
    return found


def test_a_deployer_policy_over_iams_size_quotas_is_said_with_how_to_split_it(aws: Aws):
    """With several data buckets and KMS keys the deployer policy passed IAM's 6,144
    characters of a managed policy (whitespace not counted) without a word: creating it
    failed. It is said on stderr, after the policy, with the jq commands that split it by
    statement into managed policies that each fit and together hold every statement; one
    within it is said to be over a user's inline policies' 2,048; one statement over it
    alone is named."""
    def printed(*args: str) -> tuple[dict[str, Any], str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert deploy_script.main(["--stack", STACK, "--region", REGION,
                                       "--print-deployer-policy", *args],
                                      session=aws.session) == 0
        return json.loads(out.getvalue()), err.getvalue()

    def size(doc: dict[str, Any]) -> int:
        return len(re.sub(r"\s", "", json.dumps(doc)))

    locations = [a for k in range(8) for a in ("--data-bucket", f"data-bucket-{k}/a/prefix")]
    keys = [a for k in range(6) for a in (
        "--kms-key", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{k:08d}-1111-2222-3333-444455556666")]
    policy, err = printed(*locations, "--schedule", "rate(1 day)", "--schedule-manifest",
                          "s3://data-bucket-0/a/prefix/nightly.json", *keys)
    assert size(policy) > 6144
    lines = err.splitlines()
    assert lines[0] == (
        f"deploy.py: the deployer policy is {size(policy):,} characters (whitespace not "
        "counted), over IAM's 6,144 for a managed policy (and 2,048 for a user's inline "
        "policies): save it (> policy.json), create these 2 managed policies from it, split "
        "by statement, and attach them all:"), err
    parts = []
    for k, line in enumerate(lines[1:], 1):
        cut = re.fullmatch(r"  jq '\{Version, Statement: \.Statement\[(\d+):(\d*)\]\}' "
                           rf"policy\.json > policy-{k}\.json", line)
        assert cut, line
        first, last = int(cut[1]), int(cut[2]) if cut[2] else None
        parts.append({"Version": policy["Version"],
                      "Statement": policy["Statement"][first:last]})
    assert len(parts) == 2 and all(size(part) <= 6144 for part in parts)
    assert [s for part in parts for s in part["Statement"]] == policy["Statement"]

    policy, err = printed()  # the stack's own bucket: a managed policy holds it
    assert 2048 < size(policy) <= 6144
    assert err == (f"deploy.py: the deployer policy is {size(policy):,} characters "
                   "(whitespace not counted): over IAM's 2,048 for a user's inline policies, "
                   "within 6,144 for a managed policy: create it as a managed policy and "
                   "attach it (or a role's inline policy, up to 10,240)\n")

    many = [a for k in range(300) for a in ("--data-bucket", f"data-{k}")]
    policy, err = printed(*many)
    assert "; its statement DataBuckets alone is " in err and "give fewer locations" in err


def test_the_deployer_decrypts_an_s3_schedule_manifest_through_s3(aws: Aws, tmp_path: Path):
    """An s3:// --schedule-manifest in a data bucket encrypted with a --kms-key key: deploy
    reads it (its checks), so S3 decrypts it for the deployer, which --print-deployer-policy
    with the same options allows, through S3 only; no KMS grant without an s3:// schedule
    manifest (a local one goes to the stack bucket, SSE-S3) or without --kms-key."""
    url = "s3://data-out/manifests/nightly.json"
    aws.client("s3").put_object(Bucket="data-out", Key="manifests/nightly.json",
                                Body=scan_manifest(tmp_path).read_bytes(),
                                ServerSideEncryption="aws:kms", SSEKMSKeyId=KEY)
    requests: list[tuple[str, str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        requests.append((model.service_model.service_name, model.name, dict(params)))
    aws.session.events.register("provide-client-params.*.*", record)
    scheduled = ("--schedule", "rate(1 day)", "--schedule-manifest", url, *SCAN_LOCATIONS,
                 "--kms-key", KEY)
    code, _, err = aws.deploy(*scheduled, build=fake_build([]), run=fake_docker())
    assert code == 0, err
    aws.session.events.unregister("provide-client-params.*.*", record)
    decrypted = decrypted_by_s3(aws.client("s3"), requests)
    assert decrypted == [("kms", "Decrypt", {"KeyId": KEY})]

    def printed(*args: str) -> dict[str, Any]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert deploy_script.main(["--stack", STACK, "--region", REGION,
                                       "--print-deployer-policy", *args],
                                      session=aws.session) == 0
        return json.loads(out.getvalue())

    policy = printed(*scheduled)
    assert not (denied := denied_calls(policy, requests + decrypted, _iam_request)), denied
    [keys] = [s for s in _statements(policy) if "kms" in json.dumps(s)]
    assert keys["Action"] == ["kms:Decrypt"] and keys["Resource"] == [KEY]
    assert keys["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
    # (the outputs' key too: the functions decrypt with it, a manifest there may have it)
    [keys] = [s for s in _statements(printed(*scheduled, "--sse", "aws:kms",
                                             "--sse-kms-key-id", DATA_KEY)) if "kms" in str(s)]
    assert keys["Resource"] == sorted([KEY, DATA_KEY])
    local = str(scan_manifest(tmp_path))
    for args in (scheduled[:3] + (local,) + scheduled[4:], scheduled[4:],
                 scheduled[:-2]):
        assert "kms" not in json.dumps(printed(*args)), args


def test_the_deployer_policy_passes_each_role_only_to_its_service():
    policy = policies.deployer_policy(NAMES, [DataLocation("data-in", "incoming/")])
    passes = [s for s in _statements(policy) if "iam:PassRole" in s["Action"]]
    services = {}
    for statement in passes:
        assert statement["Action"] == ["iam:PassRole"]
        [service] = statement["Condition"]["StringEquals"].values()
        for role in _resources(statement):
            services[role] = service
    assert services == {
        **{NAMES.role_arn(NAMES.function_role(s)): "lambda.amazonaws.com" for s in STEPS},
        NAMES.role_arn(NAMES.state_machine_role): "states.amazonaws.com",
        NAMES.role_arn(NAMES.scheduler_role): "scheduler.amazonaws.com"}
    anywhere = {a for s in _statements(policy) if s["Resource"] == "*" for a in s["Action"]}
    assert anywhere == {"ecr:GetAuthorizationToken", "lambda:GetAccountSettings",
                        *LOG_DELIVERY_ACTIONS}
    for statement in _statements(policy):  # nothing of another stack
        for arn in _resources(statement):
            assert arn == "*" or NAMES.prefix in arn or "data-in" in arn or \
                arn.endswith(":log-group:*"), arn


# --- the outputs' server-side encryption -------------------------------------------------------

SSE_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DATA_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/5678efgh-56ef-78ab-90cd-0987654321ba"


def _function_env(aws: Aws, step: str) -> dict[str, str]:
    config = aws.client("lambda").get_function(FunctionName=NAMES.function(step))["Configuration"]
    return (config.get("Environment") or {}).get("Variables") or {}


def test_sse_is_set_on_the_output_writers_kept_and_removed(aws: Aws):
    from pipeline.core.constants import SSE_ENV, SSE_KMS_KEY_ENV

    push_fake_images(aws)
    code, _, err = aws.deploy("--skip-build", "--data-bucket", "results", "--sse", "aws:kms",
                              "--sse-kms-key-id", SSE_KEY)
    assert code == 0, err
    want = {SSE_ENV: "aws:kms", SSE_KMS_KEY_ENV: SSE_KEY}
    assert {s: _function_env(aws, s) for s in STEPS} == {
        "split": {}, "process": want, "merge": want}
    for step in STEPS:  # the writers may make data keys with it (a multipart upload of
        # SSE-KMS needs both), split decrypt the plans PlanJob wrote with it; through S3
        policy = aws.client("iam").get_role_policy(RoleName=NAMES.function_role(step),
                                                   PolicyName="tiffpipe")["PolicyDocument"]
        [keys] = [s for s in _statements(policy) if s["Sid"] == "DataKeys"]
        assert keys["Resource"] == [SSE_KEY] and keys["Action"] == (
            ["kms:Decrypt"] if step == "split" else ["kms:Decrypt", "kms:GenerateDataKey"])
        assert keys["Condition"]["StringEquals"]["kms:ViaService"] == f"s3.{REGION}.amazonaws.com"
    # who starts and follows runs reads the reports and results the functions wrote with it,
    # and a manifest kept under a --kms-key
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert deploy_script.main(["--stack", STACK, "--region", REGION,
                                   "--print-operator-policy", "--kms-key", DATA_KEY, "--sse",
                                   "aws:kms", "--sse-kms-key-id", SSE_KEY],
                                  session=aws.session) == 0
    [keys] = [s for s in _statements(json.loads(out.getvalue())) if s["Sid"] == "ReadEncrypted"]
    assert keys["Action"] == ["kms:Decrypt"] and keys["Resource"] == sorted([DATA_KEY, SSE_KEY])
    assert keys["Condition"]["StringEquals"]["kms:ViaService"] == f"s3.{REGION}.amazonaws.com"
    assert not [s for s in _statements(policies.operator_policy(NAMES)) if "kms" in str(s)]
    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert not aws.writes() and "output encryption kept" in err
    assert _function_env(aws, "merge") == want
    code, _, err = aws.deploy("--skip-build", "--sse", "AES256")
    assert code == 0, err
    assert _function_env(aws, "process") == {SSE_ENV: "AES256"}
    code, _, err = aws.deploy("--skip-build", "--sse", "none")
    assert code == 0, err
    assert all(_function_env(aws, s) == {} for s in STEPS)


@pytest.mark.parametrize("args,message", [
    (["--sse-kms-key-id", SSE_KEY], "goes with --sse aws:kms"),
    (["--sse", "AES256", "--sse-kms-key-id", SSE_KEY], "goes with --sse aws:kms"),
    # (the option given named: it said "--kms-key 'alias/mine'", an option not given)
    (["--sse", "aws:kms", "--sse-kms-key-id", "alias/mine"],
     "--sse-kms-key-id 'alias/mine': expected a key ARN"),
])
def test_sse_usage_errors(aws: Aws, args: list[str], message: str):
    code, _, err = aws.deploy("--skip-build", *args)
    assert code == 2 and message in err and not aws.calls


# --- redeploying while runs go on: versions, rollback -----------------------------------------


def _versions(aws: Aws, step: str) -> list[str]:
    return [v["Version"] for v in aws.client("lambda").list_versions_by_function(
        FunctionName=NAMES.function(step))["Versions"] if v["Version"] != "$LATEST"]


def _previous_versions(aws: Aws) -> dict[str, str]:
    """The versions the definition kept for --rollback names."""
    text = aws.client("s3").get_object(Bucket=NAMES.bucket, Key=PREVIOUS_KEY)["Body"].read()
    found = {}
    for arn in re.findall(r'"FunctionName": "([^"]+)"', text.decode()):
        base, _, version = arn.rpartition(":")
        found[next(s for s in STEPS if base == NAMES.function_arn(s))] = version
    return found


def test_a_redeploy_names_new_versions_and_keeps_those_running_executions_use(aws: Aws):
    """Each deploy that changes a function's code or configuration publishes a version of it,
    and the state machine names the versions: an execution keeps the definition it started
    with (Step Functions), so it keeps invoking the versions it started on, whatever a
    deploy changes meanwhile; those are kept while it runs, and deleted by the first deploy
    after it ended. A deploy with nothing changed publishes nothing."""
    sfn = aws.client("stepfunctions")
    with moto_keeps_versions_as_aws():
        push_fake_images(aws, "v1")
        code, result, err = aws.deploy("--skip-build")
        assert code == 0, err
        assert result is not None and result["versions"] == dict.fromkeys(STEPS, "1")
        assert _definition_versions(aws) == dict.fromkeys(STEPS, "1")
        running = sfn.start_execution(stateMachineArn=NAMES.state_machine_arn, name="run-1",
                                      input="{}")["executionArn"]

        push_fake_images(aws, "v2")  # a new release
        code, result, err = aws.deploy("--skip-build")
        assert code == 0, err
        assert "1 execution(s) running: each goes on to its end" in err
        assert _definition_versions(aws) == dict.fromkeys(STEPS, "2")
        assert _previous_versions(aws) == dict.fromkeys(STEPS, "1")  # for --rollback
        kept = sfn.describe_state_machine_for_execution(executionArn=running)["definition"]
        assert set(re.findall(r'"FunctionName": "([^"]+)"', kept)) == {
            f"{NAMES.function_arn(s)}:1" for s in STEPS}  # the running one: still version 1

        code, result, err = aws.deploy("--skip-build", "--sse", "AES256")  # a new setting
        assert code == 0, err
        assert _definition_versions(aws) == {"split": "2", "process": "3", "merge": "3"}
        # 1: the running execution's; 2: the definition this deploy replaced
        assert {s: _versions(aws, s) for s in STEPS} == {
            "split": ["1", "2"], "process": ["1", "2", "3"], "merge": ["1", "2", "3"]}

        aws.calls.clear()
        code, result, err = aws.deploy("--skip-build")  # nothing changed
        assert code == 0, err
        assert aws.writes() == [] and "nothing changed" in err

        sfn.stop_execution(executionArn=running)  # it ended: no execution can use 1 now
        aws.calls.clear()
        code, result, err = aws.deploy("--skip-build")
        assert code == 0, err
        assert sorted(aws.writes()) == ["lambda.DeleteFunction"] * 3
        assert "delete version 1 of tiffpipe-t1-split" in err
        assert {s: _versions(aws, s) for s in STEPS} == {
            "split": ["2"], "process": ["2", "3"], "merge": ["2", "3"]}

        aws.calls.clear()
        code, result, err = aws.deploy("--skip-build", "--dry-run", "--sse", "none")
        assert code == 0, err
        assert aws.writes() == []
        assert "would publish version 4 of tiffpipe-t1-merge" in err
        assert "would delete version 2 of tiffpipe-t1-merge" in err
        assert "version 2 (its code and configuration): unchanged" in err  # split's


def test_rollback_points_the_state_machine_at_the_previous_release(aws: Aws):
    """--rollback: the definition the last deploy replaced (its versions, its concurrency)
    again, without a build; a second one goes forward again; nothing else changes."""
    code, _, err = aws.deploy("--rollback")
    assert code == 1 and "no state machine tiffpipe-t1" in err and not aws.writes()
    push_fake_images(aws, "v1")
    assert aws.deploy("--skip-build", "--concurrency", "40")[0] == 0
    first = _definition_versions(aws)
    aws.calls.clear()
    code, _, err = aws.deploy("--rollback")
    assert code == 1 and "nothing to go back to" in err and not aws.writes()
    push_fake_images(aws, "v2")
    assert aws.deploy("--skip-build", "--concurrency", "50")[0] == 0
    assert _definition_versions(aws) == dict.fromkeys(STEPS, "2")

    aws.calls.clear()
    code, result, err = aws.deploy("--rollback", "--dry-run")
    assert code == 0, err
    assert aws.writes() == [] and "would update the definition" in err
    code, result, err = aws.deploy("--rollback")
    assert code == 0, err
    assert _definition_versions(aws) == first and _deployed_concurrency(aws) == 40
    assert sorted(aws.writes()) == ["s3.PutObject", "stepfunctions.UpdateStateMachine"]
    assert result is not None and result["versions"] == dict.fromkeys(STEPS, "1")
    assert "from versions split 2, process 2, merge 2 to split 1, process 1, merge 1" in err
    code, _, err = aws.deploy("--skip-build", "--dry-run")  # (it would undo the rollback)
    assert code == 0 and "runs what a --rollback went back to (versions split 1" in err
    lam = aws.client("lambda")
    code, _, err = aws.deploy("--rollback")  # forward again
    assert code == 0, err
    assert _definition_versions(aws) == dict.fromkeys(STEPS, "2")
    assert _deployed_concurrency(aws) == 50

    # the previous release's versions gone (deleted by hand): refused, nothing changed
    lam.delete_function(FunctionName=NAMES.function("merge"), Qualifier="1")
    aws.calls.clear()
    code, _, err = aws.deploy("--rollback")
    assert code == 1 and "no longer exist (tiffpipe-t1-merge:1)" in err
    assert aws.writes() == []

    code, _, err = aws.deploy("--destroy")
    assert code == 0, err
    assert not aws.client("s3").list_objects_v2(Bucket=NAMES.bucket, Prefix="deploys/").get(
        "Contents")  # (it would name versions of functions that are gone)


def test_rollback_and_a_deploy_say_the_concurrency_they_change(aws: Aws):
    """--rollback put the concurrency back (80 -> 50) but said only the versions; a deploy
    whose one change was the concurrency said "update the definition, role and logging".
    Each says the concurrency change now (the rollback in its JSON too), and a deploy says
    only what differs."""
    push_fake_images(aws, "v1")
    assert aws.deploy("--skip-build", "--concurrency", "50")[0] == 0
    push_fake_images(aws, "v2")
    assert aws.deploy("--skip-build", "--concurrency", "80")[0] == 0

    code, result, err = aws.deploy("--rollback")
    assert code == 0, err
    assert _deployed_concurrency(aws) == 50
    assert ("rollback: from versions split 2, process 2, merge 2 to split 1, process 1, "
            "merge 1; concurrency 80 -> 50") in err, err
    assert "update the definition to the previous one (split 1, process 1, merge 1; " \
        "concurrency 80 -> 50)" in err
    assert result is not None
    assert (result["concurrency"], result["replaced_concurrency"]) == (50, 80)

    code, result, err = aws.deploy("--skip-build")  # (forward to v2, the concurrency kept)
    assert code == 0, err
    assert "  update the definition\n" in err, err
    code, result, err = aws.deploy("--skip-build", "--concurrency", "70")
    assert code == 0, err
    assert _deployed_concurrency(aws) == 70
    said = [line.strip() for line in err.splitlines() if line.strip().startswith("update ")]
    assert said == ["update the concurrency 50 -> 70"], err
    code, result, err = aws.deploy("--skip-build", "--concurrency", "60", "--dry-run")
    assert code == 0 and "would update the concurrency 70 -> 60" in err, err


def _setting(text: str | bytes) -> int:
    """PlanRun's ``concurrency`` in a definition (0: none, deployed while the account's
    settings could not be read)."""
    return definition.concurrency_setting(text.decode() if isinstance(text, bytes) else text)


@pytest.mark.parametrize("given", ["--concurrency", "unreserved"])
def test_a_concurrency_of_8000_set_where_none_was_updates_the_definition(aws: Aws, given: str):
    """A stack deployed without a concurrency (the account's settings unreadable) runs at
    most 8,000 at once, as one deployed with 8,000: the redeploy giving 8,000 (--concurrency,
    or an unreserved concurrency of 10,000 capped) changed the definition's JSON, so deploy
    kept the deployed one for --rollback, but the state machine was not updated (no part
    differed: "same"): every such redeploy overwrote the rollback target with the running
    definition, and --rollback had nothing to go back to. It is updated now ("the
    definition": its number is the same) and the next redeploy changes nothing."""
    sfn, s3 = aws.client("stepfunctions"), aws.client("s3")

    def deployed() -> str:
        return str(sfn.describe_state_machine(
            stateMachineArn=NAMES.state_machine_arn)["definition"])

    push_fake_images(aws, "v1")  # moto answers GetAccountSettings with an error
    assert aws.deploy("--skip-build")[0] == 0
    push_fake_images(aws, "v2")
    assert aws.deploy("--skip-build")[0] == 0
    assert _setting(deployed()) == 0 and _previous_versions(aws) == dict.fromkeys(STEPS, "1")
    unset = deployed()
    option = ["--concurrency", "8000"] if given == "--concurrency" else []
    if given == "unreserved":
        _account_concurrency(aws, 10000)

    code, result, err = aws.deploy("--skip-build", *option)
    assert code == 0, err
    said = [line.strip() for line in err.splitlines() if line.strip().startswith("update ")]
    assert said == ["update the definition"], err
    assert _setting(deployed()) == 8000 and result is not None and result["concurrency"] == 8000
    previous = s3.get_object(Bucket=NAMES.bucket, Key=PREVIOUS_KEY)["Body"].read()
    assert json.loads(previous) == json.loads(unset)  # the one it replaced

    aws.calls.clear()
    code, _, err = aws.deploy("--skip-build", *option)  # again: nothing to change
    assert code == 0 and aws.writes() == [] and "nothing changed" in err, err

    code, _, err = aws.deploy("--rollback")
    assert code == 0, err
    assert json.loads(deployed()) == json.loads(unset)


@pytest.mark.parametrize("option", [["--skip-build"], ["--data-bucket", "slides"],
                                    ["--destroy"], ["--concurrency", "3"],
                                    ["--schedule", "rate(1 day)"]])
def test_rollback_changes_only_the_state_machine(aws: Aws, option: list[str]):
    code, _, err = aws.deploy("--rollback", *option)
    assert code == 2 and f"leave out {option[0]}" in err and not aws.calls


def test_a_stack_deployed_before_versions_is_told_which_runs_stay_unversioned(aws: Aws):
    """The first deploy over a stack whose definition named the functions unversioned:
    the runs going on then invoke $LATEST, so their tasks after it run its code. It says
    so (they cannot be moved), deploys the versioned definition, and --rollback will not
    go back to the unversioned one (it would run the new code all the same)."""
    push_fake_images(aws, "v1")
    assert aws.deploy("--skip-build")[0] == 0
    sfn = aws.client("stepfunctions")
    before = definition.render({s: NAMES.function_arn(s) for s in STEPS})  # as deployed then
    sfn.update_state_machine(stateMachineArn=NAMES.state_machine_arn, definition=before)
    with moto_keeps_versions_as_aws():
        sfn.start_execution(stateMachineArn=NAMES.state_machine_arn, name="run-old",
                            input="{}")
        push_fake_images(aws, "v2")
        code, _, err = aws.deploy("--skip-build")
    assert code == 0, err
    assert "1 of them started on a definition deployed before versioned deploys" in err
    assert _definition_versions(aws) == dict.fromkeys(STEPS, "2")
    code, _, err = aws.deploy("--rollback")
    assert code == 1 and "does not name a version of each of the stack's functions" in err


# --- the deploy lock: one deploy.py at a time changes a stack ---------------------------------


def _stack_state(aws: Aws) -> dict[str, Any]:
    """What two deploys at once would interleave: the state machine's definition (function
    versions, concurrency), each function's versions and code, the rollback record, and
    every resource."""
    lam, s3 = aws.client("lambda"), aws.client("s3")
    previous = get_or_none_key(s3, PREVIOUS_KEY)
    return {"definition": aws.client("stepfunctions").describe_state_machine(
                stateMachineArn=NAMES.state_machine_arn)["definition"],
            "versions": {s: [(v["Version"], v["CodeSha256"]) for v in
                             lam.list_versions_by_function(
                                 FunctionName=NAMES.function(s))["Versions"]] for s in STEPS},
            "previous": previous, "everything": _everything(aws)}


def get_or_none_key(s3: Any, key: str, bucket: str = NAMES.bucket) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _lock(aws: Aws) -> dict[str, Any] | None:
    body = get_or_none_key(aws.client("s3"), LOCK_KEY)
    return None if body is None else json.loads(body)


def test_a_deploy_while_another_holds_the_lock_is_refused_and_changes_nothing(aws: Aws):
    """Two deploys of one stack at once interleaved their steps (one's function versions
    with the other's concurrency, a rollback record of neither), without a word. Now the
    second, started while the first builds, is refused (exit 1) naming the holder, since
    when and doing what, and changes nothing: not even the first one's lock."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build", "--concurrency", "9")[0] == 0
    push_fake_images(aws, "v2")
    seen: dict[str, Any] = {}

    def build(step: str, *_: Any, **__: Any) -> str:
        if not seen:  # (the first build: the first deploy holds the lock now)
            seen["lock"] = _lock(aws)
            seen["etag"] = aws.client("s3").head_object(Bucket=NAMES.bucket,
                                                        Key=LOCK_KEY)["ETag"]
            seen["before"] = _stack_state(aws)
            aws.calls.clear()
            seen["second"] = aws.deploy("--skip-build", "--concurrency", "5")
            seen["writes"] = [c for c in aws.calls if WRITE.match(c.split(".", 1)[1])]
            seen["after"] = _stack_state(aws)
            seen["etag after"] = aws.client("s3").head_object(Bucket=NAMES.bucket,
                                                              Key=LOCK_KEY)["ETag"]
        return "sha256:" + hashlib.sha256(f"{step}-v3".encode()).hexdigest()

    code, _, err = aws.deploy("--build-arg", "PIP_INDEX_URL=https://me:s3cret@mirror/simple",
                              build=build, run=fake_docker())
    assert code == 0, err
    code, result, second_err = seen["second"]
    assert code == 1 and result is None, second_err
    me = aws.client("sts").get_caller_identity()["Arn"]
    held = seen["lock"]
    assert held["holder"] == me and held["pid"] == os.getpid()
    what = f"--stack {STACK} --region {REGION} --build-arg PIP_INDEX_URL"  # (no token)
    assert held["command"] == what
    assert "s3cret" not in json.dumps(held)
    assert (f"stack {STACK} is being changed by another deploy.py: its deploy lock "
            f"(s3://{NAMES.bucket}/{LOCK_KEY}) is held by {me} on host "
            f"{held['host']} (pid {os.getpid()}, a process of that pid runs on this host) "
            f"since {held['since']} (") in second_err
    assert f"ago), running deploy.py {what}. Nothing was changed" in second_err
    assert f"deploy.py --stack {STACK} --region {REGION} --break-lock" in second_err
    # nothing changed: its only write was the refused one, the first deploy's lock stays
    assert seen["writes"] == ["s3.PutObject" + LOCKED]
    assert seen["after"] == seen["before"] and seen["etag after"] == seen["etag"]
    assert "concurrency kept (no --concurrency): at most 9" in err  # the first goes on
    assert _deployed_concurrency(aws) == 9
    assert _lock(aws) is None, "released after success"


def test_the_lock_is_released_when_a_deploy_fails_or_is_stopped(aws: Aws):
    code, _, err = aws.deploy(build=fake_build([], fail_on="process"), run=fake_docker())
    assert code == 1 and "connection reset" in err
    assert "s3.PutObject" + LOCKED in aws.calls and "s3.DeleteObject" + LOCKED in aws.calls
    assert _lock(aws) is None
    assert "deploy lock released" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_deploy_stopped_by_a_signal_releases_the_lock(aws: Aws, signum: int):
    """SIGTERM ended deploy.py at once (no ``finally`` ran): its lock would stay held.
    It now stops as Ctrl-C does, releasing it, with 128 + the signal."""
    class Killed(Exception):
        pass

    def unhandled(*_: Any) -> None:
        raise Killed  # (what the test sees of a signal deploy.py does not handle)

    def build(step: str, *_: Any, **__: Any) -> str:
        assert _lock(aws) is not None
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop the deploy")

    before = signal.signal(signum, unhandled)
    try:
        code, result, err = aws.deploy(build=build, run=fake_docker())
    finally:
        signal.signal(signum, before)
    assert code == 128 + signum and result is None, err
    assert f"stopped by {signal.Signals(signum).name}: run it again" in err
    assert _lock(aws) is None
    assert aws.client("lambda").list_functions()["Functions"] == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_the_lock_is_released_leaves_no_lock(
        aws: Aws, monkeypatch: pytest.MonkeyPatch, signum: int):
    """Ctrl-C pressed twice, or a CI's SIGTERM sent again: the second came while the first
    one's unwinding removed the lock, and cut the release short, the lock left held (the
    next deploy refused by this very process). It is now held off until the release ends."""
    from pipeline.aws import lock as lock_module

    delete = lock_module._conditional_delete

    def signalled_delete(*args: Any) -> str:
        os.kill(os.getpid(), signum)  # (the second signal, in the middle of the release)
        return delete(*args)

    def build(step: str, *_: Any, **__: Any) -> str:
        os.kill(os.getpid(), signum)  # (the first)
        raise AssertionError("the signal did not stop the deploy")

    monkeypatch.setattr(lock_module, "_conditional_delete", signalled_delete)
    code, result, err = aws.deploy(build=build, run=fake_docker())
    assert code == 128 + signum and result is None, err
    assert _lock(aws) is None and "deploy lock released" in err


def test_a_lock_write_resent_after_a_timeout_is_taken_as_the_deploys_own(aws: Aws):
    """botocore resends a PutObject that timed out; S3 may have taken the first: the resend
    then meets the lock's If-None-Match (412) and the deploy was refused by its own lock,
    which it then never released. A lock whose record is the one it wrote is its own."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0  # (the stack, its bucket)
    sent: list[bytes] = []

    def first_write_lost(model: Any, params: dict[str, Any], **_: Any) -> None:
        on_lock = str(params.get("url_path", "")).split("?")[0].endswith(LOCK_KEY)
        if model.name == "PutObject" and on_lock and not sent:
            sent.append(params["body"])  # (S3 took it; its answer was lost: sent again)
            aws.client("s3").put_object(Bucket=NAMES.bucket, Key=LOCK_KEY, Body=sent[0])

    aws.session.events.register("before-call.s3.PutObject", first_write_lost)
    code, _, err = aws.deploy("--skip-build", "--concurrency", "3")
    assert code == 0 and sent, err
    assert "deploy lock taken" in err and "deploy lock released" in err
    assert _lock(aws) is None and _deployed_concurrency(aws) == 3


def test_a_hand_written_lock_without_a_time_zone_is_said_and_broken(aws: Aws):
    """A lock record written by hand with a ``since`` without a zone crashed the refusal
    and --break-lock itself (naive minus aware datetimes): taken as UTC."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    record = {"holder": "me", "host": "h", "pid": 1, "since": "2026-01-01T00:00:00"}
    aws.client("s3").put_object(Bucket=NAMES.bucket, Key=LOCK_KEY,
                                Body=json.dumps(record).encode())
    code, _, err = aws.deploy("--skip-build")
    assert code == 1 and "since 2026-01-01T00:00:00Z (" in err, err
    code, result, err = aws.deploy("--break-lock")
    assert code == 0 and result is not None and result["broken"] == record, err
    assert _lock(aws) is None


def test_the_lock_records_an_endpoint_url_without_its_user_and_password():
    """The lock's record (an object in the bucket) names the options given: an
    --endpoint-url's user:password@ is left out, as a --build-arg's value is."""
    parser = deploy_script._parser()
    args = parser.parse_args(["--stack", "s", "--endpoint-url",
                              "https://ops:s3cret@minio.example:9000/", "--build-arg", "T=x"])
    command = deploy_script._command(parser, args)
    assert "--endpoint-url https://minio.example:9000/" in command
    assert "s3cret" not in command and "ops:" not in command and "T=x" not in command


def test_the_break_lock_advice_repeats_the_options_that_locate_the_stack(
        monkeypatch: pytest.MonkeyPatch, moto_server: str, tmp_path: Path):
    """A deploy refused by a dead deploy's lock advised ``deploy.py --stack S --region R
    --break-lock``, without the ``--profile`` and ``--endpoint-url`` it was given: run as
    said, it went to another account or to AWS itself. Now the advice has them, and run as
    printed it breaks the lock, and the deploy goes on."""
    _clean_env(monkeypatch)
    credentials = tmp_path / "credentials"
    credentials.write_text("[ops]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    names = StackNames("lockx", ACCOUNT, REGION)
    s3 = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                       aws_secret_access_key="testing").client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket=names.bucket,
                     CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_tagging(Bucket=names.bucket, Tagging={"TagSet": [  # (as deploy made it)
        {"Key": "tiffpipe:stack", "Value": "lockx"}]})
    record = {"holder": f"arn:aws:iam::{ACCOUNT}:user/alice", "host": "ci-runner-7",
              "pid": 4242, "since": "2026-01-01T00:00:00Z", "command": "--skip-build"}
    s3.put_object(Bucket=names.bucket, Key=LOCK_KEY, Body=json.dumps(record).encode())

    def deploy(*argv: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            return deploy_script.main(list(argv)), err.getvalue()

    code, err = deploy("--stack", "lockx", "--profile", "ops", "--endpoint-url", moto_server,
                       "--region", REGION, "--skip-build", "--concurrency", "3")
    assert code == 1, err
    advice = (f"deploy.py --stack lockx --region {REGION} --profile ops --endpoint-url "
              f"{moto_server} --break-lock")
    assert f"remove its lock with {advice} and run this one again" in err, err
    code, err = deploy(*shlex.split(advice)[1:])
    assert code == 0, err
    assert get_or_none_key(s3, LOCK_KEY, names.bucket) is None


def _dead_deploys_lock(aws: Aws, hours: int = 5) -> dict[str, Any]:
    """The lock a deploy that died (its machine lost) left ``hours`` ago."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    record = {"holder": f"arn:aws:iam::{ACCOUNT}:user/alice", "host": "ci-runner-7",
              "pid": 4242, "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "command": "--skip-build --concurrency 7"}
    aws.client("s3").put_object(Bucket=NAMES.bucket, Key=LOCK_KEY,
                                Body=json.dumps(record).encode())
    aws.calls.clear()
    return record


def test_a_dead_deploys_lock_is_said_with_its_age_and_broken_with_break_lock(aws: Aws):
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    record = _dead_deploys_lock(aws)
    before = _stack_state(aws)
    code, _, err = aws.deploy("--skip-build", "--concurrency", "3")
    assert code == 1, err
    assert (f"held by arn:aws:iam::{ACCOUNT}:user/alice on host ci-runner-7 (pid 4242) since "
            f"{record['since']} (5 h 0 min ago), running deploy.py --skip-build --concurrency "
            "7; that is longer than a deploy takes (over 3 h): it may have died. Nothing "
            "was changed") in err
    assert _stack_state(aws) == before and _lock(aws) == record  # never broken by its age

    code, result, err = aws.deploy("--break-lock", "--dry-run")
    assert code == 0 and _lock(aws) == record, err
    assert "would remove the deploy lock held by arn:aws:iam::" in err
    assert result is not None and result["broken"] is None  # (nothing broken: would be)
    assert result["would_break"] == record
    code, result, err = aws.deploy("--break-lock")
    assert code == 0, err
    assert result is not None and result["broken"] == record
    assert _lock(aws) is None
    code, result, err = aws.deploy("--break-lock")
    assert code == 0 and result is not None and result["broken"] is None
    assert "no deploy lock is held on stack t1: nothing to break" in err
    code, _, err = aws.deploy("--skip-build", "--concurrency", "3")
    assert code == 0, err
    assert _deployed_concurrency(aws) == 3


def test_a_lock_of_this_host_says_whether_its_process_runs(aws: Aws):
    """A deploy killed (kill -9) on this host left its lock: the refusal named host and
    pid only, and whether that deploy was dead was left to find out. Now, for a lock of
    this host, it says whether a process of that pid still runs (another host's: nothing
    said). Containers that share a host name each see their own pids: a live deploy in
    another was said dead; the lock records its PID namespace and boot, and only a lock
    of this namespace and boot is said dead; of an older deploy.py, only that no process
    of that pid is seen here; of another namespace, nothing."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # (its pid: gone once it ended)
    dead.wait()
    here = {"pid_ns": os.readlink("/proc/self/ns/pid"),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip()}
    for pid, where, said in (
            (dead.pid, here, ", no longer running on this host: that deploy is dead"),
            (os.getpid(), here, ", a process of that pid runs on this host"),
            # a lock of an older deploy.py: a pid not seen may run in another container
            (dead.pid, {}, (", no process of that pid is visible here (it may run in "
                            "another container)")),
            # another container of the same host name (its own PID namespace): not seen
            (dead.pid, {**here, "pid_ns": "pid:[1]"}, "")):
        record = {**_dead_deploys_lock(aws, hours=0), **where}
        record.update(host=socket.gethostname(), pid=pid)
        aws.client("s3").put_object(Bucket=NAMES.bucket, Key=LOCK_KEY,
                                    Body=json.dumps(record).encode())
        code, _, err = aws.deploy("--skip-build")
        assert code == 1, err
        assert f"on host {socket.gethostname()} (pid {pid}{said}) since" in err, err


def test_break_lock_removes_only_the_lock_it_read(aws: Aws):
    """Between --break-lock's read of the lock and its delete, the dead deploy's lock is
    replaced by another's (a live deploy, which took the stack once it was free): the
    delete names the ETag read (DeleteObject If-Match), so that lock stays."""
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    _dead_deploys_lock(aws)
    live = {"holder": "arn:aws:iam::123456789012:user/bob", "host": "laptop", "pid": 7,
            "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": ""}

    def another_takes_it(**_: Any) -> None:
        aws.session.events.unregister("before-call.s3.DeleteObject", another_takes_it)
        boto3.client("s3", region_name=REGION).put_object(
            Bucket=NAMES.bucket, Key=LOCK_KEY, Body=json.dumps(live).encode())
    aws.session.events.register("before-call.s3.DeleteObject", another_takes_it)
    code, _, err = aws.deploy("--break-lock")
    assert code == 1, err
    assert "changed while it was being broken: it is held now by " \
           "arn:aws:iam::123456789012:user/bob on host laptop (pid 7)" in err
    assert "Nothing was removed" in err and _lock(aws) == live


@pytest.mark.parametrize("option", [["--skip-build"], ["--destroy"], ["--concurrency", "3"],
                                    ["--data-bucket", "slides"]])
def test_break_lock_goes_alone(aws: Aws, option: list[str]):
    code, _, err = aws.deploy("--break-lock", *option)
    assert code == 2 and not aws.calls
    assert f"--break-lock only removes the stack's deploy lock: leave out {option[0]}" in err
    code, _, err = aws.deploy("--rollback", "--break-lock")
    assert code == 2 and "--rollback changes only the state machine" in err
    assert "leave out --break-lock" in err and not aws.calls


def test_break_lock_is_said_to_deploy_nothing():
    """Its help read "remove the stack's deploy lock ...; then deploy again", as if it
    deployed after removing the lock."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        deploy_script.main(["--help"])
    text = " ".join(out.getvalue().split())
    assert ("--break-lock only remove the stack's deploy lock (it deploys nothing), left by "
            "a deploy known to be dead") in text
    assert "then run the deploy again" in text


def test_a_dry_run_says_the_lock_is_held_and_destroy_and_rollback_are_refused(aws: Aws):
    push_fake_images(aws)
    assert aws.deploy("--skip-build")[0] == 0
    push_fake_images(aws, "v2")
    assert aws.deploy("--skip-build")[0] == 0  # (something to roll back to)
    record = _dead_deploys_lock(aws, hours=0)
    before = _stack_state(aws)
    for args in (["--skip-build", "--dry-run"], ["--destroy", "--dry-run"],
                 ["--rollback", "--dry-run"]):
        code, _, err = aws.deploy(*args)
        assert code == 0, err
        assert (f"the deploy lock is held by arn:aws:iam::{ACCOUNT}:user/alice on host "
                "ci-runner-7 (pid 4242) since") in err
        assert "This command would be refused now" in err
    for args in (["--destroy", "--delete-bucket"], ["--destroy"], ["--rollback"]):
        code, result, err = aws.deploy(*args)
        assert code == 1 and result is None, err
        assert "is held by arn:aws:iam::" in err and "Nothing was changed" in err
    assert aws.writes() == [] and _stack_state(aws) == before and _lock(aws) == record
    assert [c for c in aws.calls if c.endswith(LOCKED) and "Put" in c] == [
        "s3.PutObject" + LOCKED] * 3  # (the refused ones; the dry runs only read it)

    aws.deploy("--break-lock")
    code, _, err = aws.deploy("--rollback")
    assert code == 0 and _lock(aws) is None, err
    code, _, err = aws.deploy("--destroy", "--delete-bucket")  # (it empties the bucket: its
    assert code == 0, err                                       # own lock goes with it)
    assert all(v == [] for v in _everything(aws).values())


def test_a_definition_that_does_not_fit_the_code_is_not_deployed(
        aws: Aws, monkeypatch: pytest.MonkeyPatch):
    """statemachine.asl.json edited (in a fork) so that PlanJob's ResultSelector drops
    ``single``, which the Fused choice reads: Step Functions accepts it (its structure is
    fine) and every job of every run failed. The deploy checks it as ``tiffpipe validate
    --definition`` does: exit 2 naming the state and the field, before any AWS call."""
    from pipeline.engine import definition

    machine = json.loads(definition.definition_text())
    del machine["States"]["Jobs"]["ItemProcessor"]["States"]["PlanJob"]["ResultSelector"][
        "single.$"]
    monkeypatch.setattr(definition, "definition_text", lambda: json.dumps(machine))
    code, result, err = aws.deploy("--skip-build")
    assert (code, result) == (2, None)
    assert "does not fit tiffpipe's code" in err and "$.planned.single" in err, err
    assert aws.calls == []
