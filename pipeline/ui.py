"""What a person sees of a run: a progress bar on a terminal (log lines otherwise) and a
summary table at the end."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Self, TextIO

from pipeline.errors import INTERRUPTED_ERROR, one_line, was_stopped

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table


@contextmanager
def shown(stream: TextIO | None = None) -> Iterator[None]:
    """What the block prints on ``stream`` (stdout), flushed; when it can no longer be
    written (its reader gone: ``tiffpipe run m.json | head``, ``tiffpipe status ARN |
    head``), the rest of the block is not printed and the stream is given up
    (:func:`off_gone_streams`), but the command goes on: the lines for another stream that
    follow (a terminal still there) are still written, and its exit code is what it did."""
    stream = stream if stream is not None else sys.stdout
    try:
        yield
        stream.flush()
    except OSError:
        off_gone_streams(stream)


def off_gone_streams(*streams: Any) -> None:
    """``streams`` (stdout and stderr when none is named) made /dev/null (what is still
    buffered for them, and any later write, goes nowhere instead of failing again at the
    exit)."""
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in streams or (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError, AttributeError):
            os.dup2(null, stream.fileno())
    os.close(null)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal: False for None (Python's stream when the command
    started with its fd closed, ``>&-``, or without a console, pythonw) and for a stream
    closed or failing."""
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


