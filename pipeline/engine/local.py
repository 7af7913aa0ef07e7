"""Run statemachine.asl.json on moto's Step Functions interpreter, in this process.

The definition is the same one AWS runs. Its Lambda tasks call functions registered in moto
whose ``invoke`` is served by :class:`WorkerPool`: real handler code in worker processes,
so tiles run in parallel. This module is the only place that knows the local engine exists,
and, with :mod:`pipeline.engine.moto_patches` (what it changes in moto's interpreter while
a run lasts, and why), the only one that knows moto's internals.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, Self

from pipeline.core.constants import FUNCTION_SIZES, FUNCTIONS
from pipeline.engine import definition
from pipeline.engine.moto_patches import crash_watch, end_signal, lean_interpreter
from pipeline.engine.workers import WorkerPool
from pipeline.errors import EngineError

REGION = "us-east-1"
ACCOUNT = "123456789012"
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_LAMBDA",
                  "AWS_ENDPOINT_URL_SFN", "AWS_ENDPOINT_URL_IAM")

class Invoker(Protocol):
    """What serves an invoke: :class:`WorkerPool`, or an in-process stand-in in tests."""

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]: ...


#: called after every task: (function, event, ok, payload)
Listener = Callable[[str, dict[str, Any], bool, dict[str, Any]], None]

@dataclass
class Execution:
    """How an execution ended."""

    status: str  # SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    seconds: float


def function_name(function: str) -> str:
    return f"tiffpipe-local-{function}"


@contextmanager
def _mocked_aws() -> Iterator[None]:
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


@contextmanager
def served_by(pool: Invoker, listener: Listener | None = None) -> Iterator[None]:
    """Serve moto's Lambda invokes with the real handlers (moto's non-Docker Lambda backend
    only echoes payloads). A function named ``...-split`` (``-process``, ``-merge``) is that
    step, whatever its prefix: the engine's own and a deployed stack's names both work."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    def invoke(self: Any, name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: dict[str, str]) -> bytes:
        function = name.rsplit(":", 1)[-1].rsplit("-", 1)[-1]
        if function not in FUNCTIONS:
            raise EngineError(f"no local function {name!r}")
        event = json.loads(body or "{}")
        ok, payload = pool.invoke(function, event)
        if not ok:
            response_headers["x-amz-function-error"] = "Unhandled"
        if listener is not None:
            listener(function, event, ok, payload)
        return json.dumps(payload).encode()

    original = LambdaSimpleBackend.invoke
    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield
    finally:
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


class LocalEngine:
    """Runs executions of the state machine on this machine with ``workers`` processes.

    ``map_threads``: the most items of one Distributed Map run in flight in the engine at once
    (default ``2 * workers + 2``: enough to keep the workers busy; more only costs memory).
    """

    def __init__(self, workers: int, listener: Listener | None = None,
                 definition_text: str | None = None, map_threads: int | None = None):
        # The pool captures the environment BEFORE moto replaces credentials with fakes.
        self.pool = WorkerPool(workers, env=dict(os.environ))
        self.listener = listener
        self.definition_text = definition_text
        self.map_threads = max(1, map_threads or 2 * workers + 2)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, execution_input: dict[str, Any], name: str | None = None,
            poll: float = 0.05) -> Execution:
        """Start an execution on ``execution_input`` and wait for it to end (``poll``: seconds
        between status checks if moto's end of an execution cannot be signalled)."""
        import boto3

        started = time.time()
        with (_mocked_aws(), served_by(self.pool, self.listener),
              lean_interpreter(self.map_threads), end_signal() as ended,
              crash_watch() as crashes):
            # signalled, the end needs no frequent polls (each costs the interpreter ~1 ms)
            wait = poll if ended is None else max(poll, 1.0)
            session = boto3.Session(region_name=REGION)
            # moto's Lambda needs its role to exist in IAM; a state machine's role ARN only
            # needs to be well-formed, and the one role trusts both services
            role = self._role(session, "tiffpipe-local")
            arns = self._create_functions(session, role)
            sfn = session.client("stepfunctions")
            machine = sfn.create_state_machine(
                name="tiffpipe-local", roleArn=role,
                definition=definition.render(arns, self.definition_text))["stateMachineArn"]
            execution = sfn.start_execution(
                stateMachineArn=machine, name=name or f"run-{uuid.uuid4().hex[:12]}",
                input=json.dumps(execution_input))["executionArn"]
            while True:
                desc = sfn.describe_execution(executionArn=execution)
                if desc["status"] != "RUNNING":
                    break
                if crashes:  # moto's interpreter died: the execution can never end
                    exc = crashes[0]
                    raise EngineError(f"the embedded engine's interpreter (moto) stopped: "
                                      f"{type(exc).__name__}: {exc}") from exc
                if ended is None:
                    time.sleep(wait)
                elif ended.wait(wait):  # woken when an execution ends
                    ended.clear()
        output = json.loads(desc["output"]) if desc.get("output") else None
        return Execution(desc["status"], output, desc.get("error"), desc.get("cause"),
                         time.time() - started)

    @staticmethod
    def _role(session: Any, name: str) -> str:
        iam = session.client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]}}]}
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"]["Arn"]

    def _create_functions(self, session: Any, role: str) -> dict[str, str]:
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
