"""The end of a job and of a run: record a failed job, write the run report."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.adapters import earlier_runs, storage
from pipeline.adapters.segments import abort_uploads
from pipeline.core.constants import SCHEMA
from pipeline.core.events import FailureEvent, ReportEvent
from pipeline.errors import (
    UNCAUGHT_BY_ALL,
    StorageError,
    TiffpipeError,
    failure_record,
    fault_of,
    in_callers_words,
    was_stopped,
)
from pipeline.steps import held_work, layout
from pipeline.steps.common import (
    PART_OF,
    abort_output_uploads,
    load_job,
    load_plan,
    recorded_errors,
    remove_partial_output,
)

log = logging.getLogger("tiffpipe")

#: job results read at once by the report (S3 GETs)
READ_THREADS = 16


#: a Distributed Map's failure when an item failed: its Cause names no item
MAP_FAILED = "States.ExceedToleratedFailureThreshold"
#: ... what the report adds when no item recorded an error of its own (said in the words of
#: the run's caller as it is added: :func:`~pipeline.errors.in_callers_words`)
UNRECORDED = ("; no unit or batch recorded an error of its own, so its cause is not known "
              "here: one may have been killed (its function's timeout, out of memory) or its "
              "process died, its invocation may have failed before it began (throttled, an "
              "event it could not read), or the work location could not take its error "
              "(full, read-only). Locally, free space there or give the run another work "
              "location (tiffpipe run --work); on AWS, the failed items of the Map Run, in "
              "the Step Functions console, say which and why")


#: the Map state (statemachine.asl.json) whose items run each action that records its
#: errors in the work location (pipeline.steps.common.recorded)
ITEM_STATES = {"split": "Split", "process_unit": "ProcessUnits", "process": "Process",
               "stats": "Stats", "reduce_node": "ReduceLevel", "build_levels": "BuildLevels"}
#: the task that runs a small job's units itself (no Map)
WHOLE_JOB_STATE = "ProcessJob"


def caught(error: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The state whose Catch caught a job's error, and the error (``{"Error", "Cause"}``):
    each Catch puts it at ``$.error.<its state>``. Under a definition before that (an
    execution begun before a deploy), at ``$.error`` itself: no state then."""
    if len(error) == 1:
        (state, inner), = error.items()
        if isinstance(inner, dict) and not {"Error", "Cause"} & set(error):
            return str(state), inner
    return None, error


def failed_step(state: str | None, record: dict[str, Any] | None) -> str | None:
    """Where a job failed, for its report: the state that caught the error (``PlanJob``,
    ``Merge``, ...), or, the error being a unit's or batch's that it recorded, the Map
    state that runs those and the item (``Process (batch 12)``: the Map's own error names
    none)."""
    if record is None:
        return state
    action = str(record.get("step", ""))
    where = state if state == WHOLE_JOB_STATE else ITEM_STATES.get(action, state)
    part = PART_OF.get(action, "node")
    return f"{where} ({part} {record.get('index')})" if where else None


def record_failure(event: FailureEvent) -> dict[str, Any]:
    """Write a FAILED result for a job, with the step it failed in. A unit or batch error
    recorded in the work location is the real cause (a Map state only says that items
    failed), so it wins."""
    job, spec = load_job(event.run, event.job)
    work = layout.job_dir(job["work"], event.job)
    try:
        recorded = recorded_errors(work)
    except TiffpipeError:
        recorded = []
    state, caught_error = caught(event.error)
    error = failure_record(caught_error)
    if recorded:
        error = {"type": recorded[0]["type"], "message": recorded[0]["message"]}
    elif error["type"] == MAP_FAILED:
        error["message"] += in_callers_words(UNRECORDED)
    # the message is kept as it was made: its advice was said in the words of the run's
    # entry point where it was raised (``--workers``, ``workers``), and the paths it names
    # are the user's, never rewritten (a folder ``in --workers 2`` stays so)
    step = failed_step(state, recorded[0] if recorded else None)
    if step:
        error["step"] = step
    now = time.time()
    started = _planned_at(work) or job.get("started_at", now)
    plan_url = layout.plan_file(work)
    result = {"job": event.job, "status": "FAILED", "input": spec.input, "output": spec.output,
              "error": error, "started_at": started, "finished_at": now,
              "seconds": round(now - started, 3)}
    held_work.save_result(layout.result_file(work), result)
    held_work.release(plan_url)  # the job's last step
    try:  # a killed unit or merge leaves its multipart upload open: no orphaned parts
        abort_uploads(work.rstrip("/") + "/")
        abort_output_uploads(work)  # the job's own, not another run's writing the output
    except TiffpipeError:
        pass  # the failure is recorded; S3 lifecycle rules can still clean up
    try:  # locally, a killed merge's temporary file beside the output: this run's only
        remove_partial_output(spec.output)
    except TiffpipeError as exc:
        log.warning("could not remove the temporary files of %s: %s", spec.output, exc)
    return {"job": event.job, "status": "FAILED", "error": error["type"]}


