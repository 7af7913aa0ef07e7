"""``tiffpipe inspect``: what the reader sees of each page of real TIFFs (tifffile's, the
libtiff corpus, on S3 through moto), from the page headers alone: sizes, bands, sample
types, the conversions applied, storage, masks and overviews a job without pages leaves out,
the metadata kept, refused pages; ``--ops``: whether a chain runs on each page and the
output page; identical pages grouped in the text, every page in ``--json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import (
    LIBTIFF_CORPUS,
    UINT16_TO_UINT8,
    gdal_masked,
    moto_s3,
    write_ome_pyramid,
)

from pipeline import cli
from pipeline.adapters import tiff_read

pytestmark = pytest.mark.timeout(120)


def _inspect(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _cog(path: Path) -> Path:
    """A GDAL-like COG: an RGB JPEG page with GeoTIFF tags, its overview, the masks of both."""
    geo = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (34735, "H", 4, (1, 1, 0, 0), True)]
    with tifffile.TiffWriter(path) as w:
        w.write(np.zeros((512, 512, 3), np.uint8), tile=(256, 256), compression="jpeg",
                photometric="rgb", resolution=(100, 100), extratags=geo)
        w.write(np.zeros((256, 256, 3), np.uint8), tile=(256, 256), compression="jpeg",
                subfiletype=1, photometric="rgb")
        w.write(np.zeros((512, 512), bool), compression="deflate", subfiletype=4)
        w.write(np.zeros((256, 256), bool), compression="deflate", subfiletype=5)
    return path


def test_a_cog_its_overview_and_masks(tmp_path: Path, capsys: pytest.CaptureFixture):
    cog = _cog(tmp_path / "cog.tif")
    code, out, err = _inspect(capsys, str(cog))
    assert code == 0 and err == ""
    assert out == (
        f"{cog}: 4 page(s), TIFF, little-endian, GeoTIFF\n"
        "  page 0: 512 x 512, 3 x uint8 RGB (read as: YCbCr decoded to RGB); jpeg, tiles "
        "256 x 256; kept: resolution, GeoTIFF\n"
        "  page 1: 256 x 256, 3 x uint8 RGB (read as: YCbCr decoded to RGB); jpeg, tiles "
        "256 x 256; overview of page 0: left out by a job without pages; kept: resolution, "
        "NewSubfileType 1\n"
        "  page 2: 512 x 512, 1 x 1-bit uint MASK; deflate, one strip; mask of "
        "page 0: left out by a job without pages (a job that lists it fails)\n"
        "  page 3: 256 x 256, 1 x 1-bit uint MASK; deflate, one strip; mask of an overview "
        "of page 0: left out by a job without pages (a job that lists it fails)\n"
        "  a job without pages: processes 1 page(s); leaves out pages 1-3 (masks and "
        "overviews)\n")


def test_the_docs_table_of_the_json_fields_is_inspects(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    """A script reads ``inspect --json`` by the docs' table of its fields (``page_count``,
    ``default_job`` were described nowhere): each field of real documents (a COG with its
    overview and masks, a file that is no TIFF, pages a chain runs on and one it cannot) is
    in the table, of its type, and each the table says is always there is."""
    from doc_fields import check, table

    cog = _cog(tmp_path / "cog.tif")
    (tmp_path / "notes.tif").write_text("not a TIFF")
    mixed = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(mixed) as w:
        w.write(np.zeros((64, 80, 3), np.uint8), photometric="rgb", tile=(32, 32))
        w.write(np.zeros((64, 80), np.uint16), photometric="minisblack")
    docs = []
    for args in ([str(cog), str(tmp_path / "notes.tif")],
                 [str(mixed), "--ops", '[{"op": "equalize_hist"}]']):
        docs.append(json.loads(_inspect(capsys, *args, "--json")[1]))
    assert [d["schema"] for d in docs] == [1, 1]
    check(docs, table("inputs.md", "Fields of inspect --json"),
          "docs/inputs.md, Fields of inspect --json")


def test_an_internal_mask_is_said_carried(tmp_path: Path, capsys: pytest.CaptureFixture):
    """GDAL's internal mask right after its image: written after the output page by a job
    (docs/inputs.md), never processed as a page of its own."""
    path = tmp_path / "masked.tif"
    valid = np.zeros((64, 96), bool)
    valid[8:50, 10:90] = True
    gdal_masked(path, np.full((64, 96), 7, np.uint8), valid, block=None)
    code, out, _ = _inspect(capsys, str(path))
    assert code == 0
    assert out.splitlines()[2:] == [
        ("  page 1: 96 x 64, 1 x 1-bit uint MASK; adobe_deflate, one strip; internal "
         "mask of page 0: written after its output page (output_options.masks; reduced "
         "with downsample and for pyramid levels; not with ome), never processed (a job that "
         "lists it fails)"),
        ("  a job without pages: processes 1 page(s); carries page 1 (an internal mask) "
         "after its page")]


def test_thousands_of_identical_pages_are_one_line_and_json_gives_each(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    path = tmp_path / "archive.tif"
    tifffile.imwrite(path, np.zeros((3000, 32, 48), np.uint8), compression="zlib",
                     metadata=None, resolution=(300, 300))
    code, out, _ = _inspect(capsys, str(path))
    assert code == 0
    assert out == (f"{path}: 3000 page(s), TIFF, little-endian\n"
                   "  pages 0-2999 (3000 pages): 48 x 32, 1 x uint8 gray; adobe_deflate, "
                   "one strip; kept: resolution\n")
    code, out, _ = _inspect(capsys, str(path), "--json")
    [doc] = json.loads(out)["files"]
    assert doc["page_count"] == 3000 and len(doc["pages"]) == 3000 and doc["ok"]
    assert doc["pages"][2999] == {
        "index": 2999, "width": 48, "height": 32,
        "file": {"photometric": "MINISBLACK", "samples": 1, "bits": 8,
                 "sample_format": "UINT", "planar": "contiguous", "subfiletype": 0},
        "compression": "adobe_deflate", "tiles": None, "rows_per_strip": 32,
        "role": "image", "of": None, "default_job": "processed", "bands": 1,
        "dtype": "uint8", "photometric": "minisblack", "extrasamples": [],
        "conversion": "", "kept": ["resolution"]}


def test_headers_only_no_segment_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture):
    def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a pixel read")

    monkeypatch.setattr(tiff_read.PageReader, "read", no_read)
    monkeypatch.setattr(tiff_read.PageReader, "__init__", no_read)
    code, _, _ = _inspect(capsys, str(_cog(tmp_path / "cog.tif")), "--ops",
                          '[{"op": "gaussian_blur", "sigma": 2}]')
    assert code == 0


@pytest.mark.parametrize("photometric, told", [
    ("minisblack", "black, bit 0, stays 0, white 255"),
    ("miniswhite", "white, bit 0, becomes 255, black 0"),
])
def test_a_bilevel_page_says_what_its_bit_0_becomes(tmp_path: Path, photometric: str,
                                                     told: str, capsys: pytest.CaptureFixture):
    """A 1-bit page is read as 8-bit: its conversion says what bit 0 becomes and where black
    goes (not "0 is white, x255", which read as a contradiction)."""
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.eye(64, dtype=bool), photometric=photometric)
    code, out, _ = _inspect(capsys, str(path))
    assert code == 0
    assert f"(read as: bilevel {photometric} -> 8-bit minisblack ({told}));" in out, out


def test_the_corpus_conversions_and_refusals(capsys: pytest.CaptureFixture):
    files = [LIBTIFF_CORPUS / name for name in (
        "miniswhite-1c-1b.tiff", "palette-1c-8b.tiff", "logluv-3c-16b.tiff",
        "minisblack-2c-8b-alpha.tiff", "ojpeg_zackthecat_subsamp22_single_strip.tiff")]
    code, out, err = _inspect(capsys, *map(str, files))
    assert code == 1  # the LogLuv file: a job of it fails
    lines = out.splitlines()
    assert lines[1] == (
        "  page 0: 157 x 151, 1 x uint8 gray (read as: bilevel miniswhite -> 8-bit minisblack "
        "(white, bit 0, becomes 255, black 0)); none, one strip; kept: DocumentName")
    assert lines[3] == (
        "  page 0: 157 x 151, 1 x uint8 palette (read as: indices kept, with an op that mixes "
        "values or a JPEG output: 8-bit palette -> RGB uint16 (16-bit colormap, kept 16-bit)); "
        "none, strips of 52 rows; kept: DocumentName")
    assert lines[5] == (
        "  page 0: 1 x 1, 3 x 16-bit int LOGLUV; sgilog, one strip; refused: "
        "UnsupportedTiffError: compression SGILOG is not supported: SGILOG (LogLuv): "
        "convert the file to float32 first")
    assert lines[6] == "  a job without pages: processes 0 page(s); fails: page 0 refused"
    assert lines[8] == (
        "  page 0: 64 x 64, 2 x uint8 gray + alpha (associated) (read as: planes made "
        "contiguous); packbits, one strip, planar; kept: resolution, ImageDescription, "
        "DateTime, Artist")
    assert lines[10].startswith("  page 0: 234 x 213, 3 x uint8 RGB (read as: YCbCr decoded "
                                "to RGB); ojpeg, ")
    assert err == ""


def test_ops_say_whether_they_run_on_each_page_and_what_comes_out(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(np.zeros((64, 80, 3), np.uint8), photometric="rgb", tile=(32, 32))
        w.write(np.zeros((64, 80), np.uint16), photometric="minisblack")
    code, out, _ = _inspect(capsys, str(path), "--ops", '[{"op": "equalize_hist"}]')
    assert code == 1
    assert out.splitlines()[1:] == [
        "  page 0: 80 x 64, 3 x uint8 RGB; none, tiles 32 x 32; kept: resolution",
        ("    ops: cannot run: ops[0] (equalize_hist): equalize_hist needs 1 channel(s), the "
        "page has 3; put to_gray before it"),
        "  page 1: 80 x 64, 1 x uint16 gray; none, one strip; kept: resolution",
        ("    ops: cannot run: ops[0] (equalize_hist): equalize_hist needs uint8 pixels, the "
        "page has uint16 (OpenCV's equalizeHist is 8-bit only); put {\"op\": \"convert\", "
        "\"dtype\": \"uint8\"} before it, with an \"in_range\" on float pages (or use "
        "normalize, or percentile_stretch on 8 and 16-bit pages, instead)")]
    chain = ('[{"op": "normalized_difference", "a": 0, "b": 1}, '
             '{"op": "downsample", "factor": 2}]')
    code, out, _ = _inspect(capsys, str(path), "--ops", chain, "--json")
    [doc] = json.loads(out)["files"]
    assert code == 1 and not doc["ok"]
    assert doc["pages"][0]["ops"] == {"runs": True, "problems": [], "out": {
        "width": 40, "height": 32, "bands": 1, "dtype": "float32", "one_bit": False,
        "compression": "zstd"}}
    assert doc["pages"][1]["ops"]["problems"] == [
        ("ops[0] (normalized_difference): b is 1, the page has 1 band (index 0); it needs 2 "
         "bands or more: leave the page out of the job's pages")]
    code, out, _ = _inspect(capsys, str(path), "--ops", '[{"op": "to_gray"}]')
    assert code == 0
    assert out.splitlines()[2::2] == ["    ops: run -> 80 x 64, 1 x uint8",
                                      "    ops: run -> 80 x 64, 1 x uint16"]


def test_ops_that_are_not_json_are_shown_as_a_manifest_is(capsys: pytest.CaptureFixture):
    """--ops (and --output-options) that is not JSON: its line and column, what is likely
    wrong (the single quotes a shell invites, a trailing comma) and the text with a caret
    under the column, as a manifest's invalid JSON is said, then an example to give."""
    code, out, err = _inspect(capsys, "x.tif", "--ops", "[{'op': 'to_gray'}]")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        ("tiffpipe: invalid --ops: line 1, column 3: invalid JSON: Expecting property name "
         "enclosed in double quotes; JSON strings take double quotes (\"jobs\"), not single "
         "ones; give a list of ops, e.g. '[{\"op\": \"gaussian_blur\", \"sigma\": 2}]'"),
        "    [{'op': 'to_gray'}]",
        "      ^"]
    code, out, err = _inspect(capsys, "x.tif", "--output-options",
                              '{"compression": "jpeg" "level": 3}')
    assert (code, out) == (2, "")
    assert err.startswith("tiffpipe: invalid --output-options: line 1, column 24: invalid "
                          "JSON: Expecting ',' delimiter; a comma missing before this?"), err
    assert err.splitlines()[-2:] == ['    {"compression": "jpeg" "level": 3}', " " * 27 + "^"]


