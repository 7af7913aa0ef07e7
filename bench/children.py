"""What the benchmark runs in fresh child processes: one measured run each, printed as JSON.

``python bench/children.py NAME JSON-ARGS`` runs one of the functions below and prints its
result as the last line. Each is a separate process so that its peak memory (VmHWM, which
is not inherited across fork and exec) is its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]


def _peak_mb() -> float:
    from pipeline.engine.workers import peak_rss_kb

    return peak_rss_kb() / 1024


def _tree_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder)
               for f in files)


#: the modules a tiffpipe child reports imported within its run's time (``imported_in_run``)
_OWN_AND_CODECS = ("pipeline.", "imagecodecs.")


def _preload_codecs() -> None:
    """Every codec module of imagecodecs, which loads each on its first use (in a run's
    time): as pyvips's import loads libvips with all its codecs, before the clock."""
    import imagecodecs

    for name in dir(imagecodecs):
        getattr(imagecodecs, name, None)


def tiffpipe(manifest: str, workers: int, contact_sheet: bool = False,
             preload: bool = False) -> dict[str, Any]:
    """``run_local`` with per-invocation timings; work bytes measured, then removed. With
    ``contact_sheet``, the run writes one (as ``tiffpipe run`` does by default), in its
    time. ``preload``: tiffpipe's step modules (which a run imports as it reaches each
    step) and imagecodecs' codecs loaded before the clock too (sweep.py --preload)."""
    # the imaging libraries, imported before the clock starts as the peers' runs import
    # them (naive, below; libvips): the wall compares the work, not the imports
    import cv2  # noqa: F401
    import imagecodecs  # noqa: F401
    import tifffile  # noqa: F401
    import timed_worker

    from pipeline.core.constants import FUNCTIONS, KEEP_SEGMENTS_ENV
    from pipeline.handlers import preload as preload_steps
    from pipeline.runner import _remove_work, run_local

    if preload:
        _preload_codecs()
        for function in FUNCTIONS:
            preload_steps(function)
    timings = tempfile.mkdtemp(prefix="tiffpipe-timings-")
    timed_worker.install(timings)
    # the work is kept to be measured, but the run is a default one: a ProcessJob keeps a
    # small output's segment in memory (keep_work alone would have it written to the work
    # location, as `tiffpipe run --keep-work` does)
    os.environ.setdefault(KEEP_SEGMENTS_ENV, "0")
    loaded = set(sys.modules)
    t0 = time.time()
    result = run_local(manifest, workers, keep_work=True, contact_sheet=contact_sheet)
    run_s = time.time() - t0
    imported = sorted(m for m in set(sys.modules) - loaded if m.startswith(_OWN_AND_CODECS))
    work_bytes: dict[str, int] = {}
    jobs = os.path.join(result.work, "jobs")
    for job in sorted(os.listdir(jobs)) if os.path.isdir(jobs) else []:
        for part in os.listdir(os.path.join(jobs, job)):
            path = os.path.join(jobs, job, part)
            if os.path.isdir(path):  # tiles/, stats/, levels/
                work_bytes[part] = work_bytes.get(part, 0) + _tree_bytes(path)
            elif part.startswith("out-"):  # the output segments and their indexes
                work_bytes["out"] = work_bytes.get("out", 0) + os.path.getsize(path)
    t1 = time.time()
    _remove_work(result.work)  # what run_local does without keep_work: timed with the run
    cleanup_s = time.time() - t1
    recs = timed_worker.records(timings)
    shutil.rmtree(timings, ignore_errors=True)
    actions: dict[str, dict[str, float]] = {}
    for r in recs:
        a = actions.setdefault(r["action"], {"count": 0, "wall_s": 0.0, "cpu_s": 0.0,
                                             "max_wall_s": 0.0})
        a["count"] += 1
        a["wall_s"] += r["wall_s"]
        a["cpu_s"] += r["cpu_s"]
        a["max_wall_s"] = max(a["max_wall_s"], r["wall_s"])
    engine_peak = _peak_mb()
    worker_peaks = sorted(result.worker_peaks_mb.values())
    report = result.report or {}
    outputs = [j.get("output") for j in report.get("jobs", [])]
    return {"ok": result.ok, "error": result.error, "wall_s": run_s + cleanup_s,
            "cleanup_s": cleanup_s, "engine_peak_mb": engine_peak,
            "worker_peaks_mb": worker_peaks, "peak_mb": max([engine_peak, *worker_peaks]),
            "sum_peaks_mb": engine_peak + sum(worker_peaks), "actions": actions,
            "idle_s": run_s - timed_worker.busy_seconds(recs),
            # until the first invocation starts (engine and pool start) / after the last ends
            "startup_s": (recs[0]["t0"] - t0) if recs else None,
            "tail_s": (t0 + run_s - max(r["t1"] for r in recs)) if recs else None,
            "map_items": sum(a["count"] for k, a in actions.items()
                             if k in ("split", "process", "process_unit", "stats")),
            "work_bytes": work_bytes, "imported_in_run": imported,
            "output_bytes": sum(os.path.getsize(o) for o in outputs if o and os.path.exists(o))}


