"""Thumbnails as exact area averages, summed piece by piece: the pure part of
:mod:`pipeline.preview` (which decodes a page segment by segment) and of the thumbnails the
process steps make as a by-product of the pixels they already hold (:mod:`pipeline.steps.thumbs`,
for the contact sheet of ``tiffpipe run``).

Thumbnail pixel (ty, tx) of a ``th`` x ``tw`` thumbnail of an ``height`` x ``width`` page is the
mean of the page pixels (y, x) with ``y * th // height == ty`` and ``x * tw // width == tx``.
Pieces of the page (segments, tiles) add their block sums and pixel counts to a
:class:`ThumbSums`; sums of pieces made in different processes add up to the same thumbnail,
exactly for integer pixels (sums below 2**53 in float64).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

#: rows of pixels summed at once (:meth:`ThumbSums.add`) when the block sums come from the
#: integral image
ADD_ROWS = 256
#: blocks of at least this many rows (thumbnail rows this many page rows high, on average)
#: are summed block row by block row, not from the integral image (:func:`block_sums`)
REDUCE_ROWS_FROM = 10
#: what a stored part (:meth:`ThumbSums.part`) starts with
PART_MAGIC = b"tiffpipe-thumb-1"
#: the box a contact sheet's thumbnails fit in (pixels)
SHEET_BOX = 256
#: the most pages a contact sheet shows (its rows); the steps make thumbnails of a job's
#: first pages only
MAX_PAGES = 200


#: a contact sheet's width in pixels (pipeline/contact_sheet.py: its label column, two
#: thumbnail cells and their padding), which tells a sheet from a picture of the user's at
#: its path (:func:`is_contact_sheet`)
SHEET_WIDTH = 852
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_contact_sheet(head: bytes) -> bool:
    """Whether a file that begins with ``head`` (its first 24 bytes) is a contact sheet: a
    PNG of :data:`SHEET_WIDTH` pixels. A run replaces or removes a file at its sheet's path
    only then, never another picture given that name."""
    return (head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
            and int.from_bytes(head[16:20], "big") == SHEET_WIDTH)


def contact_sheet_url(report_url: str) -> str:
    """``<report folder>/<report stem>.contact.png`` (a local path or an s3:// URL)."""
    folder, slash, name = report_url.rpartition("/")
    return f"{folder}{slash}{os.path.splitext(name)[0]}.contact.png"
#: a page's thumbnail is made from the pixels the steps hold when the page has at least this
#: many times the thumbnail's pixels: smaller pages are cheap to decode again (a 1 Mpx page
#: is a few tiles), and the stored sums (float64, 8 bytes a sample and a count) stay below
#: a quarter of the page's own pixels in bytes (an RGB uint8 page: 2/3 byte a page pixel)
MIN_REDUCTION = 16


def fit(height: int, width: int, size: int) -> tuple[int, int]:
    """The thumbnail size of a page: inside a ``size`` box, aspect kept, never enlarged."""
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def worth_summing(height: int, width: int, size: int) -> bool:
    """Whether the steps should sum this page's thumbnail as they go (:data:`MIN_REDUCTION`)."""
    th, tw = fit(height, width, size)
    return height * width >= MIN_REDUCTION * th * tw


class ThumbSums:
    """The block sums and pixel counts of a ``th`` x ``tw`` thumbnail of a ``height`` x ``width``
    page with ``channels`` samples, as pieces of the page are added (thread-safe). ``rows``
    and ``cols`` (the thumbnail rows and columns touched so far) bound what :meth:`part`
    returns. A plain class, as the other classes a run creates within its time."""

    __slots__ = ("_lock", "acc", "channels", "cols", "counts", "height", "rows", "th", "tw",
                 "width")

    def __init__(self, height: int, width: int, th: int, tw: int, channels: int):
        self.height, self.width, self.th, self.tw = height, width, th, tw
        self.channels = channels
        self.acc = np.zeros((th, tw, channels), np.float64)
        self.counts = np.zeros((th, tw), np.float64)
        self.rows = [th, 0]  # [first, end) thumbnail rows touched
        self.cols = [tw, 0]
        self._lock = threading.Lock()

    def add(self, px: np.ndarray, y0: int, x0: int) -> None:
        """Add the page pixels ``px`` (rows x cols [x channels]) whose top-left is (y0, x0):
        at once when its blocks are summed block row by block row (tall blocks: a row of
        sums a block row), else :data:`ADD_ROWS` rows at a time (the block sums' integral
        table of a 1024 px RGB tile would be 12.6 MB, in every tile thread: the engine's
        peak on a 100 Mpx page was 35 MB higher than without the sums, 9 MB in bands)."""
        rows = px.shape[0] if self.height >= REDUCE_ROWS_FROM * self.th else ADD_ROWS
        for band in range(0, px.shape[0], max(1, rows)):
            self._add(px[band:band + rows], y0 + band, x0)

    def _add(self, px: np.ndarray, y0: int, x0: int) -> None:
        h, w = px.shape[:2]
        if h == 0 or w == 0:
            return
        px = px.reshape(h, w, -1)
        ty = (np.arange(y0, y0 + h, dtype=np.int64) * self.th) // self.height
        tx = (np.arange(x0, x0 + w, dtype=np.int64) * self.tw) // self.width
        if px.dtype.kind == "f" and not np.isfinite(px).all():
            px = np.where(np.isfinite(px), px, 0)  # NaN/inf would poison a thumbnail pixel
        rows = slice(int(ty[0]), int(ty[-1]) + 1)
        cols = slice(int(tx[0]), int(tx[-1]) + 1)
        if ty[-1] - ty[0] == h - 1 and tx[-1] - tx[0] == w - 1:  # a page pixel a thumbnail's
            sums: Any = px
            counts: Any = 1
        else:  # ty and tx are non-decreasing by 0 or 1 a step: the pixels hit are one block
            rstarts, cstarts = _starts(ty), _starts(tx)
            sums = block_sums(px, rstarts, cstarts)
            counts = np.outer(np.diff(rstarts, append=h), np.diff(cstarts, append=w))
        with self._lock:
            self.acc[rows, cols] += sums
            self.counts[rows, cols] += counts
            self.rows = [min(self.rows[0], rows.start), max(self.rows[1], rows.stop)]
            self.cols = [min(self.cols[0], cols.start), max(self.cols[1], cols.stop)]

    @property
    def empty(self) -> bool:
        return self.rows[0] >= self.rows[1]

    def mean(self) -> np.ndarray:
        """The thumbnail: (th, tw, channels) float64 means (0 where nothing was added)."""
        return self.acc / np.maximum(self.counts, 1)[..., None]

    def complete(self) -> bool:
        """Every page pixel was added once."""
        return float(self.counts.sum()) == float(self.height) * self.width

    def part(self) -> bytes:
        """What was added, to store: a header (:data:`PART_MAGIC`, then height, width, th,
        tw, first row, first column, rows, columns, channels as int64) and the touched block
        of sums and of counts (float64, C order). Raw bytes, not ``.npz``: no zip archive to
        write, parse or import."""
        (r0, r1), (c0, c1) = self.rows, self.cols
        if r1 <= r0:
            r0 = r1 = c0 = c1 = 0
        head = np.array([self.height, self.width, self.th, self.tw, r0, c0, r1 - r0, c1 - c0,
                         self.channels], "<i8")
        return b"".join((PART_MAGIC, head.tobytes(),
                         self.acc[r0:r1, c0:c1].astype("<f8", copy=False).tobytes(),
                         self.counts[r0:r1, c0:c1].astype("<f8", copy=False).tobytes()))

    def add_part(self, data: bytes, where: str = "a part") -> None:
        """Add a stored :meth:`part` of the same page and thumbnail size (``where``: its name,
        for the errors)."""
        height, width, th, tw, r0, c0, rows, cols, channels = _part_head(data, where)
        size = _PART_HEAD
        if (height, width, th, tw, channels) != (self.height, self.width, self.th, self.tw,
                                                 self.channels):
            raise ValueError(f"{where}: a part of a {th}x{tw}x{channels} thumbnail of a "
                             f"{height}x{width} page, not of a {self.th}x{self.tw}x"
                             f"{self.channels} one of {self.height}x{self.width}")
        n = rows * cols
        if len(data) != size + 8 * n * (channels + 1) or r0 + rows > th or c0 + cols > tw:
            raise ValueError(f"{where}: the part is damaged (its size or block does not fit)")
        acc = np.frombuffer(data, "<f8", n * channels, size).reshape(rows, cols, channels)
        counts = np.frombuffer(data, "<f8", n, size + 8 * n * channels).reshape(rows, cols)
        self.acc[r0:r0 + rows, c0:c0 + cols] += acc
        self.counts[r0:r0 + rows, c0:c0 + cols] += counts
        if n:
            self.rows = [min(self.rows[0], r0), max(self.rows[1], r0 + rows)]
            self.cols = [min(self.cols[0], c0), max(self.cols[1], c0 + cols)]

    @classmethod
    def of_part(cls, data: bytes, where: str = "a part") -> ThumbSums:
        """An empty :class:`ThumbSums` of the page and thumbnail a stored part is of."""
        height, width, th, tw, *_, channels = _part_head(data, where)
        return cls(height, width, th, tw, channels)


#: the bytes before a part's sums: its magic and nine int64
_PART_HEAD = len(PART_MAGIC) + 9 * 8


def _part_head(data: bytes, where: str) -> list[int]:
    """A stored part's header: height, width, th, tw, first row, first column, rows,
    columns, channels (:meth:`ThumbSums.part`)."""
    if len(data) < _PART_HEAD or not data.startswith(PART_MAGIC):
        raise ValueError(f"{where} is not a thumbnail part")
    return [int(v) for v in np.frombuffer(data, "<i8", 9, len(PART_MAGIC))]


def _starts(index: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a non-decreasing ``index`` starts."""
    return np.concatenate(([0], np.flatnonzero(index[1:] != index[:-1]) + 1))


#: pixel types whose block sums come from OpenCV's integral image (it takes no others)
INTEGRAL_TYPES = ("uint8", "uint16", "int16")


def block_sums(px: np.ndarray, rstarts: np.ndarray, cstarts: np.ndarray) -> np.ndarray:
    """The sums of ``px`` (rows x cols x channels) over the blocks that start at rows
    ``rstarts`` and columns ``cstarts``, exact for integers.

    8 and 16-bit pixels in blocks of :data:`REDUCE_ROWS_FROM` rows or more on average (a
    thumbnail of a page 10 times larger or more across): each block row summed down its
    columns by OpenCV's ``reduce`` (one pass over the pixels, 32-bit integers for 8-bit
    pixels, float64 for 16-bit ones), then those rows' runs of columns by ``reduceat``
    (:meth:`ThumbSums.add` of a 1024 px RGB tile: about twice as fast as from the integral
    image with blocks of 16 rows, three times with 40; no faster below 10, a call a block
    row). Smaller blocks of such pixels: from OpenCV's integral image (each block sum is
    four of its values; 7x faster than two ``reduceat`` on a 512 x 512 RGB tile), 8-bit
    ones in 32-bit integers while every sum fits, else in float64 (exact below 2**53).
    Others: ``np.add.reduceat``, rows first on a 2-D view, then columns; integers of up to
    32 bits summed as 64-bit ones (a sum holds fewer than 2**31 pixels), 64-bit integers
    and floats in float64."""
    h, w, c = px.shape
    if px.dtype.name in INTEGRAL_TYPES and h >= REDUCE_ROWS_FROM * len(rstarts):
        return _row_block_sums(px, rstarts, cstarts)
    if px.dtype.name in INTEGRAL_TYPES and c <= 512:  # 512: OpenCV's most channels
        import cv2

        # OpenCV sums 8-bit pixels in 32-bit integers or float64, 16-bit ones in float64 only
        depth = cv2.CV_32S if px.dtype == np.uint8 and h * w * 255 < 2**31 else cv2.CV_64F
        table = cv2.integral(np.ascontiguousarray(px), sdepth=depth).reshape(h + 1, w + 1, c)
        # the table at the blocks' corners only (``take``: 7x faster than indexing rows
        # then columns when a tile holds a hundred blocks a side), then four corners a block
        t = table.take(np.append(rstarts, h), 0).take(np.append(cstarts, w), 1)
        # in the table's own type: its 32-bit integers (8-bit pixels, never negative) cannot
        # overflow, every corner and partial difference lying within +-(2**31 - 1); float64
        # is exact below 2**53
        sums = t[1:, 1:] - t[1:, :-1]
        sums -= t[:-1, 1:]
        sums += t[:-1, :-1]
        return sums
    small_int = px.dtype.kind in "uib" and px.dtype.itemsize <= 4
    wide = (np.float64 if not small_int else np.int64 if px.dtype.kind == "i" else np.uint64)
    rows_summed = np.add.reduceat(px.reshape(h, w * c), rstarts, axis=0, dtype=wide)
    return np.add.reduceat(rows_summed.reshape(len(rstarts), w, c), cstarts, axis=1)


def _row_block_sums(px: np.ndarray, rstarts: np.ndarray, cstarts: np.ndarray) -> np.ndarray:
    """:func:`block_sums` of 8 or 16-bit pixels, block row by block row: ``cv2.reduce`` sums
    each block row's pixel rows into one row (of any number of channels: the pixels as rows
    of ``cols * channels`` samples, a view of ``px``'s rows), then ``reduceat`` sums that
    row's runs of columns."""
    import cv2

    h, w, c = px.shape
    flat = px.reshape(h, w * c)  # a view: each pixel row's samples are contiguous
    # a column of 8-bit pixels in 32-bit integers while its sum fits; else (and 16-bit
    # pixels: OpenCV sums those in floats only) in float64, exact below 2**53
    small = px.dtype == np.uint8 and h * 255 < 2**31
    depth, dtype = (cv2.CV_32S, np.int32) if small else (cv2.CV_64F, np.float64)
    rows = np.empty((len(rstarts), w * c), dtype)
    ends = [*rstarts[1:].tolist(), h]
    for i, (a, b) in enumerate(zip(rstarts.tolist(), ends, strict=True)):
        cv2.reduce(flat[a:b], 0, cv2.REDUCE_SUM, dst=rows[i:i + 1], dtype=depth)
    wide = np.int64 if dtype is np.int32 else np.float64
    return np.add.reduceat(rows.reshape(len(rstarts), w, c), cstarts, axis=1, dtype=wide)


