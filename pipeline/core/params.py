"""Typed parameter specs: what an op or option accepts, checked with messages that name the
field."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable
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
        return f"expected {self.expectation()}, got {json.dumps(value)}{self._hint(value)}"

    def _hint(self, value: Any) -> str:
        """What to give instead of a refused ``value``: its advice in :attr:`hints`, else
        for a string not among the choices the choice it is in another case (GDAL's
        ``DEFLATE``) or misspells (``jpg``: :func:`close_name`), else nothing."""
        if not _type_ok(self.kind, value):
            return ""
        advice = next((advice for bad, advice in self.hints if value == bad), None)
        if advice is not None:
            return f"; {advice}"
        if self.kind != "string" or self.choices is None or value in self.choices:
            return ""
        same = [c for c in self.choices if c.casefold() == value.casefold()]
        if same:
            return f"; choices are lower case: {same[0]}"
        near = close_name(value, self.choices)
        return f"; did you mean {near}?" if near else ""

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
                 reserved: tuple[str, ...] = (), hint: dict[str, str] | None = None
                 ) -> tuple[dict[str, Any], list[str]]:
    """Check a JSON object against ``params``; return (values with defaults, problems).

    Every problem names its JSON path. Unknown keys are problems (with their ``hint``, as
    :func:`unknown_field_problems` adds it); keys in ``reserved`` (such as ``op``) are
    skipped.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return values, [f"{path}: expected an object, got {json.dumps(obj)}"]
    fields = {key: value for key, value in obj.items() if key not in reserved}
    required = [p.name for p in params if p.required]
    unknown, stood_for = unknown_field_problems(fields, [p.name for p in params], path,
                                                required, hint)
    problems.extend(unknown)
    for p in params:
        if p.name not in obj:
            if p.required and p.name not in stood_for:  # (else its misspelling's problem)
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


def close_name(key: Any, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``key`` most likely misspells (difflib's closest match, at
    its usual 0.6 similarity or more: ``gaussian-blur`` for ``gaussian_blur``), or None."""
    if not isinstance(key, str):
        return None
    found = difflib.get_close_matches(key, list(names), n=1)
    return found[0] if found else None


def unknown_field_problems(obj: dict[str, Any], allowed: Iterable[str], path: str,
                           required: Iterable[str] = (), hint: dict[str, str] | None = None
                           ) -> tuple[list[str], set[str]]:
    """A problem for each key of ``obj`` not in ``allowed`` (at ``path``: "" for the top
    level) naming the allowed fields, and the one it most likely misspells (a field not
    given: :func:`close_name`); ``hint``: what to add for some keys (no guess then). A
    misspelling of a ``required`` field that ``obj`` lacks is that field's one problem
    (``ops[0].sigm: unknown field; did you mean sigma?``, not also ``sigma: required``):
    returns (the problems, the required fields so stood for, for the caller not to report
    them missing)."""
    names = sorted(allowed)
    listed = ", ".join(names) or "none"
    required = set(required)
    problems: list[str] = []
    stood_for: set[str] = set()
    for key in obj:
        if key in names:
            continue
        where = f"{path}.{key}" if path else str(key)
        extra = (hint or {}).get(key, "")
        near = None if extra else close_name(key, [n for n in names if n not in obj])
        if near in required and near not in stood_for:
            stood_for.add(near)
            problems.append(f"{where}: unknown field; did you mean {near}?")
        elif near:
            problems.append(f"{where}: unknown field; did you mean {near}? (allowed: {listed})")
        else:
            problems.append(f"{where}: unknown field (allowed: {listed}){extra}")
    return problems, stood_for
