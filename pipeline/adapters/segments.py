"""Segments (objects of encoded tiles, written as a stream) and the composition of an output
from pieces (:mod:`pipeline.core.tiff_layout`), locally or as one S3 multipart upload.

- :class:`SegmentWriter` appends bytes to a new file or object: locally a temporary file
  renamed at :meth:`~SegmentWriter.close`; on S3 a multipart upload of
  :data:`SEGMENT_PART` parts (one ``PutObject`` if it stays smaller), aborted on failure.
  Memory: one part.
- :func:`compose` writes the pieces of an output: locally by concatenation into a temporary
  file in the output's folder (segment ranges copied by the kernel), renamed when complete;
  on S3 as ONE multipart upload whose
  data parts are server-side ``UploadPartCopy`` of segment ranges (in parallel threads) and
  whose other parts (header, IFDs, a few MiB of data to reach the part minimum) are
  uploaded. Nothing is visible before the rename or ``CompleteMultipartUpload``; a failure
  removes the temporary file or aborts the upload.
- :func:`held`: the segments and indexes written under a job's work folder stay in this
  process's memory instead (a ProcessJob of a small output: no file or object is written,
  the output is composed from memory).
"""

from __future__ import annotations

import errno
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO, Self

from pipeline.adapters import storage
from pipeline.adapters.storage import _errors, _key_of, is_s3, s3_client
from pipeline.core import tiff_layout
from pipeline.core.constants import JOBS_FOLDER, UPLOADS_FOLDER
from pipeline.core.tiff_layout import Literal, MiB, Part, Piece, Span, plan_parts
from pipeline.errors import (
    AccessDeniedError,
    OutputExistsError,
    OutputNotWritableError,
    StorageError,
    TiffpipeError,
    WorkMissingError,
)

#: the part size of a segment's multipart upload (S3's minimum is 5 MiB)
SEGMENT_PART = 8 * MiB
#: bytes read at once when span bytes go through this process
READ_CHUNK = 1 * MiB
#: server-side copies in flight
COPY_THREADS = 16
#: uploaded parts (bytes read through this process: a part under 5 MiB of segment, and the
#: header and IFDs, each part about 5-10 MiB) in flight at once: their bytes are in memory
UPLOADS_IN_FLIGHT = 4


#: segments and indexes kept in memory (:func:`held`): URL -> content
_held: dict[str, bytes | bytearray] = {}
#: the work folders whose segments are held (each ends with "/")
_holding: set[str] = set()
_held_lock = threading.Lock()


@contextmanager
def held(folder: str) -> Iterator[None]:
    """Within: the segments and segment indexes written under ``folder`` (a job's work
    folder) stay in this process's memory, and :func:`read_range`, :func:`read_index` and
    :func:`compose` read them from there; they are dropped at the exit. For a ProcessJob
    whose output is small (the caller bounds it): its unit's segment would be written,
    renamed and read back within the one invocation."""
    prefix = folder.rstrip("/") + "/"
    with _held_lock:
        _holding.add(prefix)
    try:
        yield
    finally:
        with _held_lock:
            _holding.discard(prefix)
            for url in [u for u in _held if u.startswith(prefix)]:
                del _held[url]


def _is_held(url: str) -> bool:
    with _held_lock:
        return any(url.startswith(p) for p in _holding)


def write_index(url: str, doc: dict[str, Any]) -> None:
    """Write a segment's index (held in memory under :func:`held`)."""
    if _is_held(url):
        with _held_lock:
            _held[url] = json.dumps(doc).encode("utf-8")
        return
    storage.write_json(url, doc, indent=None)


def read_index(url: str) -> dict[str, Any]:
    """A segment's index, from memory if it is held."""
    data = _held.get(url)
    return json.loads(data) if data is not None else storage.read_json(url)


