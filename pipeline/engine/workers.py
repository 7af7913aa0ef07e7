"""A pool of worker processes that run the Lambda handlers, as Lambda would.

A handler's exception becomes an error record named after its class (Lambda's
``errorType``); a worker that dies becomes ``WorkerCrashedError`` and the pool is rebuilt.
A stopped run stops its workers (:meth:`WorkerPool.stop`): they ignore SIGINT and SIGHUP (a
terminal's Ctrl-C or hang-up reaches the whole process group; the engine decides) and stop
their task on SIGTERM,
its step's own clean-up run (:class:`WorkerStopped`); multiprocessing's resource tracker is
started with SIGHUP blocked (:func:`_start_resource_tracker`).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import field
from typing import TYPE_CHECKING, Any

from pipeline.core.constants import BLAS_THREADS_ENV, TILE_THREADS_ENV, env_int
from pipeline.core.record import record
from pipeline.errors import OutOfMemoryError, TiffpipeError, TooManyOpenFilesError, exhausted

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

_env: dict[str, str] = {}
#: in a worker process: the task it runs now ("function.action"), else None (see _on_sigterm)
_task: str | None = None
_in_worker = False
#: in a worker process: SIGTERM has stopped a task; it runs no other (see _invoke)
_stopped = False
#: seconds a stopped pool's workers have to end their tasks before they are killed
STOP_WAIT_S = 10.0


class WorkerStopped(BaseException):
    """Raised in a worker's task by SIGTERM (the engine stops its run, or someone stops it):
    the step unwinds through its own clean-up (a temporary output removed, an upload
    aborted), and, a BaseException, records no error of its own. The task then fails as
    ``WorkerCrashedError`` (retried, as a killed worker's task, unless the run is stopping)."""


#: glibc malloc arenas a process running tasks may create (see :func:`tune_malloc`)
MALLOC_ARENAS = 2
#: allocations from this size up get pages of their own (mmap) instead of the heap's
MALLOC_MMAP_THRESHOLD = 16 * 2**20
#: free memory at the heap's top kept for reuse up to this much, not returned at once
MALLOC_TRIM_THRESHOLD = 32 * 2**20
# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc(arenas: int = MALLOC_ARENAS) -> bool:
    """Set glibc's malloc up for a process that runs tasks (Linux with glibc only, else
    nothing: False); it lasts as long as the process.

    - At most ``arenas`` arenas (``M_ARENA_MAX``). By default each thread that allocates may
      get an arena of its own (up to 8 per core), and a unit's tile and decode threads,
      freeing tiles allocated by other threads, left freed memory spread over many: at 1 Gpx
      the engine's peak RSS was 177-181 MB with the default and 135-138 MB with 2 arenas,
      at the same speed. This must come before the process's threads have made their
      arenas (glibc fixes the limit the first time it needs it).
    - Windows, decoded segments and output tiles (up to a few MB each) come from the heap
      and their memory is kept for the next ones (``M_MMAP_THRESHOLD`` 16 MB,
      ``M_TRIM_THRESHOLD`` 32 MB), instead of glibc's default of fresh pages (mmap) for
      anything above 128 KB at first, whose page faults were ~7% of a run's CPU on pages of
      512 x 512. Measured alternately (6 runs each): pages of 3-20 Mpx 3-9% faster, 1 Mpx
      and 1 Gpx the same; the largest process 0-6 MB larger.
    """
    mallopt = _glibc("mallopt")  # musl and others: no mallopt, or no arenas to cap
    if mallopt is None:
        return False
    return (bool(mallopt(_M_ARENA_MAX, arenas))
            and bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))
            and bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)))


def _glibc(name: str) -> Any:
    """The C library's function ``name`` on Linux, or None (another platform, or a C
    library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _init(env: dict[str, str], engine: int) -> None:
    """Worker start: the user's environment (not the engine's mocked one; OpenBLAS's thread
    count set, before OpenCV's import), capped malloc arenas, one OpenCV thread (the pool
    is the parallelism); SIGINT and SIGHUP ignored and SIGTERM stopping the task
    (:func:`_on_sigterm`);
    the worker ends with its engine's process ``engine`` (:func:`_end_with`)."""
    global _in_worker
    _in_worker = True
    _end_with(engine)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # (not on Windows)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    tune_malloc()
    os.environ.clear()
    os.environ.update(env)
    import cv2

    cv2.setNumThreads(1)


