"""The estimate of a run: each job's invocations, costed from the calibration, then dollars,
state transitions and the wall time (the model: see the package's docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.core.chain import page_placement
from pipeline.core.constants import FUNCTIONS
from pipeline.core.geometry import transposes
from pipeline.core.levels import level_shapes, level_units, unit_level_count
from pipeline.core.models import JobPlan
from pipeline.core.ops import (
    chain_band_names,
    chain_bands,
    chain_from_json,
    chain_keeps_nodata,
    chain_keeps_statistics,
    chain_keeps_values,
    chain_linear,
    chain_own_nodata,
)
from pipeline.core.plan import (
    bigtiff_output,
    held_output,
    masked_out_white,
    one_bit_pages,
    page_options,
    single_task,
)
from pipeline.core.tiff_layout import MAX_OBJECT, MAX_PARTS, UPLOAD_PART
from pipeline.estimate.assumptions import ASSUMPTIONS, EstimateError, assumptions_with
from pipeline.estimate.calibration import JobCosts, _by_kind, _kind, job_costs, mask_costs
from pipeline.estimate.limits import READ_CHUNK, SEGMENT_PART, largest_job, merge_parts
from pipeline.estimate.memory import MARGIN, Peak, job_peaks, lambda_threads
from pipeline.estimate.plans import _output_shape, item_work, plan_geometry, stats_rounds
from pipeline.estimate.schedule import simulate
from pipeline.estimate.statemachine import (
    canny_tree_levels,
    count_transitions,
    load_definition,
    map_limits,
)

#: S3 reads of an input are coalesced into ranged GETs of at least this (storage.READ_BUFFER)
READ_BUFFER = 512 * 1024
#: a segment is uploaded in parts of this size above it (segments.SEGMENT_PART)
MULTIPART_CHUNK = SEGMENT_PART
#: server-side copies merge runs at once (segments.COPY_THREADS)
COPY_THREADS = 16
FUNCTION_OF = {"plan_run": "split", "plan_job": "process", "split": "split",
               "stats": "process", "reduce_stats": "process", "process": "process",
               "process_unit": "process", "process_job": "process",
               "build_levels": "process", "merge": "merge",
               "report": "merge",
               "cold_split": "split", "cold_process": "process", "cold_merge": "merge"}
#: ops whose output compresses very differently from the calibration's content (the bench
#: image after gaussian_blur sigma 2), as measured against real runs: near-binary outputs
#: far better (the output size over, many times for canny), stretched contrast or sharpened
#: edges worse (under); no factor is applied, only noted
SMALLER_OUTPUT = ("threshold", "otsu_threshold", "canny")
LARGER_OUTPUT = ("equalize_hist", "unsharp_mask", "normalize")
STEPS = ("plan_run", "plan_job", "split", "stats", "reduce_stats", "process", "process_unit",
         "process_job", "build_levels", "merge", "report", "cold_split", "cold_process",
         "cold_merge")



def _merge_lighter(peak: Peak) -> str:
    """What makes a merge lighter, by what its peak holds most of: the bands of a page whose
    levels merge builds band by band (``level bands``, ``level masks``: a processing row of
    a band, whose rows are the processing ``tile``'s), the levels it builds across a level's
    width (a tile row each: ``output_options.tile`` rows), or its tile table (a larger
    output tile makes fewer tiles; it makes the levels' rows heavier)."""
    bands = peak.parts.get("level bands", 0.0) + peak.parts.get("level masks", 0.0)
    levels, table = peak.parts.get("levels", 0.0), peak.parts.get("tile table", 0.0)
    if bands > max(levels, table):
        return ("a smaller \"tile\" (the processing tile: merge builds this page's pyramid "
                "levels band by band, a processing row of a band at a time)")
    if levels > table:
        return ("a smaller output_options.tile (merge builds this page's lower pyramid "
                "levels, a tile row each across the level's width)")
    return "fewer output tiles a page (a larger output_options.tile)"


class _Ledger:
    """Per-step totals of the invocations costed so far."""

    def __init__(self, a: dict[str, float]):
        self.a = a
        self.mem = {f: a[f"memory_{f}_mb"] for f in FUNCTIONS}
        self.eph = {f: a[f"ephemeral_{f}_mb"] for f in FUNCTIONS}
        self.vcpus = {f: min(6.0, m / a["mb_per_vcpu"]) for f, m in self.mem.items()}
        self.steps: dict[str, dict[str, float]] = {
            s: {"invocations": 0, "seconds": 0.0, "cpu_s": 0.0, "gb_s": 0.0,
                "ephemeral_gb_s": 0.0, "get": 0, "put": 0, "list": 0, "bytes_in": 0.0,
                "bytes_out": 0.0} for s in STEPS}
        self.warnings: list[str] = []
        #: the job whose invocations are being added (``jobs[i] (input)``; None: the run's)
        self.job: str | None = None
        #: each job's (or the run's) longest invocation past the timeout: (seconds, step)
        self.over: dict[str | None, tuple[float, str]] = {}

    def add(self, step: str, seconds: float, cpu: float = 0.0, get: float = 0, put: float = 0,
            lst: float = 0, bytes_in: float = 0.0, bytes_out: float = 0.0,
            invocation: bool = True) -> float:
        """One invocation of ``step`` lasting ``seconds`` (``invocation=False``: more work of
        the last one); returns its seconds."""
        f = FUNCTION_OF[step]
        s = self.steps[step]
        s["invocations"] += int(invocation)
        s["seconds"] += seconds
        s["cpu_s"] += cpu
        s["gb_s"] += seconds * self.mem[f] / 1024
        s["ephemeral_gb_s"] += seconds * max(self.eph[f] - 512, 0) / 1024
        s["get"] += get
        s["put"] += put
        s["list"] += lst
        s["bytes_in"] += bytes_in
        s["bytes_out"] += bytes_out
        self.check_timeout(step, seconds)
        return seconds

    def check_timeout(self, step: str, seconds: float) -> None:
        """Note an invocation of ``step`` lasting ``seconds`` that passes Lambda's timeout:
        the longest of the current job's is warned about (:meth:`timeout_warnings`)."""
        if seconds > self.a["timeout_s"] and seconds > self.over.get(self.job, (0.0, ""))[0]:
            self.over[self.job] = (seconds, step)

    def check_memory(self, peaks: dict[str, Peak]) -> None:
        """Warn about the current job's largest invocation on each function whose predicted
        peak, :data:`~pipeline.estimate.memory.MARGIN` added (the model's measured error),
        passes the function's memory; once per job and function."""
        for f, peak in peaks.items():
            limit = self.mem[f]
            if peak.mb * (1 + MARGIN) <= limit:
                continue
            self.warnings.append(
                f"{self.job or 'the run'}: its largest invocation on the {f} function, "
                f"{peak.step} of page {peak.page}, needs about {peak.mb:,.0f} MB of memory "
                f"(predicted, {MARGIN:.0%} margin), more than the {limit:,.0f} MB the function "
                f"has (memory_{f}_mb): give the {f} function more memory in the deploy "
                f"(FUNCTION_SIZES; --price memory_{f}_mb=... to estimate it), or make the "
                + ("merge lighter: " + _merge_lighter(peak) if f == "merge" else
                   "work smaller: a smaller \"tile\" (the processing tile) or "
                   "output_options.tile, or an input re-saved with smaller strips or tiles"))

    def timeout_warnings(self) -> list[str]:
        """One warning per job (and one for the run's own calls) with an invocation past the
        timeout, naming the job and its longest invocation."""
        timeout = self.a["timeout_s"]
        return [f"{job or 'the run'}: its longest invocation, {step}, needs about "
                f"{seconds:.0f} s, more than the {timeout:.0f} s Lambda timeout"
                for job, (seconds, step) in self.over.items()]


@dataclass(frozen=True)
class MaskWork:
    """The work of a job's carried internal masks (``pipeline.steps.masks``: a 1-bit deflate
    page after each output page whose input page has one), costed per megapixel of mask as
    :func:`~pipeline.estimate.calibration.mask_costs` says: each unit reads its page's mask
    over its tiles (its haloed megapixels: the cores, a bound) and decodes it, and encodes
    its output tiles' mask to a segment of its own (a PUT and its index); each op of the
    chain that reads it (``reads_mask``: a ``downsample``, a blur) reads it again over each
    tile's region, in the fused unit or in each statistics and process batch; merge copies
    the mask pages and, with a pyramid, decodes them and encodes each level's mask (1 + L
    times the base's pixels, L the levels' share). A 1-bit output page's chain output reads
    it once more over each tile's core (its masked-out pixels written white:
    :func:`~pipeline.core.plan.masked_out_white`), in the fused unit or the process batch."""

    #: per unit: (CPU seconds, bytes read, bytes written)
    units: list[tuple[float, float, float]]
    #: per batch: (CPU seconds, bytes read) of the reads of the ops that read the mask
    batches: list[tuple[float, float]]
    #: per batch: (CPU seconds, bytes read) of the output's read (a 1-bit page's): in its
    #: process invocation alone, not its statistics rounds
    outputs: list[tuple[float, float]]
    #: the output's mask pages and its levels' masks, in bytes
    base_bytes: float
    level_bytes: float
    #: merge's CPU seconds (the levels' masks)
    merge_cpu: float


def mask_work(plan: JobPlan, cal: dict[str, Any], notes: set[str], where: str,
              units: list[tuple[float, float, int]], batches: list[tuple[float, float, int]],
              levels: float) -> MaskWork | None:
    """The job's :class:`MaskWork` (``levels``: its pyramid's pixels over its base pages',
    as the plan's output bytes say: 0 without a pyramid; fused or not: the plan's ``fused``),
    or None when no page carries a mask (``PageInfo.mask_ifd``: ``"masks": false``, an OME
    output or inputs without one)."""
    masked = [bool(p.info.mask_ifd) for p in plan.pages]
    if not any(masked):
        return None
    cpu, bpm = mask_costs(cal, notes, where)
    reread = sum(call.op.reads_mask for call in chain_from_json(plan.spec.ops))
    # the output's read of a 1-bit page: its tiles' cores (output Mpx x factor^2)
    cores = [masked_out_white(p) * p.factor**2 for p in plan.pages]
    fused = plan.fused
    unit_work = []
    for u, (haloed, out, _tiles) in zip(plan.units, units, strict=True):
        reads = ((1 + reread * fused) * haloed + fused * out * cores[u.page]) * masked[u.page]
        unit_work.append((cpu * (reads + out * masked[u.page]), reads * bpm,
                          out * bpm * masked[u.page]))
    batch_work, output_work = [], []
    for b, (haloed, out, _tiles) in zip(plan.batches, batches, strict=True):
        reads = haloed * reread * (not fused and masked[b.page])
        batch_work.append((cpu * reads, reads * bpm))
        reads = (not fused) * out * cores[b.page]
        output_work.append((cpu * reads, reads * bpm))
    out_mpx = sum(p.out_grid.height * p.out_grid.width / 1e6
                  for p, m in zip(plan.pages, masked, strict=True) if m)
    return MaskWork(unit_work, batch_work, output_work, out_mpx * bpm, out_mpx * bpm * levels,
                    cpu * out_mpx * (1 + levels) if levels else 0.0)


def _unfused_phases(ledger: _Ledger, unit_costs: list[JobCosts], batch_costs: list[JobCosts],
                    units: list[tuple[float, float, int]],
                    batches: list[tuple[float, float, int]], rounds: int, in_bpm: float,
                    report_s: float, masks: MaskWork | None = None
                    ) -> list[tuple[str, list[float]]]:
    """Split (every haloed tile to a work tile; a unit's mask tiles too), the statistics
    rounds, process batches (``masks``: their pages' masks' work, :class:`MaskWork`: a
    batch that reads the mask opens the input, one GET more, as a fused unit); each
    unit and batch by its page's costs (``unit_costs``, ``batch_costs``)."""
    a, add = ledger.a, ledger.add
    speed, mbps = a["lambda_core_speed"], a["s3_mb_per_s"] * 1e6
    unit_masks = masks.units if masks else [(0.0, 0.0, 0.0)] * len(units)
    batch_masks = masks.batches if masks else [(0.0, 0.0)] * len(batches)
    output_masks = masks.outputs if masks else [(0.0, 0.0)] * len(batches)
    phases: list[tuple[str, list[float]]] = []
    durations = []
    for (haloed, _out, tiles), (m_cpu, m_read, m_written), c in zip(
            units, unit_masks, unit_costs, strict=True):
        split_threads = min(ledger.vcpus["split"], c.split_threads)
        cpu = haloed * c.split_cpu + m_cpu
        read = haloed * in_bpm + m_read
        written = haloed * c.work_bpm + m_written
        secs = cpu / (split_threads * speed) + (read + written) / mbps
        durations.append(add("split", secs, cpu, get=1 + math.ceil(read / READ_BUFFER),
                             put=tiles + 2 * bool(m_written), bytes_in=read,
                             bytes_out=written))
    phases.append(("split", durations))
    for _ in range(rounds):
        durations = []
        for (haloed, _out, tiles), (m_cpu, m_read), c in zip(batches, batch_masks,
                                                             batch_costs, strict=True):
            cpu = c.factor * haloed * c.per_haloed + m_cpu
            read = haloed * c.work_bpm + m_read
            durations.append(add("stats", cpu / speed + read / mbps, cpu,
                                 get=1 + tiles + bool(m_read), put=1, bytes_in=read))
        phases.append(("stats", durations))
        phases.append(("reduce_stats", [add("reduce_stats", report_s / speed,
                                            get=1 + len(batches), put=1, lst=1)]))
    durations = []
    for (haloed, out, tiles), (m_cpu, m_read), (o_cpu, o_read), c in zip(
            batches, batch_masks, output_masks, batch_costs, strict=True):
        cpu = c.factor * (haloed * c.per_haloed + out * c.per_out) + m_cpu + o_cpu
        read, written = haloed * c.work_bpm + m_read + o_read, out * c.out_bpm
        durations.append(add("process", cpu / speed + (read + written) / mbps, cpu,
                             get=1 + tiles + bool(m_read or o_read),
                             put=_segment_puts(written), bytes_in=read, bytes_out=written))
    phases.append(("process", durations))
    return phases


def _turned_unit_px(plan: JobPlan) -> float | None:
    """The core pixels of the largest unit of a page turned a quarter (one tile column of
    it, as wide as the cache budget lets: pipeline.core.grid.split_units), which bounds the
    largest job by the Map's items; None for any other chain (units of the usual size)."""
    if not plan.units or not transposes(chain_from_json(plan.spec.ops)):
        return None
    return float(max(plan.pages[u.page].grid.span(u.row0, u.row1, u.col0, u.col1).height
                     * plan.pages[u.page].grid.tile for u in plan.units))


def _level_phases(ledger: _Ledger, unit_costs: list[JobCosts],
                  units: list[tuple[float, float, int]], levels: float
                  ) -> list[tuple[str, list[float]]]:
    """A job that is not fused with a pyramid: one ``build_levels`` per split unit on the
    process function, reading its region's encoded base tiles back, decoding them (costed
    as encoding them: ``per_out``) and encoding its levels (``levels`` of its output Mpx:
    the job's level pixels over its base pixels, about a third), by its page's costs."""
    speed, mbps = ledger.a["lambda_core_speed"], ledger.a["s3_mb_per_s"] * 1e6
    durations = []
    for (_haloed, out, tiles), c in zip(units, unit_costs, strict=True):
        cpu = out * c.per_out * (1 + levels)
        read, written = out * c.out_bpm, out * c.out_bpm * levels
        durations.append(ledger.add("build_levels", cpu / speed + (read + written) / mbps,
                                    cpu, get=1 + tiles + math.ceil(read / READ_CHUNK),
                                    put=_segment_puts(written) + 2, bytes_in=read,
                                    bytes_out=written))
    return [("build_levels", durations)]


def _fused_phases(ledger: _Ledger, unit_costs: list[JobCosts],
                  units: list[tuple[float, float, int]],
                  in_bpm: float, step: str = "process_unit", held: bool = False,
                  masks: MaskWork | None = None) -> list[tuple[str, list[float]]]:
    """One ``process_unit`` per unit on the process function: the input read as split reads
    it, the chain and the output encode, one segment of its output tiles; no work tiles.
    ``step``: ``process_job`` for a job run whole by one task (one invocation, its units'
    times added; its merge is added to it);
    ``held``: its segment stays in memory (nothing written here: the output upload is the
    merge's); ``masks``: their pages' masks' work (:class:`MaskWork`), after the sweep;
    each unit by its page's costs (``unit_costs``)."""
    a = ledger.a
    speed, mbps = a["lambda_core_speed"], a["s3_mb_per_s"] * 1e6
    threads = max(1.0, ledger.vcpus["process"])
    unit_masks = masks.units if masks else [(0.0, 0.0, 0.0)] * len(units)
    durations = []
    for k, ((haloed, out, tiles), (m_cpu, m_read, m_written), c) in enumerate(
            zip(units, unit_masks, unit_costs, strict=True)):
        read_cpu = c.unit_factor * haloed * c.unit_read
        cpu = read_cpu + c.unit_factor * (haloed * c.ops + out * c.per_out)
        read, written = haloed * in_bpm, out * c.out_bpm
        if held:
            written = m_written = 0.0
        # the tiles are processed in every vCPU, the input decoded in one (the sweep); the
        # mask read and written in one
        secs = (max(read_cpu, cpu / threads) + m_cpu) / speed + (
            read + m_read + written + m_written) / mbps
        durations.append(ledger.add(step, secs, cpu + m_cpu,
                                    get=1 + math.ceil(read / READ_BUFFER) + bool(m_read),
                                    put=(_segment_puts(written) if written else 0)
                                    + 2 * bool(m_written),
                                    bytes_in=read + m_read, bytes_out=written + m_written,
                                    invocation=step != "process_job" or k == 0))
    if step == "process_job":  # one invocation: its units one after the other (each keeps
        return [(step, [sum(durations)])]  # every vCPU busy already), then the merge
    return [(step, durations)]


def output_bytes(plan: JobPlan, out_bpm: dict[bool, float], one_bit: bool | None = None
                 ) -> tuple[float, float]:
    """The output's bytes: its base pages', and its pyramid levels' (0 without a pyramid;
    each level halved, rounding up, down to the first that fits one output tile:
    :func:`~pipeline.core.levels.level_shapes`). Compressed, ``out_bpm`` bytes per
    megapixel of each (by whether the page is 1-bit: ``bilevel`` "auto" writes some pages
    1-bit and others not, each in its codec); uncompressed (``none``), every output tile
    whole: a tile at an edge is stored padded to the tile's size (a page written as one
    strip, ``PagePlan.strip``, is its pixels, with no levels). ``one_bit``: of the pages
    written 1-bit (True) or not (False) only."""
    opts = plan.spec.output_options
    t = opts.tile
    base = levels = 0.0
    for page in plan.pages:
        if one_bit is not None and page.one_bit != one_bit:
            continue
        h, w = page.out_grid.height, page.out_grid.width
        shapes = [(h, w)] + (level_shapes(h, w, t) if opts.pyramid and not page.strip else [])
        pixel = _pixel_bytes(plan, page)
        raw = page_options(plan.spec, page).compression == "none"
        for k, (lh, lw) in enumerate(shapes):
            padded = (lh * lw if page.strip
                      else math.ceil(lh / t) * math.ceil(lw / t) * t * t)
            size = padded * pixel if raw else lh * lw / 1e6 * out_bpm[page.one_bit]
            if k:
                levels += size
            else:
                base += size
    return base, levels


def _pixel_bytes(plan: JobPlan, page: Any) -> float:
    """The bytes of one of ``page``'s output pixels stored uncompressed (1-bit: an eighth)."""
    if page_options(plan.spec, page).bilevel:
        return 1 / 8
    return page.out_channels * np.dtype(page.out_dtype).itemsize


def _ifd_bytes(big: bool, shape: tuple[int, ...], dtype: str, tile: int,
               kwargs: dict[str, Any]) -> int:
    """The bytes tifffile writes for one page of ``shape`` in ``tile`` px tiles (its IFD and
    tag values; the file's header not counted), over placeholder tiles, as merge does."""
    import tifffile

    from pipeline.adapters.tiff_header import LayoutRecorder, Placeholder
    from pipeline.core.tiff_layout import Literal, Span

    tiles = math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile)
    recorder = LayoutRecorder()
    with tifffile.TiffWriter(recorder, bigtiff=big) as writer:
        writer.write((Placeholder(Span("estimate", 0, 1)) for _ in range(tiles)), shape=shape,
                     dtype=dtype, tile=(tile, tile),
                     planarconfig="contig" if len(shape) > 2 else None, **kwargs)
    return sum(p.size for p in recorder.pieces() if isinstance(p, Literal)) - (16 if big else 8)


def _sizes(value: Any) -> Any:
    """What of a tag value decides its bytes in an IFD: the length of text and bytes (a
    DateTime or a description of the same length takes as many), the rest as it is."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple):
        return tuple(_sizes(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _sizes(v)) for k, v in value.items()))
    return getattr(value, "shape", value)  # (a colormap: its shape)


#: the IFD bytes of a page of 1, 2 or 1026 tiles by what decides them (a batch's pages
#: share them)
_ifd_cache: dict[Any, int] = {}


def header_bytes(plan: JobPlan) -> float:
    """The bytes of the output's IFDs and tag values (and the file's header): what merge
    writes around the tiles, a few hundred bytes a page plus two values a tile (its offset
    and byte count), more with the input's carried tags (an ICC profile, a
    description). Computed as merge computes them: ``tifffile.TiffWriter`` over a
    :class:`LayoutRecorder` with placeholder tiles, for a page of one tile or two (its
    TileOffsets and TileByteCounts then outside the IFD) and of 1,026, once per kind of
    page and length of its tag values (not once per page: a batch of scans of as many
    sizes took as long as reading their headers), the tile arrays then grown to the page's
    tiles in between (pyramid levels and OME-XML aside); and an XMP packet too large for
    the plan, by its size (:func:`~pipeline.adapters.metadata.xmp_bytes`: not read)."""
    from pipeline.adapters.metadata import band_names, keeps_colormap, output_tags, xmp_bytes
    from pipeline.adapters.tile_codec import OutputEncoder

    opts = plan.spec.output_options
    t, big = opts.tile, bigtiff_output(plan)
    ops = plan.spec.ops
    nodata, own = chain_keeps_values(ops), chain_own_nodata(ops)
    total = 16.0 if big else 8.0
    for page in plan.pages:
        mine = page_options(plan.spec, page)  # (bilevel "auto": 1-bit or not, page by page)
        h, w, ch = page.out_grid.height, page.out_grid.width, page.out_channels
        tags = output_tags(page.info, h, w, ch, nodata, page.factor,
                           chain_bands(ops, page.info.channels), own,
                           page_placement(ops, page.info), chain_keeps_statistics(ops),
                           mine.bilevel, chain_linear(ops, page.info.dtype),
                           chain_keeps_nodata(ops), chain_band_names(ops, band_names(page.info)),
                           # (a PageNumber's bytes, whatever its values: one cache key a kind)
                           page_number=(0, 0), indices=keeps_colormap(ops, mine))
        rows, cols = page.out_tiles(t)
        tiles = rows * cols
        kwargs = {**OutputEncoder(mine, page.out_dtype, ch).writer_kwargs(), **tags}
        dtype = kwargs.pop("dtype", page.out_dtype)  # (a 1-bit page's: bool)
        bands = (ch,) if ch > 1 else ()
        # (one tile: a column short of it, else tifffile takes the page for one raw tile and
        # wants its bytes)
        sizes = [_page_ifd_bytes(big, (t, n * t - (n == 1), *bands), dtype, t, kwargs)
                 for n in ((tiles,) if tiles <= 2 else (2, 1026))]
        # past two tiles, the TileOffsets and TileByteCounts arrays grow by a value each;
        # an XMP packet too large for the plan, which the tags leave out (it is not read)
        total += (sizes[0] + (sizes[-1] - sizes[0]) * (tiles - 2) / 1024
                  + xmp_bytes(page.info, ops))
    return total


def _page_ifd_bytes(big: bool, shape: tuple[int, ...], dtype: str, tile: int,
                    kwargs: dict[str, Any]) -> int:
    """:func:`_ifd_bytes`, once per shape and what decides the tags' bytes."""
    key = (big, shape, dtype, tile, _sizes(kwargs))
    if key not in _ifd_cache:
        _ifd_cache[key] = _ifd_bytes(big, shape, dtype, tile, kwargs)
    return _ifd_cache[key]


