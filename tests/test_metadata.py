"""Metadata carried from input to output: resolution, ICC profile, description, date, page
names, GeoTIFF, extra samples, page order; Software set to tiffpipe. Real files written by
tifffile go through one ``tiffpipe run``; the output's tags are read back with tifffile."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from pipeline import __version__, cli
from pipeline.adapters.metadata import ICC_MAX, VALUE_MAX, output_tags
from pipeline.adapters.tiff_read import read_infos
from pipeline.core.models import PageInfo

pytestmark = pytest.mark.timeout(240)

SIGMA = 1.5
DATETIME = "2024:05:06 07:08:09"
RESUNIT_INCH, RESUNIT_CM = 2, 3
#: GeoTIFF (and GDAL nodata) tags of a UTM scene: code -> (tifffile dtype, count, value)
GEO: dict[int, tuple[str, int, Any]] = {
    33550: ("d", 3, (30.0, 30.0, 0.0)),
    33922: ("d", 6, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0)),
    34735: ("H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611)),
    34736: ("d", 2, (6378137.0, 298.257223563)),
    34737: ("s", 0, "WGS 84 / UTM zone 11N|"),
    42113: ("s", 0, "-9999"),
}
XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
       b'<?xpacket end="w"?>')


def fake_icc(space: bytes, size: int = 3000) -> bytes:
    """An ICC profile header (128 bytes: size, class, colour space, 'acsp') plus filler."""
    data = bytearray(size)
    data[0:4] = size.to_bytes(4, "big")
    data[8:12] = b"\x02\x10\x00\x00"
    data[12:16], data[16:20], data[20:24], data[36:40] = b"mntr", space, b"XYZ ", b"acsp"
    data[128:] = bytes(range(256)) * ((size - 128) // 256) + bytes((size - 128) % 256)
    return bytes(data)


ICC_RGB, ICC_GRAY = fake_icc(b"RGB "), fake_icc(b"GRAY", 700)


def pattern(height: int, width: int, channels: int, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.sin(yy / 9.0) + np.cos(xx / 13.0) + 2) / 4
    if channels > 1:
        base = np.stack([np.roll(base, 7 * c, axis=1) for c in range(channels)], -1)
    noise = rng.normal(0, 0.05, base.shape)
    img = np.clip(base + noise, 0, 1)
    if np.dtype(dtype).kind == "f":
        return img.astype(dtype)
    return (img * np.iinfo(dtype).max).round().astype(dtype)


def ascii_tag(code: int, text: str | bytes) -> tuple[int, str, int, Any, bool]:
    return (code, "s", 0, text, True)


def _write_inputs(inp: Path) -> None:
    with tifffile.TiffWriter(inp / "rgb.tif") as tw:
        tw.write(pattern(150, 173, 3, "uint8", 1), photometric="rgb", tile=(64, 64),
                 compression="zstd", metadata=None, resolution=((300, 1), (300, 1)),
                 resolutionunit=RESUNIT_INCH, description="Front cover, scanned at 300 dpi",
                 datetime=DATETIME, iccprofile=ICC_RGB, software="ScanMaster 9",
                 extratags=[ascii_tag(285, "front"), ascii_tag(315, "A. Scanner"),
                            ascii_tag(33432, "(c) 2024 tiffpipe tests"),
                            (274, "H", 1, 1, True)])
        tw.write(pattern(100, 120, 3, "uint8", 2), photometric="rgb", rowsperstrip=16,
                 compression="deflate", metadata=None, resolution=((1181, 10), (1181, 10)),
                 resolutionunit=RESUNIT_CM, description="R\u00fcckseite \u2013 back".encode(),
                 extratags=[ascii_tag(285, "back")])
    geo = [(code, kind, count, value, True) for code, (kind, count, value) in GEO.items()]
    tifffile.imwrite(inp / "geo_be.tif", pattern(130, 140, 1, "float32", 3), byteorder=">",
                     photometric="minisblack", rowsperstrip=20, compression="zlib",
                     metadata=None, extratags=[*geo, (700, "B", len(XMP), XMP, True)])
    tifffile.imwrite(inp / "rgba.tif", pattern(90, 100, 4, "uint8", 4), photometric="rgb",
                     extrasamples=["assocalpha"], tile=(32, 32), metadata=None,
                     iccprofile=ICC_RGB)
    tifffile.imwrite(inp / "imagej.tif", pattern(80, 96, 1, "uint8", 5), imagej=True,
                     resolution=(2.5, 2.5), metadata={"unit": "um"})
    with tifffile.TiffWriter(inp / "svs.tif") as tw:  # an Aperio slide and its macro image
        tw.write(pattern(96, 128, 3, "uint8", 7), photometric="rgb", tile=(32, 32),
                 metadata=None, description=APERIO, resolution=((20040, 1), (20040, 1)),
                 resolutionunit=RESUNIT_CM)
        tw.write(pattern(40, 100, 3, "uint8", 8), photometric="rgb", rowsperstrip=8,
                 metadata=None, subfiletype=9, description="Aperio Image Library v12 macro")
    with tifffile.TiffWriter(inp / "svs_scanner.tif") as tw:  # no pixel size but its MPP
        tw.write(pattern(96, 128, 3, "uint8", 11), photometric="rgb", tile=(32, 32),
                 metadata=None, description=APERIO_SCANNER)
        tw.write(pattern(48, 64, 3, "uint8", 12), photometric="rgb", tile=(16, 16),
                 metadata=None, description=APERIO_SCANNER_LEVEL)
    # as some Aperio scanners write a slide: no resolution tags at all, MPP alone
    tifffile.imwrite(inp / "svs_bare.tif", pattern(96, 128, 3, "uint8", 13), photometric="rgb",
                     tile=(32, 32), metadata=None, description=APERIO_SCANNER)
    _without_resolution(inp / "svs_bare.tif")
    tifffile.imwrite(inp / "tiny.tif", pattern(12, 20, 3, "uint8", 10), photometric="rgb",
                     metadata=None)
    tifffile.imwrite(inp / "turned.tif", pattern(100, 90, 3, "uint8", 9), photometric="rgb",
                     tile=(32, 32), metadata=None, extratags=[(274, "H", 1, 6, True)])
    tifffile.imwrite(inp / "gray_icc.tif", pattern(80, 96, 1, "uint16", 6),
                     photometric="minisblack", metadata=None, iccprofile=ICC_GRAY,
                     extratags=[ascii_tag(306, DATETIME)])


class _FileBytes:
    """A TIFF file's bytes as merge's header patches read and patch them."""

    def __init__(self, path: Path) -> None:
        self.data = bytearray(path.read_bytes())

    def read(self, at: int, size: int) -> bytes:
        return bytes(self.data[at:at + size])

    def patch(self, at: int, data: bytes) -> None:
        self.data[at:at + len(data)] = data


def _without_resolution(path: Path) -> None:
    """Drop XResolution, YResolution and ResolutionUnit from every IFD of a file tifffile
    wrote (it writes them on every page), with merge's own patch."""
    from pipeline.adapters.tiff_header import RESOLUTION_TAGS, drop_entries, image_ifds

    file = _FileBytes(path)
    for ifds in image_ifds(file):  # type: ignore[arg-type]
        for ifd in ifds:
            drop_entries(file, ifd, RESOLUTION_TAGS)  # type: ignore[arg-type]
    path.write_bytes(bytes(file.data))


