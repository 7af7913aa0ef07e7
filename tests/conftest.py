"""What several test files share: the test tiers, paths (``ROOT``, ``LIBTIFF_CORPUS``), a page
reader (``from conftest import read_pages``), a moto server (the ``moto_server`` fixture,
with :func:`use_moto_server`) and moto's bucket policies checked without their conditions
(:func:`bucket_conditions_unchecked`).

Tiers (markers registered in pyproject.toml; docs/development.md): every test is one of
``unit`` (pure logic, files, moto in this process), ``engine`` (runs the local engine: a
state machine on moto with worker processes) or ``docker`` (builds and runs the Lambda
images); ``slow`` is on top of those. A test file is given its tier here (a test may say its
own with a marker); a file not listed is ``unit``: add a file that runs the engine to ENGINE
(tests/test_tiers.py fails on a ``unit`` file that calls ``run_local``, ``LocalEngine(`` or a
``tiffpipe run``/``demo``/``scan`` command, unless that test carries its own marker).
``make test-fast`` runs ``-m "not docker and not slow"``.
"""

from __future__ import annotations

import io
import os
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

TIERS = ("unit", "engine", "docker")
#: test files (module names) whose tests run the local engine
ENGINE = {
    "test_bad_input", "test_bands", "test_bench_quick", "test_canny_tree", "test_cli",
    "test_console", "test_corpus", "test_custom_ops", "test_engine", "test_engine_direct",
    "test_engine_startup", "test_estimate", "test_fused", "test_global_ops", "test_held_work",
    "test_bilevel", "test_bilevel_auto", "test_estimate_bilevel", "test_bigtiff",
    "test_interrupt", "test_level_units", "test_many_jobs", "test_metadata",
    "test_odd_inputs", "test_preview", "test_pyramid", "test_s3_merge", "test_s3_pipeline",
    "test_scan",
    "test_ojpeg", "test_single_task", "test_start_status", "test_thumbs",
    "test_work_location", "test_cmyk", "test_derived_pages",
    "test_output_files", "test_exhaustion", "test_ome_channels", "test_batch_runs",
    "test_gis_readers", "test_convert",
    "test_python_api",
    "test_oncall", "test_open_uploads", "test_bucket_policy", "test_geometry_runs",
    "test_pyramid_layout", "test_slide_readers", "test_case_fold", "test_masks", "test_cog",
    "test_xmp", "test_nodata_filters", "test_masked_stats", "test_resample",
    "test_bilevel_hints",
    "test_gis_colormap",
}
DOCKER = {"test_images"}
#: ``slow``: whole files whose tests share whole runs (or images, or a benchmark), and the
#: longest single tests (several seconds each: end-to-end runs through the CLI, moto
#: servers, subprocesses); measured with ``pytest --durations=0`` (docs/development.md)
SLOW_FILES = {"test_bad_input", "test_bands", "test_bench_quick", "test_corpus", "test_images",
              "test_metadata", "test_odd_inputs", "test_s3_pipeline", "test_start_status"}
