"""A request that the tasks running in this process stop: a stopped local run
(:meth:`pipeline.engine.local.LocalEngine.abort`, on Ctrl-C or SIGTERM).

The steps' tile loops call :func:`check` before each tile, so a task stops within the tiles
it has in hand (a few per thread), and unwinds through its own clean-up (a temporary output
removed, an upload aborted), as on any error. Cooperative: nothing is raised into a thread
from outside, so no lock or ``finally`` of a library is ever cut short.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


class TaskStopped(BaseException):
    """A task ended by a stop request: a BaseException, so no step takes it for its job's
    error (nothing catches it but the task's runner, which reports the run's stop)."""


def request() -> None:
    """Stop the tasks of this process (thread-safe; they notice at their next tile)."""
    _requested.set()


def clear() -> None:
    """A new run starts: its tasks are not stopped."""
    _requested.clear()


def check() -> None:
    """Raise :class:`TaskStopped` once a stop is requested (a tile loop, before each tile)."""
    if _requested.is_set():
        raise TaskStopped("the run was stopped")
