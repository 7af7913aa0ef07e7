"""No run on AWS leaves a multipart upload open: the uploads an output's merge begins in the
user's data bucket (S3 bills their parts until the upload is ended, and deploy.py sets a
lifecycle rule on the stack's own bucket only), whichever way the run ends. The real
handlers run by moto's Step Functions on a deployed stack (the fixture of
tests/test_start_status.py); a merge is "killed" by freezing it at its output's parts, as
Lambda freezes an invocation it stops (its timeout, out of memory), where no cleanup of its
own runs.

- a job fails (its merge fails): the merge aborts its upload itself;
- Lambda's timeout (or memory) stops a merge: its job is caught as failed, and RecordFailure
  aborts the upload the merge recorded in the work;
- the execution is stopped, or times out (Step Functions' TimeoutSeconds), or fails: no
  RecordFailure or Report runs, and the upload stays open: ``tiffpipe status`` (and
  ``start --wait``, ``status --wait``) ends the uploads the run's work records, and its
  segments' under its work prefix, never another run's of the same key, and says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_start_status
import tifffile
from botocore.exceptions import ReadTimeoutError
from test_start_status import DATA, NAMES, STACK, Stack, _InProcess

from pipeline.adapters import segments, storage
from pipeline.core.constants import SSE_ENV, SSE_KMS_KEY_ENV
from pipeline.engine.moto_run import served_by
from pipeline.errors import AccessDeniedError

pytestmark = pytest.mark.timeout(120)
stack = test_start_status.stack  # the fixture: a stack deployed in moto

OUTPUT = f"s3://{DATA}/out/noise.tif"
TIMED_OUT = {"errorType": "Sandbox.Timedout",
             "errorMessage": "RequestId: 5f1c Error: Task timed out after 900.00 seconds"}


class Frozen:
    """A merge whose output parts never go up: each part of an upload to the data bucket
    waits until :meth:`thaw` (then fails, as a part of an upload ended meanwhile would)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached, self.thawed = threading.Event(), threading.Event()
        for name in ("_copy_part", "_upload_part"):
            real = getattr(segments, name)
            monkeypatch.setattr(segments, name, self._frozen(real))

    def _frozen(self, real: Any) -> Any:
        def part(bucket: str, key: str, upload: str, part: Any) -> str:
            if bucket != DATA:
                return str(real(bucket, key, upload, part))
            self.reached.set()
            self.thawed.wait(60)
            raise RuntimeError("the invocation was stopped")
        return part

    def thaw(self) -> None:
        self.thawed.set()
        time.sleep(0.3)  # (the frozen merge's threads end)


class Killing(_InProcess):
    """The real handlers; the invocation that composes the output (merge, or ProcessJob) is
    frozen at its first part, then ``then()`` is called (the execution stopped, timed out)
    and it ends as Lambda ends one its timeout stops (Sandbox.Timedout)."""

    def __init__(self, frozen: Frozen, then: Any = None) -> None:
        self.frozen, self.then = frozen, then

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        if event.get("action") not in ("merge", "process_job"):
            return super().invoke(function, event)
        done: list[tuple[bool, dict[str, Any]]] = []
        thread = threading.Thread(target=lambda: done.append(super(Killing, self).invoke(
            function, event)), daemon=True)
        thread.start()
        while not self.frozen.reached.wait(0.05) and thread.is_alive():
            pass
        if done:  # (it ended before its parts: nothing to freeze)
            return done[0]
        if self.then is not None:
            self.then()
        return False, dict(TIMED_OUT)


def _noise(stack: Stack, tmp: Path) -> None:
    """in/noise.tif: noise does not compress, so its output (~12 MB) is an upload of parts."""
    pixels = np.random.default_rng(3).integers(0, 256, (2000, 2000, 3), np.uint8)
    tifffile.imwrite(tmp / "noise.tif", pixels, tile=(256, 256), compression="zstd",
                     photometric="rgb", metadata=None)
    stack.client("s3").upload_file(str(tmp / "noise.tif"), DATA, "in/noise.tif")


