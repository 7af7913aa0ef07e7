"""The local runs going on on this machine: a scan's local run defers to an earlier one.

Two local runs of one scan at the same time (a run from ``cron`` that lasts longer than the
interval, as a first run over a backlog does) would both make a job of every input the
first one has not finished, and both do it (only one publishes: a scan's jobs skip an
output that exists), each with all the cores. As on AWS (:mod:`earlier_runs`), PlanRun of a
scan looks for a run of the same scan that started before it and is still going, and if
there is one it plans no job and its report names that run. A run of a list of jobs is
refused instead while an earlier run of the same manifest goes on
(:func:`pipeline.runner.run_local`: both would do every job).

Every local run (:func:`pipeline.runner.run_local`) is listed for its life in
:func:`runs_folder`: a small JSON file (its run id, manifest, start and process), on which
the process running it holds an exclusive ``flock``. The kernel drops the lock when that
process ends, however it ends, so a file no one holds is a run that is over. A run removes
its work folder at its end, and a stopped one the temporary files of the outputs it had not
finished; one whose process was killed first (``kill -9``, the kernel's out-of-memory
killer, a power cut) cannot: its file names its work folder, and the next local run's look
removes what it left (:func:`_reap`: the work of a large job is gigabytes of tiles and
segments, a half-written output as large as the output, of no use once its run is gone),
holding the file locked until it is done, so that no run takes that work folder meanwhile. A
look that finds a run's file locked though the run's process is gone waits a moment for the
lock (:func:`_let_go`): another look removing what it left holds it, or a process the run
was starting when it was killed, which ends a moment later (else the next run took the
killed run for one going on, and left its work). The list is per user and per machine: runs
of another user, in another container or on another machine are not seen. Where there is
no ``flock`` (Windows), runs are not listed and never defer.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from pipeline.adapters import storage, work_location
from pipeline.adapters.storage import temp_output_paths
from pipeline.core.constants import JOBS_FOLDER, RUN_FILE
from pipeline.errors import TiffpipeError, in_callers_words

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: the folder of the listed runs (None: :func:`runs_folder`'s default; tests set their own)
FOLDER: str | None = None
#: how long a look waits for the file of a run whose process is gone but which is still
#: locked (:func:`_look`), trying every :data:`HELD_TRY_S`: a look of another run removing
#: what it left lets it go when done (milliseconds, for work in a folder), as does a
#: process the run was starting, killed with it, once it has ended
HELD_WAIT_S = 2.0
HELD_TRY_S = 0.02
#: the pause between those tries (tests set their own)
_pause: Callable[[float], None] = time.sleep
#: the files of killed runs this process waited for in vain (device, inode, change): not again
_waited: set[tuple[int, int, int]] = set()
#: the files of killed runs whose leftovers this process is removing now (:func:`_reap`):
#: a look of this process meanwhile does not wait for itself
_reaping: set[str] = set()


def runs_folder() -> str:
    """Where the local runs are listed: ``/tmp/tiffpipe-runs-<uid>``. Not the temp folder
    of the environment (``TMPDIR``): a run from ``cron`` and one from a shell, whose
    environments differ, must see each other."""
    return FOLDER or f"/tmp/tiffpipe-runs-{os.getuid()}"


def _own_folder(folder: str) -> bool:
    """Whether ``folder`` is a folder of this user (not a link, not another user's: in a
    shared /tmp, another user could make it first and list runs that hold ours back)."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


