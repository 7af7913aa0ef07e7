"""The S3 path end to end: manifest, inputs, outputs, work and report in a bucket.

The workers are separate processes, so moto's in-process mock cannot reach them: S3 is a
``ThreadedMotoServer`` on localhost, and every process finds it through ``AWS_ENDPOINT_URL``.

``tiffpipe`` runs as a SUBPROCESS here: the embedded engine starts its own in-process
``mock_aws``, which resets moto's global backends (at start and at stop), and those are the
same backends the threaded server of this process serves. Run in-process, the engine would
wipe the bucket under the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
from conftest import read_pages, use_moto_server

from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).parents[1]
BUCKET = "tiffpipe-s3-test"
SIGMA = 1.5


@dataclass
class S3:
    client: Any
    tmp: Path
    source: Path  # the local copy of the uploaded input

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                       Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def pages(self, key: str) -> list[np.ndarray]:
        path = self.tmp / key.replace("/", "_")
        path.write_bytes(self.get(key))
        return _pages(path)


_pages = read_pages


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[S3]:
    tmp = tmp_path_factory.mktemp("s3")
    with pytest.MonkeyPatch.context() as mp:
        use_moto_server(mp, moto_server)
        client = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_server)
        client.create_bucket(Bucket=BUCKET)
        source = tmp / "img.tif"
        write_sample(str(source), [SamplePage(300, 400, 3), SamplePage(200, 260, 1, "uint16")],
                     tile=128, compression="zstd")
        client.upload_file(str(source), BUCKET, "data/in/img.tif")
        yield S3(client, tmp, source)


def _tiffpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=False, cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=180)


def _put_manifest(s3: S3, key: str, jobs: list[dict[str, Any]]) -> str:
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({
        "defaults": {"tile": 128, "output_options": {"tile": 64}}, "jobs": jobs}).encode())
    return f"s3://{BUCKET}/{key}"


def test_s3_run_end_to_end(s3: S3):
    manifest = _put_manifest(s3, "jobs/good.json", [
        {"input": f"s3://{BUCKET}/data/in/img.tif", "output": f"s3://{BUCKET}/data/out/a.tif",
         "ops": [{"op": "gaussian_blur", "sigma": SIGMA}]},
        # relative locations resolve against the manifest's prefix (s3://bucket/jobs/)
        {"input": "../data/in/img.tif", "output": "out/b.tif", "pages": [1],
         "ops": [{"op": "invert"}], "output_options": {"compression": "lzw"}},
    ])
    report_path = s3.tmp / "reports" / "good.json"
    done = _tiffpipe("run", manifest, "--work", f"s3://{BUCKET}/work/", "--report",
                     str(report_path), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr

    report = json.loads(report_path.read_text())
    assert report["manifest"] == manifest
    assert (report["succeeded"], report["failed"]) == (2, 0)
    a, b = report["jobs"]
    assert a["input"] == b["input"] == f"s3://{BUCKET}/data/in/img.tif"
    assert (a["output"], b["output"]) == (f"s3://{BUCKET}/data/out/a.tif",
                                          f"s3://{BUCKET}/jobs/out/b.tif")
    assert a["output"] in done.stdout and b["output"] in done.stdout

    source = _pages(s3.source)
    got = s3.pages("data/out/a.tif")
    assert len(got) == 2
    for g, page in zip(got, source, strict=True):
        assert np.array_equal(g, cv2.GaussianBlur(page, (0, 0), SIGMA))
    [inverted] = s3.pages("jobs/out/b.tif")
    assert inverted.dtype == np.uint16 and np.array_equal(inverted, ~source[1])
    head = s3.client.head_object(Bucket=BUCKET, Key="data/out/a.tif")
    assert head["ContentLength"] == a["output_bytes"]
    assert head["ContentType"] == "image/tiff"

    assert s3.keys("work/") == [], "the work prefix was not emptied"
    assert not list(Path(tempfile.gettempdir()).glob("tiffpipe-*-a.tif"))


def test_s3_a_large_xmp_packet_is_read_from_the_input_by_merge(s3: S3):
    """A 300 KB XMP packet on 3 pages of an S3 input: merge reads it from the input (ranged
    GETs pinned to its ETag) and each output page carries it rewritten and stamped; the
    plan holds where it lies, not its bytes."""
    from test_xmp import _pages_xmp, check_large, write_large

    write_large(s3.tmp / "big_xmp.tif")
    s3.client.upload_file(str(s3.tmp / "big_xmp.tif"), BUCKET, "data/in/big_xmp.tif")
    manifest = _put_manifest(s3, "jobs/xmp.json", [
        {"input": f"s3://{BUCKET}/data/in/big_xmp.tif",
         "output": f"s3://{BUCKET}/data/out/big_xmp.tif",
         "ops": [{"op": "rotate", "angle": 90}]}])
    done = _tiffpipe("run", manifest, "--work", f"s3://{BUCKET}/work-xmp/", "--keep-work",
                     "--workers", "2", "--quiet", "--no-contact-sheet")
    assert done.returncode == 0, done.stderr
    out = s3.tmp / "big_xmp_out.tif"
    out.write_bytes(s3.get("data/out/big_xmp.tif"))
    check_large(_pages_xmp(str(out)))
    (plan,) = [key for key in s3.keys("work-xmp/") if key.endswith("/plan.json")]
    assert len(s3.get(plan)) < 64 * 1024


def test_s3_outputs_that_exist_are_skipped_or_fail_as_asked(s3: S3):
    """if_exists on S3: PlanJob looks the output up (HeadObject); skip leaves it and the job
    is SKIPPED, fail leaves it and the job fails; exit 1 for the failed one only."""
    for key in ("data/exists/skip.tif", "data/exists/fail.tif"):
        s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"an earlier run's output")
    img = f"s3://{BUCKET}/data/in/img.tif"
    manifest = _put_manifest(s3, "jobs/exists.json", [
        {"input": img, "output": f"s3://{BUCKET}/data/exists/{name}", "pages": [0],
         "if_exists": mode} for name, mode in (("skip.tif", "skip"), ("fail.tif", "fail"),
                                               ("new.tif", "skip"))])
    done = _tiffpipe("run", manifest, "--workers", "2", "--quiet", "--no-contact-sheet")
    assert done.returncode == 1, done.stderr
    report = json.loads(s3.get("jobs/exists.report.json"))
    assert [j["status"] for j in report["jobs"]] == ["SKIPPED", "FAILED", "SUCCEEDED"]
    assert report["jobs"][1]["error"]["type"] == "OutputExistsError"
    for key in ("data/exists/skip.tif", "data/exists/fail.tif"):
        assert s3.get(key) == b"an earlier run's output"
    [page] = s3.pages("data/exists/new.tif")
    assert np.array_equal(page, _pages(s3.source)[0])


def test_s3_missing_input_fails_alone_with_default_report_and_work(s3: S3):
    """No --report: the report goes next to the S3 manifest. No --work: the work goes to the
    local temp folder (a run on S3 data) and is removed after the run."""
    manifest = _put_manifest(s3, "jobs/mixed.json", [
        {"input": f"s3://{BUCKET}/data/in/missing.tif",
         "output": f"s3://{BUCKET}/data/out/missing.tif"},
        {"input": f"s3://{BUCKET}/data/in/img.tif", "output": f"s3://{BUCKET}/data/out/ok.tif",
         "pages": [0], "ops": [{"op": "gaussian_blur", "sigma": SIGMA}]},
    ])
    done = _tiffpipe("run", manifest, "--workers", "2", "--quiet")
    assert done.returncode == 1, done.stderr
    # --quiet: no summary; on stderr the failed job, what a rerun would do to the job that
    # succeeded, and last the count with the report's URL
    assert done.stdout == ""
    missing_url = f"s3://{BUCKET}/data/in/missing.tif"
    lines = done.stderr.splitlines()
    assert lines[0] == (f"tiffpipe: job 0 FAILED ({missing_url}): InputNotFoundError: "
                        f"{missing_url} does not exist: check the path or URL and that the "
                        "file is there (in PlanJob)")
    assert lines[1].startswith(
        "tiffpipe: a rerun of this manifest as it is would run the 1 job that succeeded again")
    assert lines[-1] == ("tiffpipe: 1 of 2 jobs failed (1 succeeded); report: "
                         f"s3://{BUCKET}/jobs/mixed.report.json")

    report = json.loads(s3.get("jobs/mixed.report.json"))
    assert (report["succeeded"], report["failed"]) == (1, 1)
    missing, ok = report["jobs"]
    assert missing["status"] == "FAILED"
    assert missing["error"]["type"] == "InputNotFoundError"
    assert f"s3://{BUCKET}/data/in/missing.tif" in missing["error"]["message"]
    assert ok["status"] == "SUCCEEDED"
    assert "data/out/missing.tif" not in s3.keys("data/out/")
    [page] = s3.pages("data/out/ok.tif")
    assert np.array_equal(page, cv2.GaussianBlur(_pages(s3.source)[0], (0, 0), SIGMA))
    assert not (Path(tempfile.gettempdir()) / "tiffpipe-work" / report["run_id"]).exists()


def test_s3_work_holds_the_summed_thumbnails_of_the_contact_sheet(s3: S3):
    """With an s3:// work location the steps' thumbnail parts are objects there, and the
    contact sheet drawn from them is the one drawn from the files (a page of 1 Mpx and
    more: summed; tiffpipe run's own box)."""
    from PIL import Image

    from pipeline import contact_sheet
    from pipeline.adapters import storage
    from pipeline.core.models import JobSpec

    big = s3.tmp / "big.tif"
    write_sample(str(big), [SamplePage(1100, 1040, 3)], tile=256, compression="zstd")
    s3.client.upload_file(str(big), BUCKET, "data/in/big.tif")
    manifest = _put_manifest(s3, "jobs/sheet.json", [
        {"input": f"s3://{BUCKET}/data/in/big.tif", "output": f"s3://{BUCKET}/data/out/big.tif",
         "ops": [{"op": "gaussian_blur", "sigma": SIGMA}], "tile": 256,
         "output_options": {"compression": "deflate", "tile": 256}}])
    report_path = s3.tmp / "reports" / "sheet.json"
    done = _tiffpipe("run", manifest, "--work", f"s3://{BUCKET}/sheet-work/", "--report",
                     str(report_path), "--workers", "2", "--keep-work")
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    parts = [k.rsplit("/", 1)[-1] for k in s3.keys("sheet-work/") if "/thumbs/" in k]
    assert {p.split("-")[0] for p in parts} == {"in", "out"}, parts
    run = storage.read_json(f"s3://{BUCKET}/sheet-work/run.json")
    specs = [JobSpec.from_json(j) for j in run["jobs"]]
    written = Image.open(report_path.with_name("sheet.contact.png")).convert("RGB")
    np.testing.assert_array_equal(np.asarray(written),
                                  np.asarray(contact_sheet.render(report, specs)))
    storage.delete_prefix(f"s3://{BUCKET}/sheet-work/")
