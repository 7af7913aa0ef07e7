"""The direct interpreter (pipeline/engine/direct.py), the local engine's default: it runs
what statemachine.asl.json uses as moto's interpreter does (the same machines give the same
outputs and errors on both), says what it cannot run (and the engine then runs on moto),
and a small run goes through it in the engine's process, with no worker pool."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
import tifffile
from conftest import ROOT

from pipeline.core import plan as plan_mod
from pipeline.core.constants import FUNCTIONS
from pipeline.engine import definition, direct, local, moto_run, placement
from pipeline.engine.execution import History, function_name
from pipeline.engine.local import LocalEngine
from pipeline.errors import EngineError
from pipeline.runner import run_local

pytestmark = pytest.mark.timeout(180)

ROLE = f"arn:aws:iam::{moto_run.ACCOUNT}:role/test"
FN = f"arn:aws:lambda:{moto_run.REGION}:{moto_run.ACCOUNT}:function:tiffpipe-local-process"
RETRY = [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1.0}]


def _task(action: str, **more: Any) -> dict[str, Any]:
    return {"Type": "Task", "Resource": direct.LAMBDA_INVOKE,
            "Parameters": {"FunctionName": FN, "Payload": {"action": action, "in.$": "$"}},
            "ResultSelector": {"out.$": "$.Payload"}, **more}


#: what the shipped definition uses, and what can go wrong in it: retries, catches, a
#: choice, an inline map with item selectors, a distributed map whose item fails (as AWS
#: does, the map then fails: moto's interpreter swallows failed items of distributed maps,
#: which is why tiffpipe's steps record their errors in the work location)
MACHINE = {"StartAt": "First", "States": {
    "First": _task("flaky", Retry=RETRY, ResultPath="$.first", Next="Pick"),
    "Pick": {"Type": "Choice", "Default": "Never", "Choices": [
        {"Variable": "$.first.out.calls", "NumericGreaterThan": 5, "Next": "Never"},
        {"And": [{"Variable": "$.flag", "BooleanEquals": True},
                 {"Variable": "$.missing", "IsPresent": False}], "Next": "Items"}]},
    "Never": {"Type": "Fail", "Error": "Wrong", "Cause": "the choice went wrong"},
    "Items": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2,
              "ItemSelector": {"value.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index",
                               "tag.$": "$.tag"},
              "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Echo",
                                "States": {"Echo": _task("echo", End=True)}},
              "ResultPath": "$.echoed", "Next": "Distributed"},
    "Distributed": {"Type": "Map", "ItemsPath": "$.items", "ToleratedFailurePercentage": 0.0,
                    "MaxConcurrencyPath": "$.limit", "Label": "Distributed",
                    "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED",
                                                          "ExecutionType": "STANDARD"},
                                      "StartAt": "Breaks", "States": {
                                          "Breaks": _task("fail_on_2", End=True)}},
                    "ResultPath": None, "Next": "Last",
                    "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.caught",
                               "Next": "Keep"}]},
    "Unreached": {"Type": "Succeed"},
    "Keep": {"Type": "Pass", "Parameters": {"first.$": "$.first", "echoed.$": "$.echoed",
                                            "error.$": "$.caught.Error"}, "Next": "Last"},
    "Last": _task("fail", ResultPath="$.last", End=True, Catch=[
        {"ErrorEquals": ["Other"], "Next": "Unreached"},
        {"ErrorEquals": ["Broken"], "ResultPath": "$.broken", "Next": "Done"}]),
    "Done": {"Type": "Pass", "End": True},
}}
INPUT = {"flag": True, "items": [10, 20, 30], "tag": "t", "limit": 2}


class Lambda:
    """The machines' function: ``flaky`` fails once (Flaky, retried), ``fail`` fails
    (Broken), ``fail_on_2`` fails on the item 30, ``echo`` returns its input."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        action = event["action"]
        with self.lock:
            n = self.calls[action] = self.calls.get(action, 0) + 1
        if action == "flaky" and n == 1:
            return False, {"errorType": "Flaky", "errorMessage": "first call"}
        if action == "fail" or (action == "fail_on_2" and event["in"] == 30):
            return False, {"errorType": "Broken", "errorMessage": "no"}
        return True, {"calls": n, "seen": event["in"]}


def _on_direct(machine: dict[str, Any], data: Any) -> tuple[str, Any]:
    fn = Lambda()
    try:
        out = direct.Interpreter(machine, lambda name, e: fn.invoke(name, e), 4).run(data, "x")
    except direct.StateError as exc:
        return "FAILED", exc.error
    return "SUCCEEDED", out