class LocalRun(NamedTuple):
    """A local run going on: its execution's name, run id, manifest URL, start (epoch
    seconds), process, its work location (a folder or an S3 prefix), whether it keeps it,
    and where its report goes."""

    name: str
    run_id: str
    manifest: str
    started: float
    pid: int
    work: str | None = None
    keep_work: bool = False
    report: str | None = None

    def describe(self) -> str:
        """How a report names it (``deferred_to``)."""
        return f"local run {self.run_id}, process {self.pid}"

    @property
    def alive(self) -> bool:
        """Whether its process is there (not: a killed run whose leftovers a look removes)."""
        return process_alive(self.pid)


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this machine is there (another user's counts), and not
    a zombie: a process killed whose parent has not reaped it yet (a script that killed a
    ``tiffpipe run`` it started and runs the manifest again before it waits for it) has
    ended, its files closed and its locks let go, though ``kill(pid, 0)`` still finds it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` is a zombie (Linux's /proc; elsewhere taken not to be)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) state ...": the name may hold spaces and parentheses, the state follows
    # the last ")"
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"


@contextmanager
def listed(name: str, run_id: str, manifest: str, work: str | None = None,
           keep_work: bool = False, report: str | None = None) -> Iterator[None]:
    """List a run (execution ``name``) while the block runs; first, remove what runs killed
    before their end left (:func:`running`). ``work``: the run's work location, which it
    removes at its end unless ``keep_work``; should it be killed first, a later run removes
    what it left (:func:`_reap`); no other run uses it meanwhile (:func:`using`). ``report``:
    where its report goes, which no later run of another manifest is given meanwhile
    (:func:`reporting_to`). The file
    is written under a temporary name, locked, then renamed into place: a look never finds
    it unlocked. Never a reason to fail the run: a folder that cannot be written is a
    warning (the run goes on, unlisted)."""
    if fcntl is None:
        yield
        return
    running()
    folder = runs_folder()
    path = os.path.join(folder, f"{name}.json")
    fd = -1
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _own_folder(folder):
            raise PermissionError(f"{folder} is not a folder of this user")
        tmp = os.path.join(folder, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"name": name, "run_id": run_id, "manifest": manifest,
                                 "started": time.time(), "pid": os.getpid(),
                                 "work": work, "keep_work": keep_work,
                                 "report": report}).encode())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning(in_callers_words(
            "cannot list this run in %s (%s): a later run of the same manifest will not know "
            "of it, a run given the same --work will not be refused, and what this run leaves "
            "if it is killed will not be removed by the next run"), folder, exc)
        if fd >= 0:
            os.close(fd)
        fd = -1
    try:
        yield
    finally:
        if fd >= 0:  # removed while still locked: a look never takes it for a crashed run's
            try:
                os.remove(path)
            except OSError:
                pass
            os.close(fd)


def running() -> list[LocalRun]:
    """The listed runs still going on (their file is locked), oldest first. The files of
    runs that are over are removed, and the work folders they name (:func:`_reap`)."""
    if fcntl is None:
        return []
    folder = runs_folder()
    if not _own_folder(folder):  # none yet (or not this user's: not looked into)
        return []
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".json")]
    except OSError:
        return []
    runs = []
    for name in names:
        run = _look(os.path.join(folder, name))
        if run is not None:
            runs.append(run)
    return sorted(runs, key=lambda r: (r.started, r.name))


def _look(path: str) -> LocalRun | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed meanwhile: that run is over
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the run goes on, or a look removes what it left
            run = _entry(fd)
            if run is None or run.alive or path in _reaping or not _let_go(fd):
                return run
        if not _still_listed(fd, path):  # reaped by a look that held it before this one
            return None
        # no one held it: its process ended without removing it; what it left is removed
        # with the file held, so that meanwhile its work is still taken (using)
        _reaping.add(path)
        try:
            _reap(path, _entry(fd))
        finally:
            _reaping.discard(path)
        return None
    finally:
        os.close(fd)


def _let_go(fd: int) -> bool:
    """Whether the locked file ``fd`` of a run whose process is gone is let go within
    :data:`HELD_WAIT_S` (then this look holds it). Its holder is a look of another run,
    removing what that run left; or a process the run was starting when it was killed
    (between its fork and its exec a worker holds the run's file too, and it ends a moment
    after the run's process: a look before then took the killed run for one going on, and
    its work was left); or, never let go, a process forked from the run's that lives on
    (this process does not wait for that file again)."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    if key in _waited:
        return False
    for _ in range(round(HELD_WAIT_S / HELD_TRY_S)):
        _pause(HELD_TRY_S)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return True
    _waited.add(key)
    return False


def _still_listed(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is still the one at ``path`` (not removed or replaced)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _entry(fd: int) -> LocalRun | None:
    try:
        doc: Any = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
        work, report = doc.get("work"), doc.get("report")
        return LocalRun(str(doc["name"]), str(doc["run_id"]), str(doc["manifest"]),
                        float(doc["started"]), int(doc["pid"]),
                        work if isinstance(work, str) and work else None,
                        doc.get("keep_work") is True,
                        report if isinstance(report, str) and report else None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # not a run's file


def _reap(path: str, run: LocalRun | None) -> None:
    """The file of a run whose process ended without removing it (killed): removed, and what
    the run left: the temporary files it was building outputs in (named with its run id,
    beside the local outputs of its jobs, listed in its work's run file), the S3 uploads it
    left open (:func:`_end_uploads`), and its work unless it keeps it. Of two looks at once,
    the one that removes the file does it. Each removal is a warning, naming what went.
    What could not be done (its S3 work out of this run's reach: another endpoint, other
    credentials, a folder it may not write) is tried again by the next look: the file is
    listed again, unlocked. Uploads it could not end keep what a later look needs to end
    them: their records in the run's work (the rest of it is removed) and the file. The
    caller holds the file locked: the file goes last, so that until then a run given the
    same work location is refused (:func:`using`)."""
    if (run is None or not run.work
            or not (storage.is_s3(run.work) or os.path.isdir(run.work))):
        _unlist(path)
        return
    for tmp in _partial_outputs(run.work, run.run_id):
        try:
            os.remove(tmp)
        except OSError:
            continue
        log.warning("removed %s, a partial output of run %s: its process (%d) ended before "
                    "the run did (killed?) and left it", tmp, run.run_id, run.pid)
    ended = _end_uploads(run, run.work, path)
    if run.keep_work:
        done = ended
    elif ended:
        done = _remove_work(run, run.work)
    else:  # the records of its uploads are kept: the only way a later run can end them
        _remove_work(run, run.work, keep_uploads=True)
        done = False
    if done:
        _unlist(path)
    else:
        _list_again(path, run)


def _unlist(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _list_again(path: str, run: LocalRun) -> None:
    """``run``'s file, written again without a lock: the next look reaps it again."""
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(run._asdict(), f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot list run %s again (%s): what it left is not tried again",
                    run.run_id, exc)


def _end_uploads(run: LocalRun, work: str, path: str) -> bool:
    """The S3 multipart uploads a killed run left open, ended (S3 keeps their parts, and
    bills them, until then): its jobs' output uploads, which its work records, and with its
    work on S3 its segments'. Only the run's own (not another run's of the same output).
    Whether that could be done; if not (this run's S3 is not the killed run's: another
    endpoint, other credentials; or S3 did not answer), a warning that says what is kept for
    a later run to try again (the records, in its work, and its entry ``path`` in the run
    list) and how to give up on them."""
    from pipeline.adapters import segments  # (a killed run's: rare)

    try:
        ended = segments.end_uploads(work)
    except TiffpipeError as exc:
        log.warning("could not end the S3 uploads of run %s, whose process (%d) ended before "
                    "the run did (killed?): %s. Kept for a later run to end them: %s; every "
                    "later local run of this user on this machine tries again (one whose S3 "
                    "endpoint and credentials reach them). To give up on them instead: %s",
                    run.run_id, run.pid, exc, _kept(work, path), _give_up(work, path))
        return False
    if ended:
        log.warning("ended %d S3 upload(s) run %s left open: its process (%d) ended before the "
                    "run did (killed?)", ended, run.run_id, run.pid)
    return True


def _kept(work: str, path: str) -> str:
    where = f"{work} (its run.json and the upload records in jobs/*/uploads/)"
    if storage.is_s3(work):
        where = f"its work at {where}, with its segments' uploads under that prefix"
    return f"{where} and its entry {path} in the run list"


def _give_up(work: str, path: str) -> str:
    """How to end a killed run's uploads by hand and stop later runs trying: the AWS CLI's
    commands for the uploads its local work records, else how to find them."""
    from pipeline.adapters import segments  # (a killed run's: rare)

    commands = []
    try:
        if not storage.is_s3(work):
            for url in segments.recorded_uploads(storage.join(work, JOBS_FOLDER))[:5]:
                output, upload = segments.upload_record(url)
                bucket, key = storage.split_s3(output)
                commands.append(f"aws s3api abort-multipart-upload --bucket {bucket} "
                                f"--key {key} --upload-id {upload}")
    except (OSError, ValueError, KeyError, TypeError, TiffpipeError):
        commands = []
    how = ("; ".join(commands) if commands else
           "list them with aws s3api list-multipart-uploads --bucket BUCKET (the buckets of "
           "its S3 outputs, and of its work) and end each with aws s3api "
           "abort-multipart-upload, or let a lifecycle rule that aborts incomplete uploads "
           "end them")
    return f"{how} (with that S3's endpoint and credentials), then remove {path} and {work}"


def _remove_work(run: LocalRun, work: str, keep_uploads: bool = False) -> bool:
    """A killed run's work (a folder, or under an S3 prefix) removed, with a warning;
    whether it could be (this run may not reach the bucket, or have the rights the killed
    one had). ``keep_uploads``: all but what a later run needs to end its uploads
    (:func:`work_location.remove`)."""
    try:
        work_location.remove(work, keep_uploads=keep_uploads)
    except TiffpipeError as exc:
        log.warning("could not remove %s, the work of run %s, whose process (%d) ended before "
                    "the run did (killed?): %s; the next run tries again", work, run.run_id,
                    run.pid, exc)
        return False
    what = "the work" if storage.is_s3(work) else "the work folder"
    if keep_uploads:
        log.warning("removed %s, %s of run %s, but for the records of its S3 uploads (and its "
                    "run.json): its process (%d) ended before the run did (killed?) and left "
                    "it", work, what, run.run_id, run.pid)
    else:
        log.warning("removed %s, %s of run %s: its process (%d) ended before the run did "
                    "(killed?) and left it", work, what, run.run_id, run.pid)
    return True


def _partial_outputs(work: str, run_id: str) -> list[str]:
    """The temporary files of the run ``run_id`` beside the local outputs of its jobs, which
    its work's run file lists (none if that is missing or unreadable: it was killed before
    it planned, or it is not a run's; or its S3 work is out of reach)."""
    try:
        jobs = storage.read_json(storage.join(work, RUN_FILE)).get("jobs", [])
        outputs = {job["output"] for job in jobs if isinstance(job.get("output"), str)}
    except (TiffpipeError, ValueError, TypeError, AttributeError, KeyError):
        return []
    return [tmp for output in sorted(outputs) if not storage.is_s3(output)
            for tmp in temp_output_paths(output, run_id)]


def using(work: str, name: str) -> LocalRun | None:
    """The local run going on, listed before the run ``name``, whose work location is
    ``work`` (None if none): two runs given one ``--work`` would mix their files, and the
    first to end would remove the other's."""
    return _earlier(name, lambda run: run.work is not None and _same_location(run.work, work))


def reporting_to(report: str, name: str, same_manifest: Callable[[str], bool]
                 ) -> LocalRun | None:
    """The local run going on, listed before the run ``name``, whose report goes to
    ``report`` too and whose manifest is not this run's (``same_manifest(manifest URL)``:
    a run of the same manifest is refused, or deferred to, for that: :func:`earlier_run`);
    None if none. The later run's report would replace the other's, or the other's this
    one's, whichever ended last."""
    return _earlier(name, lambda run: run.report is not None and run.alive
                    and _same_location(run.report, report) and not same_manifest(run.manifest))


def _same_location(a: str, b: str) -> bool:
    if storage.is_s3(a) or storage.is_s3(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def earlier_run(name: str, same: Callable[[str], bool]) -> str | None:
    """How a report names a local run going on that started before the run ``name`` (ties
    broken by name; a run not listed is taken to start now) on a manifest for which
    ``same(manifest URL)`` is true; None if there is none."""
    # (not a killed run whose leftovers a look is removing: its process is gone)
    run = _earlier(name, lambda run: same(run.manifest) and run.alive)
    return run.describe() if run is not None else None


def _earlier(name: str, match: Callable[[LocalRun], bool]) -> LocalRun | None:
    """The first local run going on, listed before the run ``name`` (ties broken by name; a
    run not listed is taken to start now), that ``match`` takes."""
    runs = running()
    own = next((r.started for r in runs if r.name == name), time.time())
    for run in runs:
        if (run.started, run.name) >= (own, name):
            break
        if match(run):
            return run
    return None
