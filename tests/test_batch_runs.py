"""A daily batch through ``tiffpipe run``: what an operator (a shell, a script, cron) sees of
the jobs that failed, real TIFFs and bad files on the real file system, the command called
in-process through ``pipeline.cli.main``."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline import cli

pytestmark = pytest.mark.timeout(120)


def _batch(folder: Path, jobs: list[dict]) -> Path:
    """Three small TIFFs of other codecs, a file that is no TIFF, and a manifest of ``jobs``
    (relative paths)."""
    (folder / "in").mkdir()
    rng = np.random.default_rng(5)
    for name, codec in (("a", "zlib"), ("b", "zstd"), ("c", "lzw")):
        tifffile.imwrite(folder / "in" / f"{name}.tif",
                         rng.integers(0, 255, (70, 90, 3), dtype=np.uint8), compression=codec)
    (folder / "in" / "notes.tif").write_text("a text file saved under a .tif name")
    manifest = folder / "m.json"
    manifest.write_text(json.dumps({"jobs": jobs}))
    return manifest


def _job(name: str, out: str | None = None) -> dict:
    return {"input": f"in/{name}.tif", "output": f"out/{out or name}.tif",
            "ops": [{"op": "gaussian_blur", "sigma": 1}]}


def test_quiet_run_names_each_failed_job_on_stderr(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture):
    """--quiet (as from cron, which mails what a command prints): no progress and no
    summary, but a job that failed is an error: each is named on stderr with its input and
    error, then where the report is; it printed nothing at all, exit 1 alone. The line
    naming the report is the last (a script's ``tail -1``), after the rerun advice, which
    came after it."""
    manifest = _batch(tmp_path, [_job("a"), _job("notes"), _job("b"), _job("missing")])
    code = cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--no-contact-sheet"])
    out, err = capfd.readouterr()
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 4, err
    assert lines[0].startswith(f"tiffpipe: job 1 FAILED ({tmp_path / 'in' / 'notes.tif'}): "
                               "NotATiffError: ")
    assert lines[1].startswith(f"tiffpipe: job 3 FAILED ({tmp_path / 'in' / 'missing.tif'}): "
                               "InputNotFoundError: ")
    assert lines[2].startswith("tiffpipe: a rerun of this manifest as it is would run the")
    assert lines[3] == (f"tiffpipe: 2 of 4 jobs failed (2 succeeded); report: "
                        f"{tmp_path / 'm.report.json'}")
    assert (tmp_path / "out" / "a.tif").is_file() and (tmp_path / "out" / "b.tif").is_file()


@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_a_failed_job_says_the_step_it_failed_in(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                 interpreter: str):
    """Where each job failed, in its report (the error's ``step``) and its line: a file that
    is no TIFF in PlanJob; a damaged tile in the unit of a small job's ProcessJob, and, the
    job not fused, in the Split Map's unit 0 (the Map's own error names no unit)."""
    manifest = _batch(tmp_path, [_job("notes"), _job("bad"), {**_job("bad", "b2"),
                                                              "fuse": False}])
    pixels = np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)
    tifffile.imwrite(tmp_path / "in" / "bad.tif", pixels, tile=(64, 64), compression="zlib")
    damaged = bytearray((tmp_path / "in" / "bad.tif").read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 2000] = bytes(2000)
    (tmp_path / "in" / "bad.tif").write_bytes(bytes(damaged))
    code = cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--no-contact-sheet",
                     "--interpreter", interpreter])
    _, err = capfd.readouterr()
    assert code == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [(j["error"]["type"], j["error"]["step"]) for j in report["jobs"]] == [
        ("NotATiffError", "PlanJob"), ("CorruptTiffError", "ProcessJob (unit 0)"),
        ("CorruptTiffError", "Split (unit 0)")]
    lines = err.splitlines()
    assert lines[0].startswith("tiffpipe: job 0 FAILED (") and lines[0].endswith(
        " (in PlanJob)"), lines[0]
    assert lines[2].endswith(" (in Split (unit 0))"), lines[2]


def test_the_docs_table_of_the_reports_fields_is_the_reports(tmp_path: Path,
                                                             capfd: pytest.CaptureFixture):
    """A script reads the run report by the docs' table of its fields: every field of a real
    report (a job of each status) is in the table, of the type it says, and every field the
    table says a job of a status has is there; the report says its ``schema``."""
    from doc_fields import check, table

    manifest = _batch(tmp_path, [_job("a"), _job("notes"), {**_job("b"), "if_exists": "skip"}])
    (tmp_path / "out").mkdir()
    tifffile.imwrite(tmp_path / "out" / "b.tif", np.zeros((8, 8), np.uint8))
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet",
                     "--no-contact-sheet"]) == 1
    capfd.readouterr()
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED", "FAILED", "SKIPPED"]
    assert report["schema"] == 1 and report["stopped"] == 0
    check([report], table("manifest-and-ops.md", "Fields of the run report"),
          "docs/manifest-and-ops.md, Fields of the run report", opaque=("last_run",))


def test_a_run_warns_once_of_the_tiffpipe_variables_it_does_not_take(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """A cron job's environment with TIFFPIPE_TILE_THREADS=abc and TIFFPIPE_WORKERS=2 (no
    variable of tiffpipe's: the workers are --workers): the run ignored both without a word.
    It warns of each on stderr, naming it and what it takes, and goes on with the default
    (exit 0); a second run in the same process (a script's loop) is not told again."""
    from pipeline import runner

    monkeypatch.setattr(runner, "_ENV_WARNED", set(), raising=False)
    monkeypatch.setenv("TIFFPIPE_TILE_THREADS", "abc")
    monkeypatch.setenv("TIFFPIPE_WORKERS", "2")
    manifest = _batch(tmp_path, [_job("a")])
    argv = ["run", str(manifest), "--workers", "1", "--quiet", "--no-contact-sheet"]
    assert cli.main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TIFFPIPE_")]
    assert [line.split(" ")[0] for line in lines] == ["TIFFPIPE_TILE_THREADS='abc':",
                                                      "TIFFPIPE_WORKERS"], lines
    assert "it takes a whole number of tile threads, 1 or more; ignored" in lines[0]
    assert lines[1].startswith("TIFFPIPE_WORKERS is not one of tiffpipe's variables: ignored")
    caplog.clear()
    assert cli.main(argv) == 0
    assert not [r for r in caplog.records if r.getMessage().startswith("TIFFPIPE_")]


def test_quiet_run_that_succeeds_says_nothing(tmp_path: Path, capfd: pytest.CaptureFixture):
    manifest = _batch(tmp_path, [_job("a"), _job("c")])
    code = cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--no-contact-sheet"])
    assert code == 0
    assert capfd.readouterr() == ("", "")


def test_quiet_run_of_many_failed_jobs_names_the_first_ones(tmp_path: Path,
                                                            capfd: pytest.CaptureFixture):
    """A batch of many bad files is not a mail of thousands of lines: the first
    ``FAILED_LINES`` are named, then how many more the report holds."""
    jobs = [_job("a")] + [_job("notes", f"n{i}") for i in range(cli.FAILED_LINES + 3)]
    manifest = _batch(tmp_path, jobs)
    code = cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--no-contact-sheet"])
    _, err = capfd.readouterr()
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == cli.FAILED_LINES + 3  # and what a rerun would do (the next test)
    assert all(" FAILED (" in line for line in lines[:cli.FAILED_LINES])
    assert lines[-3] == "tiffpipe: ... and 3 more failed job(s): see the report"
    assert lines[-1].startswith(f"tiffpipe: {cli.FAILED_LINES + 3} of {len(jobs)} jobs failed "
                                "(1 succeeded); report: ")


def test_an_output_inside_another_jobs_output_is_refused_before_any_work(
        tmp_path: Path, capfd: pytest.CaptureFixture):
    """``out/a.tif`` and ``out/a.tif/b.tif``: validate said valid, and the run did both
    jobs' work, then one of them failed as it published (``[Errno 21] Is a directory`` or
    ``Not a directory``, whichever job came second). Now an invalid manifest, exit 2."""
    manifest = _batch(tmp_path, [_job("a"), _job("b", "a.tif/b"), _job("c")])
    assert cli.main(["validate", str(manifest)]) == 2
    code = cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--no-contact-sheet"])
    _, err = capfd.readouterr()
    assert code == 2
    assert (f"jobs[1].output: \"{tmp_path / 'out' / 'a.tif' / 'b.tif'}\" is inside the output "
            f"of jobs[0] (\"{tmp_path / 'out' / 'a.tif'}\"), a file, not a folder") in err
    assert not (tmp_path / "out").exists()



def _long_batch(folder: Path, jobs: int, bad_last: bool = False) -> Path:
    """A manifest of ``jobs`` jobs over one 900 x 900 input, slow enough (a blur and a
    median) that something can happen while it runs; with ``bad_last``, the last job's
    input is no TIFF."""
    (folder / "in").mkdir()
    rng = np.random.default_rng(2)
    tifffile.imwrite(folder / "in" / "a.tif", rng.integers(0, 255, (900, 900, 3), np.uint8),
                     compression="zlib", tile=(256, 256))
    (folder / "in" / "notes.tif").write_text("a text file saved under a .tif name")
    spec = [{"input": "in/a.tif", "output": f"out/{i:02d}.tif",
             "ops": [{"op": "gaussian_blur", "sigma": 6}, {"op": "median_blur", "ksize": 5}]}
            for i in range(jobs)]
    if bad_last:
        spec[-1]["input"] = "in/notes.tif"
    (folder / "m.json").write_text(json.dumps({"jobs": spec}))
    return folder / "m.json"


def test_a_run_whose_output_pipe_closes_goes_on_to_the_end(tmp_path: Path):
    """``tiffpipe run m.json 2>&1 | head`` (or ``| less``, quit early, or a ``tee`` killed):
    once the reader is gone, each progress line fails (BrokenPipeError). That failed the
    whole run (EngineError "the embedded engine's interpreter stopped: BrokenPipeError"):
    no report, the jobs not yet run never ran; and a summary that could not be printed
    made the exit status 0 even with failed jobs. Now the run goes on without its progress
    and ends as it would have: every job run, the report written, exit 1 for the failed
    one."""
    manifest = _long_batch(tmp_path, 24, bad_last=True)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(manifest),
                             "--workers", "1", "--no-contact-sheet"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    proc.stdout.readline()  # what `head -1` reads, then it is gone
    proc.stdout.close()
    assert proc.wait(120) == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert (report["succeeded"], report["failed"]) == (23, 1)
    assert report["jobs"][-1]["error"]["type"] == "NotATiffError"
    assert len(list((tmp_path / "out").glob("*.tif"))) == 23
    assert not (tmp_path / ".tiffpipe-work").exists()


def _in_a_terminal(args: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    """``tiffpipe`` started in a terminal of its own (a pseudo-terminal it has as its
    controlling terminal, as a login shell's, an SSH session's), and the terminal's master
    side, whose close hangs the terminal up."""
    master, slave = pty.openpty()
    # a session of its own (start_new_session) whose controlling terminal it takes
    start = ("import fcntl, runpy, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
             "sys.argv[0] = 'tiffpipe'; runpy.run_module('pipeline', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", start, *args], cwd=cwd, stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    return proc, master


def test_a_terminal_that_hangs_up_stops_the_run_cleanly(tmp_path: Path):
    """An SSH session that drops (or a terminal window closed) hangs the run's terminal up:
    SIGHUP killed the command outright, as kill -9 would: no report (an earlier run's would
    have stayed as this one's), its work folder left behind. Now it stops as on Ctrl-C: the
    finished jobs' outputs kept, the others RunInterruptedError in the report, the work
    folder removed, exit 129 (128 + SIGHUP), and no traceback for the terminal it can no
    longer write to."""
    manifest = _long_batch(tmp_path, 40)
    proc, master = _in_a_terminal(["run", str(manifest), "--workers", "1",
                                   "--no-contact-sheet"], tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob("*.tif")) and time.monotonic() < deadline:
            if select.select([master], [], [], 0.02)[0]:  # (its progress, read: the
                with contextlib.suppress(OSError):           # terminal never fills up)
                    os.read(master, 1 << 16)
    finally:
        os.close(master)  # the terminal hangs up: SIGHUP to the run
    assert proc.wait(60) == 128 + signal.SIGHUP
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["succeeded"] >= 1 and report["failed"] >= 1
    assert report["succeeded"] + report["failed"] == 40
    for job in report["jobs"]:
        output = Path(job["output"])
        if job["status"] == "SUCCEEDED":
            assert tifffile.imread(output).shape == (900, 900, 3)
        else:
            assert job["error"]["type"] == "RunInterruptedError"
            assert "(SIGHUP)" in job["error"]["message"]
            assert not output.exists()
    assert not (tmp_path / ".tiffpipe-work").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        Path(j["output"]).name for j in report["jobs"] if j["status"] == "SUCCEEDED")


@pytest.mark.parametrize("if_exists", ["overwrite", "fail", "skip"])
def test_a_partly_failed_run_says_how_to_rerun_only_what_failed(
        tmp_path: Path, capfd: pytest.CaptureFixture, if_exists: str):
    """The report's advice for a job without an output is "run it again", but a rerun of the
    manifest as it was redid the jobs that had succeeded too (if_exists: overwrite, the
    default: all that work again), or failed each of them with OutputExistsError (fail).
    The run now says so, and what makes a rerun do only the rest (skip); with skip,
    nothing is added."""
    manifest = _batch(tmp_path, [_job("a"), _job("notes"), _job("b")])
    data = json.loads(manifest.read_text())
    data["defaults"] = {"if_exists": if_exists}
    manifest.write_text(json.dumps(data))
    assert cli.main(["run", str(manifest), "--workers", "1", "--no-contact-sheet"]) == 1
    _, err = capfd.readouterr()
    hint = [line for line in err.splitlines() if "rerun" in line]
    if if_exists == "skip":
        assert hint == []
    else:
        redo = ("would run the 2 jobs that succeeded again" if if_exists == "overwrite" else
                "would fail the 2 jobs that succeeded (OutputExistsError)")
        assert hint == [(
            f"tiffpipe: a rerun of this manifest as it is {redo} (if_exists: {if_exists}); "
            "\"if_exists\": \"skip\" for them (in the manifest's \"defaults\", {\"defaults\": "
            "{\"if_exists\": \"skip\"}, \"jobs\": [...]}, and in each job that sets its own) "
            "keeps their outputs and runs only the jobs without one")]
    # and so it does
    data["defaults"] = {"if_exists": "skip"}
    manifest.write_text(json.dumps(data))
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet",
                     "--no-contact-sheet"]) == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SKIPPED", "FAILED", "SKIPPED"]


