"""Commit markers and leftovers: a folder in the store is *committed* once its marker exists; the marker is
written last, so a folder without it is work in progress (or a crash) and never read as complete. Writers
that died leave temporary files (and, on S3, unfinished multipart uploads) that ``discard`` removes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from distkd.storage import s3
from distkd.storage.files import TEMPORARY, exists, publish, remove
from distkd.storage.uris import bucket_key, is_remote, is_s3, join, resolve

COMMIT_MARKER = "_COMMITTED"


def is_committed(folder: str) -> bool:
    return exists(join(folder, COMMIT_MARKER))


def commit(folder: str) -> bool:
    """Write the folder's marker; False if it was committed already."""
    return publish(join(folder, COMMIT_MARKER), b"")


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
            if info.type == pafs.FileType.File and TEMPORARY.match(info.base_name):
                age = now - info.mtime.timestamp() if info.mtime else 0.0
                found.append(Leftover(prefix + info.path, "temporary file", age))
    if is_s3(uri):
        bucket, key = bucket_key(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        pages = s3.s3_client().get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
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
    s3.s3_client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=leftover.upload_id)
