"""What a job asks for: its plan (``make_plan`` on the inputs' page headers, or on assumed
pages) and the work of each of its invocations."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.core import dtypes
from pipeline.core.chain import stats_rounds  # noqa: F401 - the estimate's API
from pipeline.core.manifest import ScanFindings
from pipeline.core.models import JobPlan, JobSpec, PageInfo, PagePlan
from pipeline.core.plan import MAX_ITEMS, grouped_by_page
from pipeline.estimate.assumptions import EstimateError


def _haloed_sides(grid: Any) -> tuple[list[int], list[int]]:
    rows = [grid.haloed(r, 0).height for r in range(grid.rows)]
    cols = [grid.haloed(0, c).width for c in range(grid.cols)]
    return rows, cols


def _output_shape(page: PagePlan) -> tuple[int, int]:
    return page.grid.height // page.factor, page.grid.width // page.factor


def plan_geometry(plan: JobPlan) -> dict[str, float]:
    """Totals of a plan: core, haloed and output megapixels, tiles, output tiles, units,
    batches and pages."""
    out_tile = plan.spec.output_options.tile
    g = {"pages": 0.0, "core_mpx": 0.0, "haloed_mpx": 0.0, "output_mpx": 0.0, "tiles": 0.0,
         "output_tiles": 0.0, "units": float(len(plan.units)),
         "batches": float(len(plan.batches))}
    for page in plan.pages:
        rows, cols = _haloed_sides(page.grid)
        oh, ow = _output_shape(page)
        g["pages"] += 1
        g["core_mpx"] += page.grid.height * page.grid.width / 1e6
        g["haloed_mpx"] += sum(rows) * sum(cols) / 1e6
        g["output_mpx"] += oh * ow / 1e6
        g["tiles"] += page.grid.count
        g["output_tiles"] += math.ceil(oh / out_tile) * math.ceil(ow / out_tile)
    return g


def _output_mpx(page: PagePlan, tiles: list[tuple[int, int]]) -> float:
    """Output megapixels of a page's tiles (their cores, downsampled by the page's factor)."""
    out = 0
    for r, c in tiles:
        core = page.grid.core(r, c)
        out += core.height * core.width
    return out / (page.factor * page.factor) / 1e6


def item_work(plan: JobPlan) -> tuple[list[tuple[float, float, int]],
                                      list[tuple[float, float, int]]]:
    """Per split (or fused) unit and per batch: (haloed Mpx, output Mpx, tiles)."""
    sides = [_haloed_sides(p.grid) for p in plan.pages]
    units = []
    for u in plan.units:
        rows, cols = sides[u.page]
        tiles = [(r, c) for r in range(u.row0, u.row1) for c in range(u.col0, u.col1)]
        units.append((sum(rows[u.row0:u.row1]) * sum(cols[u.col0:u.col1]) / 1e6,
                      _output_mpx(plan.pages[u.page], tiles), len(tiles)))
    batches = []
    for b in plan.batches:
        page = plan.pages[b.page]
        rows, cols = sides[b.page]
        tiles = [page.grid.position(index) for index in range(b.first, b.last)]
        haloed = sum(rows[r] * cols[c] for r, c in tiles)
        batches.append((haloed / 1e6, _output_mpx(page, tiles), len(tiles)))
    return units, batches




#: samples a pixel can have (TIFF's SamplesPerPixel is a 16-bit SHORT)
MAX_SAMPLES = 65535
#: the longest side of a TIFF page (ImageWidth, ImageLength: 32-bit LONGs)
MAX_SIDE = 2**32 - 1
_PAGES = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?(?::(\w+))?(?:\*(\d+))?$")


def parse_assume_pages(spec: str) -> list[PageInfo]:
    """``WxH[xC][:dtype][*N]``, comma-separated: the pages every input is taken to have
    (C default 1, dtype default uint8, N pages of that shape, default 1), tiled 512 px."""
    pages: list[PageInfo] = []
    for part in spec.split(","):
        m = _PAGES.match(part.strip())
        if not m:
            raise EstimateError(f"--assume-pages {part!r}: expected WxH[xC][:dtype][*N], e.g. "
                                "100000x80000x3:uint8*2")
        w, h, c = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        dtype, n = m.group(4) or "uint8", int(m.group(5) or 1)
        if dtype not in dtypes.ALL or not 1 <= c <= MAX_SAMPLES or w < 1 or h < 1:
            raise EstimateError(f"--assume-pages {part!r}: channels 1-{MAX_SAMPLES} and a "
                                f"dtype of {', '.join(dtypes.ALL)}")
        if max(w, h) > MAX_SIDE or not 1 <= n <= MAX_ITEMS or len(pages) + n > MAX_ITEMS:
            raise EstimateError(f"--assume-pages {part!r}: a side of at most {MAX_SIDE} "
                                f"pixels (TIFF's limit), and at most {MAX_ITEMS} pages in all "
                                "(a job fans out at most that many work items)")
        # as read_infos describes such pages: gray (+ alpha), RGB (+ alpha), or C bands
        # (multispectral: gray and C - 1 unspecified extra samples)
        photometric = "rgb" if c in (3, 4) else "minisblack"
        extra = [2] if c in (2, 4) else [0] * (c - 1) if c > 4 else []
        for _ in range(n):
            pages.append(PageInfo(index=len(pages), height=h, width=w, channels=c, dtype=dtype,
                                  photometric=photometric, extrasamples=list(extra), tiled=True,
                                  segment_rows=512, compression="deflate"))
    return pages


@dataclass(frozen=True)
class Planned:
    """A manifest's jobs as ``tiffpipe estimate`` plans them (:func:`plan_manifest`)."""

    #: the manifest's jobs, checked as a run checks them; a scan's, those a run of it would
    #: make now
    specs: list[JobSpec]
    #: what the scan found (None: a list of jobs)
    found: ScanFindings | None
    #: the plans of the jobs PlanJob would plan, in order, and their inputs' sizes in bytes
    #: (None: unknown, or ``assume_pages``)
    plans: list[JobPlan]
    sizes: list[float | None]
    #: the jobs PlanJob would refuse, in order, which a run would fail while it ran the
    #: others: each ``{"job", "input", "output", "problems", "errors"}``: its problems as
    #: text (``jobs[i]: NotATiffError: ...``) and as ``{"job", "type", "message"}``
    refused: list[dict[str, Any]]

    @property
    def problems(self) -> list[str]:
        """Every refused job's problems, in order (``jobs[i]: NotATiffError: ...``)."""
        return [problem for job in self.refused for problem in job["problems"]]