def test_a_run_started_with_nohup_outlives_its_terminal(tmp_path: Path):
    """``nohup tiffpipe run m.json &`` (what local-engine.md advises for a run that should
    outlive its terminal) starts the command with SIGHUP ignored. The command's own handler
    replaced that, so the hang-up nohup is for stopped the run (exit 129, the jobs not yet
    run never ran). A signal ignored when the command starts stays ignored: the run goes on
    to its end."""
    manifest = _long_batch(tmp_path, 6)
    # what nohup does: SIGHUP ignored, then the command exec'd (which keeps it ignored)
    nohup = "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); " \
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    proc = subprocess.Popen([sys.executable, "-c", nohup, "-m", "pipeline", "run",
                             str(manifest), "--workers", "1", "--no-contact-sheet", "--quiet"],
                            cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "out").glob("*.tif")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGHUP)  # the terminal hangs up: its whole session is told
    assert proc.wait(120) == 0
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert (report["succeeded"], report["failed"]) == (6, 0)


def test_the_stop_signals_leave_an_ignored_one_alone_and_need_no_sighup(monkeypatch):
    """While a run lasts, SIGINT, SIGTERM and SIGHUP stop it, but one that was ignored when
    it started (nohup's SIGHUP, a background job's SIGINT) stays ignored; where there is no
    SIGHUP (Windows) the others are still caught."""
    from pipeline.engine.local import StopRequest

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli._stop_on_signals(StopRequest()):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
    term = signal.getsignal(signal.SIGTERM)
    monkeypatch.delattr(signal, "SIGHUP")
    with cli._stop_on_signals(StopRequest()):
        assert signal.getsignal(signal.SIGTERM) is not term
    assert signal.getsignal(signal.SIGTERM) is term


