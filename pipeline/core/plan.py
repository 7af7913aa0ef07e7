"""A job's plan from its pages and op chain: grids, halo, split units and batches. Pure."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.core import convert as convert_mod
from pipeline.core import geometry
from pipeline.core.chain import ChainLayout
from pipeline.core.grid import Batch, PageGrid, SplitUnit, batches, split_unit_count, split_units
from pipeline.core.job_fields import TILE_RANGE, chain_tile_problem, tile_at_least, tile_step
from pipeline.core.levels import level_shapes
from pipeline.core.models import JobPlan, JobSpec, OutputOptions, PageInfo, PagePlan
from pipeline.core.nodata import BITS_FIX, unheld_nodata
from pipeline.core.ops import (
    OpCall,
    chain_binary,
    chain_from_json,
    chain_grays,
    chain_halo,
    chain_keeps_values,
    chain_out_channels,
    chain_problems,
)
from pipeline.core.record import record

#: decoded input rows one split invocation holds at most (bytes); bounds its memory
SPLIT_CACHE_BUDGET = 32 * 1024 * 1024
#: ... and of a page in compressed strips (:func:`cache_budget`): a strip spans the page and
#: is decoded whole by every column chunk that needs a row of it, so a band cut into chunks
#: decodes its strips once per chunk. A band up to this many bytes of decoded rows stays one
#: chunk (a 31,616 px wide RGB page with 1024 px tiles: ~100 MB, once 4 chunks of 32 MB, 2.1-3x
#: slower; what it saves and costs: docs/performance-sweep.md, "pages in compressed strips");
#: a wider band is cut into chunks this large, each still decoding the band's strips
STRIPED_CACHE_BUDGET = 256 * 1024 * 1024
#: core pixels of one split unit; bounds an invocation's time (about 10 s on one core)
SPLIT_UNIT_PIXELS = 1024 * 1024 * 1024
#: core pixels of one fused unit (split and process in one invocation): the chain's work
#: makes a pixel cost several times a split pixel, and smaller units keep the fan-out wide
FUSED_UNIT_PIXELS = 256 * 1024 * 1024
#: tiles one process invocation handles (bounded in pixels by the tile size)
TILES_PER_BATCH = 8
#: a fused job of one unit runs as ONE task, the unit then the merge (:func:`single_task`),
SINGLE_TASK_JOBS = True
#: ... and so does a fused job of several units (pages) whose pages hold at most this many
#: pixels: its units run side by side in the task; a Map of such short units (on AWS a
#: Distributed Map run and its child executions) costs more than it saves
SINGLE_TASK_PIXELS = 16 * 1000 * 1000
#: ... and keeps its segment in memory when its encoded tiles are at most about this many
#: bytes (:func:`held_bytes`)
HELD_OUTPUT_BYTES = 64 * 1024 * 1024
#: classic TIFF offsets are 32-bit: above this many bytes of pixels as written uncompressed
#: (:func:`raw_output_bytes`), an output of ``"bigtiff": "auto"`` is a BigTIFF (a margin
#: under the 4 GiB a classic TIFF holds, for what its codec adds: merge refuses to lay out
#: a classic TIFF past those 4 GiB, :data:`pipeline.core.tiff_layout.CLASSIC_TIFF_BYTES`)
BIGTIFF_ABOVE = 2**31
#: the most bits a pixel takes in a CCITT T.6 (group4) tile: each code (at most 7 bits in
#: vertical mode, 4 in pass mode covering 2 pixels or more, 3 + 6 + 3 in horizontal mode
#: for two runs of 1) moves on a pixel or more; a row adds at most 7 (its first run may be
#: a white run of 0, 8 bits) and a tile 4 bytes (the EOFB and its padding). Noise takes
#: about 2 (measured with libtiff's encoder: a random 512 px tile, 2.1 bits a pixel)
GROUP4_BITS_PER_PIXEL = 7
#: the most items one Map state is given (Distributed Map fans out up to 10,000 children)
MAX_ITEMS = 10_000
#: a page with fewer processing tiles than this is cut finer (:func:`page_tile`), so that its
#: tiles keep an invocation's tile threads busy: a 1 Mpx page in one 1024 px tile ran on one
#: core, blurring and then encoding its four output tiles one after another
MIN_PAGE_TILES = 4
#: ... but a tile stays at least this many times its halo (else reading the halo twice costs
#: more than the threads gain)
MIN_TILE_PER_HALO = 8
#: the largest Aperio image stored in strips (a thumbnail, label or macro) written as one
#: strip (:func:`strip_page`): larger ones are written in tiles
STRIP_PAGE_PIXELS = 16 * 1024 * 1024
#: a processing tile of a page of many bands (hyperspectral: 128 float32 bands are 512 bytes
#: a pixel) is cut finer while it holds more than this many bytes of input pixels: the
#: tiles an invocation holds at once, with their halos, copies and output rows, are what
#: bound its memory (a 1024 px tile of such a page is 512 MB)
MAX_TILE_BYTES = 64 * 1024 * 1024


@record(frozen=True)
class Problem:
    """A problem that stops a job from running, as PlanJob, ``validate --inputs`` and
    ``tiffpipe estimate`` tell it: ``text``, its message ("page 2: ops[0] ...": ``str()``
    of it); ``page``, the page it is of (None: the job's own, of no one page: a tile that
    does not fit the chain, too many work items). ``tells_pages``: its message says
    already which pages the job could keep (a crop's box: :func:`pages_that_fit` adds
    nothing). :func:`grouped_by_page` and :func:`pages_that_fit` read these fields, never
    the page's number back out of the text."""

    page: int | None
    text: str
    tells_pages: bool = False

    @classmethod
    def of_page(cls, page: int, what: str, tells_pages: bool = False) -> Problem:
        """The problem ``what`` of page ``page``, told "page N: what"."""
        return cls(page, f"page {page}: {what}", tells_pages)

    @property
    def what(self) -> str | None:
        """The message without its "page N: " (None: it has none: the job's own problem, or
        a page's told in its own words, "page 7 asked for, the file has 2 page(s) ...")."""
        head = f"page {self.page}: "
        return self.text[len(head):] if self.page is not None and \
            self.text.startswith(head) else None

    def __str__(self) -> str:
        return self.text


def job_problems(texts: list[str]) -> list[Problem]:
    """Problems of the job's own (of no one page), from their messages."""
    return [Problem(None, text) for text in texts]


