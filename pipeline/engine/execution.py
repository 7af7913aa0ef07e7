"""What the local engine's two interpreters share: the functions' names, what serves their
tasks (:class:`Invoker`), who hears of them (:data:`Listener`) and how an execution ended
(:class:`Execution`)."""

from __future__ import annotations

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
    #: events in the execution's history (Step Functions keeps at most 25,000 per execution)
    history_events: int = 0


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
