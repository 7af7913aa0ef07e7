"""tiffpipe from Python (``pipeline.run``), as a notebook, a script or an Airflow task uses
it: real TIFFs written by tifffile, real runs of the local engine in this process, a
manifest given as a dict or a path; what a run leaves behind in the process (threads,
signal handlers, environment) when it ends, and when Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

import pipeline
from pipeline.errors import INTERRUPTED_ERROR, EngineError, ManifestError, RunInterrupted

pytestmark = pytest.mark.timeout(120)


def _inputs(folder: Path, count: int = 1, side: int = 300) -> np.ndarray:
    pixels = np.random.default_rng(3).integers(0, 255, (side, side, 3), dtype=np.uint8)
    (folder / "in").mkdir()
    for i in range(count):
        tifffile.imwrite(folder / "in" / f"in{i}.tif", pixels, tile=(64, 64))
    return pixels


def _tiffpipe_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tiffpipe")]


def test_a_dict_manifest_runs_and_its_jobs_come_back(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """A dict (paths as Path objects too, relative ones from ``base``) runs as its JSON
    would; each job's result is in ``result.jobs``, a failed job's error by name; nothing
    is left in the temporary folder; two runs in one process leave its environment, its
    SIGINT handler and its threads as they were."""
    pixels = _inputs(tmp_path)
    (tmp_path / "in" / "notes.tif").write_text("not a TIFF")
    monkeypatch.chdir("/")  # relative paths are base's, not the current folder's
    manifest = {"jobs": [
        {"input": Path("in/in0.tif"), "output": "out/a.tif",
         "ops": [{"op": "gaussian_blur", "sigma": np.float64(2)}]},
        {"input": "in/notes.tif", "output": "out/b.tif"}]}
    env = dict(os.environ)
    for _ in range(2):
        result = pipeline.run(manifest, workers=2, base=tmp_path)
        assert isinstance(result, pipeline.RunResult)
        assert not result.ok and result.error is None
        assert [(j["status"], j.get("error", {}).get("type")) for j in result.jobs] == [
            ("SUCCEEDED", None), ("FAILED", "NotATiffError")]
        assert result.report["failed"] == 1
        # the temporary folder removed: the result names no path in it (nor the work gone)
        assert result.report_url is None and result.work is None
        assert result.report["manifest"].startswith(tempfile.gettempdir())
        assert not os.path.exists(os.path.dirname(result.report["manifest"]))
        assert dict(os.environ) == env
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert _tiffpipe_threads() == []
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"),
                                  cv2.GaussianBlur(pixels, (0, 0), 2))


def test_a_list_of_jobs_runs_as_its_manifest(tmp_path: Path):
    """A manifest is a JSON list of jobs: a list given to ``run`` is one, relative paths
    from ``base``."""
    pixels = _inputs(tmp_path)
    result = pipeline.run([{"input": "in/in0.tif", "output": "out/a.tif",
                            "ops": [{"op": "invert"}]}], workers=1, base=tmp_path)
    assert result.ok and [j["status"] for j in result.jobs] == ["SUCCEEDED"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), 255 - pixels)


def test_what_a_dict_manifests_run_is_asked_to_keep_is_kept(tmp_path: Path):
    """``keep_work=True`` and ``contact_sheet=True`` with a dict manifest and no ``work=`` nor
    ``report=``: the work and the sheet are in the manifest's temporary folder, which is
    then kept, and every path the result names is there. Before, the folder was removed
    after the run: the result named the work, the sheet and the report, all gone."""
    _inputs(tmp_path)
    jobs = [{"input": "in/in0.tif", "output": "out/a.tif"}]
    for kwargs in ({"keep_work": True}, {"contact_sheet": True},
                   {"keep_work": True, "contact_sheet": True}):
        result = pipeline.run(jobs, workers=1, base=tmp_path, **kwargs)
        assert result.ok
        named = [result.report_url, result.work, result.contact_sheet]
        assert [url is not None for url in named] == [
            True, "keep_work" in kwargs, "contact_sheet" in kwargs]
        assert all(os.path.exists(url) for url in named if url is not None), named
        folder = os.path.dirname(result.report_url)
        assert os.path.basename(folder).startswith("tiffpipe-manifest-")
        assert result.report["manifest"] == os.path.join(folder, "manifest.json")
        if result.work is not None:
            assert (Path(result.work) / "run.json").exists()
        import shutil

        shutil.rmtree(folder)
    # kept where given: the temporary folder has nothing asked for, and goes
    result = pipeline.run(jobs, workers=1, base=tmp_path, keep_work=True,
                          work=str(tmp_path / "w"), contact_sheet=True,
                          report=str(tmp_path / "r.json"))
    assert (result.work, result.report_url) == (str(tmp_path / "w"), str(tmp_path / "r.json"))
    assert os.path.exists(result.contact_sheet) and (tmp_path / "w" / "run.json").exists()
    assert not os.path.exists(os.path.dirname(result.report["manifest"]))


def test_a_path_manifest_keeps_its_report_beside_it(tmp_path: Path):
    _inputs(tmp_path)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]}))
    result = pipeline.run(manifest, workers=1)
    assert result.ok
    assert result.report_url == str(tmp_path / "m.report.json")
    assert json.loads((tmp_path / "m.report.json").read_text())["run_id"] == result.run_id


def test_an_invalid_manifest_raises_before_anything_runs(tmp_path: Path):
    """Every problem at once, in a ManifestError (not a FAILED result to dig the error out
    of as text); nothing written."""
    _inputs(tmp_path)
    bad = {"jobs": [{"input": "in/in0.tif", "output": "out/a.tif",
                     "ops": [{"op": "gaussian_blur", "sigma": "two"}, {"op": "blur"}]}]}
    with pytest.raises(ManifestError) as caught:
        pipeline.run(bad, base=tmp_path)
    assert [p.split(":")[0] for p in caught.value.problems] == ["jobs[0].ops[0].sigma",
                                                                "jobs[0].ops[1].op"]
    assert str(caught.value).startswith("the manifest given: 2 problem(s)")
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError):
        pipeline.run(tmp_path / "m.json")
    with pytest.raises(ManifestError) as caught:  # named at its place, as any problem
        pipeline.run({"jobs": [{"input": "in/in0.tif", "output": {1, 2}}]}, base=tmp_path)
    assert caught.value.problems == ["jobs[0].output: set {1, 2} is not JSON"]
    with pytest.raises(ValueError, match="workers"):
        pipeline.run(tmp_path / "m.json", workers=0)
    with pytest.raises(EngineError, match="definition_text: line 1, column 2: invalid JSON"):
        pipeline.run({"jobs": []}, definition_text="{")
    # a placeholder the engine does not fill: the state and field named (was a KeyError)
    from pipeline.engine.definition import definition_text

    edited = definition_text().replace('"FunctionName": "${MergeFunctionArn}"',
                                       '"FunctionName": "${ResizeFunctionArn}"', 1)
    with pytest.raises(EngineError, match=re.escape(
            "state Jobs > Merge: Parameters.FunctionName: ${ResizeFunctionArn} is not a "
            "placeholder the engine fills (it fills ${SplitFunctionArn}")):
        pipeline.run({"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]},
                     base=tmp_path, definition_text=edited)
    assert not (tmp_path / "out").exists()


def test_a_custom_op_given_as_a_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A function of a module on sys.path (which the worker processes inherit) is named by
    its module; one defined in ``__main__`` (a notebook's cell), which the workers cannot
    import, is refused, saying where to put it."""
    pixels = _inputs(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mylab_ops.py").write_text(
        "def brighten(tile, by=1):\n    return tile + by\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    import mylab_ops

    result = pipeline.run({"jobs": [{"input": "in/in0.tif", "output": "out/c.tif", "ops": [
        {"op": "custom", "function": mylab_ops.brighten, "params": {"by": 5}}]}]},
        workers=2, base=tmp_path)
    assert result.ok, result.jobs
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "c.tif"), pixels + 5)

    def in_a_cell(tile: np.ndarray) -> np.ndarray:
        return tile

    # a module loaded from its file, not on sys.path: this process has it (in sys.modules
    # too), a worker would not find it by its name; refused before anything runs
    import importlib.util

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "loose_ops.py").write_text("def inv(tile):\n    return ~tile\n")
    spec = importlib.util.spec_from_file_location(
        "loose_ops", tmp_path / "elsewhere" / "loose_ops.py")
    loose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loose)
    monkeypatch.setitem(sys.modules, "loose_ops", loose)
    with pytest.raises(ManifestError) as caught:
        pipeline.run([{"input": "in/in0.tif", "output": "out/e.tif", "ops": [
            {"op": "custom", "function": loose.inv}]}], base=tmp_path)
    [problem] = caught.value.problems
    assert problem.startswith(
        "jobs[0].ops[0].function: the custom op's function loose_ops.inv is of a module the "
        f"worker processes cannot import by its name 'loose_ops' (loaded from {tmp_path}/"
        "elsewhere/loose_ops.py, not found on sys.path"), problem
    assert problem.endswith(f"(sys.path.insert(0, '{tmp_path}/elsewhere')), or install it")
    assert not (tmp_path / "out" / "e.tif").exists()
    # a partial (its arguments bound) is no function the workers import: its keyword
    # arguments go in "params", as the hint says, at the op's place
    import functools

    with pytest.raises(ManifestError) as caught:
        pipeline.run([{"input": "in/in0.tif", "output": "out/d.tif", "ops": [
            {"op": "custom", "function": functools.partial(mylab_ops.brighten, by=5)}]}],
            base=tmp_path)
    assert caught.value.problems == [(
        'jobs[0].ops[0].function: functools.partial of mylab_ops.brighten is not a function '
        'the worker processes can import: give the function itself, and its keyword '
        'arguments in the op\'s "params" ({"op": "custom", "function": mylab_ops.brighten, '
        '"params": {"by": 5}})')]
    in_a_cell.__module__, in_a_cell.__qualname__ = "__main__", "in_a_cell"
    with pytest.raises(ManifestError, match="defined in __main__.*a module of its own"):
        pipeline.run({"jobs": [{"input": "in/in0.tif", "output": "out/d.tif",
                                "ops": [{"op": "custom", "function": in_a_cell}]}]},
                     base=tmp_path)


