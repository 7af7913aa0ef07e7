"""The scan form of a manifest: validation (every problem at its path), the pure expansion
into jobs, and ``tiffpipe run`` on a local folder and on S3: only inputs without an output
are processed, and a second run does nothing (zero jobs, exit 0)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import read_pages, use_moto_server

from pipeline import cli
from pipeline.core.manifest import (
    ScanFindings,
    ScanSpec,
    parse_manifest,
    parse_manifest_or_scan,
    scan_jobs,
)
from pipeline.core.models import OutputOptions
from pipeline.errors import ManifestError
from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).parents[1]
BASE = os.path.abspath(os.sep + "m")


def problems_of(data: Any, base: str = BASE) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest_or_scan(data, "m.json", base)
    return info.value.problems


# --- validation ------------------------------------------------------------------------------


def test_a_scan_resolves_into_a_scan_spec():
    spec = parse_manifest_or_scan({
        "defaults": {"tile": 512, "output_options": {"compression": "deflate", "level": 4}},
        "scan": {"input": "s3://b/incoming", "output": "processed", "pages": [0],
                 "ops": [{"op": "invert"}], "output_options": {"tile": 256}}},
        "s3://b/manifests/nightly.json", "s3://b/manifests")
    assert spec == ScanSpec(
        input="s3://b/incoming/", output="s3://b/manifests/processed/", pages=[0],
        ops=[{"op": "invert"}], tile=512,
        output_options=OutputOptions(compression="deflate", level=4, tile=256))
    local = parse_manifest_or_scan({"scan": {"input": "in/", "output": "./out"}}, "m.json", BASE)
    assert isinstance(local, ScanSpec)
    assert (local.input, local.output) == (os.path.join(BASE, "in"), os.path.join(BASE, "out"))
    # parse_manifest (what validate and run see before planning): a scan has no jobs yet
    assert parse_manifest({"scan": {"input": "in", "output": "out"}}, "m.json", BASE) == []


def test_a_scans_jobs_skip_an_output_that_exists_unless_told_otherwise():
    """A scan makes jobs of the outputs that do not exist: if one appears before its job
    publishes (another run of the scan), the job is skipped, not redone over it. if_exists
    set in the scan or the defaults wins."""
    def if_exists(data: dict[str, Any]) -> str:
        spec = parse_manifest_or_scan(data, "m.json", BASE)
        assert isinstance(spec, ScanSpec)
        [job] = scan_jobs(spec, [os.path.join(spec.input, "a.tif")], [])
        assert job.if_exists == spec.if_exists
        return job.if_exists

    scan = {"input": "in", "output": "out"}
    assert if_exists({"scan": scan}) == "skip"
    assert if_exists({"scan": {**scan, "if_exists": "overwrite"}}) == "overwrite"
    assert if_exists({"defaults": {"if_exists": "fail"}, "scan": scan}) == "fail"
    assert if_exists({"defaults": {"if_exists": "fail"},
                      "scan": {**scan, "if_exists": "skip"}}) == "skip"


def test_scan_problems_are_all_reported_with_their_paths():
    assert problems_of({"scan": {"input": "ftp://x/in/", "outpt": "out/", "tile": 100,
                                 "ops": [{"op": "gaussian_blur", "sigma": "two"}],
                                 "output_options": {"compression": "lzw", "quality": 5}}}) == [
        "scan.outpt: unknown field; did you mean output?",  # (not also output missing)
        ('scan.input: expected a folder or an s3://bucket/prefix/ (the only URLs supported are '
         's3://), got "ftp://x/in/"'),
        'scan.ops[0].sigma: expected a number > 0 and <= 500, got "two"',
        "scan.tile: expected an integer multiple of 16 from 64 to 8192, got 100",
        ('scan.output_options.quality: expected no quality with compression "lzw": quality '
         "applies to jpeg only, got 5"),
    ]


@pytest.mark.parametrize("src, dst", [
    ("s3://b/in/", "s3://b/in/out/"), ("s3://b/in", "s3://b/"), ("in", "in/sub"),
    ("in", "in"), ("s3://b/x", "s3://b/x/"),
    # absolute folders spelled with a trailing slash or a "/./": the same folders (the
    # outputs of each run became the next run's inputs, for ever)
    ("/x/in/", "/x/in/processed/"), ("/x/in/processed/", "/x/in/"), ("/x/./in", "/x/in/out"),
])
def test_the_output_must_not_overlap_the_input(src: str, dst: str):
    [problem] = problems_of({"scan": {"input": src, "output": dst}})
    assert problem.startswith("scan.output: expected a location outside scan.input")
    assert "outputs would be scanned as inputs" in problem


def test_jobs_and_scan_are_mutually_exclusive_and_one_is_needed():
    both = problems_of({"jobs": [{"input": "a.tif", "output": "b.tif"}],
                        "scan": {"input": "in", "output": "out"}})
    assert both == [('scan: expected either "jobs" or "scan" at the top level, not both: '
                     "remove one of them")]
    assert problems_of({}) == ["jobs: expected a list of jobs, got nothing"]
    assert problems_of({"scan": "in/"}) == [
        ('scan: expected an object with "input" and "output" (and any of pages, ops, tile, '
         'output_options, fuse, if_exists), got "in/"')]
    assert problems_of({"scan": {"input": "s3://", "output": ""}}) == [
        'scan.input: expected s3://bucket/prefix/ with a bucket, got "s3://"',
        'scan.output: expected a folder or an s3://bucket/prefix/, got ""']


# --- the expansion (pure) ---------------------------------------------------------------------


def test_scan_jobs_pick_new_tiffs_only_and_keep_relative_paths():
    scan = ScanSpec("s3://b/in/", "s3://b/out/", ops=[{"op": "invert"}], tile=512)
    inputs = ["s3://b/in/a.tif", "s3://b/in/B.TIFF", "s3://b/in/day2/c.tif",
              "s3://b/in/notes.txt", "s3://b/in/.hidden.tif", "s3://b/in/.tmp/d.tif",
              "s3://b/in/done.tif"]
    jobs = scan_jobs(scan, inputs, ["s3://b/out/done.tif", "s3://b/out/other.tif"])
    assert [(j.input, j.output) for j in jobs] == [
        ("s3://b/in/B.TIFF", "s3://b/out/B.TIFF"),
        ("s3://b/in/a.tif", "s3://b/out/a.tif"),
        ("s3://b/in/day2/c.tif", "s3://b/out/day2/c.tif")]
    assert all(j.ops == [{"op": "invert"}] and j.tile == 512 for j in jobs)
    found = ScanFindings(scan.input, scan.output)  # (hidden names and other files: no TIFFs)
    assert scan_jobs(scan, inputs, [j.output for j in jobs] + ["s3://b/out/done.tif"],
                     found=found) == []
    assert (found.tiffs, found.done_before, found.left_out) == (4, 4, NONE_LEFT_OUT)

    local = ScanSpec("/data/in", "s3://b/out/")
    [job] = scan_jobs(local, ["/data/in/x/y.tif", "/data/input2/z.tif"], [])
    assert job.output == "s3://b/out/x/y.tif"


# --- runs ----------------------------------------------------------------------------------------


_pages = read_pages


def _run(manifest: Path, capsys: pytest.CaptureFixture,
         quiet: bool = True) -> tuple[int, dict[str, Any], str]:
    code, report, _, err = _run_said(manifest, capsys, quiet)
    return code, report, err


def _run_said(manifest: Path, capsys: pytest.CaptureFixture,
              quiet: bool = True) -> tuple[int, dict[str, Any], str, str]:
    """A run's exit code, its report, and what it printed (stdout, stderr)."""
    code = cli.main(["run", str(manifest), "--workers", "2", *(["--quiet"] if quiet else [])])
    captured = capsys.readouterr()
    report = json.loads(manifest.with_suffix(".report.json").read_text())
    return code, report, captured.out, captured.err


