"""The user documentation stays navigable and complete: README.md, docs/*.md and the other
READMEs link only to files (and headings) that exist and cite only files that exist, every
`tiffpipe` command line they show uses options the command has, docs/errors.md names every
error class of the code, docs/code-layout.md every module and state payload, and the pages'
excerpts of `tiffpipe estimate` output are what the command prints."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from collections.abc import Iterator
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "images" / "README.md",
         ROOT / "docs" / "moto-bugs" / "README.md"]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where links are not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = github_anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    return [t for t in _LINK.findall(_prose(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_anchor_rule_matches_github():
    assert github_anchor("Cost and time on AWS: `tiffpipe estimate`") == \
        "cost-and-time-on-aws-tiffpipe-estimate"
    assert github_anchor("Ops that need the whole page: statistics rounds") == \
        "ops-that-need-the-whole-page-statistics-rounds"
    assert github_anchor("AWS Step Functions Local, for users with Docker") == \
        "aws-step-functions-local-for-users-with-docker"


def test_docs_folder_has_the_subject_pages():
    names = {p.name for p in DOCS}
    for name in ("manifest-and-ops.md", "exactness.md", "inputs.md", "aws.md",
                 "local-engine.md", "performance.md", "errors.md"):
        assert name in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files_and_headings(page: Path):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: broken links:\n" + "\n".join(broken)


def test_every_page_is_reachable_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    own = {"manifest-and-ops.md", "exactness.md", "inputs.md", "outputs.md", "aws.md",
           "local-engine.md", "performance.md", "estimate.md", "errors.md", "pipeline.md",
           "images.md", "code-layout.md"}
    missing = sorted(p.name for p in DOCS if p.name in own and p.resolve() not in linked)
    assert not missing, f"README.md does not link {missing}"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < 260, f"README.md has {lines} lines: move detail into docs/"


def tiffpipe_error_classes() -> set[str]:
    """Every class under pipeline/ that derives (through any chain) from TiffpipeError, found
    by reading the source, so modules that are slow or heavy to import count too."""
    bases: dict[str, set[str]] = {}
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                         for b in node.bases}
                bases.setdefault(node.name, set()).update(names)
    found = {"TiffpipeError"}
    grew = True
    while grew:
        new = {c for c, bs in bases.items() if bs & found} - found
        found |= new
        grew = bool(new)
    return found


def test_errors_table_names_every_error_class():
    classes = tiffpipe_error_classes()
    assert {"ManifestError", "EventError", "EngineError", "DockerError"} <= classes
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    in_table = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
    missing = sorted(classes - in_table)
    assert not missing, f"docs/errors.md has no row for {missing}"


SCRIPTS = sorted(p for p in [*(ROOT / "bench").glob("*.py"), ROOT / "deploy.py"]
                 if "description=__doc__" in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_scripts_help_describes_it_in_whole_sentences(script: Path):
    """``--help`` of deploy.py and the bench scripts opens with their docstring's first
    paragraph, whole (its first line alone stopped mid-sentence)."""
    import subprocess
    import sys

    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")), clean=False) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    assert first.endswith("."), first
    if script.name not in ("deploy.py", "compare.py", "sweep.py"):
        return  # (each runs its imports: three of them are enough to show the parser's text)
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, check=True, cwd=ROOT).stdout
    assert first in " ".join(help_text.split()), help_text


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("page, manifest, args", [
    ("estimate.md", None, ["bench/batch-100gpx.json", "--assume-pages", "100000x100000x3"]),
    ("s3-merge.md", {"jobs": [{"input": "s3://my-slides/big.tif", "output": "o.tif"},
                              {"input": "s3://my-slides/big.tif", "output": "j.tif",
                               "output_options": {"compression": "jpeg"}}]},
     ["est.json", "--assume-pages", "316228x316228x3"]),
])
def test_estimate_excerpts_are_what_the_command_prints(page: str, manifest: Any, args: list[str],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's excerpt of ``tiffpipe estimate`` output (the fenced block with its command) is
    what the command prints today with the shipped calibration: every output line of the
    block, wrapped or not, is in the output."""
    from pipeline import cli

    command = "$ tiffpipe estimate " + " ".join(args)
    block = next(m.group(0) for m in _FENCE.finditer((ROOT / "docs" / page).read_text("utf-8"))
                 if command in m.group(0)).splitlines()[:-1]
    shown = [line for line in block[block.index(command) + 1:]
             if line.strip() and not line.startswith("(the ")]
    if manifest is not None:
        (tmp_path / args[0]).write_text(json.dumps(manifest))
        monkeypatch.chdir(tmp_path)
    else:
        args = [str(ROOT / args[0]), *args[1:]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["estimate", *args]) == 0
    printed = _words(out.getvalue())
    assert len(shown) >= 3
    for line in shown:
        assert _words(line) in printed, f"docs/{page} shows a line the command no longer prints"
    # a job shown is shown whole: each of its lines under it (a job's "peak memory:" line,
    # added to the output, was missing from both pages)
    lines = out.getvalue().splitlines()
    for i, line in enumerate(shown):
        if line.startswith("  jobs["):
            under = list(takewhile(lambda x: x.startswith("    "), lines[lines.index(line) + 1:]))
            assert shown[i + 1:i + 1 + len(under)] == under, \
                f"docs/{page} leaves out lines of {line.split(':')[0].strip()}"


