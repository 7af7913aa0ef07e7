"""Where each step keeps its files in the work location (a local folder or an s3:// prefix).

```
{work}/run.json                              the run: resolved jobs of the manifest (a
                                             scan's: what it found, for the report)
{work}/jobs.json                             the job indices the Jobs map reads (ItemReader)
{work}/job-specs.bin                         every job's spec, as its steps read it (not
                                             run.json): an index, then one JSON record a job
{work}/jobs/{job}/plan.json                  a job's plan
{work}/jobs/{job}/tiles/{page}/{row}_{col}.tpw  haloed input tiles (split -> process)
{work}/jobs/{job}/out-{page}-{segment}.seg   a segment: encoded tiles in file order, one of
    u{unit}          a fused unit's base tiles (process_unit; a small ProcessJob's stay in
                     memory: pipeline.adapters.segments.held)
    b{batch}         a process batch's base tiles (process)
    u{unit}_L{k}     the unit's tiles of pyramid level k inside its region (the fused unit,
                     or its level unit: build_levels)
    u{unit}_frag     its parts of the level tiles it shares with other units, and its
                     deepest level's pixels (raw, LZ4; the blocks)
    border{k}        level k's shared tiles, assembled by merge from the fragments
    u{unit}_mask     the unit's tiles of the page's internal mask (the fused unit, or the
                     split unit of a job of batches: pipeline.steps.masks)
{work}/jobs/{job}/out-{page}-{segment}.json  the segment's index: where each tile is
                                             (u{unit}_frag: its fragments and blocks;
                                             border{k} has none)
{work}/jobs/{job}/levels/{page}/level{k}.seg       pyramid level k, built by merge from the
                                                   base tiles (where the units built none)
{work}/jobs/{job}/levels/{page}/deep/level{k}.seg  a level below the units' deepest, built by
                                                   merge from their blocks
{work}/jobs/{job}/stats/{round}/parts/{batch}.npz   partial statistics of a batch (stats)
{work}/jobs/{job}/stats/{round}/{page}.npz          a page's reduced statistics (reduce_stats)
{work}/jobs/{job}/stats/{round}/labels/{page}/{row}_{col}.tpw  a tile's canny edge labels
                                                    (stats)
{work}/jobs/{job}/stats/{round}/tree/{page}/{node}.up.npz    a canny tree node's perimeter
{work}/jobs/{job}/stats/{round}/tree/{page}/{node}.down.npz  its renamed and strong ids
                                                    (reduce_stats, reduce_node)
{work}/jobs/{job}/thumbs/{in,out}-{page}-{segment}.part  a batch's or unit's sums of a page's
                                             thumbnail (process; for the contact sheet)
{work}/jobs/{job}/errors/{step}-{n}.json     the error of a failed unit, batch or node
                                             (split, process_unit, process, stats,
                                             reduce_node, build_levels)
{work}/jobs/{job}/uploads/{hash}.json       a multipart upload of the output on S3, from
                                             its start (merge, ProcessJob): what
                                             record_failure aborts (the job's own only)
{work}/jobs/{job}/result.json                the job's outcome (merge, ProcessJob or
                                             record_failure)
```
"""

from __future__ import annotations

import struct

from pipeline.adapters.storage import join
from pipeline.core.constants import (
    JOB_SPECS_FILE,
    JOBS_FILE,
    JOBS_FOLDER,
    RUN_FILE,
    UPLOADS_FOLDER,
    WORK_REPORT,
)

#: an entry of job-specs.bin's index: the job, where its record starts, its size
JOB_ENTRY = struct.Struct("<QQQ")


def run_file(work: str) -> str:
    return join(work, RUN_FILE)


def jobs_file(work: str) -> str:
    return join(work, JOBS_FILE)


def job_specs_file(work: str) -> str:
    return join(work, JOB_SPECS_FILE)


def report_file(work: str) -> str:
    """Where a run given no report location writes its report."""
    return join(work, WORK_REPORT)


def pack_job_specs(records: list[bytes]) -> bytes:
    """job-specs.bin: :data:`JOB_ENTRY` for every job (its index, its record's offset and
    size), then the records. A job's steps read its entry at ``job * JOB_ENTRY.size``, then
    its record: two small reads, whatever the number of jobs, and one file for the run."""
    at = JOB_ENTRY.size * len(records)
    entries = []
    for i, record in enumerate(records):
        entries.append(JOB_ENTRY.pack(i, at, len(record)))
        at += len(record)
    return b"".join(entries) + b"".join(records)