def test_run_on_a_local_folder_processes_only_new_files_then_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    incoming = tmp_path / "incoming"
    (incoming / "day2").mkdir(parents=True)
    for i, name in enumerate(("a.tif", "b.tif", "day2/c.TIFF")):
        write_sample(str(incoming / name), [SamplePage(150, 200, 3)], tile=64, seed=i)
    (incoming / "readme.txt").write_text("not a TIFF")
    done = tmp_path / "processed" / "b.tif"
    done.parent.mkdir()
    done.write_bytes(b"an earlier run's output")  # exists: b.tif is not processed again
    manifest = tmp_path / "nightly.json"
    manifest.write_text(json.dumps({"scan": {
        "input": "incoming", "output": "processed", "ops": [{"op": "invert"}], "tile": 128,
        "output_options": {"tile": 64}}}))

    assert cli.main(["validate", str(manifest)]) == 0
    capsys.readouterr()

    code, report, err = _run(manifest, capsys, quiet=False)
    assert code == 0, err
    # progress lines name a scan's jobs by their files too (known once planned)
    assert re.search(r"^job 0 \(a\.tif\): planned, \d+ tiles$", err, re.MULTILINE), err
    assert re.search(r"^job 1 \(c\.TIFF\): planned, \d+ tiles$", err, re.MULTILINE), err
    assert [(j["input"], j["output"], j["status"]) for j in report["jobs"]] == [
        (str(incoming / "a.tif"), str(tmp_path / "processed" / "a.tif"), "SUCCEEDED"),
        (str(incoming / "day2" / "c.TIFF"), str(tmp_path / "processed" / "day2" / "c.TIFF"),
         "SUCCEEDED")]
    assert done.read_bytes() == b"an earlier run's output"
    for name in ("a.tif", "day2/c.TIFF"):
        [got] = _pages(tmp_path / "processed" / name)
        [page] = _pages(incoming / name)
        assert np.array_equal(got, ~page)
    assert not (tmp_path / ".tiffpipe-work").exists()

    # what the scan found: the report's record (read from run.json, written by PlanRun)
    assert report["scan"] == {
        "input": str(incoming), "output": str(tmp_path / "processed"), "tiffs": 3,
        "done_before": 1, "left_out": NONE_LEFT_OUT, "jobs": 2}

    code, report, out, err = _run_said(manifest, capsys, quiet=False)
    assert code == 0, err
    assert (report["succeeded"], report["failed"], report["jobs"]) == (0, 0, [])
    # nothing new said as such: every TIFF there has its output (not an empty folder, nor
    # a scan of another folder), in the report and in the summary
    assert report["scan"] == {
        "input": str(incoming), "output": str(tmp_path / "processed"), "tiffs": 3,
        "done_before": 3, "left_out": NONE_LEFT_OUT, "jobs": 0}
    scan_line = (f"scan of {incoming} into {tmp_path / 'processed'}: 3 TIFF(s), 3 done "
                 "before, 0 new")
    assert out.splitlines()[1] == scan_line, out

    # --quiet (cron): an empty scheduled run prints nothing at all
    assert cli.main(["run", str(manifest), "--workers", "2", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


#: a scan's report record of a scan that left nothing out
NONE_LEFT_OUT = {"name_collision": 0, "link_outside": 0, "link_to_nothing": 0,
                 "name_not_utf8": 0}


def test_a_link_to_a_file_outside_the_scanned_folder_is_left_out(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    """Whoever may put files in a scanned folder may put links there: a link to a file
    outside it (another user's slide, a key) is left out, with a warning naming it, so its
    pixels are never published in the scan's output, nor a non-TIFF's first bytes in the
    report (before: both were). A link to a file inside the folder is processed."""
    incoming, private = tmp_path / "incoming", tmp_path / "private"
    incoming.mkdir()
    private.mkdir()
    write_sample(str(private / "secret.tif"), [SamplePage(40, 50, 1)], seed=1)
    (private / "key.tif").write_bytes(b"-----BEGIN PRIVATE KEY-----")
    write_sample(str(incoming / "a.tif"), [SamplePage(40, 50, 1)], seed=2)
    (incoming / "secret.tif").symlink_to(private / "secret.tif")
    (incoming / "key.tif").symlink_to(private / "key.tif")
    (incoming / "again.tif").symlink_to("a.tif")  # inside: processed
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed"}}))

    with caplog.at_level("WARNING"):
        code, report, err = _run(manifest, capsys)
    assert code == 0, err
    assert sorted(os.path.basename(j["output"]) for j in report["jobs"]) == ["a.tif",
                                                                            "again.tif"]
    assert sorted(os.listdir(tmp_path / "processed")) == ["a.tif", "again.tif"]
    assert "-----BEGIN" not in json.dumps(report)
    assert (report["scan"]["tiffs"], report["scan"]["left_out"], report["scan"]["jobs"]) == (
        4, {**NONE_LEFT_OUT, "link_outside": 2}, 2)
    [warning] = [r.getMessage() for r in caplog.records if "outside" in r.getMessage()]
    assert "left out 2 link(s)" in warning
    assert f"{incoming / 'secret.tif'} -> {private / 'secret.tif'}" in warning


def test_a_link_to_nothing_in_the_scanned_folder_is_left_out_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    """A broken link in a scanned folder (its target removed, or not there yet) is no job
    that fails on every scheduled run: it is left out, with one warning naming it, and the
    run succeeds; once its target is there, the next run takes it."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_sample(str(incoming / "a.tif"), [SamplePage(40, 50, 1)], seed=2)
    (incoming / "gone.tif").symlink_to(incoming / "moved-away.tif")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed"}}))

    with caplog.at_level("WARNING"):
        code, report, err = _run(manifest, capsys)
    assert code == 0, err
    assert [os.path.basename(j["output"]) for j in report["jobs"]] == ["a.tif"]
    [warning] = [r.getMessage() for r in caplog.records if "to nothing" in r.getMessage()]
    assert (f"left out 1 link(s) to nothing (no file at the target): {incoming / 'gone.tif'} "
            f"-> {incoming / 'moved-away.tif'}") in warning
    assert (report["scan"]["tiffs"], report["scan"]["left_out"], report["scan"]["jobs"]) == (
        2, {**NONE_LEFT_OUT, "link_to_nothing": 1}, 1)
    write_sample(str(incoming / "moved-away.tif"), [SamplePage(40, 50, 1)], seed=3)
    code, report, err = _run(manifest, capsys)
    assert code == 0, err
    assert sorted(os.path.basename(j["output"]) for j in report["jobs"]) == [
        "gone.tif", "moved-away.tif"]


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="names of any bytes: Linux")
def test_a_file_whose_name_is_not_utf8_is_left_out_with_a_warning_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    """A file named in latin-1 on an old share (``caf\\xe9.tif``) was a job whose report
    named it as a lone surrogate (``"caf\\udce9.tif"``), which jq and node read as U+FFFD:
    a name that names no file. It is left out, counted (``name_not_utf8``), and named in a
    warning with its bytes shown (``caf\\xe9.tif``) and what to do: rename it; the report
    is UTF-8 throughout, and the other files are processed."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_sample(str(incoming / "good.tif"), [SamplePage(40, 50, 1)], seed=2)
    write_sample(os.fsdecode(bytes(incoming) + b"/caf\xe9.tif"), [SamplePage(40, 50, 1)],
                 seed=3)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed"}}))

    with caplog.at_level("WARNING"):
        code, report, err = _run(manifest, capsys)
    assert code == 0, err
    assert [os.path.basename(j["input"]) for j in report["jobs"]] == ["good.tif"]
    assert os.listdir(tmp_path / "processed") == ["good.tif"]
    assert (report["scan"]["tiffs"], report["scan"]["left_out"], report["scan"]["jobs"]) == (
        2, {**NONE_LEFT_OUT, "name_not_utf8": 1}, 1)
    text = manifest.with_suffix(".report.json").read_bytes().decode("utf-8")  # (strict)
    assert "\\udc" not in text and "caf" not in text
    [warning] = [r.getMessage() for r in caplog.records if "UTF-8" in r.getMessage()]
    assert (f"left out 1 file(s) whose names are not UTF-8 (each byte that is not shown "
            f"\\xNN): {incoming}/caf\\xe9.tif; ") in warning
    assert "rename the file to a UTF-8 name" in warning


def test_a_missing_input_folder_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"scan": {"input": "nope", "output": "out"}}))
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "InputNotFoundError" in err and "is not a folder" in err