#: not fused: Split, Process, then a Merge task (a fused job of one unit is one ProcessJob,
#: which composes its output the same way)
MANIFEST = {"defaults": {"tile": 512, "output_options": {"tile": 256}},
            "jobs": [{"input": f"s3://{DATA}/in/noise.tif", "output": OUTPUT,
                      "fuse": False, "ops": [{"op": "invert"}]}]}


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


def _open(stack: Stack, bucket: str = DATA) -> list[tuple[str, str]]:
    found = stack.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted((u["Key"], u["UploadId"]) for u in found)


@pytest.fixture
def ready(stack: Stack, tmp_path: Path) -> Stack:
    _noise(stack, tmp_path)
    return stack


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Frozen]:
    """Merges frozen at their output's parts until the test has looked (then thawed)."""
    frozen = Frozen(monkeypatch)
    yield frozen
    frozen.thaw()


def _execution(stack: Stack) -> str:
    sfn = stack.client("stepfunctions")
    found = sfn.list_executions(stateMachineArn=NAMES.state_machine_arn)["executions"]
    return str(max(found, key=lambda e: e["startDate"])["executionArn"])


def test_a_merge_that_fails_aborts_its_upload_itself(ready: Stack, monkeypatch):
    """A part the merge cannot copy (S3 denies it the segment): the job fails, its upload
    is aborted by the merge, nothing is published."""
    def denied(bucket: str, key: str, upload: str, part: Any) -> str:
        raise AccessDeniedError(f"s3://{bucket}/{key}: write: AccessDenied")

    for name in ("_copy_part", "_upload_part"):
        monkeypatch.setattr(segments, name, denied)
    code, out, err = ready.tiffpipe("start", str(ready.manifest("m.json", MANIFEST)),
                                    "--stack", STACK, "--wait", "--poll", "0.05")
    assert code == 1, err
    assert "FAILED" in out and "OutputNotWritableError" in out, out
    assert _open(ready) == [] and ready.keys(DATA, "out/") == []
    assert "left open" not in err


def test_a_merge_stopped_by_its_timeout_is_ended_by_record_failure(ready: Stack, frozen):
    """Lambda's timeout (or memory) stops the merge at its parts: no cleanup of its own ran,
    but the job is caught as failed and RecordFailure aborts the upload the merge recorded
    as it began it, and only that one: another run's upload of the same key goes on."""
    other = ready.client("s3").create_multipart_upload(Bucket=DATA, Key="out/noise.tif")
    with served_by(Killing(frozen)):
        code, out, err = ready.tiffpipe("start", str(ready.manifest("m.json", MANIFEST)),
                                        "--stack", STACK, "--wait", "--poll", "0.05")
    assert code == 1, err
    assert "Sandbox.Timedout" in out
    assert _open(ready) == [("out/noise.tif", other["UploadId"])]  # the merge's: ended
    assert ready.keys(DATA, "out/") == []
    assert "left open" not in err


def _stopped_mid_merge(ready: Stack, frozen: Frozen, end: Any) -> tuple[str, str, str, str]:
    """A run whose execution ``end()`` ends while its merge is frozen at its output's parts;
    another run's upload of the same output, and one of its work, go on meanwhile. Returns
    the execution, what ``start --wait`` said (stdout, stderr) and the other upload's id."""
    s3 = ready.client("s3")
    other = s3.create_multipart_upload(Bucket=DATA, Key="out/noise.tif",
                                       Metadata={"tiffpipe-owner": "another-run"})["UploadId"]
    s3.create_multipart_upload(Bucket=NAMES.bucket, Key="work/another/jobs/00000/out-0-u0.seg")

    def then() -> None:
        run_id = _execution(ready).rsplit(":", 1)[-1].removeprefix("run-")
        # a unit's segment upload a killed process invocation left in the run's work
        s3.create_multipart_upload(Bucket=NAMES.bucket,
                                   Key=f"work/{run_id}/jobs/00000/out-0-u000001.seg")
        end()

    with served_by(Killing(frozen, then)):
        code, out, err = ready.tiffpipe("start", str(ready.manifest("m.json", MANIFEST)),
                                        "--stack", STACK, "--wait", "--poll", "0.05")
    assert code == 1, err
    return _execution(ready), out, err, other


