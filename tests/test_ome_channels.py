"""An input OME-TIFF's channel identity carried to the output: each output page made from an
input plane (one IFD of an OME Image) is named after its Image and channel (and its Z/T
when the Image has several), and an OME output's Channel keeps the input Channel's Name,
Color, wavelengths and Fluor, while the op chain keeps the channel count.

Real OME-TIFFs written by tifffile (one IFD per plane, interleaved RGB samples, several
Images) and by hand (TiffData IFD/PlaneCount/FirstC/FirstZ/FirstT and UUID, a damaged
OME-XML) go through one ``tiffpipe run``; the outputs' OME-XML is read back with
tifffile.xml2dict, their PageName tags with tifffile."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pipeline import cli
from pipeline.adapters.segments import compose
from pipeline.adapters.tiff_read import page_info, read_infos
from pipeline.core.models import JobSpec
from pipeline.core.plan import make_plan
from pipeline.steps import layout
from pipeline.steps import merge as merge_mod
from pipeline.steps.common import forget_plans, load_plan

pytestmark = pytest.mark.timeout(240)

H, W = 64, 80
OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
#: the channels of the multiplexed Image: what the OME output's Channel must say
CHANNELS = {
    "Name": ["DAPI", "CD3", "CD8"],
    "Color": [65535, -16776961, 16711935],
    "EmissionWavelength": [461.0, 520.5, 670.0],
    "EmissionWavelengthUnit": ["nm", "nm", "nm"],
    "ExcitationWavelength": [358.0, 495.0, 650.0],
    "Fluor": ["Hoechst 33342", "FITC", "Cy5"],
}
MULTI_NAMES = ["Tissue 1 - DAPI", "Tissue 1 - CD3", "Tissue 1 - CD8",
               "Stack - a - Z=0", "Stack - b - Z=0", "Stack - a - Z=1", "Stack - b - Z=1",
               "Slide RGB - Brightfield"]
#: the hand-written file: IFD -> the name of its plane (TiffData, not file order)
PLANE_NAMES = ["Planes - Ki67 - Z=0 - T=0", "Planes - Ki67 - Z=1 - T=0",
               "Planes - Hoechst - Z=0 - T=0", "Planes - Hoechst - Z=1 - T=0"]


def planes(count: int, dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(count)
    return rng.integers(0, 200, (count, H, W)).astype(dtype)


def write_multi(path: Path) -> None:
    """Three Images: CYX (one IFD per channel, named channels with colours and wavelengths),
    ZCYX (2 x 2 planes) and an RGB Image of interleaved samples (one Channel of 3 samples)."""
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(planes(3), tile=(32, 32), metadata={
            "axes": "CYX", "Name": "Tissue 1", "Channel": CHANNELS, "PhysicalSizeX": 0.5})
        tw.write(planes(4, "uint8").reshape(2, 2, H, W), tile=(32, 32), metadata={
            "axes": "ZCYX", "Name": "Stack", "Channel": {"Name": ["a", "b"]}})
        tw.write(planes(3, "uint8").transpose(1, 2, 0), photometric="rgb", tile=(32, 32),
                 metadata={"Name": "Slide RGB", "Channel": {"Name": "Brightfield"}})


#: a time-lapse z-stack's Plane elements, by plane (Z fastest, then C, then T): when, how
#: long and where each was taken (the stage's X, Y and the focus Z)
TCZYX_PLANES = {"DeltaT": [60.0 * (p // 6) + p for p in range(12)], "DeltaTUnit": ["s"] * 12,
                "ExposureTime": [[20.0, 35.0, 5.0][p // 2 % 3] for p in range(12)],
                "PositionX": [1200.5] * 12, "PositionY": [-340.25] * 12,
                "PositionZ": [10.0 + 1.5 * (p % 2) for p in range(12)],
                "PositionZUnit": ["\u00b5m"] * 12}


def write_tczyx(path: Path) -> None:
    """A time-lapse z-stack as tifffile writes it (axes TCZYX: DimensionOrder XYZCT, Z
    fastest), 2 x 3 x 2 planes, named channels, a pixel size of 0.25 µm, a Z step of 1500 nm,
    a time step of 1 min, and each plane's time, exposure and stage position."""
    tifffile.imwrite(path, planes(12).reshape(2, 3, 2, H, W), ome=True, tile=(32, 32),
                     metadata={"axes": "TCZYX", "Name": "Live", "PhysicalSizeX": 0.25,
                               "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1500,
                               "PhysicalSizeZUnit": "nm", "TimeIncrement": 1,
                               "TimeIncrementUnit": "min", "Plane": TCZYX_PLANES,
                               "Channel": {"Name": ["H2B", "GFP", "BF"]}})


