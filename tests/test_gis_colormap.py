"""A class map coloured as rasterio documents it (``write`` then ``write_colormap``): GDAL
stores it MINISBLACK with a ColorMap tag and GDAL_METADATA's COLORINTERP Palette, and GDAL
and QGIS read it as a palette. Its outputs opened in GDAL (rasterio): a chain that keeps
its values as indices (a copy, a ``mode`` downsample, pyramid levels) keeps the colour
table; one that changes them (a blur, a mean downsample, a JPEG output) drops it and the
Palette interpretation with it, and the job's report says so (docs/inputs.md, Metadata).
Before, the ColorMap was dropped silently and GDAL read a palette band without colours.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio  # in the dev extra: GDAL, as the GIS tools read the outputs
import tifffile
from affine import Affine
from rasterio.enums import ColorInterp

from pipeline import cli
from pipeline.adapters.tiff_read import read_infos
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.steps.planning import plan_pages

pytestmark = pytest.mark.timeout(240)

CLASSES = [0, 11, 21, 41, 82, 95]


def class_map(dtype: str, classes: list[int]) -> np.ndarray:
    """Blocks of classes with salt of other classes (a land cover's noise)."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, len(classes), (7, 9))
    labels = np.kron(coarse, np.ones((30, 30), int))[:200, :260]
    salt = rng.random(labels.shape) < 0.1
    labels[salt] = rng.integers(0, len(classes), int(salt.sum()))
    return np.asarray(classes, dtype)[labels]


def write_class_map(path: Path, dtype: str, classes: list[int]) -> None:
    img = class_map(dtype, classes)
    rng = np.random.default_rng(len(classes))
    cmap = {c: (*(int(v) for v in rng.integers(0, 256, 3)), 255) for c in classes}
    with rasterio.open(path, "w", driver="GTiff", width=img.shape[1], height=img.shape[0],
                       count=1, dtype=dtype, crs="EPSG:32633", nodata=0,
                       transform=Affine(30, 0, 500000, 0, -30, 5400000), tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate") as ds:
        ds.write(img, 1)
        ds.write_colormap(1, cmap)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("colormap")
    write_class_map(root / "lc8.tif", "uint8", CLASSES)
    write_class_map(root / "lc16.tif", "uint16", [0, 110, 2100, 41000])
    write_class_map(root / "water.tif", "uint8", [0, 255])  # (a 1-bit output may hold it)
    # a ColorMap too large for the plan: 65,536 random colours (~384 KiB compressed)
    big = np.random.default_rng(3).integers(0, 65536, 3 * 65536).astype(np.uint16)
    tifffile.imwrite(root / "big16.tif", class_map("uint16", [0, 5, 9]),
                     photometric="minisblack", metadata=None,
                     extratags=[(320, "H", big.size, big, True)])
    down = {"op": "downsample", "factor": 2}
    jobs = {
        "copy8": {"input": "lc8.tif"},
        "mode8": {"input": "lc8.tif", "ops": [{**down, "method": "mode"}]},
        "turn8": {"input": "lc8.tif", "ops": [{"op": "rotate", "angle": 90},
                                              {"op": "crop", "x": 10, "y": 20,
                                               "width": 100, "height": 90}]},
        "pyramid8": {"input": "lc8.tif", "output_options": {"pyramid": True, "tile": 32}},
        "copy16": {"input": "lc16.tif"},
        "blur8": {"input": "lc8.tif", "ops": [{"op": "gaussian_blur", "sigma": 1.5}]},
        "mean8": {"input": "lc8.tif", "ops": [down]},
        "jpeg8": {"input": "lc8.tif", "output_options": {"compression": "jpeg"}},
        "bilevel8": {"input": "water.tif", "output_options": {"bilevel": True}},
        "big16": {"input": "big16.tif"},
    }
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {**job, "input": str(root / job["input"]), "output": str(root / "out" / f"{n}.tif")}
        for n, job in jobs.items()]}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(manifest), "--workers", "2", "--quiet",
                         "--no-contact-sheet"])
    report = json.loads((root / "m.report.json").read_text())
    assert code == 0, (err.getvalue(), json.dumps(report, indent=1))
    return {"root": root, "outputs": {n: Path(job["output"]) for n, job in
                                      zip(jobs, report["jobs"], strict=True)},
            "messages": {n: job.get("message", "") for n, job in
                         zip(jobs, report["jobs"], strict=True)}}


def _open(path: Path, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path, **kwargs)


def _table(path: Path, **kwargs: Any) -> tuple[Any, dict[int, Any] | None, np.ndarray]:
    """GDAL's colour interpretation of band 1, its colour table (None: none), its pixels."""
    with _open(path, **kwargs) as ds:
        try:
            table = ds.colormap(1)
        except ValueError:  # "NULL color table"
            table = None
        return ds.colorinterp[0], table, ds.read(1)


