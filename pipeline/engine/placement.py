"""Where the direct interpreter's heavy tasks run: in the engine's process, or in its pool.

The engine's process is one of the run's workers: it is warm (imports done, the input's
header read), so a heavy task runs there first, and more beside it while their tiles leave
cores free. The pool of worker processes starts only when it pays: a worker's start costs
~0.6 CPU-s of imports taken from the task running here. :class:`Placement` holds that
policy and the accounting it needs (the tasks running where, the cores they keep busy, how
long and how busy this process's stretches of tasks have been); :class:`LocalEngine
<pipeline.engine.local.LocalEngine>` asks it for a slot before each heavy task and hands the
slot back after.
"""

from __future__ import annotations

import threading
import time

from pipeline.engine import direct
from pipeline.engine.workers import WorkerPool

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


class Placement:
    """The slots of heavy tasks: this process's (``engine``) and the pool's (``pool``).

    ``cores``: this machine's usable cores; ``workers``: the run's processes, this one
    included (the most tasks running at once); ``pool``: the worker pool (None: none);
    ``pool_for_all``: whether the pool serves any heavy task (with one worker asked for,
    this process is it, and the pool serves only user code). Thread-safe: the engine's Map
    threads take and release slots; :meth:`abort` wakes the ones waiting.
    """

    def __init__(self, cores: int, workers: int, pool: WorkerPool | None,
                 pool_for_all: bool):
        self.cores, self.workers, self.pool, self.pool_for_all = (cores, workers, pool,
                                                                  pool_for_all)
        self.aborted = False
        self.lock = threading.Condition()
        self.busy = {"engine": 0, "pool": 0}  # tasks running here, in the pool
        self.engine_width = 0  # cores the tasks running here keep busy (their widths)
        self.engine_starts: dict[int, float] = {}  # task -> when it started here
        self.waiting = 0  # heavy tasks waiting for a slot
        # since when this process has run heavy tasks without a break, and its CPU then
        self.stretch_since: float | None = None
        self.engine_cpu_since = 0.0
        # the heavy tasks done here: how many, the seconds of their stretches and the CPU
        # seconds meanwhile (tasks side by side count their common seconds once)
        self.done_here = 0
        self.wall_here = self.cpu_here = 0.0

    def abort(self) -> bool:
        """No slot is given any more; the tasks waiting for one raise
        :class:`direct.Aborted`. False if it was aborted already."""
        with self.lock:
            if self.aborted:
                return False
            self.aborted = True
            self.lock.notify_all()
            return True

    def check(self) -> None:
        if self.aborted:
            raise direct.Aborted("the run was stopped")

    def take(self, engine: bool, width: int, token: int) -> str:
        """``engine`` or ``pool``: where the next heavy task runs, once one is free (this
        process first: it is warm; ``engine=False``: the pool only). A task of ``width``
        cores (its tiles: see ``LocalEngine._width``) joins the ones running here while they
        leave that many free; ``token`` names it until :meth:`release`.

        A task here may already use every core (its tile threads), and a worker's start
        costs ~0.6 CPU-s of imports taken from it, so the pool starts only when it will pay
        (:meth:`pays`). A job of a few short units (a small multi-page file), or of units
        that keep the cores busy, so runs here alone. While the workers start, tasks keep
        taking this process's slot when it frees: a task goes to the pool only once a worker
        is ready, never queueing behind a start while this process idles."""
        deadline = time.monotonic() + POOL_START_AFTER_S
        with self.lock:
            self.waiting += 1
            try:
                while True:
                    self.check()
                    if engine and self._fits(width):
                        self._started(token, width)
                        return "engine"
                    pool = self.pool
                    if pool is not None and pool.failed is not None:
                        if engine:  # no worker could start: this process runs them all
                            pool = None
                        else:  # (user code) fails there, saying why
                            self.busy["pool"] += 1
                            return "pool"
                    usable = pool is not None and (self.pool_for_all or not engine)
                    room = (not engine
                            or self.busy["engine"] + self.busy["pool"] < self.workers)
                    if usable and pool.started and room and self.busy["pool"] < max(
                            pool.warm, 0 if engine else pool.workers):
                        self.busy["pool"] += 1
                        return "pool"
                    if usable and not pool.started and (not engine or self.pays(deadline)):
                        pool.start(on_warm=self.wake)
                        continue
                    # re-check now and then: the work waiting grows with the running task's age
                    self.lock.wait(0.05 if usable and not pool.started else None)
            finally:
                self.waiting -= 1

    def release(self, slot: str, token: int, width: int) -> None:
        """The task that took ``slot`` (:meth:`take`) ended."""
        with self.lock:
            self.busy[slot] -= 1
            if slot == "engine":
                self._done(token, width)
            self.lock.notify_all()

    def wake(self) -> None:
        """Let the waiting tasks look again (a worker is ready)."""
        with self.lock:
            self.lock.notify_all()

    def pays(self, deadline: float) -> bool:
        """Whether starting the pool is worth it now (under the lock): once a task has waited
        until ``deadline``, the waiting tasks hold about :data:`POOL_WORTH_S` of work (their
        number times a heavy task's time here: the mean so far, or the running one's age),
        and the tasks running here leave cores idle (:data:`POOL_BELOW_BUSY`)."""
        now = time.monotonic()
        if now < deadline:
            return False
        # the oldest task running here: its age so far
        running = now - min(self.engine_starts.values(), default=now)
        per_task = max(self.wall_here / self.done_here if self.done_here else 0.0, running)
        if self.waiting * per_task < POOL_WORTH_S:
            return False
        # how busy this process keeps the cores: over its tasks so far and the running ones,
        # once there is a second of them (a unit's first rows, read before its tile threads
        # have work, would say "idle")
        stretch = now - self.stretch_since if self.stretch_since is not None else 0.0
        wall = self.wall_here + stretch
        if wall < BUSY_MEASURED_OVER_S:
            return False
        cpu = self.cpu_here + (time.process_time() - self.engine_cpu_since if stretch else 0)
        return cpu / wall / self.cores < POOL_BELOW_BUSY

    def _fits(self, width: int) -> bool:
        """Whether a task of ``width`` may start here now (under the lock): this process
        runs no heavy task, or its tasks leave ``width`` cores free and the tasks running
        everywhere are fewer than ``workers``."""
        if self.busy["engine"] == 0:
            return True
        return (self.engine_width + width <= self.cores
                and self.busy["engine"] + self.busy["pool"] < self.workers)

    def _started(self, token: int, width: int) -> None:
        """A heavy task takes this process's cores (under the lock)."""
        now, cpu = time.monotonic(), time.process_time()
        if self.busy["engine"] == 0:
            self.stretch_since, self.engine_cpu_since = now, cpu
        self.busy["engine"] += 1
        self.engine_width += width
        self.engine_starts[token] = now

    def _done(self, token: int, width: int) -> None:
        """A heavy task here ended (under the lock; ``busy`` already counts it out): the
        stretch's seconds are counted once its last task ends."""
        self.engine_width -= width
        self.engine_starts.pop(token, None)
        self.done_here += 1
        if self.busy["engine"] == 0 and self.stretch_since is not None:
            self.wall_here += time.monotonic() - self.stretch_since
            self.cpu_here += time.process_time() - self.engine_cpu_since
            self.stretch_since = None
