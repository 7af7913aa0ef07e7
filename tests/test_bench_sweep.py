"""``bench/sweep.py --sizes tiny``: the size sweep runs end to end on the tiny page, every
tool interleaved, and writes its JSON and table; tiffpipe's outputs match the naive run's.
No timing is asserted (the machine is shared)."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from conftest import ROOT, run_bench_script

HAVE_PYVIPS = importlib.util.find_spec("pyvips") is not None

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("sweep")
    out, md = folder / "sweep.json", folder / "sweep.md"
    stdout = run_bench_script("sweep.py", "--sizes", "tiny", "--repeat", "3", "--dir",
                              str(folder / "data"), "--json", str(out), "--markdown", str(md))
    doc = json.loads(out.read_text())
    doc["_stdout"], doc["_markdown"] = stdout, md.read_text()
    doc["_out"] = folder / "data" / "out"
    return doc


def test_every_case_and_tool(sweep: dict[str, Any]) -> None:
    assert sweep["format"] == "tiffpipe-sweep/1"
    cases = sweep["cases"]
    assert [(c["size"], c["layout"], c["codec"]) for c in cases] == [
        ("tiny", "single", codec) for codec in ("deflate", "zstd", "jpeg")]
    for c in cases:
        assert c["pages"] == 1 and c["side"] == 256
        expected = {"tiffpipe", "naive"} | ({"libvips"} if HAVE_PYVIPS and c["codec"] != "zstd"
                                            else set())
        assert set(c["tools"]) == expected
        for s in c["tools"].values():
            assert s["repeats"] == 3 and len(s["walls"]) == 3
            assert s["wall_s"] == pytest.approx(sorted(s["walls"])[1], abs=1e-3)  # median
            assert s["cpu_s"] >= 0 and s["peak_mb"] > 0
        peers = {t: c["tools"][t]["wall_s"] for t in ("libvips", "naive") if t in c["tools"]}
        assert c["best_peer"] == min(peers, key=peers.get)
        assert c["ratio"] == pytest.approx(c["tools"]["tiffpipe"]["wall_s"] / min(peers.values()))
        cpu = min(c["tools"][t]["cpu_s"] for t in peers)
        assert c["cpu_ratio"] == pytest.approx(c["tools"]["tiffpipe"]["cpu_s"] / cpu)


def test_tiffpipe_output_is_identical_to_the_naive_run(sweep: dict[str, Any]) -> None:
    for c in sweep["cases"]:
        assert c["checks"]["tiffpipe_vs_naive"] == {"identical": True, "max_abs": 0,
                                                    "files": 1}, c


def test_the_table_and_no_outputs_left(sweep: dict[str, Any]) -> None:
    rows = [line for line in sweep["_markdown"].splitlines() if line.startswith("| 256 x 256")]
    assert len(rows) == 3 and all("(libvips)" in r or "(naive)" in r for r in rows)
    assert sweep["_markdown"].strip() in sweep["_stdout"]
    assert "MISMATCH" not in sweep["_stdout"]
    assert not list(sweep["_out"].iterdir())  # outputs are removed after each case


def test_tile_costs_times_every_stage_of_a_tile(tmp_path) -> None:
    """``bench/tile_costs.py`` on a small tiled RGB input: a positive time for the decode,
    the blur and each output codec; an input it cannot use is refused by name."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import tifffile

    rng = np.random.default_rng(1)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.integers(0, 255, (2100, 2100, 3), np.uint8), tile=(512, 512),
                     compression="zlib", photometric="rgb")
    stdout = run_bench_script("tile_costs.py", "--input", str(src), "--count", "8")
    found = re.finditer(r"^(.*?)\s+([\d.]+) ms per 512", stdout, re.MULTILINE)
    rows = dict(m.groups() for m in found)
    assert [name.split()[0] for name in rows] == ["input", "gaussian", "jpeg", "zstd",
                                                  "deflate"]
    assert all(float(ms) > 0 for ms in rows.values())
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((600, 600), np.uint8), tile=(512, 512))
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" /
                                               "tile_costs.py"), "--input", str(gray)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "gray.tif: needs 512 px tiles of RGB" in proc.stderr