def _stopped_run_says(statuses: list[str], quiet: bool, capsys: pytest.CaptureFixture,
                      over_a_file: tuple[int, ...] = ()) -> tuple[str, list[str]]:
    """What ``run`` prints at the end of a run stopped by SIGTERM whose jobs ended with
    ``statuses`` (SUCCEEDED, FAILED: NotATiffError, STOPPED: RunInterruptedError in the
    report; ``over_a_file``: the stopped jobs whose output path holds an earlier file, as
    the runner's message says it): stdout, and stderr's lines."""
    import argparse

    from pipeline.engine.local import StopRequest
    from pipeline.runner import FILE_LEFT, RunResult

    jobs = []
    for n, status in enumerate(statuses):
        entry = {"job": n, "status": "FAILED" if status == "STOPPED" else status,
                 "input": f"in/{n}.tif", "output": f"out/{n}.tif", "pages": 1,
                 "seconds": 0.5}
        if status != "SUCCEEDED":
            error = "RunInterruptedError" if status == "STOPPED" else "NotATiffError"
            left = f"{FILE_LEFT}an earlier one" if n in over_a_file else ""
            entry["error"] = {"type": error, "message": f"{error} of job {n}{left}"}
        jobs.append(entry)
    report = {"run_id": "r", "jobs": jobs, "seconds": 1.0, "skipped": 0,
              "succeeded": statuses.count("SUCCEEDED"),
              "failed": len(statuses) - statuses.count("SUCCEEDED")}
    result = RunResult(run_id="r", status="ABORTED", report=report,
                       report_url="/data/m.report.json", work="/w", seconds=1.0,
                       interrupted=signal.SIGTERM)
    stop = StopRequest()
    stop.request(signal.SIGTERM)
    cli._tell_the_end(argparse.Namespace(quiet=quiet), result, stop,  # (their if_exists)
                      [argparse.Namespace(if_exists="skip")] * len(statuses))
    out, err = capsys.readouterr()
    return out, err.splitlines()