def make_plan(job: int, spec: JobSpec, infos: list[PageInfo], work: str,
              started_at: float, input_version: str = "", note: str = ""
              ) -> tuple[JobPlan, list[Problem]]:
    """The plan of one job, and the problems (each of its page, if of one) that stop it from
    running. ``note``: what the job's result tells besides (:func:`left_out_note`)."""
    chain = chain_from_json(spec.ops)
    pages: list[PagePlan] = []
    halo = 0
    found: list[tuple[PageInfo, str]] = []  # (each page's problems with the chain)
    for info in infos:
        dtype = np.dtype(info.dtype)
        found += [(info, p) for p in chain_problems(chain, dtype, info.channels,
                                                    info.photometric, info.extrasamples)]
        halo = max(halo, chain_halo(chain, dtype))
    planes = stack_planes(infos) if found else {}  # (once a plan: not once a problem)
    problems = [Problem.of_page(info.index, channel_pages_hint(
        explain_conversion(p, info), info, planes, chain)) for info, p in found]
    layout = ChainLayout.of(chain, infos[0].dtype if infos else "uint8")
    placed = []  # each page as the chain's geometric ops make it (its size: the grid's)
    sizes = [geometry.placed_size(chain, info.height, info.width) for info in infos]
    # pages that hold every crop box: a job of pages of several sizes can keep to them
    fits = [info.index for info, (_, why) in zip(infos, sizes, strict=True) if not why]
    for info, ((height, width), why) in zip(infos, sizes, strict=True):
        crops = [Problem.of_page(info.index, p) for p in why]
        if crops and fits:  # (the last one says which pages hold the box)
            crops[-1] = Problem.of_page(
                info.index, f'{why[-1]}; or give this job "pages" with the pages that hold '
                f"the box ({_ranges(fits)}) and page {info.index} a job of its own",
                tells_pages=True)
        problems += crops + [Problem.of_page(info.index, p)
                             for p in geometry.georeferenced(chain, info.metadata)]
        placed.append(replace(info, height=height, width=width))
    problems += geometry_problems(layout, spec, placed) + level_page_problems(spec, layout, infos)
    problems += job_problems(grays_problems(spec, chain))
    transposed = geometry.transposes(chain)
    bilevel = spec.output_options.bilevel
    for info, sized in zip(infos, placed, strict=True):
        tile = page_tile(spec.tile, spec.output_options.tile, layout, halo, sized)
        strip = strip_page(sized, spec.output_options.tile, layout)
        if strip:  # one processing tile: the strip is encoded whole
            tile = max(tile, strip)
        grid = PageGrid(sized.height, sized.width, tile, halo)
        page = PagePlan(info, chain_out_channels(chain, info.channels), grid, layout.factor,
                        strip=bool(strip),
                        out_dtype=ChainLayout.of(chain, info.dtype).dtypes[-1].name)
        # (written 1-bit: every page of a "bilevel": true job, none of a false one's)
        unheld = unheld_nodata(page.info, spec.ops)
        pages.append(replace(page, one_bit=auto_one_bit(chain, page, unheld)
                             if bilevel == "auto" else bool(bilevel)))
    problems += job_problems(mask_pairing_problems(spec, pages))
    # fused: each unit's tiles are processed where they are read, without work tiles; chains
    # with whole-page statistics (or canny's hysteresis) need every tile before any output
    fused = spec.fuse and not layout.rounds
    unit_pixels = FUSED_UNIT_PIXELS if fused else SPLIT_UNIT_PIXELS
    # (an input tile's width: its height, as TIFF tiles mostly are; 0 for strips)
    cuts = [(page.grid, np.dtype(page.info.dtype).itemsize * page.info.channels,
             page.info.segment_rows, cache_budget(page.info),
             page.info.segment_rows if page.info.tiled else 0) for page in pages]
    # counted before any list is made: a header may claim billions of tiles (the batches
    # grow to fit MAX_ITEMS: process_batches)
    count = sum(split_unit_count(grid, bpp, rows, budget, unit_pixels, seg_cols, transposed)
                for grid, bpp, rows, budget, seg_cols in cuts)
    units: list[SplitUnit] = []
    work_batches: list[Batch] = []
    if count <= MAX_ITEMS:
        for i, (grid, bpp, rows, budget, seg_cols) in enumerate(cuts):
            units += split_units(i, grid, bpp, rows, budget, unit_pixels, seg_cols,
                                 transposed)
        work_batches = [] if fused else process_batches(pages)
    items = max(count, len(work_batches))
    if items > MAX_ITEMS and len(pages) > MAX_ITEMS:  # a page is one item at least
        problems.append(Problem(None, f"the job has {len(pages)} pages, each at least one "
                                f"work item: more than the {MAX_ITEMS} a run can fan out (a "
                                "larger tile cannot help); split it into jobs of at most "
                                f"{MAX_ITEMS} pages (each job's \"pages\" picks its share)"))
    elif items > MAX_ITEMS:
        problems.append(Problem(None, f"the job needs {items} work items, more than the "
                                f"{MAX_ITEMS} a run can fan out; split it into jobs of "
                                "fewer pages, or raise the tile size"))
    plan = JobPlan(job=job, spec=spec, work=work, halo=halo, pages=pages, units=units,
                   batches=work_batches, started_at=started_at, fused=fused,
                   input_version=input_version, note=note)
    return plan, problems


def grays_problems(spec: JobSpec, chain: list[OpCall]) -> list[str]:
    """A 1-bit output (``output_options.bilevel``) of a chain whose last op that does not
    keep black and white grays them (:func:`~pipeline.core.ops.chain_grays`: a blur or a
    downsample with no threshold after it), refused when the job is planned (PlanJob,
    ``validate --inputs``, ``tiffpipe estimate``), before any pixel is read. Whatever else
    the pixels hold (a gray page's own values, a custom op's) is found as the tiles are
    encoded (pipeline.steps.process)."""
    grays = chain_grays(chain) if spec.output_options.bilevel is True else None
    if grays is None:
        return []
    name = chain[grays].op.name
    pick = picking_fix(chain[grays])
    return [(f"output_options.bilevel: ops[{grays}] ({name}) makes gray values wherever "
             "black and white meet, and a 1-bit output holds 0 and 255 only; "
             + (f"give it {pick} to keep them, or " if pick else "") + "add "
             '{"op": "threshold", "value": 127} (or otsu_threshold) after it, or drop '
             '"bilevel" for an 8-bit output')]


def picking_fix(call: OpCall) -> str:
    """The parameter that makes a graying op keep black and white ("": none): a
    ``downsample``'s block means gray them, and a method that picks one of each block's
    samples (``nearest``, ``mode``, ``min``: 0 or 255, as ``Op.binary`` says) keeps a 1-bit
    page black and white, so 1-bit, without a threshold. ``max`` keeps them too, but
    whitens black text thinner than a block (``min`` keeps it)."""
    if call.op.name != "downsample":
        return ""
    return '"method": "mode" (or "nearest", "min")'