APERIO = "Aperio Image Library v12.0.15 \r\n128x96 (32x32) RGB|AppMag = 20|MPP = 0.4990"
#: as Aperio's scanners write a slide: no resolution tags (tifffile's 1/1 NONE), the pixel
#: size in the description alone, the base image's on a level too
APERIO_SCANNER = "Aperio Image Library v12.0.15 \r\n128x96 [0,0 128x96] (32x32) RGB|MPP = 0.5"
APERIO_SCANNER_LEVEL = "Aperio Image Library v12.0.15 \r\n128x96 -> 64x48 - |MPP = 0.5"
BLUR = [{"op": "gaussian_blur", "sigma": SIGMA}]
JOBS: dict[str, dict[str, Any]] = {
    "rgb_copy": {"input": "rgb.tif"},
    "rgb_blur": {"input": "rgb.tif", "ops": BLUR},
    "rgb_reversed": {"input": "rgb.tif", "pages": [1, 0]},
    "rgb_to_gray": {"input": "rgb.tif", "ops": [{"op": "to_gray"}]},
    "rgb_jpeg": {"input": "rgb.tif", "output_options": {"compression": "jpeg"}},
    "geo_blur": {"input": "geo_be.tif", "ops": BLUR},
    "rgba_copy": {"input": "rgba.tif"},
    "imagej_copy": {"input": "imagej.tif"},
    "imagej_ome": {"input": "imagej.tif", "output_options": {"ome": True}},
    "gray_icc_blur": {"input": "gray_icc.tif", "ops": BLUR},
    "rgb_downsample": {"input": "rgb.tif", "ops": [{"op": "downsample", "factor": 2}]},
    "geo_downsample": {"input": "geo_be.tif", "ops": [{"op": "downsample", "factor": 2}]},
    "geo_threshold": {"input": "geo_be.tif", "ops": [*BLUR, {"op": "threshold", "value": 0.5}]},
    "svs_copy": {"input": "svs.tif"},
    "svs_downsample": {"input": "svs.tif", "ops": [{"op": "downsample", "factor": 2}]},
    "turned_pyramid": {"input": "turned.tif", "output_options": {"pyramid": True}},
    "svs_blur_pyramid": {"input": "svs.tif", "ops": BLUR, "output_options": {"pyramid": True}},
    "svs_scanner_copy": {"input": "svs_scanner.tif"},
    "svs_scanner_downsample": {"input": "svs_scanner.tif",
                               "ops": [{"op": "downsample", "factor": 2}]},
    "svs_scanner_rotate": {"input": "svs_scanner.tif", "pages": [0],
                           "ops": [{"op": "rotate", "angle": 90}]},
    "svs_bare_flip_pyramid": {"input": "svs_bare.tif", "ops": [{"op": "flip", "axis": "vertical"}],
                              "output_options": {"pyramid": True}},
    "svs_bare_downsample": {"input": "svs_bare.tif", "ops": [{"op": "downsample", "factor": 2}]},
    # (the default output tile: 512, more than libvips reads on a page of 20 px)
    "tiny_blur": {"input": "tiny.tif", "ops": BLUR, "tile": 512,
                  "output_options": {"compression": "deflate", "tile": 512}},
    "tiny_jpeg": {"input": "tiny.tif", "tile": 512,
                  "output_options": {"compression": "jpeg", "tile": 512}},
    "tiny_tiled": {"input": "tiny.tif"},  # an output tile of 32: libvips reads it
    # 150 x 173 downsampled by 2: 75 x 86, much smaller than the 512 tile too
    "rgb_down_small": {"input": "rgb.tif", "pages": [0], "tile": 1024,
                       "ops": [{"op": "downsample", "factor": 2}],
                       "output_options": {"compression": "deflate", "tile": 512}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("metadata")
    inp = root / "in"
    inp.mkdir()
    _write_inputs(inp)
    jobs = [{**job, "input": str(inp / job["input"]), "output": str(root / "out" / f"{name}.tif"),
             "tile": job.get("tile", 64),
             "output_options": {"tile": 32, **job.get("output_options", {})}}
            for name, job in JOBS.items()]
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": jobs}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet"])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    return {name: job for name, job in zip(JOBS, report["jobs"], strict=True)}


def _pages(path: str) -> list[tifffile.TiffPage]:
    tf = tifffile.TiffFile(path)
    return [tf.pages[i] for i in range(len(tf.pages))]


