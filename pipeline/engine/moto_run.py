"""A run on moto's Step Functions interpreter: the definition as AWS runs it, with every
state moto supports, its Lambda tasks served by the worker pool (real handler code).

The local engine (:class:`pipeline.engine.local.LocalEngine`) runs here what its direct
interpreter does not support (``interpreter="auto"``), or everything with
``interpreter="moto"``. moto mocks AWS in this process only, its state machine executing
for real; :mod:`pipeline.engine.moto_patches` makes its interpreter lean and quick to start
while a run lasts. With it, the only module that knows moto's internals.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.core.constants import FUNCTION_SIZES, FUNCTIONS
from pipeline.core.events import JobList
from pipeline.engine import definition
from pipeline.engine.execution import (
    Execution,
    Invoker,
    Listener,
    function_name,
    function_of,
    iso_timestamp,
)
from pipeline.engine.workers import WorkerPool
from pipeline.errors import EngineError

log = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT = "123456789012"
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_LAMBDA",
                  "AWS_ENDPOINT_URL_SFN", "AWS_ENDPOINT_URL_IAM")


@contextmanager
def mocked_aws() -> Iterator[None]:
    """moto with real state machine execution, in this process only. Endpoint variables are
    hidden meanwhile so that moto serves the engine's own calls (the workers keep them)."""
    from moto import mock_aws

    # moto logs every failed task at ERROR and warns about declarations it ignores; the
    # run report carries the errors, so keep the terminal clean.
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    saved = {k: os.environ.pop(k) for k in _ENDPOINT_VARS if k in os.environ}
    try:
        config = {"stepfunctions": {"execute_state_machine": True},
                  "lambda": {"use_docker": False}}
        with mock_aws(config=config):  # type: ignore[arg-type]
            yield
    finally:
        os.environ.update(saved)


#: waits until the invokes running end, at most ``seconds`` and no longer once
#: ``aborted()``; gives those still running then (:func:`served_by`)
Idle = Callable[[float, Callable[[], bool]], list[str]]


@contextmanager
def served_by(pool: Invoker, listener: Listener | None = None) -> Iterator[Idle]:
    """Serve moto's Lambda invokes with the real handlers (moto's non-Docker Lambda backend
    only echoes payloads). A function named ``...-split`` (``-process``, ``-merge``) is that
    step, whatever its prefix and version: the engine's own names and a deployed stack's
    (``...:function:tiffpipe-prod-split:3``) both work. It gives a function that waits until
    no invoke runs (:data:`Idle`): one that a state's TimeoutSeconds gave up on goes on (as
    a Lambda function does on AWS), and ``listener`` then hears of its end (a job's output
    it published) before the run's report is read; it gives the invokes still running when
    it stopped waiting, each as ``function action`` and its job, plan or unit."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    running = threading.Condition()
    in_flight: dict[int, str] = {}
    ids = iter(range(1, 1 << 62))

    def invoke(self: Any, name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: dict[str, str]) -> bytes:
        function = function_of(name)
        event = json.loads(body or "{}")
        what = function if not isinstance(event, dict) else f"{function} {event.get('action')}" \
            + "".join(f" {k} {event[k]}" for k in ("job", "plan", "unit") if k in event)
        with running:
            key = next(ids)
            in_flight[key] = what
        try:
            ok, payload = pool.invoke(function, event)
            if not ok:
                response_headers["x-amz-function-error"] = "Unhandled"
            if listener is not None:
                listener(function, event, ok, payload)
        finally:
            with running:
                del in_flight[key]
                running.notify_all()
        return json.dumps(payload).encode()

    def idle(seconds: float, aborted: Callable[[], bool]) -> list[str]:
        deadline = time.monotonic() + seconds
        with running:
            while in_flight and not aborted():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                running.wait(min(left, 0.25))  # (woken at each end; aborted() polled)
            return list(in_flight.values())

    original = LambdaSimpleBackend.invoke
    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield idle
    finally:
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


def execution_history(sfn: Any, execution: str, keep: bool = True
                      ) -> tuple[int, list[dict[str, Any]] | None]:
    """How many events an execution's history has (all pages), and, with ``keep``, the
    events as JSON (times as the direct interpreter's: :func:`iso_timestamp`; else None:
    only counted)."""
    events: list[dict[str, Any]] = []
    count = 0
    kwargs = {"executionArn": execution, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        count += len(page["events"])
        if keep:
            events.extend(json.loads(json.dumps(page["events"], default=_json_value)))
        if not page.get("nextToken"):
            return count, events if keep else None
        kwargs["nextToken"] = page["nextToken"]


def _json_value(value: Any) -> Any:
    """A history event's value that is not JSON: a time as ISO 8601 text, else its str."""
    return iso_timestamp(value) if isinstance(value, datetime.datetime) else str(value)


