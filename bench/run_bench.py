"""Memory and throughput of a local run (issue: "Speed and memory").

Generates its inputs, then measures in one run, so the ratios are fair on a noisy machine:
1. memory: peak RSS of the engine process and of each worker while processing a page of
   ``--giant-mpx`` megapixels (default 4096 = 4 gigapixels) and a page of ``--small-mpx``
   (default 256): the ratio shows whether memory grows with the image;
2. throughput: a local run with gaussian_blur on a 3-page RGB TIFF of ``--rgb-gb`` GB
   (default 1), beside reading and writing the same file with tifffile alone.

    .venv/bin/python bench/run_bench.py [--quick] [--json results.json]

Each measured run is a fresh child process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pipeline.engine.workers import peak_rss_kb
from pipeline.sample import SamplePage, write_sample


def child_run(manifest: str, workers: int) -> dict:
    """Run in a child: the pipeline on ``manifest``; print peaks and timings as JSON."""
    from pipeline.runner import run_local

    t0, c0 = time.time(), time.process_time()
    result = run_local(manifest, workers)
    wall = time.time() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"ok": result.ok, "error": result.error, "wall_s": wall,
            "engine_cpu_s": time.process_time() - c0,
            "workers_cpu_s": children.ru_utime + children.ru_stime,
            "engine_peak_mb": peak_rss_kb() / 1024,
            "worker_peaks_mb": sorted(result.worker_peaks_mb.values())}


def child_tifffile(src: str, dst: str, compression: str) -> dict:
    """Baseline in a child: tifffile reads every page whole and writes it back (tiled)."""
    import tifffile

    t0 = time.time()
    with tifffile.TiffFile(src) as tf, tifffile.TiffWriter(dst, bigtiff=True) as tw:
        for i in range(len(tf.pages)):
            page = tf.pages[i].asarray()
            tw.write(page, tile=(512, 512), compression=compression, maxworkers=2,
                     photometric="rgb" if page.ndim == 3 else "minisblack")
    return {"wall_s": time.time() - t0,
            "peak_mb": peak_rss_kb() / 1024}


def in_child(func: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", func, *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def manifest_for(folder: str, name: str, src: str, ops: list, compression: str) -> str:
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"jobs": [{"input": src, "output": f"{name}.out.tif", "ops": ops,
                             "output_options": {"compression": compression}}]}, f)
    return path


def square(mpx: float) -> int:
    return int(math.sqrt(mpx * 1e6)) // 16 * 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--giant-mpx", type=float, default=4096)
    ap.add_argument("--small-mpx", type=float, default=256)
    ap.add_argument("--rgb-gb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true", help="small sizes, to try the script")
    ap.add_argument("--dir", help="where inputs go (default: a temp folder)")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        func, *rest = args.child
        if func == "run":
            print(json.dumps(child_run(rest[0], int(rest[1]))))
        else:
            print(json.dumps(child_tifffile(*rest)))
        return
    if args.quick:
        args.giant_mpx, args.small_mpx, args.rgb_gb = 256, 16, 0.1
    folder = args.dir or tempfile.mkdtemp(prefix="tiffpipe-bench-")
    os.makedirs(folder, exist_ok=True)
    blur = [{"op": "gaussian_blur", "sigma": 2.0}]
    results: dict = {"workers": args.workers, "cores": os.cpu_count()}

    # --- memory: a giant gray page vs a small one ---------------------------------------
    for label, mpx in (("small", args.small_mpx), ("giant", args.giant_mpx)):
        side = square(mpx)
        src = os.path.join(folder, f"gray-{label}.tif")
        if not os.path.exists(src):
            print(f"writing {src}: {side}x{side} gray uint8", file=sys.stderr)
            write_sample(src, [SamplePage(side, side, 1, "uint8")], tile=1024)
        m = manifest_for(folder, f"mem-{label}", src, blur, "zstd")
        r = in_child("run", m, str(args.workers))
        r["megapixels"] = side * side / 1e6
        r["mpx_per_s"] = r["megapixels"] / r["wall_s"]
        results[f"memory_{label}"] = r
        print(f"{label}: {r['megapixels']:.0f} Mpx, {r['wall_s']:.1f} s, engine "
              f"{r['engine_peak_mb']:.0f} MB, workers {r['worker_peaks_mb']} MB", file=sys.stderr)
    small, giant = results["memory_small"], results["memory_giant"]
    peak = lambda r: max([r["engine_peak_mb"], *r["worker_peaks_mb"]])
    results["memory_ratio_giant_to_small"] = peak(giant) / peak(small)

    # --- throughput: 3-page RGB, tiffpipe vs tifffile read+write ------------------------
    side = square(args.rgb_gb * 1e9 / 3 / 3 / 1e6)
    src = os.path.join(folder, "rgb-3page.tif")
    if not os.path.exists(src):
        print(f"writing {src}: 3 pages {side}x{side} RGB", file=sys.stderr)
        write_sample(src, [SamplePage(side, side, 3, "uint8")] * 3, tile=512)
    mpx = 3 * side * side / 1e6
    m = manifest_for(folder, "rgb", src, blur, "zstd")
    runs = []
    for _ in range(2):  # interleaved, repeated
        runs.append(("tiffpipe", in_child("run", m, str(args.workers))))
        runs.append(("tifffile", in_child("tifffile", src, os.path.join(folder, "tf.out.tif"),
                                          "zstd")))
    best = {k: min(r["wall_s"] for name, r in runs if name == k) for k in ("tiffpipe", "tifffile")}
    results["throughput"] = {
        "megapixels": mpx, "raw_gb": mpx * 3 / 1e3,
        "tiffpipe_s": best["tiffpipe"], "tifffile_read_write_s": best["tifffile"],
        "tiffpipe_mpx_per_s": mpx / best["tiffpipe"],
        "tifffile_mpx_per_s": mpx / best["tifffile"],
        "ratio_tiffpipe_to_tifffile_time": best["tiffpipe"] / best["tifffile"],
        "runs": [{"what": n, **r} for n, r in runs]}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
