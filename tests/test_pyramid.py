"""Pyramids (``output_options.pyramid``) and OME-TIFF (``output_options.ome``).

Real jobs go through ``tiffpipe run``; the output is read back with tifffile and libvips.
Level pixels are compared with a numpy reference of the documented formula applied to the
WHOLE base page as tifffile reads it (levels cascade: level k from level k - 1).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pipeline import cli
from pipeline.adapters.tile_codec import OutputEncoder
from pipeline.core.events import MergeEvent
from pipeline.core.manifest import parse_manifest
from pipeline.core.models import OutputOptions
from pipeline.core.reduce import overview_picks
from pipeline.errors import ManifestError, StorageError
from pipeline.steps import layout
from pipeline.steps import merge as merge_mod
from pipeline.steps import pyramid as pyramid_mod
from pipeline.steps.common import forget_plans
from pipeline.steps.pyramid import Pyramid, level_shapes

pytestmark = pytest.mark.timeout(240)

TILE, OUT_TILE = 64, 32
#: two pages of different, odd sizes (and one of RGB): levels 2 and 1 deep and more
SHAPES = [(203, 141, 3), (150, 97, 1)]


def reference_level(prev: np.ndarray) -> np.ndarray:
    """One level down, written independently of the code: the mean of the pixels present in
    each 2x2 block, ``(sum + n // 2) // n`` for integers (n = 4, 2 or 1)."""
    img = prev if prev.ndim == 3 else prev[:, :, None]
    h, w = img.shape[:2]
    pad = np.zeros((h + h % 2, w + w % 2, img.shape[2]), np.int64)
    pad[:h, :w] = img
    count = np.zeros(pad.shape[:2], np.int64)
    count[:h, :w] = 1
    s = pad[0::2, 0::2] + pad[1::2, 0::2] + pad[0::2, 1::2] + pad[1::2, 1::2]
    n = (count[0::2, 0::2] + count[1::2, 0::2] + count[0::2, 1::2] + count[1::2, 1::2])[..., None]
    out = ((s + n // 2) // n).astype(prev.dtype)
    return out if prev.ndim == 3 else out[:, :, 0]


def reference_levels(base: np.ndarray, tile: int) -> list[np.ndarray]:
    levels, cur = [], base
    while cur.shape[0] > tile or cur.shape[1] > tile:
        cur = reference_level(cur)
        levels.append(cur)
    return levels


def smooth(height: int, width: int, channels: int, seed: int, dtype: str = "uint8") -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.sin(yy / 11.0) + np.cos(xx / 7.0) + 2) / 4
    planes = [np.roll(base, 5 * c, axis=1) for c in range(channels)]
    img = np.clip(np.stack(planes, -1) + rng.normal(0, 0.03, (height, width, channels)), 0, 1)
    img = (img * np.iinfo(dtype).max).round().astype(dtype)
    return img if channels > 1 else img[:, :, 0]


def _run(root: Path, jobs: dict[str, dict[str, Any]], *args: str) -> dict[str, Any]:
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"tile": TILE, **job, "output": str(root / "out" / f"{name}.tif")}
        for name, job in jobs.items()]}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet", *args])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    return {name: job["output"] for name, job in zip(jobs, report["jobs"], strict=True)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pyramid")
    src, src16 = root / "two.tif", root / "two16.tif"
    with tifffile.TiffWriter(src) as tw:
        for i, (h, w, c) in enumerate(SHAPES):
            tw.write(smooth(h, w, c, i), photometric="rgb" if c == 3 else "minisblack",
                     tile=(32, 32), compression="zlib", metadata=None,
                     resolution=((300, 1), (300, 1)), resolutionunit=2,
                     description=f"page {i} description",
                     extratags=[(285, "s", 0, f"scan {i}", True)])
    with tifffile.TiffWriter(src16) as tw:
        tw.write(smooth(181, 77, 1, 5, "uint16"), photometric="minisblack", metadata=None)
    opts = {"tile": OUT_TILE}
    return {"src": src, "src16": src16, **_run(root, {
        "zstd": {"input": str(src), "output_options": {**opts, "pyramid": True}},
        "deflate16": {"input": str(src16), "ops": [{"op": "gaussian_blur", "sigma": 1.0}],
                      "output_options": {**opts, "compression": "deflate", "pyramid": True}},
        "jpeg": {"input": str(src), "output_options": {**opts, "compression": "jpeg",
                                                       "quality": 92, "pyramid": True}},
        "ome": {"input": str(src), "output_options": {**opts, "compression": "deflate",
                                                      "pyramid": True, "ome": True}},
        "ome_flat": {"input": str(src), "output_options": {**opts, "ome": True}},
        "flat": {"input": str(src), "output_options": opts},
    })}


