"""Runs on AWS: start an execution on a manifest, follow it, and show how it ended.

``tiffpipe start`` and ``tiffpipe status`` are thin wrappers of :func:`start` and
:func:`show`. The execution's input is a :class:`pipeline.core.events.RunInput`; its work
files and its report go to the stack's bucket (``work/<run id>/``, ``reports/<run id>.json``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import (
    BUCKET_TAG,
    STACK_TAG,
    AwsError,
    Clients,
    StackNotFoundError,
    parse_arn,
)
from pipeline.aws.actions import call_failed, error_code
from pipeline.aws.policies import MANIFESTS, REPORTS, WORK, DataLocation, locations_of
from pipeline.aws.resources import role_policy
from pipeline.core.constants import SCHEMA
from pipeline.core.events import ReportEvent, RunInput, to_payload
from pipeline.core.manifest import ScanSpec, as_manifest, load_manifest
from pipeline.core.models import JobSpec
from pipeline.errors import (
    INPUT_FAULT,
    INTERRUPTED_ERROR,
    RUN_FAILED_ERROR,
    InputNotFoundError,
    ManifestError,
    RunningAlreadyError,
    TiffpipeError,
    WorkMissingError,
    failure_record,
    job_fault,
    one_line,
    shortened,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: why a local location cannot be, and what to give, by field (a job's, a scan's)
_LOCAL_HINT = {
    ("input", False): "a Lambda function cannot read this machine's files: upload it and give "
                      "its s3://bucket/key",
    ("input", True): "a Lambda function cannot read this machine's files: upload the folder "
                     "and give its s3://bucket/prefix/",
    ("output", False): "a Lambda function cannot write to this machine's files: give the "
                       "s3://bucket/key to write the output to, in one of the stack's data "
                       "locations (deploy.py --data-bucket), and download it after the run",
    ("output", True): "a Lambda function cannot write to this machine's files: give the "
                      "s3://bucket/prefix/ to write the outputs under, in one of the stack's "
                      "data locations (deploy.py --data-bucket), and download them after the "
                      "run"}


@dataclass(frozen=True)
class Target:
    """Where runs go: the state machine and the stack bucket (manifests, work, reports)."""

    state_machine_arn: str
    bucket: str
    #: the stack's name (its tag), if the state machine has one
    stack: str | None = None


def find_target(clients: Clients, stack: str | None = None,
                state_machine: str | None = None) -> Target:
    """The stack's state machine and bucket, by stack name or by state machine ARN."""
    sfn = clients("stepfunctions")
    if state_machine:
        arn = state_machine
    elif stack:
        arn = clients.names(stack).state_machine_arn
    else:
        raise AwsError("give --stack NAME or --state-machine ARN")
    try:
        sfn.describe_state_machine(stateMachineArn=arn)
        tags = {t["key"]: t["value"]
                for t in sfn.list_tags_for_resource(resourceArn=arn).get("tags", [])}
    except ClientError as exc:
        if error_code(exc) in ("StateMachineDoesNotExist", "InvalidArn"):
            what = f"stack {stack!r}" if stack and not state_machine else arn
            raise StackNotFoundError(
                f"{what}: no state machine {arn} in {clients.region}: deploy it first "
                f"(python deploy.py --stack {stack or 'NAME'} --region {clients.region}), "
                "or check --region") from exc
        raise
    bucket = tags.get(BUCKET_TAG)
    if not bucket:
        parts = parse_arn(arn)
        name = parts["resource"].rsplit(":", 1)[-1]
        if not name.startswith("tiffpipe-") and STACK_TAG not in tags:
            raise AwsError(f"{arn} was not deployed by deploy.py (no {BUCKET_TAG} tag): "
                           "use --stack")
        bucket = f"{name}-{parts['account']}-{parts['region']}"
    return Target(arn, bucket, tags.get(STACK_TAG))


# --- the manifest ---------------------------------------------------------------------