def _on_moto(machine: dict[str, Any], data: Any) -> tuple[str, Any]:
    from pipeline.engine.moto_patches import end_signal, lean_interpreter

    with moto_run.mocked_aws(), moto_run.served_by(Lambda()), lean_interpreter(4), \
            end_signal() as ended:
        session = boto3.Session(region_name=moto_run.REGION)
        session.client("lambda").create_function(
            FunctionName="tiffpipe-local-process", Role=moto_run._role(session, "r"),
            PackageType="Image", Code={"ImageUri": "x.dkr.ecr.us-east-1.amazonaws.com/p:l"})
        sfn = session.client("stepfunctions")
        arn = sfn.create_state_machine(name="m", roleArn=ROLE,
                                       definition=json.dumps(machine))["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=arn, name="x",
                                        input=json.dumps(data))["executionArn"]
        while (desc := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            ended.wait(0.5)
            ended.clear()
    if desc["status"] != "SUCCEEDED":
        return desc["status"], desc.get("error")
    return "SUCCEEDED", json.loads(desc["output"])


def test_the_shipped_definition_is_supported():
    machine = json.loads(definition.render({f: function_name(f) for f in FUNCTIONS}))
    assert direct.unsupported(machine) is None
    assert direct.unsupported(MACHINE) is None


def test_the_same_outputs_and_errors_as_moto():
    machine = copy.deepcopy(MACHINE)  # moto would not fail the distributed map (see MACHINE)
    machine["States"]["Distributed"]["ItemProcessor"]["States"]["Breaks"] = _task("echo", End=True)
    status, out = _on_direct(machine, INPUT)
    assert status == "SUCCEEDED"
    assert out["first"] == {"out": {"calls": 2, "seen": INPUT}}  # retried once
    assert [e["out"]["seen"] for e in out["echoed"]] == [
        {"value": v, "index": i, "tag": "t"} for i, v in enumerate(INPUT["items"])]
    assert out["broken"]["Error"] == "Broken"
    assert json.loads(out["broken"]["Cause"])["errorMessage"] == "no"
    moto = _on_moto(machine, INPUT)
    for doc in (out, moto[1]):  # the echo's call numbers depend on the threads' order
        for e in doc["echoed"]:
            e["out"].pop("calls")
    assert moto == (status, out)
    machine["States"]["Last"]["Catch"] = [{"ErrorEquals": ["Other"], "Next": "Unreached"}]
    assert _on_direct(machine, INPUT) == _on_moto(machine, INPUT) == ("FAILED", "Broken")
    assert _on_direct(machine, {**INPUT, "flag": False}) == ("FAILED", "Wrong")


@pytest.mark.parametrize("limit", [-1, "2", 1.5, None])
def test_a_map_limit_that_is_not_a_count_fails_the_execution(limit: Any):
    """MaxConcurrencyPath must give a non-negative integer: States.Runtime otherwise, which
    fails the execution: AWS documents that States.ALL does not catch it (moto 5.2.5's
    interpreter lets the Map's Catch take it, and makes "2" and 1.5 integers)."""
    machine = copy.deepcopy(MACHINE)
    machine["States"]["Distributed"]["ItemProcessor"]["States"]["Breaks"] = _task("echo", End=True)
    assert _on_direct(machine, {**INPUT, "limit": limit}) == ("FAILED", "States.Runtime")
    assert _on_direct(machine, {**INPUT, "limit": 0})[0] == "SUCCEEDED"  # 0: no limit


def test_a_failed_item_fails_a_distributed_map_as_on_aws():
    status, out = _on_direct(MACHINE, INPUT)
    assert status == "SUCCEEDED"
    assert out["error"] == "States.ExceedToleratedFailureThreshold"
    assert out["broken"]["Error"] == "Broken" and len(out["echoed"]) == 3
    tolerant = copy.deepcopy(MACHINE)
    tolerant["States"]["Distributed"]["ToleratedFailurePercentage"] = 50.0  # 1 of 3 may fail
    status, out = _on_direct(tolerant, INPUT)
    assert status == "SUCCEEDED" and "error" not in out and out["broken"]["Error"] == "Broken"


@pytest.mark.parametrize("change,why", [
    ({"Type": "Parallel", "Branches": []}, "Parallel"),
    ({"Parameters": {"x.$": "States.Format('{}', $.a)"}}, "only reference paths"),
    ({"ItemReader": {}}, "ItemReader"),
    ({"Resource": "arn:aws:states:::s3:getObject"}, "Resource"),
])
def test_what_it_cannot_run_is_named(change: dict[str, Any], why: str):
    machine = copy.deepcopy(MACHINE)
    machine["States"]["First"].update(change)
    assert why in (direct.unsupported(machine) or "")


def test_a_definition_it_cannot_run_runs_on_moto_unless_direct_is_asked_for(
        caplog: pytest.LogCaptureFixture):
    """One definition the direct interpreter cannot run (an intrinsic function): the engine
    (``auto``) runs it on moto, saying why in a warning (shown without any logging set up),
    and refuses it when told to use the direct interpreter."""
    passing = {"StartAt": "P", "States": {"P": {
        "Type": "Pass", "Parameters": {"seen.$": "States.Format('v{}', $.value)"},
        "End": True}}}
    assert "only reference paths" in (direct.unsupported(passing) or "")
    with LocalEngine(1, definition_text=json.dumps(passing)) as engine:
        assert engine.machine is None  # auto: moto runs it
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "running on moto" in caplog.text and "only reference paths" in caplog.text
        run = engine.run({"value": 3})
    assert (run.status, run.output) == ("SUCCEEDED", {"seen": "v3"})
    with pytest.raises(EngineError, match="cannot run this definition"):
        LocalEngine(1, definition_text=json.dumps(passing), interpreter="direct")


@pytest.mark.parametrize("slow_here,wait", [(0.0, 0.0), (1.5, 0.0), (1.5, 600.0)])
def test_the_engine_process_is_a_worker_and_the_pool_starts_only_when_it_pays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_here: float, wait: float):
    """One unit (a ProcessJob): it runs in the engine's process and no worker starts. Three
    pages (three
    units at once) of short units: all run in the engine, no worker starts (its start would
    cost more than the work left). When a unit runs long here (``slow_here`` seconds more,
    in this process only), the waiting units hold enough work and, once a unit has waited
    POOL_START_AFTER_S, the pool of ``workers - 1`` starts and serves one (with a long wait:
    all run in the engine). (Pages this small would make one ProcessJob of the three
    units: plan.SINGLE_TASK_PIXELS is 0 here, for the Map's scheduling.)

    Whether the work waiting is worth a worker depends on how fast the units run on this
    machine, so POOL_WORTH_S is pinned: out of reach for the short units (on a loaded
    machine they could otherwise add up to it), and reached by any unit for the slow ones
    (then only the wait, and how busy the unit keeps the cores, decide)."""
    monkeypatch.setattr(placement, "POOL_START_AFTER_S", wait)
    monkeypatch.setattr(placement, "POOL_WORTH_S", 0.0 if slow_here else 1e9)
    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 0)
    if slow_here:
        from pipeline.steps import process

        fast = process.process_unit

        def slow(event: Any) -> Any:
            time.sleep(slow_here)
            return fast(event)

        monkeypatch.setattr(process, "process_unit", slow)  # the handler looks it up by name
    rng = np.random.default_rng(3)
    for name, pages in (("one", 1), ("three", 3)):
        with tifffile.TiffWriter(tmp_path / f"{name}.tif") as tw:
            for _ in range(pages):
                tw.write(rng.integers(0, 255, (1500, 1400, 3), np.uint8), tile=(256, 256),
                         compression="zlib", photometric="rgb")
        (tmp_path / f"{name}.json").write_text(json.dumps({"jobs": [{
            "input": f"{name}.tif", "output": f"{name}-out.tif",
            "ops": [{"op": "gaussian_blur", "sigma": 2}]}]}))
        units: list[str] = []
        result = run_local(str(tmp_path / f"{name}.json"), 2,
                           listener=lambda f, e, ok, p, u=units: u.append(e.get("action")))
        assert result.ok, result.error
        # one unit: a ProcessJob (the unit and the merge in one task)
        assert [a for a in units if a in ("process_unit", "process_job", "merge")] == (
            ["process_job"] if pages == 1 else ["process_unit"] * pages + ["merge"])
        with tifffile.TiffFile(tmp_path / f"{name}-out.tif") as out:
            assert len(out.pages) == pages and out.pages[0].shape == (1500, 1400, 3)
            assert np.array_equal(out.pages[-1].asarray(), cv2.GaussianBlur(
                tifffile.imread(tmp_path / f"{name}.tif", key=pages - 1), (0, 0), 2))
        if pages == 1 or wait or not slow_here:
            assert result.worker_peaks_mb == {}  # no worker was started
        else:
            assert len(result.worker_peaks_mb) == 1 and os.getpid() not in result.worker_peaks_mb
    with LocalEngine(1) as engine:  # one worker: this process alone (the pool: user code only)
        assert engine.machine is not None and engine.pool is not None
        assert not engine.pool.started and engine.pool.workers == 1


@pytest.mark.skipif(local.usable_cores() < 2, reason="side by side needs 2 cores")
@pytest.mark.parametrize("side,side_by_side", [(200, True), (1500, False)])
def test_pages_of_one_tile_run_side_by_side_in_the_engine_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int, side_by_side: bool):
    """A unit keeps as many cores busy as it has tiles (:meth:`LocalEngine._width`): units of
    one-tile pages (a scanned archive of small pages) run two at once in the engine's
    process, with no worker started; units of many tiles, which keep the cores busy alone,
    one at a time. The outputs are exact either way. (The Map's units: a job this small
    would be one ProcessJob, whose units run side by side as well: test_single_task.py.)"""
    from pipeline.steps import process

    monkeypatch.setattr(plan_mod, "SINGLE_TASK_PIXELS", 0)
    real = process.process_unit
    lock = threading.Lock()
    running: list[int] = []
    most = [0]
    meet = threading.Barrier(2, timeout=30)  # the first two units wait for each other

    def watched(event: Any) -> Any:
        with lock:
            running.append(event.unit)
            most[0] = max(most[0], len(running))
        try:
            if side_by_side and event.unit < 2:
                meet.wait()  # broken (the job fails) unless both run at once, here
            return real(event)
        finally:
            with lock:
                running.remove(event.unit)

    monkeypatch.setattr(process, "process_unit", watched)
    rng = np.random.default_rng(11)
    pages = [rng.integers(0, 255, (side, side - 20, 3), np.uint8) for _ in range(6)]
    with tifffile.TiffWriter(tmp_path / "in.tif") as tw:
        for page in pages:
            tw.write(page, tile=(256, 256), compression="zlib", photometric="rgb")
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [{
        "input": "in.tif", "output": "out.tif", "ops": [{"op": "gaussian_blur", "sigma": 2}]}]}))
    result = run_local(str(tmp_path / "m.json"), 2)
    assert result.ok, result.error
    assert result.worker_peaks_mb == {}  # every unit ran in this process
    assert most[0] == (2 if side_by_side else 1)
    # the threads kept the input open between their units (kept_tiff): closed at the end
    from pipeline.adapters import kept_files

    src = str(tmp_path / "in.tif")
    assert kept_files.count() == 0
    assert not [fd for fd in os.listdir("/proc/self/fd")
                if os.path.realpath(f"/proc/self/fd/{fd}") == src]
    with tifffile.TiffFile(tmp_path / "out.tif") as out:
        assert len(out.pages) == len(pages)
        for page, written in zip(pages, out.pages, strict=True):
            assert np.array_equal(written.asarray(), cv2.GaussianBlur(page, (0, 0), 2))


