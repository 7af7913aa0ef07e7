"""Merge composes the output from segments, on the local engine and on S3 (a moto server).

"The old way" here is tifffile writing the REAL encoded tiles with the same writer calls
(:func:`merged_by_tifffile`): today's merge. The composed outputs must equal it byte for
byte (OME-XML carries a time-based UUID that differs between any two runs: it is masked).
S3 is moto's server in a process of its own, ``tiffpipe`` runs as a subprocess (see
tests/test_s3_pipeline.py); merges re-run in this process read the kept work from the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tifffile
from conftest import (
    cog_layout_problems,
    gdal_masked,
    mixed_book,
    one_bit_pages_state_their_bits,
    pyramid_levels,
)

from pipeline import cli
from pipeline.adapters import segments, storage
from pipeline.adapters.segments import SegmentWriter, compose, read_range
from pipeline.core import plan as plan_module
from pipeline.core import tiff_layout
from pipeline.core.events import MergeEvent
from pipeline.core.levels import level_units
from pipeline.core.models import JobPlan
from pipeline.errors import OutputExistsError, StorageError, WorkMissingError
from pipeline.steps import layout, tile_table
from pipeline.steps import merge as merge_mod
from pipeline.steps.common import forget_plans, load_plan
from pipeline.steps.unit_levels import fragment_name

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).parents[1]
BUCKET = "tiffpipe-merge-test"
MiB = 1024 * 1024
_UUID = re.compile(rb"urn:uuid:[0-9a-f-]{36}")


def merged_by_tifffile(plan: JobPlan, path: Path) -> bytes:
    """The job merged the old way: tifffile writes the real tiles, read from the segments;
    pyramid levels built by merge from the base tiles."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(merge_mod, "UNIT_LEVELS", False)
        mp.setattr(tile_table, "Placeholder",
                   lambda span: read_range(span.source, span.start, span.size))
        with tifffile.TiffWriter(path, bigtiff=plan_module.bigtiff_output(plan),
                                 ome=plan.spec.output_options.ome) as writer:
            for i, page in enumerate(plan.pages):
                merge_mod._write_page(writer, plan, i, page, merge_mod._page_tags(plan, page))
    return path.read_bytes()


def _same(a: bytes, b: bytes) -> bool:
    return _UUID.sub(b"uuid", a) == _UUID.sub(b"uuid", b)


def _plan(work: str, job: int) -> JobPlan:
    forget_plans()
    return load_plan(layout.plan_file(layout.job_dir(work, job)))


def _smooth(h: int, w: int, c: int, seed: int, dtype: str = "uint8") -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(yy / 11.0) + np.cos(xx / 7.0) + 2) / 4
    img = np.stack([np.roll(base, 5 * k, axis=1) for k in range(c)], -1)
    img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1) * np.iinfo(dtype).max
    img = img.round().astype(dtype)
    return img if c > 1 else img[:, :, 0]


def _two_pages(path: Path) -> None:
    """An RGB page with resolution and description, a uint16 gray page with a PageName."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(_smooth(700, 900, 3, 1), photometric="rgb", tile=(128, 128),
                 compression="zlib", resolution=((300, 1), (300, 1)), resolutionunit=2,
                 description="page zero", metadata=None)
        tw.write(_smooth(500, 333, 1, 2, "uint16"), tile=(64, 64), compression="zlib",
                 metadata=None, extratags=[(285, "s", 0, "scan 1", True)])


# --- the local engine ----------------------------------------------------------------

LOCAL_JOBS: dict[str, dict[str, Any]] = {
    "zstd": {},
    "deflate": {"output_options": {"compression": "deflate"}},
    "jpeg": {"pages": [0], "output_options": {"compression": "jpeg", "quality": 85}},
    "none": {"output_options": {"compression": "none"}},
    "lzw": {"ops": [{"op": "gaussian_blur", "sigma": 1.5}], "output_options": {
        "compression": "lzw"}},
    "batches": {"fuse": False, "ops": [{"op": "median_blur", "ksize": 3}]},
    "down": {"ops": [{"op": "downsample", "factor": 2}], "tile": 512},
    "ome": {"output_options": {"ome": True}},
    "pyramid": {"output_options": {"pyramid": True}},
    "pyramid_ome": {"output_options": {"pyramid": True, "ome": True, "compression": "deflate"}},
}


def run_two_pages(root: Path, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``tiffpipe run`` of ``jobs`` (name -> job fields) on :func:`_two_pages`'s file in
    ``root`` (processing tile 256, output tile 128, the work kept in ``root/work``), each
    output ``root/out/NAME.tif``: the run's root, work and outputs."""
    _two_pages(root / "in.tif")
    work = root / "work"
    (root / "m.json").write_text(json.dumps({"defaults": {"tile": 256, "output_options": {
        "tile": 128}}, "jobs": [{"input": str(root / "in.tif"), **job,
                                 "output": str(root / "out" / f"{name}.tif")}
                                for name, job in jobs.items()]}))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["run", str(root / "m.json"), "--workers", "2", "--quiet",
                         "--keep-work", "--work", str(work)])
    assert code == 0, (root / "m.report.json").read_text()
    return {"root": root, "work": str(work),
            "outputs": {name: str(root / "out" / f"{name}.tif") for name in jobs}}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_two_pages(tmp_path_factory.mktemp("local_merge"), LOCAL_JOBS)


@pytest.mark.parametrize("job", range(len(LOCAL_JOBS)), ids=list(LOCAL_JOBS))
def test_local_output_is_the_tifffile_merge_byte_for_byte(local, job):
    plan = _plan(local["work"], job)
    got = Path(plan.spec.output).read_bytes()
    want = merged_by_tifffile(plan, local["root"] / f"old{job}.tif")
    assert _same(got, want)
    with tifffile.TiffFile(plan.spec.output) as tf:
        assert len(tf.pages) == len(plan.pages)
        assert not tf.is_bigtiff
    for i, page in enumerate(plan.pages):  # the estimate's model of segments is the real one
        table = merge_mod.TileTable.read(plan, i, page)
        np.testing.assert_array_equal(tiff_layout.segment_map(plan, i), table.segment)
        assert len(tiff_layout.run_lengths(table.segment)) == table.runs()


def test_bigtiff_layout_is_the_tifffile_merge(local, monkeypatch, tmp_path):
    """Above 2 GiB of raw pixels the output is a BigTIFF (forced here by lowering the bound)."""
    monkeypatch.setattr(plan_module, "BIGTIFF_ABOVE", 0)
    plan = _plan(local["work"], list(LOCAL_JOBS).index("pyramid"))
    out = tmp_path / "big.tif"
    compose(merge_mod.output_pieces(plan), str(out))
    assert out.read_bytes() == merged_by_tifffile(plan, tmp_path / "old.tif")
    with tifffile.TiffFile(out) as tf:
        assert tf.is_bigtiff and len(tf.pages[0].pages) >= 1


