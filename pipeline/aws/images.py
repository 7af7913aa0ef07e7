"""Build the three Lambda images and push them: the only place that runs ``docker``.

``build_and_push`` is what ``deploy.py`` uses, and what the image tests call against a
local registry. Every docker call goes through ``run`` (``subprocess.run`` by default), so
callers can log or replace it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pipeline
from pipeline.aws import STEPS, AwsError
from pipeline.errors import CheckoutNotFoundError

#: what a build context needs besides images/<step>/Dockerfile (what the Dockerfiles copy)
CHECKOUT_FILES = ("pipeline/handlers.py", "requirements/images-common.txt",
                  "images/process/requirements.txt")
#: docker --platform of each --arch, and the Lambda architecture of each
PLATFORMS = {"arm64": "linux/arm64", "amd64": "linux/amd64"}
LAMBDA_ARCHITECTURES = {"arm64": "arm64", "amd64": "x86_64"}
_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")

Run = Callable[..., "subprocess.CompletedProcess[str]"]
#: the colours the classic builder puts around a step's error output
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: a build for the other architecture whose RUN steps the engine cannot run
_EMULATION_HINT = (
    "\nThe Docker engine cannot run programs of the image's architecture (--arch; deploy.py "
    "builds arm64 unless told): deploy with the engine's own architecture (--arch amd64 on an "
    "x86_64 machine, --arch arm64 on an ARM one), or let the engine emulate the other one "
    "(QEMU: Debian's qemu-user-static and binfmt-support packages, or docker run "
    "--privileged --rm tonistiigi/binfmt --install arm64,amd64) and run deploy.py again")


class DockerError(AwsError):
    """Docker is missing, or a build, login or push failed."""


def is_checkout(path: Path) -> bool:
    """Whether ``path`` is the root of a tiffpipe clone: the three Dockerfiles and what they
    copy are there."""
    return all((path / "images" / s / "Dockerfile").is_file() for s in STEPS) and all(
        (path / f).is_file() for f in CHECKOUT_FILES)


def checkout_root() -> Path:
    """The clone the images are built from: the one the running ``pipeline`` package belongs
    to (deploy.py run from a clone, an editable install), else the current directory.
    CheckoutNotFoundError if neither is a clone (a wheel installed on its own ships no
    Dockerfiles)."""
    candidates = list(dict.fromkeys([Path(pipeline.__file__).resolve().parent.parent,
                                     Path.cwd().resolve()]))
    for path in candidates:
        if is_checkout(path):
            return path
    raise CheckoutNotFoundError(
        "building the Lambda images needs a clone of the tiffpipe repository (images/*/"
        "Dockerfile, requirements/ and pipeline/ side by side), and "
        f"{' and '.join(str(p) for p in candidates)} {'is' if len(candidates) == 1 else 'are'}"
        " not one: run deploy.py from the root of a clone (git clone the repository, cd into "
        "it, python deploy.py), or deploy with --skip-build to reuse the images already pushed")


#: what ``.dockerignore`` lets into a build context: the parts of a clone the Dockerfiles copy
CONTEXT_PARTS = ("pipeline", "images", "requirements")
#: the process image's folder of the user's own packages (its user stage installs them)
USER_FOLDER = "images/process/user"
#: left out of a copied package folder: caches and local environments, which would only
#: make the build context (so the image) differ from one deploy to the next
_PACKAGE_JUNK = (".git", ".hg", ".venv", ".tox", "__pycache__", "*.pyc", "*.egg-info",
                 ".mypy_cache", ".pytest_cache", ".ruff_cache")
#: the names of a folder's entries that are :data:`_PACKAGE_JUNK` (copytree's ``ignore``)
_junk = shutil.ignore_patterns(*_PACKAGE_JUNK)
#: requirement lines that name another file or a local path: the build sees only the file.
#: Another file (``-r``, ``-c``, ``-e``; pip takes ``-rFILE`` too), a local path or file: URL
#: as the line, as a PEP 508 reference (``name @ file:...``) or as a --find-links folder (a
#: URL other than file: is fetched, so taken)
_LOCAL_LINE = re.compile(
    r"^(-[rce]|--requirement\b|--constraint\b|--editable\b)|^(\.|/|~|file:)|@\s*file:"
    r"|^(-f|--find-links\b)\s*=?(?!\s*(?!file:)[A-Za-z][\w+.-]*://)")


def check_user_packages(requirements: str | None, packages: Sequence[str]) -> None:
    """ValueError (a usage error: nothing was built) unless ``requirements`` is a readable
    pip requirements file whose lines name no other file or local path, and each of
    ``packages`` a wheel (``.whl``) or a project folder (``pyproject.toml`` or
    ``setup.py``)."""
    if requirements is not None:
        path = Path(requirements)
        if not path.is_file():
            raise ValueError(f"--requirements {requirements}: no such file")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split(" #")[0].strip()
            if _LOCAL_LINE.search(text):
                raise ValueError(
                    f"--requirements {requirements}, line {number}: {text!r} names another "
                    "file or a local path, which the image build cannot see: give a local "
                    "package with --package PATH (a wheel or a project folder), and list "
                    "the requirements themselves")
    for package in packages:
        path = Path(package)
        if not path.exists():
            raise ValueError(f"--package {package}: no such file or folder")
        if path.is_file() and path.suffix == ".whl":
            continue
        if path.is_dir() and any((path / f).is_file() for f in ("pyproject.toml", "setup.py")):
            continue
        raise ValueError(f"--package {package}: expected a wheel (.whl) or a project folder "
                         "(with pyproject.toml or setup.py)")


#: tags of the process function recording the user's packages its image has: what was
#: given (names), and a digest of the files (what a changed package changes)
PACKAGES_TAG = "tiffpipe:packages"
REQUIREMENTS_TAG = "tiffpipe:requirements"
PACKAGES_DIGEST_TAG = "tiffpipe:packages-sha256"
PACKAGE_TAGS = (PACKAGES_TAG, REQUIREMENTS_TAG, PACKAGES_DIGEST_TAG)
#: a requirement line's project name (options, comments, blank lines and a bare URL have none)
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?![A-Za-z0-9._:-])")
#: what a Lambda tag value may not hold (it takes letters, digits, spaces and _.:/=+-@)
_NOT_IN_TAG = re.compile(r"[^\w .:/=+@-]")
_TAG_VALUE_MAX = 256


def _package_files(path: Path) -> Iterator[tuple[str, Path]]:
    """The files of a package as :func:`user_context` copies them (a wheel; a folder
    without :data:`_PACKAGE_JUNK`), sorted, with their paths relative to it."""
    if not path.is_dir():
        yield path.name, path
        return
    found = []
    for folder, dirs, files in os.walk(path, followlinks=True):  # as copytree copies
        junk = _junk(folder, dirs + files)
        dirs[:] = sorted(d for d in dirs if d not in junk)
        found += [Path(folder, f) for f in files if f not in junk]
    for file in sorted(found):
        yield file.relative_to(path).as_posix(), file


def _tag_value(text: str) -> str:
    text = _NOT_IN_TAG.sub("_", text)
    return text if len(text) <= _TAG_VALUE_MAX else text[:_TAG_VALUE_MAX - 4] + " ..."


def package_tags(requirements: str | None, packages: Sequence[str]) -> dict[str, str]:
    """The tags recording the user's packages (:data:`PACKAGE_TAGS`) of a process image
    built with ``requirements`` and ``packages``; none without them. The names are for
    people (the packages' file or folder names; the requirements file's name and the
    projects it lists); the digest covers every file's path and bytes, so the same files
    give the same tags (a redeploy changes nothing) and a changed one changes them."""
    if requirements is None and not packages:
        return {}
    digest = hashlib.sha256()
    tags = {}
    if requirements is not None:
        text = Path(requirements).read_bytes()
        digest.update(b"requirements\0%d\0" % len(text) + text)
        names = [m.group(1) for line in text.decode("utf-8", "replace").splitlines()
                 if (m := _REQUIREMENT_NAME.match(line.split("#")[0]))]
        tags[REQUIREMENTS_TAG] = _tag_value(f"{Path(requirements).name}: {' '.join(names)}"
                                            .rstrip(": "))
    for number, package in enumerate(packages):
        for rel, file in _package_files(Path(package).resolve()):
            data = file.read_bytes()
            digest.update(f"package {number}/{rel}\0{len(data)}\0".encode() + data)
    if packages:
        tags[PACKAGES_TAG] = _tag_value(" ".join(Path(p).resolve().name for p in packages))
    tags[PACKAGES_DIGEST_TAG] = digest.hexdigest()
    return tags


def recorded_packages(tags: dict[str, str] | None) -> dict[str, str]:
    """Those of a function's ``tags`` that record the user's packages (:data:`PACKAGE_TAGS`)."""
    return {k: v for k, v in (tags or {}).items() if k in PACKAGE_TAGS}


def describe_packages(tags: dict[str, str]) -> str:
    """The user's packages a process function's tags record, as deploy.py's options
    (``--package a b; --requirements r.txt: x y``); empty when they record none."""
    parts = [f"--package {tags[PACKAGES_TAG]}" if tags.get(PACKAGES_TAG) else "",
             f"--requirements {tags[REQUIREMENTS_TAG]}" if tags.get(REQUIREMENTS_TAG) else ""]
    shown = "; ".join(p for p in parts if p)
    return shown or ("your packages" if tags.get(PACKAGES_DIGEST_TAG) else "")


@contextlib.contextmanager
def user_context(requirements: str | None = None, packages: Sequence[str] = (),
                 root: Path | None = None) -> Iterator[Path | None]:
    """A build context holding the user's own packages for the process image: the clone's
    parts the Dockerfiles copy (:data:`CONTEXT_PARTS`), with :data:`USER_FOLDER` holding
    ``requirements`` (as ``requirements.txt``) and each of ``packages`` (under
    ``packages/<n>/``) instead of what the clone has there; removed at the end. None (the
    clone itself) when there are none. Built twice from the same files, it holds the same
    bytes, so Docker's cache gives the same image (and digest): a deploy changes nothing."""
    if requirements is None and not packages:
        yield None
        return
    check_user_packages(requirements, packages)
    root = checkout_root() if root is None else root
    with tempfile.TemporaryDirectory(prefix="tiffpipe-context-") as tmp:
        context = Path(tmp)
        for part in CONTEXT_PARTS:
            shutil.copytree(root / part, context / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        user = context / USER_FOLDER
        shutil.rmtree(user, ignore_errors=True)
        user.mkdir(parents=True)
        if requirements is not None:
            shutil.copyfile(requirements, user / "requirements.txt")
        else:
            (user / "requirements.txt").write_text("")
        for number, package in enumerate(packages):
            path = Path(package).resolve()
            into = user / "packages" / f"{number:02d}" / path.name
            if path.is_dir():
                shutil.copytree(path, into, ignore=_junk)
            else:
                into.parent.mkdir(parents=True)
                shutil.copyfile(path, into)
        yield context


def _docker(args: Sequence[str], run: Run, what: str, docker: str = "docker",
            input_text: str | None = None) -> str:
    """Run one docker command; its stdout, or DockerError with the end of its output."""
    try:
        done = run([docker, *args], capture_output=True, text=True, input=input_text,
                   check=False)
    except FileNotFoundError as exc:
        raise DockerError(f"{what}: the docker command was not found: install Docker (or "
                          "deploy with --skip-build to reuse images already pushed)") from exc
    if done.returncode != 0:
        # both streams: the classic builder writes a RUN step's own output (pip's error, the
        # shell's) to stdout and only "returned a non-zero code" to stderr
        output = _ANSI.sub("", f"{done.stdout or ''}\n{done.stderr or ''}")
        lines = [line for line in output.strip().splitlines() if line.strip()]
        tail = "\n".join(lines[-15:])
        hint = _EMULATION_HINT if "exec format error" in output else ""
        raise DockerError(f"{what} failed (docker exited {done.returncode}):\n{tail}{hint}")
    return str(done.stdout)


def check_docker(run: Run = subprocess.run, docker: str = "docker") -> None:
    """DockerError unless a Docker engine answers (``docker info``)."""
    try:
        _docker(["info", "--format", "{{.ServerVersion}}"], run, "docker info", docker)
    except DockerError as exc:
        raise DockerError(f"no Docker engine: {exc}\nStart Docker (or deploy with "
                          "--skip-build to reuse the images already pushed); nothing was "
                          "changed by this step") from exc


def ecr_login(ecr: Any, run: Run = subprocess.run, docker: str = "docker") -> str:
    """``docker login`` to the account's ECR registry with a fresh token; the registry host."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    endpoint = data["proxyEndpoint"]
    _docker(["login", "--username", user, "--password-stdin", endpoint], run,
            f"docker login {endpoint}", docker, input_text=password)
    return str(endpoint).removeprefix("https://")


def _supports_provenance(run: Run, docker: str) -> bool:
    """BuildKit's ``docker build`` takes ``--provenance``; the classic builder (which writes
    no attestation manifests anyway) rejects it."""
    try:
        return "--provenance" in _docker(["build", "--help"], run, "docker build --help", docker)
    except DockerError:
        return False


def tag_prefix(arch: str) -> str:
    """How the tags of the images built for ``arch`` begin: an image is pushed as
    ``img-<arch>-<local image id>``, so that ``--skip-build`` can find the latest image of
    the architecture it deploys (ECR does not say an image's architecture)."""
    return f"img-{arch}-"


def build_and_push(step: str, arch: str, repo_uri: str, *, base_image: str | None = None,
                   context: str | Path | None = None, run: Run = subprocess.run,
                   docker: str = "docker", log: Callable[[str], None] = lambda _: None,
                   extra_build_args: Sequence[str] = ()) -> str:
    """Build ``images/<step>/Dockerfile`` for ``arch`` (arm64 or amd64), push it to
    ``repo_uri`` and return the pushed image's digest (``sha256:...``).

    The tag is the architecture and the local image id (:func:`tag_prefix`), so an unchanged
    build pushes nothing new and keeps the digest: the functions (deployed by digest) are
    then left unchanged. The registry must be logged in already (:func:`ecr_login` for ECR).
    ``context`` is the clone to build from (default: :func:`checkout_root`).
    """
    if arch not in PLATFORMS:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(PLATFORMS)}")
    context = checkout_root() if context is None else Path(context)
    dockerfile = context / "images" / step / "Dockerfile"
    if not dockerfile.is_file():
        raise DockerError(f"{dockerfile} does not exist: the {step} image cannot be built")
    local = f"tiffpipe-{step}:build-{arch}"
    args = ["build", "--platform", PLATFORMS[arch], "-f", str(dockerfile), "-t", local]
    if _supports_provenance(run, docker):
        args.append("--provenance=false")  # Lambda rejects attestation manifests
    if base_image:
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    args += [*extra_build_args, str(context)]
    log(f"  docker build {step} ({PLATFORMS[arch]})")
    _docker(args, run, f"docker build of the {step} image", docker)
    image_id = _docker(["image", "inspect", "--format", "{{.Id}}", local], run,
                       "docker image inspect", docker).strip()
    remote = f"{repo_uri}:{tag_prefix(arch)}{image_id.removeprefix('sha256:')[:16]}"
    _docker(["tag", local, remote], run, "docker tag", docker)
    log(f"  docker push {remote}")
    out = _docker(["push", remote], run, f"docker push {remote}", docker)
    found = _DIGEST.findall(out)
    if found:
        return found[-1]
    digests = _docker(["image", "inspect", "--format", "{{json .RepoDigests}}", remote], run,
                      "docker image inspect", docker)
    for ref in re.findall(r'"([^"]+)"', digests):
        name, _, digest = ref.partition("@")
        if name == repo_uri and digest.startswith("sha256:"):
            return digest
    raise DockerError(f"docker push {remote}: the pushed digest was not found in its output "
                      f"or in the image's RepoDigests ({digests.strip()})")