def write_planes(path: Path) -> None:
    """OME-XML written by hand: DimensionOrder XYZCT (Z fastest), C x Z x T = 2 x 2 x 2, the
    T=0 planes here in TiffData of this file's UUID (Ki67 first in the file), the T=1 planes
    in another file (its UUID): they are not this file's IFDs 0 and 1."""
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}" '
        'UUID="urn:uuid:11111111-1111-1111-1111-111111111111">'
        '<Image ID="Image:0" Name="Planes"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" '
        f'Type="uint16" SizeX="{W}" SizeY="{H}" SizeC="2" SizeZ="2" SizeT="2">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1" Name="Hoechst"/>'
        '<Channel ID="Channel:0:1" SamplesPerPixel="1" Name="Ki67" Color="-16776961"/>'
        '<TiffData IFD="0" FirstC="1" FirstZ="0" FirstT="0" PlaneCount="2">'
        '<UUID FileName="planes.ome.tif">urn:uuid:11111111-1111-1111-1111-111111111111</UUID>'
        '</TiffData>'
        '<TiffData IFD="2" FirstC="0" FirstZ="0" FirstT="0" PlaneCount="2">'
        '<UUID FileName="planes.ome.tif">urn:uuid:11111111-1111-1111-1111-111111111111</UUID>'
        '</TiffData>'
        '<TiffData IFD="0" FirstC="0" FirstZ="0" FirstT="1" PlaneCount="4">'
        '<UUID FileName="other.ome.tif">urn:uuid:22222222-2222-2222-2222-222222222222</UUID>'
        '</TiffData>'
        '</Pixels></Image></OME>')
    with tifffile.TiffWriter(path) as tw:
        for n, plane in enumerate(planes(4)):
            tw.write(plane, tile=(32, 32), metadata=None, description=xml if n == 0 else None)


def write_planar(path: Path) -> None:
    """A CYX Image of 4 channels stored as one planar-separate page (PlanarConfiguration 2,
    4 samples), as tifffile writes it: one Channel of SamplesPerPixel 4, named and coloured."""
    tifffile.imwrite(path, planes(4), ome=True, planarconfig="separate",
                     photometric="minisblack", tile=(32, 32), metadata={
                         "axes": "CYX", "Name": "Planar",
                         "Channel": {"Name": "Multiplex", "Color": -16776961}})


def write_damaged(path: Path) -> None:
    """An OME-XML that does not parse (an unclosed element), still ending as OME-XML does."""
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}">'
           '<Image ID="Image:0" Name="broken"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
           f'Type="uint16" SizeX="{W}" SizeY="{H}" SizeC="1" SizeZ="1" SizeT="1">'
           '<Channel ID="Channel:0:0" Name="DAPI"></Pixels></Image></OME>')
    tifffile.imwrite(path, planes(1)[0], tile=(32, 32), metadata=None, description=xml)