def _planned_at(work: str) -> float | None:
    """When the job whose work folder is ``work`` started (its plan's ``started_at``: held
    in this process, cached or written), or None if it has no plan (a job that failed or
    stopped before PlanJob wrote one)."""
    try:
        return float(load_plan(layout.plan_file(work)).started_at)
    except (TiffpipeError, ValueError, KeyError, TypeError):  # missing or damaged
        return None


#: the error of a job that recorded no result (its RecordFailure did not run either)
NO_RESULT = {"type": "NoResultError",
             "message": "the job recorded no result; see the execution history of the state "
                        "machine"}


def with_failed_executions(doc: dict[str, Any], failures: Any, history: str | None = None,
                           published: Collection[str] = ()) -> bool:
    """The run report ``doc`` told of its jobs whose child execution failed though the run
    went on (``failures``: :attr:`pipeline.engine.execution.Execution.failures`, each with the
    ``state`` that failed, its ``error`` and ``cause``): a job without a result
    (:data:`NO_RESULT`: its execution ended without RecordFailure) gets that error instead,
    and a job whose result says it succeeded or was skipped, but whose execution failed
    after (a state added after Merge), is FAILED with it, its published output named: it
    exists. A job without a result whose execution did not fail, but met an error that a
    Catch leading elsewhere than RecordFailure took (``caught_by``), gets that error. A job
    that recorded its own failure keeps it. The error's ``step`` is the state. ``history``:
    where the execution's events are (else: how to keep them). ``published``: the outputs
    the run's tasks published; a FAILED job's among them is said to exist, and how: a task
    the state machine gave up on past a Task's TimeoutSeconds went on and published it (as a
    Lambda function does on AWS), or a state after the one that published it failed.
    Whether ``doc`` changed (its counts made again)."""
    jobs = {job.get("job"): job for job in doc.get("jobs", [])}
    changed = False
    for failure in sorted(failures, key=lambda f: "caught_by" in f):  # a failure first
        job = jobs.get(failure.get("value"))
        if job is None:
            continue
        error = job.get("error") if isinstance(job.get("error"), dict) else {}
        if job.get("status") == "FAILED" and error.get("type") != NO_RESULT["type"]:
            continue  # its own failure (RecordFailure's, or a stopped run's)
        caught_by = failure.get("caught_by")
        if caught_by is not None and job.get("status") != "FAILED":
            continue  # an error its definition handled, and the job has its result
        record = failure_record({"Error": failure.get("error"), "Cause": failure.get("cause")})
        state = failure.get("state")
        if caught_by is not None:
            said = (f"a Catch of state {state} took this error and led to {caught_by}, not "
                    "to RecordFailure: the job's execution ended without a result")
        elif job.get("status") == "FAILED":
            said = (f"the job's execution failed in state {state} without reaching "
                    "RecordFailure" + (", which a Catch of States.ALL does not catch"
                                       if failure.get("error") in UNCAUGHT_BY_ALL else ""))
        else:
            said = (f"the job's output {job.get('output')} was published (it exists), then "
                    f"the job's execution failed in state {state}, after the step that "
                    "published it")
        where = (f"the run's events are in {history}" if history else
                 in_callers_words("run with --keep-work to keep the run's events "
                                  "(execution-history.json in its work folder)"))
        message = f"{record['message']} ({said}: look at that state in the definition; {where})"
        job["status"] = "FAILED"
        job["error"] = {"type": record["type"], "message": message, "step": state,
                        "fault": fault_of(record["type"])}
        changed = True
    for job in doc.get("jobs", []):
        error = job.get("error")
        if (job.get("status") == "FAILED" and job.get("output") in published
                and isinstance(error, dict) and "(it exists)" not in error.get("message", "")):
            if error.get("type") == "States.Timeout":  # its task went on past the timeout
                how = ("all the same (it exists), by a task of the job that went on after the "
                       "state machine had failed it past the Task's TimeoutSeconds, as a Lambda "
                       "function goes on on AWS")
            else:  # a state after the one that published it failed (one added after Merge)
                step = error.get("step")
                how = ("(it exists) before the job failed" + (f" in state {step}" if step
                                                              else ""))
            error["message"] = (f"{error.get('message', '')} (its output {job['output']} was "
                                f"published {how}: remove it, or run the job again)")
            changed = True
    if changed:
        doc.update(_counts(doc.get("jobs", [])))
    return changed


