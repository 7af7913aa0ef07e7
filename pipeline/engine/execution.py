"""What the local engine's two interpreters share: the functions' names, what serves their
tasks (:class:`Invoker`), who hears of them (:data:`Listener`) and how an execution ended
(:class:`Execution`)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.core.constants import FUNCTIONS
from pipeline.core.record import record
from pipeline.errors import EngineError


class Invoker(Protocol):
    """What serves an invoke: :class:`~pipeline.engine.workers.WorkerPool`, or an
    in-process stand-in in tests."""

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]: ...


#: called after every task: (function, event, ok, payload)
Listener = Callable[[str, dict[str, Any], bool, dict[str, Any]], None]


@record
class Execution:
    """How an execution ended."""

    status: str  # SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    seconds: float
    #: events in the execution's own history, its Map items' child executions' not
    #: included (Step Functions keeps at most 25,000 per execution); on the direct
    #: interpreter, counted only when its history is kept (else 0)
    history_events: int = 0
    #: the items of its top-level Map (the ``Jobs`` map: one per job) whose child execution
    #: failed, though the Map tolerated it, or met an error a Catch took (``caught_by``: the
    #: Catch's Next): dicts of ``map``, ``index``, ``value`` (the item: a job's index),
    #: ``state`` (the state that failed), ``error`` and ``cause``; the direct interpreter's
    failures: tuple[dict[str, Any], ...] = ()
    #: the events of the execution, when asked for (:class:`History`), else None
    history: list[dict[str, Any]] | None = None


class History:
    """A local execution's history (asked for by ``tiffpipe run --keep-work``): its events
    as Step Functions' GetExecutionHistory names them (``StateEntered``, ``StateExited``,
    ``TaskScheduled``, ``TaskSucceeded``, ``TaskFailed``, ``ExecutionFailed``; and
    ``StateCaught``: a Catch took a state's error, with its ``next`` state), each with the
    ``execution`` it is of (``""``: the run's; ``Jobs/3``: the child execution of job 3;
    ``Jobs/3/Split/0``: of that job's first unit), its ``state``, and a failure's ``error``
    and ``cause``; its ``id`` is its place in :attr:`events` (1, 2, ...) and its
    ``timestamp`` ISO 8601 UTC (:func:`iso_timestamp`). Added to from the Map items'
    threads: each event numbered as it is appended, under a lock."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, execution: str, state: str | None, **details: Any) -> None:
        event = {"id": 0, "timestamp": iso_timestamp(datetime.datetime.now(datetime.UTC)),
                 "type": kind, "execution": execution, "state": state, **details}
        with self._lock:
            event["id"] = len(self.events) + 1
            self.events.append(event)


def iso_timestamp(moment: datetime.datetime) -> str:
    """``moment`` as an execution history's events give it: ISO 8601 in UTC to the
    millisecond, with a ``Z`` (``2026-12-07T19:45:00.123Z``), as AWS writes it; a naive
    ``moment`` is taken as local time."""
    utc = moment.astimezone(datetime.UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def function_name(function: str) -> str:
    """The engine's name of a function (``split``, ``process``, ``merge``)."""
    return f"tiffpipe-local-{function}"


def function_of(name: str) -> str:
    """``split`` (``process``, ``merge``) from a function's name or ARN, whatever its prefix
    and with or without a version (``...:function:tiffpipe-prod-split:3``, as a deployed
    stack's definition names them; ``tiffpipe-local-split``, the engine's own)."""
    function = name.split(":function:", 1)[-1].split(":", 1)[0].rsplit("-", 1)[-1]
    if function not in FUNCTIONS:
        raise EngineError(f"no local function {name!r}")
    return function
