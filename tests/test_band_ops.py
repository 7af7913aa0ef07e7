"""``select_bands`` and ``normalized_difference``: the op functions against numpy written out
here, the checks that refuse a band a page does not have (at plan time, naming the page),
the tiled path (split -> [stats] -> process -> merge, in-process as in test_exactness.py)
bit-identical to the whole page, the output's photometric, ExtraSamples, sample type and
no-data tag, and the metadata rules a selection of bands changes (ICC, OME Channel).
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from conftest import UINT16_TO_UINT8
from sample_types_ref import ALL, ref_op, typed_image
from test_exactness import run_tiled
from test_nodata_filters import reference_blur
from test_sample_types import plan_problems, write_bands

from pipeline.adapters.metadata import ome_channel, ome_name, output_tags, photometric_of
from pipeline.adapters.tiff_read import read_infos
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.core.ops import (
    apply_chain,
    chain_bands,
    chain_from_json,
    chain_own_nodata,
    chain_problems,
    parse_chain,
)
from pipeline.runner import run_local
from pipeline.steps.planning import plan_pages

SHAPE = (150, 230)

# --- the reference: numpy, written out ------------------------------------------------


def nd_reference(page: np.ndarray, a: int, b: int, nodata: float | None = None) -> np.ndarray:
    """(a - b) / (a + b) in float64, as float32; 0 where a + b == 0; NaN where a or b is
    ``nodata``."""
    x, y = page[:, :, a], page[:, :, b]
    num, den = x.astype(np.float64) - y, x.astype(np.float64) + y
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (num / den).astype(np.float32)
    out[den == 0] = 0
    if nodata is not None:
        out[(x == nodata) | (y == nodata)] = np.nan
    return out


def reference(page: np.ndarray, ops: list[dict[str, Any]],
              nodata: float | None = None) -> np.ndarray:
    img = page
    for p in ops:
        if p["op"] == "select_bands":
            img = img[:, :, None] if img.ndim == 2 else img
            img = np.ascontiguousarray(img[:, :, p["bands"]])
            img = img[:, :, 0] if img.shape[2] == 1 else img
        elif p["op"] == "normalized_difference":
            img = nd_reference(img, p["a"], p["b"], nodata)
            nodata = np.nan  # (its own no-data value, whatever the input's)
        elif p["op"] == "gaussian_blur" and nodata is not None:  # (of the data alone)
            valid = ~np.isnan(img) if np.isnan(nodata) else img != nodata
            img = np.where(valid, reference_blur(img, p["sigma"], valid), img)
        elif p["op"] == "canny":
            img = cv2.Canny(img, p["low"], p["high"])
        else:
            img = ref_op(img, p)
    return img


def same(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Equal dtype, shape and values (NaN where NaN is)."""
    assert (got.dtype, got.shape) == (want.dtype, want.shape), what
    np.testing.assert_array_equal(got, want, err_msg=what)


# --- the op functions -----------------------------------------------------------------


def test_select_bands_picks_in_order_with_repeats():
    img = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    for bands in ([3, 2, 1], [0], [5, 5, 0, 1], [1, 0]):
        out = apply_chain(img, chain_from_json([{"op": "select_bands", "bands": bands}]))
        want = img[:, :, bands] if len(bands) > 1 else img[:, :, bands[0]]
        same(out, want, str(bands))
        assert out.flags.c_contiguous
    gray = img[:, :, 0].copy()
    same(apply_chain(gray, chain_from_json([{"op": "select_bands", "bands": [0, 0]}])),
         np.dstack([gray, gray]))


def test_band_indices_written_as_whole_floats_are_indices():
    """JSON has one number type: ``"bands": [2.0, 0]`` (a manifest written by a script whose
    numbers are floats) is valid, as ``"ksize": 3.0`` is, and must pick bands 2 and 0. It
    passed validation, then failed every tile with numpy's IndexError (only integers are
    indices), reported as the platform's fault."""
    img = np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3)
    [call] = chain_from_json([{"op": "select_bands", "bands": [2.0, 0]}])
    assert call.params["bands"] == [2, 0] and all(type(b) is int for b in call.params["bands"])
    same(apply_chain(img, [call]), img[:, :, [2, 0]])
    same(apply_chain(img, chain_from_json([{"op": "select_bands", "bands": [1.0]}])),
         img[:, :, 1])


