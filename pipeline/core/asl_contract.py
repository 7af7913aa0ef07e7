"""Check a state machine definition against the payload models of :mod:`pipeline.core.events`.

The definition is walked state by state from ``StartAt``, carrying the *shape* of the state's
data (which fields it holds, and their types) from the execution's input model through every
ResultSelector and ResultPath. Each Task's Payload must build its action's event model
(no unknown field, none missing, each of the right type), each ResultSelector may read only
fields of the action's result model, each Map's ItemSelector only fields of its first
task's event, and each Choice variable and ItemsPath must name a field that is there (a
Boolean rule a bool). Pure: the definition and the models are passed in; the answer is the
list of problems, empty when the definition and the code agree.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Union

from pipeline.core.constants import CATCH_ALL, FUNCTIONS, placeholder

#: a field whose content is not described (a dict[str, Any], a Map's list of results)
ANY = "any"
PRIMITIVES = (str, int, bool, float)
_PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")
#: ARN placeholder -> the function it stands for
PLACEHOLDERS = {placeholder(f): f for f in FUNCTIONS}
_PATH = re.compile(r"\$\$?(?:\.\w+)*")
#: what a Catch puts at its ResultPath
ERROR_SHAPE = {"Error": str, "Cause": str}


@dataclass(frozen=True)
class ListOf:
    item: Any


class Problem(Exception):
    """One disagreement between the definition and the models."""


def shape_of(hint: Any) -> Any:
    """The shape of a type hint: a dict of field shapes for a model, ListOf, a primitive, ANY."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        return {f.name: shape_of(hints[f.name]) for f in dataclasses.fields(hint)}
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return shape_of(args[0]) if len(args) == 1 else ANY
    if origin is list:
        return ListOf(shape_of(typing.get_args(hint)[0]))
    return hint if hint in PRIMITIVES else ANY


def _fits(actual: Any, expected: Any) -> bool:
    if ANY in (actual, expected):
        return True
    if isinstance(expected, ListOf):
        return isinstance(actual, ListOf) and _fits(actual.item, expected.item)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and set(actual) == set(expected) and all(
            _fits(actual[k], v) for k, v in expected.items())
    return actual is expected or (expected is float and actual is int)


def _name(shape: Any) -> str:
    if isinstance(shape, ListOf):
        return f"list of {_name(shape.item)}"
    if isinstance(shape, dict):
        return "object {" + ", ".join(sorted(shape)) + "}"
    return getattr(shape, "__name__", str(shape))


def resolve(path: str, data: Any, context: dict[str, Any]) -> Any:
    """The shape at a JSONPath of the state's data (``$.a.b``) or of the context (``$$.X``)."""
    if path.startswith("States."):  # an intrinsic function: check the paths it reads
        for inner in _PATH.findall(path):
            resolve(inner, data, context)
        return ANY
    if not re.fullmatch(r"\$\$?(\.\w+)*", path):
        raise Problem(f"unsupported path {path!r}")
    parts = path.split(".")
    node, done = data, parts[0]
    if parts[0] == "$$":
        for n in range(len(parts), 1, -1):
            key = ".".join(parts[1:n])
            if key in context:
                node, done, parts = context[key], "$$." + key, ["$$"] + parts[n:]
                break
        else:
            return ANY  # Execution.*, State.*: AWS's own fields
    for part in parts[1:]:
        if node == ANY:
            return ANY
        if not isinstance(node, dict) or part not in node:
            have = f"it holds {_name(node)}" if isinstance(node, dict) else f"it is {_name(node)}"
            raise Problem(f"{path}: no field {part!r} at {done} ({have})")
        node, done = node[part], f"{done}.{part}"
    return node