def _refusing(after_bytes: int) -> Any:
    """os.copy_file_range that copies ``after_bytes`` in small steps, then refuses (EXDEV),
    as between filesystems that cannot copy in the kernel."""
    real = os.copy_file_range
    state = {"left": after_bytes, "calls": 0}

    def copy(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        state["calls"] += 1
        if state["left"] <= 0:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        n = real(src, dst, min(count, 1000, state["left"]), offset_src)
        state["left"] -= n
        return n

    copy.state = state  # type: ignore[attr-defined]
    return copy


@pytest.mark.parametrize("after", [0, 2500])
def test_local_compose_falls_back_when_the_kernel_cannot_copy(local, monkeypatch, tmp_path,
                                                             after):
    """Where copy_file_range is refused (another filesystem, an old kernel), from the first
    byte or part-way through a span, the rest goes through this process: the same bytes."""
    plan = _plan(local["work"], list(LOCAL_JOBS).index("deflate"))
    pieces = merge_mod.output_pieces(plan)
    want = tmp_path / "kernel.tif"
    compose(pieces, str(want))
    monkeypatch.setattr(segments, "_KERNEL_COPY", [True])
    refusing = _refusing(after)
    monkeypatch.setattr(segments.os, "copy_file_range", refusing)
    got = tmp_path / "fallback.tif"
    compose(pieces, str(got))
    assert got.read_bytes() == want.read_bytes() == Path(plan.spec.output).read_bytes()
    assert segments._KERNEL_COPY == [False]  # asked no more after the refusal
    calls = refusing.state["calls"]
    compose(pieces, str(tmp_path / "again.tif"))
    assert refusing.state["calls"] == calls


def test_local_compose_of_a_short_segment_fails_by_name(tmp_path):
    """A segment shorter than its index says: WorkMissingError naming it, and no output
    (nor its temporary file) is left, with the kernel's copy and without it."""
    seg = tmp_path / "u000001.seg"
    seg.write_bytes(b"x" * 5000)
    other = tmp_path / "u000000.seg"
    other.write_bytes(bytes(range(256)) * 40)
    pieces = [tiff_layout.Literal(b"II*\x00"), tiff_layout.Span(str(other), 10, 9000),
              tiff_layout.Span(str(seg), 100, 4900), tiff_layout.Literal(b"end")]
    out = tmp_path / "out" / "ok.tif"
    assert compose(pieces, str(out)) == 4 + 9000 + 4900 + 3
    assert out.read_bytes() == (b"II*\x00" + other.read_bytes()[10:9010]
                                + seg.read_bytes()[100:] + b"end")
    for kernel in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(segments, "_KERNEL_COPY", [kernel])
            bad = [*pieces[:2], tiff_layout.Span(str(seg), 100, 6000)]
            with pytest.raises(WorkMissingError, match="u000001.seg"):
                compose(bad, str(tmp_path / "out" / "bad.tif"))
    assert sorted(os.listdir(tmp_path / "out")) == ["ok.tif"]


# --- S3 (a moto server) --------------------------------------------------------------


#: moto's S3 server, on a port the kernel gives it as it binds; the port said on stdout
#: once it listens; ended by its stdin closing
SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


def _moto_server() -> tuple[subprocess.Popen[str], str]:
    """moto's S3 server in its OWN process, so that what this process allocates and opens
    is merge's alone (the server holds and spools the objects). It binds a free port itself
    and says which once it listens: a port found free here and given to the server was
    sometimes taken meanwhile (the machine's other connections), and its start-up was
    awaited for 30 s at most (a loaded machine took longer)."""
    import moto.server  # noqa: F401 - in the test lock: a broken install fails here, clearly
    with tempfile.TemporaryFile("w+") as err:  # (its request log: not a pipe it could fill)
        proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        if not port.isdigit():  # it ended without listening
            proc.kill()
            err.seek(0)
            pytest.fail(f"moto's server did not start: {err.read()[-2000:]}")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    proc, endpoint = _moto_server()
    tmp = tmp_path_factory.mktemp("s3_merge")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
                mp.delenv(var, raising=False)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setattr(storage, "_client", None)
            client = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint)
            client.create_bucket(Bucket=BUCKET)
            # noise does not compress: an output of ~17 MB from a 2400 x 2400 RGB page
            noise = np.random.default_rng(7).integers(0, 256, (2400, 2400, 3), np.uint8)
            tifffile.imwrite(tmp / "noise.tif", noise, tile=(256, 256), compression="zstd",
                             photometric="rgb", metadata=None)
            client.upload_file(str(tmp / "noise.tif"), BUCKET, "in/noise.tif")
            _two_pages(tmp / "two.tif")
            client.upload_file(str(tmp / "two.tif"), BUCKET, "in/two.tif")
            gdal_masked(tmp / "masked.tif", *_masked_scene())
            client.upload_file(str(tmp / "masked.tif"), BUCKET, "in/masked.tif")
            mixed_book(tmp / "book.tif", ROOT / "tests" / "data" / "libtiff" / "testfax4.tiff")
            client.upload_file(str(tmp / "book.tif"), BUCKET, "in/book.tif")
            yield _run_s3(client, tmp)
    finally:
        proc.communicate("")  # its stdin ends: the server ends
        proc.wait(60)


MASKED_OPS = [{"op": "gaussian_blur", "sigma": 1.5}, {"op": "rotate", "angle": 90},
              {"op": "crop", "x": 30, "y": 50, "width": 600, "height": 800}]
S3_JOBS: dict[str, dict[str, Any]] = {
    "fused": {"input": "noise.tif"},
    "batches": {"input": "noise.tif", "fuse": False, "ops": [{"op": "invert"}]},
    "pyramid": {"input": "two.tif", "output_options": {"tile": 128, "pyramid": True}},
    # not fused: level units (BuildLevels) build the levels from the batches' segments in S3
    "pyramid_batches": {"input": "two.tif", "fuse": False, "ops": [{"op": "invert"}],
                        "output_options": {"tile": 128, "pyramid": True,
                                           "compression": "deflate"}},
    # the same two, levels as pages after their page (output_options.pyramid_layout), a
    # page each (an output of several pages is refused that layout: docs/outputs.md)
    "pyramid_pages": {"input": "two.tif", "pages": [0], "output_options": {
        "tile": 128, "pyramid": True, "pyramid_layout": "pages"}},
    "pyramid_pages_batches": {"input": "two.tif", "pages": [1], "fuse": False,
                              "ops": [{"op": "invert"}],
                              "output_options": {"tile": 128, "pyramid": True,
                                                 "compression": "deflate",
                                                 "pyramid_layout": "pages"}},
    # a GeoTIFF with GDAL's internal mask: the mask page laid out after the image page, its
    # tiles from the units' mask segments (fused, or the split units of a job of batches)
    "masked": {"input": "masked.tif", "ops": MASKED_OPS,
               "output_options": {"tile": 128}},
    "masked_batches": {"input": "masked.tif", "ops": MASKED_OPS, "fuse": False,
                       "output_options": {"tile": 128}},
    # with levels: each level's mask after it (as pages), or after the page's mask (SubIFDs),
    # the levels and their masks built by merge from the page's tiles and mask tiles in S3
    "masked_pyramid_pages": {"input": "masked.tif", "ops": MASKED_OPS, "output_options": {
        "tile": 128, "pyramid": True, "pyramid_layout": "pages"}},
    "masked_pyramid_batches": {"input": "masked.tif", "ops": MASKED_OPS, "fuse": False,
                               "output_options": {"tile": 128, "pyramid": True}},
    # Cloud Optimized GeoTIFFs (output_options.cog): every IFD first, the levels' tiles then
    # the image's, copied from the segments; a masked one's masks' IFDs and tiles too
    "noise_cog": {"input": "noise.tif", "output_options": {
        "pyramid": True, "pyramid_layout": "pages", "cog": True}},
    "masked_cog": {"input": "masked.tif", "ops": MASKED_OPS, "output_options": {
        "tile": 128, "pyramid": True, "pyramid_layout": "pages", "cog": True}},
    # a 1-bit output: group4 (laid out as deflate, its Compression tag set after)
    "bilevel": {"input": "two.tif", "pages": [0], "ops": [
        {"op": "to_gray"}, {"op": "threshold", "value": 128}],
        "output_options": {"tile": 128, "bilevel": True, "compression": "group4"}},
    # a book of a group4 text page and plates, each page in its kind (bilevel "auto")
    "bilevel_auto": {"input": "book.tif", "output_options": {
        "tile": 128, "bilevel": "auto", "compression": "deflate"}},
}


