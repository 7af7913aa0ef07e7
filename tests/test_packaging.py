"""tiffpipe as a package: the files it ships (the definition, the calibration), the lock of
the test environment and its pins, and a wheel installed outside the checkout that runs
``tiffpipe demo`` and ``tiffpipe estimate`` (slow: it builds and installs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import tifffile
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import pipeline
from pipeline.aws import images
from pipeline.demo import DEMO_MANIFEST, SAMPLE_PAGES
from pipeline.engine import definition
from pipeline.errors import CheckoutNotFoundError
from pipeline.estimate import calibration

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "test.lock"
#: package resource -> the top-level file it ships
SHIPPED = {"pipeline/statemachine.asl.json": "statemachine.asl.json",
           "pipeline/estimate/calibration.json": "bench/calibration.json"}


def _lock_pins(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, marker) of a lock (a uv/pip-compile file, hashes on continuation
    lines) or of an image's requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip().removesuffix("\\").strip()
        if not line or line.startswith("--"):
            continue
        req = Requirement(line)
        [spec] = req.specifier
        assert spec.operator == "==", f"{path}: {line} is not an exact pin"
        pins[canonicalize_name(req.name)] = (spec.version, str(req.marker or ""))
    return pins


def _documented_constraints() -> str:
    """The command docs/development.md gives for the lock's pins as pip constraints."""
    doc = (ROOT / "docs" / "development.md").read_text()
    [command] = [line for line in doc.splitlines() if line.startswith("grep ")
                 and "requirements/test.lock" in line and line.endswith("> constraints.txt")]
    return command


# --- the shipped files ---------------------------------------------------------------------


def test_the_package_ships_the_top_level_files():
    """What the engine, deploy and estimate read is, in a checkout, the file users edit."""
    assert definition.definition_text() == (ROOT / "statemachine.asl.json").read_text()
    default = calibration.load_calibration()
    assert Path(default["file"]).read_bytes() == (ROOT / "bench/calibration.json").read_bytes()
    for resource in SHIPPED:
        assert (ROOT / resource).is_symlink(), f"{resource} should link to the top-level file"
    assert (ROOT / "pipeline" / "py.typed").is_file()


def test_images_need_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A wheel installed on its own has no Dockerfiles: building images says to use a clone."""
    installed = tmp_path / "site-packages" / "pipeline"
    installed.mkdir(parents=True)
    monkeypatch.setattr(pipeline, "__file__", str(installed / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckoutNotFoundError, match="run deploy.py from the root of a clone"):
        images.checkout_root()
    with pytest.raises(CheckoutNotFoundError):
        images.build_and_push("split", "arm64", "localhost:5000/tp-split")
    monkeypatch.chdir(ROOT)  # a clone as the current directory will do
    assert images.checkout_root() == ROOT


def test_the_checkout_is_found_from_the_package():
    assert images.checkout_root() == ROOT


# --- the lock and the pins ------------------------------------------------------------------


def test_lock_fits_pyproject_and_pins_the_engine():
    """Every dependency (and the dev extra) is locked within pyproject.toml's range, and
    pyproject.toml pins moto and OpenCV to the minor releases the engine and exactness are
    checked with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock_pins(LOCK)
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}: run make lock"
        assert req.specifier.contains(pins[name][0]), \
            f"{LOCK.name} has {name}=={pins[name][0]}, outside pyproject.toml's {req}: make lock"
    ranges = {canonicalize_name(Requirement(d).name): Requirement(d).specifier
              for d in project["dependencies"]}
    for name, checked in (("moto", "5.2.5"), ("opencv-python-headless", "5.1.0.95")):
        spec = ranges[name]
        assert spec.contains(checked) and pins[name][0] == checked
        upper = [s for s in spec if s.operator == "<"]
        assert upper, f"pyproject.toml: {name} {spec} has no upper bound"


def test_images_install_what_the_tests_ran_with():
    """The images' locks pin the versions of the test lock: the functions on AWS run the
    OpenCV kernels (and the codecs) the exactness tests checked."""
    pins = _lock_pins(LOCK)
    for path in (ROOT / "requirements/images-common.txt",
                 ROOT / "images/process/requirements.txt"):
        for name, (version, _) in _lock_pins(path).items():
            assert name in pins and pins[name][0] == version, \
                f"{path.name}: {name}=={version}, but {LOCK.name} has {pins.get(name)}"