def test_bad_ops_and_files(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, out, err = _inspect(capsys, "x.tif", "--ops", '[{"op": "gaussian_blur"}]')
    assert (code, out) == (2, "")
    assert err == "tiffpipe: invalid --ops: ops[0].sigma: required, a number > 0 and <= 500\n"
    code, _, err = _inspect(capsys, "x.tif", "--ops", "[{")
    assert code == 2 and err.startswith("tiffpipe: invalid --ops: line 1, column 3: invalid "
                                        "JSON: "), err
    notes = tmp_path / "notes.tif"
    notes.write_text("hello, world")
    code, out, _ = _inspect(capsys, str(tmp_path / "none.tif"), str(notes))
    assert code == 1
    assert out.splitlines() == [
        (f"{tmp_path / 'none.tif'}: InputNotFoundError: {tmp_path / 'none.tif'} does not exist: "
        "check the path or URL and that the file is there"),
        (f"{notes}: NotATiffError: {notes}: not a TIFF file (it begins b'hell', not II*\\0 or "
        "MM\\0*): give a TIFF file, or export this one as TIFF again")]


def _other_formats(folder: Path) -> dict[str, tuple[str, str]]:
    """Files of other formats named .tif, as their own writers make them: name -> (what
    the message says it is, the first 4 bytes as quoted)."""
    import zipfile

    import imagecodecs
    from PIL import Image

    rgb = np.full((16, 24, 3), 90, np.uint8)
    made = {"png": imagecodecs.png_encode(rgb), "jpeg": imagecodecs.jpeg8_encode(rgb),
            "gif": imagecodecs.gif_encode(rgb[..., 0]), "bmp": imagecodecs.bmp_encode(rgb),
            "webp": imagecodecs.webp_encode(rgb)}
    for name, data in made.items():
        (folder / f"{name}.tif").write_bytes(data)
    Image.fromarray(rgb).save(folder / "pdf.tif", format="PDF")
    with zipfile.ZipFile(folder / "zip.tif", "w") as archive:
        archive.writestr("scan.tif", b"II*\x00")
    what = {"png": "a PNG image", "jpeg": "a JPEG image", "gif": "a GIF image",
            "bmp": "a BMP image", "webp": "a WebP image", "pdf": "a PDF document",
            "zip": "a ZIP archive"}
    return {name: (text, repr((folder / f"{name}.tif").read_bytes()[:4]))
            for name, text in what.items()}


def test_a_file_of_another_format_named_tif_is_named_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """A PNG (JPEG, GIF, BMP, WebP, PDF, ZIP) renamed .tif is said to be one, from its first
    bytes, with how to convert it: not only the bytes it begins with."""
    formats = _other_formats(tmp_path)
    convert = "convert it first, e.g. magick {}:in.tif out.tif (ImageMagick), and give that file"
    todo = {"png": convert.format("PNG"), "jpeg": convert.format("JPEG"),
            "gif": convert.format("GIF"), "bmp": convert.format("BMP"),
            "webp": convert.format("WEBP"),
            "pdf": ("render its pages as TIFF first, e.g. pdftoppm -tiff -r 300 in.tif page "
                    "(poppler), and give those files"),
            "zip": "unpack it and give the TIFF inside"}
    files = [str(tmp_path / f"{name}.tif") for name in formats]
    code, out, _ = _inspect(capsys, *files)
    assert code == 1
    assert out.splitlines() == [
        (f"{file}: NotATiffError: {file}: not a TIFF file: this is {what} (it begins {head}), "
         f"not a TIFF: {todo[name]}")
        for file, (name, (what, head)) in zip(files, formats.items(), strict=True)]
    # the same read from S3 (the first bytes of an object)
    (tmp_path / "text.tif").write_text("BM is not a BMP without its reserved zeros")
    with moto_s3(monkeypatch, "bkt") as s3:
        s3.upload_file(files[0], "bkt", "in/png.tif")
        s3.upload_file(str(tmp_path / "text.tif"), "bkt", "in/text.tif")
        code, out, _ = _inspect(capsys, "s3://bkt/in/png.tif", "s3://bkt/in/text.tif")
    assert out.splitlines() == [
        (f"s3://bkt/in/png.tif: NotATiffError: s3://bkt/in/png.tif: not a TIFF file: this is "
         f"a PNG image (it begins b'\\x89PNG'), not a TIFF: {todo['png']}"),
        ("s3://bkt/in/text.tif: NotATiffError: s3://bkt/in/text.tif: not a TIFF file (it "
         "begins b'BM i', not II*\\0 or MM\\0*): give a TIFF file, or export this one as TIFF "
         "again")]


def test_an_s3_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture):
    cog = _cog(tmp_path / "cog.tif")
    with moto_s3(monkeypatch, "bkt") as s3:
        s3.upload_file(str(cog), "bkt", "a/cog.tif")
        code, out, _ = _inspect(capsys, "s3://bkt/a/cog.tif", "--json")
    [doc] = json.loads(out)["files"]
    assert code == 0 and doc["file"] == "s3://bkt/a/cog.tif"
    assert [(p["role"], p["of"]) for p in doc["pages"]] == [
        ("image", None), ("overview", 0), ("mask", 0), ("mask", 0)]
    assert doc["pages"][0]["kept"] == ["resolution", "GeoTIFF"]