def _masked_scene() -> tuple[np.ndarray, np.ndarray]:
    """An RGB scene and its valid area (a slanted swath with a hole), for GDAL to write."""
    valid = np.zeros((700, 900), bool)
    for y in range(700):
        valid[y, 40 + y // 4:860 - (700 - y) // 5] = True
    valid[300:340, 400:470] = False
    return _smooth(700, 900, 3, 5), valid


def _run_s3(client: Any, tmp: Path) -> dict[str, Any]:
    jobs = [{**job, "input": f"s3://{BUCKET}/in/{job['input']}",
             "output": f"s3://{BUCKET}/out/{name}.tif"} for name, job in S3_JOBS.items()]
    client.put_object(Bucket=BUCKET, Key="m.json", Body=json.dumps(
        {"defaults": {"tile": 512, "output_options": {"tile": 256}}, "jobs": jobs}).encode())
    work = f"s3://{BUCKET}/work/"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", f"s3://{BUCKET}/m.json",
                           "--work", work, "--keep-work", "--workers", "2", "--report",
                           str(tmp / "report.json")], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    run_work = json.loads(client.get_object(Bucket=BUCKET, Key=next(
        o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="work/")["Contents"]
        if o["Key"].endswith("run.json")))["Body"].read())["work"]
    return {"client": client, "tmp": tmp, "work": run_work}


