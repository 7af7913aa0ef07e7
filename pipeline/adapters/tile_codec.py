"""Byte formats of tiles: work tiles between split and process, encoded output tiles.

- Work tiles (split -> process) are raw pixels compressed with LZ4: lossless and over a
  GB/s each way (zstd level 1 saved ~10% of bytes on photographic content but cost 2.4x
  the encode time, and split is encode-bound), so the round trip costs little next to
  the ops.
- Output tiles (process -> merge) are encoded with the OUTPUT codec by process, exactly as
  tifffile would encode them, so merge only places bytes. They are stored in *segments*
  (:class:`pipeline.steps.process.SegmentOutput`): the raw concatenation of a batch's or
  unit's encoded tiles in file order, and a JSON index ``{"tiles": [[row, col, offset,
  size], ...]}`` next to it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import imagecodecs
import numpy as np
from tifffile import TIFF

from pipeline.adapters.tiff_header import ONE_BIT_EXTRATAG
from pipeline.core.models import JobPlan, OutputOptions, PagePlan
from pipeline.core.nodata import BITS_FIX, unheld_nodata
from pipeline.core.ops import chain_keeps_values
from pipeline.core.plan import Problem, auto_fix, explain_conversion, page_options
from pipeline.errors import (
    CorruptTiffError,
    OperationError,
    exhausted,
    is_out_of_memory,
)

_WORK_MAGIC = b"TPW2"
_TAGS = {"none": 1, "lzw": 5, "jpeg": 7, "deflate": 8, "zstd": 50000, "group4": 4}
#: the TIFF Compression of CCITT T.6 (Group 4 fax)
GROUP4 = 4


def encode_work_tile(tile: np.ndarray) -> bytes:
    """Lossless, fast, self-describing bytes of a tile (dtype and shape in a small header)."""
    tile = np.ascontiguousarray(tile)
    header = json.dumps({"dtype": tile.dtype.str, "shape": tile.shape}).encode()
    body = imagecodecs.lz4_encode(tile.tobytes())
    return _WORK_MAGIC + struct.pack("<I", len(header)) + header + body


def decode_work_tile(data: bytes, name: str = "work tile") -> np.ndarray:
    if data[:4] != _WORK_MAGIC:
        raise CorruptTiffError(f"{name}: not a tiffpipe work tile (bad magic)")
    try:
        (n,) = struct.unpack_from("<I", data, 4)
        header = json.loads(data[8:8 + n])
        dtype, shape = np.dtype(header["dtype"]), tuple(header["shape"])
        # the size, given: LZ4's block format does not hold it, and imagecodecs' guess of it
        # fails for some sizes of incompressible data (noise of 8.5-16 MiB, float pages)
        raw = imagecodecs.lz4_decode(data[8 + n:], out=int(np.prod(shape)) * dtype.itemsize)
        return np.frombuffer(raw, dtype).reshape(shape)
    except (struct.error, ValueError, KeyError, TypeError, imagecodecs.Lz4Error) as exc:
        raise CorruptTiffError(f"{name}: damaged work tile ({exc}); run the job again") from exc


class OutputEncoder:
    """Encodes output tiles the way tifffile would, and gives the matching writer arguments.

    ``writer_kwargs`` passed to ``TiffWriter.write`` together with an iterator of the bytes of
    ``encode`` produce the same file as tifffile encoding the pixels itself. The codec's
    tag, predictor and arguments are worked out once, not for every tile. (A plain class: a
    dataclass's generated methods are compiled when the module is imported, within a run.)
    """

    __slots__ = ("_args", "bilevel", "channels", "dtype", "options", "predictor", "subsampling",
                 "tag")

    def __init__(self, options: OutputOptions, dtype: str, channels: int):
        self.options, self.dtype, self.channels = options, dtype, channels
        self.tag: int = _TAGS[options.compression]
        #: 1-bit pages: 0 and 255 stored as bits (miniswhite: 0, black, is 1), each row's
        #: bits packed from its first byte (MSB first), with no predictor
        self.bilevel = options.bilevel
        self.predictor = 1 if self.bilevel else _predictor(options.compression, dtype)
        self.subsampling: tuple[int, int] | None = (
            (2, 2) if options.compression == "jpeg" and channels == 3 else None)
        self._args = self._codec_args()

    @property
    def lossy(self) -> bool:
        """JPEG: a reader sees the decoded tiles, not the pixels encoded."""
        return self.tag == _TAGS["jpeg"]

    def check(self, photometric: str | None = None, top: tuple[int, str] | None = None,
              whole_range: bool = False, first_fix: str = "") -> str | None:
        """Why this output cannot be written (None if it can); ``photometric``: the page's
        (a CMYK page, "separated", has four inks, not an alpha channel); ``top``: the
        largest value the output's samples hold by the input page's header, and which
        header says it (``metadata["max_sample"]``), while the op chain keeps its values;
        ``whole_range``: the output's samples span their type's whole range, whatever a
        header says (the reader converted the page to it: a 16-bit colormap's RGB);
        ``first_fix``: what a 1-bit page that cannot be one does first (a book's plate:
        ``"bilevel": "auto"``, :func:`~pipeline.core.plan.auto_fix`), before the ops that
        would make it one."""
        if self.bilevel:
            return self._bilevel_check(photometric, first_fix)
        if self.options.compression != "jpeg":
            return None
        typed, counted = self.dtype == "uint8", self.channels in (1, 3)
        if typed and counted:
            return None
        convert = _to_uint8(self.dtype, top, whole_range)
        if not counted and not typed:  # (both at once, not one a round)
            has = (f"jpeg output needs uint8 pixels and 1 or 3 bands (channels), the output is "
                   f"{self.dtype} with {self.channels} bands: JPEG holds gray or RGB of 8 "
                   "bits only")
        elif not typed:
            return (f"jpeg output needs uint8 pixels, the output is {self.dtype}; end the ops "
                    f"with {convert}, or choose zstd, deflate, lzw or none")
        else:
            has = (f"jpeg output needs 1 or 3 bands (channels), the output has "
                   f"{self.channels}: JPEG holds gray or RGB only")
        if photometric == "separated":  # (four inks: select_bands refuses them)
            return f"{has} (a CMYK page: choose zstd, deflate, lzw or none)"
        keep = [0] if self.channels == 2 else [0, 1, 2]  # (gray + alpha's gray; RGB)
        then = "" if typed else f" and end them with {convert}"
        return (f'{has}; add {{"op": "select_bands", "bands": {keep}}} to the ops (or the '
                f"bands you want, 1 or 3){then}, or choose zstd, deflate, lzw or none")

    def _bilevel_check(self, photometric: str | None, first_fix: str = "") -> str | None:
        """Why the page cannot be written as 1-bit: not one band of uint8 (a palette page's
        values are colour indices), and the ops that make it of this page: one band (gray
        of RGB, one of other bands), a threshold, then a convert of its 0 and maximum to 0
        and 255. Its values are checked as its tiles are encoded."""
        if self.dtype == "uint8" and self.channels == 1 and photometric != "palette":
            return None
        if photometric == "palette":
            return ("output_options.bilevel: a 1-bit output holds one band of uint8, 0 and 255 "
                    "only, the output is a palette page (its values are colour indices); end "
                    'the ops with {"op": "to_gray"} (an op reads the page as RGB through its '
                    'colormap), then {"op": "otsu_threshold"} (and a convert to uint8 after it '
                    'when its colormap is 16-bit), or drop "bilevel"')
        steps = []
        if self.channels > 1:
            steps.append('{"op": "to_gray"}' if photometric == "rgb" or self.channels == 2 else
                         '{"op": "select_bands", "bands": [0]} (or the band you want)')
        dtype = np.dtype(self.dtype)
        top = 1 if dtype.kind == "f" else int(np.iinfo(dtype).max)
        otsu = '; or {"op": "otsu_threshold"}' if dtype.name in ("uint8", "uint16") else ""
        steps.append(f'{{"op": "threshold", "value": V}} (V a value of the page\'s own: the '
                     f"pixels above it become {top}, the others 0{otsu})")
        if dtype.name != "uint8":
            steps.append(f'{{"op": "convert", "dtype": "uint8", "in_range": [0, {top}]}} '
                         f"(its 0 and {top} to 0 and 255)")
        has = f"{self.dtype} with {self.channels} band{'s' * (self.channels != 1)}"
        first = f"{first_fix}; or " if first_fix else ""
        return (f"output_options.bilevel: a 1-bit output holds one band of uint8, 0 and 255 "
                f"only, the output is {has}; {first}end the ops with {', then '.join(steps)}, "
                'or drop "bilevel"')

    def _codec_args(self) -> dict[str, Any]:
        comp = self.options.compression
        if comp == "zstd":
            return {"level": self.options.level or 3}
        if comp == "deflate":
            return {"level": self.options.level or 6}
        if comp == "jpeg":
            args: dict[str, Any] = {"level": self.options.quality}
            if self.subsampling:
                args.update(subsampling=self.subsampling, colorspace="RGB", outcolorspace="YCBCR")
            return args
        return {}

    def writer_kwargs(self) -> dict[str, Any]:
        """``dtype``, ``compression``, ``predictor``... for ``TiffWriter.write``. A 1-bit page
        is laid out as tifffile's bool pages are; group4 as deflate, as tifffile compresses
        no bool page with CCITT itself: set the Compression tag to :data:`GROUP4` after
        (:func:`pipeline.adapters.tiff_header.set_compression`)."""
        kwargs: dict[str, Any] = {"dtype": bool} if self.bilevel else {}
        if self.tag != 1:
            kwargs["compression"] = _TAGS["deflate"] if self.tag == GROUP4 else self.tag
            kwargs["predictor"] = self.predictor if self.predictor > 1 else None
            kwargs["compressionargs"] = {k: v for k, v in self._args.items()
                                         if k == "level"}
        if self.subsampling:
            kwargs["subsampling"] = self.subsampling
        return kwargs

    def decode(self, data: bytes) -> np.ndarray:
        """The pixels (t, t, channels) of a full-size output tile made by :meth:`encode`
        (for JPEG: the lossy pixels a reader sees)."""
        t, dtype = self.options.tile, np.dtype(self.dtype)
        if self.bilevel:
            return _bilevel_decode(self.tag, data, t, t).reshape(t, t, 1)
        try:
            if self.tag == 1:
                return np.frombuffer(data, dtype).reshape(t, t, -1)
            if self.tag == 7:
                return np.asarray(TIFF.DECOMPRESSORS[7](data)).reshape(t, t, -1)
            raw = TIFF.DECOMPRESSORS[self.tag](data)
            pixels = np.frombuffer(raw, dtype).reshape(t, t, -1).copy()
        except Exception as exc:
            raise OperationError(f"decoding a {self.options.compression} output tile "
                                 f"failed: {exc}") from exc
        if self.predictor > 1:
            pixels = TIFF.UNPREDICTORS[self.predictor](pixels, axis=-2, out=pixels)
        return pixels

    def encode(self, tile: np.ndarray) -> bytes:
        """Encode one full-size output tile ((t, t) or (t, t, channels))."""
        if self.bilevel:  # (its values checked by the caller: 0 and 255 only)
            return _bilevel_encode(self.tag, tile.reshape(tile.shape[0], tile.shape[1]) == 0,
                                   self._args)
        data = np.ascontiguousarray(tile).reshape(tile.shape[0], tile.shape[1], -1)
        if self.tag == 1:
            return data.tobytes()
        if self.predictor > 1:
            data = TIFF.PREDICTORS[self.predictor](data, axis=-2)
        try:
            return bytes(TIFF.COMPRESSORS[self.tag](data, **self._args))
        except Exception as exc:
            if is_out_of_memory(exc):  # (zstd: "Allocation error"): the machine's limit
                raise exhausted(exc, f"encoding a {self.options.compression} tile of "
                                     f"{tile.shape} {tile.dtype}") from exc
            raise OperationError(f"encoding a {self.options.compression} tile of {tile.shape} "
                                 f"{tile.dtype} failed: {exc}") from exc


def _bilevel_encode(tag: int, black: np.ndarray, args: dict[str, Any]) -> bytes:
    """The bytes of a 1-bit tile or strip whose bits are ``black`` (miniswhite): group4 by
    libtiff's CCITT T.6 encoder (imagecodecs.tiff_encode: the tile as a one-strip TIFF, whose
    strip is the tile's data, each strip and tile coded on its own), the others packed."""
    try:
        if tag == GROUP4:
            return _only_strip(imagecodecs.tiff_encode(
                black, compression="ccittfax4", bitspersample=1, photometric="miniswhite",
                rowsperstrip=black.shape[0]))
        packed = np.packbits(black, axis=-1)
        return packed.tobytes() if tag == 1 else bytes(TIFF.COMPRESSORS[tag](packed, **args))
    except Exception as exc:
        if is_out_of_memory(exc):
            raise exhausted(exc, f"encoding a 1-bit tile of {black.shape}") from exc
        raise OperationError(f"encoding a 1-bit tile of {black.shape} failed: {exc}") from exc


#: an internal mask page's deflate level (GDAL's default for its masks)
MASK_LEVEL = 6
#: ``TiffWriter.write`` arguments of an internal mask page, as GDAL writes one: 1 bit (a
#: tifffile bool page), NewSubfileType 4, Photometric MASK, deflate (Compression 8), no
#: software or description; merge drops the resolution tifffile adds, and makes the
#: placeholder entry BitsPerSample 1 (:func:`pipeline.adapters.tiff_header.state_bits_per_sample`)
MASK_WRITER_KWARGS: dict[str, Any] = {
    "dtype": bool, "photometric": 4, "subfiletype": 4, "compression": _TAGS["deflate"],
    "compressionargs": {"level": MASK_LEVEL}, "software": False, "metadata": None,
    "extratags": [ONE_BIT_EXTRATAG]}


def encode_mask(valid: np.ndarray) -> bytes:
    """The bytes of an internal mask's tile or strip: ``valid`` (bool, rows x columns) as
    bits, 1 valid and 0 not (GDAL's), each row packed from its first byte, deflated."""
    return _bilevel_encode(_TAGS["deflate"], valid, {"level": MASK_LEVEL})


def _only_strip(tiff: bytes) -> bytes:
    """The data of the one strip of a little-endian classic TIFF (what libtiff wrote)."""
    if tiff[:4] != b"II*\x00":
        raise ValueError("libtiff wrote no little-endian classic TIFF")
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, ifd)
    found = {}
    for i in range(count):
        code, kind, n, value = struct.unpack_from("<HHII", tiff, ifd + 2 + 12 * i)
        if code in (273, 279):  # StripOffsets, StripByteCounts: one each, SHORT or LONG
            if n != 1:
                raise ValueError(f"libtiff wrote {n} strips")
            found[code] = value & 0xFFFF if kind == 3 else value
    return tiff[found[273]:found[273] + found[279]]


def decode_mask(data: bytes, height: int, width: int) -> np.ndarray:
    """The ``valid`` (bool, height x width) of a tile made by :func:`encode_mask`."""
    return _bits_decode(_TAGS["deflate"], data, height, width)


def _bilevel_decode(tag: int, data: bytes, height: int, width: int) -> np.ndarray:
    """The 0/255 uint8 pixels (height, width) of a 1-bit tile made by :func:`_bilevel_encode`."""
    return np.where(_bits_decode(tag, data, height, width), 0, 255).astype(np.uint8)


def _bits_decode(tag: int, data: bytes, height: int, width: int) -> np.ndarray:
    """The bits (bool, height x width) of a 1-bit tile made by :func:`_bilevel_encode`."""
    try:
        if tag == GROUP4:
            return imagecodecs.ccittfax4_decode(data, height, width).astype(bool)
        raw = data if tag == 1 else TIFF.DECOMPRESSORS[tag](data)
        packed = np.frombuffer(raw, np.uint8).reshape(height, -1)
        return np.unpackbits(packed, axis=-1, count=width).astype(bool)
    except Exception as exc:
        raise OperationError(f"decoding a 1-bit tile failed: {exc}") from exc


def _predictor(compression: str, dtype: str) -> int:
    """Horizontal differencing (2) for integers, floating point (3) for floats, with the
    lossless codecs: it is what makes photographs compress."""
    if compression not in ("zstd", "deflate", "lzw"):
        return 1
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return 3 if kind.itemsize in (2, 4, 8) else 1
    return 2  # every integer type, 8 to 64 bits (libtiff has both since 4.0)


def _to_uint8(dtype: str, top: tuple[int, str] | None, whole_range: bool = False) -> str:
    """The convert that makes an output of ``dtype`` uint8 for JPEG, and what to give it:
    a float page's ``in_range``; an integer page's, from ``top`` (the largest value its
    header says it holds: a 12-bit camera's 4095 in uint16; none when at least the type's
    maximum, or with ``whole_range``: a page the reader converted, whose values span the
    type), or else its values' range (or, of uint16, a
    ``percentile_stretch`` before the convert): without ``in_range`` it maps the type's
    whole range onto 0..255 (12-bit data in uint16 ends at 16)."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return '{"op": "convert", "dtype": "uint8", "in_range": [low, high]}'
    info = np.iinfo(kind)
    if whole_range or top is not None and top[0] >= info.max:  # (the default: the whole type)
        return '{"op": "convert", "dtype": "uint8"}'
    whole = (f'without "in_range" a convert maps {dtype}\'s whole range, '
             f"{info.min}..{info.max}, onto 0..255")
    if top is not None:
        value, said = top
        return (f'{{"op": "convert", "dtype": "uint8", "in_range": [0, {value}]}} (its {said} '
                f"says its values go up to {value}; {whole}, and {value} ends at "
                f"{round((value - info.min) / (info.max - info.min) * 255)})")
    docs = 'docs/manifest-and-ops.md, "Convert another sample type"'
    if dtype != "uint16":
        return ('{"op": "convert", "dtype": "uint8", "in_range": [low, high]} (low and high: '
                f"the range the page's values use; {whole}; {docs})")
    return ('{"op": "convert", "dtype": "uint8", "in_range": [low, high]} (low and high: the '
            f"range the page's values use, a 12-bit camera's [0, 4095]; {whole}, and 12-bit "
            'data ends at 16 or less), or put {"op": "percentile_stretch"} before a plain '
            '{"op": "convert", "dtype": "uint8"} (it spreads each page\'s own 1st to 99th '
            f"percentile over 0..65535; {docs})")


def output_problems(plan: JobPlan) -> list[Problem]:
    """Why the job's output pages cannot be written with its output options (each of its page:
    JPEG of 16-bit or 4-band pages...): PlanJob refuses the job, and ``tiffpipe estimate``
    does not cost it."""
    keeps = chain_keeps_values(plan.spec.ops)  # (else the page's header's top is not theirs)
    first_fix = auto_fix(plan)
    problems = []
    for page in plan.pages:
        options = page_options(plan.spec, page)  # (bilevel "auto": the page's own kind)
        top = (page.info.metadata or {}).get("max_sample") if keeps else None
        # (the reader's conversion, kept as its type: a 16-bit colormap's whole range)
        converted = bool(page.info.conversion) and page.out_dtype == page.info.dtype
        why = OutputEncoder(options, page.out_dtype, page.out_channels).check(
            page.info.photometric, tuple(top) if top else None, whole_range=converted,
            first_fix=first_fix)
        if why and page.out_dtype == page.info.dtype:  # the reader's type, not the chain's:
            why = explain_conversion(why, page.info)  # (an 8-bit palette made uint16 RGB)
        if not why and options.bilevel:
            why = _kept_nodata_problem(plan, page)
        if why:
            problems.append(Problem.of_page(page.info.index, why))
    return problems


def _kept_nodata_problem(plan: JobPlan, page: PagePlan) -> str | None:
    """Why a 1-bit output page cannot be written (None if it can): the chain keeps a no-data
    value that is neither 0 nor 255 (the input's GDAL_NODATA through ops that write the
    no-data pixels back, as ``otsu_threshold`` does, or a ``convert``'s ``nodata``), so
    its no-data pixels would hold it and fail the job when its tiles are encoded. (With
    ``bilevel`` "auto" such a page is not 1-bit: :func:`pipeline.core.plan.auto_one_bit`.)"""
    nodata = unheld_nodata(page.info, plan.spec.ops)
    if nodata is None:
        return None
    value = f"{nodata:g}"
    return (f"output_options.bilevel: the page's no-data value {value} (GDAL_NODATA) is kept "
            f"through the ops, so its no-data pixels hold {value}, and a 1-bit output holds "
            f'only 0 and 255; {BITS_FIX[0]} ({BITS_FIX[1]}), or drop "bilevel" for an 8-bit '
            "output")