def test_a_task_is_as_wide_as_its_tiles(tmp_path: Path):
    """:meth:`LocalEngine._width`: a fused unit or a batch counts its tiles, at most the cores;
    any other task (merge, a missing plan) all the cores."""
    from pipeline.core.events import JobEvent, RunEvent
    from pipeline.steps.common import load_plan
    from pipeline.steps.planning import plan_run, write_job_plan

    tifffile.imwrite(tmp_path / "in.tif", np.zeros((3000, 300), np.uint8), tile=(256, 256))
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((100, 100), np.uint8))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "o.tif", "ops": [{"op": "gaussian_blur", "sigma": 1}]},
        {"input": "small.tif", "output": "s.tif", "ops": [{"op": "gaussian_blur", "sigma": 1}]}]}))
    work = str(tmp_path / "work")
    run = plan_run(RunEvent(manifest=str(tmp_path / "m.json"), work=work, run_id="r"))["run"]
    big, small = (write_job_plan(JobEvent(run=run, job=j))["plan"] for j in (0, 1))
    with LocalEngine(2) as engine:
        cores = engine._cores
        assert engine._width({"action": "process_unit", "plan": small, "unit": 0}) == 1
        tiles = load_plan(big).units[0].tiles
        assert tiles > 1
        assert engine._width({"action": "process_unit", "plan": big, "unit": 0}) == min(
            cores, tiles)
        assert engine._width({"action": "merge", "plan": big}) == cores
        assert engine._width({"action": "process_unit", "plan": str(tmp_path / "gone.json"),
                              "unit": 0}) == cores


def test_the_pool_pays_when_the_waiting_tasks_hold_enough_work_and_cores_idle():
    """The rule of :meth:`Placement.pays`: not before the wait; then the waiting tasks times
    a task's time here (mean so far, or the oldest running one's age) against POOL_WORTH_S,
    and only while the tasks here leave cores idle (POOL_BELOW_BUSY, measured over the
    stretch they have run). The rule reads the clocks itself: they are stopped here
    (placement's ``time``: this process's wall and CPU seconds stand still), so the test
    does not depend on how fast it runs."""
    now, idle = 1000.0, 50.0  # the wall clock, and this process's CPU seconds
    cores = 2
    slots = placement.Placement(cores, 2, pool=None, pool_for_all=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(placement, "time", SimpleNamespace(monotonic=lambda: now,
                                                      process_time=lambda: idle))

        def running(age: float, stretch: float, cpu_used: float) -> None:
            slots.engine_starts, slots.stretch_since = {1: now - age}, now - stretch
            slots.engine_cpu_since = idle - cpu_used

        assert not slots.pays(now + 10)  # still within the wait
        slots.waiting = 5
        running(0.4, 0.4, 0.0)
        assert not slots.pays(now)  # 5 x 0.4 s, but less than 1 s to tell how busy
        slots.waiting = 2
        running(0.7, 0.7, 0.0)
        assert not slots.pays(now)  # 2 x 0.7 s: less than a worker's start is worth
        running(1.0, 1.0, 0.0)
        assert slots.pays(now)  # 2 x 1 s, and the task here left the cores idle
        running(1.0, 1.0, 1.0 * cores)  # it kept every core busy
        assert not slots.pays(now)
        running(1.0, 1.0, 0.5 * cores)  # half of them
        assert slots.pays(now)
        # tasks side by side: the oldest's age, and busy over their stretch, not their sum
        running(0.2, 3.0, 2.9 * cores)
        assert not slots.pays(now)  # 2 x 0.2 s; and the cores were busy
        slots.waiting = 10
        assert not slots.pays(now)  # 10 x 0.2 s, but the cores were busy
        running(0.2, 3.0, 1.0 * cores)
        assert slots.pays(now)  # a third of the stretch busy
        slots.waiting = 2
        running(0.01, 0.01, 0.0)
        slots.done_here, slots.wall_here = 2, 2.0
        assert slots.pays(now)  # 2 x the mean, 1 s
        slots.waiting = 1
        assert not slots.pays(now)


def test_slots_here_while_the_tasks_leave_cores_free_and_none_once_aborted():
    """Placement.take: a task runs here when nothing heavy does, or beside the ones here
    while their widths leave its cores free and the tasks everywhere are fewer than the
    workers; it waits otherwise, and takes the slot a released task frees. Once aborted,
    a task waiting for a slot, and any that asks later, raises Aborted."""
    slots = placement.Placement(cores=4, workers=3, pool=None, pool_for_all=True)
    assert slots.take(engine=True, width=1, token=1) == "engine"
    assert slots.take(engine=True, width=2, token=2) == "engine"  # 1 + 2 <= 4 cores
    assert slots.busy == {"engine": 2, "pool": 0} and slots.engine_width == 3
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(slots.take(True, 2, 3)))
    waiter.start()  # 3 + 2 > 4 cores: waits
    waiter.join(0.2)
    assert waiter.is_alive() and got == []
    slots.release("engine", 2, 2)
    waiter.join(5)
    assert got == ["engine"] and slots.engine_width == 3
    assert slots.done_here == 1
    failed: list[BaseException] = []

    def wait_for_one() -> None:
        try:
            slots.take(True, 4, 4)
        except direct.Aborted as exc:
            failed.append(exc)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    assert slots.abort() and not slots.abort()  # the second one: aborted already
    waiter.join(5)
    assert len(failed) == 1 and not waiter.is_alive()
    with pytest.raises(direct.Aborted):
        slots.take(True, 1, 5)


@pytest.mark.parametrize("workers,single", [(1, True), (2, True), (2, False)])
def test_user_code_runs_in_a_worker_so_its_crash_fails_only_its_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, single: bool):
    """A custom op that kills its process (as a segfault would) fails only its own job (its
    unit: WorkerCrashedError); the run, and a job without user code beside it, go on: tasks
    of jobs with user code never run in the engine's process. ``single``: the job of one
    unit runs as a ProcessJob (else through the ProcessUnits Map and Merge)."""
    from pipeline.core import plan as plan_module

    monkeypatch.setattr(plan_module, "SINGLE_TASK_JOBS", single)
    folder = tmp_path / "userops"
    folder.mkdir()
    (folder / "tiffpipe_crashing_op.py").write_text(
        "import os\n\ndef crash(tile):\n    os._exit(3)\n")
    monkeypatch.syspath_prepend(str(folder))  # workers get the parent's sys.path
    page = np.random.default_rng(5).integers(0, 255, (300, 280), np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", page, tile=(64, 64), compression="zlib")
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "crashed.tif",
         "ops": [{"op": "custom", "function": "tiffpipe_crashing_op:crash"}]},
        {"input": "in.tif", "output": "blurred.tif",
         "ops": [{"op": "gaussian_blur", "sigma": 1}]}]}))
    result = run_local(str(tmp_path / "m.json"), workers)
    assert result.status == "SUCCEEDED" and result.report is not None
    crashed, blurred = result.report["jobs"]
    # the unit could record no error of its own (its process died): a ProcessJob fails with
    # the task's error, after its retries; through the Map, the job fails with its map's
    # failure, as on AWS, and the message names the unit's error
    assert crashed["status"] == "FAILED"
    if single:
        assert crashed["error"]["type"] == "WorkerCrashedError"
        assert "worker" in crashed["error"]["message"]
    else:
        assert crashed["error"]["type"] == "States.ExceedToleratedFailureThreshold"
        assert "first: WorkerCrashedError" in crashed["error"]["message"]
    # the user code is named as what may have ended its worker
    assert ("or the job's custom op (tiffpipe_crashing_op:crash) ended it"
            in crashed["error"]["message"])
    assert not (tmp_path / "crashed.tif").exists()
    assert blurred["status"] == "SUCCEEDED"
    assert np.array_equal(tifffile.imread(tmp_path / "blurred.tif"),
                          cv2.GaussianBlur(page, (0, 0), 1))


