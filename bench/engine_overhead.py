"""Overhead and memory of the embedded engine per Map iteration (moto's interpreter).

A job with a no-op chain on a zeros TIFF of 64x64 tiles does almost no pixel work, so what
its run costs beyond the handlers is the engine's. Two measurements, each in a fresh child
process so that its numbers are its own:

1. overhead: one engine (one worker pool) runs a warm-up job, then a job of ``--few``
   batches and one of ``--many`` batches. Per iteration:
   - raw: (wall_many - wall_few) / (items_many - items_few);
   - engine CPU: the same difference of the engine process's CPU time (moto's threads; the
     handlers run in the worker processes and are not counted);
   - handler: every task event of the two runs replayed through ``pipeline.handlers.dispatch``
     in-process, one at a time (wall and CPU): the workers' own share;
   - net: raw - handler wall / workers.
   On a busy machine the wall-clock figures are noisy; the engine's CPU per iteration is not.
2. memory (``--memory 30,500,2000``): the engine process's peak RSS (VmHWM) after a run of
   about that many Map items, one child per size.

``--moto-as-shipped`` measures the engine without its patches of moto's interpreter
(``lean_interpreter`` as ``pipeline.engine.local`` calls it, replaced by a no-op), to compare.

    .venv/bin/python bench/engine_overhead.py [--few 8] [--many 512] [--workers 2]
        [--memory 30,500,2000] [--moto-as-shipped] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pipeline.engine.workers import peak_rss_kb

TILE = 64
TILES_PER_BATCH = 8  # pipeline.core.plan.TILES_PER_BATCH for jobs of fewer than 80,000 tiles


def write_zeros_job(folder: str, batches: int) -> str:
    """A gray uint8 zeros TIFF of ``batches`` * 8 tiles of 64x64, and a manifest with a no-op
    chain over it; returns the manifest's path. The job is not fused (``"fuse": false``): the
    Process map gets one item per batch, which is what the overhead is measured over."""
    import numpy as np
    import tifffile

    os.makedirs(folder, exist_ok=True)
    tiles = batches * TILES_PER_BATCH
    cols = 64 if tiles % 64 == 0 else TILES_PER_BATCH
    rows = tiles // cols
    src = os.path.join(folder, "zeros.tif")
    zero = np.zeros((TILE, TILE), np.uint8)
    with tifffile.TiffWriter(src) as tw:
        tw.write((zero for _ in range(tiles)), shape=(rows * TILE, cols * TILE), dtype="uint8",
                 tile=(TILE, TILE), compression="zlib", photometric="minisblack", metadata=None)
    manifest = os.path.join(folder, "manifest.json")
    with open(manifest, "w") as f:
        json.dump({"jobs": [{"input": "zeros.tif", "output": "out.tif", "ops": [], "tile": TILE,
                             "output_options": {"tile": TILE}, "fuse": False}]}, f)
    return manifest


def _run(engine: Any, manifest: str, folder: str, tag: str,
         events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One execution on ``engine``; the task events go to ``events``; the work is kept."""
    work = os.path.join(folder, f"work-{tag}")
    run = {"manifest": manifest, "work": work, "run_id": tag,
           "report": os.path.join(folder, f"report-{tag}.json")}
    start = len(events)
    t0, c0 = time.perf_counter(), time.process_time()
    execution = engine.run(run, name=f"bench-{tag}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mine = events[start:]
    items = sum(1 for _, e in mine if e.get("action") in ("split", "process"))
    if execution.status != "SUCCEEDED":
        raise SystemExit(f"{tag}: {execution.status} {execution.error}: {execution.cause}")
    return {"wall_s": wall, "engine_cpu_s": cpu, "items": items, "events": mine}


def _handler_seconds(events: list[tuple[str, dict[str, Any]]]) -> tuple[float, float]:
    """The handlers' own wall and CPU time for ``events``, replayed in order in this process."""
    from pipeline.handlers import dispatch

    wall = cpu = 0.0
    for function, event in events:
        t0, c0 = time.perf_counter(), time.process_time()
        dispatch(function, event)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return wall, cpu


def _engine(as_shipped: bool) -> Any:
    """LocalEngine (its default interpreter); with ``as_shipped``, on moto's interpreter
    without the engine's patches of it."""
    import functools
    from contextlib import contextmanager

    from pipeline.engine import local, moto_patches

    if as_shipped:
        @contextmanager
        def unpatched(map_threads: int) -> Any:
            yield []

        moto_patches.lean_interpreter = unpatched  # type: ignore[assignment]
        return functools.partial(local.LocalEngine, interpreter="moto")
    return local.LocalEngine


def child_overhead(few: int, many: int, workers: int, as_shipped: int = 0) -> dict[str, Any]:
    engine_class = _engine(bool(as_shipped))

    folder = tempfile.mkdtemp(prefix="tiffpipe-overhead-")
    try:
        manifests = {n: write_zeros_job(os.path.join(folder, f"b{n}"), n) for n in {few, many}}
        events: list[tuple[str, dict[str, Any]]] = []
        record = lambda function, event, ok, payload: events.append((function, event))
        with engine_class(workers, listener=record) as engine:
            _run(engine, manifests[few], folder, "warmup", events)  # starts the workers
            runs = {"few": _run(engine, manifests[few], folder, "few", events),
                    "many": _run(engine, manifests[many], folder, "many", events)}
        for r in runs.values():
            r["handler_s"], r["handler_cpu_s"] = _handler_seconds(r.pop("events"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    f, m = runs["few"], runs["many"]
    n = m["items"] - f["items"]
    per = {k: (m[k] - f[k]) / n * 1e3
           for k in ("wall_s", "engine_cpu_s", "handler_s", "handler_cpu_s")}
    return {"workers": workers, "moto_as_shipped": bool(as_shipped), "few": f, "many": m,
            "per_iteration_ms": {"raw": per["wall_s"], "engine_cpu": per["engine_cpu_s"],
                                 "handler": per["handler_s"],
                                 "handler_cpu": per["handler_cpu_s"],
                                 "net": per["wall_s"] - per["handler_s"] / workers}}


def child_memory(batches: int, workers: int, as_shipped: int = 0) -> dict[str, Any]:
    engine_class = _engine(bool(as_shipped))

    folder = tempfile.mkdtemp(prefix="tiffpipe-memory-")
    try:
        manifest = write_zeros_job(folder, batches)
        events: list[tuple[str, dict[str, Any]]] = []
        record = lambda function, event, ok, payload: events.append((function, event))
        before = peak_rss_kb() / 1024
        with engine_class(workers, listener=record) as engine:
            r = _run(engine, manifest, folder, "memory", events)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"batches": batches, "items": r["items"], "wall_s": r["wall_s"],
            "engine_peak_mb_before_run": before, "engine_peak_mb": peak_rss_kb() / 1024}


def in_child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--few", type=int, default=8, help="batches of the small job")
    ap.add_argument("--many", type=int, default=512, help="batches of the large job")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory", default="",
                    help="comma-separated batch counts to measure the engine's peak RSS at")
    ap.add_argument("--no-overhead", action="store_true", help="only the memory runs")
    ap.add_argument("--moto-as-shipped", action="store_true",
                    help="without the engine's patches of moto's interpreter")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        func = child_overhead if what == "overhead" else child_memory
        print(json.dumps(func(*map(int, rest))))
        return

    shipped = str(int(args.moto_as_shipped))
    results: dict[str, Any] = {"cores": os.cpu_count(), "workers": args.workers,
                               "moto_as_shipped": args.moto_as_shipped}
    if not args.no_overhead:
        o = in_child("overhead", str(args.few), str(args.many), str(args.workers), shipped)
        results["overhead"] = o
        print(f"\nper-iteration overhead, {args.workers} workers "
              f"({o['few']['items']} vs {o['many']['items']} items)"
              + (", moto as shipped" if args.moto_as_shipped else ""))
        print(f"{'run':<6}{'items':>7}{'wall s':>9}{'engine CPU s':>14}{'handlers s':>12}"
              f"{'handlers CPU s':>16}")
        for k in ("few", "many"):
            r = o[k]
            print(f"{k:<6}{r['items']:>7}{r['wall_s']:>9.2f}{r['engine_cpu_s']:>14.2f}"
                  f"{r['handler_s']:>12.2f}{r['handler_cpu_s']:>16.2f}")
        p = o["per_iteration_ms"]
        print(f"per iteration: raw {p['raw']:.1f} ms, engine CPU {p['engine_cpu']:.1f} ms, "
              f"handler {p['handler']:.1f} ms (CPU {p['handler_cpu']:.1f} ms), "
              f"net (raw - handler/workers) {p['net']:.1f} ms")
    sizes = [int(s) for s in args.memory.split(",") if s.strip()]
    if sizes:
        results["memory"] = [in_child("memory", str(n), str(args.workers), shipped)
                             for n in sizes]
        print(f"\nengine peak memory\n{'items':>7}{'wall s':>9}{'before MB':>11}{'peak MB':>9}")
        for r in results["memory"]:
            print(f"{r['items']:>7}{r['wall_s']:>9.1f}{r['engine_peak_mb_before_run']:>11.0f}"
                  f"{r['engine_peak_mb']:>9.0f}")
        peaks = [r["engine_peak_mb"] for r in results["memory"]]
        results["memory_ratio_largest_to_smallest"] = peaks[-1] / peaks[0]
        print(f"ratio largest/smallest: {results['memory_ratio_largest_to_smallest']:.2f}")
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
