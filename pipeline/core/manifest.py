"""The manifest: which jobs to run, checked and resolved into :class:`JobSpec` objects.

A manifest is JSON::

    {"defaults": {"tile": 1024, "output_options": {"compression": "zstd"}},
     "jobs": [{"input": "in/a.tif", "output": "out/a.tif", "ops": [...]}, ...]}

Each job has ``input`` and ``output`` (local paths, relative ones to the manifest's
folder, or ``s3://bucket/key`` URLs) and may set ``pages``, ``ops``, ``tile``,
``output_options`` and ``fuse``. ``defaults`` sets those optional fields for every job; a
job's own field replaces the default, except ``output_options``, which is merged key
by key (the job's keys win). ``level`` and ``quality`` go with a compression: a job
that picks another compression than the defaults does not inherit them.

Instead of ``jobs``, a manifest may hold a ``scan``::

    {"scan": {"input": "s3://b/incoming/", "output": "s3://b/processed/", "ops": [...]}}

with the same optional fields as a job: every TIFF under ``input`` whose output (``output``
plus the same relative path) does not exist yet becomes a job. :func:`parse_manifest_or_scan`
returns it as a :class:`ScanSpec`; the planning step lists the folders and calls
:func:`scan_jobs`.

Every problem is collected, each as ``<json path>: <what was expected>, got <what
came>``, and all of them are raised at once in one :class:`ManifestError`.

Pure module: no file I/O (relative paths are joined, never looked up).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.models import (
    COMPRESSIONS,
    DEFAULT_OUTPUT_TILE,
    DEFAULT_TILE,
    JobSpec,
    OutputOptions,
)
from pipeline.core.ops import parse_chain
from pipeline.core.params import Param
from pipeline.errors import ManifestError

TOP_FIELDS = ("defaults", "jobs", "scan")
JOB_FIELDS = ("input", "output", "pages", "ops", "tile", "output_options", "fuse")
SCAN_FIELDS = JOB_FIELDS
#: the inputs a scan picks up (compared in lower case)
TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_FIELDS = ("pages", "ops", "tile", "output_options", "fuse")
OPTION_FIELDS = ("compression", "level", "quality", "tile", "pyramid", "ome")

#: processing tile: (smallest, largest), a multiple of TILE_STEP
TILE_RANGE = (64, 8192)
#: output tile: (smallest, largest), a multiple of TILE_STEP
OUTPUT_TILE_RANGE = (16, 4096)
TILE_STEP = 16
#: compression -> (lowest, highest) level; other compressions take no level
LEVELS = {"zstd": (1, 22), "deflate": (1, 9)}
QUALITY_COMPRESSIONS = ("jpeg",)

_LOCATION = "a local path or s3://bucket/key"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

_COMPRESSION = Param("compression", "string", "codec of the output tiles", default="zstd",
                     choices=COMPRESSIONS)
_LEVEL = Param("level", "integer", "codec level (zstd 1-22, deflate 1-9)")
_QUALITY = Param("quality", "integer", "jpeg quality", default=90, ge=1, le=100)
_PAGE = Param("page", "integer", "page index", ge=0)
_PYRAMID = Param("pyramid", "boolean", "reduced-resolution levels as SubIFDs", default=False)
_OME = Param("ome", "boolean", "write OME-TIFF", default=False)
_FUSE = Param("fuse", "boolean", "split and process each unit in one invocation",
              default=True)

#: the setting of every optional field when neither the job nor the defaults set it
_BUILTIN: dict[str, Any] = {
    "pages": None,
    "ops": [],
    "tile": DEFAULT_TILE,
    "output_options.compression": OutputOptions.compression,
    "output_options.level": None,
    "output_options.quality": OutputOptions.quality,
    "output_options.tile": DEFAULT_OUTPUT_TILE,
    "output_options.pyramid": OutputOptions.pyramid,
    "output_options.ome": OutputOptions.ome,
    "fuse": JobSpec.fuse,
}


# --- locations ----------------------------------------------------------------------


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def resolve_location(location: str, base_dir: str) -> str:
    """``location`` as an absolute path or URL: relative local paths are joined to ``base_dir``.

    Absolute local paths and ``s3://`` URLs are returned unchanged. When ``base_dir`` is an
    ``s3://bucket/prefix``, a relative path becomes a key under that prefix. Pure: the
    filesystem is never consulted.
    """
    if is_s3(location) or os.path.isabs(location):
        return location
    if is_s3(base_dir):
        bucket, _, prefix = base_dir[len("s3://"):].partition("/")
        key = posixpath.normpath(posixpath.join(prefix, location)) if prefix else \
            posixpath.normpath(location)
        return f"s3://{bucket}/{key.lstrip('/')}"
    return os.path.normpath(os.path.join(base_dir, location))


def _same_key(location: str) -> str:
    """What two locations must share to be the same file."""
    return location if is_s3(location) else os.path.normpath(location)


def _location_problem(value: Any) -> str | None:
    """None if ``value`` is a usable location, else ``expected ..., got ...``."""
    if not isinstance(value, str) or not value.strip():
        return f"expected {_LOCATION}, got {_show(value)}"
    scheme = _SCHEME.match(value)
    if scheme and scheme.group(1) != "s3":
        return f"expected {_LOCATION} (the only URLs supported are s3://), got {_show(value)}"
    if scheme:
        bucket, _, key = value[len("s3://"):].partition("/")
        if not bucket or not key:
            return f"expected s3://bucket/key with both a bucket and a key, got {_show(value)}"
    return None


# --- the layers: defaults, then a job ------------------------------------------------


@dataclass
class _Layer:
    """The optional fields one object (``defaults`` or a job) sets.

    Keys are flat: ``tile``, ``output_options.level``... ``values`` holds the valid
    ones; ``bad`` the ones present but invalid (already reported).
    """

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)

    def set_keys(self) -> list[str]:
        return [k for k in _BUILTIN if k in self.values or k in self.bad]

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"


@dataclass
class _Setting:
    """A field's effective value and the layer that set it (None: built in)."""

    value: Any
    layer: _Layer | None
    ok: bool = True


