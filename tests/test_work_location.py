"""A local run's work location (``tiffpipe run --work``; pipeline/adapters/work_location.py):
a run removes what it wrote there and nothing else; a location holding other files, or
another run's going on, is refused before anything runs; an earlier run's work left there
(--keep-work, a killed run) is removed first, so that its recorded errors and results do
not pass for the new run's. Real runs on real files, real processes holding real listings,
moto for S3."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import moto_s3, small_file_system
from test_local_runs import run_elsewhere

from pipeline import cli
from pipeline.adapters import local_runs, work_location
from pipeline.core.constants import WORK_ENTRIES
from pipeline.errors import WorkLocationError

BUCKET = "tp-work"
OPS = [{"op": "gaussian_blur", "sigma": 1.5}]


@pytest.fixture(autouse=True)
def runs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own list of local runs (no other test's runs in it)."""
    path = tmp_path / "runs"
    monkeypatch.setattr(local_runs, "FOLDER", str(path))
    return path


def _scan(path: Path, damaged: bool = False) -> np.ndarray:
    """A tiled deflate page; ``damaged``: one tile's bytes zeroed (it cannot be decoded)."""
    pixels = np.random.default_rng(3).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zlib", photometric="rgb")
    if damaged:
        with tifffile.TiffFile(path) as tf:
            offset, count = tf.pages[0].dataoffsets[7], tf.pages[0].databytecounts[7]
        data = bytearray(path.read_bytes())
        data[offset:offset + count] = bytes(count)
        path.write_bytes(bytes(data))
    return pixels


def _run(manifest: Path, *options: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet", *options])
    return code, err.getvalue()


def _manifest(folder: Path, source: Path, fuse: bool = True) -> Path:
    manifest = folder / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(source), "output": str(folder / "out.tif"), "ops": OPS,
        "fuse": fuse, "tile": 256, "output_options": {"tile": 128}}]}))
    return manifest


def test_a_folder_holding_other_files_is_refused_and_kept(tmp_path: Path):
    """`--work ~/scans`: the run would remove the folder with what it holds when it ends (it
    did: the input and every other file went). Refused before anything runs, untouched."""
    mine = tmp_path / "scans"
    mine.mkdir()
    source = mine / "scan.tif"
    _scan(source)
    (mine / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    manifest = _manifest(tmp_path, source)
    code, err = _run(manifest, "--work", str(mine))
    assert code == 2
    for word in (str(mine), "not a tiffpipe run's work", "notes.txt", "--work"):
        assert word in err, err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "m.report.json").exists()


def test_a_file_is_refused(tmp_path: Path):
    source = tmp_path / "scan.tif"
    _scan(source)
    before = source.read_bytes()
    code, err = _run(_manifest(tmp_path, source), "--work", str(source))
    assert code == 2 and f"{source}: the work location is a file, not a folder" in err, err
    assert source.read_bytes() == before


def test_a_folder_that_cannot_be_made_or_written_is_refused_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The default work folder beside a manifest in a read-only folder, or a --work under a
    file: exit 2 before anything runs, naming the folder and --work (the run failed at
    PlanRun with an OutputNotWritableError about job-specs.bin, not naming --work)."""
    source = tmp_path / "scan.tif"
    _scan(source)
    manifest = _manifest(tmp_path, source)
    code, err = _run(manifest, "--work", str(source / "work"))
    assert code == 2 and f"{source / 'work'}: the work folder cannot be written" in err, err
    assert "give --work a folder this run can write" in err
    # a folder this user may not write (root may write any: the check is the kernel's)
    monkeypatch.setattr(work_location.os, "access", lambda path, mode: False)
    code, err = _run(manifest)
    assert code == 2 and ".tiffpipe-work" in err and "permission denied" in err, err
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "m.report.json").exists()


def test_every_place_a_run_cannot_write_is_said_at_once(tmp_path: Path):
    """A manifest in a read-only folder (its report and work folder by default beside it):
    the run named the report alone; given --report elsewhere, the next run then named the
    work folder. Both are checked before anything runs (exit 2) and said in one message;
    with one of them moved, the other alone."""
    import subprocess

    source = tmp_path / "scan.tif"
    _scan(source)
    with small_file_system(tmp_path / "ro") as folder:
        manifest = folder / "m.json"
        manifest.write_text(json.dumps({"jobs": [{
            "input": str(source), "output": str(tmp_path / "out.tif"), "ops": OPS}]}))
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        code, err = _run(manifest)
        assert code == 2
        assert err.startswith(f"tiffpipe: the run report cannot be written: report "
                              f"{folder / 'm.report.json'}: cannot write in {folder} "
                              "(Read-only file system)"), err
        assert (f"nor can the work folder be: {folder / '.tiffpipe-work'}" in err
                and "give --work a folder this run can write" in err), err
        code, err = _run(manifest, "--report", str(tmp_path / "r.json"))
        assert code == 2 and "report" not in err, err
        assert f"{folder / '.tiffpipe-work'}/" in err and "Read-only file system" in err, err
        code, err = _run(manifest, "--work", str(tmp_path / "work"))
        assert code == 2 and "work" not in err.replace("--report", ""), err
        assert f"report {folder / 'm.report.json'}: cannot write in {folder}" in err, err
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("keep_work", [False, True])
def test_a_given_folder_loses_only_what_the_run_wrote(tmp_path: Path, keep_work: bool):
    """A new or empty folder: the run's files there, removed at its end with the folder
    (then empty), or kept with --keep-work; a folder made for it in a folder of the user's
    leaves that one alone."""
    source = tmp_path / "scan.tif"
    pixels = _scan(source)
    work = tmp_path / "mine" / "work"
    work.mkdir(parents=True)
    options = ("--work", str(work)) + (("--keep-work",) if keep_work else ())
    code, err = _run(_manifest(tmp_path, source, fuse=False), *options)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "out.tif").shape == pixels.shape
    if keep_work:
        assert {p.name for p in work.iterdir()} <= set(WORK_ENTRIES)
        assert (work / "run.json").is_file() and (work / "jobs").is_dir()
    else:
        assert not work.exists()
    assert (tmp_path / "mine").is_dir()


def test_a_rerun_in_a_kept_work_folder_does_not_fail_with_its_old_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The bug: a job failed (its error recorded in the work folder, kept), its input was
    mended, and the rerun with the same --work failed again with the recorded error."""
    source = tmp_path / "scan.tif"
    _scan(source, damaged=True)
    work = tmp_path / "work"
    manifest = _manifest(tmp_path, source, fuse=False)
    code, err = _run(manifest, "--work", str(work), "--keep-work")
    assert code == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["jobs"][0]["error"]["type"] == "CorruptTiffError"
    assert list((work / "jobs" / "00000" / "errors").iterdir())
    earlier = json.loads((work / "run.json").read_text())["run_id"]
    pixels = _scan(source)  # mended
    caplog.set_level(logging.WARNING, "pipeline.runner")
    code, err = _run(manifest, "--work", str(work))
    assert code == 0, err
    assert f"removed the work files of an earlier run ({earlier}) at {work}" in caplog.text
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["jobs"][0]["status"] == "SUCCEEDED"
    assert tifffile.imread(tmp_path / "out.tif").shape == pixels.shape
    assert not work.exists()


