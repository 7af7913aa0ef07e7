"""Storage: one API for local paths and ``s3://bucket/key`` URLs.

Missing data: :func:`open_input` raises :class:`InputNotFoundError`; the other readers take
the class to raise as ``missing=`` (default :class:`WorkMissingError`). Other failures raise
:class:`StorageError`, or :class:`OutputNotWritableError` for outputs. Malformed URLs raise
:class:`ValueError` (a bug of the caller, not of the data).

The S3 client is created on first use (reading the environment then, so ``AWS_ENDPOINT_URL``
and ``AWS_ENDPOINT_URL_S3`` are honoured natively by boto3) and cached per process id; it
is recreated after a fork or when those (or the region/profile/key) variables change.
"""

from __future__ import annotations

import errno
import io
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

from pipeline.core.constants import (
    RUN_TAG_ENV,
    SSE_ENV,
    SSE_KMS_KEY_ENV,
    SSE_MODES,
    WORK_ENV,
)
from pipeline.errors import (
    AccessDeniedError,
    InputChangedError,
    InputNotFoundError,
    NotATiffError,
    OutputExistsError,
    OutputNotWritableError,
    StorageError,
    TiffpipeError,
    WorkLocationError,
    WorkMissingError,
    in_callers_words,
    lambda_function,
)

MiB = 1024 * 1024
READ_BUFFER = 512 * 1024  # one ranged GET fetches at least this much (small reads coalesce)
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_PROFILE", "AWS_ACCESS_KEY_ID")
_MISSING_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_lock = threading.Lock()
_client: tuple[tuple[Any, ...], Any] | None = None


def _aws_errors() -> tuple[type[BaseException], ...]:
    """What an S3 call raises: botocore's errors, and boto3's upload error once boto3 is in
    use. boto3 and botocore are imported on the first S3 call, not with this module: a
    process that only touches local files (``tiffpipe run``, the local engine and its
    workers) saves their imports; until then no S3 call can have raised."""
    botocore_exceptions = sys.modules.get("botocore.exceptions")
    if botocore_exceptions is None:
        return ()
    boto3_exceptions = sys.modules.get("boto3.exceptions")
    upload = (boto3_exceptions.S3UploadFailedError,) if boto3_exceptions else ()
    return (botocore_exceptions.BotoCoreError, botocore_exceptions.ClientError, *upload)


def _client_key() -> tuple[Any, ...]:
    """What the process's S3 client is kept for: this process, and the environment that
    configures boto3 (a change of either makes :func:`s3_client` create another)."""
    return (os.getpid(), *(os.environ.get(k) for k in _ENV_KEYS))


def s3_client() -> Any:
    """The S3 client of this process (created on first use; recreated after a fork)."""
    global _client
    key = _client_key()
    with _lock:
        if _client is None or _client[0] != key:
            _client = (key, new_s3_client())
        return _client[1]


def new_s3_client(endpoint_url: str | None = None) -> Any:
    """An S3 client as :func:`s3_client` makes it; ``endpoint_url``: every call sent there
    (a command's ``--endpoint-url``; None: boto3's, AWS_ENDPOINT_URL or AWS)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
    # AWS_REGION first, as the AWS CLI and the SDKs (boto3 reads AWS_DEFAULT_REGION)
    region = os.environ.get("AWS_REGION") or None
    return boto3.session.Session(region_name=region).client("s3", config=config,
                                                            endpoint_url=endpoint_url)


@contextmanager
def client_of(client: Any) -> Iterator[None]:
    """While the block runs, ``client`` is this process's S3 client (:func:`s3_client`): a
    command's own session (its ``--profile``, its region) reads what the steps wrote."""
    global _client
    with _lock:
        before, _client = _client, (_client_key(), client)
    try:
        yield
    finally:
        with _lock:
            _client = before


def _after_fork() -> None:
    global _lock, _client
    _lock, _client = threading.Lock(), None  # a lock held by another thread at fork is lost


os.register_at_fork(after_in_child=_after_fork)


def is_s3(url: str) -> bool:
    """True for an ``s3://`` URL."""
    return url.startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key may be empty (bucket root)."""
    if not is_s3(url):
        raise ValueError(f"{url!r} is not an S3 URL: write it as s3://bucket/key")
    bucket, _, key = url[5:].partition("/")
    if not bucket or "\\" in bucket or " " in bucket:
        raise ValueError(f"{url!r} is not a valid S3 URL: write it as s3://bucket/key")
    return bucket, key


def names_prefix(url: str) -> bool:
    """Whether an s3:// URL names a bucket or a prefix (no key, or one ending in /), where an
    object is wanted."""
    key = url[len("s3://"):].partition("/")[2]
    return not key or key.endswith("/")


def _key_of(url: str) -> tuple[str, str]:
    bucket, key = split_s3(url)
    if names_prefix(url):
        raise ValueError(f"{url!r} names a bucket or prefix, not an object: add the object key")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local folder or an S3 prefix (with ``/``)."""
    if not is_s3(base):
        return os.path.join(base, *parts)
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"{base.rstrip('/')}/{tail}" if tail else base


def local_path(path: str) -> str:
    """A local ``path`` made absolute as the OS resolves it: ``.`` and doubled separators
    dropped, and a ``..`` taken from where the links before it lead (``link/../x`` is beside
    the link's target, as ``open`` finds it; :func:`os.path.abspath` drops ``link/..`` as
    text, another file): the folders of a path with a ``..`` are resolved
    (:func:`os.path.realpath`). Its last name, a link or not, stays as it is."""
    if os.pardir not in path.split(os.sep):
        return os.path.abspath(path)
    folder, name = os.path.split(os.path.join(os.getcwd(), path))
    if name in (os.pardir, os.curdir, ""):
        return os.path.realpath(os.path.join(folder, name))
    return os.path.join(os.path.realpath(folder), name)


def parent(url: str) -> str:
    """The folder or prefix that holds a file or object."""
    if not is_s3(url):
        return os.path.dirname(local_path(url))
    bucket, key = split_s3(url)
    head = posixpath.dirname(key.rstrip("/"))
    return f"s3://{bucket}/{head}" if head else f"s3://{bucket}"


def _code(exc: BaseException) -> str:
    """An S3 error's code (``NoSuchKey``, ``403``...), else ""."""
    botocore_exceptions = sys.modules.get("botocore.exceptions")  # none: no S3 call yet
    if botocore_exceptions is None or not isinstance(exc, botocore_exceptions.ClientError):
        return ""
    return str(exc.response.get("Error", {}).get("Code", ""))


#: S3's answers that a later attempt may not meet (botocore retried them a few times first)
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
                    "TooManyRequestsException", "OperationAborted"}


