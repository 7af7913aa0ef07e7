"""A local run's plan.json and result.json files, held in the embedded engine's memory.

A job's steps hand its plan (PlanJob to the units and the merge) and its result (the merge,
or RecordFailure, to the report) over through the work location, as Lambdas must. In a local
run whose tasks run in the engine's own process, nobody else reads them: a scanned archive
of one-page files wrote two files and a folder a job only for the work's removal at the
run's end (on S3 two PUTs), and creating a file is the dear part of a file system's work
(ext4 looks for a free inode, a network share makes a round trip). Within :func:`holding`
(the direct interpreter's run), the engine's process keeps them in memory instead:

- a plan stays here until another process needs it: the engine calls :func:`write_plan`
  before it sends a task of the job to a worker process; the job's end (its merge, or
  RecordFailure) lets it go (:func:`release`). A plan the contact sheet reads after the
  run (its steps sum thumbnails) is written, as is every file of a run that keeps every
  work file (``TIFFPIPE_KEEP_SEGMENTS=1``, which ``tiffpipe run --keep-work`` sets);
- a result stays until the report reads it (results written by workers are files).

So at most the plans of the jobs in flight are held, and the results the report gathers
anyway. The same rule as a small job's output segments
(:func:`pipeline.adapters.segments.held`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.adapters import storage
from pipeline.core.constants import KEEP_SEGMENTS_ENV
from pipeline.core.models import JobPlan

_lock = threading.Lock()
#: held plan.json files by URL
_plans: dict[str, JobPlan] = {}
#: held result.json files by URL
_results: dict[str, dict[str, Any]] = {}
#: runs holding work in this process now (:func:`holding`)
_runs = 0


@contextmanager
def holding() -> Iterator[None]:
    """Hold plan.json and result.json files in this process while a run goes on, unless
    ``TIFFPIPE_KEEP_SEGMENTS`` is 1 (every work file written); what is still held is
    dropped at the end."""
    global _runs
    if os.environ.get(KEEP_SEGMENTS_ENV) == "1":
        yield
        return
    with _lock:
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if not _runs:
                _plans.clear()
                _results.clear()


def save_plan(url: str, plan: JobPlan, may_hold: bool = True) -> None:
    """Write a job's plan, or hold it (``may_hold``: nobody reads it after the run)."""
    if may_hold and _runs:
        with _lock:
            _plans[url] = plan
        return
    storage.write_json(url, plan.to_json(), indent=None)


def held_plan(url: str) -> JobPlan | None:
    """The plan held for ``url``, if it is."""
    with _lock:
        return _plans.get(url)


def write_plan(url: Any) -> None:
    """Write the plan held for ``url`` (if any) to the work location: a task of its job is
    about to run in another process. Written first, then let go: a reader here finds it in
    one place or the other."""
    plan = held_plan(url) if isinstance(url, str) else None
    if plan is None:
        return
    storage.write_json(url, plan.to_json(), indent=None)
    release(url)


def release(url: str) -> None:
    """Let go of the plan held for ``url``: its job has ended, or it is written."""
    with _lock:
        _plans.pop(url, None)


def save_result(url: str, result: dict[str, Any]) -> None:
    """Write a job's result (result.json), or hold it for the report."""
    if _runs:
        with _lock:
            _results[url] = result
        return
    storage.write_json(url, result, indent=None)


def load_result(url: str) -> dict[str, Any]:
    """A job's result: held here, else read (``WorkMissingError`` if there is none)."""
    with _lock:
        result = _results.get(url)
    if result is not None:
        return result
    doc: dict[str, Any] = storage.read_json(url)
    return doc