SLOW_TESTS = {
    "test_cli::test_demo",
    "test_deploy::test_the_script_runs_against_an_endpoint",
    "test_engine::test_what_a_large_map_holds_is_bounded",
    # (a custom op sleeps 3 s past its Task's TimeoutSeconds)
    "test_engine_direct::test_a_task_past_its_timeout_that_publishes_its_output_is_reported_so",
    "test_engine_startup::test_an_interpreter_that_needs_more_of_batch_is_left_to_moto",
    "test_engine_startup::test_nothing_is_done_when_batch_or_the_interpreter_is_imported_already",
    ("test_engine_startup::"
     "test_the_interpreter_is_imported_without_batch_and_batch_still_works_later"),
    "test_fused::test_the_engine_takes_the_fused_branch_per_job",
    # (waits for the state machine's TimeoutSeconds, 20 s)
    "test_open_uploads::test_a_run_timed_out_by_step_functions_leaves_no_upload_open",
    "test_global_ops::test_run_on_the_embedded_engine",
    "test_preview::test_run_writes_a_contact_sheet_next_to_its_report",
    "test_preview::test_short_strips_are_read_strided",
    "test_preview::test_thumbnail_of_a_big_page_holds_one_tile_at_a_time",
    "test_pyramid::test_threads_build_the_same_levels",
    "test_scan::test_run_on_a_local_folder_processes_only_new_files_then_nothing",
    "test_sample_types::test_each_op_on_each_type",
    "test_sample_types::test_every_type_and_layout_is_exact",
    "test_scan::test_run_on_s3_via_a_moto_server",
    "test_storage::test_list_and_delete_s3_paginates",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if not any(item.get_closest_marker(t) for t in TIERS):
            tier = "docker" if module in DOCKER else "engine" if module in ENGINE else "unit"
            item.add_marker(tier)
        name = f"{module}::{getattr(item, 'originalname', item.name)}"
        if (module in SLOW_FILES or name in SLOW_TESTS) and not item.get_closest_marker("slow"):
            item.add_marker("slow")


# --- Ctrl-C ---------------------------------------------------------------------------------

# A test run started with SIGINT ignored (a background job of a shell without job control,
# as some CI runners start their scripts) passes that on to every child it starts: an
# ignored signal stays ignored across exec, so the Ctrl-C tests' SIGINT would reach no one
# (tests/test_interrupt.py, tests/test_python_api.py). Handled here, the tests and their
# children get Python's own handling (a handled signal is reset to the default on exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# --- paths ----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
#: libtiff's test images (test/images in its source tree), vendored in the repository
#: (tests/data/libtiff/README.md: what they cover, their licence)
LIBTIFF_CORPUS = ROOT / "tests" / "data" / "libtiff"


# --- benchmark scripts ----------------------------------------------------------------------


def run_bench_script(script: str, *args: str, timeout: int = 540) -> str:
    """Run ``bench/<script>`` with this Python; it must exit 0 (else its stderr's end).
    Returns its stdout."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# --- commands whose reader goes -------------------------------------------------------------

#: a Python's stdout on a pipe as the interpreter sets it (block-buffered: a write fails only
#: at a flush, the exit's for a short output) and unbuffered (PYTHONUNBUFFERED: each write
#: fails); tests give both, whatever this environment sets
BUFFERING = {"buffered": {}, "unbuffered": {"PYTHONUNBUFFERED": "1"}}


def command_env(buffering: str, **extra: str) -> dict[str, str]:
    """This environment without its AWS_* variables and PYTHONUNBUFFERED, then
    ``BUFFERING[buffering]`` and ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k != "PYTHONUNBUFFERED"}
    return env | BUFFERING[buffering] | extra