def _stop(ready: Stack) -> None:
    ready.client("stepfunctions").stop_execution(executionArn=_execution(ready),
                                                 error="OnCall", cause="stopped")


def test_a_stopped_run_leaves_no_upload_open(ready: Stack, frozen):
    """The execution is stopped while its merge composes the output: no RecordFailure, no
    Report runs. ``start --wait`` (``status`` of the ended execution) ends the upload the
    run's work records and its segments' under its work prefix, names what it ended, and
    never ends another run's upload of the same key; run again, it finds none."""
    arn, out, err, other = _stopped_mid_merge(ready, frozen, lambda: _stop(ready))
    assert "ended ABORTED" in err and "STOPPED" in out
    assert ("tiffpipe: ended 2 S3 upload(s) the run left open (their parts are no longer "
            f"billed; nothing of them was published): the output {OUTPUT}, 1 of its work") \
        in err, err
    assert _open(ready) == [("out/noise.tif", other)]
    assert _open(ready, NAMES.bucket) == [("work/another/jobs/00000/out-0-u0.seg", ANY)]
    assert ready.keys(DATA, "out/") == []
    code, again, err2 = ready.tiffpipe("status", arn)
    assert code == 1 and "STOPPED" in again and "report: none written" in again
    assert "left open" not in err2 and "Traceback" not in err2
    # a stop ends no Lambda invocation: one still running may begin an upload after this
    assert "invocations begun before the run ended may go on until" in err2, err2
    assert _open(ready) == [("out/noise.tif", other)]


def test_a_run_timed_out_by_step_functions_leaves_no_upload_open(ready: Stack, frozen):
    """The state machine's own TimeoutSeconds ends the execution while its merge composes
    the output (TIMED_OUT): as a stopped one, ``status`` ends what the run left open."""
    sfn = ready.client("stepfunctions")
    definition = json.loads(sfn.describe_state_machine(
        stateMachineArn=NAMES.state_machine_arn)["definition"])
    sfn.update_state_machine(stateMachineArn=NAMES.state_machine_arn,
                             definition=json.dumps({**definition, "TimeoutSeconds": 20}))

    def timed_out() -> None:
        for _ in range(1000):
            if sfn.describe_execution(executionArn=_execution(ready))["status"] != "RUNNING":
                return
            time.sleep(0.05)

    _, _, err, other = _stopped_mid_merge(ready, frozen, timed_out)
    assert "ended TIMED_OUT" in err, err
    assert "ended 2 S3 upload(s) the run left open" in err, err
    assert _open(ready) == [("out/noise.tif", other)]


def test_status_without_the_permissions_says_so_and_shows_the_run(ready: Stack, frozen,
                                                                  monkeypatch):
    """A caller of ``status`` whom S3 denies the abort (no s3:AbortMultipartUpload on the
    data location) gets the run's summary and exit code as ever, and a line saying what was
    not ended and which permissions it needs; with them, a later ``status`` ends it."""
    real = segments.abort_upload

    def denied(url: str, upload: str) -> bool:
        raise AccessDeniedError(f"{url}: abort the upload of: AccessDenied")

    monkeypatch.setattr(segments, "abort_upload", denied)
    arn, out, err, other = _stopped_mid_merge(ready, frozen, lambda: _stop(ready))
    assert "Traceback" not in err and "STOPPED" in out
    assert "tiffpipe: could not end the S3 uploads the run left open" in err, err
    assert "s3:AbortMultipartUpload" in err and "s3:ListBucketMultipartUploads" in err
    assert len(_open(ready)) == 2
    monkeypatch.setattr(segments, "abort_upload", real)
    code, _, err = ready.tiffpipe("status", arn)
    assert code == 1 and f"the output {OUTPUT}" in err, err
    assert _open(ready) == [("out/noise.tif", other)]