def local_location_problems(data: Any, manifest_on_s3: bool) -> list[str]:
    """The locations of a manifest that a Lambda could not reach, as manifest problems.

    In a local manifest every location must be an ``s3://`` URL; in one on S3, relative
    paths resolve next to it (in S3), so only absolute local paths are refused.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        return problems
    blocks: list[tuple[str, Any]] = []
    if isinstance(data.get("jobs"), list):
        blocks = [(f"jobs[{i}]", job) for i, job in enumerate(data["jobs"])]
    if "scan" in data:
        blocks.append(("scan", data["scan"]))
    for path, block in blocks:
        if not isinstance(block, dict):
            continue
        for name in ("input", "output"):
            value = block.get(name)
            if not isinstance(value, str) or value.startswith("s3://"):
                continue
            if not manifest_on_s3 or os.path.isabs(value):
                problems.append(f"{path}.{name}: expected an s3:// URL for a run on AWS, got "
                                f"{json.dumps(value)}: {_LOCAL_HINT[name, path == 'scan']}")
    return problems


@dataclass(frozen=True)
class Reach:
    """What a stack's functions may read (``readable``: its data and input locations; and its
    own bucket's ``manifests/``) and write (``writable``: its data locations)."""

    stack: str
    bucket: str
    readable: list[DataLocation]
    writable: list[DataLocation]


def reach_problems(parsed: list[JobSpec] | ScanSpec, manifest: str, reach: Reach) -> list[str]:
    """The manifest's locations (a checked one's: jobs or scan, and its own S3 URL) that the
    stack's functions may not read or write, as manifest problems saying what to do: on AWS
    each would fail its job (access denied) only once the run reaches it."""
    readable = [DataLocation(reach.bucket, MANIFESTS), *reach.readable]
    problems = []
    if manifest.startswith("s3://") and not any(d.holds(manifest) for d in readable):
        problems.append(f"manifest: {manifest} is outside what the stack's functions may read "
                        f"({_shown(readable)}): give a local manifest (start uploads it) or "
                        "put it in one of those")
    blocks = ([("scan", parsed)] if isinstance(parsed, ScanSpec)
              else [(f"jobs[{i}]", job) for i, job in enumerate(parsed)])
    for path, block in blocks:
        for name, allowed, verb, option in (
                ("input", reach.readable, "read", "--data-bucket or --input-bucket"),
                ("output", reach.writable, "write", "--data-bucket")):
            url = getattr(block, name)
            if url.startswith("s3://") and not any(d.holds(url) for d in allowed):
                problems.append(
                    f"{path}.{name}: {url} is outside what the stack's functions may {verb} "
                    f"({_shown(allowed)}): move it into one of those, or redeploy with its "
                    f"location added (deploy.py --stack {reach.stack} {option}, naming the "
                    "stack's other locations too: a deploy that names them replaces them)")
    return problems


def _shown(locations: list[DataLocation]) -> str:
    return ", ".join(map(str, locations)) or "none"


def stack_reach(clients: Clients, target: Target) -> Reach | None:
    """The :class:`Reach` of the stack ``target`` is, from its functions' role policies;
    None when they cannot be read (no iam:GetRolePolicy for this caller, no such roles, or
    the state machine is another account's: its roles are not this account's)."""
    if not target.stack:
        return None
    names = clients.names(target.stack)
    if names.state_machine_arn != target.state_machine_arn:
        return None
    iam = clients("iam")
    try:
        read = role_policy(iam, names.function_role("split"))
        write = role_policy(iam, names.function_role("merge"))
    except ClientError:
        return None
    if read is None or write is None:
        return None
    return Reach(target.stack, target.bucket, locations_of(read, "ReadInputs"),
                 locations_of(write, "WriteOutputs"))


def read_manifest(s3: Any, manifest: str,
                  reach: Reach | Callable[[], Reach | None] | None = None
                  ) -> tuple[str, list[Any] | ScanSpec]:
    """The text of a local or S3 manifest and what it holds; ManifestError listing every
    problem, including locations a run on AWS cannot reach: local paths, and (given the
    stack's ``reach``) S3 locations its functions may not read or write. ``reach`` may be
    a function that finds it, called once the manifest is read and checked on its own (a
    local one with no AWS call): what it raises (a mistyped ``--stack``) is raised only for
    a manifest without problems; a manifest's own problems are listed whatever it raises."""
    on_s3 = manifest.startswith("s3://")
    if on_s3:
        bucket, _, key = manifest[len("s3://"):].partition("/")
        try:
            text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
                raise InputNotFoundError(f"{manifest} does not exist: check the URL") from exc
            raise
        base = manifest.rsplit("/", 1)[0]
    else:
        try:
            with open(manifest, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError as exc:
            raise InputNotFoundError(f"{manifest} does not exist: check the path") from exc
        base = os.path.dirname(os.path.abspath(manifest))
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
    problems: list[str] = []
    parsed: list[Any] | ScanSpec = []
    try:
        parsed = load_manifest(text, manifest, base)
    except ManifestError as exc:
        problems = list(exc.problems)
    try:
        data = as_manifest(json.loads(text))
    except ValueError:
        data = None
    problems += local_location_problems(data, on_s3)
    if callable(reach):
        try:
            reach = reach()
        except (TiffpipeError, ClientError, BotoCoreError):
            if problems:
                raise ManifestError(manifest, problems) from None
            raise
    if reach is not None:
        problems += reach_problems(parsed, manifest, reach)
    if problems:
        raise ManifestError(manifest, problems)
    return text, parsed


def upload_manifest(s3: Any, manifest: str, text: str, bucket: str, name: str) -> str:
    """A checked manifest's S3 URL: a local one (``text``) is uploaded to
    ``manifests/<name>.json``."""
    if manifest.startswith("s3://"):
        return manifest
    key = f"{MANIFESTS}{name}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"),
                  ContentType="application/json")
    return f"s3://{bucket}/{key}"


