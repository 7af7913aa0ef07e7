"""1-bit output (``output_options.bilevel``): one-band uint8 pages of 0 and 255 written as
BitsPerSample 1, miniswhite, with zstd, deflate, lzw, none and group4 (CCITT T.6, libtiff's
encoder through imagecodecs); runs of the local engine on gray scans of odd sizes (tiled
and one-strip pages, several pages, threshold and otsu_threshold in the chain, fused and
not) and on the libtiff corpus's fax pages. Each 1-bit output is read back by tifffile
(the bits), by Pillow (libtiff) and by tiffpipe itself, and is exactly the 8-bit output
the same chain writes without the option. The refusals: validate (options and chains that
cannot make one uint8 band), PlanJob (pages that are not one uint8 band, or whose kept
no-data value is not 0 or 255), and at run time a
value other than 0 and 255, with no output published.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import one_bit_pages_state_their_bits
from PIL import Image

from pipeline import cli, handlers
from pipeline import estimate as est
from pipeline.adapters.tile_codec import OutputEncoder
from pipeline.core.manifest import parse_manifest
from pipeline.core.models import OutputOptions
from pipeline.core.ops import GRAYING_SIGMA, OPS, apply_chain, chain_from_json, chain_grays
from pipeline.errors import ManifestError, OperationError
from pipeline.runner import run_local

CORPUS = Path(__file__).parent / "data" / "libtiff"
CODECS = ("zstd", "deflate", "lzw", "none", "group4")
#: (height, width) of the gray scan's pages: tiled in 512 px tiles with edge tiles of odd
#: sizes, one strip (a page up to 128 px), one narrow tile column
PAGES = ((777, 1031), (101, 93), (517, 35))


def scan_page(seed: int, height: int, width: int) -> np.ndarray:
    """A gray page like a scan: paper with noise and a gradient, dark strokes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    page = 200 + 30 * np.sin(xx / 37.0) - yy * 40.0 / height + rng.normal(0, 18, (height, width))
    for _ in range(max(3, height * width // 4000)):
        y, x = rng.integers(0, height), rng.integers(0, width)
        page[y:y + rng.integers(2, 9), x:x + rng.integers(2, 40)] -= 150
    return np.clip(page, 0, 255).astype(np.uint8)


def bits_read(path: Path) -> list[np.ndarray]:
    """Every page as tifffile reads it: the stored bits, as 0/255 for miniswhite."""
    out = []
    with tifffile.TiffFile(path) as tf:
        for page in tf.pages:
            assert (page.bitspersample, page.photometric, page.predictor) == (1, 0, 1)
            bits = page.asarray()
            assert bits.dtype == bool
            out.append(np.where(bits, 0, 255).astype(np.uint8))
    return out


def pillow_read(path: Path) -> list[np.ndarray]:
    """Every page as Pillow (libtiff for compressed pages) reads it, as 8-bit gray."""
    out = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            assert im.mode == "1"
            out.append(np.asarray(im.convert("L")))
    return out


def eight_bit(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [page.asarray() for page in tf.pages]


def assert_pages(got: list[np.ndarray], want: list[np.ndarray], name: str) -> None:
    assert len(got) == len(want), name
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape and np.array_equal(a, b), f"{name} page {k}"


# --- the encoder alone --------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", [(64, 64), (13, 77), (1, 9), (40, 8)])
def test_tiles_and_strips_decode_to_their_pixels(codec, shape):
    rng = np.random.default_rng(len(codec) + shape[1])
    pixels = np.where(rng.random(shape) < 0.3, 0, 255).astype(np.uint8)
    pixels[0, 0] = 0
    encoder = OutputEncoder(OutputOptions(compression=codec, bilevel=True, tile=64),
                            "uint8", 1)
    data = encoder.encode(pixels)
    if codec == "none":  # each row packed from its first byte
        assert len(data) == shape[0] * -(-shape[1] // 8)
    if shape == (64, 64):  # a full tile: the codec's inverse
        assert np.array_equal(encoder.decode(data)[:, :, 0], pixels)
    # and as the one strip of a page libtiff (Pillow) reads
    kwargs = encoder.writer_kwargs()
    path = Path(f"/tmp/tiffpipe-bilevel-{codec}-{shape[0]}x{shape[1]}.tif")
    try:
        with tifffile.TiffWriter(path) as tw:
            tw.write(iter([data]), shape=shape, rowsperstrip=shape[0], photometric="miniswhite",
                     **kwargs)
        if codec == "group4":
            with tifffile.TiffFile(path, mode="r+b") as tf:
                tf.pages[0].tags[259].overwrite(4)
        assert_pages(pillow_read(path), [pixels], codec)
        assert_pages(bits_read(path), [pixels], codec)
    finally:
        path.unlink(missing_ok=True)


# --- validate -----------------------------------------------------------------------------


def problems(data: dict) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, "m.json", "/data")
    return info.value.problems


def one(**fields) -> dict:
    return {"jobs": [{"input": "a.tif", "output": "b.tif", **fields}]}


def test_validate_accepts_bilevel_with_every_lossless_codec():
    for codec in CODECS:
        spec = parse_manifest(one(ops=[{"op": "threshold", "value": 127}], output_options={
            "compression": codec, "bilevel": True}), "m.json", "/data")[0]
        assert spec.output_options.bilevel and spec.output_options.compression == codec


def test_validate_names_what_cannot_go_with_bilevel():
    assert problems(one(output_options={"compression": "group4"})) == [(
        'jobs[0].output_options.compression: "group4" with bilevel false (the default '
        "output_options.bilevel): group4 (CCITT T.6) writes 1-bit pages only; set "
        '"bilevel": true (one band of 0 and 255 only), or "auto" (the pages whose output is '
        'black and white 1-bit, in bilevel_compression: group4)')]
    assert problems(one(output_options={"compression": "jpeg", "bilevel": True})) == [(
        'jobs[0].output_options.bilevel: true with compression "jpeg": a 1-bit output cannot '
        'be jpeg-compressed; choose zstd, deflate, lzw, group4 or none, or set "bilevel": '
        '"auto" (the 1-bit pages in bilevel_compression, the others in jpeg)')]
    assert problems(one(output_options={"pyramid": True, "bilevel": True})) == [(
        "jobs[0].output_options.bilevel: true with pyramid true: pyramid levels are means of "
        "the page (grays), which 1 bit cannot hold; write the levels in a job of their own "
        '(the same input, "bilevel": false, "pyramid": true: an 8-bit pyramid file beside the '
        '1-bit one), or drop "pyramid" or "bilevel"')]
    # from defaults: the problem is the job's, naming where the other came from
    assert problems({"defaults": {"output_options": {"bilevel": True}},
                     "jobs": [{"input": "a.tif", "output": "b.tif",
                               "output_options": {"compression": "jpeg"}}]}) == [(
        'jobs[0].output_options.compression: "jpeg" with bilevel true (from '
        "defaults.output_options.bilevel): a 1-bit output cannot be jpeg-compressed; choose "
        'zstd, deflate, lzw, group4 or none, or set "bilevel": "auto" (the 1-bit pages in '
        'bilevel_compression, the others in jpeg)')]


def test_validate_names_the_op_that_makes_no_one_band_of_uint8():
    assert problems(one(ops=[{"op": "convert", "dtype": "uint16"}],
                        output_options={"bilevel": True})) == [(
        "jobs[0].output_options.bilevel: a 1-bit output holds uint8 samples only, and ops[0] "
        '(convert) makes uint16; set its "dtype" to "uint8", or drop "bilevel"')]
    assert problems({"defaults": {"output_options": {"bilevel": True}},
                     "jobs": [{"input": "a.tif", "output": "b.tif", "ops": [
                         {"op": "select_bands", "bands": [0, 1, 2]}]}]}) == [(
        "jobs[0].ops[0].bands: select_bands makes 3 bands, and the 1-bit output (from "
        "defaults.output_options.bilevel) holds 1 band (gray) only; give its \"bands\" 1 "
        'bands, or drop "bilevel"')]


# --- runs of the engine -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of every job below, then a run that reads the 1-bit outputs back."""
    tmp = tmp_path_factory.mktemp("bilevel")
    gray = [scan_page(k, *shape) for k, shape in enumerate(PAGES)]
    with tifffile.TiffWriter(tmp / "scan.tif") as tw:
        for k, page in enumerate(gray):
            tw.write(page, tile=(64, 64) if k == 0 else None, compression="zlib")
    tifffile.imwrite(tmp / "rgb.tif", np.zeros((40, 50, 3), np.uint8))
    mask = np.where(scan_page(9, 150, 133) < 128, 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp / "mask.tif", mask, extratags=[(42113, "s", 0, "255", True)])
    for name in ("testfax4.tiff", "testfax3_bug_513.tiff", "miniswhite-1c-1b.tiff"):
        shutil.copy(CORPUS / name, tmp / name)

    threshold = [{"op": "threshold", "value": 150}]
    otsu = [{"op": "otsu_threshold"}]
    jobs = [{"input": "scan.tif", "output": "ref.tif", "ops": threshold},
            {"input": "scan.tif", "output": "otsu_ref.tif", "ops": otsu}]
    for codec in CODECS:
        jobs.append({"input": "scan.tif", "output": f"{codec}.tif", "ops": threshold,
                     "output_options": {"compression": codec, "bilevel": True}})
    jobs += [
        # whole-page statistics (split, then batches) and an unfused chain
        {"input": "scan.tif", "output": "otsu.tif", "ops": otsu,
         "output_options": {"compression": "group4", "bilevel": True}},
        {"input": "scan.tif", "output": "unfused.tif", "ops": threshold, "fuse": False,
         "output_options": {"compression": "lzw", "bilevel": True}},
        {"input": "scan.tif", "output": "ome.tif", "ops": threshold,
         "output_options": {"compression": "deflate", "bilevel": True, "ome": True}},
        {"input": "mask.tif", "output": "mask_out.tif",
         "output_options": {"compression": "zstd", "bilevel": True}},
        # the values other than 0 and 255 of a gray page; a page of three bands
        {"input": "scan.tif", "output": "gray_bad.tif", "output_options": {"bilevel": True}},
        {"input": "rgb.tif", "output": "rgb_bad.tif", "output_options": {"bilevel": True}},
    ]
    for name in ("testfax4.tiff", "testfax3_bug_513.tiff", "miniswhite-1c-1b.tiff"):
        stem = name.split(".")[0]
        jobs += [{"input": name, "output": f"{stem}_ref.tif"},
                 {"input": name, "output": f"{stem}_g4.tif",
                  "output_options": {"compression": "group4", "bilevel": True}}]
    (tmp / "m.json").write_text(json.dumps({"jobs": jobs}))
    first = run_local(str(tmp / "m.json"), 2)
    # tiffpipe reads its own 1-bit outputs (8-bit zstd copies of them)
    again = [{"input": f"{codec}.tif", "output": f"back_{codec}.tif"} for codec in CODECS]
    again.append({"input": "testfax4_g4.tif", "output": "back_fax.tif"})
    (tmp / "again.json").write_text(json.dumps({"jobs": again}))
    second = run_local(str(tmp / "again.json"), 2)
    return tmp, gray, {j["output"].rsplit("/", 1)[-1]: j for j in first.jobs}, second


def test_outputs_are_the_8bit_outputs_in_1_bit(runs):
    tmp, gray, jobs, _ = runs
    ref = eight_bit(tmp / "ref.tif")
    for k, page in enumerate(gray):  # the reference is the threshold itself
        assert np.array_equal(ref[k], np.where(page > 150, 255, 0))
    with tifffile.TiffFile(tmp / "zstd.tif") as tf:  # tiled pages and a strip page
        assert [p.is_tiled for p in tf.pages] == [True, False, True]
    for codec in CODECS:
        assert jobs[f"{codec}.tif"]["status"] == "SUCCEEDED", jobs[f"{codec}.tif"]
        path = tmp / f"{codec}.tif"
        with tifffile.TiffFile(path) as tf:
            assert {p.compression for p in tf.pages} == {
                {"zstd": 50000, "deflate": 8, "lzw": 5, "none": 1, "group4": 4}[codec]}
        assert_pages(bits_read(path), ref, codec)
        assert_pages(pillow_read(path), ref, codec)
    # GDAL: the bits (1 black) with a colour table, each page a subdataset
    import rasterio

    for k in range(len(PAGES)):
        name = str(tmp / "group4.tif") if k == 0 else f"GTIFF_DIR:{k + 1}:{tmp / 'group4.tif'}"
        with warnings.catch_warnings():  # (a scan has no georeferencing)
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(name) as ds:
                assert np.array_equal(np.where(ds.read(1) == 1, 0, 255), ref[k]), k
    assert_pages(bits_read(tmp / "unfused.tif"), ref, "unfused")
    otsu = eight_bit(tmp / "otsu_ref.tif")
    assert_pages(bits_read(tmp / "otsu.tif"), otsu, "otsu")
    assert_pages(pillow_read(tmp / "otsu.tif"), otsu, "otsu")


def test_every_page_states_bits_per_sample(runs):
    """Every page of every 1-bit output (tiled, one-strip and one-column pages with each
    codec; OME, GDAL_NODATA, the fax pages) has BitsPerSample 1 (SHORT, count 1), which
    tifffile writes on no 1-bit page and strict readers want (OpenSlide, libtiff's
    ``TIFFGetField``), the entries in ascending order, read by libtiff as by tifffile."""
    tmp, _, jobs, _ = runs
    names = [f"{codec}.tif" for codec in CODECS] + ["otsu.tif", "unfused.tif", "ome.tif",
                                                   "mask_out.tif"]
    names += [f"{stem}_g4.tif" for stem in ("testfax4", "testfax3_bug_513", "miniswhite-1c-1b")]
    for name in names:
        assert jobs[name]["status"] == "SUCCEEDED", jobs[name]
        with tifffile.TiffFile(tmp / name) as tf:
            pages = len(tf.pages)
        assert one_bit_pages_state_their_bits(tmp / name) == pages, name
    assert one_bit_pages_state_their_bits(tmp / "ref.tif") == 0  # (8-bit: tifffile's own)


@pytest.mark.parametrize("codec", ["group4", "zstd"])
def test_openslide_reads_a_1bit_output(runs, codec):
    """OpenSlide (generic-tiff, libtiff's RGBA read) opens a tiled 1-bit output and reads its
    first page as it is (before, it failed: "Cannot get required TIFF tag: 258")."""
    import openslide  # in the dev extra

    tmp = runs[0]
    with openslide.OpenSlide(str(tmp / f"{codec}.tif")) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_dimensions == ((PAGES[0][1], PAGES[0][0]),)
        rgba = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))
    assert (rgba[..., :3] == rgba[..., :1]).all()
    assert_pages([rgba[..., 0]], eight_bit(tmp / "ref.tif")[:1], codec)


def test_one_bit_is_smaller(runs):
    tmp = runs[0]
    size = {c: (tmp / f"{c}.tif").stat().st_size for c in CODECS}
    assert size["zstd"] < (tmp / "ref.tif").stat().st_size  # (the same codec, 8-bit)
    # uncompressed: a full tile is 512 x 512 bits, a strip's row its bits rounded up to bytes
    with tifffile.TiffFile(tmp / "none.tif") as tf:
        assert [sum(p.databytecounts) for p in tf.pages] == [6 * 512 * 64, 101 * 12, 2 * 512 * 64]
    assert all(size[c] < size["none"] for c in ("zstd", "deflate", "group4"))


def test_fax_pages_come_out_as_they_went_in(runs):
    tmp, _, jobs, _ = runs
    for stem in ("testfax4", "testfax3_bug_513", "miniswhite-1c-1b"):
        assert jobs[f"{stem}_g4.tif"]["status"] == "SUCCEEDED", jobs[f"{stem}_g4.tif"]
        ref = eight_bit(tmp / f"{stem}_ref.tif")
        with tifffile.TiffFile(tmp / f"{stem}.tiff") as tf:  # the input's own bits
            source = [np.where(p.asarray(), 0 if p.photometric == 0 else 255,
                               255 if p.photometric == 0 else 0) for p in tf.pages]
        assert_pages(ref, source, stem)
        assert_pages(bits_read(tmp / f"{stem}_g4.tif"), ref, stem)
        assert_pages(pillow_read(tmp / f"{stem}_g4.tif"), ref, stem)


def test_tiffpipe_reads_its_1bit_outputs(runs):
    tmp, _, _, second = runs
    assert second.ok, second.report
    ref = eight_bit(tmp / "ref.tif")
    for codec in CODECS:
        assert_pages(eight_bit(tmp / f"back_{codec}.tif"), ref, codec)
    assert_pages(eight_bit(tmp / "back_fax.tif"), eight_bit(tmp / "testfax4_ref.tif"), "fax")


def test_ome_and_nodata(runs):
    tmp = runs[0]
    with tifffile.TiffFile(tmp / "ome.tif") as tf:
        images = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
        assert [i["Pixels"]["Type"] for i in images] == ["bit"] * len(PAGES)
    assert_pages(bits_read(tmp / "ome.tif"), eight_bit(tmp / "ref.tif"), "ome")
    with tifffile.TiffFile(tmp / "mask_out.tif") as tf:  # 255 is stored as bit 0
        assert tf.pages[0].tags[42113].value == "0"
    assert_pages(bits_read(tmp / "mask_out.tif"), eight_bit(tmp / "mask.tif"), "mask")


def test_pages_that_are_no_0_255_band_fail_their_job_and_publish_nothing(runs):
    tmp, gray, jobs, _ = runs
    bad = jobs["gray_bad.tif"]
    assert bad["status"] == "FAILED" and bad["error"]["type"] == "OperationError"
    message = bad["error"]["message"]
    assert "output_options.bilevel: page " in message and "scan.tif holds the value " in message
    # the value named is the page's, at the place named
    page = int(message.split("page ")[1].split(" ")[0])
    value = int(message.split("the value ")[1].split(" ")[0])
    x = int(message.split(" at x ")[1].split(",")[0])
    y = int(message.split(", y ")[1].split(" ")[0])
    assert gray[page][y, x] == value and value not in (0, 255)
    assert "end the ops with a threshold (or otsu_threshold)" in message
    rgb = jobs["rgb_bad.tif"]
    assert rgb["status"] == "FAILED"
    assert ("page 0: output_options.bilevel: a 1-bit output holds one band of uint8, 0 and 255 "
            "only, the output is uint8 with 3 bands") in rgb["error"]["message"]
    for name in ("gray_bad.tif", "rgb_bad.tif"):
        assert not (tmp / name).exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".gray_bad.tif")]


