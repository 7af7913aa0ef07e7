"""The ``tiffpipe`` command: ops, validate, run (summary, report, progress, --quiet,
--keep-work, --work, --workers) and demo, called in-process through ``pipeline.cli.main``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from conftest import read_pages

from pipeline import cli, contact_sheet, ui
from pipeline.core.ops import OPS
from pipeline.demo import DEMO_MANIFEST, SAMPLE_PAGES
from pipeline.sample import SamplePage, write_sample
from pipeline.steps.common import read_manifest

pytestmark = pytest.mark.timeout(240)

SIGMA = 1.5
ANSI = re.compile(r"\x1b\[")


def _inputs(folder: Path) -> dict[str, Any]:
    """Two multi-page inputs and a manifest (relative paths) of two jobs over them."""
    (folder / "in").mkdir(parents=True)
    write_sample(str(folder / "in" / "rgb.tif"), [SamplePage(300, 420, 3), SamplePage(200, 150, 3)],
                 tile=128, compression="zstd")
    write_sample(str(folder / "in" / "gray.tif"),
                 [SamplePage(200, 300, 1, "uint8"), SamplePage(180, 220, 1, "uint16")],
                 tile=64, compression="deflate", seed=3)
    manifest = {
        "defaults": {"tile": 128, "output_options": {"tile": 64}},
        "jobs": [
            {"input": "in/rgb.tif", "output": "out/rgb_blur.tif",
             "ops": [{"op": "gaussian_blur", "sigma": SIGMA}]},
            {"input": "in/gray.tif", "output": "out/gray_median.tif", "pages": [1, 0],
             "ops": [{"op": "median_blur", "ksize": 5}],
             "output_options": {"compression": "deflate", "level": 4}},
        ],
    }
    (folder / "m.json").write_text(json.dumps(manifest))
    return manifest


_pages = read_pages


def _check_outputs(folder: Path) -> None:
    rgb = _pages(folder / "in" / "rgb.tif")
    got = _pages(folder / "out" / "rgb_blur.tif")
    assert len(got) == 2
    for g, page in zip(got, rgb, strict=True):
        assert np.array_equal(g, cv2.GaussianBlur(page, (0, 0), SIGMA))
    gray = _pages(folder / "in" / "gray.tif")
    got = _pages(folder / "out" / "gray_median.tif")
    assert [g.dtype.name for g in got] == ["uint16", "uint8"]  # pages [1, 0], in that order
    for g, page in zip(got, [gray[1], gray[0]], strict=True):
        assert np.array_equal(g, cv2.medianBlur(page, 5))
    with tifffile.TiffFile(folder / "out" / "gray_median.tif") as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tf.pages[0].tilewidth == 64


# --- ops and validate ---------------------------------------------------------------------


def test_ops_lists_every_op_with_params_and_halo(capsys: pytest.CaptureFixture):
    assert cli.main(["ops"]) == 0
    out = capsys.readouterr().out
    for name, op in OPS.items():
        block = out[out.index(f"{name}: {op.help}\n"):]
        lines = block.splitlines()[1:1 + 1 + len(op.params)]
        assert lines[0] == f"  halo: {op.halo_help}; {op.exact}"
        assert [line.split(":")[0].strip() for line in lines[1:]] == [p.name for p in op.params]
    assert len([line for line in out.splitlines() if not line.startswith(" ")]) == len(OPS)


def test_ops_json(capsys: pytest.CaptureFixture):
    """Every op and its parameters, under ``ops`` beside the document's ``schema``; every
    field as the docs' table of them says."""
    from doc_fields import check, table

    assert cli.main(["ops", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["schema", "ops"] and doc["schema"] == 1
    check([doc], table("manifest-and-ops.md", "Fields of ops --json"),
          "docs/manifest-and-ops.md, Fields of ops --json")
    doc = doc["ops"]
    assert list(doc) == list(OPS)
    for name, op in OPS.items():
        assert doc[name]["call"] == op.help
        assert doc[name]["halo"] == op.halo_help
        assert [p["name"] for p in doc[name]["params"]] == [p.name for p in op.params]
        for p, param in zip(doc[name]["params"], op.params, strict=True):
            assert p["required"] == param.required and p["type"] == param.kind
            assert p["accepts"] and p["help"]
    assert doc["median_blur"]["params"][0]["required"] is True
    assert doc["dilate"]["params"][1] == {
        "name": "iterations", "type": "integer", "accepts": doc["dilate"]["params"][1]["accepts"],
        "required": False, "default": 1, "help": OPS["dilate"].params[1].help}


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/", "s3://bucket/manifests/"])
def test_a_bucket_or_prefix_as_the_manifest_is_named(url: str, capsys: pytest.CaptureFixture):
    """(Refused before any request: no credentials or S3 needed.)"""
    for command in (["validate"], ["run", "--quiet"], ["estimate"]):
        assert cli.main([command[0], url, *command[1:]]) == 2, command
        err = capsys.readouterr().err
        assert "manifest: names a bucket or prefix, not an object" in err, err
        assert "Traceback" not in err


def test_preview_of_a_bucket_or_prefix_is_named(capsys: pytest.CaptureFixture):
    assert cli.main(["preview", "s3://bucket/in/", "-o", "/tmp/none.png"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tiffpipe: NotATiffError: s3://bucket/in/: names a bucket or prefix")


@pytest.mark.parametrize(("content", "problem"), [
    (b'{"jobs": [{"input": "a.tif", "output": "o/\xff.tif"}]}',
     "manifest: not UTF-8 text (byte 42 is b'\\xff'): save it as UTF-8"),
    (None, "manifest: is a folder, not a JSON file: give the path of the manifest"),
    (b"II*\x00\x08\x00\x00\x00" + bytes(200), "manifest: is a TIFF file, not a manifest"),
])
def test_a_manifest_that_is_no_json_text_is_named_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes | None, problem: str):
    """Not UTF-8 (a Latin-1 file name), or a folder given as the manifest: exit 2 with the
    manifest's problem, for validate, run and estimate alike."""
    path = tmp_path / "m.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    for command in (["validate"], ["run", "--quiet"], ["estimate"]):
        assert cli.main([command[0], str(path), *command[1:]]) == 2, command
        err = capsys.readouterr().err
        assert problem in err and "Traceback" not in err, (command, err)


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture):
    """Some editors begin UTF-8 files with a byte-order mark: skipped, as JSON readers do."""
    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    (tmp_path / "m.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(
        {"jobs": [{"input": "a.tif", "output": "o.tif"}]}).encode())
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 0
    assert "valid, 1 job(s)" in capsys.readouterr().out


def test_a_manifest_written_as_a_bare_list_of_jobs_is_validated_and_run(tmp_path: Path):
    """A manifest is a JSON list of jobs: the list alone, without {"jobs": ...}, is checked
    and run as the jobs it lists (the report's manifest still names the file)."""
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    jobs = [{"input": "a.tif", "output": f"out/{n}.tif", "ops": [{"op": "invert"}]}
            for n in ("b", "c")]
    (tmp_path / "m.json").write_text(json.dumps(jobs))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 0
    assert cli.main(["run", str(tmp_path / "m.json"), "--no-contact-sheet"]) == 0
    for n in ("b", "c"):
        assert np.array_equal(tifffile.imread(tmp_path / f"out/{n}.tif"),
                              255 - tifffile.imread(src))


def test_demo_into_a_file_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "taken").write_text("a file of the user's")
    assert cli.main(["demo", "--dir", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tiffpipe: the demo cannot be written into {tmp_path / 'taken'}")
    assert "Traceback" not in err and (tmp_path / "taken").read_text() == "a file of the user's"


def test_demos_started_together_in_one_folder_each_get_the_sample(tmp_path: Path):
    """Three ``tiffpipe demo`` at once in one folder (they shared one temporary file: two
    failed with "No such file or directory", and a sample replaced under a running demo
    failed its jobs with InputChangedError): each gets the manifest and one sample, kept."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.demo import prepare_demo

    folder = tmp_path / "example"
    with ThreadPoolExecutor(3) as pool:
        manifests = list(pool.map(prepare_demo, [str(folder)] * 3))
    assert manifests == [str(folder / "manifest.json")] * 3
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "sample.tif"]
    assert json.loads((folder / "manifest.json").read_text()) == DEMO_MANIFEST
    inode = (folder / "sample.tif").stat().st_ino
    assert len(read_pages(folder / "sample.tif")) == len(SAMPLE_PAGES)
    prepare_demo(str(folder))  # a later demo keeps the sample there
    assert (folder / "sample.tif").stat().st_ino == inode


def test_validate_good_manifest(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "a.tif", "output": "out/a.tif"},
        {"input": "s3://bucket/b.tif", "output": "out/b.tif", "ops": [{"op": "invert"}]}]}))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 0
    out, err = capsys.readouterr()
    # one line saying what was checked, and that the inputs (not there) were not read
    assert out == (f"{tmp_path / 'm.json'}: valid, 2 job(s); their fields and ops checked, "
                   "their inputs not read: tiffpipe validate --inputs reads them\n")
    assert err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # inputs are not opened
    # a scan: its folders are not listed (here there are none)
    (tmp_path / "scan.json").write_text(json.dumps({"scan": {"input": "in/", "output": "out/"}}))
    assert cli.main(["validate", str(tmp_path / "scan.json")]) == 0
    assert capsys.readouterr().out == (
        f"{tmp_path / 'scan.json'}: valid, a scan of {tmp_path / 'in'} into {tmp_path / 'out'} "
        "(the jobs are the TIFFs there without an output when the run starts); its fields and "
        "ops checked, the folder not listed: tiffpipe validate --inputs lists it and reads the "
        "inputs\n")


def test_validate_refuses_a_tile_the_downsample_does_not_divide(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture):
    """A GIS manifest whose defaults set "tile": 512 and whose job downsamples by 3 (its
    tiles must be multiples of 48): ``validate`` said it was valid, and the run failed the
    job in PlanJob naming no field; now ``validate`` (without --inputs, the manifest alone
    says it) refuses it at the job's ops, saying where the tile came from and what fits."""
    tifffile.imwrite(tmp_path / "scene.tif", np.ones((200, 300, 4), np.uint16), tile=(64, 64))
    (tmp_path / "m.json").write_text(json.dumps({"defaults": {"tile": 512}, "jobs": [
        {"input": "scene.tif", "output": "out/a.tif",
         "ops": [{"op": "downsample", "factor": 3}]},
        {"input": "scene.tif", "output": "out/b.tif", "tile": 1536,
         "ops": [{"op": "downsample", "factor": 3}]}]}))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err == (
        f"tiffpipe: invalid manifest {tmp_path / 'm.json'}: 1 problem(s) in the manifest:\n"
        "  jobs[0].ops: tile 512 (from defaults.tile) must be a multiple of 48 for this op "
        "chain (16 x the downsampling factor 3); use tile 1536\n")
    assert cli.main(["validate", "--inputs", str(tmp_path / "m.json")]) == 2
    assert "jobs[0].ops: tile 512 (from defaults.tile)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_validate_names_the_op_or_field_a_misspelling_meant(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture):
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "a.tif", "output": "out/a.tif", "ops": [{"op": "gaussian-blur", "sigma": 2}]},
        {"input": "b.tif", "output": "out/b.tif", "ops": [{"op": "gaussian_blur", "sigm": 2}]},
    ]}))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err == (
        f"tiffpipe: invalid manifest {tmp_path / 'm.json'}: 2 problem(s) in the manifest:\n"
        "  jobs[0].ops[0].op: unknown op 'gaussian-blur'; did you mean gaussian_blur? "
        f"(known: {', '.join(OPS)})\n"
        "  jobs[1].ops[0].sigm: unknown field; did you mean sigma?\n")


