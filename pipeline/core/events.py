"""The payloads of the state machine's tasks: what each Lambda action takes.

``statemachine.asl.json`` builds these objects (Parameters/ItemSelector) and the handlers
parse them here, so the two agree through these classes, not loose dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from pipeline.errors import TiffpipeError


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
    try:
        return cls(**{k: v for k, v in event.items() if k in names})
    except TypeError as exc:
        raise EventError(f"{cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class RunEvent:
    """The execution's input: plan the whole run (split function, ``plan_run``)."""

    manifest: str  # URL of the manifest
    work: str  # URL of this run's work prefix
    run_id: str
    report: str | None = None  # where the run report goes (default: {work}/report.json)


@dataclass(frozen=True)
class JobEvent:
    """Plan one job (split function, ``plan_job``)."""

    run: str  # URL of run.json
    job: int


@dataclass(frozen=True)
class UnitEvent:
    """Cut one split unit into haloed tiles (split function, ``split``)."""

    plan: str  # URL of the job's plan.json
    unit: int


@dataclass(frozen=True)
class BatchEvent:
    """Process one batch of tiles (process function, ``process``)."""

    plan: str
    batch: int


@dataclass(frozen=True)
class StatsEvent:
    """Gather the statistics of one batch of tiles for a statistics round (process function,
    ``stats``): round k serves the k-th op of the chain that needs whole-page statistics."""

    plan: str
    batch: int
    round: int


@dataclass(frozen=True)
class ReduceEvent:
    """Reduce a round's partial statistics to one per page (process function,
    ``reduce_stats``). A canny round reduces as a tree: ``level`` is the first tree level
    still to do, ``bound`` the tile sides a tree node may hold (0: not chosen yet)."""

    plan: str
    round: int
    level: int = 0
    bound: int = 0


@dataclass(frozen=True)
class NodeEvent:
    """Join one node of a canny round's reduce tree (process function, ``reduce_node``):
    ``node`` indexes the job's tree nodes, every page's in page order."""

    plan: str
    round: int
    bound: int
    node: int


@dataclass(frozen=True)
class MergeEvent:
    """Assemble the output TIFF of a job (merge function, ``merge``)."""

    plan: str


@dataclass(frozen=True)
class FailureEvent:
    """Record why a job failed (merge function, ``record_failure``). ``error`` is the
    ``{"Error", "Cause"}`` object a Catch puts in the state."""

    run: str
    job: int
    error: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportEvent:
    """Write the run report (merge function, ``report``)."""

    run: str


#: the ItemReader "bucket" of a job list in a local work folder: not a valid S3 bucket name
#: (underscore), so it never names a real bucket; only the local engine reads such a list
LOCAL_BUCKET = "tiffpipe_local"


@dataclass(frozen=True)
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
