"""``convert``: every input type to every output type against the formula of
docs/manifest-and-ops.md written out here with numpy, its rounding against OpenCV's
saturate_cast, the problems validate and PlanJob name, and runs of the local engine (the
fused path) on real TIFFs of every sample type and 1, 3 and 5 bands: the outputs' pixels,
sample type, predictor, GDAL_NODATA, pyramid levels and OME Pixels Type, and the chain the
op makes possible, select_bands -> normalized_difference -> convert uint8 -> JPEG.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from sample_types_ref import ALL, ref_op, typed_image, valid_mean
from test_band_ops import nd_reference, same
from test_exactness import TIFFFILE_WRITE, run_tiled
from test_sample_types import plan_problems, write_bands

from pipeline import cli
from pipeline import estimate as est
from pipeline.core.ops import apply_chain, chain_from_json, parse_chain
from pipeline.runner import run_local

#: the output types convert writes
TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
SHAPE = (150, 230)


# --- the reference: the documented formula, with numpy ------------------------------------


def ref_convert(page: np.ndarray, dtype: str, in_range: list[float] | None = None,
                out_range: list[float] | None = None, nodata: float | None = None,
                input_nodata: float | None = None) -> np.ndarray:
    """``olo + (v - lo) / (hi - lo) * (ohi - olo)`` in float64, clipped, rounded half to even
    (integers: NaN is olo) or cast; NaN and ``input_nodata`` samples become ``nodata`` (float
    outputs: NaN by default)."""
    out = np.dtype(dtype)
    if in_range is None:
        info = np.iinfo(page.dtype)
        in_range = [info.min, info.max]
    if out_range is None:
        if out.kind == "f":
            out_range = [0.0, 1.0]
        else:
            info = np.iinfo(out)
            out_range = [info.min + (nodata == info.min), info.max - (nodata == info.max)]
    (lo, hi), (olo, ohi) = map(float, in_range), map(float, out_range)
    x = page.astype(np.float64)
    y = np.minimum(np.maximum(olo + (x - lo) / (hi - lo) * (ohi - olo), olo), ohi)
    res = y.astype(out) if out.kind == "f" else np.where(np.isnan(y), olo, np.rint(y)).astype(out)
    fill = nodata if nodata is not None else np.nan if out.kind == "f" else None
    if fill is not None:
        none = np.isnan(x)
        if input_nodata is not None:
            none |= page == input_nodata
        res[none] = fill
    return res


def convert_op(**params: Any) -> dict[str, Any]:
    return {"op": "convert", **params}


# --- the op on whole arrays -------------------------------------------------------------


def _page(dtype: str, seed: int, channels: int = 3) -> np.ndarray:
    """typed_image's content (the type's minimum and maximum occur; floats span [-1, 2]),
    floats with NaN and infinities too."""
    page = typed_image(seed, 20, 30, channels, dtype)
    if np.dtype(dtype).kind == "f":
        page[0, :3], page[1, 0], page[1, 1] = np.nan, np.inf, -np.inf
    return page


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("src", ALL)
def test_every_input_type_to_every_output_type(src, dtype):
    page = _page(src, sum(map(ord, src + dtype)))
    floats = np.dtype(src).kind == "f"
    cases = [{"in_range": [-0.5, 1.5]}, {"in_range": [0.25, 0.75], "out_range": [10, 100]}]
    if not floats:
        info = np.iinfo(src)
        cases += [{}, {"in_range": [float(info.min) / 3, float(info.max) / 3]}]
    for params in cases:
        got = apply_chain(page, chain_from_json([convert_op(dtype=dtype, **params)]))
        same(got, ref_convert(page, dtype, **params), f"{src} -> {dtype} {params}")


def test_written_out_values():
    """NDVI's ends and middle, half-way values rounded to even, NaN and infinities; a 16-bit
    page to 8 bits; a no-data value keeping 0 to itself."""
    nd = np.array([[-1, -0.5, 0, 0.5, 1, np.nan, 2, -np.inf]], np.float32)
    to8 = convert_op(dtype="uint8", in_range=[-1, 1])
    # 0 -> 127.5 -> 128 (even); -0.5 -> 63.75; NaN -> out_range's low end
    assert apply_chain(nd, chain_from_json([to8])).tolist() == [[0, 64, 128, 191, 255, 0, 255,
                                                                  0]]
    # nodata 0: out_range 1..255, NaN -> 0; -0.5 -> 64.5 -> 64, 0.5 -> 191.5 -> 192 (even)
    assert apply_chain(nd, chain_from_json([{**to8, "nodata": 0}])).tolist() == [
        [1, 64, 128, 192, 255, 0, 255, 1]]
    # a float output keeps NaN (its no-data value); infinities clipped
    half = apply_chain(nd, chain_from_json([convert_op(dtype="float32", in_range=[-1, 1])]))
    np.testing.assert_array_equal(half, [[0, 0.25, 0.5, 0.75, 1, np.nan, 1, 0]])
    u16 = np.array([[0, 128, 129, 32896, 65406, 65407, 65535]], np.uint16)
    assert apply_chain(u16, chain_from_json([convert_op(dtype="uint8")])).tolist() == [
        [0, 0, 1, 128, 254, 255, 255]]  # v / 257: 128 -> 0.498, 65406 -> 254.498
    assert apply_chain(u16, chain_from_json([convert_op(dtype="uint8", in_range=[0, 4095])])
                       ).tolist() == [[0, 8, 8, 255, 255, 255, 255]]


@pytest.mark.parametrize("dtype,depth", [("uint8", cv2.CV_8U), ("int8", cv2.CV_8S),
                                         ("uint16", cv2.CV_16U), ("int16", cv2.CV_16S),
                                         ("int32", cv2.CV_32S)])
def test_rounding_is_opencvs_saturate_cast(dtype, depth):
    """The mapped float64 values round and saturate as OpenCV's saturate_cast does (cv2.add
    with a dtype computes in float64 and saturate_casts, as convertTo does): halves to even
    (an out_range of a power of two: every (k + 0.5) / 2**m lands on a half exactly), and
    values beyond the type's range to its ends."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(abs(depth))
    span = 2 ** min(30, 8 * info.dtype.itemsize - 1)
    olo = float(info.min) if info.min < 0 else 0.0
    halves = ((np.arange(40_000) % span + 0.5) / span).reshape(1, -1)
    page = np.concatenate([halves, rng.uniform(0, 1, (1, 40_000))], axis=1)
    for params, values in (({"out_range": [olo, olo + span]}, page),
                           ({}, rng.uniform(-0.2, 1.2, (1, 80_000)))):
        (olo_, ohi_) = params.get("out_range", [float(info.min), float(info.max)])
        y = olo_ + (values - 0.0) / (1.0 - 0.0) * (ohi_ - olo_)  # the formula, not clipped
        want = cv2.add(y, np.zeros_like(y), dtype=depth)
        op = convert_op(dtype=dtype, in_range=[0, 1], **params)
        np.testing.assert_array_equal(apply_chain(values, chain_from_json([op])), want)
    assert np.count_nonzero(want == 0 if info.min == 0 else want == info.min) > 1000


