"""The manifest: validation with every problem at its JSON path, defaults, and path resolution."""

from __future__ import annotations

import json
import os
import sys

import pytest

from pipeline.core.manifest import load_manifest_text, parse_manifest, resolve_location
from pipeline.core.models import DEFAULT_OUTPUT_TILE, DEFAULT_TILE, JobSpec, OutputOptions
from pipeline.core.ops import OPS
from pipeline.errors import ManifestError

BASE = os.path.abspath(os.sep + "m")


def at(*parts: str) -> str:
    return os.path.join(BASE, *parts)


def job(**fields):
    return {"input": "in/a.tif", "output": "out/a.tif", **fields}


def problems_of(data, base: str = BASE) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, "m.json", base)
    assert info.value.source == "m.json"
    return info.value.problems


def one_problem(data, base: str = BASE) -> str:
    problems = problems_of(data, base)
    assert len(problems) == 1, problems
    return problems[0]


# --- valid manifests ----------------------------------------------------------------


def test_defaults_and_overrides_resolve():
    data = {
        "defaults": {
            "pages": [0],
            "ops": [{"op": "gaussian_blur", "sigma": 2}],
            "tile": 2048,
            "output_options": {"compression": "deflate", "level": 9, "tile": 256},
        },
        "jobs": [
            {"input": "in/a.tif", "output": "out/a.tif"},
            {"input": "/data/b.tif", "output": "./out/../out/b.TIFF", "pages": [2, 0],
             "ops": [{"op": "unsharp_mask", "sigma": 1.5}, {"op": "invert"}], "tile": 512,
             "output_options": {"tile": 512}},
            {"input": "s3://bucket/c.tif", "output": "s3://bucket/out/c.tif", "pages": None,
             "output_options": {"level": 3}},
        ],
    }
    specs = parse_manifest(data, "m.json", BASE)
    assert specs == [
        JobSpec(input=at("in", "a.tif"), output=at("out", "a.tif"), pages=[0],
                ops=[{"op": "gaussian_blur", "sigma": 2}], tile=2048,
                output_options=OutputOptions("deflate", 9, 90, 256)),
        JobSpec(input="/data/b.tif", output=at("out", "b.TIFF"), pages=[2, 0],
                ops=[{"op": "unsharp_mask", "sigma": 1.5, "amount": 1.0}, {"op": "invert"}],
                tile=512, output_options=OutputOptions("deflate", 9, 90, 512)),
        JobSpec(input="s3://bucket/c.tif", output="s3://bucket/out/c.tif", pages=None,
                ops=[{"op": "gaussian_blur", "sigma": 2}], tile=2048,
                output_options=OutputOptions("deflate", 3, 90, 256)),
    ]


def test_if_exists_from_defaults_or_the_job():
    specs = parse_manifest({"defaults": {"if_exists": "skip"},
                            "jobs": [job(), job(output="out/b.tif", if_exists="fail")]},
                           "m.json", BASE)
    assert [s.if_exists for s in specs] == ["skip", "fail"]
    [spec] = parse_manifest({"jobs": [job()]}, "m.json", BASE)
    assert spec.if_exists == "overwrite"
    assert JobSpec.from_json(specs[0].to_json()) == specs[0]
    assert one_problem({"jobs": [job(if_exists="keep")]}) == (
        'jobs[0].if_exists: expected one of "overwrite", "skip", "fail", got "keep"')
    assert one_problem({"defaults": {"if_exists": True}, "jobs": [job()]}) == (
        'defaults.if_exists: expected one of "overwrite", "skip", "fail", got true')


def test_builtin_defaults_when_nothing_is_set():
    [spec] = parse_manifest({"jobs": [job()]}, "m.json", BASE)
    assert spec.pages is None
    assert spec.ops == []
    assert spec.tile == DEFAULT_TILE
    assert spec.output_options == OutputOptions("zstd", None, 90, DEFAULT_OUTPUT_TILE)
    assert spec.output_options.level is None  # the encoder picks the codec's default


def test_specs_do_not_share_the_default_lists():
    data = {"defaults": {"pages": [1], "ops": [{"op": "invert"}]}, "jobs": [
        job(), job(output="out/b.tif")]}
    a, b = parse_manifest(data, "m.json", BASE)
    a.pages.append(7)
    a.ops[0]["op"] = "x"
    assert b.pages == [1]
    assert b.ops == [{"op": "invert"}]


def test_relative_paths_resolve_against_an_s3_base():
    data = {"jobs": [{"input": "in/a.tif", "output": "../out/a.tif"},
                     {"input": "/local/b.tif", "output": "s3://other/b.tif"}]}
    a, b = parse_manifest(data, "s3://bucket/runs/r1/manifest.json", "s3://bucket/runs/r1")
    assert (a.input, a.output) == ("s3://bucket/runs/r1/in/a.tif", "s3://bucket/runs/out/a.tif")
    assert (b.input, b.output) == ("/local/b.tif", "s3://other/b.tif")


@pytest.mark.parametrize("location, base, expected", [
    ("a.tif", "/m", os.path.normpath("/m/a.tif")),
    ("./x/../b/a.tif", "/m/", os.path.normpath("/m/b/a.tif")),
    ("../a.tif", "/m/sub", os.path.normpath("/m/a.tif")),
    ("/abs/a.tif", "/m", "/abs/a.tif"),
    ("s3://b/k.tif", "/m", "s3://b/k.tif"),
    ("a.tif", "s3://bucket/prefix", "s3://bucket/prefix/a.tif"),
    ("a.tif", "s3://bucket/prefix/", "s3://bucket/prefix/a.tif"),
    ("./d/a.tif", "s3://bucket", "s3://bucket/d/a.tif"),
    ("a.tif", "s3://bucket/", "s3://bucket/a.tif"),
    ("a.tif", "", "a.tif"),
])
def test_resolve_location(location, base, expected):
    assert resolve_location(location, base) == expected


def test_null_pages_in_a_job_undoes_default_pages():
    data = {"defaults": {"pages": [0, 1]}, "jobs": [job(pages=None), job(output="b.tif")]}
    a, b = parse_manifest(data, "m.json", BASE)
    assert a.pages is None
    assert b.pages == [0, 1]


def test_integer_valued_floats_are_accepted_as_integers():
    [spec] = parse_manifest({"jobs": [job(pages=[3.0], tile=512.0)]}, "m.json", BASE)
    assert spec.pages == [3] and isinstance(spec.pages[0], int)
    assert spec.tile == 512 and isinstance(spec.tile, int)


def test_job_output_options_merge_key_by_key_over_defaults():
    data = {"defaults": {"output_options": {"compression": "zstd", "level": 19, "tile": 256}},
            "jobs": [job(output_options={"tile": 128}),
                     job(output="b.tif", output_options={"compression": "zstd", "level": 5})]}
    a, b = parse_manifest(data, "m.json", BASE)
    assert a.output_options == OutputOptions("zstd", 19, 90, 128)
    assert b.output_options == OutputOptions("zstd", 5, 90, 256)


def test_a_job_changing_compression_does_not_inherit_level_or_quality():
    data = {"defaults": {"output_options": {"compression": "jpeg", "quality": 70}},
            "jobs": [job(output_options={"compression": "zstd"}),
                     job(output="b.tif"),
                     job(output="c.tif", output_options={"compression": "deflate", "level": 2})]}
    a, b, c = parse_manifest(data, "m.json", BASE)
    assert a.output_options == OutputOptions("zstd", None, 90, DEFAULT_OUTPUT_TILE)
    assert b.output_options == OutputOptions("jpeg", None, 70, DEFAULT_OUTPUT_TILE)
    assert c.output_options == OutputOptions("deflate", 2, 90, DEFAULT_OUTPUT_TILE)

    data = {"defaults": {"output_options": {"level": 19}},
            "jobs": [job(output_options={"compression": "lzw"})]}
    [spec] = parse_manifest(data, "m.json", BASE)
    assert spec.output_options == OutputOptions("lzw", None, 90, DEFAULT_OUTPUT_TILE)


def test_jpeg_with_quality_and_small_output_tile_is_fine():
    [spec] = parse_manifest({"jobs": [job(tile=64, output_options={
        "compression": "jpeg", "quality": 100, "tile": 16})]}, "m.json", BASE)
    assert spec.output_options == OutputOptions("jpeg", None, 100, 16)
    assert spec.tile == 64


# --- the top level ------------------------------------------------------------------


@pytest.mark.parametrize("data, came", [
    ("jobs", '"jobs"'), (None, "null"), (7, "7"),  # (a list: its jobs, below)
])
def test_top_level_must_be_a_list_of_jobs_or_an_object(data, came):
    assert one_problem(data) == (
        'manifest: expected a list of jobs, or an object with "jobs" (and optionally '
        f'"defaults"), got {came}')


@pytest.mark.parametrize("data, came", [
    ({}, "nothing"), ({"jobs": {"a": 1}}, '{"a": 1}'), ({"jobs": None}, "null"),
])
def test_jobs_must_be_a_list(data, came):
    assert one_problem(data) == f"jobs: expected a list of jobs, got {came}"


@pytest.mark.parametrize("data", [{"jobs": []}, [], {"defaults": {"tile": 512}, "jobs": []}])
def test_a_manifest_of_no_job_is_valid(data):
    """A generated manifest with nothing to do (a script's list of new files, none today) is
    a normal case, as a scan that finds nothing new is: no job, not an invalid manifest."""
    assert parse_manifest(data, "m.json", "/data") == []


