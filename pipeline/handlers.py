"""The Lambda entry points: one per container image, each dispatching on ``action``.

A handler parses the event into its typed model, calls one step, and returns the step's
small JSON result. Exceptions propagate: Lambda reports the class name as ``errorType``,
which is what the state machine's Retry/Catch match on. The handlers do not know whether
AWS or the embedded engine called them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline.core.events import (
    BatchEvent,
    EventError,
    FailureEvent,
    JobEvent,
    MergeEvent,
    ReportEvent,
    RunEvent,
    UnitEvent,
    parse_event,
)
from pipeline.steps.merge import merge
from pipeline.steps.planning import plan_job, plan_run
from pipeline.steps.process import process
from pipeline.steps.report import record_failure, report
from pipeline.steps.split import split

log = logging.getLogger("tiffpipe")

Action = tuple[type, Callable[[Any], dict[str, Any]]]

SPLIT_ACTIONS: dict[str, Action] = {
    "plan_run": (RunEvent, plan_run),
    "plan_job": (JobEvent, plan_job),
    "split": (UnitEvent, split),
}
PROCESS_ACTIONS: dict[str, Action] = {"process": (BatchEvent, process)}
MERGE_ACTIONS: dict[str, Action] = {
    "merge": (MergeEvent, merge),
    "record_failure": (FailureEvent, record_failure),
    "report": (ReportEvent, report),
}
#: function (image) name -> its actions
FUNCTIONS: dict[str, dict[str, Action]] = {
    "split": SPLIT_ACTIONS, "process": PROCESS_ACTIONS, "merge": MERGE_ACTIONS,
}


def dispatch(function: str, event: Any) -> dict[str, Any]:
    actions = FUNCTIONS[function]
    action = event.get("action") if isinstance(event, dict) else None
    if action not in actions:
        raise EventError(f"the {function} function has no action {action!r} "
                         f"(known: {', '.join(actions)})")
    model, step = actions[action]
    result = step(parse_event(model, event))
    log.info("%s.%s done: %s", function, action, result)
    return result


def split_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return dispatch("split", event)


def process_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return dispatch("process", event)


def merge_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return dispatch("merge", event)