def _stamped_xmp(page: tifffile.TiffPage) -> None:
    """The input's XMP (an empty rdf:RDF) in its wrapper, stamped a derivative: a new
    InstanceID and a History event (tests/test_xmp.py checks them)."""
    packet = _raw(page, 700)
    assert packet.startswith(XMP[:XMP.index(b"<rdf:RDF")]), packet
    assert packet.endswith(b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'), packet
    assert b'xmpMM:InstanceID="xmp.iid:' in packet and b'stEvt:action="converted"' in packet


def _raw(page: tifffile.TiffPage, code: int) -> bytes | None:
    """The value bytes of a tag (ASCII without its NUL)."""
    tag = page.tags.get(code)
    if tag is None:
        return None
    fh = page.parent.filehandle
    fh.seek(tag.valueoffset)
    data = fh.read(tag.valuebytecount)
    return data.rstrip(b"\0") if int(tag.dtype) == 2 else data


def _value(page: tifffile.TiffPage, code: int) -> Any:
    return page.tags.valueof(code)


def _common(page: tifffile.TiffPage) -> None:
    assert page.software == f"tiffpipe {__version__}"


def test_resolution_description_date_icc_and_names(run):
    inp = _pages(run["rgb_copy"]["input"])
    for name in ("rgb_copy", "rgb_blur"):
        out = _pages(run[name]["output"])
        assert len(out) == 2
        front, back = out
        for page in out:
            _common(page)
        assert _value(front, 282) == (300, 1) and _value(front, 283) == (300, 1)
        assert _value(front, 296) == RESUNIT_INCH
        assert front.description == "Front cover, scanned at 300 dpi"
        assert _value(front, 306) == DATETIME
        assert front.iccprofile == ICC_RGB
        assert _raw(front, 285) == b"front"
        assert _raw(front, 315) == b"A. Scanner"
        assert _raw(front, 33432) == b"(c) 2024 tiffpipe tests"
        assert _value(front, 274) == 1
        assert _value(back, 282) == (1181, 10) and _value(back, 296) == RESUNIT_CM
        assert _raw(back, 270) == "R\u00fcckseite \u2013 back".encode()  # verbatim UTF-8
        assert _raw(back, 285) == b"back"
        assert back.iccprofile is None and 306 not in back.tags
        # structural tags describe the output, not the input
        assert front.is_tiled and front.tilewidth == 32
        for o, i in zip(out, inp, strict=True):
            assert o.photometric == i.photometric == tifffile.PHOTOMETRIC.RGB


def test_page_order_follows_the_job_and_metadata_follows_its_page(run):
    out = _pages(run["rgb_reversed"]["output"])
    inp = _pages(run["rgb_reversed"]["input"])
    assert [_raw(p, 285) for p in out] == [b"back", b"front"]
    assert [p.shape for p in out] == [inp[1].shape, inp[0].shape]
    assert np.array_equal(out[0].asarray(), inp[1].asarray())
    assert _value(out[0], 282) == (1181, 10) and _value(out[1], 282) == (300, 1)
    assert out[0].iccprofile is None and out[1].iccprofile == ICC_RGB


def test_to_gray_drops_an_rgb_icc_profile_and_keeps_the_rest(run):
    front, _ = _pages(run["rgb_to_gray"]["output"])
    assert front.photometric == tifffile.PHOTOMETRIC.MINISBLACK and front.samplesperpixel == 1
    assert front.iccprofile is None  # an RGB profile would be invalid on a gray page
    assert _value(front, 282) == (300, 1) and _raw(front, 285) == b"front"
    assert front.description == "Front cover, scanned at 300 dpi"


def test_jpeg_output_keeps_the_metadata(run):
    front, _ = _pages(run["rgb_jpeg"]["output"])
    assert front.compression == tifffile.COMPRESSION.JPEG
    assert front.iccprofile == ICC_RGB and _value(front, 282) == (300, 1)
    assert _value(front, 306) == DATETIME


def test_gray_icc_profile_is_kept_on_gray_output(run):
    (page,) = _pages(run["gray_icc_blur"]["output"])
    assert page.iccprofile == ICC_GRAY
    assert _value(page, 306) == DATETIME
    _common(page)


def test_geotiff_tags_are_carried_verbatim_from_a_big_endian_file(run):
    (page,) = _pages(run["geo_blur"]["output"])
    (src,) = _pages(run["geo_blur"]["input"])
    assert src.parent.byteorder == ">" and page.parent.byteorder == "<"
    for code, (kind, count, value) in GEO.items():
        got = _value(page, code)
        if kind == "s":
            assert got == value, code
        else:
            assert tuple(np.atleast_1d(got).tolist()) == value, code
            assert page.tags[code].count == count
    assert page.geotiff_tags["ModelPixelScale"] == [30.0, 30.0, 0.0]
    _stamped_xmp(page)
    # and the pixels are the op's result
    want = cv2.GaussianBlur(src.asarray(), (0, 0), SIGMA)
    assert np.array_equal(page.asarray(), want)


def test_downsample_scales_the_resolution_and_the_georeferencing(run):
    front, back = _pages(run["rgb_downsample"]["output"])
    assert front.shape[:2] == (75, 86) and back.shape[:2] == (50, 60)  # 173 -> 86: cropped
    assert _value(front, 282) == (150, 1) and _value(front, 283) == (150, 1)
    assert _value(front, 296) == RESUNIT_INCH
    assert Fraction(*_value(back, 282)) == Fraction(1181, 20)  # per cm
    assert _raw(front, 285) == b"front" and front.iccprofile == ICC_RGB  # size-independent
    (geo,) = _pages(run["geo_downsample"]["output"])
    assert geo.shape == (65, 70)
    # georeferenced still: each output pixel covers 2 x 2 input pixels of 30 m from the same
    # corner (PixelIsArea): 60 m pixels, the tiepoint unchanged, the other keys as they were
    assert geo.geotiff_tags["ModelPixelScale"] == [60.0, 60.0, 0.0]
    assert geo.geotiff_tags["ModelTiepoint"] == [0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0]
    for code in (34735, 34736, 34737):
        assert _raw(geo, code) is not None and code in geo.tags, code
    assert _value(geo, 34737) == GEO[34737][2]
    # XMP: kept, as it states no geometry (tests/test_xmp.py: rewritten when it does)
    _stamped_xmp(geo)
    assert _value(geo, 42113) == "-9999"  # nodata does not depend on the geometry


def test_nodata_is_dropped_by_an_op_that_remaps_values(run):
    # a threshold makes valid pixels 0 and the -9999 pixels 0: the input's no-data value
    # would mark none of them (and an invert would turn no-data pixels into data)
    (page,) = _pages(run["geo_threshold"]["output"])
    assert 42113 not in page.tags
    assert page.geotiff_tags["ModelPixelScale"] == [30.0, 30.0, 0.0]  # the geometry is kept
    (blurred,) = _pages(run["geo_blur"]["output"])
    assert _value(blurred, 42113) == "-9999"  # a filter keeps values: nodata kept


def test_new_subfile_type_is_kept_whole(run):
    # Aperio's macro image is NewSubfileType 9 (bits 0 and 3): tifffile and OpenSlide tell
    # it from the label (1) by it
    src, out = _pages(run["svs_copy"]["input"]), _pages(run["svs_copy"]["output"])
    assert int(src[1].subfiletype) == 9 and int(out[1].subfiletype) == 9


def test_an_aperio_description_is_dropped_when_the_size_changes(run):
    # it states the page's size and its microns per pixel (MPP), which readers take as the
    # pixel size: kept on a copy, dropped (like the georeferencing) by a downsample
    (page, macro) = _pages(run["svs_copy"]["output"])
    assert page.description == APERIO and macro.description.startswith("Aperio")
    (page, macro) = _pages(run["svs_downsample"]["output"])
    assert 270 not in page.tags and 270 not in macro.tags
    # its macro stays a strip: OpenSlide's generic reader takes a tiled page marked reduced
    # (the macro's NewSubfileType 9) for a level of the slide
    assert page.is_tiled and not macro.is_tiled and int(macro.subfiletype) == 9
    assert _value(page, 282) == (10020, 1)  # the resolution is scaled instead


def test_an_aperio_mpp_becomes_the_resolution_when_the_description_is_dropped(run):
    """A slide whose only pixel size is its description's MPP (no resolution tags, as
    Aperio's scanners write it) kept none once a downsample or a turn dropped the
    description: the output had no pixel size at all. The MPP becomes the resolution in
    pixels per centimetre, scaled as any resolution (a level's MPP is the base image's:
    its pixel is 2 base pixels here); a copy keeps the description and its tags as they were."""
    (page, level) = _pages(run["svs_scanner_copy"]["output"])
    assert page.description == APERIO_SCANNER and level.description == APERIO_SCANNER_LEVEL
    assert _value(page, 296) == _value(level, 296) == 1  # (NONE, as the input's)
    (page, level) = _pages(run["svs_scanner_downsample"]["output"])
    assert 270 not in page.tags and 270 not in level.tags
    # 0.5 um a pixel, downsampled by 2: 1 um, 10,000 a cm; the level's 1 um: 2 um, 5,000
    assert (_value(page, 296), _value(page, 282), _value(page, 283)) == \
        (RESUNIT_CM, (10000, 1), (10000, 1))
    assert (_value(level, 296), _value(level, 282)) == (RESUNIT_CM, (5000, 1))
    (turned,) = _pages(run["svs_scanner_rotate"]["output"])
    assert 270 not in turned.tags and turned.shape[:2] == (128, 96)
    assert (_value(turned, 296), _value(turned, 282)) == (RESUNIT_CM, (20000, 1))


def _levels_resolution(page: tifffile.TiffPage) -> list[tuple[Any, Any, Any]]:
    """XResolution, YResolution and ResolutionUnit of ``page``'s SubIFD levels."""
    return [(_value(level, 282), _value(level, 283), _value(level, 296))
            for level in page.pages]


def test_an_aperio_slides_subifd_levels_have_the_pages_resolution_over_their_factor(run):
    """Each SubIFD level of a slide's page has the page's resolution divided by its
    factor (2 ** k), in the page's unit: a page that keeps its Aperio description keeps its
    input's resolution tags, and a page whose description is dropped (a flip, a downsample)
    of a slide without resolution tags (MPP 0.5 alone) gets its MPP as the resolution, on
    the page and each level. That page, and its levels, were written without any: merge
    asked whether the input page had resolution tags, not whether the page was written
    with one, and dropped the MPP's from every IFD of the page."""
    (kept, _macro) = _pages(run["svs_blur_pyramid"]["output"])
    assert kept.description == APERIO and _value(kept, 296) == RESUNIT_CM
    assert _value(kept, 282) == _value(kept, 283) == (20040, 1)
    assert _levels_resolution(kept) == [((10020, 1), (10020, 1), RESUNIT_CM),
                                        ((5010, 1), (5010, 1), RESUNIT_CM)]
    (bare,) = _pages(run["svs_bare_flip_pyramid"]["input"])
    assert [bare.tags.get(code) for code in RESOLUTION_TAGS] == [None] * 3
    (flipped,) = _pages(run["svs_bare_flip_pyramid"]["output"])
    assert 270 not in flipped.tags and len(flipped.pages) == 2
    # 0.5 um a pixel: 20,000 a cm; the levels 10,000 and 5,000
    assert (_value(flipped, 282), _value(flipped, 283), _value(flipped, 296)) == \
        ((20000, 1), (20000, 1), RESUNIT_CM)
    assert _levels_resolution(flipped) == [((10000, 1), (10000, 1), RESUNIT_CM),
                                           ((5000, 1), (5000, 1), RESUNIT_CM)]
    (down,) = _pages(run["svs_bare_downsample"]["output"])
    assert (_value(down, 282), _value(down, 296)) == ((10000, 1), RESUNIT_CM)


@pytest.mark.parametrize("name", ["svs_copy", "svs_blur_pyramid"])
def test_an_aperio_slides_stripped_images_stay_strips(run, name):
    """OpenSlide tells an Aperio slide's levels from its thumbnail, label and macro images
    by their layout (tiled: a level; Aperio's format stores the others in strips): written
    in tiles, the output of an SVS file was not a slide OpenSlide would open. Its macro
    (100 px wide, more than the output tile) is one strip again, with no pyramid levels;
    the slide's page stays tiled."""
    src, out = _pages(run[name]["input"]), _pages(run[name]["output"])
    assert [p.is_tiled for p in src] == [p.is_tiled for p in out] == [True, False]
    assert out[1].rowsperstrip == 40 and not out[1].pages  # one strip, no SubIFD levels
    want = src[1].asarray()
    if name == "svs_blur_pyramid":
        want = cv2.GaussianBlur(want, (0, 0), SIGMA)
        assert len(out[0].pages) == 2  # the slide's page has its levels
    np.testing.assert_array_equal(out[1].asarray(), want)


@pytest.mark.parametrize("name", ["tiny_blur", "tiny_jpeg"])
def test_a_page_much_smaller_than_the_output_tile_is_one_strip_libvips_reads(run, name):
    """A page whose output tile libvips refuses ("tiff2vips: tile size out of range": it
    reads tiles up to twice the page's longest side rounded up to a multiple of 256; the
    output tile 512, the page 12 x 20: 256 at most) is one strip of its pixels. With an
    output tile libvips reads (32), it stays a tiled page."""
    import pyvips  # in the test lock (pyvips-binary)

    (src,) = _pages(run[name]["input"])
    (page,) = _pages(run[name]["output"])
    assert not page.is_tiled and page.rowsperstrip == 12 and page.shape == (12, 20, 3)
    image = pyvips.Image.new_from_file(run[name]["output"], fail=True)
    np.testing.assert_array_equal(image.numpy(), page.asarray())
    if name == "tiny_blur":
        np.testing.assert_array_equal(page.asarray(),
                                      cv2.GaussianBlur(src.asarray(), (0, 0), SIGMA))
    # after a downsample too (its output page is small): one strip, the op's pixels
    (down,) = _pages(run["rgb_down_small"]["output"])
    assert not down.is_tiled and down.shape == (75, 86, 3)
    image = pyvips.Image.new_from_file(run["rgb_down_small"]["output"], fail=True)
    front = _pages(run["rgb_down_small"]["input"])[0].asarray()
    want = cv2.resize(front[:150, :172], (86, 75), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(image.numpy(), want)
    (tiled,) = _pages(run["tiny_tiled"]["output"])
    assert tiled.is_tiled and tiled.tilewidth == 32
    np.testing.assert_array_equal(tiled.asarray(), src.asarray())


def test_pyramid_levels_repeat_the_orientation(run):
    # a level without Orientation reads as Orientation 1: turned from its page in a viewer
    # that shows a level (libvips' thumbnail does)
    (page,) = _pages(run["turned_pyramid"]["output"])
    levels = page.pages  # the SubIFDs
    assert _value(page, 274) == 6 and len(levels) == 2
    assert [_value(level, 274) for level in levels] == [6, 6]


def test_extra_samples_keep_associated_alpha(run):
    (page,) = _pages(run["rgba_copy"]["output"])
    assert page.extrasamples == (tifffile.EXTRASAMPLE.ASSOCALPHA,)
    assert page.iccprofile == ICC_RGB
    assert np.array_equal(page.asarray(), _pages(run["rgba_copy"]["input"])[0].asarray())


def test_structural_imagej_description_is_dropped(run):
    (src,) = _pages(run["imagej_copy"]["input"])
    assert src.description.startswith("ImageJ=")
    (page,) = _pages(run["imagej_copy"]["output"])
    assert 270 not in page.tags and not page.parent.is_imagej
    # the resolution is still carried, and so is its unit, which only the description held
    # (unit=um, ResolutionUnit NONE): 2.5 pixels a micrometre are 25,000 a centimetre
    assert _value(src, 296) == 1 and Fraction(*_value(src, 282)) == Fraction(5, 2)
    assert _value(page, 296) == RESUNIT_CM and Fraction(*_value(page, 282)) == 25000
    assert Fraction(*_value(page, 283)) == 25000
    with tifffile.TiffFile(run["imagej_ome"]["output"]) as tf:  # as an OME pixel size
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
    assert pixels["PhysicalSizeX"] == pixels["PhysicalSizeY"] == pytest.approx(0.4)


# --- the rules, without the engine -----------------------------------------------------


@pytest.mark.parametrize("unit,resolution,resolutionunit", [
    ("um", Fraction(25000), RESUNIT_CM), ("micron", Fraction(25000), RESUNIT_CM),
    ("nm", Fraction(25 * 10**6), RESUNIT_CM), ("mm", Fraction(25), RESUNIT_CM),
    ("inch", Fraction(5, 2), RESUNIT_INCH), ("pixel", Fraction(5, 2), 1)])
def test_an_imagej_files_unit_is_carried(tmp_path, unit, resolution, resolutionunit):
    """2.5 pixels a unit, the unit in the ImageJ description only (ResolutionUnit NONE):
    per centimetre, per inch as TIFF has it, or as it was for a unit that is no length."""
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, pattern(20, 30, 1, "uint8", 0), imagej=True, resolution=(2.5, 2.5),
                     metadata={"unit": unit})
    kwargs = output_tags(_info(path), 20, 30, 1)
    assert Fraction(*kwargs["resolution"][0]) == resolution
    assert kwargs["resolutionunit"] == resolutionunit


@pytest.mark.parametrize("unit,per_cm", [
    ("micron", 50000), ("\\u00B5m", 50000), ("nm", 5 * 10**7)])
def test_every_page_of_an_imagej_stack_has_the_files_unit(tmp_path, unit, per_cm):
    """ImageJ writes its description (``unit=``) on the first page only: the slices after it
    have 5 pixels a unit too, not 5 pixels a nothing (ResolutionUnit NONE); ``\\u00B5m`` is
    how ImageJ escapes a micro sign. An OME output of the slices after the first gives each
    slice's Image its PhysicalSize."""
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.stack([pattern(20, 30, 1, "uint8", i) for i in range(3)]),
                     imagej=True, resolution=(5, 5), metadata={"unit": unit, "axes": "ZYX"})
    infos = read_infos(str(path), None)
    assert len(infos) == 3
    for info in infos:
        assert info.metadata["resolution"] == [[per_cm, 1], [per_cm, 1]]
        assert info.metadata["resolutionunit"] == RESUNIT_CM
    if unit != "micron":
        return  # (one run through the engine is enough)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [  # (the slices after the first: an Image each)
        {"input": str(path), "output": str(tmp_path / "out.tif")},
        {"input": str(path), "output": str(tmp_path / "out.ome.tif"), "pages": [1, 2],
         "output_options": {"ome": True}}]}))
    assert cli.main(["run", str(manifest), "--quiet", "--no-contact-sheet"]) == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert [(p.tags["XResolution"].value, p.tags["ResolutionUnit"].value)
                for p in tf.pages] == [((per_cm, 1), RESUNIT_CM)] * 3
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tf:
        images = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
    assert [i["Pixels"].get("PhysicalSizeX") for i in images] == [pytest.approx(0.2)] * 2


