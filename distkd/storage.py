"""One view of every store: local folders and anything pyarrow speaks (``s3://`` included).

A folder in the store is *committed* once its marker file exists; the marker is written
last, so a folder without it is work in progress (or a crash) and never read as complete.
S3-compatible servers are reached through the standard ``AWS_ENDPOINT_URL`` variable.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs

COMMIT_MARKER = "_COMMITTED"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


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
    """Write through a temporary name and a move, so readers never see half a file."""
    fs, path = resolve(uri)
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex}"  # hidden: never listed as a file
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def is_committed(folder: str) -> bool:
    return exists(join(folder, COMMIT_MARKER))


def commit(folder: str) -> None:
    write_bytes(join(folder, COMMIT_MARKER), b"")


def remove(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
