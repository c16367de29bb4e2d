"""Reading and writing files in a store: whole files only (readers see the old file or the new one), and
create-if-absent publishing for files that must never replace one another (shards, manifests, markers)."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pyarrow.fs as pafs

from distkd.storage import s3
from distkd.storage.uris import StorageError, absolute, is_remote, is_s3, join, resolve

TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")  # the names temporary_name gives


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
        s3.put(uri, data, if_absent=False)
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
        return s3.put(uri, data, if_absent=True)
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


def remove(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


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