def run_input(bucket: str, manifest_url: str, run_id: str) -> dict[str, Any]:
    """The execution input (a RunInput) of a run of the stack whose bucket is ``bucket``."""
    return to_payload(RunInput(manifest=manifest_url, work=f"s3://{bucket}/{WORK}{run_id}/",
                               run_id=run_id, report=f"s3://{bucket}/{REPORTS}{run_id}.json"))


# --- start, follow, show --------------------------------------------------------------


def start(clients: Clients, manifest: str, stack: str | None = None,
          state_machine: str | None = None, wait: bool = False, poll: float = 5.0,
          out: TextIO | None = None, err: TextIO | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Upload (if local) and check the manifest, start an execution on it; with ``wait``,
    follow it to the end. Returns the exit code of ``tiffpipe run``."""
    from pipeline.runner import new_run_id

    out, err = out or sys.stdout, err or sys.stderr
    found: list[tuple[Target, Reach | None]] = []

    def stack_found() -> Reach | None:  # after the manifest's own check (read_manifest)
        target = find_target(clients, stack, state_machine)
        found.append((target, stack_reach(clients, target)))
        return found[0][1]

    run_id = new_run_id()
    s3 = clients("s3")
    text, parsed = read_manifest(s3, manifest, stack_found)
    [(target, reach)] = found
    if not isinstance(parsed, ScanSpec):  # (a scan's run defers to an earlier one itself)
        _not_running_already(clients, target, manifest, parsed, err)
    if not reach:
        why = ("its functions' roles cannot be read (iam:GetRolePolicy, this account's)"
               if target.stack else f"the state machine has no {STACK_TAG} tag")
        print(f"the manifest's locations are not checked against the stack's data locations: "
              f"{why}", file=err)
    url = upload_manifest(s3, manifest, text, target.bucket, run_id)
    if url != manifest:
        print(f"uploaded {manifest} to {url}", file=err)
    name = f"run-{run_id}"
    arn = clients("stepfunctions").start_execution(
        stateMachineArn=target.state_machine_arn, name=name,
        input=json.dumps(run_input(target.bucket, url, run_id)))["executionArn"]
    print(f"started {name} on {target.state_machine_arn}", file=err)
    print(arn, file=out, flush=True)
    if not wait:
        print(f"follow it with: {status_command(clients, arn)}", file=err)
        return EXIT_OK
    return show(clients, arn, wait=True, poll=poll, out=out, err=err, sleep=sleep)


def status_command(clients: Clients, arn: str, *more: str) -> str:
    """``tiffpipe status ARN`` as this command was run: with the ``--region``, ``--profile``
    and ``--endpoint-url`` it was given (run as printed, it reaches the same AWS)."""
    return shlex.join(["tiffpipe", "status", arn, *more, *clients.options()])


def _not_running_already(clients: Clients, target: Target, manifest: str,
                         jobs: list[JobSpec], err: TextIO) -> None:
    """RunningAlreadyError if an execution of the state machine is running the same list of
    jobs now (the same manifest URL, or a manifest, a local one uploaded by an earlier
    ``start`` too, that resolves to the same jobs): both would do every job and write the
    same outputs at once, as a local run of the same manifest is refused
    (``runner._not_running_already``). Step Functions refusing the listing (a caller
    without states:ListExecutions) is said on ``err``, and the run starts."""
    from botocore.exceptions import BotoCoreError

    from pipeline.adapters import earlier_runs

    s3 = clients("s3")
    ours = [job.to_json() for job in jobs]

    def same(url: str) -> bool:
        if url == manifest:
            return True
        try:
            _, theirs = read_manifest(s3, url)
        except (TiffpipeError, ClientError):  # gone, or unreadable: not known to be the same
            return False
        return not isinstance(theirs, ScanSpec) and [j.to_json() for j in theirs] == ours

    try:
        other = earlier_runs.running_run(clients("stepfunctions"), target.state_machine_arn,
                                         same)
    except (ClientError, BotoCoreError) as exc:
        print(f"cannot tell whether a run of this manifest is running now ({call_failed(exc)}): "
              "starting anyway (the operator policy grants states:ListExecutions on the state "
              "machine: deploy.py --print-operator-policy)", file=err)
        return
    if other is not None:
        raise RunningAlreadyError(
            f"{manifest}: execution {other} is running this manifest (the same jobs) now: a "
            "second run would do every job again and write the same outputs at once. Wait "
            f"for it to end ({status_command(clients, other, '--wait')}), or stop it (aws "
            f"stepfunctions stop-execution --execution-arn {other}), then start again")


#: the label of the Distributed Map whose items are the run's jobs (statemachine.asl.json)
JOBS_LABEL = "Jobs"


def _map_runs(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": execution_arn}
    while True:
        page = sfn.list_map_runs(**kwargs)
        runs += page.get("mapRuns", [])
        if not page.get("nextToken"):
            return runs
        kwargs["nextToken"] = page["nextToken"]


def _running_children(sfn: Any, map_run_arn: str) -> list[str]:
    """The child executions of a map run that are running now (at most its MaxConcurrency)."""
    arns: list[str] = []
    kwargs: dict[str, Any] = {"mapRunArn": map_run_arn, "statusFilter": "RUNNING"}
    while True:
        page = sfn.list_executions(**kwargs)
        arns += [e["executionArn"] for e in page.get("executions", [])]
        if not page.get("nextToken"):
            return arns
        kwargs["nextToken"] = page["nextToken"]


def map_run_progress(sfn: Any, execution_arn: str) -> dict[str, dict[str, int]]:
    """Item counts of the execution's Distributed Map runs, summed per map label: ``Jobs``
    (its items are the run's jobs) and, from the jobs running now (child executions of the
    Jobs map on AWS), Split, Process, ...: ``{label: {"total", "succeeded", "failed",
    "running", ...}}``."""
    runs = _map_runs(sfn, execution_arn)
    for run in list(runs):
        if _label(run["mapRunArn"]) != JOBS_LABEL:
            continue
        try:  # the jobs' own map runs belong to their child executions (moto lists them above)
            children = _running_children(sfn, run["mapRunArn"])
        except Exception:  # noqa: BLE001 - informational: the jobs' counts alone, then
            children = []
        for child in children:
            runs += _map_runs(sfn, child)
    totals: dict[str, dict[str, int]] = {}
    for run in runs:
        counts = sfn.describe_map_run(mapRunArn=run["mapRunArn"]).get("itemCounts", {})
        acc = totals.setdefault(_label(run["mapRunArn"]), {"runs": 0})
        acc["runs"] += 1
        for key, value in counts.items():
            if isinstance(value, int):
                acc[key] = acc.get(key, 0) + value
    return totals


def _label(map_run_arn: str) -> str:
    # mapRun:<state machine>/<label>:<id>
    return map_run_arn.rsplit(":", 1)[0].rsplit("/", 1)[-1]


def progress_line(totals: dict[str, dict[str, int]] | None) -> str:
    if totals is None:
        return "progress unknown (the map runs cannot be listed now)"
    if not totals:
        return "planning (no map run yet)"
    parts = []
    order = {JOBS_LABEL: 0, "Split": 1}
    for label, c in sorted(totals.items(), key=lambda kv: order.get(kv[0], 2)):
        done = c.get("succeeded", 0) + c.get("failed", 0) + c.get("timedOut", 0) + \
            c.get("aborted", 0)
        failed = c.get("failed", 0) + c.get("timedOut", 0) + c.get("aborted", 0)
        if label == JOBS_LABEL:
            text = f"jobs {done}/{c.get('total', 0)} done"
        else:
            text = f"{label} {done}/{c.get('total', 0)} items ({c['runs']} map run(s))"
        parts.append(text + (f", {failed} failed" if failed else ""))
    return "; ".join(parts)


def ended_why(desc: dict[str, Any]) -> str:
    """Why an execution (``DescribeExecution``) did not succeed, in words: a state that
    failed it (PlanRun, Report) has Lambda's error as its Cause, the JSON of the error's
    type, message and stack trace, said here as the report says a job's error
    (:func:`pipeline.errors.failure_record`: the type, the message, what to do)."""
    if not (desc.get("error") or desc.get("cause")):
        return "see the execution history in the Step Functions console"
    failure = failure_record({"Error": desc.get("error"), "Cause": desc.get("cause")})
    return f"{failure['type']}: {failure['message']}"


def _work_of(desc: dict[str, Any]) -> Any:
    """The work location an execution (``DescribeExecution``) was started with: its
    input's ``work`` (None when it has none)."""
    return json.loads(desc.get("input") or "{}").get("work")


#: what the jobs of a run that ended without its report (stopped, timed out, or failed as a
#: whole) are said to have met, when they have no result of their own: (type, what happened)
_UNFINISHED = {"ABORTED": (INTERRUPTED_ERROR, "the run was stopped"),
               "TIMED_OUT": (INTERRUPTED_ERROR, "the run timed out"),
               "FAILED": (RUN_FAILED_ERROR, "the run failed as a whole")}


def rebuilt_report(clients: Clients, desc: dict[str, Any]) -> dict[str, Any] | None:
    """The report of an execution (``DescribeExecution``) that ended without one, as the
    Report step would have written it, from the results its jobs left in its work location
    (kept 7 days): a job without one FAILED, never published (a job's output is published
    whole or not at all), with the error of :data:`_UNFINISHED`. None when PlanRun wrote no
    run (no job was planned) or the work cannot be read."""
    from pipeline.adapters import storage
    from pipeline.steps import layout
    from pipeline.steps.report import run_report

    work = _work_of(desc)
    kind, what = _UNFINISHED.get(desc["status"], (RUN_FAILED_ERROR, "the run ended"))
    if not isinstance(work, str) or not work.startswith("s3://"):
        return None
    message = shortened(f"{what} before this job finished ({ended_why(desc)}): its output "
                        "was not published; run the job again")
    try:
        with storage.client_of(clients("s3")):
            if not storage.exists(layout.run_file(work)):
                return None
            return run_report(ReportEvent(layout.run_file(work)),
                              missing={"type": kind, "message": message})[0]
    except (TiffpipeError, ClientError, KeyError, ValueError):
        return None


#: outputs named in what status says of the uploads it ended (the others counted)
_NAMED = 5


@dataclass
class EndedUploads:
    """What :func:`end_open_uploads` did about the uploads a run left open: how many it
    ended (``ended``; of them, those of outputs: ``outputs``, the others its work's), why
    some could not be (``problem``), until when invocations begun before a stop may still
    begin some (``again_after``, epoch seconds: run status again after then), and the lines
    saying so (on stderr)."""

    ended: int = 0
    outputs: list[str] = field(default_factory=list)
    problem: str | None = None
    again_after: float | None = None
    lines: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """Its part of ``status --json`` (``uploads``)."""
        return {"ended": self.ended, "outputs": list(self.outputs), "problem": self.problem,
                "again_after": self.again_after}


def end_open_uploads(clients: Clients, desc: dict[str, Any]) -> EndedUploads:
    """End the S3 multipart uploads an execution (``DescribeExecution``) that ended without
    its Report step (stopped, timed out, failed) left open, and say so: its jobs' output
    uploads, which its merges recorded in its work as they began them (their exact upload
    ids: never another run's upload of the same output), and its segments' under its work
    prefix (``work/<run id>/``), as RecordFailure ends a failed job's
    (:func:`pipeline.adapters.segments.end_uploads`); each record goes once its upload is
    ended, so a second call ends nothing more. What to say (:class:`EndedUploads`, its lines
    on stderr): what was ended; what could not be, and why (S3 denying it: the permissions
    it needs); invocations that may still be running, and begin uploads, after a stop."""
    from pipeline.adapters import storage
    from pipeline.adapters.segments import end_uploads
    from pipeline.core.constants import FUNCTION_SIZES
    from pipeline.errors import AccessDeniedError, TiffpipeError

    work = json.loads(desc.get("input") or "{}").get("work")
    done = EndedUploads()
    if not isinstance(work, str) or not work.startswith("s3://"):
        return done
    lines, outputs = done.lines, done.outputs
    try:
        with storage.client_of(clients("s3")):
            ended = end_uploads(work, outputs)
    except TiffpipeError as exc:  # (the outputs' uploads ended before it are said too)
        ended, cause = len(outputs), exc
        while cause is not None and not isinstance(cause, AccessDeniedError):
            cause = cause.__cause__
        why = (f"S3 denied it ({str(exc).split(': check', 1)[0]}): ending them needs "
               f"s3:AbortMultipartUpload on the data locations and on {work}, "
               f"s3:ListBucketMultipartUploads on its bucket, s3:ListBucket and s3:GetObject "
               f"on {work} (docs/aws.md, \"Uploads a run leaves open\"); their parts are "
               "billed until they are ended: run tiffpipe status again with those "
               "permissions" if cause is not None else f"{exc}; run tiffpipe status again")
        done.problem = f"could not end the S3 uploads the run left open: {why}"
        lines.append(f"tiffpipe: {done.problem}")
    done.ended = ended
    if ended:
        named = outputs[:_NAMED] + ([f"{len(outputs) - _NAMED} more"]
                                    if len(outputs) > _NAMED else [])
        what = ([f"the output{'s' if len(outputs) > 1 else ''} {', '.join(named)}"]
                if outputs else []) + ([f"{ended - len(outputs)} of its work"]
                                       if ended > len(outputs) else [])
        lines.append(f"tiffpipe: ended {ended} S3 upload(s) the run left open (their parts "
                     f"are no longer billed; nothing of them was published): {', '.join(what)}")
    stopped = desc.get("stopDate")
    until = (stopped.timestamp() + max(f.timeout for f in FUNCTION_SIZES.values())
             if desc["status"] in _STOPPED and hasattr(stopped, "timestamp") else 0)
    if until > time.time():  # a stop ends no invocation: those running go on, to their timeout
        done.again_after = until
        lines.append("tiffpipe: invocations begun before the run ended may go on until "
                     f"{time.strftime('%H:%M:%S UTC', time.gmtime(until))} (their function's "
                     "timeout) and begin uploads: run tiffpipe status again after then")
    return done


#: the endings that leave invocations running (Step Functions stops no Lambda invocation)
_STOPPED = ("ABORTED", "TIMED_OUT")


def write_rerun(clients: Clients, desc: dict[str, Any], report: dict[str, Any],
                path: str) -> str:
    """Write to ``path`` (a local file) a manifest of the report's failed jobs that a rerun
    may mend: those whose error's fault is not the input's (a rerun of those fails the same).
    Each job as the run ran it (its spec in the run's ``run.json``, defaults applied: a scan's
    jobs too), so its ``tiffpipe start`` runs those alone: the jobs that succeeded are not
    done again. Returns what to say of it: what was written and the jobs left out (the
    input's fault), or why nothing was (no such job: a manifest of no job is no manifest;
    the run's work, ``run.json``, gone; the file cannot be written)."""
    from pipeline.adapters import storage
    from pipeline.steps import layout

    failed = [j for j in report["jobs"] if j["status"] == "FAILED"]
    left_out = [j["job"] for j in failed if job_fault(j) == INPUT_FAULT]
    chosen = [j["job"] for j in failed if j["job"] not in left_out]
    skipped = (f"; left out, the input's fault (a rerun fails the same): job "
               f"{', '.join(map(str, left_out))}" if left_out else "")
    if not chosen:
        return (f"no --rerun-manifest written: no failed job a rerun may mend{skipped}"
                if failed else "no --rerun-manifest written: no job failed")
    work = _work_of(desc)
    listed = ", ".join(map(str, chosen))
    try:
        with storage.client_of(clients("s3")):
            specs = storage.read_json(layout.run_file(work))["jobs"]
    except WorkMissingError:
        return (f"no --rerun-manifest written: {layout.run_file(work)}, the jobs as the run "
                f"ran them, is gone (a run's work is kept 7 days): run jobs {listed} of its "
                "manifest again")
    except (TiffpipeError, ClientError, KeyError, TypeError, ValueError) as exc:
        return (f"no --rerun-manifest written: the jobs as the run ran them cannot be read "
                f"from its work ({exc}): run jobs {listed} of its manifest again")
    jobs = [JobSpec.from_json(specs[i]).manifest_entry() for i in chosen]
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"jobs": jobs}, fh, indent=1)
            fh.write("\n")
    except OSError as exc:
        return f"no --rerun-manifest written: {path}: {exc.strerror or exc}"
    return (f"wrote {path}: {len(chosen)} failed job(s) to run again (tiffpipe start "
            f"{path}){skipped}")


