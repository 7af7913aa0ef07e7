"""Per-op and per-codec costs on one core, for the calibration file of ``tiffpipe estimate``.

Times, on the benchmark's photo-like content and with OpenCV on one thread (as in a worker):
each op of the registry (on a haloed 1024 px tile, per megapixel of haloed input), each
output codec (per megapixel of output tiles, with the bytes it produces), and the work-tile
codec (zstd level 1, each way). ``python bench/microbench.py`` prints the JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

#: the op settings timed; ops of the registry not listed here are timed with their defaults
#: (or skipped when they need parameters we cannot guess)
OP_CASES: list[dict[str, Any]] = [
    {"op": "gaussian_blur", "sigma": 1.0}, {"op": "gaussian_blur", "sigma": 2.0},
    {"op": "gaussian_blur", "sigma": 4.0}, {"op": "gaussian_blur", "sigma": 8.0},
    {"op": "median_blur", "ksize": 3}, {"op": "median_blur", "ksize": 5},
    # OpenCV switches median algorithm above ksize 5 (much slower per pixel, then flat)
    {"op": "median_blur", "ksize": 7}, {"op": "median_blur", "ksize": 101},
    {"op": "dilate", "ksize": 3}, {"op": "erode", "ksize": 3},
    {"op": "unsharp_mask", "sigma": 2.0}, {"op": "unsharp_mask", "sigma": 8.0},
    {"op": "invert"}, {"op": "gamma", "gamma": 2.2}, {"op": "threshold", "value": 128},
    {"op": "to_gray"}, {"op": "canny", "low": 50, "high": 150},
    {"op": "downsample", "factor": 2}, {"op": "clahe"},
]
KINDS = (("uint8", 1), ("uint8", 3))
BENCH_SIGMA = 2.0
COMPRESSIONS = ("deflate", "jpeg", "zstd", "lzw", "none")


def _best(fn: Callable[[], Any], seconds: float) -> float:
    """Best CPU time of ``fn`` (this thread's: OpenCV runs on one thread here, the codecs in
    the calling thread) over at least 2 runs and about ``seconds`` of runs. CPU time, not wall
    time, so that other work on a shared machine does not inflate it."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 2 or (time.perf_counter() - start < seconds and len(times) < 20):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def measure(seconds: float = 0.3, tile: int = 1024) -> dict[str, Any]:
    import cv2
    from inputs import photo_tile

    from pipeline.adapters.tile_codec import OutputEncoder, decode_work_tile, encode_work_tile
    from pipeline.core.models import OutputOptions
    from pipeline.core.ops import OPS, apply_chain, chain_from_json, chain_halo

    cv2.setNumThreads(1)
    cases = list(OP_CASES) + [{"op": name} for name in OPS
                              if name not in {c["op"] for c in OP_CASES}]
    out: dict[str, Any] = {"ops": {}, "encode": {}, "work": {}, "tile": tile,
                           "opencv_threads": 1}
    for dtype, channels in KINDS:
        kind = f"{dtype}x{channels}"
        big = photo_tile(0, 0, tile + 512, tile + 512, channels)
        for case in cases:
            try:
                chain = chain_from_json([case])
                halo = chain_halo(chain, np.dtype(dtype))
                side = tile + 2 * halo
                img = big[:side, :side] if side <= big.shape[0] else \
                    photo_tile(0, 0, side, side, channels)
                apply_chain(img, chain)  # warm up; raises for ops that do not fit
                s = _best(lambda c=chain, i=img: apply_chain(i, c), seconds)
            except Exception as exc:  # noqa: BLE001 - ops that need more than a tile
                out.setdefault("skipped", []).append(f"{case} on {kind}: {exc}"[:200])
                continue
            params = {k: v for k, v in case.items() if k != "op"}
            out["ops"].setdefault(case["op"], {}).setdefault(kind, []).append(
                {"params": params, "halo": halo, "cpu_s_per_mpx": s / (side * side / 1e6)})
        # outputs are what the bench op makes of the content: blurred (sigma 2), which
        # compresses better and faster than the raw grain
        core = np.ascontiguousarray(cv2.GaussianBlur(big, (0, 0), BENCH_SIGMA)[:tile, :tile])
        tiles = [np.ascontiguousarray(core[y:y + 512, x:x + 512])
                 for y in range(0, tile, 512) for x in range(0, tile, 512)]
        mpx = tile * tile / 1e6
        for comp in COMPRESSIONS:
            enc = OutputEncoder(OutputOptions(compression=comp), dtype, channels)
            if enc.check():
                continue
            size = sum(len(enc.encode(t)) for t in tiles)
            s = _best(lambda e=enc, ts=tiles: [e.encode(t) for t in ts], seconds)
            out["encode"].setdefault(comp, {})[kind] = {"cpu_s_per_mpx": s / mpx,
                                                        "bytes_per_mpx": size / mpx}
        raw = np.ascontiguousarray(big[:tile, :tile])
        blob = encode_work_tile(raw)
        out["work"][kind] = {
            "encode_cpu_s_per_mpx": _best(lambda r=raw: encode_work_tile(r), seconds) / mpx,
            "decode_cpu_s_per_mpx": _best(lambda b=blob: decode_work_tile(b), seconds) / mpx,
            "bytes_per_mpx": len(blob) / mpx}
    return out


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
    print(json.dumps(measure(seconds)))
