"""Pages derived from an image page: masks and overviews stored in the chain of pages.

GDAL writes an internal mask (``write_mask``, COG ``-mask``, a JPEG COG's alpha) as a 1-bit
page with NewSubfileType 4 and Photometric MASK after its image, and a COG (gdaladdo,
libvips ``pyramid`` without ``subifd``) its overviews as pages marked reduced-resolution
(NewSubfileType 1) after the page they reduce, each followed by its mask (5) in a masked
COG. A job without ``pages`` processes the image pages only, carries each image's own mask
(the page right after it) into the output after it, and says which pages it left out; a
listed mask is refused with the pages to list; a listed overview is processed as a page of
its own, not marked reduced. An Aperio SVS file's pages (its label 1 and macro 9 are marked
reduced) are all processed, as before. The files are written with tifffile the way GDAL
writes them (``subfiletype=4`` on a bool page: 1-bit, deflate, Photometric MASK).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from conftest import masked_blur, write_ome_pyramid

from pipeline import cli
from pipeline.adapters.tiff_read import read_infos
from pipeline.errors import UnsupportedTiffError

pytestmark = pytest.mark.timeout(240)

SIGMA = 2.0
BLUR = [{"op": "gaussian_blur", "sigma": SIGMA}]
H, W = 300, 420


def image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(yy / 9.0) + np.cos(xx / 13.0) + 2) * 60
    return np.clip(base[..., None] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def valid_area(h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[h // 6: h - h // 5, w // 7: w - w // 4] = True
    return m


def reduced(img: np.ndarray, f: int) -> np.ndarray:
    """An overview as GDAL sizes it: each side divided by f, rounded up."""
    h, w = -(-img.shape[0] // f), -(-img.shape[1] // f)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def write_mask(tw: tifffile.TiffWriter, mask: np.ndarray, subfiletype: int = 4) -> None:
    tw.write(mask, subfiletype=subfiletype, compression="zlib", tile=(128, 128),
             metadata=None)


def write_masked(path: Path) -> np.ndarray:
    """An image and its GDAL internal mask (rasterio's ``write_mask``)."""
    img = image()
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, photometric="rgb", tile=(128, 128), compression="zlib", metadata=None)
        write_mask(tw, valid_area())
    return img


def write_cog(path: Path, masked: bool = True) -> np.ndarray:
    """A COG's chain of pages: the image, its mask, its overviews by 2 and 4, their masks."""
    img = image()
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, photometric="rgb", tile=(128, 128), compression="zlib", metadata=None)
        if masked:
            write_mask(tw, valid_area())
        for f in (2, 4):
            tw.write(reduced(img, f), photometric="rgb", tile=(128, 128), compression="zlib",
                     subfiletype=1, metadata=None)
        if masked:
            for f in (2, 4):
                write_mask(tw, reduced(valid_area().astype(np.uint8), f) > 0, subfiletype=5)
    return img


