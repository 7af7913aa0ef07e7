"""Thumbnails of any TIFF page, in bounded memory: ``tiffpipe preview`` and the contact sheet.

The source is the smallest version of the page that is still at least the thumbnail's size:
a SubIFD pyramid level, a reduced-resolution page that follows it in the file, or the page
itself. That source is read segment by segment through :class:`PageReader` (so bilevel,
miniswhite and palette pages look as they are processed, and a gray class map with a colour
table, a ColorMap, as a palette page: in its colours, as GDAL and QGIS draw it) and averaged
down as it goes;
the next few segments are decoded in threads meanwhile. Memory holds a few strips or tiles
(at most :data:`AHEAD_BYTES` decoded ahead) plus the thumbnail, never the page.

When the page's strips are short compared with the rows one thumbnail row covers, only the
segment rows that hold the middle row of some thumbnail row are decoded (a strided read): a
thumbnail of a 100,000-row page stored in 16-row strips decodes about one strip in
``100000 / 16 / size``. Otherwise every segment is decoded once and the thumbnail is the exact
area average of the page, except on 8-bit JPEG pages at least 16 times the thumbnail's size
(unless ``exact``): their segments are decoded at 1/8 of their size by libjpeg's DCT scaling
(:mod:`pipeline.adapters.jpeg_scaled`; up to three times faster), each pixel of that about
the mean of an 8 x 8 block, and the thumbnail averages those blocks over the same page
pixels as the exact average (:class:`BlockThumb`): within a few levels of it. One segment is
decoded both ways first; a page whose scaled decode disagrees is decoded in full.

Display: 8-bit pixels as they are; wider integers scaled from the thumbnail's own minimum and
maximum (their type's full range when it holds one value); floats
from [0, 1] when every value lies there, else from the thumbnail's own min..max; alpha is
composited over a light checkerboard (associated alpha as premultiplied); unspecified extra
samples are dropped.
"""

from __future__ import annotations

import logging
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import field
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from pipeline.adapters import jpeg_scaled, png_write, storage
from pipeline.adapters.metadata import ORIENTATION
from pipeline.adapters.tiff_read import (
    REPAIR,
    PageReader,
    get_page,
    gray_colour_table,
    open_tiff,
    page_count,
    page_info,
)
from pipeline.core.grid import Rect
from pipeline.core.models import PageInfo
from pipeline.core.record import record
from pipeline.core.thumbs import BlockThumb, ThumbSums, fit
from pipeline.errors import CorruptTiffError, TiffpipeError
from pipeline.steps.common import usable_cores

#: default thumbnail box (pixels)
DEFAULT_SIZE = 512
#: reduced-resolution pages looked at after a page (they follow it in the file)
MAX_FOLLOWING = 32
#: uncompressed strips are read in bands of at most this many bytes
RAW_BAND_BYTES = 8 * 2**20
#: threads that decode a page's segments ahead of the one being summed; as many segments
#: are decoded ahead as twice this, holding at most AHEAD_BYTES of pixels
MAX_DECODE_THREADS = 4
AHEAD_BYTES = 64 * 2**20
#: columns averaged at once (bounds the float64 temporary of a wide strip)
COLUMN_CHUNK = 4096
#: what reading a damaged IFD chain raises (levels are optional: such chains are skipped)
_DAMAGED = (TiffpipeError, tifffile.TiffFileError, EOFError, ValueError, OSError, IndexError,
            KeyError, TypeError, struct.error, RecursionError)

log = logging.getLogger("tiffpipe")


