"""The state machine's side of the estimate: state transitions along each job's success path
and the concurrency of its Map states, read from ``statemachine.asl.json``."""

from __future__ import annotations

import json
from typing import Any

from pipeline.core.concurrency import share
from pipeline.engine.definition import concurrency_in, definition_text
from pipeline.estimate.assumptions import EstimateError


def _choose(name: str, state: dict[str, Any], ctx: dict[str, Any]) -> str | None:
    """The state a Choice goes to for this job. Its rules test what the job's plan says:
    ``...fused`` (the job is fused: ``fused`` in ``ctx``), ``...single`` (a fused job of one
    unit, run whole by one task: ``single``), ``...stats.more`` (statistics
    rounds left: ``rounds_left``, one used up each time that branch is taken) or
    ``...stats.tree`` (the node counts of the canny reduce tree levels that run in a Map,
    in order: ``tree_levels``, see :func:`canny_tree_levels`; each taken sets ``nodes``, the
    ReduceLevel Map's items) or ``...levels`` (a job that is not fused builds its pyramid in
    level units: ``levels``) or ``...skipped`` (the output exists and the job is skipped:
    ``skipped``; the estimate costs every job as run, so never). A rule without a Variable
    counts as ``stats.more``."""
    for rule in state.get("Choices", []):
        last = rule.get("Variable", "").rsplit(".", 1)[-1]
        wanted = bool(rule.get("BooleanEquals", True))
        if last in ("fused", "levels", "single", "skipped"):
            if bool(ctx.get(last)) == wanted:
                return rule["Next"]
        elif last == "tree":  # a level of a canny round's reduce tree runs in a Map
            more = bool(ctx.get("tree_levels"))
            if more == wanted:
                if more:
                    ctx["nodes"] = ctx["tree_levels"].pop(0)
                return rule["Next"]
        elif last in ("more", ""):
            more = ctx.get("rounds_left", 0) > 0
            if more == wanted:
                if more:
                    ctx["rounds_left"] -= 1
                return rule["Next"]
        else:
            raise EstimateError(f"statemachine.asl.json: the Choice state {name} tests "
                                f"{rule.get('Variable')!r}, which the estimate cannot follow")
    return state.get("Default")


def items_of(state: dict[str, Any]) -> str:
    """What a Map iterates over: its ItemsPath's last name (``units``, ``batches``), or
    ``jobs`` for the Map whose items an ItemReader reads (the job list PlanRun writes)."""
    if "ItemReader" in state:
        return "jobs"
    return str(state.get("ItemsPath", "")).rsplit(".", 1)[-1]


def distributed(state: dict[str, Any]) -> bool:
    """Whether a Map state runs in distributed mode (each item a child workflow execution)."""
    proc = state.get("ItemProcessor") or {}
    return (proc.get("ProcessorConfig") or {}).get("Mode") == "DISTRIBUTED"


def count_transitions(definition: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """State transitions of a successful execution, walking the definition: each state
    entered is one; a Map state is one plus its item processor once per item (a Distributed
    Map's child executions are Standard ones: their transitions count the same), and, in
    distributed mode, one more per item: AWS bills each child workflow execution a
    Distributed Map starts as one state transition (Step Functions developer guide,
    "Transitions in Distributed Map state"). Items of a Map: see :func:`items_of`: ``jobs``
    (one per job), ``units``, ``batches`` (the job's). A Choice follows the job: see
    :func:`_choose` (``fused``, ``rounds``)."""

    def walk(states: dict[str, Any], start: str, ctx: dict[str, Any]) -> int:
        count, name, steps = 0, start, 0
        while name:
            steps += 1
            if steps > 10_000:
                raise EstimateError("statemachine.asl.json: a loop that never ends")
            state = states[name]
            count += 1
            kind = state["Type"]
            if kind == "Map":
                proc = state.get("ItemProcessor") or state.get("Iterator")
                key = items_of(state)
                child = int(distributed(state))  # a child execution started: billed as one
                if key == "jobs":
                    for i, job in enumerate(ctx["jobs"]):
                        per = child + walk(proc["States"], proc["StartAt"],
                                           dict(job, rounds_left=job.get("rounds", 0),
                                                tree_levels=list(job.get("tree_levels", []))))
                        per_job[i] = per
                        count += per
                else:
                    count += int(ctx.get(key, 1)) * (
                        child + walk(proc["States"], proc["StartAt"], ctx))
            if kind == "Choice":
                name = _choose(name, state, ctx)
                continue
            name = None if state.get("End") or kind in ("Succeed", "Fail") else state.get("Next")
        return count

    per_job: dict[int, int] = {}
    total = walk(definition["States"], definition["StartAt"], {"jobs": jobs})
    return {"total": total, "per_job": [per_job.get(i, 0) for i in range(len(jobs))]}


def canny_tree_levels(plan: Any) -> list[int]:
    """The node counts of the ReduceLevel Maps a job runs, every canny round's in chain order
    (empty without a canny, or when each round reduces in one task: pages of up to 1,024
    tiles with the default bound)."""
    from pipeline.core.chain import ChainLayout
    from pipeline.core.ops import chain_from_json
    from pipeline.steps.canny_reduce import map_levels

    if not plan.pages:
        return []
    chain = chain_from_json(plan.spec.ops)
    positions = ChainLayout.of(chain, plan.pages[0].info.dtype).rounds
    cannies = sum(chain[p].op.kind == "canny" for p in positions)
    return map_levels(plan) * cannies if cannies else []


def map_limits(definition: dict[str, Any], jobs: int, concurrency: int) -> dict[str, int]:
    """The concurrency of each Map by what it iterates over (:func:`items_of`; 0: unlimited;
    the smallest when several Maps share a name): its MaxConcurrency, or for a
    MaxConcurrencyPath what PlanRun shares out (pipeline/core/concurrency.py) for ``jobs``
    jobs: the jobs at once for the run's own map, the items of a job's map for the others.
    The total shared is the definition's PlanRun ``concurrency`` (deploy.py --concurrency),
    else ``concurrency``: deploy.py's default is the account's Lambda concurrency, which the
    estimate's ``concurrency`` stands for."""
    total = concurrency_in(definition) or concurrency
    at_once, per_job = share(jobs, total)
    out: dict[str, int] = {}

    def visit(states: dict[str, Any], depth: int) -> None:
        for state in states.values():
            if state.get("Type") == "Map":
                key = items_of(state)
                if "MaxConcurrencyPath" in state:  # what PlanRun shares out
                    limit = at_once if depth == 0 else per_job
                else:
                    limit = int(state.get("MaxConcurrency", 0))
                if key not in out or (limit and (not out[key] or limit < out[key])):
                    out[key] = limit
                proc = state.get("ItemProcessor") or state.get("Iterator") or {}
                visit(proc.get("States", {}), depth + 1)

    visit(definition["States"], 0)
    return out


def load_definition() -> dict[str, Any]:
    return json.loads(definition_text())