class SegmentWriter:
    """Append-only writer of one segment at ``url``; ``size`` is the bytes written so far.
    Use as a context manager: a clean exit publishes the segment, an exception discards it.
    Under :func:`held`, the segment's bytes stay in memory."""

    def __init__(self, url: str):
        self.url, self.size = url, 0
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload: str | None = None
        self._fh: BinaryIO | None = None
        self._hold = _is_held(url)
        if not is_s3(url) and not self._hold:
            self._tmp = storage.temp_output_path(url)
            with _errors(url, "write", None):
                self._fh = open(self._tmp, "wb")  # noqa: SIM115 (closed by close/abort)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, data: bytes) -> int:
        """Append ``data``; returns its offset in the segment."""
        offset = self.size
        self.size += len(data)
        if self._fh is not None:
            with _errors(self.url, "write", None):
                self._fh.write(data)
            return offset
        self._buffer += data
        if len(self._buffer) >= SEGMENT_PART and not self._hold:
            self._send_part()
        return offset

    def _send_part(self) -> None:
        bucket, key = _key_of(self.url)
        with _errors(self.url, "write", None):
            if self._upload is None:
                self._upload = s3_client().create_multipart_upload(
                    Bucket=bucket, Key=key)["UploadId"]
            number = len(self._parts) + 1
            etag = s3_client().upload_part(Bucket=bucket, Key=key, UploadId=self._upload,
                                           PartNumber=number, Body=bytes(self._buffer))["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})
        self._buffer = bytearray()

    def close(self) -> None:
        """Publish the segment (rename, PutObject, or CompleteMultipartUpload)."""
        try:
            if self._hold:  # the buffer itself, not a copy: it is not written to again
                with _held_lock:
                    _held[self.url] = self._buffer
                self._buffer = bytearray()
                return
            if self._fh is not None:
                with _errors(self.url, "write", None):
                    self._fh.close()
                    os.replace(self._tmp, self.url)
                return
            bucket, key = _key_of(self.url)
            if self._upload is None:
                storage.write_bytes(self.url, bytes(self._buffer))
                return
            if self._buffer:
                self._send_part()
            with _errors(self.url, "write", None):
                s3_client().complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=self._upload,
                    MultipartUpload={"Parts": self._parts})
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard what was written (best effort: the original error matters more)."""
        if self._fh is not None:
            self._fh.close()
            with suppress(FileNotFoundError):
                os.remove(self._tmp)
        elif self._upload is not None:
            bucket, key = _key_of(self.url)
            with suppress(Exception):
                s3_client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=self._upload)
        self._buffer = bytearray()


def read_range(url: str, start: int, size: int,
               missing: type[TiffpipeError] = WorkMissingError) -> bytes:
    """``size`` bytes of a segment (held in memory, or :func:`storage.read_range`) from byte
    ``start``; fewer is a :class:`WorkMissingError` (an incomplete segment)."""
    if size <= 0:
        return b""
    kept = _held.get(url)
    data = (bytes(kept[start:start + size]) if kept is not None
            else storage.read_range(url, start, size, missing))
    if len(data) != size:
        raise WorkMissingError(f"{url} holds {len(data)} bytes from {start}, {size} expected: "
                               "the segment is incomplete; re-run the job")
    return data


def piece_chunks(piece: Piece) -> Iterator[bytes]:
    """The bytes of ``piece``, :data:`READ_CHUNK` at a time."""
    if isinstance(piece, Literal):
        yield piece.data
        return
    for pos in range(0, piece.size, READ_CHUNK):
        yield read_range(piece.source, piece.start + pos, min(READ_CHUNK, piece.size - pos))


def compose(pieces: list[Piece], url: str, replace: bool = True,
            started: Callable[[str], None] | None = None, owner: str | None = None) -> int:
    """Write the file made of ``pieces`` at ``url`` in one step; returns its size. Without
    ``replace``, the step fails if ``url`` exists by then (:class:`OutputExistsError`, what is
    there left as it is): locally a hard link that cannot be made over a file
    (:func:`storage.publish_file`), on S3 the request's ``If-None-Match: *``. ``started``:
    called with the id of an S3 multipart upload as soon as it is begun, before any part
    (merge records it: what a killed merge leaves open is then known as the job's).
    ``owner``: who publishes (a job; ASCII), kept with an S3 object (its metadata
    :data:`OWNER_KEY`): without ``replace``, an object there that ``owner`` published is
    this writer's own, from an earlier attempt (a step retried after it published), not
    another's: nothing is written and its size is returned."""
    if is_s3(url):
        return _compose_s3(pieces, url, replace, started, owner)
    tmp = storage.temp_output_path(url)
    try:
        with _errors(url, "write", None), open(tmp, "wb", buffering=0) as fh:
            size = _write_local(pieces, fh)
        storage.publish_file(tmp, url, replace)
    finally:  # (best effort: a read-only file system refuses even a missing file's removal,
        with suppress(OSError):  # and the error that stopped the write is the one to tell)
            os.remove(tmp)
    return size


def _write_local(pieces: list[Piece], fh: Any) -> int:
    """Write ``pieces`` in order to the unbuffered local file ``fh``; returns the bytes
    written. Spans of local segments are copied by the kernel (``os.copy_file_range``: no
    pass through this process, ~3x faster than reading and writing them, and merge is the one
    step that runs alone); elsewhere, or where the filesystems refuse it, they are read and
    written :data:`READ_CHUNK` at a time."""
    size = 0
    source: tuple[str, Any] | None = None  # the open segment (spans come a segment at a time)
    try:
        for piece in pieces:
            done = 0
            if (isinstance(piece, Span) and not is_s3(piece.source) and _KERNEL_COPY[0]
                    and piece.source not in _held):
                if source is None or source[0] != piece.source:
                    if source is not None:
                        source[1].close()
                        source = None
                    with _errors(piece.source, "read", WorkMissingError):
                        # kept open across the segment's spans; closed below
                        source = (piece.source,
                                  open(piece.source, "rb", buffering=0))  # noqa: SIM115
                done = _kernel_copy(source[1], fh, piece)
            if done < piece.size:  # the rest (all of it, unless the kernel copied some)
                rest = piece if not done else Span(piece.source, piece.start + done,
                                                   piece.size - done)
                for chunk in piece_chunks(rest):
                    _write_all(fh, chunk)
            size += piece.size
    finally:
        if source is not None:
            source[1].close()
    return size


def _write_all(fh: Any, data: bytes) -> None:
    """Write all of ``data`` to the unbuffered file ``fh``: a raw write may take only part
    of it (a file system filling up takes what fits, and the next write fails with ENOSPC);
    a part left unwritten was lost without a word, and the output, published short, was
    reported SUCCEEDED."""
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if not n:
            raise OSError(errno.EIO, f"a write took none of {len(view)} bytes")
        view = view[n:]


#: whether os.copy_file_range works here (cleared once a filesystem pair refuses it)
_KERNEL_COPY = [hasattr(os, "copy_file_range")]


def _kernel_copy(src: Any, dst: Any, span: Span) -> int:
    """Copy ``span`` from ``src`` to ``dst``'s position with ``os.copy_file_range``; returns
    the bytes copied (fewer if the kernel cannot copy between these files: the caller copies
    the rest). A segment shorter than its index says fails as a read would."""
    done = 0
    while done < span.size:
        try:
            n = os.copy_file_range(src.fileno(), dst.fileno(), span.size - done,
                                   span.start + done)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                             errno.EPERM, errno.ENOTSUP):
                _KERNEL_COPY[0] = False
                return done
            if exc.errno in storage.UNWRITABLE:  # the output's (compose names it): no retry
                raise
            raise StorageError(f"{span.source}: cannot copy into the output: {exc}; check "
                               "the free space and permissions") from exc
        if n == 0:
            raise WorkMissingError(f"{span.source} holds {span.start + done} bytes, "
                                   f"{span.start + span.size} expected: the segment is "
                                   "incomplete; re-run the job")
        done += n
    return done


