"""The content-addressed soft-label cache: ``<store>/softlabels/<key>/``.

An entry holds ``shards/part-<i>-of-<n>.parquet`` (``id``, the teacher's outputs in the entry's
format, and the ``views`` parameters when views were recorded), each written whole under its
final name, then ``manifest.json`` (the key's inputs in readable form, rows and a checksum
per shard, timings) and the commit marker, last: without the marker there is no entry.
Shards, manifest and marker are published create-if-absent (``storage.publish``): writers of one
key never replace each other's files, so whatever a manifest lists stays as it was checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from distkd import __version__, storage
from distkd.config import ConfigError
from distkd.softlabels.formats import Format, to_numpy
from distkd.specs import FORMAT_VERSION, SoftLabelSpec, plain

SHARDS = "shards"
MANIFEST = "manifest.json"
KEY = re.compile(r"[0-9a-f]{32}")  # SoftLabelSpec.key: digest(..., length=32)


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


@contextmanager
def errors(uri: str) -> Iterator[None]:
    """Arrow, filesystem and S3 errors on the cache path as a ``CacheError`` naming ``uri``."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        message = storage.redact(str(e))
        raise CacheError(message if message.startswith(uri) else f"{uri}: {message}") from e


def write_shard(entry: str, index: int, count: int, table: pa.Table) -> ShardRecord:
    """Encode and publish one shard under its final name, create-if-absent; returns its record (file, rows,
    bytes, sha256). Called wherever a shard is computed (the driver or a worker). Readers see a shard
    whole or not at all, and a shard that another writer of the same key published first is kept, not
    replaced, and its record returned once it proves to hold the same ids, so the checksums any writer's
    manifest takes stay true. A torn or foreign file in the way is removed and the shard published anew."""
    name = shard_name(index, count)
    uri = storage.join(entry, SHARDS, name)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue().to_pybytes()
    ids = table["id"].to_pylist()
    for _ in range(3):
        with errors(uri):
            if storage.publish(uri, data):
                return _record(name, data, len(ids))
        existing = trusted_shard(entry, index, count, ids)
        if existing is not None:
            return existing
    raise CacheError(f"{uri}: other writers keep publishing shards that do not hold this shard's ids")


def trusted_shard(entry: str, index: int, count: int, expected_ids: list[str]) -> ShardRecord | None:
    """The record of shard ``index`` if it is there, reads whole and holds exactly ``expected_ids`` in order.
    A file under its name that fails this (torn by a crash, or foreign) is removed so that the shard can
    be published again, and None returned, as for a shard that is not there."""
    name = shard_name(index, count)
    uri = storage.join(entry, SHARDS, name)
    with errors(uri):
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            return None
    try:
        ids = pq.read_table(pa.BufferReader(data))["id"].to_pylist()
        problem = None if ids == expected_ids else "its ids are not this shard's"
    except (pa.ArrowException, KeyError) as e:
        problem = f"unreadable: {e}"
    if problem is None:
        return _record(name, data, len(ids))
    print(f"[softlabels] {uri}: {problem}; removing it to compute the shard again", flush=True)
    with errors(uri):
        storage.remove(uri)
    return None


def trusted_shards(entry: str, expected_ids: list[list[str]]) -> dict[int, ShardRecord]:
    """Shard index -> record of the entry's shards that can be kept on resume (``expected_ids``: each
    shard's ids, in order); the rest are missing and must be computed."""
    with errors(entry):
        present = set(storage.list_files(storage.join(entry, SHARDS), ".parquet"))
    count, records = len(expected_ids), {}
    for index, ids in enumerate(expected_ids):
        if storage.join(entry, SHARDS, shard_name(index, count)) in present:
            record = trusted_shard(entry, index, count, ids)
            if record is not None:
                records[index] = record
    return records


def _record(name: str, data: bytes, rows: int) -> ShardRecord:
    return ShardRecord(f"{SHARDS}/{name}", rows, len(data), hashlib.sha256(data).hexdigest())


def commit(
    spec: SoftLabelSpec, shards: tuple[ShardRecord, ...], computed_shards: int, rows: int, seconds: float
) -> Manifest:
    """Publish the manifest from the shards' records (in shard order), then the commit marker. The
    writers of the shards checked each one's ids against its rows of the dataset, so the records are
    all the driver needs. When another writer of the key published its manifest first, that one is
    kept (its shards are the same files) and returned.

    ``computed_shards``, ``rows`` and ``seconds`` say what this job did (the other shards were there)."""
    entry = spec.uri
    manifest = Manifest(
        key=spec.key,
        format_version=FORMAT_VERSION,
        inputs=plain(spec.identity()),
        shards=tuple(shards),
        rows=sum(s.rows for s in shards),
        bytes=sum(s.bytes for s in shards),
        computed_shards=computed_shards,
        teacher_rows=rows,
        teacher_seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds, 1) if rows else None,
        distkd_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    uri = storage.join(entry, MANIFEST)
    with errors(uri):
        if not storage.publish(uri, storage.encode_json(manifest.to_json())):
            manifest = Manifest.from_json(storage.read_json(uri))
            if manifest.shards != tuple(shards):
                raise CacheError(
                    f"{uri}: another writer's manifest lists other shards than the entry holds; "
                    f"remove the entry (distkd cache rm {manifest.key}) and run again"
                )
        storage.commit(entry)
    return manifest


