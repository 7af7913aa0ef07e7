"""PNG files of RGB pixels, compressed by several threads: the previews' and the contact
sheet's writer.

Every row has the Up filter (the row minus the one above, what libpng was asked for before:
a contact sheet is mostly flat rows and thumbnails). The image's zlib stream is compressed
in bands of rows, each band by one thread (the compressor releases the GIL while it works),
each ending on a byte boundary with a full flush so the bands concatenate into one stream,
as pigz does; the stream's Adler-32 is combined from the bands' own. A band is one IDAT
chunk (the zlib header and the Adler-32 one each). libpng (through imagecodecs) compresses
on one thread: a 200-row contact sheet (852 x 57,302 pixels) took about 1.5 s of a run's
6 s there; no library at hand compresses one PNG on several cores. Memory: the bands in
flight, then the compressed file.

The compressor is ISA-L's deflate (python-isal's ``isal_zlib``, zlib's interface) where it
is installed (its wheels: x86-64 and 64-bit ARM), else zlib: about three times as fast on a
sheet's rows, the file up to 2% larger (``bench/png_codecs.py``).
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np

#: a compressor: a module with zlib's ``compressobj`` interface, and the level to use
Deflater = tuple[Any, int]
#: zlib at its fastest level (a contact sheet took ~50 ms at 6, Pillow's default, ~20 at 1)
ZLIB: Deflater = (zlib, 1)
try:
    from isal import isal_zlib

    #: ISA-L at its default level (its levels are 0-3; 1 was as fast, its files a bit larger)
    ISAL: Deflater | None = (isal_zlib, 2)
except ImportError:  # a platform without python-isal's wheels
    ISAL = None
#: what :func:`encode_rgb` compresses with
DEFAULT: Deflater = ISAL or ZLIB

#: bytes of filtered rows one thread compresses at once
BAND_BYTES = 4 * 2**20
SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: the zlib stream's header: deflate, 32 KiB window, "fastest" (a check of it by 31 is 0)
ZLIB_HEADER = b"\x78\x01"
_ADLER_BASE = 65521


def encode_rgb(pixels: np.ndarray, threads: int = 1, deflater: Deflater = DEFAULT) -> bytes:
    """``pixels`` (rows x cols x 3 uint8) as a PNG file, compressed by ``threads`` threads
    with ``deflater``."""
    deflate, level = deflater
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"RGB uint8 pixels expected, not {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    row = width * 3
    rows_per_band = max(1, BAND_BYTES // (row + 1))
    starts = list(range(0, height, rows_per_band))

    def band(i: int) -> tuple[bytes, int, int]:
        y0 = starts[i]
        y1 = min(height, y0 + rows_per_band)
        rows = pixels[y0:y1].reshape(y1 - y0, row)
        filtered = np.empty((y1 - y0, row + 1), np.uint8)
        filtered[:, 0] = 2  # Up
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        above = pixels[y0 - 1].reshape(row) if y0 else np.zeros(row, np.uint8)
        np.subtract(rows[0], above, out=filtered[0, 1:])
        data = memoryview(filtered).cast("B")
        packer = deflate.compressobj(level, deflate.DEFLATED, -15)  # raw deflate: one stream
        last = i == len(starts) - 1
        out = packer.compress(data) + packer.flush(deflate.Z_FINISH if last
                                                   else deflate.Z_FULL_FLUSH)
        return out, zlib.adler32(data), len(data)

    out = rgb_header(width, height)
    append_chunk(out, b"IDAT", ZLIB_HEADER)  # chunks of any size make one stream
    check = 1
    threads = max(1, min(threads, len(starts)))
    with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        # in order as they come: a band's bytes are copied into the file and dropped (one
        # band, a preview's or a short sheet's: compressed here, no thread started)
        bands = pool.map(band, range(len(starts))) if pool else map(band, range(len(starts)))
        for data, adler, size in bands:
            check = adler32_combine(check, adler, size)
            append_chunk(out, b"IDAT", data)
    append_chunk(out, b"IDAT", struct.pack(">I", check))
    append_chunk(out, b"IEND", b"")
    return bytes(out)


def adler32_combine(first: int, second: int, second_size: int) -> int:
    """The Adler-32 of two byte strings one after the other, from each one's and the second's
    length (zlib's ``adler32_combine``, which Python's zlib does not expose)."""
    rem = second_size % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (second & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - rem
    return (sum1 % _ADLER_BASE) | ((sum2 % _ADLER_BASE) << 16)


def rgb_header(width: int, height: int) -> bytearray:
    """A PNG file's start: its signature and the header chunk of 8-bit RGB pixels."""
    out = bytearray(SIGNATURE)
    append_chunk(out, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return out


def append_chunk(out: bytearray, kind: bytes, data: bytes) -> None:
    """Append a chunk (its length, kind, data and CRC) to a PNG file being written."""
    out += struct.pack(">I", len(data))
    out += kind
    out += data
    out += struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