#: the start of a Step Functions ARN (any partition: aws, aws-cn, aws-us-gov): its region
#: and account
_STATES_ARN = r"arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:"
#: an execution's ARN, as ``start`` prints it
_EXECUTION_ARN = re.compile(_STATES_ARN + r"execution:[^:\s]+:[^:\s]+")
#: a state machine's ARN (not a version's or an alias's: ``start`` reads the machine's tags)
_STATE_MACHINE_ARN = re.compile(_STATES_ARN + r"stateMachine:[^:\s]+")
#: a run's id (runner.new_run_id), or an execution's name (run- and the id)
_RUN_ID = re.compile(r"(run-)?\d{8}-\d{6}-[0-9a-f]{6}")


def execution_arn_problem(given: str) -> str | None:
    """Why ``given`` (``tiffpipe status``'s argument) is no execution ARN, saying what
    status takes, or None when it is one: checked before any AWS call (a word there was
    met by AWS's advice on a missing region, or on credentials)."""
    if _EXECUTION_ARN.fullmatch(given):
        return None
    what = "not an execution ARN"
    if ":stateMachine:" in given:
        what = "a state machine's ARN, not an execution's"
    elif _RUN_ID.fullmatch(given):
        what = "a run's id, not its execution ARN (on AWS the id ends the ARN)"
    return (f"status: {given!r} is {what}: status takes the one tiffpipe start printed "
            "(arn:aws:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME), of a run on AWS; a "
            "local run (tiffpipe run) has no status to follow: its report "
            "(<manifest>.report.json beside its manifest) says how it went")


