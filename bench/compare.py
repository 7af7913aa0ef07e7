"""tiffpipe against libvips and a naive baseline, in one measurement run; writes the
calibration file of ``tiffpipe estimate``.

    .venv/bin/python bench/compare.py [--quick | --tiny] [--dir DIR] [--json out.json]
                                      [--calibration bench/calibration.json]

Generates its inputs (deterministic photo-like content, deflate level 1 tiles, cached in
``--dir``): a 3-page RGB uint8 TIFF of ``--rgb-gb`` GB of pixels (default 1) and a
single-page gray uint8 TIFF of ``--giant-mpx`` megapixels (default 4096). Then, interleaved
and repeated (``--repeat``), each in a fresh child process:

1. tiffpipe: ``run_local`` with ``--workers`` workers (default: the cores);
2. libvips: a streaming pipeline (sequential load per page, ``gaussblur``, tiled save);
3. naive: tifffile reads each page whole, ``cv2.GaussianBlur``, tifffile writes it;

with deflate and JPEG output (and zstd, which the pyvips-binary wheel lacks, for tiffpipe and
naive only). tiffpipe's jobs are fused (the default: each unit read and processed in one
invocation). The giant gray page is run once per tool (deflate) for peak memory. Outputs are
checked: tiffpipe against naive must be pixel-identical; against libvips (whose Gaussian
kernel and border rule differ from OpenCV's) the max and mean absolute differences are
reported, over the whole page and inside it. For the calibration, tiffpipe also runs once
with ``"fuse": false`` (deflate) on the RGB input and on a gray page: the split and process
steps of the jobs that cannot be fused (whole-page statistics); these runs are not compared.

Timing: wall seconds measured in the child; CPU seconds of the child and everything it
waited for (workers, libvips threads) from the parent's RUSAGE_CHILDREN. Peak memory: VmHWM
of the largest process (for tiffpipe: the engine and each worker). Speed ratios compare the
best wall time of each tool with the best libvips time of the same run (> 1: faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

import numpy as np
from inputs import side_for, write_photo_tiff

TARGETS = {"deflate_speed_vs_libvips": 1.0, "jpeg_speed_vs_libvips": 0.7,
           "giant_peak_mb": 600.0, "engine_ms_per_item": 10.0}
SIZES = {  # mode -> (rgb GB, giant megapixels, small megapixels, repeats)
    "full": (1.0, 4096.0, 256.0, 3),
    "quick": (0.1, 256.0, 16.0, 2),
    "tiny": (0.0025, 1.0, 0.0, 1),  # no small page: the ratio means nothing at this size
}
CALIBRATION_FORMAT = "tiffpipe-calibration/1"


_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# --- running children ---------------------------------------------------------------------


def child(name: str, script: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run ``children.NAME(**kwargs)`` in a fresh process; add its CPU seconds (the child and
    every process it waited for). The page cache's dirty pages are written out first, so
    that no run pays for the writeback of an earlier one's outputs (GBs after a giant page).
    ``script``: another checkout's children.py (default: this one's)."""
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, script or os.path.join(HERE, "children.py"), name,
                           json.dumps(kwargs)], capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def have_pyvips() -> str | None:
    """None if pyvips (with a libvips) imports, else why not."""
    proc = subprocess.run([sys.executable, "-c", "import pyvips; pyvips.version(0)"],
                          capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


# --- inputs and manifests -----------------------------------------------------------------


def make_inputs(folder: str, rgb_gb: float, giant_mpx: float, small_mpx: float
                ) -> dict[str, dict[str, Any]]:
    side = side_for(rgb_gb * 1e9 / 3 / 3 / 1e6)
    specs = {"rgb": (side, 3, 3), "giant": (side_for(giant_mpx), 1, 1)}
    if small_mpx:
        specs["small"] = (side_for(small_mpx), 1, 1)
    inputs = {}
    for name, (s, channels, pages) in specs.items():
        path = os.path.join(folder, f"{name}-{s}x{s}x{channels}x{pages}.tif")
        if not os.path.exists(path):
            log(f"writing {path}: {pages} page(s) {s}x{s}x{channels} uint8 (deflate level 1)")
            t0 = time.time()
            write_photo_tiff(path, s, s, channels, pages=pages)
            log(f"  {time.time() - t0:.1f} s, {os.path.getsize(path) / 1e6:.0f} MB")
        inputs[name] = {"path": path, "pages": pages, "height": s, "width": s,
                        "channels": channels, "megapixels": pages * s * s / 1e6,
                        "bytes": os.path.getsize(path)}
    return inputs


def write_manifest(folder: str, name: str, src: str, sigma: float, compression: str,
                   quality: int, fuse: bool = True) -> tuple[str, str]:
    """A one-job manifest (blur, 1024 px tiles, 512 px output tiles); ``fuse=False`` turns
    fused mode off (the job is then split to work tiles and processed in batches)."""
    out = os.path.join(folder, "out", f"tiffpipe-{name}.tif")
    options: dict[str, Any] = {"compression": compression, "tile": 512}
    if compression == "jpeg":
        options["quality"] = quality
    job: dict[str, Any] = {"input": src, "output": out, "tile": 1024,
                           "ops": [{"op": "gaussian_blur", "sigma": sigma}],
                           "output_options": options}
    if not fuse:
        job["fuse"] = False
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"jobs": [job]}, f)
    return path, out


