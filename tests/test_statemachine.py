"""Checks of statemachine.asl.json: the ASL validator, moto's parser, its structure, and the
size of the largest payload it carries.

The validator is the npm package ``asl-validator`` (package.json); ``make test`` and CI
install it into node_modules. Without it (a plain ``pytest`` on a machine without node) the
validator tests skip; under CI (``CI`` set) they fail instead, so they never skip silently.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters import storage
from pipeline.core import concurrency
from pipeline.core import plan as plan_module
from pipeline.core.events import JobEvent, JobList, RunEvent
from pipeline.core.models import JobSpec, PageInfo
from pipeline.engine import definition
from pipeline.errors import EngineError
from pipeline.steps import layout, planning
from pipeline.steps import stats as stats_step

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"

#: realistic ARNs of the three functions (as deploy passes them to definition.render: the
#: versions it published)
ARNS = {f: f"arn:aws:lambda:eu-west-1:123456789012:function:tiffpipe-{f}:3"
        for f in ("split", "process", "merge")}

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
TRANSIENT_LAMBDA_ERRORS = ("Lambda.ServiceException", "Lambda.AWSLambdaException",
                           "Lambda.SdkClientException", "Lambda.TooManyRequestsException",
                           "Lambda.ClientExecutionTimeoutException")
THROTTLED = "Lambda.TooManyRequestsException"
#: how long a throttled task keeps being retried, at least: Lambda's account concurrency
#: (1,000 by default) is below what the maps may ask for (8 jobs x 1,000 items)
THROTTLE_WAIT_S = 300
#: Step Functions' limit on a state's input/output and on a task's result (UTF-8 bytes)
PAYLOAD_LIMIT = 256 * 1024
PER_JOB_MAP = "Jobs"
FAILURE_STATE = "RecordFailure"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The definition as written, with its placeholders."""
    return json.loads(definition.definition_text())


@pytest.fixture(scope="module")
def rendered_text() -> str:
    return definition.render(ARNS)


@pytest.fixture(scope="module")
def rendered(rendered_text: str) -> dict[str, Any]:
    return json.loads(rendered_text)


def walk(states: dict[str, Any], scope: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(scope, name, state) of every state, nested ones (Map, Parallel) included."""
    for name, state in states.items():
        yield scope, name, state
        inner = state.get("ItemProcessor") or state.get("Iterator")
        if inner:
            yield from walk(inner["States"], f"{scope}{name}/")
        for i, branch in enumerate(state.get("Branches", [])):
            yield from walk(branch["States"], f"{scope}{name}[{i}]/")


def tasks(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(scope + name, s) for scope, name, s in walk(doc["States"]) if s["Type"] == "Task"]


def job_states(doc: dict[str, Any]) -> dict[str, Any]:
    """The states of the per-job iterator (what one job of the manifest runs)."""
    return doc["States"][PER_JOB_MAP]["ItemProcessor"]["States"]


# --- (a) asl-validator ------------------------------------------------------------------


def _validate(doc_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not VALIDATOR.exists():
        why = (f"{VALIDATOR.relative_to(ROOT)} is missing: run `npm ci` "
               "(or `make test`, which installs it)")
        if os.environ.get("CI"):
            pytest.fail(f"{why}; under CI the validator must be installed")
        pytest.skip(why)
    path = tmp_path / "statemachine.json"
    path.write_text(doc_text)
    # --json-path takes a file; --json-definition takes the JSON text itself (and given a
    # file name it reports "Unable to parse" yet exits 0, so never pass it a path).
    return subprocess.run([str(VALIDATOR), "--json-path", str(path)], check=False,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_asl_validator_accepts_the_definition(rendered_text, tmp_path):
    result = _validate(rendered_text, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"asl-validator rejects statemachine.asl.json:\n{out}"
    assert "is valid" in out, out


def test_asl_validator_rejects_a_dangling_next(rendered, tmp_path):
    """The validator really runs: a transition to a missing state fails it."""
    broken = copy.deepcopy(rendered)
    merge_before = next(s for s in job_states(broken).values() if s.get("Next") == "Merge")
    merge_before["Next"] = "NoSuchState"
    result = _validate(json.dumps(broken), tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "MISSING_TRANSITION_TARGET" in out and "NoSuchState" in out, out


# --- (b) moto's parser --------------------------------------------------------------------


def test_moto_parser_accepts_the_definition(rendered_text, rendered):
    """moto parses the whole definition into the program it runs: the same start state and
    top-level states, in order."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    program, _tree = AmazonStateLanguageParser.parse(rendered_text)
    assert program.start_at.start_at_name == rendered["StartAt"]
    assert list(program.states.states) == list(rendered["States"])


# --- (c) structure ------------------------------------------------------------------------


def test_state_names_are_unique_in_the_whole_machine(rendered):
    """Step Functions wants every state name unique across the machine, nested states too."""
    seen: dict[str, list[str]] = {}
    for scope, name, _ in walk(rendered["States"]):
        seen.setdefault(name, []).append(scope + name)
    dupes = {name: where for name, where in seen.items() if len(where) > 1}
    assert not dupes, f"state names used more than once: {dupes}"


def test_every_task_invokes_a_lambda_by_placeholder(raw):
    found = tasks(raw)
    assert found
    for where, state in found:
        assert state["Resource"] == LAMBDA_INVOKE, where
        name = state["Parameters"]["FunctionName"]
        m = re.fullmatch(r"\$\{(\w+)\}", name)
        assert m and m.group(1) in definition.PLACEHOLDERS, f"{where}: FunctionName {name!r}"
        assert "action" in state["Parameters"]["Payload"], where


def test_every_task_retries_transient_lambda_errors(rendered):
    for where, state in tasks(rendered):
        retried = {e for r in state.get("Retry", []) if r.get("MaxAttempts", 3) > 0
                   for e in r["ErrorEquals"]}
        missing = [e for e in TRANSIENT_LAMBDA_ERRORS if e not in retried]
        assert not missing, f"{where}: no Retry for {missing}"


def test_access_denied_is_not_retried(rendered):
    """A StorageError is retried (S3 throttling, a dropped connection); its subclass
    AccessDeniedError, which a retry meets again, goes to the Catch at once: no Retry names
    it or catches everything."""
    from pipeline.errors import AccessDeniedError, StorageError

    assert issubclass(AccessDeniedError, StorageError)
    for where, state in tasks(rendered):
        names = {e for r in state.get("Retry", []) for e in r["ErrorEquals"]}
        assert "StorageError" in names, where
        assert not names & {"AccessDeniedError", "States.ALL", "States.TaskFailed"}, where


def test_throttling_is_retried_for_minutes(rendered):
    """Lambda.TooManyRequestsException (the account's concurrency reached: the maps may ask
    for more than its default 1,000) has a retrier of its own, first, whose waits add up to
    minutes, capped per wait; the other transient errors keep a short one."""
    for where, state in tasks(rendered):
        first = state["Retry"][0]
        assert first["ErrorEquals"] == [THROTTLED], where
        waits = [min(first["IntervalSeconds"] * first["BackoffRate"] ** n,
                     first["MaxDelaySeconds"]) for n in range(first["MaxAttempts"])]
        assert sum(waits) >= THROTTLE_WAIT_S and max(waits) <= 60, (where, waits)
        assert first["JitterStrategy"] == "FULL", where  # the throttled items spread out
        assert all(THROTTLED not in r["ErrorEquals"] for r in state["Retry"][1:]), where


def test_every_failing_state_of_a_job_is_caught_into_record_failure(rendered):
    states = job_states(rendered)
    assert FAILURE_STATE in states
    failure = states[FAILURE_STATE]
    # where the Catch must put the error so that RecordFailure finds it (and keeps run/job),
    # under the name of the state that caught it (the report says where the job failed)
    error_path = failure["Parameters"]["Payload"]["error.$"]
    for name, state in states.items():
        if name == FAILURE_STATE or state["Type"] not in ("Task", "Map", "Parallel"):
            continue
        catchers = [c for c in state.get("Catch", []) if "States.ALL" in c["ErrorEquals"]]
        assert catchers, f"{PER_JOB_MAP}/{name}: no Catch of States.ALL"
        for c in catchers:
            assert c["Next"] == FAILURE_STATE, f"{PER_JOB_MAP}/{name}: Catch -> {c['Next']}"
            assert c.get("ResultPath") == f"{error_path}.{name}", (
                f"{PER_JOB_MAP}/{name}: Catch ResultPath {c.get('ResultPath')!r}, "
                f"RecordFailure reads {error_path!r}")
    assert "Catch" not in failure, "RecordFailure must not catch into itself"


def test_a_failed_item_is_said_in_the_map_state_that_runs_it(rendered):
    """The report names the step of a unit's or batch's recorded error by the Map that runs
    that action (pipeline.steps.report.ITEM_STATES): each is that Map's task's action."""
    from pipeline.steps.report import ITEM_STATES, WHOLE_JOB_STATE, caught

    states = job_states(rendered)
    for action, name in ITEM_STATES.items():
        (task,) = states[name]["ItemProcessor"]["States"].values()
        assert task["Parameters"]["Payload"]["action"] == action, name
    assert states[WHOLE_JOB_STATE]["Parameters"]["Payload"]["action"] == "process_job"
    # a job of an execution begun under the definition before: its error at $.error itself
    error = {"Error": "States.Timeout", "Cause": "x"}
    assert caught(error) == (None, error) and caught({"Merge": error}) == ("Merge", error)


def _catches(state: dict[str, Any]) -> list[dict[str, Any]]:
    """A state's Catches but for the name of the state each puts its error under."""
    return [{**c, "ResultPath": c["ResultPath"].rsplit(".", 1)[0]} for c in state["Catch"]]


@pytest.mark.parametrize("items,names", [("units", ["ProcessUnits", "Split", "BuildLevels"]),
                                         ("batches", ["Stats", "Process"])])
def test_fan_out_maps_are_distributed_and_drop_results(rendered, items, names):
    maps = [(name, s) for name, s in job_states(rendered).items()
            if s["Type"] == "Map" and s.get("ItemsPath", "").split(".")[-1] == items]
    assert [n for n, _ in maps] == names, f"Maps over {items}: {[n for n, _ in maps]}"
    for name, state in maps:
        _check_fan_out(name, state)


def _check_fan_out(name: str, state: dict[str, Any]) -> None:
    assert state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED", name
    assert "ResultPath" in state and state["ResultPath"] is None, (
        f"{name}: results must be dropped (ResultPath: null) to keep the payload small")
    assert state.get("MaxConcurrency", 0) <= 10_000, name


def test_jobs_map_reads_its_items_from_the_job_list_plan_run_writes(rendered, tmp_path):
    """Jobs is a Distributed Map of STANDARD child executions (a job may run for hours) whose
    items come from the job list (an ItemReader over PlanRun's ``items``), not from a state
    payload; a job whose RecordFailure itself failed does not stop the others or the Report
    (which reports it as NoResultError); the children's outputs are empty."""
    jobs = rendered["States"][PER_JOB_MAP]
    plan_run = rendered["States"][rendered["StartAt"]]
    assert plan_run["Next"] == PER_JOB_MAP and "ItemsPath" not in jobs
    _check_fan_out(PER_JOB_MAP, jobs)
    assert jobs["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] == "STANDARD"
    reader = jobs["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"] == {"InputType": "JSON"}
    assert plan_run["ResultSelector"]["items.$"] == "$.Payload.items"
    assert reader["Parameters"] == {"Bucket.$": "$.planned.items.Bucket",
                                    "Key.$": "$.planned.items.Key"}
    assert jobs["ToleratedFailurePercentage"] == 100.0 and jobs["Next"] == "Report"
    for name, state in job_states(rendered).items():
        if state.get("End"):
            assert "OutputPath" in state and state["OutputPath"] is None, name

    # what plan_run returns is what the reader and the selector read
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": f"/in/{i}.tif",
                                              "output": f"/out/{i}.tif"} for i in range(3)]}))
    result = planning.plan_run(RunEvent(str(manifest), str(tmp_path / "w"), "r1"))
    assert result["jobs"] == 3
    items = JobList(**result["items"])
    assert json.loads(storage.read_text(items.url)) == [0, 1, 2]
    assert JobList.of("s3://bkt/work/r1/jobs.json") == JobList("bkt", "work/r1/jobs.json")
    assert JobList.of("s3://bkt/work/r1/jobs.json").url == "s3://bkt/work/r1/jobs.json"


