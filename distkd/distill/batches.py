"""The training batches of one worker and epoch, behind one iterator (``epoch_batches``), whether the data is
held in memory (every worker reads every global batch and trains on the rows whose id hashes to its rank) or
streamed (each worker reads its own share: ``UnequalSplit``)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import ray.data
import ray.train
import torch

from distkd.distill.ddp import all_reduce

Batch = tuple[np.ndarray, dict[str, torch.Tensor], int]  # this worker's ids, their columns, the step's rows


def epoch_batches(
    shard: ray.data.DataIterator,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    split: bool,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Iterator[Batch]:
    """This worker's rows of one epoch, each row once (the last batch may be short), shuffled within a buffer
    of ``shuffle_buffer`` samples: (ids, batch, step rows), the last the rows of this step on all workers
    together. No ids: this worker has no rows in this step but must take it with the others.

    Held in memory, the data is not split: every worker iterates the same global batches of ``batch_size``
    rows (the same shuffle ``seed``) and trains on the rows whose id hashes to its rank (``worker_rows``), so
    each id is trained on exactly once whatever the worker count. Streamed (``split``), each worker reads its
    own share (``UnequalSplit``: every row goes to one worker, the shares may differ) in batches of
    ``batch_size / world`` rows, and the workers count each step's rows together: they step until every share
    is used up."""
    if split:
        yield from own_share_batches(shard, max(1, batch_size // world), shuffle_buffer, device)
        return
    for full in shard.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        local_shuffle_buffer_size=shuffle_buffer,
        local_shuffle_seed=seed,  # the same order on every worker
    ):
        mine = worker_rows(full["id"], rank, world)
        batch = {k: torch.from_numpy(v[mine]) for k, v in full.items() if k != "id"}
        yield full["id"][mine], batch, len(mine)


def own_share_batches(
    shard: ray.data.DataIterator, size: int, shuffle_buffer: int, device: str | torch.device
) -> Iterator[Batch]:
    """``epoch_batches`` of a streamed (split) shard: the workers all-reduce each step's row count and step
    together until every share is used up, a worker whose share is used up with no rows."""
    batches = iter(shard.iter_batches(batch_size=size, batch_format="numpy", local_shuffle_buffer_size=shuffle_buffer))
    while True:
        full = next(batches, None)
        rows = 0 if full is None else len(full["id"])
        total = int(all_reduce(torch.tensor(rows, dtype=torch.int64, device=device)))
        if total == 0:
            return
        if full is None:
            yield np.array([]), {}, total
        else:
            yield full["id"], {k: torch.from_numpy(v) for k, v in full.items() if k != "id"}, total


def worker_rows(ids: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Which rows of a global batch this worker trains on: a stable hash of the id modulo the world size,
    so every id is trained on by exactly one worker, whatever the number of workers."""
    return np.array([zlib.crc32(str(i).encode()) % world == rank for i in ids], dtype=bool)


def id_checksum(ids: np.ndarray) -> int:
    """A sum of per-id hashes: equal to the split's iff no id was dropped or repeated (up to a collision)."""
    return sum(zlib.crc32(str(i).encode()) for i in ids)


class UnequalSplit(ray.train.DataConfig):
    """Ray Train's dataset config, except that the datasets it splits are cut unequally: its equal split
    leaves out up to ``world - 1`` rows an epoch to even the shares, while here every row goes to exactly one
    worker (``epoch_batches`` keeps the workers in step; validation only sums at the end)."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        named = set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
        split = named & set(datasets)  # Ray Train V2 configures one dataset at a time
        whole = {name: ds for name, ds in datasets.items() if name not in split}
        output = super().configure(whole, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in split:
            ds = datasets[name].copy(datasets[name])
            ds.set_name(name)
            ds.context.execution_options = self._resolve_execution_options(name)
            shards = ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for shard, iterator in zip(output, shards):
                shard[name] = iterator
        return output
