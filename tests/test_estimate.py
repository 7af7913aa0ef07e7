"""``tiffpipe estimate``: the cost model's arithmetic on a small manifest and a calibration
with round numbers (every expected value below is worked out by hand from them), for jobs
split to work tiles and processed in batches (``"fuse": false``) and for fused jobs (each
unit read and processed by one ``process_unit``)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli
from pipeline import estimate as est
from pipeline.core import plan as plan_module
from pipeline.core.manifest import quoted
from pipeline.core.plan import held_output, single_task
from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(120)

#: a calibration with round numbers: costs per megapixel, bytes per megapixel
CAL: dict[str, Any] = {
    "format": est.CALIBRATION_FORMAT, "measured_at": "2026-01-01T00:00:00Z", "mode": "test",
    "note": "hand-made", "machine": {"cpu": "test cpu", "cores": 2},
    "split": {"uint8x3": {"cpu_s_per_mpx": 0.02, "threads": 1.0},
              "uint8x1": {"cpu_s_per_mpx": 0.01, "threads": 1.0}},
    "process": {"factor": {"uint8x3": 1.0, "uint8x1": 1.0}},
    "merge": {"cpu_s_per_output_mb": 0.01, "cpu_s_per_output_tile": 0.0},
    "calls": {"plan_run": {"wall_s": 0.5}, "plan_job": {"wall_s": 0.25},
              "report": {"wall_s": 0.125}},
    "ops": {"gaussian_blur": {
        "uint8x3": [{"params": {"sigma": 1.0}, "cpu_s_per_mpx": 0.002},
                    {"params": {"sigma": 2.0}, "cpu_s_per_mpx": 0.004}],
        "uint8x1": [{"params": {"sigma": 1.0}, "cpu_s_per_mpx": 0.001},
                    {"params": {"sigma": 2.0}, "cpu_s_per_mpx": 0.002}]}},
    "encode": {c: {"uint8x3": {"cpu_s_per_mpx": 0.05, "bytes_per_mpx": 1e6},
                   "uint8x1": {"cpu_s_per_mpx": 0.02, "bytes_per_mpx": 4e5}}
               for c in ("deflate", "jpeg", "zstd", "lzw", "none")},
    "work": {"uint8x3": {"decode_cpu_s_per_mpx": 0.004, "bytes_per_mpx": 3e6},
             "uint8x1": {"decode_cpu_s_per_mpx": 0.002, "bytes_per_mpx": 1e6}},
    "process_unit": {"uint8x3": {"read_cpu_s_per_mpx": 0.016, "factor": 1.0},
                     "uint8x1": {"read_cpu_s_per_mpx": 0.008, "factor": 1.5}},
    "input_bytes_per_mpx": {"uint8x3": 1.5e6, "uint8x1": 5e5},
    "import_s": {"split": 1.0, "process": 2.0, "merge": 0.5},
}
#: no S3 time and no latency: durations are the CPU model alone
FAST_IO = {"s3_mb_per_s": 1e12, "state_latency_s": 0.0, "cold_start_s": 0.0}
SIGMA = 2.0


def _write_manifest(folder: Path, fuse: bool) -> Path:
    """Two jobs: a 2-page RGB input (blur, deflate) and a gray one (no op, zstd), 256 px tiles;
    both can be fused (local ops), and are unless ``fuse`` is false."""
    if not (folder / "rgb.tif").exists():
        write_sample(str(folder / "rgb.tif"), [SamplePage(700, 900, 3), SamplePage(300, 260, 3)],
                     tile=128)
        write_sample(str(folder / "gray.tif"), [SamplePage(1000, 1000, 1)], tile=128)
    m = {"defaults": {"tile": 256, "output_options": {"tile": 128}, "fuse": fuse},
         "jobs": [{"input": "rgb.tif", "output": "out/rgb.tif",
                   "ops": [{"op": "gaussian_blur", "sigma": SIGMA}],
                   "output_options": {"compression": "deflate"}},
                  {"input": "gray.tif", "output": "out/gray.tif"}]}
    path = folder / ("fused.json" if fuse else "m.json")
    path.write_text(json.dumps(m))
    return path


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """The two jobs, not fused: split to work tiles, processed in batches."""
    return _write_manifest(tmp_path, fuse=False)


@pytest.fixture
def fused(tmp_path: Path) -> Path:
    """The same two jobs on the same inputs, fused (the default)."""
    return _write_manifest(tmp_path, fuse=True)


@pytest.fixture(autouse=True)
def _several_units_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs here are small; a fused job of several units would run as one ProcessJob
    (plan.SINGLE_TASK_PIXELS). These tests cost the ProcessUnits Map of such a job, as a
    larger one runs; test_a_small_job_of_several_units_is_one_process_job costs the other."""
    monkeypatch.setattr(plan_module, "SINGLE_TASK_PIXELS", 0)


def _plans(manifest: Path) -> tuple[list[Any], list[float | None]]:
    planned = est.plan_manifest(str(manifest))
    assert planned.problems == []
    return planned.plans, planned.sizes


def test_invocations_follow_the_plan(manifest: Path) -> None:
    plans, sizes = _plans(manifest)
    r = est.estimate(plans, CAL, FAST_IO, concurrency=10, input_bytes=sizes)
    steps = r["steps"]
    assert steps["plan_run"]["invocations"] == 1
    assert steps["plan_job"]["invocations"] == 2
    assert steps["split"]["invocations"] == sum(len(p.units) for p in plans)
    assert steps["process"]["invocations"] == sum(len(p.batches) for p in plans)
    assert steps["merge"]["invocations"] == 2
    assert steps["report"]["invocations"] == 1
    assert "stats" not in steps  # local ops: no statistics round
    assert r["invocations"] == sum(s["invocations"] for s in steps.values())
    # 256 px tiles of 700x900 + 300x260 pages: 3*4 + 2*2 tiles; 1000x1000: 4*4
    assert [j["tiles"] for j in r["jobs"]] == [16, 16]
    assert [j["batches"] for j in r["jobs"]] == [len(p.batches) for p in plans]
    assert r["megapixels"] == pytest.approx((700 * 900 + 300 * 260 + 1000 * 1000) / 1e6)


def test_durations_are_the_calibrated_cpu(manifest: Path) -> None:
    plans, sizes = _plans(manifest)
    r = est.estimate(plans, CAL, FAST_IO, concurrency=10, input_bytes=sizes)
    rgb, gray = (est.plan_geometry(p) for p in plans)
    steps = r["steps"]
    # split: haloed Mpx x cpu per Mpx, one thread, speed 1
    assert steps["split"]["seconds"] == pytest.approx(
        rgb["haloed_mpx"] * 0.02 + gray["haloed_mpx"] * 0.01)
    # process: haloed x (work decode + op) + output x encode; the gray job has no op
    assert steps["process"]["seconds"] == pytest.approx(
        rgb["haloed_mpx"] * (0.004 + 0.004) + rgb["output_mpx"] * 0.05
        + gray["haloed_mpx"] * 0.002 + gray["output_mpx"] * 0.02)
    # merge: outputs under 5 MiB are read through whole (one uploaded part): output MB x 0.01 s
    out_mb = rgb["output_mpx"] * 1.0 + gray["output_mpx"] * 0.4
    assert steps["merge"]["seconds"] == pytest.approx(out_mb * 0.01)
    assert steps["plan_job"]["seconds"] == pytest.approx(0.5)
    # cold starts: one per environment (at most the concurrency), import time only here
    on_process = sum(s["invocations"] for name, s in steps.items()
                     if est.FUNCTION_OF[name] == "process" and not name.startswith("cold_"))
    assert on_process == steps["process"]["invocations"] + steps["plan_job"]["invocations"]
    assert steps["cold_process"]["environments"] == min(on_process, 10)
    assert steps["cold_process"]["seconds"] == pytest.approx(
        steps["cold_process"]["environments"] * 2.0)
    # GB-seconds: seconds x memory in GB
    for name, s in steps.items():
        memory = est.ASSUMPTIONS[f"memory_{est.FUNCTION_OF[name]}_mb"].value
        assert s["gb_s"] == pytest.approx(s["seconds"] * memory / 1024)


def test_costs_add_up(manifest: Path) -> None:
    plans, sizes = _plans(manifest)
    r = est.estimate(plans, CAL, FAST_IO, concurrency=10, input_bytes=sizes)
    a = {k: v["value"] for k, v in r["assumptions"].items()}
    cost, s3 = r["cost_usd"], r["s3"]
    assert cost["lambda_duration"] == pytest.approx(r["gb_s"] * a["lambda_gb_s"])
    assert cost["lambda_requests"] == pytest.approx(r["invocations"] * a["lambda_request"])
    assert cost["step_functions"] == pytest.approx(r["state_transitions"]["total"]
                                                   * a["sfn_transition"])
    assert cost["s3_requests"] == pytest.approx((s3["put"] + s3["list"]) * a["s3_put"]
                                                + s3["get"] * a["s3_get"])
    ephemeral = sum(s["ephemeral_gb_s"] for s in r["steps"].values())
    assert cost["lambda_ephemeral"] == pytest.approx(ephemeral * a["lambda_ephemeral_gb_s"])
    parts = [v for k, v in cost.items() if k != "total"]
    assert cost["total"] == pytest.approx(sum(parts))
    assert r["usd_per_gigapixel"] == pytest.approx(cost["total"] / (r["megapixels"] / 1000))
    # S3 requests per step: split PUTs one work tile per tile, a process batch one segment
    # and its index (small segments: one PutObject each)
    tiles = sum(j["tiles"] for j in r["jobs"])
    assert r["steps"]["split"]["put"] == tiles
    assert r["steps"]["process"]["put"] == 2 * sum(j["batches"] for j in r["jobs"])
    assert r["steps"]["process"]["get"] == tiles + sum(j["batches"] for j in r["jobs"])


def test_state_transitions_walk_the_definition(manifest: Path) -> None:
    plans, sizes = _plans(manifest)
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    per_job = r["state_transitions"]["per_job"]
    for plan, n in zip(plans, per_job, strict=True):
        # PlanJob, Split (+ two per unit: its child execution and SplitUnit), Process (+ two
        # per batch), Merge at least
        assert n >= 4 + 2 * len(plan.units) + 2 * len(plan.batches)
    assert r["state_transitions"]["total"] == 3 + sum(per_job)  # PlanRun, Jobs, Report

    task = {"StartAt": "T", "States": {"T": {"Type": "Task", "End": True}}}
    definition = {"StartAt": "A", "States": {
        "A": {"Type": "Task", "Next": "Jobs"},
        "Jobs": {"Type": "Map", "ItemsPath": "$.x.jobs", "Next": "Z", "ItemProcessor": {
            "StartAt": "P", "States": {
                "P": {"Type": "Task", "Next": "F"},
                "F": {"Type": "Choice", "Default": "S", "Choices": [
                    {"Variable": "$.p.fused", "BooleanEquals": True, "Next": "U"}]},
                "U": {"Type": "Map", "ItemsPath": "$.p.units", "Next": "M",
                      "ItemProcessor": task},
                "S": {"Type": "Map", "ItemsPath": "$.p.units", "Next": "C", "ItemProcessor": {
                    "StartAt": "T", "States": {"T": {"Type": "Task", "End": True}}}},
                "C": {"Type": "Choice", "Default": "B", "Choices": [
                    {"Variable": "$.p.stats.more", "BooleanEquals": True, "Next": "St"}]},
                "St": {"Type": "Map", "ItemsPath": "$.p.batches", "Next": "R", "ItemProcessor": {
                    "StartAt": "T", "States": {"T": {"Type": "Task", "End": True}}}},
                "R": {"Type": "Task", "Next": "C"},
                "B": {"Type": "Map", "ItemsPath": "$.p.batches", "Next": "M", "ItemProcessor": {
                    "StartAt": "T", "States": {"T": {"Type": "Task", "End": True}}}},
                "M": {"Type": "Task", "End": True}}}},
        "Z": {"Type": "Task", "End": True}}}
    got = est.count_transitions(definition, [
        {"units": 2, "batches": 5, "rounds": 0, "fused": False},
        {"units": 1, "batches": 3, "rounds": 2, "fused": False},
        {"units": 4, "batches": 0, "rounds": 0, "fused": True}])
    # job 0: P, F, S+2, C, B+5, M = 13; job 1: P, F, S+1, (C, St+3, R) x 2, C, B+3, M = 22;
    # job 2 (fused): P, F, U+4, M = 8
    assert got["per_job"] == [13, 22, 8]
    assert got["total"] == 3 + 13 + 22 + 8
    # a Choice on something the plan does not say: refused, not guessed
    definition["States"]["Jobs"]["ItemProcessor"]["States"]["F"]["Choices"][0][
        "Variable"] = "$.p.colour"
    with pytest.raises(est.EstimateError, match="cannot follow"):
        est.count_transitions(definition, [{"units": 1, "batches": 1}])


def test_the_jobs_map_reads_its_items_and_counts_once_per_job() -> None:
    """The shipped definition's Jobs map has no ItemsPath (an ItemReader reads the job list):
    it still walks once per job, and its MaxConcurrency is the jobs' limit."""
    definition = est.load_definition()
    assert "ItemReader" in definition["States"]["Jobs"]
    jobs = [{"units": 1, "batches": 2, "rounds": 0, "fused": False}] * 3
    got = est.count_transitions(definition, jobs)
    assert len(set(got["per_job"])) == 1 and got["per_job"][0] > 0
    assert got["total"] == 3 + sum(got["per_job"])  # PlanRun, Jobs, Report
    # the maps' limits: what PlanRun shares out of the concurrency (deploy.py's, by default
    # the account's, which the estimate's --concurrency stands for)
    assert est.map_limits(definition, 1, 1000) == {"jobs": 1, "units": 1000, "batches": 1000,
                                                   "nodes": 1000}
    assert est.map_limits(definition, 20, 1000)["jobs"] == 8
    assert est.map_limits(definition, 20, 1000)["units"] == 125


