"""Ops that need the whole page (equalize_hist, otsu_threshold, normalize, percentile_stretch,
canny), clahe and downsample: the tiled path (split -> statistics rounds -> process -> merge,
in-process through ``run_tiled``) is BIT-IDENTICAL to the OpenCV call (or the stated numpy
formula) on the whole page, on odd page sizes and tile sizes that do not divide the page.

The references are written out below with plain OpenCV/numpy calls, never with pipeline's own
functions. The formulas pipeline.core.stats replicates are also checked directly against
OpenCV on many random images (cheap, so the rare rounding cases are covered).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from sample_types_ref import reference as typed_reference
from test_exactness import (
    _manual_tiled,
    assert_identical,
    make_image,
    read_page,
    ref_op,
    run_tiled,
    write_tiff,
)
from test_exactness import reference as exact_reference

from pipeline import cli
from pipeline.adapters.tiff_read import read_infos
from pipeline.core import canny as canny_mod
from pipeline.core import op_functions as fn
from pipeline.core import plan as plan_mod
from pipeline.core import stats as stats_mod
from pipeline.core.grid import PageGrid
from pipeline.core.manifest import parse_manifest
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.core.ops import OPS, chain_from_json, chain_halo
from pipeline.errors import ManifestError

pytestmark = pytest.mark.timeout(300)

# --- references: the whole page, written out with OpenCV / numpy --------------------------


def _top(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def ref_clahe(page: np.ndarray, clip: float, cell: int) -> np.ndarray:
    """As documented: mirror (BORDER_REFLECT_101) to whole cells, CLAHE, crop back."""
    h, w = page.shape
    if h % cell == 0 and w % cell == 0:
        return cv2.createCLAHE(clip, (w // cell, h // cell)).apply(page)
    ext = cv2.copyMakeBorder(page, 0, (-h) % cell, 0, (-w) % cell, cv2.BORDER_REFLECT_101)
    return cv2.createCLAHE(clip, (ext.shape[1] // cell, ext.shape[0] // cell)).apply(ext)[:h, :w]


def ref_global(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    name = p["op"]
    if name == "equalize_hist":
        return cv2.equalizeHist(img)
    if name == "otsu_threshold":
        return cv2.threshold(img, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[1]
    if name == "normalize":
        return cv2.normalize(img, None, 0, _top(img.dtype), cv2.NORM_MINMAX)
    if name == "percentile_stretch":
        top = _top(img.dtype)
        lo = float(np.percentile(img, p.get("p_low", 1.0), method="lower"))
        hi = float(np.percentile(img, p.get("p_high", 99.0), method="lower"))
        v = img.astype(np.float64)
        if hi == lo:
            return np.where(v > lo, top, 0).astype(img.dtype)
        return np.clip(np.rint((v - lo) / (hi - lo) * top), 0, top).astype(img.dtype)
    if name == "clahe":
        return ref_clahe(img, p.get("clip_limit", 2.0), p.get("cell", 64))
    if name == "canny":
        sigma = p.get("sigma", 0)
        x = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img
        return cv2.Canny(x, p["low"], p["high"])
    if name == "downsample":
        f = p["factor"]
        h, w = img.shape[0] // f, img.shape[1] // f
        return cv2.resize(np.ascontiguousarray(img[:h * f, :w * f]), (w, h),
                          interpolation=cv2.INTER_AREA)
    return ref_op(img, p)


def reference(page: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    return exact_reference(page, ops, ref_global)


def _name(ops: list[dict[str, Any]]) -> str:
    return "+".join(o["op"] + "".join(f"-{k}{v}" for k, v in o.items() if k != "op")
                    for o in ops)


# --- the formulas against OpenCV on whole images ------------------------------------------


def _random_images(seed: int, dtype: str, count: int, channels: tuple[int, ...] = (1,)):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    for t in range(count):
        h, w = int(rng.integers(1, 160)), int(rng.integers(1, 160))
        ch = channels[t % len(channels)]
        shape = (h, w) if ch == 1 else (h, w, ch)
        kind = t % 5
        if kind == 0:
            yield rng.integers(0, top + 1, shape).astype(dtype)
        elif kind == 1:  # a narrow range
            lo = int(rng.integers(0, top))
            yield rng.integers(lo, min(top, lo + 40) + 1, shape).astype(dtype)
        elif kind == 2:  # two modes
            a = np.where(rng.random(shape) < rng.random(), rng.normal(0.25, 0.05, shape),
                         rng.normal(0.7, 0.1, shape))
            yield np.clip(np.rint(a * top), 0, top).astype(dtype)
        elif kind == 3:  # constant but one pixel
            img = np.full(shape, rng.integers(0, top + 1), dtype)
            img.flat[0] = rng.integers(0, top + 1)
            yield img
        else:  # a few values
            yield rng.choice(rng.integers(0, top + 1, 3), shape).astype(dtype)


def test_equalize_lut_is_opencvs():
    for img in _random_images(1, "uint8", 300):
        want = cv2.equalizeHist(img)
        assert np.array_equal(stats_mod.equalize_lut(stats_mod.histogram(img))[img], want)


def test_equalize_lut_in_float32_like_opencv_above_2_to_24_pixels():
    """Above 16.7 M pixels OpenCV's float32 ``sum * scale`` rounds: float64 would differ."""
    rng = np.random.default_rng(0)
    for _ in range(200):  # a histogram where float32 and float64 tables differ
        hist = rng.integers(0, 200000, 256).astype(np.int64)
        hist[rng.random(256) < 0.3] = 0
        lut = stats_mod.equalize_lut(hist)
        i = int(np.flatnonzero(hist)[0])
        sums = np.cumsum(hist) - np.cumsum(hist)[i]
        in_double = np.clip(np.rint(sums * (255.0 / (hist.sum() - hist[i]))), 0, 255)
        if not np.array_equal(in_double[i + 1:], lut[i + 1:]):
            break
    else:
        raise AssertionError("no histogram where float32 matters")
    assert hist.sum() > 2**24
    img = np.repeat(np.arange(256, dtype=np.uint8), hist).reshape(1, -1)  # that histogram
    assert np.array_equal(cv2.LUT(img, lut), cv2.equalizeHist(img))