def test_a_distributed_map_reads_its_items_with_an_item_reader(tmp_path: Path):
    """ItemReader (s3:getObject, a JSON array): the items come from ``read_items`` given the
    filled Parameters; a reader that fails fails the map with States.ItemReaderFailed."""
    (tmp_path / "jobs.json").write_text(json.dumps([3, 5]))
    machine = {"StartAt": "Jobs", "States": {"Jobs": {
        "Type": "Map", "ResultPath": "$.out", "End": True,
        "ItemReader": {"Resource": direct.S3_GET_OBJECT, "ReaderConfig": {"InputType": "JSON"},
                       "Parameters": {"Bucket.$": "$.where.Bucket", "Key.$": "$.where.Key"}},
        "ItemSelector": {"job.$": "$$.Map.Item.Value"},
        "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                          "StartAt": "Echo", "States": {"Echo": _task("echo", End=True)}}}}}
    assert direct.unsupported(machine) is None
    asked: list[dict[str, Any]] = []

    def read(params: dict[str, Any]) -> str:
        asked.append(params)
        return (tmp_path / params["Key"]).read_text()

    fn = Lambda()
    where = {"where": {"Bucket": "b", "Key": "jobs.json"}}
    out = direct.Interpreter(machine, lambda n, e: fn.invoke(n, e), 2, read_items=read).run(
        where, "x")
    assert asked == [{"Bucket": "b", "Key": "jobs.json"}]
    assert [o["out"]["seen"] for o in out["out"]] == [{"job": 3}, {"job": 5}]
    missing = {"where": {"Bucket": "b", "Key": "gone.json"}}
    with pytest.raises(direct.StateError) as info:
        direct.Interpreter(machine, lambda n, e: fn.invoke(n, e), 2, read_items=read).run(
            missing, "y")
    assert info.value.error == "States.ItemReaderFailed" and "gone.json" in info.value.cause
    machine["States"]["Jobs"]["ItemReader"]["ReaderConfig"] = {"InputType": "CSV"}
    assert "ItemReader" in (direct.unsupported(machine) or "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_processes_that_run_tasks_tune_their_malloc(tmp_path: Path):
    """On Linux (glibc) the arena cap and the thresholds are set, not silently skipped:
    without the cap the engine's peak at 1 Gpx grew ~30% over many arenas, without the
    thresholds page faults took ~7% of a run's CPU (pipeline.engine.workers.tune_malloc).
    A fresh process checks that the settings hold: an allocation below the mmap threshold
    comes from the heap (no new mapping), one above it gets a mapping of its own; and
    threads allocating at once share at most MALLOC_ARENAS arenas (glibc's malloc_info),
    where without the cap they get more."""
    from pipeline.engine.workers import MALLOC_ARENAS, tune_malloc

    assert tune_malloc() is True
    script = textwrap.dedent("""
        import ctypes
        import numpy as np
        from pipeline.engine.workers import MALLOC_MMAP_THRESHOLD, tune_malloc

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        mallinfo2 = ctypes.CDLL(None).mallinfo2
        mallinfo2.restype = MallInfo2

        def mapped():  # bytes in chunks that have pages of their own (mmap)
            return mallinfo2().hblkhd

        assert tune_malloc()
        before = mapped()
        below = np.ones(MALLOC_MMAP_THRESHOLD // 2, np.uint8)
        assert mapped() == before, "below the threshold: from the heap"
        above = np.ones(MALLOC_MMAP_THRESHOLD * 2, np.uint8)
        assert mapped() >= before + above.nbytes, "above it: pages of its own"
        print("ok", below.size, above.size)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
    # the arena cap: 8 threads each allocate, then wait for all; malloc_info lists the heaps
    arenas = textwrap.dedent("""
        import ctypes
        import sys
        import threading
        from pipeline.engine.workers import tune_malloc

        if sys.argv[1] == "tuned":
            assert tune_malloc()
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.fopen.restype = ctypes.c_void_p
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        threads = 8
        allocated, done = threading.Barrier(threads + 1), threading.Barrier(threads + 1)

        def allocate():
            libc.malloc(1000)
            allocated.wait()
            done.wait()  # alive (its arena in use) until the heaps are listed

        started = [threading.Thread(target=allocate) for _ in range(threads)]
        for thread in started:
            thread.start()
        allocated.wait()
        out = libc.fopen(sys.argv[2].encode(), b"w")
        assert libc.malloc_info(0, out) == 0
        libc.fclose(out)
        done.wait()
        for thread in started:
            thread.join()
        print(open(sys.argv[2]).read().count("<heap nr="))
    """)
    heaps = {}
    for mode in ("tuned", "default"):
        proc = subprocess.run([sys.executable, "-c", arenas, mode, str(tmp_path / mode)],
                              capture_output=True, text=True, cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stderr
        heaps[mode] = int(proc.stdout)
    assert 1 <= heaps["tuned"] <= MALLOC_ARENAS < heaps["default"], heaps


def test_a_definition_motos_parser_refuses_is_an_engine_error():
    """Step Functions takes ``"ToleratedFailurePercentage": 0``; moto's parser wants 0.0:
    the run fails with an EngineError that says so, not a traceback."""
    text = definition.definition_text().replace('"ToleratedFailurePercentage": 0.0',
                                     '"ToleratedFailurePercentage": 0')
    with LocalEngine(1, definition_text=text, interpreter="moto") as engine, \
            pytest.raises(EngineError, match="cannot parse it") as caught:
        engine.run({"jobs": []})
    assert "ToleratedFailurePercentage" in str(caught.value)
    assert "0.0, not 0" in str(caught.value)


def test_top_level_fields_it_cannot_run_are_named_alone():
    machine = {"StartAt": "A", "TimeoutSeconds": 60, "QueryLanguage": "JSONPath",
               "States": {"A": {"Type": "Succeed"}}}
    assert direct.unsupported(machine) == "top-level fields ['QueryLanguage']"


@pytest.mark.parametrize("interpreter", ["auto", "moto"])
def test_a_definition_step_functions_would_refuse_is_refused_before_it_runs(interpreter: str):
    """A Catch naming a missing state failed with KeyError only when reached on the direct
    interpreter (and moto ran it): on either, the engine refuses it when made, naming the
    state and the field; and so a definition that is not JSON, with its line and column."""
    machine = copy.deepcopy(MACHINE)
    machine["States"]["Keep"]["Next"] = "Notify"
    with pytest.raises(EngineError, match="state Keep: Next names 'Notify', which is not a "
                                          "state"):
        LocalEngine(1, definition_text=json.dumps(machine), interpreter=interpreter)
    with pytest.raises(EngineError, match="line 2, column 1: invalid JSON: "):
        LocalEngine(1, definition_text='{"StartAt": "A"\n"States": {}}',
                    interpreter=interpreter)


def test_states_task_failed_matches_any_error_but_a_timeout():
    """``States.TaskFailed`` in ErrorEquals is a wildcard for any error but States.Timeout
    (AWS's error-handling docs; moto's interpreter catches with it too): the direct
    interpreter took it for an error's name, and the execution failed."""
    machine = copy.deepcopy(MACHINE)
    machine["States"]["Last"]["Catch"] = [
        {"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.broken", "Next": "Done"}]
    machine["States"]["First"]["Retry"] = [{**RETRY[0], "ErrorEquals": ["States.TaskFailed"]}]
    machine["States"]["Distributed"]["ItemProcessor"]["States"]["Breaks"] = _task("echo", End=True)
    machine["States"]["Pick"]["Choices"][0]["Next"] = "Unreached"  # (reachable, as before)
    status, out = _on_direct(machine, INPUT)
    assert status == "SUCCEEDED" and out["broken"]["Error"] == "Broken", out
    assert out["first"]["out"]["calls"] == 2  # retried
    moto = _on_moto(machine, INPUT)
    assert moto[0] == "SUCCEEDED" and moto[1]["broken"] == out["broken"]
    assert direct._error_matches(["States.TaskFailed"], "States.ExceedToleratedFailureThreshold")
    assert not direct._error_matches(["States.TaskFailed"], "States.Timeout")
    assert direct._error_matches(["States.ALL"], "States.Timeout")
    for wildcard in ("States.ALL", "States.TaskFailed"):
        assert not direct._error_matches([wildcard], "States.Runtime")


def test_a_choice_rule_may_have_a_comment():
    """A Comment in a choice rule, at the top or inside And, Or, Not (valid ASL, which CDK
    writes): ignored, as on moto (it crashed the direct interpreter with a ValueError)."""
    machine = copy.deepcopy(MACHINE)
    machine["States"]["Distributed"]["ItemProcessor"]["States"]["Breaks"] = _task("echo", End=True)
    first, second = machine["States"]["Pick"]["Choices"]
    first["Comment"] = "never: first is called twice"
    second["Comment"] = "the flag, and nothing missing"
    second["And"][0]["Comment"] = "the flag"
    second["And"][1] = {"Not": {**second["And"][1], "IsPresent": True, "Comment": "missing"},
                        "Comment": "not there"}
    assert direct.unsupported(machine) is None
    status, out = _on_direct(machine, INPUT)
    assert status == "SUCCEEDED" and out["broken"]["Error"] == "Broken"
    assert _on_direct(machine, {**INPUT, "flag": False}) == ("FAILED", "Wrong")
    assert _on_moto(machine, {**INPUT, "flag": False}) == ("FAILED", "Wrong")


def test_a_choice_on_a_missing_variable_fails_the_execution():
    """A rule whose Variable is not in the input fails the execution with States.Runtime, as
    on AWS ("Invalid path '$.missing': The choice state's condition path references an
    invalid value."), where the direct interpreter took it for false; IsPresent excepted.
    moto 5.2.5's interpreter takes it for false (docs/local-engine.md)."""
    machine = {"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [
            {"Variable": "$.missing", "NumericGreaterThan": 1, "Next": "A"}], "Default": "B"},
        "A": {"Type": "Pass", "Result": {"r": "A"}, "End": True},
        "B": {"Type": "Pass", "Result": {"r": "B"}, "End": True}}}
    with pytest.raises(direct.StateError) as caught:
        direct.Interpreter(machine, Lambda().invoke, 1).run({"x": 1}, "x")
    assert caught.value.error == "States.Runtime"
    assert "'C'. Invalid path '$.missing': The choice state's condition path references an " \
           "invalid value." in caught.value.cause
    assert _on_direct(machine, {"missing": 2}) == ("SUCCEEDED", {"r": "A"})
    assert _on_moto(machine, {"x": 1}) == ("SUCCEEDED", {"r": "B"})  # moto's difference
    rules = machine["States"]["C"]["Choices"]
    rules.insert(0, {"Not": {"Variable": "$.missing", "IsPresent": True}, "Next": "B"})
    assert _on_direct(machine, {"x": 1}) == ("SUCCEEDED", {"r": "B"})  # matched first
    rules[0] = {"Or": [{"Variable": "$.x", "NumericEquals": 1},
                       {"Variable": "$.missing", "NumericEquals": 1}], "Next": "B"}
    assert _on_direct(machine, {"x": 1}) == ("SUCCEEDED", {"r": "B"})  # not evaluated
    assert _on_direct(machine, {"x": 2}) == ("FAILED", "States.Runtime")


@pytest.mark.parametrize("data,path,at", [
    ({"a": "str"}, "$.a.b", "$.a is \"str\""),
    ({"a": None}, "$.a.b.c", "$.a is null"),
    ({"a": {"b": [1]}}, "$.a.b.c", "$.a.b is [1]"),
    (5, "$.x", "$ is 5"),
])
def test_a_result_path_through_a_value_that_is_not_an_object_fails_the_state(
        data: Any, path: str, at: str):
    """States.ResultPathMatchFailure ("A state's ResultPath field cannot be applied to the
    input the state received": the States Language's predefined errors), which a Catch may
    take; the direct interpreter overwrote the value (a string became an object) or, for a
    scalar Map item, stopped with a TypeError. Missing objects on the way are still made."""
    machine = {"StartAt": "P", "States": {"P": {
        "Type": "Pass", "Result": {"r": 1}, "ResultPath": path, "End": True}}}
    with pytest.raises(direct.StateError) as caught:
        direct.Interpreter(machine, Lambda().invoke, 1).run(data, "x")
    assert caught.value.error == "States.ResultPathMatchFailure"
    assert f"ResultPath {path} to the state's input: {at}, not an object" in caught.value.cause
    assert direct.put_result({"x": 1}, "$.a.b", 2) == {"x": 1, "a": {"b": 2}}
    assert direct.put_result({"a": {"b": 1}}, "$.a.b", {"c": 2}) == {"a": {"b": {"c": 2}}}


def test_a_map_of_scalar_items_with_a_result_path_fails_its_items():
    machine = {"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.items", "ResultPath": "$.out", "End": True,
        "Catch": [{"ErrorEquals": ["States.ResultPathMatchFailure"], "ResultPath": "$.error",
                   "Next": "Caught"}],
        "ItemProcessor": {"StartAt": "Echo", "States": {
            "Echo": _task("echo", ResultPath="$.echoed", End=True)}}},
        "Caught": {"Type": "Pass", "End": True}}}
    status, out = _on_direct(machine, {"items": [1, 2]})
    assert status == "SUCCEEDED" and out["error"]["Error"] == "States.ResultPathMatchFailure"


