"""The one state machine definition and its ARN placeholders (shared by deploy and the engine)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.core.constants import FUNCTIONS, placeholder

#: placeholder name -> the function (image) it stands for
PLACEHOLDERS = {placeholder(f): f for f in FUNCTIONS}
_PATTERN = re.compile(r"\$\{(\w+)\}")


def definition_text() -> str:
    """statemachine.asl.json of the checkout (or the copy installed with the package)."""
    repo_copy = Path(__file__).resolve().parents[2] / "statemachine.asl.json"
    if repo_copy.is_file():
        return repo_copy.read_text()
    return resources.files("pipeline").joinpath("statemachine.asl.json").read_text()


def render(arns: dict[str, str], text: str | None = None) -> str:
    """The definition with every ``${...FunctionArn}`` replaced by the function's ARN.

    ``arns`` maps function names (split, process, merge) to ARNs; a placeholder left
    unfilled is an error, so no definition with placeholders is ever deployed.
    """
    text = definition_text() if text is None else text

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PLACEHOLDERS or PLACEHOLDERS[name] not in arns:
            raise KeyError(f"statemachine.asl.json: no ARN for placeholder ${{{name}}}")
        return arns[PLACEHOLDERS[name]]

    rendered = _PATTERN.sub(fill, text)
    json.loads(rendered)
    return rendered


def load(arns: dict[str, str]) -> dict[str, Any]:
    return json.loads(render(arns))