def test_a_job_where_a_manifest_belongs_is_told_how_to_wrap_it(
        tmp_path, capsys: pytest.CaptureFixture):
    """A new user's first manifest is often one job: told in one problem how to write it
    ({"jobs": [...]}), not as three unknown fields and a missing "jobs"."""
    from pipeline import cli

    one = {"input": "a.tif", "output": "out/a.tif", "ops": [{"op": "invert"}]}
    wrap = ('put it in a list under "jobs": {"jobs": [{"input": ...}]}, or in a bare list, '
            'also a manifest: [{"input": ...}]')
    assert problems_of(one) == [
        f'manifest: this is one job (input, output, ops), not a manifest: {wrap}']
    assert problems_of({"defaults": {"tile": 512}, **one}) == [
        f'manifest: this is one job (input, output, ops), not a manifest: {wrap}']
    assert problems_of({"jobs": one}) == [
        ('jobs: expected a list of jobs, got one job: put it in a list: '
        '"jobs": [{"input": ...}]')]
    (tmp_path / "m.json").write_text(json.dumps(one))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err == (
        f"tiffpipe: invalid manifest {tmp_path / 'm.json'}: 1 problem(s) in the manifest:\n"
        f'  manifest: this is one job (input, output, ops), not a manifest: {wrap}\n')


def test_a_bare_list_of_jobs_is_a_manifest_of_those_jobs():
    """A manifest is "a JSON list of jobs": a list at the top is read as {"jobs": [...]},
    each entry checked as a job (its problems named jobs[i].field), run and reported."""
    one = {"input": "a.tif", "output": "out/a.tif", "ops": [{"op": "invert"}]}
    listed = parse_manifest([one, dict(one, output="out/b.tif")], "m.json", BASE)
    wrapped = parse_manifest({"jobs": [one, dict(one, output="out/b.tif")]}, "m.json", BASE)
    assert listed == wrapped and len(listed) == 2
    assert problems_of([one, {"input": "b.tif"}, 3]) == problems_of(
        {"jobs": [one, {"input": "b.tif"}, 3]})
    assert problems_of([one, {"input": "b.tif"}])[0].startswith("jobs[1].output")
    assert parse_manifest([], "m.json", BASE) == []  # (no job: nothing to do)


def test_unknown_top_level_fields_name_the_allowed_ones():
    """A name close to a field not given is the likely one; "job" beside "jobs" is not
    taken for it (that is given)."""
    assert problems_of({"jobs": [job()], "scans": {"prefix": "in/"}, "job": []}) == [
        "scans: unknown field; did you mean scan? (allowed: defaults, jobs, scan)",
        "job: unknown field (allowed: defaults, jobs, scan)",
    ]


def test_a_misspelt_jobs_is_one_problem_not_also_jobs_missing():
    assert problems_of({"job": [job()]}) == ["job: unknown field; did you mean jobs?"]
    assert problems_of({"defaults": {}, "scna": {}}) == [
        "scna: unknown field; did you mean scan?"]


def test_unknown_job_fields_name_the_allowed_ones():
    assert one_problem({"jobs": [job(), job(output="b.tif", page=[1])]}) == (
        "jobs[1].page: unknown field; did you mean pages? (allowed: fuse, if_exists, input, "
        "ops, output, output_options, pages, tile)")
    assert one_problem({"jobs": [job(colour="red")]}) == (
        "jobs[0].colour: unknown field (allowed: fuse, if_exists, input, ops, output, "
        "output_options, pages, tile)")


def test_a_misspelt_input_or_output_is_one_problem_not_also_a_missing_one():
    """``"ouput"`` is the output misspelt: said once, with the name meant, not as an
    unknown field and a missing output."""
    assert problems_of({"jobs": [{"input": "a.tif", "ouput": "b.tif"},
                                 {"inptu": "c.tif", "output": "d.tif"}]}) == [
        "jobs[0].ouput: unknown field; did you mean output?",
        "jobs[1].inptu: unknown field; did you mean input?"]


def test_unknown_output_options_fields_name_the_allowed_ones():
    assert one_problem({"jobs": [job(output_options={"compresion": "lzw"})]}) == (
        "jobs[0].output_options.compresion: unknown field; did you mean compression? "
        "(allowed: bigtiff, bilevel, bilevel_compression, cog, compression, level, masks, "
        "ome, pyramid, pyramid_layout, pyramid_resampling, quality, tile)")
    assert one_problem({"jobs": [job(output_options={"colour": "red"})]}) == (
        "jobs[0].output_options.colour: unknown field "
        "(allowed: bigtiff, bilevel, bilevel_compression, cog, compression, level, masks, "
        "ome, pyramid, pyramid_layout, pyramid_resampling, quality, tile)")


def test_masks_is_a_boolean_defaulting_to_carried():
    """output_options.masks: whether the input pages' internal masks are carried (true by
    default: nothing lost), checked as the other switches."""
    assert one_problem({"jobs": [job(output_options={"masks": "no"})]}) == (
        'jobs[0].output_options.masks: expected true or false, got "no"')
    assert parse_manifest({"jobs": [job()]}, "m.json", BASE)[0].output_options.masks is True
    assert parse_manifest({"defaults": {"output_options": {"masks": False}}, "jobs": [job()]},
                          "m.json", BASE)[0].output_options.masks is False


def test_defaults_must_be_an_object_with_optional_fields_only():
    assert one_problem({"defaults": [], "jobs": [job()]}) == (
        "defaults: expected an object with any of pages, ops, tile, output_options, fuse, "
        "if_exists, got []")
    assert problems_of({"defaults": {"output": "x.tif", "colour": 1}, "jobs": [job()]}) == [
        ("defaults.output: unknown field (allowed: fuse, if_exists, ops, output_options, pages, "
         "tile); input and output are set in each job"),
        ("defaults.colour: unknown field (allowed: fuse, if_exists, ops, output_options, pages, "
         "tile)"),
    ]


def test_a_job_must_be_an_object():
    assert one_problem({"jobs": [job(), "a.tif"]}) == (
        'jobs[1]: expected an object with "input" and "output", got "a.tif"')


# --- input and output ---------------------------------------------------------------


def test_input_and_output_are_required():
    assert problems_of({"jobs": [{"ops": []}]}) == [
        "jobs[0].input: expected a local path or s3://bucket/key (required), got nothing",
        "jobs[0].output: expected a local path or s3://bucket/key (required), got nothing",
    ]


@pytest.mark.parametrize("value, message", [
    ("", 'expected a local path or s3://bucket/key, got ""'),
    ("  ", 'expected a local path or s3://bucket/key, got "  "'),
    (5, "expected a local path or s3://bucket/key, got 5"),
    (["a.tif"], 'expected a local path or s3://bucket/key, got ["a.tif"]'),
    ("s3://bucket", 'expected s3://bucket/key with both a bucket and a key, got "s3://bucket"'),
    ("s3://bucket/", 'expected s3://bucket/key with both a bucket and a key, got "s3://bucket/"'),
    ("s3:///a.tif", 'expected s3://bucket/key with both a bucket and a key, got "s3:///a.tif"'),
    ("s3://bucket/in/", ('expected s3://bucket/key naming an object, got "s3://bucket/in/", '
                         'a prefix (a folder of inputs or of outputs is a scan manifest\'s: '
                         '{"scan": ...})')),
    ("gs://bucket/a.tif", ("expected a local path or s3://bucket/key (the only URLs supported "
                          'are s3://), got "gs://bucket/a.tif"')),
])
def test_input_must_be_a_path_or_s3_url(value, message):
    assert one_problem({"jobs": [job(input=value)]}) == f"jobs[0].input: {message}"


@pytest.mark.parametrize("value", ["s3:/bucket/a.tif", "s3:bucket/a.tif", "S3:/b/a.tif",
                                   "https:/host/a.tif"])
def test_a_location_that_begins_like_a_url_but_is_none_is_refused(value):
    """A one-slash typo wrote into a local folder named "s3:" (silently, the outputs nowhere
    the user looks): refused, naming the form an S3 location takes."""
    for field in ("input", "output"):
        problem = one_problem({"jobs": [job(**{field: value})]})
        assert problem.startswith(f"jobs[0].{field}: expected a local path or s3://bucket/key, "
                                  f'got "{value}": it begins like a URL')
        assert "s3://bucket/key, with two slashes" in problem
    for local in ("C:/data/a.tif", "scan:001.tif", "./s3:/bucket/a.tif"):  # names with a
        parse_manifest({"jobs": [job(input=local)]}, "m.json", BASE)  # colon: local paths


def test_output_must_be_a_path_or_s3_url():
    assert one_problem({"jobs": [job(output="s3://bucket")]}) == (
        'jobs[0].output: expected s3://bucket/key with both a bucket and a key, got "s3://bucket"')


@pytest.mark.parametrize("output", ["out/a.png", "out/a.tif.gz", "out/tif"])
def test_output_must_end_in_tif_or_tiff(output):
    assert one_problem({"jobs": [job(output=output)]}) == (
        f'jobs[0].output: expected a path ending in .tif or .tiff, got "{output}"')


def test_an_s3_prefix_is_no_output():
    assert one_problem({"jobs": [job(output="s3://b/out/")]}) == (
        'jobs[0].output: expected s3://bucket/key naming an object, got "s3://b/out/", a '
        'prefix (a folder of inputs or of outputs is a scan manifest\'s: {"scan": ...})')


