"""The buckets' policies refuse nothing a run needs: every S3 request of a run on a stack
deployed in moto (the functions, run by moto's Step Functions in this process, and
``tiffpipe start --wait``) is checked against the stack bucket's policy (deploy.py puts its
HTTPS-only statement there) and the data bucket's (``deploy.py --print-bucket-policy``, with
``--sse aws:kms`` and a key: HTTPS only, outputs encrypted with that key), as S3 evaluates a
bucket policy's Deny statements. moto cannot: it applies a statement whatever its Condition
(docs/moto-bugs/bucket_policy_condition_ignored.py), so the tests take the conditional
statements out of moto's check (conftest.bucket_conditions_unchecked) and :func:`refused`
evaluates them here, from each request's URL and headers as sent.

What this rests on, and only AWS can confirm: S3 gives a request the encryption condition
keys (``s3:x-amz-server-side-encryption``, ``...-aws-kms-key-id``) from its headers where
the request may carry them (PutObject, CopyObject, CreateMultipartUpload); a multipart
upload's parts and its completion carry none, and the statements that require them do not
refuse those (the encryption policies of AWS's examples, and Hadoop's S3A, which writes
large files in parts under them, rely on it).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import test_start_status
from test_open_uploads import MANIFEST, _noise
from test_start_status import DATA, JOBS, NAMES, STACK, Stack

from pipeline.adapters import storage
from pipeline.aws import Clients
from pipeline.core.constants import SSE_ENV, SSE_KMS_KEY_ENV

pytestmark = pytest.mark.timeout(120)
stack = test_start_status.stack  # the fixture: a stack deployed in moto

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
#: S3 operations authorised as another action (S3's "Actions, resources, and condition keys")
ACTION_OF = {"HeadObject": "GetObject", "HeadBucket": "ListBucket",
             "ListObjectsV2": "ListBucket", "ListMultipartUploads": "ListBucketMultipartUploads",
             "DeleteObjects": "DeleteObject", "CreateMultipartUpload": "PutObject",
             "UploadPart": "PutObject", "UploadPartCopy": "PutObject",
             "CompleteMultipartUpload": "PutObject"}
#: the requests that may carry the encryption headers, hence have their condition keys
ENCRYPTING = ("PutObject", "CopyObject", "CreateMultipartUpload")
SSE_KEYS = {"s3:x-amz-server-side-encryption": "x-amz-server-side-encryption",
            "s3:x-amz-server-side-encryption-aws-kms-key-id":
                "x-amz-server-side-encryption-aws-kms-key-id"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_met(condition: dict[str, Any], context: dict[str, str], encrypting: bool
                   ) -> bool:
    """IAM's evaluation of a Condition block (the operators the policies use);
    ``encrypting``: the request may carry the encryption headers (see the module's
    docstring: a condition on them does not refuse another)."""
    for operator, tests in condition.items():
        for key, expected in tests.items():
            if key in SSE_KEYS and not encrypting:
                return False
            value = context.get(key)
            if operator == "Bool":
                met = value is not None and value == str(expected).lower()
            elif operator == "Null":
                met = (value is None) == (str(expected).lower() == "true")
            elif operator == "StringNotEquals":
                met = value is None or value not in _as_list(expected)
            else:
                raise AssertionError(f"{operator}: add it to this test")
            if not met:
                return False
    return True


def refused(policy: dict[str, Any], request: dict[str, Any]) -> list[str]:
    """The Sids of the Deny statements of a bucket ``policy`` that refuse ``request``
    (``operation``, ``bucket``, ``key``, ``url`` and ``headers`` as sent)."""
    operation = request["operation"]
    action = f"s3:{ACTION_OF.get(operation, operation)}"
    resource = f"arn:aws:s3:::{request['bucket']}" + (f"/{request['key']}"
                                                      if request.get("key") else "")
    context = {"aws:SecureTransport": str(urlsplit(request["url"]).scheme == "https").lower()}
    headers = {k.lower(): v for k, v in request["headers"].items()}
    for key, header in SSE_KEYS.items():
        if operation in ENCRYPTING and header in headers:
            context[key] = headers[header]
    return [s.get("Sid", "?") for s in _as_list(policy["Statement"])
            if s["Effect"] == "Deny" and s["Principal"] == "*"
            and any(fnmatch.fnmatchcase(action, a) for a in _as_list(s["Action"]))
            and any(fnmatch.fnmatchcase(resource, r) for r in _as_list(s["Resource"]))
            and _condition_met(s.get("Condition", {}), context, operation in ENCRYPTING)]


def _printed(stack: Stack, *args: str) -> dict[str, Any]:
    from test_deploy import deploy_script  # (deploy.py, loaded from its path)

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert deploy_script.main(["--stack", STACK, "--region", "us-east-1", *args],
                                  session=stack.session) == 0
    return dict(json.loads(out.getvalue()))


def test_the_check_refuses_what_the_policies_are_for(stack: Stack):
    """:func:`refused` itself: plain HTTP is refused everywhere, an output written without
    the encryption (or with another, or another key) in the data bucket."""
    data = _printed(stack, "--print-bucket-policy", DATA, "--sse", "aws:kms",
                    "--sse-kms-key-id", KEY)
    put = {"operation": "PutObject", "bucket": DATA, "key": "out/a.tif",
           "url": f"https://{DATA}.s3.amazonaws.com/out/a.tif",
           "headers": {"x-amz-server-side-encryption": "aws:kms",
                       "x-amz-server-side-encryption-aws-kms-key-id": KEY}}
    assert refused(data, put) == []
    assert refused(data, {**put, "url": put["url"].replace("https", "http")}) == [
        "TiffpipeHttpsOnly"]
    assert refused(data, {**put, "headers": {}}) == [
        "TiffpipeEncryptedWritesOnly", "TiffpipeOneEncryption", "TiffpipeOneKmsKey"]
    assert refused(data, {**put, "headers": {"x-amz-server-side-encryption": "AES256"}}) == [
        "TiffpipeOneEncryption", "TiffpipeOneKmsKey"]
    assert refused(data, {**put, "operation": "UploadPartCopy", "headers": {}}) == []
    own = json.loads(stack.client("s3").get_bucket_policy(Bucket=NAMES.bucket)["Policy"])
    assert refused(own, {"operation": "GetObject", "bucket": NAMES.bucket, "key": "work/x",
                         "url": f"http://{NAMES.bucket}.s3.amazonaws.com/work/x",
                         "headers": {}}) == ["TiffpipeHttpsOnly"]


def test_a_run_makes_no_request_the_buckets_policies_refuse(stack: Stack, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """A run of an output of parts (Split, Process, a Merge of server-side copies: a
    multipart upload) and of a small one (one PutObject), outputs encrypted with a KMS key
    (deploy.py --sse aws:kms --sse-kms-key-id, as the functions get it), then status: every
    request is allowed by the stack bucket's policy as deploy set it and by the data
    bucket's as --print-bucket-policy prints it."""
    monkeypatch.setenv(SSE_ENV, "aws:kms")
    monkeypatch.setenv(SSE_KMS_KEY_ENV, KEY)
    _noise(stack, tmp_path)
    policies = {
        NAMES.bucket: json.loads(stack.client("s3").get_bucket_policy(
            Bucket=NAMES.bucket)["Policy"]),
        DATA: _printed(stack, "--print-bucket-policy", DATA, "--data-bucket", DATA,
                       "--sse", "aws:kms", "--sse-kms-key-id", KEY)}
    requests: list[dict[str, Any]] = []

    def record(model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        sent = context.get("input_params", {})
        requests.append({"operation": model.name, "bucket": sent.get("Bucket"),
                         "key": sent.get("Key"), "url": params["url"],
                         "headers": dict(params["headers"])})

    storage.s3_client().meta.events.register("before-call.s3.*", record)  # the functions
    stack.session.events.register("before-call.s3.*", record)  # start and status
    monkeypatch.setattr(Clients, "session", property(lambda _: stack.session))
    manifest = {**MANIFEST, "jobs": MANIFEST["jobs"] + JOBS["jobs"][:1]}
    code, out, err = stack.tiffpipe("start", str(stack.manifest("m.json", manifest)),
                                    "--stack", STACK, "--wait", "--poll", "0.05")
    assert code == 0, err + out
    assert stack.tiffpipe("status", out.splitlines()[0])[0] == 0

    done = {(r["operation"], r["bucket"]) for r in requests}
    assert {("UploadPartCopy", DATA), ("CompleteMultipartUpload", DATA),
            ("PutObject", DATA), ("GetObject", NAMES.bucket)} <= done, done
    denied = [f"{r['operation']} s3://{r['bucket']}/{r['key'] or ''}: {refused(policy, r)}"
              for r in requests if (policy := policies.get(r["bucket"]))
              and refused(policy, r)]
    assert denied == []
