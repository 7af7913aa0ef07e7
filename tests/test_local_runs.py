"""A scan's local run defers to an earlier local run of the same scan still going
(pipeline/adapters/local_runs.py): runs listed by real processes holding real locks, in a
real folder; the engine test runs the real state machine."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from pipeline import ui
from pipeline.adapters import local_runs
from pipeline.errors import RunningAlreadyError, WorkLocationError
from pipeline.sample import SamplePage, write_sample

ROOT = Path(__file__).resolve().parent.parent

#: a process that lists a run (argv: folder or "", name, run id, manifest, work folder or "",
#: "keep" if it keeps its work, report or "") until its stdin ends
LISTING = """
import sys
from pipeline.adapters import local_runs
local_runs.FOLDER = sys.argv[1] or None
with local_runs.listed(*sys.argv[2:5], sys.argv[5] or None, sys.argv[6] == "keep",
                       sys.argv[7] or None):
    print("listed", flush=True)
    sys.stdin.read()
"""


#: a run listed by a process (argv: folder, work folder) that has started another, which
#: holds the run's file too (as a worker the run starts does between its fork and its exec)
#: and lives on until killed; the lister prints that process's id, then waits for ever
STARTING = """
import os, signal, sys
from pipeline.adapters import local_runs
local_runs.FOLDER = sys.argv[1]
with local_runs.listed("run-k", "k", "/m/jobs.json", sys.argv[2]):
    child = os.fork()
    if child == 0:
        while True:
            signal.pause()
    print(child, flush=True)
    while True:
        signal.pause()
