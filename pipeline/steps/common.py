"""What the steps share: the manifest read, cached plans, error records, threads."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.adapters import storage
from pipeline.core.constants import TILE_THREADS_ENV, env_int
from pipeline.core.manifest import (
    Fold,
    ScanSpec,
    enclosing,
    leading,
    load_manifest,
    spelled_apart,
)
from pipeline.core.models import JobPlan, JobSpec
from pipeline.errors import (
    InputNotFoundError,
    ManifestError,
    TiffpipeError,
    WorkMissingError,
    by_name,
    error_record,
    exhausted,
)
from pipeline.steps import held_work, layout

log = logging.getLogger("tiffpipe")


def read_manifest(url: str) -> list[JobSpec] | ScanSpec:
    """A local or S3 manifest's jobs (or its scan), or ManifestError listing every problem
    (InputNotFoundError when it is not there). Paths in it are relative to its folder."""
    if storage.is_s3(url) and storage.names_prefix(url):
        prefix = ("manifest: names a bucket or prefix, not an object: give the key of the "
                  "manifest, s3://bucket/path/manifest.json")
        raise ManifestError(url, [prefix])
    if not storage.is_s3(url) and os.path.isdir(url):
        folder = ('manifest: is a folder, not a JSON file: give the path of the manifest (a '
                  'scan manifest, {"scan": ...}, names the folder inside it)')
        raise ManifestError(url, [folder])
    raw = storage.read_bytes(url, missing=InputNotFoundError)
    if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # a TIFF: a slip of the hand
        tiff = ("manifest: is a TIFF file, not a manifest: give the JSON manifest that lists "
                "the jobs (its input and output), or `tiffpipe preview` to look at a TIFF")
        raise ManifestError(url, [tiff])
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as some editors write: skipped
        raw = raw[3:]  # (by hand: the utf-8-sig codec is a module to load, in a run's time)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start:exc.start + 1]
        not_utf8 = (f"manifest: not UTF-8 text (byte {exc.start} is {byte!r}): save it as "
                    "UTF-8 (JSON text is UTF-8)")
        raise ManifestError(url, [not_utf8]) from None
    # local paths as the OS opens them (``link/../x`` beside the link's target), which
    # every check of what is what then compares; names that differ only in case (or in
    # Unicode normalization) are one file where their folder ignores it (storage.name_fold)
    fold = storage.name_fold()
    parsed = load_manifest(text, url, storage.parent(url), storage.local_path, fold)
    problems = linked_problems(parsed, fold)
    if problems:
        raise ManifestError(url, problems)
    return parsed


#: the first job naming a directory entry (an input or output once links are followed), and
#: the entry as spelled there
Entry = tuple[int, str]


def linked_problems(parsed: list[JobSpec] | ScanSpec, fold: Fold | None = None) -> list[str]:
    """What the manifest's check of paths (spellings only: :mod:`pipeline.core.manifest`)
    cannot see of local paths: a folder that is a link making two jobs' outputs one file, a
    job's output another job's input, or a scan's output a folder inside its input (whose
    outputs every run would take as new inputs). ``fold``: as there, the key of a path where
    its folders ignore case or Unicode normalization (a link to ``o`` and ``O/a.tif``)."""
    key = fold or str
    if isinstance(parsed, ScanSpec):
        if storage.is_s3(parsed.input) or storage.is_s3(parsed.output):
            return []
        src, dst = (os.path.realpath(parsed.input), os.path.realpath(parsed.output))
        common = os.path.commonpath([key(src), key(dst)])
        if common in (key(src), key(dst)):
            where, inner, outer = ("is inside", dst, src) if common == key(src) else (
                "holds", src, dst)
            spelled = spelled_apart(leading(inner, outer), outer)
            return [(f"scan.output: {parsed.output} is, through a link, {dst}, which {where} "
                     f"scan.input ({parsed.input}: {src}){spelled}: outputs would be scanned "
                     "as inputs; give an output folder apart from the input")]
        return []
    folders: dict[str, str] = {}
    readers: dict[str, Entry] = {}
    for i, job in enumerate(parsed):
        if not storage.is_s3(job.input):  # the entry it names, and the file a link reaches
            for follow in (False, True):
                entry = storage.entry_of(job.input, follow, folders)
                readers.setdefault(key(entry), (i, entry))
    writers: dict[str, Entry] = {}
    problems = []
    for i, job in enumerate(parsed):
        if storage.is_s3(job.output):
            continue
        entry = storage.entry_of(job.output, False, folders)
        writer = writers.setdefault(key(entry), (i, entry))
        if writer[0] != i:
            problems.append(f"jobs[{i}].output: {job.output} is, through a link, the output of "
                            f"jobs[{writer[0]}] ({writer[1]}){spelled_apart(entry, writer[1])}: "
                            "one output would replace the other; give it another path")
        reader = readers.get(key(entry))
        if reader is not None and reader[0] != i:  # (its own input: check_not_input)
            problems.append(f"jobs[{i}].output: {job.output} is, through a link, the input of "
                            f"jobs[{reader[0]}] ({reader[1]}){spelled_apart(entry, reader[1])}"
                            ": the output would replace it; give it another path")
    return problems + _nested_through_links(parsed, writers)


def _nested_through_links(parsed: list[JobSpec], writers: dict[str, Entry]) -> list[str]:
    """A problem for each local output inside the file another job writes, once links are
    followed (``olink/a.tif/b.tif`` beside ``o/a.tif``, olink a link to o), which the
    manifest's check of spellings cannot see: the one file cannot be both, and which job
    fails depends on which gets there first. ``writers``: each output's entry's key, its job
    and the entry."""
    problems = []
    for key, (i, entry) in writers.items():
        parent = enclosing(key, writers)
        if parent is not None:
            k, folder = writers[parent]
            problems.append(
                f"jobs[{i}].output: {parsed[i].output} is, through a link, inside the output "
                f"of jobs[{k}] ({folder}){spelled_apart(leading(entry, folder), folder)}, a "
                "file, not a folder: give one of them another path")
    return problems


def load_job(run_url: str, job: int) -> tuple[dict[str, Any], JobSpec]:
    """One job of the run whose run.json is ``run_url``: its record in job-specs.bin
    (``work``, ``started_at``: see :func:`pipeline.steps.planning.write_run`) and its spec.
    Only its index entry and its record are read, whatever the number of jobs."""
    url = layout.job_specs_file(storage.parent(run_url))
    entry = (storage.read_range(url, layout.JOB_ENTRY.size * job, layout.JOB_ENTRY.size)
             if job >= 0 else b"")
    span = layout.job_spec_span(entry, job)
    if span is None:
        raise WorkMissingError(f"{url} holds no job {job}: the run has fewer jobs (or the "
                               "file is damaged); start the run again")
    doc: dict[str, Any] = json.loads(storage.read_range(url, *span))
    return doc, JobSpec.from_json(doc["spec"])


#: plans kept by :func:`load_plan` (most recently used last)
_plans: OrderedDict[str, JobPlan] = OrderedDict()
_plans_lock = threading.Lock()
PLANS_KEPT = 8


def save_skipped(job_work: str, job: int, spec: JobSpec, message: str,
                 started: float) -> None:
    """A job left undone because its output exists (``if_exists: skip``): its result
    (SKIPPED, with ``message``), written where a finished job's goes."""
    now = time.time()
    held_work.save_result(layout.result_file(job_work), {
        "job": job, "status": "SKIPPED", "input": spec.input, "output": spec.output,
        "message": message, "started_at": started, "finished_at": now,
        "seconds": round(now - started, 3)})


