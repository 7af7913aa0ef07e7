"""The Lambda images for real: built, run, invoked through the Lambda Runtime API, pushed.

A real Docker engine (tests/docker_env.py starts one, as root) builds the three images of
images/ on a stand-in for the AWS base (none can be pulled here), for this machine's
platform. Each image then runs as a Lambda execution environment would (read-only root, a
512 MB /tmp, a non-root user) and its Runtime Interface Client takes real events from a
Runtime API served by the test: the whole pipeline, action by action, on a real TIFF, on
local files and on S3 (a moto server), and the output's pixels are checked against OpenCV
on the whole page. Then the images are pushed to a real registry (Debian's docker-registry)
by deploy's own build-and-push code, and pulled back by digest.

These tests skip, with the reason, only where no Docker engine can be started (not root,
no apt-get to install docker.io, dockerd refuses to start); with TIFFPIPE_REQUIRE_DOCKER=1
(.ci/run sets it) they fail instead.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import docker_env
import numpy as np
import pytest
import tifffile
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from pipeline.aws.images import PLATFORMS
from pipeline.engine import workers
from pipeline.sample import sample_tile

pytestmark = pytest.mark.timeout(3600)

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("split", "process", "merge")
SIGMA = 1.5
OPS = [{"op": "gaussian_blur", "sigma": SIGMA}, {"op": "invert"}]
BUCKET = "tiffpipe-images"


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip().removesuffix("\\").strip()
        if line and not line.startswith("--hash="):
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", f"{path}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


COMMON = _lock(ROOT / "requirements/images-common.txt")
PROCESS = _lock(ROOT / "images/process/requirements.txt")


# --- the locks and the Dockerfiles, without Docker -----------------------------------------


@pytest.mark.parametrize("pins", [COMMON, {**COMMON, **PROCESS}], ids=["common", "process"])
def test_lock_pins_every_runtime_dependency(pins):
    """The images install their lock with --no-deps: it must be closed under dependencies."""
    for python in ("3.11", "3.12"):  # the stand-in's and the AWS base's
        env = {"python_version": python, "sys_platform": "linux", "extra": ""}
        for name, version in pins.items():
            dist = md.distribution(name)
            if dist.version != version:
                continue  # this venv has another version: its metadata would not tell
            for text in dist.requires or []:
                req = Requirement(text)
                if req.marker and not Marker(str(req.marker)).evaluate(env):
                    continue
                dep = canonicalize_name(req.name)
                assert dep in pins, f"{name} {version} needs {req}, missing from the lock"
                assert req.specifier.contains(pins[dep], prereleases=True), \
                    f"{name} needs {req}, the lock has {dep}=={pins[dep]}"


def test_locks_fit_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {canonicalize_name(Requirement(d).name): Requirement(d).specifier for d in deps}
    for name, version in {**COMMON, **PROCESS}.items():
        assert ranges.get(name, SpecifierSet()).contains(version), \
            f"the lock's {name}=={version} is outside pyproject.toml's {ranges[name]}"


#: imported when installed, not needed: botocore falls back to its own CA bundle
OPTIONAL = {"certifi"}


@pytest.mark.parametrize("step", STEPS)
def test_each_function_imports_only_its_lock(step):
    """What a function's actions import is in its image's lock; split and merge do not
    import OpenCV (the op functions import it on first use), so their images skip it."""
    code = ("import importlib, json, sys; before = set(sys.modules); "
            "import pipeline.handlers as h; "
            f"[importlib.import_module(t.partition(':')[0]) for _, t in h.FUNCTIONS['{step}']"
            ".values()]; print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) "
            "- before})))")  # not what the interpreter's startup (.pth files) imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    modules = set(json.loads(out))
    if step != "process":
        assert "cv2" not in modules, f"the {step} function's actions import OpenCV"
    owners = md.packages_distributions()
    third_party = {canonicalize_name(d) for m in modules for d in owners.get(m, [])} - {"tiffpipe"}
    lock = {**COMMON, **PROCESS} if step == "process" else COMMON
    assert third_party - OPTIONAL <= set(lock), f"not in the lock: {third_party - set(lock)}"


def _stage(dockerfile: str, name: str) -> str:
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM )", dockerfile,
                      re.MULTILINE | re.DOTALL)
    assert match, f"no stage {name}"
    # the instructions (comments do not make layers)
    return "\n".join(line for line in match.group(1).splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


def test_dockerfiles_share_their_deps_stage():
    """The three builds share the deps stage's layers only if its text is identical."""
    files = {s: (ROOT / "images" / s / "Dockerfile").read_text() for s in STEPS}
    stages = {s: _stage(text, "deps") for s, text in files.items()}
    assert stages["split"] == stages["process"] == stages["merge"]
    for step, text in files.items():
        assert "ARG BASE_IMAGE=public.ecr.aws/lambda/python:3.12\n" in text
        assert 'CMD ["app.handler"]' in text
        assert "\nENV OPENBLAS_NUM_THREADS=1\n" in text  # see test_image_starts_no_blas_threads
        # the malloc settings of the local workers (tune_malloc), so Lambda holds what the
        # estimate's memory model measured locally
        assert (f"\nENV MALLOC_ARENA_MAX={workers.MALLOC_ARENAS} "
                f"MALLOC_MMAP_THRESHOLD_={workers.MALLOC_MMAP_THRESHOLD} "
                f"MALLOC_TRIM_THRESHOLD_={workers.MALLOC_TRIM_THRESHOLD}\n") in text
        assert f"COPY images/{step}/app.py " in text
        assert ("images/process/requirements.txt" in text) == (step == "process")


