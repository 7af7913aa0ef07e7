"""The PNG writer's compressors on a contact sheet's pixels, interleaved in one run.

    .venv/bin/python bench/png_codecs.py [--rows 1,200] [--png SHEET.png] [--repeat 5]
                                         [--dir DIR] [--json out.json]

``pipeline/adapters/png_write.py`` filters the rows (Up) and deflates bands of them in
threads; these are timed with each compressor it can use, on one thread and on all cores:

- ``isal``: ISA-L's deflate (python-isal), what it uses where installed;
- ``zlib``: Python's zlib at level 1, what it uses elsewhere;
- ``libdeflate`` and ``zlib-ng`` (imagecodecs' one-call encoders, at level 1 and 2): for
  reference only, on the whole filtered image in one call on one thread (neither can end a
  band without ending the stream, which the threads' bands need).

The pixels: for every ``--rows``, a contact sheet of that many rows drawn by
``pipeline.contact_sheet.render`` (photo-like thumbnails of the sweep's pixels, each row's
label text its own), or with ``--png``, the pixels of that PNG (a sheet a run wrote). Each
figure is the median wall of ``--repeat`` runs, with the bytes written; every file is
decoded by libpng (through imagecodecs) and checked against the pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

from compare import log
from inputs import write_photo_tiff

from pipeline.adapters import png_write
from pipeline.core.models import JobSpec


def sheet_pixels(rows: int, folder: str) -> np.ndarray:
    """A contact sheet of ``rows`` rows as ``tiffpipe run`` draws it: every row the same
    input and output page (photo-like 512 x 512 RGB pages, written once into ``folder``;
    one thumbnail each, made once), its own job number and file names."""
    from pipeline.contact_sheet import render

    pages = []
    for seed in (0, 1):
        path = os.path.join(folder, f"sheet-page-{seed}.tif")
        if not os.path.exists(path):
            write_photo_tiff(path, 512, 512, 3, seed=seed)
        pages.append(path)
    specs = [JobSpec(pages[0], pages[1], ops=[{"op": "gaussian_blur", "sigma": 2.0}])
             for _ in range(rows)]
    report = {"run_id": "bench", "succeeded": rows, "failed": 0,
              "jobs": [{"job": i, "status": "SUCCEEDED", "input": pages[0], "output": pages[1],
                        "pages": 1, "megapixels": 0.262, "seconds": 0.01}
                       for i in range(rows)]}
    return render(report, specs)


def file_pixels(path: str) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a tall sheet is larger than Pillow's bomb check
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def filtered(pixels: np.ndarray) -> bytes:
    """The rows as png_write filters them (Up) before deflating, for the one-call encoders."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    out = np.empty((height, width * 3 + 1), np.uint8)
    out[:, 0] = 2
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out.tobytes()


def png_of(pixels: np.ndarray, stream: bytes) -> bytes:
    """A PNG file of one zlib ``stream`` of the filtered rows (the one-call encoders')."""
    out = png_write.rgb_header(pixels.shape[1], pixels.shape[0])
    png_write.append_chunk(out, b"IDAT", stream)
    png_write.append_chunk(out, b"IEND", b"")
    return bytes(out)


def encoders(pixels: np.ndarray, cores: int) -> dict[str, Callable[[], bytes]]:
    """Every way to write the pixels as a PNG, by name."""
    import imagecodecs

    ways: dict[str, Callable[[], bytes]] = {}
    deflaters = {"isal": png_write.ISAL, "zlib": png_write.ZLIB}
    for name, deflater in deflaters.items():
        if deflater is None:
            continue
        for threads in sorted({1, cores}):
            ways[f"{name}, {threads} thread(s)"] = (
                lambda d=deflater, t=threads: png_write.encode_rgb(pixels, t, d))
    rows = filtered(pixels)
    for level in (1, 2):
        ways[f"libdeflate {level}, one call"] = (
            lambda lv=level: png_of(pixels, imagecodecs.deflate_encode(rows, level=lv)))
        ways[f"zlib-ng {level}, one call"] = (
            lambda lv=level: png_of(pixels, imagecodecs.zlibng_encode(rows, level=lv)))
    return ways


def run_case(label: str, pixels: np.ndarray, repeat: int, cores: int) -> dict[str, Any]:
    import imagecodecs

    ways = encoders(pixels, cores)
    walls: dict[str, list[float]] = {name: [] for name in ways}
    sizes: dict[str, int] = {}
    names = list(ways)
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:  # who goes first alternates
            t0 = time.perf_counter()
            data = ways[name]()
            walls[name].append(time.perf_counter() - t0)
            if name not in sizes:  # the file is a real PNG of the pixels
                if not np.array_equal(imagecodecs.png_decode(data), pixels):
                    raise SystemExit(f"{label}: {name} wrote a PNG of other pixels")
                sizes[name] = len(data)
    results = {name: {"wall_ms": 1000 * statistics.median(w), "bytes": sizes[name],
                      "walls_ms": [1000 * x for x in w]} for name, w in walls.items()}
    for name, res in results.items():
        log(f"{label:>18}  {name:28s} {res['wall_ms']:9.1f} ms {res['bytes']:>13,} bytes")
    return {"case": label, "pixels": list(pixels.shape), "raw_bytes": int(pixels.nbytes),
            "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,200",
                    help="comma-separated: contact sheets of that many rows")
    ap.add_argument("--png", help="the pixels of this PNG instead (a sheet a run wrote)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", help="where the sheets' two pages are written (kept)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    from pipeline.steps.common import usable_cores

    cores = usable_cores()
    folder = args.dir or os.path.join(tempfile.gettempdir(), "tiffpipe-png-codecs")
    os.makedirs(folder, exist_ok=True)
    log(f"compressor in use: {'isal' if png_write.DEFAULT is png_write.ISAL else 'zlib'}, "
        f"{cores} core(s); zlib {zlib.ZLIB_RUNTIME_VERSION}")
    cases = []
    if args.png:
        cases.append(run_case(os.path.basename(args.png), file_pixels(args.png), args.repeat,
                              cores))
    else:
        for rows in (int(r) for r in args.rows.split(",")):
            pixels = sheet_pixels(rows, folder)
            cases.append(run_case(f"{rows} row(s) {pixels.shape[1]}x{pixels.shape[0]}",
                                  pixels, args.repeat, cores))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kind": "tiffpipe-png-codecs/1", "cores": cores, "cases": cases}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
