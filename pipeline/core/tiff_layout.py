"""Where every byte of an output TIFF comes from, and how it is cut into multipart parts. Pure.

The output file is a sequence of *pieces* in file order: :class:`Literal` bytes (the header,
IFDs, tag values and alignment padding, which merge computes) and :class:`Span` ranges of a
*segment* (an object or file in which process stored encoded tiles in file order). Merge
writes the pieces by concatenation locally, or as one S3 multipart upload.

S3's rules decide the parts (:func:`plan_parts`): every part except the last is at least
:data:`MIN_PART` bytes and at most :data:`MAX_PART`; an upload has at most :data:`MAX_PARTS`
parts and the object at most :data:`MAX_OBJECT` bytes. A part is either a server-side copy
of ONE range of ONE segment (``UploadPartCopy``), or bytes the function uploads: literals
together with the neighbouring span bytes needed to reach :data:`MIN_PART` (read through the
function; less than ``2 * MIN_PART`` of them per uploaded part).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from pipeline.core.models import JobPlan
from pipeline.core.record import record
from pipeline.errors import OutputTooLargeError

MiB = 1024 * 1024
#: the smallest S3 multipart part (all but the last)
MIN_PART = 5 * MiB
#: the largest S3 multipart part, and the largest range one UploadPartCopy copies
MAX_PART = 5 * 1024 * MiB
#: the most parts of one S3 multipart upload
MAX_PARTS = 10_000
#: the largest S3 object
MAX_OBJECT = 5 * 1024 * 1024 * MiB
#: the most bytes a classic TIFF holds: its offsets are unsigned 32-bit (merge lays out no
#: larger one: :func:`pipeline.steps.merge.output_pieces`; read when merge runs)
CLASSIC_TIFF_BYTES = 2**32
#: the size a copied part aims at when a span is cut into several (fewer, larger requests)
COPY_PART = 512 * MiB
#: a page whose tiles, in row-major order, make more runs than this (neighbouring tiles in
#: the file that are not neighbours in one segment) is laid out segment after segment: a
#: page wider than its units has one run per output tile row and unit (38,000 for a
#: 100-gigapixel RGB page), each a part or read through the function
ROW_MAJOR_RUNS = 256
#: the bytes of runs too short to copy (read through merge) that a job's row-major pages
#: may add up to; past it, the next such page is laid out segment after segment too
ROW_MAJOR_READ_THROUGH = 256 * MiB
#: the largest uploaded part cut from a span when segments cannot be copied (local files):
#: merge holds one such part in memory
UPLOAD_PART = 16 * MiB


@record(frozen=True)
class Literal:
    """Bytes merge computed (header, IFDs, tag values, padding)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@record(frozen=True)
class Span:
    """``size`` bytes of segment ``source`` from byte ``start``."""

    source: str
    start: int
    size: int


Piece = Literal | Span


@record(frozen=True)
class Part:
    """One multipart part: a copy of one span (``copy``), or the pieces to upload."""

    number: int
    pieces: tuple[Piece, ...]
    copy: bool

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)


def coalesce(pieces: Iterable[Piece]) -> Iterator[Piece]:
    """``pieces`` with neighbours joined: consecutive literals, and spans that continue each
    other in the same segment. Empty pieces are dropped."""
    held: Piece | None = None
    for piece in pieces:
        if piece.size == 0:
            continue
        if isinstance(held, Literal) and isinstance(piece, Literal):
            held = Literal(held.data + piece.data)
        elif (isinstance(held, Span) and isinstance(piece, Span) and held.source == piece.source
              and held.start + held.size == piece.start):
            held = Span(held.source, held.start, held.size + piece.size)
        else:
            if held is not None:
                yield held
            held = piece
    if held is not None:
        yield held


def _cut(span: Span, count: int) -> list[Span]:
    """``span`` cut into ``count`` nearly equal spans."""
    step, extra = divmod(span.size, count)
    out, start = [], span.start
    for i in range(count):
        size = step + (1 if i < extra else 0)
        out.append(Span(span.source, start, size))
        start += size
    return out


