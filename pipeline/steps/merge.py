"""The merge step: compose a job's output TIFF from the segments process wrote, publish it.

Merge never holds or writes the pixels of the output. It reads the segment indexes (where
each encoded tile is), drives ``tifffile.TiffWriter`` with :class:`Placeholder` tiles over a
:class:`LayoutRecorder` (so the header, IFDs and tag values are exactly tifffile's, as if it
had written the real tiles), and composes the file from those bytes and the segments'
ranges (:func:`pipeline.adapters.segments.compose`): locally by concatenation into a
temporary file that is renamed, on S3 as one multipart upload of server-side copies.
Memory: the header and IFDs, the tile table of the largest page (20 bytes a tile) and one
uploaded part; local disk: none but the output itself (locally).

Tile order: tifffile writes a page's tiles in row-major order, and so does merge (the file
is then byte-identical to tifffile writing the real tiles), unless that order cuts the
segments into more than ``ROW_MAJOR_RUNS`` runs (a page wider than its units: one run per
output tile row and unit), or its runs too short to copy would take the job's reads
through merge past ``ROW_MAJOR_READ_THROUGH`` (:mod:`pipeline.core.tiff_layout`). Such a
page's tiles are laid out segment after segment, so each segment is one range of the file
(a few server-side copies); TileOffsets say where each tile is, every other tag and every
pixel is the same.

A pyramid's levels are built by the units (fused jobs) or the level units (BuildLevels,
jobs that are not fused: :func:`pipeline.steps.unit_levels.build_levels`); merge assembles
their shared tiles and the few deepest levels and places them like the base tiles. A
page's levels its units build none of (a turned page's: its units meet its rows in the
input's order; a page's that carries its mask, with their masks; a "nearest" page's of
odd size) merge builds the same way, band by band
(:func:`pipeline.steps.unit_levels.merge_band_levels`). Only with :data:`UNIT_LEVELS` off
are a page's levels built here from the base tiles read through (a tile row per level
across the page's width).
"""

from __future__ import annotations

import logging
import struct
import time
from fractions import Fraction
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from pipeline.adapters import storage
from pipeline.adapters.metadata import (
    COLORMAP,
    ORIENTATION,
    XmpPackets,
    band_names,
    carries_xmp,
    derivation,
    keeps_colormap,
    ome_channel,
    output_tags,
    page_form,
    scaled_resolution,
)
from pipeline.adapters.segments import compose
from pipeline.adapters.tiff_header import (
    RESOLUTION_TAGS,
    LayoutOverflow,
    LayoutRecorder,
    drop_entries,
    ifds_before_data,
    image_ifds,
    set_compression,
    state_bits_per_sample,
    tile_offsets_at,
)
from pipeline.adapters.tile_codec import GROUP4, MASK_WRITER_KWARGS, OutputEncoder
from pipeline.core import tiff_layout
from pipeline.core.chain import page_placement
from pipeline.core.events import MergeEvent
from pipeline.core.levels import band_level_count, level_shapes, unit_level_count
from pipeline.core.models import JobPlan, PagePlan
from pipeline.core.ops import (
    chain_band_names,
    chain_bands,
    chain_keeps_nodata,
    chain_keeps_statistics,
    chain_keeps_values,
    chain_linear,
    chain_own_nodata,
)
from pipeline.core.plan import (
    BIGTIFF_ABOVE,
    GROUP4_BITS_PER_PIXEL,
    bigtiff_output,
    one_bit_pages,
    page_options,
    raw_output_bytes,
)
from pipeline.core.tiff_layout import Piece, Span
from pipeline.errors import OutputExistsError, OutputTooLargeError, TiffpipeError
from pipeline.steps import held_work, layout, stopping
from pipeline.steps.common import (
    abort_output_uploads,
    explained_by_records,
    forget_output_uploads,
    load_plan,
    record_output_upload,
    save_skipped,
    tile_threads,
)
from pipeline.steps.masks import MASK_SEGMENT
from pipeline.steps.tile_table import TileTable