def run_without_reader(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``command | head -0``: its stdout a pipe whose reader has gone before it starts, so
    that every write to it fails (EPIPE), whenever it comes. (exit code, stderr)."""
    import subprocess

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(command, stdout=write, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env, text=True, timeout=90,
                              check=False)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


# --- TIFF pages -----------------------------------------------------------------------------


def read_pages(path: str | Path) -> list[np.ndarray]:
    """Every page of a TIFF file as arrays, read by tifffile (not by tiffpipe's reader), up
    to the end of its chain of pages or a loop back to a page read (:func:`chain_pages`)."""
    with tifffile.TiffFile(path) as tf:
        return [page.asarray() for page in chain_pages(tf)]


def chain_pages(tf: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """The pages of the main chain up to its end or a loop back to a page read, as libtiff
    and Pillow count them (tifffile's ``len(tf.pages)`` ends a loop at its 100th offset, cut
    at that offset's first occurrence: a 3-page file looping back to page 0 is 1 page)."""
    fh, tiff = tf.filehandle, tf.tiff
    offsets: list[int] = []
    offset = int(tf.pages.first.offset)
    try:
        while offset and offset not in offsets and offset < fh.size:
            fh.seek(offset)
            (tags,) = struct.unpack(tiff.tagnoformat, fh.read(tiff.tagnosize))
            if tags > 4096:  # no page there (tifffile's limit)
                break
            offsets.append(offset)
            fh.seek(offset + tiff.tagnosize + tags * tiff.tagsize)
            (offset,) = struct.unpack(tiff.offsetformat, fh.read(tiff.offsetsize))
    except struct.error:  # a file cut short: the pages before
        pass
    pages = []
    for index, at in enumerate(offsets):
        fh.seek(at)
        pages.append(tifffile.TiffPage(tf, index=index))
    return pages


def pyramid_levels(path: str) -> list[list[tuple[np.ndarray, dict[int, Any]]]]:
    """(pixels, tags but where the tiles are: TileOffsets, SubIFDs) of each page of a file
    and of its pyramid levels, as tifffile reads them: SubIFDs of the page, or the pages
    after it marked reduced-resolution (``output_options.pyramid_layout`` "pages")."""
    out: list[list[tuple[np.ndarray, dict[int, Any]]]] = []
    with tifffile.TiffFile(path) as tf:
        for page in tf.pages:
            read = (page.asarray(), {t.code: t.value for t in page.tags.values()
                                     if t.code not in (324, 330)})
            if int(page.subfiletype) & 1:
                out[-1].append(read)
                continue
            out.append([read])
            for k in range(len(page.subifds or ())):
                level = tifffile.TiffPages(page)[k]
                out[-1].append((level.asarray(), {t.code: t.value for t in level.tags.values()
                                                  if t.code != 324}))
    return out


#: the convert a JPEG output of a uint16 page whose header says no bit depth is told to end
#: its ops with (pipeline.adapters.tile_codec._to_uint8)
UINT16_TO_UINT8 = (
    '{"op": "convert", "dtype": "uint8", "in_range": [low, high]} (low and high: the range the '
    "page's values use, a 12-bit camera's [0, 4095]; without \"in_range\" a convert maps "
    "uint16's whole range, 0..65535, onto 0..255, and 12-bit data ends at 16 or less), or put "
    '{"op": "percentile_stretch"} before a plain {"op": "convert", "dtype": "uint8"} (it '
    "spreads each page's own 1st to 99th percentile over 0..65535; docs/manifest-and-ops.md, "
    '"Convert another sample type")')


def write_ome_pyramid(path: Path, planes: np.ndarray, tile: int = 64) -> None:
    """An OME-TIFF pyramid as QuPath, bfconvert and tiffpipe's ``pyramid`` write one: the
    planes (CYX, gray) as pages, each with its levels by 2 and 4 as its SubIFDs."""
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(planes, subifds=2, tile=(tile, tile), photometric="minisblack",
                metadata={"axes": "CYX"})
        for f in (2, 4):
            w.write(planes[:, ::f, ::f], subfiletype=1, tile=(tile, tile),
                    photometric="minisblack")


def one_bit_pages_state_their_bits(path: Any) -> int:
    """Check that every page of the TIFF ``path`` (or an ``io.BytesIO``; SubIFDs too) has its
    IFD entries in ascending order of code, and that every 1-bit page states BitsPerSample 1
    (tag 258, SHORT, count 1) and is read by libtiff (imagecodecs' ``tiff_decode``) as
    tifffile reads it; return how many 1-bit pages there are."""
    import imagecodecs

    data = path.getvalue() if hasattr(path, "getvalue") else Path(path).read_bytes()
    ones = 0
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        tiff = tf.tiff
        main = list(tf.pages)
        subs = [tifffile.TiffPages(page)[k] for page in main
                for k in range(len(page.subifds or ()))]
        for page in main + subs:
            (n,) = struct.unpack_from(tiff.tagnoformat, data, page.offset)
            codes = [struct.unpack_from(tf.byteorder + "H", data,
                                        page.offset + tiff.tagnosize + i * tiff.tagsize)[0]
                     for i in range(n)]
            assert codes == sorted(codes) and len(set(codes)) == n, (page.index, codes)
            if page.bitspersample != 1:
                continue
            ones += 1
            tag = page.tags.get(258)
            assert tag is not None, f"page {page.index} of {path}: no BitsPerSample"
            assert (tag.dtype, tag.count, tag.value) == (3, 1, 1)
            assert page in main  # (libtiff reads the main chain by index)
            bits = imagecodecs.tiff_decode(data, index=main.index(page))
            np.testing.assert_array_equal(np.asarray(bits, bool), page.asarray())
    return ones


def tiff_pages(file: Any) -> list[tuple[int, dict[int, Any], list[bytes]]]:
    """Each page of the TIFF ``file`` (a path or a file object; SubIFDs after the main chain):
    its bits per sample, its tags but where its data and SubIFDs are (code -> type, count,
    value), its tiles' (strips') bytes: what a page is, wherever it is in the file."""
    out = []
    if hasattr(file, "seek"):
        file.seek(0)  # (tifffile reads an open file from where it is)
    with tifffile.TiffFile(file) as tf:
        fh = tf.filehandle
        pages = list(tf.pages)
        for page in pages + [tifffile.TiffPages(p)[k] for p in pages
                             for k in range(len(p.subifds or ()))]:
            tags = {t.code: (t.dtype, t.count, np.asarray(t.value).tolist())
                    for t in page.tags if t.code not in (273, 324, 330)}
            tiles = []
            for offset, size in zip(page.dataoffsets, page.databytecounts, strict=True):
                fh.seek(offset)
                tiles.append(fh.read(size))
            out.append((page.bitspersample, tags, tiles))
    return out


def gdal_masked(path: str | Path, pixels: np.ndarray, mask: np.ndarray | None,
                block: int | None = 256, append: bool = False) -> None:
    """A GeoTIFF whose valid-data mask GDAL (rasterio, in the dev extra) writes itself, as an
    internal mask (``GDAL_TIFF_INTERNAL_MASK``: the 1-bit page after the image): ``pixels``
    (h, w) or (h, w, bands), ``mask`` (h, w) bool, valid where True (None: no mask);
    deflate, tiled in ``block`` px tiles, or (None) in GDAL's strips, the mask as the image.
    ``append``: the page (and its mask) added after those of the file at ``path`` (GDAL's
    ``APPEND_SUBDATASET``), as GDAL writes a multi-page file."""
    import rasterio
    from rasterio.env import Env
    from rasterio.transform import Affine

    bands = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": bands.shape[0], "width": bands.shape[1],
        "count": bands.shape[2], "dtype": bands.dtype.name, "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500_000, 0, -10, 4_000_000), "compress": "deflate"}
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if append:
        profile["APPEND_SUBDATASET"] = "YES"
    with Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        ds.write(np.moveaxis(bands, -1, 0))
        if mask is not None:
            ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))


def run_in_units(manifest: Path, unit_pixels: int, *args: str,
                 check: bool = True) -> tuple[dict[str, Any], str]:
    """``tiffpipe run`` of ``manifest`` in-process (``args``: more options), each job run as
    a Map of units of ``unit_pixels`` pixels (fused units and split units alike), not as a
    single task: a page's tiles meet in several units and batches. Asserts it succeeded
    (``check`` False: the tests read each job's status in the report); returns the run
    report and what it wrote to stderr."""
    import contextlib
    import json

    from pipeline import cli
    from pipeline.core import plan as plan_mod

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(err):
        mp.setattr(plan_mod, "SINGLE_TASK_JOBS", False)
        mp.setattr(plan_mod, "FUSED_UNIT_PIXELS", unit_pixels)
        mp.setattr(plan_mod, "SPLIT_UNIT_PIXELS", unit_pixels)
        code = cli.main(["run", str(manifest), *args])
    report = json.loads(manifest.with_suffix(".report.json").read_text())
    assert code == 0 or not check, (err.getvalue(), report)
    return report, err.getvalue()


def run_named_jobs(root: Path, jobs: dict[str, dict[str, Any]], defaults: dict[str, Any],
                   unit_pixels: int, *args: str) -> dict[str, dict[str, Any]]:
    """:func:`run_in_units` of a manifest ``root / "m.json"`` of ``jobs`` (by name, each
    writing ``root / "out" / f"{name}.tif"``) and ``defaults``: each job's report entry by
    its name."""
    import json

    manifest = root / "m.json"
    manifest.write_text(json.dumps({
        "defaults": defaults,
        "jobs": [{**job, "output": str(root / "out" / f"{name}.tif")}
                 for name, job in jobs.items()]}))
    report, _ = run_in_units(manifest, unit_pixels, *args)
    return dict(zip(jobs, report["jobs"], strict=True))


def gdal_average(path: str | Path, f: int) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's average resampling of a file's pixels (bands last) by ``f`` (``rasterio``'s
    ``read(out_shape=...)``, as ``gdal_translate -r average``: its mask or no-data value
    left out), over the part a ``downsample`` keeps (the rows and columns past the last
    whole block dropped), and its mask there (True: valid)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        h, w = ds.height // f, ds.width // f
        window = Window(0, 0, w * f, h * f)
        pixels = ds.read(window=window, out_shape=(ds.count, h, w),
                         resampling=Resampling.average)
        return np.moveaxis(pixels, 0, -1), ds.read_masks(1, window=window) > 0


# --- moto in this process -------------------------------------------------------------------


@contextmanager
def moto_s3(mp: pytest.MonkeyPatch, bucket: str) -> Iterator[Any]:
    """moto's S3 in this process (its own tests' steps only: no worker process reaches it)
    with one bucket, test credentials and no endpoint from the environment; tiffpipe's S3
    client is made inside it. Yields a plain boto3 client for setup and checks."""
    import boto3
    from moto import mock_aws

    from pipeline.adapters import storage

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_SESSION_TOKEN", "testing")
    mp.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    with mock_aws():
        mp.setattr(storage, "_client", None)  # a client made inside this mock
        client = boto3.client("s3", region_name=TEST_REGION)
        client.create_bucket(Bucket=bucket)
        yield client


def without_credentials(mp: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS credentials anywhere boto3 looks (the variables unset, the shared files a
    path with nothing there, no instance metadata), as on a machine never given any;
    tiffpipe's S3 client made again, and no output probe that passed with the credentials
    before remembered (:data:`~pipeline.adapters.storage.WRITABLE_FOR_S`)."""
    from pipeline.adapters import storage

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    mp.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setattr(storage, "_client", None)
    mp.setattr(storage, "_writable", {})


# --- a moto server --------------------------------------------------------------------------
#
# For tests whose worker processes (or Docker containers) must reach S3: moto's in-process
# mock_aws reaches no other process, a server on 127.0.0.1 does (AWS_ENDPOINT_URL).

TEST_REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on 127.0.0.1 (a free port) for the test file; its endpoint URL.
    moto's server extra (flask, flask-cors) is in the test lock: without it the tests fail."""
    from moto.server import ThreadedMotoServer  # imported here: flask only for these tests

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_moto_server(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point this process and the processes it starts at the moto server ``endpoint``, with
    test credentials, whatever AWS_* variables the environment had; tiffpipe's cached S3
    client is dropped so the next one is made for the server."""
    from pipeline.adapters import storage

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        mp.delenv(var)
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    mp.setattr(storage, "_client", None)


def bucket_conditions_unchecked(mp: pytest.MonkeyPatch) -> None:
    """moto applies a bucket policy's statement whatever its Condition
    (docs/moto-bugs/bucket_policy_condition_ignored.py), so the HTTPS-only Deny deploy.py
    puts in the stack bucket's policy would refuse every request of the test, HTTPS or not.
    Until ``mp`` undoes it, moto checks a bucket's statements without a Condition only (a
    bucket policy of those alone is checked as before); tests/test_bucket_policy.py checks
    the conditional ones against the requests a run makes."""
    import json

    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(self: Any, action: str, resource: str) -> Any:
        doc = json.loads(self.policy) if self.policy else {}
        statements = doc.get("Statement", [])
        kept = [s for s in ([statements] if isinstance(statements, dict) else statements)
                if "Condition" not in s]
        if not kept:
            return PermissionResult.NEUTRAL
        return IAMPolicy(json.dumps({**doc, "Statement": kept})).is_action_permitted(
            action, resource)

    mp.setattr(FakeBucket, "get_permission", get_permission)


@contextmanager
def small_file_system(folder: Path, size: str = "64k") -> Iterator[Path]:
    """A real file system of ``size`` mounted at ``folder`` (a tmpfs: writes past it fail
    with ENOSPC; remount it ``ro`` for EROFS), unmounted after. Skips the test where this
    process may not mount one (not root, or no CAP_SYS_ADMIN)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], check=False, capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


@contextmanager
def moto_keeps_versions_as_aws() -> Iterator[None]:
    """Two things AWS does that the versioned deploys rely on and moto (5.2) does not:
    Lambda never numbers a new version with a deleted one's number (moto numbers it
    ``len(versions) + 1``: after a version is deleted, the next one takes the newest's
    number again), and ``DescribeStateMachineForExecution`` answers the definition the
    execution started with (moto answers the state machine's current one). With this,
    moto's Lambda numbers as AWS does, and its Step Functions (either backend) keeps each
    execution's definition as it started."""
    from moto.awslambda.models import LambdaStorage
    from moto.core.responses import ActionResult
    from moto.stepfunctions.models import StateMachine
    from moto.stepfunctions.responses import StepFunctionResponse

    publish, start = LambdaStorage.publish_version, StateMachine.start_execution
    describe = StepFunctionResponse.describe_state_machine_for_execution

    def publish_version(self: Any, name_or_arn: str, description: str = "") -> Any:
        name = self.get_function_by_name_or_arn_forbid_qualifier(name_or_arn).function_name
        before = list(self._functions[name]["versions"])
        made = publish(self, name_or_arn, description)
        if made is None or any(v is made for v in before):
            return made  # nothing changed: the newest version, as AWS answers
        highest = self.__dict__.setdefault("_highest_version", {})
        number = max([highest.get(name, 0), *(int(v.version) for v in before)]) + 1
        highest[name] = number
        if int(made.version) != number:
            wrong = made.function_arn
            made.set_version(number)
            self._arns[made.function_arn] = made
            same = next((v for v in before if v.function_arn == wrong), None)
            if same is not None:  # (moto put this one's ARN on the new version)
                self._arns[wrong] = same
        return made

    def start_execution(self: Any, *args: Any, **kwargs: Any) -> Any:
        execution = start(self, *args, **kwargs)
        execution.started_on = self.definition
        return execution

    def describe_for_execution(self: Any) -> Any:
        arn = self._get_param("executionArn")
        backend = self.stepfunction_backend
        machine = backend.describe_state_machine_for_execution(arn)
        execution = next(e for e in machine.executions if e.execution_arn == arn)
        answer = describe(self).result
        snapshot = getattr(getattr(execution, "state_machine", None), "definition", None)
        return ActionResult({**answer, "definition": getattr(execution, "started_on", None)
                             or snapshot or answer["definition"]})

    LambdaStorage.publish_version = publish_version  # type: ignore[method-assign]
    StateMachine.start_execution = start_execution  # type: ignore[method-assign]
    StepFunctionResponse.describe_state_machine_for_execution = (  # type: ignore[method-assign]
        describe_for_execution)
    try:
        yield
    finally:
        LambdaStorage.publish_version = publish  # type: ignore[method-assign]
        StateMachine.start_execution = start  # type: ignore[method-assign]
        StepFunctionResponse.describe_state_machine_for_execution = (  # type: ignore[method-assign]
            describe)


def cog_layout_problems(path: str | Path) -> list[str]:
    """What breaks GDAL's Cloud Optimized GeoTIFF layout in the TIFF at ``path``, read from
    its bytes: the checks of GDAL's ``validate_cloud_optimized_geotiff.py``
    (swig/python/gdal-utils/osgeo_utils/samples/ in GDAL's sources) for a file without
    GDAL's ghost header, plus the row-major order that header declares. The main IFD at byte
    8 (16 in a BigTIFF); every IFD (image, overviews, masks) in chain order and before any
    tile; overviews by decreasing size; the image's and overviews' first tiles from the
    smallest overview to the image; each IFD's tiles at increasing offsets, row-major."""
    problems = []
    with tifffile.TiffFile(path) as tf:
        pages = list(tf.pages)
        head = 16 if tf.is_bigtiff else 8
        if pages[0].offset != head:
            problems.append(f"the main IFD is at byte {pages[0].offset}, not {head}")
        ifds = [page.offset for page in pages]
        if ifds != sorted(ifds):
            problems.append(f"the IFDs are not in chain order: {ifds}")
        firsts = [min(o for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)
                      if n) for page in pages]
        if max(ifds) > min(firsts):
            problems.append(f"an IFD (at {max(ifds)}) comes after tile data (at {min(firsts)})")
        images = [(page.shape[:2], first) for page, first in zip(pages, firsts, strict=True)
                  if not page.subfiletype & 4]  # the image and its overviews, not masks
        for i in range(1, len(images)):
            if (images[i][0][0] > images[i - 1][0][0] or images[i][0][1] > images[i - 1][0][1]):
                problems.append(f"overview {i - 1} is larger than the one before it")
            if images[i][1] > images[i - 1][1]:
                problems.append(f"the tiles of overview {i - 1} come after those of the "
                                f"{'image' if i == 1 else f'overview {i - 2}'}")
        for n, page in enumerate(pages):
            offsets = list(page.dataoffsets)
            if offsets != sorted(offsets):
                problems.append(f"IFD {n}'s tiles are not in row-major order")
    return problems