#: a path of the repository as the pages cite it (``tests/test_cli.py``, ``pipeline/core/plan.py``)
_CITED = re.compile(r"(?<![\w./-])((?:pipeline|tests|bench|images|docs|requirements)/[\w./-]*\w)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_paths_exist(page: Path):
    """Every ``pipeline/...``, ``tests/...``, ``bench/...`` (...) path a page names, in prose
    or in code, is a file or folder of the repository (``images/*/Dockerfile``: a glob)."""
    text = page.read_text(encoding="utf-8")
    missing = sorted(path for path in set(_CITED.findall(text))
                     if not any(ROOT.glob(path)) and not (ROOT / path).exists())
    assert not missing, f"{page.name} cites paths that do not exist: {missing}"


#: a section of a page as the code's messages cite it: docs/manifest-and-ops.md, "Categorical data"
_CITED_SECTION = re.compile(r'docs/([\w-]+\.md), "([^"]+)"')


def test_the_sections_the_code_cites_are_on_their_pages():
    """Each ``docs/PAGE.md, "Section"`` a string of pipeline/ cites (an error's advice, a
    warning) names a heading of that page, or a term in bold there: the errors of a 16-bit
    page for a JPEG output cited "Convert another sample type" while the heading read
    "Convert: another sample type"."""
    def texts(node: ast.AST) -> Iterator[str]:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                yield sub.value
            elif isinstance(sub, ast.JoinedStr):  # an f-string: its literal parts, joined
                yield "".join(v.value for v in sub.values if isinstance(v, ast.Constant))

    cited = {(page, " ".join(section.split()), path.relative_to(ROOT).as_posix())
             for path in sorted((ROOT / "pipeline").rglob("*.py"))
             for text in texts(ast.parse(path.read_text(encoding="utf-8")))
             for page, section in _CITED_SECTION.findall(text)}
    assert len(cited) >= 5
    missing = []
    for page, section, source in sorted(cited):
        doc = (ROOT / "docs" / page).read_text(encoding="utf-8")
        headings = {" ".join(h.split()) for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)}
        bold = {" ".join(b.split()).lower()
                for b in re.findall(r"\*\*`?([^*`]+?)`?\.?\*\*", doc)}
        if section not in headings and section.lower() not in bold:
            missing.append(f"{source}: docs/{page}, {section!r}")
    assert not missing, missing


def _command_lines(text: str) -> list[str]:
    """The lines of the fenced blocks and the inline code spans of ``text`` (a span wrapped
    over lines made one line)."""
    lines = [line for m in _FENCE.finditer(text) for line in m.group(0).splitlines()]
    return lines + [" ".join(span.split())
                    for span in re.findall(r"`([^`]+)`", _FENCE.sub("", text))]


