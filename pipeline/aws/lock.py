"""The deploy lock: one ``deploy.py`` at a time changes a stack.

Two deploys of one stack at once (two engineers, a CI job and a person) would interleave
their steps: a state machine naming one deploy's function versions with the other's
concurrency, and a rollback record (``deploys/previous.asl.json``) of neither. So a deploy,
a ``--rollback`` and a ``--destroy`` first write :data:`LOCK_KEY` in the stack bucket with
S3's conditional write (PutObject ``If-None-Match: *``): the one whose write S3 takes holds
the lock, the others are refused (:class:`DeployLockedError`, naming the holder), having
changed nothing. The holder removes it when it ends, however it ends
(:func:`deploy_lock`'s ``finally``), with a conditional delete (DeleteObject ``If-Match``
its ETag), so that it never removes a lock another deploy took after its own was broken
(``deploy.py --break-lock``, :func:`break_lock`). A lock is never broken by its age: a
deploy may be slow; the refusal says how old it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import AwsError, Clients, StackNames
from pipeline.aws.actions import Actions, call_failed, error_code
from pipeline.ui import uninterrupted

#: the lock object, in the stack bucket
LOCK_KEY = "deploys/lock.json"
#: past this age a held lock is said to be older than a deploy takes (not broken for it)
LIKELY_DEAD_AFTER = 3 * 3600
#: what S3 (or an S3-compatible store) answers a condition it does not support with
_UNSUPPORTED = ("501", "NotImplemented")
#: a missing bucket (a new stack's, not made yet), or a missing object
_MISSING = ("404", "NoSuchBucket", "NoSuchKey", "NotFound")


class DeployLockedError(AwsError):
    """Another deploy.py holds the stack's deploy lock; nothing was changed."""


@dataclass
class Holder:
    """The deploy a lock object names, and the object's ETag (what a conditional delete
    names)."""

    record: dict[str, Any]
    etag: str
    last_modified: datetime | None = None

    @property
    def since(self) -> datetime | None:
        """When the lock was taken: its record's ``since`` (one without a zone, written by
        hand, taken as UTC), else S3's LastModified."""
        try:
            since = datetime.fromisoformat(str(self.record["since"]))
        except (KeyError, ValueError):
            return self.last_modified
        return since if since.tzinfo else since.replace(tzinfo=UTC)

    def describe(self, now: datetime | None = None) -> str:
        """``arn:... on host h (pid 42) since 2026-12-07T16:20:01Z (3 min ago), running
        deploy.py --stack s --skip-build``, from whatever the record has; past
        :data:`LIKELY_DEAD_AFTER`, that it may have died."""
        r = self.record
        who = (f"{r.get('holder', 'an unknown identity')} on host {r.get('host', '?')} "
               f"(pid {r.get('pid', '?')}{_process_state(r)})")
        since, old = self.since, ""
        if since is None:
            when = "since an unknown time"
        else:
            age = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
            hours, minutes = divmod(age // 60, 60)
            ago = f"{hours} h {minutes} min" if hours else f"{minutes} min" if minutes else \
                f"{age} s"
            when = f"since {since.strftime('%Y-%m-%dT%H:%M:%SZ')} ({ago} ago)"
            if age > LIKELY_DEAD_AFTER:
                old = (f"; that is longer than a deploy takes (over "
                       f"{LIKELY_DEAD_AFTER // 3600} h): it may have died")
        command = r.get("command")
        return (f"{who} {when}" + (f", running deploy.py {command}" if command else "")
                + old)


def _where() -> dict[str, str]:
    """Where this process's pids are seen: its PID namespace (containers that share a host
    name may each have their own) and the machine's boot (a reboot, another machine of the
    same host name); Linux's ``/proc``, none elsewhere."""
    seen = {}
    with contextlib.suppress(OSError):
        seen["pid_ns"] = os.readlink("/proc/self/ns/pid")
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id",
                                            encoding="ascii") as f:
        seen["boot_id"] = f.read().strip()
    return seen