def _lock_hashes(path: Path) -> dict[str, set[str]]:
    """name -> the ``--hash=sha256:...`` values of its pin, in a lock with hashes on
    continuation lines."""
    hashes: dict[str, set[str]] = {}
    name = None
    for line in path.read_text().splitlines():
        text = line.split("#")[0].strip().removesuffix("\\").strip()
        if not text:
            continue
        if text.startswith("--hash="):
            assert name, f"{path}: a hash before any pin"
            hashes[name].add(text.removeprefix("--hash="))
        elif not line.startswith(" "):
            name = canonicalize_name(Requirement(text).name)
            hashes[name] = set()
    return hashes


IMAGE_LOCKS = (ROOT / "requirements/images-common.txt", ROOT / "images/process/requirements.txt")


def test_images_locks_carry_the_test_locks_hashes():
    """Every pin of the images' locks lists the sha256 of every file of it the test lock
    lists (the wheels pip may pick for arm64 or x86_64, Python 3.11 or 3.12), and nothing
    else: the Dockerfiles install them with --require-hashes, so a wheel that differs from
    the one the tests ran with fails the build."""
    test_hashes = _lock_hashes(LOCK)
    for path in IMAGE_LOCKS:
        for name, found in _lock_hashes(path).items():
            assert found, f"{path.name}: {name} has no --hash"
            assert found == test_hashes[name], f"{path.name}: {name}'s hashes differ from " \
                f"{LOCK.name}'s"


def test_dockerfiles_install_the_locks_with_hashes_checked():
    """Each pip install of a lock in the Dockerfiles' builder stages checks the hashes."""
    for step in ("split", "process", "merge"):
        text = (ROOT / "images" / step / "Dockerfile").read_text().replace("\\\n", " ")
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert installs, step
        for line in installs:
            assert "--require-hashes" in line and "--no-deps" in line, (step, line)


def test_user_packages_are_constrained_by_the_pins_alone(tmp_path: Path):
    """The process image's user stage gives pip the locks' pins as constraints, without the
    hashes (a hash there would make pip demand one for every package of the user's)."""
    sys.path.insert(0, str(ROOT / "images" / "process"))
    try:
        import install_user
    finally:
        sys.path.remove(str(ROOT / "images" / "process"))
    for lock in IMAGE_LOCKS:
        made = install_user._pins_only(lock, tmp_path)
        assert "--hash" not in made.read_text()
        assert _lock_pins(made) == _lock_pins(lock)