def test_input_nodata_given_by_the_tiled_path():
    """The tiled path gives convert its input's no-data value (``input_nodata``): those samples
    become ``nodata``; without a ``nodata`` an integer output converts them as values."""
    [call] = chain_from_json([convert_op(dtype="uint8", in_range=[0, 1000], nodata=0)])
    page = np.array([[-9999, 0, 500, 1000, 2000]], np.int16)
    assert call.op.apply(page, {**call.params, "input_nodata": -9999}).tolist() == [
        [0, 1, 128, 255, 255]]
    [plain] = chain_from_json([convert_op(dtype="uint8", in_range=[0, 1000])])
    assert plain.op.apply(page, {**plain.params, "input_nodata": -9999}).tolist() == [
        [0, 0, 128, 255, 255]]
    floats = page.astype(np.float64)
    [f32] = chain_from_json([convert_op(dtype="float32", in_range=[0, 1000])])
    np.testing.assert_array_equal(f32.op.apply(floats, {**f32.params, "input_nodata": -9999}),
                                  [[np.nan, 0, 0.5, 1, 1]])


# --- problems: the manifest (validate), then the plan (PlanJob, validate --inputs) ---------


@pytest.mark.parametrize("params,problem", [
    ({}, "ops[0].dtype: required, one of \"uint8\", "),
    ({"dtype": "uint12"}, ("ops[0].dtype: expected one of \"uint8\", \"int8\", \"uint16\", "
                          "\"int16\", \"uint32\", \"int32\", \"float32\", \"float64\", got "
                          "\"uint12\"")),
    ({"dtype": "uint8", "in_range": [1, -1]},
     ("ops[0].in_range: expected [low, high] with low < high, got [1, -1]: an inverted range; "
     "give [low, high], and to invert the values put an invert op after the convert")),
    ({"dtype": "uint8", "in_range": [0.5, 0.5]},
     ("ops[0].in_range: expected [low, high] with low < high, got [0.5, 0.5]: an empty range "
     "maps no values; give the range the values span")),
    ({"dtype": "uint8", "in_range": [0, 1, 2]}, ("ops[0].in_range: expected [low, high]: two "
                                                "numbers with low < high, or null")),
    ({"dtype": "uint8", "out_range": [0, 256]},
     "ops[0]: out_range [0, 256] does not fit uint8: give whole numbers from 0 to 255"),
    ({"dtype": "int16", "out_range": [0, 99.5]}, "ops[0]: out_range [0, 99.5] does not fit"),
    ({"dtype": "uint8", "nodata": -1},
     "ops[0]: nodata -1 is no uint8 value: give one of the whole numbers from 0 to 255"),
    ({"dtype": "uint16", "nodata": 100},
     ("ops[0]: nodata 100 is inside uint16's default out_range [0, 65535], where data would "
     "take it too: give an out_range that leaves it out (an integer nodata at the type's "
     "lowest or highest value leaves it out by itself)")),
    ({"dtype": "uint8", "out_range": [0, 200], "nodata": 200},
     "ops[0]: nodata 200 is inside out_range [0, 200], where data would take it too"),
    ({"dtype": "float32", "nodata": 0}, ("ops[0]: nodata 0 is inside float32's default "
                                        "out_range [0, 1]")),
    ({"dtype": "uint8", "nodata": "none"}, "ops[0].nodata: expected a number, or null"),
])
def test_manifest_problems_name_the_field(params, problem):
    calls, problems = parse_chain([convert_op(**params)])
    assert calls == [] and len(problems) == 1 and problems[0].startswith(problem), problems


