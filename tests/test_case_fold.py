"""Paths that differ only in case, on file systems that ignore case (APFS, NTFS by default),
or only in Unicode normalization, on file systems that ignore it (APFS, HFS+).

The manifest's checks (pipeline/core/manifest.py) take the file system's answer as a key
(``fold``); the answer comes from ``storage.ignores_case``, which asks each folder. This
machine's file systems keep case (ext4), so: the probe is run on real folders that keep case;
its "ignores case" branch on a real folder where a name's other-case spelling is a hard link
to it (to the probe, exactly what a folder ignoring case shows); the checks with the probe's
answer given to them; and, where ``TIFFPIPE_CASELESS_DIR`` names a folder on a file system
that ignores case (an exFAT image mounted through FUSE, docs/manifest-and-ops.md), the probe
and ``tiffpipe validate`` there too. Normalization alike (``storage.ignores_normalization``):
ext4 keeps NFC and NFD names apart, so its "ignores" branch is a name's NFC spelling hard
linked to its NFD one.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
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


def named(path: str) -> str:
    """A location as a problem names it first: quoted, its letters as written (the spellings
    of one file then follow in JSON's escapes, which show how they differ)."""
    return json.dumps(path, ensure_ascii=False)


def shown(*parts: str) -> str:
    return named(os.path.join(BASE, *parts))


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
         "overwrite it: give the output another name (or another folder)"),
        (f"jobs[2].output: same location as the input of jobs[1] ({at('in', 'b.tif')}): "
         f"{one_file(at('IN', 'B.tif'), at('in', 'b.tif'))}; the output would overwrite it: "
         "give the output another name (or another folder)")]
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


def _one_file(folder: Path, name: str = "Scan.tif", other: str = "sCAN.TIF") -> Path:
    """``folder``, made one the probe finds ignoring case (or, given ``NFD, NFC``, Unicode
    normalization): ``other``, another spelling of ``name``, is a hard link to it (the same
    file, as a folder ignoring that shows it)."""
    folder.mkdir()
    (folder / name).write_bytes(b"x")
    os.link(folder / name, folder / other)
    return folder


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
    fold = storage.name_fold()
    assert fold(str(tmp_path / "Out" / "A.tif")) == str(tmp_path / "Out" / "A.tif")


def test_the_probe_finds_a_folder_whose_names_are_found_in_either_case(tmp_path: Path):
    """A name's other-case spelling that reaches the same file (os.stat identity) is what a
    folder ignoring case shows: made here with a hard link. The folders under it, and those
    not made yet, are judged by it; the folders above keep case."""
    caseless = _one_file(tmp_path / "Volume")
    (caseless / "Sub").mkdir()
    (caseless / "Sub" / "Other.tif").write_bytes(b"x")  # kept apart: not the same file
    (caseless / "Sub" / "oTHER.TIF").write_bytes(b"y")
    assert storage.ignores_case(str(caseless)) is True
    assert storage.ignores_case(str(caseless / "Sub")) is False
    assert storage.ignores_case(str(caseless / "New" / "Deeper")) is True
    fold = storage.name_fold()
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
    ignores = _one_file(tmp_path / "ignores")
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

    ignores = _one_file(tmp_path / "ignores")
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


def test_a_scan_run_reports_the_inputs_it_left_out_for_one_output_name(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    """A local run of a scan into a folder that finds names in either case: A.tif and a.tif
    are left out (one output there); the report's ``scan`` and the summary count them apart
    from the TIFF done before, so a run with no job does not read as an empty folder."""
    import numpy as np
    import tifffile

    (tmp_path / "in").mkdir()
    for name in ("A.tif", "a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / "in" / name, np.full((16, 16), 10, np.uint8))
    out = _one_file(tmp_path / "out")
    (out / "b.tif").write_bytes(b"an earlier run's output")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"scan": {"input": "in", "output": "out"}}))
    with caplog.at_level(logging.WARNING, "pipeline.steps.planning"):
        assert cli.main(["run", str(manifest), "--workers", "1"]) == 0
    said = capsys.readouterr()
    assert "left out 1 group(s) of inputs" in caplog.text
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["scan"] == {
        "input": str(tmp_path / "in"), "output": str(out), "tiffs": 3, "done_before": 1,
        "left_out": {"name_collision": 2, "link_outside": 0, "link_to_nothing": 0,
                     "name_not_utf8": 0},
        "jobs": 0}
    assert (f"scan of {tmp_path / 'in'} into {out}: 3 TIFF(s), 1 done before, 2 left out "
            "(2 whose outputs would be one file), 0 new") in said.out.splitlines()


