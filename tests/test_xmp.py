"""XMP (tag 700) through ops that move or resize a page: rewritten, not dropped, so an
archive's access copies keep their rights and credit metadata (``dc:rights``,
``dc:creator``, ``photoshop:Credit``, ...) with their size, resolution and Orientation
properties made true again (``pipeline/core/xmp.py``, ``metadata.output_xmp``). Real TIFFs
written by tifffile go through one ``tiffpipe run``; the packets are read back with tifffile
and Pillow and checked with ``xml.etree``."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from pipeline import cli
from pipeline.core.xmp import Form, Reshape, rewritten

pytestmark = pytest.mark.timeout(240)

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
TIFF = "{http://ns.adobe.com/tiff/1.0/}"
EXIF = "{http://ns.adobe.com/exif/1.0/}"
CRS = "{http://ns.adobe.com/camera-raw-settings/1.0/}"
DC = "{http://purl.org/dc/elements/1.1/}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
PHOTOSHOP = "{http://ns.adobe.com/photoshop/1.0/}"
XMP_MM = "{http://ns.adobe.com/xap/1.0/mm/}"
ST_EVT = "{http://ns.adobe.com/xap/1.0/sType/ResourceEvent#}"
ST_REF = "{http://ns.adobe.com/xap/1.0/sType/ResourceRef#}"
#: the page: 120 x 80, 300 x 200 pixels per inch, Orientation 6 (as the packets say)
WIDTH, HEIGHT = 120, 80
PADDING = (" " * 99 + "\n") * 20
#: as Photoshop and Lightroom write it: properties as attributes of rdf:Description, the
#: rights and credits as arrays, Camera Raw's settings (a crop of the original among them)
ADOBE = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
         '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 9.1-c002">\n'
         ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
         '  <rdf:Description rdf:about=""\n'
         '    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"\n'
         '    xmlns:exif="http://ns.adobe.com/exif/1.0/"\n'
         '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
         '    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"\n'
         '    xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/"\n'
         '    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"\n'
         '   tiff:ImageWidth="120" tiff:ImageLength="80" tiff:Orientation="6"\n'
         '   tiff:XResolution="300/1" tiff:YResolution="200/1" tiff:ResolutionUnit="2"\n'
         '   exif:PixelXDimension="120" exif:PixelYDimension="80"\n'
         '   exif:FocalPlaneXResolution="4000/1" exif:FocalPlaneYResolution="3000/1"\n'
         '   exif:FocalPlaneResolutionUnit="3" exif:ExposureTime="1/125"\n'
         '   photoshop:Credit="Courtesy of the City Archive" xmpRights:Marked="True"\n'
         '   crs:HasCrop="True" crs:CropTop="0.1" crs:CropLeft="0.05">\n'
         '   <dc:rights>\n    <rdf:Alt>\n'
         '     <rdf:li xml:lang="x-default">\u00a9 1931 City Archive &amp; Library</rdf:li>\n'
         '     <rdf:li xml:lang="de">\u00a9 1931 Stadtarchiv</rdf:li>\n'
         '    </rdf:Alt>\n   </dc:rights>\n'
         '   <dc:creator>\n    <rdf:Seq>\n     <rdf:li>Anna Lindqvist</rdf:li>\n'
         '    </rdf:Seq>\n   </dc:creator>\n'
         '   <dc:title>\n    <rdf:Alt>\n     <rdf:li xml:lang="x-default">Harbour, 1931</rdf:li>\n'
         '    </rdf:Alt>\n   </dc:title>\n'
         '   <crs:ToneCurvePV2012>\n    <rdf:Seq>\n     <rdf:li>0, 0</rdf:li>\n'
         '     <rdf:li>255, 255</rdf:li>\n    </rdf:Seq>\n   </crs:ToneCurvePV2012>\n'
         '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n'
         + PADDING + '<?xpacket end="w"?>').encode()
#: properties as child elements, other prefixes, no xpacket wrapper (some writers omit it)
CHILDREN = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:t="http://ns.adobe.com/tiff/1.0/" '
            'xmlns:exif="http://ns.adobe.com/exif/1.0/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
            'xmlns:Iptc4xmpCore="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/">\n'
            ' <t:ImageWidth>120</t:ImageWidth>\n <t:ImageLength>80</t:ImageLength>\n'
            ' <t:Orientation>6</t:Orientation>\n'
            ' <t:XResolution>300/1</t:XResolution>\n <t:YResolution>200/1</t:YResolution>\n'
            ' <t:ResolutionUnit>2</t:ResolutionUnit>\n'
            ' <exif:PixelXDimension>120</exif:PixelXDimension>\n'
            ' <exif:PixelYDimension>80</exif:PixelYDimension>\n'
            ' <exif:SubjectArea><rdf:Seq><rdf:li>60</rdf:li><rdf:li>40</rdf:li></rdf:Seq>'
            '</exif:SubjectArea>\n'
            ' <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">\u00a9 1931 City Archive'
            '</rdf:li></rdf:Alt></dc:rights>\n'
            ' <dc:creator><rdf:Seq><rdf:li>Anna Lindqvist</rdf:li></rdf:Seq></dc:creator>\n'
            ' <photoshop:Credit>Courtesy of the City Archive</photoshop:Credit>\n'
            ' <Iptc4xmpCore:CreatorContactInfo rdf:parseType="Resource">'
            '<Iptc4xmpCore:CiEmailWork>archive@example.org</Iptc4xmpCore:CiEmailWork>'
            '</Iptc4xmpCore:CreatorContactInfo>\n'
            '</rdf:Description></rdf:RDF></x:xmpmeta>').encode()
#: a Description never closed
INVALID = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
           '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
           'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
           '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()
PACKETS = {"adobe": ADOBE, "children": CHILDREN, "invalid": INVALID}
OPS: dict[str, list[dict[str, Any]]] = {
    "crop": [{"op": "crop", "x": 10, "y": 20, "width": 50, "height": 40}],
    "down": [{"op": "downsample", "factor": 2}],
    "rot90": [{"op": "rotate", "angle": 90}],
    "blur": [{"op": "gaussian_blur", "sigma": 1.5}],
}
#: (width, height, XResolution, YResolution, FocalPlaneX, FocalPlaneY) of each output
SIZES = {"crop": (50, 40, "300/1", "200/1", "4000/1", "3000/1"),
         "down": (60, 40, "150/1", "100/1", "2000/1", "1500/1"),
         "rot90": (80, 120, "200/1", "300/1", "3000/1", "4000/1")}
#: the properties the ops may change: left out when comparing the rest
GEOMETRY = (TIFF, EXIF, CRS)
#: and those that say an output is a derivative (a new InstanceID, a History event)
CHANGED = (*GEOMETRY, XMP_MM)


def _write(path: Path, packet: bytes) -> None:
    rng = np.random.default_rng(3)
    tifffile.imwrite(path, rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
                     photometric="rgb", tile=(32, 32), metadata=None,
                     resolution=((300, 1), (200, 1)), resolutionunit=2,
                     extratags=[(274, "H", 1, 6, True),
                                (700, "B", len(packet), packet, True)])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("xmp")
    jobs, names = [], []
    for kind, packet in PACKETS.items():
        _write(root / f"{kind}.tif", packet)
        for op, ops in OPS.items():
            names.append((kind, op))
            jobs.append({"input": str(root / f"{kind}.tif"), "ops": ops, "tile": 64,
                         "output": str(root / "out" / f"{kind}_{op}.tif"),
                         "output_options": {"tile": 32}})
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": jobs}))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet"])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    return dict(zip(names, report["jobs"], strict=True))


def _xmp(path: str) -> bytes | None:
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages.first.tags.get(700)
        return None if tag is None else bytes(tag.value)


def _description(packet: bytes) -> ET.Element:
    root = ET.fromstring(packet[packet.index(b"<x:xmpmeta"):packet.index(b"</x:xmpmeta>") + 12])
    return root.find(f"{RDF}RDF/{RDF}Description")


def _value(desc: ET.Element, key: str) -> str | None:
    """A property, an attribute or a child element."""
    if key in desc.attrib:
        return desc.attrib[key]
    child = desc.find(key)
    return None if child is None else child.text


def _rest(element: ET.Element, left_out: tuple[str, ...] = GEOMETRY) -> list[Any]:
    """Every element and attribute but those of the namespaces ``left_out`` (and what they
    hold; default: the geometric ones), in document order."""
    out = [(element.tag, sorted((k, v) for k, v in element.attrib.items()
                                if not k.startswith(left_out)), (element.text or "").strip())]
    for child in element:
        if not child.tag.startswith(left_out):
            out += _rest(child, left_out)
    return out


@pytest.mark.parametrize("op", ["crop", "down", "rot90"])
@pytest.mark.parametrize("kind", ["adobe", "children"])
def test_xmp_is_rewritten_for_the_new_geometry_and_keeps_the_rights(run, kind, op):
    job = run[(kind, op)]
    packet = _xmp(job["output"])
    assert packet is not None, job  # before: dropped
    desc, source = _description(packet), _description(PACKETS[kind])
    width, height, xres, yres, fx, fy = SIZES[op]
    with tifffile.TiffFile(job["output"]) as tf:
        page = tf.pages.first
        assert (page.imagewidth, page.imagelength) == (width, height)
        # the XMP says what the TIFF tags say
        assert f"{page.tags[282].value[0]}/{page.tags[282].value[1]}" == xres
        assert f"{page.tags[283].value[0]}/{page.tags[283].value[1]}" == yres
        orientation = page.tags.valueof(274)
    for key, want in ((f"{TIFF}ImageWidth", width), (f"{TIFF}ImageLength", height),
                      (f"{EXIF}PixelXDimension", width), (f"{EXIF}PixelYDimension", height),
                      (f"{TIFF}XResolution", xres), (f"{TIFF}YResolution", yres),
                      (f"{TIFF}ResolutionUnit", "2")):
        assert _value(desc, key) == str(want), key
    if kind == "adobe":
        assert _value(desc, f"{EXIF}FocalPlaneXResolution") == fx
        assert _value(desc, f"{EXIF}FocalPlaneYResolution") == fy
        assert _value(desc, f"{EXIF}FocalPlaneResolutionUnit") == "3"
        assert _value(desc, f"{EXIF}ExposureTime") == "1/125"  # a camera fact: kept
        # Camera Raw's crop of the original, which Adobe's tools would apply again: gone
        assert not [k for k in desc.attrib if k.startswith(CRS)]
        assert not [e for e in desc if e.tag.startswith(CRS)]
        assert len(packet) == len(ADOBE)  # the padding takes up the difference
        assert packet.startswith(ADOBE[:ADOBE.index(b"<x:xmpmeta")])
        assert packet.endswith(b'\n<?xpacket end="w"?>')
    else:
        assert desc.find(f"{EXIF}SubjectArea") is None  # a position on the original
        assert packet.startswith(b"<x:xmpmeta") and b"<t:ImageWidth>" in packet  # its prefix
    # Orientation goes with the tag: a rotation stores the pixels as they are shown
    assert orientation == (None if op == "rot90" else 6)
    assert _value(desc, f"{TIFF}Orientation") == (None if op == "rot90" else "6")
    # the rights, credits, titles: as they were
    assert _rest(desc, CHANGED) == _rest(source, CHANGED)
    rights = desc.find(f"{DC}rights/{RDF}Alt/{RDF}li")
    assert rights.get(XML_LANG) == "x-default" and rights.text.startswith("\u00a9 1931 City")
    assert [li.text for li in desc.iterfind(f"{DC}creator/{RDF}Seq/{RDF}li")] == [
        "Anna Lindqvist"]
    assert _value(desc, f"{PHOTOSHOP}Credit") == "Courtesy of the City Archive"
    # Pillow reads the same packet
    with Image.open(job["output"]) as im:
        assert im.info["xmp"] == packet
    # the report says what was done
    said = job["message"]
    assert said.startswith("XMP of page 0: rewritten: updated tiff:ImageWidth, "
                           "tiff:ImageLength"), said
    if op != "crop":
        assert "tiff:XResolution, tiff:YResolution" in said
    assert ("tiff:Orientation" in said) == (op == "rot90")
    assert ("crs:* (4 properties" in said) == (kind == "adobe")
    assert ("exif:SubjectArea" in said) == (kind == "children")


def test_pillow_getxmp_reads_the_rewritten_packet(run):
    pytest.importorskip("defusedxml")  # (Pillow's getxmp needs it)
    with Image.open(run[("adobe", "rot90")]["output"]) as im:
        desc = im.getxmp()["xmpmeta"]["RDF"]["Description"]
    assert desc["ImageWidth"] == "80" and desc["ImageLength"] == "120"
    assert desc["creator"]["Seq"]["li"] == "Anna Lindqvist"


@pytest.mark.parametrize("kind", list(PACKETS))
def test_a_value_op_keeps_the_packet_but_stamps_it_a_derivative(run, kind):
    job = run[(kind, "blur")]
    packet = _xmp(job["output"])
    if kind == "invalid":  # (unread: kept as it is)
        assert packet == PACKETS[kind]
    else:  # every property as it was, and a new InstanceID and History event
        desc = _description(packet)
        assert _rest(desc, (XMP_MM,)) == _rest(_description(PACKETS[kind]), (XMP_MM,))
        assert desc.get(f"{XMP_MM}InstanceID").startswith("xmp.iid:")
        assert desc.find(f"{XMP_MM}History/{RDF}Seq/{RDF}li").get(
            f"{ST_EVT}parameters") == "gaussian_blur sigma=1.5"
    assert not job.get("message")  # (nothing said of a packet kept: every one is stamped)


@pytest.mark.parametrize("op", ["crop", "down", "rot90"])
def test_a_packet_that_does_not_parse_is_dropped_and_said_so(run, op):
    job = run[("invalid", op)]
    assert _xmp(job["output"]) is None
    assert job["message"].startswith("XMP of page 0: dropped: it does not parse as XML ("), \
        job["message"]


def test_inspect_says_what_a_chain_does_with_the_xmp(run, capsys: pytest.CaptureFixture):
    path = str(Path(run[("adobe", "crop")]["input"]))
    turned = ("; XMP rewritten: updated tiff:ImageWidth, tiff:ImageLength, tiff:XResolution, "
              "tiff:YResolution, exif:PixelXDimension, exif:PixelYDimension, "
              "exif:FocalPlaneXResolution, exif:FocalPlaneYResolution; removed "
              "tiff:Orientation, crs:* (4 properties: Camera Raw's settings of the original)")
    for ops, said in (('[{"op": "rotate", "angle": 90}]', turned),
                      ('[{"op": "gaussian_blur", "sigma": 1}]',
                       ("; XMP kept, stamped a derivative: a new xmpMM:InstanceID, an "
                        "xmpMM:History event (converted)"))):
        assert cli.main(["inspect", path, "--ops", ops]) == 0
        out = capsys.readouterr().out
        assert "ops: run -> " in out and said in out, out
    bad = str(Path(run[("invalid", "crop")]["input"]))
    assert cli.main(["inspect", bad, "--ops", OPS_JSON_DOWN, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    page = doc["files"][0]["pages"][0]
    assert page["ops"]["xmp"].startswith("dropped: it does not parse as XML")


OPS_JSON_DOWN = json.dumps(OPS["down"])


def test_a_packet_over_the_cap_is_said_dropped(tmp_path: Path):
    """Over 16 MiB (XMP_MAX; one over 64 KiB is read from the input: below) a packet is
    dropped, and the job's note says why and what to do."""
    from pipeline.adapters.metadata import XMP_MAX

    packet = ADOBE.replace(PADDING.encode(), b" " * XMP_MAX)
    _write(tmp_path / "big.tif", packet)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [{"input": str(tmp_path / "big.tif"),
                                              "output": str(tmp_path / "out.tif")}]}))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["run", str(manifest), "--quiet"]) == 0
    (job,) = json.loads((tmp_path / "m.report.json").read_text())["jobs"]
    assert _xmp(job["output"]) is None
    assert job["message"] == (f"XMP of page 0: dropped: {len(packet):,} bytes, over the 16 MiB "
                              "an XMP packet may hold (or past the file's end): strip its "
                              "edit history (exiftool -XMP-xmpMM:History= FILE) and run the "
                              "job again")