#: how often a worker looks for its engine where no pidfd tells it the engine ended
ENGINE_CHECK_S = 0.2


def _end_with(engine: int) -> None:
    """End this worker process at once when the engine's process ``engine`` (its parent)
    ends, however it ends: a command stopped by a signal stops its workers itself, but one
    killed outright (``kill -9``, the out-of-memory killer) cannot, and a task still running
    would then publish an output over a later run's, write work files after the next run
    removed them, and keep the command's stdout open (a pipe's reader would wait for ever).
    A thread waits on a pidfd of the engine (Linux 5.3+; elsewhere it checks every
    :data:`ENGINE_CHECK_S`)."""
    watch = None
    with suppress(AttributeError, OSError):
        watch = os.pidfd_open(engine)
    if os.getppid() != engine:  # (checked after the pidfd's open: it is the engine's)
        os._exit(1)
    threading.Thread(target=_watch_engine, args=(engine, watch), daemon=True,
                     name="tiffpipe-engine-watch").start()


def _watch_engine(engine: int, watch: int | None) -> None:
    if watch is not None:
        import select

        select.select([watch], [], [])  # readable once the process has ended
    else:
        while os.getppid() == engine:
            time.sleep(ENGINE_CHECK_S)
    os._exit(1)


def one_blas_thread(env: MutableMapping[str, str]) -> None:
    """OpenBLAS on one thread in a process ``env`` starts (or, ``os.environ``, this process,
    before numpy or OpenCV loads), unless ``env`` sets a count. Each OpenBLAS starts its
    threads when it loads, and they spin before they sleep: ~0.2 CPU-s in all as OpenCV
    loads (``bench/blas_threads.py``), of every command and worker start, taken from the
    tasks' cores (docs/performance-sweep.md, change 49). tiffpipe's only BLAS work is the
    contact sheet's small products; its tile threads are the parallelism, as for OpenCV
    (:func:`one_opencv_thread`)."""
    env.setdefault(BLAS_THREADS_ENV, "1")


#: added to the niceness of the thread that imports the steps when a worker starts (Linux)
WARM_UP_NICENESS = 10


