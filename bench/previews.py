"""``tiffpipe preview`` of JPEG pages against its exact mode and libvips's thumbnail, each a
fresh process timed from its start to its exit, interleaved in one run.

    .venv/bin/python bench/previews.py [--sizes 0.01,0.1,0.3] [--size 512] [--repeat 5]
                                       [--dir DIR] [--before TREE] [--json out.json]

For every size (gigapixels in one square page: a JPEG page, quality 90, 512 px tiles, the
sweep's photo-like pixels, written once into ``--dir``) the commands take turns within each
repeat:

- ``tiffpipe``: ``tiffpipe preview PAGE --size SIZE`` (a JPEG page 16 times the box or more
  is decoded at 1/8);
- ``tiffpipe-exact``: the same with ``--exact`` (every tile decoded in full);
- ``libvips``: ``python -c`` pyvips's ``thumbnail`` (its shrink-on-load: libjpeg's scaled
  decode too, then a resampling), written as a PNG;
- ``before`` (with ``--before TREE``): ``tiffpipe preview`` of another checkout.

Each figure is the median wall of ``--repeat`` runs. ``checks``: tiffpipe's thumbnail
against ``--exact``'s, pixel by pixel (mean and largest difference, in levels of 255).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

from commands import BEFORE, chosen_tools, common_arguments, timed
from compare import log
from inputs import write_photo_tiff
from sweep import page_shape

TOOLS = ("tiffpipe", "tiffpipe-exact", "libvips")

#: the libvips peer (argv: src, png, size)
LIBVIPS = r"""
import sys
import pyvips
src, png, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
pyvips.Image.thumbnail(src, size).pngsave(png)
"""


def jpeg_page(folder: str, side: int) -> str:
    """One square JPEG page (quality 90, 512 px tiles) of ``side`` pixels, written once."""
    path = os.path.join(folder, f"preview-{side}x{side}x3-jpeg.tif")
    if not os.path.exists(path):
        log(f"writing {path}: one {side}x{side}x3 uint8 JPEG page")
        write_photo_tiff(path, side, side, 3, compression="jpeg", level=90)
    return path


def command(tool: str, src: str, png: str, args: argparse.Namespace) -> list[str]:
    size = ["--size", str(args.size)]
    if tool.startswith("tiffpipe"):
        cli = os.path.join(os.path.dirname(sys.executable), "tiffpipe")
        exact = ["--exact"] if tool == "tiffpipe-exact" else []
        return [cli, "preview", src, "-o", png, *size, *exact]
    if tool == "before":
        return [sys.executable, "-c", BEFORE, args.before, "preview", src, "-o", png, *size]
    return [sys.executable, "-c", LIBVIPS, src, png, str(args.size)]


def difference(png: str, exact_png: str) -> dict[str, float]:
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB"), np.int16)
    b = np.asarray(Image.open(exact_png).convert("RGB"), np.int16)
    if a.shape != b.shape:
        return {"mean": float("nan"), "max": float("nan")}
    d = np.abs(a - b)
    return {"mean": float(d.mean()), "max": float(d.max())}


def run_case(size: str, tools: list[str], args: argparse.Namespace) -> dict[str, Any]:
    _, side = page_shape(size, "single")
    src = jpeg_page(args.dir, side)
    out = os.path.join(args.dir, "out")
    os.makedirs(out, exist_ok=True)
    png = {t: os.path.join(out, f"preview-{t}.png") for t in tools}
    walls: dict[str, list[float]] = {t: [] for t in tools}
    for rep in range(args.repeat):
        for tool in tools[rep % len(tools):] + tools[:rep % len(tools)]:
            walls[tool].append(timed(command(tool, src, png[tool], args))[0])
            log(f"{size:>5s} [{rep + 1}/{args.repeat}] {tool:15s} {walls[tool][-1]:6.3f} s")
    medians = {t: statistics.median(w) for t, w in walls.items()}
    checks = ({"tiffpipe": difference(png["tiffpipe"], png["tiffpipe-exact"])}
              if {"tiffpipe", "tiffpipe-exact"} <= set(tools) else {})
    for p in png.values():
        if os.path.exists(p):
            os.remove(p)
    return {"size": size, "megapixels": side * side / 1e6, "walls": walls,
            "median_s": medians, "checks": checks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.01,0.1,0.3")
    ap.add_argument("--size", type=int, default=512, help="the thumbnail's box")
    common_arguments(ap, TOOLS, "before")
    args = ap.parse_args(argv)
    tools = chosen_tools(args, ("before",))
    results = [run_case(size, tools, args) for size in args.sizes.split(",")]
    print("| JPEG page | " + " | ".join(tools) + " | tiffpipe / exact | tiffpipe vs exact |")
    print("|---|" + "---|" * len(tools) + "---|---|")
    for r in results:
        m = r["median_s"]
        cells = [f"{m[t]:.3f} s" for t in tools]
        ratio = (f"{m['tiffpipe'] / m['tiffpipe-exact']:.2f}x"
                 if "tiffpipe" in m and "tiffpipe-exact" in m else "-")
        check = r["checks"].get("tiffpipe")
        diff = f"mean {check['mean']:.2f}, max {check['max']:.0f}" if check else "-"
        print(f"| {r['megapixels']:.3g} Mpx | " + " | ".join(cells) + f" | {ratio} | {diff} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