def _effective(layers: list[_Layer]) -> dict[str, _Setting]:
    """The settings after stacking ``layers`` (later ones win) on the built-in defaults.

    A layer that changes the compression drops the ``level`` and ``quality`` that
    earlier layers set: they were meant for the other compression.
    """
    eff = {key: _Setting(value, None) for key, value in _BUILTIN.items()}
    for layer in layers:
        new = layer.values.get("output_options.compression")
        if new is not None and new != eff["output_options.compression"].value:
            for key in ("output_options.level", "output_options.quality"):
                eff[key] = _Setting(_BUILTIN[key], None)
        for key in layer.set_keys():
            eff[key] = _Setting(layer.values.get(key), layer, key not in layer.bad)
    return eff


def _job_fields(eff: dict[str, _Setting]) -> dict[str, Any]:
    """The optional job fields (pages, ops, tile, output_options, fuse) of the settings."""
    options = {k: eff[f"output_options.{k}"].value
               for k in ("compression", "level", "quality", "tile", "pyramid", "ome")}
    return {"pages": None if eff["pages"].value is None else list(eff["pages"].value),
            "ops": [dict(op) for op in eff["ops"].value], "tile": eff["tile"].value,
            "output_options": OutputOptions(**options), "fuse": bool(eff["fuse"].value)}


def _size_problem(value: Any, lo: int, hi: int) -> str | None:
    """None if ``value`` is a tile size in [lo, hi] and a multiple of TILE_STEP."""
    ok = Param("size", "integer", "", ge=lo, le=hi).check(value) is None
    if ok and int(value) % TILE_STEP == 0:
        return None
    return f"expected an integer multiple of {TILE_STEP} from {lo} to {hi}, got {_show(value)}"


def _parse_pages(value: Any, path: str, problems: list[str]) -> tuple[bool, list[int] | None]:
    if value is None:
        return True, None  # explicit null: every page (undoes a default)
    if not isinstance(value, list) or not value:
        problems.append(f"{path}: expected a non-empty list of page indices (integers >= 0), "
                        f"or null for every page, got {_show(value)}")
        return False, None
    pages: list[int] = []
    seen: dict[int, int] = {}
    ok = True
    for i, item in enumerate(value):
        message = _PAGE.check(item)
        if message:
            problems.append(f"{path}[{i}]: {message}")
            ok = False
            continue
        page = int(item)
        if page in seen:
            problems.append(f"{path}[{i}]: expected a page not listed before, got {page} "
                            f"again (already {path}[{seen[page]}])")
            ok = False
            continue
        seen[page] = i
        pages.append(page)
    return ok, pages


