"""The one state machine definition and its ARN placeholders (shared by deploy and the engine)."""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

from pipeline.core import concurrency
from pipeline.core.constants import CATCH_ALL, FUNCTIONS, placeholder
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
#: the only Task resource the local engine serves: a Lambda invoke of one of its functions
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
#: the States Language's JSONPaths (``$.a..b[0]['c'][*]``, ``$$.Map.Item.Value``) and its
#: reference paths (``$.a.b``, ``$.a[0]``, ``$['a']``: no wildcard, filter or deep scan)
_QUOTED = r"""'[^']*'|"[^"]*\""""
_PATH = (
    r"\$\$?(?:\.\.?(?:\*|[^.\[\]\s'\"()*]+)|\.\.(?=\[)|\[\s*(?:\*|-?\d+|" + _QUOTED
    + r"|-?\d*:-?\d*(?::-?\d*)?|(?:-?\d+|" + _QUOTED + r")(?:\s*,\s*(?:-?\d+|" + _QUOTED
    + r"))+|\?\(.*?\))\s*\])*")
_REFERENCE_PATH = r"\$(?:\.[^.\[\]\s'\"()*?@]+|\[(?:\d+|" + _QUOTED + r")\])*"


#: the paths most definitions have only (``$``, ``$.planned.plan``, ``$$.Map.Item.Value``):
#: fields by name, which both kinds of path allow (a reference path: but ``$$``)
_PLAIN_PATH = re.compile(r"\$\$?(?:\.\w+)*")


@functools.lru_cache(maxsize=4096)
def _is_path(path: str, reference: bool) -> bool:
    """Whether ``path`` is a JSONPath (``reference``: a reference path). A plain path is
    told by a small pattern; the full ones are compiled on first use (~0.4 ms, which every
    run paid at this module's import: the shipped definition has plain paths only), and a
    path is checked once (a definition repeats its paths: ``$``, ``$.planned.plan``)."""
    plain = _PLAIN_PATH.fullmatch(path)
    if plain is not None and not (reference and path.startswith("$$")):
        return True
    return re.fullmatch(_REFERENCE_PATH if reference else _PATH, path) is not None


def validate(machine: dict[str, Any], source: str | None = None, text: str | None = None
             ) -> None:
    """The definition checked before a local run, on either interpreter: part of what Step
    Functions' CreateStateMachine checks (not all of it: asl-validator and a deploy check
    more), and what the local engine cannot run. Every field of a state is one its Type has
    (:data:`FIELDS`), and of a Retry's or Catch's entry one they have; every Next, Default,
    Choices' and Catch's Next names a state of the same States; a state other than Choice,
    Succeed and Fail has Next or ``End: true``; every state is reachable from StartAt; every
    path is a JSONPath (ResultPath and MaxConcurrencyPath reference paths); the numbers of
    Retry, Map, Wait and TimeoutSeconds in range; ``States.ALL`` alone and last in a Retry
    or Catch list; a Task's Resource is a Lambda invoke and every ``${...}`` placeholder one
    the engine fills (:data:`PLACEHOLDERS`); the same in every Map's ItemProcessor (or
    Iterator) and Parallel's Branches. An :class:`EngineError` naming ``source``, each state
    and its field (every problem found). ``text``: the JSON ``machine`` was parsed from,
    whose placeholders are looked at first (the states' values are walked for them only if
    one is unknown)."""
    problems = _field_problems(machine, "the definition", _TOP_NUMBERS) \
        if isinstance(machine, dict) else []
    walk = text is None or any(name not in PLACEHOLDERS for name in _PATTERN.findall(text))
    problems += _problems(machine, "", "", walk)
    if problems:
        raise EngineError(f"{source or 'the state machine definition'} is not a valid state "
                          "machine, or not one the local engine runs (checked before any run: "
                          "some of what Step Functions checks, not all of it, docs/local-"
                          "engine.md, \"Checking an edited definition\"): "
                          f"{'; '.join(problems)}")


