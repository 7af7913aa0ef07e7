"""Pyramid levels of jobs that are NOT fused, built by level units (BuildLevels, after
Process): the file is byte-identical to the levels merge builds alone from the base tiles
(today's single-merge pyramid), and merge only places them.

The first fixture runs the job's steps in this process (plan, split, statistics rounds,
process, level units, merge) so the plan's unit sizes can be lowered: bands and column
chunks, level tiles shared by units (fragments), and a processing tile (80 = 5 x 2**4)
whose levels past the 4th merge builds from the units' blocks. The last test runs a job
through the state machine on the local engine (the Levels Choice and the BuildLevels Map).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tifffile
from test_pyramid import _run
from test_s3_merge import _same, merged_by_tifffile
from test_unit_levels import (
    assert_levels_are_the_formula,
    assert_units_shared_and_kept_blocks,
    write_input,
    write_jobs,
)

from pipeline.adapters import storage
from pipeline.core import plan as plan_mod
from pipeline.core import tiff_layout
from pipeline.core.events import (
    BatchEvent,
    JobEvent,
    MergeEvent,
    ReduceEvent,
    RunEvent,
    StatsEvent,
    UnitEvent,
)
from pipeline.core.levels import level_units, unit_level_count
from pipeline.steps import layout
from pipeline.steps import merge as merge_mod
from pipeline.steps import pyramid as pyramid_mod
from pipeline.steps.common import forget_plans, load_plan
from pipeline.steps.planning import plan_run
from pipeline.steps.process import process
from pipeline.steps.split import split
from pipeline.steps.stats import plan_job, reduce_stats, stats
from pipeline.steps.unit_levels import build_levels, fragment_name, level_names

pytestmark = pytest.mark.timeout(300)

JOBS = {
    "zstd": {"fuse": False},  # both pages: a multi-page job
    "jpeg": {"pages": [0], "fuse": False,
             "output_options": {"compression": "jpeg", "quality": 90}},
    "deflate_ome": {"fuse": False, "output_options": {"compression": "deflate", "ome": True}},
    "blur": {"fuse": False, "ops": [{"op": "gaussian_blur", "sigma": 1.2}]},
    # whole-page statistics: never fused
    "equalize": {"pages": [0], "ops": [{"op": "to_gray"}, {"op": "equalize_hist"}]},
}


def _run_in_process(planned: dict[str, object]) -> None:
    """The job's states, as the state machine runs them for a job that is not fused."""
    plan_url = planned["plan"]
    for unit in planned["units"]:
        split(UnitEvent(plan_url, unit))
    round_ = planned["stats"]
    while round_["more"]:
        for batch in planned["batches"]:
            stats(StatsEvent(plan_url, batch, round_["round"]))
        round_ = reduce_stats(ReduceEvent(plan_url, round_["round"]))
    for batch in planned["batches"]:
        process(BatchEvent(plan_url, batch))
    assert planned["levels"]  # the Levels Choice: BuildLevels
    for unit in planned["units"]:
        build_levels(UnitEvent(plan_url, unit))
    forget_plans()
    merge_mod.merge(MergeEvent(plan_url))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("level_units")
    manifest, work = write_jobs(root, JOBS)
    made: list[pyramid_mod.Pyramid] = []

    class Spy(pyramid_mod.Pyramid):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_mod, "SPLIT_UNIT_PIXELS", 80 * 80 * 12)  # bands of a few rows
        mp.setattr(plan_mod, "SPLIT_CACHE_BUDGET", 200_000)  # column chunks of a few tiles
        # many units interleave a level's tiles; keep them in tifffile's row-major order (a
        # layout by segment moves tiles only: tests/test_s3_merge.py)
        mp.setattr(tiff_layout, "ROW_MAJOR_RUNS", 10**9)
        mp.setattr(pyramid_mod, "Pyramid", Spy)  # merge's own pyramid: must not be built
        run = plan_run(RunEvent(str(manifest), work, "test"))
        plans = []
        for job in range(run["jobs"]):
            planned = plan_job(JobEvent(run["run"], job))
            _run_in_process(planned)
            plans.append(load_plan(planned["plan"]))
        merge_built = len(made)
    return {"root": root, "plans": plans, "merge_built": merge_built}


