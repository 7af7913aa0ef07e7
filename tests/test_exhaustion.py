"""``tiffpipe run`` at the machine's limits: too few open files for its workers, threads
that cannot start or die as they start, memory that runs out while a segment is decoded.
The command runs in a process of its own (``python -m pipeline run``), its limits set
there with ``resource.setrlimit``; where no limit makes a failure happen at a known moment
(a thread dying in its start, which memory pressure does about one run in ten), the child
injects it, as each test's docstring says. Every run is bounded: a run that hangs fails
the test with its timeout instead of hanging it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from address_space import LIMIT_ROOM

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(sys.platform != "linux", reason="rlimits, /proc")]

#: seconds a run here may take before it counts as hung (each takes a few)
HUNG_AFTER_S = 120
IDENTITY_OP = "def same(tile):\n    return tile\n"


def _manifest(folder: Path, sides: list[int], ops: list[list[dict[str, object]]] | None = None,
              tile: int = 512) -> Path:
    rng = np.random.default_rng(0)
    jobs = []
    for i, side in enumerate(sides):
        tifffile.imwrite(folder / f"in{i}.tif", rng.integers(0, 255, (side, side), np.uint8),
                         tile=(256, 256), compression="deflate")
        chain = (ops or [[{"op": "gaussian_blur", "sigma": 2}]])[i % len(ops or [0])]
        jobs.append({"input": f"in{i}.tif", "output": f"out/out{i}.tif", "ops": chain})
    manifest = folder / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": tile}, "jobs": jobs}))
    return manifest


def _run(manifest: Path, *args: str, inject: str = "", preexec=None
         ) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline run MANIFEST ARGS`` (``inject``: code run first in the command's
    process), bounded by :data:`HUNG_AFTER_S`."""
    code = inject + "\nimport runpy, sys\nsys.argv = ['tiffpipe', *sys.argv[1:]]\n" \
        "runpy.run_module('pipeline', run_name='__main__')\n"
    path = os.pathsep.join(p for p in (str(manifest.parent), os.environ.get("PYTHONPATH"))
                           if p)
    try:
        return subprocess.run(
            [sys.executable, "-c", code, "run", str(manifest), "--no-contact-sheet", *args],
            cwd=manifest.parent, capture_output=True, text=True, timeout=HUNG_AFTER_S,
            preexec_fn=preexec, env={**os.environ, "PYTHONPATH": path}, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the run hung (no end after {HUNG_AFTER_S} s): {exc.stderr!r}")


def _report(manifest: Path) -> dict[str, object]:
    return json.loads(manifest.with_suffix(".report.json").read_text())


def test_too_few_open_files_for_the_workers_runs_with_fewer(tmp_path: Path):
    """``ulimit -n 64`` with ``--workers 32``: the pool's pipes did not fit, and os.pipe's
    EMFILE stopped the whole run ("the embedded engine's interpreter stopped", no summary).
    The run goes on with the workers that fit, says so naming the limit, and every job
    runs (one runs user code: a worker process for certain)."""
    (tmp_path / "sameop.py").write_text(IDENTITY_OP)
    manifest = _manifest(tmp_path, [1024, 1536, 1024], ops=[
        [{"op": "gaussian_blur", "sigma": 2}], [{"op": "custom", "function": "sameop:same"}]])

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    done = _run(manifest, "--workers", "32", preexec=few_files)
    assert done.returncode == 0, done.stderr
    assert "ulimit -n 64" in done.stderr and "--workers" in done.stderr, done.stderr
    assert " of the 32 --workers (the engine's process and " in done.stderr, done.stderr
    assert "interpreter stopped" not in done.stderr
    report = _report(manifest)
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED"] * 3


#: what the injected code replaces: the function ``Thread.start`` starts a thread with, given
#: the thread's bound ``_bootstrap`` first (3.13: ``_start_joinable_thread(bootstrap,
#: handle=, daemon=)``; 3.11 and 3.12: ``_start_new_thread(bootstrap, ())``)
_WHICH_START = textwrap.dedent("""
    import threading as _threading
    _START = ("_start_joinable_thread" if hasattr(_threading, "_start_joinable_thread")
              else "_start_new_thread")
""")


#: the child's threads started by the code of a Map state (found on the starting thread's
#: stack: its nearest frame of the interpreter's module, past CheckedThread.start, is the
#: Map's) cannot start, as pthread_create fails out of memory ("can't start new thread")
_MAP_THREADS_DIE = _WHICH_START + textwrap.dedent("""
    import _thread, sys, threading

    _real = getattr(threading, _START)

    def _started_by_a_map():
        frame = sys._getframe(2)
        while frame is not None:
            if (frame.f_code.co_filename.endswith(("engine/direct.py", "engine\\\\direct.py"))
                    and frame.f_code.co_name != "start"):
                return frame.f_code.co_name in ("_map", "run_items")
            frame = frame.f_back
        return False

    def _start(function, *args, **kwargs):
        if _started_by_a_map():
            raise RuntimeError("can't start new thread")
        return _real(function, *args, **kwargs)

    setattr(threading, _START, _start)
""")


@pytest.mark.slow
def test_map_threads_that_cannot_start_do_not_stop_the_run(tmp_path: Path):
    """Out of memory, a thread cannot start ("can't start new thread"), and the Map's
    ThreadPoolExecutor stopped the run (a thread that died of MemoryError left what it
    had queued never run: the run waited for ever at 0 CPU). Memory pressure does this at
    no known thread, so the command's process injects it: no thread a Map state starts can
    start. The Map's items then run on the thread running the Map, with a warning, and the
    run ends, every job done."""
    manifest = _manifest(tmp_path, [1024, 1024, 1536, 512])
    done = _run(manifest, "--workers", "2", inject=_MAP_THREADS_DIE)
    assert done.returncode == 0, done.stderr
    assert "a Map ran its items on 1 thread(s)" in done.stderr
    assert [j["status"] for j in _report(manifest)["jobs"]] == ["SUCCEEDED"] * 4


#: the threads the code of a Map state starts (found as in :data:`_MAP_THREADS_DIE`) die as
#: they start, before they say they run (an allocation of their start-up fails): each one's
#: native id, which it sets before, raises MemoryError in the new thread
_MAP_THREADS_DIE_AS_THEY_START = _MAP_THREADS_DIE.replace(
    'raise RuntimeError("can\'t start new thread")',
    "function.__self__._set_native_id = _dies")
assert _MAP_THREADS_DIE_AS_THEY_START != _MAP_THREADS_DIE
_MAP_THREADS_DIE_AS_THEY_START += textwrap.dedent("""
    def _dies():
        raise MemoryError("(for this test)")
""")


@pytest.mark.slow
def test_map_threads_that_die_as_they_start_do_not_hang_the_run(tmp_path: Path):
    """A thread that dies before it says it runs left the thread that started it waiting
    for ever (``Thread.start`` waits for its word): the run hung at 0 CPU. The Map's
    threads that do are taken as threads that cannot start: the items run on the Map's own
    thread, with a warning, and the run ends, every job done."""
    manifest = _manifest(tmp_path, [1024, 1024, 1536, 512])
    done = _run(manifest, "--workers", "2", inject=_MAP_THREADS_DIE_AS_THEY_START)
    assert done.returncode == 0, done.stderr
    assert "a Map ran its items on 1 thread(s)" in done.stderr
    assert [j["status"] for j in _report(manifest)["jobs"]] == ["SUCCEEDED"] * 4


#: the first thread the engine's process starts to run a task in (its ThreadPoolExecutor,
#: ``tiffpipe-task``) cannot start, as pthread_create fails out of memory
_FIRST_TASK_THREAD_FAILS = _WHICH_START + textwrap.dedent("""
    import threading

    _real = getattr(threading, _START)
    _failed = []

    def _start(function, *args, **kwargs):
        thread = getattr(function, "__self__", None)
        if not _failed and getattr(thread, "name", "").startswith("tiffpipe-task"):
            _failed.append(thread.name)
            raise RuntimeError("can't start new thread")
        return _real(function, *args, **kwargs)

    setattr(threading, _START, _start)
""")


def test_a_task_thread_that_cannot_start_fails_its_job_only(tmp_path: Path):
    """``RuntimeError: can't start new thread`` while the engine started a task's thread
    stopped the whole run ("the embedded engine's interpreter stopped", exit 1, no
    summary). The task fails instead, named OutOfMemoryError with what to do, its job with
    it, and the other jobs run. (An RLIMIT_AS makes a thread's start fail at no known
    thread: the command's process injects it, at the first task thread it starts.)"""
    manifest = _manifest(tmp_path, [512, 512, 512])
    done = _run(manifest, "--workers", "1", inject=_FIRST_TASK_THREAD_FAILS)
    assert done.returncode == 1, done.stderr
    assert "interpreter stopped" not in done.stderr
    jobs = _report(manifest)["jobs"]
    assert sorted(j["status"] for j in jobs) == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
    [failed] = [j for j in jobs if j["status"] == "FAILED"]
    assert failed["error"]["type"] == "OutOfMemoryError"
    assert "can't start new thread" in failed["error"]["message"]
    assert "--workers" in failed["error"]["message"]
    assert "FAILED" in done.stdout  # the summary


def test_a_jobs_error_in_the_report_speaks_its_callers_words(tmp_path: Path):
    """The error of a job that ran out of memory says what to do in the words of what
    started the run: "run with fewer --workers" in ``tiffpipe run``'s report, "run with
    fewer workers" (its argument) in the report of a script's ``pipeline.run``, whose
    ``result.jobs`` and report file agree. Before, both named ``--workers``: the steps
    knew no other words (``run_local`` now passes its caller's down: CALLER_ENV)."""
    manifest = _manifest(tmp_path, [512])
    done = _run(manifest, "--workers", "1", inject=_FIRST_TASK_THREAD_FAILS)
    assert done.returncode == 1, done.stderr
    [job] = _report(manifest)["jobs"]
    assert job["error"]["type"] == "OutOfMemoryError", job
    assert "run with fewer --workers (fewer tasks at once)" in job["error"]["message"]
    script = _FIRST_TASK_THREAD_FAILS + textwrap.dedent("""
        import json, sys
        import pipeline

        if __name__ == "__main__":
            result = pipeline.run(sys.argv[1], workers=1, report=sys.argv[2])
            print(json.dumps(result.jobs))
    """)
    report = tmp_path / "py.report.json"
    done = subprocess.run([sys.executable, "-c", script, str(manifest), str(report)],
                          capture_output=True, text=True, timeout=HUNG_AFTER_S, check=False)
    assert done.returncode == 0, done.stderr
    [job] = json.loads(done.stdout)
    assert job["error"]["type"] == "OutOfMemoryError", job
    message = job["error"]["message"]
    assert "run with fewer workers (fewer tasks at once)" in message, message
    assert "--" not in message
    assert json.loads(report.read_text())["jobs"][0]["error"]["message"] == message


_LIMIT_AFTER_IMPORTS = textwrap.dedent("""
    import cv2, numpy, tifffile, imagecodecs  # noqa: F401 - (their mappings counted)
    import pipeline.cli, pipeline.steps.split, pipeline.steps.single  # noqa: F401
""") + LIMIT_ROOM


@pytest.mark.slow
def test_memory_that_runs_out_while_decoding_is_not_a_damaged_file(tmp_path: Path):
    """A page of one deflate strip of 400 MB decoded under a limit of address space that
    leaves 300 MB to the run (RLIMIT_AS, set in the command's process once its libraries
    are loaded, so the room is the same on every machine): the strip's decode fails with
    MemoryError, which was reported as ``CorruptTiffError: ... the file is damaged: copy it
    again``. It is OutOfMemoryError naming the page's segment and what to do."""
    side = 20000  # 400 Mpx, 1 byte each: zeros, so the file is small
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((side, side), np.uint8),
                     rowsperstrip=side, compression="deflate")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "big.tif", "output": "out/big.tif",
                                              "ops": [{"op": "invert"}]}]}))
    done = _run(manifest, "--workers", "1",
                inject=_LIMIT_AFTER_IMPORTS.format(room=300 * 2**20))
    assert done.returncode == 1, done.stderr
    [job] = _report(manifest)["jobs"]
    assert job["error"]["type"] == "OutOfMemoryError", job["error"]
    message = job["error"]["message"]
    assert "segment 0" in message and "page 0" in message and "--workers" in message
    assert "damaged" not in message


