"""Pyramid levels built where the pixels are: each fused unit reduces its own region.

A unit's region starts and ends on multiples of its processing tile ``T`` (output pixels),
so for every level k with ``2**k`` dividing ``T`` the level's pixels of the region depend on
the region's pixels alone (the 2x2 blocks of every level above are inside it; odd rows and
columns only occur at the page's edge, which the unit sees as the page does). A unit
builds these :func:`~pipeline.core.levels.unit_level_count` levels with
:func:`~pipeline.steps.pyramid.reduce2`,
exactly as merge's :class:`~pipeline.steps.pyramid.Pyramid` does, as its processing rows
complete:

- a level tile entirely inside the region is encoded here, into the unit's level segment
  ``u{unit}_L{k}`` (with its index, as base segments);
- a level tile the region shares with other units gets a *fragment*: the region's part of
  its pixels (raw, LZ4), in the unit's ``u{unit}_frag`` segment;
- the deepest level it builds is also kept raw there (*blocks*), so that merge can build
  the levels below it (a 4**k-th of the page: small).

Merge then only assembles the shared tiles from their fragments and builds the few deepest
levels (:func:`merge_unit_levels`). Memory: one tile row per level of the region's width.
JPEG pages reduce the lossy base pixels, as merge's pyramid does.

A job that is not fused (whole-page statistics, or ``"fuse": false``) has its levels built
the same way by its *level units* (:func:`build_levels`, the BuildLevels Map after Process):
one per split unit, which reads its region's encoded base tiles back from the process
batches' segments, decodes them and feeds them to the same :class:`RegionLevels`, one
processing row at a time.

A turned page (its units meet its rows in the input's order: they build none) has its
levels built by merge the same way, band by band (:func:`merge_band_levels`): regions of
:data:`~pipeline.core.levels.BAND_TILES` processing tiles of columns, the page's height,
read back from its base tiles; so merge holds a band's rows, never a row of the page.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from math import ceil
from typing import Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.segments import SegmentWriter, read_range
from pipeline.adapters.tile_codec import OutputEncoder, decode_work_tile, encode_work_tile
from pipeline.core.events import UnitEvent
from pipeline.core.grid import SplitUnit
from pipeline.core.levels import BAND_TILES, band_level_count, level_shapes, unit_level_count
from pipeline.core.models import JobPlan
from pipeline.core.plan import page_options
from pipeline.steps import layout, stopping
from pipeline.steps.common import load_plan, recorded, tile_threads
from pipeline.steps.pyramid import Pyramid, level_method, level_nodata, reduce2
from pipeline.steps.tile_table import TileTable, read_indexes


def level_names(unit: int, k: int) -> str:
    return f"{layout.unit_segment(unit)}_L{k}"


def fragment_name(unit: int) -> str:
    return f"{layout.unit_segment(unit)}_frag"


class _Level:
    """Level k of a unit's region: its pixel rect on the level, and the rows not yet cut."""

    def __init__(self, k: int, y0: int, y1: int, x0: int, x1: int, h: int, w: int):
        self.k, self.y0, self.y1, self.x0, self.x1, self.h, self.w = k, y0, y1, x0, x1, h, w
        self.start = y0  # first level row held in ``rows``
        self.rows: list[np.ndarray] = []
        self.held = 0


