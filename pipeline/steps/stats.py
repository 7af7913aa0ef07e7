"""The statistics steps: what ops that need the whole page (equalize_hist, otsu_threshold,
normalize, percentile_stretch, canny) gather between split and process.

A job whose chain holds k such ops runs k rounds, in chain order (the state machine loops:
Stats -> ReduceStats -> Stats ... -> Process):

- ``stats`` (a Distributed Map over the process batches): for each tile of the batch, run
  the ops before the round's op (with the states of earlier rounds) and gather partial
  statistics of the core: a histogram or min/max, written as one small file per batch; for a
  canny, the tile's labelled weak edges (a work file per tile, for process) and the labels
  along its four sides (in the batch file).
- ``reduce_stats`` (one task): per page, add the batches' statistics up and store the op's
  state (a lookup table, a threshold, a scale and shift), or for a canny join the edge
  labels across tile borders, as a tree whose levels of several nodes run in the
  ``ReduceLevel`` Map (``reduce_node``; pipeline.steps.canny_reduce), and store which weak
  components reach a strong edge.

``plan_job`` wraps the planning step: it also imports the job's custom functions (so a
missing one fails the job before any work) and tells the state machine whether to run rounds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.tile_codec import encode_work_tile
from pipeline.core import canny as canny_mod
from pipeline.core.chain import stats_rounds
from pipeline.core.events import (
    EventError,
    JobEvent,
    ReduceEvent,
    StatsEvent,
    StatsRound,
    to_payload,
)
from pipeline.core.models import JobPlan
from pipeline.core.stats import combine
from pipeline.steps import layout, planning, stopping
from pipeline.steps.common import explained_by_records, load_job, load_plan, recorded
from pipeline.steps.evaluate import TileEvaluator, load_part, save_npz

#: parallel reads of the batches' partial statistics (S3 GETs)
READ_THREADS = 16
#: the statistics a reduce holds at once at most: ``READ_THREADS`` batches' parts (read or
#: being read) and their sum (the one before and the new one); pipeline.estimate.memory
#: counts them
HELD_PARTS = READ_THREADS + 2


def plan_job(event: JobEvent) -> dict[str, Any]:
    """PlanJob: import the custom functions, plan the job, and add the statistics rounds the
    state machine runs (``stats``: the first round and whether there is one). A job whose
    output exists and whose ``if_exists`` is not ``overwrite`` is skipped (its result
    written, nothing planned) or fails here, before any work."""
    job = load_job(event.run, event.job)
    doc, spec = job
    if planning.output_exists(spec):
        return planning.skip_job(event.job, doc, spec)
    result = planning.write_job_plan(event, job)
    rounds = stats_rounds(load_plan(result["plan"]))
    return {**result, "stats": to_payload(StatsRound.next_round(0, rounds)), "skipped": False}


def stats(event: StatsEvent) -> dict[str, Any]:
    """Partial statistics of one batch for round ``event.round``."""
    plan = load_plan(event.plan)
    with recorded(plan, "stats", event.batch):
        batch = plan.batches[event.batch]
        ev = TileEvaluator(plan, batch.page)
        position = _position(ev, event.round)
        call = ev.chain[position]
        folded: dict[str, np.ndarray] = {}  # (one tile's part at a time: see _fold)
        sides: dict[str, np.ndarray] = {}
        try:
            for index in range(batch.first, batch.last):
                stopping.check()
                row, col = ev.page.grid.position(index)
                if call.op.kind == "canny":
                    labels = ev.canny_labels(row, col, position)
                    storage.write_bytes(layout.labels_file(plan.work, event.round, batch.page, row,
                                                           col), encode_work_tile(labels))
                    for side, values in canny_mod.borders(labels).items():
                        sides[layout.border_key(row, col, side)] = values
                else:
                    arr, rect = ev.value(row, col, position)
                    where = ev.core(row, col, position)
                    core = ev.crop(arr, rect, where)
                    if core.size:  # (on a masked page, of its valid pixels: ev.params)
                        folded = combine([folded, call.op.stats.partial(
                            core, ev.params(position, where))])
        finally:
            ev.close()  # (the mask reader a downsample before the round opened)
        save_npz(layout.stats_part_file(plan.work, event.round, event.batch),
                 sides if call.op.kind == "canny" else folded)
    return {"job": plan.job, "tiles": batch.last - batch.first}


def reduce_stats(event: ReduceEvent) -> dict[str, Any]:
    """One page's statistics from its batches' partial ones; the next round, if any. A canny
    round reduces as a tree (pipeline.steps.canny_reduce): the result then names the next
    tree level's nodes (``tree``) until the round is done."""
    plan = load_plan(event.plan)
    with explained_by_records(plan.work):  # a failed stats batch: the job fails with its error
        return _reduce(plan, event)


def _reduce(plan: JobPlan, event: ReduceEvent) -> dict[str, Any]:
    rounds = stats_rounds(plan)
    if not 0 <= event.round < rounds:
        raise EventError(f"reduce_stats: round {event.round} of a job with {rounds} round(s)")
    first = TileEvaluator(plan, 0)
    if first.chain[_position(first, event.round)].op.kind == "canny":
        from pipeline.steps import canny_reduce  # canny rounds only: not in every run's start

        return canny_reduce.reduce_round(plan, event, rounds)
    parts = [(page, layout.stats_part_file(plan.work, event.round, b))
             for page in range(len(plan.pages)) for b in plan.batches_of(page)]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for page, folded in _folded(pool, parts, len(plan.pages)):
            ev = TileEvaluator(plan, page)
            position = _position(ev, event.round)
            call = ev.chain[position]
            save_npz(layout.stats_file(plan.work, event.round, page),
                     call.op.stats.finish(folded, call.params, ev.layout.dtypes[position]))
    return StatsRound.next_round(event.round + 1, rounds).reply(plan.job)


def _folded(pool: ThreadPoolExecutor, parts: list[tuple[int, str]], pages: int
            ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Each page's batches' partial statistics (``parts``: (page, url) in page order, each
    page's batches in theirs) reduced in their order (as one :func:`combine` of them), page
    by page: read ``READ_THREADS`` at a time across the pages (a job of 1,000 one-batch
    pages is not 1,000 GETs one after the other) and added up as they come, so a reduce
    holds that many parts and a sum, not every batch's (10,000 batches of per-band
    histograms of 16 bands of 16 bits are 80 GiB; :data:`HELD_PARTS`)."""
    ahead = iter(parts)
    pending: deque[tuple[int, Future[dict[str, np.ndarray]]]] = deque(
        (page, pool.submit(_read_part, url)) for page, url in islice(ahead, READ_THREADS))
    current, folded = 0, {}
    while pending:
        page, part = pending.popleft()
        for nxt, url in islice(ahead, 1):
            pending.append((nxt, pool.submit(_read_part, url)))
        while current < page:  # (the pages before are whole)
            yield current, folded
            current, folded = current + 1, {}
        folded = combine([folded, part.result()])
    for page in range(current, pages):
        yield page, folded
        folded = {}


def _position(ev: TileEvaluator, round_: int) -> int:
    rounds = ev.layout.rounds
    if not 0 <= round_ < len(rounds):
        raise EventError(f"statistics round {round_} of a chain with {len(rounds)} round(s)")
    return rounds[round_]


def _read_part(url: str) -> dict[str, np.ndarray]:
    return load_part(url, "the statistics of a batch are missing (did its stats task fail?)")
