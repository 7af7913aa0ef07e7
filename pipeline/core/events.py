"""The contract between ``statemachine.asl.json`` and the code: every payload that crosses a
state, as a typed model.

*Events* are what each Lambda action takes: the state machine builds them
(Parameters/ItemSelector) and the handlers parse them here. *Results* (above the events) are
what each action returns: the handlers build them from the step's answer and return them
serialised, and the state machine's ResultSelectors, Choice states and later states read
their fields. ``RESULTS`` names each action's result model. ``tests/test_contract.py`` walks
the definition and checks every key and path against these classes
(:mod:`pipeline.core.asl_contract`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import field, fields
from typing import Any, TypeVar

from pipeline.core.record import field_values, record
from pipeline.errors import TiffpipeError

# The models are records (pipeline.core.record): dataclasses whose methods are not compiled
# when this module is imported, as every command does.


class EventError(TiffpipeError):
    """A task was invoked with a payload that does not match its event class."""


T = TypeVar("T")


def parse_event(cls: type[T], event: Any) -> T:
    """Build ``cls`` from a task payload; unknown or missing fields are an EventError."""
    if not isinstance(event, dict):
        raise EventError(f"{cls.__name__}: expected a JSON object, got {type(event).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(event) - names - {"action"})
    if unknown:
        raise EventError(f"{cls.__name__}: unknown field(s) {unknown}")
    models = _models(cls)
    values = {k: parse_event(models[k], v) if k in models else v
              for k, v in event.items() if k in names}
    try:
        return cls(**values)
    except TypeError as exc:
        raise EventError(f"{cls.__name__}: {exc}") from exc


@functools.cache
def _models(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that hold a model (a result holding a result), by name, and its
    class: the field's annotation names a model of this module. (The annotations are strings
    here; looking the names up is what ``typing.get_type_hints`` would do for these, at a
    tenth of its cost, paid by every run for each model it parses.)"""
    found: dict[str, type] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        hint = globals().get(f.type) if isinstance(f.type, str) else f.type
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found[f.name] = hint
    return found