def test_status_json_says_what_it_did_about_the_open_uploads(ready: Stack, frozen,
                                                             monkeypatch):
    """``status --json`` has what it did about the uploads the run left open in its document
    (``uploads``: how many it ended, their outputs, what stopped it), not on stderr only
    (where its lines stay, for people): a script sees an upload it could not end."""
    real = segments.abort_upload

    def denied(url: str, upload: str) -> bool:
        raise AccessDeniedError(f"{url}: abort the upload of: AccessDenied")

    monkeypatch.setattr(segments, "abort_upload", denied)
    arn, _, _, other = _stopped_mid_merge(ready, frozen, lambda: _stop(ready))
    code, doc, err = ready.tiffpipe("status", arn, "--json")
    got = json.loads(doc)
    assert code == 1 and got["status"] == "ABORTED", err
    uploads = got["uploads"]
    assert (uploads["ended"], uploads["outputs"]) == (0, [])
    assert uploads["problem"].startswith("could not end the S3 uploads the run left open: "
                                         "S3 denied it"), uploads
    assert "s3:AbortMultipartUpload" in uploads["problem"]
    assert f"tiffpipe: {uploads['problem']}" in err
    monkeypatch.setattr(segments, "abort_upload", real)
    code, doc, err = ready.tiffpipe("status", arn, "--json")
    uploads = json.loads(doc)["uploads"]
    assert (uploads["ended"], uploads["outputs"], uploads["problem"]) == (2, [OUTPUT], None)
    assert uploads["again_after"] > time.time()  # (a stop: invocations may go on)
    assert "tiffpipe: ended 2 S3 upload(s) the run left open" in err, err
    assert _open(ready) == [("out/noise.tif", other)]
    code, doc, _ = ready.tiffpipe("status", arn, "--json")
    assert json.loads(doc)["uploads"]["ended"] == 0


def _operator_request(service: str, operation: str, params: dict[str, Any]
                      ) -> tuple[list[str], str] | None:
    """The IAM actions and the resource an API call of start or status is authorised as
    (None: one that needs no permission)."""
    from test_deploy import _S3_ACTIONS

    if service == "sts":
        return None  # GetCallerIdentity (the account of --stack's names)
    if service == "s3":
        key = params.get("Key") or params.get("Prefix")
        arn = f"arn:aws:s3:::{params['Bucket']}" + (f"/{key}" if "Key" in params else "")
        names = {**_S3_ACTIONS, "ListMultipartUploads": ["ListBucketMultipartUploads"]}
        return [f"s3:{a}" for a in names.get(operation, [operation])], arn
    if service == "iam":
        return [f"iam:{operation}"], NAMES.role_arn(params["RoleName"])
    if service == "kms":  # (S3's, for the caller: see test_deploy.decrypted_by_s3)
        return [f"kms:{operation}"], params["KeyId"]
    assert service == "stepfunctions", (service, operation)
    arn = next(params[k] for k in ("mapRunArn", "executionArn", "stateMachineArn",
                                   "resourceArn") if k in params)
    return [f"states:{operation}"], arn


