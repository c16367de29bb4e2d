"""Checks of a store location before any work starts: reachable, there when it must be, and on S3 a server
that honours create-if-absent writes (probed once per endpoint and bucket)."""

from __future__ import annotations

from collections.abc import Callable

from distkd.storage import s3
from distkd.storage.files import exists, temporary_name
from distkd.storage.uris import StorageError, bucket_key, is_s3


def check(uri: str, must_exist: bool, publishes: bool = False) -> None:
    """Raise ``StorageError`` naming ``uri`` if it cannot be used: on S3 an endpoint that does not
    answer, missing or wrong credentials, a missing bucket or no access; with ``must_exist``, nothing
    at ``uri``; with ``publishes`` (a store), an S3 server that does not honour create-if-absent writes.
    Cheap: one or two requests, and the probe's few once per endpoint and bucket."""
    if is_s3(uri):
        _check_s3(uri, must_exist, publishes)
        return
    try:
        missing = must_exist and not exists(uri)
    except OSError as e:
        raise StorageError(f"{uri}: {e}") from None
    if missing:
        raise StorageError(f"{uri}: not found")


def _check_s3(uri: str, must_exist: bool, publishes: bool) -> None:
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    bucket, key = bucket_key(uri)
    client = s3.s3_client(probe=True)
    endpoint = client.meta.endpoint_url
    try:
        folder = key.rstrip("/") + "/" if key else ""
        found = client.list_objects_v2(Bucket=bucket, Prefix=folder, MaxKeys=1)["KeyCount"] > 0
        if must_exist and key and not found:
            client.head_object(Bucket=bucket, Key=key)  # a file rather than a folder
        if publishes and not _honours_create_if_absent(client, endpoint, bucket, folder):
            raise StorageError(
                f"{uri}: the S3 server at {endpoint} ignores If-None-Match (it replaced an object that a "
                "create-if-absent write should have left alone), so create-if-absent is not guaranteed there; "
                "a store needs it for exactly-once publishing of shards, manifests and commit markers: use a "
                "server that honours conditional writes (AWS S3, recent MinIO or SeaweedFS) or a local store"
            )
    except (EndpointConnectionError, NoCredentialsError) as e:
        what = "cannot reach the S3 endpoint" if isinstance(e, EndpointConnectionError) else "no S3 credentials for"
        raise StorageError(f"{uri}: {what} {endpoint} ({e}; set AWS_ENDPOINT_URL and the node's credentials)") from None
    except ClientError as e:
        if s3.error_code(e) in ("404", "NoSuchKey") and e.operation_name == "HeadObject":
            raise StorageError(f"{uri}: not found") from None
        raise StorageError(f"{uri}: {s3.describe_s3_error(e)} (endpoint {endpoint})") from None
    except BotoCoreError as e:
        raise StorageError(f"{uri}: {e} (endpoint {endpoint})") from None


_CREATE_IF_ABSENT: dict[tuple[str, str], bool] = {}  # (endpoint, bucket) -> the probe's answer, for this process


def _honours_create_if_absent(client, endpoint: str, bucket: str, folder: str) -> bool:
    """Whether the server at ``endpoint`` refuses to replace an object under ``If-None-Match: *``, probed
    once per process under a temporary key in ``folder`` (a leftover for ``cache gc`` if this process dies)."""
    if (endpoint, bucket) not in _CREATE_IF_ABSENT:
        probe = folder + temporary_name("create-if-absent-probe")
        _CREATE_IF_ABSENT[endpoint, bucket] = _refuses_second_publish(client, bucket, probe)
    return _CREATE_IF_ABSENT[endpoint, bucket]


def _refuses_second_publish(client, bucket: str, key: str) -> bool:
    """Publish a small object at the unused ``key``, then publish it again, by PUT and by multipart upload
    (``publish`` uses both): True if the server refused both (412). Removes ``key``, and only it."""
    from botocore.exceptions import ClientError

    def refused(write: Callable[[], object]) -> bool:
        try:
            write()
        except ClientError as e:
            if s3.error_code(e) in s3.PRECONDITION_FAILED:
                return True
            raise
        return False

    body, condition = b"probe", {"IfNoneMatch": "*"}  # not empty: a multipart upload needs one part
    client.put_object(Bucket=bucket, Key=key, Body=body, **condition)
    try:
        return refused(lambda: client.put_object(Bucket=bucket, Key=key, Body=body, **condition)) and refused(
            lambda: s3.multipart_upload(client, bucket, key, body, condition)
        )
    finally:
        client.delete_object(Bucket=bucket, Key=key)