def test_tiffpipe_command_lines_use_options_the_command_has():
    """A ``tiffpipe COMMAND ...`` the pages show (a usage line, an example, a command in
    prose) names a command of the parser and only options of that command."""
    import argparse

    from pipeline import cli

    commands = next(a for a in cli._parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    wrong, seen = [], 0
    for page in PAGES:
        for line in _command_lines(page.read_text(encoding="utf-8")):
            for m in re.finditer(r"(?:^|[\s$(`])(?:\.venv/bin/)?tiffpipe\s+([a-z]+)"
                                 r"((?:[ \t]+[^\s;&`]+)*)", line.strip("`")):
                name, rest = m.groups()
                seen += 1
                if name not in commands:
                    wrong.append(f"{page.name}: no command {name!r}: {line.strip()}")
                    continue
                known = {o for a in commands[name]._actions for o in a.option_strings}
                wrong += [f"{page.name}: tiffpipe {name} has no {opt}: {line.strip()}"
                          for opt in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", rest)
                          if opt not in known]
    assert seen > 50  # (the pattern still finds the pages' commands)
    assert not wrong, "\n".join(wrong)


def test_readme_command_line_names_every_option():
    """The README's "Command line" block names every command and every option of the parser
    (one of its spellings: ``-o``; ``start`` and ``status`` share the AWS ones)."""
    import argparse

    from pipeline import cli

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(m.group(0) for m in _FENCE.finditer(text) if "tiffpipe run MANIFEST" in m.group(0))
    commands = next(a for a in cli._parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    def shown(opt: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", block) is not None

    missing = [f"{name} {a.option_strings[-1]}" for name, sub in commands.items()
               for a in sub._actions if a.option_strings and "--help" not in a.option_strings
               and not any(shown(opt) for opt in a.option_strings)]
    missing += [name for name in commands if f"tiffpipe {name} " not in block]
    assert not missing, f"README.md's command line does not show {missing}"


def _layout_tree() -> str:
    text = (ROOT / "docs" / "code-layout.md").read_text(encoding="utf-8")
    return next(m.group(0) for m in _FENCE.finditer(text) if "pipeline/" in m.group(0))


def test_code_layout_lists_every_module():
    """docs/code-layout.md's tree has a line for every module of pipeline's packages, and
    names none that is not there."""
    tree = _layout_tree()
    listed = set(re.findall(r"^    ([a-z_]+)(?:\s|$)", tree, re.MULTILINE))
    modules = {p.stem for folder in ("core", "adapters", "steps", "engine", "aws", "estimate")
               for p in (ROOT / "pipeline" / folder).glob("*.py")} - {"__init__"}
    assert not modules - listed, f"docs/code-layout.md does not list {sorted(modules - listed)}"
    assert not listed - modules - {"__init__"}, \
        f"docs/code-layout.md lists modules that are not there: {sorted(listed - modules)}"


def test_code_layout_names_every_state_payload():
    """The contract section names every event and result model of pipeline/core/events.py."""
    from pipeline.core import events

    text = (ROOT / "docs" / "code-layout.md").read_text(encoding="utf-8")
    tree = ast.parse((ROOT / "pipeline" / "core" / "events.py").read_text(encoding="utf-8"))
    models = {n.name for n in tree.body if isinstance(n, ast.ClassDef)
              if n.name.endswith("Event") and n.name != "EventError"}
    models |= {m.__name__ for m in events.RESULTS.values()}
    missing = sorted(m for m in models if f"`{m}`" not in text)
    assert not missing, f"docs/code-layout.md does not name {missing}"


def test_development_lists_the_engine_tier_as_conftest_does():
    """docs/development.md's table of tiers names the test files tests/conftest.py marks
    ``engine``."""
    import conftest

    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `engine` |"))
    named = set(re.findall(r"\b(test_\w+)\b(?!')", row.split("|")[3]))
    assert named == set(conftest.ENGINE), (
        f"docs/development.md: missing {sorted(set(conftest.ENGINE) - named)}, "
        f"not engine {sorted(named - set(conftest.ENGINE))}")