@pytest.mark.parametrize("bigtiff", [False, True])
def test_group4_compression_tag_is_set_in_classic_and_bigtiff_ifds(bigtiff):
    from pipeline.adapters.tiff_header import (
        LayoutRecorder,
        Placeholder,
        _entries,
        _format,
        image_ifds,
        set_compression,
    )
    from pipeline.core.tiff_layout import Span

    encoder = OutputEncoder(OutputOptions(compression="group4", bilevel=True, tile=16),
                            "uint8", 1)
    recorder = LayoutRecorder()
    with tifffile.TiffWriter(recorder, bigtiff=bigtiff) as tw:
        for _ in range(2):  # two pages of 2 x 3 tiles
            tw.write((Placeholder(Span("s", 0, 5)) for _ in range(6)), shape=(20, 40),
                     tile=(16, 16), photometric="miniswhite", **encoder.writer_kwargs())
    ifds = image_ifds(recorder)
    assert [_entries(recorder, page[0], _format(recorder))[259] for page in ifds] == [(8,), (8,)]
    for page in ifds:
        set_compression(recorder, page[0], 4)
    for page in ifds:
        entries = _entries(recorder, page[0], _format(recorder))
        # (tifffile writes no BitsPerSample on a 1-bit page: merge states it from the entry
        # output_tags adds, test_every_page_states_bits_per_sample)
        assert entries[259] == (4,) and 258 not in entries and entries[262] == (0,)