JOBS: dict[str, dict[str, Any]] = {
    "multi_ome": {"input": "multi.ome.tif", "ops": [{"op": "gaussian_blur", "sigma": 1.0}],
                  "output_options": {"ome": True, "pyramid": True}},
    "multi_plain": {"input": "multi.ome.tif"},
    "rgb_gray_ome": {"input": "multi.ome.tif", "pages": [7], "ops": [{"op": "to_gray"}],
                     "output_options": {"ome": True}},
    "rgb_gray_plain": {"input": "multi.ome.tif", "pages": [7], "ops": [{"op": "to_gray"}]},
    "planes_ome": {"input": "planes.ome.tif", "output_options": {"ome": True}},
    "rgb_bgr_ome": {"input": "multi.ome.tif", "pages": [7], "output_options": {"ome": True},
                    "ops": [{"op": "select_bands", "bands": [2, 1, 0]}]},
    "rgb_same_ome": {"input": "multi.ome.tif", "pages": [7], "output_options": {"ome": True},
                     "ops": [{"op": "select_bands", "bands": [0, 1, 2]}]},
    "damaged_ome": {"input": "damaged.ome.tif", "output_options": {"ome": True}},
    "tczyx_ome": {"input": "tczyx.ome.tif", "output_options": {"ome": True, "pyramid": True}},
    "tczyx_stretched": {"input": "tczyx.ome.tif", "output_options": {"ome": True},
                        "ops": [{"op": "percentile_stretch"}, {"op": "convert", "dtype": "uint8"}]},
    "tczyx_bilevel": {"input": "tczyx.ome.tif", "output_options": {"ome": True, "bilevel": True},
                      "ops": [{"op": "convert", "dtype": "uint8"}, {"op": "otsu_threshold"}]},
    "tczyx_part": {"input": "tczyx.ome.tif", "pages": [0, 1], "output_options": {"ome": True}},
    "tczyx_reversed": {"input": "tczyx.ome.tif", "pages": list(range(11, -1, -1)),
                       "output_options": {"ome": True}},
    "tczyx_down": {"input": "tczyx.ome.tif", "output_options": {"ome": True},
                   "ops": [{"op": "downsample", "factor": 2}]},
    "tczyx_cropped": {"input": "tczyx.ome.tif", "output_options": {"ome": True},
                      "ops": [{"op": "crop", "x": 8, "y": 4, "width": 40, "height": 30}]},
    "damaged_plain": {"input": "damaged.ome.tif"},
    "planar_ome": {"input": "planar.ome.tif", "output_options": {"ome": True},
                   "ops": [{"op": "select_bands", "bands": [0, 1, 2, 3]}]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ome_channels")
    inp = root / "in"
    inp.mkdir()
    write_multi(inp / "multi.ome.tif")
    write_planes(inp / "planes.ome.tif")
    write_damaged(inp / "damaged.ome.tif")
    write_tczyx(inp / "tczyx.ome.tif")
    write_planar(inp / "planar.ome.tif")
    jobs = [{**job, "input": str(inp / job["input"]), "output": str(root / "out" / f"{name}.tif"),
             "tile": 64, "output_options": {"tile": 32, **job.get("output_options", {})}}
            for name, job in JOBS.items()]
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": jobs}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet", "--work", str(root / "work"), "--keep-work"])
    assert (root / "m.report.json").exists(), err.getvalue()
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    return {"work": str(root / "work"), "planar_in": str(inp / "planar.ome.tif"),
            **{name: job["output"] for name, job in zip(JOBS, report["jobs"], strict=True)}}


def ome_images(path: str) -> list[dict[str, Any]]:
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome
        images = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
    return images if isinstance(images, list) else [images]


def page_names(path: str) -> list[str | None]:
    with tifffile.TiffFile(path) as tf:
        return [tf.pages[i].tags.valueof(285) for i in range(len(tf.pages))]


def test_each_ome_image_is_named_after_its_image_and_channel(run):
    """The CYX and ZCYX Images, every plane of each in the job, are one Image each again,
    named as the input's; the one-plane RGB Image's name has its Channel's too."""
    images = ome_images(run["multi_ome"])
    assert [image["Name"] for image in images] == ["Tissue 1", "Stack",
                                                   "Slide RGB - Brightfield"]


def test_the_channels_name_colour_wavelengths_and_fluor_are_kept(run):
    images = ome_images(run["multi_ome"])
    pixels = images[0]["Pixels"]
    assert pixels["SizeC"] == 3 and pixels["PhysicalSizeX"] == pytest.approx(0.5)
    for c, channel in enumerate(pixels["Channel"]):
        assert channel["SamplesPerPixel"] == 1
        for key, values in CHANNELS.items():
            assert channel[key] == values[c], key
    stack = images[1]["Pixels"]
    assert (stack["SizeC"], stack["SizeZ"]) == (2, 2)
    assert [channel["Name"] for channel in stack["Channel"]] == ["a", "b"]


def test_interleaved_samples_keep_their_one_channel(run):
    """An RGB Image has one Channel of 3 samples (OME's SamplesPerPixel): it keeps its name;
    there is no per-sample channel in the OME model to map anything else to."""
    pixels = ome_images(run["multi_ome"])[2]["Pixels"]
    assert pixels["SizeC"] == 3 and pixels["Channel"]["SamplesPerPixel"] == 3
    assert pixels["Channel"]["Name"] == "Brightfield"


