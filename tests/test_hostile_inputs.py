"""Hostile inputs an uploader controls (a scan processes every new TIFF under a prefix):
decompression bombs in a segment's own stream, refused before anything they declare is
allocated, naming the file, the page and the segment (docs/inputs.md, "Hostile inputs").

The files are crafted small: a valid page whose tile 0 is replaced by a stream that declares
far more pixels than the tile (a LERC blob of a constant 4,096 x 4,096 image is 70 bytes).
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile

from pipeline.adapters.tiff_read import get_page, open_tiff, read_window
from pipeline.core.grid import Rect
from pipeline.core.segment_header import declared, lerc_declared
from pipeline.errors import CorruptTiffError

T = 64  # the crafted pages' tile
BOMB = 4096  # the side of the image a bomb's stream declares (64 MiB of float32 values)
#: the most a refused read may allocate (a tile is 16 KiB; a bomb's image 16-64 MiB)
MOST = 4 * 2**20


def _patch_tile(path: Path, blob: bytes) -> None:
    """Tile 0 of the file's first page (a classic TIFF) holds ``blob``, appended to the
    file; its TileOffsets and TileByteCounts rewritten as LONG arrays after it."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        order = tf.byteorder
        entries = [page.tags[324].offset, page.tags[325].offset]
        values = [list(page.dataoffsets), list(page.databytecounts)]
    with open(path, "r+b") as fh:
        at = fh.seek(0, 2)
        fh.write(blob)
        values[0][0], values[1][0] = at, len(blob)
        for entry, tag, array in zip(entries, (324, 325), values, strict=True):
            where = fh.seek(0, 2)
            fh.write(struct.pack(f"{order}{len(array)}I", *array))
            fh.seek(entry)
            fh.write(struct.pack(f"{order}HHII", tag, 4, len(array), where))


def _bomb_file(tmp_path: Path, compression: Any, dtype: str, channels: int,
               blob: bytes) -> Path:
    path = tmp_path / "bomb.tif"
    shape = (2 * T, 2 * T) + ((channels,) if channels > 1 else ())
    tifffile.imwrite(path, np.zeros(shape, dtype), tile=(T, T), compression=compression,
                     metadata=None)
    _patch_tile(path, blob)
    return path


def _read_peak(path: Path) -> tuple[BaseException | None, int]:
    """The error of reading tile 0 of the file's first page, and the most memory it took."""
    tracemalloc.start()
    try:
        with open_tiff(str(path)) as tf:
            page = get_page(tf, str(path), 0)
            read_window(tf, page, str(path), 0, Rect(0, 0, T, T))
    except Exception as exc:  # noqa: BLE001 - returned to the test
        error: BaseException | None = exc
    else:
        error = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def _constant(shape: tuple[int, ...], dtype: str = "uint8") -> np.ndarray:
    return np.zeros(shape, dtype)


#: id -> (TIFF compression, sample type, samples, the bomb's stream); each declares BOMB x BOMB
BOMBS: dict[str, tuple[Any, str, int, Callable[[], bytes]]] = {
    "lerc": ("lerc", "float32", 1,
             lambda: imagecodecs.lerc_encode(_constant((BOMB, BOMB), "float32"))),
    "lerc-zstd-wrapped": ("lerc", "float32", 1, lambda: imagecodecs.zstd_encode(
        imagecodecs.lerc_encode(_constant((BOMB, BOMB), "float32")))),
    "lerc-deflate-wrapped": ("lerc", "float32", 1, lambda: imagecodecs.zlib_encode(
        imagecodecs.lerc_encode(_constant((BOMB, BOMB), "float32")))),
    # a wrapper that inflates beyond what any LERC blob of the tile can be
    "lerc-zstd-inflating": ("lerc", "float32", 1,
                            lambda: imagecodecs.zstd_encode(bytes(16 * 2**20))),
    "jpeg": ("jpeg", "uint8", 1, lambda: imagecodecs.jpeg8_encode(_constant((BOMB, BOMB)))),
    "png": (34933, "uint8", 3, lambda: imagecodecs.png_encode(_constant((BOMB, BOMB, 3)),
                                                               level=9)),
    "webp": ("webp", "uint8", 3, lambda: imagecodecs.webp_encode(_constant((BOMB, BOMB, 3)),
                                                                  lossless=True)),
    "jpeg2000": ("jpeg2000", "uint8", 1,
                 lambda: imagecodecs.jpeg2k_encode(_constant((BOMB, BOMB)))),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_segment_declaring_more_than_its_tile_is_refused_before_decoding(tmp_path, name):
    """A tile whose stream declares 4,096 x 4,096 pixels (a few hundred bytes to a few KB)
    fails the read with a CorruptTiffError naming the file, page and segment, having
    allocated nothing like what it declares (before: LERC allocated all of it, 1.6 GB for a
    70-byte blob of 20,000 x 20,000, and the image codecs too before tifffile found that
    it did not fit the tile)."""
    compression, dtype, channels, make = BOMBS[name]
    blob = make()
    assert len(blob) < 300_000
    path = _bomb_file(tmp_path, compression, dtype, channels, blob)
    error, peak = _read_peak(path)
    assert isinstance(error, CorruptTiffError), error
    message = str(error)
    assert f"{path}: page 0: segment 0" in message
    if name != "lerc-zstd-inflating":
        assert "declares" in message and f"{T} x {T} pixels" in message
    assert peak < MOST, f"{peak / 2**20:.0f} MiB allocated to refuse {name}"


@pytest.mark.parametrize("name, kwargs", [
    ("lerc-tiles", {"compression": "lerc", "tile": (32, 48)}),
    ("lerc-zstd-strips", {"compression": "lerc", "compressionargs": {"compression": "zstd"},
                          "rowsperstrip": 7}),
    ("lerc-deflate-separate", {"compression": "lerc",
                               "compressionargs": {"compression": "deflate"},
                               "tile": (32, 32), "planarconfig": "separate"}),
    ("jpeg-strips", {"compression": "jpeg", "rowsperstrip": 16}),
    ("jpeg-tiles", {"compression": "jpeg", "tile": (32, 48)}),
    ("png-strips", {"compression": 34933, "rowsperstrip": 7}),
    ("webp-tiles", {"compression": "webp", "tile": (32, 32)}),
    ("jpeg2000-tiles", {"compression": "jpeg2000", "tile": (32, 32)}),
    ("jpegxl-strips", {"compression": "jpegxl", "rowsperstrip": 16}),
])
def test_segments_that_fit_their_tile_read_as_before(tmp_path, name, kwargs):
    """The check passes every stream of a well-formed file, the last strip's shorter one
    and an edge tile's too: the page reads as tifffile reads it."""
    rng = np.random.default_rng(5)
    dtype = "float32" if name.startswith("lerc") else "uint8"
    page = (rng.random((75, 83, 3)) * 200).astype(dtype)
    path = tmp_path / f"{name}.tif"
    separate = kwargs.get("planarconfig") == "separate"
    tifffile.imwrite(path, np.moveaxis(page, -1, 0) if separate else page, photometric="rgb",
                     metadata=None, **kwargs)
    expected = tifffile.imread(path)
    if separate:
        expected = np.moveaxis(expected, 0, -1)
    with open_tiff(str(path)) as tf:
        got = read_window(tf, get_page(tf, str(path), 0), str(path), 0, Rect(0, 0, 75, 83))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(1, 1), (9, 7), (37, 1001), (256, 512), (264, 8)])
