"""The contract between statemachine.asl.json and the code (pipeline/core/events.py).

The definition is walked state by state (pipeline/core/asl_contract.py): every Payload builds
its action's event model, every ResultSelector, Choice variable and later path reads a field
of a result model. Edits of the definition that break the contract are reported, naming the
state and the field. And the handlers return exactly those result models, on a real run of
every action on real TIFFs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pipeline import handlers
from pipeline.core import events
from pipeline.core.asl_contract import check_definition
from pipeline.core.events import EventError, parse_event, to_payload

ROOT = Path(__file__).resolve().parents[1]
MODELS = {f: {a: model for a, (model, _) in acts.items()} for f, acts in handlers.FUNCTIONS.items()}


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    return json.loads((ROOT / "statemachine.asl.json").read_text())


def problems(doc: dict[str, Any]) -> list[str]:
    return check_definition(doc, events.RunInput, MODELS, events.RESULTS)


def states(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state of the definition by name, Map children included (names are unique)."""
    out: dict[str, dict[str, Any]] = {}

    def walk(machine: dict[str, Any]) -> None:
        for name, state in machine["States"].items():
            out[name] = state
            if "ItemProcessor" in state:
                walk(state["ItemProcessor"])
    walk(doc)
    return out


def lambda_tasks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in states(doc).items()
            if s["Type"] == "Task" and "lambda:invoke" in s["Resource"]}


def test_the_definition_keeps_the_contract(definition):
    assert problems(definition) == []


def test_every_action_has_a_result_model_and_every_model_an_action():
    actions = {a for acts in handlers.FUNCTIONS.values() for a in acts}
    assert set(events.RESULTS) == actions
    for model in [*events.RESULTS.values(),
                  *(m for acts in MODELS.values() for m in acts.values())]:
        assert dataclasses.is_dataclass(model) and model.__module__ == events.__name__


def test_the_walk_reaches_every_task(definition):
    """Each lambda task is reached, so each Payload and ResultSelector was checked: breaking
    any one of them is reported."""
    for name in lambda_tasks(definition):
        doc = copy.deepcopy(definition)
        payload = lambda_tasks(doc)[name]["Parameters"]["Payload"]
        payload["bogus.$"] = "$$.Execution.Id"
        assert any((p.startswith(f"{name}: ") or f"/{name}: " in p) and "['bogus']" in p
                   for p in problems(doc)), name