def test_an_ome_tiff_and_a_cut_chain(tmp_path: Path, capsys: pytest.CaptureFixture):
    ome = tmp_path / "ome.tif"
    tifffile.imwrite(ome, np.zeros((3, 64, 64), np.uint16), ome=True, tile=(32, 32),
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD3", "CD8"]}})
    code, out, _ = _inspect(capsys, str(ome))
    assert code == 0
    assert out.splitlines()[1] == ("  pages 0-2 (3 pages): 64 x 64, 1 x uint16 gray; none, "
                                   "tiles 32 x 32; kept: resolution, OME name and Channel")
    code, out, _ = _inspect(capsys, str(ome), "--json")
    names = [p["ome_name"] for p in json.loads(out)["files"][0]["pages"]]
    # the text names them too (a line a page, after the groups): which page to list for
    # which channel, that only --json said
    code, text, _ = _inspect(capsys, str(ome))
    assert text.splitlines()[2:] == ["  OME names (each output page's PageName):",
                                     *(f"    page {i}: {n}" for i, n in enumerate(names))]
    assert names == ["DAPI", "CD3", "CD8"] or all(n.endswith(c) for n, c in
                                                  zip(names, ["DAPI", "CD3", "CD8"]))
    # a file cut in its last page's IFD: the pages before, and why a job fails
    data = ome.read_bytes()
    with tifffile.TiffFile(ome) as tf:
        last = tf.pages[2].offset
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:last + 1])
    code, out, _ = _inspect(capsys, str(cut))
    assert code == 1
    assert "CorruptTiffError" in out and "the chain of pages (IFDs) breaks after page 1" in out


