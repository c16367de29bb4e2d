"""One view of every store: local folders and anything pyarrow speaks (``s3://`` included).

A folder in the store is *committed* once its marker file exists; the marker is written
last, so a folder without it is work in progress (or a crash) and never read as complete.
Files that must never replace one another (shards, manifests, markers) are *published*
create-if-absent: the first writer wins and every later one learns that it lost.

S3-compatible servers are reached through the standard ``AWS_ENDPOINT_URL`` variable. Credentials
come from each process's own environment, profile or instance role; they are never part of a URI
and never passed on by distkd.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

COMMIT_MARKER = "_COMMITTED"
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")  # what pyarrow's from_uri opens
CREDENTIAL_PARAMETERS = {"access_key", "secret_key", "session_token"}  # pyarrow reads these from a query
PART_BYTES = 64 << 20  # S3 objects larger than this are written as a multipart upload of parts this size
_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")


class URIError(ValueError):
    """A string that cannot name a location in a store."""


class StorageError(OSError):
    """A location that cannot be read or written; the message names the URI and the cause."""


def validate(uri: str) -> str:
    """``uri`` unchanged if it is a local path or a well-formed URI without credentials in it."""
    scheme, colon, rest = uri.partition(":")
    if not colon or len(scheme) < 2 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return uri  # a local path
    if not rest.startswith("//"):
        raise URIError(f"{uri}: malformed URI: expected '{scheme}://' (two slashes) or a local path")
    if scheme.lower() not in SCHEMES:
        raise URIError(f"{uri}: unknown scheme '{scheme}://' (expected a local path or {', '.join(SCHEMES)})")
    parts = urlsplit(uri)
    if "@" in parts.netloc or CREDENTIAL_PARAMETERS & parse_qs(parts.query).keys():
        raise URIError(
            f"{redact(uri)}: credentials in a URI are refused (they would end up in logs and manifests); "
            "give each node its own through its environment, profile or instance role"
        )
    if scheme != "file" and not parts.netloc:
        raise URIError(f"{uri}: no bucket or host after '{scheme}://'")
    return uri


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it (user and password, key parameters) replaced by ``***``."""
    text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)
    return re.sub(rf"\b({'|'.join(CREDENTIAL_PARAMETERS)})=[^&\s'\"]*", r"\1=***", text)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def absolute(uri: str) -> str:
    """Local paths become absolute (Ray workers do not share the driver's cwd)."""
    if is_remote(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for ``uri``."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), absolute(uri)
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _children(uri: str, kind: pafs.FileType) -> list[str]:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == kind)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files directly under folder ``uri`` whose names end in ``suffix``, sorted;
    hidden names (``.``, ``_``: temporary files, markers) are left out."""
    names = _children(uri, pafs.FileType.File)
    return [join(uri, n) for n in names if n.endswith(suffix) and not n.startswith((".", "_"))]


def list_folders(uri: str) -> list[str]:
    """URIs of the folders directly under folder ``uri``, sorted."""
    return [join(uri, n) for n in _children(uri, pafs.FileType.Directory)]


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` at ``uri``, replacing what is there; readers see the old file or the new one, whole."""
    if is_s3(uri):
        _put_s3(uri, data, if_absent=False)
        return
    if is_remote(uri):
        fs, path = resolve(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    with _local_temporary(absolute(uri), data) as (tmp, path):
        os.replace(tmp, path)
        _fsync_folder(os.path.dirname(path))


def publish(uri: str, data: bytes) -> bool:
    """Write ``data`` at ``uri`` unless a file is there already; True if this call wrote it.

    Readers see the whole file or nothing, and a published file is never replaced, so two writers
    racing for one name end with exactly one file, the first one's. On S3 the object goes straight
    to its final key with ``If-None-Match: *``; locally a fsynced temporary file is hard-linked to
    the final name, which fails if that name exists."""
    if is_s3(uri):
        return _put_s3(uri, data, if_absent=True)
    if is_remote(uri):
        raise StorageError(f"{uri}: create-if-absent writes need a local folder or s3://")
    with _local_temporary(absolute(uri), data) as (tmp, path):
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_folder(os.path.dirname(path))
        return True


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, encode_json(obj))


def is_committed(folder: str) -> bool:
    return exists(join(folder, COMMIT_MARKER))


