"""A scan of 1,000 new files is one execution: the ``Jobs`` Distributed Map reads the job list
from the work location, each job runs as a child of it, and the parent execution's history
(Step Functions keeps at most 25,000 events per execution) holds the map's events, not the
jobs'. Every job's result (or recorded failure) reaches the report from the work location."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pipeline.engine.local import LocalEngine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

JOBS = 1000
HISTORY_LIMIT = 25_000  # events of one Standard execution


def test_a_scan_of_1000_files_is_one_execution_far_below_the_history_limit(tmp_path: Path):
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    incoming.mkdir()
    rng = np.random.default_rng(9)
    for i in range(JOBS):
        tifffile.imwrite(incoming / f"f{i:04d}.tif",
                         rng.integers(0, 256, (24, 40), dtype=np.uint8), tile=(16, 16))
    # one input is not a TIFF: its job fails, is recorded, and the other 999 go on
    (incoming / "f0500.tif").write_bytes(b"not a tiff")
    manifest = tmp_path / "scan.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 64, "output_options": {"tile": 16}},
                                    "scan": {"input": str(incoming), "output": str(out),
                                             "ops": [{"op": "invert"}]}}))
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def listener(function: str, event: dict[str, Any], ok: bool, payload: dict[str, Any]):
        with lock:
            calls[f"{event.get('action')}{'' if ok else ' (failed)'}"] += 1

    report = tmp_path / "report.json"
    with LocalEngine(2, listener=listener) as engine:
        execution = engine.run({"manifest": str(manifest), "work": str(tmp_path / "work"),
                                "run_id": "many", "report": str(report)}, name="many-jobs")
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    doc = json.loads(report.read_text())
    assert (doc["succeeded"], doc["failed"]) == (JOBS - 1, 1)
    assert [j["job"] for j in doc["jobs"]] == list(range(JOBS))
    (failed,) = [j for j in doc["jobs"] if j["status"] == "FAILED"]
    assert failed["input"].endswith("f0500.tif") and failed["error"]["type"] == "NotATiffError"
    assert len(list(out.iterdir())) == JOBS - 1
    assert calls["plan_run"] == 1 and calls["report"] == 1
    assert calls["plan_job"] + calls["plan_job (failed)"] == JOBS
    assert calls["merge"] == JOBS - 1 and calls["record_failure"] == 1

    # the parent's history: PlanRun, the Jobs map run and Report, whatever the job count
    # (an inline Map added ~20 events per job: a 1,000-job scan was ~20,000 of them)
    assert 0 < execution.history_events < 100, execution.history_events
    assert execution.history_events < HISTORY_LIMIT
