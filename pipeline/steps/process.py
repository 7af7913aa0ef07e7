"""The process steps: run the op chain on haloed tiles, crop, encode for output.

``process`` takes a batch of work tiles that split stored; ``process_unit`` (a fused unit)
reads a split unit's tiles straight from the input and processes them as it goes, so no work
tile is written or read. The plan picks one or the other for a job.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import numpy as np

from pipeline.adapters.segments import SegmentWriter, write_index
from pipeline.adapters.tile_codec import OutputEncoder
from pipeline.core.events import BatchEvent, UnitEvent
from pipeline.core.grid import Rect
from pipeline.core.levels import unit_level_count
from pipeline.core.models import JobPlan
from pipeline.core.plan import page_options
from pipeline.errors import OperationError
from pipeline.steps import layout, stopping
from pipeline.steps.common import load_plan, recorded, tile_threads
from pipeline.steps.evaluate import TileEvaluator
from pipeline.steps.masks import write_unit_mask
from pipeline.steps.split import SharedPools, sweep_unit
from pipeline.steps.thumbs import PageThumbs


def process(event: BatchEvent) -> dict[str, Any]:
    """Each tile of the batch: read its work tile, then :class:`TileOutput`; the batch's
    output tiles go to one segment (:class:`SegmentOutput`)."""
    plan = load_plan(event.plan)
    with recorded(plan, "process", event.batch):
        batch = plan.batches[event.batch]
        out = TileOutput(plan, batch.page, fused=False)
        grid = plan.pages[batch.page].grid
        positions = [grid.position(i) for i in range(batch.first, batch.last)]
        with SegmentOutput(plan, batch.page, layout.batch_segment(event.batch),
                           positions) as segment:

            def one(pos: tuple[int, int]) -> None:
                stopping.check()
                segment.add(pos[0], out.encode_tile(*pos))

            # OpenCV and the codecs release the GIL: a Lambda with 2+ vCPUs runs tiles side
            # by side; the local engine sets how many for its workers
            try:
                with ThreadPoolExecutor(tile_threads()) as pool:
                    list(pool.map(one, positions))
            finally:
                out.evaluator.close()
        out.save_thumbs(layout.batch_segment(event.batch))
    return {"job": plan.job, "tiles": batch.last - batch.first}


def process_unit(event: UnitEvent, shared: SharedPools | None = None,
                 in_task: bool = False) -> dict[str, Any]:
    """A fused unit: sweep the unit's band as split does and process each haloed tile as it
    is read (tiles in :func:`tile_threads` threads, a few read ahead), so memory stays about
    a row of tiles and the pixels never go through the work location. ``shared``: the pools
    of the units beside it in one task (:class:`pipeline.steps.split.SharedPools`);
    ``in_task``: a ProcessJob's unit (see :func:`pipeline.steps.common.recorded`)."""
    plan = load_plan(event.plan)
    with recorded(plan, "process_unit", event.unit, clear=not in_task):
        unit = plan.units[event.unit]
        out = TileOutput(plan, unit.page, fused=True)
        positions = out.evaluator.geometry.order(unit)  # the order the sweep reads them
        levels = None
        if unit_level_count(plan, unit.page):  # this unit's part of the pyramid levels
            # imported here, by pyramid jobs only: a run imports its steps within its time
            from pipeline.steps.pyramid import level_method
            from pipeline.steps.unit_levels import RegionLevels

            levels = RegionLevels(plan, unit.page, event.unit, unit, out.encoder, level_method(
                plan, unit.page))
        try:
            with SegmentOutput(plan, unit.page, layout.unit_segment(event.unit), positions,
                               levels.add if levels else None) as segment:

                def handle(r: int, c: int, px: np.ndarray) -> None:
                    if levels:
                        segment.add(r, *out.encode_tile_seen(r, c, px), col=c)
                    else:
                        segment.add(r, out.encode_tile(r, c, px))

                try:
                    sweep_unit(plan, unit, handle, tile_threads(), shared)
                finally:  # the tiles' readers end with the sweep's
                    out.evaluator.close()
            if levels:
                levels.close()
            write_unit_mask(plan, event.unit)  # (the page's internal mask: its own segment)
        except BaseException:
            if levels:
                levels.abort()
            raise
        out.save_thumbs(layout.unit_segment(event.unit))
    return {"job": plan.job, "tiles": unit.tiles}