def plan_geometry(manifest: str) -> dict[str, float]:
    """Core, haloed and output megapixels, tiles, units and batches of a manifest's plan."""
    from pipeline.adapters.tiff_read import read_infos
    from pipeline.core.plan import make_plan
    from pipeline.estimate import plan_geometry as geometry
    from pipeline.runner import validate

    totals: dict[str, float] = {}
    for i, spec in enumerate(validate(manifest)):
        plan, _ = make_plan(i, spec, read_infos(spec.input, spec.pages), "bench://", 0.0)
        for k, v in geometry(plan).items():
            totals[k] = totals.get(k, 0) + v
    return totals


# --- output agreement ---------------------------------------------------------------------


def compare_tiffs(a: str, b: str, border: int, band: int = 2048) -> dict[str, Any]:
    """Max and mean absolute difference of two TIFFs' pixels (every page, read in bands),
    over the whole pages and away from their borders (``border`` pixels)."""
    import tifffile

    from pipeline.adapters.tiff_read import read_window
    from pipeline.core.grid import Rect

    stats = {"max_abs": 0, "sum_abs": 0.0, "differing": 0, "values": 0,
             "inner_max_abs": 0, "inner_sum_abs": 0.0, "inner_values": 0}
    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        if len(ta.pages) != len(tb.pages):
            return {"identical": False, "why": f"{len(ta.pages)} vs {len(tb.pages)} pages"}
        for i in range(len(ta.pages)):
            pa, pb = ta.pages[i], tb.pages[i]
            if pa.shape != pb.shape:
                return {"identical": False, "why": f"page {i}: {pa.shape} vs {pb.shape}"}
            h, w = pa.shape[0], pa.shape[1]
            for y0 in range(0, h, band):
                rect = Rect(y0, 0, min(y0 + band, h), w)
                da = read_window(ta, pa, a, i, rect).astype(np.int16)
                db = read_window(tb, pb, b, i, rect).astype(np.int16)
                d = np.abs(da - db)
                stats["max_abs"] = max(stats["max_abs"], int(d.max()))
                stats["sum_abs"] += float(d.sum(dtype=np.int64))
                stats["differing"] += int(np.count_nonzero(d))
                stats["values"] += d.size
                ys = slice(max(border - y0, 0), max(min(h - border - y0, d.shape[0]), 0))
                inner = d[ys, border:w - border]
                if inner.size:
                    stats["inner_max_abs"] = max(stats["inner_max_abs"], int(inner.max()))
                    stats["inner_sum_abs"] += float(inner.sum(dtype=np.int64))
                    stats["inner_values"] += inner.size
    values = max(stats["values"], 1)
    return {"identical": stats["max_abs"] == 0, "max_abs": stats["max_abs"],
            "mean_abs": stats["sum_abs"] / values,
            "differing_fraction": stats["differing"] / values,
            "inner_max_abs": stats["inner_max_abs"],
            "inner_mean_abs": stats["inner_sum_abs"] / max(stats["inner_values"], 1),
            "border": border}


# --- the measurement ----------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], megapixels: float) -> dict[str, Any]:
    best = min(runs, key=lambda r: r["wall_s"])
    return {"wall_s": best["wall_s"], "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": best["cpu_s"], "peak_mb": max(r["peak_mb"] for r in runs),
            "mpx_per_s": megapixels / best["wall_s"], "repeats": len(runs),
            "output_bytes": best.get("output_bytes"), "runs": runs}


def run_throughput(args: argparse.Namespace, folder: str, rgb: dict[str, Any],
                   tools: list[str]) -> dict[str, Any]:
    out_dir = os.path.join(folder, "out")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    outputs: dict[tuple[str, str], str] = {}
    comps = ["deflate", "jpeg", "zstd"]
    for rep in range(args.repeat):
        for comp in comps:
            for tool in tools:
                if tool == "libvips" and comp == "zstd":
                    continue  # the pyvips-binary wheel has no zstd
                name = f"rgb-{comp}"
                dst = os.path.join(out_dir, f"{tool}-{name}.tif")
                if tool == "tiffpipe":
                    manifest, dst = write_manifest(folder, name, rgb["path"], args.sigma, comp,
                                                   args.quality)
                    r = child("tiffpipe", manifest=manifest, workers=args.workers)
                    if not r["ok"]:
                        raise RuntimeError(f"tiffpipe run failed: {r['error']}")
                elif tool == "libvips":
                    r = child("libvips", src=rgb["path"], dst=dst, pages=rgb["pages"],
                              sigma=args.sigma, compression=comp, quality=args.quality,
                              min_ampl=args.vips_min_ampl, precision=args.vips_precision)
                else:
                    r = child("naive", src=rgb["path"], dst=dst, sigma=args.sigma,
                              compression=comp, quality=args.quality, threads=args.workers)
                outputs[(tool, comp)] = dst
                results.setdefault(comp, {}).setdefault(tool, []).append(r)
                log(f"[{rep + 1}/{args.repeat}] {comp:7s} {tool:8s} {r['wall_s']:7.2f} s wall "
                    f"{r['cpu_s']:7.2f} s cpu {r['peak_mb']:6.0f} MB peak")
    table: dict[str, Any] = {}
    for comp, by_tool in results.items():
        table[comp] = {tool: summarize(runs, rgb["megapixels"]) for tool, runs in by_tool.items()}
        vips = table[comp].get("libvips")
        for tool, s in table[comp].items():
            s["speed_vs_libvips"] = vips["wall_s"] / s["wall_s"] if vips else None
    agreement: dict[str, Any] = {}
    border = args.halo_border
    for comp in comps:
        checks: dict[str, Any] = {}
        if ("tiffpipe", comp) in outputs and ("naive", comp) in outputs:
            checks["tiffpipe_vs_naive"] = compare_tiffs(outputs[("tiffpipe", comp)],
                                                        outputs[("naive", comp)], border)
        if ("tiffpipe", comp) in outputs and ("libvips", comp) in outputs:
            checks["tiffpipe_vs_libvips"] = compare_tiffs(outputs[("tiffpipe", comp)],
                                                          outputs[("libvips", comp)], border)
        agreement[comp] = checks
    return {"table": table, "agreement": agreement, "outputs": {f"{t}-{c}": p for (t, c), p
                                                                in outputs.items()}}


