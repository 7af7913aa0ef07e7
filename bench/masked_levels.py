"""What carrying a GeoTIFF's internal mask costs a job with pyramid levels: the same job with
the mask carried (its levels built by merge) and with ``"masks": false`` (built by the
units), run alternately.

    .venv/bin/python bench/masked_levels.py [--side 8000] [--runs 3] [--dir DIR]
                                            [--workers 2]

Writes (once, into ``--dir``) an RGB uint8 GeoTIFF of ``--side`` x ``--side`` pixels in 512 px
deflate tiles, with an internal mask written by GDAL (rasterio's ``write_mask``: a valid
rectangle inside a collar), then runs a gaussian_blur (sigma 2) to zstd with ``pyramid``,
each run a fresh child process (bench/children.py ``tiffpipe``), the two manifests taking
turns. Prints each run's wall, its merge's and its units' seconds and its largest process,
then the medians. Needs rasterio (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from compare import child, log


def write_input(path: str, side: int) -> None:
    """A smooth RGB scene with GDAL's internal mask: valid inside a collar of side / 16 rows
    and side / 10 columns."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    y, x = np.mgrid[0:side, 0:side // 8]
    band = (127 + 60 * np.sin(x * 8 / 50) + 40 * np.cos(y / 70)).astype(np.uint8)
    band = np.repeat(band, 8, axis=1)[:, :side]
    mask = np.zeros((side, side), np.uint8)
    mask[side // 16:side - side // 16, side // 10:side - side // 10] = 255
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3,
                       dtype="uint8", tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", crs="EPSG:32633",
                       transform=from_origin(500000, 4e6, 10, 10)) as ds:
        for b in range(3):
            ds.write(band, b + 1)
        ds.write_mask(mask)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/tiffpipe-masked-levels")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"masked-{args.side}.tif")
    if not os.path.exists(src):
        write_input(src, args.side)
    manifests = {}
    for name, masks in (("carried", True), ("left out", False)):
        out = os.path.join(args.dir, f"out-{masks}.tif")
        manifest = os.path.join(args.dir, f"masks-{masks}.json")
        with open(manifest, "w", encoding="utf-8") as f:
            json.dump({"jobs": [{"input": src, "output": out,
                                 "ops": [{"op": "gaussian_blur", "sigma": 2.0}],
                                 "output_options": {"compression": "zstd", "pyramid": True,
                                                    "masks": masks}}]}, f)
        manifests[name] = (manifest, out)
    walls: dict[str, list[float]] = {name: [] for name in manifests}
    for run in range(args.runs):
        for name in (list(manifests) if run % 2 == 0 else list(manifests)[::-1]):
            manifest, out = manifests[name]
            if os.path.exists(out):
                os.remove(out)
            r = child("tiffpipe", manifest=manifest, workers=args.workers)
            if not r["ok"]:
                raise SystemExit(f"{name}: {r['error']}")
            actions = r["actions"]
            units = actions.get("process_unit", {}).get("wall_s", 0.0)  # (summed)
            walls[name].append(r["wall_s"])
            log(f"masks {name:8s} [{run + 1}/{args.runs}] {r['wall_s']:6.2f} s, merge "
                f"{actions.get('merge', {}).get('wall_s', 0.0):5.2f} s, units {units:5.2f} s, "
                f"largest process {r['peak_mb']:4.0f} MB")
    for name, values in walls.items():
        print(f"masks {name}: median {statistics.median(values):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