def _get(s3: dict[str, Any], key: str) -> bytes:
    return bytes(s3["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _uploads(s3: dict[str, Any]) -> list[dict[str, Any]]:
    return list(s3["client"].list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def test_moto_copies_inclusive_byte_ranges(s3):
    """UploadPartCopy with CopySourceRange copies bytes first..last INCLUDED, as S3 does."""
    c, data = s3["client"], os.urandom(6 * MiB + 7)
    c.put_object(Bucket=BUCKET, Key="range/src", Body=data)
    up = c.create_multipart_upload(Bucket=BUCKET, Key="range/dst")["UploadId"]
    one = c.upload_part_copy(Bucket=BUCKET, Key="range/dst", UploadId=up, PartNumber=1,
                             CopySource={"Bucket": BUCKET, "Key": "range/src"},
                             CopySourceRange=f"bytes=3-{3 + 5 * MiB - 1}")
    two = c.upload_part_copy(Bucket=BUCKET, Key="range/dst", UploadId=up, PartNumber=2,
                             CopySource={"Bucket": BUCKET, "Key": "range/src"},
                             CopySourceRange="bytes=0-0")
    c.complete_multipart_upload(Bucket=BUCKET, Key="range/dst", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": one["CopyPartResult"]["ETag"]},
                  {"PartNumber": 2, "ETag": two["CopyPartResult"]["ETag"]}]})
    assert _get(s3, "range/dst") == data[3:3 + 5 * MiB] + data[:1]


#: the jobs whose output tifffile writes alike from the real tiles: not the masked GeoTIFF's,
#: whose pages have no resolution (merge drops the one tifffile writes on every page), nor
#: any with 1-bit pages (merge states their BitsPerSample, which tifffile does not write)
TIFFFILE_ALIKE = [n for n in S3_JOBS if not n.startswith(("masked", "bilevel"))
                  and not n.endswith("_cog")]


@pytest.mark.parametrize("job", [list(S3_JOBS).index(n) for n in TIFFFILE_ALIKE],
                         ids=TIFFFILE_ALIKE)
def test_s3_output_is_the_tifffile_merge_and_the_local_concatenation(s3, job):
    plan = _plan(s3["work"], job)
    if list(S3_JOBS)[job] == "pyramid_batches":  # its level units wrote their levels
        assert level_units(plan) and all(storage.exists(layout.segment_index_file(
            plan.work, u.page, fragment_name(n))) for n, u in enumerate(plan.units))
    got = _get(s3, storage.split_s3(plan.spec.output)[1])
    want = merged_by_tifffile(plan, s3["tmp"] / f"old{job}.tif")
    assert got == want
    local = s3["tmp"] / f"local{job}.tif"
    compose(merge_mod.output_pieces(plan), str(local))  # the same layout, concatenated
    assert local.read_bytes() == got
    assert _uploads(s3) == []


@pytest.mark.parametrize(("name", "page", "kinds"), [
    ("pyramid", 0, [0, 1, 1, 1]), ("pyramid_batches", 1, [0, 1, 1])])
def test_s3_levels_as_pages_are_the_subifd_levels(s3, name, page, kinds):
    """The S3 merge of a job with ``pyramid_layout`` "pages" (of one page of the two) writes
    the page followed by its levels as pages marked NewSubfileType 1, the pixels of that
    page's SubIFD levels in the same job of both pages, and byte for byte the local
    concatenation of the same layout."""
    plan = _plan(s3["work"], list(S3_JOBS).index(name.replace("pyramid", "pyramid_pages")))
    got = s3["tmp"] / f"pages_{name}.tif"
    got.write_bytes(_get(s3, storage.split_s3(plan.spec.output)[1]))
    local = s3["tmp"] / f"pages_{name}_local.tif"
    compose(merge_mod.output_pieces(plan), str(local))
    assert local.read_bytes() == got.read_bytes()
    subifds = s3["tmp"] / f"subifds_{name}.tif"
    subifds.write_bytes(_get(s3, storage.split_s3(_plan(
        s3["work"], list(S3_JOBS).index(name)).spec.output)[1]))
    with tifffile.TiffFile(got) as tf:
        assert [int(p.subfiletype) for p in tf.pages] == kinds
        assert not any(p.subifds for p in tf.pages)
    want, have = pyramid_levels(subifds)[page:page + 1], pyramid_levels(got)
    assert [len(p) for p in have] == [len(p) for p in want] == [len(kinds)]
    for page_want, page_have in zip(want, have, strict=True):
        for (pixels_w, _), (pixels_h, _) in zip(page_want, page_have, strict=True):
            np.testing.assert_array_equal(pixels_h, pixels_w)
    assert _uploads(s3) == []


def _merged_alike(s3: dict[str, Any], name: str) -> Path:
    """Job ``name``'s output merged on S3 (fetched to a local file), checked to be the same
    bytes as the local concatenation of the same layout."""
    plan = _plan(s3["work"], list(S3_JOBS).index(name))
    got = s3["tmp"] / f"{name}.tif"
    got.write_bytes(_get(s3, storage.split_s3(plan.spec.output)[1]))
    local = s3["tmp"] / f"{name}_local.tif"
    compose(merge_mod.output_pieces(plan), str(local))
    assert local.read_bytes() == got.read_bytes()
    return got


@pytest.mark.parametrize("name", ["masked", "masked_batches"])
def test_s3_merge_lays_the_mask_page_out(s3, name):
    """The S3 merge of a masked GeoTIFF's job writes the mask right after the image page,
    the same bytes as the local concatenation of the same layout: GDAL reads the input's
    mask turned and cropped as the pixels were."""
    import rasterio

    got = _merged_alike(s3, name)
    with tifffile.TiffFile(got) as tf:
        assert [(int(p.subfiletype), int(p.photometric)) for p in tf.pages] == [(0, 2), (4, 4)]
    assert one_bit_pages_state_their_bits(got) == 1
    _, valid = _masked_scene()
    with rasterio.open(got) as ds:
        np.testing.assert_array_equal(ds.read_masks(1) > 0,
                                      np.rot90(valid, -1)[50:850, 30:630])
    assert _uploads(s3) == []


@pytest.mark.parametrize(("name", "chain"), [
    ("masked_pyramid_pages", [0, 4, 1, 5, 1, 5, 1, 5]),
    ("masked_pyramid_batches", [0, 4, 5, 5, 5])])
def test_s3_merge_lays_the_levels_masks_out(s3, name, chain):
    """The S3 merge of a masked GeoTIFF's pyramid job lays each level's mask out as the local
    merge does (the same bytes): GDAL reads each overview's mask as the page's reduced, a
    pixel valid where its block holds a valid one (tests/test_masks.py)."""
    import rasterio

    got = _merged_alike(s3, name)
    with tifffile.TiffFile(got) as tf:
        assert [int(p.subfiletype) for p in tf.pages] == chain
    assert one_bit_pages_state_their_bits(got) == 4  # (the masks)
    valid = np.rot90(_masked_scene()[1], -1)[50:850, 30:630]
    with rasterio.open(got) as ds:
        assert ds.overviews(1) == [2, 4, 8]
    for k, f in enumerate([2, 4, 8]):
        with rasterio.open(got, overview_level=k) as ds:
            blocks = valid.reshape(800 // f, f, 600 // f, f)
            np.testing.assert_array_equal(ds.read_masks(1) > 0, blocks.any(axis=(1, 3)))
    assert _uploads(s3) == []


@pytest.mark.parametrize(("name", "twin"), [("noise_cog", "fused"),
                                            ("masked_cog", "masked_pyramid_pages")])
def test_s3_merge_of_a_cog(s3, name, twin):
    """The S3 merge of a COG (``output_options.cog``): the local concatenation's bytes, GDAL's
    COG layout (tests/test_cog.py), its tiles' data copied server-side from the segments
    (17 MB of noise: UploadPartCopy parts) and its image the pixels of the same job's
    without ``cog``; a masked one's mask and overviews' masks read as that job's."""
    got = _merged_alike(s3, name)
    assert cog_layout_problems(got) == []
    plan = _plan(s3["work"], list(S3_JOBS).index(name))
    copied = [p for p in tiff_layout.plan_parts(merge_mod.output_pieces(plan)) if p.copy]
    assert bool(copied) == (name == "noise_cog")
    other = s3["tmp"] / f"{twin}_twin.tif"
    other.write_bytes(_get(s3, storage.split_s3(_plan(
        s3["work"], list(S3_JOBS).index(twin)).spec.output)[1]))
    with tifffile.TiffFile(got) as tf, tifffile.TiffFile(other) as tw:
        np.testing.assert_array_equal(tf.pages[0].asarray(), tw.pages[0].asarray())
    if name == "masked_cog":
        import rasterio

        for k in range(4):
            with rasterio.open(got, overview_level=k - 1 if k else None) as ds, \
                    rasterio.open(other, overview_level=k - 1 if k else None) as ws:
                np.testing.assert_array_equal(ds.read(), ws.read())
                np.testing.assert_array_equal(ds.read_masks(), ws.read_masks())
    assert _uploads(s3) == []


def test_s3_merge_of_a_1bit_output(s3):
    """The S3 merge of a 1-bit (group4) output: the same bytes as the local concatenation
    of the same layout, BitsPerSample 1 stated, the bits those of the threshold."""
    got = _merged_alike(s3, "bilevel")
    assert one_bit_pages_state_their_bits(got) == 1
    with tifffile.TiffFile(got) as tf:
        assert int(tf.pages[0].compression) == 4
        bits = tf.pages[0].asarray()
    gray = _smooth(700, 900, 3, 1).astype(np.float64) @ [0.299, 0.587, 0.114]
    assert abs(int(bits.sum()) - int((gray.round() <= 128).sum())) < 0.01 * bits.size
    assert _uploads(s3) == []


def test_s3_merge_of_a_book_of_1bit_and_8bit_pages(s3):
    """The S3 merge of a ``bilevel`` "auto" copy of a book: the text page 1-bit group4 (its
    BitsPerSample stated, its Compression tag set), the gray and RGB plates 8-bit deflate,
    the same bytes as the local concatenation of the same layout, each page's pixels the
    input's."""
    got = _merged_alike(s3, "bilevel_auto")
    assert one_bit_pages_state_their_bits(got) == 1
    with tifffile.TiffFile(got) as tf, tifffile.TiffFile(s3["tmp"] / "book.tif") as book:
        assert [(p.bitspersample, int(p.photometric), int(p.compression))
                for p in tf.pages] == [(1, 0, 4), (8, 1, 8), (8, 2, 8)]
        for page, source in zip(tf.pages, book.pages, strict=True):
            np.testing.assert_array_equal(page.asarray(), source.asarray())
    assert _uploads(s3) == []


def test_merge_memory_and_disk_stay_bounded(s3, monkeypatch):
    """Merge of a 17 MB output holds under MEMORY_LIMIT (< the output) and opens no local
    file for writing (the old merge wrote the whole output to /tmp first); the data goes as
    server-side copies (parts of 6 MiB here, to have several)."""
    memory_limit = 12 * MiB
    plan = _plan(s3["work"], 0)
    key = storage.split_s3(plan.spec.output)[1]
    before = _get(s3, key)
    assert len(before) > memory_limit
    s3["client"].delete_object(Bucket=BUCKET, Key=key)
    monkeypatch.setattr(tiff_layout, "COPY_PART", 6 * MiB)
    copies: list[int] = []
    real_copy = segments._copy_part

    def counted(bucket: str, key: str, upload: str, part: tiff_layout.Part) -> str:
        copies.append(part.size)
        return real_copy(bucket, key, upload, part)

    monkeypatch.setattr(segments, "_copy_part", counted)
    written: list[str] = []
    watching = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if watching[0] and event == "open" and isinstance(args[0], str | bytes | Path):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                written.append(str(args[0]))

    sys.addaudithook(hook)
    tracemalloc.start()
    try:
        result = merge_mod.merge(MergeEvent(layout.plan_file(plan.work)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        watching[0] = False
    assert written == []
    assert peak < memory_limit, peak
    assert result["output_bytes"] == len(before) and _get(s3, key) == before
    assert len(copies) >= 2 and sum(copies) > len(before) - 2 * tiff_layout.MIN_PART
    assert _uploads(s3) == []


def _tags(page: tifffile.TiffPage) -> dict[int, Any]:
    return {t.code: t.value for t in page.tags.values()}


@pytest.mark.parametrize("limit", ["ROW_MAJOR_RUNS", "ROW_MAJOR_READ_THROUGH"])
def test_a_page_laid_out_segment_by_segment_keeps_every_tag_and_pixel(s3, monkeypatch, limit):
    """A page of too many row-major runs, or of too many bytes in runs too short to copy,
    is laid out one segment after the other (forced here by either limit): only
    TileOffsets differ from tifffile's merge; S3 == local concatenation."""
    monkeypatch.setattr(tiff_layout, limit, 0)
    plan = _plan(s3["work"], 1)  # 4 batches: their tiles interleave in row-major order
    key = storage.split_s3(plan.spec.output)[1]
    s3["client"].delete_object(Bucket=BUCKET, Key=key)
    merge_mod.merge(MergeEvent(layout.plan_file(plan.work)))
    got = s3["tmp"] / "by_segment.tif"
    got.write_bytes(_get(s3, key))
    local = s3["tmp"] / "by_segment_local.tif"
    compose(merge_mod.output_pieces(plan), str(local))
    assert local.read_bytes() == got.read_bytes()
    old = s3["tmp"] / "by_segment_old.tif"
    merged_by_tifffile(plan, old)
    assert got.stat().st_size == old.stat().st_size
    with tifffile.TiffFile(got) as new_tf, tifffile.TiffFile(old) as old_tf:
        for a, b in zip(new_tf.pages, old_tf.pages, strict=True):
            ta, tb = _tags(a), _tags(b)
            assert list(ta[324]) != sorted(ta[324])  # really out of row-major order
            # the same data region, every byte of it a tile's
            start, tiles = min(ta[324]), sorted(zip(ta.pop(324), ta[325], strict=True))
            assert start == min(tb.pop(324))
            assert all(o + n == o2 for (o, n), (o2, _) in itertools.pairwise(tiles))
            assert ta == tb
            np.testing.assert_array_equal(a.asarray(), b.asarray())
    assert _uploads(s3) == []


def test_a_failed_job_aborts_its_own_uploads_not_another_runs(s3):
    """RecordFailure aborts the upload a killed merge of the job left on its output (the
    merge recorded it as it began), but not one another run began there, before or after
    this job started: that run is still writing the output."""
    from pipeline.core.events import FailureEvent
    from pipeline.steps import report as report_step
    from pipeline.steps.common import record_output_upload

    c, plan = s3["client"], _plan(s3["work"], 1)
    key = storage.split_s3(plan.spec.output)[1]
    before = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    killed = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    record_output_upload(plan.work, plan.spec.output, killed)  # as this job's merge did
    after = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    result_url = layout.result_file(plan.work)
    kept = storage.read_bytes(result_url)  # the fixture's run, which later tests read
    try:
        failed = report_step.record_failure(FailureEvent(
            run=layout.run_file(s3["work"]), job=1,
            error={"Error": "States.Timeout", "Cause": "Merge timed out"}))
        assert failed["status"] == "FAILED"
        assert sorted(u["UploadId"] for u in _uploads(s3)) == sorted([before, after])
    finally:
        storage.write_bytes(result_url, kept)
        storage.delete_prefix(layout.uploads_dir(plan.work))
        for upload in (before, after):
            c.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
    assert _uploads(s3) == []


def test_a_completed_upload_leaves_no_record(s3):
    """A merge whose upload completed removes its record: the run kept its work
    (--keep-work), and a later run given that work took every record for an upload left
    open, which it tried to end (from a machine that cannot reach that S3: refused)."""
    plan = _plan(s3["work"], 1)
    assert plan.spec.output.startswith("s3://")
    assert _get(s3, storage.split_s3(plan.spec.output)[1])  # published, as an upload of parts
    assert segments.recorded_uploads(storage.join(s3["work"], "jobs")) == []
    seen: list[str] = []
    real = merge_mod.record_output_upload

    def recording(job_work: str, output: str, upload: str) -> None:
        real(job_work, output, upload)
        seen.append(upload)

    merge_mod.record_output_upload = recording  # (this test's merge again: recorded, gone)
    try:
        merge_mod.publish(plan)  # (if_exists: overwrite)
    finally:
        merge_mod.record_output_upload = real
    assert seen and segments.recorded_uploads(storage.join(s3["work"], "jobs")) == []


def test_a_retried_merge_that_publishes_ends_its_earlier_attempts_upload(s3):
    """An earlier attempt of the job's merge died after it began its upload (the Lambda
    lost: Step Functions retried it on Lambda.ServiceException), which it had recorded; the
    retry publishes the output: it ends that upload too (no RecordFailure comes to a job
    that succeeds, and status looks only at runs that did not), and its record; never
    another run's upload of the same output, recorded in that run's work or not."""
    from pipeline.steps.common import record_output_upload

    c, plan = s3["client"], _plan(s3["work"], 1)
    key = storage.split_s3(plan.spec.output)[1]
    other_work = storage.join(s3["work"].rstrip("/") + "-another-run", "jobs")
    earlier = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    record_output_upload(plan.work, plan.spec.output, earlier)  # as its first attempt did
    another = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    record_output_upload(storage.join(other_work, "00001"), plan.spec.output, another)
    unrecorded = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    try:
        merge_mod.publish(plan)  # (the retry; if_exists: overwrite)
        assert sorted(u["UploadId"] for u in _uploads(s3)) == sorted([another, unrecorded])
        assert segments.recorded_uploads(storage.join(s3["work"], "jobs")) == []
        assert len(segments.recorded_uploads(other_work)) == 1
    finally:
        storage.delete_prefix(other_work)
        for upload in (earlier, another, unrecorded):
            with contextlib.suppress(Exception):
                c.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
    assert _uploads(s3) == []


def test_a_merge_records_its_upload_before_any_part(s3, monkeypatch):
    """Merge of an output of parts notes its upload in the job's work as it begins it,
    before its first part: a merge killed at any part leaves what RecordFailure ends."""
    plan = _plan(s3["work"], 1)
    key = storage.split_s3(plan.spec.output)[1]
    published = _get(s3, key)  # the fixture's run's output
    seen: list[list[str]] = []

    def part(**_: Any) -> None:
        seen.append(storage.list_prefix(layout.uploads_dir(plan.work)))
        raise RuntimeError("killed at its first part (for this test)")

    client = segments.s3_client()
    client.meta.events.register_first("before-call.s3.UploadPartCopy", part)
    client.meta.events.register_first("before-call.s3.UploadPart", part)
    try:
        with pytest.raises(Exception, match="killed at its first part"):
            merge_mod.publish(plan)
    finally:
        client.meta.events.unregister("before-call.s3.UploadPartCopy", part)
        client.meta.events.unregister("before-call.s3.UploadPart", part)
    [records] = seen[:1]
    [record] = [json.loads(storage.read_bytes(url)) for url in records]
    assert record["output"] == plan.spec.output and record["upload"]
    assert _uploads(s3) == []  # (a merge that is not killed aborts it itself)
    assert not segments.abort_upload(plan.spec.output, record["upload"])  # ended: no error
    storage.delete_prefix(layout.uploads_dir(plan.work))
    assert _get(s3, key) == published  # as it was


def test_a_failed_merge_aborts_its_upload(s3):
    """A segment gone missing fails the copy: the upload is aborted, nothing is published."""
    plan = _plan(s3["work"], 1)
    key = storage.split_s3(plan.spec.output)[1]
    s3["client"].delete_object(Bucket=BUCKET, Key=key)
    victim = storage.split_s3(layout.segment_file(plan.work, 0, "b000002"))[1]
    s3["client"].delete_object(Bucket=BUCKET, Key=victim)
    with pytest.raises(WorkMissingError, match="b000002"):
        merge_mod.merge(MergeEvent(layout.plan_file(plan.work)))
    assert _uploads(s3) == []
    assert "Contents" not in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_a_failed_copy_starts_no_more_parts(s3, monkeypatch):
    """A part's UploadPartCopy fails (its segment is gone): the copies queued behind it are
    not started (with thousands of parts they went on for minutes, past a Lambda's
    timeout, before the upload was aborted), the upload is aborted, nothing is published."""
    source = f"s3://{BUCKET}/copy-src/segment"
    storage.write_bytes(source, os.urandom(5 * MiB))
    # part 1: the header and the first span (uploaded); parts 2-11 and 13-31 copies of
    # the segment, part 12 a copy of one that is gone
    spans = [tiff_layout.Span(source, 0, 5 * MiB) for _ in range(30)]
    spans.insert(10, tiff_layout.Span(f"{source}-gone", 0, 5 * MiB))
    pieces = [tiff_layout.Literal(b"II*\x00"), *spans]
    monkeypatch.setattr(segments, "COPY_THREADS", 2)
    copies: list[int] = []

    def seen(params: dict[str, Any], **_: Any) -> None:
        copies.append(params["PartNumber"])

    client = segments.s3_client()
    client.meta.events.register("before-parameter-build.s3.UploadPartCopy", seen)
    url = f"s3://{BUCKET}/copy-out/out.tif"
    try:
        with pytest.raises(WorkMissingError, match="segment-gone"):
            compose(pieces, url)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.UploadPartCopy", seen)
    assert 12 in copies and len(copies) < 30, copies
    # started after it: at most the two threads' next ones, queued as it failed
    assert max(copies) <= 12 + 2 * 2, copies
    assert _uploads(s3) == [] and not storage.exists(url)


def test_uploaded_parts_go_side_by_side_within_their_memory_bound(s3, monkeypatch):
    """Segments under S3's 5 MiB copy minimum go through the function as uploaded parts:
    several at once (one at a time, a large non-fused output's merge could pass the
    Lambda's timeout), never more than UPLOADS_IN_FLIGHT (their bytes are in memory); the
    output is the bytes of its pieces."""
    source = f"s3://{BUCKET}/upload-src/segment"
    data = os.urandom(3 * MiB)
    storage.write_bytes(source, data)
    pieces = [tiff_layout.Literal(b"II*\x00"),
              *[tiff_layout.Span(source, 0, 3 * MiB) for _ in range(16)]]
    assert not any(p.copy for p in tiff_layout.plan_parts(pieces))  # all uploaded
    monkeypatch.setattr(segments, "UPLOADS_IN_FLIGHT", 3)
    lock, now, most = threading.Lock(), [0], [0]

    def started(**_: Any) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)  # each upload lasts a while (moto answers at once)

    def ended(**_: Any) -> None:
        with lock:
            now[0] -= 1

    client = segments.s3_client()
    client.meta.events.register("before-call.s3.UploadPart", started)
    client.meta.events.register("after-call.s3.UploadPart", ended)
    url = f"s3://{BUCKET}/upload-out/out.tif"
    try:
        size = compose(pieces, url)
    finally:
        client.meta.events.unregister("before-call.s3.UploadPart", started)
        client.meta.events.unregister("after-call.s3.UploadPart", ended)
    assert most[0] == 3, most  # side by side, up to the bound
    assert size == 4 + 16 * 3 * MiB
    assert storage.read_bytes(url) == b"II*\x00" + data * 16
    assert _uploads(s3) == []


def test_a_failed_segment_is_aborted(s3):
    """A unit that fails after uploading parts of its segment leaves no upload open."""
    url = f"s3://{BUCKET}/seg/failed.seg"
    with pytest.raises(RuntimeError), SegmentWriter(url) as writer:
        writer.write(os.urandom(9 * MiB))  # one part is uploaded
        assert len(_uploads(s3)) == 1
        raise RuntimeError("the unit failed")
    assert _uploads(s3) == []
    assert not storage.exists(url)
    with SegmentWriter(url) as writer:
        offsets = [writer.write(b"a" * (6 * MiB)), writer.write(b"b" * (5 * MiB))]
    assert offsets == [0, 6 * MiB] and storage.size(url) == 11 * MiB


def test_a_failed_job_leaves_no_upload_open(s3):
    """The input's last tile is damaged: the unit fails in its last tile row, after writing
    4 of its 5 rows (~14 MB, more than one 8 MiB part of its segment's upload); the job
    fails and no multipart upload is left open."""
    c, tmp = s3["client"], s3["tmp"]
    damaged = tmp / "damaged.tif"
    damaged.write_bytes((tmp / "noise.tif").read_bytes())
    with tifffile.TiffFile(damaged) as tf:
        offset, size = tf.pages[0].dataoffsets[-1], tf.pages[0].databytecounts[-1]
    with open(damaged, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)
    c.upload_file(str(damaged), BUCKET, "in/damaged.tif")
    c.put_object(Bucket=BUCKET, Key="bad.json", Body=json.dumps({
        "defaults": {"tile": 512}, "jobs": [
            {"input": f"s3://{BUCKET}/in/damaged.tif", "output": f"s3://{BUCKET}/out/bad.tif"}]}))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", f"s3://{BUCKET}/bad.json",
                           "--work", f"s3://{BUCKET}/badwork/", "--workers", "2", "--report",
                           str(tmp / "bad.json")], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 1, done.stderr
    [job] = json.loads((tmp / "bad.json").read_text())["jobs"]
    assert job["status"] == "FAILED" and job["error"]["type"] == "CorruptTiffError"
    assert _uploads(s3) == []
    assert "Contents" not in c.list_objects_v2(Bucket=BUCKET, Prefix="out/bad.tif")


def test_a_small_process_job_on_s3_composes_from_memory(s3, monkeypatch):
    """A ProcessJob (a fused job of one unit) whose output is small keeps its segment in
    memory: on S3 it reads and writes no segment or index object and uploads the output (17
    MB of noise: two parts), byte-identical to the output the run composed from its stored
    segment (the run kept its work: ``--keep-work`` stores every segment)."""
    from pipeline.core.constants import KEEP_SEGMENTS_ENV
    from pipeline.core.events import JobPlanEvent
    from pipeline.core.plan import held_output, single_task
    from pipeline.steps.single import process_job

    plan = _plan(s3["work"], list(S3_JOBS).index("fused"))
    assert single_task(plan) and held_output(plan)
    key = storage.split_s3(plan.spec.output)[1]
    composed = _get(s3, key)
    stored = [layout.segment_file(plan.work, 0, "u000000"),
              layout.segment_index_file(plan.work, 0, "u000000")]
    assert all(storage.exists(url) for url in stored)
    for url in stored:  # the held job neither needs them nor writes them
        s3["client"].delete_object(Bucket=BUCKET, Key=storage.split_s3(url)[1])
    s3["client"].delete_object(Bucket=BUCKET, Key=key)
    monkeypatch.delenv(KEEP_SEGMENTS_ENV, raising=False)
    result = process_job(JobPlanEvent(layout.plan_file(plan.work)))
    assert _get(s3, key) == composed
    assert result["output_bytes"] == len(composed) and result["tiles"] == plan.tiles
    assert not any(storage.exists(url) for url in stored)
    assert segments._held == {} and _uploads(s3) == []


def test_a_small_output_is_one_put_object(s3):
    """An output of one uploaded part (a held ProcessJob's small output) is one PutObject:
    no multipart upload to create and complete; what it composes is the same bytes."""
    work = f"s3://{BUCKET}/small/work/jobs/00000"
    segment = f"{work}/out-0000-u000000.seg"
    calls: list[str] = []
    client = storage.s3_client()

    def seen(event_name: str, **_: Any) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    client.meta.events.register("before-call.s3.*", seen)
    try:
        with segments.held(work):
            with SegmentWriter(segment) as writer:
                writer.write(b"tile" * 1000)
            size = compose([tiff_layout.Literal(b"II*\0"), tiff_layout.Span(segment, 0, 4000)],
                           f"s3://{BUCKET}/small/out.tif")
    finally:
        client.meta.events.unregister("before-call.s3.*", seen)
    assert calls == ["PutObject"]
    assert size == 4004 and _get(s3, "small/out.tif") == b"II*\0" + b"tile" * 1000
    head = s3["client"].head_object(Bucket=BUCKET, Key="small/out.tif")
    assert head["ContentType"] == "image/tiff"
    assert segments._held == {} and _uploads(s3) == []


@pytest.mark.parametrize("size", [4000, 12 * MiB])
def test_without_replace_an_s3_output_published_meanwhile_is_left_as_it_is(s3, size):
    """compose(replace=False) (if_exists skip or fail) sends If-None-Match: * with the one
    request that publishes (PutObject for a small output, CompleteMultipartUpload for one of
    server-side copies): where the object exists by then, S3 refuses (412):
    OutputExistsError naming it, the object as it was, the upload aborted. Where none is,
    the output is published as with replace."""
    source = f"s3://{BUCKET}/cond-src/segment"
    data = os.urandom(size)
    storage.write_bytes(source, data)
    pieces = [tiff_layout.Literal(b"II*\x00"), tiff_layout.Span(source, 0, size)]
    url, key = f"s3://{BUCKET}/cond-out/{size}.tif", f"cond-out/{size}.tif"
    calls: list[tuple[str, str | None]] = []

    def seen(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, params.get("headers", {}).get("If-None-Match")))

    client = segments.s3_client()
    client.meta.events.register("before-call.s3.*", seen)
    try:
        assert compose(pieces, url, replace=False) == 4 + size
        publishing = calls[-1]
        s3["client"].put_object(Bucket=BUCKET, Key=key, Body=b"the other writer's output")
        with pytest.raises(OutputExistsError, match=re.escape(f"output {url} exists")):
            compose(pieces, url, replace=False)
    finally:
        client.meta.events.unregister("before-call.s3.*", seen)
    assert publishing == ("PutObject" if size < 5 * MiB else "CompleteMultipartUpload", "*")
    assert _get(s3, key) == b"the other writer's output"
    assert _uploads(s3) == []
    assert compose(pieces, url) == 4 + size  # replace (overwrite): no condition
    assert _get(s3, key) == b"II*\x00" + data


@pytest.mark.parametrize("size", [4000, 12 * MiB])
def test_a_conditional_write_met_by_another_is_a_storage_error(s3, size):
    """S3 answers 409 ConditionalRequestConflict when another conditional write to the same
    key is under way (moto never does: the answer is made here): a StorageError, which the
    state machine retries (the retry then meets the other writer's object, or none); the
    upload aborted, nothing published."""
    from botocore.exceptions import ClientError

    source = f"s3://{BUCKET}/conflict-src/segment"
    storage.write_bytes(source, os.urandom(size))
    pieces = [tiff_layout.Literal(b"II*\x00"), tiff_layout.Span(source, 0, size)]
    url = f"s3://{BUCKET}/conflict-out/{size}.tif"
    operation = "PutObject" if size < 5 * MiB else "CompleteMultipartUpload"

    def conflict(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ConditionalRequestConflict", "Message": "A "
                                     "conflicting operation occurred"},
                           "ResponseMetadata": {"HTTPStatusCode": 409}}, operation)

    client = segments.s3_client()
    client.meta.events.register(f"before-call.s3.{operation}", conflict)
    try:
        with pytest.raises(StorageError, match="another writer was publishing it") as caught:
            compose(pieces, url, replace=False)
    finally:
        client.meta.events.unregister(f"before-call.s3.{operation}", conflict)
    assert type(caught.value) is StorageError  # the name the state machine retries
    assert url in str(caught.value)
    assert _uploads(s3) == [] and not storage.exists(url)