def transient(exc: BaseException | None) -> bool:
    """Whether an S3 call's error may pass if the step runs again: a throttling or 5xx
    answer, or the connection (refused, reset, timed out); not a 4xx about the request
    (access denied, no such bucket), which a retry meets again."""
    botocore_exceptions = sys.modules.get("botocore.exceptions")
    if botocore_exceptions is None or exc is None:
        return False
    if isinstance(exc, botocore_exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or _code(exc) in _TRANSIENT_CODES
    return isinstance(exc, (botocore_exceptions.ConnectionError,
                            botocore_exceptions.HTTPClientError))


#: botocore's errors of credentials it cannot find or use (none set, half set, a profile
#: that is not there, an SSO session or a credential process that fails), by name
_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound",
                      "CredentialRetrievalError", "NoAuthTokenError", "TokenRetrievalError",
                      "SSOError")
#: S3's answers to a request signed with credentials it does not take: a key it does not
#: know, a wrong secret, a session token expired or malformed
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired"}


def credentials_problem(exc: BaseException) -> str | None:
    """What is wrong, and what to do, when an S3 call failed for want of credentials that
    S3 takes (:data:`_CREDENTIAL_ERRORS`, :data:`_CREDENTIAL_CODES`); None for any other
    error. Not a transient failure: a retry, or a rerun as it is, meets it again."""
    botocore_exceptions = sys.modules.get("botocore.exceptions")
    if botocore_exceptions is None:
        return None
    kinds = tuple(getattr(botocore_exceptions, name) for name in _CREDENTIAL_ERRORS
                  if hasattr(botocore_exceptions, name))
    if not isinstance(exc, kinds) and _code(exc) not in _CREDENTIAL_CODES:
        return None
    return (f"no AWS credentials that S3 takes ({exc}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN with temporary ones), or AWS_PROFILE "
            "to a profile of ~/.aws/config (`aws configure`; `aws sso login` renews an SSO "
            "one), then run again")


#: the variables that send boto3's S3 calls elsewhere than AWS, the first set winning
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_advice(client: Any) -> str:
    """What to do about an S3 endpoint that cannot be reached from a shell, from the one
    ``client`` used (``meta.endpoint_url``): AWS's, set AWS_ENDPOINT_URL to an emulator's URL;
    another, check what answers there, naming the variable of :data:`_ENDPOINT_VARS` that
    holds that URL (else it was given otherwise: a command's --endpoint-url, a profile's
    endpoint_url). Either: or give a command --endpoint-url."""
    endpoint = str(client.meta.endpoint_url or "")
    option = "give tiffpipe estimate, start and status --endpoint-url"
    if not endpoint or (urlsplit(endpoint).hostname or "").endswith(".amazonaws.com"):
        return f"an S3 emulator or another S3 service: set AWS_ENDPOINT_URL to its URL, or {option}"
    check = "check that the S3 emulator or service meant runs and answers there"
    name = next((var for var in _ENDPOINT_VARS
                 if os.environ.get(var, "").rstrip("/") == endpoint.rstrip("/")), None)
    if name is None:
        return f"the S3 endpoint used is {endpoint}: {check}, or {option} its URL"
    return (f"{name} is {os.environ[name]}: {check}, or set {name} to its URL, or {option}; "
            "unset it for AWS itself")


def _bucket_answer(url: str, missing: type[TiffpipeError]) -> str:
    """What S3 answers of the bucket of an S3 input that it answered 404 for (a HeadObject,
    whose answer has no body: no error code to tell a missing key from a missing bucket):
    :func:`_head_bucket_code`, asked only then, and only of an input (``missing`` an
    :class:`InputNotFoundError`: a missing work file is looked for often, and its bucket is
    the run's); "" when not asked."""
    if not (is_s3(url) and issubclass(missing, InputNotFoundError)):
        return ""
    return _head_bucket_code(url)


def _head_bucket_code(url: str) -> str:
    """The error code of one HeadBucket of the bucket of the S3 URL ``url``: ``404`` (or
    ``NoSuchBucket``) it does not exist; ``403`` it is there, but another's or not to be
    looked at with these credentials (HeadBucket needs s3:ListBucket); "" it answered (or
    no code: no answer)."""
    try:
        s3_client().head_bucket(Bucket=split_s3(url)[0])
    except _aws_errors() as exc:
        return _code(exc)
    return ""


def bucket_missing(url: str) -> bool:
    """Whether the bucket of the S3 URL ``url`` is known not to exist: one HeadBucket
    answered 404. Any other answer (the bucket there; 403, another's or not to be looked at
    with these credentials; no answer) is False: not known to be missing."""
    return _head_bucket_code(url) in ("404", "NoSuchBucket")


#: what an S3 output whose bucket does not exist is told (after "output URL: ")
NO_OUTPUT_BUCKET = "the bucket does not exist: create it or fix the output URL"


def _missing(cls: type[TiffpipeError], url: str, bucket: str = "") -> TiffpipeError:
    """The error of ``url`` not there; ``bucket``: what its bucket's HeadBucket answered
    (:func:`_bucket_answer`), 403 said as what S3 answered (the bucket is there; these
    credentials may not look at it as a whole), not why: the key's 404 means s3:ListBucket
    reached the key, so the HeadBucket's 403 is likely a ListBucket granted under a prefix
    only, or an explicit Deny; the key is what to check."""
    if issubclass(cls, WorkMissingError):
        return cls(f"{url} does not exist: an earlier step should have written it; "
                   "re-run the job (the step may have failed or its work was cleaned up)")
    link = None if is_s3(url) else dangling_link(url)
    if link:
        return cls(f"{url} does not exist: {link}: fix the link, or give the path of the "
                   "file itself")
    denied = (f" (S3 answered 404 for the key: it is not there; its bucket, "
              f"{split_s3(url)[0]}, is there, but HeadBucket on it answered 403: these "
              "credentials may not look at the bucket as a whole, as when s3:ListBucket is "
              "granted only under a prefix or denied outright; check the key's spelling and "
              "prefix)" if bucket in ("403", "AccessDenied") else "")
    return cls(f"{url} does not exist: check the path or URL and that the file is there"
               f"{denied}")


#: what an S3 request refused (403) needs, by the verb of :func:`_errors`
_NEEDS = {"open": "s3:GetObject", "read": "s3:GetObject", "write": "s3:PutObject",
          "list": "s3:ListBucket", "delete": "s3:DeleteObject"}


def _denied(url: str, verb: str) -> str:
    """What a request S3 refused (403) on ``url`` to ``verb`` it needs, naming the bucket
    and key: a read, s3:GetObject on the key, and (a key not there is answered 403 too
    without it) s3:ListBucket on the bucket; then where the stack's functions reach."""
    stack = ("on AWS the stack's functions reach only its own bucket and its data locations "
             "(deploy.py --data-bucket, --input-bucket)")
    if not is_s3(url) or verb not in _NEEDS:
        return f"check the credentials and permissions; {stack}"
    bucket, key = split_s3(url)
    if verb == "list":
        return (f"these credentials may not list bucket {bucket}: listing needs s3:ListBucket "
                f"on it; {stack}")
    if verb not in ("open", "read"):
        return (f"these credentials may not {verb} key {key} of bucket {bucket}: that needs "
                f"{_NEEDS[verb]} on it; {stack}")
    return (f"these credentials may not read key {key} of bucket {bucket}: reading it needs "
            "s3:GetObject on it; without s3:ListBucket on the bucket, S3 answers 403 for a "
            "key that is not there too (with it, 404: told as missing), so check the key as "
            f"well; {stack}")