def _size_notes(notes: set[str], i: int, plan: JobPlan) -> None:
    """Note the ops of job ``i`` whose effect on the output's compressed size is not
    calibrated (:data:`SMALLER_OUTPUT`, :data:`LARGER_OUTPUT`), the last of its chain
    deciding the output's content. Not for a 1-bit output: its bytes are measured on a
    binarised page (or, uncalibrated, noted as its codec is: :func:`encode_entry`)."""
    comp = plan.spec.output_options.compression
    if comp == "none" or any(one_bit_pages(plan)):
        return
    names = [op["op"] for op in plan.spec.ops]
    last = next((n for n in reversed(names) if n in SMALLER_OUTPUT + LARGER_OUTPUT), None)
    if last is None:
        return
    direction = ("near-binary output compresses far better: the output size and its S3 "
                 "costs are likely overestimated, many times over for canny"
                 if last in SMALLER_OUTPUT else
                 "its output compresses worse: the output size and its S3 costs are likely "
                 "underestimated")
    notes.add(f"jobs[{i}] ({plan.spec.input}): the {comp} output size after {last} is not "
              f"calibrated (costed as the benchmark's blurred content); {direction}")


def _pyramid_through(plan: JobPlan, out_bytes: float) -> float:
    """Bytes a pyramid's merge reads itself: the raw blocks of the units' deepest level (a
    4**k-th of the base pages, raw: about the output's bytes again at most; fused units or
    the level units of a job that is not fused built the levels above), shared tiles aside;
    the base tiles when no unit level can be built (k = 0)."""
    if not plan.spec.output_options.pyramid:
        return 0.0
    deepest = min((unit_level_count(plan, i) for i in range(len(plan.pages))), default=0)
    return out_bytes / 4 ** deepest


