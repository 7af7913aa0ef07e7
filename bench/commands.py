"""Whole commands, as a user types them: ``tiffpipe run`` against a script of the peers, each a
fresh process timed from its start to its exit, interleaved in one run.

    .venv/bin/python bench/commands.py [--sizes tiny,0.001,0.01] [--codecs jpeg,deflate]
                                       [--repeat 5] [--dir DIR] [--json out.json]

bench/sweep.py times the work inside one process, each tool's libraries imported before its
clock starts. What a user waits for also holds the interpreter's start, the imports and what
the command does around the run (its report, summary table and contact sheet): a fixed cost
that decides small inputs. For every size (``tiny``: one 256 x 256 page; a number:
gigapixels in one square page) and output codec, the commands take turns within each repeat:

- ``tiffpipe``: ``tiffpipe run MANIFEST`` (the console script next to this interpreter, all
  its defaults: progress lines, summary table, report, contact sheet);
- ``tiffpipe-no-sheet``: the same with ``--no-contact-sheet``;
- ``naive``: ``python -c`` a script that imports tifffile and OpenCV, reads the page whole,
  ``cv2.GaussianBlur``, writes it with tifffile (2 threads; tiffpipe's codec options);
- ``libvips``: ``python -c`` a script that imports pyvips, sequential load, ``gaussblur``,
  tiled save (deflate and JPEG only, as in the sweep);
- ``before`` and ``before-no-sheet`` (with ``--before TREE``): ``tiffpipe run`` of another
  checkout (its ``pipeline`` first on ``sys.path``, through what its console script calls),
  on this venv.

Inputs are the sweep's (cached in ``--dir``). Each figure is the median wall (and CPU
seconds: the process's every thread and what it waited for) of ``--repeat`` runs; ``ratio``
is each tiffpipe command's median wall over the best peer's (< 1: faster). The
commands must have done the same work: every tiffpipe output is compared with the naive
script's (``checks``: pixel-identical); the outputs are removed after each case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

from compare import have_pyvips, log
from sweep import compare_outputs, make_input, page_shape, remove_outputs, write_manifest

TOOLS = ("tiffpipe", "tiffpipe-no-sheet", "naive", "libvips")
#: ``tiffpipe`` of another checkout (argv: the tree, then the command's arguments)
BEFORE = r"""
import sys
tree = sys.argv.pop(1)
sys.path.insert(0, tree)
from pipeline import cli
if hasattr(cli, "console"):  # that tree's console script
    cli.console()
sys.exit(cli.main())
"""
PEERS = ("naive", "libvips")

#: the naive peer: nothing of tiffpipe imported (argv: src, dst, sigma, tifffile kwargs)
NAIVE = r"""
import json, sys
import cv2, tifffile
src, dst, sigma, kwargs = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
if kwargs.get("subsampling"):
    kwargs["subsampling"] = tuple(kwargs["subsampling"])
with tifffile.TiffFile(src) as tf, tifffile.TiffWriter(dst, bigtiff=True) as tw:
    for page in tf.pages:
        out = cv2.GaussianBlur(page.asarray(maxworkers=2), (0, 0), sigma)
        tw.write(out, tile=(512, 512), photometric="rgb" if out.ndim == 3 else "minisblack",
                 metadata=None, maxworkers=2, **kwargs)
"""

#: the libvips peer (argv: src, dst, sigma, codec, quality), as bench/children.py's
LIBVIPS = r"""
import sys
import pyvips
src, dst, sigma, codec, quality = sys.argv[1:6]
page = pyvips.Image.new_from_file(src, access="sequential")
out = page.gaussblur(float(sigma), min_ampl=0.05, precision="integer")
options = {"tile": True, "tile_width": 512, "tile_height": 512, "bigtiff": True,
           "compression": codec}
if codec == "deflate":
    options.update(level=6, predictor="horizontal")
elif codec == "jpeg":
    options.update(Q=int(quality))