def test_a_listener_that_raises_costs_the_run_nothing(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture):
    """A listener with a bug (a progress bar's) raises at the first job planned: the run
    goes on and every job succeeds; the error is logged once, naming the listener, with its
    traceback, and the listener is not called again. Before, its exception stopped the
    engine: every job FAILED with RunFailedError, ``fault: transient``, "run it again"."""
    _inputs(tmp_path, count=2)
    calls = []

    def buggy_bar(function: str, event: dict, ok: bool, payload: dict) -> None:
        calls.append(event.get("action"))
        if event.get("action") == "plan_job":
            raise ValueError("bug in my callback")

    result = pipeline.run([{"input": f"in/in{i}.tif", "output": f"out/{i}.tif"}
                           for i in range(2)], workers=2, base=tmp_path, listener=buggy_bar)
    assert result.ok, result.jobs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.tif", "1.tif"]
    assert calls.count("plan_job") == 1 and calls[-1] == "plan_job"  # not called again
    [logged] = [r for r in caplog.records if "listener" in r.getMessage()]
    assert logged.levelname == "ERROR" and logged.exc_info[0] is ValueError
    assert (f"the run's listener {__name__}.test_a_listener_that_raises_costs_the_run_nothing"
            ".<locals>.buggy_bar raised ValueError: bug in my callback") in logged.getMessage()