if TYPE_CHECKING:
    from pipeline.core.xmp import Derivation

log = logging.getLogger(__name__)

#: pyramid jobs: the units or level units built the levels (False: merge builds them, as before)
UNIT_LEVELS = True
#: the decimals of a job's megapixels in its result (the run report): to the pixel. Three
#: made a crop under ~500 pixels 0 (the summary's "0.26 -> 0"), which no formatting of the
#: summary (pipeline.ui.megapixels_text) could show again
PIXEL_DIGITS = 6


def merge(event: MergeEvent) -> dict[str, Any]:
    """Compose the job's output from its segments and publish it in one step."""
    plan = load_plan(event.plan)
    with explained_by_records(plan.work):  # a failed batch fails the job with its own error
        return publish(plan)


def publish(plan: JobPlan) -> dict[str, Any]:
    """Compose the output of ``plan`` from its segments, publish it and write the job's
    result (merge, and ProcessJob after its unit)."""
    spec = plan.spec
    uploads: list[str] = []  # the S3 multipart upload begun, recorded in the job's work

    def started(upload: str) -> None:
        record_output_upload(plan.work, spec.output, upload)
        uploads.append(upload)

    try:  # if_exists skip or fail: never over an output published since PlanJob looked
        size = compose(output_pieces(plan), spec.output, replace=spec.if_exists == "overwrite",
                       started=started,
                       owner=publisher(plan) if storage.is_s3(spec.output) else None)
        forget_output_uploads(plan.work, uploads)
        _end_earlier_attempts(plan)
    except OutputExistsError as exc:
        if spec.if_exists == "fail":
            raise OutputExistsError(
                f"output {spec.output} appeared while the job ran (if_exists: fail): it is "
                "left as it is and this job's result discarded; remove it, or set if_exists "
                "to overwrite or skip, and re-run") from exc
        _end_earlier_attempts(plan)
        save_skipped(plan.work, plan.job, spec, "the output appeared while the job ran "
                     "(if_exists: skip): left as it is, this job's result discarded",
                     plan.started_at)
        held_work.release(layout.plan_file(plan.work))
        return {"job": plan.job, "output": spec.output, "output_bytes": 0, "skipped": True}
    finished = time.time()
    result = {
        "job": plan.job, "status": "SUCCEEDED", "input": spec.input, "output": spec.output,
        "pages": len(plan.pages), "megapixels": round(plan.megapixels, PIXEL_DIGITS),
        "output_megapixels": round(plan.output_megapixels, PIXEL_DIGITS), "tiles": plan.tiles,
        "output_bytes": size, "started_at": plan.started_at, "finished_at": finished,
        "seconds": round(finished - plan.started_at, 3),
    }
    masks = sum(bool(page.info.mask_ifd) for page in plan.pages)
    if masks:  # the output pages after their page (the contact sheet numbers the others)
        result["masks"] = masks
    if plan.note or masks:  # the pages a job without pages left out, and why, and the pages
        # it read (the masks carried are not among them)
        if plan.note:  # (and what of it `tiffpipe run` says: "" when nothing was lost)
            result["message"] = plan.note
            result["notice"] = plan.notice
        result["input_pages"] = [page.info.index for page in plan.pages]
    held_work.save_result(layout.result_file(plan.work), result)
    held_work.release(layout.plan_file(plan.work))  # the job's last step
    return {"job": plan.job, "output": spec.output, "output_bytes": size}


def _end_earlier_attempts(plan: JobPlan) -> None:
    """End the output uploads an earlier attempt of this step left open, once this one
    has published (or skipped) the output: an attempt that died after it began its upload
    (Lambda.ServiceException, a lost invocation: the state machine retries the step) left
    it open, recorded in the job's work, and no RecordFailure comes to a job that succeeds.
    Only this job's records (its work is its run's: never another run's upload of the same
    output). Never the step's failure: what is not ended is said in the log."""
    if not storage.is_s3(plan.spec.output):
        return  # (a local output has no upload; a local run's killed attempt: its tmp files)
    try:
        ended = abort_output_uploads(plan.work)
    except TiffpipeError as exc:
        log.warning("could not end the output uploads an earlier attempt of job %s left "
                    "open: %s", plan.job, exc)
        return
    if ended:
        log.warning("ended %d output upload(s) an earlier attempt of job %s left open",
                    ended, plan.job)


