"""Reduced-resolution levels of an output page, built while merge streams the page.

Merge only has the ENCODED output tiles of the base page. :class:`Pyramid` decodes each one
as tifffile writes it (so a JPEG pyramid is built from the lossy pixels a viewer sees), and
reduces it at once into level 1; every level, when one of its tile rows is complete, encodes
that row's tiles with the page's :class:`OutputEncoder`, appends them to its segment in the
work location (``level{k}``, a :class:`~pipeline.adapters.segments.SegmentWriter`), and
reduces the row's pixels into the next level. Merge then places each level's tiles from its
segment (:meth:`Pyramid.spans`) as a SubIFD of the base page, or a page after it
(``output_options.pyramid_layout``).

Level k has ``ceil(h / 2) x ceil(w / 2)`` pixels of level k - 1 (``h x w``); levels go down
until a level fits in one output tile. Pixel (y, x) of level k is the mean of the pixels of
level k - 1 in rows 2y, 2y + 1 and columns 2x, 2x + 1 that exist (4 inside the page, 2 on
an odd last row or column, 1 at an odd corner); with n such pixels summing to s:

- integers: ``(s + n // 2) // n`` (floor division; inside the page
  ``(a + b + c + d + 2) // 4``), computed without overflow;
- floats: ``s / n`` in float64 (``s`` summed in the order ``((p00 + p10) + p01) + p11``
  of the pixels present), cast to the page's dtype;
- ``output_options.pyramid_resampling`` "nearest": the pixel GDAL's nearest overviews
  (``gdaladdo -r nearest``, a palette COG's) take, ``level[y, x] = prev[py(y), px(x)]``
  with :func:`pipeline.core.reduce.overview_picks`: the block's top-left pixel where the
  level above has an even number of rows (columns), else, past half way, the pixel above
  (left of) the block. No-data and masked-out pixels too, as GDAL: no pixel is left out;
- palette pages (the samples are colour-map indices, whose mean means nothing), and gray
  class maps whose ColorMap the output keeps: "nearest" (with ``pyramid_resampling``
  "mean", the default; another method is taken as it is, the no-data index left out as a
  gray page's no-data value);
- ``output_options.pyramid_resampling`` "mode", "min" or "max" (class labels, bit masks):
  one sample of the block's pixels present and valid, as
  :func:`pipeline.core.reduce.block_pick` picks it (the no-data value where none is
  valid), so a level's pixel is one of the page's values, never a mix;
- a page whose output keeps a no-data value (GDAL_NODATA, :func:`level_nodata`): each sample
  the same formula over the pixels present whose sample is not that value (not NaN for
  NaN), the value itself where there is none, as GDAL's average overviews leave no-data
  out: a mean of no-data and data would be neither, and GDAL, QGIS would show it as data;
- a page that carries its internal mask (``masked``, :mod:`pipeline.steps.masks`): each
  level has a mask too, valid where any of the block's pixels present is valid ("nearest":
  where the pixel it takes is), and the pixels' means (or
  picks) leave the masked-out pixels out as they leave no-data out, 0 (or the no-data
  value) where none is valid: what GDAL's ``gdaladdo -r average`` (``-r nearest``) makes
  of a page with an internal mask (docs/outputs.md, "Masks of the levels").

Memory: the decoded base tiles in flight (one; ``2 * threads`` with threads), plus one tile
row buffer per level (``tile x ceil(w_k / tile) * tile`` pixels each: together about one tile
row of the base page), and one multipart part per level being uploaded (S3); encoded level
tiles go to their segments, never to local disk.

Threads: with ``threads > 1`` base tiles (and their mask tiles) are decoded ahead, and
each level row's tiles are encoded, in a thread pool (the codecs release the GIL); the
pixels are reduced in tile order all the same, so the levels are the same bytes whatever
the number of threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from math import ceil

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.segments import SegmentWriter, read_range
from pipeline.adapters.tile_codec import OutputEncoder, decode_mask, encode_mask
from pipeline.core.levels import level_method, level_shapes
from pipeline.core.models import JobPlan
from pipeline.core.nodata import nodata_at
from pipeline.core.reduce import WIDE, block_pick, masked_mean, mean4, overview_picks
from pipeline.core.tiff_layout import Span

__all__ = ["Pyramid", "level_method", "level_nodata", "reduce2", "reduce_mask"]


def level_nodata(plan: JobPlan, page: int) -> float | None:
    """The no-data value of output page ``page``, the one its GDAL_NODATA tag carries (None:
    none; a kept palette's is an index), which its levels leave out of their means and of
    the picks of ``mode``, ``min`` and ``max`` (:func:`reduce2`). A "nearest" level
    (``pyramid_resampling`` "nearest", and the default "mean" of a page of indices, a
    palette's: :func:`level_method`) takes the sample its block's pick falls on, no-data or
    not, as GDAL's nearest overviews do."""
    return nodata_at(plan.pages[page].info, plan.spec.ops)



def reduce2_pieces(block: np.ndarray, method: str, nodata: float | None,
                   valid: np.ndarray | None, size: int) -> np.ndarray:
    """:func:`reduce2` of ``block`` (and its mask ``valid``), ``size`` x ``size`` pieces at a
    time (``size`` even, so each 2 x 2 block lies in one piece and an odd last row or
    column is the block's own): the same values, with temporaries of a piece (a masked or
    float mean works in float64: over a band's processing row of RGB, 1,024 x 8,192, that
    was 200 MB a copy), and a masked page's pieces all valid or none reduced without
    counting (:func:`reduce2`), as merge's :class:`Pyramid` reduces them tile by tile. An
    unmasked integer mean without no-data, of even sizes, is reduced whole: its temporaries
    are its sums in the wide type, a quarter of the samples. Not "nearest": past half way
    across a level of odd size its picks lie outside their block (those
    :class:`pipeline.steps.unit_levels._Picks` takes; :func:`reduce2` refuses it)."""
    h, w = block.shape[:2]
    if (h <= size and w <= size) or (
            method == "mean" and valid is None and nodata is None and block.dtype.kind in "iu"
            and not h % 2 and not w % 2):  # (no float temporaries, nor an edge's copy)
        return reduce2(block, method, nodata, valid)
    out: np.ndarray | None = None
    for y in range(0, h, size):
        for x in range(0, w, size):
            piece = reduce2(block[y:y + size, x:x + size], method, nodata,
                            None if valid is None else valid[y:y + size, x:x + size])
            if out is None:
                out = np.empty(((h + 1) // 2, (w + 1) // 2) + piece.shape[2:], piece.dtype)
            out[y // 2:y // 2 + piece.shape[0], x // 2:x // 2 + piece.shape[1]] = piece
    assert out is not None
    return out


def reduce2(block: np.ndarray, method: str = "mean", nodata: float | None = None,
            valid: np.ndarray | None = None) -> np.ndarray:
    """The 2x2 reduction of ``block`` (h, w, c), rows of a level, by ``method`` (one of
    :data:`pipeline.core.reduce.METHODS` but "nearest", whose picks past half way across a
    level of odd size lie outside their block: :class:`_Edge`, and the bands'
    :class:`pipeline.steps.unit_levels._Picks`, take those): see the module docstring for
    the formula.
    ``nodata``: the samples of that value (NaN too) are left out of the means; ``valid``
    (h, w, bool): the block's mask, whose invalid pixels are left out too.

    Integers: an odd last row or column is repeated, so the mean of 4 equals the mean of the
    pixels present, rounding included (``(2s + 2) // 4 == (s + 1) // 2``,
    ``(4a + 2) // 4 == a``). Floats: the missing pixels are -0.0 (``v + -0.0`` is ``v``,
    zeros' signs and NaN included), so ``s`` is the sum of the pixels present in the block's
    order, divided by their count.
    """
    assert method != "nearest", "reduce2: 'nearest' of an odd size picks outside a piece"
    if method != "mean":
        return block_pick(block, 2, method, nodata, valid)
    if valid is not None and nodata is None:  # a masked page without no-data: most of its
        if not valid.any():  # blocks are all valid or none (its inside, its collar), which
            h, w = block.shape[:2]  # need no count of the pixels left out
            return np.zeros(((h + 1) // 2, (w + 1) // 2) + block.shape[2:], block.dtype)
        if valid.all():
            valid = None
    if nodata is not None or valid is not None:
        return masked_mean(block, 2, nodata, valid)
    h, w = block.shape[:2]
    if block.dtype.kind == "f":
        return masked_mean(block, 2)  # (floats: the pixels present, -0.0 for the others)
    if h % 2 or w % 2:
        block = np.concatenate([block, block[-1:]], 0) if h % 2 else block
        block = np.concatenate([block, block[:, -1:]], 1) if w % 2 else block
    if block.dtype.str[1:] not in WIDE:  # 64-bit integers: exact in their own type
        return mean4(block[0::2, 0::2], block[1::2, 0::2], block[0::2, 1::2], block[1::2, 1::2])
    s = block[0::2, 0::2].astype(WIDE[block.dtype.str[1:]])
    s += block[1::2, 0::2]
    s += block[0::2, 1::2]
    s += block[1::2, 1::2]
    s += 2
    return (s // 4).astype(block.dtype)


def reduce_mask(valid: np.ndarray) -> np.ndarray:
    """The 2x2 reduction of a mask (h, w, bool): valid where any pixel of the block present
    is, as GDAL reduces a mask's overviews (a "nearest" level's mask takes the bit of the
    pixel it takes: :class:`_Level`)."""
    h, w = valid.shape
    v = np.zeros((h + h % 2, w + w % 2), bool)
    v[:h, :w] = valid
    return v[0::2, 0::2] | v[1::2, 0::2] | v[0::2, 1::2] | v[1::2, 1::2]


class _Edge:
    """What "nearest" (:func:`pipeline.core.reduce.overview_picks`) of a level above with an
    odd number of rows or columns takes from outside a block: the last row of the previous
    tile row (its whole width), the last column of the previous block of the tile row."""

    def __init__(self) -> None:
        self.row_y = -1  # the tile row ``row`` is being filled from
        self.row: np.ndarray | None = None
        self.above: np.ndarray | None = None  # the previous tile row's last row
        self.column: np.ndarray | None = None

    def pick(self, block: np.ndarray, y: int, x: int, rows: np.ndarray, cols: np.ndarray,
             width: int) -> np.ndarray:
        """``block`` (at (y, x) of a level ``width`` wide) at ``rows`` x ``cols`` (from the
        block's top-left corner: -1, the row or column before it); then keep its edges."""
        if y != self.row_y:
            self.above, self.row, self.row_y = self.row, self.above, y
        h, w = block.shape[:2]
        if rows[0] < 0 or cols[0] < 0:
            ext = np.empty((h + 1, w + 1) + block.shape[2:], block.dtype)
            ext[1:, 1:] = block
            if rows[0] < 0:
                assert self.above is not None
                ext[0, 1:] = self.above[x:x + w]
                if cols[0] < 0:
                    ext[0, 0] = self.above[x - 1]
            if cols[0] < 0:
                ext[1:, 0] = self.column
            out = ext[rows + 1][:, cols + 1]
        else:
            out = block[rows][:, cols]
        if self.row is None:
            self.row = np.empty((width,) + block.shape[2:], block.dtype)
        self.row[x:x + w] = block[-1]
        self.column = block[:, -1].copy()
        return out


class _Level:
    """One reduced level: a tile row buffer, and the segment of its encoded tiles; with a
    mask, the mask's too (``level{k}_mask.seg``). ``above``: the size of the level above."""

    def __init__(self, height: int, width: int, channels: int, dtype: str, tile: int,
                 url: str, masked: bool = False, above: tuple[int, int] = (0, 0)) -> None:
        self.height, self.width, self.tile = height, width, tile
        self.above = above
        self.picks = (overview_picks(above[0]), overview_picks(above[1]))
        self.edges = (_Edge(), _Edge())  # (the pixels', the mask's)
        self.cols = ceil(width / tile)
        self.buffer = np.zeros((tile, self.cols * tile, channels), dtype)
        self.row = 0  # the tile row being filled
        self.url = url
        self.segment = SegmentWriter(url)
        self.sizes: list[int] = []
        self.done = False
        self.mask: np.ndarray | None = None
        self.mask_url, self.mask_sizes = url.removesuffix(".seg") + "_mask.seg", []
        if masked:
            self.mask = np.zeros((tile, self.cols * tile), bool)
            self.mask_segment = SegmentWriter(self.mask_url)

    def add(self, block: np.ndarray, y: int, x: int, method: str,
            nodata: float | None, valid: np.ndarray | None = None) -> None:
        """Reduce ``block``, the pixels of the level above at (y, x) (both even), and
        ``valid``, their mask (None: the page has none)."""
        if method == "nearest":  # (its picks: by the block's place in the level above)
            h, w = block.shape[:2]
            rows = self.picks[0][y // 2:y // 2 + -(-h // 2)] - y
            cols = self.picks[1][x // 2:x // 2 + -(-w // 2)] - x
            small = self.edges[0].pick(block, y, x, rows, cols, self.above[1])
            valid = None if valid is None else \
                self.edges[1].pick(valid, y, x, rows, cols, self.above[1])
        else:
            small = reduce2(block, method, nodata, valid)
            valid = None if valid is None else reduce_mask(valid)
        top = y // 2 - self.row * self.tile
        self.buffer[top:top + small.shape[0], x // 2:x // 2 + small.shape[1]] = small
        if self.mask is not None and valid is not None:
            self.mask[top:top + small.shape[0], x // 2:x // 2 + small.shape[1]] = valid

    def complete(self, above_rows: int) -> bool:
        """True when the level above, complete down to row ``above_rows``, fills this level's
        current tile row."""
        return ceil(above_rows / 2) >= min((self.row + 1) * self.tile, self.height)


class Pyramid:
    """The reduced levels of one output page of ``height`` x ``width``, fed its base tiles;
    level k's segment is ``level{k}.seg`` under ``folder`` (a local folder or S3 prefix).
    ``masked``: the page carries its internal mask, fed with each tile; level k's mask
    tiles go to ``level{k}_mask.seg`` (:meth:`mask_spans`)."""

    def __init__(self, height: int, width: int, channels: int, dtype: str,
                 encoder: OutputEncoder, tile: int, folder: str, *, method: str = "mean",
                 nodata: float | None = None, threads: int = 1, masked: bool = False):
        self.height, self.width, self.channels, self.dtype = height, width, channels, dtype
        self.encoder, self.tile, self.method = encoder, tile, method
        self.nodata = nodata  # (see level_nodata)
        self.cols = ceil(width / tile)
        self.shapes = level_shapes(height, width, tile)
        self.levels: list[_Level] = []
        self.decoded = 0  # base tiles decoded
        self._pool = ThreadPoolExecutor(threads) if threads > 1 and self.shapes else None
        #: base tiles being decoded ahead: ((decoded pixels, mask), row, col), in feeding order
        self._ahead: deque[tuple[Future[tuple[np.ndarray, np.ndarray | None]], int, int]] = \
            deque()
        self.max_ahead = 2 * threads if self._pool else 1
        #: tiles' worth of pixels held at once (instrumentation): the level buffers and the
        #: decoded base tiles in flight; fixed when the levels are made
        self.held_tiles = 0
        try:
            for k, (h, w) in enumerate(self.shapes):
                self.levels.append(_Level(h, w, channels, dtype, tile,
                                          storage.join(folder, f"level{k + 1}.seg"), masked,
                                          ([(height, width)] + self.shapes)[k]))
        except BaseException:
            self.close()
            raise
        self.held_tiles = sum(level.cols for level in self.levels) + self.max_ahead

    def feed(self, data: bytes, row: int, col: int, mask: bytes | None = None) -> None:
        """The encoded base tile at output tile (row, col), in row-major order, and (a
        masked pyramid) its mask tile's."""
        if not self.levels:
            return
        if self._pool is None:
            pixels, valid = self._decode(data, mask)
            self._reduce(pixels, row, col, valid)
            return
        self._ahead.append((self._pool.submit(self._decode, data, mask), row, col))
        if len(self._ahead) >= self.max_ahead:
            self._reduce_next()

    def _decode(self, data: bytes, mask: bytes | None) -> tuple[np.ndarray, np.ndarray | None]:
        """A base tile's pixels, and (a masked pyramid) its mask tile's valid pixels: both
        decoded in the pool's thread (as the page's tiles, the mask tiles are inflated with
        the GIL released), not in the thread that feeds the tiles."""
        t = self.tile
        return self.encoder.decode(data), None if mask is None else decode_mask(mask, t, t)

    def feed_pixels(self, pixels: np.ndarray, row: int, col: int,
                    valid: np.ndarray | None = None) -> None:
        """The pixels (tile x tile x channels, zero-padded) of tile (row, col), in row-major
        order, and (a masked pyramid) their mask (tile x tile): for levels built from a
        level's pixels rather than encoded tiles."""
        if self.levels:
            self.finish()
            self._reduce(pixels, row, col, valid)

    def finish(self) -> None:
        """Reduce the base tiles still being decoded (every tile has been fed)."""
        while self._ahead:
            self._reduce_next()

    def _reduce_next(self) -> None:
        future, row, col = self._ahead.popleft()
        pixels, valid = future.result()
        self._reduce(pixels, row, col, valid)

    def _reduce(self, pixels: np.ndarray, row: int, col: int,
                valid: np.ndarray | None = None) -> None:
        t = self.tile
        self.decoded += 1
        vh, vw = min(t, self.height - row * t), min(t, self.width - col * t)
        self.levels[0].add(pixels[:vh, :vw], row * t, col * t, self.method, self.nodata,
                           None if valid is None else valid[:vh, :vw])
        if col == self.cols - 1:
            self._rows_done(0, min((row + 1) * t, self.height))

    def _rows_done(self, k: int, above_rows: int) -> None:
        """The level above level k + 1 (the base for k = 0) is complete down to ``above_rows``."""
        if k >= len(self.levels):
            return
        level, t = self.levels[k], self.tile
        if not level.complete(above_rows):
            return
        vh = min(t, level.height - level.row * t)
        if vh < t:
            level.buffer[vh:] = 0  # the last tile row: padding is zeros, as tifffile writes
            if level.mask is not None:
                level.mask[vh:] = False  # (and not valid)
        below = self.levels[k + 1] if k + 1 < len(self.levels) else None
        tiles = [level.buffer[:, c * t:(c + 1) * t] for c in range(level.cols)]
        encoded = (self._pool.map(self.encoder.encode, tiles) if self._pool
                   else map(self.encoder.encode, tiles))
        for data in encoded:
            level.segment.write(data)
            level.sizes.append(len(data))
        masks: list[np.ndarray | None] = [None] * level.cols
        if level.mask is not None:
            masks = [level.mask[:, c * t:(c + 1) * t] for c in range(level.cols)]
            for valid in masks:
                data = encode_mask(valid)
                level.mask_segment.write(data)
                level.mask_sizes.append(len(data))
        if below is not None:
            for c, (tile, valid) in enumerate(zip(tiles, masks, strict=True)):
                vw = min(t, level.width - c * t)
                below.add(tile[:vh, :vw], level.row * t, c * t, self.method, self.nodata,
                          None if valid is None else valid[:vh, :vw])
        level.row += 1
        self._rows_done(k + 1, (level.row - 1) * t + vh)

    def spans(self, k: int) -> list[Span]:
        """Where the tiles of level k + 1 are, in row-major order (once every base tile has
        been fed: the first call publishes every level's segment)."""
        self.finish()
        for level in self.levels:
            if not level.done:
                level.segment.close()
                if level.mask is not None:
                    level.mask_segment.close()
                level.done = True
        level = self.levels[k]
        return _spans(level.url, level.sizes)

    def mask_spans(self, k: int) -> list[Span]:
        """Where the mask tiles of level k + 1 are (a masked pyramid), as :meth:`spans`."""
        self.spans(k)
        return _spans(self.levels[k].mask_url, self.levels[k].mask_sizes)

    def tiles(self, k: int) -> Iterator[bytes]:
        """The encoded tiles of level k + 1 in row-major order, read back one at a time."""
        for span in self.spans(k):
            yield read_range(span.source, span.start, span.size)

    def close(self) -> None:
        """Stop the threads; discard the segments of levels not finished."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()
        for level in self.levels:
            if not level.done:
                level.segment.abort()
                if level.mask is not None:
                    level.mask_segment.abort()


def _spans(url: str, sizes: list[int]) -> list[Span]:
    """The spans of tiles of ``sizes`` written one after another to the segment ``url``."""
    out, offset = [], 0
    for size in sizes:
        out.append(Span(url, offset, size))
        offset += size
    return out
