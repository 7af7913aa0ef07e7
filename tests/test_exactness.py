"""The core promise: the tiled path (split -> process -> merge) is BIT-IDENTICAL to one OpenCV
call on the whole page.

Every test runs the real steps in-process (no engine): a real TIFF is written with tifffile,
planned with make_plan + read_infos, split, processed and merged; the output TIFF is read
back with tifffile and compared with ``np.array_equal`` to the op chain applied to the whole
page with plain OpenCV/numpy calls written out below (``reference``), never with pipeline's
own ``apply_chain``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from pipeline.adapters.storage import write_json
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import plan as plan_mod
from pipeline.core.chain import stats_rounds
from pipeline.core.events import (
    BatchEvent,
    MergeEvent,
    NodeEvent,
    ReduceEvent,
    StatsEvent,
    UnitEvent,
)
from pipeline.core.grid import PageGrid
from pipeline.core.models import JobPlan, JobSpec, OutputOptions
from pipeline.core.ops import chain_from_json, chain_halo
from pipeline.steps import layout
from pipeline.steps.canny_reduce import reduce_node
from pipeline.steps.common import forget_plans
from pipeline.steps.merge import merge
from pipeline.steps.process import process, process_unit
from pipeline.steps.split import split
from pipeline.steps.stats import reduce_stats, stats

TAGS = {"none": 1, "lzw": 5, "jpeg": 7, "deflate": 8, "zstd": 50000}

# --- the reference: the op chain on the whole page, written out with OpenCV -------------


def _top(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def _planes(img: np.ndarray) -> list[np.ndarray]:
    return [img] if img.ndim == 2 else [np.ascontiguousarray(img[:, :, c])
                                         for c in range(img.shape[2])]


def _stack(planes: list[np.ndarray]) -> np.ndarray:
    return planes[0] if len(planes) == 1 else np.dstack(planes)


def ref_op(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    name, dtype = p["op"], img.dtype
    if name == "gaussian_blur":
        return cv2.GaussianBlur(img, (0, 0), p["sigma"])
    if name == "median_blur":  # a median is per channel by definition
        return _stack([cv2.medianBlur(c, p["ksize"]) for c in _planes(img)])
    if name in ("dilate", "erode"):
        k = p.get("ksize", 3)
        func = cv2.dilate if name == "dilate" else cv2.erode
        return func(img, np.ones((k, k), np.uint8), iterations=p.get("iterations", 1))
    if name == "unsharp_mask":
        a = p.get("amount", 1.0)
        return cv2.addWeighted(img, 1 + a, cv2.GaussianBlur(img, (0, 0), p["sigma"]), -a, 0)
    if name == "invert":
        if dtype.kind == "f":
            return np.float32(1.0) - img
        return (np.iinfo(dtype).max - img).astype(dtype)
    if name == "gamma":
        if dtype.kind == "f":
            return np.power(np.clip(img, 0, None), np.float32(1.0 / p["gamma"]))
        top = _top(dtype)
        return np.clip(np.rint(top * (img / top) ** (1.0 / p["gamma"])), 0, top).astype(dtype)
    if name == "threshold":
        return cv2.threshold(img, p["value"], _top(dtype), cv2.THRESH_BINARY)[1]
    if name == "to_gray":
        ch = 1 if img.ndim == 2 else img.shape[2]
        if ch == 1:
            return img
        if ch == 2:
            return np.ascontiguousarray(img[:, :, 0])
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if ch == 3 else cv2.COLOR_RGBA2GRAY)
    raise AssertionError(f"no reference for {name}")


def reference(page: np.ndarray, ops: list[dict[str, Any]],
              ref: Callable[[np.ndarray, dict[str, Any]], np.ndarray] | None = None
              ) -> np.ndarray:
    """The chain on the whole page, op by op with ``ref`` (default :func:`ref_op`)."""
    img = np.ascontiguousarray(page)
    for p in ops:
        img = (ref or ref_op)(img, p)
        assert img.dtype == page.dtype
    return img


# --- test images --------------------------------------------------------------------


def make_image(seed: int, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """Noise + gradients + waves + random flat rectangles (some black, some white)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(channels):
        img = (0.4 * yy / height + 0.3 * xx / width
               + 0.12 * np.sin(xx / (5.0 + 3 * c)) * np.cos(yy / 9.0)
               + rng.normal(0.0, 0.08, (height, width)))
        for _ in range(10):
            y0, x0 = rng.integers(0, height), rng.integers(0, width)
            y1 = y0 + rng.integers(1, max(2, height // 3))
            x1 = x0 + rng.integers(1, max(2, width // 3))
            img[y0:y1, x0:x1] = rng.choice([0.0, 1.0, rng.random()])
        planes.append(img)
    img = np.stack(planes, axis=-1) if channels > 1 else planes[0]
    if dtype == "float32":
        return (img * 1.2 - 0.1).astype(np.float32)  # some values outside [0, 1]
    top = np.iinfo(dtype).max
    return np.clip(np.rint(img * top), 0, top).astype(dtype)


def write_tiff(path: Path, pages: list[np.ndarray], *, tiled: bool, separate: bool = False,
               compression: str = "zstd", rowsperstrip: int | None = 16,
               tile: tuple[int, int] = (32, 48), predictor: bool = False,
               bigtiff: bool = False, byteorder: str = "<") -> None:
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder=byteorder) as tw:
        for page in pages:
            ch = 1 if page.ndim == 2 else page.shape[2]
            kwargs: dict[str, Any] = {
                "photometric": "rgb" if ch >= 3 else "minisblack", "metadata": None,
                "compression": None if compression == "none" else compression,
            }
            if predictor:
                kwargs["predictor"] = True
            data = page
            if ch > 1:
                kwargs["planarconfig"] = "separate" if separate else "contig"
                if separate:
                    data = np.ascontiguousarray(np.moveaxis(page, -1, 0))
            if ch in (2, 4):  # gray + alpha, RGBA (2 bands of ExtraSamples 0: to_gray refuses)
                kwargs["extrasamples"] = ["unassalpha"]
            if tiled:
                kwargs["tile"] = tile
            else:
                kwargs["rowsperstrip"] = rowsperstrip or page.shape[0]
            tw.write(data, **kwargs)


def read_page(path: Path, index: int) -> np.ndarray:
    """A page as (h, w) or (h, w, samples), whatever its planar configuration."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[index]
        data = page.asarray()
        if page.planarconfig == 2 and page.samplesperpixel > 1:
            data = np.moveaxis(data, 0, -1)
        return data


# --- the real tiled path, in-process ------------------------------------------------

_runs = itertools.count()


def run_tiled(tmp_path: Path, src: Path, ops: list[dict[str, Any]], tile: int, out_tile: int, *,
              pages: list[int] | None = None, compression: str = "zstd",
              units: str | None = None, tiles_per_batch: int | None = None,
              max_items: int | None = None, halo: int | None = None,
              fuse: bool = True, **output: Any) -> tuple[list[np.ndarray], JobPlan]:
    """Plan, split every unit, process every batch and merge (or, for a fused plan, process
    every unit and merge); return the output's pages.

    ``units`` shrinks the split budgets: "tiny" gives one tile per unit (one tile row for
    stripped inputs), "small" about 2 x 2 tiles (2 tile rows of the page's width if stripped).
    ``halo`` overrides the plan's halo. ``fuse``: the job's ``fuse`` field. ``output``: more
    output options (``ome=True``).
    """
    n = next(_runs)
    work = str(tmp_path / f"work{n}")
    out = tmp_path / f"out{n}.tif"
    spec = JobSpec(input=str(src), output=str(out), pages=pages, ops=ops, tile=tile,
                   output_options=OutputOptions(compression=compression, tile=out_tile,
                                                **output),
                   fuse=fuse)
    infos = read_infos(str(src), pages)
    with pytest.MonkeyPatch.context() as mp:
        if units == "tiny":
            mp.setattr(plan_mod, "SPLIT_CACHE_BUDGET", 1)
            mp.setattr(plan_mod, "SPLIT_UNIT_PIXELS", 1)
            mp.setattr(plan_mod, "FUSED_UNIT_PIXELS", 1)
        elif units == "small":
            first = infos[0]
            h = max(chain_halo(chain_from_json(ops), np.dtype(i.dtype)) for i in infos)
            bpp = np.dtype(first.dtype).itemsize * first.channels
            per_col = (tile + 2 * h + first.segment_rows) * (tile + 2 * h) * bpp
            mp.setattr(plan_mod, "SPLIT_CACHE_BUDGET", 2 * per_col)
            width = min(2 * tile, first.width) if first.tiled else first.width
            mp.setattr(plan_mod, "SPLIT_UNIT_PIXELS", 2 * tile * width)
            mp.setattr(plan_mod, "FUSED_UNIT_PIXELS", 2 * tile * width)
        if tiles_per_batch is not None:
            mp.setattr(plan_mod, "TILES_PER_BATCH", tiles_per_batch)
        if max_items is not None:
            mp.setattr(plan_mod, "MAX_ITEMS", max_items)
        plan, problems = plan_mod.make_plan(0, spec, infos, work, time.time())
    assert problems == []
    if halo is not None:
        plan = dataclasses.replace(plan, halo=halo, pages=[
            dataclasses.replace(p, grid=dataclasses.replace(p.grid, halo=halo))
            for p in plan.pages])
    plan_url = layout.plan_file(work)
    write_json(plan_url, plan.to_json())
    forget_plans()
    if plan.fused:
        for i in range(len(plan.units)):
            process_unit(UnitEvent(plan_url, i))
    for i in range(0 if plan.fused else len(plan.units)):
        split(UnitEvent(plan_url, i))
    for r in range(stats_rounds(plan)):  # statistics rounds: ops that need the whole page
        for k in range(len(plan.batches)):
            stats(StatsEvent(plan_url, k, r))
        reply = reduce_stats(ReduceEvent(plan_url, r))
        while reply["tree"]:  # a canny round's reduce tree: a level's nodes, then the next
            for node in reply["nodes"]:
                reduce_node(NodeEvent(plan_url, r, reply["bound"], node))
            reply = reduce_stats(ReduceEvent(plan_url, r, reply["level"], reply["bound"]))
    for k in range(len(plan.batches)):
        process(BatchEvent(plan_url, k))
    merge(MergeEvent(plan_url))
    forget_plans()
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == len(plan.pages)
        result = []
        for tp, pp in zip(tf.pages, plan.pages, strict=True):
            assert tp.is_tiled and (tp.tilelength, tp.tilewidth) == (out_tile, out_tile)
            assert int(tp.compression) == TAGS[compression]
            result.append(tp.asarray())
    return result, plan


def assert_identical(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if not np.array_equal(got, want):
        diff = got.astype(np.float64) != want.astype(np.float64)
        ys, xs = np.nonzero(diff.reshape(diff.shape[0], diff.shape[1], -1).any(axis=2))
        raise AssertionError(f"{what}: {diff.sum()} differing values, first at "
                             f"(y={ys[0]}, x={xs[0]}); rows {ys.min()}..{ys.max()}, "
                             f"cols {xs.min()}..{xs.max()}")


# --- the matrix -----------------------------------------------------------------------

G = {"op": "gaussian_blur"}

#: (ops, dtype, channels)
OP_CASES: list[tuple[list[dict[str, Any]], str, int]] = [
    *[([{**G, "sigma": s}], dt, ch) for s, dt, ch in [
        (0.8, "uint8", 1), (2.5, "uint8", 3), (6, "uint8", 1),
        (0.8, "uint16", 3), (2.5, "uint16", 1), (6, "uint16", 3),
        (0.8, "float32", 1), (2.5, "float32", 3), (6, "float32", 1),
        (2.5, "uint8", 4), (2.5, "uint16", 2)]],
    *[([{"op": "median_blur", "ksize": k}], dt, ch) for k, dt, ch in [
        (3, "uint8", 3), (5, "uint8", 1), (7, "uint8", 3), (9, "uint8", 1),
        (3, "uint16", 1), (5, "uint16", 3), (5, "uint8", 2), (3, "uint16", 4),
        (5, "float32", 1)]],
    *[([{"op": op, "ksize": k, "iterations": it}], "uint8", 1 + 2 * ((k + it) % 2))
      for op in ("dilate", "erode") for k in (3, 4, 5) for it in (1, 2)],
    ([{"op": "dilate", "ksize": 4, "iterations": 2}], "uint16", 3),
    ([{"op": "erode", "ksize": 5, "iterations": 1}], "uint16", 1),
    ([{"op": "dilate", "ksize": 3, "iterations": 2}], "float32", 1),
    *[([{"op": "unsharp_mask", "sigma": 1.5, "amount": 0.7}], dt, ch) for dt, ch in [
        ("uint8", 3), ("uint16", 1), ("float32", 3)]],
    ([{"op": "unsharp_mask", "sigma": 3}], "uint8", 1),
    *[([{"op": "invert"}], dt, ch) for dt, ch in [
        ("uint8", 1), ("uint16", 3), ("float32", 3), ("float32", 1)]],
    *[([{"op": "gamma", "gamma": g}], dt, ch) for g, dt, ch in [
        (0.5, "uint8", 3), (2.2, "uint8", 1), (0.5, "uint16", 1), (2.2, "uint16", 3),
        (0.5, "float32", 1), (2.2, "float32", 3)]],
    *[([{"op": "threshold", "value": v}], dt, ch) for v, dt, ch in [
        (100, "uint8", 1), (30000, "uint16", 3), (0.5, "float32", 1), (128, "uint8", 2)]],
    *[([{"op": "to_gray"}], dt, ch) for dt, ch in [
        ("uint8", 3), ("uint8", 4), ("uint16", 3), ("uint16", 4), ("float32", 3),
        ("uint8", 2)]],
    # chains: halos add up
    *[([{**G, "sigma": 1.2}, {"op": "dilate", "ksize": 3}, {"op": "unsharp_mask", "sigma": 1}],
       dt, ch) for dt, ch in [("uint8", 3), ("uint16", 1), ("float32", 1)]],
    *[([{"op": "median_blur", "ksize": 3}, {"op": "erode", "ksize": 5, "iterations": 2},
        {"op": "gamma", "gamma": 2.2}], dt, ch) for dt, ch in [("uint8", 1), ("uint16", 3)]],
    *[([{"op": "to_gray"}, {**G, "sigma": 2.5}, {"op": "threshold", "value": v}], dt, ch)
      for v, dt, ch in [(120, "uint8", 4), (20000, "uint16", 3)]],
    ([{"op": "invert"}, {**G, "sigma": 6}, {**G, "sigma": 6}], "uint8", 3),
    ([{"op": "unsharp_mask", "sigma": 2}, {"op": "median_blur", "ksize": 5},
      {"op": "dilate", "ksize": 4, "iterations": 2}], "uint16", 1),
]

#: (id, (height, width), T, OT, input layout)
GEOMS = [
    ("257x389-T64-OT64-strips16", (257, 389), 64, 64, {"tiled": False, "rowsperstrip": 16}),
    ("1000x333-T128-OT64-tiles32x48", (1000, 333), 128, 64, {"tiled": True, "tile": (32, 48)}),
    ("64x1500-T192-OT64-strips7", (64, 1500), 192, 64, {"tiled": False, "rowsperstrip": 7}),
    ("257x389-T192-OT192-tiles64", (257, 389), 192, 192, {"tiled": True, "tile": (64, 64)}),
    ("389x257-T128-OT128-onestrip", (389, 257), 128, 128, {"tiled": False,
                                                           "rowsperstrip": None}),
    ("333x1000-T64-OT64-tiles16x64", (333, 1000), 64, 64, {"tiled": True, "tile": (16, 64)}),
    ("211x300-T64-OT16-tiles16", (211, 300), 64, 16, {"tiled": True, "tile": (16, 16)}),
    ("300x211-T128-OT32-strips3", (300, 211), 128, 32, {"tiled": False, "rowsperstrip": 3}),
]
IN_COMPRESSIONS = ["zstd", "none", "deflate", "lzw", "packbits"]
OUT_COMPRESSIONS = ["zstd", "deflate", "lzw", "none"]


def _name(ops: list[dict[str, Any]]) -> str:
    return "+".join(o["op"] + "".join(f"-{k}{v}" for k, v in o.items() if k != "op")
                    for o in ops)


def _matrix():
    """Each op case twice, on different geometries, layouts and codecs (not a full product)."""
    n = len(OP_CASES)
    for i, (ops, dtype, ch) in itertools.chain(enumerate(OP_CASES),
                                               enumerate(OP_CASES, start=n + 3)):
        gid, shape, tile, out_tile, layout_ = GEOMS[i % len(GEOMS)]
        separate = ch > 1 and (i // 2) % 2 == 1
        budget = ("tiny", "small")[(i // 3) % 2] if i % 3 == 0 else None
        opts = {
            "layout": {**layout_, "separate": separate,
                       "compression": IN_COMPRESSIONS[i % len(IN_COMPRESSIONS)],
                       "predictor": i % 4 == 1 and IN_COMPRESSIONS[i % 5] in ("zstd", "deflate")},
            "out": OUT_COMPRESSIONS[i % len(OUT_COMPRESSIONS)],
            "budget": budget, "per_batch": 3 if budget else None,
        }
        cid = (f"{_name(ops)}-{dtype}-c{ch}-{gid}{'-separate' if separate else ''}"
               f"{f'-{budget}units' if budget else ''}-{opts['out']}")
        yield pytest.param(ops, dtype, ch, shape, tile, out_tile, opts, id=cid)


@pytest.mark.parametrize("ops,dtype,channels,shape,tile,out_tile,opts", list(_matrix()))
def test_tiled_equals_whole_page(tmp_path, ops, dtype, channels, shape, tile, out_tile, opts):
    seed = sum(map(ord, f"{_name(ops)}{dtype}{channels}{shape}"))
    page = make_image(seed, *shape, channels, dtype)
    src = tmp_path / "in.tif"
    write_tiff(src, [page], **opts["layout"])
    assert np.array_equal(read_page(src, 0), page)  # the input is lossless
    (got,), plan = run_tiled(tmp_path, src, ops, tile, out_tile, compression=opts["out"],
                             units=opts["budget"], tiles_per_batch=opts["per_batch"])
    if opts["budget"] and (plan.pages[0].grid.rows > 1 or plan.pages[0].info.tiled):
        assert len(plan.units) > 1
    assert_identical(got, reference(page, ops), _name(ops))


# --- multi-page inputs ----------------------------------------------------------------

MULTI_SHAPES = [((257, 389), 3), ((64, 150), 1), ((130, 77), 4)]


@pytest.mark.parametrize("dtype,tiled,separate,select", [
    ("uint8", True, False, None),
    ("uint8", False, True, [2, 0]),
    ("uint16", True, True, [1]),
    ("uint16", False, False, [2, 1, 0]),
    ("float32", True, False, [0, 2]),
])
def test_multi_page(tmp_path, dtype, tiled, separate, select):
    ops = [{**G, "sigma": 2.5}, {"op": "dilate", "ksize": 3, "iterations": 2}]
    pages = [make_image(10 + i, *shape, ch, dtype) for i, (shape, ch) in enumerate(MULTI_SHAPES)]
    src = tmp_path / "multi.tif"
    write_tiff(src, pages, tiled=tiled, separate=separate, rowsperstrip=24, tile=(32, 32),
               compression="zstd")
    got, plan = run_tiled(tmp_path, src, ops, 64, 64, pages=select, units="small",
                          tiles_per_batch=5)
    wanted = list(range(3)) if select is None else select
    assert [p.info.index for p in plan.pages] == wanted
    assert len(got) == len(wanted)
    for out, index in zip(got, wanted, strict=True):
        assert_identical(out, reference(pages[index], ops), f"page {index}")


def test_multi_page_to_gray_changes_channels_per_page(tmp_path):
    ops = [{"op": "to_gray"}, {"op": "median_blur", "ksize": 5}]
    pages = [make_image(20 + i, *shape, ch, "uint8") for i, (shape, ch) in enumerate(MULTI_SHAPES)]
    src = tmp_path / "multi.tif"
    write_tiff(src, pages, tiled=True, tile=(16, 16))
    got, plan = run_tiled(tmp_path, src, ops, 128, 64, compression="lzw")
    assert [p.out_channels for p in plan.pages] == [1, 1, 1]
    for i, out in enumerate(got):
        assert_identical(out, reference(pages[i], ops), f"page {i}")


# --- other layouts and plan shapes -----------------------------------------------------


def test_bigtiff_input_and_many_batches(tmp_path):
    ops = [{"op": "unsharp_mask", "sigma": 2.5, "amount": 1.5}]
    page = make_image(3, 300, 211, 3, "uint8")
    src = tmp_path / "big.tif"
    write_tiff(src, [page], tiled=True, separate=True, tile=(48, 32), bigtiff=True)
    # MAX_ITEMS forces more tiles per batch than TILES_PER_BATCH
    got, plan = run_tiled(tmp_path, src, ops, 64, 64, max_items=3)
    assert len(plan.batches) <= 3 < plan.tiles
    assert_identical(got[0], reference(page, ops))


@pytest.mark.parametrize("layout_,units", [
    ({"tiled": False, "rowsperstrip": 7, "compression": "none"}, None),
    ({"tiled": False, "rowsperstrip": 7, "compression": "none"}, "tiny"),
    ({"tiled": False, "rowsperstrip": 100, "compression": "zstd"}, "small"),
    ({"tiled": True, "tile": (16, 16), "compression": "zstd"}, None),
    ({"tiled": True, "tile": (16, 16), "compression": "zstd"}, "small"),
    ({"tiled": True, "tile": (128, 128), "compression": "lzw"}, "tiny"),
])
def test_halo_larger_than_the_tile(tmp_path, layout_, units):
    """A halo of 80 px around 64 px tiles: the split's segment cache must keep rows that
    several tile rows above still need."""
    ops = [{**G, "sigma": 12}, {**G, "sigma": 12}]  # uint8: 2 x 36 -> 80
    page = make_image(11, 333, 250, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], **layout_)
    got, plan = run_tiled(tmp_path, src, ops, 64, 32, units=units)
    assert plan.halo == 80
    assert plan.halo > plan.pages[0].grid.tile
    assert_identical(got[0], reference(page, ops))


@pytest.mark.parametrize("dtype,tiled", [("uint16", False), ("float32", True),
                                         ("uint16", True)])
def test_big_endian_input(tmp_path, dtype, tiled):
    ops = [{"op": "unsharp_mask", "sigma": 1.5}, {"op": "dilate", "ksize": 3}]
    page = make_image(12, 257, 389, 3, dtype)
    src = tmp_path / "be.tif"
    write_tiff(src, [page], tiled=tiled, rowsperstrip=11, byteorder=">",
               compression="none" if not tiled else "deflate", separate=tiled)
    got, _ = run_tiled(tmp_path, src, ops, 128, 64, units="small")
    assert_identical(got[0], reference(page, ops))


#: how tifffile itself would write each output compression (defaults of OutputOptions)
TIFFFILE_WRITE = {
    "zstd": {"compression": "zstd", "predictor": True, "compressionargs": {"level": 3}},
    "deflate": {"compression": "zlib", "predictor": True, "compressionargs": {"level": 6}},
    "lzw": {"compression": "lzw", "predictor": True},
    "none": {},
    "jpeg": {"compression": "jpeg", "compressionargs": {"level": 90}},
}


@pytest.mark.parametrize("dtype,channels,compression", [
    ("uint8", 3, "jpeg"), ("uint8", 1, "jpeg"), ("uint8", 3, "zstd"), ("uint16", 1, "deflate"),
    ("float32", 3, "lzw"), ("uint16", 4, "none"), ("float32", 1, "zstd"), ("uint8", 2, "lzw"),
])
def test_output_tiles_are_what_tifffile_writes(tmp_path, dtype, channels, compression):
    """Each encoded output tile is byte-identical to tifffile encoding the whole-page result
    (so JPEG output, too, is exactly the whole page's, and edge tiles are padded the same)."""
    ops = [{**G, "sigma": 1.5}]
    page = make_image(13, 200, 150, channels, dtype)
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True)
    got, _ = run_tiled(tmp_path, src, ops, 64, 32, compression=compression)
    want = reference(page, ops)
    kwargs = copy.deepcopy(TIFFFILE_WRITE[compression])  # tifffile edits compressionargs
    # (tifffile writes RGB JPEG as YCbCr with 2x2 subsampling by default)
    kwargs["photometric"] = "rgb" if channels >= 3 else "minisblack"
    if channels == 4:
        kwargs["extrasamples"] = ["unassalpha"]
    if channels == 2:
        kwargs["planarconfig"] = "contig"
    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, want, tile=(32, 32), metadata=None, **kwargs)
    out = next(p for p in tmp_path.glob("out*.tif"))
    data_out, data_ref = out.read_bytes(), ref.read_bytes()
    with tifffile.TiffFile(out) as a, tifffile.TiffFile(ref) as b:
        pa, pb = a.pages[0], b.pages[0]
        assert (pa.photometric, pa.compression, pa.predictor, pa.shape) == (
            pb.photometric, pb.compression, pb.predictor, pb.shape)
        assert len(pa.dataoffsets) == len(pb.dataoffsets)
        for i, (oa, na, ob, nb) in enumerate(zip(pa.dataoffsets, pa.databytecounts,
                                                 pb.dataoffsets, pb.databytecounts,
                                                 strict=True)):
            assert data_out[oa:oa + na] == data_ref[ob:ob + nb], f"tile {i} differs"
        assert np.array_equal(pa.asarray(), pb.asarray())
    if compression != "jpeg":
        assert_identical(got[0], want)


def test_tile_as_large_as_the_page(tmp_path):
    ops = [{**G, "sigma": 2.5}]
    page = make_image(4, 100, 90, 1, "uint16")
    src = tmp_path / "small.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=10)
    got, plan = run_tiled(tmp_path, src, ops, 128, 64)
    assert plan.tiles == 1
    assert_identical(got[0], reference(page, ops))


def test_no_ops_copies_the_page(tmp_path):
    page = make_image(5, 257, 389, 3, "uint16")
    src = tmp_path / "copy.tif"
    write_tiff(src, [page], tiled=True, compression="lzw")
    got, plan = run_tiled(tmp_path, src, [], 64, 64, compression="deflate")
    assert plan.halo == 0
    assert_identical(got[0], page)


# --- the tests are sensitive: too small a halo is NOT identical -------------------------


def test_without_halo_gaussian_blur_is_not_identical(tmp_path):
    ops = [{**G, "sigma": 2.5}]
    page = make_image(6, 257, 389, 1, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True)
    want = reference(page, ops)
    got, plan = run_tiled(tmp_path, src, ops, 64, 64)
    assert plan.halo == 16
    assert_identical(got[0], want)
    got, plan = run_tiled(tmp_path, src, ops, 64, 64, halo=0)
    assert plan.pages[0].grid.halo == 0
    assert not np.array_equal(got[0], want)
    # the differences are near the inner tile borders only
    diff = got[0] != want
    ys, xs = np.nonzero(diff)
    near = np.minimum(np.abs(ys - np.rint(ys / 64) * 64), np.abs(xs - np.rint(xs / 64) * 64))
    assert near.max() <= 8 and diff.sum() > 100


def _manual_tiled(page: np.ndarray, grid: PageGrid, func) -> np.ndarray:
    """Per-tile processing by hand: haloed crop, func, core crop, paste."""
    out = np.zeros_like(page)
    for i in range(grid.count):
        r, c = grid.position(i)
        h, core = grid.haloed(r, c), grid.core(r, c)
        res = func(np.ascontiguousarray(page[h.y0:h.y1, h.x0:h.x1]))
        rel = core.relative_to(h)
        out[core.y0:core.y1, core.x0:core.x1] = res[rel.y0:rel.y1, rel.x0:rel.x1]
    return out


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_manual_crops_need_the_halo(dtype):
    page = make_image(7, 257, 389, 3, dtype)
    want = cv2.GaussianBlur(page, (0, 0), 2.5)
    radius = 8 if dtype == "uint8" else 10  # ksize round(2.5 * (3 or 4) * 2 + 1) | 1
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), 2.5)
    for short in (0, 1, radius // 2):
        assert not np.array_equal(_manual_tiled(page, PageGrid(257, 389, 64, short), blur), want)
    assert np.array_equal(_manual_tiled(page, PageGrid(257, 389, 64, 16), blur), want)
    assert np.array_equal(_manual_tiled(page, PageGrid(257, 389, 64, 32), blur), want)


#: ops and their exact (unaligned) halos, and whether halo - 1 must fail (None: need not; for
#: uint8 Gaussians OpenCV's fixed-point kernel may round its outermost taps to 0, so one pixel
#: less can still be exact).
TIGHT = [
    ([{**G, "sigma": 0.8}], 2, True), ([{**G, "sigma": 2.5}], 8, None),
    ([{**G, "sigma": 6}], 18, None),
    ([{"op": "median_blur", "ksize": 5}], 2, True), ([{"op": "median_blur", "ksize": 9}], 4, True),
    ([{"op": "dilate", "ksize": 4, "iterations": 2}], 4, True),
    ([{"op": "erode", "ksize": 5, "iterations": 2}], 4, True),
    ([{"op": "dilate", "ksize": 3}], 1, True),
    ([{"op": "erode", "ksize": 4}], 2, True),
    ([{"op": "unsharp_mask", "sigma": 2.5}], 8, None),
    ([{**G, "sigma": 1.2}, {"op": "dilate", "ksize": 3}, {"op": "unsharp_mask", "sigma": 1}],
     3 + 1 + 3, None),
    ([{"op": "median_blur", "ksize": 3}, {"op": "dilate", "ksize": 5, "iterations": 3}],
     1 + 6, True),
]


@pytest.mark.parametrize("ops,halo,short_fails", TIGHT, ids=[_name(o) for o, _, _ in TIGHT])
def test_exact_unaligned_halo_suffices_for_uint8(ops, halo, short_fails):
    """The op halos are the OpenCV radii: rounding up to 16 hides no undercount."""
    assert chain_halo(chain_from_json(ops), np.dtype("uint8")) == -(-halo // 16) * 16
    page = make_image(8, 200, 190, 1, "uint8")
    want = reference(page, ops)
    ours = lambda a: reference(a, ops)
    assert np.array_equal(_manual_tiled(page, PageGrid(200, 190, 48, halo), ours), want)
    if short_fails is not None:
        short = np.array_equal(_manual_tiled(page, PageGrid(200, 190, 48, halo - 1), ours), want)
        assert short is not short_fails
    assert not np.array_equal(_manual_tiled(page, PageGrid(200, 190, 48, 0), ours), want)


def test_pipeline_with_tight_unaligned_halo(tmp_path):
    """The real path with a plan whose halo is the exact radius (not rounded up)."""
    ops = [{"op": "median_blur", "ksize": 5}, {"op": "dilate", "ksize": 3, "iterations": 2}]
    page = make_image(9, 257, 389, 3, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=5)
    want = reference(page, ops)
    got, _ = run_tiled(tmp_path, src, ops, 64, 64, halo=4)  # 2 + 2
    assert_identical(got[0], want)
    got, _ = run_tiled(tmp_path, src, ops, 64, 64, halo=3)
    assert not np.array_equal(got[0], want)
