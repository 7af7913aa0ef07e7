"""Run statemachine.asl.json in this process: on :mod:`pipeline.engine.direct` (the
default: it starts at once), or on moto's Step Functions interpreter
(:mod:`pipeline.engine.moto_run`).

The definition is the same one AWS runs. Its Lambda tasks are served by :class:`WorkerPool`:
real handler code in worker processes, so tiles run in parallel. With the direct interpreter
this process is one of the ``workers``: the light tasks (planning, the report) and the heavy
tasks run here, as many at once as their tiles leave cores free (one unit of many tiles, or
several one-tile pages side by side), the others in ``workers - 1`` processes started when
first needed, so a run never waits for a worker to start and a one-unit run starts none.

This module drives the local engine; where its heavy tasks run is
:mod:`pipeline.engine.placement`'s policy. What serves it elsewhere:
:mod:`pipeline.steps.held_work`
(the direct interpreter's runs hold their jobs' plans and results in memory),
:mod:`pipeline.steps.stopping` (the stop request that :meth:`LocalEngine.abort` and a stopped
worker set, and the steps' tile loops check), :mod:`pipeline.adapters.kept_files` (local inputs
a thread keeps open between units, closed here when a run ends) and
:func:`pipeline.adapters.segments.held` (a small ProcessJob's segments kept in memory; on
Lambda too).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from typing import Any, Self

from pipeline.adapters import kept_files
from pipeline.core.constants import FUNCTIONS
from pipeline.core.events import JobList
from pipeline.engine import definition, direct
from pipeline.engine.execution import (
    Execution,
    History,
    Listener,
    function_name,
    function_of,
)
from pipeline.engine.placement import Placement
from pipeline.engine.workers import InProcess, WorkerPool, one_opencv_thread, tune_malloc
from pipeline.errors import (
    OUT_OF_MEMORY_HINT,
    EngineError,
    OutOfMemoryError,
    exhausted,
    in_callers_words,
)
from pipeline.steps import held_work, stopping
from pipeline.steps.common import usable_cores

log = logging.getLogger(__name__)

#: actions that only read headers and write small JSON: served in the engine's process by
#: the direct interpreter (no worker start on the way to the first task)
LIGHT_ACTIONS = frozenset({"plan_run", "plan_job", "record_failure", "report"})
INTERPRETERS = ("auto", "direct", "moto")
#: seconds a stopped run waits for its tasks to stop before it leaves them behind
STOP_GRACE_S = 10.0
#: how often a task of the engine's process checks that the thread running it is alive
TASK_THREAD_CHECK_S = 1.0


def _alive(threads: list[threading.Thread]) -> bool:
    return any(t.is_alive() for t in threads)


#: a reference to a variable ($name, not $.a or $$.a) in a path or a template's value
_VARIABLE = re.compile(r"(?<![\w$])\$[A-Za-z_]\w*")
_PATH_FIELDS = ("InputPath", "OutputPath", "ItemsPath", "ResultPath", "MaxConcurrencyPath",
                "Variable", "SecondsPath", "TimestampPath", "ErrorPath", "CausePath")


def runnable(definition_text: str | None, interpreter: str = "auto",
             source: str | None = None) -> tuple[dict[str, Any], str | None]:
    """The definition (``definition_text``, else the shipped one; checked:
    :func:`pipeline.engine.definition.check`) with the engine's functions' names filled in,
    and what of it the direct interpreter does not support (None: it runs it; None too for
    ``interpreter="moto"``). An :class:`EngineError` (naming ``source``) if the local engine
    refuses to run it on ``interpreter``: what moto cannot run though it parses it
    (:func:`moto_gap`) when moto would run it, or, with ``direct``, what that interpreter
    does not support. What a :class:`LocalEngine` refuses as it starts, and
    ``tiffpipe validate --definition`` before saying a definition is valid for a run."""
    machine = json.loads(definition.render(
        {f: function_name(f) for f in FUNCTIONS}, definition_text))
    why = direct.unsupported(machine) if interpreter != "moto" else None
    gap = moto_gap(machine) if why and interpreter == "auto" or interpreter == "moto" \
        else None
    named = f"{source}: " if source else ""
    if gap:  # moto would run it: refuse what it cannot run, up front
        raise EngineError(
            f"{named}moto's interpreter cannot run this definition" + (
                f" (which the direct interpreter cannot either: it does not support "
                f"{why})" if why else "") + f": it does not support {gap}")
    if why and interpreter == "direct":
        raise EngineError(f"{named}the direct interpreter cannot run this definition: {why}")
    return machine, why


def moto_gap(machine: dict[str, Any], scope: str = "") -> str | None:
    """What of ``machine`` moto 5.2.5's interpreter cannot run though it parses it (it
    fails at run time with an error naming neither, e.g. ``TypeError('NoneType' object is
    not callable)``), naming the state: JSONata (QueryLanguage), reading a variable
    (``$name``, set by Assign), a Map's ResultWriter (written to moto's in-process S3,
    where no one sees it)."""
    if machine.get("QueryLanguage") == "JSONata":
        return f"QueryLanguage JSONata{f' (in {scope})' if scope else ''}"
    for name, state in (machine.get("States") or {}).items():
        if not isinstance(state, dict):
            continue
        label = f"state {scope} > {name}" if scope else f"state {name}"
        if state.get("QueryLanguage") == "JSONata":
            return f"QueryLanguage JSONata ({label})"
        if "ResultWriter" in state:
            return (f"a Map's ResultWriter ({label}: moto writes the results to its "
                    "in-process S3, where nothing sees them)")
        variable = _reads_variable(state)
        if variable:
            return f"variables ({label} reads {variable})"
        inner = f"{scope} > {name}" if scope else name
        for child in [state.get("ItemProcessor") or state.get("Iterator"),
                      *(state.get("Branches") or [])]:
            if isinstance(child, dict):
                gap = moto_gap(child, inner)
                if gap:
                    return gap
    return None


def _reads_variable(value: Any, key: str = "") -> str | None:
    """The first variable (``$name``) a state's paths or templates read, if any."""
    if isinstance(value, str):
        if key.endswith(".$") or key in _PATH_FIELDS:
            match = _VARIABLE.search(value)
            return match.group() if match else None
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else []
    for k, v in items:
        found = _reads_variable(v, k if isinstance(k, str) else key)
        if found:
            return found
    return None


