"""JPEG segments decoded at 1/8 of their size: libjpeg's DCT scaling, through OpenCV's
``imdecode`` (``IMREAD_REDUCED_*_8``), for previews of JPEG pages.

A scaled decode skips the inverse DCT, the upsampling and the color conversion of the pixels
it does not return: a smooth 512 x 512 RGB tile decodes about three times faster at 1/8, a
detailed one less (its entropy decoding, which no scale skips, is more of the work). Each pixel
it returns is its 8 x 8 block's DC coefficient, about the mean of the block's decoded pixels
(without the full decode's rounding and clamping; subsampled chroma is interpolated at the
smaller scale, which moves colors at sharp color edges by a few levels), so a thumbnail
averaged from it is the page's thumbnail within a few levels, not bit for bit. OpenCV also
decodes at 1/2 and 1/4, but a thumbnail from those was no faster than from the full decode
(the entropy decoding, which no scale skips, is most of the work): not used.

What it decodes: baseline 8-bit JPEG segments of one sample (gray) or three (YCbCr or RGB),
with or without the page's JPEGTables (abbreviated streams are completed with them, as
libtiff does). :func:`usable` says whether a page is such a page; the caller still checks
one segment against the full decode (:func:`agrees`), since a stream's markers, not the TIFF
tags, tell libjpeg its color space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.thumbs import block_sums

if TYPE_CHECKING:
    from pipeline.adapters.tiff_read import PageReader

#: the scales used, largest first (1/8 only: see above)
SCALES = (8,)
#: a scaled decode agrees with the full one when the mean difference of its pixels from
#: the full decode's block means is at most this (levels of 255): a difference of color
#: space (RGB read as YCbCr) is tens of levels; scaling itself about half a level
AGREE_MEAN = 4.0
JPEG = 7  # the TIFF compression tag of JPEG ("new-style", with or without JPEGTables)
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def usable(reader: PageReader, scale: int) -> bool:
    """Whether the segments of ``reader``'s page can be decoded at 1/``scale``: 8-bit JPEG,
    interleaved, one or three samples as stored (no palette, no inversion, no extra
    samples), segments a whole number of ``scale`` pixel blocks high and, tiles, wide (a
    strip is as wide as the page: a page whose width ends inside a block would have every
    strip's last block padded, so none is used)."""
    page, kind = reader.page, reader.kind
    return (int(page.compression) == JPEG and reader.file_dtype == np.uint8
            and not reader.separate and not kind.conversion and kind.lut is None
            and not kind.invert and reader.samples == reader.file_samples
            and reader.samples in (1, 3) and not page.extrasamples
            and int(page.photometric) in ((1,) if reader.samples == 1 else (2, 6))
            and reader.seg_h % scale == 0 and reader.seg_w % scale == 0
            and _cv2() is not None)


def decode(data: bytes, tables: bytes | None, scale: int, samples: int) -> np.ndarray:
    """The pixels of one JPEG segment at 1/``scale`` of its size, (h, w, samples) uint8
    (h = ceil(segment height / scale)). ``ValueError`` if it does not decode."""
    cv2 = _cv2()
    if tables and data.startswith(_SOI) and tables.startswith(_SOI) and tables.endswith(_EOI):
        data = tables[:-2] + data[2:]  # an abbreviated stream, completed with the tables
    gray = samples == 1
    flag = {(8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8,
            (8, False): cv2.IMREAD_REDUCED_COLOR_8}[(scale, gray)]
    px = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if px is None:
        raise ValueError("OpenCV could not decode the JPEG stream")
    return px[:, :, None] if gray else px[:, :, ::-1]  # OpenCV's BGR -> RGB


def block_means(px: np.ndarray, scale: int) -> np.ndarray:
    """The means of ``px``'s ``scale`` x ``scale`` blocks ((h, w, c); at the right and bottom,
    of the pixels a part block holds), float64: what a scaled decode approximates, and what
    stands in for it where a block is part outside the page (a JPEG encoder pads it with
    pixels of its own: black, edge copies)."""
    h, w = px.shape[:2]
    rstarts, cstarts = np.arange(0, h, scale), np.arange(0, w, scale)
    counts = np.outer(np.diff(rstarts, append=h), np.diff(cstarts, append=w))
    return block_sums(px, rstarts, cstarts) / counts[..., None]


def agrees(scaled: np.ndarray, full: np.ndarray, scale: int) -> bool:
    """Whether a segment's scaled decode is its full decode's block means (:data:`AGREE_MEAN`),
    over the segment's whole blocks."""
    rows, cols = full.shape[0] // scale, full.shape[1] // scale
    if scaled.shape[0] < rows or scaled.shape[1] < cols or scaled.shape[2] != full.shape[2]:
        return False
    expected = block_means(full[:rows * scale, :cols * scale], scale)
    return float(np.abs(scaled[:rows, :cols] - expected).mean()) <= AGREE_MEAN


def _cv2() -> Any:
    """OpenCV, imported when first needed (None where it is not installed: the Lambda images
    other than the process image carry none)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2
