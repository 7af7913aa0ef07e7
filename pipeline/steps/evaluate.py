"""Run (a prefix of) a job's op chain on one tile, exactly: what stats and process share.

A tile's value after ops [0, upto) is computed on a region around its core: the haloed input
tile split stored, or, after a ``canny``, the canny's final edges assembled from the labels
of the tiles the region covers (pipeline.core.canny). Each op runs on the whole region; ops
that need whole-page statistics apply the state their statistics round reduced
(pipeline.core.stats). The margins (pipeline.core.chain) make the core exact.

What only a canny needs (pipeline.core.canny_tree) is imported where it is used: every run
imports this module within its time, and most never run a canny.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from math import ceil
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.metadata import band_scaling
from pipeline.adapters.tile_codec import decode_work_tile
from pipeline.core import canny as canny_mod
from pipeline.core.chain import ChainLayout, page_geometry
from pipeline.core.grid import PageGrid, Rect
from pipeline.core.models import JobPlan, PagePlan
from pipeline.core.nodata import nodata_at
from pipeline.core.op_functions import canny_blur
from pipeline.core.ops import (
    chain_bands,
    chain_from_json,
    chain_keeps_values,
    chain_linear,
    with_nodata,
)
from pipeline.core.plan import masked_out_white
from pipeline.errors import (
    CustomOperationError,
    OperationError,
    OutOfMemoryError,
    WorkMissingError,
)
from pipeline.steps import layout
from pipeline.steps.common import tile_threads
from pipeline.steps.masks import MaskReader, reduced

if TYPE_CHECKING:
    from pipeline.core.canny_tree import Node

State = dict[str, np.ndarray]

#: the value a 1-bit output page's masked-out pixels take (:meth:`TileEvaluator.output`):
#: white, stored as bit 0 in the miniswhite page, the value GDAL reads there (as it fills
#: what no data covers with 0) and no ink on paper
MASKED_OUT_BILEVEL = 255


def save_npz(url: str, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.write_bytes(url, buf.getvalue())


def load_npz(url: str) -> State:
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_part(url: str, missing: str) -> State:
    """:func:`load_npz` of statistics another task wrote: where they are missing, the
    :class:`WorkMissingError` says ``missing`` too (whose they are, which task to look at)."""
    try:
        return load_npz(url)
    except WorkMissingError as exc:
        raise WorkMissingError(f"{exc}: {missing}") from exc


@functools.lru_cache(maxsize=32)
def load_state(url: str) -> State:
    """A page's reduced statistics; cached, since a warm worker serves many tiles of a page."""
    return load_npz(url)


@functools.lru_cache(maxsize=64)
def load_down(url: str) -> State:
    """A canny reduce tree node's ``down`` arrays; cached: a batch's tiles share ancestors."""
    return load_npz(url)


@functools.lru_cache(maxsize=8)
def page_tree(rows: int, cols: int, bound: int) -> list[Node]:
    from pipeline.core import canny_tree  # canny rounds only (see the module's docstring)

    return canny_tree.tree(rows, cols, bound)