def _unknown(obj: dict[str, Any], allowed: tuple[str, ...], path: str, problems: list[str],
             hint: dict[str, str] | None = None) -> None:
    names = ", ".join(sorted(allowed))
    for key in obj:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            extra = (hint or {}).get(key, "")
            problems.append(f"{where}: unknown field (allowed: {names}){extra}")


def _parse_layer(obj: dict[str, Any], path: str, problems: list[str]) -> _Layer:
    """Check the optional fields of a job or of ``defaults`` (each on its own)."""
    layer = _Layer(path)

    def put(key: str, ok: bool, value: Any) -> None:
        if ok:
            layer.values[key] = value
        else:
            layer.bad.add(key)

    if "pages" in obj:
        ok, pages = _parse_pages(obj["pages"], f"{path}.pages", problems)
        put("pages", ok, pages)
    if "ops" in obj:
        calls, probs = parse_chain(obj["ops"], f"{path}.ops")
        problems.extend(probs)
        put("ops", not probs, [c.to_json() for c in calls])
    if "tile" in obj:
        message = _size_problem(obj["tile"], *TILE_RANGE)
        if message:
            problems.append(f"{path}.tile: {message}")
        put("tile", not message, None if message else int(obj["tile"]))
    if "output_options" in obj:
        _parse_options(obj["output_options"], f"{path}.output_options", layer, problems)
    if "fuse" in obj:
        message = _FUSE.check(obj["fuse"])
        if message:
            problems.append(f"{path}.fuse: {message}")
        put("fuse", not message, obj["fuse"])
    return layer


def _parse_options(opts: Any, path: str, layer: _Layer, problems: list[str]) -> None:
    if not isinstance(opts, dict):
        problems.append(f"{path}: expected an object with any of "
                        f"{', '.join(OPTION_FIELDS)}, got {_show(opts)}")
        layer.bad.update(f"output_options.{k}" for k in OPTION_FIELDS)
        return
    _unknown(opts, OPTION_FIELDS, path, problems)
    checks = {
        "compression": _COMPRESSION.check,
        "level": _LEVEL.check,
        "quality": _QUALITY.check,
        "tile": lambda v: _size_problem(v, *OUTPUT_TILE_RANGE),
        "pyramid": _PYRAMID.check,
        "ome": _OME.check,
    }
    for name, check in checks.items():
        if name not in opts:
            continue
        key = f"output_options.{name}"
        message = check(opts[name])
        if message:
            problems.append(f"{path}.{name}: {message}")
            layer.bad.add(key)
        else:
            value = opts[name]
            layer.values[key] = value if name in ("compression", "pyramid", "ome") \
                else int(value)


# --- rules across fields -------------------------------------------------------------


def _from(setting: _Setting, layer: _Layer, key: str) -> str:
    """`` (from defaults.tile)`` when ``setting`` was not set by ``layer`` itself."""
    if setting.layer is layer:
        return ""
    if setting.layer is None:
        return f" (the default {key})"
    return f" (from {setting.layer.where(key)})"


