"""``tiffpipe run`` stopped by a signal, as a user stops it: the command in a process (and
process group) of its own on real TIFFs, the signal sent once its first job's output is
there. The run stops before its other jobs are done, keeps the outputs it published,
leaves no partial file, work folder or worker process behind, writes its report with the
unfinished jobs marked, and exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tifffile

from pipeline.errors import INTERRUPTED_ERROR

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

#: a user operation that takes its time on each tile, without CPU (the jobs that use it run
#: in worker processes: user code never runs in the engine's own)
SLOW_OP = "import time\n\ndef slow(tile, seconds=0.1):\n    time.sleep(seconds)\n    return tile\n"


def _manifest(folder: Path, jobs: int, side: int, ops: list[dict[str, object]],
              tile: int = 512) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8)
    for i in range(jobs):
        tifffile.imwrite(folder / f"in{i}.tif", pixels, tile=(256, 256))
    manifest = folder / "m.json"
    defaults = {"tile": tile, "output_options": {"tile": min(tile, 512)}}
    manifest.write_text(json.dumps({"defaults": defaults, "jobs": [
        {"input": f"in{i}.tif", "output": f"out/out{i}.tif", "ops": ops} for i in range(jobs)]}))
    return manifest


@contextmanager
def _started(manifest: Path, workers: int, env: dict[str, str] | None = None,
             args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[str]]:
    """``tiffpipe run`` in a session of its own: a process group, as a terminal's job. What
    is left of the group at the end (a failed test) is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(manifest), "--workers", str(workers),
         "--no-contact-sheet", *args], cwd=manifest.parent, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "out").glob("out*.tif"))


def _wait_for_an_output(proc: subprocess.Popen[str], folder: Path) -> None:
    deadline = time.monotonic() + 90  # against a hang only
    while not _outputs(folder):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before any output: {proc.communicate()}")
        assert time.monotonic() < deadline, "no job finished"
        time.sleep(0.02)


def _stopped_cleanly(proc: subprocess.Popen[str], folder: Path, jobs: int, code: int,
                     name: str, children: list[psutil.Process]) -> list[str]:
    """The checks every stopped run passes; the outputs kept."""
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Exception" not in err, err
    kept = _outputs(folder)
    assert 1 <= len(kept) < jobs, (kept, err)  # stopped well before every job could finish
    # nothing else beside the outputs (no temporary file), each output a whole TIFF
    assert sorted(p.name for p in (folder / "out").iterdir()) == kept
    for name_ in kept:
        with tifffile.TiffFile(folder / "out" / name_) as tf:
            assert tf.pages[0].asarray().shape == tifffile.imread(folder / "in0.tif").shape
    assert not (folder / ".tiffpipe-work").exists()  # the run's work folder, and its parent
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]

    report = json.loads((folder / "m.report.json").read_text())
    done = {f"out{j['job']}.tif" for j in report["jobs"] if j["status"] == "SUCCEEDED"}
    assert done == set(kept)
    stopped = [j for j in report["jobs"] if j["status"] != "SUCCEEDED"]
    assert report["succeeded"] == len(kept) and report["failed"] == len(stopped)
    assert report["stopped"] == len(stopped)  # (among the failed: a script sees which)
    for job in stopped:
        assert job["status"] == "FAILED"
        assert job["error"]["type"] == INTERRUPTED_ERROR and job["error"]["step"] is None
        assert f"stopped ({name})" in job["error"]["message"]
    # the summary on stdout, and one line that says what was stopped and what was kept
    assert f"{len(kept)} succeeded, 0 failed, {len(stopped)} stopped" in out
    # each stopped job's row says STOPPED (FAILED is for jobs that failed of themselves)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in
            ([str(j["job"])] for j in report["jobs"])]
    assert sorted(r[1] for r in rows) == sorted(["SUCCEEDED"] * len(kept)
                                                + ["STOPPED"] * len(stopped)), out
    outputs = "its output is" if len(kept) == 1 else "their outputs are"
    assert (f"tiffpipe: interrupted ({name}): {len(kept)} of {jobs} jobs finished, {outputs} "
            f"kept; the other {len(stopped)}") in err
    return kept


