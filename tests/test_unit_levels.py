"""Pyramid levels built in the fused units: the file is byte-identical to the levels merge
builds alone from the base tiles (today's single-merge pyramid).

The job's steps run in this process (plan, every unit, merge), so the plan's unit sizes can
be lowered: many bands and column chunks, level tiles shared by units (fragments), and a
processing tile (80 = 5 x 2**4) whose levels past the 4th are built by merge from the units'
blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_pyramid import reference_levels, smooth
from test_s3_merge import _same, merged_by_tifffile

from pipeline.adapters import storage
from pipeline.core import plan as plan_mod
from pipeline.core import tiff_layout
from pipeline.core.events import JobEvent, MergeEvent, RunEvent, UnitEvent
from pipeline.core.levels import level_shapes, unit_level_count
from pipeline.core.models import JobPlan
from pipeline.steps import layout
from pipeline.steps import merge as merge_mod
from pipeline.steps.common import forget_plans, load_plan
from pipeline.steps.planning import plan_run, write_job_plan
from pipeline.steps.process import process_unit
from pipeline.steps.unit_levels import fragment_name

pytestmark = pytest.mark.timeout(300)

JOBS = {
    "zstd": {},
    "jpeg": {"pages": [0], "output_options": {"compression": "jpeg", "quality": 90}},
    "deflate_ome": {"output_options": {"compression": "deflate", "ome": True}},
    "blur": {"ops": [{"op": "gaussian_blur", "sigma": 1.2}]},
}


def write_input(path: Path) -> None:
    """Two pages: RGB 700 x 900 (128 px tiles) and uint16 500 x 333 (64 px tiles)."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(smooth(700, 900, 3, 1), photometric="rgb", tile=(128, 128),
                 compression="zlib", metadata=None)
        tw.write(smooth(500, 333, 1, 2, "uint16"), tile=(64, 64), compression="zlib",
                 metadata=None)


def write_jobs(root: Path, jobs: dict[str, dict[str, object]]) -> tuple[Path, str]:
    """The input and a manifest of ``jobs`` on it (80 px processing tiles, 16 px output
    tiles, a pyramid); the manifest's path and the work folder."""
    write_input(root / "in.tif")
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 80, "output_options": {
        "tile": 16, "pyramid": True}}, "jobs": [
            {"input": str(root / "in.tif"), "output": str(root / "out" / f"{n}.tif"), **j}
            for n, j in jobs.items()]}))
    return manifest, str(root / "work")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("unit_levels")
    return {"root": root, "plans": run_steps(*write_jobs(root, JOBS))}


def run_steps(manifest: Path, work: str) -> list[JobPlan]:
    """The plans of the manifest's jobs, each run step by step in this process (many small
    fused units), and merged."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_mod, "FUSED_UNIT_PIXELS", 80 * 80 * 12)  # bands of a few rows
        mp.setattr(plan_mod, "SPLIT_CACHE_BUDGET", 200_000)  # column chunks of a few tiles
        # many units interleave a level's tiles; keep them in tifffile's row-major order (a
        # layout by segment moves tiles only: tests/test_s3_merge.py)
        mp.setattr(tiff_layout, "ROW_MAJOR_RUNS", 10**9)
        run = plan_run(RunEvent(str(manifest), work, "test"))
        plans = []
        for job in range(run["jobs"]):
            planned = write_job_plan(JobEvent(run["run"], job))
            for unit in planned["units"]:
                process_unit(UnitEvent(planned["plan"], unit))
            forget_plans()
            merge_mod.merge(MergeEvent(planned["plan"]))
            plans.append(load_plan(planned["plan"]))
    return plans


@pytest.mark.parametrize("job", range(len(JOBS)), ids=list(JOBS))
def test_unit_levels_are_the_single_merge_pyramid(jobs, job):
    plan = jobs["plans"][job]
    assert plan.fused and len({u.col0 for u in plan.units}) > 1  # bands and chunks
    got = Path(plan.spec.output).read_bytes()
    want = merged_by_tifffile(plan, jobs["root"] / f"old{job}.tif")  # merge builds the levels
    assert _same(got, want)
    for i, page in enumerate(plan.pages):
        count = unit_level_count(plan, i)
        levels = level_shapes(page.out_grid.height, page.out_grid.width, 16)
        assert count == 4 < len(levels)  # 80 = 5 x 2**4: merge builds the deeper ones
        assert_units_shared_and_kept_blocks(plan, i)


def assert_units_shared_and_kept_blocks(plan, page: int) -> None:
    """The units of ``page`` shared level tiles (fragments) and kept their deepest level's
    blocks (raw) for merge."""
    docs = [storage.read_json(layout.segment_index_file(plan.work, page, fragment_name(n)))
            for n, u in enumerate(plan.units) if u.page == page]
    assert any(d["fragments"] for d in docs)  # tiles shared by units
    assert all(d["blocks"] for d in docs)  # the deepest unit level, raw


def assert_levels_are_the_formula(path: str, tile: int) -> None:
    """Lossless levels equal the mean formula computed on the whole page (test_pyramid)."""
    with tifffile.TiffFile(path) as tf:
        for page in tf.pages:
            got = [np.asarray(sub.asarray()) for sub in page.pages]
            want = reference_levels(page.asarray(), tile)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)


def test_unit_levels_equal_the_formula(jobs):
    assert_levels_are_the_formula(jobs["plans"][0].spec.output, 16)


def test_a_blurred_class_maps_units_build_its_mean_levels_past_odd_sizes(tmp_path):
    """A gray class map with a colour table (a ColorMap, as rasterio's ``write_colormap``
    writes it), 333 columns wide, blurred: the output drops the ColorMap (the blur's values
    are no indices) and its levels are means as any gray page's, which the units build past
    an odd level too, 4 of them (80 = 5 x 2**4), the same bytes as merge builds them. Before,
    the units stopped at its first odd level (none), as for a page whose levels pick
    indices, because the input carries a ColorMap; the levels were the same, merge built
    them all. Kept as it is, the ColorMap's levels pick (``nearest``): the units stop there.
    """
    colours = (np.arange(3 * 256) % 256 * 257).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", smooth(500, 333, 1, 2), photometric="minisblack",
                     tile=(64, 64), compression="zlib", metadata=None,
                     extratags=[(320, "H", colours.size, colours, True)])
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 80, "output_options": {
        "tile": 16, "pyramid": True}}, "jobs": [
            {"input": str(tmp_path / "in.tif"), "output": str(tmp_path / f"{n}.tif"),
             "ops": ops} for n, ops in (("blur", [{"op": "gaussian_blur", "sigma": 1.2}]),
                                        ("copy", []))]}))
    blurred, copied = run_steps(manifest, str(tmp_path / "work"))
    assert "gray_colormap" in blurred.pages[0].info.metadata
    assert (unit_level_count(blurred, 0), unit_level_count(copied, 0)) == (4, 0)
    for n, plan in enumerate((blurred, copied)):
        want = merged_by_tifffile(plan, tmp_path / f"old{n}.tif")  # merge builds the levels
        assert _same(Path(plan.spec.output).read_bytes(), want)