"""


def _ended(pid: int) -> None:
    """Kill the process ``pid`` (not this one's child) and return once it has ended: its
    pidfd is readable (its files, and the locks on them, are let go before)."""
    watch = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([watch], [], [], 60)[0], f"process {pid} did not end"
    finally:
        os.close(watch)


@contextmanager
def killed_while_starting(folder: Path, work: Path) -> Iterator[int]:
    """A run (:data:`STARTING`) killed (SIGKILL) while the process it started still holds its
    file: that process's id, for the block (then it is ended)."""
    proc = subprocess.Popen([sys.executable, "-c", STARTING, str(folder), str(work)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = -1
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        yield child
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if child > 0:
            with suppress(ProcessLookupError):  # (ended already, and reaped)
                _ended(child)


@contextmanager
def run_elsewhere(folder: str, name: str, manifest: str, work: str = "",
                  keep_work: bool = False, report: str = "") -> Iterator[subprocess.Popen[str]]:
    """Another process running (listed as) run ``name`` on ``manifest`` while the block
    runs."""
    proc = subprocess.Popen([sys.executable, "-c", LISTING, folder, name, name[4:], manifest,
                             work, "keep" if keep_work else "", report], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "listed\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.communicate("")  # its stdin ends: the run ends
        assert proc.wait(30) in (0, -signal.SIGKILL)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setattr(local_runs, "FOLDER", str(path))
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux's /proc")
def test_a_killed_process_not_yet_reaped_is_no_process_going_on():
    """A process killed whose parent has not waited for it yet (a zombie) has ended: a run
    it was is no run going on (its lease no lease held), though kill(pid, 0) finds it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert local_runs.process_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 30
        while local_runs.process_alive(child.pid):  # (until the kernel has ended it)
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        os.kill(child.pid, 0)  # still there, unreaped: a zombie
    finally:
        child.kill()
        child.wait()
    assert not local_runs.process_alive(child.pid)


def test_a_run_is_listed_while_it_runs(folder: Path):
    """Listed while the block runs (its name, run id, manifest, start, process), then not,
    and its file is gone; the default folder is the user's in the temp folder."""
    assert local_runs.running() == []  # (no folder yet)
    with local_runs.listed("run-a", "a", "/m/scan.json"):
        [run] = local_runs.running()
        assert run[:3] == ("run-a", "a", "/m/scan.json") and run.pid == os.getpid()
        assert os.listdir(folder) == ["run-a.json"]
        assert run.describe() == f"local run a, process {os.getpid()}"
    assert local_runs.running() == [] and os.listdir(folder) == []
    local_runs.FOLDER = None
    assert local_runs.runs_folder() == f"/tmp/tiffpipe-runs-{os.getuid()}"


def test_a_run_of_another_process_is_going_on_until_that_process_ends(
        folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A run another process lists is going on while that process holds it; once the
    process is killed (its lock dropped by the kernel, its file left), the run is over and
    the next look removes its file and the work folder it names (with a warning), not a
    work folder of a run going on, nor of one that keeps it (none named)."""
    work = tmp_path / ".tiffpipe-work" / "b"
    (work / "jobs").mkdir(parents=True)
    (work / "jobs" / "tile.bin").write_bytes(b"x" * 1000)
    kept = tmp_path / "kept"
    kept.mkdir()
    with run_elsewhere(str(folder), "run-b", "/m/scan.json", str(work)) as proc, \
            run_elsewhere(str(folder), "run-c", "/m/scan.json") as keeps:
        assert [(r.name, r.pid, r.work) for r in local_runs.running()] == [
            ("run-b", proc.pid, str(work)), ("run-c", keeps.pid, None)]
        with local_runs.listed("run-d", "d", "/m/other.json", str(kept)):
            proc.kill()
            proc.wait(30)
            assert sorted(os.listdir(folder)) == ["run-b.json", "run-c.json", "run-d.json"]
            assert work.is_dir()  # a crash leaves them
            assert [r.name for r in local_runs.running()] == ["run-c", "run-d"]
            assert not (tmp_path / ".tiffpipe-work").exists() and kept.is_dir()
            assert f"removed {work}, the work folder of run b: its process ({proc.pid})" \
                in caplog.text
            keeps.kill()
            keeps.wait(30)
            assert [r.name for r in local_runs.running()] == ["run-d"]
    assert os.listdir(folder) == [] and kept.is_dir()  # a run's own is its own to remove


@pytest.mark.parametrize("keep_work", [False, True])
def test_the_partial_outputs_a_killed_run_left_are_removed(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, keep_work: bool):
    """A run killed while it wrote outputs: the next look removes the temporary files named
    with its run id beside the outputs its run file lists (with a warning each), not
    another run's, not one of no run, not the outputs; and its work folder, unless the run
    keeps it (--keep-work: kept, but its partial outputs go)."""
    from pipeline.adapters import storage
    from pipeline.core.constants import RUN_TAG_ENV

    outputs = [str(tmp_path / "out" / "a.tif"), str(tmp_path / "out" / "sub" / "b.tif")]
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"run_id": "k", "jobs": [
        {"input": "x", "output": o} for o in outputs] + [{"input": "y", "output": None}]}))
    made: dict[str | None, list[str]] = {}
    for run in ("k", "other", None):
        if run is None:
            monkeypatch.delenv(RUN_TAG_ENV, raising=False)
        else:
            monkeypatch.setenv(RUN_TAG_ENV, run)
        made[run] = [storage.temp_output_path(o) for o in outputs]
        for path in made[run]:
            Path(path).write_bytes(b"partial")
    Path(outputs[0]).write_bytes(b"an earlier run's output")
    with run_elsewhere(str(folder), "run-k", "/m/jobs.json", str(work), keep_work) as proc:
        proc.kill()
        proc.wait(30)
    assert local_runs.running() == []
    assert not any(os.path.exists(p) for p in made["k"]) and work.exists() == keep_work
    assert all(os.path.exists(p) for p in made["other"] + made[None] + outputs[:1])
    for path in made["k"]:
        assert f"removed {path}, a partial output of run k: its process ({proc.pid})" \
            in caplog.text


def test_the_earlier_run_of_the_same_scan(folder: Path):
    """Of the runs going on, one that started before this one (ties: by name) on a manifest
    the caller says is the same scan; a run not listed is taken to start now; files that are
    not a run's are left out."""
    (folder).mkdir()
    (folder / "junk.json").write_text("[1, 2]")  # not a run's: no lock held either
    scan, other = "/m/scan.json", "/m/other.json"
    with local_runs.listed("run-1", "1", scan), local_runs.listed("run-2", "2", other), \
            local_runs.listed("run-3", "3", scan):
        first = local_runs.running()[0]
        assert [r.name for r in local_runs.running()] == ["run-1", "run-2", "run-3"]
        assert local_runs.earlier_run("run-3", scan.__eq__) == first.describe()
        assert local_runs.earlier_run("run-1", scan.__eq__) is None
        assert local_runs.earlier_run("run-2", other.__eq__) is None
        assert local_runs.earlier_run("run-9", other.__eq__) is not None  # not listed: now
    assert local_runs.earlier_run("run-3", scan.__eq__) is None  # they ended
    assert not (folder / "junk.json").exists()


@pytest.mark.parametrize("kind", ["unwritable", "a link"])
def test_a_folder_the_run_cannot_list_itself_in_is_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        kind: str):
    """A folder the run cannot be listed in (one under a file; a link, as another user could
    make in a shared /tmp, whose runs there are not looked at either): the run goes on,
    unlisted, with a warning."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    folder = blocker / "runs"
    if kind == "a link":
        (tmp_path / "theirs").mkdir()
        folder = tmp_path / "runs"
        folder.symlink_to(tmp_path / "theirs")
    monkeypatch.setattr(local_runs, "FOLDER", str(folder))
    with local_runs.listed("run-a", "a", "/m/scan.json"):
        assert local_runs.running() == []
    assert "cannot list this run" in caplog.text
    assert "if it is killed will not be removed" in caplog.text  # what else goes
    assert not (tmp_path / "theirs").exists() or os.listdir(tmp_path / "theirs") == []


@pytest.mark.engine
@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_a_scan_run_defers_to_an_earlier_local_run_of_the_scan(tmp_path: Path,
                                                                interpreter: str):
    """A scan's run while another process runs the same scan: no job, the report and the
    summary name that run; a scan of another output is not deferred; once the other run is
    over, the scan's run does its job. The default folder, as the other process's: the
    moto interpreter's PlanRun runs in a worker process."""
    from pipeline.runner import run_local

    (tmp_path / "in").mkdir()
    write_sample(str(tmp_path / "in" / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"scan": {"input": "in", "output": "out2"}}))
    with run_elsewhere("", "run-earlier", str(scan)) as proc:
        result = run_local(str(scan), 1, interpreter=interpreter)
        assert result.ok and result.report is not None and result.report["jobs"] == []
        assert result.report["deferred_to"] == f"local run earlier, process {proc.pid}"
        title, rows = ui.summary_rows(result.report)
        assert "an earlier run of this manifest is still running (local run earlier" in title
        assert rows == [] and not (tmp_path / "out").exists()
        other = run_local(str(elsewhere), 1, interpreter=interpreter)
        assert other.ok and other.report is not None and "deferred_to" not in other.report
        assert (tmp_path / "out2" / "a.tif").exists()
    result = run_local(str(scan), 1, interpreter=interpreter)
    assert result.ok and result.report is not None and "deferred_to" not in result.report
    assert [j["status"] for j in result.report["jobs"]] == ["SUCCEEDED"]
    assert (tmp_path / "out" / "a.tif").exists()


@pytest.mark.engine
def test_a_second_run_of_a_list_of_jobs_is_refused_while_the_first_goes_on(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """Two runs of one manifest of jobs at once (a run from cron that outlasts its interval,
    a command typed twice), each with its own default work folder, both did every job and
    wrote the same outputs. The later one is refused before anything runs (exit 75, "try
    again later", EX_TEMPFAIL: it was 2, as an invalid manifest's), naming
    the run going on, also under another name of the manifest (a link); another manifest
    runs; once the first run's process has ended (here: killed), the next run goes on."""
    from pipeline import cli
    from pipeline.runner import run_local

    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out.tif"}]}))
    (tmp_path / "alias.json").symlink_to(manifest)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "other.tif"}]}))
    with run_elsewhere(str(folder), "run-first", str(manifest)) as proc:
        for name in ("m.json", "alias.json"):
            with pytest.raises(RunningAlreadyError) as info:
                run_local(str(tmp_path / name), 1)
            assert f"local run first, process {proc.pid} is running this manifest now" in \
                str(info.value)
        assert cli.main(["run", str(manifest), "--quiet"]) == 75  # (try again later)
        err = capsys.readouterr().err
        assert err.startswith(f"tiffpipe: {manifest}: local run first, process {proc.pid} is "
                              "running this manifest now: a second run would do every job "
                              "again and write the same outputs. Wait for it to end"), err
        assert not (tmp_path / "out.tif").exists()
        assert not (tmp_path / ".tiffpipe-work").exists()
        assert not (tmp_path / "m.report.json").exists()
        assert run_local(str(other), 1).ok
        proc.kill()
        proc.wait(30)
        assert run_local(str(manifest), 1).ok
    assert (tmp_path / "out.tif").exists()