def test_ctrl_c_stops_the_run_and_keeps_what_finished(tmp_path: Path):
    """SIGINT to the process group, as a terminal's Ctrl-C: the jobs run in the engine's
    own process (a gaussian blur of a big sigma, a job about half a second on 2 cores)."""
    jobs = 8
    manifest = _manifest(tmp_path, jobs, 3000, [{"op": "gaussian_blur", "sigma": 30}])
    with _started(manifest, workers=2) as proc:
        _wait_for_an_output(proc, tmp_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        _stopped_cleanly(proc, tmp_path, jobs, 130, "SIGINT", children)


def test_sigterm_to_the_command_alone_stops_its_workers(tmp_path: Path):
    """SIGTERM to the command's process only (a service manager's stop): the jobs run user
    code, so in a worker process, which the command stops itself."""
    (tmp_path / "slowop.py").write_text(SLOW_OP)
    jobs = 6
    manifest = _manifest(tmp_path, jobs, 1024, [
        {"op": "custom", "function": "slowop:slow", "params": {"seconds": 0.1}}], tile=256)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    work = tmp_path / "shared-work"
    with _started(manifest, workers=2, env={"PYTHONPATH": path},
                  args=("--work", str(work))) as proc:
        _wait_for_an_output(proc, tmp_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("spawn_main" in " ".join(p.cmdline()) for p in children)  # a worker runs
        # its lease on the --work it was given (work_lease), which goes with the folder
        assert json.loads((work / "lease.json").read_text())["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGTERM)
        _stopped_cleanly(proc, tmp_path, jobs, 143, "SIGTERM", children)
    assert not work.exists()


#: a process that calls one of tiffpipe's signal handlers (``sys.argv[1]``: the command's,
#: ``pipeline.run``'s, or a worker's SIGTERM handler) as a signal would, and, as though a
#: second signal came at each line the first one's handling runs (Python runs a handler in
#: the main thread between two of its bytecodes, so anywhere in the one it interrupts),
#: calls it again there; exit 3 if the first call never returns (a lock the first one held)
REENTERED = """
import os, signal, sys, threading
from contextlib import nullcontext
from pipeline.engine import workers
from pipeline.engine.local import LocalEngine, StopRequest
from pipeline.steps import stopping

which, stop = sys.argv[1], StopRequest()
if which == "command":
    from pipeline.cli import _stop_on_signals as installed
elif which == "python":
    from pipeline.runner import _ctrl_c_stops as installed
else:  # a worker running a task
    workers._task, installed = "split.process", lambda stop: nullcontext()
engine = LocalEngine(2, stop=stop)
with installed(stop), engine._watching():
    handler = workers._on_sigterm if which == "worker" else signal.getsignal(signal.SIGINT)
    raised = []

    def again(frame, event, arg):  # (a trace function's own calls are not traced)
        if event == "line":
            try:
                handler(signal.SIGTERM, None)
            except BaseException as exc:
                raised.append(type(exc).__name__)
        return again

    def first():
        sys.settrace(lambda frame, event, arg: again)
        try:
            handler(signal.SIGINT, None)
        except BaseException as exc:
            raised.append(type(exc).__name__)
        finally:
            sys.settrace(None)

    handling = threading.Thread(target=first, daemon=True)
    handling.start()
    handling.join(30)  # (a bound against the deadlock only)
    if handling.is_alive():
        print("the first signal's handler never returned", flush=True)
        os._exit(3)
    if which == "worker":
        print(raised, stopping._requested.is_set())
    else:  # the engine's stop watcher heard both: the run aborted, its tasks given up on
        assert stop.signal in (signal.SIGINT, signal.SIGTERM) and stop.forced
        engine._given_up.result(30)  # (a bound against a watcher never woken only)
        assert engine.placement.aborted
        print("stopped")
engine.close()
"""


@pytest.mark.parametrize("which", ["command", "python", "worker"])
def test_a_signal_handled_inside_another_signals_handling_returns(which: str):
    """A second signal while the first was handled (``timeout`` forwards a Ctrl-C to the
    command and to its process group: two at once) hung the command for ever, deaf to
    SIGTERM: the nested handler waited for the lock of threading.Event.set, which the
    handler it interrupted held (StopRequest woke the engine's watcher so; a worker's
    SIGTERM handler set the steps' stop so, and the engine sends SIGTERM again and again).
    Deterministic: the second call is made at every line of the first one's handling."""
    done = subprocess.run([sys.executable, "-c", REENTERED, which], capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    expected = "['WorkerStopped'] True" if which == "worker" else "stopped"
    assert done.stdout.strip() == expected, done.stderr


#: a user operation that says it has started a tile (a file beside it), then sleeps
SLEEPING_OP = ("import pathlib, time\n\ndef sleep(tile, seconds=600.0):\n"
               "    pathlib.Path(__file__).with_name('started').touch()\n"
               "    time.sleep(seconds)\n    return tile\n")


def test_sigint_then_sigterm_at_once_ends_the_command(tmp_path: Path):
    """SIGINT then SIGTERM back to back to the command while a custom op sleeps in a
    worker (the hunt's case: it hung for 11 minutes): it ends as stopped by SIGINT (130),
    the second signal ending its wait for the task, with the job marked and no worker
    left."""
    (tmp_path / "sleepop.py").write_text(SLEEPING_OP)
    manifest = _manifest(tmp_path, 1, 512, [{"op": "custom", "function": "sleepop:sleep"}],
                         tile=256)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    with _started(manifest, workers=2, env={"PYTHONPATH": path}) as proc:
        deadline = time.monotonic() + 90  # against a hang only
        while not (tmp_path / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)  # (a bound against a hang, no timing)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "tiffpipe: interrupted (SIGINT): the job had not finished" in err, err
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["jobs"][0]["error"]["type"] == INTERRUPTED_ERROR
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]


#: ``pipeline.run`` of the manifest ``sys.argv[1]`` (its op sleeping in a worker) whose
#: engine would wait an hour for its tasks to stop after a Ctrl-C (STOP_GRACE_S); a file
#: ``requested`` beside the manifest once a Ctrl-C has been handled
PYTHON_RUN = """
import pathlib, signal, sys
import pipeline
from pipeline.engine import local

local.STOP_GRACE_S = 3600.0
manifest = pathlib.Path(sys.argv[1])


class Told(pipeline.StopRequest):
    def request(self, signum=0):
        super().request(signum)
        (manifest.parent / "requested").touch()


if __name__ == "__main__":
    try:
        pipeline.run(str(manifest), workers=2, stop=Told())
    except pipeline.RunInterrupted as exc:
        print(signal.Signals(exc.result.interrupted).name, exc.result.unfinished)
"""


def test_a_second_ctrl_c_ends_pipeline_runs_wait_for_its_tasks(tmp_path: Path):
    """``pipeline.run`` (docs/python.md): a second Ctrl-C stops the waiting for the tasks,
    here a custom op that sleeps on in a worker. The run would wait an hour after the first
    (its grace made so): it returns, RunInterrupted, on the second. (A hunt saw no
    difference with ``timeout`` in between: it forwards a signal once, then ignores it.)"""
    (tmp_path / "sleepop.py").write_text(SLEEPING_OP)
    manifest = _manifest(tmp_path, 1, 512, [{"op": "custom", "function": "sleepop:sleep"}],
                         tile=256)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    (tmp_path / "script.py").write_text(PYTHON_RUN)
    proc = subprocess.Popen([sys.executable, "script.py", str(manifest)], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": path})
    try:
        for marker in ("started", "requested"):  # the op runs; the first Ctrl-C is handled
            deadline = time.monotonic() + 90  # against a hang only
            while not (tmp_path / marker).exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)  # (a bound against a hang, no timing)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == "SIGINT [0]", err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _stopped_at_its_third_tile(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, int]:
    """A run of one job of 256 tiles, in this process, stopped (as the command's signal
    handler stops it) at the job's third tile: its result, and the tile checks made."""
    from pipeline.engine.local import StopRequest
    from pipeline.runner import run_local
    from pipeline.steps import stopping

    manifest = _manifest(folder, 1, 4096, [{"op": "gaussian_blur", "sigma": 8}], tile=256)
    stop, checks = StopRequest(), [0]
    check = stopping.check

    def counting_check() -> None:
        checks[0] += 1
        if checks[0] == 3:
            stop.request(signal.SIGINT)
        check()

    monkeypatch.setattr(stopping, "check", counting_check)
    try:
        result = run_local(str(manifest), 1, stop=stop, contact_sheet=True)
    finally:
        stopping.clear()  # this process goes on: the steps of later tests must run
    return result, checks[0]


def test_a_task_in_the_engines_process_stops_at_its_next_tile(tmp_path: Path, monkeypatch):
    """The stop reaches a job while its tiles are worked on in the engine's own process:
    the stop is requested (as the command's signal handler does) at the job's third tile,
    and the tile loop ends the task within the tiles in hand (pipeline.steps.stopping),
    far from the job's end: no output, no temporary file, the job marked in the report."""
    result, checks = _stopped_at_its_third_tile(tmp_path, monkeypatch)
    tiles = (4096 // 256) ** 2
    assert result.interrupted == signal.SIGINT and not result.ok
    assert result.unfinished == [0] and result.contact_sheet is None
    assert 3 <= checks < tiles // 2, checks  # the job's tiles: most never started
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert not (tmp_path / ".tiffpipe-work").exists()
    message = result.report["jobs"][0]["error"]["message"]
    assert message.endswith("before this job finished: no output written; run it again")


def test_a_stopped_runs_report_counts_its_stopped_jobs_as_its_summary_does(
        tmp_path: Path, monkeypatch):
    """A script reading a stopped run's report: the summary's row said STOPPED and stderr
    "1 stopped", but the report had no count of them (``failed`` counted them, as the
    headline's "1 failed" did), and the stopped job's error had no ``step``, which every
    other failed job's has. The report has ``stopped`` (among ``failed``: the three counts
    still add up to the jobs), every error a ``step`` (null: not known of a stopped job),
    a ``schema``, and the headline says the stopped job stopped, not failed."""
    from doc_fields import check, table

    from pipeline.ui import summary_rows

    result, _ = _stopped_at_its_third_tile(tmp_path, monkeypatch)
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report == result.report
    assert report["schema"] == 1 and list(report)[:2] == ["run_id", "schema"]
    assert (report["succeeded"], report["failed"], report["skipped"], report["stopped"]) == (
        0, 1, 0, 1)
    error = report["jobs"][0]["error"]
    assert error["type"] == INTERRUPTED_ERROR and "step" in error and error["step"] is None
    check([report], table("manifest-and-ops.md", "Fields of the run report"),
          "docs/manifest-and-ops.md, Fields of the run report")
    title, rows = summary_rows(report)
    assert title.startswith(f"run {report['run_id']}: 0 succeeded, 0 failed, 1 stopped, ")
    assert rows[0][1] == "STOPPED"


def test_a_stopped_job_over_an_earlier_output_says_the_file_is_not_this_runs(
        tmp_path: Path, monkeypatch):
    """A stopped job whose output path holds an earlier file (kept: published outputs are
    whole, and a stopped job publishes none): its report entry said "no output written",
    and the summary's row the same, though a file is there, which a rerun with
    ``if_exists: skip`` takes for the job's. It says the file is an earlier one, not this
    run's, and what skip would do."""
    (tmp_path / "out").mkdir()
    earlier = tmp_path / "out" / "out0.tif"
    tifffile.imwrite(earlier, np.zeros((8, 8), np.uint8))
    os.utime(earlier, (time.time() - 3600, time.time() - 3600))  # an hour before the run
    before = earlier.read_bytes()
    result, _ = _stopped_at_its_third_tile(tmp_path, monkeypatch)
    assert result.unfinished == [0]
    assert earlier.read_bytes() == before
    error = result.report["jobs"][0]["error"]
    assert error["type"] == INTERRUPTED_ERROR
    assert error["message"] == (
        "the run was stopped (SIGINT) before this job finished: this run wrote no output, "
        "and the file at its output path is an earlier one, not this run's, which a rerun "
        'with "if_exists": "skip" would take for this job\'s: run it again')


def test_a_quiet_stopped_run_says_an_unfinished_jobs_path_holds_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``run --quiet`` prints no summary rows: its stop line said only "stopped before
    writing its output", though the job's path held an earlier file, which a rerun with
    ``if_exists: skip`` takes for the job's output. The line says so, and where the report
    tells it."""
    import argparse

    from pipeline import cli
    from pipeline.engine.local import StopRequest

    (tmp_path / "out").mkdir()
    earlier = tmp_path / "out" / "out0.tif"
    tifffile.imwrite(earlier, np.zeros((8, 8), np.uint8))
    os.utime(earlier, (time.time() - 3600, time.time() - 3600))  # an hour before the run
    result, _ = _stopped_at_its_third_tile(tmp_path, monkeypatch)
    stop = StopRequest()
    stop.request(signal.SIGINT)
    capsys.readouterr()
    cli._tell_the_end(argparse.Namespace(quiet=True, manifest=str(tmp_path / "m.json")),
                      result, stop, [argparse.Namespace(if_exists="overwrite")])
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        ("tiffpipe: interrupted (SIGINT): the job had not finished; it was stopped before "
         "writing its output, and the file at its output path is not known to be this run's, "
         'which a rerun with "if_exists": "skip" would take for the job\'s output '
         "(RunInterruptedError in the report, whose message says what the file is): run it "
         "again"),
        f"tiffpipe: 1 of 1 jobs stopped (0 succeeded); report: {tmp_path / 'm.report.json'}"]


def test_a_run_that_failed_as_a_whole_says_which_unfinished_jobs_paths_hold_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run that fails as a whole (its engine stopped: here its interpreter raised, as a
    bug of it would, at the jobs' first task; a listener that raises no longer stops a
    run) has no
    report; its line (even with --quiet) said "the other 2 have no output" though one's path
    held an earlier file (its summary row said so), which a rerun with ``if_exists: skip``
    takes for the job's. It says so, as the rows do."""
    from pipeline import cli
    from pipeline.runner import run_local

    manifest = _manifest(tmp_path, 2, 512, [{"op": "invert"}])
    (tmp_path / "out").mkdir()
    earlier = tmp_path / "out" / "out1.tif"
    tifffile.imwrite(earlier, np.zeros((8, 8), np.uint8))
    os.utime(earlier, (time.time() - 3600, time.time() - 3600))  # an hour before the run

    from pipeline.engine import direct

    task = direct.Interpreter._task

    def broken(self: Any, state: dict[str, Any], data: Any, context: dict[str, Any],
               *args: Any) -> Any:
        if (state.get("Parameters", {}).get("Payload") or {}).get("action") == "plan_job":
            raise RuntimeError("the interpreter broke")
        return task(self, state, data, context, *args)

    monkeypatch.setattr(direct.Interpreter, "_task", broken)
    result = run_local(str(manifest), 1)
    assert result.report is None and result.unfinished_jobs == 2, result
    assert cli._failed_line(result).endswith(
        "; 0 of 2 jobs had finished, no output was published; the other 2 wrote no output, "
        "and the file at the output path of 1 of them is not known to be this run's, which a "
        'rerun with "if_exists": "skip" would take for the job\'s output (no report was '
        "written): run them again")
    earlier.unlink()  # none there: as before, but in number
    result = run_local(str(manifest), 1)
    assert cli._failed_line(result).endswith(
        "; the other 2 wrote no output (no report was written): run them again")


def test_a_stopped_job_removes_its_own_temporaries_not_another_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The temporary files beside a stopped job's output that this run made (its run id in
    their names) are removed; those of another run writing the same output at the same time
    (begun after this one, too), and one not of a local run, stay."""
    from pipeline.adapters import storage
    from pipeline.core.constants import RUN_TAG_ENV
    from pipeline.runner import _remove_partial_output

    output = str(tmp_path / "out.tif")
    made = {}
    for run in ("ours", "theirs", None):
        if run is None:
            monkeypatch.delenv(RUN_TAG_ENV, raising=False)
        else:
            monkeypatch.setenv(RUN_TAG_ENV, run)
        made[run] = storage.temp_output_path(output)
        open(made[run], "wb").close()
    _remove_partial_output(output, "ours", str(tmp_path / "work" / "jobs" / "00000"))
    assert not os.path.exists(made["ours"])
    assert os.path.exists(made["theirs"]) and os.path.exists(made[None])


def test_workers_end_with_a_command_killed_outright(tmp_path: Path):
    """``kill -9`` of the command alone (no clean-up can run): its worker processes end at
    once too. A task left running would publish its output after the run is over (over a
    later run's), and hold the command's stdout open for a pipe's reader."""
    marker = tmp_path / "started"
    (tmp_path / "markop.py").write_text(
        "import pathlib, time\n\ndef slow(tile, seconds=1.0, marker=''):\n"
        "    pathlib.Path(marker).touch()\n    time.sleep(seconds)\n    return tile\n")
    manifest = _manifest(tmp_path, 1, 1024, [
        {"op": "custom", "function": "markop:slow",
         "params": {"seconds": 1.0, "marker": str(marker)}}], tile=256)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    with _started(manifest, workers=2, env={"PYTHONPATH": path}) as proc:
        deadline = time.monotonic() + 60
        while not marker.exists():  # a worker is at its task
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert workers
        os.kill(proc.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert alive == [], [p.pid for p in alive]
        proc.communicate(timeout=10)  # stdout's end: no process holds it open
        time.sleep(1.5)  # past the task's end, had it gone on
        assert not list(tmp_path.glob("out/*.tif"))  # no output published after the kill


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler of its own for ``signum`` (/proc: SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signum - 1)))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_manifest_is_read_ends_the_command_at_once(tmp_path: Path, signum):
    """A manifest whose reading hangs (a FIFO with no writer; an S3 or network read that
    does not answer): Ctrl-C or SIGTERM ends the command at once, and an earlier run's report
    and contact sheet at its paths are removed, as after any run that writes none (they would
    pass for this run's)."""
    from PIL import Image

    manifest = tmp_path / "m.json"
    os.mkfifo(manifest)
    earlier = {"run_id": "20261201-000000-aaaaaa", "jobs": [], "succeeded": 0, "failed": 0}
    (tmp_path / "m.report.json").write_text(json.dumps(earlier))
    Image.new("RGB", (852, 40)).save(tmp_path / "m.report.contact.png")  # an earlier sheet
    with _started(manifest, workers=2) as proc:
        deadline = time.monotonic() + 60
        while not _catches(proc.pid, signal.SIGTERM):  # run's own handlers are in place
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.2)  # (blocked opening the FIFO)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"tiffpipe: interrupted ({name}) before any job started" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "m.report.json").exists()
    assert not (tmp_path / "m.report.contact.png").exists()
    assert f"removed {tmp_path / 'm.report.json'}" in err
    assert not (tmp_path / ".tiffpipe-work").exists()


def test_a_run_past_its_timeout_ends_as_a_stopped_run(tmp_path: Path):
    """A definition whose TimeoutSeconds passes (``--definition``, a copy with one): the
    engine stops the tasks as on Ctrl-C, and the command cleans up as after one: the jobs
    that finished keep their outputs, the others are marked in the report, no partial file
    or work folder is left (they were, and on S3 the uploads stayed open), exit 1."""
    from pipeline.engine.definition import definition_text

    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "tp_timed_slow.py").write_text(SLOW_OP)
    manifest = _manifest(tmp_path, 3, 1024, [{"op": "custom", "function": "tp_timed_slow:slow",
                                              "params": {"seconds": 1.5}}], tile=256)
    jobs = json.loads(manifest.read_text())
    jobs["jobs"][0]["ops"] = []  # done at once
    manifest.write_text(json.dumps(jobs))
    machine = json.loads(definition_text())
    machine["TimeoutSeconds"] = 6
    (tmp_path / "def.json").write_text(json.dumps(machine))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(manifest), "--workers", "2",
         "--no-contact-sheet", "--definition", str(tmp_path / "def.json")], cwd=tmp_path,
        capture_output=True, text=True, timeout=100, check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "ops")})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["out0.tif"]
    assert not (tmp_path / ".tiffpipe-work").exists()
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED", "FAILED", "FAILED"]
    for job in report["jobs"][1:]:
        assert job["error"]["type"] == INTERRUPTED_ERROR
        assert job["error"]["message"].startswith("the run timed out (the state machine's "
                                                  "TimeoutSeconds) before this job finished")


