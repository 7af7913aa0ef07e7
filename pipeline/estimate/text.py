"""The estimate as text: what ``tiffpipe estimate`` prints without ``--json``."""

from __future__ import annotations

import math
from typing import Any

from pipeline.core.manifest import quoted
from pipeline.core.tiff_layout import UPLOAD_PART
from pipeline.estimate.model import FUNCTION_OF
from pipeline.ui import megapixels_text, number_text, scan_line


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
    if "scan" in result:  # a scan's: what it found now, the line under its run's summary
        p(scan_line(result) or "")
    mpx = result["megapixels"]
    # (a batch under a gigapixel in megapixels: it was "0.0 gigapixels")
    pixels = (f"{mpx / 1000:,.1f} gigapixels" if mpx >= 1000 else
              f"{megapixels_text(mpx)} megapixels")
    p(f"estimate for {len(result['jobs'])} job(s), {pixels}, on AWS "
      f"(concurrency {result['concurrency']})")
    if result.get("refused"):  # (each named on stderr, with its error)
        p(f"  not costed: {len(result['refused'])} job(s) PlanJob would refuse ("
          + ", ".join(f"jobs[{r['job']}]" for r in result["refused"][:10])
          + (", ..." if len(result["refused"]) > 10 else "") + "), which a run would fail")
    for j in result["jobs"][:10]:
        units = "one unit" if j["units"] == 1 else f"{j['units']} units"
        work = (f"fused, {units}: split, process and merge in one invocation (ProcessJob)"
                if j.get("single") else
                f"fused: {j['units']} units (split and process in one invocation)"
                if j["fused"] else f"{j['units']} split units, {j['batches']} batches"
                + (f", {j['stats_rounds']} stats round(s)" if j["stats_rounds"] else ""))
        p(f"  jobs[{j['job']}] {quoted(j['input'])}: {j['pages']} page(s) {j['kind']} "
          f"{megapixels_text(j['megapixels'])} Mpx -> {j['compression']}: {j['tiles']} tiles, "
          f"{work}")
        if j.get("message"):  # pages left out
            p(f"    {j['message']}")
        m = j["merge"]
        if j.get("held"):  # nothing in S3 to compose from: the output goes up from memory
            uploads = max(1, math.ceil(j["output_bytes"] / UPLOAD_PART))
            p(f"    ProcessJob uploads {_size(j['output_bytes'])} from memory (its segment "
              f"held: no segment in S3, nothing composed there): "
              + ("one PutObject" if uploads == 1 else f"{uploads:,} uploaded parts"))
        else:
            p(f"    merge composes {_size(j['output_bytes'])} in S3 from "
              f"{m['segments']:,} segment(s): {m['parts']:,} parts ({m['copies']:,} "
              f"UploadPartCopy, {m['uploads']:,} uploaded), "
              f"{_size(m['read_through_bytes'])} read through")
        if j.get("memory"):  # the largest invocation on each function, predicted
            p("    peak memory: " + "; ".join(
                f"{f} {x['peak_mb']:,.0f} of {x['memory_mb']:,.0f} MB ({x['step']}, page "
                f"{x['page']})" for f, x in j["memory"].items()))
    if len(result["jobs"]) > 10:
        p(f"  ... and {len(result['jobs']) - 10} more job(s)")
    p("")
    p(f"{'step':13s} {'function':8s} {'invocations':>11s} {'Lambda s':>11s} {'GB-s':>12s} "
      f"{'S3 GET':>10s} {'S3 PUT':>10s} {'MB read':>11s} {'MB written':>11s}")
    for name, s in result["steps"].items():
        count = f"({s['environments']:,.0f})" if name.startswith("cold_") else \
            f"{s['invocations']:,.0f}"
        p(f"{name:13s} {FUNCTION_OF[name]:8s} {count:>11s} "
          + _figures(s["seconds"], s["gb_s"], s["get"], s["put"] + s["list"], s["bytes_in"],
                     s["bytes_out"]))
    s3 = result["s3"]
    p(f"{'total':13s} {'':8s} {result['invocations']:11,.0f} "
      + _figures(sum(s["seconds"] for s in result["steps"].values()), result["gb_s"],
                 s3["get"], s3["put"] + s3["list"], s3["bytes_read"], s3["bytes_written"]))
    p("(cold_*: one cold start per concurrent environment, in parentheses; billed, not "
      "invocations)")
    st = result["state_transitions"]
    p(f"state transitions: {st['total']:,} (Step Functions Standard)")
    p(f"work files: {s3['work_objects']:,} objects, {_size(s3['work_bytes'])}, kept "
      f"{result['assumptions']['work_retention_days']['value']:g} days "
      f"({number_text(s3['storage_gb_month'], 2, below=1, trim=True)} GB-months)")
    p("")
    p("cost (USD):")
    for k, v in result["cost_usd"].items():
        if k != "total":
            p(f"  {k:18s} {_money(v):>12s}")
    per = result["usd_per_gigapixel"]
    p(f"  {'total':18s} {_money(result['cost_usd']['total']):>12s}   "
      + (f"({_money(per)} per gigapixel)" if per is not None else "(no pixels)"))
    p(f"expected wall time at concurrency {result['concurrency']}: "
      f"{_duration(result['wall_s'])}")
    for w in result["warnings"]:
        p(f"WARNING: {w}")
    p("")
    p(_largest(result))
    p("")
    cal = result["calibration"]
    p("per-megapixel costs from the calibration" + (f" {cal['file']}" if cal.get("file") else "")
      + f" measured {cal.get('measured_at')} ({cal.get('mode')} sizes) on "
        f"{cal.get('machine')} ({cal.get('cores')} cores)"
      + (f": {cal['note']}" if cal.get("note") else ""))
    for n in result["notes"]:
        p(f"  note: {n}")
    p("assumptions (override any with --price KEY=VALUE):")
    for k, v in result["assumptions"].items():
        mark = " (overridden)" if v["overridden"] else ""
        p(f"  {k:22s} {v['value']:<14g} {v['unit']:15s} {v['help']}{mark}")
    return "\n".join(lines)