def test_ops_are_checked_against_the_output_options_given(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture):
    """``--output-options`` (a manifest's ``output_options``): the chain checked against
    the output a job of those options writes, as PlanJob checks it; without it, the
    default options (zstd). A 16-bit page and a JPEG output: the chain cannot run there (a
    job fails when planned), which inspect said it could. A palette page of an empty chain
    keeps its indices only for a lossless output."""
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, np.zeros((64, 80), np.uint16))
    code, out, _ = _inspect(capsys, str(path), "--ops", "[]")
    assert code == 0 and out.splitlines()[2] == "    ops: run -> 80 x 64, 1 x uint16"
    code, out, _ = _inspect(capsys, str(path), "--ops", "[]", "--output-options",
                            '{"compression": "jpeg"}')
    assert code == 1
    assert out.splitlines()[2] == ("    ops: cannot run: jpeg output needs uint8 pixels, the "
                                   f"output is uint16; end the ops with {UINT16_TO_UINT8}, or "
                                   "choose zstd, deflate, lzw or none")
    code, out, _ = _inspect(capsys, str(path), "--output-options",
                            '{"compression": "deflate", "tile": 16}', "--json")
    assert code == 0 and json.loads(out)["files"][0]["pages"][0]["ops"]["runs"]
    palette = tmp_path / "palette.tif"
    tifffile.imwrite(palette, np.zeros((32, 32), np.uint8), photometric="palette",
                     colormap=np.zeros((3, 256), np.uint16))
    for options, kept in (("{}", "palette"), ('{"compression": "jpeg"}', "RGB")):
        code, out, _ = _inspect(capsys, str(palette), "--output-options", options, "--json")
        assert json.loads(out)["files"][0]["pages"][0]["photometric"] == {
            "palette": "palette", "RGB": "rgb"}[kept], options
    code, out, err = _inspect(capsys, str(path), "--output-options", '{"compression": "gif"}')
    assert (code, out) == (2, "")
    assert err.startswith("tiffpipe: invalid --output-options: output_options.compression: "
                          "expected one of"), err
    code, _, err = _inspect(capsys, str(path), "--output-options", "[")
    assert code == 2 and err.startswith("tiffpipe: invalid --output-options: line 1, column 2: "
                                        "invalid JSON: "), err