class TileEvaluator:
    """Evaluates the chain of one page of a job, tile by tile."""

    def __init__(self, plan: JobPlan, page: int):
        self.plan = plan
        self.page_pos = page
        self.page: PagePlan = plan.pages[page]
        ops = plan.spec.ops
        info = self.page.info
        self.chain = with_nodata(
            chain_from_json(ops),
            lambda i: nodata_at(info, ops, i),
            lambda i: band_scaling(info, chain_bands(ops[:i], info.channels),
                                   chain_keeps_values(ops[:i]), chain_linear(ops[:i], info.dtype)))
        self.layout = ChainLayout.of(self.chain, self.page.info.dtype)
        self.geometry = page_geometry(self.plan, page, self.layout)
        self._labels: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._kept: dict[tuple[int, int, int], np.ndarray] = {}
        self._mask: MaskReader | None = None  # made by the first tile that reads the mask
        #: a 1-bit output page that carries its mask: its masked-out pixels are written white
        self.masked_out_white = masked_out_white(self.page)
        self._mask_lock = threading.Lock()  # (its tiles' threads ask for it at once)

    # --- geometry ---------------------------------------------------------------------

    def grid(self, scale: int) -> PageGrid:
        return self.page.grid if scale == 1 else self.page.grid.scaled(scale)

    def core(self, row: int, col: int, position: int) -> Rect:
        """The core of a tile in the pixels of op ``position`` (len(chain): the output)."""
        if position <= self.geometry.last:  # on a page before the geometric ops' last
            return self.geometry.core_at(row, col, position)
        return self.grid(self.layout.scales[position]).core(row, col)

    # --- inputs -------------------------------------------------------------------------

    def input_tile(self, row: int, col: int) -> np.ndarray:
        url = layout.tile_file(self.plan.work, self.page_pos, row, col)
        return decode_work_tile(storage.read_bytes(url), url)

    def state(self, position: int) -> State:
        k = self.layout.rounds.index(position)
        return load_state(layout.stats_file(self.plan.work, k, self.page_pos))

    def labels(self, round_: int, row: int, col: int) -> np.ndarray:
        key = (round_, row, col)
        if key in self._labels:
            self._labels.move_to_end(key)
        else:
            url = layout.labels_file(self.plan.work, round_, self.page_pos, row, col)
            self._labels[key] = decode_work_tile(storage.read_bytes(url), url)
            while len(self._labels) > 16:  # a batch's row of tiles and their neighbours
                self._labels.popitem(last=False)
        return self._labels[key]

    def edges(self, canny: int, rect: Rect) -> np.ndarray:
        """The final edges of the canny at position ``canny`` over ``rect`` (its pixels)."""
        k = self.layout.rounds.index(canny)
        grid = self.grid(self.layout.scales[canny])
        out = np.zeros((rect.height, rect.width), np.uint8)
        for row in range(rect.y0 // grid.tile, min(grid.rows, ceil(rect.y1 / grid.tile))):
            for col in range(rect.x0 // grid.tile, min(grid.cols, ceil(rect.x1 / grid.tile))):
                core = grid.core(row, col)
                part = core.intersect(rect)
                if part.empty:
                    continue
                a, b = part.relative_to(rect), part.relative_to(core)
                labels = self.labels(k, row, col)[b.y0:b.y1, b.x0:b.x1]
                out[a.y0:a.y1, a.x0:a.x1] = canny_mod.edges(labels, self.kept(k, row, col))
        return out

    def kept(self, round_: int, row: int, col: int) -> np.ndarray:
        """The weak labels of a tile that the canny of round ``round_`` keeps: resolved up its
        leaf's and ancestors' nodes of the round's reduce tree (pipeline.core.canny_tree)."""
        key = (round_, row, col)
        if key not in self._kept:
            from pipeline.core import canny_tree  # canny rounds only

            work, page = self.plan.work, self.page_pos
            bound = int(load_state(layout.stats_file(work, round_, page))["bound"][0])
            g = self.page.grid
            nodes = page_tree(g.rows, g.cols, bound)
            downs = [load_down(layout.tree_file(work, round_, page, i, "down"))
                     for i in canny_tree.path(nodes, row, col)]
            self._kept[key] = canny_tree.kept_labels(row * g.cols + col, downs)
        return self._kept[key]

    # --- evaluation ---------------------------------------------------------------------

    def value(self, row: int, col: int, upto: int, needed: int = 0,
              haloed: np.ndarray | None = None) -> tuple[np.ndarray, Rect]:
        """Ops [0, upto) on a region around tile (row, col): (array, its rect in the pixels of
        op ``upto``), exact on the core grown by ``needed``. ``haloed``: the tile's haloed
        input pixels, when the caller read them (a fused unit); else its stored work tile."""
        source = self.layout.source(upto)
        geo = self.geometry
        if source is None and geo.last >= 0:  # the ops up to the last geometric one
            arr = self.input_tile(row, col) if haloed is None else haloed
            start = min(upto, geo.last + 1)
            target = geo.placed(row, col) if upto > geo.last else geo.core_at(row, col, upto)
            arr, rect = geo.forward(arr, geo.tile_read(row, col), target, start,
                                    lambda i, a, r: self._apply(i, a, r, row, col))
        elif source is None:
            arr = self.input_tile(row, col) if haloed is None else haloed
            rect, start = self.page.grid.haloed(row, col), 0
        else:
            margin = self.layout.margin_after(source, upto, needed)
            grid = self.grid(self.layout.scales[source])
            rect = grid.expand(grid.core(row, col), margin)
            arr, start = self.edges(source, rect), source + 1
        for i in range(start, upto):
            arr, rect = self._apply(i, arr, rect, row, col)
        return arr, rect

    def _apply(self, i: int, arr: np.ndarray, rect: Rect, row: int,
               col: int) -> tuple[np.ndarray, Rect]:
        op, p = self.chain[i].op, self.params(i, rect)
        try:
            if op.kind == "stats":
                out = op.stats.apply(arr, p, self.state(i))
            else:
                out = op.apply(arr, p)
        except (CustomOperationError, OutOfMemoryError) as exc:  # (a custom op's) where
            raise type(exc)(f"{self.plan.spec.input}: tile {row},{col} of page "
                            f"{self.page.info.index}: {exc}") from exc
        if out.dtype != self.layout.dtypes[i + 1]:
            out = out.astype(self.layout.dtypes[i + 1])
        f = op.factor(p)
        if f != 1:
            rect = Rect(rect.y0 // f, rect.x0 // f, rect.y0 // f + out.shape[0],
                        rect.x0 // f + out.shape[1])
        elif out.shape[:2] != arr.shape[:2]:
            raise OperationError(f"ops[{i}] ({op.name}) returned a {out.shape} tile for a "
                                 f"{arr.shape} input (tile {row},{col} of page "
                                 f"{self.page.info.index}); ops must keep the tile size")
        return out, rect

    def params(self, i: int, rect: Rect) -> dict[str, Any]:
        """Op ``i``'s parameters for its pixels over ``rect``: with the page's carried mask
        there (``input_valid``, :meth:`valid`) when the op reads it and the page has one."""
        call = self.chain[i]
        if call.op.reads_mask and self.page.info.mask_ifd:
            return {**call.params, "input_valid": self.valid(i, rect)}
        return call.params

    def valid(self, i: int, rect: Rect) -> np.ndarray:
        """The page's carried mask over ``rect`` (in op ``i``'s pixels): after the geometric
        ops, the placed page's, reduced by the downsamples before op i as merge writes the
        output's (valid where any pixel of the block is); before the last geometric op (a
        blur before a rotate), the page op i gets, moved by the geometric ops before it."""
        if i <= self.geometry.last:  # (no downsample comes before a geometric op)
            return self.mask_reader().valid(self.geometry.back(rect, 0, i), i)
        s = self.layout.scales[i]
        placed = Rect(rect.y0 * s, rect.x0 * s, rect.y1 * s, rect.x1 * s)
        valid = self.mask_reader().valid(self.geometry.back(placed, 0))
        return valid if s == 1 else reduced(valid, rect, s)

    def mask_reader(self) -> MaskReader:
        """The page's mask reader for this evaluator's tiles (a unit's or batch's), made on
        first use and closed by :meth:`close`: the input opened once, each mask segment
        decoded once while the tiles near it read it. Its cache keeps the segments of the
        reads of about one row of tiles (the longer side of the grid: the order the tiles
        come in differs by step) and of the tiles in flight, so memory stays about a row of
        tiles whatever the unit's size."""
        if self._mask is None:
            with self._mask_lock:
                if self._mask is None:
                    # (a fused unit sweeps the input's rows, a page the chain transposes
                    # along its columns; batches and stats go by the placed grid's rows:
                    # the longer of the two keeps either's reuse)
                    g = self.page.grid
                    row = max(g.rows, g.cols)
                    reads = sum(1 for c in self.chain if c.op.reads_mask)  # per tile
                    reads += self.masked_out_white  # (the output's, :meth:`output`)
                    self._mask = MaskReader(self.plan, self.page_pos, self.geometry,
                                            recent=reads * (row + 2 * tile_threads() + 1))
        return self._mask

    def close(self) -> None:
        """Close what the tiles kept open (the mask reader's input), at the unit's end."""
        if self._mask is not None:
            self._mask.close()

    def crop(self, arr: np.ndarray, rect: Rect, target: Rect) -> np.ndarray:
        r = target.relative_to(rect)
        return arr[r.y0:r.y1, r.x0:r.x1]

    def output(self, row: int, col: int,
               haloed: np.ndarray | None = None) -> tuple[np.ndarray, Rect]:
        """The chain's output pixels of a tile and where they go on the output page
        (``haloed``: see :meth:`value`). On a 1-bit output page that carries its mask, the
        pixels the output's mask leaves out (:meth:`valid`, as merge writes it) are
        :data:`MASKED_OUT_BILEVEL`, whatever the ops made of their fill: a 1-bit page holds
        black and white only, and the mask marks those pixels as no data anyway (the ops
        that write them back as they are would leave a gray fill there)."""
        n = len(self.chain)
        arr, rect = self.value(row, col, n, haloed=haloed)
        core = self.core(row, col, n)
        out = self.crop(arr, rect, core)
        if self.masked_out_white and out.size:
            valid = self.valid(n, core).reshape(out.shape[:2] + (1,) * (out.ndim - 2))
            out = np.where(valid, out, out.dtype.type(MASKED_OUT_BILEVEL))
        return out, core

    def canny_labels(self, row: int, col: int, position: int) -> np.ndarray:
        """The labelled weak edges of a tile's core for the canny at ``position``."""
        call = self.chain[position]
        needed = call.op.reach_for(call.params, self.layout.dtypes[position], 0)
        arr, rect = self.value(row, col, position, needed)
        weak, strong = canny_mod.local_maps(arr, self.params(position, rect), canny_blur)
        core = self.core(row, col, position)
        return canny_mod.label_core(self.crop(weak, rect, core), self.crop(strong, rect, core))