def auto_one_bit(chain: list[OpCall], page: PagePlan, nodata: float | None) -> bool:
    """Whether ``output_options.bilevel`` "auto" writes the page 1-bit: its output is one
    band of uint8 (not a palette's indices) and black and white whatever its pixels, by
    :attr:`~pipeline.core.ops.Op.binary` (:func:`~pipeline.core.ops.chain_binary`): the
    chain's last op that does not keep black and white makes them (threshold,
    otsu_threshold, canny), or every op keeps them and the input page is 1-bit (a scanned
    book's CCITT text page, copied, cropped or turned). A
    chain whose output is not known before the pixels are (a convert, a custom op) or that
    grays them (a blur) leaves the page as it would be without ``bilevel``, and so does a
    no-data value the output keeps that is neither 0 nor 255 (``nodata``:
    :func:`~pipeline.core.nodata.unheld_nodata`, None: none): its no-data pixels hold it
    (otsu_threshold writes them back), which no bit holds (``bilevel`` true refuses such a
    page: ``pipeline.adapters.tile_codec``)."""
    if page.out_channels != 1 or page.out_dtype != "uint8" or (
            page.info.photometric == "palette") or nodata is not None:
        return False
    _, kind = chain_binary(chain)
    return kind == "makes" or kind == "keeps" and page.info.conversion.startswith("bilevel ")


def auto_fix(plan: JobPlan) -> str:
    """What a ``"bilevel": true`` job of a scanned book (1-bit text pages and colour
    plates) does first about the pages 1-bit cannot hold ("": not such a job): set
    ``"bilevel": "auto"``, which writes the pages whose output is black and white 1-bit
    (:func:`auto_one_bit`) and the others as they are. Before, a plate
    was told only to_gray and a threshold (which binarise the plate) or a job of its own
    (``pipeline.adapters.tile_codec.output_problems`` puts it first)."""
    spec = plan.spec
    if spec.output_options.bilevel is not True:
        return ""
    chain = chain_from_json(spec.ops)
    ones = [page.info.index for page in plan.pages
            if auto_one_bit(chain, page, unheld_nodata(page.info, spec.ops))]
    if not ones:
        return ""
    comp = spec.output_options.compression
    codec = ('with a "compression" for the others (zstd, deflate, lzw, jpeg or none; group4 '
             'holds 1-bit pages only)' if comp == "group4" else
             f'with "bilevel_compression": "{comp}" (the 1-bit pages\' codec, group4 unless '
             "set)")
    return (f'set "bilevel": "auto" {codec} to write {_pages(ones)} 1-bit and the others as '
            "they are")


def page_options(spec: JobSpec, page: PagePlan) -> OutputOptions:
    """The output options a page is written with: the job's, but with ``bilevel`` "auto" a
    1-bit page's (:attr:`PagePlan.one_bit`) are ``bilevel`` true in
    ``bilevel_compression`` (``level`` kept when that is ``compression``'s codec, else the
    codec's own), any other page's ``bilevel`` false in ``compression``. So every page's
    encoder, tags and size are those of a job of its own kind."""
    options = spec.output_options
    if options.bilevel == page.one_bit:  # (a true job's pages, a false one's: "auto" is neither)
        return options
    if not page.one_bit:
        return replace(options, bilevel=False)
    codec = options.bilevel_compression
    return replace(options, bilevel=True, compression=codec,
                   level=options.level if codec == options.compression else None)


def masked_out_white(page: PagePlan) -> bool:
    """Whether a page's masked-out pixels are written white: a 1-bit output page
    (:attr:`PagePlan.one_bit`) that carries its mask
    (:meth:`pipeline.steps.evaluate.TileEvaluator.output`), whose tiles read the mask once
    more each for it (as ``tiffpipe estimate`` counts)."""
    return bool(page.info.mask_ifd) and page.one_bit


def one_bit_pages(plan: JobPlan) -> list[bool]:
    """Whether each page of the job is written 1-bit (:attr:`PagePlan.one_bit`,
    :func:`page_options`)."""
    return [page.one_bit for page in plan.pages]


def cache_budget(info: PageInfo) -> int:
    """The decoded rows a unit of the page may hold (bytes): :data:`SPLIT_CACHE_BUDGET`;
    :data:`STRIPED_CACHE_BUDGET` for a page in compressed strips; twice a segment (a
    compressed strip, or a tile) where that is more. A compressed strip spans the page and
    is decoded whole by every unit that needs a row of it, so cutting a band into column
    chunks to hold fewer rows multiplied its decodes: each chunk of a 40,000 px wide page in
    16-row strips decoded every strip of its band again (5 chunks at 32 MB), and a page in
    one deflate strip of 400 MB was decoded by each of 20 units, without lowering the peak,
    which the decode of a whole strip sets. So for tiles, twice a tile: a tile is decoded
    whole too, by each chunk that needs it (a 16384 px page in 8192 px tiles: 36 decodes of
    its 4 tiles). Uncompressed strips are read by rows: any chunk reads only its columns."""
    if info.compression == "none" and not info.tiled:
        return SPLIT_CACHE_BUDGET
    width = info.segment_rows if info.tiled else info.width  # (tiles: square, as a rule)
    segment = info.segment_rows * width * info.channels * np.dtype(info.dtype).itemsize
    return max(SPLIT_CACHE_BUDGET if info.tiled else STRIPED_CACHE_BUDGET, 2 * segment)


def grouped_by_page(problems: list[Problem]) -> list[str]:
    """The problems of a job as told, each once: "page N: what" problems that say the same
    of several pages become one, "pages 0-89 (90 pages): what" (a file of 90 CMYK pages is
    one problem, not 90). The others (the job's own, a page's told in its own words:
    :attr:`Problem.what`) stay as they are; the order is that of first mention."""
    groups: dict[tuple[bool, str], list[int]] = {}  # (of pages?, what) -> the pages
    for problem in problems:
        what = problem.what
        if problem.page is None or what is None:
            groups.setdefault((False, problem.text), [])
        else:
            groups.setdefault((True, what), []).append(problem.page)
    return [what if not paged else f"page {pages[0]}: {what}" if len(pages) == 1 else
            f"pages {_ranges(pages)} ({len(pages)} pages): {what}"
            for (paged, what), pages in groups.items()]


#: the most pages :func:`pages_that_fit` spells out as a job's ``pages`` (a book of 3,000
#: pages would make the error, which a Step Functions execution carries, ~15 KB)
FIT_PAGES_LISTED = 50


