"""Per-invocation timings of a local run, measured inside the worker processes.

The benchmark's tiffpipe child calls :func:`install` before ``run_local``: the worker pool then
submits :func:`timed_invoke` instead of ``pipeline.engine.workers._invoke``. It runs the same
function and appends one JSON line per invocation (function, action, start, end, wall and CPU
seconds of the worker process, which counts all its threads) to a file per worker in the
folder named by ``TIFFPIPE_BENCH_TIMINGS``. Nothing in ``pipeline/`` changes; the extra cost
is two clock reads and one short write per invocation (the file stays open).

A ProcessJob (``process_job``: a small fused job, whole) also records its parts, each unit
as ``process_unit`` and its publishing as ``merge``, with ``part_of``: the
calibration costs units and merges from them, as from the tasks of larger jobs; the union
of the intervals (:func:`busy_seconds`) counts them once.

Spawned workers import this module by name: the benchmark puts ``bench/`` on ``sys.path``,
which ``multiprocessing`` passes on to spawned children.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

ENV = "TIFFPIPE_BENCH_TIMINGS"
#: comma-separated experiments applied in the workers (bench only; see :func:`_experiments`)
PATCH_ENV = "TIFFPIPE_BENCH_PATCH"
_patched = False


def timed_invoke(function: str, event: dict[str, Any], *args: Any, **kwargs: Any
                 ) -> tuple[bool, dict[str, Any], int, int]:
    from pipeline.engine import workers

    _experiments()
    if event.get("action") == "process_job":
        _time_parts()
    t0, c0 = time.time(), time.process_time()
    result = _original(workers)(function, event, *args, **kwargs)
    t1, c1 = time.time(), time.process_time()
    _append({"function": function, "action": event.get("action"), "t0": t0, "t1": t1,
             "wall_s": t1 - t0, "cpu_s": c1 - c0, "ok": result[0], "pid": os.getpid(),
             "unit": event.get("unit"), "batch": event.get("batch")})
    return result


#: this process's open record file (line-buffered: each record is one write, readable at
#: once), kept open across invocations: opening and closing it for each one cost more than
#: the record (a one-page job is three or four of them)
_record_file: dict[str, Any] = {}
_record_lock = threading.Lock()


def _append(record: dict[str, Any]) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    path, line = os.path.join(folder, f"{os.getpid()}.jsonl"), json.dumps(record) + "\n"
    with _record_lock:
        if _record_file.get("path") != path:  # a new run's folder (or the first record)
            if "file" in _record_file:
                _record_file["file"].close()
            _record_file.update(path=path, file=open(path, "a", buffering=1))  # noqa: SIM115
        _record_file["file"].write(line)


def _time_parts() -> None:
    """Record the unit and the publishing of each ProcessJob of this process as parts
    (once a process; a tree without ProcessJob never calls it)."""
    from pipeline.steps import single

    if getattr(single, "_bench_parts", False):
        return

    def timed(action: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.time(), time.process_time()
            ok = False
            try:
                out = fn(*args, **kwargs)
                ok = True
                return out
            finally:
                t1, c1 = time.time(), time.process_time()
                _append({"function": "process", "action": action, "t0": t0, "t1": t1,
                         "wall_s": t1 - t0, "cpu_s": c1 - c0, "ok": ok, "pid": os.getpid(),
                         "unit": getattr(args[0], "unit", 0) if action == "process_unit"
                         and args else None, "batch": None,
                         "part_of": "process_job"})
        return run

    single.process_unit = timed("process_unit", single.process_unit)
    single.publish = timed("merge", single.publish)
    single._bench_parts = True


def _experiments() -> None:
    """Proposed changes to pipeline/, tried in the workers without editing it, to measure
    their effect (``TIFFPIPE_BENCH_PATCH``, comma-separated):

    - ``zlibng``: inflate deflate input segments with zlib-ng instead of libdeflate;
    - ``lz4work``: work tiles compressed with LZ4 instead of zstd level 1;
    - ``unitsN``: split units of N megapixels instead of SPLIT_UNIT_PIXELS (1 gigapixel).
    """
    global _patched
    names = {n for n in os.environ.get(PATCH_ENV, "").split(",") if n}
    if _patched or not names:
        return
    _patched = True
    import imagecodecs
    import numpy as np
    from tifffile import TIFF

    if "zlibng" in names:
        TIFF.DECOMPRESSORS.get(8)  # loads the entry before it is replaced
        TIFF.DECOMPRESSORS._codecs[8] = imagecodecs.zlibng_decode
        TIFF.DECOMPRESSORS._codecs[32946] = imagecodecs.zlibng_decode
    for name in names:
        if name.startswith("units"):
            from pipeline.core import plan

            plan.SPLIT_UNIT_PIXELS = int(float(name[5:]) * 1e6)
    if "lz4work" in names:
        from pipeline.steps import evaluate, split

        def encode(tile: Any) -> bytes:
            tile = np.ascontiguousarray(tile)
            head = json.dumps({"dtype": tile.dtype.str, "shape": tile.shape}).encode()
            return len(head).to_bytes(4, "little") + head + imagecodecs.lz4_encode(
                tile.tobytes())

        def decode(data: bytes, name: str = "") -> Any:
            n = int.from_bytes(data[:4], "little")
            head = json.loads(data[4:4 + n])
            return np.frombuffer(imagecodecs.lz4_decode(data[4 + n:]),
                                 np.dtype(head["dtype"])).reshape(head["shape"])

        split.encode_work_tile = encode
        evaluate.decode_work_tile = decode


def _original(workers: Any) -> Any:
    fn = workers._invoke
    return getattr(fn, "__wrapped_original__", fn)


def warm() -> int:
    """A worker's warm-up: import what every handler needs (the ``warmpool`` experiment)."""
    import pipeline.handlers
    import pipeline.steps.merge
    import pipeline.steps.planning
    import pipeline.steps.process
    import pipeline.steps.split  # noqa: F401

    return os.getpid()


