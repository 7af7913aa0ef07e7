"""The thumbnails of large pages, summed by the process steps from the pixels they hold, for
the contact sheet of ``tiffpipe run`` (which sets :data:`THUMBNAILS_ENV` for its run).

A contact sheet shows every page's input and output; made after the run from the files, it
decoded both pages once more: on a 100-megapixel page as long as the run itself. A tile's
input (its core, cut from the haloed pixels the step read) and its output (before encoding)
are in the step's memory anyway; their block sums go to a :class:`ThumbSums` per page and
side, and each batch or unit stores its part next to the job's other work
(``thumbs/{in,out}-PPPP-NAME.part``). The sheet adds the parts up: the same exact area
average the preview computes, with no page decoded again.

A side is summed only when the pixels the step holds are the ones a reader of the file sees:
not for a palette page kept as indices, nor a gray class map's values under its colour
table (a ColorMap: the preview draws them in its colours), not for a JPEG output (a reader
sees the decoded tiles) or one with pyramid levels (the preview reads a level), and not for
the input of a canny job's process batches (they read edges, not the input). Pages with fewer than
:data:`pipeline.core.thumbs.MIN_REDUCTION` times the thumbnail's pixels are left to the
preview (decoding them again is cheap), and so are pages the sheet cannot show (job index
plus page position past :data:`MAX_PAGES`: every job before shows a row at least).
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.adapters import storage
from pipeline.adapters.metadata import carries_gray_colormap, photometric_of
from pipeline.core.chain import page_geometry
from pipeline.core.constants import THUMBNAILS_ENV, env_int
from pipeline.core.grid import Rect
from pipeline.core.levels import indexed_levels
from pipeline.core.models import JobPlan
from pipeline.core.ops import chain_bands
from pipeline.core.thumbs import MAX_PAGES, ThumbSums, fit, worth_summing
from pipeline.steps import layout

SIDES = ("in", "out")


def thumb_box() -> int:
    """The box the run's thumbnails fit in (:data:`THUMBNAILS_ENV`); 0: none asked for."""
    return env_int(THUMBNAILS_ENV, os.environ) or 0


def sums_thumbnails(plan: JobPlan) -> bool:
    """Whether the steps may sum a thumbnail of a page of ``plan`` (:meth:`PageThumbs.of`
    may say yes for its input or output): the contact sheet then reads the plan after the
    run."""
    box = thumb_box()
    return bool(box) and any(
        plan.job + i < MAX_PAGES
        and (worth_summing(p.info.height, p.info.width, box)
             or worth_summing(p.out_grid.height, p.out_grid.width, box))
        for i, p in enumerate(plan.pages))