def test_quiet_run_stopped_still_names_the_jobs_that_failed(capsys: pytest.CaptureFixture):
    """--quiet names each failed job on stderr, but a run that was also stopped (SIGTERM
    from a scheduler's timeout, a hang-up) said only "interrupted (SIGTERM): 3 of 5 jobs
    finished, their outputs are kept": the job that had failed on its own (a file that is
    no TIFF) was named nowhere but in the report. It is named; the jobs the stop left
    without an output are not (the interrupted line counts them), and the count says so.
    The interrupted line no longer counts the failed job among those whose outputs are
    kept, and says the finished jobs' parts plainly (it said "2 with their outputs, kept;
    1 failed")."""
    out, err = _stopped_run_says(["FAILED", "SUCCEEDED", "SUCCEEDED", "STOPPED", "STOPPED"],
                                 True, capsys)
    assert out == ""
    assert err == [
        ("tiffpipe: interrupted (SIGTERM): 3 of 5 jobs finished (2 with their outputs kept, "
         "1 failed); the other 2 were stopped before writing their outputs "
         "(RunInterruptedError in the report): run them again"),
        "tiffpipe: job 0 FAILED (in/0.tif): NotATiffError: NotATiffError of job 0",
        "tiffpipe: 1 of 5 jobs failed (2 succeeded, 2 stopped); report: /data/m.report.json"]