def check(text: str, source: str | None = None, contract: bool = False) -> dict[str, Any]:
    """``text`` parsed (:func:`parse`) and validated (:func:`validate`); with ``contract``,
    also checked against the code (:func:`contract_problems`): an edited copy given to a run
    (``--definition``, ``definition_text=``), refused with every problem before any work.
    A text that passed is not checked again in this process (a run checks its definition
    as the command reads it and again as its engine starts)."""
    machine = parse(text, source)
    key = (hash(text), len(text))
    if (*key, contract) in _PASSED or (*key, True) in _PASSED:  # (a contract pass: both)
        return machine
    name = source or "the state machine definition"
    try:
        validate(machine, source, text)  # (raises first: the contract needs a valid one)
        problems = contract_problems(machine) if contract else []
    except EngineError:
        raise
    except Exception as exc:  # a bug of these checks, said as such: not a traceback
        raise EngineError(
            f"{name}: checking it failed ({type(exc).__name__}: {exc}): a bug of tiffpipe's "
            "definition check, not necessarily of the definition: please report it with the "
            "definition; meanwhile compare the definition with the shipped "
            "statemachine.asl.json") from exc
    if problems:
        raise EngineError(f"{name} does not fit tiffpipe's code (the events and results of "
                          "pipeline/core/events.py, docs/local-engine.md, \"Checking an "
                          f"edited definition\"): {'; '.join(problems)}")
    _PASSED.add((*key, contract))
    return machine


#: (hash, length, contract) of the definitions' texts :func:`check` passed in this process
#: (not the texts: a long-lived process that checks many would keep them all)
_PASSED: set[tuple[int, int, bool]] = set()


#: the actions a run needs its definition to run, and why (the runner reads what they write)
NEEDED_ACTIONS = {
    "plan_run": "PlanRun's: it checks the manifest and writes the job list the jobs run from",
    "report": "Report's, after the Jobs map: it writes the run report, which the run reads "
              "at its end",
}
#: the action whose Task every other failing state of a job must catch into
FAILURE_ACTION = "record_failure"


def contract_problems(machine: dict[str, Any]) -> list[str]:
    """Every disagreement between a (validated) definition and the code:
    :func:`pipeline.core.asl_contract.check_definition` (each Payload builds its action's
    event, each path reads a field that is there, ...), the actions of
    :data:`NEEDED_ACTIONS` run, each failing state of a job catches into the Task of
    :data:`FAILURE_ACTION`, and each error a Retry or Catch names is one a step raises
    (:func:`step_errors`) or AWS's. A task's FunctionName may be a placeholder or a
    function's name or ARN (a deployed stack's: ``...:function:tiffpipe-prod-split:7``)."""
    import copy

    from pipeline import handlers
    from pipeline.core import events
    from pipeline.core.asl_contract import check_definition, each_states
    from pipeline.engine.execution import function_of

    machine = copy.deepcopy(machine)
    for state in (state for _, states in each_states(machine) for state in states.values()):
        params = state.get("Parameters")
        name = params.get("FunctionName") if isinstance(params, dict) else None
        if isinstance(name, str) and not _PLACEHOLDER_ONLY.fullmatch(name):
            try:
                params["FunctionName"] = "${" + placeholder(function_of(name)) + "}"
            except EngineError:
                pass  # (the check names it)
    models = {f: {action: model for action, (model, _) in actions.items()}
              for f, actions in handlers.FUNCTIONS.items()}
    return check_definition(machine, events.RunInput, models, events.RESULTS, NEEDED_ACTIONS,
                            step_errors(), FAILURE_ACTION)