def test_an_ome_tiffs_pixel_size_is_carried(tmp_path):
    """tifffile writes an OME-TIFF's pixel size in its OME-XML only (XResolution 1/1, unit
    NONE); the OME-XML describes the input's layout and is dropped, and the pixel size went
    with it: each page gets its Image's PhysicalSizeX/Y as pixels per centimetre (a plane
    of a CYX image too; Y missing: X's), which an OME output gives back in micrometres."""
    path = tmp_path / "in.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(pattern(40, 50, 3, "uint8", 0).transpose(2, 0, 1),
                 metadata={"axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.5})
        tw.write(pattern(20, 30, 1, "uint16", 1),
                 metadata={"PhysicalSizeX": 2.0, "PhysicalSizeXUnit": "mm"})
    infos = read_infos(str(path), None)
    assert len(infos) == 4
    for info, (x, y) in zip(infos, [(0.325e-4, 0.5e-4)] * 3 + [(0.2, 0.2)], strict=True):
        (xn, xd), (yn, yd) = info.metadata["resolution"]
        assert info.metadata["resolutionunit"] == RESUNIT_CM
        assert Fraction(xd, xn) == Fraction(str(x)) and Fraction(yd, yn) == Fraction(str(y))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{
        "input": str(path), "output": str(tmp_path / "out.ome.tif"), "pages": [0, 3],
        "output_options": {"ome": True}}]}))
    assert cli.main(["run", str(manifest), "--quiet", "--no-contact-sheet"]) == 0
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tf:
        images = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
    sizes = [(i["Pixels"]["PhysicalSizeX"], i["Pixels"]["PhysicalSizeY"]) for i in images]
    assert sizes == [pytest.approx((0.325, 0.5)), pytest.approx((2000.0, 2000.0))]