def build(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """The shape of a Parameters/ItemSelector/ResultSelector/Payload template."""
    if not isinstance(template, dict):
        return type(template) if type(template) in PRIMITIVES else ANY
    out = {}
    for key, value in template.items():
        if key.endswith(".$"):
            out[key[:-2]] = resolve(value, data, context)
        else:
            out[key] = build(value, data, context)
    return out


def put(data: Any, path: str | None, value: Any) -> Any:
    """The data after a ResultPath puts ``value`` at ``path`` (None: the result is dropped)."""
    if path is None:
        return data
    parts = path.split(".")[1:]
    if not parts:
        return value
    if data == ANY:
        return ANY
    head = dict(data) if isinstance(data, dict) else {}
    head[parts[0]] = put(head.get(parts[0], {}), "$." + ".".join(parts[1:]) if parts[1:]
                         else "$", value)
    return head


def _key(shape: Any) -> str:
    if isinstance(shape, dict):
        return "{" + ",".join(f"{k}:{_key(shape[k])}" for k in sorted(shape)) + "}"
    return repr(shape)


class Checker:
    """Walks a definition; ``functions`` is function -> action -> event model (the handlers'
    table), ``results`` action -> result model."""

    def __init__(self, functions: dict[str, dict[str, type]], results: dict[str, type]):
        self.functions = functions
        self.results = results
        self.problems: list[str] = []
        self.actions: set[str] = set()  # the actions of the tasks reached

    def machine(self, machine: dict[str, Any], data: Any, context: dict[str, Any],
                scope: str) -> None:
        states = machine["States"]
        todo, seen, reached = [(machine["StartAt"], data)], set(), set()
        while todo:
            name, shape = todo.pop()
            if (name, _key(shape)) in seen or name not in states:
                continue
            seen.add((name, _key(shape)))
            reached.add(name)
            where = f"{scope}{name}"
            try:
                todo.extend(self.state(states[name], shape, context, where))
            except Problem as exc:
                self.problems.append(f"{where}: {exc}")
                todo.extend((n, ANY) for n in _successors(states[name]))  # go on, unchecked
        for name in sorted(set(states) - reached):
            self.problems.append(f"{scope}{name}: not reachable from {machine['StartAt']}, "
                                 "so not checked")

    def state(self, state: dict[str, Any], data: Any, context: dict[str, Any],
              where: str) -> list[tuple[str, Any]]:
        """Check one state; the states it leads to, with the data each gets."""
        kind = state["Type"]
        if kind == "Task" and isinstance(action := _action(state), str):
            self.actions.add(action)  # (first: named even if the rest of the state is wrong)
        if "InputPath" in state and state["InputPath"] is not None:
            data = resolve(state["InputPath"], data, context)
        nxt: list[tuple[str, Any]] = []
        for catch in state.get("Catch", []):
            nxt.append((catch["Next"], put(data, catch.get("ResultPath", "$"), ERROR_SHAPE)))
        if kind == "Choice":
            for rule in state.get("Choices", []):
                self.rule(rule, data, context)
                nxt.append((rule["Next"], data))
            if "Default" in state:
                nxt.append((state["Default"], data))
            return nxt
        if kind == "Task":
            result = self.task(state, data, context)
        elif kind == "Map":
            result = self.map(state, data, context, where)
        elif kind == "Pass":
            result = build(state["Parameters"], data, context) if "Parameters" in state \
                else build(state["Result"], data, context) if "Result" in state else data
        elif kind == "Parallel":
            for i, branch in enumerate(state["Branches"]):
                self.machine(branch, data, context, f"{where}[{i}]/")
            result = ListOf(ANY)
        else:  # Succeed, Fail, Wait
            result = data
        if "ResultSelector" in state:
            result = build(state["ResultSelector"], result, context)
        out = put(data, state.get("ResultPath", "$"), result)
        if "Next" in state:
            nxt.append((state["Next"], out))
        return nxt

    def rule(self, rule: dict[str, Any], data: Any, context: dict[str, Any]) -> None:
        for inner in rule.get("And", []) + rule.get("Or", []) + [rule.get("Not", {})]:
            if inner:
                self.rule(inner, data, context)
        if "Variable" not in rule:
            return
        shape = resolve(rule["Variable"], data, context)
        test = next((k for k in rule if k not in ("Variable", "Next")), "")
        want = bool if test.startswith("Boolean") else str if test.startswith("String") \
            else float if test.startswith("Numeric") else ANY
        if not _fits(shape, want):
            raise Problem(f"Choice {test} on {rule['Variable']}, which is {_name(shape)}")

    def task(self, state: dict[str, Any], data: Any, context: dict[str, Any]) -> Any:
        params = state.get("Parameters", {})
        if not state["Resource"].startswith("arn:aws:states:::lambda:invoke"):
            return ANY
        function = _function(params)
        if function is None:
            raise Problem(f"FunctionName {params.get('FunctionName')!r} is none of "
                          + ", ".join(f"${{{p}}}" for p in PLACEHOLDERS))
        payload = dict(params.get("Payload", {}))
        if "action.$" in payload:
            raise Problem(f"Payload's action.$ ({payload['action.$']}) picks the action at run "
                          "time, so its event cannot be checked: name it, \"action\": "
                          "\"<action>\"")
        action = _action(state)
        payload.pop("action", None)
        actions = self.functions.get(function, {})
        if action not in actions:
            raise Problem(f"the {function} function has no action {action!r}")
        self.check_event(actions[action], build(payload, data, context), f"Payload of {action}")
        if action not in self.results:
            raise Problem(f"no result model for action {action!r} (events.RESULTS)")
        return {"Payload": shape_of(self.results[action]), "StatusCode": int,
                "ExecutedVersion": str, "SdkHttpMetadata": ANY, "SdkResponseMetadata": ANY}

    def check_event(self, model: type, shape: dict[str, Any], what: str) -> None:
        want = shape_of(model)
        required = {f.name for f in dataclasses.fields(model)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        unknown = sorted(set(shape) - set(want))
        missing = sorted(required - set(shape))
        wrong = [f"{k} is {_name(v)}, {model.__name__} wants {_name(want[k])}"
                 for k, v in shape.items() if k in want and not _fits(v, want[k])]
        if unknown or missing or wrong:
            raise Problem(f"{what} does not build a {model.__name__}: " + "; ".join(
                ([f"unknown field(s) {unknown}"] if unknown else [])
                + ([f"missing field(s) {missing}"] if missing else []) + wrong))

    def map(self, state: dict[str, Any], data: Any, context: dict[str, Any], where: str) -> Any:
        if "MaxConcurrencyPath" in state:
            limit = resolve(state["MaxConcurrencyPath"], data, context)
            if not _fits(limit, int):
                raise Problem(f"MaxConcurrencyPath {state['MaxConcurrencyPath']} is "
                              f"{_name(limit)}, not an int")
        if "ItemReader" in state:
            # items read from S3 (their shape is the reader's), from where the data says
            build(state["ItemReader"].get("Parameters", {}), data, context)
            item = ANY
        else:
            items = resolve(state.get("ItemsPath", "$"), data, context)
            if items != ANY and not isinstance(items, ListOf):
                raise Problem(f"ItemsPath {state.get('ItemsPath')} is {_name(items)}, not a list")
            item = items.item if isinstance(items, ListOf) else ANY
        inner = {**context, "Map.Item.Value": item, "Map.Item.Index": int}
        selector = state.get("ItemSelector", state.get("Parameters"))
        child = item if selector is None else build(selector, data, inner)
        processor = state.get("ItemProcessor") or state["Iterator"]
        first = processor["States"][processor["StartAt"]]
        if selector is not None and first["Type"] == "Task":
            self.check_item(first, child, _concurrency_fields(processor))
        self.machine(processor, child, {}, f"{where}/")
        return ListOf(ANY)

    def check_item(self, first: dict[str, Any], child: dict[str, Any],
                   limits: AbstractSet[str] = frozenset()) -> None:
        """A Map's items hold fields of its first task's event only, and ``limits``: those
        its inner maps read their MaxConcurrencyPath from."""
        action = _action(first)
        model = self.functions.get(_function(first.get("Parameters", {})) or "", {}).get(action)
        if model is not None:
            unknown = sorted(set(child) - {f.name for f in dataclasses.fields(model)} - limits)
            if unknown:
                raise Problem(f"ItemSelector field(s) {unknown} are not fields of "
                              f"{model.__name__}, the event of {action}")


def _concurrency_fields(processor: dict[str, Any]) -> set[str]:
    """The top-level fields of an item processor's input that its Maps' MaxConcurrencyPath
    read (``$.per_job``)."""
    found = set()
    for state in processor.get("States", {}).values():
        path = state.get("MaxConcurrencyPath", "")
        if re.fullmatch(r"\$\.\w+", path):
            found.add(path[2:])
    return found


def _action(state: dict[str, Any]) -> Any:
    """The action a Task state's Payload names (``"action"``; None: it names none)."""
    payload = state.get("Parameters", {}).get("Payload")
    return payload.get("action") if isinstance(payload, dict) else None


def _function(params: dict[str, Any]) -> str | None:
    """The function a lambda:invoke task's FunctionName placeholder names."""
    found = _PLACEHOLDER.match(str(params.get("FunctionName", "")))
    return PLACEHOLDERS.get(found[1]) if found else None


def _successors(state: dict[str, Any]) -> list[str]:
    found = [c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])]
    return found + [state[k] for k in ("Next", "Default") if k in state]


