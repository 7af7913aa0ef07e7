"""The bytes tifffile writes around the tile data, computed from the tiles' byte counts alone.

Merge drives the same ``tifffile.TiffWriter`` calls as a merge that writes the real tiles,
over :class:`LayoutRecorder`, a file that keeps only what tifffile writes itself (header,
IFDs, tag values, OME-XML) and, for each tile, where it goes. The tiles are
:class:`Placeholder` objects: ``len()`` is the tile's byte count, no byte is held. So the
layout is exactly tifffile's, tag for tag and offset for offset, without a byte of pixel
data going through merge; :meth:`LayoutRecorder.pieces` then says where every byte of the
file comes from (:mod:`pipeline.core.tiff_layout`).
"""

from __future__ import annotations

import bisect
import io
import os
import struct
from typing import Any, Self

from tifffile import TIFF

from pipeline.core.tiff_layout import Literal, Piece, Span


class Placeholder(bytes):
    """A tile to write: empty bytes whose ``len()`` is the tile's byte count, and the span
    of the segment that holds the tile."""

    span: Span

    def __new__(cls, span: Span) -> Self:
        obj = super().__new__(cls)
        obj.span = span
        return obj

    def __len__(self) -> int:
        return self.span.size


class LayoutOverflow(Exception):
    """A write that would take the recorded file past its ``limit`` (a classic TIFF's)."""

    def __init__(self, end: int, limit: int):
        super().__init__(f"a write up to byte {end} passes the limit of {limit} bytes")
        self.end, self.limit = end, limit


class LayoutRecorder(io.RawIOBase):
    """A seekable writable "file" that records what is written where: literal bytes merged
    into extents (later writes patch earlier ones), placeholders as spans. Never reads.
    With a ``limit``, a write that would end past it raises :class:`LayoutOverflow`
    (tifffile writes a page's tiles before their offsets: a classic TIFF's tiles that pass
    4 GiB are caught here, before an offset past 32 bits is packed or a file is written).

    Extents and spans are kept sorted by position and found by bisection: a file of n pages
    has about n extents (each page's IFD and tag values, between its tiles), and merge writes,
    patches and reads each page's, so a scan of them all per call made merge O(n^2) in pages.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.name = "tiffpipe-layout"
        self.limit = limit
        self._pos = 0
        self.size = 0
        self._extents: list[tuple[int, bytearray]] = []  # sorted, disjoint, not adjacent
        self._starts: list[int] = []  # of the extents, for bisection
        self._spans: list[tuple[int, Span]] = []  # sorted by position
        self._span_starts: list[int] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data: Any) -> int:
        if self.limit is not None:
            end = self._pos + (len(data) if isinstance(data, Placeholder)
                               else memoryview(data).nbytes)
            if end > self.limit:
                raise LayoutOverflow(end, self.limit)
        if isinstance(data, Placeholder):
            span, n = data.span, data.span.size
            # a tile that continues the last one, in the file and in its segment, joins it:
            # memory follows the runs of tiles, not the tiles
            at, last = self._spans[-1] if self._spans else (-1, span)
            if (at + last.size == self._pos and last.source == span.source
                    and last.start + last.size == span.start):
                self._spans[-1] = (at, Span(last.source, last.start, last.size + n))
            else:
                i = bisect.bisect_right(self._span_starts, self._pos)  # the end, as a rule
                self._spans.insert(i, (self._pos, span))
                self._span_starts.insert(i, self._pos)
        else:
            chunk = bytes(data)
            n = len(chunk)
            if n:
                self._put(self._pos, chunk)
        self._pos += n
        self.size = max(self.size, self._pos)
        return n

    def _put(self, start: int, chunk: bytes) -> None:
        """Write ``chunk`` at ``start``: extents it overlaps or touches join it (it wins)."""
        end = start + len(chunk)
        # the extents touched: those that start at or before ``end`` (below ``last``) and
        # end at or after ``start`` (from ``first``: extents are sorted and disjoint)
        last = bisect.bisect_right(self._starts, end)
        first = last
        while first > 0 and self._starts[first - 1] + len(self._extents[first - 1][1]) >= start:
            first -= 1
        touched = self._extents[first:last]
        if len(touched) == 1:
            s, b = touched[0]
            if s <= start and end <= s + len(b):  # within one extent (a patch): in place
                b[start - s:end - s] = chunk
                return
        lo = min([start] + [s for s, _ in touched])
        hi = max([end] + [s + len(b) for s, b in touched])
        out = bytearray(hi - lo)
        for s, b in touched:
            out[s - lo:s - lo + len(b)] = b
        out[start - lo:end - lo] = chunk
        self._extents[first:last] = [(lo, out)]
        self._starts[first:last] = [lo]

    def pieces(self) -> list[Piece]:
        """Every byte of the file in order: literal extents, tile spans, zeros in the gaps
        (tifffile seeks over alignment padding)."""
        items: list[tuple[int, Piece]] = [(s, Literal(bytes(b))) for s, b in self._extents]
        items += self._spans
        items.sort(key=lambda x: x[0])
        out: list[Piece] = []
        pos = 0
        for start, piece in items:
            if start < pos:
                raise RuntimeError(f"tifffile wrote over tile data at byte {start}")
            if start > pos:
                out.append(Literal(bytes(start - pos)))
            out.append(piece)
            pos = start + piece.size
        if pos < self.size:
            out.append(Literal(bytes(self.size - pos)))
        return out

    def read(self, start: int, size: int) -> bytes:
        """``size`` literal bytes from ``start`` (they must have been written)."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0:
            s, buf = self._extents[i]
            if start + size <= s + len(buf):
                return bytes(buf[start - s:start - s + size])
        raise ValueError(f"bytes {start}-{start + size} were not written as one extent")

    def patch(self, start: int, data: bytes) -> None:
        """Overwrite literal bytes."""
        self._put(start, data)

    def replace_data(self, start: int, size: int, spans: list[Span]) -> None:
        """The tile data in bytes [start, start + size) is ``spans`` in order instead."""
        if sum(s.size for s in spans) != size:
            raise ValueError("the spans do not fill the data region")
        lo = bisect.bisect_left(self._span_starts, start)
        hi = bisect.bisect_left(self._span_starts, start + size)
        new, pos = [], start
        for span in spans:
            if span.size:  # (an empty segment holds no byte: at the region's end, a span
                new.append((pos, span))  # there would sit on the literal that follows)
            pos += span.size
        self._spans[lo:hi] = new
        self._span_starts[lo:hi] = [p for p, _ in new]

    @property
    def literal_bytes(self) -> int:
        """Bytes of the header, IFDs and tag values (what merge holds in memory)."""
        return sum(len(b) for _, b in self._extents)


