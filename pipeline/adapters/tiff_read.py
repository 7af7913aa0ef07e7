"""Reading TIFF pages without loading them: page info from the IFD, window reads by segments.

A window read decodes only the strips or tiles (segments) that touch the window, each
once. Every failure becomes a named tiffpipe error that names the file and the page,
never wrong pixels.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from math import ceil
from typing import Any, NamedTuple

import imagecodecs
import numpy as np
import tifffile
from tifffile import COMPRESSION, PHOTOMETRIC, PLANARCONFIG, SAMPLEFORMAT, TIFF

from pipeline.adapters import kept_files, ojpeg, storage
from pipeline.adapters.metadata import (
    convert_nodata,
    gray_colormap_values,
    read_metadata,
    sample_top,
)
from pipeline.core import segment_header
from pipeline.core.grid import Rect
from pipeline.core.models import PageInfo
from pipeline.errors import (
    CorruptTiffError,
    NotATiffError,
    PageNotFoundError,
    TiffpipeError,
    UnsupportedTiffError,
    exhausted,
    is_out_of_memory,
)

# Compressions that tifffile lists but cannot decode correctly: refuse them up front.
# (Old-style JPEG is decoded by libtiff instead: pipeline/adapters/ojpeg.py.)
_UNDECODABLE = {
    34676: "SGILOG (LogLuv): convert the file to float32 first",
    34677: "SGILOG24 (LogLuv): convert the file to float32 first",
}
#: a compressed segment must be decoded whole, and a tile is read whole: refuse pages whose
#: segments are larger than this, counting every plane of a planar page (a window holds
#: them together; an uncompressed strip is read by rows, whatever its size)
MAX_SEGMENT_BYTES = 512 * 2**20
#: ... and an uncompressed strip, read by rows, is read whole rows wide: the fewest rows a
#: processing tile reads (the smallest tile, 64 px) must fit it too (a 134-byte file of one
#: sparse strip, 1,000,000 px wide with 100 float64 samples, asked 381 GiB of a unit)
RAW_FEWEST_ROWS = 64
#: why a photometric interpretation is refused, and what to do instead
_REFUSED_PHOTOMETRICS = {
    PHOTOMETRIC.YCBCR: "YCbCr is decoded to RGB only inside JPEG compression; re-save the file "
                       "as RGB",
    PHOTOMETRIC.CIELAB: "CIE L*a*b* is not converted; convert the file to RGB first",
    PHOTOMETRIC.ICCLAB: "ICC L*a*b* is not converted; convert the file to RGB first",
    PHOTOMETRIC.ITULAB: "ITU L*a*b* is not converted; convert the file to RGB first",
    PHOTOMETRIC.MASK: "a transparency mask is the valid area of another page, not an image "
                       "to process; pick an image page (a job without pages leaves mask "
                       "pages out)",
    PHOTOMETRIC.CFA: "colour filter array (raw sensor) data needs demosaicing; develop it first",
    PHOTOMETRIC.LOGL: "LogL needs a float conversion; convert the file to float32 first",
    PHOTOMETRIC.LOGLUV: "LogLuv needs a float conversion; convert the file to float32 first",
}
#: what to do about a file whose segment data is damaged or truncated (in every such error)
REPAIR = ("copy it again from its source or export it again, then check that tifffile.imread "
          "or tiffinfo -D reads it whole")
#: LERC compression (Esri's, written by GDAL as LERC, LERC_DEFLATE and LERC_ZSTD): its
#: segments hold a mask of valid pixels, which tifffile's decode drops (PageReader._decode_lerc)
LERC = 34887
#: deflate and zstd (each's two codes): a last strip that holds a whole strip's rows is read
#: as libtiff reads it (PageReader._whole_height_strip); LZW's decoder already stops there
_DEFLATE = (COMPRESSION.ADOBE_DEFLATE, COMPRESSION.DEFLATE)
_ZSTD = (COMPRESSION.ZSTD, COMPRESSION.ZSTD_DEPRECATED)
#: CCITT RLE, Group 3 and Group 4 fax: 1-bit pixels of one sample only
_CCITT = (COMPRESSION.CCITTRLE, COMPRESSION.CCITT_T4, COMPRESSION.CCITT_T6)
#: ExtraSamples UNASSALPHA: an 8-bit alpha sample libtiff stores as a LERC segment's mask
_UNASSALPHA = 2
#: sample formats of complex numbers (integer and float pairs): refused, see pixel_kind
_COMPLEX_FORMATS = (SAMPLEFORMAT.COMPLEXINT, SAMPLEFORMAT.COMPLEXIEEEFP)

# tifffile logs (and recovers from) damaged IFDs; we raise our own errors instead.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)
#: what tifffile raises on a damaged chain of pages or IFD (TypeError: a tag it compares as
#: a number stored as bytes, e.g. SamplesPerPixel of type UNDEFINED)
IFD_ERRORS = (tifffile.TiffFileError, EOFError, ValueError, OSError, IndexError, struct.error,
              TypeError)
#: the tags of a page's layout the reader takes its pixels from: each holds integers
_LAYOUT_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample",
                259: "Compression", 262: "PhotometricInterpretation", 266: "FillOrder",
                273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip",
                279: "StripByteCounts", 284: "PlanarConfiguration", 317: "Predictor",
                322: "TileWidth", 323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts",
                338: "ExtraSamples", 339: "SampleFormat"}
#: the TIFF types of integers (BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, IFD, LONG8, SLONG8,
#: IFD8): what libtiff reads a layout tag from (any other type fails its read)
_INTEGER_TYPES = frozenset({1, 3, 4, 6, 8, 9, 13, 16, 17, 18})


def _name(value: Any, enum: Any) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


@contextmanager
def open_tiff(url: str, version: str | None = None) -> Iterator[tifffile.TiffFile]:
    """Open a local or S3 TIFF for page-level reads (S3 by ranged GETs). ``version``: the
    one its job's plan read (another there: :class:`InputChangedError`)."""
    with storage.open_input(url, version=version) as fh, _parsed(fh, url) as tf:
        yield tf


def _convert(fmt: str) -> str:
    return f"convert it first, e.g. magick {fmt}:in.tif out.tif (ImageMagick), and give that file"


#: what a file that is no TIFF often is, by its first bytes: a test of them, what it is, and
#: what to do
OTHER_FORMATS: tuple[tuple[Callable[[bytes], bool], str, str], ...] = (
    (lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "a PNG image", _convert("PNG")),
    (lambda b: b.startswith(b"\xff\xd8\xff"), "a JPEG image", _convert("JPEG")),
    (lambda b: b.startswith((b"GIF87a", b"GIF89a")), "a GIF image", _convert("GIF")),
    (lambda b: b.startswith(b"RIFF") and b[8:12] == b"WEBP", "a WebP image", _convert("WEBP")),
    # (BM, the file's size, then 4 reserved bytes of 0)
    (lambda b: b.startswith(b"BM") and b[6:10] == bytes(4), "a BMP image", _convert("BMP")),
    (lambda b: b.startswith(b"%PDF-"), "a PDF document",
     ("render its pages as TIFF first, e.g. pdftoppm -tiff -r 300 in.tif page (poppler), and "
      "give those files")),
    (lambda b: b.startswith(b"PK\x03\x04"), "a ZIP archive",
     "unpack it and give the TIFF inside"),
)


def other_format(first: bytes) -> tuple[str, str] | None:
    """(what the file is, what to do) for a file that is no TIFF whose ``first`` bytes (16)
    are another common format's (:data:`OTHER_FORMATS`), or None."""
    return next(((what, todo) for test, what, todo in OTHER_FORMATS if test(first)), None)


def _first_bytes(fh: Any) -> bytes:
    """The first 16 bytes of the open file ``fh`` (b"" if they cannot be read)."""
    try:
        fh.seek(0)
        return bytes(fh.read(16))
    except Exception:  # noqa: BLE001 - only the name of the format is lost (the error stands)
        return b""


@contextmanager
def _parsed(fh: Any, url: str) -> Iterator[tifffile.TiffFile]:
    """tifffile's view of the open file ``fh``: its header and first IFD read, named errors."""
    try:
        tf = tifffile.TiffFile(fh, name=url)
    except tifffile.TiffFileError as exc:
        text = str(exc)
        if "not a TIFF" in text or "invalid TIFF" in text:
            head = text.split("header=", 1)[1] if "header=" in text else None
            known = other_format(_first_bytes(fh))
            if known is not None and head:
                what, todo = known
                raise NotATiffError(f"{url}: not a TIFF file: this is {what} (it begins {head}), "
                                    f"not a TIFF: {todo}") from exc
            why = ("it is empty: 0 bytes" if head == "b''" else
                   f"it begins {head}, not II*\\0 or MM\\0*" if head else text)
            raise NotATiffError(f"{url}: not a TIFF file ({why}): give a TIFF file, or "
                                "export this one as TIFF again") from exc
        raise CorruptTiffError(f"{url}: the TIFF header or first IFD is damaged "
                               f"({text}); {REPAIR}") from exc
    except (EOFError, ValueError, OSError, IndexError, struct.error, TypeError) as exc:
        if (bad := _first_ifd_layout_tag(fh)) is not None:
            raise _layout_tag_error(f"{url}: page 0", *bad) from exc
        raise CorruptTiffError(f"{url}: cannot read the TIFF structure, the file is truncated "
                               f"or damaged ({type(exc).__name__}: {exc}); {REPAIR}") from exc
    try:
        yield tf
    finally:
        tf.close()


def _layout_entries(fh: Any, offset: int, tiff: Any) -> list[tuple[int, int]]:
    """(code, TIFF type) of each layout tag (:data:`_LAYOUT_TAGS`) in the IFD at ``offset``
    of the open file ``fh`` laid out as ``tiff`` (tifffile's TiffFormat), read from its
    entries as stored: tifffile drops an entry of a type it does not know (logging it), and
    the page is then read with the tag's default. A tag stored twice: its first entry only,
    the one tifffile keeps (libtiff ignores the later ones)."""
    fh.seek(offset)
    (count,) = struct.unpack(tiff.tagnoformat, fh.read(tiff.tagnosize))
    data = fh.read(min(count, _MOST_TAGS) * tiff.tagsize)
    heads = (struct.unpack_from(f"{tiff.byteorder}HH", data, at)
             for at in range(0, len(data) - tiff.tagsize + 1, tiff.tagsize))
    first: dict[int, int] = {}
    for code, kind in heads:
        if code in _LAYOUT_TAGS:
            first.setdefault(code, kind)
    return list(first.items())


def _layout_tag_error(where: str, code: int, kind: int) -> CorruptTiffError:
    """The refusal of a page whose layout tag ``code``, stored as type ``kind``, cannot be
    read (no integers, or tifffile could not read its value)."""
    why = ("not integers, so its value cannot be read" if kind not in _INTEGER_TYPES else
           "and its value cannot be read")
    return CorruptTiffError(
        f"{where}: its {_LAYOUT_TAGS[code]} tag ({code}) is stored as type "
        f"{_name(kind, tifffile.DATATYPE)}, {why} (a reader that skips it takes the tag's "
        f"default: a wrong image); the file is damaged or was written wrongly: {REPAIR}")


def _first_ifd_layout_tag(fh: Any) -> tuple[int, int] | None:
    """:func:`_bad_layout_tag` of the file's first IFD (None also when the header cannot be
    read): why tifffile failed to parse the first page."""
    try:
        fh.seek(0)
        head = bytes(fh.read(16))
        tiff = {b"II*\0": TIFF.CLASSIC_LE, b"MM\0*": TIFF.CLASSIC_BE,
                b"II+\0": TIFF.BIG_LE, b"MM\0+": TIFF.BIG_BE}[head[:4]]
        at = 8 if tiff.offsetsize == 8 else 4
        (offset,) = struct.unpack_from(tiff.offsetformat, head, at)
    except (KeyError, struct.error, OSError, ValueError):
        return None
    return _bad_layout_tag(fh, offset, tiff)


