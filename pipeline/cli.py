"""The ``tiffpipe`` command: parses arguments, calls the runner (or the AWS and preview
modules), sets the exit code.

Exit codes: 0 all jobs succeeded (or were skipped); 1 a job (or the run) failed; 2 invalid
manifest or usage; 75 temporary, try again later (a run of the manifest, or to its report,
going on; an AWS endpoint not reached); 128 + the signal when stopped by one (130 Ctrl-C,
143 SIGTERM, 129 the terminal hung up).
The ``tiffpipe`` console script is :func:`console` (:func:`main`, then a quick exit);
:func:`main` is what a caller in the same process uses.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline import __version__
from pipeline.errors import (
    EngineError,
    InputNotFoundError,
    ManifestError,
    OutputNotWritableError,
    RunningAlreadyError,
    StorageError,
    WorkLocationError,
    one_line,
)

if TYPE_CHECKING:
    from pipeline.engine.local import StopRequest
    from pipeline.runner import RunResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: "temporary, try again later" (sysexits.h's EX_TEMPFAIL, what cron and mail tools take
#: so): a run of the same manifest (or report) going on, an AWS endpoint not reached
EXIT_TEMPFAIL = 75
#: 128 + SIGINT: a command stopped by Ctrl-C (the shell's convention); 128 + SIGTERM: 143
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: what a command stopped by Ctrl-C outside a run says (a run says what it stopped)
INTERRUPTED_LINE = "tiffpipe: interrupted"

#: what ``tiffpipe --help`` says first (every command is listed below it)
DESCRIPTION = """\
Split giant multi-page TIFFs into tiles, process them in parallel and merge them again, on
this machine or on AWS. A manifest (JSON) lists the jobs: input, output, ops.

  run, validate, demo  run a manifest's jobs on this machine; check a manifest; try a sample
  ops, preview         list the operations; render a thumbnail of a TIFF page
  inspect              how tiffpipe reads TIFF files, page by page (headers only)
  estimate             what a manifest's run on AWS would cost and take
  start, status        run a manifest on a deployed AWS stack; follow a run there