@pytest.mark.parametrize("dtype", ALL)
def test_normalized_difference_on_every_type(dtype):
    img = typed_image(3, 40, 50, 4, dtype)
    img[:5, :5, 1] = img[:5, :5, 2] = 0  # a + b == 0 -> 0
    out = apply_chain(img, chain_from_json([{"op": "normalized_difference", "a": 1, "b": 2}]))
    same(out, nd_reference(img, 1, 2), dtype)
    assert (out[:5, :5] == 0).all()


def test_normalized_difference_zero_sum_nodata_and_nan():
    a = np.array([[0, 10, -5, 7, 3]], np.float32)
    b = np.array([[0, 10, 5, -9999, np.nan]], np.float32)
    img = np.dstack([a, b])
    p = {"a": 0, "b": 1}
    [op] = chain_from_json([{"op": "normalized_difference", **p}])
    out = op.op.apply(img, {**p, "input_nodata": -9999})
    np.testing.assert_array_equal(out, [[0, 0, 0, np.nan, np.nan]])  # -5 + 5 == 0: 0 too
    assert op.op.apply(img, {**p, "input_nodata": None})[0, 3] == \
        np.float32((7 + 9999) / (7 - 9999))
    ints = np.dstack([np.array([[200, 0, 255]], np.uint8), np.array([[100, 0, 0]], np.uint8)])
    np.testing.assert_array_equal(op.op.apply(ints, {**p, "input_nodata": 0}),
                                  np.array([[1 / 3, np.nan, np.nan]], np.float32))


# --- validation: the manifest, then the plan ------------------------------------------


@pytest.mark.parametrize("op,problem", [
    ({"op": "select_bands"}, "ops[0].bands: required, a list of one or more band indices"),
    ({"op": "select_bands", "bands": []}, "got []"),
    ({"op": "select_bands", "bands": [1, -1]}, "got [1, -1]"),
    ({"op": "select_bands", "bands": 2}, "got 2"),
    ({"op": "select_bands", "bands": [0.5]}, "got [0.5]"),
    ({"op": "normalized_difference", "a": 3}, "ops[0].b: required"),
    ({"op": "normalized_difference", "a": 2, "b": 2}, "ops[0]: a and b must be different bands"),
    ({"op": "normalized_difference", "a": -1, "b": 2}, "ops[0].a: expected an integer >= 0"),
])
def test_manifest_problems(op, problem):
    calls, problems = parse_chain([op])
    assert calls == [] and len(problems) == 1 and problem in problems[0], problems


def test_a_band_a_one_band_page_lacks_is_refused_in_its_words():
    chain = chain_from_json([{"op": "select_bands", "bands": [2, 0]}])
    assert chain_problems(chain, np.dtype("uint16"), 1) == [
        "ops[0] (select_bands): bands[0] is 2, the page has 1 band (index 0); pick band 0"]


def test_a_band_the_page_lacks_is_refused_by_name():
    chain = chain_from_json([{"op": "select_bands", "bands": [3, 7, 0]},
                             {"op": "normalized_difference", "a": 0, "b": 3}])
    assert chain_problems(chain, np.dtype("uint16"), 4) == [
        ("ops[0] (select_bands): bands[1] is 7, the page has 4 band(s) (indices 0 to 3); "
         "pick bands from 0 to 3"),
        ("ops[1] (normalized_difference): b is 3, the page has 3 band(s) (indices 0 to 2); "
         "pick bands from 0 to 2")]
    # the ops after a normalized_difference see one float32 band
    after = chain_from_json([{"op": "normalized_difference", "a": 0, "b": 1},
                             {"op": "equalize_hist"}])
    assert chain_problems(after, np.dtype("uint8"), 2) == [
        ("ops[1] (equalize_hist): equalize_hist needs uint8 pixels, the page has float32 "
         "after ops[0] (normalized_difference) (OpenCV's equalizeHist is 8-bit only); put "
         '{"op": "convert", "dtype": "uint8"} before it, with an "in_range" on float pages (or '
         "use normalize, or percentile_stretch on 8 and 16-bit pages, instead)")]
    # on a float32 page of its own, the type is the page's
    assert chain_problems(chain_from_json([{"op": "canny", "low": 1, "high": 2}]),
                          np.dtype("float32"), 1) == [
        ("ops[0] (canny): canny needs uint8 pixels, the page has float32 (OpenCV's Canny is "
         '8-bit only); put {"op": "convert", "dtype": "uint8"} before it, with an "in_range" '
         "on float pages")]