@pytest.mark.engine
def test_a_run_given_the_report_path_of_a_run_going_on_is_refused(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """Two runs of different manifests given one --report both ran, exit 0, and the report
    of the one that ended last replaced the other's without a word. The later one is
    refused before anything runs, as a second run of one manifest is (exit 75, try again
    later), naming the other run and its manifest; another --report runs, and so does the
    same one once that run has ended."""
    from pipeline import cli

    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    first, manifest = tmp_path / "first.json", tmp_path / "m.json"
    first.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "first.tif"}]}))
    manifest.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out.tif"}]}))
    shared = tmp_path / "reports" / "shared.json"
    with run_elsewhere(str(folder), "run-first", str(first), report=str(shared)) as proc:
        assert cli.main(["run", str(manifest), "--quiet", "--report", str(shared)]) == 75
        assert capsys.readouterr().err == (
            f"tiffpipe: {shared}: local run first, process {proc.pid} (of {first}) is writing "
            "its report there now: this run's would replace it. Give this run another "
            "--report, or wait for that run to end, then run again\n")
        assert not (tmp_path / "out.tif").exists() and not shared.exists()
        assert cli.main(["run", str(manifest), "--quiet", "--report",
                         str(tmp_path / "own.json")]) == 0
    assert cli.main(["run", str(manifest), "--quiet", "--report", str(shared)]) == 0
    assert json.loads(shared.read_text())["manifest"] == str(manifest)