def pages_that_fit(problems: list[Problem], pages: list[int], refused: list[int]) -> str:
    """What a job whose chain or output options fit some of its pages only can do (""
    when it cannot, or is told already): ``problems``, the plan's; ``pages``, the pages
    planned, in the job's order; ``refused``, pages the reader refused. A scanned book
    binarised for OCR whose colour plate ``otsu_threshold`` refuses is named with the pages
    that would run, as the job's ``pages`` that runs them. Not said when a problem is not
    of a page (the job's own), or says it already (:attr:`Problem.tells_pages`: a crop's
    box)."""
    bad = set(refused)
    for problem in problems:
        if problem.page is None or problem.tells_pages:
            return ""
        bad.add(problem.page)
    fits = [page for page in pages if page not in bad]
    if not problems or not fits:
        return ""
    one_fits, one_bad = len(set(fits)) == 1, len(bad) == 1
    listed = (f"\"pages\": [{', '.join(map(str, fits))}]" if len(fits) <= FIT_PAGES_LISTED
              else f"\"pages\" with them ({len(fits)} pages, in the job's order)")
    return (f"{'page' if one_fits else 'pages'} {_ranges(fits)} "
            f"{'has' if one_fits else 'have'} none of these problems: give this job "
            f"{listed} to run {'it' if one_fits else 'them'}, and "
            f"{'page' if one_bad else 'pages'} {_ranges(sorted(bad))} a job of "
            f"{'its' if one_bad else 'their'} own with ops and output options that fit "
            f"{'it' if one_bad else 'them'}")


def masks_left_out(spec: JobSpec) -> str:
    """Why the job's output carries no internal mask of its input's pages (""): it does
    (pipeline.steps.masks). A mask moves with its page through rotate, flip and crop, no
    value op changes which pixels are valid, a downsample and the pyramid levels reduce it
    (a pixel is valid where its block holds a valid one); an OME-TIFF (whose pages are its
    planes) has no place for it."""
    options = spec.output_options
    if not options.masks:
        return "output_options.masks is false"
    if options.ome:
        return "an OME-TIFF's pages are its images (output_options.ome)"
    return ""


def left_out_note(left_out: list[tuple[int, str, int | None, bool]],
                  pyramid: bool = False, masks_why: str = "",
                  carried: list[int] | None = None, processed: bool = True) -> str:
    """What a job's result says of the pages it left out (a job without ``pages``:
    ``pipeline.adapters.tiff_read.classified``) and of the SubIFD levels any job leaves out:
    which, and why; "" when none was. Each entry is (page, "mask", "reduced" or "levels",
    the image page it derives from, whether a mask is an overview's); the masks the output
    carries are not among them. ``masks_why``: why the
    output carries no mask (:func:`masks_left_out`), said of the masks it would carry;
    ``carried``: the pages whose masks it carries (the others left out are not theirs: an
    overview's mask, an 8-bit one, one not right after its page). ``processed`` False: the
    job has no ops (a copy), whose levels are left out not because they would not match its
    pixels, which are the input's, but because a job copies no level: said so."""
    why = (", which would not match the processed pixels: " if processed else
           ", which a job does not copy (its output pages are the images only): ")
    remade = ("the output's levels (output_options.pyramid) are made from them" if processed
              else "the output's levels (output_options.pyramid) are made from the page")
    parts = []
    masks = [(i, of, small) for i, kind, of, small in left_out if kind == "mask"]
    if masks:
        bases = sorted({of for _, of, _ in masks if of is not None})
        many = len(masks) > 1
        whose = (f" of page{'s' if len(bases) > 1 else ''} {_ranges(bases)}" if bases else "")
        if whose and any(small for *_, small in masks):
            whose += f" and {'their' if len(bases) > 1 else 'its'} reduced-resolution pages"
        parts.append(f"{_pages([i for i, _, _ in masks])} left out: the transparency "
                     f"mask{'s' if many else ''}{whose} (NewSubfileType bit 2, Photometric "
                     f"MASK), not {'images' if many else 'an image'}: "
                     + (f"the output carries the internal mask{'s' * (len(carried) > 1)} of "
                        f"{_pages(carried)} only (1-bit, the page's size, right after it"
                        + (", and its levels' masks reduced from it" if pyramid else "") + ")"
                        if carried else
                        "the output has no mask" + (f" ({masks_why})" if masks_why else "")
                        + f", its masked-out area{'s are' if many else ' is'} data like any "
                        "other"))
    reduced = [(i, of) for i, kind, of, _ in left_out if kind == "reduced"]
    if reduced:
        bases = sorted({of for _, of in reduced if of is not None})
        parts.append(f"{_pages([i for i, _ in reduced])} left out: reduced-resolution "
                     f"page{'s' if len(reduced) > 1 else ''} (overviews, NewSubfileType bit 0) "
                     f"of page{'s' if len(bases) > 1 else ''} {_ranges(bases)}{why}"
                     + (remade if pyramid else _levels_from(processed))
                     + " (or list the pages in the job's pages to process each as a page of "
                     "its own)")
    unplaced: dict[int, list[int]] = {}  # (image page: its listed overviews without GeoTIFF)
    for i, kind, of, _ in left_out:
        if kind == "unplaced" and of is not None:
            unplaced.setdefault(of, []).append(i)
    for of, listed in unplaced.items():
        many = len(listed) > 1
        parts.append(f"{_pages(listed)} {'are' if many else 'is a'} reduced-resolution "
                     f"page{'s' * many} (overview{'s' * many}) of page {of} without GeoTIFF "
                     f"tags of {'their' if many else 'its'} own (GDAL places an overview by "
                     "its page's): the output is not georeferenced; for a georeferenced "
                     f'reduced copy, process page {of} with a {{"op": "downsample"}} instead')
    levels = [i for i, kind, _, _ in left_out if kind == "levels"]
    if levels:
        parts.append(f"the reduced-resolution levels (SubIFDs) of {_pages(levels)} left "
                     f"out{why}" + (remade if pyramid else _levels_from(processed)))
    parts += [loop_note(i, of) for i, kind, of, _ in left_out if kind == "loop" and of is not None]
    return "; ".join(parts)


def loop_note(last: int, back_to: int) -> str:
    """What a job without ``pages`` (and ``tiffpipe inspect``) says of a file whose chain of
    pages loops: page ``last`` points back to page ``back_to``; the pages before the loop
    are read, any after it are not (tifffile, libtiff and Pillow end the chain there too).
    Before, a 3-page file whose first page pointed to itself was processed as 1 page,
    exit 0, without a word."""
    read, them = ("page 0 is", "it") if last == 0 else (f"pages 0..{last} are", "them")
    return (f"the chain of pages (IFDs) loops: page {last}'s pointer to the next page leads "
            f"back to page {back_to}, so {read} read and any pages the file has after {them} "
            "are not; if it should have more, the file is damaged: copy it again from its "
            "source or export it again")


