"""Pure unit tests of the tile geometry (pipeline.core.grid) and of job plans (make_plan)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from math import ceil

import numpy as np
import pytest
import tifffile

from pipeline.core import plan as plan_mod
from pipeline.core.grid import (
    Batch,
    PageGrid,
    Rect,
    SplitUnit,
    batches,
    columns_still_read,
    rows_held,
    split_units,
)
from pipeline.core.job_fields import tile_at_least, tile_step
from pipeline.core.models import JobPlan, JobSpec, PageInfo
from pipeline.core.ops import HALO_ALIGN, chain_binary, chain_from_json, chain_grays, chain_halo
from pipeline.core.plan import make_plan

# --- PageGrid ---------------------------------------------------------------------------

SIZES = [(1, 1), (1, 1000), (63, 65), (64, 64), (65, 63), (257, 389), (1000, 333), (64, 1500)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("tile", [1, 16, 64, 100])
def test_rows_cols_count(height, width, tile):
    g = PageGrid(height, width, tile, 0)
    assert g.rows == ceil(height / tile) == -(-height // tile)
    assert g.cols == ceil(width / tile)
    assert g.count == g.rows * g.cols
    # the last row/col is the only one that may be partial, and it is never empty
    assert (g.rows - 1) * tile < height <= g.rows * tile
    assert (g.cols - 1) * tile < width <= g.cols * tile


def test_rows_cols_examples():
    assert (PageGrid(257, 389, 64, 16).rows, PageGrid(257, 389, 64, 16).cols) == (5, 7)
    assert PageGrid(1000, 333, 128, 0).count == 8 * 3
    assert PageGrid(64, 1500, 64, 0).count == 1 * 24
    assert PageGrid(64, 64, 64, 32).count == 1


def test_position_is_row_major():
    g = PageGrid(257, 389, 64, 16)
    assert [g.position(i) for i in range(g.count)] == [
        (r, c) for r in range(g.rows) for c in range(g.cols)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("tile,halo", [(16, 0), (64, 16), (64, 100), (100, 7), (128, 48)])
def test_cores_partition_the_page(height, width, tile, halo):
    g = PageGrid(height, width, tile, halo)
    cover = np.zeros((height, width), np.int32)
    for i in range(g.count):
        r, c = g.position(i)
        core = g.core(r, c)
        assert core == Rect(r * tile, c * tile, min((r + 1) * tile, height),
                            min((c + 1) * tile, width))
        assert core.height > 0 and core.width > 0
        cover[core.y0:core.y1, core.x0:core.x1] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("tile,halo", [(16, 0), (64, 16), (64, 100), (100, 7), (128, 48)])
def test_haloed_is_core_grown_and_clipped(height, width, tile, halo):
    g = PageGrid(height, width, tile, halo)
    for i in range(g.count):
        r, c = g.position(i)
        core, h = g.core(r, c), g.haloed(r, c)
        assert h == Rect(max(core.y0 - halo, 0), max(core.x0 - halo, 0),
                         min(core.y1 + halo, height), min(core.x1 + halo, width))
        assert 0 <= h.y0 <= core.y0 and core.y1 <= h.y1 <= height
        assert 0 <= h.x0 <= core.x0 and core.x1 <= h.x1 <= width
        rel = core.relative_to(h)
        assert (rel.height, rel.width) == (core.height, core.width)
        assert rel.y0 == core.y0 - h.y0 and rel.x0 == core.x0 - h.x0


def test_haloed_examples_at_the_borders():
    g = PageGrid(257, 389, 64, 16)
    assert g.haloed(0, 0) == Rect(0, 0, 80, 80)  # clipped top-left
    assert g.haloed(1, 1) == Rect(48, 48, 144, 144)  # interior: grown both sides
    assert g.haloed(4, 6) == Rect(240, 368, 257, 389)  # 1x5 core, clipped bottom-right
    assert g.core(4, 6) == Rect(256, 384, 257, 389)
    assert g.haloed(0, 6) == Rect(0, 368, 80, 389)
    big = PageGrid(100, 100, 64, 500)  # a halo larger than the page: the whole page
    assert big.haloed(0, 0) == big.haloed(1, 1) == Rect(0, 0, 100, 100)


def test_rect_relative_to():
    assert Rect(10, 20, 30, 50).relative_to(Rect(5, 5, 100, 100)) == Rect(5, 15, 25, 45)
    assert Rect(3, 4, 5, 6).height == 2 and Rect(3, 4, 5, 9).width == 5


@pytest.mark.parametrize("height,width,tile", [(257, 389, 64), (1000, 333, 128), (64, 1500, 64),
                                               (5, 7, 16)])
def test_span(height, width, tile):
    g = PageGrid(height, width, tile, 32)
    for r0 in range(g.rows):
        for r1 in range(r0 + 1, g.rows + 1):
            for c0 in range(g.cols):
                for c1 in range(c0 + 1, g.cols + 1):
                    s = g.span(r0, r1, c0, c1)
                    assert s == Rect(r0 * tile, c0 * tile, min(r1 * tile, height),
                                     min(c1 * tile, width))
    assert g.span(0, g.rows, 0, g.cols) == Rect(0, 0, height, width)
    assert g.span(0, 1, 0, 1) == g.core(0, 0)
    assert g.expand(g.span(0, g.rows, 0, g.cols)) == Rect(0, 0, height, width)


def test_expand_of_span_contains_every_haloed_tile():
    g = PageGrid(1000, 333, 64, 48)
    band = g.expand(g.span(3, 6, 1, 4))
    for r in range(3, 6):
        for c in range(1, 4):
            h = g.haloed(r, c)
            assert band.y0 <= h.y0 and h.y1 <= band.y1 and band.x0 <= h.x0 and h.x1 <= band.x1


# --- split units ------------------------------------------------------------------------


def _unit_cover(grid: PageGrid, units: list[SplitUnit], page: int = 0) -> Counter:
    cover: Counter = Counter()
    for u in units:
        assert u.page == page
        assert 0 <= u.row0 < u.row1 <= grid.rows and 0 <= u.col0 < u.col1 <= grid.cols
        for r in range(u.row0, u.row1):
            for c in range(u.col0, u.col1):
                cover[(r, c)] += 1
    return cover


def _assert_exact_cover(grid: PageGrid, units: list[SplitUnit], page: int = 0) -> None:
    cover = _unit_cover(grid, units, page)
    assert set(cover) == {(r, c) for r in range(grid.rows) for c in range(grid.cols)}
    assert all(n == 1 for n in cover.values()), [k for k, n in cover.items() if n > 1]


GRIDS = [PageGrid(257, 389, 64, 16), PageGrid(1000, 333, 128, 32), PageGrid(64, 1500, 64, 0),
         PageGrid(10_000, 7_000, 1024, 48), PageGrid(1, 1, 16, 16), PageGrid(300, 200, 16, 96)]


def _per_col(grid: PageGrid, bpp: int, segment_rows: int) -> int:
    """Bytes of decoded rows one tile column of a unit holds (see split_units)."""
    return (grid.tile + 2 * grid.halo + segment_rows) * (grid.tile + 2 * grid.halo) * bpp


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g.height}x{g.width}t{g.tile}h{g.halo}")
@pytest.mark.parametrize("cache_budget", [1, 100_000, 1_000_000, 192 * 1024 * 1024, 10**15])
@pytest.mark.parametrize("unit_pixels", [1, 5_000, 100_000, 1024**3, 10**15])
@pytest.mark.parametrize("segment_rows", [1, 16, 256, 1000])
def test_split_units_cover_every_tile_once(grid, cache_budget, unit_pixels, segment_rows):
    bpp = 3
    units = split_units(2, grid, bpp, segment_rows, cache_budget, unit_pixels)
    _assert_exact_cover(grid, units, page=2)
    per_col = _per_col(grid, bpp, segment_rows)
    for u in units:
        cols, rows = u.col1 - u.col0, u.row1 - u.row0
        assert cols == 1 or cols * per_col <= cache_budget  # the cache stays in budget
        # a band holds more than one tile row only when its core pixels fit unit_pixels
        chunk_width = min((units[0].col1 - units[0].col0) * grid.tile, grid.width)
        assert rows == 1 or rows * chunk_width * grid.tile <= unit_pixels
    # units are a regular grid of bands x column chunks, row-major
    assert units == sorted(units, key=lambda u: (u.row0, u.col0))


@pytest.mark.parametrize("grid", GRIDS[:4] + GRIDS[5:],
                         ids=lambda g: f"{g.height}x{g.width}t{g.tile}")
def test_budget_below_one_tile(grid):
    """One tile per unit: memory stays bounded whatever the page's width."""
    units = split_units(0, grid, 2, grid.tile, 1, 1)
    assert len(units) == grid.count
    assert all(u.row1 - u.row0 == 1 and u.col1 - u.col0 == 1 for u in units)
    _assert_exact_cover(grid, units)


