"""The contact sheet of a run: one PNG with, for every page of every job, the input's and the
output's thumbnails side by side, labelled with the job, the page and the status; a failed job
shows its input and its error. ``tiffpipe run`` writes it next to its report as
``<report stem>.contact.png``.

Thumbnails of large pages come from the sums the run's process steps made of the pixels they
held (:mod:`pipeline.steps.thumbs`: ``tiffpipe run`` asks for them); the others from
:mod:`pipeline.preview` (bounded memory, pyramid levels when there are some), a few at a time
in threads. At most :data:`MAX_ROWS` rows are drawn; a line at the
bottom says how many pages were left out.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.adapters import storage
from pipeline.core.models import JobPlan, JobSpec
from pipeline.core.record import record
from pipeline.core.thumbs import MAX_PAGES, SHEET_BOX
from pipeline.preview import Thumbnail, png_bytes, rgb_pixels, thumbnails, to_display
from pipeline.steps import layout
from pipeline.steps.common import load_plan
from pipeline.steps.thumbs import load_summed, summed_parts

#: the box a thumbnail fits in (pixels)
CELL = SHEET_BOX
#: the label column's width
LABEL_W = 300
PAD = 10
#: the caption line under a thumbnail (size and pixel type)
CAPTION = 20
#: the title and the column headings
HEADER = 64
ROW_H = CELL + CAPTION + PAD
#: rows drawn at most (a run of thousands of pages would make an unusable picture)
MAX_ROWS = MAX_PAGES
FOOTER = 28
#: thumbnails rendered at once
THREADS = 4

log = logging.getLogger("tiffpipe")

WHITE, INK, GREY, FRAME = (255, 255, 255), (30, 30, 30), (110, 110, 110), (210, 210, 210)
GREEN, RED, PALE_RED = (20, 130, 50), (190, 30, 30), (253, 236, 236)


@record
class Row:
    """One row of the sheet: a page of a job, its input and output thumbnails."""

    job: int
    status: str
    input: str
    output: str
    in_page: int
    out_page: int | None  # None: no output (a failed job)
    error: dict[str, str] | None
    detail: str  # e.g. "12.6 MP, 3.1 s"
    ops: str = ""  # the op chain, e.g. "gaussian_blur(sigma=2)"


def contact_sheet_url(report_url: str) -> str:
    """``<report folder>/<report stem>.contact.png``."""
    if storage.is_s3(report_url):
        folder, name = storage.parent(report_url), report_url.rsplit("/", 1)[-1]
        return storage.join(folder, f"{os.path.splitext(name)[0]}.contact.png")
    stem = os.path.splitext(report_url)[0]
    return f"{stem}.contact.png"


def layout_size(rows: int, truncated: bool = False) -> tuple[int, int]:
    """(width, height) of a sheet of ``rows`` drawn rows."""
    width = PAD + LABEL_W + PAD + CELL + PAD + CELL + PAD
    return width, HEADER + rows * ROW_H + PAD + (FOOTER if truncated else 0)


def describe_ops(ops: list[dict[str, Any]]) -> str:
    """``gaussian_blur(sigma=2), dilate(ksize=3)``; ``copy`` for an empty chain."""
    return ", ".join(f"{op.get('op')}(" + ", ".join(f"{k}={v}" for k, v in op.items()
                                                   if k != "op") + ")" for op in ops) or "copy"


def sheet_rows(report: dict[str, Any], specs: list[JobSpec]) -> list[Row]:
    """One row per output page of a succeeded job, one per failed job."""
    rows: list[Row] = []
    for job in report["jobs"]:
        index = job["job"]
        spec = specs[index] if index < len(specs) else None
        asked = spec.pages if spec is not None else None
        ops = describe_ops(spec.ops) if spec is not None else ""
        if job["status"] == "SUCCEEDED":
            pages = asked if asked is not None else list(range(int(job.get("pages") or 0)))
            detail = f"{job.get('megapixels', 0):.3g} MP, {job.get('seconds', 0):.1f} s"
            rows += [Row(index, job["status"], job["input"], job["output"], p, i, None, detail,
                         ops) for i, p in enumerate(pages)]
        else:
            rows.append(Row(index, job["status"], job["input"], job["output"],
                            asked[0] if asked else 0, None, job.get("error") or {},
                            f"{job.get('seconds', 0):.1f} s", ops))
    return rows


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int, lines: int) -> list[str]:
    """Greedy wrap to ``width`` pixels, at most ``lines`` lines (the last one ellipsised);
    words longer than a line (paths) are cut."""
    out: list[str] = []
    line = ""
    for word in text.replace("\n", " ").split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            out.append(line)
        while font.getlength(word) > width:  # cut a long word
            cut = len(word)
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            out.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        out.append(line)
    if len(out) > lines:
        out = out[:lines]
        last = out[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        out[-1] = last + "..."
    return out


#: a thumbnail the run's steps summed: (the job's plan, page position, side, its parts)
Summed = tuple[JobPlan, int, str, list[str]]


def _summed_thumb(summed: Summed) -> Thumbnail | None:
    """The thumbnail the run's steps summed, or None if it is incomplete (then the file is
    read)."""
    made = load_summed(*summed, CELL)
    if made is None:
        return None
    plan, position, side, _ = summed
    page = plan.pages[position].info.index if side == "in" else position
    return Thumbnail(to_display(made.pixels, np.dtype(made.dtype), made.extrasamples), page,
                     made.height, made.width, f"page {page}, as processed", False, 0, 0,
                     made.dtype)


def _thumbnails(tasks: list[tuple[str, int]], summed: dict[tuple[str, int], Summed]
                ) -> dict[tuple[str, int], Thumbnail | str]:
    """The thumbnail of every (file, page) of ``tasks``, or why there is none: summed ones
    from their parts, the others from the files, each file opened once for a run of its
    pages (opening a file of n pages for each page walked its chain of pages n times over),
    in :data:`THREADS` threads."""
    found: dict[tuple[str, int], Thumbnail | str] = {}
    from_files: dict[str, list[int]] = {}
    for url, page in tasks:
        try:
            made = _summed_thumb(summed[(url, page)]) if (url, page) in summed else None
        except Exception as exc:  # noqa: BLE001 - damaged parts: the file is read instead
            log.debug("%s page %d: summed thumbnail not used: %s", url, page, exc)
            made = None
        if made is not None:
            found[(url, page)] = made
        else:
            from_files.setdefault(url, []).append(page)
    chunks = []
    for url, pages in from_files.items():
        per = -(-len(pages) // THREADS)
        chunks += [(url, pages[i:i + per]) for i in range(0, len(pages), per)]
    with ThreadPoolExecutor(THREADS) as pool:
        for (url, pages), made_all in zip(chunks, pool.map(
                lambda chunk: thumbnails(chunk[0], chunk[1], CELL), chunks), strict=True):
            for page, one in zip(pages, made_all, strict=True):
                found[(url, page)] = (one if isinstance(one, Thumbnail)
                                      else f"{type(one).__name__}: {one}")
    return found


def _summed_sources(rows: list[Row], work: str | None) -> dict[tuple[str, int], Summed]:
    """The thumbnails among ``rows``' that the run's steps summed (pipeline.steps.thumbs),
    by (file, page): read from the parts, not decoded from the file again."""
    found: dict[tuple[str, int], Summed] = {}
    if not work:
        return found
    by_job: dict[int, tuple[JobPlan | None, dict[tuple[int, str], list[str]]]] = {}
    for row in rows:
        if row.out_page is None:
            continue
        if row.job not in by_job:
            job_work = layout.job_dir(work, row.job)
            parts = summed_parts(job_work)
            plan = load_plan(layout.plan_file(job_work)) if parts else None
            by_job[row.job] = (plan, parts)
        plan, parts = by_job[row.job]
        for side, key in (("in", (row.input, row.in_page)), ("out", (row.output, row.out_page))):
            if plan is not None and (row.out_page, side) in parts and key not in found:
                found[key] = (plan, row.out_page, side, parts[(row.out_page, side)])
    return found


def render(report: dict[str, Any], specs: list[JobSpec], work: str | None = None) -> Image.Image:
    """The contact sheet of a run report (its jobs' pages from ``specs``); ``work``: the run's
    work location, where the steps may have left thumbnails they summed."""
    rows = sheet_rows(report, specs)
    shown, left_out = rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS)
    width, height = layout_size(len(shown), left_out > 0)
    sheet = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(sheet)
    title, body, small = _font(18), _font(13), _font(11)
    draw.text((PAD, 10), f"tiffpipe run {report.get('run_id', '')}: "
                         f"{report.get('succeeded', 0)} succeeded, {report.get('failed', 0)} failed",
              fill=INK, font=title)
    x_label, x_in = PAD, PAD + LABEL_W + PAD
    x_out = x_in + CELL + PAD
    for x, text in ((x_label, "job, page"), (x_in, "input"), (x_out, "output")):
        draw.text((x, HEADER - 22), text, fill=GREY, font=body)
    draw.line((PAD, HEADER - 4, width - PAD, HEADER - 4), fill=FRAME)

    tasks = list(dict.fromkeys([(r.input, r.in_page) for r in shown] +
                               [(r.output, r.out_page) for r in shown if r.out_page is not None]))
    thumbs = _thumbnails(tasks, _summed_sources(shown, work))

    for i, row in enumerate(shown):
        y = HEADER + i * ROW_H
        ok = row.status == "SUCCEEDED"
        lines = [(f"job {row.job}, page {row.in_page}", INK, title)]
        lines += [(t, INK, body) for t in _wrap(os.path.basename(row.input), body, LABEL_W, 2)]
        if ok:
            lines += [(t, GREY, small) for t in
                      _wrap(f"-> {os.path.basename(row.output)} page {row.out_page}", small,
                            LABEL_W, 2)]
        lines += [(t, INK, small) for t in _wrap(row.ops, small, LABEL_W, 3)]
        lines.append((row.status, GREEN if ok else RED, body))
        lines.append((row.detail, GREY, small))
        if not ok and row.error:
            lines.append((row.error.get("type", ""), RED, body))
        ty = y + 4
        for text, colour, font in lines:
            draw.text((x_label, ty), text, fill=colour, font=font)
            ty += 22 if font is title else 17
        in_thumb = thumbs[(row.input, row.in_page)]
        if isinstance(in_thumb, str) and row.error and row.error.get("message", "") in in_thumb:
            in_thumb = "the job's error, on the right"  # not the same message twice
        _cell(draw, sheet, x_in, y, in_thumb, small)
        if ok:
            _cell(draw, sheet, x_out, y, thumbs[(row.output, row.out_page)], small)
        else:
            error = row.error or {}
            draw.rectangle((x_out, y, x_out + CELL - 1, y + CELL - 1), fill=PALE_RED,
                           outline=FRAME)
            draw.text((x_out + 6, y + 6), error.get("type", "failed"), fill=RED, font=body)
            for k, text in enumerate(_wrap(error.get("message", ""), small, CELL - 12, 13)):
                draw.text((x_out + 6, y + 28 + 17 * k), text, fill=INK, font=small)
        draw.line((PAD, y + ROW_H - PAD // 2, width - PAD, y + ROW_H - PAD // 2), fill=FRAME)
    if left_out:
        draw.text((PAD, height - FOOTER + 6), f"... and {left_out} more page(s) not shown "
                  f"(a contact sheet shows at most {MAX_ROWS})", fill=GREY, font=body)
    return sheet


def _cell(draw: ImageDraw.ImageDraw, sheet: Image.Image, x: int, y: int,
          thumb: Thumbnail | str, font: Any) -> None:
    """A thumbnail centred in its CELL box with its caption, or why there is none."""
    draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline=FRAME)
    if isinstance(thumb, str):
        draw.text((x + 6, y + 6), "no preview", fill=RED, font=font)
        for k, text in enumerate(_wrap(thumb, font, CELL - 12, 13)):
            draw.text((x + 6, y + 24 + 15 * k), text, fill=GREY, font=font)
        return
    image = thumb.image
    sheet.paste(image, (x + (CELL - image.width) // 2, y + (CELL - image.height) // 2))
    caption = f"{thumb.width}x{thumb.height} {thumb.dtype}"
    if not thumb.source.startswith("page"):
        caption += " (from a pyramid level)"
    draw.text((x, y + CELL + 3), caption, fill=GREY, font=font)


def write_contact_sheet(report: dict[str, Any], specs: list[JobSpec], url: str,
                        work: str | None = None) -> None:
    from pipeline.engine.workers import trim_malloc

    sheet = render(report, specs, work)
    # the thumbnails' memory back to the system, then the pixels and not Pillow's image (4
    # bytes a pixel) while the PNG is encoded: a 200-row sheet is 146 MB of pixels, and its
    # peak stays below what Pillow's own encoder needed
    trim_malloc()
    pixels = rgb_pixels(sheet)
    del sheet
    storage.write_bytes(url, png_bytes(pixels))