def _bad_layout_tag(fh: Any, offset: int, tiff: Any) -> tuple[int, int] | None:
    """(code, type) of the first layout tag of the IFD at ``offset`` (laid out as ``tiff``)
    stored as no integers (:func:`_layout_entries`), or None (none, or the IFD cannot be
    read): why tifffile failed to parse that page (an UNDEFINED SamplesPerPixel: a
    TypeError)."""
    try:
        entries = _layout_entries(fh, offset, tiff)
    except (struct.error, OSError, ValueError):
        return None
    return next(((c, k) for c, k in entries if k not in _INTEGER_TYPES), None)


def _page_error(tf: tifffile.TiffFile, url: str, index: int, exc: Exception,
                offset: int | None = None) -> CorruptTiffError:
    """The refusal of page ``index`` whose IFD (at ``offset``; None: found along the chain)
    tifffile failed to parse with ``exc`` (one of :data:`IFD_ERRORS`): the layout tag stored
    as no integers when that is why (:func:`_layout_tag_error`), else its IFD is damaged."""
    try:
        at = _walk(tf).offsets[index] if offset is None else offset
    except (IndexError, TypeError):
        at = None
    bad = None if at is None else _bad_layout_tag(tf.filehandle, at, tf.tiff)
    if bad is not None:
        return _layout_tag_error(f"{url}: page {index}", *bad)
    return CorruptTiffError(f"{url}: page {index}: its IFD is damaged ({exc}); {REPAIR}")


def check_layout_tags(page: tifffile.TiffPage, where: str) -> None:
    """CorruptTiffError naming the tag if a layout tag of the page (:data:`_LAYOUT_TAGS`:
    its size, samples, bits, coding, segments) is in its IFD but tifffile could not read it
    (a type that is no TIFF type: tifffile drops the entry, and a BitsPerSample dropped read
    an 8-bit palette page as 1-bit, a wrong output, exit 0) or it is stored as no integers
    (an UNDEFINED SamplesPerPixel failed in tifffile with a TypeError). Found from the IFD's
    entries as stored: one read of them, at the plan. A tag stored twice is checked in its
    first entry, the one tifffile keeps (libtiff ignores the later ones): see
    :func:`_layout_entries`."""
    try:
        entries = _layout_entries(page.parent.filehandle, int(page.offset), page.parent.tiff)
    except (struct.error, OSError, ValueError):
        return  # (tifffile read this IFD: it was there)
    for code, kind in entries:
        if kind not in _INTEGER_TYPES or code not in page.tags:
            raise _layout_tag_error(where, code, kind)


#: whether this thread's kept TIFF (kept_tiff) is in use
_kept_in_use = threading.local()


@contextmanager
def kept_tiff(url: str, version: str | None = None) -> Iterator[tifffile.TiffFile]:
    """:func:`open_tiff` for a thread that reads units of one local file one after another
    (a file of many small pages: a unit a page). The thread's last TIFF stays open while
    the file is unchanged (device, inode, size, modification time), so opening it and
    parsing its first IFD (~0.4 ms of a 512 x 512 page's ~6 ms) is paid once per thread,
    not once per unit. S3 inputs are opened each time (a Lambda serves one unit). A
    failure while it is in use closes it; the engine closes the kept files when a run ends
    (:func:`pipeline.adapters.kept_files.close_all`). Callers read it in their own thread
    only, as :class:`PageReader` does. A thread that opens a second file while its kept
    one is in use gets it opened for that use only: keeping it would close the one in use."""
    try:
        st = None if storage.is_s3(url) else os.stat(url)
    except OSError:
        st = None  # open_tiff says what is wrong
    if st is None or getattr(_kept_in_use, "active", False):
        with open_tiff(url, version) as tf:
            yield tf
        return
    storage.check_version(url, version, storage.file_version(st))
    key = _kept_key(url, st)
    tf = kept_files.take(key)
    if tf is None:
        handed = kept_files.take_handed(key)  # PlanJob's, for its job's unit
        if handed is not None:
            tf, close = handed
            kept_files.keep(key, tf, close)
        else:
            stack = ExitStack()
            tf = stack.enter_context(open_tiff(url, version))
            kept_files.keep(key, tf, stack.close)
    _kept_in_use.active = True
    try:
        yield tf
    except Exception:  # not GeneratorExit: a caller that stops early leaves it usable
        kept_files.drop()
        raise
    finally:
        _kept_in_use.active = False


def check_unchanged(tf: tifffile.TiffFile, url: str, version: str | None) -> None:
    """:class:`InputChangedError` if the local file open as ``tf`` is no longer the
    ``version`` its job was planned on: one ``fstat`` of the open file (its size and
    modification time), for a unit after its last read, before its output is kept. A file
    written to in place (same inode) while a unit read it gave it pixels of both versions;
    the check when the unit opened it could not see that. S3 inputs need none: every
    ranged GET is pinned to the ETag seen at open (If-Match), so a replaced object fails
    the read itself."""
    if not version or storage.is_s3(url):
        return
    storage.check_version(url, version, storage.file_version(os.fstat(tf.filehandle.fileno())))