def test_plan_job_refuses_before_any_pixel(tmp_path):
    src = tmp_path / "s2.tif"
    write_bands(src, typed_image(1, 64, 64, 5, "uint16"), tiled=True, separate=False)
    problems = plan_problems(tmp_path, src, [{"op": "normalized_difference", "a": 7, "b": 3}])
    assert problems == [("page 0: ops[0] (normalized_difference): a is 7, the page has 5 "
                        "band(s) (indices 0 to 4); pick bands from 0 to 4")]
    cmyk = tmp_path / "cmyk.tif"
    tifffile.imwrite(cmyk, typed_image(2, 64, 64, 4, "uint8"), photometric="separated",
                     metadata=None)
    [why] = plan_problems(tmp_path, cmyk, [{"op": "select_bands", "bands": [3]}])
    assert why.startswith("page 0: ops[0] (select_bands): select_bands needs gray or RGB, "
                          "the page is CMYK"), why


def _jpeg_problems(tmp_path, src, ops: list[dict[str, Any]]) -> list[str]:
    """What PlanJob refuses of a JPEG output of ``src`` through ``ops`` (the output too)."""
    spec = JobSpec(input=str(src), output=str(tmp_path / "never.tif"), ops=ops, tile=64,
                   output_options=OutputOptions(tile=64, compression="jpeg"))
    return list(map(str, plan_pages(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)[1]))


def test_jpeg_of_other_band_counts_names_the_select_bands_that_fits(tmp_path):
    """JPEG holds 1 or 3 bands: a page of 2, 4 or 5 is refused with the select_bands that
    keeps a count JPEG holds (a gray + alpha page's gray, an RGBA page's RGB), which then
    runs; a CMYK page, which select_bands refuses, is told to choose another codec."""
    fix = {2: '{"op": "select_bands", "bands": [0]}',
           4: '{"op": "select_bands", "bands": [0, 1, 2]}'}
    for channels, photometric, keep in ((2, None, [0]), (4, "rgb", [0, 1, 2]),
                                        (5, None, [0, 1, 2])):
        src = tmp_path / f"b{channels}.tif"
        write_bands(src, typed_image(1, 64, 64, channels, "uint8"), tiled=True,
                    separate=False, photometric=photometric)
        [why] = _jpeg_problems(tmp_path, src, [])
        assert why == (f"page 0: jpeg output needs 1 or 3 bands (channels), the output has "
                       f"{channels}: JPEG holds gray or RGB only; add "
                       f"{fix.get(channels, fix[4])} to the ops (or the bands you want, 1 or 3)"
                       ", or choose zstd, deflate, lzw or none"), why
        assert _jpeg_problems(tmp_path, src, [{"op": "select_bands", "bands": keep}]) == []
    cmyk = tmp_path / "cmyk.tif"
    tifffile.imwrite(cmyk, typed_image(2, 64, 64, 4, "uint8"), photometric="separated",
                     metadata=None)
    assert _jpeg_problems(tmp_path, cmyk, []) == [
        ("page 0: jpeg output needs 1 or 3 bands (channels), the output has 4: JPEG holds gray "
         "or RGB only (a CMYK page: choose zstd, deflate, lzw or none)")]


def test_jpeg_of_the_wrong_type_and_band_count_says_both(tmp_path):
    """A 13-band uint16 page to JPEG: both problems in one refusal (not the type, then the
    band count once a convert is added), with the ops that fix both, which then run; a CMYK
    page of uint16 is told to choose another codec."""
    src = tmp_path / "s2.tif"
    write_bands(src, typed_image(1, 64, 64, 13, "uint16"), tiled=True, separate=False)
    assert _jpeg_problems(tmp_path, src, []) == [
        ("page 0: jpeg output needs uint8 pixels and 1 or 3 bands (channels), the output is "
         "uint16 with 13 bands: JPEG holds gray or RGB of 8 bits only; add "
         '{"op": "select_bands", "bands": [0, 1, 2]} to the ops (or the bands you want, 1 or '
         '3) and end them with ' + UINT16_TO_UINT8 + ", or choose zstd, deflate, lzw or none")]
    fixed = [{"op": "select_bands", "bands": [0, 1, 2]}, {"op": "convert", "dtype": "uint8"}]
    assert _jpeg_problems(tmp_path, src, fixed) == []
    cmyk = tmp_path / "cmyk16.tif"
    tifffile.imwrite(cmyk, typed_image(2, 64, 64, 4, "uint16"), photometric="separated",
                     metadata=None)
    assert _jpeg_problems(tmp_path, cmyk, []) == [
        ("page 0: jpeg output needs uint8 pixels and 1 or 3 bands (channels), the output is "
         "uint16 with 4 bands: JPEG holds gray or RGB of 8 bits only (a CMYK page: choose "
         "zstd, deflate, lzw or none)")]