def _levels(page: tifffile.TiffPage) -> list[np.ndarray]:
    return [sub.asarray() for sub in (page.pages or [])]


def test_level_shapes_halve_rounding_up_until_one_tile():
    assert level_shapes(203, 141, 32) == [(102, 71), (51, 36), (26, 18)]
    assert level_shapes(32, 32, 32) == []
    assert level_shapes(33, 5, 32) == [(17, 3)]


@pytest.mark.parametrize("name", ["zstd", "deflate16"])
def test_lossless_levels_equal_the_formula_on_the_whole_page(run, name):
    with tifffile.TiffFile(run[name]) as tf:
        assert len(tf.pages) == (2 if name == "zstd" else 1)
        for page in tf.pages:
            base = page.asarray()
            want = reference_levels(base, OUT_TILE)
            got = _levels(page)
            assert [g.shape for g in got] == [w.shape for w in want]
            assert len(want) >= 2
            for k, (g, w) in enumerate(zip(got, want, strict=True)):
                assert g.dtype == base.dtype
                np.testing.assert_array_equal(g, w, err_msg=f"{name} level {k + 1}")
            for sub in page.pages:
                assert sub.is_reduced and sub.is_tiled
                assert (sub.tilelength, sub.tilewidth) == (OUT_TILE, OUT_TILE)
                assert sub.compression == page.compression
            # the last level fits in one tile, the one before does not
            assert max(got[-1].shape[:2]) <= OUT_TILE < max(([base] + got)[-2].shape[:2])
        want = reference_levels(tf.pages[0].asarray(), OUT_TILE)
        assert len(tf.series[0].levels) == len(want) + 1


def test_pyramid_leaves_the_base_pages_unchanged(run):
    with tifffile.TiffFile(run["zstd"]) as a, tifffile.TiffFile(run["flat"]) as b:
        assert len(b.pages[0].pages or []) == 0
        for pa, pb in zip(a.pages, b.pages, strict=True):
            np.testing.assert_array_equal(pa.asarray(), pb.asarray())
            assert pa.tags["XResolution"].value == pb.tags["XResolution"].value


def jpeg_roundtrip(level: np.ndarray, quality: int) -> np.ndarray:
    """``level`` as a JPEG-tiled page reads back: each zero-padded tile encoded and decoded."""
    channels = level.shape[2] if level.ndim == 3 else 1
    encoder = OutputEncoder(OutputOptions(compression="jpeg", quality=quality, tile=OUT_TILE),
                            "uint8", channels)
    h, w = level.shape[:2]
    out = np.empty_like(level)
    for y in range(0, h, OUT_TILE):
        for x in range(0, w, OUT_TILE):
            tile = np.zeros((OUT_TILE, OUT_TILE) + level.shape[2:], level.dtype)
            part = level[y:y + OUT_TILE, x:x + OUT_TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            back = encoder.decode(encoder.encode(tile)).reshape(tile.shape)
            out[y:y + OUT_TILE, x:x + OUT_TILE] = back[:part.shape[0], :part.shape[1]]
    return out


def test_jpeg_levels_exist_and_are_close(run):
    """JPEG levels are built from the decoded (lossy) base page, each level from the previous
    level's pixels before they are encoded: a level reads back as the formula applied to the
    base page as read, then JPEG-encoded tile by tile."""
    with tifffile.TiffFile(run["jpeg"]) as tf:
        for page in tf.pages:
            assert page.compression == 7
            base = page.asarray()
            want = reference_levels(base, OUT_TILE)
            got = _levels(page)
            assert [g.shape for g in got] == [w.shape for w in want]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, jpeg_roundtrip(w, 92))
                diff = np.abs(g.astype(int) - w.astype(int))
                assert diff.mean() < 12, diff.mean()  # close: only the JPEG loss of the level


def test_ome_names_the_pages_and_reads_levels(run):
    with tifffile.TiffFile(run["ome"]) as tf:
        assert tf.is_ome
        xml = tf.ome_metadata
        assert 'Name="scan 0"' in xml and 'Name="scan 1"' in xml
        assert "page 0 description" in xml
        assert 'PhysicalSizeX="84.666' in xml  # 300 dpi: 25400 / 300 micrometres
        assert len(tf.series) == 2
        for series, (h, w, c) in zip(tf.series, SHAPES, strict=True):
            shapes = [lvl.shape[:2] for lvl in series.levels]
            assert shapes == [(h, w)] + level_shapes(h, w, OUT_TILE)
            base = series.levels[0].asarray()
            for lvl, want in zip(series.levels[1:], reference_levels(base, OUT_TILE),
                                 strict=True):
                np.testing.assert_array_equal(lvl.asarray(), want)
    with tifffile.TiffFile(run["ome_flat"]) as tf, tifffile.TiffFile(run["flat"]) as flat:
        assert tf.is_ome and len(tf.series) == 2
        for s, p in zip(tf.series, flat.pages, strict=True):
            assert len(s.levels) == 1
            np.testing.assert_array_equal(s.asarray(), p.asarray())