def test_a_pages_subifd_levels_are_shown(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A page's reduced-resolution levels stored as its SubIFDs (an OME-TIFF pyramid, as
    tiffpipe's "pyramid" writes it, or QuPath and bfconvert): the text and --json show their
    sizes, from their headers, so that whether a file has a pyramid (an output asked for
    with "pyramid": true) can be seen; they said nothing of them."""
    path = tmp_path / "pyramid.ome.tif"
    planes = np.zeros((2, 200, 300), np.uint16)
    write_ome_pyramid(path, planes)
    code, out, err = _inspect(capsys, str(path))
    assert code == 0 and err == ""
    assert out.splitlines()[1] == (
        "  pages 0-1 (2 pages): 300 x 200, 1 x uint16 gray; none, tiles 64 x 64; pyramid "
        "levels (SubIFDs): 150 x 100, 75 x 50 (left out by a job: set output_options.pyramid "
        "for levels made from the processed pixels); kept: resolution, OME name")
    code, out, _ = _inspect(capsys, str(path), "--json")
    pages = json.loads(out)["files"][0]["pages"]
    assert [p["levels"] for p in pages] == [[[150, 100], [75, 50]]] * 2
    # a page without SubIFDs has no "levels" (the --json of every other page is as it was)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, planes[0], metadata=None)
    code, out, _ = _inspect(capsys, str(plain), "--json")
    assert "levels" not in json.loads(out)["files"][0]["pages"][0]


def test_ops_that_crop_the_whole_part_of_a_page_cut_short_run(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture):
    """A page cut short (the file's copy stopped in its fourth tile) is refused, and with
    ``--ops`` it is refused only for a chain that reads its lost tiles, as PlanJob decides:
    a crop of its first row of tiles runs; one that reaches the lost tile does not."""
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.random.default_rng(1).integers(0, 255, (128, 128), np.uint8),
                     tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        cut = int(tf.pages[0].dataoffsets[3]) + 10
    path.write_bytes(path.read_bytes()[:cut])

    def crop(y: int) -> str:
        return json.dumps([{"op": "crop", "x": 0, "y": y, "width": 128, "height": 64}])

    code, out, _ = _inspect(capsys, str(path), "--json")
    assert code == 1
    assert "segment 3 ends at byte" in json.loads(out)["files"][0]["pages"][0]["refused"][
        "message"]
    code, out, _ = _inspect(capsys, str(path), "--ops", crop(0), "--json")
    [doc] = json.loads(out)["files"]
    assert code == 0 and doc["ok"] and "refused" not in doc["pages"][0]
    assert doc["pages"][0]["ops"]["out"]["height"] == 64
    code, out, _ = _inspect(capsys, str(path), "--ops", crop(32), "--json")
    assert code == 1
    assert "the file is truncated" in json.loads(out)["files"][0]["pages"][0]["refused"][
        "message"]


def _band_xml(names: list[str], scales: list[str], offsets: list[str]) -> str:
    items = "".join(
        f'  <Item name="DESCRIPTION" sample="{b}" role="description">{n}</Item>\n'
        + (f'  <Item name="SCALE" sample="{b}" role="scale">{scales[b]}</Item>\n'
           if scales[b] else "")
        + (f'  <Item name="OFFSET" sample="{b}" role="offset">{offsets[b]}</Item>\n'
           if offsets[b] else "")
        for b, n in enumerate(names))
    return f'<GDALMetadata>\n  <Item name="SPACECRAFT">S2A</Item>\n{items}</GDALMetadata>\n'


def _s2(path: Path) -> Path:
    """A Sentinel-2 stack of 4 bands, each named, with a scale and an offset."""
    geo = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (34735, "H", 4, (1, 1, 0, 0), True)]
    names = ["B02", "B03", "B04", "B08"]
    tifffile.imwrite(path, np.zeros((64, 64, 4), np.uint16), photometric="minisblack",
                     planarconfig="contig", metadata=None, extratags=[
                         *geo, (42112, "s", 0, _band_xml(names, ["0.0001"] * 4, ["-0.1"] * 4),
                                True), (42113, "s", 0, "0", True)])
    return path


def test_inspect_and_a_job_read_the_band_roles_alike(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture):
    """inspect's bands and a job's band names (the names normalized_difference gives its
    band) are read by one function from the page's GDAL_METADATA (``page_band_roles``)."""
    from pipeline.adapters.metadata import band_names, page_band_roles

    s2 = _s2(tmp_path / "s2.tif")
    (info,) = tiff_read.read_infos(str(s2), None)
    roles = page_band_roles(info.metadata)
    assert roles[3] == {"description": "B08", "scale": "0.0001", "offset": "-0.1"}
    assert page_band_roles({}) == {} and page_band_roles(None) == {}
    code, out, _ = _inspect(capsys, str(s2), "--json")
    assert code == 0
    items = json.loads(out)["files"][0]["pages"][0]["band_items"]
    assert [item["description"] for item in items] == band_names(info) == [
        roles[b]["description"] for b in range(4)]


def test_band_names_scales_and_offsets_are_shown_by_the_ops_index(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A multispectral scene's band names (GDAL's descriptions), scales and offsets, by the
    0-based index select_bands and normalized_difference take: GDAL and QGIS number bands
    from 1, so B08 (NIR) of a Sentinel-2 stack is band 8 there and 7 here. Before, inspect
    said only that GDAL_METADATA was kept, and the indices had to be found elsewhere."""
    s2 = _s2(tmp_path / "s2.tif")
    mixed = tmp_path / "mixed.tif"
    tifffile.imwrite(mixed, np.zeros((64, 64, 3), np.uint16), photometric="minisblack",
                     planarconfig="contig", metadata=None, extratags=[
                         (42112, "s", 0, _band_xml(["SR_B4", "SR_B5", "QA_PIXEL"],
                                                   ["0.0000275", "0.0000275", ""],
                                                   ["-0.2", "-0.2", ""]), True)])
    counts = tmp_path / "counts.tif"  # (scales and offsets, no names)
    xml = _band_xml(["", ""], ["0.0000275"] * 2, ["-0.2"] * 2).replace(
        '<Item name="DESCRIPTION" sample="0" role="description"></Item>', "").replace(
        '<Item name="DESCRIPTION" sample="1" role="description"></Item>', "")
    tifffile.imwrite(counts, np.zeros((64, 64, 2), np.uint16), photometric="minisblack",
                     planarconfig="contig", metadata=None, extratags=[(42112, "s", 0, xml, True)])
    code, out, err = _inspect(capsys, str(s2), str(mixed), str(counts))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[8] == ("    bands 0 to 1 (0-based, as select_bands and normalized_difference "
                        "take them; GDAL's band 1 is 0), no names; every band: scale 2.75e-05, "
                        "offset -0.2")
    assert lines[2] == ("    bands (0-based, as select_bands and normalized_difference take "
                        "them; GDAL's band 1 is 0): 0 B02, 1 B03, 2 B04, 3 B08; every band: "
                        "scale 0.0001, offset -0.1")
    assert lines[5] == ("    bands (0-based, as select_bands and normalized_difference take "
                        "them; GDAL's band 1 is 0): 0 SR_B4 (scale 2.75e-05, offset -0.2), "
                        "1 SR_B5 (scale 2.75e-05, offset -0.2), 2 QA_PIXEL")
    code, out, _ = _inspect(capsys, str(s2), "--json")
    page = json.loads(out)["files"][0]["pages"][0]
    assert page["band_items"][3] == {"description": "B08", "scale": 0.0001, "offset": -0.1}


def test_ops_say_a_convert_drops_the_no_data_value_as_validate_inputs_does(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A uint16 scene with GDAL_NODATA 0 and a chain ending in a convert to uint8 without
    "nodata": ``inspect --ops`` says the collar is written as data under no GDAL_NODATA, in
    the words ``validate --inputs`` and the run's report use (it said nothing); a convert
    with "nodata" gets no such note."""
    src = tmp_path / "scene.tif"
    scene = np.full((64, 96), 30000, np.uint16)
    scene[:, :20] = 0  # (the collar outside the swath)
    tifffile.imwrite(src, scene, tile=(32, 32), extratags=[(42113, "s", 0, "0", True)])
    ops = [{"op": "gaussian_blur", "sigma": 1}, {"op": "convert", "dtype": "uint8"}]
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(src), "output": str(tmp_path / "out.tif"), "ops": ops}]}))
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 0
    note = ('ops[1] (convert) to uint8 has no "nodata": the no-data value 0 (page 0) is '
            "converted as data and the output has no GDAL_NODATA, so GDAL and QGIS show the "
            'no-data area as data; give it "nodata": 0 to keep it (the no-data area 0, the '
            "data 1..255)")
    assert capsys.readouterr().out.splitlines()[1:] == [f"  jobs[0] ({src}): {note}"]
    code, out, _ = _inspect(capsys, str(src), "--ops", json.dumps(ops))
    assert code == 0 and f"\n  ops: note: {note}\n" in out, out
    code, out, _ = _inspect(capsys, str(src), "--ops", json.dumps(
        [{"op": "convert", "dtype": "uint8", "nodata": 0}]))
    assert code == 0 and "ops: note" not in out, out
    code, out, _ = _inspect(capsys, str(src), "--json", "--ops", json.dumps(ops))
    assert json.loads(out)["files"][0]["ops_notes"] == [note]