@pytest.mark.parametrize("output", ["a.tif", "a.TIF", "a.tiff", "a.Tiff", "s3://b/k/a.tif"])
def test_tif_and_tiff_outputs_in_any_case_are_fine(output):
    [spec] = parse_manifest({"jobs": [job(output=output)]}, "m.json", BASE)
    assert spec.output.endswith(output.rsplit("/", 1)[-1])


#: what a duplicate output's problem tells to do
REPLACED = "one would replace the other: give one of them another name"


def test_duplicate_outputs_after_resolution_name_both_jobs():
    data = {"jobs": [job(input="1.tif", output="out/a.tif"),
                     job(input="2.tif", output="out/b.tif"),
                     job(input="3.tif", output="./out/x/../a.tif"),
                     job(input="4.tif", output=at("out", "a.tif")),
                     job(input="5.tif", output="s3://b/a.tif"),
                     job(input="6.tif", output="s3://b/a.tif")]}
    shown = json.dumps(at("out", "a.tif"))
    assert problems_of(data) == [
        f"jobs[2].output: same output as jobs[0] ({shown}); {REPLACED}",
        f"jobs[3].output: same output as jobs[0] ({shown}); {REPLACED}",
        f'jobs[5].output: same output as jobs[4] ("s3://b/a.tif"); {REPLACED}',
    ]


def test_duplicate_s3_outputs_after_resolution_against_an_s3_base():
    data = {"jobs": [job(output="a.tif"), job(output="s3://bucket/run/a.tif")]}
    assert one_problem(data, "s3://bucket/run") == (
        f'jobs[1].output: same output as jobs[0] ("s3://bucket/run/a.tif"); {REPLACED}')


def test_an_output_inside_another_jobs_output_is_a_problem():
    """One job's output a folder of another's (``out/a.tif`` and ``out/a.tif/b.tif``): the
    two cannot both be written, and which fails hung on which job got there first, after
    its work (a raw "Is a directory" error at the rename). On S3 both keys can be."""
    data = {"jobs": [job(input="1.tif", output="out/a.tif"),
                     job(input="2.tif", output="out/a.tif/b.tif"),
                     job(input="3.tif", output="out/c.tif/d/e.tif"),
                     job(input="4.tif", output="out/./c.tif"),
                     job(input="5.tif", output="s3://b/a.tif"),
                     job(input="6.tif", output="s3://b/a.tif/b.tif")]}
    assert problems_of(data) == [
        (f"jobs[1].output: {json.dumps(at('out', 'a.tif', 'b.tif'))} is inside the output of "
         f"jobs[0] ({json.dumps(at('out', 'a.tif'))}), a file, not a folder: give one of them "
         "another path"),
        (f"jobs[2].output: {json.dumps(at('out', 'c.tif', 'd', 'e.tif'))} is inside the output "
         f"of jobs[3] ({json.dumps(at('out', 'c.tif'))}), a file, not a folder: give one of "
         "them another path"),
    ]


def test_an_output_may_not_be_an_input():
    data = {"jobs": [job(input="a.tif", output="a.tif"),
                     job(input="b.tif", output="c.tif"),
                     job(input="c.tif", output="d.tif")]}
    assert problems_of(data) == [
        (f"jobs[0].output: same location as its own input ({json.dumps(at('a.tif'))}); "
        "the output would overwrite it: give the output another name (or another folder)"),
        (f"jobs[1].output: same location as the input of jobs[2] ({json.dumps(at('c.tif'))}); "
        "the output would overwrite it: give the output another name (or another folder)"),
    ]


def test_problems_come_in_the_manifests_order():
    """The checks across jobs (outputs written twice, nested, or over an input) run after
    every job's own: their problems are listed with their job's, in job order, after the
    top level's, so a long list reads from the manifest's top down."""
    data = {"defaults": {"tile": 7},
            "jobs": [job(input="a.tif", output="a.tif"),
                     job(input="b.tif", output="out/x.tif", ops=[{"op": "nope"}]),
                     job(input="c.tif", output="out/x.tif")]}
    found = problems_of(data)
    assert [p.split(":", 1)[0].split(".", 1)[0] for p in found] == [
        "defaults", "jobs[0]", "jobs[1]", "jobs[2]"]
    assert found[1].startswith("jobs[0].output: same location as its own input")
    assert found[3].startswith("jobs[2].output: same output as jobs[1]")


def test_paths_in_problems_keep_their_letters(tmp_path, capsys: pytest.CaptureFixture):
    """A path of accented letters is named as written (Müller), not in JSON's escapes
    (M\\u00fcller), in every problem that quotes a location: the user must find the file."""
    from pipeline import cli

    name = "Müller été/scan 1.tif"
    data = {"jobs": [job(input=name, output=name),
                     job(input="b.tif", output=f"ré/{name}"),
                     job(input="c.tif", output=f"ré/{name}"),
                     job(input="d.tif", output="ré.tif"),
                     job(input="e.tif", output="ré.tif/x.tif")]}
    assert problems_of(data) == [
        (f'jobs[0].output: same location as its own input ("{at(name)}"); the output would '
        "overwrite it: give the output another name (or another folder)"),
        (f'jobs[2].output: same output as jobs[1] ("{at("ré", name)}"); one would replace the '
        "other: give one of them another name"),
        (f'jobs[4].output: "{at("ré.tif", "x.tif")}" is inside the output of jobs[3] '
        f'("{at("ré.tif")}"), a file, not a folder: give one of them another path')]
    with pytest.raises(ManifestError) as info:
        parse_manifest({"scan": {"input": "scans été", "output": "scans été/out"}}, "m.json",
                       BASE)
    assert (f'expected a location outside scan.input ("{at("scans été")}") and not containing '
            f'it: outputs would be scanned as inputs, got "{at("scans été", "out")}"'
            in str(info.value))
    # as tiffpipe validate says it
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [job(input=name, output=name)]}))
    assert cli.main(["validate", str(tmp_path / "m.json")]) == 2
    assert f'its own input ("{tmp_path / name}")' in capsys.readouterr().err


def test_the_first_job_reading_an_output_is_named_and_big_manifests_check_in_linear_time(
        monkeypatch: pytest.MonkeyPatch):
    """An output that is some job's input names the first job reading it (its own job, when
    it is its own input). Each location is normalised once (a pairwise check compared 1.3
    million pairs for 1,144 jobs): counted, not timed."""
    from pipeline.core import manifest

    data = {"jobs": [job(input="x.tif", output="b.tif"), job(input="a.tif", output="a.tif"),
                     job(input="a.tif", output="c.tif")]}
    assert problems_of(data) == [
        (f"jobs[1].output: same location as its own input ({json.dumps(at('a.tif'))}); "
         "the output would overwrite it: give the output another name (or another folder)")]
    # a job whose output is its own input is told so, though an earlier job reads it too
    # (it was told "the input of jobs[0]", as if another job's input were the trouble)
    data = {"jobs": [job(input="a.tif", output="x.tif"), job(input="a.tif", output="a.tif")]}
    assert problems_of(data) == [
        (f"jobs[1].output: same location as its own input ({json.dumps(at('a.tif'))}); "
         "the output would overwrite it: give the output another name (or another folder)")]
    calls = []
    key = manifest._same_key
    monkeypatch.setattr(manifest, "_same_key", lambda loc: calls.append(loc) or key(loc))
    n = 3000
    specs = parse_manifest({"jobs": [job(input=f"in/{i}.tif", output=f"out/{i}.tif")
                                     for i in range(n)]}, "m.json", BASE)
    assert len(specs) == n and len(calls) <= 2 * n


def test_the_same_input_for_several_jobs_is_fine():
    specs = parse_manifest({"jobs": [job(), job(output="b.tif")]}, "m.json", BASE)
    assert [s.input for s in specs] == [at("in", "a.tif")] * 2


# --- pages, ops, tile ---------------------------------------------------------------


@pytest.mark.parametrize("pages, problems", [
    ([], [("jobs[0].pages: expected a non-empty list of page indices (integers >= 0), "
          "or null for every page, got []")]),
    (3, [("jobs[0].pages: expected a non-empty list of page indices (integers >= 0), "
         "or null for every page, got 3")]),
    ([0, -1, "2", 1.5, True], ["jobs[0].pages[1]: expected an integer >= 0, got -1",
                               'jobs[0].pages[2]: expected an integer >= 0, got "2"',
                               "jobs[0].pages[3]: expected an integer >= 0, got 1.5",
                               "jobs[0].pages[4]: expected an integer >= 0, got true"]),
    ([1e100, 2.0**53, 2.0**53 + 2], [  # no float beyond 2**53 is an exact integer
        "jobs[0].pages[0]: expected an integer >= 0, got 1e+100",
        "jobs[0].pages[2]: expected an integer >= 0, got 9007199254740994.0"]),
    ([4, 1, 4, 1.0], [("jobs[0].pages[2]: expected a page not listed before, got 4 again "
                      "(already jobs[0].pages[0])"),
                      ("jobs[0].pages[3]: expected a page not listed before, got 1 again "
                      "(already jobs[0].pages[1])")]),
])
def test_pages_are_distinct_non_negative_integers(pages, problems):
    assert problems_of({"jobs": [job(pages=pages)]}) == problems