@pytest.mark.engine
def test_a_second_run_of_the_same_manifest_given_as_a_dict_is_refused_too(
        folder: Path, tmp_path: Path):
    """``pipeline.run`` writes a dict manifest to a temporary file of its own, so two runs
    of one dict at once (a notebook's cell run again while the first goes on, a scheduler's
    task started twice) were never the same manifest file: both did every job. The later
    one is refused, saying "the manifest given" (not the temporary file's path, which the
    caller never saw) and what to do; another dict (another output) runs."""
    import pipeline
    from pipeline.runner import manifest_file

    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    given = {"jobs": [{"input": "a.tif", "output": "out.tif"}]}
    with manifest_file(given, tmp_path) as (path, _, _), \
            run_elsewhere(str(folder), "run-first", path) as proc:
        with pytest.raises(RunningAlreadyError) as info:
            pipeline.run(given, workers=1, base=tmp_path)
        assert str(info.value) == (
            f"the manifest given: local run first, process {proc.pid} is running the same "
            "manifest (given to pipeline.run as a dict too) now: a second run would do every "
            "job again and write the same outputs. Wait for it to end, or stop it, then run "
            "again")
        assert not (tmp_path / "out.tif").exists()
        other = {"jobs": [{"input": "a.tif", "output": "other.tif"}]}
        assert pipeline.run(other, workers=1, base=tmp_path).ok