def test_split_units_big_budget_is_one_unit():
    g = PageGrid(257, 389, 64, 16)
    assert split_units(0, g, 4, 16, 10**15, 10**15) == [SplitUnit(0, 0, g.rows, 0, g.cols)]


def test_split_units_column_chunks():
    g = PageGrid(257, 389, 64, 16)  # 5 x 7 tiles of 96x96 haloed pixels
    per_col = _per_col(g, 1, 32)
    units = split_units(0, g, 1, 32, 3 * per_col, 10**15)
    assert [(u.row0, u.row1, u.col0, u.col1) for u in units] == [
        (0, 5, 0, 3), (0, 5, 3, 6), (0, 5, 6, 7)]
    # bands of 2 tile rows of a 3-column chunk
    units = split_units(0, g, 1, 32, 3 * per_col, 2 * 3 * 64 * 64)
    assert {(u.row0, u.row1) for u in units} == {(0, 2), (2, 4), (4, 5)}
    assert {(u.col0, u.col1) for u in units} == {(0, 3), (3, 6), (6, 7)}
    _assert_exact_cover(g, units)


def test_split_units_bands_follow_segment_rows():
    g = PageGrid(2048, 100, 64, 0)  # 32 rows of 64x64 tiles (x 2 cols, 100 px wide)
    row_pixels = 100 * 64
    # 6 tile rows' pixels, segments of 4 tile rows: bands of 4 rows
    units = split_units(0, g, 1, 256, 10**15, 6 * row_pixels)
    assert {u.row1 - u.row0 for u in units} == {4}
    _assert_exact_cover(g, units)
    # segments not a multiple of the tile, or shorter than it: no rounding
    for seg in (100, 16):
        units = split_units(0, g, 1, seg, 10**15, 6 * row_pixels)
        assert units[0].row1 - units[0].row0 == 6
        _assert_exact_cover(g, units)
    # fewer rows than one segment: no rounding either
    units = split_units(0, g, 1, 256, 10**15, 3 * row_pixels)
    assert units[0].row1 - units[0].row0 == 3
    _assert_exact_cover(g, units)


def test_split_unit_json_round_trip():
    u = SplitUnit(1, 2, 3, 4, 5)
    assert SplitUnit.from_json(u.to_json()) == u
    b = Batch(1, 8, 16)
    assert Batch.from_json(b.to_json()) == b


# --- batches ----------------------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g.height}x{g.width}t{g.tile}")
@pytest.mark.parametrize("size", [0, 1, 3, 7, 8, 100, 10**6])
def test_batches_cover_every_tile_once(grid, size):
    bs = batches(3, grid, size)
    tiles = [t for b in bs for t in range(b.first, b.last)]
    assert tiles == list(range(grid.count))  # in order, each once
    assert all(b.page == 3 for b in bs)
    assert all(0 < b.last - b.first <= max(1, size) for b in bs)
    assert len(bs) == ceil(grid.count / max(1, size))


# --- make_plan --------------------------------------------------------------------------


def info(index=0, height=257, width=389, channels=1, dtype="uint8", tiled=True,
         segment_rows=64) -> PageInfo:
    return PageInfo(index=index, height=height, width=width, channels=channels, dtype=dtype,
                    photometric="rgb" if channels >= 3 else "minisblack",
                    extrasamples=[2] if channels == 2 else [],  # (2: gray + alpha)
                    tiled=tiled, segment_rows=segment_rows, compression="zstd")


def plan_of(ops, infos, tile=64, fuse=True) -> tuple[JobPlan, list[str]]:
    spec = JobSpec(input="/in.tif", output="/out.tif", ops=ops, tile=tile, fuse=fuse)
    return told(make_plan(7, spec, infos, "/work/jobs/00007", 123.0))


def told(planned: tuple[JobPlan, list[plan_mod.Problem]]) -> tuple[JobPlan, list[str]]:
    """A plan and its problems as they are told (their messages)."""
    plan, problems = planned
    return plan, [str(problem) for problem in problems]


