"""The manifest: which jobs to run, checked and resolved into :class:`JobSpec` objects.

A manifest is JSON::

    {"defaults": {"tile": 1024, "output_options": {"compression": "zstd"}},
     "jobs": [{"input": "in/a.tif", "output": "out/a.tif", "ops": [...]}, ...]}

Each job has ``input`` and ``output`` (local paths, relative ones to the manifest's
folder, or ``s3://bucket/key`` URLs) and may set ``pages``, ``ops``, ``tile``,
``output_options``, ``fuse`` and ``if_exists``. ``defaults`` sets those optional fields for
every job; a job's own field replaces the default, except ``output_options``, which is
merged key by key (the job's keys win). ``level`` and ``quality`` go with a compression: a job
that picks another compression than the defaults does not inherit them.

Instead of ``jobs``, a manifest may hold a ``scan``::

    {"scan": {"input": "s3://b/incoming/", "output": "s3://b/processed/", "ops": [...]}}

with the same optional fields as a job: every TIFF under ``input`` whose output (``output``
plus the same relative path) does not exist yet becomes a job. :func:`parse_manifest_or_scan`
returns it as a :class:`ScanSpec`; the planning step lists the folders and calls
:func:`scan_jobs`.

Every problem is collected, each as ``<json path>: <what was expected>, got <what
came>``, and all of them are raised at once in one :class:`ManifestError`. The optional
fields' checks and how ``defaults`` stack under a job are in :mod:`pipeline.core.job_fields`.

Pure module: no file I/O (relative paths are joined, never looked up). A local path is
made absolute by ``local``: by default :func:`os.path.normpath`, which takes ``..`` as text;
:func:`pipeline.steps.common.read_manifest` gives :func:`pipeline.adapters.storage.local_path`,
which takes it as the OS does (``link/../x`` beside the link's target), so that every check
here compares the files the OS opens.

Two local paths that differ only in case are one file where the folders they are in ignore
case (macOS's APFS, Windows' NTFS by default), and so are two that differ only in Unicode
normalization (``é`` as U+00E9 or as ``e`` and U+0301) where they ignore that (APFS, HFS+):
``fold`` (by default none) gives each local path's key for those comparisons,
:func:`pipeline.adapters.storage.name_fold` for a local manifest, which asks the file system
folder by folder. S3 keys are never folded.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from pipeline.core.job_fields import (
    Layer,
    Setting,
    cross_problems,
    effective,
    job_fields,
    misplaced,
    parse_layer,
    show,
    unknown_fields,
)
from pipeline.core.models import DEFAULT_TILE, JobSpec, OutputOptions
from pipeline.core.record import field_values, record
from pipeline.errors import ManifestError

TOP_FIELDS = ("defaults", "jobs", "scan")
JOB_FIELDS = ("input", "output", "pages", "ops", "tile", "output_options", "fuse", "if_exists")
SCAN_FIELDS = JOB_FIELDS
#: the inputs a scan picks up (compared in lower case)
TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_FIELDS = ("pages", "ops", "tile", "output_options", "fuse", "if_exists")

_LOCATION = "a local path or s3://bucket/key"
#: the required fields of a job and of a scan
_PLACES = ("input", "output")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: the URL schemes a location may be mistyped from ("s3:/b/k", "s3:b/k": taken for a local
#: path, it wrote into a folder named "s3:"); other names with a colon are local paths
_URL_SCHEMES = ("s3", "s3a", "s3n", "gs", "gcs", "http", "https", "ftp", "file", "az", "abfs")


def _broken_url(value: str, expected: str) -> str | None:
    """The problem of a location that begins like a URL but is none, else None."""
    scheme, sep, rest = value.partition(":")
    if not sep or scheme.lower() not in _URL_SCHEMES or rest.startswith("//"):
        return None
    return (f"expected {expected}, got {show(value)}: it begins like a URL ({scheme}:) but "
            "is none (an S3 location is s3://bucket/key, with two slashes); for a local "
            f"file of that name, write ./{value}")


# --- locations ----------------------------------------------------------------------


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


#: how a local path is made absolute (see the module's docstring)
Local = Callable[[str], str]
#: a local absolute path's key for telling which paths are one file: its names in folders
#: that ignore case or Unicode normalization folded (see the module's docstring)
Fold = Callable[[str], str]


def resolve_location(location: str, base_dir: str, local: Local = os.path.normpath) -> str:
    """``location`` as an absolute path or URL: relative local paths are joined to ``base_dir``.

    ``s3://`` URLs are returned unchanged, absolute local paths normalised by ``local``
    (``/x/in/`` and ``/x/./in`` are ``/x/in``: one folder has one spelling, which the scan's
    checks of what contains what compare). When ``base_dir`` is an ``s3://bucket/prefix``,
    a relative path becomes a key under that prefix. Pure (but for what ``local`` does).
    """
    if is_s3(location):
        return location
    if os.path.isabs(location):
        return local(location)
    if is_s3(base_dir):
        bucket, _, prefix = base_dir[len("s3://"):].partition("/")
        key = posixpath.normpath(posixpath.join(prefix, location)) if prefix else \
            posixpath.normpath(location)
        return f"s3://{bucket}/{key.lstrip('/')}"
    return local(os.path.join(base_dir, location))


#: the longest file name (bytes) local file systems take (ext4, XFS, APFS, NTFS in UTF-16
#: units); an S3 key's longest (bytes)
NAME_MAX, S3_KEY_MAX = 255, 1024


def _name_too_long(location: str) -> str | None:
    """Why the output ``location``'s name is longer than any file system (or S3) takes, or
    None (a file system's own, lower, limit is checked where the output is written)."""
    if is_s3(location):
        size = len(location[len("s3://"):].partition("/")[2].encode("utf-8"))
        what, limit = "S3 key", S3_KEY_MAX
    else:
        size = len(os.path.basename(location).encode("utf-8", "surrogateescape"))
        what, limit = "file name", NAME_MAX
    if size <= limit:
        return None
    return (f"its {what} is {size} bytes long, longer than the {limit} a {what} may be: "
            "give the output a shorter name")


def _above_bucket(location: str) -> bool:
    """Whether an S3 location a relative path resolved to climbs above its bucket's top
    (``../`` left at the start of its key: S3 would take it as a key of that name)."""
    key = location[len("s3://"):].partition("/")[2] if is_s3(location) else ""
    return key == ".." or key.startswith("../")


def _same_key(location: str) -> str:
    """What two locations must share to be the same file (as spelled)."""
    return location if is_s3(location) else os.path.normpath(location)


def _key(location: str, fold: Fold | None) -> str:
    """What two locations must share to be the same file, where the file system may ignore
    case (``fold``: see the module's docstring)."""
    key = _same_key(location)
    return key if fold is None or is_s3(key) else fold(key)


def _difference(first: str, second: str) -> str:
    """How two spellings of one local file differ: in case, in Unicode normalization (an
    accented letter as one character, NFC, or as a letter and a combining mark, NFD), or in
    both."""
    if unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", second):
        return "Unicode normalization"
    return "case" if first.casefold() == second.casefold() else "case and Unicode normalization"


def _form(location: str) -> str:
    """Which Unicode normalization ``location`` is spelled in (they look alike on screen)."""
    for form in ("NFC", "NFD"):
        if unicodedata.is_normalized(form, location):
            return form
    return "neither NFC nor NFD"


def quoted(location: str) -> str:
    """``location`` in double quotes for a message, its letters as written (Müller, not JSON's
    M\\u00fcller: the user looks for the file by them); control characters escaped."""
    return json.dumps(location, ensure_ascii=False)


def _kept(first: str, second: str) -> str:
    """What a file system that would keep two spellings apart keeps."""
    what = _difference(first, second)
    return "case" if what == "case" else f"names differing in {what} apart"


def spelled_apart(first: str, second: str) -> str:
    """What to add to a message about two locations that are one file: nothing if they are
    spelled alike, else how they differ (case, Unicode normalization), which their file
    system ignores; for normalization each spelling's form too (json.dumps shows the escapes
    of the letters that differ)."""
    if _same_key(first) == _same_key(second):
        return ""
    what, a, b = _difference(first, second), json.dumps(first), json.dumps(second)
    if what != "case":
        what += " (one accented letter written as one character or as two)"
        a, b = f"{a} ({_form(first)})", f"{b} ({_form(second)})"
    return (f": {a} and {b} differ only in {what}, which the file system there ignores, so "
            "they are one file")


def _location_problem(value: Any) -> str | None:
    """None if ``value`` is a usable location, else ``expected ..., got ...``."""
    if not isinstance(value, str) or not value.strip():
        return f"expected {_LOCATION}, got {show(value)}"
    broken = _broken_url(value, _LOCATION)
    if broken:
        return broken
    scheme = _SCHEME.match(value)
    if scheme and scheme.group(1) != "s3":
        return f"expected {_LOCATION} (the only URLs supported are s3://), got {show(value)}"
    if scheme:
        bucket, _, key = value[len("s3://"):].partition("/")
        if not bucket or not key:
            return f"expected s3://bucket/key with both a bucket and a key, got {show(value)}"
        if key.endswith("/"):
            return (f"expected s3://bucket/key naming an object, got {show(value)}, a prefix "
                    '(a folder of inputs or of outputs is a scan manifest\'s: {"scan": ...})')
    elif value.endswith(("/", os.sep)):  # a relative or local path of a folder
        return (f"expected the path of a file, got {show(value)}, a folder (a folder of inputs "
                'or of outputs is a scan manifest\'s: {"scan": ...})')
    return None



# --- the scan form -------------------------------------------------------------------


@record(frozen=True)
class ScanSpec:
    """A scan: every TIFF under ``input`` without an output under ``output`` is a job.

    ``input`` and ``output`` are resolved folders (absolute paths) or ``s3://bucket/prefix/``
    prefixes (always ending in ``/``); the other fields are those every job gets, but
    ``if_exists`` is ``skip`` unless set: a scan's jobs are for outputs that do not exist, so
    one that appears meanwhile (another run of the scan made it) is left as it is.
    """

    input: str
    output: str
    pages: list[int] | None = None
    ops: list[dict[str, Any]] = field(default_factory=list)
    tile: int = DEFAULT_TILE
    output_options: OutputOptions = field(default_factory=OutputOptions)
    fuse: bool = True
    if_exists: str = "skip"

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
                       output_options=self.output_options, fuse=self.fuse,
                       if_exists=self.if_exists)


