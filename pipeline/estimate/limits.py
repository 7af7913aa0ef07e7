"""The merge of a job on AWS in S3 requests, and the largest job AWS runs now that merge
composes the output in S3 (nothing of it passes through the merge function's /tmp).

What bounds a job now:
- S3's largest object, :data:`~pipeline.core.tiff_layout.MAX_OBJECT` (5 TiB), the output;
- the 10,000 parts of one multipart upload: every run of tiles that is a range of one
  segment is at least one part (copies of up to ``COPY_PART``; runs under 5 MiB are read
  through and gathered);
- the 10,000 items of a Map (:data:`pipeline.core.plan.MAX_ITEMS`): units of
  ``FUSED_UNIT_PIXELS`` (fused) or ``SPLIT_UNIT_PIXELS`` core pixels.
Pure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.core.models import JobPlan
from pipeline.core.plan import FUSED_UNIT_PIXELS, MAX_ITEMS, SPLIT_UNIT_PIXELS, TILES_PER_BATCH
from pipeline.core.tiff_layout import (
    COPY_PART,
    MAX_OBJECT,
    MAX_PARTS,
    MIN_PART,
    ROW_MAJOR_READ_THROUGH,
    ROW_MAJOR_RUNS,
    PartCount,
    expected_parts,
    run_lengths,
    segment_map,
)

#: a segment's multipart part (pipeline.adapters.segments.SEGMENT_PART)
SEGMENT_PART = 8 * 1024 * 1024
#: bytes of one ranged GET when merge reads span bytes itself (segments.READ_CHUNK)
READ_CHUNK = 1024 * 1024


def merge_parts(plan: JobPlan, out_bytes: float) -> tuple[PartCount, int]:
    """The expected parts of the job's composed output of ``out_bytes`` (its base pages),
    and its segments: each page's runs (row-major, or one per segment when there are too
    many; pyramid levels one each), the bytes shared evenly by the output tiles."""
    t = plan.spec.output_options.tile
    tiles = sum(math.ceil(p.out_grid.height / t) * math.ceil(p.out_grid.width / t)
                for p in plan.pages)
    tile_bytes = out_bytes / max(tiles, 1)
    runs: list[float] = []
    ifds = segments = 0
    budget = float(ROW_MAJOR_READ_THROUGH)
    for i, page in enumerate(plan.pages):
        seg = segment_map(plan, i)
        lengths = run_lengths(seg)
        count = int(seg.max()) + 1 if seg.size else 0
        sizes = lengths * tile_bytes
        short = float(sizes[sizes < MIN_PART].sum())
        if len(lengths) > max(ROW_MAJOR_RUNS, count) or (len(lengths) > count
                                                         and short > budget):
            lengths = np.bincount(seg.ravel(), minlength=count)  # laid out by segment
        else:
            budget -= short
        runs += [float(n) * tile_bytes for n in lengths]
        segments += count
        ifds += 1
        if plan.spec.output_options.pyramid:
            h, w = page.out_grid.height, page.out_grid.width
            while h > t or w > t:  # one segment per level, a run each
                h, w = -(-h // 2), -(-w // 2)
                runs.append(math.ceil(h / t) * math.ceil(w / t) * tile_bytes)
                segments += 1
                ifds += 1
    return expected_parts(runs, ifds), segments


def _parts_at(gigapixels: float, out_bpm: float, segment_px: float, levels: float) -> float:
    """The multipart parts of one output page of ``gigapixels`` (output pixels) composed from
    segments of ``segment_px`` output pixels each, as :func:`plan_parts` cuts them: a
    segment of at least ``MIN_PART`` bytes is copied in parts of about ``COPY_PART``, shorter
    ones are gathered into uploaded parts of ``MIN_PART``; its pyramid levels (``levels``
    times the base's bytes, one segment a level) in copies of ``COPY_PART``; and the part
    of the header and IFDs (uploaded, topped up from the first segment)."""
    pixels = gigapixels * 1e9
    seg = segment_px / 1e6 * out_bpm
    segments = pixels / segment_px
    if seg >= MIN_PART:
        base = segments * math.ceil(seg / COPY_PART)
    else:
        base = max(1.0, segments * seg / MIN_PART)
    return 1 + base + math.ceil(levels * pixels / 1e6 * out_bpm / COPY_PART)


def largest_job(out_bpm: float, fused: bool, levels: float = 0.0,
                tile_px: float = 0.0, factor: int = 1,
                unit_px: float | None = None) -> dict[str, Any]:
    """The largest job of this kind AWS runs (one page), in output gigapixels, and what
    bounds it: S3's object (``levels``: the pyramid's bytes over the base's), 10,000 parts
    (at the part size that job would have: its segments, the units of a fused job or the
    batches, TILES_PER_BATCH tiles of ``tile_px`` input pixels or a 10,000th of the page,
    cut as :func:`plan_parts` cuts them), 10,000 units. Independent of this job's size.
    ``unit_px``: the core pixels of a unit when the plan cuts smaller ones (a page turned a
    quarter: a unit is one tile column of it)."""
    bpm = max(out_bpm, 1e-9)
    area = factor * factor  # input pixels per output pixel
    unit_px = unit_px or (FUSED_UNIT_PIXELS if fused else SPLIT_UNIT_PIXELS)

    def segment_px(gpx: float) -> float:
        if fused:
            return unit_px / area
        return max(TILES_PER_BATCH * tile_px / area, gpx * 1e9 / MAX_ITEMS)

    bounds = {"s3_object": MAX_OBJECT / (bpm * (1 + levels)) / 1e3,
              "units": MAX_ITEMS * unit_px / area / 1e9}
    # the most gigapixels within MAX_PARTS parts (the parts grow with the page): bisection
    # below S3's object, which no larger job passes
    lo, hi = 0.0, bounds["s3_object"]
    if _parts_at(hi, bpm, segment_px(hi), levels) <= MAX_PARTS:
        lo = hi
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            if _parts_at(mid, bpm, segment_px(mid), levels) <= MAX_PARTS:
                lo = mid
            else:
                hi = mid
    bounds["parts"] = lo
    bound = min(bounds, key=lambda k: bounds[k])
    gpx = bounds[bound]
    seg = segment_px(gpx) / 1e6 * bpm
    per_part = seg / math.ceil(seg / COPY_PART) if seg >= MIN_PART else float(MIN_PART)
    return {"gigapixels": gpx, "bound": bound, "bounds": bounds,
            "output_bytes": gpx * 1e3 * bpm * (1 + levels), "bytes_per_part": per_part}