def _segment_puts(size: float) -> int:
    """PUT requests of one segment and its index: one PutObject, or a multipart upload."""
    parts = math.ceil(size / MULTIPART_CHUNK)
    return 1 + (1 if parts <= 1 else parts + 2)


Phases = list[tuple[str, list[float]]]


def estimate(plans: list[JobPlan], calibration: dict[str, Any],
             overrides: dict[str, float] | None = None, concurrency: int = 1000,
             definition: dict[str, Any] | None = None,
             input_bytes: list[float | None] | None = None) -> dict[str, Any]:
    """The estimate of a run of ``plans`` on AWS: see the package's docstring."""
    a = assumptions_with(overrides)
    if concurrency < 1:
        raise EstimateError("the concurrency must be at least 1")
    definition = definition or load_definition()
    cal = calibration
    notes: set[str] = set()
    ledger = _Ledger(a)
    steps = ledger.steps
    input_bytes = input_bytes or [None] * len(plans)
    speed = a["lambda_core_speed"]
    imports = cal.get("import_s", {})
    sim_jobs: list[Phases] = []
    job_rows: list[dict[str, Any]] = []
    objects_total = 0
    # run.json, jobs.json and job-specs.bin (every job's record)
    ledger.add("plan_run", _call_s(cal, "plan_run") / speed, get=1, put=3)
    # each job by its manifest index (plan.job), not its place among the plans: the jobs a
    # refused one leaves are not renumbered
    for plan, size in zip(plans, input_bytes, strict=True):
        if not plan.pages:
            continue
        i = plan.job
        ledger.job = f"jobs[{i}] ({plan.spec.input})"
        phases, row, objects = _job(ledger, cal, notes, i, plan, size)
        ledger.job = None
        sim_jobs.append(phases)
        job_rows.append(row)
        objects_total += objects
    ledger.add("report", _call_s(cal, "report") / speed, get=1 + len(plans), put=1)
    _cold_starts(ledger, imports, concurrency)

    # state transitions: each job's Choices follow its plan (fused, statistics rounds)
    by_job = {plan.job: plan for plan in plans}
    job_ctx = [{"units": r["units"], "batches": r["batches"], "rounds": r["stats_rounds"],
                "fused": r["fused"], "single": r["single"],
                "levels": level_units(by_job[r["job"]]),
                "tree_levels": canny_tree_levels(by_job[r["job"]])}
               for r in job_rows]
    transitions = count_transitions(definition, job_ctx)
    limits = map_limits(definition, len(plans), concurrency)
    latency = a["state_latency_s"]
    wall = simulate(sim_jobs, concurrency, limits.get("jobs", 0),
                    limits.get("batches", 0) or limits.get("units", 0), latency)
    # PlanRun and Report around the jobs; the first wave of each function starts cold
    wall += (_call_s(cal, "plan_run") + _call_s(cal, "report")) / speed + 3 * latency + sum(
        a["cold_start_s"] + float(imports.get(f, 0.0)) for f in FUNCTIONS)

    s3 = {key: sum(s[key] for s in steps.values()) for key in ("get", "put", "list")}
    invocations = sum(s["invocations"] for s in steps.values())
    work_bytes_total = sum(r["work_bytes"] for r in job_rows)
    storage_gb_month = work_bytes_total / 1e9 * a["work_retention_days"] / 30.4
    cost = _cost(a, steps, invocations, transitions["total"], s3, storage_gb_month)
    megapixels = sum(r["megapixels"] for r in job_rows)
    return {
        "jobs": job_rows,
        "megapixels": megapixels,
        "steps": {k: v for k, v in steps.items() if v["invocations"] or v["seconds"]},
        "invocations": invocations,
        "gb_s": sum(s["gb_s"] for s in steps.values()),
        "state_transitions": transitions,
        "s3": {**s3,
               "bytes_read": sum(s["bytes_in"] for s in steps.values()),
               "bytes_written": sum(s["bytes_out"] for s in steps.values()),
               "work_bytes": work_bytes_total, "work_objects": objects_total,
               "storage_gb_month": storage_gb_month},
        "cost_usd": cost,
        # (none of no pixels: a scan with nothing new still costs its PlanRun and Report)
        "usd_per_gigapixel": cost["total"] / (megapixels / 1000) if megapixels else None,
        "wall_s": wall,
        "concurrency": concurrency,
        "assumptions": {k: {"value": v, "unit": ASSUMPTIONS[k].unit, "help": ASSUMPTIONS[k].help,
                            "overridden": k in (overrides or {})} for k, v in a.items()},
        "calibration": {k: cal.get(k) for k in ("file", "measured_at", "mode", "note")} | {
            "machine": (cal.get("machine") or {}).get("cpu"),
            "cores": (cal.get("machine") or {}).get("cores")},
        "notes": sorted(notes),
        "warnings": sorted(set(ledger.warnings + ledger.timeout_warnings())),
    }