def test_otsu_threshold_is_opencvs():
    for img in _random_images(3, "uint8", 300):
        t, want = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        assert stats_mod.otsu_threshold(stats_mod.histogram(img)) == t
        state = stats_mod.OTSU.finish(stats_mod.OTSU.partial(img, {}), {}, img.dtype)
        assert np.array_equal(stats_mod.OTSU.apply(img, {}, state), want)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_normalize_is_opencvs_for_integers(dtype):
    for img in _random_images(4, dtype, 200, channels=(1, 3, 4, 2)):
        want = cv2.normalize(img, None, 0, np.iinfo(dtype).max, cv2.NORM_MINMAX)
        state = stats_mod.normalize_state(float(img.min()), float(img.max()), img.dtype)
        assert np.array_equal(stats_mod.NORMALIZE.apply(img, {}, state), want)


def test_normalize_is_opencvs_for_float32():
    rng = np.random.default_rng(5)
    for t in range(40):
        shape = (int(rng.integers(1, 300)), int(rng.integers(1, 300)), (1, 3, 4)[t % 3])
        scale = (1e-6, 1.0, 3.0, 1e4)[t % 4]
        img = (rng.standard_normal(shape) * scale + rng.normal() * scale).astype(np.float32)
        if t % 7 == 0:
            img[:] = img.flat[0]  # no range: everything becomes 0
        img = img[:, :, 0] if shape[2] == 1 else img
        want = cv2.normalize(img, None, 0, 1, cv2.NORM_MINMAX)
        state = stats_mod.normalize_state(float(img.min()), float(img.max()), img.dtype)
        assert_identical(stats_mod.NORMALIZE.apply(img, {}, state), want, f"case {t}")


def test_rank_value_is_numpys_lower_percentile():
    rng = np.random.default_rng(6)
    for img in _random_images(6, "uint16", 100, channels=(1, 3)):
        hist = stats_mod.histogram(img)
        for p in (0, 0.1, 1, 2.5, 33.3, 50, 97.5, 99, 99.99, 100, float(rng.random() * 100)):
            want = np.percentile(img, p, method="lower")
            assert stats_mod.rank_value(hist, p) == want, (p, img.shape)


def _hysteresis_reference(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    n, lab = cv2.connectedComponents((weak > 0).astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[lab[strong > 0]] = True
    keep[0] = False
    return np.where(keep[lab], 255, 0).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_canny_is_its_two_equal_threshold_cannies_plus_hysteresis(channels):
    """The decomposition the tiled canny rests on, on whole images: Canny(x, low, high) keeps
    the components of Canny(x, low, low) that hold a pixel of Canny(x, high, high)."""
    rng = np.random.default_rng(7)
    for t in range(20):
        img = make_image(100 + t, int(rng.integers(20, 300)), int(rng.integers(20, 300)),
                         channels, "uint8")
        low, high = sorted(rng.uniform(0, 400, 2))
        if t % 5 == 0:
            low, high = high, low  # OpenCV swaps them
        p = {"low": low, "high": high, "sigma": (0, 1.0, 2.5)[t % 3]}
        x = cv2.GaussianBlur(img, (0, 0), p["sigma"]) if p["sigma"] else img
        weak, strong = canny_mod.local_maps(img, p, fn.canny_blur)
        assert np.array_equal(_hysteresis_reference(weak, strong), cv2.Canny(x, low, high))


def test_union_find_joins_long_chains():
    rng = np.random.default_rng(8)
    n = 5000
    order = rng.permutation(n)  # one long path through the nodes in a random order
    a, b = order[:-1], order[1:]
    root = canny_mod.components(n, a, b)
    assert np.all(root == root[0]) and root[0] == 0
    # two chains, and singletons
    root = canny_mod.components(10, np.array([1, 2, 5, 6]), np.array([2, 3, 6, 9]))
    assert list(root) == [0, 1, 1, 1, 4, 5, 5, 7, 8, 5]


def _sides(labels: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], dict]:
    return {t: canny_mod.borders(a) for t, a in labels.items()}


def test_hysteresis_joins_across_sides_and_corners():
    """Weak components (positive labels) are kept when 8-connected, through tile sides or
    tile corners only, to a strong one (negative) in another tile."""
    grid = PageGrid(8, 8, 4, 0)

    def tiles(**pixels: tuple[int, int, int]) -> dict[tuple[int, int], np.ndarray]:
        out = {(r, c): np.zeros((4, 4), np.int32) for r in range(2) for c in range(2)}
        for name, (y, x, label) in pixels.items():
            out[(int(name[1]), int(name[2]))][y, x] = label
        return out

    def kept(labels: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], list[int]]:
        return {t: list(v) for t, v in canny_mod.hysteresis(grid, _sides(labels)).items()}

    # strong at t00's corner, weak at t11's: joined through the corner only
    assert kept(tiles(t00=(3, 3, -1), t11=(0, 0, 1))) == {(1, 1): [1]}
    assert kept(tiles(t00=(3, 2, -1), t11=(0, 0, 1))) == {}  # one pixel apart
    # the other diagonal: t01's bottom-left corner and t10's top-right one
    assert kept(tiles(t01=(3, 0, -2), t10=(0, 3, 3))) == {(1, 0): [3]}
    assert kept(tiles(t01=(3, 1, -2), t10=(0, 3, 3))) == {}
    # weak components on sides that touch nothing strong stay out
    assert kept(tiles(t00=(3, 3, 4), t11=(0, 0, 1), t10=(2, 3, 5))) == {}
    # across a side, one pixel up or down; a chain through a weak middle tile
    a, b, c = np.zeros((3, 2), np.int32), np.zeros((3, 2), np.int32), np.zeros((3, 2), np.int32)
    a[0, 1] = -7
    b[1, 0], b[1, 1] = 2, 2  # weak, touches a's strong pixel diagonally across the side
    c[2, 0] = 9  # weak, touches b's (1, 1) diagonally across the next side
    kept = canny_mod.hysteresis(PageGrid(3, 6, 2, 0), _sides({(0, 0): a, (0, 1): b,
                                                              (0, 2): c}))
    assert {t: list(v) for t, v in kept.items()} == {(0, 1): [2], (0, 2): [9]}
    c[2, 0], c[0, 0] = 0, 0
    c[2, 1] = 9  # not touching b any more
    kept = canny_mod.hysteresis(PageGrid(3, 6, 2, 0), _sides({(0, 0): a, (0, 1): b,
                                                              (0, 2): c}))
    assert {t: list(v) for t, v in kept.items()} == {(0, 1): [2]}