@pytest.mark.parametrize(("operation", "size"), [
    ("PutObject", 4000), ("CreateMultipartUpload", 12 * MiB), ("UploadPartCopy", 12 * MiB),
    ("UploadPart", 12 * MiB), ("CompleteMultipartUpload", 12 * MiB)])
@pytest.mark.parametrize(("code", "status", "retried"), [
    ("SlowDown", 503, True), ("InternalError", 500, True), ("AccessDenied", 403, False)])
def test_an_upload_that_s3_fails_for_now_is_retried(s3, operation, size, code, status,
                                                    retried):
    """An output upload that S3 throttles (503 SlowDown) or fails itself (500), beyond
    botocore's own retries (the answer is made here, to one request): a StorageError,
    which the state machine retries (every segment is there: the retry costs the merge
    alone); one refused (403) stays an OutputNotWritableError. Either way the upload is
    aborted and nothing published. (UploadPart: the output's parts from a held ProcessJob's
    segment, which is not in S3.)"""
    from botocore.exceptions import ClientError

    from pipeline.errors import OutputNotWritableError

    work = f"s3://{BUCKET}/transient/{operation}-{code}/work"
    source = f"{work}/segment"
    data = os.urandom(size)
    with contextlib.ExitStack() as stack:
        if operation == "UploadPart":
            stack.enter_context(segments.held(work))
            with SegmentWriter(source) as writer:
                writer.write(data)
        else:
            storage.write_bytes(source, data)
        pieces = [tiff_layout.Literal(b"II*\x00"), tiff_layout.Span(source, 0, size)]
        url = f"s3://{BUCKET}/transient/{operation}-{code}.tif"

        def fails(**_: Any) -> None:
            raise ClientError({"Error": {"Code": code, "Message": "for this test"},
                               "ResponseMetadata": {"HTTPStatusCode": status}}, operation)

        client = segments.s3_client()
        client.meta.events.register_first(f"before-call.s3.{operation}", fails)
        try:
            with pytest.raises((StorageError, OutputNotWritableError)) as caught:
                compose(pieces, url)
        finally:
            client.meta.events.unregister(f"before-call.s3.{operation}", fails)
    assert type(caught.value) is (StorageError if retried else OutputNotWritableError)
    assert url in str(caught.value) and code in str(caught.value)
    assert _uploads(s3) == [] and not storage.exists(url)


