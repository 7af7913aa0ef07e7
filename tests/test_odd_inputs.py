"""Inputs that are not plain gray or RGB: bilevel, 2/4-bit gray, miniswhite, palette, float64,
and kinds that are refused. Each is either processed as the README documents (tiff_kinds.py
writes the rules out) or refused with a named error that says why; never wrong pixels.

The reader is checked window by window (the conversion happens per decoded segment, so split
stores converted pixels), and the whole pipeline in one ``tiffpipe run``."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from tiff_kinds import documented, palette_rgb

from pipeline import cli
from pipeline.adapters.tiff_read import get_page, open_tiff, page_info, read_infos, read_window
from pipeline.core.grid import Rect
from pipeline.errors import UnsupportedTiffError

pytestmark = pytest.mark.timeout(240)

H, W = 75, 93  # no segment size divides these
SIGMA = 1.5


def blocks(seed: int, dtype: str, top: int, shape: tuple[int, ...] = (H, W)) -> np.ndarray:
    """Smooth blocks plus noise in 0..top (so a blur has something to do)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    base = ((yy // 9 + xx // 11) * 7) % (top + 1)
    if len(shape) == 3:
        base = np.stack([(base + 5 * c) % (top + 1) for c in range(shape[2])], -1)
    noise = rng.integers(0, top + 1, shape)
    return np.where(rng.random(shape) < 0.2, noise, base).astype(dtype)


def _reverse_bits_of_segments(path: Path) -> None:
    """Store the page's segment bytes LSB-first (FillOrder 2), as old fax software did.

    tifffile will not write a FillOrder tag, so the file is written with CellLength (265) = 2
    in its place and the tag's code is patched to 266 (the IFD stays sorted)."""
    data = bytearray(path.read_bytes())
    table = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], np.uint8)
    with tifffile.TiffFile(path) as tf:
        segments = list(zip(tf.pages[0].dataoffsets, tf.pages[0].databytecounts, strict=True))
        entry = tf.pages[0].tags[265].offset
    assert data[entry:entry + 2] == (265).to_bytes(2, "little")
    data[entry:entry + 2] = (266).to_bytes(2, "little")
    for offset, count in segments:
        chunk = np.frombuffer(bytes(data[offset:offset + count]), np.uint8)
        data[offset:offset + count] = table[chunk].tobytes()
    path.write_bytes(bytes(data))