def test_a_file_given_as_a_scan_input_is_named_as_a_file(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    """A scan's input that is one TIFF, not a folder of them: said so, with the manifest
    that runs it (it was "is not a folder: ... check that the folder is there")."""
    write_sample(str(tmp_path / "page.tif"), [SamplePage(40, 50, 1)], seed=3)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"scan": {"input": "page.tif", "output": "out"}}))
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "InputNotFoundError" in err and "page.tif is a file" in err
    assert 'run this file as a job ({"jobs": [{"input": ...' in err
    assert not (tmp_path / "out").exists()


def test_run_on_s3_via_a_moto_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     moto_server: str):
    """The worker processes reach S3 through AWS_ENDPOINT_URL, so tiffpipe runs as a
    subprocess (see tests/test_s3_pipeline.py). The report goes beside the S3 manifest (its
    default), and the run with nothing new keeps the last run's jobs there and its contact
    sheet, by the same code as on a local disk."""
    import boto3

    use_moto_server(monkeypatch, moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="scan-test")
    source = tmp_path / "x.tif"
    write_sample(str(source), [SamplePage(120, 140, 1, "uint16")], tile=64)
    for key in ("in/x.tif", "in/sub/y.tif", "in/z.tif"):
        s3.upload_file(str(source), "scan-test", key)
    s3.put_object(Bucket="scan-test", Key="out/z.tif", Body=b"done before")
    s3.put_object(Bucket="scan-test", Key="scan.json", Body=json.dumps({"scan": {
        "input": "in/", "output": "s3://scan-test/out/", "tile": 64,
        "output_options": {"tile": 64}}}).encode())

    def run() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "s3://scan-test/scan.json",
             "--workers", "2", "--quiet"],
            cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=150,
            check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(s3.get_object(Bucket="scan-test", Key="scan.report.json")[
            "Body"].read())

    def sheet() -> bytes:
        return bytes(s3.get_object(Bucket="scan-test", Key="scan.report.contact.png")[
            "Body"].read())

    report = run()
    assert [j["output"] for j in report["jobs"]] == ["s3://scan-test/out/sub/y.tif",
                                                     "s3://scan-test/out/x.tif"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="scan-test", Prefix="out/")[
        "Contents"]]
    assert sorted(keys) == ["out/sub/y.tif", "out/x.tif", "out/z.tif"]
    assert s3.get_object(Bucket="scan-test", Key="out/z.tif")["Body"].read() == b"done before"
    # no ops: each output holds its input's pixels (all three inputs are the one source)
    [page] = _pages(source)
    for key in ("out/x.tif", "out/sub/y.tif"):
        s3.download_file("scan-test", key, str(tmp_path / "got.tif"))
        [got] = _pages(tmp_path / "got.tif")
        assert got.dtype == page.dtype and np.array_equal(got, page), key
    found = {"input": "s3://scan-test/in/", "output": "s3://scan-test/out/", "tiffs": 3,
             "left_out": NONE_LEFT_OUT}
    assert report["scan"] == {**found, "done_before": 1, "jobs": 2}
    drawn = sheet()
    again = run()
    assert again["jobs"] == []
    assert again["scan"] == {**found, "done_before": 3, "jobs": 0}
    assert again["last_run"] == report
    assert sheet() == drawn