def _cross_problems(eff: dict[str, _Setting], layer: _Layer) -> list[str]:
    """Problems between fields, for the fields ``layer`` set (others were reported already)."""
    problems: list[str] = []
    comp = eff["output_options.compression"]
    level = eff["output_options.level"]
    quality = eff["output_options.quality"]
    tile = eff["tile"]
    out_tile = eff["output_options.tile"]

    if level.layer is layer and level.ok and comp.ok:
        shown = f"compression {json.dumps(comp.value)}" \
                f"{_from(comp, layer, 'output_options.compression')}"
        where = layer.where("output_options.level")
        if comp.value not in LEVELS:
            problems.append(f"{where}: expected no level with {shown}: level applies to "
                            f"{' and '.join(LEVELS)} only, got {level.value}")
        else:
            lo, hi = LEVELS[comp.value]
            if not lo <= level.value <= hi:
                problems.append(f"{where}: expected an integer from {lo} to {hi} for {shown}, "
                                f"got {level.value}")

    if quality.layer is layer and quality.ok and comp.ok and comp.value not in QUALITY_COMPRESSIONS:
        shown = f"compression {json.dumps(comp.value)}" \
                f"{_from(comp, layer, 'output_options.compression')}"
        problems.append(f"{layer.where('output_options.quality')}: expected no quality with "
                        f"{shown}: quality applies to {' and '.join(QUALITY_COMPRESSIONS)} only, "
                        f"got {quality.value}")

    if (layer in (tile.layer, out_tile.layer) and tile.ok and out_tile.ok
            and tile.value % out_tile.value != 0):
        problems.append(_tile_problem(tile, out_tile, layer))
    return problems