def test_each_child_execution_of_a_distributed_map_is_a_transition() -> None:
    """AWS bills each child workflow execution a Distributed Map starts as one state
    transition, on top of the states it runs (an inline Map's iterations are not): every
    Map of statemachine.asl.json is distributed. 10,001 jobs of one unit: PlanRun, Jobs,
    Report, and per job its child execution, PlanJob, Fused and ProcessJob."""
    definition = est.load_definition()
    modes = {name: s["ItemProcessor"]["ProcessorConfig"]["Mode"]
             for name, s in _maps(definition["States"])}
    assert set(modes.values()) == {"DISTRIBUTED"} and "Jobs" in modes
    one_unit = {"units": 1, "batches": 0, "rounds": 0, "fused": True, "single": True}
    got = est.count_transitions(definition, [one_unit] * 10_001)
    assert got["per_job"][0] == 4 and got["total"] == 3 + 4 * 10_001 == 40_007
    # a Map of units: the Map state, then per unit its child execution and ProcessUnit
    mapped = est.count_transitions(definition, [dict(one_unit, units=5, single=False)])
    assert mapped["per_job"] == [1 + 3 + (1 + 2 * 5)]  # + ProcessUnits ... Merge
    # the same definition with inline Maps: no child executions to bill
    inline = json.loads(json.dumps(definition))
    for _name, state in _maps(inline["States"]):
        state["ItemProcessor"]["ProcessorConfig"]["Mode"] = "INLINE"
    assert est.count_transitions(inline, [one_unit] * 10_001)["total"] == 3 + 3 * 10_001