@pytest.mark.parametrize(("edit", "expected"), [
    # a payload key misspelled: the event model has no such field, and misses its own
    (lambda s: s["SplitUnit"]["Parameters"]["Payload"].update(
        {"unti.$": s["SplitUnit"]["Parameters"]["Payload"].pop("unit.$")}),
     ("SplitUnit: Payload of split does not build a UnitEvent: unknown field(s) ['unti']; "
     "missing field(s) ['unit']")),
    # a path to a field the state does not hold
    (lambda s: s["Merge"]["Parameters"]["Payload"].update({"plan.$": "$.planned.plans"}),
     "no field 'plans' at $.planned"),
    # a field of the right name but the wrong type
    (lambda s: s["ReduceStats"]["Parameters"]["Payload"].update({"round.$": "$.planned.stats"}),
     "round is object {bound, level, more, nodes, round, rounds, tree}, ReduceEvent wants int"),
    # a ResultSelector reading a field the result model does not have
    (lambda s: s["PlanJob"]["ResultSelector"].update({"fused.$": "$.Payload.fuse"}),
     "PlanJob: $.Payload.fuse: no field 'fuse' at $.Payload"),
    # a Choice on a field that is not there, or not a bool
    (lambda s: s["Fused"]["Choices"][0].update({"Variable": "$.planned.fuse"}),
     "Fused: $.planned.fuse: no field 'fuse' at $.planned"),
    (lambda s: s["NeedsStats"]["Choices"][0].update({"Variable": "$.planned.stats.rounds"}),
     "Choice BooleanEquals on $.planned.stats.rounds, which is int"),
    # a Map's items that are not a list, and items with a field their task does not take
    (lambda s: s["Process"].update({"ItemsPath": "$.planned.plan"}),
     "ItemsPath $.planned.plan is str, not a list"),
    (lambda s: s["Stats"]["ItemSelector"].update({"page.$": "$$.Map.Item.Index"}),
     "ItemSelector field(s) ['page'] are not fields of StatsEvent"),
    # an action the function does not have
    (lambda s: s["ProcessBatch"]["Parameters"]["Payload"].update({"action": "merge"}),
     "ProcessBatch: the process function has no action 'merge'"),
    # the Jobs map's ItemReader reads a job list PlanRun's result does not name
    (lambda s: s["PlanRun"]["ResultSelector"].pop("items.$"), "no field 'items' at"),
    # what the Jobs map hands each job lacks the run PlanJob and RecordFailure read
    (lambda s: s["Jobs"]["ItemSelector"].pop("run.$"), "no field 'run' at $"),
    # a map's concurrency from a field that is not there, or not an int
    (lambda s: s["Jobs"]["ItemSelector"].pop("per_job.$"), "no field 'per_job' at $"),
    (lambda s: s["PlanRun"]["ResultSelector"].pop("jobs_at_once.$"),
     "no field 'jobs_at_once' at $.planned"),
    (lambda s: s["ProcessUnits"].update({"MaxConcurrencyPath": "$.planned.plan"}),
     "MaxConcurrencyPath $.planned.plan is str, not an int"),
    # PlanRun's payload with a field RunEvent does not have
    (lambda s: s["PlanRun"]["Parameters"]["Payload"].update({"concurency": 10}),
     "unknown field(s) ['concurency']"),
])
def test_a_broken_contract_is_reported(definition, edit, expected):
    doc = copy.deepcopy(definition)
    edit(states(doc))
    found = problems(doc)
    assert any(expected in p for p in found), found


def test_a_task_whose_check_fails_early_still_counts_its_action(definition):
    """A Task state's action is recorded when its check starts: an InputPath that fails
    (before the task's Payload was looked at) added a false "no Task state runs the report
    action" to its own problem."""
    doc = copy.deepcopy(definition)
    states(doc)["Report"]["InputPath"] = "$.nothere"
    found = check_definition(doc, events.RunInput, MODELS, events.RESULTS,
                             {"report": "Report's"})
    assert any(p.startswith("Report: ") and "no field 'nothere'" in p for p in found), found
    assert not any("no Task state runs" in p for p in found), found


def test_an_action_chosen_at_run_time_is_named(definition):
    """A Payload with "action.$" (valid ASL: the action read from the data) was read as no
    action ("the merge function has no action None", and None recorded as an action run):
    now a problem saying the event cannot be checked and to name the action."""
    doc = copy.deepcopy(definition)
    payload = states(doc)["Report"]["Parameters"]["Payload"]
    payload["action.$"] = payload.pop("action") and "$.planned.action"
    found = check_definition(doc, events.RunInput, MODELS, events.RESULTS,
                             {"report": "Report's"})
    assert ("Report: Payload's action.$ ($.planned.action) picks the action at run time, so "
            'its event cannot be checked: name it, "action": "<action>"') in found, found
    assert "no Task state runs the report action (Report's)" in found
    assert not any("None" in p for p in found), found


def test_an_unreachable_state_is_reported(definition):
    doc = copy.deepcopy(definition)
    doc["States"]["Orphan"] = {"Type": "Pass", "End": True}
    assert problems(doc) == ["Orphan: not reachable from PlanRun, so not checked"]


def test_a_result_holding_a_model_parses_into_it():
    planned = parse_event(events.JobPlanned, {
        "plan": "p.json", "job": 0, "units": [0], "batches": [], "tiles": 4, "fused": True,
        "stats": {"round": 0, "more": False, "rounds": 0, "level": 0, "nodes": [],
                  "tree": False, "bound": 0}})
    assert planned.stats == events.StatsRound(round=0, more=False, rounds=0, level=0,
                                              nodes=[], tree=False, bound=0)
    assert to_payload(planned)["stats"] == {"round": 0, "more": False, "rounds": 0,
                                            "level": 0, "nodes": [], "tree": False,
                                            "bound": 0}


