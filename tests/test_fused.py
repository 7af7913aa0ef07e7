"""Fused jobs: a unit's tiles are processed where they are read, without work tiles.

The plan fuses a job when its chain needs no whole-page statistics and the manifest does not
turn ``fuse`` off; the state machine's ``Fused`` choice then runs ``ProcessUnits`` (one
``process_unit`` per split unit, on the process function) instead of Split -> Process. The
output must be bit-identical to the unfused path and to the chain on the whole page.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from test_exactness import assert_identical, make_image, read_page, reference, run_tiled, write_tiff

from pipeline.adapters.tiff_read import read_infos
from pipeline.core import plan as plan_mod
from pipeline.core.manifest import parse_manifest, parse_manifest_or_scan
from pipeline.core.models import JobSpec
from pipeline.errors import ManifestError
from pipeline.runner import run_local

pytestmark = pytest.mark.timeout(300)

G = {"op": "gaussian_blur", "sigma": 1.5}
CHAINS = [
    [G],
    [{"op": "median_blur", "ksize": 5}, {"op": "unsharp_mask", "sigma": 2.0, "amount": 0.7}],
    [{"op": "dilate", "ksize": 5}, {"op": "invert"}],
]


# --- the plan ---------------------------------------------------------------------------


def _plan(tmp_path: Path, ops: list[dict[str, Any]], fuse: bool = True) -> plan_mod.JobPlan:
    src = tmp_path / "in.tif"
    if not src.exists():
        write_tiff(src, [make_image(1, 300, 260, 3, "uint8")] * 2, tiled=True)
    spec = JobSpec(input=str(src), output=str(tmp_path / "out.tif"), ops=ops, tile=64,
                   fuse=fuse)
    plan, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None),
                                      str(tmp_path / "w"), 0.0)
    assert problems == []
    return plan


def test_local_chains_are_fused_with_no_batches(tmp_path: Path):
    plan = _plan(tmp_path, [G])
    assert plan.fused and plan.batches == []
    assert sum(u.tiles for u in plan.units) == plan.tiles
    assert plan_mod.JobPlan.from_json(json.loads(json.dumps(plan.to_json()))).fused


def test_fuse_false_and_statistics_chains_use_work_tiles(tmp_path: Path):
    off = _plan(tmp_path, [G], fuse=False)
    assert not off.fused and off.batches
    gray = {"op": "to_gray"}
    for ops in ([gray, {"op": "equalize_hist"}], [gray, G, {"op": "canny", "low": 40,
                                                           "high": 90}]):
        plan = _plan(tmp_path, ops)
        assert not plan.fused and plan.batches, ops


def test_fused_units_are_smaller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Fused units hold FUSED_UNIT_PIXELS (the chain's work makes a pixel dearer)."""
    monkeypatch.setattr(plan_mod, "SPLIT_UNIT_PIXELS", 10**9)
    monkeypatch.setattr(plan_mod, "FUSED_UNIT_PIXELS", 64 * 260)
    fused, split = _plan(tmp_path, [G]), _plan(tmp_path, [G], fuse=False)
    assert len(split.units) == 2  # one per page
    assert len(fused.units) == 2 * 5  # one per tile row (300 rows of 64-row tiles)
    assert all(u.row1 - u.row0 == 1 for u in fused.units)


# --- the manifest -----------------------------------------------------------------------


def test_fuse_in_the_manifest(tmp_path: Path):
    jobs = parse_manifest({"defaults": {"fuse": False}, "jobs": [
        {"input": "a.tif", "output": "b.tif"},
        {"input": "c.tif", "output": "d.tif", "fuse": True}]}, "m.json", str(tmp_path))
    assert [j.fuse for j in jobs] == [False, True]
    assert parse_manifest({"jobs": [{"input": "a.tif", "output": "b.tif"}]}, "m.json",
                          str(tmp_path))[0].fuse is True
    scan = parse_manifest_or_scan({"scan": {"input": "in/", "output": "out/", "fuse": False}},
                                  "m.json", str(tmp_path))
    assert scan.job(str(tmp_path / "in" / "x.tif"), "x.tif").fuse is False
    with pytest.raises(ManifestError) as err:
        parse_manifest({"jobs": [{"input": "a.tif", "output": "b.tif", "fuse": "yes"}]},
                       "m.json", str(tmp_path))
    assert 'jobs[0].fuse: expected true or false, got "yes"' in str(err.value)