def test_a_planar_separate_page_keeps_its_one_channel_of_4_samples(run):
    """A planar-separate page of 4 samples whose OME-XML has one Channel of SamplesPerPixel
    4 (the only Channel it can have: an IFD's samples are one Channel's, and Bio-Formats
    reads SizeC 4 as one plane of 4 samples by it) comes out as that Channel, its name and
    colour kept: interleaved now (PlanarConfiguration 1, Interleaved "true"), the same
    pixels. Its name is the input's only Channel name, not the first of several."""
    with tifffile.TiffFile(run["planar_in"]) as tf:
        page = tf.pages[0]
        assert (page.planarconfig, page.samplesperpixel) == (2, 4)
        given = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]
        assert (given["SamplesPerPixel"], given["Name"]) == (4, "Multiplex")
        pixels = page.asarray()
    (image,) = ome_images(run["planar_ome"])
    assert image["Name"] == "Planar - Multiplex"
    out = image["Pixels"]
    assert (out["SizeC"], out["Interleaved"]) == (4, True)
    assert out["Channel"]["SamplesPerPixel"] == 4
    assert (out["Channel"]["Name"], out["Channel"]["Color"]) == ("Multiplex", -16776961)
    with tifffile.TiffFile(run["planar_ome"]) as tf:
        page = tf.pages[0]
        assert (page.planarconfig, page.samplesperpixel) == (1, 4)
        np.testing.assert_array_equal(page.asarray(), pixels.transpose(1, 2, 0))


def test_the_pyramid_levels_stay_subifds_of_their_named_image(run):
    with tifffile.TiffFile(run["multi_ome"]) as tf:
        assert [(s.name, s.axes) for s in tf.series] == [
            ("Tissue 1", "CYX"), ("Stack", "ZCYX"), ("Slide RGB - Brightfield", "YXS")]
        assert all(len(s.levels) > 1 for s in tf.series)


def test_a_plain_output_page_is_named_by_pagename(run):
    assert page_names(run["multi_plain"]) == MULTI_NAMES
    with tifffile.TiffFile(run["multi_plain"]) as tf:
        assert not tf.is_ome


def test_a_chain_that_changes_the_channel_count_drops_the_channel(run):
    (image,) = ome_images(run["rgb_gray_ome"])
    assert image["Name"] == "Slide RGB"
    channel = image["Pixels"]["Channel"]
    assert channel["SamplesPerPixel"] == 1 and "Name" not in channel
    assert page_names(run["rgb_gray_plain"]) == ["Slide RGB"]


def test_a_selection_of_bands_keeps_the_channel_only_when_it_is_the_channels_bands(run):
    """An OME Channel is a page's samples together: reordered (BGR), it is no longer that
    Channel (dropped, the page named by its Image); all of them in order, it is."""
    (image,) = ome_images(run["rgb_bgr_ome"])
    assert image["Name"] == "Slide RGB" and "Name" not in image["Pixels"]["Channel"]
    (image,) = ome_images(run["rgb_same_ome"])
    assert image["Name"] == "Slide RGB - Brightfield"
    assert image["Pixels"]["Channel"]["Name"] == "Brightfield"


def test_planes_are_mapped_by_tiffdata_not_by_file_order(run):
    images = ome_images(run["planes_ome"])
    assert [image["Name"] for image in images] == PLANE_NAMES
    colours = [image["Pixels"]["Channel"].get("Color") for image in images]
    assert colours == [-16776961, -16776961, None, None]