class BlockThumb:
    """The ``th`` x ``tw`` thumbnail of a ``height`` x ``width`` page from the means of its
    ``scale`` x ``scale`` pixel blocks (a JPEG page decoded at 1/``scale``): each block counts
    in a thumbnail pixel by the page pixels it shares with it, so the thumbnail pixels cover
    the page rows and columns of :class:`ThumbSums`'s exact average, and differ from it only
    as the block means differ from the pixels' (a block never straddles more than two rows
    or columns of thumbnail pixels: the page is at least twice ``scale`` times larger)."""

    __slots__ = ("acc", "cols", "rows")

    def __init__(self, height: int, width: int, th: int, tw: int, channels: int, scale: int):
        if height < 2 * scale * th or width < 2 * scale * tw:
            raise ValueError(f"a {height}x{width} page is less than {2 * scale} times its "
                             f"{th}x{tw} thumbnail")
        self.rows, self.cols = _Shares(height, th, scale), _Shares(width, tw, scale)
        self.acc = np.zeros((th, tw, channels), np.float64)

    def add(self, px: np.ndarray, y0: int, x0: int) -> None:
        """Add the block means ``px`` (rows x cols x channels) whose top-left block is block
        (``y0``, ``x0``) (page pixel (y0 * scale, x0 * scale)). A band of block rows across
        the page at a time costs least (one call a segment row)."""
        h, w = px.shape[:2]
        if h == 0 or w == 0:
            return
        r0, weights = self.rows.weights(y0, h)  # a few thumbnail rows: one product
        rows = (weights @ px.reshape(h, -1).astype(np.float64)).reshape(len(weights), w, -1)
        c0, both = self.cols.collapse(rows, x0)  # many columns: sums of runs
        self.acc[r0:r0 + both.shape[0], c0:c0 + both.shape[1]] += both

    def mean(self) -> np.ndarray:
        """The thumbnail: (th, tw, channels) float64."""
        return self.acc / np.outer(self.rows.pixels, self.cols.pixels)[..., None]