def test_fused_jobs_choose_process_units_then_merge(rendered):
    """PlanJob -> Fused -(skipped)-> Skipped, -(single)-> ProcessJob, -(fused)-> ProcessUnits
    -> Merge, else Split: one process_unit per split unit, on the process function (the one
    with OpenCV), caught like the other maps; a fused job of one unit runs whole in one
    ProcessJob task; a job PlanJob skipped (its output exists, if_exists: skip) ends."""
    states = job_states(rendered)
    assert states["PlanJob"]["ResultSelector"]["fused.$"] == "$.Payload.fused"
    assert states["PlanJob"]["ResultSelector"]["single.$"] == "$.Payload.single"
    assert states["PlanJob"]["Next"] == "Fused"
    choice = states["Fused"]
    assert choice["Type"] == "Choice" and choice["Default"] == "Split"
    skip, single, rule = choice["Choices"]
    assert states["PlanJob"]["ResultSelector"]["skipped.$"] == "$.Payload.skipped"
    assert skip == {"Variable": "$.planned.skipped", "BooleanEquals": True, "Next": "Skipped"}
    assert states["Skipped"] == {
        "Type": "Succeed", "OutputPath": None,
        "Comment": "The output exists and the job's if_exists is skip: nothing to run"}
    assert single == {"Variable": "$.planned.single", "BooleanEquals": True,
                      "Next": "ProcessJob"}
    assert rule == {"Variable": "$.planned.fused", "BooleanEquals": True,
                    "Next": "ProcessUnits"}
    whole = states["ProcessJob"]
    assert whole["Parameters"]["Payload"] == {"action": "process_job",
                                              "plan.$": "$.planned.plan"}
    assert whole["Parameters"]["FunctionName"] == states["Process"]["ItemProcessor"]["States"][
        "ProcessBatch"]["Parameters"]["FunctionName"]
    # retried, caught and ended as Merge is (both publish the output in one step)
    for key in ("Retry", "End", "ResultPath", "OutputPath"):
        assert whole[key] == states["Merge"][key], key
    assert _catches(whole) == _catches(states["Merge"])
    units = states["ProcessUnits"]
    assert units["Next"] == "Merge"
    assert units["ItemSelector"] == states["Split"]["ItemSelector"]
    assert _catches(units) == _catches(states["Split"])
    (task,) = units["ItemProcessor"]["States"].values()
    assert task["Parameters"]["Payload"]["action"] == "process_unit"
    assert task["Parameters"]["FunctionName"] == states["Process"]["ItemProcessor"]["States"][
        "ProcessBatch"]["Parameters"]["FunctionName"]
    assert task["Retry"] == states["Split"]["ItemProcessor"]["States"]["SplitUnit"]["Retry"]


