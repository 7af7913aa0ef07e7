"""A local run's lease on its work location: how a run on another machine given the same
``--work`` (an S3 prefix, a folder on a network file system) tells a run going on from a
dead one.

The run list (:mod:`pipeline.adapters.local_runs`) knows only the runs of this user on this
machine. A run on another machine holds its work location by a small file there,
``lease.json`` (:data:`~pipeline.core.constants.LEASE_FILE`): its host, process, run id and
the time (epoch seconds, the host's clock) it last renewed it. The run writes it once it has
the location (:func:`take`: in one step, create-only, so that of two runs only one gets
it) and a daemon thread of its process (the engine's) writes it again every
:data:`INTERVAL_S`, over its own last lease only (:func:`_replace`); a run that finds its
lease another's stops (:class:`Holder`'s ``on_lost``). The run removes it at its end,
with the work (or alone, ``--keep-work``). A run that finds another host's lease renewed less than
:data:`EXPIRY_S` ago refuses the location (:func:`check`); one older than that is a dead
run's (killed, or its machine gone), whose work is removed as an earlier run's is. A lease
of this host is the run list's to judge: it is a run going on only while its process is.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, NamedTuple

from pipeline.adapters import storage
from pipeline.core.constants import LEASE_FILE
from pipeline.errors import (
    OutputExistsError,
    TiffpipeError,
    WorkLocationError,
    WorkMissingError,
    in_callers_words,
)

log = logging.getLogger(__name__)

#: how often a run renews its lease: on S3 one conditional PUT each time (120 an hour:
#: well under a tenth of a US cent), on a folder one small file read and one written
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
    """This machine's name: ``os.uname``'s, which is what ``socket.gethostname`` returns on a
    POSIX system, without importing :mod:`socket` (and its selectors) into every command;
    ``socket``'s where there is no ``os.uname`` (Windows)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def url(work: str) -> str:
    return storage.join(work, LEASE_FILE)


def _parse(data: bytes) -> Lease | None:
    try:
        doc = json.loads(data)
        return Lease(str(doc["host"]), int(doc["pid"]), str(doc["run_id"]),
                     float(doc["renewed"]))
    except (ValueError, KeyError, TypeError):
        return None


def _read(work: str) -> tuple[Lease | None, str | bytes | None]:
    """The lease in ``work`` and its version, what a conditional write compares: on S3 its
    ETag, locally its bytes; (None, None) if there is none. A lease file that is not one
    (damaged) is (None, its version). An error reading it is raised (StorageError)."""
    lease_url = url(work)
    try:
        if storage.is_s3(work):
            bucket, key = storage.split_s3(lease_url)
            with storage._errors(lease_url, "read", WorkMissingError):
                reply = storage.s3_client().get_object(Bucket=bucket, Key=key)
                data = reply["Body"].read()
            return _parse(data), str(reply["ETag"])
        data = storage.read_bytes(lease_url)
    except WorkMissingError:
        return None, None
    return _parse(data), data


def read(work: str) -> Lease | None:
    """The lease in ``work`` (None: none there, a file that is not one, or unreadable)."""
    try:
        return _read(work)[0]
    except TiffpipeError:
        return None


def _body(run_id: str) -> bytes:
    return json.dumps({"host": host(), "pid": os.getpid(), "run_id": run_id,
                       "renewed": clock()}).encode()


class _Exists(Exception):
    """A create-only (or compare-and-write) write of a lease met another's."""


