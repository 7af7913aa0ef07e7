"""How soon a local run starts its first task: this checkout against others, alternating.

    .venv/bin/python bench/engine_startup.py [--repeat 9] [--against DIR ...] [--dir DIR]

Writes (once, into ``--dir``) a tiny job: a 2-page RGB sample (300 x 420 and 200 x 150),
gaussian_blur, 64 px tiles. Then runs it with ``run_local`` (2 workers), each run in a fresh
process, ``--repeat`` times per tree, the trees in alternating order, and prints per tree the
medians of: seconds from ``run_local``'s start to the first Lambda invoke, the engine's CPU
seconds until then, and the whole run's seconds, with their ratio to the first tree (this
checkout; a task counts whether a worker or the engine's own process runs it). ``--against``
takes other checkouts of tiffpipe, e.g. an earlier commit made with
``git worktree add /tmp/before <commit>``; they run on this checkout's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: run in the child, with the tree under test first on sys.path
CHILD = r"""
import json, os, sys, time
if __name__ == "__main__":
    from pipeline import runner
    from pipeline.engine import workers
    first = []
    def timed(original):
        def invoke(self, function, event):
            if not first:
                first.extend([time.perf_counter(), time.process_time()])
            return original(self, function, event)
        return invoke
    # tasks run in the pool, or (trees with InProcess) in the engine's process
    for cls in (workers.WorkerPool, getattr(workers, "InProcess", None)):
        if cls is not None:
            cls.invoke = timed(cls.invoke)
    t0, c0 = time.perf_counter(), time.process_time()
    result = runner.run_local(os.path.join(sys.argv[1], "m.json"), 2)
    t1 = time.perf_counter()
    assert result.ok, result.error
    print(json.dumps({"first_invoke_s": first[0] - t0, "engine_cpu_to_first_s": first[1] - c0,
                      "run_s": t1 - t0}))
"""
KEYS = ("first_invoke_s", "engine_cpu_to_first_s", "run_s")


def write_job(folder: str) -> None:
    from pipeline.sample import SamplePage, write_sample

    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(os.path.join(folder, "rgb.tif")):
        write_sample(os.path.join(folder, "rgb.tif"),
                     [SamplePage(300, 420, 3), SamplePage(200, 150, 3)], tile=128)
    with open(os.path.join(folder, "m.json"), "w") as f:
        json.dump({"jobs": [{"input": "rgb.tif", "output": "out.tif", "tile": 64,
                             "output_options": {"tile": 64},
                             "ops": [{"op": "gaussian_blur", "sigma": 1.5}]}]}, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--against", action="append", default=[], help="another checkout")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="tiffpipe-startup-")
    sys.path.insert(0, ROOT)
    write_job(folder)
    script = os.path.join(folder, "measure.py")
    with open(script, "w") as f:
        f.write(CHILD)
    trees = [ROOT, *(os.path.abspath(t) for t in args.against)]
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for i in range(args.repeat):
        for tree in trees if i % 2 == 0 else trees[::-1]:
            out = subprocess.run([sys.executable, script, folder], capture_output=True,
                                 text=True, check=True, cwd=folder,
                                 env={**os.environ, "PYTHONPATH": tree})
            runs[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = {k: statistics.median(r[k] for r in runs[ROOT]) for k in KEYS}
    report = {}
    for tree in trees:
        med = {k: statistics.median(r[k] for r in runs[tree]) for k in KEYS}
        report[tree] = {"n": len(runs[tree]), **{k: round(v, 3) for k, v in med.items()},
                        **{f"{k}_ratio": round(med[k] / base[k], 2) for k in KEYS}}
    print(json.dumps({"repeat": args.repeat, "load_average": os.getloadavg(),
                      "trees": report}, indent=2))


if __name__ == "__main__":
    main()