def run(root: Path, jobs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Run the jobs (``tiffpipe run``); each job's report entry by name, and the lines the
    command wrote to stderr (its warnings, and what a log warning would have printed)."""
    manifest = root / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {**job, "output": str(root / "out" / f"{name}.tif")} for name, job in jobs.items()]}))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        cli.main(["run", str(manifest), "--workers", "2", "--no-contact-sheet"])
    report = json.loads((root / "m.report.json").read_text())
    return dict(zip(jobs, report["jobs"], strict=True)), err.getvalue().splitlines()


def pages_of(path: str) -> list[tuple[np.ndarray, int, int]]:
    """(pixels, NewSubfileType, SubIFD levels) of each page in the main chain."""
    with tifffile.TiffFile(path) as tf:
        return [(p.asarray(), int(p.subfiletype), len(p.pages or [])) for p in tf.pages]


def blurred(img: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The job's blur of ``img``; of a page carrying a mask (its pixels ``valid``), of the
    valid pixels alone, the others kept (docs/manifest-and-ops.md, "No-data and the
    blurs")."""
    return cv2.GaussianBlur(img, (0, 0), SIGMA) if valid is None else \
        masked_blur(img, SIGMA, valid)


# --- which pages a job reads ----------------------------------------------------------------


def test_a_job_without_pages_reads_the_image_pages(tmp_path):
    cog, masked = tmp_path / "cog.tif", tmp_path / "masked.tif"
    write_cog(cog)
    write_masked(masked)
    assert [i.index for i in read_infos(str(cog), None)] == [0]
    assert [i.index for i in read_infos(str(masked), None)] == [0]
    # two images, each with its overview: both images, neither overview
    two = tmp_path / "two.tif"
    with tifffile.TiffWriter(two) as tw:
        for seed, (h, w) in enumerate([(H, W), (200, 150)]):
            img = image(h, w, seed)
            tw.write(img, photometric="rgb", tile=(64, 64), metadata=None)
            tw.write(reduced(img, 2), photometric="rgb", tile=(64, 64), subfiletype=1,
                     metadata=None)
    assert [i.index for i in read_infos(str(two), None)] == [0, 2]


def test_pages_marked_reduced_that_do_not_reduce_the_page_before_are_read(tmp_path):
    """A page marked reduced is an overview only of the image before it: one of another
    shape (a label, 1) or other samples (a gray thumbnail of an RGB page), or with no
    image before it, is a page of its own."""
    path = tmp_path / "marked.tif"
    img = image()
    with tifffile.TiffWriter(path) as tw:
        tw.write(reduced(img, 2), photometric="rgb", subfiletype=1, metadata=None)  # first
        tw.write(img, photometric="rgb", tile=(64, 64), metadata=None)
        tw.write(image(80, 200, 3), photometric="rgb", subfiletype=1, metadata=None)  # label
        tw.write(reduced(img, 4)[..., 0], photometric="minisblack", subfiletype=1,
                 metadata=None)
        tw.write(reduced(img, 3), photometric="rgb", subfiletype=1, metadata=None)
    assert [i.index for i in read_infos(str(path), None)] == [0, 1, 2, 3]


def test_an_svs_files_pages_are_all_read(tmp_path):
    """Aperio: the base, its thumbnail, its levels (NewSubfileType 0), the label (1) and the
    macro (9): each an image of its own, as before, whatever its shape."""
    head = "Aperio Image Library v12.0.0\r\n"
    base = image(512, 768)
    path = tmp_path / "slide.svs"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, photometric="rgb", tile=(256, 256), metadata=None,
                 description=head + "768x512 [0,0 768x512] (256x256) RAW|MPP = 0.5")
        tw.write(base[::8, ::8], photometric="rgb", metadata=None,
                 description=head + "768x512 -> 96x64 - ")
        tw.write(reduced(base, 2), photometric="rgb", tile=(128, 128), metadata=None,
                 description=head + "768x512 -> 384x256 - ")
        # a label of the slide's shape (as a thumbnail-sized one could be): still read
        tw.write(reduced(base, 4), photometric="rgb", subfiletype=1, rowsperstrip=16,
                 metadata=None, description=head + "label 192x128")
        tw.write(image(100, 300, 4), photometric="rgb", subfiletype=9, rowsperstrip=16,
                 metadata=None, description=head + "macro 300x100")
    assert [i.index for i in read_infos(str(path), None)] == [0, 1, 2, 3, 4]
    infos = read_infos(str(path), [3, 4])  # listed: kept as they are, marked 1 and 9
    assert [i.metadata.get("subfiletype") for i in infos] == [1, 9]


def test_a_file_of_masks_only_says_so(tmp_path):
    path = tmp_path / "mask.tif"
    with tifffile.TiffWriter(path) as tw:
        write_mask(tw, valid_area())
    with pytest.raises(UnsupportedTiffError, match="has no image page to process"):
        read_infos(str(path), None)


def test_a_listed_mask_is_refused_naming_the_image_pages(tmp_path):
    path = tmp_path / "cog.tif"
    write_cog(path)
    with pytest.raises(UnsupportedTiffError) as exc:
        read_infos(str(path), [0, 1])
    message = str(exc.value)
    assert "page 1 is a transparency mask of page 0 (NewSubfileType 4, Photometric MASK)" \
        in message
    assert '"pages": [0]' in message and "leave pages out" in message
    with pytest.raises(UnsupportedTiffError, match="page 4 is a transparency mask of a "
                                                   "reduced-resolution page of page 0"):
        read_infos(str(path), [4])