#: a user function that fails every tile with a long message (its jobs' errors make the
#: report far larger than any other file the run writes)
FAILING_OP = "def fails(tile):\n    raise ValueError('no: ' + 'x' * 900)\n"


@pytest.mark.slow
def test_a_report_that_cannot_be_written_still_says_what_the_jobs_did(tmp_path: Path):
    """The report's file system refusing it (here RLIMIT_FSIZE: no file of the run may pass
    8 KB, and only the report does, with its jobs' long errors; a full disk is the same
    failed write) said only "the run failed: StorageError", exit 1, no table, though the
    jobs had run and one had published its output. The summary is printed from the jobs'
    results, and one line says that only the report was lost, where (--report), and which
    outputs were published."""
    (tmp_path / "failop.py").write_text(FAILING_OP)
    sides = [64] * 9
    manifest = _manifest(tmp_path, sides, ops=[[{"op": "invert"}]] + [
        [{"op": "custom", "function": "failop:fails"}]] * 8)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    done = _run(manifest, "--workers", "2", preexec=small_files)
    assert done.returncode == 1, done.stderr
    assert not manifest.with_suffix(".report.json").exists()
    published = str(tmp_path / "out" / "out0.tif")
    assert (tmp_path / "out" / "out0.tif").exists()
    assert "SUCCEEDED" in done.stdout and "CustomOperationError" in done.stdout  # the table
    [line] = [x for x in done.stderr.splitlines() if x.startswith("tiffpipe:")]
    assert "report could not be written" in line and "--report" in line, line
    assert published in line and "1 succeeded, 8 failed" in line, line


