"""The tags tiffpipe carries from an input page to its output page.

Read from the IFD when a job is planned (:func:`read_metadata`, stored JSON-safe in
``PageInfo.metadata``, so the plan stays small), written by merge (:func:`output_tags`, the
keyword arguments of ``tifffile.TiffWriter.write``). What is kept and what is not, and why, is
listed in docs/inputs.md ("Metadata").

Rules:
- resolution and its unit are kept; when the op chain changes the page size they are scaled
  so that a pixel keeps its physical size (``downsample`` by k: resolution / k);
- ImageDescription, DateTime, PageName, DocumentName, Make, Model, Artist, HostComputer,
  Copyright, IPTC (as UNDEFINED, whatever type it was stored as), Orientation and
  GDAL_NODATA are copied byte for byte, except descriptions that
  describe the input file's own layout (OME-XML, ImageJ, tifffile's shaped JSON, libvips's
  properties): they would be wrong for the output, so they are dropped; an Aperio
  description (it states the page's size and pixel size) is kept as the GeoTIFF tags are,
  and GDAL_NODATA only when every op of the chain keeps values (``Op.keeps_values``:
  filters, downsample) or writes the no-data pixels back unchanged (``Op.keeps_nodata``:
  the histogram ops);
- NewSubfileType is copied but for its mask bit (an output page is never a 1-bit mask);
- the ICC profile is kept when its colour space matches the output's (RGB for RGB and
  palette pages, GRAY for gray pages): ``to_gray`` drops an RGB profile;
- GeoTIFF (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory,
  GeoDoubleParams, GeoAsciiParams) are copied byte for byte when the output page has
  the input's size; after a ``downsample`` the GeoTIFF tags are scaled so that each output
  pixel keeps its place in the world (:func:`geo_downsampled`), and dropped after any
  other size change (they map pixel positions); a ``rotate``,
  ``flip`` or ``crop`` moves the georeferencing with the pixels (:func:`geo_placed`); the
  model tags moved are written as DOUBLE, whatever numeric type the input stored, and model
  tags stored as RATIONAL or SRATIONAL are written as DOUBLE even when not moved (read as
  GDAL reads them: :func:`_rational`);
- XMP is kept, its properties as they were, through a chain that keeps the page's size
  and place, else rewritten (:func:`output_xmp`, :mod:`pipeline.core.xmp`): its size,
  resolution and Orientation properties made the output's, what cannot stay true removed,
  the rights and credits kept; a packet that does not parse is dropped, and the job's note
  says which (:func:`xmp_note`); through any chain, its properties that state how the
  samples are stored (BitsPerSample, SamplesPerPixel, PhotometricInterpretation,
  Compression, ColorMode) are made the output's as merge writes it (:func:`output_form`);
  and each output's packet
  says it is a derivative (a new ``xmpMM:InstanceID``, ``xmpMM:DerivedFrom`` the input, an
  ``xmpMM:History`` event: :func:`derivation`), so it is never copied byte for byte;
- an OME-TIFF's page that is a plane of an OME Image (its TiffData) keeps what the
  OME-XML, dropped, said of it (:func:`_ome_plane`, the OME-XML parsed once a file): its
  name (Image, Channel, Z, T) becomes the output page's PageName when it has none, and an
  OME output's Image keeps the Channel's attributes; both without the Channel when the op
  chain changes the channel count (:func:`ome_name`, :func:`ome_channel`);
- Software becomes ``tiffpipe <version>``; structural tags (size, samples, compression,
  tiles, predictor, extra samples, colormap of a kept palette) describe the output itself;
- the ColorMap of a one-band uint8 or uint16 MINISBLACK page (a class map coloured by
  rasterio's ``write_colormap``: GDAL_METADATA says COLORINTERP Palette, and GDAL and QGIS
  read it as a palette) is kept, as a palette page's colormap is, when the chain keeps its
  values as indices (:func:`keeps_colormap`); else it is dropped with that COLORINTERP
  item, and the job's note says so (:func:`colormap_note`);
- GDAL_METADATA keeps the items that still hold (:func:`gdal_metadata`): band items follow
  their band through ``select_bands``, lose their statistics through any op that changes a
  band's set of values and all but the band's name through one that remaps values, but
  a band's scale, offset and unit are rescaled through a linear map (``linear``: a convert
  that clips nothing, invert of integers, the reader's miniswhite ``max - v``);
- PageNumber is renumbered, not copied: an output page whose input page carries one gets
  (its index among the output's pages, the output's page count), whatever pages the job
  picks or leaves out and in whatever order (``page_number`` of :func:`output_tags`);
  pyramid levels and mask pages get none;
- nothing else is kept (EXIF/GPS/Interoperability sub-IFDs, SubIFDs, Photoshop, private
  tags).
- Size caps: an ICC profile above :data:`ICC_MAX` bytes and any other value above
  :data:`VALUE_MAX` bytes is dropped (the plan of a many-page job must stay small), but
  for XMP: a packet above :data:`VALUE_MAX` (Photoshop's History makes 300 KB ones) is
  carried by reference, its place in the input (``xmp_at``), and read from the input when
  merge writes the page (:class:`XmpPackets`); one above :data:`XMP_MAX` is dropped.
"""

from __future__ import annotations

import binascii
import os
import re
import struct
import weakref
import zlib
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from pipeline import __version__
from pipeline.adapters.tiff_header import ONE_BIT_EXTRATAG
from pipeline.core.convert import exact
from pipeline.core.geometry import (
    MODEL_PIXEL_SCALE,
    MODEL_TAGS,
    MODEL_TIEPOINT,
    MODEL_TRANSFORMATION,
    NUMBER_TYPES,
    Placement,
)
from pipeline.core.nodata import GDAL_NODATA, nodata_at, nodata_number

if TYPE_CHECKING:
    from pipeline.core.xmp import Derivation, Form, Reshape, XmpOutcome

#: the largest ICC profile carried (bytes); real profiles are 0.5-4 KB, a few up to ~0.5 MB
ICC_MAX = 1024 * 1024
#: the largest value of any other carried tag (bytes) held in the plan
VALUE_MAX = 64 * 1024
#: the largest XMP packet carried (bytes): one above :data:`VALUE_MAX` is not held in the
#: plan but read from the input when its page is written (:class:`XmpPackets`)
XMP_MAX = 16 * 1024 * 1024
#: the bytes of XMP packets an :class:`XmpPackets` holds at most (those read last)
PACKETS_HELD = 64 * 1024 * 1024
#: the bytes the derivative's stamp adds to a packet at most, but its ops in words (a new
#: ``xmpMM:InstanceID``, ``xmpMM:DerivedFrom``, a History event: about 200; its namespaces)
STAMP_BYTES = 400

#: copied byte for byte whatever the op chain does
KEPT_TAGS = {
    269: "DocumentName", 270: "ImageDescription", 271: "Make", 272: "Model", 274: "Orientation",
    285: "PageName", 306: "DateTime", 315: "Artist", 316: "HostComputer", 33432: "Copyright",
    33723: "IPTC", 42113: "GDAL_NODATA",
}
#: IPTC-NAA: a scan's caption, creator, rights (IIM datasets, bytes), which Photoshop stores
#: as LONGs: carried as the bytes stored, written UNDEFINED (:func:`_carry`)
IPTC = 33723
#: copied byte for byte only when the output page has the input page's size and place (XMP:
#: else rewritten, :func:`output_xmp`)
SPATIAL_TAGS = {
    700: "XMP", 33550: "ModelPixelScaleTag", 33922: "ModelTiepointTag",
    34264: "ModelTransformationTag", 34735: "GeoKeyDirectoryTag", 34736: "GeoDoubleParamsTag",
    34737: "GeoAsciiParamsTag",
}
#: XMP: rewritten, not dropped, when the chain moves or resizes the page (:func:`output_xmp`)
XMP = 700
#: Orientation: which corner row 0, column 0 is (repeated on pyramid levels)
ORIENTATION = 274
#: PageName, which an OME-TIFF's page without one gets from its OME plane (:func:`ome_name`)
PAGE_NAME = 285
#: PageNumber (page index, page count): renumbered for the output (:func:`output_tags`)
PAGE_NUMBER = 297
#: GDAL's metadata (ASCII XML: band names, scale and offset, statistics, the scene's items):
#: its items kept where they still hold (:func:`gdal_metadata`)
GDAL_METADATA = 42112
#: the band items' roles that name the band (kept while the band is still that band, whatever
#: its values became)
_NAMING_ROLES = ("description", "colorinterp")
#: the metadata domains that map pixel positions (dropped when the page is moved or resized)
_SPATIAL_DOMAINS = ("RPC", "GEOLOCATION")
#: TIFF types whose value is carried as bytes (base64 in the plan)
_BYTE_TYPES = {1, 2, 6, 7}
#: ColorMap: a gray page's is carried (:func:`_gray_colormap`); a palette page's is its own
COLORMAP = 320
#: InkSet, which a CMYK (SEPARATED) output page carries as 1 (CMYK)
INKSET = 332
#: struct formats of the numeric TIFF types carried (geometry.NUMBER_TYPES)
_NUMERIC = {3: "H", 4: "I", 8: "h", 9: "i", 11: "f", 12: "d", 16: "Q", 17: "q"}
#: RATIONAL and SRATIONAL (each value a numerator and a denominator of this struct format):
#: read in a GeoTIFF model tag only, as the DOUBLEs GDAL reads (:func:`_rational`)
_RATIONAL = {5: "I", 10: "i"}


# binascii, not the base64 module, which a run would otherwise import within its time
def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str) -> bytes:
    return binascii.a2b_base64(text.encode("ascii"))


def _raw(tag: tifffile.TiffTag) -> bytes:
    """The tag's value as stored in the file (its byte order)."""
    fh = tag.parent.filehandle
    pos = fh.tell()
    try:
        fh.seek(tag.valueoffset)
        return fh.read(tag.valuebytecount)
    finally:
        fh.seek(pos)


def is_structural_description(text: bytes) -> bool:
    """Descriptions that describe the input file's layout rather than the image: OME-XML,
    ImageJ hyperstack metadata, tifffile's shaped JSON, libvips's properties XML (the
    page's width, height, bands and format: ``tiffsave(properties=True)``)."""
    head = text.lstrip()[:4096]
    return (head.startswith(b"ImageJ=") or (head.startswith(b"{") and b'"shape"' in head)
            or (head.startswith(b"<") and (b"<OME" in text[:65536]
                                            or b"<image xmlns=\"http://www.vips." in head)))


def _carry(tag: tifffile.TiffTag, byteorder: str) -> list[Any] | None:
    """``[code, type, count, value]`` of a tag (value: base64 bytes or a list of numbers),
    or None when it is too big or of a type not carried."""
    kind = int(tag.dtype)
    rational = kind in _RATIONAL and tag.code in MODEL_TAGS
    if kind not in _BYTE_TYPES and kind not in _NUMERIC and not rational:
        return None
    if tag.valuebytecount > VALUE_MAX:
        return None
    data = _raw(tag)
    if len(data) != tag.valuebytecount:
        return None  # truncated file: the tag is not carried rather than carried damaged
    if tag.code == IPTC:  # a byte stream whatever its type: LONGs swapped would garble it
        return [tag.code, 7, len(data), _b64(data)]
    if kind in _BYTE_TYPES:
        if tag.code == 270 and is_structural_description(data):
            return None
        return [tag.code, kind, tag.count, _b64(data)]
    if rational:
        return _rational(tag.code, kind, tag.count, data, byteorder)
    return [tag.code, kind, tag.count,
            list(struct.unpack(f"{byteorder}{tag.count}{_NUMERIC[kind]}", data))]


def _rational(code: int, kind: int, count: int, data: bytes, byteorder: str) -> list[Any]:
    """A model tag stored as ``count`` RATIONALs or SRATIONALs (``data``: numerator,
    denominator, ...) as the DOUBLE tag GDAL reads it as: each value numerator / denominator
    (exact 32-bit integers divided in double precision, as libtiff does; a denominator 0
    gives 0, as libtiff reads it). Written as DOUBLE whatever the chain, as a moved one is
    (:func:`_geo_moved`): the output's georeferencing is the input's as GDAL reads it."""
    pairs = struct.unpack(f"{byteorder}{2 * count}{_RATIONAL[kind]}", data)
    return [code, 12, count, [n / d if d else 0.0 for n, d in zip(pairs[::2], pairs[1::2])]]


