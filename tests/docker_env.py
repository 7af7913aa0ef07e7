"""A real Docker engine for tests/test_images.py, and what the images need around it.

- ``start_engine``: uses a running engine (``$DOCKER_HOST``, the machine's
  /var/run/docker.sock, or the one these helpers keep in ``STATE_DIR``) or starts
  ``dockerd`` (Debian's docker.io) as root with its data root, exec root, pidfile and socket
  in ``STATE_DIR``, no bridge and no iptables rules. The data root stays between runs, so
  images and build layers are cached; the last session using that engine stops it.
- ``ensure_standin_base``: no registry can be pulled from here, so the AWS base image is
  replaced by a stand-in made locally: a debootstrapped Debian with Python in a venv at
  /var/lang, ``awslambdaric`` (requirements/lambda-standin.txt) and a /lambda-entrypoint.sh
  that runs it on CMD, like the AWS base. The image Dockerfiles are the same for both.
- ``Wheelhouse``: the locked wheels, downloaded by this machine's pip (which trusts this
  machine's certificates) and served to ``docker build`` over loopback.
- ``Registry``: Debian's docker-registry on 127.0.0.1 (Docker allows plain HTTP there).
- ``RuntimeAPI``: the Lambda Runtime API (next / response / error / init error) that the
  Runtime Interface Client of a container polls; ``invoke`` sends it one event.
- ``LambdaContainer``: an image run as a Lambda execution environment on its RuntimeAPI;
  ``InvokeFront``: the Lambda Invoke API in front of such containers (for Lambda clients
  and Step Functions Local).

Where no engine can be started (not root, no apt-get to install docker.io, dockerd fails)
the helpers raise ``Unavailable`` with the reason, and the tests skip with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("TIFFPIPE_DOCKER_DIR", "/var/tmp/tiffpipe-docker"))
STANDIN_IMAGE = "tiffpipe-lambda-base:local"
STANDIN_SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36
STANDIN_MIRROR = os.environ.get("TIFFPIPE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
APT_PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap",
                "docker-registry": "docker-registry"}
#: a fixed port for the wheelhouse: its URL is a build arg, and a changed build arg would
#: invalidate the cached pip layers of every later build
WHEELHOUSE_PORT = int(os.environ.get("TIFFPIPE_WHEELHOUSE_PORT", "38419"))
LOCKS = (ROOT / "requirements/images-common.txt", ROOT / "images/process/requirements.txt")
STANDIN_LOCK = ROOT / "requirements/lambda-standin.txt"

ENTRYPOINT_SH = """#!/bin/sh
# Stand-in for the AWS base image's entrypoint: run the Runtime Interface Client on the
# handler named by CMD, against the Runtime API at $AWS_LAMBDA_RUNTIME_API.
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  echo "lambda-entrypoint: set AWS_LAMBDA_RUNTIME_API (this stand-in base has no emulator)" >&2
  exit 64
fi
cd "${LAMBDA_TASK_ROOT:-/var/task}" || exit 1
exec python -m awslambdaric "$@"
"""


class _Server(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on loopback whose peers may vanish (a container removed in
    the middle of a request) without a traceback on the test's output."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Unavailable(Exception):
    """No Docker engine can be had here; the message says why."""


def machine() -> str:
    """``x86_64`` or ``aarch64``: the only platform an engine without emulation builds."""
    return os.uname().machine


def platform() -> str:
    return {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}[machine()]


def run(cmd: list[str], *, timeout: float = 600, env: dict[str, str] | None = None,
        input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure raise with the output's tail."""
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, input=input,
                          check=False)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n"
                           f"{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# --- tools and the engine ------------------------------------------------------------------


def ensure_tools() -> None:
    """dockerd, debootstrap and docker-registry, installed with apt-get (as root) if missing."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if not _which(tool)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{', '.join(missing)} not installed, and not root to install them")
    if not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(missing)} not installed, and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _flock(STATE_DIR / "apt.lock"):
        try:
            run(["apt-get", "update", "-q"], timeout=600, env=env)
            run(["apt-get", "install", "-y", "-q", *missing], timeout=900, env=env)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"apt-get install {' '.join(missing)} failed: {exc}") from exc


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def lock(name: str) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock between test sessions that share the engine (e.g. around commands
    that use fixed image tags)."""
    return _flock(STATE_DIR / f"{name}.lock")


