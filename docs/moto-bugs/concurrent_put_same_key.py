"""moto: two PutObject calls on the same key at once can fail one of them with
``ValueError: I/O operation on closed file``.

``S3Response.put_object`` stores the new key (which disposes of the key it replaces, closing
its value buffer) and then reads the new key's ETag from its buffer. When another thread's
PutObject on the same key lands in between, it disposes of this call's new key, and the ETag
read fails on the closed buffer. AWS S3 takes concurrent writes of one key (the last one
wins). Seen in tiffpipe's tests: two executions of one manifest writing one output.

Prints ``BUG`` and exits 1 while the bug is there, ``OK`` and 0 once it is fixed.
"""

from __future__ import annotations

import sys
import threading

import boto3
from moto import mock_aws

ROUNDS, THREADS = 200, 4


def main() -> int:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="repro-bucket")
        errors: list[str] = []

        def put(body: bytes) -> None:
            for _ in range(ROUNDS):
                try:
                    s3.put_object(Bucket="repro-bucket", Key="same", Body=body)
                except Exception as exc:  # noqa: BLE001 - what moto raises is the point
                    errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=put, args=(bytes([k]) * 200_000,))
                   for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        print(f"BUG: {len(errors)} of {ROUNDS * THREADS} PutObject calls on one key from "
              f"{THREADS} threads failed, the first with {errors[0]}")
        return 1
    print(f"OK: {ROUNDS * THREADS} PutObject calls on one key from {THREADS} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