def test_a_packet_with_nothing_to_update_is_kept_byte_for_byte():
    packet = CHILDREN.replace(b"<t:", b"<other:").replace(b"</t:", b"</other:").replace(
        b"xmlns:t=", b"xmlns:other=").replace(b"http://ns.adobe.com/tiff/1.0/", b"urn:x")
    packet = packet.replace(b"exif:SubjectArea", b"other:SubjectArea").replace(
        b"exif:PixelX", b"other:PixelX").replace(b"exif:PixelY", b"other:PixelY")
    done = rewritten(packet, Reshape(80, 120, True, True))
    assert done.packet == packet and done.said.startswith("kept as is")


def test_a_property_where_a_value_was_expected_is_removed_and_padding_grows_if_need_be():
    packet = CHILDREN.replace(b"<t:ImageWidth>120</t:ImageWidth>",
                              b'<t:ImageWidth rdf:parseType="Resource"><rdf:value>120'
                              b"</rdf:value></t:ImageWidth>")
    done = rewritten(packet, Reshape(60, 40, False, False, (Fraction(1, 2), Fraction(1, 2)),
                                     ((150, 1), (100, 1)), 2))
    desc = _description(done.packet)
    assert desc.find(f"{TIFF}ImageWidth") is None and _value(desc, f"{TIFF}ImageLength") == "40"
    assert "removed tiff:ImageWidth" in done.said


