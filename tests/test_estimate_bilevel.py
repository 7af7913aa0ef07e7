"""``tiffpipe estimate`` of 1-bit outputs (``output_options.bilevel``): each codec's encode
and bytes of a 1-bit page from the calibration's ``bilevel`` measurements (group4 too), and
a job whose codec the calibration lacks costed as another, noted, not the manifest refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import mixed_book
from test_estimate import CAL, FAST_IO, _cli

import pipeline
from pipeline import estimate as est
from pipeline.core.models import BILEVEL_COMPRESSIONS

pytestmark = pytest.mark.timeout(180)
BENCH = Path(__file__).resolve().parents[1] / "bench"
#: a real fax page (CCITT group4, 1-bit)
FAX = Path(__file__).parent / "data" / "libtiff" / "testfax4.tiff"

#: CAL with 1-bit measurements: round numbers, each codec its own
BILEVEL = {"zstd": (0.001, 2e4), "deflate": (0.002, 3e4), "lzw": (0.004, 4e4),
           "none": (0.0001, 1.25e5), "group4": (0.003, 1e4)}


def _cal(bilevel: dict[str, tuple[float, float]] = BILEVEL) -> dict[str, Any]:
    cal = json.loads(json.dumps(CAL))
    for comp, (cpu, size) in bilevel.items():
        cal["encode"].setdefault(comp, {})["bilevel"] = {"cpu_s_per_mpx": cpu,
                                                         "bytes_per_mpx": size}
    return cal


def _manifest(folder: Path, *jobs: dict[str, Any], fuse: bool = False) -> Path:
    """Jobs on a real 1500 x 1100 gray TIFF of 0 and 255 (tiled, deflated), 256 px output
    tiles, not fused unless ``fuse``: each job ``{"output_options": ...}`` (and ops)."""
    src = folder / "scan.tif"
    if not src.exists():
        page = np.where(np.indices((1500, 1100)).sum(0) % 97 < 40, 0, 255).astype(np.uint8)
        tifffile.imwrite(src, page, tile=(256, 256), compression="zlib")
    m = folder / f"m{len(list(folder.glob('m*.json')))}.json"
    m.write_text(json.dumps({
        "defaults": {"fuse": fuse, "ops": [{"op": "threshold", "value": 128}]},
        "jobs": [{"input": src.name, "output": f"out/{k}.tif",
                  **job, "output_options": {"tile": 256, **job["output_options"]}}
                 for k, job in enumerate(jobs)]}))
    return m


def _estimate(m: Path, cal: dict[str, Any]) -> dict[str, Any]:
    planned = est.plan_manifest(str(m))
    assert planned.problems == []
    return est.estimate(planned.plans, cal, FAST_IO, input_bytes=planned.sizes)


@pytest.mark.parametrize("comp", BILEVEL_COMPRESSIONS)
def test_a_1bit_output_is_costed_by_its_1bit_measurements(tmp_path: Path, comp: str) -> None:
    """A 1-bit output's bytes and encode CPU are the calibration's 1-bit ones for its codec
    (group4 included), not the 8-bit output's; uncompressed, whole tiles of bits."""
    cal = _cal()
    one = _estimate(_manifest(tmp_path, {"output_options": {"compression": comp,
                                                           "bilevel": True}}), cal)
    eight = _estimate(_manifest(tmp_path, {"output_options": {
        "compression": "deflate" if comp == "group4" else comp}}), cal)
    [job] = one["jobs"]
    mpx = job["output_megapixels"]
    assert mpx == pytest.approx(1.65)
    cpu, size = BILEVEL[comp]
    data = job["output_bytes"] - job["header_bytes"]
    if comp == "none":  # 6 x 5 tiles of 256 x 256 bits
        assert data == 6 * 5 * 256 * 256 / 8
    else:
        assert data == pytest.approx(mpx * size)
    # process (not fused, factor 1): work decode and threshold alike, the encode differs
    enc8 = CAL["encode"]["deflate" if comp == "group4" else comp]["uint8x1"]["cpu_s_per_mpx"]
    diff = eight["steps"]["process"]["cpu_s"] - one["steps"]["process"]["cpu_s"]
    assert diff == pytest.approx(mpx * (enc8 - cpu))
    # measured on a binarised page: no note (an 8-bit output after a threshold has one)
    assert not [n for n in one["notes"] if "encoding" in n or "output size after" in n]
    # the largest job S3 holds is counted in the 1-bit output's bytes too
    bound = job["largest_job"]["bounds"]["s3_object"]
    one_bpm = 1e6 / 8 if comp == "none" else size
    eight_bpm = 1e6 if comp == "none" else eight["jobs"][0]["output_bytes"] / mpx
    ratio = one_bpm / eight_bpm
    assert eight["jobs"][0]["largest_job"]["bounds"]["s3_object"] / bound == pytest.approx(
        ratio, rel=0.01)


