"""Names that several parts must agree on have one home, pipeline/core/constants.py: the
functions (handlers, images, placeholders, the engine, deploy) and the environment variables."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from pipeline import handlers
from pipeline.core import constants
from pipeline.engine import definition

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "pipeline" / "core" / "constants.py"


def _literals(path: Path) -> list[tuple[int, object]]:
    """String and tuple literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)}
    out: list[tuple[int, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
            values = tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
            out.append((node.lineno, values))
    return out


def test_every_function_has_a_handler_table_an_image_and_a_placeholder():
    assert tuple(handlers.FUNCTIONS) == constants.FUNCTIONS
    for function in constants.FUNCTIONS:
        assert (ROOT / "images" / function / "Dockerfile").is_file()
        assert set(constants.FUNCTION_SIZES) == set(constants.FUNCTIONS)
    text = (ROOT / "statemachine.asl.json").read_text()
    json.loads(text)
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used == {constants.placeholder(f) for f in constants.FUNCTIONS} == \
        set(definition.PLACEHOLDERS)


def test_function_names_and_env_variables_are_spelled_only_in_their_home():
    """No module of pipeline/ spells the function list or a TIFFPIPE_ variable itself."""
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path == HOME:
            continue
        for line, value in _literals(path):
            if value == constants.FUNCTIONS or (isinstance(value, str)
                                                and re.search(r"\bTIFFPIPE_[A-Z_]+", value)):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not found, "use pipeline/core/constants.py:\n" + "\n".join(found)


def test_the_home_itself_is_found_by_the_check():
    assert (constants.TILE_THREADS_ENV in {v for _, v in _literals(HOME)}
            and constants.FUNCTIONS in {v for _, v in _literals(HOME)})


def test_the_estimate_costs_each_action_on_the_function_that_runs_it():
    from pipeline.estimate import FUNCTION_OF

    for function, actions in handlers.FUNCTIONS.items():
        for action in actions:
            if action in FUNCTION_OF:
                assert FUNCTION_OF[action] == function, action
    assert {FUNCTION_OF[f"cold_{f}"] for f in constants.FUNCTIONS} == set(constants.FUNCTIONS)