def _giant_run(tool: str, src: dict[str, Any], dst: str, **kwargs: Any) -> dict[str, Any]:
    """``tool`` on the giant page; a failure (the naive way may run out of memory on a big
    page) is logged and returned as ``{"error": ...}``, and the benchmark goes on."""
    try:
        r = child(tool, src=src["path"], dst=dst, **kwargs)
    except RuntimeError as exc:
        log(f"giant: {tool} failed: {str(exc)[-300:]}")
        return {"error": str(exc)[-500:]}
    r["mpx_per_s"] = src["megapixels"] / r["wall_s"]
    log(f"giant: {tool} {r['wall_s']:.1f} s, peak {r['peak_mb']:.0f} MB")
    return r


def run_memory(args: argparse.Namespace, folder: str, inputs: dict[str, Any],
               tools: list[str]) -> dict[str, Any]:
    """The giant gray page once per tool (deflate), and a small one for tiffpipe: peaks."""
    out: dict[str, Any] = {}
    out_dir = os.path.join(folder, "out")
    for label in ("small", "giant"):
        if label not in inputs:
            continue
        src = inputs[label]
        manifest, dst_tp = write_manifest(folder, f"gray-{label}", src["path"], args.sigma,
                                          "deflate", args.quality)
        entry: dict[str, Any] = {"megapixels": src["megapixels"], "compression": "deflate"}
        entry["tiffpipe"] = r = child("tiffpipe", manifest=manifest, workers=args.workers)
        if not r["ok"]:
            raise RuntimeError(f"tiffpipe run failed: {r['error']}")
        r["mpx_per_s"] = src["megapixels"] / r["wall_s"]
        log(f"{label}: {src['megapixels']:.0f} Mpx tiffpipe {r['wall_s']:.1f} s, peak "
            f"{r['peak_mb']:.0f} MB (engine {r['engine_peak_mb']:.0f}, workers "
            f"{[round(p) for p in r['worker_peaks_mb']]})")
        if label == "giant":
            if "naive" in tools and not args.skip_naive_giant:
                dst = os.path.join(out_dir, "naive-gray-giant.tif")
                entry["naive"] = _giant_run("naive", src, dst, sigma=args.sigma,
                                            compression="deflate", quality=args.quality,
                                            threads=args.workers)
                if "error" not in entry["naive"] and not args.no_check_giant:
                    entry["tiffpipe_vs_naive"] = compare_tiffs(dst_tp, dst, args.halo_border)
                if os.path.exists(dst):
                    os.remove(dst)
            if "libvips" in tools:
                dst = os.path.join(out_dir, "libvips-gray-giant.tif")
                entry["libvips"] = _giant_run("libvips", src, dst, pages=1, sigma=args.sigma,
                                              compression="deflate", quality=args.quality,
                                              min_ampl=args.vips_min_ampl,
                                              precision=args.vips_precision)
                if os.path.exists(dst):
                    os.remove(dst)
        entry["output_bytes"] = os.path.getsize(dst_tp)
        entry["geometry"] = plan_geometry(manifest)
        os.remove(dst_tp)
        out[label] = entry
    if "small" in out:
        out["ratio_giant_to_small"] = out["giant"]["tiffpipe"]["peak_mb"] / \
            out["small"]["tiffpipe"]["peak_mb"]
    return out


