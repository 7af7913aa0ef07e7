"""ProcessJob: a fused job of one unit, or of a few small ones
(:func:`pipeline.core.plan.single_task`), in one invocation, its units and then its merge, as
the ProcessUnits Map and the Merge task would run them, to the same output, without the Map
and the second invocation.

A scanned archive of one-page files is thousands of such jobs; one 512 x 512 page's unit
takes a few milliseconds, about what a task's hand-over costs (on AWS a Distributed Map
run and its child execution, and a Lambda invocation; on the embedded engine a task and a
process switch). When the output is small (:func:`pipeline.core.plan.held_output`), the
units' segments and indexes stay in memory (:func:`pipeline.adapters.segments.held`): no work
file is written or read back, and the output is composed from memory (on S3: uploaded, not
copied from a segment object), unless ``TIFFPIPE_KEEP_SEGMENTS`` is 1 (``tiffpipe run
--keep-work`` sets it: the kept work then holds every job's segment).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

from pipeline.adapters.segments import held
from pipeline.core.constants import KEEP_SEGMENTS_ENV
from pipeline.core.events import JobPlanEvent, UnitEvent
from pipeline.core.plan import held_output
from pipeline.steps.common import load_plan, tile_threads
from pipeline.steps.merge import publish
from pipeline.steps.process import process_unit
from pipeline.steps.split import SharedPools


def process_job(event: JobPlanEvent) -> dict[str, Any]:
    """The job's units, then its output published (a failed unit raises its own error:
    nothing is published)."""
    plan = load_plan(event.plan)
    hold = held_output(plan) and os.environ.get(KEEP_SEGMENTS_ENV) != "1"
    with held(plan.work) if hold else nullcontext():
        tiles = _units(event.plan, len(plan.units))
        merged = publish(plan)
    return {**merged, "tiles": tiles}


def _units(plan_url: str, count: int) -> int:
    """Process units 0 .. count - 1 of the plan: side by side in :func:`tile_threads` threads
    (the engine's Map ran such units side by side too), their tiles worked on and their
    input decoded by one pool of as many threads each (:class:`SharedPools`), the first
    error raised once the others have stopped. Their tiles in all."""
    if count == 1:
        return int(process_unit(UnitEvent(plan_url, 0), in_task=True)["tiles"])
    threads = tile_threads()
    with ThreadPoolExecutor(min(count, threads), thread_name_prefix="tiffpipe-unit") as pool, \
            ThreadPoolExecutor(threads, thread_name_prefix="tiffpipe-tile") as tiles, \
            ThreadPoolExecutor(threads, thread_name_prefix="tiffpipe-decode") as decoder:
        shared = SharedPools(tiles, decoder)
        done = list(pool.map(lambda unit: process_unit(UnitEvent(plan_url, unit), shared,
                                                       in_task=True), range(count)))
    return sum(int(d["tiles"]) for d in done)