# --- names that differ only in Unicode normalization -------------------------------------
# "café" with é as one character (U+00E9, NFC) or as e and a combining accent (U+0301, NFD):
# one file on APFS and HFS+, two on ext4. json.dumps (ensure_ascii) shows the escapes.

NFC, NFD = "caf\u00e9.tif", "cafe\u0301.tif"


def nfc(path: str) -> str:
    """The fold of a file system that ignores Unicode normalization (APFS's, keeping case)."""
    return unicodedata.normalize("NFC", path)


def one_form(a: str, b: str, forms: str = "NFD NFC") -> str:
    """What a problem says of two spellings of one file differing only in normalization,
    ``forms`` theirs."""
    form_a, form_b = forms.split()
    return (f"{a} ({form_a}) and {b} ({form_b}) differ only in Unicode normalization (one "
            "accented letter written as one character or as two), which the file system there "
            "ignores, so they are one file")


def test_outputs_differing_only_in_normalization_are_one_output_where_it_is_ignored():
    data = {"jobs": [{"input": "in/1.tif", "output": f"out/{NFC}"},
                     {"input": "in/2.tif", "output": f"out/{NFD}"},
                     {"input": f"in/{NFD}", "output": f"in/{NFC}"}]}
    assert problems(data, fold=nfc) == [
        (f"jobs[1].output: same output as jobs[0] ({shown('out', NFC)}): "
         f"{one_form(at('out', NFD), at('out', NFC))}; one would replace the other: "
         "give one of them another name"),
        (f"jobs[2].output: same location as its own input ({shown('in', NFD)}): "
         f"{one_form(at('in', NFC), at('in', NFD), 'NFC NFD')}; the output would overwrite "
         "it: give the output another name (or another folder)")]
    # where the file system keeps them apart (no fold: ext4's answer), three outputs
    assert [s.output for s in parse_manifest_or_scan(data, "m.json", BASE)] == [
        os.path.join(BASE, "out", NFC), os.path.join(BASE, "out", NFD),
        os.path.join(BASE, "in", NFC)]


def test_outputs_differing_in_case_and_normalization_where_both_are_ignored():
    upper = "CAFE\u0301.tif"
    data = {"jobs": [{"input": "in/1.tif", "output": f"out/{upper}"},
                     {"input": "in/2.tif", "output": f"out/{NFC}"}]}
    both = storage._canonical  # (APFS's fold of a name: NFD, case-folded, then NFC)
    assert problems(data, fold=lambda path: both(path, True)) == [
        (f"jobs[1].output: same output as jobs[0] ({shown('out', upper)}): {at('out', NFC)} "
         f"(NFC) and {at('out', upper)} (NFD) differ only in case and Unicode normalization "
         "(one accented letter written as one character or as two), which the file system "
         "there ignores, so they are one file; one would replace the other: give one of them "
         "another name")]
    # ignoring only normalization (or only case), two outputs
    assert len(parse_manifest_or_scan(data, "m.json", BASE, fold=nfc)) == 2
    assert len(parse_manifest_or_scan(data, "m.json", BASE, fold=str.casefold)) == 2