def plan_parts(pieces: Iterable[Piece], copyable: bool = True, min_part: int = MIN_PART,
               max_part: int = MAX_PART, copy_part: int = COPY_PART,
               max_parts: int = MAX_PARTS) -> Iterator[Part]:
    """The multipart parts of the file made of ``pieces`` (coalesced here), in order.

    A span of at least ``min_part`` bytes that starts a part is copied (cut into parts of
    about ``copy_part``, none above ``max_part``); literals and short spans are gathered into
    an uploaded part, topped up from the next span to ``min_part`` (or with all of it, when
the rest would be too short to copy: an uploaded part stays under ``2 * min_part`` plus its
literals). With ``copyable`` False
    (segments that are local files) every part is uploaded, :data:`UPLOAD_PART` bytes at most.
    Raises :class:`OutputTooLargeError` past ``max_parts`` parts or :data:`MAX_OBJECT` bytes.
    """
    number = 0
    total = 0
    buffer: list[Piece] = []
    buffered = 0

    def emit(part_pieces: list[Piece], copy: bool) -> Part:
        nonlocal number
        number += 1
        if number > max_parts:
            raise OutputTooLargeError(
                f"the output needs more than {max_parts} multipart parts (S3's limit): split "
                "the job into jobs of fewer pages")
        return Part(number, tuple(part_pieces), copy)

    for piece in coalesce(pieces):
        total += piece.size
        if total > MAX_OBJECT:
            raise OutputTooLargeError(
                f"the output passes S3's largest object ({MAX_OBJECT} bytes): split the job "
                "into jobs of fewer pages")
        if isinstance(piece, Literal):
            buffer.append(piece)
            buffered += piece.size
            continue
        rest = piece
        if buffered:  # top the uploaded part up to min_part from this span
            take = min(rest.size, max(0, min_part - buffered))
            if rest.size - take < min_part:  # a rest too short to copy would start the next
                take = rest.size  # part short again: take the whole span (< 2 x min_part)
            if take:
                buffer.append(Span(rest.source, rest.start, take))
                buffered += take
                rest = Span(rest.source, rest.start + take, rest.size - take)
            if buffered < min_part:
                continue
            yield emit(buffer, False)
            buffer, buffered = [], 0
        if rest.size == 0:
            continue
        if rest.size < min_part:
            buffer, buffered = [rest], rest.size
            continue
        limit = min(copy_part if copyable else UPLOAD_PART, max_part)
        count = max(1, -(-rest.size // limit))
        count = min(count, rest.size // min_part)  # every cut part stays >= min_part
        for span in _cut(rest, count):
            yield emit([span], copyable)
    if buffer:
        yield emit(buffer, False)


def segment_map(plan: JobPlan, index: int) -> np.ndarray:
    """Which of page ``index``'s segments (its units when fused, else its batches, in plan
    order) holds each output tile: an int32 array of the page's output tile rows x cols."""
    page, t = plan.pages[index], plan.spec.output_options.tile
    out = page.out_grid
    per = 1 if page.strip else out.tile // t  # output tiles per processing tile side
    rows, cols = page.out_tiles(t)
    # the segment of each processing tile, then spread to its output tiles
    owner = np.full((page.grid.rows, page.grid.cols), -1, np.int32)
    if plan.fused:
        units = [plan.units[n] for n in plan.units_of(index)]
        for k, u in enumerate(units):
            owner[u.row0:u.row1, u.col0:u.col1] = k
    else:
        flat = owner.reshape(-1)
        for k, b in enumerate(plan.batches[n] for n in plan.batches_of(index)):
            flat[b.first:b.last] = k
    return np.repeat(np.repeat(owner, per, 0), per, 1)[:rows, :cols]


def run_lengths(segments: np.ndarray) -> np.ndarray:
    """The tiles of each run of a page whose output tile (row, col) is held by segment
    ``segments[row, col]`` (each segment holding its tiles in row-major order), the page's
    tiles in row-major order: a run ends where the segment changes."""
    flat = segments.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64)
    cuts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return np.diff(np.concatenate([[0], cuts, [flat.size]]))


@record(frozen=True)
class PartCount:
    """What composing an output costs in S3 requests (expected, from run sizes)."""

    copies: int  # UploadPartCopy requests
    uploads: int  # UploadPart requests (header, IFDs, short runs, top-ups)
    read_through: float  # bytes merge reads and uploads itself

    @property
    def parts(self) -> int:
        return self.copies + self.uploads


def expected_parts(runs: Iterable[float], pages: int, copy_part: int = COPY_PART,
                   min_part: int = MIN_PART) -> PartCount:
    """The parts of a file of ``pages`` IFDs and data runs of the given byte sizes: a run of
    ``min_part`` or more is copied (less the top-up of the part before it), shorter runs
    are gathered into uploaded parts with the IFDs (the :func:`plan_parts` rules)."""
    copies, short, total = 0, 0.0, 0.0
    for size in runs:
        total += size
        if size >= min_part:
            copies += max(1, int(-(-size // copy_part)))
        else:
            short += size
    uploads = max(1, pages) + int(short // min_part)
    # each IFD's part is topped up to min_part from the run after it
    return PartCount(copies, uploads, min(total, short + pages * min_part))