def _aligned(n: int) -> int:
    return -(-n // HALO_ALIGN) * HALO_ALIGN


@pytest.mark.parametrize("ops,dtype,raw", [
    ([], "uint8", 0),
    ([{"op": "invert"}], "uint8", 0),
    ([{"op": "gamma", "gamma": 2.2}, {"op": "threshold", "value": 3}, {"op": "to_gray"}],
     "uint16", 0),
    ([{"op": "gaussian_blur", "sigma": 0.8}], "uint8", 2),  # ksize round(5.8)|1 = 7
    ([{"op": "gaussian_blur", "sigma": 0.8}], "uint16", 3),  # ksize round(7.4)|1 = 7
    ([{"op": "gaussian_blur", "sigma": 2.5}], "uint8", 8),  # ksize 17
    ([{"op": "gaussian_blur", "sigma": 2.5}], "float32", 10),  # ksize 21
    ([{"op": "gaussian_blur", "sigma": 6}], "uint8", 18),  # ksize 37
    ([{"op": "gaussian_blur", "sigma": 6}], "uint16", 24),  # ksize 49
    ([{"op": "median_blur", "ksize": 9}], "uint8", 4),
    ([{"op": "dilate", "ksize": 5, "iterations": 2}], "uint8", 4),
    ([{"op": "erode", "ksize": 4, "iterations": 3}], "uint8", 6),
    ([{"op": "dilate"}], "uint8", 1),  # defaults: ksize 3, iterations 1
    ([{"op": "unsharp_mask", "sigma": 2.5, "amount": 0.5}], "uint8", 8),
    ([{"op": "gaussian_blur", "sigma": 2.5}, {"op": "dilate", "ksize": 5, "iterations": 2},
      {"op": "unsharp_mask", "sigma": 0.8}], "uint8", 8 + 4 + 2),
    ([{"op": "gaussian_blur", "sigma": 6}, {"op": "gaussian_blur", "sigma": 6}], "uint8", 36),
    ([{"op": "median_blur", "ksize": 5}] * 9, "uint8", 18),
])
def test_halo_is_sum_of_op_halos_rounded_up(ops, dtype, raw):
    assert chain_halo(chain_from_json(ops), dtype) == _aligned(raw)
    plan, problems = plan_of(ops, [info(dtype=dtype)])
    assert problems == []
    assert plan.halo == _aligned(raw)
    assert plan.halo % HALO_ALIGN == 0
    assert (plan.halo == 0) == (raw == 0)
    assert all(p.grid.halo == plan.halo for p in plan.pages)


def test_halo_is_the_largest_over_pages_of_different_dtypes():
    ops = [{"op": "gaussian_blur", "sigma": 6}]  # uint8 radius 18 (32), uint16 24 (32)
    plan, _ = plan_of(ops, [info(0, dtype="uint8"), info(1, dtype="uint16")])
    assert plan.halo == 32
    ops = [{"op": "gaussian_blur", "sigma": 4}]  # uint8 ksize 25 -> 12 (16); uint16 33 -> 16
    plan, _ = plan_of(ops, [info(0, dtype="uint8"), info(1, dtype="uint16")])
    assert plan.halo == 16
    ops = [{"op": "gaussian_blur", "sigma": 4.5}]  # uint8 ksize 28|1=29 -> 14; float 37 -> 18
    plan, _ = plan_of(ops, [info(0, dtype="uint8"), info(1, dtype="float32")])
    assert plan.halo == 32


def test_plan_grids_units_and_batches():
    infos = [info(2, 257, 389, 3, tiled=False, segment_rows=16), info(0, 64, 1500, 1)]
    fused, problems = plan_of([{"op": "gaussian_blur", "sigma": 2.5}], infos, tile=64)
    assert problems == [] and fused.fused and fused.batches == []
    plan, problems = plan_of([{"op": "gaussian_blur", "sigma": 2.5}], infos, tile=64,
                             fuse=False)
    assert problems == [] and not plan.fused
    assert [p.grid for p in plan.pages] == [PageGrid(257, 389, 64, 16),
                                           PageGrid(64, 1500, 64, 16)]
    assert [p.info.index for p in plan.pages] == [2, 0]
    for i, page in enumerate(plan.pages):
        _assert_exact_cover(page.grid, [u for u in plan.units if u.page == i], page=i)
        _assert_exact_cover(page.grid, [u for u in fused.units if u.page == i], page=i)
        tiles = [t for b in plan.batches if b.page == i for t in range(b.first, b.last)]
        assert tiles == list(range(page.grid.count))
    assert plan.tiles == fused.tiles == 35 + 24
    # what plan.json reads back as is the plan itself (PlanJob's process keeps the plan it
    # wrote instead of reading it: common.keep_plan)
    assert JobPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert JobPlan.from_json(json.loads(json.dumps(fused.to_json()))) == fused
    for job in (plan, fused):  # each page's units and batches, by index, in order
        for i in range(len(job.pages)):
            assert job.units_of(i) == [n for n, u in enumerate(job.units) if u.page == i]
            assert job.batches_of(i) == [n for n, b in enumerate(job.batches) if b.page == i]
        assert job.units_of(len(job.pages)) == job.batches_of(len(job.pages)) == []
    assert fused.batches_of(0) == [] and plan.batches_of(1)


def test_page_info_json_is_its_fields_and_round_trips():
    """PageInfo.to_json holds every field (ifd_offset included) and reads back equal; a plan
    written before ifd_offset existed reads as offset 0 (the page is found by its index)."""
    page = PageInfo(index=4, height=10, width=20, channels=3, dtype="uint16", photometric="rgb",
                    extrasamples=[2], tiled=True, segment_rows=16, compression="zstd",
                    metadata={"software": "x", "xresolution": [72, 1]}, ifd_offset=1234)
    d = page.to_json()
    assert set(d) == {f.name for f in dataclasses.fields(PageInfo)}
    assert d["ifd_offset"] == 1234 and PageInfo.from_json(json.loads(json.dumps(d))) == page
    old = {k: v for k, v in d.items() if k != "ifd_offset"}
    assert PageInfo.from_json(old).ifd_offset == 0


def _spec_plan(ops, infos, tile, out_tile=512, as_told=True, **options):
    from pipeline.core.models import OutputOptions
    spec = JobSpec(input="/in.tif", output="/out.tif", ops=ops, tile=tile,
                   output_options=OutputOptions(tile=out_tile, **options))
    planned = make_plan(7, spec, infos, "/work/jobs/00007", 123.0)
    return told(planned) if as_told else planned


@pytest.mark.parametrize("height,width,tile,out_tile,expected", [
    (992, 992, 1024, 512, 512),  # 1 tile of 1024 -> 4 of 512
    (1024, 1024, 1024, 256, 512),  # stops at 4 tiles, not at the output tile
    (256, 256, 1024, 256, 256),  # one output tile: as small as the output tile
    (256, 256, 1024, 16, 128),  # ... or 4 tiles of 128
    (1728, 1728, 1024, 512, 1024),  # already 4 tiles
    (100, 5000, 1024, 512, 1024),  # 5 tiles in one row
    (992, 992, 1024, 1024, 1024),  # the output tile does not divide a half
    (992, 992, 768, 256, 768),  # 384 is no multiple of 256
    (40, 40, 1024, 16, 128),  # never below 8 halos (16 px here)
])
def test_small_pages_get_a_finer_grid(height, width, tile, out_tile, expected):
    plan, problems = _spec_plan([{"op": "gaussian_blur", "sigma": 1}],
                                [info(height=height, width=width, channels=3)], tile, out_tile)
    assert problems == []
    assert plan.pages[0].grid.tile == expected
    assert plan.spec.tile == tile  # what the manifest said is kept
    _assert_exact_cover(plan.pages[0].grid, plan.units, page=0)


def test_finer_grid_keeps_the_halo_small_and_the_chain_aligned():
    # sigma 6 (halo 32): a 128 tile would be only 4 halos wide
    plan, _ = _spec_plan([{"op": "gaussian_blur", "sigma": 6}], [info(height=300, width=300)],
                         1024, 16)
    assert plan.halo == 32 and plan.pages[0].grid.tile == 256
    # downsample by 2 needs a multiple of 2 x the output tile: 1024 -> 512 (out 256)
    plan, problems = _spec_plan([{"op": "downsample", "factor": 2}],
                                [info(height=900, width=900)], 1024, 256)
    assert problems == [] and plan.pages[0].grid.tile == 512
    assert plan.pages[0].out_grid.tile == 256
    # each page on its own: a big page keeps the tile, a small one is cut finer
    plan, _ = _spec_plan([], [info(0, 5000, 5000), info(1, 500, 500)], 1024)
    assert [p.grid.tile for p in plan.pages] == [1024, 512]
    # without a halo: never below the smallest tile a manifest takes
    plan, _ = _spec_plan([{"op": "invert"}], [info(height=40, width=40)], 1024, 16)
    assert plan.halo == 0 and plan.pages[0].grid.tile == 64


@pytest.mark.parametrize("channels,dtype,out_tile,expected", [
    (3, "uint8", 512, 1024),  # 3 MB a tile
    (16, "float32", 512, 1024),  # 64 MB: the most a tile holds
    (64, "float32", 512, 512),  # 256 MB a 1024 tile, 64 MB a 512 one
    (128, "float32", 512, 512),  # 128 MB: not below the output tile
    (128, "float32", 128, 256),  # ... which may be smaller
    (200, "float64", 16, 128),  # 1,600 bytes a pixel: 26 MB
])
def test_pages_of_many_bands_get_a_finer_grid(channels, dtype, out_tile, expected):
    """A processing tile holds at most MAX_TILE_BYTES of input pixels where the chain and
    the output tile allow (a 1024 px tile of 128 float32 bands is 512 MB, and an invocation
    holds several at once, with halos, copies and output rows: 4 GB for a page of 2 GB)."""
    page = info(height=8192, width=8192, channels=channels, dtype=dtype)
    plan, problems = _spec_plan([{"op": "gaussian_blur", "sigma": 1}], [page], 1024, out_tile)
    assert problems == [] and plan.pages[0].grid.tile == expected
    _assert_exact_cover(plan.pages[0].grid, plan.units, page=0)


def test_a_page_in_compressed_strips_is_not_cut_into_column_chunks_per_strip():
    """A compressed strip spans the page and is decoded whole by each unit that needs a row
    of it: a page in one deflate strip was cut into a column chunk per tile column, each
    decoding the whole page (20 decodes of a 20000 x 20000 page). Units hold up to two
    strips' rows then; tiled pages and uncompressed strips (read by rows) keep the cache
    budget's column chunks."""
    one = dataclasses.replace(info(height=20000, width=20000, channels=3, tiled=False,
                                   segment_rows=20000), compression="deflate")
    plan, _ = plan_of([{"op": "gaussian_blur", "sigma": 2}], [one], tile=1024)
    assert len(plan.units) == 2 and all(u.col0 == 0 and u.col1 == 20 for u in plan.units)
    for other in (dataclasses.replace(one, compression="none"),
                  dataclasses.replace(one, tiled=True, segment_rows=512)):
        plan, _ = plan_of([{"op": "gaussian_blur", "sigma": 2}], [other], tile=1024)
        assert max(u.col1 - u.col0 for u in plan.units) < 20, other


def test_a_wide_page_in_short_compressed_strips_keeps_its_band_whole_up_to_the_budget():
    """Short compressed strips (16 rows, as scanners and GDAL write them) span the page too:
    in 32 MB column chunks a 40,000 px wide RGB page's band was cut into 5, each decoding
    every strip of the band again (2.4x the time of one chunk, bench/striped.py). A band
    stays whole up to plan.STRIPED_CACHE_BUDGET of decoded rows; a wider one is cut into
    chunks that large, a few, not one per 32 MB."""
    bpp, tile = 3, 1024
    for width, chunks in ((20000, 1), (40000, 1), (60000, 1), (200000, 3)):
        page = dataclasses.replace(info(height=8000, width=width, channels=bpp, tiled=False,
                                        segment_rows=16), compression="lzw")
        plan, _ = plan_of([{"op": "gaussian_blur", "sigma": 2}], [page], tile=tile)
        grid = plan.pages[0].grid
        widths = {u.col1 - u.col0 for u in plan.units}
        assert len({u.col0 for u in plan.units}) == chunks, width
        held = rows_held(grid, 16) * (grid.tile + 2 * grid.halo) * bpp * max(widths)
        assert held <= plan_mod.STRIPED_CACHE_BUDGET
    assert plan_mod.cache_budget(dataclasses.replace(page, compression="none")) == \
        plan_mod.SPLIT_CACHE_BUDGET  # uncompressed strips: read by rows, any columns


def test_a_small_tiled_level_of_an_aperio_slide_stays_tiled_while_it_stays_one():
    """A page much smaller than the output tile is written as one strip (libvips refuses
    its tile), but not a level of an Aperio slide (a page it stores in tiles) whose output
    keeps its Aperio description: OpenSlide's Aperio reader takes the tiled pages for the
    slide's levels, and a 125 x 93 level in one strip was no level (2 of the slide's 3:
    tests/test_slide_readers.py). After a downsample or a geometric op the description is
    dropped, the output is no Aperio slide, and the page is one strip again; so is a
    stripped Aperio image and a small page of any other file."""
    level = dataclasses.replace(info(height=93, width=125, channels=3),
                                metadata={"aperio": True})
    blur = [{"op": "gaussian_blur", "sigma": 1}]

    def strip(ops, page=level):
        plan, problems = _spec_plan(ops, [page], 1024)
        assert problems == []
        return plan.pages[0].strip

    assert not strip([]) and not strip(blur)
    assert strip([{"op": "downsample", "factor": 2}])
    assert strip([{"op": "flip", "axis": "horizontal"}])
    assert strip(blur, dataclasses.replace(level, tiled=False, segment_rows=93))
    assert strip(blur, dataclasses.replace(level, metadata={}))


def test_levels_as_pages_of_an_aperio_slide_are_refused_while_it_stays_one():
    """An Aperio slide's levels are pages of its file already, and its output keeps them
    (and its description): level pages added after each page (``pyramid_layout`` "pages")
    were taken by OpenSlide for levels of the slide (5 levels, two of them 500 x 375, the
    thumbnail lost). PlanJob refuses that, naming the page and what to write instead;
    SubIFD levels (which OpenSlide does not read) stay allowed, and so do level pages of an
    output that is no Aperio slide (downsampled: the description is dropped)."""
    slide = dataclasses.replace(info(height=1500, width=2000, channels=3),
                                metadata={"aperio": True})
    pages = {"pyramid": True, "pyramid_layout": "pages"}

    def problems(ops, page=slide, **options):
        return _spec_plan(ops, [page], 1024, **options)[1]

    refused = problems([{"op": "gaussian_blur", "sigma": 1}], **pages)
    assert len(refused) == 1 and refused[0].startswith("page 0: ")
    assert "Aperio" in refused[0] and '"pyramid_layout": "subifds"' in refused[0]
    assert problems([], pyramid=True) == []
    assert problems([{"op": "downsample", "factor": 2}], **pages) == []
    assert problems([], dataclasses.replace(slide, metadata={}), **pages) == []


def test_the_pages_advised_beside_an_aperio_slide_are_none_of_its_pages(tmp_path):
    """A job of level pages ("pyramid_layout": "pages") on a file whose pages 0 and 1 are
    an Aperio slide (its base and a level of it, tiled, each with its Aperio description)
    and page 2 a plain page: both slide pages are refused, and the pages the refusal
    advises to keep are those that would run, page 2 alone. (Told of page 0 only, it
    advised "pages": [1, 2], and page 1, the slide's level, is refused the same.)"""
    from pipeline.core.models import OutputOptions
    from pipeline.steps.planning import read_plan

    head = "Aperio Image Library v12.0.0\r\n"
    base = np.indices((256, 384)).sum(0).astype(np.uint8)[..., None].repeat(3, axis=2)
    path = tmp_path / "slide.svs"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, photometric="rgb", tile=(128, 128), metadata=None,
                 description=head + "384x256 [0,0 384x256] (128x128) RAW|MPP = 0.5")
        tw.write(base[::2, ::2].copy(), photometric="rgb", tile=(64, 64), metadata=None,
                 description=head + "384x256 -> 192x128 - ")
        tw.write(base[:64, :96, 0].copy(), tile=(32, 32), metadata=None)

    def problems(pages=None):
        spec = JobSpec(input=str(path), output=str(tmp_path / "out.tif"), pages=pages,
                       ops=[{"op": "gaussian_blur", "sigma": 1}],
                       output_options=OutputOptions(pyramid=True, pyramid_layout="pages"))
        return plan_mod.grouped_by_page(read_plan(0, spec, str(tmp_path / "work"), 0.0)[1])

    refused = problems()
    assert len(refused) == 2, refused
    assert refused[0].startswith("pages 0-1 (2 pages): an Aperio SVS slide's levels")
    assert refused[1] == ('page 2 has none of these problems: give this job "pages": [2] to '
                          "run it, and pages 0-1 a job of their own with ops and output "
                          "options that fit them")
    assert problems([2]) == []  # (the advice runs)