def _info(path: Path, **kw: Any) -> PageInfo:
    (info,) = read_infos(str(path), [0], **kw)
    return info


def test_plan_metadata_stays_small(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, pattern(40, 50, 3, "uint8", 0), photometric="rgb", metadata=None,
                     iccprofile=ICC_RGB, description="x" * 100)
    info = _info(path)
    size = len(json.dumps(info.to_json()))
    assert size < len(ICC_RGB) * 4 / 3 + 2000, size  # base64 of the ICC plus a little
    assert PageInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


def test_huge_values_are_dropped_by_the_size_caps(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, pattern(20, 20, 3, "uint8", 0), photometric="rgb", metadata=None,
                     iccprofile=fake_icc(b"RGB ", ICC_MAX + 4),
                     description="d" * (VALUE_MAX + 1), extratags=[ascii_tag(285, "kept")])
    md = _info(path).metadata
    assert "icc" not in md
    assert [t[0] for t in md["tags"]] == [285]


@pytest.mark.parametrize("description", [
    ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
     "</OME>"),
    '{"shape": [20, 20, 3]}',
    # libvips tiffsave(properties=True): the image's width, height, bands, format...
    ('<?xml version="1.0"?>\n<image xmlns="http://www.vips.ecs.soton.ac.uk//dzsave" '
     'date="2026-12-06T15:46:57Z" version="8.18.7">\n  <properties>\n    <property>\n'
     '      <name>width</name>\n      <value type="gint">20</value>\n    </property>\n'
     "  </properties>\n</image>\n"),
])
def test_structural_descriptions_are_dropped(tmp_path, description):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, pattern(20, 20, 3, "uint8", 0), photometric="rgb", metadata=None,
                     extratags=[ascii_tag(270, description)])
    assert "tags" not in _info(path).metadata