@pytest.mark.parametrize("job", range(len(JOBS)), ids=list(JOBS))
def test_level_units_are_the_single_merge_pyramid(jobs, job):
    plan = jobs["plans"][job]
    assert not plan.fused and level_units(plan)
    assert len({u.col0 for u in plan.units}) > 1 and len({u.row0 for u in plan.units}) > 2
    got = Path(plan.spec.output).read_bytes()
    want = merged_by_tifffile(plan, jobs["root"] / f"old{job}.tif")  # merge builds the levels
    assert _same(got, want)
    for i, page in enumerate(plan.pages):
        assert unit_level_count(plan, i) == 4  # 80 = 5 x 2**4: merge builds the deeper ones
        units = [n for n, u in enumerate(plan.units) if u.page == i]
        assert_units_shared_and_kept_blocks(plan, i)
        level1 = [storage.read_json(layout.segment_index_file(plan.work, i, level_names(n, 1)))
                  for n in units]
        assert sum(len(d["tiles"]) for d in level1) > 0  # level tiles encoded by the units


def test_merge_built_no_level_from_the_base_tiles(jobs):
    """Merge's Pyramid only ran for the levels below the units' deepest (from its blocks,
    in unit_levels' ``_deep_levels``), never over the base tiles."""
    assert jobs["merge_built"] == 0


def test_level_units_equal_the_formula(jobs):
    for plan in (jobs["plans"][0], jobs["plans"][3]):  # zstd, blur: lossless
        assert_levels_are_the_formula(plan.spec.output, 16)


def test_a_job_without_levels_runs_no_level_units(tmp_path):
    """A page that fits in one output tile has no reduced level: the Levels Choice goes
    straight to Merge, and merge writes the page alone."""
    write_input(tmp_path / "in.tif")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(tmp_path / "in.tif"), "output": str(tmp_path / "o.tif"), "pages": [1],
        "fuse": False, "output_options": {"tile": 512, "pyramid": True}}]}))
    run = plan_run(RunEvent(str(manifest), str(tmp_path / "work"), "test"))
    planned = plan_job(JobEvent(run["run"], 0))
    plan = load_plan(planned["plan"])
    assert unit_level_count(plan, 0) == 0 and not planned["levels"]
    for unit in planned["units"]:
        split(UnitEvent(planned["plan"], unit))
    for batch in planned["batches"]:
        process(BatchEvent(planned["plan"], batch))
    merge_mod.merge(MergeEvent(planned["plan"]))
    with tifffile.TiffFile(plan.spec.output) as tf:
        assert len(tf.pages) == 1 and not tf.pages[0].pages


def test_the_local_engine_runs_the_level_units(tmp_path):
    """Through the state machine (local engine): a ``"fuse": false`` blur and an
    equalize_hist chain take the Levels Choice to BuildLevels; their files are the
    single-merge pyramid's."""
    write_input(tmp_path / "in.tif")
    work = tmp_path / "work"
    opts = {"tile": 16, "pyramid": True, "compression": "deflate"}
    out = _run(tmp_path, {
        "blur": {"input": str(tmp_path / "in.tif"), "fuse": False, "output_options": opts,
                 "ops": [{"op": "gaussian_blur", "sigma": 1.0}]},
        "equalize": {"input": str(tmp_path / "in.tif"), "output_options": opts, "pages": [0],
                     "ops": [{"op": "to_gray"}, {"op": "equalize_hist"}]},
    }, "--keep-work", "--work", str(work))
    for job, name in enumerate(out):
        forget_plans()
        plan = load_plan(layout.plan_file(layout.job_dir(str(work), job)))
        assert not plan.fused and level_units(plan)
        for i in range(len(plan.pages)):
            for n, u in enumerate(plan.units):
                if u.page == i:  # every level unit ran and published its index
                    assert storage.exists(layout.segment_index_file(plan.work, i,
                                                                    fragment_name(n)))
        want = merged_by_tifffile(plan, tmp_path / f"old{job}.tif")
        assert _same(Path(out[name]).read_bytes(), want)


def test_a_downsampled_job_that_is_not_fused(tmp_path):
    """A downsampled page (output processing tile 80 / 5 = 16 px, so the region of a band
    may end past the smaller page): its level units' file is the single-merge pyramid's."""
    manifest, work = write_jobs(tmp_path, {"down": {
        "fuse": False, "ops": [{"op": "downsample", "factor": 5}]}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_mod, "SPLIT_UNIT_PIXELS", 80 * 80 * 12)
        mp.setattr(plan_mod, "SPLIT_CACHE_BUDGET", 200_000)
        mp.setattr(tiff_layout, "ROW_MAJOR_RUNS", 10**9)
        run = plan_run(RunEvent(str(manifest), work, "test"))
        planned = plan_job(JobEvent(run["run"], 0))
        _run_in_process(planned)
    plan = load_plan(planned["plan"])
    assert len(plan.units) > 2 and all(unit_level_count(plan, i) for i in range(2))
    want = merged_by_tifffile(plan, tmp_path / "old.tif")
    assert _same(Path(plan.spec.output).read_bytes(), want)