# --- chains that gray a 1-bit output: refused when the job is planned ---------------------

#: a user op that grays (a box filter): its output is known only when it runs
GRAYING_MODULE = "tiffpipe_test_bilevel_userops"


def grays_refusal(index: int, name: str) -> str:
    """The one refusal of a chain that grays a 1-bit output, as planning words it: a
    downsample is told the methods that keep black and white first."""
    pick = ('give it "method": "mode" (or "nearest", "min") to keep them, or '
            if name == "downsample" else "")
    return (f"output_options.bilevel: ops[{index}] ({name}) makes gray values wherever black "
            f"and white meet, and a 1-bit output holds 0 and 255 only; {pick}add {{\"op\": "
            '"threshold", "value": 127} (or otsu_threshold) after it, or drop "bilevel" for '
            "an 8-bit output")


#: an op of each kind of Op.binary, with parameters ("" ops: not known before the pixels)
BINARY_KINDS = {
    "makes": [{"op": "threshold", "value": 100}, {"op": "otsu_threshold"},
              {"op": "canny", "low": 50, "high": 150}],
    "keeps": [{"op": "rotate", "angle": 90}, {"op": "flip", "axis": "vertical"},
              {"op": "crop", "x": 3, "y": 5, "width": 40, "height": 30}, {"op": "invert"},
              {"op": "dilate", "ksize": 3}, {"op": "erode", "ksize": 5, "iterations": 2},
              {"op": "median_blur", "ksize": 5}, {"op": "gamma", "gamma": 0.4},
              {"op": "normalize"}, {"op": "select_bands", "bands": [0]},
              *({"op": "downsample", "factor": 3, "method": m}
                for m in ("nearest", "mode", "min", "max"))],
    "grays": [{"op": "gaussian_blur", "sigma": GRAYING_SIGMA},
              {"op": "gaussian_blur", "sigma": 3}, {"op": "downsample", "factor": 2}],
    "": [{"op": "gaussian_blur", "sigma": 0.2}, {"op": "unsharp_mask", "sigma": 1},
         {"op": "to_gray"}, {"op": "convert", "dtype": "uint8"}, {"op": "equalize_hist"},
         {"op": "percentile_stretch"}, {"op": "clahe", "cell": 8},
         {"op": "normalized_difference", "a": 0, "b": 1}, {"op": "custom", "function": "m:f"}],
}