# --- the tiled path is the whole page ---------------------------------------------------

ND = {"op": "normalized_difference", "a": 3, "b": 0}
BLUR = {"op": "gaussian_blur", "sigma": 1.5}

#: (id, dtype, bands, ops, run_tiled options)
CASES = [
    ("false-colour-uint16", "uint16", 5, [{"op": "select_bands", "bands": [3, 2, 1]}], {}),
    ("one-band-int8", "int8", 4, [{"op": "select_bands", "bands": [2]}, BLUR], {}),
    ("repeats-float64-split", "float64", 3, [{"op": "select_bands", "bands": [2, 2, 0, 1, 0]},
                                             {"op": "dilate", "ksize": 3}], {"fuse": False}),
    ("select-then-gray-uint8", "uint8", 6, [{"op": "select_bands", "bands": [4, 1, 0]},
                                            {"op": "to_gray"}], {"units": "tiny"}),
    ("select-canny-uint8", "uint8", 5, [{"op": "select_bands", "bands": [1]},
                                        {"op": "canny", "low": 20, "high": 60}], {}),
    ("select-downsample-uint64", "uint64", 4, [{"op": "select_bands", "bands": [0, 3]},
                                               {"op": "downsample", "factor": 2}], {}),
    *[(f"nd-{dt}", dt, 4, [ND], {}) for dt in ALL],
    ("nd-blur-uint16", "uint16", 4, [ND, BLUR], {"units": "small"}),
    ("blur-nd-uint8-split", "uint8", 4, [BLUR, ND], {"fuse": False}),
    ("nd-normalize-int16", "int16", 4, [ND, {"op": "normalize"}], {}),
    ("select-nd-median-float32", "float32", 6,
     [{"op": "select_bands", "bands": [5, 1]}, {"op": "normalized_difference", "a": 0, "b": 1},
      {"op": "median_blur", "ksize": 5}], {"units": "tiny"}),
]


@pytest.mark.parametrize("dtype,bands,ops,opts", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_tiled_equals_whole_page(tmp_path, dtype, bands, ops, opts):
    page = typed_image(sum(map(ord, dtype)) + bands, *SHAPE, bands, dtype)
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=True, separate=bands % 2 == 0)
    out_tile = 32 if any(op["op"] == "downsample" for op in ops) else 64
    (got,), plan = run_tiled(tmp_path, src, ops, 64, out_tile, compression="deflate", **opts)
    want = reference(page, ops)
    same(got, want, str(ops))
    assert plan.pages[0].out_dtype == want.dtype.name
    assert plan.pages[0].out_channels == (1 if want.ndim == 2 else want.shape[2])


def test_multi_page_of_different_band_counts(tmp_path):
    """Each page's own bands; a page of another sample type gets the same float32 index."""
    pages = [typed_image(1, 100, 140, 4, "uint16"), typed_image(2, 70, 90, 3, "uint16"),
             typed_image(3, 64, 200, 8, "uint16")]
    src = tmp_path / "multi.tif"
    with tifffile.TiffWriter(src) as tw:
        for p in pages:
            tw.write(p, photometric="rgb" if p.shape[2] == 3 else "minisblack",
                     extrasamples=[0] * (p.shape[2] - (3 if p.shape[2] == 3 else 1)),
                     tile=(32, 32), metadata=None)
    ops = [{"op": "select_bands", "bands": [2, 0]}, {"op": "normalized_difference",
                                                      "a": 0, "b": 1}, BLUR]
    got, _plan = run_tiled(tmp_path, src, ops, 64, 64, units="small")
    for i, (out, page) in enumerate(zip(got, pages, strict=True)):
        same(out, reference(page, ops), f"page {i}")


