"""Old-style JPEG (OJPEG) TIFFs written here: nothing writes OJPEG any more (libtiff only
reads it), so these are made as 1990s writers did in their simplest form: each page's JPEG
stream (libjpeg-turbo through imagecodecs) stored whole, JPEGInterchangeFormat and the
page's single strip both pointing at it, YCbCr for colour pages. (The libtiff corpus has the
other form: tables in JPEGQTables, JPEGDCTables, JPEGACTables and raw scan data.)"""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np

SHORT, LONG, RATIONAL = 3, 4, 5


def _entry(order: str, code: int, kind: int, values: list[int]
           ) -> tuple[int, int, int, bytes]:
    fmt = {SHORT: "H", LONG: "I", RATIONAL: "I"}[kind]
    count = len(values) // 2 if kind == RATIONAL else len(values)
    return code, kind, count, struct.pack(f"{order}{len(values)}{fmt}", *values)


def write_ojpeg(path: Path | str, pages: list[np.ndarray], quality: int = 90,
                truncate_last: int = 0, byteorder: str = "<") -> list[bytes]:
    """A TIFF (``byteorder`` "<": II, ">": MM) of ``pages`` (uint8, (h, w) gray or (h, w, 3)
    RGB) as OJPEG: the IFDs first, then the pages' JPEG streams in page order; returns each
    page's stream.
    ``truncate_last``: that many bytes are cut from the end of the file, the end of the last
    page's stream (a damaged copy)."""
    streams = [imagecodecs.jpeg8_encode(px, level=quality) for px in pages]
    o = byteorder
    tables = []
    for px, stream in zip(pages, streams, strict=True):
        height, width = px.shape[:2]
        rgb = px.ndim == 3
        entries = [
            _entry(o, 256, LONG, [width]), _entry(o, 257, LONG, [height]),
            _entry(o, 258, SHORT, [8, 8, 8] if rgb else [8]), _entry(o, 259, SHORT, [6]),
            _entry(o, 262, SHORT, [6 if rgb else 1]), _entry(o, 273, LONG, [0]),
            _entry(o, 277, SHORT, [3 if rgb else 1]), _entry(o, 278, LONG, [height]),
            _entry(o, 279, LONG, [len(stream)]), _entry(o, 282, RATIONAL, [300, 1]),
            _entry(o, 283, RATIONAL, [300, 1]), _entry(o, 296, SHORT, [2]),
            _entry(o, 512, SHORT, [1]), _entry(o, 513, LONG, [0]),
            _entry(o, 514, LONG, [len(stream)]),
        ]
        if rgb:
            entries.append(_entry(o, 530, SHORT, [2, 2]))
        tables.append(sorted(entries))
    sizes = [2 + 12 * len(t) + 4 + sum(len(raw) for *_, raw in t if len(raw) > 4)
             for t in tables]
    data_at = 8 + sum(sizes)
    out = bytearray((b"II*\0" if o == "<" else b"MM\0*") + struct.pack(o + "I", 8))
    for i, (entries, stream) in enumerate(zip(tables, streams, strict=True)):
        at = data_at + sum(len(s) for s in streams[:i])  # this page's stream
        ifd_at = len(out)
        values_at = ifd_at + 2 + 12 * len(entries) + 4
        ifd, values = bytearray(struct.pack(o + "H", len(entries))), bytearray()
        for code, kind, count, raw in entries:
            if code in (273, 513):
                raw = struct.pack(o + "I", at)
            if len(raw) > 4:
                ifd += struct.pack(o + "HHII", code, kind, count, values_at + len(values))
                values += raw
            else:
                ifd += struct.pack(o + "HHI", code, kind, count) + raw.ljust(4, b"\0")
        following = ifd_at + sizes[i] if i + 1 < len(pages) else 0
        out += ifd + struct.pack(o + "I", following) + values
    assert len(out) == data_at
    for stream in streams:
        out += stream
    Path(path).write_bytes(bytes(out[:len(out) - truncate_last]))
    return streams