@pytest.mark.parametrize("kind", list(BINARY_KINDS))
def test_each_op_does_to_black_and_white_what_it_is_said_to(kind):
    """Op.binary of every op in the registry, checked on the op's own pixels: a 0/255 page
    (noise and an edge; a gray scan for the ops that make black and white) comes out 0/255
    only of ops that keep or make them, and with grays of ops that gray them."""
    named = {op["op"] for ops in BINARY_KINDS.values() for op in ops}
    assert named == set(OPS)  # (a new op says what it does to a 1-bit output's pixels)
    page = np.where(np.random.default_rng(1).random((64, 80)) < 0.3, 0, 255).astype(np.uint8)
    page[:, 40:] = 255
    page[20:, 40:60] = 0
    for op in BINARY_KINDS[kind]:
        call = chain_from_json([op])
        assert call[0].op.binary(call[0].params) == kind, op
        if kind in ("keeps", "grays"):
            out = apply_chain(page, call)
            binary = bool(np.isin(out, (0, 255)).all())
            assert binary == (kind == "keeps"), op
        elif kind == "makes":
            out = apply_chain(scan_page(5, 64, 80), call)
            assert np.isin(out, (0, 255)).all() and len(np.unique(out)) == 2, op


def test_a_chain_grays_where_its_last_op_that_keeps_no_black_and_white_grays_them():
    def grays(*ops: dict) -> int | None:
        return chain_grays(chain_from_json(list(ops)))

    blur, down = {"op": "gaussian_blur", "sigma": 1}, {"op": "downsample", "factor": 2}
    turn, custom = {"op": "rotate", "angle": 180}, {"op": "custom", "function": "m:f"}
    assert grays(THRESHOLD, blur) == 1
    assert grays(blur, THRESHOLD, down, {"op": "invert"}, {"op": "dilate"}) == 2
    assert grays(down, blur) == 1
    assert grays(blur, THRESHOLD) is None and grays(down, {"op": "otsu_threshold"}) is None
    assert grays(blur, custom) is None  # (a custom op's output: known when it runs)
    assert grays(blur, {"op": "convert", "dtype": "uint8"}) is None
    assert grays(turn, {"op": "invert"}) is None and grays() is None  # (the page's own)