def state_machine_arn_problem(given: str) -> str | None:
    """Why ``given`` (``tiffpipe start --state-machine``'s value) is no state machine ARN,
    saying what the option takes, or None when it is one: checked before any AWS call
    (Step Functions' InvalidArn was said as a state machine not deployed, a word as AWS's
    advice on a missing region)."""
    if _STATE_MACHINE_ARN.fullmatch(given):
        return None
    what = "not a state machine ARN"
    if _EXECUTION_ARN.fullmatch(given):
        what = "an execution's ARN, not its state machine's"
    elif _STATE_MACHINE_ARN.match(given):
        what = "a state machine version's or alias's ARN, not the state machine's"
    elif not given.startswith("arn:"):
        what = "a name, not an ARN"
    return (f"start: --state-machine {given!r} is {what}: --state-machine takes the state "
            "machine's ARN (arn:aws:states:REGION:ACCOUNT:stateMachine:NAME, as deploy.py "
            "prints it); for a stack deploy.py made, give --stack NAME instead")


def show(clients: Clients, execution_arn: str, wait: bool = False, poll: float = 5.0,
         out: TextIO | None = None, err: TextIO | None = None,
         sleep: Callable[[float], None] = time.sleep, as_json: bool = False,
         rerun: str | None = None) -> int:
    """Show an execution: its progress while it runs (followed to the end with ``wait``),
    then the run's summary table: its report's, or, for a run that ended without one
    (stopped, timed out, failed), one rebuilt from its work (:func:`rebuilt_report`). Exit
    code as ``tiffpipe run`` (0 also for still running). ``as_json``: one JSON document on
    stdout instead (:func:`_document`), the same exit code. Also when ``out`` or ``err`` can
    no longer be written (``tiffpipe status ARN | head``: what it shows is given up, not
    what it says of the run; :func:`pipeline.ui.shown`)."""
    from pipeline.ui import fault_lines, print_summary, shown

    out, err = out or sys.stdout, err or sys.stderr

    def say(line: str, stream: TextIO, flush: bool = False) -> None:
        with shown(stream):
            print(line, file=stream, flush=flush)

    sfn = clients("stepfunctions")
    try:
        desc = sfn.describe_execution(executionArn=execution_arn)
    except ClientError as exc:
        if error_code(exc) in ("ExecutionDoesNotExist", "InvalidArn"):
            raise StackNotFoundError(f"no execution {execution_arn} in {clients.region}: check "
                                     "the ARN (and --region)") from exc
        raise
    name = desc.get("name", execution_arn.rsplit(":", 1)[-1])
    last = ""
    while desc["status"] == "RUNNING":
        try:
            totals: dict[str, dict[str, int]] | None = map_run_progress(sfn, execution_arn)
        except Exception:  # noqa: BLE001 - progress is informational: never end the watch for it
            # (moto's in-process engine even raises AttributeError for a run not yet started)
            totals = None
        line = f"{name}: RUNNING: {progress_line(totals)}"
        if not wait:
            say(json.dumps(_document(execution_arn, desc, progress=totals)) if as_json
                else line, out)
            if rerun is not None:  # (its failed jobs are known only when it has ended)
                follow = status_command(clients, execution_arn, "--wait", "--rerun-manifest",
                                        rerun)
                say(f"tiffpipe: no --rerun-manifest written: the run {name} is still running "
                    "(the jobs a rerun may mend are known when it has ended): run "
                    f"{follow} to write it when the run ends, or this command again then",
                    err)
            return EXIT_OK
        if line != last:
            say(line, err, flush=True)
            last = line
        sleep(poll)
        desc = sfn.describe_execution(executionArn=execution_arn)
    report_url = json.loads(desc.get("output") or "{}").get("report") or \
        json.loads(desc.get("input") or "{}").get("report")
    report, problem, uploads = None, None, None
    if desc["status"] != "SUCCEEDED":  # no Report step ran: nor RecordFailure, for some jobs
        problem = f"the run {name} ended {desc['status']}: {one_line(ended_why(desc))}"
        report = rebuilt_report(clients, desc)
        uploads = end_open_uploads(clients, desc)
    elif not report_url:
        problem = f"the run {name} succeeded but names no report"
    else:
        bucket, _, key = report_url[len("s3://"):].partition("/")
        try:
            report = json.loads(clients("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as exc:
            problem = (f"the run {name} succeeded but its report {report_url} cannot be read: "
                       f"{call_failed(exc)}")
    code = EXIT_FAILED if problem or not report or report.get("failed", 1) else EXIT_OK
    said = uploads.lines if uploads else []
    if rerun is not None and desc["status"] != "RUNNING":
        if report is None:
            print(f"tiffpipe: no --rerun-manifest written: the run {name} has no report and "
                  "planned no job (or its work is gone): start its manifest again", file=err)
        else:
            print(f"tiffpipe: {write_rerun(clients, desc, report, rerun)}", file=err)
    if as_json:
        say(json.dumps(_document(execution_arn, desc, report=report, problem=problem,
                                 report_url=None if problem else report_url,
                                 uploads=uploads)), out)
        for line in said:
            say(line, err)
        return code
    if problem:
        say(f"tiffpipe: {problem}", err)
    if report is not None:
        with shown(out):
            print_summary(report, out)
            if problem:
                work = _work_of(desc)
                print(f"report: none written; the summary above is rebuilt from the jobs' "
                      f"results in {work} (kept 7 days)", file=out)
            else:
                print(f"report: {report_url}", file=out)
        with shown(err):
            for line in fault_lines(report):
                print(line, file=err)
    for line in said:
        say(line, err)
    return code


def _document(arn: str, desc: dict[str, Any], progress: dict[str, Any] | None = None,
              report: dict[str, Any] | None = None, problem: str | None = None,
              report_url: str | None = None,
              uploads: EndedUploads | None = None) -> dict[str, Any]:
    """What ``status --json`` prints: the execution, its status (RUNNING, SUCCEEDED, FAILED,
    TIMED_OUT, ABORTED), a running one's map runs' item counts, a finished one's report (its
    URL; ``null`` for one rebuilt from the work, when the run wrote none), why a run that
    did not succeed ended so (``problem``), and what was done about the uploads such a run
    left open (``uploads``: :meth:`EndedUploads.document`; ``null`` for a run that
    succeeded: its own steps ended them)."""
    doc: dict[str, Any] = {"schema": SCHEMA, "execution": arn, "name": desc.get("name"),
                           "status": desc["status"]}
    if desc["status"] == "RUNNING":
        doc["progress"] = progress
        return doc
    doc.update(problem=problem, report_url=report_url, report=report,
               uploads=uploads.document() if uploads else None)
    return doc