# --- runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("derived")
    masked, cog, two = root / "masked.tif", root / "cog.tif", root / "two.tif"
    srcs = {"masked": write_masked(masked), "cog": write_cog(cog)}
    with tifffile.TiffWriter(two) as tw:  # two images, each followed by its overview
        for seed in (1, 2):
            srcs[f"two{seed}"] = img = image(seed=seed)
            tw.write(img, photometric="rgb", tile=(128, 128), metadata=None)
            tw.write(reduced(img, 2), photometric="rgb", tile=(128, 128), subfiletype=1,
                     metadata=None)
    two_masked = root / "two_masked.tif"
    with tifffile.TiffWriter(two_masked) as tw:  # two images, each followed by its mask
        for seed in (3, 4):
            srcs[f"two_masked{seed}"] = img = image(seed=seed)
            tw.write(img, photometric="rgb", tile=(128, 128), metadata=None)
            write_mask(tw, valid_area() if seed == 3 else ~valid_area())
    pyramid = {"pyramid": True, "tile": 64}
    jobs, stderr = run(root, {
        "masked": {"input": str(masked), "ops": BLUR},
        "cog": {"input": str(cog), "ops": BLUR},
        "cog_pyramid": {"input": str(cog), "ops": BLUR, "output_options": pyramid},
        "listed_overview": {"input": str(cog), "ops": BLUR, "pages": [0, 2],
                            "output_options": pyramid},
        "listed_mask": {"input": str(cog), "pages": [0, 1]},
        "two": {"input": str(two), "ops": BLUR},
        "two_masked": {"input": str(two_masked), "ops": BLUR},
        "listed_masked": {"input": str(masked), "ops": BLUR, "pages": [0]},
        "masked_off": {"input": str(masked), "ops": BLUR,
                       "output_options": {"masks": False}},
    })
    return {"jobs": jobs, "stderr": stderr, "srcs": srcs, "cog": cog}


def test_pages_left_out_between_image_pages_are_skipped_in_the_report_and_sheet(runs):
    """Image, overview, image, overview: the job reads input pages 0 and 2, which its
    report entry lists (``input_pages``), so the contact sheet puts output page 1 beside
    input page 2 (it took it for input page 1, the first page's overview)."""
    from pipeline.contact_sheet import sheet_rows
    from pipeline.core.models import JobSpec

    job = runs["jobs"]["two"]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 2 and job["input_pages"] == [0, 2]
    outs = [out for out, _, _ in pages_of(job["output"])]
    for out, seed in zip(outs, (1, 2), strict=True):
        np.testing.assert_array_equal(out, blurred(runs["srcs"][f"two{seed}"]))
    spec = JobSpec(input=job["input"], output=job["output"], ops=BLUR)
    rows = sheet_rows({"jobs": [{**job, "job": 0}]}, [spec])
    assert [(r.in_page, r.out_page) for r in rows] == [(0, 0), (2, 1)]


@pytest.mark.parametrize("name", ["masked", "listed_masked"])
def test_a_masked_file_carries_its_mask(runs, name):
    """The image page, blurred, then its mask as it was (no op moved the pixels), whether
    the job lists the image page or leaves pages out; nothing is said left out."""
    job = runs["jobs"][name]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 1 and job["masks"] == 1
    (out, subfiletype, levels), (mask, mask_type, _) = pages_of(job["output"])
    np.testing.assert_array_equal(out, blurred(runs["srcs"]["masked"], valid_area()))
    np.testing.assert_array_equal(mask, valid_area())
    assert (subfiletype, levels, mask_type) == (0, 0, 4)
    assert "message" not in job


def test_a_masked_file_told_to_leave_its_mask_out_says_so(runs):
    job = runs["jobs"]["masked_off"]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 1 and "masks" not in job
    ((out, subfiletype, levels),) = pages_of(job["output"])  # the image alone: no mask page
    np.testing.assert_array_equal(out, blurred(runs["srcs"]["masked"]))
    assert (subfiletype, levels) == (0, 0)
    assert job["message"] == (
        "page 1 left out: the transparency mask of page 0 (NewSubfileType bit 2, "
        "Photometric MASK), not an image: the output has no mask (output_options.masks is "
        "false), its masked-out area is data like any other")


def test_each_page_carries_its_own_mask_and_the_sheet_draws_the_images(runs):
    """Image, mask, image, mask: each output page is followed by its own mask; the report
    says the input pages read (0 and 2) and the contact sheet draws output pages 0 and 2 of
    the file (its image pages), beside input pages 0 and 2."""
    from pipeline.contact_sheet import sheet_rows
    from pipeline.core.models import JobSpec

    job = runs["jobs"]["two_masked"]
    assert job["pages"] == 2 and job["masks"] == 2 and job["input_pages"] == [0, 2]
    pages = pages_of(job["output"])
    assert [subfiletype for _, subfiletype, _ in pages] == [0, 4, 0, 4]
    for k, seed in enumerate((3, 4)):
        valid = valid_area() if seed == 3 else ~valid_area()
        np.testing.assert_array_equal(pages[2 * k][0],
                                      blurred(runs["srcs"][f"two_masked{seed}"], valid))
        np.testing.assert_array_equal(pages[2 * k + 1][0], valid)
    spec = JobSpec(input=job["input"], output=job["output"], ops=BLUR)
    rows = sheet_rows({"jobs": [{**job, "job": 0}]}, [spec])
    assert [(r.in_page, r.out_file_page) for r in rows] == [(0, 0), (2, 2)]