def step_errors() -> frozenset[str]:
    """The error names the steps raise, which a Retry or Catch may match (Lambda reports an
    exception by its class's name, and ``handlers.dispatch`` re-raises a step's own): every
    subclass of :class:`~pipeline.errors.TiffpipeError`, wherever it is defined
    (``EventError``, ``AwsError``, ``UploadsUnchecked``, ...: the modules of the functions'
    steps, as a Lambda image preloads them, and :mod:`pipeline.aws` imported, the classes
    walked), and Python's builtin exceptions (``ValueError``, ``MemoryError``, ...)."""
    import builtins

    import pipeline.aws  # noqa: F401  (AwsError and its subclasses)
    from pipeline import handlers
    from pipeline.errors import TiffpipeError, _all_subclasses

    for function in handlers.FUNCTIONS:
        handlers.preload(function)
    names = {name for name, value in vars(builtins).items()
             if isinstance(value, type) and issubclass(value, BaseException)}
    return frozenset(names | {c.__name__ for c in (TiffpipeError,
                                                   *_all_subclasses(TiffpipeError))})


_PLACEHOLDER_ONLY = re.compile(r"\$\{\w+\}")


def _listed(state: dict[str, Any], field: str) -> list[Any]:
    """``state[field]`` if it is a list, else [] (its type is a problem of its own:
    :func:`_type_problems`)."""
    value = state.get(field)
    return value if isinstance(value, list) else []


#: a state's fields that must be of one JSON type, as the States Language says
_TYPES: dict[str, tuple[type, str]] = {
    **{f: (list, "a list") for f in ("Choices", "Catch", "Retry", "Branches")},
    **{f: (str, "a state's name (a string)") for f in ("Next", "Default")},
    **{f: (dict, "a JSON object") for f in ("Parameters", "ResultSelector", "ItemSelector",
                                          "ItemReader", "ItemProcessor", "Iterator")},
}


def _type_problems(state: dict[str, Any], kind: str, label: str) -> list[str]:
    """The fields of ``state`` of the wrong JSON type (:data:`_TYPES`; a Lambda task's
    Parameters.Payload: an object, the event of its function's action): each said once, the
    checks after it skip that field."""
    problems = []
    for field, (wanted, what) in _TYPES.items():
        if field in state and not isinstance(state[field], wanted):
            problems.append(f"{label}: {field} must be {what}, not {state[field]!r:.80}")
    params = state.get("Parameters")
    if kind == "Task" and isinstance(params, dict) and "Payload" in params \
            and not isinstance(params["Payload"], dict):
        problems.append(f"{label}: Parameters.Payload must be a JSON object (the event of the "
                        f"function's action, with its \"action\"), not "
                        f"{params['Payload']!r:.80}")
    return problems


#: field -> (the least it may be, whether it must be whole), as the States Language says
_TOP_NUMBERS = {"TimeoutSeconds": (1, True)}
_NUMBERS = {
    "Task": {"TimeoutSeconds": (1, True), "HeartbeatSeconds": (1, True)},
    "Map": {"MaxConcurrency": (0, True), "ToleratedFailureCount": (0, True),
            "ToleratedFailurePercentage": (0, False)},
    "Wait": {"Seconds": (0, True)},
}
_RETRY_NUMBERS = {"MaxAttempts": (0, True), "IntervalSeconds": (1, True),
                  "MaxDelaySeconds": (1, True), "BackoffRate": (1, False)}
#: the paths of a state: field -> whether it must be a reference path
_PATHS = {"InputPath": False, "OutputPath": False, "ItemsPath": False, "ResultPath": True,
          "MaxConcurrencyPath": True, "SecondsPath": True, "TimestampPath": True}