#: why a scan left a TIFF out (the run report's ``scan.left_out``, :class:`ScanFindings`):
#: its output would be one file with another input's (a folder ignoring case or Unicode
#: normalization), it is a link to a file outside the scanned folder, or to nothing, or its
#: name (or a folder's on its path) is not UTF-8 (a local file's bytes that no UTF-8 decodes)
LEFT_OUT_WHY = ("name_collision", "link_outside", "link_to_nothing", "name_not_utf8")


@record
class ScanFindings:
    """What a scan's run found when it listed the scan (PlanRun): the run report's ``scan``.
    ``tiffs``, the TIFFs under the input (those :meth:`ScanSpec.relative` takes), are
    ``done_before`` (their output exists), left out (``left_out``, how many for each of
    :data:`LEFT_OUT_WHY`; each told in a warning when left out) or ``jobs``."""

    input: str
    output: str
    tiffs: int = 0
    done_before: int = 0
    left_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEFT_OUT_WHY, 0))
    jobs: int = 0

    def to_json(self) -> dict[str, Any]:
        return field_values(self) | {"left_out": dict(self.left_out)}


def scan_jobs(scan: ScanSpec, inputs: list[str], outputs: list[str],
              fold: Fold | None = None, left_out: list[str] | None = None,
              found: ScanFindings | None = None,
              not_utf8: list[str] | None = None) -> list[JobSpec]:
    """The jobs of a scan, given what is under its input and its output (full paths/URLs).

    An input whose output exists is done: outputs are published in one step (a rename, a
    completed upload), so an output that exists is complete. Pure; sorted by input.
    ``fold``: the key of a local output where its folder may ignore case or Unicode
    normalization (as for the manifest's checks; S3 keys are never folded). Inputs whose
    outputs are one file under it (S3 keys ``A.tif`` and ``a.tif`` scanned into a folder that
    ignores case) are all left out, written or not (one would replace or skip the other, or
    be taken as done by the other's output), each such group told in ``left_out``; the
    scan's other inputs go on, as a scan's links to outside its folder do
    (pipeline.steps.planning). ``found``: counts the TIFFs, those done before and those
    left out (its ``jobs`` is the caller's to set: links are left out after this). A local
    input whose path under the input is not UTF-8 (the bytes of a name from an old share,
    held as Python holds them, lone surrogates) is left out too, and named in ``not_utf8``
    (:func:`readable_name`): the report, its JSON and every reader of it (jq, node) name
    files in UTF-8, where such a name has no spelling that names the file.
    """
    done = {_key(o, fold) for o in outputs}
    groups: dict[str, list[tuple[str, str, str]]] = {}  # output key -> (input, rel, output)
    if found is None:
        found = ScanFindings(scan.input, scan.output)
    for location in sorted(inputs):
        rel = scan.relative(location)
        if rel is not None and readable_name(rel) != rel:
            found.tiffs += 1
            found.left_out["name_not_utf8"] += 1
            if not_utf8 is not None:
                not_utf8.append(readable_name(location))
        elif rel is not None:
            output = scan.output_for(rel)
            groups.setdefault(_key(output, fold), []).append((location, rel, output))
    found.tiffs += sum(map(len, groups.values()))
    jobs = []  # (in input order: the groups are, by their first input)
    for key, ((first, rel, first_output), *others) in groups.items():
        if not others and key not in done:
            jobs.append(scan.job(first, rel))
        elif not others:
            found.done_before += 1
        else:
            found.left_out["name_collision"] += 1 + len(others)
        for location, _, output in others if left_out is not None else []:
            left_out.append(
                f"{quoted(first)} and {quoted(location)}, whose outputs are one "
                f"file{spelled_apart(output, first_output)}; one would replace the other: "
                "rename one of the inputs, or give scan.output a folder on a file system "
                f"that keeps {_kept(output, first_output)}")
    return jobs