def test_a_scan_of_s3_keys_differing_only_in_normalization_into_a_folder_ignoring_it():
    local = ScanSpec(input="s3://b/in/", output=os.path.join(BASE, "out"))
    inputs = [f"s3://b/in/{NFD}", f"s3://b/in/{NFC}", "s3://b/in/b.tif"]  # (sorted)
    left_out: list[str] = []
    assert [j.input for j in scan_jobs(local, inputs, [], fold=nfc, left_out=left_out)] == [
        "s3://b/in/b.tif"]
    out = local.output_for
    assert left_out == [
        (f"{named(inputs[0])} and {named(inputs[1])}, whose outputs are one file: "
         f"{one_form(json.dumps(out(NFC)), json.dumps(out(NFD)), 'NFC NFD')}; one would "
         "replace the "
         "other: rename one of the inputs, or give scan.output a folder on a file system that "
         "keeps names differing in Unicode normalization apart")]
    assert len(scan_jobs(local, inputs, [])) == 3
    # an output written in the other form is done where the folder ignores normalization
    assert scan_jobs(local, inputs[:1], [out(NFC)], fold=nfc) == []
    assert len(scan_jobs(local, inputs[:1], [out(NFC)])) == 1
    s3 = ScanSpec(input="s3://b/in/", output="s3://b/out/")
    assert len(scan_jobs(s3, inputs, [], fold=nfc)) == 3