def _piped(text: str) -> str:
    """A pipe holding ``text`` (its writer closed), by a path as ``<(gen)`` gives one."""
    read, write = os.pipe()
    os.write(write, text.encode())
    os.close(write)
    return f"/proc/self/fd/{read}"


@pytest.mark.engine
def test_a_second_piped_run_of_the_same_jobs_is_refused_and_a_piped_scan_defers(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    """Two overlapping ``gen | tiffpipe run -`` of the same jobs both ran: each ran from its
    own copy of the manifest, and two copies were never the same manifest file; the later
    was refused only for the report path they share, "(of another manifest)", a piped scan's
    run too, which was to defer. Copies of the same text are the same jobs (their locations
    anchored to absolute paths): the later run of a list of jobs is refused as a second run
    of a manifest is, and a scan's run defers to the earlier one."""
    from pipeline import cli
    from pipeline.runner import manifest_file

    monkeypatch.chdir(tmp_path)
    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    jobs = json.dumps({"jobs": [{"input": "a.tif", "output": "out.tif"}]})
    with manifest_file(_piped(jobs)) as (path, _, _), \
            run_elsewhere(str(folder), "run-first", path,
                          report=str(tmp_path / "stdin.report.json")) as proc:
        with open(_piped(jobs), encoding="utf-8") as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            assert cli.main(["run", "-", "--quiet"]) == 75
        assert capsys.readouterr().err == (
            f"tiffpipe: the manifest read from stdin (or a pipe): local run first, process "
            f"{proc.pid} is running the same jobs (their manifest read from stdin or a pipe "
            "too) now: a second run would do every job again and write the same outputs. "
            "Wait for it to end, or stop it, then run again\n")
        assert not (tmp_path / "out.tif").exists()

    (tmp_path / "in").mkdir()
    (tmp_path / "a.tif").rename(tmp_path / "in" / "a.tif")
    scan = json.dumps({"scan": {"input": "in", "output": "out"}})
    with manifest_file(_piped(scan)) as (path, _, _), \
            run_elsewhere(str(folder), "run-earlier", path,
                          report=str(tmp_path / "stdin.report.json")) as proc:
        with open(_piped(scan), encoding="utf-8") as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            assert cli.main(["run", "-", "--quiet"]) == 0, capsys.readouterr().err
        report = json.loads((tmp_path / "stdin.report.json").read_text())
        assert report["jobs"] == []
        assert report["deferred_to"] == f"local run earlier, process {proc.pid}"
    assert not (tmp_path / "out").exists()

SLEEPY = """
import time


def sleepy(tile):
    time.sleep(120)
    return tile
"""


#: ``tiffpipe run`` (argv: the folder its run is listed in, then the command's arguments)
COMMAND = """
import sys
from pipeline.adapters import local_runs
local_runs.FOLDER = sys.argv[1]
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.engine
def test_the_work_a_killed_run_left_is_removed_by_the_next_run(
        folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """``tiffpipe run`` killed (SIGKILL, the command and its workers) mid-job leaves its work
    folder; the next local run, of any manifest, removes it and says so. Both are listed in
    this test's folder: in the user's, any other tiffpipe process of the machine (another
    test run's) may remove it first, or hold its file while it does, and this run not."""
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "tiffpipe_test_sleepy.py").write_text(SLEEPY)
    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"jobs": [{
        "input": "a.tif", "output": "slow.tif",
        "ops": [{"op": "custom", "function": "tiffpipe_test_sleepy:sleepy"}]}]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "ops"), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-c", COMMAND, str(folder), "run", str(slow)],
                            env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    works = tmp_path / ".tiffpipe-work"
    try:
        deadline = time.monotonic() + 120
        while not list(works.glob("*/run.json")):  # planned: the job is under way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    [left] = list(works.iterdir())
    assert os.listdir(folder) == [f"run-{left.name}.json"]  # (none in the user's)
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "fast.tif"}]}))
    from pipeline.runner import run_local

    assert run_local(str(fast), 1).ok
    assert not works.exists() and not (tmp_path / "slow.tif").exists()
    assert f"removed {left}, the work folder of run {left.name}" in caplog.text
    assert os.listdir(folder) == []