def _palette(seed: int, values: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb8 = rng.integers(0, 256, (3, 256))
    if values == "x257":
        return (rgb8 * 257).astype(np.uint16)
    if values == "8bit":
        return rgb8.astype(np.uint16)
    return rng.integers(0, 65536, (3, 256)).astype(np.uint16)


FILLORDER2 = [(265, "H", 1, 2, True)]  # patched to 266

#: name -> writer of the file at the given path
WRITERS: dict[str, Callable[[Path], None]] = {
    "bilevel_black_strips_raw": lambda p: tifffile.imwrite(
        p, blocks(1, "uint8", 1).astype(bool), photometric="minisblack", rowsperstrip=16,
        metadata=None),
    "bilevel_white_tiles_deflate": lambda p: tifffile.imwrite(
        p, blocks(2, "uint8", 1).astype(bool), photometric="miniswhite", tile=(32, 32),
        compression="deflate", metadata=None),
    "bilevel_white_strips_packbits_fillorder2": lambda p: (tifffile.imwrite(
        p, blocks(3, "uint8", 1).astype(bool), photometric="miniswhite", rowsperstrip=10,
        compression="packbits", metadata=None, extratags=FILLORDER2),
        _reverse_bits_of_segments(p)),
    "bilevel_black_raw_fillorder2": lambda p: (tifffile.imwrite(
        p, blocks(4, "uint8", 1).astype(bool), photometric="minisblack", rowsperstrip=7,
        metadata=None, extratags=FILLORDER2), _reverse_bits_of_segments(p)),
    "gray4_raw": lambda p: tifffile.imwrite(
        p, blocks(5, "uint8", 15), bitspersample=4, photometric="minisblack", rowsperstrip=8,
        metadata=None),
    "gray2_white_raw": lambda p: tifffile.imwrite(
        p, blocks(6, "uint8", 3), bitspersample=2, photometric="miniswhite", rowsperstrip=9,
        metadata=None),
    "palette8_x257": lambda p: tifffile.imwrite(
        p, blocks(7, "uint8", 255), photometric="palette", colormap=_palette(7, "x257"),
        tile=(32, 32), compression="zstd", metadata=None),
    "palette8_8bit_colormap": lambda p: tifffile.imwrite(
        p, blocks(8, "uint8", 255), photometric="palette", colormap=_palette(8, "8bit"),
        rowsperstrip=11, compression="lzw", metadata=None),
    "palette8_16bit_colormap": lambda p: tifffile.imwrite(
        p, blocks(9, "uint8", 255), photometric="palette", colormap=_palette(9, "16bit"),
        rowsperstrip=16, compression="deflate", metadata=None),
    # tifffile writes a 256-entry colormap for 4-bit indices: the first 16 entries count
    "palette4_long_colormap": lambda p: tifffile.imwrite(
        p, blocks(10, "uint8", 15), bitspersample=4, photometric="palette",
        colormap=_palette(10, "16bit"), rowsperstrip=13, metadata=None),
    "palette1_bool": lambda p: tifffile.imwrite(
        p, blocks(11, "uint8", 1), bitspersample=1, photometric="palette",
        colormap=_palette(11, "x257"), rowsperstrip=32, metadata=None),
    "miniswhite_u8_lzw": lambda p: tifffile.imwrite(
        p, blocks(12, "uint8", 255), photometric="miniswhite", rowsperstrip=12,
        compression="lzw", metadata=None),
    "miniswhite_u16_alpha_separate": lambda p: tifffile.imwrite(
        p, np.moveaxis(blocks(13, "uint16", 65535, (H, W, 2)), -1, 0),
        photometric="miniswhite", planarconfig="separate", extrasamples=["unassalpha"],
        tile=(16, 32), compression="zstd", metadata=None),
    "miniswhite_u16_alpha_contig": lambda p: tifffile.imwrite(
        p, blocks(14, "uint16", 65535, (H, W, 2)), photometric="miniswhite",
        planarconfig="contig", extrasamples=["unassalpha"], rowsperstrip=20, metadata=None),
    "float64_tiles": lambda p: tifffile.imwrite(
        p, blocks(15, "float64", 1000) / 1000.0, photometric="minisblack", tile=(32, 32),
        compression="zlib", predictor=True, metadata=None),
    # refused kinds
    # (CMYK is read, tests/test_cmyk.py; other ink sets are not)
    "separated_inkset2": lambda p: tifffile.imwrite(
        p, blocks(16, "uint8", 255, (H, W, 4)), photometric="separated", metadata=None,
        extratags=[(332, 3, 1, (2,), True)]),
    "ycbcr_uncompressed": lambda p: tifffile.imwrite(
        p, blocks(17, "uint8", 255, (H, W, 3)), photometric="ycbcr", subsampling=(1, 1),
        metadata=None),
    "miniswhite_float32": lambda p: tifffile.imwrite(
        p, blocks(18, "float32", 1), photometric="miniswhite", metadata=None),
    "miniswhite_int16": lambda p: tifffile.imwrite(
        p, blocks(19, "int16", 1000), photometric="miniswhite", metadata=None),
    "gray12": lambda p: tifffile.imwrite(
        p, blocks(20, "uint16", 4095), bitspersample=12, photometric="minisblack",
        metadata=None),
    # complex samples (SampleFormat COMPLEXIEEEFP: SAR and FFT output)
    "complex64": lambda p: tifffile.imwrite(
        p, (blocks(21, "float32", 100) + 1j * blocks(22, "float32", 100)).astype(np.complex64),
        photometric="minisblack", metadata=None),
    "complex128_tiles": lambda p: tifffile.imwrite(
        p, (blocks(23, "float64", 100) - 1j).astype(np.complex128), photometric="minisblack",
        tile=(32, 32), compression="zlib", metadata=None),
}
#: name -> words the refusal names (besides the file and the page)
REFUSED = {
    "separated_inkset2": ("SEPARATED", "CMYK", "InkSet 2"),
    "ycbcr_uncompressed": ("YCBCR", "JPEG"),
    "miniswhite_float32": ("miniswhite", "float32", "white"),
    "miniswhite_int16": ("miniswhite", "int16"),
    "gray12": ("12-bit",),
    "complex64": ("complex", "complex64", "magnitude", "float32"),
    "complex128_tiles": ("complex", "complex128", "magnitude", "float32"),
}
CONVERTED = [n for n in WRITERS if n not in REFUSED]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("odd")
    out = {}
    for name, write in WRITERS.items():
        path = folder / f"{name}.tif"
        write(path)
        out[name] = path
    return out


def _page(path: Path) -> tifffile.TiffPage:
    return tifffile.TiffFile(path).pages[0]


def test_the_crafted_files_are_what_their_names_say(files):
    assert _page(files["bilevel_white_strips_packbits_fillorder2"]).fillorder == 2
    assert _page(files["bilevel_black_raw_fillorder2"]).fillorder == 2
    assert _page(files["gray4_raw"]).bitspersample == 4
    assert _page(files["palette4_long_colormap"]).colormap.shape == (3, 256)
    # tifffile applies the FillOrder: its read is the picture that was written
    page = _page(files["bilevel_black_raw_fillorder2"])
    assert np.array_equal(page.asarray(), blocks(4, "uint8", 1).astype(bool))


def _windows() -> list[Rect]:
    rng = np.random.default_rng(0)
    fixed = [Rect(0, 0, H, W), Rect(0, 0, 1, 1), Rect(H - 1, W - 1, H, W), Rect(5, 3, H - 7, W - 2),
             Rect(15, 30, 18, 35), Rect(31, 0, 33, W), Rect(0, 31, H, 34)]
    rand = []
    for _ in range(10):
        y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        rand.append(Rect(y0, x0, int(rng.integers(y0 + 1, H + 1)),
                         int(rng.integers(x0 + 1, W + 1))))
    return fixed + rand


@pytest.mark.parametrize("keep", [False, True], ids=["convert", "keep_palette"])
@pytest.mark.parametrize("name", CONVERTED)
def test_reader_windows_equal_the_documented_conversion(files, name, keep):
    url = str(files[name])
    with open_tiff(url) as tf:
        page = get_page(tf, url, 0)
        want = documented(page, keep)
        info = page_info(page, url, 0, keep)
        assert (info.height, info.width) == (H, W)
        assert info.dtype == want.dtype.name
        assert info.channels == (1 if want.ndim == 2 else want.shape[2])
        palette = keep and int(page.photometric) == 3
        assert info.photometric == ("palette" if palette else
                                    "rgb" if info.channels >= 3 else "minisblack")
        for rect in _windows():
            got = read_window(tf, page, url, 0, rect, keep)
            assert got.dtype == want.dtype, rect
            assert np.array_equal(got, want[rect.y0:rect.y1, rect.x0:rect.x1]), (rect, name)


def test_documented_conversions_mean_what_the_readme_says(files):
    """Spot checks of the rules themselves, from the written arrays."""
    bw = blocks(2, "uint8", 1)  # 1 = black in a miniswhite file
    assert np.array_equal(documented(_page(files["bilevel_white_tiles_deflate"])),
                          np.where(bw == 1, 0, 255))
    assert np.array_equal(documented(_page(files["gray4_raw"])), blocks(5, "uint8", 15) * 17)
    x257 = documented(_page(files["palette8_x257"]))
    assert x257.dtype == np.uint8
    assert np.array_equal(x257, (_palette(7, "x257") // 257).T[blocks(7, "uint8", 255)])
    assert documented(_page(files["palette8_8bit_colormap"])).dtype == np.uint8
    assert documented(_page(files["palette8_16bit_colormap"])).dtype == np.uint16
    two = blocks(13, "uint16", 65535, (H, W, 2))
    got = documented(_page(files["miniswhite_u16_alpha_separate"]))
    assert np.array_equal(got[..., 0], 65535 - two[..., 0])
    assert np.array_equal(got[..., 1], two[..., 1])  # alpha is not inverted
    assert palette_rgb(_palette(8, "8bit")).dtype == np.uint8


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_kinds_say_why(files, name):
    url = str(files[name])
    with pytest.raises(UnsupportedTiffError) as caught:
        read_infos(url, None)
    message = str(caught.value)
    assert url in message and "page 0" in message
    for word in REFUSED[name]:
        assert word in message, (word, message)


@pytest.mark.parametrize("name", list(REFUSED))
def test_preview_refuses_them_with_the_named_error(files, name, tmp_path):
    """``tiffpipe preview`` of a refused kind: exit 1 with the same named error, no
    traceback and no PNG."""
    png = tmp_path / "p.png"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["preview", str(files[name]), "-o", str(png)])
    message = err.getvalue()
    assert code == 1 and "UnsupportedTiffError" in message, message
    assert str(files[name]) in message and "page 0" in message
    for word in REFUSED[name]:
        assert word in message, (word, message)
    assert not png.exists()


# --- through the whole pipeline -----------------------------------------------------------

BLUR = [{"op": "gaussian_blur", "sigma": SIGMA}]
#: job name -> (file, job fields, expected: "ok" or (error type, words))
JOBS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "bilevel_copy": ("bilevel_white_tiles_deflate", {}, "ok"),
    "bilevel_blur": ("bilevel_white_strips_packbits_fillorder2", {"ops": BLUR}, "ok"),
    "bilevel_raw_blur": ("bilevel_black_raw_fillorder2", {"ops": BLUR}, "ok"),
    "gray4_blur": ("gray4_raw", {"ops": BLUR}, "ok"),
    "gray2_white_copy": ("gray2_white_raw", {}, "ok"),
    "palette_kept": ("palette8_16bit_colormap", {}, "ok"),
    "palette4_kept": ("palette4_long_colormap", {}, "ok"),
    "palette1_kept": ("palette1_bool", {}, "ok"),
    "palette_blur": ("palette8_16bit_colormap", {"ops": BLUR}, "ok"),
    "palette_x257_blur": ("palette8_x257", {"ops": BLUR}, "ok"),
    "palette_to_gray": ("palette8_8bit_colormap", {"ops": [{"op": "to_gray"}]}, "ok"),
    "palette_jpeg": ("palette8_x257", {"output_options": {"compression": "jpeg"}}, "ok"),
    "miniswhite_copy": ("miniswhite_u8_lzw", {}, "ok"),
    "miniswhite_alpha_blur": ("miniswhite_u16_alpha_separate", {"ops": BLUR}, "ok"),
    "miniswhite_alpha_contig_blur": ("miniswhite_u16_alpha_contig", {"ops": BLUR}, "ok"),
    "float64_copy": ("float64_tiles", {}, "ok"),
    "float64_blur": ("float64_tiles", {"ops": BLUR}, "ok"),  # OpenCV blurs float64 itself
    "inkset2_copy": ("separated_inkset2", {},
                     ("UnsupportedTiffError", REFUSED["separated_inkset2"])),
    "ycbcr_copy": ("ycbcr_uncompressed", {},
                   ("UnsupportedTiffError", REFUSED["ycbcr_uncompressed"])),
    "gray12_blur": ("gray12", {"ops": BLUR}, ("UnsupportedTiffError", REFUSED["gray12"])),
    # an 8-bit palette whose colormap is 16-bit becomes uint16 RGB: the refusal says so
    "palette_canny": ("palette8_16bit_colormap",
                      {"ops": [{"op": "canny", "low": 50, "high": 100}]},
                      ("OperationError", ("canny needs uint8 pixels, the page has uint16",
                                          ("the page is 8-bit palette, converted to uint16 RGB "
                                           "through its colormap"), "8-bit colormap"))),
    # ... and so do the output options that need uint8 (libtiff's palette-1c-8b.tiff)
    "palette_jpeg16": ("palette8_16bit_colormap", {"output_options": {"compression": "jpeg"}},
                       ("OperationError", ("jpeg output needs uint8 pixels, the output is uint16",
                                           ("the page is 8-bit palette, converted to uint16 "
                                            "RGB through its colormap"),
                                           # (the plain convert: a colormap spans uint16)
                                           ('end the ops with {"op": "convert", "dtype": '
                                            '"uint8"}, or choose')))),
    "palette_bilevel16": ("palette8_16bit_colormap",
                          {"ops": [{"op": "threshold", "value": 30000}],
                           "output_options": {"bilevel": True}},
                          ("OperationError", ("the output is uint16 with 3 bands",
                                              "converted to uint16 RGB through its colormap"))),
    "complex_copy": ("complex64", {}, ("UnsupportedTiffError", REFUSED["complex64"])),
    "complex_blur": ("complex128_tiles", {"ops": BLUR},
                     ("UnsupportedTiffError", REFUSED["complex128_tiles"])),
}


@pytest.fixture(scope="module")
def run(files, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("odd_run")
    jobs = [{"input": str(files[src]), "output": str(root / "out" / f"{name}.tif"), **fields}
            for name, (src, fields, _) in JOBS.items()]
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 64, "output_options": {"tile": 16}},
                                    "jobs": jobs}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet"])
    assert code == 1, err.getvalue()  # some jobs must fail
    report = json.loads((root / "m.report.json").read_text())
    return {name: job for name, job in zip(JOBS, report["jobs"], strict=True)}


