"""Whether an output is a BigTIFF or a classic TIFF (``output_options.bigtiff``), and what
keeps a classic TIFF from passing its 4 GiB.

The plan counts an output's pixels as written uncompressed (a 1-bit output's at a bit a
pixel, its carried masks too): plan-level tests with the page sizes of big scans (no
giant file is written). A classic output whose tiles pass 4 GiB anyway (noisy bits in
group4) fails its merge with nothing written: tested on a small run's kept work with the
limit lowered (``tiff_layout.CLASSIC_TIFF_BYTES``, which merge reads when it runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from test_s3_merge import _plan

from pipeline import cli
from pipeline.adapters.segments import compose
from pipeline.adapters.tiff_header import LayoutOverflow, LayoutRecorder, Placeholder
from pipeline.core import plan as plan_module
from pipeline.core import tiff_layout
from pipeline.core.manifest import parse_manifest
from pipeline.core.models import JobPlan, JobSpec, OutputOptions, PageInfo
from pipeline.core.plan import bigtiff_output, held_output, make_plan, single_task
from pipeline.core.tiff_layout import Span
from pipeline.errors import ManifestError, OutputTooLargeError
from pipeline.steps import merge as merge_mod

THRESHOLD = [{"op": "threshold", "value": 127}]


def gray_page(height: int, width: int, mask_ifd: int = 0) -> PageInfo:
    """A one-band uint8 page of a scan (only its header: nothing is read)."""
    return PageInfo(index=0, height=height, width=width, channels=1, dtype="uint8",
                    photometric="minisblack", extrasamples=[], tiled=True, segment_rows=512,
                    compression="zstd", mask_ifd=mask_ifd)


def plan_of(page: PageInfo, ops: list[dict[str, Any]] | None = None, **options: Any
            ) -> JobPlan:
    spec = JobSpec(input="/in.tif", output="/out.tif", ops=ops or [],
                   output_options=OutputOptions(**options))
    plan, problems = make_plan(0, spec, [page], "/work/jobs/00000", 0.0)
    assert problems == []
    return plan


# --- the plan: what the output's size is counted as ----------------------------------


def test_a_1bit_page_is_classic_until_its_packed_bits_pass_the_limit():
    """A 50,000 x 50,000 scan written 1-bit: 2.5 G pixels, more than BIGTIFF_ABOVE in 8-bit
    terms (which made it a BigTIFF), 312.5 MB packed: a classic TIFF. A page whose packed
    bits pass 2 GiB (140,000 x 140,000: 2.45 GB) is a BigTIFF."""
    scan = gray_page(50_000, 50_000)
    assert scan.height * scan.width > plan_module.BIGTIFF_ABOVE
    assert bigtiff_output(plan_of(scan))  # 8-bit: as before
    one_bit = plan_of(scan, THRESHOLD, bilevel=True, compression="group4")
    assert plan_module.raw_output_bytes(one_bit) == 50_000 * 6250
    assert not bigtiff_output(one_bit)
    huge = plan_of(gray_page(140_000, 140_000), THRESHOLD, bilevel=True,
                   compression="group4")
    assert plan_module.raw_output_bytes(huge) == 140_000 * 17_500 > plan_module.BIGTIFF_ABOVE
    assert bigtiff_output(huge)


def test_a_1bit_row_is_packed_to_whole_bytes():
    """A row of 60,001 pixels takes 7,501 bytes (TIFF starts each row on a byte)."""
    plan = plan_of(gray_page(3, 60_001), THRESHOLD, bilevel=True)
    assert plan_module.raw_output_bytes(plan) == 3 * 7501


def test_a_carried_mask_page_is_counted():
    """An 8-bit page just under the limit is classic; with its internal mask carried after
    it (1 bit a pixel: 264.5 MB more) the output passes it: a BigTIFF."""
    side = 46_000
    assert side * side <= plan_module.BIGTIFF_ABOVE < side * side * 9 // 8
    assert not bigtiff_output(plan_of(gray_page(side, side)))
    masked = plan_of(gray_page(side, side, mask_ifd=1234))
    assert plan_module.raw_output_bytes(masked) == side * side + side * (side // 8)
    assert bigtiff_output(masked)


def test_the_bigtiff_option_overrides_the_size():
    small, big = gray_page(100, 100), gray_page(50_000, 50_000)
    assert bigtiff_output(plan_of(small, bigtiff=True))
    assert not bigtiff_output(plan_of(big, bigtiff=False))
    assert not bigtiff_output(plan_of(small, bigtiff="auto"))
    assert bigtiff_output(plan_of(big, bigtiff="auto"))


def test_a_1bit_output_is_held_by_what_its_encoded_tiles_may_take():
    """A single task keeps a small output's encoded tiles in memory. A 10,000 x 10,000 1-bit
    page: 100 MB in 8-bit terms (not held before), 12.5 MB packed: held in zstd; in group4
    noisy bits take up to GROUP4_BITS_PER_PIXEL bits a pixel (87.5 MB): not held."""
    page = gray_page(10_000, 10_000)
    zstd = plan_of(page, THRESHOLD, bilevel=True)
    group4 = plan_of(page, THRESHOLD, bilevel=True, compression="group4")
    assert single_task(zstd) and single_task(group4)
    assert not held_output(plan_of(page, THRESHOLD))  # 8-bit: 100 MB
    assert held_output(zstd)
    assert plan_module.held_bytes(group4) == 12_500_000 * plan_module.GROUP4_BITS_PER_PIXEL
    assert not held_output(group4)


@pytest.mark.parametrize("value, ok", [(True, True), (False, True), ("auto", True),
                                       (1, False), ("yes", False), (None, False)])
def test_the_bigtiff_option_takes_true_false_or_auto(value, ok):
    manifest = {"jobs": [{"input": "/in.tif", "output": "/out.tif",
                          "output_options": {"bigtiff": value}}]}
    if ok:
        spec = parse_manifest(manifest, "m.json", "/data")[0]
        got = spec.output_options.bigtiff
        assert got == value and type(got) is type(value)
        return
    with pytest.raises(ManifestError) as err:
        parse_manifest(manifest, "m.json", "/data")
    want = f'expected true, false or "auto", got {json.dumps(value)}'
    assert err.value.problems == [f"jobs[0].output_options.bigtiff: {want}"]


# --- the layout: a classic TIFF never passes its 4 GiB --------------------------------


def test_tifffile_writes_a_classic_tiff_past_4_gib_the_recorder_stops_it():
    """tifffile packs a page's offsets only: a classic page whose last tile starts under
    4 GiB and ends past it is laid out without an error (a file no classic reader holds);
    with the classic limit, the recorder stops the write of that tile."""
    sizes = [2**32 - 100]  # (placeholders: no byte is held)

    def lay_out(recorder: LayoutRecorder) -> None:
        with tifffile.TiffWriter(recorder, bigtiff=False) as writer:
            writer.write(iter([Placeholder(Span("s", 0, n)) for n in sizes]), shape=(16, 16),
                         dtype="uint8", tile=(16, 16), compression=8)

    unguarded = LayoutRecorder()
    lay_out(unguarded)
    assert unguarded.size > tiff_layout.CLASSIC_TIFF_BYTES
    with pytest.raises(LayoutOverflow):
        lay_out(LayoutRecorder(tiff_layout.CLASSIC_TIFF_BYTES))


def noise_scan(path: Path) -> None:
    """A 600 x 700 gray page of noise: thresholded, bits group4 makes larger than packed."""
    rng = np.random.default_rng(3)
    tifffile.imwrite(path, rng.integers(0, 256, (600, 700), dtype=np.uint8), tile=(128, 128),
                     compression="zlib", metadata=None)


JOBS: dict[str, dict[str, Any]] = {
    "auto": {},
    "classic": {"bigtiff": False},
    "big": {"bigtiff": True},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``tiffpipe run`` of a 1-bit group4 job of the noise page with each ``bigtiff``, the
    work kept (job i: JOBS' i-th)."""
    root = tmp_path_factory.mktemp("bigtiff")
    noise_scan(root / "in.tif")
    (root / "m.json").write_text(json.dumps({"jobs": [
        {"input": str(root / "in.tif"), "output": str(root / "out" / f"{name}.tif"),
         "ops": THRESHOLD, "output_options": {"compression": "group4", "bilevel": True,
                                              "tile": 128, **options}}
        for name, options in JOBS.items()]}))
    code = cli.main(["run", str(root / "m.json"), "--workers", "2", "--quiet",
                     "--keep-work", "--work", str(root / "work")])
    assert code == 0, (root / "m.report.json").read_text()
    return {"root": root, "work": str(root / "work"),
            "out": {name: root / "out" / f"{name}.tif" for name in JOBS}}


