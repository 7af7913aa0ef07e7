"""Cost and time of a run on AWS, on paper: what ``tiffpipe estimate`` prints.

The model, step by step (every number it uses is either measured, in the calibration file
that ``bench/compare.py`` writes, or an assumption listed in :data:`ASSUMPTIONS`, printed with
the estimate and overridable with ``--price KEY=VALUE``):

- **Work** comes from the job's real plan (``make_plan`` on the inputs' page headers): the
  haloed megapixels each unit and process batch reads, the output megapixels and tiles, the
  units, batches and statistics rounds, and whether the job is fused.
- **CPU seconds** per step are the calibration's per-megapixel costs measured on the
  benchmark machine: split per haloed megapixel; process as ``factor * (haloed Mpx * (work
  tile decode + each op) + output Mpx * output encode)``, with the op and codec costs timed
  one by one and ``factor`` the measured whole-step cost over that sum; merge per output
  tile, and per MB for the bytes it reads through (:mod:`.limits`: the output is composed
  in S3 by server-side copies at ``s3_copy_mb_per_s``, its parts counted from the plan's
  segment runs). A **fused** job (the plan's ``fused``: no statistics rounds, ``fuse``
  not turned off) has no split, no batches and no work tiles: each unit is one
  ``process_unit`` on the process function, ``unit factor * (haloed Mpx * (input read + each
  op) + output Mpx * output encode)``, the input read per haloed megapixel and the unit
  factor measured by the benchmark's fused runs (the calibration's ``process_unit``; a file
  without it: split's read less the work tile encode and process's factor, noted on the
  job). A **pyramid** job that is not fused adds one ``build_levels`` per split unit on
  the process function (its level units: ``(1 + L) * output Mpx * output encode``, L the
  levels' pixels over the base pages', decoding the base tiles costed as encoding them, an
  assumption), and its merge reads back only the units' deepest level. The **output's
  bytes** are the codec's bytes per output megapixel, the pyramid's levels included
  (``level_shapes``). A **carried mask** is costed at the calibration's 1-bit deflate
  encode, CPU and bytes per megapixel, for each read (decoded) and write of it
  (:class:`~.model.MaskWork`).
- **Lambda seconds** of an invocation: its CPU seconds spread over the threads it can use
  (``memory / mb_per_vcpu`` vCPUs; split measured at ``threads`` busy threads, process_unit
  on all the vCPUs but no faster than its one-thread input read, the others one), divided by
  ``lambda_core_speed`` (a Lambda vCPU against one core of the benchmark machine), plus its
  S3 traffic at ``s3_mb_per_s``, plus a cold start (``cold_start_s`` plus the measured import
  time) once per concurrent environment.
- **Dollars**: Lambda GB-seconds, requests and ephemeral storage above 512 MB; Step Functions
  Standard state transitions, counted by walking ``statemachine.asl.json`` along each job's
  success path (a Map state counts once, plus its item processor once per item and, a
  Distributed Map, one per item for the child execution it starts; a Choice
  takes the branch the job's plan takes: fused or not, statistics rounds left or not, level
  units or not); S3
  requests and the storage of the work files until the lifecycle rule removes them.
- **Wall time**: a list-scheduling simulation of every invocation on ``concurrency`` Lambda
  slots, jobs started ``Jobs.MaxConcurrency`` at a time, each Map capped at its
  ``MaxConcurrency`` (a MaxConcurrencyPath: what PlanRun shares out of ``concurrency``, as
  a stack deployed with it runs: pipeline/core/concurrency.py), plus ``state_latency_s``
  per state on a job's path.

The modules: :mod:`.assumptions` (the numbers not measured), :mod:`.calibration` (the file
and the per-megapixel costs of a job), :mod:`.plans` (what a job asks for),
:mod:`.statemachine` (transitions and Map limits), :mod:`.schedule` (the wall time),
:mod:`.model` (the estimate) and :mod:`.text` (as printed). Pure, except
:func:`load_calibration`, :func:`plan_manifest` (which reads the manifest, lists a scan's
folders as its run would and reads the inputs' page headers, or none with ``assume_pages``)
and :func:`load_definition`.
"""

from pipeline.estimate.assumptions import (
    ASSUMPTIONS,
    Assumption,
    EstimateError,
    assumptions_with,
    parse_overrides,
)
from pipeline.estimate.calibration import (
    CALIBRATION_FORMAT,
    DEFAULT_CALIBRATION,
    JobCosts,
    job_costs,
    load_calibration,
    op_cost,
    predicted_process_cpu,
    predicted_unit_cpu,
)
from pipeline.estimate.limits import largest_job
from pipeline.estimate.model import (
    FUNCTION_OF,
    MULTIPART_CHUNK,
    READ_BUFFER,
    STEPS,
    MaskWork,
    estimate,
    mask_work,
)
from pipeline.estimate.plans import (
    Planned,
    item_work,
    parse_assume_pages,
    plan_geometry,
    plan_manifest,
    stats_rounds,
)
from pipeline.estimate.schedule import simulate
from pipeline.estimate.statemachine import (
    canny_tree_levels,
    count_transitions,
    load_definition,
    map_limits,
)
from pipeline.estimate.text import format_text

__all__ = [
    "ASSUMPTIONS", "CALIBRATION_FORMAT", "DEFAULT_CALIBRATION", "FUNCTION_OF", "MULTIPART_CHUNK",
    "READ_BUFFER", "STEPS", "Assumption", "EstimateError", "JobCosts", "MaskWork", "Planned",
    "assumptions_with",
    "canny_tree_levels", "count_transitions", "estimate", "format_text", "item_work", "job_costs",
    "largest_job", "load_calibration", "load_definition", "map_limits",
    "mask_work", "op_cost", "parse_assume_pages", "parse_overrides", "plan_geometry",
    "plan_manifest",
    "predicted_process_cpu", "predicted_unit_cpu", "simulate", "stats_rounds",
]
