"""The errors of tiffpipe.

Every error a job can fail with is a subclass of :class:`TiffpipeError`. The
class NAME is the error name: Lambda reports it as ``errorType``, Step
Functions matches ``Retry``/``Catch`` on it, and the run report shows it. So
never rename a class without updating ``statemachine.asl.json``.

Messages say what was expected, what was found, and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any


class TiffpipeError(Exception):
    """Base class of every tiffpipe error."""


#: the report's error type of a job a stopped local run did not finish (status FAILED; no
#: class: nothing raises it, pipeline.runner writes it; the summary shows such a job STOPPED)
INTERRUPTED_ERROR = "RunInterruptedError"
#: the error type, in the summary of a run that failed as a whole (its engine stopped), of a
#: job that had not finished (no class: pipeline.runner gives it; no report is written)
RUN_FAILED_ERROR = "RunFailedError"


def was_stopped(job: dict[str, Any]) -> bool:
    """Whether a run report's job is one a stop left unfinished (FAILED with
    :data:`INTERRUPTED_ERROR`): counted in the report's ``stopped`` (as well as in its
    ``failed``), its summary row STOPPED."""
    error = job.get("error")
    return (job.get("status") == "FAILED" and isinstance(error, dict)
            and error.get("type") == INTERRUPTED_ERROR)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run of :func:`pipeline.run` (no TiffpipeError: a KeyboardInterrupt,
    so a script's loop or a notebook's cell stops as on any Ctrl-C), raised once the run
    stopped cleanly: the finished jobs' outputs kept, the others' partial files removed, the
    report written. ``result``: the run's :class:`~pipeline.runner.RunResult`."""

    def __init__(self, result: Any) -> None:
        super().__init__(f"the run {result.run_id} was stopped by Ctrl-C: "
                         f"{len(result.unfinished)} job(s) had not finished")
        self.result = result


# --- manifests and usage ------------------------------------------------------------


class ManifestError(TiffpipeError):
    """A manifest is invalid. ``problems`` lists every problem as ``path: message``."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the manifest:\n{lines}")


class WorkLocationError(TiffpipeError):
    """A local run's work location (``--work``) is another run's, going on, or holds files that
    are not a tiffpipe run's work (which the run would remove with its own when it ends).
    ``going_on``: the first (another run uses it now, or removes what a killed one left):
    a later try may find it free (``tiffpipe run`` exits 75, try again later, not 2)."""

    def __init__(self, message: str, going_on: bool = False) -> None:
        super().__init__(message)
        self.going_on = going_on


class RunningAlreadyError(TiffpipeError):
    """A local run of a list of jobs while an earlier local run of the same manifest is still
    going on on this machine (both would do every job and write the same outputs)."""


class OperationError(TiffpipeError):
    """An op cannot be applied to this page (dtype, channels) or a user function misbehaved."""


class CustomOperationError(OperationError):
    """A user function (``{"op": "custom"}``) cannot be imported, or returned a wrong tile."""


# --- inputs ---------------------------------------------------------------------------


class InputNotFoundError(TiffpipeError):
    """The input file or object does not exist."""


class NotATiffError(TiffpipeError):
    """The input is not a TIFF file."""


class CorruptTiffError(TiffpipeError):
    """The input is a TIFF, but its structure or a segment's data is damaged or truncated."""


class UnsupportedTiffError(TiffpipeError):
    """The input is a valid TIFF of a kind tiffpipe cannot process (compression, layout)."""


class InputChangedError(TiffpipeError):
    """The input was replaced or rewritten after its job was planned: the job's units would
    read two versions of it."""


class PageNotFoundError(TiffpipeError):
    """A page index asked for by the manifest is not in the file."""


# --- outputs and storage --------------------------------------------------------------


class OutputNotWritableError(TiffpipeError):
    """The output location cannot be written."""


class OutputExistsError(TiffpipeError):
    """The output exists already and the job's ``if_exists`` is ``fail``."""


class OutputTooLargeError(TiffpipeError):
    """The output breaks a limit of its format or its storage: a classic TIFF's 4 GiB, S3's
    largest object (5 TB) or the 10,000 parts of one multipart upload."""


