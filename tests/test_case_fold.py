"""Paths that differ only in case, on file systems that ignore case (APFS, NTFS by default).

The manifest's checks (pipeline/core/manifest.py) take the file system's answer as a key
(``fold``); the answer comes from ``storage.ignores_case``, which asks each folder. This
machine's file systems keep case (ext4), so: the probe is run on real folders that keep case;
its "ignores case" branch on a real folder where a name's other-case spelling is a hard link
to it (to the probe, exactly what a folder ignoring case shows); the checks with the probe's
answer given to them; and, where ``TIFFPIPE_CASELESS_DIR`` names a folder on a file system
that ignores case (an exFAT image mounted through FUSE, docs/manifest-and-ops.md), the probe
and ``tiffpipe validate`` there too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.adapters import storage
from pipeline.core.manifest import ScanSpec, parse_manifest_or_scan, scan_jobs
from pipeline.errors import ManifestError
from pipeline.steps.common import read_manifest

BASE = os.path.abspath(os.sep + "m")


def problems(data: dict, fold=str.casefold) -> list[str]:
    """The manifest's problems, its folders taken to ignore case (``fold``)."""
    with pytest.raises(ManifestError) as err:
        parse_manifest_or_scan(data, "m.json", BASE, fold=fold)
    return err.value.problems


def at(*parts: str) -> str:
    return json.dumps(os.path.join(BASE, *parts))


def one_file(a: str, b: str) -> str:
    """What a problem says of two spellings of one file where the file system ignores case."""
    return (f"{a} and {b} differ only in case, which the file system there ignores, so they "
            "are one file")


# --- the checks, given the file system's answer ----------------------------------------


def test_outputs_differing_only_in_case_are_one_output_where_case_is_ignored():
    data = {"jobs": [{"input": "in/1.tif", "output": "out/a.tif"},
                     {"input": "in/2.tif", "output": "out/b.tif"},
                     {"input": "in/3.tif", "output": "Out/A.TIF"}]}
    assert problems(data) == [
        (f"jobs[2].output: same output as jobs[0] ({at('out', 'a.tif')}): "
         f"{one_file(at('Out', 'A.TIF'), at('out', 'a.tif'))}; one would replace the other: "
         "give one of them another name")]
    # where the file system keeps case (no fold: ext4's answer), three outputs
    specs = parse_manifest_or_scan(data, "m.json", BASE)
    assert [s.output for s in specs] == [os.path.join(BASE, *p) for p in (
        ("out", "a.tif"), ("out", "b.tif"), ("Out", "A.TIF"))]


def test_an_output_differing_from_an_input_only_in_case_would_overwrite_it():
    data = {"jobs": [{"input": "scans/A.tif", "output": "scans/a.tif"},
                     {"input": "in/b.tif", "output": "out/b.tif"},
                     {"input": "in/c.tif", "output": "IN/B.tif"}]}
    assert problems(data) == [
        (f"jobs[0].output: same location as its own input ({at('scans', 'A.tif')}): "
         f"{one_file(at('scans', 'a.tif'), at('scans', 'A.tif'))}; the output would "
         "overwrite it; give the output another name"),
        (f"jobs[2].output: same location as the input of jobs[1] ({at('in', 'b.tif')}): "
         f"{one_file(at('IN', 'B.tif'), at('in', 'b.tif'))}; the output would overwrite it; "
         "give the output another name")]
    assert len(parse_manifest_or_scan(data, "m.json", BASE)) == 3


def test_an_output_inside_another_output_spelled_in_another_case():
    data = {"jobs": [{"input": "1.tif", "output": "out/a.tif"},
                     {"input": "2.tif", "output": "OUT/A.tif/b.tif"}]}
    assert problems(data) == [
        (f"jobs[1].output: {at('OUT', 'A.tif', 'b.tif')} is inside the output of jobs[0] "
        f"({at('out', 'a.tif')}): {at('OUT', 'A.tif')} and {at('out', 'a.tif')} differ only "
        "in case, which the file system there ignores, so they are one file, a file, not a "
        "folder: give one of them another path")]
    assert len(parse_manifest_or_scan(data, "m.json", BASE)) == 2


def test_a_scan_output_inside_its_input_spelled_in_another_case():
    data = {"scan": {"input": "Scans", "output": "scans/done"}}
    assert problems(data) == [
        (f"scan.output: expected a location outside scan.input ({at('Scans')}) and not "
        f"containing it: outputs would be scanned as inputs, got {at('scans', 'done')}")]
    assert isinstance(parse_manifest_or_scan(data, "m.json", BASE), ScanSpec)