@contextmanager
def _errors(url: str, verb: str, missing: type[TiffpipeError] | None) -> Iterator[None]:
    """Translate OS and AWS errors on ``url`` into tiffpipe errors (``missing`` if absent)."""
    try:
        yield
    except (FileNotFoundError, *_aws_errors()) as exc:
        code = _code(exc)
        bucket = _bucket_answer(url, missing) if missing and code == "404" else ""
        if missing and (code == "NoSuchBucket" or bucket in ("404", "NoSuchBucket")):
            raise missing(f"{url} does not exist: its bucket, {split_s3(url)[0]}, does not "
                          "exist: check the URL") from exc
        if missing and (isinstance(exc, FileNotFoundError) or code in _MISSING_CODES):
            raise _missing(missing, url, bucket) from exc
        credentials = credentials_problem(exc)
        if credentials:
            raise AccessDeniedError(f"{url}: cannot {verb}: {credentials}") from exc
        if code in ("403", "AccessDenied"):
            raise AccessDeniedError(f"{url}: access denied ({verb}): {_denied(url, verb)}"
                                    ) from exc
        if code in ("412", "PreconditionFailed"):
            raise StorageError(f"{url} changed while it was being read: do not replace "
                               "inputs during a run; re-run the job") from exc
        if isinstance(exc, FileNotFoundError):  # a local path (its folder cannot be made)
            raise StorageError(f"{url}: cannot {verb}: {exc}; check the path, permissions "
                               "and free space") from exc
        # the emulator advice is for a command at a shell: not in a Lambda function, where
        # a connection error is the network's (and its run report reaches the user)
        connection = sys.modules["botocore.exceptions"].ConnectionError
        advice = (f" ({endpoint_advice(s3_client())})"
                  if isinstance(exc, connection) and lambda_function() is None else "")
        raise StorageError(f"{url}: cannot {verb}: {exc}; check the URL, bucket, network "
                           f"and endpoint{advice}") from exc
    except OSError as exc:
        if verb == "write" and exc.errno in UNWRITABLE:
            raise unwritable(url, exc) from exc
        raise StorageError(f"{url}: cannot {verb}: {exc}; check the path, permissions and "
                           "free space") from exc


#: what a local write meets again if retried: no space (or quota), a read-only file system,
#: no permission, a file or name too large; not a StorageError (which the state machine
#: retries, three times with backoff, each a merge redone)
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                        errno.EFBIG, errno.ENAMETOOLONG})


def unwritable(url: str, exc: OSError) -> TiffpipeError:
    """The error of a local write to ``url`` that the file system refused for good
    (:data:`UNWRITABLE`): a work file's (in the run's work location, :data:`WORK_ENV`) is a
    :class:`WorkLocationError` naming ``--work``; any other's (an output, a report) an
    :class:`OutputNotWritableError`. Neither is retried."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space there"
    elif exc.errno == errno.EROFS:
        fix = "the file system is read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = "check the permissions of the folder (and of the file, if it exists)"
    else:
        fix = "check the file system's limits"
    work = os.environ.get(WORK_ENV, "")
    if work and inside(url, work):
        return WorkLocationError(
            f"{url}: cannot write in the work location {work} ({why}): {fix}, or "
            + in_callers_words("give the run a work location that can take its files "
                               "(tiffpipe run --work)"))
    return OutputNotWritableError(f"{url}: cannot write ({why}): {fix}, or write the output "
                                  "somewhere else")


def inside(url: str, folder: str) -> bool:
    """Whether the file or object ``url`` is in the folder or prefix ``folder`` (at any
    depth): a local path also after its links are followed (those that exist), an S3 URL
    by its key."""
    return inside_all([url], folder)[0]


def inside_all(urls: list[str], folder: str) -> list[bool]:
    """:func:`inside` for each of ``urls``, the folder's own paths resolved once and each
    local path's folder once (a manifest of 10,000 outputs in a few folders)."""
    if is_s3(folder):
        prefix = folder.rstrip("/") + "/"
        return [is_s3(url) and url.startswith(prefix) for url in urls]
    bases = tuple({p.rstrip(os.sep) + os.sep
                   for p in (local_path(folder), os.path.realpath(folder))})
    resolved: dict[str, str] = {}  # a folder -> its real path

    def real(path: str) -> str:
        if os.path.islink(path):  # (the output itself a link: where it points)
            return os.path.realpath(path)
        head, name = os.path.split(path)
        if head not in resolved:
            resolved[head] = os.path.realpath(head)
        return os.path.join(resolved[head], name)

    out = []
    for url in urls:
        if is_s3(url):
            out.append(False)
            continue
        path = local_path(url)
        out.append(path.startswith(bases) or real(path).startswith(bases))
    return out


class S3RangeReader(io.RawIOBase):
    """A seekable raw file over one S3 object: every read is one ranged ``GetObject``.

    ``size`` comes from ``HeadObject``; ``requests`` and ``bytes_fetched`` count the GETs.
    Reads are pinned to the ETag seen at open time, so an object replaced while being read
    fails instead of mixing versions.
    """

    def __init__(self, url: str, version: str | None = None):
        super().__init__()
        self.name, self.mode = url, "rb"
        self.bucket, self.key = _key_of(url)
        self.requests = self.bytes_fetched = self._pos = 0
        with _errors(url, "open", InputNotFoundError):
            try:
                head = s3_client().head_object(Bucket=self.bucket, Key=self.key)
            except _aws_errors() as exc:
                if _code(exc) in ("400", "403"):
                    _ask_for_code(self.bucket, self.key, exc)
                raise
        self.size: int = head["ContentLength"]
        self.etag: str = head.get("ETag", "")
        check_version(url, version, self.etag)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"negative seek position in {self.name}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self.size - self._pos)
        if count <= 0:
            return 0
        args = {"Bucket": self.bucket, "Key": self.key,
                "Range": f"bytes={self._pos}-{self._pos + count - 1}"}
        if self.etag:
            args["IfMatch"] = self.etag
        for attempt in range(3):  # botocore retries requests; this retries a broken body stream
            try:
                data = s3_client().get_object(**args)["Body"].read()
                break
            except _aws_errors() as exc:
                if _code(exc) or attempt == 2:
                    with _errors(self.name, "read", InputNotFoundError):
                        raise
        self.requests += 1
        self.bytes_fetched += len(data)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _ask_for_code(bucket: str, key: str, exc: BaseException) -> None:
    """For a HeadObject answered 400 or 403 (``exc``): a HEAD's answer has no body, so its
    code is the status, and an expired session token (400) read as a transient failure, a
    key S3 does not know (403) as a missing permission. One ranged GET of the first byte,
    on that failure only, raises S3's own code (from ``exc``) for :func:`_errors`; returns
    when it tells no more (the GET passed, or answered without a code of its own)."""
    try:
        s3_client().get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
    except _aws_errors() as told:
        if _code(told) not in ("", "400", "403"):
            raise told from exc