@pytest.mark.engine
def test_a_runs_temporary_outputs_carry_its_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The temporary file a local run builds an output in is named with the run's id (what
    a stopped run, or the run after a killed one, finds its own by); the variable is the
    run's only while it runs."""
    from pipeline.adapters import storage
    from pipeline.core.constants import RUN_TAG_ENV
    from pipeline.runner import run_local

    made: list[str] = []
    real = storage.temp_output_path

    def recording(url: str) -> str:
        made.append(real(url))
        return made[-1]

    monkeypatch.setattr(storage, "temp_output_path", recording)
    monkeypatch.setenv(RUN_TAG_ENV, "the-callers")
    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out.tif"}]}))
    result = run_local(str(manifest), 1)
    assert result.ok and (tmp_path / "out.tif").exists()
    mine = [p for p in made if os.path.basename(p).startswith(".out.tif.")]
    assert mine and all(f".out.tif.tiffpipe-{result.run_id}-" in p for p in mine)
    assert os.environ[RUN_TAG_ENV] == "the-callers"


@pytest.mark.engine
def test_a_run_sums_up_its_own_report_when_another_run_wrote_over_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Two runs given one report path at once: the one that ends first reads back the other's
    report (it wrote over this run's between its Report step and the read). Its summary,
    exit status and contact sheet are still its own: made again from its work location."""
    from pipeline import runner

    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    shared = tmp_path / "shared.report.json"
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "good.tif"}]}))
    other = runner.run_local(str(good), 1, report=str(shared), contact_sheet=True)
    assert other.ok and other.contact_sheet is not None
    others_report = shared.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "b.tif"},
                                        {"input": "missing.tif", "output": "c.tif"}]}))
    real_run = runner.LocalEngine.run

    def then_the_other_run_writes(self, *args, **kwargs):
        execution = real_run(self, *args, **kwargs)
        shared.write_text(others_report)  # the other run's Report step, a moment later
        return execution

    monkeypatch.setattr(runner.LocalEngine, "run", then_the_other_run_writes)
    result = runner.run_local(str(bad), 1, report=str(shared), contact_sheet=True)
    assert not result.ok and result.report is not None
    assert result.report["run_id"] == result.run_id != other.run_id
    assert (result.report["succeeded"], result.report["failed"]) == (1, 1)
    assert [j["input"] for j in result.report["jobs"]] == [str(tmp_path / "a.tif"),
                                                           str(tmp_path / "missing.tif")]
    assert json.loads(shared.read_text())["run_id"] == other.run_id  # the file is the other's
    assert f"holds the report of run {other.run_id}" in caplog.text
    # and so is the contact sheet beside it: this run's is not drawn there, the other's stays
    assert result.contact_sheet is None and (tmp_path / "shared.report.contact.png").exists()


def test_a_killed_runs_work_stays_taken_while_its_leftovers_are_removed(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The look that removes a killed run's leftovers holds its file until it is done: a run
    given that work location meanwhile is refused (else it would start there and have its
    files removed under it), a scan's run does not defer to it (its process is gone), a look
    of the process removing them does not wait for it to let the file go, and once done the
    location is free."""
    from pipeline.runner import _claim_work

    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"run_id": "k", "jobs": []}))
    seen: dict[str, Any] = {}
    real_end_uploads = local_runs._end_uploads

    def meanwhile(run: Any, at: str, path: str) -> bool:  # another run's looks, during the removal
        seen["using"] = local_runs.using(str(work), "run-new")
        seen["deferred"] = local_runs.earlier_run("run-new", lambda m: m == "/m/scan.json")
        with pytest.raises(WorkLocationError, match="which was killed: another run is "
                                                    "removing what it left there now"):
            _claim_work(str(work), "run-new")
        return real_end_uploads(run, at, path)

    def waits(seconds: float) -> None:
        raise AssertionError("a look waited for the file this process holds (reaping it)")

    monkeypatch.setattr(local_runs, "_end_uploads", meanwhile)
    monkeypatch.setattr(local_runs, "_pause", waits, raising=False)  # (never let go meanwhile)
    with run_elsewhere(str(folder), "run-k", "/m/scan.json", str(work)) as proc:
        proc.kill()
        proc.wait(30)
    assert local_runs.running() == []  # this look removed what it left
    assert seen["using"] is not None and seen["using"].pid == proc.pid
    assert not seen["using"].alive and seen["deferred"] is None
    assert not work.exists() and os.listdir(folder) == []
    assert local_runs.using(str(work), "run-new") is None


