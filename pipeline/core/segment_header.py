"""What a compressed segment's own header says it decodes to, read before it is decoded. Pure.

An image codec's stream (JPEG, PNG, WebP, JPEG 2000, JPEG XL) and a LERC blob carry their
own width and height, and the codec allocates what they declare, whatever the TIFF tile or
strip it stands for: a 70-byte LERC blob of a constant 20,000 x 20,000 float32 image
decodes to 1.6 GB, a 2.5 KB WebP to 8,000 x 8,000 RGB (192 MB), and tifffile only finds out
that they do not fit the tile once they are decoded. :func:`declared` reads the size from
the first bytes of the stream (a few dozen bytes, once a segment), so that the reader
(``pipeline/adapters/tiff_read.py``) refuses a segment that declares more values than its
tile or strip holds before any of them is allocated. Streams whose header it does not read
(JPEG XR, ...) give None and are decoded as before.
"""

from __future__ import annotations

import struct

#: TIFF compressions whose segments are JPEG streams (JPEG, tifffile's JPEG_LOSSY of DNG)
JPEG_CODES = frozenset({7, 34892})
#: ... PNG, WebP, JPEG 2000 (Aperio's and plain), JPEG XL (and DNG's)
PNG_CODES = frozenset({34933})
WEBP_CODES = frozenset({50001})
JPEG2000_CODES = frozenset({33003, 33004, 33005, 34712})
JPEGXL_CODES = frozenset({50002, 52546})
#: every compression :func:`declared` reads a size from
READ = JPEG_CODES | PNG_CODES | WEBP_CODES | JPEG2000_CODES | JPEGXL_CODES


class Declared(tuple[int, int, int]):
    """(height, width, samples) a stream declares; samples 1 where the header does not say."""

    __slots__ = ()

    @property
    def values(self) -> int:
        return self[0] * self[1] * self[2]

    def __str__(self) -> str:
        more = f" x {self[2]} sample(s)" if self[2] > 1 else ""
        return f"{self[1]} x {self[0]} pixels{more}"


def declared(compression: int, data: bytes) -> Declared | None:
    """What the stream ``data`` of a segment of ``compression`` declares it decodes to, or
    None: a compression whose header is not read here, or a header that cannot be read (the
    codec then says what is wrong with it)."""
    try:
        if compression in JPEG_CODES:
            return _jpeg(data)
        if compression in PNG_CODES:
            return _png(data)
        if compression in WEBP_CODES:
            return _webp(data)
        if compression in JPEG2000_CODES:
            return _jpeg2000(data)
        if compression in JPEGXL_CODES:
            return _jpegxl(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


#: JPEG start-of-frame markers (every SOFn but DHT C4, JPG C8 and DAC CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> Declared | None:
    """The frame header (SOFn) of a JPEG stream: its lines, samples a line and components."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: no frame header before the scan
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            lines, per_line, components = struct.unpack_from(">HHB", data, pos + 5)
            return Declared((lines, per_line, max(components, 1)))
        pos += 2 + length
    return None


def _png(data: bytes) -> Declared | None:
    """A PNG's IHDR: width, height and colour type."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height, _, colour = struct.unpack_from(">IIBB", data, 16)
    return Declared((height, width, {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)))


def _webp(data: bytes) -> Declared | None:
    """A WebP's first chunk: VP8X (the canvas), VP8L (lossless) or VP8 (lossy)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8 ":
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    else:
        return None
    return Declared((height, width, 4))


def _jpeg2000(data: bytes) -> Declared | None:
    """A JPEG 2000 codestream's SIZ marker, or a JP2 file's image header box (ihdr)."""
    if data[:4] == b"\xff\x4f\xff\x51":  # SOC, SIZ
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, 8)
        (components,) = struct.unpack_from(">H", data, 40)
        return Declared((ysiz - yo, xsiz - xo, max(components, 1)))
    if data[4:8] == b"jP  ":
        at = data.find(b"ihdr", 0, 4096)
        if at < 0:
            return None
        height, width, components = struct.unpack_from(">IIH", data, at + 4)
        return Declared((height, width, max(components, 1)))
    return None


#: JPEG XL's aspect ratios of a SizeHeader (its xsize from its ysize), by their code 1-7
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jpegxl(data: bytes) -> Declared | None:
    """A JPEG XL codestream's SizeHeader (in a container: its first jxlc or jxlp box's)."""
    if data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        pos = 0
        while pos + 8 <= len(data):
            size, kind = struct.unpack_from(">I4s", data, pos)
            head = 8
            if size == 1:
                (size,) = struct.unpack_from(">Q", data, pos + 8)
                head = 16
            if kind in (b"jxlc", b"jxlp"):
                start = pos + head + (4 if kind == b"jxlp" else 0)
                return _jpegxl(data[start:start + 64])
            if size < head:
                return None
            pos += size
        return None
    if data[:2] != b"\xff\x0a":
        return None
    bits = int.from_bytes(data[2:20], "little")
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        value = (bits >> pos) & ((1 << n) - 1)
        pos += n
        return value

    def u32() -> int:
        return take((9, 13, 18, 30)[take(2)]) + 1

    if take(1):  # small: multiples of 8 up to 256
        height = (take(5) + 1) * 8
        ratio = take(3)
        width = (take(5) + 1) * 8 if ratio == 0 else 0
    else:
        height = u32()
        ratio = take(3)
        width = u32() if ratio == 0 else 0
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    return Declared((height, width, 1))


def lerc_declared(blob: bytes) -> Declared | None:
    """The values a LERC blob declares, every band of it (LERC2 blobs one after the other,
    each with its rows, columns and depth: libtiff writes one a sample when a float pixel has
    NaN in some of its samples), as (values, 1, 1); None: not a LERC blob's header."""
    if blob.startswith(b"CntZImage "):  # LERC1: version, type, height, width
        _, _, height, width = struct.unpack_from("<iiii", blob, 10)
        return Declared((max(height, 0) * max(width, 0), 1, 1))
    total, pos, found = 0, 0, False
    while blob.startswith(b"Lerc2 ", pos):
        found = True
        (version,) = struct.unpack_from("<i", blob, pos + 6)
        at = pos + 10 + (4 if version >= 3 else 0)  # (the checksum, from version 3)
        rows, cols = struct.unpack_from("<ii", blob, at)
        depth = struct.unpack_from("<i", blob, at + 8)[0] if version >= 4 else 1
        at += 12 if version >= 4 else 8
        _, _, size = struct.unpack_from("<iii", blob, at)  # valid pixels, micro block, size
        total += max(rows, 0) * max(cols, 0) * max(depth, 1)
        if size <= 0:
            break
        pos += size
    return Declared((total, 1, 1)) if found else None