class _Format:
    """How a classic TIFF or a BigTIFF lays out its IFDs. (Plain classes here, not
    NamedTuples: making a NamedTuple class costs ~0.2 ms at import, a small run's time.)"""

    __slots__ = ("count_fmt", "count_size", "entry", "fmt", "head", "word")

    def __init__(self, count_size: int, count_fmt: str, entry: int, word: int, fmt: str,
                 head: int):
        self.count_size = count_size  #: bytes of an IFD's entry count
        self.count_fmt = count_fmt    #: its struct format
        self.entry = entry            #: bytes of one entry
        self.word = word  #: bytes of an offset, of an entry's value count and of its value field
        self.fmt = fmt                #: the struct format of an offset (and of a value count)
        self.head = head  #: bytes of the file header (the first IFD's offset ends it)


_CLASSIC = _Format(2, "<H", 12, 4, "<I", 8)
_BIG = _Format(8, "<Q", 20, 8, "<Q", 16)


def _format(recorder: LayoutRecorder) -> _Format:
    return _BIG if recorder.read(2, 2) == b"+\x00" else _CLASSIC


class _Entry:
    """One IFD entry: where it is, its tag code, type and value count, and its bytes."""

    __slots__ = ("at", "code", "count", "kind", "raw")

    def __init__(self, at: int, code: int, kind: int, count: int, raw: bytes):
        self.at, self.code, self.kind, self.count, self.raw = at, code, kind, count, raw


def _entry_count(recorder: LayoutRecorder, ifd: int, f: _Format) -> int:
    """How many entries the IFD at ``ifd`` has."""
    return int(struct.unpack(f.count_fmt, recorder.read(ifd, f.count_size))[0])