#: how Photoshop states an RGB page's samples (the page ``formed`` writes: RGB, 8 bits,
#: uncompressed)
FORM = (ADOBE[:ADOBE.index(b"   tiff:ImageWidth")].decode() + (  # (its namespaces)
        '   tiff:SamplesPerPixel="3" tiff:PhotometricInterpretation="2"\n'
        '   tiff:Compression="1" tiff:PlanarConfiguration="1"\n'
        '   photoshop:ColorMode="3" photoshop:Credit="Courtesy of the City Archive"\n'
        '   photoshop:ICCProfile="sRGB IEC61966-2.1" exif:ColorSpace="1">\n'
        '   <tiff:BitsPerSample>\n    <rdf:Seq>\n     <rdf:li>8</rdf:li>\n'
        '     <rdf:li>8</rdf:li>\n     <rdf:li>8</rdf:li>\n    </rdf:Seq>\n'
        '   </tiff:BitsPerSample>\n'
        '   <dc:creator>\n    <rdf:Seq>\n     <rdf:li>Anna Lindqvist</rdf:li>\n'
        '    </rdf:Seq>\n   </dc:creator>\n'
        '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n'
        + PADDING + '<?xpacket end="w"?>')).encode()
#: the chains and output options that change how the samples are stored, and what the
#: packet then says: (BitsPerSample, SamplesPerPixel, Photometric, Compression, ColorMode)
FORMS: dict[str, tuple[list[dict[str, Any]], dict[str, Any], tuple[Any, ...]]] = {
    "gray": ([{"op": "to_gray"}], {"compression": "zstd"}, (["8"], "1", "1", "50000", "1")),
    "uint16": ([{"op": "convert", "dtype": "uint16"}], {"compression": "deflate"},
               (["16"] * 3, "3", "2", "8", "3")),
    "bands": ([{"op": "select_bands", "bands": [0, 1]}], {"compression": "none"},
              (["8"] * 2, "2", "1", "1", "1")),  # (gray and an extra sample)
    "bilevel": ([{"op": "to_gray"}, {"op": "threshold", "value": 128}],
                {"compression": "group4", "bilevel": True}, (["1"], "1", "0", "4", "0")),
    "jpeg": ([], {"compression": "jpeg"}, (["8"] * 3, "3", "6", "7", "3")),
    # bilevel "auto": each page's own (its text 1-bit in group4, a plate as it is)
    "auto_text": ([{"op": "to_gray"}, {"op": "threshold", "value": 128}],
                  {"compression": "deflate", "bilevel": "auto"}, (["1"], "1", "0", "4", "0")),
    "auto_plate": ([], {"compression": "deflate", "bilevel": "auto"},
                   (["8"] * 3, "3", "2", "8", "3")),
}