@pytest.mark.parametrize(("over_a_file", "said"), [
    ((2, 3), ("the files at their output paths are not known to be this run's, which a "
              'rerun with "if_exists": "skip" would take for the jobs\' outputs '
              "(RunInterruptedError in the report, whose messages say which paths hold a "
              "file)")),
    ((3,), ("the file at the output path of 1 of them is not known to be this run's, which a "
            'rerun with "if_exists": "skip" would take for the job\'s output '
            "(RunInterruptedError in the report, whose messages say which paths hold a file)"))])
def test_a_quiet_stopped_run_counts_the_unfinished_jobs_whose_path_holds_a_file(
        over_a_file: tuple[int, ...], said: str, capsys: pytest.CaptureFixture):
    """``run --quiet`` shows no summary rows, and its stop line said the stopped jobs wrote
    no output, though files (an earlier run's) were at their paths, which a rerun with
    ``if_exists: skip`` takes for their outputs: the line counts them now, as the line of a
    run that failed as a whole does, and says where the report tells which."""
    out, err = _stopped_run_says(["SUCCEEDED", "FAILED", "STOPPED", "STOPPED"], True, capsys,
                                 over_a_file)
    assert out == ""
    assert err[0] == ("tiffpipe: interrupted (SIGTERM): 2 of 4 jobs finished (1 with its "
                      "output kept, 1 failed); the other 2 were stopped before writing their "
                      f"outputs, and {said}: run them again")