def test_s3_keys_keep_their_case_whatever_the_local_folders_do():
    data = {"jobs": [{"input": "s3://b/in/A.tif", "output": "s3://b/out/A.tif"},
                     {"input": "s3://b/in/a.tif", "output": "s3://b/out/a.tif"},
                     {"input": "s3://b/in/c.tif", "output": "s3://b/IN/A.tif"}]}
    specs = parse_manifest_or_scan(data, "m.json", BASE, fold=str.casefold)
    assert [s.output for s in specs] == ["s3://b/out/A.tif", "s3://b/out/a.tif",
                                         "s3://b/IN/A.tif"]



def test_a_scan_of_s3_inputs_differing_only_in_case_into_a_folder_ignoring_case():
    """S3 keeps A.tif and a.tif apart; a local output folder that ignores case would get one
    file for both (the second job to publish skipping or replacing the first's): both are
    left out, named with both outputs, even once one of them is written (the other would be
    taken as done), and the scan's other inputs go on. Where the folder keeps case (no
    fold), two jobs; S3 outputs are never folded."""
    local = ScanSpec(input="s3://b/in/", output=os.path.join(BASE, "out"))
    inputs = ["s3://b/in/A.tif", "s3://b/in/a.tif", "s3://b/in/b.tif",
              "s3://b/in/X/c.tif", "s3://b/in/x/C.TIF"]
    out = local.output_for
    for written in ([], [out("a.tif")]):
        left_out: list[str] = []
        jobs = scan_jobs(local, inputs, written, fold=str.casefold, left_out=left_out)
        assert [j.input for j in jobs] == ["s3://b/in/b.tif"]
        assert left_out == [
            (f"{json.dumps(first)} and {json.dumps(second)}, whose outputs are one file: "
             f"{one_file(json.dumps(out(b)), json.dumps(out(a)))}; one would replace the "
             "other: rename one of the inputs, or give scan.output a folder on a file system "
             "that keeps case")
            for first, second, a, b in (("s3://b/in/A.tif", "s3://b/in/a.tif", "A.tif", "a.tif"),
                                        ("s3://b/in/X/c.tif", "s3://b/in/x/C.TIF", "X/c.tif",
                                         "x/C.TIF"))]
    assert [j.output for j in scan_jobs(local, inputs, [])] == [
        out(rel) for rel in ("A.tif", "X/c.tif", "a.tif", "b.tif", "x/C.TIF")]
    # an output written in the other case is done where the folder ignores case
    assert [j.input for j in scan_jobs(local, inputs[2:3], [out("B.TIF")],
                                       fold=str.casefold)] == []
    s3 = ScanSpec(input="s3://b/in/", output="s3://b/out/")
    assert len(scan_jobs(s3, inputs, [], fold=str.casefold)) == 5


# --- the probe, on real folders ----------------------------------------------------------


def test_the_probe_finds_that_a_real_folder_here_keeps_case(tmp_path: Path):
    (tmp_path / "Scan.tif").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "123").write_bytes(b"x")  # no letter: judged by the folder above
    known: dict[str, bool] = {}
    for folder in (tmp_path, tmp_path / "empty", tmp_path / "digits",
                   tmp_path / "not" / "made" / "yet"):
        assert storage.ignores_case(str(folder), known) is False
    assert known[str(tmp_path / "not" / "made" / "yet")] is False  # each folder asked once
    fold = storage.case_fold()
    assert fold(str(tmp_path / "Out" / "A.tif")) == str(tmp_path / "Out" / "A.tif")


def test_the_probe_finds_a_folder_whose_names_are_found_in_either_case(tmp_path: Path):
    """A name's other-case spelling that reaches the same file (os.stat identity) is what a
    folder ignoring case shows: made here with a hard link. The folders under it, and those
    not made yet, are judged by it; the folders above keep case."""
    caseless = tmp_path / "Volume"
    caseless.mkdir()
    (caseless / "Scan.tif").write_bytes(b"x")
    os.link(caseless / "Scan.tif", caseless / "sCAN.TIF")
    (caseless / "Sub").mkdir()
    (caseless / "Sub" / "Other.tif").write_bytes(b"x")  # kept apart: not the same file
    (caseless / "Sub" / "oTHER.TIF").write_bytes(b"y")
    assert storage.ignores_case(str(caseless)) is True
    assert storage.ignores_case(str(caseless / "Sub")) is False
    assert storage.ignores_case(str(caseless / "New" / "Deeper")) is True
    fold = storage.case_fold()
    assert fold(str(tmp_path / "Volume" / "Out" / "A.tif")) == str(
        tmp_path / "Volume" / "out" / "a.tif")


