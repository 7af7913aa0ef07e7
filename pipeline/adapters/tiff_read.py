"""Reading TIFF pages without loading them: page info from the IFD, window reads by segments.

A window read decodes only the strips or tiles (segments) that touch the window, each
once. Every failure becomes a named tiffpipe error that names the file and the page,
never wrong pixels.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from math import ceil
from typing import Any

import numpy as np
import tifffile
from tifffile import COMPRESSION, PHOTOMETRIC, PLANARCONFIG, TIFF

from pipeline.adapters import storage
from pipeline.core.grid import Rect
from pipeline.core.models import PageInfo
from pipeline.errors import (
    CorruptTiffError,
    NotATiffError,
    PageNotFoundError,
    UnsupportedTiffError,
)

# Compressions that tifffile lists but cannot decode correctly: refuse them up front.
_UNDECODABLE = {
    6: "old-style JPEG (OJPEG): re-save the file with new-style JPEG or a lossless codec",
    34676: "SGILOG (LogLuv): convert the file to float32 first",
    34677: "SGILOG24 (LogLuv): convert the file to float32 first",
}
#: a compressed segment must be decoded whole: refuse pages whose segments are larger than
#: this (an uncompressed strip is read by rows, whatever its size)
MAX_SEGMENT_BYTES = 512 * 2**20
_PHOTOMETRICS = {PHOTOMETRIC.MINISBLACK: "minisblack", PHOTOMETRIC.RGB: "rgb"}

# tifffile logs (and recovers from) damaged IFDs; we raise our own errors instead.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _name(value: Any, enum: Any) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


@contextmanager
def open_tiff(url: str) -> Iterator[tifffile.TiffFile]:
    """Open a local or S3 TIFF for page-level reads (S3 by ranged GETs)."""
    with storage.open_input(url) as fh:
        try:
            tf = tifffile.TiffFile(fh, name=url)
        except tifffile.TiffFileError as exc:
            text = str(exc)
            if "not a TIFF" in text or "invalid TIFF" in text:
                raise NotATiffError(f"{url}: not a TIFF file ({text}); give a .tif/.tiff file")
            raise CorruptTiffError(f"{url}: the TIFF header or first IFD is damaged "
                                   f"({text})") from exc
        except (EOFError, ValueError, OSError, IndexError, struct.error) as exc:
            raise CorruptTiffError(f"{url}: cannot read the TIFF structure, the file is truncated "
                                   f"or damaged ({type(exc).__name__}: {exc})") from exc
        try:
            yield tf
        finally:
            tf.close()


def page_count(tf: tifffile.TiffFile, url: str) -> int:
    """Pages in the main IFD chain. (Call ``len`` first: iterating ``tf.pages`` of a file
    with an IFD loop never ends in tifffile, while ``len`` detects the loop.)"""
    try:
        count = len(tf.pages)
    except (tifffile.TiffFileError, EOFError, ValueError, OSError, IndexError,
            struct.error) as exc:
        raise CorruptTiffError(f"{url}: the chain of pages (IFDs) is damaged: {exc}") from exc
    if count == 0:
        raise CorruptTiffError(f"{url}: the TIFF has no readable page (its first IFD is missing "
                               "or truncated)")
    return count


def get_page(tf: tifffile.TiffFile, url: str, index: int) -> tifffile.TiffPage:
    count = page_count(tf, url)
    if not 0 <= index < count:
        raise PageNotFoundError(f"{url}: has {count} page(s) (0..{count - 1}), "
                                f"page {index} asked for; fix the job's pages")
    try:
        page = tf.pages[index]
    except (tifffile.TiffFileError, EOFError, ValueError, OSError, IndexError,
            struct.error) as exc:
        raise CorruptTiffError(f"{url}: page {index}: its IFD is damaged: {exc}") from exc
    if not isinstance(page, tifffile.TiffPage):
        page = page.aspage()
    return page


def page_info(page: tifffile.TiffPage, url: str, index: int) -> PageInfo:
    """What a plan needs of a page, or UnsupportedTiffError saying why it can't be processed."""
    where = f"{url}: page {index}"
    compression = int(page.compression)
    cname = _name(compression, COMPRESSION)
    if compression in _UNDECODABLE:
        raise UnsupportedTiffError(f"{where}: compression {cname} is not supported: "
                                   f"{_UNDECODABLE[compression]}")
    if compression != 1 and compression not in TIFF.DECOMPRESSORS:
        raise UnsupportedTiffError(f"{where}: compression {cname} ({compression}) cannot be "
                                   "decoded here; re-save the file with zstd, deflate or LZW")
    photometric = int(page.photometric)
    if photometric == PHOTOMETRIC.YCBCR and compression == 7:
        photometric = PHOTOMETRIC.RGB  # JPEG decodes YCbCr to RGB
    if photometric not in _PHOTOMETRICS:
        raise UnsupportedTiffError(
            f"{where}: photometric {_name(photometric, PHOTOMETRIC)} is not supported "
            "(supported: MINISBLACK gray and RGB, with alpha); convert the page to gray or RGB")
    if page.imagedepth > 1:
        raise UnsupportedTiffError(f"{where}: volumetric pages (ImageDepth {page.imagedepth}) "
                                   "are not supported")
    if page.bitspersample not in (8, 16, 32, 64) or page.dtype is None:
        raise UnsupportedTiffError(f"{where}: {page.bitspersample}-bit samples are not supported "
                                   "(supported: 8, 16, 32 and 64 bit)")
    samples = int(page.samplesperpixel)
    if samples > 4:
        raise UnsupportedTiffError(f"{where}: {samples} samples per pixel (at most 4 supported)")
    tiled = bool(page.is_tiled)
    seg_rows = int(page.tilelength) if tiled else int(min(page.rowsperstrip or page.imagelength,
                                                           page.imagelength))
    per_segment = 1 if page.planarconfig == PLANARCONFIG.SEPARATE else samples
    seg_bytes = seg_rows * (int(page.tilewidth) if tiled else int(page.imagewidth)) * \
        per_segment * np.dtype(page.dtype).itemsize
    if compression != 1 and seg_bytes > MAX_SEGMENT_BYTES:
        raise UnsupportedTiffError(
            f"{where}: one {'tile' if tiled else 'strip'} decodes to {seg_bytes / 2**20:.0f} MiB "
            f"(more than {MAX_SEGMENT_BYTES // 2**20} MiB), which cannot be read in bounded memory; "
            "re-save the file tiled (for example 512x512 tiles) or with smaller strips")
    return PageInfo(index=index, height=int(page.imagelength), width=int(page.imagewidth),
                    channels=samples, dtype=np.dtype(page.dtype).name,
                    photometric=_PHOTOMETRICS[photometric],
                    extrasamples=[int(e) for e in page.extrasamples], tiled=tiled,
                    segment_rows=max(seg_rows, 1), compression=cname.lower())