def test_every_plane_of_an_image_comes_out_as_that_image(run, tmp_path):
    """A job of every plane of a multi-plane OME Image (a CYX, ZCYX or TCZYX stack, a plane
    an IFD) writes that one Image again: its axes, sizes and DimensionOrder, a Channel each
    with its name, its pixel size, the pixels in the input's plane order and a SubIFD
    pyramid under each plane. Before, each plane was an Image of its own (12 series of one
    plane; QuPath and Bio-Formats showed 12 images, the Z and T structure gone)."""
    src = tmp_path / "tczyx.ome.tif"
    write_tczyx(src)
    with tifffile.TiffFile(src) as tf:
        want, order = tf.series[0].asarray(), tf.series[0].pages[0].parent.ome_metadata
    with tifffile.TiffFile(run["tczyx_ome"]) as tf:
        (series,) = tf.series
        assert (series.name, series.axes, series.shape) == ("Live", "TCZYX", (2, 3, 2, H, W))
        assert np.array_equal(series.asarray(), want)
        assert [level.shape for level in series.levels] == [
            (2, 3, 2, H, W), (2, 3, 2, H // 2, W // 2), (2, 3, 2, H // 4, W // 4)]
    (image,) = ome_images(run["tczyx_ome"])
    pixels = image["Pixels"]
    assert 'DimensionOrder="XYZCT"' in order and pixels["DimensionOrder"] == "XYZCT"
    assert (pixels["SizeC"], pixels["SizeZ"], pixels["SizeT"]) == (3, 2, 2)
    assert [c["Name"] for c in pixels["Channel"]] == ["H2B", "GFP", "BF"]
    assert pixels["PhysicalSizeX"] == pytest.approx(0.25)
    assert pixels["TiffData"] == {"IFD": 0, "PlaneCount": 12}
    # per channel ops (a percentile stretch of each plane, its own statistics) keep the Image
    (image,) = ome_images(run["tczyx_stretched"])
    assert image["Pixels"]["Type"] == "uint8" and image["Pixels"]["SizeZ"] == 2
    (image,) = ome_images(run["tczyx_bilevel"])  # (1-bit pages: OME's Type "bit")
    assert image["Pixels"]["Type"] == "bit" and image["Pixels"]["SizeT"] == 2
    # some of its planes, or its planes in another order, are an Image a plane, as before
    assert [i["Name"] for i in ome_images(run["tczyx_part"])] == ["Live - H2B - Z=0 - T=0",
                                                                 "Live - H2B - Z=1 - T=0"]
    assert len(ome_images(run["tczyx_reversed"])) == 12


def test_an_imagej_hyperstack_comes_out_as_one_image_of_its_axes(tmp_path, capsys):
    """An ImageJ hyperstack (TZCYX: 2 frames, 3 slices, 2 channels, a page a plane, its Z
    step ``spacing`` and frame interval ``finterval`` in its description) with an OME
    output is one Image of SizeT 2, SizeZ 3, SizeC 2, named after the file, its pixel size,
    Z step and time step kept, the pixels in the input's order. Before, it became 12 Images
    "page 0" .. "page 11" and lost the T/Z/C layout and the Z step without a word. Its 1-band
    pages tell ``select_bands`` which page is the channel (at the page's Z and T)."""
    src = tmp_path / "ij.tif"
    stack = np.random.default_rng(4).integers(0, 255, (2, 3, 2, H, W), np.uint8)
    tifffile.imwrite(src, stack, imagej=True, resolution=(5, 5), metadata={
        "axes": "TZCYX", "unit": "um", "spacing": 0.8, "finterval": 5})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": str(src), "output": str(tmp_path / "out.ome.tif"),
         "ops": [{"op": "gaussian_blur", "sigma": 1}], "output_options": {"ome": True}},
        {"input": str(src), "output": str(tmp_path / "copy.ome.tif"),
         "output_options": {"ome": True}}]}))
    assert cli.main(["run", str(manifest), "--quiet", "--no-contact-sheet"]) == 0
    with tifffile.TiffFile(tmp_path / "copy.ome.tif") as tf:
        (series,) = tf.series
        assert (series.axes, series.shape) == ("TZCYX", (2, 3, 2, H, W))
        assert np.array_equal(series.asarray(), stack)
    (image,) = ome_images(str(tmp_path / "out.ome.tif"))
    pixels = image["Pixels"]
    assert image["Name"] == "ij.tif"
    assert (pixels["SizeT"], pixels["SizeZ"], pixels["SizeC"]) == (2, 3, 2)
    assert pixels["PhysicalSizeX"] == pytest.approx(0.2)
    assert {k: pixels.get(k) for k in ("PhysicalSizeZ", "PhysicalSizeZUnit", "TimeIncrement",
                                       "TimeIncrementUnit")} == {
        "PhysicalSizeZ": 0.8, "PhysicalSizeZUnit": "\u00b5m", "TimeIncrement": 5,
        "TimeIncrementUnit": "s"}
    assert cli.main(["inspect", str(src), "--ops",
                     '[{"op": "select_bands", "bands": [1]}]']) == 1
    assert ('this file stores its channels as pages: "pages": [3] picks channel 1\n'
            in capsys.readouterr().out)