def load_plan(plan_url: str) -> JobPlan:
    """A job's plan; cached, since a warm worker serves many units and batches of a job
    (and PlanJob's process, which wrote it: :func:`keep_plan`)."""
    with _plans_lock:
        plan = _plans.get(plan_url)
        if plan is not None:
            _plans.move_to_end(plan_url)
            return plan
    plan = held_work.held_plan(plan_url) or JobPlan.from_json(storage.read_json(plan_url))
    keep_plan(plan_url, plan)
    return plan


def keep_plan(plan_url: str, plan: JobPlan) -> None:
    """Remember ``plan`` as the content of ``plan_url`` (just written by this process)."""
    with _plans_lock:
        _plans[plan_url] = plan
        _plans.move_to_end(plan_url)
        while len(_plans) > PLANS_KEPT:
            _plans.popitem(last=False)


def forget_plans() -> None:
    """Drop the cached plans (tests that rewrite a plan file)."""
    with _plans_lock:
        _plans.clear()


@contextmanager
def recorded(plan: JobPlan, step: str, index: int, clear: bool = True) -> Iterator[None]:
    """Record the error of a failing unit or batch in the work location, then re-raise it;
    once it succeeds, remove what an earlier attempt recorded (Step Functions retries a
    failed item, e.g. after S3's SlowDown: the retry's success is what counts).

    Merge, ReduceStats (:func:`explained_by_records`) and RecordFailure report these
    recorded errors: a Distributed Map run reports only that too many items failed (and
    moto's engine swallows failed items), so the job's report would otherwise lose the
    real cause. ``clear=False``: no earlier attempt's record to remove (a ProcessJob's units:
    its retry runs the whole task again, and its success is its result; one DELETE less, a
    round trip on S3, for each of a scanned archive's thousands of small jobs).
    """
    url = layout.error_file(plan.work, step, index)
    try:
        yield
    except Exception as exc:
        where = ""  # (said only of an error of memory or open files: :func:`exhausted`)
        if exhausted(exc) is not None:
            where = plan_where(plan, f"{FUNCTION_OF.get(step, 'process')}.{step}",
                               PART_OF.get(step), index)
        record = {**error_record(exc, where), "step": step, "index": index}
        try:
            storage.write_json(url, record)
        except TiffpipeError:
            pass  # the step fails with its own error anyway; recording is best effort
        raise
    if not clear:
        return
    try:  # one request (a DELETE, free on S3) whether or not there is one
        storage.discard(url)
    except TiffpipeError as exc:  # a later step reads a stale record only if work is missing
        log.warning("could not remove %s, an earlier attempt's error: %s", url, exc)


