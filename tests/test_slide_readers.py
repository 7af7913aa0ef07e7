"""tiffpipe's pyramid outputs opened in OpenSlide (openslide-python with openslide-bin's
library, both in the dev extra), as a slide viewer (QuPath's OpenSlide reader, a tile
server) opens them: how many levels it finds, their sizes, each level's pixels against
tifffile's read, and the pixel size. OpenSlide's generic-tiff reader takes a slide's levels
from the tiled pages of the main IFD chain marked reduced-resolution, never from SubIFDs:
``output_options.pyramid_layout`` "pages" writes that layout (docs/outputs.md). An Aperio
SVS slide's output is read by OpenSlide's Aperio reader: the same slide, its levels and its
associated images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openslide  # in the dev extra (openslide-bin bundles the library)
import pytest
import tifffile

import pipeline
from pipeline.sample import SamplePage, write_sample

pytestmark = pytest.mark.timeout(240)

#: a page of 700 x 900 RGB at 0.25 um a pixel (4 px a micron: 40,000 px a centimetre)
HEIGHT, WIDTH = 700, 900


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("slides")
    write_sample(str(root / "in.tif"), [SamplePage(HEIGHT, WIDTH, 3, "uint8")], tile=256)
    with tifffile.TiffFile(root / "in.tif") as tf:
        pixels = tf.pages[0].asarray()
    tifffile.imwrite(root / "slide.tif", pixels, tile=(256, 256), photometric="rgb",
                     compression="zlib", resolution=(40000, 40000), resolutionunit="CENTIMETER",
                     metadata=None)
    pyramid = {"pyramid": True, "tile": 128}
    jobs = {"pages": {**pyramid, "pyramid_layout": "pages"},
            "pages_jpeg": {**pyramid, "pyramid_layout": "pages", "compression": "jpeg"},
            "subifds": pyramid}
    result = pipeline.run({"jobs": [{"input": "slide.tif", "output": f"out/{name}.tif",
                                     "output_options": options}
                                    for name, options in jobs.items()]},
                          workers=2, base=root)
    assert result.ok, result.jobs
    return {name: root / "out" / f"{name}.tif" for name in jobs}


def _levels(path: Path) -> list[np.ndarray]:
    """The output's page and its level pages, as tifffile reads them."""
    with tifffile.TiffFile(path) as tf:
        return [page.asarray() for page in tf.pages]


@pytest.mark.parametrize("name", ["pages", "pages_jpeg"])
def test_openslide_opens_every_level_of_a_pages_pyramid(slides, name):
    """Levels as pages: OpenSlide finds the page and its 3 levels (900 x 700 down to
    113 x 88), each level's pixels those tifffile reads (JPEG too: the same decoded
    tiles), and the pixel size from the resolution tags."""
    want = _levels(slides[name])
    with openslide.OpenSlide(str(slides[name])) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count == len(want) == 4
        assert slide.level_dimensions == ((900, 700), (450, 350), (225, 175), (113, 88))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        for level, pixels in enumerate(want):
            width, height = slide.level_dimensions[level]
            region = slide.read_region((0, 0), level, (width, height))
            rgba = np.asarray(region)
            assert (rgba[..., 3] == 255).all()
            np.testing.assert_array_equal(rgba[..., :3], pixels, err_msg=f"level {level}")


def test_openslide_sees_one_level_of_a_subifd_pyramid(slides):
    """The default layout, SubIFDs (OME-TIFF's): OpenSlide never reads them, and sees the
    page alone, which is why "pages" exists."""
    with tifffile.TiffFile(slides["subifds"]) as tf:
        assert len(tf.pages[0].subifds) == 3
    with openslide.OpenSlide(str(slides["subifds"])) as slide:
        assert slide.level_count == 1
        assert slide.level_dimensions == ((900, 700),)


# --- an Aperio SVS slide ---------------------------------------------------------------------

#: an Aperio slide as a ScanScope writes it (openslide.org/formats/aperio): the base level
#: tiled, a thumbnail in strips, reduced levels tiled like the base (4 and 16 times
#: smaller, Aperio's usual steps), then a label and a macro image in strips
SVS_HEIGHT, SVS_WIDTH, SVS_TILE = 1500, 2000, 240
APERIO = "Aperio Image Library v12.0.15\r\n"
#: what the base level's description says besides its layout (MPP: microns a pixel)
APERIO_FIELDS = ("|AppMag = 40|StripeWidth = 1000|ScanScope ID = SS1234|Filename = slide"
                 "|Date = 12/07/26|Time = 07:30:00|User = tester|MPP = 0.2520|Left = 25.1"
                 "|Top = 18.2")
SIGMA = 1.5
#: each output: its options (the default output tile, 512, and Aperio's own, 240)
SVS_JOBS = {"jpeg": {"compression": "jpeg"}, "zstd": {"compression": "zstd"},
            "deflate": {"compression": "deflate", "tile": 240}}