def publisher(plan: JobPlan) -> str:
    """Who publishes the job's output, kept with it on S3: the job of this run (its work
    location, hashed: ASCII, as S3's metadata must be). A retried merge (or ProcessJob)
    whose earlier attempt published the output and then failed (writing its result) finds
    its own output there: if_exists skip or fail do not take it for another's."""
    import hashlib  # (S3 outputs only: a local run loads no OpenSSL, ~3 MB)

    return hashlib.sha256(plan.work.encode()).hexdigest()[:32]


def output_pieces(plan: JobPlan) -> list[Piece]:
    """Every byte of the job's output in order: tifffile's header, IFDs and tag values
    (written over a :class:`LayoutRecorder` with placeholder tiles) and the tiles' spans."""
    big = bigtiff_output(plan)
    # (a classic TIFF's tiles may pass its 4 GiB though its pixels were planned to fit:
    # caught as they are laid out, before a byte of the output is written)
    recorder = LayoutRecorder(None if big else tiff_layout.CLASSIC_TIFF_BYTES)
    reorder: dict[tuple[int, int], TileTable] = {}
    budget = tiff_layout.ROW_MAJOR_READ_THROUGH
    cog = plan.spec.output_options.cog  # (its tiles stay row-major: never reordered)
    ome = plan.spec.output_options.ome
    # each page's IFDs (its own, its levels', masks'), in file order: whether a mask
    masks: list[list[bool]] = []
    metas: list[dict[str, Any]] = []  # (OME) each page's Image metadata, for ome_xml
    unresolved: list[bool] = []  # each page written without a resolution (_has_resolution)
    try:
        with tifffile.TiffWriter(recorder, bigtiff=big, ome=ome) as writer:
            # one InstanceID, one time for its pages' XMP (none to stamp: nothing made)
            derived = derivation(plan.spec) if any(carries_xmp(p.info) for p in plan.pages) \
                else None
            # (packets too large for the plan, read from the input once each)
            packets = XmpPackets(plan.spec.input, plan.input_version)
            for i, page in enumerate(plan.pages):
                tags = _page_tags(plan, page, derived, packets, (i, len(plan.pages)))
                unresolved.append(not _has_resolution(tags))
                if ome:
                    metas.append(tags["metadata"])
                written = _write_page(writer, plan, i, page, tags)
                masks.append([is_mask for _, is_mask in written])
                for j, (table, _) in enumerate(written):
                    runs = table.run_sizes()
                    # what row-major order would read through: the runs too short to copy
                    short = int(runs[runs < tiff_layout.MIN_PART].sum())
                    if cog:
                        continue
                    if (len(runs) > max(tiff_layout.ROW_MAJOR_RUNS, len(table.sources))
                            or (len(runs) > len(table.sources) and short > budget)):
                        reorder[i, j] = table
                    else:
                        budget -= short
            if ome and (stacks := ome_stacks(plan)):
                # (before close, which would write tifffile's Image a page; UTF-8, as close
                # does: "µm")
                xml = ome_xml(plan, stacks, metas).encode()
                writer.overwrite_description(xml)  # type: ignore[arg-type]
    except (LayoutOverflow, ValueError) as exc:
        # (tifffile's own check of a classic file's IFDs: "data too large for non-BigTIFF")
        if big or not (isinstance(exc, LayoutOverflow) or "non-BigTIFF" in str(exc)):
            raise
        raise OutputTooLargeError(_classic_overflow(plan)) from exc
    # (bilevel "auto": each page 1-bit or not, group4 or not, by itself)
    ones, group4 = one_bit_pages(plan), _group4_pages(plan)
    patched = bool(reorder) or any(unresolved) or any(ones) or any(map(any, masks))
    # each page's IFDs, walked once for the patches and a COG's order alike (a patch moves
    # no IFD: each stays where the walk found it)
    ifds = image_ifds(recorder, [len(page_masks) for page_masks in masks]) \
        if patched or cog else []
    if patched:
        each = [(i, ifd, mask) for i, (page_ifds, page_masks) in enumerate(zip(ifds, masks))
                for ifd, mask in zip(page_ifds, page_masks, strict=True)]
        # every 1-bit page (a bilevel output's, a mask) states its BitsPerSample, in the
        # entry tifffile wrote for it (entries move: first)
        for i, ifd, mask in each:
            if ones[i] or mask:
                state_bits_per_sample(recorder, ifd)
        for (i, j), table in reorder.items():
            _by_segment(recorder, ifds[i][j], table)
        # (last: a TileOffsets held in its entry moves with it) a page without a
        # resolution drops tifffile's; a mask page (its page's and its levels') always does
        for i, ifd, mask in each:
            if unresolved[i] or mask:
                drop_entries(recorder, ifd, RESOLUTION_TAGS)
            if group4[i] and not mask:  # (laid out as deflate: see writer_kwargs; a mask page
                set_compression(recorder, ifd, GROUP4)  # stays deflate)
    if cog:  # (one page: more are refused levels as pages, ``level_page_problems``)
        every = [ifd for page_ifds in ifds for ifd in page_ifds]
        return ifds_before_data(recorder, cog_data_order(every, [m for page_masks in masks
                                                                 for m in page_masks]))
    return recorder.pieces()


