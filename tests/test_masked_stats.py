"""The whole-page ops and canny on a page with an internal mask (GDAL's valid-data mask, the
1-bit page after the image): ``percentile_stretch``, ``normalize`` (``per_band`` too),
``equalize_hist`` and ``otsu_threshold`` take their statistics of the valid pixels alone and
write the masked-out pixels back as they are; ``canny``'s ``sigma`` blur is of the valid
pixels alone (as ``gaussian_blur``'s). Real GeoTIFFs whose mask GDAL writes (a satellite
swath with a hole, the fill outside it: 0, or 255 for the gray page) go through one
``tiffpipe run`` in small tiles, fused and in batches; the outputs are compared with numpy
and OpenCV references of the valid samples written out below (not with tiffpipe's
functions), with the op on the whole page, bit for bit, and with the same job told to leave
the mask out (``output_options.masks`` false), which reads the fill as data, as before.
A 1-bit output (``output_options.bilevel``) of a masked page binarised by
``otsu_threshold``, ``threshold`` or ``canny`` stores its masked-out pixels as bit 0, its
fill (17, neither black nor white) whatever the op made of it.
"""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from conftest import gdal_masked, masked_blur, run_in_units

from pipeline.core.ops import OPS

pytestmark = pytest.mark.timeout(240)

STRETCH = {"op": "percentile_stretch", "p_low": 2, "p_high": 98}
BAND_STRETCH = {**STRETCH, "per_band": True}
NORMALIZE = {"op": "normalize"}
BAND_NORMALIZE = {"op": "normalize", "per_band": True}
EQUALIZE = {"op": "equalize_hist"}
OTSU = {"op": "otsu_threshold"}
CANNY = {"op": "canny", "low": 20, "high": 60, "sigma": 2.0}
OFF = {"masks": False}