@pytest.mark.parametrize("quiet", [True, False])
def test_a_stopped_run_with_no_failed_job_names_its_report_and_counts_in_words(
        quiet: bool, capsys: pytest.CaptureFixture):
    """A run stopped with no job failed of itself: --quiet printed no line naming the report
    (the docs promise one: the failed jobs' count line was left out with no failed job),
    and the interrupted line said "the other 1 were stopped". Now --quiet ends with a line
    counting the stopped jobs and naming the report, and the interrupted line agrees in
    number; without --quiet the summary names the report on stdout, as before."""
    out, err = _stopped_run_says(["SUCCEEDED", "STOPPED"], quiet, capsys)
    assert err[0] == ("tiffpipe: interrupted (SIGTERM): 1 of 2 jobs finished, its output is "
                      "kept; the other 1 was stopped before writing its output "
                      "(RunInterruptedError in the report): run it again")
    if quiet:
        assert out == ""
        assert err[1:] == [("tiffpipe: 1 of 2 jobs stopped (1 succeeded); report: "
                            "/data/m.report.json")]
    else:
        assert "report: /data/m.report.json" in out and len(err) == 1, (out, err)
    _, err = _stopped_run_says(["STOPPED"] * 3, quiet, capsys)
    assert err[0] == ("tiffpipe: interrupted (SIGTERM): none of the 3 jobs had finished; all "
                      "were stopped before writing their outputs (RunInterruptedError in the "
                      "report): run them again")
    named = ("tiffpipe: 3 of 3 jobs stopped (0 succeeded); report: /data/m.report.json")
    assert err[1:] == ([named] if quiet else [])


def test_a_summary_whose_reader_is_gone_leaves_the_lines_on_stderr(tmp_path: Path):
    """``tiffpipe run m.json | head -3``: the summary on stdout fails (its reader gone), and
    every line ``run`` still had for stderr, a terminal that is still there (what a rerun
    would do, why the run stopped), went with it: stderr was made /dev/null as well. Only
    stdout is now given up; exit 1 for the failed job as before."""
    manifest = _batch(tmp_path, [_job("a"), _job("notes"), _job("b")])
    read, write = os.pipe()
    os.close(read)  # the reader gone before the summary
    with open(tmp_path / "err.txt", "w") as err:
        code = subprocess.run([sys.executable, "-m", "pipeline", "run", str(manifest),
                               "--workers", "1", "--no-contact-sheet"], cwd=tmp_path,
                              stdout=write, stderr=err, timeout=120, check=False).returncode
    os.close(write)
    assert code == 1
    said = (tmp_path / "err.txt").read_text().splitlines()
    assert said[-1].startswith("tiffpipe: a rerun of this manifest as it is would run the 2 "
                               "jobs that succeeded again"), said
    assert not any("Traceback" in line or "BrokenPipe" in line for line in said), said