def test_op_chain_problems_carry_the_job_path():
    data = {"jobs": [job(), job(output="b.tif", ops=[
        {"op": "gaussian_blur", "sigma": "two"}, {"op": "blur"}, {"op": "invert", "x": 1}])]}
    problems = problems_of(data)
    assert problems[0] == 'jobs[1].ops[0].sigma: expected a number > 0 and <= 500, got "two"'
    assert problems[1].startswith("jobs[1].ops[1].op: unknown op 'blur'")
    assert problems[2] == "jobs[1].ops[2].x: unknown field (allowed: none)"
    assert len(problems) == 3


def test_every_problem_of_one_op_is_listed_at_its_own_path():
    """A malformed custom ``function`` is a problem at ``.function``, listed with the op's
    other problems; how parameters relate is checked once each of them is valid."""
    data = {"jobs": [job(ops=[
        {"op": "custom", "function": "mylab.filters.flatten", "halo": -1, "params": [1]},
        {"op": "custom", "function": "mylab.filters.flatten"},
        {"op": "percentile_stretch", "p_low": 90, "p_high": 10, "x": 1}])]}
    malformed = "expected \"package.module:function\", got 'mylab.filters.flatten'"
    assert problems_of(data) == [
        f"jobs[0].ops[0].function: {malformed}",
        "jobs[0].ops[0].halo: expected an integer >= 0 and <= 4096, got -1",
        "jobs[0].ops[0].params: expected an object, got [1]",
        f"jobs[0].ops[1].function: {malformed}",
        "jobs[0].ops[2].x: unknown field (allowed: p_high, p_low, per_band)",
        "jobs[0].ops[2]: p_low (90) must be below p_high (10)",
    ]


def test_a_misspelt_op_or_parameter_names_the_one_meant():
    """``gaussian-blur`` lists every op and the one meant; ``sigm`` is one problem, the
    parameter misspelt (not also sigma missing); ``sigmaa`` beside a sigma given is not
    taken for it."""
    assert one_problem({"jobs": [job(ops=[{"op": "gaussian-blur", "sigma": 2}])]}) == (
        "jobs[0].ops[0].op: unknown op 'gaussian-blur'; did you mean gaussian_blur? (known: "
        f"{', '.join(OPS)})")
    assert one_problem({"jobs": [job(ops=[{"op": "gaussian_blur", "sigm": 2}])]}) == (
        "jobs[0].ops[0].sigm: unknown field; did you mean sigma?")
    assert one_problem({"jobs": [job(ops=[{"op": "gaussian_blur", "sigma": 2,
                                           "sigmaa": 3}])]}) == (
        "jobs[0].ops[0].sigmaa: unknown field (allowed: sigma)")
    assert one_problem({"jobs": [job(ops=[{"op": "dilate", "iteration": 2}])]}) == (
        "jobs[0].ops[0].iteration: unknown field; did you mean iterations? (allowed: "
        "iterations, ksize)")
    assert one_problem({"jobs": [job(ops=[{"op": "blurr"}])]}).startswith(
        "jobs[0].ops[0].op: unknown op 'blurr' (known: ")  # nothing close enough


@pytest.mark.parametrize("name, meant", [
    ("resize", '{"op": "downsample", "factor": 2}'), ("shrink", '{"op": "downsample"'),
    ("scale", '{"op": "downsample"'), ("sharpen", "unsharp_mask"),
    ("grayscale", "to_gray"), ("greyscale", "to_gray"), ("binarize", "otsu_threshold"),
    ("otsu", "otsu_threshold"), ("histeq", "equalize_hist"), ("CLAHE", "clahe"),
    ("stretch", "percentile_stretch"), ("autocontrast", "percentile_stretch"),
    ("mirror", "flip"), ("rot90", "rotate"), ("transpose", "rotate then flip"),
    ("cast", "convert"), ("astype", "convert"),
    ("ndvi", "normalized_difference"), ("edges", "canny"), ("negate", "invert"),
    ("erosion", "erode"), ("DILATE", "dilate"), ("blur", "gaussian_blur"),
])
def test_an_op_named_as_other_tools_name_it_is_told_ours(name: str, meant: str):
    """Users arrive with the names of libvips, PIL, OpenCV, scikit-image or ImageMagick
    (``resize``, ``sharpen``, ``grayscale``): told the op that does it here (and how, for
    resize), not a spelling guess (``scale`` is not ``clahe``, ``edges`` not ``erode``)."""
    problem = one_problem({"jobs": [job(ops=[{"op": name}])]})
    assert problem.startswith(f"jobs[0].ops[0].op: unknown op {name!r}; ")
    assert meant in problem.split(" (known: ")[0], problem
    from pipeline.core.ops import OTHER_NAMES

    assert not OTHER_NAMES.keys() & OPS.keys()  # (no op of ours is taken for another's)
    assert {told.split(" ")[0].rstrip(",") for told in OTHER_NAMES.values()} <= OPS.keys()


def test_a_misspelt_op_key_names_op():
    """An op whose ``"op"`` key is misspelt (``opp``), in another case (``Op``, ``OP``), or
    another word for it whose value is an op's name (``operation``), is told that key and
    ``op``, not only that an op needs "op"; an op with no such key still lists the ops."""
    for key in ("opp", "Op", "OP", "ops", "operation"):
        assert problems_of({"jobs": [job(ops=[{"op": "to_gray"}, {
            key: "gaussian_blur", "sigma": 2}])]}) == [
            f"jobs[0].ops[1].{key}: unknown field; did you mean op?"], key
    assert problems_of({"defaults": {"ops": [{"Op": "to_gray"}]}, "jobs": [job()]}) == [
        "defaults.ops[0].Op: unknown field; did you mean op?"]
    assert one_problem({"jobs": [job(ops=[{"kind": "blur", "sigma": 2}])]}) == (
        'jobs[0].ops[0]: expected an object with "op": one of ' + ", ".join(OPS))


def test_ops_must_be_a_list():
    assert one_problem({"jobs": [job(ops={"op": "invert"})]}) == (
        'jobs[0].ops: expected a list of ops, got {"op": "invert"}')


@pytest.mark.parametrize("tile", [1000, 32, 8208, "1024", 1024.5, None, True])
def test_processing_tile_is_a_multiple_of_16_from_64_to_8192(tile):
    assert one_problem({"jobs": [job(tile=tile)]}) == (
        "jobs[0].tile: expected an integer multiple of 16 from 64 to 8192, "
        f"got {json.dumps(tile)}")


@pytest.mark.parametrize("tile", [8, 24, 4112, "512"])
def test_output_tile_is_a_multiple_of_16_from_16_to_4096(tile):
    assert one_problem({"jobs": [job(output_options={"tile": tile})]}) == (
        "jobs[0].output_options.tile: expected an integer multiple of 16 from 16 to 4096, "
        f"got {json.dumps(tile)}")


def test_processing_tile_must_be_a_multiple_of_the_output_tile():
    assert one_problem({"jobs": [job(tile=1024, output_options={"tile": 384})]}) == (
        "jobs[0].tile: expected a multiple of the output tile size 384, got 1024; "
        "set tile to 768 or 1152, or output_options.tile to 256 (or another divisor of 1024)")


def test_tile_rule_with_the_builtin_output_tile():
    assert one_problem({"jobs": [job(tile=1040)]}) == (
        "jobs[0].tile: expected a multiple of the output tile size 512 (the default "
        "output_options.tile), got 1040; set tile to 1024 or 1536, or output_options.tile "
        "to 208 (or another divisor of 1040)")


def test_output_tile_larger_than_processing_tile():
    assert one_problem({"jobs": [job(tile=256, output_options={"tile": 1024})]}) == (
        "jobs[0].tile: expected a multiple of the output tile size 1024, got 256; "
        "set tile to 1024, or output_options.tile to 256 (or another divisor of 256)")


def test_tile_rule_across_defaults_points_at_the_job_field():
    data = {"defaults": {"tile": 1024},
            "jobs": [job(), job(output="b.tif", output_options={"tile": 384})]}
    assert one_problem(data) == (
        "jobs[1].output_options.tile: expected a size that divides the processing tile 1024 "
        "(from defaults.tile), got 384; set tile to 768 or 1152, or output_options.tile to "
        "256 (or another divisor of 1024)")


def test_tile_rule_within_defaults_is_reported_once_under_defaults():
    data = {"defaults": {"tile": 1024, "output_options": {"tile": 384}},
            "jobs": [job(), job(output="b.tif"), job(output="c.tif", tile=768)]}
    assert one_problem(data) == (
        "defaults.tile: expected a multiple of the output tile size 384, got 1024; "
        "set tile to 768 or 1152, or output_options.tile to 256 (or another divisor of 1024)")


