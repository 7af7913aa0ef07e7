"""The one state machine definition and its ARN placeholders (shared by deploy and the engine)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pipeline.core import concurrency
from pipeline.core.constants import FUNCTIONS, placeholder
from pipeline.errors import EngineError

#: placeholder name -> the function (image) it stands for
PLACEHOLDERS = {placeholder(f): f for f in FUNCTIONS}
_PATTERN = re.compile(r"\$\{(\w+)\}")


#: the definition inside the package: in a checkout, a symlink to the top-level
#: statemachine.asl.json (the file users edit and deploy); a wheel holds a copy of it
RESOURCE = "statemachine.asl.json"


def definition_path() -> str:
    """Where the shipped definition is, as messages name it: the package's file (in a clone,
    the symlink to the top-level statemachine.asl.json), else its name."""
    import pipeline

    path = os.path.join(os.path.dirname(pipeline.__file__), RESOURCE)
    return os.path.realpath(path) if os.path.isfile(path) else RESOURCE


def definition_text() -> str:
    """statemachine.asl.json, as shipped in the package (the checkout's own, through the
    symlink, when run from a clone or an editable install). Read from the package's folder
    when it has one (importlib.resources costs ~2.5 ms of a tiny run's ~40 ms the first
    time), else through importlib.resources (a zipped package)."""
    import pipeline

    path = os.path.join(os.path.dirname(pipeline.__file__), RESOURCE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    from importlib import resources  # imported here only: importing it is that cost

    return resources.files("pipeline").joinpath(RESOURCE).read_text(encoding="utf-8")


def parse(text: str, source: str | None = None) -> dict[str, Any]:
    """The definition ``text`` parsed. Text that is not a JSON object is an
    :class:`EngineError` naming ``source`` (the file; default: "the state machine
    definition"), and for a syntax error its line and column, what is likely wrong and the
    line with a caret, as a manifest's (:func:`pipeline.core.manifest.json_problem`)."""
    source = source or "the state machine definition"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        from pipeline.core.manifest import json_problem  # (its import: the ops, numpy)

        raise EngineError(f"{source}: {json_problem(text, exc)}") from None
    if not isinstance(doc, dict):
        raise EngineError(f"{source}: not a state machine: a JSON object with StartAt and "
                          f"States was expected, not {type(doc).__name__}")
    return doc


#: the States Language's state types
STATE_TYPES = ("Task", "Pass", "Choice", "Wait", "Succeed", "Fail", "Parallel", "Map")
#: the state types that end an execution (or a branch) themselves: no Next, no End
_TERMINAL = ("Choice", "Succeed", "Fail")


def validate(machine: dict[str, Any], source: str | None = None) -> None:
    """What Step Functions' CreateStateMachine checks of the states' structure, checked before
    a local run: every Next, Default, Choices' and Catch's Next names a state of the same
    States; a state other than Choice, Succeed and Fail has Next or ``End: true``; every
    state is reachable from StartAt; the same in every Map's ItemProcessor (or Iterator) and
    Parallel's Branches. An :class:`EngineError` naming ``source``, each state and its field
    (every problem found)."""
    problems = _problems(machine, "", "")
    if problems:
        raise EngineError(f"{source or 'the state machine definition'} is not a valid state "
                          f"machine (Step Functions would refuse it): {'; '.join(problems)}")


def check(text: str, source: str | None = None) -> dict[str, Any]:
    """``text`` parsed (:func:`parse`) and validated (:func:`validate`)."""
    machine = parse(text, source)
    validate(machine, source)
    return machine


def _problems(machine: Any, scope: str, within: str) -> list[str]:
    """The structural problems of one States: ``scope`` prefixes its states' names (``Jobs >
    Merge``), ``within`` says where it is (``the ItemProcessor of Jobs``); both "" at the top."""
    where = f" in {within}" if within else ""
    states = machine.get("States") if isinstance(machine, dict) else None
    if not isinstance(states, dict) or not states:
        return [f"{within or 'the definition'}: no States"]
    start = machine.get("StartAt")
    if start not in states:
        return [(f"{within or 'the definition'}: StartAt names {start!r}, which is not a "
                 f"state{where}")]
    problems: list[str] = []
    edges: dict[str, list[str]] = {}
    for name, state in states.items():
        label = f"state {scope} > {name}" if scope else f"state {name}"
        if not isinstance(state, dict) or state.get("Type") not in STATE_TYPES:
            kind = state.get("Type") if isinstance(state, dict) else state
            problems.append(f"{label}: Type {kind!r} is not one of {', '.join(STATE_TYPES)}")
            continue
        kind = state["Type"]
        targets: list[tuple[str, Any]] = []
        if kind == "Choice":
            choices = state.get("Choices")
            if not isinstance(choices, list) or not choices:
                problems.append(f"{label}: Choices must be a non-empty list of rules")
                choices = []
            for i, rule in enumerate(choices):
                targets.append((f"Choices[{i}].Next", rule.get("Next")
                                if isinstance(rule, dict) else None))
            if "Default" in state:
                targets.append(("Default", state["Default"]))
        elif kind not in _TERMINAL:
            has_next, ends = "Next" in state, state.get("End") is True
            if has_next and ends:
                problems.append(f"{label}: has both Next and End")
            elif not has_next and not ends:
                problems.append(f"{label}: has neither Next nor \"End\": true")
            if has_next:
                targets.append(("Next", state["Next"]))
        for i, catcher in enumerate(state.get("Catch") or []):
            targets.append((f"Catch[{i}].Next", catcher.get("Next")
                            if isinstance(catcher, dict) else None))
        for field, target in targets:
            if target not in states:
                problems.append(f"{label}: {field} names {target!r}, which is not a "
                                f"state{where}")
        edges[name] = [t for _, t in targets if t in states]
        inner = f"{scope} > {name}" if scope else name
        if kind == "Map":
            key = "ItemProcessor" if "ItemProcessor" in state else "Iterator"
            problems += _problems(state.get(key), inner, f"the {key} of {inner}")
        for i, branch in enumerate(state.get("Branches") or [] if kind == "Parallel" else []):
            problems += _problems(branch, f"{inner}[{i}]", f"Branches[{i}] of {inner}")
    reached, todo = {start}, [start]
    while todo:
        for target in edges.get(todo.pop(), []):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    for name in states:
        if name not in reached:
            label = f"state {scope} > {name}" if scope else f"state {name}"
            problems.append(f"{label}: not reachable from StartAt ({start}) by any Next, "
                            "Default or Catch")
    return problems


def render(arns: dict[str, str], text: str | None = None, source: str | None = None) -> str:
    """The definition with every ``${...FunctionArn}`` replaced by the function's ARN.

    ``arns`` maps function names (split, process, merge) to ARNs; a placeholder left
    unfilled is an error, so no definition with placeholders is ever deployed. Text that is
    not JSON is an :class:`EngineError` naming ``source`` (the file: the shipped one's path
    without ``text``), the line and the column.
    """
    if text is None:
        text, source = definition_text(), source or definition_path()
    parse(text, source)  # before the ARNs go in: the line and column of the file itself

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PLACEHOLDERS or PLACEHOLDERS[name] not in arns:
            raise KeyError(f"statemachine.asl.json: no ARN for placeholder ${{{name}}}")
        return arns[PLACEHOLDERS[name]]

    return _PATTERN.sub(fill, text)


# --- how many Lambda invocations a run makes at once -----------------------------------------


def plan_run_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """The Payload of the definition's PlanRun task (the Task whose action is plan_run)."""
    for state in doc["States"].values():
        payload = state.get("Parameters", {}).get("Payload", {})
        if isinstance(payload, dict) and payload.get("action") == "plan_run":
            return payload  # type: ignore[no-any-return]
    raise KeyError("statemachine.asl.json: no Task state whose Payload action is plan_run")


def concurrency_setting(text: str) -> int:
    """PlanRun's ``concurrency`` in the definition ``text``: the most Lambda invocations a
    run makes at once, which PlanRun shares out between the run's jobs (0: not set, see
    :func:`concurrency_of`)."""
    return concurrency_in(json.loads(text))


def concurrency_in(doc: dict[str, Any]) -> int:
    """:func:`concurrency_setting` of a parsed definition."""
    return int(plan_run_payload(doc).get("concurrency", 0))


def concurrency_of(text: str) -> int:
    """The most Lambda invocations a run of the definition ``text`` makes at once (without a
    setting: the jobs at once times the items of one job's map, pipeline/core/concurrency.py)."""
    return concurrency.largest(concurrency_setting(text))


def concurrency_change(before: str, after: str) -> str | None:
    """What going from the definition ``before`` to ``after`` does to a run's Lambda
    concurrency, as deploy.py says it (``concurrency 80 -> 50``; None: the same, or a
    definition without PlanRun)."""
    try:
        old, new = concurrency_of(before), concurrency_of(after)
    except KeyError:  # (not tiffpipe's state machine)
        return None
    return None if old == new else f"concurrency {old} -> {new}"


def differs_besides_concurrency(before: str, after: str) -> bool:
    """Whether the two definitions differ in more than PlanRun's ``concurrency``."""
    docs = [json.loads(before), json.loads(after)]
    for doc in docs:
        try:
            plan_run_payload(doc).pop("concurrency", None)
        except KeyError:
            pass
    return docs[0] != docs[1]


def limit_concurrency(text: str, total: int) -> str:
    """``text`` with PlanRun's ``concurrency`` set to ``total``. Idempotent: a definition
    limited to ``concurrency_of(it)`` is the same definition."""
    if total < 1:
        raise ValueError(f"concurrency {total}: expected at least 1")
    doc = json.loads(text)
    plan_run_payload(doc)["concurrency"] = min(total, concurrency.largest(0))
    return json.dumps(doc, indent=2) + "\n"