def test_ctrl_c_stops_the_run_cleanly_then_raises_keyboard_interrupt(tmp_path: Path):
    """Ctrl-C (SIGINT to the process, as a notebook's interrupt) once the first job is done:
    the run stops as ``tiffpipe run`` does (no task goes on publishing afterwards, the
    report marks the unfinished jobs, no work folder), then a KeyboardInterrupt carrying
    the result; the process is as before and runs again. Before, the KeyboardInterrupt
    hit wherever the main thread was: the tasks went on and published their outputs, no
    report was written."""
    _inputs(tmp_path, count=8, side=600)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": f"in/in{i}.tif", "output": f"out/out{i}.tif",
         "ops": [{"op": "median_blur", "ksize": 5}]} for i in range(8)]}))
    sent = []

    def ctrl_c_after_the_first_job(function: str, event: dict, ok: bool, payload: dict):
        if ok and event.get("action") in ("merge", "process_job") and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    env = dict(os.environ)
    with pytest.raises(KeyboardInterrupt) as caught:
        pipeline.run(manifest, workers=1, listener=ctrl_c_after_the_first_job)
    assert isinstance(caught.value, RunInterrupted)
    result = caught.value.result
    assert result.interrupted == signal.SIGINT and result.unfinished
    report = json.loads((tmp_path / "m.report.json").read_text())
    stopped = [j["job"] for j in report["jobs"] if j.get("error", {}).get("type")
               == INTERRUPTED_ERROR]
    assert stopped == result.unfinished
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == [f"out{j['job']}.tif" for j in report["jobs"]
                       if j["status"] == "SUCCEEDED"]  # (no temporary file either)
    assert not (tmp_path / ".tiffpipe-work").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert dict(os.environ) == env and _tiffpipe_threads() == []
    assert pipeline.run(manifest, workers=1).ok