def _maps(states: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every Map state of ``states``, nested ones too."""
    out = []
    for name, state in states.items():
        if state.get("Type") == "Map":
            out.append((name, state))
            out += _maps(state["ItemProcessor"]["States"])
    return out


def test_canny_reduce_tree_levels_count_their_transitions(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """A canny round whose reduce tree has levels of several nodes runs ReduceLevel Maps:
    each level adds ReduceLevel and its nodes, ReduceStats and NeedsStats again."""
    from pipeline.core import canny_tree
    from pipeline.core.models import JobSpec, PageInfo
    from pipeline.core.plan import make_plan
    from pipeline.steps.canny_reduce import BOUND_VAR

    definition = est.load_definition()
    job = {"units": 1, "batches": 4, "rounds": 1, "fused": False}
    base = est.count_transitions(definition, [job])["per_job"][0]
    tree = est.count_transitions(definition, [dict(job, tree_levels=[5, 2])])["per_job"][0]
    assert tree - base == (1 + 2 * 5 + 2) + (1 + 2 * 2 + 2)  # a child execution a node

    info = PageInfo(index=0, height=1000, width=700, channels=1, dtype="uint8",
                    photometric="minisblack", extrasamples=[], tiled=True, segment_rows=64,
                    compression="zstd")
    ops = [{"op": "canny", "low": 10, "high": 40}, {"op": "gaussian_blur", "sigma": 2},
           {"op": "canny", "low": 5, "high": 20}]
    spec = JobSpec(input=str(tmp_path / "in.tif"), output=str(tmp_path / "o.tif"), ops=ops,
                   tile=64)
    plan, problems = make_plan(0, spec, [info], str(tmp_path / "w"), 0.0)
    assert problems == []
    assert est.canny_tree_levels(plan) == []  # 176 tiles: each round in one task
    monkeypatch.setenv(BOUND_VAR, "16")
    levels = est.canny_tree_levels(plan)
    assert len(levels) % 2 == 0 and levels[: len(levels) // 2] == levels[len(levels) // 2:]
    # the first Map of each round: the leaves, of at most 4 of the 16 x 11 tiles each
    assert 176 // 4 <= levels[0] <= 2 * 176 // 4
    assert levels[0] == sum(not n.children for n in canny_tree.tree(16, 11, 16))


def test_a_fused_job_has_no_batches_and_no_work_tiles(manifest: Path, fused: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # every fused job through the ProcessUnits Map (the gray job, one unit, would be a
    # ProcessJob: test_a_fused_job_of_one_unit_is_one_process_job)
    monkeypatch.setattr(plan_module, "SINGLE_TASK_JOBS", False)
    unfused_plans, sizes = _plans(manifest)
    plans, fused_sizes = _plans(fused)
    assert [p.fused for p in unfused_plans] == [False, False]
    assert [p.fused for p in plans] == [True, True]
    for u, f in zip(unfused_plans, plans, strict=True):
        assert f.batches == [] and u.batches
        assert f.units == u.units  # pages this small are one unit either way
    u = est.estimate(unfused_plans, CAL, FAST_IO, concurrency=10, input_bytes=sizes)
    r = est.estimate(plans, CAL, FAST_IO, concurrency=10, input_bytes=fused_sizes)
    steps = r["steps"]
    # one process_unit per unit, on the process function; no split, stats or process
    assert steps["process_unit"]["invocations"] == sum(len(p.units) for p in plans)
    assert est.FUNCTION_OF["process_unit"] == "process"
    assert not {"split", "stats", "reduce_stats", "process"} & set(steps)
    # (and plan_job, which runs there too)
    assert steps["cold_process"]["environments"] == min(
        steps["process_unit"]["invocations"] + steps["plan_job"]["invocations"], 10)
    assert [(j["fused"], j["batches"]) for j in r["jobs"]] == [(True, 0), (True, 0)]
    assert [j["fused"] for j in u["jobs"]] == [False, False]
    # the input is read as split reads it (ranged GETs); one segment and its index per unit
    units = sum(j["units"] for j in r["jobs"])
    assert steps["process_unit"]["get"] == u["steps"]["split"]["get"]
    assert steps["process_unit"]["bytes_in"] == pytest.approx(u["steps"]["split"]["bytes_in"])
    assert steps["process_unit"]["put"] == 2 * units
    assert steps["process_unit"]["bytes_out"] == pytest.approx(
        u["steps"]["process"]["bytes_out"])
    # merge reads one segment index per unit (fused) or per batch: the rest is the same
    fused_merge, unfused_merge = dict(steps["merge"]), dict(u["steps"]["merge"])
    assert fused_merge.pop("get") - unfused_merge.pop("get") == units - sum(
        j["batches"] for j in u["jobs"])
    assert fused_merge == unfused_merge
    # work files: a segment and its index per unit, each job's plan and result; no work
    # tiles (unfused: a work tile per tile, a segment and its index per batch)
    tiles = sum(j["tiles"] for j in r["jobs"])
    assert r["s3"]["work_bytes"] == pytest.approx(sum(j["output_bytes"] - j["header_bytes"]
                                                      for j in r["jobs"]))
    assert r["s3"]["work_objects"] == 2 * units + 2 * 2
    assert u["s3"]["work_objects"] == tiles + 2 * sum(j["batches"] for j in u["jobs"]) + 2 * 2
    assert r["cost_usd"]["s3_requests"] < u["cost_usd"]["s3_requests"]


def test_fused_durations_are_the_calibrated_cpu(fused: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_module, "SINGLE_TASK_JOBS", False)  # a process_unit each
    plans, sizes = _plans(fused)
    vcpus = 3008 / 1769  # the process function's
    # the gray job alone, one unit of 1000 x 1000, no op (no halo): 1 Mpx in, 1 Mpx out;
    # cpu = factor 1.5 * (1 * (read 0.008 + no op) + 1 * zstd 0.02) = 0.042 s, on every vCPU
    gray = est.estimate(plans[1:], CAL, FAST_IO, input_bytes=sizes[1:])["steps"]["process_unit"]
    assert gray["cpu_s"] == pytest.approx(0.042)
    assert gray["seconds"] == pytest.approx(0.042 / vcpus)
    assert gray["gb_s"] == pytest.approx(gray["seconds"] * 3008 / 1024)
    one = est.estimate(plans[1:], CAL, {**FAST_IO, "memory_process_mb": 1769},
                       input_bytes=sizes[1:])["steps"]["process_unit"]
    assert one["seconds"] == pytest.approx(0.042)  # one vCPU
    # ... but never faster than its input read, which runs in one thread: 1 * 0.1 s
    slow_read = dict(CAL, process_unit={"uint8x1": {"read_cpu_s_per_mpx": 0.1, "factor": 1.0}})
    slow = est.estimate(plans[1:], slow_read, FAST_IO,
                        input_bytes=sizes[1:])["steps"]["process_unit"]
    assert slow["cpu_s"] == pytest.approx(0.12) and slow["seconds"] == pytest.approx(0.1)
    # both jobs, unit by unit: RGB read 0.016 + blur 0.004 per haloed Mpx, deflate 0.05 out
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)["steps"]["process_unit"]
    cpu = seconds = 0.0
    for plan, (read, op, enc, factor) in zip(plans, [(0.016, 0.004, 0.05, 1.0),
                                                     (0.008, 0.0, 0.02, 1.5)], strict=True):
        for haloed, out, _tiles in est.item_work(plan)[0]:
            unit = factor * (haloed * (read + op) + out * enc)
            cpu += unit
            seconds += max(factor * haloed * read, unit / vcpus)
    assert r["cpu_s"] == pytest.approx(cpu) and r["seconds"] == pytest.approx(seconds)


def test_a_fused_job_of_one_unit_is_one_process_job(fused: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The gray job (one unit) runs as one ProcessJob on the process function: its unit's
    and its merge's work in one invocation, no Merge task, no Map; the other job (two
    units) as before. The same work is costed either way; a small output's segment stays
    in memory (held): no segment or index object, the output uploaded, not copied."""
    plans, sizes = _plans(fused)
    gray = [plans[1]]
    assert [single_task(p) for p in plans] == [False, True]
    assert held_output(plans[1])  # 1000 x 1000 gray: 1 MB uncompressed
    latency = {**FAST_IO, "state_latency_s": 0.05}

    def run() -> dict[str, Any]:
        return est.estimate(gray, CAL, latency, input_bytes=sizes[1:])

    one = run()
    monkeypatch.setattr(plan_module, "HELD_OUTPUT_BYTES", 0)
    stored = run()  # one task, its segment written and read back as merge reads it
    monkeypatch.setattr(plan_module, "SINGLE_TASK_JOBS", False)
    assert not single_task(plans[1])
    two = run()
    assert est.FUNCTION_OF["process_job"] == "process"
    before = two["steps"]
    assert before["process_unit"]["invocations"] == before["merge"]["invocations"] == 1
    for r in (one, stored):
        job, steps = r["steps"]["process_job"], r["steps"]
        assert job["invocations"] == 1 and "process_unit" not in steps and "merge" not in steps
        assert job["cpu_s"] == pytest.approx(before["process_unit"]["cpu_s"]
                                             + before["merge"]["cpu_s"])
        # billed at the process function's memory; one invocation fewer
        assert job["gb_s"] == pytest.approx(job["seconds"] * 3008 / 1024)
        assert r["invocations"] == two["invocations"] - 1
        assert r["jobs"][0]["single"] and not two["jobs"][0]["single"]
        # the job's child execution of the Jobs Map, PlanJob, Fused, ProcessJob against
        # that, ProcessUnits, its unit's child execution and ProcessUnit, Merge
        assert r["state_transitions"]["per_job"] == [4]
        assert two["state_transitions"]["per_job"] == [7]
    job = stored["steps"]["process_job"]
    for key in ("seconds", "get", "put", "bytes_in", "bytes_out"):
        assert job[key] == pytest.approx(before["process_unit"][key] + before["merge"][key])
    assert job["list"] == before["merge"]["list"] - 1  # no listing of recorded errors
    # the same work, one phase (state latency) fewer on the job's path
    assert stored["wall_s"] == pytest.approx(two["wall_s"] - 0.05)
    # held: the input's GETs only; PUTs: the output (one PutObject, it is small) and the
    # result; nothing left in the work location but the plan and the result
    job, out = one["steps"]["process_job"], one["jobs"][0]["output_bytes"]
    assert one["jobs"][0]["held"] and not stored["jobs"][0]["held"]
    assert job["get"] == before["process_unit"]["get"] and job["list"] == 0
    assert job["put"] == 1 + 1
    assert job["bytes_in"] == pytest.approx(before["process_unit"]["bytes_in"])
    assert job["bytes_out"] == pytest.approx(out)
    assert (one["s3"]["work_bytes"], one["s3"]["work_objects"]) == (0, 2)
    assert stored["s3"]["work_objects"] == 2 + 2
    assert one["cost_usd"]["s3_requests"] < stored["cost_usd"]["s3_requests"]


def test_a_small_job_of_several_units_is_one_process_job(
        fused: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RGB job (two pages, two units, 0.7 Mpx) under plan.SINGLE_TASK_PIXELS is one
    ProcessJob: one invocation whose time is its units' times added, then its merge's; the
    same work as the Map's units and Merge, two state transitions fewer than PlanJob,
    Fused, ProcessUnits, two transitions a unit (its child execution, ProcessUnit), Merge."""
    plans, sizes = _plans(fused)
    rgb = [plans[0]]
    assert len(rgb[0].units) == 2 and not single_task(rgb[0])  # with the fixture's 0
    mapped = est.estimate(rgb, CAL, FAST_IO, input_bytes=sizes[:1])
    monkeypatch.setattr(plan_module, "SINGLE_TASK_PIXELS", 16_000_000)
    assert single_task(rgb[0])
    one = est.estimate(rgb, CAL, FAST_IO, input_bytes=sizes[:1])
    before, job = mapped["steps"], one["steps"]["process_job"]
    assert before["process_unit"]["invocations"] == 2 and before["merge"]["invocations"] == 1
    assert job["invocations"] == 1 and {"process_unit", "merge"}.isdisjoint(one["steps"])
    for key in ("cpu_s", "seconds"):
        assert job[key] == pytest.approx(before["process_unit"][key] + before["merge"][key])
    assert one["invocations"] == mapped["invocations"] - 2
    assert one["state_transitions"]["per_job"] == [1 + 3]
    assert mapped["state_transitions"]["per_job"] == [1 + 4 + 2 * 2]
    assert one["jobs"][0]["single"] and one["jobs"][0]["units"] == 2


def test_transitions_take_the_branch_the_plan_takes(manifest: Path, fused: Path) -> None:
    unfused_plans, sizes = _plans(manifest)
    plans, fused_sizes = _plans(fused)
    u = est.estimate(unfused_plans, CAL, FAST_IO, input_bytes=sizes)["state_transitions"]
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=fused_sizes)["state_transitions"]
    # statemachine.asl.json, every Map distributed: each item a child execution (one
    # transition) running its state. The job's child execution of the Jobs Map, PlanJob,
    # Fused, ProcessUnits (+ two per unit), Merge; a job of one unit (the gray one): its
    # child execution, PlanJob, Fused, ProcessJob
    assert [single_task(p) for p in plans] == [False, True]
    assert r["per_job"] == [5 + 2 * len(plans[0].units), 4]
    # its child execution, PlanJob, Fused, Split (+ two per unit), NeedsStats, Process (+ two
    # per batch), Levels, Merge
    assert u["per_job"] == [8 + 2 * len(p.units) + 2 * len(p.batches) for p in unfused_plans]
    assert r["total"] == 3 + sum(r["per_job"]) and r["total"] < u["total"]


def test_level_units_of_a_pyramid_job_that_is_not_fused(tmp_path: Path) -> None:
    """A pyramid job that is not fused runs one build_levels per split unit on the process
    function (the BuildLevels Map: two transitions more each, its child execution and
    BuildLevel, and the Map state)."""
    _write_manifest(tmp_path, fuse=False)
    flat = json.loads((tmp_path / "m.json").read_text())
    pyramid = {**flat, "defaults": {**flat["defaults"], "output_options": {
        "tile": 128, "pyramid": True}}}
    (tmp_path / "p.json").write_text(json.dumps(pyramid))
    plans, sizes = _plans(tmp_path / "m.json")
    levels, level_sizes = _plans(tmp_path / "p.json")
    r = est.estimate(levels, CAL, FAST_IO, input_bytes=level_sizes)
    assert r["steps"]["build_levels"]["invocations"] == sum(len(p.units) for p in levels)
    assert r["steps"]["build_levels"]["cpu_s"] > 0
    flat_r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    assert "build_levels" not in flat_r["steps"]
    assert r["state_transitions"]["per_job"] == [
        n + 1 + 2 * len(p.units) for n, p in zip(flat_r["state_transitions"]["per_job"], levels,
                                             strict=True)]


def _tiff_job(folder: Path, shape: tuple[int, ...], dtype: str, **options: Any) -> Path:
    """A manifest of one job (no op) on a real TIFF of ``shape`` (zeros, tiled, deflated:
    small on disk), its output_options ``options``."""
    import numpy as np
    import tifffile

    src = folder / f"in-{'x'.join(map(str, shape))}-{dtype}.tif"
    if not src.exists():
        tifffile.imwrite(src, np.zeros(shape, dtype), tile=(256, 256), compression="zlib",
                         photometric="rgb" if len(shape) == 3 else "minisblack")
    m = folder / f"m-{len(list(folder.glob('m-*.json')))}.json"
    m.write_text(json.dumps({"jobs": [{"input": src.name, "output": "out/o.tif",
                                       "output_options": {"tile": 512, **options}}]}))
    return m


def test_pyramid_levels_are_in_the_output_size(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyramid adds each level (halved, rounding up, down to the first that fits one
    output tile) to the output's bytes, and so to the work files kept and their storage:
    3000 x 2000 RGB, 512 px output tiles: levels of 1500 x 1000, 750 x 500, 375 x 250."""
    monkeypatch.setattr(plan_module, "HELD_OUTPUT_BYTES", 0)  # its segment written either way
    results = {}
    for pyramid in (False, True):
        plans, sizes = _plans(_tiff_job(tmp_path, (3000, 2000, 3), "uint8",
                                        compression="deflate", pyramid=pyramid))
        results[pyramid] = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    flat, pyr = results[False], results[True]
    mpx = 3000 * 2000 / 1e6
    levels = (1500 * 1000 + 750 * 500 + 375 * 250) / 1e6
    # deflate: 1 MB a Mpx; and the IFDs
    flat_ifds, pyr_ifds = flat["jobs"][0]["header_bytes"], pyr["jobs"][0]["header_bytes"]
    assert flat["jobs"][0]["output_bytes"] == pytest.approx(mpx * 1e6 + flat_ifds)
    assert pyr["jobs"][0]["output_bytes"] == pytest.approx((mpx + levels) * 1e6 + pyr_ifds)
    assert pyr["jobs"][0]["pyramid_bytes"] == pytest.approx(levels * 1e6)
    assert pyr["s3"]["work_bytes"] - flat["s3"]["work_bytes"] == pytest.approx(levels * 1e6)
    assert pyr["s3"]["storage_gb_month"] > flat["s3"]["storage_gb_month"]
    # merge's parts counted the levels already (one run each): unchanged
    assert pyr["jobs"][0]["merge"]["parts"] >= flat["jobs"][0]["merge"]["parts"]


def _masked_jobs(folder: Path, **job: Any) -> dict[bool, Path]:
    """Two manifests of one job each on one masked GeoTIFF (its mask written by GDAL: 1,200 x
    1,000 RGB), the job ``job``, carrying the mask or with ``"masks": false``."""
    import numpy as np
    from conftest import gdal_masked

    src = folder / "masked.tif"
    if not src.exists():
        yy, xx = np.mgrid[0:1200, 0:1000]
        valid = (xx > yy // 3 + 17) & (yy < 1100)
        gdal_masked(src, np.stack([yy % 251, xx % 241, (xx + yy) % 239], -1).astype(np.uint8),
                    valid, block=256)
    out = {}
    for masks in (True, False):
        m = folder / f"mask-{masks}-{len(list(folder.glob('mask-*.json')))}.json"
        options = {"tile": 128, **job.pop("output_options", {}), "masks": masks}
        m.write_text(json.dumps({"jobs": [{"input": src.name, "output": "out/o.tif",
                                           "tile": 256, **job, "output_options": options}]}))
        job["output_options"] = {k: v for k, v in options.items() if k != "masks"}
        out[masks] = m
    return out


def _cpu(result: dict[str, Any]) -> float:
    return sum(step["cpu_s"] for step in result["steps"].values())


def test_a_carried_mask_is_costed_as_its_1bit_deflate_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused job (of several units) that carries its input's mask costs, above the same
    job with ``"masks": false``, one decode of the mask over each unit's haloed pixels and
    one encode of its output pixels, at the calibration's 1-bit deflate rate (CPU and bytes
    per Mpx), each unit's mask segment (a PUT and its index) and the mask page's bytes in
    the output; with a pyramid, merge decodes the mask page and encodes the levels' masks
    (1 + L times its pixels, L the levels' share: about a third), their bytes L times its."""
    monkeypatch.setattr(plan_module, "FUSED_UNIT_PIXELS", 4 * 256 * 256)
    cal = json.loads(json.dumps(CAL))
    cal["encode"]["deflate"]["bilevel"] = {"cpu_s_per_mpx": 0.001, "bytes_per_mpx": 2e4}
    paths = _masked_jobs(tmp_path)
    results, plans = {}, {}
    for masks, path in paths.items():
        plans[masks], sizes = _plans(path)
        results[masks] = est.estimate(plans[masks], cal, FAST_IO, input_bytes=sizes)
    on, off = results[True], results[False]
    assert plans[True][0].pages[0].info.mask_ifd and not plans[False][0].pages[0].info.mask_ifd
    units, _ = est.item_work(plans[True][0])
    haloed, out = sum(u[0] for u in units), sum(u[1] for u in units)
    assert out == pytest.approx(1.2)
    assert _cpu(on) - _cpu(off) == pytest.approx(0.001 * (haloed + out))
    assert on["jobs"][0]["mask_bytes"] == pytest.approx(2e4 * out)
    assert off["jobs"][0]["mask_bytes"] == 0
    assert on["jobs"][0]["output_bytes"] - off["jobs"][0]["output_bytes"] == pytest.approx(
        2e4 * out)
    assert len(units) > 1 and on["s3"]["put"] - off["s3"]["put"] == 2 * len(units)
    assert on["cost_usd"]["total"] > off["cost_usd"]["total"]
    pyramid = replace(plans[True][0], spec=replace(plans[True][0].spec, output_options=replace(
        plans[True][0].spec.output_options, pyramid=True)))
    share = (600 * 500 + 300 * 250 + 150 * 125 + 75 * 63) / (1200 * 1000)  # 128 px tiles
    work = est.mask_work(pyramid, cal, set(), "jobs[0]", units, [], share)
    assert work.base_bytes == pytest.approx(2e4 * out)
    assert work.level_bytes == pytest.approx(2e4 * out * share)
    assert work.merge_cpu == pytest.approx(0.001 * out * (1 + share))
    assert work.units == [(0.001 * (h + o), 2e4 * h, 2e4 * o) for h, o, _ in units]


@pytest.mark.parametrize("fuse", [True, False])
def test_each_op_that_reads_the_mask_reads_it_again(tmp_path: Path, fuse: bool) -> None:
    """A blur reads the carried mask (to leave the masked-out pixels out of its sums) as a
    downsample does (``reads_mask``): each reads it again over each tile's haloed pixels, in
    the fused unit (after the unit's own read, for its output's mask) or in each batch."""
    cal = json.loads(json.dumps(CAL))
    cal["encode"]["deflate"]["bilevel"] = {"cpu_s_per_mpx": 0.001, "bytes_per_mpx": 2e4}
    blur, down = {"op": "gaussian_blur", "sigma": 2}, {"op": "downsample", "factor": 2}
    for ops, reads in (([], 0), ([blur], 1), ([blur, down], 2)):
        plans, _ = _plans(_masked_jobs(tmp_path, ops=ops, fuse=fuse)[True])
        assert bool(plans[0].fused) is fuse
        units, batches = est.item_work(plans[0])
        work = est.mask_work(plans[0], cal, set(), "jobs[0]", units, batches, 0.0)
        again = reads if fuse else 0
        assert work.units == [(0.001 * ((1 + again) * h + o), 2e4 * (1 + again) * h, 2e4 * o)
                              for h, o, _ in units]
        assert work.batches == [(0.001 * (reads - again) * h, 2e4 * (reads - again) * h)
                                for h, _o, _ in batches]


THRESHOLD = {"op": "threshold", "value": 120}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("ops,reread", [
    ([THRESHOLD], 0), ([{"op": "downsample", "factor": 2}, THRESHOLD], 1),
    ([{"op": "otsu_threshold"}], 1)])
def test_a_masked_page_written_1bit_reads_its_mask_again_for_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fuse: bool,
        ops: list[dict[str, Any]], reread: int) -> None:
    """A masked gray page binarised to a 1-bit output writes its masked-out pixels white by
    the output's mask (TileEvaluator.output): its tiles read the mask once more over their
    cores (output Mpx x factor^2: the page's 1.2 Mpx), in the fused unit or in the process
    batch (not a statistics round), besides the reads of the ops that read it (a
    downsample, otsu_threshold: over the haloed pixels). The same job written 8-bit reads it
    as before. A batch that reads the mask opens the input: one GET more, as a fused unit
    counts one. Before: the output's read was not counted, nor a batch's GET."""
    import numpy as np
    from conftest import gdal_masked

    monkeypatch.setattr(plan_module, "FUSED_UNIT_PIXELS", 4 * 256 * 256)  # (units, not a
    monkeypatch.setattr(plan_module, "SINGLE_TASK_PIXELS", 0)  # ProcessJob)
    cal = json.loads(json.dumps(CAL))
    cal["encode"]["deflate"]["bilevel"] = {"cpu_s_per_mpx": 0.001, "bytes_per_mpx": 2e4}
    yy, xx = np.mgrid[0:1200, 0:1000]
    gdal_masked(tmp_path / "gray.tif", ((xx * 7 + yy * 3) % 251).astype(np.uint8),
                (xx > yy // 3 + 17) & (yy < 1100), block=256)
    steps = {}
    for bilevel in (True, False):
        m = tmp_path / f"m-{bilevel}.json"
        m.write_text(json.dumps({"jobs": [{
            "input": "gray.tif", "output": "out/o.tif", "tile": 256, "ops": ops, "fuse": fuse,
            "output_options": {"tile": 128, "compression": "deflate", "bilevel": bilevel}}]}))
        [plan], sizes = _plans(m)
        assert plan.pages[0].info.mask_ifd and plan.pages[0].one_bit is bilevel
        fused, f = plan.fused, plan.pages[0].factor
        units, batches = est.item_work(plan)
        work = est.mask_work(plan, cal, set(), "jobs[0]", units, batches, 0.0)
        again = reread * fused
        cores = [bilevel * fused * o * f * f for _h, o, _ in units]
        assert sum(u[1] for u in units) * f * f == pytest.approx(1.2)
        assert work.units == [(pytest.approx(0.001 * ((1 + again) * h + c + o)),
                               pytest.approx(2e4 * ((1 + again) * h + c)), 2e4 * o)
                              for (h, o, _), c in zip(units, cores, strict=True)]
        assert work.batches == [(0.001 * (reread - again) * h, 2e4 * (reread - again) * h)
                                for h, _o, _ in batches]
        assert work.outputs == [(pytest.approx(0.001 * c), pytest.approx(2e4 * c)) for c in (
            bilevel * (not fused) * o * f * f for _h, o, _ in batches)]
        r = est.estimate([plan], cal, FAST_IO, input_bytes=sizes)
        steps[bilevel] = r["steps"]
        if not fused:
            rounds = r["jobs"][0]["stats_rounds"]
            assert (rounds > 0) is (ops[0]["op"] == "otsu_threshold")
            assert steps[bilevel].get("stats", {"get": 0})["get"] == rounds * sum(
                1 + tiles + bool(reread) for _h, _o, tiles in batches)
            assert steps[bilevel]["process"]["get"] == sum(
                1 + tiles + bool(reread or bilevel) for _h, _o, tiles in batches)
    step = "process_unit" if fused else "process"
    assert steps[True][step]["bytes_in"] - steps[False][step]["bytes_in"] == pytest.approx(
        2e4 * 1.2)


@pytest.mark.parametrize("job", [
    {}, {"ops": [{"op": "downsample", "factor": 2}], "fuse": False}])
def test_the_masks_cost_with_the_shipped_calibration_is_bounded(tmp_path: Path,
                                                                job: dict[str, Any]) -> None:
    """With the shipped calibration, a carried mask costs more than none (fused; and in
    batches after a downsample, which reads it again), and within what its bits allow: at
    least one encode of its output pixels at the measured 1-bit deflate rate; at most four
    passes over its input pixels at the rate of deflating a band of bytes, eight times its
    bits (it has at most a read, a write, a downsample's second read); its bytes at most its
    pixels' raw bits (deflate does not grow a page of runs), an eighth of the RGB output's."""
    cal = est.load_calibration()
    paths = _masked_jobs(tmp_path, **job)
    results = {}
    for masks, path in paths.items():
        plans, sizes = _plans(path)
        results[masks] = est.estimate(plans, cal, input_bytes=sizes)
    on, off = results[True], results[False]
    f = 2 if job else 1
    out_mpx = (1200 // f) * (1000 // f) / 1e6
    one_bit = cal["encode"]["deflate"]["bilevel"]
    byte_band = cal["encode"]["deflate"]["uint8x1"]
    extra = _cpu(on) - _cpu(off)
    assert out_mpx * one_bit["cpu_s_per_mpx"] <= extra <= 4 * 1.2 * byte_band["cpu_s_per_mpx"]
    mask_bytes = on["jobs"][0]["mask_bytes"]
    assert 0 < mask_bytes <= out_mpx * 1e6 / 8
    assert mask_bytes <= off["jobs"][0]["output_bytes"] / 8
    assert on["cost_usd"]["total"] > off["cost_usd"]["total"]
    assert on["wall_s"] >= off["wall_s"]


def test_uncompressed_output_is_whole_tiles(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncompressed, every output tile is stored whole, an edge tile padded: 1300 x 1000
    float32 in 512 px tiles is 3 x 2 tiles of 512 * 512 * 4 bytes (6.3 MB, not 5.2 MB);
    with a pyramid its levels too (650 x 500: 2 x 1 tiles; 325 x 250: 1)."""
    monkeypatch.setattr(plan_module, "HELD_OUTPUT_BYTES", 0)  # its segment written
    plans, sizes = _plans(_tiff_job(tmp_path, (1300, 1000), "float32", compression="none"))
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    tile = 512 * 512 * 4
    assert r["jobs"][0]["output_bytes"] - r["jobs"][0]["header_bytes"] == 3 * 2 * tile
    # the segments written hold those whole tiles too
    assert r["s3"]["work_bytes"] == pytest.approx(3 * 2 * tile)
    plans, sizes = _plans(_tiff_job(tmp_path, (1300, 1000), "float32", compression="none",
                                    pyramid=True))
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    assert r["jobs"][0]["output_bytes"] - r["jobs"][0]["header_bytes"] == (6 + 2 + 1) * tile
    # a page written as one strip (libvips would refuse its tile) is its pixels alone
    plans, sizes = _plans(_tiff_job(tmp_path, (100, 120), "float32", compression="none",
                                    pyramid=True))
    assert plans[0].pages[0].strip
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    assert r["jobs"][0]["output_bytes"] - r["jobs"][0]["header_bytes"] == 100 * 120 * 4


def test_an_op_whose_output_size_is_uncalibrated_is_noted(manifest: Path,
                                                           tmp_path: Path) -> None:
    """The calibration's bytes per Mpx are the benchmark's blurred content: a job ending in
    canny, a threshold (near-binary: compresses far better) or equalize_hist, unsharp_mask,
    normalize (worse) gets a note naming the job and the op, with the direction, in the
    text and the JSON; no factor is applied."""
    m = json.loads(manifest.read_text())
    m["jobs"][0]["ops"] = [{"op": "to_gray"}, {"op": "otsu_threshold"}]
    m["jobs"][1]["ops"] = [{"op": "equalize_hist"}]
    path = tmp_path / "ops.json"
    path.write_text(json.dumps(m))
    plans, sizes = _plans(path)
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    [over] = [n for n in r["notes"] if n.startswith(f"jobs[0] ({plans[0].spec.input}): ")]
    [under] = [n for n in r["notes"] if n.startswith(f"jobs[1] ({plans[1].spec.input}): ")]
    assert "after otsu_threshold is not calibrated" in over and "overestimated" in over
    assert "after equalize_hist is not calibrated" in under and "underestimated" in under
    text = est.format_text(r)
    assert f"note: {over}" in text and f"note: {under}" in text
    # the size itself is the calibrated one: deflate, 0.4 MB a Mpx of gray
    job = r["jobs"][0]
    assert job["output_bytes"] - job["header_bytes"] == pytest.approx(
        job["output_megapixels"] * 4e5)
    # a blur alone: nothing to note
    plain = est.estimate(_plans(manifest)[0], CAL, FAST_IO, input_bytes=sizes)
    assert not any("not calibrated (costed as" in n for n in plain["notes"])


def test_each_page_adds_its_ifd_to_the_output(tmp_path: Path) -> None:
    """Many small pages: each adds its IFD and tag values (what merge writes around the
    tiles, computed as merge does, with tifffile) to the output's bytes, not to the work
    files. Against a real file of the same pages written by tifffile: the bytes that are
    not tiles."""
    import numpy as np
    import tifffile

    pages = 50
    src = tmp_path / "pages.tif"
    with tifffile.TiffWriter(src) as tif:
        for _ in range(pages):
            tif.write(np.zeros((256, 256, 3), np.uint8), tile=(256, 256), photometric="rgb",
                      compression="zlib")
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": src.name, "output": "out/o.tif",
                                       "output_options": {"compression": "jpeg"}}]}))
    plans, sizes = _plans(m)
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    [job] = r["jobs"]
    assert job["output_bytes"] == pytest.approx(job["output_megapixels"] * 1e6
                                                + job["header_bytes"])
    real = tmp_path / "real.tif"
    with tifffile.TiffWriter(real) as tif:
        for _ in range(pages):
            tif.write(np.zeros((256, 256, 3), np.uint8), tile=(512, 512), photometric="rgb",
                      compression="jpeg", software="tiffpipe 0.1.0", metadata=None)
    with tifffile.TiffFile(real) as tif:
        tiles = sum(sum(p.databytecounts) for p in tif.pages)
    around = real.stat().st_size - tiles
    assert around > 100 * pages  # a few hundred bytes a page
    assert job["header_bytes"] == pytest.approx(around, rel=0.05), (job["header_bytes"], around)


def test_a_class_maps_kept_colormap_counts_in_its_header_bytes(tmp_path: Path) -> None:
    """A uint16 class map's ColorMap (65,536 entries: 384 KiB, written by merge when the
    chain keeps the values as indices) is counted in the output's bytes, as merge writes
    it; a blur drops it, and the bytes it took."""
    import numpy as np
    import tifffile

    colours = np.zeros((3, 65536), np.uint16)
    colours[:, [5, 900]] = [[65535, 0], [0, 65535], [0, 0]]
    tifffile.imwrite(tmp_path / "lc16.tif", np.full((64, 64), 900, np.uint16), metadata=None,
                     photometric="minisblack",
                     extratags=[(320, "H", colours.size, colours.ravel(), True)])
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [
        {"input": "lc16.tif", "output": "out/copy.tif"},
        {"input": "lc16.tif", "output": "out/blur.tif",
         "ops": [{"op": "gaussian_blur", "sigma": 1}]}]}))
    plans, sizes = _plans(m)
    copy, blur = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)["jobs"]
    assert copy["header_bytes"] - blur["header_bytes"] == pytest.approx(colours.nbytes, abs=64)


def test_a_calibration_without_process_unit(manifest: Path, fused: Path,
                                            tmp_path: Path) -> None:
    """A calibration written before fused jobs estimates unfused jobs without a note; a
    fused one is costed (below) with a note that names the file, what it lacks, the job, and
    how to get it measured (before, the whole manifest was refused)."""
    path = tmp_path / "old-calibration.json"
    path.write_text(json.dumps({k: v for k, v in CAL.items() if k != "process_unit"}))
    cal = est.load_calibration(path)
    unfused_plans, sizes = _plans(manifest)
    r = est.estimate(unfused_plans, cal, FAST_IO, input_bytes=sizes)
    assert r["cost_usd"]["total"] > 0 and not [n for n in r["notes"] if "process_unit" in n]
    plans, fused_sizes = _plans(fused)
    notes = est.estimate(plans, cal, FAST_IO, input_bytes=fused_sizes)["notes"]
    [note] = [n for n in notes if n.startswith("jobs[0] (")]
    for words in (str(path), "process_unit", "rerun bench/compare.py", '"fuse": false'):
        assert words in note, note


def test_a_timeout_warning_names_its_job_once(fused: Path) -> None:
    """An input read this slow (2,000 s per Mpx) passes the 900 s timeout in every unit:
    one warning per job, naming it (index and input) and its longest invocation; the gray
    job's ProcessJob (its unit, then its merge, in one invocation: once checked three
    times, three lines) once, at its whole time."""
    plans, sizes = _plans(fused)
    slow = dict(CAL, process_unit={k: {"read_cpu_s_per_mpx": 2000.0, "factor": 1.0}
                                   for k in ("uint8x1", "uint8x3")})
    r = est.estimate(plans, slow, FAST_IO, input_bytes=sizes)
    warnings = [w for w in r["warnings"] if "Lambda timeout" in w]
    assert len(warnings) == 2, warnings  # one a job
    rgb, gray = (next(w for w in warnings if w.startswith(f"jobs[{i}] ({p.spec.input}): "))
                 for i, p in enumerate(plans))
    whole = r["steps"]["process_job"]["seconds"]
    assert f"its longest invocation, process_job, needs about {whole:.0f} s, more than the " \
           "900 s Lambda timeout" in gray
    assert "its longest invocation, process_unit" in rgb


def test_the_arm64_price_names_its_tier() -> None:
    """$0.0000133334 per GB-s is Lambda arm64's first tier, 0 to 7.5 billion GB-s a month
    (x86's first tier is 6 billion, at $0.0000166667)."""
    price = est.ASSUMPTIONS["lambda_gb_s"]
    assert price.value == 0.0000133334 and "first 7.5 billion GB-s" in price.help


def test_overrides(manifest: Path) -> None:
    plans, sizes = _plans(manifest)
    base = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    free = est.estimate(plans, CAL, {**FAST_IO, "lambda_gb_s": 0.0}, input_bytes=sizes)
    assert free["cost_usd"]["lambda_duration"] == 0
    assert free["cost_usd"]["total"] == pytest.approx(base["cost_usd"]["total"]
                                                      - base["cost_usd"]["lambda_duration"])
    assert free["assumptions"]["lambda_gb_s"]["overridden"] is True
    big = est.estimate(plans, CAL, {**FAST_IO, "memory_process_mb": 6016}, input_bytes=sizes)
    assert big["steps"]["process"]["gb_s"] == pytest.approx(2 * base["steps"]["process"]["gb_s"])
    fast = est.estimate(plans, CAL, {**FAST_IO, "lambda_core_speed": 2.0}, input_bytes=sizes)
    assert fast["steps"]["split"]["seconds"] == pytest.approx(
        base["steps"]["split"]["seconds"] / 2)
    assert est.parse_overrides(["s3_get=1e-6", "memory-merge-mb=1024"]) == {
        "s3_get": 1e-6, "memory_merge_mb": 1024.0}
    with pytest.raises(est.EstimateError, match="unknown assumption"):
        est.parse_overrides(["no_such=1"])
    with pytest.raises(est.EstimateError, match="KEY=VALUE"):
        est.parse_overrides(["lambda_gb_s"])


def test_wall_time_falls_with_concurrency(manifest: Path) -> None:
    plans, sizes = _plans(manifest)
    one = est.estimate(plans, CAL, FAST_IO, concurrency=1, input_bytes=sizes)
    many = est.estimate(plans, CAL, FAST_IO, concurrency=100, input_bytes=sizes)
    work = sum(s["seconds"] for k, s in one["steps"].items() if not k.startswith("cold_"))
    # one slot: every invocation one after the other (plan_run counted twice: run + report)
    assert one["wall_s"] >= work - 1e-6
    assert many["wall_s"] < one["wall_s"]
    # every task runs: on one slot, one after the other (the tasks left waiting when the
    # last running one ended were once dropped)
    assert est.simulate([[("a", [1.0]), ("b", [1.0, 1.0])], [("a", [1.0])]], 1, 1, 1, 0.0) \
        == 4.0
    assert est.simulate([[("a", [1.0]), ("b", [1.0, 1.0])], [("a", [1.0])]], 1, 0, 0, 0.0) \
        == 4.0
    # slots go first come, first served: job 0's four tasks, then job 1's
    assert est.simulate([[("a", [1.0] * 4)], [("a", [2.0])]], 2, 0, 0, 0.0) == 4.0
    assert est.simulate([[("a", [1.0] * 4)], [("a", [2.0])]], 3, 0, 0, 0.0) == 3.0
    assert est.simulate([[("a", [1.0] * 10)]], 100, 0, 3, 0.0) == 4.0  # a Map's cap
    assert est.simulate([[("a", [1.0])], [("a", [1.0])]], 4, 1, 0, 0.5) == 3.0  # one job at once


def test_op_costs_interpolate_and_fall_back() -> None:
    notes: set[str] = set()
    assert est.op_cost(CAL["ops"], {"op": "gaussian_blur", "sigma": 1.5}, "uint8", 3,
                       notes) == pytest.approx(0.003)
    assert est.op_cost(CAL["ops"], {"op": "gaussian_blur", "sigma": 4.0}, "uint8", 3,
                       notes) == pytest.approx(0.004)  # past the range: its nearest end
    assert est.op_cost(CAL["ops"], {"op": "median_blur", "ksize": 3}, "uint8", 3,
                       notes) == pytest.approx(0.004)  # not calibrated: as sigma 2 blur
    assert any("median_blur is not calibrated" in n for n in notes)
    # uint16 RGB: scaled from uint8 RGB by bytes per pixel
    assert est.op_cost(CAL["ops"], {"op": "gaussian_blur", "sigma": 2.0}, "uint16", 3,
                       notes) == pytest.approx(0.008)


def test_op_costs_never_extrapolate_a_line() -> None:
    """Between two measurements an op's cost is interpolated (and noted so); outside the
    measured range it is the nearest end's, noted "extrapolated", never a line carried on:
    OpenCV's median_blur switches algorithm above ksize 5, and a line through ksize 3 and 5
    put ksize 7 and up 3-19x under (a synthetic calibration: no timing asserted)."""
    ops = {"median_blur": {"uint8x3": [
        {"params": {"ksize": 3}, "cpu_s_per_mpx": 1.0},
        {"params": {"ksize": 5}, "cpu_s_per_mpx": 2.0},
        {"params": {"ksize": 7}, "cpu_s_per_mpx": 90.0},
        {"params": {"ksize": 101}, "cpu_s_per_mpx": 60.0}]}}

    def cost(ksize: int) -> tuple[float, set[str]]:
        notes: set[str] = set()
        return est.op_cost(ops, {"op": "median_blur", "ksize": ksize}, "uint8", 3, notes), notes

    assert cost(5) == (2.0, set())  # measured
    value, notes = cost(4)
    assert value == pytest.approx(1.5) and notes == {
        "op median_blur: ksize=4 interpolated from ksize in [3.0, 5.0, 7.0, 101.0]"}
    assert cost(6)[0] == pytest.approx(46.0)  # between 5 and 7
    assert cost(54)[0] == pytest.approx(75.0)  # between 7 and 101
    value, notes = cost(255)  # past the range: ksize 101's, not a line falling below zero
    assert value == pytest.approx(60.0)
    [note] = notes
    assert "ksize=255 extrapolated" in note and "costed as ksize=101" in note
    assert "interpolated" not in note
    # the calibration of ksize 3 and 5 alone: ksize 7 is ksize 5's, said to be extrapolated
    ops["median_blur"]["uint8x3"] = ops["median_blur"]["uint8x3"][:2]
    value, notes = cost(7)
    assert value == pytest.approx(2.0) and any("extrapolated" in n for n in notes)


def test_assume_pages_needs_no_input(tmp_path: Path) -> None:
    pages = est.parse_assume_pages("2000x1000x3:uint16*2,500x500")
    assert [(p.width, p.height, p.channels, p.dtype) for p in pages] == [
        (2000, 1000, 3, "uint16"), (2000, 1000, 3, "uint16"), (500, 500, 1, "uint8")]
    with pytest.raises(est.EstimateError, match="expected WxH"):
        est.parse_assume_pages("2000by1000")
    # every sample type tiffpipe reads, and multispectral pages: described as read_infos
    # describes such files (gray, gray + alpha, RGB, RGBA, or bands with unspecified extras)
    kinds = est.parse_assume_pages("64x32:int16,64x32x2:float64,64x32x4,64x32x8:uint32")
    assert [(p.dtype, p.channels, p.photometric, p.extrasamples) for p in kinds] == [
        ("int16", 1, "minisblack", []), ("float64", 2, "minisblack", [2]),
        ("uint8", 4, "rgb", [2]), ("uint32", 8, "minisblack", [0] * 7)]
    for bad in ("64x32:bool", "64x32x0", "64x32x65536"):
        with pytest.raises(est.EstimateError, match="channels 1-65535 and a dtype of uint8"):
            est.parse_assume_pages(bad)
    # beyond what a TIFF or a job can hold: refused at once, not planned for minutes
    assert len(est.parse_assume_pages("4294967295x1*10000")) == 10_000
    for bad in ("99999999999x99999999999", "4294967296x1", "64x64*10001",
                "64x64*5000,64x64*5001", "64x64*0"):
        with pytest.raises(est.EstimateError, match="a side of at most 4294967295 pixels"):
            est.parse_assume_pages(bad)
    bands = tmp_path / "bands.json"
    bands.write_text(json.dumps({"jobs": [{"input": "missing.tif", "output": "o.tif",
                                           "ops": [{"op": "gaussian_blur", "sigma": 2}]}]}))
    planned = est.plan_manifest(str(bands), "20000x20000x12:uint16")
    assert planned.problems == [] and planned.plans[0].pages[0].out_channels == 12
    costed = est.estimate(planned.plans, CAL, concurrency=100, input_bytes=[None])
    assert costed["megapixels"] == pytest.approx(400) and costed["jobs"][0]["output_bytes"] > 0
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "missing.tif", "output": "o.tif",
                                       "output_options": {"compression": "deflate"}}]}))
    planned = est.plan_manifest(str(m), "316228x316228x3")
    plans = planned.plans
    assert planned.problems == [] and planned.sizes == [None]
    r = est.estimate(plans, CAL, concurrency=1000, input_bytes=planned.sizes)
    assert r["megapixels"] == pytest.approx(316228 ** 2 / 1e6)
    # a 100-gigapixel output is composed in S3: no /tmp, well within 10,000 parts
    assert r["warnings"] == []
    [job] = r["jobs"]
    merge = job["merge"]
    assert merge["segments"] == len(plans[0].units) and merge["copies"] >= merge["segments"]
    assert merge["parts"] == merge["copies"] + merge["uploads"] < 10_000
    assert merge["read_through_bytes"] < job["output_bytes"] / 100
    big = job["largest_job"]
    assert big["bound"] == min(big["bounds"], key=big["bounds"].get)
    assert big["bounds"]["s3_object"] == pytest.approx(
        5 * 2**40 / ((job["output_bytes"] - job["header_bytes"]) / job["megapixels"]) / 1e3)
    assert big["gigapixels"] > 100
    assert plans[0].fused and r["steps"]["process_unit"]["invocations"] == len(plans[0].units)
    assert math.isfinite(r["wall_s"]) and r["wall_s"] > 0