class StorageError(TiffpipeError):
    """Reading or writing a local file or an S3 object failed."""


class AccessDeniedError(StorageError):
    """S3 refused a read or write (403), or a local input may not be read (permission
    denied): the caller may not. Its own name, so the state
    machine's Retry of ``StorageError`` does not wait for a retry that meets it again."""


class WorkMissingError(TiffpipeError):
    """A work file that an earlier step should have written is missing."""


# --- execution ------------------------------------------------------------------------


class WorkerCrashedError(TiffpipeError):
    """A local worker process died while running a task (the local ``Runtime.ExitError``)."""


class EngineError(TiffpipeError):
    """The embedded Step Functions engine failed to run the state machine."""


class OutOfMemoryError(TiffpipeError):
    """A task ran out of memory: an allocation failed (``MemoryError``, a codec's
    "Allocation error"), or a thread could not start (its stack is memory too). Not the
    input's fault: the message names the task (and the input, page or segment where known)
    and what to do (:data:`OUT_OF_MEMORY_HINT`)."""


class TooManyOpenFilesError(TiffpipeError):
    """A task could not open a file or a pipe: the process's limit of open files (``ulimit
    -n``) is reached. The message names the limit and what to do."""


# --- installation ---------------------------------------------------------------------


class CheckoutNotFoundError(TiffpipeError):
    """What needs a clone of the repository (building the Lambda images, deploy.py) was run
    without one: an installed wheel holds the package, not images/ and requirements/."""


#: ``tiffpipe run``'s options in the messages of what it shares with ``pipeline.run``
#: (the checks, the steps' errors, the warnings), and how ``pipeline.run``'s caller gives
#: each (its arguments); the longer phrases first
_PYTHON_WORDS = {"run with --overwrite-report": "overwrite_report=True",
                 "run with --no-contact-sheet": "give contact_sheet=False",
                 "tiffpipe run --work": "work=", "--overwrite-report": "overwrite_report=True",
                 "--no-contact-sheet": "contact_sheet=False", "--keep-work": "keep_work=True",
                 "--definition": "definition_text=", "--interpreter": "interpreter=",
                 "--report": "report=", "--workers": "workers", "--work": "work="}
#: one of them, not within a path (``/data/--work/a.tif``) nor a longer option
_OPTION = re.compile(r"(?<![\w/.-])(" + "|".join(re.escape(k) for k in _PYTHON_WORDS)
                     + r")(?![\w/-])")
#: the value of CALLER_ENV (pipeline/core/constants.py) in a run ``pipeline.run`` started
PYTHON_CALLER = "python"


def in_python_words(text: str) -> str:
    """``text`` (a message naming ``tiffpipe run``'s options) with those options named as
    ``pipeline.run``'s arguments: ``give --report another path`` is ``give report= another
    path``."""
    return _OPTION.sub(lambda m: _PYTHON_WORDS[m.group(1)], text)


def in_callers_words(text: str) -> str:
    """``text`` in the words of the entry point that started this process's run, which
    ``run_local`` passes down to its steps and workers (CALLER_ENV): ``pipeline.run``'s
    arguments (:func:`in_python_words`), else as it is (the command's options). Said of the
    warnings a run logs, and of the advice of an error as it is raised (a run's checks, its
    work location, running out of memory or open files: ``pipeline.run`` sets CALLER_ENV for
    its checks too; a job's error is recorded in the report as it was made); only a
    message's own words, never the paths put into it."""
    from pipeline.core.constants import CALLER_ENV

    return in_python_words(text) if os.environ.get(CALLER_ENV) == PYTHON_CALLER else text


#: the most characters of an error's message a report keeps (a user function's error may
#: carry megabytes: the report and the summary line stay readable)
MESSAGE_LIMIT = 4000


