"""The training batches of one worker, behind one iterator per epoch (``Batches.epoch``), whether the data is
held in memory (``HeldBatches``: every worker holds every row and trains on the rows whose id hashes to its
rank) or streamed (``StreamedBatches``: each worker reads its own share, ``UnequalSplit``)."""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import ray.data
import ray.train
import torch
from ray.data import ExecutionOptions

from distkd.distill.ddp import all_reduce

Batch = tuple[np.ndarray, dict[str, torch.Tensor], int]  # this worker's ids, their columns, the step's rows


class Batches(Protocol):
    def epoch(self, seed: int) -> Iterator[Batch]:
        """This worker's rows of one epoch, each row once (the last batch may be short): (ids, batch, step
        rows), the last the rows of this step on all workers together. No ids: this worker has no rows in
        this step but must take it with the others."""
        ...


def training_batches(
    shard: ray.data.DataIterator,
    batch_size: int,
    shuffle_buffer: int,
    split: bool,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Batches:
    """The strategy for a worker's training shard: streamed (``split``) or held."""
    if split:
        return StreamedBatches(shard, max(1, batch_size // world), shuffle_buffer, device)
    return HeldBatches(shard, batch_size, rank, world)


class HeldBatches:
    """The data held in memory, not split: the rows are read from the shard once, into tensors in id order
    (the same on every worker), and every epoch is a new permutation of all of them, drawn from the epoch's
    seed alike on every worker. So every worker iterates the same global batches of ``batch_size`` rows and
    trains on those whose id hashes to its rank (``worker_rows``): each id is trained on exactly once an
    epoch, whatever the worker count, and the shuffle is over the whole data set, not a buffer."""

    def __init__(self, shard: ray.data.DataIterator, batch_size: int, rank: int, world: int):
        blocks = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
        ids = np.concatenate([b["id"] for b in blocks]) if blocks else np.array([])
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.columns = {
            name: torch.from_numpy(np.concatenate([b[name] for b in blocks])[order])
            for name in (blocks[0] if blocks else {})
            if name != "id"
        }
        self.mine = torch.from_numpy(worker_rows(self.ids, rank, world))
        self.batch_size = batch_size

    def epoch(self, seed: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(seed))
        for step in order.split(self.batch_size):
            rows = step[self.mine[step]]
            yield self.ids[rows.numpy()], {name: values[rows] for name, values in self.columns.items()}, len(step)


class StreamedBatches:
    """Each worker reads its own share of the epoch, shuffled within a buffer of ``shuffle_buffer`` samples:
    the workers all-reduce each step's row count and step together until every share is used up, a worker
    whose share is used up with no rows."""

    def __init__(self, shard: ray.data.DataIterator, size: int, shuffle_buffer: int, device: str | torch.device):
        self.shard, self.size, self.shuffle_buffer, self.device = shard, size, shuffle_buffer, device

    def epoch(self, seed: int) -> Iterator[Batch]:
        batches = iter(
            self.shard.iter_batches(
                batch_size=self.size, batch_format="numpy", local_shuffle_buffer_size=self.shuffle_buffer
            )
        )
        while True:
            full = next(batches, None)
            rows = 0 if full is None else len(full["id"])
            total = int(all_reduce(torch.tensor(rows, dtype=torch.int64, device=self.device)))
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
    worker (``StreamedBatches`` keeps the workers in step; validation only sums at the end). It keeps its own
    copy of what it splits and with which options: Ray's are private attributes."""

    def __init__(self, datasets_to_split: list[str], execution_options: dict[str, ExecutionOptions] | None = None):
        super().__init__(datasets_to_split=datasets_to_split, execution_options=execution_options)
        self.split = frozenset(datasets_to_split)
        self.options = execution_options or {}

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        split = self.split & set(datasets)  # Ray Train V2 configures one dataset at a time
        whole = {name: ds for name, ds in datasets.items() if name not in split}
        output = super().configure(whole, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in split:
            ds = datasets[name].copy(datasets[name])
            ds.set_name(name)
            ds.context.execution_options = copy.deepcopy(self.options.get(name) or self.default_ingest_options())
            shards = ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for shard, iterator in zip(output, shards):
                shard[name] = iterator
        return output