class _Shares:
    """Along one axis of ``size`` page pixels: the thumbnail index (``index * thumb // size``
    of :class:`ThumbSums`) of each ``scale`` block's first pixel, and how many of the block's
    pixels have it (the rest have the next one)."""

    __slots__ = ("first", "firsts", "pixels", "rest", "thumb")

    def __init__(self, size: int, thumb: int, scale: int):
        starts = np.arange(0, size, scale, dtype=np.int64)
        ends = np.minimum(starts + scale, size)
        self.first = starts * thumb // size
        # the page pixels of thumbnail pixel t: from ceil(t * size / thumb) on
        begins = -(-np.arange(thumb + 1, dtype=np.int64) * size // thumb)
        self.firsts = (np.minimum(begins[self.first + 1], ends) - starts).astype(np.float64)
        self.rest = (ends - starts).astype(np.float64) - self.firsts
        self.pixels = np.diff(begins).astype(np.float64)
        self.thumb = thumb

    def weights(self, b0: int, n: int) -> tuple[int, np.ndarray]:
        """The first thumbnail index blocks ``b0`` .. ``b0 + n - 1`` share page pixels with,
        and (indices x n) how many each block shares with each."""
        first = self.first[b0:b0 + n]
        t0 = int(first[0])
        out = np.zeros((min(self.thumb, int(first[-1]) + 2) - t0, n))
        blocks = np.arange(n)
        out[first - t0, blocks] = self.firsts[b0:b0 + n]
        spill = self.rest[b0:b0 + n] > 0
        out[first[spill] + 1 - t0, blocks[spill]] = self.rest[b0:b0 + n][spill]
        return t0, out

    def collapse(self, v: np.ndarray, b0: int) -> tuple[int, np.ndarray]:
        """``v`` (any x n blocks from block ``b0`` x channels) summed into the thumbnail
        pixels its blocks share page pixels with, each block weighted by how many: the
        first thumbnail index and (any x indices x channels)."""
        n = v.shape[1]
        first = self.first[b0:b0 + n]
        t0 = int(first[0])
        groups = _starts(first)  # blocks whose first pixel has the same thumbnail index
        at = first[groups] - t0
        out = np.zeros((v.shape[0], min(self.thumb, int(first[-1]) + 2) - t0, v.shape[2]))
        out[:, at] = np.add.reduceat(v * self.firsts[b0:b0 + n, None], groups, axis=1)
        rest = self.rest[b0:b0 + n]
        if rest.any():  # blocks across a boundary: their other pixels, in the next index
            spill = np.add.reduceat(v * rest[:, None], groups, axis=1)
            inside = at + 1 < out.shape[1]
            out[:, at[inside] + 1] += spill[:, inside]
        return t0, out