def shortened(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message``, its middle cut out beyond ``limit`` characters (the start says what
    failed, the end often why)."""
    if len(message) <= limit:
        return message
    cut = len(message) - limit
    return f"{message[:limit * 3 // 4]} ... [{cut} characters cut] ... {message[-limit // 4:]}"


def one_line(message: str) -> str:
    """``message`` on one line, for a line of the summary or of stderr (the report keeps it
    whole): its lines stripped and joined, by a space after one ending in ":" (a
    ManifestError's head, its problems), else by " | "; the caret under the column of a JSON
    error's excerpt (pipeline.core.manifest.json_problem) dropped, as it points at nothing
    once the lines are one (what follows it on its line, which a wrapper added, follows
    the excerpt)."""
    joined: list[str] = []
    for line in message.splitlines():
        caret = line.lstrip().startswith("^")
        line = line.strip().lstrip("^").strip()
        if line:
            sep = " " if not joined or caret or joined[-1].endswith(":") else " | "
            joined.append(sep + line if joined else line)
    return "".join(joined)


def error_record(exc: BaseException, where: str = "") -> dict[str, str]:
    """The ``{"type", "message"}`` record of an exception, as reports show it (running out
    of memory, threads or open files under its own name, saying ``where``:
    :func:`exhausted`)."""
    exc = exhausted(exc, where) or exc
    return {"type": type(exc).__name__, "message": shortened(str(exc))}


#: what to do when a task runs out of memory (or threads)
OUT_OF_MEMORY_HINT = ("this is not the input's fault: run with fewer --workers (fewer tasks "
                      "at once), give the job a smaller \"tile\" in the manifest, or give the "
                      "process more memory (its ulimit -v, the container's memory limit), "
                      "then run the job again")


#: what to do about a Lambda function's memory: it is fixed (its MB, set by deploy.py), with
#: no --workers and no ulimit to change; said of a MemoryError in the function and of
#: Lambda's Runtime.OutOfMemory alike
LAMBDA_MEMORY_ADVICE = ("give the job a smaller \"tile\" in the manifest, or raise the "
                        "function's memory (FUNCTION_SIZES in pipeline/core/constants.py, then "
                        "deploy.py)")
#: what to do when an invocation on AWS Lambda runs out of memory (or threads)
LAMBDA_OUT_OF_MEMORY_HINT = (f"this is not the input's fault: {LAMBDA_MEMORY_ADVICE}, then run "
                             "the job again")


def lambda_function() -> str | None:
    """The name of the Lambda function this process runs in (``AWS_LAMBDA_FUNCTION_NAME``,
    which Lambda sets); None elsewhere, and in a local run (``tiffpipe run``: its run tag,
    :data:`~pipeline.core.constants.RUN_TAG_ENV`, is set in its process and its workers),
    which may have inherited that variable (started inside a function of one's own, or from
    a shell that exported it): its tasks run on this machine, not in tiffpipe's functions."""
    from pipeline.core.constants import RUN_TAG_ENV

    if os.environ.get(RUN_TAG_ENV):
        return None
    return os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or None


def lambda_hint(local: str, on_lambda: str) -> str:
    """The advice that fits where this process runs: in a Lambda function
    (:func:`lambda_function`), ``on_lambda`` after the function's name and memory (a
    function has no shell, no --workers and no ulimit to change); else ``local`` (for
    ``tiffpipe run`` on this machine)."""
    function = lambda_function()
    if not function:
        return local
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    size = f" ({memory} MB)" if memory else ""
    return f"in the Lambda function {function}{size}: {on_lambda}"


def out_of_memory_hint() -> str:
    """What to do when a task runs out of memory where this process runs
    (:func:`lambda_hint`), in the words of the run's caller (:func:`in_callers_words`)."""
    return lambda_hint(in_callers_words(OUT_OF_MEMORY_HINT), LAMBDA_OUT_OF_MEMORY_HINT)


#: what to do when an invocation on AWS Lambda meets its limit of open files: that limit
#: (1,024 an execution environment) cannot be raised, and tiffpipe's own steps keep a few
#: dozen open at most (S3 connections); what holds the rest runs for the user
LAMBDA_OPEN_FILES_HINT = ("a Lambda function's limit of open files (1,024) cannot be raised, "
                          "and tiffpipe's own steps keep a few dozen open at most: code the "
                          "function runs for you most likely holds the rest, such as a custom "
                          "op that opens files or connections and does not close them (its "
                          "module lives on across invocations); make it close them, deploy "
                          "it again, then run the job again")


def open_files_limit() -> tuple[str, str]:
    """The process's soft limit of open files, as ``ulimit -n N``, and a higher one to
    suggest (``ulimit -n 4096``, or twice the limit above that)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return "ulimit -n", "ulimit -n 4096"
    if soft < 0:  # unlimited
        return "ulimit -n unlimited", "ulimit -n unlimited"
    return f"ulimit -n {soft}", f"ulimit -n {max(4096, 2 * soft)}"


def _open_files_hint(code: int) -> str:
    """What to do about EMFILE (the process's limit) or ENFILE (the system's) on this
    machine."""
    if code == errno.EMFILE:
        now, higher = open_files_limit()
        whose = (f"the process's limit of open files is reached ({now}): raise it in the "
                 f"shell that runs tiffpipe ({higher}, as its hard limit allows)")
    else:
        whose = ("the system's limit of open files is reached (fs.file-max): close other "
                 "programs")
    return f"{whose}, {in_callers_words('or run with fewer --workers')}, then run the job again"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the process ran out of memory: MemoryError (numpy's "Unable to
    allocate"), a thread that could not start, a codec's allocation failure (zstd's
    "Allocation error", zlib's "Insufficient memory", libjpeg's "Insufficient memory")."""
    if isinstance(exc, (MemoryError, OutOfMemoryError)):
        return True
    text = str(exc) if not isinstance(exc, TiffpipeError) else ""
    if isinstance(exc, RuntimeError) and "can't start new thread" in text:
        return True
    return any(words in text for words in ("Allocation error", "Insufficient memory",
                                           "memory allocation failed", "out of memory"))


def exhausted(exc: BaseException, where: str = "") -> TiffpipeError | None:
    """``exc`` under a name that says the process ran out of a resource, or None (any other
    error): :class:`OutOfMemoryError` (:func:`is_out_of_memory`) or
    :class:`TooManyOpenFilesError` (EMFILE, ENFILE), its message naming ``where`` (the task,
    the input and page) and what to do. One already so named is returned as it is."""
    if isinstance(exc, (OutOfMemoryError, TooManyOpenFilesError)):
        return exc
    at = f"{where}: " if where else ""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if is_out_of_memory(exc):
        why = ("a thread could not start" if "can't start new thread" in str(exc)
               else "out of memory")
        return OutOfMemoryError(f"{at}{why} ({what}); {out_of_memory_hint()}")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        hint = lambda_hint(_open_files_hint(exc.errno), LAMBDA_OPEN_FILES_HINT)
        return TooManyOpenFilesError(f"{at}too many open files ({what}): {hint}")
    return None


def by_name(name: str) -> type[TiffpipeError]:
    """The tiffpipe error class called ``name``; for other names (``MemoryError``, a codec's
    error) a TiffpipeError subclass of that name, so a re-raised error keeps its name."""
    for cls in _all_subclasses(TiffpipeError):
        if cls.__name__ == name:
            return cls
    safe = name if name.isidentifier() else "TiffpipeError"
    return type(safe, (TiffpipeError,), {"__module__": __name__})


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: what a failed job's error says of its cause (the report's ``fault`` of a FAILED job's
#: error), so that a person, or a script, knows what to do with the job: ``input``, the job's
#: input (or its entry in the manifest) is at fault, and a rerun fails the same: fix or
#: replace the file, or leave the job out; ``platform``, where it ran is (a permission, the
#: function's time or memory, a limit of S3): fix what the message says, then rerun the job;
#: ``transient``, a failure that may pass (throttling, a lost worker, a stopped run): rerun
#: the job as it is
INPUT_FAULT, PLATFORM_FAULT, TRANSIENT_FAULT = "input", "platform", "transient"
#: the error types of each fault but ``platform``, the default: an error not known here (a
#: codec's own, say) is looked at before the job is left out
_FAULTS = {
    INPUT_FAULT: frozenset((
        "InputNotFoundError", "NotATiffError", "CorruptTiffError", "UnsupportedTiffError",
        "PageNotFoundError", "OperationError", "OutputExistsError", "OutputTooLargeError",
        "ManifestError")),
    TRANSIENT_FAULT: frozenset((
        "StorageError", "WorkerCrashedError", "InputChangedError", INTERRUPTED_ERROR,
        RUN_FAILED_ERROR, "Lambda.TooManyRequestsException", "Lambda.ServiceException",
        "Lambda.AWSLambdaException", "Lambda.SdkClientException",
        "Lambda.ClientExecutionTimeoutException")),
}
#: what to do with the jobs of each fault, in words (``tiffpipe status`` says it)
FAULT_ADVICE = {
    INPUT_FAULT: "the input or its job is at fault, a rerun fails the same: fix or replace "
                 "the file (or the job), or leave the job out",
    PLATFORM_FAULT: "where it ran is at fault (a permission, the function's time or memory): "
                    "fix what the message says, then rerun the job",
    TRANSIENT_FAULT: "a failure that may pass: rerun the job as it is",
}


def fault_of(error_type: str) -> str:
    """The fault (:data:`INPUT_FAULT`, :data:`PLATFORM_FAULT`, :data:`TRANSIENT_FAULT`) of a
    failed job whose error is of type ``error_type``."""
    for fault, types in _FAULTS.items():
        if error_type in types:
            return fault
    return PLATFORM_FAULT


def job_fault(job: dict[str, Any]) -> str:
    """The fault of a report's failed ``job``: its error's ``fault``, or, in a report written
    before reports said it (by a stack's functions deployed before: ``tiffpipe status`` of
    one of its runs), :func:`fault_of` its error's type, as the report would say now."""
    error = job.get("error") or {}
    return str(error.get("fault") or fault_of(str(error.get("type"))))


#: errors that no wildcard of a Retry or Catch matches (AWS's error-handling docs: States.ALL
#: does not catch States.Runtime or States.DataLimitExceeded)
UNCAUGHT_BY_ALL = frozenset({"States.Runtime", "States.DataLimitExceeded"})


def failure_record(error: dict[str, Any]) -> dict[str, str]:
    """``{"type", "message"}`` from the ``{"Error", "Cause"}`` of a Step Functions Catch.

    A Lambda error's Cause is the JSON of ``{"errorType", "errorMessage", "stackTrace"}``;
    an error raised without a message (``raise RuntimeError()``, ``assert x``) is told so,
    with where it was raised, not as that JSON and its whole stack trace.
    """
    name = str(error.get("Error") or "UnknownError")
    cause = error.get("Cause") or ""
    message = str(cause)
    try:
        parsed = json.loads(cause) if isinstance(cause, str) else cause
        if isinstance(parsed, dict) and "errorMessage" in parsed:
            name = parsed.get("errorType") or name
            message = parsed.get("errorMessage") or _no_message(name, parsed.get("stackTrace"))
    except ValueError:
        pass
    hint = _AWS_HINTS.get(name)
    if hint is None and "Runtime exited with error: signal: killed" in message:
        hint = _AWS_HINTS["Runtime.OutOfMemory"]  # Lambda's words for a process killed
    if hint:
        message = f"{message.rstrip('. ')}: {hint}" if message.strip() else hint
    return {"type": name, "message": shortened(message)}


_LESS_WORK = ("`tiffpipe estimate` on the manifest shows each step's longest invocation; a "
              'job with "fuse": false is processed in batches of tiles, each invocation doing '
              "less")
#: what to do about the errors AWS itself raises for an invocation (no message of ours)
_AWS_HINTS = {
    "Sandbox.Timedout": "the function's timeout stopped the invocation (900 s is Lambda's "
                        "longest): " + _LESS_WORK,
    "States.Timeout": "a state ran past the TimeoutSeconds (or HeartbeatSeconds) of the state "
                      "machine definition: raise it, or give each invocation less work: "
                      + _LESS_WORK,
    "Runtime.OutOfMemory": f"the function ran out of memory: {LAMBDA_MEMORY_ADVICE}",
}


def _no_message(name: str, stack: Any) -> str:
    """What a report says of an error that has no message: where it was raised."""
    frames = [str(f).strip() for f in stack if 'File "' in str(f)] if isinstance(
        stack, list) else []
    where = " ".join(frames[-1].split()) if frames else ""
    return f"{name} raised with no message" + (f" ({where})" if where else "")