def swath(h: int, w: int) -> np.ndarray:
    """A satellite scene's valid area: a slanted swath edge, a hole (edges at odd rows and
    columns, across the tiles' borders)."""
    yy, xx = np.mgrid[0:h, 0:w]
    valid = (xx > yy // 3 + 9) & (xx < w - 13 - yy // 5)
    valid[101:133, 161:197] = False
    return valid


def scene(h: int, w: int, bands: int, seed: int) -> np.ndarray:
    """A ramp with noise and a bright patch, in 40..200 (float64), each band its own range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + yy / 5 + xx / 6 + rng.normal(0, 8, (bands, h, w))
    img[:, 150:190, 200:260] += 50
    img *= np.linspace(1.0, 0.4, bands).reshape(-1, 1, 1)  # (band 0 the brightest)
    return np.moveaxis(np.clip(img, 40, 200), 0, -1) if bands > 1 else np.clip(img[0], 40, 200)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("masked_stats")
    h, w = 260, 330
    valid = swath(h, w)
    rgb = scene(h, w, 3, 1).astype(np.uint8)
    rgb[~valid] = 0  # the swath's fill: black, data but for the mask
    u16 = (scene(h, w, 3, 2) * 300).astype(np.uint16)
    u16[~valid] = 0
    gray = scene(h, w, 1, 3).astype(np.uint8)
    gray[~valid] = 255  # a white fill: every statistic of the page would count it
    f32 = (scene(h, w, 1, 4) / 7).astype(np.float32)
    f32[~valid] = -1.0
    pages = {"rgb": rgb, "u16": u16, "gray": gray, "f32": f32}
    for name, img in pages.items():
        gdal_masked(root / f"{name}.tif", img, valid, block=128 if name != "u16" else None)
    jobs = {
        "stretch": ("rgb", STRETCH, {}, True), "stretch_batches": ("rgb", STRETCH, {}, False),
        "stretch_off": ("rgb", STRETCH, OFF, True),
        "band_stretch": ("rgb", BAND_STRETCH, {}, False),
        "normalize": ("u16", NORMALIZE, {}, True), "band_normalize": ("u16", BAND_NORMALIZE,
                                                                      {}, False),
        "normalize_off": ("u16", NORMALIZE, OFF, True),
        "f32_normalize": ("f32", NORMALIZE, {}, False),
        "equalize": ("gray", EQUALIZE, {}, True), "equalize_off": ("gray", EQUALIZE, OFF, True),
        "otsu": ("gray", OTSU, {}, False), "otsu_off": ("gray", OTSU, OFF, False),
        "canny": ("gray", CANNY, {}, True), "canny_batches": ("gray", CANNY, {}, False),
        "canny_off": ("gray", CANNY, OFF, True),
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": {"tile": 64, "output_options": {"tile": 32, "compression": "deflate"}},
        "jobs": [{"input": str(root / f"{src}.tif"), "output": str(root / "out" / f"{n}.tif"),
                  "ops": [op], "fuse": fuse, "output_options": options}
                 for n, (src, op, options, fuse) in jobs.items()]}))
    # units of four tiles, run as a Map: the statistics come from many batches
    run_in_units(manifest, 4 * 64 * 64, "--workers", "1", "--quiet", "--no-contact-sheet")
    return {"pages": pages, "valid": valid,
            "jobs": {n: (src, op) for n, (src, op, _, _) in jobs.items()},
            "out": {n: root / "out" / f"{n}.tif" for n in jobs}}


def read(path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return tf.pages[0].asarray()


def reference_stretch(page: np.ndarray, samples: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    """``clip(rint((v - lo) / (hi - lo) * max), 0, max)`` of every sample of ``page`` with
    lo, hi numpy's percentiles (method "lower") of ``samples``."""
    lo, hi = np.percentile(samples, (op["p_low"], op["p_high"]), method="lower")
    top = np.iinfo(page.dtype).max
    return np.clip(np.rint((page.astype(np.float64) - lo) / (hi - lo) * top), 0,
                   top).astype(page.dtype)


def reference(page: np.ndarray, valid: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    """The op of the page's valid pixels alone (statistics and result), band by band with
    ``per_band``, the masked-out pixels as they are: numpy's percentiles, OpenCV's
    normalize, equalizeHist and Otsu threshold on the valid samples only."""
    if op.get("per_band"):
        one = {k: v for k, v in op.items() if k != "per_band"}
        return np.stack([reference(page[:, :, b], valid, one) for b in range(page.shape[2])],
                        axis=2)
    out = page.copy()
    data = page[valid]  # (n,) or (n, bands): the valid pixels' samples
    row = data.reshape(1, -1)
    if op["op"] == "percentile_stretch":
        out[valid] = reference_stretch(data, data, op)
    elif op["op"] == "normalize":
        top = 1.0 if page.dtype.kind == "f" else np.iinfo(page.dtype).max
        out[valid] = cv2.normalize(row, None, 0, top, cv2.NORM_MINMAX).reshape(data.shape)
    elif op["op"] == "equalize_hist":
        out[valid] = cv2.equalizeHist(row).reshape(data.shape)
    else:
        _, binary = cv2.threshold(row, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        out[valid] = binary.reshape(data.shape)
    return out


@pytest.mark.parametrize("name", ["stretch", "stretch_batches", "band_stretch", "normalize",
                                  "band_normalize", "f32_normalize", "equalize", "otsu"])
def test_the_whole_page_ops_leave_the_masked_out_pixels_out(run, name):
    """Each valid output pixel is the reference of the valid pixels alone; each masked-out
    pixel is the input's, exactly; the mask is carried; and the tiled run is the op on the
    whole page, bit for bit."""
    src, op = run["jobs"][name]
    page, valid = run["pages"][src], run["valid"]
    got = read(run["out"][name])
    assert got.dtype == page.dtype and got.shape == page.shape
    np.testing.assert_array_equal(got, reference(page, valid, op))
    np.testing.assert_array_equal(got[~valid], page[~valid])
    with rasterio.open(run["out"][name]) as ds:
        np.testing.assert_array_equal(ds.read_masks(1) > 0, valid)
    params = {k: v for k, v in op.items() if k != "op"}
    whole = OPS[op["op"]].apply(page, {**params, "input_nodata": None, "input_valid": valid})
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("name", ["stretch", "normalize", "equalize", "otsu"])
def test_a_job_that_leaves_the_mask_out_counts_the_fill_as_before(run, name):
    """The same job told to leave the mask out (the page has none to the ops) is the op of
    the whole page, the fill read as data, bit for bit as before; where the fill weighs on
    the statistics (a black or white collar) the valid pixels come out otherwise: the
    stretch with the mask is not washed out by its fill."""
    src, op = run["jobs"][name]
    page, valid = run["pages"][src], run["valid"]
    off = read(run["out"][f"{name}_off"])
    everywhere = np.ones(valid.shape, bool)
    np.testing.assert_array_equal(off, reference(page, everywhere, op))
    got = read(run["out"][name])
    assert (got != off)[valid].any()
    if name == "stretch":  # the fill (0) is the low percentile without the mask: washed out
        assert np.percentile(page, STRETCH["p_low"], method="lower") == 0
        assert got[valid].std() > 1.2 * off[valid].std()


@pytest.mark.parametrize("name", ["canny", "canny_batches"])
def test_cannys_blur_leaves_the_masked_out_pixels_out(run, name):
    """canny's ``sigma`` blur is of the valid pixels alone, the masked-out ones kept (the
    reference: OpenCV's Canny of ``masked_blur``, the numpy blur of the valid samples), tiled
    as on the whole page; the job without the mask blurs the white fill into the data, and
    its edges differ from it near the swath's edge."""
    page, valid = run["pages"]["gray"], run["valid"]
    got = read(run["out"][name])
    want = cv2.Canny(masked_blur(page, CANNY["sigma"], valid), CANNY["low"], CANNY["high"])
    np.testing.assert_array_equal(got, want)
    params = {k: v for k, v in CANNY.items() if k != "op"}
    whole = OPS["canny"].apply(page, {**params, "input_nodata": None, "input_valid": valid})
    np.testing.assert_array_equal(got, whole)
    off = read(run["out"]["canny_off"])
    plain = cv2.Canny(cv2.GaussianBlur(page, (0, 0), CANNY["sigma"]), CANNY["low"],
                      CANNY["high"])
    np.testing.assert_array_equal(off, plain)
    assert (got != off)[valid].any()


@pytest.mark.parametrize(("op", "dtype"), [
    (STRETCH, "uint8"), (STRETCH, "int16"), (BAND_STRETCH, "uint16"), (NORMALIZE, "uint16"),
    (NORMALIZE, "int32"), (NORMALIZE, "float32"), (NORMALIZE, "float64"),
    (NORMALIZE, "uint32"), (BAND_NORMALIZE, "int32"), (BAND_NORMALIZE, "float32"),
    (EQUALIZE, "uint8"), (OTSU, "uint8"), (OTSU, "uint16")])
def test_a_page_masked_out_whole_comes_out_as_it_went_in(run, op, dtype):
    """A page whose mask leaves every pixel out has no statistics: the op still makes its
    table (of nothing) and writes every pixel back, the fill as it was (the pages of the run
    above in other types, 3 bands where the op takes them)."""
    page = run["pages"]["u16" if op["op"] in ("normalize", "percentile_stretch") else "gray"]
    page = page.astype(dtype)
    assert OPS[op["op"]].accepts(op, page.dtype, 1 if page.ndim == 2 else 3) is None
    params = {k: v for k, v in op.items() if k != "op"}
    none = np.zeros(run["valid"].shape, bool)
    np.testing.assert_array_equal(OPS[op["op"]].apply(page, {**params, "input_valid": none}),
                                  page)


# --- a masked page binarised to a 1-bit output ---------------------------------------------

#: a masked-out fill that is neither black nor white (a scanner's gray frame)
FILL = 17
THRESHOLD = {"op": "threshold", "value": 120}
BILEVEL = {"bilevel": True}
TURN = {"op": "rotate", "angle": 90}


@pytest.fixture(scope="module")
def bilevel_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A gray page masked outside its swath, its fill 17, binarised by ``otsu_threshold``,
    ``threshold`` and ``canny`` to a 1-bit output, in processing tiles of 64 and 128 pixels
    (fused and in batches), in units of four tiles; and Otsu's page turned after it (the
    output's mask is the input's turned)."""
    root = tmp_path_factory.mktemp("masked_bilevel")
    h, w = 260, 330
    valid = swath(h, w)
    gray = scene(h, w, 1, 5).astype(np.uint8)
    gray[~valid] = FILL
    gdal_masked(root / "gray.tif", gray, valid, block=128)
    jobs = {"otsu_64": (OTSU, 64, True), "otsu_128": (OTSU, 128, False),
            "threshold_64": (THRESHOLD, 64, False), "threshold_128": (THRESHOLD, 128, True),
            "canny_64": (CANNY, 64, True), "otsu_turned": ([OTSU, TURN], 64, False),
            "otsu_off": (OTSU, 64, True)}
    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": {"output_options": {"tile": 32, "compression": "group4", **BILEVEL}},
        "jobs": [{"input": str(root / "gray.tif"), "output": str(root / "out" / f"{n}.tif"),
                  "ops": op if isinstance(op, list) else [op], "tile": tile, "fuse": fuse,
                  **({"output_options": OFF} if n.endswith("_off") else {})}
                 for n, (op, tile, fuse) in jobs.items()]}))
    report, _ = run_in_units(manifest, 4 * 64 * 64, "--workers", "1", "--quiet",
                             "--no-contact-sheet", check=False)
    return {"page": gray, "valid": valid, "report": report,
            "ops": {n: op for n, (op, _, _) in jobs.items()},
            "out": {n: root / "out" / f"{n}.tif" for n in jobs}}


def binarised(page: np.ndarray, valid: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    """OpenCV's op of the page's valid pixels (Otsu's threshold of the valid samples alone,
    Canny of the blur of the valid pixels alone), 0 or 255 each."""
    if op["op"] == "otsu_threshold":
        return reference(page, valid, op)
    if op["op"] == "threshold":
        return cv2.threshold(page, op["value"], 255, cv2.THRESH_BINARY)[1]
    return cv2.Canny(masked_blur(page, op["sigma"], valid), op["low"], op["high"])


@pytest.mark.parametrize("name", ["otsu_64", "otsu_128", "threshold_64", "threshold_128",
                                  "canny_64", "otsu_turned"])
def test_a_masked_page_binarised_to_1bit_stores_its_masked_out_pixels_as_bit_0(bilevel_run,
                                                                              name):
    """The job succeeds (before, otsu_threshold wrote the fill 17 back and the job failed
    when its tiles were encoded); each valid pixel is OpenCV's result of the valid pixels
    alone; each masked-out pixel is stored as bit 0, which tifffile and GDAL read as 0
    (white in the miniswhite page, 255 of the 8-bit pixels): whatever the op made of the
    fill, whatever the tiling; and the mask is carried."""
    page, valid = bilevel_run["page"], bilevel_run["valid"]
    job = bilevel_run["report"]["jobs"][list(bilevel_run["ops"]).index(name)]
    assert job["status"] == "SUCCEEDED", job
    op = bilevel_run["ops"][name]
    # (the turned job: its op, then the page, its mask and the references turned as it is)
    turn = (lambda a: np.rot90(a, -1)) if isinstance(op, list) else (lambda a: a)
    op = op[0] if isinstance(op, list) else op
    want = turn(binarised(page, valid, op))
    params = {k: v for k, v in op.items() if k != "op"}
    whole = turn(OPS[op["op"]].apply(page, {**params, "input_nodata": None,
                                            "input_valid": valid}))
    valid = turn(valid)
    with tifffile.TiffFile(bilevel_run["out"][name]) as tf:
        bits = tf.pages[0].asarray()
    assert bits.dtype == bool and bits.shape == valid.shape
    assert not bits[~valid].any()
    np.testing.assert_array_equal(np.where(bits, 0, 255)[valid], want[valid])
    with rasterio.open(bilevel_run["out"][name]) as ds:
        assert not ds.read(1)[~valid].any()
        np.testing.assert_array_equal(ds.read_masks(1) > 0, valid)
    # the op on the whole page, its masked-out pixels white: bit for bit the tiled run's
    np.testing.assert_array_equal(np.where(bits, 0, 255), np.where(valid, whole, 255))


def test_a_1bit_job_that_leaves_the_mask_out_reads_the_fill_as_data_as_before(bilevel_run):
    """Told to leave the mask out (``"masks": false``), the 1-bit job is as before: Otsu's
    threshold of the whole page, the fill read as data (and thresholded with the rest: 17
    is black), no pixel written white for a mask, and no mask page."""
    page = bilevel_run["page"]
    job = bilevel_run["report"]["jobs"][list(bilevel_run["ops"]).index("otsu_off")]
    assert job["status"] == "SUCCEEDED", job
    with tifffile.TiffFile(bilevel_run["out"]["otsu_off"]) as tf:
        assert len(tf.pages) == 1
        bits = tf.pages[0].asarray()
    _, want = cv2.threshold(page, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    np.testing.assert_array_equal(np.where(bits, 0, 255), want)
    assert bits[~bilevel_run["valid"]].all()  # (the fill: black, stored as bit 1)


def _counted_calchist(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count OpenCV's calcHist calls (the statistics' ``cv2`` proxy looks it up per call)."""
    calls: list[int] = []
    calc = cv2.calcHist
    monkeypatch.setattr(cv2, "calcHist", lambda *a, **k: calls.append(1) or calc(*a, **k))
    return calls


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_opencv_counts_a_masked_tiles_histogram_as_numpy_does(monkeypatch, dtype, bands):
    """A masked tile's statistics partial (percentile_stretch's, equalize_hist's and
    otsu_threshold's histogram; normalize's minimum and maximum, with its no-data value at
    either end, inside, absent, or the only value) is OpenCV's calcHist under the mask where
    that is faster (uint8; uint16 of 2 bands or more: no copy of the valid samples), and
    equals np.bincount, np.min and np.max of the valid samples' copy, exactly; a uint16
    band alone keeps the copy (calcHist is slower there). The tile is a crop of a larger
    array, as the tiled path's core is."""
    from pipeline.core import stats as stats_mod

    calls = _counted_calchist(monkeypatch)
    rng = np.random.default_rng(bands)
    top = np.iinfo(dtype).max
    h, w = 150, 170
    big = rng.integers(3, top - 2, (h + 6, w + 8, bands), dtype=dtype)
    img = big[3:3 + h, 5:5 + w, :] if bands > 1 else big[3:3 + h, 5:5 + w, 0]
    valid = swath(h, w)[::-1]  # (a hole and slanted edges: 65% valid)
    img[~valid] = 0  # the fill: below every valid sample, left out
    img[0, -1] = 1  # masked-out too (swath: False at the top right)
    assert not valid[0, -1]
    data = img[valid]  # (n,) or (n, bands): the reference's copy
    p = {"input_valid": valid}
    hist = stats_mod.STRETCH.partial(img, p)["hist"]
    np.testing.assert_array_equal(hist, np.bincount(data.ravel(), minlength=top + 1))
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(stats_mod.EQUALIZE.partial(img, p)["hist"], hist)
    banded = stats_mod.STRETCH.partial(img, {**p, "per_band": True})["hist"]
    np.testing.assert_array_equal(banded, [np.bincount(data.reshape(len(data), -1)[:, b],
                                                       minlength=top + 1)
                                           for b in range(bands)])
    lo, hi = int(data.min()), int(data.max())
    inside = int(data.ravel()[0])
    for nodata in (None, lo, hi, inside, top):
        state = stats_mod.NORMALIZE.partial(img, {**p, "input_nodata": nodata})
        rest = data[data != nodata] if nodata is not None else data
        want = {"min": lo, "max": hi} | ({} if nodata is None else {
            "data_min": int(rest.min()), "data_max": int(rest.max())})
        assert {k: (v.dtype, v.shape, int(v[0])) for k, v in state.items()} == \
            {k: (np.dtype(dtype), (1,), v) for k, v in want.items()}, nodata
    fast = dtype == "uint8" or bands > 1
    # (a histogram a band, twice through the whole-page partials: stretch, equalize; the
    # uint8 bands of per_band too; normalize's five)
    assert len(calls) == (bands * (2 + 5) + (bands if dtype == "uint8" else 0) if fast else 0)
    one = np.full_like(img, 9)
    state = stats_mod.NORMALIZE.partial(one, {**p, "input_nodata": 9})
    assert {k: int(v[0]) for k, v in state.items()} == {"min": 9, "max": 9}  # no data_*
    none = np.zeros_like(valid)
    assert not stats_mod.STRETCH.partial(img, {"input_valid": none})["hist"].any()
    state = stats_mod.NORMALIZE.partial(img, {"input_valid": none})
    assert {k: int(v[0]) for k, v in state.items()} == {"min": top, "max": 0}


def test_a_tile_over_2_24_pixels_is_counted_by_numpy():
    """calcHist counts in float32 (exact to 2**24 a bin): a tile of more pixels keeps the
    copy of its valid samples and np.bincount, exact (2**24 + 1 pixels of one value would
    count 2**24 through calcHist)."""
    from pipeline.core import stats as stats_mod

    n = stats_mod.CALCHIST_PIXELS + 1
    img = np.full((1, n, 2), 7, np.uint8)
    valid = np.ones((1, n), bool)
    hist = stats_mod.STRETCH.partial(img, {"input_valid": valid})["hist"]
    assert hist[7] == 2 * n and hist.sum() == 2 * n