def test_the_definitions_timeout_fails_the_execution():
    """The top-level TimeoutSeconds (accepted, then ignored): past it the execution stops
    (no state starts; a Retry's wait ends; ``on_timeout`` stops the running tasks) and fails
    with States.Timeout, which no Catch sees."""
    released = threading.Event()

    def invoke(function: str, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        if event["action"] == "flaky":
            return False, {"errorType": "Flaky", "errorMessage": "again"}
        released.wait(10)  # a long task, stopped by on_timeout
        return True, {}

    catch = [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]
    for first in (_task("slow", End=True, Catch=catch),
                  _task("flaky", End=True, Catch=catch, Retry=[
                      {"ErrorEquals": ["Flaky"], "IntervalSeconds": 60, "MaxAttempts": 1}])):
        machine = {"TimeoutSeconds": 1, "StartAt": "First", "States": {
            "First": first, "Caught": {"Type": "Succeed"}}}
        assert direct.unsupported(machine) is None
        started = time.monotonic()
        with pytest.raises(direct.TimedOut) as caught:
            direct.Interpreter(machine, invoke, 1, on_timeout=released.set).run({}, "x")
        assert caught.value.error == "States.Timeout"
        assert "TimeoutSeconds (1 s)" in caught.value.cause
        assert 0.9 < time.monotonic() - started < 5
    machine = {"TimeoutSeconds": 60, "StartAt": "First", "States": {
        "First": _task("slow", End=True, ResultPath="$.out")}}
    assert direct.Interpreter(machine, invoke, 1).run({}, "x") == {"out": {"out": {}}}


def test_the_engine_reports_a_timed_out_execution_as_aws_does(monkeypatch: pytest.MonkeyPatch):
    """TIMED_OUT with States.Timeout; the engine's running task is stopped."""
    from pipeline.steps import stopping

    machine = {"TimeoutSeconds": 1, "StartAt": "Plan", "States": {"Plan": {
        "Type": "Task", "Resource": direct.LAMBDA_INVOKE, "End": True, "Parameters": {
            "FunctionName": function_name("split"), "Payload": {"action": "plan_run"}}}}}
    try:
        with LocalEngine(1, definition_text=json.dumps(machine)) as engine:
            monkeypatch.setattr(engine.in_process, "invoke", lambda function, event: (
                stopping._requested.wait(10), (True, {}))[1])
            run = engine.run({})
        assert (run.status, run.error) == ("TIMED_OUT", "States.Timeout"), run
        assert run.seconds < 5
    finally:
        stopping.clear()


CONTEXT = {"start.$": "$$.Execution.StartTime", "state.$": "$$.State.Name",
           "entered.$": "$$.State.EnteredTime", "machine.$": "$$.StateMachine.Id",
           "machine_name.$": "$$.StateMachine.Name", "role.$": "$$.Execution.RoleArn",
           "execution.$": "$$.Execution.Name"}
ISO_8601 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_the_context_object_is_filled_as_on_aws():
    """$$.State.Name, EnteredTime and RetryCount, $$.Execution.StartTime and RoleArn,
    $$.StateMachine.Id and Name (they failed at run time, "could not be found in the
    input"); a path to a field it does not fill (such as $$.Task.Token) sends the definition
    to moto. On moto, $$.Execution.StartTime is ISO 8601 text, as on AWS: moto's datetime
    crashed describe_execution ("Object of type datetime is not JSON serializable")."""
    import re

    machine = {"StartAt": "Look", "States": {
        "Look": {"Type": "Pass", "Parameters": CONTEXT, "Next": "Again"},
        "Again": _task("flaky", Retry=RETRY, ResultSelector={"retries.$": "$.Payload.seen"},
                       Parameters={"FunctionName": FN, "Payload": {
                           "action": "flaky", "in.$": "$$.State.RetryCount"}},
                       ResultPath="$.again", End=True)}}
    assert direct.unsupported(machine) is None
    status, out = _on_direct(machine, {})
    assert status == "SUCCEEDED", out
    assert out.pop("again") == {"retries": 1}  # the retry's attempt
    assert re.fullmatch(ISO_8601, out.pop("start")) and re.fullmatch(ISO_8601, out.pop("entered"))
    assert out == {"state": "Look", "machine": direct.STATE_MACHINE_ARN, "execution": "x",
                   "machine_name": "tiffpipe-local", "role": direct.ROLE_ARN}
    for path in ("$$.Task.Token", "$$.State.Other", "$$.Execution.Name.x", "$$.Map.Item.Key"):
        other = {"StartAt": "P", "States": {"P": {
            "Type": "Pass", "Parameters": {"x.$": path}, "End": True}}}
        assert "only reference paths" in (direct.unsupported(other) or ""), path
    machine = {"StartAt": "Look", "States": {
        "Look": {"Type": "Pass", "Parameters": CONTEXT, "End": True}}}
    with LocalEngine(1, definition_text=json.dumps(machine), interpreter="moto") as engine:
        run = engine.run({}, name="on-moto")
    assert run.status == "SUCCEEDED", run
    assert re.fullmatch(ISO_8601, run.output.pop("start"))
    assert run.output.pop("entered")  # (moto's: ISO 8601 to the microsecond)
    assert run.output == {"state": "Look", "machine": direct.STATE_MACHINE_ARN,
                          "execution": "on-moto", "machine_name": "tiffpipe-local",
                          "role": direct.ROLE_ARN}


@pytest.mark.parametrize("change,gap", [
    ({"QueryLanguage": "JSONata", "Output": "{% $states.input %}"},
     "QueryLanguage JSONata (state P)"),
    ({"Parameters": {"x.$": "$counter"}}, "variables (state P reads $counter)"),
    ({"Type": "Map", "ItemsPath": "$.items", "ResultWriter": {"Resource": "x"},
      "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Succeed"}}}},
     "a Map's ResultWriter (state P: moto writes"),
])
def test_what_moto_cannot_run_is_refused_up_front(change: dict[str, Any], gap: str):
    """JSONata, reading variables, ResultWriter: moto 5.2.5 parses them, then fails at run
    time with a message naming neither feature nor state (TypeError('NoneType' object is
    not callable)); the engine refuses them when a definition would run on moto."""
    machine = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True, **change}}}
    assert direct.unsupported(machine)
    for interpreter in ("auto", "moto"):
        with pytest.raises(EngineError, match="moto's interpreter cannot run this definition"
                           ) as caught:
            LocalEngine(1, definition_text=json.dumps(machine), interpreter=interpreter)
        assert f"does not support {gap}" in str(caught.value)
    assert local.moto_gap(MACHINE) is None and local.moto_gap({
        "StartAt": "P", "States": {"P": {"Type": "Pass", "Parameters": {
            "a.$": "$.x", "b.$": "$$.Execution.Id", "c": "$literal"}, "End": True}}}) is None


