"""A local run of a manifest: validate, run the state machine on the embedded engine, report.

:func:`run` is the entry point from Python (``pipeline.run``, docs/python.md); the CLI's
``tiffpipe run`` is :func:`check_run` and :func:`run_local` plus a terminal UI. A run stopped
on request (:class:`~pipeline.engine.local.StopRequest`: the CLI's SIGINT and SIGTERM,
:func:`run`'s Ctrl-C) still writes its report, with every job that had not finished marked
:data:`INTERRUPTED_ERROR`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import field
from typing import Any

from pipeline.adapters import local_runs, storage, work_lease, work_location
from pipeline.core.constants import (
    CALLER_ENV,
    HISTORY_FILE,
    KEEP_SEGMENTS_ENV,
    RUN_TAG_ENV,
    THUMBNAILS_ENV,
    WORK_ENV,
)
from pipeline.core.events import ReportEvent, RunInput, to_payload
from pipeline.core.manifest import ScanSpec
from pipeline.core.models import JobSpec
from pipeline.core.record import record
from pipeline.core.thumbs import SHEET_BOX, contact_sheet_url, is_contact_sheet
from pipeline.engine.execution import Listener
from pipeline.engine.local import LocalEngine, StopRequest
from pipeline.errors import (
    INTERRUPTED_ERROR,
    PYTHON_CALLER,
    RUN_FAILED_ERROR,
    EngineError,
    ManifestError,
    OutputNotWritableError,
    RunInterrupted,
    RunningAlreadyError,
    StorageError,
    TiffpipeError,
    WorkLocationError,
    failure_record,
    in_callers_words,
    shortened,
)
from pipeline.steps import held_work, layout
from pipeline.steps.common import read_manifest

log = logging.getLogger("tiffpipe")



def new_run_id() -> str:
    """Unique and readable: UTC time plus random hex (two runs in a second never collide)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


#: the manifest's jobs (or its scan), or ManifestError listing every problem, as the run's
#: PlanRun reads it
validate = read_manifest


#: the manifest read from standard input (``tiffpipe run -``; :func:`manifest_file`)
STDIN = "-"


def shown_name(manifest: str) -> str:
    """How messages name a manifest given as ``manifest``: ``<stdin>`` for :data:`STDIN`."""
    return "<stdin>" if manifest == STDIN else manifest


def default_report(manifest: str) -> str:
    """``<manifest folder>/<manifest stem>.report.json`` (local manifests), else in the work;
    in the current folder for a manifest read once and run from a copy (:func:`_streamed`:
    its folder is no place for it: ``<(gen)``'s ``/dev/fd``, ``/dev/stdin``'s ``/dev``),
    ``stdin.report.json`` for the manifest on stdin (:data:`STDIN`)."""
    if manifest == STDIN:
        return os.path.abspath("stdin.report.json")
    stem = os.path.splitext(os.path.basename(manifest))[0]
    if _streamed(manifest):
        return os.path.abspath(f"{stem}.report.json")
    if storage.is_s3(manifest):
        return storage.join(storage.parent(manifest), f"{stem}.report.json")
    return os.path.join(storage.parent(manifest), f"{stem}.report.json")


def default_work(manifest: str, run_id: str) -> str:
    """Work files next to a local manifest (same disk as the data), else in the temp folder.
    A copy of a manifest on stdin or in a pipe (:func:`manifest_file`): in the current
    folder, as for a manifest there (its copy's folder is the temp folder's)."""
    if storage.is_s3(manifest):
        import tempfile

        return os.path.join(tempfile.gettempdir(), "tiffpipe-work", run_id)
    if _copy_of(manifest) == _PIPED_PREFIX:
        return os.path.abspath(os.path.join(".tiffpipe-work", run_id))
    return os.path.join(storage.parent(manifest), ".tiffpipe-work", run_id)