_BOUND = {"s3_object": "S3's largest object (5 TiB)",
          "parts": "the 10,000 parts of one multipart upload",
          "units": "10,000 units per job (a Map's items)"}


def _figures(seconds: float, gb_s: float, get: float, put: float, read: float,
             written: float) -> str:
    """The step table's columns from Lambda s on: seconds with a decimal, GB-s and MB whole,
    each with the two significant digits that show it when those would not (a small job's
    0.43 MB read was "0", its 0.04 Lambda s "0.0"), and the S3 GET and PUT requests whole,
    aligned under the header."""
    return (f"{number_text(seconds, 1):>11s} {number_text(gb_s, 0):>12s} {get:10,.0f} "
            f"{put:10,.0f} {number_text(read / 1e6, 0):>11s} "
            f"{number_text(written / 1e6, 0):>11s}")


def _size(n: float) -> str:
    """Bytes in the largest decimal unit that keeps them at least 1 (never "0.0 TB")."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def _largest(result: dict[str, Any]) -> str:
    """What bounds the largest job on AWS, for the first job's kind of output."""
    if not result["jobs"]:
        return "largest job on AWS: no job to size"
    j = result["jobs"][0]
    big = j["largest_job"]
    b = big["bounds"]
    return (f"largest job on AWS like jobs[{j['job']}] ({j['kind']} -> {j['compression']}): "
            f"about {big['gigapixels']:,.0f} gigapixels ({_size(big['output_bytes'])} "
            f"of output), bound by {_BOUND[big['bound']]}; S3's object allows "
            f"{b['s3_object']:,.0f} Gpx, 10,000 parts of {big['bytes_per_part'] / 2**20:,.0f} "
            f"MiB allow {b['parts']:,.0f} Gpx, 10,000 units allow {b['units']:,.0f} Gpx "
            "(merge no longer uses /tmp: nothing else grows with the output)")