def test_statistics_rounds_loop_between_split_and_process(rendered):
    """Split -> NeedsStats -(more)-> Stats -> ReduceStats -> NeedsStats -(default)-> Process:
    jobs without global ops skip the rounds; each round's Map gets the round from the state."""
    states = job_states(rendered)
    assert states["PlanJob"]["ResultSelector"]["stats.$"] == "$.Payload.stats"
    assert states["Split"]["Next"] == "NeedsStats"
    choice = states["NeedsStats"]
    assert choice["Type"] == "Choice" and choice["Default"] == "Process"
    tree, rule = choice["Choices"]  # a canny round's pending tree level first
    assert tree == {"Variable": "$.planned.stats.tree", "BooleanEquals": True,
                    "Next": "ReduceLevel"}
    assert rule == {"Variable": "$.planned.stats.more", "BooleanEquals": True, "Next": "Stats"}
    assert states["Stats"]["ItemSelector"]["round.$"] == "$.planned.stats.round"
    inner = states["Stats"]["ItemProcessor"]["States"]["StatsBatch"]
    assert inner["Parameters"]["Payload"]["action"] == "stats"
    assert states["Stats"]["Next"] == "ReduceStats"
    reduce_ = states["ReduceStats"]
    assert reduce_["Parameters"]["Payload"]["action"] == "reduce_stats"
    assert reduce_["ResultPath"] == "$.planned.stats" and reduce_["Next"] == "NeedsStats"
    assert set(reduce_["ResultSelector"]) == {"round.$", "more.$", "rounds.$", "level.$",
                                              "nodes.$", "tree.$", "bound.$"}
    assert {reduce_["Parameters"]["Payload"][k] for k in ("level.$", "bound.$")} == {
        "$.planned.stats.level", "$.planned.stats.bound"}
    # a level of the canny reduce tree: one reduce_node per node, then ReduceStats again
    level = states["ReduceLevel"]
    _check_fan_out("ReduceLevel", level)
    assert level["ItemsPath"] == "$.planned.stats.nodes" and level["Next"] == "ReduceStats"
    (node,) = level["ItemProcessor"]["States"].values()
    assert node["Parameters"]["Payload"]["action"] == "reduce_node"
    assert _catches(level) == _catches(states["Stats"])


def test_render_leaves_no_placeholders(raw, rendered_text):
    assert "${" in json.dumps(raw)
    assert "${" not in rendered_text
    names = {s["Parameters"]["FunctionName"] for _, s in tasks(json.loads(rendered_text))}
    assert names == set(ARNS.values())


@pytest.mark.parametrize("function", sorted(ARNS))
def test_render_raises_for_a_missing_arn(function):
    arns = {f: a for f, a in ARNS.items() if f != function}
    with pytest.raises(KeyError, match="no ARN for placeholder"):
        definition.render(arns)


def test_maps_take_their_concurrency_from_plan_run(rendered):
    """The Jobs map runs PlanRun's ``jobs_at_once`` jobs at once, and every map of a job
    ``per_job`` items (passed to the job with its item): how PlanRun shared the run's
    concurrency out (deploy.py --concurrency; pipeline/core/concurrency.py)."""
    plan_run = rendered["States"]["PlanRun"]
    assert plan_run["Parameters"]["Payload"]["concurrency"] == 0  # deploy.py sets it
    assert plan_run["ResultSelector"]["jobs_at_once.$"] == "$.Payload.jobs_at_once"
    assert plan_run["ResultSelector"]["per_job.$"] == "$.Payload.per_job"
    jobs = rendered["States"]["Jobs"]
    assert jobs["MaxConcurrencyPath"] == "$.planned.jobs_at_once"
    assert jobs["ItemSelector"]["per_job.$"] == "$.planned.per_job"
    maps = [(scope, s) for scope, _, s in walk(rendered["States"]) if s["Type"] == "Map"]
    assert len(maps) == 7
    for scope, state in maps:
        assert "MaxConcurrency" not in state
        if scope:  # a job's maps (runs on both engines resolve it: tests/test_engine*.py)
            assert state["MaxConcurrencyPath"] == "$.per_job"


@pytest.mark.parametrize(("jobs", "total", "shared"), [
    (1, 0, (1, 1000)), (20, 0, (8, 1000)), (1, 1000, (1, 1000)), (3, 1000, (3, 333)),
    (20, 1000, (8, 125)), (20, 10, (8, 1)), (2, 1, (1, 1)), (0, 50, (1, 50)),
    (1, 100_000, (1, 1000))])
def test_plan_run_shares_the_concurrency_out(jobs, total, shared):
    """One giant job may use all of it; many jobs never ask for more together."""
    assert concurrency.share(jobs, total) == shared
    at_once, per_job = shared
    assert at_once * per_job <= concurrency.largest(total)


@pytest.mark.parametrize("total", [1, 10, 1000, 8000, 100_000])
def test_limit_concurrency_sets_plan_runs_and_a_redeploy_reads_it_back(rendered_text, total):
    assert definition.concurrency_of(rendered_text) == 8000
    limited = definition.limit_concurrency(rendered_text, total)
    assert definition.concurrency_of(limited) == min(total, 8000)
    assert definition.limit_concurrency(limited, definition.concurrency_of(limited)) == limited
    doc = json.loads(limited)  # nothing else changed
    assert doc["States"]["PlanRun"]["Parameters"]["Payload"].pop("concurrency") == min(
        total, 8000)
    original = json.loads(rendered_text)
    original["States"]["PlanRun"]["Parameters"]["Payload"].pop("concurrency")
    assert doc == original
    with pytest.raises(ValueError, match="at least 1"):
        definition.limit_concurrency(rendered_text, 0)


def test_asl_validator_accepts_a_limited_definition(rendered_text, tmp_path):
    result = _validate(definition.limit_concurrency(rendered_text, 10), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_raises_for_an_unknown_placeholder():
    text = json.dumps({"StartAt": "A", "States": {"A": {
        "Type": "Task", "Resource": LAMBDA_INVOKE, "End": True,
        "Parameters": {"FunctionName": "${NoSuchFunctionArn}"}}}})
    with pytest.raises(KeyError, match="NoSuchFunctionArn"):
        definition.render(ARNS, text)


def test_a_definition_that_is_not_json_is_named_with_its_line_and_column():
    """A syntax error is an EngineError naming the file, the line and the column (of the file
    as written, before the ARNs go in), not a JSONDecodeError's traceback."""
    text = definition.definition_text()
    broken = text.replace('"StartAt"', '"StartAt",', 1)  # a stray comma
    line = text[:text.index('"StartAt"')].count("\n") + 1
    with pytest.raises(EngineError) as caught:
        definition.render(ARNS, broken, "edited.asl.json")
    message = str(caught.value)
    assert message.startswith(f"edited.asl.json: line {line}, column "), message
    assert ": invalid JSON: " in message, message
    with pytest.raises(EngineError, match=r"the state machine definition: line 1, column 2: "
                                          r"invalid JSON: "):
        definition.parse("{,}")
    with pytest.raises(EngineError, match="not a state machine"):
        definition.parse("[]", "list.json")


def test_the_definition_passes_the_structural_check(raw):
    definition.validate(raw)
    assert definition.check(definition.definition_text()) == raw


def _pass(**more: Any) -> dict[str, Any]:
    return {"Type": "Pass", **more}


@pytest.mark.parametrize("machine,problems", [
    ({"StartAt": "A", "States": {"A": _pass(Next="Notify"), "B": _pass(End=True)}},
     ["state A: Next names 'Notify', which is not a state",
      "state B: not reachable from StartAt (A)"]),
    ({"StartAt": "A", "States": {"A": _pass()}}, ['state A: has neither Next nor "End": true']),
    ({"StartAt": "A", "States": {"A": _pass(Next="B", End=True), "B": {"Type": "Succeed"}}},
     ["state A: has both Next and End"]),
    ({"StartAt": "Nope", "States": {"A": _pass(End=True)}},
     ["the definition: StartAt names 'Nope', which is not a state"]),
    ({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [{"Variable": "$.a", "IsPresent": True,
                                               "Next": "X"}], "Default": "Y"},
        "Y": {"Type": "Succeed"}}},
     ["state C: Choices[0].Next names 'X', which is not a state"]),
    ({"StartAt": "M", "States": {"M": {
        "Type": "Map", "End": True, "ItemProcessor": {"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": LAMBDA_INVOKE, "End": True,
                  "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "RecordFailure"}]},
            "Lost": {"Type": "Succeed"}}}}}},
     [("state M > T: Catch[0].Next names 'RecordFailure', which is not a state in the "
       "ItemProcessor of M"), "state M > Lost: not reachable from StartAt (T)"]),
    ({"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": True, "Branches": [
        {"StartAt": "A", "States": {"A": _pass(End=True)}},
        {"StartAt": "B", "States": {"B": _pass(Next="A")}}]}}},
     ["state P[1] > B: Next names 'A', which is not a state in Branches[1] of P"]),
    ({"StartAt": "A", "States": {"A": {"Type": "Sleep", "End": True}}},
     ["state A: Type 'Sleep' is not one of Task, Pass, Choice"]),
])
def test_what_step_functions_would_refuse_is_named_by_state_and_field(
        machine: dict[str, Any], problems: list[str]):
    """A transition to a missing state, a state without Next or End, an unreachable state
    (CreateStateMachine refuses each): an EngineError before any run, naming each."""
    with pytest.raises(EngineError) as caught:
        definition.validate(machine, "edited.asl.json")
    message = str(caught.value)
    assert message.startswith("edited.asl.json is not a valid state machine"), message
    for problem in problems:
        assert problem in message, (problem, message)
    assert message.count("; ") == len(problems) - 1, message