#: the S3 object metadata naming who published an output (``x-amz-meta-tiffpipe-owner``)
OWNER_KEY = "tiffpipe-owner"


def _publish(url: str, replace: bool, write: Callable[..., Any],
             owner: str | None = None) -> int | None:
    """``write(**condition)``: the one request that publishes ``url`` (PutObject, or
    CompleteMultipartUpload). Without ``replace`` it carries ``If-None-Match: *``, and S3's
    answers mean: 412, the object exists (:class:`OutputExistsError`, unless ``owner``
    published it: then the size of that object, which this request did not write; None
    when it did); 409, another conditional write to it was under way
    (:class:`_WriteConflict`: the caller raises a :class:`StorageError`, which the state
    machine retries, and the retry meets the object the other one wrote, or none); 501, a
    store without conditional writes (an S3-compatible one): the object is looked for,
    then written without the condition, as before S3 had them (a writer in between would
    be replaced)."""
    if replace:
        write()
        return None
    try:
        write(IfNoneMatch="*")
    except storage._aws_errors() as exc:
        code = storage._code(exc)
        if code in ("409", "ConditionalRequestConflict"):
            raise _WriteConflict(url) from exc
        if code not in ("412", "PreconditionFailed", "501", "NotImplemented"):
            raise
        there = _published_by(url)
        if there is not None and owner is not None and there[0] == owner:
            return there[1]
        if there is not None or code not in ("501", "NotImplemented"):
            raise OutputExistsError(f"output {url} exists already") from exc
        write()
    return None