class RegionLevels:
    """The levels a unit builds, fed its processing rows of output pixels in order."""

    def __init__(self, plan: JobPlan, page: int, unit_index: int, unit: SplitUnit,
                 encoder: OutputEncoder, method: str, count: int | None = None):
        p = plan.pages[page]
        self.plan, self.page, self.unit = plan, page, unit_index
        self.t, self.encoder, self.method = plan.spec.output_options.tile, encoder, method
        self.nodata = level_nodata(plan, page)
        height, width, big = p.out_grid.height, p.out_grid.width, p.out_grid.tile
        self.count = unit_level_count(plan, page) if count is None else count
        self.deepest_needed = self.count < len(level_shapes(height, width, self.t))
        y0, x0 = unit.row0 * big, unit.col0 * big
        y1, x1 = min(unit.row1 * big, height), min(unit.col1 * big, width)
        self.levels = []
        for k in range(1, self.count + 1):
            f = 2 ** k
            self.levels.append(_Level(k, y0 // f, ceil(y1 / f), x0 // f, ceil(x1 / f),
                                      ceil(height / f), ceil(width / f)))
        work = plan.work
        self.writers = [SegmentWriter(layout.segment_file(work, page, level_names(unit_index, k)))
                        for k in range(1, self.count + 1)]
        self.index: list[list[list[int]]] = [[] for _ in range(self.count)]
        self.frag = SegmentWriter(layout.segment_file(work, page, fragment_name(unit_index)))
        self.fragments: list[list[int]] = []  # [k, R, C, dy, dx, offset, size]
        self.blocks: list[list[int]] = []  # [level row, level col, offset, size]

    def add(self, strip: np.ndarray) -> None:
        """The next processing row of the region's output pixels (rows x width x channels)."""
        cur = strip
        for level in self.levels:
            cur = reduce2(cur, self.method, self.nodata)
            self._rows(level, cur)

    def _rows(self, level: _Level, rows: np.ndarray) -> None:
        level.rows.append(rows)
        level.held += rows.shape[0]
        t = self.t
        while level.held:
            end = min((level.start // t + 1) * t, level.y1)  # the tile row's end in the region
            if level.start + level.held < end:
                return
            block = np.concatenate(level.rows, 0) if len(level.rows) > 1 else level.rows[0]
            n = end - level.start
            self._cut(level, block[:n])
            rest = block[n:]
            level.rows, level.held, level.start = ([rest] if len(rest) else []), len(rest), end

    def _cut(self, level: _Level, block: np.ndarray) -> None:
        """Level rows [start, start + len(block)) of the region, one level tile row: encode
        the tiles inside the region, keep fragments of the others."""
        t, k = self.t, level.k
        r = level.start // t
        ty0, ty1 = r * t, min((r + 1) * t, level.h)
        if k == self.count and self.deepest_needed:
            data = encode_work_tile(block)
            self.blocks.append([level.start, level.x0, self.frag.write(data), len(data)])
        for c in range(level.x0 // t, ceil(level.x1 / t)):
            tx0, tx1 = c * t, min((c + 1) * t, level.w)
            ix0, ix1 = max(tx0, level.x0), min(tx1, level.x1)
            part = block[:, ix0 - level.x0:ix1 - level.x0]
            if (level.start, level.start + len(block), ix0, ix1) == (ty0, ty1, tx0, tx1):
                full = np.zeros((t, t, *part.shape[2:]), part.dtype)
                full[:part.shape[0], :part.shape[1]] = part
                data = self.encoder.encode(full)
                self.index[k - 1].append([r, c, self.writers[k - 1].write(data), len(data)])
            else:
                data = encode_work_tile(part)
                self.fragments.append([k, r, c, level.start - ty0, ix0 - tx0,
                                       self.frag.write(data), len(data)])

    def close(self) -> None:
        """Publish the level segments, the fragments and their index (``u{unit}_frag``)."""
        for level in self.levels:
            if level.held:
                raise RuntimeError(f"unit {self.unit}: level {level.k} rows {level.start}+"
                                   f"{level.held} were never cut into tiles")
        for k, writer in enumerate(self.writers, 1):
            writer.close()
            storage.write_json(layout.segment_index_file(
                self.plan.work, self.page, level_names(self.unit, k)),
                {"tiles": self.index[k - 1]}, indent=None)
        self.frag.close()
        doc: dict[str, Any] = {"levels": self.count, "fragments": self.fragments,
                               "blocks": self.blocks}
        storage.write_json(layout.segment_index_file(self.plan.work, self.page,
                                                     fragment_name(self.unit)), doc, indent=None)

    def abort(self) -> None:
        for writer in (*self.writers, self.frag):
            writer.abort()


def build_levels(event: UnitEvent) -> dict[str, Any]:
    """A level unit of a job that is not fused: the pyramid levels of split unit
    ``event.unit``'s region, from the base tiles process encoded (read back from the
    batches' segments that hold them, decoded), written exactly as a fused unit writes them.
    A page whose levels the units do not build (:func:`unit_level_count` 0) has nothing
    to do here: merge builds them."""
    plan = load_plan(event.plan)
    unit = plan.units[event.unit]
    if not unit_level_count(plan, unit.page):
        return {"job": plan.job, "tiles": 0}
    with recorded(plan, "build_levels", event.unit):
        p = plan.pages[unit.page]
        encoder = OutputEncoder(page_options(plan.spec, p), p.out_dtype, p.out_channels)
        tiles = _band_table(plan, unit)  # (before the levels' writers open: nothing to abort)
        levels = RegionLevels(plan, unit.page, event.unit, unit, encoder,
                              level_method(plan, unit.page))
        with ThreadPoolExecutor(tile_threads()) as pool:
            _feed(levels, plan, unit, tiles, encoder, pool)
    return {"job": plan.job, "tiles": unit.tiles}


def _band_table(plan: JobPlan, unit: SplitUnit) -> TileTable:
    """Where the output tiles of ``unit``'s region are (row-major over the region), from the
    indexes of the process batches that hold its processing tiles."""
    p, t = plan.pages[unit.page], plan.spec.output_options.tile
    big = p.out_grid.tile
    y0, x0 = unit.row0 * big, unit.col0 * big
    y1 = min(unit.row1 * big, p.out_grid.height)
    x1 = min(unit.col1 * big, p.out_grid.width)
    r0, c0 = y0 // t, x0 // t
    first, last = unit.row0 * p.grid.cols, unit.row1 * p.grid.cols
    names = [layout.batch_segment(b) for b in plan.batches_of(unit.page)
             if plan.batches[b].first < last and plan.batches[b].last > first]
    band = TileTable.empty(ceil(y1 / t) - r0, ceil(x1 / t) - c0,
                           [layout.segment_file(plan.work, unit.page, n) for n in names])
    rows, cols = band.segment.shape
    for number, tiles in enumerate(read_indexes(plan.work, unit.page, names)):
        band.fill(number, [[r - r0, c - c0, offset, size] for r, c, offset, size in tiles
                           if 0 <= r - r0 < rows and 0 <= c - c0 < cols])
    band.check(f"page {p.info.index}, unit {plan.units.index(unit)}")
    return band


def _strip(plan: JobPlan, unit: SplitUnit, r0: int, rows: int, cols: int,
           decoded: list[np.ndarray]) -> np.ndarray:
    """Output tile rows [r0, r0 + rows) of the region (its decoded tiles, row-major) as the
    region's pixels: rows x width x channels, cut at the page's edge."""
    p, t = plan.pages[unit.page], plan.spec.output_options.tile
    y0, x0 = unit.row0 * p.out_grid.tile, unit.col0 * p.out_grid.tile
    top = y0 + r0 * t
    height = min(top + rows * t, p.out_grid.height) - top
    width = min(unit.col1 * p.out_grid.tile, p.out_grid.width) - x0
    strip = np.empty((height, width, p.out_channels), p.out_dtype)
    for n, tile in enumerate(decoded):
        r, c = divmod(n, cols)
        part = tile.reshape(t, t, -1)[:height - r * t, :width - c * t]
        strip[r * t:r * t + part.shape[0], c * t:c * t + part.shape[1]] = part
    return strip


def merge_band_levels(plan: JobPlan, page: int, table: TileTable, encoder: OutputEncoder,
                      method: str) -> list[TileTable]:
    """The levels of a turned page (:func:`~pipeline.core.levels.band_level_count`), built
    by merge as the units build theirs, band by band: each band of :data:`BAND_TILES`
    processing tiles of columns, the page's height, read from the base page's tiles
    (``table``) one processing row at a time, decoded and fed to a :class:`RegionLevels`
    (its segments named as unit ``n``'s: a turned page's units write none), then assembled
    by :func:`merge_unit_levels`. Memory: a processing row of a band and a tile row per
    level of a band, whatever the page's width; every base tile is read and decoded once,
    as :class:`Pyramid` reads them, so the levels are the same."""
    p, t = plan.pages[page], plan.spec.output_options.tile
    g = p.out_grid
    per_row = g.tile // t  # output tile rows a processing row
    rows, cols = ceil(g.height / g.tile), ceil(g.width / g.tile)
    bands = [SplitUnit(page, 0, rows, c, min(c + BAND_TILES, cols))
             for c in range(0, cols, BAND_TILES)]
    count = band_level_count(plan, page)
    with ThreadPoolExecutor(tile_threads()) as pool:
        for n, band in enumerate(bands):
            c0, c1 = band.col0 * per_row, min(band.col1 * per_row, table.cols)
            columns = TileTable(c1 - c0, table.sources, table.segment[:, c0:c1],
                                table.offset[:, c0:c1], table.size[:, c0:c1])
            _feed(RegionLevels(plan, page, n, band, encoder, method, count), plan, band,
                  columns, encoder, pool)
    return merge_unit_levels(plan, page, encoder, method, len(bands))


def _feed(levels: RegionLevels, plan: JobPlan, region: SplitUnit, tiles: TileTable,
          encoder: OutputEncoder, pool: ThreadPoolExecutor) -> None:
    """Feed ``levels`` the output tiles of ``region`` (``tiles``: where they are, row-major
    over the region), a processing row at a time, read in groups of neighbours
    (:meth:`TileTable.tile_bytes`) and decoded on ``pool``; close it (abort it on any
    error). A level unit's region, or a band of a turned page's in merge."""
    try:
        per_row = plan.pages[region.page].out_grid.tile // plan.spec.output_options.tile
        rows_of, cols = tiles.segment.shape[0], tiles.cols
        stream = tiles.tile_bytes()
        for r0 in range(0, rows_of, per_row):
            stopping.check()
            rows = min(per_row, rows_of - r0)
            decoded = list(pool.map(encoder.decode, (next(stream) for _ in range(rows * cols))))
            levels.add(_strip(plan, region, r0, rows, cols, decoded))
        levels.close()
    except BaseException:
        levels.abort()
        raise


def merge_unit_levels(plan: JobPlan, page: int, encoder: OutputEncoder, method: str,
                      bands: int = 0) -> list[TileTable]:
    """Merge's part of a page's unit-built levels: the tile tables of every level. Shared
    tiles are assembled from their fragments into a ``border{k}`` segment; the levels below
    the units' deepest are built from its blocks with :class:`Pyramid` (``deep/``).
    ``bands``: the levels were built by merge's bands (:func:`merge_band_levels`), that
    many, not by the page's units."""
    p, t = plan.pages[page], plan.spec.output_options.tile
    count = band_level_count(plan, page) if bands else unit_level_count(plan, page)
    units = list(range(bands)) if bands else plan.units_of(page)
    frag_urls = [layout.segment_file(plan.work, page, fragment_name(n)) for n in units]
    docs = [storage.read_json(layout.segment_index_file(plan.work, page, fragment_name(n)))
            for n in units]
    shapes = level_shapes(p.out_grid.height, p.out_grid.width, t)
    tables = []
    for k in range(1, count + 1):
        h, w = shapes[k - 1]
        names = [level_names(n, k) for n in units]
        border = layout.segment_file(plan.work, page, f"border{k}")
        table = TileTable.empty(ceil(h / t), ceil(w / t),
                                [layout.segment_file(plan.work, page, n) for n in names]
                                + [border])
        for number, tiles in enumerate(read_indexes(plan.work, page, names)):
            table.fill(number, tiles)
        shared: dict[tuple[int, int], list[tuple[int, list[int]]]] = defaultdict(list)
        for u, doc in enumerate(docs):
            for frag in doc["fragments"]:
                if frag[0] == k:
                    shared[frag[1], frag[2]].append((u, frag))
        with SegmentWriter(border) as writer:
            for (r, c) in sorted(shared):
                full = np.zeros((t, t, p.out_channels), p.out_dtype)
                for u, (_, _, _, dy, dx, offset, size) in shared[r, c]:
                    part = decode_work_tile(read_range(frag_urls[u], offset, size))
                    full[dy:dy + part.shape[0], dx:dx + part.shape[1]] = part
                data = encoder.encode(full)
                table.set(r, c, len(names), writer.write(data), len(data))
        table.check(f"page {p.info.index}, level {k}")
        tables.append(table)
    if count < len(shapes):
        tables += _deep_levels(plan, page, count, docs, frag_urls, encoder, method)
    return tables


def _deep_levels(plan: JobPlan, page: int, count: int, docs: list[dict[str, Any]],
                 frag_urls: list[str], encoder: OutputEncoder,
                 method: str) -> list[TileTable]:
    """The levels below level ``count``, reduced from its pixels (the units' blocks), one
    tile row at a time."""
    p, t = plan.pages[page], plan.spec.output_options.tile
    h, w = level_shapes(p.out_grid.height, p.out_grid.width, t)[count - 1]
    rows: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for u, doc in enumerate(docs):
        for block in doc["blocks"]:
            rows[block[0] // t].append((u, block))
    folder = storage.join(layout.levels_dir(plan.work, page), "deep")
    pyramid = Pyramid(h, w, p.out_channels, p.out_dtype, encoder, t, folder, method=method,
                      nodata=level_nodata(plan, page))
    try:
        cols = ceil(w / t)
        for r in range(ceil(h / t)):
            buffer = np.zeros((t, cols * t, p.out_channels), p.out_dtype)
            for u, (y, x, offset, size) in rows.get(r, []):
                part = decode_work_tile(read_range(frag_urls[u], offset, size))
                buffer[y - r * t:y - r * t + part.shape[0], x:x + part.shape[1]] = part
            for c in range(cols):
                pyramid.feed_pixels(buffer[:, c * t:(c + 1) * t], r, c)
        return [TileTable.from_spans(level.cols, pyramid.spans(k))
                for k, level in enumerate(pyramid.levels)]
    finally:
        pyramid.close()