class PageThumbs:
    """One batch's or unit's part of a page's input and output thumbnails (either may be
    None: not summed here). Thread-safe, as :class:`ThumbSums`."""

    __slots__ = ("geometry", "input", "output", "page", "work")

    def __init__(self, plan: JobPlan, page: int, input_: ThumbSums | None,
                 output: ThumbSums | None):
        self.work, self.page = plan.work, page
        self.geometry = page_geometry(plan, page)  # where a tile's input core is
        self.input, self.output = input_, output

    @classmethod
    def of(cls, plan: JobPlan, page: int, lossy: bool, input_held: bool) -> PageThumbs | None:
        """The thumbnails a step working on ``page`` (its position in the job) sums, or None.
        ``lossy``: the output codec is lossy. ``input_held``: the step holds each tile's
        input pixels (a fused unit; a batch whose chain reads its work tiles)."""
        box = thumb_box()
        # the sheet shows at most MAX_PAGES rows, a row or more for each job before this one
        if not box or plan.job + page >= MAX_PAGES:
            return None
        info = plan.pages[page].info
        kept_palette = info.photometric == "palette"
        # (a gray class map's values, drawn in its ColorMap's colours by the preview)
        coloured = carries_gray_colormap(info)
        sums_in = None
        cropped = any(op["op"] == "crop" for op in plan.spec.ops)  # (its tiles hold the box)
        if (input_held and not kept_palette and not coloured and not cropped
                and worth_summing(info.height, info.width, box)):
            sums_in = ThumbSums(info.height, info.width, *fit(info.height, info.width, box),
                                info.channels)
        out_grid = plan.pages[page].out_grid
        oh, ow = out_grid.height, out_grid.width
        sums_out = None
        if (not lossy and not plan.spec.output_options.pyramid
                and not indexed_levels(plan, page) and worth_summing(oh, ow, box)):
            sums_out = ThumbSums(oh, ow, *fit(oh, ow, box), plan.pages[page].out_channels)
        if sums_in is None and sums_out is None:
            return None
        return cls(plan, page, sums_in, sums_out)

    def add(self, row: int, col: int, haloed: np.ndarray | None, output: np.ndarray,
            origin: Rect) -> None:
        """Tile (row, col): its ``haloed`` input pixels (the input window it reads:
        pipeline.core.geometry) and its ``output`` pixels, whose top-left on the output page
        is ``origin``."""
        if self.input is not None and haloed is not None:
            core = self.geometry.core_at(row, col, 0)  # (on the input page)
            r = core.relative_to(self.geometry.tile_read(row, col))
            self.input.add(haloed[r.y0:r.y1, r.x0:r.x1], core.y0, core.x0)
        if self.output is not None:
            self.output.add(output, origin.y0, origin.x0)

    def save(self, name: str) -> None:
        """Store this batch's or unit's parts (``name``: its segment's name)."""
        for side, sums in zip(SIDES, (self.input, self.output), strict=True):
            if sums is None or sums.empty:
                continue
            storage.write_bytes(layout.thumb_file(self.work, self.page, side, name),
                                sums.part())


class SummedThumb:
    """A page's thumbnail added up from the steps' parts: (th, tw, channels) float64 means,
    the page's size, and how a reader shows its samples (its photometric: CMYK is shown
    as RGB)."""

    __slots__ = ("dtype", "extrasamples", "height", "photometric", "pixels", "width")

    def __init__(self, pixels: np.ndarray, height: int, width: int, dtype: str,
                 extrasamples: list[int], photometric: str = ""):
        self.pixels, self.height, self.width = pixels, height, width
        self.dtype, self.extrasamples, self.photometric = dtype, extrasamples, photometric


def summed_parts(job_work: str) -> dict[tuple[int, str], list[str]]:
    """The stored parts of a job's thumbnails, by (page position, side): one listing."""
    found: dict[tuple[int, str], list[str]] = {}
    for url in storage.list_prefix(layout.thumbs_dir(job_work)):
        name = url.rsplit("/", 1)[-1].split("-", 2)  # side, page, segment name + ".part"
        if (len(name) == 3 and name[0] in SIDES and name[1].isdigit()
                and name[2].endswith(".part")):  # not a write's temporary file, say
            found.setdefault((int(name[1]), name[0]), []).append(url)
    return found


def load_summed(plan: JobPlan, page: int, side: str, parts: list[str],
                box: int) -> SummedThumb | None:
    """The ``side`` thumbnail of ``page`` (its position in the job) fitting a ``box`` box,
    added up from its stored ``parts`` (:func:`summed_parts`), or None when not every pixel
    of the page is in them (a batch that failed) or they are of another size."""
    info = plan.pages[page].info
    channels = info.channels if side == "in" else plan.pages[page].out_channels
    sums: ThumbSums | None = None
    for url in parts:
        data = storage.read_bytes(url)
        if sums is None:
            sums = ThumbSums.of_part(data, url)
        sums.add_part(data, url)
    if (sums is None or sums.channels != channels
            or (sums.th, sums.tw) != fit(sums.height, sums.width, box) or not sums.complete()):
        return None
    if side == "in":
        photometric, extrasamples = info.photometric, list(info.extrasamples)
    else:
        photometric, extra = photometric_of(info, channels,
                                            chain_bands(plan.spec.ops, info.channels))
        extrasamples = list(extra or [])
    dtype = info.dtype if side == "in" else plan.pages[page].out_dtype
    return SummedThumb(sums.mean(), sums.height, sums.width, dtype, extrasamples,
                       photometric)