def test_a_set_tile_that_does_not_fit_the_op_chain_is_told_at_its_field():
    """A processing tile the manifest sets that a downsample or a clahe cell does not
    divide is a manifest problem at the field that set it (validate said "valid" and the
    run failed the job in PlanJob, naming no field); a job that sets no tile gets one that
    fits, and a tile that fits is no problem."""
    down3 = [{"op": "downsample", "factor": 3}]
    assert one_problem({"jobs": [job(tile=512, ops=down3)]}) == (
        "jobs[0].tile: tile 512 must be a multiple of 48 for this op chain (16 x the "
        "downsampling factor 3); use tile 1536")
    assert one_problem({"defaults": {"tile": 512}, "jobs": [job(ops=down3)]}) == (
        "jobs[0].ops: tile 512 (from defaults.tile) must be a multiple of 48 for this op "
        "chain (16 x the downsampling factor 3); use tile 1536")
    assert one_problem({"jobs": [job(tile=1024, ops=[{"op": "downsample", "factor": 4}])]}) == (
        "jobs[0].tile: with downsampling by 4 a processing tile of 1024 writes 256 output "
        "pixels, which output_options.tile 512 must divide; use tile 2048 (or a smaller "
        "output tile)")
    clahe = job(tile=64, ops=[{"op": "clahe", "cell": 128}], output_options={"tile": 64})
    assert one_problem({"jobs": [clahe]}) == (
        "jobs[0].tile: tile 64 must be a multiple of 128 for this op chain (the clahe cell "
        "128 (in input pixels)); use tile 128")
    # once, at defaults, when defaults set both; not at the jobs that set neither
    assert problems_of({"defaults": {"tile": 512, "ops": down3},
                        "jobs": [job(), job(output="b.tif")]}) == [
        ("defaults.tile: tile 512 must be a multiple of 48 for this op chain (16 x the "
         "downsampling factor 3); use tile 1536")]
    specs = parse_manifest({"jobs": [
        job(ops=down3), job(output="b.tif", tile=3072, ops=down3),
        job(output="c.tif", tile=512, ops=[{"op": "invert"}])]}, "m.json", BASE)
    assert [spec.tile for spec in specs] == [1536, 3072, 512]


# --- output options -----------------------------------------------------------------


def test_compression_must_be_known():
    assert one_problem({"jobs": [job(output_options={"compression": "lzma"})]}) == (
        'jobs[0].output_options.compression: expected one of "zstd", "deflate", "lzw", '
        '"jpeg", "group4", "none", got "lzma"')


@pytest.mark.parametrize("compression", ["lzw", "jpeg", "none"])
def test_level_applies_to_zstd_and_deflate_only(compression):
    data = {"jobs": [job(output_options={"compression": compression, "level": 5})]}
    assert one_problem(data) == (
        f'jobs[0].output_options.level: expected no level with compression "{compression}": '
        "level applies to zstd and deflate only, got 5")


@pytest.mark.parametrize("compression, level, lo, hi", [
    ("zstd", 0, 1, 22), ("zstd", 23, 1, 22), ("deflate", 10, 1, 9), ("deflate", -1, 1, 9),
])
def test_level_range_depends_on_the_compression(compression, level, lo, hi):
    data = {"jobs": [job(output_options={"compression": compression, "level": level})]}
    assert one_problem(data) == (
        f"jobs[0].output_options.level: expected an integer from {lo} to {hi} for "
        f'compression "{compression}", got {level}')


def test_level_range_with_the_builtin_compression():
    assert one_problem({"jobs": [job(output_options={"level": 30})]}) == (
        "jobs[0].output_options.level: expected an integer from 1 to 22 for compression "
        '"zstd" (the default output_options.compression), got 30')


def test_level_must_be_an_integer():
    assert one_problem({"jobs": [job(output_options={"level": "max"})]}) == (
        'jobs[0].output_options.level: expected an integer, got "max"')


def test_level_in_a_job_checked_against_compression_from_defaults():
    data = {"defaults": {"output_options": {"compression": "lzw"}},
            "jobs": [job(output_options={"level": 5})]}
    assert one_problem(data) == (
        'jobs[0].output_options.level: expected no level with compression "lzw" (from '
        "defaults.output_options.compression): level applies to zstd and deflate only, got 5")


def test_level_problem_in_defaults_is_reported_once_under_defaults():
    data = {"defaults": {"output_options": {"compression": "deflate", "level": 12}},
            "jobs": [job(), job(output="b.tif", output_options={"tile": 256})]}
    assert one_problem(data) == (
        "defaults.output_options.level: expected an integer from 1 to 9 for compression "
        '"deflate", got 12')


@pytest.mark.parametrize("quality", [0, 101, 50.5, "high"])
def test_quality_is_an_integer_from_1_to_100(quality):
    data = {"jobs": [job(output_options={"compression": "jpeg", "quality": quality})]}
    assert one_problem(data) == (
        "jobs[0].output_options.quality: expected an integer >= 1 and <= 100, "
        f"got {json.dumps(quality)}")


def test_quality_applies_to_jpeg_only():
    assert one_problem({"jobs": [job(output_options={"quality": 80})]}) == (
        'jobs[0].output_options.quality: expected no quality with compression "zstd" (the '
        "default output_options.compression): quality applies to jpeg only, got 80")


def test_output_options_must_be_an_object():
    assert one_problem({"jobs": [job(output_options="zstd")]}) == (
        "jobs[0].output_options: expected an object with any of compression, level, quality, "
        "tile, pyramid, pyramid_layout, pyramid_resampling, ome, bilevel, bilevel_compression, "
        'masks, bigtiff, cog, got "zstd"')


@pytest.mark.parametrize("field, default, given, bad, expected", [
    ("pyramid_layout", "subifds", "pages", "levels",
     'expected one of "subifds", "pages", got "levels"'),
    ("pyramid_resampling", "mean", "mode", "cubic",
     ('expected one of "mean", "nearest", "mode", "min", "max", got "cubic"; interpolating '
      "methods are not offered: a block becomes its mean (as INTER_AREA) or one of its "
      "samples")),
    ("pyramid_resampling", "mean", "nearest", "average",
     ('expected one of "mean", "nearest", "mode", "min", "max", got "average"; GDAL\'s '
      '"average" is "mean" here')),
])
def test_a_pyramid_option_takes_its_choices_and_names_them(field: str, default: str,
                                                           given: str, bad: str,
                                                           expected: str):
    """Where the levels go and how they are reduced: the default, a choice given, and a
    value that is none (GDAL's names for the methods told ours, as downsample's are)."""
    specs = parse_manifest({"defaults": {"output_options": {"pyramid": True}}, "jobs": [
        job(), job(output="out/b.tif", output_options={field: given})]}, "m.json", BASE)
    assert [getattr(s.output_options, field) for s in specs] == [default, given]
    assert one_problem({"jobs": [job(output_options={"pyramid": True, field: bad})]}) == (
        f"jobs[0].output_options.{field}: {expected}")


def test_pyramid_layout_needs_a_pyramid():
    assert one_problem({"jobs": [job(output_options={"pyramid_layout": "pages"})]}) == (
        "jobs[0].output_options.pyramid_layout: expected no pyramid_layout with pyramid "
        "false (the default output_options.pyramid): it says where pyramid levels go, got "
        '"pages"; set "pyramid": true, or drop "pyramid_layout"')


def test_pyramid_resampling_needs_a_pyramid():
    assert one_problem({"jobs": [job(output_options={"pyramid_resampling": "mode"})]}) == (
        "jobs[0].output_options.pyramid_resampling: expected no pyramid_resampling with "
        "pyramid false (the default output_options.pyramid): it says how pyramid levels are "
        'reduced, got "mode"; set "pyramid": true, or drop "pyramid_resampling"')


def test_downsample_method_names_the_methods():
    assert one_problem({"jobs": [job(ops=[{"op": "downsample", "factor": 2,
                                           "method": "median"}])]}) == (
        'jobs[0].ops[0].method: expected one of "mean", "nearest", "mode", "min", "max", '
        'got "median"; a block\'s median is not offered: "mean" (its mean), or "mode" for '
        'class labels')  # (not "did you mean mean?", its nearest spelling)
    assert one_problem({"jobs": [job(ops=[{"op": "downsample", "factor": 2,
                                           "method": "average"}])]}) == (
        'jobs[0].ops[0].method: expected one of "mean", "nearest", "mode", "min", "max", '
        'got "average"; GDAL\'s "average" is "mean" here')
    specs = parse_manifest({"jobs": [job(ops=[{"op": "downsample", "factor": 2}]),
                                     job(output="out/b.tif", ops=[
                                         {"op": "downsample", "factor": 2, "method": "mode"}])]},
                           "m.json", BASE)
    assert [s.ops[0].get("method", "mean") for s in specs] == ["mean", "mode"]


def test_levels_as_pages_are_refused_in_an_ome_tiff():
    why = ("an OME-TIFF's pyramid levels are SubIFDs of their page (Bio-Formats reads no "
           'other layout); set "pyramid_layout" to "subifds" for an OME-TIFF, or drop "ome" '
           "for levels as pages (OpenSlide, GDAL)")
    assert one_problem({"jobs": [job(output_options={
        "pyramid": True, "pyramid_layout": "pages", "ome": True})]}) == (
        f'jobs[0].output_options.pyramid_layout: "pages" with ome true: {why}')
    # the job sets one, the defaults the other: the job's field is named, the other's origin
    assert one_problem({"defaults": {"output_options": {"pyramid": True,
                                                        "pyramid_layout": "pages"}},
                        "jobs": [job(output_options={"ome": True})]}) == (
        "jobs[0].output_options.ome: true with pyramid_layout \"pages\" (from "
        f"defaults.output_options.pyramid_layout): {why}")