def test_an_uncalibrated_codec_is_noted_on_its_job_and_the_rest_estimated(tmp_path: Path
                                                                          ) -> None:
    """A calibration without group4 or any 1-bit measurement (as shipped before 1-bit
    outputs), and one without lzw: each job whose codec it lacks is costed as another
    measurement, with a note naming the job, the codec and what was used; the other jobs
    are costed as they are alone. Neither the estimate nor the CLI refuses the manifest."""
    cal = json.loads(json.dumps(CAL))
    del cal["encode"]["lzw"]
    m = _manifest(tmp_path, {"output_options": {"compression": "group4", "bilevel": True}},
                  {"output_options": {"compression": "zstd"}},
                  {"output_options": {"compression": "zstd", "bilevel": True}},
                  {"output_options": {"compression": "lzw"}})
    r = _estimate(m, cal)
    src = str(tmp_path / "scan.tif")
    by_job = {i: [n for n in r["notes"] if n.startswith(f"jobs[{i}] ({src}): ")
                  and "encoding measurements" in n] for i in range(4)}
    [g4], [], [z1], [lzw] = by_job.values()
    assert "the calibration has no group4 encoding measurements" in g4
    assert "costed as its 8-bit deflate output" in g4 and "rerun bench/compare.py" in g4
    assert "no zstd encoding measurements of 1-bit pages" in z1
    assert "costed as its 8-bit zstd output" in z1
    assert "no lzw encoding measurements" in lzw and "costed as deflate" in lzw
    # each costed as the measurement named: 8-bit deflate of gray 0.4 MB a Mpx
    rows = r["jobs"]
    for i in (0, 2, 3):
        assert rows[i]["output_bytes"] - rows[i]["header_bytes"] == pytest.approx(
            rows[i]["output_megapixels"] * 4e5)
    alone = _estimate(_manifest(tmp_path, {"output_options": {"compression": "zstd"}}), cal)
    assert rows[1]["output_bytes"] == alone["jobs"][0]["output_bytes"]
    cal_file = tmp_path / "cal.json"
    cal_file.write_text(json.dumps(cal))
    code, out, err = _cli("estimate", str(m), "--calibration", str(cal_file))
    assert code == 0, err
    assert f"note: {g4}" in out and f"note: {lzw}" in out


def test_the_shipped_calibration_measures_1bit_pages() -> None:
    """Every codec a 1-bit output may have, group4 included; uncompressed is 1/8 byte a
    pixel, and the codecs compress the bits well below it and below 8-bit gray."""
    cal = est.load_calibration()
    for comp in BILEVEL_COMPRESSIONS:
        entry = cal["encode"][comp]["bilevel"]
        assert entry["cpu_s_per_mpx"] > 0
        assert 0 < entry["bytes_per_mpx"] <= 1e6 / 8
    assert cal["encode"]["none"]["bilevel"]["bytes_per_mpx"] == 1e6 / 8
    assert (cal["encode"]["group4"]["bilevel"]["bytes_per_mpx"]
            < cal["encode"]["deflate"]["bilevel"]["bytes_per_mpx"]
            < cal["encode"]["deflate"]["uint8x1"]["bytes_per_mpx"] / 4)