def plan_manifest(manifest: str, assume_pages: str | None = None) -> Planned:
    """The manifest's jobs planned: the one entry point of the estimate's planning.

    Its jobs are checked as a run checks them; a scan's are the jobs a run of it would make
    now, its folders listed by PlanRun's own code (:func:`pipeline.steps.planning.jobs_now`:
    the TIFFs done before, links out of the folder and names that would be one output left
    out), without a run record, a report or anything else left written. Each job is planned
    by PlanJob's own code on its input's page headers only
    (:func:`pipeline.steps.planning.read_plan`: what PlanJob refuses of a job, estimate
    refuses); with ``assume_pages`` no input is opened: every input has those pages
    (``pages`` of a job still picks among them: one beyond them is a problem, as PlanJob's
    of an input that lacks it). A job whose input cannot be read (missing, not a TIFF,
    damaged, a page it lacks), or whose pages the chain or the output refuses, is refused,
    and the other jobs are still planned, so that every problem is listed at once.
    """
    from pipeline.steps.common import read_manifest
    from pipeline.steps.planning import jobs_now

    specs, found = jobs_now(read_manifest(manifest))
    planned, refused = _planned(specs, assume_pages)
    return Planned(specs, found, [plan for plan, _ in planned], [size for _, size in planned],
                   refused)


def _planned(specs: list[JobSpec], assume_pages: str | None
             ) -> tuple[list[tuple[JobPlan, float | None]], list[dict[str, Any]]]:
    """The plan and input size of each job PlanJob would plan, and the jobs it would
    refuse."""
    from pipeline.adapters import storage
    from pipeline.errors import (
        OperationError,
        OutputNotWritableError,
        PageNotFoundError,
        TiffpipeError,
    )
    from pipeline.steps.planning import plan_pages, read_plan

    assumed = parse_assume_pages(assume_pages) if assume_pages else None
    planned: list[tuple[JobPlan, float | None]] = []
    refused: list[dict[str, Any]] = []

    def refuse(i: int, errors: list[dict[str, Any]]) -> None:
        """Job ``i`` refused for ``errors`` (:func:`said`), each also as ``validate
        --inputs`` names it (``jobs[2]: OperationError: in.tif: page 0: ...``)."""
        refused.append({"job": i, "input": specs[i].input, "output": specs[i].output,
                        "problems": [f"jobs[{e['job']}]: {e['type']}: {e['message']}"
                                     for e in errors],
                        "errors": errors})

    def said(i: int, error: type[Exception], texts: Iterable[str]) -> list[dict[str, Any]]:
        """Job ``i``'s problems, each with the error PlanJob fails it with."""
        return [{"job": i, "type": error.__name__, "message": text} for text in texts]

    gone: dict[str, bool] = {}  # an output bucket -> whether it is missing (asked once)

    def output_problems(i: int, output: str) -> list[dict[str, Any]]:
        """PlanJob's refusal of an S3 output whose bucket does not exist (what may be
        written there is the stack's role's to say, not checked here)."""
        if not storage.is_s3(output):
            return []
        bucket = storage.split_s3(output)[0]
        if bucket not in gone:
            gone[bucket] = storage.bucket_missing(output)
        problem = f"output {output}: {storage.NO_OUTPUT_BUCKET}"
        return said(i, OutputNotWritableError, [problem]) if gone[bucket] else []

    for i, spec in enumerate(specs):
        size = None
        if assumed is not None:
            lacking = [p for p in spec.pages or [] if p >= len(assumed)]
            if lacking:
                refuse(i, said(i, PageNotFoundError, (
                    f"{spec.input}: page {p} asked for, --assume-pages gives {len(assumed)} "
                    f"page(s) (0..{len(assumed) - 1}); fix the job's pages, or give "
                    "--assume-pages more" for p in lacking)))
                continue
            plan, why = plan_pages(i, spec, [assumed[p] for p in spec.pages] if spec.pages
                                   else list(assumed), WORK, 0.0)
        else:  # (the inputs are read: their outputs' buckets are looked at too)
            output = output_problems(i, spec.output)
            try:
                plan, why = read_plan(i, spec, WORK, 0.0)
            except TiffpipeError as exc:  # the message names the file: the next job's too
                refuse(i, [*output, *said(i, type(exc), [str(exc)])])
                continue
            if output:
                refuse(i, [*output, *said(i, OperationError, (
                    f"{spec.input}: {p}" for p in grouped_by_page(why)))])
                continue
            try:
                size = float(storage.size(spec.input))
            except Exception:  # noqa: BLE001 - the size only refines the S3 bytes
                size = None
        if why:  # (planned, but its pages the chain or the output refuses: OperationError)
            refuse(i, said(i, OperationError, (f"{spec.input}: {p}"
                                               for p in grouped_by_page(why))))
        else:
            planned.append((plan, size))
    return planned, refused


#: the work location the plans are made for (a name only: nothing is written)
WORK = "s3://estimate/work"
