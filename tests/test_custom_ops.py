"""User operations: ``{"op": "custom", "function": "package.module:function", "halo": h,
"params": {...}}``, on the real tiled path (in-process and on the embedded engine): exact
when the function honours its halo; malformed specs refused with the manifest, functions that
cannot be imported refused at plan time, wrong tiles refused at process time, each with
CustomOperationError naming the function."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_exactness import assert_identical, make_image, read_page, run_tiled, write_tiff

from pipeline import cli
from pipeline.adapters import storage
from pipeline.core import custom
from pipeline.core.events import JobEvent
from pipeline.core.manifest import parse_manifest
from pipeline.core.models import JobSpec, OutputOptions
from pipeline.errors import CustomOperationError, ManifestError
from pipeline.steps import layout, planning
from pipeline.steps import stats as stats_step

pytestmark = pytest.mark.timeout(300)

MODULE = "tiffpipe_test_userops"
SOURCE = '''
import cv2
import numpy as np

def box(tile, ksize=3):
    """A box filter: its output depends on pixels within ksize // 2."""
    return cv2.blur(tile, (ksize, ksize))

def box_then_scale(tile, ksize, gain=1.0):
    out = cv2.blur(tile, (ksize, ksize))
    return np.clip(out.astype(np.float64) * gain, 0, np.iinfo(tile.dtype).max).astype(tile.dtype)

def in_place(tile):
    tile[...] = 255 - tile  # may write the tile it gets
    return tile

def swapped(tile):
    """The right values in the other byte order (``>u2`` for a ``<u2`` tile)."""
    return (65535 - tile).astype(tile.dtype.newbyteorder("S"))

def crop(tile):
    return tile[1:-1, 1:-1]

def swapped_crop(tile):
    return swapped(tile)[1:-1, 1:-1]

def to_float(tile):
    return tile.astype(np.float32)

def not_an_array(tile):
    return tile.tolist()

def fails(tile, why="no reason"):
    raise ValueError(why)

def exits(tile):
    import sys
    sys.exit(2)

def says_much(tile):
    raise RuntimeError("x" * 10_000_000)

def interrupts(tile):
    raise KeyboardInterrupt

def hungry(tile):
    raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (131072, 524288)")

def tile_threads_seen(tile, path=""):
    """Writes the tile threads its worker works with to ``path``."""
    from pipeline.steps.common import tile_threads
    with open(path, "w") as f:
        f.write(str(tile_threads()))
    return tile
