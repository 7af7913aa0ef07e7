"""What the local engine does to start a run sooner (pipeline/engine/local.py, patches 6-9):
import moto's interpreter without its Batch backend, one botocore loader for every session,
one parse per definition, and the end of an execution signalled instead of polled; and what
the workers do meanwhile (pipeline/engine/workers.py: the steps imported at a lower priority).

These check that each gives the same results as moto's own way (and puts moto back), and
that when one cannot be applied the run goes on without it. Never timings.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from pipeline.engine import moto_patches, moto_run
from pipeline.engine.local import LocalEngine
from pipeline.errors import EngineError

pytestmark = pytest.mark.timeout(180)

PASS_MACHINE = json.dumps({"StartAt": "P", "States": {"P": {
    "Type": "Pass", "Parameters": {"seen.$": "$.value"}, "End": True}}})
ROLE = f"arn:aws:iam::{moto_run.ACCOUNT}:role/test"


def _python(code: str, cwd: Path | None = None, stderr: bool = False) -> str:
    """Run ``code`` in a fresh interpreter (a clean sys.modules); return its stdout (and
    ``stderr``: its standard error instead)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr if stderr else done.stdout


def _parser_class() -> Any:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    return AmazonStateLanguageParser


def _run_pass_machine(value: int) -> tuple[Any, str]:
    sfn = boto3.client("stepfunctions", region_name=moto_run.REGION)
    machine = sfn.create_state_machine(name=f"m{value}", definition=PASS_MACHINE,
                                       roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, name=f"e{value}",
                                    input=json.dumps({"value": value}))["executionArn"]
    return sfn, execution


# --- 6: the interpreter without moto.batch --------------------------------------------------


def test_the_interpreter_is_imported_without_batch_and_batch_still_works_later():
    out = _python("""
        import sys
        from pipeline.engine import moto_patches

        moto_patches.import_interpreter(moto_patches.Patches())
        print(moto_patches.INTERPRETER in sys.modules, moto_patches.BATCH_TASK in sys.modules,
              "moto.batch" in sys.modules, "moto.ec2" in sys.modules)
        task = sys.modules[moto_patches.BATCH_TASK]
        print(task.JobStatus.SUCCEEDED == "SUCCEEDED",
              "SUCCEEDED" in task._BATCH_JOB_TERMINATION_STATUS_SET)

        # whoever imports moto.batch afterwards gets moto's own, whole
        import boto3
        from moto import mock_aws
        import moto.batch
        from moto.batch.utils import JobStatus
        print(hasattr(moto.batch, "batch_backends"), JobStatus.FAILED.value)
        with mock_aws():
            batch = boto3.client("batch", region_name="us-east-1")
            print(batch.describe_compute_environments()["computeEnvironments"])
    """)
    assert out.split() == ["True", "True", "False", "False", "True", "True", "True",
                           "FAILED", "[]"]


def test_an_interpreter_that_needs_more_of_batch_is_left_to_moto(tmp_path: Path):
    """If a module imported meanwhile needs more of moto.batch than its submodules, nothing of
    moto.batch is left behind and MotoChanged says so; moto's own import then works."""
    (tmp_path / "needs_batch.py").write_text("from moto.batch import batch_backends\n")
    out = _python("""
        import sys
        from pipeline.engine import moto_patches

        try:
            moto_patches.import_interpreter(moto_patches.Patches(), target="needs_batch")
        except moto_patches.MotoChanged as exc:
            print("MotoChanged", "batch_backends" in str(exc))
        print([n for n in sys.modules if n.startswith(("moto.batch", "needs_batch"))])
        import needs_batch
        print(needs_batch.batch_backends is sys.modules["moto.batch"].batch_backends)
    """, cwd=tmp_path)
    assert out.split() == ["MotoChanged", "True", "[]", "True"]


def test_nothing_is_done_when_batch_or_the_interpreter_is_imported_already():
    out = _python("""
        import sys
        import moto.batch
        from pipeline.engine import moto_patches

        batch = sys.modules["moto.batch"]
        moto_patches.import_interpreter(moto_patches.Patches())
        print(sys.modules["moto.batch"] is batch, moto_patches.INTERPRETER in sys.modules)
    """)
    assert out.split() == ["True", "False"]


# --- 7: one botocore loader ---------------------------------------------------------------------


def test_sessions_share_one_loader_during_a_run_only():
    import botocore.session

    def loader() -> Any:
        return botocore.session.Session().get_component("data_loader")

    create_loader = botocore.session.create_loader
    with moto_patches.lean_interpreter(4) as skipped:
        assert skipped == []
        during = loader()
        assert loader() is during
        assert loader().load_service_model("lambda", "service-2") is \
            during.load_service_model("lambda", "service-2")
        # boto3 sessions too (the engine's, and the default one moto's Lambda tasks use)
        assert boto3.Session()._session.get_component("data_loader") is during
        for _ in range(5):  # each adds boto3's data folder to the loader's search paths
            boto3.Session()
        loader()
        assert len(during.search_paths) == len(set(during.search_paths))
    assert botocore.session.create_loader is create_loader
    assert loader() is not loader()