def _wheel(folder: Path, name: str, module: str) -> Path:
    """A minimal pure-Python wheel of ``name`` 1.0 holding ``module/__init__.py``."""
    import zipfile

    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{module}/__init__.py": "VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
        z.writestr(f"{info}/RECORD", "".join(f"{a},,\n" for a in files) + f"{info}/RECORD,,\n")
    return path


@pytest.mark.parametrize("clash", [False, True])
def test_install_user_puts_your_packages_beside_the_locked_ones(tmp_path, clash):
    """The process image's user stage (images/process/install_user.py), run here with this
    Python and no index: a wheel of the user's lands in the target folder; one that brings
    a module the locked packages have (a second cv2) is refused, naming it."""
    source, locked = tmp_path / "user", tmp_path / "deps"
    (source / "packages" / "00").mkdir(parents=True)
    (source / "requirements.txt").write_text("# none\n")
    (locked / "cv2").mkdir(parents=True)
    module = "cv2" if clash else "mylab"
    _wheel(source / "packages" / "00", "mylab", module)
    (tmp_path / "locks").mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "images/process/install_user.py"), str(source),
         str(tmp_path / "out"), str(locked), str(tmp_path / "locks")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""},
        cwd=tmp_path)
    if clash:
        assert done.returncode != 0
        assert "your packages install cv2, which the image's locked packages have" in \
            done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / "mylab" / "__init__.py").is_file()


# --- the engine, the stand-in base, the images ---------------------------------------------


