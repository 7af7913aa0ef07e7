"""The planning steps: read the manifest once for the run, then plan each job."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipeline.adapters import earlier_runs, local_runs, storage
from pipeline.adapters.metadata import (
    colormap_note,
    dropped_nodata_note,
    unit_note,
    xmp_note,
)
from pipeline.adapters.tiff_read import keeps_palette, read_infos_and_version
from pipeline.adapters.tile_codec import output_problems
from pipeline.core import concurrency
from pipeline.core import custom as custom_mod
from pipeline.core.chain import job_reads
from pipeline.core.events import JobEvent, JobList, RunEvent, StatsRound, to_payload
from pipeline.core.levels import level_units
from pipeline.core.manifest import TIFF_SUFFIXES, ScanFindings, ScanSpec, scan_jobs
from pipeline.core.models import JobPlan, JobSpec, PageInfo, PagePlan
from pipeline.core.ops import chain_from_json
from pipeline.core.plan import (
    Problem,
    convert_note,
    grouped_by_page,
    left_out_note,
    left_out_notice,
    make_plan,
    masks_left_out,
    one_bit_note,
    pages_that_fit,
    single_task,
)
from pipeline.core.thumbs import contact_sheet_url
from pipeline.errors import (
    InputNotFoundError,
    OperationError,
    OutputExistsError,
    OutputNotWritableError,
    TiffpipeError,
    WorkLocationError,
    in_callers_words,
)
from pipeline.steps import held_work, layout
from pipeline.steps.common import (
    forget_output_uploads,
    keep_plan,
    load_job,
    read_manifest,
    record_output_upload,
    save_skipped,
)
from pipeline.steps.thumbs import sums_thumbnails

log = logging.getLogger(__name__)


def plan_run(event: RunEvent) -> dict[str, Any]:
    """Validate the manifest and write run.json and the job list the Jobs map reads.

    A scan manifest is expanded here, into one job per new input (none: an empty run). The
    job indices go to a file (``jobs.json``), not to the result: the ``Jobs`` Distributed
    Map's ItemReader reads them, so the state payloads stay small for any number of jobs.
    It also shares the run's concurrency out between its jobs (core.concurrency.share).
    A scan's run while an earlier run of the same scan is still going, and on AWS a list
    of jobs' run while an earlier execution of the same manifest is (:func:`_earlier`),
    plans no job: its run.json names that run. What a scan found (its TIFFs, those done
    before, left out, made jobs) goes to run.json too, for the report, not to the result.
    """
    parsed = read_manifest(event.manifest)
    check_outside_work(event.work, parsed, event.report or None)
    if event.report:
        check_report_path(event.report, event.manifest, parsed)
    earlier = _earlier(event, parsed)
    specs, found = ([], None) if earlier else jobs_now(parsed)
    run_url = write_run(event.work, specs, event.run_id, event.manifest,
                        event.report or layout.report_file(event.work), earlier, found)
    jobs_url = layout.jobs_file(event.work)
    storage.write_json(jobs_url, list(range(len(specs))), indent=None)
    jobs_at_once, per_job = concurrency.share(len(specs), event.concurrency)
    return {"run": run_url, "jobs": len(specs), "items": JobList.of(jobs_url).to_json(),
            "jobs_at_once": jobs_at_once, "per_job": per_job}


def check_report_path(report: str, manifest: str, parsed: list[JobSpec] | ScanSpec) -> None:
    """OutputNotWritableError if the run report, or its contact sheet, would be written over
    the manifest or a job's input or output (``--report`` given one of them: the input
    would be lost), compared as one file under two names too; for a scan, over a TIFF in
    its input or output folder (one it reads, or may write). ``tiffpipe run`` checks it
    before the run (exit 2); PlanRun again, before any job, for every other caller."""
    named = [(manifest, "the manifest")]
    for i, spec in enumerate([] if isinstance(parsed, ScanSpec) else parsed):
        named += [(spec.input, f"job {i}'s input"), (spec.output, f"job {i}'s output")]
    for written, what in ((report, "report"), (contact_sheet_url(report), "contact sheet")):
        whose = next((whose for url, whose in named if storage.same_file(url, written)), None)
        if isinstance(parsed, ScanSpec) and written.lower().endswith(TIFF_SUFFIXES):
            whose = whose or next((f"a TIFF in {field} ({folder})" for field, folder in (
                ("scan.input", parsed.input), ("scan.output", parsed.output))
                if storage.inside(written, folder)), None)
        if whose is not None:
            raise OutputNotWritableError(
                f"{written}: is {whose}, which the run's {what} would replace; "
                + in_callers_words("give --report another path"))


def check_outside_work(work: str, parsed: list[JobSpec] | ScanSpec,
                       report: str | None = None) -> None:
    """WorkLocationError if a job's output (a scan's output folder) or the run report
    ``report`` is inside the work location ``work``: the run removes its work at its end
    (``jobs/`` and the rest, :mod:`pipeline.adapters.work_location`), and with it an output
    reported as written, and a later run would refuse the location for the files left
    there. ``tiffpipe run`` checks it before the run (exit 2, with its ``--work``); PlanRun
    again, before any job, for every caller (a run's default work location too)."""
    problems = []
    if isinstance(parsed, ScanSpec):
        if storage.inside(parsed.output, work):
            problems.append(f"scan.output: {parsed.output}")
    else:
        within = storage.inside_all([spec.output for spec in parsed], work)
        problems += [f"jobs[{i}].output: {spec.output}" for i, spec in enumerate(parsed)
                     if within[i]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WorkLocationError(
            f"{'; '.join(problems[:3])}{more}: inside the work location {work}, which the "
            "run removes when it ends (its outputs with it): " + in_callers_words(
                "give the output a path outside it, or the run another work location "
                "(tiffpipe run --work)"))
    if report and storage.inside(report, work):
        raise WorkLocationError(
            f"{report}: the run report is inside the work location {work}, which the run "
            "removes when it ends: " + in_callers_words(
                "give --report a path outside it, or the run another work location "
                "(tiffpipe run --work)"))


def _earlier(event: RunEvent, parsed: list[JobSpec] | ScanSpec) -> str | None:
    """An earlier run of the manifest still going. A scan's: on Lambda, an execution of the
    state machine (:mod:`pipeline.adapters.earlier_runs`); else a local run of this machine
    (:mod:`pipeline.adapters.local_runs`; the execution's name ends its ARN). A list of
    jobs': on Lambda, an execution of the same manifest URL (a schedule's runs, each on the
    schedule's manifest, one of them longer than the interval: both would do every job
    and write the same outputs at once); ``tiffpipe start`` and a local run refuse such a
    run before it starts (:class:`~pipeline.errors.RunningAlreadyError`)."""
    scan = isinstance(parsed, ScanSpec)
    same = _same_scan(parsed, event.manifest) if scan else event.manifest.__eq__
    if earlier_runs.on_lambda():
        return earlier_runs.earlier_run(event.execution, same)
    return local_runs.earlier_run(event.execution.rsplit(":", 1)[-1], same) if scan else None


def _same_scan(scan: ScanSpec, url: str) -> Callable[[str], bool]:
    """Whether another run's manifest (its URL) is this scan: the same manifest, or one that
    scans the same input into the same output (``tiffpipe start`` uploads a local manifest
    to a key of the run's own; an unreadable or other manifest is not)."""
    def same(other: str) -> bool:
        if other == url:
            return True
        try:
            parsed = read_manifest(other)
        except TiffpipeError:
            return False
        return isinstance(parsed, ScanSpec) and (
            _folder(parsed.input), _folder(parsed.output)) == (
            _folder(scan.input), _folder(scan.output))

    return same


def _folder(location: str) -> str:
    """One spelling of a scan's folder: a local one resolved (links followed), so two
    manifests that name it differently are the same scan."""
    return location if storage.is_s3(location) else os.path.realpath(location)


def write_run(work: str, specs: list[JobSpec], run_id: str, manifest: str, report: str,
              deferred_to: str | None = None, found: ScanFindings | None = None) -> str:
    """Write run.json (the run and every job's spec: the report and the contact sheet read
    it) and job-specs.bin (each job's record: its spec, the work location, the run's start),
    of which a job's steps read only their record (:func:`pipeline.steps.common.load_job`):
    run.json grows with the jobs, and 10,000 jobs' PlanJobs each reading it would read ~3 MB
    each (O(n^2)). One file for all the records, not one a job: a file a job cost PlanRun,
    before any job started, ~1.5 ms a job on a local disk (1,144 jobs: 1.5-2 s) and a PUT a
    job on S3. ``deferred_to``: the earlier run of the same manifest this one leaves its jobs
    to; ``found``: what the run's scan found (the report's ``scan``). Returns run.json's
    URL."""
    started = time.time()
    jobs = [s.to_json() for s in specs]
    storage.write_bytes(layout.job_specs_file(work), layout.pack_job_specs(
        [json.dumps({"work": work, "started_at": started, "spec": job}).encode("utf-8")
         for job in jobs]))
    run_url = layout.run_file(work)
    # compact, as every work file: json's C encoder writes only those (indented JSON goes
    # through its pure-Python one, which showed in PlanRun's profile of 381 jobs)
    doc = {"run_id": run_id, "manifest": manifest, "work": work, "report": report,
           "started_at": started, "jobs": jobs}
    if deferred_to:
        doc["deferred_to"] = deferred_to
    if found is not None:
        doc["scan"] = found.to_json()
    storage.write_json(run_url, doc, indent=None)
    return run_url


def jobs_now(parsed: list[JobSpec] | ScanSpec) -> tuple[list[JobSpec], ScanFindings | None]:
    """The jobs a run of a checked manifest would have now, and what its scan found (None
    for a list of jobs, whose jobs are as listed): a scan's folders listed as PlanRun lists
    them (:func:`expand_scan`). PlanRun, ``validate --inputs`` and ``tiffpipe estimate``
    each take a scan's jobs from here. Leaves nothing written (a local output folder may be
    asked whether it ignores Unicode normalization by a probe file, removed at once:
    :func:`storage.name_fold`)."""
    if not isinstance(parsed, ScanSpec):
        return parsed, None
    found = ScanFindings(parsed.input, parsed.output)
    return expand_scan(parsed, found), found


def expand_scan(scan: ScanSpec, found: ScanFindings | None = None) -> list[JobSpec]:
    """The jobs of a scan: every TIFF under its input whose output does not exist yet.

    One listing of each side, not a request per file. Outputs are published in one step, so
    an output that exists is complete: a rerun does no work twice. A local output folder is
    asked whether it ignores case or Unicode normalization (:func:`storage.name_fold`): inputs
    whose outputs would be one file there are left out with a warning naming them
    (:func:`scan_jobs`), as links to outside the folder are, not made jobs that fail on every
    run until one is renamed. ``found``: what the scan found, counted into it (the report's
    ``scan``).
    """
    found = found if found is not None else ScanFindings(scan.input, scan.output)
    if not storage.is_s3(scan.input) and not os.path.isdir(scan.input):
        if os.path.isfile(scan.input):  # one file: a job's input, not a scan's
            raise InputNotFoundError(
                f"scan input {scan.input} is a file, and a scan's input is a folder of TIFFs: "
                f'give the folder, or run this file as a job ({{"jobs": [{{"input": ..., '
                f'"output": ...}}]}}) instead of a scan')
        raise InputNotFoundError(f"scan input {scan.input} is not a folder: check scan.input "
                                 "in the manifest and that the folder is there")
    collisions: list[str] = []
    not_utf8: list[str] = []
    jobs = scan_jobs(scan, storage.list_prefix(scan.input, InputNotFoundError),
                     storage.list_prefix(scan.output, OutputNotWritableError),
                     None if storage.is_s3(scan.output) else storage.name_fold(), collisions,
                     found, not_utf8)
    if not_utf8:
        log.warning("scan of %s: left out %d file(s) whose names are not UTF-8 (each byte "
                    "that is not shown \\xNN): %s; the report names files in UTF-8, where "
                    "such a name has no spelling: rename the file to a UTF-8 name (convmv -f "
                    "latin1 -t utf-8 --notest FILE, or mv), and a run takes it", scan.input,
                    len(not_utf8), _named(not_utf8))
    if collisions:
        log.warning("scan of %s into %s: left out %d group(s) of inputs: %s", scan.input,
                    scan.output, len(collisions), "; ".join(collisions))
    if not storage.is_s3(scan.input):
        jobs = _without_links_out(scan.input, jobs, found.left_out)
    found.jobs = len(jobs)
    return jobs


#: the links out of a scan's input folder a warning names (then how many more)
LINKS_NAMED = 3


def _without_links_out(folder: str, jobs: list[JobSpec],
                       left_out: dict[str, int]) -> list[JobSpec]:
    """The jobs of a local scan but those whose input is a link to a file outside the scanned
    ``folder`` (through any links), which are left out with a warning naming them: whoever
    may put files in the folder could otherwise link any file this process may read (another
    user's slide, a key) and get its pixels published in the scan's output, or the first
    bytes of a file that is not a TIFF in the run report. A link within the folder is
    processed; a link to nothing (broken, or to a file not there yet) is left out with a
    warning too, not made a job that fails on every run until it is mended. One ``lstat``
    a job. Each link left out is counted in ``left_out`` (``link_outside``,
    ``link_to_nothing``: :data:`~pipeline.core.manifest.LEFT_OUT_WHY`)."""
    root = os.path.realpath(folder)
    kept, out, broken = [], [], []
    for spec in jobs:
        if os.path.islink(spec.input):
            target = os.path.realpath(spec.input)
            if os.path.commonpath([root, target]) != root:
                out.append(f"{spec.input} -> {target}")
                continue
            if not os.path.exists(target):
                broken.append(f"{spec.input} -> {target}")
                continue
        kept.append(spec)
    left_out["link_outside"] += len(out)
    left_out["link_to_nothing"] += len(broken)
    if out:
        log.warning("scan of %s: left out %d link(s) to files outside the scanned folder: "
                    "%s; a scan processes the files under its input only: copy such a file "
                    "there instead of linking it", folder, len(out), _named(out))
    if broken:
        log.warning("scan of %s: left out %d link(s) to nothing (no file at the target): %s; "
                    "a run takes such a link once its target is there: mend or remove it",
                    folder, len(broken), _named(broken))
    return kept


def _named(links: list[str]) -> str:
    """The first :data:`LINKS_NAMED` of ``links``, then how many more."""
    more = f" (and {len(links) - LINKS_NAMED} more)" if len(links) > LINKS_NAMED else ""
    return ", ".join(links[:LINKS_NAMED]) + more


def skip_job(job: int, doc: dict[str, Any], spec: JobSpec) -> dict[str, Any]:
    """A job whose output exists and whose ``if_exists`` is ``skip``: its result (SKIPPED)
    written as a finished job's, and PlanJob's answer that nothing is to run."""
    save_skipped(layout.job_dir(doc["work"], job), job, spec,
                 "the output exists already (if_exists: skip): left as it is", time.time())
    return {"plan": "", "job": job, "units": [], "batches": [], "tiles": 0, "fused": False,
            "stats": to_payload(StatsRound.next_round(0, 0)), "skipped": True}


def output_exists(spec: JobSpec) -> bool:
    """PlanJob's first check, before any other: True when the job is skipped, its output
    being there already with ``if_exists: skip``; OutputExistsError with ``fail`` (and
    OutputNotWritableError for a folder there, no output to skip for)."""
    if spec.if_exists == "overwrite" or not storage.exists(spec.output):
        return False
    storage.check_not_folder(spec.output)  # a folder there is no output to skip for
    if spec.if_exists == "fail":
        raise OutputExistsError(f"output {spec.output} exists already (if_exists: fail): "
                                "remove it, or set if_exists to overwrite or skip")
    return True


def load_custom(spec: JobSpec) -> None:
    """Import the functions of the job's custom ops, as PlanJob does first (the error of
    one that cannot be imported: :func:`pipeline.core.custom.load`)."""
    for call in chain_from_json(spec.ops):
        if call.op.name == "custom":
            custom_mod.load(call.params["function"])


def checked_plan(job: int, spec: JobSpec, work: str, started: float, hand_over: bool = False,
                 refused: list[tuple[int, TiffpipeError]] | None = None,
                 record_probe: bool = False, failed: list[Exception] | None = None
                 ) -> tuple[JobPlan, list[Problem]]:
    """What PlanJob checks of a job whose output is to be written (:func:`output_exists`
    comes first), and its plan: the custom functions import, the output may be written and
    is not the input, the input's page headers are read (IFDs only), and the op chain and
    output options fit every page. Returns the plan and the problems that stop the job
    (:class:`Problem`, of a page or the job: :func:`grouped_by_page` tells each once);
    raises the first error of the custom functions, the output or the input. ``refused`` (a
    list): a page the reader refuses (or a listed page the file lacks) goes there, (page,
    error), and is one more problem, and the other pages are checked, instead of its error
    raised (``tiffpipe validate --inputs``: every problem at once; the plan is then of the
    pages read; PlanJob raises the first one's error). ``hand_over``: the open input is kept
    for the job's unit (:func:`read_infos_and_version`). ``record_probe`` (PlanJob): the
    test upload of an S3 output is recorded in the job's ``work`` until it is aborted, as
    merge records its own, so that one the abort leaves open (it failed, or the invocation
    was stopped) is ended with the job's
    (:func:`~pipeline.steps.common.abort_output_uploads`). ``failed`` (a list): the errors of
    the checks before the input is read (the custom functions' import, the output's: each
    made whatever the other found) go there, and the input is read still (``tiffpipe
    validate --inputs``: an output that cannot be written and an input that cannot be read
    are both told)."""

    def output_checks() -> None:
        if record_probe:
            storage.check_writable(
                spec.output,
                started=lambda upload: record_output_upload(work, spec.output, upload),
                ended=lambda upload: forget_output_uploads(work, [upload]))
        else:
            storage.check_writable(spec.output)
        storage.check_not_input(spec.input, spec.output)

    for check in (lambda: load_custom(spec), output_checks):  # (each told, with ``failed``)
        try:
            check()
        except Exception as exc:
            if failed is None:
                raise
            failed.append(exc)
    return read_plan(job, spec, work, started, hand_over, refused)


def read_plan(job: int, spec: JobSpec, work: str, started: float, hand_over: bool = False,
              refused: list[tuple[int, TiffpipeError]] | None = None
              ) -> tuple[JobPlan, list[Problem]]:
    """What :func:`checked_plan` checks of the job's input: its page headers read (the
    pages a job without ``pages`` leaves out noted), and the plan of them
    (:func:`plan_pages`); ``hand_over`` and ``refused`` as there. ``tiffpipe estimate``
    plans a job by it too: it costs a run on AWS, whose stack writes the outputs with its
    own role and imports the custom functions in its image, so it checks neither here."""
    # a palette page keeps its indices and colormap only when nothing changes its pixels
    keep_palette = keeps_palette(spec.ops, spec.output_options.compression)
    left_out: list[Any] = []  # (the pages a job without pages leaves out)
    # a page cut short is refused only where the job reads it (a crop of its whole part runs)
    infos, version = read_infos_and_version(spec.input, spec.pages, keep_palette=keep_palette,
                                            hand_over=hand_over, left_out=left_out,
                                            refused=refused, reads=job_reads(spec.ops))
    plan, problems = plan_pages(job, spec, infos, work, started, version, left_out)
    refusals = [page_problem(spec.input, page, exc) for page, exc in refused or []]
    # (a book's colour plate refused by a chain for its text pages: which pages would run)
    fit = pages_that_fit(problems, [info.index for info in infos],
                         [page for page, _ in refused or []])
    return plan, refusals + problems + ([Problem(None, fit)] if fit else [])


#: what a job's result says of the values its chain makes: a convert that drops GDAL_NODATA,
#: a class map's colour table dropped (a blur),
#: 12-bit data made near-black 8-bit, a damaged ResolutionUnit dropped; said by the run's
#: report, ``validate --inputs`` and ``inspect --ops`` (pipeline.inspection)
VALUE_NOTES = (dropped_nodata_note, colormap_note, convert_note, unit_note)


def plan_pages(job: int, spec: JobSpec, infos: list[PageInfo], work: str, started: float,
               version: str = "", left_out: list[Any] | None = None
               ) -> tuple[JobPlan, list[Problem]]:
    """The job's plan of ``infos`` (its pages' headers, as read, or ``tiffpipe estimate
    --assume-pages``'), and the problems that stop it (each of its page, if of one): the
    op chain and the output options against every page (:func:`make_plan`,
    :func:`output_problems`).
    ``left_out``: the pages a job without ``pages`` left out, for the plan's note: the
    internal masks the output carries (:func:`carried_masks`) are not."""
    infos, left_out, masks_why = carried_masks(spec, infos, left_out or [])
    why = (left_out, spec.output_options.pyramid, masks_why,
           [info.index for info in infos if info.mask_ifd])
    plan, problems = make_plan(job, spec, infos, work, started, version, left_out_note(
        *why, processed=bool(spec.ops)))
    problems += output_problems(plan)  # (before the notes: a page refused is not described)
    pages = runnable_pages(plan.pages, problems)
    notes = [one_bit_note(spec, pages),  # (fax pages copied 8-bit; "auto"'s pages)
             # (rights metadata rewritten or dropped; a packet too large for the plan is not
             # read: 1,000 pages of their own 300 KB packet would be 1,000 GETs of 300 MB)
             xmp_note(spec, pages),
             *(note(spec, pages) for note in VALUE_NOTES)]
    notice = left_out_notice(*why)
    if any(notes) or notice:
        plan = replace(plan, note="; ".join(n for n in (plan.note, *notes) if n),
                       notice="; ".join(n for n in (notice, *notes) if n))
    return plan, problems


def runnable_pages(pages: list[PagePlan], problems: list[Problem]) -> list[PagePlan]:
    """The pages of a plan that no problem of ``problems`` stops (none when one stops the
    job): the only ones whose output the notes (and ``inspect --ops``) may describe. The
    output of a page the chain cannot run on is not known: its ``select_bands`` may pick a
    band it does not have, which the output's form (:func:`pipeline.core.ops.chain_bands`)
    cannot be worked out from, and the problem already says what to do."""
    if any(problem.page is None for problem in problems):
        return []
    stopped = {problem.page for problem in problems}
    return [page for page in pages if page.info.index not in stopped]


def carried_masks(spec: JobSpec, infos: list[PageInfo], left_out: list[Any]
                  ) -> tuple[list[PageInfo], list[Any], str]:
    """The pages, the pages left out and why the output carries no mask ("": it does,
    :func:`masks_left_out`): a job that carries its pages' internal masks (``mask_ifd``)
    does not say it left them out; one that does not keeps no ``mask_ifd`` (the steps make
    no mask), and its note says why, of the masks it would have carried."""
    masked = {info.index: info.mask_ifd for info in infos if info.mask_ifd}
    if not masked:
        return infos, left_out, ""
    why = masks_left_out(spec)
    if why:
        return [replace(info, mask_ifd=0) for info in infos], left_out, why
    return infos, [entry for entry in left_out
                   if not (entry[1] == "mask" and entry[0] - 1 in masked)], ""


def page_problem(url: str, page: int, exc: Exception) -> Problem:
    """A page's error as a problem of its job, "page N: what" (without the file's name,
    which the job names, nor the page's number twice: "page 1 is a transparency mask ...",
    "page 7 asked for, the file has 2 page(s) ...")."""
    text = str(exc).removeprefix(f"{url}: ")
    return Problem(page, text) if text.startswith((f"page {page}: ", f"page {page} ")) \
        else Problem.of_page(page, text)


def write_job_plan(event: JobEvent,
                   job: tuple[dict[str, Any], JobSpec] | None = None) -> dict[str, Any]:
    """Check the job can run (:func:`checked_plan`: its input's page headers read), and
    write its plan.json.

    Returns the indices of the split units and batches for the Map states, and whether the
    job is fused (its units are processed where they are read: no batches), and whether its
    pyramid levels are built by level units after Process (not fused). ``job``: the job's
    file and spec (:func:`~pipeline.steps.common.load_job`) when the caller has read them.
    """
    started = time.time()
    doc, spec = job or load_job(event.run, event.job)
    work = layout.job_dir(doc["work"], event.job)
    # the open input is handed over to the job's unit, should it run in this process; the
    # units read the version read here
    plan, problems = checked_plan(event.job, spec, work, started, hand_over=True,
                                  record_probe=True)
    if problems:
        raise OperationError(f"{spec.input}: the job cannot run: "
                             + "; ".join(grouped_by_page(problems)))
    if plan.note:  # the job's result says it (the report's message; `tiffpipe run` shows
        # the first few of a run on stderr once, not a warning a job: a scan of 10,000 COGs)
        log.info("job %d: %s: %s", event.job, spec.input, plan.note)
    plan_url = layout.plan_file(work)
    # the contact sheet reads the plan of a job whose steps sum thumbnails after the run
    held_work.save_plan(plan_url, plan, may_hold=not sums_thumbnails(plan))
    keep_plan(plan_url, plan)  # the next steps in this process need not read it back
    return {"plan": plan_url, "job": event.job, "units": list(range(len(plan.units))),
            "batches": list(range(len(plan.batches))), "tiles": plan.tiles,
            "fused": plan.fused, "levels": level_units(plan), "single": single_task(plan)}