def test_levels_as_pages_of_an_output_of_several_pages_are_refused():
    """GDAL lists the later pages' level pages (``pyramid_layout`` "pages") among the first
    page's overviews (800 x 600 and 500 x 400 pages, 3 levels each: [2, 4, 8, 3, 6]), and
    OpenSlide takes them for levels of one slide: make_plan refuses a job of several pages
    that asks for them, once, telling how many pages and what to write instead (a job per
    page, or SubIFDs); a job of one page of the file, SubIFD levels, and no pyramid stay
    allowed, and an Aperio slide's refusal is told alone, once for its pages (a job per
    page of it is refused too)."""
    two = [info(0, 800, 600, 3), info(3, 500, 400, 3)]
    pages = {"pyramid": True, "pyramid_layout": "pages"}

    def problems(infos, as_told=True, **options):
        return _spec_plan([{"op": "invert"}], infos, 1024, 128, as_told, **options)[1]

    refused = problems(two, **pages)
    assert len(refused) == 1 and refused[0].startswith("the output would have 2 pages (0, 3)")
    assert "GDAL" in refused[0] and "OpenSlide" in refused[0]
    assert '"pages": [n]' in refused[0] and '"pyramid_layout": "subifds"' in refused[0]
    assert plan_mod.grouped_by_page(problems(two, False, **pages)) == refused
    assert problems(two[1:], **pages) == []
    assert problems(two, pyramid=True) == problems(two) == []
    slides = [dataclasses.replace(i, metadata={"aperio": True}) for i in two]
    # (of each page of the slide: told once for them all)
    assert [p[:43] for p in plan_mod.grouped_by_page(problems(slides, False, **pages))] == [
        "pages 0, 3 (2 pages): an Aperio SVS slide's"]