def test_the_work_folder_of_a_run_going_on_is_refused(tmp_path: Path, runs_folder: Path):
    """Two runs given one --work would mix their files, and the first to end would remove
    the other's: the later one is refused, naming the run going on; nothing of it touched.
    Exit 75, try again later (as a second run of a manifest is): it was 2, a usage error's,
    though the same command succeeds once that run has ended."""
    source = tmp_path / "scan.tif"
    _scan(source)
    work = tmp_path / "shared"
    (work / "jobs" / "00000").mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"run_id": "busy"}))
    (work / "jobs" / "00000" / "plan.json").write_text("{}")
    with run_elsewhere(str(runs_folder), "run-busy", "/m/other.json", str(work)) as proc:
        code, err = _run(_manifest(tmp_path, source), "--work", str(work))
        assert code == 75, err
        for word in (str(work), f"local run busy, process {proc.pid}", "another --work"):
            assert word in err, err
        assert (work / "jobs" / "00000" / "plan.json").read_text() == "{}"
    code, err = _run(_manifest(tmp_path, source), "--work", str(work))  # it ended: reused
    assert code == 0, err
    assert not work.exists()


# --- the location itself, local and on S3 -------------------------------------------------


def test_remove_takes_what_a_run_writes_and_no_more(tmp_path: Path):
    work = tmp_path / ".tiffpipe-work" / "run1"
    (work / "jobs" / "00000" / "tiles").mkdir(parents=True)
    for name in ("run.json", "jobs.json", "job-specs.bin", "report.json",
                 "jobs/00000/tiles/0_0.tpw"):
        (work / name).write_bytes(b"x")
    (work / "later.txt").write_text("a file put there during the run")
    work_location.remove(str(work))
    assert [p.name for p in work.iterdir()] == ["later.txt"]
    (work / "later.txt").unlink()
    work_location.remove(str(work))  # empty now: it goes, and the default folder around it
    assert not (tmp_path / ".tiffpipe-work").exists() and tmp_path.is_dir()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    with moto_s3(monkeypatch, BUCKET) as client:
        yield client


def _put(client, keys: list[str], body: bytes = b"x") -> None:
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=body)


def _keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_an_s3_prefix_is_prepared_and_removed_as_a_folder(s3):
    """The same rules under a prefix: other objects there refused, an earlier run's removed,
    and removing a run's work touches no key outside its names (not "work-old/...", whose
    name begins like the prefix's, nor a file beside them)."""
    _put(s3, ["data/a.tif", "data/sub/b.tif"])
    with pytest.raises(WorkLocationError) as err:
        work_location.prepare(f"s3://{BUCKET}/data")
    assert "a.tif" in str(err.value) and "sub" in str(err.value)
    assert work_location.prepare(f"s3://{BUCKET}/fresh/") is None
    with pytest.raises(WorkLocationError) as err:  # no such bucket: a look fails
        work_location.prepare("s3://no-such-bucket/work/")
    assert "cannot be looked into" in str(err.value)
    _put(s3, ["work/jobs.json", "work/job-specs.bin", "work/jobs/00000/plan.json",
              "work/jobs/00001/tiles/0/0_0.tpw", "work-old/jobs/00000/plan.json"])
    _put(s3, ["work/run.json"], json.dumps({"run_id": "old"}).encode())
    assert work_location.prepare(f"s3://{BUCKET}/work") == "old"
    assert _keys(s3) == ["data/a.tif", "data/sub/b.tif", "work-old/jobs/00000/plan.json"]
    _put(s3, ["work/run.json", "work/jobs/00000/plan.json", "work/notes.txt"])
    work_location.remove(f"s3://{BUCKET}/work/")
    assert _keys(s3) == ["data/a.tif", "data/sub/b.tif", "work-old/jobs/00000/plan.json",
                         "work/notes.txt"]


