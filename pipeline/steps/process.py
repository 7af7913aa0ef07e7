"""The process step: run the op chain on a batch of haloed tiles, crop, encode for output."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.tile_codec import OutputEncoder, pack_tiles
from pipeline.core.events import BatchEvent
from pipeline.steps import layout
from pipeline.steps.common import load_plan, recorded
from pipeline.steps.evaluate import TileEvaluator


def process(event: BatchEvent) -> dict[str, Any]:
    """Each tile: read, apply the chain to the haloed pixels (with the page's statistics for
    ops that need them), crop the core, cut it into output tiles and encode them with the
    output codec, so merge only assembles bytes. With ``downsample`` the core is the tile's
    part of the smaller output page (possibly empty at its bottom or right edge)."""
    plan = load_plan(event.plan)
    with recorded(plan, "process", event.batch):
        batch = plan.batches[event.batch]
        page = plan.pages[batch.page]
        ev = TileEvaluator(plan, batch.page)
        out_tile = plan.spec.output_options.tile
        encoder = OutputEncoder(plan.spec.output_options, page.info.dtype, page.out_channels)
        def one(index: int) -> None:
            row, col = page.grid.position(index)
            pixels, origin = ev.output(row, col)
            encoded = [(origin.y0 // out_tile + oy // out_tile, origin.x0 // out_tile + ox // out_tile,
                        encoder.encode(_padded(pixels[oy:oy + out_tile, ox:ox + out_tile], out_tile)))
                       for oy in range(0, pixels.shape[0], out_tile)
                       for ox in range(0, pixels.shape[1], out_tile)]
            storage.write_bytes(layout.pack_file(plan.work, batch.page, row, col),
                                pack_tiles(encoded))

        # OpenCV and the codecs release the GIL: a Lambda with 2+ vCPUs runs tiles side by
        # side; the local engine gives each worker its share of the cores
        with ThreadPoolExecutor(tile_threads()) as pool:
            list(pool.map(one, range(batch.first, batch.last)))
    return {"job": plan.job, "tiles": batch.last - batch.first}


def tile_threads() -> int:
    """Tiles processed at once: ``TIFFPIPE_TILE_THREADS``, else the CPUs this process may use."""
    value = os.environ.get("TIFFPIPE_TILE_THREADS")
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _padded(tile: np.ndarray, size: int) -> np.ndarray:
    """A full output tile: edge tiles are zero-padded, as TIFF stores them."""
    if tile.shape[0] == size and tile.shape[1] == size:
        return tile
    full = np.zeros((size, size, *tile.shape[2:]), tile.dtype)
    full[:tile.shape[0], :tile.shape[1]] = tile
    return full