def _counts(jobs: list[dict[str, Any]]) -> dict[str, int]:
    """A run report's ``succeeded``, ``failed`` and ``skipped``: its jobs by status (FAILED:
    any other); and ``stopped``, those of the FAILED jobs a stop left unfinished
    (:func:`~pipeline.errors.was_stopped`): ``failed`` counts them too, so the three add up
    to the jobs, and ``failed - stopped`` jobs failed of themselves (the summary's and
    stderr's "failed")."""
    statuses = [job.get("status") for job in jobs]
    succeeded, skipped = statuses.count("SUCCEEDED"), statuses.count("SKIPPED")
    return {"succeeded": succeeded, "failed": len(statuses) - succeeded - skipped,
            "skipped": skipped, "stopped": sum(map(was_stopped, jobs))}


def report(event: ReportEvent, missing: dict[str, str] | None = None) -> dict[str, Any]:
    """Gather every job's result into the run report (JSON), write it where the run's report
    goes, and return the counts (:func:`run_report`). A run with no job (a scan that found
    nothing new, or left its jobs to an earlier run) keeps the last run's jobs in its report
    (:func:`last_run`), not lost under an empty one."""
    doc, url = run_report(event, missing)
    if not doc["jobs"] and (kept := last_run(url, doc)) is not None:
        doc["last_run"] = kept
    storage.write_json(url, doc)
    return {"report": url, "succeeded": doc["succeeded"], "failed": doc["failed"],
            "skipped": doc["skipped"]}


def last_run(url: str, doc: dict[str, Any]) -> dict[str, Any] | None:
    """What the report ``doc`` of a run with no job keeps, as its ``last_run``, of the report
    at ``url`` that it replaces: that report whole if its run had jobs, or the ``last_run``
    it kept itself (a run with no job after another: the last run that had jobs, never a
    chain of them). Only a report of the same manifest, or of a scan of the same input into
    the same output; None otherwise, when there is none or it cannot be read (the run goes
    on: it writes its own), and in a Lambda function, where each run's report has a key of
    its own (``reports/<run id>.json``) that none replaces and the functions may not read."""
    if earlier_runs.on_lambda():
        return None
    try:
        before = storage.read_json(url, missing=StorageError)
    except (TiffpipeError, ValueError):
        return None
    if not isinstance(before, dict) or not _same_source(before, doc):
        return None
    if isinstance(before.get("jobs"), list) and before["jobs"]:
        return before
    kept = before.get("last_run")
    return kept if isinstance(kept, dict) else None


def _same_source(before: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether the report ``before`` is of the manifest of the report ``doc``, or of a scan
    of the same input into the same output (the report's ``scan``)."""
    if before.get("manifest") == doc["manifest"]:
        return True
    theirs, ours = before.get("scan"), doc.get("scan")
    return (isinstance(theirs, dict) and isinstance(ours, dict)
            and (theirs.get("input"), theirs.get("output")) == (ours["input"], ours["output"]))


def run_report(event: ReportEvent, missing: dict[str, str] | None = None
               ) -> tuple[dict[str, Any], str]:
    """The run report and where it goes. The results are read from the work location
    (READ_THREADS at a time: a run may have 10,000 jobs), never from the state machine's
    payloads. A job without a result is FAILED with the error ``missing``
    (:data:`NO_RESULT`; a stopped local run gives its own, pipeline.runner)."""
    run = storage.read_json(event.run)

    def result(i: int) -> dict[str, Any]:
        work = layout.job_dir(run["work"], i)
        try:
            return held_work.load_result(layout.result_file(work))
        except TiffpipeError:
            spec = run["jobs"][i]
            doc = {"job": i, "status": "FAILED", "input": spec["input"],
                   "output": spec["output"], "error": dict(missing or NO_RESULT)}
            started = _planned_at(work)  # planned: it ran from then until now (a stopped
            if started is None:  # run's job that was running); else it never started
                return doc
            now = time.time()
            return {**doc, "started_at": started, "finished_at": now,
                    "seconds": round(now - started, 3)}

    with ThreadPoolExecutor(READ_THREADS) as pool:
        jobs = list(pool.map(result, range(len(run["jobs"]))))
    for job in jobs:  # what to do with each failed job: skip it, fix then rerun, or rerun
        if job["status"] == "FAILED" and isinstance(job.get("error"), dict):
            # every error has a step: null where none is known (a stopped job, one with no
            # result, a job of an execution begun before the deploy that named them)
            job["error"].setdefault("step", None)
            job["error"]["fault"] = fault_of(str(job["error"].get("type")))
    now = time.time()
    # "run_id" first: how a report is known (pipeline.runner.REPORT_START)
    doc = {"run_id": run["run_id"], "schema": SCHEMA, "manifest": run["manifest"],
           "started_at": run["started_at"], "finished_at": now,
           "seconds": round(now - run["started_at"], 3), **_counts(jobs)}
    if run.get("scan"):  # what a scan found when PlanRun listed it (before its jobs: a
        doc["scan"] = run["scan"]  # reader of a long report sees it first)
    doc["jobs"] = jobs
    if run.get("deferred_to"):  # a scan's run that left its jobs to an earlier one
        doc["deferred_to"] = run["deferred_to"]
    return doc, run["report"]
