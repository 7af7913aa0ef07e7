"""Where each encoded tile of an output image (a page or a pyramid level) is: its segment,
offset and size, read from the segment indexes, and the tiles' bytes read back in groups."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from math import ceil

import numpy as np

from pipeline.adapters.segments import read_index, read_range
from pipeline.adapters.tiff_header import Placeholder
from pipeline.core.models import JobPlan, PagePlan
from pipeline.core.tiff_layout import MiB, Span
from pipeline.errors import WorkMissingError
from pipeline.steps import layout

#: parallel reads of segment indexes, and of tiles read back (S3 GETs)
READ_THREADS = 8
#: tiles read back at once (one ranged GET)
READ_GROUP = 4 * MiB


class TileTable:
    """Where each encoded tile of an output page is: segment number, offset and size per
    tile (row-major), 20 bytes a tile. (A plain class: a dataclass's generated methods are
    compiled when the module is imported, within a run's time.)"""

    __slots__ = ("cols", "offset", "segment", "size", "sources")

    def __init__(self, cols: int, sources: list[str], segment: np.ndarray, offset: np.ndarray,
                 size: np.ndarray):
        self.cols, self.sources = cols, sources
        self.segment = segment  # int32 (rows, cols), -1: no segment holds the tile
        self.offset = offset  # int64
        self.size = size  # int64

    @classmethod
    def empty(cls, rows: int, cols: int, sources: list[str]) -> TileTable:
        return cls(cols, sources, np.full((rows, cols), -1, np.int32),
                   np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.int64))

    @classmethod
    def from_spans(cls, cols: int, spans: list[Span]) -> TileTable:
        """The table of tiles whose spans, in row-major order, are ``spans``."""
        sources = sorted({s.source for s in spans})
        table = cls.empty(ceil(len(spans) / cols), cols, sources)
        number = {src: k for k, src in enumerate(sources)}
        for n, span in enumerate(spans):
            r, c = divmod(n, cols)
            table.set(r, c, number[span.source], span.start, span.size)
        return table

    def set(self, row: int, col: int, segment: int, offset: int, size: int) -> None:
        self.segment[row, col], self.offset[row, col] = segment, offset
        self.size[row, col] = size

    def fill(self, segment: int, tiles: list[list[int]]) -> None:
        """Tiles ``[row, col, offset, size]`` (a segment index) held by ``segment``."""
        for row, col, offset, size in tiles:
            self.set(row, col, segment, offset, size)

    def check(self, what: str) -> None:
        missing = np.argwhere(self.segment < 0)
        if len(missing):
            row, col = missing[0]
            raise WorkMissingError(f"{what}: no segment holds output tile ({row}, {col}) "
                                   f"({len(missing)} tiles missing): a process step did not "
                                   "finish; re-run the job")

    @classmethod
    def read(cls, plan: JobPlan, index: int, page: PagePlan, mask: str = "") -> TileTable:
        """The table of page ``index``, from the indexes of its segments (read in threads).
        ``mask``: the suffix of the units' mask segments: the table of the page's internal
        mask (:mod:`pipeline.steps.masks`), whose tiles the units wrote, fused or not."""
        rows, cols = page.out_tiles(plan.spec.output_options.tile)
        if plan.fused or mask:
            names = [layout.unit_segment(u) + mask for u in plan.units_of(index)]
        else:
            names = [layout.batch_segment(b) for b in plan.batches_of(index)]
        sources = [layout.segment_file(plan.work, index, n) for n in names]
        table = cls.empty(rows, cols, sources)
        for k, tiles in enumerate(read_indexes(plan.work, index, names)):
            table.fill(k, tiles)
        table.check(f"page {page.info.index}" + (" (its mask)" if mask else ""))
        return table

    def spans(self) -> Iterator[Span]:
        """The tiles' spans in row-major order."""
        for k, offset, size in zip(self.segment.ravel().tolist(), self.offset.ravel().tolist(),
                                   self.size.ravel().tolist(), strict=True):
            yield Span(self.sources[k], offset, size)

    def run_sizes(self) -> np.ndarray:
        """The bytes of each run of tiles in row-major order: a run continues while each
        tile follows the previous one in the same segment."""
        seg, off, size = self.segment.ravel(), self.offset.ravel(), self.size.ravel()
        joined = (seg[1:] == seg[:-1]) & (off[1:] == off[:-1] + size[:-1])
        starts = np.concatenate([[0], np.flatnonzero(~joined) + 1])
        return np.add.reduceat(size, starts) if size.size else np.zeros(0, np.int64)

    def runs(self) -> int:
        return len(self.run_sizes())

    def placeholders(self) -> Iterator[Placeholder]:
        return (Placeholder(s) for s in self.spans())

    def tile_bytes(self) -> Iterator[bytes]:
        """The encoded tiles in row-major order, read in groups of neighbours (one GET of up
        to :data:`READ_GROUP` bytes each), a few groups ahead."""

        def groups() -> Iterator[list[Span]]:
            group: list[Span] = []
            for span in self.spans():
                if group and (span.source != group[-1].source
                              or span.start != group[-1].start + group[-1].size
                              or span.start + span.size - group[0].start > READ_GROUP):
                    yield group
                    group = []
                group.append(span)
            if group:
                yield group

        def fetch(group: list[Span]) -> list[bytes]:
            first, last = group[0], group[-1]
            blob = read_range(first.source, first.start, last.start + last.size - first.start)
            return [blob[s.start - first.start:s.start - first.start + s.size] for s in group]

        with ThreadPoolExecutor(READ_THREADS) as pool:
            ahead: deque[Future[list[bytes]]] = deque()
            for group in groups():
                ahead.append(pool.submit(fetch, group))
                if len(ahead) > READ_THREADS:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()


def read_indexes(work: str, page: int, names: list[str]) -> Iterator[list[list[int]]]:
    """The tile lists of the named segments' indexes (read in threads, in order; one index,
    as a page of one unit has, in this thread)."""

    def read(name: str) -> list[list[int]]:
        tiles: list[list[int]] = read_index(layout.segment_index_file(work, page, name))["tiles"]
        return tiles

    if len(names) == 1:
        yield read(names[0])
        return
    with ThreadPoolExecutor(READ_THREADS) as pool:
        yield from pool.map(read, names)