def test_an_imagej_stacks_steps_take_its_units_and_rgb_or_one_plane_is_no_stack(tmp_path):
    """A Z step in nm and a frame interval in minutes keep their units; an RGB ImageJ stack
    (3 samples a page: the channels are no pages) and a single plane are no stack."""
    src = tmp_path / "ij.tif"
    tifffile.imwrite(src, np.zeros((2, 2, H, W), np.uint8), imagej=True, metadata={
        "axes": "TZYX", "unit": "nm", "spacing": 300, "finterval": 2, "tunit": "min"})
    stack = read_infos(str(src), [3])[0].metadata["ome"]["stack"]
    assert stack == {"image": 0, "plane": 3, "planes": 4, "axes": "TZC", "sizes": [2, 2, 1],
                     "title": "ij.tif", "pixels": {
                         "PhysicalSizeZ": "300", "PhysicalSizeZUnit": "nm",
                         "TimeIncrement": "2", "TimeIncrementUnit": "min"}}
    tifffile.imwrite(src, np.zeros((3, H, W, 3), np.uint8), imagej=True)
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((H, W), np.uint8), imagej=True)
    assert "ome" not in read_infos(str(src), [1])[0].metadata
    assert "ome" not in read_infos(str(tmp_path / "one.tif"), [0])[0].metadata


def _planes_by_czt(pixels: dict[str, Any]) -> dict[tuple[int, int, int], dict[str, Any]]:
    return {(p.pop("TheC"), p.pop("TheZ"), p.pop("TheT")): p
            for p in map(dict, pixels["Plane"])}


@pytest.mark.parametrize("name", ["tczyx_ome", "tczyx_down", "tczyx_cropped"])
def test_a_kept_stack_keeps_its_z_and_time_steps_and_its_planes(run, tmp_path, name):
    """The Image of a stack written whole keeps its Z step and time step (and their units)
    whatever the per-plane ops, its pixel size scaled by a downsample, and each plane's
    Plane (DeltaT, ExposureTime, PositionZ; PositionX/Y, where its pixels are on the stage,
    while no op moves them: not after a crop). They were dropped: a z-stack came out with
    no Z spacing, a time-lapse with no time."""
    src = tmp_path / "tczyx.ome.tif"
    write_tczyx(src)
    with tifffile.TiffFile(src) as tf:
        want = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
    assert len(want["Plane"]) == 12 and want["PhysicalSizeZUnit"] == "nm"
    (image,) = ome_images(run[name])
    pixels = image["Pixels"]
    kept = ("PhysicalSizeZ", "PhysicalSizeZUnit", "TimeIncrement", "TimeIncrementUnit")
    assert {k: pixels.get(k) for k in kept} == {k: want[k] for k in kept} == {
        "PhysicalSizeZ": 1500, "PhysicalSizeZUnit": "nm", "TimeIncrement": 1,
        "TimeIncrementUnit": "min"}
    assert pixels["PhysicalSizeX"] == pytest.approx(0.5 if name == "tczyx_down" else 0.25)
    got, planes_in = _planes_by_czt(pixels), _planes_by_czt(want)
    if name == "tczyx_cropped":
        for plane in planes_in.values():
            for key in ("PositionX", "PositionY"):
                del plane[key]
    assert got == planes_in and len(got) == 12
    assert got[(1, 1, 1)] == {"DeltaT": 69.0, "DeltaTUnit": "s", "ExposureTime": 35.0,
                              "PositionZ": 11.5, "PositionZUnit": "\u00b5m",
                              **({} if name == "tczyx_cropped" else
                                 {"PositionX": 1200.5, "PositionY": -340.25})}
    # an Image a plane (some of the stack's planes) has no Z or time step of its own
    assert all("PhysicalSizeZ" not in i["Pixels"] for i in ome_images(run["tczyx_part"]))


def test_a_damaged_ome_xml_still_runs_without_names(run):
    (image,) = ome_images(run["damaged_ome"])
    assert image["Name"] == "page 0" and "Name" not in image["Pixels"]["Channel"]
    assert page_names(run["damaged_plain"]) == [None]


