"""The ops a refused output's message tells to add fit the page they are told of.

A JPEG output of a 16-bit page names the ``convert``'s ``in_range``: the page's own top
value when its header says one (MaxSampleValue, an OME Image's SignificantBits), else the
range to give or a ``percentile_stretch`` first; a plain ``convert`` (what it said) maps
0..65535 onto 0..255, and a 12-bit camera's 4095 became 16. A bilevel (1-bit) output of a
page that is not one band of uint8 names the ops of that page: ``to_gray`` only of RGB, a
threshold, and a ``convert`` of its 0 and maximum to 0 and 255 (it said ``to_gray`` of a
one-band uint16 page, which does nothing there). Each hint, followed, plans and makes what
the output holds. Real TIFFs written by tifffile, planned as PlanJob plans them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from conftest import UINT16_TO_UINT8

from pipeline.adapters.tiff_read import read_infos
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.core.ops import apply_chain, chain_from_json
from pipeline.steps.planning import plan_pages

#: 12-bit camera values in uint16 (0..4095)
CAMERA = (np.arange(96 * 64, dtype=np.uint16).reshape(96, 64) * 7) % 4096
DOCS = 'docs/manifest-and-ops.md, "Convert another sample type"'


def problems(tmp_path: Path, src: Path, ops: list[dict[str, Any]], **options: Any) -> list[str]:
    """What PlanJob refuses of ``src`` through ``ops`` with these output options."""
    spec = JobSpec(input=str(src), output=str(tmp_path / "never.tif"), ops=ops, tile=64,
                   output_options=OutputOptions(tile=64, **options))
    return list(map(str, plan_pages(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)[1]))


def hinted_ops(problem: str, value: int = 2000) -> list[dict[str, Any]]:
    """The ops a problem tells to end the ops with (their JSON objects, in order), a
    threshold's ``V`` (a value of the page's own) as ``value``."""
    told = problem.split("end the ops with ", 1)[1].replace('"value": V', f'"value": {value}')
    decoder, ops, at = json.JSONDecoder(), [], 0
    while (at := told.find('{"op"', at)) >= 0:
        op, end = decoder.raw_decode(told, at)
        ops.append(op)
        at = end
    return ops


def test_jpeg_of_12_bit_data_names_the_in_range_its_header_gives(tmp_path):
    """MaxSampleValue 4095, or an OME Image's SignificantBits 12: the convert told maps
    0..4095 onto 0..255 (the brightest value 255, not 16), and through ops that keep values
    (a blur) too."""
    tagged = tmp_path / "max4095.tif"
    tifffile.imwrite(tagged, CAMERA, tile=(64, 64), extratags=[(281, "H", 1, 4095, True)])
    ome = tmp_path / "sig12.ome.tif"
    tifffile.imwrite(ome, CAMERA, tile=(64, 64), ome=True, metadata={"SignificantBits": 12})
    for src, said in ((tagged, "MaxSampleValue"), (ome, "OME SignificantBits 12")):
        for ops in ([], [{"op": "gaussian_blur", "sigma": 1.0}]):
            (problem,) = problems(tmp_path, src, ops, compression="jpeg")
            assert problem == (
                "page 0: jpeg output needs uint8 pixels, the output is uint16; end the ops "
                'with {"op": "convert", "dtype": "uint8", "in_range": [0, 4095]} (its '
                f'{said} says its values go up to 4095; without "in_range" a convert maps '
                "uint16's whole range, 0..65535, onto 0..255, and 4095 ends at 16), or "
                "choose zstd, deflate, lzw or none")
            told = ops + hinted_ops(problem)
            assert problems(tmp_path, src, told, compression="jpeg") == []
            out = apply_chain(CAMERA[..., None], chain_from_json(told[-1:]))
            assert (out.dtype, out.max()) == (np.uint8, 255)


def note(tmp_path: Path, src: Path, ops: list[dict[str, Any]]) -> str:
    """What PlanJob's plan of ``src`` through ``ops`` says (the job's report message)."""
    spec = JobSpec(input=str(src), output=str(tmp_path / "never.tif"), ops=ops, tile=64,
                   output_options=OutputOptions(tile=64))
    plan, refused = plan_pages(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    assert refused == []
    return plan.note


def test_a_plain_convert_of_12_bit_data_is_told_the_in_range_its_header_gives(tmp_path):
    """A plain convert to uint8 of a 12-bit camera's uint16 (MaxSampleValue 4095, or an OME
    Image's SignificantBits 12) maps 0..65535 onto 0..255: the brightest value becomes 16, a
    near-black output, which ran without a word (only a JPEG output was refused, naming
    the in_range). The job's note says so and gives the in_range, which makes 4095 255;
    not of a convert with an in_range, after a stretch, or of a page that says no depth."""
    tagged = tmp_path / "max4095.tif"
    tifffile.imwrite(tagged, CAMERA, tile=(64, 64), extratags=[(281, "H", 1, 4095, True)])
    ome = tmp_path / "sig12.ome.tif"
    tifffile.imwrite(ome, CAMERA, tile=(64, 64), ome=True, metadata={"SignificantBits": 12})
    plain = [{"op": "gaussian_blur", "sigma": 1.0}, {"op": "convert", "dtype": "uint8"}]
    for src, said in ((tagged, "MaxSampleValue"), (ome, "OME SignificantBits 12")):
        told = note(tmp_path, src, plain)
        assert told == (
            "page 0: ops[1] (convert) maps uint16's whole range, 0..65535, onto uint8's "
            f"0..255, and its {said} says the values go up to 4095: they end at 16 of 255, "
            'nearly black; give the convert "in_range": [0, 4095] to spread them over 0..255')
        assert apply_chain(CAMERA[..., None], chain_from_json(plain[1:])).max() == 16
        in_range = json.JSONDecoder().raw_decode(told.split('"in_range": ')[1])[0]
        fixed = {**plain[1], "in_range": in_range}
        assert note(tmp_path, src, [plain[0], fixed]) == ""
        assert apply_chain(CAMERA[..., None], chain_from_json([fixed])).max() == 255
        stretched = [{"op": "percentile_stretch"}, {"op": "convert", "dtype": "uint8"}]
        assert note(tmp_path, src, stretched) == ""
    untagged = tmp_path / "plain.tif"
    tifffile.imwrite(untagged, CAMERA, tile=(64, 64))
    assert note(tmp_path, untagged, plain) == ""
    # onto the convert's own out_range, or the type's less the end its nodata takes
    for options, onto, ends in (({"out_range": [0, 100]}, "0..100", "6 of 100"),
                                ({"nodata": 0}, "1..255", "17 of 255")):
        convert = {**plain[1], **options}
        told = note(tmp_path, tagged, [plain[0], convert])
        assert f"onto uint8's {onto}, and" in told and f"they end at {ends}," in told, told
        assert f"to spread them over {onto}" in told
        assert apply_chain(CAMERA[..., None], chain_from_json([convert])).max() == \
            int(ends.split()[0])


def test_jpeg_of_16_bit_data_of_no_known_depth_names_a_range_or_a_stretch(tmp_path):
    """Nothing says the bits: the range to give (a 12-bit camera's as the example), or a
    percentile_stretch before a plain convert; an op that remaps values (invert) leaves the
    header's top value untold; int16 is told its range only (a stretch then a plain convert
    would map its 0 to 128)."""
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, CAMERA, tile=(64, 64))
    tagged = tmp_path / "max4095.tif"
    tifffile.imwrite(tagged, CAMERA, tile=(64, 64), extratags=[(281, "H", 1, 4095, True)])
    told = ("page 0: jpeg output needs uint8 pixels, the output is uint16; end the ops with "
            f"{UINT16_TO_UINT8}, or choose zstd, deflate, lzw or none")
    assert "in_range" in told and "percentile_stretch" in told and DOCS in told
    assert problems(tmp_path, plain, [], compression="jpeg") == [told]
    assert problems(tmp_path, tagged, [{"op": "invert"}], compression="jpeg") == [told]
    stretch = [{"op": "percentile_stretch"}, {"op": "convert", "dtype": "uint8"}]
    assert problems(tmp_path, plain, stretch, compression="jpeg") == []
    signed = tmp_path / "int16.tif"
    tifffile.imwrite(signed, CAMERA.astype(np.int16), tile=(64, 64))
    assert problems(tmp_path, signed, [], compression="jpeg") == [(
        "page 0: jpeg output needs uint8 pixels, the output is int16; end the ops with "
        '{"op": "convert", "dtype": "uint8", "in_range": [low, high]} (low and high: the '
        "range the page's values use; without \"in_range\" a convert maps int16's whole "
        f"range, -32768..32767, onto 0..255; {DOCS}), or choose zstd, deflate, lzw or none")]


def test_bilevel_of_a_page_not_one_band_of_uint8_names_the_ops_of_that_page(tmp_path):
    """One band of uint16: a threshold, then a convert of 0 and 65535 to 0 and 255 (no
    to_gray: one band is gray already); RGB of uint16: to_gray first; three gray bands
    (MINISBLACK, which to_gray refuses): a select_bands; int16: its own maximum. Each told
    chain (V: a value of the page's) plans and makes 0 and 255 only."""
    cases = {
        "gray16": (CAMERA, "minisblack", None, "uint16 with 1 band"),
        "rgb16": (np.stack([CAMERA] * 3, -1), "rgb", '{"op": "to_gray"}, then ',
                  "uint16 with 3 bands"),
        "bands16": (np.stack([CAMERA] * 3), "minisblack",
                    '{"op": "select_bands", "bands": [0]} (or the band you want), then ',
                    "uint16 with 3 bands"),
        "gray_i16": (CAMERA.astype(np.int16), "minisblack", None, "int16 with 1 band"),
    }
    for name, (pixels, photometric, first, has) in cases.items():
        src = tmp_path / f"{name}.tif"
        tifffile.imwrite(src, pixels, tile=(64, 64), photometric=photometric,
                         planarconfig="separate" if name == "bands16" else None)
        (problem,) = problems(tmp_path, src, [], bilevel=True)
        top = 32767 if name == "gray_i16" else 65535
        otsu = "" if name == "gray_i16" else '; or {"op": "otsu_threshold"}'
        assert problem == (
            "page 0: output_options.bilevel: a 1-bit output holds one band of uint8, 0 and "
            f"255 only, the output is {has}; end the ops with {first or ''}"
            '{"op": "threshold", "value": V} (V a value of the page\'s own: the pixels above '
            f"it become {top}, the others 0{otsu}), then "
            f'{{"op": "convert", "dtype": "uint8", "in_range": [0, {top}]}} (its 0 and {top} '
            'to 0 and 255), or drop "bilevel"'), name
        told = hinted_ops(problem)
        assert problems(tmp_path, src, told, bilevel=True) == [], name
        with tifffile.TiffFile(src) as tf:
            page = tf.pages[0].asarray()
        page = np.moveaxis(page, 0, -1) if name == "bands16" else page
        out = apply_chain(page if page.ndim == 3 else page[..., None], chain_from_json(told))
        assert out.dtype == np.uint8 and np.squeeze(out).shape == CAMERA.shape, name
        assert set(np.unique(out)) == {0, 255}, name