def test_the_oldest_python_is_the_same_everywhere():
    """requires-python's lower bound is the Python the lock is resolved for (make lock), the
    one make refuses below, the oldest the classifiers name (the Pythons .ci/run tests) and
    ruff's target; every classifier's Python is within requires-python."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    [bound] = [s for s in SpecifierSet(project["requires-python"]) if s.operator == ">="]
    makefile = (ROOT / "Makefile").read_text()
    assert f"--python-version {bound.version} " in makefile
    major, minor = bound.version.split(".")
    assert makefile.count(f"sys.version_info < ({major}, {minor})") == 2, "make's checks"
    tested = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
              if c.startswith("Programming Language :: Python :: 3.")]
    assert tested and min(tested, key=Version) == bound.version, tested
    assert all(SpecifierSet(project["requires-python"]).contains(v) for v in tested), tested
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{minor}"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_a_python_that_does_not_run_is_named_so(tmp_path: Path):
    """A pyenv shim of a version pyenv has not selected is on the PATH but exits 127: make
    says so and how to give the Python's path (make test-pythons PYTHONS='python3.13' as the
    docs write it, on a machine whose 3.13 only pyenv installed), not that it is too old."""
    shim = tmp_path / "python3.13"
    shim.write_text('#!/bin/sh\necho "pyenv: python3.13: command not found" >&2\nexit 127\n')
    shim.chmod(0o755)
    for args, said in ([f"PYTHON={shim}", f"VENV={tmp_path / 'venv'}", "venv"],
                       f"error: {shim} is on the PATH but does not run"), (
            [f"PYTHONS={shim}", "NODE_STAMP=", "test-pythons"], f"error: {shim} does not run"):
        done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and said in done.stderr, done.stderr
        assert "pyenv prefix 3.13" in done.stderr and "too old" not in done.stderr
        assert "needs Python >= 3.11" not in done.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_a_python_asked_for_that_is_not_the_venvs_is_refused(tmp_path: Path):
    """`make PYTHON=python3.12 demo` (the README's way to pick a Python) after a `make demo`
    on another Python: the venv is up to date, so make ran the demo on the venv's Python
    without a word. Now it says which Python the venv has and what to do, and runs nothing."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    ran = tmp_path / "demo-ran"
    # a venv of "Python 3.99" (its version is all make asks it) with a tiffpipe that leaves
    # a mark if the demo runs
    (bin_dir / "python").write_text('#!/bin/sh\necho 3.99\n')
    (bin_dir / "tiffpipe").write_text(f'#!/bin/sh\ntouch "{ran}"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    (tmp_path / "venv" / ".installed").touch()  # newer than pyproject.toml and the lock
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT),
                           f"PYTHON={sys.executable}", f"VENV={tmp_path / 'venv'}", "demo"],
                          capture_output=True, text=True, timeout=60, check=False)
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert done.returncode != 0, done.stdout
    assert (f"error: {tmp_path / 'venv'} is Python 3.99, not {sys.executable} ({own})"
            in done.stderr), done.stderr
    assert "make clean" in done.stderr and "test-pythons" in done.stderr
    assert not ran.exists()


def test_the_wheels_source_copy_leaves_out_every_venv():
    """Venvs made with make VENV=.venv-3.13 sit in the checkout beside .venv: the copy the
    wheel is built from leaves them out as it does .venv (a venv is ~800 MB)."""
    names = [".venv", ".venv-3.13", ".venv312", "pipeline", "venvs.md"]
    assert _NOT_SOURCES(str(ROOT), names) == {".venv", ".venv-3.13", ".venv312"}


# --- a wheel, installed outside the checkout -------------------------------------------------

_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", ".lock-venv", "node_modules", "build",
                                      "dist", "*.egg-info", "__pycache__", ".*_cache", "tests")