# --- the written page: photometric, extra samples, no-data ------------------------------


def _info(channels: int, photometric: str = "minisblack", extras: tuple[int, ...] = (),
          **metadata: Any) -> SimpleNamespace:
    return SimpleNamespace(channels=channels, photometric=photometric, extrasamples=extras,
                           metadata=metadata, height=10, width=10, dtype="uint16")


@pytest.mark.parametrize("photometric,channels,extras,bands,want", [
    ("minisblack", 13, (0,) * 12, (3, 2, 1), ("rgb", None)),  # a false-colour composite
    ("minisblack", 13, (0,) * 12, (7,), ("minisblack", None)),
    ("minisblack", 13, (0,) * 12, (3, 2, 1, 7), ("minisblack", [0, 0, 0])),  # never RGBA
    ("rgb", 4, (2,), (0, 1, 2), ("rgb", None)),  # RGBA -> RGB: the alpha dropped
    ("rgb", 4, (2,), (2, 1, 0, 3), ("rgb", [2])),  # BGR + alpha: the alpha stays alpha
    ("rgb", 4, (1,), (0, 3), ("minisblack", [1])),  # gray + (associated) alpha
    ("rgb", 3, (), (0, 1), ("minisblack", [0])),  # green is no alpha
    ("rgb", 4, (2,), (3, 0, 1, 2), ("minisblack", [0, 0, 0])),  # alpha first: not RGB
    ("rgb", 5, (2, 0), (0, 1, 2, 4, 3), ("rgb", [0, 2])),
    ("minisblack", 2, (2,), (1, 0), ("minisblack", [0])),
    ("rgb", 3, (), (0, 1, 2), ("rgb", None)),  # all bands in order: as without the op
])
def test_photometric_of_a_selection(photometric, channels, extras, bands, want):
    assert photometric_of(_info(channels, photometric, extras), len(bands), bands) == want


def test_chain_bands_and_own_nodata():
    sel = {"op": "select_bands", "bands": [3, 2, 1]}
    assert chain_bands([sel, BLUR, {"op": "select_bands", "bands": [2, 0]}], 5) == (1, 3)
    assert chain_bands([BLUR], 4) == (0, 1, 2, 3)
    assert chain_bands([{"op": "to_gray"}, {"op": "select_bands", "bands": [0, 0, 0]}], 3) \
        is None
    assert chain_bands([ND], 4) is None
    assert np.isnan(chain_own_nodata([ND])) and np.isnan(chain_own_nodata([sel, ND, BLUR]))
    assert chain_own_nodata([ND, {"op": "gamma", "gamma": 2}]) is None  # values remapped
    assert chain_own_nodata([sel, BLUR]) is None


def test_icc_and_ome_channel_follow_the_selection():
    icc = "A" * 200  # (base64: 150 bytes; the colour space is never 'RGB')
    ome = {"samples": 3, "name": "img - RGB", "image_name": "img", "channel": {"Name": "RGB"}}
    info = _info(3, "rgb", ome=ome, icc=icc)
    same_bands = (0, 1, 2)
    assert ome_channel(info, 3, same_bands) == {"Name": "RGB"} == ome_channel(info, 3)
    assert ome_name(info, 3, same_bands) == "img - RGB"
    for bands in ((2, 1, 0), (0, 0, 0), (0, 1)):
        assert ome_channel(info, len(bands), bands) is None, bands
        assert ome_name(info, len(bands), bands) == "img", bands
    import pipeline.adapters.metadata as md

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(md, "icc_space", lambda profile: "RGB")
        assert "iccprofile" in output_tags(info, 10, 10, 3, bands=(0, 1, 2))
        assert "iccprofile" not in output_tags(info, 10, 10, 3, bands=(2, 1, 0))


def _nodata_tag(tags: dict[str, Any]) -> bytes | None:
    found = [t[3] for t in tags.get("extratags", []) if t[0] == 42113]
    return found[0] if found else None


def test_output_tags_write_the_chains_own_nodata():
    text = b"0\x00"
    import binascii

    tag = [42113, 2, len(text), binascii.b2a_base64(text, newline=False).decode()]
    info = _info(4, tags=[tag])
    assert _nodata_tag(output_tags(info, 10, 10, 4, True)) == text
    assert _nodata_tag(output_tags(info, 10, 10, 1, False)) is None
    assert _nodata_tag(output_tags(info, 10, 10, 1, False, own_nodata=float("nan"))) == b"nan"