def readable_name(path: str) -> str:
    """``path`` with each byte of it that is not UTF-8 (a file name's, held as a lone
    surrogate by Python's file system encoding) written ``\\xNN``: ``caf\\xe9.tif``; a UTF-8
    path as it is."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _scan_location(value: Any, base_dir: str, local: Local) -> tuple[str | None, str | None]:
    """(the resolved folder or ``s3://bucket/prefix/``, None) or (None, the problem)."""
    expected = "a folder or an s3://bucket/prefix/"
    if not isinstance(value, str) or not value.strip():
        return None, f"expected {expected}, got {show(value)}"
    broken = _broken_url(value, expected)
    if broken:
        return None, broken
    scheme = _SCHEME.match(value)
    if scheme and scheme.group(1) != "s3":
        return None, (f"expected {expected} (the only URLs supported are s3://), "
                      f"got {show(value)}")
    if scheme:
        bucket, _, prefix = value[len("s3://"):].partition("/")
        if not bucket:
            return None, f"expected s3://bucket/prefix/ with a bucket, got {show(value)}"
        prefix = posixpath.normpath(prefix).lstrip("/") if prefix.strip("/") else ""
        return f"s3://{bucket}/{prefix + '/' if prefix else ''}", None
    resolved = resolve_location(value, base_dir, local)
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


def _parse_scan(scan: Any, defaults: Layer, base_dir: str, local: Local,
                problems: list[str], fold: Fold | None = None) -> ScanSpec | None:
    """Check the ``scan`` block (its problems are added to ``problems``)."""
    if not isinstance(scan, dict):
        problems.append(f'scan: expected an object with "input" and "output" (and any of '
                        f'{", ".join(DEFAULT_FIELDS)}), got {show(scan)}')
        return None
    stood_for = unknown_fields(scan, SCAN_FIELDS, "scan", problems, misplaced("job"),
                               required=_PLACES)
    where: dict[str, str | None] = {}
    for name in _PLACES:
        if name not in scan:
            if name not in stood_for:  # (else its misspelling's problem says it)
                problems.append(f"scan.{name}: expected a folder or an s3://bucket/prefix/ "
                                f"(required), got nothing")
            where[name] = None
            continue
        where[name], message = _scan_location(scan[name], base_dir, local)
        if message:
            problems.append(f"scan.{name}: {message}")
    src, dst = where["input"], where["output"]
    keys = None if src is None or dst is None else (_key(src, fold), _key(dst, fold))
    if keys is not None and (_inside(*keys) or _inside(*keys[::-1])):
        problems.append(f"scan.output: expected a location outside scan.input ({quoted(src)}) "
                        f"and not containing it: outputs would be scanned as inputs, got "
                        f"{quoted(dst)}")
    layer = parse_layer(scan, "scan", problems)
    eff = effective([defaults, layer])
    problems.extend(cross_problems(eff, layer))
    if eff["if_exists"].layer is None:  # not set: a scan's default (see ScanSpec)
        eff["if_exists"] = Setting("skip", None)
    if src is None or dst is None or not all(s.ok for s in eff.values()):
        return None
    return ScanSpec(
        input=src, output=dst,
        **job_fields(eff))


# --- the manifest -------------------------------------------------------------------


def parse_manifest(data: Any, source: str, base_dir: str) -> list[JobSpec]:
    """The jobs of a manifest: see :func:`parse_manifest_or_scan`.

    A scan manifest is checked just as fully, but its jobs are only known once its folders
    are listed (at plan time), so it has none here.
    """
    parsed = parse_manifest_or_scan(data, source, base_dir)
    return [] if isinstance(parsed, ScanSpec) else parsed


def _is_job(data: Any) -> bool:
    """Whether ``data`` looks like one job of a manifest (where a manifest, or the list of
    its jobs, belongs): an object with an input or an output."""
    return isinstance(data, dict) and bool(data.keys() & {"input", "output"})


def as_manifest(data: Any) -> Any:
    """A manifest's parsed JSON as an object: a list at the top is the list of its jobs (a
    manifest is a JSON list of jobs; ``{"jobs": [...]}`` the same with room for
    ``defaults``), anything else is returned as it is, to be checked."""
    return {"jobs": data} if isinstance(data, list) else data


def parse_manifest_or_scan(data: Any, source: str, base_dir: str,
                           local: Local = os.path.normpath,
                           fold: Fold | None = None) -> list[JobSpec] | ScanSpec:
    """Validate and resolve; raise ManifestError(source, problems) listing EVERY problem.

    ``source`` names the manifest in messages; ``base_dir`` is its folder (a local path or
    an ``s3://bucket/prefix``), against which relative locations are resolved (local ones
    made absolute by ``local``, compared as ``fold`` keys them). Returns the jobs, or the
    :class:`ScanSpec` of a ``scan`` manifest.
    """
    problems: list[str] = []
    data = as_manifest(data)
    if not isinstance(data, dict):
        message = (f"manifest: expected a list of jobs, or an object with \"jobs\" (and "
                   f"optionally \"defaults\"), got {show(data)}")
        raise ManifestError(source, [message])
    if _is_job(data) and not data.keys() & {"jobs", "scan"}:
        fields = ", ".join(k for k in data if k in JOB_FIELDS)
        raise ManifestError(source, [
            (f"manifest: this is one job ({fields}), not a manifest: put it in a list under "
             '"jobs": {"jobs": [{"input": ...}]}, or in a bare list, also a manifest: '
             '[{"input": ...}]')])
    if {"run_id", "manifest"} <= data.keys() and not data.keys() & {"defaults", "scan"}:
        # (every field of it unknown to a manifest, and its jobs results, not jobs)
        what = (f"run_id: this is the report of run {show(data['run_id'])} (tiffpipe run "
                "writes one beside its manifest), not a manifest: give the manifest it reports "
                f"on ({show(data['manifest'])})")
        raise ManifestError(source, [what])
    # one of jobs and scan is required: a misspelling of either stands for it
    stood_for = unknown_fields(data, TOP_FIELDS, "", problems, misplaced("top"),
                               required=() if data.keys() & {"jobs", "scan"} else ("jobs", "scan"))
    defaults = _parse_defaults(data, problems)

    if "scan" in data:
        scan = _parse_scan(data["scan"], defaults, base_dir, local, problems, fold)
        if "jobs" not in data:
            if problems or scan is None:
                raise ManifestError(source, problems)
            return scan
        problems.append('scan: expected either "jobs" or "scan" at the top level, not both: '
                        'remove one of them')

    jobs = data.get("jobs")
    if stood_for:  # (its misspelling's problem says it)
        jobs = []
    elif not isinstance(jobs, list):  # (an empty list: a run with nothing to do, exit 0)
        came = "nothing" if "jobs" not in data else show(jobs)
        if _is_job(jobs):
            came = 'one job: put it in a list: "jobs": [{"input": ...}]'
        problems.append(f"jobs: expected a list of jobs, got {came}")
        jobs = []

    specs: list[JobSpec] = []
    inputs: list[tuple[int, str]] = []  # (job, resolved input) of every valid input
    outputs: dict[str, Writer] = {}  # resolved output's key -> first job writing it
    for i, job in enumerate(jobs):
        spec = _parse_job(job, i, defaults, base_dir, local, inputs, outputs, problems, fold)
        if spec is not None:
            specs.append(spec)
    problems.extend(_nested_outputs(outputs))
    problems.extend(_overwritten_inputs(inputs, outputs, fold))
    if problems:
        # in the manifest's order: a job's problems from the checks across jobs beside its own
        raise ManifestError(source, sorted(problems, key=_job_order))
    return specs


_JOB_PATH = re.compile(r"jobs\[(\d+)\]")


def _job_order(problem: str) -> int:
    """The job a problem is about (its path's ``jobs[N]``), or -1: problems of the manifest's
    top level (``defaults``, ``scan``, ``jobs``) first."""
    match = _JOB_PATH.match(problem)
    return int(match.group(1)) if match else -1


def _parse_defaults(data: dict[str, Any], problems: list[str]) -> Layer:
    """The manifest's ``defaults`` layer (empty without one; its problems added)."""
    if "defaults" not in data:
        return Layer("defaults")
    if not isinstance(data["defaults"], dict):
        problems.append(f"defaults: expected an object with any of "
                        f"{', '.join(DEFAULT_FIELDS)}, got {show(data['defaults'])}")
        return Layer("defaults")
    hint = {**misplaced("defaults"),
            **{k: "; input and output are set in each job" for k in ("input", "output")}}
    unknown_fields(data["defaults"], DEFAULT_FIELDS, "defaults", problems, hint)
    defaults = parse_layer(data["defaults"], "defaults", problems)
    problems.extend(cross_problems(effective([defaults]), defaults))
    return defaults


#: the first job writing an output, and the output as it resolved
Writer = tuple[int, str]


def _parse_job(job: Any, i: int, defaults: Layer, base_dir: str, local: Local,
               inputs: list[tuple[int, str]], outputs: dict[str, Writer],
               problems: list[str], fold: Fold | None = None) -> JobSpec | None:
    """Job ``i`` of the manifest, or None if it has problems (added to ``problems``). Its
    resolved input is added to ``inputs``; its output to ``outputs``, by its key (a second
    job writing it is a problem)."""
    path = f"jobs[{i}]"
    if not isinstance(job, dict):
        problems.append(f"{path}: expected an object with \"input\" and \"output\", "
                        f"got {show(job)}")
        return None
    stood_for = unknown_fields(job, JOB_FIELDS, path, problems, misplaced("job"),
                               required=_PLACES)
    where: dict[str, str | None] = {}
    for name in _PLACES:
        if name not in job:
            if name not in stood_for:  # (else its misspelling's problem says it)
                problems.append(f"{path}.{name}: expected {_LOCATION} (required), got nothing")
            where[name] = None
            continue
        message = _location_problem(job[name])
        resolved = None if message else resolve_location(job[name], base_dir, local)
        if resolved is not None and _above_bucket(resolved):
            message = (f"{show(job[name])} climbs above its bucket's top ({resolved}): a "
                       "relative path in an S3 manifest stays in the manifest's bucket")
        if message:
            problems.append(f"{path}.{name}: {message}")
        where[name] = None if message else resolved
    if where["output"] is not None:
        if not job["output"].lower().endswith((".tif", ".tiff")):
            problems.append(f"{path}.output: expected a path ending in .tif or .tiff, "
                            f"got {show(job['output'])}")
        too_long = _name_too_long(where["output"])
        if too_long:
            problems.append(f"{path}.output: {too_long}")
        key = _key(where["output"], fold)
        if key in outputs:
            first, written = outputs[key]
            case = spelled_apart(where["output"], written)
            problems.append(f"{path}.output: same output as jobs[{first}] "
                            f"({quoted(written)}){case}; one would replace the other: "
                            "give one of them another name")
        else:
            outputs[key] = (i, where["output"])
    if where["input"] is not None:
        inputs.append((i, where["input"]))

    layer = parse_layer(job, path, problems)
    eff = effective([defaults, layer])
    problems.extend(cross_problems(eff, layer))
    if where["input"] is None or where["output"] is None or not all(
            setting.ok for setting in eff.values()):
        return None
    return JobSpec(input=where["input"], output=where["output"], **job_fields(eff))


def _nested_outputs(outputs: dict[str, Writer]) -> list[str]:
    """A problem for each local output inside a folder that is another job's output
    (``out/a.tif/b.tif`` beside ``out/a.tif``): the one file cannot be both, and which job
    failed depended on which got there first, after its work. S3 keys may nest."""
    nested = []
    for key, (i, location) in outputs.items():
        parent = None if is_s3(key) else enclosing(key, outputs)
        if parent is not None:
            k, folder = outputs[parent]
            inside = leading(location, folder)
            problem = (f"jobs[{i}].output: {quoted(location)} is inside the output of "
                       f"jobs[{k}] ({quoted(folder)}){spelled_apart(inside, folder)}, a "
                       "file, not a folder: give one of them another path")
            nested.append((i, problem))
    return [problem for _, problem in sorted(nested)]


def leading(path: str, folder: str) -> str:
    """The folder above local ``path`` (or itself) as deep as ``folder``: its spelling of
    that folder, where ``path`` is inside ``folder`` once both are folded."""
    return os.sep.join(path.split(os.sep)[:folder.count(os.sep) + 1])


def enclosing(path: str, paths: Mapping[str, Any]) -> str | None:
    """The nearest folder above ``path`` that is one of ``paths`` (another job's output), or
    None: up to the root, whose dirname is itself."""
    folder, parent = path, os.path.dirname(path)
    while parent != folder:
        if parent in paths:
            return parent
        folder, parent = parent, os.path.dirname(parent)
    return None


def _overwritten_inputs(inputs: list[tuple[int, str]], outputs: dict[str, Writer],
                        fold: Fold | None = None) -> list[str]:
    """A problem for each output that is a job's input (its own or another's)."""
    # each input's first job, by location: one lookup an output (a pairwise check was
    # O(n^2): 1.3 million comparisons, ~1 s, for a manifest of 1,144 jobs)
    # (and each job's own: a job that overwrites its own input is told so, not that it
    # overwrites the input of an earlier job that reads the same file)
    first_reader: dict[str, tuple[int, str]] = {}
    own: dict[int, tuple[str, str]] = {}
    for j, location in inputs:
        first_reader.setdefault(key := _key(location, fold), (j, location))
        own[j] = (key, location)
    problems = []
    for key, (i, output) in outputs.items():
        if key in first_reader:
            j, location = first_reader[key]
            if i in own and own[i][0] == key:
                j, location = i, own[i][1]
            whose = "its own input" if i == j else f"the input of jobs[{j}]"
            case = spelled_apart(output, location)
            problems.append(f"jobs[{i}].output: same location as {whose} "
                            f"({quoted(location)}){case}; the output would overwrite it: "
                            "give the output another name (or another folder)")
    return problems


def anchored(data: Any, base_dir: str) -> Any:
    """A manifest document (a dict, as its JSON would be) with its jobs' and its scan's
    relative local ``input`` and ``output`` joined to ``base_dir`` (as written, the parse
    resolves them): it then means the same written anywhere (``pipeline.run`` writes a
    dict to a temporary file). Anything else is left as it is, for the parse to judge."""
    def joined(value: Any) -> Any:
        if (not isinstance(value, str) or not value or os.path.isabs(value)
                or _SCHEME.match(value) or _broken_url(value, "")):
            return value
        return os.path.join(base_dir, value)

    def resolved(entry: Any) -> Any:
        if not isinstance(entry, dict):
            return entry
        return {k: joined(v) if k in ("input", "output") else v for k, v in entry.items()}

    data = as_manifest(data)
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(data.get("jobs"), list):
        out["jobs"] = [resolved(job) for job in data["jobs"]]
    if "scan" in data:
        out["scan"] = resolved(data["scan"])
    return out


def load_manifest_text(text: str, source: str, base_dir: str) -> list[JobSpec]:
    """json.loads with a clear ManifestError on invalid JSON (line/column), then parse_manifest."""
    return parse_manifest(_decode(text, source), source, base_dir)


def load_manifest(text: str, source: str, base_dir: str, local: Local = os.path.normpath,
                  fold: Fold | None = None) -> list[JobSpec] | ScanSpec:
    """As :func:`load_manifest_text`, but a scan manifest gives its :class:`ScanSpec`."""
    return parse_manifest_or_scan(_decode(text, source), source, base_dir, local, fold)


def _decode(text: str, source: str) -> Any:
    if not text.strip():
        empty = 'manifest: expected a JSON list of jobs or an object with "jobs", got an empty file'
        raise ManifestError(source, [empty])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(source, [json_problem(text, exc)]) from None
    return data


def json_problem(text: str, exc: json.JSONDecodeError, advice: str = "") -> str:
    """What is wrong with ``text``, which is not JSON (``exc``: json's error), as a
    manifest's problem says it: the line and column, json's words, what is likely wrong
    (:func:`_json_hint`), ``advice`` (``"; give ..."``), then the line and a caret under
    the column (:func:`_excerpt`). Also for ``inspect --ops`` and a state machine
    definition (``run --definition``)."""
    return (f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
            f"{_json_hint(text, exc)}{advice}\n{_excerpt(text, exc)}")


#: characters of a long line shown either side of where its JSON is invalid
EXCERPT_SIDE = 40


def _excerpt(text: str, exc: json.JSONDecodeError) -> str:
    """The line where the JSON is invalid, and a caret under the column (two lines indented
    to sit under the problem's): a long line only around the column, cut with "..."."""
    line = text.split("\n")[exc.lineno - 1].rstrip("\r").replace("\t", " ")
    col = exc.colno - 1
    start, end = max(0, col - EXCERPT_SIDE), min(len(line), col + EXCERPT_SIDE)
    shown = ("..." if start else "") + line[start:end] + ("..." if end < len(line) else "")
    caret = col - start + (3 if start else 0)
    return f"    {shown}\n    {' ' * caret}^"


def _json_hint(text: str, exc: json.JSONDecodeError) -> str:
    """What is likely wrong at an invalid JSON's position, for the common slips (a trailing
    comma, single quotes, a missing comma, a comment, a Windows path's backslashes, the
    text ending early); "" for others."""
    pos, here = exc.pos, text[exc.pos:exc.pos + 1]
    before = text[:pos].rstrip()
    comma = pos if here == "," else len(before) - 1 if before.endswith(",") else -1
    closer = text[comma + 1:].lstrip()[:1] if comma >= 0 else ""
    if closer in ("]", "}"):
        line = text.count("\n", 0, comma) + 1
        column = comma - text.rfind("\n", 0, comma)
        return (f"; a trailing comma (line {line}, column {column}) before {closer}: remove it, "
                "JSON takes no comma after the last item")
    if here == "'":
        return "; JSON strings take double quotes (\"jobs\"), not single ones"
    if text[pos:pos + 2] in ("//", "/*") or here == "#":
        return "; JSON has no comments: remove it"
    if exc.msg.startswith("Invalid \\escape"):
        return ("; a backslash in a JSON string begins an escape: write \\\\ for one "
                "(C:\\\\data\\\\a.tif), or / in paths")
    if not text[pos:].strip():
        return "; the text ends before every [ and { is closed: add the missing ] or }"
    if exc.msg == "Expecting ',' delimiter":
        return "; a comma missing before this? items of a list or an object are separated by commas"
    return ""