def test_validate_shows_invalid_json_where_it_is_with_a_hint(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture):
    """The example of docs/manifest-and-ops.md: a one-line manifest with a trailing comma."""
    (tmp_path / "m.json").write_text(
        '{"jobs": [{"input": "scans/a.tif", "output": "out/a.tif"}, '
        '{"input": "scans/b.tif", "output": "out/b.tif"},]}')
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.split("\n")
    assert err[0] == (f"tiffpipe: invalid manifest {tmp_path / 'm.json'}: 1 problem(s) in the "
                      "manifest:")
    assert err[1].endswith("; a trailing comma (line 1, column 107) before ]: remove it, "
                           "JSON takes no comma after the last item")
    assert err[2:] == ['    ...: "scans/b.tif", "output": "out/b.tif"},]}',
                       f"    {' ' * (43 if sys.version_info < (3, 13) else 42)}^", ""]


def test_workers_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture):
    _inputs(tmp_path)
    for workers in ("0", "-3"):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", workers]) == 2
        out, err = capsys.readouterr()
        assert "--workers must be at least 1" in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.json"]
    # demo too, before it writes its sample and manifest (nothing is left of a usage error)
    assert cli.main(["demo", "--dir", str(tmp_path / "demo"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture):
    for argv in ([], ["run"], ["nonsense"], ["run", "m.json", "--workers", "two"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2, argv
    capsys.readouterr()


def test_run_runs_the_definition_given(tmp_path: Path, capsys: pytest.CaptureFixture):
    """``run --definition PATH`` runs that copy of the state machine (an edited one, tried
    before deploying it: here a Choice after PlanRun that fails the run), not the shipped
    one; a file it cannot read is a usage error that names the option and the path."""
    from pipeline.engine import definition

    _inputs(tmp_path)
    edited = tmp_path / "edited.asl.json"
    machine = json.loads(definition.definition_text())
    machine["States"]["PlanRun"]["Next"] = "Gate"
    machine["States"]["Gate"] = {"Type": "Choice", "Default": "Jobs", "Choices": [
        {"Variable": "$.planned.jobs_at_once", "NumericGreaterThan": 0, "Next": "Stop"}]}
    machine["States"]["Stop"] = {"Type": "Fail", "Error": "EditedCopy",
                                 "Cause": "the edited copy ran"}
    edited.write_text(json.dumps(machine))
    run = ["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet", "--definition"]
    assert cli.main([*run, str(edited)]) == 1
    err = capsys.readouterr().err
    assert "EditedCopy" in err and "the edited copy ran" in err, err
    for path, why in ((tmp_path / "none.json", "No such file"), (tmp_path, "Is a directory")):
        assert cli.main([*run, str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--definition {path}: cannot be read: {why}" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_run_runs_a_deployed_stacks_definition(tmp_path: Path, interpreter: str):
    """The definition a stack runs, as deploy.py renders it (each function's version ARN:
    ``...:function:tiffpipe-prod-split:7``), read back from Step Functions and run here
    with ``--definition``: each task is served by its function, whatever the ARN's stack,
    region and version, on either interpreter."""
    from pipeline.engine import definition

    _inputs(tmp_path)
    deployed = tmp_path / "deployed.asl.json"
    deployed.write_text(definition.render({
        f: f"arn:aws:lambda:eu-west-1:123456789012:function:tiffpipe-prod-{f}:7"
        for f in ("split", "process", "merge")}))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                     "--no-contact-sheet", "--interpreter", interpreter, "--definition",
                     str(deployed)]) == 0
    _check_outputs(tmp_path)


def test_a_task_naming_no_function_of_the_engine_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A definition whose tasks name a function the engine does not have (a typo in an
    edited copy: the merge function's): refused before anything runs (exit 2, no report),
    each task named, with what FunctionName may be. (It ran both jobs, then stopped with
    the engine's error, exit 1.)"""
    from pipeline.engine import definition

    _inputs(tmp_path)
    edited = tmp_path / "edited.asl.json"
    edited.write_text(definition.definition_text().replace("${MergeFunctionArn}",
                                                           "tiffpipe-local-mrge"))
    code = cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                     "--no-contact-sheet", "--definition", str(edited)])
    err = capsys.readouterr().err
    assert code == 2, err
    for state in ("Jobs/Merge", "Jobs/RecordFailure", "Report"):
        assert (f"{state}: FunctionName 'tiffpipe-local-mrge' is none of ${{SplitFunctionArn}}, "
                "${ProcessFunctionArn}, ${MergeFunctionArn}") in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "m.report.json").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("drop,missing", [
    ("Report", ("no Task state runs the report action (Report's, after the Jobs map: it "
                "writes the run report, which the run reads at its end)")),
    ("PlanRun", ("no Task state runs the plan_run action (PlanRun's: it checks the manifest "
                 "and writes the job list the jobs run from)")),
])
def test_a_definition_without_report_or_plan_run_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture, drop: str, missing: str):
    """A copy without the Report state (the Jobs map ends the execution) ran every job,
    published the outputs, then traced back (WorkMissingError: the report); one without
    PlanRun likewise. Both are refused before anything runs (exit 2), naming what is
    missing, and ``validate --definition`` says the same without a manifest."""
    from pipeline.engine import definition

    _inputs(tmp_path)
    machine = json.loads(definition.definition_text())
    if drop == "Report":
        machine["States"]["Jobs"].pop("Next")
        machine["States"]["Jobs"]["End"] = True
    else:
        machine["StartAt"] = "Jobs"
    machine["States"].pop(drop)
    edited = tmp_path / "edited.asl.json"
    edited.write_text(json.dumps(machine))
    assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                     "--no-contact-sheet", "--definition", str(edited)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tiffpipe: {edited} does not fit tiffpipe's code"), err
    assert err.rstrip().endswith(missing), err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.asl.json", "in", "m.json"]
    assert cli.main(["validate", "--definition", str(edited)]) == 2
    assert capsys.readouterr().err.rstrip().endswith(missing)


def test_validate_checks_a_definition_as_a_run_would(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture):
    """``validate --definition PATH``: the checks ``run --definition`` makes, without a run:
    the structure's (a Type typo, the one problem), the contract's (a field a Choice
    reads, dropped), each named by its state; a good copy (a deployed stack's, its ARNs
    filled) is valid, with or without a manifest; neither a manifest nor a definition is a
    usage error."""
    from pipeline.engine import definition

    _inputs(tmp_path)
    machine = json.loads(definition.definition_text())
    jobs = machine["States"]["Jobs"]["ItemProcessor"]["States"]
    edited = tmp_path / "edited.asl.json"
    jobs["Fused"]["Type"] = "Switch"
    edited.write_text(json.dumps(machine))
    assert cli.main(["validate", "--definition", str(edited)]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("): state Jobs > Fused: Type 'Switch' is not one of Task, "
                                 "Pass, Choice, Wait, Succeed, Fail, Parallel, Map"), err
    jobs["Fused"]["Type"] = "Choice"
    jobs["PlanJob"]["ResultSelector"].pop("single.$")
    edited.write_text(json.dumps(machine))
    assert cli.main(["validate", str(tmp_path / "m.json"), "--definition", str(edited)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Jobs/Fused: $.planned.single: no field 'single' at $.planned" in err
    edited.write_text(definition.render({
        f: f"arn:aws:lambda:eu-west-1:123456789012:function:tiffpipe-prod-{f}:7"
        for f in ("split", "process", "merge")}))
    assert cli.main(["validate", "--definition", str(edited)]) == 0
    assert capsys.readouterr().out.startswith(f"{edited}: valid for a local run: ")
    assert cli.main(["validate", str(tmp_path / "m.json"), "--definition", str(edited)]) == 0
    out = capsys.readouterr().out
    assert f"{edited}: valid for a local run" in out and "m.json: valid, 2 job(s)" in out, out
    assert cli.main(["validate"]) == 2
    assert "validate needs a manifest, or --definition PATH" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.asl.json", "in", "m.json"]


def test_validate_refuses_a_definition_the_engine_refuses_to_run(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """A Map with a ResultWriter passes the checks, but a run refuses it as its engine
    starts (moto would run it, and writes its results where nothing sees them): validate
    --definition said it was "valid for a local run". It says the run's refusal, naming the
    file."""
    from pipeline.engine import definition

    machine = json.loads(definition.definition_text())
    machine["States"]["Jobs"]["ResultWriter"] = {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": "results", "Prefix": "jobs"}}
    edited = tmp_path / "edited.asl.json"
    edited.write_text(json.dumps(machine))
    assert cli.main(["validate", "--definition", str(edited)]) == 2
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.startswith(f"tiffpipe: {edited}: moto's interpreter cannot run this "
                          "definition (which the direct interpreter cannot either"), err
    assert "it does not support a Map's ResultWriter (state Jobs: " in err, err


def test_a_definition_that_cannot_run_is_a_usage_error_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """Not JSON (the file, line and column) or refused by Step Functions (the state and the
    field): exit 2 before the manifest is read, no traceback."""
    edited = tmp_path / "edited.asl.json"
    run = ["run", str(tmp_path / "m.json"), "--quiet", "--definition", str(edited)]
    edited.write_text('{"StartAt": "A",\n "States": {"A": {"Type": "Pass", "End": true},}}')
    assert cli.main(run) == 2
    err = capsys.readouterr().err
    # Python 3.13's json names the trailing comma itself (column 47); 3.11 and 3.12 the
    # character after it, where a property name was expected (column 48)
    where = "line 2, column 47" if sys.version_info >= (3, 13) else "line 2, column 48"
    assert f"tiffpipe: {edited}: {where}: invalid JSON: " in err, err
    # what is likely wrong and where, with the line and a caret, as a manifest's
    assert "; a trailing comma (line 2, column 47) before }: remove it" in err, err
    excerpt, caret = err.splitlines()[1:]
    assert excerpt.endswith('"End": true},}}') and caret.strip() == "^", err
    assert excerpt[len(caret) - 1] in ",}", err  # (under the comma, or the } after it)
    edited.write_text(json.dumps({"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Next": "Notify"}}}))
    assert cli.main(run) == 2
    err = capsys.readouterr().err
    assert f"{edited} is not a valid state machine" in err, err
    assert "state A: Next names 'Notify', which is not a state" in err and "Traceback" not in err


# --- run --------------------------------------------------------------------------------------


@dataclass
class Run:
    folder: Path
    manifest: dict[str, Any]
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def happy(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The default run: report next to the manifest, work in .tiffpipe-work/, progress lines."""
    folder = tmp_path_factory.mktemp("happy")
    manifest = _inputs(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(folder / "m.json"), "--workers", "2"])
    return Run(folder, manifest, code, out.getvalue(), err.getvalue())


def test_run_happy_path(happy: Run):
    assert happy.code == 0, happy.err
    _check_outputs(happy.folder)


def test_run_prints_a_summary_table(happy: Run):
    for name in ("rgb_blur.tif", "gray_median.tif"):
        assert str(happy.folder / "out" / name) in happy.out
    assert happy.out.count("SUCCEEDED") == 2
    assert "2 succeeded, 0 failed" in happy.out
    assert happy.out.rstrip().endswith(f"report: {happy.folder / 'm.report.json'}")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


REPORT = {"run_id": "r1", "succeeded": 1, "failed": 1, "seconds": 2.25, "jobs": [
    {"job": 0, "status": "SUCCEEDED", "pages": 3, "megapixels": 12.34, "seconds": 2.0,
     "output": "/data/out/a-long-name.tif"},
    {"job": 1, "status": "FAILED", "seconds": 0.1, "output": "/data/out/b.tif",
     "error": {"type": "PageTooLargeError", "message": "b.tif page 0: too large [x]"}}]}


def test_the_summary_is_plain_aligned_lines_when_not_a_terminal():
    """Piped or logged: a title and one line a job, columns aligned, nothing wrapped or cut,
    no colour codes or box characters (rich draws it only on a terminal)."""
    out = io.StringIO()
    ui.print_summary(REPORT, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "run r1: 1 succeeded, 1 failed, 2.2 s"
    assert lines[1].split() == ["job", "status", "pages", "megapixels", "seconds", "output",
                                "or", "error"]
    assert lines[2].split() == ["0", "SUCCEEDED", "3", "12.3", "2.0",
                                "/data/out/a-long-name.tif"]
    assert lines[3].split() == ["1", "FAILED", "0.1", "PageTooLargeError:", "b.tif", "page",
                                "0:", "too", "large", "[x]"]
    starts = {line.index(word) for line, word in zip(lines[1:], ("output", "/data", "Page"),
                                                     strict=True)}
    assert len(starts) == 1  # the last column starts at the same place on every line
    assert not ANSI.search(out.getvalue()) and "┃" not in out.getvalue()


def test_the_summary_counts_the_output_pages_megapixels_too():
    """A crop or a downsample leaves fewer pixels than the job read: the summary said the
    input's alone ("64.0" of a downsample's 16); it says both, with the digits that show a
    small page's (a 64 x 64 page was "0.0")."""
    report = {**REPORT, "jobs": [
        {**REPORT["jobs"][0], "megapixels": 64.0, "output_megapixels": 16.0},
        {**REPORT["jobs"][0], "job": 1, "megapixels": 0.004, "output_megapixels": 0.004},
        {**REPORT["jobs"][0], "job": 2, "megapixels": 1234.5, "output_megapixels": 0.25},
        {**REPORT["jobs"][0], "job": 3}]}  # (a report of before: no output_megapixels)
    out = io.StringIO()
    ui.print_summary(report, out)
    cells = [line.split("SUCCEEDED")[1].split("2.0")[0].split()[1:]
             for line in out.getvalue().splitlines()[2:]]
    assert cells == [["64.0", "->", "16.0"], ["0.004"], ["1,234", "->", "0.25"], ["12.3"]]


def test_a_runs_report_and_summary_count_what_a_crop_and_downsample_left(tmp_path: Path):
    """The report entry's ``output_megapixels`` is the output pages' (a 400 x 300 crop of a
    512 x 512 page, downsampled by 2: 200 x 150), to the pixel; the printed summary says
    both. A crop of 20 x 20 pixels is 0.0004, not 0 (three decimals made it "0.26 -> 0")."""
    write_sample(str(tmp_path / "a.tif"), [SamplePage(512, 512, 1)], tile=128)
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [{
        "input": "a.tif", "output": "out/a.tif", "tile": 128, "output_options": {"tile": 64},
        "ops": [{"op": "crop", "x": 16, "y": 32, "width": 400, "height": 300},
                {"op": "downsample", "factor": 2}]}, {
        "input": "a.tif", "output": "out/small.tif", "tile": 128, "output_options": {"tile": 64},
        "ops": [{"op": "crop", "x": 16, "y": 32, "width": 20, "height": 20}]}]}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1",
                         "--no-contact-sheet"]) == 0, err.getvalue()
    job, small = json.loads((tmp_path / "m.report.json").read_text())["jobs"]
    assert (job["megapixels"], job["output_megapixels"]) == (0.262144, 0.03)
    assert (small["megapixels"], small["output_megapixels"]) == (0.262144, 0.0004)
    with tifffile.TiffFile(tmp_path / "out" / "a.tif") as tf:
        assert tf.pages[0].shape == (150, 200)
    rows = [line.split() for line in out.getvalue().splitlines() if "SUCCEEDED" in line]
    assert [row[3:6] for row in rows] == [["0.26", "->", "0.03"], ["0.26", "->", "0.0004"]]


@pytest.mark.parametrize("stream", [io.StringIO, lambda: _Terminal()])
def test_a_run_without_jobs_is_summed_up_in_its_title(stream):
    """A run with no job (a scan with nothing new, or deferred to an earlier run of it): the
    title alone, piped or on a terminal, not a table's header over no rows."""
    out = stream()
    report = {**REPORT, "succeeded": 0, "failed": 0, "jobs": [], "deferred_to": "local run r0"}
    ui.print_summary(report, out)
    title = ("run r1: 0 succeeded, 0 failed, 2.2 s; no job: an earlier run of this manifest is "
             "still running (local run r0), the next run after it does what is left")
    assert out.getvalue().splitlines() == [title]


@pytest.mark.parametrize("stream", [io.StringIO, lambda: _Terminal()])
def test_a_scans_summary_says_what_it_found_after_the_jobs(stream):
    """A scan's run: after its jobs (the table's rows, or its title alone), a line of what
    the scan found; plain on a terminal too, where the table is drawn above it."""
    out = stream()
    scan = {"input": "s3://b/in/", "output": "/data/out", "tiffs": 10, "done_before": 5,
            "left_out": {"name_collision": 2, "link_outside": 1, "link_to_nothing": 0},
            "jobs": 2}
    ui.print_summary({**REPORT, "scan": scan}, out)
    assert out.getvalue().splitlines()[-1] == (
        "scan of s3://b/in/ into /data/out: 10 TIFF(s), 5 done before, 3 left out (2 whose "
        "outputs would be one file, 1 link(s) to outside the folder), 2 new")


def test_the_summary_is_a_rich_table_on_a_terminal():
    out = _Terminal()
    ui.print_summary(REPORT, out)
    text = out.getvalue()
    assert "┃" in text and "SUCCEEDED" in text and "PageTooLargeError" in text
    assert "r1: 1 succeeded, 1 failed" in text


def test_a_long_path_is_folded_whole_on_a_narrow_terminal(monkeypatch):
    """An output path or error longer than its column on an 80-column terminal: every
    character is there, folded over the cell's lines (rich's default cut it with an
    ellipsis, as a path has no space to wrap at)."""
    monkeypatch.setenv("COLUMNS", "80")
    path = "/data/" + "x" * 30 + "/" + "y" * 30 + "/" + "z" * 40 + ".tif"
    message = "/data/in/" + "w" * 70 + ".tif: page 0: too large"
    report = {**REPORT, "jobs": [{**REPORT["jobs"][0], "output": path},
                                 {**REPORT["jobs"][1], "error": {"type": "PageTooLargeError",
                                                                 "message": message}}]}
    out = _Terminal()
    ui.print_summary(report, out)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # without the colour codes
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    # the last column's fragments, line by line, joined: the whole path and error
    cells = "".join(line.split("│")[-2].strip() for line in text.splitlines()
                    if line.count("│") >= 2)
    # (the spaces where the cell wrapped at words are gone from the join)
    assert path in cells and f"PageTooLargeError:{message}".replace(" ", "") in \
        cells.replace(" ", "")


def test_run_writes_the_report(happy: Run):
    report = json.loads((happy.folder / "m.report.json").read_text())
    assert report["manifest"] == str(happy.folder / "m.json")
    assert (report["succeeded"], report["failed"]) == (2, 0)
    assert report["started_at"] <= report["finished_at"] and report["seconds"] >= 0
    assert len(report["jobs"]) == 2
    assert "scan" not in report  # a list of jobs: no scan's findings
    for i, (job, spec) in enumerate(zip(report["jobs"], happy.manifest["jobs"], strict=True)):
        assert job["job"] == i
        assert job["status"] == "SUCCEEDED"
        assert job["input"] == str(happy.folder / spec["input"])
        assert job["output"] == str(happy.folder / spec["output"])
        assert job["pages"] == 2
        assert job["tiles"] > 0 and job["megapixels"] > 0
        assert job["output_bytes"] == (happy.folder / spec["output"]).stat().st_size
        assert job["started_at"] <= job["finished_at"]
        assert job["seconds"] == pytest.approx(job["finished_at"] - job["started_at"], abs=0.01)
        assert report["started_at"] <= job["started_at"] <= report["finished_at"]
    # 300x420 and 200x150 pages in 128 tiles: 3*4 + 2*2 tiles
    assert report["jobs"][0]["tiles"] == 16
    assert report["jobs"][0]["megapixels"] == pytest.approx((300 * 420 + 200 * 150) / 1e6,
                                                            abs=1e-3)
    assert report["jobs"][0]["output_megapixels"] == report["jobs"][0]["megapixels"]


def test_run_logs_plain_progress_lines_when_not_a_terminal(happy: Run):
    lines = happy.err.splitlines()
    assert not ANSI.search(happy.err), "escape codes on a non-terminal"
    assert "job 0 (rgb.tif): planned, 16 tiles" in lines
    assert any(re.fullmatch(r"job 1 \(gray\.tif\): planned, \d+ tiles", line) for line in lines)
    assert "job 0: 16/16 tiles; all jobs: " in happy.err
    assert any(line.startswith("job 1: ") and " tiles; all jobs: " in line for line in lines)
    assert f"job 0: done -> {happy.folder / 'out' / 'rgb_blur.tif'}" in lines
    assert "Traceback" not in happy.err


def test_run_removes_its_work_folder(happy: Run):
    assert not (happy.folder / ".tiffpipe-work").exists()
    assert sorted(p.name for p in happy.folder.iterdir()) == [
        "in", "m.json", "m.report.contact.png", "m.report.json", "out"]
    assert sorted(p.name for p in (happy.folder / "out").iterdir()) == ["gray_median.tif",
                                                                        "rgb_blur.tif"]


def test_run_quiet_keep_work_elsewhere(tmp_path: Path, capfd: pytest.CaptureFixture):
    """--quiet: nothing on stdout/stderr (workers included: capfd sees their fds too);
    --keep-work keeps the work folder given by --work; --report goes where it is told."""
    folder = tmp_path / "data"
    folder.mkdir()
    _inputs(folder)
    work, report = tmp_path / "elsewhere" / "w", tmp_path / "reports" / "r.json"
    code = cli.main(["run", str(folder / "m.json"), "--workers", "2", "--quiet", "--keep-work",
                     "--work", str(work), "--report", str(report)])
    out, err = capfd.readouterr()
    assert code == 0
    assert (out, err) == ("", "")
    _check_outputs(folder)
    assert report.is_file()
    assert json.loads(report.read_text())["succeeded"] == 2
    assert (work / "run.json").is_file()
    for job in ("00000", "00001"):
        plan = json.loads((work / "jobs" / job / "plan.json").read_text())
        assert plan["work"] == str(work / "jobs" / job)
        assert (work / "jobs" / job / "result.json").is_file()
        assert list((work / "jobs" / job).glob("out-*.seg"))  # fused: segments, no tiles
    assert not (folder / ".tiffpipe-work").exists()
    assert not (folder / "m.report.json").exists()


def test_run_quiet_says_nothing_of_skipped_jobs(tmp_path: Path, capfd: pytest.CaptureFixture):
    """A rerun with "if_exists": "skip" (what a run prints after a partial failure, and what
    cron runs) whose jobs are all skipped prints nothing with --quiet: a skipped job's
    message is no left-out page (it was said as "... more job(s) left pages out")."""
    _inputs(tmp_path)
    manifest = tmp_path / "m.json"
    doc = json.loads(manifest.read_text())
    doc.setdefault("defaults", {})["if_exists"] = "skip"
    manifest.write_text(json.dumps(doc))
    assert cli.main(["run", str(manifest), "--workers", "2", "--quiet"]) == 0
    capfd.readouterr()
    assert cli.main(["run", str(manifest), "--workers", "2", "--quiet"]) == 0
    assert capfd.readouterr() == ("", "")
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SKIPPED", "SKIPPED"]
    skipped = {"job": 5, "status": "SKIPPED", "input": "in/a.tif", "output": "out/a.tif",
               "message": "the output exists already (if_exists: skip): left as it is"}
    left_out = {"job": 6, "status": "SUCCEEDED", "input": "in/c.tif", "output": "out/c.tif",
                "message": "page 1 left out: ..."}
    assert ui.left_out_lines({"jobs": [skipped, left_out]}, 3) == [
        "tiffpipe: job 6 (in/c.tif): page 1 left out: ..."]


def test_run_on_moto_gives_the_same_outputs(tmp_path: Path, capsys: pytest.CaptureFixture):
    """--interpreter moto: the same run on moto's interpreter, the same outputs and report."""
    _inputs(tmp_path)
    code = cli.main(["run", str(tmp_path / "m.json"), "--workers", "2", "--quiet",
                     "--interpreter", "moto"])
    assert code == 0
    _check_outputs(tmp_path)
    assert json.loads((tmp_path / "m.report.json").read_text())["succeeded"] == 2


def _kept_apart(tmp_path: Path) -> tuple[Path, Path]:
    """A new user's layout: scans in one folder (a name with spaces and accents), the manifest
    in another, its input written from the scans' folder, where they run it from."""
    scans = tmp_path / "my scans"
    (scans / "Müller été").mkdir(parents=True)
    write_sample(str(scans / "Müller été" / "scan 1.tif"), [SamplePage(64, 48, 3)])
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "m.json").write_text(json.dumps({"jobs": [
        {"input": "Müller été/scan 1.tif", "output": "out/scan 1.tif", "ops": [{"op": "invert"}]},
        {"input": str(scans / "Müller été" / "scan 1.tif"), "output": "out/b.tif"}]}))
    return scans, tmp_path / "manifests"


def hint_of(scans: Path, manifests: Path) -> str:
    """What run and validate --inputs say of _kept_apart's first job."""
    return (f'tiffpipe: jobs[0].input "Müller été/scan 1.tif" is in the current folder ({scans}) '
            f"but not in the manifest's ({manifests}), where its relative paths start: write it "
            '"../my scans/Müller été/scan 1.tif", or as an absolute path\n')


def test_a_relative_input_found_in_the_current_folder_is_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """The job fails (InputNotFoundError names the path in the manifest's folder), and the
    run says where the file is and how to write its path; the job that found its input runs."""
    scans, manifests = _kept_apart(tmp_path)
    monkeypatch.chdir(scans)
    code = cli.main(["run", "../manifests/m.json", "--workers", "1", "--no-contact-sheet"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "InputNotFoundError" in out and (manifests / "out" / "b.tif").is_file()
    assert err.count("tiffpipe: jobs[") == 1 and hint_of(scans, manifests) in err, err
    # --quiet says it too (on stderr, with the failed job)
    assert cli.main(["run", "../manifests/m.json", "--workers", "1", "--quiet",
                     "--no-contact-sheet"]) == 1
    assert hint_of(scans, manifests) in capsys.readouterr().err


@pytest.fixture(scope="module")
def report_fails(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run whose report cannot be written (its folder is a regular file)."""
    folder = tmp_path_factory.mktemp("report_fails")
    manifest = _inputs(folder)
    (folder / "blocker").write_text("a file, not a folder")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(folder / "m.json"), "--workers", "2", "--quiet",
                         "--report", str(folder / "blocker" / "report.json")])
    return Run(folder, manifest, code, out.getvalue(), err.getvalue())


def test_unwritable_report_stops_the_run_before_any_work(report_fails: Run):
    assert report_fails.code == 2
    assert report_fails.out == ""
    assert report_fails.err.startswith("tiffpipe: the run report cannot be written")
    assert str(report_fails.folder / "blocker" / "report.json") in report_fails.err
    assert not (report_fails.folder / ".tiffpipe-work").exists()
    for job in report_fails.manifest["jobs"]:
        assert not (report_fails.folder / job["output"]).exists(), job["output"]
    assert not (report_fails.folder / "out").exists()  # the outputs' folder: not even made


@pytest.mark.parametrize(("report", "what"), [
    ("in/rgb.tif", "job 0's input"), ("m.json", "the manifest"),
    ("out/../in/gray.tif", "job 1's input"), ("link-to-input.tif", "job 0's input"),
    ("out/gray_median.tif", "job 1's output"), ("r.json", None)])
def test_a_report_over_the_manifest_or_a_jobs_file_is_refused(tmp_path: Path, report: str,
                                                              what: str | None):
    """--report naming the manifest, a job's input (by another path, or a hard link to it)
    or a job's output: refused before any work (exit 2, naming it), nothing replaced; a
    path of its own runs."""
    _inputs(tmp_path)
    os.link(tmp_path / "in" / "rgb.tif", tmp_path / "link-to-input.tif")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gray_median.tif").write_bytes(b"an earlier output")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                         "--no-contact-sheet", "--report", str(tmp_path / report)])
    if what is None:
        assert code == 0
        return
    assert code == 2
    assert err.getvalue().startswith("tiffpipe: the run report cannot be written: ")
    assert f"is {what}, which the run's report would replace; give --report another path" \
        in err.getvalue()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_dotdot_after_a_link_names_the_file_the_os_opens(tmp_path: Path):
    """``link/../a.tif`` with ``link`` a real symlink to ``real/sub``: the OS opens
    ``real/a.tif``, not the ``a.tif`` beside the link (which ``..`` taken as text named).
    The run reads that file and the report names it; the checks compare it so too: an output
    spelt so is not its input ``a.tif`` beside the link, but is ``real/a.tif``; an output
    that leads, so, into the work folder is refused."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 80, 1, "uint8")], tile=16, seed=1)
    write_sample(str(tmp_path / "real" / "a.tif"), [SamplePage(48, 40, 3)], tile=16, seed=2)

    def manifest(input: str, output: str) -> str:
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"jobs": [{"input": input, "output": output,
                                              "ops": [{"op": "invert"}]}]}))
        return str(path)

    def tiffpipe(*args: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return cli.main(list(args)), err.getvalue()

    code, err = tiffpipe("run", manifest("link/../a.tif", "out/a.tif"), "--quiet")
    assert code == 0, err
    [page] = read_pages(tmp_path / "real" / "a.tif")
    [got] = read_pages(tmp_path / "out" / "a.tif")
    assert np.array_equal(got, cv2.bitwise_not(page))
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["jobs"][0]["input"] == str(tmp_path / "real" / "a.tif")
    # an output spelt through the link is another file than the input beside the link...
    assert tiffpipe("validate", manifest("a.tif", "link/../b.tif"))[0] == 0
    # ... and the same file as the input it reaches
    code, err = tiffpipe("validate", manifest("real/a.tif", "link/../a.tif"))
    assert code == 2
    assert f"same location as its own input ({json.dumps(str(tmp_path / 'real' / 'a.tif'))})" \
        in err, err
    # an output that leads into the work folder (wo/deep/.. is wo)
    (tmp_path / "wo" / "deep").mkdir(parents=True)
    (tmp_path / "wlink").symlink_to(tmp_path / "wo" / "deep")
    code, err = tiffpipe("run", manifest("a.tif", "wlink/../x.tif"), "--quiet",
                         "--work", str(tmp_path / "wo"))
    assert code == 2
    assert f"jobs[0].output: {tmp_path / 'wo' / 'x.tif'}: inside the work location" in err, err
    assert not (tmp_path / "wo" / "x.tif").exists()


@pytest.mark.parametrize("mine", ["notes.json", "other.tif"])
def test_a_report_over_a_file_that_is_no_run_report_is_refused(tmp_path: Path, mine: str):
    """--report naming a file that is no run report (a user's own JSON, a TIFF not in the
    manifest): refused before any work (exit 2, naming it and what to do), the file as it
    was; --overwrite-report replaces it; an earlier run's report is replaced as ever."""
    _inputs(tmp_path)
    report = tmp_path / mine
    if mine.endswith(".tif"):
        write_sample(str(report), [SamplePage(64, 64, 1, "uint8")], tile=16)
    else:
        report.write_text('{"notes": "mine"}')
    before = report.read_bytes()
    run = ["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet", "--no-contact-sheet",
           "--report", str(report)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(run) == 2
    assert err.getvalue().startswith(
        f"tiffpipe: the run report cannot be written: {report}: exists and is not a tiffpipe "
        "run report, which the run's report would replace: give --report another path, or "
        "move that file away (or run with --overwrite-report to replace it)"), err.getvalue()
    assert report.read_bytes() == before
    assert not (tmp_path / "out").exists() and not (tmp_path / ".tiffpipe-work").exists()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*run, "--overwrite-report"]) == 0
        first = json.loads(report.read_text())["run_id"]
        assert cli.main(run) == 0  # (now an earlier run's report: replaced)
    assert json.loads(report.read_text())["run_id"] != first


def test_an_empty_file_given_as_the_report_is_replaced(tmp_path: Path):
    """``--report "$(mktemp)"`` (or a ``tempfile.NamedTemporaryFile``'s name from a script):
    the file made to take the report is empty, and was refused as "not a tiffpipe run report"
    (exit 2, nothing run) though replacing it loses nothing."""
    _inputs(tmp_path)
    report = tmp_path / "tmp.1a2b3c"
    report.touch()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                         "--no-contact-sheet", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["succeeded"] == 2


def test_a_picture_of_the_users_at_the_sheets_path_is_kept(tmp_path: Path):
    """``--report r.json`` beside the user's own ``r.contact.png`` (a picture of theirs, not
    a contact sheet: not 852 pixels wide): a run that draws a sheet is refused before any
    work, the picture as it was (--no-contact-sheet, or --overwrite-report, runs); a run
    without a sheet leaves it, where it removes an earlier run's sheet."""
    from PIL import Image

    _inputs(tmp_path)
    report, picture = tmp_path / "r.json", tmp_path / "r.contact.png"
    Image.new("RGB", (640, 480), "teal").save(picture)
    mine = picture.read_bytes()
    run = ["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet", "--report",
           str(report)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(run) == 2
    assert (f"{picture}: exists and is not a tiffpipe contact sheet, which the run's contact "
            "sheet (named after the report) would replace: run with --no-contact-sheet, or "
            "give --report another path") in err.getvalue(), err.getvalue()
    assert picture.read_bytes() == mine and not report.exists()
    assert not (tmp_path / "out").exists()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*run, "--no-contact-sheet"]) == 0
    assert picture.read_bytes() == mine and report.exists()  # kept, not removed as stale
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*run, "--overwrite-report"]) == 0
    assert picture.read_bytes() != mine and Image.open(picture).width == 852  # a sheet now
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*run, "--no-contact-sheet"]) == 0
    assert not picture.exists()  # an earlier run's sheet: removed


