"""The ``tiffpipe`` console script (``pipeline.__main__.console``, which loads and runs
``pipeline.cli.console``), run as a user runs it: in a
process of its own, which ends without the interpreter's teardown once the exit handlers
have run and stdout and stderr are flushed, or with the usual exit where that is not safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import BUFFERING, command_env, run_without_reader

from pipeline.core.ops import OPS

pytestmark = pytest.mark.timeout(120)

#: marks what only the interpreter's teardown prints: an object of the script's globals,
#: freed when the teardown clears them (its ``write`` bound: the teardown may have set ``os``
#: to None by then), and an exit handler registered before the command
PRELUDE = r"""
import atexit, os, sys
class Marker:
    def __del__(self, write=os.write):
        write(2, b"teardown ran\n")
marker = Marker()
atexit.register(lambda: os.write(2, b"exit handler ran\n"))
"""
COMMAND = "from pipeline.__main__ import console\nsys.argv[0] = 'tiffpipe'\nconsole()\n"


def _command(args: list[str], before: str = "", flags: tuple[str, ...] = (),
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tiffpipe ARGS`` in a process of its own, after the prelude and ``before``."""
    script = PRELUDE + before + "\nsys.argv[1:] = " + repr(args) + "\n" + COMMAND
    return subprocess.run([sys.executable, *flags, "-c", script], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
                          env=env)


def test_the_console_script_is_console():
    [script] = entry_points(group="console_scripts", name="tiffpipe")
    assert script.value == "pipeline.__main__:console"