@record
class RunResult:
    """What a local run gives back: its status, report, work location and timings."""

    run_id: str
    status: str  # the execution's status
    report: dict[str, Any] | None
    #: where the report went (:func:`run` of a dict manifest without ``report``: None, the
    #: temporary folder it was in removed)
    report_url: str | None
    #: the run's work location (:func:`run`: None unless kept, ``keep_work``)
    work: str | None
    seconds: float
    error: str | None = None
    worker_peaks_mb: dict[int, float] = field(default_factory=dict)
    contact_sheet: str | None = None  # the PNG of input and output thumbnails, when written
    #: the signal of the stop request the run had (0: a request without one; the status is
    #: ABORTED if it came before the run's end), None without one
    interrupted: int | None = None
    #: an earlier run's report or contact sheet removed from beside this run's (see
    #: :func:`_remove_stale`)
    removed: list[str] = field(default_factory=list)
    #: a run that failed with no report written (its engine stopped, or the report could
    #: not be written): its jobs as their results in the work say, those that had not
    #: finished FAILED with :data:`RUN_FAILED_ERROR` (None: no job had been listed)
    summary: dict[str, Any] | None = None

    @property
    def report_lost(self) -> bool:
        """The run failed only as its report was written: every job had finished, and the
        error is the report's (it names the report's path; any other error, e.g. the
        engine's, is not to be fixed by another --report)."""
        return (self.summary is not None and bool(self.summary["jobs"])
                and self.report_url is not None and self.report_url in (self.error or "")
                and not self.unfinished_jobs)

    @property
    def unfinished_jobs(self) -> int:
        """Jobs of :attr:`summary` that had not finished (no result) when the run failed."""
        return sum(j.get("error", {}).get("type") == RUN_FAILED_ERROR
                   for j in (self.summary or {}).get("jobs", []))

    @property
    def unfinished_over_a_file(self) -> int:
        """Of the jobs the run did not finish (:attr:`unfinished_jobs` of a run that failed
        as a whole, :attr:`unfinished` of one stopped), those whose output path holds a file
        (an earlier one, or one not known to be this run's: their messages say which)."""
        return sum(j.get("error", {}).get("type") in (RUN_FAILED_ERROR, INTERRUPTED_ERROR)
                   and FILE_LEFT in j["error"].get("message", "")
                   for j in self.jobs)

    @property
    def ok(self) -> bool:
        return (self.status == "SUCCEEDED" and self.report is not None
                and self.report.get("failed", 1) == 0 and self.interrupted is None)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Each job's entry of the report (``job``, ``status``: SUCCEEDED, FAILED or SKIPPED,
        ``input``, ``output``, ``error``: ``{"type", "message"}`` of a failed one, ...:
        docs/manifest-and-ops.md, "The run report"), or of :attr:`summary` for a run that
        failed with no report; [] when no job was listed."""
        return list((self.report or self.summary or {}).get("jobs", []))

    @property
    def unfinished(self) -> list[int]:
        """The jobs the report marks :data:`INTERRUPTED_ERROR`."""
        return [j["job"] for j in (self.report or {}).get("jobs", [])
                if j.get("error", {}).get("type") == INTERRUPTED_ERROR]


#: a manifest given to :func:`run`: its path or URL, or the manifest itself (a dict, as its
#: JSON would be)
Manifest = str | os.PathLike[str] | dict[str, Any] | list[dict[str, Any]]


def run(manifest: Manifest, *, workers: int | None = None, work: str | None = None,
        report: str | None = None, keep_work: bool = False, progress: bool = False,
        listener: Listener | None = None, contact_sheet: bool = False,
        interpreter: str = "auto", definition_text: str | None = None,
        stop: StopRequest | None = None, base: str | os.PathLike[str] | None = None,
        overwrite_report: bool = False) -> RunResult:
    """Run every job of ``manifest`` on this machine, as ``tiffpipe run`` does, and return
    what it did (:class:`RunResult`: ``ok``, ``report``, ``jobs``, ``error``).

    ``manifest``: a path or ``s3://`` URL of a manifest, or a manifest as a dict; a dict's
    relative paths are taken from ``base`` (default: the current folder), its values may be
    ``os.PathLike`` and a custom op's ``function`` a function of an importable module; it
    is written to a temporary folder, with its report (kept only if ``report`` names a
    path) and its default work location, removed after the run unless it holds what was
    asked to be kept (``keep_work`` without ``work``, ``contact_sheet`` without ``report``:
    :func:`_named_if_there`). Checked before anything runs, as the command
    does (:func:`check_run`): ``ManifestError`` (every problem), ``InputNotFoundError``,
    ``StorageError``, ``OutputNotWritableError`` (the report's path; a file there that is
    no run report, unless ``overwrite_report``), ``WorkLocationError``,
    ``RunningAlreadyError`` (a run of the same manifest file going on on this machine),
    ``EngineError`` (a ``definition_text`` that is not a valid state machine);
    a job that fails is in the result, not raised. ``workers``: tasks at once (default: the
    cores this process may use). ``progress``: progress lines on stderr (a bar on a
    terminal; not with a ``listener``); ``listener``: called with each task's end
    (:class:`~pipeline.ui.RunProgress`'s signature). ``stop``: a :class:`StopRequest` that
    another thread may ``request()`` to stop the run cleanly (the result then has
    ``interrupted``). Ctrl-C
    (SIGINT) in the main thread, where Python's own handler is in place (a script, a
    notebook's cell), stops the run the same way, then raises :class:`RunInterrupted` (a
    KeyboardInterrupt, carrying the result). The other arguments are :func:`run_local`'s;
    ``contact_sheet`` is off by default here."""
    _check_not_a_starting_worker()
    if workers is None:
        from pipeline.steps.common import usable_cores

        workers = usable_cores()
    workers = checked_workers(workers)
    if definition_text is not None:  # EngineError naming the line (as --definition's)
        from pipeline.engine import definition

        definition.check(definition_text, "definition_text", contract=True)
    # the checks are the command's (check_run, run_local's): their messages say what to do in
    # this function's words (its arguments, not the command's options) as they are made
    with _run_env(CALLER_ENV, PYTHON_CALLER, replace=True), \
            manifest_file(manifest, base) as (path, default, kept):
        # (a dict's report is in the temporary folder; a piped one's in the current folder)
        temp_report = default if isinstance(manifest, (dict, list)) else None
        report = os.fspath(report) if report is not None else default
        jobs = check_run(path, report, work)
        shown = None
        if progress and listener is None:
            from pipeline.ui import RunProgress

            listener = shown = RunProgress(jobs)
        stop = stop if stop is not None else StopRequest()
        with shown or nullcontext(), _ctrl_c_stops(stop) as ours:
            result = run_local(path, workers, work=work, report=report, keep_work=keep_work,
                               listener=listener, contact_sheet=contact_sheet,
                               interpreter=interpreter, stop=stop,
                               definition_text=definition_text,
                               overwrite_report=overwrite_report, caller=PYTHON_CALLER)
        if temp_report is not None:  # what was asked for, kept in the temporary folder
            kept += [url for url, asked in ((result.work, keep_work and work is None),
                                            (result.contact_sheet, report == temp_report))
                     if asked and url is not None]
    result = _named_if_there(result, keep_work, temp_report, kept)
    if ours and result.interrupted == signal.SIGINT:
        raise RunInterrupted(result)
    return result


def _named_if_there(result: RunResult, keep_work: bool, temp_report: str | None,
                    kept: list[str]) -> RunResult:
    """``result`` naming no path that is gone: its ``work`` None unless kept (the run
    removed it), and, for a dict manifest whose temporary folder was removed (nothing
    there asked to be kept), its ``report_url`` None when the report was there."""
    import dataclasses

    gone = temp_report is not None and not kept
    return dataclasses.replace(
        result, work=result.work if keep_work else None,
        report_url=None if gone and result.report_url == temp_report else result.report_url)


def checked_workers(workers: Any) -> int:
    """``workers`` (the tasks a run does at once) as an int, or ValueError unless it is a
    whole number of at least 1 (an int, a numpy integer; not a bool): :func:`run` and
    :func:`run_local` check it before anything runs, as ``tiffpipe run --workers`` is
    checked. The engine took 0 or fewer as 1 on the direct interpreter and, on moto, failed
    the run saying the open-file limit left room for no worker; a fraction ran, or failed
    in multiprocessing."""
    import operator

    try:
        whole = None if isinstance(workers, bool) else operator.index(workers)
    except TypeError:
        whole = None
    if whole is None or whole < 1:
        raise ValueError(f"workers must be a whole number of at least 1, not {workers!r}")
    return whole


def _resolved(url: str) -> str:
    """A location as the run uses it (the manifest, the work location, the report): an
    ``s3://`` URL as it is, a local path resolved (``storage.local_path``)."""
    return url if storage.is_s3(url) else storage.local_path(url)


def check_run(manifest: str, report: str | None = None, work: str | None = None
              ) -> list[JobSpec] | ScanSpec:
    """What a run checks before anything runs (:func:`run`, ``tiffpipe run``): the manifest
    (:data:`validate`: ManifestError listing every problem, InputNotFoundError or
    StorageError when it cannot be read), that the report (default :func:`default_report`)
    would replace no input, output or the manifest (OutputNotWritableError), and that no
    output and not the report is inside ``work`` (WorkLocationError). PlanRun checks the
    last two again, for every caller. The manifest's jobs, or its scan."""
    from pipeline.steps.planning import check_outside_work, check_report_path

    jobs = validate(manifest)
    report = report or default_report(manifest)
    check_report_path(report, manifest, jobs)
    if work:
        check_outside_work(work, jobs, report)
    return jobs