def cog_data_order(ifds: list[int], masks: list[bool]) -> list[int]:
    """The order of a COG's tile data (``output_options.cog``) among the IFDs of its page
    (its own, its mask, each level and the level's mask, in file order, ``masks`` telling
    which are masks): the smallest level's first and the page's last (GDAL's COG layout:
    a reader zooming out reads the first bytes), each level's mask right after it."""
    groups: list[list[int]] = []
    for ifd, mask in zip(ifds, masks, strict=True):
        if mask and groups:
            groups[-1].append(ifd)
        else:
            groups.append([ifd])
    return [ifd for group in reversed(groups) for ifd in group]


def _group4_pages(plan: JobPlan) -> list[bool]:
    """Whether each page of the job is written in group4 (:func:`page_options`)."""
    return [page_options(plan.spec, page).compression == "group4" for page in plan.pages]


def _classic_overflow(plan: JobPlan) -> str:
    """Why a classic TIFF cannot hold the job's output, and what to set."""
    options = plan.spec.output_options
    codecs = sorted({page_options(plan.spec, page).compression for page in plan.pages}
                    or {options.compression})
    noisy = (f" (noisy 1-bit pages take up to {GROUP4_BITS_PER_PIXEL} bits a pixel in it)"
             if "group4" in codecs else "")
    why = ("output_options.bigtiff is false" if options.bigtiff is False else
           f"its pixels as written uncompressed ({raw_output_bytes(plan)} bytes) were under "
           f"the {BIGTIFF_ABOVE} that make an output a BigTIFF (\"bigtiff\": \"auto\"), and "
           f"{' and '.join(codecs)} made its tiles larger{noisy}")
    return (f"output {plan.spec.output}: its tiles pass the {tiff_layout.CLASSIC_TIFF_BYTES} "
            f"bytes a classic TIFF holds (its offsets are 32-bit), and it was to be a classic "
            f"TIFF: {why}; nothing was written: set \"output_options\": {{\"bigtiff\": true}} "
            "and re-run the job")


def _has_resolution(tags: dict[str, Any]) -> bool:
    """Whether the output page written with ``tags`` (:func:`_page_tags`) carries a
    resolution: its input page's, which :func:`output_tags` keeps (scaled with the page), or
    the one an Aperio page's MPP gives where its description is dropped and its input page
    had no resolution tags (``aperio_resolution``: asked of the input page's metadata, it
    was dropped from the page and its levels). A page given none gets none: tifffile writes
    XResolution 1/1 with ResolutionUnit NONE on every page given none, which readers may
    take for 1 pixel per inch (a page 1 pixel an inch wide)."""
    return tags.get("resolution") is not None