THRESHOLD = {"op": "threshold", "value": 150}
#: (output, input, ops, the op refused: (index, name), or None: the job runs)
GRAYING = [
    ("fax_blur.tif", "testfax4.tiff", [{"op": "gaussian_blur", "sigma": 1.5}],
     (0, "gaussian_blur")),
    ("scan_down.tif", "scan.tif", [THRESHOLD, {"op": "downsample", "factor": 2}],
     (1, "downsample")),
    # ops that keep black and white after the blur: still its grays
    ("scan_blur_turned.tif", "scan.tif",
     [THRESHOLD, {"op": "gaussian_blur", "sigma": 2}, {"op": "rotate", "angle": 90},
      {"op": "invert"}, {"op": "median_blur", "ksize": 3}], (1, "gaussian_blur")),
    ("scan_otsu_down.tif", "scan.tif",
     [{"op": "otsu_threshold"}, {"op": "downsample", "factor": 4}, {"op": "dilate"}],
     (1, "downsample")),
]
KEPT = [
    # a threshold after the grays
    ("scan_blur_threshold.tif", "scan.tif", [{"op": "gaussian_blur", "sigma": 2}, THRESHOLD],
     None),
    ("scan_down_otsu.tif", "scan.tif",
     [{"op": "downsample", "factor": 2}, {"op": "otsu_threshold"}], None),
    # every op that keeps black and white, on a 1-bit input
    ("fax_kept.tif", "testfax4.tiff",
     [{"op": "rotate", "angle": 90}, {"op": "flip", "axis": "horizontal"},
      {"op": "crop", "x": 16, "y": 32, "width": 1500, "height": 1100}, {"op": "invert"},
      {"op": "dilate"}, {"op": "erode", "ksize": 5}, {"op": "median_blur", "ksize": 3},
      {"op": "gamma", "gamma": 2.2}, {"op": "normalize"}, {"op": "select_bands", "bands": [0]}],
     None),
    # a blur too slight to gray black and white on 8 bits: left to the pixels (they stay)
    ("fax_slight.tif", "testfax4.tiff", [{"op": "gaussian_blur", "sigma": 0.2}], None),
]
#: a custom op that grays: known only when the job runs (its tiles' values)
CUSTOM = ("scan_custom.tif", "scan.tif",
          [THRESHOLD, {"op": "custom", "function": f"{GRAYING_MODULE}:box", "halo": 1}], None)