def test_the_operator_policy_allows_every_call_start_and_status_make(ready: Stack, frozen,
                                                                     monkeypatch):
    """Every AWS call of ``tiffpipe start`` (a local manifest, uploaded; one in a data
    location) and ``status`` (``--wait``, ``--json``, ``--rerun-manifest``; a run that
    succeeded, one stopped whose uploads it ends and whose summary it rebuilds) is allowed
    by deploy.py --print-operator-policy, on the resource it names."""
    from test_deploy import denied_calls, deploy_script  # (deploy.py, loaded from its path)

    from pipeline.aws import Clients

    requests: list[tuple[str, str, dict[str, Any]]] = []
    recording = [False]  # (within a tiffpipe command, not the functions' calls: threads)

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if recording[0] and threading.current_thread() is threading.main_thread():
            requests.append((model.service_model.service_name, model.name, dict(params)))

    def tiffpipe(*args: str) -> tuple[int, str, str]:
        recording[0] = True
        try:
            return Stack.tiffpipe(ready, *args)
        finally:
            recording[0] = False

    monkeypatch.setattr(ready, "tiffpipe", tiffpipe)
    ready.session.events.register("provide-client-params.*.*", record)
    monkeypatch.setattr(Clients, "session", property(lambda _: ready.session))
    arn, _, err, _ = _stopped_mid_merge(ready, frozen, lambda: _stop(ready))
    assert "ended 2 S3 upload(s)" in err, err
    code, _, err = ready.tiffpipe("status", arn, "--json", "--rerun-manifest",
                                  str(ready.tmp / "rerun.json"))
    assert code == 1 and "wrote" in err, err
    frozen.thaw()  # (small outputs: one PutObject each, no part, which stays frozen)
    one = {**test_start_status.JOBS, "jobs": test_start_status.JOBS["jobs"][:1]}
    ready.client("s3").put_object(Bucket=DATA, Key="manifests/m.json",
                                  Body=json.dumps(one).encode())
    with served_by(_InProcess()):
        code, out, err = ready.tiffpipe("start", f"s3://{DATA}/manifests/m.json", "--stack",
                                        STACK, "--wait", "--poll", "0.05")
    assert code == 0, err
    assert ready.tiffpipe("status", out.splitlines()[0])[0] == 0
    ready.session.events.unregister("provide-client-params.*.*", record)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert deploy_script.main(["--stack", STACK, "--region", "us-east-1",
                                   "--print-operator-policy", "--data-bucket", DATA],
                                  session=ready.session) == 0
    policy = json.loads(printed.getvalue())
    assert not (denied := denied_calls(policy, requests, _operator_request)), denied
    made = {f"{s}.{o}" for s, o, _ in requests}
    assert made >= {"s3.PutObject", "s3.GetObject", "s3.AbortMultipartUpload",
                    "s3.DeleteObject", "s3.ListMultipartUploads", "iam.GetRolePolicy",
                    "stepfunctions.StartExecution", "stepfunctions.DescribeExecution"}, made


KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_the_operator_policy_decrypts_what_the_functions_encrypt(ready: Stack, monkeypatch):
    """With deploy.py --sse aws:kms --sse-kms-key-id KEY the functions write the run's
    report and the jobs' results encrypted with KEY, as the outputs: start --wait and status
    read them, so S3 decrypts with KEY for the operator, which
    --print-operator-policy with the same options allows (through S3 only)."""
    from test_deploy import decrypted_by_s3, denied_calls, deploy_script

    from pipeline.aws import Clients

    monkeypatch.setenv(SSE_ENV, "aws:kms")  # (what deploy sets on the functions)
    monkeypatch.setenv(SSE_KMS_KEY_ENV, KEY)
    requests: list[tuple[str, str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # (not the functions')
            requests.append((model.service_model.service_name, model.name, dict(params)))

    ready.session.events.register("provide-client-params.*.*", record)
    monkeypatch.setattr(Clients, "session", property(lambda _: ready.session))
    one = {**test_start_status.JOBS, "jobs": test_start_status.JOBS["jobs"][:1]}
    code, out, err = ready.tiffpipe("start", str(ready.manifest("m.json", one)), "--stack",
                                    STACK, "--wait", "--poll", "0.05")
    assert code == 0, err
    assert ready.tiffpipe("status", out.splitlines()[0])[0] == 0
    ready.session.events.unregister("provide-client-params.*.*", record)
    decrypted = decrypted_by_s3(ready.client("s3"), requests)
    assert ("kms", "Decrypt", {"KeyId": KEY}) in decrypted  # (the report, at least)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert deploy_script.main(["--stack", STACK, "--region", "us-east-1",
                                   "--print-operator-policy", "--data-bucket", DATA,
                                   "--sse", "aws:kms", "--sse-kms-key-id", KEY],
                                  session=ready.session) == 0
    policy = json.loads(printed.getvalue())
    assert not (denied := denied_calls(policy, requests + decrypted, _operator_request)), denied
    [keys] = [s for s in policy["Statement"] if "kms:Decrypt" in s["Action"]]
    assert keys["Action"] == ["kms:Decrypt"] and keys["Resource"] == [KEY]
    assert keys["Condition"] == {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}


