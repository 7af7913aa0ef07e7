"""The process steps: run the op chain on haloed tiles, crop, encode for output.

``process`` takes a batch of work tiles that split stored; ``process_unit`` (a fused unit)
reads a split unit's tiles straight from the input and processes them as it goes, so no work
tile is written or read. The plan picks one or the other for a job.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.tile_codec import OutputEncoder, pack_tiles
from pipeline.core.events import BatchEvent, UnitEvent
from pipeline.core.models import JobPlan
from pipeline.steps import layout
from pipeline.steps.common import load_plan, recorded, tile_threads
from pipeline.steps.evaluate import TileEvaluator
from pipeline.steps.split import sweep_unit


def process(event: BatchEvent) -> dict[str, Any]:
    """Each tile of the batch: read its work tile, then :class:`TileOutput`."""
    plan = load_plan(event.plan)
    with recorded(plan, "process", event.batch):
        batch = plan.batches[event.batch]
        out = TileOutput(plan, batch.page)

        def one(index: int) -> None:
            out.write(*plan.pages[batch.page].grid.position(index))

        # OpenCV and the codecs release the GIL: a Lambda with 2+ vCPUs runs tiles side by
        # side; the local engine sets how many for its workers
        with ThreadPoolExecutor(tile_threads()) as pool:
            list(pool.map(one, range(batch.first, batch.last)))
    return {"job": plan.job, "tiles": batch.last - batch.first}


def process_unit(event: UnitEvent) -> dict[str, Any]:
    """A fused unit: sweep the unit's band as split does and process each haloed tile as it
    is read (tiles in :func:`tile_threads` threads, a few read ahead), so memory stays about
    a row of tiles and the pixels never go through the work location."""
    plan = load_plan(event.plan)
    with recorded(plan, "process_unit", event.unit):
        unit = plan.units[event.unit]
        out = TileOutput(plan, unit.page)
        sweep_unit(plan, unit, out.write, tile_threads())
    return {"job": plan.job, "tiles": unit.tiles}


class TileOutput:
    """One page's tiles to merge's packs: apply the chain to the haloed pixels (with the
    page's statistics for ops that need them), crop the core, cut it into output tiles and
    encode them with the output codec, so merge only assembles bytes. With ``downsample`` the
    core is the tile's part of the smaller output page (possibly empty at its bottom or right
    edge). Thread-safe: each call works on its own tile."""

    def __init__(self, plan: JobPlan, page: int):
        self.plan, self.page = plan, page
        self.evaluator = TileEvaluator(plan, page)
        self.out_tile = plan.spec.output_options.tile
        info = plan.pages[page]
        self.encoder = OutputEncoder(plan.spec.output_options, info.info.dtype,
                                     info.out_channels)

    def write(self, row: int, col: int, haloed: np.ndarray | None = None) -> None:
        """Process tile (row, col), from ``haloed`` pixels or else its stored work tile."""
        pixels, origin = self.evaluator.output(row, col, haloed)
        t = self.out_tile
        encoded = [(origin.y0 // t + oy // t, origin.x0 // t + ox // t,
                    self.encoder.encode(_padded(pixels[oy:oy + t, ox:ox + t], t)))
                   for oy in range(0, pixels.shape[0], t)
                   for ox in range(0, pixels.shape[1], t)]
        storage.write_bytes(layout.pack_file(self.plan.work, self.page, row, col),
                            pack_tiles(encoded))


def _padded(tile: np.ndarray, size: int) -> np.ndarray:
    """A full output tile: edge tiles are zero-padded, as TIFF stores them."""
    if tile.shape[0] == size and tile.shape[1] == size:
        return tile
    full = np.zeros((size, size, *tile.shape[2:]), tile.dtype)
    full[:tile.shape[0], :tile.shape[1]] = tile
    return full
