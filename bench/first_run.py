"""A small run's first time against its next times in one process: what the first run of a
command pays (tiffpipe's step modules imported, first calls) beside the work itself.

    .venv/bin/python bench/first_run.py --manifest M.json [--runs 3] [--workers 2]
                                        [--preload]

In one fresh process, ``run_local`` runs the manifest ``--runs`` times (its outputs removed
between runs), each timed with its actions (``plan_run``, ``plan_job``, ``process_job``,
``process_unit``, ``merge``, ``report``: bench/timed_worker.py records them) and printed a
line a run: the first is what a command's run costs, the later ones the work and the
engine alone. ``--preload``: tiffpipe's step modules and imagecodecs' codecs loaded before
the first run, as ``bench/sweep.py --preload`` does. OpenCV, imagecodecs and tifffile are
imported before the first run, as the sweep's children import them before their clock.

``--tool naive`` or ``--tool libvips``: the sweep's peers instead (bench/children.py's
``naive`` and ``libvips``), run ``--runs`` times in one fresh process on the manifest's
first job (its input, output, ``gaussian_blur`` sigma, compression and JPEG quality),
each run's wall printed: what their first run pays beside the work, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--preload", action="store_true")
    ap.add_argument("--tool", choices=("tiffpipe", "naive", "libvips"), default="tiffpipe")
    args = ap.parse_args(argv)
    if args.tool != "tiffpipe":
        return peer_runs(args.tool, args.manifest, args.runs, args.workers)

    import cv2  # noqa: F401  (before the clock, as the sweep's children import them)
    import imagecodecs  # noqa: F401
    import tifffile  # noqa: F401
    import timed_worker
    from children import _preload_codecs

    from pipeline.core.constants import FUNCTIONS, KEEP_SEGMENTS_ENV
    from pipeline.handlers import preload as preload_steps
    from pipeline.runner import run_local

    if args.preload:
        _preload_codecs()
        for function in FUNCTIONS:
            preload_steps(function)
    os.environ.setdefault(KEEP_SEGMENTS_ENV, "0")
    with open(args.manifest, encoding="utf-8") as f:
        outputs = [job["output"] for job in json.load(f).get("jobs", [])]
    base = os.path.dirname(os.path.abspath(args.manifest))
    for run in range(1, args.runs + 1):
        for out in outputs:
            path = out if os.path.isabs(out) else os.path.join(base, out)
            if os.path.exists(path):
                os.remove(path)
        timings = tempfile.mkdtemp(prefix="tiffpipe-timings-")
        timed_worker.install(timings)
        t0 = time.time()
        result = run_local(args.manifest, args.workers)
        wall = time.time() - t0
        actions: dict[str, float] = {}
        for r in timed_worker.records(timings):
            actions[r["action"]] = actions.get(r["action"], 0.0) + r["wall_s"]
        shutil.rmtree(timings, ignore_errors=True)
        if not result.ok:
            raise SystemExit(f"run {run} failed: {result.error or result.jobs}")
        shown = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in actions.items())
        print(f"run {run}: {wall * 1e3:.1f} ms; actions, ms: {shown}", flush=True)
    return 0


def peer_runs(tool: str, manifest: str, runs: int, workers: int) -> int:
    """``--tool naive|libvips``: the peer ``runs`` times on the manifest's first job, in this
    one process, each run's wall printed."""
    import children

    from pipeline.steps.common import read_manifest

    spec = read_manifest(manifest)[0]  # (a job list: its paths resolved against its folder)
    src, dst = spec.input, spec.output
    if [op.get("op") for op in spec.ops] != ["gaussian_blur"]:
        raise SystemExit(f"{manifest}: --tool {tool} runs one gaussian_blur, as the sweep's")
    sigma, options = spec.ops[0]["sigma"], spec.output_options
    compression, quality = options.compression, options.quality
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    for run in range(1, runs + 1):
        if tool == "naive":
            r = children.naive(src, dst, sigma, compression, quality, workers)
        else:
            import tifffile

            with tifffile.TiffFile(src) as tf:
                pages = len(tf.pages)
            r = children.libvips(src, dst, pages, sigma, compression, quality, 0.05, "integer")
        print(f"{tool} run {run}: {r['wall_s'] * 1e3:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