def test_the_largest_job_does_not_depend_on_jobs_0_size(tmp_path: Path) -> None:
    """The largest job like jobs[0] is sized at the parts that job would have (its segments
    cut as plan_parts cuts them: at least 5 MiB, about COPY_PART at most), not at jobs[0]'s
    own bytes per part: a 2000 x 2000 page once gave "10,000 parts of 3 MiB" (below S3's
    5 MiB minimum) and "0.0 TB of output", a 10,000 x 10,000 one 67 Gpx."""
    from pipeline.core.tiff_layout import COPY_PART, MAX_PART, MIN_PART

    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "missing.tif", "output": "o.tif",
                                       "output_options": {"compression": "deflate"}}]}))
    found = []
    for pages in ("2000x2000x3", "10000x10000x3", "40000x40000x3"):
        planned = est.plan_manifest(str(m), pages)
        r = est.estimate(planned.plans, CAL, FAST_IO, input_bytes=planned.sizes)
        found.append(r["jobs"][0]["largest_job"])
        text = est.format_text(r)
        assert "0.0 TB" not in text and "parts of 256 MiB" in text, text
    assert found[0] == found[1] == found[2]
    big = found[0]
    # fused units of 256 Mi px at 1 MB a Mpx: a 268 MB segment each, one copied part; the
    # header's part makes 10,001 parts at 10,000 units: the parts bound it, just below
    assert big["bytes_per_part"] == pytest.approx(256 * 2**20)
    assert big["bound"] == "parts" and big["gigapixels"] == pytest.approx(
        9_999 * 256 * 2**20 / 1e9, rel=1e-3)
    assert big["output_bytes"] == pytest.approx(big["gigapixels"] * 1e9)  # 1 byte a pixel
    # whatever the codec's bytes per Mpx, parts stay within S3's sizes
    for bpm in (1e3, 1e4, 1e5, 1e6, 3e6, 1e8):
        for fused in (True, False):
            got = est.largest_job(bpm, fused, tile_px=1024 ** 2)
            assert MIN_PART <= got["bytes_per_part"] <= min(COPY_PART, MAX_PART)
            assert got["output_bytes"] <= 5 * 2**40 * 1.0001
    # a pyramid's levels count towards S3's object
    assert est.largest_job(3e6, True, levels=1 / 3)["bounds"]["s3_object"] == pytest.approx(
        est.largest_job(3e6, True)["bounds"]["s3_object"] * 3 / 4)
    assert est_text_size(0.5e12) == "500.0 GB" and est_text_size(2.5e6) == "2.5 MB"