def _by_segment(recorder: LayoutRecorder, ifd: int, table: TileTable) -> None:
    """Lay the tiles of the page at ``ifd`` out segment after segment (each segment one
    range of the file) instead of in row-major order: the data moves, TileOffsets follow."""
    at, fmt = tile_offsets_at(recorder, ifd)
    start = struct.unpack(fmt, recorder.read(at, struct.calcsize(fmt)))[0]  # tile 0's
    sizes = np.bincount(table.segment.ravel(), weights=table.size.ravel(),
                        minlength=len(table.sources)).astype(np.int64)
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    offsets = start + base[table.segment.ravel()] + table.offset.ravel()
    recorder.patch(at, struct.pack(fmt, *offsets.tolist()))
    recorder.replace_data(start, int(sizes.sum()),
                          [Span(src, 0, int(n)) for src, n in zip(table.sources, sizes,
                                                                  strict=True)])


def _write_page(writer: tifffile.TiffWriter, plan: JobPlan, index: int, page: PagePlan,
                tags: dict[str, Any]) -> list[tuple[TileTable, bool]]:
    """Write one output page (placeholder tiles); with a pyramid, its levels: SubIFDs of
    the page, or (``pyramid_layout`` "pages") pages of the main chain right after it, each
    marked reduced-resolution (NewSubfileType 1) either way, tiled and compressed as the
    page: the layout OpenSlide's generic TIFF reader and GDAL's overviews read. A page that
    carries its internal mask gets it right after it (NewSubfileType 4), and each level its
    reduced mask (NewSubfileType 5), as GDAL lays a COG's out: right after the level page,
    or (SubIFD levels) after the page's mask, in the main chain, where GDAL reads a mask of
    a SubIFD overview too (it matches each to the overview of its size).
    ``tags``: the page's :func:`_page_tags` (made by the caller: its XMP stamped with the
    output's one derivation, a packet too large for the plan read by the output's reader).
    Returns the tile tables of the page, of its levels and masks in file order, each with
    whether it is a mask."""
    options = page_options(plan.spec, page)  # (bilevel "auto": the page's own kind)
    channels = page.out_channels
    encoder = OutputEncoder(options, page.out_dtype, channels)
    height, width = page.out_grid.height, page.out_grid.width
    shape = (height, width) + ((channels,) if channels > 1 else ())
    layout = {"rowsperstrip": height} if page.strip else {"tile": (options.tile, options.tile)}
    common = {"dtype": page.out_dtype, **layout,
              "planarconfig": "contig" if channels > 1 else None, **encoder.writer_kwargs()}
    table = TileTable.read(plan, index, page)
    mask = TileTable.read(plan, index, page, MASK_SEGMENT) if page.info.mask_ifd else None

    def write_mask(mask: TileTable, h: int, w: int, subfiletype: int) -> None:
        writer.write(mask.placeholders(), shape=(h, w), **layout,
                     **{**MASK_WRITER_KWARGS, "subfiletype": subfiletype})

    if not options.pyramid or page.strip:  # (a strip page has no levels)
        writer.write(table.placeholders(), shape=shape, **common, **tags)
        if mask is None:
            return [(table, False)]
        write_mask(mask, height, width, 4)  # its internal mask, right after it
        return [(table, False), (mask, True)]
    # imported here, by pyramid jobs only: a run imports its steps within its time
    from pipeline.steps.pyramid import level_method
    from pipeline.steps.unit_levels import merge_band_levels, merge_unit_levels

    method = level_method(plan, index)

    if UNIT_LEVELS and unit_level_count(plan, index):
        levels, masks = merge_unit_levels(plan, index, encoder, method)
    elif UNIT_LEVELS and band_level_count(plan, index):  # (a turned or masked page's: bands)
        levels, masks = merge_band_levels(plan, index, table, encoder, method, mask)
    else:
        levels, masks = _merged_levels(plan, index, table, encoder, method, mask)
    as_pages = options.pyramid_layout == "pages"
    subifds = {"subifds": len(levels)} if levels and not as_pages else {}
    writer.write(table.placeholders(), shape=shape, **common, **tags, **subifds)
    written = [(table, False)]
    if mask is not None and as_pages:
        write_mask(mask, height, width, 4)
        written.append((mask, True))
    # what every level repeats of the base page: how its samples are to be read
    level_tags = {k: tags[k] for k in ("photometric", "extrasamples", "colormap")
                  if tags.get(k) is not None}
    # (absent, a level would read as Orientation 1: turned from its page; a class map's
    # level as gray values: its ColorMap)
    carried = [t for t in tags.get("extratags", []) if t[0] in (ORIENTATION, COLORMAP)]
    if carried:
        level_tags["extratags"] = carried
    shapes = level_shapes(height, width, options.tile)
    for k, ((h, w), level) in enumerate(zip(shapes, levels, strict=True), 1):
        writer.write(level.placeholders(), shape=(h, w) + shape[2:],
                     subfiletype=1, software=tags["software"], metadata=None, **common,
                     **level_tags, **_level_resolution(tags, k))
        written.append((level, False))
        if masks and as_pages:
            write_mask(masks[k - 1], h, w, 5)
            written.append((masks[k - 1], True))
    if mask is not None and not as_pages:  # (after the SubIFD levels, in the main chain)
        write_mask(mask, height, width, 4)
        written.append((mask, True))
        for (h, w), level_mask in zip(shapes, masks, strict=True):
            write_mask(level_mask, h, w, 5)
            written.append((level_mask, True))
    return written