def _jpeg_tables(stream: bytes) -> tuple[bytes, bytes]:
    """A JPEG stream as Aperio stores a tile: its quantization and Huffman tables (DQT,
    DHT) apart, in the page's JPEGTables, and the stream without them (nor its JFIF
    marker: libjpeg takes the 3 components, ids 1 2 3, for YCbCr, as they are)."""
    tables, rest, at = [], [], 2
    while stream[at + 1] != 0xDA:  # the segments before the scan (SOS)
        end = at + 2 + int.from_bytes(stream[at + 2:at + 4], "big")
        if stream[at + 1] in (0xDB, 0xC4):
            tables.append(stream[at:end])
        elif stream[at + 1] != 0xE0:
            rest.append(stream[at:end])
        at = end
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"\xff\xd8" + b"".join(rest) + stream[at:]


def _write_svs(tw: tifffile.TiffWriter, level: np.ndarray, description: str) -> None:
    """A level of the slide: JPEG tiles of 240 px (quality 70) with shared tables."""
    import imagecodecs

    tiles, tables = [], set()
    for y in range(0, level.shape[0], SVS_TILE):
        for x in range(0, level.shape[1], SVS_TILE):
            tile = np.zeros((SVS_TILE, SVS_TILE, 3), np.uint8)
            part = level[y:y + SVS_TILE, x:x + SVS_TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            table, stream = _jpeg_tables(bytes(imagecodecs.jpeg8_encode(tile, level=70)))
            tables.add(table)
            tiles.append(stream)
    (table,) = tables  # (libjpeg's standard Huffman tables: the same for every tile)
    tw.write(iter(tiles), shape=level.shape, dtype=np.uint8, tile=(SVS_TILE, SVS_TILE),
             photometric="rgb", compression="jpeg", jpegtables=table, metadata=None,
             description=description)


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import cv2

    root = tmp_path_factory.mktemp("svs")
    rows, cols = np.mgrid[0:SVS_HEIGHT, 0:SVS_WIDTH].astype(np.float32)
    tissue = np.stack([150 + 80 * np.sin(cols / 37 + rows / 53), 120 + 70 * np.cos(rows / 29),
                       170 + 60 * np.sin((cols + rows) / 71)], axis=-1)
    noise = np.random.default_rng(5).normal(0, 6, tissue.shape)
    base = np.clip(tissue + noise, 0, 255).astype(np.uint8)

    def smaller(image: np.ndarray, k: int) -> np.ndarray:
        return cv2.resize(image, (image.shape[1] // k, image.shape[0] // k),
                          interpolation=cv2.INTER_AREA)

    size = f"{SVS_WIDTH}x{SVS_HEIGHT}"
    layout = f"{size} [0,0 {size}] ({SVS_TILE}x{SVS_TILE})"
    label = np.full((300, 280, 3), 235, np.uint8)
    label[100:200, 40:240] = (20, 40, 160)  # (a barcode's place)
    macro = smaller(np.concatenate([base, base[:, :1000]], axis=1), 4)
    thumb = smaller(base, 5)
    with tifffile.TiffWriter(root / "slide.svs") as tw:
        _write_svs(tw, base, f"{APERIO}{layout} JPEG/RGB Q=70{APERIO_FIELDS}")
        tw.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=16, metadata=None,
                 description=f"{APERIO}{size} -> {thumb.shape[1]}x{thumb.shape[0]} - "
                             f"{APERIO_FIELDS}")
        for k in (4, 16):
            level = smaller(base, k)
            _write_svs(tw, level, f"{APERIO}{layout} -> {level.shape[1]}x{level.shape[0]} "
                                  "JPEG/RGB Q=70")
        tw.write(label, photometric="rgb", compression="lzw", rowsperstrip=32, subfiletype=1,
                 metadata=None, description=f"{APERIO}label 280x300")
        tw.write(macro, photometric="rgb", compression="jpeg", rowsperstrip=16, subfiletype=9,
                 metadata=None, description=f"{APERIO}macro {macro.shape[1]}x{macro.shape[0]}")
    blur = [{"op": "gaussian_blur", "sigma": SIGMA}]
    result = pipeline.run({"jobs": [{"input": "slide.svs", "output": f"out/{name}.tif",
                                     "ops": blur, "output_options": options}
                                    for name, options in SVS_JOBS.items()]},
                          workers=2, base=root)
    assert result.ok, result.jobs
    return {"input": root / "slide.svs",
            **{name: root / "out" / f"{name}.tif" for name in SVS_JOBS}}


#: the slide's levels (tiled pages) and associated images (pages in strips) by page
SVS_LEVELS, SVS_IMAGES = (0, 2, 3), {"thumbnail": 1, "label": 4, "macro": 5}


def _slide(path: Path) -> dict[str, Any]:
    """What OpenSlide tells of a slide (its pixels apart)."""
    with openslide.OpenSlide(str(path)) as slide:
        return {"vendor": slide.properties[openslide.PROPERTY_NAME_VENDOR],
                "dimensions": slide.level_dimensions, "downsamples": slide.level_downsamples,
                "mpp": (slide.properties.get(openslide.PROPERTY_NAME_MPP_X),
                        slide.properties.get(openslide.PROPERTY_NAME_MPP_Y)),
                "power": slide.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER),
                "images": {name: image.size for name, image in
                           slide.associated_images.items()}}