def test_good_parameters_and_their_defaults():
    for params in ({"dtype": "uint8", "nodata": 255}, {"dtype": "float32", "nodata": -9999},
                   {"dtype": "uint8", "out_range": [1, 254], "nodata": 0},
                   {"dtype": "int8", "in_range": None, "out_range": None, "nodata": None}):
        assert parse_chain([convert_op(**params)])[1] == [], params
    # a chain's JSON carries every default (null), and reads back the same
    [call] = chain_from_json([convert_op(dtype="uint8")])
    assert call.to_json() == convert_op(dtype="uint8", in_range=None, out_range=None,
                                        nodata=None)
    assert chain_from_json([call.to_json()]) == [call]


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture, jobs: list[dict[str, Any]],
              *args: str, defaults: dict[str, Any] | None = None) -> tuple[int, str]:
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"jobs": jobs, **({"defaults": defaults} if defaults else {})}))
    code = cli.main(["validate", str(m), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


NDVI = [{"op": "select_bands", "bands": [7, 3]}, {"op": "normalized_difference", "a": 0, "b": 1}]


def test_validate_names_the_job_and_op_field(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Known from the manifest alone: a convert of a normalized difference without in_range,
    JPEG output of a chain that ends in another type than uint8 (the field each layer set)."""
    code, out = _validate(tmp_path, capsys, [
        {"input": "s2.tif", "output": "a.tif", "ops": [*NDVI, convert_op(dtype="uint8")]},
        {"input": "s2.tif", "output": "b.tif", "ops": [convert_op(dtype="uint16")],
         "output_options": {"compression": "jpeg"}},
        {"input": "s2.tif", "output": "c.tif", "ops": NDVI,
         "output_options": {"compression": "jpeg"}},
        {"input": "s2.tif", "output": "d.tif", "ops": [convert_op(dtype="float32",
                                                                  in_range=[0, 1])]},
        {"input": "s2.tif", "output": "e.tif",
         "ops": [*NDVI, convert_op(dtype="uint8", in_range=[-1, 1])]},
    ], defaults={"output_options": {"compression": "jpeg", "quality": 80}})
    assert code == 2
    assert out.splitlines()[1:] == [
        ('  jobs[0].ops[2] (convert): convert needs "in_range" on float pixels, the page has '
         "float32 after ops[1] (normalized_difference): floats have no full range to map; "
         'give "in_range": [low, high] (the values mapped to out_range\'s ends, e.g. [-1, 1] '
         "for a normalized difference)"),
        ("  jobs[1].output_options.compression: jpeg holds uint8 samples only, and ops[0] "
         '(convert) makes uint16; set its "dtype" to "uint8", or choose zstd, deflate, lzw or '
         "none"),
        ("  jobs[2].output_options.compression: jpeg holds uint8 samples only, and ops[1] "
         '(normalized_difference) makes float32; end the ops with {"op": "convert", "dtype": '
         '"uint8", "in_range": [low, high]}, or choose zstd, deflate, lzw or none'),
        ("  jobs[3].ops[0].dtype: convert makes float32, and the jpeg output (from "
         "defaults.output_options.compression) holds uint8 samples only; set its \"dtype\" to "
         "\"uint8\", or choose another compression")]
    code, out = _validate(tmp_path, capsys, [
        {"input": "s2.tif", "output": "e.tif",
         "ops": [*NDVI, convert_op(dtype="uint8", in_range=[-1, 1])],
         "output_options": {"compression": "jpeg"}}])
    assert code == 0, out



def test_validate_refuses_jpeg_of_a_band_count_the_chain_fixes(tmp_path, capsys):
    """A select_bands of 2 or 4 bands with JPEG output fails on every page: validate refuses
    it from the manifest alone, naming the field each layer set, with the type problem when
    the chain fixes both; a count an op after it makes 1 (to_gray), or 1 or 3, passes."""
    two, four = ({"op": "select_bands", "bands": b} for b in ([0, 1], [3, 2, 1, 0]))
    code, out = _validate(tmp_path, capsys, [
        {"input": "s.tif", "output": "a.tif", "ops": [two, {"op": "gaussian_blur", "sigma": 1.5}],
         "output_options": {"compression": "jpeg"}},
        {"input": "s.tif", "output": "b.tif", "ops": [four]},
        {"input": "s.tif", "output": "c.tif", "ops": [two, convert_op(dtype="uint16")],
         "output_options": {"compression": "jpeg"}},
        {"input": "s.tif", "output": "d.tif", "ops": [two, {"op": "to_gray"}]},
        {"input": "s.tif", "output": "e.tif", "ops": [{"op": "select_bands", "bands": [2]}]},
        {"input": "s.tif", "output": "f.tif", "ops": [four], "output_options": {
            "compression": "zstd"}},
    ], defaults={"output_options": {"compression": "jpeg"}})
    assert code == 2
    assert out.splitlines()[1:] == [
        ("  jobs[0].output_options.compression: jpeg holds 1 or 3 bands (gray or RGB) only, and "
         'ops[0] (select_bands) makes 2 bands; give its "bands" 1 or 3 bands, or choose zstd, '
         "deflate, lzw or none"),
        ("  jobs[1].ops[0].bands: select_bands makes 4 bands, and the jpeg output (from "
         "defaults.output_options.compression) holds 1 or 3 bands (gray or RGB) only; give "
         'its "bands" 1 or 3 bands, or choose another compression'),
        ("  jobs[2].output_options.compression: jpeg holds uint8 samples only, and ops[1] "
         '(convert) makes uint16; set its "dtype" to "uint8", or choose zstd, deflate, lzw or '
         "none"),
        ("  jobs[2].output_options.compression: jpeg holds 1 or 3 bands (gray or RGB) only, and "
         'ops[0] (select_bands) makes 2 bands; give its "bands" 1 or 3 bands, or choose zstd, '
         "deflate, lzw or none")]

def test_validate_refuses_an_op_that_does_not_take_the_converted_type(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A convert says the type whatever the page's band count: an op after it that takes no
    page of that type (canny after int8, equalize_hist after uint16, a convert without
    in_range after float32, a median of ksize 7 after uint16) is refused from the manifest,
    as after a normalized_difference; one that takes the type on some band counts is left to
    the plan (equalize_hist of uint8 needs 1 band: the page's count is not known yet)."""
    code, out = _validate(tmp_path, capsys, [
        {"input": "s2.tif", "output": "a.tif", "ops": [convert_op(dtype="int8"),
                                                        {"op": "canny", "low": 1, "high": 2}]},
        {"input": "s2.tif", "output": "b.tif", "ops": [convert_op(dtype="uint16"),
                                                        {"op": "equalize_hist"}]},
        {"input": "s2.tif", "output": "c.tif", "ops": [
            convert_op(dtype="float32", in_range=[0, 100]), convert_op(dtype="uint8")]},
        {"input": "s2.tif", "output": "d.tif", "ops": [convert_op(dtype="uint16"),
                                                        {"op": "median_blur", "ksize": 7}]},
        {"input": "s2.tif", "output": "e.tif", "ops": [convert_op(dtype="uint8"),
                                                        {"op": "equalize_hist"},
                                                        {"op": "canny", "low": 1, "high": 2},
                                                        {"op": "median_blur", "ksize": 7}]},
    ])
    assert code == 2
    problems = out.splitlines()[1:]
    assert [p.split(":")[0] for p in problems] == [
        "  jobs[0].ops[1] (canny)", "  jobs[1].ops[1] (equalize_hist)",
        "  jobs[2].ops[1] (convert)", "  jobs[3].ops[1] (median_blur)"]
    assert problems[0].startswith(
        "  jobs[0].ops[1] (canny): canny needs uint8 pixels, the page has int8 after ops[0] "
        "(convert) (OpenCV's Canny is 8-bit only)")
    assert 'the page has float32 after ops[0] (convert): floats have no full range' in \
        problems[2]


def test_the_plan_refuses_a_float_page_without_in_range(tmp_path: Path):
    src = tmp_path / "f.tif"
    write_bands(src, typed_image(1, 64, 64, 1, "float32"), tiled=True, separate=False)
    assert plan_problems(tmp_path, src, [convert_op(dtype="uint8")]) == [
        ('page 0: ops[0] (convert): convert needs "in_range" on float pixels, the page has '
        "float32: floats have no full range to map; give \"in_range\": [low, high] (the values "
        "mapped to out_range's ends, e.g. [-1, 1] for a normalized difference)")]
    assert plan_problems(tmp_path, src, [convert_op(dtype="uint8", in_range=[0, 1])]) == []


def test_validate_inputs_and_inspect_know_the_op(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture):
    """JPEG of a float page says to end the ops with a convert (with its in_range); with one
    the job can run; inspect --ops says what comes out."""
    src = tmp_path / "f.tif"
    write_bands(src, typed_image(2, 64, 80, 1, "float32"), tiled=True, separate=False)
    jpeg = {"compression": "jpeg"}
    code, out = _validate(tmp_path, capsys, [
        {"input": src.name, "output": "a.tif", "output_options": jpeg},
        {"input": src.name, "output": "b.tif", "ops": [convert_op(dtype="uint8")]},
        {"input": src.name, "output": "c.tif", "output_options": jpeg,
         "ops": [convert_op(dtype="uint8", in_range=[-1, 2])]}], "--inputs")
    assert code == 2
    assert ('page 0: jpeg output needs uint8 pixels, the output is float32; end the ops with '
            '{"op": "convert", "dtype": "uint8", "in_range": [low, high]}, or choose zstd, '
            "deflate, lzw or none") in out
    assert 'page 0: ops[0] (convert): convert needs "in_range" on float pixels' in out
    assert "1 job can run, 2 would fail when planned" in out
    code = cli.main(["inspect", str(src), "--ops", json.dumps([convert_op(dtype="uint16",
                                                                          in_range=[0, 1])])])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1] == "    ops: run -> 80 x 64, 1 x uint16"
    code = cli.main(["inspect", str(src), "--ops", json.dumps([convert_op(dtype="uint8")])])
    assert code == 1
    assert 'ops: cannot run: ops[0] (convert): convert needs "in_range"' in \
        capsys.readouterr().out


def test_ops_lists_it(capsys: pytest.CaptureFixture):
    assert cli.main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "convert: olo + (v - lo) / (hi - lo) * (ohi - olo) in float64" in out
    assert '  dtype: one of "uint8", "int8", "uint16", "int16", "uint32", "int32", ' \
           '"float32", "float64" (required)' in out


def test_estimate_encodes_the_converted_type(tmp_path: Path):
    """The output's bytes are costed in its own type: a float32 page converted to uint8
    writes what a uint8 page writes, not four times as much."""
    cal = copy.deepcopy(est.load_calibration())
    sizes = {}
    for name, dtype, ops in (("f", "float32", [convert_op(dtype="uint8", in_range=[-1, 1])]),
                             ("u", "uint8", [])):
        m = tmp_path / f"{name}.json"
        m.write_text(json.dumps({"jobs": [{"input": "x.tif", "output": f"{name}.tif",
                                           "ops": ops,
                                           "output_options": {"compression": "jpeg"}}]}))
        planned = est.plan_manifest(str(m), f"2048x2048x1:{dtype}")
        assert planned.problems == [] and planned.plans[0].pages[0].out_dtype == "uint8"
        r = est.estimate(planned.plans, cal)
        sizes[name] = r["jobs"][0]["output_bytes"]
        assert not any("jpeg encoding" in note for note in r["notes"]), r["notes"]
    assert sizes["f"] == pytest.approx(sizes["u"])


# --- the tiled steps in-process: split, statistics rounds, other ops after it -------------

TILED_CASES = [
    # (id, input type, bands, ops, run_tiled options)
    ("uint16-to-uint8-equalize-split", "uint16", 1,
     [convert_op(dtype="uint8", in_range=[1000, 60000]), {"op": "equalize_hist"}],
     {"fuse": False}),
    ("ndvi-uint8-canny", "uint16", 4,
     [{"op": "normalized_difference", "a": 3, "b": 0},
      convert_op(dtype="uint8", in_range=[-1, 1]), {"op": "canny", "low": 20, "high": 60}], {}),
    ("blur-float32-downsample", "int16", 3,
     [{"op": "gaussian_blur", "sigma": 1.5}, convert_op(dtype="float32", in_range=[-3e4, 3e4]),
      {"op": "downsample", "factor": 2}], {"units": "small"}),
    ("float64-int16-normalize-tiny", "float64", 5,
     [convert_op(dtype="int16", in_range=[-1, 2], out_range=[-1000, 1000]),
      {"op": "normalize"}], {"units": "tiny"}),
]


def _chain_reference(page: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    """The chain on the whole page; a ``downsample`` after a ``convert`` that gives its
    output a no-data value (its ``nodata``; NaN for a float output) is GDAL's average, the
    mean of the valid samples (docs/manifest-and-ops.md)."""
    img, nodata = page, None
    for op in ops:
        if op["op"] == "convert":
            img = ref_convert(img, **{k: v for k, v in op.items() if k != "op"})
            nodata = op.get("nodata", np.nan if img.dtype.kind == "f" else None)
        elif op["op"] == "downsample" and nodata is not None:
            img = valid_mean(img, op["factor"], nodata)
        elif op["op"] == "normalized_difference":
            img = nd_reference(img, op["a"], op["b"])
        elif op["op"] == "canny":
            img = cv2.Canny(img, op["low"], op["high"])
        else:
            img = ref_op(img, op)
    return img


@pytest.mark.parametrize("dtype,bands,ops,opts",
                         [pytest.param(*c[1:], id=c[0]) for c in TILED_CASES])
def test_tiled_steps_equal_the_whole_page(tmp_path: Path, dtype, bands, ops, opts):
    """Split into work tiles, statistics rounds of the ops after a convert (they see its
    type), a canny's hysteresis, a downsample: bit-identical to the whole page."""
    page = typed_image(sum(map(ord, dtype)) + bands, *SHAPE, bands, dtype)
    src = tmp_path / "in.tif"
    write_bands(src, page, tiled=True, separate=bands % 2 == 0)
    (got,), plan = run_tiled(tmp_path, src, ops, 64, 32, compression="deflate", **opts)
    want = _chain_reference(page, ops)
    same(got, want, str(ops))
    assert plan.pages[0].out_dtype == want.dtype.name


# --- through the engine: real TIFFs, the fused path -----------------------------------------

#: (input type, bands, convert's parameters, input GDAL_NODATA or None); every input type
#: with 1, 3 and 5 bands in turn, every output type
ENGINE_CASES = [
    ("uint8", 3, {"dtype": "uint16"}, None),
    ("int8", 5, {"dtype": "uint8"}, None),
    ("uint16", 1, {"dtype": "uint8"}, None),
    ("uint16", 3, {"dtype": "uint8", "in_range": [0, 4095], "nodata": 0}, 0),
    ("int16", 5, {"dtype": "int8", "in_range": [-1000, 1000], "out_range": [-100, 100],
                  "nodata": -128}, -32768),
    ("uint32", 1, {"dtype": "float64"}, None),
    ("int32", 3, {"dtype": "int16"}, None),
    ("uint64", 5, {"dtype": "uint32"}, None),
    ("int64", 1, {"dtype": "int32", "in_range": [-2.0**62, 2.0**62]}, None),
    ("float16", 3, {"dtype": "uint8", "in_range": [-1, 2]}, None),
    ("float32", 5, {"dtype": "uint16", "in_range": [-1, 2], "nodata": 65535}, -1),
    ("float32", 1, {"dtype": "float32", "in_range": [0, 1], "out_range": [-1, 1]}, None),
    ("float64", 3, {"dtype": "uint8", "in_range": [0, 1]}, None),
]


def _write_input(path: Path, page: np.ndarray, nodata: float | None, tiled: bool) -> None:
    """A one-page TIFF as test_sample_types writes them (5 bands: planar separate), with
    GDAL_NODATA ``nodata`` unless None."""
    ch = 1 if page.ndim == 2 else page.shape[2]
    separate = ch == 5
    tifffile.imwrite(path, np.ascontiguousarray(np.moveaxis(page, -1, 0)) if separate else page,
                     photometric="rgb" if ch == 3 else "minisblack",
                     extrasamples=[0] * (ch - (3 if ch == 3 else 1)) or None,
                     planarconfig="separate" if separate else None,
                     tile=(32, 48) if tiled else None, rowsperstrip=None if tiled else 16,
                     metadata=None, compression="zlib",
                     extratags=[] if nodata is None else [(42113, "s", 0, f"{nodata:g}", True)])


def _predictor(dtype: str) -> int:
    return 3 if np.dtype(dtype).kind == "f" else 2


@pytest.mark.timeout(300)
def test_every_type_through_the_engine(tmp_path: Path):
    """One run of the local engine: a job for each case (fused, 64 px tiles over a 150 x 230
    page, deflate), the NDVI of a 13-band uint16 scene with no data to uint8 JPEG with a
    pyramid, a uint16 page to uint8 OME-TIFF, and a float page to uint16 with a no-data
    value and a pyramid; each output bit-identical to the formula on the whole page."""
    jobs, want = [], {}
    for k, (src_type, bands, params, nodata) in enumerate(ENGINE_CASES):
        page = typed_image(k + 1, *SHAPE, bands, src_type)  # (one band: 2-D)
        if np.dtype(src_type).kind == "f":
            page[10:20, 30:60] = np.nan
        if nodata is not None:
            page[40:70, 100:140] = nodata
        src = tmp_path / f"in{k}.tif"
        _write_input(src, page, nodata, tiled=k % 2 == 0)
        name = f"out{k}.tif"
        jobs.append({"input": src.name, "output": name, "ops": [convert_op(**params)],
                     "tile": 64, "output_options": {"compression": "deflate", "tile": 32}})
        want[name] = (ref_convert(page, **params, input_nodata=nodata), params)

    scene = typed_image(40, *SHAPE, 13, "uint16")
    scene[:30, :50] = 0  # no data in every band (GDAL_NODATA 0)
    scene[120:, 200:, 7] = 0
    _write_input(tmp_path / "s2.tif", scene, 0, tiled=True)
    ndvi_ops = [*NDVI, convert_op(dtype="uint8", in_range=[-1, 1], nodata=0)]
    jobs.append({"input": "s2.tif", "output": "ndvi.tif", "ops": ndvi_ops, "tile": 64,
                 "output_options": {"compression": "jpeg", "tile": 32, "pyramid": True}})
    ome = typed_image(41, *SHAPE, 2, "uint16")  # two 16-bit fluorescence planes (CYX)
    with tifffile.TiffWriter(tmp_path / "ome_in.tif", ome=True) as tw:
        tw.write(np.moveaxis(ome, -1, 0), tile=(64, 64), metadata={
            "axes": "CYX", "Name": "Tissue", "Channel": {"Name": ["DAPI", "CD3"]}})
    jobs.append({"input": "ome_in.tif", "output": "ome.tif", "ops": [convert_op(dtype="uint8")],
                 "tile": 64, "output_options": {"tile": 32, "ome": True}})
    levels = typed_image(42, *SHAPE, 1, "float32")
    levels[:40, :40] = np.nan
    write_bands(tmp_path / "levels_in.tif", levels, tiled=True, separate=False)
    jobs.append({"input": "levels_in.tif", "output": "levels.tif", "tile": 64,
                 "ops": [convert_op(dtype="uint16", in_range=[-1, 2], nodata=0)],
                 "output_options": {"compression": "zstd", "tile": 32, "pyramid": True}})

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": jobs}))
    result = run_local(str(manifest), 2)
    assert result.ok, result.report

    for name, (expected, params) in want.items():
        with tifffile.TiffFile(tmp_path / name) as tf:
            page = tf.pages[0]
            same(page.asarray(), expected, f"{name} {params}")
            assert page.predictor == _predictor(params["dtype"]), name
            tag = page.tags.get(42113)
            nodata = params.get("nodata")
            said = None if tag is None else tag.value
            if nodata is not None:
                assert said == f"{nodata}", name
            else:  # floats: NaN; integers without a nodata: the input's dropped
                assert said == ("nan" if np.dtype(params["dtype"]).kind == "f" else None), name

    # select_bands -> normalized_difference -> convert uint8 -> JPEG: the tiles tifffile
    # writes of the whole page's result, GDAL_NODATA 0, pyramid levels of uint8
    index = nd_reference(scene[:, :, [7, 3]], 0, 1, nodata=0)
    ndvi = ref_convert(index, "uint8", in_range=[-1, 1], nodata=0)
    assert (ndvi[:30, :50] == 0).all() and (ndvi[120:, 200:] == 0).all() and ndvi.min() == 0
    assert np.count_nonzero(ndvi) > ndvi.size // 2
    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, ndvi, tile=(32, 32), metadata=None, photometric="minisblack",
                     **copy.deepcopy(TIFFFILE_WRITE["jpeg"]))
    out_bytes, ref_bytes = (tmp_path / "ndvi.tif").read_bytes(), ref.read_bytes()
    with tifffile.TiffFile(tmp_path / "ndvi.tif") as a, tifffile.TiffFile(ref) as b:
        pa, pb = a.pages[0], b.pages[0]
        assert (pa.dtype, pa.compression, pa.shape) == (np.uint8, pb.compression, pb.shape)
        for oa, na, ob, nb in zip(pa.dataoffsets, pa.databytecounts, pb.dataoffsets,
                                  pb.databytecounts, strict=True):
            assert out_bytes[oa:oa + na] == ref_bytes[ob:ob + nb]
        assert pa.tags[42113].value == "0"
        assert [level.dtype for level in pa.pages] == [np.uint8] * len(pa.pages) \
            and len(pa.pages) >= 2

    # OME planes converted: still the one CYX Image, Pixels Type uint8, its Channels' names
    # kept
    with tifffile.TiffFile(tmp_path / "ome.tif") as tf:
        image = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
        assert (image["Pixels"]["Type"], image["Pixels"]["SizeC"]) == ("uint8", 2)
        assert [c["Name"] for c in image["Pixels"]["Channel"]] == ["DAPI", "CD3"]
        for k, page in enumerate(tf.pages):
            same(page.asarray(), ref_convert(ome[:, :, k], "uint8"))

    # the pyramid of a page with no data leaves it out of its means: (s + n // 2) // n
    base = ref_convert(levels, "uint16", in_range=[-1, 2], nodata=0)
    with tifffile.TiffFile(tmp_path / "levels.tif") as tf:
        same(tf.pages[0].asarray(), base)
        level = tf.pages[0].pages[0].asarray()
    blocks = np.stack([base[0::2, 0::2], base[1::2, 0::2], base[0::2, 1::2], base[1::2, 1::2]])
    n = (blocks != 0).sum(axis=0)
    s = blocks.astype(np.int64).sum(axis=0)
    mean = np.where(n == 0, 0, (s + n // 2) // np.maximum(n, 1)).astype(np.uint16)
    same(level, mean)
    assert (level[:20, :20] == 0).all()