def _page_tags(plan: JobPlan, page: PagePlan, derived: Derivation | None = None,
               packets: XmpPackets | None = None, number: tuple[int, int] | None = None
               ) -> dict[str, Any]:
    """``TiffWriter.write`` keywords of an output page: photometric, extra samples, software
    and the input's carried tags (resolution, ICC, ...; its XMP stamped as the derivative
    ``derived``, :func:`pipeline.adapters.metadata.derivation`, and read from the input by
    ``packets`` when too large for the plan; its PageNumber renumbered ``number``: its
    index among the output's pages and their count, None: none written), and an OME
    page's ``metadata``."""
    ops, options = plan.spec.ops, plan.spec.output_options
    height, width = page.out_grid.height, page.out_grid.width
    bands = chain_bands(ops, page.info.channels)
    mine = page_options(plan.spec, page)  # (bilevel "auto": 1-bit or not, page by page)
    tags = output_tags(page.info, height, width, page.out_channels, chain_keeps_values(ops),
                       page.factor, bands, chain_own_nodata(ops), page_placement(ops, page.info),
                       chain_keeps_statistics(ops), mine.bilevel,
                       chain_linear(ops, page.info.dtype), chain_keeps_nodata(ops),
                       chain_band_names(ops, band_names(page.info)),
                       # (how it stores its samples: for its XMP alone)
                       page_form(plan.spec, page) if carries_xmp(page.info) else None, derived,
                       packets, number, keeps_colormap(ops, mine))
    return _ome_tags(tags, page, bands) if options.ome else tags


def _stack_of(page: PagePlan) -> dict[str, Any]:
    """Where an output page's input plane is in its OME Image of several planes ({}: none;
    ``metadata._ome_plane``)."""
    return (page.info.metadata or {}).get("ome", {}).get("stack") or {}