#: the profile the page ``formed`` writes embeds, which its packet names
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def formed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("form")
    rng = np.random.default_rng(5)
    tifffile.imwrite(root / "in.tif", rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
                     photometric="rgb", tile=(32, 32), metadata=None, iccprofile=SRGB,
                     extratags=[(700, "B", len(FORM), FORM, True)])
    chains = {**{name: (ops, options) for name, (ops, options, _) in FORMS.items()},
              "same": ([{"op": "gaussian_blur", "sigma": 1}], {"compression": "none"})}
    jobs = [{"input": str(root / "in.tif"), "ops": ops, "output": str(root / f"{name}.tif"),
             "output_options": {"tile": 32, **options}} for name, (ops, options) in chains.items()]
    (root / "m.json").write_text(json.dumps({"jobs": jobs}))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(root / "m.json"), "--quiet"])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    return dict(zip(chains, report["jobs"], strict=True))


@pytest.mark.parametrize("name", list(FORMS))
def test_xmp_states_how_the_output_stores_its_samples(formed, name):
    job = formed[name]
    packet = _xmp(job["output"])
    assert packet is not None and len(packet) == len(FORM), job
    desc = _description(packet)
    bits, samples, photometric, compression, mode = FORMS[name][2]
    with tifffile.TiffFile(job["output"]) as tf:  # the XMP says what the TIFF tags say
        page = tf.pages.first
        assert [str(b) for b in np.broadcast_to(page.tags.valueof(258), len(bits))] == bits
        assert (str(page.samplesperpixel), str(int(page.photometric)),
                str(page.tags.valueof(259))) == (samples, photometric, compression)
        profile = page.tags.valueof(34675)
    # the name of the profile embedded: kept with it (RGB outputs), removed where the output
    # carries none (gray and 1-bit pages, bands: an RGB profile would be invalid there)
    assert profile == (SRGB if mode == "3" else None)
    assert _value(desc, f"{PHOTOSHOP}ICCProfile") == (
        "sRGB IEC61966-2.1" if profile else None)
    assert ("photoshop:ICCProfile" in job["message"]) == (profile is None)
    assert [li.text for li in desc.iterfind(f"{TIFF}BitsPerSample/{RDF}Seq/{RDF}li")] == bits
    assert [_value(desc, f"{TIFF}{key}") for key in (
        "SamplesPerPixel", "PhotometricInterpretation", "Compression", "PlanarConfiguration")
    ] == [samples, photometric, compression, "1"]
    assert _value(desc, f"{PHOTOSHOP}ColorMode") == mode
    # sRGB: kept while the page stays RGB; not known of gray pixels or bands
    assert _value(desc, f"{EXIF}ColorSpace") == ("1" if mode == "3" else None)
    assert _value(desc, f"{PHOTOSHOP}Credit") == "Courtesy of the City Archive"
    assert [li.text for li in desc.iterfind(f"{DC}creator/{RDF}Seq/{RDF}li")] == [
        "Anna Lindqvist"]
    assert "XMP of page 0: rewritten: updated " in job["message"], job["message"]
    assert ("tiff:Compression" in job["message"]) == (compression != "1")
    assert ("exif:ColorSpace" in job["message"]) == (mode != "3")


def test_the_history_event_names_the_parameters_the_manifest_gave(formed):
    """A ``convert`` given its ``dtype`` alone: its History event says so, not the
    parameters the manifest left out as null (``in_range=null out_range=null ...``)."""
    for name, said in (("uint16", "convert dtype=uint16"), ("jpeg", "no ops"),
                       ("gray", "to_gray")):
        desc = _description(_xmp(formed[name]["output"]))
        (ours,) = desc.findall(f"{XMP_MM}History/{RDF}Seq/{RDF}li")
        assert _event(ours)["parameters"] == said


def test_xmp_of_samples_stored_as_before_is_kept_but_for_the_derivative(formed):
    job = formed["same"]
    packet = _xmp(job["output"])
    assert _rest(_description(packet), (XMP_MM,)) == _rest(_description(FORM), (XMP_MM,))
    assert not job.get("message")


def test_a_bits_per_sample_seq_keeps_its_layout():
    done = rewritten(FORM, Reshape(WIDTH, HEIGHT, False, False, moved=False,
                                   form=Form((16, 16), 1, 8)))
    assert (b"<tiff:BitsPerSample>\n    <rdf:Seq>\n     <rdf:li>16</rdf:li>\n"
            b"     <rdf:li>16</rdf:li>\n    </rdf:Seq>\n   </tiff:BitsPerSample>") in done.packet
    assert done.said == ("rewritten: updated tiff:SamplesPerPixel, "
                         "tiff:PhotometricInterpretation, tiff:Compression, tiff:BitsPerSample")