def job_spec_span(entry: bytes, job: int) -> tuple[int, int] | None:
    """Where job ``job``'s record is in job-specs.bin (offset, size), from the entry read at
    ``job * JOB_ENTRY.size``; None if that is not the job's entry (an index past the run's
    jobs reads a record's bytes, or nothing)."""
    if len(entry) != JOB_ENTRY.size:
        return None
    index, offset, size = JOB_ENTRY.unpack(entry)
    return (offset, size) if index == job else None


def job_dir(work: str, job: int) -> str:
    return join(work, JOBS_FOLDER, f"{job:05d}")


def plan_file(job_work: str) -> str:
    return join(job_work, "plan.json")


def tile_file(job_work: str, page: int, row: int, col: int) -> str:
    return join(job_work, "tiles", f"{page:04d}", f"{row:05d}_{col:05d}.tpw")


def unit_segment(unit: int) -> str:
    """The segment name of a fused unit (:func:`segment_file`'s ``name``)."""
    return f"u{unit:06d}"


def batch_segment(batch: int) -> str:
    """The segment name of a process batch (:func:`segment_file`'s ``name``)."""
    return f"b{batch:06d}"


def segment_file(job_work: str, page: int, name: str) -> str:
    """A segment: ``name`` is ``u{unit}`` (a fused unit), ``b{batch}`` (a process batch),
    ``u{unit}_L{k}`` or ``u{unit}_frag`` (a unit's level k tiles, its fragments:
    pipeline.steps.unit_levels) or ``border{k}`` (level k's shared tiles, merge); merge's
    own levels are under :func:`levels_dir`. In the job's folder, not a folder a page:
    a folder to create was ~0.3 ms of a unit's time on a local disk (a job of one small
    page takes ~10 ms)."""
    return join(job_work, f"out-{page:04d}-{name}.seg")


def segment_index_file(job_work: str, page: int, name: str) -> str:
    return join(job_work, f"out-{page:04d}-{name}.json")


def levels_dir(job_work: str, page: int) -> str:
    """Where merge writes a page's pyramid levels, ``level{k}.seg``: built from its base
    tiles, or under ``deep/`` those below the units' deepest, from their blocks."""
    return join(job_work, "levels", f"{page:04d}")


def thumbs_dir(job_work: str) -> str:
    """The thumbnails' sums the process steps made (pipeline/steps/thumbs.py)."""
    return join(job_work, "thumbs")


def thumb_file(job_work: str, page: int, side: str, name: str) -> str:
    """One batch's or unit's (``name``) part of the ``side`` ("in" or "out") thumbnail of
    page ``page`` (its position in the job)."""
    return join(thumbs_dir(job_work), f"{side}-{page:04d}-{name}.part")


def errors_dir(job_work: str) -> str:
    return join(job_work, "errors")


def error_file(job_work: str, step: str, index: int) -> str:
    return join(errors_dir(job_work), f"{step}-{index:06d}.json")


def uploads_dir(job_work: str) -> str:
    return join(job_work, UPLOADS_FOLDER)


def upload_file(job_work: str, upload: str) -> str:
    """The record of the output upload ``upload`` (S3's id, which may hold any character:
    named by its hash)."""
    import hashlib  # (S3 outputs only: a local run loads no OpenSSL, ~3 MB)

    return join(uploads_dir(job_work), f"{hashlib.sha256(upload.encode()).hexdigest()[:24]}.json")


def result_file(job_work: str) -> str:
    return join(job_work, "result.json")


def stats_dir(job_work: str, round_: int) -> str:
    return join(job_work, "stats", f"{round_:02d}")


def stats_part_file(job_work: str, round_: int, batch: int) -> str:
    return join(stats_dir(job_work, round_), "parts", f"{batch:06d}.npz")


def border_key(row: int, col: int, edge: str) -> str:
    """The key of a tile's labels along one edge in a Canny round's stats part file."""
    return f"{row}_{col}_{edge}"


def stats_file(job_work: str, round_: int, page: int) -> str:
    return join(stats_dir(job_work, round_), f"{page:04d}.npz")


def labels_file(job_work: str, round_: int, page: int, row: int, col: int) -> str:
    return join(stats_dir(job_work, round_), "labels", f"{page:04d}", f"{row:05d}_{col:05d}.tpw")


def tree_file(job_work: str, round_: int, page: int, node: int, kind: str) -> str:
    """A canny reduce tree node's ``up`` (perimeter, for its parent) or ``down`` (for process)."""
    return join(stats_dir(job_work, round_), "tree", f"{page:04d}", f"{node:06d}.{kind}.npz")
