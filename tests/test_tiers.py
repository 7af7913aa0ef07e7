"""The tier tables of tests/conftest.py name test files and tests that exist (a renamed test
would silently drop out of its tier), and the markers they give are registered."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def _test_functions(module: str) -> set[str]:
    tree = ast.parse((TESTS / f"{module}.py").read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_listed_file_and_test_exists():
    for module in conftest.ENGINE | conftest.DOCKER | conftest.SLOW_FILES:
        assert (TESTS / f"{module}.py").is_file(), f"tests/conftest.py lists {module}.py"
    for name in conftest.SLOW_TESTS:
        module, _, test = name.partition("::")
        assert test in _test_functions(module), f"tests/conftest.py: no test {name}"


def test_the_tier_markers_are_registered():
    ini = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["pytest"]
    registered = {m.partition(":")[0] for m in ini["ini_options"]["markers"]}
    assert {*conftest.TIERS, "slow"} <= registered


def test_a_file_not_listed_is_unit(request):
    """This very test was given one tier, unit: its file is in no table."""
    tiers = [t for t in conftest.TIERS if request.node.get_closest_marker(t)]
    assert tiers == ["unit"]
