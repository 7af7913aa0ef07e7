"""Sample types and bands end to end: one manifest run on the local engine with good and
refused jobs side by side, outputs read back with tifffile and libvips, pyramid levels of
64-bit and float16 pages, the photometric and ExtraSamples written, previews of
multispectral pages."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pyvips
import tifffile
from sample_types_ref import reference, typed_image
from test_sample_types import read_back, write_bands

from pipeline.adapters.metadata import photometric_of
from pipeline.preview import thumbnail
from pipeline.runner import run_local

pytestmark = pytest.mark.timeout(600)

BLUR = [{"op": "gaussian_blur", "sigma": 1.5}]

#: name -> (dtype, bands, layout, ops, output options); all succeed
GOOD: dict[str, tuple[str, int, dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = {
    "int16_5b_strips_separate": ("int16", 5, {"tiled": False, "separate": True},
                                 [*BLUR, {"op": "percentile_stretch"}],
                                 {"compression": "deflate", "pyramid": True}),
    "float64_8b_tiled": ("float64", 8, {"tiled": True, "separate": False},
                         [*BLUR, {"op": "normalize"}], {"compression": "lzw", "pyramid": True}),
    "uint32_3b_downsample": ("uint32", 3, {"tiled": True, "separate": True},
                             [{"op": "unsharp_mask", "sigma": 2}, {"op": "downsample",
                                                                  "factor": 2}],
                             {"compression": "zstd", "tile": 32}),
    "int64_5b_copy": ("int64", 5, {"tiled": False, "separate": False}, [],
                      {"compression": "zstd", "pyramid": True}),
    "float16_1b": ("float16", 1, {"tiled": True, "separate": False},
                   [{"op": "median_blur", "ksize": 5}, {"op": "threshold", "value": 0.5}],
                   {"compression": "none", "pyramid": True}),
}
#: name -> (dtype, bands, ops, output options, words the one-line message must hold)
REFUSED: dict[str, tuple[str, int, list[dict[str, Any]], dict[str, Any], tuple[str, ...]]] = {
    "to_gray_5b": ("uint8", 5, [{"op": "to_gray"}], {},
                   ("page 0", "to_gray", "1 to 4 bands", "the page has 5 bands")),
    "canny_8b": ("uint8", 8, [{"op": "canny", "low": 10, "high": 30}], {},
                 ("page 0", "canny needs 1 to 4 bands", "the page has 8 bands")),
    "clahe_5b": ("uint16", 5, [{"op": "clahe", "cell": 16}], {},
                 ("page 0", "clahe needs 1 channel(s), the page has 5", "no gray version")),
    "equalize_int16": ("int16", 1, [{"op": "equalize_hist"}], {},
                       ("page 0", "equalize_hist needs uint8 pixels, the page has int16")),
    "stretch_float32": ("float32", 3, [{"op": "percentile_stretch"}], {},
                        ("page 0", "percentile_stretch", "float32", "use normalize")),
    "jpeg_5b": ("uint8", 5, [], {"compression": "jpeg"},
                ("page 0", "jpeg output needs 1 or 3 bands", "has 5", "gray or RGB only")),
    "jpeg_int16": ("int16", 3, BLUR, {"compression": "jpeg"},
                   ("page 0", "jpeg output needs uint8 pixels", "int16")),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bands")
    jobs, pages = [], {}
    cases = [(n, dt, b, lay, ops, out) for n, (dt, b, lay, ops, out) in GOOD.items()] + \
        [(n, dt, b, {"tiled": True, "separate": False}, ops, out)
         for n, (dt, b, ops, out, _) in REFUSED.items()]
    for i, (name, dtype, bands, lay, ops, out) in enumerate(cases):
        page = typed_image(i, 150, 230, bands, dtype)
        write_bands(root / f"{name}.tif", page, **lay)
        pages[name] = page
        jobs.append({"input": str(root / f"{name}.tif"), "output": str(root / f"{name}.out.tif"),
                     "ops": ops, "tile": 64, "output_options": {"tile": 64, **out}})
    (root / "m.json").write_text(json.dumps({"jobs": jobs}))
    result = run_local(str(root / "m.json"), 2)
    assert result.report is not None, result.error
    by_name = dict(zip([c[0] for c in cases], result.report["jobs"], strict=True))
    return SimpleNamespace(jobs=by_name, pages=pages, root=root)


@pytest.mark.parametrize("name", list(GOOD))
def test_good_jobs_are_exact(run, name):
    job = run.jobs[name]
    assert job["status"] == "SUCCEEDED", json.dumps(job, indent=1)
    dtype, bands, _, ops, _ = GOOD[name]
    got = read_back(Path(job["output"]))
    want = reference(run.pages[name], ops)
    assert got.dtype == want.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape[2:] == ((bands,) if bands > 1 else ()), got.shape
    assert np.array_equal(got, want), name


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_jobs_say_why_in_one_line(run, name):
    job = run.jobs[name]
    assert job["status"] == "FAILED", json.dumps(job, indent=1)
    message = job["error"]["message"]
    assert job["error"]["type"] == "OperationError" and "\n" not in message, message
    assert job["input"] in message, message
    for words in REFUSED[name][-1]:
        assert words in message, (words, message)
    assert not Path(job["output"]).exists()


def reduce_reference(level: np.ndarray) -> np.ndarray:
    """The documented 2 x 2 reduction, block by block: the mean of the n pixels present,
    integers ``(s + n // 2) // n`` in Python integers; floats ``s / n`` in float64, ``s``
    summed in the order p00, p10, p01, p11 of the pixels present, cast back."""
    h, w = level.shape[:2]
    out = np.empty(((h + 1) // 2, (w + 1) // 2, *level.shape[2:]), level.dtype)
    exact = level.astype(np.float64 if level.dtype.kind == "f" else object)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            present = [exact[2 * y + dy, 2 * x + dx] for dx in (0, 1) for dy in (0, 1)
                       if 2 * y + dy < h and 2 * x + dx < w]
            s = present[0]
            for v in present[1:]:
                s = s + v
            out[y, x] = s / len(present) if level.dtype.kind == "f" else (
                (s + len(present) // 2) // len(present))
    return out


@pytest.mark.parametrize("name", [n for n, case in GOOD.items() if case[4].get("pyramid")])
def test_pyramid_levels_of_every_type(run, name):
    with tifffile.TiffFile(run.jobs[name]["output"]) as tf:
        base = tf.pages[0]
        levels = [base.asarray()] + [sub.asarray() for sub in base.pages]
    assert len(levels) == 3  # 150 x 230 in 64 px tiles: 75 x 115, then 38 x 58
    for k in range(1, len(levels)):
        assert levels[k].dtype == levels[0].dtype
        assert np.array_equal(levels[k], reduce_reference(levels[k - 1]), equal_nan=True), k


def vips_pixels(path: str) -> np.ndarray:
    image = pyvips.Image.new_from_file(path, fail=True, access="sequential")
    return image.numpy()


@pytest.mark.parametrize("name", ["int16_5b_strips_separate", "float16_1b"])
def test_libvips_reads_the_outputs_identically(run, name):
    """libvips (through libtiff) reads 8 to 32-bit samples and float16 (as float32, exactly);
    it refuses 64-bit samples, and this pyvips wheel lacks zstd: deflate, LZW and none here."""
    path = run.jobs[name]["output"]
    got = read_back(Path(path))
    vips = vips_pixels(path).reshape(got.shape)
    want_dtype = np.float32 if got.dtype == np.float16 else got.dtype
    assert vips.dtype == want_dtype and np.array_equal(vips, got.astype(want_dtype))


def test_libvips_refuses_64_bit_samples(run):
    with pytest.raises(pyvips.Error, match="samples out of range"):
        vips_pixels(run.jobs["float64_8b_tiled"]["output"])


def test_photometric_and_extra_samples(run):
    with tifffile.TiffFile(run.jobs["float64_8b_tiled"]["output"]) as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert page.samplesperpixel == 8 and tuple(page.extrasamples) == (0,) * 7
        assert page.predictor == 3
    with tifffile.TiffFile(run.jobs["uint32_3b_downsample"]["output"]) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tf.pages[0].predictor == 2


@pytest.mark.parametrize("photometric,channels,extras,out,want", [
    ("rgb", 5, [2, 0], 5, ("rgb", [2, 0])),  # RGB + alpha + one more band: kept
    ("rgb", 4, [1], 4, ("rgb", [1])),  # RGBA (associated): kept
    ("rgb", 4, [], 4, ("rgb", [2])),  # RGBA without a valid tag: alpha
    ("minisblack", 4, [0, 0, 0], 4, ("minisblack", [0, 0, 0])),  # 4-band multispectral
    ("minisblack", 3, [0, 0], 3, ("rgb", None)),  # 3 bands: RGB (what JPEG output needs)
    ("minisblack", 13, [], 13, ("minisblack", [0] * 12)),  # Sentinel-2
    ("minisblack", 2, [2], 2, ("minisblack", [2])),  # gray + alpha
    ("rgb", 5, [0, 0], 1, ("minisblack", None)),  # to_gray
    ("minisblack", 8, [0] * 7, 1, ("minisblack", None)),
])
def test_photometric_of(photometric, channels, extras, out, want):
    info = SimpleNamespace(photometric=photometric, channels=channels, extrasamples=extras)
    assert photometric_of(info, out) == want


def test_rgb_with_extra_bands_is_processed_and_stays_rgb(tmp_path):
    from test_exactness import run_tiled

    page = typed_image(3, 100, 130, 5, "uint16")
    src = tmp_path / "rgbx.tif"
    tifffile.imwrite(src, page, photometric="rgb", extrasamples=[2, 0], tile=(32, 32),
                     compression="zlib", metadata=None)
    (got,), plan = run_tiled(tmp_path, src, BLUR, 64, 64, compression="deflate")
    assert np.array_equal(got, reference(page, BLUR))
    with tifffile.TiffFile(plan.spec.output) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tuple(tf.pages[0].extrasamples) == (2, 0)


@pytest.mark.parametrize("dtype", ["int16", "float64", "uint64"])
def test_preview_shows_the_first_three_bands(tmp_path, dtype):
    dt = np.dtype(dtype)
    hi, lo = (np.iinfo(dt).max, np.iinfo(dt).min) if dt.kind in "ui" else (1.0, 0.0)
    page = np.zeros((90, 120, 6), dt)
    page[..., 0], page[..., 1], page[..., 2] = hi, lo, hi  # magenta
    page[..., 3:] = typed_image(1, 90, 120, 3, dtype)  # bands beyond the third: not shown
    src = tmp_path / "ms.tif"
    write_bands(src, page, tiled=True, separate=True)
    rgb = np.asarray(thumbnail(str(src), 0, 60).image)
    assert rgb.shape == (45, 60, 3)
    assert (rgb == [255, 0, 255]).all()


@pytest.mark.parametrize("dtype,bands,ops", [
    ("int32", 4, [{"op": "to_gray"}]),  # RGBA of a type cvtColor lacks: alpha ignored
    ("float64", 2, [{"op": "to_gray"}, {"op": "gamma", "gamma": 0.5}]),  # gray + alpha
    ("int16", 600, [{"op": "gaussian_blur", "sigma": 1}, {"op": "median_blur", "ksize": 3},
                    {"op": "dilate"}]),  # more bands than OpenCV holds: band by band
])
def test_other_band_counts(tmp_path, dtype, bands, ops):
    from test_exactness import run_tiled

    page = typed_image(bands, 40, 70, bands, dtype)
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=False, separate=bands == 600,
                photometric="rgb" if bands == 4 else None,
                extrasamples=[2] if bands == 2 else None)  # (gray + alpha: an alpha band)
    (got,), _ = run_tiled(tmp_path, src, ops, 32, 32, compression="zstd")
    want = reference(page, ops)
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64", "uint32"])
@pytest.mark.parametrize("name", ["gaussian_blur", "median_blur", "dilate", "erode",
                                  "unsharp_mask", "invert", "gamma", "threshold"])
def test_band_by_band_is_the_same_as_all_bands_at_once(name, dtype):
    """What lets an op run band by band beyond OpenCV's 128 channels: on 8 bands, the op on
    all of them at once equals the op on each one. (Not so for downsample: cv2.resize
    INTER_AREA rounds differently by channel count, see docs/sample-types.md.)"""
    from test_sample_types import PARAMS, _threshold_value

    from pipeline.core.ops import chain_from_json

    params = {**PARAMS[name], **({"value": _threshold_value(dtype)} if name == "threshold"
                                 else {}), **({"ksize": 3} if name == "median_blur" else {})}
    (call,) = chain_from_json([{"op": name, **params}])
    page = typed_image(7, 50, 64, 8, dtype)
    whole = call.op.apply(page, call.params)
    bands = np.dstack([call.op.apply(np.ascontiguousarray(page[:, :, c]), call.params)
                       for c in range(8)])
    assert np.array_equal(whole, bands)


@pytest.mark.parametrize("ksize", [3, 5])
def test_numpy_median_in_bands_of_rows(monkeypatch, ksize):
    """The median of types medianBlur lacks is computed a band of rows at a time (bounded
    memory): the same as the median of every window at once."""
    from sample_types_ref import shifted

    from pipeline.core import dtypes

    monkeypatch.setattr(dtypes, "MEDIAN_BAND_PIXELS", 3 * 57)  # bands of 3 rows
    img = typed_image(ksize, 41, 57, 1, "int64")
    want = np.sort(np.stack(shifted(img, ksize, None)), axis=0)[ksize * ksize // 2]
    assert np.array_equal(dtypes.window_median(img, ksize), want)
