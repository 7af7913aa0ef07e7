"""The one state machine definition and its ARN placeholders (shared by deploy and the engine)."""

from __future__ import annotations

import json
import os
import re

from pipeline.core.constants import FUNCTIONS, placeholder

#: placeholder name -> the function (image) it stands for
PLACEHOLDERS = {placeholder(f): f for f in FUNCTIONS}
_PATTERN = re.compile(r"\$\{(\w+)\}")


#: the definition inside the package: in a checkout, a symlink to the top-level
#: statemachine.asl.json (the file users edit and deploy); a wheel holds a copy of it
RESOURCE = "statemachine.asl.json"


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

