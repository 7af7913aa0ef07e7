"""The split step: cut one unit (a band of a page) into haloed tiles in the work location."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.adapters import storage
from pipeline.adapters.tiff_read import PageReader, get_page, open_tiff
from pipeline.adapters.tile_codec import encode_work_tile
from pipeline.core.events import UnitEvent
from pipeline.steps import layout
from pipeline.steps.common import load_plan, recorded

#: parallel tile writes (zstd and S3 PUTs release the GIL)
WRITE_THREADS = 4


def split(event: UnitEvent) -> dict[str, Any]:
    """Sweep the unit's band downwards, a row of tiles at a time, storing each haloed tile.

    The page reader decodes each input segment once and forgets rows the sweep has passed,
    so memory holds about one row of tiles (plus halo and one segment row), whatever the
    band's height.
    """
    plan = load_plan(event.plan)
    with recorded(plan, "split", event.unit):
        unit = plan.units[event.unit]
        page = plan.pages[unit.page]
        grid, url = page.grid, plan.spec.input
        with open_tiff(url) as tf, ThreadPoolExecutor(WRITE_THREADS) as pool:
            reader = PageReader(tf, get_page(tf, url, page.info.index), url, page.info.index,
                                keep_palette=page.info.photometric == "palette")
            pending: deque[Future[None]] = deque()
            for row in range(unit.row0, unit.row1):
                for col in range(unit.col0, unit.col1):
                    tile = reader.read(grid.haloed(row, col))
                    pending.append(pool.submit(_store, plan.work, unit.page, row, col, tile))
                    while len(pending) > 2 * WRITE_THREADS:  # bounded tiles in flight
                        pending.popleft().result()
                reader.forget_above(grid.core(row + 1, 0).y0 - grid.halo
                                    if row + 1 < grid.rows else grid.height)
            while pending:
                pending.popleft().result()
    return {"job": plan.job, "tiles": (unit.row1 - unit.row0) * (unit.col1 - unit.col0)}


def _store(work: str, page: int, row: int, col: int, tile: Any) -> None:
    storage.write_bytes(layout.tile_file(work, page, row, col), encode_work_tile(tile))