def test_a_band_the_page_does_not_have_is_a_problem_not_a_crash(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """``select_bands`` [2] on 1-band pages: the plan's notes (XMP, no-data, colormap) and
    ``inspect --ops``'s output XMP worked out the output's bands of every page, before
    anyone looked at the chain's problems, and ended in ``IndexError: tuple index out of
    range`` (inspect of an OME channel per page; validate --inputs and estimate of a page
    with XMP). Each says the problem instead, in validate's words."""
    problem = "ops[0] (select_bands): bands[0] is 2, the page has 1 band (index 0)"
    ops = json.dumps([{"op": "select_bands", "bands": [2]}])
    fluo = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(fluo, np.zeros((4, 32, 48), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["a", "b", "c", "d"]}})
    code, out, _ = _inspect(capsys, str(fluo), "--ops", ops)
    assert code == 1 and f"ops: cannot run: {problem}" in out, out
    xmp = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:'
           b'meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>'
           b'</x:xmpmeta><?xpacket end="w"?>')
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((32, 48), np.uint8), extratags=[(700, "B", len(xmp), xmp,
                                                                     True)])
    code, out, _ = _inspect(capsys, str(gray), "--ops", ops)
    assert code == 1 and f"ops: cannot run: {problem}; pick band 0" in out, out
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(gray), "output": str(tmp_path / "out.tif"), "ops": json.loads(ops)}]}))
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 2
    out, err = capsys.readouterr()
    assert f"page 0: {problem}; pick band 0" in out + err and "IndexError" not in out + err
    assert cli.main(["estimate", str(tmp_path / "m.json")]) == 2
    out, err = capsys.readouterr()
    assert f"page 0: {problem}; pick band 0" in err, err