def _process_state(record: dict[str, Any]) -> str:
    """Whether the process a lock names still runs, when it is on this host (another
    host's cannot be seen): its pid gone, the deploy that holds the lock is dead (killed),
    when the lock was taken in this PID namespace and boot (:func:`_where`, recorded by
    :meth:`DeployLock._record`); of a lock that does not say (an older deploy.py's, not
    Linux), only that no process of the pid is seen here; of another namespace or boot,
    nothing (its pids are not this one's). A pid that runs may be another process's since
    (pids are reused)."""
    if record.get("host") != socket.gethostname():
        return ""
    here = _where()
    if any(record.get(key) not in (None, seen) for key, seen in here.items()):
        return ""
    from pipeline.adapters.local_runs import process_alive

    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return ""
    if pid <= 0:  # (0, -1: a group, every process: no deploy's)
        return ""
    try:
        alive = process_alive(pid)  # (another user's counts; a zombie has ended)
    except OverflowError:
        return ""
    if alive:
        return ", a process of that pid runs on this host"
    if here and all(record.get(key) == seen for key, seen in here.items()):
        return ", no longer running on this host: that deploy is dead"
    return ", no process of that pid is visible here (it may run in another container)"


def read_lock(s3: Any, names: StackNames) -> Holder | None:
    """The stack's deploy lock, None when none is held (or there is no bucket). A record
    that is not JSON (written by hand) still names the lock, its time S3's."""
    try:
        found = s3.get_object(Bucket=names.bucket, Key=LOCK_KEY)
    except ClientError as exc:
        if error_code(exc) in _MISSING:
            return None
        raise
    text = found["Body"].read()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {"holder": f"an unreadable record ({len(text)} bytes)"}
    return Holder(record, str(found["ETag"]), found.get("LastModified"))


def _conditional_delete(s3: Any, names: StackNames, etag: str) -> str:
    """Delete the lock object only if its ETag is ``etag``: ``deleted``, ``changed`` (it
    is another one now) or ``gone``. DeleteObject ``If-Match`` (S3 since September 2025,
    moto); a store that answers it 501 gets the object read again and compared first, then
    deleted: best effort, as a lock taken between that read and the delete goes too."""
    try:
        s3.delete_object(Bucket=names.bucket, Key=LOCK_KEY, IfMatch=etag)
        return "deleted"
    except ClientError as exc:
        code = error_code(exc)
        if code in ("412", "PreconditionFailed"):
            return "changed"
        if code in _MISSING:
            return "gone"
        if code not in _UNSUPPORTED:
            raise
    now = read_lock(s3, names)
    if now is None:
        return "gone"
    if now.etag != etag:
        return "changed"
    s3.delete_object(Bucket=names.bucket, Key=LOCK_KEY)
    return "deleted"


