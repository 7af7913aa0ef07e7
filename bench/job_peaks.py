"""The largest process of whole `tiffpipe run` commands, by kind of job, on giant pages.

    .venv/bin/python bench/job_peaks.py [--dir DIR] [--cases a,b,...] [--workers 2]

For each case it writes an input once (streamed tile by tile: bench/inputs.py; kept in
``--dir``, default /tmp/tiffpipe-job-peaks, about 2 GB for every case), runs ``tiffpipe run``
on a one-job manifest in a fresh process, and prints the maximum resident set of the
largest process of the command (the engine's or a worker's: ``getrusage(RUSAGE_CHILDREN)``
of a wrapper process whose only child is the command, as ``/usr/bin/time -v`` reports it),
in MiB, with the command's wall time (``--tree``: another checkout's tiffpipe). The table
of docs/performance.md, "Peak memory by kind of job", is its output. Memory, not time, is
the measure: a shared machine's load moves the wall, not the peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import tifffile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from inputs import photo_tile, write_photo_tiff, write_striped_tiff

BLUR = {"op": "gaussian_blur", "sigma": 2}
#: name -> (input name, ops, output options)
CASES: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "gray-1gpx-blur": ("gray-32768", [BLUR], {}),
    "gray-1gpx-blur-pyramid": ("gray-32768", [BLUR], {"pyramid": True}),
    "gray-1gpx-blur-cog": ("gray-32768", [BLUR], {"cog": True, "pyramid": True,
                                                  "pyramid_layout": "pages"}),
    "gray-900mpx-strips-blur": ("gray-strips-30000", [BLUR], {}),
    "rgb-400mpx-blur-downsample-pyramid": (
        "rgb-20000", [BLUR, {"op": "downsample", "factor": 2}], {"pyramid": True}),
    "float32-4band-6000-blur": ("float32x4-6000", [BLUR], {}),
    "float32-4band-12000-blur": ("float32x4-12000", [BLUR], {}),
    "gray-wide-400000-blur-pyramid": ("gray-1000x400000", [BLUR], {"pyramid": True}),
    "gray-tall-400000-rotate": ("gray-400000x1000", [{"op": "rotate", "angle": 90}], {}),
    "gray-tall-400000-rotate-pyramid": ("gray-400000x1000", [{"op": "rotate", "angle": 90}],
                                        {"pyramid": True}),
}


def _float_tiles(height: int, width: int, bands: int) -> Any:
    for y in range(0, height, 512):
        for x in range(0, width, 512):
            h, w = min(512, height - y), min(512, width - x)
            tile = photo_tile(y, x, h, w, 3).astype(np.float32) / 255
            out = np.zeros((512, 512, bands), np.float32)
            out[:h, :w, :3] = tile
            out[:h, :w, 3:] = tile[..., :1]
            yield out


def make_input(folder: str, name: str) -> str:
    path = os.path.join(folder, f"{name}.tif")
    if os.path.exists(path):
        return path
    kind, _, size = name.partition("-")
    if kind == "gray" and size.startswith("strips-"):
        side = int(size.split("-")[1])
        write_striped_tiff(path, side, side, channels=1)
    elif kind in ("gray", "rgb"):
        h, _, w = size.partition("x")
        write_photo_tiff(path, int(h), int(w or h), 1 if kind == "gray" else 3)
    else:  # float32x4-SIDE
        side = int(size)
        with tifffile.TiffWriter(path + ".part", bigtiff=True) as tw:
            tw.write(_float_tiles(side, side, 4), shape=(side, side, 4), dtype="float32",
                     tile=(512, 512), compression="zlib", compressionargs={"level": 1},
                     photometric="rgb", extrasamples=[2], metadata=None)
        os.replace(path + ".part", path)
    return path


def largest_process_mib(command: list[str], cwd: str | None = None) -> tuple[float, float]:
    """The largest process's peak RSS (MiB) of ``command`` and its wall seconds."""
    wrapper = ("import resource, subprocess, sys, time; t = time.time(); "
               "code = subprocess.run(sys.argv[1:]).returncode; "
               "print(code, time.time() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True,
                         text=True, check=True, cwd=cwd)
    code, wall, kib = out.stdout.split()[-3:]
    if code != "0":
        raise SystemExit(f"{command} failed ({code}): {out.stderr[-2000:]}")
    return int(kib) / 1024, float(wall)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/tiffpipe-job-peaks")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tree", help="run tiffpipe from this checkout (e.g. `git archive REV` "
                                   "unpacked) instead of this venv's, to compare")
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    tiffpipe = [os.path.join(os.path.dirname(sys.executable), "tiffpipe")]
    if args.tree:  # its package first on the path: `python -m pipeline` in the tree (-m puts
        # the working folder first; PYTHONPATH for the spawned workers)
        os.environ["PYTHONPATH"] = os.path.abspath(args.tree)
        tiffpipe = [sys.executable, "-m", "pipeline"]
    print("| job | largest process (MiB) | wall (s) |\n|---|---:|---:|")
    for name in args.cases.split(","):
        source, ops, options = CASES[name]
        t0 = time.time()
        src = make_input(args.dir, source)
        made = time.time() - t0
        out = os.path.join(args.dir, f"out-{name}.tif")
        manifest = os.path.join(args.dir, f"{name}.json")
        with open(manifest, "w") as f:
            json.dump([{"input": src, "output": out, "ops": ops,
                        "output_options": {"compression": "deflate", "level": 1,
                                           **options}}], f)
        mib, wall = largest_process_mib([*tiffpipe, "run", manifest, "--workers",
                                        str(args.workers), "--quiet", "--no-contact-sheet"],
                                        args.tree)
        os.remove(out)
        print(f"| {name} | {mib:.0f} | {wall:.1f} |" + (f" (input written in {made:.0f} s)"
                                                        if made > 1 else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