def test_a_first_page_without_mask_before_a_masked_page_gdal_would_pair_is_refused():
    """GDAL takes the first page's mask from any mask page of the file of its size, and each
    of its overviews' from any level mask of that overview's size (tests/test_masks.py): a
    job whose first page carries no internal mask is refused when a later page's carried
    mask (or, with pyramid, one of its levels' masks) has such a size, saying what to write
    instead; a masked first page, other sizes, and no carried mask stay allowed."""
    def page(index, height, width, masked):
        return dataclasses.replace(info(index, height, width), mask_ifd=1000 * masked)

    def problems(infos, as_told=True, **options):
        return _spec_plan([{"op": "invert"}], infos, 256, 64, as_told, **options)[1]

    bare, same = page(0, 256, 320, False), page(1, 256, 320, True)
    half = page(3, 128, 160, True)  # its levels 64 x 80, 32 x 40: page 0's second and third
    refused = problems([bare, same, half])
    assert len(refused) == 1 and refused[0].startswith(
        "page 0, the output's first page, carries no internal mask, but page 1 carries one")
    assert "GDAL" in refused[0] and '"pages": [n]' in refused[0]
    assert '"masks": false' in refused[0]
    assert plan_mod.grouped_by_page(problems([bare, same, half], False)) == refused
    assert "pages 1, 3 carry masks" in problems([bare, same, half], pyramid=True)[0]
    assert "page 3 carries one" in problems([bare, half], pyramid=True)[0]
    assert problems([bare, half]) == []  # (no levels: another size)
    assert problems([page(0, 256, 320, True), same, half], pyramid=True) == []
    assert problems([bare, page(1, 256, 320, False)], pyramid=True) == []
    assert problems([bare, page(1, 100, 100, True)], pyramid=True) == []  # (50 x 50: none)