def _manifest(folder: Path, jobs: list[tuple[str, str]]) -> str:
    path = folder / "m.json"
    path.write_text(json.dumps({"jobs": [{"input": i, "output": o} for i, o in jobs]}))
    return str(path)


def test_read_manifest_asks_the_output_folders(tmp_path: Path, capsys: pytest.CaptureFixture):
    """read_manifest (validate, run, PlanRun) gives the checks the probe's answer: outputs
    differing only in case are two here, one in a folder that finds names in either case."""
    keeps = tmp_path / "keeps"
    keeps.mkdir()
    jobs = [("in/1.tif", "out/A.tif"), ("in/2.tif", "out/a.tif")]
    assert len(read_manifest(_manifest(keeps, jobs))) == 2
    ignores = tmp_path / "ignores"
    ignores.mkdir()
    (ignores / "Scan.tif").write_bytes(b"x")
    os.link(ignores / "Scan.tif", ignores / "sCAN.TIF")
    manifest = _manifest(ignores, jobs)
    assert cli.main(["validate", manifest]) == 2
    out, err = capsys.readouterr()
    a, b = json.dumps(str(ignores / "out" / "a.tif")), json.dumps(str(ignores / "out" / "A.tif"))
    assert (f"jobs[1].output: same output as jobs[0] ({b}): {one_file(a, b)}; one would "
            "replace the other: give one of them another name") in err, err
    assert out == ""


CASELESS = os.environ.get("TIFFPIPE_CASELESS_DIR", "")


@pytest.mark.skipif(not CASELESS, reason="TIFFPIPE_CASELESS_DIR names no folder on a file "
                    "system that ignores case (docs/manifest-and-ops.md)")
def test_on_a_real_file_system_that_ignores_case(tmp_path: Path):
    folder = Path(CASELESS) / f"casefold-{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "In").mkdir()
        (folder / "In" / "a.tif").write_bytes(b"x")
        assert storage.ignores_case(str(folder)) is True
        assert storage.ignores_case(str(folder / "In")) is True
        assert storage.ignores_case(str(tmp_path)) is False
        with pytest.raises(ManifestError) as err:
            read_manifest(_manifest(folder, [("in/A.tif", "IN/a.tif"),
                                             ("In/b.tif", "out/B.tif"),
                                             ("In/c.tif", "OUT/b.tif")]))
        assert [p.split(":")[0] for p in err.value.problems] == [
            "jobs[2].output", "jobs[0].output"], err.value.problems
    finally:
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()


def test_expand_scan_asks_the_local_output_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture):
    """A scan of real TIFFs in S3 (moto) whose keys differ only in case, into a local folder:
    two jobs where the folder keeps case; both left out with a warning naming them, where it
    finds names in either case (the hard link of the probe's test)."""
    import io

    import numpy as np
    import tifffile
    from conftest import moto_s3

    from pipeline.steps.planning import expand_scan

    ignores = tmp_path / "ignores"
    ignores.mkdir()
    (ignores / "Scan.tif").write_bytes(b"x")
    os.link(ignores / "Scan.tif", ignores / "sCAN.TIF")
    with moto_s3(monkeypatch, "tp-case") as s3:
        for key, value in (("in/A.tif", 10), ("in/a.tif", 200)):
            data = io.BytesIO()
            tifffile.imwrite(data, np.full((32, 32), value, np.uint8))
            s3.put_object(Bucket="tp-case", Key=key, Body=data.getvalue())
        keeps = ScanSpec(input="s3://tp-case/in/", output=str(tmp_path / "keeps" / "out"))
        assert [j.output for j in expand_scan(keeps)] == [
            str(tmp_path / "keeps" / "out" / n) for n in ("A.tif", "a.tif")]
        out = ignores / "out"
        with caplog.at_level(logging.WARNING, "pipeline.steps.planning"):
            assert expand_scan(ScanSpec(input="s3://tp-case/in/", output=str(out))) == []
        [said] = [r.getMessage() for r in caplog.records]
        assert (f'left out 1 group(s) of inputs: "s3://tp-case/in/A.tif" and '
                f'"s3://tp-case/in/a.tif", whose outputs are one file: '
                f'{json.dumps(str(out / "a.tif"))} and {json.dumps(str(out / "A.tif"))} '
                "differ only in case") in said, said
    assert not out.exists()
