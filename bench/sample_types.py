"""What each sample type costs an op: megapixels per CPU-second of the op functions on one
core, per type, for a 3-band page (the tiled path runs the same functions on each tile).

    PYTHONPATH=$PWD .venv/bin/python bench/sample_types.py [--size 1024] [--repeat 3]
        [--ops gaussian_blur,...]

Types OpenCV takes run natively; the others through float64 (or numpy), so their cost is
the conversion plus the float64 call. Prints one row per op: megapixels per CPU-second for
each type (the best of ``--repeat`` runs, process CPU time, OpenCV limited to one thread).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from pipeline.core.dtypes import ALL
from pipeline.core.ops import OPS

PARAMS = {"gaussian_blur": {"sigma": 2.0}, "median_blur": {"ksize": 3},
          "dilate": {"ksize": 3, "iterations": 1}, "unsharp_mask": {"sigma": 2.0, "amount": 1.0},
          "gamma": {"gamma": 2.2}, "invert": {}, "threshold": {"value": 0.5},
          "downsample": {"factor": 2}, "convert": {"dtype": "uint8", "in_range": [0, 1]}}


def page(size: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random((size, size, 3)).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, (size, size, 3), dtype=dt, endpoint=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ops", default=",".join(PARAMS))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    names = args.ops.split(",")
    print(f"Mpx per CPU-second, {args.size} x {args.size} x 3, one core")
    print("op".ljust(14) + "".join(t.rjust(9) for t in ALL))
    for name in names:
        op = OPS[name]
        params = {p.name: p.default for p in op.params if not p.required}
        params.update(PARAMS[name])
        row = name.ljust(14)
        for dtype in ALL:
            img = page(args.size, dtype)
            if dtype not in ("float16", "float32", "float64") and name == "threshold":
                params["value"] = float(np.iinfo(dtype).max) / 2
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.process_time()
                op.apply(img, params)
                best = min(best, time.process_time() - t0)
            row += f"{args.size * args.size / 1e6 / max(best, 1e-9):9.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
