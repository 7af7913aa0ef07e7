"""The split step: cut one unit (a band of a page) into haloed tiles in the work location."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.adapters import storage
from pipeline.adapters.tiff_read import get_page, open_tiff, read_window
from pipeline.adapters.tile_codec import encode_work_tile
from pipeline.core.events import UnitEvent
from pipeline.steps import layout
from pipeline.steps.common import load_plan, recorded

#: parallel tile writes (zstd and S3 PUTs release the GIL)
WRITE_THREADS = 4


def split(event: UnitEvent) -> dict[str, Any]:
    """Read the unit's haloed band once (each segment decoded once) and store its tiles."""
    plan = load_plan(event.plan)
    with recorded(plan, "split", event.unit):
        unit = plan.units[event.unit]
        page = plan.pages[unit.page]
        grid, url = page.grid, plan.spec.input
        band = grid.expand(grid.span(unit.row0, unit.row1, unit.col0, unit.col1))
        with open_tiff(url) as tf:
            tiff_page = get_page(tf, url, page.info.index)
            pixels = read_window(tf, tiff_page, url, page.info.index, band)

        def store(pos: tuple[int, int]) -> None:
            r = grid.haloed(*pos).relative_to(band)
            tile = pixels[r.y0:r.y1, r.x0:r.x1]
            storage.write_bytes(layout.tile_file(plan.work, unit.page, *pos),
                                encode_work_tile(tile))

        positions = [(r, c) for r in range(unit.row0, unit.row1)
                     for c in range(unit.col0, unit.col1)]
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            list(pool.map(store, positions))
    return {"job": plan.job, "tiles": len(positions)}
