"""Bad inputs end to end: one manifest run with good and broken jobs side by side.

Every broken job must fail with its own named error (in the run report, naming the input and
the page), the good jobs must succeed with exact pixels, and a run leaves no partial output,
no temp file and no work folder behind. Also: invalid manifests, and a worker that dies.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from conftest import LIBTIFF_CORPUS as CORPUS
from conftest import read_pages

import pipeline.errors as errors_module
import pipeline.ui
from pipeline import cli
from pipeline.engine.workers import WorkerPool
from pipeline.sample import SamplePage, sample_tile, write_sample

pytestmark = pytest.mark.timeout(240)

SIGMA = 2.0
#: the tile of the process-failure job whose work file is damaged between split and process
BROKEN_TILE = (2, 3)
TIFF_ERRORS = {"CorruptTiffError", "NotATiffError", "UnsupportedTiffError"}
NAMED_ERRORS = {cls.__name__ for cls in errors_module._all_subclasses(errors_module.TiffpipeError)}


# --- the run ----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    job: dict[str, Any]
    errors: set[str] | None = None  # None: must succeed; else the accepted error types
    mentions: tuple[str, ...] = ()  # besides the input path, the message names these


@dataclass
class Run:
    root: Path
    code: int
    out: str
    err: str
    report: dict[str, Any]
    cases: dict[str, Case]
    index: dict[str, int]
    corrupted: list[str]

    def job(self, name: str) -> dict[str, Any]:
        return self.report["jobs"][self.index[name]]


def _cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def _gray16(path: Path) -> None:
    """A stripped (not tiled) uint16 gray page, LZW, 40 rows a strip."""
    img = sample_tile(0, 0, 310, 270, 1, "uint16", seed=5)
    tifffile.imwrite(path, img, rowsperstrip=40, compression="lzw", photometric="minisblack",
                     metadata=None)


def _bad_last_strip(path: Path) -> None:
    """A stripped deflate page whose LAST strip has garbage in the middle of its data."""
    img = sample_tile(0, 0, 300, 260, 1, "uint16", seed=7)
    tifffile.imwrite(path, img, rowsperstrip=32, compression="deflate",
                     photometric="minisblack", metadata=None)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        offset, count = int(page.dataoffsets[-1]), int(page.databytecounts[-1])
    data = bytearray(path.read_bytes())
    middle = offset + count // 2
    data[middle:middle + 16] = b"\xde\xad\xbe\xef" * 4
    path.write_bytes(bytes(data))


def _linked(target: Path, like: Path) -> Path:
    """A link to ``target``, a copy of ``like`` (and another copy to compare it with)."""
    target.write_bytes(like.read_bytes())
    target.with_suffix(".copy").write_bytes(like.read_bytes())
    link = target.with_name("link_to_" + target.name)
    link.symlink_to(target.name)
    return link


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _build(root: Path) -> list[Case]:
    inp, out = root / "in", root / "out"
    inp.mkdir()
    good_rgb, gray16 = inp / "rgb_tiled_zstd.tif", inp / "gray16_stripped.tif"
    write_sample(str(good_rgb), [SamplePage(300, 420, 3), SamplePage(260, 200, 3)], tile=128,
                 compression="zstd")
    _gray16(gray16)
    tiled = inp / "tiled_for_cuts.tif"
    write_sample(str(tiled), [SamplePage(256, 320, 3)], tile=64, compression="zstd")
    with tifffile.TiffFile(tiled) as tf:
        assert tf.pages[0].offset == 8 and min(tf.pages[0].dataoffsets) > 60  # IFD first
    (inp / "notes.tif").write_text("this is a text file, not a TIFF\n" * 20)
    (inp / "empty.tif").write_bytes(b"")
    (root / "blocker.txt").write_text("a regular file where a folder should be")
    _bad_last_strip(inp / "bad_last_strip.tif")
    blur = [{"op": "gaussian_blur", "sigma": SIGMA}]
    small = {"tile": 64, "output_options": {"tile": 64}}

    def job(src: Path | str, name: str, **extra: Any) -> dict[str, Any]:
        return {"input": str(src), "output": str(out / f"{name}.tif"), **extra}

    cases = [
        Case("good_rgb", job(good_rgb, "good_rgb", ops=blur, tile=128,
                             output_options={"tile": 64})),
        Case("good_gray16", job(gray16, "good_gray16", ops=blur, **small)),
        Case("not_a_tiff", job(inp / "notes.tif", "not_a_tiff"), {"NotATiffError"},
             ("not a TIFF file (it begins b'this', not II*", "give a TIFF file")),
        Case("empty", job(inp / "empty.tif", "empty"), {"NotATiffError"},
             ("empty.tif: not a TIFF file (it is empty: 0 bytes)", "give a TIFF file")),
        Case("truncated_data", job(_cut(tiled, inp / "cut60.tif", int(tiled.stat().st_size * .6)),
                                   "truncated_data", ops=blur),
             {"CorruptTiffError"}, ("page 0", "segment", "truncated")),
        Case("truncated_ifd", job(_cut(tiled, inp / "cut_ifd.tif", 40), "truncated_ifd"),
             {"CorruptTiffError", "NotATiffError"}),
        Case("truncated_header", job(_cut(tiled, inp / "cut_header.tif", 6), "truncated_header"),
             {"CorruptTiffError", "NotATiffError"}),
        Case("truncated_at_ifd", job(_cut(tiled, inp / "cut_at_ifd.tif", 8), "truncated_at_ifd"),
             {"CorruptTiffError", "NotATiffError"}),
        Case("missing", job(inp / "no" / "such.tif", "missing"), {"InputNotFoundError"}),
        # a folder: named at once (it was a StorageError, retried for seconds, "check the
        # path, permissions and free space")
        Case("input_is_folder", job(inp, "input_is_folder"), {"NotATiffError"},
             ("is a folder", "scan")),
        # a FIFO: refused by its stat (opening it hung the run, deaf to SIGTERM); a device too
        Case("input_is_fifo", job(_fifo(inp / "pipe.tif"), "input_is_fifo"), {"NotATiffError"},
             ("is a FIFO (named pipe), not a regular file",)),
        Case("input_is_device", job("/dev/zero", "input_is_device"), {"NotATiffError"},
             ("is a character device, not a regular file",)),
        # the output is the input under another name (a link): refused, the input kept
        Case("output_is_input", {"input": str(_linked(inp / "linked.tif", tiled)),
                                 "output": str(inp / "linked.tif"), "ops": blur},
             {"OutputNotWritableError"}, ("is the job's input", "link")),
        Case("unwritable", {"input": str(gray16),
                            "output": str(root / "blocker.txt" / "unwritable.tif")},
             {"OutputNotWritableError"}),
        Case("no_such_page", job(good_rgb, "no_such_page", pages=[1, 5]),
             {"PageNotFoundError"}, ("page 5",)),
        Case("median7_uint16", job(gray16, "median7_uint16",
                                   ops=[{"op": "median_blur", "ksize": 7}]),
             {"OperationError"}, ("page 0", "median_blur")),
        Case("bad_last_strip", job(inp / "bad_last_strip.tif", "bad_last_strip", ops=blur, **small),
             {"CorruptTiffError"}, ("page 0", "segment")),
        # not fused: its work tiles exist, so one can be damaged between split and process
        Case("process_fails", job(good_rgb, "process_fails", ops=blur, fuse=False, **small),
             {"CorruptTiffError"}),
    ]
    # libtiff's files (in the repository: one missing fails its job with InputNotFoundError)
    for name in ("test_ifd_loop_to_self", "test_ifd_loop_to_first", "test_ifd_loop_subifd"):
        cases.append(Case(name, job(CORPUS / f"{name}.tif", name), TIFF_ERRORS | {"ok"}))
    return cases


def _damaging_progress(target: int, corrupted: list[str]) -> type[pipeline.ui.RunProgress]:
    """The CLI's progress listener, plus: after job ``target``'s split wrote the work tile
    BROKEN_TILE of page 0, overwrite it with garbage. The listener runs inside the split task,
    before the Process map starts, so exactly one process batch (in the middle) fails."""

    damage_lock = threading.Lock()  # the engine's Map threads call listeners concurrently

    class DamagingProgress(pipeline.ui.RunProgress):
        def __call__(self, function: str, event: dict[str, Any], ok: bool,
                     payload: dict[str, Any]) -> None:
            if event.get("action") == "split" and ok and payload.get("job") == target:
                row, col = BROKEN_TILE
                tile = Path(event["plan"]).parent / "tiles" / "0000" / f"{row:05d}_{col:05d}.tpw"
                with damage_lock:
                    if tile.exists() and str(tile) not in corrupted:
                        tile.write_bytes(b"garbage, not a work tile" * 10)
                        corrupted.append(str(tile))
            super().__call__(function, event, ok, payload)

    return DamagingProgress


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("bad_input")
    cases = _build(root)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"jobs": [c.job for c in cases]}, indent=1))
    index = {c.name: i for i, c in enumerate(cases)}
    report_path = root / "reports" / "run.json"
    corrupted: list[str] = []
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.ui, "RunProgress",
                   _damaging_progress(index["process_fails"], corrupted))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["run", str(manifest), "--workers", "2",
                             "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    return Run(root, code, out.getvalue(), err.getvalue(), report,
               {c.name: c for c in cases}, index, corrupted)


_pages = read_pages


def _describe(job: dict[str, Any]) -> str:
    return json.dumps(job, indent=1)


# --- the run as a whole -------------------------------------------------------------------


def test_exit_code_and_report_counts(run: Run):
    assert run.code == 1, run.err
    assert len(run.report["jobs"]) == len(run.cases)
    assert [j["job"] for j in run.report["jobs"]] == list(range(len(run.cases)))
    ok = sum(j["status"] == "SUCCEEDED" for j in run.report["jobs"])
    assert (run.report["succeeded"], run.report["failed"]) == (ok, len(run.cases) - ok)
    # every case but the good ones and those allowed to succeed (the IFD loops) fails
    must_fail = [n for n, c in run.cases.items() if c.errors and "ok" not in c.errors]
    assert run.report["failed"] >= len(must_fail)
    assert all(run.job(n)["status"] == "FAILED" for n in must_fail)
    for name, case in run.cases.items():
        assert run.job(name)["input"] == case.job["input"], name
        assert run.job(name)["output"] == case.job["output"], name
    assert f"report: {run.root / 'reports' / 'run.json'}" in run.out


@pytest.mark.parametrize("name", ["good_rgb", "good_gray16"])
def test_good_jobs_succeed_with_exact_pixels(run: Run, name: str):
    job = run.job(name)
    assert job["status"] == "SUCCEEDED", _describe(job)
    assert "error" not in job
    want = [cv2.GaussianBlur(page, (0, 0), SIGMA) for page in _pages(job["input"])]
    got = _pages(job["output"])
    assert len(got) == len(want) == job["pages"]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, i)
        assert np.array_equal(g, w), f"{name} page {i}: max diff {np.abs(g.astype(int) - w).max()}"
    assert job["output_bytes"] == os.path.getsize(job["output"])
    for key in ("started_at", "finished_at", "seconds"):
        assert isinstance(job[key], (int, float)), key


FAILING = [
    "not_a_tiff", "empty", "truncated_data", "truncated_ifd", "truncated_header",
    "truncated_at_ifd", "missing", "unwritable", "no_such_page", "median7_uint16",
    "bad_last_strip", "process_fails", "input_is_folder", "output_is_input", "input_is_fifo",
    "input_is_device",
]


def _check_failed(run: Run, name: str) -> None:
    case, job = run.cases[name], run.job(name)
    assert job["status"] == "FAILED", _describe(job)
    assert job["error"]["type"] in case.errors, _describe(job)
    message = job["error"]["message"]
    named = case.job["output"] if name == "unwritable" else case.job["input"]
    if name != "process_fails":  # its message names the damaged work tile instead
        assert named in message, _describe(job)
    for word in case.mentions:
        assert word in message, (word, _describe(job))
    if name == "output_is_input":  # the output is the input: there, unchanged
        output = Path(case.job["output"])
        assert output.read_bytes() == output.with_suffix(".copy").read_bytes()
    else:
        assert not os.path.exists(case.job["output"]), "a failed job left an output"
    for key in ("started_at", "finished_at", "seconds"):
        assert isinstance(job[key], (int, float)), key


@pytest.mark.parametrize("name", FAILING)
def test_broken_job_fails_with_its_named_error(run: Run, name: str):
    _check_failed(run, name)


@pytest.mark.parametrize("name", ["test_ifd_loop_to_self", "test_ifd_loop_to_first",
                                  "test_ifd_loop_subifd"])
def test_ifd_loop_terminates_with_pixels_or_a_named_error(run: Run, name: str):
    job = run.job(name)
    if job["status"] == "FAILED":
        assert job["error"]["type"] in TIFF_ERRORS, _describe(job)
        assert job["input"] in job["error"]["message"]
        assert not os.path.exists(job["output"])
        return
    assert job["status"] == "SUCCEEDED", _describe(job)
    want, got = _pages(job["input"]), _pages(job["output"])
    assert len(got) == len(want) == job["pages"]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_a_failing_batch_fails_the_job_with_its_own_error(run: Run):
    """Batch 2 of page 0 (tile 2,3) fails in process; moto swallows failed Distributed Map
    items, so only the recorded error can name the cause: not a Map/States error."""
    assert len(run.corrupted) == 1, "the work tile was not damaged: the test proves nothing"
    job = run.job("process_fails")
    assert job["error"]["type"] == "CorruptTiffError", _describe(job)
    assert "00002_00003.tpw" in job["error"]["message"]
    assert "work tile" in job["error"]["message"]
    assert not os.path.exists(job["output"])


def test_the_good_jobs_are_not_hurt_by_the_bad_ones(run: Run):
    assert {n for n in run.cases if run.job(n)["status"] == "SUCCEEDED"} >= {
        "good_rgb", "good_gray16"}


def test_no_partial_outputs_and_no_temp_files(run: Run):
    leftovers = [p for p in run.root.rglob("*")
                 if ".tiffpipe-" in p.name or p.name.endswith(".tmp")]
    assert leftovers == []
    outputs = {p.name for p in (run.root / "out").iterdir()}
    succeeded = {Path(j["output"]).name for j in run.report["jobs"] if j["status"] == "SUCCEEDED"}
    assert outputs == succeeded


def test_work_folder_is_removed(run: Run):
    assert not (run.root / ".tiffpipe-work").exists()
    assert [p for p in run.root.rglob("*.tpw")] == []


def test_summary_and_progress(run: Run):
    assert "SUCCEEDED" in run.out and "FAILED" in run.out
    assert "NotATiffError" in run.out
    assert f"job {run.index['good_rgb']} (rgb_tiled_zstd.tif): planned" in run.err
    assert f"job {run.index['not_a_tiff']}: FAILED (NotATiffError)" in run.err
    assert "Traceback" not in run.err


# --- invalid manifests --------------------------------------------------------------------


BAD_MANIFEST = {
    "extra": 1,
    "defaults": {"output_options": {"compression": "bogus"}},
    "jobs": [
        {"output": "out/a.tif"},
        {"input": "in/b.tif", "output": "out/b.png", "tile": 100},
        {"input": "in/c.tif", "output": "out/c.tif", "ops": [{"op": "blurr"}],
         "pages": [0, 0]},
        {"input": "in/d.tif", "output": "out/d.tif",
         "ops": [{"op": "gaussian_blur", "sigma": -1}]},
    ],
}
BAD_PATHS = ["extra", "defaults.output_options.compression", "jobs[0].input", "jobs[1].output",
             "jobs[1].tile", "jobs[2].ops[0].op", "jobs[2].pages[1]", "jobs[3].ops[0].sigma"]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_invalid_manifest_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              command: str):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(BAD_MANIFEST))
    args = [command, str(manifest)] + (["--workers", "2"] if command == "run" else [])
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(manifest) in err
    for path in BAD_PATHS:
        assert f"  {path}: " in err, (path, err)
    assert f"{len(BAD_PATHS)} problem(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no output, work, report


def test_invalid_json_names_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture):
    manifest = tmp_path / "m.json"
    manifest.write_text('{"jobs": [\n  {"input": "a.tif",}\n]}')
    assert cli.main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "column" in err and str(manifest) in err


@pytest.mark.parametrize("command", ["run", "validate"])
def test_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture, command: str):
    manifest = tmp_path / "nowhere" / "m.json"
    assert cli.main([command, str(manifest)]) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and "does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "nowhere").exists()


# --- a worker that dies ---------------------------------------------------------------------


def test_worker_crash_is_reported_and_the_pool_is_rebuilt(tmp_path: Path):
    """A worker killed while it runs a task becomes WorkerCrashedError, and later tasks run on
    a rebuilt pool. The task blocks on a FIFO (a plan.json nobody writes) so the kill lands
    mid-task; no hook into the (spawned) worker is needed."""
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"run_id": "r", "manifest": "m", "work": str(tmp_path),
                                    "report": str(tmp_path / "report.json"),
                                    "started_at": time.time(), "jobs": []}))
    pool = WorkerPool(1)
    try:
        ok, payload = pool.invoke("merge", {"action": "report", "run": str(run_file)})
        assert ok, payload
        assert payload["succeeded"] == payload["failed"] == 0
        [pid] = pool.peaks_kb
        ok, payload = pool.invoke("split", {"action": "no_such_action"})
        assert not ok and payload["errorType"] == "EventError"  # an exception is no crash

        result: list[tuple[bool, dict[str, Any]]] = []
        blocked = threading.Thread(target=lambda: result.append(
            pool.invoke("process", {"action": "process", "plan": str(fifo), "batch": 0})))
        blocked.start()
        time.sleep(1.0)  # the worker is now blocked opening the FIFO
        assert not result, result
        os.kill(pid, signal.SIGKILL)
        blocked.join(30)
        assert not blocked.is_alive()
        [(ok, payload)] = result
        assert not ok
        assert payload["errorType"] == "WorkerCrashedError"
        assert "process.process" in payload["errorMessage"]

        ok, payload = pool.invoke("merge", {"action": "report", "run": str(run_file)})
        assert ok, payload  # the pool was rebuilt
        assert set(pool.peaks_kb) - {pid}, "the task ran on the dead worker?"
    finally:
        with contextlib.suppress(OSError):  # if the kill did not happen, unblock the worker
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pool.close()


def test_a_run_of_a_looping_chain_says_the_pages_after_it_are_not_read(tmp_path: Path):
    """A 3-page file whose first page points back to itself is 1 page, as libtiff reads
    it; the run said nothing of it, even without --quiet. The job's message and the notice
    ``tiffpipe run`` prints say that the chain loops and the pages after it are not read."""
    import pipeline

    path = tmp_path / "loop.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(np.full((64, 64), k * 50, np.uint8), compression="zstd", metadata=None)
    with tifffile.TiffFile(path) as tf:
        first = int(tf.pages[0].offset)
    raw = bytearray(path.read_bytes())
    at = first + 2 + int.from_bytes(raw[first:first + 2], "little") * 12
    raw[at:at + 4] = first.to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    result = pipeline.run({"jobs": [{"input": "loop.tif", "output": "out/loop.tif"}]},
                          workers=1, base=tmp_path)
    assert result.ok, result.jobs
    (job,) = result.jobs
    said = ("the chain of pages (IFDs) loops: page 0's pointer to the next page leads back "
            "to page 0, so page 0 is read and any pages the file has after it are not")
    assert job["pages"] == 1
    assert said in job["message"] and said in job["notice"]