# --- the tiled path: every op, odd sizes, tiles that do not divide the page ----------------

#: (ops, dtype, channels, (height, width), tile, output tile, input layout)
STRIPS = {"tiled": False, "rowsperstrip": 16}
TILES = {"tiled": True, "tile": (32, 48)}
CASES: list[tuple[list[dict[str, Any]], str, int, tuple[int, int], int, int, dict]] = [
    ([{"op": "equalize_hist"}], "uint8", 1, (257, 389), 64, 64, STRIPS),
    ([{"op": "equalize_hist"}], "uint8", 1, (1000, 333), 128, 32, TILES),
    ([{"op": "otsu_threshold"}], "uint8", 1, (257, 389), 64, 64, TILES),
    ([{"op": "otsu_threshold"}], "uint8", 1, (300, 211), 128, 64, STRIPS),
    ([{"op": "normalize"}], "uint8", 3, (257, 389), 64, 32, TILES),
    ([{"op": "normalize"}], "uint16", 1, (300, 211), 128, 128, STRIPS),
    ([{"op": "normalize"}], "uint16", 4, (211, 300), 64, 64, TILES),
    ([{"op": "normalize"}], "float32", 3, (257, 389), 64, 64, STRIPS),
    ([{"op": "normalize"}], "float32", 1, (389, 257), 192, 64, TILES),
    ([{"op": "percentile_stretch", "p_low": 2, "p_high": 98}], "uint8", 3, (257, 389), 64, 64,
     STRIPS),
    ([{"op": "percentile_stretch"}], "uint16", 1, (300, 211), 64, 32, TILES),
    ([{"op": "percentile_stretch", "p_low": 0, "p_high": 100}], "uint16", 2, (211, 300), 128,
     64, STRIPS),
    ([{"op": "clahe", "clip_limit": 2.0, "cell": 32}], "uint8", 1, (256, 384), 64, 64, TILES),
    ([{"op": "clahe", "clip_limit": 3.0, "cell": 16}], "uint8", 1, (257, 389), 64, 32, STRIPS),
    ([{"op": "clahe", "clip_limit": 40, "cell": 8}], "uint16", 1, (300, 211), 128, 64, TILES),
    ([{"op": "clahe", "clip_limit": 1.5, "cell": 64}], "uint16", 1, (389, 257), 128, 128,
     STRIPS),
    ([{"op": "canny", "low": 40, "high": 120}], "uint8", 1, (257, 389), 64, 64, STRIPS),
    ([{"op": "canny", "low": 20, "high": 80, "sigma": 1.5}], "uint8", 3, (300, 211), 64, 32,
     TILES),
    ([{"op": "canny", "low": 150, "high": 30, "sigma": 2.5}], "uint8", 1, (1000, 333), 128,
     64, TILES),
    ([{"op": "downsample", "factor": 2}], "uint8", 3, (257, 389), 64, 32, STRIPS),
    ([{"op": "downsample", "factor": 3}], "uint16", 1, (300, 211), 96, 32, TILES),
    ([{"op": "downsample", "factor": 4}], "float32", 4, (389, 257), 128, 32, STRIPS),
    ([{"op": "downsample", "factor": 2}], "uint16", 2, (256, 384), 64, 32, TILES),
    # chains: statistics of what reaches the op, several rounds, ops around them
    ([{"op": "gaussian_blur", "sigma": 2.5}, {"op": "equalize_hist"},
      {"op": "median_blur", "ksize": 5}], "uint8", 1, (257, 389), 64, 64, TILES),
    ([{"op": "to_gray"}, {"op": "normalize"}, {"op": "gamma", "gamma": 2.2},
      {"op": "otsu_threshold"}], "uint8", 3, (300, 211), 64, 64, STRIPS),
    ([{"op": "unsharp_mask", "sigma": 2}, {"op": "percentile_stretch"},
      {"op": "dilate", "ksize": 3}, {"op": "normalize"}], "uint16", 1, (211, 300), 64, 32,
     TILES),
    ([{"op": "median_blur", "ksize": 3}, {"op": "canny", "low": 30, "high": 90, "sigma": 1},
      {"op": "dilate", "ksize": 5, "iterations": 2}, {"op": "gaussian_blur", "sigma": 3}],
     "uint8", 1, (257, 389), 64, 64, STRIPS),
    ([{"op": "equalize_hist"}, {"op": "canny", "low": 50, "high": 150}, {"op": "invert"}],
     "uint8", 1, (300, 211), 128, 32, TILES),
    ([{"op": "canny", "low": 40, "high": 100}, {"op": "gaussian_blur", "sigma": 6},
      {"op": "canny", "low": 5, "high": 30}], "uint8", 1, (257, 389), 64, 64, TILES),
    ([{"op": "downsample", "factor": 2}, {"op": "gaussian_blur", "sigma": 2.5},
      {"op": "clahe", "cell": 16}, {"op": "equalize_hist"}], "uint8", 1, (389, 257), 64, 32,
     STRIPS),
    ([{"op": "clahe", "cell": 16}, {"op": "downsample", "factor": 2},
      {"op": "canny", "low": 20, "high": 60, "sigma": 1}, {"op": "downsample", "factor": 2}],
     "uint8", 1, (300, 211), 64, 16, TILES),
    ([{"op": "gaussian_blur", "sigma": 1.5}, {"op": "downsample", "factor": 3},
      {"op": "unsharp_mask", "sigma": 1}, {"op": "normalize"}], "float32", 3, (257, 389), 96,
     32, STRIPS),
    ([{"op": "clahe", "cell": 32}, {"op": "gaussian_blur", "sigma": 4}], "uint16", 1,
     (257, 389), 64, 64, TILES),
    ([{"op": "canny", "low": 30, "high": 90, "sigma": 2}, {"op": "gaussian_blur", "sigma": 1},
      {"op": "otsu_threshold"}], "uint8", 4, (300, 211), 64, 64, STRIPS),
    # the last tile row and column of the smaller page are empty (257 // 2 = 128 = 4 x 32)
    ([{"op": "downsample", "factor": 2}, {"op": "canny", "low": 25, "high": 75},
      {"op": "dilate", "ksize": 3}, {"op": "equalize_hist"}], "uint8", 1, (257, 385), 64, 32,
     TILES),
]