def test_a_cog_is_one_page_with_its_levels_as_pages():
    """``cog``: GDAL's COG layout is made of the image and its overviews as pages after it;
    without them the option is refused, saying what to set (an OME-TIFF and a 1-bit output
    are refused by the rules of those two, a job of several pages by PlanJob:
    tests/test_cog.py)."""
    cog = {"cog": True, "pyramid": True, "pyramid_layout": "pages"}
    (spec,) = parse_manifest({"jobs": [job(output_options=cog)]}, "m.json", BASE)
    assert spec.output_options.cog and spec.manifest_entry()["output_options"]["cog"]
    assert one_problem({"jobs": [job(output_options={"cog": True})]}) == (
        "jobs[0].output_options.cog: true with pyramid false (the default "
        "output_options.pyramid): a Cloud Optimized GeoTIFF carries its overviews (GDAL's "
        'COG layout); set "pyramid": true and "pyramid_layout": "pages", or drop "cog"')
    assert one_problem({"defaults": {"output_options": {"pyramid": True}}, "jobs": [
        job(output_options={"cog": True})]}) == (
        'jobs[0].output_options.cog: true with pyramid_layout "subifds" (the default '
        "output_options.pyramid_layout): a Cloud Optimized GeoTIFF's overviews are pages of "
        "the main chain after the image (GDAL reads SubIFDs as no overviews); set "
        '"pyramid_layout": "pages", or drop "cog"')
    assert one_problem({"jobs": [job(output_options={"cog": "yes"})]}) == (
        'jobs[0].output_options.cog: expected true or false, got "yes"')
    problems = problems_of({"jobs": [job(output_options={**cog, "ome": True})]})
    assert any("OME-TIFF" in p for p in problems), problems
    problems = problems_of({"jobs": [job(output_options={**cog, "bilevel": True})]})
    assert any("bilevel" in p and "pyramid" in p for p in problems), problems


# --- every problem at once ----------------------------------------------------------


def test_all_problems_are_reported_in_one_error():
    data = {
        "scans": {"prefix": "in/"},
        "defaults": {"tile": 100, "ops": [{"op": "median_blur", "ksize": 4}],
                     "output_options": {"compression": "lzw", "quality": 50}},
        "jobs": [
            {"input": "a.tif", "output": "out/a.tif"},
            {"input": "s3://bucket", "output": "out/a.tif", "pages": [1, 1]},
            {"input": "c.tif", "output": "c.png", "tile": 1024,
             "output_options": {"compression": "deflate", "level": 15, "tile": 384}},
            7,
            {"output": "a.tif", "colour": "red"},
        ],
    }
    problems = problems_of(data)
    expected = [
        "scans: unknown field; did you mean scan? (allowed: defaults, jobs, scan)",
        "defaults.ops[0].ksize: expected an odd integer >= 3 and <= 255, got 4",
        "defaults.tile: expected an integer multiple of 16 from 64 to 8192, got 100",
        ('defaults.output_options.quality: expected no quality with compression "lzw": '
        "quality applies to jpeg only, got 50"),
        'jobs[1].input: expected s3://bucket/key with both a bucket and a key, got "s3://bucket"',
        f"jobs[1].output: same output as jobs[0] ({json.dumps(at('out', 'a.tif'))}); "
        + REPLACED,
        ("jobs[1].pages[1]: expected a page not listed before, got 1 again "
        "(already jobs[1].pages[0])"),
        'jobs[2].output: expected a path ending in .tif or .tiff, got "c.png"',
        ('jobs[2].output_options.level: expected an integer from 1 to 9 for compression '
        '"deflate", got 15'),
        ("jobs[2].tile: expected a multiple of the output tile size 384, got 1024; set tile to "
        "768 or 1152, or output_options.tile to 256 (or another divisor of 1024)"),
        'jobs[3]: expected an object with "input" and "output", got 7',
        ("jobs[4].colour: unknown field (allowed: fuse, if_exists, input, ops, output, "
         "output_options, pages, "
        "tile)"),
        "jobs[4].input: expected a local path or s3://bucket/key (required), got nothing",
        (f"jobs[4].output: same location as the input of jobs[0] ({json.dumps(at('a.tif'))}); "
        "the output would overwrite it: give the output another name (or another folder)"),
    ]
    assert sorted(problems) == sorted(expected)
    assert len(problems) == 14


def test_the_error_message_lists_every_problem_with_the_source():
    with pytest.raises(ManifestError) as info:
        parse_manifest({"jobs": [job(tile=1), job(pages=[])]}, "runs/m.json", BASE)
    text = str(info.value)
    assert text.startswith("runs/m.json: 3 problem(s) in the manifest:")
    for problem in info.value.problems:
        assert f"\n  {problem}" in text


# --- JSON text ----------------------------------------------------------------------


def test_invalid_json_names_line_and_column():
    """With the line, a caret under the column, and what is likely wrong."""
    text = '{\n  "jobs": [\n    {"input": "a.tif"\n     "output": "b.tif"}\n  ]\n}\n'
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, "m.json", BASE)
    assert info.value.problems == [(
        "line 4, column 6: invalid JSON: Expecting ',' delimiter; a comma missing before this? "
        "items of a list or an object are separated by commas\n"
        '         "output": "b.tif"}\n'
        "         ^")]
    assert str(info.value).startswith("m.json: 1 problem(s)")


def test_trailing_comma_is_invalid_json():
    """Python's own words and position: 3.13's json names the trailing comma itself, 3.11
    and 3.12 the character after it, where a value was expected; the hint names the comma."""
    with pytest.raises(ManifestError) as info:
        load_manifest_text('{"jobs": [1,]}', "m.json", BASE)
    if sys.version_info >= (3, 13):
        said, column = "Illegal trailing comma before end of array", 12
    else:
        said, column = "Expecting value", 13
    assert info.value.problems == [(
        f"line 1, column {column}: invalid JSON: {said}; a trailing comma (line 1, column 12) "
        "before ]: remove it, JSON takes no comma after the last item\n"
        '    {"jobs": [1,]}\n'
        f"    {' ' * (column - 1)}^")]


@pytest.mark.parametrize(("text", "hint", "excerpt"), [
    ('{"jobs": [\n  {"input": "a.tif", "output": "b.tif"},\n  ]\n}',
     ("a trailing comma (line 2, column 40) before ]: remove it, JSON takes no comma after "
      "the last item"), None),
    ("{'jobs': []}", "JSON strings take double quotes (\"jobs\"), not single ones",
     "    {'jobs': []}\n     ^"),
    ('// my manifest\n{"jobs": []}', "JSON has no comments: remove it",
     "    // my manifest\n    ^"),
    ('{"jobs": [] # none yet\n}', "JSON has no comments: remove it",
     '    {"jobs": [] # none yet\n                ^'),
    ('[{"input": "a.tif"} {"input": "b.tif"}]',
     "a comma missing before this? items of a list or an object are separated by commas",
     '    [{"input": "a.tif"} {"input": "b.tif"}]\n                        ^'),
    ('{"jobs": [{"input": "C:\\scans\\a.tif"',
     ("a backslash in a JSON string begins an escape: write \\\\ for one (C:\\\\data\\\\a.tif), "
      "or / in paths"), '    {"jobs": [{"input": "C:\\scans\\a.tif"\n                           ^'),
    ('{"jobs": [{"input": "a.tif"}',
     "the text ends before every [ and { is closed: add the missing ] or }",
     '    {"jobs": [{"input": "a.tif"}\n                                ^'),
])
def test_invalid_json_says_what_is_likely_wrong(text: str, hint: str, excerpt: str | None):
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, "m.json", BASE)
    [problem] = info.value.problems
    first, *shown = problem.split("\n")
    assert first.endswith(f"; {hint}"), first
    if excerpt is not None:
        assert "\n".join(shown) == excerpt


def test_a_long_line_of_invalid_json_is_shown_around_its_column():
    """A manifest on one long line (as a script writes it): the excerpt is the 40
    characters either side of the column, cut with "...", the caret under the column."""
    jobs = ", ".join(f'{{"input": "in/{i}.tif", "output": "out/{i}.tif"}}' for i in range(9))
    text = '{"jobs": [' + jobs + ",]}"
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, "m.json", BASE)
    column = int(info.value.problems[0].split("column ", 1)[1].split(":", 1)[0])
    _, line, caret = info.value.problems[0].split("\n")
    assert line == "    ..." + text[column - 41:column - 1] + text[column - 1:]
    assert len(text) - column < 40  # (the end of the text, so not cut there)
    assert caret == " " * (4 + 3 + 40) + "^"
    assert line[caret.index("^")] == text[column - 1]


@pytest.mark.parametrize("text", ["", "  \n"])
def test_empty_text_says_so(text):
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, "m.json", BASE)
    assert info.value.problems == [
        'manifest: expected a JSON list of jobs or an object with "jobs", got an empty file']


def test_valid_text_is_parsed_and_checked():
    text = json.dumps({"jobs": [job(ops=[{"op": "dilate"}])]})
    [spec] = load_manifest_text(text, "m.json", BASE)
    assert spec.ops == [{"op": "dilate", "ksize": 3, "iterations": 1}]
    with pytest.raises(ManifestError) as info:
        load_manifest_text(json.dumps({"jobs": [job(tile=8)]}), "m.json", BASE)
    assert info.value.problems == [
        "jobs[0].tile: expected an integer multiple of 16 from 64 to 8192, got 8"]