def test_select_bands_on_a_file_of_a_channel_a_page_names_the_pages(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """An OME CYX stack stores a channel a page: ``select_bands`` [3] on its 1-band pages
    was told "pick band 0", the wrong way; it is told which page is channel 3, by its
    Channel's name, at each page's Z (ZCYX: the channel of the same Z slice), the pages of
    a job of some pages too. A 1-band page of no stack keeps "pick band 0"."""
    fluo = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(fluo, np.zeros((4, 32, 48), np.uint16), ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": ["DAPI", "FITC", "Cy3", "Cy5"]}})
    stack = tmp_path / "zcyx.ome.tif"
    tifffile.imwrite(stack, np.zeros((2, 3, 32, 48), np.uint16), ome=True,
                     metadata={"axes": "ZCYX"})
    wrong = "ops[0] (select_bands): bands[0] is 2, the page has 1 band (index 0); "
    hint = 'this file stores its channels as pages: "pages": '
    code, out, _ = _inspect(capsys, str(fluo), "--ops", '[{"op": "select_bands", "bands": [3]}]')
    assert code == 1 and (f"cannot run: {wrong.replace('is 2', 'is 3')}{hint}[3] picks "
                          "channel 3 (Cy5)\n") in out, out
    code, out, _ = _inspect(capsys, str(fluo), "--ops",
                            '[{"op": "select_bands", "bands": [0, 2]}]')
    assert code == 1 and '"pages": [0, 2] picks channels 0 (DAPI), 2 (Cy3)\n' in out, out
    code, out, _ = _inspect(capsys, str(stack), "--ops", '[{"op": "select_bands", "bands": [2]}]')
    assert code == 1 and f"{wrong}{hint}[2] picks channel 2\n  pages 3-5" in out, out
    assert f"{wrong}{hint}[5] picks channel 2\n" in out, out
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(stack), "output": str(tmp_path / "out.tif"), "pages": [3],
         "ops": [{"op": "select_bands", "bands": [2]}]}]}))
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 2
    assert f"page 3: {wrong}{hint}[5] picks channel 2\n" in capsys.readouterr().err
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((32, 48), np.uint16))
    code, out, _ = _inspect(capsys, str(plain), "--ops", '[{"op": "select_bands", "bands": [2]}]')
    assert code == 1 and f"{wrong}pick band 0\n" in out, out
