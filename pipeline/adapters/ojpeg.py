"""Old-style JPEG (OJPEG, TIFF compression 6) pages, decoded whole by libtiff.

OJPEG (TIFF 6.0's first JPEG scheme, written by 1990s document-imaging systems and still in
scanned archives) keeps its JPEG tables in tags that point elsewhere in the file, with many
writer quirks that libtiff's decoder knows and tifffile does not (tifffile would decode the
strips as new-style JPEG: wrong pixels). imagecodecs ships libtiff with OJPEG
(``tiff_decode``), but libtiff decodes a whole TIFF file: :func:`page_tiff` builds a small
one in memory from the page, its decoding tags and the bytes they point to (read through
the reader's file handle, so an S3 input is read by ranged GETs, never whole), and
:func:`decode` has libtiff decode it. The page is decoded as one piece: the reader treats it
as a single segment (so the reader's bound on a segment's size applies to the page).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from typing import Any

import imagecodecs
import numpy as np
import tifffile

#: TIFF compression code of old-style JPEG
OJPEG = 6
#: the decoding tags copied as they are (the image's geometry, samples and the JPEG process)
_COPIED = (256, 257, 258, 259, 262, 266, 277, 278, 284, 322, 323, 339, 512, 514, 515, 517,
           518, 529, 530, 531, 532)
#: the tags whose values point at bytes of the file, rewritten to the bytes' new offsets:
#: Strip/TileOffsets (-> their byte-count tags), JPEGInterchangeFormat (and its length),
#: JPEGQTables (64 bytes each), JPEGDCTables and JPEGACTables (16 counts, then the codes)
_STRIPS = {273: 279, 324: 325}
_JPEG_IF, _JPEG_IF_LENGTH = 513, 514
_Q_TABLES, _DC_TABLES, _AC_TABLES = 519, 520, 521
#: referenced ranges closer than this are copied as one piece (relative positions kept)
_GAP = 4096
_LONG = 4


def _ranges(page: tifffile.TiffPage) -> dict[int, list[tuple[int, int]]]:
    """Each offset tag's (offset, length) pieces of the file. A Huffman table's length is
    known only from its 16 counts; it is taken at its most (16 + 256 bytes, within the
    file), so that the tables are read with the rest, not each on its own first (a ranged
    GET each on S3): libtiff reads a table by its offset and counts, whatever follows."""
    tags = page.tags
    size = int(page.parent.filehandle.size)
    out: dict[int, list[tuple[int, int]]] = {}
    for offsets in _STRIPS:
        if offsets in tags:
            out[offsets] = [(int(o), int(n)) for o, n in
                            zip(page.dataoffsets, page.databytecounts, strict=False)]
    if _JPEG_IF in tags:
        start = int(_first(tags[_JPEG_IF].value))
        length = int(_first(tags[_JPEG_IF_LENGTH].value)) if _JPEG_IF_LENGTH in tags else 0
        if not length:  # the stream's header runs up to the strips, which follow it
            ends = [o + n for o, n in out.get(273, out.get(324, [])) if o >= start]
            length = max(ends, default=start + 1) - start
        out[_JPEG_IF] = [(start, length)]
    if _Q_TABLES in tags:
        out[_Q_TABLES] = [(int(o), 64) for o in _values(tags[_Q_TABLES].value)]
    for code in (_DC_TABLES, _AC_TABLES):
        if code in tags:  # 16 code counts, then as many code values as they sum to
            out[code] = [(int(o), max(0, min(16 + 256, size - int(o))))
                         for o in _values(tags[code].value)]
    return out


def _values(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)


def _first(value: Any) -> int:
    return _values(value)[0]


def page_tiff(page: tifffile.TiffPage, read: Callable[[int, int], bytes]) -> bytes:
    """A one-page classic TIFF holding ``page``'s decoding tags and the bytes they point to,
    at new offsets; ``read(offset, length)`` reads bytes of the input (and raises on a file
    too short). Pieces of the file that lie close together are copied as one, so whatever
    libtiff finds by offset (a stream header that runs into the strips) is where it was."""
    order = page.parent.byteorder  # '<' or '>', kept: copied values stay as they are
    referenced = _ranges(page)
    pieces: list[list[int]] = []  # [start, end) of the file, in file order
    for lo, hi in sorted({(o, o + n) for spans in referenced.values() for o, n in spans if n}):
        if pieces and lo <= pieces[-1][1] + _GAP:
            pieces[-1][1] = max(pieces[-1][1], hi)
        else:
            pieces.append([lo, hi])
    entries: dict[int, tuple[int, int, bytes]] = {}  # code -> (type, count, value bytes)
    for code in _COPIED:
        tag = page.tags.get(code)
        if tag is not None:
            entries[code] = _entry(tag, order, read)
    for code, counts in _STRIPS.items():
        if code in referenced:
            entries[counts] = _longs(order, [n for _, n in referenced[code]])
    if _JPEG_IF in referenced:
        entries[_JPEG_IF_LENGTH] = _longs(order, [referenced[_JPEG_IF][0][1]])
    for code, spans in referenced.items():  # placeholders of the final size
        entries[code] = _longs(order, [0] * len(spans))
    # the header, the IFD, its out-of-line values, then the pieces of the file
    at = 8 + 2 + 12 * len(entries) + 4
    at += sum(len(raw) for _, _, raw in entries.values() if len(raw) > 4)
    moved_to: list[int] = []
    for lo, hi in pieces:
        moved_to.append(at)
        at += hi - lo

    starts = [lo for lo, _ in pieces]

    def moved(offset: int) -> int:  # every referenced offset lies in a piece
        piece = bisect.bisect_right(starts, offset) - 1
        return moved_to[piece] + offset - starts[piece]

    for code, spans in referenced.items():
        entries[code] = _longs(order, [moved(o) if n else 0 for o, n in spans])
    ifd, values = bytearray(struct.pack(order + "H", len(entries))), bytearray()
    outside = 8 + len(ifd) + 12 * len(entries) + 4
    for code in sorted(entries):
        kind, count, raw = entries[code]
        if len(raw) > 4:
            ifd += struct.pack(order + "HHII", code, kind, count, outside + len(values))
            values += raw
        else:
            ifd += struct.pack(order + "HHI", code, kind, count) + raw.ljust(4, b"\0")
    ifd += bytes(4)  # no next IFD
    out = bytearray((b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", 8))
    out += ifd + values
    for lo, hi in pieces:
        out += read(lo, hi - lo)
    return bytes(out)


def _entry(tag: Any, order: str, read: Callable[[int, int], bytes]) -> tuple[int, int, bytes]:
    """A copied tag's (type, count, value bytes): packed again from the value tifffile read
    with the IFD (no read of the file), BigTIFF's 8-byte integers as LONG; the stored bytes
    read again only for a value that does not pack back to its count."""
    if tag.dtype in (16, 17, 18):
        return _longs(order, _values(tag.value))
    fmt = tifffile.TIFF.DATA_FORMATS[tag.dtype]  # "1H", "2I" (rational), ...
    numbers = _values(tag.value) if not isinstance(tag.value, bytes) else ()
    if fmt[-1] in "bBhHiIqQ" and len(numbers) == tag.count * int(fmt[:-1]):
        return tag.dtype, tag.count, struct.pack(f"{order}{len(numbers)}{fmt[-1]}", *numbers)
    return tag.dtype, tag.count, read(tag.valueoffset, struct.calcsize(order + fmt) * tag.count)


def _longs(order: str, numbers: list[int] | tuple[int, ...]) -> tuple[int, int, bytes]:
    """A LONG entry's (type, count, value bytes)."""
    return _LONG, len(numbers), struct.pack(f"{order}{len(numbers)}I", *numbers)


def decode(data: bytes, height: int, width: int, samples: int) -> np.ndarray:
    """The (height, width, samples) uint8 pixels of a :func:`page_tiff` (YCbCr as RGB), by
    libtiff (imagecodecs); ValueError if it decodes to another shape."""
    pixels = imagecodecs.tiff_decode(data)
    pixels = pixels.reshape(*pixels.shape[:2], -1) if pixels.ndim in (2, 3) else pixels
    if pixels.shape != (height, width, samples) or pixels.dtype != np.uint8:
        raise ValueError(f"libtiff decodes it to {pixels.shape} {pixels.dtype}, not "
                         f"{(height, width, samples)} uint8")
    return pixels
