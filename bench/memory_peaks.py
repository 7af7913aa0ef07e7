"""The estimate's memory model against measured peaks: each invocation's peak RSS in a real run.

    .venv/bin/python bench/memory_peaks.py [--dir DIR] [--layouts a,b,...] [--json OUT]
    .venv/bin/python bench/memory_peaks.py --baseline

For each layout (below) it writes an input with tifffile and a manifest of one job, runs it
with ``run_local`` on moto's interpreter with one worker process (two tile threads: what
Lambda gives the process function at 3,008 MB), each invocation in a fresh interpreter of
its own, as a cold Lambda runs it, and measures that process's peak RSS (VmHWM). It prints,
per function, the model's prediction for the job's largest invocation
(``pipeline.estimate.memory.job_peaks``: local files, two threads, the shipped
calibration's output bytes) against the largest measured, and the scale (``SCALE``) each
row needs.

``--baseline``: the same on a 64 x 64 page (RGB, and gray through equalize_hist for split,
which a job that is not fused uses), whose invocations hold next to nothing: each function's
interpreter and imports, ``BASELINE_MB``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

#: name -> (pages as (height, width, channels, dtype), tifffile options, job fields)
LAYOUTS: dict[str, tuple[list[tuple[int, int, int, str]], dict[str, Any], dict[str, Any]]] = {
    "rgb-jpeg-tiles": ([(5000, 5000, 3, "uint8")], {"tile": (512, 512), "compression": "jpeg"},
                       {"output_options": {"compression": "jpeg"}}),
    "rgb-deflate-tiles-3pages": ([(2600, 2600, 3, "uint8")] * 3,
                                 {"tile": (256, 256), "compression": "deflate"},
                                 {"output_options": {"compression": "deflate"}}),
    "rgb-deflate-one-strip": ([(3000, 6000, 3, "uint8")], {"rowsperstrip": 3000,
                                                           "compression": "deflate"},
                              {"output_options": {"compression": "deflate"}}),
    "rgb-16-row-strips": ([(5000, 5000, 3, "uint8")], {"rowsperstrip": 16,
                                                       "compression": "deflate"},
                          {"output_options": {"compression": "zstd"}}),
    "float32-24-bands": ([(1536, 1536, 24, "float32")], {"tile": (256, 256),
                                                         "compression": "zstd",
                                                         "photometric": "minisblack",
                                                         "planarconfig": "contig"},
                         {"output_options": {"compression": "zstd"}}),
    "uint16-gray": ([(6000, 6000, 1, "uint16")], {"tile": (512, 512), "compression": "zstd"},
                    {"output_options": {"compression": "zstd"}}),
    "pyramid-3pages": ([(2600, 2600, 3, "uint8")] * 3, {"tile": (512, 512),
                                                        "compression": "deflate"},
                       {"output_options": {"compression": "deflate", "pyramid": True}}),
    "held-process-job": ([(4000, 4000, 3, "uint8")], {"tile": (512, 512),
                                                      "compression": "deflate"},
                         {"output_options": {"compression": "deflate"}}),
    "unfused-equalize": ([(6000, 6000, 1, "uint8")], {"tile": (512, 512),
                                                      "compression": "deflate"},
                         {"ops": [{"op": "equalize_hist"}],
                          "output_options": {"compression": "deflate"}}),
    # merge builds a turned page's levels, band by band: its peak must not grow with the width
    "turned-pyramid": ([(80000, 512, 1, "uint8")], {"tile": (256, 256),
                                                    "compression": "deflate"},
                       {"ops": [{"op": "rotate", "angle": 90}],
                        "output_options": {"compression": "deflate", "pyramid": True}}),
    # level units (build_levels) of a job that is not fused: processing rows of 16384 px
    "unfused-pyramid": ([(4096, 16384, 1, "uint8")], {"tile": (256, 256),
                                                      "compression": "deflate"},
                        {"ops": [{"op": "equalize_hist"}],
                         "output_options": {"compression": "deflate", "pyramid": True}}),
}
#: the baseline's layouts (``--baseline``), not run by default
TINY = {
    "tiny-rgb": ([(64, 64, 3, "uint8")], {"compression": "deflate"},
                 {"output_options": {"compression": "deflate"}}),
    "tiny-gray-unfused": ([(64, 64, 1, "uint8")], {"compression": "deflate"},
                          {"ops": [{"op": "equalize_hist"}],
                           "output_options": {"compression": "deflate"}}),
}
BLUR = [{"op": "gaussian_blur", "sigma": 2.0}]
THREADS = 2


def write_input(path: str, pages: list[tuple[int, int, int, str]],
                options: dict[str, Any]) -> None:
    """Smooth content (a blurred noise field, as photographs compress), page by page."""
    import cv2
    import numpy as np
    import tifffile

    rng = np.random.default_rng(1)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for h, w, c, dtype in pages:
            small = rng.random((h // 8 + 1, w // 8 + 1, c)).astype(np.float32)
            planes = [cv2.resize(small[:, :, k], (w, h), interpolation=cv2.INTER_CUBIC)
                      for k in range(c)]
            img = np.clip(np.stack(planes, -1), 0, 1)
            if dtype != "float32":
                img = (img * np.iinfo(dtype).max).astype(dtype)
            tw.write(img if c > 1 else img[:, :, 0], **options)


#: run in a fresh interpreter: one invocation, its result and the process's peak RSS
_COLD = ("import json, os, sys; os.environ.setdefault('OPENBLAS_NUM_THREADS', '1');"
         "from pipeline.engine.workers import _invoke, peak_rss_kb;"
         "function, event = json.loads(sys.stdin.read());"
         "ok, payload, _, _ = _invoke(function, event, peak=False);"
         "print(json.dumps([ok, payload, peak_rss_kb()]))")


def cold_invoke(function: str, event: dict[str, Any], *args: Any,
                **kwargs: Any) -> tuple[bool, dict[str, Any], int, int]:
    """``workers._invoke`` as a cold Lambda runs it: in a fresh interpreter of its own (its
    imports, the one invocation), whose peak RSS is recorded (the worker submits this)."""
    done = subprocess.run([sys.executable, "-c", _COLD], input=json.dumps([function, event]),
                          capture_output=True, text=True, check=True)
    ok, payload, peak_kb = json.loads(done.stdout.strip().splitlines()[-1])
    folder = os.environ.get("TIFFPIPE_BENCH_MEMORY")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({"function": function, "action": event.get("action"),
                                "peak_mb": peak_kb / 1024}) + "\n")
    return ok, payload, os.getpid(), peak_kb


def measured(manifest: str) -> tuple[dict[str, float], dict[str, str], list[float]]:
    """Per function, the largest invocation's measured peak (MiB) and its action; and the
    run's worker peaks (``RunResult.worker_peaks_mb``)."""
    from pipeline.engine import workers
    from pipeline.runner import run_local

    folder = tempfile.mkdtemp(prefix="tiffpipe-memory-")
    os.environ["TIFFPIPE_BENCH_MEMORY"] = folder
    workers._invoke = cold_invoke
    result = run_local(manifest, 1, interpreter="moto")
    if not result.ok:
        raise SystemExit(f"{manifest}: the run failed: {result.error}")
    peaks: dict[str, float] = {}
    actions: dict[str, str] = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            for line in f:
                r = json.loads(line)
                if r["peak_mb"] > peaks.get(r["function"], 0.0):
                    peaks[r["function"]] = r["peak_mb"]
                    actions[r["function"]] = r["action"]
    return peaks, actions, sorted(result.worker_peaks_mb.values())


