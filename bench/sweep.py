"""tiffpipe against its peers over a sweep of page sizes, interleaved in one run.

    .venv/bin/python bench/sweep.py [--sizes tiny,0.01,0.06,0.1,0.3,1,4]
                                    [--layouts single,multi,many]
                                    [--codecs deflate,zstd,jpeg] [--repeat 3] [--dir DIR]
                                    [--before TREE] [--json out.json] [--markdown out.md]

For every size (``tiny``: one 256 x 256 page; a number: gigapixels, e.g. 0.001 for 1 Mpx),
layout (``single``: one square page; ``multi``: three pages of a third each; ``many``: pages
of 512 x 512, one output tile each, as many as the size holds, as in a scanned archive;
``striped``: one square page in 16-row LZW strips, as scanners and GDAL write them;
``files``: as many, but each page a file of its own and a job of its own, one manifest of
them all; ``tiny`` is single only) and output codec, the same work runs with each tool, the
tools alternating within each repeat, every run in a fresh child process
(bench/children.py; the peers do a ``files`` case's files one after the other):

- tiffpipe: ``run_local`` with its defaults (fused, default work tile), output tiled 512;
- libvips: pyvips, sequential access, ``gaussblur`` (no zstd: the pyvips-binary wheel has none);
- naive: tifffile reads each page whole, ``cv2.GaussianBlur``, tifffile writes it (2 threads);
- before (with ``--before TREE``): tiffpipe from another checkout (e.g. ``git archive main``
  unpacked), run by that tree's own bench/children.py on this venv.

Inputs: RGB uint8 photo-like pages (bench/inputs.py), 512 px tiles, deflate level 1 (but
``striped``), cached in ``--dir``. Op: gaussian_blur sigma 2. Each figure is the median of
``--repeat`` runs (wall seconds measured in the child; CPU seconds of the child and all it
waited for; peak RSS of the largest process). ``--preload``: every library fully loaded
before the clock, as pyvips's import loads libvips and its codecs: tiffpipe's step modules
(a run imports each as it reaches its step) and imagecodecs' codecs (loaded on first use, in
the naive run's time too); a diagnosis of what a small run costs beyond loading code, not
what a command takes (bench/commands.py). ``ratio`` is tiffpipe's median wall over the best
peer's (libvips or naive; < 1: tiffpipe is faster); ``cpu_ratio`` its CPU seconds over the
least of the peers' (steadier than wall time on a shared machine). Outputs are checked:
tiffpipe's must be pixel-identical to the naive run's (and to the before tree's).
``--skip-naive-above GPX`` leaves out the naive run on big pages (it holds each page twice in
memory: 4 Gpx RGB is 24 GB).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

from compare import child, compare_tiffs, have_pyvips, log, machine
from inputs import side_for, write_photo_tiff, write_striped_tiff

SIZES = ("tiny", "0.001", "0.003", "0.01", "0.06", "0.1", "0.3", "1", "4")
CODECS = ("deflate", "zstd", "jpeg")
TOOLS = ("tiffpipe", "libvips", "naive")
PEERS = ("libvips", "naive")
MULTI_PAGES = 3
#: the side of a ``many`` layout's pages: one 512 px output tile each
MANY_SIDE = 512
LAYOUTS = ("single", "multi", "many", "files", "striped")
#: the rows of a ``striped`` layout's strips
STRIP_ROWS = 16
#: distinct inputs of a ``files`` case (its files are copies of these, in turn)
DISTINCT_FILES = 8


def page_shape(size: str, layout: str) -> tuple[int, int]:
    """(pages, side) of an input: ``tiny`` is one 256 px page; else ``size`` gigapixels in one
    square page, in :data:`MULTI_PAGES` pages, or (``many``, ``files``) in pages of
    :data:`MANY_SIDE`."""
    if size == "tiny":
        return 1, 256
    if layout in ("many", "files"):
        return max(1, round(float(size) * 1e9 / MANY_SIDE**2)), MANY_SIDE
    pages = MULTI_PAGES if layout == "multi" else 1
    return pages, side_for(float(size) * 1000 / pages)


def cases(sizes: list[str], layouts: list[str], codecs: list[str]) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        for layout in (["single"] if size == "tiny" else layouts):
            pages, side = page_shape(size, layout)
            for codec in codecs:
                out.append({"size": size, "layout": layout, "codec": codec, "pages": pages,
                            "side": side, "megapixels": pages * side * side / 1e6})
    return out


def make_input(folder: str, pages: int, side: int, striped: bool = False) -> str:
    kind = f"striped{STRIP_ROWS}-lzw-" if striped else ""
    path = os.path.join(folder, f"sweep-{kind}{side}x{side}x3x{pages}.tif")
    if not os.path.exists(path):
        log(f"writing {path}: {pages} page(s) {side}x{side}x3 uint8")
        if striped:
            write_striped_tiff(path, side, side, 3, rows=STRIP_ROWS)
        else:
            write_photo_tiff(path, side, side, 3, pages=pages)
    return path


def make_files(folder: str, count: int, side: int) -> list[str]:
    """A ``files`` case's inputs: ``count`` one-page files, copies in turn of
    :data:`DISTINCT_FILES` distinct ones (writing thousands of distinct pages takes long)."""
    sub = os.path.join(folder, f"files-{side}x{side}x3x{count}")
    paths = [os.path.join(sub, f"f{i:05d}.tif") for i in range(count)]
    if all(os.path.exists(p) for p in paths):
        return paths
    log(f"writing {sub}: {count} file(s) of one {side}x{side}x3 uint8 page")
    os.makedirs(sub, exist_ok=True)
    for i, path in enumerate(paths):
        if i < DISTINCT_FILES:
            write_photo_tiff(path, side, side, 3, seed=i)
        else:
            shutil.copyfile(paths[i % DISTINCT_FILES], path)
    return paths


def case_files(case: dict[str, Any], args: argparse.Namespace, tool: str
               ) -> tuple[list[str], list[str]]:
    """The inputs and outputs of a case for ``tool``: one of each, or a ``files`` case's."""
    out_dir = os.path.join(args.dir, "out")
    if case["layout"] != "files":
        return ([make_input(args.dir, case["pages"], case["side"],
                            case["layout"] == "striped")],
                [os.path.join(out_dir, f"{tool}-{case['codec']}.tif")])
    srcs = make_files(args.dir, case["pages"], case["side"])
    folder = os.path.join(out_dir, f"{tool}-{case['codec']}")
    return srcs, [os.path.join(folder, os.path.basename(p)) for p in srcs]