def _ifd_entries(recorder: LayoutRecorder, ifd: int, f: _Format) -> list[_Entry]:
    """The entries of the IFD at ``ifd``, in file order (its next-IFD offset is at
    ``_next_ifd_at(ifd, len(entries), f)``)."""
    n = _entry_count(recorder, ifd, f)
    raw = recorder.read(ifd + f.count_size, n * f.entry)
    out = []
    for i in range(n):
        e = raw[i * f.entry:(i + 1) * f.entry]
        code, kind = struct.unpack("<HH", e[:4])
        out.append(_Entry(ifd + f.count_size + i * f.entry, code, kind,
                          struct.unpack(f.fmt, e[4:4 + f.word])[0], e))
    return out


def _next_ifd_at(ifd: int, count: int, f: _Format) -> int:
    """Where the next-IFD offset of the IFD at ``ifd`` of ``count`` entries is (after
    them)."""
    return ifd + f.count_size + count * f.entry


def _main_chain(recorder: LayoutRecorder, f: _Format) -> list[int]:
    """The positions of the main chain's IFDs, from the header's first IFD offset."""
    chain = []
    pos = struct.unpack(f.fmt, recorder.read(f.head - f.word, f.word))[0]
    while pos:
        chain.append(pos)
        following = _next_ifd_at(pos, _entry_count(recorder, pos, f), f)
        pos = struct.unpack(f.fmt, recorder.read(following, f.word))[0]
    return chain


def _value_at(e: _Entry, size: int, f: _Format) -> tuple[int, bool]:
    """Where the ``size`` bytes of the entry's values are, and whether that is in the entry
    (they fit there), else at the offset it holds."""
    if size <= f.word:
        return e.at + 4 + f.word, True
    return struct.unpack(f.fmt, e.raw[4 + f.word:])[0], False


def image_ifds(recorder: LayoutRecorder, sizes: list[int] | None = None) -> list[list[int]]:
    """The IFD positions of the recorded file: one list per output page, the page's own IFD
    first, then its SubIFDs (its pyramid levels), then the IFDs after it in the main chain
    that belong to it (its levels as pages, its internal mask and its levels'), in file
    order. ``sizes``: how many IFDs each output page wrote, all told (None: one IFD each,
    and its SubIFDs). The marks do not tell: a page processed as an image of its own may be
    marked reduced-resolution (a thumbnail of other samples, an Aperio label)."""
    f = _format(recorder)
    # each main-chain IFD, with its SubIFDs
    chain = [[pos, *_entries(recorder, pos, f).get(330, ())]
             for pos in _main_chain(recorder, f)]
    if sizes is None:
        return chain
    pages: list[list[int]] = []
    at = 0  # the next main-chain IFD (an index: popping the list's head made this O(n^2))
    for size in sizes:
        page: list[int] = []
        while len(page) < size and at < len(chain):
            page += chain[at]
            at += 1
        pages.append(page)
    return pages


#: struct formats of the integer TIFF types an offsets tag may use
_INT_TYPES = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}


def _entries(recorder: LayoutRecorder, pos: int, f: _Format) -> dict[int, tuple[int, ...]]:
    """The integer values of the tags of the IFD at ``pos`` (other tags are skipped)."""
    out = {}
    for e in _ifd_entries(recorder, pos, f):
        if e.kind not in _INT_TYPES:
            continue
        fmt = "<" + _INT_TYPES[e.kind] * e.count
        size = struct.calcsize(fmt)
        out[e.code] = struct.unpack(fmt, recorder.read(_value_at(e, size, f)[0], size))
    return out


def tile_offsets_at(recorder: LayoutRecorder, ifd: int) -> tuple[int, str]:
    """Where the TileOffsets values of the IFD at ``ifd`` are, and their struct format."""
    return _values_at(recorder, ifd, 324, "TileOffsets")


def set_compression(recorder: LayoutRecorder, ifd: int, value: int) -> None:
    """Set the Compression tag of the IFD at ``ifd`` (a SHORT, in the entry) to ``value``."""
    at, fmt = _values_at(recorder, ifd, 259, "Compression")
    recorder.patch(at, struct.pack(fmt, value))


def _values_at(recorder: LayoutRecorder, ifd: int, tag: int, name: str) -> tuple[int, str]:
    """Where the values of tag ``tag`` of the IFD at ``ifd`` are, and their struct format."""
    f = _format(recorder)
    for e in _ifd_entries(recorder, ifd, f):
        if e.code == tag:
            fmt = "<" + _INT_TYPES[e.kind] * e.count
            return _value_at(e, struct.calcsize(fmt), f)[0], fmt
    raise ValueError(f"the IFD at {ifd} has no {name}")