def test_each_layout_cuts_a_size_into_its_pages() -> None:
    """``page_shape``: one square page, three pages of a third each, or (``many``) pages of
    512 x 512 px, one output tile each (a scanned archive), as many as the size holds."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_sweep", bench / "sweep.py")
        assert spec and spec.loader
        sweep = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sweep)
    finally:
        sys.path.remove(str(bench))
    assert sweep.page_shape("tiny", "single") == (1, 256)
    pages, side = sweep.page_shape("0.01", "single")
    assert pages == 1 and abs(side * side - 10e6) / 10e6 < 0.01
    pages, side = sweep.page_shape("0.01", "multi")
    assert pages == 3 and abs(3 * side * side - 10e6) / 10e6 < 0.02
    assert sweep.page_shape("0.01", "many") == (38, 512)
    assert sweep.page_shape("0.0001", "many") == (1, 512)
    assert sweep.page_shape("0.01", "files") == (38, 512)  # as many pages, a file each
    cases = sweep.cases(["tiny", "0.001"], ["single", "many", "files"], ["jpeg"])
    assert [(c["size"], c["layout"], c["pages"], c["side"]) for c in cases] == [
        ("tiny", "single", 1, 256), ("0.001", "single", 1, sweep.side_for(1.0)),
        ("0.001", "many", 4, 512), ("0.001", "files", 4, 512)]


def test_files_layout_runs_a_manifest_of_one_job_a_file_against_the_peers(tmp_path) -> None:
    """``--layouts files``: each 512 x 512 page a file and a job of its own (one manifest), the
    peers doing the files one after the other; every output checked against the naive
    run's, and none left behind."""
    out = tmp_path / "sweep.json"
    run_bench_script("sweep.py", "--sizes", "0.003", "--layouts", "files", "--codecs", "zstd",
                     "--repeat", "1", "--tools", "tiffpipe,naive", "--dir",
                     str(tmp_path / "data"), "--json", str(out))
    (case,) = json.loads(out.read_text())["cases"]
    assert (case["layout"], case["pages"]) == ("files", 11)
    assert set(case["tools"]) == {"tiffpipe", "naive"} and case["ratio"] > 0
    assert case["checks"]["tiffpipe_vs_naive"] == {"identical": True, "max_abs": 0,
                                                   "files": 11}
    inputs = sorted((tmp_path / "data" / "files-512x512x3x11").iterdir())
    assert [p.name for p in inputs] == [f"f{i:05d}.tif" for i in range(11)]
    assert inputs[0].read_bytes() != inputs[1].read_bytes()  # distinct, then copies
    assert inputs[8].read_bytes() == inputs[0].read_bytes()
    assert not [p for p in (tmp_path / "data" / "out").rglob("*.tif")]


def test_striped_layout_runs_one_page_in_short_lzw_strips_against_the_peers(tmp_path) -> None:
    """``--layouts striped``: one square page in 16-row LZW strips (as scanners and GDAL
    write), the case where a unit's column chunks decode every strip again: checked
    against the naive run's output, the input a striped page of the sweep's pattern."""
    import tifffile

    out = tmp_path / "sweep.json"
    run_bench_script("sweep.py", "--sizes", "0.001", "--layouts", "striped", "--codecs",
                     "zstd", "--repeat", "1", "--tools", "tiffpipe,naive", "--dir",
                     str(tmp_path / "data"), "--json", str(out))
    (case,) = json.loads(out.read_text())["cases"]
    assert (case["layout"], case["pages"]) == ("striped", 1)
    assert case["checks"]["tiffpipe_vs_naive"]["identical"] is True
    (src,) = (tmp_path / "data").glob("sweep-striped16-lzw-*.tif")
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        assert (page.is_tiled, page.rowsperstrip, page.compression, page.shape) == (
            False, 16, tifffile.COMPRESSION.LZW, (case["side"], case["side"], 3))
        assert page.asarray().std() > 10  # the photo-like pattern, not a flat page


