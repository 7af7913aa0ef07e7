"""The tier tables of tests/conftest.py name test files and tests that exist (a renamed test
would silently drop out of its tier), the markers they give are registered, and no ``unit``
file runs the engine."""

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


#: what runs the local engine: these calls, or a tiffpipe command that runs it (an argument
#: list for the CLI, in this process or another, that starts with the command, has it after
#: the program, or runs the module: ``["run", manifest]``, ``[tiffpipe, "demo"]``,
#: ``[python, "-m", "pipeline.cli", "run", ...]``)
ENGINE_CALLS = {"run_local", "LocalEngine"}
ENGINE_COMMANDS = {"run", "demo", "scan"}
OWN_TIER = tuple(f"pytest.mark.{t}" for t in ("engine", "docker"))


def _engine_uses(node: ast.AST) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in ENGINE_CALLS:
                found.append(f"line {sub.lineno}: {name}(...)")
        elif isinstance(sub, ast.List | ast.Tuple):
            words = [e.value if isinstance(e, ast.Constant) else None for e in sub.elts]
            if (ENGINE_COMMANDS & set(words[:2])
                    or ("pipeline.cli" in words and ENGINE_COMMANDS & set(words))):
                found.append(f"line {sub.lineno}: the command {ast.unparse(sub)[:50]}")
    return found


def _engine_uses_untiered(module: str) -> list[str]:
    """Where ``module`` runs the engine outside a test (or class) that marks its own tier:
    in an unmarked test, or in a helper or fixture (which any test may use)."""
    tree = ast.parse((TESTS / f"{module}.py").read_text())
    if any(isinstance(node, ast.Assign) and "pytestmark" in map(ast.unparse, node.targets)
           and any(tier in ast.unparse(node.value) for tier in OWN_TIER) for node in tree.body):
        return []  # the whole file carries its tier
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and any(
                ast.unparse(d).startswith(OWN_TIER) for d in node.decorator_list):
            continue
        found += _engine_uses(node)
    return found


def test_no_unit_file_runs_the_engine():
    """A file that runs the engine is listed in ENGINE (or its tests say their tier): else
    ``-m unit``, documented as "no engine", would run it."""
    unit = sorted(p.stem for p in TESTS.glob("test_*.py")
                  if p.stem not in conftest.ENGINE | conftest.DOCKER)
    assert unit, "no unit file found"
    running = {m: uses for m in unit if (uses := _engine_uses_untiered(m))}
    assert not running, f"unit files that run the engine (add them to ENGINE): {running}"
    # the check sees what these files do (each runs the engine in its own way)
    for module in ("test_engine_direct", "test_single_task", "test_held_work", "test_thumbs",
                   "test_console", "test_cli", "test_many_jobs", "test_scan"):
        assert _engine_uses_untiered(module), module


def test_a_file_not_listed_is_unit(request):
    """This very test was given one tier, unit: its file is in no table."""
    tiers = [t for t in conftest.TIERS if request.node.get_closest_marker(t)]
    assert tiers == ["unit"]


def test_the_tier_table_of_the_docs_lists_the_engine_files():
    """docs/development.md's tier table names the files tests/conftest.py puts in each tier."""
    import re

    doc = (TESTS.parent / "docs" / "development.md").read_text(encoding="utf-8")
    [row] = [line for line in doc.splitlines() if line.startswith("| `engine` |")]
    files = row.split("|")[3].split(";")[0]
    assert set(re.findall(r"test_\w+", files)) == conftest.ENGINE
    [row] = [line for line in doc.splitlines() if line.startswith("| `docker` |")]
    assert set(re.findall(r"test_\w+", row.split("|")[3])) == conftest.DOCKER