def test_a_killed_runs_s3_work_is_removed_by_the_next_look(s3, runs_folder: Path,
                                                             caplog: pytest.LogCaptureFixture):
    """A killed local run whose work was on S3 left it: the next look removes it (its
    listing names it), with a warning; one that keeps its work keeps it."""
    _put(s3, ["w1/run.json", "w1/jobs/00000/plan.json", "w2/run.json"])
    caplog.set_level(logging.WARNING, "pipeline.adapters.local_runs")
    with run_elsewhere(str(runs_folder), "run-w1", "/m/a.json", f"s3://{BUCKET}/w1/") as one, \
            run_elsewhere(str(runs_folder), "run-w2", "/m/b.json", f"s3://{BUCKET}/w2/",
                          keep_work=True) as two:
        for proc in (one, two):
            proc.kill()
            proc.wait(30)
        assert local_runs.running() == []
    assert _keys(s3) == ["w2/run.json"]
    assert f"removed s3://{BUCKET}/w1/, the work of run w1: its process ({one.pid})" \
        in caplog.text


def test_a_killed_runs_s3_work_and_local_partial_output_out_of_reach_are_tried_again(
        s3, runs_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture):
    """A killed local run with its work on S3 and a local output it was writing: the next
    look removes the output's temporary file (its S3 run file lists the output) and the
    work; a look that cannot reach S3 (another endpoint, other credentials) leaves the run
    listed, and a later look does it."""
    from pipeline.adapters import storage
    from pipeline.steps import layout

    work = f"s3://{BUCKET}/w1/"
    output = tmp_path / "out" / "big.tif"
    output.parent.mkdir()
    storage.write_json(layout.run_file(work), {"run_id": "w1", "jobs": [
        {"input": "/in/big.tif", "output": str(output)}]})
    monkeypatch.setenv(storage.RUN_TAG_ENV, "w1")  # as the killed run's processes had it
    partial = Path(storage.temp_output_path(str(output)))
    monkeypatch.delenv(storage.RUN_TAG_ENV)
    partial.write_bytes(b"half an output")
    caplog.set_level(logging.WARNING, "pipeline.adapters.local_runs")
    with run_elsewhere(str(runs_folder), "run-w1", "/m/a.json", work) as one:
        one.kill()
        one.wait(30)
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
        monkeypatch.setattr(storage, "_client", None)
        assert local_runs.running() == []
        assert "could not remove s3://" in caplog.text and "the next run tries again" in caplog.text
        assert partial.exists() and _keys(s3) == ["w1/run.json"]
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        monkeypatch.setattr(storage, "_client", None)
        assert local_runs.running() == []
    assert not partial.exists() and _keys(s3) == []
    assert f"removed {partial}, a partial output of run w1" in caplog.text
    assert f"removed {work}, the work of run w1" in caplog.text
    assert list(runs_folder.glob("*.json")) == []  # done: no longer listed


@pytest.mark.parametrize("work_on_s3", [True, False])
def test_a_killed_runs_open_uploads_are_ended_by_the_next_look(
        s3, runs_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        work_on_s3: bool):
    """A killed local run left S3 uploads open (S3 keeps their parts, and bills them): its
    merge's upload of an S3 output, which its work records, and (its work on S3) a
    segment's under its work prefix. The next look ends those, with a warning; another
    run's upload of the same output, not recorded by this run, goes on."""
    from pipeline.adapters import storage
    from pipeline.steps import layout
    from pipeline.steps.common import record_output_upload

    work = f"s3://{BUCKET}/w1" if work_on_s3 else str(tmp_path / "w1")
    storage.write_json(layout.run_file(work), {"run_id": "w1", "jobs": []})
    output = f"s3://{BUCKET}/out/x.tif"
    killed = s3.create_multipart_upload(Bucket=BUCKET, Key="out/x.tif")["UploadId"]
    record_output_upload(layout.job_dir(work, 0), output, killed)
    theirs = s3.create_multipart_upload(Bucket=BUCKET, Key="out/x.tif")["UploadId"]
    open_uploads = {theirs}
    if work_on_s3:
        s3.create_multipart_upload(Bucket=BUCKET, Key="w1/jobs/00000/out-0000-u000000.seg")
    caplog.set_level(logging.WARNING, "pipeline.adapters.local_runs")
    with run_elsewhere(str(runs_folder), "run-w1", "/m/a.json", work) as one:
        one.kill()
        one.wait(30)
        assert local_runs.running() == []
    left = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert {u["UploadId"] for u in left} == open_uploads
    ended = 2 if work_on_s3 else 1
    assert f"ended {ended} S3 upload(s) run w1 left open: its process ({one.pid})" \
        in caplog.text
    s3.abort_multipart_upload(Bucket=BUCKET, Key="out/x.tif", UploadId=theirs)


