"""The layout of an op chain on a tiled page: scales, statistics rounds, margins, alignment.

- **Scale**: ``downsample`` shrinks the page; op i works on pixels ``scales[i]`` times
  smaller than the input's. Margins below are counted in the pixels of the op they start at.
- **Reach**: ``reach(start, stop, needed)`` is the margin of pixels around a tile that ops
  ``[start, stop)`` read to give exact output on the tile's core grown by ``needed``: for
  local ops it adds their halos; ``downsample`` multiplies by its factor; ``clahe`` rounds to
  whole cells.
- **Rounds**: each "stats" or "canny" op needs whole-page statistics of the pixels that reach
  it; round k gathers them for op ``rounds[k]`` (running ops before it on each tile), in
  chain order, so a later round sees the exact output of earlier global ops.
- **Segments**: after a ``canny``, tiles do not start from the input tiles of split but from
  the canny's labelled edges (pipeline.core.canny), read over the core grown by the margin the
  ops after it need. So split's halo covers the ops up to the first canny only.
- **Alignment**: crop origins are multiples of ``align`` input pixels: 16 at every scale
  (OpenCV's SIMD paths see the whole page's alignment), the clahe cell and the downsample
  factor at theirs. Tiles and halos are multiples of it.
- **Geometry**: ``rotate``, ``flip`` and ``crop`` come before any downsample, clahe or canny;
  the tiles are laid on the page they make (the *placed* page), so all of the above holds
  there, for the ops after the last of them; the ops up to it are run on the regions
  pipeline.core.geometry walks back to (``v_margin`` is the margin the ops after it need).

Pure module.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from math import lcm
from typing import Any

import numpy as np

from pipeline.core.geometry import PageGeometry, Placement, placed_size, placement
from pipeline.core.grid import PageGrid, Rect
from pipeline.core.models import JobPlan, PageInfo
from pipeline.core.ops import GLOBAL_KINDS, HALO_ALIGN, OpCall, chain_from_json


class ChainLayout:
    """The layout of ``calls`` on pages of ``dtype``. (A plain class: a dataclass's generated
    methods are compiled when the module is imported, and every run imports this one.)"""

    #: crop origins of the ops before the last geometric op are multiples of this, on the
    #: page each sees (pipeline.core.geometry)
    step = HALO_ALIGN

    def __init__(self, calls: tuple[OpCall, ...], dtype: np.dtype):
        self.calls, self.dtype = calls, dtype

    @classmethod
    def of(cls, calls: list[OpCall], dtype: np.dtype | str) -> ChainLayout:
        return cls(tuple(calls), np.dtype(dtype))

    @cached_property
    def scales(self) -> list[int]:
        """``scales[i]``: how many times smaller op i's input is than the page (len n + 1)."""
        out = [1]
        for call in self.calls:
            out.append(out[-1] * call.op.factor(call.params))
        return out

    @cached_property
    def dtypes(self) -> list[np.dtype]:
        """``dtypes[i]``: the sample type of op i's input (len n + 1: the output's last)."""
        out = [self.dtype]
        for call in self.calls:
            out.append(call.out_dtype(out[-1]))
        return out

    @property
    def factor(self) -> int:
        """How many times smaller the output page is."""
        return self.scales[-1]

    @cached_property
    def rounds(self) -> list[int]:
        """Indices of the ops that need a statistics round, in order."""
        return [i for i, c in enumerate(self.calls) if c.op.kind in GLOBAL_KINDS]

    @cached_property
    def cannies(self) -> list[int]:
        return [i for i, c in enumerate(self.calls) if c.op.kind == "canny"]

    @cached_property
    def align(self) -> int:
        """Crop origins, halos and tiles are multiples of this (input pixels)."""
        a = HALO_ALIGN * self.factor
        for call, scale in zip(self.calls, self.scales, strict=False):
            a = lcm(a, lcm(HALO_ALIGN, call.op.align(call.params)) * scale)
        return a

    def reach(self, start: int, stop: int, needed: int = 0) -> int:
        """The margin (in op ``start``'s pixels) ops [start, stop) need for exact output on
        the core grown by ``needed`` (in op ``stop``'s pixels)."""
        margin = needed
        for i in range(stop - 1, start - 1, -1):
            call = self.calls[i]
            margin = call.op.reach_for(call.params, self.dtypes[i], margin)
        return margin

    def aligned(self, margin: int, scale: int = 1) -> int:
        """``margin`` (pixels at ``scale``) rounded up to the alignment; 0 stays 0."""
        step = self.align // scale
        return -(-margin // step) * step

    @cached_property
    def last_geometric(self) -> int:
        """The index of the chain's last geometric op (rotate, flip, crop); -1: none."""
        return max((i for i, c in enumerate(self.calls) if c.op.geometry is not None),
                   default=-1)

    @property
    def v_margin(self) -> int:
        """The margin (on the placed page) of the ops after the last geometric one, up to the
        first canny, aligned: the whole chain's :attr:`split_halo` when it has none."""
        return self.aligned(self.reach(self.last_geometric + 1, self.stop_of_first_segment()))

    def source(self, upto: int) -> int | None:
        """The canny whose edges ops [.., upto) start from (None: the input tiles)."""
        before = [c for c in self.cannies if c < upto]
        return before[-1] if before else None

    def stop_of_first_segment(self) -> int:
        return self.cannies[0] + 1 if self.cannies else len(self.calls)

    @property
    def split_halo(self) -> int:
        """The halo of the input tiles split stores: the reach of the ops up to the first
        canny (or the whole chain), aligned. With geometric ops, a bound of how far a tile's
        input window (pipeline.core.geometry) reaches past its core: each op before the
        last geometric one adds its halo and the rounding of its region to :attr:`step`."""
        g = self.last_geometric
        if g < 0:
            return self.aligned(self.reach(0, self.stop_of_first_segment()))
        margin = self.v_margin
        for i, call in enumerate(self.calls[:g]):
            if call.op.geometry is None:
                halo = call.op.reach_for(call.params, self.dtypes[i], 0)
                margin += -(-halo // self.step) * self.step + self.step
        return self.aligned(margin)

    def margin_after(self, canny: int, upto: int, needed: int = 0) -> int:
        """The margin of canny edges (its pixels) that ops (canny, upto) need, aligned."""
        return self.aligned(self.reach(canny + 1, upto, needed), self.scales[canny])


def stats_rounds(plan: JobPlan) -> int:
    """How many statistics rounds a job needs: one per global op of its chain (the same for
    every page; 0 for a chain of local ops)."""
    if not plan.pages:
        return 0
    return len(ChainLayout.of(chain_from_json(plan.spec.ops), plan.pages[0].info.dtype).rounds)


def page_geometry(plan: JobPlan, page: int, layout: ChainLayout | None = None) -> PageGeometry:
    """The geometric part of the job's chain on page ``page`` (its position in the job):
    where each tile reads, in which order a unit's tiles are read
    (pipeline.core.geometry)."""
    pp = plan.pages[page]
    layout = layout or ChainLayout.of(chain_from_json(plan.spec.ops), pp.info.dtype)
    return PageGeometry(layout, pp.info.height, pp.info.width, pp.grid)


def page_placement(ops: list[dict[str, Any]], info: PageInfo) -> Placement | None:
    """What a chain's (its JSON) geometric ops do to a page, for its output's tags (None:
    the chain has none)."""
    return placement(chain_from_json(ops), info.height, info.width)


def input_window(calls: list[OpCall], dtype: np.dtype | str, height: int, width: int
                 ) -> Rect | None:
    """The region of a ``height`` x ``width`` input page of ``dtype`` that a job of the
    chain ``calls`` reads: None (the whole page) without a geometric op; else the window of
    the placed page as one tile (:meth:`PageGeometry.tile_read`: what the tiles' windows
    make together), walked back through the geometric ops (a rotate or flip before a crop
    moves its box) and grown by the halo of each op before the last of them (rounded out to
    ``HALO_ALIGN``, clipped at the page), as each unit's window is found. The ops after the
    last geometric one read within the placed page. ``PlanJob`` refuses a page cut short
    only where its segments in this window are lost
    (:func:`pipeline.adapters.tiff_read.check_segments_in_file`)."""
    layout = ChainLayout.of(list(calls), dtype)
    if layout.last_geometric < 0:
        return None
    (placed_h, placed_w), _ = placed_size(list(calls), height, width)
    grid = PageGrid(placed_h, placed_w, max(placed_h, placed_w, 1), 0)
    return PageGeometry(layout, height, width, grid).tile_read(0, 0)


def job_reads(ops: list[dict[str, Any]]) -> Callable[[int, int, str], Rect | None]:
    """The region of a page of (height, width, dtype) that a job of the op chain ``ops``
    (its JSON) reads (:func:`input_window`), as the reader's checks take it
    (:func:`pipeline.adapters.tiff_read.page_info`'s ``reads``)."""
    chain = chain_from_json(ops)
    return lambda height, width, dtype: input_window(chain, dtype, height, width)