def test_declared_sizes_are_the_encoders(shape):
    """Each header reader gives the size the stream was encoded with."""
    gray = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    rgb = np.dstack([gray] * 3)
    for code, blob in ((7, imagecodecs.jpeg8_encode(rgb)),
                       (7, imagecodecs.jpeg8_encode(gray, lossless=True)),
                       (34933, imagecodecs.png_encode(rgb)),
                       (50001, imagecodecs.webp_encode(rgb)),
                       (50001, imagecodecs.webp_encode(rgb, lossless=True)),
                       (34712, imagecodecs.jpeg2k_encode(gray)),
                       (34712, imagecodecs.jpeg2k_encode(rgb, codecformat="J2K")),
                       (50002, imagecodecs.jpegxl_encode(gray))):
        said = declared(code, blob)
        assert said is not None and said[:2] == shape, (code, said)
    assert lerc_declared(imagecodecs.lerc_encode(rgb.astype("float32")))[0] == rgb.size
    assert declared(7, b"\xff\xd8\xff") is None  # a header cut short: the codec says so


def _classic_tiff(path: Path, entries: list[tuple[int, int, int, int]]) -> None:
    """A little-endian TIFF of one IFD of ``entries`` (tag, type SHORT 3 or LONG 4, count 1,
    value), written by hand: what no writer would write."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        ifd += struct.pack("<HHIH2x" if kind == 3 else "<HHII", tag, kind, count, value)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0))


def test_a_page_whose_rows_are_too_wide_to_read_is_refused_when_planned(tmp_path, capsys):
    """A 134-byte file declaring one sparse uncompressed strip 1,000,000 px wide of 100
    float64 samples: a row is 763 MiB, and a tile reads whole rows. Refused by the page's
    info (PlanJob, estimate, preview) naming the page and the size (before: planned, then
    every unit failed with an OutOfMemoryError saying the input was not at fault, and
    ``tiffpipe preview`` ran for minutes at 1.6 GB)."""
    from pipeline import cli
    from pipeline.adapters.tiff_read import read_infos
    from pipeline.errors import UnsupportedTiffError

    path = tmp_path / "wide.tif"
    side = 10**6
    _classic_tiff(path, [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 64), (259, 3, 1, 1),
                         (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 100), (278, 4, 1, side),
                         (279, 4, 1, 0), (339, 3, 1, 3)])
    assert path.stat().st_size < 200
    with pytest.raises(UnsupportedTiffError, match=rf"{path}: page 0: a row of its "
                       r"uncompressed strips is 763 MiB .* re-save the file tiled"):
        read_infos(str(path), None)
    assert cli.main(["preview", str(path), "-o", str(tmp_path / "p.png")]) == 1
    assert "UnsupportedTiffError" in capsys.readouterr().err
    # a row that fits 64 times is read by rows as before, however many rows the strip has
    narrow = tmp_path / "narrow.tif"
    tifffile.imwrite(narrow, np.zeros((300, 2000, 3), np.uint8), rowsperstrip=300,
                     photometric="rgb")
    [info] = read_infos(str(narrow), None)
    assert info.segment_rows == 300