#: the function (image) that runs each recorded step, if not process
#: (pipeline.handlers.FUNCTIONS), and which part of the job its index counts
FUNCTION_OF = {"split": "split"}
PART_OF = {"split": "unit", "process_unit": "unit", "build_levels": "unit",
           "process": "batch", "stats": "batch"}


def plan_where(plan: JobPlan, task: str, key: str | None = None, index: int | None = None
               ) -> str:
    """``process.process_unit of job 2 (in/a.tif), unit 3 (page 0)``: the task, its job and
    input, and its unit or batch (``key``, ``index``) with the page it is on."""
    where = f"{task} of job {plan.job} ({plan.spec.input})"
    parts = {"unit": plan.units, "batch": plan.batches}.get(key or "", [])
    if isinstance(index, int) and 0 <= index < len(parts):
        page = parts[index].page
        if page < len(plan.pages):  # (its position in the job's pages)
            page = plan.pages[page].info.index
        where += f", {key} {index} (page {page})"
    return where


def task_where(function: str, event: Any) -> str:
    """Where a task works, for its error's message: ``process.process_unit of job 2
    (in/a.tif), unit 3 (page 0)``, as much as its event and its job's plan (when this
    process has it at hand) tell."""
    if not isinstance(event, dict):
        return f"{function} task"
    where = f"{function}.{event.get('action')}"
    plan_url = event.get("plan")
    if not isinstance(plan_url, str):
        return where
    try:
        plan = load_plan(plan_url)
        key = next((k for k in ("unit", "batch") if isinstance(event.get(k), int)), None)
        return plan_where(plan, where, key, event.get(key) if key else None)
    except Exception:  # noqa: BLE001 - (the plan is gone, or no memory) what we have
        return where


def recorded_errors(job_work: str) -> list[dict[str, str]]:
    """The recorded unit and batch errors of a job, root causes first: unit errors before
    process errors, and missing-work errors (the echo of an earlier failure) last."""
    urls = [u for u in storage.list_prefix(layout.errors_dir(job_work)) if u.endswith(".json")]
    records = [json.loads(storage.read_bytes(u)) for u in sorted(urls)]
    order = {"split": 0, "process_unit": 0, "process": 1}
    return sorted(records, key=lambda r: (r["type"] == "WorkMissingError",
                                          order.get(r.get("step", ""), 2)))