def write_manifest(folder: str, name: str, src: list[str], dst: list[str], codec: str,
                   sigma: float, quality: int) -> str:
    """A manifest with tiffpipe's defaults (fused, default work tile): one job, or one a file
    of a ``files`` case."""
    options: dict[str, Any] = {"compression": codec, "tile": 512}
    if codec == "jpeg":
        options["quality"] = quality
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"jobs": [{"input": s, "output": d, "output_options": options,
                             "ops": [{"op": "gaussian_blur", "sigma": sigma}]}
                            for s, d in zip(src, dst, strict=True)]}, f)
    return path


def remove_outputs(dst: list[str]) -> None:
    for path in dst:
        if os.path.exists(path):
            os.remove(path)


def run_tool(tool: str, case: dict[str, Any], src: list[str], dst: list[str],
             args: argparse.Namespace) -> dict[str, Any]:
    remove_outputs(dst)
    os.makedirs(os.path.dirname(dst[0]), exist_ok=True)
    if tool in ("tiffpipe", "before"):
        tag = f"{tool}-{case['codec']}"
        manifest = write_manifest(args.dir, tag, src, dst, case["codec"], args.sigma,
                                  args.quality)
        script = (os.path.join(args.before, "bench", "children.py") if tool == "before"
                  else None)
        r = child("tiffpipe", script=script, manifest=manifest, workers=args.workers,
                  **preload(args))
        if not r["ok"]:
            raise RuntimeError(f"{tool} failed on {case}: {r['error']}")
        return r
    if tool == "libvips":
        pages = 1 if case["layout"] == "files" else case["pages"]
        return child("libvips", src=src, dst=dst, pages=pages, sigma=args.sigma,
                     compression=case["codec"], quality=args.quality, min_ampl=0.05,
                     precision="integer")
    return child("naive", src=src, dst=dst, sigma=args.sigma, compression=case["codec"],
                 quality=args.quality, threads=args.workers, **preload(args))


