"""The merge step: assemble a job's encoded tiles into the output TIFF and publish it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from math import ceil
from typing import Any

import numpy as np
import tifffile

from pipeline.adapters import storage
from pipeline.adapters.metadata import output_tags
from pipeline.adapters.tile_codec import OutputEncoder, unpack_tiles
from pipeline.core.events import MergeEvent
from pipeline.core.models import JobPlan, PagePlan
from pipeline.steps import layout
from pipeline.steps.common import load_plan, raise_recorded

#: parallel reads of one row of tile packs (S3 GETs)
READ_THREADS = 8
#: classic TIFF offsets are 32-bit: above this many raw bytes, write a BigTIFF
BIGTIFF_ABOVE = 2**31


def merge(event: MergeEvent) -> dict[str, Any]:
    """Write every page's tiles, in page order, to a temporary file; publish it in one step.

    Memory is bounded by one row of processing tiles' encoded bytes, never by the page.
    """
    plan = load_plan(event.plan)
    raise_recorded(plan.work)  # a failed batch fails the job with its own error
    spec = plan.spec
    raw = sum(p.out_grid.height * p.out_grid.width * p.out_channels
              * np.dtype(p.info.dtype).itemsize
              for p in plan.pages)
    tmp = storage.temp_output_path(spec.output)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=raw > BIGTIFF_ABOVE) as writer:
            for i, page in enumerate(plan.pages):
                _write_page(writer, plan, i, page)
        size = os.path.getsize(tmp)
        storage.publish_file(tmp, spec.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    finished = time.time()
    result = {
        "job": plan.job, "status": "SUCCEEDED", "input": spec.input, "output": spec.output,
        "pages": len(plan.pages), "megapixels": round(plan.megapixels, 3), "tiles": plan.tiles,
        "output_bytes": size, "started_at": plan.started_at, "finished_at": finished,
        "seconds": round(finished - plan.started_at, 3),
    }
    storage.write_json(layout.result_file(plan.work), result)
    return {"job": plan.job, "output": spec.output, "output_bytes": size}


def _write_page(writer: tifffile.TiffWriter, plan: JobPlan, index: int, page: PagePlan) -> None:
    options = plan.spec.output_options
    channels = page.out_channels
    encoder = OutputEncoder(options, page.info.dtype, channels)
    shape = (page.out_grid.height, page.out_grid.width) + ((channels,) if channels > 1 else ())
    # photometric, extra samples, software and the input's carried tags (resolution, ICC, ...)
    tags = output_tags(page.info, shape[0], shape[1], channels)
    writer.write(
        _tiles(plan, index, page), shape=shape, dtype=page.info.dtype,
        tile=(options.tile, options.tile), planarconfig="contig" if channels > 1 else None,
        **tags, **encoder.writer_kwargs())


def _tiles(plan: JobPlan, index: int, page: PagePlan) -> Iterator[bytes]:
    """The page's encoded output tiles in row-major order, one processing row in memory."""
    grid, out = page.out_grid, plan.spec.output_options.tile  # (downsample: a smaller page)
    per = grid.tile // out  # output tiles per processing tile side
    rows, cols = ceil(grid.height / out), ceil(grid.width / out)

    def load_row(prow: int) -> list[dict[tuple[int, int], bytes]]:
        urls = [layout.pack_file(plan.work, index, prow, pc) for pc in range(grid.cols)]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            return list(pool.map(lambda u: unpack_tiles(storage.read_bytes(u), u), urls))

    packs: list[dict[tuple[int, int], bytes]] = []
    for orow in range(rows):
        if orow % per == 0:
            packs = load_row(orow // per)
        for ocol in range(cols):
            yield packs[ocol // per][(orow, ocol)]