#: the fields of each state Type, JSONata's (Arguments, Output, Assign, QueryLanguage)
#: included, as the States Language and Step Functions' docs list them: CreateStateMachine
#: refuses any other (SCHEMA_VALIDATION_FAILED), where the local engine ignores it
_EVERY = ("Type", "Comment", "QueryLanguage")
_GOES_ON = ("Next", "End", "InputPath", "OutputPath", "Output", "Assign")
_HANDLES = ("Retry", "Catch", "ResultPath", "ResultSelector")
FIELDS: dict[str, frozenset[str]] = {kind: frozenset(_EVERY + more) for kind, more in {
    "Task": _GOES_ON + _HANDLES + (
        "Resource", "Parameters", "Arguments", "Credentials", "TimeoutSeconds",
        "TimeoutSecondsPath", "HeartbeatSeconds", "HeartbeatSecondsPath"),
    "Pass": _GOES_ON + ("Parameters", "Result", "ResultPath"),
    "Choice": ("Choices", "Default", "InputPath", "OutputPath", "Output", "Assign"),
    "Wait": _GOES_ON + ("Seconds", "SecondsPath", "Timestamp", "TimestampPath"),
    "Succeed": ("InputPath", "OutputPath", "Output"),
    "Fail": ("Error", "Cause", "ErrorPath", "CausePath"),
    "Parallel": _GOES_ON + _HANDLES + ("Branches", "Parameters", "Arguments"),
    "Map": _GOES_ON + _HANDLES + (
        "ItemProcessor", "Iterator", "ItemsPath", "Items", "ItemSelector", "Parameters",
        "ItemReader", "ItemBatcher", "ResultWriter", "MaxConcurrency", "MaxConcurrencyPath",
        "ToleratedFailureCount", "ToleratedFailureCountPath", "ToleratedFailurePercentage",
        "ToleratedFailurePercentagePath", "Label"),
}.items()}
#: the fields of a Retry's and a Catch's entries
_HANDLER_FIELDS = {
    "Retry": frozenset({"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate",
                        "MaxDelaySeconds", "JitterStrategy", "Comment"}),
    "Catch": frozenset({"ErrorEquals", "Next", "ResultPath", "Comment", "Output", "Assign"}),
}
#: every field of a state, of whichever Type
_STATE_FIELDS = frozenset().union(*FIELDS.values())
#: the fields of a States' holder: the definition, a Map's ItemProcessor (or its older
#: Iterator), a Parallel's branch; CreateStateMachine refuses any other
_HOLDER_FIELDS = {
    "": ("the definition's top level", frozenset({"StartAt", "States", "Comment", "Version",
                                      "TimeoutSeconds", "QueryLanguage"})),
    "ItemProcessor": ("an ItemProcessor", frozenset({"StartAt", "States", "ProcessorConfig",
                                                     "Comment"})),
    "Iterator": ("an Iterator", frozenset({"StartAt", "States", "Comment"})),
    "Branches": ("a Parallel's branch", frozenset({"StartAt", "States", "Comment"})),
}


def _unknown_fields(fields: Any, known: frozenset[str], label: str, what: str) -> list[str]:
    """The fields of ``fields`` (a state's or a Retry's or Catch's entry) that are not in
    ``known``, those of ``what`` (``a Task state``), each with the likely one meant
    (difflib's closest), or else, as for a field of another Type, the fields there are."""
    problems = []
    for field in fields:
        if field in known:
            continue
        import difflib  # (here only: a definition with no unknown field does not pay it)

        close = [] if field in _STATE_FIELDS else \
            difflib.get_close_matches(str(field), known, n=1)
        fix = f"did you mean {close[0]!r}?" if close else \
            f"remove it, or use one of {what}'s: {', '.join(sorted(known))}"
        problems.append(f"{label}: unknown field {field!r} of {what}: {fix} (Step Functions "
                        "refuses it, SCHEMA_VALIDATION_FAILED, where the local engine would "
                        "ignore it)")
    return problems


def _field_problems(state: dict[str, Any], label: str, numbers: dict[str, tuple[int, bool]]
                    ) -> list[str]:
    """The fields of ``numbers`` out of range in ``state`` (or the definition)."""
    problems = []
    for field, (least, whole) in numbers.items():
        value = state.get(field, least)
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                or value < least or (field == "ToleratedFailurePercentage" and value > 100):
            kind = "an integer" if whole else "a number"
            most = " and at most 100" if field == "ToleratedFailurePercentage" else ""
            problems.append(f"{label}: {field} {value!r} must be {kind} of at least "
                            f"{least}{most}")
    return problems