def test_the_structural_check_finds_a_missing_state_in_the_shipped_definition(raw):
    broken = copy.deepcopy(raw)
    job_states(broken)["Merge"]["Catch"][0]["Next"] = "Notify"
    with pytest.raises(EngineError, match="state Jobs > Merge: Catch\\[0\\].Next names "
                                          "'Notify', which is not a state in the "
                                          "ItemProcessor of Jobs"):
        definition.validate(broken)


def _edited(raw: dict[str, Any], edit: Any) -> dict[str, Any]:
    """A copy of the shipped definition, ``edit`` (of the copy's Jobs states) applied."""
    broken = copy.deepcopy(raw)
    edit(job_states(broken))
    return broken


def _refused(machine: dict[str, Any]) -> str:
    with pytest.raises(EngineError) as caught:
        definition.validate(machine, "edited.asl.json")
    message = str(caught.value)
    assert message.startswith("edited.asl.json is not a valid state machine, or not one the "
                              "local engine runs (checked before any run: some of what Step "
                              "Functions checks, not all of it"), message
    return message


@pytest.mark.parametrize("edit,problem", [
    (lambda s: s["ProcessJob"]["Parameters"]["Payload"].update({"plan.$": "$.planned..[plan"}),
     ("state Jobs > ProcessJob: Parameters.Payload.plan.$ '$.planned..[plan' is not a valid "
      "JSONPath")),
    (lambda s: s["Fused"]["Choices"][1].update(Variable="planned.single"),
     "state Jobs > Fused: Choices[1].Variable 'planned.single' is not a valid JSONPath"),
    (lambda s: s["PlanJob"].update(ResultPath="$.planned[*]"),
     "state Jobs > PlanJob: ResultPath '$.planned[*]' is not a valid reference path"),
    (lambda s: s["ProcessJob"]["Retry"][1].update(MaxAttempts=-1),
     "state Jobs > ProcessJob: Retry[1]: MaxAttempts -1 must be an integer of at least 0"),
    (lambda s: s["ProcessJob"]["Retry"][1].update(BackoffRate=0.5),
     "state Jobs > ProcessJob: Retry[1]: BackoffRate 0.5 must be a number of at least 1"),
    (lambda s: s["ProcessUnits"].update(ToleratedFailurePercentage=101),
     ("state Jobs > ProcessUnits: ToleratedFailurePercentage 101 must be a number of at least "
      "0 and at most 100")),
    (lambda s: s["ProcessJob"]["Retry"].insert(0, {"ErrorEquals": ["States.ALL"]}),
     ("state Jobs > ProcessJob: Retry[0].ErrorEquals: States.ALL must be alone in its "
      "ErrorEquals and in the last entry of Retry")),
    (lambda s: s["ProcessJob"]["Catch"].append({"ErrorEquals": ["CorruptTiffError"],
                                                "Next": "RecordFailure"}),
     "state Jobs > ProcessJob: Catch[0].ErrorEquals: States.ALL must be alone"),
    (lambda s: s["ProcessJob"]["Catch"][0]["ErrorEquals"].append("CorruptTiffError"),
     "state Jobs > ProcessJob: Catch[0].ErrorEquals: States.ALL must be alone"),
    (lambda s: s["ProcessJob"].update(Resource="arn:aws:states:::lambda:invokeX"),
     ("state Jobs > ProcessJob: Resource 'arn:aws:states:::lambda:invokeX' is not a task the "
      "local engine runs: it runs arn:aws:states:::lambda:invoke of its functions only")),
    (lambda s: s["ProcessJob"].update(Resource="arn:aws:states:::sns:publish"),
     "state Jobs > ProcessJob: Resource 'arn:aws:states:::sns:publish' is not a task"),
    (lambda s: s["ProcessJob"]["Parameters"].update(FunctionName="${ResizeFunctionArn}"),
     ("state Jobs > ProcessJob: Parameters.FunctionName: ${ResizeFunctionArn} is not a "
      "placeholder the engine fills (it fills ${SplitFunctionArn}, ${ProcessFunctionArn}, "
      "${MergeFunctionArn})")),
])
def test_a_path_a_number_a_resource_or_a_placeholder_is_refused_naming_state_and_field(
        raw: dict[str, Any], edit: Any, problem: str):
    """What failed only when reached (a JSONPath, a placeholder: with a message naming
    neither state nor field, or a bare KeyError), or ran though Step Functions refuses it
    (MaxAttempts -1, States.ALL not alone or not last), or ran on moto and failed there (a
    Resource the engine does not serve): each refused up front, the one problem named."""
    message = _refused(_edited(raw, edit))
    assert message.endswith(problem) or f"{problem} " in message or f"{problem};" in message, \
        (problem, message)
    assert message.count("; ") == 0, message


@pytest.mark.parametrize("edit,problem", [
    (lambda d: job_states(d)["Fused"].update(Choices=5),
     "state Jobs > Fused: Choices must be a list, not 5"),
    (lambda d: job_states(d)["ProcessJob"].update(Catch=5),
     "state Jobs > ProcessJob: Catch must be a list, not 5"),
    (lambda d: job_states(d)["ProcessJob"].update(Retry={"ErrorEquals": ["States.ALL"]}),
     "state Jobs > ProcessJob: Retry must be a list, not {'ErrorEquals': ['States.ALL']}"),
    (lambda d: d["States"].update(P={"Type": "Parallel", "Branches": 5, "End": True}),
     "state P: Branches must be a list, not 5"),
    (lambda d: job_states(d)["PlanJob"].update(Next=["Fused"]),
     "state Jobs > PlanJob: Next must be a state's name (a string), not ['Fused']"),
    (lambda d: job_states(d)["Fused"].update(Default=["Split"]),
     "state Jobs > Fused: Default must be a state's name (a string), not ['Split']"),
    (lambda d: d.update(StartAt=["PlanRun"]),
     "the definition: StartAt must be a state's name (a string), not ['PlanRun']"),
    (lambda d: job_states(d)["ProcessJob"].update(Parameters=[1]),
     "state Jobs > ProcessJob: Parameters must be a JSON object, not [1]"),
    (lambda d: job_states(d)["ProcessJob"].update(ResultSelector=3),
     "state Jobs > ProcessJob: ResultSelector must be a JSON object, not 3"),
    (lambda d: job_states(d)["ProcessJob"]["Parameters"].update(Payload="x"),
     ("state Jobs > ProcessJob: Parameters.Payload must be a JSON object (the event of the "
      "function's action, with its \"action\"), not 'x'")),
    (lambda d: job_states(d)["ProcessJob"]["Parameters"].update(Payload=None),
     ("state Jobs > ProcessJob: Parameters.Payload must be a JSON object (the event of the "
      "function's action, with its \"action\"), not None")),
])
def test_a_field_of_the_wrong_type_is_a_problem_not_a_traceback(
        raw: dict[str, Any], edit: Any, problem: str):
    """Valid JSON with a field of the wrong type (a Choices or Catch that is no list, a Next
    that is no name, a Payload that is no object) crashed the check, and so validate
    --definition, run --definition and deploy.py, with a TypeError: each is a problem named
    by state and field, the contract with the code not checked after it."""
    broken = copy.deepcopy(raw)
    edit(broken)
    with pytest.raises(EngineError) as caught:
        definition.check(json.dumps(broken), "edited.asl.json", contract=True)
    message = str(caught.value)
    assert message.startswith("edited.asl.json is not a valid state machine"), message
    assert f": {problem}" in message, (problem, message)
    assert "does not fit tiffpipe's code" not in message, message


