"""Reading the soft-label store: what every stage that reads an entry or a shard needs (the softlabels stage
that writes them, the distill stage's reader, the catalog and the report), below all of them.

An entry ``<store>/softlabels/<key>/`` is ``manifest.json`` and the commit marker; its shards lie under
``<store>/softlabels/shards/`` (``softlabels/cache.py`` writes both). Every reader of a shard makes the one
check, ``read_shard``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distkd import storage
from distkd.labels.formats import Format, to_numpy

MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache entry that is missing, cannot be read or written, or does not match its manifest or its dataset."""


@dataclass(frozen=True)
class ShardRecord:
    file: str  # relative to the entry
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: the key's inputs in readable form, each shard's record, and what the job that
    committed the entry did (shards computed, rows the teacher labelled, seconds)."""

    key: str
    format_version: int
    inputs: dict
    shards: tuple[ShardRecord, ...]
    rows: int
    bytes: int
    computed_shards: int
    teacher_rows: int
    teacher_seconds: float
    rows_per_second: float | None
    distkd_version: str
    created: str
    unit: str = "row"  # what a label is of (``Task.unit``): a row, or a language model's token
    positions: int = 1  # units a row: a language model's block length
    bytes_per_unit: float | None = None  # bytes / (rows * positions); None in a manifest from before

    @property
    def format(self) -> Format:
        return Format(**self.inputs["format"])

    @property
    def views(self) -> int:
        return (self.inputs["views"] or {}).get("count", 0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Manifest:
        return cls(**{**raw, "shards": tuple(ShardRecord(**s) for s in raw["shards"])})


def shard_uri(entry: str, file: str) -> str:
    """The URI of a shard a manifest lists as ``file``, relative to ``entry`` (``..`` resolved here: object
    stores take it as part of a key)."""
    folder = entry.rstrip("/")
    while file.startswith("../"):
        folder, file = folder.rsplit("/", 1)[0], file[3:]
    return storage.join(folder, file)


@contextmanager
def errors(uri: str) -> Iterator[None]:
    """Arrow, filesystem and S3 errors on the cache path as a ``CacheError`` naming ``uri``."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        message = storage.redact(str(e))
        raise CacheError(message if message.startswith(uri) else f"{uri}: {message}") from e


class ShardMissing(CacheError):
    """No file where a shard should be."""


class ShardMismatch(CacheError):
    """A shard file that does not read whole, or is not what its record or its unit says it is."""


def read_shard(
    entry: str,
    file: str,
    expected_ids: list[str] | None,
    record: ShardRecord | None = None,
    columns: list[str] | None = None,
) -> tuple[pa.Table, ShardRecord]:
    """Shard ``file`` (relative to ``entry``) and its record, after the one check every reader of a shard
    makes: it reads whole, its checksum and rows are ``record``'s when a manifest gave one, and it holds
    exactly ``expected_ids``, in order, when they are given. Raises ShardMissing or ShardMismatch, naming
    the shard's URI and what differs."""
    uri = shard_uri(entry, file)
    with errors(uri):
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise ShardMissing(f"{uri}: shard is missing") from None
    if record is not None and hashlib.sha256(data).hexdigest() != record.sha256:
        raise ShardMismatch(f"{uri}: checksum does not match the manifest (shard changed or corrupted)")
    try:
        table = pq.read_table(pa.BufferReader(data), columns=columns)
        ids = table["id"].to_pylist()
    except (pa.ArrowException, KeyError) as e:
        raise ShardMismatch(f"{uri}: unreadable: {e}") from e
    if record is not None and len(ids) != record.rows:
        raise ShardMismatch(f"{uri}: {len(ids)} rows, the manifest says {record.rows}")
    if expected_ids is not None:
        check_ids(uri, ids, expected_ids)
    return table, record_of(file, data, len(ids))


def check_ids(uri: str, ids: list[str], expected_ids: list[str]) -> None:
    if ids != expected_ids:
        raise ShardMismatch(f"{uri}: its ids are not this shard's (those of its unit of the dataset, in order)")


def record_of(file: str, data: bytes, rows: int) -> ShardRecord:
    return ShardRecord(file, rows, len(data), hashlib.sha256(data).hexdigest())


def is_committed(entry: str) -> bool:
    with errors(entry):
        return storage.is_committed(entry)


def manifest(entry: str) -> Manifest:
    if not is_committed(entry):
        raise CacheError(f"{entry}: no committed soft-label entry (run the softlabels stage first)")
    uri = storage.join(entry, MANIFEST)
    with errors(uri):
        return Manifest.from_json(storage.read_json(uri))


def training_columns(batch: pa.Table, fmt: Format) -> dict[str, np.ndarray]:
    out = {"id": batch["id"].to_numpy(zero_copy_only=False), **fmt.training_columns(batch)}
    if "views" in batch.column_names:
        out["views"] = to_numpy(batch["views"], np.int64)
    return out


def entries(store: str) -> list[str]:
    """The committed entries under ``<store>/softlabels``."""
    root = storage.join(store, "softlabels")
    with errors(root):
        return [f for f in storage.list_folders(root) if storage.is_committed(f)]
