"""A scan of 1,000 new files is one execution: the ``Jobs`` Distributed Map reads the job list
from the work location, each job runs as a child of it, and the parent execution's history
(Step Functions keeps at most 25,000 events per execution) holds the map's events, not the
jobs'. Every job's result (or recorded failure) reaches the report from the work location."""

from __future__ import annotations

import importlib
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pipeline.engine import moto_patches
from pipeline.engine.local import LocalEngine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

JOBS = 1000
HISTORY_LIMIT = 25_000  # events of one Standard execution


def _count_child_events(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """The engine drops the events of Distributed Map children (moto keeps them per map run,
    where nothing reads them: moto_patches, patch 3); here they are counted instead, per map
    run. The Jobs map run's count is its children's (the jobs') events; each job's own map
    runs count their items' (grandchildren) events apart."""
    counts: Counter[int] = Counter()

    def counting(patches: moto_patches.Patches) -> None:
        dic = importlib.import_module(
            f"{moto_patches.MAP_ITERATION}.distributed_iteration_component")
        original = dic.EventManager

        class CountingEventManager(original):  # type: ignore[misc, valid-type]
            def _publish_history_event(self, *args: Any, **kwargs: Any) -> None:
                counts[id(self)] += 1

        patches.set(dic, "EventManager", CountingEventManager)

    monkeypatch.setattr(moto_patches, "_drop_child_history", counting)
    return counts


@pytest.mark.parametrize("interpreter", ["moto", "direct"])
def test_a_scan_of_1000_files_is_one_execution_far_below_the_history_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interpreter: str):
    """On both interpreters the 1,000 jobs run in one execution and are reported; moto's
    history (the direct interpreter keeps none) is counted."""
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

    child_events = _count_child_events(monkeypatch)
    report = tmp_path / "report.json"
    with LocalEngine(2, listener=listener, interpreter=interpreter) as engine:
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
    # each job of one small page: its unit and merge in one ProcessJob, no Map, no Merge task
    assert calls["process_job"] == JOBS - 1 and calls["record_failure"] == 1
    assert calls["merge"] == calls["process_unit"] == 0
    if interpreter == "direct":
        return

    # the parent's history: PlanRun, the Jobs map run and Report, whatever the job count
    # (an inline Map added ~20 events per job: a 1,000-job scan was ~20,000 of them)
    assert 0 < execution.history_events < 100, execution.history_events
    assert execution.history_events < HISTORY_LIMIT
    # each job's own history (a child execution on AWS): the Jobs map run's events shared out
    # by job (18 a job, measured); its units' events are in their own children's
    jobs_run = max(child_events.values())
    assert jobs_run >= 10 * JOBS, child_events.most_common(3)
    assert jobs_run / JOBS < 100
    assert len(child_events) == 1  # no job runs a Map of its own (ProcessJob: no units Map)