def est_text_size(n: float) -> str:
    from pipeline.estimate.text import _size

    return _size(n)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_text_and_json(manifest: Path, fused: Path, tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(CAL))
    code, out, err = _cli("estimate", str(manifest), "--calibration", str(cal),
                          "--concurrency", "50", "--price", "lambda_gb_s=0.00002")
    assert code == 0, err
    for word in ("invocations", "GB-s", "state transitions", "total", "concurrency 50",
                 "lambda_gb_s", "(overridden)", "test cpu"):
        assert word in out
    code, out, err = _cli("estimate", str(manifest), "--calibration", str(cal), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {"jobs", "steps", "state_transitions", "s3", "cost_usd", "wall_s",
            "assumptions", "calibration"} <= set(doc)
    assert doc["cost_usd"]["total"] > 0
    assert [j["fused"] for j in doc["jobs"]] == [False, False]
    code, out, err = _cli("estimate", str(fused), "--calibration", str(cal))
    assert code == 0, err
    assert "fused: 2 units" in out and "process_unit" in out and str(cal) in out
    assert "fused, one unit: split, process and merge in one invocation (ProcessJob)" in out
    # its output is held: uploaded from memory, nothing composed or read through in S3
    gray = out[out.index("jobs[1]"):].splitlines()[1]
    assert gray.startswith("    ProcessJob uploads 400.8 kB from memory (its segment held: ")
    assert gray.endswith("one PutObject") and "read through" not in gray
    # usage errors exit 2
    assert _cli("estimate", str(manifest), "--calibration", str(tmp_path / "none.json"))[0] == 2
    assert _cli("estimate", str(manifest), "--calibration", str(cal), "--price", "x=1")[0] == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    code, _, err = _cli("estimate", str(manifest), "--calibration", str(bad))
    assert code == 2 and "calibration" in err


def test_every_input_that_cannot_be_read_is_listed_at_once(manifest: Path,
                                                           tmp_path: Path) -> None:
    """Inputs missing, not TIFFs or lacking a page are each a problem of their job, listed
    together, as ``validate --inputs`` lists the jobs that would fail; the readable inputs'
    jobs are still planned, and costed (exit 1: some jobs are not)."""
    (tmp_path / "notes.tif").write_text("not a TIFF")
    jobs = [{"input": "gone.tif", "output": "o0.tif"},
            {"input": "rgb.tif", "output": "o1.tif"},  # readable (the manifest fixture's)
            {"input": "lost/also_gone.tif", "output": "o2.tif"},
            {"input": "notes.tif", "output": "o3.tif"},
            {"input": "gray.tif", "output": "o4.tif", "pages": [3]}]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"jobs": jobs}))
    planned = est.plan_manifest(str(batch))
    plans, problems = planned.plans, planned.problems
    assert [p.split(": ")[:2] for p in problems] == [
        ["jobs[0]", "InputNotFoundError"], ["jobs[2]", "InputNotFoundError"],
        ["jobs[3]", "NotATiffError"], ["jobs[4]", "PageNotFoundError"]]
    for problem, name in zip(problems, ("gone.tif", "lost/also_gone.tif", "notes.tif",
                                        "gray.tif"), strict=True):
        assert str(tmp_path / name) in problem, problem
    assert "does not exist" in problems[0] and "page 3" in problems[3]
    assert [plan.spec.input for plan in plans] == [str(tmp_path / "rgb.tif")]
    code, out, err = _cli("estimate", str(batch))  # (the good job costed, the others named)
    assert code == 1 and out.startswith("estimate for 1 job(s), "), err
    for problem in problems:
        assert problem in err, err
    assert "Traceback" not in err


def test_the_shipped_calibration_loads() -> None:
    cal = est.load_calibration()
    assert cal["format"] == est.CALIBRATION_FORMAT
    assert cal["machine"]["cores"] >= 1
    for kind in ("uint8x1", "uint8x3"):
        assert cal["split"][kind]["cpu_s_per_mpx"] > 0
        assert cal["encode"]["deflate"][kind]["bytes_per_mpx"] > 0
    assert cal["ops"]["gaussian_blur"]
    # written before fused jobs, a file has no process_unit (fused jobs then noted, costed from
    # split and process);
    # bench/compare.py writes one, with each kind's input read and factor
    for entry in cal.get("process_unit", {}).values():
        assert entry["read_cpu_s_per_mpx"] >= 0 and entry["factor"] > 0


