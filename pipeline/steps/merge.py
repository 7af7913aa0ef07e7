"""The merge step: assemble a job's encoded tiles into the output TIFF and publish it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
from pipeline.steps.common import load_plan, raise_recorded, tile_threads
from pipeline.steps.pyramid import Pyramid

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
    if spec.output_options.pyramid:
        raw = raw * 4 // 3  # the levels add up to a third of the base pages
    tmp = storage.temp_output_path(spec.output)
    # pyramid levels are spooled next to the temporary output (local disk)
    spools = tempfile.mkdtemp(prefix=".tiffpipe-levels-", dir=os.path.dirname(tmp) or ".") \
        if spec.output_options.pyramid else None
    try:
        with tifffile.TiffWriter(tmp, bigtiff=raw > BIGTIFF_ABOVE,
                                 ome=spec.output_options.ome) as writer:
            for i, page in enumerate(plan.pages):
                _write_page(writer, plan, i, page, spools)
        size = os.path.getsize(tmp)
        storage.publish_file(tmp, spec.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        if spools is not None:
            shutil.rmtree(spools, ignore_errors=True)
    finished = time.time()
    result = {
        "job": plan.job, "status": "SUCCEEDED", "input": spec.input, "output": spec.output,
        "pages": len(plan.pages), "megapixels": round(plan.megapixels, 3), "tiles": plan.tiles,
        "output_bytes": size, "started_at": plan.started_at, "finished_at": finished,
        "seconds": round(finished - plan.started_at, 3),
    }
    storage.write_json(layout.result_file(plan.work), result)
    return {"job": plan.job, "output": spec.output, "output_bytes": size}


def _write_page(writer: tifffile.TiffWriter, plan: JobPlan, index: int, page: PagePlan,
                spools: str | None = None) -> None:
    """Write one output page; with ``spools`` (a folder), its pyramid levels as SubIFDs."""
    options = plan.spec.output_options
    channels = page.out_channels
    encoder = OutputEncoder(options, page.info.dtype, channels)
    height, width = page.out_grid.height, page.out_grid.width
    shape = (height, width) + ((channels,) if channels > 1 else ())
    # photometric, extra samples, software and the input's carried tags (resolution, ICC, ...)
    tags = output_tags(page.info, height, width, channels)
    if options.ome:
        tags = _ome_tags(tags, page)
    common = {"dtype": page.info.dtype, "tile": (options.tile, options.tile),
              "planarconfig": "contig" if channels > 1 else None, **encoder.writer_kwargs()}
    if spools is None:
        writer.write(_tiles(plan, index, page), shape=shape, **common, **tags)
        return
    folder = tempfile.mkdtemp(prefix=f"page{index}-", dir=spools)
    pyramid = Pyramid(height, width, channels, page.info.dtype, encoder, options.tile, folder,
                      nearest=tags["photometric"] == "palette", threads=tile_threads())
    try:
        subifds = {"subifds": len(pyramid.levels)} if pyramid.levels else {}
        writer.write(_fed(_tiles(plan, index, page), pyramid, width, options.tile),
                     shape=shape, **common, **tags, **subifds)
        # what every level repeats of the base page: how its samples are to be read
        level_tags = {k: tags[k] for k in ("photometric", "extrasamples", "colormap")
                      if tags.get(k) is not None}
        for k, (h, w) in enumerate(pyramid.shapes):
            writer.write(pyramid.tiles(k), shape=(h, w) + shape[2:], subfiletype=1,
                         software=tags["software"], metadata=None, **common, **level_tags)
    finally:
        pyramid.close()
        shutil.rmtree(folder, ignore_errors=True)


def _fed(tiles: Iterator[bytes], pyramid: Pyramid, width: int, tile: int) -> Iterator[bytes]:
    """``tiles`` (row-major encoded base tiles), each fed to ``pyramid`` as it is written."""
    cols = ceil(width / tile)
    for n, data in enumerate(tiles):
        pyramid.feed(data, n // cols, n % cols)
        yield data


#: micrometres per resolution unit (TIFF ResolutionUnit 2: inch, 3: centimetre)
_MICRONS = {2: 25400.0, 3: 10000.0}


def _ome_tags(tags: dict[str, Any], page: PagePlan) -> dict[str, Any]:
    """``tags`` for an OME-TIFF page: the OME-XML Image of the page gets its name (PageName,
    else "page <input index>"), its description (ImageDescription, which tifffile keeps for
    the OME-XML) and its pixel size (from the resolution, in micrometres)."""
    tags = dict(tags)
    meta: dict[str, Any] = {"Name": f"page {page.info.index}"}
    extratags = []
    for tag in tags.get("extratags", []):
        code, value = tag[0], tag[3]
        if code in (270, 285):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            text = text.rstrip("\x00").strip()
            if text:
                meta["Name" if code == 285 else "Description"] = text
        if code != 270:
            extratags.append(tag)
    tags["extratags"] = extratags
    unit, resolution = tags.get("resolutionunit"), tags.get("resolution")
    if resolution is not None and unit in _MICRONS:
        for axis, value in zip("XY", resolution, strict=True):
            per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
            if per_unit > 0:
                meta[f"PhysicalSize{axis}"] = _MICRONS[unit] / per_unit
                meta[f"PhysicalSize{axis}Unit"] = "\u00b5m"
    tags["metadata"] = meta
    return tags


def _tiles(plan: JobPlan, index: int, page: PagePlan) -> Iterator[bytes]:
    """The page's encoded output tiles in row-major order.

    A pack holds the output tiles of one processing tile; the packs of an output row are
    read (ahead, in parallel) and dropped once that row's tiles are out, so memory holds a
    few packs whatever the page's width (a pack is read once per output row it spans).
    """
    grid, out = page.out_grid, plan.spec.output_options.tile  # (downsample: a smaller page)
    per = grid.tile // out  # output tiles per processing tile side
    rows, cols = ceil(grid.height / out), ceil(grid.width / out)

    def fetch(prow: int, pc: int) -> dict[tuple[int, int], bytes]:
        url = layout.pack_file(plan.work, index, prow, pc)
        return unpack_tiles(storage.read_bytes(url), url)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        for orow in range(rows):
            ahead: deque[Future[dict[tuple[int, int], bytes]]] = deque()
            next_pc = 0
            for ocol in range(cols):
                while next_pc < grid.cols and len(ahead) < READ_THREADS:
                    ahead.append(pool.submit(fetch, orow // per, next_pc))
                    next_pc += 1
                tiles = ahead[0].result()
                yield tiles[(orow, ocol)]
                if ocol % per == per - 1 or ocol == cols - 1:
                    ahead.popleft()
