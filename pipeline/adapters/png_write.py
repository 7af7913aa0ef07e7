"""PNG files of RGB pixels, compressed by several threads: the previews' and the contact
sheet's writer.

Every row has the Up filter (the row minus the one above, what libpng was asked for before:
a contact sheet is mostly flat rows and thumbnails). The image's zlib stream is compressed
in bands of rows, each band by one thread (the compressor releases the GIL while it works),
each ending on a byte boundary with a full flush so the bands concatenate into one stream,
as pigz does; the stream's Adler-32 is combined from the bands' own. A band is one IDAT
chunk (the zlib header and the Adler-32 one each). libpng (through imagecodecs) compresses
on one thread: a 200-row contact sheet (852 x 57,302 pixels) took about 1.5 s of a run's
6 s there; no library at hand compresses one PNG on several cores. The rows may come a
block at a time (:func:`encode_rows`, :class:`RgbPngWriter`): the contact sheet draws its
next rows while the threads compress those it drew. Memory: the bands in flight, then the
compressed file.

The compressor is ISA-L's deflate (python-isal's ``isal_zlib``, zlib's interface) where it
is installed (its wheels: x86-64 and 64-bit ARM), else zlib: about three times as fast on a
sheet's rows, the file up to 2% larger (``bench/png_codecs.py``).
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self

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
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"RGB uint8 pixels expected, not {pixels.shape} {pixels.dtype}")
    return encode_rows(pixels.shape[1], pixels.shape[0], [pixels], threads, deflater)


def encode_rows(width: int, height: int, blocks: Iterable[np.ndarray], threads: int = 1,
                deflater: Deflater = DEFAULT) -> bytes:
    """A PNG file of ``width`` x ``height`` RGB pixels from ``blocks`` of rows in order (each
    any number x ``width`` x 3 uint8; an iterator may make each block as it is asked for),
    compressed by ``threads`` threads while the next blocks come (:class:`RgbPngWriter`)."""
    with RgbPngWriter(width, height, threads, deflater) as png:
        for rows in blocks:
            png.add(rows)
        return png.finish()


class RgbPngWriter:
    """A PNG of ``height`` x ``width`` RGB pixels given a block of rows at a time, in order
    (:meth:`add`), compressed meanwhile by ``threads`` threads a band of rows each: whoever
    draws the rows (the contact sheet, in Python) draws the next ones while the threads
    compress. Memory: the bands being compressed or waiting to be (at most twice the
    threads), a band's rows being gathered, and the compressed file. A context manager (its
    threads stop at the end); :meth:`finish` returns the file."""

    def __init__(self, width: int, height: int, threads: int = 1,
                 deflater: Deflater = DEFAULT):
        if width < 1 or height < 1:
            raise ValueError(f"a PNG of {width} x {height} pixels cannot be written")
        self.width, self.height, self.deflater = width, height, deflater
        self.row_bytes = width * 3
        self.band_rows = max(1, BAND_BYTES // (self.row_bytes + 1))
        bands = -(-height // self.band_rows)
        self.threads = max(1, min(threads, bands))
        # one band (a preview, a short sheet): compressed as it comes, no thread started
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._waiting: deque[Future[tuple[bytes, int, int]]] = deque()
        self._gathered: list[np.ndarray] = []  # rows of the band being gathered
        self._gathered_rows = 0
        self._above = np.zeros(self.row_bytes, np.uint8)  # the row above the next band
        self._rows_in = self._rows_sent = 0
        self._check = 1
        self._out = rgb_header(width, height)
        append_chunk(self._out, b"IDAT", ZLIB_HEADER)  # chunks of any size make one stream

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, rows: np.ndarray) -> None:
        """The next ``rows`` (any number x ``width`` x 3 uint8) of the image. The threads
        read them until :meth:`finish`: they must not change meanwhile."""
        if rows.ndim != 3 or rows.shape[1:] != (self.width, 3) or rows.dtype != np.uint8:
            raise ValueError(f"rows of {self.width} RGB uint8 pixels expected, not "
                             f"{rows.shape} {rows.dtype}")
        if self._rows_in + len(rows) > self.height:
            raise ValueError(f"more than the PNG's {self.height} rows given")
        self._rows_in += len(rows)
        flat = rows.reshape(len(rows), self.row_bytes)  # a view of rows of whole pixels
        while len(flat):
            take = min(len(flat), self.band_rows - self._gathered_rows)
            self._gathered.append(flat[:take])
            self._gathered_rows += take
            flat = flat[take:]
            at_end = not len(flat) and self._rows_in == self.height
            if self._gathered_rows == self.band_rows or at_end:
                self._send()

    def finish(self) -> bytes:
        """The PNG file (every row given)."""
        if self._rows_in != self.height:
            raise ValueError(f"{self._rows_in} of the PNG's {self.height} rows given")
        while self._waiting:
            self._take(self._waiting.popleft().result())
        append_chunk(self._out, b"IDAT", struct.pack(">I", self._check))
        append_chunk(self._out, b"IEND", b"")
        return bytes(self._out)

    def _send(self) -> None:
        """The gathered band to a thread (or compressed here, without threads)."""
        rows = self._gathered[0] if len(self._gathered) == 1 else np.concatenate(self._gathered)
        self._gathered, self._gathered_rows = [], 0
        self._rows_sent += len(rows)
        band = (rows, self._above, self._rows_sent == self.height, self.deflater)
        self._above = rows[-1]
        if self._pool is None:
            self._take(_deflate_band(*band))
            return
        self._waiting.append(self._pool.submit(_deflate_band, *band))
        while len(self._waiting) > 2 * self.threads:  # in order: a band's bytes go to the file
            self._take(self._waiting.popleft().result())

    def _take(self, band: tuple[bytes, int, int]) -> None:
        """A compressed band into the file (its bytes, Adler-32 and filtered length)."""
        data, adler, size = band
        self._check = adler32_combine(self._check, adler, size)
        append_chunk(self._out, b"IDAT", data)


def _deflate_band(rows: np.ndarray, above: np.ndarray, last: bool, deflater: Deflater
                  ) -> tuple[bytes, int, int]:
    """A band of rows (rows x row bytes) filtered by Up (``above``: the row before the band)
    and deflated as part of one raw stream: its bytes (ending on a full flush, or the
    stream's end after the ``last`` band), the Adler-32 and the length of its filtered
    rows."""
    deflate, level = deflater
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # Up
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    np.subtract(rows[0], above, out=filtered[0, 1:])
    data = memoryview(filtered).cast("B")
    packer = deflate.compressobj(level, deflate.DEFLATED, -15)  # raw deflate: one stream
    out = packer.compress(data) + packer.flush(deflate.Z_FINISH if last
                                               else deflate.Z_FULL_FLUSH)
    return out, zlib.adler32(data), len(data)


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