# --- 8 and 9: the end signalled, the definition parsed once ------------------------------


def test_a_definition_is_parsed_once_and_the_end_is_signalled(monkeypatch: pytest.MonkeyPatch):
    parser = _parser_class()
    parsed: list[str] = []
    original = parser.parse

    def counting(definition: str) -> Any:
        parsed.append(definition)
        return original(definition)

    monkeypatch.setattr(parser, "parse", staticmethod(counting))
    with moto_run.mocked_aws(), moto_patches.lean_interpreter(4) as skipped, \
            moto_patches.end_signal() as ended:
        assert skipped == [] and ended is not None
        sfn, execution = _run_pass_machine(7)
        assert ended.wait(60), "the end of the execution was not signalled"
        desc = sfn.describe_execution(executionArn=execution)
        assert desc["status"] == "SUCCEEDED"  # recorded before the signal
        assert json.loads(desc["output"]) == {"seen": 7}
        assert parsed == [PASS_MACHINE]  # validated, then executed: parsed once
        # a second execution of the same machine parses afresh, and runs the same
        ended.clear()
        machine = sfn.describe_execution(executionArn=execution)["stateMachineArn"]
        again = sfn.start_execution(stateMachineArn=machine, name="again",
                                    input=json.dumps({"value": 8}))["executionArn"]
        assert ended.wait(60)
        desc = sfn.describe_execution(executionArn=again)
        assert (desc["status"], json.loads(desc["output"])) == ("SUCCEEDED", {"seen": 8})
        assert len(parsed) == 2
    assert vars(parser)["parse"].__func__ is counting


def test_an_invalid_definition_is_reported_as_moto_reports_it():
    def create(definition: str) -> str:
        sfn = boto3.client("stepfunctions", region_name=moto_run.REGION)
        with pytest.raises(ClientError) as info:
            sfn.create_state_machine(name="bad", definition=definition, roleArn=ROLE)
        return str(info.value)

    bad = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "Next": 3}}})
    with moto_run.mocked_aws():
        expected = create(bad)
    with moto_run.mocked_aws(), moto_patches.lean_interpreter(4), moto_patches.end_signal():
        assert create(bad) == expected
    assert "ASLParserException" in expected


@pytest.mark.parametrize("module,owner,method,patch", [
    ("execution", "BaseExecutionWorkerCommunication", "terminated", "execution end signal"),
    ("execution_worker", "ExecutionWorker", "_execution_logic", "execution crash watch"),
])
def test_without_a_patch_a_run_still_ends(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture, module: str,
                                          owner: str, method: str, patch: str):
    """moto changed (the method takes other parameters): the engine goes on without that
    patch (without the end signal it polls), and says so."""
    import importlib

    cls = getattr(importlib.import_module(f"moto.stepfunctions.parser.backend.{module}"), owner)
    original = getattr(cls, method)

    def changed(self: Any, *args: Any) -> None:
        original(self)

    monkeypatch.setattr(cls, method, changed)
    with caplog.at_level(logging.WARNING, logger=moto_patches.__name__), \
            LocalEngine(1, definition_text=PASS_MACHINE, interpreter="moto") as engine:
        run = engine.run({"value": 3}, name="changed", poll=0.01)
    assert (run.status, run.output) == ("SUCCEEDED", {"seen": 3})
    assert [r.getMessage() for r in caplog.records if patch in r.getMessage()], [
        r.getMessage() for r in caplog.records]
    assert getattr(cls, method) is changed


# --- the workers' warm-up -----------------------------------------------------------------


