"""A page's internal mask (GDAL's valid-data mask, the 1-bit page right after it in the input)
carried into the output: each unit (a split unit, or a fused one) writes the mask tiles of
its own output tiles to a segment of its own, ``u{unit}_mask``, which merge lays out as the
page right after the output page (:func:`pipeline.steps.merge.output_pieces`).

A mask goes through the chain's geometric ops (rotate, flip, crop) as the image does, and
through no other: a blur, a threshold or a convert does not change which pixels are valid
(a blur reads it, :class:`MaskReader`, to leave the masked-out pixels out of its sums).
A downsample by f (the geometric ops come before it) reduces it as GDAL reduces a mask for
its average overviews: an output pixel is valid where any pixel of its f x f block is
(:func:`reduced`); and its tiles read it (:class:`MaskReader`) to leave the masked-out
pixels out of their means, as GDAL's average does. Its tiles are those of the output page
(or its one strip), 1 bit a pixel, 1 valid, 0 not (padding too), deflated. The masks of the
pyramid levels are made by merge with the levels, band by band
(:func:`pipeline.steps.unit_levels.merge_band_levels`). Jobs that carry none:
:func:`pipeline.core.plan.masks_left_out`.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack

import numpy as np
import tifffile

from pipeline.adapters.segments import SegmentWriter, write_index
from pipeline.adapters.tiff_read import (
    PageReader,
    check_unchanged,
    kept_tiff,
    open_tiff,
    planned_page,
)
from pipeline.adapters.tile_codec import encode_mask
from pipeline.core.chain import page_geometry
from pipeline.core.geometry import PageGeometry
from pipeline.core.grid import Rect
from pipeline.core.models import JobPlan, PageInfo
from pipeline.errors import CorruptTiffError
from pipeline.steps import layout, stopping

#: the suffix of a unit's mask segment name (``u{unit}_mask``)
MASK_SEGMENT = "_mask"


def mask_info(info: PageInfo) -> PageInfo:
    """The info :func:`planned_page` reads the page's mask with: the page after it, at its
    IFD, of its size."""
    return PageInfo(index=info.index + 1, height=info.height, width=info.width, channels=1,
                    dtype="uint8", photometric="minisblack", extrasamples=[], tiled=False,
                    segment_rows=1, compression="", ifd_offset=info.mask_ifd)


class MaskReader:
    """Reads windows of a page's internal mask (the input's mask page) for one unit of work,
    moved by the geometric ops: the one reader of both the unit's mask tiles
    (:func:`write_unit_mask`) and its tiles' downsamples
    (:class:`pipeline.steps.evaluate.TileEvaluator`). It reads ``tf`` if given (the caller's
    open input); else it opens the input on its first read, once for all the unit's tiles
    (on S3 one open and header read a unit, not a tile), and :meth:`close` closes it at the
    unit's end. Each mask segment is decoded once while it stays cached, so tiles that share
    one (a strip, or a tile under their halos) decode it once; the cache is bounded as the
    caller's read order allows (:meth:`forget_above` for a sweep, ``recent`` for tiles in
    threads: :class:`~pipeline.adapters.tiff_read.PageReader`). Thread-safe: the segments'
    bytes are read one thread at a time, and decoded in the threads that need them
    (:meth:`PageReader.claim`), side by side."""

    def __init__(self, plan: JobPlan, page: int, geo: PageGeometry,
                 tf: tifffile.TiffFile | None = None, recent: int | None = None):
        self.url, self.version = plan.spec.input, plan.input_version
        self.info, self.geo, self.recent = mask_info(plan.pages[page].info), geo, recent
        self.tf, self.reader = tf, None
        self._open: ExitStack | None = None
        self._lock = threading.Lock()

    def valid(self, where: Rect, space: int | None = None) -> np.ndarray:
        """The mask of ``where`` (a rect of the input page: :meth:`PageGeometry.back` of one
        of the placed page, or of the page op ``space`` gets, an op before the last geometric
        one) moved by the geometric ops (before op ``space``), True where valid."""
        with self._lock:
            if self.tf is None:
                self._open = ExitStack()
                self.tf = self._open.enter_context(open_tiff(self.url, self.version))
            tf = self.tf
        try:
            with self._lock:
                if self.reader is None:
                    self.reader = PageReader(tf, planned_page(tf, self.url, self.info),
                                             self.url, self.info.index, mask=True,
                                             recent=self.recent)
                reader = self.reader
                claimed = reader.claim(where)  # bytes read here, one thread at a time ...
            reader.decode_claimed(claimed)  # ... decoded side by side
            with self._lock:
                bits = reader.read(where)
        except CorruptTiffError:  # damaged, or written to while read
            check_unchanged(tf, self.url, self.version)
            raise
        return self.geo.moved(bits, where, space) != 0

    def forget_above(self, y: int) -> None:
        """Drop the cached mask rows above input row ``y`` (a downward sweep is past them)."""
        if self.reader is not None:
            self.reader.forget_above(y)

    def close(self) -> None:
        """Close the input if this reader opened it (a later read opens it again)."""
        with self._lock:
            if self._open is not None:
                self._open.close()
                self._open, self.tf, self.reader = None, None, None


def write_unit_mask(plan: JobPlan, unit_index: int) -> None:
    """Write the mask tiles of the unit's output tiles (nothing when its page carries no
    mask): read from the input's mask page core by core, in the order a downward sweep of the
    input meets them, each moved by the geometric ops, reduced by the chain's downsample
    and cut into output tiles."""
    unit = plan.units[unit_index]
    page = plan.pages[unit.page]
    if not page.info.mask_ifd:
        return
    url, tile = plan.spec.input, plan.spec.output_options.tile
    geo = page_geometry(plan, unit.page)
    positions = geo.order(unit)
    reads = [geo.core_at(row, col, 0) for row, col in positions]
    name = layout.unit_segment(unit_index) + MASK_SEGMENT
    index: list[list[int]] = []
    with kept_tiff(url, plan.input_version) as tf, \
            SegmentWriter(layout.segment_file(plan.work, unit.page, name)) as writer:
        mask = MaskReader(plan, unit.page, geo, tf)
        for i, (row, col) in enumerate(positions):
            stopping.check()
            valid = mask.valid(reads[i])
            core = page.out_grid.core(row, col)
            if page.factor > 1:
                valid = reduced(valid, core, page.factor)
            for orow, ocol, bits in _tiles(valid, core, tile, page.strip):
                data = encode_mask(bits)
                index.append([orow, ocol, writer.write(data), len(data)])
            if i + 1 < len(reads) and reads[i + 1].y0 > reads[i].y0:
                mask.forget_above(reads[i + 1].y0)
        check_unchanged(tf, url, plan.input_version)
    write_index(layout.segment_index_file(plan.work, unit.page, name), {"tiles": index})


def reduced(valid: np.ndarray, core: Rect, factor: int) -> np.ndarray:
    """The mask of ``core`` (a tile's core on the downsampled page) from ``valid``, its
    pixels on the page before the downsample (the core times ``factor``, the rows and
    columns past the last whole block there at the page's edge): valid where any pixel of
    the ``factor`` x ``factor`` block is."""
    h, w = core.y1 - core.y0, core.x1 - core.x0
    blocks = valid[:h * factor, :w * factor].reshape(h, factor, w, factor)
    return blocks.any(axis=(1, 3))


def _tiles(valid: np.ndarray, core: Rect, tile: int, strip: bool
           ) -> list[tuple[int, int, np.ndarray]]:
    """The output tiles (row, col, bits) of a processing tile's core (its pixels ``valid``,
    on the placed page): full tiles padded with 0 (not valid), as tifffile pads edge tiles;
    a page written as one strip is its one tile, unpadded."""
    if strip:
        return [(0, 0, valid)]
    out = []
    for y in range(core.y0, core.y1, tile):
        for x in range(core.x0, core.x1, tile):
            part = valid[y - core.y0:y - core.y0 + tile, x - core.x0:x - core.x0 + tile]
            full = np.zeros((tile, tile), bool)
            full[:part.shape[0], :part.shape[1]] = part
            out.append((y // tile, x // tile, full))
    return out
