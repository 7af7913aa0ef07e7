"""Names and sizes that several parts of tiffpipe must agree on, each in one place.

The three Lambda functions (one container image each, ``images/<function>/``) and how they
are sized: ``deploy.py`` creates them so (pipeline/aws/resources.py), the embedded engine
registers them so (pipeline/engine/local.py), and ``tiffpipe estimate`` costs them so
(pipeline/estimate/assumptions.py). The environment variables tiffpipe reads. Pure: it
imports only pipeline.core.record (itself standard library only), so every layer (core,
engine, estimate, aws) may import it, and in pipeline/core so the Lambda images, which copy
core/, hold it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.core.record import record

#: the version of the layout of the run report and of every ``--json`` document (their
#: ``schema``: docs/manifest-and-ops.md, "Fields of the run report"); raised when a field
#: changes its meaning or type or is removed, not when one is added
SCHEMA = 1
#: the States Language's error name that matches every error: a Retry's or Catch's
#: wildcard (alone in its ErrorEquals, in the list's last entry)
CATCH_ALL = "States.ALL"

#: the Lambda functions of the state machine, in pipeline order; each is also the name of its
#: image folder, of its ``${<Name>FunctionArn}`` placeholder, and of its handler's table
FUNCTIONS = ("split", "process", "merge")


@record(frozen=True)
class FunctionSize:
    """The size of one Lambda function: memory, timeout and ephemeral storage."""

    memory: int  # MB (CPU scales with it: ~1 vCPU per 1,769 MB)
    timeout: int  # seconds
    ephemeral: int  # MB of /tmp


#: /tmp: on S3 no function's steps write there (tests/test_constants.py: split's segment cache
#: is in memory, work tiles and segments go to S3, merge composes the output in S3 from the
#: segments: docs/s3-merge.md), so split and merge get Lambda's minimum (512 MB, not billed);
#: process keeps 1024 MB for the custom ops it runs, user code that may write there
FUNCTION_SIZES = {"split": FunctionSize(3008, 900, 512),
                  "process": FunctionSize(3008, 900, 1024),
                  "merge": FunctionSize(3008, 900, 512)}

#: tile threads of one invocation (default: the CPUs the process may use); the embedded
#: engine sets it for its workers (pipeline/engine/workers.py), steps read it
#: (pipeline/steps/common.py)
TILE_THREADS_ENV = "TIFFPIPE_TILE_THREADS"

#: OpenBLAS's thread count, read when a library that bundles it loads (numpy; OpenCV, whose
#: wheel brings its own); tiffpipe's processes set it to 1 unless it is set
#: (pipeline/engine/workers.py: :func:`one_blas_thread`; the Lambda images' Dockerfiles)
BLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"

#: "1": a ProcessJob writes its segment to the work location even when its output is small
#: enough to compose from memory (pipeline/steps/single.py); ``tiffpipe run --keep-work``
#: sets it for its run, so the kept work holds every job's segments
KEEP_SEGMENTS_ENV = "TIFFPIPE_KEEP_SEGMENTS"

#: set to a thumbnail box (pixels) by ``tiffpipe run`` when it writes a contact sheet: the
#: process steps then sum the thumbnails of large pages from the pixels they hold
#: (pipeline/steps/thumbs.py) instead of the sheet decoding those pages again; unset: none
THUMBNAILS_ENV = "TIFFPIPE_THUMBNAILS"

#: set to its run id by a local run (``run_local``) for its life: the temporary files its
#: steps build outputs in carry it in their names (pipeline/adapters/storage.py), so that the
#: run, stopped, or the next run, after it was killed, removes its own and no other run's
RUN_TAG_ENV = "TIFFPIPE_RUN_TAG"
#: set to its work location by a local run for its life: a write there that the file system
#: refuses (full, read-only) is told as the work location's, naming --work
WORK_ENV = "TIFFPIPE_WORK"
#: the words of the entry point that started a local run, set by ``run_local`` for its life
#: (the engine's workers inherit it): "python" (``pipeline.run``: its arguments, ``work=``),
#: else the command's options (``--work``); a job's error in the report and the warnings are
#: said in them (pipeline/errors.py: :func:`in_callers_words`)
CALLER_ENV = "TIFFPIPE_CALLER"

#: server-side encryption of the outputs a run writes to S3 (pipeline/adapters/storage.py:
#: :func:`output_encryption`): "AES256" (SSE-S3) or "aws:kms" (SSE-KMS), sent with each
#: output's PutObject or CreateMultipartUpload (and the output check's); unset: none sent, the
#: bucket's default encryption applies. ``deploy.py --sse`` sets it on the process and merge
#: functions (they write outputs); a local run takes it from its environment
SSE_ENV = "TIFFPIPE_SSE"
#: with SSE_ENV "aws:kms": the KMS key (its ARN) the outputs are encrypted with; unset: S3's
#: own key for the account (aws/s3). ``deploy.py --sse-kms-key-id`` sets it
SSE_KMS_KEY_ENV = "TIFFPIPE_SSE_KMS_KEY_ID"
#: the values SSE_ENV may take
SSE_MODES = ("AES256", "aws:kms")

#: the run's file in its work location: the run and every job's spec (PlanRun writes it)
RUN_FILE = "run.json"
#: the job indices the Jobs map reads, every job's spec as its steps read it, and the folder
#: of the jobs' work (pipeline/steps/layout.py); with RUN_FILE, the report a run writes
#: there when it is given none and LEASE_FILE, every name a run writes at the top of its
#: work location
JOBS_FILE, JOB_SPECS_FILE, JOBS_FOLDER, WORK_REPORT = "jobs.json", "job-specs.bin", "jobs", \
    "report.json"
#: a local run's lease on its work location (pipeline/adapters/work_lease.py): a run on
#: another machine given the same --work tells from it whether this run goes on
LEASE_FILE = "lease.json"
#: the execution's events, written by a local run with --keep-work (pipeline/runner.py)
HISTORY_FILE = "execution-history.json"
WORK_ENTRIES = (RUN_FILE, JOBS_FILE, JOB_SPECS_FILE, JOBS_FOLDER, WORK_REPORT, LEASE_FILE,
                HISTORY_FILE)
#: each job's folder (in ``JOBS_FOLDER``) of the output uploads its merge began on S3
#: (pipeline.steps.layout.uploads_dir): what a failed or killed run's job leaves open
UPLOADS_FOLDER = "uploads"

#: tile sides one node of canny's reduce tree may hold (pipeline/steps/canny_reduce.py; the
#: default there); tests set it small to force a tree of several levels
CANNY_REDUCE_SIDES_ENV = "TIFFPIPE_CANNY_REDUCE_SIDES"


def placeholder(function: str) -> str:
    """The name of ``function``'s ARN placeholder in statemachine.asl.json
    (``SplitFunctionArn``)."""
    return f"{function.capitalize()}FunctionArn"

#: what each of the user's variables that take a whole number takes, and its least value:
#: a value that is not such a number (``abc``, ``0``, ``-3``) is as unset, the default used
#: (:func:`env_int`), and a run warns of it (:func:`env_problems`)
WHOLE_NUMBER_ENV = {
    TILE_THREADS_ENV: ("a whole number of tile threads, 1 or more", 1),
    THUMBNAILS_ENV: ("a thumbnail box in pixels, a whole number (0: none)", 0),
    CANNY_REDUCE_SIDES_ENV: ("a whole number of tile sides, 4 or more", 4),
}
#: the user's other variables (their values checked where they are read: :data:`SSE_ENV`
#: refused by the first S3 write, :data:`KEEP_SEGMENTS_ENV` below)
USER_ENV = (KEEP_SEGMENTS_ENV, SSE_ENV, SSE_KMS_KEY_ENV, *WHOLE_NUMBER_ENV)
#: a local run's own, set by ``run_local`` for its life over any value they had (not the
#: user's to set), and the test suite's and benchmark's (docs/code-layout.md): no warning
INTERNAL_ENV = (RUN_TAG_ENV, WORK_ENV, CALLER_ENV, "TIFFPIPE_BENCH_TIMINGS",
                "TIFFPIPE_BENCH_PATCH", "TIFFPIPE_BENCH_MEMORY", "TIFFPIPE_TEST_PEAKS",
                "TIFFPIPE_CASELESS_DIR", "TIFFPIPE_REQUIRE_DOCKER", "TIFFPIPE_DOCKER_DIR",
                "TIFFPIPE_DEBIAN_MIRROR", "TIFFPIPE_WHEELHOUSE_PORT", "TIFFPIPE_DATA")
#: the prefix of tiffpipe's variables: another name with it is a typo, warned of
ENV_PREFIX = "TIFFPIPE_"


def env_int(name: str, environ: Mapping[str, str]) -> int | None:
    """The whole number the variable ``name`` of :data:`WHOLE_NUMBER_ENV` gives in
    ``environ``, or None when it is unset or gives none (not ASCII digits, or below its least
    value): its reader's default then. (``"²"`` is a digit to ``str.isdigit`` that ``int``
    refuses: it raised ValueError at the start of every run.)"""
    value = environ.get(name, "").strip()
    least = WHOLE_NUMBER_ENV[name][1]
    return int(value) if value.isascii() and value.isdigit() and int(value) >= least else None


def env_problems(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the ``TIFFPIPE_*`` variables of ``environ``, a line each: a value
    of :data:`WHOLE_NUMBER_ENV` that gives no number (ignored: the default used), a
    :data:`KEEP_SEGMENTS_ENV` other than 1 or 0, a name tiffpipe does not read (ignored,
    with the user's variable it is closest to)."""
    import difflib

    problems = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        value = environ[name]
        if name in WHOLE_NUMBER_ENV and value.strip() and env_int(name, environ) is None:
            problems.append(f"{name}={value!r}: it takes {WHOLE_NUMBER_ENV[name][0]}; "
                            "ignored, the default used (unset it, or give such a number)")
        elif name == KEEP_SEGMENTS_ENV and value.strip() not in ("", "0", "1"):
            problems.append(f"{name}={value!r}: it takes 1 (on) or 0 (off); taken as off "
                            "(anything but 1 is)")
        elif name not in USER_ENV and name not in INTERNAL_ENV:
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX),
                                              [n.removeprefix(ENV_PREFIX) for n in USER_ENV])
            hint = (f"did you mean {ENV_PREFIX}{close[0]}?" if close else
                    f"tiffpipe's are {', '.join(USER_ENV)} (docs/code-layout.md); a run's "
                    "other settings are its options (tiffpipe run --help)")
            problems.append(f"{name} is not one of tiffpipe's variables: ignored; {hint}")
    return problems
