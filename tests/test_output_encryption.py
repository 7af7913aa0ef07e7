"""Outputs written to S3 with the server-side encryption asked for (TIFFPIPE_SSE,
TIFFPIPE_SSE_KMS_KEY_ID; deploy.py --sse sets them on the functions that write outputs):
against a bucket whose policy denies a write without the encryption header (simulated on
the client: moto does not evaluate bucket policies), the output check and both ways of
publishing an output (one PutObject, a multipart upload of copied parts) succeed only with
it, and the object is stored so encrypted; so is the run's report written beside them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from pipeline.adapters import storage
from pipeline.adapters.segments import compose
from pipeline.core import tiff_layout
from pipeline.core.constants import SSE_ENV, SSE_KMS_KEY_ENV
from pipeline.errors import OutputNotWritableError

BUCKET = "locked-down"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for var in list(os.environ):
        if var.startswith("AWS_") or var in (SSE_ENV, SSE_KMS_KEY_ENV):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_client", None)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="work/seg", Body=os.urandom(6 << 20))

        def deny_unencrypted(params: dict[str, Any], **_: Any) -> None:
            # the usual bucket policy: Deny s3:PutObject unless s3:x-amz-server-side-encryption
            if params.get("Bucket") == BUCKET and not params.get("Key", "").startswith(
                    "work/") and "ServerSideEncryption" not in params:
                raise ClientError({"Error": {"Code": "AccessDenied",
                                             "Message": "explicit deny in a bucket policy"}},
                                  "PutObject")
        ours = storage.s3_client()
        for operation in ("PutObject", "CreateMultipartUpload"):
            ours.meta.events.register(f"provide-client-params.s3.{operation}", deny_unencrypted)
        yield client
    monkeypatch.setattr(storage, "_client", None)


def _small() -> list[tiff_layout.Piece]:
    return [tiff_layout.Literal(b"II*\x00" + bytes(100))]


def _large() -> list[tiff_layout.Piece]:
    return [tiff_layout.Literal(b"II*\x00"),
            tiff_layout.Span(f"s3://{BUCKET}/work/seg", 0, 6 << 20)]


def test_without_the_header_the_bucket_denies_the_output(s3: Any):
    with pytest.raises(OutputNotWritableError, match="not allowed"):
        storage.check_writable(f"s3://{BUCKET}/out/a.tif")
    with pytest.raises(Exception, match="AccessDenied|denied"):
        compose(_small(), f"s3://{BUCKET}/out/a.tif")


@pytest.mark.parametrize("mode,key", [("AES256", ""), ("aws:kms", ""), ("aws:kms", KEY)])
def test_outputs_are_written_with_the_encryption_asked_for(s3: Any, monkeypatch, mode, key):
    monkeypatch.setenv(SSE_ENV, mode)
    if key:
        monkeypatch.setenv(SSE_KMS_KEY_ENV, key)
    storage.check_writable(f"s3://{BUCKET}/out/check.tif")
    for name, pieces in (("small", _small()), ("large", _large())):
        compose(pieces, f"s3://{BUCKET}/out/{name}.tif")
    # the run's report (and contact sheet), written beside the outputs, meet the same policy
    storage.write_json(f"s3://{BUCKET}/out/m.report.json", {"run_id": "r"})
    for name in ("small.tif", "large.tif", "m.report.json"):
        head = s3.head_object(Bucket=BUCKET, Key=f"out/{name}")
        assert head["ServerSideEncryption"] == mode, name
        assert head.get("SSEKMSKeyId", "") == key, name


@pytest.mark.parametrize("mode,key", [("AES", ""), ("AES256", KEY), ("", KEY)])
def test_a_wrong_setting_is_named(monkeypatch, mode, key):
    monkeypatch.setenv(SSE_ENV, mode)
    monkeypatch.setenv(SSE_KMS_KEY_ENV, key)
    with pytest.raises(OutputNotWritableError, match=SSE_ENV):
        storage.output_encryption()


def test_unset_sends_no_header(monkeypatch):
    monkeypatch.delenv(SSE_ENV, raising=False)
    monkeypatch.delenv(SSE_KMS_KEY_ENV, raising=False)
    assert storage.output_encryption() == {}
