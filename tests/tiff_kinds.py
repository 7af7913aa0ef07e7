"""The documented conversions of pages that are not plain gray or RGB (README, "Inputs"),
written out independently of the reader, for tests to compare against: tifffile reads the
whole page, then these rules give the pixels tiffpipe must process."""

from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image


def whole_page(page: tifffile.TiffPage, libtiff: bool = False) -> np.ndarray:
    """tifffile's read of a whole page as (h, w) or (h, w, samples); old-style JPEG, which
    tifffile does not decode, and pages read with ``libtiff``, as libtiff reads them
    (Pillow's whole-file read)."""
    if int(page.compression) == 6 or libtiff:
        with Image.open(page.parent.filehandle.path) as image:
            image.seek(page.index)
            return np.asarray(image)
    data = page.asarray()
    if page.planarconfig == 2 and page.samplesperpixel > 1:
        data = np.moveaxis(data, 0, -1)
    return data


def palette_rgb(colormap: np.ndarray) -> np.ndarray:
    """(entries, 3) RGB of a TIFF colormap: 8-bit when every value is < 256 (as libtiff
    assumes), else /257 when that is exact, else 16-bit as stored."""
    cmap = np.asarray(colormap).reshape(3, -1).astype(np.uint16)
    if cmap.max() < 256:
        return cmap.T.astype(np.uint8)
    if not (cmap % 257).any():
        return (cmap.T // 257).astype(np.uint8)
    return cmap.T.copy()


def documented(page: tifffile.TiffPage, keep_palette: bool = False,
               libtiff: bool = False) -> np.ndarray:
    """The pixels tiffpipe processes for ``page``: tifffile's whole-page read (libtiff's
    with ``libtiff``, see :func:`whole_page`), converted."""
    data = whole_page(page, libtiff)
    photometric, bits = int(page.photometric), page.bitspersample
    if photometric in (0, 1) and bits in (1, 2, 4):  # bilevel and 2/4-bit gray -> 8-bit
        top = 2**bits - 1
        values = data.astype(np.int64)
        if photometric == 0:  # miniswhite: 0 is white
            values = top - values
        return (values * (255 // top)).astype(np.uint8)
    if photometric == 0:  # miniswhite unsigned: max - v on the gray sample, alpha untouched
        data = data.copy()
        top = np.iinfo(data.dtype).max
        if data.ndim == 2:
            data = top - data
        else:
            data[..., 0] = top - data[..., 0]
        return data
    if photometric == 3:  # palette
        if keep_palette and bits <= 8:
            return data.astype(np.uint8)
        rgb = palette_rgb(page.colormap)[: 2**bits]
        return rgb[data.astype(np.int64)]
    return data
