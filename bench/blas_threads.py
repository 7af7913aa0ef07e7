"""What ``import cv2`` starts besides the main thread, with and without one OpenBLAS thread.

    .venv/bin/python bench/blas_threads.py [--repeat 5] [--after 0.3] [--json out.json]

numpy's OpenBLAS and the one opencv-python's wheel bundles each start threads when they load;
tiffpipe's processes set ``OPENBLAS_NUM_THREADS=1`` before either loads (change 49,
pipeline/engine/workers.py: ``one_blas_thread``). For each setting (``default``: the variable
unset; ``one``: set to 1), fresh processes (interleaved) import OpenCV, sleep ``--after``
seconds, and read from ``/proc/self/task`` (Linux) the threads other than the main one and the
CPU seconds each took so far (``schedstat``): what the process spent beside its own work. Each
figure is the median of ``--repeat`` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

#: the child (argv: seconds to sleep): its other threads and their CPU seconds, as JSON
CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import cv2  # noqa: F401 (with numpy)
imported = time.perf_counter() - t0
time.sleep(float(sys.argv[1]))
main = str(os.getpid())
cpu = [int(open(f"/proc/self/task/{t}/schedstat").read().split()[0]) / 1e9
       for t in os.listdir("/proc/self/task") if t != main]
print(json.dumps({"threads": len(cpu), "thread_cpu_s": sum(cpu), "import_s": imported}))
"""

SETTINGS = {"default": None, "one": "1"}


def run_child(setting: str, after: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if SETTINGS[setting] is not None:
        env["OPENBLAS_NUM_THREADS"] = SETTINGS[setting]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(after)], capture_output=True,
                          text=True, env=env, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"the {setting} child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--after", type=float, default=0.3,
                    help="seconds the child sleeps after the import before it counts")
    ap.add_argument("--json", help="write every child's figures here")
    args = ap.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        ap.error("needs Linux's /proc/self/task")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    names = list(SETTINGS)
    for rep in range(args.repeat):
        for setting in names if rep % 2 == 0 else names[::-1]:  # who goes first alternates
            runs[setting].append(run_child(setting, args.after))
    medians = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for s, rs in runs.items()}
    print(f"| OPENBLAS_NUM_THREADS | other threads | their CPU s in the first {args.after:g} s "
          "| import cv2 s |")
    print("|---|---|---|---|")
    for setting, m in medians.items():
        print(f"| {SETTINGS[setting] or 'unset'} | {m['threads']:g} | {m['thread_cpu_s']:.3f} "
              f"| {m['import_s']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"after_s": args.after, "runs": runs, "medians": medians}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