def test_an_execution_output_that_is_a_string_is_read_on_moto():
    """moto's describe_execution gives a string output without its quotes: run_on_moto's
    json.loads crashed on it (a Report state's OutputPath "$.report" giving text)."""
    for report in ("text", 5, [1, 2]):
        machine = {"StartAt": "P", "States": {"P": {
            "Type": "Pass", "Result": {"report": report}, "OutputPath": "$.report",
            "End": True}}}
        with LocalEngine(1, definition_text=json.dumps(machine), interpreter="moto") as engine:
            run = engine.run({})
        assert (run.status, run.output) == ("SUCCEEDED", report)


def test_threads_started_by_map_items_are_not_daemons():
    """A Map's items run on threading's threads (the Map's own and non-daemon helpers): a
    thread an item starts (a task's, in the engine's process) inherits a non-daemon flag,
    so the command's exit waits for it (raw threads' items started daemon threads, which
    the exit cut off mid-merge)."""
    import threading

    from pipeline.engine.direct import run_items

    flags: list[bool] = []
    lock = threading.Lock()
    ready = threading.Barrier(3)

    def one(i: int) -> None:
        ready.wait(timeout=10)  # three items at once: the helpers run them too
        started = threading.Thread(target=lambda: None)
        with lock:
            flags.append(started.daemon)

    run_items(one, 3, 3)
    assert flags == [False, False, False]


def _dies() -> None:
    raise MemoryError("(for this test)")


def _raised_in_time(call: Any, expected: type[BaseException], hung: str) -> BaseException:
    """What ``call()`` raised (``expected``), on a daemon thread given 120 s: it hung for
    ever before the fix, and a hung test must fail, not hang the suite."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except expected as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), hung
    [error] = raised
    return error


def test_a_thread_that_dies_before_it_says_it_runs_fails_its_start():
    """``Thread.start`` waits, without a timeout, for the new thread to say it runs: one
    that died first (an allocation of its start-up failing) left the starting thread
    waiting for ever. A CheckedThread's start raises at once, as a thread that cannot start
    at all does, naming it and what killed it; it is not left among the threads, and
    another starts and runs as usual."""
    import threading

    import pytest

    from pipeline.engine.direct import CheckedThread

    ran: list[str] = []
    thread = CheckedThread(target=lambda: ran.append("dead"), name="tiffpipe-test-dies")
    thread._set_native_id = _dies  # (set in the new thread before it says it runs)
    error = _raised_in_time(thread.start, RuntimeError, "the start waited for the dead thread")
    assert str(error) == ("can't start new thread: tiffpipe-test-dies died as it started "
                          "(MemoryError: (for this test))")
    assert ran == [] and thread not in threading.enumerate()
    alive = CheckedThread(target=lambda: ran.append("alive"))
    alive.start()
    alive.join(60)
    assert ran == ["alive"]
    with pytest.raises(RuntimeError, match="threads can only be started once"):
        alive.start()


def test_a_stop_watcher_that_dies_as_it_starts_fails_the_run_at_once(
        monkeypatch: pytest.MonkeyPatch):
    """The run's stop watcher (a thread) dying before it says it runs hung the run in its
    start; the run fails at once instead, saying the engine cannot start and why."""
    from pipeline.engine.local import LocalEngine, StopRequest
    from pipeline.errors import EngineError

    real = threading.Thread._set_native_id

    def native_id(self: threading.Thread) -> None:
        if self.name == "tiffpipe-stop":
            _dies()
        real(self)

    monkeypatch.setattr(threading.Thread, "_set_native_id", native_id)
    machine = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}

    def run() -> None:
        with LocalEngine(1, definition_text=json.dumps(machine), interpreter="direct",
                         stop=StopRequest()) as engine:
            engine.run({})

    error = _raised_in_time(run, EngineError, "the run waited for its dead stop watcher")
    assert "the embedded engine cannot start" in str(error)
    assert ("can't start new thread: tiffpipe-stop died as it started (MemoryError: (for "
            "this test))") in str(error)


def test_a_tolerated_failed_item_names_its_state_error_and_cause_and_the_history_has_it():
    """A Distributed Map that tolerates its items' failures (the Jobs map) succeeds, but the
    interpreter keeps each failed item's state, error and cause (Execution.failures: what
    the run report says of a job that failed outside RecordFailure); with a History, the
    events of each child execution, its task's failure among them."""
    machine = copy.deepcopy(MACHINE)
    machine["States"]["Distributed"]["ToleratedFailurePercentage"] = 100.0
    history = History()
    fn = Lambda()
    interpreter = direct.Interpreter(machine, lambda name, e: fn.invoke(name, e), 4,
                                     history=history)
    interpreter.run(INPUT, "x")
    assert interpreter.failures == [{
        "map": "Distributed", "index": 2, "value": 30, "state": "Breaks", "error": "Broken",
        "cause": '{"errorType":"Broken","errorMessage":"no"}'}]
    item = [(e["type"], e["state"], e.get("error")) for e in history.events
            if e["execution"] == "Distributed/2"]
    assert item == [("StateEntered", "Breaks", None), ("TaskScheduled", "Breaks", None),
                    ("TaskFailed", "Breaks", "Broken"), ("ExecutionFailed", "Breaks", "Broken")]
    top = [(e["type"], e["state"]) for e in history.events if e["execution"] == ""]
    assert top[:4] == [("StateEntered", "First"), ("TaskScheduled", "First"),
                       ("TaskFailed", "First"), ("TaskScheduled", "First")]  # its retry
    assert [e["id"] for e in history.events] == list(range(1, len(history.events) + 1))
    # not asked for: no history, the failures still kept
    again = Lambda()
    quiet = direct.Interpreter(machine, lambda name, e: again.invoke(name, e), 4)
    quiet.run(INPUT, "x")
    assert quiet.history is None and [f["state"] for f in quiet.failures] == ["Breaks"]