@pytest.mark.parametrize("name", ["zstd", "ome"])
def test_libvips_sees_pages_and_subifds(run, name):
    import pyvips  # in the test lock (pyvips-binary): a broken install fails, never skips
    if name == "zstd":  # the pyvips-binary wheel may lack zstd: only check the structure
        image = pyvips.Image.new_from_file(run[name], access="sequential")
        assert image.get("n-pages") == 2
        assert image.get("n-subifds") == 3
        return
    with tifffile.TiffFile(run[name]) as tf:
        pages = [(p.asarray(), _levels(p)) for p in tf.pages]
    for i, (base, levels) in enumerate(pages):
        image = pyvips.Image.new_from_file(run[name], page=i, fail=True)
        assert image.get("n-subifds") == len(levels)
        assert (image.height, image.width) == base.shape[:2]
        np.testing.assert_array_equal(image.numpy().reshape(base.shape), base)
        for k, level in enumerate(levels):
            sub = pyvips.Image.new_from_file(run[name], page=i, subifd=k, fail=True)
            np.testing.assert_array_equal(sub.numpy().reshape(level.shape), level)


def test_merge_holds_a_bounded_number_of_tiles(tmp_path, monkeypatch):
    """Two pages of the same width, one 8x taller: the pyramid holds the same number of
    tiles (its level buffers, one decoded base tile), and merge feeds base tiles one at a
    time and never reads level tiles back: they are placed from their segments. (The job runs
    in worker processes; its
    merge is run again here, in this process, from the kept work folder.)"""
    made: list[Pyramid] = []
    outstanding = {"now": 0, "peak": 0}

    class Spy(Pyramid):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

        def tiles(self, k):
            for data in super().tiles(k):
                outstanding["now"] += 1
                outstanding["peak"] = max(outstanding["peak"], outstanding["now"])
                try:
                    yield data
                finally:  # taken the next one, or the writer is done with the level
                    outstanding["now"] -= 1

    src, work = tmp_path / "tall.tif", tmp_path / "work"
    with tifffile.TiffWriter(src) as tw:
        tw.write(smooth(100, 260, 1, 1), tile=(32, 32), metadata=None)
        tw.write(smooth(800, 260, 1, 2), tile=(32, 32), metadata=None)
    # merge's own pyramid, re-run with UNIT_LEVELS off (fused units and a job's level
    # units build the levels otherwise: test_unit_levels.py, test_level_units.py)
    out = _run(tmp_path, {"tall": {"input": str(src), "fuse": False, "output_options": {
        "tile": OUT_TILE, "pyramid": True}}}, "--keep-work", "--work", str(work))["tall"]
    Path(out).unlink()
    monkeypatch.setattr(pyramid_mod, "Pyramid", Spy)  # merge imports it when used
    monkeypatch.setattr(merge_mod, "UNIT_LEVELS", False)
    forget_plans()
    merge_mod.merge(MergeEvent(layout.plan_file(str(work / "jobs" / "00000"))))
    forget_plans()
    short, tall = made
    cols = ceil(260 / OUT_TILE)
    for pyramid in made:
        # one tile row per level: ceil(w_k / t) tiles each, plus the decoded base tiles in
        # flight (one; 2 per thread when decoding ahead)...
        ahead = pyramid.max_ahead
        assert ahead == (1 if merge_mod.tile_threads() == 1 else 2 * merge_mod.tile_threads())
        assert pyramid.held_tiles == sum(ceil(w / OUT_TILE) for _, w in pyramid.shapes) + ahead
        # ...which is at most one base tile row plus one tile per level, whatever the height
        assert pyramid.held_tiles <= cols + len(pyramid.levels) + ahead
    # 8x the rows: one more level (the width, not the height, sets how much a level holds)
    assert (len(short.levels), len(tall.levels)) == (4, 5)
    assert tall.held_tiles - short.held_tiles == 1
    assert all(level.buffer.shape[0] == OUT_TILE for level in tall.levels)
    assert tall.decoded == ceil(800 / OUT_TILE) * ceil(260 / OUT_TILE)
    # the level tiles are placed from their segments (copied or concatenated), never read back
    assert outstanding["peak"] == 0
    with tifffile.TiffFile(out) as tf:
        for page in tf.pages:
            want = reference_levels(page.asarray(), OUT_TILE)
            for g, w in zip(_levels(page), want, strict=True):
                np.testing.assert_array_equal(g, w)
    assert not list(Path(out).parent.glob(".tiffpipe-levels-*"))  # spools removed