def run_unfused(args: argparse.Namespace, folder: str, inputs: dict[str, Any]
                ) -> dict[str, Any]:
    """tiffpipe once more with ``"fuse": false`` (deflate), on the RGB input and on a gray page
    (the small one, else the giant one): the split and process steps of the jobs that cannot
    be fused (whole-page statistics), for the calibration. Not compared with the others."""
    out: dict[str, Any] = {}
    gray = "small" if "small" in inputs else "giant"
    for label, key in (("rgb", "rgb"), ("gray", gray)):
        src = inputs[key]
        manifest, dst = write_manifest(folder, f"{label}-unfused", src["path"], args.sigma,
                                       "deflate", args.quality, fuse=False)
        r = child("tiffpipe", manifest=manifest, workers=args.workers)
        if not r["ok"]:
            raise RuntimeError(f"tiffpipe run (not fused) failed: {r['error']}")
        os.remove(dst)
        r.update(input=key, megapixels=src["megapixels"], kind=f"uint8x{src['channels']}",
                 mpx_per_s=src["megapixels"] / r["wall_s"], geometry=plan_geometry(manifest))
        log(f"not fused, {key} deflate: {r['wall_s']:.1f} s wall {r['cpu_s']:.1f} s cpu "
            f"(split {r['actions'].get('split', {}).get('wall_s', 0):.1f} s, process "
            f"{r['actions'].get('process', {}).get('wall_s', 0):.1f} s in invocations)")
        out[label] = r
    return out


def run_io_floor(args: argparse.Namespace, folder: str, rgb: dict[str, Any]) -> dict[str, Any]:
    """tifffile alone reading and writing the RGB file (zstd): the I/O floor (issue 2)."""
    dst = os.path.join(folder, "out", "tifffile-copy.tif")
    r = child("tifffile_copy", src=rgb["path"], dst=dst, compression="zstd",
              threads=args.workers)
    os.remove(dst)
    r["mpx_per_s"] = rgb["megapixels"] / r["wall_s"]
    return r


def run_engine_overhead(args: argparse.Namespace, few: int, many: int) -> dict[str, Any]:
    """bench/engine_overhead.py (the engine's own benchmark): a no-op chain over ``few`` and
    ``many`` batches of tiny tiles; the difference per Map item is the engine's overhead."""
    out = os.path.join(args.dir, "engine-overhead.json")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "engine_overhead.py"),
                           "--few", str(few), "--many", str(many), "--workers",
                           str(args.workers), "--json", out], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"engine_overhead.py failed: {proc.stderr[-3000:]}")
    with open(out) as f:
        o = json.load(f)["overhead"]
    per = o["per_iteration_ms"]
    log(f"engine overhead per Map item: net {per['net']:.1f} ms, raw {per['raw']:.1f} ms, "
        f"engine CPU {per['engine_cpu']:.1f} ms")
    return {"engine_ms_per_item": per["net"], "raw_ms_per_item": per["raw"],
            "engine_cpu_ms_per_item": per["engine_cpu"], "handler_ms_per_item": per["handler"],
            "items": [o["few"]["items"], o["many"]["items"]], "workers": o["workers"],
            "source": "bench/engine_overhead.py"}


# --- calibration --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import cv2
    import imagecodecs
    import tifffile

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    libs = {"python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "tifffile": tifffile.__version__,
            "imagecodecs": imagecodecs.__version__}
    try:
        import pyvips

        libs["pyvips"] = pyvips.__version__
        libs["libvips"] = ".".join(str(pyvips.version(i)) for i in range(3))
    except Exception as exc:  # noqa: BLE001 - optional
        libs["pyvips"] = f"not usable: {exc}"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "platform": platform.platform(), "machine": platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "libraries": libs}