def test_a_page_in_huge_tiles_is_cut_at_its_tiles():
    """Input tiles wider than a processing tile are decoded whole by each unit column chunk
    that needs a part of them: a 16384 px RGB page in 8192 px zstd tiles was cut into 16
    chunks, 36 decodes of its 4 tiles (5.5 s; 3.6 s now, bench/ab.py). A unit may hold two
    input tiles, and its chunk is a whole number of them."""
    page = dataclasses.replace(info(height=16384, width=16384, channels=3, tiled=True,
                                    segment_rows=8192), compression="zstd")
    plan, _ = plan_of([{"op": "gaussian_blur", "sigma": 2}], [page], tile=1024)
    # two chunks of 8 tiles of 1024 (one input tile wide), each the page's height
    assert [(u.row0, u.row1, u.col0, u.col1) for u in plan.units] == [(0, 16, 0, 8),
                                                                      (0, 16, 8, 16)]
    small = dataclasses.replace(page, segment_rows=512)  # 512 px tiles: the budget's chunks
    plan, _ = plan_of([{"op": "gaussian_blur", "sigma": 2}], [small], tile=1024)
    assert max(u.col1 - u.col0 for u in plan.units) < 16


@pytest.mark.parametrize("ops,channels,out", [
    ([], 3, 3),
    ([{"op": "to_gray"}], 1, 1),
    ([{"op": "to_gray"}], 2, 1),
    ([{"op": "to_gray"}], 3, 1),
    ([{"op": "to_gray"}], 4, 1),
    ([{"op": "invert"}, {"op": "to_gray"}, {"op": "gaussian_blur", "sigma": 1}], 4, 1),
    ([{"op": "gaussian_blur", "sigma": 1}], 4, 4),
    ([{"op": "median_blur", "ksize": 3}], 2, 2),
])
def test_out_channels(ops, channels, out):
    plan, problems = plan_of(ops, [info(channels=channels)])
    assert problems == []
    assert plan.pages[0].out_channels == out


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("ksize", [7, 9])
def test_median_ksize_over_5_needs_uint8(dtype, ksize):
    ops = [{"op": "invert"}, {"op": "median_blur", "ksize": ksize}]
    _, problems = plan_of(ops, [info(0, dtype="uint8"), info(3, dtype=dtype)])
    assert len(problems) == 1, problems
    assert problems[0].startswith("page 3: ops[1] (median_blur)")
    assert f"ksize {ksize}" in problems[0] and dtype in problems[0]
    _, ok = plan_of([{"op": "median_blur", "ksize": 5}], [info(dtype=dtype)])
    assert ok == []
    _, ok = plan_of([{"op": "median_blur", "ksize": ksize}], [info(dtype="uint8")])
    assert ok == []


@pytest.mark.parametrize("dtype", ["int16", "float64", "uint32", "int8"])
def test_a_dtype_an_op_lacks_is_a_problem(dtype):
    _, problems = plan_of([{"op": "equalize_hist"}], [info(5, dtype=dtype)])
    assert len(problems) == 1, problems
    assert problems[0].startswith("page 5:") and dtype in problems[0]
    assert "equalize_hist needs uint8 pixels" in problems[0]
    # ops that take every type (docs/sample-types.md), and no ops: no problem
    for ops in ([{"op": "gaussian_blur", "sigma": 1}], []):
        _, problems = plan_of(ops, [info(5, dtype=dtype)])
        assert problems == []


def test_to_gray_with_five_channels_is_a_problem():
    _, problems = plan_of([{"op": "to_gray"}], [info(channels=5)])
    assert len(problems) == 1 and "to_gray" in problems[0]


def test_batches_capped_by_max_items(monkeypatch):
    big = info(0, height=100 * 64, width=120 * 64)  # 12,000 tiles of 64
    plan, _ = plan_of([], [big], fuse=False)
    assert plan.tiles == 12_000
    assert len(plan.batches) == 12_000 // plan_mod.TILES_PER_BATCH  # below the cap
    monkeypatch.setattr(plan_mod, "MAX_ITEMS", 1000)
    plan, _ = plan_of([], [big], fuse=False)
    assert len(plan.batches) <= 1000
    assert len(plan.batches) == 1000  # 12 tiles per batch
    assert {b.last - b.first for b in plan.batches} == {12}
    tiles = [t for b in plan.batches for t in range(b.first, b.last)]
    assert tiles == list(range(12_000))
    monkeypatch.setattr(plan_mod, "MAX_ITEMS", 7)
    plan, _ = plan_of([], [big], fuse=False)
    assert len(plan.batches) <= 7


def test_batches_keep_tiles_per_batch_below_the_cap(monkeypatch):
    plan, _ = plan_of([], [info(0, height=257, width=389)], fuse=False)  # 35 tiles
    assert [b.last - b.first for b in plan.batches] == [8, 8, 8, 8, 3]


def test_batches_capped_by_max_items_with_many_pages(monkeypatch):
    monkeypatch.setattr(plan_mod, "MAX_ITEMS", 10)
    # 4 pages of 36 tiles: 8 a batch would give 20 batches; they grow until 10 or fewer
    plan, problems = plan_of([], [info(i, height=64 * 6, width=64 * 6) for i in range(4)],
                             fuse=False)
    assert problems == []
    assert len(plan.batches) <= 10
    covered = sorted((b.page, t) for b in plan.batches for t in range(b.first, b.last))
    assert covered == [(p, t) for p in range(4) for t in range(plan.pages[p].grid.count)]


@pytest.mark.parametrize("fuse", [True, False])
def test_a_page_of_billions_of_tiles_is_refused_without_a_list_of_them(monkeypatch, fuse):
    """A header may claim a page of 2**32 - 1 pixels a side (TIFF's limit; a damaged or
    crafted file): the plan counts its units first and refuses it, instead of building
    ~10**11 of them (minutes, then out of memory, in PlanJob or `tiffpipe estimate`)."""
    made: list[int] = []
    real = plan_mod.split_units
    monkeypatch.setattr(plan_mod, "split_units", lambda *a, **k: made.append(1) or real(*a, **k))
    side = 2**32 - 1
    plan, problems = plan_of([], [info(0, height=side, width=side)], tile=1024, fuse=fuse)
    [problem] = problems
    assert "work items, more than the 10000 a run can fan out" in problem
    assert made == [] and plan.units == [] and plan.batches == []
    assert int(problem.split("needs ")[1].split(" work items")[0]) > 10**9