class DeployLock:
    """The deploy lock of one deploy.py command: :meth:`take` it, :meth:`release` it (see
    :func:`deploy_lock`). A dry run takes none: it says whether one is held."""

    def __init__(self, clients: Clients, names: StackNames, command: str, dry_run: bool,
                 log: Callable[[str], None]):
        self.clients, self.names, self.command = clients, names, command
        self.dry_run, self.log = dry_run, log
        self.etag: str | None = None
        self.checked = False  # taken, said held (dry run), or known not to be supported

    def _record(self) -> dict[str, Any]:
        return {"holder": str(self.clients("sts").get_caller_identity()["Arn"]),
                "host": socket.gethostname(), "pid": os.getpid(), **_where(),
                "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "command": self.command}

    def _break_command(self) -> str:
        """``deploy.py ... --break-lock`` with the options that locate this stack (stack,
        region, and the profile and endpoint URL this command was given)."""
        return shlex.join(["deploy.py", "--stack", self.names.stack,
                           *self.clients.options(self.names.region), "--break-lock"])

    def _refusal(self, holder: Holder) -> str:
        n = self.names
        return (f"stack {n.stack} is being changed by another deploy.py: its deploy lock "
                f"(s3://{n.bucket}/{LOCK_KEY}) is held by {holder.describe()}. Nothing was "
                "changed. Wait for that deploy to end, then run this one again; if it is "
                "known to be dead (its machine lost, the process killed), remove its lock "
                f"with {self._break_command()} and run this one again")

    def take(self, required: bool = True) -> None:
        """Take the lock (once): DeployLockedError when another deploy holds it. Without
        ``required``, a stack bucket that is not there yet (a new stack), or not this
        account's, leaves it to a later call (after the bucket step, which says why)."""
        if self.checked:
            return
        s3 = self.clients("s3")
        if self.dry_run:
            try:
                holder = read_lock(s3, self.names)
            except ClientError as exc:
                if not required and error_code(exc) in ("403", "AccessDenied"):
                    return
                raise
            if holder is not None:
                self.log(f"  the deploy lock is held by {holder.describe()}. This command "
                         f"would be refused now (see {self._break_command()})")
            self.checked = True
            return
        record = self._record()
        body = json.dumps(record, indent=2).encode("utf-8")
        for _ in range(2):  # (a lock released between the write and its read: once more)
            try:
                with uninterrupted():  # (a signal between the write and its note: held)
                    put = s3.put_object(Bucket=self.names.bucket, Key=LOCK_KEY, Body=body,
                                        ContentType="application/json", IfNoneMatch="*")
                    self.etag, self.checked = str(put["ETag"]), True
            except ClientError as exc:
                code = error_code(exc)
                if not required and code in (*_MISSING, "403", "AccessDenied"):
                    return
                if code in _UNSUPPORTED:
                    self.log(f"  no deploy lock: this S3 does not take conditional writes "
                             f"({code}); make sure no other deploy of {self.names.stack} "
                             "runs now")
                    self.checked = True
                    return
                if code not in ("412", "PreconditionFailed", "409",
                                "ConditionalRequestConflict"):
                    raise
                holder = read_lock(s3, self.names)
                if holder is not None and holder.record == record:
                    # its own: botocore resent the write after a timeout, which S3 had
                    # taken (the resend's 412): held, not refused by itself
                    self.etag, self.checked = holder.etag, True
                elif holder is not None:
                    raise DeployLockedError(self._refusal(holder)) from exc
                else:
                    continue
            self.log(f"  deploy lock taken: s3://{self.names.bucket}/{LOCK_KEY}")
            return
        raise DeployLockedError(
            f"stack {self.names.stack}: another deploy.py took and released its deploy lock "
            "while this one tried to take it; nothing was changed: run this one again")

    def release(self) -> None:
        """Remove the lock if this command holds it, and if it is still its own (not
        broken and taken by another since). Never raises: a failure is said, with what
        to do, and the command's own outcome stands."""
        if self.etag is None:
            return
        etag = self.etag
        try:
            with uninterrupted():  # (a second Ctrl-C, a CI's second SIGTERM: after it)
                outcome = _conditional_delete(self.clients("s3"), self.names, etag)
                self.etag = None
        except (ClientError, BotoCoreError) as exc:
            self.etag = None
            self.log(f"the deploy lock s3://{self.names.bucket}/{LOCK_KEY} could not be "
                     f"removed ({call_failed(exc)}): once sure no deploy of "
                     f"{self.names.stack} runs, remove it with {self._break_command()}")
            return
        if outcome == "changed":
            self.log("the deploy lock was broken while this command ran (deploy.py "
                     "--break-lock) and another deploy holds it now: it is left to that one")
        elif outcome == "deleted":
            self.log("  deploy lock released")


@contextmanager
def deploy_lock(clients: Clients, names: StackNames, command: str, dry_run: bool,
                log: Callable[[str], None]) -> Iterator[DeployLock]:
    """A :class:`DeployLock`, released when the block ends, however it ends (an error,
    KeyboardInterrupt, deploy.py's stop on SIGTERM). The block takes it."""
    lock = DeployLock(clients, names, command, dry_run, log)
    try:
        yield lock
    finally:
        lock.release()


def break_lock(s3: Any, names: StackNames, acts: Actions) -> dict[str, Any] | None:
    """Remove the stack's deploy lock, the one read now only (a conditional delete): the
    record of the lock removed, None when none was held (AwsError when it changed in
    between: another deploy took it)."""
    holder = read_lock(s3, names)
    if holder is None:
        acts.log(f"  no deploy lock is held on stack {names.stack}: nothing to break")
        return None
    outcome = acts.change(f"remove the deploy lock held by {holder.describe()}",
                          lambda: _conditional_delete(s3, names, holder.etag))
    if outcome == "changed":
        now = read_lock(s3, names)
        raise AwsError(
            f"the deploy lock of stack {names.stack} changed while it was being broken: "
            f"it is held now by {now.describe() if now else 'no one'}. Nothing was "
            "removed: check that deploy, and run --break-lock again only if it is dead")
    return holder.record
