"""Tests of pipeline.adapters.storage: a real local filesystem and moto for S3."""

from __future__ import annotations

import errno
import os
import re

import numpy as np
import pytest
import tifffile
from botocore.exceptions import ClientError, ReadTimeoutError
from conftest import moto_s3, without_credentials

from pipeline.adapters import storage
from pipeline.errors import (
    PLATFORM_FAULT,
    AccessDeniedError,
    InputNotFoundError,
    NotATiffError,
    OutputExistsError,
    OutputNotWritableError,
    StorageError,
    WorkMissingError,
    fault_of,
)

BUCKET = "tp-bucket"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 with one bucket; returns a plain boto3 client for setup and checks."""
    with moto_s3(monkeypatch, BUCKET) as client:
        yield client


# --- paths ----------------------------------------------------------------------------


def test_is_s3_and_split():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x")
    assert storage.split_s3("s3://b/a/b.tif") == ("b", "a/b.tif")
    assert storage.split_s3("s3://b") == ("b", "")
    for bad in ("s3://", "s3:///key", "/local/path", "http://b/k"):
        with pytest.raises(ValueError, match="S3 URL"):
            storage.split_s3(bad)


def test_join():
    assert storage.join("s3://b", "work", "t.json") == "s3://b/work/t.json"
    assert storage.join("s3://b/p/", "/a/", "c") == "s3://b/p/a/c"
    assert storage.join("s3://b/p") == "s3://b/p"
    assert storage.join("/data", "a", "b.tif") == os.path.join("/data", "a", "b.tif")


def test_parent():
    assert storage.parent("s3://b/a/b.tif") == "s3://b/a"
    assert storage.parent("s3://b/b.tif") == "s3://b"
    assert storage.parent("/data/a/b.tif") == "/data/a"
    assert storage.parent("b.tif") == os.getcwd()
    from pipeline.core.manifest import resolve_location
    assert resolve_location("x.tif", storage.parent("s3://b/m/manifest.json")) == "s3://b/m/x.tif"


# --- ranged reads ---------------------------------------------------------------------


def _write_tiff(path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 4096, size=(2048, 2048), dtype=np.uint16)
    small = rng.integers(0, 255, size=(64, 80), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(big, tile=(256, 256), compression="zlib")
        tw.write(small, compression="zlib")
    return big, small


def test_open_input_reads_tiff_with_ranged_gets(s3, tmp_path):
    big, small = _write_tiff(tmp_path / "in.tif")
    s3.upload_file(str(tmp_path / "in.tif"), BUCKET, "in/in.tif")
    object_size = os.path.getsize(tmp_path / "in.tif")
    assert object_size > 4 * 1024 * 1024
    gets = []
    storage.s3_client().meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: gets.append(params))

    with storage.open_input("s3://tp-bucket/in/in.tif") as fh:
        assert fh.seekable() and fh.raw.size == object_size
        with tifffile.TiffFile(fh) as tif:
            page = tif.pages[0]
            decode = page.decode
            window = np.zeros((512, 512), np.uint16)
            tiles_across = (page.imagewidth + 255) // 256
            for ty in (2, 3):  # the 2x2 tiles of rows 512..1024, columns 768..1280
                for tx in (3, 4):
                    index = ty * tiles_across + tx
                    fh.seek(page.dataoffsets[index])
                    data = fh.read(page.databytecounts[index])
                    tile, _, _ = decode(data, index)
                    window[(ty - 2) * 256:(ty - 1) * 256, (tx - 3) * 256:(tx - 2) * 256] = (
                        tile.reshape(256, 256))
            np.testing.assert_array_equal(window, big[512:1024, 768:1280])
            fetched = fh.raw.bytes_fetched
            assert fetched < object_size / 4, (fetched, object_size)
            np.testing.assert_array_equal(tif.pages[1].asarray(), small)

    assert gets and all("Range" in p and "IfMatch" in p for p in gets)
    assert len(gets) == fh.raw.requests


def test_open_input_whole_read_and_seek(s3):
    data = bytes(range(256)) * 5000
    s3.put_object(Bucket=BUCKET, Key="blob", Body=data)
    with storage.open_input("s3://tp-bucket/blob", buffer_size=4096) as fh:
        assert fh.read() == data
        fh.seek(-10, os.SEEK_END)
        assert fh.read(100) == data[-10:]
        assert fh.read(1) == b""
        fh.seek(1000)
        assert fh.read(3) == data[1000:1003] and fh.tell() == 1003


def test_open_input_empty_object(s3):
    s3.put_object(Bucket=BUCKET, Key="empty", Body=b"")
    with storage.open_input("s3://tp-bucket/empty") as fh:
        assert fh.read() == b""


def test_open_input_missing(s3, tmp_path):
    for url in ("s3://tp-bucket/nope.tif", "s3://no-such-bucket/x.tif", str(tmp_path / "no.tif")):
        with pytest.raises(InputNotFoundError, match=url):
            storage.open_input(url)


def test_object_replaced_while_reading(s3):
    s3.put_object(Bucket=BUCKET, Key="obj", Body=b"a" * 10000)
    with storage.open_input("s3://tp-bucket/obj", buffer_size=1024) as fh:
        fh.read(10)
        s3.put_object(Bucket=BUCKET, Key="obj", Body=b"b" * 10000)
        fh.seek(5000)
        with pytest.raises(StorageError, match="changed while"):
            fh.read(10)


# --- small reads and writes -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_read_write_roundtrip(s3, tmp_path, kind):
    base = str(tmp_path) if kind == "local" else "s3://tp-bucket/work"
    url = storage.join(base, "deep", "er", "x.json")
    storage.write_json(url, {"a": [1, 2]})
    assert storage.read_json(url) == {"a": [1, 2]}
    assert storage.exists(url) and storage.size(url) == len(storage.read_bytes(url))
    storage.write_bytes(url, "héllo".encode())
    assert storage.read_text(url) == "héllo"
    missing = storage.join(base, "missing.json")
    assert not storage.exists(missing)
    with pytest.raises(WorkMissingError, match=missing):
        storage.read_bytes(missing)
    with pytest.raises(InputNotFoundError, match=missing):
        storage.read_json(missing, missing=InputNotFoundError)
    with pytest.raises(WorkMissingError, match=missing):
        storage.size(missing)
    if kind == "s3":  # a report or a contact sheet opens from a link as what it is
        storage.write_bytes(storage.join(base, "sheet.png"), b"png")
        assert [s3.head_object(Bucket=BUCKET, Key=f"work/{name}")["ContentType"]
                for name in ("deep/er/x.json", "sheet.png")] == ["application/json", "image/png"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_read_range(s3, tmp_path, kind):
    """A span of a file or object (one ranged GET on S3); fewer bytes at its end, none past
    it (where S3 answers InvalidRange)."""
    base = str(tmp_path) if kind == "local" else "s3://tp-bucket/work"
    url = storage.join(base, "r.bin")
    storage.write_bytes(url, bytes(range(100)))
    assert storage.read_range(url, 0, 3) == bytes([0, 1, 2])
    assert storage.read_range(url, 40, 10) == bytes(range(40, 50))
    assert storage.read_range(url, 95, 10) == bytes(range(95, 100))
    assert storage.read_range(url, 100, 4) == storage.read_range(url, 500, 4) == b""
    with pytest.raises(WorkMissingError, match="missing"):
        storage.read_range(storage.join(base, "missing"), 0, 4)


def test_local_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.bin"
    storage.write_bytes(str(target), b"one")
    storage.write_bytes(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["x.bin"]

    def failing_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    # (a full file system: not retried, so not a StorageError)
    with pytest.raises(OutputNotWritableError, match="x.bin.*No space left.*free space"):
        storage.write_bytes(str(target), b"three")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["x.bin"]


# --- publishing -----------------------------------------------------------------------


def test_the_temporaries_an_output_left_are_found(tmp_path, monkeypatch):
    """What a local run's process killed while it wrote an output leaves beside it: named
    with the run's id (RUN_TAG_ENV), found by the output's name (one with glob's special
    characters too) and the run, never another output's or another run's (nor one whose id
    the run's begins: run a is not run a-b); a tag that is not a run id is left out."""
    from pipeline.core.constants import RUN_TAG_ENV

    final = str(tmp_path / "out" / "a[1]*.tif")
    monkeypatch.setenv(RUN_TAG_ENV, "20261206-060647-cb375c")
    left = [storage.temp_output_path(final) for _ in range(2)]
    assert all(".a[1]*.tif.tiffpipe-20261206-060647-cb375c-" in p for p in left)
    other = storage.temp_output_path(str(tmp_path / "out" / "a1x.tif"))
    monkeypatch.setenv(RUN_TAG_ENV, "20261206-060647-cb375c-2")
    another_run = storage.temp_output_path(final)
    monkeypatch.setenv(RUN_TAG_ENV, "../x")
    untagged = storage.temp_output_path(final)
    assert re.fullmatch(r"\.a\[1\]\*\.tif\.tiffpipe-[0-9a-f]{32}\.tmp",
                        os.path.basename(untagged))
    for path in (*left, other, another_run, untagged, final):
        open(path, "wb").close()
    assert sorted(storage.temp_output_paths(final, "20261206-060647-cb375c")) == sorted(left)
    assert storage.temp_output_paths(final, "20261206-060647-cb375c-2") == [another_run]
    assert storage.temp_output_paths("s3://bucket/a.tif", "r") == []


@pytest.mark.parametrize("length", [186, 230, 255])
def test_a_long_output_name_gets_a_temporary_name_that_fits(tmp_path, monkeypatch, length):
    """An output name of 186-255 bytes (the temporary name adds 70 in a run) is cut in its
    temporary name to the file system's limit (``PC_NAME_MAX``), keeping its start and a
    CRC of the whole name: the output is written (it failed with ``[Errno 36] File name too
    long`` naming the temporary file), two outputs whose names begin alike get temporary
    names apart, and temp_output_paths finds a killed run's; multi-byte characters are
    never cut in two."""
    from pipeline.core.constants import RUN_TAG_ENV

    run = "20261206-060647-cb375c"
    monkeypatch.setenv(RUN_TAG_ENV, run)
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / "out"
    names = ["\u00e9" + "a" * (length - 8) + f"{i:02d}.tif" for i in range(2)]
    assert all(len(n.encode()) == length for n in names)  # (é is two bytes)
    for name in names:
        storage.write_bytes(str(out / name), b"data")
        assert (out / name).read_bytes() == b"data"
    temps = [storage.temp_output_path(str(out / n)) for n in names for _ in range(2)]
    for tmp in temps:
        base = os.path.basename(tmp)
        assert len(base.encode()) <= limit and base.startswith(".\u00e9aaa")
        base.encode("utf-8")  # (no character cut in two: no surrogate escapes)
        open(tmp, "wb").close()
    for i, name in enumerate(names):
        assert sorted(storage.temp_output_paths(str(out / name), run)) == sorted(
            temps[2 * i : 2 * i + 2])


def test_an_output_name_longer_than_the_file_system_takes_is_named(tmp_path):
    """An output whose own name is longer than the file system takes (256 bytes here) is
    an OutputNotWritableError naming it, when its job is planned (check_writable) and
    when it would be written, not a raw OSError about a temporary file."""
    final = str(tmp_path / "out" / ("b" * 252 + ".tif"))
    for call in (storage.check_writable, storage.temp_output_path,
                 lambda url: storage.write_bytes(url, b"x")):
        with pytest.raises(OutputNotWritableError, match="256 bytes long, longer than the "
                           "255") as info:
            call(final)
        assert final in str(info.value) and "shorter name" in str(info.value)


def test_publish_local_is_atomic(tmp_path):
    final = str(tmp_path / "out" / "final.tif")
    tmp = storage.temp_output_path(final)
    assert os.path.dirname(tmp) == os.path.dirname(final)
    assert os.path.basename(tmp).startswith(".final.tif.tiffpipe-") and tmp.endswith(".tmp")
    assert tmp != storage.temp_output_path(final)
    with open(tmp, "wb") as fh:
        fh.write(b"data")
    storage.publish_file(tmp, final)
    with open(final, "rb") as fh:
        assert fh.read() == b"data"
    assert os.listdir(tmp_path / "out") == ["final.tif"]


def test_publish_local_across_filesystems(tmp_path, monkeypatch):
    src = tmp_path / "elsewhere.tif"
    src.write_bytes(b"data")
    final = tmp_path / "out" / "final.tif"
    real_replace = os.replace

    def replace(a, b):
        if str(a) == str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    storage.publish_file(str(src), str(final))
    assert final.read_bytes() == b"data" and not src.exists()
    assert os.listdir(final.parent) == ["final.tif"]


def test_publish_local_unwritable(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    src = tmp_path / "src.tif"
    src.write_bytes(b"data")
    with pytest.raises(OutputNotWritableError, match="afile"):
        storage.publish_file(str(src), str(tmp_path / "afile" / "out.tif"))


def test_publish_without_replace_never_replaces_a_file(tmp_path):
    """replace=False (if_exists skip or fail): published where nothing is (a hard link, then
    the source removed); where a file is, OutputExistsError naming it, that file as it was
    and the source kept for the caller to remove."""
    final = tmp_path / "out" / "final.tif"
    src = tmp_path / "src.tif"
    src.write_bytes(b"ours")
    storage.publish_file(str(src), str(final), replace=False)
    assert final.read_bytes() == b"ours" and not src.exists()
    assert os.stat(final).st_nlink == 1
    src.write_bytes(b"again")
    with pytest.raises(OutputExistsError, match=re.escape(f"output {final} exists already")):
        storage.publish_file(str(src), str(final), replace=False)
    assert final.read_bytes() == b"ours" and src.read_bytes() == b"again"
    assert os.listdir(final.parent) == ["final.tif"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_publish_without_replace_where_there_are_no_hard_links(tmp_path, monkeypatch, code):
    """A filesystem without hard links (FAT, some network shares: os.link fails, simulated
    here, none is mounted): the output is looked for just before the rename."""
    def no_links(a, b):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    final = tmp_path / "final.tif"
    src = tmp_path / "src.tif"
    src.write_bytes(b"ours")
    storage.publish_file(str(src), str(final), replace=False)
    assert final.read_bytes() == b"ours" and not src.exists()
    src.write_bytes(b"again")
    with pytest.raises(OutputExistsError, match="final.tif"):
        storage.publish_file(str(src), str(final), replace=False)
    assert final.read_bytes() == b"ours"


def test_an_s3_output_has_no_local_temporary(tmp_path):
    """S3 outputs are written in one step (PutObject or a multipart upload), never renamed."""
    with pytest.raises(ValueError, match="s3://bucket/a.tif"):
        storage.temp_output_path("s3://bucket/a.tif")


# --- listing and deleting -------------------------------------------------------------


def test_list_and_delete_local(tmp_path):
    for rel in ("w/a.json", "w/sub/b.bin", "w/sub/deeper/c", "other/d"):
        storage.write_bytes(str(tmp_path / rel), b"x")
    work = str(tmp_path / "w")
    assert storage.list_prefix(work) == [
        str(tmp_path / "w" / r) for r in ("a.json", "sub/b.bin", "sub/deeper/c")]
    storage.delete_prefix(work)
    assert not os.path.exists(work) and storage.list_prefix(work) == []
    storage.delete_prefix(work)  # already gone: fine
    assert storage.list_prefix(str(tmp_path)) == [str(tmp_path / "other" / "d")]


def test_list_prefix_asks_s3_for_no_more_than_it_keeps(s3):
    """``most``: only that many keys are kept, but each ListObjectsV2 asked for S3's 1,000
    (MaxItems cuts what the paginator yields, not what S3 sends): ``most=1`` fetched up to
    1,000 keys to keep one. MaxKeys is ``most`` now, and S3's own without it."""
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"in/t{i}", Body=b"")
    asked: list[object] = []
    storage.s3_client().meta.events.register(
        "before-call.s3.ListObjectsV2", lambda params, **_: asked.append(
            params.get("query_string", {}).get("max-keys")))
    assert storage.list_prefix("s3://tp-bucket/in", most=1) == ["s3://tp-bucket/in/t0"]
    assert asked == [1]
    asked.clear()
    assert len(storage.list_prefix("s3://tp-bucket/in")) == 5
    assert asked == [None]


def test_list_and_delete_s3_paginates(s3):
    n = 1050
    for i in range(n):
        s3.put_object(Bucket=BUCKET, Key=f"work/run1/t{i:05d}", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="work/run10/keep", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="keep", Body=b"")
    listed = storage.list_prefix("s3://tp-bucket/work/run1")
    assert len(listed) == n and listed == sorted(listed)
    assert listed[0] == "s3://tp-bucket/work/run1/t00000"
    assert storage.list_prefix("s3://tp-bucket/work/run1/") == listed
    storage.delete_prefix("s3://tp-bucket/work/run1")
    assert storage.list_prefix("s3://tp-bucket/work/run1") == []
    assert storage.list_prefix("s3://tp-bucket") == [
        "s3://tp-bucket/keep", "s3://tp-bucket/work/run10/keep"]
    with pytest.raises(ValueError, match="whole bucket"):
        storage.delete_prefix("s3://tp-bucket/")


def test_remove_one_file_or_object(s3, tmp_path):
    local = tmp_path / "r.json"
    local.write_text("{}")
    assert storage.remove(str(local)) is True and not local.exists()
    assert storage.remove(str(local)) is False
    s3.put_object(Bucket=BUCKET, Key="runs/r.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="runs/r.json.bak", Body=b"{}")
    assert storage.remove(f"s3://{BUCKET}/runs/r.json") is True
    assert storage.remove(f"s3://{BUCKET}/runs/r.json") is False
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [
        "runs/r.json.bak"]  # one object, not a prefix


def test_transient_s3_errors_are_the_ones_a_retry_may_pass():
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    def answer(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert storage.transient(answer("SlowDown", 503))
    assert storage.transient(answer("InternalError", 500))
    assert storage.transient(answer("RequestTimeout", 400))  # S3's idle-socket answer
    assert storage.transient(EndpointConnectionError(endpoint_url="https://s3.example"))
    assert storage.transient(ReadTimeoutError(endpoint_url="https://s3.example"))
    assert not storage.transient(answer("AccessDenied", 403))
    assert not storage.transient(answer("NoSuchBucket", 404))
    assert not storage.transient(NoCredentialsError())
    assert not storage.transient(ValueError("not S3's")) and not storage.transient(None)


def test_discard_deletes_in_one_request_whether_or_not_it_is_there(s3, tmp_path):
    local = tmp_path / "e.json"
    local.write_text("{}")
    storage.discard(str(local))
    storage.discard(str(local))  # gone: not an error
    assert not local.exists()
    s3.put_object(Bucket=BUCKET, Key="errs/e.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="errs/e.json.bak", Body=b"{}")
    calls: list[str] = []
    events = storage.s3_client().meta.events
    events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    storage.discard(f"s3://{BUCKET}/errs/e.json")
    storage.discard(f"s3://{BUCKET}/errs/e.json")
    assert calls == ["DeleteObject", "DeleteObject"]  # no HeadObject first
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [
        "errs/e.json.bak"]


# --- check_writable -------------------------------------------------------------------


def test_check_writable_local(tmp_path):
    storage.check_writable(str(tmp_path / "new" / "deeper" / "out.tif"))
    assert not (tmp_path / "new").exists()  # a check has no side effects
    assert os.listdir(tmp_path) == []
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(OutputNotWritableError, match="afile"):
        storage.check_writable(str(tmp_path / "afile" / "out.tif"))
    with pytest.raises(OutputNotWritableError, match="is a folder"):
        storage.check_writable(str(tmp_path))
    with pytest.raises(OutputNotWritableError, match="/proc/out.tif"):
        storage.check_writable("/proc/out.tif")


def test_check_writable_probes_a_folder_once_while_fresh(tmp_path, monkeypatch):
    """A folder that took a probe is not probed again for WRITABLE_FOR_S seconds (a run of
    1,000 jobs into one folder made 1,000 probe files); a failed probe is not remembered."""
    probes: list[str] = []
    real = os.open

    def counting(path, flags, *args):
        if os.path.basename(path).startswith(".tiffpipe-check-"):
            probes.append(os.path.dirname(path))
        return real(path, flags, *args)

    clock = [1000.0]
    monkeypatch.setattr(storage.os, "open", counting)
    monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(storage, "_writable", {})
    for i in range(5):
        storage.check_writable(str(tmp_path / f"out{i}.tif"))
    storage.check_writable(str(tmp_path / "new" / "out.tif"))  # its first existing folder
    assert probes == [str(tmp_path)]
    clock[0] += storage.WRITABLE_FOR_S + 1  # stale: probed again
    storage.check_writable(str(tmp_path / "out.tif"))
    assert probes == [str(tmp_path)] * 2
    # failures are checked every time, and still refused
    (tmp_path / "afile").write_bytes(b"")
    for _ in range(2):
        with pytest.raises(OutputNotWritableError, match="afile"):
            storage.check_writable(str(tmp_path / "afile" / "out.tif"))
    assert probes == [str(tmp_path)] * 2 + [str(tmp_path / "afile")] * 2
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # no probe file left


def test_check_writable_s3(s3):
    storage.check_writable("s3://tp-bucket/out/x.tif")
    # the probe, a multipart upload of the output's key, was aborted: nothing is left
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    with pytest.raises(OutputNotWritableError, match="bucket does not exist"):
        storage.check_writable("s3://no-such-bucket/x.tif")
    with pytest.raises(OutputNotWritableError, match="not an object"):
        storage.check_writable("s3://tp-bucket/")
    # a prefix that took a probe counts as writable for a while: not a probe per job
    calls = []
    client = storage.s3_client()
    real = client.create_multipart_upload
    client.create_multipart_upload = lambda **kw: calls.append(kw["Key"]) or real(**kw)
    try:
        storage._writable.clear()
        for i in range(3):
            storage.check_writable(f"s3://tp-bucket/out/{i}.tif")
        storage.check_writable("s3://tp-bucket/out/deeper/x.tif")  # another prefix: probed
        storage.check_writable("s3://tp-bucket/top.tif")
        assert calls == ["out/0.tif", "out/deeper/x.tif", "top.tif"]
        with pytest.raises(OutputNotWritableError, match="bucket does not exist"):
            storage.check_writable("s3://no-such-bucket/x.tif")  # never remembered
        with pytest.raises(OutputNotWritableError, match="bucket does not exist"):
            storage.check_writable("s3://no-such-bucket/x.tif")
        assert len(calls) == 5
    finally:
        del client.create_multipart_upload
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_probe_whose_abort_fails_says_how_to_end_its_upload(s3, monkeypatch, caplog):
    """The probe's abort failing (a timeout) is no failure of the check, but its upload stays
    open: with ``started`` (PlanJob) it was recorded before the abort, and stays recorded
    (no ``ended``); without (``validate --inputs``, a local run's report) the warning says
    the command that ends it."""
    from botocore.exceptions import ReadTimeoutError

    def time_out(**_):
        raise ReadTimeoutError(endpoint_url="https://tp-bucket.s3.amazonaws.com/")

    storage.s3_client().meta.events.register("provide-client-params.s3.AbortMultipartUpload",
                                             time_out)
    monkeypatch.setattr(storage, "_writable", {})
    started, ended = [], []
    storage.check_writable("s3://tp-bucket/out/a.tif", started=started.append,
                           ended=ended.append)
    [upload] = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]]
    assert (started, ended) == ([upload], [])
    assert "its job's work records it" in caplog.text
    storage.check_writable("s3://tp-bucket/other/b.tif")
    [left] = [u for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
              if u["Key"] == "other/b.tif"]
    assert (f"aws s3api abort-multipart-upload --bucket tp-bucket --key other/b.tif "
            f"--upload-id {left['UploadId']}") in caplog.text
    storage.s3_client().meta.events.unregister(
        "provide-client-params.s3.AbortMultipartUpload", time_out)
    # a record that cannot be written: no upload left, the work's error raised

    def unwritable(upload):
        raise StorageError("work: cannot write")

    with pytest.raises(StorageError, match="cannot write"):
        storage.check_writable("s3://tp-bucket/third/c.tif", started=unwritable)
    assert not [u for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
                if u["Key"] == "third/c.tif"]
    storage.check_writable("s3://tp-bucket/fourth/d.tif", started=started.append,
                           ended=ended.append)
    assert ended == started[1:] and len(started) == 2  # aborted: its record forgotten


# --- the client -----------------------------------------------------------------------


def test_client_honours_endpoint_env_and_is_cached(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://localhost:9999")
    monkeypatch.setattr(storage, "_client", None)
    client = storage.s3_client()
    assert client.meta.endpoint_url == "http://localhost:9999"
    assert storage.s3_client() is client
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://localhost:9998")
    assert storage.s3_client().meta.endpoint_url == "http://localhost:9998"


def test_client_is_recreated_after_fork(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_client", None)
    client = storage.s3_client()
    pid = os.fork()
    if pid == 0:  # the child: a client of its own
        os._exit(0 if storage.s3_client() is not client else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert storage.s3_client() is client


def test_broken_body_stream_is_retried(s3):
    s3.put_object(Bucket=BUCKET, Key="obj", Body=b"x" * 1000)
    calls = []

    def flaky(params, **_):
        calls.append(params)
        if len(calls) == 1:
            raise ReadTimeoutError(endpoint_url="https://injected")

    storage.s3_client().meta.events.register("provide-client-params.s3.GetObject", flaky)
    with storage.open_input("s3://tp-bucket/obj") as fh:
        assert fh.read() == b"x" * 1000
    assert len(calls) == 2 and fh.raw.requests == 1


def test_access_denied_is_a_storage_error_of_its_own(s3):
    """AccessDeniedError: a StorageError to the code, its own name to the state machine
    (whose Retry of StorageError would meet it again), saying where a stack's functions may
    read and write."""
    def deny(**_):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")

    storage.s3_client().meta.events.register("provide-client-params.s3.GetObject", deny)
    with pytest.raises(AccessDeniedError, match="s3://tp-bucket/x.json: access denied") as got:
        storage.read_json("s3://tp-bucket/x.json")
    assert isinstance(got.value, StorageError)
    assert "deploy.py --data-bucket, --input-bucket" in str(got.value)


def test_missing_or_refused_credentials_are_access_denied_not_transient(s3, tmp_path,
                                                                        monkeypatch):
    """No credentials: each job failed with a StorageError ("Unable to locate credentials;
    check the URL, bucket, network and endpoint"), which the state machine retries and the
    report calls transient (rerun as it is), though a rerun meets it again. Now an
    AccessDeniedError (not retried, a platform fault) saying how to give credentials; so
    are credentials S3 does not take (a key it does not know, a token expired)."""
    s3.put_object(Bucket=BUCKET, Key="in/a.tif", Body=b"II*\x00")
    without_credentials(monkeypatch, tmp_path)
    for call in (lambda: storage.open_input("s3://tp-bucket/in/a.tif"),
                 lambda: storage.read_bytes("s3://tp-bucket/in/a.tif")):
        with pytest.raises(AccessDeniedError) as got:
            call()
        message = str(got.value)
        assert message.startswith("s3://tp-bucket/in/a.tif: cannot "), message
        assert "no AWS credentials that S3 takes (Unable to locate credentials): set " \
               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
        assert "or AWS_PROFILE" in message and "network and endpoint" not in message
        assert not storage.transient(got.value.__cause__)
    assert fault_of(type(got.value).__name__) == PLATFORM_FAULT
    with pytest.raises(OutputNotWritableError, match="output s3://tp-bucket/out/a.tif: no AWS "
                                                     "credentials that S3 takes"):
        storage.check_writable("s3://tp-bucket/out/a.tif")

    # credentials S3 does not take: the request is signed with them (a client without any
    # fails before it is sent) and S3's answer is parsed as botocore parses it
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXPIRED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    _answer(storage.s3_client(), {"GetObject": (400, _EXPIRED)})
    with pytest.raises(AccessDeniedError, match="no AWS credentials that S3 takes .An error "
                                                ".*ExpiredToken"):
        storage.read_bytes("s3://tp-bucket/in/a.tif")


#: S3's answer to a request signed with a session token past its expiry
_EXPIRED = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ExpiredToken</Code>"
            b"<Message>The provided token has expired.</Message></Error>")


class _Raw:
    """An HTTP answer's body, as botocore reads it (``stream``)."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


def _answer(client, answers: dict[str, tuple[int, bytes]]) -> list[str]:
    """S3 answers the signed requests of ``client`` named in ``answers`` (operation ->
    (HTTP status, body; b"": none, as for any HEAD)) instead of moto, botocore parsing them;
    returns the operations sent, in order."""
    from botocore.awsrequest import AWSResponse

    sent: list[str] = []

    def send(request, event_name, **_):
        name = event_name.rsplit(".", 1)[-1]  # (before-send.s3.HeadObject)
        sent.append(name)
        if name in answers:
            status, body = answers[name]
            return AWSResponse(request.url, status, {}, _Raw(body))
        return None

    client.meta.events.register_first("before-send.s3", send)
    return sent


@pytest.mark.parametrize(("status", "body", "told"), [
    (400, _EXPIRED, "no AWS credentials that S3 takes (An error occurred (ExpiredToken)"),
    (403, _EXPIRED.replace(b"ExpiredToken", b"InvalidAccessKeyId"),
     "no AWS credentials that S3 takes (An error occurred (InvalidAccessKeyId)"),
    (403, _EXPIRED.replace(b"ExpiredToken", b"AccessDenied"), "access denied (open)")])
def test_a_head_refused_without_a_code_is_asked_again_for_it(s3, status, body, told):
    """The HeadObject that opens every S3 input has no body in its answer, so botocore's
    code is the status: an expired session token (400) was a StorageError, retried as
    transient, and a key S3 does not know (403) was told as a missing permission. On that
    failure only, one ranged GET of the first byte learns S3's own code."""
    s3.put_object(Bucket=BUCKET, Key="in/a.tif", Body=b"II*\x00")
    answers: dict[str, tuple[int, bytes]] = {}
    sent = _answer(storage.s3_client(), answers)
    with storage.open_input("s3://tp-bucket/in/a.tif"):
        assert sent == ["HeadObject"]  # (opened: nothing more asked)
    sent.clear()
    answers.update({"HeadObject": (status, b""), "GetObject": (status, body)})
    with pytest.raises(AccessDeniedError) as got:
        storage.open_input("s3://tp-bucket/in/a.tif")
    assert str(got.value).startswith("s3://tp-bucket/in/a.tif: "), got.value
    assert told in str(got.value), got.value
    assert not storage.transient(got.value.__cause__)
    # (botocore asks a HeadObject's 400 the bucket's region, and tries again, first)
    assert sent[0] == "HeadObject" and sent[-1] == "GetObject"
    assert sent.count("GetObject") == 1, sent


def test_an_input_in_a_bucket_that_does_not_exist_is_told_over_http(moto_server, monkeypatch):
    """A HeadObject's 404 carries no body, so no error code: an input opened in a bucket
    that does not exist was told as a missing key ("check the path or URL and that the file
    is there") by run, validate, inspect, preview and estimate. One HeadBucket, on that
    failure only, tells the bucket; a missing key in a bucket that exists stays a missing
    key. (moto's in-process mock gives its HEAD a body: a server, as S3 is reached.)"""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_client", None)
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket="tp-there")
    calls: list[str] = []
    storage.s3_client().meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.append(model.name))
    with pytest.raises(InputNotFoundError) as got:
        storage.open_input("s3://tp-nowhere/in/a.tif")
    assert str(got.value) == ("s3://tp-nowhere/in/a.tif does not exist: its bucket, "
                              "tp-nowhere, does not exist: check the URL")
    assert calls == ["HeadObject", "HeadBucket"]
    with pytest.raises(InputNotFoundError) as got:
        storage.open_input("s3://tp-there/in/a.tif")
    assert str(got.value) == ("s3://tp-there/in/a.tif does not exist: check the path or URL "
                              "and that the file is there")
    calls.clear()
    assert not storage.exists("s3://tp-nowhere/work/a.json")  # a work file: no HeadBucket
    assert calls == ["HeadObject"]


def test_the_emulator_advice_is_given_only_outside_a_lambda_function(monkeypatch):
    """S3 that cannot be reached was met with the advice to set AWS_ENDPOINT_URL (an
    emulator's) everywhere: in a Lambda function too, where a connection error is the
    network's, and the run report then told the user to set an emulator's endpoint. Outside
    one (a command at a shell, a local run) the advice stays: an endpoint that does not
    answer."""
    import boto3
    from botocore.config import Config

    from pipeline.core.constants import RUN_TAG_ENV

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for var in (RUN_TAG_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    unreachable = boto3.session.Session(region_name="us-east-1").client(
        "s3", endpoint_url="http://127.0.0.1:9",  # nothing answers there
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))  # no backoff
    advice = "(the S3 endpoint used is http://127.0.0.1:9: check that the S3 emulator"
    url = "s3://tp-bucket/runs/r.json"
    with storage.client_of(unreachable):
        monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
        with pytest.raises(StorageError) as local:
            storage.read_json(url)
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "tiffpipe-prod-merge")
        with pytest.raises(StorageError) as on_lambda:
            storage.read_json(url)
    for got in (local, on_lambda):
        assert str(got.value).startswith(f"{url}: cannot read: Could not connect"), got.value
        assert "check the URL, bucket, network and endpoint" in str(got.value)
    assert advice in str(local.value) and advice not in str(on_lambda.value)


def test_the_emulator_advice_names_the_endpoint_variable_when_it_is_set(monkeypatch):
    """With AWS_ENDPOINT_URL set to where nothing answers, the advice was to set
    AWS_ENDPOINT_URL to the emulator's URL: it is set. Now it names the variable and its
    value, to check what answers there (AWS_ENDPOINT_URL_S3 first: boto3 takes it first)."""
    from pipeline.core.constants import RUN_TAG_ENV

    for var in (RUN_TAG_ENV, "AWS_LAMBDA_FUNCTION_NAME", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # (no backoff: nothing answers anyway)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setattr(storage, "_client", None)
    with pytest.raises(StorageError) as got:
        storage.read_json("s3://tp-bucket/runs/r.json")
    assert ("(AWS_ENDPOINT_URL is http://127.0.0.1:9: check that the S3 emulator or service "
            "meant runs and answers there, or set AWS_ENDPOINT_URL to its URL, or give "
            "tiffpipe estimate, start and status --endpoint-url; unset it for AWS itself)"
            ) in str(got.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL_S3 is http://127.0.0.1:9: "):
        storage.read_json("s3://tp-bucket/runs/r.json")


def test_the_emulator_advice_is_about_the_endpoint_the_client_used(monkeypatch):
    """The advice was built from the environment, not the client: a command given
    --endpoint-url (its own client) was told to check AWS_ENDPOINT_URL's value, or to give
    --endpoint-url, which it had. Now it names the client's endpoint, and a variable only
    when its value is that endpoint."""
    import boto3
    from botocore.config import Config

    from pipeline.core.constants import RUN_TAG_ENV

    for var in (RUN_TAG_ENV, "AWS_LAMBDA_FUNCTION_NAME", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8")  # not the one used
    given = boto3.session.Session(region_name="us-east-1").client(
        "s3", endpoint_url="http://127.0.0.1:9",  # nothing answers there
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    with storage.client_of(given), pytest.raises(StorageError) as got:
        storage.read_json("s3://tp-bucket/runs/r.json")
    assert ("(the S3 endpoint used is http://127.0.0.1:9: check that the S3 emulator or "
            "service meant runs and answers there, or give tiffpipe estimate, start and "
            "status --endpoint-url its URL)") in str(got.value), got.value
    assert "AWS_ENDPOINT_URL" not in str(got.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
    assert storage.endpoint_advice(given).startswith("AWS_ENDPOINT_URL is http://127.0.0.1:9/: ")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    aws = boto3.session.Session(region_name="us-east-1").client("s3")
    assert storage.endpoint_advice(aws).startswith("an S3 emulator or another S3 service: set "
                                                   "AWS_ENDPOINT_URL to its URL")


def test_check_not_input_refuses_the_input_under_another_name(tmp_path):
    """A link either way, or a second hard link: publishing over that name would replace the
    input (a symlink) or is a mistake (a hard link). Another file, a missing output, and S3
    (no links) pass."""
    source = tmp_path / "in.tif"
    source.write_bytes(b"pixels")
    (tmp_path / "to_in.tif").symlink_to(source)
    os.link(source, tmp_path / "hard.tif")
    (tmp_path / "other.tif").write_bytes(b"pixels")
    for a, b in (("to_in.tif", "in.tif"), ("in.tif", "to_in.tif"), ("in.tif", "hard.tif")):
        with pytest.raises(OutputNotWritableError, match="is the job's input"):
            storage.check_not_input(str(tmp_path / a), str(tmp_path / b))
    for output in ("other.tif", "missing.tif"):
        storage.check_not_input(str(source), str(tmp_path / output))
    storage.check_not_input(f"s3://{BUCKET}/in.tif", f"s3://{BUCKET}/in.tif")  # no filesystem


def test_a_folder_given_as_input_is_not_a_tiff(tmp_path):
    """Named as such at once: not a StorageError, which the state machine retries."""
    with pytest.raises(NotATiffError, match="is a folder, not a TIFF file"):
        storage.open_input(str(tmp_path))


@pytest.mark.timeout(30)
def test_a_fifo_or_a_device_given_as_input_is_refused_before_it_is_opened(tmp_path):
    """A FIFO is refused by its stat, not opened: open() of a FIFO blocks until something
    writes to it (a run hung there, and SIGTERM did not stop it). A device likewise, as
    /dev/zero was (by its header): each named with what it is."""
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    with pytest.raises(NotATiffError, match=rf"{re.escape(str(fifo))}: is a FIFO \(named "
                       r"pipe\), not a regular file"):
        storage.open_input(str(fifo))
    with pytest.raises(NotATiffError, match=r"/dev/zero: is a character device, not a "
                       "regular file"):
        storage.open_input("/dev/zero")
    link = tmp_path / "link.tif"  # a link to a regular file is read
    (tmp_path / "a.tif").write_bytes(b"II*\0")
    link.symlink_to("a.tif")
    with storage.open_input(str(link)) as fh:
        assert fh.read() == b"II*\0"


def _error_as_nobody(path: str) -> str:
    """The error (``type: message``) of open_input(path), run as a user that is not root (a
    forked child turned into nobody when the tests run as root, who reads any file)."""
    def attempt() -> str:
        try:
            storage.open_input(path).close()
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            return f"{type(exc).__name__}: {exc}"
        return "opened"

    if os.geteuid() != 0:
        return attempt()
    import pwd

    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        said = fh.read().decode()
    os.waitpid(child, 0)
    return said


def test_an_input_that_may_not_be_read_is_access_denied_not_retried():
    """A local input without read permission (or in a folder that may not be entered): an
    AccessDeniedError, which no step retries, naming the path and saying to check its
    permissions (it was a StorageError, retried for about 9 s). In a folder of /tmp (the
    tests' own are root's, 700: nobody could not reach the files)."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="tiffpipe-perm-")
    try:
        os.chmod(root, 0o755)
        paths = [os.path.join(root, name) for name in ("readable.tif", "unreadable.tif")]
        closed = os.path.join(root, "closed")
        os.mkdir(closed)
        paths.append(os.path.join(closed, "in_closed.tif"))
        for path in paths:
            tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
            os.chmod(path, 0o644)
        os.chmod(paths[1], 0o000)
        os.chmod(closed, 0o600)  # no x: may not be entered
        assert _error_as_nobody(paths[0]) == "opened"
        for path in paths[1:]:
            said = _error_as_nobody(path)
            assert said.startswith(f"AccessDeniedError: {path}: cannot be read: permission "
                                   "denied: check its permissions"), said
    finally:
        os.chmod(closed, 0o700)
        shutil.rmtree(root)
    assert issubclass(AccessDeniedError, StorageError)  # (a StorageError the steps do not retry)


def test_an_outputs_folder_that_cannot_be_made_is_named(tmp_path):
    """A file where a folder of an output's path must be (an S3 scan's keys a.tif and
    a.tif/b.tif mirrored to local outputs): OutputNotWritableError naming it, not the raw
    FileExistsError of os.makedirs."""
    (tmp_path / "a.tif").write_bytes(b"an output")
    with pytest.raises(OutputNotWritableError,
                       match="check the path .a file of that name in the way"):
        storage.temp_output_path(str(tmp_path / "a.tif" / "b.tif"))


def test_a_missing_bucket_is_named(s3):
    """An input (or work file) in a bucket that does not exist: the message says the bucket
    is what is missing, not only the object."""
    with pytest.raises(InputNotFoundError, match="its bucket, no-such-bucket-x, does not "
                                                 "exist: check the URL"):
        storage.read_bytes("s3://no-such-bucket-x/in/a.tif", missing=InputNotFoundError)
    with pytest.raises(InputNotFoundError, match="check the path or URL and that the file"):
        storage.read_bytes("s3://tp-bucket/in/none.tif", missing=InputNotFoundError)


def test_inside_all_resolves_each_folder_once_and_answers_as_inside(tmp_path, monkeypatch):
    """Which outputs are in a folder (the work location): by path and after links, as
    before, for many outputs at once with each of their folders resolved once (a manifest
    of 10,000 outputs resolved every path's every folder)."""
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (tmp_path / "via").symlink_to(work)  # a link to the work folder
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "into.tif").symlink_to(work / "jobs" / "x.tif")  # a link into it
    urls = [str(work / "jobs" / "a.tif"), str(tmp_path / "via" / "jobs" / "b.tif"),
            str(tmp_path / "out" / "c.tif"), str(tmp_path / "out" / "into.tif"),
            "s3://bkt/work/d.tif"] + [str(tmp_path / "out" / f"{i}.tif") for i in range(50)]
    calls: list[str] = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: calls.append(p) or real(p, **kw))
    got = storage.inside_all(urls, str(work))
    assert got == [True, True, False, True, False] + [False] * 50
    assert len(calls) < 10  # the work folder, each output folder once, the link
    monkeypatch.setattr(os.path, "realpath", real)
    assert got == [storage.inside(u, str(work)) for u in urls]
    assert storage.inside_all(["s3://bkt/work/d.tif", "s3://bkt/other/e.tif", str(work)],
                              "s3://bkt/work/") == [True, False, False]