# --- the steps, in-process --------------------------------------------------------------


@pytest.mark.parametrize("ops", CHAINS, ids=lambda ops: "+".join(o["op"] for o in ops))
@pytest.mark.parametrize("layout_,units", [
    ({"tiled": True, "tile": (32, 48), "compression": "deflate"}, "small"),
    ({"tiled": False, "rowsperstrip": 7, "compression": "lzw"}, "tiny"),
    ({"tiled": True, "tile": (16, 16), "compression": "zstd"}, None),
])
def test_fused_equals_unfused_and_the_whole_page(tmp_path: Path, ops, layout_, units):
    pages = [make_image(3, 203, 177, 3, "uint8"), make_image(4, 150, 260, 3, "uint8")]
    src = tmp_path / "in.tif"
    write_tiff(src, pages, **layout_)
    fused, plan = run_tiled(tmp_path, src, ops, 64, 32, units=units)
    unfused, plan_off = run_tiled(tmp_path, src, ops, 64, 32, units=units, fuse=False)
    assert plan.fused and not plan_off.fused
    for i, page in enumerate(pages):
        assert_identical(fused[i], unfused[i], f"page {i}")
        assert_identical(fused[i], reference(page, ops), f"page {i}")


def test_fused_downsample_and_16_bit(tmp_path: Path):
    page = make_image(7, 260, 300, 1, "uint16")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True, tile=(64, 64))
    ops = [G, {"op": "downsample", "factor": 2}]
    fused, plan = run_tiled(tmp_path, src, ops, 64, 32)
    unfused, _ = run_tiled(tmp_path, src, ops, 64, 32, fuse=False)
    assert plan.fused
    assert_identical(fused[0], unfused[0])
    assert fused[0].shape == (130, 150)


# --- the state machine, on the embedded engine ------------------------------------------


def test_the_engine_takes_the_fused_branch_per_job(tmp_path: Path):
    """One manifest, three jobs: fused, fuse off, and a statistics chain (never fused). Each
    job takes its own branch of the Fused choice; every output equals the whole-page chain;
    a fused job writes no work tiles."""
    page = make_image(5, 230, 190, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True, tile=(32, 32), compression="deflate")
    jobs = [{"input": str(src), "output": str(tmp_path / f"out{i}.tif"), "ops": ops,
             "tile": 64, "output_options": {"tile": 32}, **extra}
            for i, (ops, extra) in enumerate([([G], {}), ([G], {"fuse": False}),
                                              ([{"op": "to_gray"}, {"op": "equalize_hist"}],
                                               {})])]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    actions: dict[int, set[str]] = {}
    tiles: dict[int, int] = {}
    lock = threading.Lock()

    def listener(function: str, event: dict[str, Any], ok: bool, payload: dict[str, Any]):
        assert ok, payload
        job = payload.get("job")
        with lock:
            if isinstance(job, int):
                actions.setdefault(job, set()).add(f"{function}.{event['action']}")
            if event["action"] in ("process", "process_unit", "process_job"):
                tiles[job] = tiles.get(job, 0) + payload["tiles"]

    result = run_local(str(tmp_path / "m.json"), 2, listener=listener, keep_work=True)
    assert result.ok, result.error
    # a fused job of one unit: its unit and its merge in one ProcessJob
    assert actions[0] == {"process.plan_job", "process.process_job"}
    assert actions[1] == {"process.plan_job", "split.split", "process.process", "merge.merge"}
    assert "process.process_unit" not in actions[2] and "process.stats" in actions[2]
    assert tiles[0] == tiles[1] == tiles[2] == 4 * 3  # every tile counted once
    work = Path(result.work)
    assert not list((work / "jobs" / "00000").rglob("*.tpw"))
    assert list((work / "jobs" / "00001").rglob("*.tpw"))
    assert_identical(read_page(tmp_path / "out0.tif", 0), reference(page, [G]))
    assert_identical(read_page(tmp_path / "out1.tif", 0), reference(page, [G]))


