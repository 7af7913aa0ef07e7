"""The split step: cut one unit (a band of a page) into haloed tiles in the work location."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import Any, NamedTuple

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.tiff_read import PageReader, check_unchanged, kept_tiff, planned_page
from pipeline.adapters.tile_codec import encode_work_tile
from pipeline.core.chain import page_geometry
from pipeline.core.events import EventError, UnitEvent
from pipeline.core.grid import SplitUnit, columns_still_read
from pipeline.core.models import JobPlan
from pipeline.errors import CorruptTiffError
from pipeline.steps import layout, stopping
from pipeline.steps.common import load_plan, recorded
from pipeline.steps.masks import write_unit_mask

#: parallel tile writes (zstd and S3 PUTs release the GIL)
WRITE_THREADS = 4
#: tiles whose input segments are decoded ahead of the one being read (see haloed_tiles)
DECODE_AHEAD = 2


def split(event: UnitEvent) -> dict[str, Any]:
    """Store every haloed tile of the unit's band as a work tile, for the process batches."""
    plan = load_plan(event.plan)
    with recorded(plan, "split", event.unit):  # (the job's error: RecordFailure reads it)
        if plan.fused:  # its units are processed where they are read: Merge finds no batch
            raise EventError(
                f"job {plan.job} ({plan.spec.input}) was planned fused (PlanJob's "
                "$.planned.fused or $.planned.single is true: it runs in ProcessJob or "
                "ProcessUnits, which write the segments Merge reads), but the state "
                "machine's definition routed it down the Split path: check the Choice state "
                "that routes a planned job (Fused in the shipped definition) and what "
                "changes $.planned before it; a rerun with the same definition fails the "
                "same way")
        unit = plan.units[event.unit]

        def store(row: int, col: int, tile: np.ndarray) -> None:
            storage.write_bytes(layout.tile_file(plan.work, unit.page, row, col),
                                encode_work_tile(tile))

        sweep_unit(plan, unit, store, WRITE_THREADS)
        write_unit_mask(plan, event.unit)  # (the page's internal mask: its own segment)
    return {"job": plan.job, "tiles": unit.tiles}


class SharedPools(NamedTuple):
    """Thread pools the units of one invocation share (a ProcessJob's units side by side):
    each unit's tiles go to ``tiles`` and its segments' decoding to ``decoder``, instead of
    pools of its own. Units side by side then keep as many threads busy as there are cores,
    not that many each (more threads than cores only hand the GIL around: with pools of
    their own, a job of three 576 x 576 pages to deflate took 12-21% longer in
    ``bench/ab.py`` runs), and a unit left alone at the end still has all of them."""

    tiles: Executor
    decoder: Executor


def sweep_unit(plan: JobPlan, unit: SplitUnit,
               handle: Callable[[int, int, np.ndarray], None], threads: int,
               shared: SharedPools | None = None) -> None:
    """Read the unit's haloed tiles in order and call ``handle(row, col, tile)`` for each, in
    ``threads`` threads (the ``shared`` pools' if given), with at most ``2 * threads`` tiles
    read ahead of them. A unit of one tile (a small page) is read, decoded and handled in
    this thread: threads would only hand it on (the engine runs such units side by side
    instead)."""
    if unit.tiles == 1:
        for row, col, tile in haloed_tiles(plan, unit):
            handle(row, col, tile)
        return
    with nullcontext(shared.tiles) if shared else ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[None]] = deque()
        try:
            for row, col, tile in haloed_tiles(plan, unit, threads,
                                               shared.decoder if shared else None):
                pending.append(pool.submit(handle, row, col, tile))
                while len(pending) > 2 * threads:  # bounded tiles in flight
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:  # on an error too, the unit's tiles in flight end before it does (a shared
            wait(pending)  # pool outlives it: they would else write to what it closes)


def haloed_tiles(plan: JobPlan, unit: SplitUnit, decode_threads: int = 0,
                 decoder: Executor | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """The unit's haloed tiles, row by row: ``(row, col, pixels)``; each tile's pixels are
    the input window it reads (pipeline.core.geometry: the grid's haloed tile unless the
    chain has geometric ops), the tiles in the order a downward sweep of the input meets
    them (:meth:`PageGeometry.order`).

    The page reader decodes each input segment once and forgets rows the sweep has passed,
    and along a band the columns it has passed, so memory holds about one row of tiles
    (plus halo and one segment row), whatever the band's height, and the next row's
    segments decoded ahead do not double it. With ``decode_threads``, the segments of the
    next :data:`DECODE_AHEAD` tiles are decoded in that many threads while the caller works
    on the tiles before them, instead of one by one in this thread as each tile is read:
    decoding is about half the CPU of a cheap chain (a blur to JPEG), and done serially here
    it starved the tile threads. A ``decoder`` given (:class:`SharedPools`) decodes them
    instead of threads of this sweep's own.
    """
    page = plan.pages[unit.page]
    url = plan.spec.input
    geo = page_geometry(plan, unit.page)
    positions = geo.order(unit)
    reads = [geo.tile_read(*pos) for pos in positions]
    still_read = columns_still_read(reads)
    own = decoder is None and decode_threads > 0
    with kept_tiff(url, plan.input_version) as tf, ThreadPoolExecutor(decode_threads) if own else \
            nullcontext(decoder) as threads:
        try:
            window = geo.unit_read(unit)
            reader = PageReader(tf, planned_page(tf, url, page.info), url, page.info.index,
                                keep_palette=page.info.photometric == "palette", decoder=threads,
                                columns=(window.x0, window.x1))
            for i, (row, col) in enumerate(positions):
                stopping.check()
                for ahead in reads[i:i + DECODE_AHEAD + 1]:  # pending ones are skipped
                    reader.prefetch(ahead)
                yield row, col, reader.read(reads[i])
                # the sweep goes down the input: the rows above the next tile's are done
                if i + 1 < len(reads) and reads[i + 1].y0 > reads[i].y0:
                    reader.forget_above(reads[i + 1].y0)
                elif still_read[i] is not None:  # ... and along a band, the columns passed
                    reader.forget_left(*still_read[i])
        except CorruptTiffError:  # damaged, or written to while read: InputChangedError then
            check_unchanged(tf, url, plan.input_version)
            raise
        # every read done: the file must still be the version read (its tiles are processed
        # and their segment kept only after this, so an input written to in place while the
        # unit read it never gives an output of both versions)
        check_unchanged(tf, url, plan.input_version)
