"""tiffpipe from two or more checkouts on the same manifests, run alternately: one change's
effect, measured as the performance notes of docs/performance-sweep.md were.

    .venv/bin/python bench/ab.py --trees /tmp/before,. --manifests M1.json,M2.json [--runs 8]
                                 [--contact-sheet]

Each run is a fresh child process (the tree's own ``bench/children.py tiffpipe``), so a run
pays its imports and first calls as a user's does. The trees take turns within every round
(who goes first alternates), so a noisy machine slows them alike. Printed per manifest and
tree: the median wall of the runs, their fastest, and the median wall of each action
(``plan_job``, ``process_unit``, ``merge`` ...: summed over its invocations in a run), and
the median peak RSS of the run's largest process (the engine's or a worker's).
Both trees need their bytecode compiled if ``PYTHONDONTWRITEBYTECODE`` is set (the sweep
does it; ``python -m compileall -q -f TREE/pipeline``: forced, since compileall keeps bytecode
whose source has the same mtime while Python also checks the size, and a file edited twice in
one second is then compiled again at every import), or each run compiles the package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any


def run_once(tree: str, manifest: str, workers: int, contact_sheet: bool = False
             ) -> dict[str, Any]:
    script = os.path.join(tree, "bench", "children.py")
    params: dict[str, Any] = {"manifest": manifest, "workers": workers}
    if contact_sheet:  # only then: a tree from before the option still runs without it
        params["contact_sheet"] = True
    proc = subprocess.run([sys.executable, script, "tiffpipe", json.dumps(params)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {manifest} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result.get("ok"):
        raise SystemExit(f"{tree}: {manifest}: the run did not succeed: {result.get('error')}")
    return result


def _action_ms(runs: list[dict[str, Any]], action: str) -> float:
    """The median over ``runs`` of an action's summed wall time, in ms."""
    return statistics.median(r["actions"].get(action, {}).get("wall_s", 0.0) for r in runs) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="comma-separated tiffpipe checkouts")
    ap.add_argument("--manifests", required=True, help="comma-separated manifests")
    ap.add_argument("--runs", type=int, default=8, help="runs of each tree per manifest")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--contact-sheet", action="store_true",
                    help="each run also writes its contact sheet, as `tiffpipe run` does "
                    "(timed with the run; both trees' bench/children.py must take it)")
    ap.add_argument("--json", help="write every run's wall and actions here")
    args = ap.parse_args(argv)
    trees = [os.path.abspath(t) for t in args.trees.split(",") if t]
    manifests = [os.path.abspath(m) for m in args.manifests.split(",") if m]
    if len(trees) < 2:
        ap.error("--trees needs two checkouts or more")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {t: [] for t in trees}
                                                         for m in manifests}
    for i in range(args.runs):
        for m in manifests:
            for tree in trees if i % 2 == 0 else trees[::-1]:
                runs[m][tree].append(run_once(tree, m, args.workers, args.contact_sheet))
    for m in manifests:
        print(os.path.basename(m))
        for tree in trees:
            walls = [r["wall_s"] for r in runs[m][tree]]
            actions = sorted({a for r in runs[m][tree] for a in r["actions"]})
            per_action = ", ".join(
                f"{a} {_action_ms(runs[m][tree], a):.1f}" for a in actions)
            peak = statistics.median(r.get("peak_mb", 0.0) for r in runs[m][tree])
            print(f"  {tree}: {statistics.median(walls) * 1e3:.1f} ms median, "
                  f"{min(walls) * 1e3:.1f} fastest ({len(walls)} runs), largest process "
                  f"{peak:.0f} MB; actions, ms: {per_action}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({m: {t: [{"wall_s": r["wall_s"], "peak_mb": r.get("peak_mb"),
                                "actions": r["actions"]} for r in rs]
                           for t, rs in by_tree.items()} for m, by_tree in runs.items()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