def _path_problem(path: Any, field: str, reference: bool) -> str | None:
    """Why ``path`` (the value of ``field``) is not a JSONPath (``reference``: a reference
    path), or None. Intrinsic functions (``States.Format(...)``) and variables (``$name``)
    are left to the interpreters (moto runs the first, and refuses the second up front)."""
    if path is None and field in ("InputPath", "OutputPath", "ResultPath"):
        return None  # (null: {} in, {} out, the input passed on)
    if not isinstance(path, str):
        return f"{field} {path!r} is not a path (a string starting with $)"
    if path.startswith("States.") and not reference or re.match(r"\$[A-Za-z_]", path):
        return None
    if not _is_path(path, reference):
        kind = "reference path ($, then .field, ['field'] or [index] only)" if reference \
            else "JSONPath"
        return f"{field} {path!r} is not a valid {kind}"
    return None


def _template_paths(template: Any, field: str) -> list[str]:
    """The problems of the paths of a Parameters, ResultSelector or ItemSelector template
    (its ``key.$`` values), each named by its place (``Parameters.Payload.plan.$``)."""
    problems: list[str] = []
    if isinstance(template, dict):
        for key, value in template.items():
            if isinstance(key, str) and key.endswith(".$"):
                problem = _path_problem(value, f"{field}.{key}", False)
                problems += [problem] if problem else []
            else:
                problems += _template_paths(value, f"{field}.{key}")
    elif isinstance(template, list):
        for i, value in enumerate(template):
            problems += _template_paths(value, f"{field}[{i}]")
    return problems


def _rule_paths(rule: Any, field: str) -> list[str]:
    """The problems of a choice rule's paths (its Variable, a ``...Path`` comparison's
    value), And, Or and Not included."""
    if not isinstance(rule, dict):
        return []
    problems = []
    for key, value in rule.items():
        if key == "Variable" or key.endswith("Path"):
            problem = _path_problem(value, f"{field}.{key}", False)
            problems += [problem] if problem else []
        elif key in ("And", "Or") and isinstance(value, list):
            for i, inner in enumerate(value):
                problems += _rule_paths(inner, f"{field}.{key}[{i}]")
        elif key == "Not":
            problems += _rule_paths(value, f"{field}.Not")
    return problems


def _handler_problems(state: dict[str, Any], label: str) -> list[str]:
    """A Retry's and Catch's lists: ErrorEquals a non-empty list of names, ``States.ALL``
    alone in it and only in the list's last entry; a retrier's numbers in range."""
    problems = []
    for field in ("Retry", "Catch"):
        handlers = state.get(field) or []
        for i, handler in enumerate(handlers if isinstance(handlers, list) else []):
            where = f"{label}: {field}[{i}]"
            if isinstance(handler, dict):
                problems += _unknown_fields(handler, _HANDLER_FIELDS[field], where,
                                            f"a {field} entry")
            names = handler.get("ErrorEquals") if isinstance(handler, dict) else None
            if not isinstance(names, list) or not names or not all(
                    isinstance(n, str) for n in names):
                problems.append(f"{where}.ErrorEquals must be a non-empty list of error names")
                continue
            if CATCH_ALL in names and (len(names) > 1 or i < len(handlers) - 1):
                problems.append(f"{where}.ErrorEquals: {CATCH_ALL} must be alone in its "
                                f"ErrorEquals and in the last entry of {field} (it matches every "
                                "error: an entry after it would never be used)")
            if field == "Retry":
                problems += _field_problems(handler, where, _RETRY_NUMBERS)
                jitter = handler.get("JitterStrategy", "NONE")
                if jitter not in ("FULL", "NONE"):
                    problems.append(f"{where}: JitterStrategy {jitter!r} must be FULL or NONE")
    return problems