@record
class Thumbnail:
    """A page's thumbnail and where its pixels came from."""

    image: Image.Image  # RGB
    page: int  # the page index asked for
    height: int  # the page's full size
    width: int
    source: str  # where the pixels came from ("page 0", "SubIFD level 3 (512x384)", ...)
    strided: bool  # only some segment rows were decoded
    decoded: int  # segments decoded
    largest_read: int  # most pixels one window read held (bounded by one segment)
    dtype: str = ""
    notes: list[str] = field(default_factory=list)
    jpeg_scale: int = 1  # the segments were decoded at 1/jpeg_scale (libjpeg's DCT scaling)
    orientation: int = 1  # the page's TIFF Orientation, by which the image was turned
    raw_read: int = 0  # uncompressed strips read (by rows, nothing decoded: decoded is 0)

    @property
    def description(self) -> str:
        how = "strided" if self.strided else "area average"
        if self.jpeg_scale > 1:
            how += f" of a 1/{self.jpeg_scale} JPEG decode"
        if self.orientation != 1:
            how += f", turned as Orientation {self.orientation} says"
        return (f"{self.image.width}x{self.image.height} thumbnail of page {self.page} "
                f"({self.width}x{self.height} {self.dtype}) from {self.source}, {how}, "
                f"{self._segments}")

    @property
    def _segments(self) -> str:
        """How much of the source was read: its segments decoded, or (an uncompressed strip
        is read as rows, not decoded) its strips read."""
        if self.raw_read:
            return f"{self.raw_read} uncompressed strip(s) read"
        return f"{self.decoded} segment(s) decoded"