def test_the_svs_input_is_an_aperio_slide_to_openslide(svs):
    """The fixture first: OpenSlide opens it as Aperio's, with the levels, pixel size and
    associated images meant (else a test of the outputs would test the fixture)."""
    assert _slide(svs["input"]) == {
        "vendor": "aperio", "dimensions": ((2000, 1500), (500, 375), (125, 93)),
        # (a level's downsample: the mean of its width's and height's)
        "downsamples": (1.0, 4.0, (2000 / 125 + 1500 / 93) / 2),
        "mpp": ("0.252", "0.252"), "power": "40",
        "images": {"thumbnail": (400, 300), "label": (280, 300), "macro": (750, 375)}}


@pytest.mark.parametrize("name", list(SVS_JOBS))
def test_openslide_opens_an_svs_output_as_the_aperio_slide(svs, name):
    """Blurred, in JPEG, zstd or deflate: the output is the same Aperio slide to OpenSlide
    (its levels, their downsamples, pixel size, magnification and associated images), each
    level's read_region and each associated image the pixels tifffile reads of that output
    page. The smallest level, 125 x 93, was written as one strip (a page much smaller than
    the 512 output tile, which libvips refuses): OpenSlide found 2 levels of 3."""
    assert _slide(svs[name]) == _slide(svs["input"])
    with tifffile.TiffFile(svs[name]) as tf, openslide.OpenSlide(str(svs[name])) as slide:
        for level, page in enumerate(SVS_LEVELS):
            assert tf.pages[page].is_tiled
            width, height = slide.level_dimensions[level]
            rgba = np.asarray(slide.read_region((0, 0), level, (width, height)))
            assert (rgba[..., 3] == 255).all()
            # (JPEG too: OpenSlide's libjpeg-turbo decodes the same YCbCr 4:2:0 tiles as
            # tifffile's imagecodecs, the same way, to the same pixels)
            np.testing.assert_array_equal(rgba[..., :3], tf.pages[page].asarray(),
                                          err_msg=f"level {level}")
        for image, page in SVS_IMAGES.items():
            assert not tf.pages[page].is_tiled
            pixels = np.asarray(slide.associated_images[image].convert("RGB"))
            np.testing.assert_array_equal(pixels, tf.pages[page].asarray(), err_msg=image)


def test_an_svs_outputs_pages_are_the_inputs_blurred_in_its_layout(svs):
    """Each page of the lossless outputs is its input page blurred, with its Aperio
    description and NewSubfileType (label 1, macro 9), tiled or in strips as it was."""
    import cv2

    with tifffile.TiffFile(svs["input"]) as src:
        want = [(cv2.GaussianBlur(page.asarray(), (0, 0), SIGMA), page.description,
                 int(page.subfiletype), page.is_tiled) for page in src.pages]
    for name in ("zstd", "deflate"):
        with tifffile.TiffFile(svs[name]) as tf:
            assert tf.is_svs and len(tf.pages) == len(want)
            for page, (pixels, description, subfiletype, tiled) in zip(tf.pages, want,
                                                                      strict=True):
                where = f"{name} page {page.index}"
                assert (page.description, int(page.subfiletype), page.is_tiled) == \
                    (description, subfiletype, tiled), where
                np.testing.assert_array_equal(page.asarray(), pixels, err_msg=where)


def test_level_pages_of_an_svs_output_are_refused_naming_the_slide(svs, tmp_path):
    """Level pages (``"pyramid_layout": "pages"``) added to a slide whose output stays the
    Aperio slide were taken by OpenSlide for more levels of it (5 levels, two 500 x 375,
    the thumbnail lost): PlanJob fails that job, naming the file and the slide's pages and
    what to write instead, before anything is written; a job beside it runs."""
    options = {"pyramid": True, "pyramid_layout": "pages", "compression": "zstd"}
    result = pipeline.run({"jobs": [
        {"input": str(svs["input"]), "output": "refused.tif", "output_options": options},
        {"input": str(svs["input"]), "output": "levels.tif",
         "output_options": {**options, "pyramid_layout": "subifds"}}]},
        workers=2, base=tmp_path)
    refused, levels = result.jobs
    assert (refused["status"], levels["status"]) == ("FAILED", "SUCCEEDED"), result.jobs
    message = refused["error"]["message"]
    # (every page of the slide: its thumbnail, levels, label and macro image too)
    assert str(svs["input"]) in message and "pages 0-5 (6 pages): an Aperio SVS slide" \
        in message
    assert '"pyramid_layout": "subifds"' in message
    assert not (tmp_path / "refused.tif").exists() and (tmp_path / "levels.tif").exists()
    assert _slide(tmp_path / "levels.tif") == _slide(svs["input"])
