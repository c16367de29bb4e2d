"""The content-addressed soft-label cache: ``<store>/softlabels/<key>/``.

An entry holds ``shards/part-<i>-of-<n>.parquet`` (``id``, the teacher's outputs in the entry's
format, and the ``views`` parameters when views were recorded), each written whole under its
final name, then ``manifest.json`` (the key's inputs in readable form, rows and a checksum
per shard, timings) and the commit marker, last: without the marker there is no entry.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from distkd import __version__, storage
from distkd.job import digest
from distkd.softlabels.formats import Format, to_numpy

FORMAT_VERSION = 2
SHARDS = "shards"


class CacheError(RuntimeError):
    """A cache entry that is missing or does not match its manifest or its dataset."""


def key(inputs: dict) -> str:
    """A hash of everything that changes the teacher's outputs, and nothing else."""
    return digest({"format_version": FORMAT_VERSION, **inputs}, length=32)


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def write_shard(entry: str, index: int, count: int, table: pa.Table) -> dict:
    """One shard, written whole: readers see it complete under its final name or not at all. A shard
    that a concurrent writer of the same key has committed meanwhile is kept, not replaced, so the
    checksums another writer's manifest took stay true. Returns the record of the shard that is there."""
    name = shard_name(index, count)
    uri = storage.join(entry, SHARDS, name)
    if storage.exists(uri):
        return shard_record(entry, name)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue().to_pybytes()
    storage.write_bytes(uri, data)
    return _record(name, len(table), data)


def shard_record(entry: str, name: str) -> dict:
    data = storage.read_bytes(storage.join(entry, SHARDS, name))
    return _record(name, pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows, data)


def _record(name: str, rows: int, data: bytes) -> dict:
    return {"file": f"{SHARDS}/{name}", "rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def commit(entry: str, inputs: dict, shards: list[dict], work: dict) -> dict:
    """Write the manifest from the shards' records (in shard order), then the commit marker.

    The writers of the shards checked each one's ids against its rows of the dataset, so the
    records are all the driver needs. ``work`` says what this job did: shards computed (the rest
    were already there), rows the teacher labelled, seconds."""
    manifest = {
        "key": entry.rstrip("/").rsplit("/", 1)[-1],
        "format_version": FORMAT_VERSION,
        "inputs": inputs,
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        **work,
        "rows_per_second": round(work["teacher_rows"] / work["teacher_seconds"], 1) if work["teacher_rows"] else None,
        "distkd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json(storage.join(entry, "manifest.json"), manifest)
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


def manifest(entry: str) -> dict:
    if not storage.is_committed(entry):
        raise CacheError(f"{entry}: no committed soft-label entry (run the softlabels stage first)")
    return storage.read_json(storage.join(entry, "manifest.json"))


def entry_format(entry: str) -> Format:
    return Format(**manifest(entry)["inputs"]["format"])


def verify(entry: str, expected_ids: list[str]) -> dict:
    """The entry's manifest, after checking every shard's rows and checksum and the ids against the dataset."""
    info = manifest(entry)
    for shard in info["shards"]:
        uri = storage.join(entry, shard["file"])
        if not storage.exists(uri):
            raise CacheError(f"{uri}: shard listed in the manifest is missing")
        data = storage.read_bytes(uri)
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise CacheError(f"{uri}: checksum does not match the manifest (shard changed or corrupted)")
        try:
            rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        except pa.ArrowInvalid as e:
            raise CacheError(f"{uri}: not a readable Parquet file: {e}") from None
        if rows != shard["rows"]:
            raise CacheError(f"{uri}: {rows} rows, the manifest says {shard['rows']}")
    check_ids(entry, [storage.join(entry, s["file"]) for s in info["shards"]], expected_ids)
    return info


def read(entry: str) -> ray.data.Dataset:
    """The committed entry's rows as ``id`` + the training columns of its format (+ ``views``)."""
    fs, _ = storage.resolve(entry)
    paths = [storage.resolve(storage.join(entry, s["file"]))[1] for s in manifest(entry)["shards"]]
    return ray.data.read_parquet(paths, filesystem=fs).map_batches(
        training_columns, fn_kwargs={"fmt": entry_format(entry)}, batch_format="pyarrow"
    )


def training_columns(batch: pa.Table, fmt: Format) -> dict[str, np.ndarray]:
    out = {"id": batch["id"].to_numpy(zero_copy_only=False), **fmt.training_columns(batch)}
    if "views" in batch.column_names:
        out["views"] = to_numpy(batch["views"], np.int64)
    return out


def entries(store: str) -> list[str]:
    """The committed entries under ``<store>/softlabels``."""
    return [f for f in storage.list_folders(storage.join(store, "softlabels")) if storage.is_committed(f)]