def test_the_command_names_the_first_jobs_that_left_pages_out_once_a_run(runs):
    """A run says which jobs lost pages on stderr once, a short line each (the report's
    message says why: a COG's note is 500 characters), the first three of them, then how
    many more (a scan of 10,000 COGs printed 10,000 warnings, a job each, even --quiet).
    A job whose output rebuilds what it left out (a COG's overviews with pyramid, its mask
    carried) lost nothing and is not said, though its report entry keeps its message."""
    jobs = runs["jobs"]
    noted = [j for j in jobs.values() if j.get("message")]
    assert [j["job"] for j in noted] == [1, 2, 5, 8]
    assert jobs["cog_pyramid"]["notice"] == "" and jobs["cog_pyramid"]["message"]
    levels = "set output_options.pyramid for levels made from the output"
    said = {"cog": f"pages 2-3 left out: overviews; {levels}",
            "two": f"pages 1, 3 left out: overviews; {levels}",
            "masked_off": "page 1 left out: a mask the output does not carry "
                          "(output_options.masks is false)"}
    assert [line for line in runs["stderr"] if "left out" in line] == [
        f"tiffpipe: job {jobs[name]['job']} ({jobs[name]['input']}): {text} (the report's "
        "message says why)" for name, text in said.items()]
    assert all(len(line) < 200 for line in runs["stderr"] if "left out" in line)


def test_a_cogs_overviews_and_their_masks_are_left_out(runs):
    """Its image's mask is carried; its overviews and theirs (NewSubfileType 5) are not."""
    job = runs["jobs"]["cog"]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 1 and job["masks"] == 1
    (out, subfiletype, levels), (mask, mask_type, _) = pages_of(job["output"])
    np.testing.assert_array_equal(out, blurred(runs["srcs"]["cog"], valid_area()))
    np.testing.assert_array_equal(mask, valid_area())
    assert (subfiletype, levels, mask_type) == (0, 0, 4)
    assert job["message"].startswith(
        "pages 4-5 left out: the transparency masks of page 0 and its reduced-resolution "
        "pages (NewSubfileType bit 2, Photometric MASK), not images: the output carries the "
        "internal mask of page 0 only (1-bit, the page's size, right after it)")
    assert ("pages 2-3 left out: reduced-resolution pages (overviews, NewSubfileType bit 0) "
            "of page 0, which would not match the processed pixels: set "
            "output_options.pyramid") in job["message"]


def test_a_cog_with_pyramid_has_one_set_of_levels(runs):
    """The levels made from the processed page, as SubIFDs; no page of the main chain is
    an overview (GDAL saw [2, 4, 4, 8] when the input's overviews were processed too)."""
    job = runs["jobs"]["cog_pyramid"]
    (out, subfiletype, levels), *masks = pages_of(job["output"])
    np.testing.assert_array_equal(out, blurred(runs["srcs"]["cog"], valid_area()))
    assert subfiletype == 0 and levels == 3  # 300 x 420 -> 150 x 210, 75 x 105, 38 x 53
    # its mask and its levels' (NewSubfileType 5: masks, not overviews; tests/test_masks.py)
    assert [(m.shape, kind) for m, kind, _ in masks] == [
        ((300, 420), 4), ((150, 210), 5), ((75, 105), 5), ((38, 53), 5)]
    assert ("the output carries the internal mask of page 0 only (1-bit, the page's size, "
            "right after it, and its levels' masks reduced from it)") in job["message"]
    # its note says the levels are made from the processed pixels, not to set pyramid
    assert "the output's levels (output_options.pyramid) are made from them" in job["message"]
    assert "set output_options.pyramid" not in job["message"]


def test_a_listed_overview_is_processed_as_a_page_of_its_own(runs):
    job = runs["jobs"]["listed_overview"]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 2 and "message" not in job
    pages = pages_of(job["output"])
    # (page 0's mask and its levels' after it: NewSubfileType 4, 5, 5, 5; page 2 has none)
    assert [kind for _, kind, _ in pages] == [0, 4, 5, 5, 5, 0]
    (base, st0, levels0), (page, st1, levels1) = pages[0], pages[-1]
    src = runs["srcs"]["cog"]
    np.testing.assert_array_equal(base, blurred(src, valid_area()))
    np.testing.assert_array_equal(page, blurred(reduced(src, 2)))  # sigma in its own pixels
    # not marked reduced: readers would take it for an overview of page 0, beside its levels
    assert (st0, st1) == (0, 0) and (levels0, levels1) == (3, 2)
    # the contact sheet draws the file's image pages, past page 0's masks
    from pipeline.contact_sheet import sheet_rows
    from pipeline.core.models import JobSpec

    spec = JobSpec(input=job["input"], output=job["output"], ops=BLUR, pages=[0, 2])
    rows = sheet_rows({"jobs": [{**job, "job": 0}]}, [spec])
    assert [(r.in_page, r.out_file_page) for r in rows] == [(0, 0), (2, 5)]