def _published_by(url: str) -> tuple[str | None, int] | None:
    """(the owner, the size) of the object at ``url``, None if there is none."""
    bucket, key = _key_of(url)
    try:
        with _errors(url, "look at", None):
            head = s3_client().head_object(Bucket=bucket, Key=key)
    except StorageError as exc:
        if storage._code(exc.__cause__) in storage._MISSING_CODES:
            return None
        raise
    return head.get("Metadata", {}).get(OWNER_KEY), int(head["ContentLength"])


class _WriteConflict(Exception):
    """S3 answered 409 to a conditional write: another one to the same key was under way."""

    def error(self) -> StorageError:
        return StorageError(f"output {self.args[0]}: another writer was publishing it at the "
                            "same moment (S3 409 ConditionalRequestConflict); re-run the job")


def _compose_s3(pieces: list[Piece], url: str, replace: bool,
                started: Callable[[str], None] | None, owner: str | None) -> int:
    # held segments (a ProcessJob's) are not in S3: their bytes are uploaded
    copyable = all(is_s3(p.source) and p.source not in _held
                   for p in pieces if isinstance(p, Span))
    # every part is planned (and the limits checked) before the upload starts
    parts = list(plan_parts(pieces, copyable, copy_part=tiff_layout.COPY_PART))
    bucket, key = _key_of(url)
    client = s3_client()
    ctype = storage.content_type(key)
    meta = {"ContentType": ctype, "Metadata": {OWNER_KEY: owner} if owner else {},
            **storage.output_encryption()}
    if len(parts) == 1 and not parts[0].copy:  # small (a held ProcessJob's): one PutObject
        body = b"".join(chunk for piece in parts[0].pieces for chunk in piece_chunks(piece))
        try:
            own = _publish(url, replace, lambda **condition: client.put_object(
                Bucket=bucket, Key=key, Body=body, **meta, **condition), owner)
        except _WriteConflict as exc:
            raise exc.error() from exc.__cause__
        except storage._aws_errors() as exc:
            raise _upload_error(url, "the upload failed", exc) from exc
        return len(body) if own is None else own
    try:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, **meta)["UploadId"]
    except storage._aws_errors() as exc:
        raise _upload_error(url, "cannot start the upload", exc) from exc
    if started is not None:
        try:  # (the work location's error, not the output's: raised as it is)
            started(upload)
        except BaseException:
            with suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise
    try:
        pool = ThreadPoolExecutor(COPY_THREADS)
        failed = threading.Event()  # a part failed: no more parts are started
        in_memory = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT)

        def uploaded(part: Part) -> str:
            try:
                return _upload_part(bucket, key, upload, part)
            finally:
                in_memory.release()

        try:
            futures: list[Future[str]] = []
            for part in parts:
                if not part.copy:  # its bytes are read here: at most UPLOADS_IN_FLIGHT held
                    in_memory.acquire()
                if failed.is_set():
                    if not part.copy:
                        in_memory.release()
                    break  # (its error is raised below, from its future)
                future = (pool.submit(_copy_part, bucket, key, upload, part) if part.copy
                          else pool.submit(uploaded, part))
                future.add_done_callback(
                    lambda f: failed.set() if not f.cancelled() and f.exception() else None)
                futures.append(future)
            etags = [f.result() for f in futures]
        finally:
            # after a failed part, the copies queued are not started: with thousands of
            # parts they would go on for minutes before the upload is aborted
            pool.shutdown(wait=True, cancel_futures=True)
        done = {"Parts": [{"PartNumber": p.number, "ETag": e}
                          for p, e in zip(parts, etags, strict=True)]}
        with _errors(url, "write", None):
            own = _publish(url, replace, lambda **condition: client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload=done, **condition),
                owner)
        if own is not None:  # published by an earlier attempt: this upload is not needed
            with suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            return own
    except BaseException as exc:
        with suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        if isinstance(exc, _WriteConflict):
            raise exc.error() from exc.__cause__
        if isinstance(exc, TiffpipeError) and not isinstance(exc, StorageError):
            raise
        if isinstance(exc, Exception):
            raise _upload_error(url, "the upload failed and was aborted", exc) from exc
        raise
    return sum(p.size for p in parts)