def ome_stacks(plan: JobPlan) -> dict[int, int]:
    """The runs of output pages that are every plane of one input OME Image, in its order
    (its DimensionOrder's: a job of all the pages of a tifffile or Bio-Formats OME-TIFF):
    the first page's index -> the run's length. Each run is written as that one Image (its
    SizeC, SizeZ, SizeT and DimensionOrder, a Channel each), not as an Image a plane."""
    runs: dict[int, int] = {}
    i = 0
    while i < len(plan.pages):
        first, stack = plan.pages[i], _stack_of(plan.pages[i])
        n = stack.get("planes", 1) if stack.get("plane") == 0 else 1
        run = plan.pages[i:i + n]
        if n > 1 and len(run) == n and all(
                _stack_of(p).get("image") == stack["image"] and _stack_of(p)["plane"] == k
                and (p.out_grid.height, p.out_grid.width, p.out_channels, p.out_dtype,
                     p.strip, p.one_bit) == (first.out_grid.height, first.out_grid.width,
                                             first.out_channels, first.out_dtype, first.strip,
                                             first.one_bit)
                for k, p in enumerate(run)):
            runs[i] = n
            i += n
        else:
            i += 1
    return runs


def ome_xml(plan: JobPlan, runs: dict[int, int], metas: list[dict[str, Any]]) -> str:
    """The OME-XML of an OME output whose pages ``runs`` (:func:`ome_stacks`) are the planes
    of multi-plane Images: tifffile's OME writer's, each other page an Image of its own as
    tifffile writes it, each run one Image of its input's axes, named after the input
    Image, with a Channel for each of its channels (the Channel of its plane at Z = T = 0,
    while the chain keeps it: ``_ome_tags``), its Z and time steps and its Planes'
    attributes (:func:`_stack_pixels`). ``metas``: each page's OME metadata, as
    :func:`_page_tags` made it for the page's IFD (``"metadata"``)."""
    omexml = tifffile.OmeXml()
    ones = one_bit_pages(plan)  # (1-bit pages: tifffile's bool, Type "bit")
    i = 0
    while i < len(plan.pages):
        page, n = plan.pages[i], runs.get(i, 1)
        h, w, s = page.out_grid.height, page.out_grid.width, page.out_channels
        dtype = bool if ones[i] else page.out_dtype
        meta = dict(metas[i])
        samples = ((s,), "S") if s > 1 else ((), "")
        if n == 1:
            omexml.addimage(dtype, (h, w) + samples[0], (1, 1, 1, h, w, s), **meta)
        else:
            stack = _stack_of(page)
            axes, sizes = stack["axes"], stack["sizes"]
            stride = 1  # planes between one channel's and the next (C varies fastest: 1)
            for axis, size in zip(reversed(axes), reversed(sizes), strict=True):
                if axis == "C":
                    break
                stride *= size
            channels = [metas[i + c * stride].get("Channel") or {}
                        for c in range(sizes[axes.index("C")])]
            meta.update(Name=stack["title"] or meta["Name"], Channel=channels,
                        **_stack_pixels(plan, plan.pages[i:i + n]))
            omexml.addimage(dtype, tuple(sizes) + (h, w) + samples[0],
                            (n, 1, 1, h, w, s), axes=axes + "YX" + samples[1], **meta)
        i += n
    return omexml.tostring(declaration=True)


#: Plane attributes that say where a plane's pixels are on the stage: wrong once an op
#: moves them (crop, rotate, flip)
_PLANE_PLACE = ("PositionX", "PositionXUnit", "PositionY", "PositionYUnit")


def _stack_pixels(plan: JobPlan, run: list[PagePlan]) -> dict[str, Any]:
    """``OmeXml.addimage`` keywords of the input Image whose planes, every one in its order,
    ``run`` writes: its PhysicalSizeZ, TimeIncrement and their units (ops work plane by
    plane: a Z step stays one), and its Planes' DeltaT, ExposureTime and PositionX/Y/Z,
    output plane k the input's plane k (``Plane``: one dict a plane; without PositionX/Y
    when the chain moves the pixels). {}: the input said none of them."""
    meta = dict(_stack_of(run[0]).get("pixels") or {})
    moved = page_placement(plan.spec.ops, run[0].info) is not None
    planes = [{key: value for key, value in (_stack_of(p).get("plane_attrs") or {}).items()
               if not (moved and key in _PLANE_PLACE)} for p in run]
    if any(planes):
        meta["Plane"] = planes
    return meta