Exit codes: 0 every job succeeded (or was skipped); 1 a job (or the run) failed; 2 invalid
manifest or usage; 75 try again later (the manifest running already; an AWS endpoint not
reached); 130 stopped by Ctrl-C (143 by SIGTERM, 129 by its terminal's hang-up).
`tiffpipe COMMAND --help`: a command's options."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiffpipe", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tiffpipe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every job of a manifest on this machine")
    run.add_argument("manifest", help="manifest JSON (local path or s3:// URL; -: read from "
                                      "stdin, its relative paths from the current folder)")
    run.add_argument("--workers", type=int, default=None,
                     help="tasks run at once: this process and workers - 1 worker processes, "
                          "started when needed (default: the cores this process may use)")
    run.add_argument("--interpreter", choices=("auto", "direct", "moto"), default="auto",
                     help="of the state machine: tiffpipe's own (direct, starts at once) or "
                          "moto's; auto: direct unless the definition needs more")
    run.add_argument("--definition", metavar="PATH",
                     help="the state machine definition to run (default: the one shipped, "
                          "statemachine.asl.json): test an edited copy before deploying it")
    run.add_argument("--work", help="work location for intermediate tiles (folder or s3:// "
                                    "prefix; default: .tiffpipe-work/ next to a local manifest, "
                                    "in the current folder for one on stdin or in a pipe, the "
                                    "temp folder for an s3:// one)")
    run.add_argument("--keep-work", action="store_true",
                     help="keep the work files, and the execution's events in "
                          "execution-history.json there")
    run.add_argument("--report", help="run report JSON (default: <manifest stem>.report.json next "
                                      "to the manifest; in the current folder for one on stdin "
                                      "or in a pipe)")
    run.add_argument("--overwrite-report", action="store_true",
                     help="replace a file at the report's path even if it is not a run report "
                          "(never a job's input or output)")
    run.add_argument("--quiet", action="store_true",
                     help="no progress and no summary (warnings and errors still go to stderr: "
                          "each failed job, its input and error, and the report's path)")
    run.add_argument("--no-contact-sheet", action="store_true",
                     help="do not write <report>.contact.png (input and output thumbnails)")

    val = sub.add_parser("validate", help="check a manifest (or a state machine definition) "
                                          "without running it")
    val.add_argument("manifest", nargs="?", help="manifest JSON (as run's; -: stdin)")
    val.add_argument("--definition", metavar="PATH",
                     help="check this state machine definition as `run --definition` does "
                          "before its run (JSON, the states' structure, paths and fields, "
                          "what the local engine runs, the contract with the code), with or "
                          "without a manifest")
    val.add_argument("--inputs", action="store_true",
                     help="also read every job's input page headers (IFDs, no pixels; a "
                          "scan's files too) and check each job as the run's PlanJob will: "
                          "every problem, per job; exit 2 if a job would fail")
    val.add_argument("--threads", type=int, default=None,
                     help="with --inputs: inputs read at once (default: 16)")

    insp = sub.add_parser("inspect", help="how tiffpipe sees TIFF files, page by page "
                                          "(page headers only)")
    insp.add_argument("files", nargs="+", metavar="FILE",
                      help="TIFF files (local paths or s3:// URLs)")
    insp.add_argument("--ops", metavar="JSON",
                      help="an op chain, e.g. '[{\"op\": \"to_gray\"}]': whether it runs on "
                           "each page, and the output page it makes")
    insp.add_argument("--output-options", metavar="JSON",
                      help="a manifest's output_options, e.g. '{\"compression\": \"jpeg\"}': "
                           "the ops (none: the empty chain) checked against that output "
                           "(default: the defaults, zstd)")
    insp.add_argument("--json", action="store_true",
                      help="every page of every file, as JSON (the text groups identical pages)")

    ops = sub.add_parser("ops", help="list the operations, their parameters and halos")
    ops.add_argument("--json", action="store_true", help="machine-readable output")

    est = sub.add_parser("estimate", help="cost and time of a manifest's run on AWS, on paper")
    est.add_argument("manifest", help="manifest JSON (-: stdin; a scan's: the jobs a run "
                                      "would make now, its folders listed); only the inputs' "
                                      "page headers are read")
    est.add_argument("--calibration", help="per-megapixel costs measured by bench/compare.py "
                                           "in a checkout (default: the calibration shipped "
                                           "with tiffpipe, a copy of bench/calibration.json)")
    est.add_argument("--concurrency", type=int, default=1000,
                     help="Lambda invocations at once: give your stack's (its --concurrency, "
                          "or what deploy.py says: 'at most N'; a new account's may be 10); "
                          "default: 1000, AWS's default quota")
    est.add_argument("--price", action="append", default=[], metavar="KEY=VALUE",
                     help="override a price or any other assumption (repeatable; the "
                          "estimate lists them all)")
    est.add_argument("--assume-pages", metavar="WxH[xC][:dtype][*N]",
                     help="do not open the inputs: each has these pages (comma-separated), "
                          "e.g. 100000x100000x3 or 65536x65536x1:uint16*3")
    est.add_argument("--json", action="store_true", help="machine-readable output")
    est.add_argument("--endpoint-url", metavar="URL",
                     help="read s3:// inputs and manifests there, as start's --endpoint-url "
                          "(emulators, tests; default: AWS_ENDPOINT_URL, as boto3 reads it, "
                          "else AWS)")

    preview = sub.add_parser("preview", help="render a thumbnail of a TIFF page as a PNG")
    preview.add_argument("file", help="the TIFF (local path or s3:// URL)")
    preview.add_argument("-o", "--output", help="the PNG to write (default: <file stem>.png "
                                                "in the current folder)")
    preview.add_argument("--page", type=int, default=0, help="page index (default: 0)")
    preview.add_argument("--size", type=int, default=512,
                         help="the thumbnail fits in a SIZE x SIZE box (default: 512)")
    preview.add_argument("--exact", action="store_true",
                         help="decode a JPEG page in full for the exact area average (by "
                         "default a page 16 times the thumbnail or more is decoded at 1/8: "
                         "about twice as fast, within a few levels)")

    demo = sub.add_parser("demo", help="generate a sample TIFF and manifest, and run it")
    demo.add_argument("--dir", default="example", help="where (default: ./example)")
    demo.add_argument("--workers", type=int, default=None,
                      help="as run's (default: the cores this process may use)")

    start = sub.add_parser("start", help="start a run of a manifest on the AWS stack")
    start.add_argument("manifest", help="manifest JSON (local: uploaded first; or s3:// URL); "
                                        "its inputs and outputs must be s3:// URLs")
    target = start.add_mutually_exclusive_group()
    target.add_argument("--stack", default="main", help="the deploy.py stack (default: main)")
    target.add_argument("--state-machine", metavar="ARN", help="the state machine to run")
    start.add_argument("--wait", action="store_true",
                       help="follow the run to its end, then print the summary")
    status = sub.add_parser("status", help="show a run on AWS (progress, or the summary)")
    status.add_argument("execution", metavar="EXECUTION_ARN", help="as printed by start")
    status.add_argument("--wait", action="store_true", help="follow a running run to its end")
    status.add_argument("--json", action="store_true",
                        help="one JSON document on stdout (the status, the progress or the "
                             "report), for scripts; the same exit code")
    status.add_argument("--rerun-manifest", metavar="PATH",
                        help="write a manifest of the failed jobs a rerun may mend (not those "
                             "whose input is at fault), to start again")
    for aws in (start, status):
        aws.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION "
                                          "or the profile's; with an ARN: the ARN's)")
        aws.add_argument("--profile", help="AWS profile")
        aws.add_argument("--endpoint-url", metavar="URL",
                         help="send every AWS call there, as deploy.py's --endpoint-url "
                              "(emulators, tests; default: AWS_ENDPOINT_URL, as boto3 reads "
                              "it, else AWS)")
        aws.add_argument("--poll", type=float, default=5.0, metavar="SECONDS",
                         help="seconds between progress checks (default: 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command of ``argv`` (default: ``sys.argv[1:]``), its exit code. A stream that is
    None (the caller's process started with that fd closed; pythonw) is /dev/null for the
    command (:func:`~pipeline.ui.standard_streams`): ``print(file=None)`` writes to stdout,
    and the command's stderr lines went into the calling script's output."""
    from pipeline.ui import standard_streams

    handler = {"run": cmd_run, "validate": cmd_validate, "ops": cmd_ops, "demo": cmd_demo,
               "preview": cmd_preview, "inspect": cmd_inspect,
               "estimate": cmd_estimate,
               "start": cmd_aws, "status": cmd_aws}
    with standard_streams():
        try:
            args = _parser().parse_args(argv)  # (Ctrl-C as the parser is made: no traceback)
            return handler[args.command](args)
        except KeyboardInterrupt:  # `run` handles it itself (see _stop_on_signals)
            print(INTERRUPTED_LINE, file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # `tiffpipe ops | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK


def console() -> NoReturn:
    """The ``tiffpipe`` command: :func:`main` (quiet when stdout's reader has gone, argparse's
    exits included: :func:`~pipeline.ui.exit_code_of`), then :func:`exit_now` with its exit
    code; the process's OpenBLAS on one thread
    (:func:`~pipeline.engine.workers.one_blas_thread`: nothing has loaded numpy or OpenCV
    yet). Ctrl-C while it loads what it needs before :func:`main` is said as main says it,
    without a traceback (the console script loads this module so too:
    :func:`pipeline.__main__.console`)."""
    try:
        from pipeline.engine.workers import one_blas_thread
        from pipeline.ui import exit_code_of
    except KeyboardInterrupt:
        print(INTERRUPTED_LINE, file=sys.stderr)
        exit_now(EXIT_INTERRUPTED)
    one_blas_thread(os.environ)
    exit_now(exit_code_of(main))


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` after what the interpreter's exit would do that anyone
    sees (the exit handlers: logging's flush, multiprocessing's and temporary folders'
    clean-up, a profiler's or coverage's save; then stdout and stderr flushed), but without
    its teardown, which frees every module and object one by one: after a run that imported
    numpy, OpenCV and tifffile, about a tenth of a short command's time, for nothing (the
    process's memory goes back to the system at once; docs/performance-sweep.md, change
    48). The usual exit instead while a non-daemon thread still runs (the interpreter waits
    for it), in Python's development mode (its teardown reports unclosed resources), or
    when stdout or stderr fails otherwise than by its reader gone (the interpreter reports
    it as usual)."""
    running = [t for t in threading.enumerate()
               if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    # after a stop by a signal (exit code 128 + it), a thread still running is a task the
    # run left behind (it did not stop within the grace): not waited for
    left_behind = bool(running) and code > 128
    if (running or sys.flags.dev_mode) and not left_behind:
        sys.exit(code)
    atexit._run_exitfuncs()  # runs each handler once, and forgets them
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None without a console (pythonw)
                stream.flush()
        except BrokenPipeError:  # its reader has gone (`tiffpipe ops | head`): quiet, as
            pass  # in main, and nothing flushes it again
        except (OSError, ValueError):  # closed or failing: the usual exit reports it
            sys.exit(code)
    os._exit(code)


def _say_invalid(exc: Exception) -> None:
    """A manifest that is invalid, not there or not readable, said on stderr."""
    invalid = "invalid manifest " if isinstance(exc, ManifestError) else ""
    print(f"tiffpipe: {invalid}{exc}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    if args.threads is not None and not getattr(args, "inputs", False):
        print("tiffpipe: --threads is how many inputs --inputs reads at once: give --inputs "
              "too", file=sys.stderr)
        return EXIT_USAGE
    if args.threads is not None and args.threads < 1:
        print("tiffpipe: --threads must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    path = getattr(args, "definition", None)
    if args.manifest is None and path is None:
        print("tiffpipe: validate needs a manifest, or --definition PATH (or both)",
              file=sys.stderr)
        return EXIT_USAGE
    if path is not None:
        try:
            _definition(path, runnable=True)
        except EngineError as exc:
            print(f"tiffpipe: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{path}: valid for a local run: its JSON, states, paths and fields, Task "
              "resources and the contract with the code checked (not all that Step "
              "Functions checks: docs/local-engine.md, \"Checking an edited definition\")")
        if args.manifest is None:
            return EXIT_OK
    from pipeline.runner import manifest_file, shown_name, validate

    try:
        with manifest_file(args.manifest) as (path, _, _):  # (stdin, a pipe: read once)
            jobs = validate(path)
    except (ManifestError, InputNotFoundError, StorageError) as exc:
        _say_invalid(exc)
        return _usage_or_later(exc)
    if getattr(args, "inputs", False):
        return _validate_inputs(args, jobs)
    # (what was checked, and what was not: a job whose input is missing, or is no TIFF, is
    # valid here)
    name = shown_name(args.manifest)
    if isinstance(jobs, list):
        print(f"{name}: valid, {len(jobs)} job(s); their fields and ops checked, "
              "their inputs not read: tiffpipe validate --inputs reads them")
    else:
        print(f"{name}: valid, a scan of {jobs.input} into {jobs.output} (the jobs are "
              "the TIFFs there without an output when the run starts); its fields and ops "
              "checked, the folder not listed: tiffpipe validate --inputs lists it and reads "
              "the inputs")
    return EXIT_OK


def _validate_inputs(args: argparse.Namespace, parsed: Any) -> int:
    """``validate --inputs``: every job checked as PlanJob checks it (pipeline/input_check.py);
    exit 2 if one would fail."""
    from pipeline import input_check
    from pipeline.errors import TiffpipeError
    from pipeline.runner import shown_name
    from pipeline.ui import shown

    try:
        specs = input_check.jobs_of(parsed)  # (a scan's folder listed)
    except TiffpipeError as exc:
        print(f"tiffpipe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    checks = input_check.check_jobs(specs, args.threads or 16, progress=sys.stderr)
    with shown():
        for line in input_check.summary(shown_name(args.manifest), parsed, checks):
            print(line)
    for line in input_check.failures(parsed, checks):
        print(line, file=sys.stderr)
    missing = [i for i, check in enumerate(checks) if check.error == "InputNotFoundError"]
    for line in input_check.misplaced_inputs(args.manifest, parsed, missing):
        print(line, file=sys.stderr)
    return EXIT_USAGE if any(c.error for c in checks) else EXIT_OK


def _bad_workers(workers: int | None) -> bool:
    """``--workers`` below 1 (said on stderr): a usage error, before anything is written."""
    if workers is not None and workers < 1:
        print("tiffpipe: --workers must be at least 1", file=sys.stderr)
        return True
    return False


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import check_run, default_report, manifest_file, run_local, shown_name
    from pipeline.ui import RunProgress, off_gone_streams

    if args.workers is None:  # the CPUs of this process's affinity (a container's limit)
        from pipeline.steps.common import usable_cores

        args.workers = usable_cores()
    if _bad_workers(args.workers):
        return EXIT_USAGE
    try:
        definition_text = _definition(getattr(args, "definition", None))
    except EngineError as exc:  # before the manifest's check: nothing can run
        print(f"tiffpipe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from pipeline.engine.local import StopRequest

    stop = StopRequest()
    report = args.report  # (the default known once the manifest is: a copy's is its own)
    checking = [True]  # a stop signal ends the manifest's check at once (it may hang: S3)
    with _stop_on_signals(stop, lambda: checking[0]):
        try:
            # (a manifest on stdin, or in a pipe: read once, run from a copy)
            with manifest_file(args.manifest) as (path, default, _):
                report = report or default or default_report(path)
                jobs = check_run(path, report, args.work)  # (as pipeline.run checks it)
                checking[0] = False
                if jobs == [] and not args.quiet:  # (a generated manifest with nothing to do)
                    print(f"tiffpipe: {shown_name(args.manifest)} lists no job: nothing to do; "
                          "its report says so (no job, exit 0)", file=sys.stderr)
                with RunProgress(jobs, quiet=args.quiet) as progress:
                    result = run_local(path, args.workers, work=args.work,
                                       report=report, keep_work=args.keep_work,
                                       listener=progress,
                                       contact_sheet=not getattr(args, "no_contact_sheet",
                                                                 False),
                                       interpreter=getattr(args, "interpreter", "auto"),
                                       stop=stop, definition_text=definition_text,
                                       overwrite_report=getattr(args, "overwrite_report",
                                                                False))
        except (ManifestError, InputNotFoundError, StorageError) as exc:
            if not checking[0]:
                raise
            _say_invalid(exc)
            return _usage_or_later(exc)
        except _StoppedChecking as exc:  # (the manifest maybe not read yet: its default)
            return _stopped_before_running(report or default_report(args.manifest),
                                           exc.signum)
        except OutputNotWritableError as exc:
            print(f"tiffpipe: the run report cannot be written: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except WorkLocationError as exc:  # (another run's, going on: try again later)
            print(f"tiffpipe: {exc}", file=sys.stderr)
            return EXIT_TEMPFAIL if exc.going_on else EXIT_USAGE
        except RunningAlreadyError as exc:  # (another run of it going on: try again later)
            print(f"tiffpipe: {exc}", file=sys.stderr)
            return EXIT_TEMPFAIL
    code = _run_exit_code(result, stop)
    try:
        _tell_the_end(args, result, stop, jobs)
    except OSError:  # stdout or stderr gone (a pipe's reader: `| head`; a terminal that hung
        off_gone_streams()  # up): the run's report says what it did; its exit code still
    return code  # does (it was 0 then, whatever the jobs did)


def _run_exit_code(result: RunResult, stop: StopRequest) -> int:
    """0 every job succeeded (or was skipped), 1 a job or the run failed (or no report), 128 +
    the signal of a run stopped by one."""
    if result.report is None and result.interrupted is None:
        return EXIT_FAILED
    if stop.signal is not None:
        return 128 + stop.signal if stop.signal else EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED


def _tell_the_end(args: argparse.Namespace, result: RunResult, stop: StopRequest,
                  jobs: Any) -> None:
    """What ``run`` prints at its end: the summary, the report's path, and on stderr what
    was removed, the first jobs that left pages out (masks, overviews), why the run failed
    or stopped, (--quiet) the jobs that failed (not those a stop left without an output),
    where the inputs not found are, if in the current folder rather than the manifest's,
    and what a rerun would do to the jobs that succeeded (each job's ``if_exists``; nothing
    for a scan, whose reruns take only what has no output); with --quiet, the line naming
    the report last (a script's ``tail -1``)."""
    from pipeline.input_check import misplaced_inputs
    from pipeline.ui import failed_lines, left_out_lines, print_summary, rerun_hint, shown

    _say_removed(result.removed)
    if result.report is None and result.interrupted is None:
        if result.summary is not None and not args.quiet:
            with shown():
                print_summary(result.summary)
        print(_failed_line(result), file=sys.stderr)
        return
    if not args.quiet and result.report is not None:
        with shown():
            print_summary(result.report)
            if result.contact_sheet:
                print(f"contact sheet: {result.contact_sheet}")
            print(f"report: {result.report_url}")
    for line in left_out_lines(result.report, LEFT_OUT_LINES) if result.report else []:
        print(line, file=sys.stderr)
    if stop.signal is not None:
        print(_interrupted_line(result, stop.signal), file=sys.stderr)
    # failed jobs are errors: said even with --quiet, whose last line names the report
    failed = (failed_lines(result.report, result.report_url, FAILED_LINES)
              if args.quiet and result.report is not None else [])
    for line in failed[:-1]:
        print(line, file=sys.stderr)
    missing = [job["job"] for job in (result.report or {}).get("jobs", [])
               if (job.get("error") or {}).get("type") == "InputNotFoundError"]
    for line in misplaced_inputs(args.manifest, jobs, missing) if missing else []:
        print(line, file=sys.stderr)
    if_exists = [j.if_exists for j in jobs] if isinstance(jobs, list) else []
    hint = rerun_hint(result.report, if_exists) if result.report is not None else None
    for line in [hint, *failed[-1:]]:
        if line:
            print(line, file=sys.stderr)


def _definition(path: str | None, runnable: bool = False) -> str | None:
    """The text of ``run --definition PATH`` (None without it: the shipped definition),
    checked as the engine will check it (JSON, then the states' structure), and a given one
    against the code too (its contract: :func:`pipeline.engine.definition.check`):
    EngineError naming the file, for a usage error before anything runs. ``runnable``
    (``validate --definition``): also what the engine refuses to run on its default
    interpreter (:func:`pipeline.engine.local.runnable`), as a run would when it starts."""
    from pipeline.engine import definition

    if path is None:
        definition.check(definition.definition_text(), definition.definition_path())
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EngineError(f"--definition {path}: cannot be read: {why}") from None
    definition.check(text, path, contract=True)
    if runnable:
        from pipeline.engine.local import runnable as engine_runs

        engine_runs(text, source=path)
    return text


class _StoppedChecking(BaseException):
    """A stop signal while ``run`` checked the manifest, which it ends at once (a
    BaseException, as KeyboardInterrupt: no ``except Exception`` on the way takes it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped_before_running(report: str, signum: int) -> int:
    """``run`` stopped before its run started: what any stopped run does at its end (an
    earlier run's report and sheet at its paths removed), and the exit code of ``signum``."""
    from pipeline.runner import remove_earlier_report

    removed = remove_earlier_report(report)
    with suppress(OSError):  # (its terminal hung up: SIGHUP)
        _say_removed(removed)
        print(_not_started_line(signum), file=sys.stderr)
    return 128 + signum


def _not_started_line(signum: int) -> str:
    """What a run stopped by ``signum`` before any job started says, on one line
    (:func:`_stopped_before_running`, :func:`_interrupted_line`)."""
    from pipeline.runner import signal_name

    return (f"tiffpipe: interrupted ({signal_name(signum)}) before any job started: no output "
            "and no report were written")


def _say_removed(removed: list[str]) -> None:
    """A file of the user's that the run removed, said even with --quiet (as warnings are)."""
    for url in removed:
        print(f"tiffpipe: removed {url}: an earlier run's, and this run wrote none",
              file=sys.stderr)


@contextmanager
def _stop_on_signals(stop: StopRequest, checking: Callable[[], bool] = lambda: False
                     ) -> Iterator[None]:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP (its terminal hung up: an SSH session dropped,
    a terminal window closed), unless ignored when the command started
    (:func:`pipeline.ui.stop_signals`: ``nohup``), request ``stop`` while the block runs,
    instead of KeyboardInterrupt (which would leave the run's tasks going) or the end of the process
    (which would leave its work folder and temporary files, and no report): the engine
    stops the run and the runner cleans up (see :func:`pipeline.runner.run_local`); what
    cannot be shown on a terminal that hung up is not (:class:`pipeline.ui.RunProgress`,
    :func:`_tell_the_end`'s caller). A second signal stops the
    waiting for the tasks. While ``checking()`` (before the run starts), a signal raises
    :class:`_StoppedChecking` as well, which ends what is going on at once. Only in the main
    thread (where Python runs signal handlers)."""
    from pipeline.ui import on_stop_signals

    def handler(signum: int, _: Any) -> None:
        stop.request(signum)
        if checking():
            raise _StoppedChecking(signum)

    with on_stop_signals(handler):
        yield


#: the most outputs named in the line of a run that failed (then how many more)
NAMED_OUTPUTS = 10
#: the most failed jobs a ``run --quiet`` names on stderr, a line each (then how many more)
FAILED_LINES = 20
#: the most jobs that left pages out a ``run`` names on stderr, a line each (then how many)
LEFT_OUT_LINES = 3


def _failed_line(result: RunResult) -> str:
    """What a run that failed with no report says (even with --quiet): its error, and,
    from its jobs' results (:attr:`RunResult.summary`), which outputs it published. A run
    whose jobs all finished failed writing its report: that alone is lost (exit 1
    still: what a script reads afterwards, the report, is not there)."""
    summary, error = result.summary, one_line(str(result.error))
    if summary is None:
        return f"tiffpipe: the run failed: {error}"
    jobs = summary["jobs"]
    published = [j["output"] for j in jobs if j["status"] == "SUCCEEDED"]
    named = ", ".join(published[:NAMED_OUTPUTS]) + (
        f" and {len(published) - NAMED_OUTPUTS} more" if len(published) > NAMED_OUTPUTS else "")
    outputs = (f"the outputs of the {len(published)} that succeeded are published ({named})"
               if published else "no output was published")
    if result.report_lost:
        return (f"tiffpipe: every job ran ({summary['succeeded']} succeeded, "
                f"{summary['failed']} failed, {summary['skipped']} skipped), but the run "
                f"report could not be written to {result.report_url} (--report): "
                f"{error}; {outputs}. Give --report a path that can be written (or "
                "free space there) and run again for a report")
    unfinished = result.unfinished_jobs
    if not unfinished:
        return (f"tiffpipe: the run failed after its {len(jobs)} job(s) had ended: "
                f"{error}; {outputs}; no report was written")
    files = _files_left(unfinished, result.unfinished_over_a_file)
    return (f"tiffpipe: the run failed: {error}; {len(jobs) - unfinished} of "
            f"{len(jobs)} jobs had finished, {outputs}; the other {unfinished} wrote no "
            f"output{files} (no report was written): run {'it' if unfinished == 1 else 'them'} "
            "again")


def _files_left(unfinished: int, over: int) -> str:
    """What the line of a run that left ``unfinished`` jobs without an output (failed as a
    whole, or stopped) says of the ``over`` of them whose output path holds a file (an
    earlier run's, as their report entries or summary rows say; ``if_exists: skip`` would
    take it for the job's output): "" when none."""
    if not over:
        return ""
    where = ("the file at its output path is" if unfinished == 1
             else "the files at their output paths are" if over == unfinished
             else "the file at the output path of 1 of them is" if over == 1
             else f"the files at the output paths of {over} of them are")
    whose = "the job's output" if over == 1 else "the jobs' outputs"
    return (f", and {where} not known to be this run's, which a rerun with \"if_exists\": "
            f"\"skip\" would take for {whose}")


def _interrupted_line(result: RunResult, signum: int) -> str:
    """What a run stopped by ``signum`` says, on one line: what it stopped, what it kept."""
    from pipeline.errors import INTERRUPTED_ERROR
    from pipeline.runner import signal_name

    if result.report is None:
        return _not_started_line(signum)
    name = signal_name(signum)
    total, unfinished = len(result.report["jobs"]), len(result.unfinished)
    head = f"tiffpipe: interrupted ({name}): "
    one, over = unfinished == 1, result.unfinished_over_a_file
    said = ("" if not over else ", whose message says what the file is" if one
            else ", whose messages say which paths hold a file")
    again = (f"{'was' if one else 'were'} stopped before writing "
             f"{'its output' if one else 'their outputs'}{_files_left(unfinished, over)} "
             f"({INTERRUPTED_ERROR} in the report{said}): run {'it' if one else 'them'} again")
    if not unfinished:
        return head + f"all {total} jobs had finished; their outputs and the report are complete"
    if unfinished == total:
        none = ("the job had not finished; it" if one
                else f"none of the {total} jobs had finished; all")
        return head + f"{none} {again}"
    finished = total - unfinished
    failed = result.report["failed"] - unfinished  # (failed of themselves, before the stop)
    kept = finished - failed
    done = (f"({kept} with {'its output' if kept == 1 else 'their outputs'} kept, {failed} "
            "failed)"
            if failed else f"{'its output is' if finished == 1 else 'their outputs are'} kept")
    return head + (f"{finished} of {total} jobs finished{'' if failed else ','} {done}; "
                   f"the other {unfinished} {again}")


def cmd_ops(args: argparse.Namespace) -> int:
    from pipeline.core.constants import SCHEMA
    from pipeline.core.ops import OPS

    if args.json:  # (the ops under "ops": beside them, "schema" would read as an op's name)
        doc = {"schema": SCHEMA, "ops": {
            name: {"call": op.help, "exact": op.exact, "halo": op.halo_help,
                   "params": [{"name": p.name, "type": p.kind, "accepts": p.expectation(),
                               "required": p.required, "default": p.default, "help": p.help}
                              for p in op.params]}
            for name, op in OPS.items()}}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    for name, op in OPS.items():
        print(f"{name}: {op.help}")
        print(f"  halo: {op.halo_help}; {op.exact}")
        for p in op.params:
            print(f"  {p.describe()}")
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from pipeline.adapters import storage
    from pipeline.errors import TiffpipeError
    from pipeline.preview import write_preview

    if not 16 <= args.size <= 4096:
        print("tiffpipe: --size must be from 16 to 4096", file=sys.stderr)
        return EXIT_USAGE
    if args.page < 0:
        print("tiffpipe: --page must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    stem = os.path.splitext(os.path.basename(args.file.rstrip("/")))[0] or "preview"
    output = args.output or f"{stem}.png"
    if not output.lower().endswith(".png"):
        print(f"tiffpipe: -o {output}: a preview is a PNG: give a name ending in .png",
              file=sys.stderr)
        return EXIT_USAGE
    if not storage.is_s3(output):
        output = os.path.abspath(output)
    if (refused := _preview_refusal(args.file, output)) is not None:
        print(f"tiffpipe: -o {output}: {refused}", file=sys.stderr)
        return EXIT_USAGE
    # segments decoded one after another: their buffers reused from the heap, as in the
    # engine's process, not fresh pages (and their faults) for each
    from pipeline.engine.workers import tune_malloc

    tune_malloc()
    try:
        thumb = write_preview(args.file, output, args.page, args.size, args.exact)
    except TiffpipeError as exc:
        print(f"tiffpipe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{output}: {thumb.description}")
    return EXIT_OK


def _preview_refusal(file: str, output: str) -> str | None:
    """Why the preview may not be written at ``output`` (None: it may): a preview replaces
    a PNG there (an earlier one) or an empty file, never the TIFF previewed (named .png, its
    default output is its own name) nor another file of the user's at ``<stem>.png``."""
    from pipeline.adapters import storage
    from pipeline.core.thumbs import PNG_SIGNATURE
    from pipeline.errors import TiffpipeError

    if storage.same_file(file, output):
        return "is the TIFF previewed, which the preview would replace: give -o another name"
    if not storage.is_s3(output) and os.path.isdir(output):
        return "is a folder: give -o the PNG file's name (a name in it: FOLDER/NAME.png)"
    try:
        if not storage.exists(output) or storage.size(output) == 0:
            return None
        head = storage.read_range(output, 0, len(PNG_SIGNATURE))
    except (TiffpipeError, OSError):  # (a folder, unreadable: the write names its error)
        return None
    if head == PNG_SIGNATURE:
        return None
    return (f"exists and is not a PNG (it begins {head[:4]!r}), which the preview would "
            "replace: give -o another name, or move that file away")


def cmd_inspect(args: argparse.Namespace) -> int:
    """``inspect``: each file's pages as tiffpipe reads them (pipeline/inspection.py); exit 1
    if a job of a file without pages (of the --ops chain) would fail when planned."""
    from pipeline import inspection
    from pipeline.core.constants import SCHEMA
    from pipeline.input_check import INPUT_THREADS, concurrently
    from pipeline.ui import shown

    try:
        spec = (inspection.ops_spec(args.ops, args.output_options)
                if args.ops is not None or args.output_options is not None else None)
    except ManifestError as exc:
        print(f"tiffpipe: invalid {exc.source}: " + "; ".join(exc.problems), file=sys.stderr)
        return EXIT_USAGE
    docs = concurrently(lambda url: inspection.inspect_file(url, spec), args.files,
                        INPUT_THREADS, progress=sys.stderr, what="reading the files")
    with shown():
        if args.json:
            print(json.dumps({"schema": SCHEMA, "files": docs}, indent=1))
        else:
            for doc in docs:
                for line in inspection.text(doc):
                    print(line)
    return EXIT_OK if all(doc["ok"] for doc in docs) else EXIT_FAILED


def cmd_estimate(args: argparse.Namespace) -> int:
    from pipeline import estimate as est
    from pipeline.adapters import storage
    from pipeline.aws import check_endpoint_url
    from pipeline.core.constants import SCHEMA
    from pipeline.errors import TiffpipeError
    from pipeline.runner import manifest_file

    said = _Said(args.json, {"manifest": args.manifest}, indent=2)
    try:
        overrides = est.parse_overrides(args.price)
        calibration = est.load_calibration(args.calibration)
        check_endpoint_url(args.endpoint_url)
        # a scan's jobs: those a run of it would make now (its folders listed, nothing
        # written); the jobs PlanJob would refuse are not costed: a run fails them and runs
        # the others
        with (storage.client_of(storage.new_s3_client(args.endpoint_url))
              if args.endpoint_url else nullcontext()), \
                manifest_file(args.manifest) as (path, _, _):  # (stdin, a pipe: read once)
            planned = est.plan_manifest(path, args.assume_pages)
        refused = planned.refused
        if refused and not planned.plans:  # nothing left to cost
            found = {"scan": planned.found.to_json()} if planned.found is not None else {}
            return said.error("AllJobsRefused", "the manifest cannot run:\n  "
                              + "\n  ".join(planned.problems), EXIT_USAGE,
                              {**found, "refused": refused})
        result = est.estimate(planned.plans, calibration, overrides, args.concurrency,
                              input_bytes=planned.sizes)
        if planned.found is not None:  # what the scan found, as its run's report records it
            result = {"scan": planned.found.to_json(), **result}
        if refused:
            result["refused"] = refused
            print(f"tiffpipe: {len(refused)} of {len(planned.specs)} job(s) would fail when "
                  "planned (PlanJob) and are not costed; a run would fail them and run the "
                  "others:\n  " + "\n  ".join(planned.problems), file=sys.stderr)
    except ManifestError as exc:
        return said.error(exc, f"invalid manifest {exc}", EXIT_USAGE)
    except (est.EstimateError, TiffpipeError) as exc:
        return said.error(exc, str(exc), _usage_or_later(exc))
    print(json.dumps({"schema": SCHEMA, **result}, indent=2) if args.json
          else est.format_text(result))
    return EXIT_FAILED if refused else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import prepare_demo

    if _bad_workers(args.workers):  # (before the sample and manifest are written)
        return EXIT_USAGE
    try:
        manifest = prepare_demo(args.dir)
    except OSError as exc:
        print(f"tiffpipe: the demo cannot be written into {args.dir}: {exc.strerror or exc}; "
              "give --dir a folder (new, or one of yours)", file=sys.stderr)
        return EXIT_USAGE
    print(f"sample and manifest ready: {manifest}", file=sys.stderr)
    return cmd_run(argparse.Namespace(manifest=manifest, workers=args.workers, work=None,
                                      keep_work=False, report=None, quiet=False))


def cmd_aws(args: argparse.Namespace) -> int:
    """``start`` and ``status``: runs on the AWS stack (see pipeline/aws/executions.py)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline.aws import (
        AwsError,
        Clients,
        NoCredentialsFoundError,
        StackNotFoundError,
        check_endpoint_url,
    )
    from pipeline.aws.actions import call_failed
    from pipeline.aws.executions import (
        execution_arn_problem,
        show,
        start,
        state_machine_arn_problem,
    )

    said = _Said(getattr(args, "json", False), {"execution": args.execution}
                 if args.command == "status" else {})
    problem = (execution_arn_problem(args.execution) if args.command == "status" else
               state_machine_arn_problem(args.state_machine) if args.state_machine else None)
    try:
        check_endpoint_url(args.endpoint_url)
    except AwsError as exc:
        problem = problem or str(exc)
    if problem:
        return said.error("UsageError", problem, EXIT_USAGE)
    region = args.region
    arn = args.execution if args.command == "status" else args.state_machine
    if arn and arn.count(":") >= 6:  # arn:aws:states:REGION:...: where it is
        where = arn.split(":")[3]
        if region and region != where:
            return said.error("UsageError", f"--region {region} is not the region of {arn} "
                              f"({where}): leave --region out", EXIT_USAGE)
        region = where
    clients = Clients(region, args.profile, args.endpoint_url,
                      region_given=region == args.region)
    try:
        if arn:  # `start --stack` checks them as it finds the stack (Clients.names)
            clients.account()  # no credentials: NoCredentialsFoundError and its advice
        if args.command == "start":
            return start(clients, args.manifest, stack=None if args.state_machine else args.stack,
                         state_machine=args.state_machine, wait=args.wait, poll=args.poll)
        return show(clients, args.execution, wait=args.wait, poll=args.poll,
                    as_json=args.json, rerun=args.rerun_manifest)
    except ManifestError as exc:
        return said.error(exc, f"invalid manifest {exc}", EXIT_USAGE)
    except RunningAlreadyError as exc:  # (start: an execution runs its jobs now)
        return said.error(exc, str(exc), EXIT_TEMPFAIL)
    except (InputNotFoundError, NoCredentialsFoundError, StackNotFoundError) as exc:
        return said.error(exc, str(exc), EXIT_USAGE)
    except (AwsError, ClientError, BotoCoreError) as exc:
        return said.error(exc, call_failed(exc),
                          EXIT_TEMPFAIL if _unreachable(exc) else EXIT_FAILED)
    except KeyboardInterrupt:  # (Ctrl-C, `status --wait` following a run): main says it
        if said.as_json:  # (--json: the document its scripts read, as in any other outcome)
            return said.error("KeyboardInterrupt", INTERRUPTED_LINE.removeprefix(
                "tiffpipe: ") + " (Ctrl-C): the run goes on, on AWS", EXIT_INTERRUPTED)
        raise


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or the error it was raised from (a StorageError's), is an AWS or S3
    endpoint that cannot be reached now (no connection, or one that timed out or closed):
    exit 75, try again later (``start``, ``status``; ``run``, ``validate``, ``estimate`` of
    what is on S3). botocore is not imported for it: a command that made no AWS call has no
    such error."""
    errors = sys.modules.get("botocore.exceptions")
    if errors is None:
        return False
    kinds = (errors.EndpointConnectionError, errors.ConnectTimeoutError,
             errors.ReadTimeoutError, errors.ConnectionClosedError)
    return isinstance(exc, kinds) or isinstance(exc.__cause__, kinds)


def _usage_or_later(exc: BaseException) -> int:
    """The exit code of a manifest or input that cannot be used: 75 (try again later) when S3
    cannot be reached now (:func:`_unreachable`), else 2."""
    return EXIT_TEMPFAIL if _unreachable(exc) else EXIT_USAGE


class _Said:
    """How a command's error ends it: on stderr, and, for a command given ``--json``
    (``status``, ``estimate``), as the one JSON document on stdout its scripts read, in
    every outcome but one: stdout gone (a BrokenPipe: its reader has ended), where nothing
    can be read. Ctrl-C is an outcome too (``KeyboardInterrupt``). ``about``
    (``{"execution": ARN}``, ``{"manifest": PATH}``) and ``"error": {"type": ...,
    "message": ...}``, indented as the command's other documents (``indent``)."""

    def __init__(self, as_json: bool, about: dict[str, Any], indent: int | None = None
                 ) -> None:
        self.as_json, self.about, self.indent = as_json, about, indent

    def error(self, error: BaseException | str, message: str, code: int,
              more: dict[str, Any] | None = None) -> int:
        """Say ``message`` (of the exception ``error``, or of the kind it names; the
        document has ``more`` too), then return ``code``."""
        from pipeline.core.constants import SCHEMA

        print(f"tiffpipe: {message}", file=sys.stderr)
        if self.as_json:
            kind = error if isinstance(error, str) else type(error).__name__
            with suppress(OSError):
                print(json.dumps({"schema": SCHEMA, **self.about, **(more or {}),
                                  "error": {"type": kind, "message": message}},
                                 indent=self.indent))
        return code


if __name__ == "__main__":
    console()
