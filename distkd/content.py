"""Content hashes of store files, remembered by (URI, size, modification time).

Identities hash what data contains, not what it is called; reading every byte of a data set on
every run would cost more than the run's planning, so a file's sha256 is kept in a small local
table (``$DISTKD_CACHE_DIR``, default ``~/.cache/distkd``) and read again only when the file's
size or modification time changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from distkd import storage

CHUNK = 1 << 22


def table_path() -> Path:
    return Path(os.environ.get("DISTKD_CACHE_DIR", Path.home() / ".cache" / "distkd")) / "sha256.json"


def _load() -> dict[str, str]:
    try:
        return json.loads(table_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(table: dict[str, str]) -> None:
    path = table_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(table, f)
        os.replace(f.name, path)  # concurrent runs: last writer wins, every version is whole
    except OSError:
        pass  # a read-only home only costs rehashing next time


def read_sha256(uri: str) -> str:
    """The sha256 of the file's bytes, read in chunks."""
    fs, path = storage.resolve(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(uri: str) -> str:
    """The file's sha256, from the table when its size and modification time are unchanged."""
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.mtime_ns is None:  # no modification time to trust: hash every time
        return read_sha256(uri)
    stamp = f"{uri}|{info.size}|{info.mtime_ns}"
    table = _load()
    if stamp not in table:
        table = {k: v for k, v in table.items() if not k.startswith(f"{uri}|")}
        table[stamp] = read_sha256(uri)
        _save(table)
    return table[stamp]
