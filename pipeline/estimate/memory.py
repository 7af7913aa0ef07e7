"""Peak memory of a job's invocations, from its plan: the largest one on each function.

An invocation's resident memory is the process's baseline (the interpreter and what the
function's handler imports: numpy, OpenCV, tifffile, imagecodecs, tiffpipe's steps) plus
what its step holds at once, counted from the plan as the steps allocate:

- a **unit** (``process_unit``, ``split``; a ProcessJob's units side by side) sweeps its
  band with a :class:`~pipeline.adapters.tiff_read.PageReader`: it keeps the decoded rows
  of a haloed tile row and the segment row below (:func:`~pipeline.core.grid.rows_held`)
  over the unit's haloed columns, none for uncompressed strips (read by rows); a
  compressed strip or a tile is decoded whole first (up to ``threads`` at once, each at
  most ``MAX_SEGMENT_BYTES``: the reader refuses more); ``2 * threads + 2`` haloed tiles
  are in flight (read ahead of the tile threads), ``threads`` of them in the op chain
  (:data:`CHAIN_COPIES` tiles' worth each, and a blur's float64 sums and weights on a
  page with no-data or a mask: :func:`_valid_bytes`) and encoding; a processing row or two of
  encoded output tiles wait for their row; with pyramid levels built by the unit, its
  processing rows' output pixels;
- a **batch** (``process``, ``stats``): ``threads`` work tiles at once (compressed, decoded,
  through the chain, encoded) and the batch's encoded tiles;
- a **held ProcessJob** keeps its whole encoded output in memory (its segments) until its
  merge has written it;
- a **level unit** (``build_levels``, on the process function: a pyramid job that is not
  fused) works a processing row of its region at once: the row its decoded output tiles
  are copied into as they come, the row's reductions with the level rows held until a
  level tile row is complete, and the decode threads' tiles in flight (:data:`LEVEL_ROWS`
  rows' worth in all);
- a **reduce_stats** (jobs with statistics rounds) holds ``HELD_PARTS`` batches' partial
  statistics at once and their sum: a histogram op's are 256 or 65536 counts of 8 bytes, a
  ``per_band`` one's that times the bands (16 bands of 16 bits: 8 MiB a part);
- **merge**: building the levels the units did not: a turned page's, a page's carrying
  its mask, a "nearest" page's of odd size, band by band (a level unit's rows for a band of
  :data:`~pipeline.core.levels.BAND_TILES` processing tiles, a byte a pixel more for a
  mask, and then its level 1 mask's padded copy and one output tile's masked means,
  :func:`~pipeline.steps.pyramid.reduce2_pieces`); the few below the units' deepest with
  :class:`~pipeline.steps.pyramid.Pyramid`: a tile row buffer per level across the level's
  width (a byte a pixel more for a mask), the largest level row's encoded tiles and the
  base tiles decoded ahead, which grows with the output's width (a ProcessJob's merge too);
  the tile table of the largest page (20 bytes a tile), on S3 its uploaded
  parts in flight (up to 4 of 16 MiB), and the XMP packets too large for the plan it reads
  from the input (its pages' distinct ones, at most ``PACKETS_HELD``: 64 MiB); a held
  ProcessJob's merge holds them too;
- on S3 each segment is uploaded in parts of 8 MiB, buffered (and copied once as sent).

The bytes counted are scaled by :data:`SCALE` (what malloc keeps, numpy's temporaries and
the codecs' buffers the count leaves out), fitted with the baseline by
``bench/memory_peaks.py`` against measured peaks (docs/estimate.md, "Memory"). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.chain import ChainLayout
from pipeline.core.geometry import transposes
from pipeline.core.grid import SplitUnit, rows_held
from pipeline.core.levels import (
    BAND_TILES,
    band_level_count,
    level_shapes,
    level_units,
    unit_level_count,
)
from pipeline.core.models import JobPlan, PagePlan
from pipeline.core.ops import chain_from_json, chain_out_channels
from pipeline.core.plan import single_task
from pipeline.core.reduce import WIDE
from pipeline.core.tiff_layout import UPLOAD_PART
from pipeline.estimate.limits import SEGMENT_PART

MiB = 2**20
#: resident MiB of a fresh process that has imported a function's steps (as a Lambda
#: image's init phase does: ``pipeline.handlers.preload``), before any invocation; measured
#: by ``bench/memory_peaks.py --baseline`` (the larger of its runs, rounded up)
BASELINE_MB = {"split": 38.0, "process": 78.0, "merge": 39.0}
#: per function, the bytes the model counts scaled to the resident memory they take (what
#: malloc keeps in its arenas, numpy's temporaries, the codecs' contexts): the smallest scale,
#: rounded up to 0.05, that keeps every layout's prediction at or above its measured peak in
#: ``bench/memory_peaks.py`` (its ``fit`` line; merge counts next to nothing: 1)
SCALE = {"split": 1.75, "process": 1.55, "merge": 1.0}
#: haloed tiles' worth of memory one tile takes in the op chain: its input and an op's
#: output (each op makes a new array; the one before is freed)
CHAIN_COPIES = 2
#: the model's error as measured (``bench/memory_peaks.py``): a warning is given when the
#: prediction is within this share of the function's memory
MARGIN = 0.1
#: haloed tiles a unit's sweep reads ahead of its tile threads (steps.split.DECODE_AHEAD)
DECODE_AHEAD = 2
#: tile writes of a split invocation at once (steps.split.WRITE_THREADS)
WRITE_THREADS = 4
#: uploaded parts merge holds at once (adapters.segments.UPLOADS_IN_FLIGHT)
UPLOADS_IN_FLIGHT = 4
#: bytes of merge's tile table per output tile (steps.tile_table)
TILE_TABLE_BYTES = 20
#: what a ProcessJob's units side by side share (one pool of tile threads), not each
SHARED = ("chain", "encode")
#: Lambda's vCPUs at most (10,240 MB)
MAX_VCPUS = 6
#: the partial statistics a reduce_stats holds at once, with their sum (steps.stats.HELD_PARTS)
HELD_PARTS = 18
#: processing rows' worth of output pixels a level unit (build_levels) holds at once: the
#: row its decoded tiles are copied into, its reductions (with their wider sums), the level
#: rows held and the tiles in flight; fitted as SCALE is (docs/estimate.md, "Memory": 113
#: and 144 MiB measured for rows of 8 and 16 MiB) when the row's decoded tiles were held
#: beside it too, a row more; kept, an overestimate since (docs/estimate.md)
LEVEL_ROWS = 3
#: resident MiB merge's level building takes whatever the page's width (its modules, its
#: thread pool, the codecs' contexts): the intercept of merge's measured peaks against the
#: level bytes counted (docs/estimate.md, "Memory"), rounded up
PYRAMID_MB = 13.0
#: bytes a sample of a masked band's level 1 means take (:func:`~pipeline.core.reduce.masked_mean`)
#: besides the wide sums: whether each sample is valid, twice (a bool each), and the counts
#: (int64, a quarter of the samples: 2); of one output tile's piece of the processing row
#: at a time (:func:`~pipeline.steps.pyramid.reduce2_pieces`)
MASKED_MEAN_BYTES = 4


@dataclass(frozen=True)
class Peak:
    """The largest invocation of a job on one function: its step, the input page it works
    on (its index in the file), its predicted peak in MiB and what that is made of (MiB)."""

    function: str
    step: str
    page: int
    mb: float
    parts: dict[str, float] = field(default_factory=dict)


def lambda_threads(memory_mb: float, mb_per_vcpu: float) -> int:
    """The tile threads of an invocation on Lambda: its vCPUs (``tile_threads`` is the CPUs
    the process may use; Lambda gives one per ``mb_per_vcpu`` MB, rounded up, at most 6)."""
    return max(1, min(MAX_VCPUS, math.ceil(memory_mb / mb_per_vcpu)))


def _pixel(dtype: str, channels: int) -> int:
    return np.dtype(dtype).itemsize * channels


def _valid_bytes(plan: JobPlan, page: PagePlan) -> int:
    """Bytes a haloed tile's pixel takes beyond :data:`CHAIN_COPIES` in the op chain of a
    page: the largest of its ops' :attr:`~pipeline.core.ops.Op.valid_bytes` (the blurs of the
    valid samples' float64 sums and weights) times the bands at the op, where the op's input
    has a no-data value (GDAL_NODATA kept by the ops before it, or one they make) or the
    page carries a mask; 0 elsewhere (the plain OpenCV blur)."""
    from pipeline.core.nodata import nodata_at

    ops, info = plan.spec.ops, page.info
    most, channels = 0, info.channels
    for i, call in enumerate(chain_from_json(ops)):
        if call.op.valid_bytes and (info.mask_ifd or nodata_at(info, ops, i) is not None):
            most = max(most, call.op.valid_bytes * channels)
        channels = call.out_channels(channels)
    return most


def _unit_bytes(plan: JobPlan, unit: SplitUnit, threads: int, out_bpm: float, fused: bool,
                s3: bool, transposed: bool = False) -> dict[str, float]:
    """What a unit's sweep holds at once (bytes, by part): see the module's docstring."""
    page = plan.pages[unit.page]
    g, info = page.grid, page.info
    bpp = _pixel(info.dtype, info.channels)
    obpp = _pixel(page.out_dtype, page.out_channels)
    if transposed:  # (a page turned a quarter: the grid's rows are the input's columns)
        width = g.haloed(unit.row1 - 1, unit.col0).y1 - g.haloed(unit.row0, unit.col0).y0
    else:
        width = g.haloed(unit.row0, unit.col1 - 1).x1 - g.haloed(unit.row0, unit.col0).x0
    side_h, side_w = min(g.tile + 2 * g.halo, g.height), min(g.tile + 2 * g.halo, width)
    tile = side_h * side_w * max(bpp, obpp)
    parts: dict[str, float] = {}
    if not (info.compression == "none" and not info.tiled):  # (uncompressed strips: by rows)
        parts["reader"] = min(rows_held(g, info.segment_rows), info.height) * width * bpp
        seg_w = min(info.segment_rows, info.width) if info.tiled else info.width
        if seg_w > width:  # a segment wider than the unit's columns is decoded whole, then cut
            window = min(math.ceil(side_h / info.segment_rows) + 1,
                         math.ceil(info.height / info.segment_rows))
            parts["decode"] = (min(threads, window) * min(info.segment_rows, info.height)
                               * seg_w * bpp)
    if unit.tiles == 1:  # read and handled in the caller's thread
        flight, busy = 1, 1
    else:
        flight = min(unit.tiles, 2 * threads + DECODE_AHEAD)
        busy = min(threads if fused else WRITE_THREADS, flight)
    parts["tiles"] = flight * side_h * side_w * bpp
    if fused:
        f = page.factor
        out_tile = plan.spec.output_options.tile
        parts["chain"] = busy * CHAIN_COPIES * tile
        if valid := _valid_bytes(plan, page):
            parts["valid samples"] = busy * side_h * side_w * valid
        # (a 1-bit output's tile too: its encoder holds the 8-bit 0/255 tile and a mask of
        # its black, a byte a pixel, before it packs the bits: docs/estimate.md)
        parts["encode"] = busy * out_tile * out_tile * obpp
        row_px = (unit.col1 - unit.col0) * g.tile * g.tile / (f * f)
        parts["output"] = 2 * row_px / 1e6 * out_bpm  # a processing row or two, encoded
        if unit_level_count(plan, unit.page):
            parts["levels"] = 2 * row_px * obpp
        if s3:
            parts["upload"] = 2 * SEGMENT_PART
    else:  # split: each tile encoded as a work tile
        parts["chain"] = busy * tile
        if s3:
            parts["upload"] = busy * tile
    return parts


def _batch_bytes(plan: JobPlan, page_index: int, tiles: int, threads: int, out_bpm: float,
                 work_bpm: float, s3: bool) -> dict[str, float]:
    page = plan.pages[page_index]
    g, info = page.grid, page.info
    side = min(g.tile + 2 * g.halo, max(g.height, g.width))
    haloed = min(side, g.height) * min(side, g.width)
    tile = haloed * max(_pixel(info.dtype, info.channels),
                        _pixel(page.out_dtype, page.out_channels))
    busy = min(threads, tiles)
    f = page.factor or 1
    parts = {"tiles": busy * (haloed / 1e6 * work_bpm + tile),
             "chain": busy * CHAIN_COPIES * tile,
             "valid samples": busy * haloed * _valid_bytes(plan, page),
             "output": tiles * g.tile * g.tile / (f * f) / 1e6 * out_bpm}
    if s3:
        parts["upload"] = 2 * SEGMENT_PART
    return parts


def _stats_part_bytes(plan: JobPlan, page_index: int) -> float:
    """The largest partial statistics of a page's rounds (bytes): a histogram op's 256 or
    65536 int64 counts, times the op's input bands with ``per_band``; 0 without a histogram
    op (a normalize's minimum and maximum, a canny's border labels: small)."""
    info = plan.pages[page_index].info
    chain = chain_from_json(plan.spec.ops)
    chain_layout = ChainLayout.of(chain, np.dtype(info.dtype))
    largest = 0.0
    for position in chain_layout.rounds:
        call, dtype = chain[position], chain_layout.dtypes[position]
        if call.op.kind != "stats" or call.op.name == "normalize":
            continue
        bands = chain_out_channels(chain[:position], info.channels) \
            if call.params.get("per_band") else 1
        largest = max(largest, 8.0 * (1 << (8 * dtype.itemsize)) * bands)
    return largest


def _level_unit_bytes(plan: JobPlan, unit: SplitUnit) -> dict[str, float]:
    """What a level unit (``build_levels``) of ``unit`` holds at once (bytes): a processing
    row of its region's output pixels, :data:`LEVEL_ROWS` times (module docstring)."""
    p = plan.pages[unit.page]
    g = p.out_grid
    width = min(unit.col1 * g.tile, g.width) - unit.col0 * g.tile
    row = min(g.tile, g.height) * width * _pixel(p.out_dtype, p.out_channels)
    return {"level rows": LEVEL_ROWS * row}