def test_a_missing_calibration_file_says_what_to_do(tmp_path: Path) -> None:
    """Named, and what to do from an installed tiffpipe too (bench/ is a checkout's)."""
    with pytest.raises(est.EstimateError) as caught:
        est.load_calibration(tmp_path / "none.json")
    message = str(caught.value)
    assert str(tmp_path / "none.json") in message
    assert "leave out --calibration for the one shipped with tiffpipe" in message


def test_a_job_plan_job_refuses_for_its_output_is_not_costed(tmp_path: Path) -> None:
    """JPEG output of 16-bit pages: PlanJob refuses the job, so estimate lists it as a
    problem (the manifest cannot run) instead of costing it."""
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "missing.tif", "output": "o.tif",
                                       "output_options": {"compression": "jpeg"}}]}))
    [problem] = est.plan_manifest(str(m), "512x512:uint16*3").problems
    assert problem.startswith(f"jobs[0]: OperationError: {tmp_path / 'missing.tif'}: pages "
                              "0-2 (3 pages): jpeg output needs uint8"), problem


def test_a_page_the_assumed_pages_lack_is_a_problem_as_planjob_makes_it(tmp_path: Path
                                                                        ) -> None:
    """A job whose ``pages`` lists a page beyond ``--assume-pages``: PlanJob refuses such a
    job (its input lacks the page), and so does estimate (naming the page; exit 1), as it
    does for a real input of those pages. Its pages beyond were dropped: the job costed
    with the pages it had, a job of none left out of the estimate ("1 job(s)" of 2)."""
    from pipeline.input_check import check_job
    from pipeline.steps.common import read_manifest

    write_sample(str(tmp_path / "one.tif"), [SamplePage(64, 64, 3, "uint8")], tile=64)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [
        {"input": "one.tif", "output": "o0.tif", "pages": [5]},
        {"input": "one.tif", "output": "o1.tif", "pages": [0, 7]},
        {"input": "one.tif", "output": "o2.tif", "pages": [0]}]}))
    planned = est.plan_manifest(str(m), "64x64x3")
    plans, problems = planned.plans, planned.problems
    one = tmp_path / "one.tif"
    assert problems == [f"jobs[{i}]: PageNotFoundError: {one}: page {page} asked for, "
                        "--assume-pages gives 1 "
                        "page(s) (0..0); fix the job's pages, or give --assume-pages more"
                        for i, page in ((0, 5), (1, 7))]
    assert [plan.spec.output for plan in plans] == [str(tmp_path / "o2.tif")]
    code, out, err = _cli("estimate", str(m), "--assume-pages", "64x64x3")
    assert code == 1 and "page 5 asked for" in err, err  # (jobs[2] costed)
    assert "not costed: 2 job(s) PlanJob would refuse (jobs[0], jobs[1])" in out, out
    # the input itself, those pages: the same jobs refused, for the same pages
    specs = read_manifest(str(m))
    assert [check_job(i, s).problems for i, s in enumerate(specs)] == [
        ("page 5 asked for, the file has 1 page(s) (0..0); fix the job's pages",),
        ("page 7 asked for, the file has 1 page(s) (0..0); fix the job's pages",), ()]
    problems = est.plan_manifest(str(m)).problems
    assert [p.split(": ")[1] for p in problems] == ["PageNotFoundError"] * 2


def test_estimate_refuses_the_jobs_planjob_refuses(tmp_path: Path) -> None:
    """Estimate plans a job by PlanJob's own code (pipeline/steps/planning.py, ``read_plan``):
    over the libtiff corpus, op chains and output compressions, the jobs it refuses are
    those ``validate --inputs`` (PlanJob's checks) says would fail, no more, no fewer."""
    from pipeline.input_check import check_job
    from pipeline.steps.common import read_manifest

    corpus = sorted((Path(__file__).parent / "data" / "libtiff").glob("*.tif*"))
    chains: list[list[dict[str, Any]]] = [
        [], [{"op": "canny", "low": 50, "high": 100}], [{"op": "equalize_hist"}],
        [{"op": "select_bands", "bands": [2]}], [{"op": "downsample", "factor": 4}]]
    jobs = [{"input": str(path), "output": str(tmp_path / f"o{i}-{j}-{c}.tif"), "ops": ops,
             "output_options": {"compression": c}}
            for i, path in enumerate(corpus) for j, ops in enumerate(chains)
            for c in ("zstd", "jpeg")]
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": jobs}))
    planned = est.plan_manifest(str(m))
    # each refused job's problems in one form, with the error validate --inputs names (an
    # op's or the output's refusal said none: "jobs[2] (in.tif): page 0: ...")
    refused = {r["job"]: {p.split(": ")[1] for p in r["problems"]} for r in planned.refused}
    assert all(p.startswith(f"jobs[{r['job']}]: ") and r["input"] in p
               for r in planned.refused for p in r["problems"])
    failing = {i: {check.error} for i, spec in enumerate(read_manifest(str(m)))
               if (check := check_job(i, spec)).error is not None}
    assert refused == failing
    assert "OperationError" in set().union(*failing.values())  # (both kinds of refusal)
    assert 0 < len(failing) < len(jobs)  # (both kinds of jobs are there)


def test_a_calibration_without_process_unit_costs_fused_jobs_with_a_note(fused: Path,
                                                                         tmp_path: Path) -> None:
    """A calibration written before fused jobs (no ``process_unit``) no longer refuses the
    manifest: each fused job is costed with the fallback estimate documents (the input read
    as split's CPU less the work tile encode, as bench/compare.py derives it, and the
    unfused process factor), exactly as a calibration holding those values costs it, and
    each such job gets a note naming it and saying what to rerun."""
    old = json.loads(json.dumps(CAL))
    del old["process_unit"]
    old["work"]["uint8x3"]["encode_cpu_s_per_mpx"] = 0.003
    old["process"]["factor"]["uint8x1"] = 1.25
    plans, sizes = _plans(fused)
    r = est.estimate(plans, old, FAST_IO, concurrency=10, input_bytes=sizes)
    same = json.loads(json.dumps(old))
    # by hand: uint8x3 0.02 - 0.003; uint8x1 0.01 - 0 (no work encode measured), factor 1.25
    same["process_unit"] = {"uint8x3": {"read_cpu_s_per_mpx": 0.017, "factor": 1.0},
                            "uint8x1": {"read_cpu_s_per_mpx": 0.01, "factor": 1.25}}
    want = est.estimate(plans, same, FAST_IO, concurrency=10, input_bytes=sizes)
    assert r["steps"]["process_unit"]["cpu_s"] == pytest.approx(
        want["steps"]["process_unit"]["cpu_s"])
    assert r["cost_usd"]["total"] == pytest.approx(want["cost_usd"]["total"])
    assert r["steps"]["process_unit"]["cpu_s"] > 0
    notes = [n for n in r["notes"] if "process_unit" in n]
    assert len(notes) == 2, r["notes"]
    for i, name in enumerate(("rgb.tif", "gray.tif")):
        [note] = [n for n in notes if n.startswith(f"jobs[{i}] (")]
        assert name in note and "bench/compare.py" in note, note
    assert not [n for n in want["notes"] if "process_unit" in n]
    cal = tmp_path / "old.json"
    cal.write_text(json.dumps(old))
    code, out, err = _cli("estimate", str(fused), "--calibration", str(cal))
    assert code == 0, err
    assert "no process_unit measurements" in out and "process_unit" in out


def test_the_first_line_counts_a_small_batch_in_megapixels(tmp_path: Path) -> None:
    """A batch under a gigapixel (a folder of scans, a few fluorescence planes) was
    "0.0 gigapixels" on the estimate's first line; it counts megapixels there, gigapixels
    from 1,000 Mpx."""
    import numpy as np
    import tifffile

    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.zeros((1500, 2000), np.uint8),
                         tile=(256, 256), metadata=None)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [
        {"input": f"{n}.tif", "output": f"out/{n}.tif", "ops": [{"op": "otsu_threshold"}]}
        for n in ("a", "b")]}))
    code, out, err = _cli("estimate", str(m))
    assert code == 0, err
    assert out.splitlines()[0] == "estimate for 2 job(s), 6.0 megapixels, on AWS " \
        "(concurrency 1000)"
    plans, sizes = _plans(m)
    r = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)
    r["megapixels"] = 100_000.0  # (as 100 gigapixels: the first line as before)
    assert est.format_text(r).splitlines()[0].startswith("estimate for 2 job(s), 100.0 "
                                                         "gigapixels, on AWS")


def test_a_small_jobs_pixels_and_bytes_are_printed_with_digits_that_show_them(tmp_path):
    """A job of a 512 x 512 page was "0 Mpx" and "merge composes 0.00 GB" (a whole job of
    kilobytes rounded to nothing); its megapixels keep two significant digits, its sizes
    the largest unit that keeps them at least 1."""
    import re

    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((512, 512, 3), np.uint8), tile=(256, 256),
                     metadata=None)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out/a.tif",
                                       "ops": [{"op": "gaussian_blur", "sigma": 1.0}],
                                       "fuse": False}]}))
    code, out, err = _cli("estimate", str(m))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "estimate for 1 job(s), 0.26 megapixels, on AWS (concurrency 1000)"
    assert lines[1].startswith(f'  jobs[0] "{tmp_path / "a.tif"}": 1 page(s) uint8x3 0.26 Mpx '
                               "-> zstd: ")
    composes = re.fullmatch(r"    merge composes ([\d.]+) (kB|MB) in S3 from \d+ segment\(s\): "
                            r".*, ([\d.]+) (bytes|kB|MB) read through", lines[2])
    assert composes and float(composes[1]) >= 1, lines[2]
    work = next(line for line in lines if line.startswith("work files: "))
    assert re.match(r"work files: [\d,]+ objects, [\d.]+ (kB|MB), kept ", work), work
    assert " 0 Mpx" not in out and "0.00 GB" not in out


def test_the_docs_table_of_the_json_fields_is_the_estimates(tmp_path: Path) -> None:
    """A script reads ``estimate --json`` by the docs' table of its fields (fields such as
    ``haloed_megapixels``, ``gb_s`` and ``state_transitions`` were described nowhere): each
    field of a real estimate (a tiled job, a job whose file is no TIFF: refused) is in the
    table, of its type, and each the table says is always there is; it says its ``schema``."""
    import numpy as np
    import tifffile
    from doc_fields import check, table

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((300, 300, 3), np.uint8), tile=(64, 64))
    (tmp_path / "n.tif").write_text("not a TIFF")
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out/a.tif"},
                                      {"input": "n.tif", "output": "out/n.tif"}]}))
    code, out, err = _cli("estimate", str(m), "--json")
    assert code == 1, err  # (a job refused)
    doc = json.loads(out)
    assert doc["schema"] == 1 and [r["job"] for r in doc["refused"]] == [1]
    check([doc], table("estimate.md", "Fields of estimate --json"),
          "docs/estimate.md, Fields of estimate --json")


def test_the_step_table_shows_a_small_jobs_seconds_gb_s_and_megabytes(tmp_path):
    """The step table printed a 256 x 256 job's MB read and written, and most of its GB-s,
    as 0 (and Lambda s as 0.0): each column now keeps two significant digits below its own
    precision, aligned under the header as before."""
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((256, 256, 3), np.uint8), tile=(256, 256),
                     metadata=None)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out/a.tif"}]}))
    code, out, err = _cli("estimate", str(m), "--json")
    assert code == 0, err
    steps = json.loads(out)["steps"]
    code, out, err = _cli("estimate", str(m))
    assert code == 0, err
    lines = out.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("step "))
    ends = [lines[header].index(label) + len(label) for label in (
        "invocations", "Lambda s", "GB-s", "S3 GET", "S3 PUT", "MB read", "MB written")]
    rows = {line.split()[0]: line for line in lines[header + 1:header + 2 + len(steps)]}
    assert set(rows) == {*steps, "total"}
    for row in rows.values():  # each figure ends where its header does
        assert [match.end() for match in re.finditer(r"\S+(?= |$)", row)][-7:] == ends, row
    cells = rows["process_job"].split()[-6:]
    seconds, gb_s, read, written = (float(cells[k]) for k in (0, 1, 4, 5))
    job = steps["process_job"]
    # what --json says, to two significant digits (each was "0" or "0.0")
    for shown, exact in ((seconds, job["seconds"]), (gb_s, job["gb_s"]),
                         (read, job["bytes_in"] / 1e6), (written, job["bytes_out"] / 1e6)):
        assert 0 < exact < 1 and shown == float(f"{exact:.2g}"), (shown, exact)


# --- a scan manifest: the jobs its run would make now -------------------------------------

#: a scan's record that left nothing out
NONE_LEFT_OUT = {"name_collision": 0, "link_outside": 0, "link_to_nothing": 0,
                 "name_not_utf8": 0}


def _scan_folder(tmp_path: Path) -> Path:
    """incoming/ with two new TIFFs (one in a subfolder), one done before (its output there,
    as a scan's tests make one), a link to a TIFF outside the folder, a text file and a
    hidden TIFF (neither is a scan's input); the scan manifest beside it."""
    incoming, private = tmp_path / "incoming", tmp_path / "private"
    (incoming / "day2").mkdir(parents=True)
    private.mkdir()
    for i, name in enumerate(("a.tif", "b.tif", "day2/c.TIFF", ".partial.tif")):
        write_sample(str(incoming / name), [SamplePage(150, 200, 3)], tile=64, seed=i)
    write_sample(str(private / "secret.tif"), [SamplePage(40, 50, 1)], seed=9)
    (incoming / "secret.tif").symlink_to(private / "secret.tif")
    (incoming / "readme.txt").write_text("not a TIFF")
    done = tmp_path / "processed" / "b.tif"
    done.parent.mkdir()
    done.write_bytes(b"an earlier run's output")  # exists: b.tif is done before
    manifest = tmp_path / "nightly.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed",
                                             "ops": [{"op": "invert"}]}}))
    return manifest