def test_a_killed_runs_uploads_out_of_reach_keep_their_records_until_a_look_ends_them(
        s3, runs_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture):
    """A look that cannot end a killed run's S3 uploads (its environment reaches another S3)
    removes the rest of its work but keeps their records (the only ones: a run's work is
    where its merges note their uploads) and its entry in the run list, and says so and how
    to give up on them; a later look that reaches that S3 ends them, then removes the rest."""
    from pipeline.adapters import storage
    from pipeline.steps import layout
    from pipeline.steps.common import record_output_upload

    work = tmp_path / "w1"
    storage.write_json(layout.run_file(str(work)), {"run_id": "w1", "jobs": []})
    (work / "jobs.json").write_text("[]")
    tile = work / "jobs" / "00000" / "tiles" / "0" / "0_0.tpw"
    tile.parent.mkdir(parents=True)
    tile.write_bytes(b"a tile")
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="out/x.tif")["UploadId"]
    record_output_upload(layout.job_dir(str(work), 0), f"s3://{BUCKET}/out/x.tif", upload)
    record = Path(layout.upload_file(layout.job_dir(str(work), 0), upload))
    caplog.set_level(logging.WARNING, "pipeline.adapters.local_runs")
    with run_elsewhere(str(runs_folder), "run-w1", "/m/a.json", str(work)) as one:
        one.kill()
        one.wait(30)
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
        monkeypatch.setattr(storage, "_client", None)
        assert local_runs.running() == []
        entry = runs_folder / "run-w1.json"
        assert entry.exists() and record.exists() and (work / "run.json").exists()
        assert not tile.exists() and not (work / "jobs.json").exists()
        assert f"could not end the S3 uploads of run w1, whose process ({one.pid})" \
            in caplog.text
        assert f"and its entry {entry} in the run list" in caplog.text
        assert (f"aws s3api abort-multipart-upload --bucket {BUCKET} --key out/x.tif "
                f"--upload-id {upload}") in caplog.text
        assert f"then remove {entry} and {work}" in caplog.text
        assert f"removed {work}, the work folder of run w1, but for the records" in caplog.text
        assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]] \
            == [upload]
        caplog.clear()
        assert local_runs.running() == []  # and again, out of reach: all still kept
        assert entry.exists() and record.exists()
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        monkeypatch.setattr(storage, "_client", None)
        assert local_runs.running() == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert f"ended 1 S3 upload(s) run w1 left open: its process ({one.pid})" in caplog.text
    assert not work.exists() and list(runs_folder.glob("*.json")) == []


# --- a run's lease on its work location (pipeline/adapters/work_lease.py) --------------------


def _lease(work: str, host: str = "other-host", pid: int = 4242, run_id: str = "theirs",
           renewed: float = 1000.0) -> None:
    from pipeline.adapters import storage, work_lease

    storage.write_json(work_lease.url(work), {"host": host, "pid": pid, "run_id": run_id,
                                              "renewed": renewed})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The leases' clock, set by the test: ``clock[0]`` is now."""
    from pipeline.adapters import work_lease

    now = [1000.0]
    monkeypatch.setattr(work_lease, "clock", lambda: now[0])
    return now


def test_a_fresh_lease_of_another_host_refuses_a_second_run(tmp_path: Path, clock):
    """Two machines given one --work (a folder on a network file system): the second run
    finds the first's lease, renewed within EXPIRY_S, and is refused before anything runs,
    naming that run, its host and process, when it last renewed, and what to do; the
    first's work stays."""
    from pipeline.adapters import work_lease

    work = tmp_path / "shared"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"run_id": "theirs", "jobs": []}))
    _lease(str(work))
    clock[0] += work_lease.EXPIRY_S - 1
    manifest = _manifest(tmp_path, tmp_path / "a.tif")
    _scan(tmp_path / "a.tif")
    code, err = _run(manifest, "--work", str(work))
    assert code == 75, err  # (try again later: it was 2)
    assert (f"{work}: the work location of run theirs on host other-host (process 4242), "
            f"which last renewed its lease {work_lease.EXPIRY_S - 1:.0f} s ago") in err
    assert "Wait for it to end, give this run another --work" in err
    assert f"if that run is known to be dead, remove {work / 'lease.json'}" in err
    assert sorted(p.name for p in work.iterdir()) == ["lease.json", "run.json"]
    assert not (tmp_path / "out.tif").exists()


def test_a_fresh_lease_on_s3_refuses_and_an_expired_one_is_reaped(s3, clock):
    """The same on an S3 prefix; once the lease is older than EXPIRY_S its run is taken for
    dead (killed, its machine gone): its work is removed as an earlier run's, and the S3
    uploads it recorded as open are ended first (its work holds their only record)."""
    from pipeline.adapters import work_lease
    from pipeline.steps import layout
    from pipeline.steps.common import record_output_upload

    work = f"s3://{BUCKET}/shared3/"
    _put(s3, ["shared3/run.json"], json.dumps({"run_id": "theirs"}).encode())
    _put(s3, ["shared3/jobs/00000/plan.json"])
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="out/x.tif")["UploadId"]
    record_output_upload(layout.job_dir(work, 0), f"s3://{BUCKET}/out/x.tif", upload)
    _lease(work)
    with pytest.raises(WorkLocationError, match="the work location of run theirs on host "
                                                "other-host .process 4242., which last "
                                                "renewed its lease 0 s ago"):
        work_location.prepare(work)
    assert "shared3/lease.json" in _keys(s3)
    clock[0] += work_lease.EXPIRY_S
    earlier = work_location.prepare(work)
    assert earlier is not None and earlier.startswith("run theirs on host other-host")
    assert _keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_lease_of_this_host_stands_while_its_process_does(tmp_path: Path, clock):
    """A lease written on this machine is judged by its process, not its age (the run list
    judges this machine's runs: one killed is reaped at once): a process that is gone leaves
    an earlier run's work; one still there (a run this user's list does not know: another
    user's) holds the location."""
    import subprocess
    import sys

    from pipeline.adapters import work_lease

    work = tmp_path / "w"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        _lease(str(work), work_lease.host(), proc.pid, "alive", renewed=0.0)
        with pytest.raises(WorkLocationError, match="the work location of run alive"):
            work_location.prepare(str(work))
    finally:
        proc.communicate(b"")
    assert work_location.prepare(str(work)).startswith("run alive on host")
    assert not work.exists()  # (removed once empty, as an earlier run's work is)


