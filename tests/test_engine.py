"""The embedded engine (pipeline/engine/local.py) and its patches of moto's interpreter.

While ``LocalEngine.run`` lasts, moto's Step Functions interpreter is patched so that a
Distributed Map does not hold per-item state (threads, frames, child history events, a
registry of every thread) and Lambda tasks share one boto3 client. These tests check that
a real manifest still runs right, that moto is exactly as before once ``run`` returns, that
the patches are in effect during a run, and that what the engine holds during a Map of many
items is bounded: by object counts, never by RSS or time. The patches that make a run start
sooner have their own tests in test_engine_startup.py.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
import tifffile

from pipeline.engine import moto_patches, moto_run
from pipeline.engine.local import LocalEngine
from pipeline.engine.workers import WorkerPool, worker_tile_threads
from pipeline.engine.workers import _processes as workers_of
from pipeline.runner import run_local
from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(180)

SIGMA = 1.5
MAP_ITERATION = moto_patches.MAP_ITERATION


def _moto() -> dict[str, Any]:
    """What the patches touch in moto, as plain references."""
    import importlib

    import botocore.session
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.stepfunctions.parser import utils
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import boto_client
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    dic = importlib.import_module(f"{MAP_ITERATION}.distributed_iteration_component")
    dipw = importlib.import_module(
        f"{MAP_ITERATION}.itemprocessor.distributed_item_processor_worker")
    return {"utils": utils, "boto_client": boto_client, "dic": dic,
            "worker": dipw.DistributedItemProcessorWorker,
            "component": dic.DistributedIterationComponent,
            "lambda_backend": LambdaSimpleBackend, "botocore_session": botocore.session,
            "parser": AmazonStateLanguageParser, "backend": StepFunctionsParserBackend,
            "comm": BaseExecutionWorkerCommunication}


def _snapshot() -> dict[str, Any]:
    """Every reference a patch replaces, including the names other moto modules imported."""
    m = _moto()
    snap: dict[str, Any] = {
        "TMP_THREADS": m["utils"].TMP_THREADS,
        "boto_client_for": m["boto_client"].boto_client_for,
        "EventManager": m["dic"].EventManager,
        "worker._eval_pool": vars(m["worker"]).get("_eval_pool"),
        "component own _launch_worker": "_launch_worker" in vars(m["component"]),
        "component._launch_worker": m["component"]._launch_worker,
        "LambdaSimpleBackend.invoke": m["lambda_backend"].invoke,
        "botocore create_loader": m["botocore_session"].create_loader,
        "parse": vars(m["parser"])["parse"],
        "_validate_definition": vars(m["backend"])["_validate_definition"],
        "terminated": m["comm"].terminated,
    }
    for name, module in sorted(sys.modules.items()):
        if name.startswith("moto.stepfunctions.") and module is not None:
            for attr in ("TMP_THREADS", "boto_client_for", "EventManager"):
                if attr in vars(module):
                    snap[f"{name}.{attr}"] = vars(module)[attr]
    return snap


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    changed = [k for k in before if after.get(k) is not before[k]]
    assert not changed, f"moto not restored: {changed}"


def _zeros_job(folder: Path, batches: int) -> Path:
    """A zeros gray TIFF of ``batches`` * 8 tiles of 64 px, and a manifest with no ops."""
    tiles = batches * 8
    cols = 64 if tiles % 64 == 0 else 8
    zero = np.zeros((64, 64), np.uint8)
    with tifffile.TiffWriter(folder / "zeros.tif") as tw:
        tw.write((zero for _ in range(tiles)), shape=(tiles // cols * 64, cols * 64),
                 dtype="uint8", tile=(64, 64), compression="zlib", photometric="minisblack",
                 metadata=None)
    manifest = folder / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": "zeros.tif", "output": "out.tif", "ops": [], "tile": 64,
        "output_options": {"tile": 64}, "fuse": False}]}))  # a Process map of many batches
    return manifest


@pytest.fixture(scope="module")
def moto_before() -> dict[str, Any]:
    return _snapshot()


# --- a real manifest, end to end ----------------------------------------------------------


def test_runs_a_manifest_end_to_end_and_restores_moto(tmp_path: Path,
                                                      moto_before: dict[str, Any],
                                                      caplog: pytest.LogCaptureFixture):
    write_sample(str(tmp_path / "rgb.tif"), [SamplePage(300, 420, 3), SamplePage(200, 150, 3)],
                 tile=128)
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [{
        "input": "rgb.tif", "output": "out.tif", "tile": 64, "output_options": {"tile": 64},
        "ops": [{"op": "gaussian_blur", "sigma": SIGMA}]}]}))
    during: list[bool] = []

    def listener(function: str, event: dict[str, Any], ok: bool, payload: dict[str, Any]):
        from moto.stepfunctions.parser import utils

        during.append(isinstance(utils.TMP_THREADS, moto_patches.ThreadsNotKept))

    with caplog.at_level(logging.WARNING, logger=moto_patches.__name__):
        result = run_local(str(tmp_path / "m.json"), 2, listener=listener, interpreter="moto")
    assert result.ok, result.error
    with tifffile.TiffFile(tmp_path / "rgb.tif") as src, \
            tifffile.TiffFile(tmp_path / "out.tif") as out:
        assert len(out.pages) == 2
        for i in range(2):
            page = src.pages[i].asarray()
            assert np.array_equal(out.pages[i].asarray(), cv2.GaussianBlur(page, (0, 0), SIGMA))
    assert during and all(during), "the patches were not in effect during the run"
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    _assert_same(moto_before, _snapshot())


def test_a_changed_moto_falls_back_to_its_own_code(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture):
    """A patch whose target changed is skipped with a warning; the others still apply, and
    all is put back."""
    m = _moto()

    def boto_client_for(region, service):  # another signature than in moto 5.2.5
        raise AssertionError("not called")

    monkeypatch.setattr(m["boto_client"], "boto_client_for", boto_client_for)
    monkeypatch.delattr(m["worker"], "_eval_pool")  # as if moto renamed it
    before = _snapshot()
    with (caplog.at_level(logging.WARNING, logger=moto_patches.__name__),
          moto_patches.lean_interpreter(4) as skipped):
        assert skipped == ["shared boto3 clients", "bounded map worker threads"]
        assert m["boto_client"].boto_client_for is boto_client_for
        assert "_launch_worker" not in vars(m["component"])
        assert isinstance(m["utils"].TMP_THREADS, moto_patches.ThreadsNotKept)
        assert m["dic"].EventManager is not before["EventManager"]
    assert len(caplog.records) == 2
    assert all("running without" in r.getMessage() for r in caplog.records)
    _assert_same(before, _snapshot())


# --- memory: what the engine holds during a Map of many items ------------------------------


def test_what_a_large_map_holds_is_bounded(tmp_path: Path, moto_before: dict[str, Any]):
    """128 process batches with 4 map threads: the threads, interpreter frames and history
    events alive mid-map stay within what the thread bound allows (as shipped, moto holds ~3
    threads, a frame and ~5 events per item), the map run's item counts are still reported,
    and no thread is registered for good."""
    from moto.stepfunctions.parser import utils
    from moto.stepfunctions.parser.asl.eval.environment import Environment
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager

    batches, map_threads = 128, 4
    manifest = _zeros_job(tmp_path, batches)
    registered = len(utils.TMP_THREADS)
    seen: dict[str, Any] = {"threads": 0, "censuses": [], "map_runs": None}
    lock = threading.Lock()

    def census() -> dict[str, int]:
        envs = managers = events = 0
        for o in gc.get_objects():
            if isinstance(o, Environment):
                envs += 1
            elif isinstance(o, EventManager):
                managers += 1
                events += len(o._history_event_list)
        return {"environments": envs, "event_managers": managers, "events": events}

    def listener(function: str, event: dict[str, Any], ok: bool, payload: dict[str, Any]):
        with lock:
            seen["threads"] = max(seen["threads"], threading.active_count())
            if event.get("action") == "process" and event["batch"] in (40, 100):
                seen["censuses"].append(census())
            if event.get("action") == "merge":  # the Process map run has ended
                sfn = boto3.client("stepfunctions", region_name=moto_run.REGION)
                machine = sfn.list_state_machines()["stateMachines"][0]["stateMachineArn"]
                executions = sfn.list_executions(stateMachineArn=machine)["executions"]
                runs = sfn.list_map_runs(executionArn=executions[0]["executionArn"])
                seen["executions"] = len(executions)
                seen["map_runs"] = {r["mapRunArn"].rsplit(":", 1)[0].rsplit("/", 1)[-1]:
                                    sfn.describe_map_run(mapRunArn=r["mapRunArn"])["itemCounts"]
                                    for r in runs["mapRuns"]}

    gc.collect()
    before = census()  # what earlier tests in this process left alive is not this run's
    with LocalEngine(2, listener=listener, map_threads=map_threads, interpreter="moto") as engine:
        run = {"manifest": str(manifest), "work": str(tmp_path / "work"), "run_id": "t",
               "report": str(tmp_path / "report.json")}
        execution = engine.run(run, name="many-items")
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    assert json.loads((tmp_path / "report.json").read_text())["failed"] == 0

    # moto keeps no child executions, and the map runs' item counts are all there: the job's
    # own maps have ended, the Jobs map (one item: this job) runs on
    assert seen["executions"] == 1
    jobs = seen["map_runs"].pop("Jobs")
    assert jobs["total"] == 1 and jobs["running"] == 1, jobs
    totals = sorted(c["total"] for c in seen["map_runs"].values())
    assert totals[-1] == batches
    assert all(c["succeeded"] == c["total"] for c in seen["map_runs"].values())
    # bounded by map_threads, not by the 128 items (as shipped: ~3 threads per item in flight)
    assert seen["threads"] <= 3 * map_threads + 16, seen["threads"]
    assert len(seen["censuses"]) == 2
    for c in seen["censuses"]:
        c = {k: v - before[k] for k, v in c.items()}
        assert c["environments"] <= 4 * map_threads + 8, c
        assert c["event_managers"] <= 4 * map_threads + 8, c
        assert c["events"] <= 60, c  # the parent's history only: no child events are kept
    assert len(utils.TMP_THREADS) == registered
    _assert_same(moto_before, _snapshot())


# --- tile threads of the workers ------------------------------------------------------------


@pytest.mark.parametrize("workers,cores,threads", [
    (2, 2, 2), (1, 2, 2), (4, 2, 1), (16, 16, 2), (4, 16, 8), (1, 16, 16), (3, 1, 1), (3, 8, 5),
])
def test_worker_tile_threads_are_twice_the_share_at_most_every_core(workers, cores, threads):
    assert worker_tile_threads(workers, cores) == threads


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity (Linux)")
def test_the_cores_counted_are_the_ones_this_process_may_use():
    """A process limited to one CPU (taskset, a container's cpuset): its workers get one tile
    thread each and `tiffpipe run` one task at once by default, whatever the machine's
    count (os.cpu_count() counts the machine's)."""
    script = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from pipeline.cli import _parser\n"
        "from pipeline.engine.workers import worker_tile_threads\n"
        "from pipeline.steps.common import usable_cores\n"
        "assert _parser().parse_args(['run', 'm.json']).workers is None  # resolved in cmd_run\n"
        "print(usable_cores(), worker_tile_threads(1), os.cpu_count())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], check=False)
    assert proc.returncode == 0, proc.stderr
    usable, threads, machine = map(int, proc.stdout.split())
    assert (usable, threads) == (1, 1), (usable, threads, machine)


@contextmanager
def _workers() -> Iterator[Any]:
    """A started WorkerPool of 2: its ProcessPoolExecutor, to run functions in its workers."""
    pool = WorkerPool(2)
    try:
        yield pool._pool
    finally:
        pool.close()


def test_every_worker_process_starts_as_the_pool_starts(monkeypatch: pytest.MonkeyPatch):
    """A spawning ProcessPoolExecutor starts a process at a submit only when no worker is
    idle: a worker whose warm-up ended before the last was submitted left a process to start
    at a later task, after ``__file__`` was restored (code fed on stdin: that process died).
    Every process starts with the pool, even when the pool finds workers idle (as if the
    first ones had ended their warm-up already)."""
    from concurrent.futures import process

    made = process.ProcessPoolExecutor.__init__

    def idle_at_once(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self._idle_worker_semaphore = threading.Semaphore(2)  # two workers seen idle

    monkeypatch.setattr(process.ProcessPoolExecutor, "__init__", idle_at_once)
    pool = WorkerPool(3)
    try:
        assert len(workers_of(pool._pool)) == 3
    finally:
        pool.close()


@pytest.mark.parametrize("cause", ["TooManyOpenFilesError", "OutOfMemoryError"])
def test_a_pool_no_worker_could_start_fails_the_tasks_that_need_one_with_why(monkeypatch,
                                                                            cause):
    """No worker can start (the open files leave room for none; starting one runs out of
    memory): :attr:`WorkerPool.failed` is the error of the cause, the warning its message,
    and a task that needs a worker fails with it."""
    from pipeline.engine import workers

    if cause == "TooManyOpenFilesError":
        monkeypatch.setattr(workers, "_workers_the_files_allow", lambda: 0)
    else:
        def out_of_memory(self, count):
            raise workers._StartFailed(0, "out of memory (MemoryError: )")

        monkeypatch.setattr(WorkerPool, "_started_pool", out_of_memory)
    pool = WorkerPool(2, lazy=True)
    ok, payload = pool.invoke("process", {"action": "x"})
    assert type(pool.failed).__name__ == cause
    assert str(pool.failed).startswith("the run goes on without worker processes")
    assert not ok and payload["errorType"] == cause
    assert payload["errorMessage"].endswith(f"none could start: {pool.failed}")
    assert not pool.started



@pytest.mark.parametrize("caller, fewer", [("python", "fewer workers"), ("", "fewer --workers")])
def test_a_pool_that_could_not_start_says_what_to_do_in_the_callers_words(monkeypatch, caller,
                                                                          fewer):
    """Starting the workers ran out of memory, its error naming a path with an option in it
    (an interpreter in a folder ``env --work 2``): the warning, and the error of a task that
    needs a worker, say what to do in the words of what started the run, and name the path
    as it is. Before, the whole warning was said in them, the error's text too."""
    from pipeline.core.constants import CALLER_ENV
    from pipeline.engine import workers

    why = "out of memory (OSError: [Errno 12] Cannot allocate memory: '/opt/env --work 2/py')"

    def out_of_memory(self, count):
        raise workers._StartFailed(0, why)

    monkeypatch.setenv(CALLER_ENV, caller)
    monkeypatch.setattr(WorkerPool, "_started_pool", out_of_memory)
    pool = WorkerPool(2, lazy=True)
    ok, payload = pool.invoke("process", {"action": "x"})
    assert not ok and payload["errorType"] == "OutOfMemoryError"
    assert f": {why}: this is not the input's fault: run with {fewer} (" in str(pool.failed)
    assert payload["errorMessage"].endswith(f"none could start: {pool.failed}")


@pytest.mark.parametrize("caller, fewer", [("python", "fewer workers"), ("", "fewer --workers")])
def test_a_dead_pool_thread_fails_its_task_saying_what_to_do_in_the_callers_words(
        monkeypatch, caller, fewer):
    """The thread that passes tasks to the worker processes died (as one does out of
    memory): the task fails, OutOfMemoryError, and what to do is said in the words of what
    started the run (``pipeline.run``: its argument ``workers``). Before, the command's
    ``--workers`` was said to a Python caller too (the report rewrote it, paths and all)."""
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.core.constants import CALLER_ENV

    monkeypatch.setenv(CALLER_ENV, caller)
    dead = threading.Thread(target=lambda: None, name="dead-manager")
    dead.start()
    dead.join()
    pool = ProcessPoolExecutor(1)
    pool._executor_manager_thread = dead  # as a thread of it that died: it takes no task
    monkeypatch.setattr(WorkerPool, "_new_pool", lambda self: pool)
    ok, payload = WorkerPool(1, lazy=True).invoke("process", {"action": "x"})
    assert not ok and payload["errorType"] == "OutOfMemoryError", payload
    message = payload["errorMessage"]
    assert "(dead-manager) ended" in message, message
    assert f"this is not the input's fault: run with {fewer} (fewer tasks at once)" in message
    assert ("--" in message) == (caller != "python")

def test_workers_get_their_tile_threads_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("TIFFPIPE_TILE_THREADS", raising=False)
    with _workers() as pool:  # os.getenv runs in the worker: what tile_threads() will read
        assert pool.submit(os.getenv, "TIFFPIPE_TILE_THREADS").result() == str(
            worker_tile_threads(2))
    monkeypatch.setenv("TIFFPIPE_TILE_THREADS", "3")
    with _workers() as pool:
        assert pool.submit(os.getenv, "TIFFPIPE_TILE_THREADS").result() == "3"


def _settled_threads() -> int:
    """The threads of this process that Python did not start (OpenBLAS's), once a thread
    that just ended has left /proc (a joined thread's task may still be listed a moment: the
    worker's warm-up thread is joined just before its first task)."""
    import threading
    import time

    for _ in range(50):
        ours = {t.native_id for t in threading.enumerate()}
        count = len({int(t) for t in os.listdir("/proc/self/task")} - ours)
        if count == 0:
            break
        time.sleep(0.02)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_workers_start_no_openblas_threads_unless_the_user_set_a_count(monkeypatch):
    """numpy's OpenBLAS and the one OpenCV's wheel bundles each start threads when they load
    (spinning ~0.2 CPU-s as OpenCV loads); a worker, which imports both before its first task,
    runs them on one thread: its only threads are Python's (its own, and the one that
    watches the engine's process)."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with _workers() as pool:
        assert pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "1"
        threads = [pool.submit(_settled_threads) for _ in range(4)]
        assert [t.result() for t in threads] == [0] * 4  # 2 each without the setting
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with _workers() as pool:
        assert pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "2"
