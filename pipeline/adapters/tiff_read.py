"""Reading TIFF pages without loading them: page info from the IFD, window reads by segments.

A window read decodes only the strips or tiles (segments) that touch the window, each
once. Every failure becomes a named tiffpipe error that names the file and the page,
never wrong pixels.
"""

from __future__ import annotations

import logging
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
        except (EOFError, ValueError, OSError, IndexError) as exc:
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
        return len(tf.pages)
    except (tifffile.TiffFileError, EOFError, ValueError, OSError, IndexError) as exc:
        raise CorruptTiffError(f"{url}: the chain of pages (IFDs) is damaged: {exc}") from exc


def get_page(tf: tifffile.TiffFile, url: str, index: int) -> tifffile.TiffPage:
    count = page_count(tf, url)
    if not 0 <= index < count:
        raise PageNotFoundError(f"{url}: has {count} page(s) (0..{count - 1}), "
                                f"page {index} asked for; fix the job's pages")
    try:
        page = tf.pages[index]
    except (tifffile.TiffFileError, EOFError, ValueError, OSError, IndexError) as exc:
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
    return PageInfo(index=index, height=int(page.imagelength), width=int(page.imagewidth),
                    channels=samples, dtype=np.dtype(page.dtype).name,
                    photometric=_PHOTOMETRICS[photometric],
                    extrasamples=[int(e) for e in page.extrasamples], tiled=tiled,
                    segment_rows=max(seg_rows, 1), compression=cname.lower())


def read_window(tf: tifffile.TiffFile, page: tifffile.TiffPage, url: str, index: int,
                rect: Rect) -> np.ndarray:
    """Decode the pixels of ``rect`` of a page: (h, w) for one sample, else (h, w, samples).

    Only the segments touching ``rect`` are read and decoded, each once.
    """
    where = f"{url}: page {index}"
    height, width = int(page.imagelength), int(page.imagewidth)
    samples = int(page.samplesperpixel)
    separate = page.planarconfig == PLANARCONFIG.SEPARATE and samples > 1
    if page.is_tiled:
        seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
    else:
        seg_h, seg_w = int(min(page.rowsperstrip or height, height)), width
    seg_rows, seg_cols = ceil(height / seg_h), ceil(width / seg_w)
    planes = samples if separate else 1
    wanted = [
        plane * seg_rows * seg_cols + r * seg_cols + c
        for plane in range(planes)
        for r in range(rect.y0 // seg_h, (rect.y1 - 1) // seg_h + 1)
        for c in range(rect.x0 // seg_w, (rect.x1 - 1) // seg_w + 1)
    ]
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) < planes * seg_rows * seg_cols:
        raise CorruptTiffError(f"{where}: has {len(offsets)} segment offsets, "
                               f"{planes * seg_rows * seg_cols} expected; the file is damaged")
    out = np.zeros((rect.height, rect.width, samples), np.dtype(page.dtype))
    fh = tf.filehandle
    file_size = fh.size
    for seg in sorted(wanted, key=lambda i: offsets[i]):
        offset, count = int(offsets[seg]), int(counts[seg])
        if count == 0:
            continue  # sparse segment: zeros, as libtiff reads it
        if offset + count > file_size:
            raise CorruptTiffError(f"{where}: segment {seg} ends at byte {offset + count} but the "
                                   f"file has {file_size} bytes; the file is truncated")
        fh.seek(offset)
        data = fh.read(count)
        if len(data) != count:
            raise CorruptTiffError(f"{where}: segment {seg}: read {len(data)} of {count} bytes; "
                                   "the file is truncated")
        decoded, origin = _decode(page, data, seg, where)
        _paste(out, decoded, origin, rect, separate)
    return out[:, :, 0] if samples == 1 else out


def _decode(page: tifffile.TiffPage, data: bytes, seg: int,
            where: str) -> tuple[np.ndarray, tuple[int, ...]]:
    try:
        decoded, origin, _shape = page.decode(data, seg, jpegtables=page.jpegtables)
    except Exception as exc:  # codecs raise their own error types
        cname = _name(int(page.compression), COMPRESSION)
        raise CorruptTiffError(f"{where}: segment {seg} ({cname}) cannot be decoded: "
                               f"{type(exc).__name__}: {exc}") from exc
    if decoded is None:
        raise CorruptTiffError(f"{where}: segment {seg} decoded to nothing")
    return decoded, origin


def _paste(out: np.ndarray, decoded: np.ndarray, origin: tuple[int, ...], rect: Rect,
           separate: bool) -> None:
    """Copy the part of a decoded segment (1, h, w, s) at ``origin`` that lies in ``rect``."""
    plane, _, y, x = origin[0], origin[1], origin[2], origin[3]
    seg = decoded.reshape(decoded.shape[-3:])
    y0, y1 = max(y, rect.y0), min(y + seg.shape[0], rect.y1)
    x0, x1 = max(x, rect.x0), min(x + seg.shape[1], rect.x1)
    if y0 >= y1 or x0 >= x1:
        return
    src = seg[y0 - y:y1 - y, x0 - x:x1 - x]
    dst = (slice(y0 - rect.y0, y1 - rect.y0), slice(x0 - rect.x0, x1 - rect.x0))
    if separate:
        out[dst[0], dst[1], plane] = src[:, :, 0]
    else:
        out[dst[0], dst[1], :] = src


def read_infos(url: str, pages: list[int] | None) -> list[PageInfo]:
    """Infos of the asked pages of a TIFF (all when ``pages`` is None), reading IFDs only."""
    with open_tiff(url) as tf:
        indices = range(page_count(tf, url)) if pages is None else pages
        return [page_info(get_page(tf, url, i), url, i) for i in indices]