#: Ctrl-C (a real SIGINT, to the process) as the module given is about to be imported
CTRL_C_AT = r"""
import os, signal
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize("module", ["pipeline.cli", "pipeline.ui"])
def test_ctrl_c_while_the_command_loads_is_one_line(module: str):
    """Ctrl-C in the first tens of milliseconds, as the console script imports the command
    (``pipeline.cli``, ``from pipeline.cli import console`` in the script itself) or as
    ``console`` imports what it needs before ``main`` (``pipeline.ui``): a KeyboardInterrupt
    traceback of the script. Now the line a later Ctrl-C gives, exit 130."""
    proc = _command(["ops"], before=CTRL_C_AT.format(module=module))
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines()[0] == "tiffpipe: interrupted", proc.stderr  # (then the
    # prelude's markers)
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_ctrl_c_while_the_arguments_are_parsed_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Ctrl-C while main makes its parser (some milliseconds: argparse's imports) was
    outside main's handling of it."""
    from pipeline import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_parser", interrupted)
    assert cli.main(["ops"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "tiffpipe: interrupted\n"


def test_the_command_ends_without_the_teardown_after_its_exit_handlers_and_output():
    proc = _command(["ops", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["ops"]) == len(OPS)  # all of stdout, flushed
    assert "exit handler ran" in proc.stderr
    assert "teardown ran" not in proc.stderr


def test_exit_codes_are_kept(tmp_path: Path):
    missing = _command(["validate", str(tmp_path / "missing.json")])
    assert missing.returncode == 2
    assert "missing.json does not exist" in missing.stderr
    assert "teardown ran" not in missing.stderr
    (tmp_path / "m.json").write_text(json.dumps(
        {"jobs": [{"input": str(tmp_path / "in.tif"), "output": str(tmp_path / "out.tif"),
                   "ops": [{"op": "gaussian_blur", "sigma": 1}]}]}))
    (tmp_path / "in.tif").write_bytes(b"not a TIFF")
    failed = _command(["run", str(tmp_path / "m.json"), "--quiet", "--no-contact-sheet"])
    assert failed.returncode == 1, failed.stderr
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["failed"] == 1 and "in.tif" in report["jobs"][0]["error"]["message"]
    assert not (tmp_path / "out.tif").exists()


#: at exit: the command's OpenBLAS setting and how many of its threads Python did not start
#: (given a second to go: a thread Python has just joined may still be ending; OpenBLAS's
#: never end)
NATIVE_THREADS = r"""
import threading, time
def native_threads():
    for _ in range(100):
        known = {t.native_id for t in threading.enumerate()}
        native = [t for t in os.listdir("/proc/self/task") if int(t) not in known]
        if not native:
            break
        time.sleep(0.01)
    print("blas", os.environ.get("OPENBLAS_NUM_THREADS"), "cv2" in sys.modules,
          "native threads", len(native), file=sys.stderr)
atexit.register(native_threads)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_command_runs_openblas_on_one_thread_unless_the_user_set_a_count(tmp_path: Path):
    """numpy's OpenBLAS and the one OpenCV's wheel bundles each start a thread when they load
    (spinning ~0.2 CPU-s as OpenCV loads): none in the command's process, which sets one
    OpenBLAS thread before either loads; a count the user set is kept."""
    tifffile.imwrite(tmp_path / "in.tif", np.arange(64 * 64 * 3, dtype=np.uint8).reshape(
        64, 64, 3), photometric="rgb", compression="zlib")
    (tmp_path / "m.json").write_text(json.dumps(
        {"jobs": [{"input": str(tmp_path / "in.tif"), "output": str(tmp_path / "out.tif"),
                   "ops": [{"op": "gaussian_blur", "sigma": 1}]}]}))
    args = ["run", str(tmp_path / "m.json"), "--quiet"]  # with its contact sheet
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    proc = _command(args, before=NATIVE_THREADS, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "blas 1 True native threads 0" in proc.stderr  # 2 without the setting
    assert (tmp_path / "out.tif").exists()
    kept = _command(args, before=NATIVE_THREADS, env=env | {"OPENBLAS_NUM_THREADS": "2"})
    assert kept.returncode == 0, kept.stderr
    assert "blas 2 True" in kept.stderr


#: a thread that ends only once the interpreter's usual exit waits for it (the exit calls
#: ``threading._shutdown``, which joins the threads): still running when the command ends,
#: however slow the machine (it slept 0.3 s: a loaded machine ran the command past it, the
#: thread had ended, and the command rightly skipped the teardown); never ending, and
#: writing nothing, if the command ends without the usual exit
LATE_THREAD = r"""
import threading
released = threading.Event()
_shutdown = threading._shutdown
def shutdown():
    released.set()
    _shutdown()
threading._shutdown = shutdown
def late():
    released.wait()
    open(DONE, "w").close()
threading.Thread(target=late).start()
"""


def test_a_thread_still_running_is_waited_for(tmp_path: Path):
    done = tmp_path / "done"
    proc = _command(["ops"], before=f"DONE = {str(done)!r}\n" + LATE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert done.exists()  # the usual exit: the interpreter waited for the thread
    assert "exit handler ran" in proc.stderr and "teardown ran" in proc.stderr


def test_development_mode_keeps_the_teardown():
    proc = _command(["ops"], flags=("-X", "dev"))
    assert proc.returncode == 0, proc.stderr
    assert "teardown ran" in proc.stderr


def test_a_reader_gone_before_the_output_is_written_is_quiet():
    """`tiffpipe ops | head -0`: stdout's pipe closed before the command writes to it."""
    script = PRELUDE + "\nsys.argv[1:] = ['ops']\n" + COMMAND
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err
    assert "exit handler ran" in err and "teardown ran" not in err


@pytest.mark.parametrize("buffering", sorted(BUFFERING))
@pytest.mark.parametrize(("args", "flags"), [
    (["--help"], ()), (["run", "--help"], ()), (["--version"], ()),
    (["validate", "MANIFEST"], ("-X", "dev")), (["ops"], ()),
    (["inspect", "IN"], ()), (["estimate", "MANIFEST"], ())])
def test_a_reader_gone_is_quiet_however_the_command_ends(args: list[str], flags: tuple[str, ...],
                                                        buffering: str, tmp_path: Path):
    """``tiffpipe run --help | head``: argparse's exits (``--help``, ``--version``) skipped
    :func:`exit_now`, leaving the output to the interpreter's exit, whose flush said
    "Exception ignored ... BrokenPipeError" (exit 120); so did the usual exit of development
    mode. Now every way the command ends is quiet (exit 0), ``inspect`` and ``estimate`` of a
    real TIFF too."""
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((64, 64), np.uint8))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(tmp_path / "in.tif"), "output": str(tmp_path / "out.tif")}]}))
    given = [{"IN": str(tmp_path / "in.tif"), "MANIFEST": str(tmp_path / "m.json")}.get(a, a)
             for a in args]
    script = PRELUDE + "\nsys.argv[1:] = " + repr(given) + "\n" + COMMAND
    code, err = run_without_reader([sys.executable, *flags, "-c", script],
                                   command_env(buffering))
    assert code == 0, err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert "exit handler ran" in err


