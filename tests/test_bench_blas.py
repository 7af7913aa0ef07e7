"""``bench/blas_threads.py``: fresh processes import OpenCV with OpenBLAS's thread count unset
and set to 1, and report the threads they started besides the main one and their CPU. No
timing is asserted (the machine is shared)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from conftest import run_bench_script

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                                 reason="counts threads in /proc")]


def test_blas_threads_with_and_without_the_setting(tmp_path: Path) -> None:
    out = tmp_path / "blas.json"
    stdout = run_bench_script("blas_threads.py", "--repeat", "2", "--after", "0.05",
                              "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["after_s"] == 0.05 and sorted(doc["runs"]) == ["default", "one"]
    for setting, runs in doc["runs"].items():
        assert len(runs) == 2
        for key in ("threads", "thread_cpu_s", "import_s"):
            assert doc["medians"][setting][key] == pytest.approx(
                statistics.median(r[key] for r in runs))
    # with one OpenBLAS thread, importing OpenCV (and numpy) starts no thread at all
    assert all(r["threads"] == 0 and r["thread_cpu_s"] == 0 for r in doc["runs"]["one"])
    if len(os.sched_getaffinity(0)) > 1:  # unset: OpenBLAS starts one a further core
        assert all(r["threads"] >= 1 for r in doc["runs"]["default"])
    assert "| unset |" in stdout and "| 1 | 0 | 0.000 |" in stdout