#: the error names of the States Language and Step Functions (all of them "States."), which
#: a Retry or Catch may name besides the errors the functions raise
STATES_ERRORS = frozenset({
    "States.ALL", "States.DataLimitExceeded", "States.ExceedToleratedFailureThreshold",
    "States.HeartbeatTimeout", "States.Http.Socket", "States.IntrinsicFailure",
    "States.ItemReaderFailed", "States.NoChoiceMatched", "States.ParameterPathFailure",
    "States.Permissions", "States.QueryEvaluationError", "States.ResultPathMatchFailure",
    "States.ResultWriterFailed", "States.Runtime", "States.TaskFailed", "States.Timeout",
    "States.BranchFailed"})
#: ... and those named by a pattern: an HTTP Task's response status
#: (``States.Http.StatusCode.503``)
STATES_ERROR_PATTERN = re.compile(r"States\.Http\.StatusCode\.[1-5][0-9][0-9]")
#: the prefixes of the errors AWS Lambda raises for an invocation itself
#: (``Lambda.ServiceException``, ``Sandbox.Timedout``, ``Runtime.OutOfMemory``): taken as
#: they are, Lambda's own list being long and growing
AWS_ERROR_PREFIXES = ("Lambda.", "Sandbox.", "Runtime.")


def each_states(machine: dict[str, Any], scope: str = ""
                 ) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """(scope, States) of ``machine`` (a valid definition: :func:`pipeline.engine.definition.
    validate`) and of each Map's and Parallel's inside it; a scope prefixes its states'
    names as the checker's (``Jobs/``, ``P[0]/``)."""
    found = [(scope, machine["States"])]
    for name, state in machine["States"].items():
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            found += each_states(processor, f"{scope}{name}/")
        for i, branch in enumerate(state.get("Branches", [])):
            found += each_states(branch, f"{scope}{name}[{i}]/")
    return found