# --- PlanJob's output check: an upload started and aborted ------------------------------------

SMALL = {**test_start_status.JOBS, "jobs": test_start_status.JOBS["jobs"][:1]}  # ProcessJob
SMALL_OUTPUT = SMALL["jobs"][0]["output"].split("/", 3)[3]


def _abort_of_the_output(hook: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``hook(params)`` run before each AbortMultipartUpload of the small job's output by
    the functions (S3's answer to the test upload PlanJob started), which check it again
    (none taken for writable by an earlier test's check)."""
    monkeypatch.setattr(storage, "_writable", {})

    def before(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == SMALL_OUTPUT:
            hook(params)
    storage.s3_client().meta.events.register("provide-client-params.s3.AbortMultipartUpload",
                                             before)
    return before


def test_a_test_upload_whose_abort_fails_is_ended_with_its_job(ready: Stack, monkeypatch):
    """PlanJob checks the output by starting an upload of it and aborting it: an abort that
    fails (S3 or the network timed out) left that upload open in the data bucket, recorded
    nowhere. It is recorded in the job's work as it begins, and the job's publish ends it,
    and forgets the record; another run's upload of the same key goes on."""
    other = ready.client("s3").create_multipart_upload(Bucket=DATA, Key=SMALL_OUTPUT)[
        "UploadId"]
    failed: list[str] = []

    def time_out(params: dict[str, Any]) -> None:
        if not failed:
            failed.append(params["UploadId"])
            raise ReadTimeoutError(endpoint_url=f"https://{DATA}.s3.amazonaws.com/")

    hook = _abort_of_the_output(time_out, monkeypatch)
    try:
        code, _, err = ready.tiffpipe("start", str(ready.manifest("m.json", SMALL)),
                                        "--stack", STACK, "--wait", "--poll", "0.05")
    finally:
        storage.s3_client().meta.events.unregister(
            "provide-client-params.s3.AbortMultipartUpload", hook)
    assert code == 0, err
    assert failed, "the test upload's abort was not reached"
    assert _open(ready) == [(SMALL_OUTPUT, other)]  # the test upload: ended
    assert [k for k in ready.keys(NAMES.bucket, "work/") if "/uploads/" in k] == []


def test_a_plan_job_stopped_after_its_test_upload_began_is_ended_by_record_failure(
        ready: Stack, monkeypatch):
    """Lambda's timeout stops PlanJob between the test upload's start and its abort: the
    job is caught as failed (in PlanJob), and RecordFailure ends the upload its work
    records."""
    reached, thawed = threading.Event(), threading.Event()

    def stopped(params: dict[str, Any]) -> None:
        if reached.is_set():
            return  # (RecordFailure's)
        reached.set()
        thawed.wait(60)
        raise RuntimeError("the invocation was stopped")

    class Stopping(_InProcess):
        def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            if event.get("action") != "plan_job":
                return super().invoke(function, event)
            threading.Thread(target=super().invoke, args=(function, event), daemon=True).start()
            assert reached.wait(30), "PlanJob did not begin its test upload"
            return False, dict(TIMED_OUT)

    hook = _abort_of_the_output(stopped, monkeypatch)
    try:
        with served_by(Stopping()):
            code, out, err = ready.tiffpipe("start", str(ready.manifest("m.json", SMALL)),
                                            "--stack", STACK, "--wait", "--poll", "0.05")
        assert code == 1, err
        assert "Sandbox.Timedout" in out and "(in PlanJob)" in out, out
        assert _open(ready) == []
    finally:
        thawed.set()
        storage.s3_client().meta.events.unregister(
            "provide-client-params.s3.AbortMultipartUpload", hook)
        time.sleep(0.3)  # (the stopped PlanJob's thread ends)