def test_only_an_error_of_the_report_itself_is_said_to_lose_the_report():
    """A run that failed after every job had ended is told its report was lost (give
    --report another path) only when the error is the report's (it names the report's
    path); another error there (the engine's, a Report task out of memory) is said as
    it is, and no --report advice."""
    from pipeline.cli import _failed_line
    from pipeline.runner import RunResult

    jobs = {"jobs": [{"job": 0, "status": "SUCCEEDED", "output": "/o/a.tif"},
                     {"job": 1, "status": "FAILED", "output": "/o/b.tif",
                      "error": {"type": "CustomOperationError"}}],
            "succeeded": 1, "failed": 1, "skipped": 0}
    report = "/data/m.report.json"

    def result(error: str) -> RunResult:
        return RunResult("r1", "FAILED", None, report, "/w", 1.0, error, summary=jobs)

    lost = result(f"StorageError: {report}: cannot write: [Errno 28] No space left on device")
    assert lost.report_lost
    assert "the run report could not be written to /data/m.report.json (--report)" in \
        _failed_line(lost)
    engine = result("EngineError: no local function tiffpipe-local-mrge")
    assert not engine.report_lost
    line = _failed_line(engine)
    assert line.startswith("tiffpipe: the run failed after its 2 job(s) had ended: "
                           "EngineError: no local function tiffpipe-local-mrge; the outputs "
                           "of the 1 that succeeded are published (/o/a.tif)")
    assert "--report" not in line
    none = RunResult("r2", "FAILED", None, report, "/w", 1.0, f"StorageError: {report}",
                     summary={"jobs": [], "succeeded": 0, "failed": 0, "skipped": 0})
    assert not none.report_lost  # no job listed: nothing said of a lost report