def test_two_spellings_of_one_scan_are_the_same_scan(tmp_path: Path):
    """Another run's manifest scanning the same folders, spelled another way (a trailing
    slash, a "/./", a link to the folder): the same scan, so a run of it defers to the
    other instead of doing all the work again beside it."""
    from pipeline.steps import planning
    from pipeline.steps.common import read_manifest

    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"scan": {"input": str(tmp_path / "in"),
                                         "output": str(tmp_path / "out")}}))
    scan = read_manifest(str(ours))
    same = planning._same_scan(scan, str(ours))
    for name, (src, dst) in {"slash": (f"{tmp_path}/in/", f"{tmp_path}/out/"),
                             "dot": (f"{tmp_path}/./in", f"{tmp_path}/out"),
                             "link": (f"{tmp_path}/link", f"{tmp_path}/out"),
                             "other": (f"{tmp_path}/in", f"{tmp_path}/elsewhere")}.items():
        other = tmp_path / f"{name}.json"
        other.write_text(json.dumps({"scan": {"input": src, "output": dst}}))
        assert same(str(other)) == (name != "other"), name


def test_a_folder_where_a_scans_output_goes_fails_the_job_not_skips_it(tmp_path: Path):
    """out/a.tif is a folder: no output of the job's, so not 'the output exists already'
    (skipped at every run, the input never processed, exit 0): the job fails naming it."""
    from pipeline import handlers
    from pipeline.errors import OutputNotWritableError

    (tmp_path / "in").mkdir()
    write_sample(str(tmp_path / "in" / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    (tmp_path / "out" / "a.tif").mkdir(parents=True)
    (tmp_path / "m.json").write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))
    run = handlers.dispatch("split", {"action": "plan_run", "manifest": str(tmp_path / "m.json"),
                                      "work": str(tmp_path / "work"), "run_id": "r1",
                                      "report": str(tmp_path / "r.json")})
    assert run["jobs"] == 1
    with pytest.raises(OutputNotWritableError, match=r"out/a.tif is a folder: give a file name"):
        handlers.dispatch("process", {"action": "plan_job", "run": run["run"], "job": 0})