def _create(work: str, body: bytes) -> str | bytes:
    """Write the lease ``body`` only if ``work`` holds none, in one step; its version
    (:func:`_read`: the ETag on S3, else ``body``).
    :class:`_Exists` if one is there (or, on S3, another write of it is under way).

    On S3 a ``PutObject`` with ``If-None-Match: *`` (:func:`segments._publish`: 412 it
    exists, 409 another conditional write was under way; 501, a store without conditional
    writes: a look, then a plain write, as before S3 had them: two runs at the same moment
    may both pass). Locally the lease is written whole to a temporary file, flushed to the
    disk, and hard-linked to its name, which fails if a file is there (a link is made in one
    step on local and network file systems alike, NFS included, where ``O_EXCL`` was not
    always; and no reader ever sees a lease half written)."""
    lease_url = url(work)
    if storage.is_s3(work):
        from pipeline.adapters import segments

        bucket, key = storage.split_s3(lease_url)
        reply: dict[str, Any] = {}

        def put(**condition: str) -> None:
            reply.update(storage.s3_client().put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                **condition))

        try:
            with storage._errors(lease_url, "write", None):
                segments._publish(lease_url, False, put)
        except (OutputExistsError, segments._WriteConflict) as exc:
            raise _Exists from exc
        return str(reply["ETag"])
    tmp = os.path.join(work, f".{LEASE_FILE}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with storage._errors(lease_url, "write", None):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            storage.publish_file(tmp, lease_url, replace=False)
        except OutputExistsError as exc:
            raise _Exists from exc
    finally:
        with suppress(OSError):
            os.remove(tmp)
    return body


def _replace(work: str, body: bytes, version: str | bytes) -> str | bytes:
    """Write the lease ``body`` over the one of ``version`` (:func:`_read`) only if it is
    still there; the new version. :class:`_Exists` if another lease (or none) is there.

    On S3 one ``PutObject`` with ``If-Match: <ETag>``: S3 compares and writes in one step
    (412: another lease is there; 404: none; 409: another write under way). A store
    without conditional writes (501) gets a read, a comparison and a plain write. Locally:
    the lease is read again and compared, then written whole under a temporary name and
    renamed over it (``os.replace``: a reader never sees half a lease). Between that read
    and the rename there is a window of a few microseconds in which another host's write
    would be lost; an ``fcntl`` lock would close it only where every host's locks reach the
    server (NFS's lock manager, not every SMB or FUSE share) and would need a lock file
    beside the lease, since a rename changes the file; the other host writes only once this
    run's lease has gone unrenewed for :data:`EXPIRY_S`, so both must happen within those
    microseconds."""
    lease_url = url(work)
    if storage.is_s3(work):
        bucket, key = storage.split_s3(lease_url)
        with storage._errors(lease_url, "write", None):
            try:
                reply = storage.s3_client().put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                    IfMatch=str(version))
            except storage._aws_errors() as exc:
                code = storage._code(exc)
                if code in ("412", "PreconditionFailed", "404", "NoSuchKey", "409",
                            "ConditionalRequestConflict"):
                    raise _Exists from exc
                if code not in ("501", "NotImplemented"):
                    raise
                if _read(work)[1] != version:  # (no conditional writes: look, then write)
                    raise _Exists from exc
                reply = storage.s3_client().put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        return str(reply["ETag"])
    if _read(work)[1] != version:
        raise _Exists
    storage.write_bytes(lease_url, body)
    return body


def live(lease: Lease) -> bool:
    """Whether ``lease`` is a run's going on: another host's renewed less than
    :data:`EXPIRY_S` ago; one of this host's while its process is there (and is not this
    one: the run list has said already that no run of this process uses the location)."""
    if lease.here:
        from pipeline.adapters.local_runs import process_alive

        return lease.pid != os.getpid() and process_alive(lease.pid)
    return clock() - lease.renewed < EXPIRY_S


def _taken(work: str, lease: Lease | None, first: bool = False) -> WorkLocationError:
    """The error of a run refused ``work``: ``lease``'s run holds it (None: another run
    was writing its lease at that moment). ``first``: it wrote its lease while this run
    was taking the location (the two started together)."""
    who = lease.describe() if lease is not None else "another run, writing its lease there"
    how = ("another run took it first, at the same moment as this one: " if first else "")
    return WorkLocationError(
        f"{work}: {how}the work location of {who}: it is going on there (its lease "
        f"stands until {EXPIRY_S:.0f} s after its last renewal). Wait for it to end, "
        + in_callers_words("give this run another --work (or none: each run then gets its "
                           "own)")
        + f", or, if that run is known to be dead, remove {url(work)} (this run then removes "
        "its work)", going_on=True)


def check(work: str) -> Lease | None:
    """A WorkLocationError if a run going on holds ``work`` (:func:`live`); else the lease
    of the dead run there, if any (its work is removed as an earlier run's)."""
    lease = read(work)
    if lease is None or not live(lease):
        return lease
    raise _taken(work, lease)


