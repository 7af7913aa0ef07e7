"""The blur of the valid samples alone (``gaussian_blur``, ``unsharp_mask``, ``canny``'s
pre-blur on a page with no-data or a mask) computes its float64 sums and weights only over
the blocks that hold a sample next to a left-out one, each with a halo of the kernel's
radius clipped at the tile's edges (``pipeline/core/op_functions.py`` ``_valid_blur``). It
must equal the full-tile computation it replaced bit for bit: that computation is kept as
the reference in ``bench/valid_blur_reference.py`` (``bench/valid_blur.py`` times both),
and both run on random validity patterns (a slanted collar, holes, a corner, scattered
samples; the same in every band or band by band), odd tile sizes, sigma 0.5 to 8, uint8,
uint16, float32 with NaN, 1 and 4 bands, and blocks small enough that the tiles hold many
of them, cut at every kind of place.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from pipeline.core import op_functions as fn

SIGMAS = (0.5, 0.8, 1.5, 2.0, 3.3, 5.0, 8.0)
PATTERNS = ("collar", "holes", "corner", "scatter", "band_scatter", "band_collar")


def _reference() -> ModuleType:
    """bench/valid_blur_reference.py, loaded by its path (bench/ is no package, and put on
    sys.path its scripts' names could shadow other modules)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "valid_blur_reference.py"
    spec = importlib.util.spec_from_file_location("valid_blur_reference", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


full_tile_valid_blur = _reference().full_tile_valid_blur


def tile(rng: np.random.Generator, h: int, w: int, bands: int, dtype: str) -> np.ndarray:
    """Noise over a ramp, well inside the type (the blurs' sums differ in their last bits)."""
    yy, xx = np.mgrid[0:h, 0:w]
    shape = (h, w) if bands == 1 else (h, w, bands)
    ramp = (yy * 0.7 + xx * 0.3).reshape(h, w, *([1] if bands > 1 else []))
    if dtype == "float32":
        return (ramp / 300 + rng.normal(0, 0.2, shape)).astype(np.float32)
    top = 250 if dtype == "uint8" else 64000
    return np.clip(ramp + rng.uniform(0, top, shape), 1, top).astype(dtype)


def validity(rng: np.random.Generator, h: int, w: int, bands: int, pattern: str) -> np.ndarray:
    """Which samples are valid: per pixel (broadcast to the bands) or band by band."""
    yy, xx = np.mgrid[0:h, 0:w]
    per_band = pattern.startswith("band_")
    shape = (h, w) if bands == 1 else (h, w, bands)
    if pattern == "collar":
        slope, shift = rng.uniform(0.2, 3), rng.integers(-w // 2, w // 2)
        bad = xx < yy * slope + shift
    elif pattern == "holes":
        bad = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 6)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            bad[y:y + rng.integers(1, 40), x:x + rng.integers(1, 40)] = True
    elif pattern == "corner":
        bad = (yy < rng.integers(1, h // 3 + 2)) & (xx < rng.integers(1, w // 3 + 2))
    elif pattern == "scatter":
        bad = rng.random((h, w)) < 0.01
    elif pattern == "band_scatter":
        bad = rng.random(shape) < 0.01
    else:  # band_collar: a collar of its own in each band
        slopes = rng.uniform(0.2, 3, bands).reshape(1, 1, -1) if bands > 1 else 1.0
        grid = (yy, xx) if bands == 1 else (yy[:, :, None], xx[:, :, None])
        bad = grid[1] < grid[0] * slopes + rng.integers(-w // 3, w // 3)
    valid = ~bad
    if not per_band and bands > 1:
        valid = np.broadcast_to(valid[:, :, None], shape)
    return valid


def cases() -> list[tuple[int, str]]:
    return [(seed, pattern) for seed in range(6) for pattern in PATTERNS]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("seed,pattern", cases())
def test_the_blockwise_valid_blur_is_the_full_tile_one_bit_for_bit(monkeypatch, dtype, seed,
                                                                    pattern):
    rng = np.random.default_rng([seed, len(pattern), ord(dtype[-1])])
    h, w = (int(v) | 1 for v in rng.integers(5, 260, 2))  # odd sizes, some below a kernel
    bands = int(rng.choice([1, 4]))
    sigma = float(rng.choice(SIGMAS))
    block = int(rng.choice([8, 16, 24, 64, fn.VALID_BLOCK]))
    monkeypatch.setattr(fn, "VALID_BLOCK", block)
    x = tile(rng, h, w, bands, dtype)
    valid = validity(rng, h, w, bands, pattern)
    if dtype == "float32":  # NaN where not valid (and at a few valid-looking pixels too)
        x[~valid] = np.nan
        x[rng.random(x.shape) < 0.002] = np.nan
        valid = valid & ~np.isnan(x)
    if valid.all():
        valid = valid.copy()
        valid[h // 2, w // 2] = False
    expected = full_tile_valid_blur(x, sigma, np.ascontiguousarray(valid))
    got = fn._valid_blur(x, sigma, valid)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"),
                                  expected.view(f"u{expected.itemsize}"),
                                  err_msg=f"{h}x{w}x{bands} {dtype} sigma {sigma} "
                                          f"block {block} {pattern}")


def test_a_tile_with_a_small_nodata_corner_holds_no_float64_copy_of_the_tile():
    """The sums and weights are made for the blocks by the corner alone: the call's peak
    allocation stays under one float64 copy of the tile (the full-tile way held four)."""
    rng = np.random.default_rng(7)
    x = tile(rng, 1024, 1024, 3, "uint8")
    valid = np.ones(x.shape[:2], bool)
    valid[:100, :100] = False  # 1% of the tile
    valid = np.broadcast_to(valid[:, :, None], x.shape)
    expected = full_tile_valid_blur(x, 2.0, np.ascontiguousarray(valid))
    tracemalloc.start()
    try:
        got = fn._valid_blur(x, 2.0, valid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < x.size * 8, f"peak {peak} bytes, a float64 copy is {x.size * 8}"