def calibration(args: argparse.Namespace, mode: str, inputs: dict[str, Any],
                throughput: dict[str, Any], memory: dict[str, Any] | None,
                unfused: dict[str, Any], micro: dict[str, Any], imports: dict[str, float],
                mach: dict[str, Any]) -> dict[str, Any]:
    """Per-megapixel costs of each step, measured in this run, for ``tiffpipe estimate``:
    split and process from the runs that are not fused, process_unit from the fused ones (the
    throughput and memory runs), merge and the calls from all."""
    from pipeline.estimate import predicted_process_cpu

    rgb = inputs["rgb"]
    runs: list[tuple[str, str, dict[str, Any], dict[str, float], int]] = []
    for comp, by_tool in throughput["table"].items():
        geo = plan_geometry(os.path.join(args.dir, f"rgb-{comp}.json"))
        for r in by_tool["tiffpipe"]["runs"]:
            runs.append(("uint8x3", comp, r, geo, rgb["megapixels"]))
    if memory:
        for label in ("small", "giant"):
            if label not in memory:
                continue
            e = memory[label]
            runs.append(("uint8x1", "deflate", e["tiffpipe"], e["geometry"], e["megapixels"]))
    for r in unfused.values():
        runs.append((r["kind"], "deflate", r, r["geometry"], r["megapixels"]))

    split: dict[str, dict[str, list[float]]] = {}
    process_factor: dict[str, list[float]] = {}
    merge_points: list[tuple[float, float, float]] = []  # (output MB, output tiles, cpu s)
    per_call: dict[str, list[float]] = {}
    output_bytes: dict[str, dict[str, list[float]]] = {}
    work_bytes: dict[str, list[float]] = {}
    for kind, comp, r, geo, _mpx in runs:
        acts = r["actions"]
        if "split" in acts:
            s = split.setdefault(kind, {"cpu": [], "wall": [], "threads": []})
            s["cpu"].append(acts["split"]["cpu_s"] / geo["haloed_mpx"])
            s["wall"].append(acts["split"]["wall_s"] / geo["haloed_mpx"])
            s["threads"].append(acts["split"]["cpu_s"] / max(acts["split"]["wall_s"], 1e-9))
        if "process" in acts:
            ops = [{"op": "gaussian_blur", "sigma": args.sigma}]
            predicted = predicted_process_cpu(micro, kind, ops, comp, geo["haloed_mpx"],
                                              geo["output_mpx"])
            if predicted:
                process_factor.setdefault(kind, []).append(acts["process"]["cpu_s"] / predicted)
        if "merge" in acts:
            out_mb = r["output_bytes"] / 1e6
            merge_points.append((out_mb, geo["output_tiles"], acts["merge"]["cpu_s"]))
        for action in ("plan_run", "plan_job", "report"):
            if action in acts:
                per_call.setdefault(action, []).append(acts[action]["wall_s"] /
                                                       acts[action]["count"])
        if r.get("output_bytes"):
            output_bytes.setdefault(comp, {}).setdefault(kind, []).append(
                r["output_bytes"] / geo["output_mpx"])
        if r["work_bytes"].get("tiles"):
            work_bytes.setdefault(kind, []).append(r["work_bytes"]["tiles"] / geo["haloed_mpx"])
    med = statistics.median
    # merge: cpu = a * output MB + b * output tiles, least squares (non-negative)
    a_mb, b_tile = 0.0, 0.0
    if merge_points:
        m = np.array(merge_points)
        coef = np.linalg.lstsq(m[:, :2], m[:, 2], rcond=None)[0]
        a_mb, b_tile = (max(float(c), 0.0) for c in coef)
        if a_mb == 0.0 or b_tile == 0.0:  # degenerate fit: all on bytes
            a_mb, b_tile = float(m[:, 2].sum() / m[:, 0].sum()), 0.0
    encode = {comp: {kind: dict(v) for kind, v in kinds.items()}
              for comp, kinds in micro["encode"].items()}
    for comp, kinds in output_bytes.items():  # whole-file sizes win over the tile estimate
        for kind, values in kinds.items():
            encode.setdefault(comp, {}).setdefault(kind, {})["bytes_per_mpx"] = med(values)
            encode[comp][kind]["bytes_source"] = "pipeline output"
    work = {kind: dict(v) for kind, v in micro["work"].items()}
    for kind, values in work_bytes.items():
        work.setdefault(kind, {})["bytes_per_mpx"] = med(values)
        work[kind]["bytes_source"] = "pipeline work tiles"
    split_cal = {kind: {"cpu_s_per_mpx": med(v["cpu"]), "wall_s_per_mpx": med(v["wall"]),
                        "threads": med(v["threads"]),
                        "basis": "haloed megapixels read from a deflate input"}
                 for kind, v in split.items()}
    input_bytes = {"uint8x3": rgb["bytes"] / rgb["megapixels"],
                   "uint8x1": inputs["giant"]["bytes"] / inputs["giant"]["megapixels"]}
    sizes = {k: {kk: v[kk] for kk in ("pages", "height", "width", "channels")}
             for k, v in inputs.items()}
    return {
        "format": CALIBRATION_FORMAT,
        "measured_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": mode,
        "note": ("measured by bench/compare.py" + (" at quick sizes: rerun without --quick "
                                                   "on a quiet machine for the full numbers"
                                                   if mode != "full" else "")),
        "machine": mach,
        "bench": {"inputs": sizes, "input_compression": "deflate level 1, predictor",
                  "workers": args.workers, "tile": 1024, "output_tile": 512,
                  "op": {"op": "gaussian_blur", "sigma": args.sigma},
                  "content": "bench/inputs.py photo-like (fractal noise, edges, grain)"},
        "split": split_cal,
        "process": {"factor": {kind: med(v) for kind, v in process_factor.items()},
                    "basis": ("cpu = factor * (haloed Mpx * (work decode + ops) + output Mpx "
                              "* encode); the factor is measured / predicted in this run's "
                              "runs that are not fused")},
        "process_unit": unit_calibration(args, runs, split_cal, micro),
        "merge": {"cpu_s_per_output_mb": a_mb, "cpu_s_per_output_tile": b_tile},
        "calls": {action: {"wall_s": med(v)} for action, v in per_call.items()},
        "ops": micro["ops"],
        "encode": encode,
        "work": work,
        "input_bytes_per_mpx": input_bytes,
        "import_s": imports,
    }