def read_metadata(page: tifffile.TiffPage, colormap: np.ndarray | None = None) -> dict[str, Any]:
    """The tags of ``page`` that are carried to the output, JSON-safe. ``colormap``: the
    (3, 256) colormap of a palette page whose indices are kept."""
    tags = page.tags
    byteorder = page.parent.byteorder
    out: dict[str, Any] = {}
    xres, yres = tags.get(282), tags.get(283)
    if xres is not None and yres is not None:
        try:
            (xn, xd), (yn, yd) = (int(v) for v in xres.value), (int(v) for v in yres.value)
        except (TypeError, ValueError):
            xd = yd = 0
        if xd and yd and xn > 0 and yn > 0:
            out["resolution"] = [[xn, xd], [yn, yd]]
            unit = tags.valueof(296)
            out["resolutionunit"] = int(unit) if unit is not None else 2  # TIFF default: inch
            if out["resolutionunit"] not in RESOLUTION_UNITS:  # damaged: the output's none,
                out["resolutionunit_dropped"] = out["resolutionunit"]  # said by unit_note
                out["resolutionunit"] = 1  # (tifffile refuses to write it: the job failed)
            elif out["resolutionunit"] == 1:  # none: an ImageJ or OME file's unit is in its
                _imagej_unit(out, _imagej_description(page))  # description, which is dropped
                if out["resolutionunit"] == 1:
                    _ome_pixel_size(out, page)
    if PAGE_NUMBER in tags:  # (its values are the input's: the output's are written instead)
        out["page_number"] = True
    subfiletype = tags.valueof(254)
    if subfiletype:  # every bit but the mask's (an output page is never a 1-bit mask)
        out["subfiletype"] = int(subfiletype) & ~0b100 & 0xFFFFFFFF
    icc = tags.get(34675)
    if icc is not None and 128 <= icc.valuebytecount <= ICC_MAX:
        data = _raw(icc)
        if len(data) == icc.valuebytecount:
            out["icc"] = _b64(data)
    kept, spatial = [], []
    for code in KEPT_TAGS:
        tag = tags.get(code)
        if tag is not None and (carried := _carry(tag, byteorder)) is not None:
            # an Aperio description states the pixel size (MPP) and the page's size
            aperio = code == 270 and str(tag.value).startswith("Aperio")
            (spatial if aperio else kept).append(carried)
            if aperio:  # (its strips stay a strip: pipeline.core.plan.strip_page)
                out["aperio"] = True
                _aperio_pixel_size(out, str(tag.value))
    for code in SPATIAL_TAGS:
        tag = tags.get(code)
        if tag is not None and (carried := _carry(tag, byteorder)) is not None:
            spatial.append(carried)
        elif code == XMP and tag is not None and tag.valuebytecount > VALUE_MAX:
            _xmp_at(out, tag)
    gdal = tags.get(GDAL_METADATA)
    if gdal is not None and (carried := _carry(gdal, byteorder)) is not None \
            and carried[1] == 2:
        out["gdal_metadata"] = carried[3]
    if kept:
        out["tags"] = kept
    if spatial:
        out["spatial"] = spatial
    if colormap is not None:
        out["colormap"] = _b64(np.ascontiguousarray(colormap, "<u2").tobytes())
    elif COLORMAP in tags:
        out.update(_gray_colormap(page))
    if (ome := _ome_plane(page) or _imagej_plane(page)) is not None:
        out["ome"] = ome
    return out


def gray_colormap_values(page: tifffile.TiffPage) -> np.ndarray | None:
    """The ColorMap of a gray class map with a colour table: a one-band uint8 or uint16
    MINISBLACK page with a ColorMap of 3 x 2**bits values (rasterio's ``write_colormap``
    after ``write``: GDAL and QGIS read the page as a palette), (3, 2**bits) uint16; None
    for any other page, and for a ColorMap of another size (which GDAL does not read
    either). What is carried (:func:`_gray_colormap`) and what a preview draws it in
    (:func:`pipeline.adapters.tiff_read.gray_colour_table`) are of the same pages."""
    if int(page.photometric) != tifffile.PHOTOMETRIC.MINISBLACK \
            or int(page.samplesperpixel) != 1 or page.dtype is None \
            or np.dtype(page.dtype) not in (np.uint8, np.uint16) or COLORMAP not in page.tags:
        return None
    values = np.asarray(page.tags[COLORMAP].value)
    if values.size != 3 * 2 ** (8 * np.dtype(page.dtype).itemsize):
        return None
    return values.astype(np.uint16).reshape(3, -1)


def _gray_colormap(page: tifffile.TiffPage) -> dict[str, Any]:
    """The ColorMap of a gray class map (:func:`gray_colormap_values`), to carry:
    ``gray_colormap``, its 3 x 2**bits values ("<u2") zlib-compressed, base64 (a uint16
    page's 65,536 entries are 384 KiB, nearly all zeros in a class map's), or
    ``gray_colormap_over``, its compressed bytes, over :data:`VALUE_MAX`: dropped, the job's
    note says so. {} for any other page."""
    values = gray_colormap_values(page)
    if values is None:
        return {}
    packed = zlib.compress(np.ascontiguousarray(values, "<u2").tobytes())
    if len(packed) > VALUE_MAX:
        return {"gray_colormap_over": len(packed)}
    return {"gray_colormap": _b64(packed)}


def _xmp_at(out: dict[str, Any], tag: tifffile.TiffTag) -> None:
    """Note an XMP packet too large for the plan in ``out``: where it lies in the input
    (``xmp_at``: its TIFF type, value offset and byte count), read when its page is written
    (:class:`XmpPackets`); one over :data:`XMP_MAX`, or past the file's end (truncated),
    as ``xmp_over`` (its byte count: dropped, the job's note says so)."""
    size = int(tag.valuebytecount)
    if int(tag.dtype) not in _BYTE_TYPES:
        return
    if size > XMP_MAX or tag.valueoffset + size > tag.parent.filehandle.size:
        out["xmp_over"] = size
        return
    out["xmp_at"] = [int(tag.dtype), int(tag.valueoffset), size]


class XmpPackets:
    """The XMP packets of a job's pages that the plan holds by reference (``xmp_at``), read
    from its input ``url`` at ``version`` (the plan's ``input_version``: another one there
    is an :class:`~pipeline.errors.InputChangedError`, as a unit's ``check_unchanged``)
    when an output page is written: a seek and a read of a local file, one ranged GET of
    an S3 object of the packet's bytes alone (pinned to its ETag). Each (offset, size) is
    read once: the pages of a
    master often share one packet (the packets read last are held, up to
    :data:`PACKETS_HELD` bytes, so pages that each have their own do not pile up). Each
    packet is parsed once for the pages in a row that carry it (:meth:`rewritten`)."""

    def __init__(self, url: str, version: str = "") -> None:
        self.url, self.version = url, version
        self._read: dict[tuple[int, int], bytes] = {}
        self._last: tuple[tuple[Any, ...], XmpOutcome] | None = None

    def __call__(self, at: Sequence[int]) -> bytes:
        """The packet at ``at`` (``[type, offset, size]``)."""
        from pipeline.adapters import storage
        from pipeline.errors import InputChangedError, InputNotFoundError

        _, offset, size = at
        key = (int(offset), int(size))
        if key not in self._read:
            # (its bytes alone: through open_input's reader, a HeadObject and the 512 KiB
            # read buffer, to the object's end, for a packet of 100 KiB)
            data = storage.read_range(self.url, *key, InputNotFoundError, self.version or None)
            if len(data) != key[1]:
                raise InputChangedError(
                    f"{self.url}: the XMP packet at byte {key[0]} ({key[1]:,} bytes) ends past "
                    "the file's end: it changed after its job was planned; do not change "
                    "inputs while a run reads them, and re-run the job")
            _make_room(self._read, key[1])
            self._read[key] = data
        return self._read[key]

    def rewritten(self, packet: bytes, reshape: Reshape, derived: Derivation | None
                  ) -> XmpOutcome:
        """:func:`pipeline.core.xmp.rewritten` of ``packet`` (one this read, or a page's in the
        plan) for ``reshape``,
        stamped as ``derived``: the outcome of the page before when it had the same packet
        (the same bytes: one value the pages share, or a copy each, as tifffile writes them),
        reshape and stamp, so a master's pages that carry one 300 KB packet parse it once,
        not once a page. The last outcome alone is held (one packet's bytes more)."""
        from pipeline.core import xmp

        key = (packet, reshape, derived)
        if self._last is None or self._last[0] != key:
            self._last = key, xmp.rewritten(packet, reshape, derived)
        return self._last[1]


def _make_room(held: dict[tuple[int, int], Any], size: int) -> None:
    """Drop the packets read first from ``held`` (keyed by offset and size, as
    :class:`XmpPackets` holds them) until ``size`` more bytes fit in :data:`PACKETS_HELD`."""
    while held and sum(held_size for _, held_size in held) + size > PACKETS_HELD:
        del held[next(iter(held))]


#: centimetres per length unit (an ImageJ description's ``unit=``, an OME PhysicalSizeXUnit)
_LENGTH_UNITS = {"micron": Fraction(1, 10**4), "microns": Fraction(1, 10**4),
                 "um": Fraction(1, 10**4), "\u00b5m": Fraction(1, 10**4),
                 "\u03bcm": Fraction(1, 10**4),
                 "\\u00b5m": Fraction(1, 10**4), "nm": Fraction(1, 10**7),
                 "mm": Fraction(1, 10), "cm": Fraction(1), "m": Fraction(100),
                 "meter": Fraction(100)}


def _imagej_description(page: tifffile.TiffPage) -> str:
    """The ImageJ description that holds ``page``'s unit: its own, or, for the pages after
    the first of an ImageJ file (ImageJ writes its description on the first page only), the
    first page's: every page of a stack has the file's unit."""
    if page.description.startswith("ImageJ="):
        return page.description
    try:
        first = page.parent.pages.first
    except (AttributeError, IndexError):
        return ""
    return first.description if first is not page and first.is_imagej else ""


def _imagej_unit(out: dict[str, Any], description: str) -> None:
    """An ImageJ page's resolution, in pixels per the length unit its description names
    (``unit=micron``) with ResolutionUnit NONE, as pixels per centimetre: the description
    describes the file's layout and is dropped (:func:`is_structural_description`), and the
    pixel size would go with it (an OME output's PhysicalSize too)."""
    if not description.startswith("ImageJ="):
        return
    unit = next((line[5:].strip() for line in description.splitlines()
                 if line.startswith("unit=")), "").lower()
    if unit in ("inch", "in"):  # TIFF's own unit
        out["resolutionunit"] = 2
        return
    per = _LENGTH_UNITS.get(unit)
    if per is None:
        return
    (xn, xd), (yn, yd) = out["resolution"]
    _per_cm(out, Fraction(xn, xd) / per, Fraction(yn, yd) / per)


def _aperio_pixel_size(out: dict[str, Any], description: str) -> None:
    """The resolution an Aperio page's ``MPP`` (microns per pixel, in its description) gives,
    in pixels per centimetre, as ``out["aperio_resolution"]``, when the page's resolution
    tags give no pixel size (none, or ResolutionUnit NONE: Aperio's scanners write none):
    :func:`output_tags` writes it where it drops the description (a size change, a turn),
    which would take the only pixel size the page had with it. ``MPP`` is the base image's:
    a level's description says it is reduced (``46000x32914 -> 11500x8228``), and its pixel
    is that many base pixels, as OpenSlide takes a level's pixel size."""
    if out.get("resolutionunit", 1) != 1:
        return
    mpp = next((field.partition("=")[2].strip() for field in description.split("|")
                if field.partition("=")[0].strip() == "MPP"), "")
    try:
        size = Fraction(mpp) / 10**4  # centimetres per (base) pixel
    except (ValueError, ZeroDivisionError):
        return
    sx = sy = Fraction(1)
    if reduced := _APERIO_REDUCED.search(description):
        base_w, base_h, w, h = (int(v) for v in reduced.groups())
        if not (base_w and base_h and w and h):
            return
        sx, sy = Fraction(base_w, w), Fraction(base_h, h)
    if size > 0:
        found: dict[str, Any] = {}
        _per_cm(found, 1 / (size * sx), 1 / (size * sy))
        if found:
            out["aperio_resolution"] = found["resolution"]