def test_written_pages_and_nodata(tmp_path):
    """Through the real steps: an RGBA page's alpha kept as alpha behind its swapped colours;
    a uint16 scene with GDAL_NODATA 0: its index is NaN where a band is 0, and the output
    says GDAL_NODATA nan (a blur after it of the index's valid samples alone: NaN stays
    where it is); a selection keeps the input's no-data value."""
    rgba = typed_image(5, *SHAPE, 4, "uint8")
    src = tmp_path / "rgba.tif"
    tifffile.imwrite(src, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(32, 32),
                     metadata=None)
    ops = [{"op": "select_bands", "bands": [2, 1, 0, 3]}]
    (got,), plan = run_tiled(tmp_path, src, ops, 64, 64)
    same(got, rgba[:, :, [2, 1, 0, 3]])
    with tifffile.TiffFile(plan.spec.output) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tuple(tf.pages[0].extrasamples) == (2,)

    scene = typed_image(6, *SHAPE, 4, "uint16")
    scene[:40, :70] = 0  # no data in every band
    scene[100:, 200:, 3] = 0  # no data in band 3 only
    src = tmp_path / "scene.tif"
    tifffile.imwrite(src, scene, photometric="minisblack", extrasamples=[0, 0, 0],
                     tile=(32, 32), metadata=None, extratags=[(42113, "s", 0, "0", True)])
    for ops, nodata in (([ND, BLUR], b"nan"), ([{"op": "select_bands", "bands": [3, 2, 1]}],
                                               b"0\x00")):
        (got,), plan = run_tiled(tmp_path, src, ops, 64, 64, fuse=False)
        want = reference(scene, ops, nodata=0)
        same(got, want, str(ops))
        with tifffile.TiffFile(plan.spec.output) as tf:
            assert tf.pages[0].tags[42113].value.encode() == nodata.rstrip(b"\x00")
            assert tf.pages[0].dtype == want.dtype
            if want.ndim == 2:
                assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    nan = np.isnan(reference(scene, [ND], nodata=0))
    assert nan[:40, :70].all() and nan[100:, 200:].all()
    assert np.array_equal(nan, (scene[:, :, 3] == 0) | (scene[:, :, 0] == 0)) and not nan.all()



@pytest.mark.engine
def test_a_run_with_pyramids_and_a_contact_sheet(tmp_path):
    """Through the local engine: a fused and a split job, with pyramid levels, and the
    contact sheet's thumbnails of float32 and selected-band outputs; the levels are the
    2 x 2 means of the page (NaN left out of them, as GDAL's overviews leave no-data out)."""
    scene = typed_image(8, 300, 260, 5, "uint16")
    src = tmp_path / "s.tif"
    write_bands(src, scene, tiled=True, separate=True)
    jobs = {"ndvi": [ND], "false_colour": [{"op": "select_bands", "bands": [4, 2, 0]}, BLUR]}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": str(src), "output": str(tmp_path / f"{name}.tif"), "ops": ops, "tile": 128,
         "fuse": name == "ndvi", "output_options": {"tile": 32, "pyramid": True}}
        for name, ops in jobs.items()]}))
    result = run_local(str(manifest), 2, contact_sheet=True)
    assert result.ok, result.report
    assert (tmp_path / "m.report.contact.png").stat().st_size > 0
    for name, ops in jobs.items():
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tf:
            page = tf.pages[0]
            same(page.asarray(), reference(scene, ops), name)
            levels = [level.asarray() for level in page.pages]
            assert len(levels) >= 2 and levels[0].dtype == page.dtype
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (a block of NaN only)
                base = page.asarray().astype(np.float64)
                mean = np.nanmean(np.stack([base[0::2, 0::2], base[1::2, 0::2],
                                            base[0::2, 1::2], base[1::2, 1::2]]), axis=0)
            if name == "ndvi":
                np.testing.assert_array_equal(levels[0], mean.astype(np.float32))
            assert page.photometric.name == ("MINISBLACK" if name == "ndvi" else "RGB")