def predicted(manifest: str) -> dict[str, Any]:
    """The model's peaks of the manifest's one job, as the local run has it (local files,
    :data:`THREADS` tile threads)."""
    from pipeline import estimate as est
    from pipeline.estimate.model import local_peaks

    planned = est.plan_manifest(manifest)
    if planned.problems:
        raise SystemExit(f"{manifest}: {planned.problems}")
    return local_peaks(planned.plans[0], est.load_calibration(), THREADS)


def baseline(folder: str) -> dict[str, float]:
    """Per function: the largest peak of its invocations on 64 x 64 pages."""
    out: dict[str, float] = {}
    for name in ("tiny-rgb", "tiny-gray-unfused"):
        peaks, _, _ = measured(prepare(folder, name))
        for function, mb in peaks.items():
            out[function] = max(out.get(function, 0.0), mb)
    return out


def prepare(folder: str, name: str) -> str:
    """The layout's input (written once) and its manifest of one job."""
    pages, options, job = {**LAYOUTS, **TINY}[name]
    src = os.path.join(folder, f"{name}.tif")
    if not os.path.exists(src):
        write_input(src, pages, options)
    manifest = os.path.join(folder, f"{name}.json")
    with open(manifest, "w") as f:
        json.dump({"jobs": [{"input": src, "output": os.path.join(folder, f"{name}-out.tif"),
                             "ops": BLUR, **job}]}, f)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--json", default=None, help="write the rows here too")
    ap.add_argument("--baseline", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    folder = args.dir or tempfile.mkdtemp(prefix="tiffpipe-memory-bench-")
    os.makedirs(folder, exist_ok=True)
    if args.baseline:
        for function, mb in baseline(folder).items():
            print(f"{function:8s} {mb:6.1f} MiB")
        return
    rows = []
    from pipeline.estimate.memory import BASELINE_MB, SCALE

    print(f"{'layout':26s} {'function':8s} {'step':13s} {'predicted':>9s} {'measured':>9s} "
          f"{'ratio':>6s} {'scale':>6s}")
    needs: dict[str, float] = {}
    for name in args.layouts.split(","):
        manifest = prepare(folder, name)
        model = predicted(manifest)
        peaks, actions, worker = measured(manifest)
        for function, p in model.items():
            got = peaks.get(function)
            row = {"layout": name, "function": function, "step": p.step, "page": p.page,
                   "predicted_mb": round(p.mb, 1), "parts_mb": p.parts,
                   "measured_mb": round(got, 1) if got else None,
                   "measured_action": actions.get(function), "worker_peaks_mb": worker}
            # the scale this row needs: its measured peak over the baseline, per MiB counted
            counted = sum(p.parts.values())
            need = (got - BASELINE_MB[function]) / counted if got and counted >= 1 else None
            if need is not None:
                needs[function] = max(needs.get(function, 0.0), need)
            row["scale_needed"] = need
            rows.append(row)
            print(f"{name:26s} {function:8s} {p.step:13s} {p.mb:9.1f} "
                  f"{got or 0:9.1f} {(got or 0) / p.mb:6.2f} "
                  + (f"{need:6.2f}" if need is not None else f"{'-':>6s}"))
    print("fit: the smallest scale per function that keeps every prediction at or above its "
          "measured peak: " + ", ".join(f"{f} {v:.2f}" for f, v in sorted(needs.items()))
          + f" (pipeline/estimate/memory.py SCALE: {SCALE})")
    ratios = [r["measured_mb"] / r["predicted_mb"] for r in rows if r["measured_mb"]]
    print(f"measured / predicted: {min(ratios):.2f} to {max(ratios):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
