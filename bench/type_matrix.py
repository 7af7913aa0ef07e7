"""How many files of a codec x type x bands x layout matrix a ``tiffpipe run`` with
gaussian_blur processes, and why the others fail (the reproduction of issue 12).

    PYTHONPATH=$PWD .venv/bin/python bench/type_matrix.py [--dir DIR] [--workers 2]

Writes (into ``--dir``, default a temporary folder) one small page (150 x 230) per case:
every TIFF sample type x 1, 3, 5 and 8 bands x tiled / stripped x contiguous / separate
(bands > 1) x zstd / deflate / LZW / none (one codec per case, in rotation), runs one
manifest with ``gaussian_blur`` (sigma 1.5) over all of them on the local engine, and prints
how many succeeded and, per error type and message head, how many failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import tifffile

from pipeline.runner import run_local

TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
         "float32", "float64")
CODECS = ("zstd", "zlib", "lzw", None)


def cases():
    i = 0
    for dtype in TYPES:
        for bands in (1, 3, 5, 8):
            for tiled in (True, False):
                for separate in ((False, True) if bands > 1 else (False,)):
                    yield i, dtype, bands, tiled, separate, CODECS[i % len(CODECS)]
                    i += 1


def write(path: str, dtype: str, bands: int, tiled: bool, separate: bool, codec) -> None:
    rng = np.random.default_rng(len(path))
    dt = np.dtype(dtype)
    shape = (150, 230, bands) if bands > 1 else (150, 230)
    if dt.kind == "f":
        page = rng.random(shape).astype(dt)
    else:
        info = np.iinfo(dt)
        page = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    photometric = "rgb" if bands == 3 else "minisblack"
    base = 3 if bands == 3 else 1
    data = np.moveaxis(page, -1, 0).copy() if separate else page
    tifffile.imwrite(path, data, photometric=photometric, compression=codec, metadata=None,
                     planarconfig=("separate" if separate else "contig") if bands > 1 else None,
                     extrasamples=[0] * (bands - base) if bands > base else None,
                     **({"tile": (32, 48)} if tiled else {"rowsperstrip": 16}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="type_matrix_")
    os.makedirs(folder, exist_ok=True)
    jobs = []
    for i, dtype, bands, tiled, separate, codec in cases():
        name = (f"{i:03d}_{dtype}_{bands}b_{'tiled' if tiled else 'strips'}_"
                f"{'separate' if separate else 'contig'}_{codec or 'none'}")
        write(os.path.join(folder, name + ".tif"), dtype, bands, tiled, separate, codec)
        jobs.append({"input": os.path.join(folder, name + ".tif"),
                     "output": os.path.join(folder, "out", name + ".tif"), "tile": 64,
                     "output_options": {"tile": 64, "compression": "deflate"},
                     "ops": [{"op": "gaussian_blur", "sigma": 1.5}]})
    manifest = os.path.join(folder, "matrix.json")
    with open(manifest, "w") as fh:
        json.dump({"jobs": jobs}, fh)
    result = run_local(manifest, args.workers)
    report = result.report or {"jobs": []}
    failures = collections.Counter()
    for job in report["jobs"]:
        if job["status"] != "SUCCEEDED":
            message = job.get("error", {}).get("message", "?").split(": ", 1)[-1]
            failures[(job.get("error", {}).get("type", "?"), message[:110])] += 1
    ok = sum(j["status"] == "SUCCEEDED" for j in report["jobs"])
    print(f"{ok} of {len(jobs)} files processed, {len(jobs) - ok} failed ({folder})")
    for (kind, message), n in failures.most_common():
        print(f"  {n:3d} x {kind}: {message}")


if __name__ == "__main__":
    main()