def test_before_runs_once_a_repeat_whether_or_not_tools_name_it(tmp_path) -> None:
    """``--before TREE`` adds the before tool; naming it in ``--tools`` too must not run it
    twice a repeat (it did: six runs and two table columns for three repeats). Without
    ``--before``, ``--tools before`` is refused with a message naming the option."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "sweep.json"
    run_bench_script("sweep.py", "--sizes", "tiny", "--codecs", "zstd", "--repeat", "2",
                     "--tools", "tiffpipe,before", "--before", str(ROOT), "--dir",
                     str(tmp_path / "data"), "--json", str(out))
    (case,) = json.loads(out.read_text())["cases"]
    assert set(case["tools"]) == {"tiffpipe", "before"}
    assert len(case["tools"]["before"]["walls"]) == 2
    assert case["checks"]["tiffpipe_vs_before"]["identical"]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--sizes", "tiny",
                           "--tools", "tiffpipe,before"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2 and "--before TREE" in proc.stderr


def test_ab_alternates_trees_and_prints_walls_and_actions(tmp_path) -> None:
    """``bench/ab.py``: each tree runs the manifest in a fresh child, the trees alternating;
    it prints each tree's median wall and per-action times and writes every run's JSON. (Two
    trees: this checkout twice, under two paths.) No timing is asserted."""
    import os

    import numpy as np
    import tifffile
    from conftest import ROOT

    tifffile.imwrite(tmp_path / "in.tif", np.full((64, 64, 3), 9, np.uint8), tile=(32, 32),
                     photometric="rgb")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": str(tmp_path / "in.tif"),
                                              "output": str(tmp_path / "out.tif")}]}))
    other = tmp_path / "same-tree"
    os.symlink(ROOT, other)
    out = tmp_path / "ab.json"
    stdout = run_bench_script("ab.py", "--trees", f"{ROOT},{other}", "--manifests",
                              str(manifest), "--runs", "2", "--json", str(out))
    assert stdout.splitlines()[0] == "m.json"
    for tree in (ROOT, other):
        line = next(x for x in stdout.splitlines() if x.strip().startswith(f"{tree}:"))
        assert "(2 runs), largest process" in line and "merge" in line and "plan_job" in line
    runs = json.loads(out.read_text())[str(manifest)]
    assert sorted(runs) == sorted([str(ROOT), str(other)])
    assert all(len(rs) == 2 and all(r["wall_s"] > 0 and r["peak_mb"] > 0 for r in rs)
               for rs in runs.values())
    assert not (tmp_path / "m.report.contact.png").exists()
    # --contact-sheet: the runs write the sheet tiffpipe run writes by default
    run_bench_script("ab.py", "--trees", f"{ROOT},{other}", "--manifests", str(manifest),
                     "--runs", "1", "--contact-sheet")
    assert (tmp_path / "m.report.contact.png").stat().st_size > 0


@pytest.mark.engine
def test_preload_loads_the_steps_and_codecs_before_the_clock(tmp_path) -> None:
    """``--preload`` (a diagnosis): the tiffpipe child loads its step modules and
    imagecodecs' codecs before the clock, so its run imports none of them; without it the
    run imports both kinds (what a run's time holds of loading code). The sweep takes it."""
    import subprocess
    import sys

    import numpy as np
    import tifffile

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.full((300, 300, 3), 9, np.uint8), tile=(64, 64),
                     compression="zlib", photometric="rgb")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(src), "output": str(tmp_path / "out.tif"),
        "output_options": {"compression": "jpeg"},
        "ops": [{"op": "gaussian_blur", "sigma": 2}]}]}))

    def imported(preload: bool) -> list[str]:
        args = {"manifest": str(manifest), "workers": 1, "preload": preload}
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "children.py"),
                               "tiffpipe", json.dumps(args)],
                              capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["ok"]
        return result["imported_in_run"]

    cold = imported(False)
    assert "pipeline.steps.process" in cold and "imagecodecs._jpeg8" in cold
    assert not [m for m in imported(True)
                if m.startswith(("pipeline.steps.", "imagecodecs._"))]
    out = tmp_path / "sweep.json"
    run_bench_script("sweep.py", "--sizes", "tiny", "--codecs", "jpeg", "--tools",
                     "tiffpipe,naive", "--repeat", "1", "--preload", "--dir",
                     str(tmp_path / "sweep"), "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["settings"]["preload"] is True
    assert set(doc["cases"][0]["tools"]) == {"tiffpipe", "naive"}


@pytest.mark.parametrize("tool", ["tiffpipe", "naive", "libvips"])
def test_first_run_times_each_tools_runs_in_one_process(tmp_path, tool: str) -> None:
    """``bench/first_run.py``: tiffpipe's runs, or (``--tool``) a peer's, one after the other
    in one process, a line each; the peer's output is the sweep's whole-page run's."""
    if tool == "libvips" and not HAVE_PYVIPS:
        pytest.skip("pyvips is not installed")
    import sys

    import numpy as np
    import tifffile

    sys.path.insert(0, str(ROOT / "bench"))
    from sweep import make_input, write_manifest

    src = make_input(str(tmp_path), 1, 256)
    manifest = write_manifest(str(tmp_path), "m", [src], [str(tmp_path / "out" / "o.tif")],
                              "jpeg", 2.0, 90)
    stdout = run_bench_script("first_run.py", "--manifest", manifest, "--runs", "2",
                              "--tool", tool)
    lines = stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"run {k}" if tool == "tiffpipe" else
                                                      f"{tool} run {k}" for k in (1, 2)], stdout
    assert all(line.split(": ")[1].split(" ms")[0].replace(".", "").isdigit()
               for line in lines), stdout
    with tifffile.TiffFile(tmp_path / "out" / "o.tif") as tf:
        assert tf.pages[0].shape == (256, 256, 3) and np.ptp(tf.pages[0].asarray()) > 0