def _kept_key(url: str, st: os.stat_result) -> tuple[Any, ...]:
    """A local file's identity while unchanged (path, device, inode, size, mtime)."""
    return (url, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


#: the chain of pages of an open file (:func:`_chain`), walked once per open file
_chains: weakref.WeakKeyDictionary[tifffile.TiffFile, _Chain] = weakref.WeakKeyDictionary()


class _Chain(NamedTuple):
    """The main chain of pages of an open file: ``count`` pages; ``offsets``, their IFD
    offsets when tiffpipe walked the chain itself (None: tifffile's pages are all of them);
    ``broken``, why the chain breaks after the last page ("": it does not); ``loop``, (the
    last page, the page its next-IFD pointer leads back to) when the chain loops."""

    count: int
    offsets: list[int] | None
    broken: str
    loop: tuple[int, int] | None = None


def _chain(tf: tifffile.TiffFile, url: str) -> _Chain:
    """The chain of pages, read once per open file. tifffile's ``len(tf.pages)`` ends a
    loop only after 100 offsets, at the first occurrence of the 100th: a 3-page file whose
    last page points back to the first read as 1 page. When the last page tifffile read
    points on (not 0), the chain is walked again here with the offsets seen, IFD offsets
    only (two small reads per page): a loop back to page k ends the chain after the pages
    before the loop, every one of them read."""
    chain = _chains.get(tf)
    if chain is not None:
        return chain
    try:
        count = len(tf.pages)
    except IFD_ERRORS as exc:
        raise CorruptTiffError(f"{url}: the chain of pages (IFDs) is damaged ({exc}); "
                               f"{REPAIR}") from exc
    if count == 0:
        raise CorruptTiffError(f"{url}: the TIFF has no readable page (its first IFD is missing "
                               f"or truncated); {REPAIR}")
    try:
        last = tf.pages[count - 1]
    except IFD_ERRORS as exc:
        raise _page_error(tf, url, count - 1, exc) from exc
    try:
        following = _next_ifd(tf, int(last.offset))
    except (_NoPage, struct.error, OSError, ValueError) as exc:
        chain = _Chain(count, None, f"cannot be read ({type(exc).__name__}: {exc})")
    else:
        chain = _Chain(count, None, "") if following == 0 else _walk(tf)
    _chains[tf] = chain
    return chain


class _NoPage(Exception):
    """No IFD is at an offset a chain points to: its tag count is unreadable or more than
    tifffile reads."""


def _next_ifd(tf: tifffile.TiffFile, offset: int) -> int:
    """The next-IFD pointer of the IFD at ``offset`` (:class:`_NoPage`: no IFD is there;
    struct.error, OSError: its pointer cannot be read)."""
    fh, tiff = tf.filehandle, tf.tiff
    fh.seek(offset)
    try:
        (tags,) = struct.unpack(tiff.tagnoformat, fh.read(tiff.tagnosize))
    except struct.error as exc:
        raise _NoPage("its tag count cannot be read") from exc
    if tags > _MOST_TAGS:
        raise _NoPage(f"{tags} tags")
    fh.seek(offset + tiff.tagnosize + tags * tiff.tagsize)
    (following,) = struct.unpack(tiff.offsetformat, fh.read(tiff.offsetsize))
    return int(following)


def _walk(tf: tifffile.TiffFile) -> _Chain:
    """The chain from the first page, as tifffile reads it but for loops: it ends at a
    pointer to a page already seen (or 0), and breaks at one past the end of the file or
    to where no IFD is, keeping the pages before it, as tifffile does. Bounded: every
    offset is read once."""
    fh = tf.filehandle
    offsets = [int(tf.pages.first.offset)]  # parsed when the file was opened
    seen = set(offsets)
    while True:
        try:
            following = _next_ifd(tf, offsets[-1])
        except _NoPage as exc:  # (never the first page: tifffile parsed it)
            where = offsets.pop()
            return _Chain(len(offsets), offsets,
                          f"points to byte {where}, where no page is ({exc})")
        except (struct.error, OSError, ValueError) as exc:
            return _Chain(len(offsets), offsets,
                          f"cannot be read ({type(exc).__name__}: {exc})")
        if following == 0 or following in seen:
            loop = (len(offsets) - 1, offsets.index(following)) if following else None
            return _Chain(len(offsets), offsets, "", loop)
        if following + tf.tiff.tagnosize > fh.size:
            return _Chain(len(offsets), offsets,
                          f"points to byte {following}, past the end of the file "
                          f"({fh.size} bytes)")
        offsets.append(following)
        seen.add(following)


def page_count(tf: tifffile.TiffFile, url: str) -> int:
    """Pages in the main IFD chain, up to its end or a loop back to a page read (see
    :func:`_chain`); the same for every call on one open file."""
    return _chain(tf, url).count


def chain_loop(tf: tifffile.TiffFile, url: str) -> tuple[int, int] | None:
    """(the last page, the page it points back to) when the main IFD chain loops (its
    pages are those before the loop: :func:`_chain`), else None: what a job and ``tiffpipe
    inspect`` say (:func:`pipeline.core.plan.loop_note`), as the pages after it, if the
    file has any, are not read."""
    return _chain(tf, url).loop


#: the most tags tifffile takes an IFD to have (more: it stops the chain there, as damaged)
_MOST_TAGS = 4096


def check_chain_end(tf: tifffile.TiffFile, url: str, count: int) -> None:
    """CorruptTiffError if the chain of pages (IFDs) does not end cleanly after its
    ``count`` pages: the last page's next-IFD pointer must be 0, or point to a page read
    (a loop: the pages before it are the chain). A pointer past the end of the file (a
    multi-page file cut short), or to an IFD whose tag count cannot be read, means pages
    were lost: tifffile only logs it, and a job would go on with the pages before."""
    chain = _chain(tf, url)
    if not chain.broken:
        return
    raise CorruptTiffError(f"{url}: the chain of pages (IFDs) breaks after page {count - 1}: "
                           f"its pointer to the next page {chain.broken}; the file is "
                           f"truncated or damaged, and the pages after it are lost: {REPAIR}")


def get_page(tf: tifffile.TiffFile, url: str, index: int,
             option: str | None = None) -> tifffile.TiffPage:
    """Page ``index`` of the file, or PageNotFoundError saying which pages it has. The
    advice is to fix the job's ``pages``; with ``option`` (a command's option that gave the
    index, such as ``--page``), to give that option a page the file has."""
    chain = _chain(tf, url)
    count = chain.count
    if not 0 <= index < count:
        if index >= count:  # a file cut short says so, not that it has fewer pages
            check_chain_end(tf, url, count)
        fix = ("fix the job's pages" if option is None else
               f"give {option} a page from 0 to {count - 1}")
        raise PageNotFoundError(f"{url}: page {index} asked for, the file has {count} "
                                f"page(s) (0..{count - 1}); {fix}")
    beyond = chain.offsets is not None and index >= len(tf.pages)  # tifffile's loop cut
    try:
        if beyond:
            tf.filehandle.seek(chain.offsets[index])
            page = tifffile.TiffPage(tf, index=index)
        else:
            page = tf.pages[index]
    except IFD_ERRORS as exc:
        raise _page_error(tf, url, index, exc,
                          chain.offsets[index] if beyond else None) from exc
    if not isinstance(page, tifffile.TiffPage):
        page = page.aspage()
    return page


def planned_page(tf: tifffile.TiffFile, url: str, info: PageInfo) -> tifffile.TiffPage:
    """The page a plan describes: read at its IFD's offset when the plan has it (no walk
    along the chain of pages, whose length a file of many pages pays for every unit), else
    by :func:`get_page`. A page there that is not the planned one (the file changed since
    it was planned) is a CorruptTiffError, never other pixels."""
    if not info.ifd_offset:
        return get_page(tf, url, info.index)
    first = tf.pages.first
    if info.index == 0 and int(first.offset) == info.ifd_offset:
        page = first  # parsed when the file was opened: not a second time
    else:
        page = _page_at(tf, url, info)
    if (int(page.imagelength), int(page.imagewidth)) != (info.height, info.width):
        raise CorruptTiffError(f"{url}: page {info.index} is {page.imagewidth} x "
                               f"{page.imagelength} px, planned as {info.width} x {info.height}: "
                               "the file changed since the job was planned; run the job again")
    return page


def _page_at(tf: tifffile.TiffFile, url: str, info: PageInfo) -> tifffile.TiffPage:
    try:
        tf.filehandle.seek(info.ifd_offset)
        page = tifffile.TiffPage(tf, index=info.index)
    except IFD_ERRORS as exc:
        raise CorruptTiffError(f"{url}: page {info.index}: its IFD at offset "
                               f"{info.ifd_offset} cannot be read ({exc}); the file changed "
                               "since the job was planned: run the job again") from exc
    return page


class PixelKind:
    """What a page's pixels become when tiffpipe reads them, and how.

    The reader converts pages that are not plain gray or RGB as it decodes each segment, so
    split stores (and the ops see) the converted pixels: 1/2/4-bit gray becomes 8-bit gray
    (miniswhite inverted), unsigned miniswhite becomes minisblack (``max - v``), palette
    becomes RGB through its colormap (or keeps its indices, see ``keep_palette``).

    A plain class, as the other classes that a run imports within its time (planning, the
    fused unit): a dataclass's generated methods are compiled when its module is imported.
    """

    __slots__ = ("channels", "colormap", "conversion", "dtype", "invert", "lut", "photometric")

    def __init__(self, dtype: np.dtype, channels: int, photometric: str, conversion: str = "",
                 lut: np.ndarray | None = None, invert: bool = False,
                 colormap: np.ndarray | None = None):
        self.dtype = dtype  # of the pixels returned
        self.channels = channels
        self.photometric = photometric  # "minisblack" | "rgb" | "palette"
        self.conversion = conversion  # what the reader does to the decoded samples ("": none)
        self.lut = lut  # decoded sample value -> output value(s), first sample
        self.invert = invert  # unsigned miniswhite: the first sample becomes max - v
        self.colormap = colormap  # (3, 256) uint16 of a kept palette


def pixel_kind(page: tifffile.TiffPage, where: str, keep_palette: bool = False) -> PixelKind:
    """How the pixels of ``page`` are read, or UnsupportedTiffError saying why they can't be.

    ``keep_palette``: a palette page (up to 8 bits) keeps its indices and colormap instead of
    becoming RGB (only right when no op touches the pixels and the output is lossless).
    """
    photometric = int(page.photometric)
    compression = int(page.compression)
    if photometric == PHOTOMETRIC.YCBCR and compression in (7, ojpeg.OJPEG):
        photometric = PHOTOMETRIC.RGB  # JPEG (libtiff for old-style JPEG) decodes it to RGB
    pname = _name(photometric, PHOTOMETRIC)
    bps = page.bitspersample
    samples = int(page.samplesperpixel)
    if compression in _CCITT and (bps != 1 or samples != 1):
        raise CorruptTiffError(
            f"{where}: compression {_name(compression, COMPRESSION)} codes 1-bit pixels of one "
            f"sample, its BitsPerSample is {bps} and SamplesPerPixel {samples}; the file is "
            f"damaged or was written wrongly: {REPAIR}")
    if photometric == PHOTOMETRIC.SEPARATED:
        return _cmyk_kind(page, where, samples)
    if photometric in _REFUSED_PHOTOMETRICS:
        raise UnsupportedTiffError(f"{where}: photometric {pname} is not supported: "
                                   f"{_REFUSED_PHOTOMETRICS[photometric]}")
    if photometric not in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE, PHOTOMETRIC.RGB,
                           PHOTOMETRIC.PALETTE):
        raise UnsupportedTiffError(
            f"{where}: photometric {pname} is not supported (supported: gray, RGB, palette, "
            "bilevel, with alpha); convert the page to gray or RGB")
    if int(page.sampleformat) in _COMPLEX_FORMATS:
        what = np.dtype(page.dtype).name if page.dtype is not None else \
            f"{bps}-bit {_name(page.sampleformat, SAMPLEFORMAT)}"
        raise UnsupportedTiffError(
            f"{where}: complex samples ({what}) are not supported, the ops take real numbers; "
            "convert the page to its magnitude or real part as float32 first")
    if not isinstance(bps, int) or page.dtype is None:
        raise UnsupportedTiffError(f"{where}: samples of {bps} bits are not supported "
                                   "(packed formats such as RGB565); convert the file to 8-bit")
    dtype = np.dtype(page.dtype)
    white = photometric == PHOTOMETRIC.MINISWHITE
    if photometric in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE) and bps in (1, 2, 4):
        if samples != 1:
            raise UnsupportedTiffError(f"{where}: {bps}-bit gray with {samples} samples per "
                                       "pixel is not supported; convert the file to 8-bit")
        top = 2**bps - 1
        values = np.arange(top + 1)
        lut = ((top - values) if white else values) * (255 // top)
        kind, zero = ("bilevel", "bit 0") if bps == 1 else (f"{bps}-bit gray", "0")
        # (what the page's 0 becomes, and the other end: "0 is white" beside "x255" read as
        # a contradiction)
        ends = (f"white, {zero}, becomes 255, black 0" if white
                else f"black, {zero}, stays 0, white 255")
        scale = "" if bps == 1 else f": {f'({top} - v)' if white else 'v'} x {255 // top}"
        return PixelKind(np.dtype(np.uint8), 1, "minisblack",
                         f"{kind} {pname.lower()} -> 8-bit minisblack ({ends}{scale})",
                         lut=lut.astype(np.uint8))
    if photometric == PHOTOMETRIC.PALETTE:
        return _palette_kind(page, where, bps, samples, keep_palette)
    if bps not in (8, 16, 32, 64):
        raise UnsupportedTiffError(f"{where}: {bps}-bit samples are not supported "
                                   "(supported: 1, 2, 4 bit gray and palette; 8, 16, 32 and 64 "
                                   "bit); convert the file to 8 or 16 bit")
    if white:
        if dtype.kind != "u":
            raise UnsupportedTiffError(
                f"{where}: miniswhite with {dtype.name} samples is not supported: white has "
                "no defined value to invert from; convert the page to minisblack")
        return PixelKind(dtype, samples, "minisblack",
                         f"miniswhite -> minisblack ({np.iinfo(dtype).max} - v)", invert=True)
    return PixelKind(dtype, samples, "rgb" if photometric == PHOTOMETRIC.RGB else "minisblack")


def _cmyk_kind(page: tifffile.TiffPage, where: str, samples: int) -> PixelKind:
    """A CMYK page (SEPARATED, InkSet CMYK): **kept** as CMYK, its 4 inks and any extra
    samples (converting it to RGB would need its colour management: the printer's profile)."""
    inkset = page.tags.valueof(332, 1)  # InkSet: 1 CMYK (the default), 2 not CMYK
    inks = samples - len(page.extrasamples)
    if inkset != 1 or inks != 4:
        raise UnsupportedTiffError(
            f"{where}: photometric SEPARATED is read as CMYK (InkSet 1, 4 inks) only, this page "
            f"has InkSet {inkset} and {inks} inks; convert the file to CMYK or RGB first")
    if int(page.compression) in (7, ojpeg.OJPEG):
        raise UnsupportedTiffError(
            f"{where}: JPEG-compressed CMYK is not read (JPEG writers store CMYK inverted or "
            "not, with no tag that says which); re-save the file with a lossless codec")
    if page.dtype is None or np.dtype(page.dtype) not in (np.uint8, np.uint16):
        what = np.dtype(page.dtype).name if page.dtype is not None else \
            f"{page.bitspersample}-bit"
        raise UnsupportedTiffError(
            f"{where}: CMYK with {what} samples is not supported (8 and 16-bit unsigned "
            "are); convert the file to 8 or 16-bit")
    return PixelKind(np.dtype(page.dtype), samples, "separated")


def _palette_kind(page: tifffile.TiffPage, where: str, bps: int, samples: int,
                  keep: bool) -> PixelKind:
    if samples != 1:
        raise UnsupportedTiffError(f"{where}: palette pages with {samples} samples per pixel "
                                   "are not supported; convert the file to RGB(A)")
    if bps not in (1, 2, 4, 8, 16):
        raise UnsupportedTiffError(f"{where}: {bps}-bit palette indices are not supported "
                                   "(supported: 1, 2, 4, 8 and 16 bit)")
    cmap = page.colormap
    if cmap is None or np.asarray(cmap).size < 3 or np.asarray(cmap).size % 3:
        raise CorruptTiffError(f"{where}: a palette page without a valid ColorMap (3 x "
                               f"{2**bps} values expected); the file is damaged: {REPAIR}")
    # some writers store more entries than the bit depth needs: the first 2**bps are used; an
    # index beyond a short colormap fails the read (CorruptTiffError), never a made-up colour
    cmap = np.asarray(cmap, np.uint16).reshape(3, -1)[:, :2**bps]
    if keep and bps <= 8 and cmap.shape[1] == 2**bps:
        full = np.zeros((3, 256), np.uint16)
        full[:, :cmap.shape[1]] = cmap
        return PixelKind(np.dtype(np.uint8), 1, "palette",
                         f"{bps}-bit palette indices kept with their colormap"
                         if bps < 8 else "", lut=np.arange(256, dtype=np.uint8)
                         if bps < 8 else None, colormap=full)
    rgb, how = _colormap_rgb(cmap)
    return PixelKind(rgb.dtype, 3, "rgb", f"{bps}-bit palette -> RGB {rgb.dtype.name} ({how})",
                     lut=rgb)


def _colormap_rgb(cmap: np.ndarray) -> tuple[np.ndarray, str]:
    """The RGB of each entry of a ColorMap (3, n) uint16 (n x 3, to look the indices up
    in), as libtiff reads it: 8-bit when every value fits in 8 bits (an 8-bit colormap), or
    when each is a multiple of 257 (exact), else kept 16-bit; and how it was made so."""
    if int(cmap.max(initial=0)) < 256:
        rgb, how = cmap.astype(np.uint8), "8-bit colormap"
    elif not (cmap % 257).any():
        rgb, how = (cmap // 257).astype(np.uint8), "16-bit colormap / 257, exact"
    else:
        rgb, how = cmap, "16-bit colormap, kept 16-bit"
    return np.ascontiguousarray(rgb.T), how


def gray_colour_table(page: tifffile.TiffPage) -> np.ndarray | None:
    """The colours a gray class map with a colour table is drawn in: a one-band uint8 or
    uint16 MINISBLACK page with a ColorMap of 3 x 2**bits values (rasterio's
    ``write_colormap``: GDAL and QGIS draw it as a palette), its colour of each value (2**bits
    x 3, as a palette page's colormap is read); None for any other page, and for a ColorMap
    of another size (which GDAL does not read either): the pages whose ColorMap a job
    carries (:func:`pipeline.adapters.metadata.gray_colormap_values`)."""
    values = gray_colormap_values(page)
    return None if values is None else _colormap_rgb(values)[0]


def keeps_palette(ops: list[Any], compression: str) -> bool:
    """Whether a job keeps palette pages as indices + colormap: only when no op mixes the
    pixels' values (an op chain that is empty, only moves them: rotate, flip, crop, or picks
    one of each block: a downsample by nearest, mode, min or max) and the output is
    lossless (JPEG would blur indices)."""
    if not ops:  # (most jobs of a reader without the op registry: preview, inspect)
        return compression != "jpeg"
    from pipeline.core.ops import chain_keeps_indices

    return chain_keeps_indices(ops) and compression != "jpeg"


#: the tags of a page's size, samples and segment size, none of which may be 0
_DIMENSION_TAGS = ((256, "ImageWidth"), (257, "ImageLength"), (277, "SamplesPerPixel"),
                   (258, "BitsPerSample"), (322, "TileWidth"), (323, "TileLength"),
                   (278, "RowsPerStrip"))


def check_dimensions(page: tifffile.TiffPage, where: str) -> None:
    """CorruptTiffError naming the tag if the page's width or length, its samples a pixel or
    bits a sample, or its tiles' or strips' size, is 0 (or the width or length missing):
    such a page has no pixels to read or no segment layout (libtiff refuses it too), and
    reading it divided by zero. (Tiles whose width or length is no multiple of 16, which
    TIFF requires, are read: libtiff warns and reads them, tifffile reads them; a damaged
    tile size is found by the segment counts, or by a JPEG tile's stream size.)"""
    for code, name in _DIMENSION_TAGS:
        if code == 278 and 322 in page.tags:  # a tiled page's RowsPerStrip is not read
            continue
        value = page.tags.valueof(code)
        if isinstance(value, tuple):
            value = value[0] if value else None
        if code in (256, 257) and value is None:
            value = 0
        if value is not None and int(value) == 0:
            what = "missing" if page.tags.get(code) is None else "0"
            raise CorruptTiffError(f"{where}: its {name} tag ({code}) is {what}, a page needs "
                                   f"it above 0; the file is damaged or was written wrongly: "
                                   f"{REPAIR}")


#: the region of a page of (height, width, dtype) a job reads (None: the whole page):
#: :func:`pipeline.core.chain.input_window` of its op chain
Reads = Callable[[int, int, str], Rect | None]


def page_info(page: tifffile.TiffPage, url: str, index: int,
              keep_palette: bool = False, reads: Reads | None = None) -> PageInfo:
    """What a plan needs of a page, or UnsupportedTiffError saying why it can't be processed.

    The dtype, channels and photometric are those of the pixels the reader returns (after any
    conversion, see :func:`pixel_kind`); ``metadata`` holds the tags carried to the output.
    ``reads``: the region of the page the job reads, where a segment cut off by the end of
    the file refuses the page (:func:`check_segments_in_file`; default: anywhere on it).
    """
    where = f"{url}: page {index}"
    check_layout_tags(page, where)
    check_dimensions(page, where)
    compression = int(page.compression)
    cname = _name(compression, COMPRESSION)
    if compression in _UNDECODABLE:
        raise UnsupportedTiffError(f"{where}: compression {cname} is not supported: "
                                   f"{_UNDECODABLE[compression]}")
    if compression != 1 and compression not in TIFF.DECOMPRESSORS:
        raise UnsupportedTiffError(f"{where}: compression {cname} ({compression}) cannot be "
                                   "decoded here; re-save the file with zstd, deflate or LZW")
    kind = pixel_kind(page, where, keep_palette)
    whole = compression == ojpeg.OJPEG  # decoded whole (PageReader): one segment
    grid = SegmentGrid.of(page, whole=whole)
    if whole:
        _check_ojpeg(where, kind)
    else:
        segment_counts(page, where, grid)  # (the reader's: the page's segments all listed)
        window = reads(int(page.imagelength), int(page.imagewidth),
                       kind.dtype.name) if reads is not None else None
        check_segments_in_file(page, where, window, grid)
    if page.imagedepth > 1:
        raise UnsupportedTiffError(f"{where}: volumetric pages (ImageDepth {page.imagedepth}) "
                                   "are not supported")
    tiled = bool(page.is_tiled) and not whole
    seg_rows = grid.seg_h
    # (planar pages: a window holds the segment of every plane at once)
    seg_bytes = seg_rows * grid.seg_w * kind.channels * kind.dtype.itemsize
    if (compression != 1 or tiled) and seg_bytes > MAX_SEGMENT_BYTES:
        what = ("an old-style JPEG page, decoded whole," if whole else
                "one tile" if tiled else "one strip")
        fix = ("re-save the file with new-style JPEG, tiled" if whole else
               "re-save the file tiled (for example 512x512 tiles) or with smaller strips")
        raise UnsupportedTiffError(
            f"{where}: {what} decodes to {seg_bytes / 2**20:.0f} MiB (more than "
            f"{MAX_SEGMENT_BYTES // 2**20} MiB), which cannot be read in bounded memory; {fix}")
    row_bytes = int(page.imagewidth) * kind.channels * kind.dtype.itemsize
    if compression == 1 and not tiled and row_bytes * RAW_FEWEST_ROWS > MAX_SEGMENT_BYTES:
        raise UnsupportedTiffError(
            f"{where}: a row of its uncompressed strips is {row_bytes / 2**20:.0f} MiB "
            f"({page.imagewidth} pixels x {kind.channels} sample(s) x {kind.dtype.itemsize} "
            f"bytes), and a tile reads whole rows, {RAW_FEWEST_ROWS} at the fewest: more than "
            f"{MAX_SEGMENT_BYTES // 2**20} MiB, which cannot be read in bounded memory; "
            "re-save the file tiled (for example 512x512 tiles)")
    metadata = read_metadata(page, kind.colormap)
    if kind.conversion:  # its no-data value, mapped as its pixels are
        convert_nodata(metadata, kind, np.dtype(page.dtype))
    elif top := sample_top(page, kind.dtype):  # (12-bit data in uint16: 4095)
        metadata["max_sample"] = top
    return PageInfo(index=index, height=int(page.imagelength), width=int(page.imagewidth),
                    channels=kind.channels, dtype=kind.dtype.name, photometric=kind.photometric,
                    extrasamples=[int(e) for e in page.extrasamples], tiled=tiled,
                    segment_rows=max(seg_rows, 1), compression=cname.lower(),
                    conversion=kind.conversion, metadata=metadata,
                    ifd_offset=int(page.offset))


def check_segments_in_file(page: tifffile.TiffPage, where: str, window: Rect | None = None,
                           grid: SegmentGrid | None = None) -> None:
    """CorruptTiffError if a segment of the page ends past the end of the file: a file whose
    copy or upload stopped part way, its headers (written first by tifffile and GDAL) whole.
    Found from the page's offsets and byte counts, so that PlanJob and ``validate --inputs``
    refuse it before any pixel is read (it failed in Split, after the work of the pages
    before), with the message :meth:`PageReader._read` gives. ``window``: the region of the
    page the job reads (a crop's box, with the halo of the ops before it): only a segment
    it overlaps counts (every plane's), so the part of a damaged scan that is whole can be
    cropped out; None: the whole page. A page without its byte counts tag (tifffile makes
    up one count) is left to the reader, which computes them. And, the same way, if an
    uncompressed strip's byte count is less than its rows need (the message of
    :meth:`PageReader._raw_rows`: a damaged ImageWidth made a page's strips 400 times
    larger than their bytes, which only the unit reading them found). ``grid``: the page's
    :class:`SegmentGrid` (None: found here)."""
    if (325 if page.is_tiled else 279) not in page.tags:
        return
    grid = SegmentGrid.of(page) if grid is None else grid
    offsets = np.asarray(page.dataoffsets, np.uint64)
    counts = np.asarray(page.databytecounts, np.uint64)
    if not len(offsets) or len(offsets) != len(counts):
        return  # (too few: PageReader names the tags)
    size = page.parent.filehandle.size
    # (not offsets + counts > size: a BigTIFF's 64-bit count near 2**64 wrapped the sum
    # round to a small end, and such a strip was read, where a classic TIFF's was refused)
    room = np.uint64(size) - np.minimum(offsets, np.uint64(size))
    past = (counts > room) & (counts > 0)
    short, need, row_bytes = _short_raw_strips(page, grid, offsets, counts)
    if window is not None and (past.any() or short.any()):
        read = _read_segments(page, grid, window, len(offsets))
        past &= read
        short &= read
    if len(found := np.flatnonzero(short)):
        seg = int(found[0])
        raise CorruptTiffError(f"{where}: segment {seg} (an uncompressed strip) has a byte "
                               f"count of {int(counts[seg])}, its {int(need[seg]) // row_bytes} "
                               f"rows need {int(need[seg])}; the file is damaged: {REPAIR}")
    past = np.flatnonzero(past)
    if len(past):
        seg = int(past[0])
        end = int(offsets[seg]) + int(counts[seg])
        raise CorruptTiffError(f"{where}: segment {seg} ends at byte {end} but the "
                               f"file has {size} bytes; the file is truncated: {REPAIR}")


def raw_sizes(page: tifffile.TiffPage, grid: SegmentGrid) -> tuple[int, np.ndarray]:
    """(the bytes of a row of a segment of the page of segments ``grid``, uncompressed: whole
    bytes a row, of one plane when planar; the bytes each of its segments holds
    uncompressed, in file order): a tile its whole (an edge tile is stored padded), a strip
    its rows (the last strip of each plane the page's rest), as libtiff takes an uncompressed
    page's missing byte counts and :meth:`PageReader._raw_rows` reads its strips."""
    depth = 1 if grid.planes > 1 else int(page.samplesperpixel)
    row = (grid.seg_w * depth * int(page.bitspersample) + 7) // 8
    segs = np.arange(grid.planes * grid.seg_rows * grid.seg_cols, dtype=np.int64)
    rows = (np.full(len(segs), grid.seg_h, np.int64) if page.is_tiled else
            np.minimum(grid.seg_h, int(page.imagelength) - (segs % grid.seg_rows) * grid.seg_h))
    return row, rows.astype(np.uint64) * np.uint64(row)


def _short_raw_strips(page: tifffile.TiffPage, grid: SegmentGrid, offsets: np.ndarray,
                      counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Which segments of an uncompressed stripped page (of segments ``grid``) hold fewer
    bytes than their rows need (a mask over ``counts``: all False for any other page, for
    sparse strips, offset and count 0, and for the entries past the page's segments, which
    are not read), the bytes each needs, and the bytes of a row (:func:`raw_sizes`)."""
    short = np.zeros(len(counts), bool)
    if int(page.compression) != 1 or page.is_tiled:
        return short, counts, 0
    row, need = raw_sizes(page, grid)
    n = min(len(counts), len(need))
    short[:n] = (counts[:n] < need[:n]) & ((offsets[:n] > 0) | (counts[:n] > 0))
    return short, need, row


def segment_counts(page: tifffile.TiffPage, where: str, grid: SegmentGrid) -> list[int]:
    """Each segment's byte count of the page of segments ``grid``, or CorruptTiffError
    naming the tag if its segment offsets or byte counts are missing or fewer than its
    segments (tifffile makes up byte counts that are missing: one, of the page's size).
    Headers only: the plan (and ``validate --inputs``) refuses such a page, as the reader
    does. An uncompressed page without its byte counts tag gets them computed from its
    segments' size, as libtiff takes them."""
    needed = grid.planes * grid.seg_rows * grid.seg_cols
    tiled = bool(page.is_tiled)
    kind = "Tile" if tiled else "Strip"
    offsets_tag, counts_tag = (324, 325) if tiled else (273, 279)
    offsets, counts = len(page.dataoffsets), len(page.databytecounts)
    tags = page.tags
    if (int(page.compression) == 1 and counts_tag not in tags and offsets_tag in tags
            and offsets >= needed):
        return [int(n) for n in raw_sizes(page, grid)[1]]
    for code, name, other, found, has in (
            (offsets_tag, "Offsets", counts_tag, "ByteCounts", counts),
            (counts_tag, "ByteCounts", offsets_tag, "Offsets", offsets)):
        if code not in tags:
            also = (f"nor a {kind}{found} tag ({other})" if other not in tags else
                    f"while its {kind}{found} has {has} value(s)")
            raise CorruptTiffError(
                f"{where}: has no {kind}{name} tag ({code}), {also}; its {needed} "
                f"{kind.lower()}(s) need {needed} of each; the file is damaged: {REPAIR}")
    if offsets < needed or counts < needed:
        raise CorruptTiffError(
            f"{where}: has {offsets} {kind}Offsets and {counts} {kind}ByteCounts, "
            f"{needed} of each expected ({needed} {kind.lower()}s); the file is damaged: "
            f"{REPAIR}")
    return [int(c) for c in page.databytecounts]


def _read_segments(page: tifffile.TiffPage, grid: SegmentGrid, window: Rect, count: int
                   ) -> np.ndarray:
    """Which of the page's ``count`` segments (a mask: True for each) ``window`` overlaps, in
    every plane: the segments :meth:`PageReader._segments` reads for it (of ``grid``, the
    page's :class:`SegmentGrid`)."""
    clipped = Rect(max(window.y0, 0), max(window.x0, 0), min(window.y1, int(page.imagelength)),
                   min(window.x1, int(page.imagewidth)))
    read = np.zeros(count, bool)
    if clipped.y0 >= clipped.y1 or clipped.x0 >= clipped.x1:
        return read
    segs = np.fromiter((seg for seg, _, _ in grid.overlapping(clipped)),
                       np.int64)
    read[segs[segs < count]] = True
    return read


class SegmentGrid(NamedTuple):
    """How a page's segments cover it: ``seg_rows`` x ``seg_cols`` segments (tiles, or strips
    of ``RowsPerStrip`` rows the page's width) of ``seg_h`` x ``seg_w`` pixels, ``planes``
    times over when the samples are stored apart (planar), plane after plane."""

    seg_h: int
    seg_w: int
    seg_rows: int
    seg_cols: int
    planes: int

    @classmethod
    def of(cls, page: tifffile.TiffPage, whole: bool = False) -> SegmentGrid:
        """The grid of ``page``; ``whole``: decoded whole, as one segment (old-style JPEG,
        whose samples libtiff returns contiguous)."""
        height, width = int(page.imagelength), int(page.imagewidth)
        samples = int(page.samplesperpixel)
        planes = samples if page.planarconfig == PLANARCONFIG.SEPARATE and samples > 1 else 1
        if whole:
            seg_h, seg_w, planes = height, width, 1
        elif page.is_tiled:
            seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            seg_h, seg_w = int(min(page.rowsperstrip or height, height)), width
        return cls(seg_h, seg_w, ceil(height / seg_h), ceil(width / seg_w), planes)

    def overlapping(self, rect: Rect) -> Iterator[tuple[int, int, int]]:
        """(segment, plane, segment row) of every segment ``rect`` (within the page)
        overlaps, in file order."""
        for plane in range(self.planes):
            for r in range(rect.y0 // self.seg_h, (rect.y1 - 1) // self.seg_h + 1):
                for c in range(rect.x0 // self.seg_w, (rect.x1 - 1) // self.seg_w + 1):
                    yield (plane * self.seg_rows + r) * self.seg_cols + c, plane, r


def _check_ojpeg(where: str, kind: PixelKind) -> None:
    """An old-style JPEG page is decoded by libtiff (pipeline/adapters/ojpeg.py) as 8-bit gray
    or colour (YCbCr or RGB), as baseline JPEG holds them."""
    if kind.dtype != np.uint8 or kind.channels not in (1, 3) or kind.lut is not None:
        raise UnsupportedTiffError(f"{where}: old-style JPEG (OJPEG) is read for 8-bit gray "
                                   f"and colour pages, not {kind.channels} x "
                                   f"{kind.dtype.name} samples; re-save the file with "
                                   "new-style JPEG or a lossless codec")


#: a decoded segment: (pixels, plane, y, x)
Decoded = tuple[np.ndarray, int, int, int]


class PageReader:
    """Reads windows of one page, decoding each segment (strip or tile) at most once while it
    stays cached. :meth:`forget_above` drops segments a downward sweep no longer needs, so a
    band read row of tiles by row of tiles holds only about one tile row of segments.

    Uncompressed strips are read row by row (byte ranges), never whole: files written with
    one giant strip stay readable in bounded memory.

    With a ``decoder`` (an executor), :meth:`prefetch` decodes the segments of a window in
    its threads (the codecs release the GIL) while the caller works on what it read before;
    the bytes are still read in the caller's thread, in file order.

    Reads that come in no sweep order (a unit's tiles, done in threads) bound the cache with
    ``recent`` instead: a segment none of the last ``recent`` reads used is dropped.
    """

    def __init__(self, tf: tifffile.TiffFile, page: tifffile.TiffPage, url: str, index: int,
                 keep_palette: bool = False, decoder: Executor | None = None,
                 columns: tuple[int, int] | None = None, mask: bool = False,
                 recent: int | None = None, colours: np.ndarray | None = None):
        """``mask``: the page is an internal mask (:func:`internal_mask`), read as 0 (not
        valid) and 255 (valid). ``colours``: a gray page's colour of each value
        (:func:`gray_colour_table`), its pixels read as RGB through it, as a palette page's
        through its colormap (what a picture of a class map shows)."""
        self.tf, self.page, self.where = tf, page, f"{url}: page {index}"
        self.recent = recent
        self.reads = 0  # read() calls so far
        self.last_used: dict[int, int] = {}  # seg -> the read that used it last (``recent``)
        #: the page's columns [x0, x1) every read lies in (a unit's, with its halo): a
        #: decoded segment is cached cut to them (a strip spans the page: a unit of a few
        #: columns of a 300,000 px wide page held whole strips: docs/pipeline.md, ProcessUnits)
        self.columns = columns
        check_dimensions(page, self.where)
        self.decoder = decoder
        # tifffile makes a page's decode function when first asked for it, and for JPEG it
        # reads the first segment's header then (``is_jfif``: a seek and a read on the file
        # handle); asked for first in a decoder thread, that moved the handle under this
        # thread's reads of segment bytes (a preview of a JPEG page failed one run in two).
        # Both made here, in the thread that reads the file.
        self.compression = int(page.compression)
        self.ojpeg = self.compression == ojpeg.OJPEG  # decoded whole, by libtiff
        self.lerc = self.compression == LERC  # decoded with its mask, see _decode_lerc
        self._decode = None if self.ojpeg or self.lerc else page.decode
        self.jpegtables = page.jpegtables
        self.pending: dict[int, Future[Decoded]] = {}
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.kind = _MASK_KIND if mask else pixel_kind(page, self.where, keep_palette)
        if colours is not None and self.kind.photometric == "minisblack" \
                and self.kind.channels == 1 and self.kind.lut is None:
            self.kind = PixelKind(colours.dtype, 3, "rgb", "gray through its ColorMap -> RGB",
                                  lut=colours)
        self.file_samples = int(page.samplesperpixel)
        self.samples = self.kind.channels  # of the pixels returned
        self.file_dtype = np.dtype(page.dtype)
        self.dtype = self.kind.dtype
        self.bits = int(page.bitspersample)
        #: what a segment left empty (sparse) holds: the page's no-data value (GDAL_NODATA,
        #: as tifffile parses it: NaN too; 0 when it has none or it cannot be parsed), as
        #: tifffile and GDAL fill one; a decoded sample, converted as the page's samples are
        self.fill = page.nodata
        #: whether the page has a no-data value (GDAL_NODATA): the value of the invalid pixels
        #: of an integer LERC segment's mask (a float one's are NaN, as libtiff makes them)
        self.has_nodata = 42113 in page.tags
        self.grid = SegmentGrid.of(page, whole=self.ojpeg)  # (OJPEG: one segment, the page)
        self.seg_h, self.seg_w, self.seg_rows, self.seg_cols, self.planes = self.grid
        self.separate = self.planes > 1
        self.raw_strips = self.compression == 1 and not page.is_tiled
        #: an uncompressed strip's row and each strip's bytes (:func:`raw_sizes`)
        self.row_bytes, self.raw_bytes = (raw_sizes(page, self.grid) if self.raw_strips
                                          else (0, np.zeros(0, np.uint64)))
        self.cache: dict[int, Decoded] = {}  # seg -> (px, plane, y, x)
        self.decoded = 0  # segments decoded so far (tests check each is decoded once)
        self.raw_read: set[int] = set()  # uncompressed strips read (rows of them, not decoded)
        self.largest_read = 0  # most pixels one read() returned (previews check they stay small)
        #: each segment's byte count (an uncompressed page's, its tag missing: computed)
        self.counts = ([int(c) for c in page.databytecounts] if self.ojpeg else
                       segment_counts(page, self.where, self.grid))

    def _segments(self, rect: Rect) -> Iterator[tuple[int, int, int]]:
        """(segment, plane, segment row) of every segment ``rect`` overlaps, in file order."""
        return self.grid.overlapping(rect)

    def _unstarted(self, rect: Rect) -> Iterator[tuple[int, bytes | None]]:
        """(segment, its stored bytes) of each segment of ``rect`` neither cached nor being
        decoded, in file order: what :meth:`prefetch` and :meth:`claim` start decoding. The
        bytes are read in the caller's thread (the file handle is not shared), each as its
        segment comes up, so the caller marks it pending before the next is read."""
        for seg, _, _ in self._segments(rect):
            if seg not in self.cache and seg not in self.pending:
                yield seg, self.segment_bytes(seg)

    def prefetch(self, rect: Rect) -> None:
        """Start decoding the segments of ``rect`` that are not cached, in the decoder's
        threads (without a decoder, or for uncompressed strips, nothing to do): a later
        :meth:`read` of them waits for their decode instead of decoding them itself."""
        if self.decoder is None or self.raw_strips:
            return
        for seg, data in self._unstarted(rect):
            self.pending[seg] = self.decoder.submit(self.decode_segment, seg, data)

    def claim(self, rect: Rect) -> list[tuple[int, Future[Decoded], bytes | None]]:
        """For a reader that threads share under a lock of theirs: the segments of ``rect``
        neither cached nor being decoded, each with its stored bytes (read now, under the
        lock) and a pending decode that the caller does with :meth:`decode_claimed` after
        letting go of the lock. Threads then decode side by side, and a :meth:`read` of a
        segment another thread is decoding waits for it instead of decoding it again."""
        claimed: list[tuple[int, Future[Decoded], bytes | None]] = []
        if self.raw_strips:  # read row by row, never cached
            return claimed
        try:
            for seg, data in self._unstarted(rect):
                self.pending[seg] = Future()
                claimed.append((seg, self.pending[seg], data))
        except BaseException:  # none of them will be decoded: no read may wait for them
            for seg, _, _ in claimed:
                self.pending.pop(seg, None)
            raise
        return claimed

    def decode_claimed(self, claimed: list[tuple[int, Future[Decoded], bytes | None]]) -> None:
        """Decode the segments :meth:`claim` gave (thread-safe: no file access); a failure
        is raised by the :meth:`read` that gets the segment."""
        for seg, future, data in claimed:
            if future.set_running_or_notify_cancel():  # (not dropped by forget_above)
                try:
                    future.set_result(self.decode_segment(seg, data))
                except BaseException as exc:  # noqa: BLE001 - raised where it is read
                    future.set_exception(exc)

    def read(self, rect: Rect) -> np.ndarray:
        """The pixels of ``rect``: (h, w) for one sample, else (h, w, samples)."""
        out = np.zeros((rect.height, rect.width, self.samples), self.dtype)
        self.largest_read = max(self.largest_read, rect.height * rect.width)
        for seg, plane, r in self._segments(rect):
            if self.raw_strips:
                self._paste(out, *self._raw_rows(seg, plane, r, rect), rect)
                self.raw_read.add(seg)
                continue
            if seg not in self.cache:
                pending = self.pending.pop(seg, None)
                self.cache[seg] = self._kept(pending.result() if pending is not None
                                             else self.decode_segment(seg,
                                                                      self.segment_bytes(seg)))
            self._paste(out, *self.cache[seg], rect)
            if self.recent:
                self.last_used[seg] = self.reads
        self.reads += 1
        if self.recent:
            self._forget_unused()
        return out[:, :, 0] if self.samples == 1 else out

    def _forget_unused(self) -> None:
        """Drop the cached segments none of the last :attr:`recent` reads used."""
        for seg in [s for s, n in self.last_used.items() if n < self.reads - self.recent]:
            del self.last_used[seg]
            self.cache.pop(seg, None)

    def _kept(self, decoded: Decoded) -> Decoded:
        """A decoded segment as the cache keeps it: cut to :attr:`columns`."""
        px, plane, y, x = decoded
        if self.columns is None:
            return decoded
        x0, x1 = max(self.columns[0], x), min(self.columns[1], x + px.shape[1])
        if (x0, x1) == (x, x + px.shape[1]):
            return decoded
        return px[:, x0 - x:max(x0, x1) - x].copy(), plane, y, x0

    def forget_above(self, y: int) -> None:
        """Drop the cached rows above row ``y``: segments that end there are dropped, segments
        that straddle it keep only their rows from ``y`` on (a downward sweep needs no more)."""
        for seg, (px, plane, y0, x0) in list(self.cache.items()):
            if y0 + px.shape[0] <= y:
                del self.cache[seg]
            elif y0 < y:
                self.cache[seg] = (px[y - y0:].copy(), plane, y, x0)
        for seg in [s for s in self.pending
                    if (s % (self.seg_rows * self.seg_cols) // self.seg_cols + 1) * self.seg_h
                    <= y]:  # prefetched, never read: not needed any more
            self.pending.pop(seg).cancel()

    def forget_left(self, x: int, below: int) -> None:
        """Drop cached columns left of column ``x`` of the segments that end at or above row
        ``below`` (a sweep along a band reads no more of them there:
        :func:`~pipeline.core.grid.columns_still_read`). A segment wholly left of ``x`` is
        dropped; one that straddles it is cut (a copy) once at least half its columns can
        go, so a strip is copied about once in all, and no more than twice the columns
        still read are held."""
        for seg, (px, plane, y0, x0) in list(self.cache.items()):
            if y0 + px.shape[0] > below or x <= x0:
                continue
            if x >= x0 + px.shape[1]:
                del self.cache[seg]
            elif 2 * (x - x0) >= px.shape[1]:
                self.cache[seg] = (px[:, x - x0:].copy(), plane, y0, x)

    def _read(self, seg: int, start: int, count: int) -> bytes:
        fh = self.tf.filehandle
        if start + count > fh.size:
            raise CorruptTiffError(f"{self.where}: segment {seg} ends at byte {start + count} "
                                   f"but the file has {fh.size} bytes; the file is truncated: "
                                   f"{REPAIR}")
        fh.seek(start)
        data = fh.read(count)
        if len(data) != count:
            raise CorruptTiffError(f"{self.where}: segment {seg}: read {len(data)} of {count} "
                                   f"bytes; the file is truncated: {REPAIR}")
        return data

    def segment_bytes(self, seg: int) -> bytes | None:
        """The stored bytes of a segment (None: a sparse one, which has none), read in the
        reader's own thread (the file handle is not shared with its decoder threads)."""
        self.decoded += 1
        if self.ojpeg:  # the page as a TIFF of its own, for libtiff
            return ojpeg.page_tiff(self.page, lambda start, count: self._read(seg, start, count))
        offset, count = int(self.page.dataoffsets[seg]), self.counts[seg]
        if count:
            data = self._read(seg, offset, count)
            if self.compression in segment_header.READ:
                self._check_declared(seg, segment_header.declared(self.compression, data))
            return data
        if offset:  # (libtiff: "Invalid tile byte count")
            raise CorruptTiffError(f"{self.where}: segment {seg} has a byte count of 0 at "
                                   f"offset {offset} (a segment left empty has offset 0 and "
                                   f"byte count 0); the file is damaged: {REPAIR}")
        return None  # sparse: offset 0 and byte count 0

    def _check_declared(self, seg: int, said: segment_header.Declared | None) -> None:
        """CorruptTiffError if a segment's stream declares more than its tile or strip holds
        (:mod:`pipeline.core.segment_header`): its codec would allocate all it declares
        before tifffile finds that it does not fit, and a tiny stream can declare gigabytes.
        Up to 4 samples a pixel are let through whatever the page's (a WebP stream says 4,
        a JPEG's colour conversion makes 3). A JPEG tile's stream must be its tile's size
        (libtiff writes every tile whole): one of another size (a TileLength that does not
        match the streams) would be pasted at the wrong place, a wrong image; but a tile of
        the last tile row or column may be cropped to the image's part of it (some writers
        crop edge tiles; libtiff warns and reads it), no less."""
        pixels = self.seg_h * self.seg_w
        depth = 1 if self.separate else self.file_samples
        if said is not None and (said[0] * said[1] > pixels
                                 or said.values > pixels * max(depth, 4)):
            raise self._declares_more(seg, str(said), depth)
        if (said is not None and self.compression == COMPRESSION.JPEG and self.page.is_tiled
                and not self._whole_or_edge(seg, said[0], said[1])):
            raise CorruptTiffError(
                f"{self.where}: segment {seg} (JPEG) is a stream of {said[1]} x {said[0]} "
                f"pixels, its tile {self.seg_w} x {self.seg_h} (TileWidth x TileLength); the "
                f"file is damaged or was written wrongly: {REPAIR}")

    def _whole_or_edge(self, seg: int, rows: int, cols: int) -> bool:
        """Whether a tile stream of ``rows`` x ``cols`` fills tile ``seg``: its whole size, or
        in a tile of the last tile row (column) as few rows (columns) as the image has
        there, or more (:meth:`_check_declared`)."""
        _, r, c = self._place(seg)
        return (self._covers(rows, self.seg_h, self.height - r * self.seg_h)
                and self._covers(cols, self.seg_w, self.width - c * self.seg_w))

    @staticmethod
    def _covers(said: int, whole: int, left: int) -> bool:
        """A stream's ``said`` rows (columns) in a tile of ``whole``, ``left`` of them in the
        image: the whole tile's, or at least the image's part of an edge tile."""
        return said == whole or min(whole, left) <= said < whole

    def _declares_more(self, seg: int, said: str, depth: int) -> CorruptTiffError:
        """The refusal of a segment whose stream declares ``said``, more than its tile or
        strip of ``depth`` samples a pixel holds (:meth:`_check_declared`,
        :meth:`_lerc_blob`)."""
        cname = _name(self.compression, COMPRESSION)
        kind = "tile" if self.page.is_tiled else "strip"
        return CorruptTiffError(
            f"{self.where}: segment {seg} ({cname}) declares {said}, more than its {kind} of "
            f"{self.seg_w} x {self.seg_h} pixels x {depth} sample(s) holds; refused before "
            f"decoding (it would allocate what it declares): the file is damaged or crafted: "
            f"{REPAIR}")

    def decode_segment(self, seg: int, data: bytes | None) -> Decoded:
        """A segment's pixels from its bytes; thread-safe (no file access)."""
        if data is None:  # sparse segment: the page's no-data value, or zeros
            plane, r, c = self._place(seg)
            empty = self._empty(self.seg_h, self.seg_w)
            return self._convert(empty, plane), plane, r * self.seg_h, c * self.seg_w
        try:
            if self.ojpeg:
                page = ojpeg.decode(data, self.height, self.width, self.file_samples)
                return self._convert(page, 0), 0, 0, 0
            if self.lerc:
                decoded, origin = self._decode_lerc(data, seg)
            else:
                decoded, origin = self._decode_stream(data, seg)
        except CorruptTiffError:  # (a LERC blob that declares more than its segment)
            raise
        except Exception as exc:  # codecs raise their own error types
            cname = _name(self.compression, COMPRESSION)
            if is_out_of_memory(exc):  # the machine's limit, not a damaged file
                raise exhausted(exc, f"{self.where}: segment {seg} ({cname}, {len(data)} "
                                     "bytes) could not be decoded") from exc
            raise CorruptTiffError(f"{self.where}: segment {seg} ({cname}) cannot be decoded "
                                   f"({type(exc).__name__}: {exc}); the file is damaged: "
                                   f"{REPAIR}") from exc
        if decoded is None:
            raise CorruptTiffError(f"{self.where}: segment {seg} decoded to nothing; the file "
                                   f"is damaged: {REPAIR}")
        return (self._convert(decoded.reshape(decoded.shape[-3:]), origin[0]), origin[0],
                origin[2], origin[3])

    def _decode_stream(self, data: bytes, seg: int) -> tuple[np.ndarray | None, tuple[int, ...]]:
        """A segment decoded by tifffile: its samples and its place (plane, 0, y, x). A
        deflate or zstd strip that holds a whole strip's rows where it has fewer is read as
        libtiff reads it (:meth:`_whole_height_strip`); anything else tifffile cannot decode
        raises what tifffile raised."""
        try:
            decoded, origin, _ = self._decode(data, seg, jpegtables=self.jpegtables)
        except Exception:
            rows = self._whole_height_strip(data, seg)
            if rows is None:
                raise
            decoded, origin, _ = self._decode(rows, seg, jpegtables=self.jpegtables)
        return decoded, origin

    def _whole_height_strip(self, data: bytes, seg: int) -> bytes | None:
        """A deflate or zstd strip shorter than RowsPerStrip (the page's last) whose stream
        holds a whole strip's rows, as some writers store it (libtiff's test file
        deflate-last-strip-extra-data.tiff: 16 rows, 4 of them the page's), as a stream of
        its own rows only (deflate's stored, not compressed again; zstd's at level 1):
        tifffile decodes a segment into a buffer of its rows, too small for the whole
        strip's. libtiff reads the rows it needs and ignores the rest (tif_zip.c: "odd
        files in the wild"; tif_zstd.c); here the stream must also be whole (ended, its
        checksum right) and hold no more than a whole strip. None for any other segment or
        stream: it is then damaged (a CorruptTiffError)."""
        rows = min(self.seg_h, self.height - self._place(seg)[1] * self.seg_h)
        if (self.compression not in _DEFLATE + _ZSTD or self.page.is_tiled
                or rows == self.seg_h):
            return None
        depth = 1 if self.separate else self.file_samples
        row_bytes = (self.seg_w * depth * self.bits + 7) // 8
        whole = self.seg_h * row_bytes
        try:  # bounded: a whole strip, and 1 byte
            if self.compression in _ZSTD:  # (a frame cut short fails)
                out, ended = bytes(imagecodecs.zstd_decode(data, out=whole + 1)), True
            else:
                stream = zlib.decompressobj()
                out = stream.decompress(data, whole + 1)
                ended = stream.eof
        except (zlib.error, imagecodecs.ZstdError):
            return None
        if not ended or not rows * row_bytes < len(out) <= whole:
            return None
        kept = out[:rows * row_bytes]
        return (imagecodecs.zstd_encode(kept, level=1) if self.compression in _ZSTD
                else zlib.compress(kept, 0))

    def _place(self, seg: int) -> tuple[int, int, int]:
        """(plane, segment row, segment column) of segment ``seg``."""
        plane, rest = divmod(seg, self.seg_rows * self.seg_cols)
        return (plane, *divmod(rest, self.seg_cols))

    def _empty(self, rows: int, cols: int) -> np.ndarray:
        """The samples ((rows, cols, s)) of a segment left empty (offset 0, byte count 0):
        the page's no-data value (:attr:`fill`) where it has one, else zeros, as tifffile's
        ``asarray`` and GDAL fill it (libtiff alone reads zeros)."""
        depth = 1 if self.separate else self.file_samples
        # a lookup page's indices: 8-bit for sub-byte pages (bool for 1-bit), else its own
        dtype = (np.uint8 if self.kind.lut is not None and self.file_dtype.itemsize == 1
                 else self.file_dtype)
        if self.fill == 0 and not np.signbit(self.fill):  # (-0.0 is filled: its sign bit)
            return np.zeros((rows, cols, depth), dtype)
        return np.full((rows, cols, depth), self.fill, dtype)

    def _decode_lerc(self, data: bytes, seg: int) -> tuple[np.ndarray, tuple[int, ...]]:
        """A LERC segment's samples ((h, w, s)) and its place (plane, 0, y, x), read as
        libtiff (GDAL) reads it: with its mask of valid pixels, which tifffile's decode
        drops (it reads the invalid pixels as the 0 LERC leaves there). Invalid pixels of a
        float page are NaN (whatever its GDAL_NODATA: libtiff's choice); of an integer page,
        its no-data value when it has one, else left as decoded (0: libtiff does not read
        such a segment at all); an 8-bit page whose last extra sample is unassociated alpha
        stored as the mask (libtiff's encoder does so when the alpha is 0 or 255) gets it
        back as 0/255. A segment of one LERC band per sample (libtiff's when a float pixel
        has NaN in some samples only) is interleaved, as libtiff does."""
        depth = 1 if self.separate else self.file_samples
        values, masks = imagecodecs.lerc_decode(self._lerc_blob(data, seg, depth), masks=True)
        plane, r, c = self._place(seg)
        y, x = r * self.seg_h, c * self.seg_w
        if values.dtype != self.file_dtype:
            raise ValueError(f"LERC data type {values.dtype}, the page's samples are "
                             f"{self.file_dtype}")
        if depth > 1 and values.ndim == 3 and values.shape[0] == depth != values.shape[2]:
            values = np.moveaxis(values, 0, -1)  # one band a sample: (bands, h, w)
            if masks is not None and masks.ndim == 3:
                masks = np.moveaxis(masks, 0, -1)
        if values.ndim == 2:
            values = values[..., None]
        if masks is not None and masks.ndim == 2:
            masks = masks[..., None]
        if (depth > 1 and values.shape[2] == depth - 1 and self.file_dtype == np.uint8
                and self.page.extrasamples and self.page.extrasamples[-1] == _UNASSALPHA):
            alpha = (np.full(values.shape[:2], 255, np.uint8) if masks is None
                     else masks[..., 0].astype(np.uint8) * np.uint8(255))
            return self._lerc_shaped(np.dstack([values, alpha]), y, x, depth), (plane, 0, y, x)
        if masks is not None and (self.file_dtype.kind == "f" or self.has_nodata):
            values = values.copy() if not values.flags.writeable else values
            np.putmask(values, ~np.broadcast_to(masks, values.shape),
                       np.nan if self.file_dtype.kind == "f" else self.fill)
        return self._lerc_shaped(values, y, x, depth), (plane, 0, y, x)

    def _lerc_blob(self, data: bytes, seg: int, depth: int) -> bytes:
        """A LERC segment's blob, unwrapped from its zstd or deflate (LERC_ZSTD,
        LERC_DEFLATE) into at most what the segment's values can take, and checked to
        declare no more values than the segment holds (:meth:`_check_declared`): LERC
        allocates what its header declares, and a constant image of any size is a few dozen
        bytes (imagecodecs' own unwrapping is unbounded, so it is done here)."""
        values = self.seg_h * self.seg_w * depth
        if not data.startswith((b"Lerc2 ", b"CntZImage ")):
            # a blob is at most its values stored raw, its mask and a header a band
            most = values * self.file_dtype.itemsize + values // 8 + 1024 * depth + 65536
            if data.startswith(b"\x28\xb5\x2f\xfd"):
                data = imagecodecs.zstd_decode(data, out=most)
            else:
                data = imagecodecs.zlib_decode(data, out=most)
            data = bytes(data)
        said = segment_header.lerc_declared(data)
        if said is not None and said.values > values:
            raise self._declares_more(seg, f"{said.values} values", depth)
        return data

    def _lerc_shaped(self, values: np.ndarray, y: int, x: int, depth: int) -> np.ndarray:
        """A decoded LERC segment as (h, w, s): a whole tile or strip, or the part of the
        page it covers (a short last strip; a tile cut at the page's edge), as tifffile
        takes a segment's samples."""
        rows = min(self.seg_h, self.height - y)
        for shape in ((self.seg_h, self.seg_w, depth), (rows, self.seg_w, depth),
                      (rows, min(self.seg_w, self.width - x), depth)):
            if values.size == shape[0] * shape[1] * shape[2]:
                return values.reshape(shape)
        raise ValueError(f"a LERC segment of {values.shape} values, not a {self.seg_h} x "
                         f"{self.seg_w} segment of {depth} sample(s)")

    def _convert(self, px: np.ndarray, plane: int) -> np.ndarray:
        """Decoded samples ((h, w, s)) -> the pixels the reader returns (see PixelKind)."""
        kind = self.kind
        if kind.lut is not None:  # sub-byte gray, palette: one sample a pixel
            index = px[..., 0]
            if index.dtype == np.bool_:
                index = index.view(np.uint8)
            if int(index.max(initial=0)) >= kind.lut.shape[0]:
                raise CorruptTiffError(f"{self.where}: a sample value {int(index.max())} is "
                                       f"beyond the {kind.lut.shape[0]} entries of its "
                                       f"colormap or bit depth; the file is damaged: {REPAIR}")
            out = kind.lut[index]
            return out[..., None] if out.ndim == 2 else out
        if kind.invert and (plane == 0 or not self.separate):
            px = px.copy()
            px[..., 0] = np.iinfo(px.dtype).max - px[..., 0]
        return px

    def _raw_rows(self, seg: int, plane: int, r: int, rect: Rect) -> Decoded:
        """The rows of an uncompressed strip that ``rect`` needs, read as one byte range."""
        strip_y = r * self.seg_h
        y0, y1 = max(rect.y0, strip_y), min(rect.y1, strip_y + self.seg_h, self.height)
        depth = 1 if self.separate else self.file_samples
        row_bytes, strip_bytes = self.row_bytes, int(self.raw_bytes[seg])  # (packed bits:
        offset, count = int(self.page.dataoffsets[seg]), self.counts[seg]  # whole bytes a row)
        if offset == 0 and count == 0:  # sparse: the page's no-data value, or zeros
            return self._convert(self._empty(y1 - y0, self.width), plane), plane, y0, 0
        if count < strip_bytes:
            raise CorruptTiffError(f"{self.where}: segment {seg} (an uncompressed strip) has "
                                   f"a byte count of {count}, its {strip_bytes // row_bytes} "
                                   f"rows need {strip_bytes}; the file is damaged: {REPAIR}")
        data = self._read(seg, offset + (y0 - strip_y) * row_bytes, (y1 - y0) * row_bytes)
        if self.bits < 8:
            if self.page.fillorder == 2:
                data = imagecodecs.bitorder_decode(data)
            rows = imagecodecs.packints_decode(data, np.uint8, self.bits,
                                               runlen=self.width * depth)
        else:
            rows = np.frombuffer(data, self.file_dtype.newbyteorder(self.tf.byteorder))
            rows = rows.astype(self.file_dtype, copy=False)
        rows = rows.reshape(y1 - y0, self.width, depth)
        return self._convert(rows, plane), plane, y0, 0

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
                rect: Rect, keep_palette: bool = False) -> np.ndarray:
    """Decode the pixels of ``rect`` of a page: (h, w) for one sample, else (h, w, samples).
    Only the segments touching ``rect`` are read and decoded, each once."""
    return PageReader(tf, page, url, index, keep_palette).read(rect)


#: NewSubfileType bits (TIFF 6.0): the page is a reduced-resolution version of another page;
#: the page is a transparency mask of another page
REDUCED_IMAGE, TRANSPARENCY_MASK = 0b1, 0b100
#: what a job leaves out by default: (page index, "mask" or "reduced", the image page before
#: it, which it is derived from, or None; whether a mask is a reduced page's: NewSubfileType 5);
#: and what every job leaves out: (page index, "levels", that page, False) of a page that
#: holds reduced-resolution levels as its SubIFDs (an OME-TIFF pyramid), never read
LeftOut = tuple[int, str, int | None, bool]


#: how an internal mask's bits are read: 0 (not valid) and 255 (valid), as GDAL reads them
_MASK_KIND = PixelKind(np.dtype(np.uint8), 1, "minisblack", "mask",
                       lut=np.array([0, 255], np.uint8))


def internal_mask(page: tifffile.TiffPage, after: tifffile.TiffPage) -> bool:
    """Whether ``after``, the page right after ``page`` in the file, is ``page``'s internal
    mask as GDAL writes one (``dataset.write_mask``, ``GDAL_TIFF_INTERNAL_MASK``): marked a
    mask of a full-resolution image (NewSubfileType bit 2, not bit 0: 5 is an overview's),
    of the page's size, one 1-bit sample (1 valid, 0 not), in a compression the reader
    decodes. The output carries it (docs/inputs.md, "Masks and overviews stored as pages")."""
    kind = int(after.subfiletype)
    compression = int(after.compression)
    return (bool(kind & TRANSPARENCY_MASK) and not kind & REDUCED_IMAGE
            and (int(after.imagelength), int(after.imagewidth))
            == (int(page.imagelength), int(page.imagewidth))
            and int(after.samplesperpixel) == 1 and after.bitspersample == 1
            and int(after.imagedepth) == 1
            and (compression == 1 or (compression in TIFF.DECOMPRESSORS
                                      and compression not in _UNDECODABLE)))


def is_mask(page: tifffile.TiffPage) -> bool:
    """A transparency mask: NewSubfileType bit 2 (GDAL takes such a page, 1 or 8-bit, for the
    mask of the image before it, whatever its Photometric) or Photometric MASK. It is the
    valid area of another page, never an image to process."""
    return bool(int(page.subfiletype) & TRANSPARENCY_MASK) or \
        int(page.photometric) == PHOTOMETRIC.MASK


def _sampling(index: int, page: tifffile.TiffPage) -> tuple[Any, ...]:
    """(index, height, width, samples, bits, sample format) of a page: what a reduced page
    is compared with (:func:`_reduces`)."""
    return (index, int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel),
            page.bitspersample, int(page.sampleformat))


def _reduces(page: tifffile.TiffPage, base: tuple[Any, ...]) -> bool:
    """Whether ``page`` is a reduced-resolution version of the page ``base`` describes: the
    same samples, smaller, and the base's shape reduced by one factor, each side rounded
    either way (an overview of GDAL, gdaladdo, a COG or libvips: 350 x 450 of 700 x 900).
    An Aperio label or macro (NewSubfileType 1 and 9) is not of its slide's shape."""
    _, h, w, samples, bits, fmt = base
    hr, wr = int(page.imagelength), int(page.imagewidth)
    # wr = w / f + a, hr = h / f + b with |a|, |b| < 1: |wr h - hr w| = |a h - b w| < w + h
    return ((int(page.samplesperpixel), page.bitspersample, int(page.sampleformat))
            == (samples, bits, fmt) and hr <= h and wr <= w and hr * wr < h * w
            and abs(wr * h - hr * w) < w + h)


def _derived(page: tifffile.TiffPage, base: tuple[Any, ...] | None, svs: bool) -> str:
    """"mask", "reduced" or "": whether ``page`` is derived from the image page before it
    (``base``, :func:`_sampling`; None: there is none): a transparency mask, or a reduced-
    resolution page of that page (an overview stored in the chain of pages). An Aperio SVS
    file's pages never are (its label and macro are marked reduced, 1 and 9, and are images
    of their own: processed as every other page of the slide)."""
    if is_mask(page):
        return "mask"
    if (int(page.subfiletype) & REDUCED_IMAGE and base is not None and not svs
            and not page.is_svs and _reduces(page, base)):
        return "reduced"
    return ""


def _marked(page: tifffile.TiffPage) -> bool:
    """Marked reduced-resolution or mask: never the image page a later page derives from."""
    return bool(int(page.subfiletype) & (REDUCED_IMAGE | TRANSPARENCY_MASK)) or is_mask(page)


def classified(tf: tifffile.TiffFile, url: str, count: int, aperio: bool = True
               ) -> Iterator[tuple[int, tifffile.TiffPage, LeftOut | None]]:
    """Every page of the file in order, each with why a job without ``pages`` leaves it
    out (:func:`_derived`: a mask or an overview of the image page before it), or None: an
    image page. Each IFD is read once, and let go after its page (a file of 10,000 pages
    is never held whole). ``aperio`` False: an Aperio SVS file's pages are told apart as
    any file's (a tiffpipe output's, whose levels as pages merge marks reduced-resolution,
    while its label stays an image)."""
    svs = aperio and bool(tf.pages.first.is_svs)
    base: tuple[Any, ...] | None = None
    for i in range(count):
        page = get_page(tf, url, i)
        kind = _derived(page, base, svs)
        yield i, page, ((i, kind, base[0] if base else None,
                         bool(int(page.subfiletype) & REDUCED_IMAGE)) if kind else None)
        if not _marked(page):
            base = _sampling(i, page)


def classified_masks(tf: tifffile.TiffFile, url: str, count: int
                     ) -> Iterator[tuple[int, tifffile.TiffPage, LeftOut | None, bool]]:
    """:func:`classified`, each page also with whether it is the internal mask of the image
    page right before it (:func:`internal_mask`), which a job carries into its output."""
    before: tifffile.TiffPage | None = None  # (the page before, when it is an image)
    for i, page, why in classified(tf, url, count):
        yield i, page, why, bool(why) and before is not None and internal_mask(before, page)
        before = None if why else page


def _mask_listed(url: str, index: int, page: tifffile.TiffPage, of: int | None,
                 images: list[int]) -> UnsupportedTiffError:
    """The error of a job that lists a mask page: which it is, and the image pages to list."""
    listed = (json.dumps(images) if len(images) <= 12 else
              f"[{', '.join(map(str, images[:12]))}, ...] ({len(images)} pages)")
    whose = "" if of is None else f" of a reduced-resolution page of page {of}" \
        if int(page.subfiletype) & REDUCED_IMAGE else f" of page {of}"
    return UnsupportedTiffError(
        f"{url}: page {index} is a transparency mask{whose} (NewSubfileType "
        f"{int(page.subfiletype)}, Photometric {_name(page.photometric, PHOTOMETRIC)}), the "
        f"valid area of an image, not an image to process: list the file's image pages in "
        f"the job's pages instead (\"pages\": {listed}), or leave pages out to process them "
        "all (mask pages are then left out)")


def read_infos(url: str, pages: list[int] | None, keep_palette: bool = False,
               hand_over: bool = False) -> list[PageInfo]:
    """Infos of the asked pages of a TIFF (all its image pages when ``pages`` is None:
    :func:`classified`), reading IFDs only.
    ``keep_palette``: palette pages keep their indices and colormap (see :func:`pixel_kind`).
    ``hand_over``: a local file stays open for the job's unit (:func:`kept_tiff`, in any
    thread of this process), which then does not open it and parse its first IFD again."""
    return read_infos_and_version(url, pages, keep_palette, hand_over)[0]


def read_infos_and_version(url: str, pages: list[int] | None, keep_palette: bool = False,
                           hand_over: bool = False, left_out: list[LeftOut] | None = None,
                           refused: list[tuple[int, TiffpipeError]] | None = None,
                           reads: Reads | None = None) -> tuple[list[PageInfo], str]:
    """:func:`read_infos`, and the version of the input read (:func:`storage.version_of`:
    what the job's units must find), from the one open of it. ``left_out``: a list that
    gets the pages left out (when ``pages`` is None: masks and overviews,
    :func:`classified`) and the pages read whose SubIFD levels are (:data:`LeftOut`), for the
    job's note. The chain of pages must end
    cleanly (:func:`check_chain_end`) when every page is asked for, or one beyond those
    read: pages asked for of a file cut short after them are read. A listed mask page is an
    UnsupportedTiffError naming the image pages to list instead; a listed reduced-resolution
    page (an overview) is processed, as a page of its own: not marked reduced in the output
    (it would be taken for an overview of the processed page, which it does not match).
    ``refused``: a list that gets (page, error) of each page refused (one the reader does
    not read, a listed page not in the file or a mask), which is left out of the infos,
    instead of the first such error raised: every page's problem at once (``tiffpipe
    validate --inputs``); errors of the file as a whole are raised still. ``reads``: the
    region of each page the job reads (:func:`page_info`): a page cut short elsewhere is
    read."""
    stack = ExitStack()
    page_errors = (UnsupportedTiffError, CorruptTiffError, PageNotFoundError)

    def info_of(page: tifffile.TiffPage, i: int) -> PageInfo | None:
        try:
            return page_info(page, url, i, keep_palette, reads)
        except page_errors as exc:
            if refused is None:
                raise
            refused.append((i, exc))
            return None

    fh = stack.enter_context(storage.open_input(url))
    try:
        version = storage.version_of(fh)
        tf = stack.enter_context(_parsed(fh, url))
        count = page_count(tf, url)
        if pages is None or max(pages) >= count:
            check_chain_end(tf, url, count)
        left = [] if left_out is None else left_out
        infos: list[PageInfo] = []
        if pages is None:
            if (loop := chain_loop(tf, url)) is not None:  # (said by the job's note)
                left.append((loop[0], "loop", loop[1], False))
            image_pages = 0
            for i, page, why, mask in classified_masks(tf, url, count):
                if why:
                    left.append(why)
                    if mask and infos and infos[-1].index == i - 1:  # (its image was read)
                        infos[-1] = replace(infos[-1], mask_ifd=int(page.offset))
                else:
                    image_pages += 1
                    if (info := info_of(page, i)) is not None:
                        infos.append(info)
                        left.extend(_subifd_levels(page, i))
            if not image_pages:
                raise UnsupportedTiffError(
                    f"{url}: has no image page to process: its {count} page(s) are "
                    "transparency masks (NewSubfileType 4 or Photometric MASK), the valid "
                    "areas of images that are not in the file; process the file the "
                    "masks belong to")
        else:
            derived: dict[int, LeftOut] | None = None  # (read when a listed page is marked)
            images: list[int] = []  # (the file's image pages, then)
            for i in pages:
                try:
                    page = get_page(tf, url, i)
                except PageNotFoundError as exc:
                    if refused is None:
                        raise
                    refused.append((i, exc))
                    continue
                if _marked(page) and derived is None:
                    derived = {}
                    for j, _, why in classified(tf, url, count):
                        if why:
                            derived[j] = why
                        else:
                            images.append(j)
                why = derived.get(i) if derived else None
                if why and why[1] == "mask":
                    if refused is None:
                        raise _mask_listed(url, i, page, why[2], images)
                    refused.append((i, _mask_listed(url, i, page, why[2], images)))
                    continue
                info = info_of(page, i)
                if info is None:
                    continue
                if why:  # an overview, processed as a page of its own
                    _unmark_reduced(info)
                    left.extend(_unplaced(tf, url, page, why))
                infos.append(_with_mask(tf, url, count, page, info))
                left.extend(_subifd_levels(page, i))
        st = os.stat(url) if hand_over and not storage.is_s3(url) else None
    except BaseException:
        stack.close()
        raise
    if st is None:
        stack.close()
    else:
        kept_files.hand_over(_kept_key(url, st), tf, stack.close)
    return infos, version


def _subifd_levels(page: tifffile.TiffPage, i: int) -> list[LeftOut]:
    """The job's note of page ``i``'s SubIFD levels, which no job reads (it makes its own
    with ``output_options.pyramid``): one entry when the page has any, none when not."""
    return [(i, "levels", i, False)] if page.subifds else []


def _with_mask(tf: tifffile.TiffFile, url: str, count: int, page: tifffile.TiffPage,
               info: PageInfo) -> PageInfo:
    """``info`` of a listed page, with the IFD of its internal mask (:func:`internal_mask`)
    when the next page of the file is one. A next page that cannot be read is no mask: the
    listed page is processed as before, and a job that lists that page is told."""
    if info.index + 1 >= count:
        return info
    try:
        after = get_page(tf, url, info.index + 1)
    except (CorruptTiffError, PageNotFoundError):
        return info
    return replace(info, mask_ifd=int(after.offset)) if internal_mask(page, after) else info


def _unplaced(tf: tifffile.TiffFile, url: str, page: tifffile.TiffPage, why: LeftOut
              ) -> list[LeftOut]:
    """(page, "unplaced", its image page, False) of a listed overview (``why``: how it
    derives from its image page) that has no GeoTIFF tags of its own while its image page
    has: GDAL places an overview by its image page's, so the page processed alone is not
    georeferenced, which the job's note says (a COG's overview, ``"pages": [1]``, came out
    without CRS or geotransform, and nothing said so); [] otherwise."""
    _, _, of, _ = why
    if of is None or page.is_geotiff or not get_page(tf, url, of).is_geotiff:
        return []
    return [(page.index, "unplaced", of, False)]


def _unmark_reduced(info: PageInfo) -> None:
    """An overview processed as a page of its own is not marked reduced-resolution in the
    output (its NewSubfileType's bit 0 cleared): readers would take it for an overview of
    the processed page before it."""
    kept = int(info.metadata.get("subfiletype", 0)) & ~REDUCED_IMAGE
    if kept:
        info.metadata["subfiletype"] = kept
    else:
        info.metadata.pop("subfiletype", None)