@pytest.fixture(scope="module")
def graying(tmp_path_factory):
    """A 1-bit fax page and a gray scan, and a manifest of a job for each chain above (the
    graying ones among the others: each job is refused or runs on its own)."""
    tmp = tmp_path_factory.mktemp("graying")
    shutil.copy(CORPUS / "testfax4.tiff", tmp / "testfax4.tiff")
    tifffile.imwrite(tmp / "scan.tif", scan_page(3, 777, 1031), tile=(64, 64),
                     compression="zlib")
    (tmp / "user").mkdir()
    (tmp / "user" / f"{GRAYING_MODULE}.py").write_text(
        "import cv2\n\ndef box(tile):\n    return cv2.blur(tile, (3, 3))\n")
    sys.path.insert(0, str(tmp / "user"))
    cases = [GRAYING[0], KEPT[0], GRAYING[1], KEPT[1], GRAYING[2], KEPT[2], GRAYING[3],
             KEPT[3], CUSTOM]
    jobs = [{"input": src, "output": f"out/{out}", "ops": ops,
             "output_options": {"bilevel": True, "compression": "group4"}}
            for out, src, ops, _ in cases]
    (tmp / "out").mkdir()
    (tmp / "m.json").write_text(json.dumps({"jobs": jobs}))
    yield tmp, cases
    sys.path.remove(str(tmp / "user"))
    sys.modules.pop(GRAYING_MODULE, None)


def test_validate_inputs_refuses_each_chain_that_grays_a_1bit_output(graying, capsys):
    tmp, cases = graying
    assert cli.main(["validate", "--inputs", str(tmp / "m.json")]) == 2
    out, err = capsys.readouterr()
    assert out.endswith("5 jobs can run, 4 would fail when planned\n"), out
    blocks = {int(b.split("]", 1)[0]): b
              for b in re.split(r"^  jobs\[", err, flags=re.MULTILINE)[1:]}
    refused = {i: case for i, case in enumerate(cases) if case[3]}
    assert sorted(blocks) == sorted(refused)
    for i, (out_name, src, _, (index, name)) in refused.items():
        assert blocks[i] == (f"{i}] {tmp / src} -> {tmp / 'out' / out_name}: OperationError\n"
                             f"    {grays_refusal(index, name)}\n")


