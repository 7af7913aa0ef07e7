"""Every TIFF sample type (int8..int64, uint8..uint64, float16/32/64) and band count through
the real tiled path (split -> [stats] -> process -> merge, in-process as in
test_exactness.py), compared with the whole-page references of sample_types_ref.py (OpenCV
where it takes the type, else the definition of docs/sample-types.md); and every op x type
that is refused, refused at plan time with a message that names the op, the type and the
types that work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import pyvips
import tifffile
from sample_types_ref import ALL, reference, typed_image
from test_exactness import assert_identical, run_tiled

from pipeline.adapters.tiff_read import read_infos
from pipeline.core import plan as plan_mod
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.core.ops import OPS

SHAPE = (200, 300)  # (height, width): 4 x 5 tiles of 64 px
PREDICTOR = {"f": 3, "u": 2, "i": 2}


def write_bands(path: Path, page: np.ndarray, *, tiled: bool, separate: bool,
                compression: str = "zstd", photometric: str | None = None,
                extrasamples: list[int] | None = None) -> None:
    """A one-page TIFF: gray for 1 band, RGB for 3, multispectral (MINISBLACK + unspecified
    extra samples) for more, unless ``photometric`` (and ``extrasamples``) says otherwise."""
    ch = 1 if page.ndim == 2 else page.shape[2]
    photometric = photometric or ("rgb" if ch == 3 else "minisblack")
    base = 3 if photometric == "rgb" else 1
    kwargs: dict[str, Any] = {"photometric": photometric, "metadata": None,
                              "compression": None if compression == "none" else compression,
                              "extrasamples": extrasamples or ([0] * (ch - base) if ch > base
                                                               else None)}
    data = page
    if ch > 1:
        kwargs["planarconfig"] = "separate" if separate else "contig"
        if separate:
            data = np.ascontiguousarray(np.moveaxis(page, -1, 0))
    if tiled:
        kwargs["tile"] = (32, 48)
    else:
        kwargs["rowsperstrip"] = 16
    tifffile.imwrite(path, data, **kwargs)


def read_back(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        data = page.asarray()
        return np.moveaxis(data, 0, -1) if page.planarconfig == 2 and data.ndim == 3 else data


# --- every type x 1/3/5/8 bands x tiled/stripped x contiguous/separate ----------------

#: local ops, then a statistics round; every op of it takes every type and band count
CHAIN = [{"op": "gaussian_blur", "sigma": 1.5}, {"op": "median_blur", "ksize": 3},
         {"op": "dilate", "ksize": 3}, {"op": "unsharp_mask", "sigma": 1, "amount": 0.5},
         {"op": "gamma", "gamma": 0.8}, {"op": "invert"}, {"op": "normalize"}]
OUT = ("zstd", "deflate", "lzw", "none")


def _layouts():
    i = 0
    for dtype in ALL:
        for bands in (1, 3, 5, 8):
            for tiled in (True, False):
                for separate in ((False, True) if bands > 1 else (False,)):
                    out = OUT[i % len(OUT)]
                    i += 1
                    yield pytest.param(dtype, bands, tiled, separate, out, id=(
                        f"{dtype}-{bands}b-{'tiled' if tiled else 'strips'}-"
                        f"{'separate' if separate else 'contig'}-{out}"))


@pytest.mark.parametrize("dtype,bands,tiled,separate,out", list(_layouts()))
def test_every_type_and_layout_is_exact(tmp_path, dtype, bands, tiled, separate, out):
    page = typed_image(sum(map(ord, dtype)) + bands, *SHAPE, bands, dtype)
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=tiled, separate=separate)
    assert np.array_equal(read_back(src), page)
    (got,), plan = run_tiled(tmp_path, src, CHAIN, 64, 64, compression=out)
    assert_identical(got, reference(page, CHAIN), f"{dtype} x {bands}")
    with tifffile.TiffFile(plan.spec.output) as tf:
        written = tf.pages[0]
        assert written.dtype == np.dtype(dtype) and written.samplesperpixel == bands
        want = PREDICTOR[np.dtype(dtype).kind] if out != "none" else 1
        assert int(written.predictor) == want
        photometric = "RGB" if bands == 3 else "MINISBLACK"
        assert written.photometric.name == photometric
        assert tuple(written.extrasamples) == (0,) * (bands - (3 if bands == 3 else 1))
    if out != "zstd" and np.dtype(dtype).itemsize < 8:  # what libvips reads (see test_bands)
        vips = pyvips.Image.new_from_file(plan.spec.output, fail=True).numpy()
        as_vips = got.astype(np.float32) if got.dtype == np.float16 else got
        assert vips.dtype == as_vips.dtype and np.array_equal(vips.reshape(got.shape), as_vips)


# --- every op x every type ----------------------------------------------------------------

PARAMS: dict[str, dict[str, Any]] = {
    "gaussian_blur": {"sigma": 2.2}, "median_blur": {"ksize": 5},
    "dilate": {"ksize": 4, "iterations": 2}, "erode": {"ksize": 3},
    "unsharp_mask": {"sigma": 1.5, "amount": 0.7}, "invert": {}, "gamma": {"gamma": 2.2},
    "threshold": {"value": 0.3}, "to_gray": {}, "equalize_hist": {}, "otsu_threshold": {},
    "normalize": {}, "percentile_stretch": {"p_low": 2, "p_high": 97},
    "clahe": {"cell": 16}, "canny": {"low": 20, "high": 60}, "downsample": {"factor": 2},
    "select_bands": {"bands": [2, 0]}, "normalized_difference": {"a": 1, "b": 2},
    "convert": {"dtype": "uint8", "in_range": [-1, 2]},
    "rotate": {"angle": 90}, "flip": {"axis": "vertical"},
    "crop": {"x": 3, "y": 5, "width": 150, "height": 101},
}
#: the types each op takes (docs/sample-types.md); every other one is refused
TAKES: dict[str, tuple[str, ...]] = {
    **{name: ALL for name in ("gaussian_blur", "median_blur", "dilate", "erode",
                              "unsharp_mask", "invert", "gamma", "threshold", "to_gray",
                              "normalize", "downsample", "select_bands",
                              "normalized_difference", "convert", "rotate", "flip",
                              "crop")},
    "equalize_hist": ("uint8",), "otsu_threshold": ("uint8", "uint16"), "canny": ("uint8",),
    "clahe": ("uint8", "uint16"),
    "percentile_stretch": ("uint8", "int8", "uint16", "int16"),
}
GRAY_ONLY = ("equalize_hist", "otsu_threshold", "clahe")
#: these have their own exactness tests for the types they take (test_global_ops.py,
#: test_band_ops.py, test_convert.py)
ELSEWHERE = ("clahe", "canny", "select_bands", "normalized_difference", "convert")


def test_every_op_is_in_the_table():
    assert set(PARAMS) == set(TAKES) == set(OPS) - {"custom"}


def _threshold_value(dtype: str) -> float:
    """A threshold inside the page's range (the value is in the type's units)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return 0.3
    info = np.iinfo(dt)
    return float(info.min) + 0.4 * (float(info.max) - float(info.min)) + 0.5


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_op_on_each_type(tmp_path, name, dtype):
    bands = 1 if name in GRAY_ONLY else 3
    params = dict(PARAMS[name])
    if name == "threshold":
        params["value"] = _threshold_value(dtype)
    ops = [{"op": name, **params}]
    page = typed_image(sum(map(ord, name + dtype)), *SHAPE, bands, dtype)
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=True, separate=False)
    out_tile = 32 if name == "downsample" else 64
    problems = plan_problems(tmp_path, src, ops, out_tile=out_tile)
    if dtype not in TAKES[name]:
        assert len(problems) == 1, problems
        why = problems[0]
        assert why.startswith(f"page 0: ops[0] ({name}): "), why
        assert dtype in why and " or ".join(TAKES[name]) in why, why
        return
    assert problems == []
    if name in ELSEWHERE:
        return
    (got,), _ = run_tiled(tmp_path, src, ops, 64, out_tile, compression="deflate")
    assert_identical(got, reference(page, ops), f"{name} on {dtype}")