@pytest.mark.parametrize("report", ["in/a.tif", "out/a.tif"])
def test_a_report_over_a_scans_tiff_is_refused_even_when_told_to_overwrite(tmp_path: Path,
                                                                        report: str):
    """A scan's report over a TIFF it reads, or one it would write (a later output):
    refused as a list of jobs' is, --overwrite-report or not."""
    (tmp_path / "in").mkdir()
    write_sample(str(tmp_path / "in" / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=16)
    (tmp_path / "m.json").write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))
    before = (tmp_path / "in" / "a.tif").read_bytes()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["run", str(tmp_path / "m.json"), "--quiet", "--overwrite-report",
                         "--report", str(tmp_path / report)])
    assert code == 2
    field = report.split("/")[0]
    assert (f"{tmp_path / report}: is a TIFF in scan.{field}put ({tmp_path / field}), which "
            "the run's report would replace") in err.getvalue(), err.getvalue()
    assert (tmp_path / "in" / "a.tif").read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_plan_run_refuses_a_report_over_a_jobs_input_for_any_caller(tmp_path: Path):
    """run_local called as a library (no CLI check first), told to replace a file that is no
    run report: PlanRun refuses the report path before any job; the run fails naming it,
    and the input is as it was."""
    from pipeline.runner import run_local

    _inputs(tmp_path)
    before = (tmp_path / "in" / "rgb.tif").read_bytes()
    result = run_local(str(tmp_path / "m.json"), 1, report=str(tmp_path / "in" / "rgb.tif"),
                       overwrite_report=True)
    assert result.status == "FAILED" and result.report is None
    assert result.error.startswith("OutputNotWritableError: ")
    assert "is job 0's input, which the run's report would replace" in result.error
    assert (tmp_path / "in" / "rgb.tif").read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_run_that_fails_as_a_whole_reports_a_readable_error(tmp_path: Path):
    """The execution itself fails (here: the manifest vanished after validation): the
    result carries 'type: message', not the raw Lambda error JSON with its stack trace."""
    from pipeline.runner import run_local

    result = run_local(str(tmp_path / "gone.json"), workers=1,
                       report=str(tmp_path / "r.json"))
    assert result.status == "FAILED" and result.report is None and not result.ok
    assert result.error.startswith("InputNotFoundError: ")
    assert "gone.json" in result.error
    assert "stackTrace" not in result.error and "\n" not in result.error
    assert not (tmp_path / ".tiffpipe-work").exists()


