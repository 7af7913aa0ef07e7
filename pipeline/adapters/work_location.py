"""A local run's work location (a folder, or an ``s3://`` prefix) as a whole: made ready
before the run (:func:`prepare`), and what a run wrote there removed after it
(:func:`remove`), never more.

``tiffpipe run --work`` takes any folder, and a run removes its work when it ends: it
removes the names it writes at the top of the location (``WORK_ENTRIES``: run.json,
jobs.json, job-specs.bin, jobs/, report.json, lease.json, execution-history.json), then the
folder if that left it empty; never the folder with what else it holds (a user's ``--work
~/scans`` keeps the scans). Before the run, the location must be new, empty, or hold an
earlier tiffpipe run's work (its run.json): that work, kept with ``--keep-work`` or left by
a killed run, is removed first (and the S3 uploads it records as open ended), since its
recorded errors, results and segments would pass for this run's (a job rerun after its input
was mended failed again with the earlier run's error). A location holding anything else is
refused (:class:`~pipeline.errors.WorkLocationError`): the run would mix its files with
them. Whether another run going on uses the location is the run list's to say for a run of
this machine (:func:`pipeline.adapters.local_runs.using`), its lease's for one of another
(:mod:`pipeline.adapters.work_lease`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import suppress

from pipeline.adapters import storage, work_lease
from pipeline.core.constants import (
    JOBS_FOLDER,
    LEASE_FILE,
    RUN_FILE,
    WORK_ENTRIES,
)
from pipeline.errors import (
    OutputNotWritableError,
    StorageError,
    TiffpipeError,
    WorkLocationError,
    in_callers_words,
)

#: the folders a local run's default work folder is made in (``runner.default_work``):
#: removed too once empty (other runs may share them)
DEFAULT_PARENTS = (".tiffpipe-work", "tiffpipe-work")


def prepare(work: str, take: Callable[[], object] | None = None) -> str | None:
    """Make ``work`` ready for a new run: nothing to do when it is new or empty; an earlier
    run's work there is removed (its run id returned, for the caller to say so, with its
    host when it held a lease there); a run's going on (its lease stands:
    :func:`work_lease.check`), and anything else, is a WorkLocationError that names what is
    there. ``take``: called once the location may be the run's, before anything there is
    removed (the run takes its lease: :func:`work_lease.take`, a WorkLocationError if
    another run took it first); the lease it wrote then stays."""
    if not storage.is_s3(work) and os.path.lexists(work) and not os.path.isdir(work):
        raise WorkLocationError(f"{work}: the work location is a file, not a folder: "
                                + in_callers_words("give --work a new or empty folder, or "
                                                   "none"))
    if not storage.is_s3(work):
        _writable_folder(work)
    try:
        listed = storage.top_names(work)
        names = {n.rstrip("/") for n in listed}
        if storage.is_s3(work) and names and _refused(names):
            names -= _empty_prefixes(work, listed)
    except StorageError as exc:
        raise WorkLocationError(f"{work}: the work location cannot be looked into ({exc}): "
                                + in_callers_words("give --work a folder (or prefix) this "
                                                   "run can read and write, or none")
                                ) from exc
    if not names:
        if take is not None:
            take()
        return None
    foreign = sorted(n for n in names - set(WORK_ENTRIES) if not _temporary(n))
    if _refused(names):
        shown = ", ".join(foreign[:3] or sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise WorkLocationError(
            f"{work}: the work location holds files that are not a tiffpipe run's work "
            f"({shown}): " + in_callers_words(
                "give --work a new or empty folder (or prefix), or none (each run then gets "
                "its own); a run removes what it writes there when it ends"))
    lease = work_lease.check(work) if LEASE_FILE in names else None
    earlier = _run_id(work, lease)
    if take is not None:  # first: of two runs given it at once, the one refused removes nothing
        take()
    _end_uploads(work, earlier)
    remove(work, lease=take is None)
    return earlier


def _refused(names: set[str]) -> bool:
    """Whether a work location holding ``names`` (at its top) is no run's work: it holds
    other names, or only a run's folder without its run.json or lease.json."""
    foreign = any(n not in WORK_ENTRIES and not _temporary(n) for n in names)
    return foreign or not (names & {RUN_FILE, LEASE_FILE} or all(map(_temporary, names)))