@pytest.mark.parametrize("op", [{"op": "median_blur", "ksize": 5}, {"op": "dilate", "ksize": 3},
                                {"op": "erode", "ksize": 3, "iterations": 2}])
def test_float16_with_nan_is_opencv_on_float32(tmp_path, op):
    """float16 medians and morphology are OpenCV's on float32 (docs/sample-types.md), NaN
    included, where an exact median or maximum of the window is not defined."""
    page = typed_image(7, *SHAPE, 1, "float16")
    page[np.random.default_rng(7).random(page.shape) < 0.05] = np.nan
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=True, separate=False)
    (got,), _ = run_tiled(tmp_path, src, [op], 64, 64, compression="deflate")
    with np.errstate(over="ignore"):
        want = reference(page.astype(np.float32), [op]).astype(np.float16)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(reference(page, [op]), want)


@pytest.mark.parametrize("ops", [[{"op": "normalize"}], [{"op": "percentile_stretch"}],
                                 [{"op": "gaussian_blur", "sigma": 1.5}, {"op": "normalize"}]])
def test_statistics_over_more_bands_than_opencv_takes(tmp_path, ops):
    """130 bands (OpenCV takes 128 in one array): normalize and percentile_stretch take the
    page's statistics over all of them."""
    page = typed_image(9, 70, 90, 130, "uint16")
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=True, separate=False)
    (got,), _ = run_tiled(tmp_path, src, ops, 64, 64, compression="deflate")
    assert_identical(got, reference(page, ops), str(ops))