def _pairs(src: str | list[str], dst: str | list[str]) -> list[tuple[str, str]]:
    """(input, output) of each file a peer's run does: one, or a list (the sweep's ``files``
    layout: a manifest of many one-page files, done one after the other)."""
    if isinstance(src, str) and isinstance(dst, str):
        return [(src, dst)]
    if isinstance(src, str) or isinstance(dst, str) or len(src) != len(dst):
        raise ValueError("src and dst must both be a path, or lists of the same length")
    return list(zip(src, dst, strict=True))


def libvips(src: str | list[str], dst: str | list[str], pages: int, sigma: float,
            compression: str, quality: int, min_ampl: float, precision: str
            ) -> dict[str, Any]:
    """The same op as a libvips streaming pipeline: sequential load of each page, gaussblur,
    pages joined top to bottom and saved as a tiled multi-page TIFF (page_height). Lists of
    files: each in turn (``pages`` each)."""
    import pyvips

    t0 = time.time()
    for one_src, one_dst in _pairs(src, dst):
        _libvips_file(pyvips, one_src, one_dst, pages, sigma, compression, quality, min_ampl,
                      precision)
    return {"wall_s": time.time() - t0, "peak_mb": _peak_mb(),
            "threads": int(pyvips.vips_lib.vips_concurrency_get()),
            "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
            "output_bytes": sum(os.path.getsize(d) for _, d in _pairs(src, dst))}


def _libvips_file(pyvips: Any, src: str, dst: str, pages: int, sigma: float, compression: str,
                  quality: int, min_ampl: float, precision: str) -> None:
    blurred = []
    for i in range(pages):
        page = pyvips.Image.new_from_file(src, page=i, access="sequential")
        blurred.append(page.gaussblur(sigma, min_ampl=min_ampl, precision=precision))
    image = pyvips.Image.arrayjoin(blurred, across=1) if pages > 1 else blurred[0]
    options: dict[str, Any] = {"tile": True, "tile_width": 512, "tile_height": 512,
                               "bigtiff": True, "compression": compression}
    if compression == "deflate":
        options.update(level=6, predictor="horizontal")
    elif compression == "jpeg":
        options.update(Q=quality)
    if pages > 1:
        options["page_height"] = blurred[0].height
    image.tiffsave(dst, **options)


def naive(src: str | list[str], dst: str | list[str], sigma: float, compression: str,
          quality: int, threads: int, preload: bool = False) -> dict[str, Any]:
    """tifffile reads each page whole, OpenCV blurs it (all its threads), tifffile writes it
    with the output options tiffpipe uses (same codec, level, predictor, subsampling).
    Lists of files: each in turn. ``preload``: imagecodecs' codecs loaded before the
    clock."""
    import cv2
    import tifffile

    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.models import OutputOptions

    if preload:
        _preload_codecs()

    t0 = time.time()
    options = OutputOptions(compression=compression, quality=quality)
    for one_src, one_dst in _pairs(src, dst):
        with tifffile.TiffFile(one_src) as tf, \
                tifffile.TiffWriter(one_dst, bigtiff=True) as tw:
            for i in range(len(tf.pages)):
                page = tf.pages[i].asarray(maxworkers=threads)
                out = cv2.GaussianBlur(page, (0, 0), sigma)
                del page
                channels = out.shape[2] if out.ndim == 3 else 1
                kwargs = OutputEncoder(options, str(out.dtype), channels).writer_kwargs()
                tw.write(out, tile=(512, 512),
                         photometric="rgb" if channels >= 3 else "minisblack",
                         metadata=None, maxworkers=threads, **kwargs)
                del out
    return {"wall_s": time.time() - t0, "peak_mb": _peak_mb(),
            "output_bytes": sum(os.path.getsize(d) for _, d in _pairs(src, dst))}


def tifffile_copy(src: str, dst: str, compression: str, threads: int) -> dict[str, Any]:
    """Reading and writing the file with tifffile alone (no op): the I/O floor."""
    import tifffile

    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.models import OutputOptions

    t0 = time.time()
    with tifffile.TiffFile(src) as tf, tifffile.TiffWriter(dst, bigtiff=True) as tw:
        for i in range(len(tf.pages)):
            page = tf.pages[i].asarray(maxworkers=threads)
            channels = page.shape[2] if page.ndim == 3 else 1
            kwargs = OutputEncoder(OutputOptions(compression=compression), str(page.dtype),
                                   channels).writer_kwargs()
            tw.write(page, tile=(512, 512), photometric="rgb" if channels >= 3 else "minisblack",
                     metadata=None, maxworkers=threads, **kwargs)
    return {"wall_s": time.time() - t0, "peak_mb": _peak_mb()}


def micro(seconds: float, tile: int = 1024) -> dict[str, Any]:
    """Per-op and per-codec costs on one core (bench/microbench.py)."""
    import microbench

    return microbench.measure(seconds, tile)


def import_seconds(module: str) -> dict[str, Any]:
    """How long a fresh worker takes to import a step (the local part of a cold start)."""
    t0 = time.time()
    __import__(module)
    return {"module": module, "import_s": time.time() - t0}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = globals()[name](**args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