#: an Aperio level's (or thumbnail's) size after its base image's: ``3072x2048 -> 768x512``
_APERIO_REDUCED = re.compile(r"(\d+)\s*x\s*(\d+)\s*->\s*(\d+)\s*x\s*(\d+)")


def _per_cm(out: dict[str, Any], x: Fraction, y: Fraction) -> None:
    """Set ``out``'s resolution to ``x``, ``y`` pixels per centimetre, if they fit TIFF's
    32-bit rationals (else it stays as it was)."""
    if all(v.numerator < 2**32 and v.denominator < 2**32 for v in (x, y)):
        out["resolution"] = [[x.numerator, x.denominator], [y.numerator, y.denominator]]
        out["resolutionunit"] = 3


#: the longest OME text carried (an Image's or a Channel's name, any Channel attribute)
OME_TEXT_MAX = 1024
#: the attributes of an OME Channel that tifffile's OME writer writes back (``OmeXml``):
#: text as is, numbers only when they parse (int: Color, PockelCellSetting)
OME_CHANNEL_TEXT = ("Name", "AcquisitionMode", "ContrastMethod", "EmissionWavelengthUnit",
                    "ExcitationWavelengthUnit", "Fluor", "IlluminationType", "PinholeSizeUnit")
OME_CHANNEL_NUMBERS = {"Color": int, "EmissionWavelength": float,
                       "ExcitationWavelength": float, "NDFilter": float, "PinholeSize": float,
                       "PockelCellSetting": int}
#: the attributes of an OME Pixels that an Image of several planes kept whole carries (its
#: Z step and time step, which no op changes: ops work plane by plane), numbers then units
OME_STACK_NUMBERS = ("PhysicalSizeZ", "TimeIncrement")
OME_STACK_UNITS = ("PhysicalSizeZUnit", "TimeIncrementUnit")
#: the attributes of an OME Plane that tifffile's OME writer writes back (numbers, units);
#: PositionX/Y (where the plane's pixels are on the stage) only while no op moves them
OME_PLANE_NUMBERS = ("DeltaT", "ExposureTime", "PositionX", "PositionY", "PositionZ")
OME_PLANE_UNITS = ("DeltaTUnit", "ExposureTimeUnit", "PositionXUnit", "PositionYUnit",
                   "PositionZUnit")


class OmeIfds:
    """What the OME-XML of an OME-TIFF says of each of its IFDs: the Image a plane belongs
    to, its (C, Z, T), the Image's pixel size and the plane's Channel. Parsed once a file
    (:func:`_ome_ifds`); the planes are kept as the TiffData ranges that list them, so a
    damaged PlaneCount or Size costs nothing."""

    def __init__(self) -> None:
        #: (first IFD, IFD count, first plane, Image), sorted by first IFD
        self.ranges: list[tuple[int, int, int, dict[str, Any]]] = []

    def plane(self, ifd: int) -> tuple[dict[str, Any], int] | None:
        """The Image and plane index of ``ifd``, or None when no TiffData lists it."""
        import bisect

        k = bisect.bisect_right(self.ranges, ifd, key=lambda r: r[0]) - 1
        if k < 0:
            return None
        start, count, first, image = self.ranges[k]
        return (image, first + ifd - start) if ifd < start + count else None


#: each open OME-TIFF's :class:`OmeIfds` (empty when its OME-XML does not parse)
_ome_files: weakref.WeakKeyDictionary[Any, OmeIfds] = weakref.WeakKeyDictionary()


def _ome_of(page: tifffile.TiffPage) -> tuple[dict[str, Any], int] | None:
    """The OME Image and plane index of ``page`` (None: not an OME-TIFF, or not listed in
    its OME-XML, or that OME-XML is damaged: then nothing is carried from it, as before)."""
    tf = page.parent
    if not getattr(tf, "is_ome", False) or getattr(page, "is_subifd", False):
        return None  # (a SubIFD, a level, has its page's index: it is no plane of its own)
    ifds = _ome_files.get(tf)
    if ifds is None:
        try:
            ifds = _ome_ifds(tf.ome_metadata or "", str(getattr(tf, "filename", "") or ""))
        except Exception:  # noqa: BLE001 - damaged OME-XML: nothing carried from it
            ifds = OmeIfds()
        _ome_files[tf] = ifds
    return ifds.plane(int(page.index))


#: OME's symbol of each length unit an ImageJ description names (``unit=``), and of each
#: time unit (``tunit=``; ImageJ's frame interval is in seconds when none is named)
_IMAGEJ_LENGTHS = {name: {Fraction(1, 10**4): "\u00b5m", Fraction(1, 10**7): "nm",
                          Fraction(1, 10): "mm", Fraction(1): "cm", Fraction(100): "m"}[cm]
                   for name, cm in _LENGTH_UNITS.items()} | {"inch": "in", "in": "in"}
_IMAGEJ_TIMES = {"sec": "s", "s": "s", "second": "s", "seconds": "s", "ms": "ms",
                 "msec": "ms", "min": "min", "minute": "min", "minutes": "min", "h": "h",
                 "hour": "h", "hours": "h"}


def _imagej_plane(page: tifffile.TiffPage) -> dict[str, Any] | None:
    """What :func:`_ome_plane` says of an OME plane, of a page of an ImageJ hyperstack of
    gray pages (``frames``, ``slices``, ``channels``: its pages T, Z, C, C varying fastest):
    ``samples`` and ``stack``, the hyperstack as one Image named after the file, with its Z
    step (``spacing``, in the file's ``unit``) and frame interval (``finterval``) as
    ``pixels``, so that an OME output of all its pages, in order, is that one Image of
    SizeT, SizeZ, SizeC (``pipeline.steps.merge.ome_stacks``), not an Image a page. No
    name: an ImageJ page had no PageName and gets none. None: no ImageJ hyperstack (one
    plane, RGB pages, a description whose sizes are not its page count)."""
    tf = page.parent
    if getattr(page, "is_subifd", False) or getattr(tf, "is_ome", False) \
            or not getattr(tf, "is_imagej", False) or int(page.samplesperpixel) != 1:
        return None
    meta = tf.imagej_metadata or {}
    try:
        sizes = [int(meta.get(key, 1) or 1) for key in ("frames", "slices", "channels")]
        planes = int(np.prod(sizes))
        images = int(meta.get("images", planes))
    except (TypeError, ValueError):
        return None
    if planes < 2 or images != planes or not 0 <= page.index < planes:
        return None
    steps: dict[str, str] = {}
    unit = _IMAGEJ_LENGTHS.get(str(meta.get("unit", "")).strip().lower())
    if sizes[1] > 1 and unit and _positive(meta.get("spacing")):
        steps.update(PhysicalSizeZ=str(meta["spacing"]), PhysicalSizeZUnit=unit)
    tunit = _IMAGEJ_TIMES.get(str(meta.get("tunit", "sec")).strip().lower())
    if sizes[0] > 1 and tunit and _positive(meta.get("finterval")):
        steps.update(TimeIncrement=str(meta["finterval"]), TimeIncrementUnit=tunit)
    stack = {"image": 0, "plane": int(page.index), "planes": planes, "axes": "TZC",
             "sizes": sizes, "title": os.path.basename(str(getattr(tf, "filename", "")))}
    if steps:
        stack["pixels"] = steps
    return {"samples": 1, "stack": stack}


def _positive(value: Any) -> bool:
    """``value`` is a finite number above 0 (an ImageJ description's, as tifffile parsed it)."""
    try:
        return bool(0 < float(value) < float("inf"))
    except (TypeError, ValueError):
        return False


def _ome_pixel_size(out: dict[str, Any], page: tifffile.TiffPage) -> None:
    """An OME-TIFF page's resolution from its Image's PhysicalSizeX/Y (in pixels per
    centimetre): tifffile writes XResolution 1/1 with ResolutionUnit NONE and the sizes in
    the OME-XML, which is dropped (it describes the input's layout)."""
    found = _ome_of(page)
    size = found[0]["size"] if found else None
    if size is not None:
        _per_cm(out, 1 / size[0], 1 / size[1])


def sample_top(page: tifffile.TiffPage, dtype: np.dtype) -> list[Any] | None:
    """[the largest value, the header that says it] of a page of unsigned samples wider than
    8 bits read as ``dtype``, when its header says one below the type's maximum: its
    MaxSampleValue (the largest of its samples'), or 2**SignificantBits - 1 of an OME-TIFF
    plane's Image (Bio-Formats writes 12 for a 12-bit camera's uint16); None: not said.
    What the JPEG refusal's convert hint gives as ``in_range`` (``tile_codec``)."""
    if dtype.kind != "u" or dtype.itemsize == 1:
        return None
    full, tops = int(np.iinfo(dtype).max), []
    value = page.tags.valueof(281)
    try:
        most = max(int(v) for v in (value if isinstance(value, tuple) else (value,)))
        tops.append([most, "MaxSampleValue"])
    except (TypeError, ValueError):
        pass  # (none, or not a number)
    found = _ome_of(page)
    if found and (bits := found[0].get("bits", 0)):
        tops.append([2 ** bits - 1, f"OME SignificantBits {bits}"])
    return min((t for t in tops if 0 < t[0] < full), default=None)


def _ome_plane(page: tifffile.TiffPage) -> dict[str, Any] | None:
    """What an OME-TIFF page carries of its plane's identity, JSON-safe (``PageInfo.metadata
    ["ome"]``): ``name``, its Image's name, its Channel's (or ``C=c`` when the Image has
    several unnamed ones) and ``Z=z``, ``T=t`` when the Image has several; ``image_name``,
    the same without the channel (what is left when the op chain changes the channel count);
    ``channel``, the Channel's attributes that tifffile writes (:data:`OME_CHANNEL_TEXT`,
    :data:`OME_CHANNEL_NUMBERS`); ``samples``, its SamplesPerPixel; ``stack`` (an Image of
    several planes): the Image's index, the plane's, the plane count, the axes of the planes
    (slowest first, ``"TZC"`` for DimensionOrder XYCZT), their sizes and the Image's name,
    and, when the OME-XML gives them, ``pixels`` (its Z and time steps,
    :data:`OME_STACK_NUMBERS`) and ``plane_attrs`` (its Plane element's,
    :data:`OME_PLANE_NUMBERS`). None: nothing to say."""
    found = _ome_of(page)
    if found is None:
        return None
    image, plane = found
    pos, sizes, rest = {}, image["sizes"], plane
    for axis in image["order"]:  # (the first axis of DimensionOrder varies fastest)
        rest, pos[axis] = divmod(rest, sizes[axis])
    channels = image["channels"]
    channel = channels[pos["C"]] if pos["C"] < len(channels) else {}
    label = channel.get("Name") or (f"C={pos['C']}" if sizes["C"] > 1 else "")
    if label in image["name"].split(" - "):
        label = ""  # (named so already: an output of tiffpipe processed again)
    where = [f"{axis}={pos[axis]}" for axis in "ZT" if sizes[axis] > 1]
    out: dict[str, Any] = {"samples": image["samples"]}
    for key, parts in (("name", [image["name"], label, *where]),
                       ("image_name", [image["name"], *where])):
        if text := " - ".join(p for p in parts if p):
            out[key] = text
    if channel:
        out["channel"] = channel
    if (planes := sizes["C"] * sizes["Z"] * sizes["T"]) > 1:
        # where the plane is in its Image: an OME output of all of them, in order, is that
        # Image again (pipeline.steps.merge.ome_stacks), not an Image a plane
        axes = "".join(reversed(image["order"]))  # (slowest first, as tifffile's axes)
        out["stack"] = {"image": image["index"], "plane": plane, "planes": planes,
                        "axes": axes, "sizes": [sizes[axis] for axis in axes],
                        "title": image["name"]}
        if image["steps"]:
            out["stack"]["pixels"] = image["steps"]
        if attrs := image["plane_attrs"].get(plane):
            out["stack"]["plane_attrs"] = attrs
    return out if len(out) > 1 else None


