"""Typed parameter specs: what an op or option accepts, checked with messages that name the
field."""

from __future__ import annotations

import json
import math
from typing import Any

from pipeline.core.record import record


def show(value: Any, limit: int = 60) -> str:
    """``value`` as JSON, shortened for messages."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@record(frozen=True)
class Param:
    """One parameter: its JSON type, range and default (``required`` when there is no default)."""

    name: str
    kind: str  # "number" | "integer" | "boolean" | "string"
    help: str
    default: Any = None
    required: bool = False
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    lt: float | None = None
    odd: bool = False
    choices: tuple[Any, ...] | None = None
    #: (value, advice) pairs: what to give instead of a value users are likely to try
    hints: tuple[tuple[Any, str], ...] = ()

    def expectation(self) -> str:
        """How a user reads what this parameter accepts: ``a number > 0``, ``an odd integer
        >= 3``."""
        if self.choices is not None:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        noun = {"number": "a number", "integer": "an integer", "boolean": "true or false",
                "string": "a string"}[self.kind]
        if self.odd:
            noun = "an odd integer"
        bounds = []
        for op, value in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)):
            if value is not None:
                bounds.append(f"{op} {_fmt(value)}")
        return noun + ("" if not bounds else " " + " and ".join(bounds))

    def check(self, value: Any) -> str | None:
        """None if ``value`` is acceptable, else the message ``expected ..., got ...``."""
        ok = _type_ok(self.kind, value)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.kind in ("number", "integer"):
            ok = (
                (self.gt is None or value > self.gt)
                and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt)
                and (self.le is None or value <= self.le)
                and (not self.odd or value % 2 == 1)
            )
        if ok:
            return None
        hint = next((f"; {advice}" for bad, advice in self.hints
                     if _type_ok(self.kind, value) and value == bad), "")
        return f"expected {self.expectation()}, got {json.dumps(value)}{hint}"

    def value(self, value: Any) -> Any:
        """The checked ``value`` as the op uses it: an integer's ``2.0`` (JSON has one
        number type) is ``2``."""
        return int(value) if self.kind == "integer" else value

    def describe(self) -> str:
        """One line for ``tiffpipe ops``."""
        tail = "required" if self.required else f"default {json.dumps(self.default)}"
        return f"{self.name}: {self.expectation()} ({tail}): {self.help}"


def _type_ok(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "number":
        return isinstance(value, (int, float)) and math.isfinite(value)  # no NaN, Infinity
    if kind == "integer":  # 2.0 is 2; a float beyond 2**53 (1e100) is no exact integer
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                          and abs(value) <= 2**53)
    if kind == "string":
        return isinstance(value, str)
    return False


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def check_object(obj: Any, params: tuple[Param, ...], path: str,
                 reserved: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """Check a JSON object against ``params``; return (values with defaults, problems).

    Every problem names its JSON path. Unknown keys are problems; keys in ``reserved``
    (such as ``op``) are skipped.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return values, [f"{path}: expected an object, got {json.dumps(obj)}"]
    known = {p.name for p in params}
    for key in obj:
        if key not in known and key not in reserved:
            allowed = ", ".join(sorted(known)) or "none"
            problems.append(f"{path}.{key}: unknown field (allowed: {allowed})")
    for p in params:
        if p.name not in obj:
            if p.required:
                problems.append(f"{path}.{p.name}: required, {p.expectation()}")
            else:
                values[p.name] = p.default
            continue
        message = p.check(obj[p.name])
        if message:
            problems.append(f"{path}.{p.name}: {message}")
        else:
            values[p.name] = p.value(obj[p.name])
    return values, problems
