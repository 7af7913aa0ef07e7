"""The tables of fields the docs give of tiffpipe's JSON (the run report, ``inspect --json``,
``estimate --json``, ``ops --json``), checked against real documents, so that a table cannot
go stale: each field of a real document must be in its table, with the type the table says,
and each field the table says is always there (or there for a job of a status) must be there.

A table is the first Markdown table under a heading of a page, a row a field: its path in
backticks (``jobs[].error.step``: ``[]`` an item of a list, ``<name>`` any key of an object
whose keys are names, such as the steps of an estimate; several paths of one type and
meaning in a cell, each in backticks), its type (``integer``, ``number``,
``string``, ``boolean``, ``object``, ``list``, ``null``, joined by `` or ``; ``list of ...``
is a list), when it is there (``always``, where the object holding it is; the statuses of
the jobs that always have it, ``SUCCEEDED, SKIPPED``, then, after ``;``, when others may;
anything else: only sometimes, not checked), and what it means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATUSES = {"SUCCEEDED", "FAILED", "SKIPPED"}
TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,),
    "object": (dict,), "list": (list,), "null": (type(None),)}


@dataclass(frozen=True)
class Field:
    path: str
    types: tuple[type, ...]
    when: str

    def matches(self, path: str) -> bool:
        return re.fullmatch(_pattern(self.path), path) is not None

    def required_in(self, holder: dict[str, Any]) -> bool:
        """Whether an object at the field's parent must have it."""
        if self.when == "always":
            return True
        statuses = {s.strip() for s in self.when.split(";")[0].split(",")}
        return statuses <= STATUSES and holder.get("status") in statuses


def _pattern(path: str) -> str:
    return "".join(r"[^.\[\]]+" if part.startswith("<") else re.escape(part)
                   for part in re.split(r"(<[a-z_ ]+>)", path))


def table(page: str, heading: str) -> list[Field]:
    """The fields of the table under ``heading`` (a line ``## ...`` or ``### ...``) of
    docs/``page``."""
    lines = (ROOT / "docs" / page).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("#") and line.lstrip("#").strip() == heading)
    fields = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not cells[0].startswith("`"):
            if fields:
                break  # the table's end
            continue
        kinds = re.sub(r"\blist of \w+", "list", cells[1]).split(" or ")
        types = sum((TYPES[k.strip()] for k in kinds), ())
        fields += [Field(path, types, cells[2]) for path in re.findall(r"`([^`]+)`", cells[0])]
    assert fields, f"docs/{page}: no table of fields under {heading!r}"
    return fields


def _walk(value: Any, path: str, seen: dict[str, list[tuple[Any, dict[str, Any]]]],
          holder: dict[str, Any] | None) -> None:
    if path:
        seen.setdefault(path, []).append((value, holder or {}))
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{path}.{key}" if path else key, seen, value)
    elif isinstance(value, list):
        for item in value:
            _walk(item, f"{path}[]", seen, holder)


def check(documents: list[dict[str, Any]], fields: list[Field], where: str,
          opaque: tuple[str, ...] = ()) -> None:
    """Each field of ``documents`` (their paths; those under an ``opaque`` one not walked:
    a document kept whole, as a report's ``last_run``) is in ``fields``, of its type, and
    each object holding a field that ``fields`` says it always has has it."""
    seen: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for doc in documents:
        _walk(doc, "", seen, None)
    undocumented, wrong = [], []
    for path, values in seen.items():
        if path.endswith("[]") or any(path.startswith((f"{o}.", f"{o}[]")) for o in opaque):
            continue  # (an item of a list: its type is the list's, "list of ...")
        field = next((f for f in fields if f.matches(path)), None)
        if field is None:
            undocumented.append(path)
            continue
        wrong += [f"{path}: {value!r}" for value, _ in values
                  if not isinstance(value, field.types)
                  or (isinstance(value, bool) and bool not in field.types)]
    assert not undocumented, f"{where} does not document {sorted(undocumented)}"
    assert not wrong, f"{where} says another type of {wrong}"
    missing = []
    for field in fields:
        parent, _, key = field.path.rpartition(".")
        if key.startswith("<"):
            continue  # (the keys of an object of names: whichever it has)
        missing += [field.path for holder in _holders(seen, documents, parent)
                    if field.required_in(holder) and key not in holder]
    assert not missing, f"{where} says these are there, but they are not: {sorted(set(missing))}"


def _holders(seen: dict[str, list[tuple[Any, dict[str, Any]]]],
             documents: list[dict[str, Any]], parent: str) -> list[dict[str, Any]]:
    """The objects at the path ``parent`` ('' the documents themselves)."""
    if not parent:
        return documents
    return [value for path, values in seen.items() if re.fullmatch(_pattern(parent), path)
            for value, _ in values if isinstance(value, dict)]