def test_a_step_answer_that_is_not_its_model_is_a_named_error():
    with pytest.raises(EventError, match=r"the merge step returned a result that is not a "
                                         r"Merged .*unknown field\(s\) \['pages'\]"):
        handlers.serialised("merge", {"job": 0, "output": "o.tif", "output_bytes": 1,
                                      "pages": 2})
    with pytest.raises(EventError, match=r"not a Reported"):
        handlers.serialised("report", {"report": "r.json", "succeeded": 1})


# --- every action through the handlers, on real TIFFs ----------------------------------------


def _gray(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _checked(function: str, event: dict[str, Any]) -> dict[str, Any]:
    """dispatch's answer, checked to be exactly the serialised result model of the action."""
    answer = handlers.dispatch(function, event)
    model = events.RESULTS[event["action"]]
    assert set(answer) == {f.name for f in dataclasses.fields(model)}
    assert to_payload(parse_event(model, answer)) == answer
    json.dumps(answer)  # what Lambda returns is JSON
    return answer


def test_every_action_returns_its_result_model(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _gray(1, 200, 150), tile=(64, 64))
    manifest = {"defaults": {"tile": 64, "output_options": {"tile": 32}}, "jobs": [
        {"input": "a.tif", "output": "out/eq.tif", "ops": [{"op": "equalize_hist"}]},
        {"input": "a.tif", "output": "out/blur.tif",
         "ops": [{"op": "gaussian_blur", "sigma": 1.5}]},
        {"input": "missing.tif", "output": "out/none.tif"}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    run = _checked("split", {"action": "plan_run", "manifest": str(tmp_path / "m.json"),
                             "work": str(tmp_path / "work"), "run_id": "r1",
                             "report": str(tmp_path / "report.json")})
    assert run["jobs"] == 3
    assert json.loads(Path(events.JobList(**run["items"]).url).read_text()) == [0, 1, 2]

    stats_job = _checked("process", {"action": "plan_job", "run": run["run"], "job": 0})
    assert not stats_job["fused"] and stats_job["stats"] == {
        "round": 0, "more": True, "rounds": 1, "level": 0, "nodes": [], "tree": False,
        "bound": 0}
    plan = stats_job["plan"]
    for unit in stats_job["units"]:
        _checked("split", {"action": "split", "plan": plan, "unit": unit})
    for batch in stats_job["batches"]:
        _checked("process", {"action": "stats", "plan": plan, "batch": batch, "round": 0})
    reduced = _checked("process", {"action": "reduce_stats", "plan": plan, "round": 0})
    assert (reduced["round"], reduced["more"]) == (1, False)
    done = sum(_checked("process", {"action": "process", "plan": plan, "batch": b})["tiles"]
               for b in stats_job["batches"])
    assert done == stats_job["tiles"]
    merged = _checked("merge", {"action": "merge", "plan": plan})
    assert Path(merged["output"]).stat().st_size == merged["output_bytes"]

    fused = _checked("process", {"action": "plan_job", "run": run["run"], "job": 1})
    assert fused["fused"] and fused["batches"] == []
    for unit in fused["units"]:
        _checked("process", {"action": "process_unit", "plan": fused["plan"], "unit": unit})
    _checked("merge", {"action": "merge", "plan": fused["plan"]})

    with pytest.raises(Exception) as failed:
        handlers.dispatch("process", {"action": "plan_job", "run": run["run"], "job": 2})
    error = {"Error": type(failed.value).__name__, "Cause": str(failed.value)}
    recorded = _checked("merge", {"action": "record_failure", "run": run["run"], "job": 2,
                                  "error": error})
    assert recorded["error"] == "InputNotFoundError"

    reported = _checked("merge", {"action": "report", "run": run["run"]})
    assert (reported["succeeded"], reported["failed"]) == (2, 1)
    assert json.loads(Path(reported["report"]).read_text())["succeeded"] == 2
