"""The Lambda entry points: one per container image, each dispatching on ``action``.

A handler parses the event into its typed model, calls one step, and returns the step's
small result as its typed model (``pipeline.core.events.RESULTS``), serialised. Exceptions
propagate: Lambda reports the class name as ``errorType``,
which is what the state machine's Retry/Catch match on; running out of memory, threads or
open files is raised as ``OutOfMemoryError`` or ``TooManyOpenFilesError`` naming the task
(:func:`pipeline.errors.exhausted`). The handlers do not know whether
AWS or the embedded engine called them.

Steps are imported when first used, so each image imports only what its own step needs
(the merge image carries no OpenCV).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from pipeline.core import events
from pipeline.core.events import EventError, parse_event, to_payload
from pipeline.errors import exhausted

log = logging.getLogger("tiffpipe")

#: function (image) -> action -> (event class, "module:function" of the step)
FUNCTIONS: dict[str, dict[str, tuple[type, str]]] = {
    "split": {
        "plan_run": (events.RunEvent, "pipeline.steps.planning:plan_run"),
        "split": (events.UnitEvent, "pipeline.steps.split:split"),
    },
    "process": {
        # planning.write_job_plan, plus the custom functions' import check and the stats
        # rounds; here, where the output may be written and the custom functions run: its
        # check of the output is a test upload, which needs what writing it needs
        "plan_job": (events.JobEvent, "pipeline.steps.stats:plan_job"),
        "process": (events.BatchEvent, "pipeline.steps.process:process"),
        # a fused unit: split and process in one invocation (the plan says when)
        "process_unit": (events.UnitEvent, "pipeline.steps.process:process_unit"),
        # a small fused job, whole: its units, then its merge
        "process_job": (events.JobPlanEvent, "pipeline.steps.single:process_job"),
        # a level unit of a job that is not fused: its region's pyramid levels
        "build_levels": (events.UnitEvent, "pipeline.steps.unit_levels:build_levels"),
        "stats": (events.StatsEvent, "pipeline.steps.stats:stats"),
        "reduce_stats": (events.ReduceEvent, "pipeline.steps.stats:reduce_stats"),
        # one node of a canny round's tree reduce (a level with several nodes)
        "reduce_node": (events.NodeEvent, "pipeline.steps.canny_reduce:reduce_node"),
    },
    "merge": {
        "merge": (events.MergeEvent, "pipeline.steps.merge:merge"),
        "record_failure": (events.FailureEvent, "pipeline.steps.report:record_failure"),
        "report": (events.ReportEvent, "pipeline.steps.report:report"),
    },
}


def dispatch(function: str, event: Any) -> dict[str, Any]:
    actions = FUNCTIONS[function]
    action = event.get("action") if isinstance(event, dict) else None
    if action not in actions:
        raise EventError(f"the {function} function has no action {action!r} "
                         f"(known: {', '.join(actions)})")
    model, target = actions[action]
    module, name = target.split(":")
    step = getattr(importlib.import_module(module), name)
    try:
        answer = step(parse_event(model, event))
    except Exception as exc:
        # out of memory, threads or open files: Lambda would report a bare MemoryError or
        # "can't start new thread"; named so, with the task, its input and page, and what to
        # do on Lambda (the local engine's workers name it the same way)
        named = exhausted(exc)
        if named is None or named is exc:
            raise
        from pipeline.steps.common import task_where  # (imported by every step already)

        raise exhausted(exc, task_where(function, event)) from exc
    result = serialised(action, answer)
    log.info("%s.%s done: %s", function, action, result)
    return result


def serialised(action: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The step's answer as its action's result model (``events.RESULTS``), serialised: a
    field missing or extra is an EventError here rather than a failed state downstream."""
    model = events.RESULTS.get(action)
    if model is None:  # tests/test_contract.py requires a model for every action
        return answer
    try:
        return to_payload(parse_event(model, answer))
    except EventError as exc:
        raise EventError(f"the {action} step returned a result that is not a {model.__name__} "
                         f"(pipeline/core/events.py): {exc}") from exc


def preload(function: str) -> None:
    """Import the step modules of ``function``'s actions now: a Lambda image calls this in its
    init phase, so imports are paid there and the image's build check proves they work."""
    for _model, target in FUNCTIONS[function].values():
        importlib.import_module(target.partition(":")[0])


def split_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return dispatch("split", event)


def process_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return dispatch("process", event)


def merge_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return dispatch("merge", event)