#: as Photoshop writes media management: the input's IDs, its History (one event), the
#: document it was itself derived from
MANAGED = ADOBE.replace(
    b'    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"\n',
    b'    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"\n'
    b'    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"\n'
    b'    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"\n'
    b'    xmlns:stRef="http://ns.adobe.com/xap/1.0/sType/ResourceRef#"\n'
    b'   xmpMM:InstanceID="xmp.iid:0b2c7e0e-6a51-4d8e-9c55-0a6f1c1d2e3f"\n'
    b'   xmpMM:DocumentID="xmp.did:5f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"\n'
    b'   xmpMM:OriginalDocumentID="xmp.did:11111111-2222-4333-8444-555555555555"\n').replace(
    b"  </rdf:Description>",
    b'   <xmpMM:DerivedFrom stRef:instanceID="xmp.iid:aaaaaaaa-0000-4000-8000-000000000000"'
    b' stRef:documentID="xmp.did:11111111-2222-4333-8444-555555555555"/>\n'
    b"   <xmpMM:History>\n    <rdf:Seq>\n"
    b'     <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:0b2c7e0e-6a51-4d8e-9c55-'
    b'0a6f1c1d2e3f" stEvt:when="2019-05-02T10:11:12+02:00" stEvt:softwareAgent="Adobe '
    b'Photoshop 20.0 (Windows)" stEvt:changed="/"/>\n'
    b"    </rdf:Seq>\n   </xmpMM:History>\n  </rdf:Description>")
WHEN = "2026-01-02T03:04:05Z"


def _managed(desc: ET.Element, key: str) -> str | None:
    """A media management property, of the Description or (a ResourceRef) of an element."""
    return desc.get(key) if key in desc.attrib else _value(desc, key)


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of a two-page input whose XMP says its IDs and History (a blur and a crop),
    one without media management (a blur), one without XMP, with the InstanceIDs and the
    time made by the test's own functions (``pipeline.core.xmp``'s replaced: ``workers=1``
    runs merge in this process)."""
    import pipeline
    from pipeline.core import xmp

    root = tmp_path_factory.mktemp("derived")
    rng = np.random.default_rng(7)
    with tifffile.TiffWriter(root / "managed.tif") as tw:
        for _ in range(2):
            tw.write(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
                     photometric="rgb", tile=(32, 32), metadata=None,
                     resolution=((300, 1), (200, 1)), resolutionunit=2,
                     extratags=[(700, "B", len(MANAGED), MANAGED, True)])
    _write(root / "children.tif", CHILDREN)
    tifffile.imwrite(root / "none.tif", rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8),
                     tile=(32, 32), metadata=None)
    chains = {"managed": [{"op": "gaussian_blur", "sigma": 2},
                          {"op": "crop", "x": 10, "y": 20, "width": 50, "height": 40}],
              "children": [{"op": "gaussian_blur", "sigma": 1.5}],
              "none": [{"op": "gaussian_blur", "sigma": 1.5}]}
    issued: list[str] = []

    def new_instance_id() -> str:
        issued.append(f"xmp.iid:00000000-0000-4000-8000-{len(issued):012d}")
        return issued[-1]

    manifest = {"jobs": [{"input": str(root / f"{name}.tif"), "ops": ops,
                          "output": str(root / "out" / f"{name}.tif"),
                          "output_options": {"tile": 32}} for name, ops in chains.items()]}
    with pytest.MonkeyPatch.context() as mp:
        # (raising=False: before, no such functions, and the test fails on the packets)
        mp.setattr(xmp, "new_instance_id", new_instance_id, raising=False)
        mp.setattr(xmp, "utc_now", lambda: WHEN, raising=False)
        result = pipeline.run(manifest, workers=1)
    assert result.ok, result.report
    packets = {name: _pages_xmp(str(root / "out" / f"{name}.tif")) for name in chains}
    return {"packets": packets, "issued": issued,
            "jobs": dict(zip(chains, result.report["jobs"], strict=True))}


def _pages_xmp(path: str) -> list[bytes | None]:
    with tifffile.TiffFile(path) as tf:
        return [None if (tag := page.tags.get(700)) is None else bytes(tag.value)
                for page in tf.pages]


def _event(item: ET.Element) -> dict[str, str | None]:
    return {name: _managed(item, f"{ST_EVT}{name}") for name in (
        "action", "instanceID", "when", "softwareAgent", "parameters")}


def test_a_derivative_gets_a_new_instance_id_and_a_history_event(derived):
    from pipeline import __version__

    pages = derived["packets"]["managed"]
    assert len(pages) == 2 and None not in pages
    source = _description(MANAGED)
    # one the test's function made (at merge: the plan's note made some too), the pages'
    new = _managed(_description(pages[0]), f"{XMP_MM}InstanceID")
    assert new in derived["issued"]
    for packet in pages:
        desc = _description(packet)  # (well-formed: every prefix declared)
        # a new instance of the same document
        assert _managed(desc, f"{XMP_MM}InstanceID") == new
        assert _managed(desc, f"{XMP_MM}DocumentID") == source.get(f"{XMP_MM}DocumentID")
        assert _managed(desc, f"{XMP_MM}OriginalDocumentID") == source.get(
            f"{XMP_MM}OriginalDocumentID")
        # derived from the input (no longer from the input's own source)
        (ref,) = desc.findall(f"{XMP_MM}DerivedFrom")
        assert (ref.get(f"{ST_REF}instanceID"), ref.get(f"{ST_REF}documentID")) == (
            "xmp.iid:0b2c7e0e-6a51-4d8e-9c55-0a6f1c1d2e3f",
            "xmp.did:5f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
        # the input's History kept, the derivative's event after it
        (history,) = desc.findall(f"{XMP_MM}History")
        saved, ours = history.findall(f"{RDF}Seq/{RDF}li")
        assert _event(saved)["action"] == "saved"
        assert saved.get(f"{ST_EVT}changed") == "/"
        assert _event(ours) == {
            "action": "converted", "instanceID": new, "when": WHEN,
            "softwareAgent": f"tiffpipe {__version__}",
            "parameters": "gaussian_blur sigma=2; crop x=10 y=20 width=50 height=40"}
        # the rest as the crop leaves it
        assert _value(desc, f"{TIFF}ImageWidth") == "50"
        assert _value(desc, f"{PHOTOSHOP}Credit") == "Courtesy of the City Archive"
        assert len(packet) == len(MANAGED)  # (in its padding)
    message = derived["jobs"]["managed"]["message"]
    assert message.startswith("XMP of pages 0-1: rewritten: updated tiff:ImageWidth"), message
    assert message.endswith("stamped a derivative: a new xmpMM:InstanceID, xmpMM:DerivedFrom "
                            "the input's, an xmpMM:History event (converted)"), message


def test_a_packet_without_media_management_gets_a_new_history(derived):
    (packet,) = derived["packets"]["children"]
    desc = _description(packet)
    instance = _managed(desc, f"{XMP_MM}InstanceID")
    # each output its own instance
    assert instance in derived["issued"] and instance not in _managed(
        _description(derived["packets"]["managed"][0]), f"{XMP_MM}InstanceID")
    assert _managed(desc, f"{XMP_MM}DocumentID") is None  # (none invented)
    assert desc.find(f"{XMP_MM}DerivedFrom") is None  # (the input named no instance)
    (item,) = desc.findall(f"{XMP_MM}History/{RDF}Seq/{RDF}li")
    assert _event(item) | {"softwareAgent": None} == {
        "action": "converted", "instanceID": instance, "when": WHEN, "softwareAgent": None,
        "parameters": "gaussian_blur sigma=1.5"}
    assert b'xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"' in packet
    assert b'xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"' in packet
    assert _rest(desc, (XMP_MM,)) == _rest(_description(CHILDREN), (XMP_MM,))  # (as it was)
    assert not derived["jobs"]["children"].get("message")  # (kept: no note)
    # no XMP is made for an input without one
    assert derived["packets"]["none"] == [None]


def test_media_management_written_as_elements_or_malformed_is_made_the_derivatives():
    """IDs as child elements (not attributes), a History that is no rdf:Seq (replaced by
    one), ``xmpMM`` bound by the packet to another namespace (the derivative's declared
    under another prefix): the packet stays well-formed and says the derivative's IDs."""
    from pipeline.core.xmp import Derivation

    packet = CHILDREN.replace(
        b"xmlns:dc=", b'xmlns:mm="http://ns.adobe.com/xap/1.0/mm/" xmlns:xmpMM="urn:other" '
        b"xmlns:dc=").replace(
        b" <t:ImageWidth>",
        b" <mm:InstanceID>xmp.iid:in</mm:InstanceID>\n <mm:DocumentID>xmp.did:doc"
        b"</mm:DocumentID>\n <mm:History><rdf:Bag><rdf:li>edited</rdf:li></rdf:Bag>"
        b"</mm:History>\n <xmpMM:Other>kept</xmpMM:Other>\n <t:ImageWidth>")
    done = rewritten(packet, Reshape(WIDTH, HEIGHT, False, False, moved=False),
                     Derivation("xmp.iid:new", WHEN, "tiffpipe 1", "rotate angle=90"))
    desc = _description(done.packet)
    assert _managed(desc, f"{XMP_MM}InstanceID") == "xmp.iid:new"
    assert len(desc.findall(f"{XMP_MM}InstanceID")) == 0  # (one InstanceID: the new one)
    assert _value(desc, f"{XMP_MM}DocumentID") == "xmp.did:doc"
    (ref,) = desc.findall(f"{XMP_MM}DerivedFrom")
    assert (ref.get(f"{ST_REF}instanceID"), ref.get(f"{ST_REF}documentID")) == (
        "xmp.iid:in", "xmp.did:doc")
    (history,) = desc.findall(f"{XMP_MM}History")
    (item,) = history.findall(f"{RDF}Seq/{RDF}li")
    assert _event(item) == {"action": "converted", "instanceID": "xmp.iid:new", "when": WHEN,
                            "softwareAgent": "tiffpipe 1", "parameters": "rotate angle=90"}
    assert _value(desc, "{urn:other}Other") == "kept"
    assert done.said == ("kept, stamped a derivative: a new xmpMM:InstanceID, "
                         "xmpMM:DerivedFrom the input's, an xmpMM:History event (converted)")
    # without a Derivation (what is said of a page alone), nothing is stamped
    assert rewritten(packet, Reshape(WIDTH, HEIGHT, False, False, moved=False)).packet == packet