def test_a_failing_fused_unit_fails_only_its_job(tmp_path: Path):
    """A damaged input tile in the middle of a page: the fused unit reading it fails, the job
    fails with the recorded error naming the file, page and segment, no output is published,
    and the other job of the run succeeds."""
    page = make_image(6, 256, 256, 1, "uint8")
    good, bad = tmp_path / "good.tif", tmp_path / "bad.tif"
    write_tiff(good, [page], tiled=True, tile=(32, 32), compression="deflate")
    write_tiff(bad, [page], tiled=True, tile=(32, 32), compression="deflate")
    with tifffile.TiffFile(bad) as tf:
        offset = tf.pages[0].dataoffsets[27]
    data = bytearray(bad.read_bytes())
    data[offset:offset + 16] = b"\xff" * 16  # not a zlib stream any more
    bad.write_bytes(bytes(data))
    jobs = [{"input": str(p), "output": str(tmp_path / f"{p.stem}.out.tif"), "ops": [G],
             "tile": 64, "output_options": {"tile": 32}} for p in (bad, good)]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    result = run_local(str(tmp_path / "m.json"), 2)
    report = result.report
    assert report is not None, result.error
    assert (report["succeeded"], report["failed"]) == (1, 1)
    failed, ok = report["jobs"]
    assert failed["status"] == "FAILED" and ok["status"] == "SUCCEEDED"
    assert failed["error"]["type"] == "CorruptTiffError", failed["error"]
    message = failed["error"]["message"]
    assert str(bad) in message and "page 0" in message and "segment 27" in message, message
    assert "the file is damaged: copy it again from its source" in message, message
    assert not (tmp_path / "bad.out.tif").exists()
    assert np.array_equal(read_page(tmp_path / "good.out.tif", 0), reference(page, [G]))


def _sweep_plan(folder: Path, pages: list[np.ndarray]) -> Any:
    """The plan of a blur of ``pages`` (one file, 128 px deflate tiles), made by the steps."""
    from pipeline.core.events import JobEvent, RunEvent
    from pipeline.steps.common import load_plan
    from pipeline.steps.planning import plan_run
    from pipeline.steps.stats import plan_job

    with tifffile.TiffWriter(folder / "in.tif") as tw:
        for page in pages:
            tw.write(page, tile=(128, 128), compression="zlib", photometric="rgb")
    (folder / "m.json").write_text(json.dumps({"jobs": [{
        "input": "in.tif", "output": "o.tif", "ops": [{"op": "gaussian_blur", "sigma": 2}]}]}))
    run = plan_run(RunEvent(manifest=str(folder / "m.json"), work=str(folder / "w"),
                            run_id="r"))["run"]
    return load_plan(plan_job(JobEvent(run=run, job=0))["plan"])


