"""The S3 client of this process, and writes straight to the final key: one PUT, or one multipart upload for
large data, with ``If-None-Match: *`` for create-if-absent.

S3-compatible servers are reached through the standard ``AWS_ENDPOINT_URL`` variable. Credentials come
from each process's own environment, profile or instance role; they are never part of a URI and never
passed on by distkd."""

from __future__ import annotations

import functools
import os
from contextlib import suppress

from distkd.storage.uris import StorageError, bucket_key

PART_BYTES = 64 << 20  # S3 objects larger than this are written as a multipart upload of parts this size

_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def s3_client(probe: bool = False):
    """A boto3 S3 client from this process's own configuration (``probe``: fail fast, no retries)."""
    return _client(probe, tuple(os.environ.get(k) for k in _CLIENT_ENV))


@functools.cache
def _client(probe: bool, _env: tuple):  # keyed on the environment, so a changed endpoint or key is seen
    import boto3
    from botocore.config import Config

    retries = {"max_attempts": 1 if probe else 5, "mode": "standard"}
    timeouts = {"connect_timeout": 5, "read_timeout": 10} if probe else {}
    return boto3.session.Session().client("s3", config=Config(retries=retries, **timeouts))


def error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


PRECONDITION_FAILED = ("PreconditionFailed", "412")  # the key exists: a create-if-absent write lost


def put(uri: str, data: bytes, if_absent: bool) -> bool:
    """One PUT (or one multipart upload, for large data) straight to the final key; False when
    ``if_absent`` and the key exists."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = bucket_key(uri)
    client = s3_client()
    condition = {"IfNoneMatch": "*"} if if_absent else {}
    for _ in range(3):  # S3 answers 409 to a conditional write that races another one: try again
        try:
            if len(data) <= PART_BYTES:
                client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
            else:
                multipart_upload(client, bucket, key, data, condition)
            return True
        except ClientError as e:
            code = error_code(e)
            if code in PRECONDITION_FAILED:
                return False
            if code != "ConditionalRequestConflict":
                raise StorageError(f"{uri}: {describe_s3_error(e)}") from None
        except BotoCoreError as e:
            raise StorageError(f"{uri}: {e}") from None
    raise StorageError(f"{uri}: conditional write kept conflicting with concurrent writers")


def multipart_upload(client, bucket: str, key: str, data: bytes, condition: dict) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, len(data), PART_BYTES), 1):
            body = data[start : start + PART_BYTES]
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, **condition
        )
    except BaseException:
        with suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        raise


def describe_s3_error(error: Exception) -> str:
    """What an S3 error means for the user, without credentials."""
    code = error_code(error)
    meaning = {
        "NoSuchBucket": "the bucket does not exist",
        "InvalidAccessKeyId": "the access key is not known to the server (AWS_ACCESS_KEY_ID, profile or role)",
        "SignatureDoesNotMatch": "wrong secret key for this access key (AWS_SECRET_ACCESS_KEY, profile or role)",
        "AccessDenied": "access denied to these credentials",
        "403": "access denied (wrong or unknown key, or no permission)",
        "404": "the bucket does not exist",
    }.get(code)
    return meaning or f"{code or type(error).__name__}: {error}"
