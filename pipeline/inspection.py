"""``tiffpipe inspect``: how tiffpipe sees TIFF files, from their page headers alone (IFDs,
never pixels): per page what the reader returns (size, bands, sample type, photometric and
the conversion it applies), how it is stored (compression, tiles or strips), whether it is
a mask or an overview a job without ``pages`` leaves out, the metadata an output keeps, why
a page is refused; with an op chain, whether it runs on each page and what the output page
is. The reader's own code decides each of these (``pipeline/adapters/tiff_read.py``:
``classified``, ``page_info``; ``pipeline/core/plan.py``: ``make_plan``), as PlanJob's does.

The text groups identical pages (a scanned archive of 3,000 pages is a line); ``--json``
gives every page."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline.core.chain import job_reads
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.core.plan import Problem, grouped_by_page, loop_note

if TYPE_CHECKING:
    from pipeline.adapters.tiff_read import Reads

#: the groups of pages the text shows for a file (then how many more; --json: all)
GROUPS_SHOWN = 40
#: bands named on a page's line (--json: every one)
BANDS_SHOWN = 20
#: what the reader's photometric is called
_KINDS = {"minisblack": "gray", "rgb": "RGB", "palette": "palette", "separated": "CMYK"}
#: ExtraSamples values
_EXTRA = {0: "extra", 1: "alpha (associated)", 2: "alpha"}
#: the GeoTIFF tags among the spatial ones carried (pipeline/adapters/metadata.py)
_GEO = {33550, 33922, 34264, 34735, 34736, 34737}


def ops_spec(ops_json: str | None, options_json: str | None = None) -> JobSpec:
    """The job an op chain (``--ops``, JSON; none: the empty chain) and output options
    (``--output-options``, a manifest's ``output_options``; none: the defaults) would be,
    with every default a manifest gives it; ManifestError (its source the options at
    fault) listing its problems (at their paths under ``ops`` and ``output_options``)."""
    from pipeline.core.manifest import json_problem, parse_manifest
    from pipeline.errors import ManifestError

    job: dict[str, Any] = {"input": "in.tif", "output": "out.tif", "ops": []}
    for option, field, text, example in (
            ("--ops", "ops", ops_json,
             "a list of ops, e.g. '[{\"op\": \"gaussian_blur\", \"sigma\": 2}]'"),
            ("--output-options", "output_options", options_json,
             "a manifest's output_options, e.g. '{\"compression\": \"jpeg\"}'")):
        if text is None:
            continue
        try:
            job[field] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(option, [json_problem(text, exc, f"; give {example}")]
                                ) from None
    try:
        [spec] = parse_manifest({"jobs": [job]}, "--ops", ".")
    except ManifestError as exc:
        problems = [p.removeprefix("jobs[0].") for p in exc.problems]
        options = [o for o, f in (("--ops", "ops"), ("--output-options", "output_options"))
                   if any(p.startswith(f) for p in problems)]
        raise ManifestError(" and ".join(options) or "--ops", problems) from None
    return spec


def inspect_file(url: str, spec: JobSpec | None = None) -> dict[str, Any]:
    """What tiffpipe sees of the file at ``url`` (local or s3://): a dict of the file and each
    of its pages (JSON-safe); ``spec``: the job of an op chain (:func:`ops_spec`) checked on
    each page. An error of the file (not there, not a TIFF, a damaged chain of pages) is its
    ``error``, with the pages read before it."""
    from pipeline.adapters.tiff_read import (
        chain_loop,
        check_chain_end,
        classified_masks,
        keeps_palette,
        open_tiff,
        page_count,
    )
    from pipeline.errors import CorruptTiffError, TiffpipeError

    doc: dict[str, Any] = {"file": url}
    pages: list[dict[str, Any]] = []
    infos: list[Any] = []
    # a palette page as a job of the chain and output given reads it; without them, a copy's
    keep = keeps_palette(spec.ops if spec else [],
                         (spec.output_options if spec else OutputOptions()).compression)
    # a page cut short is refused where the job of the chain reads it (all of it without one)
    reads = job_reads(spec.ops) if spec else None
    try:
        with open_tiff(url) as tf:
            count = page_count(tf, url)  # (first: a file without a readable page says so)
            first = tf.pages.first
            doc.update(page_count=count, bigtiff=bool(tf.is_bigtiff),
                       byteorder="little" if tf.byteorder == "<" else "big",
                       formats=[name for name, flag in (
                           ("OME-TIFF", first.is_ome), ("Aperio SVS", first.is_svs),
                           ("GeoTIFF", first.is_geotiff), ("ImageJ", first.is_imagej))
                           if flag])
            try:
                check_chain_end(tf, url, count)
            except CorruptTiffError as exc:  # a job without pages fails on it
                doc["chain_error"] = str(exc)
            if (loop := chain_loop(tf, url)) is not None:  # (a job's note says it too)
                doc["chain_note"] = loop_note(*loop)
            for i, page, why, mask in classified_masks(tf, url, count):
                entry, info = _page(page, url, i, why, keep, reads)
                if mask:
                    entry["default_job"] = "carried"  # (pipeline.steps.masks)
                pages.append(entry)
                if info is not None:
                    infos.append(info)
    except TiffpipeError as exc:
        doc["error"] = {"type": type(exc).__name__, "message": str(exc)}
    doc["pages"] = pages
    if spec is not None and infos:
        _check_ops(doc, replace(spec, input=url), infos)  # (its XMP read from this file)
    doc["ok"] = _ok(doc, spec is not None)
    return doc


def _page(page: Any, url: str, index: int, why: Any, keep_palette: bool,
          reads: Reads | None = None) -> tuple[dict[str, Any], Any]:
    """One page's entry, and its PageInfo (None: a mask, or refused); ``reads``: the region
    of the page a job reads (:func:`pipeline.core.chain.job_reads`; None: all of it)."""
    from tifffile import COMPRESSION, PHOTOMETRIC, PLANARCONFIG, SAMPLEFORMAT

    from pipeline.adapters.tiff_read import page_info, pixel_kind
    from pipeline.errors import TiffpipeError

    def name(value: Any, enum: Any) -> str:
        try:
            return str(enum(value).name)
        except ValueError:
            return str(value)

    tiled = bool(page.is_tiled)
    entry: dict[str, Any] = {
        "index": index, "width": int(page.imagewidth), "height": int(page.imagelength),
        "file": {"photometric": name(page.photometric, PHOTOMETRIC),
                 "samples": int(page.samplesperpixel), "bits": page.bitspersample,
                 "sample_format": name(page.sampleformat, SAMPLEFORMAT),
                 "planar": "separate" if page.planarconfig == PLANARCONFIG.SEPARATE
                 and int(page.samplesperpixel) > 1 else "contiguous",
                 "subfiletype": int(page.subfiletype)},
        "compression": name(page.compression, COMPRESSION).lower(),
        "tiles": [int(page.tilewidth), int(page.tilelength)] if tiled else None,
        "rows_per_strip": None if tiled else int(min(page.rowsperstrip or page.imagelength,
                                                     page.imagelength)),
        "role": "image", "of": None, "default_job": "processed",
    }
    levels = _levels(page)
    if levels:
        entry["levels"] = levels
    if why:
        entry.update(role="mask" if why[1] == "mask" else "overview", of=why[2],
                     default_job="left out")
        if why[1] == "mask" and why[3]:  # (NewSubfileType 5: an overview's mask)
            entry["of_overview"] = True
        if why[1] == "mask":  # never processed: a job that lists it fails
            return entry, None
    try:
        info = page_info(page, url, index, keep_palette, reads)
    except TiffpipeError as exc:
        text = str(exc).removeprefix(f"{url}: ").removeprefix(f"page {index}: ")
        entry["refused"] = {"type": type(exc).__name__, "message": text}
        return entry, None
    entry.update(bands=info.channels, dtype=info.dtype, photometric=info.photometric,
                 extrasamples=info.extrasamples, conversion=info.conversion,
                 kept=_kept(info.metadata))
    if info.photometric == "palette":  # kept for a copy; an op reads it through its colormap
        entry["with_ops"] = pixel_kind(page, f"{url}: page {index}", False).conversion
    if info.metadata.get("ome", {}).get("name"):
        entry["ome_name"] = info.metadata["ome"]["name"]
    if band_items := _band_items(info.metadata, info.channels):
        entry["band_items"] = band_items
    return entry, info


def _band_items(metadata: dict[str, Any], channels: int) -> list[dict[str, Any]]:
    """Each band's name (GDAL's description), scale, offset and unit from the page's
    GDAL_METADATA, by the 0-based index the ops take; empty when no band has one."""
    from pipeline.adapters.metadata import page_band_roles

    roles = page_band_roles(metadata)
    out: list[dict[str, Any]] = []
    for band in range(channels):
        mine = roles.get(band, {})
        item: dict[str, Any] = {}
        for role, key in (("description", "description"), ("scale", "scale"),
                          ("offset", "offset"), ("unittype", "unit")):
            if mine.get(role):
                try:
                    item[key] = mine[role] if key in ("description", "unit") else \
                        float(mine[role])
                except ValueError:
                    item[key] = mine[role]
        out.append(item)
    return out if any(out) else []


def _bands_text(items: list[dict[str, Any]]) -> str:
    """The band line of a page: each band's index and name, and their scale, offset and
    unit: once for every band when they share them."""
    def values(item: dict[str, Any]) -> str:
        return ", ".join(f"{k} {item[k]:g}" if isinstance(item[k], float) else f"{k} {item[k]}"
                         for k in ("scale", "offset", "unit") if k in item)

    shared = len({values(i) for i in items}) == 1 and values(items[0])
    if shared and not any("description" in i for i in items):  # (scales alone)
        return (f"bands 0 to {len(items) - 1} (0-based, as select_bands and "
                f"normalized_difference take them; GDAL's band 1 is 0), no names; every band: "
                f"{shared}")
    names = []
    for band, item in enumerate(items[:BANDS_SHOWN]):
        name = f"{band} {item.get('description', '(no name)')}"
        if not shared and values(item):
            name += f" ({values(item)})"
        names.append(name)
    text = ("bands (0-based, as select_bands and normalized_difference take them; GDAL's "
            "band 1 is 0): " + ", ".join(names))
    if len(items) > BANDS_SHOWN:
        text += f", ... {len(items) - BANDS_SHOWN} more (--json: every band)"
    return text + (f"; every band: {shared}" if shared else "")


def _levels(page: Any) -> list[list[int]]:
    """[width, height] of each reduced-resolution level the page holds as its SubIFDs (an
    OME-TIFF pyramid, tiffpipe's ``pyramid``), from their headers; those read before a
    SubIFD that cannot be (a job drops them all: it makes its own levels)."""
    import tifffile

    from pipeline.adapters.tiff_read import IFD_ERRORS

    levels: list[list[int]] = []
    if page.subifds:
        try:
            sub = tifffile.TiffPages(page)
            for k in range(len(sub)):  # len() first: a SubIFD loop ends
                levels.append([int(sub[k].imagewidth), int(sub[k].imagelength)])
        except IFD_ERRORS:  # (a damaged SubIFD: not the page's problem, which a job drops)
            pass
    return levels


def _kept(metadata: dict[str, Any]) -> list[str]:
    """The tags an output page keeps of this page (pipeline/adapters/metadata.py), named."""
    from pipeline.adapters.metadata import (
        GDAL_NODATA,
        KEPT_TAGS,
        SPATIAL_TAGS,
        dropped_unit_outcome,
    )

    kept = []
    if "resolution" in metadata:
        dropped = metadata.get("resolutionunit_dropped")
        kept.append("resolution" if dropped is None else
                    f"resolution (its ResolutionUnit {dropped}, no TIFF unit, dropped: "
                    f"{dropped_unit_outcome(metadata)})")
    if "icc" in metadata:
        kept.append("ICC profile")
    for code, _, _, value in metadata.get("tags", []):
        if code == GDAL_NODATA:
            text = base64.b64decode(value).rstrip(b"\0").decode("ascii", "replace").strip()
            kept.append(f"GDAL_NODATA {text}")
        else:
            kept.append(KEPT_TAGS.get(code, str(code)))
    codes = [item[0] for item in metadata.get("spatial", [])]
    if any(code in _GEO for code in codes):
        kept.append("GeoTIFF")
    if 700 in codes:
        kept.append(SPATIAL_TAGS[700])
    if "gray_colormap" in metadata:  # (a class map's colours: a copy keeps them, a blur not)
        kept.append("ColorMap")
    if "gdal_metadata" in metadata:
        kept.append("GDAL_METADATA")
    if metadata.get("aperio"):
        kept.append("Aperio description")
    if "name" in metadata.get("ome", {}):  # (an ImageJ hyperstack's page has a stack only)
        kept.append("OME name" + (" and Channel" if "channel" in metadata["ome"] else ""))
    if metadata.get("subfiletype"):
        kept.append(f"NewSubfileType {metadata['subfiletype']}")
    return kept


def _check_ops(doc: dict[str, Any], spec: JobSpec, infos: list[Any]) -> None:
    """Whether the op chain runs on each page read (the images and overviews: what a job
    may list), and what each output page is, by the plan PlanJob would make
    (:func:`pipeline.steps.planning.plan_pages`: ``make_plan``, the output's checks)."""
    from pipeline.adapters.metadata import XmpPackets, carries_xmp, derivation, page_xmp, unit_note
    from pipeline.core.nodata import nodata_at
    from pipeline.core.plan import page_options
    from pipeline.steps.planning import VALUE_NOTES, plan_pages, runnable_pages

    plan, problems = plan_pages(0, spec, infos, "inspect", 0.0)
    runs = runnable_pages(plan.pages, problems)
    # (a dropped ResolutionUnit is the page's, not the ops': said on its "kept:" only)
    notes = [said for note in VALUE_NOTES if note is not unit_note and (said := note(spec, runs))]
    if notes:  # (a convert dropping GDAL_NODATA: as validate --inputs and the run say it)
        doc["ops_notes"] = notes
    by_page: dict[int, list[str]] = {}
    others = []
    for problem in problems:
        what = problem.what
        if problem.page is None or what is None:
            others.append(problem.text)
        else:
            by_page.setdefault(problem.page, []).append(what)
    out = {pp.info.index: pp for pp in plan.pages}
    packets = XmpPackets(spec.input)  # (a packet too large for a plan: read from the file)
    # one derivation for the output's pages, as merge makes it (none without XMP: its imports)
    derived = derivation(spec) if any(carries_xmp(pp.info) for pp in runs) else None
    running = {pp.info.index for pp in runs}
    for entry in doc["pages"]:
        pp = out.get(entry["index"])
        if pp is None:
            continue
        why = by_page.get(entry["index"], [])
        # (bilevel "auto": each page 1-bit, in bilevel_compression, or not, in compression)
        options = page_options(spec, pp)
        entry["ops"] = {"runs": not why and not others, "problems": why,
                        "out": {"width": pp.out_grid.width, "height": pp.out_grid.height,
                                "bands": pp.out_channels, "dtype": pp.out_dtype,
                                "one_bit": bool(options.bilevel),
                                "compression": options.compression}}
        if pp.info.photometric == "palette" and pp.out_channels == 1:  # (its indices kept)
            entry["ops"]["out"]["palette"] = {"nodata": nodata_at(pp.info, spec.ops)}
        if entry["index"] not in running:  # (no output to say the XMP of: the problems
            continue  # say why)
        _, xmp = page_xmp(spec, pp, derived, packets)
        if xmp:  # (kept and stamped a derivative, rewritten for the new size and place too,
            # or dropped, and why)
            entry["ops"]["xmp"] = xmp
    if others:
        doc["ops_problems"] = others


def _ok(doc: dict[str, Any], with_ops: bool) -> bool:
    """Whether a job of the file without ``pages`` (of the op chain, when given) would pass
    PlanJob: the file read, its chain of pages whole, no image page refused, the chain runs
    on every image page."""
    if "error" in doc or "chain_error" in doc or doc.get("ops_problems"):
        return False
    images = [p for p in doc["pages"] if p["default_job"] == "processed"]
    return bool(images) and not any(
        "refused" in p or (with_ops and not p.get("ops", {}).get("runs", False))
        for p in images)


# --- text ---------------------------------------------------------------------------------


def text(doc: dict[str, Any]) -> Iterator[str]:
    """A file as ``tiffpipe inspect`` prints it: a line of the file, then a line a group of
    identical pages (at most :data:`GROUPS_SHOWN`)."""
    url = doc["file"]
    if "page_count" not in doc:  # not opened
        yield f"{url}: {doc['error']['type']}: {doc['error']['message']}"
        return
    head = (f"{url}: {doc['page_count']} page(s), {'BigTIFF' if doc['bigtiff'] else 'TIFF'}, "
            f"{doc['byteorder']}-endian")
    if doc["formats"]:
        head += ", " + ", ".join(doc["formats"])
    yield head
    lines = grouped_by_page([Problem.of_page(p["index"], _page_text(p)) for p in doc["pages"]])
    for line in lines[:GROUPS_SHOWN]:
        yield "  " + line.replace("\n", "\n    ")
    if len(lines) > GROUPS_SHOWN:
        yield (f"  ... {len(lines) - GROUPS_SHOWN} more groups of pages (--json: every "
               "page)")
    pages = doc["pages"]
    left = [p["index"] for p in pages if p["default_job"] == "left out"]
    carried = [p["index"] for p in pages if p["default_job"] == "carried"]
    refused = [p["index"] for p in pages if p["default_job"] == "processed" and "refused" in p]
    if left or refused or carried:
        from pipeline.core.plan import _ranges

        processed = len(pages) - len(left) - len(refused) - len(carried)
        said = [f"processes {processed} page(s)"]
        if carried:
            many = len(carried) > 1
            said.append(f"carries page{'s' if many else ''} {_ranges(carried)} "
                        + ("(internal masks) after their pages" if many else
                           "(an internal mask) after its page"))
        if left:
            said.append(f"leaves out page{'s' if len(left) > 1 else ''} {_ranges(left)} "
                        "(masks and overviews)")
        if refused:
            said.append(f"fails: page{'s' if len(refused) > 1 else ''} {_ranges(refused)} "
                        "refused")
        yield "  a job without pages: " + "; ".join(said)
    named = [p for p in pages if p.get("ome_name")]
    if named:  # (a line a page: names differ, and may hold any separator)
        yield "  OME names (each output page's PageName):"
        for p in named[:GROUPS_SHOWN]:
            yield f"    page {p['index']}: {p['ome_name']}"
        if len(named) > GROUPS_SHOWN:
            yield f"    ... {len(named) - GROUPS_SHOWN} more (--json: every page)"
    for note in doc.get("ops_notes", []):
        yield f"  ops: note: {note}"
    for problem in doc.get("ops_problems", []):
        yield f"  ops: cannot run: {problem}"
    if "chain_note" in doc:
        yield f"  note: {doc['chain_note']}"
    if "chain_error" in doc:
        yield f"  CorruptTiffError: {doc['chain_error']}"
    if "error" in doc:
        yield f"  {doc['error']['type']}: {doc['error']['message']}"


def _page_text(p: dict[str, Any]) -> str:
    """A page as one line (its ops' answer on a second): what the reader returns, how it is
    stored, what a job does with it."""
    f = p["file"]
    stored = f"{p['compression']}, " + (f"tiles {p['tiles'][0]} x {p['tiles'][1]}"
                                        if p["tiles"] else
                                        "one strip" if p["rows_per_strip"] >= p["height"] else
                                        f"strips of {p['rows_per_strip']} rows")
    if f["planar"] == "separate":
        stored += ", planar"
    size = f"{p['width']} x {p['height']}"
    raw = f"{f['samples']} x {f['bits']}-bit {f['sample_format'].lower()} {f['photometric']}"
    if p["role"] == "mask":
        whose = f"{'an overview of ' if p.get('of_overview') else ''}page {p['of']}"
        if p["default_job"] == "carried":
            return (f"{size}, {raw}; {stored}; internal mask of {whose}: written after its "
                    "output page (output_options.masks; reduced with downsample and for pyramid "
                    "levels; not with ome), "
                    "never processed (a job that lists it fails)")
        return (f"{size}, {raw}; {stored}; mask of {whose}: left out by a job without pages "
                "(a job that lists it fails)")
    if "refused" in p:
        return (f"{size}, {raw}; {stored}; refused: {p['refused']['type']}: "
                f"{p['refused']['message']}")
    extras = [_EXTRA.get(e, "extra") for e in p["extrasamples"]]
    pixels = f"{p['bands']} x {p['dtype']} {_KINDS.get(p['photometric'], p['photometric'])}"
    if extras:
        pixels += " + " + ", ".join(sorted(set(extras), key=extras.index)) + (
            f" ({len(extras)})" if len(extras) > 1 else "")
    read_as = p["conversion"]
    if not read_as and f["photometric"] == "YCBCR":
        read_as = "YCbCr decoded to RGB"
    if f["planar"] == "separate":
        read_as = ", ".join(x for x in (read_as, "planes made contiguous") if x)
    if p.get("with_ops"):  # (a palette page: kept by a copy, made RGB by an op that mixes)
        mixed = f"with an op that mixes values or a JPEG output: {p['with_ops']}"
        read_as = ", ".join(x for x in (read_as or "indices kept", mixed) if x)
    if read_as:
        pixels += f" (read as: {read_as})"
    parts = [size, pixels]
    line = ", ".join(parts) + f"; {stored}"
    if p["role"] == "overview":
        line += f"; overview of page {p['of']}: left out by a job without pages"
    if p.get("levels"):
        line += ("; pyramid levels (SubIFDs): " + ", ".join(f"{w} x {h}" for w, h in p["levels"])
                 + " (left out by a job: set output_options.pyramid for levels made from "
                 "the processed pixels)")
    if p.get("kept"):
        line += "; kept: " + ", ".join(p["kept"])
    if p.get("band_items"):
        line += "\n" + _bands_text(p["band_items"])
    ops = p.get("ops")
    if ops is not None:
        out = ops["out"]
        if ops["problems"]:
            line += "\nops: cannot run: " + "; ".join(ops["problems"])
        elif not ops["runs"]:
            line += "\nops: cannot run (below)"
        else:
            line += (f"\nops: run -> {out['width']} x {out['height']}, {out['bands']} x "
                     f"{out['dtype']}" + (f", written 1-bit in {out['compression']}"
                                          if out["one_bit"] else "") + _palette_text(out))
            if ops.get("xmp"):
                line += f"; XMP {ops['xmp']}"
    return line


def _palette_text(out: dict[str, Any]) -> str:
    """What ``--ops`` says of an output page that stays a palette page (its chain keeps the
    indices: only moves or picks them), "" of another."""
    if "palette" not in out:
        return ""
    nodata = out["palette"]["nodata"]
    return (" palette (indices and colormap kept)" if nodata is None else
            f" palette (indices, colormap and GDAL_NODATA {nodata:g} kept)")