def _out(job: dict[str, Any]) -> tifffile.TiffPage:
    return tifffile.TiffFile(job["output"]).pages[0]


@pytest.mark.parametrize("name", [n for n, (_, _, e) in JOBS.items() if e == "ok"])
def test_converted_jobs_give_the_documented_pixels(run, files, name):
    src, fields, _ = JOBS[name]
    job = run[name]
    assert job["status"] == "SUCCEEDED", json.dumps(job, indent=1)
    ops = fields.get("ops", [])
    compression = fields.get("output_options", {}).get("compression", "zstd")
    keep = not ops and compression != "jpeg"
    page = _page(files[src])
    want = documented(page, keep)
    if ops == BLUR:
        want = cv2.GaussianBlur(want, (0, 0), SIGMA)
    elif ops:
        want = cv2.cvtColor(want, cv2.COLOR_RGB2GRAY)
    out = _out(job)
    got = out.asarray()
    if out.planarconfig == 2 and out.samplesperpixel > 1:
        got = np.moveaxis(got, 0, -1)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype)
    if compression == "jpeg":  # lossy: as tifffile encodes the documented RGB pixels
        ref = io.BytesIO()
        tifffile.imwrite(ref, want, photometric="rgb", tile=(16, 16), compression="jpeg",
                         compressionargs={"level": 90}, subsampling=(2, 2), metadata=None)
        ref.seek(0)
        assert np.abs(got.astype(int) - tifffile.imread(ref)).mean() < 1
    else:
        assert np.array_equal(got, want), f"max diff {np.abs(got.astype(float) - want).max()}"
    # the photometric says how to show the pixels: the same picture as the input
    if keep and int(page.photometric) == 3:
        assert out.photometric == tifffile.PHOTOMETRIC.PALETTE
        n = 2**page.bitspersample
        assert np.array_equal(out.colormap[:, :n], page.colormap.reshape(3, -1)[:, :n])
    elif got.ndim == 3 and got.shape[2] >= 3:
        assert out.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    else:
        assert out.photometric == tifffile.PHOTOMETRIC.MINISBLACK