@pytest.mark.parametrize("size", [4000, 12 * MiB])
def test_a_writer_meets_its_own_output_as_its_own(s3, size):
    """compose(replace=False) by the owner that published the object there (an earlier
    attempt of the same step, retried after it published): its size, nothing written, no
    upload left open; by another owner: OutputExistsError, the object as it was."""
    source = f"s3://{BUCKET}/own-src/segment"
    data = os.urandom(size)
    storage.write_bytes(source, data)
    pieces = [tiff_layout.Literal(b"II*\x00"), tiff_layout.Span(source, 0, size)]
    url, key = f"s3://{BUCKET}/own-out/{size}.tif", f"own-out/{size}.tif"
    assert compose(pieces, url, replace=False, owner="job-a") == 4 + size
    head = s3["client"].head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"] == {segments.OWNER_KEY: "job-a"}
    storage.write_bytes(source, os.urandom(size))  # what a retry would write differs
    assert compose(pieces, url, replace=False, owner="job-a") == 4 + size
    with pytest.raises(OutputExistsError, match=re.escape(f"output {url} exists")):
        compose(pieces, url, replace=False, owner="job-b")
    with pytest.raises(OutputExistsError):
        compose(pieces, url, replace=False)
    assert _get(s3, key) == b"II*\x00" + data
    assert s3["client"].head_object(Bucket=BUCKET, Key=key)["ETag"] == head["ETag"]
    assert _uploads(s3) == []


