"""What a user sees when a Lambda invocation fails: the handlers run as the images run them
(``images/<step>/app.py``'s ``handler``), with the events the state machine sends, and their
errors go through RecordFailure into the job's result as on AWS.

An invocation that runs out of memory is made to, for real: the process function's handler
runs in a process of its own whose address space is limited (``RLIMIT_AS``) once its
libraries are loaded, with the environment Lambda gives a function
(``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from address_space import LIMIT_ROOM

from pipeline import handlers
from pipeline.core.constants import TILE_THREADS_ENV

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(sys.platform != "linux", reason="rlimits, /proc")]

ROOT = Path(__file__).resolve().parents[1]
FUNCTION = "tiffpipe-t1-process"

#: the process image's entry point, its address space then limited to what it uses plus
#: ``room`` bytes, invoked with one event; prints what Lambda's runtime client reports
_INVOKE_LIMITED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {image!r})
    import app  # the image's CMD: its handler, its steps and OpenCV imported (Lambda's init)
""") + LIMIT_ROOM + textwrap.dedent("""
    try:
        print(json.dumps({{"result": app.handler(json.loads(sys.argv[1]), None)}}))
    except Exception as exc:  # as awslambdaric reports an unhandled error
        print(json.dumps({{"errorType": type(exc).__name__, "errorMessage": str(exc)}}))
""")


def _lambda_env(monkeypatch: pytest.MonkeyPatch | None = None) -> dict[str, str]:
    env = {"AWS_LAMBDA_FUNCTION_NAME": FUNCTION, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008"}
    if monkeypatch is not None:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return env


def _invoke_limited(event: dict[str, Any], room: int) -> dict[str, Any]:
    code = _INVOKE_LIMITED.format(image=str(ROOT / "images" / "process"), room=room)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(event)], cwd=ROOT,
                          capture_output=True, text=True, timeout=90, check=False,
                          env={**os.environ, **_lambda_env(), TILE_THREADS_ENV: "1"})
    assert done.returncode == 0, done.stderr
    payload: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return payload


def test_an_invocation_out_of_memory_on_lambda_names_the_page_and_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A unit that runs out of memory on Lambda failed with a bare ``MemoryError: Unable to
    allocate ...`` or ``RuntimeError: can't start new thread`` (no job, no page), and the
    job's report said ``OutOfMemoryError: ... run with fewer --workers ... its ulimit -v``:
    advice for ``tiffpipe run`` that no Lambda function can follow. It is OutOfMemoryError
    naming the task, the input and the page, the function and its memory, and what to do
    there: a smaller tile, or more memory for the function (FUNCTION_SIZES, deploy.py)."""
    side = 6144  # one band of 113 MB
    page = np.tile(np.arange(side, dtype=np.uint16).astype(np.uint8), (side, 1))
    tifffile.imwrite(tmp_path / "big.tif", np.dstack([page, page.T, page]), tile=(512, 512),
                     compression="zlib")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(tmp_path / "big.tif"), "output": str(tmp_path / "out" / "big.tif"),
        "tile": side, "ops": [{"op": "gaussian_blur", "sigma": 3}]}]}))
    run = handlers.split_handler({"action": "plan_run", "manifest": str(manifest),
                                  "work": str(tmp_path / "work") + "/", "run_id": "r1"})
    planned = handlers.process_handler({"action": "plan_job", "run": run["run"], "job": 0})
    assert planned["fused"] and not planned["single"], planned  # a ProcessUnits Map
    event = {"action": "process_unit", "plan": planned["plan"], "unit": 0}

    error = _invoke_limited(event, room=160 * 2**20)  # the band and its blur need more
    assert error.get("errorType") == "OutOfMemoryError", error
    message = error["errorMessage"]
    # (where it ran out: the task, or the segment being decoded, as it happens)
    assert str(tmp_path / "big.tif") in message and "page 0" in message, message
    assert f"in the Lambda function {FUNCTION} (3008 MB)" in message
    assert "FUNCTION_SIZES" in message and "deploy.py" in message
    assert "--workers" not in message and "ulimit" not in message

    # the Catch sends Lambda's error to RecordFailure; the job's result (the report's line)
    _lambda_env(monkeypatch)
    handlers.merge_handler({"action": "record_failure", "run": run["run"], "job": 0,
                            "error": {"Error": error["errorType"],
                                      "Cause": json.dumps(error)}})
    result = json.loads((tmp_path / "work" / "jobs" / "00000" / "result.json").read_text())
    assert result["status"] == "FAILED"
    assert result["error"]["type"] == "OutOfMemoryError"
    reported = result["error"]["message"]
    assert str(tmp_path / "big.tif") in reported and "page 0" in reported, reported
    assert "FUNCTION_SIZES" in reported and "--workers" not in reported
    assert not (tmp_path / "out" / "big.tif").exists()


def test_too_many_open_files_on_lambda_says_what_a_lambda_user_can_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A task that meets EMFILE on Lambda said "raise it in the shell that runs tiffpipe
    (ulimit -n 4096 ...), or run with fewer --workers": a Lambda function has neither a
    shell nor --workers, and its limit of open files cannot be raised. It names the
    function, says the limit is fixed, and what can hold the files (code the function runs
    for the user, a custom op) and what to do."""
    import errno

    from pipeline.steps import single

    def leaky(event: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(single, "process_job", leaky)
    _lambda_env(monkeypatch)
    event = {"action": "process_job", "plan": str(tmp_path / "work" / "plan.json")}
    with pytest.raises(Exception) as raised:
        handlers.process_handler(event)
    assert type(raised.value).__name__ == "TooManyOpenFilesError"
    message = str(raised.value)
    assert f"in the Lambda function {FUNCTION} (3008 MB)" in message, message
    assert "1,024" in message and "custom op" in message, message
    assert "ulimit" not in message and "--workers" not in message and "shell" not in message

    # the same error off Lambda keeps the advice for tiffpipe run
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    with pytest.raises(Exception) as raised:
        handlers.process_handler(event)
    assert "ulimit -n" in str(raised.value) and "--workers" in str(raised.value)


def test_lambda_kills_and_memory_errors_give_the_same_advice(monkeypatch: pytest.MonkeyPatch):
    """Out of memory in a Lambda function is told two ways: a MemoryError the step raised
    (OutOfMemoryError) and Lambda's own Runtime.OutOfMemory (the process killed). Their
    advice was two texts that had drifted apart ('a smaller tile' and 'a smaller "tile" in
    the manifest'); one text says it for both."""
    from pipeline.errors import exhausted, failure_record

    _lambda_env(monkeypatch)
    raised = str(exhausted(MemoryError("Unable to allocate 1.00 GiB"), "process.process_unit"))
    killed = failure_record({"Error": "Runtime.OutOfMemory", "Cause": json.dumps(
        {"errorType": "Runtime.OutOfMemory",
         "errorMessage": "RequestId: abc Error: Runtime exited with error: signal: killed"})})
    advice = ('give the job a smaller "tile" in the manifest, or raise the function\'s memory '
              "(FUNCTION_SIZES in pipeline/core/constants.py, then deploy.py)")
    assert advice in raised, raised
    assert advice in killed["message"], killed