def test_a_geometry_change_scales_the_resolution_and_the_georeferencing(tmp_path):
    path = tmp_path / "g.tif"
    geo = [(code, kind, count, value, True) for code, (kind, count, value) in GEO.items()]
    tifffile.imwrite(path, pattern(200, 300, 1, "uint8", 0), metadata=None,
                     resolution=((300, 1), (300, 1)), resolutionunit=RESUNIT_INCH,
                     extratags=[*geo, ascii_tag(285, "p1")])
    info = _info(path)
    same = output_tags(info, 200, 300, 1)
    assert same["resolution"] == ((300, 1), (300, 1))
    assert {t[0] for t in same["extratags"]} == set(GEO) | {285}
    half = output_tags(info, 100, 150, 1, factor=2)  # a downsample by 2
    assert half["resolution"] == ((150, 1), (150, 1))
    assert half["resolutionunit"] == RESUNIT_INCH
    assert {t[0] for t in half["extratags"]} == set(GEO) | {285}  # GeoTIFF scaled
    by3 = output_tags(info, 66, 100, 1, factor=3)  # crops 200 rows to 198: still 1/3
    assert by3["resolution"] == ((100, 1), (100, 1))
    assert {t[0]: t[3] for t in by3["extratags"]}[33550] == (90.0, 90.0, 0.0)
    other = output_tags(info, 150, 200, 1)  # not an integer factor: the size ratio per axis
    assert other["resolution"] == ((200, 1), (225, 1))
    assert {t[0] for t in other["extratags"]} == {285, 42113}  # GeoTIFF dropped
    # the factor is the chain's, not guessed from the sizes: 3000 px by 64 is 46 px, and
    # 3000 // 46 is 65 (the pixel scale was 650 m, the resolution 300/65)
    tifffile.imwrite(path, pattern(3000, 3000, 1, "uint8", 0), metadata=None,
                     resolution=((300, 1), (300, 1)), resolutionunit=RESUNIT_INCH,
                     extratags=geo)
    by64 = output_tags(_info(path), 46, 46, 1, factor=64)
    assert by64["resolution"] == ((75, 16), (75, 16))  # 300 / 64
    assert {t[0]: t[3] for t in by64["extratags"]}[33550] == (1920.0, 1920.0, 0.0)


def _world(tags: dict[int, Any], i: float, j: float) -> tuple[float, float]:
    """Raster position (i, j) to world (x, y), as GDAL reads the tags: ModelTransformation,
    else the tiepoint and the pixel scale (y down the raster, north up)."""
    if 34264 in tags:
        m = tags[34264]
        return m[0] * i + m[1] * j + m[3], m[4] * i + m[5] * j + m[7]
    ti, tj, _, x, y, _ = tags[33922][:6]
    sx, sy = tags[33550][:2]
    return x + (i - ti) * sx, y - (j - tj) * sy


@pytest.mark.parametrize("raster_type", [1, 2])  # PixelIsArea, PixelIsPoint
@pytest.mark.parametrize("model", ["tiepoint", "transformation"])
def test_a_downsample_keeps_every_output_pixel_where_it_was_in_the_world(tmp_path, raster_type,
                                                                         model):
    """Downsampled by 3, output pixel (r, c) is the mean of input pixels 3r..3r+2, 3c..3c+2:
    its corner (PixelIsArea: raster positions are corners) is input pixel (3r, 3c)'s corner,
    its centre (PixelIsPoint: positions are centres) the centre of that block, input
    position (3r + 1, 3c + 1). The tags written say so, for a tiepoint with a pixel scale
    and for a rotated ModelTransformation."""
    keys = (1, 1, 0, 2, 1024, 0, 1, 1, 1025, 0, 1, raster_type)
    model_tags = ([(33550, "d", 3, (30.0, 20.0, 0.0), True),
                   (33922, "d", 6, (4.0, 2.0, 0.0, 1000.0, 5000.0, 0.0), True)]
                  if model == "tiepoint" else
                  [(34264, "d", 16, (28.0, 5.0, 0.0, 1000.0, -4.0, -19.0, 0.0, 5000.0,
                                     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), True)])
    path = tmp_path / "g.tif"
    tifffile.imwrite(path, pattern(200, 300, 1, "uint8", 0), metadata=None,
                     extratags=[*model_tags, (34735, "H", len(keys), keys, True)])
    info = _info(path)
    src = {t[0]: t[3] for t in output_tags(info, 200, 300, 1)["extratags"]}
    out = {t[0]: t[3] for t in output_tags(info, 66, 100, 1, factor=3)["extratags"]}
    assert out[34735] == keys
    at = 0.0 if raster_type == 1 else 1.0  # the block's corner, or its centre
    for r, c in ((0, 0), (10, 3), (65, 99)):
        want = _world(src, 3 * c + at, 3 * r + at)
        got = _world(out, c, r)
        assert got == pytest.approx(want), (r, c)


def test_software_is_tiffpipe_and_nothing_else_of_the_input(tmp_path):
    path = tmp_path / "sw.tif"
    tifffile.imwrite(path, pattern(20, 20, 1, "uint8", 0), metadata=None, software="Other 1.0")
    kwargs = output_tags(_info(path), 20, 20, 1)
    assert kwargs["software"] == f"tiffpipe {__version__}"
    assert "extratags" not in kwargs  # the input's Software is not copied


#: XResolution, YResolution, ResolutionUnit
RESOLUTION_TAGS = (282, 283, 296)


@pytest.mark.parametrize("options", [
    {}, {"pyramid": True, "tile": 64, "compression": "deflate"}])
