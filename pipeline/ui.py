"""What a person sees of a run: a progress bar on a terminal (log lines otherwise) and a
summary table at the end."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RunProgress:
    """A listener for :class:`pipeline.engine.local.LocalEngine`: counts processed tiles per
    job and overall. Called from the engine's Map threads, hence the lock."""

    def __init__(self, jobs: list[Any], quiet: bool = False, stream: Any = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        # a scan's jobs are known only once the run has planned them
        self.names = [os.path.basename(j.input) for j in jobs] if isinstance(jobs, list) else []
        self.totals: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.logged_decile: dict[int, int] = {}
        self.lock = threading.Lock()
        self.live = not quiet and self.stream.isatty()
        self.progress: Progress | None = None
        self.tasks: dict[int, Any] = {}
        if self.live:
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
            self.progress.stop()

    def _log(self, text: str) -> None:
        if not self.quiet and not self.live:
            print(text, file=self.stream, flush=True)

    def __call__(self, function: str, event: dict[str, Any], ok: bool,
                 payload: dict[str, Any]) -> None:
        action = event.get("action")
        with self.lock:
            if action == "plan_job" and ok:
                self._planned(payload["job"], payload["tiles"])
            elif action in ("process", "process_unit") and ok:
                self._advance(payload["job"], payload["tiles"])
            elif action == "merge" and ok:
                self._log(f"job {payload['job']}: done -> {payload['output']}")
            elif action == "record_failure" and ok:
                self._log(f"job {payload['job']}: FAILED ({payload['error']})")

    def _planned(self, job: int, tiles: int) -> None:
        self.totals[job] = tiles
        self.done[job] = 0
        name = self.names[job] if job < len(self.names) else str(job)
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


def summary_table(report: dict[str, Any]) -> Table:
    """One row a job: status, pages, megapixels, seconds, output or error."""
    table = Table(title=f"run {report['run_id']}: {report['succeeded']} succeeded, "
                        f"{report['failed']} failed, {report['seconds']:.1f} s")
    for name, justify in (("job", "right"), ("status", "left"), ("pages", "right"),
                          ("megapixels", "right"), ("seconds", "right"),
                          ("output or error", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for job in report["jobs"]:
        ok = job["status"] == "SUCCEEDED"
        detail = job["output"] if ok else f"{job['error']['type']}: {job['error']['message']}"
        table.add_row(str(job["job"]), "[green]SUCCEEDED[/]" if ok else "[red]FAILED[/]",
                      str(job.get("pages", "")), f"{job['megapixels']:.1f}" if ok else "",
                      f"{job.get('seconds', 0):.1f}", detail)
    return table


def print_summary(report: dict[str, Any], stream: Any = None) -> None:
    Console(file=stream or sys.stdout, width=160 if not (stream or sys.stdout).isatty()
            else None).print(summary_table(report))