def test_a_killed_runs_work_that_cannot_be_removed_is_a_warning_and_tried_again(
        folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A file the look cannot remove (in a folder of another user's, a read-only one; here,
    for root too, a folder where the run's file should be): a warning, not the looking
    run's failure (it was a PermissionError's traceback), and the killed run is listed again
    for the next look."""
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (work / "report.json").mkdir()
    (work / "report.json" / "x").write_text("x")
    with run_elsewhere(str(folder), "run-k", "/m/jobs.json", str(work)) as proc:
        proc.kill()
        proc.wait(30)
    assert local_runs.running() == []
    assert f"could not remove {work}, the work of run k" in caplog.text, caplog.text
    assert "cannot remove report.json" in caplog.text and "tries again" in caplog.text
    assert os.listdir(folder) == ["run-k.json"]  # listed again
    (work / "report.json" / "x").unlink()
    (work / "report.json").rmdir()
    assert local_runs.running() == [] and not work.exists() and os.listdir(folder) == []



def test_a_killed_runs_file_a_process_it_started_still_holds_is_waited_for(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture):
    """A run killed while it started a process (a worker, between its fork and its exec):
    that process holds the run's file too, locked, until it ends a moment later. The next
    look waits for it (it took the run for one going on: the run's work was left, the next
    run did not remove it), then removes what the run left."""
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    waits: list[float] = []

    with killed_while_starting(folder, work) as child:
        def the_child_ends(seconds: float) -> None:  # while the look waits
            if not waits:
                _ended(child)
            waits.append(seconds)

        monkeypatch.setattr(local_runs, "_pause", the_child_ends, raising=False)
        assert local_runs.running() == []
    assert waits and not work.exists() and os.listdir(folder) == []
    assert f"removed {work}, the work folder of run k" in caplog.text


def test_a_killed_runs_file_held_on_is_waited_for_a_while_once(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A killed run's file a process it started holds on to (one forked, not exec'd, by the
    program that called ``pipeline.run``): a look waits a while (:data:`HELD_WAIT_S`), not
    for ever, then takes it for a run being reaped by another look (its work is not
    touched); this process does not wait for it again. A run going on is not waited for."""
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    waits: list[float] = []
    monkeypatch.setattr(local_runs, "_pause", waits.append, raising=False)
    monkeypatch.setattr(local_runs, "_waited", set(), raising=False)
    with run_elsewhere(str(folder), "run-live", "/m/other.json") as live, \
            killed_while_starting(folder, work):
        runs = local_runs.running()
        assert [(r.name, r.alive) for r in runs] == [("run-live", True), ("run-k", False)]
        assert sum(waits) == pytest.approx(local_runs.HELD_WAIT_S) and live.poll() is None
        assert work.is_dir()
        assert [r.name for r in local_runs.running()] == ["run-live", "run-k"]
        assert sum(waits) == pytest.approx(local_runs.HELD_WAIT_S)  # not again
    assert local_runs.running() == [] and not work.exists()  # its process gone: reaped