def test_a_run_holds_a_lease_on_its_work_and_removes_it_at_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock):
    """While it runs, the --work it was given holds the run's lease (this host, this
    process, its run id), renewed every INTERVAL_S; at the end it goes with the work, and
    with --keep-work it goes alone (the work is then an earlier run's, free to the next).
    A run's default work folder, named by its run id, which no other run is given, gets
    none."""
    import os

    from pipeline.adapters import work_lease
    from pipeline.runner import LocalEngine

    seen: list[work_lease.Lease | None] = []
    real_run = LocalEngine.run

    def looking(self, *args, **kwargs):
        seen.append(work_lease.read(str(work)))
        defaults.extend((tmp_path / ".tiffpipe-work").glob("*/lease.json"))
        return real_run(self, *args, **kwargs)

    defaults: list[Path] = []

    monkeypatch.setattr(LocalEngine, "run", looking)
    _scan(tmp_path / "a.tif")
    manifest = _manifest(tmp_path, tmp_path / "a.tif")
    work = tmp_path / "work"
    assert _run(manifest, "--work", str(work))[0] == 0
    assert not work.exists()
    assert _run(manifest, "--work", str(work), "--keep-work")[0] == 0
    assert (work / "run.json").exists() and not (work / "lease.json").exists()
    for lease in seen:
        assert lease is not None and lease.host == work_lease.host()
        assert lease.pid == os.getpid() and lease.renewed == clock[0]
    assert seen[0].run_id != seen[1].run_id
    assert _run(manifest)[0] == 0 and seen[2] is None and defaults == []


def test_a_lease_is_renewed_until_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           clock):
    """The daemon thread writes the lease again every INTERVAL_S with the clock's time;
    released, it stops (and the file goes); one another run took over is left to it."""
    import threading

    from pipeline.adapters import work_lease

    monkeypatch.setattr(work_lease, "INTERVAL_S", 0.01)
    work = str(tmp_path)
    holder = work_lease.hold(work, "mine")
    assert work_lease.read(work).renewed == 1000.0
    clock[0] = 2000.0
    for _ in range(500):
        if work_lease.read(work).renewed == 2000.0:
            break
        threading.Event().wait(0.01)
    assert work_lease.read(work) == work_lease.Lease(work_lease.host(), os.getpid(), "mine",
                                                     2000.0)
    holder.release()
    assert work_lease.read(work) is None and not holder._thread.is_alive()
    holder = work_lease.hold(work, "mine")
    _lease(work, run_id="theirs")  # its lease expired meanwhile, and another run took it
    assert not holder.ours()
    holder.release()
    assert work_lease.read(work).run_id == "theirs"


def test_a_run_whose_work_vanished_keeps_the_report_of_a_run_that_started_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """A run whose work was removed under it (an older tiffpipe on another machine given the
    same --work took it for a dead run's) fails without a report; the report at its path
    is then a run's that started after it (that other run, given the same manifest), not an
    earlier one's: it stays, and so does its contact sheet."""
    import time

    from PIL import Image

    from pipeline import runner
    from pipeline.engine.execution import Execution

    _scan(tmp_path / "a.tif")
    manifest = _manifest(tmp_path, tmp_path / "a.tif")
    report = tmp_path / "m.report.json"
    sheet = tmp_path / "m.report.contact.png"
    work = tmp_path / "shared"
    real_run = runner.LocalEngine.run

    def meanwhile(self, *args, **kwargs):  # the other run takes the work, ends, reports
        real_run(self, *args, **kwargs)
        work_location.remove(str(work))
        report.write_text(json.dumps({"run_id": "later", "started_at": time.time()}))
        Image.new("RGB", (852, 40)).save(sheet)  # its sheet (a PNG of a sheet's width)
        return Execution("FAILED", None, "WorkMissingError",
                         json.dumps({"errorMessage": f"{work}/run.json does not exist"}), 1.0)

    monkeypatch.setattr(runner.LocalEngine, "run", meanwhile)
    result = runner.run_local(str(manifest), 1, work=str(work))
    assert not result.ok and result.report is None and result.removed == []
    assert json.loads(report.read_text())["run_id"] == "later" and sheet.exists()
    assert "holds the report of run later, which started after this one: kept" in caplog.text
    # one that started before this run is an earlier run's, removed as before
    report.write_text(json.dumps({"run_id": "earlier", "started_at": time.time() - 60}))
    assert runner._remove_stale(str(report), result.run_id, False, False, time.time()) \
        == [str(report), str(sheet)]


# --- the lease taken in one step, renewed only over this run's own, lost: the run stops ---


