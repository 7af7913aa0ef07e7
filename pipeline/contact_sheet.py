"""The contact sheet of a run: one PNG with, for every page of every job, the input's and the
output's thumbnails side by side, labelled with the job, the page and the status; a failed job
shows its input and its error. ``tiffpipe run`` writes it next to its report as
``<report stem>.contact.png``.

Thumbnails of large pages come from the sums the run's process steps made of the pixels they
held (:mod:`pipeline.steps.thumbs`: ``tiffpipe run`` asks for them); the others from
:mod:`pipeline.preview` (bounded memory, pyramid levels when there are some), a few at a time
in threads. At most :data:`MAX_ROWS` rows are drawn; a line at the bottom says how many pages
were left out. The sheet is drawn a row at a time and each row handed to the PNG writer,
whose threads compress while the next rows are drawn: neither the whole picture nor all its
thumbnails are held at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont

from pipeline.adapters import png_write, storage
from pipeline.adapters.metadata import ORIENTATION
from pipeline.adapters.tiff_read import classified, open_tiff, page_count
from pipeline.core.models import JobPlan, JobSpec
from pipeline.core.ops import chain_turns
from pipeline.core.plan import page_options
from pipeline.core.record import record
from pipeline.core.thumbs import MAX_PAGES, SHEET_BOX, SHEET_WIDTH
from pipeline.errors import TiffpipeError
from pipeline.preview import (
    BILEVEL_LABEL,
    Thumbnail,
    orientation_of,
    thumbnails,
    to_display,
    turned,
    type_label,
)
from pipeline.steps import layout
from pipeline.steps.common import load_plan, usable_cores
from pipeline.steps.thumbs import load_summed, summed_parts
from pipeline.ui import megapixels_cell

#: the box a thumbnail fits in (pixels)
CELL = SHEET_BOX
PAD = 10
#: the label column's width: the rest of the sheet's width (SHEET_WIDTH, 852: what tells a
#: sheet from a picture of the user's at its path) beside two cells and four paddings
LABEL_W = SHEET_WIDTH - 4 * PAD - 2 * CELL
#: the caption line under a thumbnail (size and pixel type)
CAPTION = 20
#: the title and the column headings
HEADER = 64
ROW_H = CELL + CAPTION + PAD
#: rows drawn at most (a run of thousands of pages would make an unusable picture)
MAX_ROWS = MAX_PAGES
FOOTER = 28
#: thumbnails rendered at once when some come from S3 (their reads wait on the network);
#: from local files, as many as the cores (decoding and summing are CPU work: on 2 cores a
#: thread or two more made a sheet's thumbnails slower, the threads waiting on the GIL)
S3_THREADS = 4
#: rows whose thumbnails are made together, then drawn (:func:`draw`): about 26 MB of
#: thumbnails held at once
BLOCK_ROWS = 50

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
    detail: str  # e.g. "12.6 MP, 3.1 s", "64.0 -> 16.0 MP, 3.1 s" (a downsample)
    ops: str = ""  # the op chain, e.g. "gaussian_blur(sigma=2)"
    message: str = ""  # a skipped job's: why (its output existed, or appeared meanwhile)
    #: the output page's index in its file where it is not ``out_page`` (its position among
    #: the job's pages): an output whose pyramid levels are pages after their page
    out_ifd: int | None = None

    @property
    def out_file_page(self) -> int | None:
        """The output page as the file (and tiffpipe reading it) numbers its pages."""
        return self.out_page if self.out_ifd is None else self.out_ifd


def layout_size(rows: int, truncated: bool = False) -> tuple[int, int]:
    """(width, height) of a sheet of ``rows`` drawn rows: every sheet is SHEET_WIDTH wide
    (its label column, two cells and four paddings: LABEL_W is what the rest leaves)."""
    return SHEET_WIDTH, HEADER + rows * ROW_H + PAD + (FOOTER if truncated else 0)


def describe_ops(ops: list[dict[str, Any]]) -> str:
    """``gaussian_blur(sigma=2), dilate(ksize=3)``; ``copy`` for an empty chain."""
    return ", ".join(f"{op.get('op')}(" + ", ".join(f"{k}={v}" for k, v in op.items()
                                                   if k != "op") + ")" for op in ops) or "copy"


def sheet_rows(report: dict[str, Any], specs: list[JobSpec]) -> list[Row]:
    """One row per output page of a succeeded job, one per failed or skipped job."""
    rows: list[Row] = []
    for job in report["jobs"]:
        index = job["job"]
        spec = specs[index] if index < len(specs) else None
        asked = spec.pages if spec is not None else None
        ops = describe_ops(spec.ops) if spec is not None else ""
        if job["status"] == "SUCCEEDED":
            # the input pages read: as asked, or all but those left out (masks, overviews)
            pages = (asked if asked is not None else job.get("input_pages")
                     or list(range(int(job.get("pages") or 0))))
            # (the output's after an arrow: a crop or downsample made it smaller)
            detail = f"{megapixels_cell(job) or 0} MP, {job.get('seconds', 0):.1f} s"
            at = (_image_pages(job["output"]) if job.get("masks") or (
                spec is not None and spec.output_options.pyramid
                and spec.output_options.pyramid_layout == "pages") else [])
            rows += [Row(index, job["status"], job["input"], job["output"], p, i, None, detail,
                         ops, out_ifd=at[i] if i < len(at) else None)
                     for i, p in enumerate(pages)]
        else:
            rows.append(Row(index, job["status"], job["input"], job["output"],
                            asked[0] if asked else 0, None, job.get("error") or {},
                            f"{job['seconds']:.1f} s" if job.get("seconds") is not None
                            else "", ops, job.get("message", "")))
    return rows


def _image_pages(url: str) -> list[int]:
    """The indices of an output's pages that are its job's pages: not masks nor levels (the
    pages a job without ``pages`` would process of it: :func:`classified`; ``pyramid_layout``
    "pages" writes each page's levels as pages after it, marked reduced-resolution, and a
    page's internal mask is carried after it, while a processed page may be marked
    reduced-resolution itself, a thumbnail or a slide's label); [] if it cannot be read
    (its rows then show what it holds at their position, or why not)."""
    try:
        with open_tiff(url) as tf:
            return [i for i, _, why in classified(tf, url, page_count(tf, url), aperio=False)
                    if why is None]
    except (TiffpipeError, tifffile.TiffFileError, OSError, ValueError):
        return []


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
    info = plan.pages[position].info
    page = info.index if side == "in" else position
    # the output page carries the input page's Orientation, unless the chain turned it
    orientation = 1 if side == "out" and chain_turns(plan.spec.ops) else orientation_of(next(
        (value for code, _, _, value in info.metadata.get("tags", []) if code == ORIENTATION),
        None))
    image = to_display(made.pixels, np.dtype(made.dtype), made.extrasamples, made.photometric)
    return Thumbnail(turned(image, orientation), page, made.height, made.width,
                     f"page {page}, as processed", False, 0, 0,
                     type_label(info) if side == "in" else
                     BILEVEL_LABEL if page_options(plan.spec, plan.pages[position]).bilevel
                     else made.dtype,
                     orientation=orientation)


def _thumbnails(tasks: list[tuple[str, int]], summed: dict[tuple[str, int], Summed]
                ) -> dict[tuple[str, int], Thumbnail | str]:
    """The thumbnail of every (file, page) of ``tasks``, or why there is none, made in
    :func:`thumbnail_threads` threads: a file's pages in as many runs, each run's file
    opened once."""
    by_file: dict[str, list[int]] = {}
    for url, page in tasks:
        by_file.setdefault(url, []).append(page)
    threads = thumbnail_threads(list(by_file))
    chunks = []
    for url, pages in by_file.items():
        per = -(-len(pages) // threads)
        chunks += [(url, pages[i:i + per]) for i in range(0, len(pages), per)]
    found: dict[tuple[str, int], Thumbnail | str] = {}
    with ThreadPoolExecutor(threads) as pool:
        for (url, pages), made in zip(chunks, pool.map(
                lambda chunk: _file_thumbnails(*chunk, summed), chunks), strict=True):
            found.update(((url, page), one) for page, one in zip(pages, made, strict=True))
    return found


def thumbnail_threads(urls: list[str]) -> int:
    """Threads making the thumbnails of the files ``urls``: the cores, at least
    :data:`S3_THREADS` when some are on S3."""
    cores = usable_cores()
    return max(S3_THREADS, cores) if any(storage.is_s3(u) for u in urls) else cores


def _file_thumbnails(url: str, pages: list[int], summed: dict[tuple[str, int], Summed]
                     ) -> list[Thumbnail | str]:
    """The thumbnails of ``pages`` of one file, or why there is none: those the run's steps
    summed from their parts, the others from the file, opened once for them all (opening a
    file of n pages for each page walked its chain of pages n times over)."""
    found: dict[int, Thumbnail | str] = {}
    from_file: list[int] = []
    for page in pages:
        try:
            made = _summed_thumb(summed[(url, page)]) if (url, page) in summed else None
        except Exception as exc:  # noqa: BLE001 - damaged parts: the file is read instead
            log.debug("%s page %d: summed thumbnail not used: %s", url, page, exc)
            made = None
        if made is not None:
            found[page] = made
        else:
            from_file.append(page)
    for page, one in zip(from_file, thumbnails(url, from_file, CELL) if from_file else [],
                         strict=True):
        found[page] = one if isinstance(one, Thumbnail) else f"{type(one).__name__}: {one}"
    return [found[page] for page in pages]


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
        for side, key in (("in", (row.input, row.in_page)),
                          ("out", (row.output, row.out_file_page))):
            if plan is not None and (row.out_page, side) in parts and key not in found:
                found[key] = (plan, row.out_page, side, parts[(row.out_page, side)])
    return found


def render(report: dict[str, Any], specs: list[JobSpec], work: str | None = None) -> np.ndarray:
    """The contact sheet of a run report (its jobs' pages from ``specs``) as pixels (rows x
    cols x 3 uint8); ``work``: the run's work location, where the steps may have left
    thumbnails they summed. :func:`write_contact_sheet` writes it band by band instead."""
    _, _, bands = draw(report, specs, work)
    return np.concatenate(list(bands))


def draw(report: dict[str, Any], specs: list[JobSpec], work: str | None = None
         ) -> tuple[int, int, Iterator[np.ndarray]]:
    """The sheet's width, height and its pixels in horizontal bands, top to bottom (the
    title, each row, the bottom margin), each drawn when asked for, never the whole sheet
    at once (a 200-row sheet is 146 MB of pixels, twice that as one Pillow image). The
    thumbnails of :data:`BLOCK_ROWS` rows are made (:func:`_thumbnails`), then those rows
    drawn, then the next rows' made: drawing (Pillow's text holds the GIL) while threads
    make thumbnails slowed both."""
    rows = sheet_rows(report, specs)
    shown, left_out = rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS)
    width, height = layout_size(len(shown), left_out > 0)
    summed = _summed_sources(shown, work)
    fonts = _font(18), _font(13), _font(11)

    def bands() -> Iterator[np.ndarray]:
        yield _band(width, HEADER, partial(_draw_title, report=report, fonts=fonts))
        for b in range(0, len(shown), BLOCK_ROWS):
            block = shown[b:b + BLOCK_ROWS]
            thumbs = _thumbnails(list(dict.fromkeys(
                [(r.input, r.in_page) for r in block] +
                [(r.output, r.out_file_page) for r in block if r.out_page is not None])),
                summed)
            for row in block:
                yield _band(width, ROW_H, partial(_draw_row, row=row, thumbs=thumbs,
                                                  fonts=fonts))
        yield _band(width, height - HEADER - len(shown) * ROW_H,
                    partial(_draw_footer, left_out=left_out, fonts=fonts))
    return width, height, bands()


def _band(width: int, height: int,
          paint: Callable[[Image.Image, ImageDraw.ImageDraw], None]) -> np.ndarray:
    """A band of the sheet: a white ``width`` x ``height`` picture ``paint`` draws on (given
    the picture and a drawing context of it), as pixels."""
    image = Image.new("RGB", (width, height), WHITE)
    paint(image, ImageDraw.Draw(image))
    return np.asarray(image)


def _draw_title(band: Image.Image, draw: ImageDraw.ImageDraw, report: dict[str, Any],
                fonts: tuple[Any, Any, Any]) -> None:
    title, body, _ = fonts
    skipped = f", {report['skipped']} skipped" if report.get("skipped") else ""
    draw.text((PAD, 10), f"tiffpipe run {report.get('run_id', '')}: "
                         f"{report.get('succeeded', 0)} succeeded, {report.get('failed', 0)} failed"
                         f"{skipped}", fill=INK, font=title)
    x_in = PAD + LABEL_W + PAD
    for x, text in ((PAD, "job, page"), (x_in, "input"), (x_in + CELL + PAD, "output")):
        draw.text((x, HEADER - 22), text, fill=GREY, font=body)
    draw.line((PAD, HEADER - 4, band.width - PAD, HEADER - 4), fill=FRAME)


def _draw_row(band: Image.Image, draw: ImageDraw.ImageDraw, row: Row,
              thumbs: dict[tuple[str, int], Thumbnail | str], fonts: tuple[Any, Any, Any]
              ) -> None:
    """A row of the sheet (its band's top at y 0): the labels, the input's thumbnail, the
    output's or the job's error."""
    title, body, small = fonts
    x_label, x_in = PAD, PAD + LABEL_W + PAD
    x_out = x_in + CELL + PAD
    ok = row.status == "SUCCEEDED"
    lines = [(f"job {row.job}, page {row.in_page}", INK, title)]
    lines += [(t, INK, body) for t in _wrap(os.path.basename(row.input), body, LABEL_W, 2)]
    if ok:
        lines += [(t, GREY, small) for t in
                  _wrap(f"-> {os.path.basename(row.output)} page {row.out_file_page}", small,
                        LABEL_W, 2)]
    lines += [(t, INK, small) for t in _wrap(row.ops, small, LABEL_W, 3)]
    skipped = row.status == "SKIPPED"
    lines.append((row.status, GREEN if ok else GREY if skipped else RED, body))
    lines.append((row.detail, GREY, small))
    if not ok and row.error:
        lines.append((row.error.get("type", ""), RED, body))
    ty = 4
    for text, colour, font in lines:
        draw.text((x_label, ty), text, fill=colour, font=font)
        ty += 22 if font is title else 17
    in_thumb = thumbs[(row.input, row.in_page)]
    if isinstance(in_thumb, str) and row.error and row.error.get("message", "") in in_thumb:
        in_thumb = "the job's error, on the right"  # not the same message twice
    _cell(band, draw, x_in, in_thumb, small)
    if ok:
        _cell(band, draw, x_out, thumbs[(row.output, row.out_file_page)], small)
    elif skipped:  # its output is an earlier run's: not drawn as this run's
        draw.rectangle((x_out, 0, x_out + CELL - 1, CELL - 1), outline=FRAME)
        why = row.message or "the output exists already (if_exists: skip)"
        for k, text in enumerate(_wrap(f"skipped: {why}", small, CELL - 12, 13)):
            draw.text((x_out + 6, 6 + 17 * k), text, fill=GREY, font=small)
    else:
        error = row.error or {}
        draw.rectangle((x_out, 0, x_out + CELL - 1, CELL - 1), fill=PALE_RED, outline=FRAME)
        draw.text((x_out + 6, 6), error.get("type", "failed"), fill=RED, font=body)
        for k, text in enumerate(_wrap(error.get("message", ""), small, CELL - 12, 13)):
            draw.text((x_out + 6, 28 + 17 * k), text, fill=INK, font=small)
    draw.line((PAD, ROW_H - PAD // 2, band.width - PAD, ROW_H - PAD // 2), fill=FRAME)


def _draw_footer(band: Image.Image, draw: ImageDraw.ImageDraw, left_out: int,
                 fonts: tuple[Any, Any, Any]) -> None:
    """The bottom margin; with ``left_out`` rows not shown, the line that says so."""
    if left_out:
        draw.text((PAD, PAD + 6), f"... and {left_out} more page(s) not shown "
                  f"(a contact sheet shows at most {MAX_ROWS})", fill=GREY, font=fonts[1])


def _cell(band: Image.Image, draw: ImageDraw.ImageDraw, x: int, thumb: Thumbnail | str,
          font: Any) -> None:
    """A thumbnail centred in its CELL box at the band's top with its caption, or why there
    is none."""
    draw.rectangle((x, 0, x + CELL - 1, CELL - 1), outline=FRAME)
    if isinstance(thumb, str):
        draw.text((x + 6, 6), "no preview", fill=RED, font=font)
        for k, text in enumerate(_wrap(thumb, font, CELL - 12, 13)):
            draw.text((x + 6, 24 + 15 * k), text, fill=GREY, font=font)
        return
    image = thumb.image
    band.paste(image, (x + (CELL - image.width) // 2, (CELL - image.height) // 2))
    caption = f"{thumb.width}x{thumb.height} {thumb.dtype}"
    if not thumb.source.startswith("page"):
        caption += " (from a pyramid level)"
    draw.text((x, CELL + 3), caption, fill=GREY, font=font)


def write_contact_sheet(report: dict[str, Any], specs: list[JobSpec], url: str,
                        work: str | None = None) -> None:
    """Draw the sheet (:func:`draw`) and write it to ``url`` as a PNG, its bands compressed by
    threads while the next ones are drawn."""
    width, height, bands = draw(report, specs, work)
    storage.write_bytes(url, png_write.encode_rows(width, height, bands, usable_cores()))