@dataclass
class Built:
    engine: docker_env.Engine
    base: str
    tags: dict[str, str]
    find_links: str
    context: Path  # the build context (docker_env.build_context)
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="session")
def engine() -> Iterator[docker_env.Engine]:
    try:
        eng = docker_env.start_engine()
    except docker_env.Unavailable as exc:
        if os.environ.get("TIFFPIPE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"TIFFPIPE_REQUIRE_DOCKER=1, but no Docker engine: {exc}")
        pytest.skip(f"no Docker engine can be started here: {exc}")
    yield eng
    eng.close()


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal even under -q and output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def built(engine, pytestconfig, tmp_path_factory) -> Iterator[Built]:
    started = time.monotonic()
    base = docker_env.ensure_standin_base(engine)
    seconds = {"stand-in base": time.monotonic() - started}
    t = time.monotonic()
    house = docker_env.Wheelhouse(docker_env.base_python(engine, base))
    house.download(*docker_env.LOCKS)
    find_links = house.serve()
    seconds["wheels"] = time.monotonic() - t
    args = docker_env.build_args(base, find_links)
    context = docker_env.build_context(tmp_path_factory.mktemp("context"))
    # tags of this session: other sessions may build in the same engine at the same time
    tags = {s: f"tiffpipe-{s}:test-{os.getpid()}" for s in STEPS}
    built = Built(engine, base, tags, find_links, context, seconds)
    try:
        for step, tag in built.tags.items():
            seconds[step] = docker_env.build_image(engine, context, step, tag, args)
            built.sizes[step] = int(engine.inspect(tag, "{{.Size}}"))
        built.sizes["stand-in base"] = int(engine.inspect(base, "{{.Size}}"))
        mb = {k: v / 1e6 for k, v in built.sizes.items()}
        _say(pytestconfig, "\nLambda images (" + docker_env.platform() + ", stand-in base "
             f"{mb['stand-in base']:.0f} MB): " + ", ".join(
                 f"{s} {mb[s]:.0f} MB (+{mb[s] - mb['stand-in base']:.0f} MB)" for s in STEPS))
        _say(pytestconfig, "image build seconds: " + ", ".join(
            f"{k} {v:.1f}" for k, v in seconds.items()))
        yield built
    finally:
        house.close()
        engine.docker("rmi", *tags.values(), check=False)  # the layers stay: the build cache


def test_images_build_small_and_share_layers(built):
    engine = built.engine
    layers = {s: engine.inspect(t, "{{json .RootFS.Layers}}") for s, t in built.tags.items()}
    layers = {s: json.loads(v) for s, v in layers.items()}
    base_layers = len(json.loads(engine.inspect(built.base, "{{json .RootFS.Layers}}")))
    # the base and the common wheels are one set of layers for all three images; split
    # and merge differ only in their app.py and what compiles it
    shared = base_layers + 1
    assert layers["split"][:shared] == layers["process"][:shared] == layers["merge"][:shared]
    assert layers["split"][:-2] == layers["merge"][:-2]
    for step in STEPS:
        added = built.sizes[step] - built.sizes["stand-in base"]
        assert added < (360e6 if step == "process" else 200e6), f"{step}: +{added / 1e6:.0f} MB"
        config = json.loads(engine.inspect(built.tags[step], "{{json .Config}}"))
        assert config["Cmd"] == ["app.handler"]
        assert config["Entrypoint"] == ["/lambda-entrypoint.sh"]  # the base's, kept


@pytest.mark.parametrize("step", STEPS)
def test_image_holds_only_its_step(built, step):
    check = ("import importlib.util as u, sys; "
             "print(' '.join(m for m in ('cv2', 'moto', 'rich', 'pipeline.cli', 'pipeline.engine',"
             " 'awslambdaric') if u.find_spec(m) and u.find_spec(m).origin and "
             "u.find_spec(m).origin.startswith('/var/task/')))")
    out = built.engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                              built.tags[step], "-c", check).stdout.split()
    assert out == (["cv2"] if step == "process" else [])


@pytest.mark.parametrize("step", STEPS)
def test_image_starts_no_blas_threads(built, step):
    """Its handler's imports (numpy; OpenCV in the process image, with an OpenBLAS of its
    own) leave the function's process with its one thread: no OpenBLAS threads spinning
    (the image's OPENBLAS_NUM_THREADS)."""
    imports = "os, app, numpy" + (", cv2" if step == "process" else "")
    check = f"import {imports}; print(len(os.listdir('/proc/self/task')))"
    out = built.engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                              built.tags[step], "-c", check).stdout.split()
    assert out == ["1"]


# --- running the images as Lambda functions ------------------------------------------------


@dataclass
class Data:
    dir: Path  # mounted into the containers at the same path
    source: Path
    pages: list[np.ndarray]
    s3_endpoint: str
    s3: Any


@pytest.fixture(scope="module")
def data(tmp_path_factory, moto_server: str) -> Iterator[Data]:
    import boto3

    folder = tmp_path_factory.mktemp("images-data")
    folder.chmod(0o777)  # the functions run as Lambda's non-root user
    pages = [sample_tile(0, 0, 600, 700, 3, "uint8"), sample_tile(0, 0, 500, 450, 1, "uint16")]
    source = folder / "in.tif"
    with tifffile.TiffWriter(source) as tw:
        tw.write(pages[0], tile=(128, 128), compression="zlib", photometric="rgb")
        tw.write(pages[1], rowsperstrip=64, compression="lzw", photometric="minisblack")
    source.chmod(0o644)
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_server,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(source), BUCKET, "in/in.tif")
    yield Data(folder, source, pages, moto_server, client)


