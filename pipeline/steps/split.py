"""The split step: cut one unit (a band of a page) into haloed tiles in the work location."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.tiff_read import PageReader, get_page, open_tiff
from pipeline.adapters.tile_codec import encode_work_tile
from pipeline.core.events import UnitEvent
from pipeline.core.grid import SplitUnit
from pipeline.core.models import JobPlan
from pipeline.steps import layout
from pipeline.steps.common import load_plan, recorded

#: parallel tile writes (zstd and S3 PUTs release the GIL)
WRITE_THREADS = 4


def split(event: UnitEvent) -> dict[str, Any]:
    """Store every haloed tile of the unit's band as a work tile, for the process batches."""
    plan = load_plan(event.plan)
    with recorded(plan, "split", event.unit):
        unit = plan.units[event.unit]

        def store(row: int, col: int, tile: np.ndarray) -> None:
            storage.write_bytes(layout.tile_file(plan.work, unit.page, row, col),
                                encode_work_tile(tile))

        sweep_unit(plan, unit, store, WRITE_THREADS)
    return {"job": plan.job, "tiles": unit.tiles}


def sweep_unit(plan: JobPlan, unit: SplitUnit,
               handle: Callable[[int, int, np.ndarray], None], threads: int) -> None:
    """Read the unit's haloed tiles in order and call ``handle(row, col, tile)`` for each, in
    ``threads`` threads, with at most ``2 * threads`` tiles read ahead of them."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[None]] = deque()
        for row, col, tile in haloed_tiles(plan, unit):
            pending.append(pool.submit(handle, row, col, tile))
            while len(pending) > 2 * threads:  # bounded tiles in flight
                pending.popleft().result()
        while pending:
            pending.popleft().result()


def haloed_tiles(plan: JobPlan, unit: SplitUnit) -> Iterator[tuple[int, int, np.ndarray]]:
    """The unit's haloed tiles, row by row: ``(row, col, pixels)``.

    The page reader decodes each input segment once and forgets rows the sweep has passed,
    so memory holds about one row of tiles (plus halo and one segment row), whatever the
    band's height.
    """
    page = plan.pages[unit.page]
    grid, url = page.grid, plan.spec.input
    with open_tiff(url) as tf:
        reader = PageReader(tf, get_page(tf, url, page.info.index), url, page.info.index,
                            keep_palette=page.info.photometric == "palette")
        for row in range(unit.row0, unit.row1):
            for col in range(unit.col0, unit.col1):
                yield row, col, reader.read(grid.haloed(row, col))
            reader.forget_above(grid.core(row + 1, 0).y0 - grid.halo
                                if row + 1 < grid.rows else grid.height)