def test_a_scan_of_a_bucket_that_does_not_exist_is_named_not_retried(
        monkeypatch: pytest.MonkeyPatch):
    """A scan's input or output in a bucket that does not exist: InputNotFoundError or
    OutputNotWritableError naming it (not a StorageError, which the state machine retries
    though a retry meets it again)."""
    from conftest import moto_s3

    from pipeline.errors import InputNotFoundError, OutputNotWritableError
    from pipeline.steps.planning import expand_scan

    with moto_s3(monkeypatch, "tp-scan"):
        missing_in = ScanSpec(input="s3://no-such-bucket-in/in/", output="s3://tp-scan/out/")
        with pytest.raises(InputNotFoundError, match="its bucket, no-such-bucket-in, does not "
                                                     "exist: check the URL"):
            expand_scan(missing_in)
        missing_out = ScanSpec(input="s3://tp-scan/in/", output="s3://no-such-bucket-out/o/")
        with pytest.raises(OutputNotWritableError,
                           match="its bucket, no-such-bucket-out, does not exist"):
            expand_scan(missing_out)
        assert expand_scan(ScanSpec(input="s3://tp-scan/in/", output="s3://tp-scan/o/")) == []


def test_a_run_with_nothing_new_keeps_the_last_runs_jobs_and_contact_sheet(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A scheduled scan that finds nothing new replaced the last run's report with one of no
    job and its contact sheet with one of no row: the results of last night's real run were
    gone by the morning. Its report now records the scan (its TIFFs, done before, 0 new, its
    time) and keeps the last run that had jobs whole in ``last_run`` (one level: a second
    empty run keeps the same one), the contact sheet beside it left as that run drew it; a
    run with jobs replaces both again."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_sample(str(incoming / "a.tif"), [SamplePage(60, 80, 1)], tile=64, seed=1)
    manifest = tmp_path / "nightly.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed"}}))
    sheet = tmp_path / "nightly.report.contact.png"

    code, first, err = _run(manifest, capsys)
    assert code == 0, err
    assert [j["status"] for j in first["jobs"]] == ["SUCCEEDED"] and "last_run" not in first
    drawn = sheet.read_bytes()

    code, empty, out, err = _run_said(manifest, capsys, quiet=False)
    assert code == 0, err
    assert (empty["jobs"], empty["succeeded"], empty["failed"]) == ([], 0, 0)
    assert empty["run_id"] != first["run_id"] and empty["started_at"] > first["started_at"]
    assert (empty["scan"]["tiffs"], empty["scan"]["done_before"], empty["scan"]["jobs"]) == (
        1, 1, 0)
    assert empty["last_run"] == first
    assert sheet.read_bytes() == drawn  # the last run's rows, not a sheet of none
    assert (f"last run with jobs: {first['run_id']}, 1 job: 1 succeeded, 0 failed (kept in "
            "this report's last_run; the contact sheet beside it left as that run drew it)"
            ) in out.splitlines(), out
    assert "contact sheet: " not in out  # (none drawn by this run)

    code, again, err = _run(manifest, capsys)
    assert code == 0, err
    assert again["last_run"] == first  # the last run with jobs, not the empty one before
    assert sheet.read_bytes() == drawn

    write_sample(str(incoming / "b.tif"), [SamplePage(60, 80, 1)], tile=64, seed=2)
    code, new, err = _run(manifest, capsys)
    assert code == 0, err
    assert [os.path.basename(j["input"]) for j in new["jobs"]] == ["b.tif"]
    assert "last_run" not in new
    assert sheet.read_bytes() != drawn