def test_plan_job_and_estimate_refuse_them_in_the_same_words(graying):
    tmp, cases = graying
    run = handlers.split_handler({"action": "plan_run", "manifest": str(tmp / "m.json"),
                                  "work": str(tmp / "work") + "/", "run_id": "r1"})
    problems = est.plan_manifest(str(tmp / "m.json")).problems
    refused = []
    for i, (_, src, _, grays) in enumerate(cases):
        if grays is None:
            handlers.process_handler({"action": "plan_job", "run": run["run"], "job": i})
            continue
        with pytest.raises(OperationError) as info:
            handlers.process_handler({"action": "plan_job", "run": run["run"], "job": i})
        assert str(info.value) == (f"{tmp / src}: the job cannot run: "
                                   f"{grays_refusal(*grays)}")
        refused.append(f"jobs[{i}]: OperationError: {tmp / src}: {grays_refusal(*grays)}")
    assert problems == refused


def test_a_run_fails_those_jobs_when_planned_and_runs_the_others(graying):
    """Each graying job fails in PlanJob, before any unit reads a pixel, with nothing
    written under its name; the other jobs of the manifest run: the chains that keep black
    and white write their 1-bit output, and a custom op's grays are still found at run
    time (its output is known only then)."""
    tmp, cases = graying
    result = run_local(str(tmp / "m.json"), 2)
    jobs = {Path(j["output"]).name: j for j in result.jobs}
    for out_name, src, _, grays in cases:
        job = jobs[out_name]
        if grays is not None:
            assert job["status"] == "FAILED", job
            assert job["error"]["type"] == "OperationError"
            assert job["error"]["step"] == "PlanJob"
            assert job["error"]["message"] == (f"{tmp / src}: the job cannot run: "
                                               f"{grays_refusal(*grays)}")
            assert not [p for p in (tmp / "out").iterdir() if out_name in p.name]
        elif out_name == CUSTOM[0]:
            assert job["status"] == "FAILED" and job["error"]["step"] != "PlanJob", job
            assert "holds the value " in job["error"]["message"]
            assert "end the ops with a threshold (or otsu_threshold)" in job["error"]["message"]
            assert not [p for p in (tmp / "out").iterdir() if out_name in p.name]
        else:
            assert job["status"] == "SUCCEEDED", job
    # the kept chains wrote their pixels: the 8-bit result of the same chain, as bits
    with tifffile.TiffFile(tmp / "testfax4.tiff") as tf:
        fax = np.where(tf.pages[0].asarray(), 0, 255).astype(np.uint8)
    assert_pages(bits_read(tmp / "out" / "fax_slight.tif"), [fax], "fax_slight")
    kept = np.flip(np.rot90(fax, -1), 1)[32:1132, 16:1516]
    kept = cv2.dilate(255 - kept, np.ones((3, 3), np.uint8))
    kept = cv2.medianBlur(cv2.erode(kept, np.ones((5, 5), np.uint8)), 3)
    assert_pages(bits_read(tmp / "out" / "fax_kept.tif"), [kept], "fax_kept")
    scan = scan_page(3, 777, 1031)
    blurred = cv2.GaussianBlur(scan, (0, 0), 2)
    assert_pages(bits_read(tmp / "out" / "scan_blur_threshold.tif"),
                 [np.where(blurred > 150, 255, 0).astype(np.uint8)], "scan_blur_threshold")