#: the code of the entry tifffile writes on each 1-bit page (SHORT, count 1, value 1) for
#: :func:`state_bits_per_sample` to turn into BitsPerSample: tifffile writes no BitsPerSample
#: on a 1-bit page (its TIFF default) and refuses one among ``extratags``. 65000-65535 are
#: TIFF 6.0's reusable private codes; tiffpipe carries none of them from an input
ONE_BIT_PLACEHOLDER = 65000
#: the ``extratags`` entry of a 1-bit page: written on every page, not once a series
ONE_BIT_EXTRATAG = (ONE_BIT_PLACEHOLDER, 3, 1, 1, False)
#: BitsPerSample
_BITS_PER_SAMPLE = 258


def state_bits_per_sample(recorder: LayoutRecorder, ifd: int) -> None:
    """Make the placeholder entry (:data:`ONE_BIT_EXTRATAG`) of the 1-bit page at ``ifd``
    its BitsPerSample 1 (SHORT, count 1, the value in the entry), in place: the entries are
    re-sorted by code (TIFF wants them ascending: it moves from the end, after the private
    tags, to after ImageLength), every other byte of the file stays. Strict readers want the
    tag (OpenSlide, libtiff's ``TIFFGetField``: "Cannot get required TIFF tag: 258"), and
    GDAL's and libtiff's writers always write it. A value held in an entry moves with it:
    find such a value (:func:`tile_offsets_at`) after this."""
    f = _format(recorder)
    entries = _ifd_entries(recorder, ifd, f)
    codes = [e.code for e in entries]
    if ONE_BIT_PLACEHOLDER not in codes or _BITS_PER_SAMPLE in codes:
        raise ValueError(f"the IFD at {ifd} is no 1-bit page written with ONE_BIT_EXTRATAG")
    raws = [struct.pack("<H", _BITS_PER_SAMPLE) + e.raw[2:] if e.code == ONE_BIT_PLACEHOLDER
            else e.raw for e in entries]
    raws.sort(key=lambda raw: struct.unpack("<H", raw[:2])[0])
    recorder.patch(ifd + f.count_size, b"".join(raws))


#: XResolution, YResolution, ResolutionUnit: tifffile writes them on every page (1/1, NONE
#: when given no resolution), where the input's page had none
RESOLUTION_TAGS = frozenset({282, 283, 296})


def drop_entries(recorder: LayoutRecorder, ifd: int, codes: frozenset[int]) -> None:
    """Remove the entries of the tags ``codes`` from the IFD at ``ifd``, in place, once
    tifffile has written every IFD (it patches each IFD's next-IFD offset as the next page
    starts): the entries after them move up, the next-IFD offset follows them, the freed
    bytes are zeros, and their values stored out of line stay, unreferenced. A value held in
    an entry moves with it: find such a value (:func:`tile_offsets_at`) after this."""
    f = _format(recorder)
    entries = _ifd_entries(recorder, ifd, f)
    kept = [e.raw for e in entries if e.code not in codes]
    if len(kept) == len(entries):
        return
    following = recorder.read(_next_ifd_at(ifd, len(entries), f), f.word)
    recorder.patch(ifd, struct.pack(f.count_fmt, len(kept)) + b"".join(kept) + following
                   + bytes((len(entries) - len(kept)) * f.entry))


#: StripOffsets, TileOffsets: where a page's strips or tiles are
_DATA_OFFSETS = (273, 324)
#: StripByteCounts, TileByteCounts
_DATA_COUNTS = (279, 325)
#: tags whose values point at other IFDs (SubIFDs, EXIF, GPS, Interoperability): a COG's
#: IFDs point at none (merge writes none of them with levels as pages)
_IFD_POINTERS = frozenset({330, 34665, 34853, 40965})