def preload(args: argparse.Namespace) -> dict[str, bool]:
    """The children's ``preload`` argument: given only with ``--preload`` (a before tree's
    children.py may not know it)."""
    return {"preload": True} if args.preload else {}


def tools_for(case: dict[str, Any], args: argparse.Namespace) -> list[str]:
    tools = [t for t in args.tools if not (t == "libvips" and case["codec"] == "zstd")]
    if case["size"] != "tiny" and float(case["size"]) > args.skip_naive_above:
        tools = [t for t in tools if t != "naive"]
    return tools


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_mb": max(r["peak_mb"] for r in runs), "repeats": len(runs),
            "walls": [round(r["wall_s"], 3) for r in runs]}


def run_case(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    tools = tools_for(case, args)
    paths = {t: case_files(case, args, t) for t in tools}
    src = next(iter(paths.values()))[0] if paths else ""
    dsts = {t: dst for t, (_, dst) in paths.items()}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    failed: dict[str, str] = {}
    for rep in range(args.repeat):
        order = tools[rep % len(tools):] + tools[:rep % len(tools)]  # who goes first rotates
        for tool in order:
            try:
                r = run_tool(tool, case, src, dsts[tool], args)
            except RuntimeError as exc:  # e.g. the naive run out of memory: noted, go on
                log(f"{case['size']} {case['layout']} {case['codec']} {tool} failed: "
                    f"{str(exc)[-300:]}")
                failed.setdefault(tool, str(exc)[-500:])
                continue
            runs[tool].append({k: r[k] for k in ("wall_s", "cpu_s", "peak_mb")
                               if k in r} | {"startup_s": r.get("startup_s")})
            log(f"{case['size']:>5s} {case['layout']:6s} {case['codec']:7s} [{rep + 1}/"
                f"{args.repeat}] {tool:8s} {r['wall_s']:7.2f} s {r['cpu_s']:7.2f} cpu-s "
                f"{r['peak_mb']:6.0f} MB")
    result = {**case, "tools": {t: median_of(rs) for t, rs in runs.items() if rs},
              "failed": failed, "checks": {}}
    peers = [result["tools"][t]["wall_s"] for t in PEERS if t in result["tools"]]
    tp = result["tools"].get("tiffpipe")
    result["best_peer"] = min((t for t in PEERS if t in result["tools"]),
                              key=lambda t: result["tools"][t]["wall_s"], default=None)
    result["ratio"] = tp["wall_s"] / min(peers) if tp and peers else None
    peer_cpu = [result["tools"][t]["cpu_s"] for t in PEERS if t in result["tools"]]
    result["cpu_ratio"] = tp["cpu_s"] / min(peer_cpu) if tp and peer_cpu else None
    before = result["tools"].get("before")
    result["ratio_before"] = before["wall_s"] / min(peers) if before and peers else None
    if before and tp:
        result["speedup_vs_before"] = before["wall_s"] / tp["wall_s"]
    if not args.no_check and "tiffpipe" in dsts:
        for other in ("naive", "before"):
            if other in dsts and other not in failed:
                result["checks"][f"tiffpipe_vs_{other}"] = compare_outputs(dsts["tiffpipe"],
                                                                          dsts[other])
    for dst in dsts.values():
        remove_outputs(dst)
    return result


def compare_outputs(ours: list[str], theirs: list[str]) -> dict[str, Any]:
    """Whether two tools' outputs hold the same pixels, file by file; the largest
    difference."""
    identical, max_abs = True, 0
    for a, b in zip(ours, theirs, strict=True):
        if not os.path.exists(b):
            continue
        c = compare_tiffs(a, b, border=16)
        identical = identical and bool(c["identical"])
        max_abs = max(max_abs, int(c.get("max_abs") or 0))
    return {"identical": identical, "max_abs": max_abs, "files": len(ours)}


def table(results: list[dict[str, Any]], tools: list[str]) -> list[str]:
    """The sweep as Markdown rows: per case, each tool's median wall / CPU / peak, the ratio."""
    head = "| size | layout | Mpx | output | " + " | ".join(
        f"{t} wall s / CPU s / MB" for t in tools) + " | tiffpipe / best peer |"
    with_before = "before" in tools
    head += (" before / best peer |" if with_before else "") + " CPU: tiffpipe / least peer |"
    lines = [head, "|" + "---|" * (6 + len(tools) + with_before)]
    for r in results:
        size = "256 x 256" if r["size"] == "tiny" else f"{r['size']} Gpx"
        cells = []
        for t in tools:
            s = r["tools"].get(t)
            cells.append(f"{s['wall_s']:.2f} / {s['cpu_s']:.2f} / {s['peak_mb']:.0f}"
                         if s else "-")
        ratios = [r["ratio"]] + ([r["ratio_before"]] if with_before else [])
        cpu = f"{r['cpu_ratio']:.2f}" if r.get("cpu_ratio") else "-"
        lines.append(f"| {size} | {r['layout']} | {r['megapixels']:.1f} | {r['codec']} | "
                     + " | ".join(cells) + " | " + " | ".join(
                         f"{x:.2f} ({r['best_peer']})" if x else "-" for x in ratios)
                     + f" | {cpu} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,0.06,0.1,0.3,1",
                    help=f"comma-separated, of {','.join(SIZES)} (gigapixels)")
    ap.add_argument("--layouts", default="single,multi",
                    help=f"comma-separated, of {','.join(LAYOUTS)}")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--before", help="another tiffpipe checkout, run as the 'before' tool")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    ap.add_argument("--skip-naive-above", type=float, default=1.5,
                    help="gigapixels above which the naive run is left out (memory)")
    ap.add_argument("--no-check", action="store_true", help="no output comparisons")
    ap.add_argument("--preload", action="store_true",
                    help="load tiffpipe's step modules and imagecodecs' codecs before the "
                         "clock, as pyvips's import loads libvips (a diagnosis: what a run "
                         "costs beyond the loading)")
    ap.add_argument("--dir", default="/tmp/tiffpipe-sweep", help="inputs (kept) and outputs")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--markdown", help="write the table here")
    args = ap.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    if args.before:
        args.before = os.path.abspath(args.before)
        if "before" not in args.tools:  # named in --tools or not, it runs once a repeat
            args.tools.insert(1, "before")
    elif "before" in args.tools:
        ap.error("--tools before needs --before TREE (the checkout to run as before)")
    if "libvips" in args.tools and have_pyvips():
        log(f"skipping libvips: {have_pyvips()}")
        args.tools.remove("libvips")
    args.dir = os.path.abspath(args.dir)
    os.makedirs(os.path.join(args.dir, "out"), exist_ok=True)
    # as installed (pip compiles a package's bytecode): with PYTHONDONTWRITEBYTECODE set, a
    # checkout's modules would be compiled again on every run (~35 ms of a tiny page's run).
    # Forced: compileall skips a file whose bytecode has its source's mtime, but Python also
    # checks the size, so a file edited twice in one second (a git stash and pop) was
    # compiled again at every import (2-3 ms a run, seen here)
    for tree in (ROOT, args.before):
        if tree:
            compileall.compile_dir(os.path.join(tree, "pipeline"), quiet=1, force=True)
    doc: dict[str, Any] = {"format": "tiffpipe-sweep/1", "machine": machine(),
                           "settings": {k: v for k, v in vars(args).items()}, "cases": []}
    started = time.time()
    for case in cases(args.sizes.split(","), args.layouts.split(","), args.codecs.split(",")):
        doc["cases"].append(run_case(case, args))
        if args.json:  # after every case: a long sweep's numbers survive a later failure
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
    doc["seconds"] = time.time() - started
    doc["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    lines = table(doc["cases"], args.tools)
    print("\n".join(lines))
    for r in doc["cases"]:
        for name, c in r["checks"].items():
            if not c["identical"]:
                print(f"MISMATCH {r['size']} {r['layout']} {r['codec']} {name}: {c}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