def open_input(url: str, buffer_size: int = READ_BUFFER, version: str | None = None
               ) -> BinaryIO:
    """A seekable binary file over a local file or an S3 object (read with ranged GETs).

    Use it as a context manager. For S3, ``fh.raw`` is the :class:`S3RangeReader`; reads
    smaller than ``buffer_size`` are coalesced into one GET of ``buffer_size`` bytes.
    ``version`` (:func:`version_of`, when the job was planned): another one there is an
    :class:`InputChangedError`.
    """
    if is_s3(url):
        if names_prefix(url):  # as a local folder: not a TIFF (retrying cannot mend it)
            raise NotATiffError(f"{url}: names a bucket or prefix, not an object: give the key "
                                "of a TIFF (a scan manifest, {\"scan\": ...}, takes a prefix)")
        return cast(BinaryIO, io.BufferedReader(S3RangeReader(url, version), buffer_size))
    with _errors(url, "open", InputNotFoundError):
        try:
            _check_regular(url, os.stat(url).st_mode)
            fh = open(url, "rb")  # noqa: SIM115 (the caller's to close)
        except IsADirectoryError as exc:  # not a StorageError: retrying cannot mend it
            raise _folder(url) from exc
        except PermissionError as exc:  # nor this: a retry meets it again
            raise AccessDeniedError(f"{url}: cannot be read: permission denied: check its "
                                    "permissions, and those of its folders (they need x), for "
                                    "the user running tiffpipe") from exc
        try:
            check_version(url, version, file_version(os.fstat(fh.fileno())))
        except BaseException:
            fh.close()
            raise
        return fh


def _folder(url: str) -> NotATiffError:
    return NotATiffError(f"{url}: is a folder, not a TIFF file: give the path of a TIFF file "
                         "(a scan manifest, {\"scan\": ...}, takes a folder)")


#: what a path that is neither a regular file nor a folder is, by its stat.S_IS* test
_NOT_FILES = (("S_ISFIFO", "a FIFO (named pipe)"), ("S_ISCHR", "a character device"),
              ("S_ISBLK", "a block device"), ("S_ISSOCK", "a socket"))


def _check_regular(url: str, mode: int) -> None:
    """NotATiffError unless ``mode`` (of ``url``, followed through links) is a regular file's,
    checked before it is opened: opening a FIFO blocks until something writes to it (a run
    hung there, deaf to SIGTERM), and a device is not a file to read pages from."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise _folder(url)
    what = next((name for test, name in _NOT_FILES if getattr(stat, test)(mode)),
                "a special file")
    raise NotATiffError(f"{url}: is {what}, not a regular file: give the path of a TIFF file "
                        "(copy what it delivers to a file first)")


def version_of(fh: BinaryIO) -> str:
    """What tells this version of the input open as ``fh`` (:func:`open_input`) from
    another, without another request: the ETag its S3 reader saw, or the open file's size
    and modification time (ns). A job's units read the version its plan saw."""
    raw = getattr(fh, "raw", None)
    if isinstance(raw, S3RangeReader):
        return raw.etag
    return file_version(os.fstat(fh.fileno()))


def file_version(st: os.stat_result) -> str:
    """A local file's version (:func:`version_of`) from its ``stat``."""
    return f"{st.st_size}:{st.st_mtime_ns}"


def check_version(url: str, version: str | None, found: str) -> None:
    """:class:`InputChangedError` if ``url``, now at ``found``, is not the ``version`` its
    job was planned on (None or "": none was noted)."""
    if version and found != version:
        raise InputChangedError(
            f"{url} changed after its job was planned (it was replaced or written to during "
            "the run): the job's parts would read two versions of it; do not change inputs "
            "while a run reads them, and re-run the job")


def read_bytes(url: str, missing: type[TiffpipeError] = WorkMissingError) -> bytes:
    """The whole content of a (small) file or object."""
    with _errors(url, "read", missing):
        if not is_s3(url):
            with open(url, "rb") as fh:
                return fh.read()
        bucket, key = _key_of(url)
        return cast(bytes, s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())


def read_range(url: str, offset: int, size: int,
               missing: type[TiffpipeError] = WorkMissingError,
               version: str | None = None) -> bytes:
    """``size`` bytes of a file or object from ``offset`` (fewer at its end, none past it;
    one ranged ``GetObject``, and no more than those bytes). ``version``: the one its job
    was planned on (:func:`version_of`): a local file's checked as it is opened, an
    object's by the GET's ``If-Match`` (S3's 412): either changed, an
    :class:`InputChangedError` (not retried: it would read another version again)."""
    with _errors(url, "read", missing):
        if not is_s3(url):
            with open(url, "rb") as fh:
                check_version(url, version, file_version(os.fstat(fh.fileno())))
                fh.seek(offset)
                return fh.read(size)
        bucket, key = _key_of(url)
        pinned = {"IfMatch": version} if version else {}
        try:
            return cast(bytes, s3_client().get_object(
                Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}",
                **pinned)["Body"].read())
        except _aws_errors() as exc:
            if _code(exc) == "InvalidRange":  # S3's answer to a range past the end
                return b""
            if version and _code(exc) in ("412", "PreconditionFailed"):
                check_version(url, version, "another")  # (its message: changed since planned)
            raise


def read_text(url: str, missing: type[TiffpipeError] = WorkMissingError) -> str:
    """The content of a UTF-8 text file or object."""
    return read_bytes(url, missing).decode("utf-8")


def read_json(url: str, missing: type[TiffpipeError] = WorkMissingError) -> Any:
    """The parsed content of a JSON file or object (``json.JSONDecodeError`` if invalid)."""
    return json.loads(read_bytes(url, missing))


def write_bytes(url: str, data: bytes) -> None:
    """Write a file (atomically, creating folders) or an object (one ``PutObject``, its
    Content-Type by its name: a run report opens as JSON, a contact sheet as a picture;
    encrypted as outputs are, :func:`output_encryption`: a report beside them meets the
    same bucket policy)."""
    with _errors(url, "write", None):
        if is_s3(url):
            bucket, key = _key_of(url)
            s3_client().put_object(Bucket=bucket, Key=key, Body=data,
                                   ContentType=content_type(key), **output_encryption())
            return
        tmp = temp_output_path(url)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, url)
        except BaseException:
            with suppress(FileNotFoundError):
                os.remove(tmp)
            raise