def _niceness() -> int:
    """This thread's niceness (Linux: per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread: Linux")
def test_the_warm_up_imports_at_a_lower_priority_and_leaves_the_worker_as_it_was(
        monkeypatch: pytest.MonkeyPatch):
    from pipeline.engine import workers

    before = _niceness()
    seen: list[tuple[bool, int]] = []
    monkeypatch.setattr(workers, "_import_steps", lambda: seen.append(
        (threading.current_thread() is threading.main_thread(), _niceness())))
    workers._warm_up()
    expected = min(19, before + workers.WARM_UP_NICENESS)
    assert seen == [(False, expected)]  # another thread, lower priority
    assert _niceness() == before  # the thread that runs the handlers is as it was


def test_the_warm_up_imports_the_steps_and_raises_what_they_raise(
        monkeypatch: pytest.MonkeyPatch):
    from pipeline.engine import workers

    workers._warm_up()
    assert all(f"pipeline.steps.{s}" in sys.modules
               for s in ("split", "planning", "process", "merge"))

    def broken() -> None:
        raise ImportError("no module named cv3")

    monkeypatch.setattr(workers, "_import_steps", broken)
    with pytest.raises(ImportError, match="cv3"):
        workers._warm_up()


# --- 10: a crashed interpreter stops the run ------------------------------------------------


def test_a_crashed_interpreter_stops_the_run_instead_of_waiting_for_ever(
        monkeypatch: pytest.MonkeyPatch):
    """An exception escaping moto's execution thread (an interpreter bug, not a failing state)
    leaves the execution RUNNING for ever: the engine raises EngineError with it instead."""
    from moto.stepfunctions.parser.backend import execution_worker

    worker = execution_worker.ExecutionWorker
    logic = worker._execution_logic

    def broken(self: Any) -> Any:
        raise RuntimeError("an interpreter bug")

    monkeypatch.setattr(worker, "_get_evaluation_entrypoint", broken)
    with LocalEngine(1, definition_text=PASS_MACHINE, interpreter="moto") as engine, \
            pytest.raises(EngineError, match="interpreter .moto. stopped: RuntimeError: an "
                                             "interpreter bug"):
        engine.run({"value": 1}, name="crashed")
    assert worker._execution_logic is logic  # moto's own code is back


# --- a local run imports nothing of AWS -------------------------------------------------------


def test_a_local_run_imports_no_aws_library(tmp_path: Path):
    """``tiffpipe run`` on local files (the direct interpreter, inline) imports neither boto3,
    botocore nor moto: their imports are start-up that a local run does not need. A storage
    error on a local file is still translated (no AWS error class is needed for it)."""
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", np.full((64, 64), 7, np.uint8), tile=(16, 16))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": str(tmp_path / "in.tif"),
                                              "output": str(tmp_path / "out.tif")}]}))
    out = _python(f"""
        import sys
        from pipeline.runner import run_local
        from pipeline.adapters import storage
        from pipeline.errors import WorkMissingError
        result = run_local({str(manifest)!r}, 1)
        try:
            storage.read_bytes({str(tmp_path / "missing.json")!r}, missing=WorkMissingError)
        except WorkMissingError as exc:
            print("missing:", type(exc).__name__)
        print(result.ok, sorted(m for m in sys.modules if m.split(".")[0] in
                                ("boto3", "botocore", "moto")))
    """)
    assert out.split("\n")[:2] == ["missing: WorkMissingError", "True []"]


def test_a_run_imports_only_the_steps_its_jobs_use(tmp_path: Path):
    """Every run imports tiffpipe's steps within its time: what only a canny or a pyramid
    needs is imported by the jobs that have one. A blur without a pyramid imports neither;
    a canny job with a pyramid then imports both and its output is written."""
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", np.full((64, 64), 7, np.uint8), tile=(16, 16))
    lazy = ("pipeline.core.canny_tree", "pipeline.steps.canny_reduce",
            "pipeline.steps.pyramid", "pipeline.steps.unit_levels")

    def imported(name: str, job: dict) -> list[str]:
        manifest = tmp_path / f"{name}.json"
        manifest.write_text(json.dumps({"jobs": [{"input": str(tmp_path / "in.tif"),
                                                  "output": str(tmp_path / f"{name}.tif"),
                                                  **job}]}))
        out = _python(f"""
            import sys
            from pipeline.runner import run_local
            result = run_local({str(manifest)!r}, 1)
            print(result.ok, sorted(m for m in sys.modules if m in {lazy!r}))
        """)
        assert (tmp_path / f"{name}.tif").exists()
        return out.split("\n")[0]

    assert imported("blur", {"ops": [{"op": "gaussian_blur", "sigma": 1.0}]}) == "True []"
    assert imported("canny", {"ops": [{"op": "canny", "low": 20, "high": 60}],
                              "output_options": {"pyramid": True, "tile": 16}}) \
        == f"True {sorted(lazy)}"


def test_the_command_imports_only_what_it_draws_with(tmp_path: Path):
    """``tiffpipe run`` imports rich only to draw on a terminal, Pillow only for the contact
    sheet, multiprocessing only when the worker pool starts, importlib.resources only for a
    zipped package, tempfile, random and mimetypes only for S3 or a retry, socket never (the
    work lease names its host by ``os.uname``): each is a part of a short command's time
    (README, Performance: whole commands). Piped and without a contact sheet, a one-job run
    imports none of them; with the sheet, Pillow and still not rich."""
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", np.full((64, 64, 3), 7, np.uint8), tile=(16, 16))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": str(tmp_path / "in.tif"),
                                              "output": str(tmp_path / "out.tif")}]}))
    heavy = ("rich", "PIL", "multiprocessing", "secrets", "uuid", "importlib.resources",
             "tempfile", "random", "mimetypes", "socket")
    out = _python(f"""
        import sys
        from pipeline.cli import main
        code = main(["run", "--no-contact-sheet", {str(manifest)!r}])
        print(code, sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
        code = main(["run", {str(manifest)!r}])
        print(code, sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
    """, stderr=True)
    lines = [line for line in out.splitlines() if line[:2] in ("0 ", "1 ")]
    assert lines == ["0 []", "0 ['PIL']"]
    assert (tmp_path / "m.report.contact.png").exists()