_LEVELS_FROM_OUTPUT = "set output_options.pyramid for levels made from the output"


def _levels_from(processed: bool) -> str:
    """What to do for levels, said after why the input's were left out."""
    return "set output_options.pyramid for levels made from them" if processed \
        else _LEVELS_FROM_OUTPUT


def left_out_notice(left_out: list[tuple[int, str, int | None, bool]],
                    pyramid: bool = False, masks_why: str = "",
                    carried: list[int] | None = None) -> str:
    """What of :func:`left_out_note` (the same arguments) ``tiffpipe run`` says on stderr: a
    short line of what the output lost, "" when nothing was (a COG's overviews with
    ``pyramid``, whose levels are made again; the masks of pages whose mask it carries:
    their overviews' masks, reduced from it with ``pyramid``, else left out with them). The
    report's message keeps the whole note, and why."""
    carried = carried or []
    kinds = {kind: [e for e in left_out if e[1] == kind] for kind in
             ("mask", "reduced", "levels", "unplaced")}
    masks = [i for i, _, of, _ in kinds["mask"] if of not in carried]
    parts = []
    if masks:
        parts.append(f"{_pages(masks)} left out: {'masks' if len(masks) > 1 else 'a mask'} "
                     f"the output does not carry" + (f" ({masks_why})" if masks_why else ""))
    overviews = [i for i, *_ in kinds["reduced"]]
    if overviews and not pyramid:
        parts.append(f"{_pages(overviews)} left out: overview{'s' * (len(overviews) > 1)}; "
                     f"{_LEVELS_FROM_OUTPUT}")
    levels = [i for i, *_ in kinds["levels"]]
    if levels and not pyramid:
        parts.append(f"the SubIFD levels of {_pages(levels)} left out; {_LEVELS_FROM_OUTPUT}")
    unplaced = sorted({of for _, _, of, _ in kinds["unplaced"] if of is not None})
    if unplaced:
        parts.append(f"overviews of {_pages(unplaced)} without GeoTIFF tags of their own: "
                     "the output is not georeferenced")
    parts += [loop_note(i, of) for i, kind, of, _ in left_out if kind == "loop" and of is not None]
    return "; ".join(parts)


def one_bit_note(spec: JobSpec, pages: list[PagePlan]) -> str:
    """What a job's result says of its 1-bit pages ("" nothing): with ``bilevel`` "auto",
    which pages it writes 1-bit and in what, and which as they are (:func:`auto_note`);
    without ``bilevel``, its 1-bit input pages written 8-bit: a copy (or crop, turn: a
    chain whose every op keeps black and white, ``Op.binary``) of a scanned book's CCITT
    text pages writes them as 8-bit gray of 0 and 255, up to 8 times the bytes, which
    nothing said. Not of a chain that changes their values (a blur: the 8 bits hold its
    grays), nor of a pyramid output, which holds no 1-bit page."""
    options = spec.output_options
    if options.bilevel == "auto":
        return auto_note(spec, pages)
    if options.bilevel or options.pyramid or (
            chain_binary(chain_from_json(spec.ops))[1] != "keeps"):
        return ""
    ones = [page.info.index for page in pages if page.info.conversion.startswith("bilevel")
            and page.out_channels == 1 and page.out_dtype in ("", "uint8")]
    if not ones:
        return ""
    others = sorted({page.info.index for page in pages} - set(ones))
    them = "them" if len(ones) > 1 else "it"
    told = (f"{_pages(ones)} {'are' if len(ones) > 1 else 'is'} 1-bit in the input, written "
            "as 8-bit gray (0 and 255): ")
    if others or options.compression == "jpeg":  # (a book's plates: "auto" keeps them)
        rest = (f" and {_pages(others)} as {'they are' if len(others) > 1 else 'it is'} in "
                f"{options.compression}" if others else "")
        return told + (f'"output_options": {{"bilevel": "auto"}} writes {them} 1-bit again '
                       f'(in group4, CCITT G4: "bilevel_compression"){rest}')
    return told + (f'"output_options": {{"bilevel": true}} writes {them} 1-bit again '
                   '("compression": "group4" for CCITT G4)')


def auto_note(spec: JobSpec, pages: list[PagePlan]) -> str:
    """Which pages a ``bilevel`` "auto" job writes 1-bit, in which codec, and which as they
    are, in which, and of those that would be 1-bit but for the no-data value they keep
    (:func:`auto_one_bit`), why, and of 1-bit input pages the chain grays (a mean
    downsample), which op and how to keep them 1-bit (:func:`grayed_note`): its result's
    message, as ``validate --inputs`` and ``estimate`` show it."""
    options, chain = spec.output_options, chain_from_json(spec.ops)
    ones = [page.info.index for page in pages if page.one_bit]
    # (not 1-bit for their kept no-data value alone: its value -> the pages)
    held: dict[str, list[int]] = {}
    # (1-bit input pages the chain grays: a mean downsample's, a blur's)
    grayed, gray_op = [], chain_grays(chain)
    others = []
    for page in pages:
        if page.one_bit:
            continue
        nodata = unheld_nodata(page.info, spec.ops)
        if nodata is not None and auto_one_bit(chain, page, None):
            held.setdefault(f"{nodata:g}", []).append(page.info.index)
        elif gray_op is not None and page.info.conversion.startswith("bilevel ") and \
                page.out_channels == 1 and page.out_dtype == "uint8":
            grayed.append(page.info.index)
        else:
            others.append(page.info.index)
    parts = []
    if ones:
        parts.append(f"{_pages(ones)} written 1-bit in {options.bilevel_compression}")
    if others:
        parts.append(f"{_pages(others)} as {'they are' if len(others) > 1 else 'it is'} in "
                     f"{options.compression}")
    if grayed:
        parts.append(grayed_note(chain, gray_op or 0, grayed, options.compression))
    for value, numbers in held.items():
        its = "their" if len(numbers) > 1 else "its"
        parts.append(f"{_pages(numbers)} written 8-bit in {options.compression}: {its} no-data "
                     f"value {value} (GDAL_NODATA) is kept through the ops, and a 1-bit page "
                     f"holds only 0 and 255; {BITS_FIX[0]} to write "
                     f"{'them' if len(numbers) > 1 else 'it'} 1-bit ({BITS_FIX[1]})")
    return 'bilevel "auto": ' + "; ".join(parts)