@pytest.fixture(scope="module")
def functions(built, data) -> Iterator[dict[str, docker_env.LambdaContainer]]:
    env = {"AWS_ENDPOINT_URL": data.s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    running: dict[str, docker_env.LambdaContainer] = {}
    try:
        for step, tag in built.tags.items():
            running[step] = docker_env.LambdaContainer(built.engine, tag, f"tiffpipe-{step}",
                                                       [data.dir], env=env)
        yield running
    finally:
        for container in running.values():
            container.close()


def call(fn: docker_env.LambdaContainer, event: dict[str, Any]) -> Any:
    """Invoke; the function must succeed (else its error and its container's log)."""
    answer = fn.invoke(event)
    assert answer.ok, f"{fn.name}: {answer.payload}\n--- log ---\n{fn.logs()[-4000:]}"
    return answer.payload


def run_pipeline(functions, manifest: str, work: str, report: str,
                 single_task: bool = True) -> dict[str, Any]:
    """What the state machine does for a one-job manifest, action by action, each action
    invoked in its own function's container. ``single_task=False``: a job PlanJob says to
    run as one task (ProcessJob: its units, then its merge) runs as a larger one would, its
    units in the ProcessUnits map, then Merge (every test job is small enough for one task).
    Returns Merge's (or ProcessJob's) result."""
    split, process, merge = (functions[s] for s in STEPS)
    planned = call(split, {"action": "plan_run", "manifest": manifest, "work": work,
                           "run_id": "images-test", "report": report})
    assert planned["jobs"] == 1  # the Jobs map reads the job list PlanRun wrote
    job = call(process, {"action": "plan_job", "run": planned["run"], "job": 0})
    if job["single"] and single_task:  # the Single choice: ProcessJob, then the report
        done = call(process, {"action": "process_job", "plan": job["plan"]})
        counts = call(merge, {"action": "report", "run": planned["run"]})
        assert (counts["succeeded"], counts["failed"]) == (1, 0)
        return done
    if job["fused"]:  # the Fused choice: each unit read and processed by the process function
        for unit in job["units"]:
            call(process, {"action": "process_unit", "plan": job["plan"], "unit": unit})
        assert job["batches"] == [] and not job["stats"]["more"]
    for unit in [] if job["fused"] else job["units"]:
        call(split, {"action": "split", "plan": job["plan"], "unit": unit})
    stats = job["stats"]
    while stats["more"]:  # the statistics rounds of ops that need the whole page
        for batch in job["batches"]:
            call(process, {"action": "stats", "plan": job["plan"], "batch": batch,
                           "round": stats["round"]})
        stats = call(process, {"action": "reduce_stats", "plan": job["plan"],
                               "round": stats["round"]})
    for batch in job["batches"]:
        call(process, {"action": "process", "plan": job["plan"], "batch": batch})
    for unit in job["units"] if job["levels"] else []:  # the Levels choice
        call(process, {"action": "build_levels", "plan": job["plan"], "unit": unit})
    merged = call(merge, {"action": "merge", "plan": job["plan"]})
    counts = call(merge, {"action": "report", "run": planned["run"]})
    assert (counts["succeeded"], counts["failed"]) == (1, 0)
    return merged


def expected(page: np.ndarray) -> np.ndarray:
    return cv2.bitwise_not(cv2.GaussianBlur(page, (0, 0), SIGMA))


def _check_output(path: Path, data: Data) -> None:
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == len(data.pages)
        for page, source in zip(tf.pages, data.pages, strict=True):
            assert page.is_tiled
            assert np.array_equal(page.asarray(), expected(source))


def test_pipeline_on_local_files(functions, data):
    manifest = data.dir / "local.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": "in.tif", "output": "out/local.tif", "ops": OPS, "tile": 256,
        "output_options": {"compression": "zstd", "tile": 128}}]}))
    report = data.dir / "local.report.json"
    merged = run_pipeline(functions, str(manifest), str(data.dir / "work-local"), str(report))
    assert merged["output"] == str(data.dir / "out/local.tif")
    assert merged["tiles"] > 0  # ProcessJob's answer: the job ran as one task, as on AWS
    _check_output(data.dir / "out/local.tif", data)
    assert json.loads(report.read_text())["jobs"][0]["status"] == "SUCCEEDED"


