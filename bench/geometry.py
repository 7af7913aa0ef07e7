"""Rotate, flip and crop of a large STRIPED page (docs/manifest-and-ops.md, "Geometric
ops"): what each costs beside copying the page (an empty chain) and beside the whole-page
way (tifffile reads the page, cv2.rotate, tifffile writes it tiled).

For each chain: the plan's units and how many times the run decodes each input strip (from
the plan: a unit's sweep decodes every strip its input window touches once), then a local
run in a child process (wall time, each worker's peak memory), and ``--check`` compares
windows of the output with the same windows of the input turned by numpy.

    .venv/bin/python bench/geometry.py --height 16000 --width 24000 --dir /tmp/geom-bench

The input (RGB, 8-bit, LZW strips of ``--rows-per-strip`` rows, as scanners write) is
written strip by strip, once, and kept in ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

#: the chains measured, by name
CHAINS = {
    "copy": [],
    "rotate90": [{"op": "rotate", "angle": 90}],
    "rotate270": [{"op": "rotate", "angle": 270}],
    "rotate180": [{"op": "rotate", "angle": 180}],
    "flip_vertical": [{"op": "flip", "axis": "vertical"}],
    "crop": [{"op": "crop", "x": 150, "y": 200, "width": -300, "height": -400}],  # (of the page)
    "blur_rotate90": [{"op": "gaussian_blur", "sigma": 2}, {"op": "rotate", "angle": 90}],
}


def write_input(path: str, height: int, width: int, rows: int, compression: str) -> None:
    """An RGB page in strips of ``rows`` rows, each encoded here and handed to tifffile as
    bytes, so the page is never held whole."""
    import imagecodecs
    import tifffile

    from pipeline.sample import sample_tile

    encode = {"lzw": imagecodecs.lzw_encode, "deflate": imagecodecs.zlib_encode}[compression]

    def strips():
        for y0 in range(0, height, rows):
            yield encode(sample_tile(y0, 0, min(rows, height - y0), width, 3, "uint8").tobytes())

    tifffile.imwrite(path + ".tmp", strips(), shape=(height, width, 3), dtype="uint8",
                     rowsperstrip=rows, compression=compression, photometric="rgb",
                     bigtiff=height * width * 3 > 2**31, metadata=None)
    os.replace(path + ".tmp", path)


def ops_for(name: str, height: int, width: int) -> list[dict]:
    ops = [dict(op) for op in CHAINS[name]]
    for op in ops:
        if op["op"] == "crop":  # a border off each side
            op["width"], op["height"] = width + op["width"], height + op["height"]
    return ops


def plan_figures(src: str, ops: list[dict], workers_dir: str) -> dict:
    """The plan's units, and the strip decodes its units' sweeps make, per strip."""
    from pipeline.adapters.tiff_read import read_infos
    from pipeline.core.chain import page_geometry
    from pipeline.core.models import JobSpec
    from pipeline.core.plan import make_plan

    infos = read_infos(src, None)
    spec = JobSpec(input=src, output=os.path.join(workers_dir, "never.tif"), ops=ops)
    plan, problems = make_plan(0, spec, infos, workers_dir, 0.0)
    assert not problems, problems
    rows = infos[0].segment_rows
    decodes = 0
    for unit in plan.units:
        window = page_geometry(plan, unit.page).unit_read(unit)
        decodes += (window.y1 - 1) // rows - window.y0 // rows + 1
    strips = -(-infos[0].height // rows)
    unit = plan.units[0]
    return {"units": len(plan.units), "fused": plan.fused,
            "unit_tiles": [unit.row1 - unit.row0, unit.col1 - unit.col0],
            "decodes_per_strip": round(decodes / strips, 2)}


def child_run(manifest: str, workers: str) -> dict:
    from pipeline.engine.workers import peak_rss_kb
    from pipeline.runner import run_local

    t0 = time.time()
    result = run_local(manifest, int(workers))
    return {"ok": result.ok, "error": result.error, "wall_s": round(time.time() - t0, 2),
            "engine_peak_mb": round(peak_rss_kb() / 1024),
            "worker_peaks_mb": sorted(round(v) for v in result.worker_peaks_mb.values())}


def child_whole(src: str, dst: str) -> dict:
    """The whole-page way: read the page, cv2.rotate, write it tiled (zstd)."""
    import cv2
    import tifffile

    from pipeline.engine.workers import peak_rss_kb

    t0 = time.time()
    page = tifffile.imread(src)
    out = cv2.rotate(page, cv2.ROTATE_90_CLOCKWISE)
    del page
    tifffile.imwrite(dst, out, tile=(512, 512), compression="zstd", photometric="rgb",
                     maxworkers=2, bigtiff=out.nbytes > 2**31)
    return {"wall_s": round(time.time() - t0, 2), "peak_mb": round(peak_rss_kb() / 1024)}


def in_child(func: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", func, *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check(src: str, out: str, ops: list[dict], samples: int = 4) -> bool:
    """A few 512 x 512 windows of the output equal the input's windows they come from,
    turned by numpy (both read by tiffpipe's page reader: neither page is read whole).
    Chains of geometric ops only (test_exactness_geometry.py checks the others)."""
    import numpy as np
    import tifffile

    from pipeline.adapters.tiff_read import PageReader
    from pipeline.core.geometry import transform_of
    from pipeline.core.grid import Rect
    from pipeline.core.ops import chain_from_json

    transforms = [transform_of(c) for c in chain_from_json(ops)]
    if not transforms or None in transforms:
        return True
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(out) as b:
        zin, zout = PageReader(a, a.pages[0], src, 0), PageReader(b, b.pages[0], out, 0)
        dims = [(zin.height, zin.width)]
        for t in transforms:
            dims.append(t.size(*dims[-1]))
        h, w = zout.height, zout.width
        rng = np.random.default_rng(0)
        for _ in range(samples):
            y0, x0 = int(rng.integers(0, max(1, h - 512))), int(rng.integers(0, max(1, w - 512)))
            rect = back = Rect(y0, x0, min(h, y0 + 512), min(w, x0 + 512))
            for t, d in zip(reversed(transforms), reversed(dims[:-1]), strict=True):
                back = t.before(back, *d)
            want = zin.read(back)
            for t in transforms:
                want = t.page(want) if t.turns else want
            if not np.array_equal(zout.read(rect), want):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=16000)
    ap.add_argument("--width", type=int, default=24000)
    ap.add_argument("--rows-per-strip", type=int, default=16)
    ap.add_argument("--compression", choices=("lzw", "deflate"), default="lzw")
    ap.add_argument("--dir", default="/tmp/tiffpipe-geometry-bench")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chains", default=",".join(CHAINS))
    ap.add_argument("--whole", action="store_true", help="also the whole-page way")
    ap.add_argument("--check", action="store_true", help="compare windows of the outputs")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        func, *rest = args.child
        print(json.dumps({"run": child_run, "whole": child_whole}[func](*rest)))
        return
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"in-{args.height}x{args.width}-{args.compression}"
                                 f"-rps{args.rows_per_strip}.tif")
    if not os.path.exists(src):
        t0 = time.time()
        write_input(src, args.height, args.width, args.rows_per_strip, args.compression)
        print(f"wrote {src} ({os.path.getsize(src) / 2**20:.0f} MiB) in "
              f"{time.time() - t0:.0f} s", flush=True)
    results = {}
    for name in args.chains.split(","):
        ops = ops_for(name, args.height, args.width)
        out = os.path.join(args.dir, f"{name}.out.tif")
        manifest = os.path.join(args.dir, f"{name}.json")
        with open(manifest, "w") as f:
            json.dump({"jobs": [{"input": src, "output": out, "ops": ops}]}, f)
        row = plan_figures(src, ops, args.dir)
        row.update(in_child("run", manifest, str(args.workers)))
        if args.check and row["ok"]:
            row["check"] = check(src, out, ops)
        results[name] = row
        print(name, json.dumps(row), flush=True)
        if os.path.exists(out):
            os.remove(out)
    if args.whole:
        out = os.path.join(args.dir, "whole.out.tif")
        results["whole_page_cv2_rotate90"] = in_child("whole", src, out)
        print("whole_page_cv2_rotate90", json.dumps(results["whole_page_cv2_rotate90"]))
        os.remove(out)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
