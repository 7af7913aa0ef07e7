"""The mask reader of a unit's tiles (pipeline.steps.masks.MaskReader): a ``downsample`` of
a page with an internal mask (GDAL's 1-bit page after it) reads the mask for every tile, and
the unit's tiles share one reader: the input opened once, each mask segment (a tile or a
strip of the mask page) decoded once, the cache bounded by the tiles of about one row. The
inputs are written by GDAL (rasterio), the units and batches run by their own steps (no
engine), the input local or on moto's S3."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import gdal_average, gdal_masked, moto_s3

from pipeline.adapters import kept_files, storage
from pipeline.adapters.storage import write_json
from pipeline.adapters.tiff_read import PageReader, read_infos_and_version
from pipeline.core import plan as plan_mod
from pipeline.core.events import BatchEvent, MergeEvent, UnitEvent
from pipeline.core.models import JobPlan, JobSpec, OutputOptions
from pipeline.steps import layout
from pipeline.steps import masks as masks_mod
from pipeline.steps.common import forget_plans
from pipeline.steps.merge import merge
from pipeline.steps.process import process, process_unit
from pipeline.steps.split import split

pytestmark = pytest.mark.timeout(120)

#: the page: 4 x 5 processing tiles of 64 px, each downsampled by 2 to 32 px output tiles
HEIGHT, WIDTH, TILE, FACTOR = 250, 300, 64, 2


def masked_input(path: Path, block: int | None) -> None:
    """A GeoTIFF with GDAL's internal mask: a slanted valid area with a hole, the fill 0."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    valid = (xx > yy // 3 + 17) & (yy > 5) & (yy < HEIGHT - 9)
    valid[90:111, 140:173] = False
    pixels = np.where(valid, 60 + yy // 4 + xx // 6, 0).astype(np.uint8)
    gdal_masked(path, pixels, valid, block=block)


def spied_mask_readers(mp: pytest.MonkeyPatch) -> list[PageReader]:
    """Every PageReader of a mask page made from now on (the masks module's)."""
    made: list[PageReader] = []

    class Spy(PageReader):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            made.append(self)

    mp.setattr(masks_mod, "PageReader", Spy)
    return made


def planned(src: str, work: Path, fuse: bool) -> tuple[str, JobPlan]:
    """The downsample job's plan, written where its steps read it: one unit (fused) or one
    split unit and its batches."""
    spec = JobSpec(input=src, output=str(work / "out.tif"),
                   ops=[{"op": "downsample", "factor": FACTOR}], tile=TILE,
                   output_options=OutputOptions(tile=TILE // FACTOR), fuse=fuse)
    infos, version = read_infos_and_version(src, None)
    plan, problems = plan_mod.make_plan(0, spec, infos, str(work / "work"), time.time(),
                                        version)
    assert problems == [] and plan.pages[0].info.mask_ifd  # the mask is carried
    url = layout.plan_file(plan.work)
    write_json(url, plan.to_json())
    forget_plans()
    return url, plan


def run_steps(url: str, plan: JobPlan) -> None:
    if plan.fused:
        for i in range(len(plan.units)):
            process_unit(UnitEvent(url, i))
    else:
        for i in range(len(plan.units)):
            split(UnitEvent(url, i))
        for k in range(len(plan.batches)):
            process(BatchEvent(url, k))
    merge(MergeEvent(url))
    forget_plans()


def mask_segments(path: Path) -> int:
    with tifffile.TiffFile(path) as tf:
        return len(tf.pages[1].dataoffsets)


@pytest.mark.parametrize("block", [64, None], ids=["mask_tiles", "mask_strips"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "batches"])
def test_a_units_tiles_share_one_mask_reader(tmp_path, monkeypatch, block, fuse):
    """A masked downsample of a unit of 20 tiles: its tiles read the mask through one reader
    (one for the tiles, one for the unit's mask segment; a batch's tiles one a batch), which
    decodes each mask segment once, not once for each tile under it; the output is still
    GDAL's average of the valid pixels, its mask GDAL's reduced one."""
    src = tmp_path / "in.tif"
    masked_input(src, block)
    monkeypatch.setattr(plan_mod, "TILES_PER_BATCH", 10)
    url, plan = planned(str(src), tmp_path, fuse)
    assert len(plan.units) == 1 and plan.pages[0].grid.rows * plan.pages[0].grid.cols == 20
    readers = spied_mask_readers(monkeypatch)
    run_steps(url, plan)
    # the unit's mask segment's reader, and one per unit of tiles (the fused unit, or each
    # batch): before, one per tile read (20 more)
    assert len(readers) == 1 + (1 if fuse else len(plan.batches))
    segments = mask_segments(src)
    for reader in readers:
        assert reader.decoded <= segments  # each segment at most once a reader
    want, valid = gdal_average(src, FACTOR)
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        np.testing.assert_array_equal(tf.pages[0].asarray(), want[:, :, 0])
        np.testing.assert_array_equal(tf.pages[1].asarray() > 0,
                                      _any_of_blocks(valid, want.shape))


def _any_of_blocks(valid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[0], shape[1]
    return valid[:h * FACTOR, :w * FACTOR].reshape(h, FACTOR, w, FACTOR).any(axis=(1, 3))


def test_on_s3_a_unit_opens_the_input_once_for_its_tiles_masks(tmp_path, monkeypatch):
    """On S3 (moto), where no open is kept between reads: the fused unit opens the input
    three times (its sweep of the pixels, its tiles' mask reads, its mask segment), not once
    more for each of its 20 tiles."""
    src = tmp_path / "in.tif"
    masked_input(src, 64)
    with moto_s3(monkeypatch, "bucket") as s3:
        s3.upload_file(str(src), "bucket", "in.tif")
        url, _ = planned("s3://bucket/in.tif", tmp_path, fuse=True)
        opens: list[str] = []
        real = storage.open_input

        def counted(where: str, *args: Any, **kwargs: Any) -> Any:
            opens.append(where)
            return real(where, *args, **kwargs)

        monkeypatch.setattr(storage, "open_input", counted)
        process_unit(UnitEvent(url, 0))
        forget_plans()
    assert opens == ["s3://bucket/in.tif"] * 3


def test_the_tiles_mask_reader_closes_its_input_with_the_unit(tmp_path, monkeypatch):
    """The tiles' mask reader opens the input itself once (the unit's mask segment reads the
    sweep's kept open file), and closes it when the unit ends."""
    src = tmp_path / "in.tif"
    masked_input(src, 64)
    url, _ = planned(str(src), tmp_path, fuse=True)
    opened: list[str] = []
    real = masks_mod.open_tiff

    @contextlib.contextmanager
    def spied(*args: Any, **kwargs: Any) -> Iterator[tifffile.TiffFile]:
        with real(*args, **kwargs) as tf:
            opened.append("open")
            yield tf
        opened.append("closed")

    monkeypatch.setattr(masks_mod, "open_tiff", spied)
    try:
        process_unit(UnitEvent(url, 0))
    finally:
        forget_plans()
        kept_files.close_all()
    assert opened == ["open", "closed"]
