"""A job's units read the version of its input that PlanJob planned on: an input replaced or
rewritten during the run fails them by name (InputChangedError), instead of an output made of
two versions (a band of the old file above a band of the new one). Steps are called as the
state machine calls them, on a real local file and on S3 (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import moto_s3

from pipeline import handlers
from pipeline.adapters import storage
from pipeline.core import plan as plan_mod
from pipeline.errors import InputChangedError

BUCKET = "tp-version"


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (256, 192), dtype=np.uint8)


def _manifest(src: str) -> str:
    """One job: the page in tiles of 64, inverted."""
    return json.dumps({"defaults": {"tile": 64, "output_options": {"tile": 32}}, "jobs": [
        {"input": src, "output": "out/a.tif", "ops": [{"op": "invert"}]}]})


def _planned(manifest: str, work: str, report: str, units: bool = True) -> dict[str, Any]:
    """PlanRun and PlanJob of a one-job manifest (``units``: its page is cut into several
    fused units, as small_units makes it)."""
    run = handlers.dispatch("split", {"action": "plan_run", "manifest": manifest,
                                      "work": work, "run_id": "r1", "report": report})
    job = handlers.dispatch("process", {"action": "plan_job", "run": run["run"], "job": 0})
    assert job["fused"] and (len(job["units"]) >= 2) == units
    return job


def _unit(job: dict[str, Any], unit: int) -> dict[str, Any]:
    return handlers.dispatch("process", {"action": "process_unit", "plan": job["plan"],
                                         "unit": unit})


@pytest.fixture
def small_units(monkeypatch):
    monkeypatch.setattr(plan_mod, "FUSED_UNIT_PIXELS", 64 * 192)  # a unit a band of 64 rows


def test_a_local_input_rewritten_between_units_fails_them_by_name(tmp_path, small_units):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _image(1), tile=(64, 64))
    (tmp_path / "m.json").write_text(_manifest("a.tif"))
    job = _planned(str(tmp_path / "m.json"), str(tmp_path / "work"),
                   str(tmp_path / "report.json"))
    _unit(job, 0)
    tifffile.imwrite(src, _image(2), tile=(64, 64))  # the same size: a new version
    os.utime(src, ns=(1, 1))  # (a different mtime however fast the machine)
    with pytest.raises(InputChangedError, match=f"{src} changed after its job was planned"):
        _unit(job, 1)
    assert not (tmp_path / "out" / "a.tif").exists()


def test_an_s3_input_replaced_between_units_fails_them_by_name(tmp_path, monkeypatch,
                                                                 small_units):
    with moto_s3(monkeypatch, BUCKET) as client:
        for seed, name in ((1, "a.tif"), (2, "b.tif")):
            tifffile.imwrite(tmp_path / name, _image(seed), tile=(64, 64))
        client.upload_file(str(tmp_path / "a.tif"), BUCKET, "in/a.tif")
        client.put_object(Bucket=BUCKET, Key="m.json", Body=_manifest("in/a.tif").encode())
        job = _planned(f"s3://{BUCKET}/m.json", f"s3://{BUCKET}/work",
                       f"s3://{BUCKET}/report.json")
        _unit(job, 0)
        client.upload_file(str(tmp_path / "b.tif"), BUCKET, "in/a.tif")  # replaced
        with pytest.raises(InputChangedError, match=f"s3://{BUCKET}/in/a.tif changed"):
            _unit(job, 1)
        assert not storage.exists(f"s3://{BUCKET}/out/a.tif")


def test_an_unchanged_input_is_read_by_every_unit(tmp_path, small_units):
    """(The version noted by PlanJob is what the units find: the job runs to its output.)"""
    tifffile.imwrite(tmp_path / "a.tif", _image(1), tile=(64, 64))
    (tmp_path / "m.json").write_text(_manifest("a.tif"))
    job = _planned(str(tmp_path / "m.json"), str(tmp_path / "work"),
                   str(tmp_path / "report.json"))
    plan = json.loads(Path(job["plan"]).read_text())
    assert plan["input_version"] == storage.file_version(os.stat(tmp_path / "a.tif"))
    for unit in job["units"]:
        _unit(job, unit)
    merged = handlers.dispatch("merge", {"action": "merge", "plan": job["plan"]})
    assert np.array_equal(tifffile.imread(merged["output"]), 255 - _image(1))


def test_the_version_costs_no_request_and_a_small_job_no_delete(tmp_path, monkeypatch):
    """On S3, PlanJob notes the input's version from the one HeadObject its open of the input
    makes (no second one); a small job, one ProcessJob, makes no DeleteObject (its units
    have no earlier attempt's error record to remove: a retry reruns the whole task)."""
    tifffile.imwrite(tmp_path / "a.tif", _image(1), tile=(64, 64))
    with moto_s3(monkeypatch, BUCKET) as client:
        client.upload_file(str(tmp_path / "a.tif"), BUCKET, "in/a.tif")
        client.put_object(Bucket=BUCKET, Key="m.json", Body=_manifest("in/a.tif").encode())
        calls: list[tuple[str, str]] = []
        events = storage.s3_client().meta.events
        events.register("before-parameter-build.s3", lambda model, params, **_: calls.append(
            (model.name, params.get("Key", ""))))
        job = _planned(f"s3://{BUCKET}/m.json", f"s3://{BUCKET}/work",
                       f"s3://{BUCKET}/report.json", units=False)
        heads = [key for name, key in calls if name == "HeadObject" and key == "in/a.tif"]
        assert heads == ["in/a.tif"]
        assert job["single"]
        calls.clear()
        done = handlers.dispatch("process", {"action": "process_job", "plan": job["plan"]})
        assert done["output_bytes"] > 0
        assert not [c for c in calls if c[0] == "DeleteObject"], calls


#: a user op that writes the job's input over in place (same inode, same size) on its first
#: call: the unit has read its first tiles then, and reads the others after
OVERWRITER = '''
import os

def overwrite_once(tile, src, new, marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        with open(new, "rb") as fh:
            data = fh.read()
        with open(src, "r+b") as fh:  # in place: the same file, not a new one renamed there
            fh.write(data)
        os.utime(src, ns=(1, 1))  # (a different mtime however fast the machine)
    return 255 - tile
'''


@pytest.fixture
def overwriter(tmp_path, monkeypatch):
    folder = tmp_path / "userops"
    folder.mkdir()
    (folder / "tiffpipe_test_overwrite.py").write_text(OVERWRITER)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("TIFFPIPE_TILE_THREADS", "1")  # a tile at a time: the reads after known


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_an_input_written_in_place_during_a_unit_fails_it_by_name(tmp_path, overwriter,
                                                                  compression):
    """The input is written over in place (same inode and size, a new mtime) while a unit
    reads it, after its first tiles: uncompressed, the unit read tiles of both versions and
    the job SUCCEEDED with them; deflate, the new bytes at the old offsets did not decode
    (CorruptTiffError). Both are InputChangedError now, and no output is published: the
    open file's size and mtime are checked after the unit's last read (one fstat), and a
    segment that does not decode is checked likewise."""
    src, new = tmp_path / "a.tif", tmp_path / "b.tif"
    old_px = np.random.default_rng(1).integers(0, 256, (256, 1024), dtype=np.uint8)
    tifffile.imwrite(src, old_px, tile=(64, 64), compression=compression, metadata=None)
    tifffile.imwrite(new, 255 - old_px, tile=(64, 64), compression=compression, metadata=None)
    if compression:  # the same layout: the old file with its segments' bytes garbled
        raw = bytearray(src.read_bytes())
        with tifffile.TiffFile(src) as tf:
            for offset, count in zip(tf.pages[0].dataoffsets[1:],
                                     tf.pages[0].databytecounts[1:], strict=True):
                raw[offset:offset + count] = bytes(b ^ 0x5A for b in raw[offset:offset + count])
        new.write_bytes(bytes(raw))
    assert src.stat().st_size == new.stat().st_size
    inode = src.stat().st_ino
    ops = [{"op": "custom", "function": "tiffpipe_test_overwrite:overwrite_once", "halo": 0,
            "params": {"src": str(src), "new": str(new), "marker": str(tmp_path / "done")}}]
    (tmp_path / "m.json").write_text(json.dumps({"defaults": {"tile": 64, "output_options": {
        "tile": 64}}, "jobs": [
        {"input": "a.tif", "output": "out/a.tif", "ops": ops}]}))
    job = _planned(str(tmp_path / "m.json"), str(tmp_path / "work"),
                   str(tmp_path / "report.json"), units=False)
    assert job["single"]
    with pytest.raises(InputChangedError, match=f"{src} changed after its job was planned"):
        handlers.dispatch("process", {"action": "process_job", "plan": job["plan"]})
    assert (tmp_path / "done").exists() and src.stat().st_ino == inode  # written in place
    assert not (tmp_path / "out" / "a.tif").exists()