def grayed_note(chain: list[OpCall], n: int, numbers: list[int], compression: str) -> str:
    """What a ``bilevel`` "auto" job says of its 1-bit input pages (a scanned book's CCITT
    text pages) that ``chain[n]`` grays (:func:`~pipeline.core.ops.chain_grays`), so writes
    8-bit: which op, and how to keep them 1-bit (:func:`picking_fix`, else a threshold).
    Before, they were told "as they are", which they were not: a mean downsample made
    108 KB of 8-bit JPEG of 6 KB of group4."""
    call = chain[n]
    how = f"{call.op.name}, {call.params['method']}" if "method" in call.params else \
        call.op.name
    them = "them" if len(numbers) > 1 else "it"
    pick = picking_fix(call)
    fix = (f"{pick} keeps {them} black and white and 1-bit" if pick else
           f'add {{"op": "threshold", "value": 127}} after it to write {them} 1-bit')
    return (f"1-bit {_pages(numbers)} grayed by ops[{n}] ({how}): written 8-bit in "
            f"{compression}; {fix}")


def convert_note(spec: JobSpec, pages: list[PagePlan]) -> str:
    """What a job's result says of a plain ``convert`` to a narrower integer type (no
    ``in_range``: the type's whole range mapped) of pages whose header says their values
    stop well below their type's maximum (a 12-bit camera's MaxSampleValue 4095 in uint16,
    ``PageInfo.metadata["max_sample"]``), through ops that keep values before it: their
    brightest value ends at 16 of 255, a near-black output, which nothing said ("":
    nothing to say). The JPEG refusal gives the same ``in_range`` (``tile_codec``)."""
    n = next((i for i, op in enumerate(spec.ops) if op["op"] == "convert"), None)
    if n is None:
        return ""
    op = spec.ops[n]
    # (an op before it that remaps values: the header's top is not its values')
    if op.get("in_range") is not None or np.dtype(op["dtype"]).kind not in "ui" or \
            not chain_keeps_values(spec.ops[:n]):
        return ""
    onto = convert_mod.out_range(op)
    told: dict[tuple[int, int, str, str, str, float, float], list[int]] = {}
    for page in pages:
        top = (page.info.metadata or {}).get("max_sample")
        if top and np.iinfo(op["dtype"]).max < np.iinfo(page.info.dtype).max:
            told.setdefault((n, *top, page.info.dtype, op["dtype"], *onto), []).append(
                page.info.index)
    parts = []
    for (n, value, said, source, target, olo, ohi), numbers in told.items():
        src = np.iinfo(source)  # (unsigned: a header's top is of such pages, sample_top)
        lo, hi = f"{olo:g}", f"{ohi:g}"  # (its out_range, or the type's less nodata's end)
        ends = round(olo + (value - src.min) / (src.max - src.min) * (ohi - olo))
        parts.append(f"{_pages(numbers)}: ops[{n}] (convert) maps {source}'s whole range, "
                     f"{src.min}..{src.max}, onto {target}'s {lo}..{hi}, and "
                     f"{'their' if len(numbers) > 1 else 'its'} {said} says the values go up "
                     f"to {value}: they end at {ends} of {hi}, nearly black; give the "
                     f'convert "in_range": [0, {value}] to spread them over {lo}..{hi}')
    return "; ".join(parts)


def _pages(numbers: list[int]) -> str:
    """"page 3" or "pages 1, 4-5"."""
    return f"page{'s' if len(numbers) > 1 else ''} {_ranges(numbers)}"