def _merge_level_bytes(plan: JobPlan, page_index: int, threads: int, out_bpm: float,
                       s3: bool) -> dict[str, float]:
    """What merge holds building the levels of a page the units did not build (bytes; {}
    when it builds none): the bands of a page whose units build none
    (:func:`~pipeline.core.levels.band_level_count`: a processing row of a band,
    :data:`LEVEL_ROWS` times, with a mask a byte a pixel more, and its level 1 mask's
    padded copy, a byte a pixel, and one output tile's masked means' arrays,
    :data:`MASKED_MEAN_BYTES` and the wide sums a sample); and with
    :class:`~pipeline.steps.pyramid.Pyramid` (the few levels below the units' or bands'
    deepest) a tile row buffer per level across the level's width (with a mask a byte a
    pixel more), the largest level row's encoded tiles, the base
    tiles decoded ahead (``2 * threads``; one with one thread) and on S3 each level
    segment's part; :data:`PYRAMID_MB` beside either."""
    p = plan.pages[page_index]
    options = plan.spec.output_options
    if not options.pyramid or p.strip:
        return {}
    t, g = options.tile, p.out_grid
    shapes = level_shapes(g.height, g.width, t)
    parts: dict[str, float] = {}
    count = unit_level_count(plan, page_index)
    pixel = _pixel(p.out_dtype, p.out_channels) + (1 if p.info.mask_ifd else 0)
    if bands := band_level_count(plan, page_index):
        row = min(g.tile, g.height) * min(BAND_TILES * g.tile, g.width)
        parts["level bands"] = float(LEVEL_ROWS * row * pixel)
        if p.info.mask_ifd:  # reduce_mask's padded copy of the row's mask, and the masked
            dtype = np.dtype(p.out_dtype)  # means' arrays of a piece (reduce2_pieces: a tile)
            wide = 8 if dtype.kind == "f" else np.dtype(WIDE.get(dtype.str[1:], dtype)).itemsize
            parts["level masks"] = float(row + t * t * p.out_channels
                                         * (MASKED_MEAN_BYTES + wide))
        count = bands
    # (below the deepest level built in regions: its rows, a tile row at a time, and the
    # levels under it)
    built = shapes[max(count - 1, 0):] if count < len(shapes) else []
    if built:
        rows = [t * math.ceil(w / t) * t for _h, w in built]
        parts.update({"levels": float(sum(rows) * pixel),
                      "level encode": rows[0] / 1e6 * out_bpm,
                      "level decode": float((2 * threads if threads > 1 else 1) * t * t
                                            * pixel)})
        if s3:
            parts["level uploads"] = float(len(built) * SEGMENT_PART)
    if parts:
        parts["pyramid"] = PYRAMID_MB * MiB
    return parts