def _created_machine(sfn: Any, role: str, text: str) -> str:
    """The ARN of the state machine ``text`` defines, made in moto; a definition its parser
    refuses is an :class:`EngineError` that says so (Step Functions may accept it)."""
    from botocore.exceptions import ClientError

    try:
        return sfn.create_state_machine(name="tiffpipe-local", roleArn=role,
                                        definition=text)["stateMachineArn"]
    except ClientError as exc:
        why = exc.response.get("Error", {}).get("Message") or str(exc)
        raise EngineError(
            f"moto, the engine that runs a definition the direct interpreter does not "
            f"support, cannot parse it: {why[:1000]}. Write the field it names as its "
            "parser expects (e.g. 0.0, not 0, for a number with a fraction), or change the "
            "definition so that the direct interpreter runs it (docs/local-engine.md)"
        ) from exc


def run_on_moto(pool: WorkerPool, listener: Listener | None, map_threads: int,
                definition_text: str | None, execution_input: dict[str, Any], name: str,
                poll: float, aborted: Callable[[], bool], history: bool = False,
                grace: float = 10.0) -> Execution:
    """One execution of the definition (``definition_text``, else statemachine.asl.json) on
    ``execution_input``, its tasks served by ``pool``, at most ``map_threads`` items of a
    Distributed Map in flight; ``poll``: seconds between status checks if moto's end of an
    execution cannot be signalled. Once ``aborted()``, the execution is stopped.
    ``history``: its events are kept in its :attr:`Execution.history` (moto's
    GetExecutionHistory: the run's own, not its Map items' child executions). The tasks
    the state machine gave up on (past a Task's TimeoutSeconds) are waited for ``grace``
    seconds after the execution ends (not once ``aborted()``), then the pool is stopped
    (:meth:`WorkerPool.stop`), the tasks cut off named in a warning: a hung task does not
    hold the run for ever."""
    import boto3

    from pipeline.engine.moto_patches import (
        crash_watch,
        end_signal,
        item_reader,
        lean_interpreter,
        start_time_as_text,
    )

    def read_items(parameters: dict[str, Any]) -> str:
        """The job list a Distributed Map's ItemReader names (Bucket, Key), from the work
        location through a worker: moto mocks S3 in this process (see
        moto_patches.item_reader)."""
        return pool.read_text(JobList(parameters["Bucket"], parameters["Key"]).url)

    started = time.time()
    with (mocked_aws(), served_by(pool, listener) as idle, lean_interpreter(map_threads),
          end_signal() as ended, crash_watch() as crashes, item_reader(read_items),
          start_time_as_text()):
        # signalled, the end needs no frequent polls (each costs the interpreter ~1 ms)
        wait = poll if ended is None else max(poll, 1.0)
        session = boto3.Session(region_name=REGION)
        # moto's Lambda needs its role to exist in IAM; a state machine's role ARN only
        # needs to be well-formed, and the one role trusts both services
        role = _role(session, "tiffpipe-local")
        arns = _create_functions(session, role)
        sfn = session.client("stepfunctions")
        machine = _created_machine(sfn, role, definition.render(arns, definition_text))
        execution = sfn.start_execution(
            stateMachineArn=machine, name=name,
            input=json.dumps(execution_input))["executionArn"]
        while True:
            desc = sfn.describe_execution(executionArn=execution)
            if desc["status"] != "RUNNING":
                break
            if aborted():  # its tasks in the stopped pool fail at once
                sfn.stop_execution(executionArn=execution, error="Aborted",
                                   cause="the run was stopped")
                return Execution("ABORTED", None, "Aborted", "the run was stopped",
                                 time.time() - started)
            if crashes:  # moto's interpreter died: the execution can never end
                exc = crashes[0]
                raise EngineError(f"the embedded engine's interpreter (moto) stopped: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if ended is None:
                time.sleep(wait)
            elif ended.wait(wait):  # woken when an execution ends
                ended.clear()
        count, events = execution_history(sfn, execution, keep=history)
        # the tasks it gave up on (a Task's TimeoutSeconds): their outputs are heard of
        cut_off = idle(grace, aborted)
        if cut_off:
            log.warning("%d task(s) that the state machine gave up on (past a Task's "
                        "TimeoutSeconds) still ran %.0f s after the execution ended: "
                        "stopped (%s)", len(cut_off), grace, ", ".join(cut_off))
            pool.stop()
    output = _output(desc.get("output"))
    return Execution(desc["status"], output, desc.get("error"), desc.get("cause"),
                     time.time() - started, count, history=events)


def _output(text: str | None) -> Any:
    """An execution's output from describe_execution: JSON, but moto gives a string output
    as it is, without its quotes (``OutputPath: "$.report"`` on a string crashed here)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _role(session: Any, name: str) -> str:
    iam = session.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]}}]}
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))[
        "Role"]["Arn"]


def _create_functions(session: Any, role: str) -> dict[str, str]:
    lam = session.client("lambda")
    arns = {}
    for function in FUNCTIONS:
        arns[function] = lam.create_function(
            FunctionName=function_name(function), Role=role, PackageType="Image",
            Code={"ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/"
                              f"tiffpipe-{function}:local"},
            Timeout=FUNCTION_SIZES[function].timeout,
            MemorySize=FUNCTION_SIZES[function].memory)["FunctionArn"]
    return arns
