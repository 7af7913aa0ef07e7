"""Tile geometry of a page: processing tiles, their halos, split units and batches.

Pure module: integers in, integers out.
"""

from __future__ import annotations

from itertools import pairwise
from math import ceil

from pipeline.core.record import record


@record(frozen=True)
class Rect:
    """A half-open pixel rectangle [y0, y1) x [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def empty(self) -> bool:
        return self.y1 <= self.y0 or self.x1 <= self.x0

    def intersect(self, other: Rect) -> Rect:
        """The common part (possibly empty: check ``empty``)."""
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        return Rect(y0, x0, max(y0, min(self.y1, other.y1)), max(x0, min(self.x1, other.x1)))

    def relative_to(self, outer: Rect) -> Rect:
        """This rectangle in the coordinates of ``outer`` (which must contain it)."""
        return Rect(self.y0 - outer.y0, self.x0 - outer.x0, self.y1 - outer.y0, self.x1 - outer.x0)


@record(frozen=True)
class PageGrid:
    """The processing grid of one page: square tiles of ``tile`` pixels, each read with ``halo``."""

    height: int
    width: int
    tile: int
    halo: int

    @property
    def rows(self) -> int:
        return ceil(self.height / self.tile)

    @property
    def cols(self) -> int:
        return ceil(self.width / self.tile)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def position(self, index: int) -> tuple[int, int]:
        """(row, col) of the tile with row-major ``index``."""
        return divmod(index, self.cols)

    def core(self, row: int, col: int) -> Rect:
        """The pixels this tile produces (clipped at the page's edge; empty past it, which a
        downsampled grid has: see ``scaled``)."""
        y0, x0 = min(row * self.tile, self.height), min(col * self.tile, self.width)
        return Rect(y0, x0, min(y0 + self.tile, self.height), min(x0 + self.tile, self.width))

    def scaled(self, factor: int, halo: int = 0) -> PageGrid:
        """The same tiles on the page downsampled by ``factor`` (which divides the tile): the
        page is ``height // factor`` x ``width // factor`` and a tile ``tile // factor``. Tile
        (row, col) of this grid is tile (row, col) there; the last row or column may be empty."""
        return PageGrid(self.height // factor, self.width // factor, self.tile // factor, halo)

    def haloed(self, row: int, col: int) -> Rect:
        """The pixels this tile reads: the core grown by the halo, CLIPPED at the page border,
        so that each op applies its own border rule at the true edge."""
        return self.expand(self.core(row, col))

    def expand(self, rect: Rect, margin: int | None = None) -> Rect:
        """``rect`` grown by ``margin`` (default: the halo), clipped at the page border."""
        h = self.halo if margin is None else margin
        return Rect(max(rect.y0 - h, 0), max(rect.x0 - h, 0),
                    min(rect.y1 + h, self.height), min(rect.x1 + h, self.width))

    def span(self, row0: int, row1: int, col0: int, col1: int) -> Rect:
        """The core pixels of tiles rows [row0, row1) x cols [col0, col1)."""
        a, b = self.core(row0, col0), self.core(row1 - 1, col1 - 1)
        return Rect(a.y0, a.x0, b.y1, b.x1)


@record(frozen=True)
class SplitUnit:
    """What one split (or fused) invocation reads: tile rows [row0, row1) x cols [col0, col1)
    of a page."""

    page: int  # position in the job's page list
    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def tiles(self) -> int:
        return (self.row1 - self.row0) * (self.col1 - self.col0)

    def to_json(self) -> list[int]:
        return [self.page, self.row0, self.row1, self.col0, self.col1]

    @classmethod
    def from_json(cls, v: list[int]) -> SplitUnit:
        return cls(*v)


@record(frozen=True)
class Batch:
    """What one process invocation works on: tiles [first, last) (row-major) of a page."""

    page: int
    first: int
    last: int

    def to_json(self) -> list[int]:
        return [self.page, self.first, self.last]

    @classmethod
    def from_json(cls, v: list[int]) -> Batch:
        return cls(*v)


def split_units(page: int, grid: PageGrid, bytes_per_pixel: int, segment_rows: int,
                cache_budget: int, unit_pixels: int, segment_cols: int = 0,
                transposed: bool = False) -> list[SplitUnit]:
    """Cut a page into split units: bands of whole tile rows, cut into column chunks when needed.

    A unit sweeps its band downwards, holding at most about ``tile + 2 * halo + segment_rows``
    decoded rows of its width; bands are cut into column chunks so that this stays under
    ``cache_budget`` bytes, whatever the page's width. Chunks of a tiled input share only the
    input tiles their halos reach; chunks of a stripped input each decode the band's strips
    (a strip spans the page): the price of bounded memory on very wide stripped pages. A band
    holds about ``unit_pixels`` core pixels, which bounds an invocation's time; band heights
    are multiples of the input's segment rows where possible, so that neighbouring units
    share few segments (only the halo's), and chunk widths multiples of its tiles' width
    (``segment_cols``; 0: strips, which span the page) for the same reason.

    ``transposed``: the grid lies on the input page turned a quarter (``rotate`` 90 or 270):
    its columns are the input's rows. A unit is then one tile column of the grid (one band
    of the input's tile rows, its chunk of columns cut as above): its tiles come one per
    grid row, so a fused unit writes each output row as it comes, and the sweep of the band
    decodes each segment once. Segments taller than a tile (tall strips, a page in one
    strip, large tiles) make a unit as many columns wide as one spans, so that units do
    not decode a segment again each (a fused unit then holds its output rows until its
    last column: no more pixels than the segment rows its reader holds).
    """
    rows, cols = _unit_tiles(grid, bytes_per_pixel, segment_rows, cache_budget, unit_pixels,
                             segment_cols, transposed)
    return [SplitUnit(page, r, min(r + rows, grid.rows), c, min(c + cols, grid.cols))
            for r in range(0, grid.rows, rows) for c in range(0, grid.cols, cols)]


def split_unit_count(grid: PageGrid, bytes_per_pixel: int, segment_rows: int,
                     cache_budget: int, unit_pixels: int, segment_cols: int = 0,
                     transposed: bool = False) -> int:
    """How many units :func:`split_units` cuts the page into, without making them (a page
    whose header claims billions of tiles is refused without a list of them)."""
    rows, cols = _unit_tiles(grid, bytes_per_pixel, segment_rows, cache_budget, unit_pixels,
                             segment_cols, transposed)
    return -(-grid.rows // rows) * -(-grid.cols // cols)


def _unit_tiles(grid: PageGrid, bytes_per_pixel: int, segment_rows: int, cache_budget: int,
                unit_pixels: int, segment_cols: int = 0, transposed: bool = False
                ) -> tuple[int, int]:
    """(tile rows, tile columns) of a split unit of the page (see :func:`split_units`)."""
    if transposed:  # a band of the input's rows as it lies: grid columns
        _, cols = _unit_tiles(PageGrid(grid.width, grid.height, grid.tile, grid.halo),
                              bytes_per_pixel, segment_rows, cache_budget, unit_pixels,
                              segment_cols)
        # one tile column; as many as a segment taller than a tile spans (a page in one
        # strip: all of them), else each unit would decode it again
        return cols, min(grid.cols, max(1, -(-segment_rows // grid.tile)))
    per_col = rows_held(grid, segment_rows) * (grid.tile + 2 * grid.halo) * bytes_per_pixel
    cols = min(grid.cols, max(1, cache_budget // per_col))
    if segment_cols > grid.tile and segment_cols % grid.tile == 0 and cols < grid.cols:
        per_segment = segment_cols // grid.tile  # input tiles wider than a processing tile
        if cols >= per_segment:
            cols -= cols % per_segment
    chunk_width = min(cols * grid.tile, grid.width)
    rows = max(1, unit_pixels // (chunk_width * grid.tile))
    if segment_rows > grid.tile and segment_rows % grid.tile == 0:
        per_segment = segment_rows // grid.tile
        if rows >= per_segment:
            rows -= rows % per_segment
    return rows, cols


def rows_held(grid: PageGrid, segment_rows: int) -> int:
    """The decoded input rows a unit's sweep holds at most: a haloed tile row and the segment
    row that straddles its bottom (the page reader forgets the rows above)."""
    return grid.tile + 2 * grid.halo + segment_rows


def batches(page: int, grid: PageGrid, tiles_per_batch: int) -> list[Batch]:
    """Consecutive tile ranges of at most ``tiles_per_batch`` tiles."""
    n = max(1, tiles_per_batch)
    return [Batch(page, t, min(t + n, grid.count)) for t in range(0, grid.count, n)]


def columns_still_read(reads: list[Rect]) -> list[tuple[int, int] | None]:
    """What a downward sweep still reads after each of its ``reads`` (in order), above the
    band that follows: ``(x, below)``: the reads left need no pixel left of column ``x`` in
    the rows above ``below`` (the next band's first row; the last band: every row). None
    after a band's last read (:meth:`PageReader.forget_above` drops its rows then), and for
    every read if the reads do not go down (a band is the reads of one ``y0``, in a row: no
    later read may start higher). A reader of a page in strips, which span the page, drops
    the columns the sweep has passed: a wide band then holds one row of its strips, not
    two (the next band's strips are decoded ahead while the last tiles of a band are read)."""
    out: list[tuple[int, int] | None] = [None] * len(reads)
    if any(b.y0 < a.y0 for a, b in pairwise(reads)):
        return out
    below = max((r.y1 for r in reads), default=0)  # the last band's: every row
    left = 0
    for i in range(len(reads) - 2, -1, -1):
        after = reads[i + 1]
        if after.y0 > reads[i].y0:  # reads[i] ends its band
            below = after.y0
            continue
        band_ends = i + 2 == len(reads) or reads[i + 2].y0 > after.y0  # after it
        left = after.x0 if band_ends else min(left, after.x0)
        out[i] = (left, below)
    return out