def _ome_ifds(xml: str, filename: str) -> OmeIfds:
    """The IFDs of each OME Image's planes (its TiffData: IFD, PlaneCount, FirstC/Z/T, in the
    Pixels' DimensionOrder) in this file: a TiffData whose UUID names another file (a
    multi-file OME-TIFF; its own UUID, or its file name when the OME element has no UUID) is
    that file's. Pixels without TiffData are all the file's planes from IFD 0, unless they
    hold BinData or are MetadataOnly (then none). Raises on XML that does not parse."""
    from xml.etree import ElementTree  # (OME inputs only)

    def children(element: Any, name: str) -> list[Any]:
        return [e for e in element if e.tag.rpartition("}")[2] == name]

    def count(text: str | None, default: int) -> int:
        try:
            return max(int(text), 0) if text is not None else default
        except ValueError:
            return default

    root = ElementTree.fromstring(xml)
    own = root.get("UUID")
    ifds = OmeIfds()
    for index, element in enumerate(children(root, "Image")):
        for pixels in children(element, "Pixels")[:1]:
            channels = children(pixels, "Channel")
            sizes = {axis: max(count(pixels.get(f"Size{axis}"), 1), 1) for axis in "CZT"}
            # SamplesPerPixel is optional: without it the Channels share SizeC out evenly
            # (SizeC="3" and one Channel: an RGB Image, one Channel of 3 samples)
            shared = (sizes["C"] // len(channels)
                      if channels and sizes["C"] % len(channels) == 0 else 1)
            samples = max(count(channels[0].get("SamplesPerPixel"), shared), 1) \
                if channels else 1
            sizes["C"] = max(sizes["C"] // samples, 1)  # planes of `samples` samples each
            order = [axis for axis in str(pixels.get("DimensionOrder", ""))[2:]]
            if sorted(order) != ["C", "T", "Z"]:
                order = ["C", "Z", "T"]
            image = {"index": index, "name": _ome_text(element.get("Name")),
                     "size": _ome_size(pixels),
                     "channels": [_ome_channel(c) for c in channels], "samples": samples,
                     "sizes": sizes, "order": order,
                     "bits": count(pixels.get("SignificantBits"), 0),
                     "steps": _ome_attributes(pixels, OME_STACK_NUMBERS, OME_STACK_UNITS),
                     "plane_attrs": _ome_planes(children(pixels, "Plane"), sizes, order)}
            planes = sizes["C"] * sizes["Z"] * sizes["T"]
            listed = children(pixels, "TiffData")
            if not listed and (children(pixels, "BinData") or children(pixels, "MetadataOnly")):
                continue  # its pixels are not in the TIFF (in the XML, or nowhere): no IFD
            for data in listed or [ElementTree.Element("TiffData")]:
                uuid = children(data, "UUID")
                if uuid and ((uuid[0].text or "").strip() != own if own else
                             uuid[0].get("FileName") != os.path.basename(filename)):
                    continue  # another file's IFDs
                first, stride = 0, 1
                for axis in order:
                    first += min(count(data.get(f"First{axis}"), 0), sizes[axis] - 1) * stride
                    stride *= sizes[axis]
                n = count(data.get("PlaneCount"), 1 if "IFD" in data.attrib else planes)
                if (n := min(n, planes - first)) > 0:
                    ifds.ranges.append((count(data.get("IFD"), 0), n, first, image))
    ifds.ranges.sort(key=lambda r: r[0])
    return ifds


def _ome_text(value: str | None) -> str:
    """An OME name as carried: stripped; empty when missing or longer than
    :data:`OME_TEXT_MAX` characters (a plan of many pages stays small)."""
    value = (value or "").strip()
    return value if len(value) <= OME_TEXT_MAX else ""


def _ome_channel(element: Any) -> dict[str, str]:
    """The attributes of an OME Channel that are carried (their text as written)."""
    out = {}
    for key in OME_CHANNEL_TEXT:
        if text := _ome_text(element.get(key)):
            out[key] = text
    for key, kind in OME_CHANNEL_NUMBERS.items():
        if text := _ome_number(element, key, kind):
            out[key] = text
    return out


def _ome_number(element: Any, key: str, kind: type = float) -> str:
    """The text of an OME element's attribute ``key`` when it parses as a ``kind``, as
    written; "" when missing or not such a number."""
    text = _ome_text(element.get(key))
    try:
        kind(text)
    except ValueError:
        return ""
    return text


def _ome_attributes(element: Any, numbers: tuple[str, ...], units: tuple[str, ...]
                    ) -> dict[str, str]:
    """The ``numbers`` attributes of an OME element that parse as numbers, and the
    ``units`` of those (each named after its number, + "Unit"), as written."""
    out = {}
    for key in numbers:
        if not (text := _ome_number(element, key)):
            continue
        out[key] = text
        if (unit := f"{key}Unit") in units and (text := _ome_text(element.get(unit))):
            out[unit] = text
    return out


def _ome_planes(planes: list[Any], sizes: dict[str, int], order: list[str]
                ) -> dict[int, dict[str, str]]:
    """Each OME Plane's carried attributes (:data:`OME_PLANE_NUMBERS`) by the index of its
    plane in the Image (its TheC, TheZ, TheT placed in DimensionOrder, as TiffData's
    planes are); a Plane outside the Image's sizes, or with nothing to carry, is left out."""
    out: dict[int, dict[str, str]] = {}
    for element in planes:
        try:
            where = {axis: int(element.get(f"The{axis}", "0")) for axis in "CZT"}
        except ValueError:
            continue
        index, stride = 0, 1
        for axis in order:
            if not 0 <= where[axis] < sizes[axis]:
                break
            index += where[axis] * stride
            stride *= sizes[axis]
        else:
            if attrs := _ome_attributes(element, OME_PLANE_NUMBERS, OME_PLANE_UNITS):
                out[index] = attrs
    return out


def _ome_size(pixels: Any) -> tuple[Fraction, Fraction] | None:
    """The (x, y) pixel size in cm of an OME Pixels whose PhysicalSizeX (Y: X's when
    missing) is in a length unit (default µm)."""
    cm = []
    for axis in "XY":
        if pixels.get(f"PhysicalSize{axis}") is None:
            axis = "X"  # (Y missing: square pixels)
        value = pixels.get(f"PhysicalSize{axis}")
        per = _LENGTH_UNITS.get(str(pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m")).lower())
        try:
            size = Fraction(value.strip()) if value is not None else None
        except (ValueError, ZeroDivisionError):
            size = None
        if size is None or per is None or size <= 0:
            return None
        cm.append(size * per)
    return cm[0], cm[1]


def icc_space(profile: bytes) -> str:
    """The colour space signature of an ICC profile ('RGB', 'GRAY', 'CMYK', ...)."""
    return profile[16:20].decode("latin-1").strip() if len(profile) >= 20 else ""


def _scale(ref: tuple[int, int], height: int, width: int, factor: int = 1
           ) -> tuple[Fraction, Fraction]:
    """Output pixels per input pixel along y and x, from the page's size ``ref`` before the
    chain's sizing ops (after its geometric ones). The chain's downsampling ``factor``
    (``downsample``, which crops the page to a multiple of it) scales by exactly 1 / factor:
    an output pixel covers factor x factor input pixels whatever was cropped at the far
    edges (not guessed from the sizes: a 3000 px page downsampled by 64 is 46 px, and
    3000 // 46 is 65). Any other size change: the size ratio per axis."""
    if factor > 1 and (height, width) == (ref[0] // factor, ref[1] // factor):
        return Fraction(1, factor), Fraction(1, factor)
    return Fraction(height, ref[0]), Fraction(width, ref[1])


#: GeoTIFF's GeoKeyDirectory tag (its model tags: pipeline.core.geometry), and its
#: GTRasterTypeGeoKey's PixelIsPoint
GEO_KEYS = 34735
RASTER_TYPE_KEY, PIXEL_IS_POINT = 1025, 2
#: what a downsample keeps of the spatial tags (XMP is rewritten, :func:`output_xmp`; an
#: Aperio description is dropped)
GEO_TAGS = (*MODEL_TAGS, GEO_KEYS, 34736, 34737)


def geo_downsampled(spatial: list[list[Any]], factor: int) -> list[list[Any]]:
    """The GeoTIFF tags of a page downsampled by ``factor`` (an output pixel covers
    ``factor`` x ``factor`` input pixels from the top-left corner; the far edges cropped),
    so that every output pixel keeps its place in the world: the pixel scale times
    ``factor``, the tiepoints' raster positions and the transformation's raster axes
    divided by it. With PixelIsArea (the default) raster position (0, 0) is the page's
    corner, which stays; with PixelIsPoint it is the first pixel's centre, which moves
    ``(factor - 1) / 2`` input pixels. The other GeoTIFF tags are kept as they are; an
    Aperio description (which gives the input's pixel size) is not, nor XMP (rewritten by
    :func:`output_xmp`)."""
    shift = (factor - 1) / 2 if _pixel_is_point(spatial) else 0.0  # output position 0

    def scaled(code: int, value: list[Any]) -> list[Any]:
        if code == MODEL_PIXEL_SCALE and len(value) >= 2:
            return [value[0] * factor, value[1] * factor, *value[2:]]
        if code == MODEL_TIEPOINT:  # (I, J, K, X, Y, Z) each: raster I, J of world X, Y
            return [(v - shift) / factor if n % 6 < 2 else v for n, v in enumerate(value)]
        if code == MODEL_TRANSFORMATION and len(value) == 16:  # world = M (I, J, K, 1)
            value = [v * factor if n % 4 < 2 else v for n, v in enumerate(value)]
            for row in range(3):  # I = factor I' + shift: the shift joins the translation
                value[4 * row + 3] += shift * (value[4 * row] + value[4 * row + 1]) / factor
        return value
    return _geo_moved(spatial, scaled)


def geo_cropped(spatial: list[list[Any]], y: int, x: int) -> list[list[Any]]:
    """The GeoTIFF tags of a page cropped to a box whose corner is at row ``y``, column
    ``x`` of it (``crop``), so that every pixel keeps its place in the world: the tiepoints'
    raster positions move by (-x, -y), the transformation's translation by its raster axes
    times (x, y) (whether raster positions are of pixel corners or centres, the shift is
    the same). The other GeoTIFF tags are kept as they are; an Aperio description (which
    gives the input's size) is not, nor XMP (rewritten by :func:`output_xmp`)."""

    def moved(code: int, value: list[Any]) -> list[Any]:
        if code == MODEL_TIEPOINT:  # (I, J, K, X, Y, Z) each
            return [v - (x, y)[n % 6] if n % 6 < 2 else v for n, v in enumerate(value)]
        if code == MODEL_TRANSFORMATION and len(value) == 16:  # world = M (I + x, J + y)
            value = list(value)
            for row in range(3):
                value[4 * row + 3] += value[4 * row] * x + value[4 * row + 1] * y
        return value
    return _geo_moved(spatial, moved)


def _pixel_is_point(spatial: list[list[Any]]) -> bool:
    """Whether the GeoKeyDirectory among ``spatial`` says PixelIsPoint (GTRasterTypeGeoKey
    2): raster positions are then of pixel centres, not corners."""
    keys = next((value for code, _, _, value in spatial if code == GEO_KEYS), [])
    return any(keys[i] == RASTER_TYPE_KEY and keys[i + 1] == 0 and keys[i + 3] == PIXEL_IS_POINT
               for i in range(4, len(keys) - 3, 4))


def geo_placed(spatial: list[list[Any]], placed: Placement) -> list[list[Any]]:
    """The GeoTIFF tags of a page the chain's geometric ops placed (``placed``), so that
    every pixel keeps its place in the world: moved by the crops' corner when nothing
    turned it (:func:`geo_cropped`), else :func:`geo_turned`."""
    if placed.axes == (1, 0, 0, 1):
        return geo_cropped(spatial, placed.y, placed.x)
    return geo_turned(spatial, placed)


def geo_turned(spatial: list[list[Any]], placed: Placement) -> list[list[Any]]:
    """The GeoTIFF tags of a page rotated or flipped (and cropped: ``placed``), each output
    pixel where its input pixel was in the world. The page's affine georeferencing (read as
    GDAL reads it: a pixel scale with one tiepoint, north up, else a ModelTransformation)
    composed with the raster map becomes a ModelTransformation (a turned page is not north
    up, which a pixel scale, positive by convention, cannot say: GDAL reads a negative one
    as north up); ModelPixelScale and ModelTiepoint go. A page with tiepoints alone (ground
    control points) keeps them, each tiepoint's raster position moved to where its pixel
    went. PixelIsPoint positions are pixel centres: the map is taken between centres. What
    cannot be turned was refused at plan time (pipeline.core.geometry.turn_problem)."""
    tags = {code: value for code, kind, _count, value in spatial}
    a, b, c, d = placed.axes
    h = 0.5 if _pixel_is_point(spatial) else 0.0  # a position's corner coordinate: + h
    tx = (a + b) * h + placed.x - h  # input (I, J) = (a I' + b J' + tx, c I' + d J' + ty)
    ty = (c + d) * h + placed.y - h
    scale = tags.get(MODEL_PIXEL_SCALE, [])
    ties = tags.get(MODEL_TIEPOINT, [])
    if len(scale) >= 2 and scale[0] and scale[1] and len(ties) >= 6:
        i, j, k, x, y, z = ties[:6]
        sx, sy, sz = scale[0], abs(scale[1]), (scale[2] if len(scale) > 2 else 0.0)
        model = [sx, 0.0, 0.0, x - i * sx, 0.0, -sy, 0.0, y + j * sy,
                 0.0, 0.0, sz, z - k * sz, 0.0, 0.0, 0.0, 1.0]
    elif len(tags.get(MODEL_TRANSFORMATION, [])) == 16:
        model = list(tags[MODEL_TRANSFORMATION])
    else:  # ground control points: each raster position moved (the inverse map: A^T)
        moved = list(ties)
        for n in range(0, len(moved) - 5, 6):
            i, j = moved[n] - tx, moved[n + 1] - ty
            moved[n], moved[n + 1] = a * i + c * j, b * i + d * j
        return [[MODEL_TIEPOINT, 12, len(moved), moved] if code == MODEL_TIEPOINT
                else [code, kind, count, value] for code, kind, count, value in spatial
                if code in GEO_TAGS and code != MODEL_PIXEL_SCALE]
    raster = [a, b, 0, tx, c, d, 0, ty, 0, 0, 1, 0, 0, 0, 0, 1]
    turned = [float(sum(model[4 * r + n] * raster[4 * n + col] for n in range(4)))
              for r in range(4) for col in range(4)]
    return [[MODEL_TRANSFORMATION, 12, 16, turned]] + [
        [code, kind, count, value] for code, kind, count, value in spatial
        if code in GEO_TAGS and code not in (MODEL_PIXEL_SCALE, MODEL_TIEPOINT,
                                             MODEL_TRANSFORMATION)]


def _geo_moved(spatial: list[list[Any]], change: Any) -> list[list[Any]]:
    """The GeoTIFF tags of ``spatial``, each model tag's value through ``change(code,
    value)`` and written as the DOUBLEs GeoTIFF defines, whatever numeric type the input
    stored it as (a FLOAT or an integer is read as GDAL reads it: widened to a double);
    everything but the GeoTIFF tags is dropped."""
    out = []
    for code, kind, count, value in spatial:
        if code not in GEO_TAGS:
            continue
        if code in MODEL_TAGS:
            if kind not in NUMBER_TYPES:  # (bytes: refused at plan time, model_type_problem)
                continue
            kind, value = 12, [float(v) for v in value]
        out.append([code, kind, count, change(code, value)])
    return out


def scaled_resolution(res: Sequence[int] | float, scale: Fraction) -> tuple[int, int] | float:
    """A resolution (pixels per unit: a rational ``[n, d]``, or a float as this returns one
    that does not fit) scaled by ``scale``, as a 32-bit rational if it fits."""
    value = (Fraction(res) if isinstance(res, float) else Fraction(res[0], res[1])) * scale
    if value.numerator < 2**32 and value.denominator < 2**32:
        return value.numerator, value.denominator
    return float(value)


def photometric_of(info: Any, channels: int,
                   bands: tuple[int, ...] | None = None) -> tuple[str, list[int] | None]:
    """The photometric and ExtraSamples of an output page with ``channels`` samples.

    A page that keeps its bands keeps its interpretation: an RGB page stays RGB with its
    extra samples, a gray or multispectral page of 2 or 4 bands and more stays MINISBLACK
    with its extra samples (an input without a valid ExtraSamples tag: alpha for the one
    extra sample of gray + alpha and RGBA, UNSPECIFIED (0) for more). 3 bands are always RGB
    (as before, and what a JPEG output's YCbCr encoding needs). A page whose band count the
    chain changed (to_gray, canny: 1 band) is MINISBLACK. Pages of 5 bands or more are never
    called RGB unless the input was (RGB + extra samples).

    ``bands``: the input band each output band is (``select_bands``; None: the chain keeps
    the bands or makes its own): a selection that is not the input's bands in order is
    :func:`_selected`'s.
    """
    if bands is not None and bands != tuple(range(info.channels)):
        return _selected(info, bands)
    same = channels == info.channels
    if same and info.photometric == "separated":  # CMYK keeps its 4 inks and its extras
        extra = channels - 4
        kept = list(info.extrasamples or [])
        return "separated", (kept if len(kept) == extra else [0] * extra) or None
    rgb = channels == 3 or (channels > 3 and (info.photometric == "rgb" if same
                                              else channels == 4))
    base = 3 if rgb else 1
    extra = channels - base
    if extra <= 0:
        return ("rgb" if rgb else "minisblack"), None
    kept = list(info.extrasamples or []) if same else []
    if len(kept) != extra:
        kept = [2] if extra == 1 else [0] * extra  # 2: unassociated alpha, 0: unspecified
    return ("rgb" if rgb else "minisblack"), kept


def _selected(info: Any, bands: tuple[int, ...]) -> tuple[str, list[int] | None]:
    """The photometric and ExtraSamples of a selection of the input's bands: 3 bands are RGB
    (a false-colour composite; what JPEG's YCbCr needs); more are RGB only when the first
    three are an RGB input's colours, else MINISBLACK. An extra band keeps the input's
    ExtraSamples value of the band it is (an alpha stays alpha wherever it moves), and is
    UNSPECIFIED (0) when it was a colour or gray band."""
    _, given = photometric_of(info, info.channels)
    given = given or []
    first_extra = info.channels - len(given)
    rgb = len(bands) == 3 or (len(bands) > 3 and info.photometric == "rgb"
                              and all(b < 3 for b in bands[:3]))
    extra = [given[b - first_extra] if b >= first_extra else 0 for b in bands[3 if rgb else 1:]]
    return ("rgb" if rgb else "minisblack"), extra or None


def _keeps_channel(info: Any, channels: int, bands: tuple[int, ...] | None = None) -> bool:
    """The output page of ``info`` with ``channels`` samples is still its OME Channel: the
    chain kept the channel count, which is the Channel's SamplesPerPixel, and the bands in
    their order (a ``select_bands`` of some of them is no longer the Channel)."""
    ome = (info.metadata or {}).get("ome", {})
    return (channels == info.channels == ome.get("samples", 1)
            and (bands is None or bands == tuple(range(channels))))


def ome_name(info: Any, channels: int, bands: tuple[int, ...] | None = None) -> str | None:
    """The name of the OME plane an output page was made from (:func:`_ome_plane`): its
    Image's and Channel's (and Z, T), without the Channel when the chain changed the channel
    count. None: not an OME-TIFF's plane, or nothing to name it by."""
    ome = (info.metadata or {}).get("ome", {})
    return ome.get("name" if _keeps_channel(info, channels, bands) else "image_name")


def ome_channel(info: Any, channels: int,
                bands: tuple[int, ...] | None = None) -> dict[str, str] | None:
    """The OME Channel attributes the output page of ``info`` with ``channels`` samples keeps
    (``Channel`` of tifffile's OME metadata), or None: none, or the chain changed the
    channel count (the Channel no longer describes the page)."""
    if not _keeps_channel(info, channels, bands):
        return None
    return (info.metadata or {}).get("ome", {}).get("channel")


def output_tags(info: Any, height: int, width: int, channels: int,
                nodata: bool = True, factor: int = 1, bands: tuple[int, ...] | None = None,
                own_nodata: float | None = None, placed: Placement | None = None,
                stats: bool = False, bilevel: bool = False,
                linear: tuple[float, float] | None = None,
                keep_nodata: bool | None = None,
                names: Sequence[str | None] = (), form: Form | None = None,
                derived: Derivation | None = None, packets: XmpPackets | None = None,
                page_number: tuple[int, int] | None = None,
                indices: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``TiffWriter.write`` for the output page of ``info`` (a PageInfo)
    that is ``height`` x ``width`` with ``channels`` samples: photometric, extra samples,
    software, and the carried metadata. ``nodata`` False: the op chain remaps values, so the
    input's no-data value (GDAL_NODATA) no longer marks the pixels without data: dropped,
    unless ``keep_nodata`` (None: as ``nodata``): the chain's ops that remap values write the
    no-data pixels back unchanged (:func:`pipeline.core.ops.chain_keeps_nodata`).
    ``bands``: which input band each output band is (:func:`photometric_of`); a selection
    that moves the colour bands drops the ICC profile. ``own_nodata``: the chain's own
    no-data value (:func:`pipeline.core.ops.chain_own_nodata`), written as GDAL_NODATA.
    ``stats``: the chain keeps each band's values as a set (rotate, flip, select_bands:
    :func:`pipeline.core.ops.chain_keeps_statistics`), so GDAL_METADATA's statistics still
    hold (:func:`gdal_metadata`, which ``nodata`` and ``bands`` rule too). ``linear``:
    ``(a, b)`` when the chain maps each value v to a v + b
    (:func:`pipeline.core.ops.chain_linear`): GDAL_METADATA's scale and offset are rescaled.
    ``names``: each output band's name (:func:`pipeline.core.ops.chain_band_names`), written
    as its GDAL description for the bands the chain made (``bands`` None) that have one
    (normalized_difference's formula of its input bands' names).
    ``placed``: what the chain's geometric ops did to the page
    (:func:`pipeline.core.geometry.placement`; None: none): a quarter turn swaps the x and
    y resolution; a rotation or flip drops Orientation (the pixels are stored as they are
    to be shown); every geometric op moves the georeferencing with the pixels
    (:func:`geo_placed`; what cannot be moved is refused before:
    :func:`pipeline.core.geometry.georeferenced`) and drops an Aperio description; XMP
    is rewritten for the new size and place (:func:`output_xmp`), and for ``form``, how
    the output's samples are stored (:func:`output_form`; None: not known), and stamped as
    the derivative ``derived`` (:func:`derivation`; None: not stamped); a packet too large
    for the plan is read by ``packets`` (:class:`XmpPackets`; None: not written).
    ``bilevel``: a 1-bit output page (0 and 255 stored as bits): miniswhite,
    as 1-bit scans and fax are, its GDAL_NODATA the bit of that value (255: 0, 0: 1;
    another value marks no pixel: dropped), and the entry merge makes its BitsPerSample
    (:func:`pipeline.adapters.tiff_header.state_bits_per_sample`).
    ``page_number``: the output page's index among the output's pages and their count,
    written as its PageNumber when the input page carries one (None: none written; the
    input's values would be wrong wherever the job picks, reorders or leaves out pages).
    ``indices``: the chain keeps the page's values as indices in a lossless, not 1-bit
    output (:func:`keeps_colormap`): a gray page's ColorMap is kept; else it is dropped,
    and GDAL_METADATA's COLORINTERP Palette with it (GDAL would read a palette band
    without its colours)."""
    md = info.metadata or {}
    palette = _palette(info, channels)
    photometric, extrasamples = photometric_of(info, channels, bands)
    kwargs: dict[str, Any] = {
        "photometric": "palette" if palette else photometric,
        "extrasamples": extrasamples, "software": f"tiffpipe {__version__}", "metadata": None,
    }
    same_size, sy, sx = _resized(info, height, width, factor, placed)
    if "aperio_resolution" in md and (placed or not same_size):  # its description dropped
        md = {**md, "resolution": md["aperio_resolution"], "resolutionunit": 3}
    if (resolution := _resolution(md, placed, sy, sx)) is not None:
        kwargs["resolution"] = resolution
        kwargs["resolutionunit"] = md.get("resolutionunit", 2)
    if md.get("subfiletype"):
        kwargs["subfiletype"] = md["subfiletype"]
    extratags = []
    if md.get("page_number") and page_number is not None:
        extratags.append((PAGE_NUMBER, 3, 2, page_number, True))  # (SHORT: at most MAX_ITEMS)
    if (profile := _carried_icc(info, channels, bands)) is not None:
        kwargs["iccprofile"] = profile
    if palette:
        kwargs["colormap"] = np.frombuffer(_unb64(md["colormap"]), "<u2").reshape(3, 256)
    gray_colormap = indices and "gray_colormap" in md
    if gray_colormap:  # (tifffile writes a colormap of a palette page only: as the tag)
        values = np.frombuffer(zlib.decompress(_unb64(md["gray_colormap"])), "<u2")
        extratags.append((COLORMAP, 3, len(values), values, True))
    if photometric == "separated":
        extratags.append((INKSET, 3, 1, (1,), True))  # CMYK (tifffile writes none)
    spatial = [tag for tag in md.get("spatial", []) if tag[0] != XMP]
    xmp, _said = output_xmp(info, height, width, factor, placed, form, derived, packets)
    if xmp is not None:
        extratags.append(xmp)
    if placed:
        spatial = geo_placed(spatial, placed)
    if not same_size:  # kept, scaled, through the chain's downsample only
        spatial = (geo_downsampled(spatial, factor)
                   if factor > 1 and sx == sy == Fraction(1, factor) else [])
    kept = nodata if keep_nodata is None else keep_nodata
    for code, kind, count, value in md.get("tags", []) + spatial:
        if code == GDAL_NODATA and not kept or code == ORIENTATION and placed and placed.turned:
            continue
        extratags.append((code, kind, count, _unb64(value) if kind in _BYTE_TYPES
                          else tuple(value), True))
    same_bands = tuple(range(channels)) if channels == info.channels else None
    xml = gdal_metadata(md["gdal_metadata"], same_bands if bands is None else bands, nodata,
                        stats, placed is not None or not same_size, linear) \
        if "gdal_metadata" in md else None
    made = {out: name for out, name in enumerate(names) if name is not None} \
        if bands is None and same_bands is None else {}
    if made:
        xml = _with_descriptions(xml, made)
    if carries_gray_colormap(info) and not gray_colormap:
        xml = _without_palette(xml)
    if xml:
        extratags.append((GDAL_METADATA, 2, 0, xml, True))
    if own_nodata is not None:  # (the input's was dropped: an op after it made its own)
        extratags.append((GDAL_NODATA, 2, 0, f"{own_nodata}".lower().encode("ascii"), True))
    name = ome_name(info, channels, bands)
    if name and not any(code == PAGE_NAME for code, *_ in md.get("tags", [])):
        extratags.append((PAGE_NAME, 2, 0, name.encode("utf-8"), True))
    if bilevel:
        kwargs["photometric"] = "miniswhite"
        extratags = [tag for tag in map(_bilevel_nodata, extratags) if tag is not None]
        extratags.append(ONE_BIT_EXTRATAG)  # (merge makes it BitsPerSample 1)
    if extratags:
        kwargs["extratags"] = extratags
    return kwargs


def carries_gray_colormap(info: Any) -> bool:
    """Whether the page of ``info`` (a PageInfo) is a gray page with a ColorMap to carry (or
    one too large to: dropped, :func:`colormap_note`): :func:`_gray_colormap`."""
    md = info.metadata or {}
    return "gray_colormap" in md or "gray_colormap_over" in md


def keeps_colormap(ops: list[dict[str, Any]], options: Any) -> bool:
    """Whether the output page of a chain ``ops`` (its JSON) under ``options`` (a page's
    OutputOptions: :func:`pipeline.core.plan.page_options`) keeps a gray page's ColorMap:
    the chain keeps its values as indices, as a palette page's (no op, geometric ops,
    downsamples that pick: :func:`pipeline.adapters.tiff_read.keeps_palette`), in an output
    that is neither JPEG (which blurs them) nor 1-bit."""
    from pipeline.adapters.tiff_read import keeps_palette

    return keeps_palette(ops, options.compression) and not options.bilevel


def keeps_gray_colormap(spec: Any, page: Any) -> bool:
    """Whether the output page of ``page`` (a PagePlan) of the job ``spec`` (a JobSpec)
    keeps its gray page's ColorMap (:func:`_gray_colormap`, :func:`keeps_colormap`): its
    values are indices, as a palette page's (its pyramid levels pick, never average)."""
    from pipeline.core.plan import page_options

    return "gray_colormap" in (page.info.metadata or {}) and keeps_colormap(
        spec.ops, page_options(spec, page))


def _without_palette(xml: bytes | None) -> bytes | None:
    """A GDAL_METADATA XML (None: none) without its COLORINTERP Palette items (role
    ``colorinterp``): the page's ColorMap is dropped, and GDAL would read a palette band
    without a colour table (rasterio's ``colormap()``: "NULL color table"), not a gray one.
    The bytes as they were when it has none; None when no item is left."""
    from xml.etree import ElementTree

    if not xml:
        return xml
    try:
        items = [e for e in ElementTree.fromstring(xml.split(b"\x00", 1)[0]) if e.tag == "Item"]
    except ElementTree.ParseError:
        return xml
    kept = [e for e in items if not (e.get("role") == "colorinterp"
                                     and (e.text or "").strip().lower() == "palette")]
    if len(kept) == len(items):
        return xml
    return _xml(kept) if kept else None


def colormap_note(spec: Any, pages: Sequence[Any]) -> str:
    """What a job's result says of its gray pages' ColorMaps it drops ("" none): which pages,
    and why (an op that changes the values the colours are of, a JPEG or 1-bit output, a
    ColorMap too large for the plan), so that the loss of a class map's colours is said,
    not found in QGIS (before, the ColorMap was dropped silently and GDAL_METADATA kept
    its COLORINTERP Palette: GDAL read a palette band without colours)."""
    from pipeline.core.ops import chain_keeps_indices
    from pipeline.core.plan import _pages, page_options

    said: dict[str, list[int]] = {}
    for page in pages:
        md = page.info.metadata or {}
        if not carries_gray_colormap(page.info):
            continue
        options = page_options(spec, page)
        if "gray_colormap_over" in md:
            why = (f"its ColorMap is {md['gray_colormap_over']:,} bytes compressed, over the "
                   f"{VALUE_MAX // 1024} KiB a carried tag may be")
        elif not chain_keeps_indices(spec.ops):
            i = next(i for i, op in enumerate(spec.ops) if not chain_keeps_indices([op]))
            name = spec.ops[i]["op"]
            why = f"ops[{i}] ({name}) changes the values its colours are of"
            if name == "downsample":
                why += ' (a downsample by "mode" or "nearest" picks them: the ColorMap is kept)'
        elif options.bilevel:
            why = "a 1-bit output has no colour table"
        elif not keeps_colormap(spec.ops, options):
            why = f"a {options.compression} output changes the values its colours are of"
        else:
            continue
        said.setdefault(why, []).append(page.info.index)
    return "; ".join(f"ColorMap of {_pages(numbers)} dropped: {why}; GDAL_METADATA's "
                     "COLORINTERP Palette removed with it (GDAL and QGIS read the band as gray)"
                     for why, numbers in said.items())


def _carried_icc(info: Any, channels: int, bands: tuple[int, ...] | None) -> bytes | None:
    """The ICC profile the output page of ``info`` with ``channels`` samples carries (None:
    none): the input page's, when its colour space is the output's and ``bands`` (as
    :func:`output_tags`) keep the colour bands where they were."""
    md = info.metadata or {}
    colours = 3 if channels >= 3 else 1
    if "icc" not in md or bands is not None and bands[:colours] != tuple(range(colours)):
        return None
    profile = _unb64(md["icc"])
    photometric = photometric_of(info, channels, bands)[0]
    space = ("CMYK" if photometric == "separated" else
             "RGB" if _palette(info, channels) or channels >= 3 else "GRAY")
    return profile if icc_space(profile) == space else None


def _resized(info: Any, height: int, width: int, factor: int, placed: Placement | None
             ) -> tuple[bool, Fraction, Fraction]:
    """Whether the output page of ``height`` x ``width`` has the size of the page the
    chain's geometric ops placed, and its pixels per placed pixel along y and x."""
    ref = (placed.height, placed.width) if placed else (info.height, info.width)
    if (height, width) == ref:
        return True, Fraction(1), Fraction(1)
    return (False, *_scale(ref, height, width, factor))


def _resolution(md: dict[str, Any], placed: Placement | None, sy: Fraction, sx: Fraction
                ) -> tuple[Any, Any] | None:
    """The output's XResolution and YResolution (None: the input page has none): a quarter
    turn swaps them, a size change scales them by the pixels per placed pixel."""
    if "resolution" not in md:
        return None
    (xn, xd), (yn, yd) = md["resolution"]
    if placed and placed.transposed:  # the page's x is the input's y
        (xn, xd), (yn, yd) = (yn, yd), (xn, xd)
    if sx == sy == 1:
        return (xn, xd), (yn, yd)
    return scaled_resolution([xn, xd], sx), scaled_resolution([yn, yd], sy)


def _palette(info: Any, channels: int) -> bool:
    """Whether the output page of ``info`` with ``channels`` samples is a palette page."""
    return info.photometric == "palette" and channels == 1 and "colormap" in (
        info.metadata or {})


def _colour_mode(photometric: str, bits: int, channels: int) -> int | None:
    """Photoshop's ColorMode of a page (0 Bitmap, 1 Gray, 2 Indexed, 3 RGB, 4 CMYK; None:
    a page of bands, which no mode fits): its colour model."""
    if photometric in ("minisblack", "miniswhite"):
        return None if channels > 2 else 0 if bits == 1 else 1
    return {"palette": 2, "rgb": 3, "ycbcr": 3, "separated": 4}.get(photometric)


def output_form(info: Any, channels: int, dtype: str, options: Any,
                bands: tuple[int, ...] | None = None) -> Form:
    """How merge stores the samples of the output page of ``info`` with ``channels``
    samples of ``dtype`` under ``options`` (an OutputOptions), for its XMP
    (:class:`pipeline.core.xmp.Form`): BitsPerSample (1: a bilevel output), the
    photometric written (:func:`output_tags`'s; YCbCr: a JPEG of RGB, which
    ``OutputEncoder`` subsamples), the compression code, whether its colour model is
    the input page's (a 1-bit input is read as 8-bit gray), and whether it carries an ICC
    profile (:func:`_carried_icc`)."""
    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.xmp import Form

    encoder = OutputEncoder(options, dtype, channels)
    bits = 1 if options.bilevel else np.dtype(dtype).itemsize * 8
    photometric = ("miniswhite" if options.bilevel else "palette" if _palette(info, channels)
                   else photometric_of(info, channels, bands)[0])
    if encoder.subsampling:
        photometric = "ycbcr"
    mode = _colour_mode(photometric, bits, channels)
    was = _colour_mode(info.photometric, 1 if info.conversion.startswith("bilevel") else 8,
                       info.channels)
    return Form((bits,) * channels, int(tifffile.PHOTOMETRIC[photometric.upper()]),
                encoder.tag, mode != was, mode, _carried_icc(info, channels, bands) is not None)


def derivation(spec: Any) -> Derivation:
    """The output of the job ``spec`` (a JobSpec) as a derivative, for its pages' XMP
    (:class:`pipeline.core.xmp.Derivation`: a new InstanceID, now, tiffpipe's version and
    the ops): one per output, made when merge writes it."""
    from pipeline.core.xmp import derivation as made

    return made(spec.ops, f"tiffpipe {__version__}")


def output_xmp(info: Any, height: int, width: int, factor: int = 1,
               placed: Placement | None = None, form: Form | None = None,
               derived: Derivation | None = None, packets: XmpPackets | None = None
               ) -> tuple[tuple[Any, ...] | None, str]:
    """The XMP of the output page of ``info`` that is ``height`` x ``width`` (``factor``,
    ``placed``: as :func:`output_tags`), as an ``extratags`` entry (None: none), and what
    was done with it ("" when the input page has none): kept byte for byte when the chain
    keeps the page's size and place and the packet states nothing of ``form`` (how the
    output's samples are stored, :func:`output_form`; None: not known) that changed, else
    rewritten (:func:`pipeline.core.xmp.rewritten`: its size, resolution and Orientation
    updated or removed, Camera Raw's settings and pixel positions removed, its
    BitsPerSample, SamplesPerPixel, PhotometricInterpretation, Compression, ColorMode made
    the output's), or dropped (a packet that does not parse through a chain that keeps the
    page's size and place is kept as it is); and stamped as the derivative ``derived``
    (:func:`derivation`: never kept byte for byte then; None: not stamped). ``packets``:
    what reads a packet too large for the plan from the input (``xmp_at``); None: such a
    packet is not read (the job's note at plan time, ``tiffpipe estimate``'s tags, which
    count its bytes apart: :func:`xmp_bytes`), none is written, and what is said is what is
    known without it (:func:`_by_reference`)."""
    md = info.metadata or {}
    if "xmp_over" in md:
        return None, (f"dropped: {md['xmp_over']:,} bytes, over the {XMP_MAX // 2**20} MiB "
                      "an XMP packet may hold (or past the file's end): strip its edit "
                      "history (exiftool -XMP-xmpMM:History= FILE) and run the job again")
    if "xmp_at" in md:  # (too large for the plan: read from the input)
        if packets is None:  # (what is known of it without reading it)
            return None, _by_reference(md["xmp_at"][2], placed is not None or not _resized(
                info, height, width, factor, placed)[0])
        packet = packets(md["xmp_at"])
        entry = [XMP, md["xmp_at"][0]]
    elif (entry := next((tag for tag in md.get("spatial", []) if tag[0] == XMP),
                        None)) is not None:
        packet = _unb64(entry[3])
    else:
        return None, ""
    same_size, sy, sx = _resized(info, height, width, factor, placed)
    kept = (XMP, entry[1], len(packet), packet, True), "kept as is"
    moved = not same_size or placed is not None
    if not moved and derived is None and (form is None or not _names_form(packet)):
        return kept
    from pipeline.core.xmp import Reshape, rewritten

    reshape = Reshape(width, height, bool(placed and placed.turned),
                      bool(placed and placed.transposed), (sx, sy),
                      _resolution(md, placed, sy, sx), md.get("resolutionunit", 2), moved, form)
    # (parsed once for the pages in a row that carry the same packet, held in the plan or
    # read from the input)
    done = packets.rewritten(packet, reshape, derived) if packets is not None \
        else rewritten(packet, reshape, derived)
    if done.packet is None and not moved:  # (unread through a copy, as before)
        return kept
    if done.packet is None:
        return None, done.said
    return (XMP, entry[1], len(done.packet), done.packet, True), done.said


def _by_reference(size: int, moved: bool) -> str:
    """What :func:`output_xmp` does with a packet too large for the plan (``xmp_at``) of
    ``size`` bytes, said without reading it (a job's note: planning reads no packet): what
    it does with a small one, the chain moving or resizing the page or not."""
    done = ("rewritten for the new size and place and stamped a derivative as a small "
            "packet is (one that does not parse as XML: dropped)" if moved else
            "stamped a derivative as a small packet is, how the output stores its samples "
            "made true in it (one that does not parse as XML: kept as it is)")
    return f"carried from the input at merge ({size:,} bytes), {done}"


def xmp_bytes(info: Any, ops: Sequence[dict[str, Any]]) -> int:
    """The bytes the output page of ``info`` takes for an XMP packet too large for the plan
    (``xmp_at``; 0: none), which ``tiffpipe estimate``'s tags leave out (:func:`output_tags`
    reads none): its size and the stamp's (:data:`STAMP_BYTES` and the ``ops`` in words,
    :func:`pipeline.core.xmp.ops_parameters`; a packet's padding often takes it)."""
    from pipeline.core.xmp import ops_parameters

    at = (info.metadata or {}).get("xmp_at")
    return 0 if at is None else int(at[2]) + STAMP_BYTES + len(ops_parameters(list(ops)))


def packets_held(infos: Iterable[Any]) -> int:
    """The bytes of packets too large for the plan that merge holds at once writing the
    pages of ``infos`` (:class:`XmpPackets`): those of the distinct packets (pages that
    share one read it once), at most :data:`PACKETS_HELD`."""
    distinct = {tuple(at[1:]) for info in infos
                if (at := (info.metadata or {}).get("xmp_at")) is not None}
    return min(sum(size for _, size in distinct), PACKETS_HELD)


def packet_reads(infos: Iterable[Any]) -> tuple[int, int]:
    """The S3 requests and bytes of merge's reads of the packets too large for the plan
    (``xmp_at``) writing the pages of ``infos`` in order, once per output
    (:class:`XmpPackets`): each distinct packet once (pages that share one read it once),
    again only when :data:`PACKETS_HELD` dropped it in between; each read one ranged GET of
    the packet's bytes (:func:`pipeline.adapters.storage.read_range`)."""
    held: dict[tuple[int, int], None] = {}
    requests = fetched = 0
    for info in infos:
        if (at := (info.metadata or {}).get("xmp_at")) is None:
            continue
        key = (int(at[1]), int(at[2]))
        if key in held:
            continue
        _make_room(held, key[1])
        held[key] = None
        requests, fetched = requests + 1, fetched + key[1]
    return requests, fetched


def _names_form(packet: bytes) -> bool:
    """Whether an XMP packet may state how its page's samples are stored (it names one of
    the properties :class:`pipeline.core.xmp.Form` rules)."""
    from pipeline.core.xmp import FORM_NAMES

    return any(name in packet for name in FORM_NAMES)


def xmp_note(spec: Any, pages: Sequence[Any]) -> str:
    """What a job's result says of its pages' XMP ("" when each is kept as is, or none has
    one): the pages whose XMP the chain of the job ``spec`` (a JobSpec) rewrote (which
    properties it updated and removed) or dropped, and why (:func:`output_xmp`, with how
    each page's samples are stored: :func:`page_form`), so that an archive sees which
    access copies lost or changed their rights and credit metadata. A packet too large for
    the plan is not read (it is merge's to read): said carried by reference, its size, and
    what is done with it (:func:`_by_reference`)."""
    from pipeline.core.plan import _pages

    said: dict[str, list[int]] = {}
    derived = None  # (for what is said: merge makes the output's own)
    for page in pages:
        # (unstamped first: a packet kept is not parsed, nor said; stamping every page's to
        # throw it away took a 1,000-page master's PlanJob ~2.5 s more)
        if not carries_xmp(page.info) or page_xmp(spec, page)[1].startswith("kept"):
            continue
        derived = derived or derivation(spec)  # (not made for pages without XMP: its imports)
        _, what = page_xmp(spec, page, derived)
        if what and not what.startswith("kept"):
            said.setdefault(what, []).append(page.info.index)
    return "; ".join(f"XMP of {_pages(numbers)}: {what}" for what, numbers in said.items())


def page_xmp(spec: Any, page: Any, derived: Derivation | None = None,
             packets: XmpPackets | None = None) -> tuple[tuple[Any, ...] | None, str]:
    """:func:`output_xmp` of a PagePlan of the job ``spec`` (a JobSpec): its output size,
    its reduction, where the chain places it, and how its samples are stored
    (:func:`page_form`), stamped as the derivative ``derived``: what a job's result
    (:func:`xmp_note`) and ``tiffpipe inspect --ops`` say of the page's XMP."""
    from pipeline.core.chain import page_placement

    return output_xmp(page.info, page.out_grid.height, page.out_grid.width, page.factor,
                      page_placement(spec.ops, page.info), page_form(spec, page), derived,
                      packets)


def carries_xmp(info: Any) -> bool:
    """Whether the page of ``info`` (a PageInfo) has an XMP packet to carry (or one too large
    to: :func:`output_xmp` says it dropped it)."""
    md = info.metadata or {}
    return "xmp_over" in md or "xmp_at" in md or any(tag[0] == XMP
                                                      for tag in md.get("spatial", []))


def page_form(spec: Any, page: Any) -> Form:
    """:func:`output_form` of a PagePlan of the job ``spec`` (a JobSpec), under the options
    its page is written with (``bilevel`` "auto": 1-bit or not, page by page:
    :func:`pipeline.core.plan.page_options`)."""
    from pipeline.core.ops import chain_bands
    from pipeline.core.plan import page_options

    return output_form(page.info, page.out_channels, page.out_dtype, page_options(spec, page),
                       chain_bands(spec.ops, page.info.channels))


def gdal_metadata(value: str, bands: tuple[int, ...] | None, values: bool, stats: bool,
                  moved: bool, linear: tuple[float, float] | None = None) -> bytes | None:
    """The GDAL_METADATA of an output page, from the input's (``value``, base64 XML: items
    ``<Item name= [sample=] [role=] [domain=]>text</Item>``), None when no item holds.

    ``bands``: the input band each output band is (None: the chain made bands of its own, so
    every band item goes); a band item is copied for each output band that is its band,
    renumbered. ``values`` False: the chain remapped the values, so only the items naming a
    band (``description``, ``colorinterp``) are kept of it (scale, offset, unit, statistics
    and any other band item may describe its values), unless ``linear``, ``(a, b)``: the
    chain mapped each value v to a v + b (:func:`pipeline.core.ops.chain_linear`, or the
    reader's miniswhite ``max - v``: :func:`convert_nodata`), so a band with a scale, offset
    or unit keeps its physical values under a new scale and offset (:func:`_rescaled`) and
    its unit. ``stats`` False: the chain changed a
    band's set of values (any op but a rotate, flip or select_bands), so its STATISTICS_*
    go. ``moved``: the page was turned, cropped or resized, so the RPC and GEOLOCATION
    domains (pixel positions) go. The scene's other items (no ``sample``) are kept. The
    bytes are the input's when every item is kept as it was."""
    from xml.etree import ElementTree  # (GDAL_METADATA inputs only)

    text = _unb64(value).split(b"\x00", 1)[0]
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None  # (nothing to tell what holds)
    items = [e for e in root if e.tag == "Item"]
    scene = [e for e in items if e.get("sample") is None
             and not (moved and e.get("domain", "").upper() in _SPATIAL_DOMAINS)]
    kept = list(scene)
    for out, band in enumerate(bands or ()):
        rescaled = _rescaled(items, band, out, linear) if not values and linear else []
        held = _NAMING_ROLES + (("unittype",) if rescaled else ())
        for e in items:
            name, role = e.get("name", ""), e.get("role", "")
            if e.get("sample") != str(band) or not values and role not in held \
                    or not stats and name.upper().startswith("STATISTICS_"):
                continue
            if out != band:
                copy = ElementTree.Element("Item", {**e.attrib, "sample": str(out)})
                copy.text = e.text
                e = copy
            kept.append(e)
        kept += rescaled
    if kept == items:
        return text
    return _xml(kept) if kept else None


def _xml(items: list[Any]) -> bytes:
    """A GDAL_METADATA XML of these ``Item`` elements."""
    from xml.etree import ElementTree

    lines = ["<GDALMetadata>"]
    for e in items:
        lines.append("  " + ElementTree.tostring(e, encoding="unicode").strip())
    return ("\n".join(lines) + "\n</GDALMetadata>\n").encode("utf-8")


def _with_descriptions(xml: bytes | None, names: dict[int, str]) -> bytes:
    """A GDAL_METADATA XML (``xml``, None: none) with a DESCRIPTION item (GDAL's band
    description, role ``description``) for each band of ``names`` (``{band: name}``)."""
    from xml.etree import ElementTree

    items = [e for e in ElementTree.fromstring(xml) if e.tag == "Item"] if xml else []
    for band, name in names.items():
        item = ElementTree.Element("Item", {"name": "DESCRIPTION", "sample": str(band),
                                            "role": "description"})
        item.text = name
        items.append(item)
    return _xml(items)


def band_names(info: Any) -> list[str]:
    """The name of each band of the page of ``info`` (a PageInfo): its GDAL description
    (GDAL_METADATA), else ``band n``, numbered from 1 as GDAL and QGIS number bands."""
    roles = page_band_roles(info.metadata)
    return [roles.get(b, {}).get("description") or f"band {b + 1}"
            for b in range(info.channels)]


def band_scaling(info: Any, bands: tuple[int, ...] | None, values: bool,
                 linear: tuple[float, float] | None) -> list[tuple[float, float]] | None:
    """Each band's GDAL scale and offset (``scale * v + offset`` is its physical value; 1 and
    0 where it has none) after a chain whose output bands are input ``bands`` (None: bands of
    its own), that keeps ``values`` or maps them by ``linear`` (as :func:`gdal_metadata`
    carries them to an output); None when no band has a scale or an offset there."""
    md = info.metadata or {}
    if "gdal_metadata" not in md or bands is None or not values and linear is None:
        return None
    xml = gdal_metadata(md["gdal_metadata"], bands, values, False, False, linear)
    roles = band_roles(xml or b"")
    if not roles:
        return None
    try:
        scaling = [(float(r.get("scale", 1.0)), float(r.get("offset", 0.0)))
                   for r in (roles.get(b, {}) for b in range(len(bands)))]
    except ValueError:
        return None  # (a scale that is no number: nothing to tell the values by)
    return scaling if any(s != (1.0, 0.0) for s in scaling) else None


def page_band_roles(metadata: dict[str, Any] | None) -> dict[int, dict[str, str]]:
    """:func:`band_roles` of a page's GDAL_METADATA, from its PageInfo's ``metadata`` (the
    XML base64, up to its first NUL; empty without one)."""
    return band_roles(_unb64((metadata or {}).get("gdal_metadata", "")).split(b"\x00", 1)[0])


def band_roles(xml: bytes) -> dict[int, dict[str, str]]:
    """The band items of a GDAL_METADATA XML that have a role (``description``, ``scale``,
    ``offset``, ``unittype``, ...): ``{band: {role: text}}`` (empty when none, or the XML
    does not parse)."""
    if not xml.strip():  # (most pages: no GDAL_METADATA, and no XML parser to load for it)
        return {}
    from xml.etree import ElementTree

    try:
        items = ElementTree.fromstring(xml).findall("Item")
    except ElementTree.ParseError:
        return {}
    roles: dict[int, dict[str, str]] = {}
    for e in items:
        sample, role = e.get("sample", ""), e.get("role")
        if role and sample.isdigit():
            roles.setdefault(int(sample), {})[role] = (e.text or "").strip()
    return roles


def _rescaled(items: list[Any], band: int, out: int, linear: tuple[Any, Any]
              ) -> list[Any]:
    """The OFFSET and SCALE items of output band ``out`` that give the physical values
    ``scale * v + offset`` the items of input band ``band`` gave, after each value v became
    ``a v + b`` (``linear``): scale / a and offset - scale b / a (GDAL's defaults, 1 and 0,
    for what the band lacks: a band with a unit but neither has the value itself as its
    physical value, so it gets 1 / a and -b / a). Empty when the band has no scale, offset
    or unit (its values have no physical meaning to keep), or its scale or offset is no
    number. Computed as exact fractions of the decimals given
    (:func:`pipeline.core.convert.exact`) and rounded once: the recipe's counts to
    reflectance give scale 1 and offset 0, not 1.0000000000000002 and 1.4e-17."""
    from xml.etree import ElementTree

    mine = {e.get("role"): e.text for e in items if e.get("sample") == str(band)}
    given = {role: text for role, text in mine.items() if role in ("offset", "scale")}
    if not given and "unittype" not in mine:
        return []
    try:
        scale = exact(float(given.get("scale", 1.0)))
        offset = exact(float(given.get("offset", 0.0)))
    except (TypeError, ValueError, OverflowError):  # (no number; infinite or NaN)
        return []
    a, b = map(exact, linear)
    made = []
    for name, number in (("OFFSET", offset - scale * b / a), ("SCALE", scale / a)):
        item = ElementTree.Element("Item", {"name": name, "sample": str(out),
                                            "role": name.lower()})
        item.text = repr(float(number))
        made.append(item)
    return made


def _bilevel_nodata(tag: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """An extra tag of a 1-bit (miniswhite) page: GDAL_NODATA as the bit of its value (None:
    a value no bit holds), any other tag as it is."""
    if tag[0] != GDAL_NODATA:
        return tag
    text = bytes(tag[3]).split(b"\x00", 1)[0].decode("ascii", "replace").strip()
    try:
        bit = {0.0: b"1", 255.0: b"0"}.get(float(text.replace(",", ".")))
    except ValueError:
        bit = None
    return None if bit is None else (GDAL_NODATA, 2, 0, bit, True)


#: the values of ResolutionUnit: none, inch, centimetre (another is damaged: dropped)
RESOLUTION_UNITS = (1, 2, 3)


def unit_note(spec: Any, pages: Sequence[Any]) -> str:
    """What a job's result says of pages whose ResolutionUnit is no TIFF unit (a damaged
    tag, ``metadata["resolutionunit_dropped"]``: :func:`read_metadata`): it is dropped and
    their output's resolution unit is :func:`dropped_unit_outcome`'s, their resolution kept
    as numbers ("": none such page). Before, the job failed once every pixel was processed,
    when the output was written ("RESUNIT: invalid argument 514")."""
    from pipeline.core.plan import _pages

    units: dict[tuple[int, str], list[int]] = {}
    for page in pages:
        md = page.info.metadata or {}
        if (unit := md.get("resolutionunit_dropped")) is not None:
            units.setdefault((unit, dropped_unit_outcome(md)), []).append(page.info.index)
    return "; ".join(f"ResolutionUnit {unit} of {_pages(numbers)} is no TIFF unit (1 none, "
                     f"2 inch, 3 centimetre): dropped, the output's resolution unit is {outcome}"
                     for (unit, outcome), numbers in units.items())


def dropped_unit_outcome(md: dict[str, Any]) -> str:
    """The output's resolution unit of a page whose ResolutionUnit is dropped (metadata
    ``md``, :func:`read_metadata`): none, but centimetre on an Aperio page where a job drops
    its description (:func:`output_tags` then writes its MPP as the resolution)."""
    if "aperio_resolution" in md:
        return ("none, or centimetre (its Aperio MPP) where the job drops its description "
                "(a size change, a turn)")
    return "none"


def dropped_nodata_note(spec: Any, pages: Sequence[Any]) -> str:
    """What a job's result says of a ``convert`` to an integer type without ``nodata`` that
    meets a no-data value (the input's GDAL_NODATA kept through the ops before it, a
    ``normalized_difference``'s NaN): the no-data pixels are converted as data and the
    output has no GDAL_NODATA, so GDAL and QGIS show the collar as data ("" none: a masked
    page's mask is carried, and a float convert's output keeps NaN). Before, nothing said it
    and the collar of a scene converted to uint8 turned black data. And a palette page with
    a no-data index the job makes RGB (:func:`_palette_nodata_note`)."""
    from pipeline.core.plan import _pages

    notes = [note] if (note := _palette_nodata_note(spec, pages)) else []
    for i, op in enumerate(spec.ops):
        if op["op"] != "convert" or op.get("nodata") is not None \
                or np.dtype(op["dtype"]).kind == "f":
            continue
        values: dict[str, list[int]] = {}
        for page in pages:
            value = nodata_at(page.info, spec.ops, i)
            if value is not None:
                values.setdefault(str(value), []).append(page.info.index)
        if not values:
            continue
        low, high = np.iinfo(op["dtype"]).min, np.iinfo(op["dtype"]).max
        said = ", ".join(f"{'NaN' if number == 'nan' else number} ({_pages(numbers)})"
                         for number, numbers in values.items())
        rest = "" if op.get("out_range") else f", the data {low + 1}..{high}"
        notes.append(f"ops[{i}] (convert) to {op['dtype']} has no \"nodata\": the no-data value "
                     f"{said} is converted as data and the output has no GDAL_NODATA, so GDAL "
                     f"and QGIS show the no-data area as data; give it \"nodata\": {low} to "
                     f"keep it (the no-data area {low}{rest})")
    return "; ".join(notes)


def _palette_nodata_note(spec: Any, pages: Sequence[Any]) -> str:
    """What a job's result says of palette pages with a no-data index (GDAL_NODATA,
    ``metadata["palette_nodata"]``: :func:`convert_nodata`) that it converts to RGB through
    their colormap (an op that mixes values, a JPEG output: ``keeps_palette``): the no-data
    pixels become their index's colour, opaque data under no GDAL_NODATA; and
    what keeps the indices, their colormap and GDAL_NODATA ("" none such page). Before,
    nothing said it: a class map downsampled by the default mean lost its no-data area."""
    from pipeline.core.ops import chain_keeps_indices
    from pipeline.core.plan import _pages

    values: dict[int, list[int]] = {}
    for page in pages:
        if (value := (page.info.metadata or {}).get("palette_nodata")) is not None:
            values.setdefault(value, []).append(page.info.index)
    if not values:
        return ""
    mixing = [i for i, op in enumerate(spec.ops) if not chain_keeps_indices([op])]
    means = [i for i in mixing if spec.ops[i]["op"] == "downsample"]
    jpeg = spec.output_options.compression == "jpeg"
    why = ([f"ops[{i}] ({spec.ops[i]['op']}{' by its default mean' if i in means else ''})"
            for i in mixing[:1]] + ["a JPEG output"] * jpeg)
    keeps = "keeps the indices, their colormap and GDAL_NODATA"
    lossless = "a lossless compression (deflate, zstd, lzw or none)"
    if not why:  # (the reader's own: more than 8 bits of index, a colormap cut short)
        why, fix = ["the reader (it keeps only palettes of 1 to 8 bits with whole colormaps)"], ""
    elif not mixing:
        fix = f"{lossless} {keeps}"
    elif means == mixing:
        fix = (f"give {' and '.join(f'ops[{i}]' for i in means)} (downsample) \"method\": "
               f"\"mode\" (or \"nearest\"){f' and choose {lossless}' if jpeg else ''}, which "
               f"{keeps}")
    else:
        fix = ("only rotate, flip, crop and a downsample by nearest, mode, min or max keep a "
               f"palette page's indices, their colormap and GDAL_NODATA"
               f"{f', with {lossless}' if jpeg else ''}")
    said = ", ".join(f"{value} of {_pages(numbers)}" for value, numbers in values.items())
    return (f"the palette no-data index (GDAL_NODATA) {said} is lost: {' and '.join(why)} "
            f"make{'s' if len(why) == 1 else ''} the page RGB through its colormap, so the "
            "no-data pixels become that index's colour, data to GDAL and QGIS, and the output "
            f"has no GDAL_NODATA to mark them{'; ' if fix else ''}{fix}")


def convert_nodata(metadata: dict[str, Any], kind: Any, dtype: np.dtype) -> None:
    """Map the GDAL_NODATA tag in ``metadata`` as the reader maps the pixels of its page
    (``kind``: a :class:`~pipeline.adapters.tiff_read.PixelKind` with a conversion;
    ``dtype``: of the samples as stored): miniswhite's ``max - v``, a 1, 2 or 4-bit gray
    page's 8-bit value; the tag is dropped where no one value marks the converted pixels (a
    palette index become RGB, an inverted page with extra samples, a value the page's
    samples cannot hold; a palette's index is kept as ``metadata["palette_nodata"]``, which
    :func:`dropped_nodata_note` tells). Otherwise GDAL would take the no-data pixels for
    data, and data of the old value for no-data. GDAL_METADATA keeps the band items that
    still hold (:func:`gdal_metadata`): a miniswhite page's first band its name, and its
    scale, offset and unit rescaled for ``max - v``; a sub-byte gray page's band its name
    only."""
    if "gdal_metadata" in metadata and (kind.invert or kind.lut is not None):
        # (values remapped; a palette made RGB has new bands: none of its band items hold).
        # GDAL reads a miniswhite page's samples as stored, and its scale and offset are of
        # those: after max - v, the band's are rescaled so GDAL reads the output's (written
        # minisblack) as the same physical values (a = -1, b = max)
        inverted = (-1.0, float(np.iinfo(kind.dtype).max)) if kind.invert else None
        xml = gdal_metadata(metadata.pop("gdal_metadata"),
                            None if kind.lut is not None and kind.lut.ndim > 1 else (0,),
                            False, False, False, inverted)
        if xml:
            metadata["gdal_metadata"] = _b64(xml)
    tags = metadata.get("tags", [])
    if dtype.kind == "b":  # (tifffile's dtype of a bilevel page)
        dtype = np.dtype(np.uint8)
    for i, (code, tag_kind, _count, value) in enumerate(tags):
        if code != GDAL_NODATA or tag_kind != 2:
            continue
        number = nodata_number(value, dtype)
        if number is not None and kind.invert and kind.channels == 1:
            mapped: int | None = int(np.iinfo(kind.dtype).max) - int(number)
        elif number is not None and kind.lut is not None and kind.lut.ndim == 1 \
                and 0 <= number < len(kind.lut):
            mapped = int(kind.lut[int(number)])
        else:
            mapped = None
        if mapped is None:
            del tags[i]
            if number is not None and kind.lut is not None and kind.lut.ndim > 1:
                metadata["palette_nodata"] = number  # (dropped_nodata_note says it)
        else:
            text = f"{mapped}\x00".encode("ascii")
            tags[i] = [code, tag_kind, len(text), _b64(text)]
        break
    if not tags:
        metadata.pop("tags", None)