@contextmanager
def explained_by_records(job_work: str) -> Iterator[None]:
    """A step that reads its Map's work (Merge, ReduceStats): when some of it is missing
    (:class:`WorkMissingError`), the first recorded error of the job's units or batches is
    why, raised again under its own name. Where the Map failed, the state machine never
    reaches the step; moto's engine, which swallows failed items, does. The records are
    read only then: a record whose item a retry finished has no missing work to explain."""
    try:
        yield
    except WorkMissingError as exc:
        try:
            errors = recorded_errors(job_work)
        except TiffpipeError:
            errors = []
        if not errors:
            raise
        first = errors[0]
        more = f" (and {len(errors) - 1} more failed units/batches)" if len(errors) > 1 else ""
        raise by_name(first["type"])(first["message"] + more) from exc


def record_output_upload(job_work: str, output: str, upload: str) -> None:
    """Note that the multipart upload ``upload`` (just begun) writes the job's output:
    should the job fail, :func:`abort_output_uploads` ends it, though the invocation that
    began it was killed. One small write a merge (of an output of parts)."""
    storage.write_json(layout.upload_file(job_work, upload), {"output": output,
                                                              "upload": upload})


def forget_output_uploads(job_work: str, uploads: list[str]) -> None:
    """Remove the records of ``uploads``, ended (completed; aborted: an output published by
    an earlier attempt, PlanJob's test upload): nothing is left to end, and a run that later
    finds this work (kept with --keep-work) must not take them for open ones. Never the
    step's failure: a record left is passed over as an upload already ended."""
    for upload in uploads:
        try:
            storage.discard(layout.upload_file(job_work, upload))
        except TiffpipeError as exc:
            log.warning("could not remove the record of the finished upload %s: %s", upload,
                        exc)


def abort_output_uploads(job_work: str) -> int:
    """Abort the output uploads the job recorded that are still open (a merge killed by its
    timeout leaves its upload open, and S3 keeps its parts, and bills them, until it is
    ended); how many. Only the job's own: another run writing the same output at the same
    time (an upload of the same key) is not ended."""
    from pipeline.adapters.segments import abort_recorded_uploads  # (failed jobs only)

    return abort_recorded_uploads(layout.uploads_dir(job_work))


def remove_partial_output(output: str) -> list[str]:
    """Remove the temporary files this local run (:func:`storage.run_tag`) left beside the
    local output ``output``: a merge (or ProcessJob) whose worker was killed while it wrote
    one (``kill -9``, the out-of-memory killer) cannot remove its own. Never another run's
    writing the same output (their names carry their run's id), nor the output itself;
    nothing for S3 (a killed merge's upload is ended by :func:`abort_output_uploads`) or
    outside a local run. What it removed."""
    run = storage.run_tag()
    if run is None or storage.is_s3(output):
        return []
    return storage.remove_temp_outputs(output, run)


#: the actions that write a job's output (a killed one may leave its temporary file)
PUBLISHING_ACTIONS = ("merge", "process_job")


def remove_crashed_output(event: Any) -> list[str]:
    """After the worker running the task ``event`` died: when the task was one that writes
    its job's output (:data:`PUBLISHING_ACTIONS`), this run's temporary files beside that
    output (:func:`remove_partial_output`), before the task is retried, so that a retried
    merge that succeeds leaves none of its killed attempts' behind. Best effort: a warning
    if they cannot be removed (record_failure tries again if the job fails)."""
    if not isinstance(event, dict) or event.get("action") not in PUBLISHING_ACTIONS:
        return []
    plan = event.get("plan")
    if not isinstance(plan, str):
        return []
    try:
        output = load_plan(plan).spec.output
        return remove_partial_output(output)
    except (TiffpipeError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("could not remove the temporary files of a killed %s: %s",
                    event.get("action"), exc)
        return []


def tile_threads() -> int:
    """Tiles worked on at once in one invocation (process, process_unit, merge's pyramid):
    ``TIFFPIPE_TILE_THREADS``, else the CPUs this process may use. OpenCV and the codecs
    release the GIL; the local engine sets it for its workers
    (:func:`pipeline.engine.workers.worker_tile_threads`)."""
    return env_int(TILE_THREADS_ENV, os.environ) or usable_cores()


def usable_cores() -> int:
    """The CPUs this process may use (its affinity where the platform has one)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