def test_the_unit_count_is_the_units_made():
    """split_unit_count, which the plan checks first, is what split_units makes."""
    from pipeline.core.grid import split_unit_count

    for h, w, tile, halo, bpp, rows, budget, px in [
            (257, 389, 64, 0, 1, 64, 1 << 20, 4096), (5000, 70000, 512, 9, 3, 1, 1 << 24, 1 << 26),
            (100000, 3000, 1024, 4, 6, 2048, 1 << 28, 1 << 28), (64, 64, 64, 0, 1, 64, 1, 1)]:
        grid = PageGrid(h, w, tile, halo)
        assert split_unit_count(grid, bpp, rows, budget, px) == len(
            split_units(0, grid, bpp, rows, budget, px))


def test_too_many_pages_for_one_job_is_a_problem(monkeypatch):
    monkeypatch.setattr(plan_mod, "MAX_ITEMS", 10)
    # 11 pages of one tile each need at least 11 batches: the plan says to split the job
    _, problems = plan_of([], [info(i, height=64, width=64) for i in range(11)])
    assert any("more than the 10" in p and "split it" in p for p in problems)
    # pages smaller than a tile: a larger tile cannot help, and the problem says so
    [problem] = problems
    assert "has 11 pages" in problem and "jobs of at most 10 pages" in problem, problem
    assert "raise the tile" not in problem




def test_a_problem_of_many_pages_is_told_once():
    """One problem of 90 pages alike is one line naming them, not 90 (a job's message was
    20 KB of the same refusal); other problems stay, in order of first mention."""
    of = plan_mod.Problem.of_page
    problems = ([of(i, "jpeg output needs 1 or 3 bands") for i in range(90)]
                + [plan_mod.Problem(None, "tile 100 must be a multiple of 16")]
                + [of(i, "to_gray needs gray or RGB") for i in (3, 5, 6, 7)]
                + [of(93, "jpeg output needs 1 or 3 bands")])
    assert plan_mod.grouped_by_page(problems) == [
        "pages 0-89, 93 (91 pages): jpeg output needs 1 or 3 bands",
        "tile 100 must be a multiple of 16",
        "pages 3, 5-7 (4 pages): to_gray needs gray or RGB"]
    assert plan_mod.grouped_by_page([of(2, "x")]) == ["page 2: x"]


@pytest.mark.parametrize(("ops", "tile", "out_tile", "advice"), [
    # downsample 3: tiles a multiple of 48; 48 is below the smallest tile a manifest takes
    ([{"op": "downsample", "factor": 3}], 64, 16, "use tile 96"),
    ([{"op": "downsample", "factor": 3}], 1000, 16, "use tile 960 or 1008"),
    # 1024 / 2 = 512 output pixels, not a multiple of the output tile 384 (x2: 768)
    ([{"op": "downsample", "factor": 2}], 1024, 384, "use tile 768 or 1536"),
    ([{"op": "downsample", "factor": 8}], 8064, 4096,
     "no tile from 64 to 8192 is a multiple of 32768: choose a smaller output_options.tile"),
])
def test_a_tile_that_does_not_fit_the_chain_gets_tiles_that_do(ops, tile, out_tile, advice):
    """The advice names tiles a manifest takes (64 to 8192) that fit the chain and the
    output tile, nearest either side; never one the manifest would refuse again."""
    _, problems = _spec_plan(ops, [info(height=5000, width=5000)], tile, out_tile)
    [problem] = problems
    assert advice in problem


@pytest.mark.parametrize(("size", "align", "out_step", "tile"), [
    (1024, 16, 512, 1024),  # fits already
    (1024, 48, 1536, 1536),  # downsample 3, 512 px output tiles: the next size up
    (20, 16, 16, 32),  # no lower bound (a strip of a small page)
    (8000, 16, 4096, 8192),  # the largest tile a manifest takes
    (8200, 16, 16, None),  # above it: none
])
def test_the_fitting_tile_from_a_size_up(size, align, out_step, tile):
    """One step for every place that fits a tile to a chain (the default tile, a strip page,
    the finer grid of a small page, the advice of a tile that does not fit): a multiple of
    16, of the alignment and of the output tile in input pixels."""
    step = tile_step(align, out_step)
    assert step % 16 == step % align == step % out_step == 0
    assert tile_at_least(size, step) == tile


def test_columns_still_read_bound_each_band_by_the_reads_left_in_it():
    """After each read of a downward sweep: the reads left need no column left of x above
    the next band's first row (the last band: any row); None after a band's last read."""
    def band(y0: int, y1: int) -> list[Rect]:
        return [Rect(y0, x0, y1, x0 + 40) for x0 in (0, 30, 60)]
    reads = band(0, 40) + band(30, 70) + band(60, 90)
    assert columns_still_read(reads) == [(30, 30), (60, 30), None,
                                         (30, 60), (60, 60), None,
                                         (30, 90), (60, 90), None]
    # a band's reads out of column order: the least x0 of those left
    assert columns_still_read([Rect(0, 60, 10, 90), Rect(0, 0, 10, 30),
                               Rect(0, 30, 10, 60)]) == [(0, 10), (30, 10), None]


@pytest.mark.parametrize("reads", [[Rect(30, 0, 70, 40), Rect(0, 0, 40, 40)], [],
                                   [Rect(0, 0, 1, 1)]])
def test_columns_still_read_bound_nothing_unless_the_reads_go_down(reads):
    """Reads that do not go down (a later one starts higher), none, or one: no bound."""
    assert columns_still_read(reads) == [None] * len(reads)


def test_the_pages_a_chain_fits_are_named_with_the_pages_that_run_them():
    """``pages_that_fit``: a job refused on some of its pages names the others as a
    ``pages`` list in the job's order (one page: "page 4 has ... [4] to run it"); a long
    book's list is not spelled out (a Lambda error's message would carry thousands of
    numbers); nothing when every page is refused, a problem is the job's own, or the problem
    says it already (a crop's box)."""
    fit = plan_mod.pages_that_fit
    of = plan_mod.Problem.of_page
    plate = [of(2, "ops[0] (otsu_threshold): needs 1 channel(s)")]
    assert fit(plate, [4, 2], []) == (
        'page 4 has none of these problems: give this job "pages": [4] to run it, and page 2 '
        "a job of its own with ops and output options that fit it")
    assert fit(plate + [of(5, "the same")], [5, 2, 0, 1], [7]) == (
        'pages 0-1 have none of these problems: give this job "pages": [0, 1] to run them, '
        "and pages 2, 5, 7 a job of their own with ops and output options that fit them")
    book = list(range(500))
    assert fit(plate, book, []) == (
        'pages 0-1, 3-499 have none of these problems: give this job "pages" with them (499 '
        "pages, in the job's order) to run them, and page 2 a job of its own with ops and "
        "output options that fit it")
    assert fit(plate, [2], []) == fit([], [0, 1], [2]) == ""
    assert fit(plate + [plan_mod.Problem(None, "the output would have 2 pages")], [0, 2],
               []) == ""
    crop = of(1, 'the box ...; or give this job "pages" with the pages that hold the box (0) '
              "and page 1 a job of its own", tells_pages=True)
    assert fit([crop], [0, 1], []) == ""