def write_json(url: str, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (see :func:`write_bytes`)."""
    write_bytes(url, json.dumps(obj, indent=indent).encode("utf-8"))


def exists(url: str) -> bool:
    """True if the file or object exists (an S3 prefix with objects under it does not count)."""
    if not is_s3(url):
        return os.path.exists(url)
    try:
        size(url, missing=WorkMissingError)
        return True
    except WorkMissingError:
        return False


def size(url: str, missing: type[TiffpipeError] = WorkMissingError) -> int:
    """The size in bytes of a file or object."""
    with _errors(url, "read", missing):
        if not is_s3(url):
            return os.path.getsize(url)
        bucket, key = _key_of(url)
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])


def list_prefix(url: str, no_bucket: type[TiffpipeError] | None = None,
                most: int | None = None) -> list[str]:
    """Every file or object under a folder or prefix (recursively), as sorted full paths/URLs;
    ``no_bucket``: the error of a bucket that does not exist (else a StorageError);
    ``most``: only the first that many (on S3, no more are listed)."""
    if not is_s3(url):
        return sorted(os.path.join(d, f) for d, _, files in os.walk(url) for f in files)[:most]
    bucket, prefix = split_s3(url)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    with _errors(url, "list", no_bucket):  # (a missing prefix lists nothing: no 404)
        pages = s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"MaxItems": most, "PageSize": most})
        return sorted(f"s3://{bucket}/{o['Key']}" for p in pages for o in p.get("Contents", []))


def versioned(url: str) -> bool:
    """Whether the bucket of the S3 URL ``url`` keeps versions (GetBucketVersioning says
    Enabled): an object deleted there stays, a noncurrent version, behind a delete marker.
    False when it cannot be told (no s3:GetBucketVersioning, an emulator without it)."""
    try:
        reply = s3_client().get_bucket_versioning(Bucket=split_s3(url)[0])
    except _aws_errors():
        return False
    return reply.get("Status") == "Enabled"


def top_names(url: str, most: int = 1000) -> list[str]:
    """The names directly in a folder or under a prefix (a folder's, or a deeper prefix's,
    with a trailing ``/``), at most about ``most`` (one listing: a look, not an inventory);
    none for a missing one."""
    if not is_s3(url):
        with _errors(url, "list", None):
            try:
                with os.scandir(url) as entries:
                    return sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
            except (FileNotFoundError, NotADirectoryError):
                return []
    bucket, prefix = split_s3(url)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    with _errors(url, "list", None):
        page = s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/",
                                           MaxKeys=most)
    names = [o["Key"][len(prefix):] for o in page.get("Contents", [])]
    names += [p["Prefix"][len(prefix):] for p in page.get("CommonPrefixes", [])]
    return sorted(n for n in names if n)


def remove(url: str) -> bool:
    """Delete one file or object; whether it was there (a missing one is not an error)."""
    if not is_s3(url):
        with _errors(url, "delete", None):
            try:
                os.remove(url)
            except FileNotFoundError:
                return False
        return True
    if not exists(url):
        return False
    bucket, key = _key_of(url)
    with _errors(url, "delete", None):
        s3_client().delete_object(Bucket=bucket, Key=key)
    return True


def discard(url: str) -> None:
    """Delete one file or object if it is there, in one request: no look first (S3 answers
    a DELETE of a missing key as of one there, and charges for neither)."""
    if not is_s3(url):
        with _errors(url, "delete", None), suppress(FileNotFoundError):
            os.remove(url)
        return
    bucket, key = _key_of(url)
    with _errors(url, "delete", None):
        s3_client().delete_object(Bucket=bucket, Key=key)


def delete_prefix(url: str) -> None:
    """Delete a folder or every object under a prefix; a missing one is not an error."""
    if not is_s3(url):
        if os.path.abspath(url) == os.path.abspath(os.sep):
            raise ValueError(f"refusing to delete {url!r}")
        with _errors(url, "delete", None):
            if os.path.isdir(url):
                shutil.rmtree(url)
        return
    prefix = split_s3(url)[1]
    if not prefix.strip("/"):
        raise ValueError(f"refusing to delete the whole bucket {url!r}: give a prefix")
    delete_objects(url, list_prefix(url))


def delete_objects(url: str, urls: list[str]) -> None:
    """Delete the objects ``urls`` (of one bucket, under ``url``, which errors name) in
    batches of DeleteObjects; a missing one is not an error."""
    if not urls:
        return
    bucket = split_s3(url)[0]
    keys = [split_s3(u)[1] for u in urls]
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        with _errors(url, "delete", None):
            errors = s3_client().delete_objects(
                Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
        if errors:
            raise StorageError(f"{url}: cannot delete {len(errors)} object(s), e.g. "
                               f"{errors[0].get('Key')}: {errors[0].get('Message')}")


#: how long a folder or prefix that took a probe counts as writable (see check_writable)
WRITABLE_FOR_S = 30.0
#: folder or prefix -> when (time.monotonic) it last took a probe
_writable: dict[str, float] = {}


def same_file(a: str, b: str) -> bool:
    """Whether two locations are one file: the same URL, the same resolved path, or one
    file under two names (a link)."""
    if is_s3(a) or is_s3(b):
        return a == b
    if local_path(a) == local_path(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them missing
        return False


def entry_of(path: str, follow: bool, folders: dict[str, str] | None = None) -> str:
    """The directory entry a local ``path`` names once the links of its folders are followed
    (a rename onto it replaces that entry); ``follow``: a link the name itself is followed
    too (the file a read reaches). ``folders``: real paths of folders already resolved."""
    folder, name = os.path.split(local_path(path))
    if folders is None:
        folders = {}
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    entry = os.path.join(folders[folder], name)
    return os.path.realpath(entry) if follow and os.path.islink(entry) else entry


#: whether a folder the probe cannot judge (no name with a letter in it, nor in the folders
#: above it on its file system) ignores case: as the system's default file system does
#: (APFS on macOS, NTFS on Windows)
CASELESS_BY_DEFAULT = sys.platform in ("darwin", "win32")
#: whether a folder the probe cannot judge (no name it can look up in another Unicode
#: normalization, and no probe file can be made there) ignores normalization: as macOS's
#: file systems do (APFS, HFS+); NTFS keeps NFC and NFD names apart
NORMLESS_BY_DEFAULT = sys.platform == "darwin"
#: the start of the probe file :func:`ignores_normalization` makes (and removes at once)
NORM_PROBE = ".tiffpipe-probe-"


def _first_name(folder: str, usable: Callable[[str], bool]) -> str | None:
    """The first name in ``folder`` that is ``usable``, or None (none, or the folder cannot
    be listed)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if usable(entry.name):
                    return entry.name
    except OSError:  # missing, not a folder, unreadable
        return None
    return None


def _finds_spelled(folder: str, name: str, other: str) -> bool | None:
    """Whether ``folder`` finds its entry ``name`` under ``other``, another spelling of it
    (None: it could not be told, the entry went meanwhile). The same file (os.stat identity)
    is enough; a file system that makes up its inode numbers per lookup (exFAT through FUSE)
    gives two, so a name found that the folder's listing lacks is the entry too."""
    try:
        mine = os.lstat(os.path.join(folder, name))
        found = os.lstat(os.path.join(folder, other))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    if os.path.samestat(mine, found):
        return True
    try:
        return other not in os.listdir(folder)
    except OSError:
        return None


def _asks_case(folder: str) -> bool | None:
    """Whether ``folder`` finds one of its names with an ASCII letter with its case swapped
    (ASCII only: its swapped case is another spelling of it on every file system that ignores
    case); None: it has no such name."""
    name = _first_name(folder, lambda n: n.isascii() and n.swapcase() != n)
    return None if name is None else _finds_spelled(folder, name, name.swapcase())


def _other_form(name: str) -> str:
    """``name`` in the other Unicode normalization: NFC, or NFD where it is NFC already
    (itself where both are one: ASCII, or no letter with an accent)."""
    nfc = unicodedata.normalize("NFC", name)
    return nfc if nfc != name else unicodedata.normalize("NFD", name)


def _asks_normalization(folder: str) -> bool | None:
    """Whether ``folder`` finds one of its names in the other Unicode normalization (a name
    with an accented letter); without one, whether it finds a probe file made in NFD
    (``e`` and U+0301) under its NFC spelling (``é``, U+00E9): the file is removed at once.
    None: neither can be told (no such name, and no file can be made there: the folder is
    missing or read-only)."""
    name = _first_name(folder, lambda n: not n.isascii() and _other_form(n) != n
                       and not n.startswith(NORM_PROBE))  # (another's probe: it goes)
    if name is not None:
        return _finds_spelled(folder, name, _other_form(name))
    nfd = f"{NORM_PROBE}{os.getpid()}-{os.urandom(4).hex()}-e\u0301"
    path = os.path.join(folder, nfd)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return None
    try:
        return _finds_spelled(folder, nfd, unicodedata.normalize("NFC", nfd))
    finally:
        with suppress(OSError):
            os.remove(path)


def _judged(folder: str, known: dict[str, bool] | None, ask: Callable[[str], bool | None],
            default: bool) -> bool:
    """``ask``'s answer for local ``folder``; where it has none (an empty folder, one not
    made yet), the folder above's on the same file system, then the one above that; one
    with none up to its file system's top: ``default``. ``known``: the folders judged so far
    (each one's answer is kept there)."""
    known = {} if known is None else known
    path, asked, device = os.path.abspath(folder), [], None
    if path in known:
        return known[path]
    answer: bool | None = None
    while answer is None:
        try:
            here = os.stat(path).st_dev
        except OSError:  # not made yet: made on the file system of the folder above
            here = device
        if device is not None and here != device:  # another file system: not its answer
            answer = default
            break
        if path in known:
            answer = known[path]
            break
        up = os.path.dirname(path)
        asked.append(path)
        answer = ask(path)
        if answer is None and up == path:
            answer = default
        path, device = up, here
    for folder_asked in asked:
        known[folder_asked] = answer
    return answer


def ignores_case(folder: str, known: dict[str, bool] | None = None) -> bool:
    """Whether the file system finds the names in local ``folder`` whatever their case
    (APFS and NTFS by default; a casefold folder of ext4; exFAT, FAT): one of its names
    with a letter looked up with its case swapped. A folder without one (empty, not made
    yet) is judged by the folder above it on the same file system, then the one above
    that; one with none up to its file system's top by :data:`CASELESS_BY_DEFAULT`.
    ``known``: the folders judged so far (each one's answer is kept there)."""
    return _judged(folder, known, _asks_case, CASELESS_BY_DEFAULT)


def ignores_normalization(folder: str, known: dict[str, bool] | None = None) -> bool:
    """Whether the file system finds the names in local ``folder`` whatever their Unicode
    normalization (APFS, HFS+: ``café`` with é as U+00E9, NFC, and as e and U+0301, NFD,
    are one file; ext4 and NTFS keep them apart): one of its names with an accented letter
    looked up in the other normalization, or, without one, a probe file made in NFD looked
    up in NFC (:func:`_asks_normalization`). A folder where neither can be done (not made
    yet, read-only) is judged as :func:`ignores_case` judges one, by
    :data:`NORMLESS_BY_DEFAULT` at its file system's top. ``known``: as there."""
    return _judged(folder, known, _asks_normalization, NORMLESS_BY_DEFAULT)


def _canonical(name: str, caseless: bool) -> str:
    """``name`` in NFC, case-folded first where ``caseless`` (Unicode's canonical caseless
    match: NFD, fold, then NFC for one spelling of each class)."""
    if not caseless:
        return unicodedata.normalize("NFC", name)
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def name_fold() -> Callable[[str], str]:
    """A key for local absolute paths under which two paths are one file: each name folded
    as its folder's file system compares names: case-folded (:meth:`str.casefold`) where
    the folder ignores case (:func:`ignores_case`), in NFC where it ignores Unicode
    normalization (:func:`ignores_normalization`), each folder asked once by this key, and
    about normalization only for a name that NFC changes (most are NFC, or ASCII). For the
    manifest's checks (:func:`pipeline.core.manifest.parse_manifest_or_scan`): S3 keys are
    never given it."""
    cases: dict[str, bool] = {}
    forms: dict[str, bool] = {}

    def fold(path: str) -> str:
        drive, rest = os.path.splitdrive(path)
        folder, names = drive + os.sep, []
        for name in rest.split(os.sep)[1:]:
            caseless = ignores_case(folder, cases)
            key = name.casefold() if caseless else name
            if not name.isascii():  # (one spelling in every normalization: nothing to ask)
                canonical = _canonical(name, caseless)
                if canonical != key and ignores_normalization(folder, forms):
                    key = canonical
            names.append(key)
            folder = os.path.join(folder, name)
        return drive + os.sep + os.sep.join(names)

    return fold


def check_not_input(input_url: str, output_url: str) -> None:
    """OutputNotWritableError if a local output is the input itself under another name (a
    link to it, or the input a link to it: the manifest's check compares paths only), which
    the output, published, would replace."""
    if not (is_s3(input_url) or is_s3(output_url)) and same_file(input_url, output_url):
        raise OutputNotWritableError(
            f"{output_url}: is the job's input, {input_url} (one is a link to the other): "
            "the output would replace it; give the output another path")


def check_not_folder(url: str) -> None:
    """OutputNotWritableError if a local output's path is a folder (no output of a job's:
    not one that exists already either)."""
    if not is_s3(url) and os.path.isdir(url):
        raise OutputNotWritableError(f"output {url} is a folder: give a file name, or move "
                                     "the folder away")


def output_encryption() -> dict[str, str]:
    """The server-side encryption arguments of an S3 output's PutObject or
    CreateMultipartUpload, from the environment (``TIFFPIPE_SSE``, ``TIFFPIPE_SSE_KMS_KEY_ID``:
    see pipeline/core/constants.py): none when unset (the bucket's default encryption). A
    bucket whose policy denies writes without the header (or with another) needs it."""
    mode, key = os.environ.get(SSE_ENV, ""), os.environ.get(SSE_KMS_KEY_ENV, "")
    if not mode and not key:
        return {}
    if mode not in SSE_MODES or (key and mode != "aws:kms"):
        raise OutputNotWritableError(
            f"{SSE_ENV}={mode!r}, {SSE_KMS_KEY_ENV}={key!r}: expected {SSE_ENV} one of "
            f"{', '.join(SSE_MODES)} ({SSE_KMS_KEY_ENV} only with aws:kms)")
    return {"ServerSideEncryption": mode, **({"SSEKMSKeyId": key} if key else {})}


def check_writable(url: str, what: str = "output",
                   change: str = "choose another output path",
                   started: Callable[[str], None] | None = None,
                   ended: Callable[[str], None] | None = None) -> None:
    """Fail early with :class:`OutputNotWritableError` if an output cannot be written there.

    A local folder is probed by creating (and removing) a file in it. An S3 output by
    starting a multipart upload of its own key and aborting it: nothing is written (an
    upload never completed makes no object and no event), and the request needs exactly
    what writing the output needs (s3:PutObject on the key, and its bucket's encryption key
    if any), so an output the stack may not write (outside its ``--data-bucket`` locations,
    onto an ``--input-bucket`` one) fails the job when it is planned, not at its merge after
    all its pixels were processed. ``started`` is called with the upload's id as soon as it
    is begun, before the abort (PlanJob records it in the job's work, as merge records its
    own: an abort that fails, or an invocation stopped before it, leaves an upload that the
    job's merge, RecordFailure or ``tiffpipe status`` ends), ``ended`` once it is aborted;
    an abort that fails is a warning (S3 keeps the upload, without parts, until it is
    ended), not the check's failure. A probe that succeeds counts for :data:`WRITABLE_FOR_S`
    seconds in this process for its folder or prefix: every job of a run checks its output,
    and 1,000 jobs writing to one folder made 1,000 probe files (inode churn that slows the
    filesystem's file creation) and 1,000 requests. Failures are never remembered. An
    output that becomes unwritable meanwhile still fails, when merge writes it."""
    if is_s3(url):
        _check_s3_writable(url, started, ended)
        return
    check_not_folder(url)
    check_name_length(url)
    folder = parent(url)
    link = dangling_link(folder)
    if link:
        raise OutputNotWritableError(f"{what} {url}: {link}: create that folder, or fix the "
                                     f"link, or {change}")
    while not os.path.exists(folder):  # the first existing ancestor must be a writable folder
        folder = os.path.dirname(folder)
    if _fresh(folder):
        return
    # a probe file created and removed (what tempfile.NamedTemporaryFile does, without
    # importing tempfile and random within a run's time)
    probe = os.path.join(folder, f".tiffpipe-check-{os.urandom(8).hex()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as exc:
        raise OutputNotWritableError(
            f"{what} {url}: cannot write in {folder} ({exc.strerror}): {change}, or fix the "
            "folder") from exc
    _writable[folder] = time.monotonic()


def _check_s3_writable(url: str, started: Callable[[str], None] | None,
                       ended: Callable[[str], None] | None) -> None:
    try:
        bucket, key = _key_of(url)
    except ValueError as exc:
        raise OutputNotWritableError(f"output {url}: {exc}") from exc
    where = parent(url)
    if _fresh(where):
        return
    client = s3_client()
    try:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key,
                                                **output_encryption())["UploadId"]
    except _aws_errors() as exc:
        code = _code(exc)
        if code in _MISSING_CODES:
            what = NO_OUTPUT_BUCKET
        elif code in ("403", "AccessDenied", "AllAccessDisabled"):
            what = ("writing there is not allowed (a test upload, started and aborted, was "
                    f"denied: {exc}). On AWS the stack writes only under its --data-bucket "
                    "locations (an --input-bucket location is read-only; a bucket encrypted "
                    "with a KMS key also needs --kms-key): change the output, or deploy "
                    "again naming its location with --data-bucket; locally, your "
                    "credentials need s3:PutObject there")
        else:
            what = credentials_problem(exc) or (f"cannot start an upload there ({exc}): check "
                                                "the credentials and permissions")
        raise OutputNotWritableError(f"output {url}: {what}") from exc
    if started is not None:
        try:  # (the record's error, the work location's: raised as it is)
            started(upload)
        except BaseException:
            with suppress(*_aws_errors()):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise
    try:  # a probe's upload, never completed: nothing was written
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    except _aws_errors() as exc:
        import logging

        logging.getLogger(__name__).warning(
            "output %s: the upload that checked it may be written (UploadId %s) could not "
            "be ended (%s): %s", url, upload, _code(exc) or exc,
            "its job's work records it; the job's merge or RecordFailure, or tiffpipe status "
            "of its run, ends it" if started is not None else "it stays open, listed under "
            "the output's key, until a lifecycle rule ends it: end it with `aws s3api "
            f"abort-multipart-upload --bucket {bucket} --key {key} --upload-id {upload}`, and "
            "give these credentials s3:AbortMultipartUpload there")
    else:
        if ended is not None:
            ended(upload)
    _writable[where] = time.monotonic()


def _fresh(where: str) -> bool:
    """Whether ``where`` took a write probe less than :data:`WRITABLE_FOR_S` seconds ago."""
    when = _writable.get(where)
    return when is not None and time.monotonic() - when < WRITABLE_FOR_S


def temp_output_path(url: str) -> str:
    """Where to build the local file ``url`` before :func:`publish_file`: a new name in its
    folder (made), ``.<name>.tiffpipe-<run>-<random>.tmp`` within a local run (its id,
    :data:`RUN_TAG_ENV`), ``.<name>.tiffpipe-<random>.tmp`` elsewhere."""
    if is_s3(url):
        raise ValueError(f"{url}: S3 objects are written in one step, not renamed")
    name = os.path.basename(url.rstrip("/"))
    folder = parent(url)
    try:
        _make_folder(folder)
    except OSError as exc:  # a file where a folder of the path must be, no rights
        link = dangling_link(folder)
        if link:
            raise OutputNotWritableError(f"output {url}: {link}: create that folder, or fix "
                                         "the link") from exc
        raise OutputNotWritableError(
            f"output {url}: its folder {folder} cannot be made ({exc}): check the path (a "
            "file of that name in the way, or a place that may not be written)"
        ) from exc
    limit = check_name_length(url, folder)
    run = run_tag()
    unique = os.urandom(16).hex()  # 32 hex digits (temp_output_paths)
    tag = f"{run}-{unique}" if run else unique
    return os.path.join(folder, _temp_name(_temp_stem(name, len(tag), limit), tag))


#: the longest file name (bytes) where the file system does not say (most allow 255)
NAME_MAX = 255


#: a folder -> :func:`name_max` of it (an existing folder's file system does not change
#: its limit: asked once, not at every work file written there)
_name_limits: dict[str, int] = {}


def name_max(folder: str) -> int:
    """The longest file name (bytes) the file system of the local ``folder`` (or of its
    first existing ancestor) takes: ``PC_NAME_MAX``, else :data:`NAME_MAX`."""
    known = _name_limits.get(folder)
    if known is not None:
        return known
    asked = folder
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such name here, or no pathconf
        limit = 0
    limit = limit if limit > 0 else NAME_MAX
    if folder == asked:  # (an ancestor's answer is not kept for a folder not made yet)
        _name_limits[asked] = limit
    return limit


def check_name_length(url: str, folder: str | None = None) -> int:
    """OutputNotWritableError if the local file ``url``'s name is longer than its file
    system takes (:func:`name_max`); else that limit."""
    folder = folder or parent(url)
    limit = name_max(folder)
    size = len(os.fsencode(os.path.basename(url)))
    if size > limit:
        raise OutputNotWritableError(
            f"output {url}: its file name is {size} bytes long, longer than the {limit} the "
            f"file system of {folder} takes: give the output a shorter name")
    return limit


def run_tag() -> str | None:
    """The local run this process works for (:data:`RUN_TAG_ENV`; None: none, or not a run
    id: letters, digits and dashes)."""
    tag = os.environ.get(RUN_TAG_ENV, "")
    return tag if _RUN_TAG.fullmatch(tag) else None


#: what a run tag may be (a run id, 20261206-060647-cb375c)
_RUN_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


def _temp_name(stem: str, tag: str) -> str:
    return f".{stem}.tiffpipe-{tag}.tmp"


#: what follows the start of the output's name in a temporary name when it was cut to fit
#: (_temp_stem), before 8 hex digits of its whole name's CRC-32
CUT = "~"


def _temp_stem(name: str, tag_length: int, limit: int) -> str:
    """The copy of the output's ``name`` in its temporary name, whose tag is ``tag_length``
    characters (ASCII) long: the name itself, or, where the temporary name would pass the
    file system's ``limit`` (bytes), its start cut to fit, then :data:`CUT` and the CRC-32
    of the whole name (an output name of 186 bytes or more, in a local run; two outputs
    whose names begin alike keep apart). The same for the same name, tag length and limit,
    so :func:`temp_output_paths` finds what a killed run left."""
    raw = os.fsencode(name)
    over = len(os.fsencode(_temp_name(name, "x" * tag_length))) - limit
    if over <= 0:
        return name
    import zlib  # (names this long only)

    mark = f"{CUT}{zlib.crc32(raw):08x}"
    keep = max(0, len(raw) - over - len(mark))
    while 0 < keep < len(raw) and 0x80 <= raw[keep] < 0xC0:  # not inside a UTF-8 character
        keep -= 1
    return os.fsdecode(raw[:keep]) + mark


def temp_output_paths(url: str, run: str) -> list[str]:
    """The temporary files :func:`temp_output_path` made beside a local output for the local
    run ``run`` and left (a process killed while it wrote one): its own, never another
    run's; none for S3 (its open uploads are the parts)."""
    if is_s3(url):
        return []
    import glob

    folder, name = os.path.split(url)
    stem = _temp_stem(name, len(run) + 33, name_max(folder or "."))
    # the run's id, then exactly the random part: run a-b's files are not run a's
    pattern = _temp_name(glob.escape(stem), f"{glob.escape(run)}-{'[0-9a-f]' * 32}")
    return glob.glob(os.path.join(glob.escape(folder), pattern))


def remove_temp_outputs(url: str, run: str) -> list[str]:
    """Remove the temporary files of the local run ``run`` beside the local output ``url``
    (:func:`temp_output_paths`: what a worker killed while it wrote the output left), never
    another run's; which it removed."""
    removed = []
    for tmp in temp_output_paths(url, run):
        with _errors(tmp, "delete", None), suppress(FileNotFoundError):
            os.remove(tmp)
            removed.append(tmp)
    return removed


def dangling_link(path: str) -> str | None:
    """What makes the local ``path`` unreachable when it is a symbolic link to nothing (or
    a folder of its path is): "<link> is a link to <target>, which does not exist"; None
    otherwise (the path or its folder exist, or are merely missing)."""
    path = os.path.abspath(path)
    while True:
        if os.path.islink(path) and not os.path.exists(path):
            try:
                target = os.readlink(path)
            except OSError:
                return None
            return f"{path} is a link to {target}, which does not exist"
        if os.path.lexists(path) or os.path.dirname(path) == path:
            return None
        path = os.path.dirname(path)


def _make_folder(folder: str) -> None:
    """Create a local folder and its parents if missing (one ``stat`` when it exists, as it
    does for every write of a job's work files after the first: ``os.makedirs`` would try
    ``mkdir`` and handle its error each time)."""
    if not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)


