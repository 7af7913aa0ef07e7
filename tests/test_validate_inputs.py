"""``tiffpipe validate --inputs``: the manifest's check, then every job's input page headers
read and checked as PlanJob checks them (one function, :func:`pipeline.steps.planning.
checked_plan`), each problem of every job printed (file, page, what to do), exit 2 if a job
would fail at planning. Real TIFFs written by tifffile, local and on S3 (moto in this
process), a scan's files too; PlanJob itself (the handler, in this process) fails the same
jobs with the same error."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import LIBTIFF_CORPUS, UINT16_TO_UINT8, moto_s3
from test_cli import _kept_apart, hint_of
from test_hostile_inputs import _classic_tiff

from pipeline import cli, handlers, input_check
from pipeline.errors import TiffpipeError
from pipeline.sample import SamplePage, write_sample
from pipeline.steps import planning
from pipeline.steps.common import read_manifest

pytestmark = pytest.mark.timeout(120)

EQUALIZE = [{"op": "equalize_hist"}]
BLUR = [{"op": "gaussian_blur", "sigma": 1.5}]


def _wide(path: Path) -> None:
    """One sparse uncompressed strip 1,000,000 px wide of 100 float64 samples (134 bytes)."""
    side = 10**6
    _classic_tiff(path, [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 64), (259, 3, 1, 1),
                         (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 100), (278, 4, 1, side),
                         (279, 4, 1, 0), (339, 3, 1, 3)])


def _files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.tif" for name in
             ("rgb", "gray16", "lab", "mixed", "wide", "notes")}
    write_sample(str(files["rgb"]), [SamplePage(200, 300, 3), SamplePage(120, 90, 3)], tile=64,
                 compression="zstd")
    tifffile.imwrite(files["gray16"], np.zeros((100, 80), np.uint16), tile=(64, 64),
                     compression="zlib")
    tifffile.imwrite(files["lab"], np.zeros((40, 30, 3), np.uint8), photometric="cielab")
    with tifffile.TiffWriter(files["mixed"]) as w:  # page 0 gray, pages 1-2 L*a*b*
        w.write(np.zeros((50, 60), np.uint16), photometric="minisblack")
        for _ in range(2):
            w.write(np.zeros((50, 60, 3), np.uint8), photometric="cielab")
    _wide(files["wide"])
    files["notes"].write_text("not a TIFF\n" * 10)
    return files


def _manifest(tmp_path: Path, jobs: list[dict[str, Any]], **top: Any) -> Path:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"jobs": jobs, **top}))
    return path


def _jobs(tmp_path: Path) -> list[dict[str, Any]]:
    f = _files(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "exists_fail.tif").write_bytes(b"an earlier output")
    (out / "exists_skip.tif").write_bytes(b"an earlier output")

    def job(name: str, src: str, **extra: Any) -> dict[str, Any]:
        return {"input": str(f[src]), "output": str(out / f"{name}.tif"), **extra}

    return [
        job("good", "rgb", ops=BLUR),                                   # 0: runs
        job("lab", "lab"),                                              # 1: photometric
        job("wide", "wide"),                                            # 2: a too wide strip
        job("equalize_rgb", "rgb", ops=EQUALIZE),                       # 3: an op's channels
        job("no_page", "rgb", pages=[0, 7]),                            # 4: a page not there
        job("equalize_16", "gray16", ops=EQUALIZE),                     # 5: an op's type
        job("exists_fail", "rgb", if_exists="fail"),                    # 6: output exists
        job("exists_skip", "rgb", if_exists="skip"),                    # 7: skipped
        job("mixed", "mixed", ops=EQUALIZE),                            # 8: every problem
        job("jpeg16", "gray16", output_options={"compression": "jpeg"}),  # 9: output options
        job("notes", "notes"),                                          # 10: not a TIFF
        job("bands", "rgb", ops=[{"op": "select_bands", "bands": [0, 5]}]),  # 11: a band
    ]


def test_validate_without_inputs_reads_no_input(tmp_path: Path, capsys: pytest.CaptureFixture):
    manifest = _manifest(tmp_path, _jobs(tmp_path))
    assert cli.main(["validate", str(manifest)]) == 0
    assert capsys.readouterr().out == (  # (an input not a TIFF, one of a page not there)
        f"{manifest}: valid, 12 job(s); their fields and ops checked, their inputs not read: "
        "tiffpipe validate --inputs reads them\n")


def test_a_relative_input_found_in_the_current_folder_is_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """As run tells it (tests/test_cli.py), after the job's InputNotFoundError."""
    scans, manifests = _kept_apart(tmp_path)
    monkeypatch.chdir(scans)
    assert cli.main(["validate", "--inputs", "../manifests/m.json"]) == 2
    err = capsys.readouterr().err
    assert err.index("InputNotFoundError") < err.index(hint_of(scans, manifests)), err
    # run from the manifest's folder, nothing points elsewhere: no hint
    monkeypatch.chdir(manifests)
    assert cli.main(["validate", "--inputs", "m.json"]) == 2
    assert "current folder" not in capsys.readouterr().err


