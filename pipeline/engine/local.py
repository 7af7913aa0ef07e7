"""Run statemachine.asl.json in this process: on :mod:`pipeline.engine.direct` (the
default: it starts at once), or on moto's Step Functions interpreter.

The definition is the same one AWS runs. Its Lambda tasks are served by :class:`WorkerPool`:
real handler code in worker processes, so tiles run in parallel. With the direct interpreter
this process is one of the ``workers``: the light tasks (planning, the report) and the heavy
tasks run here, as many at once as their tiles leave cores free (one unit of many tiles, or
several one-tile pages side by side), the others in ``workers - 1`` processes started when
first needed, so a run never waits for a worker to start and a one-unit run starts none.

This module drives the local engine; what serves it elsewhere: :mod:`pipeline.steps.held_work`
(the direct interpreter's runs hold their jobs' plans and results in memory),
:mod:`pipeline.steps.stopping` (the stop request that :meth:`LocalEngine.abort` and a stopped
worker set, and the steps' tile loops check), :mod:`pipeline.adapters.kept_files` (local inputs
a thread keeps open between units, closed here when a run ends) and
:func:`pipeline.adapters.segments.held` (a small ProcessJob's segments kept in memory; on
Lambda too). With :mod:`pipeline.engine.moto_patches` (what it changes in moto's interpreter
while a run lasts, and why), it is the only module that knows moto's internals.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Protocol, Self

from pipeline.adapters import kept_files
from pipeline.core.constants import FUNCTION_SIZES, FUNCTIONS
from pipeline.core.events import JobList
from pipeline.core.record import record
from pipeline.engine import definition, direct
from pipeline.engine.workers import InProcess, WorkerPool, one_opencv_thread, tune_malloc
from pipeline.errors import EngineError
from pipeline.steps import held_work, stopping
from pipeline.steps.common import usable_cores

log = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT = "123456789012"
#: actions that only read headers and write small JSON: served in the engine's process by
#: the direct interpreter (no worker start on the way to the first task)
LIGHT_ACTIONS = frozenset({"plan_run", "plan_job", "record_failure", "report"})
INTERPRETERS = ("auto", "direct", "moto")
#: seconds a heavy task waits for the engine's own slot before the worker pool may start
POOL_START_AFTER_S = 0.3
#: the pool starts only once the heavy tasks waiting hold about this many seconds of work
#: (a worker's start costs ~0.6 CPU-s and ~0.7 s, taken from the task running here)
POOL_WORTH_S = 1.5
#: ... and only while this process's task leaves cores idle: it uses less than this share
#: of them (a fused unit's tile and decode threads use ~95% of 2 cores; a worker beside it
#: then only takes their CPU, measured 5-15% slower at 0.3 and 1 Gpx)
POOL_BELOW_BUSY = 0.8
#: seconds of heavy tasks here that measure how busy they keep the cores
BUSY_MEASURED_OVER_S = 1.0
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_LAMBDA",
                  "AWS_ENDPOINT_URL_SFN", "AWS_ENDPOINT_URL_IAM")
#: seconds a stopped run waits for its tasks to stop before it leaves them behind
STOP_GRACE_S = 10.0


class StopRequest:
    """A request to stop a run (:class:`LocalEngine`'s ``stop``), made by a signal handler
    or any thread: :meth:`request` records the first signal and wakes the engine, which
    stops the run (:meth:`LocalEngine.abort`); a second request stops its waiting for the
    tasks to stop. Safe in a signal handler: it only sets Events that the thread it
    interrupts never holds (only the engine's watcher thread waits on them)."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the first request's (0 without a signal)
        self.forced = False  # a second request
        self._wakers: list[threading.Event] = []

    def request(self, signum: int = 0) -> None:
        if self.signal is None:
            self.signal = signum
        else:
            self.forced = True
        for waker in list(self._wakers):
            waker.set()


class Invoker(Protocol):
    """What serves an invoke: :class:`WorkerPool`, or an in-process stand-in in tests."""

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]: ...


#: called after every task: (function, event, ok, payload)
Listener = Callable[[str, dict[str, Any], bool, dict[str, Any]], None]

@record
class Execution:
    """How an execution ended."""

    status: str  # SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    seconds: float
    #: events in the execution's history (Step Functions keeps at most 25,000 per execution)
    history_events: int = 0


def function_name(function: str) -> str:
    return f"tiffpipe-local-{function}"


def _function(name: str) -> str:
    """``split`` (``process``, ``merge``) from a function's name or ARN, whatever its prefix:
    the engine's own and a deployed stack's names both work."""
    function = name.rsplit(":", 1)[-1].rsplit("-", 1)[-1]
    if function not in FUNCTIONS:
        raise EngineError(f"no local function {name!r}")
    return function


@contextmanager
def _mocked_aws() -> Iterator[None]:
    """moto with real state machine execution, in this process only. Endpoint variables are
    hidden meanwhile so that moto serves the engine's own calls (the workers keep them)."""
    from moto import mock_aws

    # moto logs every failed task at ERROR and warns about declarations it ignores; the
    # run report carries the errors, so keep the terminal clean.
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    saved = {k: os.environ.pop(k) for k in _ENDPOINT_VARS if k in os.environ}
    try:
        config = {"stepfunctions": {"execute_state_machine": True},
                  "lambda": {"use_docker": False}}
        with mock_aws(config=config):  # type: ignore[arg-type]
            yield
    finally:
        os.environ.update(saved)


@contextmanager
def served_by(pool: Invoker, listener: Listener | None = None) -> Iterator[None]:
    """Serve moto's Lambda invokes with the real handlers (moto's non-Docker Lambda backend
    only echoes payloads). A function named ``...-split`` (``-process``, ``-merge``) is that
    step, whatever its prefix: the engine's own and a deployed stack's names both work."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    def invoke(self: Any, name: str, qualifier: Any, body: Any, headers: Any,
               response_headers: dict[str, str]) -> bytes:
        function = _function(name)
        event = json.loads(body or "{}")
        ok, payload = pool.invoke(function, event)
        if not ok:
            response_headers["x-amz-function-error"] = "Unhandled"
        if listener is not None:
            listener(function, event, ok, payload)
        return json.dumps(payload).encode()

    original = LambdaSimpleBackend.invoke
    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield
    finally:
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


def _history_events(sfn: Any, execution: str) -> int:
    """The number of events in an execution's history (all pages)."""
    count, kwargs = 0, {"executionArn": execution, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        count += len(page["events"])
        if not page.get("nextToken"):
            return count
        kwargs["nextToken"] = page["nextToken"]


class LocalEngine:
    """Runs executions of the state machine on this machine with ``workers`` processes.

    ``map_threads``: the most items of one Distributed Map run in flight in the engine at once
    (default ``2 * workers + 2``: enough to keep the workers busy; more only costs memory).
    ``interpreter``: ``direct`` (:mod:`pipeline.engine.direct`), ``moto``, or ``auto`` (direct
    unless the definition uses what it does not support). With the direct interpreter, this
    process runs heavy tasks while their tiles leave cores free (:meth:`_width`), besides a
    pool of ``workers - 1`` (none for one worker) started when it pays; on moto, every task
    runs in a pool of ``workers``. The direct interpreter's runs keep their jobs' plans and
    results in this process's memory where no worker needs them
    (:mod:`pipeline.steps.held_work`). ``stop``: a :class:`StopRequest` that stops a run
    (:meth:`abort`; docs/local-engine.md, "Stopping a run").
    """

    def __init__(self, workers: int, listener: Listener | None = None,
                 definition_text: str | None = None, map_threads: int | None = None,
                 interpreter: str = "auto", stop: StopRequest | None = None):
        if interpreter not in INTERPRETERS:
            raise ValueError(f"interpreter must be one of {INTERPRETERS}, not {interpreter!r}")
        self.listener = listener
        self.stop = stop
        self._aborted = False  # abort(): the runs are stopping
        self._given_up: Future[None] = Future()  # done: tasks still running are left behind
        self._interpreter: direct.Interpreter | None = None
        self.definition_text = definition_text
        self.map_threads = max(1, map_threads or 2 * workers + 2)
        self.machine: dict[str, Any] | None = None
        if interpreter != "moto":
            machine = json.loads(definition.render(
                {f: function_name(f) for f in FUNCTIONS}, definition_text))
            why = direct.unsupported(machine)
            if why and interpreter == "direct":
                raise EngineError(f"the direct interpreter cannot run this definition: {why}")
            if why:
                log.info("running on moto: the direct interpreter does not support %s", why)
            else:
                self.machine = machine
                # this process runs heavy tasks too: as in the workers (for the process's life)
                tune_malloc()
        self.in_process = InProcess()
        self._workers = max(1, workers)
        self._cores = usable_cores()
        # as many threads as tasks may run here at once; an idle thread is reused first, so
        # tasks in sequence run on one thread, as in a worker (a thread's freed memory stays
        # in its malloc arena: units run on several map threads in turn left the engine's
        # peak RSS ~40% above a worker's at 1 Gpx)
        self._engine_threads = ThreadPoolExecutor(
            min(self._cores, self._workers), thread_name_prefix="tiffpipe-task")
        # heavy tasks wait for a free slot: this process (while their tiles leave cores
        # free), or one of the pool's (a task queued in the pool could wait there while this
        # process idles at a map's end)
        self._free = threading.Condition()
        self._busy = {"engine": 0, "pool": 0}  # tasks running here, in the pool
        self._engine_width = 0  # cores the tasks running here keep busy (their widths)
        self._engine_starts: dict[int, float] = {}  # task -> when it started here
        self._waiting = 0  # heavy tasks waiting for a slot
        # since when this process has run heavy tasks without a break, and its CPU then
        self._stretch_since: float | None = None
        self._engine_cpu_since = 0.0
        # the heavy tasks done here: how many, the seconds of their stretches and the CPU
        # seconds meanwhile (tasks side by side count their common seconds once)
        self._done_here = 0
        self._wall_here = self._cpu_here = 0.0
        # The pool captures the environment BEFORE moto replaces credentials with fakes.
        if self.machine is None:
            self.pool: WorkerPool | None = WorkerPool(workers, env=dict(os.environ))
        else:
            # lazy: a run of short tasks starts no worker (at least one: user code runs there)
            self.pool = WorkerPool(max(1, workers - 1), env=dict(os.environ), lazy=True)
        # with one worker asked for, this process is it: the pool serves only user code
        self._pool_for_all = workers > 1
        self._user_code: dict[str, bool] = {}  # plan URL -> its chain runs a custom op

    @property
    def worker_peaks_kb(self) -> dict[int, int]:
        """Peak RSS of each worker process that ran a task (none when inline)."""
        return dict(self.pool.peaks_kb) if self.pool else {}

    def close(self) -> None:
        # tasks left behind by a stopped run are not waited for (the process ends soon)
        self._engine_threads.shutdown(wait=not self._given_up.done(), cancel_futures=True)
        if self.pool:
            self.pool.close()
        kept_files.close_all()  # the inputs the engine's threads kept open between units

    def abort(self) -> None:
        """Stop the runs now (thread-safe; returns at once): no state or task starts any
        more, a task waiting for a slot gives up, the workers stop their tasks
        (:meth:`WorkerPool.stop`), and the tasks running in this process stop at their next
        tile (:mod:`pipeline.steps.stopping`). :meth:`run` then returns an ABORTED execution
        once the tasks have stopped, or :data:`STOP_GRACE_S` later (see :meth:`give_up`).
        A task that ended meanwhile keeps its result (a job's output published stays)."""
        with self._free:
            if self._aborted:
                return
            self._aborted = True
            self._free.notify_all()
        interpreter = self._interpreter
        if interpreter is not None:
            interpreter.abort()
        if self.pool is not None:
            self.pool.stop()
        stopping.request()

    def give_up(self) -> None:
        """Stop waiting for the tasks of an aborted run (a second Ctrl-C, or the grace is
        over): the ones in this process are left behind, the workers killed."""
        with self._free:
            if not self._given_up.done():
                self._given_up.set_result(None)
        if self.pool is not None:
            self.pool.kill()

    def _check_aborted(self) -> None:
        if self._aborted:
            raise direct.Aborted("the run was stopped")

    @contextmanager
    def _watching(self) -> Iterator[None]:
        """While a run lasts: a thread that aborts it on :attr:`stop`'s request, then gives
        up on its tasks :data:`STOP_GRACE_S` later or on a second request."""
        stop = self.stop
        if stop is None:
            yield
            return
        # the signal handler sets ``waker`` while it is in the list; this thread (the one
        # the handler interrupts) sets it only once out of it: never holding its lock then
        waker, ended = threading.Event(), threading.Event()
        stop._wakers.append(waker)
        watcher = threading.Thread(target=self._watch, args=(stop, waker, ended),
                                   name="tiffpipe-stop", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop._wakers.remove(waker)
            ended.set()
            waker.set()
            watcher.join()

    def _watch(self, stop: StopRequest, waker: threading.Event, ended: threading.Event) -> None:
        while stop.signal is None:  # (a request made before the run: at once)
            waker.wait()
            waker.clear()
            if ended.is_set():
                return
        self.abort()
        deadline = time.monotonic() + STOP_GRACE_S
        while not ended.is_set() and not stop.forced:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waker.wait(left)
            waker.clear()
        if not ended.is_set():
            self.give_up()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, execution_input: dict[str, Any], name: str | None = None,
            poll: float = 0.05) -> Execution:
        """Start an execution on ``execution_input`` and wait for it to end (``poll``: seconds
        between status checks if moto's end of an execution cannot be signalled)."""
        name = name or f"run-{os.urandom(6).hex()}"
        stopping.clear()  # (a run stopped before, in this process)
        with self._watching():
            if self.machine is not None:
                return self._run_direct(self.machine, execution_input, name)
            return self._run_moto(execution_input, name, poll)

    def _invoke(self, name: str, event: Any) -> tuple[bool, Any]:
        """A task of the direct interpreter: in this process if light, or if heavy and this
        process has cores its heavy tasks leave free (or has no pool), else in the pool; the
        listener hears of it either way. Once the run is aborted, no task starts, and one
        that ends raises :class:`direct.Aborted` (its failure is the stop's, not its job's:
        no Retry or Catch)."""
        function = _function(name)
        self._check_aborted()
        if isinstance(event, dict) and event.get("action") in LIGHT_ACTIONS:
            ok, payload = self.in_process.invoke(function, event)
        else:
            user_code = self._runs_user_code(event)
            width = self._cores if user_code else self._width(event)
            token = threading.get_ident()  # the map thread waiting for this task
            slot = self._take_slot(engine=not user_code, width=width, token=token)
            try:
                if slot == "engine":
                    ok, payload = self._here(function, event)
                else:
                    assert self.pool is not None
                    held_work.write_plan(event.get("plan"))  # the worker reads it
                    ok, payload = self.pool.invoke(function, event)
            finally:
                with self._free:
                    self._busy[slot] -= 1
                    if slot == "engine":
                        self._engine_done(token, width)
                    self._free.notify_all()
        self._check_aborted()
        if self.listener is not None:
            self.listener(function, event, ok, payload)
        return ok, payload

    def _here(self, function: str, event: Any) -> tuple[bool, Any]:
        """A heavy task on this process's threads; once the run is given up on
        (:meth:`give_up`), no longer waited for."""
        task = self._engine_threads.submit(self.in_process.invoke, function, event)
        wait([task, self._given_up], return_when=FIRST_COMPLETED)
        if not task.done():
            raise direct.Aborted("the run was stopped; a task was left behind")
        return task.result()

    def _runs_user_code(self, event: Any) -> bool:
        """Whether a heavy task's job runs a ``custom`` op. Such tasks run in a worker, never
        in this process: a crash of user code (a segfault, ``os._exit``) then kills only that
        worker and fails the task with ``WorkerCrashedError``, not the whole run."""
        plan = event.get("plan") if isinstance(event, dict) else None
        if not isinstance(plan, str):
            return False
        if plan not in self._user_code:
            from pipeline.steps.common import load_plan

            try:
                ops = load_plan(plan).spec.ops
            except Exception:  # noqa: BLE001 - the task itself reports a missing plan
                return False
            self._user_code[plan] = any(op.get("op") == "custom" for op in ops)
        return self._user_code[plan]

    def _width(self, event: Any) -> int:
        """The cores a heavy task keeps busy: a fused unit or a batch as many as its tiles (its
        tile threads work on one tile each), at most all; any other task, all of them. A
        page of one or two tiles leaves cores to a page beside it (a scanned archive of
        many small pages); memory stays bounded by the tiles in flight."""
        if not isinstance(event, dict) or not isinstance(event.get("plan"), str):
            return self._cores
        from pipeline.steps.common import load_plan

        action = event.get("action")
        try:
            plan = load_plan(event["plan"])
            if action == "process_unit":
                tiles = plan.units[event.get("unit", 0)].tiles
            elif action == "process_job":  # a job's units side by side, then its merge
                tiles = sum(unit.tiles for unit in plan.units)
            elif action == "process":
                batch = plan.batches[event["batch"]]
                tiles = batch.last - batch.first
            else:
                return self._cores
        except Exception:  # noqa: BLE001 - the task itself reports a missing or bad plan
            return self._cores
        return max(1, min(self._cores, tiles))

    def _engine_fits(self, width: int) -> bool:
        """Whether a task of ``width`` may start here now (under ``self._free``): this process
        runs no heavy task, or its tasks leave ``width`` cores free and the tasks running
        everywhere are fewer than ``workers``."""
        if self._busy["engine"] == 0:
            return True
        return (self._engine_width + width <= self._cores
                and self._busy["engine"] + self._busy["pool"] < self._workers)

    def _engine_started(self, token: int, width: int) -> None:
        """A heavy task takes this process's cores (under ``self._free``)."""
        now, cpu = time.monotonic(), time.process_time()
        if self._busy["engine"] == 0:
            self._stretch_since, self._engine_cpu_since = now, cpu
        self._busy["engine"] += 1
        self._engine_width += width
        self._engine_starts[token] = now

    def _engine_done(self, token: int, width: int) -> None:
        """A heavy task here ended (under ``self._free``; ``self._busy`` already counts it
        out): the stretch's seconds are counted once its last task ends."""
        self._engine_width -= width
        self._engine_starts.pop(token, None)
        self._done_here += 1
        if self._busy["engine"] == 0 and self._stretch_since is not None:
            self._wall_here += time.monotonic() - self._stretch_since
            self._cpu_here += time.process_time() - self._engine_cpu_since
            self._stretch_since = None

    def _take_slot(self, engine: bool, width: int, token: int) -> str:
        """``engine`` or ``pool``: where the next heavy task runs, once one is free (this
        process first: it is warm; ``engine=False``: the pool only). A task of ``width``
        cores (:meth:`_width`) joins the ones running here while they leave that many free.

        A task here may already use every core (its tile threads), and a worker's start
        costs ~0.6 CPU-s of imports taken from it, so the pool starts only when it will pay:
        once a task has waited :data:`POOL_START_AFTER_S`, the waiting tasks hold about
        :data:`POOL_WORTH_S` of work (their number times a heavy task's time here: the mean
        so far, or the running one's age), and the task running here leaves cores idle
        (:data:`POOL_BELOW_BUSY`). A job of a few short units (a small multi-page file), or
        of units that keep the cores busy, so runs here alone. While the workers start,
        tasks keep taking this process's slot when it frees: a task goes to the pool only
        once a worker is ready, never queueing behind a start while this process idles."""
        deadline = time.monotonic() + POOL_START_AFTER_S
        with self._free:
            self._waiting += 1
            try:
                while True:
                    self._check_aborted()
                    if engine and self._engine_fits(width):
                        self._engine_started(token, width)
                        return "engine"
                    pool = self.pool
                    usable = pool is not None and (self._pool_for_all or not engine)
                    room = (not engine
                            or self._busy["engine"] + self._busy["pool"] < self._workers)
                    if usable and pool.started and room and self._busy["pool"] < max(
                            pool.warm, 0 if engine else pool.workers):
                        self._busy["pool"] += 1
                        return "pool"
                    if usable and not pool.started and (not engine or self._pool_pays(deadline)):
                        pool.start(on_warm=self._wake)
                        continue
                    # re-check now and then: the work waiting grows with the running task's age
                    self._free.wait(0.05 if usable and not pool.started else None)
            finally:
                self._waiting -= 1

    def _pool_pays(self, deadline: float) -> bool:
        """Whether starting the pool is worth it now (see :meth:`_take_slot`; under
        ``self._free``)."""
        now = time.monotonic()
        if now < deadline:
            return False
        # the oldest task running here: its age so far
        running = now - min(self._engine_starts.values(), default=now)
        per_task = max(self._wall_here / self._done_here if self._done_here else 0.0, running)
        if self._waiting * per_task < POOL_WORTH_S:
            return False
        # how busy this process keeps the cores: over its tasks so far and the running ones,
        # once there is a second of them (a unit's first rows, read before its tile threads
        # have work, would say "idle")
        stretch = now - self._stretch_since if self._stretch_since is not None else 0.0
        wall = self._wall_here + stretch
        if wall < BUSY_MEASURED_OVER_S:
            return False
        cpu = self._cpu_here + (time.process_time() - self._engine_cpu_since if stretch else 0)
        return cpu / wall / self._cores < POOL_BELOW_BUSY

    def _wake(self) -> None:
        with self._free:
            self._free.notify_all()

    def _run_direct(self, machine: dict[str, Any], execution_input: dict[str, Any],
                    name: str) -> Execution:
        started = time.time()
        interpreter = direct.Interpreter(machine, self._invoke, self.map_threads,
                                         read_items=self._read_items_here)
        self._interpreter = interpreter
        if self._aborted:  # abort() came before the interpreter was there
            interpreter.abort()
        try:
            # this process runs tasks, as the workers do; its jobs' plans and results stay
            # in its memory unless a worker needs them
            with one_opencv_thread(), held_work.holding():
                output = interpreter.run(execution_input, name)
        except direct.StateError as exc:
            return Execution("FAILED", None, exc.error, exc.cause, time.time() - started)
        except direct.Aborted as exc:
            return Execution("ABORTED", None, "Aborted", str(exc), time.time() - started)
        except EngineError:
            raise
        except Exception as exc:  # a bug of the interpreter, not a failed state
            raise EngineError(f"the embedded engine's interpreter stopped: "
                              f"{type(exc).__name__}: {exc}") from exc
        return Execution("SUCCEEDED", output, None, None, time.time() - started)

    @staticmethod
    def _read_items_here(parameters: dict[str, Any]) -> str:
        """The job list a Distributed Map's ItemReader names (``Bucket``, ``Key``: a local
        work folder's has a placeholder bucket), read from the work location in this process
        (the direct interpreter's ItemReader: no moto mock here)."""
        from pipeline.adapters import storage

        return storage.read_text(JobList(parameters["Bucket"], parameters["Key"]).url)

    def _run_moto(self, execution_input: dict[str, Any], name: str, poll: float) -> Execution:
        import boto3

        from pipeline.engine.moto_patches import (
            crash_watch,
            end_signal,
            item_reader,
            lean_interpreter,
        )

        assert self.pool is not None  # moto runs are never inline
        started = time.time()
        with (_mocked_aws(), served_by(self.pool, self.listener),
              lean_interpreter(self.map_threads), end_signal() as ended,
              crash_watch() as crashes, item_reader(self._read_items)):
            # signalled, the end needs no frequent polls (each costs the interpreter ~1 ms)
            wait = poll if ended is None else max(poll, 1.0)
            session = boto3.Session(region_name=REGION)
            # moto's Lambda needs its role to exist in IAM; a state machine's role ARN only
            # needs to be well-formed, and the one role trusts both services
            role = self._role(session, "tiffpipe-local")
            arns = self._create_functions(session, role)
            sfn = session.client("stepfunctions")
            machine = sfn.create_state_machine(
                name="tiffpipe-local", roleArn=role,
                definition=definition.render(arns, self.definition_text))["stateMachineArn"]
            execution = sfn.start_execution(
                stateMachineArn=machine, name=name,
                input=json.dumps(execution_input))["executionArn"]
            while True:
                desc = sfn.describe_execution(executionArn=execution)
                if desc["status"] != "RUNNING":
                    break
                if self._aborted:  # its tasks in the stopped pool fail at once
                    sfn.stop_execution(executionArn=execution, error="Aborted",
                                       cause="the run was stopped")
                    return Execution("ABORTED", None, "Aborted", "the run was stopped",
                                     time.time() - started)
                if crashes:  # moto's interpreter died: the execution can never end
                    exc = crashes[0]
                    raise EngineError(f"the embedded engine's interpreter (moto) stopped: "
                                      f"{type(exc).__name__}: {exc}") from exc
                if ended is None:
                    time.sleep(wait)
                elif ended.wait(wait):  # woken when an execution ends
                    ended.clear()
            events = _history_events(sfn, execution)
        output = json.loads(desc["output"]) if desc.get("output") else None
        return Execution(desc["status"], output, desc.get("error"), desc.get("cause"),
                         time.time() - started, events)

    def _read_items(self, parameters: dict[str, Any]) -> str:
        """The job list a Distributed Map's ItemReader names (Bucket, Key), from the work
        location through a worker: moto mocks S3 in this process (see
        moto_patches.item_reader)."""
        assert self.pool is not None  # moto runs are never inline
        return self.pool.read_text(JobList(parameters["Bucket"], parameters["Key"]).url)

    @staticmethod
    def _role(session: Any, name: str) -> str:
        iam = session.client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]}}]}
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"]["Arn"]

    def _create_functions(self, session: Any, role: str) -> dict[str, str]:
        lam = session.client("lambda")
        arns = {}
        for function in FUNCTIONS:
            arns[function] = lam.create_function(
                FunctionName=function_name(function), Role=role, PackageType="Image",
                Code={"ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/"
                                  f"tiffpipe-{function}:local"},
                Timeout=FUNCTION_SIZES[function].timeout,
                MemorySize=FUNCTION_SIZES[function].memory)["FunctionArn"]
        return arns
