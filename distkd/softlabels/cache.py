"""The content-addressed soft-label cache: ``<store>/softlabels/<key>/``.

An entry holds Parquet shards of ``id`` + teacher ``logits``, ``manifest.json`` (the key's
inputs in readable form, rows and a checksum per shard, timings) and the commit marker,
written last: without the marker there is no entry.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from distkd import __version__, storage

FORMAT_VERSION = 1
SHARDS = "shards"


class CacheError(RuntimeError):
    """A cache entry that is missing or does not match its manifest."""


def key(inputs: dict) -> str:
    """A hash of everything that changes the teacher's outputs, and nothing else."""
    from distkd.job import digest

    return digest({"format_version": FORMAT_VERSION, **inputs}, length=32)


def shard_record(uri: str, base: str) -> dict:
    fs, path = storage.resolve(uri)
    data = storage.read_bytes(uri)
    rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    return {"file": uri.removeprefix(base).lstrip("/"), "rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(entry: str, inputs: dict, expected_ids: int, seconds: float) -> dict:
    """Describe the shards now in the entry, check one row per input id, then commit."""
    shards = [shard_record(f, entry) for f in storage.list_files(storage.join(entry, SHARDS), ".parquet")]
    rows = sum(s["rows"] for s in shards)
    unique = len(set().union(*(ids(storage.join(entry, s["file"])) for s in shards))) if shards else 0
    if not rows == unique == expected_ids:
        raise CacheError(f"{entry}: teacher wrote {rows} rows for {unique} unique ids, expected one row for each of {expected_ids} ids")
    manifest = {
        "key": entry.rstrip("/").rsplit("/", 1)[-1],
        "format_version": FORMAT_VERSION,
        "inputs": inputs,
        "shards": shards,
        "rows": rows,
        "bytes": sum(s["bytes"] for s in shards),
        "teacher_seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1) if seconds else None,
        "distkd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json(storage.join(entry, "manifest.json"), manifest)
    storage.commit(entry)
    return manifest


def ids(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    return pq.read_table(path, columns=["id"], filesystem=fs)["id"].to_pylist()


def manifest(entry: str) -> dict:
    if not storage.is_committed(entry):
        raise CacheError(f"{entry}: no committed soft-label entry (run the softlabels stage first)")
    return storage.read_json(storage.join(entry, "manifest.json"))


def logits_array(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """A fixed-size-list column of logits -> float32 [N, C]."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)


def _as_teacher_logits(batch: pa.Table) -> dict[str, np.ndarray]:
    return {"id": batch["id"].to_numpy(zero_copy_only=False), "teacher_logits": logits_array(batch["logits"])}


def read(entry: str) -> ray.data.Dataset:
    """The committed entry's rows as ``id`` + float32 ``teacher_logits``."""
    fs, _ = storage.resolve(entry)
    paths = [storage.resolve(storage.join(entry, s["file"]))[1] for s in manifest(entry)["shards"]]
    return ray.data.read_parquet(paths, filesystem=fs).map_batches(_as_teacher_logits, batch_format="pyarrow")
