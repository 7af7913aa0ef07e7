"""What one 512 x 512 RGB tile costs on one core, stage by stage, on a sweep input.

    .venv/bin/python bench/tile_costs.py [--input /tmp/tiffpipe-sweep/sweep-7744x7744x3x1.tif]

The stages of a fused unit (input decode, Gaussian blur sigma 2 on a haloed 1024 px tile,
the output codecs of bench/sweep.py), each timed in CPU seconds of this process over
``--count`` tiles with OpenCV on one thread (as in a worker), printed as milliseconds per
512 x 512 tile. The input is a tiled RGB uint8 TIFF such as bench/sweep.py writes (512 px
deflate tiles): run the sweep once, or pass another file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]


def per_tile_ms(fn: Callable[[int], object], count: int, tiles_per_call: float = 1.0) -> float:
    """CPU milliseconds per 512 x 512 tile of ``count`` calls of ``fn(i)``."""
    t0 = time.process_time()
    for i in range(count):
        fn(i)
    return (time.process_time() - t0) / count / tiles_per_call * 1e3


def main() -> None:
    import cv2
    import numpy as np
    import tifffile

    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.models import OutputOptions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default="/tmp/tiffpipe-sweep/sweep-7744x7744x3x1.tif")
    ap.add_argument("--count", type=int, default=100)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tifffile.TiffFile(args.input) as tf:
        page = tf.pages[0]
        if not page.is_tiled or page.tilewidth != 512 or page.samplesperpixel != 3:
            sys.exit(f"{args.input}: needs 512 px tiles of RGB (as bench/sweep.py writes)")
        fh = tf.filehandle
        n = min(args.count, len(page.dataoffsets))
        raw = []
        for i in range(n):
            fh.seek(page.dataoffsets[i])
            raw.append(fh.read(page.databytecounts[i]))
        rows = {"input decode (tifffile page.decode)":
                per_tile_ms(lambda i: page.decode(raw[i], i), n)}
        pixels = page.asarray()[:2072, :2072]
    haloed = [np.ascontiguousarray(pixels[y:y + 1036, x:x + 1036])
              for y in (0, 1036) for x in (0, 1036)]
    rows["gaussian blur sigma 2 (1036 px haloed tile)"] = per_tile_ms(
        lambda i: cv2.GaussianBlur(haloed[i % 4], (0, 0), 2.0), n, 1036 * 1036 / 512 / 512)
    tiles = [np.ascontiguousarray(pixels[y:y + 512, x:x + 512])
             for y in (0, 512, 1024) for x in (0, 512, 1024)]
    for codec in ("jpeg", "zstd", "deflate"):
        enc = OutputEncoder(OutputOptions(compression=codec, quality=90), "uint8", 3)
        rows[f"{codec} encode (with predictor if lossless)"] = per_tile_ms(
            lambda i, e=enc: e.encode(tiles[i % 9]), n if codec != "deflate" else max(1, n // 4))
    for name, ms in rows.items():
        print(f"{name:48s} {ms:7.2f} ms per 512 x 512 tile")


if __name__ == "__main__":
    main()