#: how a viewer turns a page of each TIFF Orientation to show it (as PIL's exif_transpose
#: and libvips' autorot do; 1, or a value outside 1-8: as stored)
_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def orientation_of(value: Any) -> int:
    """A TIFF Orientation value as 1-8 (1 when missing or invalid)."""
    try:
        number = int(value[0] if isinstance(value, list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return 1
    return number if number in _TURNS else 1


def turned(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` (as stored) as a viewer shows a page of that Orientation."""
    turn = _TURNS.get(orientation)
    return image if turn is None else image.transpose(turn)


def _levels(tf: tifffile.TiffFile, page: tifffile.TiffPage, index: int,
            where: str) -> list[tuple[tifffile.TiffPage, str]]:
    """Smaller versions of ``page``: its SubIFDs, an Aperio SVS file's levels of its first
    page, then reduced-resolution pages after it."""
    found: list[tuple[tifffile.TiffPage, str]] = []
    aspect = page.imagelength / max(page.imagewidth, 1)

    def same_picture(p: Any) -> bool:
        return (p.imagelength < page.imagelength and p.imagewidth < page.imagewidth
                and abs(p.imagelength / max(p.imagewidth, 1) - aspect) <= 0.02 * aspect + 0.01)

    if page.subifds:
        try:
            sub = tifffile.TiffPages(page)
            for k in range(len(sub)):  # len() first: a SubIFD loop ends
                p = sub[k]
                p = p if isinstance(p, tifffile.TiffPage) else p.aspage()
                if same_picture(p):
                    found.append((p, f"SubIFD level {k + 1} ({p.imagewidth}x{p.imagelength})"))
        except _DAMAGED as exc:  # a damaged SubIFD chain: the page itself is still there
            log.debug("%s: page %d: SubIFDs not used: %s", where, index, exc)
    try:
        if index == 0 and tf.is_svs:  # Aperio: base, thumbnail, then the base's levels (none
            for k, level in enumerate(tf.series[0].levels[1:]):  # of them NewSubfileType 1)
                p = level.keyframe
                if same_picture(p):
                    found.append((p, f"SVS level {k + 1} ({p.imagewidth}x{p.imagelength})"))
    except _DAMAGED as exc:
        log.debug("%s: SVS levels not used: %s", where, exc)
    try:
        count = page_count(tf, where)
        for j in range(index + 1, min(count, index + 1 + MAX_FOLLOWING)):
            p = tf.pages[j]
            p = p if isinstance(p, tifffile.TiffPage) else p.aspage()
            if not (int(p.subfiletype) & 1):
                break  # the next full-resolution page
            if same_picture(p):
                label = f"reduced-resolution page {j} ({p.imagewidth}x{p.imagelength})"
                found.append((p, label))
    except _DAMAGED as exc:
        log.debug("%s: pages after %d not used: %s", where, index, exc)
    usable = []
    for p, label in found:
        try:
            page_info(p, where, index)  # a level tiffpipe cannot read is not used
            usable.append((p, label))
        except TiffpipeError:
            continue
    return usable


def thumbnail(url: str, page: int = 0, size: int = DEFAULT_SIZE,
              exact: bool = False, option: str | None = None) -> Thumbnail:
    """The thumbnail of page ``page`` of a local or S3 TIFF, fitting a ``size`` box
    (``exact``: JPEG pages decoded in full, as every other page, not at a smaller scale).
    ``option``: the command's option that gave ``page`` (a page the file lacks: the error
    says to fix it, see :func:`get_page`)."""
    with open_tiff(url) as tf:
        return page_thumbnail(tf, url, page, size, exact, option)


def thumbnails(url: str, pages: list[int], size: int = DEFAULT_SIZE, exact: bool = False
               ) -> list[Thumbnail | TiffpipeError | Exception]:
    """The thumbnails of several pages of one file, opened once (a file of n pages opened
    for each page walks its chain of pages n times over); a page that cannot be shown gets
    its error in its place."""
    results: list[Thumbnail | TiffpipeError | Exception] = []
    try:
        with open_tiff(url) as tf:
            for page in pages:
                try:
                    results.append(page_thumbnail(tf, url, page, size, exact))
                except Exception as exc:  # noqa: BLE001 - the caller shows it for the page
                    results.append(exc)
    except Exception as exc:  # noqa: BLE001 - opening failed: every page's error
        results += [exc] * (len(pages) - len(results))
    return results


def page_thumbnail(tf: tifffile.TiffFile, url: str, page: int, size: int,
                   exact: bool = False, option: str | None = None) -> Thumbnail:
    """:func:`thumbnail` of a page of an open file."""
    main = get_page(tf, url, page, option)
    info = page_info(main, url, page)  # the named error of a page tiffpipe cannot read
    height, width = int(main.imagelength), int(main.imagewidth)
    th, tw = fit(height, width, size)
    candidates = [(main, f"page {page}")] + _levels(tf, main, page, url)
    big_enough = [(p, label) for p, label in candidates
                  if p.imagelength >= th and p.imagewidth >= tw]
    source, label = min(big_enough, key=lambda c: c[0].imagelength * c[0].imagewidth)
    # the segments ahead are decoded in threads (the codecs release the GIL) while this one
    # sums the one it read; a pool starts its threads at the first one decoded ahead
    with ThreadPoolExecutor(min(MAX_DECODE_THREADS, usable_cores())) as decoder:
        reader = PageReader(tf, source, url, page, decoder=decoder,
                            colours=gray_colour_table(main))  # (a level holds its values)
        pixels, strided, scale = downsample(reader, th, tw, exact)
    extrasamples = [int(e) for e in source.extrasamples]
    image = to_display(pixels, reader.dtype, extrasamples, reader.kind.photometric)
    orientation = orientation_of(main.tags.valueof(ORIENTATION))
    return Thumbnail(turned(image, orientation), page, height, width, label, strided,
                     reader.decoded, reader.largest_read, type_label(info), jpeg_scale=scale,
                     orientation=orientation, raw_read=len(reader.raw_read))


#: the caption's type of a 1-bit page (an input's, or a ``bilevel`` output's)
BILEVEL_LABEL = "1-bit"


def type_label(info: PageInfo) -> str:
    """A page's pixel type as a thumbnail's caption gives it: its dtype, but a palette
    page's samples are colour-map indices (``8-bit palette``), not the colours read, and a
    1, 2 or 4-bit gray page's are bits (``1-bit``, ``4-bit gray``), read as uint8."""
    if info.conversion.startswith("bilevel "):  # "bilevel miniswhite -> 8-bit minisblack ..."
        return BILEVEL_LABEL
    if info.conversion.startswith(("2-bit gray ", "4-bit gray ")):
        return info.conversion[:len("2-bit gray")]
    if "palette" in info.conversion:  # e.g. "4-bit palette -> RGB uint8 (8-bit colormap)"
        return info.conversion.split(" palette", 1)[0] + " palette"
    if info.photometric == "palette":  # 8-bit indices kept with their colour map, as read
        return "8-bit palette"
    return info.dtype


def downsample(reader: PageReader, th: int, tw: int, exact: bool = True
               ) -> tuple[np.ndarray, bool, int]:
    """Average the page of ``reader`` down to (th, tw, channels) float64, one segment at a
    time. Returns the pixels, whether the read was strided (some segment rows skipped) and
    the JPEG scale its segments were decoded at (1: in full; see :func:`_jpeg_scale`).

    A page of integers that is its own thumbnail (it fits the box) is returned as it is
    read: each pixel is its own mean, and the sums' float64 tables (3.5 MB for a 256 x 256
    RGB page, in fresh memory: the sheet of a one-page run spent milliseconds in page
    faults) would only give the same values back."""
    height, width, channels = reader.height, reader.width, reader.samples
    if (th, tw) == (height, width) and reader.dtype.kind in "ui":
        whole = Rect(0, 0, height, width)
        reader.prefetch(whole)  # in the decoder's threads, if it has some
        return reader.read(whole).reshape(height, width, channels), False, 1
    seg_h = reader.seg_h
    if reader.raw_strips:  # read uncompressed strips in bands, not whole
        row_bytes = width * reader.file_samples * max(reader.file_dtype.itemsize, 1)
        seg_h = max(1, min(seg_h, RAW_BAND_BYTES // max(row_bytes, 1)))
    seg_rows = -(-height // seg_h)
    # thumbnail row t covers page rows ceil(t * height / th) .. ceil((t + 1) * height / th) - 1
    bounds = -(-(np.arange(th + 1, dtype=np.int64) * height) // th)
    middles = (bounds[:-1] + bounds[1:] - 1) // 2
    needed = sorted({int(m) // seg_h for m in middles})
    strided = len(needed) < seg_rows
    scale = 1 if exact or strided else _jpeg_scale(reader, th, tw)
    if scale > 1:
        pixels = _scaled(reader, th, tw, scale)
        if pixels is not None:
            return pixels, False, scale
    sums = ThumbSums(height, width, th, tw, channels)
    if reader.page.is_tiled:
        columns = [(c * reader.seg_w, min(width, (c + 1) * reader.seg_w))
                   for c in range(reader.seg_cols)]
    else:
        columns = [(0, width)]  # a strip is one segment across the page
    windows = [Rect(r * seg_h, x0, min(height, (r + 1) * seg_h), x1)
               for r in needed for x0, x1 in columns]
    segment_bytes = reader.seg_h * reader.seg_w * channels * max(reader.dtype.itemsize, 1)
    ahead = (min(2 * MAX_DECODE_THREADS, AHEAD_BYTES // max(segment_bytes, 1))
             if reader.decoder is not None and len(windows) > 1 else 0)
    for i, window in enumerate(windows):
        for later in windows[i:i + ahead + 1] if ahead else ():  # decoded meanwhile
            reader.prefetch(later)
        px = reader.read(window)
        reader.cache.clear()  # one segment at a time (and those decoded ahead)
        px = px.reshape(window.height, window.width, channels)
        for cx0 in range(0, window.width, COLUMN_CHUNK):
            sums.add(px[:, cx0:cx0 + COLUMN_CHUNK], window.y0, window.x0 + cx0)
    return sums.mean(), strided, 1


def _jpeg_scale(reader: PageReader, th: int, tw: int) -> int:
    """The largest JPEG scale (:data:`jpeg_scaled.SCALES`) the page is at least twice as large
    as the thumbnail by, if its segments can be decoded at it (:func:`jpeg_scaled.usable`),
    else 1."""
    reduction = min(reader.height / th, reader.width / tw)
    for scale in jpeg_scaled.SCALES:
        if reduction >= 2 * scale and jpeg_scaled.usable(reader, scale):
            return scale
    return 1


def _scaled(reader: PageReader, th: int, tw: int, scale: int) -> np.ndarray | None:
    """:func:`downsample` of a JPEG page from its segments decoded at 1/``scale``: each of
    their pixels, about the mean of a ``scale`` x ``scale`` block, counted in the thumbnail
    pixels by the page pixels they share (:class:`BlockThumb`). The segments at the page's
    right and bottom edges are decoded in full when the page ends inside a block (the
    encoder's padding is in that block's scaled pixel), and so is a segment OpenCV refuses
    (a damaged one: the full decode reads what it can, or names it). None when the first
    stored segment's scaled decode disagrees with its full decode (the caller then decodes
    the page in full)."""
    height, width, channels = reader.height, reader.width, reader.samples
    sums = BlockThumb(height, width, th, tw, channels, scale)
    tables = reader.jpegtables
    segments = [divmod(seg, reader.seg_cols) for seg in range(reader.seg_rows * reader.seg_cols)]
    last_row = reader.seg_rows - 1 if height % scale else -1
    last_col = reader.seg_cols - 1 if width % scale else -1

    def valid(r: int, c: int) -> tuple[int, int]:  # the segment's pixels inside the page
        return (min(height, (r + 1) * reader.seg_h) - r * reader.seg_h,
                min(width, (c + 1) * reader.seg_w) - c * reader.seg_w)

    def decoded(seg: int, data: bytes | None) -> np.ndarray:
        r, c = segments[seg]
        # (a sparse segment, data None: the full decode's, the page's no-data value or zeros)
        if data is not None and r != last_row and c != last_col:
            try:
                return jpeg_scaled.decode(data, tables, scale, channels)
            except ValueError:  # OpenCV refuses a damaged stream that libjpeg through
                pass  # imagecodecs may still read: decoded in full, as --exact would
        h, w = valid(r, c)
        return jpeg_scaled.block_means(reader.decode_segment(seg, data)[0][:h, :w], scale)

    # the first stored segment, decoded both ways: the stream's markers, not the TIFF tags,
    # tell libjpeg its color space (what they give is that segment's pixels below: it is
    # not decoded again)
    check = next((s for s in range(len(segments)) if int(reader.page.databytecounts[s])), None)
    ready: dict[int, np.ndarray] = {}
    if check is not None:
        data = reader.segment_bytes(check)
        try:
            scaled = jpeg_scaled.decode(data, tables, scale, channels)
        except ValueError:
            scaled = np.zeros((0, 0, channels))
        full = reader.decode_segment(check, data)[0]
        if not jpeg_scaled.agrees(scaled, full, scale):
            log.info("%s: a 1/%d JPEG decode disagrees with the full decode: read in full",
                     reader.where, scale)
            return None
        r, c = segments[check]
        h, w = valid(r, c)
        ready[check] = (jpeg_scaled.block_means(full[:h, :w], scale)
                        if r == last_row or c == last_col else scaled)
    pool = reader.decoder
    ahead = 2 * MAX_DECODE_THREADS if pool is not None else 0
    pending: dict[int, Future[np.ndarray]] = {}
    band = np.zeros((-(-reader.seg_h // scale), -(-width // scale), channels), np.float32)
    for seg, (r, c) in enumerate(segments):
        for later in range(seg, min(len(segments), seg + ahead + 1)):
            if later not in pending and later not in ready and pool is not None:
                pending[later] = pool.submit(decoded, later, reader.segment_bytes(later))
        if seg in ready:
            px = ready.pop(seg)
        elif seg in pending:
            px = pending.pop(seg).result()
        else:
            px = decoded(seg, reader.segment_bytes(seg))
        h, w = valid(r, c)
        rows, cols, x0 = -(-h // scale), -(-w // scale), c * reader.seg_w // scale
        if px.shape[0] < rows or px.shape[1] < cols:
            raise CorruptTiffError(f"{reader.where}: segment {seg} (JPEG) holds fewer pixels "
                                   f"than its place in the page; the file is damaged: {REPAIR}")
        band[:rows, x0:x0 + cols] = px[:rows, :cols]
        if c == reader.seg_cols - 1:  # a row of segments: its band, summed at once
            sums.add(band[:rows], r * reader.seg_h // scale, 0)
    return sums.mean()


def display_range(values: np.ndarray, dtype: np.dtype) -> tuple[float, float]:
    """The value range shown as black..white for pixels of ``dtype``: 8-bit integers their
    type's; wider integers (a satellite scene's reflectances, 0 to 10000 of uint16; a 12-bit
    camera's counts) the values' own minimum to maximum, as GIS and image viewers stretch
    them, or their type's when they hold one value; floats below."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if dtype.itemsize > 1 and values.size:
            lo, hi = float(values.min()), float(values.max())
            if hi > lo:
                return lo, hi
        return float(info.min), float(info.max)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    return (lo, hi) if hi > lo else (lo, lo + 1)


def to_display(pixels: np.ndarray, dtype: np.dtype, extrasamples: list[int],
               photometric: str = "") -> Image.Image:
    """(h, w, c) values of ``dtype`` -> an 8-bit RGB image (alpha over a checkerboard; CMYK,
    ``photometric`` "separated", as its inks on white paper: :func:`cmyk_rgb`)."""
    if photometric == "separated":
        return Image.fromarray(cmyk_rgb(pixels, dtype), "RGB")
    channels = pixels.shape[2]
    colour = 3 if channels >= 3 else 1
    extra = extrasamples[0] if extrasamples and channels in (2, 4) else None
    if pixels.dtype == np.uint8 and np.dtype(dtype) == np.uint8 and extra not in (1, 2):
        # what the steps below make of 8-bit values (v / 255 * 255, rounded): the values
        out = np.repeat(pixels[..., :1], 3, axis=2) if colour == 1 else pixels[..., :3]
        return Image.fromarray(np.ascontiguousarray(out), "RGB")
    lo, hi = display_range(pixels[..., :colour], dtype)
    # in place where it can be: one array, not one an operation (the same operations)
    rgb = pixels[..., :colour] - lo
    rgb /= hi - lo
    np.clip(rgb, 0, 1, out=rgb)
    if extra in (1, 2):  # associated / unassociated alpha
        alo, ahi = (0.0, 1.0) if np.dtype(dtype).kind == "f" else (
            float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))  # (alpha: its type's)
        alpha = np.clip((pixels[..., colour:colour + 1] - alo) / (ahi - alo), 0, 1)
        yy, xx = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
        board = np.where(((yy // 8 + xx // 8) % 2 == 0)[..., None], 1.0, 0.8)
        if extra == 1:  # premultiplied: colour already carries its alpha
            rgb = np.clip(rgb + board * (1 - alpha), 0, 1)
        else:
            rgb = rgb * alpha + board * (1 - alpha)
    rgb *= 255
    out = np.rint(rgb, out=rgb).astype(np.uint8)
    if colour == 1:
        out = np.repeat(out, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def cmyk_rgb(pixels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """8-bit RGB of CMYK values of ``dtype`` ((h, w, 4 or more): the inks, then extra
    samples, not shown): each ink takes its share of white away, ``(1 - c)(1 - k)`` and so
    on. A picture of the page, not a colour-managed conversion (which needs its printer's
    profile): pure inks show as the screen's cyan, magenta, yellow and black."""
    ink = pixels[..., :4].astype(np.float64) / float(np.iinfo(np.dtype(dtype)).max)
    rgb = (1.0 - ink[..., :3]) * (1.0 - ink[..., 3:4])
    return np.ascontiguousarray(np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8))


#: rows of an image handed to the PNG writer at once (:func:`png_bytes`)
COPY_ROWS = 2048


def png_bytes(image: Image.Image) -> bytes:
    """An RGB image as a PNG, every row with the Up filter, compressed by as many threads as
    there are cores (:mod:`png_write`: ISA-L's deflate where installed; Pillow's encoder
    picks a filter for every row, and compresses on one core), its pixels handed over
    :data:`COPY_ROWS` rows at a time (``np.asarray`` of a whole image holds its bytes twice
    on the way)."""
    blocks = (np.asarray(image.crop((0, y0, image.width, min(image.height, y0 + COPY_ROWS))))
              for y0 in range(0, image.height, COPY_ROWS))
    return png_write.encode_rows(image.width, image.height, blocks, usable_cores())


def write_preview(url: str, out: str, page: int = 0, size: int = DEFAULT_SIZE,
                  exact: bool = False) -> Thumbnail:
    """Render the thumbnail of ``url`` page ``page`` and write it as a PNG to ``out``
    (``tiffpipe preview``: a page the file lacks is to be fixed in ``--page``)."""
    thumb = thumbnail(url, page, size, exact, option="--page")
    storage.write_bytes(out, png_bytes(thumb.image))
    return thumb