def _call_s(cal: dict[str, Any], action: str) -> float:
    """A light call's measured seconds (``calls`` of the calibration; 0.5 s unmeasured)."""
    return float(cal.get("calls", {}).get(action, {}).get("wall_s", 0.5))


def _job(ledger: _Ledger, cal: dict[str, Any], notes: set[str], i: int, plan: JobPlan,
         input_size: float | None) -> tuple[Phases, dict[str, Any], int]:
    """Job ``i``'s invocations, added to ``ledger``: its phases (for the schedule), its row
    of the estimate, and the work objects it writes."""
    from pipeline.adapters.metadata import packet_reads  # (as the model's tags: lazily)

    a = ledger.a
    speed, mbps = a["lambda_core_speed"], a["s3_mb_per_s"] * 1e6
    geo = plan_geometry(plan)
    units, batches = item_work(plan)
    rounds = stats_rounds(plan)
    fused = plan.fused
    single = single_task(plan)
    held = held_output(plan)  # a single task's segment in memory: the output uploaded
    info = plan.pages[0].info
    dtype, ch = info.dtype, info.channels
    comp = plan.spec.output_options.compression
    page_costs, base_bytes, level_bytes = _plan_costs(plan, cal, notes,
                                                      f"jobs[{i}] ({plan.spec.input})")
    c = page_costs[0]  # (what is not the output's: alike on every page)
    unit_costs = [page_costs[u.page] for u in plan.units]
    batch_costs = [page_costs[b.page] for b in plan.batches]
    if input_size:
        in_bpm = float(input_size) / max(geo["core_mpx"], 1e-9)
    elif cal.get("input_bytes_per_mpx"):  # no file: as compressed as the bench's input
        value, scale = _by_kind(cal["input_bytes_per_mpx"], dtype, ch, notes, "input bytes")
        in_bpm = float(value) * scale
    else:
        in_bpm = c.work_bpm
    _size_notes(notes, i, plan)
    headers = header_bytes(plan)
    masks = mask_work(plan, cal, notes, f"jobs[{i}] ({plan.spec.input})", units, batches,
                      level_bytes / max(base_bytes, 1e-9))
    mask_bytes = masks.base_bytes + masks.level_bytes if masks else 0.0
    data_bytes = base_bytes + level_bytes + mask_bytes  # the tiles: what the segments hold
    out_bytes = data_bytes + headers
    phases: Phases = [
        # its entry and record in job-specs.bin, the input's size and header reads; the
        # output's check (a multipart upload started, a PUT request, and aborted: free)
        # and the plan
        ("plan_job", [ledger.add("plan_job", _call_s(cal, "plan_job") / speed,
                                 get=3 + len(plan.pages) // 8 + 1, put=2)])]
    if single:  # one ProcessJob: the unit, then the merge below, in one invocation
        phases += _fused_phases(ledger, unit_costs, units, in_bpm, "process_job", held,
                                masks)
    elif fused:
        phases += _fused_phases(ledger, unit_costs, units, in_bpm, masks=masks)
    else:
        phases += _unfused_phases(ledger, unit_costs, batch_costs, units, batches, rounds,
                                  in_bpm, _call_s(cal, "report"), masks)
        if level_units(plan):
            phases += _level_phases(ledger, unit_costs, units,
                                    level_bytes / max(base_bytes, 1e-9))
    merge_cal = cal["merge"]
    parts, segments = merge_parts(plan, base_bytes)
    largest = largest_job(
        # uncompressed: the pixels' bytes (a page that large pads next to nothing)
        out_bpm=(1e6 * _pixel_bytes(plan, plan.pages[0]) if comp == "none" else c.out_bpm),
        fused=fused, levels=level_bytes / max(base_bytes, 1e-9),
        tile_px=float(plan.pages[0].grid.tile) ** 2,
        factor=plan.pages[0].factor, unit_px=_turned_unit_px(plan))
    # merge moves only what it reads through (header top-ups, short runs; for a pyramid
    # the units' deepest level, or unfused the base tiles); the rest is copied in S3
    # (with a pyramid, the mask pages too: merge makes their levels' masks)
    through = parts.read_through + _pyramid_through(plan, base_bytes) + (
        masks.base_bytes if masks and masks.level_bytes else 0.0)
    merge_cpu = (through / 1e6 * float(merge_cal.get("cpu_s_per_output_mb", 0.0))
                 + geo["output_tiles"] * float(merge_cal.get("cpu_s_per_output_tile", 0.0))
                 + (masks.merge_cpu if masks else 0.0))
    copied = max(0.0, data_bytes - parts.read_through)
    copy_s = copied / (a["s3_copy_mb_per_s"] * 1e6 * max(1, min(COPY_THREADS, parts.copies)))
    # the XMP packets too large for the plan, read from the input (each distinct one once)
    xmp_gets, xmp_read = packet_reads(page.info for page in plan.pages)
    merge_s = merge_cpu / speed + (2 * through + xmp_read) / mbps + copy_s
    if held:  # every byte uploaded from memory: no index or segment read, no copy
        uploads = math.ceil(out_bytes / UPLOAD_PART)
        # one PutObject up to a part's size, else a multipart upload; and the result
        puts = (1 if uploads <= 1 else uploads + 2) + 1
        merged = ledger.add("process_job", merge_cpu / speed + (out_bytes + xmp_read) / mbps,
                            merge_cpu, get=xmp_gets, put=puts, bytes_in=xmp_read,
                            bytes_out=out_bytes, invocation=False)
    else:
        # a ProcessJob publishes as merge does, without listing recorded errors
        merged = ledger.add("process_job" if single else "merge", merge_s, merge_cpu,
                            get=1 + segments + math.ceil(through / READ_CHUNK) + xmp_gets,
                            put=parts.parts + 3, lst=0 if single else 1,
                            bytes_in=through + xmp_read, bytes_out=through,
                            invocation=not single)
    if single:
        phases[-1][1][-1] += merged
        ledger.check_timeout("process_job", phases[-1][1][-1])
    else:
        phases.append(("merge", [merged]))
    threads = {f: lambda_threads(ledger.mem[f], a["mb_per_vcpu"]) for f in FUNCTIONS}
    peaks = job_peaks(plan, threads, c.out_bpm, c.work_bpm, out_bytes if held else None,
                      parts.uploads)
    ledger.check_memory(peaks)
    if parts.parts > MAX_PARTS:
        ledger.warnings.append(f"jobs[{i}]: the output needs about {parts.parts:,} multipart "
                               f"parts, more than S3's {MAX_PARTS:,}: split the job into jobs "
                               "of fewer pages")
    if out_bytes > MAX_OBJECT:
        ledger.warnings.append(f"jobs[{i}]: the output ({out_bytes / 1e12:.1f} TB) passes S3's "
                               f"largest object ({MAX_OBJECT / 1e12:.1f} TB): split the job "
                               "into jobs of fewer pages")
    # the segments and their indexes (and, unfused, the work tiles), the plan and result
    work = (0.0 if held else data_bytes if fused
            else geo["haloed_mpx"] * c.work_bpm + data_bytes)
    objects = (0 if held else 2 * segments) + (0 if fused else int(geo["tiles"])) + 2
    row = {"job": i, "input": plan.spec.input, "pages": int(geo["pages"]),
           "megapixels": geo["core_mpx"], "haloed_megapixels": geo["haloed_mpx"],
           "output_megapixels": geo["output_mpx"], "tiles": int(geo["tiles"]),
           "fused": fused, "single": single, "held": held, "units": len(units),
           "batches": len(batches),
           "stats_rounds": rounds, "output_bytes": out_bytes, "pyramid_bytes": level_bytes,
           "mask_bytes": mask_bytes,
           "header_bytes": headers, "work_bytes": work,
           "compression": comp, "kind": _kind(dtype, ch),
           "merge": {"parts": parts.parts, "copies": parts.copies,
                     "uploads": parts.uploads, "segments": segments,
                     "read_through_bytes": through},
           "largest_job": largest,
           "memory": {f: {"step": p.step, "page": p.page, "peak_mb": round(p.mb, 1),
                          "memory_mb": ledger.mem[f], "threads": threads[f],
                          "parts_mb": p.parts} for f, p in peaks.items()}}
    if plan.note:  # the pages the job leaves out (as the run's report says)
        row["message"] = plan.note
    return phases, row, objects


def local_peaks(plan: JobPlan, cal: dict[str, Any], threads: int) -> dict[str, Peak]:
    """The memory model's peaks of a job run on this machine (local work files and output,
    ``threads`` tile threads), for the benchmark and tests that measure a local run."""
    page_costs, base_bytes, _ = _plan_costs(plan, cal, set(), f"jobs[{plan.job}]")
    c = page_costs[0]
    return job_peaks(plan, dict.fromkeys(FUNCTIONS, threads), c.out_bpm, c.work_bpm,
                     base_bytes if held_output(plan) else None, 0, s3=False)


def _plan_costs(plan: JobPlan, cal: dict[str, Any], notes: set[str], where: str
                ) -> tuple[list[JobCosts], float, float]:
    """Each page's per-megapixel costs (:func:`job_costs` of the job's first page; ``where``
    names the job) and the output's base and pyramid level bytes. With ``bilevel`` "auto"
    a page of the other kind than the first (1-bit or not) encodes and writes by its own
    codec: its output bytes and encode CPU are those of the first page of its kind.
    Uncompressed, a kind's output bytes per megapixel are those its pages' segments hold
    (edge tiles padded: whole tiles)."""

    def costs(page: Any) -> JobCosts:
        options = page_options(plan.spec, page)
        return job_costs(cal, page.info.dtype, page.info.channels, page.out_channels,
                         options.compression, plan.spec.ops, plan.fused, notes, where,
                         page.out_dtype, bool(options.bilevel))

    first = plan.pages[0]
    c = costs(first)
    kinds = {first.one_bit: c}
    # bilevel "auto": the pages of the other kind by their own codec's bytes and encode
    other = next((p for p in plan.pages if p.one_bit != first.one_bit), None)
    if other is not None:
        theirs = costs(other)
        kinds[other.one_bit] = replace(c, out_bpm=theirs.out_bpm, per_out=theirs.per_out)
    out_bpm = {one: k.out_bpm for one, k in kinds.items()}
    base_bytes, level_bytes = output_bytes(plan, out_bpm)
    for one, kind in list(kinds.items()):
        pages = [p for p in plan.pages if p.one_bit == one]
        mpx = sum(h * w / 1e6 for h, w in map(_output_shape, pages))
        if page_options(plan.spec, pages[0]).compression == "none" and mpx:
            base = base_bytes if other is None else output_bytes(plan, out_bpm, one)[0]
            kinds[one] = replace(kind, out_bpm=base / mpx)
    return [kinds[p.one_bit] for p in plan.pages], base_bytes, level_bytes


def _cold_starts(ledger: _Ledger, imports: dict[str, float], concurrency: int) -> None:
    """Cold starts: one per concurrent environment of each function, billed (container
    images pay their init phase); counted as rows of their own, not as invocations."""
    a, steps = ledger.a, ledger.steps
    for f in FUNCTIONS:
        invocations = sum(steps[k]["invocations"] for k in STEPS if FUNCTION_OF[k] == f)
        envs = min(invocations, concurrency)
        row = steps[f"cold_{f}"]
        row["environments"] = envs
        row["seconds"] = envs * (a["cold_start_s"] + float(imports.get(f, 0.0)))
        row["gb_s"] = row["seconds"] * ledger.mem[f] / 1024
        row["ephemeral_gb_s"] = row["seconds"] * max(ledger.eph[f] - 512, 0) / 1024


def _cost(a: dict[str, float], steps: dict[str, dict[str, float]], invocations: float,
          transitions: float, s3: dict[str, float], storage_gb_month: float
          ) -> dict[str, float]:
    """The run's cost in USD by item, and its ``total``."""
    cost = {
        "lambda_duration": sum(s["gb_s"] for s in steps.values()) * a["lambda_gb_s"],
        "lambda_requests": invocations * a["lambda_request"],
        "lambda_ephemeral": (sum(s["ephemeral_gb_s"] for s in steps.values())
                             * a["lambda_ephemeral_gb_s"]),
        "step_functions": transitions * a["sfn_transition"],
        "s3_requests": (s3["put"] + s3["list"]) * a["s3_put"] + s3["get"] * a["s3_get"],
        "s3_storage": storage_gb_month * a["s3_gb_month"],
    }
    cost["total"] = sum(cost.values())
    return cost