def install(folder: str) -> None:
    """Make the worker pool of this process submit :func:`timed_invoke` (records in folder).

    With ``warmpool`` in ``TIFFPIPE_BENCH_PATCH``, a new pool also starts every worker at
    once and has it import the steps while the engine sets moto up (a proposed change to
    ``WorkerPool``; the pool otherwise spawns a worker when a task first needs it)."""
    from pipeline.engine import workers

    if "warmpool" in os.environ.get(PATCH_ENV, "").split(",") and not getattr(
            workers.WorkerPool, "_bench_warm", False):
        original = workers.WorkerPool._new_pool

        def new_pool(self: Any) -> Any:
            pool = original(self)
            for _ in range(self.workers):
                pool.submit(warm)
            return pool

        workers.WorkerPool._new_pool = new_pool  # type: ignore[method-assign]
        workers.WorkerPool._bench_warm = True  # type: ignore[attr-defined]
    os.makedirs(folder, exist_ok=True)
    os.environ[ENV] = folder  # the pool hands the environment to its workers
    if workers._invoke is not timed_invoke:
        timed_invoke.__wrapped_original__ = workers._invoke  # type: ignore[attr-defined]
        workers._invoke = timed_invoke


def records(folder: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl"):
            with open(os.path.join(folder, name)) as f:
                out += [json.loads(line) for line in f if line.strip()]
    return sorted(out, key=lambda r: r["t0"])


def busy_seconds(recs: list[dict[str, Any]]) -> float:
    """Seconds during which at least one invocation was running (union of intervals)."""
    total, end = 0.0, float("-inf")
    for r in sorted(recs, key=lambda r: r["t0"]):
        start = max(r["t0"], end)
        if r["t1"] > start:
            total += r["t1"] - start
        end = max(end, r["t1"])
    return total