def content_type(key: str) -> str:
    """An object's Content-Type, by its name's extension (``mimetypes``, imported on the
    first upload: a local run never needs it)."""
    import mimetypes

    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def publish_file(local_path: str, url: str, replace: bool = True) -> None:
    """Move a finished local file to the local path ``url`` in one step (never half-visible):
    ``os.replace`` (via a temporary name in the target folder across filesystems). Without
    ``replace``, never over a file there: a hard link made in one step, which fails if
    ``url`` exists (:class:`OutputExistsError`, the file there left as it is), then the
    source removed; where the filesystem has no hard links, a check for ``url`` just before
    the rename."""
    tmp = ""
    try:
        _make_folder(parent(url))
        try:
            _move(local_path, url, replace)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = temp_output_path(url)
            shutil.copyfile(local_path, tmp)
            _move(tmp, url, replace)
            os.remove(local_path)
    except (OSError, OutputExistsError) as exc:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OutputExistsError):
            raise
        raise OutputNotWritableError(f"output {url}: cannot write: {exc}; check the folder, "
                                     "permissions and free space") from exc


#: what ``os.link`` raises on a filesystem without hard links (FAT, some network shares)
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def _move(src: str, dst: str, replace: bool) -> None:
    """Rename ``src`` to ``dst`` in one step; without ``replace``, :class:`OutputExistsError`
    if ``dst`` exists."""
    if replace:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError as exc:
        raise OutputExistsError(f"output {dst} exists already") from exc
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(dst):
            raise OutputExistsError(f"output {dst} exists already") from exc
        os.replace(src, dst)
        return
    os.remove(src)