def test_a_small_1bit_output_is_the_classic_tiff_it_was(run):
    """"auto" writes a small 1-bit output as before: a classic TIFF, byte for byte the one
    "bigtiff": false writes; true writes the same bits as a BigTIFF."""
    out = run["out"]
    assert out["auto"].read_bytes() == out["classic"].read_bytes()
    bits = []
    for name in JOBS:
        with tifffile.TiffFile(out[name]) as tf:
            assert tf.is_bigtiff == (name == "big"), name
            assert tf.pages[0].compression == 4 and tf.pages[0].bitspersample == 1
            bits.append(tf.pages[0].asarray())
    assert all(np.array_equal(b, bits[0]) for b in bits)
    # noise: group4 takes more than the packed bits the plan counts
    assert out["auto"].stat().st_size > 600 * -(-700 // 8)


def test_merge_fails_a_classic_output_past_the_limit_and_writes_nothing(run, monkeypatch):
    """The classic limit lowered to the size of the output less a byte (merge reads it when
    it runs): its merge fails naming the output and the option, before a byte is written;
    at the output's size it is composed as it was; a BigTIFF's merge is not held to it."""
    out = run["out"]["auto"]
    want = out.read_bytes()
    plan = _plan(run["work"], list(JOBS).index("auto"))
    out.unlink()
    monkeypatch.setattr(tiff_layout, "CLASSIC_TIFF_BYTES", len(want) - 1)
    with pytest.raises(OutputTooLargeError) as err:
        merge_mod.publish(plan)
    message = str(err.value)
    assert message.startswith(f"output {out}: its tiles pass the {len(want) - 1} bytes a "
                              "classic TIFF holds")
    assert "group4 made its tiles larger" in message
    assert message.endswith('nothing was written: set "output_options": {"bigtiff": true} '
                            "and re-run the job")
    assert sorted(out.parent.iterdir()) == sorted([run["out"]["classic"], run["out"]["big"]])
    with pytest.raises(OutputTooLargeError, match="output_options.bigtiff is false"):
        merge_mod.output_pieces(_plan(run["work"], list(JOBS).index("classic")))
    big = _plan(run["work"], list(JOBS).index("big"))
    compose(merge_mod.output_pieces(big), str(out.parent / "again_big.tif"))
    assert (out.parent / "again_big.tif").read_bytes() == run["out"]["big"].read_bytes()
    monkeypatch.setattr(tiff_layout, "CLASSIC_TIFF_BYTES", len(want))
    compose(merge_mod.output_pieces(plan), str(out))
    assert out.read_bytes() == want