def _tile_problem(tile: _Setting, out_tile: _Setting, layer: _Layer) -> str:
    t, o = tile.value, out_tile.value
    lo, hi = TILE_RANGE
    tiles = [m for m in ((t // o) * o, (t // o + 1) * o) if lo <= m <= hi]
    outs = [d for d in range(OUTPUT_TILE_RANGE[1], OUTPUT_TILE_RANGE[0] - 1, -TILE_STEP)
            if t % d == 0 and d < o]
    fixes = []
    if tiles:
        fixes.append("tile to " + " or ".join(str(m) for m in tiles))
    if outs:
        fixes.append(f"output_options.tile to {outs[0]} (or another divisor of {t})")
    fix = "; set " + ", or ".join(fixes) if fixes else ""
    if tile.layer is layer:
        return (f"{layer.where('tile')}: expected a multiple of the output tile size {o}"
                f"{_from(out_tile, layer, 'output_options.tile')}, got {t}{fix}")
    return (f"{layer.where('output_options.tile')}: expected a size that divides the processing "
            f"tile {t}{_from(tile, layer, 'tile')}, got {o}{fix}")


# --- the scan form -------------------------------------------------------------------


@dataclass(frozen=True)
class ScanSpec:
    """A scan: every TIFF under ``input`` without an output under ``output`` is a job.

    ``input`` and ``output`` are resolved folders (absolute paths) or ``s3://bucket/prefix/``
    prefixes (always ending in ``/``); the other fields are those every job gets.
    """

    input: str
    output: str
    pages: list[int] | None = None
    ops: list[dict[str, Any]] = field(default_factory=list)
    tile: int = DEFAULT_TILE
    output_options: OutputOptions = field(default_factory=OutputOptions)
    fuse: bool = True

    def relative(self, location: str) -> str | None:
        """``location``'s path under the input, with ``/`` separators; None if it is not a
        scan input (outside the input, not a .tif/.tiff, or hidden: a name starting with
        ``.``, such as temporary files and ``.tiffpipe-work``)."""
        if is_s3(self.input):
            if not location.startswith(self.input):
                return None
            rel = location[len(self.input):]
        else:
            rel = os.path.relpath(location, self.input).replace(os.sep, "/")
        parts = rel.split("/")
        if rel.startswith("../") or any(not p or p.startswith(".") for p in parts):
            return None
        return rel if rel.lower().endswith(TIFF_SUFFIXES) else None

    def output_for(self, rel: str) -> str:
        """The output of the input at ``rel`` (a path from :meth:`relative`)."""
        if is_s3(self.output):
            return self.output + rel
        return os.path.join(self.output, *rel.split("/"))

    def job(self, location: str, rel: str) -> JobSpec:
        return JobSpec(input=location, output=self.output_for(rel),
                       pages=None if self.pages is None else list(self.pages),
                       ops=[dict(op) for op in self.ops], tile=self.tile,
                       output_options=self.output_options, fuse=self.fuse)


def scan_jobs(scan: ScanSpec, inputs: list[str], outputs: list[str]) -> list[JobSpec]:
    """The jobs of a scan, given what is under its input and its output (full paths/URLs).

    An input whose output exists is done: outputs are published in one step (a rename, a
    completed upload), so an output that exists is complete. Pure; sorted by input.
    """
    done = {_same_key(o) for o in outputs}
    jobs = []
    for location in sorted(inputs):
        rel = scan.relative(location)
        if rel is not None and _same_key(scan.output_for(rel)) not in done:
            jobs.append(scan.job(location, rel))
    return jobs


def _scan_location(value: Any, base_dir: str) -> tuple[str | None, str | None]:
    """(the resolved folder or ``s3://bucket/prefix/``, None) or (None, the problem)."""
    expected = "a folder or an s3://bucket/prefix/"
    if not isinstance(value, str) or not value.strip():
        return None, f"expected {expected}, got {_show(value)}"
    scheme = _SCHEME.match(value)
    if scheme and scheme.group(1) != "s3":
        return None, (f"expected {expected} (the only URLs supported are s3://), "
                      f"got {_show(value)}")
    if scheme:
        bucket, _, prefix = value[len("s3://"):].partition("/")
        if not bucket:
            return None, f"expected s3://bucket/prefix/ with a bucket, got {_show(value)}"
        prefix = posixpath.normpath(prefix).lstrip("/") if prefix.strip("/") else ""
        return f"s3://{bucket}/{prefix + '/' if prefix else ''}", None
    resolved = resolve_location(value, base_dir)
    if is_s3(resolved):  # a relative folder in an S3 manifest: a prefix next to it
        return resolved.rstrip("/") + "/", None
    return resolved, None


def _inside(a: str, b: str) -> bool:
    """True if location ``a`` is ``b`` or under it."""
    if is_s3(a) != is_s3(b):
        return False
    if is_s3(a):
        return a.startswith(b)
    return os.path.commonpath([a, b]) == b


def _parse_scan(scan: Any, defaults: _Layer, base_dir: str,
                problems: list[str]) -> ScanSpec | None:
    """Check the ``scan`` block (its problems are added to ``problems``)."""
    if not isinstance(scan, dict):
        problems.append(f'scan: expected an object with "input" and "output" (and any of '
                        f'{", ".join(DEFAULT_FIELDS)}), got {_show(scan)}')
        return None
    _unknown(scan, SCAN_FIELDS, "scan", problems)
    where: dict[str, str | None] = {}
    for name in ("input", "output"):
        if name not in scan:
            problems.append(f"scan.{name}: expected a folder or an s3://bucket/prefix/ "
                            f"(required), got nothing")
            where[name] = None
            continue
        where[name], message = _scan_location(scan[name], base_dir)
        if message:
            problems.append(f"scan.{name}: {message}")
    src, dst = where["input"], where["output"]
    if src is not None and dst is not None and (_inside(src, dst) or _inside(dst, src)):
        problems.append(f"scan.output: expected a location outside scan.input ({json.dumps(src)}) "
                        f"and not containing it: outputs would be scanned as inputs, got "
                        f"{json.dumps(dst)}")
    layer = _parse_layer(scan, "scan", problems)
    eff = _effective([defaults, layer])
    problems.extend(_cross_problems(eff, layer))
    if src is None or dst is None or not all(s.ok for s in eff.values()):
        return None
    return ScanSpec(
        input=src, output=dst,
        **_job_fields(eff))


# --- the manifest -------------------------------------------------------------------


def parse_manifest(data: Any, source: str, base_dir: str) -> list[JobSpec]:
    """The jobs of a manifest: see :func:`parse_manifest_or_scan`.

    A scan manifest is checked just as fully, but its jobs are only known once its folders
    are listed (at plan time), so it has none here.
    """
    parsed = parse_manifest_or_scan(data, source, base_dir)
    return [] if isinstance(parsed, ScanSpec) else parsed


def parse_manifest_or_scan(data: Any, source: str, base_dir: str) -> list[JobSpec] | ScanSpec:
    """Validate and resolve; raise ManifestError(source, problems) listing EVERY problem.

    ``source`` names the manifest in messages; ``base_dir`` is its folder (a local path or
    an ``s3://bucket/prefix``), against which relative locations are resolved. Returns the
    jobs, or the :class:`ScanSpec` of a ``scan`` manifest.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        message = (f"manifest: expected an object with \"jobs\" (and optionally "
                   f"\"defaults\"), got {_show(data)}")
        raise ManifestError(source, [message])
    _unknown(data, TOP_FIELDS, "", problems)

    defaults = _Layer("defaults")
    if "defaults" in data:
        if isinstance(data["defaults"], dict):
            hint = {k: "; input and output are set in each job" for k in ("input", "output")}
            _unknown(data["defaults"], DEFAULT_FIELDS, "defaults", problems, hint)
            defaults = _parse_layer(data["defaults"], "defaults", problems)
            problems.extend(_cross_problems(_effective([defaults]), defaults))
        else:
            problems.append(f"defaults: expected an object with any of "
                            f"{', '.join(DEFAULT_FIELDS)}, got {_show(data['defaults'])}")

    if "scan" in data:
        scan = _parse_scan(data["scan"], defaults, base_dir, problems)
        if "jobs" not in data:
            if problems or scan is None:
                raise ManifestError(source, problems)
            return scan
        problems.append('scan: expected either "jobs" or "scan" at the top level, not both: '
                        'remove one of them')

    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        came = "nothing" if "jobs" not in data else _show(jobs)
        problems.append(f"jobs: expected a non-empty list of jobs, got {came}")
        jobs = []

    specs: list[JobSpec] = []
    inputs: list[tuple[int, str]] = []  # (job, resolved input) of every valid input
    outputs: dict[str, int] = {}  # resolved output -> first job writing it
    for i, job in enumerate(jobs):
        path = f"jobs[{i}]"
        if not isinstance(job, dict):
            problems.append(f"{path}: expected an object with \"input\" and \"output\", "
                            f"got {_show(job)}")
            continue
        _unknown(job, JOB_FIELDS, path, problems)
        where: dict[str, str | None] = {}
        for name in ("input", "output"):
            if name not in job:
                problems.append(f"{path}.{name}: expected {_LOCATION} (required), got nothing")
                where[name] = None
                continue
            message = _location_problem(job[name])
            if message:
                problems.append(f"{path}.{name}: {message}")
                where[name] = None
            else:
                where[name] = resolve_location(job[name], base_dir)
        if where["output"] is not None:
            if not job["output"].lower().endswith((".tif", ".tiff")):
                problems.append(f"{path}.output: expected a path ending in .tif or .tiff, "
                                f"got {_show(job['output'])}")
            key = _same_key(where["output"])
            if key in outputs:
                problems.append(f"{path}.output: same output as jobs[{outputs[key]}] "
                                f"({json.dumps(where['output'])})")
            else:
                outputs[key] = i
        if where["input"] is not None:
            inputs.append((i, where["input"]))

        layer = _parse_layer(job, path, problems)
        eff = _effective([defaults, layer])
        problems.extend(_cross_problems(eff, layer))
        if where["input"] is not None and where["output"] is not None and all(
                setting.ok for setting in eff.values()):
            specs.append(JobSpec(
                input=where["input"],
                output=where["output"],
                **_job_fields(eff)))

    for key, i in outputs.items():
        for j, location in inputs:
            if _same_key(location) == key:
                whose = "its own input" if i == j else f"the input of jobs[{j}]"
                problems.append(f"jobs[{i}].output: same location as {whose} "
                                f"({json.dumps(location)}); the output would overwrite it")
                break

    if problems:
        raise ManifestError(source, problems)
    return specs


def load_manifest_text(text: str, source: str, base_dir: str) -> list[JobSpec]:
    """json.loads with a clear ManifestError on invalid JSON (line/column), then parse_manifest."""
    return parse_manifest(_decode(text, source), source, base_dir)


def load_manifest(text: str, source: str, base_dir: str) -> list[JobSpec] | ScanSpec:
    """As :func:`load_manifest_text`, but a scan manifest gives its :class:`ScanSpec`."""
    return parse_manifest_or_scan(_decode(text, source), source, base_dir)


def _decode(text: str, source: str) -> Any:
    if not text.strip():
        raise ManifestError(source, ['manifest: expected a JSON object with "jobs", got an empty file'])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        raise ManifestError(source, [message]) from None
    return data


def _show(value: Any, limit: int = 60) -> str:
    """``value`` as JSON, shortened for messages."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit - 3] + "..."