def _upload_error(url: str, what: str, exc: Exception) -> TiffpipeError:
    """The error of a failed output upload (``exc``: S3's, or the StorageError a part's
    request raised for it): a :class:`StorageError`, which the state machine retries, where
    S3 throttled, failed itself or the connection dropped (the segments are all there: a
    retry costs the merge alone); else an :class:`OutputNotWritableError` (access denied,
    no such bucket: a retry meets it again)."""
    cause = exc.__cause__ if isinstance(exc, StorageError) else exc
    if storage.transient(cause):
        return StorageError(f"output {url}: {what}: {exc}; a transient error: retried")
    return OutputNotWritableError(f"output {url}: {what}: {exc}; check the bucket and "
                                  "permissions, then re-run")


def _copy_part(bucket: str, key: str, upload: str, part: Part) -> str:
    (span,) = part.pieces
    assert isinstance(span, Span)
    src_bucket, src_key = _key_of(span.source)
    with _errors(span.source, "copy", WorkMissingError):
        reply = s3_client().upload_part_copy(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=part.number,
            CopySource={"Bucket": src_bucket, "Key": src_key},
            CopySourceRange=f"bytes={span.start}-{span.start + span.size - 1}")
    return str(reply["CopyPartResult"]["ETag"])


def _upload_part(bucket: str, key: str, upload: str, part: Part) -> str:
    body = io.BytesIO()  # given as a file: botocore streams it, no second copy
    for piece in part.pieces:
        for chunk in piece_chunks(piece):
            body.write(chunk)
    body.seek(0)
    with _errors(f"s3://{bucket}/{key}", "write", None):
        reply = s3_client().upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                        PartNumber=part.number, Body=body)
    return str(reply["ETag"])


def abort_uploads(url: str) -> int:
    """Abort every unfinished multipart upload under the prefix ``url`` (a job's work
    location: its segments', e.g. left by an invocation that was killed); a local path has
    none. Returns how many were aborted. An output's key is not a job's to sweep so (another
    run may be writing it): a job aborts the uploads it recorded
    (:func:`pipeline.steps.common.abort_output_uploads`)."""
    if not is_s3(url):
        return 0
    bucket, key = storage.split_s3(url)
    aborted = 0
    with _errors(url, "abort the uploads of", None):
        pages = s3_client().get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Prefix=key)
        for page in pages:
            for upload in page.get("Uploads", []):
                s3_client().abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
                aborted += 1
    return aborted


