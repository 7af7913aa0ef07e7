"""Names that several parts must agree on have one home, pipeline/core/constants.py: the
functions (handlers, images, placeholders, the engine, deploy) and the environment variables."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from pipeline import handlers
from pipeline.core import constants
from pipeline.engine import definition

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "pipeline" / "core" / "constants.py"


def _literals(path: Path) -> list[tuple[int, object]]:
    """String and tuple literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)}
    out: list[tuple[int, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
            values = tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
            out.append((node.lineno, values))
    return out


def test_every_function_has_a_handler_table_an_image_and_a_placeholder():
    assert tuple(handlers.FUNCTIONS) == constants.FUNCTIONS
    for function in constants.FUNCTIONS:
        assert (ROOT / "images" / function / "Dockerfile").is_file()
        assert set(constants.FUNCTION_SIZES) == set(constants.FUNCTIONS)
    text = (ROOT / "statemachine.asl.json").read_text()
    json.loads(text)
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used == {constants.placeholder(f) for f in constants.FUNCTIONS} == \
        set(definition.PLACEHOLDERS)


def test_function_names_and_env_variables_are_spelled_only_in_their_home():
    """No module of pipeline/ spells the function list or a TIFFPIPE_ variable itself."""
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path == HOME:
            continue
        for line, value in _literals(path):
            if value == constants.FUNCTIONS or (isinstance(value, str)
                                                and re.search(r"\bTIFFPIPE_[A-Z_]+", value)):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not found, "use pipeline/core/constants.py:\n" + "\n".join(found)


def test_the_home_itself_is_found_by_the_check():
    assert (constants.TILE_THREADS_ENV in {v for _, v in _literals(HOME)}
            and constants.FUNCTIONS in {v for _, v in _literals(HOME)})


def test_the_estimate_costs_each_action_on_the_function_that_runs_it():
    from pipeline.estimate import FUNCTION_OF

    for function, actions in handlers.FUNCTIONS.items():
        for action in actions:
            if action in FUNCTION_OF:
                assert FUNCTION_OF[action] == function, action
    assert {FUNCTION_OF[f"cold_{f}"] for f in constants.FUNCTIONS} == set(constants.FUNCTIONS)


def test_no_function_writes_a_local_file_on_s3(tmp_path, monkeypatch):
    """FUNCTION_SIZES gave split 4096 MB of /tmp ("it holds a band's segment cache in
    /tmp"): billed above 512 MB for every split invocation, for nothing. On S3 the
    functions' actions (split's plan_run and split, process's plan_job, process and
    process_unit, merge's merge and report) open no local file for writing, by any Python
    call (open, os.open, tempfile): the segment cache is in memory
    (tiff_read.BandReader.cache), work tiles and segments go to S3. So split gets Lambda's
    minimum, as merge does."""
    import builtins
    import os
    import tempfile

    import numpy as np
    import tifffile
    from conftest import moto_s3

    pages = [np.random.default_rng(1).integers(0, 255, (700, 600, 3), dtype=np.uint8),
             np.random.default_rng(2).integers(0, 65535, (520, 450), dtype=np.uint16)]
    with tifffile.TiffWriter(tmp_path / "in.tif") as tw:
        tw.write(pages[0], tile=(128, 128), compression="zlib", photometric="rgb")
        tw.write(pages[1], rowsperstrip=64, compression="lzw", photometric="minisblack")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    written: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def watched_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(str(mode)) & set("wax+"):
            written.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def watched_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            written.append(str(path))
        return real_os_open(path, flags, *args, **kwargs)

    def job(n: int, fuse: bool) -> dict[str, object]:
        return {"input": "s3://sizes/in/in.tif", "output": f"s3://sizes/out/{n}.tif",
                "tile": 128, "fuse": fuse, "output_options": {"tile": 64},
                "ops": [{"op": "gaussian_blur", "sigma": 2}]}

    with moto_s3(monkeypatch, "sizes") as s3:
        s3.upload_file(str(tmp_path / "in.tif"), "sizes", "in/in.tif")
        s3.put_object(Bucket="sizes", Key="m.json",
                      Body=json.dumps({"jobs": [job(0, False), job(1, True)]}))
        monkeypatch.setattr(builtins, "open", watched_open)
        monkeypatch.setattr(os, "open", watched_os_open)
        split, process, merge = (handlers.split_handler, handlers.process_handler,
                                 handlers.merge_handler)
        run = split({"action": "plan_run", "manifest": "s3://sizes/m.json",
                     "work": "s3://sizes/work/", "run_id": "r1"})
        for n, fused in enumerate((False, True)):
            planned = process({"action": "plan_job", "run": run["run"], "job": n})
            assert planned["fused"] == fused and len(planned["units"]) >= 2, planned
            for unit in planned["units"]:
                action = "process_unit" if fused else "split"
                (process if fused else split)({"action": action, "plan": planned["plan"],
                                               "unit": unit})
            for batch in planned["batches"]:
                process({"action": "process", "plan": planned["plan"], "batch": batch})
            merge({"action": "merge", "plan": planned["plan"]})
        counts = merge({"action": "report", "run": run["run"]})
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(os, "open", real_os_open)
        outputs = s3.list_objects_v2(Bucket="sizes", Prefix="out/")["KeyCount"]
    assert (counts["succeeded"], outputs) == (2, 2)
    assert written == [] and list(temp.iterdir()) == [], written
    assert constants.FUNCTION_SIZES["split"].ephemeral == 512


def test_a_tiffpipe_variable_that_is_not_one_or_gives_no_value_it_takes_is_named():
    """TIFFPIPE_TILE_THREADS=abc (or 0, or -3), TIFFPIPE_THUMBNAILS=abc and a name tiffpipe
    does not read (TIFFPIPE_WORKERS) were ignored without a word: each is a line naming the
    variable and what it takes (or the closest of the user's variables); a run's own and
    the tests' are not the user's to set, and are not named; a value it takes is not."""
    from pipeline.core.constants import env_int, env_problems

    assert env_problems({
        "TIFFPIPE_TILE_THREADS": "abc", "TIFFPIPE_THUMBNAILS": "abc", "TIFFPIPE_WORKERS": "2",
        "TIFFPIPE_TILE_THRADS": "4", "TIFFPIPE_KEEP_SEGMENTS": "yes",
        "TIFFPIPE_RUN_TAG": "../../evil", "TIFFPIPE_WORK": "/x", "TIFFPIPE_CALLER": "python",
        "TIFFPIPE_REQUIRE_DOCKER": "1", "TIFFPIPE_CANNY_REDUCE_SIDES": "16", "HOME": "/"}) == [
        ("TIFFPIPE_KEEP_SEGMENTS='yes': it takes 1 (on) or 0 (off); taken as off (anything "
         "but 1 is)"),
        ("TIFFPIPE_THUMBNAILS='abc': it takes a thumbnail box in pixels, a whole number (0: "
         "none); ignored, the default used (unset it, or give such a number)"),
        ("TIFFPIPE_TILE_THRADS is not one of tiffpipe's variables: ignored; did you mean "
         "TIFFPIPE_TILE_THREADS?"),
        ("TIFFPIPE_TILE_THREADS='abc': it takes a whole number of tile threads, 1 or more; "
         "ignored, the default used (unset it, or give such a number)"),
        ("TIFFPIPE_WORKERS is not one of tiffpipe's variables: ignored; tiffpipe's are "
         "TIFFPIPE_KEEP_SEGMENTS, TIFFPIPE_SSE, TIFFPIPE_SSE_KMS_KEY_ID, "
         "TIFFPIPE_TILE_THREADS, TIFFPIPE_THUMBNAILS, TIFFPIPE_CANNY_REDUCE_SIDES "
         "(docs/code-layout.md); a run's other settings are its options (tiffpipe run "
         "--help)")]
    for value in ("0", "-3", "1.5", " "):
        assert env_int("TIFFPIPE_TILE_THREADS", {"TIFFPIPE_TILE_THREADS": value}) is None
        said = (f"TIFFPIPE_TILE_THREADS={value!r}: it takes a whole number of tile threads, "
                "1 or more; ignored, the default used (unset it, or give such a number)")
        assert env_problems({"TIFFPIPE_TILE_THREADS": value}) == ([] if value == " " else [said])
    assert env_int("TIFFPIPE_TILE_THREADS", {"TIFFPIPE_TILE_THREADS": "3"}) == 3
    assert env_int("TIFFPIPE_THUMBNAILS", {"TIFFPIPE_THUMBNAILS": "0"}) == 0
    assert env_int("TIFFPIPE_CANNY_REDUCE_SIDES", {"TIFFPIPE_CANNY_REDUCE_SIDES": "3"}) is None


def test_a_variable_of_digits_int_does_not_take_is_named_not_raised():
    """TIFFPIPE_TILE_THREADS=² (a superscript two: a digit to str.isdigit, which int()
    refuses) raised ValueError at the start of every run, from the check that warns of it;
    another script's digits (٣) are not a number the docs say it takes either: both are named
    as any value it does not take is, and the default used."""
    from pipeline.core.constants import env_int, env_problems

    for value in ("²", "٣", "1²"):
        assert env_int("TIFFPIPE_TILE_THREADS", {"TIFFPIPE_TILE_THREADS": value}) is None
        assert env_problems({"TIFFPIPE_TILE_THREADS": value}) == [(
            f"TIFFPIPE_TILE_THREADS={value!r}: it takes a whole number of tile threads, 1 or "
            "more; ignored, the default used (unset it, or give such a number)")]
