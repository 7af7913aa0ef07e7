"""The calibration file ``bench/compare.py`` writes, and the per-megapixel costs of a job's
steps read from it (:func:`job_costs`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.estimate.assumptions import EstimateError

CALIBRATION_FORMAT = "tiffpipe-calibration/1"
#: what ``--calibration`` defaults to: bench/calibration.json, shipped in the package (in a
#: checkout, pipeline/estimate/calibration.json is a symlink to it; a wheel holds a copy)
DEFAULT_CALIBRATION: Traversable = resources.files("pipeline.estimate").joinpath("calibration.json")
#: the sections every calibration has; ``process_unit`` (fused jobs) is checked when needed
REQUIRED = ("split", "process", "merge", "ops", "encode", "work")
RERUN = "rerun bench/compare.py (it writes bench/calibration.json)"
#: the kind under which a codec's 1-bit measurements are kept (``output_options.bilevel``)
BILEVEL = "bilevel"
#: the codec a job's codec is costed as when the calibration lacks it (then any measured)
FALLBACK_CODEC = "deflate"


def load_calibration(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The calibration file (default: :data:`DEFAULT_CALIBRATION`, bench/calibration.json as
    shipped), checked; its path is kept under ``file``."""
    path: Path | Traversable = Path(path) if path else DEFAULT_CALIBRATION
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if path is DEFAULT_CALIBRATION:
            raise EstimateError(f"the calibration shipped with tiffpipe is missing ({path}): "
                                "reinstall tiffpipe, or pass --calibration FILE (bench/"
                                "compare.py writes one)") from None
        raise EstimateError(f"no calibration file at {path}: check the path, leave out "
                            "--calibration for the one shipped with tiffpipe, or make one with "
                            "bench/compare.py in a checkout (it writes bench/calibration.json)"
                            ) from None
    except (OSError, ValueError) as exc:
        raise EstimateError(f"cannot read the calibration file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise EstimateError(f"{path} is not a {CALIBRATION_FORMAT} calibration file")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise EstimateError(f"{path}: the calibration lacks {', '.join(missing)}")
    data["file"] = str(path)
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
    else interpolated on its first numeric parameter between the two measurements around
    it, else the nearest one measured. Never a line past the measured range (an op's cost
    can change its trend there: OpenCV's median_blur switches algorithm above ksize 5): a
    parameter outside it is costed as the nearest end, noted "extrapolated"."""
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
            y = float(np.interp(x, xs, ys))  # the nearest end outside the measured range
            if xs[0] <= x <= xs[-1]:
                notes.add(f"op {name}: {key}={params[key]} interpolated from {key} in "
                          f"{list(xs)}")
            else:
                end = xs[0] if x < xs[0] else xs[-1]
                notes.add(f"op {name}: {key}={params[key]} extrapolated: outside the "
                          f"calibrated {key} {list(xs)}, costed as {key}={end:g} (the nearest "
                          "measured; the cost may differ either way)")
            return max(y, 0.0) * scale
    return _value(entries[0], "cpu_s_per_mpx", scale)


def _chain_costs(cal: dict[str, Any], kind: str, ops: list[dict[str, Any]], compression: str,
                 out_kind: str | None, notes: set[str]) -> tuple[float, float] | None:
    """(the chain's ops per haloed Mpx, the output codec per output Mpx), from the per-op and
    per-codec timings; None if the codec was not timed."""
    dtype, channels = kind.rsplit("x", 1)
    odtype, ochannels = (out_kind or kind).rsplit("x", 1)
    if compression not in cal["encode"]:
        return None
    enc, es = _by_kind(_eight_bit(cal["encode"][compression]), odtype, int(ochannels),
                       notes, f"{compression} encoding")
    ops_cpu = sum(op_cost(cal["ops"], op, dtype, int(channels), notes) for op in ops)
    return ops_cpu, _value(enc, "cpu_s_per_mpx", es)


def predicted_process_cpu(cal: dict[str, Any], kind: str, ops: list[dict[str, Any]],
                          compression: str, haloed_mpx: float, output_mpx: float,
                          out_kind: str | None = None,
                          notes: set[str] | None = None) -> float | None:
    """CPU seconds of process from the per-op and per-codec costs alone (no factor): work
    tile decode and ops per haloed Mpx, output encode per output Mpx."""
    notes = set() if notes is None else notes
    chain = _chain_costs(cal, kind, ops, compression, out_kind, notes)
    if chain is None:
        return None
    dtype, channels = kind.rsplit("x", 1)
    work, ws = _by_kind(cal["work"], dtype, int(channels), notes, "work tiles")
    return (haloed_mpx * (_value(work, "decode_cpu_s_per_mpx", ws) + chain[0])
            + output_mpx * chain[1])


def predicted_unit_cpu(cal: dict[str, Any], kind: str, ops: list[dict[str, Any]],
                       compression: str, haloed_mpx: float, output_mpx: float,
                       read_cpu_s_per_mpx: float, out_kind: str | None = None,
                       notes: set[str] | None = None) -> float | None:
    """CPU seconds of a fused unit (``process_unit``) without its factor: the input read
    (``read_cpu_s_per_mpx``) and ops per haloed Mpx, output encode per output Mpx."""
    chain = _chain_costs(cal, kind, ops, compression, out_kind,
                         set() if notes is None else notes)
    if chain is None:
        return None
    return haloed_mpx * (read_cpu_s_per_mpx + chain[0]) + output_mpx * chain[1]


def encode_entry(cal: dict[str, Any], compression: str, dtype: str, channels: int,
                 bilevel: bool, notes: set[str], where: str) -> tuple[Any, float]:
    """The calibration's encode measurement of ``compression`` for an output of ``dtype`` x
    ``channels``, or of 1-bit pages (``bilevel``: the codec's :data:`BILEVEL` entry), and
    its scale (:func:`_by_kind`). A codec the calibration lacks does not refuse the job (nor
    the manifest): it is costed as the nearest measurement, noted on the job (``where``):
    a 1-bit page as another codec's 1-bit measurement (:data:`FALLBACK_CODEC` first), else
    as its 8-bit output (one band of uint8: bytes and encode overestimated); any page as
    :data:`FALLBACK_CODEC`, else the first codec measured."""
    table = {c: kinds for c, kinds in cal["encode"].items() if kinds}
    order = sorted(table, key=lambda c: (c != compression, c != FALLBACK_CODEC, c))
    if not order:
        raise EstimateError(f"{cal.get('file') or 'the calibration'} has no encoding "
                            f"measurements: {RERUN}")
    if bilevel:
        found = next((c for c in order if BILEVEL in table[c]), None)
        if found == compression:
            return table[found][BILEVEL], 1.0
        codec = compression if compression in table else order[0]
        used = (f"{found}'s 1-bit output" if found else
                f"its 8-bit {codec} output (one band of uint8: bytes and encoding "
                "overestimated)")
        notes.add(f"{where}: the calibration has no {compression} encoding measurements of "
                  f"1-bit pages: its output's encoding and bytes are costed as {used}; "
                  f"{RERUN}, or add them with bench/microbench.py --bilevel-into FILE")
        if found:
            return table[found][BILEVEL], 1.0
        return _by_kind(_eight_bit(table[codec]), "uint8", 1, notes, f"{codec} encoding")
    codec = order[0]
    if codec != compression:
        notes.add(f"{where}: the calibration has no {compression} encoding measurements: its "
                  f"output's encoding and bytes are costed as {codec}'s; {RERUN} for its own")
    return _by_kind(_eight_bit(table[codec]), dtype, channels, notes, f"{codec} encoding")


def mask_costs(cal: dict[str, Any], notes: set[str], where: str) -> tuple[float, float]:
    """(CPU seconds, bytes) per megapixel of a carried internal mask (a 1-bit deflate page,
    ``pipeline.steps.masks``), from the calibration's deflate encoding of 1-bit pages
    (:data:`BILEVEL`, measured on a binarised scanned letter: a mask, mostly runs of 1s,
    deflates smaller, so its bytes are over): one encode per megapixel written, and each
    read of it decoded at the same cost (inflate is faster than deflate: over too), as the
    level units' decode of base tiles is costed."""
    entry, scale = encode_entry(cal, "deflate", "uint8", 1, True, notes, f"{where}'s mask")
    return _value(entry, "cpu_s_per_mpx", scale), _value(entry, "bytes_per_mpx", scale)


def _eight_bit(kinds: dict[str, Any]) -> dict[str, Any]:
    """A codec's measurements by sample type and bands, its 1-bit one left out."""
    return {k: v for k, v in kinds.items() if k != BILEVEL}


@dataclass(frozen=True)
class JobCosts:
    """A job's per-megapixel costs, from the calibration. CPU seconds on one core of the
    benchmark machine; bytes as stored."""

    split_cpu: float  # split, per haloed Mpx
    split_threads: float  # threads split keeps busy (measured)
    work_bpm: float  # work tile bytes per haloed Mpx
    out_bpm: float  # output bytes per output Mpx
    factor: float  # process: measured / predicted
    per_haloed: float  # process: work tile decode + ops, per haloed Mpx
    per_out: float  # process and process_unit: output encode, per output Mpx
    ops: float  # the chain's ops, per haloed Mpx
    unit_read: float = 0.0  # process_unit: input read, per haloed Mpx (fused jobs only)
    unit_factor: float = 1.0  # process_unit: measured / predicted


def job_costs(cal: dict[str, Any], dtype: str, channels: int, out_channels: int,
              compression: str, ops: list[dict[str, Any]], fused: bool, notes: set[str],
              where: str, out_dtype: str | None = None, bilevel: bool = False) -> JobCosts:
    """The per-megapixel costs of a job (``where`` names it in errors and notes); the output
    is encoded as ``out_dtype`` (default: the input's type) x ``out_channels``, or as 1-bit
    pages (``bilevel``: :func:`encode_entry`). A fused job takes its unit read and factor
    from the calibration's ``process_unit`` section; without one (a file older than fused
    jobs), as bench/compare.py derives the read (split's CPU less the work tile encode) and
    the factor of unfused process runs, noted on the job (``where``)."""
    split_cal, ss = _by_kind(cal["split"], dtype, channels, notes, "split")
    work_cal, ws = _by_kind(cal["work"], dtype, channels, notes, "work tiles")
    enc_cal, es = encode_entry(cal, compression, out_dtype or dtype, out_channels, bilevel,
                               notes, where)
    factor_table = cal["process"].get("factor", {})
    factor = float(_by_kind(factor_table, dtype, channels, notes, "process factor")[0]) \
        if factor_table else 1.0
    ops_cpu = sum(op_cost(cal["ops"], op, dtype, channels, notes) for op in ops)
    costs = JobCosts(
        split_cpu=_value(split_cal, "cpu_s_per_mpx", ss),
        split_threads=max(1.0, float(split_cal.get("threads", 1.0))),
        work_bpm=_value(work_cal, "bytes_per_mpx", ws),
        out_bpm=_value(enc_cal, "bytes_per_mpx", es),
        factor=factor,
        per_haloed=_value(work_cal, "decode_cpu_s_per_mpx", ws) + ops_cpu,
        per_out=_value(enc_cal, "cpu_s_per_mpx", es),
        ops=ops_cpu)
    if not fused:
        return costs
    if not cal.get("process_unit"):
        notes.add(f"{where}: {cal.get('file') or 'the calibration'} has no process_unit "
                  "measurements (it predates fused jobs): its fused units are costed with the "
                  "input read as split's CPU less the work tile encode and the factor of "
                  f"process runs that are not fused; {RERUN} for measured ones, or set "
                  "\"fuse\": false on the job to cost it unfused")
        encode = float(work_cal.get("encode_cpu_s_per_mpx", 0.0)) * ws  # (older: none)
        return replace(costs, unit_read=max(costs.split_cpu - encode, 0.0), unit_factor=factor)
    unit, us = _by_kind(cal["process_unit"], dtype, channels, notes, "process_unit")
    return replace(costs, unit_read=_value(unit, "read_cpu_s_per_mpx", us),
                   unit_factor=float(unit.get("factor", 1.0)))