def to_payload(model: Any) -> dict[str, Any]:
    """The JSON object of a model, as a Lambda returns it or a state holds it."""
    payload: dict[str, Any] = _plain(model)
    return payload


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for JSON-shaped models, without its deep copy of every value
    (dicts and lists are copied, level by level; each task's result and event pays it)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(v) for name, v in field_values(value).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- results: what each action returns ------------------------------------------------------
# Every field a step returns is here (an unknown one is an EventError at the handler), and
# every field the state machine reads (ResultSelector, Choice, a later state's path).


@record
class RunPlanned:
    """``plan_run``: run.json's URL, the number of jobs, and where the job list is (the Jobs
    Distributed Map's ItemReader reads it: no state holds the jobs); how many jobs run at
    once and how many items of a job's map (the maps' MaxConcurrencyPath)."""

    run: str
    jobs: int
    items: JobList
    jobs_at_once: int
    per_job: int


@record
class StatsRound:
    """Where a job's statistics rounds stand: ``round`` is the next one to run, ``more``
    whether there is one (the NeedsStats Choice), ``rounds`` how many the chain has. A canny
    round's reduce tree: ``tree`` whether a level of ``nodes`` waits for the ReduceLevel Map
    (NeedsStats), ``level`` the next tree level, ``bound`` the tile sides a node may hold."""

    round: int
    more: bool
    rounds: int
    level: int
    nodes: list[int]
    tree: bool
    bound: int

    @classmethod
    def next_round(cls, round_: int, rounds: int) -> StatsRound:
        """Round ``round_`` next (``more`` if the chain has it), no reduce tree waiting."""
        return cls(round_, round_ < rounds, rounds, 0, [], False, 0)

    @classmethod
    def tree_level(cls, round_: int, rounds: int, level: int, nodes: list[int],
                   bound: int) -> StatsRound:
        """Round ``round_`` goes on: tree ``level``'s ``nodes`` wait for ReduceLevel."""
        return cls(round_, True, rounds, level, nodes, True, bound)

    def reply(self, job: int) -> dict[str, Any]:
        """``reduce_stats``' result (:class:`RoundReduced`: the job, then these fields)."""
        return {"job": job, **to_payload(self)}


@record
class JobPlanned:
    """``plan_job``: the plan's URL, the unit and batch indices the Maps iterate, whether the
    job is fused (the Fused Choice), whether a job that is not fused builds its pyramid
    levels in level units (the Levels Choice) and its first statistics round."""

    plan: str
    job: int
    units: list[int]
    batches: list[int]
    tiles: int
    fused: bool
    stats: StatsRound
    levels: bool = False
    #: a small fused job (plan.single_task): ProcessJob runs it whole (the Fused Choice)
    single: bool = False
    #: the output exists and the job's if_exists is "skip": nothing to run (no plan), its
    #: result (SKIPPED) is written (the Skip Choice)
    skipped: bool = False


@record
class TilesDone:
    """``split``, ``process_unit``, ``stats``, ``process``, ``build_levels``: how many tiles
    one Map item did."""

    job: int
    tiles: int


@record
class RoundReduced:
    """``reduce_stats``: the job and its next statistics round (the fields of StatsRound,
    which the state machine puts back in ``$.planned.stats``)."""

    job: int
    round: int
    more: bool
    rounds: int
    level: int
    nodes: list[int]
    tree: bool
    bound: int


@record
class NodeReduced:
    """``reduce_node``: the job and the canny reduce tree node joined."""

    job: int
    node: int


@record
class Merged:
    """``merge``: the output published and its size."""

    job: int
    output: str
    output_bytes: int
    #: the output appeared while the job ran and its if_exists is "skip": nothing published
    skipped: bool = False


@record
class JobProcessed:
    """``process_job``: the tiles processed, the output published and its size."""

    job: int
    tiles: int
    output: str
    output_bytes: int
    skipped: bool = False  # as Merged's


@record
class FailureRecorded:
    """``record_failure``: the job and its error's type."""

    job: int
    status: str
    error: str


@record
class Reported:
    """``report``: where the run report went and the job counts (the execution's output)."""

    report: str
    succeeded: int
    failed: int
    skipped: int = 0  # jobs whose output existed (if_exists: skip)


#: action -> the model of its result
RESULTS: dict[str, type] = {
    "plan_run": RunPlanned,
    "plan_job": JobPlanned,
    "split": TilesDone,
    "process_unit": TilesDone,
    "stats": TilesDone,
    "process": TilesDone,
    "build_levels": TilesDone,
    "reduce_stats": RoundReduced,
    "reduce_node": NodeReduced,
    "merge": Merged,
    "process_job": JobProcessed,
    "record_failure": FailureRecorded,
    "report": Reported,
}


# --- events: what each action takes ----------------------------------------------------------


@record
class RunInput:
    """The execution's input: the run's manifest, work prefix, id and report."""

    manifest: str  # URL of the manifest
    work: str  # URL of this run's work prefix
    run_id: str
    report: str | None = None  # where the run report goes (default: {work}/report.json)


@record
class RunEvent(RunInput):
    """Plan the whole run (split function, ``plan_run``): the execution's input, and how
    many Lambda invocations the run makes at once (0: no limit), which the definition's
    PlanRun payload sets (deploy.py --concurrency; pipeline/core/concurrency.py)."""

    concurrency: int = 0
    #: the execution's ARN (``$$.Execution.Id``): a scan's run defers to an earlier run of
    #: the same scan still going (planning._earlier: Step Functions' executions on Lambda,
    #: pipeline/adapters/earlier_runs.py; the local runs elsewhere, local_runs.py)
    execution: str = ""


@record
class JobEvent:
    """Plan one job (process function, ``plan_job``)."""

    run: str  # URL of run.json
    job: int


@record
class UnitEvent:
    """Cut one split unit into haloed tiles (split function, ``split``)."""

    plan: str  # URL of the job's plan.json
    unit: int


@record
class BatchEvent:
    """Process one batch of tiles (process function, ``process``)."""

    plan: str
    batch: int


@record
class StatsEvent:
    """Gather the statistics of one batch of tiles for a statistics round (process function,
    ``stats``): round k serves the k-th op of the chain that needs whole-page statistics."""

    plan: str
    batch: int
    round: int


@record
class ReduceEvent:
    """Reduce a round's partial statistics to one per page (process function,
    ``reduce_stats``). A canny round reduces as a tree: ``level`` is the first tree level
    still to do, ``bound`` the tile sides a tree node may hold (0: not chosen yet)."""

    plan: str
    round: int
    level: int = 0
    bound: int = 0


@record
class NodeEvent:
    """Join one node of a canny round's reduce tree (process function, ``reduce_node``):
    ``node`` indexes the job's tree nodes, every page's in page order."""

    plan: str
    round: int
    bound: int
    node: int


@record
class MergeEvent:
    """Assemble the output TIFF of a job (merge function, ``merge``)."""

    plan: str


@record
class JobPlanEvent:
    """Process and merge a small fused job (its units, then its merge) in one invocation
    (process function, ``process_job``)."""

    plan: str


@record
class FailureEvent:
    """Record why a job failed (merge function, ``record_failure``). ``error`` is what the
    job's Catches put in the state: ``{"<state>": {"Error", "Cause"}}``, the state that
    caught it (a definition before that: ``{"Error", "Cause"}``)."""

    run: str
    job: int
    error: dict[str, Any] = field(default_factory=dict)


@record
class ReportEvent:
    """Write the run report (merge function, ``report``)."""

    run: str


#: the ItemReader "bucket" of a job list in a local work folder: not a valid S3 bucket name
#: (underscore), so it never names a real bucket; only the local engine reads such a list
LOCAL_BUCKET = "tiffpipe_local"


@record
class JobList:
    """Where PlanRun wrote the run's job list (a JSON array of job indices): the ``Bucket`` and
    ``Key`` the ``Jobs`` Distributed Map's ItemReader reads (``s3:getObject``), so no state
    payload holds the jobs. A local work folder's list has ``Bucket`` :data:`LOCAL_BUCKET`
    and its path as ``Key``."""

    Bucket: str
    Key: str

    @classmethod
    def of(cls, url: str) -> JobList:
        if url.startswith("s3://"):
            bucket, _, key = url[len("s3://"):].partition("/")
            return cls(bucket, key)
        return cls(LOCAL_BUCKET, url)

    @property
    def url(self) -> str:
        return self.Key if self.Bucket == LOCAL_BUCKET else f"s3://{self.Bucket}/{self.Key}"

    def to_json(self) -> dict[str, str]:
        return {"Bucket": self.Bucket, "Key": self.Key}
