"""tiffpipe's pyramid outputs opened in OpenSlide (openslide-python with openslide-bin's
library, both in the dev extra), as a slide viewer (QuPath's OpenSlide reader, a tile
server) opens them: how many levels it finds, their sizes, each level's pixels against
tifffile's read, and the pixel size. OpenSlide's generic-tiff reader takes a slide's levels
from the tiled pages of the main IFD chain marked reduced-resolution, never from SubIFDs:
``output_options.pyramid_layout`` "pages" writes that layout (docs/outputs.md)."""

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