class TileOutput:
    """One page's tiles to encoded output tiles: apply the chain to the haloed pixels (with the
    page's statistics for ops that need them), crop the core, cut it into output tiles and
    encode them with the output codec, so merge only assembles bytes. With ``downsample`` the
    core is the tile's part of the smaller output page (possibly empty at its bottom or right
    edge). Thread-safe: each call works on its own tile.

    ``fused``: the caller passes each tile's haloed input pixels (a fused unit), else they
    are read from the work tiles. When the run asks for thumbnails (a contact sheet), the
    tiles' input and output pixels are summed into the page's (:mod:`pipeline.steps.thumbs`)."""

    def __init__(self, plan: JobPlan, page: int, fused: bool = True):
        self.plan, self.page = plan, page
        self.evaluator = TileEvaluator(plan, page)
        self.out_tile = plan.spec.output_options.tile
        info = plan.pages[page]
        self.strip = info.strip
        self.encoder = OutputEncoder(page_options(plan.spec, info), info.out_dtype,
                                     info.out_channels)
        # a batch's chain reads its work tiles unless it starts from a canny's edges
        self.reads_input = fused or self.evaluator.layout.source(len(self.evaluator.chain)) is None
        self.thumbs = PageThumbs.of(plan, page, self.encoder.lossy, self.reads_input)

    def _output(self, row: int, col: int,
                haloed: np.ndarray | None) -> tuple[np.ndarray, Rect]:
        if self.thumbs is None:
            return self.evaluator.output(row, col, haloed)
        if haloed is None and self.reads_input:  # read here to be summed, not read twice
            haloed = self.evaluator.input_tile(row, col)
        pixels, origin = self.evaluator.output(row, col, haloed)
        self.thumbs.add(row, col, haloed, pixels, origin)
        return pixels, origin

    def save_thumbs(self, name: str) -> None:
        """Store this batch's or unit's part of the page's thumbnails, if it sums some."""
        if self.thumbs is not None:
            self.thumbs.save(name)

    def encode_tile(self, row: int, col: int,
                    haloed: np.ndarray | None = None) -> list[tuple[int, int, bytes]]:
        """Process tile (row, col), from ``haloed`` pixels or else its stored work tile: its
        encoded output tiles as (output row, output col, bytes)."""
        pixels, origin = self._output(row, col, haloed)
        return self._encoded(pixels, origin)

    def _encoded(self, pixels: np.ndarray, origin: Rect) -> list[tuple[int, int, bytes]]:
        if self.encoder.bilevel:
            self._check_bilevel(pixels, origin)
        if self.strip:  # the whole page, unpadded: its one strip
            return [(0, 0, self.encoder.encode(pixels))]
        t = self.out_tile
        return [(origin.y0 // t + oy // t, origin.x0 // t + ox // t,
                 self.encoder.encode(_padded(pixels[oy:oy + t, ox:ox + t], t)))
                for oy in range(0, pixels.shape[0], t)
                for ox in range(0, pixels.shape[1], t)]

    def _check_bilevel(self, pixels: np.ndarray, origin: Rect) -> None:
        """A 1-bit output holds 0 and 255 only: another value fails the job, naming it, its
        place and the page (before any of the page's tiles is merged: nothing published)."""
        other = (pixels != 0) & (pixels != 255)
        if not other.any():
            return
        y, x = (int(v) for v in np.argwhere(other)[0][:2])
        value = int(pixels[y, x].flat[0])
        raise OperationError(
            f"output_options.bilevel: page {self.plan.pages[self.page].info.index} of "
            f"{self.plan.spec.input} holds the value {value} at x {origin.x0 + x}, y "
            f"{origin.y0 + y} of the output page after the ops, and a 1-bit output holds 0 "
            'and 255 only; end the ops with a threshold (or otsu_threshold), or drop '
            '"bilevel"')

    def encode_tile_seen(self, row: int, col: int, haloed: np.ndarray | None = None
                         ) -> tuple[list[tuple[int, int, bytes]], np.ndarray]:
        """:meth:`encode_tile`, and the tile's output pixels as a reader sees them (rows x cols x
        channels: for JPEG the decoded tiles), which pyramid levels are reduced from."""
        pixels, origin = self._output(row, col, haloed)
        t = self.out_tile
        tiles = self._encoded(pixels, origin)
        seen = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
        if self.encoder.lossy:  # the decoded tiles
            seen = seen.copy()
            for orow, ocol, data in tiles:
                oy, ox = orow * t - origin.y0, ocol * t - origin.x0
                h, w = min(t, seen.shape[0] - oy), min(t, seen.shape[1] - ox)
                seen[oy:oy + h, ox:ox + w] = self.encoder.decode(data)[:h, :w]
        return tiles, seen


