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

A page whose units build none of its levels has them built by merge the same way, band by
band (:func:`merge_band_levels`): regions of :data:`~pipeline.core.levels.BAND_TILES`
processing tiles of columns, the page's height, read back from its base tiles; so merge
holds a band's rows, never a row of the page. Such a page is a turned one (its units meet
its rows in the input's order), one that carries its internal mask (its levels' masks,
and means without the masked-out pixels, come from its base and mask tiles: a band reads
both, and its levels carry their masks as a second plane, cut, encoded
(:func:`~pipeline.adapters.tile_codec.encode_mask`), kept as fragments and blocks
(``mask_fragments``, ``mask_blocks``) and assembled as the pixels are, into
``u{n}_L{k}_mask`` segments), or a "nearest" one of odd size (past half way across a
level of odd size a pick is the row above or the column left of its block: the bands,
fed in order, carry those, :class:`_Picks`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from math import ceil
from typing import Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.segments import SegmentWriter, read_range
from pipeline.adapters.tile_codec import (
    OutputEncoder,
    decode_mask,
    decode_work_tile,
    encode_mask,
    encode_work_tile,
)
from pipeline.core.events import UnitEvent
from pipeline.core.grid import SplitUnit
from pipeline.core.levels import BAND_TILES, band_level_count, level_shapes, unit_level_count
from pipeline.core.models import JobPlan
from pipeline.core.plan import page_options
from pipeline.core.reduce import overview_picks
from pipeline.steps import layout, stopping
from pipeline.steps.common import load_plan, recorded, tile_threads
from pipeline.steps.masks import MASK_SEGMENT
from pipeline.steps.pyramid import (
    Pyramid,
    level_method,
    level_nodata,
    reduce2_pieces,
    reduce_mask,
)
from pipeline.steps.tile_table import TileTable, read_indexes


def level_names(unit: int, k: int) -> str:
    return f"{layout.unit_segment(unit)}_L{k}"


def fragment_name(unit: int) -> str:
    return f"{layout.unit_segment(unit)}_frag"


class _Level:
    """Level k of a unit's region: its pixel rect on the level, and the rows not yet cut
    (each a tuple of its planes: the pixels, and a masked region's mask)."""

    def __init__(self, k: int, y0: int, y1: int, x0: int, x1: int, h: int, w: int):
        self.k, self.y0, self.y1, self.x0, self.x1, self.h, self.w = k, y0, y1, x0, x1, h, w
        self.start = y0  # first level row held in ``rows``
        self.rows: list[tuple[np.ndarray, ...]] = []
        self.held = 0


class _Plane:
    """What a region writes of one plane of its levels (the pixels, or a masked region's
    mask: ``suffix`` "_mask"): each level's segment and index, its fragments and blocks."""

    def __init__(self, plan: JobPlan, page: int, unit: int, count: int, suffix: str,
                 encode: Callable[[np.ndarray], bytes]):
        self.suffix, self.encode = suffix, encode
        self.key = "mask_" if suffix else ""  # (of its fragments and blocks in the index)
        self.names = [level_names(unit, k) + suffix for k in range(1, count + 1)]
        self.writers: list[SegmentWriter] = []
        try:  # (a writer that cannot open, out of files say: those opened are discarded)
            for name in self.names:
                self.writers.append(SegmentWriter(layout.segment_file(plan.work, page, name)))
        except BaseException:
            for writer in self.writers:
                writer.abort()
            raise
        self.index: list[list[list[int]]] = [[] for _ in range(count)]
        self.fragments: list[list[int]] = []  # [k, R, C, dy, dx, offset, size]
        self.blocks: list[list[int]] = []  # [level row, level col, offset, size]


class _Picks:
    """GDAL's nearest picks (``pyramid_resampling`` "nearest") of a region's levels, as
    :class:`Pyramid` takes them: by each pixel's place in the whole level above
    (:func:`~pipeline.core.reduce.overview_picks`), which past half way down (across) a
    level of odd size is the row above (the column left of) its 2 x 2 block: the last row
    of the processing row before, kept here (``above``), or the last column of the band
    before (``left``: a column of each level above, over its height, one array a plane).
    ``right`` collects this region's own, for the band after (:meth:`columns`). On levels
    of even size the picks are each block's top-left pixel, inside the region."""

    def __init__(self, sizes: list[tuple[int, int]], tops: list[int], lefts: list[int],
                 left: list[tuple[np.ndarray, ...]] | None):
        self.sizes, self.tops, self.lefts, self.left = sizes, tops, lefts, left
        self.above: list[tuple[np.ndarray, ...]] = [() for _ in sizes]
        self.right: list[list[tuple[np.ndarray, ...]]] = [[] for _ in sizes]

    def reduce(self, i: int, planes: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Level i + 1 of the next rows of level i (the page for 0) fed, each plane (the
        pixels, a mask) taking the same pixels."""
        h, w = planes[0].shape[:2]
        (height, width), y, x = self.sizes[i], self.tops[i], self.lefts[i]
        rows = overview_picks(height, y // 2, (y + h + 1) // 2) - y
        cols = overview_picks(width, x // 2, (x + w + 1) // 2) - x
        if cols[0] < 0 and self.left is None:
            raise RuntimeError(f"level {i + 1}: a pick left of column {x} with no band "
                               "before it")
        # (only the first pick of each can be outside: -1, the row above, the column left;
        # picked inside, then those patched: no copy of the rows fed)
        inside_rows, inside_cols = np.maximum(rows, 0), np.maximum(cols, 0)
        out = []
        for j, plane in enumerate(planes):
            picked = plane[inside_rows][:, inside_cols]
            if rows[0] < 0:
                picked[0] = self.above[i][j][inside_cols]
            if cols[0] < 0:
                assert self.left is not None
                picked[:, 0] = self.left[i][j][y + rows]  # (the corner: the row above's)
            out.append(picked)
        self.above[i] = tuple(plane[-1].copy() for plane in planes)
        self.right[i].append(tuple(plane[:, -1].copy() for plane in planes))
        self.tops[i] += h
        return tuple(out)

    def columns(self) -> list[tuple[np.ndarray, ...]]:
        """The region's last column of each level above, over the height fed: the ``left``
        of the band after it."""
        return [tuple(np.concatenate(column) for column in zip(*strips, strict=True))
                for strips in self.right]


class RegionLevels:
    """The levels a unit builds, fed its processing rows of output pixels in order (and,
    ``masked``, their mask). ``left``: "nearest" levels, the last column of each level
    above of the band before (:class:`_Picks`; None: the first band, or a unit)."""

    def __init__(self, plan: JobPlan, page: int, unit_index: int, unit: SplitUnit,
                 encoder: OutputEncoder, method: str, count: int | None = None,
                 masked: bool = False, left: list[tuple[np.ndarray, ...]] | None = None):
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
        sizes = [(height, width), *level_shapes(height, width, self.t)][:self.count]
        self.picks = None if method != "nearest" else _Picks(
            sizes, [y0] + [level.y0 for level in self.levels[:-1]],
            [x0] + [level.x0 for level in self.levels[:-1]], left)
        self.frag = SegmentWriter(layout.segment_file(plan.work, page, fragment_name(unit_index)))
        self.planes: list[_Plane] = []
        try:  # (a plane that cannot open its writers: those opened before are discarded)
            self.planes.append(_Plane(plan, page, unit_index, self.count, "", encoder.encode))
            if masked:
                self.planes.append(_Plane(plan, page, unit_index, self.count, MASK_SEGMENT,
                                          encode_mask))
        except BaseException:
            self.abort()
            raise

    def add(self, strip: np.ndarray, valid: np.ndarray | None = None) -> None:
        """The next processing row of the region's output pixels (rows x width x channels),
        and (a masked region) their mask (rows x width, True where valid)."""
        planes = (strip,) if valid is None else (strip, valid)
        for i, level in enumerate(self.levels):
            if self.picks is not None:
                planes = self.picks.reduce(i, planes)
            else:
                cur = reduce2_pieces(planes[0], self.method, self.nodata, valid, self.t)
                valid = None if valid is None else reduce_mask(valid)
                planes = (cur,) if valid is None else (cur, valid)
            self._rows(level, planes)

    def _rows(self, level: _Level, rows: tuple[np.ndarray, ...]) -> None:
        level.rows.append(rows)
        level.held += rows[0].shape[0]
        t = self.t
        while level.held:
            end = min((level.start // t + 1) * t, level.y1)  # the tile row's end in the region
            if level.start + level.held < end:
                return
            blocks = [np.concatenate(plane, 0) if len(plane) > 1 else plane[0]
                      for plane in zip(*level.rows, strict=True)]
            n = end - level.start
            for plane, block in zip(self.planes, blocks, strict=True):
                self._cut(level, plane, block[:n])
            rest = tuple(block[n:] for block in blocks)
            level.rows = [rest] if len(rest[0]) else []
            level.held, level.start = len(rest[0]), end

    def _cut(self, level: _Level, plane: _Plane, block: np.ndarray) -> None:
        """Level rows [start, start + len(block)) of the region, one level tile row, of one
        plane: encode the tiles inside the region, keep fragments of the others."""
        t, k = self.t, level.k
        r = level.start // t
        ty0, ty1 = r * t, min((r + 1) * t, level.h)
        if k == self.count and self.deepest_needed:
            data = encode_work_tile(block)
            plane.blocks.append([level.start, level.x0, self.frag.write(data), len(data)])
        for c in range(level.x0 // t, ceil(level.x1 / t)):
            tx0, tx1 = c * t, min((c + 1) * t, level.w)
            ix0, ix1 = max(tx0, level.x0), min(tx1, level.x1)
            part = block[:, ix0 - level.x0:ix1 - level.x0]
            if (level.start, level.start + len(block), ix0, ix1) == (ty0, ty1, tx0, tx1):
                full = np.zeros((t, t, *part.shape[2:]), part.dtype)
                full[:part.shape[0], :part.shape[1]] = part
                data = plane.encode(full)
                plane.index[k - 1].append([r, c, plane.writers[k - 1].write(data), len(data)])
            else:
                data = encode_work_tile(part)
                plane.fragments.append([k, r, c, level.start - ty0, ix0 - tx0,
                                        self.frag.write(data), len(data)])

    def close(self) -> None:
        """Publish the level segments, the fragments and their index (``u{unit}_frag``)."""
        for level in self.levels:
            if level.held:
                raise RuntimeError(f"unit {self.unit}: level {level.k} rows {level.start}+"
                                   f"{level.held} were never cut into tiles")
        doc: dict[str, Any] = {"levels": self.count}
        for plane in self.planes:
            for k, writer in enumerate(plane.writers):
                writer.close()
                storage.write_json(layout.segment_index_file(
                    self.plan.work, self.page, plane.names[k]),
                    {"tiles": plane.index[k]}, indent=None)
            doc[plane.key + "fragments"], doc[plane.key + "blocks"] = plane.fragments, plane.blocks
        self.frag.close()
        storage.write_json(layout.segment_index_file(self.plan.work, self.page,
                                                     fragment_name(self.unit)), doc, indent=None)

    def abort(self) -> None:
        for writer in (*(w for plane in self.planes for w in plane.writers), self.frag):
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
           decoded: Iterable[np.ndarray], tail: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Output tile rows [r0, r0 + rows) of the region (its decoded tiles, row-major) as the
    region's pixels: rows x width (x ``tail``: the channels; none for a mask), cut at the
    page's edge. Each tile is copied in as ``decoded`` yields it (a pool's ``map``), so
    the row is held once, never also as a list of its tiles."""
    p, t = plan.pages[unit.page], plan.spec.output_options.tile
    y0, x0 = unit.row0 * p.out_grid.tile, unit.col0 * p.out_grid.tile
    top = y0 + r0 * t
    height = min(top + rows * t, p.out_grid.height) - top
    width = min(unit.col1 * p.out_grid.tile, p.out_grid.width) - x0
    strip = np.empty((height, width, *tail), dtype)
    for n, tile in enumerate(decoded):
        r, c = divmod(n, cols)
        part = tile.reshape(t, t, *tail)[:height - r * t, :width - c * t]
        strip[r * t:r * t + part.shape[0], c * t:c * t + part.shape[1]] = part
    return strip


def merge_band_levels(plan: JobPlan, page: int, table: TileTable, encoder: OutputEncoder,
                      method: str, mask: TileTable | None = None
                      ) -> tuple[list[TileTable], list[TileTable]]:
    """The levels of a turned page, or of one that carries its mask
    (:func:`~pipeline.core.levels.band_level_count`), built by merge as the units build
    theirs, band by band: each band of :data:`BAND_TILES` processing tiles of columns, the
    page's height, read from the base page's tiles (``table``; and ``mask``, its mask
    tiles' table) one processing row at a time, decoded and fed to a :class:`RegionLevels`
    (its segments named as unit ``n``'s: such a page's units write no level), then
    assembled by :func:`merge_unit_levels`: the levels' tables, and their masks' ([]
    without ``mask``). Memory: a processing row of a band and a tile row per level of a
    band, whatever the page's width; every base tile (and mask tile) is read and decoded
    once, as :class:`Pyramid` reads them, and reduced by the same functions, so the levels
    are the same."""
    p, t = plan.pages[page], plan.spec.output_options.tile
    g = p.out_grid
    per_row = g.tile // t  # output tile rows a processing row
    rows, cols = ceil(g.height / g.tile), ceil(g.width / g.tile)
    bands = [SplitUnit(page, 0, rows, c, min(c + BAND_TILES, cols))
             for c in range(0, cols, BAND_TILES)]
    count = band_level_count(plan, page)
    left = None  # ("nearest": the band before's last column of each level above)
    with ThreadPoolExecutor(tile_threads()) as pool:
        for n, band in enumerate(bands):
            c0, c1 = band.col0 * per_row, min(band.col1 * per_row, table.cols)
            columns = [None if tiles is None else
                       TileTable(c1 - c0, tiles.sources, tiles.segment[:, c0:c1],
                                 tiles.offset[:, c0:c1], tiles.size[:, c0:c1])
                       for tiles in (table, mask)]
            levels = RegionLevels(plan, page, n, band, encoder, method, count,
                                  mask is not None, left)
            _feed(levels, plan, band, columns[0], encoder, pool, columns[1])
            left = None if levels.picks is None else levels.picks.columns()
    return merge_unit_levels(plan, page, encoder, method, len(bands), mask is not None)


def _feed(levels: RegionLevels, plan: JobPlan, region: SplitUnit, tiles: TileTable,
          encoder: OutputEncoder, pool: ThreadPoolExecutor,
          masks: TileTable | None = None) -> None:
    """Feed ``levels`` the output tiles of ``region`` (``tiles``: where they are, row-major
    over the region; ``masks``: where their mask tiles are, a masked region), a processing
    row at a time, read in groups of neighbours (:meth:`TileTable.tile_bytes`) and decoded
    on ``pool``; close it (abort it on any error). A level unit's region, or a band of a
    turned or masked page's in merge."""
    try:
        p, t = plan.pages[region.page], plan.spec.output_options.tile
        per_row = p.out_grid.tile // t
        rows_of, cols = tiles.segment.shape[0], tiles.cols
        stream = tiles.tile_bytes()
        valid_stream = None if masks is None else masks.tile_bytes()
        for r0 in range(0, rows_of, per_row):
            stopping.check()
            rows = min(per_row, rows_of - r0)
            valid = None
            if valid_stream is not None:
                bits = pool.map(decode_mask, (next(valid_stream) for _ in range(rows * cols)),
                                repeat(t), repeat(t))
                valid = _strip(plan, region, r0, rows, cols, bits, (), bool)
            decoded = pool.map(encoder.decode, (next(stream) for _ in range(rows * cols)))
            levels.add(_strip(plan, region, r0, rows, cols, decoded, (p.out_channels,),
                              p.out_dtype), valid)
        levels.close()
    except BaseException:
        levels.abort()
        raise


def merge_unit_levels(plan: JobPlan, page: int, encoder: OutputEncoder, method: str,
                      bands: int = 0, masked: bool = False
                      ) -> tuple[list[TileTable], list[TileTable]]:
    """Merge's part of a page's unit-built levels: the tile tables of every level, and of
    their masks (a page that carries its mask; [] without). Shared tiles are assembled from
    their fragments into a ``border{k}`` (``border{k}_mask``) segment; the levels below the
    units' deepest are built from its blocks with :class:`Pyramid` (``deep/``).
    ``bands``: the levels were built by merge's bands (:func:`merge_band_levels`), that
    many, not by the page's units; ``masked``: with their masks (a masked page's bands)."""
    p, t = plan.pages[page], plan.spec.output_options.tile
    count = band_level_count(plan, page) if bands else unit_level_count(plan, page)
    units = list(range(bands)) if bands else plan.units_of(page)
    frag_urls = [layout.segment_file(plan.work, page, fragment_name(n)) for n in units]
    docs = [storage.read_json(layout.segment_index_file(plan.work, page, fragment_name(n)))
            for n in units]
    planes = [("", (p.out_channels,), np.dtype(p.out_dtype), encoder.encode)]
    if masked:
        planes.append((MASK_SEGMENT, (), np.dtype(bool), encode_mask))
    shapes = level_shapes(p.out_grid.height, p.out_grid.width, t)
    tables: list[list[TileTable]] = [[] for _ in planes]
    for k in range(1, count + 1):
        h, w = shapes[k - 1]
        for (suffix, tail, dtype, encode), out in zip(planes, tables, strict=True):
            names = [level_names(n, k) + suffix for n in units]
            border = layout.segment_file(plan.work, page, f"border{k}{suffix}")
            table = TileTable.empty(ceil(h / t), ceil(w / t),
                                    [layout.segment_file(plan.work, page, n) for n in names]
                                    + [border])
            for number, tiles in enumerate(read_indexes(plan.work, page, names)):
                table.fill(number, tiles)
            shared: dict[tuple[int, int], list[tuple[int, list[int]]]] = defaultdict(list)
            for u, doc in enumerate(docs):
                for frag in doc["mask_fragments" if suffix else "fragments"]:
                    if frag[0] == k:
                        shared[frag[1], frag[2]].append((u, frag))
            with SegmentWriter(border) as writer:
                for (r, c) in sorted(shared):
                    full = np.zeros((t, t, *tail), dtype)
                    for u, (_, _, _, dy, dx, offset, size) in shared[r, c]:
                        part = decode_work_tile(read_range(frag_urls[u], offset, size))
                        full[dy:dy + part.shape[0], dx:dx + part.shape[1]] = part
                    data = encode(full)
                    table.set(r, c, len(names), writer.write(data), len(data))
            table.check(f"page {p.info.index}, level {k}" + (" (its mask)" if suffix else ""))
            out.append(table)
    if count < len(shapes):
        deep, deep_masks = _deep_levels(plan, page, count, docs, frag_urls, encoder, method,
                                        masked)
        tables[0] += deep
        if masked:
            tables[1] += deep_masks
    return tables[0], tables[1] if masked else []


def _deep_levels(plan: JobPlan, page: int, count: int, docs: list[dict[str, Any]],
                 frag_urls: list[str], encoder: OutputEncoder, method: str,
                 masked: bool = False) -> tuple[list[TileTable], list[TileTable]]:
    """The levels below level ``count``, reduced from its pixels (the units' blocks), one
    tile row at a time; and (``masked``) their masks, from its mask's (``mask_blocks``)."""
    p, t = plan.pages[page], plan.spec.output_options.tile
    h, w = level_shapes(p.out_grid.height, p.out_grid.width, t)[count - 1]
    rows: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    mask_rows: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for u, doc in enumerate(docs):
        for block in doc["blocks"]:
            rows[block[0] // t].append((u, block))
        for block in doc.get("mask_blocks", []):
            mask_rows[block[0] // t].append((u, block))
    folder = storage.join(layout.levels_dir(plan.work, page), "deep")
    pyramid = Pyramid(h, w, p.out_channels, p.out_dtype, encoder, t, folder, method=method,
                      nodata=level_nodata(plan, page), masked=masked)

    def row_of(blocks: dict[int, list[tuple[int, list[int]]]], r: int,
               buffer: np.ndarray) -> np.ndarray:
        for u, (y, x, offset, size) in blocks.get(r, []):
            part = decode_work_tile(read_range(frag_urls[u], offset, size))
            buffer[y - r * t:y - r * t + part.shape[0], x:x + part.shape[1]] = part
        return buffer

    try:
        cols = ceil(w / t)
        for r in range(ceil(h / t)):
            buffer = row_of(rows, r, np.zeros((t, cols * t, p.out_channels), p.out_dtype))
            valid = row_of(mask_rows, r, np.zeros((t, cols * t), bool)) if masked else None
            for c in range(cols):
                pyramid.feed_pixels(buffer[:, c * t:(c + 1) * t], r, c,
                                    None if valid is None else valid[:, c * t:(c + 1) * t])
        levels = [TileTable.from_spans(level.cols, pyramid.spans(k))
                  for k, level in enumerate(pyramid.levels)]
        return levels, [TileTable.from_spans(level.cols, pyramid.mask_spans(k))
                        for k, level in enumerate(pyramid.levels)] if masked else []
    finally:
        pyramid.close()