@pytest.mark.parametrize("on_s3", [False, True])
def test_of_two_runs_taking_one_work_at_once_one_gets_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock, on_s3: bool):
    """Two machines started together on one --work both find no lease (check) before
    either writes one: the first lease is written create-only (a hard link locally,
    If-None-Match: * on S3), so the second run's write fails and it is refused, naming the
    run that won; a lease written over another's (check, then write) let both run."""
    from pipeline.adapters import work_lease

    with contextlib.ExitStack() as stack:
        work = (f"s3://{BUCKET}/both/" if on_s3 else str(tmp_path / "both"))
        if on_s3:
            stack.enter_context(moto_s3(monkeypatch, BUCKET))
        assert work_location.prepare(work) is None  # both looked: nothing there yet
        first = work_lease.hold(work, "first")
        monkeypatch.setattr(work_lease, "host", lambda: "host-b")
        with pytest.raises(WorkLocationError) as refused:
            work_lease.hold(work, "second")
        assert (f"{work}: another run took it first, at the same moment as this one: the "
                f"work location of run first on host ") in str(refused.value)
        assert "give this run another --work" in str(refused.value)
        assert work_lease.read(work).run_id == "first"
        first.release()


def test_a_run_that_loses_the_race_removes_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, clock):
    """The lease is taken before an earlier run's work is removed: a run whose check
    passed, but which another machine's run beat to the lease (it wrote its lease and
    began its work meanwhile), is refused, exit 2, and leaves that run's files; it removed
    them and wrote its lease over theirs, and both ran."""
    from pipeline.adapters import work_lease

    _scan(tmp_path / "a.tif")
    manifest = _manifest(tmp_path, tmp_path / "a.tif")
    work = tmp_path / "shared"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"run_id": "old", "jobs": []}))
    real_check = work_lease.check

    def meanwhile(where: str):  # the other machine's run, between this one's look and lease
        found = real_check(where)
        _lease(where, renewed=clock[0])
        (work / "run.json").write_text(json.dumps({"run_id": "theirs", "jobs": []}))
        return found

    _lease(str(work), renewed=clock[0] - work_lease.EXPIRY_S)  # a dead run's
    monkeypatch.setattr(work_lease, "check", meanwhile)
    code, err = _run(manifest, "--work", str(work))
    assert code == 75, err  # (try again later: it was 2)
    assert f"{work}: another run took it first" in err
    assert "the work location of run theirs on host other-host (process 4242)" in err
    assert work_lease.read(str(work)).run_id == "theirs"
    assert json.loads((work / "run.json").read_text())["run_id"] == "theirs"
    assert not (tmp_path / "out.tif").exists()


class _NoConditions:
    """An S3 client of a store without conditional writes: 501 NotImplemented to a
    PutObject with If-None-Match or If-Match (an S3-compatible store)."""

    def __init__(self, client) -> None:
        self.client = client

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def put_object(self, **kwargs):
        from botocore.exceptions import ClientError

        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
        return self.client.put_object(**kwargs)


def test_a_store_without_conditional_writes_falls_back_to_a_look(
        s3, monkeypatch: pytest.MonkeyPatch, clock):
    """501 to the conditions: the lease is looked at, then written without one (two runs
    at the same moment may then both pass: the docs say so); a live lease is still
    refused, a renewal still stops at another run's lease."""
    from pipeline.adapters import storage, work_lease

    real = storage.s3_client()
    monkeypatch.setattr(storage, "s3_client", lambda: _NoConditions(real))
    work = f"s3://{BUCKET}/nc/"
    holder = work_lease.hold(work, "mine")
    assert work_lease.read(work).run_id == "mine"
    holder._stop.set()
    holder._thread.join()
    clock[0] += 10
    holder._version = work_lease._replace(work, work_lease._body("mine"), holder._version)
    assert work_lease.read(work).renewed == clock[0]
    monkeypatch.setattr(work_lease, "host", lambda: "host-b")
    with pytest.raises(WorkLocationError, match="the work location of run mine"):
        work_lease.hold(work, "second")
    _lease(work, run_id="theirs", renewed=clock[0])
    with pytest.raises(work_lease._Exists):
        work_lease._replace(work, work_lease._body("mine"), holder._version)
    assert work_lease.read(work).run_id == "theirs"


def test_a_stalled_renewal_does_not_write_over_the_run_that_took_over(
        s3, monkeypatch: pytest.MonkeyPatch, clock):
    """A run whose renewal stalled between its look and its write (a paused process) while
    another machine's run took the location: on S3 the renewal is a PutObject with
    If-Match: the ETag of this run's last write, which S3 refuses (412) once the lease is
    another's; the run learns it lost (it wrote its lease over the other's, which then
    shared the location with it)."""
    from pipeline.adapters import storage, work_lease

    monkeypatch.setattr(work_lease, "INTERVAL_S", 0.01)
    work = f"s3://{BUCKET}/stall/"
    real = storage.s3_client()
    lost: list[object] = []

    class Stalling:  # the other run writes its lease just before this run's renewal does
        def __getattr__(self, name: str):
            return getattr(real, name)

        def put_object(self, **kwargs):
            if kwargs["Key"].endswith("lease.json") and not lost and not taken:
                taken.append(1)
                _lease(work, run_id="theirs", renewed=clock[0])
            return real.put_object(**kwargs)

    taken: list[int] = []
    holder = work_lease.hold(work, "mine", on_lost=lost.append)
    monkeypatch.setattr(storage, "s3_client", lambda: Stalling())
    for _ in range(500):
        if lost:
            break
        threading.Event().wait(0.01)
    holder.release()
    assert taken and lost and lost[0].run_id == "theirs"
    assert holder.lost is not None and not holder.ours()
    assert work_lease.read(work).run_id == "theirs"