def unit_calibration(args: argparse.Namespace,
                     runs: list[tuple[str, str, dict[str, Any], dict[str, float], int]],
                     split_cal: dict[str, Any], micro: dict[str, Any]) -> dict[str, Any]:
    """Fused units (``process_unit``), per kind: the input read per haloed Mpx (split's CPU
    less the work tile encode, both measured in this run) and the factor of the fused runs'
    measured CPU over ``haloed Mpx * (read + ops) + output Mpx * encode`` (ops and encode
    from the one-core timings), as for process."""
    from pipeline.estimate import predicted_unit_cpu

    ops = [{"op": "gaussian_blur", "sigma": args.sigma}]
    reads = {kind: max(v["cpu_s_per_mpx"] - micro["work"][kind]["encode_cpu_s_per_mpx"], 0.0)
             for kind, v in split_cal.items() if kind in micro["work"]}
    points: dict[str, dict[str, list[float]]] = {}
    for kind, comp, r, geo, _mpx in runs:
        act = r["actions"].get("process_unit")
        if not act or kind not in reads:
            continue
        predicted = predicted_unit_cpu(micro, kind, ops, comp, geo["haloed_mpx"],
                                       geo["output_mpx"], reads[kind])
        p = points.setdefault(kind, {"factor": [], "cpu": [], "threads": []})
        if predicted:
            p["factor"].append(act["cpu_s"] / predicted)
        p["cpu"].append(act["cpu_s"] / geo["haloed_mpx"])
        p["threads"].append(act["cpu_s"] / max(act["wall_s"], 1e-9))
    med = statistics.median
    return {kind: {"read_cpu_s_per_mpx": reads[kind],
                   "factor": med(p["factor"]) if p["factor"] else 1.0,
                   "cpu_s_per_mpx": med(p["cpu"]), "threads": med(p["threads"]),
                   "basis": ("cpu = factor * (haloed Mpx * (read + ops) + output Mpx * "
                             "encode); read = split cpu - work tile encode per haloed Mpx; "
                             "factor, cpu_s_per_mpx and threads measured in this run's fused "
                             "runs (the benchmark's op and codecs)")}
            for kind, p in points.items()}


# --- report -------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    table = results.get("throughput", {}).get("table", {})
    for comp, key in (("deflate", "deflate_speed_vs_libvips"), ("jpeg", "jpeg_speed_vs_libvips")):
        ratio = table.get(comp, {}).get("tiffpipe", {}).get("speed_vs_libvips")
        out.append({"target": f"tiffpipe speed vs libvips, {comp} output", "at_least": TARGETS[key],
                    "measured": ratio, "met": None if ratio is None else ratio >= TARGETS[key]})
    mem = results.get("memory")
    if mem:
        peak = mem["giant"]["tiffpipe"]["peak_mb"]
        out.append({"target": f"peak MB of any tiffpipe process, {mem['giant']['megapixels']:.0f}"
                              " Mpx gray page", "at_most": TARGETS["giant_peak_mb"],
                    "measured": peak, "met": peak <= TARGETS["giant_peak_mb"],
                    "beside": {"naive_peak_mb": mem["giant"].get("naive", {}).get("peak_mb"),
                               "libvips_peak_mb": mem["giant"].get("libvips", {}).get("peak_mb")}})
    eo = results.get("engine_overhead")
    if eo:
        ms = eo["engine_ms_per_item"]
        out.append({"target": "engine overhead per Map iteration (ms)",
                    "at_most": TARGETS["engine_ms_per_item"], "measured": ms,
                    "met": ms <= TARGETS["engine_ms_per_item"]})
    return out


def print_report(results: dict[str, Any]) -> None:
    def p(line: str = "") -> None:
        print(line)

    settings = results["settings"]
    rgb = results["inputs"]["rgb"]
    p(f"tiffpipe benchmark ({results['mode']} sizes), {results['machine']['cores']} cores, "
      f"{settings['workers']} workers, load average {results['machine']['load_average']}")
    p(f"op: gaussian_blur sigma {settings['sigma']} (libvips: gaussblur precision="
      f"{settings['vips_precision']} min_ampl={settings['vips_min_ampl']}); output tiles 512, "
      f"JPEG quality {settings['quality']}")
    thr = results.get("throughput")
    if thr:
        p()
        p(f"RGB: {rgb['pages']} pages {rgb['width']}x{rgb['height']}x3 uint8 = "
          f"{rgb['megapixels']:.0f} Mpx, {rgb['megapixels'] * 3 / 1000:.2f} GB raw "
          f"(best of {settings['repeat']}, interleaved)")
        p(f"{'output':8s} {'tool':9s} {'wall s':>8s} {'cpu s':>8s} {'peak MB':>8s} "
          f"{'Mpx/s':>8s} {'vs libvips':>10s}")
        for comp, by_tool in thr["table"].items():
            for tool, s in by_tool.items():
                ratio = f"{s['speed_vs_libvips']:.2f}x" if s["speed_vs_libvips"] else "-"
                p(f"{comp:8s} {tool:9s} {s['wall_s']:8.2f} {s['cpu_s']:8.2f} {s['peak_mb']:8.0f} "
                  f"{s['mpx_per_s']:8.1f} {ratio:>10s}")
        p()
        p("agreement (absolute differences of pixel values):")
        for comp, checks in thr["agreement"].items():
            for name, c in checks.items():
                if "max_abs" not in c:
                    p(f"  {comp:8s} {name:20s} MISMATCH: {c.get('why')}")
                    continue
                verdict = "identical" if c["identical"] else (
                    f"max {c['max_abs']} mean {c['mean_abs']:.3f}; inside a {c['border']} px "
                    f"border: max {c['inner_max_abs']} mean {c['inner_mean_abs']:.3f}")
                p(f"  {comp:8s} {name:20s} {verdict}")
    floor = results.get("tifffile_copy")
    if floor:
        p(f"tifffile read+write (zstd, no op): {floor['wall_s']:.2f} s, "
          f"{floor['mpx_per_s']:.1f} Mpx/s")
    mem = results.get("memory")
    if mem:
        g = mem["giant"]
        p()
        p(f"gray page {g['megapixels']:.0f} Mpx, deflate: peak MB of the largest process")
        for tool in ("tiffpipe", "libvips", "naive"):
            if tool in g and g[tool].get("error"):
                p(f"  {tool:9s} FAILED: {g[tool]['error'][-200:]}")
            elif tool in g:
                r = g[tool]
                extra = (f" (engine {r['engine_peak_mb']:.0f}, workers "
                         f"{', '.join(f'{x:.0f}' for x in r['worker_peaks_mb'])})"
                         if tool == "tiffpipe" else "")
                p(f"  {tool:9s} {r['peak_mb']:8.0f} MB  {r['wall_s']:8.1f} s  "
                  f"{r['mpx_per_s']:6.1f} Mpx/s{extra}")
        if "tiffpipe_vs_naive" in g:
            c = g["tiffpipe_vs_naive"]
            p(f"  tiffpipe vs naive: {'identical' if c['identical'] else c}")
        if "small" in mem:
            p(f"  tiffpipe peak, {g['megapixels']:.0f} Mpx vs {mem['small']['megapixels']:.0f} "
              f"Mpx page: {mem['ratio_giant_to_small']:.2f}x")
    unfused = results.get("unfused")
    if unfused:
        p()
        p('not fused ("fuse": false, deflate; for the calibration of split and process):')
        for r in unfused.values():
            acts = r["actions"]
            p(f"  {r['input']:6s} {r['megapixels']:8.0f} Mpx {r['wall_s']:8.2f} s wall "
              f"{r['cpu_s']:8.2f} s cpu {r['mpx_per_s']:6.1f} Mpx/s (split "
              f"{acts.get('split', {}).get('cpu_s', 0):.2f} s cpu, process "
              f"{acts.get('process', {}).get('cpu_s', 0):.2f} s cpu)")
    eo = results.get("engine_overhead")
    if eo:
        p()
        p(f"engine overhead per Map iteration (no-op chain, {eo['items'][0]} vs {eo['items'][1]}"
          f" items): net {eo['engine_ms_per_item']:.1f} ms (raw {eo['raw_ms_per_item']:.1f} ms "
          f"wall, engine CPU {eo['engine_cpu_ms_per_item']:.1f} ms, handlers "
          f"{eo['handler_ms_per_item']:.1f} ms)")
    p()
    p("targets:")
    for t in results["targets"]:
        bound, got = _target_cells(t)
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        p(f"  {t['target']}: {bound}, measured {got}: {verdict}")