def take(work: str, run_id: str) -> str | bytes:
    """Write the lease of the run ``run_id`` in ``work`` if no run going on holds it: a
    new lease create-only (:func:`_create`), a dead run's replaced only if it is still
    there (:func:`_replace`): of two runs taking the location at once, one gets it and the
    other a WorkLocationError naming it. Its version (:func:`_read`)."""
    for _ in range(3):  # (a lease removed or replaced between the steps: look again)
        try:
            return _create(work, _body(run_id))
        except _Exists:
            pass
        lease, version = _read(work)
        if version is None:
            continue  # removed meanwhile
        if lease is not None and live(lease):
            raise _taken(work, lease, first=True)
        try:  # a dead run's (or a damaged file): replaced if still there
            return _replace(work, _body(run_id), version)
        except _Exists:
            continue
    raise _taken(work, read(work), first=True)


class Holder:
    """A run's lease, taken (:func:`take`) and renewed by a daemon thread until
    :meth:`release`. ``on_lost``: called (from that thread) once the lease is found to be
    another run's, or gone: the run must stop (:attr:`lost` then holds it)."""

    def __init__(self, work: str, run_id: str,
                 on_lost: Callable[[Lease | None], None] | None = None) -> None:
        self.work, self.run_id, self.on_lost = work, run_id, on_lost
        self._stop = threading.Event()
        self._failing = False
        #: set once the location was taken by another run: its lease (None: gone)
        self.lost: tuple[Lease | None] | None = None
        self._version = take(work, run_id)
        #: when this run last wrote its lease (the lease clock): whether a run that took it
        #: over could have taken it for a dead run's (:attr:`stale`)
        self.renewed = clock()
        self._thread = threading.Thread(target=self._renew, name="tiffpipe-work-lease",
                                        daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:  # only over this run's last write: a run that took over keeps its lease
                self._version = _replace(self.work, _body(self.run_id), self._version)
                self.renewed = clock()
            except _Exists:
                self._lose()
                return
            except TiffpipeError as exc:
                if not self._failing:
                    log.warning(in_callers_words(
                        "could not renew this run's lease on its work location (%s); a run "
                        "on another machine given the same --work takes it for a dead run's "
                        "%.0f s after the last renewal"), exc, EXPIRY_S)
                self._failing = True
            else:
                self._failing = False

    @property
    def stale(self) -> bool:
        """Whether this run's lease had gone unrenewed for :data:`EXPIRY_S` when it was
        lost (else it was replaced or removed while it stood: by hand, or a run that did
        not heed it)."""
        return clock() - self.renewed >= EXPIRY_S

    def _lose(self) -> None:
        lease = read(self.work)
        self.lost = (lease,)
        log.warning("the work location %s was taken by %s: this run stops, and leaves what "
                    "is there to that run", self.work,
                    lease.describe() if lease is not None else "another run (its lease is "
                    "gone: removed, or taken by an older tiffpipe)")
        if self.on_lost is not None:
            self.on_lost(lease)

    def ours(self) -> bool:
        """Whether the location is still this run's: not found lost by a renewal, and its
        lease there is this run's (one that cannot be read is taken to be)."""
        if self.lost is not None:
            return False
        try:
            lease, version = _read(self.work)
        except TiffpipeError:
            return True
        return version is None or (lease is not None and lease.run_id == self.run_id)

    def release(self, remove: bool = True) -> None:
        """Stop renewing; ``remove``: remove the lease file too (if it is still this run's)."""
        self._stop.set()
        self._thread.join()
        if remove and self.ours():
            try:
                storage.discard(url(self.work))
            except TiffpipeError as exc:
                log.warning("could not remove this run's lease %s: %s", url(self.work), exc)


def hold(work: str, run_id: str,
         on_lost: Callable[[Lease | None], None] | None = None) -> Holder:
    """The lease of the run ``run_id`` on ``work``, taken now (:func:`take`) and renewed
    until released; ``on_lost``: see :class:`Holder`."""
    return Holder(work, run_id, on_lost)
