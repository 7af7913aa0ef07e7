"""A local run's lease on its work location: how a run on another machine given the same
``--work`` (an S3 prefix, a folder on a network file system) tells a run going on from a
dead one.

The run list (:mod:`pipeline.adapters.local_runs`) knows only the runs of this user on this
machine. A run on another machine holds its work location by a small file there,
``lease.json`` (:data:`~pipeline.core.constants.LEASE_FILE`): its host, process, run id and
the time (epoch seconds, the host's clock) it last renewed it. The run writes it once it has
the location (:func:`hold`) and a daemon thread of its process (the engine's) writes it
again every :data:`INTERVAL_S`; the run removes it at its end, with the work (or alone,
``--keep-work``). A run that finds another host's lease renewed less than
:data:`EXPIRY_S` ago refuses the location (:func:`check`); one older than that is a dead
run's (killed, or its machine gone), whose work is removed as an earlier run's is. A lease
of this host is the run list's to judge: it is a run going on only while its process is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from pipeline.adapters import storage
from pipeline.core.constants import LEASE_FILE
from pipeline.errors import TiffpipeError, WorkLocationError

log = logging.getLogger(__name__)

#: how often a run renews its lease: on S3 one GET and one PUT each time (120 of each an
#: hour: well under a tenth of a US cent), on a folder one small file written
INTERVAL_S = 30.0
#: how long after its last renewal a lease stands: six intervals, so that a run whose
#: renewals fail for a while (S3 throttling, a network hiccup: each request is retried for
#: up to ~20 s) or are late (a loaded machine) is not taken for dead, and clocks of two
#: hosts that differ by up to a minute or two do not matter; what it costs is a wait of up
#: to three minutes before another machine may reuse a killed run's work location
EXPIRY_S = 180.0
#: the clock leases are written and judged by (tests set their own)
clock: Callable[[], float] = time.time


class Lease(NamedTuple):
    """A run's lease on its work location, as the file holds it."""

    host: str
    pid: int
    run_id: str
    renewed: float

    def describe(self) -> str:
        ago = max(0.0, clock() - self.renewed)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.renewed))
        return (f"run {self.run_id} on host {self.host} (process {self.pid}), which last "
                f"renewed its lease {ago:.0f} s ago ({when})")

    @property
    def here(self) -> bool:
        """Whether it is a lease of a run on this machine."""
        return self.host == host()


def host() -> str:
    return socket.gethostname()


def url(work: str) -> str:
    return storage.join(work, LEASE_FILE)


def read(work: str) -> Lease | None:
    """The lease in ``work`` (None: none there, or a file that is not one)."""
    try:
        doc = json.loads(storage.read_bytes(url(work)))
        return Lease(str(doc["host"]), int(doc["pid"]), str(doc["run_id"]),
                     float(doc["renewed"]))
    except (TiffpipeError, ValueError, KeyError, TypeError):
        return None


def _write(work: str, run_id: str) -> None:
    storage.write_json(url(work), {"host": host(), "pid": os.getpid(), "run_id": run_id,
                                   "renewed": clock()})


def live(lease: Lease) -> bool:
    """Whether ``lease`` is a run's going on: another host's renewed less than
    :data:`EXPIRY_S` ago; one of this host's while its process is there (and is not this
    one: the run list has said already that no run of this process uses the location)."""
    if lease.here:
        return lease.pid != os.getpid() and _alive(lease.pid)
    return clock() - lease.renewed < EXPIRY_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def check(work: str) -> Lease | None:
    """A WorkLocationError if a run going on holds ``work`` (:func:`live`); else the lease
    of the dead run there, if any (its work is removed as an earlier run's)."""
    lease = read(work)
    if lease is None or not live(lease):
        return lease
    raise WorkLocationError(
        f"{work}: the work location of {lease.describe()}: it is going on there (its lease "
        f"stands until {EXPIRY_S:.0f} s after its last renewal). Wait for it to end, give "
        f"this run another --work (or none: each run then gets its own), or, if that run is "
        f"known to be dead, remove {url(work)} (this run then removes its work)")


class Holder:
    """A run's lease, renewed by a daemon thread until :meth:`release`."""

    def __init__(self, work: str, run_id: str) -> None:
        self.work, self.run_id = work, run_id
        self._stop = threading.Event()
        self._failing = False
        _write(work, run_id)
        self._thread = threading.Thread(target=self._renew, name="tiffpipe-work-lease",
                                        daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                lease = read(self.work)
                if lease is not None and lease.run_id != self.run_id:
                    log.warning("the work location %s was taken by %s: this run's lease "
                                "there is no longer renewed", self.work, lease.describe())
                    return
                _write(self.work, self.run_id)
            except TiffpipeError as exc:
                if not self._failing:
                    log.warning("could not renew this run's lease on its work location "
                                "(%s); a run on another machine given the same --work takes "
                                "it for a dead run's %.0f s after the last renewal", exc,
                                EXPIRY_S)
                self._failing = True
            else:
                self._failing = False

    def ours(self) -> bool:
        """Whether the location is still this run's: its lease there is this run's (or
        none: removed by hand, or by an older tiffpipe that took the location)."""
        lease = read(self.work)
        return lease is None or lease.run_id == self.run_id

    def release(self, remove: bool = True) -> None:
        """Stop renewing; ``remove``: remove the lease file too (if it is still this run's)."""
        self._stop.set()
        self._thread.join()
        if remove and self.ours():
            try:
                storage.discard(url(self.work))
            except TiffpipeError as exc:
                log.warning("could not remove this run's lease %s: %s", url(self.work), exc)


def hold(work: str, run_id: str) -> Holder:
    """The lease of the run ``run_id`` on ``work``, written now and renewed until released."""
    return Holder(work, run_id)