def test_links_that_make_two_paths_one_file_are_found_when_the_manifest_is_read(tmp_path):
    """The parse compares spellings; reading a local manifest also follows its folders'
    links: two outputs one file (one job's output would be lost), an output onto another
    job's input (which it would replace), an output inside another's, a scan whose output
    lies in its input."""
    from pipeline.steps.common import read_manifest

    tmp_path = type(tmp_path)(os.path.realpath(tmp_path))  # (the messages give real folders)
    (tmp_path / "out").mkdir()
    (tmp_path / "in2").mkdir()
    (tmp_path / "in2" / "c.tif").write_bytes(b"II*\x00")
    (tmp_path / "link").symlink_to(tmp_path / "out")
    (tmp_path / "linkin").symlink_to(tmp_path / "in2")
    (tmp_path / "c_alias.tif").symlink_to(tmp_path / "in2" / "c.tif")
    (tmp_path / "out" / "x.tif").symlink_to(tmp_path / "in2" / "c.tif")  # read through link
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"input": "a.tif", "output": "out/same.tif"},
        {"input": "b.tif", "output": "link/same.tif"},
        {"input": "c_alias.tif", "output": "out/c.tif"},
        {"input": "b.tif", "output": "linkin/c.tif"},
        {"input": "b.tif", "output": "link/other.tif"},
        {"input": "link/x.tif", "output": "x_blur.tif"},
        {"input": "b.tif", "output": "out/x.tif"},
        {"input": "b.tif", "output": "link/c.tif/r.tif"}]}))
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(manifest))
    assert caught.value.problems == [
        (f"jobs[1].output: {tmp_path / 'link' / 'same.tif'} is, through a link, the output of "
         f"jobs[0] ({tmp_path / 'out' / 'same.tif'}): one output would replace the other; "
         "give it another path"),
        (f"jobs[3].output: {tmp_path / 'linkin' / 'c.tif'} is, through a link, the input of "
         f"jobs[2] ({tmp_path / 'in2' / 'c.tif'}): the output would replace it; give it "
         "another path"),
        # the link that jobs[5] reads through would be replaced by jobs[6]'s output
        (f"jobs[6].output: {tmp_path / 'out' / 'x.tif'} is, through a link, the input of "
         f"jobs[5] ({tmp_path / 'out' / 'x.tif'}): the output would replace it; give it "
         "another path"),
        # jobs[2] writes the file out/c.tif, which jobs[7] would need as a folder (the run
        # wrote one of them and failed the other with "Is a directory")
        (f"jobs[7].output: {tmp_path / 'link' / 'c.tif' / 'r.tif'} is, through a link, inside "
         f"the output of jobs[2] ({tmp_path / 'out' / 'c.tif'}), a file, not a folder: give "
         "one of them another path")]

    (tmp_path / "s" / "in" / "outx").mkdir(parents=True)
    (tmp_path / "s" / "lnk").symlink_to(tmp_path / "s" / "in" / "outx")
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps({"scan": {"input": "s/in", "output": "s/lnk"}}))
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(scan))
    [problem] = caught.value.problems
    assert problem.startswith(f"scan.output: {tmp_path / 's' / 'lnk'} is, through a link, "
                              f"{tmp_path / 's' / 'in' / 'outx'}, which is inside scan.input")
    scan.write_text(json.dumps({"scan": {"input": "s/in", "output": "s/elsewhere"}}))
    assert read_manifest(str(scan)).output.rstrip(os.sep) == str(tmp_path / "s" / "elsewhere")


def test_a_path_ending_in_a_slash_is_a_folder_not_a_file():
    """A relative path ending in / in an S3 manifest resolves to a prefix (the slash was
    dropped on the way, and the job failed at run time as a missing object); in a local
    one, a folder: refused as the absolute s3:// prefix is, naming the scan form."""
    for base in ("s3://b/m", "/data"):
        with pytest.raises(ManifestError) as caught:
            parse_manifest({"jobs": [{"input": "dir/sub/", "output": "o.tif"},
                                     {"input": "a.tif", "output": "out/"}]}, "m.json", base)
        assert caught.value.problems == [
            ('jobs[0].input: expected the path of a file, got "dir/sub/", a folder (a folder '
             'of inputs or of outputs is a scan manifest\'s: {"scan": ...})'),
            ('jobs[1].output: expected the path of a file, got "out/", a folder (a folder of '
             'inputs or of outputs is a scan manifest\'s: {"scan": ...})')]


def test_a_relative_path_that_climbs_above_its_s3_bucket_is_refused():
    """``../`` beyond an S3 manifest's bucket: S3 has no parent of a bucket, and would take
    the rest as a key named "../..." (an input then missing; an output written there)."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest({"jobs": [{"input": "../in/a.tif", "output": "o.tif"},
                                 {"input": "a.tif", "output": "../../o.tif"}]},
                       "s3://b/m.json", "s3://b")
    assert caught.value.problems == [
        ('jobs[0].input: "../in/a.tif" climbs above its bucket\'s top (s3://b/../in/a.tif): '
         "a relative path in an S3 manifest stays in the manifest's bucket"),
        ('jobs[1].output: "../../o.tif" climbs above its bucket\'s top (s3://b/../../o.tif): '
         "a relative path in an S3 manifest stays in the manifest's bucket")]
    within = parse_manifest({"jobs": [{"input": "../in/a.tif", "output": "o.tif"}]},
                            "s3://b/p/m.json", "s3://b/p")
    assert within[0].input == "s3://b/in/a.tif"


@pytest.mark.parametrize(("ops", "out_tile", "tile"), [
    ([], None, DEFAULT_TILE),
    ([{"op": "gaussian_blur", "sigma": 2}], None, DEFAULT_TILE),
    ([{"op": "downsample", "factor": 2}], None, DEFAULT_TILE),  # 1024 / 2 = 512: fits
    ([{"op": "downsample", "factor": 3}], None, 1536),  # 48 | tile, 512 | tile / 3
    ([{"op": "downsample", "factor": 7}], None, 3584),
    ([{"op": "downsample", "factor": 3}], 256, 1536),  # a multiple of 48 and of 768
    ([{"op": "gaussian_blur", "sigma": 1}, {"op": "downsample", "factor": 5}], 128, 1280),
    ([], 768, 1536),  # the output tile 768 divides no tile from 1024 below 1536
    ([], 4096, 4096),
    ([{"op": "clahe", "cell": 256}, {"op": "downsample", "factor": 3}], 16, 1536),
    # nothing fits up to 8192 (4096 x 4 = 16384): the default, which the plan refuses
    ([{"op": "downsample", "factor": 4}], 4096, DEFAULT_TILE),
])
def test_a_job_without_a_tile_gets_one_its_chain_and_output_tile_fit(ops, out_tile, tile):
    """The processing tile when neither the job nor the defaults set one: 1024, or the next
    size up that the chain (a downsample's factor, a clahe cell) and the output tile divide,
    so that a downsample by 3 or an output tile of 768 runs without a tile in the manifest."""
    options = {} if out_tile is None else {"output_options": {"tile": out_tile}}
    [job] = parse_manifest({"jobs": [{"input": "a.tif", "output": "b.tif", "ops": ops,
                                      **options}]}, "m.json", "/data")
    assert job.tile == tile


def test_a_tile_the_manifest_sets_is_kept_as_set():
    """A tile set by the job or the defaults is the user's: kept, and refused (the output
    tile, here; the chain: test_a_set_tile_that_does_not_fit_the_op_chain_is_told_at_its_field)
    when it does not fit, never replaced."""
    [job] = parse_manifest({"defaults": {"tile": 3072}, "jobs": [
        {"input": "a.tif", "output": "b.tif", "ops": [{"op": "downsample", "factor": 3}]}]},
        "m.json", "/data")
    assert job.tile == 3072  # (not the 1536 a job without a tile gets)
    with pytest.raises(ManifestError) as info:
        parse_manifest({"defaults": {"output_options": {"tile": 768}}, "jobs": [
            {"input": "a.tif", "output": "b.tif", "tile": 1024}]}, "m.json", "/data")
    assert info.value.problems == [
        ("jobs[0].tile: expected a multiple of the output tile size 768 (from "
        "defaults.output_options.tile), got 1024; set tile to 768 or 1536, or "
        "output_options.tile to 512 (or another divisor of 1024)")]


@pytest.mark.parametrize(("output", "says"), [
    ("out/" + "L" * 252 + ".tif", "its file name is 256 bytes long, longer than the 255"),
    ("out/" + "é" * 126 + ".tif", "its file name is 256 bytes long"),  # 2 bytes each
    ("s3://bkt/" + "k" * 1021 + ".tif", "its S3 key is 1025 bytes long, longer than the 1024"),
])
def test_an_output_name_no_file_system_takes_is_refused(output, says):
    """`tiffpipe validate` said such a manifest was valid; the run refused the job at
    planning. Refused with the manifest's other problems; 255 bytes (the limit) is fine."""
    with pytest.raises(ManifestError) as info:
        parse_manifest({"jobs": [{"input": "a.tif", "output": output}]}, "m.json", "/data")
    [problem] = info.value.problems
    assert problem.startswith("jobs[0].output: ") and says in problem
    assert "give the output a shorter name" in problem
    [job] = parse_manifest({"jobs": [{"input": "a.tif", "output": "o/" + "L" * 251 + ".tif"}]},
                           "m.json", "/data")
    assert job.output.endswith(".tif")


