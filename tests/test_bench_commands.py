"""``bench/commands.py``: whole commands (``tiffpipe run``, with and without the contact
sheet, another checkout's, and the naive script) run end to end on the tiny page,
interleaved, and their medians, ratios and output checks are written. No timing is
asserted (the machine is shared)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_bench_script

pytestmark = pytest.mark.timeout(600)


def _one_case(script: str, tmp_path: Path, tools: list[str], *args: str
              ) -> tuple[str, dict[str, Any]]:
    """Run ``bench/<script>`` with two repeats of ``tools`` and ``--before`` this checkout:
    its stdout and its one case, whose walls (two a tool) and medians are checked."""
    out = tmp_path / "case.json"
    stdout = run_bench_script(script, *args, "--repeat", "2", "--tools", ",".join(tools),
                              "--before", str(ROOT), "--dir", str(tmp_path / "data"),
                              "--json", str(out))
    (case,) = json.loads(out.read_text())
    assert sorted(case["walls"]) == sorted(case["median_s"])
    for tool, walls in case["walls"].items():
        assert len(walls) == 2 and min(walls) > 0
        assert case["median_s"][tool] == pytest.approx(statistics.median(walls))
    return stdout, case


def test_commands_on_the_tiny_page(tmp_path: Path) -> None:
    stdout, case = _one_case("commands.py", tmp_path, ["tiffpipe", "tiffpipe-no-sheet", "naive"],
                             "--sizes", "tiny", "--codecs", "jpeg")
    tools = ["tiffpipe", "tiffpipe-no-sheet", "naive", "before", "before-no-sheet"]
    assert (case["size"], case["codec"], case["best_peer"]) == ("tiny", "jpeg", "naive")
    assert sorted(case["walls"]) == sorted(tools)
    assert sorted(case["ratio"]) == sorted(t for t in tools if t != "naive")
    # each command's CPU seconds (its process and what it waited for), beside its wall
    assert sorted(case["cpus"]) == sorted(case["median_cpu_s"]) == sorted(tools)
    for tool, cpus in case["cpus"].items():
        assert len(cpus) == 2 and min(cpus) > 0
        assert case["median_cpu_s"][tool] == pytest.approx(statistics.median(cpus))
    assert "| tiffpipe wall / CPU-s |" in stdout
    for tool, ratio in case["ratio"].items():
        assert ratio == pytest.approx(case["median_s"][tool] / case["median_s"]["naive"])
        # every tiffpipe command wrote the naive script's pixels
        assert case["checks"][tool] == {"identical": True, "max_abs": 0, "files": 1}
    assert "| 256 x 256 | jpeg |" in stdout and "(naive)" in stdout
    assert not list((tmp_path / "data" / "out").glob("*.tif"))  # outputs removed
    # the default run wrote its contact sheet next to its report, the other none
    assert (tmp_path / "data" / "cmd-tiffpipe-jpeg.report.contact.png").exists()
    assert not (tmp_path / "data" / "cmd-tiffpipe-no-sheet-jpeg.report.contact.png").exists()


def test_previews_of_a_jpeg_page(tmp_path: Path) -> None:
    """``bench/previews.py``: tiffpipe preview, --exact and another checkout's on a 1 Mpx
    JPEG page written by the script, each a fresh process, their medians, and the 1/8
    thumbnail's difference from the exact one (a 992 px page into a 32 px box: scaled)."""
    stdout, case = _one_case("previews.py", tmp_path, ["tiffpipe", "tiffpipe-exact"],
                             "--sizes", "0.001", "--size", "32")
    assert case["size"] == "0.001"
    assert sorted(case["walls"]) == ["before", "tiffpipe", "tiffpipe-exact"]
    check = case["checks"]["tiffpipe"]
    assert 0 < check["mean"] < 2 and check["max"] <= 16  # scaled: close, not identical
    assert "| 0.984 Mpx |" in stdout
    assert (tmp_path / "data" / "preview-992x992x3-jpeg.tif").exists()  # kept for reuse
    assert not list((tmp_path / "data" / "out").glob("*.png"))  # thumbnails removed