def test_a_command_whose_stderr_reader_goes_is_not_said_to_have_succeeded():
    """``deploy.py 2>&1 | head``: its progress on stderr, the pipe broken half-way, the
    command stopped there, and exit_code_of said 0 (a success, to a CI) as for stdout's
    reader gone after the output was read. Now 141 (128 + SIGPIPE), quietly."""
    script = ("import sys\nfrom pipeline.ui import exit_code_of\n"
              "def main():\n"
              "    for i in range(20000):\n"
              "        print('step', i, 'of the deploy', file=sys.stderr)\n"
              "    print('done')\n"
              "    return 0\n"
              "sys.exit(exit_code_of(main))\n")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=write, stdin=subprocess.DEVNULL, timeout=60, check=False)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stdout) == (141, b"")


def test_no_stdout_at_all():
    """A process without a console (pythonw) has sys.stdout None."""
    proc = _command(["validate", "/nonexistent/m.json"], before="sys.stdout = None\n")
    assert proc.returncode == 2
    assert "m.json does not exist" in proc.stderr and "teardown ran" not in proc.stderr


def _with_closed(redirect: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``tiffpipe ARGS`` started by a shell with ``redirect`` (``>&-``: stdout closed, as a
    daemon or a cron line may start it; ``2>&-``: stderr), the other stream captured."""
    return subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", sys.executable, "-m",
                           "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=90, check=False)


def _good_and_bad(tmp_path: Path) -> Path:
    """A manifest of a job that succeeds and one that fails (its input is no TIFF)."""
    tifffile.imwrite(tmp_path / "in.tif", np.arange(96 * 80, dtype=np.uint16).reshape(96, 80))
    (tmp_path / "bad.tif").write_bytes(b"not a TIFF at all")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "in.tif", "output": "out/0.tif"},
                                             {"input": "bad.tif", "output": "out/1.tif"}]}))
    return manifest


@pytest.mark.parametrize("redirect", [">&-", "2>&-"])
def test_a_run_with_stdout_or_stderr_closed_runs_and_exits_with_its_jobs_code(
        redirect: str, tmp_path: Path):
    """``tiffpipe run m.json >&-``: the run went, then its summary crashed (AttributeError:
    Python's sys.stdout is None when fd 1 is closed at the start), exit 1 whatever the jobs
    did; ``2>&-``: it crashed before any job ran (its progress on a None stderr), exit 1
    and nothing said. Now the run goes on, writes its report and exits with its jobs'
    code (1: a job failed), the lines for the other stream still written."""
    manifest = _good_and_bad(tmp_path)
    proc = _with_closed(redirect, ["run", str(manifest), "--no-contact-sheet"], tmp_path)
    shown = proc.stderr if redirect == ">&-" else proc.stdout
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED", "FAILED"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out/0.tif"),
                                  tifffile.imread(tmp_path / "in.tif"))
    said = "job 1: FAILED (NotATiffError)" if redirect == ">&-" else "1 succeeded, 1 failed"
    assert said in shown
    if redirect == "2>&-":  # stderr's lines (the rerun's hint) not sent to stdout instead
        assert "tiffpipe:" not in proc.stdout


def test_a_closed_fd_is_not_taken_by_a_file_the_command_opens(tmp_path: Path):
    """With fd 1 and 2 closed at the start, the first files a command opened took their
    numbers, and what a library writes to stderr (fd 2) would have gone into them."""
    script = ("import os, sys\nfrom pipeline.ui import standard_streams\n"
              "with standard_streams():\n"
              "    files = [open(f'f{i}', 'w') for i in range(2)]\n"
              "    print('stdout stands in', file=sys.stdout)\n"
              "open('fds', 'w').write(repr([f.fileno() for f in files]))\n")
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&- 2>&-', "sh", sys.executable, "-c",
                           script], cwd=tmp_path, timeout=60, check=False)
    assert proc.returncode == 0
    assert not {1, 2} & set(json.loads((tmp_path / "fds").read_text()))


def test_the_demo_with_stderr_closed_runs(tmp_path: Path):
    """``tiffpipe demo 2>&-`` failed at its run's start (exit 1, no output); now it runs
    its sample's jobs, its summary on stdout."""
    proc = _with_closed("2>&-", ["demo", "--dir", str(tmp_path / "demo")], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "3 succeeded, 0 failed" in proc.stdout
    assert (tmp_path / "demo" / "manifest.report.json").exists()


def _script_without_stderr(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A Python ``script`` in a process started with fd 2 closed (its sys.stderr None, as
    pythonw's and service hosts'), stdout captured."""
    return subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL,
                          timeout=90, check=False)


def test_pipeline_run_with_progress_and_no_stderr(tmp_path: Path):
    """``pipeline.run(..., progress=True)`` where sys.stderr is None (a process started with
    fd 2 closed; pythonw, service hosts) raised AttributeError before any job; now it runs,
    its progress shown nowhere."""
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((64, 48), np.uint8))
    script = ("import sys\nimport pipeline\nassert sys.stderr is None\n"
              "r = pipeline.run({'jobs': [{'input': 'in.tif', 'output': 'out.tif'}]}, "
              "progress=True)\nprint('ok', r.ok)\n")
    proc = _script_without_stderr(script, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "ok True\n"), proc.stdout
    assert tifffile.imread(tmp_path / "out.tif").shape == (64, 48)


def test_main_called_with_no_stderr_writes_nothing_of_its_to_stdout(tmp_path: Path):
    """A script that calls ``pipeline.cli.main`` in a process whose sys.stderr is None
    (started with fd 2 closed; pythonw, service hosts): ``print(..., file=sys.stderr)``
    prints to stdout when sys.stderr is None, so the command's error lines ("tiffpipe:
    nowhere.json does not exist: ...") were mixed into the script's own output. They go nowhere now;
    the exit code is the command's, and the script's stdout is its own."""
    script = ("import sys\nfrom pipeline import cli\nassert sys.stderr is None\n"
              "code = cli.main(['validate', 'nowhere.json'])\n"
              "print('script says', code, sys.stderr)\n")
    proc = _script_without_stderr(script, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "script says 2 None\n"), proc.stdout


def test_help_describes_every_command():
    """`tiffpipe --help` says what the tool and each command are for, in its description (not
    the module's docstring for developers), and lists every subcommand."""
    import argparse

    from pipeline.cli import _parser

    parser = _parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    proc = _command(["--help"])
    assert proc.returncode == 0, proc.stderr
    description = proc.stdout.split("positional arguments:")[0]
    assert "Split giant multi-page TIFFs" in description
    assert "Parses arguments" not in proc.stdout
    assert set(sub.choices) == {"run", "validate", "ops", "estimate", "preview", "demo",
                                "start", "status", "inspect"}
    for command in sub.choices:
        assert command in description, command  # said in words, not only in the usage list
        assert f"\n    {command} " in proc.stdout  # and listed with its own help


def test_python_m_pipeline_is_the_command(tmp_path: Path):
    """``python -m pipeline`` (a venv whose bin/ is not on the PATH) runs the command."""
    run = [sys.executable, "-m", "pipeline"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=False,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("tiffpipe "), version
    missing = subprocess.run([*run, "validate", str(tmp_path / "missing.json")],
                             capture_output=True, text=True, check=False, timeout=60)
    assert missing.returncode == 2 and "missing.json does not exist" in missing.stderr
    assert missing.stderr.startswith("tiffpipe")
