"""What ``gaussian_blur`` costs a tile with no-data: the blur of the valid samples alone
computed over the blocks by the invalid samples (``pipeline/core/op_functions.py``
``_valid_blur``) against the full-tile computation it replaced (kept as the reference of
``tests/test_valid_blur_blocks.py`` in ``bench/valid_blur_reference.py``), called in turns
on one tile; and ``dilate``'s valid path against its plain one.

    .venv/bin/python bench/valid_blur.py [--rounds 5]

A 1024 x 1024 RGB uint8 tile of noise, sigma 2 (and 8): no no-data value; a slanted no-data
collar over a quarter of it (uint8 no-data 0; float32 NaN); a 1% no-data corner; invalid
pixels scattered over 0.1% of it (every block holds one); a no-data value no pixel holds.
Prints the median of the rounds in ms, old and new. Single-threaded, a few seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

import numpy as np
from valid_blur_reference import full_tile_valid_blur

from pipeline.core import op_functions as fn


def tiles() -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    rng = np.random.default_rng(1)
    side = 1024
    base = rng.integers(1, 256, (side, side, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:side, 0:side]
    collar, corner = xx + yy < 724, (yy < 102) & (xx < 102)
    scattered = rng.random((side, side)) < 0.001
    nan = base.astype(np.float32) / 255
    nan[collar] = np.nan
    out = {"plain (no no-data value)": (base, {"sigma": 2.0}),
           "float32 NaN collar 25%": (nan, {"sigma": 2.0, "input_nodata": float("nan")}),
           "no pixel holds no-data": (base, {"sigma": 2.0, "input_nodata": 0})}
    for name, where, sigma in (("collar 25%", collar, 2.0), ("collar 25%, sigma 8", collar, 8.0),
                               ("corner 1%", corner, 2.0), ("scattered 0.1%", scattered, 2.0)):
        img = base.copy()
        img[where] = 0
        out[name] = (img, {"sigma": sigma, "input_nodata": 0})
    return out


def ms(func: Callable[[np.ndarray, dict[str, Any]], np.ndarray], img: np.ndarray,
       p: dict[str, Any]) -> float:
    start = time.perf_counter()
    func(img, p)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    new = fn._valid_blur
    print(f"{'gaussian_blur, 1024 x 1024 RGB':32s} {'old ms':>8s} {'new ms':>8s}")
    for name, (img, p) in tiles().items():
        old_ms, new_ms = [], []
        for _ in range(rounds):
            fn._valid_blur = full_tile_valid_blur
            old_ms.append(ms(fn.gaussian_blur, img, p))
            fn._valid_blur = new
            new_ms.append(ms(fn.gaussian_blur, img, p))
        print(f"{name:32s} {statistics.median(old_ms):8.1f} {statistics.median(new_ms):8.1f}")
    img, _ = tiles()["collar 25%"]
    for name, p in (("dilate 3, no no-data value", {}), ("dilate 3, collar 25%",
                                                         {"input_nodata": 0})):
        took = [ms(fn.dilate, img, {"ksize": 3, "iterations": 1, **p}) for _ in range(rounds)]
        print(f"{name:32s} {statistics.median(took):17.1f}")


if __name__ == "__main__":
    main()
