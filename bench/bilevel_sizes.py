"""Bytes of 1-bit outputs (``output_options.bilevel``) against the 8-bit 0/255 outputs the same
chain writes without it, codec by codec, on a page like a scan.

    .venv/bin/python bench/bilevel_sizes.py [--input FILE] [--ops JSON] [--dir DIR]

Without ``--input``: a gray A4 page at 300 dpi (2480 x 3508) like a scanned letter: lines of
text (OpenCV's Hershey font) on paper with a gradient and noise, blurred as a scanner's
optics do, binarised by ``--ops`` (default ``[{"op": "otsu_threshold"}]``); with a bilevel
input (a CCITT fax), ``--ops '[]'`` copies it. Each output is checked: the 1-bit output read
back (tifffile, as 0/255) equals the 8-bit output. Prints one row per codec: the two sizes
and their ratio, and the input's size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tifffile

import pipeline

CODECS = ("zstd", "deflate", "lzw", "none")


def letter_page(seed: int = 0, height: int = 3508, width: int = 2480) -> np.ndarray:
    """A scanned-letter-like gray page (uint8)."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, height)[:, None]
    page = np.full((height, width), 232.0) - 18 * yy + rng.normal(0, 6, (height, width))
    words = ["archive", "letter", "newspaper", "scanned", "page", "county", "records", "the",
             "of", "and", "to", "in", "1897"]
    ink = np.zeros((height, width), np.uint8)
    for y in range(300, height - 300, 70):
        line = " ".join(rng.choice(words, 12))
        cv2.putText(ink, line, (200, y), cv2.FONT_HERSHEY_SIMPLEX, 1.6, 255, 3, cv2.LINE_AA)
    page -= ink * (190 / 255)
    page = cv2.GaussianBlur(page, (0, 0), 1.2) + rng.normal(0, 4, (height, width))
    return np.clip(page, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", help="a TIFF (default: a synthetic scanned letter)")
    ap.add_argument("--ops", default='[{"op": "otsu_threshold"}]', help="the op chain (JSON)")
    ap.add_argument("--dir", help="where the files go (default: a temporary folder)")
    args = ap.parse_args(argv)
    ops = json.loads(args.ops)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = Path(args.input).resolve() if args.input else work / "letter.tif"
        if not args.input:
            tifffile.imwrite(src, letter_page(), tile=(512, 512), compression="zstd")
        jobs = []
        for codec in (*CODECS, "group4"):
            for bilevel in (False, True) if codec != "group4" else (True,):
                jobs.append({"input": str(src), "output": str(work / f"{codec}-{int(bilevel)}.tif"),
                             "ops": ops,
                             "output_options": {"compression": codec, "bilevel": bilevel}})
        result = pipeline.run({"jobs": jobs})
        if not result.ok:
            print([job.get("error") for job in result.jobs], file=sys.stderr)
            return 1
        reference = tifffile.imread(work / "zstd-0.tif")
        print(f"input {src.name}: {src.stat().st_size:,} bytes, {reference.shape[1]} x "
              f"{reference.shape[0]}, black {np.mean(reference == 0):.1%}, ops {args.ops}")
        print("| codec | 8-bit 0/255 | 1-bit | 8-bit / 1-bit |\n|---|---|---|---|")
        for codec in (*CODECS, "group4"):
            one = work / f"{codec}-1.tif"
            if not np.array_equal(np.where(tifffile.imread(one), 0, 255), reference):
                print(f"{codec}: the 1-bit output differs from the 8-bit one", file=sys.stderr)
                return 1
            eight = work / f"{codec}-0.tif"
            e, o = (eight.stat().st_size if eight.exists() else None), one.stat().st_size
            ratio = f"{e / o:.1f}x" if e else "(8-bit: none)"
            print(f"| {codec} | {f'{e:,}' if e else '-'} | {o:,} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