def _jobs_map(inner: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A top-level Distributed Map "Jobs" over $.jobs whose item runs ``inner`` (States)."""
    return {"StartAt": "Jobs", "States": {"Jobs": {
        "Type": "Map", "ItemsPath": "$.jobs", "End": True, **more, "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            **inner}}}}


def test_a_failure_in_an_inner_map_without_a_catch_names_the_jobs_state():
    """An item of an inline Map inside a job fails, and that Map has no Catch: the job's
    execution failed in that Map state (Split), not in the state of the inner item (the
    job's report named SplitUnit, which is no state of the job's own)."""
    machine = _jobs_map({"StartAt": "Split", "States": {"Split": {
        "Type": "Map", "ItemsPath": "$.units", "End": True, "ItemProcessor": {
            "StartAt": "SplitUnit", "States": {"SplitUnit": {
                "Type": "Task", "Resource": direct.LAMBDA_INVOKE, "End": True,
                "Parameters": {"FunctionName": "f", "Payload.$": "$"}}}}}}},
        ToleratedFailurePercentage=100)
    broken = (False, {"errorType": "Broken", "errorMessage": "no"})
    interpreter = direct.Interpreter(machine, lambda name, event: broken, 2)
    interpreter.run({"jobs": [{"units": [1, 2]}]}, "inner")
    assert [(f["map"], f["index"], f["state"], f["error"]) for f in interpreter.failures] == [
        ("Jobs", 0, "Split", "Broken")]


def test_a_retried_jobs_map_keeps_only_the_failures_of_its_last_run():
    """A Retry on the Jobs map (an edited definition) runs its items again: the failures of
    the first run were kept, and a job that then succeeded was reported FAILED."""
    machine = _jobs_map({"StartAt": "Work", "States": {"Work": {
        "Type": "Task", "Resource": direct.LAMBDA_INVOKE, "End": True,
        "Parameters": {"FunctionName": "f", "Payload.$": "$"}}}},
        Retry=[{"ErrorEquals": ["States.ALL"], "MaxAttempts": 1, "IntervalSeconds": 1}])
    calls = []

    def first_fails(name: str, event: Any) -> tuple[bool, Any]:
        calls.append(event)
        return (len(calls) > 1, {} if len(calls) > 1 else {"errorType": "Broken"})

    interpreter = direct.Interpreter(machine, first_fails, 1, sleep=lambda seconds: None)
    assert [r["Payload"] for r in interpreter.run({"jobs": [7]}, "retried")] == [{}]
    assert len(calls) == 2 and interpreter.failures == []


def test_history_numbers_its_events_in_their_order_from_many_threads():
    """Map items' threads add events at once: an id drawn, then the event appended, not
    atomically together, left ids out of order in the list (22 of 80,000 with 4 threads).
    Each event's id is its place in the history."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads switch often: as many interleavings as can be)
    try:
        history = History()
        threads = [threading.Thread(target=lambda t=t: [
            history.add("StateEntered", f"Jobs/{t}", "PlanJob") for _ in range(5000)])
            for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert [e["id"] for e in history.events] == list(range(1, 20001))


@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_history_times_are_iso_8601_and_its_count_is_the_runs_own_events(interpreter: str):
    """Both interpreters give an event's time as ISO 8601 UTC with its T and Z (moto's were
    ``str(datetime)``: a space, +00:00); history_events counts the events of the run's own
    execution, as Step Functions' 25,000 a execution limit does (the direct interpreter
    counted its Map items' child executions' too), and moto's history is counted, not
    converted, when not asked for."""
    machine = {"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.items", "End": True,
        "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}}}}
    with LocalEngine(1, definition_text=json.dumps(machine), interpreter=interpreter,
                     history=True) as engine:
        run = engine.run({"items": [1, 2, 3]}, name="timed")
    assert run.status == "SUCCEEDED", run
    times = [e["timestamp"] for e in run.history]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t) for t in times), times
    own = [e for e in run.history if e.get("execution", "") == ""]
    assert run.history_events == len(own) > 0, (run.history_events, len(own))
    if interpreter == "direct":
        assert len(own) < len(run.history)  # (the items' events: not the run's own)
        return
    with LocalEngine(1, definition_text=json.dumps(machine), interpreter="moto") as engine:
        quiet = engine.run({"items": [1, 2, 3]}, name="quiet")
    assert quiet.history is None and quiet.history_events == run.history_events


def _edited(edit: Any) -> str:
    """The shipped definition, its Jobs item processor's states changed by ``edit``."""
    machine = json.loads(Path(definition.definition_path()).read_text())
    edit(machine["States"]["Jobs"]["ItemProcessor"]["States"])
    return json.dumps(machine)


def _small_run(tmp_path: Path, definition_text: str, keep_work: bool = False) -> Any:
    """One fused job of one small page (a ProcessJob) and one with "fuse": false (Split,
    Process, Merge), run with ``definition_text``."""
    tifffile.imwrite(tmp_path / "in.tif", np.random.default_rng(1).integers(
        0, 255, (300, 280), np.uint8), tile=(128, 128))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "fused.tif", "ops": [{"op": "gaussian_blur", "sigma": 1}]},
        {"input": "in.tif", "output": "split.tif", "fuse": False,
         "ops": [{"op": "gaussian_blur", "sigma": 1}]}]}))
    return run_local(str(tmp_path / "m.json"), 2, definition_text=definition_text,
                     keep_work=keep_work, contact_sheet=False)


def test_a_job_that_ends_without_record_failure_is_reported_with_its_state_error_and_cause(
        tmp_path: Path):
    """A Fail state on a job's path (its Error and Cause), reached without RecordFailure:
    the report gives the Fail's error and cause and names the state (not NoResultError's
    "see the execution history"); with keep_work the run's events are in the work folder,
    the job's failure among them, and the message says where."""
    def fail_split_jobs(states: dict[str, Any]) -> None:
        states["Fused"]["Default"] = "Gate"
        states["Gate"] = {"Type": "Choice", "Default": "Split", "Choices": [
            {"Variable": "$.planned.fused", "BooleanEquals": False, "Next": "NoSplit"}]}
        states["NoSplit"] = {"Type": "Fail", "Error": "SplitRefused",
                             "Cause": "jobs that are not fused are refused here"}

    result = _small_run(tmp_path, _edited(fail_split_jobs), keep_work=True)
    assert not result.ok and result.report is not None, result.error
    fused, split = result.jobs
    assert fused["status"] == "SUCCEEDED" and split["status"] == "FAILED"
    history = Path(result.work) / "execution-history.json"
    assert split["error"]["type"] == "SplitRefused"
    assert split["error"]["step"] == "NoSplit"
    assert split["error"]["message"].startswith("jobs that are not fused are refused here (")
    assert "failed in state NoSplit without reaching RecordFailure" in split["error"]["message"]
    assert str(history) in split["error"]["message"]
    events = json.loads(history.read_text())["events"]
    assert {"type": "ExecutionFailed", "execution": "Jobs/1", "state": "NoSplit",
            "error": "SplitRefused", "cause": "jobs that are not fused are refused here"
            }.items() <= next(e for e in events if e["type"] == "ExecutionFailed").items()
    report = json.loads(Path(result.report_url).read_text())
    assert (report["succeeded"], report["failed"]) == (1, 1)
    assert report["jobs"][1]["error"] == split["error"]