def _level_resolution(tags: dict[str, Any], k: int) -> dict[str, Any]:
    """The resolution of level ``k`` of a page written with ``tags``: the page's divided by
    2**k (a level pixel is 2**k x 2**k pixels of the page; its last row and column may hold
    fewer, as GDAL and OpenSlide take a level's scale from its reduction), in the page's
    unit. None for a page without one: merge drops tifffile's default on the page and its
    levels alike (:func:`_has_resolution`)."""
    if not _has_resolution(tags):
        return {}
    scale = Fraction(1, 2 ** k)
    return {"resolution": tuple(scaled_resolution(value, scale) for value in tags["resolution"]),
            "resolutionunit": tags["resolutionunit"]}


def _merged_levels(plan: JobPlan, index: int, table: TileTable, encoder: OutputEncoder,
                   method: str, mask: TileTable | None = None
                   ) -> tuple[list[TileTable], list[TileTable]]:
    """The levels of a page built here, from its base tiles read through (the units did not
    build them), and with ``mask`` (the page's mask tiles, read through with them) the
    levels' masks ([] without)."""
    from pipeline.steps.pyramid import Pyramid, level_nodata  # pyramid jobs only

    page = plan.pages[index]
    pyramid = Pyramid(page.out_grid.height, page.out_grid.width, page.out_channels,
                      page.out_dtype, encoder, plan.spec.output_options.tile,
                      layout.levels_dir(plan.work, index), method=method,
                      nodata=level_nodata(plan, index), threads=tile_threads(),
                      masked=mask is not None)
    try:
        masks = mask.tile_bytes() if mask is not None else repeat(None)
        for n, (data, valid) in enumerate(zip(table.tile_bytes(), masks)):
            stopping.check()
            pyramid.feed(data, n // table.cols, n % table.cols, valid)
        levels = [TileTable.from_spans(level.cols, pyramid.spans(k))
                  for k, level in enumerate(pyramid.levels)]
        return levels, [] if mask is None else [
            TileTable.from_spans(level.cols, pyramid.mask_spans(k))
            for k, level in enumerate(pyramid.levels)]
    finally:
        pyramid.close()


#: micrometres per resolution unit (TIFF ResolutionUnit 2: inch, 3: centimetre)
_MICRONS = {2: 25400.0, 3: 10000.0}


def _ome_tags(tags: dict[str, Any], page: PagePlan,
              bands: tuple[int, ...] | None) -> dict[str, Any]:
    """``tags`` for an OME-TIFF page: the OME-XML Image of the page gets its name (PageName,
    which a plane of an OME input without one gets from its Image and Channel: ``metadata.
    ome_name``; else "page <input index>"), its description (ImageDescription, which
    tifffile keeps for the OME-XML), its pixel size (from the resolution, in micrometres)
    and its input Channel's name, colour, wavelengths, ... while the chain keeps the channel
    count and bands (``metadata.ome_channel``)."""
    tags = dict(tags)
    meta: dict[str, Any] = {"Name": f"page {page.info.index}"}
    extratags = []
    for tag in tags.get("extratags", []):
        code, value = tag[0], tag[3]
        if code in (270, 285):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            text = text.rstrip("\x00").strip()
            if text:
                meta["Name" if code == 285 else "Description"] = text
        if code != 270:
            extratags.append(tag)
    tags["extratags"] = extratags
    unit, resolution = tags.get("resolutionunit"), tags.get("resolution")
    if resolution is not None and unit in _MICRONS:
        for axis, value in zip("XY", resolution, strict=True):
            per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
            if per_unit > 0:
                meta[f"PhysicalSize{axis}"] = _MICRONS[unit] / per_unit
                meta[f"PhysicalSize{axis}Unit"] = "\u00b5m"
    channel = ome_channel(page.info, page.out_channels, bands)
    if channel:
        meta["Channel"] = channel
    tags["metadata"] = meta
    return tags