def test_a_listed_mask_fails_the_job_saying_what_to_list(runs):
    job = runs["jobs"]["listed_mask"]
    assert job["status"] == "FAILED" and job["error"]["type"] == "UnsupportedTiffError"
    assert job["error"]["message"].startswith(f"{runs['cog']}: page 1 is a transparency mask "
                                              "of page 0")
    assert '"pages": [0]' in job["error"]["message"]


def test_estimate_counts_the_pages_a_run_processes(runs, tmp_path):
    from pipeline import estimate as est

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": str(runs["cog"]), "output": str(tmp_path / "a.tif"), "ops": BLUR},
        {"input": str(runs["cog"]), "output": str(tmp_path / "b.tif"), "pages": [0, 2],
         "ops": BLUR}]}))  # (the "cog" run's ops: its note is the run's message)
    planned = est.plan_manifest(str(manifest))
    plans = planned.plans
    assert not planned.problems
    assert [[p.info.index for p in plan.pages] for plan in plans] == [[0], [0, 2]]
    assert plans[0].note == runs["jobs"]["cog"]["message"] and plans[1].note == ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["estimate", str(manifest)]) == 0
    text = out.getvalue()
    assert re.search(r'jobs\[0\] ".*": 1 page\(s\)', text), text
    assert re.search(r'jobs\[1\] ".*": 2 page\(s\)', text), text
    assert "    pages 4-5 left out: the transparency masks" in text


def test_a_pages_subifd_levels_left_out_are_said_as_overview_pages_are(tmp_path):
    """An OME-TIFF pyramid (each plane's levels its SubIFDs, as QuPath, bfconvert and
    tiffpipe's ``pyramid`` write it): a job drops the levels either way (they would not
    match the processed pixels); its report entry says so, and to set
    ``output_options.pyramid``, as it does of overviews stored as pages. It said nothing:
    the levels went without a word (docs/outputs.md said the entry tells to set it)."""
    src = tmp_path / "pyramid.ome.tif"
    planes = np.stack([image(seed=s)[..., 0] for s in (5, 6)])
    write_ome_pyramid(src, planes, tile=128)
    jobs, stderr = run(tmp_path, {
        "flat": {"input": str(src), "ops": BLUR},
        "one": {"input": str(src), "ops": BLUR, "pages": [1]},
        "levels": {"input": str(src), "ops": BLUR,
                   "output_options": {"pyramid": True, "tile": 64}},
        "copy": {"input": str(src), "output_options": {"pyramid": True, "tile": 64}}})
    assert [j["status"] for j in jobs.values()] == ["SUCCEEDED"] * 4
    said = ("left out, which would not match the processed pixels: set output_options.pyramid "
            "for levels made from them")
    assert jobs["flat"]["message"] == f"the reduced-resolution levels (SubIFDs) of pages 0-1 {said}"
    assert jobs["one"]["message"] == f"the reduced-resolution levels (SubIFDs) of page 1 {said}"
    assert jobs["levels"]["message"] == (
        "the reduced-resolution levels (SubIFDs) of pages 0-1 left out, which would not match "
        "the processed pixels: the output's levels (output_options.pyramid) are made from them")
    assert [levels for *_, levels in pages_of(jobs["flat"]["output"])] == [0, 0]
    assert [levels for *_, levels in pages_of(jobs["levels"]["output"])] == [3, 3]
    assert (f"tiffpipe: job 0 ({src}): the SubIFD levels of pages 0-1 left out; set "
            "output_options.pyramid for levels made from the output (the report's message "
            "says why)") in stderr
    assert not [line for line in stderr if line.startswith("tiffpipe: job 2 ")]  # (remade)
    # a copy's levels are its input's pixels: left out because a job copies no level, and
    # made from the page with pyramid, which says nothing on stderr either
    assert jobs["copy"]["message"] == (
        "the reduced-resolution levels (SubIFDs) of pages 0-1 left out, which a job does not "
        "copy (its output pages are the images only): the output's levels "
        "(output_options.pyramid) are made from the page")
    assert not [line for line in stderr if line.startswith("tiffpipe: job 3 ")]