def test_manifest_pyramid_and_ome_are_booleans_default_false(tmp_path):
    job = {"input": "a.tif", "output": "b.tif"}
    (spec,) = parse_manifest({"jobs": [job]}, "m.json", str(tmp_path))
    assert (spec.output_options.pyramid, spec.output_options.ome) == (False, False)
    (spec,) = parse_manifest({"defaults": {"output_options": {"pyramid": True}},
                              "jobs": [{**job, "output_options": {"ome": True}}]},
                             "m.json", str(tmp_path))
    assert (spec.output_options.pyramid, spec.output_options.ome) == (True, True)
    with pytest.raises(ManifestError) as err:
        parse_manifest({"jobs": [{**job, "output_options": {"pyramid": 1, "ome": "yes"}}]},
                       "m.json", str(tmp_path))
    assert err.value.problems == [
        "jobs[0].output_options.pyramid: expected true or false, got 1",
        'jobs[0].output_options.ome: expected true or false, got "yes"',
    ]


def _spy_pyramids(monkeypatch: pytest.MonkeyPatch) -> list[Pyramid]:
    """Every :class:`Pyramid` merge makes in this process from now on, in order."""
    made: list[Pyramid] = []

    class Spy(Pyramid):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(pyramid_mod, "Pyramid", Spy)  # merge imports it when used
    return made


@pytest.mark.parametrize(("compression", "masked"), [("jpeg", False), ("deflate", False),
                                                     ("deflate", True)])
def test_threads_build_the_same_levels(tmp_path, monkeypatch, compression, masked):
    """Decoding base tiles ahead (and a masked page's mask tiles with them) and encoding
    level rows in threads changes nothing: merge with 1 and with 4 tile threads writes the
    same file, byte for byte."""
    src, work = tmp_path / "in.tif", tmp_path / "work"
    with tifffile.TiffWriter(src) as tw:
        tw.write(smooth(700, 900, 3, 3), tile=(64, 64), photometric="rgb", metadata=None)
        if masked:  # its internal mask: a valid disc, carried (merge builds its levels)
            yy, xx = np.mgrid[0:700, 0:900]
            valid = (yy - 350) ** 2 + (xx - 450) ** 2 < 330 ** 2
            tw.write(valid, tile=(64, 64), compression="zlib", subfiletype=4, metadata=None)
    # merge's own pyramid, re-run with UNIT_LEVELS off (fused units and a job's level
    # units build the levels otherwise: test_unit_levels.py, test_level_units.py)
    out = _run(tmp_path, {"rgb": {"input": str(src), "fuse": False, "output_options": {
        "tile": OUT_TILE, "pyramid": True, "compression": compression}}},
        "--keep-work", "--work", str(work))["rgb"]
    made = _spy_pyramids(monkeypatch)
    monkeypatch.setattr(merge_mod, "UNIT_LEVELS", False)
    files = {}
    for threads in (1, 4):
        Path(out).unlink()
        monkeypatch.setenv("TIFFPIPE_TILE_THREADS", str(threads))
        forget_plans()
        merge_mod.merge(MergeEvent(layout.plan_file(str(work / "jobs" / "00000"))))
        forget_plans()
        files[threads] = Path(out).read_bytes()
    assert [p.max_ahead for p in made] == [1, 8]
    assert [p.decoded for p in made] == [ceil(700 / OUT_TILE) * ceil(900 / OUT_TILE)] * 2
    assert files[1] == files[4]
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages[0].pages) == len(made[1].levels) >= 3  # the SubIFD levels
        # (the page's mask, and its levels' reduced: 4, then 5 for each level)
        assert [int(p.subfiletype) for p in tf.pages[1:]] == \
            ([4] + [5] * len(made[1].levels) if masked else [])


def test_float_levels_average_the_pixels_present_at_odd_edges():
    """An odd last row or column of a float page is the mean of its 2 (or 1) pixels, summed
    and divided in float64: not of the pixels repeated (which is 1 ulp off), and a lone
    corner keeps its value exactly (-0.0 and NaN too)."""
    from pipeline.steps.pyramid import reduce2

    rng = np.random.default_rng(0)
    block = rng.random((5, 7, 2))
    block[4, 6] = [-0.0, np.nan]
    got = reduce2(block)
    assert got.shape == (3, 4, 2)
    np.testing.assert_array_equal(got[:2, 3], (block[0:4:2, 6] + block[1:4:2, 6]) / 2)
    np.testing.assert_array_equal(got[2, :3], (block[4, 0:6:2] + block[4, 1:6:2]) / 2)
    assert np.signbit(got[2, 3, 0]) and got[2, 3, 0] == 0 and np.isnan(got[2, 3, 1])
    inside = (((block[0:4:2, 0:6:2] + block[1:4:2, 0:6:2]) + block[0:4:2, 1:6:2])
              + block[1:4:2, 1:6:2]) / 4
    np.testing.assert_array_equal(got[:2, :3], inside)
    f32 = block.astype(np.float32)
    np.testing.assert_array_equal(reduce2(f32)[:2, 3], ((f32[0:4:2, 6].astype(np.float64)
                                                         + f32[1:4:2, 6]) / 2).astype(np.float32))


