"""The content-addressed soft-label cache: ``<store>/softlabels/<key>/``.

An entry holds ``shards/part-<i>-of-<n>.parquet`` (``id``, the teacher's outputs in the entry's
format, and the ``views`` parameters when views were recorded), each written whole under its
final name, then ``manifest.json`` (the key's inputs in readable form, rows and a checksum
per shard, timings) and the commit marker, last: without the marker there is no entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from distkd import __version__, storage
from distkd.softlabels.formats import Format, to_numpy
from distkd.specs import FORMAT_VERSION, SoftLabelSpec, plain

SHARDS = "shards"
MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache entry that is missing or does not match its manifest or its dataset."""


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


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def write_shard(entry: str, index: int, count: int, table: pa.Table) -> None:
    """One shard, written whole: readers see it complete under its final name or not at all. A shard
    that a concurrent writer of the same key has committed meanwhile is kept, not replaced, so the
    checksums another writer's manifest took stay true."""
    uri = storage.join(entry, SHARDS, shard_name(index, count))
    if storage.exists(uri):
        return
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(uri, buffer.getvalue().to_pybytes())


def shard_record(entry: str, name: str) -> ShardRecord:
    data = storage.read_bytes(storage.join(entry, SHARDS, name))
    rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    return ShardRecord(f"{SHARDS}/{name}", rows, len(data), hashlib.sha256(data).hexdigest())


def commit(
    spec: SoftLabelSpec, shard_count: int, expected_ids: list[str], computed_shards: int, rows: int, seconds: float
) -> Manifest:
    """Describe the shards, check they hold each expected id exactly once, write the manifest, commit.

    ``computed_shards``, ``rows`` and ``seconds`` say what this job did (the other shards were there)."""
    entry = spec.uri
    shards = tuple(shard_record(entry, shard_name(i, shard_count)) for i in range(shard_count))
    check_ids(entry, [storage.join(entry, s.file) for s in shards], expected_ids)
    manifest = Manifest(
        key=spec.key,
        format_version=FORMAT_VERSION,
        inputs=plain(spec.identity()),
        shards=shards,
        rows=sum(s.rows for s in shards),
        bytes=sum(s.bytes for s in shards),
        computed_shards=computed_shards,
        teacher_rows=rows,
        teacher_seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds, 1) if rows else None,
        distkd_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    storage.write_json(storage.join(entry, MANIFEST), manifest.to_json())
    storage.commit(entry)
    return manifest


def check_ids(entry: str, shard_uris: list[str], expected_ids: list[str]) -> None:
    counts = Counter(i for uri in shard_uris for i in read_ids(uri))
    duplicated = [i for i, n in counts.items() if n > 1]
    missing = set(expected_ids) - counts.keys()
    extra = counts.keys() - set(expected_ids)
    if duplicated or missing or extra:
        raise CacheError(
            f"{entry}: ids do not match the dataset: {len(duplicated)} duplicated, {len(missing)} missing, "
            f"{len(extra)} unexpected (e.g. {sorted([*duplicated, *missing, *extra])[:3]})"
        )


def read_ids(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    return pq.read_table(path, columns=["id"], filesystem=fs)["id"].to_pylist()


def manifest(entry: str) -> Manifest:
    if not storage.is_committed(entry):
        raise CacheError(f"{entry}: no committed soft-label entry (run the softlabels stage first)")
    return Manifest.from_json(storage.read_json(storage.join(entry, MANIFEST)))


def verify(entry: str, expected_ids: list[str]) -> Manifest:
    """The entry's manifest, after checking every shard's rows and checksum and the ids against the dataset."""
    info = manifest(entry)
    for shard in info.shards:
        uri = storage.join(entry, shard.file)
        if not storage.exists(uri):
            raise CacheError(f"{uri}: shard listed in the manifest is missing")
        data = storage.read_bytes(uri)
        if hashlib.sha256(data).hexdigest() != shard.sha256:
            raise CacheError(f"{uri}: checksum does not match the manifest (shard changed or corrupted)")
        try:
            rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        except pa.ArrowInvalid as e:
            raise CacheError(f"{uri}: not a readable Parquet file: {e}") from None
        if rows != shard.rows:
            raise CacheError(f"{uri}: {rows} rows, the manifest says {shard.rows}")
    check_ids(entry, [storage.join(entry, s.file) for s in info.shards], expected_ids)
    return info


def read(entry: str) -> ray.data.Dataset:
    """The committed entry's rows as ``id`` + the training columns of its format (+ ``views``)."""
    fs, _ = storage.resolve(entry)
    info = manifest(entry)
    paths = [storage.resolve(storage.join(entry, s.file))[1] for s in info.shards]
    return ray.data.read_parquet(paths, filesystem=fs).map_batches(
        _training_columns, fn_kwargs={"fmt": info.format}, batch_format="pyarrow"
    )


def _training_columns(batch: pa.Table, fmt: Format) -> dict[str, np.ndarray]:
    out = {"id": batch["id"].to_numpy(zero_copy_only=False), **fmt.training_columns(batch)}
    if "views" in batch.column_names:
        out["views"] = to_numpy(batch["views"], np.int64)
    return out


def entries(store: str) -> list[str]:
    """The committed entries under ``<store>/softlabels``."""
    return [f for f in storage.list_folders(storage.join(store, "softlabels")) if storage.is_committed(f)]
