"""Per-op and per-codec costs on one core, for the calibration file of ``tiffpipe estimate``.

Times, on the benchmark's photo-like content and with OpenCV on one thread (as in a worker):
each op of the registry (on a haloed 1024 px tile, per megapixel of haloed input), each
output codec (per megapixel of output tiles, with the bytes it produces), and the work-tile
codec (zstd level 1, each way). ``python bench/microbench.py`` prints the JSON.

1-bit outputs (``output_options.bilevel``) are timed on a page like a scanned letter
(``bench/bilevel_sizes.py``'s, binarised by Otsu's threshold as ``otsu_threshold`` does),
not on the photo-like content, which a 1-bit output does not hold: each codec a 1-bit page
may have, group4 included, kept as the codec's ``bilevel`` kind.
``python bench/microbench.py --bilevel-into bench/calibration.json`` measures only these and
writes them into that calibration file (its other measurements kept), for a calibration
made before 1-bit outputs without rerunning bench/compare.py.
"""

from __future__ import annotations

import argparse
import datetime
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
#: the 1-bit page timed: whole 512 px tiles of the letter (the run's output tiles)
BILEVEL_SHAPE = (3072, 2048)


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


def bilevel_page() -> np.ndarray:
    """The 1-bit page timed: bench/bilevel_sizes.py's scanned letter (A4 at 300 dpi),
    :data:`BILEVEL_SHAPE` of it from its top left corner, binarised by Otsu's threshold
    (0 and 255, as ``otsu_threshold`` makes it)."""
    import cv2
    from bilevel_sizes import letter_page

    h, w = BILEVEL_SHAPE
    gray = np.ascontiguousarray(letter_page()[:h, :w])
    return cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]


def measure_bilevel(seconds: float = 0.3) -> dict[str, dict[str, float]]:
    """Each codec's CPU seconds and bytes per megapixel of 1-bit output tiles (512 px) of
    :func:`bilevel_page`, as the other codecs are timed: ``{codec: {cpu_s_per_mpx,
    bytes_per_mpx}}``."""
    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.models import BILEVEL_COMPRESSIONS, OutputOptions

    page = bilevel_page()
    tiles = [np.ascontiguousarray(page[y:y + 512, x:x + 512])
             for y in range(0, page.shape[0], 512) for x in range(0, page.shape[1], 512)]
    mpx = page.size / 1e6
    out = {}
    for comp in BILEVEL_COMPRESSIONS:
        enc = OutputEncoder(OutputOptions(compression=comp, bilevel=True), "uint8", 1)
        size = sum(len(enc.encode(t)) for t in tiles)
        s = _best(lambda e=enc, ts=tiles: [e.encode(t) for t in ts], seconds)
        out[comp] = {"cpu_s_per_mpx": s / mpx, "bytes_per_mpx": size / mpx}
    return out


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
    for comp, entry in measure_bilevel(seconds).items():
        out["encode"].setdefault(comp, {})["bilevel"] = entry
    return out


def bilevel_into(path: str, seconds: float) -> None:
    """Measure the 1-bit codecs (:func:`measure_bilevel`) and write them into the
    calibration file at ``path`` (its encode section's ``bilevel`` kinds; the rest kept),
    each entry saying when and where it was measured."""
    import cv2

    with open(path, encoding="utf-8") as f:
        cal = json.load(f)
    cv2.setNumThreads(1)
    load = [round(x, 2) for x in os.getloadavg()]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for comp, entry in measure_bilevel(seconds).items():
        cal["encode"].setdefault(comp, {})["bilevel"] = {
            **entry, "measured_at": when, "load_average": load,
            "source": "bench/microbench.py --bilevel-into (a scanned letter, binarised)"}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cal, f, indent=1)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", nargs="?", type=float, default=0.3,
                    help="about how long each case is timed (default 0.3)")
    ap.add_argument("--bilevel-into", metavar="CALIBRATION",
                    help="measure only the 1-bit codecs and write them into this file")
    args = ap.parse_args(argv)
    if args.bilevel_into:
        bilevel_into(args.bilevel_into, args.seconds)
    else:
        print(json.dumps(measure(args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