def test_the_nearest_picks_of_a_range_are_those_of_the_whole_level():
    """A band's "nearest" picks (unit_levels._Picks) are computed for its own rows and
    columns only (``overview_picks(n, start, stop)``: no array of the level's whole width
    for each processing row), the same values as the whole level's, odd and even, at the
    level's start, middle (where the picks step back a row) and end."""
    for n in (1, 2, 7, 203, 1299, 1300, 80001, 4999999):
        whole = overview_picks(n)
        m = len(whole)
        for start, stop in ((0, m), (m // 3, min(m // 2 + 2, m)), (m // 2, m), (m - 1, m)):
            np.testing.assert_array_equal(overview_picks(n, start, stop), whole[start:stop])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_a_masked_levels_whole_blocks_reduce_as_the_counting_way_does(dtype):
    """A masked page's blocks all valid (its inside) reduce as a page without a mask, and
    all invalid (its collar) to zeros, without counting the pixels left out: the same
    values, bit for bit, as the count of valid pixels gives (odd edges, -0.0 and NaN too);
    a block partly valid still counts."""
    from pipeline.core.reduce import masked_mean
    from pipeline.steps.pyramid import reduce2

    rng = np.random.default_rng(3)
    block = (rng.random((7, 9, 3)) * 200).astype(dtype)
    if block.dtype.kind == "f":
        block[6, 8] = [-0.0, np.nan, 1.5]
    for valid in (np.ones((7, 9), bool), np.zeros((7, 9), bool), rng.random((7, 9)) > 0.5):
        got = reduce2(block, valid=valid)
        want = masked_mean(block, 2, None, valid)
        assert got.dtype == want.dtype and got.shape == want.shape == (4, 5, 3)
        np.testing.assert_array_equal(got, want)
        assert (np.signbit(got) == np.signbit(want)).all()
    np.testing.assert_array_equal(reduce2(block, valid=np.ones((7, 9), bool)), reduce2(block))


def _banded_is_whole_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path,
                          job: dict[str, Any], options: dict[str, Any], width: int) -> str:
    """Run ``job`` on ``src`` (a pyramid, output tile OUT_TILE, ``options``; its output ``width``
    columns: three bands of core.levels.BAND_TILES x TILE px), then merge it again with
    UNIT_LEVELS on and off: with it, merge builds the levels band by band, no Pyramid
    holding a row of the page's width (the deepest levels' own, from the bands' blocks, are
    a fraction of it); without it, merge's whole-page Pyramid (as before): the same file,
    byte for byte, each time. The output's path."""
    work = tmp_path / "work"
    out = _run(tmp_path, {"b": {"input": str(src), **job, "output_options": {
        "tile": OUT_TILE, "pyramid": True, **options}}}, "--keep-work", "--work", str(work))["b"]
    banded = Path(out).read_bytes()
    assert ceil(width / TILE) > 2 * 8  # (three bands of core.levels.BAND_TILES, 8)
    made = _spy_pyramids(monkeypatch)
    files = {}
    for unit_levels in (True, False):
        Path(out).unlink()
        monkeypatch.setattr(merge_mod, "UNIT_LEVELS", unit_levels)
        forget_plans()
        merge_mod.merge(MergeEvent(layout.plan_file(str(work / "jobs" / "00000"))))
        forget_plans()
        files[unit_levels] = Path(out).read_bytes()
    assert [p.width for p in made][-1] == width and all(p.width < width / 2 for p in made[:-1])
    assert files[True] == banded
    assert files[False] == banded
    return out


@pytest.mark.parametrize(("ops", "shape", "options"), [
    ([{"op": "rotate", "angle": 90}], (1299, 203), {"compression": "deflate"}),
    ([{"op": "rotate", "angle": 270}], (1299, 203, 3), {"compression": "jpeg"}),
    ([{"op": "rotate", "angle": 90}, {"op": "flip", "axis": "horizontal"}], (1299, 203, 3),
     {"compression": "zstd"}),  # (a transpose)
    ([{"op": "flip", "axis": "vertical"}], (204, 1300), {"compression": "deflate"}),
    ([{"op": "rotate", "angle": 90}], (1300, 204), {"compression": "deflate",
                                                   "pyramid_resampling": "nearest"}),
    ([{"op": "rotate", "angle": 90}], (1299, 203), {"compression": "deflate",
                                                   "pyramid_resampling": "nearest"}),
])
def test_a_turned_pages_levels_built_band_by_band_are_merges_whole_page_ones(
        tmp_path, monkeypatch, ops, shape, options):
    """A turned page's levels (its units meet its rows in the input's order, so they build
    none) are built by merge band by band (pipeline.steps.unit_levels.merge_band_levels:
    BAND_TILES processing tiles of columns, the page's height; a tile row per level across a
    band, not across the page), and are byte for byte the levels merge's Pyramid builds
    from the whole page (UNIT_LEVELS off, as before): the same file, for rotate 90 and 270
    and transpose, gray and RGB, lossless and JPEG (levels of the lossy pixels), "mean" a
    page flipped, and "nearest" of levels of odd size (325 x 51; a page of odd size). The
    output, 1,299 or 1,300 columns, spans three bands of 8 x 64 px."""
    src = tmp_path / "in.tif"
    channels = shape[2] if len(shape) == 3 else 1
    tifffile.imwrite(src, smooth(shape[0], shape[1], channels, 4), tile=(64, 64),
                     photometric="rgb" if channels == 3 else "minisblack", metadata=None)
    # (the output's width: the page turned, or flipped wide)
    _banded_is_whole_page(tmp_path, monkeypatch, src, {"ops": ops, "fuse": False}, options,
                          max(shape[:2]))


def _masked_input(path: Path, height: int, width: int, channels: int) -> None:
    """A page and its internal mask (a 1-bit page of NewSubfileType 4 after it, as GDAL
    writes one): a slanted valid swath with a hole, and noise under the masked-out pixels
    (which the levels' means must leave out), so that blocks are all valid, none, and
    partly."""
    yy, xx = np.mgrid[0:height, 0:width]
    valid = (xx > yy // 3 + 17) & (xx < width - 23 - (height - yy) // 4) & (yy > 5)
    valid[height // 3:height // 3 + 21, width // 2:width // 2 + 33] = False
    pixels = smooth(height, width, channels, 6)
    noise = np.random.default_rng(7).integers(0, 256, pixels.shape, np.uint8)
    pixels[~valid] = noise[~valid]
    with tifffile.TiffWriter(path) as tw:
        tw.write(pixels, tile=(64, 64), photometric="rgb" if channels == 3 else "minisblack",
                 metadata=None)
        tw.write(valid, tile=(64, 64), compression="zlib", subfiletype=4, metadata=None)


@pytest.mark.parametrize(("shape", "job", "options"), [
    ((203, 1299, 3), {}, {"compression": "deflate"}),
    ((203, 1299), {"fuse": False}, {"compression": "zstd"}),
    ((204, 1300), {}, {"compression": "deflate", "pyramid_resampling": "nearest"}),
    ((203, 1299, 3), {"fuse": False}, {"compression": "jpeg"}),
    ((203, 2600), {}, {"compression": "lzw", "pyramid_resampling": "max",
                       "pyramid_layout": "pages"}),
    ((1299, 203, 3), {"ops": [{"op": "rotate", "angle": 90}]}, {"compression": "zstd"}),
    ((203, 2601), {}, {"compression": "deflate", "pyramid_resampling": "nearest"}),
])
def test_a_masked_pages_levels_built_band_by_band_are_merges_whole_page_ones(
        tmp_path, monkeypatch, shape, job, options):
    """A page that carries its internal mask has its levels, and their masks, built by merge
    band by band (pipeline.steps.unit_levels.merge_band_levels, reading its mask tiles with
    its tiles: a tile row per level across a band, not across the page), byte for byte the
    levels and masks merge's Pyramid builds from the whole page (UNIT_LEVELS off, as
    before): the same file, RGB and gray, odd sizes, fused and not, lossless and JPEG,
    "mean", "max" (levels as pages), "nearest" (levels of odd size, a page of odd size),
    and a page both masked and turned. The output, 1,299 to 2,601 columns, spans three
    bands of 8 x 64 px or more (2,600 columns have 7 levels: 6 in bands, the seventh, and
    its mask, from the bands' blocks); every level has its mask (NewSubfileType 5)."""
    src = tmp_path / "in.tif"
    _masked_input(src, *shape[:2], shape[2] if len(shape) == 3 else 1)
    # (the output's width: the page as it is, or turned wide)
    out = _banded_is_whole_page(tmp_path, monkeypatch, src, job, options, max(shape[:2]))
    levels = len(level_shapes(shape[0], shape[1], OUT_TILE))
    with tifffile.TiffFile(out) as tf:
        kinds = [int(p.subfiletype) for p in tf.pages]
    assert kinds.count(4) == 1 and kinds.count(5) == levels >= 5


@pytest.mark.parametrize(("shape", "job", "options"), [
    ((203, 1299), {}, {"compression": "deflate", "pyramid_resampling": "nearest"}),
    ((204, 1299, 3), {"fuse": False}, {"compression": "zstd", "pyramid_resampling": "nearest"}),
    ((203, 2601), {}, {"compression": "lzw"}),  # (a palette page: "nearest")
])
def test_a_nearest_odd_pages_levels_built_band_by_band_are_merges_whole_page_ones(
        tmp_path, monkeypatch, shape, job, options):
    """A page of odd size whose levels take "nearest" (GDAL's picks: past half way down
    and across a level of odd size, the row above and the column left of each block) has
    no level its units can build (core.levels.unit_level_count 0); merge builds them band
    by band, each band taking those picks from the processing row before and the band
    before (unit_levels._Picks): byte for byte the levels merge's Pyramid builds from the
    whole page. Gray and RGB, fused and not, and a palette page (its "mean" is "nearest")
    of 2,601 columns (7 levels: 6 in bands, the seventh from their blocks)."""
    src = tmp_path / "in.tif"
    channels = shape[2] if len(shape) == 3 else 1
    pixels = smooth(shape[0], shape[1], channels, 8)
    if shape[1] == 2601:  # (the palette page)
        colormap = np.random.default_rng(9).integers(0, 65536, (3, 256), dtype=np.uint16)
        tifffile.imwrite(src, pixels, photometric="palette", colormap=colormap, tile=(64, 64),
                         metadata=None)
    else:
        tifffile.imwrite(src, pixels, tile=(64, 64), metadata=None,
                         photometric="rgb" if channels == 3 else "minisblack")
    _banded_is_whole_page(tmp_path, monkeypatch, src, job, options, shape[1])


def test_a_bands_nearest_picks_past_half_way_copy_nothing_of_its_rows() -> None:
    """Past half way down and across a level of odd size, a band's "nearest" picks take the
    row above (the processing row before's last) and the column left (the band before's
    last) for their first row and column (unit_levels._Picks): those come from what was
    kept, the rest is picked from the rows fed, with no copy of them a row and a column
    larger (which an RGB band's processing row of 1,024 x 8,192 made 24 MiB more of merge's
    peak): numpy's allocations past the picks' own, as tracemalloc sees them, are under
    0.75 of the rows fed (a ratio, not a figure); the picks are those of the rows fed with
    the row above and the column left put before them."""
    import tracemalloc

    from pipeline.steps.unit_levels import _Picks

    height, width, y, x = 1025, 8193, 514, 6144  # (odd: past half way, picks -1 first)
    rng = np.random.default_rng(5)
    rows = (rng.random((256, 1024, 3)) * 255).astype("uint8")
    above = (rng.random((1024, 3)) * 255).astype("uint8")
    left = (rng.random((height, 3)) * 255).astype("uint8")
    picks = _Picks([(height, width)], [y], [x], [(left,)])
    picks.above[0] = (above,)
    tracemalloc.start()
    try:
        (out,) = picks.reduce(0, (rows,))
        extra = tracemalloc.get_traced_memory()[1] - out.nbytes
    finally:
        tracemalloc.stop()
    assert extra < 0.75 * rows.nbytes, (extra, rows.nbytes)
    ext = np.concatenate([left[y - 1:y + 256, None], np.concatenate([above[None], rows])], 1)
    want = ext[overview_picks(height, y // 2, (y + 257) // 2) - y + 1][
        :, overview_picks(width, x // 2, (x + 1025) // 2) - x + 1]
    assert (overview_picks(height, y // 2)[0] - y, overview_picks(width, x // 2)[0] - x) == (-1, -1)
    np.testing.assert_array_equal(out, want)


def _open_fds() -> list[int]:
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def test_region_levels_that_cannot_open_a_writer_discard_those_opened(tmp_path: Path) -> None:
    """A band's (or unit's) RegionLevels opens a segment writer per level and plane and one
    for its fragments; one that cannot open (a process out of open files: here the mask
    plane's first, RLIMIT_NOFILE lowered to let the others open) left those opened before it
    open, their temporary files on disk, as nothing held them to abort. They are closed and
    removed, and the error is the open's."""
    import resource

    from pipeline.adapters.tile_codec import OutputEncoder
    from pipeline.core.grid import SplitUnit
    from pipeline.core.plan import page_options
    from pipeline.steps.common import load_plan
    from pipeline.steps.unit_levels import RegionLevels

    src = tmp_path / "in.tif"
    _masked_input(src, 203, 1299, 1)
    work = tmp_path / "work"
    _run(tmp_path, {"b": {"input": str(src), "output_options": {
        "tile": OUT_TILE, "pyramid": True, "compression": "deflate"}}},
        "--keep-work", "--work", str(work))
    forget_plans()
    plan = load_plan(layout.plan_file(str(work / "jobs" / "00000")))
    p = plan.pages[0]
    encoder = OutputEncoder(page_options(plan.spec, p), p.out_dtype, p.out_channels)
    band, count = SplitUnit(0, 0, 1, 0, 1), 3
    before = set(work.rglob("*.tmp"))
    # (the fragments' writer and the pixels' plane open; the mask plane's first cannot)
    # (the listing's own descriptor is among them, free again once it is done: + 1)
    room, fds = count + 1, _open_fds()
    limit = next(n for n in range(1, 1 << 16) if n - sum(fd < n for fd in fds) + 1 == room)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with pytest.raises(StorageError, match=r"u000050_L1_mask\.seg: cannot write: .*Too "
                                               "many open files"):
            RegionLevels(plan, 0, 50, band, encoder, "mean", count, masked=True)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _open_fds() == fds
    assert set(work.rglob("*.tmp")) == before, sorted(set(work.rglob("*.tmp")) - before)
    forget_plans()


def test_a_reduction_by_pieces_refuses_nearest_and_takes_integer_means_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """reduce2_pieces is not given "nearest" (past half way across a level of odd size its
    picks lie outside their piece: unit_levels._Picks takes them): refused, not wrong. An
    unmasked integer mean without no-data, of even sizes, has no float temporaries to keep
    a piece's: reduced whole, in one reduce2 (the same values); masked, by pieces."""
    block = (np.random.default_rng(2).random((64, 96, 3)) * 255).astype("uint8")
    with pytest.raises(AssertionError, match="nearest"):
        pyramid_mod.reduce2_pieces(block, "nearest", None, None, 16)
    calls = []
    whole = pyramid_mod.reduce2

    def counted(*args: Any) -> np.ndarray:
        calls.append(args[0].shape)
        return whole(*args)

    monkeypatch.setattr(pyramid_mod, "reduce2", counted)
    np.testing.assert_array_equal(pyramid_mod.reduce2_pieces(block, "mean", None, None, 16),
                                  whole(block, "mean"))
    assert calls == [block.shape]
    calls.clear()
    pyramid_mod.reduce2_pieces(block, "mean", None, np.ones(block.shape[:2], bool), 16)
    assert len(calls) == 4 * 6


@pytest.mark.parametrize("method", ["mean", "mode", "min", "max"])
@pytest.mark.parametrize("dtype,nodata", [("uint8", None), ("uint16", 7), ("float32", None),
                                          ("float32", -9999.0)])
def test_a_reduction_by_pieces_is_the_whole_blocks(method: str, dtype: str,
                                                   nodata: float | None) -> None:
    """reduce2_pieces (the bands' and units' levels: a float or masked mean's temporaries
    are a piece's, not a processing row's) gives reduce2's values on the whole block: odd
    sizes, a mask with pieces all valid, none and mixed, no-data, NaN."""
    rng = np.random.default_rng(7)
    block = (rng.random((53, 77, 3)) * 200).astype(dtype)
    if nodata is not None:
        block[rng.random(block.shape) < 0.2] = nodata
    if dtype == "float32":
        block[0, 5, 1] = np.nan
    valid = np.ones(block.shape[:2], bool)
    valid[:, 40:] = False  # a collar: pieces all valid, none, and mixed
    valid[rng.random(valid.shape) < 0.1] = False
    for mask in (None, valid):
        whole = pyramid_mod.reduce2(block, method, nodata, mask)
        pieces = pyramid_mod.reduce2_pieces(block, method, nodata, mask, 16)
        assert pieces.dtype == whole.dtype
        np.testing.assert_array_equal(pieces, whole)


def test_a_masked_reduction_by_pieces_holds_a_pieces_temporaries() -> None:
    """A masked mean over a band's processing row of RGB (merge's bands, the units' levels)
    held float64 copies of the whole row (an 8,000 px masked page's merge peaked at 366 MB,
    against 155 MB for merge's tile-by-tile pyramid before): by pieces, its temporaries are
    a piece's (numpy's allocations, as tracemalloc sees them: a ratio, not a figure)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    block = (rng.random((512, 4096, 3)) * 255).astype("uint8")
    valid = rng.random(block.shape[:2]) < 0.9  # mixed everywhere: every piece counted

    def peak(reduce: Any) -> int:
        tracemalloc.start()
        try:
            out = reduce()
            return tracemalloc.get_traced_memory()[1] - out.nbytes
        finally:
            tracemalloc.stop()

    whole = peak(lambda: pyramid_mod.reduce2(block, "mean", None, valid))
    pieces = peak(lambda: pyramid_mod.reduce2_pieces(block, "mean", None, valid, 512))
    assert pieces * 5 < whole, (pieces, whole)