@pytest.mark.parametrize("ops,dtype,channels,shape,tile,out_tile,layout_", [
    pytest.param(*c, id=f"{_name(c[0])}-{c[1]}-c{c[2]}-{c[3][0]}x{c[3][1]}-T{c[4]}-OT{c[5]}")
    for c in CASES])
def test_tiled_equals_whole_page(tmp_path, ops, dtype, channels, shape, tile, out_tile,
                                 layout_):
    seed = sum(map(ord, f"{_name(ops)}{dtype}{channels}{shape}"))
    page = make_image(seed, *shape, channels, dtype)
    src = tmp_path / "in.tif"
    write_tiff(src, [page], **layout_)
    (got,), plan = run_tiled(tmp_path, src, ops, tile, out_tile, units="small",
                             tiles_per_batch=3)
    assert plan.tiles > 1
    want = reference(page, ops)
    assert_identical(got, want, _name(ops))
    f = plan.pages[0].factor
    assert got.shape[:2] == (shape[0] // f, shape[1] // f)


def test_several_pages_each_get_their_own_statistics(tmp_path):
    ops = [{"op": "gaussian_blur", "sigma": 1}, {"op": "equalize_hist"},
           {"op": "canny", "low": 30, "high": 100}]
    shapes = [(257, 389), (64, 150), (130, 77)]
    pages = [make_image(30 + i, *s, 1, "uint8") // (i + 1) for i, s in enumerate(shapes)]
    src = tmp_path / "multi.tif"
    write_tiff(src, pages, tiled=True, tile=(16, 16))
    got, _plan = run_tiled(tmp_path, src, ops, 64, 32, pages=[2, 0, 1], tiles_per_batch=4)
    for out, index in zip(got, [2, 0, 1], strict=True):
        assert_identical(out, reference(pages[index], ops), f"page {index}")


def _hot_pixel_page(dtype: str, channels: int, ops: list[dict[str, Any]]) -> np.ndarray:
    """A smooth page with one hot pixel 2 px inside the right edge of the window of the first
    64 px tile (its tile plus the chain's halo): the op before normalize reflects it there, so
    that tile's outer ring (cut off later, not exact) holds values beyond the page's
    extremes."""
    halo = chain_halo(chain_from_json(ops), np.dtype(dtype))
    yy, xx = np.mgrid[0:150, 0:211].astype(np.float64)
    img = np.sin(xx / 37.0) + np.cos(yy / 53.0)
    img[40, 64 + halo - 2] = 50.0
    if dtype == "int32":
        img = np.rint(img * 1e6)
    img = img.astype(dtype)
    return np.stack([img] * channels, -1) if channels > 1 else img


@pytest.mark.parametrize("dtype,channels,ops", [
    ("float64", 1, [{"op": "gaussian_blur", "sigma": 2}, {"op": "normalize"}]),
    ("int32", 3, [{"op": "gaussian_blur", "sigma": 2}, {"op": "normalize"},
                  {"op": "median_blur", "ksize": 3}]),
    ("float64", 5, [{"op": "gaussian_blur", "sigma": 2}, {"op": "normalize"},
                    {"op": "gaussian_blur", "sigma": 1}]),
])
def test_normalize_after_a_halo_op_uses_the_pages_range(tmp_path, dtype, channels, ops):
    """int32 and float64 normalize with OpenCV itself, on each tile's values and the page's
    extremes: a halo's outer ring beyond the extremes must not change the scale."""
    page = _hot_pixel_page(dtype, channels, ops)
    src = tmp_path / "hot.tif"
    write_tiff(src, [page], tiled=True, tile=(32, 32))
    want = typed_reference(page, ops)
    for fuse in (True, False):
        (got,), _plan = run_tiled(tmp_path, src, ops, 64, 32, fuse=fuse, units="tiny")
        assert_identical(got, want, f"fuse {fuse}")


def _nan_page(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    page = rng.random((150, 211)) * 3 - 1
    page[rng.random(page.shape) < 0.02] = np.nan
    page[0, 0] = np.nan  # where OpenCV's own minimum and maximum become NaN
    return page.astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_normalize_skips_nan(tmp_path, dtype):
    """A float page with NaN (no data) is scaled by the range of its other values, NaN stays
    NaN: OpenCV's normalize on the page with its NaNs at its minimum, NaN put back (OpenCV's
    own takes NaN as the minimum or not depending on where it is)."""
    page = _nan_page(dtype)
    nan = np.isnan(page)
    filled = np.where(nan, np.nanmin(page), page).astype(dtype)
    want = cv2.normalize(filled, None, 0, 1, cv2.NORM_MINMAX)
    want[nan] = np.nan
    assert np.isnan(cv2.normalize(page, None, 0, 1, cv2.NORM_MINMAX)).all()
    src = tmp_path / "nan.tif"
    write_tiff(src, [page], tiled=True, tile=(32, 32))
    (got,), plan = run_tiled(tmp_path, src, [{"op": "normalize"}], 64, 16, units="small")
    assert plan.tiles > 4
    np.testing.assert_array_equal(got, want)


def _collar_page(dtype: str, nodata: int) -> np.ndarray:
    """A scene whose left third is outside the swath (GDAL_NODATA ``nodata``), as a
    Sentinel-2 tile at the edge of its orbit: the no-data pixels are a third of the page."""
    page = make_image(7, 150, 211, 1, dtype)
    top = np.iinfo(dtype).max
    page = np.clip(page, top // 8, top - top // 8)  # the data holds no no-data value
    page[:, :70] = nodata
    return page


def _write_with_nodata(path: Path, page: np.ndarray, nodata: int) -> None:
    tifffile.imwrite(path, page, photometric="minisblack", tile=(32, 32), metadata=None,
                     extratags=[(42113, "s", 0, str(nodata), True)])


def _stretch(page: np.ndarray, lo: float, hi: float) -> np.ndarray:
    top = np.iinfo(page.dtype).max
    out = np.rint((page.astype(np.float64) - lo) / (hi - lo) * top)
    return np.clip(out, 0, top).astype(page.dtype)


@pytest.mark.parametrize("dtype,nodata", [("uint16", 0), ("uint8", 255), ("int16", -32768)])
def test_percentile_stretch_leaves_the_no_data_value_out(tmp_path, dtype, nodata):
    """The percentiles are of the pixels with data: a third of the page at the no-data value
    (a scene's collar) made the 2% point the no-data value, and the stretch of the data
    far too weak (a washed-out quicklook). The no-data pixels are written back as they were,
    and the data the table sends onto the no-data value go to the next value."""
    page = _collar_page(dtype, nodata)
    src = tmp_path / "collar.tif"
    _write_with_nodata(src, page, nodata)
    ops = [{"op": "percentile_stretch", "p_low": 2, "p_high": 98}]
    data = page[page != nodata]
    lo, hi = (float(np.percentile(data, p, method="lower")) for p in (2, 98))
    want = _stretch(page, lo, hi)
    top = np.iinfo(dtype).max
    want[want == nodata] = nodata - 1 if nodata == top else nodata + 1
    want[page == nodata] = nodata
    before = np.percentile(page, (2, 98), method="lower").astype(np.float64)
    assert not np.array_equal(want, _stretch(page, *before))
    for fuse in (True, False):
        (got,), plan = run_tiled(tmp_path, src, ops, 64, 32, fuse=fuse, units="small")
        assert plan.tiles > 4
        assert_identical(got, want, f"fuse {fuse}")


def test_equalize_hist_and_otsu_leave_the_no_data_value_out(tmp_path):
    """equalize_hist and otsu_threshold take the histogram of the pixels with data, as
    OpenCV's calls on those pixels alone."""
    page = _collar_page("uint8", 0)
    src = tmp_path / "collar8.tif"
    _write_with_nodata(src, page, 0)
    data = page[page != 0].reshape(1, -1)
    lut = np.zeros(256, np.uint8)
    lut[data.ravel()] = cv2.equalizeHist(data).ravel()
    lut[lut == 0] = 1  # (data sent onto the no-data value: the next value)
    (got,), _plan = run_tiled(tmp_path, src, [{"op": "equalize_hist"}], 64, 32, fuse=False,
                              units="small")
    assert_identical(got[:, 70:], lut[page[:, 70:]], "equalize_hist, the data")
    assert (got[:, :70] == 0).all()  # (below every value with data)
    t, _ = cv2.threshold(data, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    assert t != cv2.threshold(page, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0]
    (got,), _plan = run_tiled(tmp_path, src, [{"op": "otsu_threshold"}], 64, 32, fuse=False,
                              units="small")
    assert_identical(got, np.where(page > t, 255, 0).astype(np.uint8), "otsu_threshold")


def test_downsample_multi_page_writes_smaller_pages(tmp_path):
    ops = [{"op": "downsample", "factor": 4}]
    pages = [make_image(40 + i, *s, 3, "uint8") for i, s in enumerate([(257, 389), (64, 150)])]
    src = tmp_path / "multi.tif"
    write_tiff(src, pages, tiled=False, rowsperstrip=8)
    got, _plan = run_tiled(tmp_path, src, ops, 128, 32)
    assert [g.shape for g in got] == [(64, 97, 3), (16, 37, 3)]
    for out, page in zip(got, pages, strict=True):
        assert_identical(out, reference(page, ops))


# --- canny: long edges across many tiles ---------------------------------------------------


def _long_edges(height: int, width: int) -> np.ndarray:
    """Long faint edges crossing many tiles (gradient between the thresholds), each strong
    in one short stretch only: hysteresis from there keeps them whole."""
    rng = np.random.default_rng(9)
    img = np.full((height, width), 100.0)
    xs = np.arange(width)
    for k in range(4):  # sine-wave steps across the whole width
        ys = (height * (k + 0.5) / 4 + 40 * np.sin(xs / (37.0 + 11 * k))).astype(int)
        strong = int(rng.integers(0, width - 40))
        for x, y in zip(xs, ys, strict=True):
            img[y:, x] += 25 if strong <= x < strong + 30 else 5
    for _ in range(4):  # lines from the top to the bottom of the page
        line = np.zeros((height, width), np.uint8)
        cv2.line(line, (int(rng.integers(0, width)), 0),
                 (int(rng.integers(0, width)), height - 1), 1, 4)
        boost = np.zeros_like(img)
        cy = int(rng.integers(0, height - 20))
        boost[cy:cy + 20] = 20
        img += line * (6 + boost)
    img += rng.normal(0, 0.5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("tile,sigma", [(64, 0), (128, 1.2)])
def test_canny_follows_long_edges_across_many_tiles(tmp_path, tile, sigma):
    page = _long_edges(700, 900)
    ops = [{"op": "canny", "low": 8, "high": 60, "sigma": sigma}]
    want = reference(page, ops)
    # the test is sensitive: Canny per tile (hysteresis cut at tile borders) differs
    x = cv2.GaussianBlur(page, (0, 0), sigma) if sigma else page
    per_tile = _manual_tiled(x, PageGrid(700, 900, tile, 32), lambda a: cv2.Canny(a, 8, 60))
    assert (per_tile != want).sum() > 500
    src = tmp_path / "edges.tif"
    write_tiff(src, [page], tiled=True, tile=(64, 64))
    (got,), plan = run_tiled(tmp_path, src, ops, tile, 64, tiles_per_batch=5)
    assert plan.tiles >= 40
    assert_identical(got, want, "canny")
    assert want.sum() > 0


def test_canny_with_a_reduce_tree_of_several_levels(tmp_path, monkeypatch):
    """A bound of 8 tile sides a node: canny's hysteresis is joined over a tree of several
    levels (reduce_node per node, level after level, as the state machine's ReduceLevel
    Map runs them), and the page is Canny's on the whole page."""
    monkeypatch.setenv("TIFFPIPE_CANNY_REDUCE_SIDES", "8")
    page = _long_edges(300, 400)
    ops = [{"op": "canny", "low": 8, "high": 60, "sigma": 1.0}]
    src = tmp_path / "edges.tif"
    write_tiff(src, [page], tiled=True, tile=(64, 64))
    (got,), plan = run_tiled(tmp_path, src, ops, 64, 64, tiles_per_batch=5)
    assert plan.tiles >= 30
    assert_identical(got, reference(page, ops), "canny")


@pytest.mark.parametrize("sigma", [0, 1.0, 2.5])
def test_canny_local_maps_need_the_blur_radius_plus_2(sigma):
    """The canny halo is exact (not hidden by rounding up to 16): the weak map of a tile with
    a halo of blur radius + 2 is the page's; without blur, one pixel less is not."""
    page = make_image(53, 200, 190, 1, "uint8")
    p = {"low": 20, "high": 20, "sigma": sigma}
    halo = canny_mod.reach(p, 0)
    assert halo == (round(sigma * 6 + 1) | 1) // 2 * (sigma > 0) + 2
    x = cv2.GaussianBlur(page, (0, 0), sigma) if sigma else page
    want = cv2.Canny(x, 20, 20)
    weak = lambda a: canny_mod.local_maps(a, p, fn.canny_blur)[0]
    assert np.array_equal(_manual_tiled(page, PageGrid(200, 190, 48, halo), weak), want)
    if sigma == 0:
        assert not np.array_equal(_manual_tiled(page, PageGrid(200, 190, 48, 1), weak), want)


# --- clahe: a result that does not depend on the tiling -------------------------------------


def test_clahe_does_not_depend_on_the_tile_size(tmp_path):
    """When the cell does not divide the page the result is the documented one (mirror to
    whole cells), and the same for every processing tile size."""
    page = make_image(50, 301, 203, 1, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=32)
    ops = [{"op": "clahe", "clip_limit": 2.5, "cell": 32}]
    want = reference(page, ops)
    outs = [run_tiled(tmp_path, src, ops, tile, 32)[0][0] for tile in (64, 96, 256)]
    for got in outs:
        assert_identical(got, want, "clahe")


def test_clahe_with_an_unaligned_halo_is_not_identical():
    """Sensitivity: a halo that is not a whole number of cells breaks it."""
    page = make_image(51, 257, 389, 1, "uint8")
    want = ref_clahe(page, 2.0, 16)
    func = lambda a: ref_clahe(a, 2.0, 16)
    assert np.array_equal(_manual_tiled(page, PageGrid(257, 389, 64, 16), func), want)
    assert not np.array_equal(_manual_tiled(page, PageGrid(257, 389, 64, 24), func), want)


# --- sensitivity: per-tile statistics are wrong ---------------------------------------------


@pytest.mark.parametrize("op", ["equalize_hist", "otsu_threshold", "normalize"])
def test_per_tile_statistics_would_differ(op):
    page = make_image(52, 257, 389, 1, "uint8")
    want = reference(page, [{"op": op}])
    per_tile = _manual_tiled(page, PageGrid(257, 389, 64, 16),
                             lambda a: reference(a, [{"op": op}]))
    assert not np.array_equal(per_tile, want)


# --- the plan and the manifest refuse what cannot be exact -----------------------------------


def _plan_problems(tmp_path: Path, ops: list[dict[str, Any]], tile: int = 64,
                   out_tile: int = 64, dtype: str = "uint8", channels: int = 1,
                   shape: tuple[int, int] = (100, 90)) -> list[str]:
    src = tmp_path / "p.tif"
    write_tiff(src, [make_image(1, *shape, channels, dtype)], tiled=True)
    spec = JobSpec(input=str(src), output=str(tmp_path / "o.tif"), ops=ops, tile=tile,
                   output_options=OutputOptions(tile=out_tile))
    _, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    return list(map(str, problems))


@pytest.mark.parametrize("ops,kw,expect", [
    ([{"op": "equalize_hist"}], {"dtype": "uint16"},
     ("equalize_hist needs uint8 pixels, the page has uint16 (OpenCV's equalizeHist is 8-bit "
      'only); put {"op": "convert", "dtype": "uint8"} before it, with an "in_range" on float '
      "pages (or use normalize, or percentile_stretch on 8 and 16-bit pages, instead)")),
    ([{"op": "equalize_hist"}], {"channels": 3}, ("needs 1 channel(s), the page has 3; put "
                                                 "to_gray before it")),
    ([{"op": "otsu_threshold"}], {"dtype": "float32"},
     ("otsu_threshold needs uint8 or uint16 pixels, the page has float32 (OpenCV's Otsu takes "
      '8 and 16-bit unsigned pages only); put {"op": "convert", "dtype": "uint16"} (or uint8) '
      'before it, with an "in_range" on float pages, or use threshold with a value')),
    ([{"op": "percentile_stretch"}], {"dtype": "float32"}, "use normalize"),
    ([{"op": "clahe", "cell": 16}], {"channels": 3}, "clahe needs 1 channel"),
    ([{"op": "clahe", "cell": 16}], {"dtype": "float32"},
     ("clahe needs uint8 or uint16 pixels, the page has float32 (OpenCV's CLAHE takes 8 and "
      '16-bit unsigned pages only); put {"op": "convert", "dtype": "uint16"} (or uint8) '
      'before it, with an "in_range" on float pages')),
    ([{"op": "canny", "low": 1, "high": 2}], {"dtype": "uint16"},
     ("canny needs uint8 pixels, the page has uint16 (OpenCV's Canny is 8-bit only); put "
      '{"op": "convert", "dtype": "uint8"} before it, with an "in_range" on float pages')),
    ([{"op": "clahe", "cell": 128}], {"tile": 64}, ("tile 64 must be a multiple of 128 for this "
                                                   "op chain (the clahe cell 128")),
    ([{"op": "downsample", "factor": 3}], {"tile": 64}, "tile 64 must be a multiple of 48"),
    ([{"op": "downsample", "factor": 2}], {"tile": 64, "out_tile": 64},
     ("with downsampling by 2 a processing tile of 64 writes 32 output pixels, which "
     "output_options.tile 64 must divide")),
    ([{"op": "downsample", "factor": 2}, {"op": "downsample", "factor": 4}],
     {"tile": 128, "out_tile": 16, "shape": (100, 5)},
     ("page 0: 5 x 100 pixels is smaller than the downsampling factor 8; downsample by at "
      "most 5 in all, or leave the page out of the job's pages")),
])
def test_plan_refuses(tmp_path, ops, kw, expect):
    problems = _plan_problems(tmp_path, ops, **kw)
    assert any(expect in p for p in problems), problems


def test_manifest_refuses_bad_parameters():
    jobs = [{"input": "a.tif", "output": f"o{i}.tif", "ops": [op]} for i, op in enumerate([
        {"op": "percentile_stretch", "p_low": 60, "p_high": 40},
        {"op": "clahe", "cell": 48},
        {"op": "downsample", "factor": 1},
        {"op": "canny", "low": 10},
        {"op": "normalize", "alpha": 1},
    ])]
    with pytest.raises(ManifestError) as info:
        parse_manifest({"jobs": jobs}, "m.json", "/data")
    problems = info.value.problems
    assert "jobs[0].ops[0]: p_low (60) must be below p_high (40)" in problems
    assert any(p.startswith("jobs[1].ops[0].cell: expected one of 8, 16") for p in problems)
    assert any(p.startswith("jobs[2].ops[0].factor: expected an integer >= 2") for p in problems)
    assert "jobs[3].ops[0].high: required, a number >= 0 and <= 100000" in problems
    assert any(p.startswith("jobs[4].ops[0].alpha: unknown field") for p in problems)
    assert len(problems) == 5


def test_halos_and_alignment():
    def halo(ops: list[dict[str, Any]]) -> int:
        return chain_halo(chain_from_json(ops), np.dtype("uint8"))
    assert halo([{"op": "equalize_hist"}]) == 0
    assert halo([{"op": "clahe", "cell": 64}]) == 64  # one cell
    assert halo([{"op": "clahe", "cell": 8}, {"op": "dilate", "ksize": 3}]) == 16
    assert halo([{"op": "clahe", "cell": 32}, {"op": "gaussian_blur", "sigma": 6}]) == 64
    # split's halo stops at the first canny: the ops after it start from its edges
    assert halo([{"op": "canny", "low": 1, "high": 2, "sigma": 2}]) == 16  # 6 + 2
    assert halo([{"op": "canny", "low": 1, "high": 2}, {"op": "gaussian_blur", "sigma": 30}]) \
        == 16
    # after a downsample, halos count in output pixels
    assert halo([{"op": "downsample", "factor": 3}, {"op": "gaussian_blur", "sigma": 2}]) == 48


# --- tiffpipe ops lists the new ops --------------------------------------------------------


def test_ops_lists_the_new_ops(capsys):
    assert cli.main(["ops", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["ops"]
    for name in ("equalize_hist", "otsu_threshold", "normalize", "percentile_stretch", "clahe",
                 "canny", "downsample", "custom"):
        assert name in doc and doc[name]["halo"] == OPS[name].halo_help
    assert [p["name"] for p in doc["canny"]["params"]] == ["low", "high", "sigma"]
    assert [p["name"] for p in doc["custom"]["params"]] == ["function", "halo", "params"]
    assert doc["custom"]["params"][2]["accepts"] == "an object"


# --- the embedded engine: the state machine's statistics loop, end to end ------------------


def test_run_on_the_embedded_engine(tmp_path):
    """``tiffpipe run`` on the real state machine (moto) with worker processes: a chain of
    three statistics rounds, a canny after a blur, a downsample, and a job without rounds."""
    gray = make_image(60, 300, 420, 1, "uint8")
    rgb = make_image(61, 257, 389, 3, "uint8")
    write_tiff(tmp_path / "gray.tif", [gray], tiled=True, tile=(64, 64))
    write_tiff(tmp_path / "rgb.tif", [rgb, rgb[:100, :120]], tiled=False, rowsperstrip=16)
    jobs = [
        ("gray.tif", "rounds.tif", [{"op": "gaussian_blur", "sigma": 1.5},
                                    {"op": "equalize_hist"}, {"op": "normalize"},
                                    {"op": "median_blur", "ksize": 3},
                                    {"op": "otsu_threshold"}]),
        ("gray.tif", "edges.tif", [{"op": "canny", "low": 20, "high": 70, "sigma": 1},
                                   {"op": "dilate", "ksize": 3}]),
        ("rgb.tif", "small.tif", [{"op": "downsample", "factor": 2},
                                  {"op": "to_gray"}, {"op": "clahe", "cell": 16}]),
        ("rgb.tif", "blur.tif", [{"op": "gaussian_blur", "sigma": 2}]),
    ]
    manifest = {"defaults": {"tile": 64, "output_options": {"tile": 32}},
                "jobs": [{"input": i, "output": f"out/{o}", "ops": ops} for i, o, ops in jobs]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "2", "--quiet"]) == 0
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED"] * 4
    for src, out, ops in jobs:
        pages = [read_page(tmp_path / src, k) for k in range(2 if src == "rgb.tif" else 1)]
        with tifffile.TiffFile(tmp_path / "out" / out) as tf:
            assert len(tf.pages) == len(pages)
            for tp, page in zip(tf.pages, pages, strict=True):
                assert_identical(tp.asarray(), reference(page, ops), out)


def test_a_downsample_by_3_or_7_runs_without_a_tile_in_the_manifest(tmp_path: Path):
    """A job that sets no tile gets one its downsample fits (1536 for 3, 3584 for 7, with the
    default 512 px output tiles): ``tiffpipe run`` succeeds (a plan-time refusal before)
    and the output is the whole-page reference."""
    page = make_image(73, 3700, 2300, 3, "uint8")
    write_tiff(tmp_path / "in.tif", [page], tiled=True, tile=(256, 256))
    jobs = [{"input": "in.tif", "output": f"out/by{f}.tif",
             "ops": [{"op": "gaussian_blur", "sigma": 1}, {"op": "downsample", "factor": f}]}
            for f in (3, 7)]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "2", "--quiet",
                     "--no-contact-sheet"]) == 0
    for job in jobs:
        got = tifffile.imread(tmp_path / job["output"])
        assert_identical(got, reference(page, job["ops"]), job["output"])
