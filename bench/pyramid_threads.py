"""Merge with a pyramid on 1 thread against N threads, in one run: what decoding base tiles
ahead and encoding level rows in threads buys (the merge function has ~1.7 vCPUs on AWS).

    .venv/bin/python bench/pyramid_threads.py [--mpx 100] [--threads 2] [--repeat 3]
                                              [--compression jpeg] [--dir DIR]

Writes (once, into ``--dir``) a photo-like RGB page of about ``--mpx`` megapixels, runs a
tiffpipe job on it with ``output_options.pyramid`` and keeps its work files, then runs the
job's merge step again in this process, alternating 1 and ``--threads`` tile threads,
``--repeat`` times each. Prints the median wall seconds of each and their ratio, and checks
that both wrote the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from inputs import side_for, write_photo_tiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mpx", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compression", default="jpeg")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()

    from pipeline.core.constants import TILE_THREADS_ENV
    from pipeline.core.events import MergeEvent
    from pipeline.runner import run_local
    from pipeline.steps import layout
    from pipeline.steps.common import load_plan
    from pipeline.steps.merge import merge

    folder = args.dir or tempfile.mkdtemp(prefix="tiffpipe-pyramid-")
    os.makedirs(folder, exist_ok=True)
    side = side_for(args.mpx)
    src = os.path.join(folder, f"photo-{side}x{side}x3.tif")
    if not os.path.exists(src):
        write_photo_tiff(src, side, side, 3, pages=1)
    out = os.path.join(folder, "out.tif")
    manifest = os.path.join(folder, "pyramid.json")
    with open(manifest, "w") as f:
        # not fused: merge builds the levels (fused units build their own)
        json.dump({"jobs": [{"input": src, "output": out, "ops": [], "fuse": False,
                             "output_options": {"compression": args.compression,
                                                "pyramid": True}}]}, f)
    work = os.path.join(folder, "work")
    result = run_local(manifest, 2, work=work, keep_work=True)
    if not result.ok:
        sys.exit(f"the job failed: {result.error}")
    plan = layout.plan_file(layout.job_dir(work, 0))

    seconds: dict[int, list[float]] = {1: [], args.threads: []}
    outputs: dict[int, bytes] = {}
    for _ in range(args.repeat):
        for threads, times in seconds.items():
            os.environ[TILE_THREADS_ENV] = str(threads)
            load_plan.cache_clear()
            t0 = time.perf_counter()
            merge(MergeEvent(plan))
            times.append(time.perf_counter() - t0)
            with open(out, "rb") as f:
                outputs[threads] = f.read()
    one, many = (statistics.median(seconds[t]) for t in seconds)
    print(json.dumps({"megapixels": side * side / 1e6, "compression": args.compression,
                      "repeat": args.repeat, "seconds": {str(k): v for k, v in seconds.items()},
                      "median_1_thread_s": round(one, 3),
                      f"median_{args.threads}_threads_s": round(many, 3),
                      "speedup": round(one / many, 2),
                      "same_bytes": outputs[1] == outputs[args.threads],
                      "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