#: the most prefixes of a refused S3 work location :func:`_empty_prefixes` looks into
PREFIXES_LOOKED_AT = 10


def _empty_prefixes(work: str, listed: list[str]) -> set[str]:
    """The prefixes among the names ``listed`` at the top of the S3 work location ``work``
    (the first :data:`PREFIXES_LOOKED_AT`) that hold no object: moto lists a prefix whose
    keys a versioned bucket keeps only as delete markers (a run's ``jobs/``, removed), which
    S3's ListObjectsV2 does not. One listing of one key each, asked only of a location
    about to be refused."""
    prefixes = [n for n in listed if n.endswith("/")][:PREFIXES_LOOKED_AT]
    return {n.rstrip("/") for n in prefixes
            if not storage.list_prefix(storage.join(work, n), most=1)}


def _end_uploads(work: str, earlier: str) -> None:
    """End the S3 uploads the earlier run in ``work`` left open (a killed run's: its
    merges', which its work records, and its segments' under an S3 work prefix:
    :func:`segments.end_uploads`) before its work, which holds their only record, goes; a
    WorkLocationError if they cannot be, or cannot even be listed."""
    from pipeline.adapters import segments  # (an earlier run's work: rare)

    try:
        segments.end_uploads(work)
    except segments.UploadsUnchecked as exc:
        raise WorkLocationError(
            f"{work}: the work location holds the work of an earlier run ({earlier}), whose "
            f"S3 uploads could not be checked (their records cannot be listed: {exc}): run "
            "where that S3 is reachable (its endpoint and credentials), or "
            + in_callers_words("give this run another --work")) from exc
    except TiffpipeError as exc:
        raise WorkLocationError(
            f"{work}: the work location holds the work of an earlier run ({earlier}) with S3 "
            f"uploads it recorded, which this run could not check or end ({exc}): run where "
            "that S3 is reachable (its endpoint and credentials), or end them (aws s3api "
            "abort-multipart-upload; the records are in jobs/*/uploads/) and remove the "
            "work, or " + in_callers_words("give this run another --work")) from exc


#: what a work folder that cannot be written asks for (in the words of the run's caller)
_WRITABLE_WORK = ("give --work a folder this run can write (by default it is made beside the "
                  "manifest)")


def check_writable(work: str) -> None:
    """A WorkLocationError when the local work folder ``work`` could not be made or written,
    found without making anything (its first existing folder probed, as an output's:
    :func:`storage.check_writable`): the run checks it before anything runs, with its report's
    path, and says every place it cannot write at once (it said the report's alone, then,
    once ``--report`` was given, the work folder's). An S3 location, and a path that is
    there but no folder, are :func:`prepare`'s to check."""
    if storage.is_s3(work) or (os.path.lexists(work) and not os.path.isdir(work)):
        return
    try:
        storage.check_writable(storage.join(work, RUN_FILE), "work file")
    except OutputNotWritableError as exc:
        cause = exc.__cause__
        why = (f"in {os.path.dirname(cause.filename)}: {cause.strerror}"
               if isinstance(cause, OSError) and cause.filename and cause.strerror
               else str(exc))
        raise WorkLocationError(f"{work}: the work folder cannot be written ({why}): "
                                + in_callers_words(_WRITABLE_WORK)) from exc


def _writable_folder(work: str) -> None:
    """Make the local work folder, or a WorkLocationError before anything runs (else the
    run failed at its first step, on a file of its work)."""
    try:
        os.makedirs(work, exist_ok=True)
        writable = os.access(work, os.W_OK | os.X_OK)
    except OSError as exc:
        reason, writable = exc.strerror or str(exc), False
    else:
        reason = "permission denied"
    if not writable:
        raise WorkLocationError(f"{work}: the work folder cannot be written ({reason}): "
                                + in_callers_words(_WRITABLE_WORK))


