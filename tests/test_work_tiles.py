"""The work tiles that Split writes and Process reads (jobs not fused: whole-page statistics,
``fuse: false``): lossless, whatever the pixels. LZ4's block format does not store the size of
what it compressed, and imagecodecs' guess of it failed for some sizes of incompressible data
(noise of 8.5-16 MiB: a float32 RGB or uint16 RGBA tile of 1024), failing such jobs every time
as "damaged work tile"."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from pipeline import handlers
from pipeline.adapters.tile_codec import decode_work_tile, encode_work_tile
from pipeline.errors import CorruptTiffError


@pytest.mark.parametrize(("shape", "dtype"), [
    ((1024, 1024, 3), "float32"),  # 12 MiB of noise: failed
    ((1088, 1088, 4), "uint16"),  # ~9 MiB
    ((2048, 2048), "float32"),  # 16 MiB
    ((64, 48, 5), "uint8"), ((1, 1), "float64"), ((0, 7), "uint16")])
def test_a_work_tile_of_noise_comes_back_as_it_was(shape, dtype):
    rng = np.random.default_rng(1)
    tile = (rng.random(shape) * 60000).astype(dtype)
    assert np.array_equal(decode_work_tile(encode_work_tile(tile)), tile)
    back = decode_work_tile(encode_work_tile(tile[::2]))  # a view: stored contiguous
    assert np.array_equal(back, tile[::2])


def test_a_damaged_work_tile_is_named():
    data = encode_work_tile(np.arange(4096, dtype=np.uint16).reshape(64, 64))
    with pytest.raises(CorruptTiffError, match="tiles/0000/00000_00000.tpw: damaged work tile"):
        decode_work_tile(data[:-100], "tiles/0000/00000_00000.tpw")


def test_a_job_of_noise_split_into_work_tiles_runs(tmp_path):
    """A float32 RGB page of noise, normalised (a statistics round: work tiles of 1024,
    12 MiB each), through the steps as the state machine calls them: the output is OpenCV's
    on the whole page."""
    page = cv2.GaussianBlur(np.random.default_rng(0).random((1100, 1100, 3)).astype(np.float32),
                            (0, 0), 2)
    tifffile.imwrite(tmp_path / "f.tif", page, photometric="rgb", tile=(256, 256))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "f.tif", "output": "out/f.tif", "ops": [{"op": "normalize"}]}]}))
    run = handlers.dispatch("split", {"action": "plan_run", "manifest": str(tmp_path / "m.json"),
                                      "work": str(tmp_path / "work"), "run_id": "r1",
                                      "report": str(tmp_path / "report.json")})
    job = handlers.dispatch("process", {"action": "plan_job", "run": run["run"], "job": 0})
    plan = job["plan"]
    for unit in job["units"]:
        handlers.dispatch("split", {"action": "split", "plan": plan, "unit": unit})
    for batch in job["batches"]:
        handlers.dispatch("process", {"action": "stats", "plan": plan, "batch": batch,
                                      "round": 0})
    handlers.dispatch("process", {"action": "reduce_stats", "plan": plan, "round": 0})
    for batch in job["batches"]:
        handlers.dispatch("process", {"action": "process", "plan": plan, "batch": batch})
    merged = handlers.dispatch("merge", {"action": "merge", "plan": plan})
    expected = cv2.normalize(page, None, 0, 1.0, cv2.NORM_MINMAX)
    assert np.array_equal(tifffile.imread(merged["output"]), expected)