#: the temporary folder and file of a dict manifest given to :func:`run`
_GIVEN_PREFIX, _GIVEN_NAME = "tiffpipe-manifest-", "manifest.json"
#: the temporary folder of the copy of a manifest that is no regular file (:func:`_read_once`)
_PIPED_PREFIX = "tiffpipe-stdin-"


def _copy_of(path: str) -> str | None:
    """Which copy of :func:`manifest_file`'s ``path`` is: :data:`_GIVEN_PREFIX` (of a dict),
    :data:`_PIPED_PREFIX` (of stdin, a pipe), None (a manifest read where it is)."""
    folder, name = os.path.split(path)
    if name != _GIVEN_NAME:
        return None
    return next((prefix for prefix in (_GIVEN_PREFIX, _PIPED_PREFIX)
                 if os.path.basename(folder).startswith(prefix)), None)


@contextmanager
def manifest_file(manifest: Manifest, base: str | os.PathLike[str] | None = None
                  ) -> Iterator[tuple[str, str | None, list[str]]]:
    """The manifest's path, None and a list, for a manifest read where it is (a regular
    file, an ``s3://`` URL; one not there: the reader says so). Else the path of a copy in a
    temporary folder, its jobs' and scan's relative locations taken from ``base`` (default:
    the current folder), the default path of its report, and a list: the folder is removed
    after the block unless the block added to it what it keeps there (the work or the
    contact sheet asked for). A copy of: a dict (or a list of jobs: :func:`run`), its report
    in the folder too; the manifest on stdin (:data:`STDIN`) or in a file that is not a
    regular one (a pipe, ``/dev/stdin``, a FIFO: :func:`_read_once`), read once (a run
    reads its manifest more than once: the second read of a pipe found it empty), its
    report and work in the current folder (:func:`default_report`, :func:`default_work`:
    a ``kill -9`` leaves only the copy in the temp folder). A ManifestError of the copy
    raised in the block names the manifest as its caller gave it (``the manifest given``,
    ``<stdin>``, the path)."""
    from pipeline.core.manifest import anchored

    base = os.path.abspath(base or os.getcwd())
    if isinstance(manifest, (dict, list)):
        problems: list[str] = []
        doc = _plain(manifest, "jobs" if isinstance(manifest, list) else "", problems)
        if problems:
            raise ManifestError("the manifest given", problems)
        data, name = json.dumps(anchored(doc, base)).encode(), "the manifest given"
        prefix, report = _GIVEN_PREFIX, None  # (its report in its folder, below)
    else:
        given = os.fspath(manifest)
        raw = _read_once(given)
        if raw is None:
            yield given, None, []
            return
        try:  # (JSON that is none, or not UTF-8: copied as it is, for the parse to name)
            data = json.dumps(anchored(json.loads(raw.decode("utf-8-sig")), base)).encode()
        except ValueError:
            data = raw
        name = shown_name(given)
        prefix, report = _PIPED_PREFIX, default_report(given)
    import shutil  # (here: a manifest read where it is imports neither, a short command's
    import tempfile  # time: tests/test_engine_startup.py)

    folder = tempfile.mkdtemp(prefix=prefix)
    report = report or os.path.join(folder, "manifest.report.json")
    kept: list[str] = []
    path = os.path.join(folder, _GIVEN_NAME)
    try:
        with open(path, "wb") as f:
            f.write(data)
        try:
            yield path, report, kept
        except ManifestError as exc:
            if exc.source != path:
                raise
            raise ManifestError(name, exc.problems) from None
    finally:
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)


def _streamed(manifest: str) -> bool:
    """Whether ``manifest`` is read once and run from a copy (:func:`manifest_file`): the
    manifest on stdin (:data:`STDIN`), or a local one that is neither a regular file nor a
    folder (a pipe, ``/dev/stdin``, a FIFO, which the first read empties)."""
    import stat

    if manifest == STDIN:
        return True
    if storage.is_s3(manifest):
        return False
    try:
        mode = os.stat(manifest).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _read_once(manifest: str) -> bytes | None:
    """The bytes of a manifest :func:`_streamed` (it is copied); None for any other (read
    where it is, as ever)."""
    if not _streamed(manifest):
        return None
    if manifest == STDIN:
        return sys.stdin.buffer.read() if sys.stdin is not None else b""
    try:
        with open(manifest, "rb") as f:
            return f.read()
    except OSError:
        return None


