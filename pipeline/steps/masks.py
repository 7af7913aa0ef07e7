"""A page's internal mask (GDAL's valid-data mask, the 1-bit page right after it in the input)
carried into the output: each unit (a split unit, or a fused one) writes the mask tiles of
its own output tiles to a segment of its own, ``u{unit}_mask``, which merge lays out as the
page right after the output page (:func:`pipeline.steps.merge.output_pieces`).

A mask goes through the chain's geometric ops (rotate, flip, crop) as the image does, and
through no other: a blur, a threshold or a convert does not change which pixels are valid.
A downsample by f (the geometric ops come before it) reduces it as GDAL reduces a mask for
its average overviews: an output pixel is valid where any pixel of its f x f block is
(:func:`reduced`); and its tiles read it (:func:`read_valid`) to leave the masked-out
pixels out of their means, as GDAL's average does. Its tiles are those of the output page
(or its one strip), 1 bit a pixel, 1 valid, 0 not (padding too), deflated. The masks of the
pyramid levels are made by merge (:class:`pipeline.steps.pyramid.Pyramid`). Jobs that carry
none:
:func:`pipeline.core.plan.masks_left_out`.
"""

from __future__ import annotations

import numpy as np

from pipeline.adapters.segments import SegmentWriter, write_index
from pipeline.adapters.tiff_read import (
    PageReader,
    check_unchanged,
    kept_tiff,
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
        try:
            info = mask_info(page.info)
            reader = PageReader(tf, planned_page(tf, url, info), url, info.index, mask=True)
            for i, (row, col) in enumerate(positions):
                stopping.check()
                valid = geo.moved(reader.read(reads[i]), reads[i]) != 0
                core = page.out_grid.core(row, col)
                if page.factor > 1:
                    valid = reduced(valid, core, page.factor)
                for orow, ocol, bits in _tiles(valid, core, tile, page.strip):
                    data = encode_mask(bits)
                    index.append([orow, ocol, writer.write(data), len(data)])
                if i + 1 < len(reads) and reads[i + 1].y0 > reads[i].y0:
                    reader.forget_above(reads[i + 1].y0)
        except CorruptTiffError:  # damaged, or written to while read
            check_unchanged(tf, url, plan.input_version)
            raise
        check_unchanged(tf, url, plan.input_version)
    write_index(layout.segment_index_file(plan.work, unit.page, name), {"tiles": index})


def read_valid(plan: JobPlan, page: int, geo: PageGeometry, rect: Rect) -> np.ndarray:
    """The carried mask of ``rect`` of the placed page (``page`` must carry one), True where
    valid: its window of the input's mask page, moved by the geometric ops. What a
    ``downsample`` leaves the masked-out pixels out of its means with
    (:class:`pipeline.steps.evaluate.TileEvaluator`): one read per tile, its own open of the
    input (:func:`kept_tiff`: a local file stays open in the thread)."""
    url, where = plan.spec.input, geo.back(rect, 0)
    with kept_tiff(url, plan.input_version) as tf:
        try:
            info = mask_info(plan.pages[page].info)
            reader = PageReader(tf, planned_page(tf, url, info), url, info.index, mask=True)
            return geo.moved(reader.read(where), where) != 0
        except CorruptTiffError:  # damaged, or written to while read
            check_unchanged(tf, url, plan.input_version)
            raise


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