def test_pipeline_with_a_statistics_round(functions, data):
    """A whole-page op (equalize_hist): not fused; the split function's split, the process
    function's stats, reduce_stats and process run, and split plans the round without
    OpenCV."""
    manifest = data.dir / "stats.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": "in.tif", "output": "out/stats.tif", "pages": [0], "tile": 128,
        "output_options": {"tile": 64},
        "ops": [{"op": "to_gray"}, {"op": "equalize_hist"}]}]}))
    run_pipeline(functions, str(manifest), str(data.dir / "work-stats"),
                 str(data.dir / "stats.report.json"))
    gray = cv2.cvtColor(data.pages[0], cv2.COLOR_RGB2GRAY)
    assert np.array_equal(tifffile.imread(data.dir / "out/stats.tif"), cv2.equalizeHist(gray))


def test_pipeline_on_s3(functions, data):
    data.s3.put_object(Bucket=BUCKET, Key="jobs/s3.json", Body=json.dumps({"jobs": [{
        "input": f"s3://{BUCKET}/in/in.tif", "output": f"s3://{BUCKET}/out/s3.tif",
        "ops": OPS, "tile": 256, "output_options": {"compression": "deflate", "tile": 128}}]}))
    run_pipeline(functions, f"s3://{BUCKET}/jobs/s3.json", f"s3://{BUCKET}/work/",
                 f"s3://{BUCKET}/reports/s3.json", single_task=False)
    local = data.dir / "from-s3.tif"
    data.s3.download_file(BUCKET, "out/s3.tif", str(local))
    _check_output(local, data)


def test_pipeline_on_old_style_jpeg_from_s3(functions, data):
    """An old-style JPEG page, which libtiff (imagecodecs') decodes, read by ranged GETs;
    split into work tiles (not fused) and fused, by the function each action runs in."""
    from ojpeg_files import write_ojpeg
    from PIL import Image

    source = data.dir / "ojpeg.tif"
    write_ojpeg(source, [data.pages[0]])
    with Image.open(source) as image:
        page = np.asarray(image)  # libtiff's read (Pillow's build of it)
    data.s3.upload_file(str(source), BUCKET, "in/ojpeg.tif")
    for fuse in (False, True):
        key = f"out/ojpeg-{fuse}.tif"
        data.s3.put_object(Bucket=BUCKET, Key="jobs/ojpeg.json", Body=json.dumps({"jobs": [{
            "input": f"s3://{BUCKET}/in/ojpeg.tif", "output": f"s3://{BUCKET}/{key}",
            "ops": OPS, "tile": 256, "fuse": fuse,
            "output_options": {"compression": "zstd", "tile": 128}}]}))
        run_pipeline(functions, f"s3://{BUCKET}/jobs/ojpeg.json",
                     f"s3://{BUCKET}/work-ojpeg-{fuse}/",
                     f"s3://{BUCKET}/reports/ojpeg-{fuse}.json")
        local = data.dir / f"ojpeg-{fuse}.tif"
        data.s3.download_file(BUCKET, key, str(local))
        assert np.array_equal(tifffile.imread(local), expected(page)), f"fuse {fuse}"


@pytest.mark.parametrize(("step", "event", "error"), [
    ("split", {"action": "plan_run", "manifest": "{dir}/missing.json", "work": "{dir}/w",
               "run_id": "x", "report": "{dir}/r.json"}, "InputNotFoundError"),
    ("process", {"action": "process", "plan": "{dir}/nowhere/plan.json", "batch": 0},
     "WorkMissingError"),
    ("merge", {"action": "split", "plan": "{dir}/nowhere/plan.json"}, "EventError"),
])
def test_failures_are_named_errors(functions, data, step, event, error):
    event = {k: v.format(dir=data.dir) if isinstance(v, str) else v for k, v in event.items()}
    answer = functions[step].invoke(event)
    assert not answer.ok
    assert answer.payload["errorType"] == error, answer.payload
    assert functions[step].alive(), "a handled error must not end the execution environment"