@pytest.mark.parametrize("mode", ["skip", "fail"])
def test_a_merge_retried_after_it_published_succeeds(s3, monkeypatch, mode):
    """Merge (if_exists skip or fail) publishes the output, then writing its result fails
    (S3 SlowDown): the state machine retries it, and the retry finds the output it
    published, its own: the job SUCCEEDED with the output's size, not SKIPPED as if
    another writer had published it (skip), nor failed asking to remove its own good
    output (fail)."""
    from pipeline.steps import held_work

    plan = _plan(s3["work"], list(S3_JOBS).index("pyramid_batches"))
    url = f"s3://{BUCKET}/retried/{mode}.tif"
    plan = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, output=url,
                                                               if_exists=mode))
    result_url = layout.result_file(plan.work)
    kept = storage.read_bytes(result_url)
    save, failed = held_work.save_result, []

    def flaky(url_: str, result: dict[str, Any]) -> None:
        if not failed:
            failed.append(url_)
            raise StorageError(f"{url_}: cannot write: SlowDown (transient)")
        save(url_, result)

    monkeypatch.setattr(held_work, "save_result", flaky)
    try:
        with pytest.raises(StorageError, match="SlowDown"):
            merge_mod.publish(plan)
        published = _get(s3, f"retried/{mode}.tif")
        answer = merge_mod.publish(plan)  # the retry
        result = held_work.load_result(result_url)
    finally:
        storage.write_bytes(result_url, kept)
        storage.delete_prefix(layout.uploads_dir(plan.work))
    assert "skipped" not in answer and answer["output_bytes"] == len(published)
    assert result["status"] == "SUCCEEDED" and result["output_bytes"] == len(published)
    assert _get(s3, f"retried/{mode}.tif") == published
    assert _uploads(s3) == []