def _semaphores(pid: int) -> set[int]:
    """The inodes of the POSIX named semaphores (``/dev/shm/sem.*``) process ``pid`` has
    open, from the files it maps (sem_open maps each, under the temporary name it made it
    with: the name ``sem.mp-*`` is another link to the same inode)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {int(line.split()[4]) for line in maps if " /dev/shm/sem." in line}


def _left_in_shm(inodes: set[int]) -> list[str]:
    """The files of /dev/shm that are one of ``inodes``."""
    return [e.name for e in os.scandir("/dev/shm") if e.inode() in inodes]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc")
def test_a_hang_up_to_the_process_group_leaves_the_resource_tracker_alone(tmp_path: Path):
    """SIGHUP to the whole process group (a terminal hung up, an SSH session dropped) while
    worker processes run: multiprocessing's resource tracker, which unlinks the pool's
    named semaphores, ignores only SIGINT and SIGTERM, so the hang-up killed it; the engine
    started another, which printed "process died unexpectedly" and a KeyError traceback
    for each semaphore, and some stayed in /dev/shm. Now the tracker is started with SIGHUP
    blocked: the run stops as on Ctrl-C (exit 129), quietly, and its semaphores go."""
    marks = tmp_path / "marks"  # a file each process that ran the op, named by its pid
    marks.mkdir()
    (tmp_path / "pidop.py").write_text(
        "import os, pathlib, time\n\ndef slow(tile, seconds=0.1, marks=''):\n"
        "    pathlib.Path(marks, str(os.getpid())).touch()\n    time.sleep(seconds)\n"
        "    return tile\n")
    jobs = 4
    manifest = _manifest(tmp_path, jobs, 1024, [
        {"op": "custom", "function": "pidop:slow",
         "params": {"seconds": 0.1, "marks": str(marks)}}], tile=256)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    with _started(manifest, workers=2, env={"PYTHONPATH": path}) as proc:
        deadline = time.monotonic() + 60
        # a worker is at its task (the op is also tried in the command's process, when the
        # manifest is checked): the pool and the tracker exist
        while not {m.name for m in marks.iterdir()} - {str(proc.pid)}:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        semaphores = _semaphores(proc.pid)
        assert semaphores  # (the pool's queues' locks)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("resource_tracker" in " ".join(p.cmdline()) for p in children)
        os.killpg(proc.pid, signal.SIGHUP)
        _, err = proc.communicate(timeout=90)
        _, alive = psutil.wait_procs(children, timeout=10)  # the tracker too, at its end
    assert proc.returncode == 129, err
    assert alive == [], [p.cmdline() for p in alive]
    assert "resource_tracker" not in err and "Traceback" not in err, err
    assert "tiffpipe: interrupted (SIGHUP)" in err
    assert _left_in_shm(semaphores) == []