@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_if_exists_skips_or_fails_a_job_whose_output_exists(tmp_path: Path, interpreter: str):
    """A job whose output exists: overwritten (the default), skipped (the output left as it
    was: SKIPPED in the report, not a failure) or failed (OutputExistsError, the output left
    as it was), each decided by PlanJob before any work; the other jobs are unaffected. The
    state machine's Skipped branch on both engines."""
    from pipeline.runner import run_local

    _inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("skip.tif", "fail.tif", "overwrite.tif"):
        (out / name).write_bytes(b"an earlier run's output")
    blur = [{"op": "gaussian_blur", "sigma": SIGMA}]
    jobs = [{"input": "in/rgb.tif", "output": f"out/{name}", "ops": blur, "if_exists": mode}
            for name, mode in (("skip.tif", "skip"), ("fail.tif", "fail"),
                               ("overwrite.tif", "overwrite"), ("new.tif", "skip"))]
    (tmp_path / "x.json").write_text(json.dumps({
        "defaults": {"tile": 128, "output_options": {"tile": 64}}, "jobs": jobs}))
    result = run_local(str(tmp_path / "x.json"), 2, contact_sheet=True,
                       interpreter=interpreter)
    report = result.report
    assert report is not None
    assert [j["status"] for j in report["jobs"]] == ["SKIPPED", "FAILED", "SUCCEEDED",
                                                     "SUCCEEDED"]
    assert (report["succeeded"], report["failed"], report["skipped"]) == (2, 1, 1)
    assert report["jobs"][0]["message"].startswith("the output exists already")
    assert report["jobs"][1]["error"]["type"] == "OutputExistsError"
    assert "remove it, or set if_exists to overwrite or skip" in \
        report["jobs"][1]["error"]["message"]
    for name in ("skip.tif", "fail.tif"):
        assert (out / name).read_bytes() == b"an earlier run's output"
    expected = [cv2.GaussianBlur(p, (0, 0), SIGMA) for p in _pages(tmp_path / "in" / "rgb.tif")]
    for name in ("overwrite.tif", "new.tif"):
        for got, want in zip(_pages(out / name), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert result.contact_sheet and os.path.getsize(result.contact_sheet) > 0
    title, rows = ui.summary_rows(report)
    assert "2 succeeded, 1 failed, 1 skipped" in title
    assert rows[0][1] == "SKIPPED" and rows[0][-1] == str(out / "skip.tif")


RACE_MODULE = "tiffpipe_test_race"
RACE_SOURCE = """
import os

def publish_first(tile, path):
    # another writer publishes the job's output while the job runs (once: the first tile)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return tile
    os.write(fd, b"the other writer's output")
    os.close(fd)
    return tile
"""


@pytest.mark.parametrize("interpreter", ["direct", "moto"])
def test_if_exists_holds_when_the_output_appears_while_the_job_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interpreter: str):
    """The output is not there when PlanJob looks, and another writer publishes it while
    the job runs (a user op does, from its first tile): skip and fail leave the other
    writer's file as it is (SKIPPED with why, OutputExistsError), overwrite replaces it; a
    fused job (published by ProcessJob) and one of batches (by Merge) alike. No temporary
    file is left beside the outputs."""
    from pipeline.core import custom
    from pipeline.runner import run_local

    (tmp_path / f"{RACE_MODULE}.py").write_text(RACE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    _inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    names = [(f"{mode}-{kind}.tif", mode, fuse) for mode in ("skip", "fail", "overwrite")
             for kind, fuse in (("fused", True), ("batches", False))]
    jobs = [{"input": "in/rgb.tif", "output": f"out/{name}", "if_exists": mode, "fuse": fuse,
             "ops": [{"op": "custom", "function": f"{RACE_MODULE}:publish_first",
                      "params": {"path": str(out / name)}}],
             "output_options": {"compression": "zstd"}} for name, mode, fuse in names]
    (tmp_path / "x.json").write_text(json.dumps({"jobs": jobs}))
    log = io.StringIO()
    try:
        result = run_local(str(tmp_path / "x.json"), 2, interpreter=interpreter,
                           listener=ui.RunProgress([], stream=log), contact_sheet=True)
    finally:
        custom.load.cache_clear()
    report = result.report
    assert report is not None
    by_name = {Path(j["output"]).name: j for j in report["jobs"]}
    assert (report["succeeded"], report["failed"], report["skipped"]) == (2, 2, 2)
    for name, mode, _ in names:
        job = by_name[name]
        if mode == "skip":
            assert job["status"] == "SKIPPED", job
            assert job["message"].startswith("the output appeared while the job ran")
        elif mode == "fail":
            assert job["status"] == "FAILED" and job["error"]["type"] == "OutputExistsError"
            assert "appeared while the job ran (if_exists: fail)" in job["error"]["message"]
            assert str(out / name) in job["error"]["message"]
        else:
            assert job["status"] == "SUCCEEDED"
        if mode == "overwrite":
            for got, want in zip(_pages(out / name), _pages(tmp_path / "in" / "rgb.tif"),
                                 strict=True):
                np.testing.assert_array_equal(got, want)
        else:
            assert (out / name).read_bytes() == b"the other writer's output"
    assert sorted(os.listdir(out)) == sorted(name for name, _, _ in names)
    skipped = [n for n, j in enumerate(report["jobs"]) if j["status"] == "SKIPPED"]
    for n in skipped:
        assert f"job {n}: skipped, its output appeared while it ran (if_exists: skip)" \
            in log.getvalue()
    # the contact sheet says why each skipped job's output is not this run's
    rows = contact_sheet.sheet_rows(report, read_manifest(str(tmp_path / "x.json")))
    assert sorted(r.job for r in rows if r.status == "SKIPPED") == skipped
    assert all(r.message.startswith("the output appeared while the job ran")
               for r in rows if r.status == "SKIPPED")
    assert result.contact_sheet and os.path.getsize(result.contact_sheet) > 0


def test_a_run_leaves_no_earlier_runs_report_or_sheet_as_its_own(tmp_path: Path, monkeypatch):
    """After a run, the report and contact sheet at its paths are its own or none: a run that
    fails before its report removes the last run's report (which said that run's jobs
    succeeded) and sheet; a run without a sheet removes the last one's sheet, and says so even
    with --quiet. A file at the report's path that is no run's report is not removed."""
    from pipeline import runner

    _inputs(tmp_path)
    report, sheet = tmp_path / "m.report.json", tmp_path / "m.report.contact.png"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1"]) == 0
    assert report.exists() and sheet.exists() and "removed" not in err.getvalue()
    first, made = json.loads(report.read_text())["run_id"], sheet.read_bytes()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["run", str(tmp_path / "m.json"), "--workers", "1", "--quiet",
                         "--no-contact-sheet"]) == 0
    assert json.loads(report.read_text())["run_id"] != first and not sheet.exists()
    assert f"tiffpipe: removed {sheet}: an earlier run's, and this run wrote none" in \
        err.getvalue()
    # the whole run fails (its manifest gone after validation): no report, no sheet
    sheet.write_bytes(made)  # an earlier run's sheet
    result = runner.run_local(str(tmp_path / "gone.json"), 1, report=str(report))
    assert result.status == "FAILED" and result.report is None
    assert result.removed == [str(report), str(sheet)]
    assert not report.exists() and not sheet.exists()
    # a report of this very run (its run_id) is never removed
    monkeypatch.setattr(runner, "new_run_id", lambda: "r-this")
    report.write_text(json.dumps({"run_id": "r-this", "jobs": []}))
    result = runner.run_local(str(tmp_path / "gone.json"), 1, report=str(report))
    assert result.removed == [] and report.exists()
    # nor a file there that is not a run's report (--report given a user's own file, and
    # the run told to replace it)
    for text in ('{"notes": "mine"}', "not JSON at all"):
        report.write_text(text)
        result = runner.run_local(str(tmp_path / "gone.json"), 1, report=str(report),
                                  overwrite_report=True)
        assert result.removed == [] and report.read_text() == text