def test_lambda_invoke_api_in_front_of_the_containers(functions, data):
    """The Lambda Invoke API a Lambda client (and Step Functions Local) calls, by name or
    ARN, answered by the containers: results, and errors as X-Amz-Function-Error."""
    import boto3

    front = docker_env.InvokeFront(functions)
    try:
        client = boto3.client("lambda", endpoint_url=f"http://{front.address}",
                              region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        arn = "arn:aws:lambda:us-east-1:123456789012:function:tiffpipe-split"
        answer = client.invoke(FunctionName=arn, Payload=json.dumps({
            "action": "plan_run", "manifest": str(data.dir / "missing.json"),
            "work": str(data.dir / "w"), "run_id": "x", "report": str(data.dir / "r.json")}))
        assert answer["FunctionError"] == "Unhandled"
        assert json.loads(answer["Payload"].read())["errorType"] == "InputNotFoundError"
        answer = client.invoke(FunctionName="tiffpipe-merge",
                               Payload=json.dumps({"action": "report", "run": "nowhere"}))
        assert answer["StatusCode"] == 200 and "FunctionError" in answer
    finally:
        front.close()


# --- pushing with deploy's own code ---------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[docker_env.Registry]:
    reg = docker_env.Registry()
    try:
        reg.start()
        yield reg
    finally:
        reg.close()


def test_push_with_deploys_code_and_pull_back_by_digest(built, registry, pytestconfig):
    from pipeline.aws.images import build_and_push, tag_prefix

    engine = built.engine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[docker_env.machine()]
    extra = ["--network", "host"]  # the builder's pip reaches the wheelhouse on loopback
    for key, value in docker_env.build_args(built.base, built.find_links).items():
        if key != "BASE_IMAGE":
            extra += ["--build-arg", f"{key}={value}"]

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=engine.env, timeout=1800, **kwargs)  # noqa: PLW1510

    def push(step: str) -> str:
        return build_and_push(step, arch, f"{registry.address}/tiffpipe-{step}",
                              base_image=built.base, context=built.context, run=run,
                              extra_build_args=extra)

    digests = {}
    with docker_env.lock("build-and-push"):  # its local tags are fixed: one session at a time
        for step in STEPS:
            repo = f"{registry.address}/tiffpipe-{step}"
            digest = digests[step] = push(step)
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest
            assert registry.manifest_digest(f"tiffpipe-{step}", digest) == digest
            image_id = engine.inspect(f"tiffpipe-{step}:build-{arch}", "{{.Id}}")
            # drop the pushed tag, pull by digest, and invoke the pulled image as a function
            tag = f"{tag_prefix(arch)}{image_id.removeprefix('sha256:')[:16]}"
            engine.docker("rmi", f"{repo}:{tag}")
            engine.docker("pull", f"{repo}@{digest}", timeout=600)
            assert engine.inspect(f"{repo}@{digest}", "{{.Id}}") == image_id
            # the pip build args (a mirror's URL may hold a token) are declared in the
            # builder stages only: the pushed image's history holds none of them
            history = engine.docker("history", "--no-trunc", f"{repo}@{digest}").stdout
            assert built.find_links not in history and "PIP_" not in history, history
            pulled = docker_env.LambdaContainer(engine, f"{repo}@{digest}", f"tiffpipe-{step}",
                                                [])
            try:
                answer = pulled.invoke({"action": "no_such_action"}, timeout=120)
            finally:
                pulled.close()
            assert not answer.ok and answer.payload["errorType"] == "EventError", answer.payload
        # unchanged, an image pushes nothing new: the digest (functions deploy by it) holds
        assert push("merge") == digests["merge"]
    _say(pytestconfig, "\npushed (compressed layers, base included): " + ", ".join(
        f"{s} {registry.compressed_size(f'tiffpipe-{s}', d) / 1e6:.0f} MB"
        for s, d in digests.items()))


#: the build backend pip builds a project folder with, from the tests' wheelhouse (no index)
SETUPTOOLS = "setuptools==80.9.0"
#: a user's package of custom ops: mylab.filters.flatten inverts a tile
MYLAB = {
    "pyproject.toml": (
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mylab"\nversion = "1.0"\ndependencies = ["numpy"]\n'
        '[tool.setuptools]\npackages = ["mylab"]\n'),
    "mylab/__init__.py": "",
    "mylab/filters.py": "import numpy\n\n\ndef flatten(tile, **_):\n"
                        "    return numpy.invert(tile)\n",
    # what a working copy holds besides: left out of the build context
    ".git/HEAD": "ref: refs/heads/main\n",
    "mylab/__pycache__/filters.cpython-311.pyc": "junk",
}