def _renamed(state: dict[str, Any], field: str, to: str) -> None:
    state[to] = state.pop(field)


@pytest.mark.parametrize("edit,problem", [
    (lambda s: _renamed(s["Merge"], "Retry", "Retries"),
     "state Jobs > Merge: unknown field 'Retries' of a Task state: did you mean 'Retry'?"),
    (lambda s: _renamed(s["Split"], "ToleratedFailurePercentage", "ToleratedFailurePercent"),
     ("state Jobs > Split: unknown field 'ToleratedFailurePercent' of a Map state: did you "
      "mean 'ToleratedFailurePercentage'?")),
    (lambda s: _renamed(s["ProcessJob"]["Retry"][1], "MaxAttempts", "MaxAttempt"),
     ("state Jobs > ProcessJob: Retry[1]: unknown field 'MaxAttempt' of a Retry entry: did "
      "you mean 'MaxAttempts'?")),
    (lambda s: _renamed(s["Merge"]["Catch"][0], "ResultPath", "ResultPth"),
     ("state Jobs > Merge: Catch[0]: unknown field 'ResultPth' of a Catch entry: did you "
      "mean 'ResultPath'?")),
    (lambda s: s["Skipped"].update(ResultPath=None),
     ("state Jobs > Skipped: unknown field 'ResultPath' of a Succeed state: remove it, or "
      "use one of a Succeed state's: Comment, InputPath, Output, OutputPath, QueryLanguage, "
      "Type")),
])
def test_a_field_its_type_does_not_have_is_refused_with_the_one_meant(
        raw: dict[str, Any], edit: Any, problem: str, tmp_path: Path):
    """A field a state's Type does not have (a typo: Retries for Retry) ran locally, the
    engine ignoring it (so running the state without its retries), while Step Functions'
    CreateStateMachine refuses it (SCHEMA_VALIDATION_FAILED, as asl-validator does):
    refused before any run, naming state and field and the field likely meant, as the one
    problem."""
    edited = _edited(raw, edit)
    message = _refused(edited)
    assert message.endswith(f"{problem} (Step Functions refuses it, SCHEMA_VALIDATION_FAILED, "
                            "where the local engine would ignore it)"), (problem, message)
    assert message.count("; ") == 0, message
    if ": Retry[" in problem or ": Catch[" in problem:
        return  # (asl-validator 4.0.0 lets any field through in these; Step Functions not)
    checked = _validate(definition.render(ARNS, json.dumps(edited)), tmp_path)
    assert checked.returncode != 0, checked
    assert "SCHEMA_VALIDATION_FAILED" in checked.stdout + checked.stderr, checked


def _ends(name: str) -> dict[str, Any]:
    return {"StartAt": name, "States": {name: {"Type": "Succeed"}}}


def _holder_fields_edited(raw: dict[str, Any], where: str, field: str) -> dict[str, Any]:
    """The shipped definition given ``field`` at its top level (``where`` "top"), in the
    Jobs map's ItemProcessor ("processor"), or a one-branch Parallel machine given it in
    its branch ("branch")."""
    if where == "branch":
        return {"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": True,
                                                 "Branches": [{**_ends("A"), field: {}}]}}}
    edited = copy.deepcopy(raw)
    (edited if where == "top" else edited["States"]["Jobs"]["ItemProcessor"])[field] = 1
    return edited


@pytest.mark.parametrize("where,field,problem", [
    ("top", "TimeoutSecond", ("the definition: unknown field 'TimeoutSecond' of the "
     "definition's top level: did you mean 'TimeoutSeconds'?")),
    ("processor", "ProcesorConfig", ("the ItemProcessor of Jobs: unknown field "
     "'ProcesorConfig' of an ItemProcessor: did you mean 'ProcessorConfig'?")),
    ("branch", "Coment", ("Branches[0] of P: unknown field 'Coment' of a Parallel's branch: "
     "did you mean 'Comment'?")),
])
def test_a_field_the_definition_or_an_item_processor_does_not_have_is_refused(
        raw: dict[str, Any], where: str, field: str, problem: str):
    """A typo at the definition's top level, in a Map's ItemProcessor or in a Parallel's
    branch (TimeoutSecond, ProcesorConfig) passed the check, the engine ignoring it, while
    CreateStateMachine refuses it: refused before any run, naming where and the field
    meant, as the one problem."""
    message = _refused(_holder_fields_edited(raw, where, field))
    assert message.endswith(f": {problem} (Step Functions refuses it, SCHEMA_VALIDATION_FAILED, "
                            "where the local engine would ignore it)"), (problem, message)
    assert message.count("; ") == 0, message