@contextmanager
def standard_streams() -> Iterator[None]:
    """stdout and stderr writable for the block, however the command was started: a closed
    fd 1 or 2 (``tiffpipe run m.json >&-`` or ``2>&-`` from a daemon or a cron line) is given
    /dev/null for good (a file the command opens would otherwise take its number, and what
    a library writes to that fd would go into the file), and a stream that is None (Python's
    when its fd was closed as it started; pythonw's) is a text stream on /dev/null for the
    block, None again after it. Each line for such a stream goes nowhere; the command does
    what it does, with its exit code (it crashed on the first line, exit 1)."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    stand_ins = {name: open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed below
                 for name in ("stdout", "stderr") if getattr(sys, name) is None}
    for name, stream in stand_ins.items():
        setattr(sys, name, stream)
    try:
        yield
    finally:
        for name, stream in stand_ins.items():
            if getattr(sys, name) is stream:
                setattr(sys, name, None)
            stream.close()


def stop_signals() -> list[signal.Signals]:
    """The signals that stop a command (a run, a deploy): SIGINT, SIGTERM and SIGHUP where
    there is one (not on Windows), but none that was ignored when the command started:
    ``nohup`` ignores SIGHUP so that the command outlives its terminal, and a shell ignores
    SIGINT for a job it starts in the background (``tiffpipe run m.json &`` in a script)."""
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    found = [getattr(signal, name) for name in names if hasattr(signal, name)]
    return [s for s in found if signal.getsignal(s) is not signal.SIG_IGN]


@contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` handles each of :func:`stop_signals` while the block runs (their handlers
    before it are put back after); outside the main thread, where Python runs no signal
    handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, handler) for s in stop_signals()}
    try:
        yield
    finally:
        for s, old in before.items():
            signal.signal(s, old)


def _reader_gone(stream: Any) -> bool:
    """Whether ``stream`` writes to a pipe whose reader has gone (its end polls as an
    error); False for a stream that is no such pipe (a file, a terminal, None)."""
    import select

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # (Windows: no poll; a broken pipe there is stdout's)
        return stream is sys.stdout
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


@contextmanager
def uninterrupted() -> Iterator[None]:
    """:func:`stop_signals` held off while the block runs (a step that must not be cut in
    two: a deploy lock's write and the note of it, its release): each that comes is kept,
    and the first raised again when the block ends, to the handlers before it. Outside the
    main thread, where Python runs no signal handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    before = {s: signal.signal(s, lambda signum, _: came.append(signum))
              for s in stop_signals()}
    try:
        yield
    finally:
        for s, old in before.items():
            signal.signal(s, old)
        if came:
            signal.raise_signal(came[0])


def exit_code_of(main: Callable[[], int]) -> int:
    """The exit code of a command's ``main`` (``tiffpipe``'s, ``deploy.py``'s), its stdout
    flushed; argparse's exits (``--help``, ``--version``, a usage error) included. When
    stdout's reader has gone (``deploy.py --print-operator-policy | head -3``, ``tiffpipe
    run --help | head``), quietly, as Python's signal docs advise ("Note on SIGPIPE"): what
    is left goes nowhere (:func:`off_gone_streams`), with no traceback nor "Exception
    ignored" at the exit, and the code is what ``main`` returned (0 if stdout's pipe broke
    while it printed: it printed until no one read it, as ``tiffpipe ops | head`` does).
    Another pipe broken under ``main`` (stderr's: ``deploy.py 2>&1 | head``, its progress
    lines) stopped the command half-way: exit 141 (128 + SIGPIPE, a shell's code for a
    writer its pipe stopped), quietly, never 0. A closed or missing stdout or stderr
    (``>&-``, ``2>&-``, pythonw) is /dev/null for ``main`` (:func:`standard_streams`)."""
    with standard_streams():
        try:
            code = main()
        except SystemExit as exc:  # argparse's: its message printed (or lost with stdout)
            if exc.code is not None and not isinstance(exc.code, int):
                raise
            code = exc.code or 0
        except BrokenPipeError:
            gone = [s for s in (sys.stdout, sys.stderr) if _reader_gone(s)]
            code = 0 if sys.stdout in gone else 128 + 13  # (SIGPIPE: 13 on every POSIX)
            if gone:  # (none named: off_gone_streams takes both)
                off_gone_streams(*gone)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            off_gone_streams(sys.stdout)
    return code


class RunProgress:
    """A listener for :class:`pipeline.engine.local.LocalEngine`: counts processed tiles per
    job and overall. Called from the engine's Map threads, hence the lock."""

    def __init__(self, jobs: list[Any], quiet: bool = False, stream: Any = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet or self.stream is None  # (None: stderr closed, pythonw's)
        # a scan's jobs are known only once the run has planned them
        self.names = [os.path.basename(j.input) for j in jobs] if isinstance(jobs, list) else []
        self.totals: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.logged_decile: dict[int, int] = {}
        self.lock = threading.Lock()
        self.live = not self.quiet and is_terminal(self.stream)
        self.progress: Progress | None = None
        self.tasks: dict[int, Any] = {}
        if self.live:
            # rich is imported when it draws (~30 ms of a command's start otherwise)
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("tiles"), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False)
            self.overall = self.progress.add_task("all jobs", total=None)

    def __enter__(self) -> Self:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            with suppress(OSError):  # (its last drawing, on a stream gone: see _gone)
                self.progress.stop()

    def _gone(self) -> None:
        """The stream can no longer be written (its reader has gone: ``2>&1 | head``, a
        ``less`` quit early; its terminal hung up): no more progress, and the run goes on.
        A write that failed in the engine's thread failed the whole run (EngineError), and
        the jobs not yet run never ran."""
        self.quiet, self.live = True, False
        progress, self.progress = self.progress, None
        if progress is not None:
            with suppress(OSError):
                progress.stop()

    def _log(self, text: str) -> None:
        if not self.quiet and not self.live:
            print(text, file=self.stream, flush=True)

    def __call__(self, function: str, event: dict[str, Any], ok: bool,
                 payload: dict[str, Any]) -> None:
        with self.lock:
            if self.quiet and not self.live:  # nothing to show (--quiet, or the stream gone)
                return
            try:
                self._heard(event.get("action"), ok, payload)
            except OSError:
                self._gone()

    def _heard(self, action: Any, ok: bool, payload: dict[str, Any]) -> None:
        """What a task's end shows: a job planned or skipped, tiles done, a job done or
        failed."""
        if action == "plan_job" and ok and payload.get("skipped"):
            self._log(f"job {payload['job']}: skipped, its output exists (if_exists: skip)")
        elif action == "plan_job" and ok:
            self._planned(payload["job"], payload["tiles"], payload.get("plan"))
        elif action in ("process", "process_unit", "process_job") and ok:
            self._advance(payload["job"], payload["tiles"])
        if action in ("merge", "process_job") and ok:  # process_job: a whole job
            if payload.get("skipped"):
                self._log(f"job {payload['job']}: skipped, its output appeared while it "
                          "ran (if_exists: skip)")
            else:
                self._log(f"job {payload['job']}: done -> {payload['output']}")
        if action == "record_failure" and ok:
            self._log(f"job {payload['job']}: FAILED ({payload['error']})")

    def _planned(self, job: int, tiles: int, plan: str | None) -> None:
        self.totals[job] = tiles
        self.done[job] = 0
        name = self.names[job] if job < len(self.names) else _input_name(plan, job)
        if self.progress:
            self.tasks[job] = self.progress.add_task(f"job {job} {name}", total=tiles)
            self.progress.update(self.overall, total=sum(self.totals.values()))
        self._log(f"job {job} ({name}): planned, {tiles} tiles")

    def _advance(self, job: int, tiles: int) -> None:
        self.done[job] = self.done.get(job, 0) + tiles
        if self.progress:
            self.progress.advance(self.tasks[job], tiles)
            self.progress.advance(self.overall, tiles)
            return
        total = max(self.totals.get(job, 1), 1)
        decile = self.done[job] * 10 // total
        if decile > self.logged_decile.get(job, 0):
            self.logged_decile[job] = decile
            all_done, all_total = sum(self.done.values()), sum(self.totals.values())
            self._log(f"job {job}: {self.done[job]}/{total} tiles; "
                      f"all jobs: {all_done}/{all_total} tiles")


def _input_name(plan: str | None, job: int) -> str:
    """The file name of a job's input from its plan (a scan's jobs: known once planned), or
    the job's number if the plan cannot be read."""
    from pipeline.steps.common import load_plan

    try:
        return os.path.basename(load_plan(plan).spec.input) if plan else str(job)
    except Exception:  # noqa: BLE001 - a name for a progress line: the job reports its own
        return str(job)


#: the summary's columns: (heading, right-aligned)
COLUMNS = (("job", True), ("status", False), ("pages", True), ("megapixels", True),
           ("seconds", True), ("output or error", False))


def number_text(x: float, decimals: int, below: float | None = None, *,
                trim: bool = False) -> str:
    """``x`` with ``decimals`` decimals (thousands grouped), or, below ``below`` (default:
    where those decimals would show fewer than two significant digits, ``10 ** (1 -
    decimals)``), with two significant digits: as ``g`` writes them with ``trim`` (0.04,
    1.2e-05, 0), else fixed (0.040, 0.0000012; at most 9 decimals; 0 with ``decimals``).
    The one formatter of the summary's and the estimate's numbers: a small figure once
    said "0" or "0.0" ("0.00" of a small job's storage, "0 Mpx" of a job of 0.26)."""
    if abs(x) >= (10 ** (1 - decimals) if below is None else below):
        return f"{x:,.{decimals}f}"
    if trim:
        return f"{x:.2g}"
    if 0 < abs(x):  # (0 and NaN: with their decimals)
        decimals = min(9, 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def megapixels_text(mpx: float) -> str:
    """Megapixels with the digits that show them: 1,234, 12.3, 0.26, 0.0041 (a page of 64 x
    64 pixels was "0.0" in the summary, a job of 0.26 "0 Mpx" in the estimate)."""
    return number_text(mpx, 0 if mpx >= 100 else 1, below=1, trim=True)


def megapixels_cell(job: dict[str, Any]) -> str:
    """A job's megapixels in the summary (and a contact sheet's row): its input pages',
    then its output pages' after an arrow when the ops made them another size (a crop, a
    downsample: ``64.0 -> 16.0``)."""
    if "megapixels" not in job:
        return ""
    read = megapixels_text(job["megapixels"])
    made = megapixels_text(job.get("output_megapixels", job["megapixels"]))
    return read if made == read else f"{read} -> {made}"


def summary_rows(report: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """The summary's title and one row a job: status, pages, megapixels (input -> output),
    seconds, output or error (the cells of :data:`COLUMNS`)."""
    skipped = f"{report['skipped']} skipped, " if report.get("skipped") else ""
    # a stopped job is counted stopped, not failed, as on stderr (the report's ``failed``
    # counts it too: docs/manifest-and-ops.md, "Fields of the run report")
    stopped = sum(map(was_stopped, report["jobs"]))
    title = (f"run {report['run_id']}: {report['succeeded']} succeeded, "
             f"{report['failed'] - stopped} failed, "
             f"{f'{stopped} stopped, ' if stopped else ''}{skipped}{report['seconds']:.1f} s")
    if report.get("deferred_to"):
        title += (f"; no job: an earlier run of this manifest is still running "
                  f"({report['deferred_to']}), the next run after it does what is left")
    rows = []
    for job in report["jobs"]:
        ok = job["status"] in ("SUCCEEDED", "SKIPPED")  # SKIPPED: the output exists
        detail = job["output"] if ok else _error_cell(job)
        if ok:
            status = job["status"]
        elif was_stopped(job):
            status = "STOPPED"  # FAILED in the report (a stopped run's job)
        else:
            status = "FAILED"
        rows.append([str(job["job"]), status, str(job.get("pages", "")),
                     megapixels_cell(job),
                     f"{job['seconds']:.1f}" if job.get("seconds") is not None else "",
                     detail])
    return title, rows


def error_text(error: dict[str, Any]) -> str:
    """A failed job's error as the summary and the failed jobs' lines say it: its name, its
    message on one line (:func:`pipeline.errors.one_line`: a row or a line each, the report
    keeping it whole), then the step the job failed in (the report's ``step``: the state,
    ``PlanJob``, ``Merge``, or the item of a Map, ``Process (batch 12)``), when it says one."""
    step = f" (in {error['step']})" if error.get("step") else ""
    return f"{error['type']}: {one_line(error['message'])}{step}"


def _error_cell(job: dict[str, Any]) -> str:
    """A failed job's error in the summary, after its input when the message does not name
    it (AWS's own errors, a timeout or Lambda's out of memory, know no file)."""
    error = job["error"]
    text = error_text(error)
    if job.get("input") and job["input"] not in error["message"]:
        text = f"{job['input']}: {text}"
    return text


def fault_lines(report: dict[str, Any]) -> list[str]:
    """The failed jobs of a report by fault (the error's ``fault``: the input's, the
    platform's, a transient one), a line each: how many, which (their numbers) and what to
    do (:data:`pipeline.errors.FAULT_ADVICE`). No line when no job failed."""
    from pipeline.errors import FAULT_ADVICE, job_fault

    by_fault: dict[str, list[int]] = {}
    for job in report["jobs"]:
        if job["status"] == "FAILED":
            by_fault.setdefault(job_fault(job), []).append(job["job"])
    lines = []
    for fault, advice in FAULT_ADVICE.items():
        jobs = by_fault.get(fault, [])
        if jobs:
            named = ", ".join(map(str, jobs[:20])) + (" ..." if len(jobs) > 20 else "")
            lines.append(f"tiffpipe: {_jobs(len(jobs))} failed of the {fault} (job {named}): "
                         f"{advice}")
    return lines


def failed_lines(report: dict[str, Any], report_url: str, limit: int) -> list[str]:
    """What a run whose jobs failed says on stderr even with ``--quiet`` (its summary not
    printed): each failed job, its input and its error, the first ``limit`` of them (then how
    many more), and a last line counting them and naming the report. No line when no job
    failed. A job a stop left without an output (:data:`INTERRUPTED_ERROR`) did not fail of
    itself: it is counted as stopped, not named (the run's interrupted line says them); a
    run stopped with no job failed of itself has the last line alone, counting the stopped
    jobs (its report is named all the same)."""
    failed = [j for j in report["jobs"] if j["status"] == "FAILED"
              and (j.get("error") or {}).get("type") != INTERRUPTED_ERROR]
    stopped = report["failed"] - len(failed)
    if not failed and not stopped:
        return []
    lines = [f"tiffpipe: job {j['job']} FAILED ({j['input']}): {error_text(j['error'])}"
             for j in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"tiffpipe: ... and {len(failed) - limit} more failed job(s): see the "
                     "report")
    count, what = (len(failed), "failed") if failed else (stopped, "stopped")
    more = "".join(f", {n} {word}" for n, word in ((report.get("skipped"), "skipped"),
                                                   (stopped, "stopped")) if n and word != what)
    lines.append(f"tiffpipe: {count} of {len(report['jobs'])} jobs {what} "
                 f"({report['succeeded']} succeeded{more}); report: {report_url}")
    return lines


def left_out_lines(report: dict[str, Any], limit: int) -> list[str]:
    """What ``run`` says on stderr (even with ``--quiet``, as a warning) of the jobs that left
    pages out (masks, overviews: a job's ``message`` in the report): the first ``limit`` jobs,
    their input and what they lost, short (the report's ``notice``; the ``message`` of a
    report without one), then how many more; once a run, not once a job (a scan of
    thousands of COGs would print thousands of lines). A job whose output lost nothing (a
    COG's overviews made again with ``pyramid``) has an empty notice, and is not said.
    Only a SUCCEEDED job's message is of pages left out: a SKIPPED job's says why it was
    skipped (its output existed), which a rerun with ``if_exists: skip`` is for, and is no
    warning."""
    noted = [(j, said) for j in report["jobs"] if j.get("status") == "SUCCEEDED"
             and (said := j.get("notice", j.get("message")))]
    lines = [f"tiffpipe: job {j['job']} ({j['input']}): {one_line(said)}"
             + (" (the report's message says why)" if said != j["message"] else "")
             for j, said in noted[:limit]]
    if len(noted) > limit:
        lines.append(f"tiffpipe: ... and {len(noted) - limit} more job(s) with a note (pages "
                     "left out, 1-bit pages written 8-bit, XMP rewritten or dropped, or "
                     "which pages bilevel \"auto\" wrote 1-bit): each job's message in the "
                     "report says which and why")
    return lines


def rerun_hint(report: dict[str, Any], if_exists: list[str]) -> str | None:
    """What a rerun of a manifest whose run left jobs without an output (failed, or
    stopped) does to the jobs that succeeded, when that is not to leave them (``if_exists``,
    each job's: ``overwrite`` runs them again, ``fail`` fails each), and what makes it run
    only the others; None when there is nothing to say (no job failed, or none that
    succeeded would be done again)."""
    done = [j for j in report["jobs"] if j["status"] == "SUCCEEDED"
            and j["job"] < len(if_exists) and if_exists[j["job"]] != "skip"]
    if not report["failed"] or not done:
        return None
    modes = sorted({if_exists[j["job"]] for j in done})
    redo = {("overwrite",): "would run {} again", ("fail",): "would fail {} (OutputExistsError)",
            }.get(tuple(modes), "would run again or fail {}")
    succeeded = f"the {_jobs(len(done))} that succeeded"
    return (f"tiffpipe: a rerun of this manifest as it is {redo.format(succeeded)} (if_exists: "
            f"{', '.join(modes)}); \"if_exists\": \"skip\" for them (in the manifest's "
            "\"defaults\", {\"defaults\": {\"if_exists\": \"skip\"}, \"jobs\": [...]}, and in "
            "each job that sets its own) keeps their outputs and runs only the jobs without "
            "one")


def _jobs(n: int) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{n} job{'' if n == 1 else 's'}"


def summary_table(report: dict[str, Any]) -> Table:
    """The summary as a rich table (statuses coloured; a long path or error folded over the
    cell's lines, whole)."""
    from rich.table import Table

    title, rows = summary_rows(report)
    table = Table(title=title)
    for name, right in COLUMNS:
        # a path or an error too long for the terminal is folded over lines, never cut
        table.add_column(name, justify="right" if right else "left",
                         overflow="ellipsis" if right else "fold")
    for row in rows:
        colour = {"SUCCEEDED": "green", "STOPPED": "yellow", "SKIPPED": "cyan"}.get(row[1],
                                                                                 "red")
        table.add_row(*row[:1], f"[{colour}]{row[1]}[/]", *row[2:])
    return table


#: the report's reasons a scan left a TIFF out (pipeline.core.manifest.LEFT_OUT_WHY), as the
#: scan's line says them after their count
LEFT_OUT_WORDS = {"name_collision": "whose outputs would be one file",
                  "link_outside": "link(s) to outside the folder",
                  "link_to_nothing": "link(s) to nothing",
                  "name_not_utf8": "whose names are not UTF-8"}


def scan_line(report: dict[str, Any]) -> str | None:
    """What a scan's run found, a line (the report's ``scan``): the TIFFs under its input,
    those done before, those left out and why, and the new ones (its jobs); None for a run
    of a list of jobs, or a scan's run that deferred to an earlier one (it listed nothing).
    ``tiffpipe estimate`` of a scan prints it of its result's ``scan``, the same record."""
    scan = report.get("scan")
    if not isinstance(scan, dict):
        return None
    left_out = {why: n for why, n in (scan.get("left_out") or {}).items() if n}
    why = ", ".join(f"{n} {LEFT_OUT_WORDS.get(what, what)}" for what, n in left_out.items())
    left = f", {sum(left_out.values())} left out ({why})" if left_out else ""
    return (f"scan of {scan['input']} into {scan['output']}: {scan['tiffs']} TIFF(s), "
            f"{scan['done_before']} done before{left}, {scan['jobs']} new")


def last_run_line(report: dict[str, Any]) -> str | None:
    """What the report of a run with no job kept of the last run that had jobs (its
    ``last_run``: pipeline.steps.report.last_run), a line; None when it kept none."""
    last = report.get("last_run")
    if not isinstance(last, dict):
        return None
    skipped = f", {last['skipped']} skipped" if last.get("skipped") else ""
    return (f"last run with jobs: {last['run_id']}, {_jobs(len(last['jobs']))}: "
            f"{last['succeeded']} succeeded, {last['failed']} failed{skipped} (kept in this "
            "report's last_run; the contact sheet beside it left as that run drew it)")


def _below(report: dict[str, Any]) -> list[str]:
    """The lines under the summary's table: a scan's (:func:`scan_line`), then what a run
    with no job kept (:func:`last_run_line`)."""
    return [line for line in (scan_line(report), last_run_line(report)) if line is not None]


def summary_text(report: dict[str, Any]) -> str:
    """The summary as plain lines (for a log or a pipe: no colours or box characters, a long
    path or error never wrapped); a run without jobs, its title alone; then a scan's line
    (:func:`scan_line`) and what a run with no job kept (:func:`last_run_line`)."""
    title, rows = summary_rows(report)
    below = _below(report)
    if not rows:
        return "\n".join([title, *below])
    cells = [[name for name, _ in COLUMNS], *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = [title]
    for r in cells:
        lines.append("  ".join((c.rjust(w) if right else c.ljust(w))
                               for c, w, (_, right) in zip(r, widths, COLUMNS, strict=True)
                               ).rstrip())
    return "\n".join([*lines, *below])


def print_summary(report: dict[str, Any], stream: Any = None) -> None:
    """The summary table: drawn by rich on a terminal, plain lines otherwise (rich's import
    and drawing took ~30 ms of a short command's time); a scan's line under it (and what a run
    with no job kept: :func:`last_run_line`). Nothing on a stream that is None (stdout
    closed, pythonw's)."""
    stream = stream or sys.stdout
    if stream is None:
        return
    if not is_terminal(stream) or not report["jobs"]:  # no jobs: the title alone, a line
        print(summary_text(report), file=stream)
        return
    from rich.console import Console

    Console(file=stream).print(summary_table(report))
    for line in _below(report):
        print(line, file=stream)