'''
#: a module that runs a script when imported (argparse's exit on missing arguments)
SCRIPT = "import sys\nsys.exit(2)\n\ndef fn(tile):\n    return tile\n"


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory: pytest.TempPathFactory):
    """An importable user module (worker processes get the parent's sys.path)."""
    folder = tmp_path_factory.mktemp("userops")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    (folder / "script_on_import.py").write_text(SCRIPT)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)
    sys.modules.pop("script_on_import", None)
    custom.load.cache_clear()


def _op(name: str, halo: int = 0, **params) -> dict:
    return {"op": "custom", "function": f"{MODULE}:{name}", "halo": halo, "params": params}


@pytest.mark.parametrize("ops,dtype,channels,ref", [
    ([_op("box", 1)], "uint8", 3, lambda p: cv2.blur(p, (3, 3))),
    ([_op("box", 3, ksize=7)], "uint16", 1, lambda p: cv2.blur(p, (7, 7))),
    ([_op("box_then_scale", 2, ksize=5, gain=1.5), {"op": "equalize_hist"}], "uint8", 1,
     lambda p: cv2.equalizeHist(np.clip(cv2.blur(p, (5, 5)).astype(np.float64) * 1.5, 0, 255)
                                .astype(np.uint8))),
    ([{"op": "gaussian_blur", "sigma": 2}, _op("in_place")], "uint8", 1,
     lambda p: 255 - cv2.GaussianBlur(p, (0, 0), 2)),
    # the values right, the byte order not the tile's: accepted, made native
    ([_op("swapped")], "uint16", 1, lambda p: 65535 - p),
])
def test_custom_op_is_exact_with_its_halo(tmp_path, ops, dtype, channels, ref):
    page = make_image(70, 257, 389, channels, dtype)
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=False, rowsperstrip=16)
    (got,), plan = run_tiled(tmp_path, src, ops, 64, 32, units="small", tiles_per_batch=3)
    assert plan.tiles > 1
    assert_identical(got, ref(page))


def test_too_small_a_halo_is_not_exact(tmp_path):
    """The halo is the user's promise: a box of 9 with halo 0 differs at tile borders."""
    page = make_image(71, 257, 389, 1, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True)
    (got,), plan = run_tiled(tmp_path, src, [_op("box", 0, ksize=9)], 64, 64)
    assert plan.halo == 0
    assert not np.array_equal(got, cv2.blur(page, (9, 9)))


@pytest.mark.parametrize("name,message", [
    ("crop", ("returned an array of shape (78, 78) and dtype uint8 for a tile of shape (80, 80) "
             "and dtype uint8; it must return the same shape and dtype")),
    ("to_float", ("returned an array of shape (80, 80) and dtype float32 for a tile of shape "
                 "(80, 80) and dtype uint8")),
    ("not_an_array", "returned list, expected a numpy array of shape (80, 80) and dtype uint8"),
    ("fails", "raised ValueError: no reason (on a (80, 80) uint8 tile)"),
    ("exits", "raised SystemExit: 2 (on a (80, 80) uint8 tile)"),  # sys.exit() is its error
    ("interrupts", "raised KeyboardInterrupt (on a (80, 80) uint8 tile)"),  # its own raise
    ("says_much", "characters cut]"),  # 10 MB of message: a report line, not 10 MB
])
def test_wrong_tiles_are_named_errors(tmp_path, name, message):
    page = make_image(72, 100, 90, 1, "uint8")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True)
    with pytest.raises(CustomOperationError) as info:
        run_tiled(tmp_path, src, [_op(name, 4)], 64, 64)
    text = str(info.value)
    assert text.startswith(f"{src}: tile 0,0 of page 0: custom op {MODULE}:{name} "), text
    assert message in text and len(text) < 1200 + len(str(src))


def test_a_byte_swapped_tile_of_the_wrong_shape_is_refused_as_returned(tmp_path):
    """A byte-swapped array (``>u2`` for a uint16 tile) is made native, but it was made so
    before its shape was checked: an array then refused was copied, and the message named
    the copy's dtype, not the one returned. The shape is checked first now."""
    page = make_image(73, 100, 90, 1, "uint16")
    src = tmp_path / "in.tif"
    write_tiff(src, [page], tiled=True)
    with pytest.raises(CustomOperationError, match=re.escape(
            f"custom op {MODULE}:swapped_crop returned an array of shape (78, 78) and dtype "
            ">u2 for a tile of shape (80, 80) and dtype uint16")):
        run_tiled(tmp_path, src, [_op("swapped_crop", 4)], 64, 64)


def test_malformed_specs_are_refused_with_the_manifest():
    jobs = [{"input": "a.tif", "output": f"o{i}.tif", "ops": [op]} for i, op in enumerate([
        {"op": "custom", "function": "nocolon"},
        {"op": "custom", "function": "pkg.mod:fn", "params": [1, 2]},
        {"op": "custom", "function": "pkg.mod:fn", "halo": -1},
        {"op": "custom"},
        {"op": "custom", "function": "pkg..mod:fn", "extra": 1},
    ])]
    with pytest.raises(ManifestError) as info:
        parse_manifest({"jobs": jobs}, "m.json", "/data")
    assert info.value.problems == [
        "jobs[0].ops[0].function: expected \"package.module:function\", got 'nocolon'",
        "jobs[1].ops[0].params: expected an object, got [1, 2]",
        "jobs[2].ops[0].halo: expected an integer >= 0 and <= 4096, got -1",
        "jobs[3].ops[0].function: required, a string",
        "jobs[4].ops[0].extra: unknown field (allowed: function, halo, params)",
        "jobs[4].ops[0].function: expected \"package.module:function\", got 'pkg..mod:fn'",
    ]
    ok = parse_manifest({"jobs": [{"input": "a.tif", "output": "o.tif", "ops": [
        {"op": "custom", "function": "pkg.mod:fn", "halo": 8, "params": {"k": [1]}}]}]},
        "m.json", "/data")
    assert ok[0].ops[0]["params"] == {"k": [1]}


@pytest.mark.parametrize("function,message,hint", [
    ("no_such_module_xyz:fn", ("custom op no_such_module_xyz:fn: cannot import module "
                              "'no_such_module_xyz' (ModuleNotFoundError"),
     "it must be importable in every worker (installed, or on PYTHONPATH)"),
    ("script_on_import:fn", ("custom op script_on_import:fn: cannot import module "
                            "'script_on_import' (SystemExit: 2)"),
     "it must be importable in every worker (installed, or on PYTHONPATH)"),
    # the module imports: no advice about importing it
    (f"{MODULE}:nope", f"custom op {MODULE}:nope: module '{MODULE}' has no function 'nope'",
     None),
])
def test_plan_job_refuses_a_function_it_cannot_import(tmp_path, function, message, hint):
    src = tmp_path / "in.tif"
    write_tiff(src, [make_image(73, 100, 90, 1, "uint8")], tiled=True)
    spec = JobSpec(input=str(src), output=str(tmp_path / "out.tif"),
                   ops=[{"op": "custom", "function": function, "halo": 0, "params": {}}],
                   output_options=OutputOptions())
    work = str(tmp_path / "work")
    run = planning.write_run(work, [spec], "r", "m", "r.json")
    with pytest.raises(CustomOperationError) as info:
        stats_step.plan_job(JobEvent(run=run, job=0))
    text = str(info.value)
    assert message in text
    if hint is None:
        assert "importable" not in text, text
    else:
        assert hint in text, text
    assert not storage.exists(layout.plan_file(layout.job_dir(work, 0)))  # no work done


def test_a_function_lambda_cannot_import_says_how_to_install_it(monkeypatch):
    """In a Lambda function the advice was "importable in every worker (installed, or on
    PYTHONPATH)": a Lambda user has neither to change. It says to deploy with the user's
    packages in the process image instead."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "tiffpipe-prod-process")
    custom.load.cache_clear()
    with pytest.raises(CustomOperationError) as info:
        custom.load("no_such_module_xyz:fn")
    text = str(info.value)
    assert "cannot import module 'no_such_module_xyz'" in text
    assert "in the Lambda function tiffpipe-prod-process" in text, text
    assert "deploy.py --requirements FILE or --package PATH" in text, text
    assert "PYTHONPATH" not in text and "worker" not in text


def test_a_local_run_that_inherits_lambdas_environment_keeps_the_local_advice(
        tmp_path, monkeypatch):
    """A local run whose environment holds AWS_LAMBDA_FUNCTION_NAME (tiffpipe run started
    inside a Lambda function of one's own, or from a shell that exported it) told a job
    whose custom op could not be imported "in the Lambda function ...: deploy with your
    package, deploy.py --package": advice for tiffpipe's process function, which this run
    never used. A local run (its run tag set for its process and its workers) gives the
    local advice, in its workers and its own process."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "someone-elses-function")
    page = make_image(75, 64, 64, 1, "uint8")
    write_tiff(tmp_path / "in.tif", [page], tiled=True, tile=(32, 32))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "out/missing.tif",
         "ops": [{"op": "custom", "function": "no_such_module_xyz:fn"}]}]}))
    for workers in ("1", "2"):
        custom.load.cache_clear()
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", workers,
                         "--quiet"]) == 1
        report = json.loads((tmp_path / "m.report.json").read_text())
        message = report["jobs"][0]["error"]["message"]
        assert "cannot import module 'no_such_module_xyz'" in message, message
        assert custom.IMPORT_HINT in message, message
        assert "Lambda function" not in message and "deploy.py" not in message, message


def test_custom_ops_on_the_embedded_engine(tmp_path):
    page = make_image(74, 300, 420, 3, "uint8")
    write_tiff(tmp_path / "in.tif", [page], tiled=True, tile=(64, 64))
    manifest = {"defaults": {"tile": 64, "output_options": {"tile": 32}}, "jobs": [
        {"input": "in.tif", "output": "out/box.tif", "ops": [_op("box", 2, ksize=5)]},
        {"input": "in.tif", "output": "out/missing.tif",
         "ops": [{"op": "custom", "function": "no_such_module_xyz:fn"}]},
        {"input": "in.tif", "output": "out/crop.tif", "ops": [_op("crop")]},
    ]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "2", "--quiet"]) == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    box, missing, crop = report["jobs"]
    assert box["status"] == "SUCCEEDED"
    assert_identical(read_page(tmp_path / "out" / "box.tif", 0), cv2.blur(page, (5, 5)))
    assert missing["status"] == "FAILED"
    assert missing["error"]["type"] == "CustomOperationError"
    assert "cannot import module 'no_such_module_xyz'" in missing["error"]["message"]
    assert crop["status"] == "FAILED" and crop["error"]["type"] == "CustomOperationError"
    assert f"custom op {MODULE}:crop returned an array of shape" in crop["error"]["message"]
    assert not (tmp_path / "out" / "missing.tif").exists()
    assert not (tmp_path / "out" / "crop.tif").exists()


def test_a_custom_op_out_of_memory_is_told_so_not_as_broken_code(tmp_path):
    """A user function that raises MemoryError (it allocates too much for its tile) failed
    its job as ``CustomOperationError: ... raised MemoryError``, as if the user's code were
    broken, with no advice. It is OutOfMemoryError, as a built-in op's, naming the custom
    op, the input, the tile and page, and what to do (a smaller "tile", fewer --workers);
    its job fails alone, publishing nothing, and another function's error is still a
    CustomOperationError."""
    page = make_image(76, 300, 420, 1, "uint8")
    write_tiff(tmp_path / "in.tif", [page], tiled=True, tile=(64, 64))
    manifest = {"defaults": {"tile": 64, "output_options": {"tile": 32}}, "jobs": [
        {"input": "in.tif", "output": "out/box.tif", "ops": [_op("box", 2, ksize=5)]},
        {"input": "in.tif", "output": "out/hungry.tif",
         "ops": [{"op": "invert"}, _op("hungry", 4)]},
        {"input": "in.tif", "output": "out/fails.tif", "ops": [_op("fails")]},
    ]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "2", "--quiet"]) == 1
    box, hungry, fails = json.loads((tmp_path / "m.report.json").read_text())["jobs"]
    assert box["status"] == "SUCCEEDED"
    assert_identical(read_page(tmp_path / "out" / "box.tif", 0), cv2.blur(page, (5, 5)))
    assert hungry["status"] == "FAILED"
    assert hungry["error"]["type"] == "OutOfMemoryError", hungry["error"]
    message = hungry["error"]["message"]
    assert message.startswith(f"{tmp_path / 'in.tif'}: tile "), message
    assert " of page 0: custom op tiffpipe_test_userops:hungry on a (" in message, message
    assert ("uint8 tile: out of memory (MemoryError: Unable to allocate 64.0 GiB"
            in message), message
    assert 'give the job a smaller "tile" in the manifest' in message, message
    assert "run with fewer --workers" in message, message
    assert "CustomOperationError" not in message and "raised" not in message, message
    assert hungry["error"]["fault"] == "platform"  # not the input's: a smaller tile runs
    assert fails["status"] == "FAILED" and fails["error"]["type"] == "CustomOperationError"
    assert "raised ValueError: no reason" in fails["error"]["message"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["box.tif"]


def test_a_multi_line_error_is_one_line_in_the_summary_and_whole_in_the_report(tmp_path):
    """A job's error of several lines (here a user function's: the JSON error of a config
    it read, with the excerpt and the caret under its column, as json_problem says it) was
    printed as it is into the summary's row and the failed job's line, breaking both over
    lines (the caret under nothing). The report keeps it whole; the summary's row and
    --quiet's line say it on one line, the caret dropped."""
    import contextlib
    import io

    from pipeline.core.manifest import json_problem

    page = make_image(77, 120, 100, 1, "uint8")
    write_tiff(tmp_path / "in.tif", [page], tiled=True, tile=(64, 64))
    config = '{"gain": 2,}'
    try:
        json.loads(config)
    except json.JSONDecodeError as exc:
        why = f"config.json: {json_problem(config, exc)}"
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "out/a.tif", "tile": 512,
         "ops": [_op("fails", why=why)]}]}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1",
                         "--no-contact-sheet"]) == 1
    (job,) = json.loads((tmp_path / "m.report.json").read_text())["jobs"]
    assert "config.json: line 1, column 12: invalid JSON: " in job["error"]["message"]
    assert '\n    {"gain": 2,}\n               ^' in job["error"]["message"]  # whole
    one = ("config.json: line 1, column 12: invalid JSON: Expecting property name enclosed "
           "in double quotes; a trailing comma (line 1, column 11) before }: remove it, JSON "
           'takes no comma after the last item | {"gain": 2,}')
    rows = [line for line in out.getvalue().splitlines() if " FAILED " in line]
    assert len(rows) == 1 and one in rows[0], out.getvalue()
    assert "^" not in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                         "--no-contact-sheet"]) == 1
    failed = [line for line in err.getvalue().splitlines() if "FAILED" in line]
    assert len(failed) == 1 and one in failed[0], err.getvalue()
    assert "^" not in err.getvalue()


def test_a_tile_threads_value_that_is_no_number_gives_the_workers_their_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """TIFFPIPE_TILE_THREADS=abc (a typo in a cron job's environment): the engine gave its
    workers the value as it was, and each read it as unset, so worked with every core of
    the machine, not twice its share. A value that is no number is as unset: the engine
    gives each worker its share (the run warns of it: tests/test_batch_runs.py)."""
    from pipeline.engine.workers import worker_tile_threads
    from pipeline.steps.common import usable_cores

    monkeypatch.setenv("TIFFPIPE_TILE_THREADS", "abc")
    write_tiff(tmp_path / "in.tif", [make_image(3, 64, 64, 1, "uint8")], tiled=False)
    seen = tmp_path / "threads.txt"
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": "out/a.tif",
         "ops": [_op("tile_threads_seen", path=str(seen))]}]}))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "4", "--quiet",
                     "--no-contact-sheet"]) == 0
    assert worker_tile_threads(4) < usable_cores()  # (a share: less than every core)
    assert int(seen.read_text()) == worker_tile_threads(4)