def test_1bit_pages_written_8bit_are_told_with_what_keeps_them_1bit(tmp_path, capsys):
    """A scanned book of 1-bit text pages and a colour plate, copied or cropped without
    ``bilevel``: its text pages come out 8-bit (0 and 255, up to 8 times the bytes), which
    the job's message says, naming them and the option: ``bilevel`` "auto" where the job
    has other pages (the plate) or writes JPEG, which it then does (the text pages 1-bit,
    the plate as it is); `tiffpipe run` says it on stderr, as it says pages left out. Not
    said of a job that writes them 1-bit, grays them (a blur), or of 8-bit pages."""
    text = np.where(scan_page(1, 60, 50) < 128, False, True)
    with tifffile.TiffWriter(tmp_path / "book.tif") as tw:
        tw.write(text, photometric="miniswhite")
        tw.write(np.zeros((40, 30, 3), np.uint8), photometric="rgb")
        tw.write(text[::-1], photometric="minisblack")
    tifffile.imwrite(tmp_path / "gray.tif", scan_page(2, 30, 30))
    crop = [{"op": "crop", "x": 2, "y": 2, "width": 20, "height": 20}]
    jobs = {"copy": {}, "crop": {"ops": crop}, "text": {"pages": [2, 0]},
            "turned": {"pages": [0], "ops": [{"op": "rotate", "angle": 90}]},
            "bilevel": {"pages": [0, 2], "output_options": {"bilevel": True}},
            "auto": {"output_options": {"bilevel": "auto"}},
            "blur": {"ops": [{"op": "gaussian_blur", "sigma": 1}]},
            "jpeg": {"output_options": {"compression": "jpeg"}}, "gray": {}}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": "gray.tif" if name == "gray" else "book.tif", "output": f"out/{name}.tif", **job}
        for name, job in jobs.items()]}))
    assert cli.main(["run", str(manifest), "--quiet", "--no-contact-sheet"]) == 0
    report = json.loads((tmp_path / "m.report.json").read_text())
    messages = {name: job.get("message") for name, job in zip(jobs, report["jobs"],
                                                                strict=True)}
    told = 'pages 0, 2 are 1-bit in the input, written as 8-bit gray (0 and 255): '
    auto = (told + '"output_options": {"bilevel": "auto"} writes them 1-bit again (in '
            'group4, CCITT G4: "bilevel_compression") and page 1 as it is in ')
    assert messages == {
        "copy": auto + "zstd", "crop": auto + "zstd", "jpeg": auto + "jpeg",
        "text": told + '"output_options": {"bilevel": true} writes them 1-bit again '
        '("compression": "group4" for CCITT G4)',
        "turned": 'page 0 is 1-bit in the input, written as 8-bit gray (0 and 255): '
        '"output_options": {"bilevel": true} writes it 1-bit again ("compression": '
        '"group4" for CCITT G4)', "bilevel": None, "blur": None, "gray": None,
        "auto": 'bilevel "auto": pages 0, 2 written 1-bit in group4; page 1 as it is in zstd'}
    with tifffile.TiffFile(tmp_path / "out" / "text.tif") as tf:
        assert [page.bitspersample for page in tf.pages] == [8, 8]  # (as before: told)
    with tifffile.TiffFile(tmp_path / "out" / "auto.tif") as tf:  # (what it says it does)
        assert [(p.bitspersample, int(p.compression)) for p in tf.pages] == [
            (1, 4), (8, 50000), (1, 4)]
    err = capsys.readouterr().err
    assert f"tiffpipe: job 0 ({tmp_path / 'book.tif'}): {auto}zstd" in err
    assert "tiffpipe: ... and 3 more job(s) with a note (pages left out, 1-bit pages written " \
        '8-bit, XMP rewritten or dropped, or which pages bilevel "auto" wrote 1-bit): each ' \
        "job's message in the report says which and why" in err


def kept_nodata_refusal(value: int) -> str:
    return (f"page 0: output_options.bilevel: the page's no-data value {value} (GDAL_NODATA) "
            f"is kept through the ops, so its no-data pixels hold {value}, and a 1-bit output "
            'holds only 0 and 255; end the ops with {"op": "threshold", "value": 127} (the '
            "no-data pixels are then thresholded as data and GDAL_NODATA is dropped), or drop "
            '"bilevel" for an 8-bit output')


def test_a_kept_no_data_value_other_than_0_and_255_is_refused_when_planned(tmp_path, capsys):
    """A page whose no-data value (GDAL_NODATA 17: a scanner's gray frame) otsu_threshold
    keeps (it writes the no-data pixels back) would hold 17 in a 1-bit output: refused by
    ``validate --inputs`` and PlanJob, naming the page, the value and the fix, before any
    pixel is read (before, the job failed when its tiles were encoded). The fix it names
    runs; a page whose no-data value is 255 is written with it as its bit, as before."""
    page = scan_page(4, 150, 170)
    page[:, :20] = 17
    tifffile.imwrite(tmp_path / "frame.tif", page, extratags=[(42113, "s", 0, "17", True)])
    white = np.where(page == 17, 255, page).astype(np.uint8)
    tifffile.imwrite(tmp_path / "white.tif", white, extratags=[(42113, "s", 0, "255", True)])
    otsu, fixed = [{"op": "otsu_threshold"}], [{"op": "otsu_threshold"},
                                               {"op": "threshold", "value": 127}]
    cases = [("frame.tif", otsu), ("frame.tif", fixed), ("white.tif", otsu)]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": src, "output": f"out/{i}.tif", "ops": ops,
         "output_options": {"bilevel": True}} for i, (src, ops) in enumerate(cases)]}))
    assert cli.main(["validate", "--inputs", str(manifest)]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("tiffpipe: 1 of 3 job(s) would fail when planned"), err
    assert f"    {kept_nodata_refusal(17)}\n" in err, err
    result = run_local(str(manifest), 1)
    refused, ran, kept = result.jobs
    assert refused["status"] == "FAILED" and refused["error"]["step"] == "PlanJob", refused
    assert refused["error"]["message"] == (f"{tmp_path / 'frame.tif'}: the job cannot run: "
                                           f"{kept_nodata_refusal(17)}")
    assert not (tmp_path / "out" / "0.tif").exists()
    assert ran["status"] == kept["status"] == "SUCCEEDED", (ran, kept)
    # (Otsu's threshold of the pixels with data; the no-data pixels 17, then black)
    t, _ = cv2.threshold(page[page != 17].reshape(1, -1), 0, 255,
                         cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    want = np.where((page > t) & (page != 17), 255, 0).astype(np.uint8)
    assert_pages(bits_read(tmp_path / "out" / "1.tif"), [want], "fixed")
    with tifffile.TiffFile(tmp_path / "out" / "2.tif") as tf:
        assert tf.pages[0].tags[42113].value == "0"  # (255 is stored as bit 0)