def _tree(folder: Path) -> list[tuple[str, int]]:
    """Every file and folder under ``folder``, with its size (a link's own)."""
    return sorted((str(p.relative_to(folder)), p.lstat().st_size) for p in folder.rglob("*"))


def test_a_scan_is_estimated_as_the_jobs_its_run_would_make_now(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A scan's estimate lists its folder by the run's own code: the TIFFs done before, the
    link out of the folder, the text file and the hidden file are no jobs; its first line
    is the line the run's summary prints of what the scan found, and ``--json`` has the
    report's ``scan`` record beside the jobs. It writes nothing (no run record, no report),
    and the run after it finds what it said (it refused a scan before)."""
    manifest = _scan_folder(tmp_path)
    before = _tree(tmp_path)
    incoming, processed = tmp_path / "incoming", tmp_path / "processed"
    found = {"input": str(incoming), "output": str(processed), "tiffs": 4, "done_before": 1,
             "left_out": {**NONE_LEFT_OUT, "link_outside": 1}, "jobs": 2}
    line = (f"scan of {incoming} into {processed}: 4 TIFF(s), 1 done before, 1 left out "
            "(1 link(s) to outside the folder), 2 new")

    with caplog.at_level("WARNING"):
        code, out, err = _cli("estimate", str(manifest))
    assert code == 0, err
    first = "estimate for 2 job(s), 0.06 megapixels, on AWS (concurrency 1000)"
    assert out.splitlines()[:2] == [line, first], out
    assert any("left out 1 link(s) to files outside the scanned folder" in r.getMessage()
               for r in caplog.records)  # (the run's warning, naming the link)
    code, out, err = _cli("estimate", str(manifest), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc)[:3] == ["schema", "scan", "jobs"] and doc["scan"] == found
    assert [j["input"] for j in doc["jobs"]] == [str(incoming / "a.tif"),
                                                 str(incoming / "day2" / "c.TIFF")]
    assert _tree(tmp_path) == before  # nothing written: no run record, report, work files

    # costed as the list of those jobs would be
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"jobs": [
        {"input": f"incoming/{name}", "output": f"processed/{name}", "ops": [{"op": "invert"}],
         "if_exists": "skip"} for name in ("a.tif", "day2/c.TIFF")]}))
    code, out, err = _cli("estimate", str(listed), "--json")
    assert code == 0, err
    assert json.loads(out) == {k: v for k, v in doc.items() if k != "scan"}

    # the run finds what the estimate said, and its summary says it in the same line
    code, out, err = _cli("run", str(manifest), "--workers", "2")
    assert code == 0, err
    report = json.loads(manifest.with_suffix(".report.json").read_text())
    assert report["scan"] == found
    assert [j["input"] for j in report["jobs"]] == [j["input"] for j in doc["jobs"]]
    assert line in out.splitlines(), out


def test_a_scan_with_nothing_new_estimates_no_job_with_its_line(tmp_path: Path):
    """Every TIFF done before: no job, its line says so, and the run's own PlanRun and
    Report are all it costs (no cost per gigapixel of no pixels: it printed $221,797.75)."""
    manifest = _scan_folder(tmp_path)
    for name in ("a.tif", "day2/c.TIFF"):
        (tmp_path / "processed" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "processed" / name).write_bytes(b"an earlier run's output")
    (tmp_path / "incoming" / "secret.tif").unlink()
    code, out, err = _cli("estimate", str(manifest))
    assert code == 0, err
    lines = out.splitlines()
    line = (f"scan of {tmp_path / 'incoming'} into {tmp_path / 'processed'}: 3 TIFF(s), 3 "
            "done before, 0 new")
    first = "estimate for 0 job(s), 0 megapixels, on AWS (concurrency 1000)"
    assert lines[:2] == [line, first], out
    [total] = [x for x in lines if x.lstrip().startswith("total ") and "$" in x]
    assert total.endswith("(no pixels)"), total
    code, out, err = _cli("estimate", str(manifest), "--json")
    doc = json.loads(out)
    assert (doc["scan"]["tiffs"], doc["scan"]["done_before"], doc["scan"]["jobs"]) == (3, 3, 0)
    assert (doc["jobs"], doc["megapixels"], doc["usd_per_gigapixel"]) == ([], 0, None)
    assert doc["steps"]["plan_run"]["invocations"] == 1  # (a run of nothing still runs)


def test_a_scan_costs_its_other_files_and_names_each_it_cannot_read(tmp_path: Path):
    """A scan of a good TIFF, a PNG named .tif and a TIFF cut short: a run fails the two
    and runs the other, and estimate refused the whole scan (exit 2). It costs the good
    one, names each of the others with its error on stderr and in ``--json``'s
    ``refused``, and exits 1; validate --inputs names the same files as failing."""
    import numpy as np
    import tifffile
    from PIL import Image

    incoming = tmp_path / "in"
    incoming.mkdir()
    tifffile.imwrite(incoming / "a.tif", np.zeros((64, 64, 3), np.uint8), tile=(32, 32),
                     metadata=None)
    Image.new("RGB", (8, 8)).save(incoming / "b.tif", format="PNG")
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.random.default_rng(0).integers(0, 256, (256, 256, 3),
                                                              dtype=np.uint8),
                     tile=(64, 64), metadata=None)
    (incoming / "c.tif").write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    manifest = tmp_path / "scan.json"
    manifest.write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))

    code, out, err = _cli("estimate", str(manifest))
    assert code == 1, err
    lines = out.splitlines()
    assert lines[1:3] == ["estimate for 1 job(s), 0.0041 megapixels, on AWS (concurrency 1000)",
                          ("  not costed: 2 job(s) PlanJob would refuse (jobs[1], jobs[2]), "
                           "which a run would fail")], out
    said = err.splitlines()
    assert said[0] == ("tiffpipe: 2 of 3 job(s) would fail when planned (PlanJob) and are not "
                       "costed; a run would fail them and run the others:"), err
    assert said[1].startswith(f"  jobs[1]: NotATiffError: {incoming / 'b.tif'}: not a TIFF")
    assert said[2].startswith(f"  jobs[2]: CorruptTiffError: {incoming / 'c.tif'}: page 0: ")
    assert "truncated" in said[2]

    code, out, err = _cli("estimate", str(manifest), "--json")
    assert code == 1, err
    doc = json.loads(out)
    assert [j["input"] for j in doc["jobs"]] == [str(incoming / "a.tif")]
    assert [(r["job"], r["input"], r["output"], r["problems"][0].split(": ")[1])
            for r in doc["refused"]] == [
        (1, str(incoming / "b.tif"), str(tmp_path / "out" / "b.tif"), "NotATiffError"),
        (2, str(incoming / "c.tif"), str(tmp_path / "out" / "c.tif"), "CorruptTiffError")]
    assert doc["scan"]["jobs"] == 3
    # the good file costed as a job of it alone is
    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps({"jobs": [{"input": "in/a.tif", "output": "out/a.tif"}]}))
    code, out, err = _cli("estimate", str(alone), "--json")
    assert code == 0, err
    assert json.loads(out) == {k: v for k, v in doc.items() if k not in ("scan", "refused")}

    # validate --inputs: the same two files would fail, the other can run
    code, out, err = _cli("validate", "--inputs", str(manifest))
    assert code == 2 and "1 can run, 2 would fail when planned" in out, (out, err)
    assert f"{incoming / 'b.tif'} -> " in err and f"{incoming / 'c.tif'} -> " in err

    # every file unreadable: nothing to cost, refused as before
    (incoming / "a.tif").unlink()
    code, out, err = _cli("estimate", str(manifest))
    assert code == 2 and out == "" and err.startswith("tiffpipe: the manifest cannot run:"), err
    # with --json, a document of the refused jobs (it printed nothing), each problem
    # structured too; the exit code the same
    code, out, json_err = _cli("estimate", str(manifest), "--json")
    assert (code, json_err) == (2, err)
    doc = json.loads(out)
    assert doc["error"] == {"type": "AllJobsRefused", "message": err[len("tiffpipe: "):-1]}
    assert (doc["manifest"], doc["scan"]["jobs"]) == (str(manifest), 2)
    assert [(r["job"], [(e["job"], e["type"]) for e in r["errors"]]) for r in doc["refused"]
            ] == [(0, [(0, "NotATiffError")]), (1, [(1, "CorruptTiffError")])]
    assert all(r["problems"] == [f"jobs[{e['job']}]: {e['type']}: {e['message']}"
                                 for e in r["errors"]] for r in doc["refused"])
    code, out, err = _cli("estimate", str(tmp_path / "nowhere.json"), "--json")
    assert code == 2 and json.loads(out)["error"]["type"] == "InputNotFoundError", out


def test_a_scan_on_s3_is_listed_by_the_runs_own_calls_and_nothing_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On S3 the estimate lists the scan's prefixes with the very requests the run's PlanRun
    makes, finds what PlanRun records, and only reads: no PUT, no report, no run record."""
    from conftest import moto_s3

    from pipeline import handlers
    from pipeline.adapters import storage

    source = tmp_path / "x.tif"
    write_sample(str(source), [SamplePage(120, 140, 1, "uint16")], tile=64)
    with moto_s3(monkeypatch, "scan-est") as s3:
        for key in ("in/x.tif", "in/sub/y.tif", "in/z.tif"):
            s3.upload_file(str(source), "scan-est", key)
        s3.put_object(Bucket="scan-est", Key="in/notes.txt", Body=b"not a TIFF")
        s3.put_object(Bucket="scan-est", Key="out/z.tif", Body=b"done before")
        s3.put_object(Bucket="scan-est", Key="scan.json", Body=json.dumps({"scan": {
            "input": "in/", "output": "s3://scan-est/out/"}}).encode())
        calls: list[tuple[str, str | None]] = []

        def record(model: Any, context: dict[str, Any], **_: Any) -> None:
            calls.append((model.name, context.get("input_params", {}).get("Prefix")))

        storage.s3_client().meta.events.register("before-call.s3.*", record)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="scan-est")["Contents"])
        code, out, err = _cli("estimate", "s3://scan-est/scan.json", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["scan"] == {"input": "s3://scan-est/in/", "output": "s3://scan-est/out/",
                               "tiffs": 3, "done_before": 1, "left_out": NONE_LEFT_OUT,
                               "jobs": 2}
        assert [j["input"] for j in doc["jobs"]] == ["s3://scan-est/in/sub/y.tif",
                                                     "s3://scan-est/in/x.tif"]
        assert {name for name, _ in calls} <= {"GetObject", "HeadObject", "ListObjectsV2",
                                               "HeadBucket"}  # (the output's bucket)
        assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="scan-est")[
            "Contents"]) == keys
        estimated = [call for call in calls if call[0] == "ListObjectsV2"]
        assert estimated == [("ListObjectsV2", "in/"), ("ListObjectsV2", "out/")]

        calls.clear()  # the run's PlanRun of the same scan: the same listing, the same record
        run = handlers.dispatch("split", {
            "action": "plan_run", "manifest": "s3://scan-est/scan.json",
            "work": str(tmp_path / "work"), "run_id": "r1", "report": str(tmp_path / "r.json")})
        assert [call for call in calls if call[0] == "ListObjectsV2"] == estimated
        assert json.loads(Path(run["run"]).read_text())["scan"] == doc["scan"]


def test_each_jobs_line_names_its_input(tmp_path):
    """A many-job estimate's lines said ``jobs[3] 1 page(s) ...`` alone: which input each is
    took the manifest beside it. Each names its input, quoted as other messages quote paths
    (its letters as written); an s3:// one as given."""
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [
        {"input": "scans/Müller 1.tif", "output": "out/1.tif"},
        {"input": "s3://b/scans/2.tif", "output": "out/2.tif"}]}, ensure_ascii=False),
        encoding="utf-8")
    code, out, err = _cli("estimate", str(m), "--assume-pages", "2000x1000x1")
    assert code == 0, err
    jobs = [line for line in out.splitlines() if line.startswith("  jobs[")]
    assert jobs[0].startswith(f'  jobs[0] "{tmp_path / "scans" / "Müller 1.tif"}": 1 page(s) '
                              "uint8x1 2.0 Mpx -> zstd: "), jobs
    assert jobs[1].startswith('  jobs[1] "s3://b/scans/2.tif": 1 page(s) uint8x1 2.0 Mpx'), jobs


def _large_xmp_job(folder: Path, packets: bool = True) -> Path:
    """A manifest of a quarter turn of a real 3-page RGB TIFF, each page with its own 319 KB
    XMP packet (Photoshop's History: test_xmp.LARGE), held by reference in the plan; or
    the same pages without XMP (``packets`` False)."""
    import tifffile
    from test_xmp import write_large

    src = folder / ("xmp.tif" if packets else "plain.tif")
    write_large(src)
    if not packets:
        with tifffile.TiffFile(src) as tif:
            pixels = [page.asarray() for page in tif.pages]
        with tifffile.TiffWriter(src) as tw:
            for data in pixels:
                tw.write(data, photometric="rgb", tile=(32, 32), metadata=None,
                         resolution=((300, 1), (200, 1)), resolutionunit=2)
    m = folder / f"m-{src.stem}.json"
    m.write_text(json.dumps({"jobs": [{"input": src.name, "output": f"out/{src.stem}.tif",
                                       "ops": [{"op": "rotate", "angle": 90}]}]}))
    return m