def test_only_the_jobs_whose_input_was_not_found_are_looked_for(tmp_path: Path):
    """The hint looks for the inputs of the jobs the run or the check found missing (their
    indexes), in the current folder alone: not every job's input again. Both jobs' inputs
    are in the current folder, not the manifest's; only job 1 is said missing."""
    scans, manifests = tmp_path / "scans", tmp_path / "manifests"
    scans.mkdir()
    manifests.mkdir()
    for name in ("a.tif", "b.tif"):
        write_sample(str(scans / name), [SamplePage(32, 24, 1)])
    manifest = manifests / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": "a.tif", "output": "out/a.tif"},
                                             {"input": "b.tif", "output": "out/b.tif"}]}))
    parsed = read_manifest(str(manifest))
    said = list(input_check.misplaced_inputs(str(manifest), parsed, [1], cwd=str(scans)))
    assert len(said) == 1 and said[0].startswith('tiffpipe: jobs[1].input "b.tif" is in the '
                                                 f"current folder ({scans})"), said
    assert list(input_check.misplaced_inputs(str(manifest), parsed, [], cwd=str(scans))) == []


def test_every_problem_of_every_job_is_printed_and_the_exit_is_2(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    manifest = _manifest(tmp_path, _jobs(tmp_path))
    inp, out = tmp_path / "in", tmp_path / "out"
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == (f"{manifest}: valid, 12 job(s); their inputs' page headers read: 1 job "
                      "can run, 1 is skipped (its output exists, if_exists: skip), 10 would "
                      "fail when planned\n")
    assert err.startswith("tiffpipe: 10 of 12 job(s) would fail when planned (PlanJob), "
                          "before any pixel is read:\n")
    blocks = re.split(r"^  jobs\[", err, flags=re.MULTILINE)[1:]
    assert [b.split("]", 1)[0] for b in blocks] == [str(i) for i in (1, 2, 3, 4, 5, 6, 8, 9,
                                                                      10, 11)]
    by_job = {int(b.split("]", 1)[0]): b for b in blocks}
    assert by_job[1] == (
        f"1] {inp / 'lab.tif'} -> {out / 'lab.tif'}: UnsupportedTiffError\n"
        "    page 0: photometric CIELAB is not supported: CIE L*a*b* is not converted; "
        "convert the file to RGB first\n")
    assert "2] " in by_job[2] and "UnsupportedTiffError\n    page 0: a row of its " \
        "uncompressed strips is 763 MiB" in by_job[2] and "re-save the file tiled" in by_job[2]
    assert by_job[3].endswith(": OperationError\n    pages 0-1 (2 pages): ops[0] "
                              "(equalize_hist): equalize_hist needs 1 channel(s), the page "
                              "has 3; put to_gray before it\n")
    assert by_job[4].endswith(": PageNotFoundError\n    page 7 asked for, the file has 2 "
                              "page(s) (0..1); fix the job's pages\n")
    assert "page 0: ops[0] (equalize_hist): equalize_hist needs uint8 pixels, the page has " \
        "uint16" in by_job[5]
    assert by_job[6].endswith(f": OutputExistsError\n    output {out / 'exists_fail.tif'} "
                              "exists already (if_exists: fail): remove it, or set if_exists to "
                              "overwrite or skip\n")
    # every problem of the file, each said once for the pages it holds for
    assert by_job[8].endswith(
        ": UnsupportedTiffError\n"
        "    pages 1-2 (2 pages): photometric CIELAB is not supported: CIE L*a*b* is not "
        "converted; convert the file to RGB first\n"
        "    page 0: ops[0] (equalize_hist): equalize_hist needs uint8 pixels, the page has "
        "uint16 (OpenCV's equalizeHist is 8-bit only); put {\"op\": \"convert\", \"dtype\": "
        "\"uint8\"} before it, with an \"in_range\" on float pages (or use normalize, or "
        "percentile_stretch on 8 and 16-bit pages, instead)\n")
    assert by_job[9].endswith(": OperationError\n    page 0: jpeg output needs uint8 pixels, "
                              f"the output is uint16; end the ops with {UINT16_TO_UINT8}, or "
                              "choose zstd, deflate, lzw or none\n")
    assert f"{inp / 'notes.tif'}: not a TIFF file (it begins b'not " in by_job[10]
    assert "NotATiffError" in by_job[10]
    assert "ops[0] (select_bands): bands[1] is 5, the page has 3 band(s) (indices 0 to 2)" \
        in by_job[11]
    assert not list(out.glob(".tiffpipe-check-*"))  # the probe of the output folder removed
    assert sorted(p.name for p in out.iterdir()) == ["exists_fail.tif", "exists_skip.tif"]


def test_plan_job_fails_the_same_jobs_with_the_same_errors(tmp_path: Path):
    """PlanJob (the handler, in this process) and validate --inputs agree job by job: the
    error type, and PlanJob's message holds validate's first problem."""
    jobs = _jobs(tmp_path)
    manifest = _manifest(tmp_path, jobs)
    checked = input_check.check_jobs(input_check.jobs_of(read_manifest(str(manifest))),
                                     threads=4)
    run = handlers.split_handler({"action": "plan_run", "manifest": str(manifest),
                                  "work": str(tmp_path / "work") + "/", "run_id": "r1"})
    for i, check in enumerate(checked):
        try:
            planned = handlers.process_handler({"action": "plan_job", "run": run["run"],
                                                "job": i})
        except TiffpipeError as exc:
            assert check.error == type(exc).__name__, (i, exc, check)
            first = check.problems[0].split(": ", 1)[-1]  # (without "page N: ")
            assert first in str(exc), (i, exc, check)
        else:
            assert check.error is None, (i, check)
            assert check.skipped == planned["skipped"], i


def test_all_good_exits_0_and_says_what_is_left_out(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture):
    cog = tmp_path / "cog.tif"
    with tifffile.TiffWriter(cog) as w:
        w.write(np.zeros((128, 128, 3), np.uint8), tile=(64, 64), photometric="rgb")
        w.write(np.zeros((64, 64, 3), np.uint8), tile=(64, 64), subfiletype=1,
                photometric="rgb")
    manifest = _manifest(tmp_path, [{"input": str(cog), "output": str(tmp_path / "o.tif")},
                                    {"input": str(LIBTIFF_CORPUS / "palette-1c-8b.tiff"),
                                     "output": str(tmp_path / "p.tif"), "ops": BLUR}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 0
    stdout, err = capsys.readouterr()
    assert stdout == (
        f"{manifest}: valid, 2 job(s); their inputs' page headers read: 2 jobs can run\n"
        f"  jobs[0] ({cog}): page 1 left out: reduced-resolution page (overviews, "
        "NewSubfileType bit 0) of page 0, which a job does not copy (its output pages are "
        "the images only): set output_options.pyramid for levels made from the output (or "
        "list the pages in the job's pages to process each as a page of its own)\n")
    assert err == ""


def test_an_invalid_manifest_reads_no_input(tmp_path: Path, capsys: pytest.CaptureFixture):
    manifest = _manifest(tmp_path, [{"input": "a.tif", "output": "o.tif", "ops": "blur"}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    assert "invalid manifest" in capsys.readouterr().err


def test_s3_inputs_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture):
    f = _files(tmp_path / "in")
    with moto_s3(monkeypatch, "bkt") as s3:
        for name in ("rgb", "lab"):
            s3.upload_file(str(f[name]), "bkt", f"in/{name}.tif")
        s3.put_object(Bucket="bkt", Key="out/lab.tif", Body=b"x")
        manifest = _manifest(tmp_path, [
            {"input": "s3://bkt/in/rgb.tif", "output": "s3://bkt/out/rgb.tif", "ops": BLUR},
            {"input": "s3://bkt/in/lab.tif", "output": "s3://bkt/out/lab.tif",
             "if_exists": "fail"},
            {"input": "s3://bkt/in/lab.tif", "output": "s3://bkt/out/lab2.tif"},
            {"input": "s3://bkt/in/none.tif", "output": "s3://bkt/out/none.tif"}])
        assert cli.main(["validate", "--inputs", str(manifest)]) == 2
        stdout, err = capsys.readouterr()
        assert "1 job can run, 3 would fail when planned" in stdout
        assert ("jobs[2] s3://bkt/in/lab.tif -> s3://bkt/out/lab2.tif: UnsupportedTiffError\n"
                "    page 0: photometric CIELAB is not supported") in err
        assert "jobs[1] s3://bkt/in/lab.tif -> s3://bkt/out/lab.tif: OutputExistsError" in err
        assert "jobs[3] s3://bkt/in/none.tif -> s3://bkt/out/none.tif: InputNotFoundError" in err
        # nothing written: the output check's upload was aborted
        listed = s3.list_objects_v2(Bucket="bkt", Prefix="out/").get("Contents", [])
        assert [o["Key"] for o in listed] == ["out/lab.tif"]
        assert not s3.list_multipart_uploads(Bucket="bkt").get("Uploads")


def test_a_probe_upload_that_cannot_be_ended_is_told(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture):
    """Credentials that may write an S3 output (s3:PutObject: the probe's upload starts)
    but not end an upload (no s3:AbortMultipartUpload, a policy that grants reads and
    writes only): the probe's upload stays open under the output's key, listed and kept
    until a lifecycle rule ends it. validate --inputs, which writes nothing, said nothing
    of it; now a warning names the upload and how to end it (the job still can run: its
    output may be written). moto enforces IAM here, as the policy would on AWS."""
    import boto3
    from moto import mock_aws
    from moto.core import set_initial_no_auth_action_count

    from pipeline.adapters import storage

    f = _files(tmp_path / "in")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_writable", {})
    manifest = _manifest(tmp_path, [{"input": "s3://bkt/in/rgb.tif",
                                     "output": "s3://bkt/out/rgb.tif", "ops": BLUR}])
    statement = {"Effect": "Allow", "Resource": ["arn:aws:s3:::bkt", "arn:aws:s3:::bkt/*"]}
    policies = {"reader-writer": ["s3:GetObject", "s3:ListBucket", "s3:PutObject"],
                "admin": ["s3:*"]}

    @set_initial_no_auth_action_count(1 + 3 * len(policies) + 2)  # the set-up's calls
    @mock_aws
    def check() -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        iam = boto3.client("iam", region_name="us-east-1")
        keys = {}
        for user, actions in policies.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{**statement, "Action": actions}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bkt")
        s3.upload_file(str(f["rgb"]), "bkt", "in/rgb.tif")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["reader-writer"][0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["reader-writer"][1])
        monkeypatch.setattr(storage, "_client", None)
        assert cli.main(["validate", "--inputs", str(manifest)]) == 0
        admin = boto3.client("s3", region_name="us-east-1", aws_access_key_id=keys["admin"][0],
                             aws_secret_access_key=keys["admin"][1])
        [upload] = admin.list_multipart_uploads(Bucket="bkt")["Uploads"]
        assert upload["Key"] == "out/rgb.tif"
        err = caplog.text  # (the command's stderr: Python's last-resort handler)
        assert (f"output s3://bkt/out/rgb.tif: the upload that checked it may be written "
                f"(UploadId {upload['UploadId']}) could not be ended (AccessDenied): it stays "
                "open, listed under the output's key, until a lifecycle rule ends it: end it "
                "with `aws s3api abort-multipart-upload --bucket bkt --key out/rgb.tif "
                f"--upload-id {upload['UploadId']}`, and give these credentials "
                "s3:AbortMultipartUpload there") in err, err

    check()


def test_a_scan_checks_the_files_it_would_make_jobs_of(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture):
    f = _files(tmp_path / "in")
    for name in ("wide", "notes", "mixed"):
        f[name].unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gray16.tif").write_bytes(b"done already")  # not a job of the scan
    manifest = tmp_path / "scan.json"
    manifest.write_text(json.dumps({"scan": {"input": "in/", "output": "out/",
                                             "ops": EQUALIZE}}))
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout.startswith(f"{manifest}: valid, a scan of {tmp_path / 'in'}")
    assert stdout.endswith("; their inputs' page headers read: 2 jobs (the TIFFs there "
                           "without an output), 2 would fail when planned\n")
    assert f"  {tmp_path / 'in' / 'lab.tif'} -> {tmp_path / 'out' / 'lab.tif'}: " in err
    assert f"  {tmp_path / 'in' / 'rgb.tif'} -> " in err
    assert "gray16" not in err


def test_many_inputs_are_read_by_a_bounded_number_of_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    f = _files(tmp_path / "in")
    jobs = [{"input": str(f["rgb"]), "output": str(tmp_path / "out" / f"{i}.tif")}
            for i in range(40)]
    manifest = _manifest(tmp_path, jobs)
    lock, running, most = threading.Lock(), [0], [0]
    real = planning.checked_plan

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(planning, "checked_plan", counted)
    assert cli.main(["validate", "--inputs", "--threads", "3", str(manifest)]) == 0
    assert 2 <= most[0] <= 3
    assert capsys.readouterr().out.endswith("40 jobs can run\n")
    assert cli.main(["validate", "--inputs", "--threads", "0", str(manifest)]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    # without --inputs, --threads would read nothing: a usage error, not ignored
    assert cli.main(["validate", "--threads", "3", str(manifest)]) == 2
    assert "give --inputs too" in capsys.readouterr().err


def test_progress_is_shown_on_a_terminal_for_long_lists(tmp_path: Path):
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    f = _files(tmp_path / "in")
    from pipeline.core.models import JobSpec

    specs = [JobSpec(input=str(f["rgb"]), output=str(tmp_path / "out" / f"{i}.tif"))
             for i in range(30)]
    tty, pipe = Tty(), io.StringIO()
    assert all(c.error is None for c in input_check.check_jobs(specs, 4, progress=tty))
    assert "30/30" in tty.getvalue()
    input_check.check_jobs(specs, 4, progress=pipe)
    assert pipe.getvalue() == ""  # not a terminal: nothing
    tty2 = Tty()
    input_check.check_jobs(specs[:3], 4, progress=tty2)
    assert tty2.getvalue() == ""  # a short list: nothing


def test_a_listed_mask_page_is_named_once(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A job listing a COG's mask page: its problem names the page once ("page 1 is a
    transparency mask ..."), not "page 1: page 1 is ..."."""
    src = tmp_path / "cog.tif"
    with tifffile.TiffWriter(src) as w:
        w.write(np.zeros((64, 64, 3), np.uint8), photometric="rgb")
        w.write(np.zeros((64, 64), bool), compression="deflate", subfiletype=4)
    manifest = _manifest(tmp_path, [{"input": str(src), "output": str(tmp_path / "o.tif"),
                                     "pages": [1]}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "\n    page 1 is a transparency mask of page 0" in err, err
    assert "page 1: page 1" not in err


def test_a_file_cut_short_is_named_before_any_pixel_is_read(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture):
    """A file whose copy stopped part way (its page headers first, as tifffile and GDAL write
    them: they read; the last page's pixel data cut off) is refused from the headers alone,
    by validate --inputs and by PlanJob, naming the page and the segment; it was "can run"
    and failed in Split, after the work of the pages before. The page before the cut, listed
    alone, still runs; so does a crop of the cut page's whole tiles (its rows 0-63: tiles
    0-2), which was refused too, and a crop that reaches the lost tile is refused."""
    path = tmp_path / "in" / "scan.tif"
    path.parent.mkdir()
    with tifffile.TiffWriter(path) as w:
        for seed in (1, 2):
            w.write(np.random.default_rng(seed).integers(0, 255, (200, 160), np.uint8),
                    tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        last = tf.pages[1]
        assert tf.pages[1].offset < min(last.dataoffsets)  # its header before its pixels
        cut = int(last.dataoffsets[3]) + 10  # inside page 1's fourth tile
        ends = [int(o) + int(c) for o, c in zip(last.dataoffsets, last.databytecounts,
                                                strict=True)]
    path.write_bytes(path.read_bytes()[:cut])
    out = tmp_path / "out"
    whole = {"op": "crop", "x": 0, "y": 0, "width": 160, "height": 64}
    lost = {**whole, "y": 60}
    manifest = _manifest(tmp_path, [
        {"input": str(path), "output": str(out / "all.tif"), "ops": BLUR},
        {"input": str(path), "output": str(out / "first.tif"), "ops": BLUR, "pages": [0]},
        {"input": str(path), "output": str(out / "top.tif"), "ops": [whole], "pages": [1]},
        {"input": str(path), "output": str(out / "low.tif"), "ops": [lost], "pages": [1]}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout.endswith("2 jobs can run, 2 would fail when planned\n")
    problem = (f"    page 1: segment 3 ends at byte {ends[3]} but the file has {cut} bytes; the "
               "file is truncated: copy it again from its source or export it again, then "
               "check that tifffile.imread or tiffinfo -D reads it whole\n")
    assert err.endswith(
        f"  jobs[0] {path} -> {out / 'all.tif'}: CorruptTiffError\n{problem}"
        f"  jobs[3] {path} -> {out / 'low.tif'}: CorruptTiffError\n{problem}")
    run = handlers.split_handler({"action": "plan_run", "manifest": str(manifest),
                                  "work": str(tmp_path / "work") + "/", "run_id": "r1"})
    with pytest.raises(TiffpipeError, match=r"page 1: segment 3 ends at byte .* truncated"):
        handlers.process_handler({"action": "plan_job", "run": run["run"], "job": 0})
    for job in (1, 2):
        planned = handlers.process_handler({"action": "plan_job", "run": run["run"],
                                            "job": job})
        assert planned["tiles"] > 0


def test_a_chain_that_fits_some_pages_names_them_and_how_to_run_them(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A scanned book of gray text pages and a colour plate, binarised for OCR: the chain
    fits the text pages only. The problem names the plate, and then the pages the chain
    fits and the job's "pages" that runs them (in the job's order), in validate --inputs and
    in PlanJob's error alike; a job whose every page is refused gets no such line."""
    book = tmp_path / "book.tif"
    with tifffile.TiffWriter(book) as w:
        for shape in ((60, 40), (60, 40), (70, 50, 3), (80, 40)):  # page 2: the plate
            w.write(np.full(shape, 200, np.uint8), photometric="rgb" if len(shape) == 3
                    else "minisblack")
    ocr = {"ops": [{"op": "otsu_threshold"}], "output_options": {"bilevel": True}}
    manifest = _manifest(tmp_path, [
        {"input": str(book), "output": str(tmp_path / "ocr.tif"), **ocr},
        {"input": str(book), "output": str(tmp_path / "some.tif"), "pages": [3, 2, 0], **ocr},
        {"input": str(book), "output": str(tmp_path / "plate.tif"), "pages": [2], **ocr}])
    hint = ('pages {ok} have none of these problems: give this job "pages": [{listed}] to '
            'run them, and page 2 a job of its own with ops and output options that fit it')
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    err = capsys.readouterr().err
    blocks = re.split(r"^  jobs\[", err, flags=re.MULTILINE)[1:]
    assert "    page 2: ops[0] (otsu_threshold): otsu_threshold needs 1 channel(s)" in blocks[0]
    assert blocks[0].endswith("\n    " + hint.format(ok="0-1, 3", listed="0, 1, 3") + "\n")
    assert blocks[1].endswith("\n    " + hint.format(ok="0, 3", listed="3, 0") + "\n")
    assert "have none of these problems" not in blocks[2]
    run = handlers.split_handler({"action": "plan_run", "manifest": str(manifest),
                                  "work": str(tmp_path / "work") + "/", "run_id": "r1"})
    with pytest.raises(TiffpipeError) as caught:
        handlers.process_handler({"action": "plan_job", "run": run["run"], "job": 0})
    assert str(caught.value).endswith("; " + hint.format(ok="0-1, 3", listed="0, 1, 3"))


def test_a_listed_overview_of_a_geotiff_says_its_output_is_not_georeferenced(tmp_path, capsys):
    """A COG written by GDAL (its overviews are pages without GeoTIFF tags: GDAL places them
    by the image page's) with a job that lists an overview (a quick 20 m product of a 10 m
    scene, ``"pages": [1]``): the output had no CRS or geotransform and nothing said so;
    the job's note now says it and what to do instead. Not of the image page itself."""
    import rasterio
    from rasterio.transform import Affine

    scene = np.arange(600 * 800, dtype=np.uint16).reshape(1, 600, 800) % 4000 + 1
    with rasterio.open(tmp_path / "cog.tif", "w", driver="COG", width=800, height=600,
                       count=1, dtype="uint16", crs="EPSG:32633", nodata=0, blocksize=256,
                       transform=Affine(10.0, 0, 399960.0, 0, -10.0, 5100000.0)) as ds:
        ds.write(scene)
    with tifffile.TiffFile(tmp_path / "cog.tif") as tf:  # (what GDAL wrote: a bare overview)
        assert tf.pages[0].is_geotiff and not tf.pages[1].is_geotiff
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "cog.tif", "output": "o1.tif", "pages": [1]},
        {"input": "cog.tif", "output": "o12.tif", "pages": [1, 2]},
        {"input": "cog.tif", "output": "o0.tif", "pages": [0]}]}))
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 0
    cog = tmp_path / "cog.tif"
    assert capsys.readouterr().out.splitlines()[1:] == [
        (f"  jobs[0] ({cog}): page 1 is a reduced-resolution page (overview) of page 0 without "
         "GeoTIFF tags of its own (GDAL places an overview by its page's): the output is not "
         'georeferenced; for a georeferenced reduced copy, process page 0 with a {"op": '
         '"downsample"} instead'),
        (f"  jobs[1] ({cog}): pages 1-2 are reduced-resolution pages (overviews) of page 0 "
         "without GeoTIFF tags of their own (GDAL places an overview by its page's): the "
         "output is not georeferenced; for a georeferenced reduced copy, process page 0 with "
         'a {"op": "downsample"} instead')]


def test_an_output_and_an_input_both_unreachable_are_both_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Without credentials, a job of an S3 input and an S3 output was told its output's
    problem only, though validate --inputs lists every problem: now its input is read still
    and told too; the error is the output's, the one PlanJob fails the job with."""
    from conftest import without_credentials

    f = _files(tmp_path / "in")
    with moto_s3(monkeypatch, "bkt") as s3:
        s3.upload_file(str(f["rgb"]), "bkt", "in/rgb.tif")
        manifest = _manifest(tmp_path, [{"input": "s3://bkt/in/rgb.tif",
                                         "output": "s3://bkt/out/rgb.tif", "ops": BLUR}])
        without_credentials(monkeypatch, tmp_path)
        assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "jobs[0] s3://bkt/in/rgb.tif -> s3://bkt/out/rgb.tif: OutputNotWritableError\n" \
           "    output s3://bkt/out/rgb.tif: no AWS credentials that S3 takes" in err, err
    assert "\n    s3://bkt/in/rgb.tif: cannot open: no AWS credentials that S3 takes" in err, err


def test_an_output_refused_does_not_hide_the_inputs_pages_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A local output whose folder is a link to nothing, and an input whose page the job's
    output options refuse: both told, the output's error first."""
    f = _files(tmp_path / "in")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    manifest = _manifest(tmp_path, [{"input": str(f["lab"]),
                                     "output": str(tmp_path / "gone" / "lab.tif")}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"lab.tif: OutputNotWritableError\n    output {tmp_path / 'gone' / 'lab.tif'}: " \
           f"{tmp_path / 'gone'} is a link to" in err, err
    assert "\n    page 0: photometric CIELAB is not supported" in err, err


def test_a_custom_function_that_cannot_be_imported_is_told_whatever_the_output_says(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """When the output's first check failed (there already, with if_exists fail),
    validate --inputs read the input but skipped the import of the job's custom functions,
    which PlanJob checks next: a module that cannot be imported was found by the next run.
    Told now, after the output's error (the one PlanJob fails the job with)."""
    f = _files(tmp_path / "in")
    out = tmp_path / "out.tif"
    out.write_bytes(b"there")
    manifest = _manifest(tmp_path, [{
        "input": str(f["rgb"]), "output": str(out), "if_exists": "fail",
        "ops": [{"op": "custom", "function": "tp_no_such_module_rf2:tile"}]}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"rgb.tif -> {out}: OutputExistsError\n    output {out} exists already" in err, err
    assert ("\n    custom op tp_no_such_module_rf2:tile: cannot import module "
            "'tp_no_such_module_rf2'") in err, err


def test_a_custom_function_that_cannot_be_imported_does_not_hide_the_outputs_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A job whose custom module cannot be imported and whose output cannot be written
    (its folder a link to nothing): validate --inputs told the import only (one ``try``
    covered the import and the output's checks), and the next run, the module mended, was
    refused for the output. Both told now, the import's first (the error PlanJob fails the
    job with), the input read still."""
    f = _files(tmp_path / "in")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    out = tmp_path / "gone" / "lab.tif"
    manifest = _manifest(tmp_path, [{
        "input": str(f["lab"]), "output": str(out),
        "ops": [{"op": "custom", "function": "tp_no_such_module_sf4:tile"}]}])
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert (f"lab.tif -> {out}: CustomOperationError\n    custom op tp_no_such_module_sf4:tile: "
            "cannot import module 'tp_no_such_module_sf4'") in err, err
    assert f"\n    output {out}: {tmp_path / 'gone'} is a link to" in err, err
    assert "\n    page 0: photometric CIELAB is not supported" in err, err


def test_an_s3_input_the_credentials_may_not_read_says_access_is_denied_and_what_it_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        moto_server: str):
    """Credentials without s3:ListBucket on the bucket, and with s3:GetObject under open/
    only, moto's server enforcing them (a HEAD's answer has no body there, as on S3). An
    input outside open/ is answered 403 (its HEAD, then the ranged GET that learns the
    code), and the message said "check the credentials and permissions", naming neither
    the bucket nor what reading needs. A key not there under open/ is answered 404 by moto
    (S3 answers 403 without s3:ListBucket, as for the first: moto cannot make that one,
    and the first job's path is the one S3 takes) and its HeadBucket 403, and the message
    said the key does not exist, nothing of the denied bucket. Now: access denied, the key
    and bucket, s3:GetObject to read it and s3:ListBucket to be told a missing key; and
    the 404 says the bucket's HeadBucket was denied; each under its job."""
    import boto3
    from conftest import use_moto_server
    from moto.core import set_initial_no_auth_action_count

    from pipeline.adapters import storage

    f = _files(tmp_path / "in")
    use_moto_server(monkeypatch, moto_server)
    monkeypatch.setattr(storage, "_writable", {})
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, [
        {"input": "s3://tp-denied/in/rgb.tif", "output": str(out / "a.tif")},
        {"input": "s3://tp-denied/open/typo.tif", "output": str(out / "b.tif")}])

    @set_initial_no_auth_action_count(5)  # the set-up's calls
    def check() -> None:
        iam = boto3.client("iam")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": ["s3:GetObject"],
                "Resource": ["arn:aws:s3:::tp-denied/open/*"]}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="tp-denied")
        s3.upload_file(str(f["rgb"]), "tp-denied", "in/rgb.tif")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setattr(storage, "_client", None)
        assert cli.main(["validate", "--inputs", str(manifest)]) == 2

    check()
    err = capsys.readouterr().err
    assert (f"  jobs[0] s3://tp-denied/in/rgb.tif -> {out / 'a.tif'}: AccessDeniedError\n"
            "    s3://tp-denied/in/rgb.tif: access denied (open): these credentials may not "
            "read key in/rgb.tif of bucket tp-denied: reading it needs s3:GetObject on it; "
            "without s3:ListBucket on the bucket, S3 answers 403 for a key that is not there "
            "too (with it, 404: told as missing), so check the key as well") in err, err
    assert (f"  jobs[1] s3://tp-denied/open/typo.tif -> {out / 'b.tif'}: InputNotFoundError\n"
            "    s3://tp-denied/open/typo.tif does not exist: check the path or URL and that "
            "the file is there (S3 answered 404 for the key: it is not there; its bucket, "
            "tp-denied, is there, but HeadBucket on it answered 403: these credentials may "
            "not look at the bucket as a whole, as when s3:ListBucket is granted only under "
            "a prefix or denied outright; check the key's spelling and prefix)\n") in err, err