def error_name_problems(definition: dict[str, Any], raised: AbstractSet[str]) -> list[str]:
    """Each name of a Retry's or Catch's ErrorEquals that is none of ``raised`` (the errors
    the functions raise: tiffpipe's error classes and Python's builtin exceptions), of
    :data:`STATES_ERRORS` or :data:`STATES_ERROR_PATTERN`, or of AWS Lambda's
    (:data:`AWS_ERROR_PREFIXES`): a typo, whose Retry or Catch never matches."""
    known = raised | STATES_ERRORS
    problems = []
    for scope, states in each_states(definition):
        for name, state in states.items():
            for field in ("Retry", "Catch"):
                for i, handler in enumerate(state.get(field, [])):
                    for error in handler["ErrorEquals"]:
                        if (error in known or error.startswith(AWS_ERROR_PREFIXES)
                                or STATES_ERROR_PATTERN.fullmatch(error)):
                            continue
                        import difflib  # (here only: most definitions have no typo)

                        close = difflib.get_close_matches(error, known, n=1, cutoff=0.8)
                        problems.append(
                            f"{scope}{name}: {field}[{i}].ErrorEquals names {error!r}, which "
                            "no step raises (no error class of tiffpipe's, no Python "
                            "exception) and is no error of Step Functions (States.*, "
                            "States.Http.StatusCode.NNN) or AWS Lambda (Lambda.*, Sandbox.*, "
                            "Runtime.*), so this entry never matches" + (
                                f": did you mean {close[0]!r}?" if close else
                                ": name an error class the steps raise (pipeline/errors.py), "
                                "a Python exception, or an error of Step Functions or "
                                "Lambda"))
    return problems