@pytest.mark.parametrize("mode", ["skip", "fail"])
def test_merge_leaves_an_output_published_since_plan_job(s3, mode):
    """Merge of a job whose if_exists is skip or fail, its output published by another
    writer after PlanJob looked: fail raises OutputExistsError saying so; skip writes the
    job's result as SKIPPED; the object is left as it is and no upload stays open."""
    from pipeline.steps import held_work

    plan = _plan(s3["work"], list(S3_JOBS).index("pyramid_batches"))
    url = f"s3://{BUCKET}/race/{mode}.tif"
    plan = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, output=url,
                                                               if_exists=mode))
    s3["client"].put_object(Bucket=BUCKET, Key=f"race/{mode}.tif", Body=b"theirs")
    result_url = layout.result_file(plan.work)
    kept = storage.read_bytes(result_url)
    try:
        if mode == "fail":
            with pytest.raises(OutputExistsError, match=r"appeared while the job ran "
                               r"\(if_exists: fail\)"):
                merge_mod.publish(plan)
        else:
            assert merge_mod.publish(plan)["skipped"] is True
            result = held_work.load_result(result_url)
            assert result["status"] == "SKIPPED" and result["output"] == url
            assert result["message"].startswith("the output appeared while the job ran")
    finally:
        storage.write_bytes(result_url, kept)
    assert _get(s3, f"race/{mode}.tif") == b"theirs"
    assert _uploads(s3) == []


@pytest.mark.parametrize("size", [4000, 12 * MiB])
def test_a_store_without_conditional_writes_is_checked_before_the_write(s3, size):
    """An S3-compatible store that answers 501 NotImplemented to If-None-Match (moto does
    not: the answer is made here, to conditional requests only): the output is looked for,
    then written without the condition; one that exists is left as it is
    (OutputExistsError), the upload aborted."""
    from botocore.exceptions import ClientError

    source = f"s3://{BUCKET}/plain-src/segment"
    data = os.urandom(size)
    storage.write_bytes(source, data)
    pieces = [tiff_layout.Literal(b"II*\x00"), tiff_layout.Span(source, 0, size)]
    url, key = f"s3://{BUCKET}/plain-out/{size}.tif", f"plain-out/{size}.tif"
    operation = "PutObject" if size < 5 * MiB else "CompleteMultipartUpload"
    refused: list[str] = []

    def no_conditions(params: dict[str, Any], **_: Any) -> None:
        if "If-None-Match" in params.get("headers", {}):
            refused.append(operation)
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "A header you "
                                         "provided implies functionality that is not "
                                         "implemented"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, operation)

    client = segments.s3_client()
    client.meta.events.register(f"before-call.s3.{operation}", no_conditions)
    try:
        assert compose(pieces, url, replace=False) == 4 + size
        assert _get(s3, key) == b"II*\x00" + data
        s3["client"].put_object(Bucket=BUCKET, Key=key, Body=b"the other writer's output")
        with pytest.raises(OutputExistsError, match=re.escape(f"output {url} exists")):
            compose(pieces, url, replace=False)
    finally:
        client.meta.events.unregister(f"before-call.s3.{operation}", no_conditions)
    assert refused == [operation, operation]
    assert _get(s3, key) == b"the other writer's output"
    assert _uploads(s3) == []