def _placeholder_problems(value: Any, field: str) -> list[str]:
    """Each ``${...}`` in a state's values that is not a placeholder the engine fills."""
    if isinstance(value, str):
        return [f"{field}: ${{{name}}} is not a placeholder the engine fills (it fills "
                f"{', '.join('${' + p + '}' for p in PLACEHOLDERS)})"
                for name in _PATTERN.findall(value) if name not in PLACEHOLDERS]
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else []
    problems = []
    for key, inner in items:
        if key not in ("ItemProcessor", "Iterator", "Branches"):  # (their states say it)
            problems += _placeholder_problems(inner, f"{field}.{key}" if field else str(key))
    return problems


def _state_problems(state: dict[str, Any], kind: str, label: str, placeholders: bool = True
                    ) -> list[str]:
    """What of one state, besides its transitions, is refused: a field its Type does not have
    (:data:`FIELDS`), its paths, numbers, Retry and Catch, Resource and (``placeholders``)
    placeholders."""
    problems = _unknown_fields(state, FIELDS[kind], label, f"a {kind} state")
    problems += _type_problems(state, kind, label)
    problems += _field_problems(state, label, _NUMBERS.get(kind, {}))
    for field, reference in _PATHS.items():
        if field in state:
            problem = _path_problem(state[field], field, reference)
            problems += [f"{label}: {problem}"] if problem else []
    for field in ("Parameters", "ResultSelector", "ItemSelector"):
        problems += [f"{label}: {p}" for p in _template_paths(state.get(field), field)]
    reader = state.get("ItemReader")
    if isinstance(reader, dict):
        problems += [f"{label}: {p}" for p in _template_paths(reader.get("Parameters"),
                                                              "ItemReader.Parameters")]
    for i, rule in enumerate(_listed(state, "Choices") if kind == "Choice" else []):
        problems += [f"{label}: {p}" for p in _rule_paths(rule, f"Choices[{i}]")]
    problems += _handler_problems(state, label)
    if kind == "Task" and state.get("Resource") != LAMBDA_INVOKE:
        problems.append(f"{label}: Resource {state.get('Resource')!r} is not a task the local "
                        f"engine runs: it runs {LAMBDA_INVOKE} of its functions only (a "
                        "FunctionName of " + ", ".join("${" + p + "}" for p in PLACEHOLDERS)
                        + ", or a function's name or ARN ending -split, -process or -merge)")
    if placeholders:
        problems += [f"{label}: {p}" for p in _placeholder_problems(state, "")]
    return problems


def _transitions(state: dict[str, Any], kind: Any, label: str
                 ) -> tuple[list[tuple[str, Any]], list[str]]:
    """A state's transitions (field, target) and the problems of its Next and End. A state
    whose Type is wrong still has the transitions it names (so the states after it are
    reachable: its Type is the one problem)."""
    problems: list[str] = []
    targets: list[tuple[str, Any]] = []
    if kind == "Choice" or kind not in STATE_TYPES and "Choices" in state:
        choices = state.get("Choices")
        if not isinstance(choices, list) or not choices:
            if isinstance(choices, list) or kind not in STATE_TYPES:  # (else: a type problem)
                problems.append(f"{label}: Choices must be a non-empty list of rules")
            choices = []
        for i, rule in enumerate(choices):
            targets.append((f"Choices[{i}].Next", rule.get("Next")
                            if isinstance(rule, dict) else None))
        if "Default" in state:
            targets.append(("Default", state["Default"]))
    elif kind not in _TERMINAL:
        has_next, ends = "Next" in state, state.get("End") is True
        if kind in STATE_TYPES and has_next and ends:
            problems.append(f"{label}: has both Next and End")
        elif kind in STATE_TYPES and not has_next and not ends:
            problems.append(f"{label}: has neither Next nor \"End\": true")
        if has_next:
            targets.append(("Next", state["Next"]))
    for i, catcher in enumerate(_listed(state, "Catch")):
        targets.append((f"Catch[{i}].Next", catcher.get("Next")
                        if isinstance(catcher, dict) else None))
    # a Next or Default of the wrong type is said by _type_problems (a state of a known Type)
    known = [(f, t) for f, t in targets if isinstance(t, str) or f.startswith(("Catch",
                                                                              "Choices"))]
    if kind not in STATE_TYPES:
        problems += [f"{label}: {f} must be a state's name (a string), not {t!r:.80}"
                     for f, t in targets if (f, t) not in known]
    return known, problems