def test_a_problem_is_of_the_page_it_carries_not_of_one_its_words_name():
    """A plan's problems carry their page (``Problem.page``): ``pages_that_fit`` and
    ``grouped_by_page`` read it, never a page number back out of the message. A problem of
    page 1 whose message begins by naming page 3 makes page 1 the one to leave out; one of
    the job's own whose message begins "page 3: " is no page's (no advice, told alone);
    and only the field, not the words, says a message names the pages to keep already."""
    fit, Problem = plan_mod.pages_that_fit, plan_mod.Problem
    mask = Problem(1, "page 3: its transparency mask, page 1, is refused")
    assert fit([mask], [1, 2, 3], []) == (
        'pages 2-3 have none of these problems: give this job "pages": [2, 3] to run them, '
        "and page 1 a job of its own with ops and output options that fit it")
    own = Problem(None, "page 3: x")
    assert fit([own], [1, 2, 3], []) == ""
    assert plan_mod.grouped_by_page(
        [Problem.of_page(0, "x"), own, Problem.of_page(2, "x"), mask]) == [
        "pages 0, 2 (2 pages): x", "page 3: x", "page 3: its transparency mask, page 1, is refused"]
    worded = Problem.of_page(2, 'ops[0] (custom): give this job "pages" a look')
    assert fit([worded], [0, 2], []).startswith("page 0 has none of these problems")
    assert fit([dataclasses.replace(worded, tells_pages=True)], [0, 2], []) == ""


def test_a_problem_record_is_its_message_with_its_page():
    """``Problem.of_page`` tells "page N: what"; ``what`` is the message without that head
    (None for the job's own, and for a page's error in its own words); ``str`` is the
    message as told; a problem cannot be changed once made."""
    Problem = plan_mod.Problem
    page = Problem.of_page(4, "needs 1 channel(s)")
    assert (page.page, page.text, page.what, str(page)) == (
        4, "page 4: needs 1 channel(s)", "needs 1 channel(s)", "page 4: needs 1 channel(s)")
    assert Problem(7, "page 7 asked for, the file has 2 page(s)").what is None
    assert Problem(None, "tile 100 must be a multiple of 16").what is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        page.page = 5  # type: ignore[misc]


def test_the_page_that_misses_a_crop_box_is_told_with_the_pages_that_hold_it():
    """A crop box some pages hold: the page that misses it gets the advice (the last of its
    crop problems, marked ``tells_pages``) and ``pages_that_fit`` adds none; with no page
    holding the box, nothing is marked and no page fits either."""
    crop = [{"op": "crop", "x": 0, "y": 0, "width": 300, "height": 200}]
    _, problems = make_plan(7, JobSpec(input="/in.tif", output="/out.tif", ops=crop, tile=64),
                            [info(0, 257, 389), info(1, 100, 100)], "/work/jobs/00007", 123.0)
    [problem] = problems
    assert problem.page == 1 and problem.tells_pages
    assert problem.text.startswith("page 1: ops[0] (crop): the box does not fit the page")
    assert problem.text.endswith('or give this job "pages" with the pages that hold the box '
                                 "(0) and page 1 a job of its own")
    assert plan_mod.pages_that_fit(problems, [0, 1], []) == ""
    _, problems = plan_of(crop, [info(0, 100, 100), info(1, 90, 90)])
    assert len(problems) == 2 and not any("give this job" in p for p in problems)


@pytest.mark.parametrize(("ops", "walked"), [
    ([], (None, "keeps")),
    ([{"op": "invert"}, {"op": "rotate", "angle": 90}], (None, "keeps")),
    ([{"op": "threshold", "value": 127}, {"op": "rotate", "angle": 180}], (0, "makes")),
    ([{"op": "gaussian_blur", "sigma": 2}, {"op": "invert"}], (0, "grays")),
    ([{"op": "gaussian_blur", "sigma": 2}, {"op": "otsu_threshold"}], (1, "makes")),
    ([{"op": "threshold", "value": 127}, {"op": "downsample", "factor": 2}], (1, "grays")),
    ([{"op": "threshold", "value": 127}, {"op": "convert", "dtype": "uint8"}], (1, "")),
])
def test_a_chain_makes_of_black_and_white_what_its_last_op_that_keeps_none_makes(ops, walked):
    """``chain_binary``, the one backward walk over ``Op.binary`` (``chain_grays``,
    ``auto_one_bit`` and ``one_bit_note`` read it): the index and kind of the last op that
    does not keep black and white, (None, "keeps") when every op keeps them."""
    chain = chain_from_json(ops)
    assert chain_binary(chain) == walked
    assert chain_grays(chain) == (walked[0] if walked[1] == "grays" else None)


@pytest.mark.parametrize(("bilevel", "ops", "ones"), [
    (True, [], [True, True]),
    (False, [], [False, False]),
    ("auto", [], [True, False]),  # (the 1-bit page as it is, the gray one)
    ("auto", [{"op": "threshold", "value": 127}], [True, True]),
    ("auto", [{"op": "gaussian_blur", "sigma": 2}], [False, False]),
])
def test_every_page_plan_says_whether_it_is_written_one_bit(tmp_path, bilevel, ops, ones):
    """``PagePlan.one_bit`` holds for every job, not only for ``bilevel`` "auto": each page
    of a true job, none of a false one's, "auto"'s by its page and chain; it is what
    ``one_bit_pages`` and ``page_options`` read, and plan.json keeps it."""
    from pipeline.core.models import OutputOptions
    from pipeline.steps.planning import read_plan

    src = tmp_path / "book.tif"
    text = np.zeros((40, 56), bool)
    text[10:30, 8:48] = True
    with tifffile.TiffWriter(src) as tw:
        tw.write(text, photometric="minisblack")
        tw.write(np.arange(40 * 56, dtype=np.uint8).reshape(40, 56), photometric="minisblack")
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=ops,
                   output_options=OutputOptions(bilevel=bilevel))
    plan, problems = read_plan(0, spec, str(tmp_path / "w"), 0.0)
    assert problems == []
    assert [page.one_bit for page in plan.pages] == plan_mod.one_bit_pages(plan) == ones
    assert [plan_mod.page_options(spec, page).bilevel for page in plan.pages] == ones
    assert [page.one_bit for page in JobPlan.from_json(plan.to_json()).pages] == ones