def test_the_probe_finds_that_a_real_folder_here_keeps_normalizations_apart(tmp_path: Path):
    """An empty folder: a probe file made in NFD is not found in NFC (and is removed); a
    folder holding a name with an accent, looked up in the other form (two files here);
    a folder not made yet: judged by the folder above."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / NFD).write_bytes(b"d")
    (tmp_path / "two" / NFC).write_bytes(b"c")
    known: dict[str, bool] = {}
    for folder in (tmp_path / "empty", tmp_path / "two", tmp_path / "empty" / "not" / "yet"):
        assert storage.ignores_normalization(str(folder), known) is False
    assert str(tmp_path / "empty" / "not") in known  # each folder asked once
    assert os.listdir(tmp_path / "empty") == []
    assert sorted(os.listdir(tmp_path / "two")) == sorted([NFD, NFC])
    fold = storage.name_fold()
    assert fold(str(tmp_path / "Out" / NFD)) == str(tmp_path / "Out" / NFD)


def test_the_probe_finds_a_folder_whose_names_are_found_in_either_normalization(
        tmp_path: Path):
    normless = _one_file(tmp_path / "Volume", NFD, NFC)
    (normless / "Sub").mkdir()
    (normless / "Sub" / NFD).write_bytes(b"x")  # kept apart: not the same file
    (normless / "Sub" / NFC).write_bytes(b"y")
    assert storage.ignores_normalization(str(normless)) is True
    assert storage.ignores_normalization(str(normless / "Sub")) is False
    assert storage.ignores_normalization(str(normless / "New" / "Deeper")) is True
    fold = storage.name_fold()  # normalized, case kept (the folder keeps case)
    assert fold(str(normless / "Out" / f"X{NFD}")) == str(normless / "Out" / f"X{NFC}")
    assert fold(str(normless / "Sub" / NFD)) == str(normless / "Sub" / NFD)


def test_read_manifest_refuses_outputs_one_file_only_where_normalization_is_ignored(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    jobs = [("in/1.tif", f"out/{NFC}"), ("in/2.tif", f"out/{NFD}")]
    keeps = tmp_path / "keeps"
    keeps.mkdir()
    assert [j.output for j in read_manifest(_manifest(keeps, jobs))] == [
        str(keeps / "out" / NFC), str(keeps / "out" / NFD)]
    manifest = _manifest(_one_file(tmp_path / "ignores", NFD, NFC), jobs)
    assert cli.main(["validate", manifest]) == 2
    out, err = capsys.readouterr()
    a, b = (json.dumps(str(tmp_path / "ignores" / "out" / n)) for n in (NFD, NFC))
    assert (f"jobs[1].output: same output as jobs[0] ({named(json.loads(b))}): "
            f"{one_form(a, b)}; one would "
            "replace the other: give one of them another name") in err, err
    assert out == ""


def test_outputs_differing_only_in_normalization_are_two_files_on_ext4(tmp_path: Path):
    """A run on this machine's ext4, which keeps NFC and NFD names apart: both jobs run, each
    its own file (one inverted, one not)."""
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", np.full((16, 16), 10, np.uint8))
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [
        {"input": "in.tif", "output": f"out/{NFC}", "ops": [{"op": "invert"}]},
        {"input": "in.tif", "output": f"out/{NFD}"}]}))
    assert cli.main(["run", str(tmp_path / "m.json"), "--quiet"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted([NFC, NFD])
    assert (tifffile.imread(tmp_path / "out" / NFC) == 245).all()
    assert (tifffile.imread(tmp_path / "out" / NFD) == 10).all()


# --- links: the checks of what links make one file fold names too -------------------------


def _linked_problems(folder: Path, jobs: list[tuple[str, str]]) -> list[str]:
    with pytest.raises(ManifestError) as err:
        read_manifest(_manifest(folder, jobs))
    return err.value.problems


def test_outputs_and_inputs_one_file_through_a_link_and_a_folded_name(tmp_path: Path):
    """``olink`` a link to ``o``: ``olink/a.tif`` and ``O/A.tif`` are one output where the
    folder ignores case, and ``olink/café.tif`` (NFC) is the input ``o/café.tif`` (NFD)
    where it ignores normalization; the manifest's check of spellings sees neither."""
    jobs = [("in/1.tif", "olink/a.tif"), ("in/2.tif", "O/A.tif")]
    caseless = _one_file(tmp_path / "caseless")
    (caseless / "o").mkdir()
    (caseless / "olink").symlink_to(caseless / "o")
    o, upper = str(caseless / "o"), str(caseless / "O")
    assert _linked_problems(caseless, jobs) == [
        (f"jobs[1].output: {upper}/A.tif is, through a link, the output of jobs[0] "
         f"({o}/a.tif): {one_file(json.dumps(upper + '/A.tif'), json.dumps(o + '/a.tif'))}: "
         "one output would replace the other; give it another path")]
    assert _linked_problems(caseless, [jobs[0], ("in/2.tif", "O/A.tif/b.tif")]) == [
        (f"jobs[1].output: {upper}/A.tif/b.tif is, through a link, inside the output of "
         f"jobs[0] ({o}/a.tif): {one_file(json.dumps(upper + '/A.tif'), json.dumps(o + '/a.tif'))}"
         ", a file, not a folder: give one of them another path")]
    o = _one_file(tmp_path / "o", NFD, NFC)  # its input, o/café.tif (NFD), hard linked
    (tmp_path / "olink").symlink_to(o)
    assert _linked_problems(tmp_path, [(f"o/{NFD}", "out/x.tif"),
                                       ("in/2.tif", f"olink/{NFC}")]) == [
        (f"jobs[1].output: {tmp_path}/olink/{NFC} is, through a link, the input of jobs[0] "
         f"({o}/{NFD}): {one_form(json.dumps(f'{o}/{NFC}'), json.dumps(f'{o}/{NFD}'), 'NFC NFD')}"
         ": the output would replace it; give it another path")]
    keeps = tmp_path / "keeps"  # two files where the folder keeps case and forms apart
    keeps.mkdir()
    (keeps / "o").mkdir()
    (keeps / "olink").symlink_to(keeps / "o")
    assert len(read_manifest(_manifest(keeps, jobs[:2] + [("in/3.tif", f"olink/{NFC}"),
                                                          ("in/4.tif", f"o/{NFD}")]))) == 4


def test_a_scan_output_through_a_link_inside_its_input_spelled_in_another_case(
        tmp_path: Path):
    caseless = _one_file(tmp_path / "caseless")
    (caseless / "scans").mkdir()
    (caseless / "slink").symlink_to(caseless / "scans")
    (caseless / "m.json").write_text(json.dumps({"scan": {"input": "Scans",
                                                          "output": "slink/done"}}))
    with pytest.raises(ManifestError) as err:
        read_manifest(str(caseless / "m.json"))
    scans, upper = json.dumps(str(caseless / "scans")), json.dumps(str(caseless / "Scans"))
    assert err.value.problems == [
        (f"scan.output: {caseless}/slink/done is, through a link, {caseless}/scans/done, which "
         f"is inside scan.input ({caseless}/Scans: {caseless}/Scans): {one_file(scans, upper)}"
         ": outputs would be scanned as inputs; give an output folder apart from the input")]