def check_shards(entry: str, shards: list[ShardRecord] | tuple[ShardRecord, ...], expected_ids: list[str]) -> None:
    """Every shard's file is there with the record's checksum and rows, and the shards hold each of
    ``expected_ids`` exactly once."""
    counts: Counter[str] = Counter()
    for shard in shards:
        uri = storage.join(entry, shard.file)
        with errors(uri):
            if not storage.exists(uri):
                raise CacheError(f"{uri}: shard listed in the manifest is missing")
            data = storage.read_bytes(uri)
        if hashlib.sha256(data).hexdigest() != shard.sha256:
            raise CacheError(f"{uri}: checksum does not match the manifest (shard changed or corrupted)")
        with errors(uri):
            ids = pq.read_table(pa.BufferReader(data), columns=["id"])["id"].to_pylist()
        if len(ids) != shard.rows:
            raise CacheError(f"{uri}: {len(ids)} rows, the manifest says {shard.rows}")
        counts.update(ids)
    duplicated = [i for i, n in counts.items() if n > 1]
    missing = set(expected_ids) - counts.keys()
    extra = counts.keys() - set(expected_ids)
    if duplicated or missing or extra:
        raise CacheError(
            f"{entry}: ids do not match the dataset: {len(duplicated)} duplicated, {len(missing)} missing, "
            f"{len(extra)} unexpected (e.g. {sorted([*duplicated, *missing, *extra])[:3]})"
        )


def is_committed(entry: str) -> bool:
    with errors(entry):
        return storage.is_committed(entry)


def manifest(entry: str) -> Manifest:
    if not is_committed(entry):
        raise CacheError(f"{entry}: no committed soft-label entry (run the softlabels stage first)")
    uri = storage.join(entry, MANIFEST)
    with errors(uri):
        return Manifest.from_json(storage.read_json(uri))


def verify(entry: str, expected_ids: list[str]) -> Manifest:
    """The entry's manifest, after checking every shard's rows and checksum and the ids against the dataset."""
    info = manifest(entry)
    check_shards(entry, info.shards, expected_ids)
    return info


def read(entry: str) -> ray.data.Dataset:
    """The committed entry's rows as ``id`` + the training columns of its format (+ ``views``)."""
    fs, _ = storage.resolve(entry)
    info = manifest(entry)
    paths = [storage.resolve(storage.join(entry, s.file))[1] for s in info.shards]
    return ray.data.read_parquet(paths, filesystem=fs).map_batches(
        training_columns, fn_kwargs={"fmt": info.format}, batch_format="pyarrow"
    )


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


def entry_folder(store: str, key: str) -> str:
    """The folder of entry ``key``, committed or not, after checking that ``key`` is a key as the cache
    writes it and names a folder directly under ``<store>/softlabels``: a name such as ``..`` or ``""``
    would otherwise reach the whole store or the whole cache. Raises ``ConfigError`` otherwise."""
    if not KEY.fullmatch(key):
        raise ConfigError(
            f"{key!r} is not a soft-label cache key (expected 32 lowercase hex characters, "
            f"as listed by: distkd cache ls --store {store})"
        )
    root = storage.join(store, "softlabels")
    folder = storage.join(root, key)
    with errors(root):
        if folder not in storage.list_folders(root):
            raise ConfigError(f"{folder}: no such cache entry (see: distkd cache ls --store {store})")
    return folder


def leftovers(store: str) -> list[storage.Leftover]:
    """Temporary files and unfinished multipart uploads that writers of ``<store>/softlabels`` left behind;
    only those that really lie under it (not reached through a link to another folder)."""
    root = storage.join(store, "softlabels")
    with errors(root):
        return [leftover for leftover in storage.leftovers(root) if _within(root, leftover.uri)]


def _within(folder: str, uri: str) -> bool:
    """Whether ``uri`` lies under ``folder``; local paths are compared with their links resolved."""
    if storage.is_remote(folder):
        return uri.startswith(folder.rstrip("/") + "/") and ".." not in uri.split("/")
    return os.path.realpath(uri).startswith(os.path.realpath(folder) + os.sep)


def collect_garbage(store: str, older_than: float) -> list[storage.Leftover]:
    """Remove the leftovers older than ``older_than`` seconds (younger ones may belong to a running writer);
    returns those removed."""
    removed = [leftover for leftover in leftovers(store) if leftover.age_seconds >= older_than]
    for leftover in removed:
        with errors(leftover.uri):
            storage.discard(leftover)
    return removed