def test_the_1bit_measurements_are_what_a_run_writes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/microbench.py's 1-bit page (a scanned letter, binarised) through a real run,
    each codec: the output's tile bytes are the measured bytes per Mpx times its pixels
    (the measurement is of whole 512 px tiles of that page, as the run writes them); and
    ``--bilevel-into`` writes the measurements into a calibration file, the rest kept."""
    monkeypatch.syspath_prepend(str(BENCH))
    import microbench
    page = microbench.bilevel_page()
    src = tmp_path / "letter.tif"
    tifffile.imwrite(src, page, tile=(512, 512), compression="zlib")
    cal_file = tmp_path / "cal.json"
    cal_file.write_text(json.dumps(CAL))
    assert microbench.main(["0.01", "--bilevel-into", str(cal_file)]) == 0
    cal = json.loads(cal_file.read_text())
    assert {k: v for k, v in cal.items() if k != "encode"} == \
        {k: v for k, v in CAL.items() if k != "encode"}
    jobs = [{"input": str(src), "output": str(tmp_path / f"{c}.tif"), "ops": [],
             "output_options": {"compression": c, "bilevel": True}}
            for c in BILEVEL_COMPRESSIONS]
    result = pipeline.run({"jobs": jobs})
    assert result.ok, [j.get("error") for j in result.jobs]
    mpx = page.size / 1e6
    for comp in BILEVEL_COMPRESSIONS:
        entry = cal["encode"][comp]["bilevel"]
        assert entry["cpu_s_per_mpx"] > 0
        assert cal["encode"][comp].get("uint8x1") == CAL["encode"].get(comp, {}).get("uint8x1")
        with tifffile.TiffFile(tmp_path / f"{comp}.tif") as tif:
            written = sum(tif.pages[0].databytecounts)
            assert np.array_equal(np.where(tif.pages[0].asarray(), 0, 255), page)
        assert written == pytest.approx(entry["bytes_per_mpx"] * mpx, rel=1e-6), comp
    assert math.isclose(cal["encode"]["none"]["bilevel"]["bytes_per_mpx"], 1e6 / 8)


def test_a_bilevel_auto_job_costs_each_page_by_its_own_kind(tmp_path: Path) -> None:
    """``bilevel`` "auto" on a 1-bit CCITT group4 text page and an 8-bit gray photo page:
    each page's process batches encode and write by its own kind (the text page by the
    1-bit group4 measurements, the photo by zstd's 8-bit ones), as a job of that page
    alone costs them; every batch was costed by the first page's kind (the photo's
    segments at group4's 1-bit bytes), although the output's bytes were per page."""
    mixed_book(tmp_path / "book.tif", FAX, plate=False)
    m = tmp_path / "m.json"
    m.write_text(json.dumps({
        "defaults": {"fuse": False, "output_options": {"bilevel": "auto", "tile": 256}},
        "jobs": [{"input": "book.tif", "output": f"{name}.tif", **pages}
                 for name, pages in (("both", {}), ("text", {"pages": [0]}),
                                     ("photo", {"pages": [1]}))]}))
    planned = est.plan_manifest(str(m))
    assert planned.problems == []
    assert [page.one_bit for page in planned.plans[0].pages] == [True, False]
    cal = _cal()
    alone = [est.estimate([plan], cal, FAST_IO, input_bytes=[size])
             for plan, size in zip(planned.plans, planned.sizes, strict=True)]
    both, text, photo = ((r["steps"]["process"]["cpu_s"], r["steps"]["process"]["bytes_out"])
                         for r in alone)
    # each page by its kind: the text page's encode and bytes group4's 1-bit, the photo's
    # zstd's of uint8 x 1 (work decode alike: no op)
    mpx = [r["jobs"][0]["output_megapixels"] for r in alone[1:]]
    zstd = CAL["encode"]["zstd"]["uint8x1"]
    decode = CAL["work"]["uint8x1"]["decode_cpu_s_per_mpx"]
    assert text[1] == pytest.approx(mpx[0] * BILEVEL["group4"][1])
    assert photo[1] == pytest.approx(mpx[1] * zstd["bytes_per_mpx"])
    assert photo[1] / mpx[1] != pytest.approx(text[1] / mpx[0])
    haloed = [r["jobs"][0]["haloed_megapixels"] for r in alone[1:]]
    factor = CAL["process"]["factor"]["uint8x1"]
    assert text[0] == pytest.approx(
        factor * (haloed[0] * decode + mpx[0] * BILEVEL["group4"][0]))
    assert photo[0] == pytest.approx(
        factor * (haloed[1] * decode + mpx[1] * zstd["cpu_s_per_mpx"]))
    # ... and the job of both pages is the two together
    assert both == pytest.approx((text[0] + photo[0], text[1] + photo[1]))
