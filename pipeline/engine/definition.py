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
    definition"), and for a syntax error its line and column."""
    source = source or "the state machine definition"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}, column "
                          f"{exc.colno}") from None
    if not isinstance(doc, dict):
        raise EngineError(f"{source}: not a state machine: a JSON object with StartAt and "
                          f"States was expected, not {type(doc).__name__}")
    return doc


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


def limit_concurrency(text: str, total: int) -> str:
    """``text`` with PlanRun's ``concurrency`` set to ``total``. Idempotent: a definition
    limited to ``concurrency_of(it)`` is the same definition."""
    if total < 1:
        raise ValueError(f"concurrency {total}: expected at least 1")
    doc = json.loads(text)
    plan_run_payload(doc)["concurrency"] = min(total, concurrency.largest(0))
    return json.dumps(doc, indent=2) + "\n"
