"""``per_band`` of percentile_stretch and normalize: each band stretched by its own statistics
(a DAPI channel 10x brighter than the others; QGIS's per-band 2-98% cut of a true-colour
composite). The tiled path (split -> statistics round over several batches -> reduce ->
process -> merge, in-process through ``run_tiled``) is compared with references written
here with numpy/OpenCV on each band of the whole page, never with pipeline's own functions.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from test_exactness import assert_identical, make_image, run_tiled

from pipeline import cli
from pipeline.core import stats as stats_mod
from pipeline.core.manifest import parse_manifest
from pipeline.core.ops import OPS
from pipeline.errors import ManifestError
from pipeline.steps import stats as steps_stats

pytestmark = pytest.mark.timeout(300)

NODATA_TAG = 42113  # GDAL_NODATA


def _write(path: Path, page: np.ndarray, nodata: int | None = None) -> None:
    """A tiled TIFF of 32 x 32 tiles: RGB for 3 bands, else gray channels (MINISBLACK with
    extra samples, as a fluorescence image's)."""
    rgb = page.ndim == 3 and page.shape[2] == 3
    extra = [] if nodata is None else [(NODATA_TAG, "s", 0, str(nodata), True)]
    tifffile.imwrite(path, page, photometric="rgb" if rgb else "minisblack",
                     planarconfig="contig", tile=(32, 32), metadata=None, extratags=extra)


def _dim_bright(seed: int, channels: int, dtype: str) -> np.ndarray:
    """A page whose bands have ranges of their own: band 0 spans the type, the others are
    a tenth of it and shifted (the bright DAPI channel and the dim ones)."""
    page = make_image(seed, 150, 211, channels, dtype).astype(np.float64)
    top = np.iinfo(dtype).max
    for b in range(1, channels):
        page[..., b] = page[..., b] / 10 + top * b / (2 * channels)
    return np.rint(page).astype(dtype)


def _stretch_band(band: np.ndarray, data: np.ndarray, p_low: float, p_high: float
                  ) -> np.ndarray:
    """The documented stretch of one band with ``data``'s lower percentiles."""
    top = float(np.iinfo(band.dtype).max)
    lo = float(np.percentile(data, p_low, method="lower"))
    hi = float(np.percentile(data, p_high, method="lower"))
    v = band.astype(np.float64)
    if hi == lo:
        return np.where(v > lo, top, 0).astype(band.dtype)
    return np.clip(np.rint((v - lo) / (hi - lo) * top), 0, top).astype(band.dtype)


def _per_band(page: np.ndarray, func: Any) -> np.ndarray:
    return np.stack([func(np.ascontiguousarray(page[..., b])) for b in range(page.shape[2])],
                    axis=2)


def _run_both(tmp_path: Path, src: Path, ops: list[dict[str, Any]], want: np.ndarray) -> None:
    """The tiled path, fused and not, on several tiles and batches, equals ``want``."""
    for fuse in (True, False):
        (got,), plan = run_tiled(tmp_path, src, ops, 64, 32, fuse=fuse, units="small",
                                 tiles_per_batch=2)
        assert plan.tiles > 4 and len(plan.batches) > 2
        assert_identical(got, want, f"{ops} fuse {fuse}")


@pytest.mark.parametrize("dtype,channels", [("uint8", 3), ("uint16", 4)])
def test_percentile_stretch_per_band_is_numpys_per_band(tmp_path, dtype, channels):
    page = _dim_bright(3, channels, dtype)
    src = tmp_path / f"{dtype}.tif"
    _write(src, page)
    want = _per_band(page, lambda band: _stretch_band(band, band, 2, 98))
    everything = np.percentile(page, (2, 98), method="lower")
    assert not np.array_equal(want[..., 1], _stretch_band(page[..., 1], page, 2, 98)), \
        f"the page's own percentiles {everything} must not give the per-band result"
    _run_both(tmp_path, src, [{"op": "percentile_stretch", "p_low": 2, "p_high": 98,
                               "per_band": True}], want)


@pytest.mark.parametrize("dtype,channels", [("uint8", 3), ("uint16", 4)])
def test_normalize_per_band_is_opencvs_per_band(tmp_path, dtype, channels):
    page = _dim_bright(5, channels, dtype)
    src = tmp_path / f"{dtype}.tif"
    _write(src, page)
    top = np.iinfo(dtype).max
    want = _per_band(page, lambda band: cv2.normalize(band, None, 0, top, cv2.NORM_MINMAX))
    assert not np.array_equal(want, cv2.normalize(page, None, 0, top, cv2.NORM_MINMAX))
    _run_both(tmp_path, src, [{"op": "normalize", "per_band": True}], want)


def test_normalize_per_band_of_float32_skips_nan_per_band(tmp_path):
    """Each band's range is of its values that are not NaN; NaN stays NaN."""
    rng = np.random.default_rng(4)
    page = (rng.random((150, 211, 3)) * np.array([10.0, 1.0, 0.1]) - 0.5).astype(np.float32)
    page[rng.random(page.shape) < 0.02] = np.nan
    src = tmp_path / "float.tif"
    _write(src, page)

    def ref(band: np.ndarray) -> np.ndarray:
        nan = np.isnan(band)
        filled = np.where(nan, np.nanmin(band), band).astype(np.float32)
        out = cv2.normalize(filled, None, 0, 1, cv2.NORM_MINMAX)
        out[nan] = np.nan
        return out
    want = _per_band(page, ref)
    for fuse in (True, False):
        (got,), plan = run_tiled(tmp_path, src, [{"op": "normalize", "per_band": True}], 64, 32,
                                 fuse=fuse, units="small", tiles_per_batch=2)
        assert plan.tiles > 4
        np.testing.assert_array_equal(got, want)


def _collar(dtype: str, nodata: int) -> np.ndarray:
    """Four channels whose left third is no-data (a scene's collar; whole tiles hold no data
    in any band), the data of each band in a range of its own, away from ``nodata``."""
    page = _dim_bright(7, 4, dtype)
    top = np.iinfo(dtype).max
    page = np.clip(page, top // 16, top - top // 16)
    page[:, :70] = nodata
    return page


def _keep_nodata(out: np.ndarray, band: np.ndarray, nodata: int) -> np.ndarray:
    """As documented: data sent onto the no-data value go one above it (one below at the
    type's maximum); the no-data pixels stay."""
    top = np.iinfo(band.dtype).max
    out = out.copy()
    out[out == nodata] = nodata - 1 if nodata == top else nodata + 1
    out[band == nodata] = nodata
    return out


@pytest.mark.parametrize("nodata", [0, 65535])
def test_per_band_leaves_each_bands_no_data_out(tmp_path, nodata):
    page = _collar("uint16", nodata)
    src = tmp_path / "collar.tif"
    _write(src, page, nodata)
    stretched = _per_band(page, lambda band: _keep_nodata(
        _stretch_band(band, band[band != nodata], 2, 98), band, nodata))
    _run_both(tmp_path, src, [{"op": "percentile_stretch", "p_low": 2, "p_high": 98,
                               "per_band": True}], stretched)

    def norm(band: np.ndarray) -> np.ndarray:
        data = band[band != nodata]
        lo, hi = int(data.min()), int(data.max())
        values = np.arange(lo, hi + 1, dtype=np.uint16).reshape(1, -1)
        lut = np.zeros(65536, np.uint16)
        lut[lo:hi + 1] = cv2.normalize(values, None, 0, 65535, cv2.NORM_MINMAX).ravel()
        return _keep_nodata(lut[band], band, nodata)
    _run_both(tmp_path, src, [{"op": "normalize", "per_band": True}], _per_band(page, norm))


@pytest.mark.parametrize("op", [{"op": "percentile_stretch", "p_low": 2, "p_high": 98},
                                {"op": "normalize"}])
def test_one_band_per_band_is_the_default(tmp_path, op):
    page = _dim_bright(9, 1, "uint16")
    src = tmp_path / "one.tif"
    _write(src, page, 0)
    (default,), _ = run_tiled(tmp_path, src, [op], 64, 32, fuse=False, units="small")
    (banded,), plan = run_tiled(tmp_path, src, [{**op, "per_band": True}], 64, 32,
                                fuse=False, units="small")
    assert plan.tiles > 4
    assert not np.array_equal(default, page)
    assert_identical(banded, default, "per_band on one band")


def test_manifest_refuses_a_per_band_that_is_not_a_boolean():
    jobs = [{"input": "a.tif", "output": f"o{i}.tif", "ops": [op]} for i, op in enumerate([
        {"op": "percentile_stretch", "per_band": "yes"},
        {"op": "normalize", "per_band": 1},
    ])]
    with pytest.raises(ManifestError) as info:
        parse_manifest({"jobs": jobs}, "m.json", "/data")
    assert info.value.problems == [
        'jobs[0].ops[0].per_band: expected true or false, got "yes"',
        "jobs[1].ops[0].per_band: expected true or false, got 1",
    ]


def test_ops_lists_per_band(capsys):
    assert cli.main(["ops", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["ops"]
    for name in ("percentile_stretch", "normalize"):
        (param,) = [p for p in doc[name]["params"] if p["name"] == "per_band"]
        assert param["accepts"] == "true or false"
        assert OPS[name].params[-1].default is False
    assert cli.main(["ops"]) == 0
    assert "per_band: true or false (default false)" in capsys.readouterr().out


class _Live:
    """How many of the arrays a function returns are alive at once, at most."""

    def __init__(self, func: Any) -> None:
        self.func, self.live, self.most = func, 0, 0

    def __call__(self, *args: Any) -> Any:
        out = self.func(*args)
        for array in out.values() if isinstance(out, dict) else [out]:
            self.live += 1
            self.most = max(self.most, self.live)
            weakref.finalize(array, self._gone)
        return out

    def _gone(self) -> None:
        self.live -= 1


def test_statistics_are_added_up_as_they_come(tmp_path, monkeypatch):
    """A stats batch holds one tile's histogram and their sum, not every tile's; a reduce
    holds READ_THREADS batches' parts and their sum, not every batch's (per-band histograms
    of 16 bands of 16 bits are 8 MiB a part: 10,000 batches would be 80 GiB)."""
    page = _dim_bright(11, 4, "uint16")
    src = tmp_path / "fold.tif"
    _write(src, page)
    monkeypatch.setattr(steps_stats, "READ_THREADS", 2)
    tiles = _Live(stats_mod.histogram)
    monkeypatch.setattr(stats_mod, "histogram", tiles)
    parts = _Live(steps_stats._read_part)
    monkeypatch.setattr(steps_stats, "_read_part", parts)
    ops = [{"op": "percentile_stretch", "p_low": 2, "p_high": 98}]
    (got,), plan = run_tiled(tmp_path, src, ops, 32, 32, fuse=False, tiles_per_batch=8)
    assert plan.tiles >= 24 and len(plan.batches) >= 5
    assert tiles.most <= 2, tiles.most  # (a part, and the one before until it is replaced)
    assert 0 < parts.most <= steps_stats.READ_THREADS + 1, parts.most  # (0: not read here)
    assert_identical(got, _stretch_band(page, page, 2, 98), "the whole page's stretch")


def test_a_reduce_reads_the_parts_of_several_pages_at_once(tmp_path, monkeypatch):
    """A reduce reads READ_THREADS batches' parts at a time across the job's pages, not a
    page's parts at a time: a job of many one-batch pages (an OME's channel pages) read its
    parts one GET after another. Each page still gets its own statistics, in order."""
    import threading
    import time

    pages = [_dim_bright(20 + k, 1, "uint16") for k in range(5)]
    src = tmp_path / "pages.tif"
    with tifffile.TiffWriter(src) as tw:
        for page in pages:
            tw.write(page, photometric="minisblack", tile=(32, 32), metadata=None)
    monkeypatch.setattr(steps_stats, "READ_THREADS", 3)
    lock, live, most = threading.Lock(), [0], [0]
    read = steps_stats._read_part

    def reading(url: str) -> Any:
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        try:
            time.sleep(0.05)  # (long enough for the reads submitted beside it to start)
            return read(url)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(steps_stats, "_read_part", reading)
    ops = [{"op": "percentile_stretch", "p_low": 2, "p_high": 98}]
    got, plan = run_tiled(tmp_path, src, ops, 64, 32, fuse=False, tiles_per_batch=16)
    assert len(plan.pages) == 5 and len(plan.batches) == 5  # (a batch a page)
    assert most[0] > 1, most[0]
    for k, page in enumerate(pages):
        assert_identical(got[k], _stretch_band(page, page, 2, 98), f"page {k}'s own stretch")


@pytest.mark.parametrize("op", [{"op": "percentile_stretch"}, {"op": "normalize"}])
def test_a_band_of_no_data_only_stays_no_data(tmp_path, op):
    """A band that holds only the no-data value (a channel not acquired) has no data
    statistics of its own: it stays no-data, and the other bands get their own."""
    page = _collar("uint16", 0)
    page[..., 2] = 0
    src = tmp_path / "empty_band.tif"
    _write(src, page, 0)
    alone = tmp_path / "band0.tif"
    _write(alone, np.ascontiguousarray(page[..., 0]), 0)
    (want0,), _ = run_tiled(tmp_path, alone, [op], 64, 32, fuse=False, units="small")
    (got,), plan = run_tiled(tmp_path, src, [{**op, "per_band": True}], 64, 32, fuse=False,
                             units="small", tiles_per_batch=2)
    assert len(plan.batches) > 2
    assert (got[..., 2] == 0).all()
    assert_identical(got[..., 0], want0, "band 0, as a page of its own")