def _clean_env() -> dict[str, str]:
    """The environment without what would make the checkout's code (or its egg-info) win."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False, env=_clean_env(),
                          **kwargs)
    assert done.returncode == 0, f"{args[:3]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def test_the_documented_constraints_are_the_locks_pins_without_hashes(tmp_path: Path):
    """What docs/development.md has users give pip with the wheel: every pin of the lock,
    marker and all, and no hash (pip refuses a constraints file with hashes)."""
    command = _documented_constraints().replace("> constraints.txt",
                                                f"> {tmp_path}/constraints.txt")
    _run(["bash", "-c", command], cwd=ROOT)
    made = tmp_path / "constraints.txt"
    assert "--hash" not in made.read_text()
    assert _lock_pins(made) == _lock_pins(LOCK)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the venv it is installed in): built from a copy of the sources, installed
    without the checkout's site-packages, its dependencies at the lock's versions."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCES)
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(tmp)])
    [wheel] = tmp.glob("tiffpipe-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    # the lock as constraints, made as docs/development.md tells users (pip takes no hashes
    # there): the runtime deps at its versions
    constraints = tmp / "constraints.txt"
    _run(["bash", "-c", _documented_constraints().replace("> constraints.txt",
                                                          f"> {constraints}")], cwd=ROOT)
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
          "--disable-pip-version-check", "-c", str(constraints), str(wheel)])
    return wheel, env_dir


@pytest.mark.slow
def test_wheel_ships_the_top_level_files(installed: tuple[Path, Path]):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "pipeline/py.typed" in names
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert f"\nVersion: {pipeline.__version__}\n" in zf.read(metadata).decode()
        [licence] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(licence) == (ROOT / "LICENSE").read_bytes()
        for resource, top_level in SHIPPED.items():
            assert zf.read(resource) == (ROOT / top_level).read_bytes(), resource


@pytest.mark.slow
def test_the_definition_is_read_through_importlib_resources_without_a_package_folder(
        installed: tuple[Path, Path], tmp_path: Path):
    """A package with no folder of its own, imported from the wheel (a zip) itself, gives
    its definition through importlib.resources (a run from a folder never imports it): the
    same text as the checkout's. A fresh interpreter with no site (-S: the checkout's
    editable install is not on its path), isolated (-I: no PYTHONPATH, not the current
    folder), run outside the checkout, imports the package from the wheel alone."""
    wheel, _ = installed
    script = ("import json, sys\n"
              f"sys.path.insert(0, {str(wheel)!r})\n"
              "import pipeline\n"
              "from pipeline.engine.definition import definition_text\n"
              "print(json.dumps({'file': pipeline.__file__, 'text': definition_text()}))\n")
    done = _run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path)
    read = json.loads(done.stdout)
    assert Path(read["file"]).is_relative_to(wheel), f"imported {read['file']}, not the wheel"
    assert read["text"] == (ROOT / "statemachine.asl.json").read_text()


@pytest.mark.slow
@pytest.mark.engine  # the installed tiffpipe runs the demo on the local engine
def test_installed_wheel_runs_the_demo_and_estimate(installed: tuple[Path, Path],
                                                     tmp_path: Path):
    _, env_dir = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python, tiffpipe = env_dir / "bin" / "python", env_dir / "bin" / "tiffpipe"
    where = _run([str(python), "-c", "import pipeline; print(pipeline.__file__)"],
                 cwd=elsewhere).stdout.strip()
    assert Path(where).is_relative_to(env_dir), f"the venv imported {where}"

    done = _run([str(tiffpipe), "demo", "--workers", "2"], cwd=elsewhere)
    assert "3 succeeded, 0 failed" in done.stdout
    folder = elsewhere / "example"  # demo's default --dir
    report = json.loads((folder / "manifest.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED"] * len(DEMO_MANIFEST["jobs"])
    for job in DEMO_MANIFEST["jobs"]:
        with tifffile.TiffFile(folder / job["output"]) as tf:
            want = [SAMPLE_PAGES[i] for i in job.get("pages", range(len(SAMPLE_PAGES)))]
            assert [p.shape[:2] for p in tf.pages] == [(w.height, w.width) for w in want]

    done = _run([str(python), "-m", "pipeline", "estimate", "--json",
                 str(folder / "manifest.json")], cwd=elsewhere)  # python -m: the command too
    shipped = Path(json.loads(done.stdout)["calibration"]["file"])
    assert shipped.is_relative_to(env_dir) and shipped.name == "calibration.json"

    code = "from pipeline.aws.images import checkout_root; checkout_root()"
    failed = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                            cwd=elsewhere, env=_clean_env(), check=False)
    assert failed.returncode != 0 and "CheckoutNotFoundError" in failed.stderr
    assert "run deploy.py from the root of a clone" in failed.stderr


@pytest.mark.slow
def test_installed_wheel_reaches_aws_for_start_and_status(installed: tuple[Path, Path],
                                                           tmp_path: Path, moto_server: str):
    """start and status from the wheel, against a moto server with no stack: the commands
    run (no missing file, no traceback) and say what is missing (StackNotFoundError)."""
    _, env_dir = installed
    manifest = tmp_path / "m.json"
    # (its locations on S3: start checks the manifest before it looks the stack up)
    manifest.write_text(json.dumps({"jobs": [{"input": "s3://data/in.tif",
                                              "output": "s3://data/out.tif"}]}))
    env = {**_clean_env(), "AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    tiffpipe = str(env_dir / "bin" / "tiffpipe")
    arn = "arn:aws:states:us-east-1:123456789012:execution:tiffpipe-nostack:run-1"
    for args, says in ((["start", str(manifest), "--stack", "nostack"], "deploy it first"),
                       (["status", arn], f"no execution {arn}")):
        done = subprocess.run([tiffpipe, *args], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=120, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr, done.stderr
