"""``bench/compare.py --tiny``: the benchmark runs end to end on tiny inputs and writes its
JSON (every field, the agreement checks) and a calibration file that ``tiffpipe estimate``
reads. No timing is asserted: the machine is shared and the sizes are tiny."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_bench_script

from pipeline import cli

HAVE_PYVIPS = importlib.util.find_spec("pyvips") is not None

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bench")
    out, cal = folder / "result.json", folder / "calibration.json"
    stdout = run_bench_script("compare.py", "--tiny", "--dir", str(folder / "data"),
                              "--json", str(out), "--calibration", str(cal))
    doc = json.loads(out.read_text())
    doc["_stdout"], doc["_calibration_path"] = stdout, str(cal)
    return doc


def test_every_field(bench: dict[str, Any]) -> None:
    assert bench["mode"] == "tiny"
    assert {"machine", "settings", "inputs", "throughput", "memory", "engine_overhead",
            "calibration", "targets", "tifffile_copy", "unfused"} <= set(bench)
    rgb = bench["inputs"]["rgb"]
    assert rgb["pages"] == 3 and rgb["channels"] == 3
    table = bench["throughput"]["table"]
    assert set(table) == {"deflate", "jpeg", "zstd"}
    for tools in table.values():
        assert {"tiffpipe", "naive"} <= set(tools)
        for s in tools.values():
            for key in ("wall_s", "cpu_s", "peak_mb", "mpx_per_s", "speed_vs_libvips"):
                assert key in s
            assert s["wall_s"] > 0 and s["peak_mb"] > 0 and s["cpu_s"] >= 0
    assert "libvips" not in table["zstd"]  # the pyvips-binary wheel has no zstd
    tp = table["deflate"]["tiffpipe"]["runs"][0]
    assert tp["engine_peak_mb"] > 0  # tiny runs run in the engine process: maybe no workers
    assert tp["peak_mb"] == max([tp["engine_peak_mb"], *tp["worker_peaks_mb"]])
    giant = bench["memory"]["giant"]
    assert giant["tiffpipe"]["peak_mb"] > 0 and giant["naive"]["peak_mb"] > 0
    assert {t["target"].split(",")[0] for t in bench["targets"]} >= {
        "tiffpipe speed vs libvips", "peak MB of any tiffpipe process",
        "engine overhead per Map iteration (ms)"}
    assert "targets:" in bench["_stdout"] and "agreement" in bench["_stdout"]
    assert "not fused" in bench["_stdout"]


def test_compared_runs_are_fused_and_the_calibration_runs_are_not(
        bench: dict[str, Any]) -> None:
    """The throughput and memory runs are what users get (fused: no split, no batches, no
    work tiles); the extra runs with "fuse": false measure split and process."""
    runs = [r for tools in bench["throughput"]["table"].values()
            for r in tools["tiffpipe"]["runs"]] + [bench["memory"]["giant"]["tiffpipe"]]
    for r in runs:
        assert "process_unit" in r["actions"], r["actions"].keys()
        assert not {"split", "process"} & set(r["actions"])
        assert "tiles" not in r["work_bytes"]
        # segments in the work location, unless the jobs were ProcessJobs whose small
        # outputs stayed in memory (a default run, as the benchmark measures it)
        assert r["work_bytes"].get("out", 0) > 0 or "process_job" in r["actions"], r
        assert r["map_items"] == r["actions"]["process_unit"]["count"]
    assert set(bench["unfused"]) == {"rgb", "gray"}
    for r in bench["unfused"].values():
        assert r["ok"] and {"split", "process"} <= set(r["actions"])
        assert "process_unit" not in r["actions"]
        assert r["work_bytes"]["tiles"] > 0 and r["geometry"]["batches"] > 0


def test_tiffpipe_matches_the_naive_baseline(bench: dict[str, Any]) -> None:
    for comp, checks in bench["throughput"]["agreement"].items():
        assert checks["tiffpipe_vs_naive"]["identical"], (comp, checks)
    assert bench["memory"]["giant"]["tiffpipe_vs_naive"]["identical"]


@pytest.mark.skipif(not HAVE_PYVIPS, reason="pyvips is not installed (pip install -e '.[bench]')")
def test_libvips_is_compared(bench: dict[str, Any]) -> None:
    table = bench["throughput"]["table"]
    for comp in ("deflate", "jpeg"):
        assert "libvips" in table[comp]
        assert table[comp]["libvips"]["speed_vs_libvips"] == pytest.approx(1.0)
        c = bench["throughput"]["agreement"][comp]["tiffpipe_vs_libvips"]
        # libvips's Gaussian kernel and border rule differ from OpenCV's: close, not equal
        assert c["inner_mean_abs"] < 2.0 and c["inner_max_abs"] <= 16
    assert bench["throughput"]["agreement"]["deflate"]["tiffpipe_vs_libvips"]["inner_max_abs"] <= 3
    assert bench["memory"]["giant"]["libvips"]["peak_mb"] > 0


def test_without_libvips_the_reason_is_given(bench: dict[str, Any]) -> None:
    if HAVE_PYVIPS:
        assert "libvips" not in bench["skipped"]
    else:
        assert "pyvips" in bench["skipped"]["libvips"]


def test_the_calibration_feeds_estimate(bench: dict[str, Any], tmp_path: Path) -> None:
    cal = json.loads(Path(bench["_calibration_path"]).read_text())
    assert cal["format"] == "tiffpipe-calibration/1" and cal["mode"] == "tiny"
    assert cal["machine"]["cores"] >= 1 and cal["machine"]["cpu"]
    for kind in ("uint8x1", "uint8x3"):
        assert cal["split"][kind]["cpu_s_per_mpx"] > 0
        assert cal["work"][kind]["bytes_per_mpx"] > 0
        assert cal["work"][kind]["bytes_source"] == "pipeline work tiles"
        assert cal["process"]["factor"][kind] > 0
        unit = cal["process_unit"][kind]  # fused units: measured in the fused runs
        assert unit["read_cpu_s_per_mpx"] >= 0
        assert unit["factor"] > 0 and unit["cpu_s_per_mpx"] > 0 and unit["threads"] > 0
    assert cal["ops"]["gaussian_blur"]["uint8x3"]
    assert cal["encode"]["deflate"]["uint8x3"]["bytes_source"] == "pipeline output"
    for comp in ("zstd", "deflate", "lzw", "none", "group4"):  # 1-bit pages, each codec
        assert cal["encode"][comp]["bilevel"]["bytes_per_mpx"] > 0
    steps = {}
    for fuse in (True, False):  # the same job, fused (the default) and not
        manifest = tmp_path / f"m-{fuse}.json"
        manifest.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "b.tif",
                                                  "ops": [{"op": "gaussian_blur", "sigma": 2}],
                                                  "fuse": fuse}]}))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["estimate", str(manifest), "--calibration",
                             bench["_calibration_path"], "--assume-pages", "20000x20000x3",
                             "--json"])
        assert code == 0
        doc = json.loads(out.getvalue())
        assert doc["cost_usd"]["total"] > 0 and doc["jobs"][0]["fused"] is fuse
        steps[fuse] = set(doc["steps"])
    assert "process_unit" in steps[True] and not {"split", "process"} & steps[True]
    assert {"split", "process"} <= steps[False] and "process_unit" not in steps[False]