def test_a_report_that_cannot_be_rewritten_is_warned_of_and_the_result_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """The run rewrites its report once the execution has said what its results do not (a
    job failed outside RecordFailure): a storage error there escaped run_local, and the
    caller got no RunResult. It is warned of; the result holds the report."""
    from pipeline.steps import report as report_step

    told = report_step.with_failed_executions

    def then_unwritable(doc: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        changed = told(doc, *args, **kwargs)
        (tmp_path / "m.report.json").unlink()
        (tmp_path / "m.report.json").mkdir()  # (its rewrite fails: a folder there)
        return changed

    monkeypatch.setattr(report_step, "with_failed_executions", then_unwritable)

    def fail_split_jobs(states: dict[str, Any]) -> None:
        states["Fused"]["Default"] = "Gate"
        states["Gate"] = {"Type": "Choice", "Default": "Split", "Choices": [
            {"Variable": "$.planned.fused", "BooleanEquals": False, "Next": "NoSplit"}]}
        states["NoSplit"] = {"Type": "Fail", "Error": "SplitRefused", "Cause": "refused"}

    with caplog.at_level("WARNING", logger="tiffpipe"):
        result = _small_run(tmp_path, _edited(fail_split_jobs))
    assert result.report_url == str(tmp_path / "m.report.json"), result
    assert result.report is not None, result
    fused, split = result.report["jobs"]
    assert fused["status"] == "SUCCEEDED" and split["status"] == "FAILED"
    assert split["error"]["type"] == "SplitRefused" and split["error"]["step"] == "NoSplit"
    assert (f"the run report {tmp_path / 'm.report.json'} could not be rewritten with what "
            "the execution said of its jobs (") in caplog.text, caplog.text


def test_a_job_whose_error_a_catch_took_elsewhere_than_record_failure_is_reported_with_it(
        tmp_path: Path):
    """A Catch redirected from RecordFailure to a Succeed state: the job's execution succeeds
    without a result; the report gives the error the Catch took, names the state and where
    its Catch led, instead of NoResultError."""
    def swallow_errors(states: dict[str, Any]) -> None:
        states["Fused"]["Default"] = "Gate"
        states["Gate"] = {"Type": "Choice", "Default": "Split", "Choices": [
            {"Variable": "$.planned.fused", "BooleanEquals": False, "Next": "Bad"}]}
        states["Bad"] = {**states["Merge"], "Parameters": {
            "FunctionName": states["Merge"]["Parameters"]["FunctionName"],
            "Payload": {"action": "no_such_action"}},
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Swallow"}]}
        states["Swallow"] = {"Type": "Succeed"}

    result = _small_run(tmp_path, _edited(swallow_errors))
    assert not result.ok and result.report is not None, result.error
    fused, split = result.jobs
    assert fused["status"] == "SUCCEEDED"
    assert split["status"] == "FAILED" and split["error"]["type"] == "EventError"
    assert split["error"]["step"] == "Bad"
    assert ("a Catch of state Bad took this error and led to Swallow, not to RecordFailure"
            in split["error"]["message"])


def test_a_job_whose_execution_fails_after_it_published_its_output_is_failed(tmp_path: Path):
    """A Task added after Merge (whose OutputPath is null) that reads $.job fails the job's
    execution with States.Runtime, which no Catch of States.ALL takes: the job is FAILED,
    not SUCCEEDED, its message saying that its output exists; without keep_work, it says
    how to keep the run's events."""
    def notify_after_merge(states: dict[str, Any]) -> None:
        merge = states["Merge"]
        del merge["End"]
        merge["Next"] = "Notify"
        states["Notify"] = {**merge, "Parameters": {
            "FunctionName": merge["Parameters"]["FunctionName"],
            "Payload": {"action": "notify", "job.$": "$.job"}}, "Next": None,
            "End": True}
        del states["Notify"]["Next"], states["Notify"]["OutputPath"]

    result = _small_run(tmp_path, _edited(notify_after_merge))
    assert not result.ok
    fused, split = result.jobs
    assert fused["status"] == "SUCCEEDED"
    assert split["status"] == "FAILED" and split["error"]["type"] == "States.Runtime"
    assert split["error"]["step"] == "Notify"
    message = split["error"]["message"]
    assert f"output {tmp_path / 'split.tif'} was published (it exists)" in message
    assert "failed in state Notify" in message and "--keep-work" in message
    assert (tmp_path / "split.tif").exists()
    assert json.loads(Path(result.report_url).read_text())["failed"] == 1


def test_a_fused_job_routed_down_the_split_path_says_so(tmp_path: Path):
    """A definition that sends a job planned fused down Split fails it with an error that
    says so (not a missing work file to be fixed by a rerun)."""
    def force_split(states: dict[str, Any]) -> None:
        states["PlanJob"]["Next"] = "NoFuse"
        states["NoFuse"] = {"Type": "Pass", "Result": False, "ResultPath": "$.planned.single",
                            "Next": "NoFuse2"}
        states["NoFuse2"] = {"Type": "Pass", "Result": False, "ResultPath": "$.planned.fused",
                             "Next": "Fused"}

    result = _small_run(tmp_path, _edited(force_split))
    fused, split = result.jobs
    assert split["status"] == "SUCCEEDED"
    assert fused["status"] == "FAILED" and fused["error"]["type"] == "EventError"
    assert "routed it down the Split path" in fused["error"]["message"]
    assert not (tmp_path / "fused.tif").exists()


def _run_past_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float,
                        workers: int) -> Any:
    """A run of one job whose custom op sleeps ``seconds`` under a ProcessJob whose
    TimeoutSeconds is 1 (so on moto), with ``workers``."""
    (tmp_path / "napping.py").write_text(
        "import time\n\ndef nap(tile, seconds=3.0):\n    time.sleep(seconds)\n    return tile\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # (the workers get this sys.path)

    def timeout(states: dict[str, Any]) -> None:
        states["ProcessJob"]["TimeoutSeconds"] = 1

    tifffile.imwrite(tmp_path / "in.tif", np.zeros((64, 64), np.uint8))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [{
        "input": "in.tif", "output": "out.tif", "ops": [
            {"op": "custom", "function": "napping:nap", "halo": 0,
             "params": {"seconds": seconds}}]}]}))
    return run_local(str(tmp_path / "m.json"), workers, definition_text=_edited(timeout),
                     contact_sheet=False)


def test_a_task_past_its_timeout_that_publishes_its_output_is_reported_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Task's TimeoutSeconds (run on moto) fails the job with States.Timeout while its
    task goes on, as a Lambda function does on AWS, and publishes the output: the report,
    written once the task has ended, keeps the job FAILED and says that its output exists."""
    result = _run_past_a_timeout(tmp_path, monkeypatch, 3, 1)
    job, = result.jobs
    assert job["status"] == "FAILED" and job["error"]["type"] == "States.Timeout"
    assert (tmp_path / "out.tif").exists()
    assert (f"its output {tmp_path / 'out.tif'} was published all the same (it exists)"
            in job["error"]["message"])
    assert json.loads(Path(result.report_url).read_text())["jobs"][0]["error"] == job["error"]


def test_a_published_output_of_a_failed_job_is_said_by_its_cause():
    """A FAILED job whose output was published: past a Task's TimeoutSeconds, a task went on
    and published it; otherwise a state after the one that published it failed (its Catch
    led to RecordFailure), which the message said was a timeout too."""
    from pipeline.steps.report import with_failed_executions

    def job(error_type: str, step: str) -> dict[str, Any]:
        return {"job": 0, "status": "FAILED", "output": "out/a.tif",
                "error": {"type": error_type, "message": "it failed", "step": step}}

    doc = {"succeeded": 1, "failed": 1, "skipped": 0,
           "jobs": [job("States.Timeout", "ProcessJob"), job("KeyError", "Notify")]}
    doc["jobs"][1]["job"] = 1
    assert with_failed_executions(doc, (), None, {"out/a.tif"})
    timed_out, after = (j["error"]["message"] for j in doc["jobs"])
    assert timed_out == (
        "it failed (its output out/a.tif was published all the same (it exists), by a task of "
        "the job that went on after the state machine had failed it past the Task's "
        "TimeoutSeconds, as a Lambda function goes on on AWS: remove it, or run the job "
        "again)")
    assert after == ("it failed (its output out/a.tif was published (it exists) before the "
                     "job failed in state Notify: remove it, or run the job again)")
    assert (doc["succeeded"], doc["failed"], doc["skipped"]) == (0, 2, 0)


def test_a_task_that_hangs_past_its_timeout_is_stopped_after_the_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """A task the state machine gave up on (past its Task's TimeoutSeconds, on moto) that
    never ends (a hung custom op) held the run for ever: the run waited for it without
    limit. It is waited for STOP_GRACE_S, then stopped, named in a warning; the job is
    FAILED with States.Timeout and its output was never published."""
    monkeypatch.setattr(local, "STOP_GRACE_S", 1.0)
    with caplog.at_level("WARNING", logger="pipeline.engine.moto_run"):
        # (two workers: the run's next tasks, RecordFailure and Report, take the other one)
        result = _run_past_a_timeout(tmp_path, monkeypatch, 30, 2)
    job, = result.jobs
    assert job["status"] == "FAILED" and job["error"]["type"] == "States.Timeout", job
    assert not (tmp_path / "out.tif").exists()  # (the task ran 30 s when waited for)
    assert ("1 task(s) that the state machine gave up on (past a Task's TimeoutSeconds) still "
            "ran 1 s after the execution ended: stopped (process process_job plan "
            in caplog.text), caplog.text
