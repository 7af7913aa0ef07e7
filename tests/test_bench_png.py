"""``bench/png_codecs.py``: the PNG writer's compressors, timed on contact sheets drawn for
the bench and on a PNG given; every file it times is decoded and checked by the script
itself. No timing is asserted (the machine is shared)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import run_bench_script

from pipeline.adapters import png_write

pytestmark = pytest.mark.timeout(300)


def _ways(threads: list[int]) -> set[str]:
    names = {"isal": png_write.ISAL, "zlib": png_write.ZLIB}
    ways = {f"{name}, {t} thread(s)" for name, d in names.items() if d for t in threads}
    return ways | {f"{lib} {level}, one call" for lib in ("libdeflate", "zlib-ng")
                   for level in (1, 2)}


def test_sheets_of_one_and_two_rows_and_a_png_given(tmp_path: Path) -> None:
    out = tmp_path / "png.json"
    stdout = run_bench_script("png_codecs.py", "--rows", "1,2", "--repeat", "2",
                              "--dir", str(tmp_path / "data"), "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["kind"] == "tiffpipe-png-codecs/1" and doc["cores"] >= 1
    threads = sorted({1, doc["cores"]})
    one, two = doc["cases"]
    assert one["pixels"][1] == two["pixels"][1] and two["pixels"][0] > one["pixels"][0]
    for case in (one, two):
        assert set(case["results"]) == _ways(threads)
        for res in case["results"].values():
            assert len(res["walls_ms"]) == 2 and min(res["walls_ms"]) > 0
            assert res["wall_ms"] == pytest.approx(statistics.median(res["walls_ms"]))
            assert 0 < res["bytes"] < case["raw_bytes"]
        for name in ("isal", "zlib"):  # the same bands whatever the threads
            sizes = {r["bytes"] for w, r in case["results"].items() if w.startswith(name + ",")}
            assert len(sizes) <= 1
    assert stdout == ""  # the table goes to stderr, the JSON to --json

    # a PNG given (here one the writer made of noise): its pixels, once
    png = tmp_path / "given.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    png.write_bytes(png_write.encode_rgb(pixels))
    run_bench_script("png_codecs.py", "--png", str(png), "--repeat", "1", "--json", str(out))
    (case,) = json.loads(out.read_text())["cases"]
    assert case["case"] == "given.png" and case["pixels"] == [40, 30, 3]
    assert set(case["results"]) == _ways(threads)