def test_a_report_of_another_manifest_is_not_kept_by_a_run_with_nothing_new(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """Only the same scan's (or manifest's) last run is kept: a --report path that held
    another manifest's report is replaced as before."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_sample(str(incoming / "a.tif"), [SamplePage(40, 50, 1)], tile=64, seed=1)
    (tmp_path / "processed").mkdir()
    write_sample(str(tmp_path / "processed" / "a.tif"), [SamplePage(40, 50, 1)], seed=1)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"jobs": [{"input": "incoming/a.tif", "output": "o.tif"}]}))
    report = tmp_path / "shared.json"
    assert cli.main(["run", str(other), "--workers", "1", "--quiet", "--report",
                     str(report)]) == 0
    manifest = tmp_path / "nightly.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed"}}))
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--report",
                     str(report)]) == 0
    capsys.readouterr()
    doc = json.loads(report.read_text())
    assert doc["jobs"] == [] and doc["scan"]["done_before"] == 1 and "last_run" not in doc


def test_a_first_run_of_an_empty_folder_draws_no_contact_sheet(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A scan's run with no job draws no contact sheet (a picture of nothing): the first run
    of an empty folder, with no last run's sheet to keep, drew one of no row; and a run of
    another manifest's report path removes the sheet of that report's run, which it
    replaces."""
    (tmp_path / "incoming").mkdir()
    manifest = tmp_path / "nightly.json"
    manifest.write_text(json.dumps({"scan": {"input": "incoming", "output": "processed"}}))
    code, report, out, err = _run_said(manifest, capsys, quiet=False)
    assert code == 0, err
    assert report["jobs"] == [] and "last_run" not in report
    assert not (tmp_path / "nightly.report.contact.png").exists()
    assert "contact sheet: " not in out

    write_sample(str(tmp_path / "a.tif"), [SamplePage(40, 50, 1)], seed=1)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "o.tif"}]}))
    shared = tmp_path / "shared.json"
    assert cli.main(["run", str(other), "--workers", "1", "--quiet", "--report",
                     str(shared)]) == 0
    assert (tmp_path / "shared.contact.png").is_file()
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet", "--report",
                     str(shared)]) == 0
    assert json.loads(shared.read_text())["jobs"] == []
    assert not (tmp_path / "shared.contact.png").exists()