def test_a_unit_of_one_tile_is_swept_in_the_calling_thread(tmp_path: Path):
    """``sweep_unit``: a unit of one tile (a small page) reads, decodes and handles its tile
    in the calling thread (the engine runs such units side by side instead); a unit of
    several tiles hands them to its tile threads. Both give the page's haloed pixels."""
    from pipeline.steps.split import sweep_unit

    rng = np.random.default_rng(8)
    small = rng.integers(0, 255, (300, 280, 3), np.uint8)
    large = rng.integers(0, 255, (1500, 1300, 3), np.uint8)
    plan = _sweep_plan(tmp_path, [small, large])
    by_page = {p: [plan.units[n] for n in plan.units_of(p)] for p in (0, 1)}
    assert [u.tiles for u in by_page[0]] == [1] and by_page[1][0].tiles > 1
    here = threading.get_ident()
    for page, pixels in ((0, small), (1, large)):
        grid = plan.pages[page].grid
        for unit in by_page[page]:
            seen: dict[tuple[int, int], int] = {}

            def handle(r: int, c: int, px: np.ndarray, seen: Any = seen,
                       grid: Any = grid, pixels: np.ndarray = pixels) -> None:
                rect = grid.haloed(r, c)
                assert np.array_equal(px, pixels[rect.y0:rect.y1, rect.x0:rect.x1])
                seen[(r, c)] = threading.get_ident()

            sweep_unit(plan, unit, handle, 2)
            assert len(seen) == unit.tiles
            if unit.tiles == 1:
                assert set(seen.values()) == {here}
            else:
                assert here not in set(seen.values())


def test_units_side_by_side_share_their_tile_and_decoder_threads(tmp_path: Path):
    """``sweep_unit`` with :class:`SharedPools` (a ProcessJob's units side by side): the
    unit's tiles are handled in the shared tile pool and its segments decoded in the shared
    decoder, with no pool of its own, and give the same haloed pixels. On an error, the
    unit's tiles already handed to the shared pool have ended when the error reaches the
    caller (the pool outlives the unit: they would else write to a segment it aborts)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.steps import split
    from pipeline.steps.split import SharedPools, sweep_unit

    page = np.random.default_rng(9).integers(0, 255, (1500, 1300, 3), np.uint8)
    plan = _sweep_plan(tmp_path, [page])
    unit = plan.units[0]
    grid = plan.pages[0].grid
    assert unit.tiles == 4
    made: list[int] = []

    class Counted(ThreadPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any):
            made.append(1)
            super().__init__(*args, **kwargs)

    decoded: list[str] = []
    real_decode = split.PageReader.decode_segment

    def decode(self: Any, *args: Any) -> Any:
        decoded.append(threading.current_thread().name)
        return real_decode(self, *args)

    with ThreadPoolExecutor(2, thread_name_prefix="shared-tile") as tiles, \
            ThreadPoolExecutor(2, thread_name_prefix="shared-decode") as decoder, \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(split, "ThreadPoolExecutor", Counted)
        mp.setattr(split.PageReader, "decode_segment", decode)
        shared = SharedPools(tiles, decoder)
        seen: dict[tuple[int, int], str] = {}

        def handle(r: int, c: int, px: np.ndarray) -> None:
            rect = grid.haloed(r, c)
            assert np.array_equal(px, page[rect.y0:rect.y1, rect.x0:rect.x1])
            seen[(r, c)] = threading.current_thread().name

        sweep_unit(plan, unit, handle, 2, shared)
        assert len(seen) == unit.tiles and made == []
        assert {name.split("_")[0] for name in seen.values()} == {"shared-tile"}
        assert decoded and {name.split("_")[0] for name in decoded} == {"shared-decode"}

        ended: list[tuple[int, int]] = []
        running = threading.Event()  # another tile is in flight

        def failing(r: int, c: int, px: np.ndarray) -> None:
            if (r, c) == (0, 0):  # fails once another tile runs (a loaded machine started
                assert running.wait(60)  # the other thread late: none was in flight)
                raise ValueError("tile (0, 0) refuses")
            running.set()
            time.sleep(0.05)  # still running when (0, 0) has failed
            ended.append((r, c))

        with pytest.raises(ValueError, match="refuses"):
            sweep_unit(plan, unit, failing, 2, shared)
        in_flight = len(ended)
        time.sleep(0.2)
        assert in_flight > 0 and len(ended) == in_flight  # none ended after the error
