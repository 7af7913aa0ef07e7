"""Level units against merge's own pyramid, for a pyramid job that is not fused.

    PYTHONPATH=$PWD .venv/bin/python bench/level_units.py [--mpx 16 64] [--units 4]

For each size: writes a smooth RGB page of about that many megapixels, runs a
``"fuse": false`` pyramid job's steps in this process (plan, split, process) with split
units of about ``mpx / units`` megapixels, then times each level unit (``build_levels``)
and the merge that places their levels, against the merge that builds every level itself
from the base tiles (``UNIT_LEVELS`` off, today's single-merge pyramid). One tile thread
(``TIFFPIPE_TILE_THREADS=1``), so the seconds are one core's. Prints the seconds, and
checks the two files are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (ROOT,) if p not in sys.path]


def one(root: Path, mpx: int, units: int) -> dict[str, float]:
    import numpy as np
    import tifffile

    from pipeline.core import plan as plan_mod
    from pipeline.core.events import BatchEvent, JobEvent, MergeEvent, RunEvent, UnitEvent
    from pipeline.steps import merge as merge_mod
    from pipeline.steps.common import load_plan
    from pipeline.steps.planning import plan_run
    from pipeline.steps.process import process
    from pipeline.steps.split import split
    from pipeline.steps.stats import plan_job
    from pipeline.steps.unit_levels import build_levels

    side = int((mpx * 1e6) ** 0.5)
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.stack([((yy * (c + 1) + xx) // 7) % 256 for c in range(3)], -1).astype(np.uint8)
    src = root / f"in{mpx}.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(512, 512), compression="zlib")
    out = root / f"out{mpx}.tif"
    manifest = root / f"m{mpx}.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(src), "output": str(out), "fuse": False,
        "output_options": {"tile": 256, "pyramid": True, "compression": "zstd"}}]}))
    plan_mod.SPLIT_UNIT_PIXELS = side * side // units + 1
    run = plan_run(RunEvent(str(manifest), str(root / f"work{mpx}"), "bench"))
    planned = plan_job(JobEvent(run["run"], 0))
    for unit in planned["units"]:
        split(UnitEvent(planned["plan"], unit))
    for batch in planned["batches"]:
        process(BatchEvent(planned["plan"], batch))
    seconds = []
    for unit in planned["units"]:
        t0 = time.perf_counter()
        build_levels(UnitEvent(planned["plan"], unit))
        seconds.append(time.perf_counter() - t0)
    load_plan.cache_clear()
    t0 = time.perf_counter()
    merge_mod.merge(MergeEvent(planned["plan"]))
    placed = time.perf_counter() - t0
    new = out.read_bytes()
    out.unlink()
    merge_mod.UNIT_LEVELS = False
    t0 = time.perf_counter()
    merge_mod.merge(MergeEvent(planned["plan"]))
    built = time.perf_counter() - t0
    merge_mod.UNIT_LEVELS = True
    assert out.read_bytes() == new, "the level units' file differs from merge's"
    return {"mpx": round(side * side / 1e6, 1), "units": len(planned["units"]),
            "build_levels_max_s": round(max(seconds), 2),
            "build_levels_sum_s": round(sum(seconds), 2),
            "merge_placing_s": round(placed, 2), "merge_building_s": round(built, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mpx", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--units", type=int, default=4)
    args = parser.parse_args()
    os.environ["TIFFPIPE_TILE_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        for mpx in args.mpx:
            print(json.dumps(one(Path(tmp), mpx, args.units)), flush=True)


if __name__ == "__main__":
    main()