def commit(folder: str) -> bool:
    """Write the folder's marker; False if it was committed already."""
    return publish(join(folder, COMMIT_MARKER), b"")


def remove(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


# Local folders ---------------------------------------------------------------------------------------------


def temporary_name(name: str) -> str:
    """A hidden name beside ``name`` for a file still being written (never listed, removed by ``discard``)."""
    return f".{name}.tmp-{uuid.uuid4().hex}"


@contextmanager
def _local_temporary(path: str, data: bytes) -> Iterator[tuple[str, str]]:
    """``data`` in a fsynced temporary file beside ``path``, removed on exit whatever happens to it."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, temporary_name(name))
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield tmp, path
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# S3 ------------------------------------------------------------------------------------------------------

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


def bucket_key(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


_PRECONDITION_FAILED = ("PreconditionFailed", "412")  # the key exists: a create-if-absent write lost


def _put_s3(uri: str, data: bytes, if_absent: bool) -> bool:
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
                _multipart_upload(client, bucket, key, data, condition)
            return True
        except ClientError as e:
            code = _error_code(e)
            if code in _PRECONDITION_FAILED:
                return False
            if code != "ConditionalRequestConflict":
                raise StorageError(f"{uri}: {describe_s3_error(e)}") from None
        except BotoCoreError as e:
            raise StorageError(f"{uri}: {e}") from None
    raise StorageError(f"{uri}: conditional write kept conflicting with concurrent writers")


def _multipart_upload(client, bucket: str, key: str, data: bytes, condition: dict) -> None:
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
    code = _error_code(error)
    meaning = {
        "NoSuchBucket": "the bucket does not exist",
        "InvalidAccessKeyId": "the access key is not known to the server (AWS_ACCESS_KEY_ID, profile or role)",
        "SignatureDoesNotMatch": "wrong secret key for this access key (AWS_SECRET_ACCESS_KEY, profile or role)",
        "AccessDenied": "access denied to these credentials",
        "403": "access denied (wrong or unknown key, or no permission)",
        "404": "the bucket does not exist",
    }.get(code)
    return meaning or f"{code or type(error).__name__}: {error}"


# Checks before work starts -------------------------------------------------------------------------------


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
    client = s3_client(probe=True)
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
        if _error_code(e) in ("404", "NoSuchKey") and e.operation_name == "HeadObject":
            raise StorageError(f"{uri}: not found") from None
        raise StorageError(f"{uri}: {describe_s3_error(e)} (endpoint {endpoint})") from None
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
            if _error_code(e) in _PRECONDITION_FAILED:
                return True
            raise
        return False

    body, condition = b"probe", {"IfNoneMatch": "*"}  # not empty: a multipart upload needs one part
    client.put_object(Bucket=bucket, Key=key, Body=body, **condition)
    try:
        return refused(lambda: client.put_object(Bucket=bucket, Key=key, Body=body, **condition)) and refused(
            lambda: _multipart_upload(client, bucket, key, body, condition)
        )
    finally:
        client.delete_object(Bucket=bucket, Key=key)


# Leftovers of writers that died --------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """A temporary file, or an unfinished S3 multipart upload, that no finished write will claim."""

    uri: str
    kind: str  # "temporary file" | "multipart upload"
    age_seconds: float
    upload_id: str | None = None


def leftovers(uri: str) -> list[Leftover]:
    """The temporary files under folder ``uri`` (at any depth) and, on S3, the unfinished multipart
    uploads under its prefix, oldest first."""
    fs, path = resolve(uri)
    now, found = time.time(), []
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        prefix = f"{urlsplit(uri).scheme}://" if is_remote(uri) else ""
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if info.type == pafs.FileType.File and _TEMPORARY.match(info.base_name):
                age = now - info.mtime.timestamp() if info.mtime else 0.0
                found.append(Leftover(prefix + info.path, "temporary file", age))
    if is_s3(uri):
        bucket, key = bucket_key(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        pages = s3_client().get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                age = now - upload["Initiated"].timestamp()
                found.append(Leftover(f"s3://{bucket}/{upload['Key']}", "multipart upload", age, upload["UploadId"]))
    return sorted(found, key=lambda leftover: -leftover.age_seconds)


def discard(leftover: Leftover) -> None:
    if leftover.upload_id is None:
        remove(leftover.uri)
        return
    bucket, key = bucket_key(leftover.uri)
    s3_client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=leftover.upload_id)