def test_the_history_events_parameters_are_the_ops_in_short_and_cut_when_long():
    """``stEvt:parameters`` names each op with its parameters; a user op's long JSON value
    (written again into every output page's packet) is cut to PARAMETERS_MAX characters."""
    from pipeline.core.xmp import PARAMETERS_MAX, ops_parameters

    assert ops_parameters([{"op": "gaussian_blur", "sigma": 2},
                           {"op": "crop", "x": 1, "y": 2, "width": 3, "height": 4}]) == \
        "gaussian_blur sigma=2; crop x=1 y=2 width=3 height=4"
    assert ops_parameters([]) == "no ops"
    long = ops_parameters([{"op": "custom", "function": "m:f", "params": {"w": [0.5] * 900}}])
    assert len(long) == PARAMETERS_MAX and long.endswith("...")
    assert long.startswith('custom function=m:f params={"w":[0.5,0.5,')


#: Photoshop's History of a master edited many times: a packet over 64 KiB (~300 KB), the
#: rights and credits in it as in any other (:data:`MANAGED`)
EVENT = (b'     <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:0b2c7e0e-6a51-4d8e-9c55-'
         b'0a6f1c1d2e3f" stEvt:when="2019-05-02T10:11:12+02:00" stEvt:softwareAgent="Adobe '
         b'Photoshop 20.0 (Windows)" stEvt:changed="/"/>\n')
LARGE = MANAGED.replace(EVENT, EVENT * 1500)
PAGES = 3


def write_large(path: Path, packet: bytes = LARGE) -> None:
    """A 3-page TIFF (tifffile), each page with its own copy of ``packet``."""
    rng = np.random.default_rng(11)
    with tifffile.TiffWriter(path) as tw:
        for _ in range(PAGES):
            tw.write(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
                     photometric="rgb", tile=(32, 32), metadata=None,
                     resolution=((300, 1), (200, 1)), resolutionunit=2,
                     extratags=[(700, "B", len(packet), packet, True)])