out.tiffsave(dst, **options)
"""


def writer_kwargs(codec: str, quality: int) -> dict[str, Any]:
    """tifffile's write options for tiffpipe's output options (the same codec settings)."""
    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.models import OutputOptions

    return OutputEncoder(OutputOptions(compression=codec, quality=quality), "uint8",
                         3).writer_kwargs()


def command(tool: str, src: str, dst: str, manifest: str, codec: str,
            args: argparse.Namespace) -> list[str]:
    extra = ["--no-contact-sheet"] if tool.endswith("-no-sheet") else []
    if tool.startswith("tiffpipe"):
        cli = os.path.join(os.path.dirname(sys.executable), "tiffpipe")
        return [cli, "run", *extra, manifest]
    if tool.startswith("before"):
        return [sys.executable, "-c", BEFORE, args.before, "run", *extra, manifest]
    if tool == "naive":
        return [sys.executable, "-c", NAIVE, src, dst, str(args.sigma),
                json.dumps(writer_kwargs(codec, args.quality))]
    return [sys.executable, "-c", LIBVIPS, src, dst, str(args.sigma), codec, str(args.quality)]


def timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds from the process's start to its exit (it must succeed), and its CPU seconds
    (user and system, of its every thread and of the processes it waited for)."""
    os.sync()  # no run pays for the writeback of an earlier one's output
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:2])} failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_case(size: str, codec: str, tools: list[str], args: argparse.Namespace
             ) -> dict[str, Any]:
    pages, side = page_shape(size, "single")
    src = make_input(args.dir, pages, side)
    out = os.path.join(args.dir, "out")
    os.makedirs(out, exist_ok=True)
    tools = [t for t in tools if not (t == "libvips" and codec == "zstd")]
    dst = {t: os.path.join(out, f"cmd-{t}-{codec}.tif") for t in tools}
    manifests = {t: write_manifest(args.dir, f"cmd-{t}-{codec}", [src], [dst[t]], codec,
                                   args.sigma, args.quality)
                 for t in tools if t.startswith(("tiffpipe", "before"))}
    walls: dict[str, list[float]] = {t: [] for t in tools}
    cpus: dict[str, list[float]] = {t: [] for t in tools}
    for rep in range(args.repeat):
        for tool in tools[rep % len(tools):] + tools[:rep % len(tools)]:
            if os.path.exists(dst[tool]):
                os.remove(dst[tool])
            wall, cpu = timed(command(tool, src, dst[tool], manifests.get(tool, ""), codec,
                                      args))
            walls[tool].append(wall)
            cpus[tool].append(cpu)
            log(f"{size:>5s} {codec:7s} [{rep + 1}/{args.repeat}] {tool:18s} "
                f"{wall:6.3f} s {cpu:6.3f} cpu-s")
    medians = {t: statistics.median(w) for t, w in walls.items()}
    best = min((t for t in PEERS if t in medians), key=medians.__getitem__, default=None)
    ours = [t for t in tools if t.startswith(("tiffpipe", "before"))]
    checks = ({t: compare_outputs([dst[t]], [dst["naive"]]) for t in ours}
              if "naive" in tools else {})
    remove_outputs(list(dst.values()))
    return {"size": size, "codec": codec, "megapixels": pages * side * side / 1e6,
            "walls": walls, "median_s": medians, "cpus": cpus,
            "median_cpu_s": {t: statistics.median(c) for t, c in cpus.items()},
            "best_peer": best,
            "ratio": {t: medians[t] / medians[best] for t in ours if best},
            "checks": checks}


def common_arguments(ap: argparse.ArgumentParser, tools: tuple[str, ...], before: str) -> None:
    """The options this script and bench/previews.py share (``before``: what --before adds)."""
    ap.add_argument("--tools", default=",".join(tools))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/tiffpipe-sweep")
    ap.add_argument("--before", help=f"another checkout of tiffpipe, run as {before}")
    ap.add_argument("--json", help="write every run's wall here")


def chosen_tools(args: argparse.Namespace, before: tuple[str, ...]) -> list[str]:
    """The tools of ``--tools``, with ``before`` when ``--before`` names a tree (made absolute),
    without libvips when pyvips does not import; ``--dir`` made."""
    os.makedirs(args.dir, exist_ok=True)
    tools = [t for t in args.tools.split(",") if t]
    if args.before:
        args.before = os.path.abspath(args.before)
        tools += [t for t in before if t not in tools]
    if "libvips" in tools and have_pyvips() is not None:
        log(f"libvips left out: {have_pyvips()}")
        tools.remove("libvips")
    return tools


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,0.001,0.01")
    ap.add_argument("--codecs", default="jpeg,deflate")
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--quality", type=int, default=90)
    common_arguments(ap, TOOLS, "before and before-no-sheet")
    args = ap.parse_args(argv)
    tools = chosen_tools(args, ("before", "before-no-sheet"))
    results = [run_case(size, codec, tools, args)
               for size in args.sizes.split(",") for codec in args.codecs.split(",")]
    print("| input | codec | " + " | ".join(f"{t} wall / CPU-s" for t in tools)
          + " | tiffpipe / best peer (wall) |")
    print("|---|---|" + "---|" * len(tools) + "---|")
    for r in results:
        name = "256 x 256" if r["size"] == "tiny" else f"{r['megapixels']:.3g} Mpx"
        cells = [f"{r['median_s'][t]:.3f} s / {r['median_cpu_s'][t]:.2f}" if t in r["median_s"]
                 else "-" for t in tools]
        ratios = ", ".join(f"{t}: **{v:.2f}x**" for t, v in r["ratio"].items())
        print(f"| {name} | {r['codec']} | " + " | ".join(cells)
              + f" | {ratios} ({r['best_peer']}) |")
    differing = [f"{r['size']} {r['codec']} {t}" for r in results
                 for t, c in r["checks"].items() if not c["identical"]]
    if differing:
        print(f"outputs not identical to the naive script's: {', '.join(differing)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