def _import_steps() -> None:
    """Every step module a task may run (the handlers' table, as a Lambda image's init)."""
    from pipeline.core.constants import FUNCTIONS
    from pipeline.handlers import preload

    for function in FUNCTIONS:
        preload(function)


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (unless it runs already) with SIGHUP blocked,
    which it then keeps: the process that unlinks the pool's named semaphores
    (``/dev/shm/sem.mp-*``) once every process of the run has ended. The pool would start it
    itself, and CPython's tracker (``multiprocessing.resource_tracker.main``, 3.11-3.13)
    ignores only SIGINT and SIGTERM: a terminal's hang-up, which reaches the whole process
    group, killed it while the workers (which ignore SIGHUP) and the engine went on; the
    engine then started another, which knew none of the semaphores, printed "process died
    unexpectedly" and a ``KeyError`` traceback for each, and sometimes left them in
    /dev/shm. A blocked signal stays blocked across exec (the tracker unblocks SIGINT and
    SIGTERM only), and is blocked here in this thread alone: the engine still gets its
    SIGHUP (another thread takes it, or this one once it is unblocked)."""
    if not hasattr(signal, "SIGHUP") or not hasattr(signal, "pthread_sigmask"):
        return  # (Windows: no such signal, and no tracker process)
    from multiprocessing import resource_tracker

    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _warm_up() -> None:
    """Import the steps now, not on a worker's first task. The engine sets moto up meanwhile,
    and its setup is what the first task waits for: with a worker per core, the imports
    would take CPU from it. So they run in a thread of lower priority (Linux sets niceness
    per thread; that thread ends with the imports, and the handlers run at the worker's own
    priority; the steps' imports start no threads that would inherit it). Measured with 2
    workers on 2 cores: the first task starts ~0.1 s sooner (of ~1 s). The cost: a task that
    comes before the imports are done waits for them at their priority."""
    if not sys.platform.startswith("linux"):
        _import_steps()
        return
    failed: list[BaseException] = []

    def imports() -> None:
        try:
            thread = threading.get_native_id()
            niceness = os.getpriority(os.PRIO_PROCESS, thread) + WARM_UP_NICENESS
            os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness))
        except OSError:
            pass  # at the worker's priority, then
        try:
            _import_steps()
        except BaseException as exc:  # noqa: BLE001 - raised in the worker's thread below
            failed.append(exc)

    thread = threading.Thread(target=imports, name="tiffpipe-warm-up")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _on_sigterm(signum: int, _: Any) -> None:
    """SIGTERM in a worker: an idle worker exits (nothing to clean up); a task stops once,
    with :class:`WorkerStopped` in the worker's main thread, which runs it, and its tile
    threads stop at their next tile (:mod:`pipeline.steps.stopping`), as on any error.
    Only the first SIGTERM of a task does anything (the engine sends it again and again
    while it waits for the worker to end): marked first, so that one coming while the
    first is handled (a handler interrupts its own thread) never waits for the lock of
    ``stopping.request``'s Event, which the handler it interrupted may hold (for ever)."""
    global _stopped
    if _task is None:
        os._exit(128 + signum)
    first, _stopped = not _stopped, True
    if first:
        from pipeline.steps import stopping

        stopping.request()
        raise WorkerStopped(f"worker process {os.getpid()} was stopped "
                            f"({signal.Signals(signum).name}) while it ran {_task}")


def _invoke(function: str, event: dict[str, Any], peak: bool = True
            ) -> tuple[bool, dict[str, Any], int, int]:
    """Run one handler; never raise (exceptions are returned as Lambda error payloads). With
    ``peak``, the process's peak RSS is read afterwards (a worker's, for the run's result;
    0 without)."""
    global _task
    from pipeline.handlers import dispatch

    if _stopped:  # a worker stopped by SIGTERM runs no other task: it ends, as killed
        os._exit(128 + signal.SIGTERM)
    try:
        if _in_worker:
            _task = f"{function}.{event.get('action')}"
        ok, payload = True, dispatch(function, event)
    except WorkerStopped as exc:
        ok, payload = False, {"errorType": "WorkerCrashedError", "errorMessage": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a Lambda error
        ok, payload = False, error_payload(exc, function, event)
    finally:
        _task = None
    return ok, payload, os.getpid(), peak_rss_kb() if peak else 0


def error_payload(exc: BaseException, function: str, event: Any) -> dict[str, Any]:
    """The Lambda error payload of a task's exception: named after its class, or, for a
    task that ran out of memory, threads or open files, :class:`OutOfMemoryError` or
    :class:`TooManyOpenFilesError` naming the task, its job's input and page, and what to
    do (:func:`~pipeline.errors.exhausted`). Short of memory itself, it still gives one."""
    try:
        named = None  # (where the task works, its plan read, only for such an error)
        if isinstance(exc, Exception) and exhausted(exc) is not None:
            named = exhausted(exc, task_where(function, event))
        shown = named or exc
        try:
            stack = traceback.format_exception(exc)[-20:]
        except Exception:  # noqa: BLE001 - (out of memory) the error without its stack
            stack = []
        return {"errorType": type(shown).__name__, "errorMessage": str(shown),
                "stackTrace": stack}
    except Exception:  # noqa: BLE001 - out of memory: what can be said
        return {"errorType": type(exc).__name__, "errorMessage": ""}


def task_where(function: str, event: Any) -> str:
    """Where a task works, for its error's message
    (:func:`pipeline.steps.common.task_where`)."""
    try:
        from pipeline.steps.common import task_where as where
    except Exception:  # noqa: BLE001 - (no memory to import it) what the event says
        return f"{function} task"
    return where(function, event)


def _read_text(url: str) -> str:
    from pipeline.adapters import storage

    return storage.read_text(url)


def peak_rss_kb() -> int:
    """Peak resident memory of this process in KiB: VmHWM, which (unlike ru_maxrss) is not
    inherited from the parent across fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_tile_threads(workers: int, cores: int | None = None) -> int:
    """Tile threads of each worker (``TIFFPIPE_TILE_THREADS``, see steps/common.py): twice its
    share of the cores, at most all of them. With one share only, a job with fewer units than
    workers (a single page, a job's last units) leaves cores idle; with twice the share, a
    worker alone uses them, and all workers busy oversubscribe the cores only twofold
    (measured on 2 cores, 2 workers: a one-unit 256 Mpx job 7.3 -> 4.7 s; the six-unit 1 GB
    RGB jobs no slower, a few tiles more in memory per worker)."""
    from pipeline.steps.common import usable_cores

    cores = cores or usable_cores()
    return max(1, min(cores, 2 * cores // max(1, workers)))


@contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread while the block runs, as in the workers (:func:`_init`): the
    tile threads are the parallelism, and OpenCV's own threads on top of them only
    oversubscribe the cores. Its thread count is put back afterwards."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class InProcess:
    """``invoke(function, event)`` in this process (the engine's): tasks that would otherwise
    wait for a worker to start. The caller bounds how many run at once."""

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        ok, payload, _, _ = _invoke(function, event, peak=False)  # the engine's own: not a worker
        return ok, payload


@record
class WorkerPool:
    """``invoke(function, event)`` runs a handler in a worker process and returns
    ``(ok, payload)``. Thread-safe: the engine's Map threads call it concurrently. ``lazy``:
    the workers start at :meth:`start` or the first invoke (a run that never needs them
    never pays for them), else at once. :attr:`warm` counts the workers that have started
    and imported the steps: a caller that can run a task elsewhere meanwhile (the engine's
    own process) need not queue it behind a worker's start."""

    workers: int
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    peaks_kb: dict[int, int] = field(default_factory=dict)  # worker pid -> peak RSS
    lazy: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.warm = 0
        self._on_warm: Callable[[], None] | None = None
        self._stopping = False  # stop(): no task starts, no pool is (re)built
        self._stopped: list[Any] = []  # the worker processes stop() signalled
        #: why no worker could start (TooManyOpenFilesError, OutOfMemoryError; its message
        #: the warning), else None: the engine then runs its tasks in its own process, and a
        #: task that needs a worker (user code) fails with this
        self.failed: TiffpipeError | None = None
        self._pool: ProcessPoolExecutor | None = None if self.lazy else self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor | None:
        """A pool of :attr:`workers` started processes; fewer, with a warning, when the
        process's limit of open files leaves room for fewer (each costs the engine a few
        descriptors: :data:`FDS_PER_WORKER`) or starting one fails for want of files or
        memory; None (:attr:`failed` says why) when none can start."""
        wanted = self.workers
        workers = min(wanted, _workers_the_files_allow())
        why = "" if workers == wanted else "too many open files"
        while workers >= 1:
            try:
                pool = self._started_pool(workers)
            except _StartFailed as failure:
                workers, why = failure.started // 2, failure.why
                continue
            if workers < wanted:
                self.workers = workers
                self._warn_fewer(wanted, workers, why)
            return pool
        self.failed = self._warn_fewer(wanted, 0, why or "too many open files")
        return None

    def _warn_fewer(self, wanted: int, workers: int, why: str) -> TiffpipeError:
        """Warn that the pool runs ``workers`` of the ``wanted`` workers (0: none), and
        return the warning as the error of its cause (TooManyOpenFilesError,
        OutOfMemoryError)."""
        from pipeline.errors import OUT_OF_MEMORY_HINT, in_callers_words, open_files_limit

        # said in the words of the run's caller (``--workers``, ``workers``): its own words
        # only, not ``why`` (an error's text, which may name a path)
        error: type[TiffpipeError] = OutOfMemoryError
        if why == "too many open files":
            error = TooManyOpenFilesError
            now, higher = open_files_limit()
            cause = (f"the process's limit of open files ({now}) leaves too few for them: "
                     f"raise it in the shell that runs tiffpipe ({higher}, as its hard "
                     f"limit allows), {in_callers_words('or give fewer --workers')}")
        else:
            cause = f"{why}: {in_callers_words(OUT_OF_MEMORY_HINT)}"
        # (a lazy pool's engine process runs tasks too, one of the --workers: the pool is
        # one less)
        own = 1 if self.lazy else 0
        what = (f"with {workers + own} of the {wanted + own} --workers"
                + (f" (the engine's process and {workers} worker process(es))" if own else "")
                if workers else
                "without worker processes (the engine's process runs every task)")
        message = f"{in_callers_words(f'the run goes on {what}')}: {cause}"
        import logging

        logging.getLogger(__name__).warning("%s", message)
        return error(message)

    def _started_pool(self, workers: int) -> ProcessPoolExecutor:
        """A pool of ``workers`` processes, each started (a submit each); _StartFailed (the
        processes started meanwhile ended) when one cannot start for want of files or
        memory."""
        # imported here: a run of short tasks never starts the pool, and multiprocessing's
        # import (~10 ms) is then part of every command's start for nothing
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        env = dict(self.env)
        if env_int(TILE_THREADS_ENV, env) is None:  # (unset, or no number: warned of)
            env[TILE_THREADS_ENV] = str(worker_tile_threads(workers))
        one_blas_thread(env)  # set before _init imports OpenCV
        started = 0
        pool = None
        try:
            _start_resource_tracker()
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                       initargs=(env, os.getpid()))
            self.warm = 0
            # start every worker and import the steps now, not on its first task
            with _main_without_a_file():
                for _ in range(workers):
                    pool.submit(_warm_up).add_done_callback(
                        lambda _, p=pool: self._warmed(p))
                    started += 1
                _start_every_process(pool, workers)  # (here, without __file__: see there)
        except (OSError, MemoryError, RuntimeError) as exc:
            named = exhausted(exc)
            if named is None:
                raise
            if pool is not None:
                _end_pool(pool)
            raise _StartFailed(started, "too many open files"
                               if isinstance(named, TooManyOpenFilesError)
                               else f"out of memory ({type(exc).__name__}: {exc})") from exc
        return pool

    def _warmed(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if pool is not self._pool and self._pool is not None:
                return  # a pool since replaced
            self.warm = min(self.workers, self.warm + 1)
            on_warm = self._on_warm
        if on_warm is not None:
            on_warm()

    def start(self, on_warm: Callable[[], None] | None = None) -> None:
        """Start the workers without waiting for them; ``on_warm()`` is called (in another
        thread) each time one is ready. None may start (:attr:`failed`): then it warns."""
        with self._lock:
            self._on_warm = on_warm
            if self._pool is None and not self._stopping and self.failed is None:
                self._pool = self._new_pool()

    @property
    def started(self) -> bool:
        """Whether the worker processes have been started."""
        return self._pool is not None

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        from concurrent.futures import CancelledError
        from concurrent.futures.process import BrokenProcessPool

        with self._lock:
            if self._stopping:
                return self._stopped_task(function, event)
            if self._pool is None and self.failed is None:
                self._pool = self._new_pool()
            pool = self._pool
        if pool is None:
            return False, {"errorType": "WorkerCrashedError" if self.failed is None else
                           type(self.failed).__name__,
                           "errorMessage": f"{task_where(function, event)} needs a worker "
                                          f"process, and none could start: {self.failed}"}
        try:
            ok, payload, pid, peak = self._result(pool, pool.submit(_invoke, function, event))
        except _PoolThreadDied as exc:  # its results are lost: a new pool for the next
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            _end_pool(pool)
            return False, {"errorType": "OutOfMemoryError",
                           "errorMessage": f"{task_where(function, event)}: {exc}"}
        except BrokenProcessPool as exc:
            unguarded = _unguarded_main(pool)
            with self._lock:
                if self._stopping:  # its workers were stopped: no new ones
                    return self._stopped_task(function, event)
                if unguarded is not None:  # each new worker would die the same way
                    first, self.failed = self.failed is None, unguarded
                    if self._pool is pool:
                        self._pool = None
                elif self._pool is pool:  # the first thread to notice rebuilds it
                    self._pool = self._new_pool()
            if unguarded is not None:
                if first:
                    import logging

                    logging.getLogger(__name__).warning(
                        "the worker processes cannot start: %s", unguarded)
                return False, {"errorType": type(unguarded).__name__,
                               "errorMessage": f"{task_where(function, event)} needs a worker "
                                              f"process, and none could start: {unguarded}"}
            _remove_crashed_output(event)
            return False, {"errorType": "WorkerCrashedError",
                           "errorMessage": f"a worker process died while running "
                                          f"{function}.{event.get('action')} ({exc}); it was "
                                          "probably out of memory or killed"}
        except WorkerStopped as exc:  # SIGTERM came as its task ended: raised on its way back
            _remove_crashed_output(event)
            return False, {"errorType": "WorkerCrashedError", "errorMessage": str(exc)}
        except (CancelledError, RuntimeError):  # cancelled, or submitted as the pool shut down
            if not self._stopping:
                raise
            return self._stopped_task(function, event)
        with self._lock:
            self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), peak)
        return ok, payload

    @staticmethod
    def _result(pool: ProcessPoolExecutor, future: Any) -> Any:
        """``future``'s result, or _PoolThreadDied when a thread of this process that
        ``pool`` needs to send the task or bring its result back has died (out of memory:
        the future would never end, and the run would wait for ever)."""
        from concurrent.futures import TimeoutError as FutureTimeout

        while True:
            try:
                return future.result(POOL_THREAD_CHECK_S)
            except FutureTimeout:
                threads = [getattr(pool, "_executor_manager_thread", None),
                           getattr(getattr(pool, "_call_queue", None), "_thread", None)]
                dead = [t for t in threads if t is not None and not t.is_alive()]
                if dead and not future.done() and not getattr(pool, "_shutdown_thread", 0):
                    from pipeline.errors import OUT_OF_MEMORY_HINT, in_callers_words

                    raise _PoolThreadDied(
                        f"the engine's thread that passes tasks to the worker processes "
                        f"({dead[0].name}) ended (a thread ends so when it runs out of "
                        f"memory); {in_callers_words(OUT_OF_MEMORY_HINT)}") from None

    @staticmethod
    def _stopped_task(function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        return False, {"errorType": "WorkerCrashedError",
                       "errorMessage": f"{function}.{event.get('action')} did not run to its "
                                       "end: the worker pool was stopped"}

    def read_text(self, url: str) -> str:
        """The text of a file or S3 object, read by a worker (in the user's environment, which
        reaches the work location; the engine's process is inside moto's mock)."""
        with self._lock:
            pool = self._pool
        return pool.submit(_read_text, url).result()

    def stop(self) -> None:
        """Stop the workers now, without waiting (a stopped run): no task starts in them any
        more, and each gets SIGTERM, which stops its task through the step's own clean-up
        (:class:`WorkerStopped`; an idle worker exits). :meth:`close` waits for them."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            pool = self._pool
            self._stopped = _processes(pool)
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)  # the tasks queued never start
        _signal(self._stopped, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the workers still alive after :meth:`stop` (their tasks would not stop)."""
        _signal(self._stopped, signal.SIGKILL)

    def close(self) -> None:
        """End the workers: at once if the pool was stopped (:meth:`stop`: each has
        :data:`STOP_WAIT_S` to end its task), else once their tasks end; in either case a
        worker still there :data:`STOP_WAIT_S` after that is killed, so that the command's
        exit (multiprocessing waits for its children) never waits for ever on a worker
        that the pool could not tell to end (its thread that does so died)."""
        with self._lock:
            pool, processes, stopping = self._pool, self._stopped, self._stopping
        if pool is None:
            return
        if not stopping:
            processes = _processes(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        # wait for the workers to end (stopped: their tasks), then kill what is left, so that
        # no worker outlives the run (nor writes after the run's clean-up). Stopped: SIGTERM
        # again and again meanwhile: a worker whose task has ended waits for its next one,
        # and exits on it (one still unwinding its task ignores it)
        deadline = time.monotonic() + STOP_WAIT_S
        while (alive := _alive(processes)) and time.monotonic() < deadline:
            if stopping:
                _signal(alive, signal.SIGTERM)
            alive[0].join(0.05)
        _kill(processes)


def _remove_crashed_output(event: dict[str, Any]) -> None:
    """What a task whose worker died left beside its job's output (a merge's temporary
    file), removed before the task is retried (:func:`remove_crashed_output`)."""
    from pipeline.steps.common import remove_crashed_output  # (only after a crash)

    remove_crashed_output(event)


class _StartFailed(Exception):
    """Starting a pool's workers failed for want of files or memory after ``started``."""

    def __init__(self, started: int, why: str):
        super().__init__(why)
        self.started, self.why = started, why


class _PoolThreadDied(Exception):
    """A thread of the engine's process that a ProcessPoolExecutor needs has died."""


#: open files the engine's process needs for each worker process (its pipe and sentinel,
#: and one more while it starts)
FDS_PER_WORKER = 3
#: open files kept for the engine's own work while the workers run (inputs held open,
#: outputs and work files being written, its tile threads' reads)
FDS_KEPT_FOR_THE_ENGINE = 48
#: seconds between checks that the threads a task in a worker needs are alive
POOL_THREAD_CHECK_S = 1.0


def _workers_the_files_allow() -> int:
    """How many workers the process's limit of open files (``ulimit -n``) leaves room for
    beside the files it has open and :data:`FDS_KEPT_FOR_THE_ENGINE`."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < 0:  # unlimited
            return 1 << 30
        in_use = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd")
                                else "/dev/fd"))
    except (OSError, ValueError):
        return 1 << 30
    return max(0, (soft - in_use - FDS_KEPT_FOR_THE_ENGINE) // FDS_PER_WORKER)


#: the exit code of a worker process that stopped as it started, because the script that
#: started the run calls ``pipeline.run`` again when a worker imports it (no ``if __name__
#: == "__main__":`` guard: :func:`pipeline.runner._check_not_a_starting_worker`)
UNGUARDED_MAIN_EXIT = 117


def _unguarded_main(pool: Any) -> TiffpipeError | None:
    """Why the workers of a broken ``pool`` died, if one stopped as it started with
    :data:`UNGUARDED_MAIN_EXIT`: an EngineError saying to guard the script (no worker can
    start; before, each job that needed one failed after its retries, blamed on its custom
    op and said to be transient)."""
    from pipeline.errors import EngineError

    if not any(p.exitcode == UNGUARDED_MAIN_EXIT for p in _processes(pool)):
        return None
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
    return EngineError(
        f"each worker process imports the script that started the run ({main}) again as "
        f"it starts, and that script calls pipeline.run there: guard the script's code "
        f"with if __name__ == '__main__': (move the call under it), then run it again")


@contextmanager
def _main_without_a_file() -> Iterator[None]:
    """While the block starts worker processes: a main module whose ``__file__`` names no
    file (code run from stdin, ``python -``: ``<stdin>``) without it, as an interactive
    session's main module is. A spawned worker runs the file its parent's main module
    names again (``multiprocessing.spawn.get_preparation_data``): one that is not there
    stopped every worker as it started (FileNotFoundError), and every job that needs a
    worker (a custom op) failed after its retries, blamed on its op. The workers need
    nothing of the main module (a custom op's function is imported by its module's name)."""
    from multiprocessing import process

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if (main is None or not isinstance(path, str) or getattr(main, "__spec__", None)
            is not None or os.path.isfile(os.path.join(process.ORIGINAL_DIR or "", path))):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _start_every_process(pool: Any, workers: int) -> None:
    """Start the processes of ``pool`` (a ProcessPoolExecutor of ``workers``) not started
    yet. A spawning pool starts one at a submit only when no worker is idle (CPython's
    ``_adjust_process_count``): a worker that ended its warm-up before the last was
    submitted left a process to start later, at a task's submit, outside
    :func:`_main_without_a_file` (it then died, as every worker did before it). Through the
    pool's own ``_spawn_process``, under its lock, as ``submit`` does (no public way before
    Python 3.14; without it, the pool starts them as before)."""
    spawn, lock = getattr(pool, "_spawn_process", None), getattr(pool, "_shutdown_lock", None)
    if spawn is None or lock is None or not isinstance(getattr(pool, "_processes", None),
                                                       dict):
        return
    with lock:
        while len(pool._processes) < workers:
            spawn()


def _processes(pool: Any) -> list[Any]:
    """The worker processes of a ProcessPoolExecutor (its ``_processes``: no public accessor
    before Python 3.14), which its shutdown clears."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _end_pool(pool: Any) -> None:
    """End a pool that cannot go on (its start failed, or a thread of it died), without
    waiting for it: its workers are killed."""
    processes = _processes(pool)
    with suppress(Exception):
        pool.shutdown(wait=False, cancel_futures=True)
    _kill(processes)


def _kill(processes: list[Any]) -> None:
    """SIGKILL the ones of ``processes`` still alive, and join each (a second at most)."""
    _signal(processes, signal.SIGKILL)
    for process in processes:
        with suppress(Exception):  # (closed: gone)
            process.join(1.0)


def _alive(processes: list[Any]) -> list[Any]:
    """The ones of ``processes`` (multiprocessing.Process) still running."""
    alive = []
    for process in processes:
        try:
            if process.is_alive():
                alive.append(process)
        except ValueError:  # closed: gone
            pass
    return alive


def _signal(processes: list[Any], signum: int) -> None:
    """Send ``signum`` to each of ``processes`` still alive."""
    for process in _alive(processes):
        try:
            os.kill(process.pid, signum)
        except OSError:  # gone meanwhile
            pass