def _ranges(numbers: list[int]) -> str:
    """"0-3, 7, 9-10" for [0, 1, 2, 3, 7, 9, 10]."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def single_task(plan: JobPlan) -> bool:
    """Whether the job runs as one ProcessJob task (its units, then its merge, in one
    invocation) instead of the ProcessUnits Map and a Merge task: a fused job of one unit,
    whose merge could not start before that unit ends anyway, or of several units whose
    pages add up to at most :data:`SINGLE_TASK_PIXELS` (a small multi-page file). It saves
    the Map (on AWS a Distributed Map run and its child executions) and an invocation;
    the output is the same."""
    if not (SINGLE_TASK_JOBS and plan.fused):
        return False
    return len(plan.units) == 1 or plan.megapixels * 1e6 <= SINGLE_TASK_PIXELS


def held_output(plan: JobPlan) -> bool:
    """Whether a single-task job keeps its segment and index in memory (no work file is
    written or read back; the output is composed from memory): a small output without
    pyramid levels (whose units write level files of their own)."""
    return (single_task(plan) and not plan.spec.output_options.pyramid
            and held_bytes(plan) <= HELD_OUTPUT_BYTES)


def held_bytes(plan: JobPlan) -> int:
    """About the most bytes a single task holds of the output's encoded tiles: its pixels
    as written uncompressed (:func:`raw_output_bytes`; the lossless codecs' tiles are about
    as large at most), a 1-bit page's in CCITT group4 at :data:`GROUP4_BITS_PER_PIXEL`
    bits a pixel (noisy bits take more than 1 in group4; a mask page stays deflated)."""
    return sum(_bit_page_bytes(p) * (GROUP4_BITS_PER_PIXEL + bool(p.info.mask_ifd))
               if p.one_bit and page_options(plan.spec, p).compression == "group4"
               else _raw_page_bytes(p) for p in plan.pages)


def raw_output_bytes(plan: JobPlan) -> int:
    """The bytes of the output's base pages as written uncompressed: a 1-bit page's
    (``bilevel``) at a bit a pixel, each row packed to whole bytes as TIFF packs them, and
    each carried internal mask page (``masks``: 1 bit) as well."""
    return sum(map(_raw_page_bytes, plan.pages))


def _raw_page_bytes(page: PagePlan) -> int:
    """The bytes of an output page (1-bit or not: :attr:`PagePlan.one_bit`) and of its
    carried mask, uncompressed."""
    pixels = _bit_page_bytes(page) if page.one_bit else (
        page.out_grid.height * page.out_grid.width * page.out_channels
        * np.dtype(page.out_dtype).itemsize)
    return pixels + (_bit_page_bytes(page) if page.info.mask_ifd else 0)


def _bit_page_bytes(page: PagePlan) -> int:
    """The bytes of a 1-bit output page of ``page``'s size, uncompressed: its rows packed."""
    return page.out_grid.height * -(-page.out_grid.width // 8)


def stays_aperio(info: PageInfo, layout: ChainLayout) -> bool:
    """Whether the page is an image of an Aperio SVS file whose output keeps its Aperio
    description, and so stays an image of that slide: no ``downsample`` or geometric op
    drops it (:func:`pipeline.adapters.metadata.output_tags`)."""
    return bool(info.metadata.get("aperio")) and layout.factor == 1 \
        and not any(map(geometry.transform_of, layout.calls))


def level_page_problems(spec: JobSpec, layout: ChainLayout, infos: list[PageInfo]
                        ) -> list[Problem]:
    """Level pages (``pyramid_layout`` "pages") where the readers they are for misread them:

    - an output that stays an Aperio slide: its levels are pages of the file already, and
      OpenSlide's Aperio reader takes every tiled page for a level of the slide (the added
      ones too: 5 levels of a slide of 3, two of them the same size, and the thumbnail
      lost);
    - an output of more than one page: GDAL lists the later pages' levels among the first
      page's overviews (pages of 800 x 600 and 500 x 400 with 3 levels each gave overviews
      ``[2, 4, 8, 3, 6]`` of page 0, two of them page 1's: a viewer zoomed out on page 0
      would read page 1's pixels), and OpenSlide's generic reader takes them for levels of
      one slide.

    A job of one page (``pages`` picks it) and SubIFD levels stay allowed. The Aperio
    problem is of every page of the slide (told once, "pages 0-1 (2 pages): ...":
    :func:`grouped_by_page`), so that :func:`pages_that_fit` names none of them."""
    options = spec.output_options
    if not options.pyramid or options.pyramid_layout != "pages":
        return []
    aperio = [Problem.of_page(
        info.index, "an Aperio SVS slide's levels are pages of its file already, and its "
        "output stays that slide: OpenSlide would take the level pages of "
        '"pyramid_layout": "pages" for more levels of it; drop "pyramid" (the slide\'s own '
        'levels are processed as its pages), or write them as SubIFDs ("pyramid_layout": '
        '"subifds", which OpenSlide does not read)')
        for info in infos if stays_aperio(info, layout)]
    if aperio or len(infos) < 2:  # (a job per page of a slide would be refused the same)
        return aperio
    pages = _ranges([info.index for info in infos])
    return [Problem(None, f"the output would have {len(infos)} pages ({pages}), each "
                    'followed by its levels as pages ("pyramid_layout": "pages"): GDAL would '
                    "list the later pages' levels among the first page's overviews (a viewer "
                    "zoomed out on the first page shows another page's pixels), and "
                    "OpenSlide would take them for levels of one slide; give each page a job "
                    'of its own ("pages": [n], each with its own output), or write the levels '
                    'as SubIFDs ("pyramid_layout": "subifds")')]


def mask_pairing_problems(spec: JobSpec, pages: list[PagePlan]) -> list[str]:
    """Carried internal masks GDAL would take for the first output page's: when that page
    carries none, GDAL (3.10.3, ``ScanDirectories`` in its GTiff driver) takes the first
    page's mask from anywhere in the file's main chain (the first NewSubfileType 4 page of
    its size) and each of its overviews' masks from any NewSubfileType 5 page of that
    overview's size, whichever page it follows. So a later page's mask of the first
    page's size, or one of its levels' masks of the size of one of the first page's levels,
    would mask the first page (or that overview) with another page's valid area. (A page
    that carries its own mask gets it, and its levels theirs: they come first in the file;
    GDAL applies no mask to a later page, opened as its ``GTIFF_DIR`` subdataset.)"""
    first = pages[0] if pages else None
    if first is None or first.info.mask_ifd:
        return []

    def sizes(page: PagePlan) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        size = (page.out_grid.height, page.out_grid.width)
        levels = spec.output_options.pyramid and not page.strip
        return size, level_shapes(*size, spec.output_options.tile) if levels else []

    size, levels = sizes(first)
    clash = [page.info.index for page, (own, own_levels) in
             ((page, sizes(page)) for page in pages[1:] if page.info.mask_ifd)
             if own == size or set(own_levels) & set(levels)]
    if not clash:
        return []
    many, first_page = len(clash) > 1, f"page {first.info.index}"
    return [(f"{first_page}, the output's first page, carries no internal mask, but page"
             f"{'s' * many} {_ranges(clash)} {'carry masks' if many else 'carries one'} of the "
             f"size of {first_page}"
             + (" or of one of its levels (its levels' masks too)" if levels else "")
             + ": GDAL takes the first page's mask, and each of its overviews', from any "
             "mask page of the file of that size (and applies none to a later page), so it "
             f"would show {first_page} masked by another page's valid area; give each page a "
             'job of its own ("pages": [n], each with its own output), or leave the masks '
             'out ("output_options": {"masks": false})')]


def strip_page(info: PageInfo, out_tile: int, layout: ChainLayout) -> int:
    """The processing tile that holds the whole page when its output is written as ONE strip
    (0: in tiles). Two kinds of pages:

    - an output page much smaller than one output tile (a 100 x 120 page in a 512 x 512
      tile, or a 200 x 200 page downsampled by 2), whose tile libvips refuses ("tile size
      out of range": it reads a tile up to twice the page's longest side rounded up to a
      multiple of 256, as measured with pyvips-binary 8.18);
    - an image an Aperio SVS file stores in strips (its thumbnail, label and macro images;
      each page's own description starts with "Aperio"), of at most
      :data:`STRIP_PAGE_PIXELS`: OpenSlide tells a slide's levels from these images by their
      layout (tiled: a level), as Aperio's format says; written in tiles, the output was not
      a slide OpenSlide would open (and downsampled, its generic reader took the label and
      macro, tiled and marked reduced, for levels).

    Never a page an Aperio SVS file stores in tiles (a level of the slide) whose output
    keeps its Aperio description (no ``downsample`` or geometric op drops it:
    :func:`pipeline.adapters.metadata.output_tags`): OpenSlide's Aperio reader takes the
    tiled pages for the slide's levels, and a small level (125 x 93 with the 512 tile)
    written as a strip was no level of it (2 levels of 3). libvips' TIFF reader refuses
    such a page's tile when it reads the page alone (docs/outputs.md, the limits).
    """
    if info.tiled and stays_aperio(info, layout):
        return 0
    side = max(info.height, info.width)
    if -(-2 * (side // layout.factor) // 256) * 256 < out_tile:
        # (a processing tile is a multiple of the output tile times the factor: it holds
        # the page already)
        return out_tile * layout.factor
    if (info.tiled or not info.metadata.get("aperio")
            or info.height * info.width > STRIP_PAGE_PIXELS):
        return 0
    return tile_at_least(side, tile_step(layout.align, out_tile * layout.factor)) or 0


def bigtiff_output(plan: JobPlan) -> bool:
    """Whether the output is a BigTIFF: as ``output_options.bigtiff`` says, or with "auto"
    when it may pass classic TIFF's 32-bit offsets: its pixels as written uncompressed
    (:func:`raw_output_bytes`: a 1-bit output's at a bit a pixel) above
    :data:`BIGTIFF_ABOVE`. A classic output whose tiles pass 4 GiB anyway (noisy bits in
    group4) fails its merge, naming the option (:func:`pipeline.steps.merge.output_pieces`)."""
    chosen = plan.spec.output_options.bigtiff
    if isinstance(chosen, bool):
        return chosen
    raw = raw_output_bytes(plan)
    if plan.spec.output_options.pyramid:
        raw = raw * 4 // 3  # the levels add up to a third of the base pages
    return raw > BIGTIFF_ABOVE


def page_tile(tile: int, out_tile: int, layout: ChainLayout, halo: int, info: PageInfo
              ) -> int:
    """The processing tile of a page: ``tile``, halved while the page has fewer than
    :data:`MIN_PAGE_TILES` tiles of it, or a tile holds more than :data:`MAX_TILE_BYTES`
    (pages of many bands), and the half still fits the chain (a multiple of its alignment
    and of the output tile in input pixels) and its halo. Any tile gives the same pixels
    (each is computed from its haloed window), so this changes only how the work is shared
    out and the memory it takes; big pages of a few bands keep ``tile``."""
    step = tile_step(layout.align, out_tile * layout.factor)
    pixel_bytes = np.dtype(info.dtype).itemsize * info.channels
    while (-(-info.height // tile) * -(-info.width // tile) < MIN_PAGE_TILES
           or tile * tile * pixel_bytes > MAX_TILE_BYTES):
        half = tile // 2
        if half < MIN_TILE_PER_HALO * halo or half % step or half < TILE_RANGE[0]:
            break
        tile = half
    return tile


def process_batches(pages: list[PagePlan]) -> list[Batch]:
    """The process batches of the pages: TILES_PER_BATCH tiles each, more when the job has
    too many tiles for MAX_ITEMS batches (a batch never spans pages)."""
    counts = [p.grid.count for p in pages]
    per_batch = max(TILES_PER_BATCH, -(-sum(counts) // MAX_ITEMS))
    while sum(-(-c // per_batch) for c in counts) > MAX_ITEMS and per_batch < max(counts):
        per_batch += max(1, per_batch // 8)  # grow until they fit
    return [b for i, page in enumerate(pages) for b in batches(i, page.grid, per_batch)]


def explain_conversion(problem: str, info: PageInfo) -> str:
    """An op's (or an output option's) problem with the page's pixel type, saying where that
    type comes from when the reader made it: a palette page becomes RGB through its
    colormap, 16-bit when the colormap's values are 16-bit, whatever its indices' bits ("the
    page has uint16" of a file its user knows as 8-bit)."""
    if " palette -> RGB" not in info.conversion or info.dtype not in problem:
        return problem
    bits = info.conversion.split(" palette", 1)[0]  # "8-bit"
    why = f"the page is {bits} palette, converted to {info.dtype} RGB through its colormap"
    if info.dtype == "uint16":
        why += ("; its colormap's values are 16-bit: re-save the file with an 8-bit colormap "
                "or as 8-bit RGB")
    return f"{problem} ({why})"


_PICKS = re.compile(r"^ops\[(\d+)\] \(select_bands\): .*; pick band 0$")


def stack_planes(infos: list[PageInfo]) -> dict[tuple[Any, Any], PageInfo]:
    """The pages of ``infos`` that are planes of a stack (an OME Image's, an ImageJ
    hyperstack's: ``metadata["ome"]``), by (image, plane): where :func:`channel_pages_hint`
    finds a channel's page. Made once a plan: a stack of 5 channels x 2,000 Z whose every
    page has a ``select_bands`` problem would make it 10,000 times."""
    return {(o.get("stack", {}).get("image"), o.get("stack", {}).get("plane")): info
            for info in infos if (o := (info.metadata or {}).get("ome") or {})}


def channel_pages_hint(problem: str, info: PageInfo,
                       planes: dict[tuple[Any, Any], PageInfo], chain: list[OpCall]) -> str:
    """A ``select_bands`` problem of a 1-band page that is one channel of a stack whose
    channels are pages (an OME Image of SizeC > 1 and one sample a plane, an ImageJ
    hyperstack's channels: ``metadata["ome"]["stack"]``), with the pages that are the
    channels asked for in place of "pick band 0", which points the wrong way: ``"pages":
    [3] picks channel 3 (Cy5)`` (the Channel's name when known), the channels at this page's
    Z and T. Any other problem as it is. ``planes``: the plan's :func:`stack_planes`."""
    found = _PICKS.match(problem)
    ome = (info.metadata or {}).get("ome") or {}
    stack = ome.get("stack") or {}
    sizes = dict(zip(stack.get("axes", ""), stack.get("sizes", []), strict=True))
    if found is None or sizes.get("C", 1) < 2 or ome.get("samples", 1) != 1:
        return problem
    wanted = chain[int(found.group(1))].params.get("bands", [])
    if not wanted or max(wanted) >= sizes["C"]:
        return problem
    stride = int(np.prod([sizes[a] for a in stack["axes"][stack["axes"].index("C") + 1:]]))
    first = stack["plane"] - (stack["plane"] // stride) % sizes["C"] * stride  # (channel 0)
    picks = []
    for band in wanted:
        other = planes.get((stack["image"], first + band * stride))
        page = other.index if other else info.index + first + band * stride - stack["plane"]
        name = ((other.metadata["ome"].get("channel") or {}).get("Name") if other else None)
        picks.append((page, f"{band} ({name})" if name else str(band)))
    return (f"{problem.removesuffix('; pick band 0')}; this file stores its channels as "
            f'pages: "pages": {[page for page, _ in picks]} picks '
            f"channel{'s' if len(picks) > 1 else ''} {', '.join(said for _, said in picks)}")


def geometry_problems(layout: ChainLayout, spec: JobSpec, infos: list[PageInfo]
                      ) -> list[Problem]:
    """Why the tile sizes do not fit the chain (downsample, clahe), or a page is too small."""
    problems: list[Problem] = []
    f = layout.factor
    text = chain_tile_problem(layout, spec.tile, spec.output_options.tile)
    if text:  # (validate tells it of a tile the manifest sets, at its field)
        problems.append(Problem(None, text))
    for info in infos:
        if info.height // f == 0 or info.width // f == 0:
            most = min(info.width, info.height)
            fix = (f"downsample by at most {most} in all, or leave the page out of the job's "
                   "pages" if most >= 2 else "leave the page out of the job's pages")
            problems.append(Problem.of_page(
                info.index, f"{info.width} x {info.height} pixels is smaller than the "
                f"downsampling factor {f}; {fix}"))
    return problems