def check_large(pages: list[bytes | None]) -> None:
    """Each output page carries the large packet, rewritten for a quarter turn (80 x 120)
    and stamped a derivative: its rights, its whole History and tiffpipe's event."""
    assert len(pages) == PAGES
    for packet in pages:
        assert packet is not None and len(packet) > 64 * 1024
        desc = _description(packet)
        assert _value(desc, f"{TIFF}ImageWidth") == "80"
        assert _value(desc, f"{TIFF}ImageLength") == "120"
        rights = desc.findall(f"{DC}rights/{RDF}Alt/{RDF}li")
        assert rights[0].text == "\u00a9 1931 City Archive & Library"
        events = desc.findall(f"{XMP_MM}History/{RDF}Seq/{RDF}li")
        assert len(events) == 1501
        assert events[-1].get(f"{ST_EVT}action") == "converted"
        assert events[-1].get(f"{ST_EVT}softwareAgent").startswith("tiffpipe ")


def test_a_packet_over_64_kib_is_read_from_the_input_not_held_in_the_plan(tmp_path: Path):
    """A 300 KB packet (Photoshop's History) on 3 pages: carried, rewritten and stamped as
    a small one is, read from the input when merge writes the pages; the plan holds where
    it lies, not its bytes (before: dropped, and the job's note said so)."""
    import pipeline

    assert len(LARGE) > 250_000
    write_large(tmp_path / "big.tif")
    work = tmp_path / "work"
    result = pipeline.run({"jobs": [{"input": str(tmp_path / "big.tif"),
                                     "output": str(tmp_path / "out.tif"),
                                     "ops": [{"op": "rotate", "angle": 90}]}]},
                          workers=1, work=str(work), keep_work=True)
    assert result.ok, result.report
    check_large(_pages_xmp(str(tmp_path / "out.tif")))
    (plan,) = work.glob("jobs/*/plan.json")
    assert plan.stat().st_size < 64 * 1024
    (job,) = result.report["jobs"]
    # (said without reading the packets: planning reads none, below)
    assert (f"XMP of pages 0-2: carried from the input at merge ({len(LARGE):,} bytes), "
            "rewritten for the new size and place and stamped a derivative as a small packet "
            "is") in job["message"], job


def test_planning_reads_no_large_packet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The job's note says what merge will do with each packet too large for the plan
    without reading it (1,000 pages of their own 300 KB packet would be 1,000 GETs and
    300 MB at plan time, again at merge): a copy, then a quarter turn."""
    from pipeline.adapters import metadata
    from pipeline.core.manifest import parse_manifest
    from pipeline.steps.planning import read_plan

    path = tmp_path / "big.tif"
    write_large(path)
    read: list[Any] = []
    packet = metadata.XmpPackets.__call__
    monkeypatch.setattr(metadata.XmpPackets, "__call__",
                        lambda self, at: read.append(at) or packet(self, at))
    size = f"{len(LARGE):,} bytes"
    kept = "stamped a derivative as a small packet is, how the output stores its samples"
    turned = "rewritten for the new size and place and stamped a derivative as a small packet"
    for ops, done in (([], kept), ([{"op": "rotate", "angle": 90}], turned)):
        (spec,) = parse_manifest({"jobs": [{"input": str(path), "output": "o.tif",
                                            "ops": ops}]}, "m", str(tmp_path))
        plan, problems = read_plan(0, spec, str(tmp_path / "w"), 0.0)
        assert not problems
        assert read == []  # (before: each page's packet, 3 reads of 319 KB)
        assert f"XMP of pages 0-2: carried from the input at merge ({size}), {done}" \
            in plan.note, plan.note


def _share_first_packet(path: Path) -> int:
    """Point every page's XMP entry at the first page's packet (as writers that share one
    value do); the packet's offset."""
    with tifffile.TiffFile(path) as tf:
        tags = [page.tags[700] for page in tf.pages]
        first = tags[0].valueoffset
        entries = [tag.offset for tag in tags[1:]]
    with open(path, "r+b") as fh:
        for entry in entries:  # (classic TIFF: code, type, count, then the value's offset)
            fh.seek(entry + 8)
            fh.write(first.to_bytes(4, "little"))
    return first


