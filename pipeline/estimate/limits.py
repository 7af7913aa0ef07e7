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
from pipeline.core.plan import FUSED_UNIT_PIXELS, MAX_ITEMS, SPLIT_UNIT_PIXELS
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


def largest_job(out_bytes_per_mpx: float, fused: bool,
                parts: PartCount | None = None, out_bytes: float = 0.0) -> dict[str, Any]:
    """The largest job of this kind AWS runs, in gigapixels, and what bounds it: S3's
    object, 10,000 parts (at this job's bytes per part, else COPY_PART), 10,000 units."""
    per_part = (out_bytes / parts.parts) if parts and parts.parts else float(COPY_PART)
    unit_px = FUSED_UNIT_PIXELS if fused else SPLIT_UNIT_PIXELS
    bounds = {
        "s3_object": MAX_OBJECT / max(out_bytes_per_mpx, 1e-9) / 1e3,
        "parts": MAX_PARTS * per_part / max(out_bytes_per_mpx, 1e-9) / 1e3,
        "units": MAX_ITEMS * unit_px / 1e9,
    }
    bound = min(bounds, key=lambda k: bounds[k])
    return {"gigapixels": bounds[bound], "bound": bound, "bounds": bounds,
            "output_bytes": bounds[bound] * 1e3 * out_bytes_per_mpx,
            "bytes_per_part": per_part}