def test_a_page_without_resolution_gets_none(tmp_path: Path, options: dict[str, Any]):
    """Pages Pillow wrote without resolution (a tiled page, a one-strip page small enough
    for one output tile, whose TileOffsets is held in its IFD entry) come out without
    XResolution, YResolution and ResolutionUnit, on the page and its pyramid levels, and
    are read as the input was (Pillow: the same ``dpi`` and ``resolution``); a page with a
    resolution keeps it. Before, tifffile's default was written on each: XResolution 1/1,
    ResolutionUnit NONE, which the input never said."""
    from PIL import Image

    import pipeline

    big = pattern(300, 280, 3, "uint8", 1)
    small = pattern(40, 50, 1, "uint8", 2)
    Image.fromarray(big).save(tmp_path / "none.tif", compression="tiff_lzw",
                              append_images=[Image.fromarray(small)], save_all=True)
    Image.fromarray(big).save(tmp_path / "dpi.tif", dpi=(300, 300))
    result = pipeline.run({"defaults": {"output_options": options}, "jobs": [
        {"input": "none.tif", "output": "out/none.tif", "ops": [{"op": "invert"}]},
        {"input": "dpi.tif", "output": "out/dpi.tif"}]}, workers=1, base=tmp_path)
    assert result.ok, result.jobs
    with tifffile.TiffFile(tmp_path / "none.tif") as f:
        assert all(page.tags.get(code) is None for page in f.pages for code in RESOLUTION_TAGS)
    with tifffile.TiffFile(tmp_path / "out" / "none.tif") as f:
        pages = list(f.pages)
        levels = [level for page in pages for level in page.pages or []]
        assert len(pages) == 2 and bool(levels) == bool(options)
        for page in pages + levels:
            assert [page.tags.get(code) for code in RESOLUTION_TAGS] == [None] * 3, page
            assert page.tags["Software"].value == f"tiffpipe {__version__}"
        np.testing.assert_array_equal(pages[0].asarray(), 255 - big)
        np.testing.assert_array_equal(pages[1].asarray(), 255 - small)
    for name in ("none", "dpi"):
        with Image.open(tmp_path / f"{name}.tif") as given, \
                Image.open(tmp_path / "out" / f"{name}.tif") as made:
            assert {k: made.info.get(k) for k in ("dpi", "resolution")} == \
                {k: given.info.get(k) for k in ("dpi", "resolution")}, name
    with tifffile.TiffFile(tmp_path / "out" / "dpi.tif") as f:
        page = f.pages[0]
        assert (page.tags["XResolution"].value, page.tags["ResolutionUnit"].value) == \
            ((300, 1), RESUNIT_INCH)


def _ifd_tags(path: Path, offset: int) -> dict[int, Any]:
    """The tags of the IFD at ``offset`` as Pillow's own TIFF directory reader parses them
    (Pillow opens the main chain only; a SubIFD is read from its offset)."""
    from PIL import TiffImagePlugin

    with open(path, "rb") as fh:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(fh.read(8))
        fh.seek(offset)
        ifd.load(fh)
    return dict(ifd)


@pytest.mark.parametrize(("fuse", "ops"), [
    (True, []),
    (False, [{"op": "rotate", "angle": 90}]),  # (merge builds a turned page's levels)
    (True, [{"op": "downsample", "factor": 2}]),
])
def test_pyramid_levels_carry_the_page_resolution_scaled(tmp_path: Path, fuse: bool,
                                                         ops: list[dict[str, Any]]):
    """Each pyramid level of a page with a resolution carries the page's, divided by the
    level's reduction (2**k: a level pixel is 2**k x 2**k pixels of the page) in the page's
    unit, as whole-slide and GIS readers take a level's pixel size from it; before, each
    level had tifffile's default XResolution 1/1, ResolutionUnit NONE. A page given another
    x and y resolution (300 x 200 dpi) keeps them apart, turned with the page and scaled
    with a downsample. Read back with tifffile and with Pillow's directory reader."""
    from PIL import Image

    import pipeline

    Image.fromarray(pattern(300, 280, 3, "uint8", 3)).save(tmp_path / "dpi.tif",
                                                          dpi=(300, 200))
    options = {"pyramid": True, "tile": 32, "compression": "deflate"}
    result = pipeline.run({"jobs": [{"input": "dpi.tif", "output": "out/dpi.tif", "ops": ops,
                                     "tile": 64, "fuse": fuse, "output_options": options}]},
                          workers=1, base=tmp_path)
    assert result.ok, result.jobs
    turned = {"op": "rotate", "angle": 90} in ops  # the page's x is the input's y
    x, y = (Fraction(200), Fraction(300)) if turned else (Fraction(300), Fraction(200))
    if {"op": "downsample", "factor": 2} in ops:  # a pixel twice the size
        x, y = x / 2, y / 2
    path = tmp_path / "out" / "dpi.tif"
    with tifffile.TiffFile(path) as f:
        page = f.pages[0]
        levels = page.pages
        assert len(levels) >= 3
        seen = [(page, 1)] + [(level, 2 ** k) for k, level in enumerate(levels, 1)]
        for level, reduction in seen:
            got = [Fraction(*level.tags[name].value) for name in ("XResolution", "YResolution")]
            assert got == [x / reduction, y / reduction], (level.shape, got)
            assert level.tags["ResolutionUnit"].value == RESUNIT_INCH
            tags = _ifd_tags(path, level.offset)
            assert (Fraction(tags[282]), Fraction(tags[283]), tags[296]) == \
                (x / reduction, y / reduction, RESUNIT_INCH)


#: an IPTC-NAA (IIM) record as archives and Photoshop store it in tag 33723: record 2's
#: version, caption, by-line and copyright notice (datasets 2:00, 2:120, 2:80, 2:116), padded
#: to a multiple of 4 bytes as Photoshop pads it to store it as LONGs
IPTC = (b"\x1c\x02\x00\x00\x02\x00\x04"
        b"\x1c\x02\x78\x00\x18Map of the parish, 1850."
        b"\x1c\x02\x50\x00\x0aJ. Surveyr"
        b"\x1c\x02\x74\x00\x11(c) City Archives")
IPTC += b"\0" * (-len(IPTC) % 4)


def test_an_iptc_record_is_carried_byte_for_byte_through_any_chain(tmp_path: Path):
    """Archives keep a scan's caption, creator and rights in its IPTC-NAA record (tag 33723):
    it describes what was scanned, not the pixels, so it is carried as Copyright and Artist
    are, byte for byte, whatever the chain (a copy, an access copy downsampled to JPEG, a
    turn, a 1-bit OCR page). Photoshop stores it as LONGs (a big-endian file's bytes in file
    order), other writers as UNDEFINED or BYTE: the output has the stored bytes, as
    UNDEFINED, which Pillow's reader (``IptcImagePlugin.getiptcinfo``) parses back. Before,
    it was left out without a word, on a plain copy too."""
    from PIL import Image, IptcImagePlugin

    longs = np.frombuffer(IPTC, ">u4")
    tifffile.imwrite(tmp_path / "be_long.tif", pattern(60, 80, 3, "uint8", 1), byteorder=">",
                     photometric="rgb", metadata=None,
                     extratags=[(33723, "I", len(longs), tuple(int(v) for v in longs), True)])
    tifffile.imwrite(tmp_path / "le_undefined.tif", pattern(60, 80, 1, "uint8", 2),
                     photometric="minisblack", metadata=None,
                     extratags=[(33723, 7, len(IPTC), IPTC, True)])
    chains = {"copy": {}, "access": {"ops": [{"op": "downsample", "factor": 2}],
                                     "output_options": {"compression": "jpeg"}},
              "turned": {"ops": [{"op": "rotate", "angle": 90}]},
              "ocr": {"ops": [{"op": "to_gray"}, {"op": "otsu_threshold"}],
                      "output_options": {"bilevel": True, "compression": "group4"}}}
    jobs = [{"input": str(tmp_path / f"{name}.tif"), "output": str(tmp_path / f"{name}-{c}.tif"),
             **job} for name in ("be_long", "le_undefined") for c, job in chains.items()]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": jobs}))
    assert cli.main(["run", str(tmp_path / "m.json"), "--quiet", "--no-contact-sheet"]) == 0
    for job in jobs:
        with tifffile.TiffFile(job["output"]) as tf:
            (page,) = tf.pages
            assert int(page.tags[33723].dtype) == 7, job["output"]
            assert _raw(page, 33723) == IPTC, job["output"]
        with Image.open(job["output"]) as im:
            info = IptcImagePlugin.getiptcinfo(im)
        assert info[(2, 120)] == b"Map of the parish, 1850."
        assert info[(2, 116)] == b"(c) City Archives"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["inspect", str(tmp_path / "be_long.tif")])
    assert out.getvalue().rstrip().endswith("; kept: resolution, IPTC")