def test_a_run_whose_work_is_taken_over_stops_and_leaves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock):
    """Mid-run, another machine's run takes the --work (this run's lease, unrenewed, was
    taken for a dead run's): this run stops (its StopRequest), writes no report into the
    location it lost, removes none of that run's files, and exits non-zero saying who took
    the location and which outputs it published. It went on, read and wrote jobs/N/ in the
    other run's work, and at its end removed it."""
    from pipeline.adapters import storage, work_lease
    from pipeline.steps import stopping

    monkeypatch.setattr(work_lease, "INTERVAL_S", 0.01)
    # another machine's lease is written in one step with respect to a renewal's compare
    # and write (as S3's conditional PUT is): not between its read and its write, the few
    # microseconds work_lease._replace accepts, which a renewal every 10 ms hits now and
    # then (the renewal then wrote over it, and never found the lease lost)
    renewal = threading.Lock()
    real_replace = work_lease._replace

    def replace(*args):
        with renewal:
            return real_replace(*args)

    monkeypatch.setattr(work_lease, "_replace", replace)
    for name in ("a", "b", "c"):
        _scan(tmp_path / f"{name}.tif")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(tmp_path / f"{name}.tif"), "output": str(tmp_path / f"{name}.out.tif"),
        "ops": OPS, "tile": 256, "output_options": {"tile": 128}} for name in "abc"]}))
    work = tmp_path / "shared"
    theirs = work / "jobs" / "theirs.seg"
    stopped: list[bool] = []
    real_publish = storage.publish_file

    def taken_after_the_first_output(local_path: str, url: str, replace: bool = True):
        if not url.endswith(".out.tif"):
            return real_publish(local_path, url, replace)
        if not seen:  # the first output is published
            seen.append(url)
            return real_publish(local_path, url, replace)
        if not stopped:  # as the second is about to be, another machine's run takes over
            stopped.append(True)
            with renewal:
                _lease(str(work), run_id="theirs", renewed=clock[0])
            theirs.parent.mkdir(parents=True, exist_ok=True)
            theirs.write_bytes(b"theirs")
            # the lease is found lost at the next renewal (10 ms on), the run aborted, and
            # the stop reaches this task as it reaches a tile loop (60 s: a bound only). It
            # went on as soon as any StopRequest of this process had a signal: one an
            # earlier test left, not yet collected, was taken for this run's; and the run
            # went on (to its report) until its engine's stop watcher thread aborted it
            assert stopping._requested.wait(60), "the run did not stop"
            stopping.check()
        raise OSError(errno.EINTR, "stopped before it published (for this test)")

    seen: list[str] = []
    # (one worker: every task runs in this process, where the publish is watched)
    monkeypatch.setattr(storage, "publish_file", taken_after_the_first_output)
    try:
        code, err = _run(manifest, "--work", str(work), "--workers", "1")
    finally:
        stopping.clear()  # this process goes on: the steps of later tests must run
    assert code == 1, err
    assert (f"{work}: the work location was taken by run theirs on host other-host "
            "(process 4242)") in err, err
    assert "This run stopped, wrote no report and left the work" in err
    # its lease was renewed moments before: replaced, not taken for a dead run's
    assert "renewed less than 180 s before, was replaced or removed" in err, err
    assert "gone unrenewed" not in err
    published = err.split("Outputs it published: ")[1].split(" (")[0].split(", ")
    assert published == seen  # the first output, there, whole; no other
    assert sorted(p.name for p in tmp_path.glob("*.out.tif")) == [Path(seen[0]).name]
    tifffile.imread(seen[0])
    assert work_lease.read(str(work)).run_id == "theirs"
    assert theirs.read_bytes() == b"theirs" and (work / "run.json").exists()
    assert not (work / "report.json").exists() and not (tmp_path / "m.report.json").exists()


# --- the records of a run's S3 uploads go once their uploads are ended -----------------------