def _target_cells(t: dict[str, Any]) -> tuple[str, str]:
    """A target's bound and measured value (with what stands beside it), as text."""
    bound = f">= {t['at_least']}" if "at_least" in t else f"<= {t['at_most']}"
    got = "n/a" if t["measured"] is None else f"{t['measured']:.2f}"
    beside = "".join(f"; {k.replace('_', ' ')} {v:.0f}"
                     for k, v in t.get("beside", {}).items() if v is not None)
    return bound, got + beside


def markdown(results: dict[str, Any]) -> str:
    """The README's tables (## Performance, Measured) from a results document."""
    lines: list[str] = []
    p = lines.append
    m, st = results["machine"], results["settings"]
    rgb = results["inputs"]["rgb"]
    when = results.get("measured_at") or results.get("calibration", {}).get("measured_at", "")
    p(f"{results['mode']} sizes, measured {when} on {m['cpu']} "
      f"({m['cores']} cores, {m['memory_gb']} GB; load average {m['load_average'][0]} before, "
      f"{m.get('load_average_after', ['?'])[0]} after), {st['workers']} workers, best of "
      f"{st['repeat']} interleaved runs. Input: {rgb['pages']} pages of {rgb['width']} x "
      f"{rgb['height']} RGB uint8 ({rgb['megapixels']:.0f} Mpx, "
      f"{rgb['megapixels'] * 3 / 1000:.2f} GB raw), gaussian_blur sigma {st['sigma']}.")
    p("")
    p("| output | tool | wall s | CPU s | peak MB | Mpx/s | speed vs libvips |")
    p("|---|---|---:|---:|---:|---:|---:|")
    for comp, by_tool in results["throughput"]["table"].items():
        for tool, s in by_tool.items():
            ratio = f"{s['speed_vs_libvips']:.2f}x" if s["speed_vs_libvips"] else "-"
            p(f"| {comp} | {tool} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | {s['peak_mb']:.0f} | "
              f"{s['mpx_per_s']:.1f} | {ratio} |")
    p("")
    p("| output | tiffpipe vs naive | tiffpipe vs libvips (max / mean abs; inside 16 px) |")
    p("|---|---|---|")
    for comp, checks in results["throughput"]["agreement"].items():
        naive = checks.get("tiffpipe_vs_naive", {})
        vips = checks.get("tiffpipe_vs_libvips")
        v = (f"{vips['max_abs']} / {vips['mean_abs']:.3f}; {vips['inner_max_abs']} / "
             f"{vips['inner_mean_abs']:.3f}" if vips else "- (no zstd in pyvips-binary)")
        p(f"| {comp} | {'identical' if naive.get('identical') else naive} | {v} |")
    mem = results.get("memory")
    if mem:
        g = mem["giant"]
        p("")
        p(f"| {g['megapixels']:.0f} Mpx gray page, deflate | peak MB (largest process) | wall s |")
        p("|---|---:|---:|")
        for tool in ("tiffpipe", "libvips", "naive"):
            if tool in g and g[tool].get("error"):
                p(f"| {tool} | failed | - |")
            elif tool in g:
                p(f"| {tool} | {g[tool]['peak_mb']:.0f} | {g[tool]['wall_s']:.1f} |")
    p("")
    p("| target | bound | measured | |")
    p("|---|---|---|---|")
    for t in results["targets"]:
        bound, got = _target_cells(t)
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        p(f"| {t['target']} | {bound} | {got} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (0.1 GB, 256 Mpx)")
    size.add_argument("--tiny", action="store_true", help="tiny sizes, for the tests")
    ap.add_argument("--rgb-gb", type=float, help="raw GB of the 3-page RGB input")
    ap.add_argument("--giant-mpx", type=float, help="megapixels of the giant gray page")
    ap.add_argument("--repeat", type=int, help="repeats of each throughput run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    ap.add_argument("--vips-min-ampl", type=float, default=0.05,
                    help="libvips gaussblur min_ampl (0.05: closest integer kernel to OpenCV's)")
    ap.add_argument("--vips-precision", default="integer")
    ap.add_argument("--halo-border", type=int, default=16,
                    help="border excluded from the inner difference (border rules differ)")
    ap.add_argument("--tools", default="tiffpipe,libvips,naive")
    ap.add_argument("--skip-memory", action="store_true", help="no giant/small gray runs")
    ap.add_argument("--skip-naive-giant", action="store_true",
                    help="no naive run on the giant page (it holds the page twice in memory)")
    ap.add_argument("--no-check-giant", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--dir", help="inputs and outputs (default: a temp folder; inputs are "
                                  "reused when present)")
    ap.add_argument("--keep-outputs", action="store_true")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--markdown", help="write the README's tables here")
    ap.add_argument("--calibration", help="write the calibration file here (default: "
                                          "bench/calibration.json, except with --tiny)")
    args = ap.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    rgb_gb, giant_mpx, small_mpx, repeat = SIZES[mode]
    args.rgb_gb = args.rgb_gb or rgb_gb
    args.giant_mpx = args.giant_mpx or giant_mpx
    args.repeat = args.repeat or repeat
    if args.calibration is None and mode != "tiny":
        args.calibration = os.path.join(HERE, "calibration.json")
    tools = [t for t in args.tools.split(",") if t]
    skipped: dict[str, str] = {}
    if "libvips" in tools:
        why = have_pyvips()
        if why:
            tools.remove("libvips")
            skipped["libvips"] = f"pyvips is not usable ({why}): pip install -e '.[bench]'"
            log(f"skipping libvips: {skipped['libvips']}")
    temp = args.dir is None
    args.dir = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="tiffpipe-bench-"))
    os.makedirs(os.path.join(args.dir, "out"), exist_ok=True)
    mach = machine()
    started = time.time()
    inputs = make_inputs(args.dir, args.rgb_gb, args.giant_mpx, small_mpx)
    results: dict[str, Any] = {
        "format": "tiffpipe-bench/1", "mode": mode, "machine": mach,
        "settings": {"workers": args.workers, "sigma": args.sigma, "quality": args.quality,
                     "repeat": args.repeat, "vips_min_ampl": args.vips_min_ampl,
                     "vips_precision": args.vips_precision, "tools": tools,
                     "output_tile": 512, "tile": 1024},
        "skipped": skipped, "inputs": inputs}
    try:
        results["throughput"] = run_throughput(args, args.dir, inputs["rgb"], tools)
        results["tifffile_copy"] = run_io_floor(args, args.dir, inputs["rgb"])
        if not args.skip_memory:
            results["memory"] = run_memory(args, args.dir, inputs, tools)
        results["unfused"] = run_unfused(args, args.dir, inputs)
        if not args.skip_overhead:
            results["engine_overhead"] = run_engine_overhead(
                args, *{"full": (8, 512), "quick": (8, 256), "tiny": (2, 6)}[mode])
        log("timing ops and codecs on one core")
        micro = child("micro", seconds=0.3 if mode != "tiny" else 0.01,
                      tile=1024 if mode != "tiny" else 256)
        imports = {step: child("import_seconds", module=f"pipeline.steps.{step}")["import_s"]
                   for step in ("split", "process", "merge")}
        log("done")
        results["calibration"] = calibration(args, mode, inputs, results["throughput"],
                                             results.get("memory"), results["unfused"], micro,
                                             imports, mach)
    finally:
        if not args.keep_outputs:
            shutil.rmtree(os.path.join(args.dir, "out"), ignore_errors=True)
        if temp:
            shutil.rmtree(args.dir, ignore_errors=True)
    results["seconds"] = time.time() - started
    results["measured_at"] = results["calibration"]["measured_at"]
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = targets(results)
    if args.calibration:
        with open(args.calibration, "w") as f:
            json.dump(results["calibration"], f, indent=1)
            f.write("\n")
        log(f"calibration written to {args.calibration}")
    if args.json:  # before the report, so a report bug never loses a long run's numbers
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print_report(results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