def mixed_book(path: Path, text: Path, plate: bool = True) -> list[np.ndarray]:
    """A scanned book as archives hold one: a 1-bit text page, the first page of ``text``
    (a real fax page: its strips copied as they are, CCITT G4 or other, its photometric
    kept), then an 8-bit gray LZW page and an RGB plate (zstd; not with ``plate`` false);
    returns the pages' pixels as tifffile reads them (the text page's: bool, True where its
    bit is 1)."""
    rng = np.random.default_rng(5)
    gray = (np.add.outer(np.arange(300), np.arange(260)) % 251).astype(np.uint8)
    colour = rng.integers(0, 256, (200, 180, 3), np.uint8)
    with tifffile.TiffFile(text) as tf:
        page = tf.pages[0]
        strips = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            tf.filehandle.seek(offset)
            strips.append(tf.filehandle.read(count))
        bits, codec = page.asarray(), int(page.compression)
        kind, rows = page.photometric, page.rowsperstrip
    with tifffile.TiffWriter(path) as tw:
        # (tifffile encodes no CCITT: the strips go in as deflate's, the tag is set after)
        tw.write(iter(strips), shape=bits.shape, dtype=bool, photometric=kind,
                 rowsperstrip=rows, compression=None if codec == 1 else "zlib")
        tw.write(gray, compression="lzw", photometric="minisblack")
        if plate:
            tw.write(colour, compression="zstd", photometric="rgb")
    if codec not in (1, 8):
        with tifffile.TiffFile(path, mode="r+b") as tf:
            tf.pages[0].tags["Compression"].overwrite(codec)
    with tifffile.TiffFile(path) as tf:
        assert int(tf.pages[0].compression) == codec and tf.pages[0].bitspersample == 1
        assert np.array_equal(tf.pages[0].asarray(), bits)
    return [bits, gray, colour] if plate else [bits, gray]