class PageReader:
    """Reads windows of one page, decoding each segment (strip or tile) at most once while it
    stays cached. :meth:`forget_above` drops segments a downward sweep no longer needs, so a
    band read row of tiles by row of tiles holds only about one tile row of segments.

    Uncompressed strips are read row by row (byte ranges), never whole: files written with
    one giant strip stay readable in bounded memory.
    """

    def __init__(self, tf: tifffile.TiffFile, page: tifffile.TiffPage, url: str, index: int):
        self.tf, self.page, self.where = tf, page, f"{url}: page {index}"
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.samples = int(page.samplesperpixel)
        self.dtype = np.dtype(page.dtype)
        self.separate = page.planarconfig == PLANARCONFIG.SEPARATE and self.samples > 1
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h = int(min(page.rowsperstrip or self.height, self.height))
            self.seg_w = self.width
        self.seg_rows, self.seg_cols = ceil(self.height / self.seg_h), ceil(self.width / self.seg_w)
        self.planes = self.samples if self.separate else 1
        self.raw_strips = int(page.compression) == 1 and not page.is_tiled
        self.cache: dict[int, tuple[np.ndarray, int, int, int]] = {}  # seg -> (px, plane, y, x)
        self.decoded = 0  # segments decoded so far (tests check each is decoded once)
        needed = self.planes * self.seg_rows * self.seg_cols
        if len(page.dataoffsets) < needed or len(page.databytecounts) < needed:
            raise CorruptTiffError(f"{self.where}: has {len(page.dataoffsets)} segment offsets, "
                                   f"{needed} expected; the file is damaged")

    def read(self, rect: Rect) -> np.ndarray:
        """The pixels of ``rect``: (h, w) for one sample, else (h, w, samples)."""
        out = np.zeros((rect.height, rect.width, self.samples), self.dtype)
        rows = range(rect.y0 // self.seg_h, (rect.y1 - 1) // self.seg_h + 1)
        cols = range(rect.x0 // self.seg_w, (rect.x1 - 1) // self.seg_w + 1)
        for plane in range(self.planes):
            for r in rows:
                for c in cols:
                    seg = (plane * self.seg_rows + r) * self.seg_cols + c
                    if self.raw_strips:
                        self._paste(out, *self._raw_rows(seg, plane, r, rect), rect)
                        continue
                    if seg not in self.cache:
                        self.cache[seg] = self._decode(seg)
                    self._paste(out, *self.cache[seg], rect)
        return out[:, :, 0] if self.samples == 1 else out

    def forget_above(self, y: int) -> None:
        """Drop the cached rows above row ``y``: segments that end there are dropped, segments
        that straddle it keep only their rows from ``y`` on (a downward sweep needs no more)."""
        for seg, (px, plane, y0, x0) in list(self.cache.items()):
            if y0 + px.shape[0] <= y:
                del self.cache[seg]
            elif y0 < y:
                self.cache[seg] = (px[y - y0:].copy(), plane, y, x0)

    def _read(self, seg: int, start: int, count: int) -> bytes:
        fh = self.tf.filehandle
        if start + count > fh.size:
            raise CorruptTiffError(f"{self.where}: segment {seg} ends at byte {start + count} "
                                   f"but the file has {fh.size} bytes; the file is truncated")
        fh.seek(start)
        data = fh.read(count)
        if len(data) != count:
            raise CorruptTiffError(f"{self.where}: segment {seg}: read {len(data)} of {count} "
                                   "bytes; the file is truncated")
        return data

    def _decode(self, seg: int) -> tuple[np.ndarray, int, int, int]:
        offset, count = int(self.page.dataoffsets[seg]), int(self.page.databytecounts[seg])
        self.decoded += 1
        if count == 0:  # sparse segment: zeros, as libtiff reads it
            plane, rest = divmod(seg, self.seg_rows * self.seg_cols)
            r, c = divmod(rest, self.seg_cols)
            depth = 1 if self.separate else self.samples
            return (np.zeros((self.seg_h, self.seg_w, depth), self.dtype), plane,
                    r * self.seg_h, c * self.seg_w)
        data = self._read(seg, offset, count)
        try:
            decoded, origin, _ = self.page.decode(data, seg, jpegtables=self.page.jpegtables)
        except Exception as exc:  # codecs raise their own error types
            cname = _name(int(self.page.compression), COMPRESSION)
            raise CorruptTiffError(f"{self.where}: segment {seg} ({cname}) cannot be decoded: "
                                   f"{type(exc).__name__}: {exc}") from exc
        if decoded is None:
            raise CorruptTiffError(f"{self.where}: segment {seg} decoded to nothing")
        return decoded.reshape(decoded.shape[-3:]), origin[0], origin[2], origin[3]

    def _raw_rows(self, seg: int, plane: int, r: int,
                  rect: Rect) -> tuple[np.ndarray, int, int, int]:
        """The rows of an uncompressed strip that ``rect`` needs, read as one byte range."""
        strip_y = r * self.seg_h
        y0, y1 = max(rect.y0, strip_y), min(rect.y1, strip_y + self.seg_h, self.height)
        depth = 1 if self.separate else self.samples
        row_bytes = self.width * depth * self.dtype.itemsize
        data = self._read(seg, int(self.page.dataoffsets[seg]) + (y0 - strip_y) * row_bytes,
                          (y1 - y0) * row_bytes)
        file_dtype = self.dtype.newbyteorder(self.tf.byteorder)
        rows = np.frombuffer(data, file_dtype).reshape(y1 - y0, self.width, depth)
        return rows.astype(self.dtype, copy=False), plane, y0, 0

    def _paste(self, out: np.ndarray, seg: np.ndarray, plane: int, y: int, x: int,
               rect: Rect) -> None:
        """Copy the part of a segment ((h, w, s) at (y, x)) that lies in ``rect``."""
        y0, y1 = max(y, rect.y0), min(y + seg.shape[0], rect.y1)
        x0, x1 = max(x, rect.x0), min(x + seg.shape[1], rect.x1)
        if y0 >= y1 or x0 >= x1:
            return
        src = seg[y0 - y:y1 - y, x0 - x:x1 - x]
        dst = (slice(y0 - rect.y0, y1 - rect.y0), slice(x0 - rect.x0, x1 - rect.x0))
        if self.separate:
            out[dst[0], dst[1], plane] = src[:, :, 0]
        else:
            out[dst[0], dst[1], :] = src


def read_window(tf: tifffile.TiffFile, page: tifffile.TiffPage, url: str, index: int,
                rect: Rect) -> np.ndarray:
    """Decode the pixels of ``rect`` of a page: (h, w) for one sample, else (h, w, samples).
    Only the segments touching ``rect`` are read and decoded, each once."""
    return PageReader(tf, page, url, index).read(rect)


def read_infos(url: str, pages: list[int] | None) -> list[PageInfo]:
    """Infos of the asked pages of a TIFF (all when ``pages`` is None), reading IFDs only."""
    with open_tiff(url) as tf:
        indices = range(page_count(tf, url)) if pages is None else pages
        return [page_info(get_page(tf, url, i), url, i) for i in indices]