def ifds_before_data(recorder: LayoutRecorder, data_order: list[int]) -> list[Piece]:
    """The pieces of the recorded file laid out as a Cloud Optimized GeoTIFF (GDAL's COG
    layout, as its ``validate_cloud_optimized_geotiff.py`` checks it): the header, then
    every IFD of the main chain with its tag values, in chain order (the first at byte 8, or
    16 in a BigTIFF), then the IFDs' tile data, the IFD at ``data_order[0]``'s first (the
    smallest level's), each IFD's tiles in the order tifffile wrote them (row-major).

    tifffile writes each IFD and its values right before its page's tiles; this moves whole
    regions (an IFD with its values; a page's tiles) and rewrites every offset into them:
    the next-IFD offsets, the entries' value offsets and the Tile/StripOffsets. Every other
    byte, tile and tag stays. Patch the recorder first (it works on its bytes as they are)."""
    f = _format(recorder)
    chain = _main_chain(recorder, f)
    if chain[:1] != [f.head] or sorted(data_order) != sorted(chain) or chain != sorted(chain):
        raise ValueError(f"not a chain of IFDs from byte {f.head} in file order: {chain}, "
                         f"data order {data_order}")
    # each IFD's tile data: from its first tile (tifffile writes them in one run)
    starts = {}
    for ifd in chain:
        values = _entries(recorder, ifd, f)
        if _IFD_POINTERS & values.keys():
            raise ValueError(f"the IFD at {ifd} points at other IFDs: no COG layout for it")
        offsets = next(values[c] for c in _DATA_OFFSETS if c in values)
        counts = next(values[c] for c in _DATA_COUNTS if c in values)
        starts[ifd] = min((o for o, c in zip(offsets, counts, strict=True) if c),
                          default=None)
    # the old file cut into regions: [header][IFD 0 + values][data 0][IFD 1 + values]...
    cuts = [(0, "head", 0)] + sorted(
        [(ifd, "ifd", ifd) for ifd in chain]
        + [(start, "data", ifd) for ifd, start in starts.items() if start is not None])
    bounds = [c[0] for c in cuts] + [recorder.size]
    regions = {(kind, ifd): (bounds[i], bounds[i + 1]) for i, (_, kind, ifd) in enumerate(cuts)}
    order = [("head", 0)] + [("ifd", ifd) for ifd in chain] + [
        ("data", ifd) for ifd in data_order if starts[ifd] is not None]
    new_at, at = {}, 0
    for key in order:
        new_at[key] = at
        at += regions[key][1] - regions[key][0]
    old_starts = [regions[key][0] for key in order]
    by_start = sorted(zip(old_starts, order))
    firsts = [s for s, _ in by_start]

    def moved(offset: int) -> int:
        key = by_start[bisect.bisect_right(firsts, offset) - 1][1]
        return new_at[key] + offset - regions[key][0]

    for k, ifd in enumerate(chain):
        entries = _ifd_entries(recorder, ifd, f)
        for e in entries:
            value_at, inline = _value_at(e, _value_size(e.kind) * e.count, f)
            if not inline:  # out of line: their offset moves with them
                recorder.patch(e.at + 4 + f.word, struct.pack(f.fmt, moved(value_at)))
            if e.code in _DATA_OFFSETS:  # (the values themselves: patched where they are now)
                vfmt = "<" + _INT_TYPES[e.kind] * e.count
                offsets = struct.unpack(vfmt, recorder.read(value_at, struct.calcsize(vfmt)))
                recorder.patch(value_at, struct.pack(vfmt, *[
                    moved(o) if o else 0 for o in offsets]))
        following = chain[k + 1] if k + 1 < len(chain) else 0
        recorder.patch(_next_ifd_at(ifd, len(entries), f),
                       struct.pack(f.fmt, moved(following) if following else 0))
    pieces = recorder.pieces()
    return [piece for key in order for piece in _cut_pieces(pieces, *regions[key])]


def _value_size(kind: int) -> int:
    """The bytes of one value of TIFF type ``kind`` (BYTE ... IFD8), as tifffile lays them
    out (``TIFF.DATA_FORMATS``); 1 for a type it does not know."""
    return struct.calcsize("<" + TIFF.DATA_FORMATS[kind]) if kind in TIFF.DATA_FORMATS else 1


def _cut_pieces(pieces: list[Piece], start: int, end: int) -> list[Piece]:
    """The bytes [start, end) of the file made of ``pieces``, as pieces."""
    out: list[Piece] = []
    pos = 0
    for piece in pieces:
        lo, hi = max(start, pos), min(end, pos + piece.size)
        if lo < hi:
            a, b = lo - pos, hi - pos
            out.append(Literal(piece.data[a:b]) if isinstance(piece, Literal)
                       else Span(piece.source, piece.start + a, b - a))
        pos += piece.size
        if pos >= end:
            break
    return out