def test_large_xmp_packets_are_in_the_output_size(tmp_path: Path) -> None:
    """An XMP packet too large for the plan is not read by the estimate (nor by planning),
    but its bytes (its size and the derivative's stamp) are in the output's: against the
    real output of the job, its bytes that are not tiles (before: about 1 KB estimated
    against 958 KB written)."""
    import tifffile
    from test_xmp import LARGE, PAGES

    import pipeline

    m = _large_xmp_job(tmp_path)
    plans, sizes = _plans(m)
    [job] = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)["jobs"]
    assert job["header_bytes"] > PAGES * len(LARGE)
    result = pipeline.run(str(m), workers=1, work=str(tmp_path / "work"))
    assert result.ok, result.report
    real = tmp_path / "out" / "xmp.tif"
    with tifffile.TiffFile(real) as tif:
        tiles = sum(sum(p.databytecounts) for p in tif.pages)
        assert all(len(p.tags[700].value) >= len(LARGE) for p in tif.pages)
    around = real.stat().st_size - tiles
    assert job["header_bytes"] == pytest.approx(around, rel=0.05), (job["header_bytes"], around)


def test_merge_memory_counts_the_large_xmp_packets_it_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Merge holds the distinct packets too large for the plan it reads (pages that share
    one read it once), at most PACKETS_HELD: its peak counts them, and a held ProcessJob's
    too (its merge)."""
    from test_xmp import LARGE, PAGES, _share_first_packet

    from pipeline.adapters import metadata

    def packets_mb(m: Path) -> dict[str, float]:
        plans, sizes = _plans(m)
        [job] = est.estimate(plans, CAL, FAST_IO, input_bytes=sizes)["jobs"]
        return {f: p["parts_mb"].get("xmp packets", 0.0) for f, p in job["memory"].items()}

    mib = 2**20
    m = _large_xmp_job(tmp_path)
    assert packets_mb(m)["merge"] == round(PAGES * len(LARGE) / mib, 1)
    assert packets_mb(_large_xmp_job(tmp_path, packets=False))["merge"] == 0.0
    monkeypatch.setattr(metadata, "PACKETS_HELD", 2 * len(LARGE))  # (those read last)
    assert packets_mb(m)["merge"] == round(2 * len(LARGE) / mib, 1)
    monkeypatch.undo()
    monkeypatch.setattr(plan_module, "SINGLE_TASK_PIXELS", 16 * 1000 * 1000)
    assert packets_mb(m) == {"process": round(PAGES * len(LARGE) / mib, 1)}  # (one ProcessJob)
    monkeypatch.setattr(plan_module, "SINGLE_TASK_PIXELS", 0)
    _share_first_packet(tmp_path / "xmp.tif")
    assert packets_mb(m)["merge"] == round(len(LARGE) / mib, 1)


def test_a_merge_whose_xmp_packets_do_not_fit_is_warned_about(tmp_path: Path) -> None:
    """At a merge memory its packets do not fit in (the same pages without them do), the
    estimate says so, as it does of any other peak."""
    from pipeline.estimate.memory import MARGIN

    def merge(m: Path, mb: float | None = None) -> tuple[dict[str, Any], list[str]]:
        plans, sizes = _plans(m)
        r = est.estimate(plans, CAL, {**FAST_IO, **({"memory_merge_mb": mb} if mb else {})},
                         input_bytes=sizes)
        return r["jobs"][0]["memory"]["merge"], [w for w in r["warnings"] if "merge" in w]

    with_packets, without = _large_xmp_job(tmp_path), _large_xmp_job(tmp_path, packets=False)
    peak, warned = merge(with_packets)
    assert warned == []  # (the deploy's merge memory: room enough)
    limit = (peak["peak_mb"] - peak["parts_mb"]["xmp packets"] / 2) * (1 + MARGIN)
    assert merge(without, limit)[1] == []
    [warning] = merge(with_packets, limit)[1]
    assert "on the merge function, merge of page 0" in warning
    assert f"more than the {limit:,.0f} MB the function has (memory_merge_mb)" in warning


def _without_xmp_at(plan: Any) -> Any:
    """``plan`` with its pages' XMP packets too large for the plan (``xmp_at``) left out."""
    return replace(plan, pages=[replace(page, info=replace(page.info, metadata={
        k: v for k, v in page.info.metadata.items() if k != "xmp_at"})) for page in plan.pages])


@pytest.mark.parametrize("shared,held,events", [
    (False, False, 480), (True, False, 480), (False, True, 480), (False, False, 3000),
    (True, True, 3000)])
def test_merges_reads_of_large_xmp_packets_are_counted_as_moto_sees_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool, held: bool,
        events: int) -> None:
    """An S3 input whose 3 pages carry a 100 KiB XMP packet each (too large for the plan:
    read by merge from the input, once per output, metadata.XmpPackets), or share the first
    page's: its merge (or a held ProcessJob's) counts, above the same plan without them,
    exactly the requests and bytes moto sees when merge's own code writes the pages' tags
    (each distinct packet: one ranged GET of its bytes alone, pinned to the input's ETag;
    before, a HeadObject and the 512 KiB read buffer, to the object's end: 426 KB fetched
    for a 100 KiB packet, two GETs for a 616 KiB one). Before that: none counted."""
    from conftest import moto_s3
    from test_xmp import EVENT, MANAGED, PAGES, _share_first_packet, write_large

    from pipeline.adapters import metadata, storage
    from pipeline.steps import merge

    packet = MANAGED.replace(EVENT, EVENT * events)  # (Photoshop's History of as many saves)
    assert metadata.VALUE_MAX < len(packet) < 2 * storage.READ_BUFFER
    src = tmp_path / "xmp.tif"
    write_large(src, packet)
    if shared:
        _share_first_packet(src)
    monkeypatch.setattr(plan_module, "SINGLE_TASK_PIXELS", 16 * 1000 * 1000 if held else 0)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": [{"input": "s3://xmp-est/in/xmp.tif",
                                       "output": "s3://xmp-est/out/xmp.tif",
                                       "ops": [{"op": "rotate", "angle": 90}]}]}))
    with moto_s3(monkeypatch, "xmp-est") as s3:
        s3.upload_file(str(src), "xmp-est", "in/xmp.tif")
        [plan], sizes = _plans(m)
        assert held_output(plan) is held
        assert all("xmp_at" in page.info.metadata for page in plan.pages)
        r = est.estimate([plan], CAL, FAST_IO, input_bytes=sizes)
        without = est.estimate([_without_xmp_at(plan)], CAL, FAST_IO, input_bytes=sizes)
        seen: list[tuple[str, int]] = []
        storage.s3_client().meta.events.register("after-call.s3.*", lambda **kw: seen.append(
            (kw["model"].name, kw["parsed"].get("ContentLength", 0))))
        packets = metadata.XmpPackets(plan.spec.input, plan.input_version)
        derived = metadata.derivation(plan.spec)
        for page in plan.pages:  # (as merge.output_pieces does)
            tags = merge._page_tags(plan, page, derived, packets)
            [xmp] = [tag for tag in tags["extratags"] if tag[0] == 700]
            assert xmp[2] > metadata.VALUE_MAX  # (read, rewritten and stamped)
    distinct = 1 if shared else PAGES
    assert [name for name, _ in seen] == ["GetObject"] * distinct
    fetched = sum(size for name, size in seen if name == "GetObject")
    assert fetched == distinct * len(packet)  # (its bytes alone)
    step = "process_job" if held else "merge"
    with_, without_ = r["steps"][step], without["steps"][step]
    assert with_["get"] - without_["get"] == len(seen)
    assert with_["bytes_in"] - without_["bytes_in"] == fetched


def test_the_deployed_merge_memory_leaves_room_for_the_xmp_packets() -> None:
    """Guard: merge at the deploy's memory (FUNCTION_SIZES) holds PACKETS_HELD of XMP
    packets beside its uploads in flight and its baseline, the model's margin added; and a
    held ProcessJob its held output besides (the process function)."""
    from pipeline.adapters.metadata import PACKETS_HELD
    from pipeline.core.constants import FUNCTION_SIZES
    from pipeline.core.tiff_layout import UPLOAD_PART
    from pipeline.estimate import memory

    mib = 2**20
    merge = memory.BASELINE_MB["merge"] + memory.SCALE["merge"] * (
        PACKETS_HELD + memory.UPLOADS_IN_FLIGHT * UPLOAD_PART) / mib
    assert merge * (1 + memory.MARGIN) <= FUNCTION_SIZES["merge"].memory
    held = memory.BASELINE_MB["process"] + memory.SCALE["process"] * (
        PACKETS_HELD + 2 * plan_module.HELD_OUTPUT_BYTES) / mib
    assert held * (1 + memory.MARGIN) <= FUNCTION_SIZES["process"].memory


def test_jobs_after_a_refused_first_job_keep_their_manifest_index(tmp_path: Path):
    """jobs[0]'s input missing: the two costed jobs are jobs[1] and jobs[2] everywhere (the
    text's job lines, the "largest job ... like" line, --json's "jobs"), never relabelled
    jobs[0] and jobs[1], and no index is both costed and refused."""
    write_sample(str(tmp_path / "a.tif"), [SamplePage(300, 200, 3)], tile=64)
    write_sample(str(tmp_path / "b.tif"), [SamplePage(100, 120, 1)], tile=64)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": "missing.tif", "output": "out/missing.tif"},
        {"input": "a.tif", "output": "out/a.tif"},
        {"input": "b.tif", "output": "out/b.tif"}]}))

    code, out, err = _cli("estimate", str(manifest), "--json")
    assert code == 1, err
    doc = json.loads(out)
    assert [(j["job"], j["input"]) for j in doc["jobs"]] == [
        (1, str(tmp_path / "a.tif")), (2, str(tmp_path / "b.tif"))]
    assert [r["job"] for r in doc["refused"]] == [0]
    assert err.splitlines()[1].startswith("  jobs[0]: "), err

    code, out, err = _cli("estimate", str(manifest))
    assert code == 1, err
    assert "  not costed: 1 job(s) PlanJob would refuse (jobs[0])" in out
    assert [line.split(": ")[0] for line in out.splitlines() if line.startswith("  jobs[")] == [
        f"  jobs[1] {quoted(str(tmp_path / 'a.tif'))}",
        f"  jobs[2] {quoted(str(tmp_path / 'b.tif'))}"], out
    assert "largest job on AWS like jobs[1] (" in out, out


def test_estimate_reads_s3_inputs_at_the_endpoint_url(
        tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch):
    """estimate had no --endpoint-url (start, status and deploy.py have): against an
    emulator it failed "Could not connect to ..." with no word of the endpoint. Given it,
    the inputs are read there, though AWS_ENDPOINT_URL names a port where nothing answers;
    without it, the error names AWS_ENDPOINT_URL's value, to check, and --endpoint-url; a
    value that is no URL is a usage error naming the option."""
    import boto3

    from pipeline.adapters import storage

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_client", None)
    write_sample(str(tmp_path / "a.tif"), [SamplePage(300, 200, 3)], tile=64)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="est-endpoint")
    s3.upload_file(str(tmp_path / "a.tif"), "est-endpoint", "in/a.tif")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "s3://est-endpoint/in/a.tif",
                                              "output": "s3://est-endpoint/out/a.tif"}]}))

    code, out, err = _cli("estimate", str(manifest), "--json", "--endpoint-url", moto_server)
    assert code == 0, err
    assert [(j["job"], j["input"], j["pages"]) for j in json.loads(out)["jobs"]] == [
        (0, "s3://est-endpoint/in/a.tif", 1)]

    code, out, err = _cli("estimate", str(manifest))
    assert (code, out) == (2, ""), err
    assert "Could not connect to the endpoint URL" in err
    assert ("(AWS_ENDPOINT_URL is http://127.0.0.1:9: check that the S3 emulator or service "
            "meant runs and answers there, or set AWS_ENDPOINT_URL to its URL, or give "
            "tiffpipe estimate, start and status --endpoint-url; unset it for AWS itself)"
            ) in err, err

    code, out, err = _cli("estimate", str(manifest), "--endpoint-url", "localhost:4566")
    assert (code, out) == (2, "")
    assert err == ("tiffpipe: --endpoint-url 'localhost:4566': expected an http:// or "
                   "https:// URL, e.g. http://localhost:4566\n")


def test_an_output_bucket_that_does_not_exist_is_refused_as_a_run_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """estimate costed a job whose S3 output's bucket does not exist, which run and
    validate --inputs fail at PlanJob: its inputs' headers are read anyway, so the outputs'
    buckets are looked at too (one HeadBucket each): that job is refused, its input's
    problem told after it, and the others costed. What the output may take is the stack's
    role's to say: not checked (a bucket there is enough)."""
    from conftest import moto_s3

    from pipeline.adapters import storage

    write_sample(str(tmp_path / "a.tif"), [SamplePage(300, 200, 3)], tile=64)
    with moto_s3(monkeypatch, "est-out") as s3:
        calls: list[str] = []
        storage.s3_client().meta.events.register(
            "before-call.s3.HeadBucket", lambda **_: calls.append("HeadBucket"))
        manifest = tmp_path / "m.json"
        manifest.write_text(json.dumps({"jobs": [
            {"input": "a.tif", "output": "s3://est-out/a.tif"},
            {"input": "a.tif", "output": "s3://est-gone/a.tif"},
            {"input": "a.tif", "output": "s3://est-gone/b.tif"},
            {"input": "none.tif", "output": "s3://est-gone/c.tif"}]}))
        code, out, err = _cli("estimate", str(manifest), "--json")
        assert s3.list_objects_v2(Bucket="est-out").get("KeyCount") == 0  # nothing written
    assert code == 1, err
    doc = json.loads(out)
    assert [j["job"] for j in doc["jobs"]] == [0]
    gone = "OutputNotWritableError: output s3://est-gone/{}: the bucket does not exist: " \
           "create it or fix the output URL"
    assert [r["problems"] for r in doc["refused"]] == [
        [f"jobs[1]: {gone.format('a.tif')}"], [f"jobs[2]: {gone.format('b.tif')}"],
        [f"jobs[3]: {gone.format('c.tif')}",
         (f"jobs[3]: InputNotFoundError: {tmp_path / 'none.tif'} does not exist: check the "
          "path or URL and that the file is there")]]
    assert calls == ["HeadBucket", "HeadBucket"]  # once a bucket