def test_every_field_of_each_type_passes(tmp_path: Path):
    """The fields the States Language and Step Functions give each Type (JSONata's, a
    Distributed Map's, a Retry's and Catch's) are not taken for typos: a machine with each
    passes, as it passes asl-validator."""
    function = ARNS["split"]
    machine = {"Comment": "c", "Version": "1.0", "TimeoutSeconds": 600, "StartAt": "Task",
               "States": {
        "Task": {"Type": "Task", "Resource": LAMBDA_INVOKE, "Comment": "c", "InputPath": "$",
                 "OutputPath": "$", "Parameters": {"FunctionName": function, "Payload": {}},
                 "ResultSelector": {}, "ResultPath": "$.r", "TimeoutSecondsPath": "$.t",
                 "HeartbeatSecondsPath": "$.h", "Credentials": {"RoleArn": "r"},
                 "Assign": {},
                 "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1,
                            "MaxAttempts": 1, "BackoffRate": 1.0, "MaxDelaySeconds": 5,
                            "JitterStrategy": "FULL", "Comment": "c"}],
                 "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Fail", "ResultPath": "$.e",
                            "Comment": "c", "Assign": {}}], "Next": "Jsonata"},
        "Jsonata": {"Type": "Task", "QueryLanguage": "JSONata", "Resource": LAMBDA_INVOKE,
                    "Arguments": {"FunctionName": function}, "Output": {},
                    "TimeoutSeconds": 5, "HeartbeatSeconds": 2,
                    "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Fail", "Output": {}}],
                    "Next": "Map"},
        "Map": {"Type": "Map", "ItemsPath": "$.items", "ItemSelector": {}, "ItemProcessor": {
            **_ends("I1"), "Comment": "c", "ProcessorConfig": {"Mode": "DISTRIBUTED",
                                               "ExecutionType": "STANDARD"}},
                "ItemReader": {"Resource": "arn:aws:states:::s3:getObject"},
                "ItemBatcher": {"MaxItemsPerBatch": 2}, "ResultWriter": {"Resource": "x"},
                "MaxConcurrencyPath": "$.m", "ToleratedFailureCountPath": "$.c",
                "ToleratedFailurePercentagePath": "$.p", "Label": "M", "Next": "Inline"},
        "Inline": {"Type": "Map", "Iterator": _ends("I2"), "MaxConcurrency": 2,
                   "ToleratedFailureCount": 1, "ToleratedFailurePercentage": 5,
                   "Parameters": {}, "Next": "Items"},
        "Items": {"Type": "Map", "QueryLanguage": "JSONata", "Items": [1],
                  "ItemProcessor": _ends("I3"), "Next": "Parallel"},
        "Parallel": {"Type": "Parallel", "QueryLanguage": "JSONata",
                     "Branches": [{**_ends("I4"), "Comment": "c"}],
                     "Arguments": {}, "Next": "Wait"},
        "Wait": {"Type": "Wait", "Seconds": 1, "Assign": {}, "Next": "Until"},
        "Until": {"Type": "Wait", "TimestampPath": "$.t", "Next": "Pass"},
        "Pass": {"Type": "Pass", "Result": {}, "ResultPath": "$.p", "Next": "Choice"},
        "Choice": {"Type": "Choice", "Choices": [{"Variable": "$.a", "IsPresent": True,
                                                  "Next": "Done"}],
                   "Default": "Fail", "Assign": {}},
        "Done": {"Type": "Succeed", "QueryLanguage": "JSONata", "Output": {}},
        "Fail": {"Type": "Fail", "ErrorPath": "$.e", "CausePath": "$.c"}}}
    definition.validate(machine)
    checked = _validate(json.dumps(machine), tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _contract_refused(machine: dict[str, Any]) -> str:
    """The message of check's refusal of ``machine`` against the code (its structure fine)."""
    with pytest.raises(EngineError) as caught:
        definition.check(json.dumps(machine), "edited.asl.json", contract=True)
    message = str(caught.value)
    assert message.startswith("edited.asl.json does not fit tiffpipe's code"), message
    return message


def _uncaught(name: str) -> str:
    return (f"Jobs/{name}: no Catch of States.ALL leading to RecordFailure: an error here (a "
            "bad input, say) ends its job without RecordFailure recording it: on AWS the run "
            "report then says NoResultError for the job, its error lost, and a map of jobs "
            "that tolerates no failure fails the whole execution: add {\"ErrorEquals\": "
            f'["States.ALL"], "ResultPath": "$.error.{name}", "Next": "RecordFailure"}} to its '
            "Catch")


@pytest.mark.parametrize("edit,problems", [
    (lambda s: s["Merge"].pop("Catch"), [_uncaught("Merge")]),
    (lambda s: s["Split"]["Catch"][0].update(ErrorEquals=["CorruptTiffError"]),
     [_uncaught("Split")]),
    (lambda s: [s["ProcessJob"].pop("Catch"), s["Process"]["Catch"][0].update(Next="Skipped")],
     [_uncaught("ProcessJob"), _uncaught("Process")]),
])
def test_a_job_state_that_can_fail_unrecorded_is_refused(
        raw: dict[str, Any], edit: Any, problems: list[str]):
    """A job's Task, Map or Parallel state without a Catch of States.ALL into RecordFailure
    (removed, narrowed to one error, or led elsewhere) passed: its job's error then went
    unrecorded (the report's NoResultError on AWS). Each is refused, saying the Catch to
    add."""
    message = _contract_refused(_edited(raw, edit))
    assert message.endswith("): " + "; ".join(problems)), (problems, message)


def _catch_first(states: dict[str, Any], errors: list[str], to: str,
                 **added: dict[str, Any]) -> None:
    """Merge's Catch given a first entry of ``errors`` leading to ``to``; ``added``: states
    added beside it."""
    states.update(added)
    states["Merge"]["Catch"].insert(0, {"ErrorEquals": errors, "ResultPath": "$.error.Merge",
                                        "Next": to})


def test_a_catch_ending_the_job_before_the_catch_of_all_is_refused(raw: dict[str, Any]):
    """A Catch entry ahead of the one of States.ALL whose error ends the job (a Fail, a
    Succeed, directly or past Pass states) passed, the States.ALL entry into RecordFailure
    being there: a StorageError then ended the job unrecorded. Refused, naming the entry,
    where it leads and what to do."""
    fail = {"Type": "Fail", "Error": "Storage"}
    message = _contract_refused(_edited(raw, lambda s: _catch_first(
        s, ["StorageError"], "Failed", Failed=fail)))
    assert message.endswith(
        "): Jobs/Merge: Catch[0] (StorageError) leads to Failed, a Fail state that ends the "
        "job, without RecordFailure: such an error ends its job unrecorded (on AWS the run "
        "report says NoResultError for it, its error lost): lead it to RecordFailure, or "
        "remove the entry so that the Catch of States.ALL takes the error"), message
    message = _contract_refused(_edited(raw, lambda s: _catch_first(
        s, ["StorageError", "AccessDeniedError"], "Note",
        Note={"Type": "Pass", "Next": "Done"}, Done={"Type": "Pass", "End": True})))
    assert message.endswith("): Jobs/Merge: Catch[0] (StorageError, AccessDeniedError) leads to "
                            "Done, a Pass state that ends the job, without RecordFailure: such "
                            "an error ends its job unrecorded (on AWS the run report says "
                            "NoResultError for it, its error lost): lead it to RecordFailure, "
                            "or remove the entry so that the Catch of States.ALL takes the "
                            "error"), message


def test_a_catch_reaching_a_recorder_past_pass_states_or_a_second_recorder_passes(
        raw: dict[str, Any]):
    """The States.ALL entry may lead to RecordFailure past Pass states (one that shapes
    the error, say), and a job's States may hold two Tasks of the record_failure action
    (a second, led to by some states): both were refused, the Pass as no Catch into
    RecordFailure, the second recorder as a state that must catch into the first. A Catch
    entry ahead of States.ALL leading to either passes too."""
    def edit(s: dict[str, Any]) -> None:
        s["Merge"]["Catch"][0]["Next"] = "Shape"
        s["Shape"] = {"Type": "Pass", "Next": "RecordFailure"}
        s["RecordMergeFailure"] = copy.deepcopy(s["RecordFailure"])
        _catch_first(s, ["StorageError"], "RecordMergeFailure")
        s["Split"]["Catch"][0]["Next"] = "RecordMergeFailure"

    assert definition.contract_problems(_edited(raw, edit)) == []


#: what an unknown error name's problem says of the names a Retry or Catch may match
_RULE = ("error class of tiffpipe's, no Python exception) and is no error of Step Functions "
         "(States.*, States.Http.StatusCode.NNN) or AWS Lambda (Lambda.*, Sandbox.*, "
         "Runtime.*), so this entry never matches")


@pytest.mark.parametrize("edit,problem", [
    (lambda s: s["ProcessJob"]["Retry"][1]["ErrorEquals"].__setitem__(4, "StorageEror"),
     ("Jobs/ProcessJob: Retry[1].ErrorEquals names 'StorageEror', which no step raises (no "
      f"{_RULE}: did you mean 'StorageError'?")),
    (lambda s: s["Merge"]["Retry"].insert(0, {"ErrorEquals": ["States.TaskFaild"]}),
     ("Jobs/Merge: Retry[0].ErrorEquals names 'States.TaskFaild', which no step raises (no "
      f"{_RULE}: did you mean 'States.TaskFailed'?")),
    (lambda s: s["Merge"]["Catch"].insert(0, {"ErrorEquals": ["TransientEror"],
                                              "ResultPath": "$.error.Merge",
                                              "Next": "RecordFailure"}),
     ("Jobs/Merge: Catch[0].ErrorEquals names 'TransientEror', which no step raises (no "
      f"{_RULE}: name an error class the steps raise (pipeline/errors.py), a Python "
      "exception, or an error of Step Functions or Lambda")),
    (lambda s: s["Merge"]["Retry"].insert(0, {"ErrorEquals": ["States.Http.StatusCode.5XX"]}),
     ("Jobs/Merge: Retry[0].ErrorEquals names 'States.Http.StatusCode.5XX', which no step "
      f"raises (no {_RULE}: name an error class the steps raise (pipeline/errors.py), a "
      "Python exception, or an error of Step Functions or Lambda")),
])
def test_an_error_name_no_step_raises_is_refused_with_the_one_meant(
        raw: dict[str, Any], edit: Any, problem: str):
    """A Retry or Catch naming an error that nothing raises (a typo) never matches: the
    retries it meant never happen. Refused, naming state, entry and the likely name."""
    message = _contract_refused(_edited(raw, edit))
    assert message.endswith(f"): {problem}"), (problem, message)


def test_the_errors_of_the_steps_lambda_and_step_functions_pass(raw: dict[str, Any]):
    """The names a Retry or Catch may match pass: each error class the steps raise, those
    of pipeline/errors.py and tiffpipe's others wherever defined (EventError in
    core/events.py, UploadsUnchecked in adapters/segments.py, AwsError in aws/), Python's
    builtin exceptions (handlers.dispatch re-raises a step's own: ValueError, KeyError),
    AWS Lambda's own (Lambda.*, Sandbox.Timedout, Runtime.OutOfMemory), and the States
    Language's, an HTTP Task's status codes included (States.Http.StatusCode.503)."""
    names = ["CorruptTiffError", "OutOfMemoryError", "EventError", "UploadsUnchecked",
             "AwsError", "ValueError", "KeyError", "MemoryError", "Lambda.Unknown",
             "Sandbox.Timedout", "Runtime.OutOfMemory", "States.Timeout",
             "States.ExceedToleratedFailureThreshold", "States.HeartbeatTimeout",
             "States.Http.StatusCode.503", "States.Http.StatusCode.404"]
    edited = _edited(raw, lambda s: s["Merge"]["Retry"].insert(0, {"ErrorEquals": names}))
    assert definition.contract_problems(edited) == []


def test_check_finds_an_unknown_placeholder_in_the_text_and_names_its_state(raw):
    """check looks for ``${...}`` in the definition's text first and walks its states only
    when one is unknown (that walk was most of a run's check): the problem still names the
    state and field, and a JSONPath beyond a plain one is still checked."""
    edited = _edited(raw, lambda s: s["ProcessJob"]["Parameters"].update(
        FunctionName="${ResizeFunctionArn}"))
    with pytest.raises(EngineError, match=r"state Jobs > ProcessJob: Parameters.FunctionName: "
                                          r"\$\{ResizeFunctionArn\} is not a placeholder"):
        definition.check(json.dumps(edited), "edited.asl.json")
    edited = _edited(raw, lambda s: s["PlanJob"].update(ResultPath="$$.planned"))
    with pytest.raises(EngineError, match=r"state Jobs > PlanJob: ResultPath '\$\$.planned' "
                                          r"is not a valid reference path"):
        definition.check(json.dumps(edited), "edited.asl.json")


def test_a_passed_definition_is_remembered_by_its_hash_not_its_text(raw):
    """check remembers the texts it passed (a run checks its definition twice): by a hash,
    so a process that checks many edited definitions does not keep each one's text; a text
    passed is not checked again, and a changed one is."""
    text = json.dumps(raw) + "\n\n"
    definition.check(text, "edited.asl.json")
    assert not any(text in key for key in definition._PASSED)
    assert definition.check(text, "edited.asl.json") == raw
    broken = text.replace('"StartAt": "PlanRun"', '"StartAt": "Nope"')
    with pytest.raises(EngineError, match="StartAt names 'Nope'"):
        definition.check(broken, "edited.asl.json")


def test_a_bug_of_the_check_is_an_engine_error_naming_the_definition(raw, monkeypatch):
    """An exception the checks did not foresee is said as their bug, naming the definition,
    not a traceback (deploy.py and the CLI catch EngineError only)."""
    def broken(machine: dict[str, Any]) -> list[str]:
        raise KeyError("Next")

    monkeypatch.setattr(definition, "contract_problems", broken)
    text = json.dumps(raw) + " "  # (not the text another test passed in this process)
    with pytest.raises(EngineError, match=r"^edited.asl.json: checking it failed \(KeyError: "
                                          r"'Next'\): a bug of tiffpipe's definition check"):
        definition.check(text, "edited.asl.json", contract=True)


def test_a_mistyped_type_is_the_one_problem_not_the_states_after_it(raw: dict[str, Any]):
    """A Type typo in a Choice: its Choices still lead on, so the states after it are not
    reported unreachable (12 more problems); a dropped Next, whose states after it are, says
    them together, as what may follow from it."""
    message = _refused(_edited(raw, lambda s: s["Fused"].update(Type="Switch")))
    assert message.endswith("state Jobs > Fused: Type 'Switch' is not one of Task, Pass, "
                            "Choice, Wait, Succeed, Fail, Parallel, Map"), message
    message = _refused(_edited(raw, lambda s: s["PlanJob"].pop("Next")))
    assert message.endswith(
        'state Jobs > PlanJob: has neither Next nor "End": true; states Jobs > Fused, '
        "Jobs > Skipped, Jobs > ProcessJob, Jobs > ProcessUnits, Jobs > Split, "
        "Jobs > NeedsStats, Jobs > Stats, Jobs > ReduceStats, Jobs > ReduceLevel, "
        "Jobs > Process, Jobs > Levels, Jobs > BuildLevels, Jobs > Merge: not reachable from "
        "StartAt (PlanJob) by any Next, Default or Catch (which may follow from the problem "
        "of a Type or a transition before)"), message


def test_unreached_states_are_blamed_on_a_transition_problem_only():
    """States not reachable are said together, as what may follow from a problem before,
    only when a Type or a transition has one: an unrelated problem (a MaxAttempts out of
    range) did not unlink them, so each is named on its own."""
    machine = {"StartAt": "A", "States": {
        "A": {"Type": "Task", "Resource": LAMBDA_INVOKE, "End": True, "Parameters": {
            "FunctionName": "${SplitFunctionArn}", "Payload": {}},
            "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": -1}]},
        "B": _pass(End=True), "C": _pass(End=True)}}
    message = _refused(machine)
    assert message.endswith(
        "state A: Retry[0]: MaxAttempts -1 must be an integer of at least 0; state B: not "
        "reachable from StartAt (A) by any Next, Default or Catch; state C: not reachable "
        "from StartAt (A) by any Next, Default or Catch"), message