def _plain(value: Any, where: str, problems: list[str]) -> Any:
    """A dict manifest's ``value`` at ``where`` (``jobs[0].ops[1].function``) as JSON: its
    dicts, lists and tuples walked, any other value :func:`_as_json`; what cannot be is
    added to ``problems``, at its place (every one, as a manifest's problems are listed)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            at = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                problems.append(f"{at}: a key must be a string, not {type(key).__name__}")
            out[str(key)] = _plain(item, at, problems)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    if value is None or isinstance(value, (str, int, float)):
        return value
    try:
        return _as_json(value)
    except TypeError as exc:
        problems.append(f"{where or 'manifest'}: {exc}")
        return None


def _as_json(value: Any) -> Any:
    """What a dict manifest may hold besides JSON: a path (``os.PathLike``), a numpy number,
    a custom op's function (``module:function``; not one of ``__main__``, which the worker
    processes cannot import; not a ``functools.partial``: its arguments go in ``params``)."""
    import functools

    if isinstance(value, functools.partial):
        func = ".".join(filter(None, (getattr(value.func, "__module__", None),
                                      getattr(value.func, "__qualname__", None))))
        params = json.dumps(value.keywords, default=repr) if value.keywords else "{...}"
        raise TypeError(
            f"functools.partial of {func or repr(value.func)} is not a function the worker "
            "processes can import: give the function itself, and its keyword arguments in "
            f'the op\'s "params" ({{"op": "custom", "function": {func or "f"}, "params": '
            f"{params}}})" + (f"; its positional arguments {value.args!r} have no place "
                              "there: make them keyword arguments" if value.args else ""))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value) and hasattr(value, "__qualname__"):
        module, name = getattr(value, "__module__", None), value.__qualname__
        if module in (None, "__main__", "__mp_main__") or "." in name or "<" in name:
            raise TypeError(
                f"the custom op's function {name} is defined in "
                f"{module or 'no module'}{'' if '.' not in name else ' (nested)'}: the "
                "worker processes import it by its module, so define it at the top of a "
                "module of its own (a .py file on sys.path) and import it from there")
        origin = getattr(value, "__globals__", {}).get("__file__")
        if _not_importable_by_name(module):
            folder = repr(os.path.dirname(origin)) if origin else "its folder"
            raise TypeError(
                f"the custom op's function {module}.{name} is of a module the worker "
                f"processes cannot import by its name {module!r} (loaded from "
                f"{origin or 'no file'}, not found on sys.path: they import it afresh, from "
                f"sys.path): put its folder on sys.path before the run "
                f"(sys.path.insert(0, {folder})), or install it")
        return f"{module}:{name}"
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # a numpy scalar
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def _not_importable_by_name(module: str) -> bool:
    """Whether a worker process, which imports a custom op's ``module`` by its name with
    this process's ``sys.path`` and import hooks but none of its modules, would not find it:
    its top package is found by no finder of ``sys.meta_path`` (a module loaded from a file
    with ``importlib.util.spec_from_file_location``, or made in memory: only this process
    has it). False when found, or when a finder fails (the job's PlanJob tells then)."""
    top = module.partition(".")[0]
    try:
        return not any(getattr(finder, "find_spec", None) is not None
                       and finder.find_spec(top, None) is not None for finder in sys.meta_path)
    except Exception:  # noqa: BLE001 - a finder of the user's that fails: not known
        return False


@contextmanager
def _ctrl_c_stops(stop: StopRequest) -> Iterator[bool]:
    """While the block runs in the main thread, with Python's own SIGINT handler in place
    (a script, a notebook's cell; not a program with a handler of its own, such as
    ``tiffpipe run``), Ctrl-C requests ``stop`` (a second one stops the waiting for the
    tasks) instead of raising KeyboardInterrupt wherever the main thread is, which left
    the run's tasks going on (publishing outputs after it) and wrote no report. Whether it
    did (then :func:`run` raises :class:`RunInterrupted` after the run)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield False
        return
    before = signal.signal(signal.SIGINT, lambda signum, _: stop.request(signum))
    try:
        yield True
    finally:
        signal.signal(signal.SIGINT, before)


def _check_not_a_starting_worker() -> None:
    """In a worker process as it starts, the message on stderr, then an exit with
    :data:`~pipeline.engine.workers.UNGUARDED_MAIN_EXIT`: a script that calls :func:`run`
    without ``if __name__ == "__main__":`` is run again by each worker process (they are
    spawned, as multiprocessing's), which would run the manifest again in each. The run
    that started the worker knows it by that code, and fails each job that needs a worker
    saying to guard the script (not blaming the job's custom op, not as transient)."""
    mp = sys.modules.get("multiprocessing")
    if mp is not None and getattr(mp.current_process(), "_inheriting", False):
        from pipeline.engine.workers import UNGUARDED_MAIN_EXIT

        print("pipeline.run was called as a worker process of a run started: the script "
              "that calls it must do so under `if __name__ == \"__main__\":` (tiffpipe's "
              "worker processes are spawned, and import the script's main module again as "
              "they start, as multiprocessing's do)", file=sys.stderr, flush=True)
        raise SystemExit(UNGUARDED_MAIN_EXIT)


def run_local(manifest: str, workers: int, work: str | None = None, report: str | None = None,
              keep_work: bool = False, listener: Listener | None = None,
              contact_sheet: bool = False, interpreter: str = "auto",
              stop: StopRequest | None = None, definition_text: str | None = None,
              overwrite_report: bool = False, caller: str = "command") -> RunResult:
    """Run every job of a (validated) manifest on this machine. ``contact_sheet``: also write
    ``<report stem>.contact.png`` (input and output thumbnails of every page of every job).
    ``interpreter``: of the state machine (see :class:`LocalEngine`). ``stop``: a request
    (a signal handler's) that stops the run: no task starts, the running ones stop within
    their tile, the partial files of the jobs not finished are removed (outputs published
    stay), and the report marks those jobs (:func:`_report_interrupted`); no contact sheet.
    ``definition_text``: the state machine to run (default: statemachine.asl.json, as
    shipped). ``overwrite_report``: replace a file at the report's path that is not a run
    report (else OutputNotWritableError: :func:`check_report_free`). ``work``: a location
    another local run going on uses, or that holds files other than an earlier run's work,
    is a WorkLocationError before anything runs (an earlier run's work there is removed
    first: :mod:`pipeline.adapters.work_location`). ``workers``: :func:`checked_workers`.
    ``caller``: the words of the entry point (``"python"``: :func:`run`'s arguments; else the
    command's options), passed down to the steps and the workers (CALLER_ENV): what the
    jobs' errors advise and the warnings are said in them where each is made, never the
    paths they name (:func:`in_callers_words`)."""
    workers = checked_workers(workers)
    _warn_of_environment()
    with _run_env(CALLER_ENV, caller, replace=True):
        return _run_local(manifest, workers, work, report, keep_work, listener,
                          contact_sheet, interpreter, stop, definition_text,
                          overwrite_report)


#: the warnings of TIFFPIPE_* variables this process gave (each once: a script's loop of
#: pipeline.run calls is told once)
_ENV_WARNED: set[str] = set()


def _warn_of_environment() -> None:
    """Warn, once a process, of each TIFFPIPE_* variable that is no variable of tiffpipe's
    or gives no value it takes (:func:`~pipeline.core.constants.env_problems`)."""
    from pipeline.core.constants import env_problems

    for problem in env_problems(os.environ):
        if problem not in _ENV_WARNED:
            _ENV_WARNED.add(problem)
            log.warning(problem)


def _run_local(manifest: str, workers: int, work: str | None, report: str | None,
               keep_work: bool, listener: Listener | None, contact_sheet: bool,
               interpreter: str, stop: StopRequest | None, definition_text: str | None,
               overwrite_report: bool) -> RunResult:
    """:func:`run_local`'s run, in its caller's words."""
    manifest = _resolved(manifest)
    run_id = new_run_id()
    shared = work is not None  # a --work that another run (another machine's) may be given
    work = _resolved(work or default_work(manifest, run_id))
    report_url = _resolved(report or default_report(manifest))
    _check_writable(report_url, work)
    if not overwrite_report:
        check_report_free(report_url, sheet=contact_sheet)
    started = time.time()
    event = to_payload(RunInput(manifest=manifest, work=work, run_id=run_id, report=report_url))
    ours = False  # the work location is this run's (not another run's, going on): removed
    held: list[work_lease.Holder] = []  # this run's lease on it (work_lease), once taken
    # a run whose lease another run takes over stops (work_lease.Holder's on_lost)
    stop = stop if stop is not None else StopRequest()
    published: list[str] = []  # the outputs this run's jobs published (_Published)
    listener = _Published(published, listener)

    def take() -> None:
        held.append(_hold_work(work, run_id, lambda _lease: stop.request(0)))

    try:
        # held_work.holding: the results of the jobs a stopped run finished, for its report
        with _run_env(KEEP_SEGMENTS_ENV, "1" if keep_work else None), \
                _run_env(THUMBNAILS_ENV, str(SHEET_BOX) if contact_sheet else None), \
                _run_env(RUN_TAG_ENV, run_id, replace=True), \
                _run_env(WORK_ENV, work, replace=True), \
                held_work.holding():
            # listed while it runs: a later run of the same scan defers to it
            with local_runs.listed(f"run-{run_id}", run_id, manifest, work, keep_work,
                                   report_url):
                _not_running_already(manifest, f"run-{run_id}", report_url)
                # a lease only where another machine's run may look: a run's default work
                # folder is named by its run id, which no other run is given
                _claim_work(work, f"run-{run_id}", take if shared else None)
                ours = True
                try:
                    with LocalEngine(workers, listener, definition_text=definition_text,
                                     interpreter=interpreter, stop=stop,
                                     history=keep_work) as engine:
                        execution = engine.run(event, name=f"run-{run_id}")
                        peaks = {pid: kb / 1024 for pid, kb in engine.worker_peaks_kb.items()}
                except EngineError as exc:  # what its jobs did (held here till the block ends)
                    if not (held and held[0].lost is not None):  # (not another run's work)
                        exc.summary = _summary_of_failed(  # type: ignore[attr-defined]
                            work, str(exc))
                    raise
            interrupted = stop.signal
            doc = None
            written = True  # the report at report_url is this run's
            error = None
            summary = None
            if held and held[0].lost is not None:  # its work is another run's now
                return _lost_work(held[0], run_id, report_url, work, started, published)
            history = _write_history(work, execution.history)
            if execution.status == "SUCCEEDED":
                doc, written = _own_report(report_url, work, run_id)
                if execution.failures or published:  # what the jobs' results may not say
                    from pipeline.steps.report import with_failed_executions

                    if with_failed_executions(doc, execution.failures, history,
                                              set(published)) and written:
                        _rewrite_report(report_url, doc)
            elif interrupted is not None:  # stopped (ABORTED), or failed as it stopped
                doc = _report_interrupted(
                    work, f"the run was stopped ({signal_name(interrupted)})")
            elif execution.status == "TIMED_OUT":  # its tasks were stopped as on a stop
                doc = _report_interrupted(work, "the run timed out (the state machine's "
                                                "TimeoutSeconds)")
            if doc is None:  # failed as a whole, or writing its report
                record = failure_record({"Error": execution.error, "Cause": execution.cause})
                error = f"{record['type']}: {record['message']}"
                summary = _summary_of_failed(work, error)
        # (none beside another run's report: it is that run's place; nor for a report of no
        # job, a picture of nothing, which keeps the sheet of the last run's jobs when its
        # report keeps them: pipeline.steps.report.last_run)
        keeps = bool(doc and written and doc.get("last_run"))  # (only a report of no job has one)
        sheet = (_write_contact_sheet(doc, work, report_url)
                 if contact_sheet and doc and doc.get("jobs") and written and interrupted is None
                 else None)
        return RunResult(run_id, execution.status, doc, report_url, work,
                         time.time() - started, error, peaks, sheet, interrupted,
                         _remove_stale(report_url, run_id, doc is not None,
                                       sheet is not None or not written or keeps, started),
                         summary)
    except EngineError as exc:
        if held and held[0].lost is not None:
            return _lost_work(held[0], run_id, report_url, work, started, published)
        return RunResult(run_id, "FAILED", None, report_url, work, time.time() - started,
                         str(exc),
                         removed=_remove_stale(report_url, run_id, False, False, started),
                         summary=getattr(exc, "summary", None))
    finally:
        lease = held[0] if held else None
        if lease is not None and not lease.ours():  # another run took it: its files now
            lease.release(remove=False)
            ours = False
            log.warning("the work location %s was taken by another run while this one ran "
                        "(this run's lease there had expired, or was removed): what is there "
                        "now is that run's, left to it", work)
        elif lease is not None:
            # with the work, unless --keep-work or the run was refused before it had the
            # location (an earlier run's uploads it could not end): then alone
            lease.release(remove=keep_work or not ours)
        if ours and not keep_work:
            try:
                _remove_work(work)
            except TiffpipeError as exc:
                log.warning("could not remove the work files at %s: %s", work, exc)


class _Published:
    """The run's listener (``then``), which also notes in ``outputs`` the output of every
    job that published one (a merge, or a ProcessJob, that did not skip it): what a run
    that lost its work location says it published (:func:`_lost_work`), from this process
    (the work location, where the results are, is another run's by then). A listener that
    raises (a bug in a progress bar) costs the run nothing: its error is logged once, with
    its traceback and the listener's name, and it is not called again. Before, its
    exception stopped the engine: every job FAILED, said to be transient."""

    def __init__(self, outputs: list[str], then: Listener | None) -> None:
        self.outputs, self.then = outputs, then
        self._lock = threading.Lock()

    def __call__(self, function: str, event: dict[str, Any], ok: bool,
                 payload: dict[str, Any]) -> None:
        if (ok and event.get("action") in ("merge", "process_job") and isinstance(payload, dict)
                and not payload.get("skipped") and isinstance(payload.get("output"), str)):
            self.outputs.append(payload["output"])
        then = self.then
        if then is None:
            return
        try:
            then(function, event, ok, payload)
        except Exception as exc:  # the listener's bug, not the run's
            with self._lock:
                first, self.then = self.then is then, None
            if first:
                log.error("the run's listener %s raised %s: %s (at the end of task %s.%s): "
                          "the run goes on without calling it again; its traceback follows",
                          _name_of(then), type(exc).__name__, exc, function,
                          event.get("action") if isinstance(event, dict) else None,
                          exc_info=exc)


def _name_of(listener: Any) -> str:
    """A listener as a person finds it: ``module.qualname`` of a function (of the class of
    a callable object), else its repr."""
    named = listener if hasattr(listener, "__qualname__") else type(listener)
    module = getattr(named, "__module__", None)
    return f"{module}.{named.__qualname__}" if module else repr(listener)


def _rewrite_report(report_url: str, doc: dict[str, Any]) -> None:
    """Write the run report ``doc`` over the one the run's Report task wrote, now that it
    says what the execution told of its jobs. A report that cannot be written (a storage
    error) is warned of, not the run's failure: the run's result holds ``doc``."""
    try:
        storage.write_json(report_url, doc)
    except TiffpipeError as exc:
        log.warning("the run report %s could not be rewritten with what the execution said "
                    "of its jobs (%s): it still says what their results say; the run's "
                    "result (RunResult.report, and the lines printed) says it all", report_url,
                    exc)


def _lost_work(lease: work_lease.Holder, run_id: str, report_url: str, work: str,
               started: float, published: list[str]) -> RunResult:
    """The result of a run stopped because another run took its work location over (its
    lease, unrenewed for EXPIRY_S, was taken for a dead run's): a failure without a report.
    The jobs' results and the report's place in the work are that run's now: nothing there
    is read, written or removed (the caller leaves the work and its uploads to that run).
    The error names the location, the run that took it and the outputs this run published
    (they stay: each is whole)."""
    taker = lease.lost[0] if lease.lost else None
    who = taker.describe() if taker is not None else (
        "another run (its lease there is gone: removed by hand, or the location taken by an "
        "older tiffpipe)")
    outputs = ", ".join(published) if published else "none"
    why = (f"this run's lease there had gone unrenewed for {work_lease.EXPIRY_S:.0f} s (a "
           "stalled process or machine, or a network that failed), so that run took it for a "
           "dead run's" if lease.stale else
           "this run's lease there, renewed less than "
           f"{work_lease.EXPIRY_S:.0f} s before, was replaced or removed (by hand, or by a "
           "run that did not heed it)")
    error = (f"WorkLocationError: {work}: the work location was taken by {who} while this "
             f"run went on: {why}. This run stopped, wrote "
             f"no report and left the work and its S3 uploads to that run. Outputs it "
             f"published: {outputs} (a job that was publishing as the run stopped may have "
             f"published its output too); "
             + in_callers_words("run the other jobs again, with a --work of their own"))
    return RunResult(run_id, "FAILED", None, report_url, work, time.time() - started, error,
                     removed=_remove_stale(report_url, run_id, False, False, started))


def _remove_stale(report_url: str, run_id: str, report_written: bool,
                  sheet_written: bool, started: float | None = None) -> list[str]:
    """After a run, the report at its path is this run's or none, and so is the contact sheet
    beside it: a run that failed or was stopped before its report, or wrote no sheet (a
    stopped run, ``--no-contact-sheet``), removes an earlier run's, which would describe
    that run as this one's (a report from yesterday saying every job succeeded). A report
    whose ``run_id`` is this run's stays, and so does a file there that is not a run's
    report (``--report`` given a user's own file), and so do a report (and its sheet) of a
    run that started after this one (``started``, epoch seconds): not an earlier run's, but
    one that ran alongside this one (given its report path) and ended first, which this run
    did not replace. A scan's run with no job whose report keeps the last run's jobs
    (``last_run``) counts its sheet as written: it is that run's, kept. What it removed; one
    it cannot remove is logged, never the run's failure."""
    removed: list[str] = []
    there: str | None = None  # the run whose report is at report_url (read once)
    if not report_written:
        there, since = _report_run(report_url)
        if (there not in (run_id, None) and started is not None and since is not None
                and since >= started):
            log.warning(in_callers_words("%s holds the report of run %s, which started after "
                                         "this one: kept (give each run its own --report)"),
                        report_url, there)
            return removed
    for url, written in ((report_url, report_written),
                         (contact_sheet_url(report_url), sheet_written)):
        try:
            if written or (url == report_url and there in (run_id, None)):
                continue
            if url != report_url and not _sheet_is_ours(url):
                continue  # a picture of the user's with the sheet's name: kept
            if storage.remove(url):
                removed.append(url)
        except TiffpipeError as exc:
            log.warning("could not remove %s, from an earlier run: %s", url, exc)
    return removed


def remove_earlier_report(report_url: str) -> list[str]:
    """What a run stopped before it started (``tiffpipe run`` while it checked the
    manifest) removes, as a run that wrote no report: an earlier run's report and contact
    sheet at its paths (:func:`_remove_stale`); what it removed."""
    return _remove_stale(report_url, "", False, False)


#: how every run report begins ("run_id" is its first key: pipeline/steps/report.py)
REPORT_START = re.compile(rb'\s*\{\s*"run_id"\s*:')


#: what to do about a file at the report's path that is no run report (said in the words of
#: the run's caller: :func:`in_callers_words`)
REPORT_ADVICE = ("give --report another path, or move that file away (or run with "
                 "--overwrite-report to replace it)")


def check_report_free(url: str, sheet: bool = False) -> None:
    """OutputNotWritableError if a file at the report's path ``url`` is not a run report (a
    user's own JSON, a TIFF given to --report by mistake), which the run's report would
    replace: only an earlier run's report (known by how it begins: one small read, whatever
    the file's size) is replaced, unless the run is told to (``tiffpipe run
    --overwrite-report``). An empty file holds nothing to lose: replaced (``mktemp``'s, a
    ``tempfile.NamedTemporaryFile``'s, made to be given as the report's path). A job's input
    or output is never replaced (:func:`pipeline.steps.planning.check_report_path`).
    ``sheet``: the run draws a contact sheet beside the report, which replaces only a
    contact sheet (:func:`_sheet_is_ours`) there too."""
    if storage.exists(url):
        try:
            recognised = (storage.size(url) == 0
                          or REPORT_START.match(storage.read_range(url, 0, 64)) is not None)
        except TiffpipeError:  # (unreadable: not known to be a report)
            recognised = False
        if not recognised:
            raise OutputNotWritableError(
                f"{url}: exists and is not a tiffpipe run report, which the run's report "
                f"would replace: {in_callers_words(REPORT_ADVICE)}")
    if sheet and not _sheet_is_ours(contact_sheet_url(url)):
        raise OutputNotWritableError(
            f"{contact_sheet_url(url)}: exists and is not a tiffpipe contact sheet, which the "
            f"run's contact sheet (named after the report) would replace: "
            + in_callers_words(f"run with --no-contact-sheet, or {REPORT_ADVICE}"))


def _sheet_is_ours(url: str) -> bool:
    """Whether a run may replace or remove the file at a contact sheet's path ``url``: none
    there, or a contact sheet (:func:`pipeline.core.thumbs.is_contact_sheet`; not a picture
    of the user's that has its name)."""
    try:
        return not storage.exists(url) or is_contact_sheet(storage.read_range(url, 0, 24))
    except TiffpipeError:  # (unreadable: not known to be a sheet)
        return False


def _report_run(url: str) -> tuple[str | None, float | None]:
    """The ``run_id`` of the report at ``url`` and its run's ``started_at`` (None: none
    there, or not a report)."""
    try:
        doc = storage.read_json(url, missing=StorageError)
    except (StorageError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    since = doc.get("started_at")
    return doc.get("run_id"), float(since) if isinstance(since, (int, float)) else None


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2 (``a stop request`` for 0, a request without a signal)."""
    try:
        return signal.Signals(signum).name if signum else "a stop request"
    except ValueError:
        return f"signal {signum}"


def _write_history(work: str, events: list[dict[str, Any]] | None) -> str | None:
    """Where the run's execution history (``events``, kept by a run with --keep-work) was
    written in its work folder (:data:`HISTORY_FILE`), or None if none was kept or it could
    not be written (a warning: the run's outcome is the same)."""
    if events is None:
        return None
    url = storage.join(work, HISTORY_FILE)
    try:
        storage.write_json(url, {"events": events})
    except TiffpipeError as exc:
        log.warning("could not write the execution's history to %s: %s", url, exc)
        return None
    return url


def _own_report(report_url: str, work: str, run_id: str) -> tuple[dict[str, Any], bool]:
    """This run's report, as its Report step wrote it, for the summary, the exit code and
    the contact sheet, and whether the file at ``report_url`` is it. Another run given the
    same report path (two runs of one manifest at once) may have written over it since:
    then this run's is made again from its work location (not written: the file is the
    other run's now, and so is the contact sheet beside it), with a warning."""
    doc: dict[str, Any] = storage.read_json(report_url)
    if doc.get("run_id") == run_id:
        return doc, True
    from pipeline.steps.report import run_report

    log.warning(in_callers_words(
        "%s holds the report of run %s, which wrote it after this run's: two runs were given "
        "that report path at once; this run's summary follows, without a contact sheet (give "
        "each run its own --report to keep both)"), report_url, doc.get("run_id"))
    return run_report(ReportEvent(layout.run_file(work)))[0], False


def _report_interrupted(work: str, stopped: str) -> dict[str, Any] | None:
    """The report of a stopped run, written by the Report step as at a run's end: each job
    without a result (not finished) is FAILED with error :data:`INTERRUPTED_ERROR` (as a job
    that failed; the report's schema is unchanged), and its partial files beside its output
    are removed (:func:`_remove_partial_output`). None when the run was stopped before
    PlanRun wrote run.json (no job had started): no report is written then."""
    message = f"{stopped} before this job finished: {NO_OUTPUT}"
    found = _unfinished_as(work, INTERRUPTED_ERROR, message)
    if found is None:
        return None
    doc, url = found
    storage.write_json(url, doc)
    return doc


def _unfinished_as(work: str, error_type: str, message: str
                   ) -> tuple[dict[str, Any], str] | None:
    """The run report of the run in ``work`` and where it goes, its jobs without a result
    FAILED with ``error_type`` and ``message`` (the partial files beside their outputs
    removed: :func:`_remove_partial_output`); None when PlanRun wrote no run.json (no job
    had started)."""
    from pipeline.steps.report import run_report

    run_url = layout.run_file(work)
    if not storage.exists(run_url):
        return None
    doc, url = run_report(ReportEvent(run_url), missing={"type": error_type,
                                                          "message": message})
    for job in doc["jobs"]:
        if job.get("error", {}).get("type") == error_type:
            _remove_partial_output(job["output"], doc["run_id"],
                                   layout.job_dir(work, job["job"]))
            there = _file_left_at(job["output"], doc.get("started_at"))
            if there and message.endswith(NO_OUTPUT):
                job["error"]["message"] = message[:-len(NO_OUTPUT)] + (
                    f"{FILE_LEFT}{there}, which a rerun with \"if_exists\": \"skip\" would "
                    "take for this job's: run it again")
    return doc, url


#: how a job the run did not finish is said to have no output of the run's (its message's end)
NO_OUTPUT = "no output written; run it again"
#: what it says instead when a file is at its output path (then what the file is)
FILE_LEFT = "this run wrote no output, and the file at its output path is "


def _file_left_at(output: str, since: float | None) -> str | None:
    """What the file at the output path of a job the run did not finish is: ``an earlier
    one, not this run's`` (a local file last written before the run began, ``since``), ``not
    known to be this run's`` (an S3 object, or a file written since: this job's, published
    as the run stopped, or another writer's); None when there is none (or it cannot be
    looked at: the message's usual words then)."""
    try:
        if storage.is_s3(output):
            there = storage.exists(output)
            return "not known to be this run's (an earlier one, most likely)" if there else None
        modified = os.stat(output).st_mtime
    except (OSError, TiffpipeError):
        return None
    if since is not None and modified < since:
        return "an earlier one, not this run's"
    return "not known to be this run's (written since the run began)"


def _summary_of_failed(work: str, error: str) -> dict[str, Any] | None:
    """What a run that failed as a whole (its engine stopped, or its report could not be
    written) did: its jobs as the Report step would report them from their results in the
    work, those without one FAILED with :data:`RUN_FAILED_ERROR` (their partial files
    beside their outputs removed, as a stopped run's); not written anywhere (the report's
    path keeps no report of a failed run). None when no job was listed, or the work
    cannot be read (the error says why)."""
    message = f"the run failed as a whole before this job finished ({error}): {NO_OUTPUT}"
    try:
        found = _unfinished_as(work, RUN_FAILED_ERROR, shortened(message))
    except Exception as exc:  # noqa: BLE001 - (out of memory, say) the error alone, then
        log.warning("could not read what the run's jobs did from %s: %s: %s", work,
                    type(exc).__name__, exc)
        return None
    return None if found is None else found[0]


def _remove_partial_output(output: str, run_id: str, job_work: str) -> None:
    """Remove what a stopped job of the run ``run_id`` may have left of its output: a local
    output's temporary files beside it that this run made (:func:`storage.temp_output_paths`:
    a worker killed while it wrote one), an S3 output's multipart uploads the job recorded
    in ``job_work``. Not those of another run writing the same output; the output itself is
    never touched."""
    from pipeline.steps.common import abort_output_uploads

    try:
        if storage.is_s3(output):
            abort_output_uploads(job_work)
            return
        storage.remove_temp_outputs(output, run_id)
    except (OSError, TiffpipeError) as exc:
        log.warning("could not remove the partial files of %s: %s", output, exc)


@contextmanager
def _run_env(name: str, value: str | None, replace: bool = False) -> Iterator[None]:
    """``name`` set to ``value`` in this process's environment, which the engine's workers
    inherit, for the run only (None, or a variable the caller set: left as it is, unless
    ``replace``: then restored after). With ``keep_work``, :data:`KEEP_SEGMENTS_ENV`: the
    steps write every segment, plan and result to the work location (small ProcessJobs
    compose from memory, and the engine holds the plans and results its own process reads,
    otherwise). With a contact sheet, :data:`THUMBNAILS_ENV`: the process steps sum the
    thumbnails of large pages as they go (pipeline/steps/thumbs.py), which the sheet then
    reads instead of decoding those pages again. :data:`RUN_TAG_ENV`, always the run's id:
    the temporary files beside its outputs carry it (a stopped or killed run's are found
    by it)."""
    before = os.environ.get(name)
    if value is None or (before is not None and not replace):
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _write_contact_sheet(report: dict[str, Any], work: str, report_url: str) -> str | None:
    """The contact sheet of a finished run (None, with a warning, if it cannot be made: the
    run's results never depend on it). Reads the jobs from run.json, before the work goes."""
    from pipeline.contact_sheet import write_contact_sheet
    from pipeline.steps import layout

    url = contact_sheet_url(report_url)
    try:
        specs = [JobSpec.from_json(j) for j in storage.read_json(layout.run_file(work))["jobs"]]
        write_contact_sheet(report, specs, url, work)
    except Exception as exc:  # noqa: BLE001 - a picture must not fail a finished run
        log.warning("could not write the contact sheet %s: %s: %s", url,
                    type(exc).__name__, exc)
        return None
    return url


def _not_running_already(manifest: str, name: str, report_url: str) -> None:
    """RunningAlreadyError if a local run of the same list of jobs (the same manifest file,
    under any name) listed before the run ``name`` is still going on on this machine: both
    would do every job and write the same outputs (of two started at once, the later one is
    refused; a killed run no longer counts: :mod:`pipeline.adapters.local_runs`). A scan's
    run is not refused: its PlanRun defers to the earlier run. The manifest is read only
    when there is such a run. A copy of a manifest (:func:`manifest_file`: a dict given to
    :func:`run`, a manifest on stdin or in a pipe, each written to a temporary file of its
    run's) is the same as another run's copy of the same text (either kind): its locations
    are anchored to absolute paths, so the same jobs. Also if a run of another manifest going
    on was given the same report path (``report_url``): the report of whichever ended last would
    replace the other's, without a word."""
    copy = _copy_of(manifest)

    def same(url: str) -> bool:
        return storage.same_file(url, manifest) or (
            copy is not None and _copy_of(url) is not None and _same_text(url, manifest))

    writing = local_runs.reporting_to(report_url, name, same)
    if writing is not None:
        raise RunningAlreadyError(
            f"{report_url}: {writing.describe()} (of {writing.manifest}) is writing its "
            "report there now: this run's would replace it. "
            + in_callers_words("Give this run another --report, or wait for that run to "
                               "end, then run again"))
    other = local_runs.earlier_run(name, same)
    if other is None or isinstance(read_manifest(manifest), ScanSpec):
        return
    which = {_GIVEN_PREFIX: ("the manifest given",
                             "the same manifest (given to pipeline.run as a dict too)"),
             _PIPED_PREFIX: ("the manifest read from stdin (or a pipe)",
                             "the same jobs (their manifest read from stdin or a pipe too)"),
             }.get(copy or "", (manifest, "this manifest"))
    raise RunningAlreadyError(
        f"{which[0]}: {other} is running {which[1]} now: a second run would do every job "
        "again and write the same outputs. Wait for it to end, or stop it, then run again")


def _same_text(a: str, b: str) -> bool:
    """Whether the local files ``a`` and ``b`` hold the same bytes (False: one is gone)."""
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def _check_writable(report_url: str, work: str) -> None:
    """Before any work (a run whose report is lost is wasted): the report's path and the
    work folder can be written, else an OutputNotWritableError (the report's; the work
    folder's problem said after it when it has one too) or a WorkLocationError, every place
    said at once rather than one a run (a manifest in a read-only folder: its report, then,
    given ``--report``, its work folder)."""
    problems: list[TiffpipeError] = []
    for check in (lambda: storage.check_writable(
                      report_url, "report", in_callers_words("give --report another path")),
                  lambda: work_location.check_writable(work)):
        try:
            check()
        except (OutputNotWritableError, WorkLocationError) as exc:
            problems.append(exc)
    if len(problems) > 1:
        raise OutputNotWritableError(f"{problems[0]}; nor can the work folder be: "
                                     f"{problems[1]}") from problems[0]
    if problems:
        raise problems[0]


def _claim_work(work: str, name: str, take: Callable[[], None] | None = None) -> None:
    """Make the work location this run's (:func:`work_location.prepare`), or a
    WorkLocationError: another local run going on uses it, or it holds other files, or
    (``take``: this run's lease, taken before an earlier run's work is removed) another
    run took it first."""
    other = local_runs.using(work, name)
    if other is not None and not other.alive:
        raise WorkLocationError(f"{work}: the work location of {other.describe()}, which was "
                                "killed: another run is removing what it left there now; run "
                                "again in a moment, or "
                                + in_callers_words("give this run another --work"),
                                going_on=True)
    if other is not None:
        raise WorkLocationError(f"{work}: the work location of {other.describe()}, still "
                                "going on: " + in_callers_words(
                                    "give this run another --work, or none (each run then "
                                    "gets its own)"), going_on=True)
    earlier = work_location.prepare(work, take)
    if storage.is_s3(work) and storage.versioned(work):
        log.warning("the work location %s is in a versioned bucket: every work file this run "
                    "writes and removes stays there as a noncurrent version, behind a delete "
                    "marker, until a lifecycle rule expires them (docs/pipeline.md, \"Work on "
                    "a versioned bucket\")", work)
    if earlier is not None:
        log.warning(in_callers_words("removed the work files of an earlier run (%s) at %s "
                                     "(kept with --keep-work, or left by a killed run): this "
                                     "run's would mix with them"), earlier, work)


def _hold_work(work: str, run_id: str,
               on_lost: Callable[[work_lease.Lease | None], None]) -> work_lease.Holder:
    """This run's lease on its work location (:mod:`pipeline.adapters.work_lease`), renewed
    while the run goes on (``on_lost``: called once another run took it over), or a
    WorkLocationError (another run took it first; the location takes no file: nothing has
    run yet)."""
    try:
        return work_lease.hold(work, run_id, on_lost)
    except WorkLocationError:
        raise
    except TiffpipeError as exc:
        raise WorkLocationError(f"{work}: cannot write this run's lease there ({exc}): "
                                + in_callers_words("give --work a folder (or prefix) this "
                                                   "run can write, or none")) from exc


def _remove_work(work: str) -> None:
    """What this run wrote in its work location (never what else it holds)."""
    work_location.remove(work)
