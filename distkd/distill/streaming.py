"""Training data as a stream: each epoch, Ray Data CPU tasks read, check and prepare the split unit by
unit (in a new random unit order), next to the trainer, instead of holding the decoded set in memory.

With soft labels the units are the entry's shards: shard i holds exactly the ids of unit i of
the split, in order (its writer checked them), so the join by id is a zip of two aligned reads
done per unit, with the ids and the shard's checksum checked again in the task that reads it.
An ensemble's teachers each have their entry: the task reads shard i of every one, checked alike,
and combines them into one target there (``labels/ensemble.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
import ray.train

from distkd import labelstore
from distkd.config import DistillConfig, ResourcesConfig
from distkd.data.kinds import InputKind
from distkd.data.source import LABEL, PATH, READ_ROWS, UNLABELLED, Split, Unit
from distkd.labels.formats import Format
from distkd.specs import SoftTargets

MEMORY_FRACTION = 0.25  # auto: hold the decoded training set in memory below this share of the object store
BLOCK_BYTES = 64 << 20  # prepared bytes per streamed block
DATA_CPUS = 1  # CPUs per node kept free of trainers for the streaming tasks
# Decoded training data a streamed epoch may hold in the object store, per training worker: the read
# tasks run this far ahead of the trainers and no further (without it, Ray Data's budget is half the store).
BUFFER_BYTES_PER_WORKER = 256 << 20

CacheMode = Literal["auto", "memory", "stream"]


def choose(mode: CacheMode, split: Split, inputs: InputKind) -> Literal["memory", "stream"]:
    """``auto``: memory when the prepared inputs fit in MEMORY_FRACTION of the object store, else stream."""
    if mode != "auto":
        return mode
    decoded = split.num_rows() * inputs.row_bytes()
    return "memory" if decoded <= MEMORY_FRACTION * ray.cluster_resources().get("object_store_memory", 0) else "stream"


def reserve_data_cpus(resources: ResourcesConfig) -> ResourcesConfig:
    """The trainers' resources, lowered where needed so that DATA_CPUS per node stay free for the
    streaming tasks (on a small machine the trainer would otherwise hold every CPU and starve them)."""
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]
    workers_per_node = math.ceil(resources.max_workers / max(1, len(nodes)))
    room = (max(nodes, default=0) - DATA_CPUS) / workers_per_node
    if resources.cpus_per_worker <= room:
        return resources
    return resources.model_copy(update={"cpus_per_worker": max(room, 0.5)})


def ingest_options(workers: int) -> ray.data.ExecutionOptions:
    """Ray Train's ingest options for the streamed training set, its object store use capped at
    BUFFER_BYTES_PER_WORKER per worker."""
    options = ray.train.DataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(object_store_memory=BUFFER_BYTES_PER_WORKER * workers)
    return options


def stream(
    split: Split,
    columns: list[str],
    inputs: InputKind,
    labels: SoftTargets | None = None,
    distill: DistillConfig | None = None,
) -> ray.data.Dataset:
    """``columns`` of the split's rows (joined to the soft labels of ``labels`` when given, an ensemble's combined
    at ``distill.temperature``; without them, of the rows with a label only: nothing else teaches a model trained on
    labels alone), read, checked and prepared (by ``inputs``) per unit each epoch in blocks of about BLOCK_BYTES,
    units in a new random order every epoch."""
    if labels is None:
        units = split.units(READ_ROWS)
        shards, fmt, views = [None] * len(units), None, 0
    else:
        infos = [labelstore.manifest(entry) for entry in labels.entries]
        fmt, views, shard_rows = infos[0].format, infos[0].views, infos[0].inputs["shard_rows"]
        if any((i.format, i.views, i.inputs["shard_rows"]) != (fmt, views, shard_rows) for i in infos[1:]):
            raise labelstore.CacheError(
                f"{', '.join(labels.entries)}: an ensemble's entries need the same format, views and shard rows"
            )
        units = split.units(shard_rows)
        for entry, info in zip(labels.entries, infos):
            if len(units) != len(info.shards) or any(u.rows != s.rows for u, s in zip(units, info.shards)):
                raise labelstore.CacheError(
                    f"{entry}: the shards do not line up with the rows of {split.uri} ({split.name})"
                )
        shards = [[asdict(info.shards[u.index]) for info in infos] for u in units]
    items = [{"unit": asdict(u), "shards": s} for u, s in zip(units, shards)]
    return (
        ray.data.from_items(items, override_num_blocks=len(items))
        .randomize_block_order()
        .map_batches(
            _unit_rows,
            fn_kwargs={
                "labels": labels,
                "distill": distill,
                "fmt": fmt,
                "views": views,
                "columns": columns,
                "inputs": inputs,
            },
            batch_size=1,
            batch_format="pyarrow",
        )
    )


def block_rows(inputs: InputKind) -> int:
    return max(1, BLOCK_BYTES // inputs.row_bytes())


def _unit_rows(
    batch: pa.Table,
    labels: SoftTargets | None,
    distill: DistillConfig | None,
    fmt: Format | None,
    views: int,
    columns: list[str],
    inputs: InputKind,
) -> Iterator[dict[str, np.ndarray]]:
    for item in batch.to_pylist():
        unit = Unit(**item["unit"])
        rows = unit.read()
        if labels:
            targets = _shard_labels(labels, distill, item["shards"], fmt, views, rows["id"])
        else:
            targets, rows = {}, rows.filter(pc.not_equal(rows[LABEL], UNLABELLED))
        block = block_rows(inputs)
        for start in range(0, len(rows), block):
            part = rows.slice(start, block)
            encoded = {name: part[name].to_numpy(zero_copy_only=False) for name in part.column_names}
            out = inputs.prepare({**encoded, PATH: np.array([unit.file] * len(part))})
            out.update({name: values[start : start + block] for name, values in targets.items()})
            yield {name: out[name] for name in columns}


def _shard_labels(
    labels: SoftTargets, distill: DistillConfig, shards: list[dict], fmt: Format, views: int, ids: pa.ChunkedArray
) -> dict[str, np.ndarray]:
    """The unit's soft labels as training columns, once each teacher's shard passes the cache's check (checksum,
    the unit's ids in order); an ensemble's combined into one target, from shards that record the same views."""
    expected = ids.to_pylist()
    teachers = [
        labelstore.training_columns(
            labelstore.read_shard(entry, s["file"], expected, labelstore.ShardRecord(**s))[0], fmt
        )
        for entry, s in zip(labels.entries, shards)
    ]
    if len(teachers) == 1:
        return teachers[0]
    if views and any(not np.array_equal(t["views"], teachers[0]["views"]) for t in teachers[1:]):
        uris = ", ".join(labelstore.shard_uri(entry, s["file"]) for entry, s in zip(labels.entries, shards))
        raise labelstore.CacheError(f"{uris}: the teachers' shards of one unit record different views")
    return labels.ensemble.training_columns(teachers, fmt, views, distill.temperature)