def _packets(plan: JobPlan) -> float:
    """The bytes of XMP packets too large for the plan that the job's merge holds
    (:func:`~pipeline.adapters.metadata.packets_held`: at most ``PACKETS_HELD``)."""
    from pipeline.adapters.metadata import packets_held  # (as the model's tags: lazily)

    return float(packets_held(page.info for page in plan.pages))


def job_peaks(plan: JobPlan, threads: Mapping[str, int], out_bpm: float, work_bpm: float,
              held_bytes: float | None = None, uploads: int = 0,
              s3: bool = True) -> dict[str, Peak]:
    """The predicted peak of the job's largest invocation on each function it uses (MiB).

    ``threads``: the tile threads of an invocation on each function; ``out_bpm``: output
    bytes per output megapixel; ``work_bpm``: work tile bytes per haloed megapixel (jobs
    that are not fused); ``held_bytes``: a held ProcessJob's output bytes (None: not held);
    ``uploads``: merge's uploaded parts; ``s3``: the work location and output are on S3
    (their upload buffers counted), else local files."""
    peaks: dict[str, Peak] = {}

    def keep(function: str, step: str, page: int, parts: dict[str, float]) -> None:
        mb = BASELINE_MB[function] + SCALE[function] * sum(parts.values()) / MiB
        if function not in peaks or mb > peaks[function].mb:
            peaks[function] = Peak(function, step, plan.pages[page].info.index, mb,
                                   {k: round(v / MiB, 1) for k, v in parts.items()})

    if not plan.pages:
        return peaks
    fused = bool(plan.fused)
    t = threads["process"] if fused else threads["split"]
    transposed = transposes(chain_from_json(plan.spec.ops))
    units = [(u, _unit_bytes(plan, u, t, out_bpm, fused, s3, transposed)) for u in plan.units]
    if single_task(plan):
        # its units side by side (as many as its tile threads), then its merge
        side = min(len(units), t)
        heaviest = sorted(units, key=lambda x: -sum(x[1].values()))[:side]
        parts: dict[str, float] = {}
        for _u, p in heaviest:
            for k, v in p.items():
                # the tile threads are one pool: the chain and the encoding of ``t`` tiles
                # at once, whichever unit's
                parts[k] = max(parts.get(k, 0.0), v) if k in SHARED else parts.get(k, 0.0) + v
        if packets := _packets(plan):  # (its merge's, beside its held output)
            parts["xmp packets"] = packets
        for page in range(len(plan.pages)):  # (its merge's levels, a page at a time)
            levels = _merge_level_bytes(plan, page, t, out_bpm, s3)
            for k, v in levels.items():
                parts[k] = max(parts.get(k, 0.0), v)
        if held_bytes is not None:
            parts["held output"] = held_bytes
            if s3:  # one PutObject of it all (joined), else parts in flight
                parts["output upload"] = (held_bytes if held_bytes <= UPLOAD_PART
                                          else UPLOADS_IN_FLIGHT * UPLOAD_PART)
        keep("process", "process_job", heaviest[0][0].page, parts)
        return peaks
    for u, p in units:
        keep("process" if fused else "split", "process_unit" if fused else "split", u.page, p)
    if level_units(plan):
        for u in plan.units:
            if unit_level_count(plan, u.page):
                keep("process", "build_levels", u.page, _level_unit_bytes(plan, u))
    for b in plan.batches:
        keep("process", "process", b.page,
             _batch_bytes(plan, b.page, b.last - b.first, threads["process"], out_bpm,
                          work_bpm, s3))
    tiles = max(p.out_tiles(plan.spec.output_options.tile)[0]
                * p.out_tiles(plan.spec.output_options.tile)[1] for p in plan.pages)
    largest = max(range(len(plan.pages)), key=lambda i: plan.pages[i].out_grid.height
                  * plan.pages[i].out_grid.width)
    for page in range(len(plan.pages)):
        if part := _stats_part_bytes(plan, page):
            keep("process", "reduce_stats", page, {"statistics": HELD_PARTS * part})
    merge = {"tile table": float(TILE_TABLE_BYTES * tiles)}
    # the page whose levels merge builds holding the most (not always the largest page)
    built = [_merge_level_bytes(plan, i, threads["merge"], out_bpm, s3)
             for i in range(len(plan.pages))]
    most = max(range(len(built)), key=lambda i: sum(built[i].values()))
    if built[most]:
        largest = most
        merge.update(built[most])
    if s3 and uploads:
        merge["uploads"] = float(min(uploads, UPLOADS_IN_FLIGHT) * UPLOAD_PART)
    if packets := _packets(plan):
        merge["xmp packets"] = packets
    keep("merge", "merge", largest, merge)
    return peaks