def abort_upload(url: str, upload: str) -> bool:
    """Abort the multipart upload ``upload`` of the object ``url``; whether it was still
    open (one completed or aborted already is not an error)."""
    bucket, key = _key_of(url)
    try:
        with _errors(url, "abort the upload of", None):
            s3_client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    except StorageError as exc:
        if storage._code(exc.__cause__) in ("NoSuchUpload", "404"):
            return False
        raise
    return True


def recorded_uploads(folder: str) -> list[str]:
    """The records of output uploads under ``folder`` (a job's work, or a run's: every
    job's): ``<job>/uploads/<upload>.json`` (:func:`pipeline.steps.common.record_output_upload`);
    none for a missing folder. A listing that fails is an :class:`UploadsUnchecked`."""
    try:
        found = storage.list_prefix(folder)
    except StorageError as exc:
        raise UploadsUnchecked(str(exc)) from exc
    return [url for url in found if is_upload_record(url)]


def is_upload_record(url: str) -> bool:
    """Whether the work file ``url`` is an output upload's record (:func:`recorded_uploads`)."""
    return url.endswith(".json") and url.rsplit("/", 2)[-2] == UPLOADS_FOLDER


def upload_record(url: str) -> tuple[str, str]:
    """(the output, the upload id) of the upload record ``url``; ValueError, KeyError or
    TypeError if it is not one, a TiffpipeError if it cannot be read."""
    record = json.loads(storage.read_bytes(url))
    return str(record["output"]), str(record["upload"])


class UploadsUnchecked(StorageError):
    """The uploads a run's work records (or left open under an S3 work prefix) could not
    even be listed: whether any is open is not known."""


def abort_recorded_uploads(folder: str, outputs: list[str] | None = None) -> int:
    """Abort the output uploads recorded under ``folder`` (:func:`recorded_uploads`) that
    are still open; how many (their outputs appended to ``outputs``). A record goes once its
    upload is ended (aborted now, or completed or ended already: passed over), where it may
    be deleted (one left is passed over the next time). Every record is tried; those that
    fail are one StorageError at the end (their records kept), an :class:`AccessDeniedError`
    if S3 denied one."""
    aborted, failed, denied = 0, [], False
    for url in recorded_uploads(folder):
        try:  # each on its own: one that cannot be ended does not keep the others open
            output, upload = upload_record(url)
            if abort_upload(output, upload):
                aborted += 1
                if outputs is not None:
                    outputs.append(output)
        except (TiffpipeError, ValueError, KeyError, TypeError) as exc:
            failed.append(f"{url}: {exc}")
            denied = denied or isinstance(exc, AccessDeniedError)
            continue
        with suppress(TiffpipeError):  # a record left is passed over as an upload ended
            storage.discard(url)  # (on AWS: process, merge, and status's caller, may delete)
    if failed:
        raise (AccessDeniedError if denied else StorageError)(
            f"cannot end {len(failed)} recorded upload(s) ({aborted} ended), e.g. {failed[0]}")
    return aborted


def end_uploads(work: str, outputs: list[str] | None = None) -> int:
    """End the S3 uploads a run whose work is ``work`` left open (a killed or earlier run's,
    or an execution on AWS that ended without its Report step): its jobs' output uploads,
    which its work records (:func:`abort_recorded_uploads`, their outputs appended to
    ``outputs``), and, its work on S3, its segments' under that prefix
    (:func:`abort_uploads`); how many. A StorageError if some could not be ended;
    :class:`UploadsUnchecked` if they could not be listed."""
    ended = abort_recorded_uploads(storage.join(work, JOBS_FOLDER), outputs)
    if is_s3(work):
        ended += abort_uploads(work.rstrip("/") + "/")
    return ended