def _run_id(work: str, lease: work_lease.Lease | None = None) -> str:
    """How the earlier run whose work is in ``work`` is named: its run id, and with a lease
    (of a dead run: expired, or of a process of this host that is gone) its host."""
    if lease is not None:
        return lease.describe()
    try:
        doc = json.loads(storage.read_bytes(storage.join(work, RUN_FILE)))
        return str(doc["run_id"])
    except (TiffpipeError, ValueError, KeyError, TypeError):
        return "of unknown id"  # a run.json half written, or damaged: still a run's


def remove(work: str, keep_uploads: bool = False, lease: bool = True) -> None:
    """Remove what a run writes in ``work``, then the folder if that left it empty, and the
    default work folders' parent (:data:`DEFAULT_PARENTS`) once empty; a missing one is not
    an error. ``keep_uploads``: all but the records of the output uploads its jobs began
    (``jobs/*/uploads/``) and its ``run.json``, which says whose they are: what a later run
    needs to end uploads a killed run left open, which this one could not
    (:func:`pipeline.adapters.local_runs._reap`). ``lease``: its lease too (False: the new
    run's, written before the earlier run's work is removed)."""
    if keep_uploads:
        _remove_all_but_uploads(work)
        return
    files = [name for name in WORK_ENTRIES
             if name != JOBS_FOLDER and (lease or name != LEASE_FILE)]
    if storage.is_s3(work):
        storage.delete_prefix(storage.join(work, JOBS_FOLDER))
        for name in files:
            storage.remove(storage.join(work, name))
        return
    shutil.rmtree(os.path.join(work, JOBS_FOLDER), ignore_errors=True)
    with suppress(OSError):  # a killed run's temporaries of its files (see _temporary)
        files += [name for name in os.listdir(work) if _temporary(name)
                  and (lease or not name.startswith(f".{LEASE_FILE}."))]
    for name in files:
        try:
            os.remove(os.path.join(work, name))
        except FileNotFoundError:
            pass
        except OSError as exc:  # (a folder this user may not write)
            raise StorageError(f"{work}: cannot remove {name}: {exc.strerror or exc}; check "
                               "the folder's permissions") from exc
    for folder in (work, os.path.dirname(work)):
        if folder != work and os.path.basename(folder) not in DEFAULT_PARENTS:
            break
        try:
            os.rmdir(folder)  # only when empty
        except OSError:
            break


def _temporary(name: str) -> bool:
    """Whether ``name``, at the top of a work location, is a temporary file a run wrote one
    of its files through (``.run.json.tiffpipe-....tmp``, ``.lease.json.<pid>-<hex>.tmp``):
    a run killed between writing it and renaming (or linking) it leaves it there, and the
    location is still a run's work, not a folder of other files."""
    return name.startswith(".") and name.endswith(".tmp") and any(
        name.startswith(f".{entry}.") for entry in WORK_ENTRIES if entry != JOBS_FOLDER)


def _remove_all_but_uploads(work: str) -> None:
    jobs = storage.join(work, JOBS_FOLDER)
    from pipeline.adapters.segments import is_upload_record

    others = [url for url in storage.list_prefix(jobs) if not is_upload_record(url)]
    files = [storage.join(work, name) for name in WORK_ENTRIES
             if name not in (JOBS_FOLDER, RUN_FILE)]
    if storage.is_s3(work):
        storage.delete_objects(work, others + files)
        return
    for url in others + files:
        storage.discard(url)
    for folder, _, _ in sorted(os.walk(os.path.join(work, JOBS_FOLDER)), reverse=True):
        try:
            os.rmdir(folder)  # the folders left empty (deepest first)
        except OSError:
            pass
