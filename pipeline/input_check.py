"""``tiffpipe validate --inputs``: every job of a manifest (a scan's, its folder listed)
checked as PlanJob checks it, before a run: the output (``if_exists``, writable), the
custom functions, and the input's page headers (IFDs, never pixels) against the job's pages,
ops and output options, by PlanJob's own code (:func:`pipeline.steps.planning.
checked_plan`), with every refused page told, not the first one only. The inputs are read
by a bounded number of threads (S3's latency: a request costs tens of milliseconds), with a
progress bar on a terminal for long lists."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TextIO, TypeVar

from pipeline.core.manifest import ScanSpec, is_s3, quoted
from pipeline.core.models import JobSpec
from pipeline.core.plan import grouped_by_page
from pipeline.errors import TiffpipeError
from pipeline.ui import is_terminal

#: inputs read at once (each read is a few small requests: on S3 mostly waiting)
INPUT_THREADS = 16
#: the fewest items a progress bar is shown for (on a terminal): fewer are done at once
PROGRESS_FROM = 20
#: the jobs that leave pages out (masks, overviews) named, a line each, then how many more
NOTES_SHOWN = 3
#: the jobs whose input is in the current folder, not the manifest's, named (then how many more)
MISPLACED_SHOWN = 3

T = TypeVar("T")
R = TypeVar("R")


class JobCheck(NamedTuple):
    """What PlanJob would do with a job: run it (``error`` None), skip it (``skipped``: its
    output exists, ``if_exists: skip``) or fail it with ``error`` (the error's type) for
    ``problems`` (each "page N: what", or the error's message); ``note``: the pages a job
    without ``pages`` leaves out."""

    spec: JobSpec
    error: str | None = None
    problems: tuple[str, ...] = ()
    skipped: bool = False
    note: str = ""


def jobs_of(parsed: list[JobSpec] | ScanSpec) -> list[JobSpec]:
    """The jobs of a checked manifest: a scan's are its input's TIFFs without an output, as
    its run lists them (:func:`pipeline.steps.planning.jobs_now`)."""
    from pipeline.steps.planning import jobs_now

    return jobs_now(parsed)[0]


def check_job(job: int, spec: JobSpec) -> JobCheck:
    """Job ``job`` checked as PlanJob checks it (:func:`pipeline.steps.planning.
    output_exists`, then :func:`~pipeline.steps.planning.checked_plan`), every refused page
    a problem of its own, and the input read whatever the output's checks found (an output
    that cannot be written, or looked at, and an input that cannot be read: both told; the
    output's checks made also when the custom functions' import fails; the error is the
    first, the one PlanJob fails the job with)."""
    from pipeline.steps import planning

    refused: list[tuple[int, TiffpipeError]] = []
    failed: list[Exception] = []
    try:
        if planning.output_exists(spec):
            return JobCheck(spec, skipped=True)
    except Exception as exc:  # noqa: BLE001 - PlanJob fails the job with it: so does this
        failed.append(exc)
    try:
        if failed:  # (the output's checks would fail the same: its custom functions'
            _told(failed, planning.load_custom, spec)  # and its input's are made)
            plan, problems = planning.read_plan(job, spec, "validate", 0.0, refused=refused)
        else:
            plan, problems = planning.checked_plan(job, spec, "validate", 0.0,
                                                   refused=refused, failed=failed)
    except Exception as exc:  # noqa: BLE001 - as above
        failed.append(exc)
        return JobCheck(spec, type(failed[0]).__name__, tuple(map(str, failed)))
    if failed:
        return JobCheck(spec, type(failed[0]).__name__,
                        (*map(str, failed), *grouped_by_page(problems)), note=plan.note)
    if problems:  # PlanJob raises the first refused page's error, else OperationError
        error = type(refused[0][1]).__name__ if refused else "OperationError"
        return JobCheck(spec, error, tuple(grouped_by_page(problems)), note=plan.note)
    return JobCheck(spec, note=plan.note)


def _told(failed: list[Exception], check: Callable[[JobSpec], object], spec: JobSpec) -> None:
    """``check`` of ``spec``, what it raises added to ``failed`` (PlanJob fails the job with
    it: validate --inputs tells it, and goes on)."""
    try:
        check(spec)
    except Exception as exc:  # noqa: BLE001 - as PlanJob's
        failed.append(exc)


def check_jobs(specs: list[JobSpec], threads: int = INPUT_THREADS,
               progress: TextIO | None = None) -> list[JobCheck]:
    """Every job checked (:func:`check_job`), ``threads`` at a time, in the jobs' order;
    ``progress``: the stream a bar is drawn on while it is a terminal and the jobs are many
    (:data:`PROGRESS_FROM`)."""
    return concurrently(lambda item: check_job(*item), list(enumerate(specs)), threads,
                        progress, "reading the inputs")


def concurrently(function: Callable[[T], R], items: Sequence[T], threads: int,
                 progress: TextIO | None = None, what: str = "") -> list[R]:
    """``function`` of each item, ``threads`` at a time, in the items' order; a progress
    bar labelled ``what`` on ``progress`` while it is a terminal and the items are
    :data:`PROGRESS_FROM` or more. Ctrl-C: the items not started are dropped."""
    if threads < 1:
        raise ValueError(f"threads: at least 1, got {threads}")
    with _Bar(progress, len(items), what) as advance, \
            ThreadPoolExecutor(max_workers=min(threads, max(1, len(items)))) as pool:
        try:
            futures = [pool.submit(function, item) for item in items]
            results = []
            for future in futures:
                results.append(future.result())
                advance()
            return results
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


class _Bar:
    """A transient progress bar of ``total`` items on ``stream`` (rich, imported only
    then), or nothing: not a terminal, or too few items."""

    def __init__(self, stream: TextIO | None, total: int, what: str) -> None:
        self.progress: Any = None
        if stream is None or total < PROGRESS_FROM or not is_terminal(stream):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(),
                                 console=Console(file=stream), transient=True)
        self.task = self.progress.add_task(what, total=total)

    def __enter__(self) -> Callable[[], None]:
        if self.progress is None:
            return lambda: None
        self.progress.start()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            try:
                self.progress.stop()
            except OSError:  # its terminal gone: nothing more to show
                pass


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(manifest: str, parsed: list[JobSpec] | ScanSpec, checks: list[JobCheck]
            ) -> Iterator[str]:
    """What ``validate --inputs`` says on stdout: the counts (a manifest of no job: that it
    has none), then the first jobs that leave pages out and why."""
    ok = sum(1 for c in checks if c.error is None and not c.skipped)
    skipped = sum(1 for c in checks if c.skipped)
    failed = sum(1 for c in checks if c.error is not None)
    read = "their inputs' page headers read: "
    if isinstance(parsed, ScanSpec):
        head = (f"{manifest}: valid, a scan of {parsed.input} into {parsed.output}; {read}"
                + (f"{_plural(len(checks), 'job')} (the TIFFs there without an output)"
                   if checks else "no job (no TIFF there without an output)"))
        counts = [f"{ok} can run" if ok else ""]
    elif not checks:  # (a generated manifest with nothing to do: no input to read)
        head, counts = f"{manifest}: valid, 0 job(s): no job, no input to read", []
    else:
        head = f"{manifest}: valid, {len(checks)} job(s); {read}"
        counts = [f"{_plural(ok, 'job')} can run" if ok else ""]
    counts += [f"{skipped} {'is' if skipped == 1 else 'are'} skipped ("
               f"{'its output exists' if skipped == 1 else 'their outputs exist'}, "
               "if_exists: skip)" if skipped else "",
               f"{failed} would fail when planned" if failed else ""]
    shown = [c for c in counts if c]
    if isinstance(parsed, ScanSpec):
        yield ", ".join([head, *shown])
    else:
        yield head + ", ".join(shown)
    noted = [(i, c) for i, c in enumerate(checks) if c.note and c.error is None]
    for i, check in noted[:NOTES_SHOWN]:
        yield f"  {_label(parsed, i, check, short=True)}: {check.note}"
    if len(noted) > NOTES_SHOWN:
        yield f"  ... and {len(noted) - NOTES_SHOWN} more jobs leave pages out"


def failures(parsed: list[JobSpec] | ScanSpec, checks: list[JobCheck]) -> Iterator[str]:
    """What ``validate --inputs`` says on stderr of the jobs that would fail: each, with its
    input, output and error, then every problem, a line each (pages with the same problem
    told once: "pages 0-89 (90 pages): ...")."""
    failed = [(i, c) for i, c in enumerate(checks) if c.error is not None]
    if not failed:
        return
    yield (f"tiffpipe: {len(failed)} of {len(checks)} job(s) would fail when planned "
           "(PlanJob), before any pixel is read:")
    for i, check in failed:
        yield f"  {_label(parsed, i, check)}: {check.error}"
        for problem in check.problems:
            yield f"    {problem}"


def _label(parsed: list[JobSpec] | ScanSpec, i: int, check: JobCheck,
           short: bool = False) -> str:
    """A job as the messages name it: ``jobs[i]`` and its files (a scan's job: its files)."""
    spec = check.spec
    files = spec.input if short else f"{spec.input} -> {spec.output}"
    if isinstance(parsed, ScanSpec):
        return files
    return f"jobs[{i}] ({files})" if short else f"jobs[{i}] {files}"


def misplaced_inputs(manifest: str, parsed: list[JobSpec] | ScanSpec, missing: Iterable[int],
                     cwd: str | None = None) -> Iterator[str]:
    """A line for each job (the first MISPLACED_SHOWN, then how many more) whose local input
    is not where its relative path leads from the manifest's folder but is where it leads
    from the current one: the manifest was written as if its paths started where the user
    stands. What ``run`` and ``validate --inputs`` say after the job's InputNotFoundError.
    ``missing``: the jobs (their indexes) whose input was not found (InputNotFoundError):
    only theirs are looked for, and only in the current folder (the run, or the check, has
    found them missing from the manifest's)."""
    cwd = os.path.abspath(cwd or os.getcwd())
    base = os.path.dirname(os.path.abspath(manifest))
    if is_s3(manifest) or isinstance(parsed, ScanSpec) or base == cwd:
        return
    found = []
    for i in sorted(set(missing)):
        spec = parsed[i]
        if is_s3(spec.input):
            continue
        written = os.path.relpath(spec.input, base)
        if os.path.isfile(os.path.join(cwd, written)):
            found.append((i, written))
    for i, written in found[:MISPLACED_SHOWN]:
        there = os.path.relpath(os.path.join(cwd, written), base)
        yield (f"tiffpipe: jobs[{i}].input {quoted(written)} is in the current folder ({cwd}) "
               f"but not in the manifest's ({base}), where its relative paths start: write it "
               f"{quoted(there)}, or as an absolute path")
    if len(found) > MISPLACED_SHOWN:
        yield (f"tiffpipe: ... and {len(found) - MISPLACED_SHOWN} more jobs whose input is in "
               "the current folder, not the manifest's")


