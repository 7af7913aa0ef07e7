"""Where a local run spends its time: py-spy over the engine and its workers, summarised.

    .venv/bin/python bench/profile_run.py [--compression jpeg] [--mpx 30] [--dir DIR]
                                          [--gil] [--top 25]

Writes (once, into ``--dir``) a 3-page RGB input of about ``--mpx`` megapixels, runs tiffpipe
on it (gaussian_blur, the chosen output compression) in a child process under
``py-spy record --subprocesses`` (sampling every process: the engine and each worker), and
prints, per process role, the functions with the most samples: self time (the function
itself) and inclusive time (with what it calls). ``--gil`` samples only threads holding the
GIL (CPU spent in Python, not waiting). The raw collapsed stacks stay in ``--dir`` for a
flame graph. Needs the bench extra (``pip install -e '.[bench]'``: py-spy).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from inputs import side_for, write_photo_tiff


def _frame(f: str) -> str:
    """``name (file:line)`` -> ``name (dir/file)``: one entry per function."""
    if " (" not in f:
        return f
    name, loc = f.split(" (", 1)
    path = loc.split(":")[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def summarise(raw: str, top: int) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Per role (engine: the run's process; workers: the spawned ones), the top functions by
    self and inclusive share of that role's samples."""
    by_role: dict[str, dict[str, collections.Counter]] = {}
    totals: collections.Counter = collections.Counter()
    with open(raw) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            proc = ""
            while stack.startswith("process "):  # 'process PID:"cmdline";' per ancestor
                end = stack.find('";')
                proc, stack = stack[:end + 1], stack[end + 2:]
            role = ("workers" if "multiprocessing" in proc and "resource_tracker" not in proc
                    else "other" if "resource_tracker" in proc else "engine")
            frames = [_frame(x) for x in stack.split(";")
                      if x.endswith(")") and " (" in x and not x.startswith("thread ")]
            if not frames:
                continue
            counts = by_role.setdefault(role, {"self": collections.Counter(),
                                               "incl": collections.Counter()})
            totals[role] += int(n)
            counts["self"][frames[-1]] += int(n)
            for name in set(frames):
                counts["incl"][name] += int(n)
    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for role, counts in by_role.items():
        total = max(totals[role], 1)
        out[role] = {k: [(name, 100.0 * v / total) for name, v in c.most_common(top)]
                     for k, c in counts.items()}
        out[role]["samples"] = [("samples", float(total))]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compression", default="jpeg")
    ap.add_argument("--mpx", type=float, default=30.0, help="megapixels of the 3 pages")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--gil", action="store_true", help="only threads holding the GIL")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--dir", help="inputs and the raw profile (default: a temp folder)")
    ap.add_argument("--json", help="write the summary here too")
    args = ap.parse_args()
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        print("py-spy not found: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    folder = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="tiffpipe-profile-"))
    os.makedirs(os.path.join(folder, "out"), exist_ok=True)
    side = side_for(args.mpx / 3)
    src = os.path.join(folder, f"rgb-{side}x{side}x3x3.tif")
    if not os.path.exists(src):
        write_photo_tiff(src, side, side, 3, pages=3)
    manifest = os.path.join(folder, f"profile-{args.compression}.json")
    with open(manifest, "w") as f:
        json.dump({"jobs": [{"input": src, "output": os.path.join(folder, "out", "p.tif"),
                             "ops": [{"op": "gaussian_blur", "sigma": args.sigma}],
                             "output_options": {"compression": args.compression}}]}, f)
    raw = os.path.join(folder, f"profile-{args.compression}{'-gil' if args.gil else ''}.txt")
    cmd = [py_spy, "record", "--subprocesses", "--format", "raw", "--rate", str(args.rate),
           "-o", raw] + (["--gil"] if args.gil else []) + [
        "--", sys.executable, os.path.join(HERE, "children.py"), "tiffpipe",
        json.dumps({"manifest": manifest, "workers": args.workers})]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    run = json.loads(next(line for line in reversed(proc.stdout.splitlines())
                          if line.startswith("{")))
    summary = summarise(raw, args.top)
    print(f"{3 * side * side / 1e6:.0f} Mpx RGB -> {args.compression}: {run['wall_s']:.2f} s "
          f"wall; invocations: " + ", ".join(f"{k} {v['count']} ({v['wall_s']:.2f} s)"
                                             for k, v in run["actions"].items()))
    for role, parts in summary.items():
        print(f"\n{role}: {parts['samples'][0][1]:.0f} samples")
        for kind in ("self", "incl"):
            print(f"  {'self' if kind == 'self' else 'inclusive'}:")
            for name, share in parts[kind]:
                print(f"    {share:5.1f}%  {name[:110]}")
    print(f"\nraw stacks: {raw}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": run, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