class StopRequest:
    """A request to stop a run (:class:`LocalEngine`'s ``stop``), made by a signal handler
    or any thread: :meth:`request` records the first signal and wakes the engine, which
    stops the run (:meth:`LocalEngine.abort`); a second request stops its waiting for the
    tasks to stop.

    Safe in a signal handler, even one that interrupts another (a second signal as the
    first is handled: a Ctrl-C that ``timeout`` forwards to the command and to its process
    group comes twice at once): it takes no lock. A handler runs in the main thread between
    two of its bytecodes, so a lock it took (``threading.Event.set``'s) could be held by the
    very handler it interrupted, and it would wait for ever (the command hung, deaf to
    SIGTERM). It only sets attributes and puts on the engine's ``queue.SimpleQueue``
    (``put`` is reentrant C, never blocks), which the engine's watcher thread waits on."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the first request's (0 without a signal)
        self.forced = False  # a second request
        self._wakers: list[queue.SimpleQueue[None]] = []

    def request(self, signum: int = 0) -> None:
        if self.signal is None:
            self.signal = signum
        else:
            self.forced = True
        for waker in list(self._wakers):
            waker.put(None)


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
    (:meth:`abort`; docs/local-engine.md, "Stopping a run"). ``history``: keep the events of
    each execution (:attr:`Execution.history`; docs/local-engine.md, "Debugging a local
    execution"); not kept by default (a run of 10,000 jobs has ~100,000).
    """

    def __init__(self, workers: int, listener: Listener | None = None,
                 definition_text: str | None = None, map_threads: int | None = None,
                 interpreter: str = "auto", stop: StopRequest | None = None,
                 history: bool = False):
        if interpreter not in INTERPRETERS:
            raise ValueError(f"interpreter must be one of {INTERPRETERS}, not {interpreter!r}")
        self.listener = listener
        self.stop = stop
        self.history = history
        self._given_up: Future[None] = Future()  # done: tasks still running are left behind
        self._interpreter: direct.Interpreter | None = None
        self.definition_text = definition_text
        self.map_threads = max(1, map_threads or 2 * workers + 2)
        self.machine: dict[str, Any] | None = None
        # checked before any run, on either interpreter (its placeholders before they are
        # filled): what Step Functions would refuse of it, and what this engine cannot run
        source = None if definition_text else definition.definition_path()
        definition.check(definition_text or definition.definition_text(), source)
        machine, why = runnable(definition_text, interpreter)
        if interpreter != "moto":
            if why:
                log.warning("running on moto (slower): the direct interpreter does not "
                            "support %s", why)
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
        # The pool captures the environment BEFORE moto replaces credentials with fakes.
        if self.machine is None:
            self.pool: WorkerPool | None = WorkerPool(workers, env=dict(os.environ))
        else:
            # lazy: a run of short tasks starts no worker (at least one: user code runs there)
            self.pool = WorkerPool(max(1, workers - 1), env=dict(os.environ), lazy=True)
        # heavy tasks wait for a free slot: this process (while their tiles leave cores
        # free), or one of the pool's (a task queued in the pool could wait there while this
        # process idles at a map's end); with one worker asked for, this process is it: the
        # pool serves only user code
        self.placement = Placement(self._cores, self._workers, self.pool,
                                   pool_for_all=workers > 1)
        self._user_code: dict[str, list[str]] = {}  # plan URL -> its custom ops' functions

    @property
    def worker_peaks_kb(self) -> dict[int, int]:
        """Peak RSS of each worker process that ran a task (none when inline)."""
        return dict(self.pool.peaks_kb) if self.pool else {}

    def close(self, failed: bool = False) -> None:
        """End the engine's threads and workers. ``failed`` (the engine raised): its workers
        are stopped at once (:meth:`WorkerPool.stop`, then killed after
        :data:`~pipeline.engine.workers.STOP_WAIT_S`) and its threads not waited for: a
        thread or worker the failure left waiting would keep the command from ending."""
        # tasks left behind by a stopped run are not waited for (the process ends soon)
        self._engine_threads.shutdown(wait=not (failed or self._given_up.done()),
                                      cancel_futures=True)
        if self.pool:
            if failed:
                self.pool.stop()
            self.pool.close()
        kept_files.close_all()  # the inputs the engine's threads kept open between units

    def abort(self) -> None:
        """Stop the runs now (thread-safe; returns at once): no state or task starts any
        more, a task waiting for a slot gives up, the workers stop their tasks
        (:meth:`WorkerPool.stop`), and the tasks running in this process stop at their next
        tile (:mod:`pipeline.steps.stopping`). :meth:`run` then returns an ABORTED execution
        once the tasks have stopped, or :data:`STOP_GRACE_S` later (see :meth:`give_up`).
        A task that ended meanwhile keeps its result (a job's output published stays)."""
        if not self.placement.abort():
            return
        interpreter = self._interpreter
        if interpreter is not None:
            interpreter.abort()
        if self.pool is not None:
            self.pool.stop()
        stopping.request()

    def give_up(self) -> None:
        """Stop waiting for the tasks of an aborted run (a second Ctrl-C, or the grace is
        over): the ones in this process are left behind, the workers killed."""
        with self.placement.lock:
            if not self._given_up.done():
                self._given_up.set_result(None)
        if self.pool is not None:
            self.pool.kill()

    @property
    def _aborted(self) -> bool:
        """:meth:`abort` was called: the runs are stopping."""
        return self.placement.aborted

    @contextmanager
    def _watching(self) -> Iterator[None]:
        """While a run lasts: a thread that aborts it on :attr:`stop`'s request, then gives
        up on its tasks :data:`STOP_GRACE_S` later or on a second request."""
        stop = self.stop
        if stop is None:
            yield
            return
        # the signal handler puts on ``waker`` while it is in the list (StopRequest: no lock)
        waker: queue.SimpleQueue[None] = queue.SimpleQueue()
        ended = threading.Event()
        stop._wakers.append(waker)
        watcher = direct.CheckedThread(target=self._watch, args=(stop, waker, ended),
                                       name="tiffpipe-stop", daemon=True)
        try:
            watcher.start()
        except RuntimeError as exc:  # can't start new thread: nothing has run yet
            stop._wakers.remove(waker)
            raise EngineError(f"the embedded engine cannot start: "
                              f"{exhausted(exc, 'its stop watcher') or exc}") from exc
        try:
            yield
        finally:
            stop._wakers.remove(waker)
            ended.set()
            waker.put(None)
            watcher.join()

    def _watch(self, stop: StopRequest, waker: queue.SimpleQueue[None],
               ended: threading.Event) -> None:
        while stop.signal is None:  # (a request made before the run: at once)
            waker.get()
            if ended.is_set():
                return
        self.abort()
        deadline = time.monotonic() + STOP_GRACE_S
        while not ended.is_set() and not stop.forced:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with suppress(queue.Empty):
                waker.get(timeout=left)
        if not ended.is_set():
            self.give_up()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)

    def run(self, execution_input: dict[str, Any], name: str | None = None,
            poll: float = 0.05) -> Execution:
        """Start an execution on ``execution_input`` and wait for it to end (``poll``: seconds
        between status checks if moto's end of an execution cannot be signalled). An engine
        aborted (:meth:`abort`: a stop, or an execution past its TimeoutSeconds) runs no more
        executions: each ends ABORTED; make a new one."""
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
        function = function_of(name)
        self.placement.check()
        if isinstance(event, dict) and event.get("action") in LIGHT_ACTIONS:
            ok, payload = self.in_process.invoke(function, event)
        else:
            user_code = self._runs_user_code(event)
            width = self._cores if user_code else self._width(event)
            token = threading.get_ident()  # the map thread waiting for this task
            slot = self.placement.take(engine=not user_code, width=width, token=token)
            try:
                if slot == "engine":
                    ok, payload = self._here(function, event)
                else:
                    assert self.pool is not None
                    held_work.write_plan(event.get("plan"))  # the worker reads it
                    ok, payload = self.pool.invoke(function, event)
                    if user_code and not ok and isinstance(payload, dict) and payload.get(
                            "errorType") == "WorkerCrashedError":
                        payload = {**payload, "errorMessage": payload.get("errorMessage", "")
                                   + self._user_code_crash(event)}
            finally:
                self.placement.release(slot, token, width)
        self.placement.check()
        if self.listener is not None:
            self.listener(function, event, ok, payload)
        return ok, payload

    def _here(self, function: str, event: Any) -> tuple[bool, Any]:
        """A heavy task on this process's threads; once the run is given up on
        (:meth:`give_up`), no longer waited for."""
        # the task's own future and its state: "queued", "taken" by a thread, or
        # "abandoned" (never to run: its thread could not start, or died)
        task: Future[tuple[bool, Any]] = Future()
        state = {"is": "queued", "on": None}
        lock = threading.Lock()

        def invoke() -> None:
            with lock:
                if state["is"] == "abandoned":
                    return
                state["is"], state["on"] = "taken", threading.current_thread()
            try:
                task.set_result(self.in_process.invoke(function, event))
            except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
                task.set_exception(exc)

        def abandon() -> bool:
            with lock:
                if state["is"] == "queued":
                    state["is"] = "abandoned"
                return state["is"] == "abandoned"

        try:
            self._engine_threads.submit(invoke)
        except RuntimeError:  # can't start new thread: ThreadPoolExecutor queued it anyway,
            if abandon():  # and a thread started later would run it (after its job failed)
                raise
        where = f"{function_of(function)}.{event.get('action')}"
        while not wait([task, self._given_up], TASK_THREAD_CHECK_S,
                       return_when=FIRST_COMPLETED).done:
            # a thread that died (out of memory, in the executor's own code) never ends the
            # task it took, nor takes the one queued for it: the task fails, named
            on = state["on"]
            if task.done() or _alive([on] if on is not None else self._task_threads()):
                continue
            if on is not None or abandon():
                raise OutOfMemoryError(
                    f"{where}: the engine's thread that was to run it ended before the task "
                    f"did (a thread ends so when it runs out of memory); "
                    f"{in_callers_words(OUT_OF_MEMORY_HINT)}")
        if not task.done():
            raise direct.Aborted("the run was stopped; a task was left behind")
        return task.result()

    def _task_threads(self) -> list[threading.Thread]:
        """The threads of :attr:`_engine_threads` (ThreadPoolExecutor's ``_threads``)."""
        return list(getattr(self._engine_threads, "_threads", ()))

    def _runs_user_code(self, event: Any) -> bool:
        """Whether a heavy task's job runs a ``custom`` op. Such tasks run in a worker, never
        in this process: a crash of user code (a segfault, ``os._exit``) then kills only that
        worker and fails the task with ``WorkerCrashedError``, not the whole run."""
        return bool(self._custom_ops(event))

    def _custom_ops(self, event: Any) -> list[str]:
        """The functions of the custom ops of a task's job (its plan read once a run)."""
        plan = event.get("plan") if isinstance(event, dict) else None
        if not isinstance(plan, str):
            return []
        if plan not in self._user_code:
            from pipeline.steps.common import load_plan

            try:
                ops = load_plan(plan).spec.ops
            except Exception:  # noqa: BLE001 - the task itself reports a missing plan
                return []
            self._user_code[plan] = [op.get("function", "?") for op in ops
                                     if op.get("op") == "custom"]
        return self._user_code[plan]

    def _user_code_crash(self, event: Any) -> str:
        """What a worker's death in a job with custom ops may also be: its user code."""
        return (f", or the job's custom op ({', '.join(self._custom_ops(event))}) ended it (a "
                "crash in C, os._exit, a signal): run the op on one tile by itself to see")

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

    def _run_direct(self, machine: dict[str, Any], execution_input: dict[str, Any],
                    name: str) -> Execution:
        started = time.time()
        # past the definition's TimeoutSeconds, its tasks are stopped as on abort()
        history = History() if self.history else None
        interpreter = direct.Interpreter(machine, self._invoke, self.map_threads,
                                         read_items=self._read_items_here,
                                         on_timeout=self.abort, history=history)
        self._interpreter = interpreter
        if self._aborted:  # abort() came before the interpreter was there
            interpreter.abort()
        try:
            # this process runs tasks, as the workers do; its jobs' plans and results stay
            # in its memory unless a worker needs them
            with one_opencv_thread(), held_work.holding():
                output = interpreter.run(execution_input, name)
        except direct.TimedOut as exc:
            return Execution("TIMED_OUT", None, exc.error, exc.cause, time.time() - started,
                             **self._seen(interpreter))
        except direct.StateError as exc:
            return Execution("FAILED", None, exc.error, exc.cause, time.time() - started,
                             **self._seen(interpreter))
        except direct.Aborted as exc:
            return Execution("ABORTED", None, "Aborted", str(exc), time.time() - started,
                             **self._seen(interpreter))
        except EngineError:
            raise
        except Exception as exc:  # a bug of the interpreter, not a failed state
            named = exhausted(exc, "the embedded engine's own process")
            if named is not None:  # (its main thread ran out of memory or files)
                raise EngineError(f"the embedded engine's interpreter stopped: "
                                  f"{type(named).__name__}: {named}") from exc
            raise EngineError(f"the embedded engine's interpreter stopped: "
                              f"{type(exc).__name__}: {exc}") from exc
        return Execution("SUCCEEDED", output, None, None, time.time() - started,
                         **self._seen(interpreter))

    @staticmethod
    def _seen(interpreter: direct.Interpreter) -> dict[str, Any]:
        """What an execution's :class:`Execution` says of its course: its children that
        failed, its history (if kept)."""
        history = interpreter.history
        return {"failures": tuple(interpreter.failures),
                "history": history.events if history is not None else None,
                # (the run's own: its Map items' child executions have their own on AWS)
                "history_events": sum(e["execution"] == "" for e in history.events)
                if history is not None else 0}

    @staticmethod
    def _read_items_here(parameters: dict[str, Any]) -> str:
        """The job list a Distributed Map's ItemReader names (``Bucket``, ``Key``: a local
        work folder's has a placeholder bucket), read from the work location in this process
        (the direct interpreter's ItemReader: no moto mock here)."""
        from pipeline.adapters import storage

        return storage.read_text(JobList(parameters["Bucket"], parameters["Key"]).url)

    def _run_moto(self, execution_input: dict[str, Any], name: str, poll: float) -> Execution:
        from pipeline.engine.moto_run import run_on_moto  # (moto's runs only)

        assert self.pool is not None  # moto runs are never inline
        return run_on_moto(self.pool, self.listener, self.map_threads, self.definition_text,
                           execution_input, name, poll, lambda: self._aborted,
                           history=self.history, grace=STOP_GRACE_S)