#: the sha256 of each stack output's OME-XML (its UUIDs blanked), as merge wrote it before it
#: made each page's tags once (read by tifffile): merge's OME-XML stays byte for byte
OME_XML_SHA256 = {
    "multi_ome":
        "946d92112f05ad44896c068fd8f2ad5c76ebeb37ba6739647949922d656684de",
    "tczyx_ome":
        "6aef5c06db30138be7a2e4e4b6d3be6f8bf230458e8af260335bf8b1135c8fce",
    "tczyx_reversed":
        "54b95243d8fdf1964cf5622070c8dbe06b3f78f6b7ed847ffd99b98a32fe0f04",
    "tczyx_cropped":
        "f4abdbf11205ea16b4c11123969a98acffaec7dece40cb7b8f5bd8e1d02a1305",
}
_UUID = re.compile(r"urn:uuid:[0-9a-f-]{36}")


def _ome_xml_sha256(path: str) -> str:
    with tifffile.TiffFile(path) as tf:
        return hashlib.sha256(_UUID.sub("uuid", tf.pages.first.description).encode()).hexdigest()


@pytest.mark.parametrize("name", list(OME_XML_SHA256))
def test_the_ome_xml_of_a_stack_output_is_as_merge_wrote_it_before(run, name):
    assert _ome_xml_sha256(run[name]) == OME_XML_SHA256[name]


@pytest.mark.parametrize("name", ["multi_ome", "tczyx_ome"])
def test_merge_makes_each_pages_tags_once(run, name, monkeypatch, tmp_path):
    """Merge makes each output page's tags once (for its IFD), and the OME-XML of its
    stacks (``ome_xml``) takes their OME metadata from them: it made them again, every
    page's and a Channel's a plane. The file is the one the run published."""
    forget_plans()
    plan = load_plan(layout.plan_file(layout.job_dir(run["work"], list(JOBS).index(name))))
    assert merge_mod.ome_stacks(plan)
    made = []
    page_tags = merge_mod._page_tags
    monkeypatch.setattr(merge_mod, "_page_tags",
                        lambda plan, page, *derived: made.append(page.info.index)
                        or page_tags(plan, page, *derived))
    out = tmp_path / "again.tif"
    compose(merge_mod.output_pieces(plan), str(out))
    assert sorted(made) == sorted(page.info.index for page in plan.pages)
    assert _ome_xml_sha256(str(out)) == OME_XML_SHA256[name]
    blank = re.compile(rb"urn:uuid:[0-9a-f-]{36}")
    assert blank.sub(b"", out.read_bytes()) == blank.sub(b"", Path(run[name]).read_bytes())


# --- reading, without the engine ------------------------------------------------------


def test_the_plan_holds_each_pages_plane(tmp_path):
    path = tmp_path / "multi.ome.tif"
    write_multi(path)
    infos = read_infos(str(path), None)
    ome = [info.metadata["ome"] for info in infos]
    assert [o["name"] for o in ome] == MULTI_NAMES
    assert ome[1]["channel"]["Name"] == "CD3" and ome[1]["channel"]["Color"] == "-16776961"
    assert ome[7]["samples"] == 3 and ome[7]["channel"] == {"Name": "Brightfield"}


def test_a_damaged_ome_xml_gives_no_plane_and_another_files_planes_are_skipped(tmp_path):
    damaged = tmp_path / "damaged.ome.tif"
    write_damaged(damaged)
    (info,) = read_infos(str(damaged), None)
    assert "ome" not in info.metadata
    other = tmp_path / "planes.ome.tif"  # its T=1 planes are another file's IFDs
    write_planes(other)
    assert [i.metadata["ome"]["name"] for i in read_infos(str(other), None)] == PLANE_NAMES


def test_an_output_read_again_keeps_its_names_and_its_levels_are_no_planes(run):
    """tiffpipe's OME output, processed again: its Images are named by image and channel
    already (not "Tissue 1 - DAPI - DAPI"); a SubIFD level has its page's index but is no
    plane of the OME-XML."""
    infos = read_infos(run["multi_ome"], None)
    assert [info.metadata["ome"]["name"] for info in infos] == MULTI_NAMES
    with tifffile.TiffFile(run["multi_ome"]) as tf:
        level = tf.series[1].levels[1].pages[0]
        assert level.is_subifd and level.index == 1
        assert "ome" not in page_info(level, run["multi_ome"], 1).metadata