def plan_problems(tmp_path: Path, src: Path, ops: list[dict[str, Any]],
                  out_tile: int = 64) -> list[str]:
    spec = JobSpec(input=str(src), output=str(tmp_path / "never.tif"), ops=ops, tile=64,
                   output_options=OutputOptions(tile=out_tile))
    _, problems = plan_mod.make_plan(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    return list(map(str, problems))


@pytest.mark.parametrize("seed", range(4))
def test_otsu_of_uint16_is_opencvs(seed):
    from pipeline.core import stats as stats_mod

    rng = np.random.default_rng(seed)
    img = np.concatenate([rng.normal(9000 + 4000 * seed, 1500, 5000),
                          rng.normal(40000, 6000, 3000 + 1000 * seed)])
    img = np.clip(img, 0, 65535).astype(np.uint16).reshape(1, -1)
    t, _ = cv2.threshold(img, 0, 65535, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    assert stats_mod.otsu_threshold(stats_mod.histogram(img)) == t


@pytest.mark.parametrize(("dtype", "why"), [
    ("uint16", "for uint16 OpenCV's medianBlur takes ksize 3 or 5 only"),
    ("float16", "for float16 OpenCV's medianBlur takes ksize 3 or 5 only"),
    ("uint32", ("for uint32 its median is tiffpipe's own (OpenCV has none for it), up to "
                "ksize 5 as OpenCV's for other types")),
    ("float64", "for float64 its median is tiffpipe's own"),
])
def test_a_median_above_ksize_5_says_why_for_its_type(dtype: str, why: str):
    """median_blur's ksize above 5 is for uint8 only: the refusal said "OpenCV allows only
    ksize 3 or 5" for uint32, which OpenCV has no median for at all (tiffpipe's numpy
    median, capped as OpenCV's)."""
    from pipeline.core.ops import OPS

    problem = OPS["median_blur"].accepts({"ksize": 7}, np.dtype(dtype), 1)
    assert problem is not None and problem.startswith(
        f"median_blur with ksize 7 needs uint8 pixels ({why}")
    assert problem.endswith("use ksize <= 5, or convert to uint8 first")
    assert OPS["median_blur"].accepts({"ksize": 5}, np.dtype(dtype), 1) is None
