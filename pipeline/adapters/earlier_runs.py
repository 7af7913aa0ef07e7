"""An earlier run of the same manifest, still running on AWS: a scan's run defers to it.

A scan's jobs are the inputs that have no output yet. Two runs of one scan at the same time
(a run longer than its schedule's interval, as a first run over a backlog is) would both
make jobs of every input the first one has not finished, and both do them (the later one
publishes nothing: a scan's jobs skip an output that exists, at PlanJob or when they would
publish). So PlanRun of a scan asks Step Functions for the state machine's running
executions: if one that started before this one runs the same scan (the same manifest, or
one that scans the same input into the same output: the caller tells), this run plans no
job, and its report names that run; the next run after it picks up what is new.

A list of jobs' run defers the same way to an earlier execution of the same manifest URL:
a schedule's runs are each on the schedule's manifest, and two of them at once would do
every job and write the same outputs at once (``tiffpipe start`` refuses a second run of a
list of jobs before it starts, :mod:`pipeline.aws.executions`).

Only on Lambda: a local run of a scan defers to an earlier local run (:mod:`local_runs`),
a local run of a list of jobs is refused before it starts. Never a
reason to fail the run: without the permissions (a stack deployed before them) or on any
error of Step Functions, the run goes on as before, with a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from itertools import takewhile
from typing import Any

from pipeline.errors import lambda_function

log = logging.getLogger(__name__)

#: an execution's ARN: partition, region, account, state machine, execution name
_EXECUTION = re.compile(r"^arn:(aws[\w-]*):states:([^:]+):(\d+):execution:([^:/]+):([^:/]+)$")
#: running executions looked at, at most (10 pages of ListExecutions)
MAX_RUNNING = 1000


def on_lambda() -> bool:
    """Whether this process is a Lambda function's (where other runs can be listed; not a
    local run that inherited Lambda's environment: :func:`pipeline.errors.lambda_function`)."""
    return lambda_function() is not None


def state_machine_of(execution: str) -> str | None:
    """The ARN of the state machine of a (top-level) execution ARN; None for another ARN."""
    m = _EXECUTION.match(execution)
    if m is None:
        return None
    partition, region, account, machine, _ = m.groups()
    return f"arn:{partition}:states:{region}:{account}:stateMachine:{machine}"


def earlier_run(execution: str, same: Callable[[str], bool], client: Any = None) -> str | None:
    """The ARN of a running execution of ``execution``'s state machine that started before it
    (ties broken by ARN) on a manifest for which ``same(manifest URL)`` is true; None if
    there is none, off Lambda, or if Step Functions cannot tell (logged). ``client``: a Step
    Functions client (default: one for the execution's region)."""
    machine = state_machine_of(execution)
    if machine is None or not on_lambda():
        return None
    import botocore.exceptions

    try:
        if client is None:
            import boto3
            from botocore.config import Config

            # quick to give up: Step Functions out of reach (a function in a VPC without a
            # route to it) must not hold up the run
            client = boto3.client("stepfunctions", region_name=execution.split(":")[3],
                                  config=Config(connect_timeout=5, read_timeout=10,
                                                retries={"mode": "standard",
                                                         "max_attempts": 3}))
        return _earlier(client, machine, execution, same)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.warning("cannot tell whether an earlier run of this manifest is still running (%s); "
                    "the run goes on: deploy the stack again to grant states:ListExecutions "
                    "and states:DescribeExecution to the split function", exc)
        return None


def _running(client: Any, machine: str) -> list[tuple[Any, str]]:
    """The running top-level executions of ``machine`` (at most :data:`MAX_RUNNING`), as
    (start date, ARN)."""
    running: list[tuple[Any, str]] = []
    pages = client.get_paginator("list_executions").paginate(
        stateMachineArn=machine, statusFilter="RUNNING",
        PaginationConfig={"MaxItems": MAX_RUNNING, "PageSize": 100})
    for page in pages:  # top-level runs only (a Distributed Map's children, should they be
        # listed, are execution:<machine>/<map>:<id> and run one job, never a manifest)
        running += [(e["startDate"], e["executionArn"]) for e in page["executions"]
                    if state_machine_of(e["executionArn"]) == machine]
    return running


def _manifest_of(client: Any, execution: str) -> str | None:
    """The manifest URL of an execution's input (a RunInput), or None."""
    doc = json.loads(client.describe_execution(executionArn=execution).get("input") or "{}")
    manifest = doc.get("manifest") if isinstance(doc, dict) else None
    return manifest if isinstance(manifest, str) else None


def running_run(client: Any, machine: str, same: Callable[[str], bool]) -> str | None:
    """The ARN of the earliest running execution of ``machine`` on a manifest for which
    ``same(manifest URL)`` is true, or None: ``tiffpipe start`` of a list of jobs asks it
    before it starts one (:func:`pipeline.aws.executions.start`). Step Functions' errors
    are the caller's."""
    return _first_of(client, sorted(_running(client, machine)), same)


def _earlier(client: Any, machine: str, execution: str, same: Callable[[str], bool]
             ) -> str | None:
    running = _running(client, machine)
    own = next((start for start, arn in running if arn == execution), None)
    if own is None:  # not listed yet (the list is eventually consistent)
        own = client.describe_execution(executionArn=execution)["startDate"]
    before = takewhile(lambda run: run < (own, execution), sorted(running))  # (in start order)
    return _first_of(client, before, same)


def _first_of(client: Any, runs: Iterable[tuple[Any, str]], same: Callable[[str], bool]
              ) -> str | None:
    """The ARN of the first of ``runs`` ((start date, ARN)) on a manifest for which
    ``same(manifest URL)`` is true, or None; each run's input is asked for (a
    DescribeExecution) only until one is."""
    for _start, arn in runs:
        manifest = _manifest_of(client, arn)
        if manifest is not None and same(manifest):
            return arn
    return None