def test_to_gray_refuses_gray_channels_it_would_mix_as_rgb(tmp_path):
    """A fluorescence image of several channels stored as samples of one page (tifffile's
    planar OME-TIFF: MINISBLACK with unspecified extra samples, DAPI, FITC, TRITC, Cy5) is
    not RGB: to_gray would weigh its first three channels 0.299, 0.587, 0.114 and drop the
    fourth, so it is refused, naming the page, with the
    select_bands that picks a channel; a one-channel op's hint says the same instead of
    "put to_gray before it". Gray + alpha (two bands: to_gray keeps the first), RGB and
    RGBA pages keep to_gray."""
    src = tmp_path / "cells.ome.tif"
    tifffile.imwrite(src, typed_image(3, 64, 64, 4, "uint16").transpose(2, 0, 1), ome=True,
                     planarconfig="separate", photometric="minisblack",
                     metadata={"axes": "SYX", "Channel": {"Name": ["DAPI"]}})
    pick = '{"op": "select_bands", "bands": [0]}'
    assert plan_problems(tmp_path, src, [{"op": "to_gray"}]) == [
        ("page 0: ops[0] (to_gray): to_gray makes a gray value of RGB colours, and the page's "
        "4 bands are gray channels (MINISBLACK with 3 extra samples: fluorescence channels "
        "or a multispectral stack), not red, green and blue; pick the channel you want with "
        f"{pick} before it (a job per channel for the others)")]
    assert plan_problems(tmp_path, src, [{"op": "clahe"}]) == [
        ("page 0: ops[0] (clahe): clahe needs 1 channel(s), the page has 4; its 4 bands are "
        f"gray channels, not RGB: put {pick} before it (a job per channel for the others)")]
    assert plan_problems(tmp_path, src, [{"op": "select_bands", "bands": [2]},
                                         {"op": "clahe"}]) == []
    three = tmp_path / "three.tif"  # (tifffile's default for 3 samples is RGB)
    write_bands(three, typed_image(1, 64, 64, 3, "uint16"), tiled=True, separate=False,
                photometric="minisblack")
    [why] = plan_problems(tmp_path, three, [{"op": "to_gray"}])
    assert "the page's 3 bands are gray channels (MINISBLACK with 2 extra samples:" in why
    for name, photometric, extrasamples in (("ga.tif", "minisblack", [2]),
                                            ("rgba.tif", "rgb", [2]), ("rgb.tif", "rgb", None)):
        ok = tmp_path / name
        channels = 3 if extrasamples is None else 4 if photometric == "rgb" else 2
        tifffile.imwrite(ok, typed_image(2, 64, 64, channels, "uint8"), photometric=photometric,
                         extrasamples=extrasamples, metadata=None)
        assert plan_problems(tmp_path, ok, [{"op": "to_gray"}, {"op": "clahe"}]) == [], name


def test_to_gray_refuses_two_gray_bands_it_would_keep_the_first_of(tmp_path):
    """A page of 2 bands as GDAL writes it (MINISBLACK, ExtraSamples 0: a red and a NIR band,
    not gray + alpha) is refused by to_gray, which would keep band 0 and drop band 1
    silently; the message names the page, its bands and the select_bands that keeps one, and
    a one-channel op's hint says the same (gray + alpha keeps to_gray: the test above)."""
    from conftest import gdal_masked

    src = tmp_path / "two.tif"
    gdal_masked(src, typed_image(4, 64, 64, 2, "uint8"), None, block=None)
    with tifffile.TiffFile(src) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert tuple(tf.pages[0].extrasamples) == (0,)
    pick = '{"op": "select_bands", "bands": [0]}'
    assert plan_problems(tmp_path, src, [{"op": "to_gray"}]) == [
        ("page 0: ops[0] (to_gray): to_gray of 2 bands keeps band 0 as gray + alpha's gray "
         "and drops band 1, and the page's 2 bands are gray channels (MINISBLACK with an extra "
         "sample that is no alpha: ExtraSamples 0, as GDAL writes 2 bands), not gray + alpha; "
         f"keep the band you want with {pick} (or [1]) instead of to_gray (a job per band for "
         "the other)")]
    assert plan_problems(tmp_path, src, [{"op": "clahe"}]) == [
        ("page 0: ops[0] (clahe): clahe needs 1 channel(s), the page has 2; its 2 bands are "
         f"gray channels, not RGB: put {pick} before it (a job per channel for the others)")]
    assert plan_problems(tmp_path, src, [{"op": "select_bands", "bands": [1]},
                                         {"op": "to_gray"}, {"op": "clahe"}]) == []