def _through_passes(states: dict[str, dict[str, Any]], name: str) -> str:
    """The state a transition to ``name`` leads to past Pass states (their Next): the first
    that is not a Pass, or a Pass that ends its States (``"End": true``)."""
    seen = set()
    while states[name]["Type"] == "Pass" and "Next" in states[name] and name not in seen:
        seen.add(name)
        name = states[name]["Next"]
    return name


def uncaught_problems(definition: dict[str, Any], failure: str) -> list[str]:
    """The states of a job that may fail without its failure recorded: in the States holding
    a Task of the ``failure`` action (RecordFailure, the failure path of each job; any of
    them, if more than one), each other Task, Map and Parallel needs a Catch of
    ``States.ALL`` that leads to one (its Next, or past Pass states), and no Catch entry
    of it may lead (past Pass states) to a Fail, a Succeed or an end instead: an error it
    matches would end the job unrecorded before the Catch of ``States.ALL`` sees it."""
    problems = []
    for scope, states in each_states(definition):
        recorders = [name for name, state in states.items()
                     if state["Type"] == "Task" and _action(state) == failure]
        if not recorders:
            continue
        recorder = recorders[0]
        for name, state in states.items():
            if name in recorders or state["Type"] not in ("Task", "Map", "Parallel"):
                continue
            ends = [(i, c, _through_passes(states, c["Next"]))
                    for i, c in enumerate(state.get("Catch", []))]
            if not any(CATCH_ALL in c["ErrorEquals"] and end in recorders
                       for _, c, end in ends):
                problems.append(
                    f"{scope}{name}: no Catch of {CATCH_ALL} leading to {recorder}: an error "
                    f"here (a bad input, say) ends its job without {recorder} recording it: "
                    "on AWS the run report then says NoResultError for the job, its error "
                    "lost, and a map of jobs that tolerates no failure fails the whole "
                    "execution: add "
                    f'{{"ErrorEquals": ["{CATCH_ALL}"], "ResultPath": "$.error.{name}", '
                    f'"Next": "{recorder}"}} to its Catch')
            for i, catch, end in ends:
                last = states[end]
                if (CATCH_ALL in catch["ErrorEquals"] or end in recorders
                        or not (last["Type"] in ("Fail", "Succeed") or last.get("End"))):
                    continue
                errors = ", ".join(catch["ErrorEquals"])
                problems.append(
                    f"{scope}{name}: Catch[{i}] ({errors}) leads to {end}, a {last['Type']} "
                    f"state that ends the job, without {recorder}: such an error ends its job "
                    "unrecorded (on AWS the run report says NoResultError for it, its error "
                    f"lost): lead it to {recorder}, or remove the entry so that the Catch of "
                    f"{CATCH_ALL} takes the error")
    return problems


def check_definition(definition: dict[str, Any], execution_input: type,
                     functions: dict[str, dict[str, type]],
                     results: dict[str, type],
                     needed: dict[str, str] | None = None,
                     raised: AbstractSet[str] | None = None,
                     failure: str | None = None) -> list[str]:
    """Every disagreement between ``definition`` (with its ${...FunctionArn} placeholders) and
    the models; an execution's input is an ``execution_input``. ``needed``: actions (and why)
    that some task reached from StartAt must run; ``raised``: the error names the functions
    raise (:func:`error_name_problems`); ``failure``: the action that records a job's failure
    (:func:`uncaught_problems`)."""
    checker = Checker(functions, results)
    checker.machine(definition, shape_of(execution_input), {}, "")
    for action, why in (needed or {}).items():
        if action not in checker.actions:
            checker.problems.append(f"no Task state runs the {action} action ({why})")
    if failure is not None:
        checker.problems += uncaught_problems(definition, failure)
    if raised is not None:
        checker.problems += error_name_problems(definition, raised)
    return list(dict.fromkeys(checker.problems))  # a state reached twice says it once