def test_a_shared_large_packet_is_read_once_per_output(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    from pipeline.adapters import metadata, storage
    from pipeline.steps.planning import read_plan

    path = tmp_path / "big.tif"
    write_large(path)
    offset = _share_first_packet(path)
    opened: list[str] = []
    read_range = storage.read_range

    def counted(url: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(url)
        return read_range(url, *args, **kwargs)

    spec = pipeline_spec(path, tmp_path / "out.tif")
    plan, problems = read_plan(0, spec, str(tmp_path / "w"), 0.0)
    assert not problems
    ats = [p.info.metadata["xmp_at"] for p in plan.pages]
    assert ats == [[1, offset, len(LARGE)]] * PAGES
    monkeypatch.setattr(storage, "read_range", counted)
    packets = metadata.XmpPackets(str(path), plan.input_version)
    assert [packets(at) for at in ats] == [LARGE] * PAGES
    assert opened == [str(path)]


def test_a_large_packet_of_an_input_changed_since_its_plan_is_refused(tmp_path: Path):
    from pipeline.adapters.metadata import XmpPackets
    from pipeline.errors import InputChangedError
    from pipeline.steps.planning import read_plan

    path = tmp_path / "big.tif"
    write_large(path)
    plan, _ = read_plan(0, pipeline_spec(path, tmp_path / "out.tif"), str(tmp_path / "w"), 0.0)
    write_large(path, LARGE.replace(b"City Archive", b"Town Archive"))
    with pytest.raises(InputChangedError, match="changed after its job was planned"):
        XmpPackets(str(path), plan.input_version)(plan.pages[0].info.metadata["xmp_at"])


def test_a_large_packet_on_s3_is_one_ranged_get_of_its_bytes_pinned_to_the_plans_etag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On S3 merge fetches a packet's bytes alone, in one GET pinned to the ETag its job was
    planned on (before: a HeadObject and the 512 KiB read buffer, to the object's end); an
    object replaced since is refused (S3's 412) as an input changed since its plan, which is
    not retried (a StorageError is), not read as another version."""
    from conftest import moto_s3

    from pipeline.adapters import storage
    from pipeline.adapters.metadata import XmpPackets
    from pipeline.errors import InputChangedError
    from pipeline.steps.planning import read_plan

    path = tmp_path / "big.tif"
    write_large(path)
    with moto_s3(monkeypatch, "xmp-get") as s3:
        s3.upload_file(str(path), "xmp-get", "big.tif")
        url = "s3://xmp-get/big.tif"
        plan, _ = read_plan(0, pipeline_spec(url, "s3://xmp-get/out.tif"), "s3://xmp-get/w",
                            0.0)
        at = plan.pages[0].info.metadata["xmp_at"]
        seen: list[tuple[str, Any]] = []
        pinned: list[Any] = []
        events = storage.s3_client().meta.events
        events.register("after-call.s3.*", lambda **kw: seen.append(
            (kw["model"].name, kw["parsed"].get("ContentLength"))))
        events.register("provide-client-params.s3.GetObject",
                        lambda params, **kw: pinned.append(params.get("IfMatch")))
        assert XmpPackets(url, plan.input_version)(at) == LARGE
        assert seen == [("GetObject", len(LARGE))] and pinned == [plan.input_version]
        s3.put_object(Bucket="xmp-get", Key="big.tif", Body=path.read_bytes() + b"\0")
        with pytest.raises(InputChangedError, match="changed after its job was planned"):
            XmpPackets(url, plan.input_version)(at)


def pipeline_spec(path: Path | str, output: Path | str) -> Any:
    from pipeline.core.manifest import parse_manifest

    (spec,) = parse_manifest({"jobs": [{"input": str(path), "output": str(output),
                                        "ops": [{"op": "rotate", "angle": 90}]}]}, "m", ".")
    return spec


def test_packets_read_long_ago_are_let_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Pages that each have their own large packet: an output holds the packets read last
    (PACKETS_HELD bytes), not every page's."""
    from pipeline.adapters import metadata, storage
    from pipeline.steps.planning import read_plan

    path = tmp_path / "big.tif"
    write_large(path)
    plan, _ = read_plan(0, pipeline_spec(path, tmp_path / "out.tif"), str(tmp_path / "w"), 0.0)
    ats = [p.info.metadata["xmp_at"] for p in plan.pages]
    assert len({at[1] for at in ats}) == PAGES  # (tifffile: a copy a page)
    opened: list[int] = []
    read_range = storage.read_range
    monkeypatch.setattr(storage, "read_range",
                        lambda *a, **k: opened.append(1) or read_range(*a, **k))
    monkeypatch.setattr(metadata, "PACKETS_HELD", 2 * len(LARGE))
    packets = metadata.XmpPackets(str(path), plan.input_version)
    for at in ats + ats[-2:]:  # the last two are held
        assert packets(at) == LARGE
    assert len(opened) == PAGES
    assert packets(ats[0]) == LARGE  # the first was let go: read again
    assert len(opened) == PAGES + 1


def test_inspect_ops_reads_a_large_packet_from_the_file(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture):
    """``tiffpipe inspect FILE --ops``: the packet over 64 KiB is read from FILE (its job's
    input is FILE, not the placeholder of ``--ops``) and said rewritten."""
    write_large(tmp_path / "big.tif")
    assert cli.main(["inspect", str(tmp_path / "big.tif"), "--ops",
                     '[{"op": "rotate", "angle": 90}]', "--json"]) == 0
    pages = json.loads(capsys.readouterr().out)["files"][0]["pages"]
    assert [p["ops"]["xmp"].startswith("rewritten: updated tiff:ImageWidth") for p in pages] \
        == [True] * PAGES


def test_planning_parses_no_packet_it_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The job's note says nothing of a packet kept (a blur keeps the page's size and place,
    and ADOBE states nothing of how the samples are stored that a blur changes), so
    planning does not parse it: stamping every page's packet to throw it away took a
    1,000-page master's PlanJob ~2.5 s more. A quarter turn's packet is rewritten, said."""
    from pipeline.core import xmp as xmp_mod
    from pipeline.core.manifest import parse_manifest
    from pipeline.steps.planning import read_plan

    path = tmp_path / "a.tif"
    _write(path, ADOBE)
    parsed: list[int] = []
    rewritten = xmp_mod.rewritten
    monkeypatch.setattr(xmp_mod, "rewritten",
                        lambda *a, **k: parsed.append(1) or rewritten(*a, **k))
    for ops, said in ((OPS["blur"], False), (OPS["rot90"], True)):
        (spec,) = parse_manifest({"jobs": [{"input": str(path), "output": "o.tif",
                                            "ops": ops}]}, "m", str(tmp_path))
        plan, problems = read_plan(0, spec, str(tmp_path / "w"), 0.0)
        assert not problems and ("XMP of page 0: rewritten" in plan.note) == said, plan.note
        assert bool(parsed) == said
        parsed.clear()


@pytest.mark.parametrize("shared", [False, True])
def test_a_large_packet_on_every_page_is_parsed_once_per_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool):
    """3 pages with the same 300 KB packet (a copy each, as tifffile writes them; or one
    value they all point at) through a quarter turn: merge parses it once, not once a
    page (~30 ms a parse and stamp of this one: 30 s on a 1,000-page master's merge), and
    the stamped packets are the ones parsing each page's gives, byte for byte."""
    import pipeline
    from pipeline.adapters import metadata
    from pipeline.core import xmp as xmp_mod

    path = tmp_path / "big.tif"
    write_large(path)
    if shared:
        _share_first_packet(path)
    # (one stamp for both runs: the InstanceID and the time are the run's own)
    monkeypatch.setattr(xmp_mod, "new_instance_id", lambda: "xmp.iid:fixed")
    monkeypatch.setattr(xmp_mod, "utc_now", lambda: "2026-12-07T13:22:06Z")
    parsed: list[int] = []
    rewritten = xmp_mod.rewritten
    monkeypatch.setattr(xmp_mod, "rewritten",
                        lambda *a, **k: parsed.append(1) or rewritten(*a, **k))

    def run(name: str) -> list[bytes | None]:
        parsed.clear()
        result = pipeline.run({"jobs": [{"input": str(path), "output": str(tmp_path / name),
                                         "ops": [{"op": "rotate", "angle": 90}]}]},
                              workers=1, work=str(tmp_path / f"work-{name}"))
        assert result.ok, result.report
        return _pages_xmp(str(tmp_path / name))

    once = run("once.tif")
    assert len(parsed) == 1
    # each page's parsed on its own, as before the outcome was held
    monkeypatch.setattr(metadata.XmpPackets, "rewritten",
                        lambda self, packet, reshape, derived: xmp_mod.rewritten(
                            packet, reshape, derived))
    each = run("each.tif")
    assert len(parsed) == PAGES
    check_large(once)
    assert once == each
    assert once[0] == once[1] == once[2]