@contextlib.contextmanager
def _flock(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Engine:
    """A Docker engine and the ``docker`` client that talks to it."""

    host: str  # DOCKER_HOST
    started: bool = False  # dockerd was started by these helpers (so they may stop it)
    _users: Any = None  # the shared lock held while this session uses the engine

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, timeout: float = 600, input: bytes | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([_docker_client(), *args], timeout=timeout, env=self.env, input=input,
                   check=check)

    def image_exists(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def inspect(self, ref: str, fmt: str) -> str:
        return self.docker("image", "inspect", "-f", fmt, ref).stdout.strip()

    def close(self) -> None:
        """Stop dockerd if no other session still uses it (it may have started it, or found
        the one an earlier run left)."""
        if self._users is None:
            return
        users, self._users = self._users, None
        try:
            fcntl.flock(users, fcntl.LOCK_UN)
            try:  # held while stopping, so no session starts using the engine meanwhile
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another session is using it: it stops it when done
            # old builds' images, but not recent ones: the builder stages' images are
            # dangling too, and they are the build cache
            self.docker("image", "prune", "-f", "--filter", "until=168h", check=False,
                        timeout=120)
            _stop_dockerd()
        finally:
            users.close()


def _docker_client() -> str:
    client = shutil.which("docker")
    if not client:
        raise Unavailable("no docker client on PATH (Debian: apt-get install docker.io)")
    return client


def _client_exists() -> bool:
    return shutil.which("docker") is not None


def _answers(host: str) -> bool:
    try:
        proc = subprocess.run([_docker_client(), "version", "-f", "{{.Server.Version}}"],
                              env={**os.environ, "DOCKER_HOST": host}, capture_output=True,
                              timeout=20, check=False)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return proc.returncode == 0


def start_engine() -> Engine:
    """An engine for this session: the one at $DOCKER_HOST if it answers, else the one these
    helpers keep in STATE_DIR, started if needed."""
    if os.environ.get("DOCKER_HOST") and _answers(os.environ["DOCKER_HOST"]):
        return Engine(os.environ["DOCKER_HOST"])
    if not os.environ.get("DOCKER_HOST") and _client_exists() and \
            _answers("unix:///var/run/docker.sock"):
        return Engine("unix:///var/run/docker.sock")  # the machine's own engine
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    sock = STATE_DIR / "docker.sock"
    host = f"unix://{sock}"
    users = open(STATE_DIR / "users.lock", "a")  # noqa: SIM115 - held for the session
    fcntl.flock(users, fcntl.LOCK_SH)
    with _flock(STATE_DIR / "start.lock"):
        if _answers(host):
            return Engine(host, started=False, _users=users)
        if os.geteuid() != 0:
            users.close()
            raise Unavailable("not root: cannot start dockerd")
        _stop_dockerd()  # a stale pidfile of a dockerd that died would stop the new one
        log = open(STATE_DIR / "dockerd.log", "ab")  # noqa: SIM115 - dockerd's own
        global _DOCKERD
        _DOCKERD = subprocess.Popen(
            [_which("dockerd") or "dockerd", "--data-root", str(STATE_DIR / "data"),
             "--exec-root", str(STATE_DIR / "exec"), "--pidfile", str(STATE_DIR / "dockerd.pid"),
             "--host", host, "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if _answers(host):
                return Engine(host, started=True, _users=users)
            time.sleep(0.5)
        tail = (STATE_DIR / "dockerd.log").read_text(errors="replace")[-2000:]
        _stop_dockerd()
        users.close()
        raise Unavailable(f"dockerd did not start within 90 s; its log ends:\n{tail}")


#: the dockerd this process started (its child: it must reap it)
_DOCKERD: subprocess.Popen[bytes] | None = None


def _stop_dockerd() -> None:
    """Stop the dockerd of STATE_DIR's pidfile (only if that pid is still that dockerd)."""
    pidfile = STATE_DIR / "dockerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if not cmdline[0].endswith(b"dockerd") or str(pidfile).encode() not in cmdline:
        return
    if _DOCKERD is not None and _DOCKERD.pid == pid:
        _DOCKERD.terminate()
        try:
            _DOCKERD.wait(30)  # it stops its containers and its containerd first
        except subprocess.TimeoutExpired:
            _DOCKERD.kill()
            _DOCKERD.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):  # dockerd stops its containers and its containerd first
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)


# --- the wheelhouse ------------------------------------------------------------------------


def _manylinux_platforms(glibc_minor: int) -> list[str]:
    arch = machine()
    return [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)] + \
        [f"manylinux2014_{arch}"]


class Wheelhouse:
    """The locked wheels for a Python version on this machine's architecture, downloaded
    once into STATE_DIR/wheels (pip skips files it has) and served over loopback."""

    def __init__(self, python_version: str, glibc_minor: int = 36):
        self.dir = STATE_DIR / "wheels" / f"cp{python_version.replace('.', '')}-{machine()}"
        self.python_version = python_version
        self.glibc_minor = glibc_minor
        self._server: _Server | None = None

    def download(self, *locks: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if all(self._has(pin) for lock in locks for pin in _pins(lock)):
            return  # pip would only ask the index again
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--python-version", self.python_version,
               "--implementation", "cp", "-d", str(self.dir)]
        for plat in _manylinux_platforms(self.glibc_minor):
            cmd += ["--platform", plat]
        for lock in locks:
            cmd += ["-r", str(lock)]
        with _flock(self.dir / ".lock"):
            run(cmd, timeout=900)

    def _has(self, pin: str) -> bool:
        name, _, version = pin.partition("==")
        stem = re.sub(r"[-_.]+", "_", name).lower()
        return any(self.dir.glob(f"{stem}-{version}-*.whl"))

    def serve(self) -> str:
        """Start serving; returns the find-links URL."""
        directory = str(self.dir)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, directory=directory, **kwargs)

            def log_message(self, *args: Any) -> None:
                pass

        for port in (WHEELHOUSE_PORT, 0):  # busy (another session): any port, less caching
            try:
                self._server = _Server(("127.0.0.1", port), Quiet)
                break
            except OSError:
                continue
        assert self._server is not None
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def close(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def _pins(lock: Path) -> list[str]:
    """The ``name==version`` lines of a lock (its ``--hash`` lines left out)."""
    lines = (line.split("#")[0].strip().removesuffix("\\").strip()
             for line in lock.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("--")]


# --- the stand-in base ---------------------------------------------------------------------


def _standin_recipe() -> str:
    """What the stand-in is made of: a changed recipe makes a new one."""
    text = f"{STANDIN_SUITE}\n{ENTRYPOINT_SH}\n{STANDIN_LOCK.read_text()}\nv2"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_standin_base(engine: Engine) -> str:
    """The stand-in Lambda base image, made unless an image of the same recipe exists."""
    recipe = _standin_recipe()
    label = "{{ index .Config.Labels \"tiffpipe.standin\" }}"
    with _flock(STATE_DIR / "standin.lock"):
        if engine.image_exists(STANDIN_IMAGE) and engine.inspect(STANDIN_IMAGE, label) == recipe:
            return STANDIN_IMAGE
        if not _which("debootstrap"):
            ensure_tools()
        with tempfile.TemporaryDirectory(prefix="standin-", dir=STATE_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs"
            run([_which("debootstrap") or "debootstrap", "--variant=minbase",
                 "--include=python3,python3-venv,ca-certificates", STANDIN_SUITE, str(rootfs),
                 STANDIN_MIRROR], timeout=1200)
            python = _finish_rootfs(rootfs)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            changes = [
                ("ENV PATH=/var/lang/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                 "/sbin:/bin"),
                "ENV LANG=C.UTF-8", "ENV LAMBDA_TASK_ROOT=/var/task",
                "ENV LAMBDA_RUNTIME_DIR=/var/runtime", "WORKDIR /var/task",
                'ENTRYPOINT ["/lambda-entrypoint.sh"]', f"LABEL tiffpipe.standin={recipe}",
                f"LABEL tiffpipe.python={python}"]
            args = [_docker_client(), "import"]
            for change in changes:
                args += ["--change", change]
            proc = subprocess.run([*args, "-", STANDIN_IMAGE], stdin=tar.stdout, env=engine.env,
                                  capture_output=True, timeout=600, check=False)
            tar.wait()
            if proc.returncode != 0:
                raise RuntimeError(f"docker import failed: {proc.stderr.decode()[-2000:]}")
    return STANDIN_IMAGE


def _finish_rootfs(rootfs: Path) -> str:
    """Python in a venv at /var/lang (as the AWS base has it: ``python`` and ``pip`` on PATH),
    awslambdaric from the wheelhouse, the entrypoint, and no apt caches, docs, find or xargs.
    Returns the Python version (``3.11``)."""
    run(["chroot", str(rootfs), "python3", "-m", "venv", "/var/lang"], timeout=300)
    version = run(["chroot", str(rootfs), "/var/lang/bin/python", "-c",
                   "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    house = Wheelhouse(version)
    house.download(STANDIN_LOCK)
    inside = rootfs / "tmp/wheels"
    shutil.copytree(house.dir, inside)
    shutil.copy(STANDIN_LOCK, inside / "lock.txt")
    run(["chroot", str(rootfs), "/var/lang/bin/pip", "install", "-q", "--no-index",
         "--disable-pip-version-check", "--no-deps", "--find-links", "/tmp/wheels",
         "-r", "/tmp/wheels/lock.txt"], timeout=300)
    shutil.rmtree(inside)
    entry = rootfs / "lambda-entrypoint.sh"
    entry.write_text(ENTRYPOINT_SH)
    entry.chmod(0o755)
    (rootfs / "var/task").mkdir(mode=0o755, exist_ok=True)
    (rootfs / "var/runtime").mkdir(mode=0o755, exist_ok=True)
    # the AWS base (Amazon Linux 2023 minimal) has no find or xargs: neither has the stand-in,
    # so a Dockerfile that uses them fails here too
    for tool in ("usr/bin/find", "usr/bin/xargs"):
        (rootfs / tool).unlink(missing_ok=True)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                 "usr/share/man", "usr/share/info", "usr/share/locale"):
        for child in (rootfs / junk).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    return version


# --- the images ----------------------------------------------------------------------------


def base_python(engine: Engine, base: str) -> str:
    """The Python version (``3.11``) of a stand-in base."""
    return engine.inspect(base, "{{ index .Config.Labels \"tiffpipe.python\" }}")


def build_args(base: str, find_links: str) -> dict[str, str]:
    """The build args the tests use: the stand-in base, and pip on the wheelhouse only."""
    return {"BASE_IMAGE": base, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": find_links}


def build_context(into: Path) -> Path:
    """What the Dockerfiles use from the repository (pipeline/, images/, requirements/),
    copied into a folder: a small, clean build context (the checkout's own holds .venv)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("pipeline", "images", "requirements"):
        shutil.copytree(ROOT / part, into / part, ignore=skip, dirs_exist_ok=True)
    return into


def build_image(engine: Engine, context: Path, step: str, tag: str,
                args: dict[str, str]) -> float:
    """``docker build`` one image for this machine's platform; returns the seconds it took."""
    started = time.monotonic()
    cmd = ["build", "--platform", platform(), "--network", "host", "-f",
           str(context / "images" / step / "Dockerfile"), "-t", tag]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    engine.docker(*cmd, str(context), timeout=1800)
    return time.monotonic() - started


# --- a local registry ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """Debian's docker-registry on 127.0.0.1, storing in a temporary folder."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="registry-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        ensure_tools()
        config = Path(self._tmp.name) / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self._tmp.name}/storage\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n")
        log = open(Path(self._tmp.name) / "log", "wb")  # noqa: SIM115 - the registry's own
        self._proc = subprocess.Popen([_which("docker-registry") or "docker-registry", "serve",
                                       str(config)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2).close()
                return self.address
            if self._proc.poll() is not None:
                break
            time.sleep(0.2)
        log = (Path(self._tmp.name) / "log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"docker-registry did not start: {log}")

    def compressed_size(self, repo: str, reference: str) -> int:
        """The bytes a pull of repo:reference transfers: its layers, compressed."""
        req = urllib.request.Request(
            f"http://{self.address}/v2/{repo}/manifests/{reference}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                               "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            manifest = json.load(resp)
        return sum(int(layer["size"]) for layer in manifest["layers"])

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """The digest the registry serves for repo:reference (a tag or a digest)."""
        req = urllib.request.Request(
            f"http://{self.address}/v2/{repo}/manifests/{reference}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                               "application/vnd.oci.image.manifest.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return str(resp.headers["Docker-Content-Digest"])
        except OSError:
            return None

    def close(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._tmp.cleanup()


# --- the Lambda Runtime API ----------------------------------------------------------------


@dataclass
class Invocation:
    """What the function answered: its result, or its error (``errorType``, ...)."""

    ok: bool
    payload: Any


@dataclass
class _Pending:
    event: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: Invocation | None = None


class RuntimeAPI:
    """The Lambda Runtime API of one execution environment, for the Runtime Interface Client
    of one container: ``invoke`` queues an event that the client's ``next`` long poll takes,
    and waits for the client to post its response or error."""

    PREFIX = "/2018-06-01/runtime"

    def __init__(self, function: str):
        self.function = function
        self.init_error: dict[str, Any] | None = None
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: dict[str, _Pending] = {}
        self._closed = threading.Event()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the client keeps its connection alive

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{api.PREFIX}/invocation/next":
                    return self._send(404, b'{"errorType":"NotFound"}')
                while not api._closed.is_set():
                    try:
                        request_id = api._queue.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    event = api._pending[request_id].event
                    return self._send(200, json.dumps(event).encode(), {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int((time.time() + 900) * 1000)),
                        "Lambda-Runtime-Invoked-Function-Arn":
                            f"arn:aws:lambda:us-east-1:000000000000:function:{api.function}",
                        "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-"
                                                   f"{uuid.uuid4().hex[:24]};Sampled=0"})
                self.close_connection = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                payload = json.loads(body) if body else None
                parts = self.path[len(api.PREFIX):].strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_error = payload or {"errorType": "UnknownInitError"}
                elif len(parts) == 3 and parts[0] == "invocation" and parts[1] in api._pending:
                    pending = api._pending[parts[1]]
                    pending.result = Invocation(parts[2] == "response", payload)
                    pending.done.set()
                else:
                    return self._send(404, b'{"errorType":"NotFound"}')
                self._send(202, b'{"status":"OK"}')

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def invoke(self, event: Any, timeout: float = 300,
               alive: Callable[[], bool] | None = None) -> Invocation:
        """Send one event and wait for the function's answer."""
        request_id = str(uuid.uuid4())
        pending = self._pending[request_id] = _Pending(event)
        self._queue.put(request_id)
        deadline = time.monotonic() + timeout
        while not pending.done.wait(0.5):
            if self.init_error is not None:
                raise RuntimeError(f"{self.function}: init failed: {self.init_error}")
            if alive is not None and not alive():
                raise RuntimeError(f"{self.function}: the container stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.function}: no answer in {timeout} s")
        del self._pending[request_id]
        assert pending.result is not None
        return pending.result

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()


class LambdaContainer:
    """One image run as a Lambda execution environment: read-only root, a 512 MB /tmp,
    Lambda's non-root user, the host's network (the engine has no bridge), and the given
    folders mounted at their own paths so the events' local URLs hold inside."""

    def __init__(self, engine: Engine, image: str, function: str, mounts: list[Path],
                 env: dict[str, str] | None = None, memory_mb: int = 2048):
        self.engine = engine
        self.api = RuntimeAPI(function)
        self.name = f"tiffpipe-test-{function}-{uuid.uuid4().hex[:8]}"
        args = ["run", "-d", "--name", self.name, "--network", "host", "--read-only",
                "--tmpfs", "/tmp:rw,exec,size=512m", "--user", "993:990",
                "--memory", f"{memory_mb}m",
                "-e", f"AWS_LAMBDA_RUNTIME_API={self.api.address}",
                "-e", f"AWS_LAMBDA_FUNCTION_NAME={function}",
                "-e", f"AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory_mb}",
                "-e", "AWS_REGION=us-east-1", "-e", "AWS_DEFAULT_REGION=us-east-1"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        for path in mounts:
            args += ["-v", f"{path}:{path}"]
        engine.docker(*args, image, timeout=120)

    def alive(self) -> bool:
        proc = self.engine.docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return proc.stdout.strip() == "true"

    def invoke(self, event: Any, timeout: float = 300) -> Invocation:
        return self.api.invoke(event, timeout, self.alive)

    def logs(self) -> str:
        proc = self.engine.docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def close(self) -> None:
        self.engine.docker("rm", "-f", self.name, check=False, timeout=60)
        self.api.close()


class InvokeFront:
    """The Lambda Invoke API (``POST /2015-03-31/functions/{name or ARN}/invocations``) in
    front of running LambdaContainers: what Step Functions Local's LAMBDA_ENDPOINT, or any
    Lambda client, calls. A function error answers 200 with ``X-Amz-Function-Error``."""

    def __init__(self, functions: dict[str, LambdaContainer]):
        by_name = {c.api.function: c for c in functions.values()}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, obj: Any, headers: dict[str, str]) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                for key, value in {**headers, "Content-Type": "application/json",
                                   "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urllib.parse.urlsplit(self.path).path
                match = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations", path)
                # a name, or an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])
                ref = urllib.parse.unquote(match.group(1)) if match else ""
                name = ref.split(":function:")[-1].split(":")[0]
                if name not in by_name:
                    return self._send(404, {"Type": "User", "Message": f"Function not found: "
                                            f"{ref or path}"},
                                      {"X-Amzn-ErrorType": "ResourceNotFoundException"})
                answer = by_name[name].invoke(json.loads(body) if body else {})
                headers = {"X-Amz-Executed-Version": "$LATEST"}
                if not answer.ok:
                    headers["X-Amz-Function-Error"] = "Unhandled"
                self._send(200, answer.payload, headers)

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