def test_page_number_is_renumbered_for_the_output_pages(tmp_path: Path):
    """An input whose pages carry PageNumber (page index, page count), each page followed
    by its GDAL mask: an output of a reordered subset (``"pages": [2, 0]``), of one page
    with its levels stored as pages, and of every page with the masks left out carries on
    each output page (its index among the output's pages, their count), as viewers number
    the pages; its mask pages and levels carry none. Before, no output page carried one."""
    with tifffile.TiffWriter(tmp_path / "in.tif") as tw:
        for i in range(3):  # (file pages 0, 2, 4; their masks 1, 3, 5)
            tw.write(pattern(200, 300, 1, "uint8", i), tile=(64, 64), metadata=None,
                     extratags=[(297, "H", 2, (i, 3), True)])
            valid = np.ones((200, 300), bool)
            valid[:, :40 * (i + 1)] = False
            tw.write(valid, compression="zlib", subfiletype=4, metadata=None)
    jobs = {"reordered": {"pages": [2, 0]},
            "levels": {"pages": [4], "output_options": {"pyramid": True, "tile": 64,
                                                         "pyramid_layout": "pages"}},
            "masks_out": {"output_options": {"masks": False}}}
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(tmp_path / "in.tif"), "output": str(tmp_path / f"{name}.tif"), **job}
        for name, job in jobs.items()]}))
    assert cli.main(["run", str(tmp_path / "m.json"), "--quiet", "--no-contact-sheet"]) == 0

    def numbers(name: str) -> list[tuple[int, tuple[int, ...] | None]]:
        """Each page of the output's main chain: (NewSubfileType, PageNumber or None)."""
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tf:
            return [(int(p.subfiletype), tuple(p.tags[297].value) if 297 in p.tags else None)
                    for p in tf.pages]

    # (NewSubfileType 4: a page's mask, 1: a level, 5: a level's mask)
    assert numbers("reordered") == [(0, (0, 2)), (4, None), (0, (1, 2)), (4, None)]
    assert numbers("levels") == [(0, (0, 1)), (4, None)] + [(1, None), (5, None)] * 3
    assert numbers("masks_out") == [(0, (0, 3)), (0, (1, 3)), (0, (2, 3))]
    with tifffile.TiffFile(tmp_path / "reordered.tif") as tf:  # (SHORT, as TIFF defines it)
        assert int(tf.pages[0].tags[297].dtype) == 3
        # (the first output page is input page 2, the second image: its mask leaves out 80
        # columns)
        assert not tf.pages[1].asarray()[:, :80].any() and tf.pages[1].asarray()[:, 80:].all()


def _damage_unit(path: Path) -> None:
    """Page 0's ResolutionUnit made 514, no TIFF unit (a damaged tag)."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        at = tf.pages[0].tags[296].valueoffset
    data[at:at + 2] = (514).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_a_damaged_resolution_unit_is_dropped_with_a_note(tmp_path: Path):
    """A ResolutionUnit that is no TIFF unit (514, a damaged tag) passed the plan and failed
    the job once its pixels were processed ("RESUNIT: invalid argument 514"): damaged
    metadata must not cost the output. It is dropped: the output's resolution unit is none
    (its resolution kept as numbers), and the job's note names the tag and its value."""
    import pipeline

    page = pattern(64, 64, 1, "uint8", 3)
    path = tmp_path / "unit.tif"
    tifffile.imwrite(path, page, resolution=(300, 300), resolutionunit="INCH", metadata=None)
    _damage_unit(path)
    result = pipeline.run({"jobs": [{"input": "unit.tif", "output": "out/unit.tif",
                                     "ops": [{"op": "invert"}]}]}, workers=1, base=tmp_path)
    assert result.ok, result.jobs
    (job,) = result.jobs
    said = ("ResolutionUnit 514 of page 0 is no TIFF unit (1 none, 2 inch, 3 centimetre): "
            "dropped, the output's resolution unit is none")
    assert said in job["message"] and said in job["notice"]
    with tifffile.TiffFile(tmp_path / "out" / "unit.tif") as f:
        out = f.pages[0]
        assert _value(out, 296) == tifffile.RESUNIT.NONE and _value(out, 282) == (300, 1)
        np.testing.assert_array_equal(out.asarray(), 255 - page)


def test_a_damaged_resolution_unit_of_an_aperio_page_is_told_as_written(tmp_path: Path):
    """On an Aperio page whose ResolutionUnit is dropped, a job that drops its description
    (a downsample) writes its MPP as the resolution, in centimetres: the note said the
    output's unit is none. And ``inspect --ops`` said the dropped unit twice, on the page's
    ``kept:`` and as a note of the ops, which it has nothing to do with: once now."""
    import pipeline

    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, pattern(64, 64, 3, "uint8", 5), photometric="rgb", tile=(32, 32),
                     resolution=(300, 300), resolutionunit="INCH", metadata=None,
                     description=APERIO)
    _damage_unit(path)
    result = pipeline.run({"jobs": [{"input": "slide.tif", "output": "out/slide.tif",
                                     "ops": [{"op": "downsample", "factor": 2}]}]},
                          workers=1, base=tmp_path)
    assert result.ok, result.jobs
    said = ("ResolutionUnit 514 of page 0 is no TIFF unit (1 none, 2 inch, 3 centimetre): "
            "dropped, the output's resolution unit is none, or centimetre (its Aperio MPP) "
            "where the job drops its description (a size change, a turn)")
    assert said in result.jobs[0]["message"], result.jobs[0]["message"]
    with tifffile.TiffFile(tmp_path / "out" / "slide.tif") as f:
        assert _value(f.pages[0], 296) == tifffile.RESUNIT.CENTIMETER
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["inspect", str(path), "--ops", '[{"op": "invert"}]']) == 0
    text = out.getvalue()
    assert text.count("514") == 1, text
    assert ("kept: resolution (its ResolutionUnit 514, no TIFF unit, dropped: none, or "
            "centimetre (its Aperio MPP) where the job drops its description") in text, text
