"""``tiffpipe``: run, validate, ops, demo. Parses arguments, calls the runner, sets the exit code.

Exit codes: 0 all jobs succeeded; 1 a job (or the run) failed; 2 invalid manifest or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pipeline import __version__
from pipeline.errors import InputNotFoundError, ManifestError, OutputNotWritableError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiffpipe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"tiffpipe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every job of a manifest on this machine")
    run.add_argument("manifest", help="manifest JSON (local path or s3:// URL)")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="worker processes (default: the number of cores)")
    run.add_argument("--work", help="work location for intermediate tiles (folder or s3:// "
                                    "prefix; default: .tiffpipe-work/ next to the manifest)")
    run.add_argument("--keep-work", action="store_true", help="keep the work files")
    run.add_argument("--report", help="run report JSON (default: <manifest>.report.json next "
                                      "to the manifest)")
    run.add_argument("--quiet", action="store_true", help="no progress and no summary")

    val = sub.add_parser("validate", help="check a manifest without running it")
    val.add_argument("manifest")

    ops = sub.add_parser("ops", help="list the operations, their parameters and halos")
    ops.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="generate a sample TIFF and manifest, and run it")
    demo.add_argument("--dir", default="example", help="where (default: ./example)")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "validate": cmd_validate, "ops": cmd_ops, "demo": cmd_demo}
    try:
        return handler[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `tiffpipe ops | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _validated(manifest: str) -> list[Any] | None:
    from pipeline.runner import validate

    try:
        return validate(manifest)
    except ManifestError as exc:
        print(f"tiffpipe: invalid manifest {exc}", file=sys.stderr)
    except InputNotFoundError as exc:
        print(f"tiffpipe: {exc}", file=sys.stderr)
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    jobs = _validated(args.manifest)
    if jobs is None:
        return EXIT_USAGE
    print(f"{args.manifest}: valid, {len(jobs)} job(s)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import run_local
    from pipeline.ui import RunProgress, print_summary

    if args.workers < 1:
        print("tiffpipe: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    jobs = _validated(args.manifest)
    if jobs is None:
        return EXIT_USAGE
    try:
        with RunProgress(jobs, quiet=args.quiet) as progress:
            result = run_local(args.manifest, args.workers, work=args.work, report=args.report,
                               keep_work=args.keep_work, listener=progress)
    except OutputNotWritableError as exc:
        print(f"tiffpipe: the run report cannot be written: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if result.report is None:
        print(f"tiffpipe: the run failed: {result.error}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print_summary(result.report)
        print(f"report: {result.report_url}")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_ops(args: argparse.Namespace) -> int:
    from pipeline.core.ops import OPS

    if args.json:
        doc = {name: {"call": op.help, "exact": op.exact, "halo": op.halo_help,
                      "params": [{"name": p.name, "type": p.kind, "accepts": p.expectation(),
                                  "required": p.required, "default": p.default, "help": p.help}
                                 for p in op.params]}
               for name, op in OPS.items()}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    for name, op in OPS.items():
        print(f"{name}: {op.help}")
        print(f"  halo: {op.halo_help}; {op.exact}")
        for p in op.params:
            print(f"  {p.describe()}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import prepare_demo

    manifest = prepare_demo(args.dir)
    print(f"sample and manifest ready: {manifest}", file=sys.stderr)
    return cmd_run(argparse.Namespace(manifest=manifest, workers=args.workers, work=None,
                                      keep_work=False, report=None, quiet=False))


if __name__ == "__main__":
    sys.exit(main())