def test_band_ops_problems_name_their_paths():
    """Band indices are checked with the manifest (a list of integers >= 0; a and b apart);
    whether the page has them, when the job is planned (tests/test_band_ops.py)."""
    data = {"jobs": [job(ops=[{"op": "select_bands", "bands": [3, "2"]},
                              {"op": "normalized_difference", "a": 2, "b": 2},
                              {"op": "select_bands"}])]}
    assert problems_of(data) == [
        ('jobs[0].ops[0].bands: expected a list of one or more band indices (integers from 0 '
        'to 65534), got [3, "2"]'),
        "jobs[0].ops[1]: a and b must be different bands (both are 2)",
        ("jobs[0].ops[2].bands: required, a list of one or more band indices (integers from 0 "
        "to 65534)")]


def test_a_run_report_given_as_a_manifest_is_named_a_report():
    """A run report handed to validate or run (it sits beside the manifest, and ends in
    .json too) is said to be one, with the manifest it reports on: not nine unknown fields
    and an empty jobs list."""
    report = {"run_id": "20261207-074527-e61d45", "manifest": "/data/scans.json",
              "started_at": 1.0, "finished_at": 2.0, "seconds": 1.0, "succeeded": 0,
              "failed": 0, "skipped": 0, "jobs": []}
    assert problems_of(report) == [(
        'run_id: this is the report of run "20261207-074527-e61d45" (tiffpipe run writes one '
        'beside its manifest), not a manifest: give the manifest it reports on '
        '("/data/scans.json")')]


@pytest.mark.parametrize("where, given, told", [
    ({"output_options": {"compression": "DEFLATE"}}, "DEFLATE", "choices are lower case: deflate"),
    ({"output_options": {"compression": "Zstd"}}, "Zstd", "choices are lower case: zstd"),
    ({"ops": [{"op": "downsample", "factor": 2, "method": "MODE"}]}, "MODE",
     "choices are lower case: mode"),
    ({"if_exists": "SKIP"}, "SKIP", "choices are lower case: skip"),
])
def test_a_choice_in_another_case_is_told_the_lower_case_one(where, given, told):
    """GDAL spells its codecs in upper case (COMPRESS=DEFLATE): a string choice that matches
    one in any case is told it, not only the list to read through."""
    problem = one_problem({"jobs": [job(**where)]})
    assert problem.endswith(f"got {json.dumps(given)}; {told}"), problem
    assert ": expected one of " in problem



@pytest.mark.parametrize("where, given, meant", [
    ({"output_options": {"compression": "jpg"}}, "jpg", "jpeg"),
    ({"output_options": {"compression": "zstandard"}}, "zstandard", "zstd"),
    ({"output_options": {"pyramid_layout": "subifd"}}, "subifd", "subifds"),
    ({"ops": [{"op": "flip", "axis": "horizontally"}]}, "horizontally", "horizontal"),
])
def test_a_misspelt_choice_names_the_one_meant(where, given, meant):
    problem = one_problem({"jobs": [job(**where)]})
    assert problem.endswith(f"got {json.dumps(given)}; did you mean {meant}?"), problem


def test_a_choice_far_from_every_one_is_told_the_list_alone():
    assert one_problem({"jobs": [job(output_options={"compression": "webp"})]}) == (
        'jobs[0].output_options.compression: expected one of "zstd", "deflate", "lzw", '
        '"jpeg", "group4", "none", got "webp"')


_INTERPOLATING = ("interpolating methods are not offered: a block becomes its mean (as "
                  "INTER_AREA) or one of its samples")


@pytest.mark.parametrize("method, told", [
    ("majority", 'ArcGIS\'s and QGIS\'s "majority" is "mode" here'),
    *((m, _INTERPOLATING) for m in ("cubic", "bilinear", "lanczos", "cubicspline")),
    ("average", 'GDAL\'s "average" is "mean" here'), ("near", 'GDAL\'s "near" is "nearest" here'),
])
def test_a_downsample_method_of_another_tool_is_told_ours_or_why_not(method, told):
    """GIS users give the resampling names of gdalwarp, ArcGIS and QGIS: told the method that
    is the same here, or that an interpolation is none of downsample's, not a spelling guess
    ("bilinear" is not "nearest")."""
    assert one_problem({"jobs": [job(ops=[{"op": "downsample", "factor": 2,
                                           "method": method}])]}) == (
        'jobs[0].ops[0].method: expected one of "mean", "nearest", "mode", "min", "max", '
        f'got "{method}"; {told}')


@pytest.mark.parametrize("op", [{"op": "warp"}, {"op": "reproject", "crs": "EPSG:3857"},
                                {"op": "resample"}, {"op": "gdalwarp"}, {"op": "Reproject"}])
def test_a_reprojection_is_told_tiffpipe_does_none(op):
    """An op tiffpipe lacks on purpose is told so, and where to do it, not a spelling guess
    ("warp" is not "sharp"-anything) or the list of ops alone."""
    assert one_problem({"jobs": [job(ops=[op])]}) == (
        f"jobs[0].ops[0].op: unknown op {op['op']!r}; tiffpipe does not reproject: reproject "
        f"with gdalwarp first (or after) (known: {', '.join(OPS)})")


def test_a_resample_by_a_factor_is_told_downsample():
    assert one_problem({"jobs": [job(ops=[{"op": "resample", "factor": 2}])]}).startswith(
        "jobs[0].ops[0].op: unknown op 'resample'; tiffpipe's op for it is downsample, by an "
        'integer factor ({"op": "downsample", "factor": 2}')


def test_a_deskew_is_pointed_to_the_section_saying_why_not():
    from test_docs import ROOT, anchors

    problem = one_problem({"jobs": [job(ops=[{"op": "deskew"}])]})
    assert problem == (
        "jobs[0].ops[0].op: unknown op 'deskew'; no op deskews (rotate takes quarter turns): "
        "deskew before tiffpipe, see docs/manifest-and-ops.md#geometric-ops-rotate-flip-crop "
        f'("No deskew") (known: {", ".join(OPS)})')
    page = ROOT / "docs" / "manifest-and-ops.md"
    assert "geometric-ops-rotate-flip-crop" in anchors(page)
    section = page.read_text().split("### Geometric ops: rotate, flip, crop")[1].split("\n#")[0]
    assert "**No deskew.**" in section


_OPTIONS = ("bigtiff, bilevel, bilevel_compression, cog, compression, level, masks, ome, "
            "pyramid, pyramid_layout, pyramid_resampling, quality, tile")
_JOB = "fuse, if_exists, input, ops, output, output_options, pages, tile"
_DEFAULTS = "fuse, if_exists, ops, output_options, pages, tile"


@pytest.mark.parametrize("data, where, allowed, told", [
    ({"jobs": [job(output_options={"if_exists": "skip"})]}, "jobs[0].output_options.if_exists",
     _OPTIONS, "if_exists is a job field (or in defaults), not an output option"),
    ({"jobs": [job(output_options={"pages": [0]})]}, "jobs[0].output_options.pages",
     _OPTIONS, "pages is a job field (or in defaults), not an output option"),
    ({"jobs": [job(defaults={"tile": 512})]}, "jobs[0].defaults", _JOB,
     "defaults goes at the top of the manifest, beside jobs"),
    ({"jobs": [job(compression="lzw")]}, "jobs[0].compression", _JOB,
     "compression is an output option: put it in output_options"),
    ({"jobs": [job(ops=[{"op": "gaussian_blur", "sigma": 2, "tile": 512}])]},
     "jobs[0].ops[0].tile", "sigma", "tile is a job field (or in defaults), not an op parameter"),
    ({"ops": [{"op": "invert"}], "jobs": [job()]}, "ops", "defaults, jobs, scan",
     "ops is a job field (or in defaults)"),
    ({"defaults": {"quality": 80}, "jobs": [job()]}, "defaults.quality", _DEFAULTS,
     "quality is an output option: put it in output_options"),
])
def test_a_field_in_the_wrong_place_is_told_where_it_goes(data, where, allowed, told):
    """A field known elsewhere in the manifest is told where it belongs, not a spelling guess
    ("pages" is not "masks") or only the fields allowed where it was given."""
    assert one_problem(data) == f"{where}: unknown field (allowed: {allowed}); {told}"


_CROP = ("jobs[0].ops[0]: crop takes x, y, width and height (the box's first column and row, "
         "and its size), not ")
_EDGES = "left, top, right, bottom"


@pytest.mark.parametrize("op, names, box", [
    ({"left": 10, "top": 20, "right": 110, "bottom": 220}, _EDGES,
     '"x": 10, "y": 20, "width": 100, "height": 200'),
    ({"x0": 0, "y0": 5, "x1": 300, "y1": 105}, "x0, y0, x1, y1",
     '"x": 0, "y": 5, "width": 300, "height": 100'),
    ({"left": 10, "right": 110}, _EDGES,  # (no top or bottom: their places named)
     '"x": 10, "y": top, "width": 100, "height": bottom - top'),
    ({"x": 10, "y": 20, "right": 110, "bottom": 220}, _EDGES,  # (x and y: left and top)
     '"x": 10, "y": 20, "width": 100, "height": 200'),
])
def test_a_crop_by_corners_is_told_its_box_as_x_y_width_height(op, names, box):
    """PIL, rasterio and shapely give a box by its edges: told crop's own
    parameters with the box converted (width = right - left when both are given), in one
    problem, not "right: did you mean height?" hiding that height is required."""
    assert problems_of({"jobs": [job(ops=[{"op": "crop", **op}])]}) == [
        f'{_CROP}{names}: give {{"op": "crop", {box}}}']