def _problems(machine: Any, scope: str, within: str, placeholders: bool = True,
              holder: str = "") -> list[str]:
    """The structural problems of one States: ``scope`` prefixes its states' names (``Jobs >
    Merge``), ``within`` says where it is (``the ItemProcessor of Jobs``); both "" at the top.
    ``holder``: the field that holds it (:data:`_HOLDER_FIELDS`: "" the definition), whose
    fields it may have. States not reachable are named each, or together, as what may
    follow from the problems before, when a Type or a transition of this States has one (a
    Next mistyped, a Choices that is no list)."""
    where = f" in {within}" if within else ""
    states = machine.get("States") if isinstance(machine, dict) else None
    if not isinstance(states, dict) or not states:
        return [f"{within or 'the definition'}: no States"]
    what, known = _HOLDER_FIELDS[holder]
    unknown = _unknown_fields(machine, known, within or "the definition", what)
    start = machine.get("StartAt")
    if not isinstance(start, str):
        return [(f"{within or 'the definition'}: StartAt must be a state's name (a string), "
                 f"not {start!r:.80}")]
    if start not in states:
        return [(f"{within or 'the definition'}: StartAt names {start!r}, which is not a "
                 f"state{where}")]
    problems: list[str] = unknown
    inner_problems: list[str] = []
    edges: dict[str, list[str]] = {}
    misled = 0  # the problems of a Type or a transition: those that may leave states unreached
    for name, state in states.items():
        label = f"state {scope} > {name}" if scope else f"state {name}"
        if not isinstance(state, dict):
            problems.append(f"{label}: {state!r} is not a state (a JSON object with a Type)")
            continue
        kind = state.get("Type")
        before = len(problems)
        if kind not in STATE_TYPES:
            problems.append(f"{label}: Type {kind!r} is not one of {', '.join(STATE_TYPES)}")
        targets, wrong = _transitions(state, kind, label)
        problems += wrong
        for field, target in targets:
            if not isinstance(target, str) or target not in states:
                problems.append(f"{label}: {field} names {target!r}, which is not a "
                                f"state{where}")
        misled += len(problems) - before
        if kind in STATE_TYPES:
            wrong = _state_problems(state, kind, label, placeholders)
            misled += sum(f"{label}: {f} must be" in p for p in wrong
                          for f in ("Next", "Default", "Choices", "Catch"))
            problems += wrong
        edges[name] = [t for _, t in targets if isinstance(t, str) and t in states]
        inner = f"{scope} > {name}" if scope else name
        if kind == "Map":
            key = "ItemProcessor" if "ItemProcessor" in state else "Iterator"
            inner_problems += _problems(state.get(key), inner, f"the {key} of {inner}",
                                        placeholders, key)
        for i, branch in enumerate(_listed(state, "Branches") if kind == "Parallel" else []):
            inner_problems += _problems(branch, f"{inner}[{i}]", f"Branches[{i}] of {inner}",
                                        placeholders, "Branches")
    reached, todo = {start}, [start]
    while todo:
        for target in edges.get(todo.pop(), []):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    lost = [f"{scope} > {name}" if scope else name for name in states if name not in reached]
    how = f"not reachable from StartAt ({start}) by any Next, Default or Catch"
    if lost and misled:  # (a mistyped Next leaves the states after it unreached)
        problems.append(f"state{'s' if len(lost) > 1 else ''} {', '.join(lost)}: {how} "
                        f"(which may follow from the problem{'s' if misled > 1 else ''} of a "
                        "Type or a transition before)")
    else:
        problems += [f"state {name}: {how}" for name in lost]
    return problems + inner_problems


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
