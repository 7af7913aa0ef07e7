"""Cost and time of a run on AWS, on paper: what ``tiffpipe estimate`` prints.

The model, step by step (every number it uses is either measured, in the calibration file
that ``bench/compare.py`` writes, or an assumption listed in :data:`ASSUMPTIONS`, printed with
the estimate and overridable with ``--price KEY=VALUE``):

- **Work** comes from the job's real plan (``make_plan`` on the inputs' page headers): the
  haloed megapixels each split unit and process batch reads, the output megapixels and
  tiles, the units, batches and statistics rounds.
- **CPU seconds** per step are the calibration's per-megapixel costs measured on the
  benchmark machine: split per haloed megapixel; process as ``factor * (haloed Mpx * (work
  tile decode + each op) + output Mpx * output encode)``, with the op and codec costs timed
  one by one and ``factor`` the measured whole-step cost over that sum; merge per output MB
  and per output tile.
- **Lambda seconds** of an invocation: its CPU seconds spread over the threads it can use
  (``memory / mb_per_vcpu`` vCPUs; split measured at ``threads`` busy threads, the others
  one), divided by ``lambda_core_speed`` (a Lambda vCPU against one core of the benchmark
  machine), plus its S3 traffic at ``s3_mb_per_s``, plus a cold start (``cold_start_s`` plus
  the measured import time) once per concurrent environment.
- **Dollars**: Lambda GB-seconds, requests and ephemeral storage above 512 MB; Step Functions
  Standard state transitions, counted by walking ``statemachine.asl.json`` along each job's
  success path (a Map state counts once, plus its item processor once per item); S3 requests
  and the storage of the work files until the lifecycle rule removes them.
- **Wall time**: a list-scheduling simulation of every invocation on ``concurrency`` Lambda
  slots, jobs started ``Jobs.MaxConcurrency`` at a time, each Map capped at its
  ``MaxConcurrency``, plus ``state_latency_s`` per state on a job's path.

Pure, except :func:`load_calibration`, :func:`plans_for_manifest` (which reads the manifest
and the inputs' page headers, or none with ``assume_pages``) and :func:`load_definition`.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.models import JobPlan, PageInfo

CALIBRATION_FORMAT = "tiffpipe-calibration/1"
#: bench/calibration.json of the checkout: what ``--calibration`` defaults to
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "bench" / "calibration.json"
#: S3 reads of an input are coalesced into ranged GETs of at least this (storage.READ_BUFFER)
READ_BUFFER = 512 * 1024
#: outputs are uploaded in parts of this size above it (storage.publish_file)
MULTIPART_CHUNK = 64 * 1024 * 1024
FUNCTION_OF = {"plan_run": "split", "plan_job": "split", "split": "split",
               "stats": "process", "reduce_stats": "process", "process": "process",
               "merge": "merge", "report": "merge",
               "cold_split": "split", "cold_process": "process", "cold_merge": "merge"}
STEPS = ("plan_run", "plan_job", "split", "stats", "reduce_stats", "process", "merge", "report",
         "cold_split", "cold_process", "cold_merge")


class EstimateError(ValueError):
    """A calibration file, an override or an --assume-pages spec that cannot be used."""


@dataclass(frozen=True)
class Assumption:
    value: float
    unit: str
    help: str


#: every number the estimate uses that is not measured; ``--price KEY=VALUE`` overrides any
ASSUMPTIONS: dict[str, Assumption] = {
    # list prices, us-east-1 (check https://aws.amazon.com/lambda/pricing/ and friends)
    "lambda_gb_s": Assumption(0.0000133334, "USD/GB-s",
                              "Lambda arm64 duration (first 6 billion GB-s a month)"),
    "lambda_request": Assumption(0.20 / 1e6, "USD/request", "Lambda requests"),
    "lambda_ephemeral_gb_s": Assumption(0.0000000309, "USD/GB-s",
                                        "Lambda /tmp above the free 512 MB"),
    "sfn_transition": Assumption(0.025 / 1000, "USD/transition",
                                 "Step Functions Standard state transitions"),
    "s3_put": Assumption(0.005 / 1000, "USD/request", "S3 PUT, COPY, POST and LIST requests"),
    "s3_get": Assumption(0.0004 / 1000, "USD/request", "S3 GET, HEAD and other requests"),
    "s3_gb_month": Assumption(0.023, "USD/GB-month", "S3 Standard storage (first 50 TB)"),
    # how deploy sizes the functions (pipeline/aws/deploy_steps.py SIZES)
    "memory_split_mb": Assumption(3008, "MB", "memory of the split function"),
    "memory_process_mb": Assumption(3008, "MB", "memory of the process function"),
    "memory_merge_mb": Assumption(3008, "MB", "memory of the merge function"),
    "ephemeral_split_mb": Assumption(4096, "MB", "/tmp of the split function"),
    "ephemeral_process_mb": Assumption(1024, "MB", "/tmp of the process function"),
    "ephemeral_merge_mb": Assumption(10240, "MB", "/tmp of the merge function (holds the "
                                                  "output while it is built)"),
    "timeout_s": Assumption(900, "s", "Lambda timeout of every function"),
    "work_retention_days": Assumption(7, "days", "work files kept until the lifecycle rule "
                                                 "removes them"),
    # Lambda's machine against the benchmark's
    "mb_per_vcpu": Assumption(1769, "MB", "Lambda memory per vCPU"),
    "lambda_core_speed": Assumption(1.0, "x", "a Lambda vCPU's speed against one core of "
                                              "the calibration machine"),
    "s3_mb_per_s": Assumption(90, "MB/s", "S3 throughput of one invocation (GET and PUT), "
                                          "not overlapped with compute"),
    "cold_start_s": Assumption(1.5, "s", "container cold start before the handler's imports "
                                         "(the measured import time is added)"),
    "state_latency_s": Assumption(0.1, "s", "Step Functions latency per state on a job's "
                                            "path (a Distributed Map run's start included)"),
}


# --- calibration ------------------------------------------------------------------------


def load_calibration(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The calibration file (default: bench/calibration.json of the checkout), checked."""
    path = Path(path) if path else DEFAULT_CALIBRATION
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EstimateError(f"no calibration file at {path}: run bench/compare.py (it writes "
                            "bench/calibration.json) or pass --calibration FILE") from None
    except (OSError, ValueError) as exc:
        raise EstimateError(f"cannot read the calibration file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise EstimateError(f"{path} is not a {CALIBRATION_FORMAT} calibration file")
    missing = [k for k in ("split", "process", "merge", "ops", "encode", "work")
               if k not in data]
    if missing:
        raise EstimateError(f"{path}: the calibration lacks {', '.join(missing)}")
    return data


def _kind(dtype: str, channels: int) -> str:
    return f"{dtype}x{channels}"


def _by_kind(table: dict[str, Any], dtype: str, channels: int, notes: set[str],
             what: str) -> Any:
    """``table[kind]``; for a kind not measured, the nearest one measured, scaled by bytes
    per pixel (and noted)."""
    kind = _kind(dtype, channels)
    if kind in table:
        return table[kind], 1.0
    if not table:
        raise EstimateError(f"the calibration has no {what} measurements")
    size = np.dtype(dtype).itemsize * channels

    def distance(k: str) -> tuple[int, int]:
        d, c = k.rsplit("x", 1)
        return abs(int(c) - channels), abs(np.dtype(d).itemsize * int(c) - size)

    near = min(table, key=distance)
    d, c = near.rsplit("x", 1)
    scale = size / (np.dtype(d).itemsize * int(c))
    notes.add(f"{what}: {kind} not calibrated, scaled from {near} by bytes per pixel "
              f"({scale:g}x)")
    return table[near], scale


def _value(entry: Any, key: str, scale: float) -> float:
    return float(entry[key]) * scale


def op_cost(ops_table: dict[str, Any], op: dict[str, Any], dtype: str, channels: int,
            notes: set[str]) -> float:
    """CPU seconds per haloed megapixel of one op: the measurement with the same parameters,
    else interpolated on its first numeric parameter, else the nearest one measured."""
    name = op["op"]
    if name not in ops_table:
        fallback = {"op": "gaussian_blur", "sigma": 2.0}
        notes.add(f"op {name} is not calibrated: costed as {json.dumps(fallback)}")
        if name == "gaussian_blur":
            raise EstimateError("the calibration has no gaussian_blur measurements")
        return op_cost(ops_table, fallback, dtype, channels, notes)
    entries, scale = _by_kind(ops_table[name], dtype, channels, notes, f"op {name}")
    params = {k: v for k, v in op.items() if k != "op"}
    for e in entries:
        if e["params"] == params:
            return _value(e, "cpu_s_per_mpx", scale)
    numeric = [k for k, v in params.items() if isinstance(v, (int, float))]
    for key in numeric:
        points = sorted((float(e["params"][key]), float(e["cpu_s_per_mpx"])) for e in entries
                        if isinstance(e["params"].get(key), (int, float)))
        if len(points) >= 2:
            xs, ys = zip(*points, strict=True)
            x = float(params[key])
            if x > xs[-1]:  # linear extrapolation from the last two points (costs grow)
                y = ys[-1] + (ys[-1] - ys[-2]) * (x - xs[-1]) / max(xs[-1] - xs[-2], 1e-9)
            else:
                y = float(np.interp(x, xs, ys))
            notes.add(f"op {name}: {key}={params[key]} interpolated from {key} in "
                      f"{list(xs)}")
            return max(y, 0.0) * scale
    return _value(entries[0], "cpu_s_per_mpx", scale)


def predicted_process_cpu(cal: dict[str, Any], kind: str, ops: list[dict[str, Any]],
                          compression: str, haloed_mpx: float, output_mpx: float,
                          out_kind: str | None = None,
                          notes: set[str] | None = None) -> float | None:
    """CPU seconds of process from the per-op and per-codec costs alone (no factor)."""
    notes = set() if notes is None else notes
    dtype, channels = kind.rsplit("x", 1)
    odtype, ochannels = (out_kind or kind).rsplit("x", 1)
    if compression not in cal["encode"]:
        return None
    work, ws = _by_kind(cal["work"], dtype, int(channels), notes, "work tiles")
    enc, es = _by_kind(cal["encode"][compression], odtype, int(ochannels), notes,
                       f"{compression} encoding")
    per_haloed = _value(work, "decode_cpu_s_per_mpx", ws) + sum(
        op_cost(cal["ops"], op, dtype, int(channels), notes) for op in ops)
    return haloed_mpx * per_haloed + output_mpx * _value(enc, "cpu_s_per_mpx", es)


# --- what a plan asks for ---------------------------------------------------------------


def _haloed_sides(grid: Any) -> tuple[list[int], list[int]]:
    rows = [grid.haloed(r, 0).height for r in range(grid.rows)]
    cols = [grid.haloed(0, c).width for c in range(grid.cols)]
    return rows, cols


def _output_shape(page: Any) -> tuple[int, int]:
    factor = getattr(page, "factor", 1) or 1
    return page.grid.height // factor, page.grid.width // factor


def plan_geometry(plan: JobPlan) -> dict[str, float]:
    """Totals of a plan: core, haloed and output megapixels, tiles, output tiles, units,
    batches and pages."""
    out_tile = plan.spec.output_options.tile
    g = {"pages": 0.0, "core_mpx": 0.0, "haloed_mpx": 0.0, "output_mpx": 0.0, "tiles": 0.0,
         "output_tiles": 0.0, "units": float(len(plan.units)),
         "batches": float(len(plan.batches))}
    for page in plan.pages:
        rows, cols = _haloed_sides(page.grid)
        oh, ow = _output_shape(page)
        g["pages"] += 1
        g["core_mpx"] += page.grid.height * page.grid.width / 1e6
        g["haloed_mpx"] += sum(rows) * sum(cols) / 1e6
        g["output_mpx"] += oh * ow / 1e6
        g["tiles"] += page.grid.count
        g["output_tiles"] += math.ceil(oh / out_tile) * math.ceil(ow / out_tile)
    return g


def _item_work(plan: JobPlan) -> tuple[list[tuple[float, int]], list[tuple[float, float, int]]]:
    """Per split unit: (haloed Mpx, tiles); per batch: (haloed Mpx, output Mpx, tiles)."""
    sides = [_haloed_sides(p.grid) for p in plan.pages]
    units = []
    for u in plan.units:
        rows, cols = sides[u.page]
        units.append((sum(rows[u.row0:u.row1]) * sum(cols[u.col0:u.col1]) / 1e6,
                      (u.row1 - u.row0) * (u.col1 - u.col0)))
    batches = []
    for b in plan.batches:
        page = plan.pages[b.page]
        rows, cols = sides[b.page]
        grid, factor = page.grid, getattr(page, "factor", 1) or 1
        haloed = out = 0.0
        for index in range(b.first, b.last):
            r, c = grid.position(index)
            haloed += rows[r] * cols[c]
            core = grid.core(r, c)
            out += core.height * core.width / (factor * factor)
        batches.append((haloed / 1e6, out / 1e6, b.last - b.first))
    return units, batches


def stats_rounds(plan: JobPlan) -> int:
    """Statistics rounds the job's op chain needs (0 for local ops)."""
    try:
        from pipeline.core.chain import ChainLayout
        from pipeline.core.ops import chain_from_json
    except ImportError:
        return 0
    dtype = plan.pages[0].info.dtype if plan.pages else "uint8"
    return len(ChainLayout.of(chain_from_json(plan.spec.ops), dtype).rounds)


# --- state transitions ------------------------------------------------------------------


def count_transitions(definition: dict[str, Any], jobs: list[dict[str, int]]) -> dict[str, Any]:
    """State transitions of a successful execution, walking the definition: each state
    entered is one; a Map state is one plus its item processor once per item. Items of a
    Map come from its ItemsPath's last name: ``jobs`` (one per job), ``units``, ``batches``
    (the job's). A Choice takes its first branch while the job has statistics rounds left
    (``rounds``), then its Default."""

    def walk(states: dict[str, Any], start: str, ctx: dict[str, Any]) -> int:
        count, name, steps = 0, start, 0
        while name:
            steps += 1
            if steps > 10_000:
                raise EstimateError("statemachine.asl.json: a loop that never ends")
            state = states[name]
            count += 1
            kind = state["Type"]
            if kind == "Map":
                proc = state.get("ItemProcessor") or state.get("Iterator")
                key = state.get("ItemsPath", "").rsplit(".", 1)[-1]
                if key == "jobs":
                    for i, job in enumerate(ctx["jobs"]):
                        per = walk(proc["States"], proc["StartAt"], dict(job, rounds_left=job.get("rounds", 0)))
                        per_job[i] = per
                        count += per
                else:
                    count += int(ctx.get(key, 1)) * walk(proc["States"], proc["StartAt"], ctx)
            if kind == "Choice":
                if ctx.get("rounds_left", 0) > 0 and state.get("Choices"):
                    ctx["rounds_left"] -= 1
                    name = state["Choices"][0]["Next"]
                else:
                    name = state.get("Default")
                continue
            name = None if state.get("End") or kind in ("Succeed", "Fail") else state.get("Next")
        return count

    per_job: dict[int, int] = {}
    total = walk(definition["States"], definition["StartAt"], {"jobs": jobs})
    return {"total": total, "per_job": [per_job.get(i, 0) for i in range(len(jobs))]}


def map_limits(definition: dict[str, Any]) -> dict[str, int]:
    """MaxConcurrency of each Map by its ItemsPath's last name (0: unlimited)."""
    out: dict[str, int] = {}

    def visit(states: dict[str, Any]) -> None:
        for state in states.values():
            if state.get("Type") == "Map":
                out[state.get("ItemsPath", "").rsplit(".", 1)[-1]] = int(
                    state.get("MaxConcurrency", 0))
                proc = state.get("ItemProcessor") or state.get("Iterator") or {}
                visit(proc.get("States", {}))

    visit(definition["States"])
    return out


def load_definition() -> dict[str, Any]:
    from pipeline.engine.definition import definition_text

    return json.loads(definition_text())


# --- wall time --------------------------------------------------------------------------


def simulate(jobs: list[list[tuple[str, list[float]]]], concurrency: int, job_limit: int,
             map_limit: int, latency: float) -> float:
    """Seconds until every job ends: each job is a list of phases (name, task durations) run
    one after the other, ``latency`` before each phase; at most ``job_limit`` jobs at once
    (0: all), at most ``map_limit`` tasks of one phase at once (0: no cap), and at most
    ``concurrency`` tasks overall. Free slots go to the phases in the order they became
    ready; within a phase, the longest tasks start first."""
    job_limit = job_limit or max(len(jobs), 1)
    map_limit = map_limit or concurrency
    waiting: list[list[float]] = [[] for _ in jobs]  # durations not started, longest last
    left = [0] * len(jobs)  # tasks of the current phase not finished
    running = [0] * len(jobs)
    phase = [-1] * len(jobs)
    pending: list[tuple[float, int, int]] = []  # (ready time, seq, job): phases about to start
    events: list[tuple[float, int]] = []  # (end time, job) of running tasks
    active: list[int] = []  # jobs whose current phase has tasks not started, in ready order
    state = {"seq": 0, "next_job": 0, "end": 0.0}

    def next_phase(j: int, t: float) -> None:
        phase[j] += 1
        if phase[j] >= len(jobs[j]):
            state["end"] = max(state["end"], t)
            start_job(t)
            return
        state["seq"] += 1
        heapq.heappush(pending, (t + latency, state["seq"], j))

    def start_job(t: float) -> None:
        if state["next_job"] < len(jobs):
            state["next_job"] += 1
            next_phase(state["next_job"] - 1, t)

    for _ in range(min(job_limit, len(jobs))):
        start_job(0.0)
    now, busy = 0.0, 0
    while pending or events:
        while pending and pending[0][0] <= now:
            _, _, j = heapq.heappop(pending)
            durations = jobs[j][phase[j]][1]
            if not durations:
                next_phase(j, now)
                continue
            waiting[j] = sorted(durations)
            left[j] = len(durations)
            active.append(j)
        for j in list(active):
            while waiting[j] and busy < concurrency and running[j] < map_limit:
                heapq.heappush(events, (now + waiting[j].pop(), j))
                running[j] += 1
                busy += 1
            if not waiting[j]:
                active.remove(j)
            if busy >= concurrency:
                break
        if events and (not pending or events[0][0] <= pending[0][0]):
            now, j = heapq.heappop(events)
            busy -= 1
            running[j] -= 1
            left[j] -= 1
            if left[j] == 0:
                next_phase(j, now)
        elif pending:
            now = max(now, pending[0][0])
    return max(state["end"], now)


# --- the estimate -----------------------------------------------------------------------


def assumptions_with(overrides: dict[str, float] | None) -> dict[str, float]:
    values = {k: a.value for k, a in ASSUMPTIONS.items()}
    for key, value in (overrides or {}).items():
        if key not in ASSUMPTIONS:
            raise EstimateError(f"unknown assumption {key!r}; known: {', '.join(ASSUMPTIONS)}")
        values[key] = float(value)
    return values


def parse_overrides(items: list[str] | None) -> dict[str, float]:
    """``["KEY=VALUE", ...]`` (``--price``) as numbers; unknown keys are an error."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise EstimateError(f"--price {item!r}: expected KEY=VALUE")
        try:
            out[key] = float(value)
        except ValueError:
            raise EstimateError(f"--price {item!r}: {value!r} is not a number") from None
    assumptions_with(out)  # unknown keys
    return out


_PAGES = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?(?::(\w+))?(?:\*(\d+))?$")


def parse_assume_pages(spec: str) -> list[PageInfo]:
    """``WxH[xC][:dtype][*N]``, comma-separated: the pages every input is taken to have
    (C default 1, dtype default uint8, N pages of that shape, default 1), tiled 512 px."""
    pages: list[PageInfo] = []
    for part in spec.split(","):
        m = _PAGES.match(part.strip())
        if not m:
            raise EstimateError(f"--assume-pages {part!r}: expected WxH[xC][:dtype][*N], e.g. "
                                "100000x80000x3:uint8*2")
        w, h, c = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        dtype, n = m.group(4) or "uint8", int(m.group(5) or 1)
        if dtype not in ("uint8", "uint16", "float32") or not 1 <= c <= 4 or w < 1 or h < 1:
            raise EstimateError(f"--assume-pages {part!r}: channels 1-4 and dtype uint8, "
                                "uint16 or float32")
        for _ in range(n):
            pages.append(PageInfo(index=len(pages), height=h, width=w, channels=c, dtype=dtype,
                                  photometric="rgb" if c >= 3 else "minisblack",
                                  extrasamples=[2] if c in (2, 4) else [], tiled=True,
                                  segment_rows=512, compression="deflate"))
    return pages


def plans_for_manifest(manifest: str, assume_pages: str | None = None
                       ) -> tuple[list[JobPlan], list[float | None], list[str]]:
    """Each job's plan, its input's size in bytes (None if unknown) and the problems found.

    Reads the manifest and each input's page headers only; with ``assume_pages`` no input is
    opened: every input has those pages (``pages`` of a job still picks among them).
    """
    from pipeline.adapters import storage
    from pipeline.core.plan import make_plan
    from pipeline.runner import validate

    specs = validate(manifest)
    if not isinstance(specs, list):
        raise EstimateError(f"{manifest} is a scan: its jobs are known only when a run lists "
                            "its folders; estimate a manifest that lists its jobs")
    assumed = parse_assume_pages(assume_pages) if assume_pages else None
    plans: list[JobPlan] = []
    sizes: list[float | None] = []
    problems: list[str] = []
    for i, spec in enumerate(specs):
        if assumed is not None:
            infos = [assumed[p] for p in spec.pages if p < len(assumed)] if spec.pages \
                else list(assumed)
            size = None
        else:
            from pipeline.adapters.tiff_read import keeps_palette, read_infos

            infos = read_infos(spec.input, spec.pages, keep_palette=keeps_palette(
                spec.ops, spec.output_options.compression))
            try:
                size = float(storage.size(spec.input))
            except Exception:  # noqa: BLE001 - the size only refines the S3 bytes
                size = None
        plan, why = make_plan(i, spec, infos, "s3://estimate/work", 0.0)
        problems += [f"jobs[{i}] ({spec.input}): {p}" for p in why]
        plans.append(plan)
        sizes.append(size)
    return plans, sizes, problems


def estimate(plans: list[JobPlan], calibration: dict[str, Any],
             overrides: dict[str, float] | None = None, concurrency: int = 1000,
             definition: dict[str, Any] | None = None,
             input_bytes: list[float | None] | None = None) -> dict[str, Any]:
    """The estimate of a run of ``plans`` on AWS: see the module's docstring."""
    a = assumptions_with(overrides)
    if concurrency < 1:
        raise EstimateError("the concurrency must be at least 1")
    definition = definition or load_definition()
    cal = calibration
    notes: set[str] = set()
    warnings: list[str] = []
    input_bytes = input_bytes or [None] * len(plans)
    mem = {f: a[f"memory_{f}_mb"] for f in ("split", "process", "merge")}
    eph = {f: a[f"ephemeral_{f}_mb"] for f in ("split", "process", "merge")}
    vcpus = {f: min(6.0, m / a["mb_per_vcpu"]) for f, m in mem.items()}
    speed = a["lambda_core_speed"]
    mbps = a["s3_mb_per_s"] * 1e6
    calls = cal.get("calls", {})
    imports = cal.get("import_s", {})

    steps: dict[str, dict[str, float]] = {s: {"invocations": 0, "seconds": 0.0, "cpu_s": 0.0,
                                              "gb_s": 0.0, "ephemeral_gb_s": 0.0,
                                              "get": 0, "put": 0, "list": 0,
                                              "bytes_in": 0.0, "bytes_out": 0.0}
                                          for s in STEPS}

    def add(step: str, seconds: float, cpu: float = 0.0, get: float = 0, put: float = 0,
            lst: float = 0, bytes_in: float = 0.0, bytes_out: float = 0.0) -> float:
        f = FUNCTION_OF[step]
        s = steps[step]
        s["invocations"] += 1
        s["seconds"] += seconds
        s["cpu_s"] += cpu
        s["gb_s"] += seconds * mem[f] / 1024
        s["ephemeral_gb_s"] += seconds * max(eph[f] - 512, 0) / 1024
        s["get"] += get
        s["put"] += put
        s["list"] += lst
        s["bytes_in"] += bytes_in
        s["bytes_out"] += bytes_out
        if seconds > a["timeout_s"]:
            warnings.append(f"a {step} invocation needs about {seconds:.0f} s, more than the "
                            f"{a['timeout_s']:.0f} s Lambda timeout")
        return seconds

    def call_s(action: str) -> float:
        return float(calls.get(action, {}).get("wall_s", 0.5))

    sim_jobs: list[list[tuple[str, list[float]]]] = []
    job_rows: list[dict[str, Any]] = []
    work_bytes_total = 0.0
    objects_total = 0
    add("plan_run", call_s("plan_run") / speed, get=1, put=1)
    for i, plan in enumerate(plans):
        geo = plan_geometry(plan)
        units, batches = _item_work(plan)
        rounds = stats_rounds(plan)
        info = plan.pages[0].info if plan.pages else None
        if info is None:
            continue
        dtype, ch = info.dtype, info.channels
        out_ch = plan.pages[0].out_channels
        comp = plan.spec.output_options.compression
        split_cal, ss = _by_kind(cal["split"], dtype, ch, notes, "split")
        split_cpu = _value(split_cal, "cpu_s_per_mpx", ss)
        split_threads = min(vcpus["split"], max(1.0, float(split_cal.get("threads", 1.0))))
        work_cal, ws = _by_kind(cal["work"], dtype, ch, notes, "work tiles")
        work_bpm = _value(work_cal, "bytes_per_mpx", ws)
        if comp not in cal["encode"]:
            raise EstimateError(f"the calibration has no {comp} encoding measurements")
        enc_cal, es = _by_kind(cal["encode"][comp], dtype, out_ch, notes, f"{comp} encoding")
        out_bpm = _value(enc_cal, "bytes_per_mpx", es)
        factor_table = cal["process"].get("factor", {})
        factor = float(_by_kind(factor_table, dtype, ch, notes, "process factor")[0]) \
            if factor_table else 1.0
        per_haloed = (_value(work_cal, "decode_cpu_s_per_mpx", ws)
                      + sum(op_cost(cal["ops"], op, dtype, ch, notes) for op in plan.spec.ops))
        per_out = _value(enc_cal, "cpu_s_per_mpx", es)
        if input_bytes[i]:
            in_bpm = float(input_bytes[i]) / max(geo["core_mpx"], 1e-9)
        elif cal.get("input_bytes_per_mpx"):  # no file: as compressed as the bench's input
            value, scale = _by_kind(cal["input_bytes_per_mpx"], dtype, ch, notes, "input bytes")
            in_bpm = float(value) * scale
        else:
            in_bpm = work_bpm
        out_bytes = geo["output_mpx"] * out_bpm
        phases: list[tuple[str, list[float]]] = []

        phases.append(("plan_job", [add("plan_job", call_s("plan_job") / speed, get=3 +
                                        len(plan.pages) // 8 + 1, put=1)]))
        durations = []
        for haloed, tiles in units:
            cpu = haloed * split_cpu
            read = haloed * in_bpm
            written = haloed * work_bpm
            secs = cpu / (split_threads * speed) + (read + written) / mbps
            durations.append(add("split", secs, cpu, get=1 + math.ceil(read / READ_BUFFER),
                                 put=tiles, bytes_in=read, bytes_out=written))
        phases.append(("split", durations))
        for _ in range(rounds):
            durations = []
            for haloed, _out, tiles in batches:
                cpu = factor * haloed * per_haloed
                read = haloed * work_bpm
                durations.append(add("stats", cpu / speed + read / mbps, cpu, get=1 + tiles,
                                     put=1, bytes_in=read))
            phases.append(("stats", durations))
            phases.append(("reduce_stats", [add("reduce_stats", call_s("report") / speed,
                                                get=1 + len(batches), put=1, lst=1)]))
        durations = []
        for haloed, out, tiles in batches:
            cpu = factor * (haloed * per_haloed + out * per_out)
            read, written = haloed * work_bpm, out * out_bpm
            durations.append(add("process", cpu / speed + (read + written) / mbps, cpu,
                                 get=1 + tiles, put=tiles, bytes_in=read, bytes_out=written))
        phases.append(("process", durations))
        merge_cal = cal["merge"]
        merge_cpu = (out_bytes / 1e6 * float(merge_cal.get("cpu_s_per_output_mb", 0.0))
                     + geo["output_tiles"] * float(merge_cal.get("cpu_s_per_output_tile", 0.0)))
        parts = math.ceil(out_bytes / MULTIPART_CHUNK) if out_bytes > MULTIPART_CHUNK else 0
        merge_s = merge_cpu / speed + 2 * out_bytes / mbps
        phases.append(("merge", [add("merge", merge_s, merge_cpu, get=1 + geo["tiles"],
                                     put=(parts + 2 if parts else 1) + 1, lst=1,
                                     bytes_in=out_bytes, bytes_out=out_bytes)]))
        if out_bytes > eph["merge"] * 1e6:
            warnings.append(f"jobs[{i}]: the output ({out_bytes / 1e9:.1f} GB) does not fit the "
                            f"merge function's /tmp ({eph['merge'] / 1000:.1f} GB): split the "
                            "job into jobs of fewer pages")
        sim_jobs.append(phases)
        work = geo["haloed_mpx"] * work_bpm + out_bytes
        work_bytes_total += work
        objects_total += int(2 * geo["tiles"]) + 2
        job_rows.append({"job": i, "input": plan.spec.input, "pages": int(geo["pages"]),
                         "megapixels": geo["core_mpx"], "haloed_megapixels": geo["haloed_mpx"],
                         "output_megapixels": geo["output_mpx"], "tiles": int(geo["tiles"]),
                         "units": len(units), "batches": len(batches), "stats_rounds": rounds,
                         "output_bytes": out_bytes, "work_bytes": work,
                         "compression": comp, "kind": _kind(dtype, ch)})
    add("report", call_s("report") / speed, get=1 + len(plans), put=1)

    # cold starts: one per concurrent environment of each function, billed (container images
    # pay their init phase); counted as rows of their own, not as invocations
    for f in ("split", "process", "merge"):
        invocations = sum(steps[k]["invocations"] for k in STEPS if FUNCTION_OF[k] == f)
        envs = min(invocations, concurrency)
        row = steps[f"cold_{f}"]
        row["environments"] = envs
        row["seconds"] = envs * (a["cold_start_s"] + float(imports.get(f, 0.0)))
        row["gb_s"] = row["seconds"] * mem[f] / 1024
        row["ephemeral_gb_s"] = row["seconds"] * max(eph[f] - 512, 0) / 1024

    # state transitions
    job_ctx = [{"units": r["units"], "batches": r["batches"], "rounds": r["stats_rounds"]}
               for r in job_rows]
    transitions = count_transitions(definition, job_ctx)
    limits = map_limits(definition)
    latency = a["state_latency_s"]
    wall = simulate(sim_jobs, concurrency, limits.get("jobs", 0),
                    limits.get("batches", 0) or limits.get("units", 0), latency)
    # PlanRun and Report around the jobs; the first wave of each function starts cold
    wall += (call_s("plan_run") + call_s("report")) / speed + 3 * latency + sum(
        a["cold_start_s"] + float(imports.get(f, 0.0)) for f in ("split", "process", "merge"))

    total_get = sum(s["get"] for s in steps.values())
    total_put = sum(s["put"] for s in steps.values())
    total_list = sum(s["list"] for s in steps.values())
    invocations = sum(s["invocations"] for s in steps.values())
    gb_s = sum(s["gb_s"] for s in steps.values())
    eph_gb_s = sum(s["ephemeral_gb_s"] for s in steps.values())
    storage_gb_month = work_bytes_total / 1e9 * a["work_retention_days"] / 30.4
    cost = {
        "lambda_duration": gb_s * a["lambda_gb_s"],
        "lambda_requests": invocations * a["lambda_request"],
        "lambda_ephemeral": eph_gb_s * a["lambda_ephemeral_gb_s"],
        "step_functions": transitions["total"] * a["sfn_transition"],
        "s3_requests": (total_put + total_list) * a["s3_put"] + total_get * a["s3_get"],
        "s3_storage": storage_gb_month * a["s3_gb_month"],
    }
    cost["total"] = sum(cost.values())
    megapixels = sum(r["megapixels"] for r in job_rows)
    return {
        "jobs": job_rows,
        "megapixels": megapixels,
        "steps": {k: v for k, v in steps.items() if v["invocations"] or v["seconds"]},
        "invocations": invocations,
        "gb_s": gb_s,
        "state_transitions": transitions,
        "s3": {"get": total_get, "put": total_put, "list": total_list,
               "bytes_read": sum(s["bytes_in"] for s in steps.values()),
               "bytes_written": sum(s["bytes_out"] for s in steps.values()),
               "work_bytes": work_bytes_total, "work_objects": objects_total,
               "storage_gb_month": storage_gb_month},
        "cost_usd": cost,
        "usd_per_gigapixel": cost["total"] / max(megapixels / 1000, 1e-9),
        "wall_s": wall,
        "concurrency": concurrency,
        "assumptions": {k: {"value": v, "unit": ASSUMPTIONS[k].unit, "help": ASSUMPTIONS[k].help,
                            "overridden": k in (overrides or {})} for k, v in a.items()},
        "calibration": {k: cal.get(k) for k in ("measured_at", "mode", "note")} | {
            "machine": (cal.get("machine") or {}).get("cpu"),
            "cores": (cal.get("machine") or {}).get("cores")},
        "notes": sorted(notes),
        "warnings": sorted(set(warnings)),
    }


# --- text -------------------------------------------------------------------------------


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.995 else f"${x:.4f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_text(result: dict[str, Any]) -> str:
    lines: list[str] = []
    p = lines.append
    mpx = result["megapixels"]
    p(f"estimate for {len(result['jobs'])} job(s), {mpx / 1000:,.1f} gigapixels, on AWS "
      f"(concurrency {result['concurrency']})")
    for j in result["jobs"][:10]:
        p(f"  jobs[{j['job']}] {j['pages']} page(s) {j['kind']} {j['megapixels']:,.0f} Mpx -> "
          f"{j['compression']}: {j['tiles']} tiles, {j['units']} split units, "
          f"{j['batches']} batches" + (f", {j['stats_rounds']} stats round(s)"
                                        if j["stats_rounds"] else ""))
    if len(result["jobs"]) > 10:
        p(f"  ... and {len(result['jobs']) - 10} more job(s)")
    p("")
    p(f"{'step':13s} {'function':8s} {'invocations':>11s} {'Lambda s':>11s} {'GB-s':>12s} "
      f"{'S3 GET':>10s} {'S3 PUT':>10s} {'MB read':>11s} {'MB written':>11s}")
    for name, s in result["steps"].items():
        count = f"({s['environments']:,.0f})" if name.startswith("cold_") else \
            f"{s['invocations']:,.0f}"
        p(f"{name:13s} {FUNCTION_OF[name]:8s} {count:>11s} {s['seconds']:11,.1f} "
          f"{s['gb_s']:12,.0f} {s['get']:10,.0f} {s['put'] + s['list']:10,.0f} "
          f"{s['bytes_in'] / 1e6:11,.0f} {s['bytes_out'] / 1e6:11,.0f}")
    p(f"{'total':13s} {'':8s} {result['invocations']:11,.0f} "
      f"{sum(s['seconds'] for s in result['steps'].values()):11,.1f} {result['gb_s']:12,.0f} "
      f"{result['s3']['get']:10,.0f} {result['s3']['put'] + result['s3']['list']:10,.0f} "
      f"{result['s3']['bytes_read'] / 1e6:11,.0f} {result['s3']['bytes_written'] / 1e6:11,.0f}")
    p("(cold_*: one cold start per concurrent environment, in parentheses; billed, not "
      "invocations)")
    st = result["state_transitions"]
    p(f"state transitions: {st['total']:,} (Step Functions Standard)")
    s3 = result["s3"]
    p(f"work files: {s3['work_objects']:,} objects, {s3['work_bytes'] / 1e9:,.1f} GB, kept "
      f"{result['assumptions']['work_retention_days']['value']:g} days "
      f"({s3['storage_gb_month']:,.2f} GB-months)")
    p("")
    p("cost (USD):")
    for k, v in result["cost_usd"].items():
        if k != "total":
            p(f"  {k:18s} {_money(v):>12s}")
    p(f"  {'total':18s} {_money(result['cost_usd']['total']):>12s}   "
      f"({_money(result['usd_per_gigapixel'])} per gigapixel)")
    p(f"expected wall time at concurrency {result['concurrency']}: "
      f"{_duration(result['wall_s'])}")
    for w in result["warnings"]:
        p(f"WARNING: {w}")
    p("")
    cal = result["calibration"]
    p(f"per-megapixel costs from the calibration measured {cal.get('measured_at')} "
      f"({cal.get('mode')} sizes) on {cal.get('machine')} ({cal.get('cores')} cores)"
      + (f": {cal['note']}" if cal.get("note") else ""))
    for n in result["notes"]:
        p(f"  note: {n}")
    p("assumptions (override any with --price KEY=VALUE):")
    for k, v in result["assumptions"].items():
        mark = " (overridden)" if v["overridden"] else ""
        p(f"  {k:22s} {v['value']:<14g} {v['unit']:15s} {v['help']}{mark}")
    return "\n".join(lines)