# --- demo ---------------------------------------------------------------------------------------


def _demo_expected(sample: list[np.ndarray], tmp_path: Path) -> dict[str, list[np.ndarray]]:
    """What OpenCV gives on the demo's sample pages for each of the demo's jobs (its ops
    written out here, pipeline/demo.py), as the outputs read back. The JPEG job: the exact
    result encoded by tifffile as the demo asks (quality 88, tiles of 512) and decoded."""
    def gray(img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if img.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)

    def mask(img: np.ndarray) -> np.ndarray:
        img = cv2.dilate(cv2.medianBlur(gray(img), 5), np.ones((3, 3), np.uint8), iterations=2)
        return cv2.threshold(img, 140, 255, cv2.THRESH_BINARY)[1]

    page = sample[0]
    sharpened = cv2.addWeighted(page, 2.5, cv2.GaussianBlur(page, (0, 0), 3), -1.5, 0)
    tifffile.imwrite(tmp_path / "sharpened.ref.tif", sharpened, tile=(512, 512),
                     photometric="rgb", compression="jpeg", compressionargs={"level": 88},
                     metadata=None)
    return {"out/blurred.tif": [cv2.GaussianBlur(p, (0, 0), 2.5) for p in sample],
            "out/sharpened.jpeg.tif": read_pages(tmp_path / "sharpened.ref.tif"),
            "out/mask.tif": [mask(sample[0]), mask(sample[2])]}


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture):
    folder = tmp_path / "demo"
    assert cli.main(["demo", "--dir", str(folder), "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"sample and manifest ready: {folder / 'manifest.json'}" in err
    assert "3 succeeded, 0 failed" in out
    assert json.loads((folder / "manifest.json").read_text()) == DEMO_MANIFEST
    sample = read_pages(folder / "sample.tif")
    assert [p.shape[:2] for p in sample] == [(s.height, s.width) for s in SAMPLE_PAGES]
    expected = _demo_expected(sample, tmp_path)
    assert set(expected) == {job["output"] for job in DEMO_MANIFEST["jobs"]}
    for job in DEMO_MANIFEST["jobs"]:
        got, want = read_pages(folder / job["output"]), expected[job["output"]]
        assert len(got) == len(want) == len(job.get("pages", SAMPLE_PAGES)), job["output"]
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.dtype == w.dtype and g.shape == w.shape, (job["output"], i)
            assert np.array_equal(g, w), (job["output"], i)
    report = json.loads((folder / "manifest.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED"] * 3
    assert not (folder / ".tiffpipe-work").exists()


def test_the_line_of_a_run_that_failed_with_no_report_is_one_line():
    """A run's error of several lines (a ManifestError, each problem a line; a JSON error's
    excerpt and caret) was written as it was into the one line a run that failed with no
    report says (even with --quiet): it is one line, its problems after its head."""
    from pipeline.core.manifest import load_manifest
    from pipeline.errors import ManifestError
    from pipeline.runner import RunResult

    with pytest.raises(ManifestError) as invalid:
        load_manifest('{"jobs": [1,]}', "/data/m.json", "/data")
    result = RunResult("r1", "FAILED", None, "/data/m.report.json", "/w", 1.0,
                       str(invalid.value))
    assert "\n" in result.error
    assert cli._failed_line(result) == (
        "tiffpipe: the run failed: /data/m.json: 1 problem(s) in the manifest: line 1, column "
        "13: invalid JSON: Expecting value; a trailing comma (line 1, column 12) before ]: "
        'remove it, JSON takes no comma after the last item | {"jobs": [1,]}')


# --- what a script driving tiffpipe relies on ----------------------------------------------

def test_a_manifest_of_no_job_runs_nothing_and_exits_0(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture):
    """A generated manifest with no job (a script's list of today's new files: none) was
    refused as invalid (exit 2), while a scan that finds nothing new exits 0: now the same,
    a report of no job and exit 0, a warning line unless --quiet, no contact sheet."""
    manifest = tmp_path / "today.json"
    manifest.write_text('{"jobs": []}')
    assert cli.main(["validate", str(manifest)]) == 0
    assert f"{manifest}: valid, 0 job(s)" in capsys.readouterr().out
    # (--inputs said "their inputs' page headers read: " and nothing after the colon)
    assert cli.main(["validate", "--inputs", str(manifest)]) == 0
    assert capsys.readouterr().out == f"{manifest}: valid, 0 job(s): no job, no input to read\n"
    assert cli.main(["run", str(manifest), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert f"tiffpipe: {manifest} lists no job: nothing to do" in err, err
    assert out.splitlines()[-1] == f"report: {tmp_path / 'today.report.json'}", out
    report = json.loads((tmp_path / "today.report.json").read_text())
    assert (report["jobs"], report["succeeded"], report["failed"]) == ([], 0, 0)
    assert not (tmp_path / "today.report.contact.png").exists()
    assert cli.main(["run", str(manifest), "--workers", "1", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def _piped(text: str) -> int:
    """The read end of a pipe holding ``text`` (its writer closed), as a shell's ``|``."""
    read, write = os.pipe()
    os.write(write, text.encode())
    os.close(write)
    return read


def test_a_manifest_on_stdin_or_in_a_pipe_is_read_once_and_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``generate | tiffpipe run /dev/stdin`` failed "got an empty file" (exit 1, no report):
    the run read its manifest twice, and the pipe was empty the second time; ``-`` was a
    file not found. A manifest that is no regular file is now read once and run from a copy,
    its relative paths from the current folder, its report ``stdin.report.json`` there for
    ``-``; its problems name it as given (``<stdin>``); the copy is removed after."""
    import tempfile

    manifest = _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with open(_piped(json.dumps(manifest)), encoding="utf-8") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli.main(["run", "-", "--workers", "2", "--quiet"]) == 0, capsys.readouterr().err
    _check_outputs(tmp_path)
    report = json.loads((tmp_path / "stdin.report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["SUCCEEDED", "SUCCEEDED"]

    fds = [_piped(json.dumps(manifest)) for _ in range(2)]
    pipes = [f"/proc/self/fd/{fd}" for fd in fds]  # (pipes: /dev/stdin's kind)
    try:
        assert cli.main(["validate", pipes[0]]) == 0
        assert capsys.readouterr().out.startswith(f"{pipes[0]}: valid, 2 job(s)")
        assert cli.main(["run", pipes[1], "--workers", "2", "--quiet", "--report",
                         str(tmp_path / "piped.json")]) == 0, capsys.readouterr().err
    finally:
        for fd in fds:
            os.close(fd)
    assert json.loads((tmp_path / "piped.json").read_text())["succeeded"] == 2

    with open(_piped('{"jobs": ['), encoding="utf-8") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli.main(["run", "-", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(
        "tiffpipe: invalid manifest <stdin>: 1 problem(s) in the manifest:\n  line 1, column 11")
    assert list(temp.iterdir()) == []  # every copy removed


def test_an_s3_manifest_where_s3_cannot_be_reached_exits_75(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """run, validate and estimate of an s3:// manifest whose endpoint cannot be reached
    exited 2, as an invalid manifest does, while start and status exit 75 (try again
    later) for it: 75 now, by one test of the error; a manifest not there is still 2."""
    from pipeline.adapters import storage

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # (no backoff: nothing answers anyway)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_client", None)
    for command in (["run", "--workers", "1"], ["validate"], ["estimate"]):
        assert cli.main([command[0], "s3://tp-nowhere/m.json", *command[1:]]) == 75
        assert "Could not connect to the endpoint URL" in capsys.readouterr().err
    assert cli.main(["validate", str(tmp_path / "none.json")]) == 2

def test_a_piped_manifests_report_and_work_are_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``tiffpipe run <(gen)`` without --report exited 2, "cannot write in /dev/fd": the
    default report of a manifest in a pipe was beside the pipe's path (``/dev/stdin``'s, as
    root, in /dev); its default work folder was in the temp folder, beside the copy (another
    disk than the data's; a ``kill -9`` left it there). Both are now in the current folder,
    the report named by the pipe's stem, as for a manifest there; only the copy is in the
    temp folder, and it is removed after, by the command and by pipeline.run."""
    import tempfile

    import pipeline

    write_sample(str(tmp_path / "a.tif"), [SamplePage(64, 64, 1, "uint8")], tile=64)
    manifest = json.dumps({"jobs": [{"input": "a.tif", "output": "out.tif"}]})
    monkeypatch.chdir(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    fd = _piped(manifest)
    try:
        assert cli.main(["run", f"/proc/self/fd/{fd}", "--workers", "1",
                         "--keep-work"]) == 0, capsys.readouterr().err
    finally:
        os.close(fd)
    report = tmp_path / f"{fd}.report.json"
    assert f"report: {report}\n" in capsys.readouterr().out
    assert json.loads(report.read_text())["succeeded"] == 1
    [work] = (tmp_path / ".tiffpipe-work").iterdir()  # (kept: --keep-work)
    assert list(temp.iterdir()) == []

    fd = _piped(manifest.replace("out.tif", "again.tif"))
    try:
        result = pipeline.run(f"/proc/self/fd/{fd}", workers=1, keep_work=True)
    finally:
        os.close(fd)
    assert result.ok and result.report_url == str(tmp_path / f"{fd}.report.json")
    assert result.work is not None and os.path.dirname(result.work) == str(work.parent)
    assert list(temp.iterdir()) == []
