"""The training batches of one worker, behind one iterator per epoch (``Batches.epoch``), whether the data is
held in memory (``HeldBatches``: every worker holds every row and trains on the rows whose id hashes to its
rank) or streamed (``StreamedBatches``: each worker reads its own share, ``split.UnequalSplit``).

No worker is handed a batch of one row (BatchNorm cannot train on one value per channel, which is what it
gets when a model shrinks the image to 1x1): an epoch's last row joins the batch before it (``folded``), and
the row of a worker left with one in a step goes to another worker of that step (``owners``). Every row is
still trained on exactly once an epoch, and the workers still take the same steps."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
import ray.data
import torch

from distkd.distill.ddp import all_reduce, gathered
from distkd.tasks import CLASSIFICATION, Task


class Batch(NamedTuple):
    """This worker's part of one step: its ids and their columns, and the step's rows on all workers together
    (``rows``) and their ``units``: what the step's KD term and hard term are averaged over (``Task.units``: rows
    and labelled rows of a classifier, real tokens twice of a language model)."""

    ids: np.ndarray
    columns: dict[str, torch.Tensor]
    rows: int
    units: tuple[int, int]

    @property
    def labelled(self) -> int:
        """The step's units of the hard term (a classifier's rows with a label)."""
        return self.units[1]


Rows = dict[str, np.ndarray]  # a batch as Ray Data yields it: columns of equal length, ``id`` among them
Part = TypeVar("Part")


class Batches(Protocol):
    def epoch(self, seed: int) -> Iterator[Batch]:
        """This worker's rows of one epoch, each row once, never one row alone (the last batch may be short or a
        row long). No ids: this worker has no rows in this step but must take it with the others."""
        ...


def training_batches(
    shard: ray.data.DataIterator,
    batch_size: int,
    shuffle_buffer: int,
    split: bool,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
    task: Task = CLASSIFICATION,
) -> Batches:
    """The strategy for a worker's training shard: streamed (``split``; a worker's batches of 2 rows at least,
    unless the job asks for batches of one) or held; each step counts its ``task``'s units."""
    if split:
        size = max(min(batch_size, 2), batch_size // world)
        return StreamedBatches(shard, size, shuffle_buffer, device, rank, world, task)
    return HeldBatches(shard, batch_size, rank, world, task)


class HeldBatches:
    """The data held in memory, not split: the rows are read from the shard once, into tensors in id order
    (the same on every worker), and every epoch is a new permutation of all of them, drawn from the epoch's
    seed alike on every worker. So every worker iterates the same global batches of ``batch_size`` rows (an
    epoch's last row joined to the batch before it) and trains on those whose id hashes to its rank
    (``worker_of``; a worker's single row of a batch goes to another: ``owners``): each id is trained on exactly
    once an epoch, whatever the worker count, and the shuffle is over the whole data set, not a buffer."""

    def __init__(
        self, shard: ray.data.DataIterator, batch_size: int, rank: int, world: int, task: Task = CLASSIFICATION
    ):
        blocks = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
        ids = np.concatenate([b["id"] for b in blocks]) if blocks else np.array([])
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.columns = {
            name: torch.from_numpy(np.concatenate([b[name] for b in blocks])[order])
            for name in (blocks[0] if blocks else {})
            if name != "id"
        }
        self.workers = torch.from_numpy(worker_of(self.ids, world))
        self.units = task.units(self.columns[task.target]) if blocks else torch.zeros(0, 2, dtype=torch.long)
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def epoch(self, seed: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(seed))
        for step in folded(order.split(self.batch_size), lambda a, b: torch.cat([a, b])):
            workers = self.workers[step]
            owner = torch.tensor(owners(torch.bincount(workers, minlength=self.world).tolist()))
            rows = step[owner[workers] == self.rank]
            columns = {name: values[rows] for name, values in self.columns.items()}
            kd_units, ce_units = self.units[step].sum(dim=0).tolist()
            yield Batch(self.ids[rows.numpy()], columns, len(step), (kd_units, ce_units))


class StreamedBatches:
    """Each worker reads its own share of the epoch, shuffled within a buffer of ``shuffle_buffer`` samples, its
    last row joined to its batch before: the workers all-reduce each step's row counts and step together until
    every share is used up, a worker whose share is used up with no rows. A share of one row in all is handed,
    in its step, to another worker (``owners``)."""

    def __init__(
        self,
        shard: ray.data.DataIterator,
        size: int,
        shuffle_buffer: int,
        device: str | torch.device,
        rank: int = 0,
        world: int = 1,
        task: Task = CLASSIFICATION,
    ):
        self.shard, self.size, self.shuffle_buffer, self.device = shard, size, shuffle_buffer, device
        self.rank, self.world, self.task = rank, world, task

    def epoch(self, seed: int) -> Iterator[Batch]:
        batches = folded(
            self.shard.iter_batches(
                batch_size=self.size, batch_format="numpy", local_shuffle_buffer_size=self.shuffle_buffer
            ),
            lambda a, b: joined([a, b]),
            rows=row_count,
        )
        while True:
            own = next(batches, None)
            counts = torch.zeros(3, self.world, dtype=torch.int64, device=self.device)  # rows, KD and hard units
            if own is not None:
                units = self.task.units(torch.from_numpy(own[self.task.target])).sum(dim=0)
                counts[:, self.rank] = torch.cat([torch.tensor([row_count(own)]), units])
            counts, kd_units, ce_units = all_reduce(counts).tolist()  # every worker's rows of this step
            if sum(counts) == 0:
                return
            mine, units = self.exchanged(own, counts), (sum(kd_units), sum(ce_units))
            if mine is None:
                yield Batch(np.array([]), {}, sum(counts), units)
            else:
                columns = {k: torch.from_numpy(v) for k, v in mine.items() if k != "id"}
                yield Batch(mine["id"], columns, sum(counts), units)

    def exchanged(self, own: Rows | None, counts: list[int]) -> Rows | None:
        """This worker's rows of the step once each worker with one row has handed it to its ``owners`` worker
        (sent to all in one gather, which every worker joins: they all see the same counts)."""
        owner = owners(counts)
        if owner == list(range(self.world)):
            return own
        given = gathered(own if counts[self.rank] == 1 else None)
        if owner[self.rank] != self.rank:
            return None
        handed = [given[r] for r in range(self.world) if owner[r] == self.rank and r != self.rank]
        return joined([own, *handed] if own is not None else handed)


def folded(
    parts: Iterable[Part], join: Callable[[Part, Part], Part], rows: Callable[[Part], int] = len
) -> Iterator[Part]:
    """``parts`` (batches) with each part of one row joined to the part before it (the first, to the part after):
    an epoch's last row trains in the last step, not alone. Parts that all hold one row (batches of one row
    asked for) stay as they are."""
    pending = None
    for part in parts:
        if pending is None:
            pending = part
        elif (rows(part) == 1) != (rows(pending) == 1):
            pending = join(pending, part)
        else:
            yield pending
            pending = part
    if pending is not None:
        yield pending


def owners(counts: list[int]) -> list[int]:
    """Which worker trains the rows each worker has in a step (``counts`` by rank): its own, except that the
    row of a worker with one goes to the worker with the most rows (the lowest rank of those). So in a step of
    2 rows or more no worker trains on one row, and every row is still trained on once, by one worker."""
    most = max(range(len(counts)), key=lambda r: (counts[r], -r))
    return [most if n == 1 else r for r, n in enumerate(counts)]


def row_count(batch: Rows) -> int:
    return len(batch["id"])


def joined(batches: list[Rows]) -> Rows:
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def worker_of(ids: np.ndarray, world: int) -> np.ndarray:
    """The worker (rank) that trains on each row of a global batch, before ``owners``: a stable hash of the id
    modulo the world size, so every id is trained on by exactly one worker, whatever the number of workers."""
    return np.array([zlib.crc32(str(i).encode()) % world for i in ids], dtype=np.int64)


def id_checksum(ids: np.ndarray) -> int:
    """A sum of per-id hashes: equal to the split's iff no id was dropped or repeated (up to a collision)."""
    return sum(zlib.crc32(str(i).encode()) for i in ids)
