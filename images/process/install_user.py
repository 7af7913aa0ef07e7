"""The process image's user stage: install the user's own packages (custom ops) into one
folder the image copies next to the locked ones. Run by images/process/Dockerfile as

    python install_user.py SOURCE TARGET LOCKED_PATH LOCKS_DIR

SOURCE holds ``requirements.txt`` (pip requirement lines) and ``packages/*/*`` (wheels, or
project folders pip builds); TARGET gets what they install. The locked packages
(LOCKED_PATH, ``/opt/deps:/opt/opencv``) are on the path pip sees, and every lock in
LOCKS_DIR constrains it: a dependency the lock has (numpy, boto3, ...) is taken from there,
never installed twice or at another version, and a requirement that needs another version
fails the build here, not the function at run time. Nothing to install: TARGET is empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


def _has_requirements(path: Path) -> bool:
    if not path.is_file():
        return False
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return any(lines)


def _pins_only(lock: Path, folder: Path) -> Path:
    """A copy of ``lock`` in ``folder`` with its pins alone (``name==version``): the locks
    carry their wheels' hashes for the deps stages' --require-hashes, and a constraint with a
    hash would put pip in hash-checking mode for the user's packages too."""
    lines = (line.split("#")[0].strip().removesuffix("\\").strip()
             for line in lock.read_text().splitlines())
    pins = [line for line in lines if line and not line.startswith("--")]
    path = folder / f"constraints-{lock.name}"
    path.write_text("\n".join(pins) + "\n")
    return path


def main(source: Path, target: Path, locked: str, locks: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    requirements = source / "requirements.txt"
    packages = sorted(str(p) for p in source.glob("packages/*/*"))
    listed = _has_requirements(requirements)
    if not packages and not listed:
        return
    prefix = Path(tempfile.mkdtemp(prefix="user-prefix-"))  # its site-packages: to target
    cmd = [sys.executable, "-m", "pip", "install", "--no-cache-dir",
           "--disable-pip-version-check", "--no-compile", "--no-warn-script-location",
           "--prefix", str(prefix)]
    for lock in sorted(locks.glob("*.txt")):
        cmd += ["-c", str(_pins_only(lock, prefix))]
    if listed:
        cmd += ["-r", str(requirements)]
    subprocess.run([*cmd, *packages], check=True, env={**os.environ, "PYTHONPATH": locked})
    scheme = sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})
    for lib in dict.fromkeys([scheme["purelib"], scheme["platlib"]]):
        for item in Path(lib).glob("*") if Path(lib).is_dir() else []:
            shutil.move(str(item), target / item.name)
    shutil.rmtree(prefix)  # (its bin/: console scripts Lambda never runs)
    # a package of the user's that brings a module the locks have (a second cv2, numpy)
    # would be copied over it: refused
    theirs = {p.name for p in target.iterdir()} - {"__pycache__"}
    ours = {p.name for folder in locked.split(":") for p in Path(folder).iterdir()}
    clash = sorted(n for n in theirs & ours if not n.endswith((".dist-info", ".data")))
    if clash:
        sys.exit(f"your packages install {', '.join(clash)}, which the image's locked "
                 "packages have already: leave them out (the image has them), or move the "
                 "lock's version (images/README.md, The locks)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