def test_deploy_installs_your_packages_in_the_process_image(built, registry, functions, data,
                                                             tmp_path):
    """A custom op's module had to be "installed in the process image", but a deploy built
    the image without it and gave no way to add it. deploy.py's --package PATH (and
    --requirements FILE) put it in the build context (pipeline.aws.images.user_context),
    and the process image's user stage installs it next to the locked packages, numpy not
    twice: PlanJob imports it and the units run it, in the image run as a Lambda function.
    The same files again give the same image (a deploy changes nothing); a changed
    requirements file gives a new one."""
    from pipeline.aws.images import build_and_push, user_context

    engine = built.engine
    house = docker_env.Wheelhouse(docker_env.base_python(engine, built.base))
    (tmp_path / "setuptools.txt").write_text(SETUPTOOLS + "\n")
    house.download(tmp_path / "setuptools.txt")  # into the folder the fixture serves
    package = tmp_path / "src" / "mylab"
    for name, text in MYLAB.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# mylab's own requirements: numpy, from the image's lock\n")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[docker_env.machine()]
    extra = ["--network", "host"]
    for key, value in docker_env.build_args(built.base, built.find_links).items():
        if key != "BASE_IMAGE":
            extra += ["--build-arg", f"{key}={value}"]

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=engine.env, timeout=1800, **kwargs)  # noqa: PLW1510

    def deploy_build() -> str:
        with user_context(str(requirements), [str(package)], root=built.context) as context:
            assert context is not None
            user = context / "images/process/user/packages/00/mylab"
            assert (user / "mylab/filters.py").is_file()
            assert not (user / ".git").exists() and not (user / "mylab/__pycache__").exists()
            return build_and_push("process", arch, f"{registry.address}/tiffpipe-process",
                                  base_image=built.base, context=context, run=run,
                                  extra_build_args=extra)

    repo = f"{registry.address}/tiffpipe-process"
    with docker_env.lock("build-and-push"):
        first = deploy_build()
        assert deploy_build() == first  # the same packages: the same image, nothing to update
        image = f"{repo}@{first}"
        check = ("import glob, mylab.filters; print(mylab.filters.__file__); "
                 "print(len(glob.glob('/var/task/numpy-*.dist-info')))")
        out = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                            image, "-c", check).stdout.split()
        assert out == ["/var/task/mylab/filters.py", "1"], out
        requirements.write_text(requirements.read_text() + f"{SETUPTOOLS}\n")
        changed = deploy_build()
        assert changed != first  # a changed requirements file rebuilds
    env = {"AWS_ENDPOINT_URL": data.s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    process = docker_env.LambdaContainer(engine, image, "tiffpipe-process", [data.dir], env=env)
    try:
        manifest = data.dir / "custom.json"
        manifest.write_text(json.dumps({"jobs": [{
            "input": "in.tif", "output": "out/custom.tif", "tile": 256,
            "output_options": {"tile": 128},
            "ops": [{"op": "custom", "function": "mylab.filters:flatten"}]}]}))
        run_pipeline({**functions, "process": process}, str(manifest),
                     str(data.dir / "work-custom"), str(data.dir / "custom.report.json"))
    finally:
        process.close()
    with tifffile.TiffFile(data.dir / "out/custom.tif") as tf:
        for page, source in zip(tf.pages, data.pages, strict=True):
            assert np.array_equal(page.asarray(), np.invert(source))


#: (docker --arch, ELF e_machine) of the architecture this machine's engine does not run
_FOREIGN = {"x86_64": ("arm64", 183), "aarch64": ("amd64", 62)}


def _foreign_base(engine: docker_env.Engine, arch: str, machine: int, into: Path) -> str:
    """An image of the other architecture whose /bin/sh is a program of it (an ELF header
    naming that machine: the kernel refuses to run it, as it refuses any program of it
    without emulation), built FROM scratch for its platform."""
    import struct

    root = into / "root"
    (root / "bin").mkdir(parents=True)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, machine, 1, 0x400078, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 0x80, 0x80, 0x1000)
    (root / "bin" / "sh").write_bytes(header + segment + bytes(8))
    (root / "bin" / "sh").chmod(0o755)
    (into / "Dockerfile").write_text("FROM scratch\nCOPY root/ /\nENV LAMBDA_TASK_ROOT=/var/task\n")
    tag = f"tiffpipe-foreign-base:{arch}"
    engine.docker("build", "-q", "--platform", PLATFORMS[arch], "-t", tag, str(into))
    return tag