@pytest.mark.parametrize("name,source", [
    ("copy8", "lc8.tif"), ("mode8", "lc8.tif"), ("turn8", "lc8.tif"), ("copy16", "lc16.tif")])
def test_a_chain_that_keeps_indices_keeps_the_colour_table_gdal_reads(run, name, source):
    interp, table, pixels = _table(run["outputs"][name])
    given_interp, given, given_pixels = _table(run["root"] / source)
    assert given_interp == ColorInterp.palette and given
    assert interp == ColorInterp.palette
    assert table == given
    assert pixels.dtype == given_pixels.dtype
    assert set(np.unique(pixels)) <= set(np.unique(given_pixels))  # indices, never a mix
    if name.startswith("copy"):
        np.testing.assert_array_equal(pixels, given_pixels)
    assert "ColorMap" not in run["messages"][name]


def test_pyramid_levels_of_a_class_map_are_indices_with_its_colour_table(run):
    _, given, pixels = _table(run["root"] / "lc8.tif")
    with _open(run["outputs"]["pyramid8"]) as ds:
        assert ds.overviews(1)
    interp, table, level = _table(run["outputs"]["pyramid8"], overview_level=0)
    assert interp == ColorInterp.palette and table
    # (the colours: GDAL makes the no-data entry transparent on the page's band alone)
    assert {k: v[:3] for k, v in table.items()} == {k: v[:3] for k, v in given.items()}
    # each 2 x 2 block's top-left pixel, as a palette page's levels: never a mean of classes
    np.testing.assert_array_equal(level, pixels[0::2, 0::2][:level.shape[0], :level.shape[1]])


@pytest.mark.parametrize("name,why", [
    ("blur8", "ops[0] (gaussian_blur) changes the values its colours are of"),
    ("mean8", ('ops[0] (downsample) changes the values its colours are of (a downsample by '
               '"mode" or "nearest" picks them: the ColorMap is kept)')),
    ("jpeg8", "a jpeg output changes the values its colours are of"),
    ("bilevel8", "a 1-bit output has no colour table"),
    ("big16", "its ColorMap is "),
])
def test_a_chain_that_changes_values_drops_the_table_and_the_palette_interp(run, name, why):
    path = run["outputs"][name]
    interp, table, _ = _table(path)
    if name == "bilevel8":  # (GDAL shows a 1-bit miniswhite page as its own black and white)
        assert table == {0: (255, 255, 255, 255), 1: (0, 0, 0, 255)}
    else:
        assert interp == ColorInterp.gray and table is None  # not a palette without colours
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert 320 not in tags
        assert 42112 not in tags or b"Palette" not in tags[42112].value.encode()
    message = run["messages"][name]
    assert f"ColorMap of page 0 dropped: {why}" in message
    assert "COLORINTERP Palette removed with it (GDAL and QGIS read the band as gray)" in message


def test_inspect_lists_the_colormap_among_what_is_kept(run):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["inspect", str(run["root"] / "lc8.tif")]) == 0
    assert "; kept: GDAL_NODATA 0, GeoTIFF, ColorMap, GDAL_METADATA\n" in out.getvalue()


def test_the_note_of_a_refused_jobs_pages_names_only_the_pages_it_could_write(tmp_path):
    """A JPEG output of two class maps with colour tables, 8-bit and 16-bit: the 16-bit page
    is refused (JPEG holds 8 bits), and the job's note (said by ``validate --inputs`` with
    the refusal) tells of the ColorMap the JPEG drops on page 0 only. Before, the note was
    made before the output's refusals and told of page 1's too, a page that is not
    written."""
    src = tmp_path / "maps.tif"
    with tifffile.TiffWriter(src) as tw:
        for dtype in ("uint8", "uint16"):
            colours = (np.arange(3 * 2 ** (8 * np.dtype(dtype).itemsize)) % 256 * 257)
            tw.write(class_map(dtype, CLASSES), photometric="minisblack", metadata=None,
                     extratags=[(320, "H", colours.size, colours.astype(np.uint16), True)])
    spec = JobSpec(input=str(src), output=str(tmp_path / "out.tif"),
                   output_options=OutputOptions(compression="jpeg"))
    plan, problems = plan_pages(0, spec, read_infos(str(src), None), str(tmp_path), 0.0)
    assert [p.page for p in problems] == [1]
    assert problems[0].text.startswith("page 1: jpeg output needs uint8 pixels")
    assert plan.note == ("ColorMap of page 0 dropped: a jpeg output changes the values its "
                         "colours are of; GDAL_METADATA's COLORINTERP Palette removed with it "
                         "(GDAL and QGIS read the band as gray)")
