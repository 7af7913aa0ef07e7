"""moto 5.2.5: a bucket policy's Deny applies whatever its Condition.

The usual HTTPS-only statement (Deny s3:* to "*" when aws:SecureTransport is false) refuses
every request in moto, HTTPS or not: moto evaluates a bucket policy's statements without
their conditions (``S3Backend.put_bucket_policy``: "Conditions are not taken into account";
an operator it does not know, such as Bool, is taken as met). On AWS the statement refuses
only requests over plain HTTP.

Expected: a GetObject over HTTPS (every boto3 call to the mock) succeeds.
Run: python bucket_policy_condition_ignored.py  (exits 1 while the bug is there)
"""

import json
import sys

import boto3
import moto
from botocore.exceptions import ClientError
from moto import mock_aws

BUCKET = "bucket"
HTTPS_ONLY = {"Version": "2012-10-17", "Statement": [{
    "Sid": "HttpsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
    "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
    "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def main() -> int:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"x")
        s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(HTTPS_ONLY))
        try:
            s3.get_object(Bucket=BUCKET, Key="k")["Body"].read()
            got = "read"
        except ClientError as exc:
            got = f"refused: {exc}"
    print(f"moto {moto.__version__}: GetObject over HTTPS under an HTTPS-only policy: {got}")
    if got != "read":
        print("BUG: the Deny applies though its condition (plain HTTP) is not met")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