# --- the blurs of the valid samples alone (pages with no-data or a mask) -------------------


def gauss(sigma: float, dtype: str) -> np.ndarray:
    """OpenCV's Gaussian kernel for GaussianBlur(img, (0, 0), sigma), written out: size
    round(sigma * (3 for uint8, else 4) * 2 + 1) | 1, weights exp(-i^2 / 2 sigma^2) summing
    to 1."""
    k = round(sigma * (3 if dtype == "uint8" else 4) * 2 + 1) | 1
    i = np.arange(k) - (k - 1) / 2
    w = np.exp(-i * i / (2 * sigma * sigma))
    return w / w.sum()


def smooth(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The separable convolution of a 2-D float64 array by ``w`` along both axes, the border
    reflected without repeating its edge (OpenCV's default, numpy's ``reflect``)."""
    r = len(w) // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(a, pad, mode="reflect")
        n = a.shape[axis]
        a = sum(w[t] * np.take(p, range(t, t + n), axis=axis) for t in range(len(w)))
    return a


def whole_window_valid(valid: np.ndarray, k: int) -> np.ndarray:
    """Samples whose k x k window (clipped at the border) holds valid samples only."""
    r = k // 2
    padded = np.pad(valid, r, constant_values=True)
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k)).all(axis=(-2, -1))


def reference_blur(page: np.ndarray, sigma: float, valid: np.ndarray) -> np.ndarray:
    """The blur of the valid samples alone on the whole page, band by band, in float64:
    ``sum(w v x) / sum(w v)``; OpenCV's own blur of the page where a sample's whole window is
    valid (bit for bit as before); integers rounded half to even and clipped."""
    import cv2

    w = gauss(sigma, page.dtype.name)
    planes = page.reshape(*page.shape[:2], -1)
    oks = valid.reshape(planes.shape)
    out = np.empty(planes.shape)
    for c in range(planes.shape[2]):
        x, ok = planes[:, :, c].astype(np.float64), oks[:, :, c]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, :, c] = smooth(np.where(ok, x, 0.0), w) / smooth(ok.astype(np.float64), w)
    out = out.reshape(page.shape)
    if page.dtype.kind in "ui":
        info = np.iinfo(page.dtype)
        out = np.clip(np.rint(np.nan_to_num(out)), info.min, info.max)  # (NaN: left out)
    out = out.astype(page.dtype)
    opencv = cv2.GaussianBlur(page, (0, 0), sigma)
    full = np.stack([whole_window_valid(oks[:, :, c], len(w)) for c in range(oks.shape[2])],
                    -1).reshape(page.shape)
    return np.where(full, opencv, out)


def masked_blur(page: np.ndarray, sigma: float, valid: np.ndarray) -> np.ndarray:
    """What ``gaussian_blur`` makes of a page whose pixels ``valid`` (h, w) marks (its mask):
    :func:`reference_blur` of the valid pixels, the masked-out ones as they were."""
    samples = np.broadcast_to(valid.reshape(valid.shape + (1,) * (page.ndim - 2)), page.shape)
    return np.where(samples, reference_blur(page, sigma, samples), page)