def test_a_build_the_engine_cannot_run_says_what_to_do(engine, tmp_path):
    """deploy.py builds arm64 images unless told; on an x86_64 engine without emulation
    (no QEMU binfmt: a Linux CI runner, this machine) every RUN step fails with "exec
    /bin/sh: exec format error". The classic builder writes that to stdout, and the
    DockerError kept only stderr's tail: "The command '/bin/sh -c pip install ...' returned
    a non-zero code: 1", no cause, no way out. It now shows the step's own output and says
    what to do: --arch of the engine's own, or emulation."""
    from pipeline.aws.images import DockerError, build_and_push

    machine = docker_env.machine()
    if machine not in _FOREIGN:
        pytest.skip(f"no foreign architecture known for {machine}")
    arch, elf_machine = _FOREIGN[machine]
    emulator = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}[arch]
    if Path("/proc/sys/fs/binfmt_misc", emulator).exists():
        pytest.skip(f"this machine emulates {arch} ({emulator} is registered)")
    base = _foreign_base(engine, arch, elf_machine, tmp_path)

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=engine.env, timeout=600, **kwargs)  # noqa: PLW1510

    with docker_env.lock("build-and-push"), pytest.raises(DockerError) as failed:
        build_and_push("split", arch, "127.0.0.1:9/never-pushed", base_image=base, run=run)
    message = str(failed.value)
    assert "docker build of the split image failed" in message
    assert "exec format error" in message, message  # the cause, whichever builder ran
    assert "--arch amd64 on an x86_64 machine" in message and "qemu-user-static" in message


# --- AWS Step Functions Local, where its image is present ----------------------------------

SFN_LOCAL = "amazon/aws-stepfunctions-local"
SFN_LOCAL_PORT = 8083  # its fixed port


def test_statemachine_runs_on_stepfunctions_local(built, functions, data):
    """statemachine.asl.json on AWS Step Functions Local, its Lambda calls served by the three
    containers. Step Functions Local cannot be pulled here: the test runs where a user has
    pulled it (``docker pull amazon/aws-stepfunctions-local``) into the engine the tests use."""
    import boto3
    from botocore.exceptions import ClientError

    from pipeline.engine.definition import render

    engine = built.engine
    present = engine.docker("image", "ls", "-q", SFN_LOCAL).stdout.split()
    if not present:
        pytest.skip(f"{SFN_LOCAL} is not present in the Docker engine (it cannot be pulled "
                    f"here; where it can: docker pull {SFN_LOCAL})")
    front = docker_env.InvokeFront(functions)
    name = f"tiffpipe-sfn-local-{os.getpid()}"
    engine.docker("run", "-d", "--name", name, "--network", "host",
                  "-e", f"LAMBDA_ENDPOINT=http://{front.address}",
                  "-e", "AWS_DEFAULT_REGION=us-east-1", "-e", "AWS_ACCOUNT_ID=123456789012",
                  SFN_LOCAL)
    try:
        sfn = boto3.client("stepfunctions", endpoint_url=f"http://127.0.0.1:{SFN_LOCAL_PORT}",
                           region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        deadline = time.monotonic() + 60
        while True:
            try:
                sfn.list_state_machines()
                break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        arns = {s: f"arn:aws:lambda:us-east-1:123456789012:function:tiffpipe-{s}" for s in STEPS}
        try:
            machine = sfn.create_state_machine(
                name="tiffpipe", definition=render(arns),
                roleArn="arn:aws:iam::123456789012:role/DummyRole")["stateMachineArn"]
        except ClientError as exc:
            if re.search(r"DISTRIBUTED|ItemProcessor|ProcessorConfig", str(exc)):
                pytest.xfail(f"this Step Functions Local rejects the Distributed Map: {exc}")
            raise
        manifest = data.dir / "sfn.json"
        manifest.write_text(json.dumps({"jobs": [{
            "input": "in.tif", "output": "out/sfn.tif", "ops": OPS, "tile": 256,
            "output_options": {"tile": 128}}]}))
        execution = sfn.start_execution(
            stateMachineArn=machine, name="images-test", input=json.dumps({
                "manifest": str(manifest), "work": str(data.dir / "work-sfn"), "run_id": "sfn",
                "report": str(data.dir / "sfn.report.json")}))["executionArn"]
        deadline = time.monotonic() + 600
        while (status := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the execution did not finish in 10 minutes"
            time.sleep(1)
        assert status["status"] == "SUCCEEDED", status
        _check_output(data.dir / "out/sfn.tif", data)
    finally:
        engine.docker("rm", "-f", name, check=False)
        front.close()