def test_miniswhite_alpha_keeps_its_extra_sample(run):
    out = _out(run["miniswhite_alpha_blur"])
    assert out.extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,)


@pytest.mark.parametrize("name", [n for n, (_, _, e) in JOBS.items() if e != "ok"])
def test_refused_jobs_fail_with_a_named_error(run, files, name):
    src, _, (error, words) = JOBS[name]
    job = run[name]
    assert job["status"] == "FAILED", json.dumps(job, indent=1)
    assert job["error"]["type"] == error
    message = job["error"]["message"]
    assert str(files[src]) in message
    for word in words:
        assert word in message, (word, message)
    assert not Path(job["output"]).exists()


def test_a_jpeg_output_of_a_converted_page_is_told_the_plain_convert():
    """``whole_range``: the reader converted the page to its type (a 16-bit colormap's RGB),
    so its values span the type whatever its header says (``top``, a 12-bit camera's 4095):
    the convert JPEG is told is the plain one. Without it, the header's top decides."""
    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.models import OutputOptions

    encoder = OutputEncoder(OutputOptions(compression="jpeg"), "uint16", 1)
    plain = ('jpeg output needs uint8 pixels, the output is uint16; end the ops with '
             '{"op": "convert", "dtype": "uint8"}, or choose zstd, deflate, lzw or none')
    twelve = (4095, "BitsPerSample")
    assert encoder.check("rgb", twelve, whole_range=True) == plain
    assert encoder.check("rgb", None, whole_range=True) == plain
    assert '"in_range": [0, 4095]' in encoder.check("rgb", twelve)