#: a script that runs a custom op (one needs a worker process) and prints its jobs
SCRIPT = """
import json, sys
sys.path.insert(0, {lib!r})
import pipeline, mylab_ops
{guard}r = pipeline.run([{{"input": "in/in0.tif", "output": "out/a.tif", "ops": [
{guard}    {{"op": "custom", "function": mylab_ops.brighten}}]}}], workers=1, base={base!r})
{guard}print(json.dumps([[j["status"], j.get("error")] for j in r.jobs]))
"""


def _script_jobs(tmp_path: Path, guard: str, stdin: bool) -> tuple[list, str]:
    """The jobs of a run of :data:`SCRIPT` (its code under ``guard``) in a new interpreter,
    fed on stdin (``python -``) or run as a file; and its stderr."""
    _inputs(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mylab_ops.py").write_text(
        "def brighten(tile, by=1):\n    return tile + by\n")
    code = SCRIPT.format(lib=str(tmp_path / "lib"), base=str(tmp_path),
                         guard="    " if guard else "").replace(
        "import pipeline, mylab_ops\n", f"import pipeline, mylab_ops\n{guard}")
    (tmp_path / "script.py").write_text(code)
    done = subprocess.run([sys.executable, "-" if stdin else str(tmp_path / "script.py")],
                          input=code if stdin else None, cwd=tmp_path, capture_output=True,
                          text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_code_fed_on_stdin_runs_a_custom_op(tmp_path: Path):
    """``python -`` (code on stdin, as a kernel or a pipe gives it): its main module's
    ``__file__`` is ``<stdin>``, no file; the workers start as an interactive session's do.
    Before, each worker failed to start (FileNotFoundError: '<cwd>/<stdin>'), and the job
    failed after its retries, blamed on its custom op and said to be transient."""
    jobs, stderr = _script_jobs(tmp_path, "", stdin=True)
    assert jobs == [["SUCCEEDED", None]], stderr
    assert "FileNotFoundError" not in stderr


def test_a_script_without_a_main_guard_is_told_so(tmp_path: Path):
    """A worker process starting imports the script's main module again (spawn): a script
    that calls run without ``if __name__ == "__main__":`` calls it there again; the worker
    stops, and the job that needs it fails saying to guard the script (EngineError, not
    transient), at once. Before, it was a WorkerCrashedError after ~8 s of retries,
    blaming the job's custom op ("mylab_ops:brighten ended it") and advising a rerun."""
    jobs, stderr = _script_jobs(tmp_path, "", stdin=False)
    [[status, error]] = jobs
    assert (status, error["type"], error["fault"]) == ("FAILED", "EngineError", "platform")
    assert f"imports the script that started the run ({tmp_path / 'script.py'}) again" in (
        error["message"])
    assert "guard the script's code with if __name__ == '__main__':" in error["message"]
    assert "custom op" not in error["message"]
    assert "must do so under `if __name__ == \"__main__\":`" in stderr  # the worker's own
    # guarded, it runs
    import shutil

    for name in ("in", "lib", "out"):
        shutil.rmtree(tmp_path / name, ignore_errors=True)  # (no out/: no job ran)
    jobs, _ = _script_jobs(tmp_path, 'if __name__ == "__main__":\n', stdin=False)
    assert jobs == [["SUCCEEDED", None]]


def test_import_pipeline_loads_no_runner():
    """``pipeline.run`` is imported when first used: ``import pipeline`` (the command's
    start: its version) loads nothing more."""
    code = ("import sys, pipeline; print(sorted(m for m in sys.modules "
            "if m.startswith('pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['pipeline']"


def test_workers_is_a_whole_number_of_at_least_one_for_every_entry(tmp_path: Path):
    """``workers`` 0 or below, or not a whole number, is a ValueError before anything runs,
    from ``pipeline.run`` and from ``run_local`` alike (what ``tiffpipe run --workers 0``
    refuses too): run_local took 0 as 1 on the direct interpreter and, on moto, failed
    the run saying the open-file limit left room for no worker; 1.5 ran, or raised a
    TypeError from multiprocessing's semaphore on moto."""
    from pipeline.runner import run_local

    _inputs(tmp_path)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]}))
    for workers in (0, -2, 1.5, "2", True):
        with pytest.raises(ValueError) as raised:
            pipeline.run(manifest, workers=workers)  # type: ignore[arg-type]
        assert str(raised.value) == ("workers must be a whole number of at least 1, not "
                                     f"{workers!r}")
        for interpreter in ("direct", "moto"):
            with pytest.raises(ValueError, match="workers must be a whole number"):
                run_local(str(manifest), workers, interpreter=interpreter)  # type: ignore
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.json"]