class SegmentOutput:
    """The output tiles of a batch or unit, streamed to ONE segment in file order (output
    row by output row, left to right), and its index (``[row, col, offset, size]`` of each
    tile) written once the segment is complete.

    Processing tiles arrive in any order (threads); a processing row is written once all of
    its tiles of this batch or unit are in, rows in the order ``positions`` gives them, so
    memory holds the rows in flight (about one, as the sweep goes down; a page the chain
    turns is swept in the input's order: rows upwards, or a unit one tile wide, each row a
    tile). Thread-safe."""

    def __init__(self, plan: JobPlan, page: int, name: str, positions: list[tuple[int, int]],
                 on_row: Callable[[np.ndarray], None] | None = None):
        self.work, self.page, self.name = plan.work, page, name
        #: with ``on_row``, each processing row's pixels (its tiles' side by side) go there
        self.on_row = on_row
        self.pixels: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        self.expected: dict[int, int] = defaultdict(int)
        for row, _ in positions:
            self.expected[row] += 1
        self.rows = list(self.expected)  # in the order the tiles come (a turned page's sweep)
        self.pending: dict[int, list[tuple[int, int, bytes]]] = defaultdict(list)
        self.arrived: dict[int, int] = defaultdict(int)
        self.index: list[list[int]] = []
        self._lock = threading.Lock()
        self._next = 0
        self.writer = SegmentWriter(layout.segment_file(plan.work, page, name))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.writer.abort()
            return
        if self._next != len(self.rows):
            self.writer.abort()
            raise RuntimeError(f"segment {self.name}: tiles of rows {self.rows[self._next:]} "
                               "never arrived")
        self.writer.close()
        write_index(layout.segment_index_file(self.work, self.page, self.name),
                    {"tiles": self.index})

    def add(self, row: int, tiles: list[tuple[int, int, bytes]],
            pixels: np.ndarray | None = None, col: int = 0) -> None:
        """The output tiles of processing tile (``row``, ``col``), and its pixels when the
        rows go to ``on_row``."""
        with self._lock:
            self.pending[row] += tiles
            self.arrived[row] += 1
            if pixels is not None:
                self.pixels[row].append((col, pixels))
            while (self._next < len(self.rows)
                   and self.arrived[self.rows[self._next]] == self.expected[self.rows[self._next]]):
                ready = self.pending.pop(self.rows[self._next])
                for orow, ocol, data in sorted(ready, key=lambda t: (t[0], t[1])):
                    self.index.append([orow, ocol, self.writer.write(data), len(data)])
                if self.on_row is not None:
                    parts = [px for _, px in sorted(self.pixels.pop(self.rows[self._next], []),
                                                    key=lambda x: x[0])]
                    if parts and parts[0].shape[0]:
                        self.on_row(np.concatenate(parts, 1))
                self._next += 1


def _padded(tile: np.ndarray, size: int) -> np.ndarray:
    """A full output tile: edge tiles are zero-padded, as TIFF stores them."""
    if tile.shape[0] == size and tile.shape[1] == size:
        return tile
    full = np.zeros((size, size, *tile.shape[2:]), tile.dtype)
    full[:tile.shape[0], :tile.shape[1]] = tile
    return full