def test_ending_recorded_uploads_removes_their_records(s3, tmp_path: Path):
    """A record whose upload is aborted now, or was completed (or ended) already, goes:
    a kept work held the records of every finished upload, and a later run given it
    tried to end them all (from a machine that cannot reach that S3, it was refused)."""
    from pipeline.adapters import segments, storage
    from pipeline.steps import layout
    from pipeline.steps.common import record_output_upload

    work = str(tmp_path / "w")
    storage.write_json(layout.run_file(work), {"run_id": "w", "jobs": []})
    output = f"s3://{BUCKET}/out/x.tif"
    left = s3.create_multipart_upload(Bucket=BUCKET, Key="out/x.tif")["UploadId"]
    done = s3.create_multipart_upload(Bucket=BUCKET, Key="out/x.tif")["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="out/x.tif", UploadId=done, PartNumber=1,
                          Body=b"x")["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="out/x.tif", UploadId=done,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    record_output_upload(layout.job_dir(work, 0), output, left)
    record_output_upload(layout.job_dir(work, 1), output, done)
    assert len(segments.recorded_uploads(storage.join(work, "jobs"))) == 2
    assert segments.end_uploads(work) == 1
    assert segments.recorded_uploads(storage.join(work, "jobs")) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_uploads_that_cannot_be_listed_are_said_unchecked(s3, monkeypatch: pytest.MonkeyPatch,
                                                          clock):
    """An earlier run's work on an S3 this run cannot reach: its uploads could not even be
    listed, so the refusal says they could not be checked (it said the run left uploads
    open, which it did not know)."""
    from pipeline.adapters import segments, storage

    work = f"s3://{BUCKET}/old/"
    _put(s3, ["old/run.json"], json.dumps({"run_id": "old"}).encode())

    def unreachable(url: str, no_bucket=None):
        raise storage.StorageError(f"{url}: cannot list: Could not connect to the endpoint")

    monkeypatch.setattr(segments.storage, "list_prefix", unreachable)
    with pytest.raises(WorkLocationError) as refused:
        work_location.prepare(work)
    assert (f"{work}: the work location holds the work of an earlier run (old), whose S3 "
            "uploads could not be checked (their records cannot be listed") in str(refused.value)
    assert "left open" not in str(refused.value)


def test_a_run_refused_for_an_earlier_runs_uploads_leaves_no_lease(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run given a --work holding an earlier run's work whose S3 uploads it cannot end is
    refused (exit 2) after it took its lease there (taken first, so that of two runs at once
    the refused one removes nothing): it removes that lease, which named it as the
    location's run to the next run (and to another machine's, refused for EXPIRY_S)."""
    from pipeline.adapters import segments
    from pipeline.errors import StorageError

    _scan(tmp_path / "a.tif")
    manifest = _manifest(tmp_path, tmp_path / "a.tif")
    work = tmp_path / "work"
    (work / "jobs" / "00000" / "uploads").mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"run_id": "old-run"}))

    def unreachable(work: str) -> None:
        raise StorageError("s3://bkt/out.tif: Could not connect to the endpoint URL")

    monkeypatch.setattr(segments, "end_uploads", unreachable)
    code, err = _run(manifest, "--work", str(work))
    assert code == 2 and "earlier run (old-run)" in err
    assert sorted(p.name for p in work.iterdir()) == ["jobs", "run.json"]


@pytest.mark.parametrize("left", [
    [".lease.json.4242-0badf00d.tmp"],  # killed between writing its lease and linking it
    ["run.json", ".run.json.tiffpipe-20261206-170000-abcdef-0123.tmp",
     ".lease.json.4242-0badf00d.tmp"],
])
def test_a_killed_runs_temporaries_are_its_work(tmp_path: Path, left: list[str]):
    """A run killed while it wrote one of its files through a temporary (its lease, its
    run.json) left that temporary at the top of its --work: the location is still a run's
    work (it was refused as "files that are not a tiffpipe run's work"), removed by the
    next run given it, which then runs."""
    work = tmp_path / "work"
    work.mkdir()
    for name in left:
        (work / name).write_text(json.dumps({"run_id": "killed"}))
    _scan(tmp_path / "a.tif")
    code, err = _run(_manifest(tmp_path, tmp_path / "a.tif"), "--work", str(work))
    assert code == 0, err
    assert not work.exists()  # the killed run's files, the run's own, then the folder


def test_a_lease_is_stale_only_after_expiry_s_without_a_renewal(tmp_path: Path, clock):
    """What a run that lost its lease says of why: its lease had gone unrenewed for
    EXPIRY_S (taken for a dead run's), or it was replaced while it stood."""
    from pipeline.adapters import work_lease

    (tmp_path / "w").mkdir()  # (the run's work folder, made before its lease)
    holder = work_lease.hold(str(tmp_path / "w"), "mine")
    try:
        clock[0] += work_lease.EXPIRY_S - 1
        assert not holder.stale
        clock[0] += 1
        assert holder.stale
    finally:
        holder.release()


def test_the_lease_names_this_host_as_socket_does(monkeypatch: pytest.MonkeyPatch):
    """``os.uname``'s node name (no socket import in a command), which is the host name
    socket gives; where there is no ``os.uname`` (Windows), socket's."""
    import socket

    from pipeline.adapters import work_lease

    assert work_lease.host() == socket.gethostname()
    monkeypatch.delattr(os, "uname")
    assert work_lease.host() == socket.gethostname()


def test_a_versioned_buckets_removed_work_is_no_other_files(s3):
    """On a versioned bucket a run's removed work stays as delete markers, and moto lists
    a prefix holding only those (``jobs/``; S3 does not): a second run given the same
    --work was refused there ("holds files that are not a tiffpipe run's work"). The
    prefixes listed are looked into before refusing; one of real objects still refuses."""
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    _put(s3, ["work/run.json", "work/jobs/00000/plan.json", "work/jobs/00000/result.json"])
    work_location.remove(f"s3://{BUCKET}/work/")
    assert _keys(s3) == []
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="work/", Delimiter="/")
    assert [p["Prefix"] for p in listed.get("CommonPrefixes", [])] == ["work/jobs/"]  # moto's
    assert work_location.prepare(f"s3://{BUCKET}/work/") is None
    _put(s3, ["work/jobs/00001/notes.txt"])
    with pytest.raises(WorkLocationError, match="holds files that are not a tiffpipe run's "
                                                "work .jobs."):
        work_location.prepare(f"s3://{BUCKET}/work/")


def test_a_run_whose_work_is_in_a_versioned_bucket_is_warned(
        s3, caplog: pytest.LogCaptureFixture):
    """Each work file a run removes from a versioned bucket stays, a noncurrent version
    behind a delete marker (22 MB a run of a 20 Mpx "fuse": false job): the run says so
    when it takes the location (one GetBucketVersioning), and nothing on a bucket that
    keeps no versions."""
    from pipeline.runner import _claim_work

    caplog.set_level(logging.WARNING, "tiffpipe")
    _claim_work(f"s3://{BUCKET}/w1/", "run-w1")
    assert "versioned" not in caplog.text
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    _claim_work(f"s3://{BUCKET}/w2/", "run-w2")
    assert (f"the work location s3://{BUCKET}/w2/ is in a versioned bucket: every work file "
            "this run writes and removes stays there as a noncurrent version") in caplog.text
    assert 'docs/pipeline.md, "Work on a versioned bucket"' in caplog.text
