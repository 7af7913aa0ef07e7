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
function; at most :data:`MIN_PART` of them per uploaded part).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
#: the size a copied part aims at when a span is cut into several (fewer, larger requests)
COPY_PART = 512 * MiB
#: the largest uploaded part cut from a span when segments cannot be copied (local files):
#: merge holds one such part in memory
UPLOAD_PART = 16 * MiB


@dataclass(frozen=True)
class Literal:
    """Bytes merge computed (header, IFDs, tag values, padding)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Span:
    """``size`` bytes of segment ``source`` from byte ``start``."""

    source: str
    start: int
    size: int


Piece = Literal | Span


@dataclass(frozen=True)
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
    an uploaded part, topped up from the next span to ``min_part``. With ``copyable`` False
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
