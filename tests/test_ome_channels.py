"""An input OME-TIFF's channel identity read into the plan: each page that is a plane of
an OME Image (its TiffData) gets its name (Image, Channel, Z/T) and its Channel's
attributes, from the OME-XML parsed once a file. Real OME-TIFFs written by tifffile and by
hand (TiffData IFD/PlaneCount/FirstC/FirstZ/FirstT and UUID, a damaged OME-XML)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.adapters.tiff_read import read_infos

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


def write_damaged(path: Path) -> None:
    """An OME-XML that does not parse (an unclosed element), still ending as OME-XML does."""
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}">'
           '<Image ID="Image:0" Name="broken"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
           f'Type="uint16" SizeX="{W}" SizeY="{H}" SizeC="1" SizeZ="1" SizeT="1">'
           '<Channel ID="Channel:0:0" Name="DAPI"></Pixels></Image></OME>')
    tifffile.imwrite(path, planes(1)[0], tile=(32, 32), metadata=None, description=xml)


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