def test_refusals_name_the_arguments_given_not_the_commands_options(tmp_path: Path):
    """What ``pipeline.run`` refuses before anything runs is said in the words of its
    arguments (``report=``, ``work=``), not of ``tiffpipe run``'s options (``--report``,
    ``--work``), which the caller never gave: the checks are the command's own
    (``runner.check_run``, ``run_local``'s), and said the command's options."""
    from pipeline.errors import OutputNotWritableError, WorkLocationError

    _inputs(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    (tmp_path / "r.contact.png").write_bytes(b"\x89PNG\r\n\x1a\n a picture of mine")
    manifest = {"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]}
    cases = [  # (arguments, error, what the message ends with)
        ({"report": str(tmp_path / "in" / "in0.tif")}, OutputNotWritableError,
         "which the run's report would replace; give report= another path"),
        ({"work": str(tmp_path / "out")}, WorkLocationError,
         "give the output a path outside it, or the run another work location (work=)"),
        ({"work": str(tmp_path / "w"), "report": str(tmp_path / "w" / "r.json")},
         WorkLocationError, ("give report= a path outside it, or the run another work "
                             "location (work=)")),
        ({"report": str(tmp_path / "afile" / "r.json")}, OutputNotWritableError,
         "give report= another path, or fix the folder"),
        ({"work": str(tmp_path / "busy")}, WorkLocationError,
         ("give work= a new or empty folder (or prefix), or none (each run then gets its "
          "own); a run removes what it writes there when it ends")),
        ({"report": str(tmp_path / "r.json"), "contact_sheet": True}, OutputNotWritableError,
         ("would replace: give contact_sheet=False, or give report= another path, or move "
          "that file away (or overwrite_report=True to replace it)")),
    ]
    for kwargs, error, end in cases:
        with pytest.raises(error) as raised:
            pipeline.run(manifest, workers=1, base=tmp_path, **kwargs)
        assert str(raised.value).endswith(end), (kwargs, raised.value)
        assert " --" not in str(raised.value) and "(--" not in str(raised.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
    assert os.listdir(tmp_path / "busy") == ["x.txt"]
    from pipeline.errors import in_python_words

    assert in_python_words("/data/--work/a.tif: give --work a folder, or fewer --workers") \
        == "/data/--work/a.tif: give work= a folder, or fewer workers"


def test_the_warnings_of_a_run_speak_its_callers_words(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture):
    """The warnings of a run (an earlier run's work removed: "kept with --keep-work") name
    ``pipeline.run``'s arguments when it started the run, the command's options when
    ``tiffpipe run`` did: ``run_local`` passes its caller's words down (CALLER_ENV, put
    back after). Before, a Python caller was told of options it never gave. (A job's error
    in the report: tests/test_exhaustion.py.)"""
    _inputs(tmp_path)
    (tmp_path / "m.json").write_text(json.dumps(
        {"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]}))
    work = tmp_path / "w"
    assert pipeline.run(tmp_path / "m.json", workers=1, work=str(work), keep_work=True).ok
    assert work.is_dir()  # kept: the next run given it removes it, with a warning
    with caplog.at_level("WARNING"):
        assert pipeline.run(tmp_path / "m.json", workers=1, work=str(work), keep_work=True).ok
    [warned] = [r.getMessage() for r in caplog.records if "earlier run" in r.getMessage()]
    assert "(kept with keep_work=True, or left by a killed run)" in warned, warned
    assert "--" not in warned.replace(str(tmp_path), "")
    assert "TIFFPIPE_CALLER" not in os.environ  # put back
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "m.json"),
                           "--no-contact-sheet", "--workers", "1", "--work", str(work)],
                          capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stderr
    assert "(kept with --keep-work, or left by a killed run)" in done.stderr, done.stderr


def test_a_report_path_holding_another_file_is_refused_unless_told(tmp_path: Path):
    """The report's path holds the user's own file: refused before anything runs (the file
    kept), replaced only with ``overwrite_report``, as ``tiffpipe run --overwrite-report``."""
    from pipeline.errors import OutputNotWritableError

    _inputs(tmp_path)
    theirs = tmp_path / "notes.json"
    theirs.write_text('{"mine": true}')
    manifest = {"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]}
    with pytest.raises(OutputNotWritableError, match="not a tiffpipe run report") as raised:
        pipeline.run(manifest, workers=1, base=tmp_path, report=str(theirs))
    # in this function's words, not the command's (--report, --overwrite-report)
    assert str(raised.value).endswith("give report= another path, or move that file away (or "
                                      "overwrite_report=True to replace it)"), raised.value
    assert theirs.read_text() == '{"mine": true}' and not (tmp_path / "out").exists()
    result = pipeline.run(manifest, workers=1, base=tmp_path, report=str(theirs),
                          overwrite_report=True)
    assert result.ok and json.loads(theirs.read_text())["run_id"] == result.run_id


def test_a_refusal_keeps_the_paths_it_names_as_they_are(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    """``pipeline.run`` said its checks' messages in its arguments' words by rewriting each
    raised message at its boundary: every ``--work`` or ``--report`` in it, those of the
    paths it named too, so a work folder ``scans --work 2`` was named ``scans work= 2``, a
    path the user could not find. The messages are made in the caller's words where they
    are raised (only their own words: CALLER_ENV, as the jobs' errors and the warnings),
    and the paths stay as given; ``tiffpipe run`` still names its options."""
    from pipeline import cli
    from pipeline.errors import OutputNotWritableError, WorkLocationError

    _inputs(tmp_path)
    busy = tmp_path / "scans --work 2"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    theirs = tmp_path / "my --report.json"
    theirs.write_text('{"mine": true}')
    manifest = {"jobs": [{"input": "in/in0.tif", "output": "out/a.tif"}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    work_says = ": the work location holds files that are not a tiffpipe run's work (x.txt): "
    report_says = (": exists and is not a tiffpipe run report, which the run's report would "
                   "replace: ")
    with pytest.raises(WorkLocationError) as raised:
        pipeline.run(manifest, workers=1, base=tmp_path, work=str(busy))
    assert str(raised.value) == (f"{busy}{work_says}give work= a new or empty folder (or "
                                 "prefix), or none (each run then gets its own); a run "
                                 "removes what it writes there when it ends")
    with pytest.raises(OutputNotWritableError) as raised:
        pipeline.run(manifest, workers=1, base=tmp_path, report=str(theirs))
    assert str(raised.value) == (f"{theirs}{report_says}give report= another path, or move "
                                 "that file away (or overwrite_report=True to replace it)")
    assert "TIFFPIPE_CALLER" not in os.environ  # put back
    capsys.readouterr()
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                     "--work", str(busy)]) == 2
    assert (f"{busy}{work_says}give --work a new or empty folder (or prefix)"
            in capsys.readouterr().err)
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                     "--report", str(theirs)]) == 2
    assert (f"{theirs}{report_says}give --report another path, or move that file away (or run "
            "with --overwrite-report to replace it)") in capsys.readouterr().err
    assert os.listdir(busy) == ["x.txt"] and theirs.read_text() == '{"mine": true}'
    assert not (tmp_path / "out").exists()


def _damaged(path: Path) -> None:
    """A tiled deflate TIFF whose fourth tile holds no deflate stream (its bytes 0xFF): the
    file opens and plans, and the unit that decodes that tile fails, CorruptTiffError."""
    tifffile.imwrite(path, np.random.default_rng(1).integers(0, 255, (300, 300), np.uint8),
                     tile=(64, 64), compression="deflate")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


def test_a_jobs_error_keeps_the_paths_it_names_as_they_are(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]):
    """The report step rewrote a failed job's whole message for ``pipeline.run``'s caller as
    it recorded it, the paths it named too: an input in a folder ``in --workers 2`` was
    reported in ``in workers 2``, a folder that does not exist. A job's message is kept as
    it was made (its advice is said in the caller's words where it is raised): the path
    stays as given, in ``result.jobs`` and the report file alike, for an error PlanJob
    raised (not a TIFF) and for one a unit recorded (a damaged tile), and ``tiffpipe run``'s
    report says the same."""
    from pipeline import cli

    folder = tmp_path / "in --workers 2"
    folder.mkdir()
    (folder / "notes.tif").write_text("not a TIFF")
    _damaged(folder / "bad.tif")
    manifest = {"jobs": [{"input": "in --workers 2/notes.tif", "output": "out/a.tif"},
                         {"input": "in --workers 2/bad.tif", "output": "out/b.tif"}]}
    starts = [f"{folder / 'notes.tif'}: not a TIFF file (",
              f"{folder / 'bad.tif'}: page 0: segment 3 (DEFLATE) cannot be decoded ("]
    report = tmp_path / "py.report.json"
    result = pipeline.run(manifest, workers=1, base=tmp_path, report=str(report))
    assert [j["error"]["type"] for j in result.jobs] == ["NotATiffError", "CorruptTiffError"]
    assert result.jobs[1]["error"]["step"].startswith(("ProcessJob (unit", "Process (")), \
        result.jobs[1]["error"]  # recorded by the unit that failed
    for job, start in zip(result.jobs, starts, strict=True):
        assert job["error"]["message"].startswith(start), job["error"]
    assert json.loads(report.read_text())["jobs"] == result.jobs
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                     "--no-contact-sheet"]) == 1
    capsys.readouterr()
    jobs = json.loads((tmp_path / "m.report.json").read_text())["jobs"]
    assert [j["error"]["message"] for j in jobs] == [j["error"]["message"] for j in result.jobs]