def test_an_image_whose_pixels_are_not_in_the_tiff_claims_no_ifd(tmp_path):
    """An Image whose Pixels hold BinData (its pixels in the XML: a label, a thumbnail) or
    are MetadataOnly has no plane in the TIFF. It was given the default TiffData (every
    plane from IFD 0), and as the last range starting at IFD 0 it won IFD 0: page 0 named
    after it ("Label - label") and page 1 named after nothing."""
    def image(n: int, name: str, body: str, channels: int) -> str:
        return (f'<Image ID="Image:{n}" Name="{name}"><Pixels ID="Pixels:{n}" '
                f'DimensionOrder="XYCZT" Type="uint16" SizeX="{W}" SizeY="{H}" '
                f'SizeC="{channels}" SizeZ="1" SizeT="1">'
                + "".join(f'<Channel ID="Channel:{n}:{c}" SamplesPerPixel="1" '
                          f'Name="{name.lower()}{c}"/>' for c in range(channels))
                + body + '</Pixels></Image>')

    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}">'
           + image(0, "Tissue", '<TiffData IFD="0" PlaneCount="2"/>', 2)
           + image(1, "Label", '<BinData BigEndian="false" Length="0"></BinData>', 1)
           + image(2, "Notes", '<MetadataOnly/>', 1) + '</OME>')
    path = tmp_path / "bindata.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        for n, plane in enumerate(planes(2)):
            tw.write(plane, tile=(32, 32), metadata=None, description=xml if n == 0 else None)
    names = [info.metadata.get("ome", {}).get("name") for info in read_infos(str(path), None)]
    assert names == ["Tissue - tissue0", "Tissue - tissue1"]


def test_a_channel_without_samplesperpixel_has_the_samples_sizec_leaves_it(tmp_path):
    """SamplesPerPixel is optional in OME; the Channels share SizeC out. An RGB Image of two
    Z planes written with SizeC="3" and one Channel without it was read as 3 planes of one
    sample a Z: the second page was taken for C=1, Z=0, both pages named "Slide - Z=0" and
    the Channel dropped (1 sample is not the page's 3)."""
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}"><Image ID="Image:0" '
           f'Name="Slide"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
           f'SizeX="{W}" SizeY="{H}" SizeC="3" SizeZ="2" SizeT="1">'
           '<Channel ID="Channel:0:0" Name="Brightfield"/><TiffData/></Pixels></Image></OME>')
    path = tmp_path / "rgb.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        for z in range(2):
            tw.write(np.full((H, W, 3), z, np.uint8), photometric="rgb", tile=(32, 32),
                     metadata=None, description=xml if z == 0 else None)
    ome = [info.metadata["ome"] for info in read_infos(str(path), None)]
    assert [o["name"] for o in ome] == ["Slide - Brightfield - Z=0", "Slide - Brightfield - Z=1"]
    assert [o["samples"] for o in ome] == [3, 3]
    assert [o["channel"] for o in ome] == [{"Name": "Brightfield"}] * 2


class _CountedMetadata(dict):
    """A page's metadata that counts the reads of its "ome" (the stack's plane)."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        if key == "ome":
            type(self).reads += 1
        return super().get(key, default)


def test_a_select_bands_refusal_of_every_plane_reads_the_stack_once(tmp_path):
    """A stack of channels as pages (an ImageJ ZCYX of 100 Z x 2 C: 200 pages) whose every
    page a ``select_bands`` refuses: each refusal names its channel's page, and the plan
    looks the stack's planes up once, not once a refusal (which read all 200 pages' stack
    entries 200 times, 10^8 for 5 x 2,000 planes: PlanJob and ``validate --inputs``
    seemed to hang)."""
    src = tmp_path / "ij.tif"
    tifffile.imwrite(src, np.zeros((100, 2, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "ZCYX"})
    infos = [dataclasses.replace(info, metadata=_CountedMetadata(info.metadata))
             for info in read_infos(str(src), list(range(200)))]
    spec = JobSpec(input=str(src), output=str(tmp_path / "out.tif"),
                   ops=[{"op": "select_bands", "bands": [1]}])
    _CountedMetadata.reads = 0
    _, problems = make_plan(0, spec, infos, str(tmp_path / "work"), 0.0)
    assert len(problems) == 200
    assert problems[4].text.endswith(
        'this file stores its channels as pages: "pages": [5] picks channel 1')
    assert _CountedMetadata.reads <= 3 * len(infos), _CountedMetadata.reads