def test_the_paths_the_engines_run_pass(raw: dict[str, Any]):
    """JSONPaths beyond reference paths (moto runs them), intrinsic functions, the context
    object and a deployed stack's ARNs pass."""
    machine = {"StartAt": "P", "TimeoutSeconds": 60, "States": {"P": {
        "Type": "Pass", "InputPath": "$.a[0]['b c'].d", "OutputPath": "$..x",
        "ResultPath": "$.out['r'][2]", "Parameters": {
            "f.$": "States.Format('{}', $.a)", "m.$": "$$.Map.Item.Value",
            "l.$": "$.items[?(@.n > 1)]", "s.$": "$.items[1:3]", "w.$": "$.items[*].n",
            "u.$": "$.items[0,2]"}, "End": True}}}
    definition.validate(machine)
    definition.validate(json.loads(definition.render(ARNS)))


# --- (d) payload size ----------------------------------------------------------------------


def _select(selector: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """Apply a ResultSelector of plain ``"key.$": "$.a.b"`` paths."""
    out: dict[str, Any] = {}
    for key, value in selector.items():
        if not key.endswith(".$"):
            out[key] = value
            continue
        assert re.fullmatch(r"\$(\.\w+)+", value), f"unsupported path {value!r}"
        node: Any = doc
        for part in value.split(".")[1:]:
            node = node[part]
        out[key[:-2]] = node
    return out


def _size(obj: Any) -> int:
    return len(json.dumps(obj).encode("utf-8"))


def _lambda_envelope(payload: Any) -> dict[str, Any]:
    """What a lambda:invoke task gets back: the function's payload and the call's metadata."""
    n = str(_size(payload))
    headers = {"Connection": "keep-alive", "Content-Length": n,
               "Content-Type": "application/json", "Date": "Thu, 01 Jan 2026 00:00:00 GMT",
               "X-Amz-Executed-Version": "$LATEST", "x-amzn-Remapped-Content-Length": "0",
               "x-amzn-RequestId": "0" * 36, "X-Amzn-Trace-Id": "Root=1-" + "0" * 33}
    return {"ExecutedVersion": "$LATEST", "Payload": payload, "StatusCode": 200,
            "SdkHttpMetadata": {"AllHttpHeaders": {k: [v] for k, v in headers.items()},
                                "HttpHeaders": headers, "HttpStatusCode": 200},
            "SdkResponseMetadata": {"RequestId": "0" * 36}}


def _plan_job_sizes(doc: dict[str, Any], run_url: str, result: dict[str, Any]) -> dict[str, int]:
    """Sizes of the data around the PlanJob state for plan_job's ``result``."""
    jobs = doc["States"][PER_JOB_MAP]
    plan_state = job_states(doc)[jobs["ItemProcessor"]["StartAt"]]
    item = {"run": run_url, "job": 0, "per_job": 1000}  # what the Jobs map hands each job
    assert {k.removesuffix(".$") for k in jobs["ItemSelector"]} == set(item)
    envelope = _lambda_envelope(result)
    output = dict(item)
    assert re.fullmatch(r"\$\.\w+", plan_state["ResultPath"])
    output[plan_state["ResultPath"][2:]] = _select(plan_state["ResultSelector"], envelope)
    # a Catch later adds the job's error ({"Error", "Cause"}, the cause up to 32 KiB)
    caught = {**output, "error": {"Error": "States.TaskFailed", "Cause": "x" * 32768}}
    return {"plan_job result": _size(result), "PlanJob task result": _size(envelope),
            "PlanJob state output": _size(output), "with a caught error": _size(caught)}


def _assert_fits(sizes: dict[str, int]) -> None:
    report = ", ".join(f"{k}: {v:,} B" for k, v in sizes.items())
    assert max(sizes.values()) < PAYLOAD_LIMIT, (
        f"over Step Functions' {PAYLOAD_LIMIT:,} B payload limit: {report}")


def test_plan_job_payload_of_a_100_gigapixel_page_fits(rendered, tmp_path, monkeypatch):
    """The largest state data: a job's PlanJob result lists every split unit and batch."""
    info = PageInfo(index=0, height=316228, width=316228, channels=3, dtype="uint8",
                    photometric="rgb", extrasamples=[], tiled=True, segment_rows=512,
                    compression="zstd")
    assert info.megapixels >= 100_000
    work = str(tmp_path / "work")
    spec = JobSpec(input=str(tmp_path / "giant.tif"), output=str(tmp_path / "out.tif"),
                   fuse=False)  # the larger payload: units and batches
    run_url = planning.write_run(work, [spec], "r", "m", "r.json")
    monkeypatch.setattr(planning, "read_infos_and_version",
                        lambda url, pages, **kw: ([info], ""))  # (no file there)

    result = stats_step.plan_job(JobEvent(run=run_url, job=0))  # the real step, fake headers
    assert result["tiles"] > 90_000 and len(result["batches"]) > 1000  # a big fan-out
    _assert_fits(_plan_job_sizes(rendered, run_url, result))


def test_largest_plan_job_payload_the_plan_allows_fits(rendered):
    """make_plan refuses jobs of more than MAX_ITEMS units or batches: at that cap (and with
    long S3 URLs) the payload still fits."""
    cap = plan_module.MAX_ITEMS
    work = "s3://" + "b" * 63 + "/" + "w" * 200 + "/jobs/99999"
    result = {"plan": work + "/plan.json", "job": 99999, "units": list(range(cap)),
              "batches": list(range(cap)), "tiles": 10**9, "fused": False, "levels": True,
              "single": False, "skipped": False,
              "stats": {"round": 0, "more": True, "rounds": 99}}
    _assert_fits(_plan_job_sizes(rendered, work.rsplit("/jobs/", 1)[0] + "/run.json", result))
    # a canny round's ReduceStats adds a tree level of as many nodes to $.planned.stats
    sizes = _plan_job_sizes(rendered, work.rsplit("/jobs/", 1)[0] + "/run.json", {
        **result, "stats": {**result["stats"], "level": 99, "nodes": list(range(cap)),
                            "tree": True, "bound": 10**9}})
    _assert_fits(sizes)


def test_a_jobs_steps_read_its_own_record_not_the_whole_run(tmp_path):
    """PlanRun writes every job's spec to one file beside run.json, job-specs.bin (an index,
    then a record a job); PlanJob and RecordFailure read only their entry and record, so a
    run of n jobs reads O(n) bytes, not O(n^2) (each of 10,000 jobs reading a 3 MB
    run.json), and PlanRun writes three files whatever the number of jobs. run.json keeps
    every spec for the report. The process that ran PlanJob keeps the plan it wrote for the
    job's next steps."""
    from test_exactness import make_image, write_tiff

    from pipeline.core.events import FailureEvent
    from pipeline.core.models import JobPlan
    from pipeline.errors import WorkMissingError
    from pipeline.steps import report as report_step
    from pipeline.steps.common import forget_plans, load_job, load_plan

    jobs = []
    for i in range(3):
        write_tiff(tmp_path / f"in{i}.tif", [make_image(7 + i, 40 + i, 30, 1, "uint8")],
                   tiled=True)
        jobs.append({"input": f"in{i}.tif", "output": f"out/{i}.tif",
                     "ops": [{"op": "gaussian_blur", "sigma": 1}]})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": jobs}))
    work = str(tmp_path / "w")
    run_url = planning.plan_run(RunEvent(str(manifest), work, "r1"))["run"]
    run = storage.read_json(run_url)
    assert sorted(os.listdir(work)) == ["job-specs.bin", "jobs.json", "run.json"]
    for i in range(3):
        doc, spec = load_job(run_url, i)
        assert doc == {"work": work, "started_at": run["started_at"], "spec": run["jobs"][i]}
        assert spec.input == str(tmp_path / f"in{i}.tif")
    # an index past the run's jobs (the entry read lands in the records) is a named error
    for job in (3, 10**6, -1):
        with pytest.raises(WorkMissingError, match=f"holds no job {job}"):
            load_job(run_url, job)
    # a job's steps no longer look at run.json: they run with it gone
    os.remove(run_url)
    planned = stats_step.plan_job(JobEvent(run=run_url, job=1))
    plan = storage.read_json(planned["plan"])
    assert plan["spec"]["input"] == str(tmp_path / "in1.tif") and planned["job"] == 1
    assert plan["pages"][0]["info"]["height"] == 41
    # the process that wrote the plan keeps it: its next steps need not read it back
    os.remove(planned["plan"])
    assert load_plan(planned["plan"]) == JobPlan.from_json(plan)
    forget_plans()
    failed = report_step.record_failure(FailureEvent(run=run_url, job=2, error={
        "Error": "States.Timeout", "Cause": "the job timed out"}))
    assert failed == {"job": 2, "status": "FAILED", "error": "States.Timeout"}
    result = storage.read_json(layout.result_file(layout.job_dir(work, 2)))
    assert result["output"] == str(tmp_path / "out" / "2.tif")
    assert result["started_at"] == run["started_at"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_job_specs_read_locally_and_on_s3(tmp_path, monkeypatch, kind):
    """A job's record is read by two ranged reads wherever the work is; an index past the
    run's jobs is the same named error on S3 (which answers InvalidRange) as locally."""
    from moto import mock_aws

    from pipeline.errors import WorkMissingError
    from pipeline.steps.common import load_job

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        monkeypatch.setattr(storage, "_client", None)
        work = str(tmp_path) if kind == "local" else "s3://tp-specs/w"
        if kind == "s3":
            storage.s3_client().create_bucket(Bucket="tp-specs")
        specs = [JobSpec(input=f"/in/{i}.tif", output=f"/out/{i}.tif") for i in range(3)]
        run_url = planning.write_run(work, specs, "r1", "/m.json", "/m.report.json")
        # every read of job-specs.bin: (offset, size) by storage.read_range, and on S3 the
        # Range of each GetObject the client sends (an unranged one would show as None)
        reads: list[tuple[int, int]] = []
        gets: list[str | None] = []
        ranged = storage.read_range
        monkeypatch.setattr(storage, "read_range", lambda url, offset, size, *a, **k: (
            reads.append((offset, size)) or ranged(url, offset, size, *a, **k)))
        if kind == "s3":
            storage.s3_client().meta.events.register(
                "before-parameter-build.s3.GetObject",
                lambda params, **_: gets.append(params.get("Range")))
        entry = layout.JOB_ENTRY.size
        for i in range(3):
            reads.clear()
            gets.clear()
            doc, spec = load_job(run_url, i)
            assert doc["work"] == work and spec == specs[i]
            assert len(reads) == 2 and reads[0] == (entry * i, entry), reads  # entry, record
            if kind == "s3":
                assert gets == [f"bytes={o}-{o + n - 1}" for o, n in reads]
        for job, read in ((3, 1), (10**6, 1), (-1, 0)):  # -1: not even the entry is read
            reads.clear()
            gets.clear()
            with pytest.raises(WorkMissingError, match=f"holds no job {job}"):
                load_job(run_url, job)
            assert len(reads) == read and len(gets) == (read if kind == "s3" else 0)
    assert layout.job_spec_span(layout.pack_job_specs([b"{}"])[:24], 0) == (24, 2)
    assert layout.job_spec_span(b"", 0) is None
