"""moto's Step Functions interpreter, patched while a local run lasts: lean for large
Distributed Maps, quicker to start. :func:`lean_interpreter` applies every patch and puts
moto's own code back afterwards; :func:`end_signal` lets the engine wait for an execution's
end instead of polling. Used by :mod:`pipeline.engine.local` only.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


# --- moto's interpreter, made lean for large Distributed Maps ---------------------------------
#
# Checked against moto 5.2.5 (moto/stepfunctions/parser/..., ported from LocalStack). moto runs
# a Distributed Map's children as frames of the parent execution, in threads: it stores no
# child execution records, and per map run only one MapRunRecord (the item counts) and the
# map state's events in the parent's history. What grows with the number of items is:
#   1. threads in flight: a map run starts MaxConcurrency worker threads (up to 1000 in our
#      definition, even for 4 items), and every item in flight holds two more threads (its
#      program, its task's timeout guard) and its Environment frames and deep copies of its
#      state. Our pool runs ``workers`` handlers at a time, so the others only wait: up to
#      1000 items per map run, ~3 threads each;
#   2. DistributedItemProcessorWorker._eval_pool recurses once per item a worker thread takes,
#      and each level keeps the finished item's frame alive until the worker ends (and with
#      few threads for many items it would reach the recursion limit);
#   3. the map run's EventManager keeps every child event (~5 per item) until the map ends,
#      though nothing can read it: moto's API shows only the parent's history;
#   4. moto.stepfunctions.parser.utils.TMP_THREADS: every thread moto starts is appended to
#      this module-level list, which nothing reads or clears, for the life of the process;
#   5. every Lambda task creates a new boto3 client (boto_client_for): about half of the
#      engine's CPU per iteration.
# Measured with a no-op chain: the engine's peak RSS went 245 -> 327 -> 370 MB for 30, 500 and
# 2000 items, and its CPU per iteration was 16 ms; with the patches below, 245 MB flat and
# 8 ms. What costs time once per run, before the first task (~2 s of a tiny run's ~2.3 s):
#   6. importing the interpreter imports moto's Batch backend (for one enum), hence its EC2
#      backend, whose region table loads EC2's botocore model three times: ~0.35 s;
#   7. every botocore session parses botocore's JSON data again (the engine's, moto's, and
#      boto3's default session that the first Lambda task makes: ~0.2 s on its own);
#   8. LocalEngine.run polled the execution's status: up to ``poll`` late at its end;
#   9. the definition is parsed twice (validated by create_state_machine, then executed).
# And one for safety: 10. an exception escaping moto's execution thread left the execution
# RUNNING for ever; it is recorded, and the engine stops with it. And one for reach: 11. the
# Jobs map's ItemReader reads moto's in-process S3, which holds no work files. And one for
# fidelity: 12. the context object's Execution.StartTime is a datetime, not ISO 8601 text.
# The patches last for LocalEngine.run only, and put moto's own code back afterwards (6 is an
# import, and leaves moto.batch unimported, as it was). Each checks what it replaces (names
# and signatures) first; if moto changed, it logs a warning and the run goes on without it:
# correct, only heavier or slower.

#: moto version the patches were written against (they check what they use, not this)
MOTO_CHECKED = "5.2.5"
_MOTO_PREFIX = "moto.stepfunctions."
MAP_ITERATION = "moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration"


class MotoChanged(Exception):
    """What a patch needs is not in this moto as it was in :data:`MOTO_CHECKED`."""


def _require(obj: Any, name: str, params: tuple[str, ...] | None = None) -> Any:
    """``obj.name``, checking it exists (and its parameters are ``params``) or MotoChanged."""
    value = getattr(obj, name, None)
    if value is None:
        raise MotoChanged(f"{getattr(obj, '__name__', obj)}.{name} is missing")
    if params is not None:
        got = tuple(inspect.signature(value).parameters)
        if got != params:
            raise MotoChanged(f"{getattr(obj, '__name__', obj)}.{name}{got}: expected {params}")
    return value


class Patches:
    """Attributes replaced while a run lasts, put back (or deleted, if they were inherited)
    in reverse order by :meth:`restore`."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, bool, Any]] = []
        self._sweeps: list[tuple[str, Any, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        own = vars(owner)
        self._undo.append((owner, name, name in own, own.get(name)))
        setattr(owner, name, value)

    def rebind(self, name: str, original: Any, replacement: Any) -> None:
        """Replace ``original`` under ``name`` in every moto Step Functions module that
        imported it (``from ... import name``); modules first imported during the run take the
        replacement from its home module, and :meth:`restore` sweeps them too."""
        for module in _moto_modules():
            if vars(module).get(name) is original:
                self.set(module, name, replacement)
        self._sweeps.append((name, original, replacement))

    def restore(self) -> None:
        while self._undo:
            owner, name, had, old = self._undo.pop()
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
        for name, original, replacement in self._sweeps:
            for module in _moto_modules():
                if vars(module).get(name) is replacement:
                    setattr(module, name, original)
        self._sweeps.clear()


def _moto_modules() -> list[Any]:
    return [m for n, m in list(sys.modules.items())
            if n.startswith(_MOTO_PREFIX) and m is not None]


def _share_boto_clients(patches: Patches) -> None:
    """(5) One boto3 client per (region, service, role) for the run instead of one per task
    call. moto's boto_client_for ignores the credentials (it signs with fake keys); the role
    is in the key all the same. botocore clients are thread-safe once created."""
    from moto.stepfunctions.parser.asl.utils import boto_client

    original = _require(boto_client, "boto_client_for",
                        ("region", "service", "state_credentials"))
    clients: dict[tuple[str, str, Any], Any] = {}
    lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        role = getattr(state_credentials, "role_arn", None)
        if state_credentials is not None and not isinstance(role, str):  # unknown: no cache
            return original(region=region, service=service, state_credentials=state_credentials)
        key = (region, service, role)
        with lock:
            client = clients.get(key)
            if client is None:
                client = clients[key] = original(region=region, service=service,
                                                 state_credentials=state_credentials)
        return client

    patches.rebind("boto_client_for", original, boto_client_for)


class ThreadsNotKept(list):  # type: ignore[type-arg]
    """Stands for moto's TMP_THREADS: a list that keeps nothing appended to it."""

    def append(self, item: Any) -> None:
        pass


def _forget_threads(patches: Patches) -> None:
    """(4) moto appends every thread it starts to TMP_THREADS and never reads it (in moto
    5.2.5; LocalStack joins them at shutdown): keep none."""
    from moto.stepfunctions.parser import utils

    original = _require(utils, "TMP_THREADS")
    if not isinstance(original, list):
        raise MotoChanged("moto.stepfunctions.parser.utils.TMP_THREADS is not a list")
    patches.rebind("TMP_THREADS", original, ThreadsNotKept())


def _drop_child_history(patches: Patches) -> None:
    """(3) The map run's own EventManager (distributed_iteration_component: ``env.event_manager
    = EventManager()`` for the map run) becomes one that numbers events but stores none. The
    parent's history, which describe_execution and get_execution_history read, is another
    EventManager and is kept whole."""
    dic = importlib.import_module(f"{MAP_ITERATION}.distributed_iteration_component")
    original = _require(dic, "EventManager")
    _require(original, "_publish_history_event",
             ("self", "event_id", "source_event_id", "event_type", "timestamp",
              "event_details"))

    class ChildEventManager(original):  # type: ignore[misc, valid-type]
        def _publish_history_event(self, *args: Any, **kwargs: Any) -> None:
            pass

    patches.set(dic, "EventManager", ChildEventManager)


def _bound_map_workers(patches: Patches, threads: int) -> None:
    """(1) and (2): a Distributed Map run starts at most ``threads`` worker threads (moto
    starts MaxConcurrency of them); each takes items until none are left, in a loop instead of
    moto's recursion, so a finished item's frame is freed at once. MaxConcurrency stays what
    the map run reports: it is an upper bound, and our pool runs ``workers`` at a time anyway.
    """
    from moto.stepfunctions.parser.asl.eval.environment import Environment

    dic = importlib.import_module(f"{MAP_ITERATION}.distributed_iteration_component")
    dipw = importlib.import_module(
        f"{MAP_ITERATION}.itemprocessor.distributed_item_processor_worker")
    job = importlib.import_module(f"{MAP_ITERATION}.job")

    component = _require(dic, "DistributedIterationComponent")
    worker = _require(dipw, "DistributedItemProcessorWorker")
    launch = _require(component, "_launch_worker", ("self", "env", "eval_input", "job_pool"))
    if "_eval_pool" not in vars(worker):
        raise MotoChanged("DistributedItemProcessorWorker._eval_pool is not its own")
    _require(worker, "_eval_pool", ("self", "job", "worker_frame"))
    _require(worker, "_eval_job", ("self", "env", "job"))
    _require(worker, "stopped")
    _require(Environment, "open_inner_frame")
    _require(Environment, "delete_frame")
    _require(job.JobPool, "next_job")
    _require(job.JobPool, "close_job")

    started: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
    lock = threading.Lock()

    def _launch_worker(self: Any, env: Any, eval_input: Any, job_pool: Any) -> Any:
        with lock:  # _map_run calls this MaxConcurrency times; the return value is unused
            n = started.get(job_pool, 0)
            if n >= threads:
                return None
            started[job_pool] = n + 1
        return launch(self, env=env, eval_input=eval_input, job_pool=job_pool)

    def _eval_pool(self: Any, job: Any, worker_frame: Any) -> None:
        # moto 5.2.5's DistributedItemProcessorWorker._eval_pool, with its tail recursion
        # turned into a loop (same calls, same order).
        while job is not None:
            job_frame = worker_frame.open_inner_frame()
            self._eval_job(env=job_frame, job=job)
            worker_frame.delete_frame(job_frame)
            del job_frame
            if isinstance(job.job_output, Exception) or self.stopped():
                break
            next_job = self._job_pool.next_job()
            if next_job is None:
                break
            self._job_pool.close_job(job)
            job = next_job
        # The frame is closed before the job: map states wait for jobs, not for workers.
        self._env.delete_frame(worker_frame)
        if job is not None:
            self._job_pool.close_job(job)

    patches.set(worker, "_eval_pool", _eval_pool)
    patches.set(component, "_launch_worker", _launch_worker)


#: moto's Step Functions interpreter (what create_state_machine imports), and its one module
#: that imports moto's Batch backend
INTERPRETER = "moto.stepfunctions.parser.models"
BATCH_TASK = ("moto.stepfunctions.parser.asl.component.state.exec.state_task.service."
               "state_task_service_batch")


def _batch_modules() -> list[str]:
    return [n for n in list(sys.modules) if n == "moto.batch" or n.startswith("moto.batch.")]


def import_interpreter(patches: Patches, target: str = INTERPRETER) -> None:
    """(6) Import moto's interpreter without moto's Batch backend. Its Batch task imports only
    ``moto.batch.utils.JobStatus`` (a str Enum), but importing ``moto.batch`` runs its
    ``__init__``, which imports the Batch, EC2 and ECS backends. While the interpreter is
    imported, ``moto.batch`` is an uninitialised package (its submodules import as usual);
    afterwards it and its submodules are taken out of sys.modules, so whoever imports
    ``moto.batch`` later gets moto's own, whole. The Batch task keeps its JobStatus, the same
    class. If anything needed more of moto.batch, all is taken out again and MotoChanged is
    raised: the interpreter is then imported as moto does it, where it is first needed. (While
    this runs, another thread that imports moto.batch would get the uninitialised package:
    the engine's process imports nothing else meanwhile.)"""
    import importlib.util

    if target in sys.modules or BATCH_TASK in sys.modules or "moto.batch" in sys.modules:
        return  # imported already (or Batch is): nothing to save
    spec = importlib.util.find_spec("moto.batch")
    if spec is None or not spec.submodule_search_locations:
        raise MotoChanged("moto.batch is not a package")
    sys.modules["moto.batch"] = importlib.util.module_from_spec(spec)  # not executed
    try:
        importlib.import_module(target)
    except ImportError as exc:
        raise MotoChanged(f"importing {target} needs more of moto.batch: {exc}") from exc
    finally:
        for name in _batch_modules():
            del sys.modules[name]


def _share_botocore_loader(patches: Patches) -> None:
    """(7) Every botocore session created during the run reads botocore's data (service
    models, endpoints, partitions) through one Loader per data path, as the clients of one
    session always do, instead of parsing the JSON again: the engine's session, the one moto
    keeps for its region lists, boto3's default session that moto's first Lambda task makes
    (~0.2 s on the way to the first invoke), and EC2's three if moto.batch is imported after
    all. A Loader only caches what it reads and returns, so sharing it changes no result;
    sessions made during the run keep using it afterwards."""
    import botocore.session
    from botocore import loaders

    original = _require(loaders, "create_loader", ("search_path_string",))
    if vars(botocore.session).get("create_loader") is not original:
        raise MotoChanged("botocore.session does not create its loader with create_loader")
    shared: dict[str | None, Any] = {}
    lock = threading.Lock()

    def create_loader(search_path_string: str | None = None) -> Any:
        with lock:
            loader = shared.get(search_path_string)
            if loader is None:
                loader = shared[search_path_string] = original(search_path_string)
            # every boto3.Session appends boto3's data folder to its loader's search paths:
            # keep each path once, however many sessions share the loader
            paths = loader.search_paths
            if isinstance(paths, list) and len(set(paths)) != len(paths):
                paths[:] = list(dict.fromkeys(paths))
        return loader

    patches.set(botocore.session, "create_loader", create_loader)


def _parse_once(patches: Patches) -> None:
    """(9) create_state_machine parses the definition to validate it and throws the program
    away; the execution then parses the same text again (~0.15 s with ANTLR's Python
    runtime). The program a validation built is kept and handed, once, to the next parse of
    the same text; it has never been evaluated, so it is what that parse would build."""
    parse_module = importlib.import_module("moto.stepfunctions.parser.asl.parse.asl_parser")
    models = importlib.import_module(INTERPRETER)
    parser = _require(parse_module, "AmazonStateLanguageParser")
    backend = _require(models, "StepFunctionsParserBackend")
    if not isinstance(vars(parser).get("parse"), staticmethod):
        raise MotoChanged("AmazonStateLanguageParser.parse is not its own staticmethod")
    if not isinstance(vars(backend).get("_validate_definition"), staticmethod):
        raise MotoChanged("StepFunctionsParserBackend._validate_definition is not its own "
                          "staticmethod")
    parse = _require(parser, "parse", ("definition",))
    validate = _require(backend, "_validate_definition", ("definition",))
    validated: dict[str, Any] = {}  # definition -> (program, tree), not yet handed out
    lock = threading.Lock()
    validating = threading.local()

    def parse_once(definition: str) -> Any:
        if getattr(validating, "on", False):
            result = parse(definition)
            with lock:
                validated[definition] = result
            return result
        with lock:
            result = validated.pop(definition, None)
        return parse(definition) if result is None else result

    def validate_definition(definition: str) -> Any:
        validating.on = True
        try:
            return validate(definition)
        finally:
            validating.on = False

    patches.set(parser, "parse", staticmethod(parse_once))
    patches.set(backend, "_validate_definition", staticmethod(validate_definition))


def _signal_the_end(patches: Patches, ended: threading.Event) -> None:
    """(8) ``ended`` is set when an execution's worker thread has recorded how it ended
    (BaseExecutionWorkerCommunication.terminated), so run() need not sleep between polls."""
    execution = importlib.import_module("moto.stepfunctions.parser.backend.execution")
    comm = _require(execution, "BaseExecutionWorkerCommunication")
    if "terminated" not in vars(comm):
        raise MotoChanged("BaseExecutionWorkerCommunication.terminated is not its own")
    terminated = _require(comm, "terminated", ("self",))

    def signalled(self: Any) -> None:
        try:
            terminated(self)
        finally:
            ended.set()

    patches.set(comm, "terminated", signalled)


def _watch_crashes(patches: Patches, crashes: list[BaseException]) -> None:
    """(10) An exception that escapes an execution's worker thread (moto's interpreter failing,
    not a state failing: those end the execution as FAILED) is appended to ``crashes``.
    Without this, such an execution stays RUNNING for ever and the run waits for it."""
    module = importlib.import_module("moto.stepfunctions.parser.backend.execution_worker")
    worker = _require(module, "ExecutionWorker")
    logic = _require(worker, "_execution_logic", ("self",))

    def guarded(self: Any) -> None:
        try:
            logic(self)
        except Exception as exc:  # noqa: BLE001 - reported by the engine (EngineError)
            crashes.append(exc)

    patches.set(worker, "_execution_logic", guarded)


def _start_time_as_text(patches: Patches) -> None:
    """(12) The context object's ``Execution.StartTime`` is ISO 8601 text, as on AWS, not
    moto's datetime, which a state may copy into the output (``"t.$":
    "$$.Execution.StartTime"``): describe_execution then failed with "Object of type
    datetime is not JSON serializable"."""
    import datetime

    from pipeline.engine.direct import iso_time

    module = importlib.import_module("moto.stepfunctions.parser.backend.execution_worker")
    worker = _require(module, "ExecutionWorker")
    environment = _require(worker, "_get_evaluation_environment", ("self",))

    def _get_evaluation_environment(self: Any) -> Any:
        env = environment(self)
        execution = env.states.context_object.context_object_data["Execution"]
        if isinstance(execution.get("StartTime"), datetime.datetime):
            execution["StartTime"] = iso_time(execution["StartTime"])
        return env

    patches.set(worker, "_get_evaluation_environment", _get_evaluation_environment)


def start_time_as_text() -> AbstractContextManager[bool | None]:
    """While the block runs, ``$$.Execution.StartTime`` is text (see
    :func:`_start_time_as_text`); yields None (logged) if moto changed and it cannot be."""
    return _one_patch("Execution.StartTime as text", _start_time_as_text, True)


ITEM_READER_S3 = ("moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader."
                  "eval.resource_eval_s3")


def _read_items_with(patches: Patches, read: Callable[[dict[str, Any]], str]) -> None:
    """(11) A Distributed Map's ItemReader (``s3:getObject``) gets the object's text from
    ``read(parameters)`` instead of moto's in-process S3: the job list PlanRun wrote is in
    the run's work location (a local folder, or a bucket the workers reach and moto's mock
    does not)."""
    module = importlib.import_module(ITEM_READER_S3)
    evaluator = _require(module, "ResourceEvalS3")
    if not isinstance(vars(evaluator).get("_handle_get_object"), staticmethod):
        raise MotoChanged("ResourceEvalS3._handle_get_object is not its own staticmethod")
    _require(evaluator, "_handle_get_object", ("env", "resource_runtime_part",
                                               "state_credentials"))

    def _handle_get_object(env: Any, resource_runtime_part: Any, state_credentials: Any
                           ) -> None:
        parameters = env.stack.pop()
        env.stack.append(read(parameters))

    patches.set(evaluator, "_handle_get_object", staticmethod(_handle_get_object))


def item_reader(read: Callable[[dict[str, Any]], str]) -> AbstractContextManager[bool | None]:
    """While the block runs, ItemReader objects are read by ``read`` (see
    :func:`_read_items_with`); yields None (logged) if moto changed and they cannot be."""
    return _one_patch("ItemReader from the work location",
                      lambda p: _read_items_with(p, read), True)


def _cannot_apply(name: str, exc: Exception) -> None:
    import moto

    log.warning("moto %s is not as the engine expects (checked with %s): %s; running without "
                "the '%s' patch (correct, only heavier or slower)",
                getattr(moto, "__version__", "?"), MOTO_CHECKED, exc, name)


_MOTO_CHANGES = (MotoChanged, ImportError, AttributeError, TypeError, ValueError)


@contextmanager
def _one_patch(name: str, apply: Callable[[Patches], None], value: T) -> Iterator[T | None]:
    """``apply`` while the block runs, which yields ``value``; None (logged) if moto changed
    and the patch cannot be applied."""
    patches = Patches()
    applied = True
    try:
        try:
            apply(patches)
        except _MOTO_CHANGES as exc:
            _cannot_apply(name, exc)
            applied = False
        yield value if applied else None
    finally:
        patches.restore()


def end_signal() -> AbstractContextManager[threading.Event | None]:
    """While the block runs, the yielded event is set whenever an execution ends (see
    :func:`_signal_the_end`); None (logged) if moto changed and it cannot be."""
    ended = threading.Event()
    return _one_patch("execution end signal", lambda p: _signal_the_end(p, ended), ended)


def crash_watch() -> AbstractContextManager[list[BaseException] | None]:
    """While the block runs, the yielded list collects the exceptions that stopped an
    execution's worker thread (see :func:`_watch_crashes`); None (logged) if moto changed."""
    crashes: list[BaseException] = []
    return _one_patch("execution crash watch", lambda p: _watch_crashes(p, crashes), crashes)


@contextmanager
def lean_interpreter(map_threads: int) -> Iterator[list[str]]:
    """moto's interpreter with the patches above while the block runs; yields the names of the
    patches that could not be applied (each was logged)."""
    patches = Patches()
    skipped: list[str] = []
    steps: list[tuple[str, Callable[[Patches], None]]] = [
        # these two first: the other steps import parts of moto's interpreter
        ("one botocore loader", _share_botocore_loader),
        ("interpreter without moto.batch", import_interpreter),
        ("shared boto3 clients", _share_boto_clients),
        ("no thread registry", _forget_threads),
        ("no child event history", _drop_child_history),
        ("bounded map worker threads", lambda p: _bound_map_workers(p, map_threads)),
        ("one parse per definition", _parse_once),
    ]
    try:
        for name, apply in steps:
            try:
                apply(patches)  # each looks everything up before it changes anything
            except _MOTO_CHANGES as exc:
                skipped.append(name)
                _cannot_apply(name, exc)
        yield skipped
    finally:
        patches.restore()
