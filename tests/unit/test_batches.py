"""The training batch strategies on a fake dataset iterator, without Ray: what each worker trains on per epoch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from distkd.distill import batches
from distkd.distill.batches import HeldBatches, StreamedBatches, owners

ROWS, BLOCK = 1000, 100


class FakeShard:
    """Stands in for a Ray Data iterator: ``iter_batches`` yields the blocks in the order given."""

    def __init__(self, blocks: list[dict[str, np.ndarray]]):
        self.blocks = blocks

    def iter_batches(self, batch_size=None, batch_format="numpy", local_shuffle_buffer_size=None):
        assert batch_size is None and batch_format == "numpy"  # held: whole blocks, read once
        yield from self.blocks


def blocks(order: list[int]) -> list[dict[str, np.ndarray]]:
    ids = np.arange(ROWS) * 7 + 3  # ids are not row positions
    return [{"id": ids[b * BLOCK : (b + 1) * BLOCK], "label": (ids[b * BLOCK : (b + 1) * BLOCK] % 10)} for b in order]


def epoch(held: HeldBatches, seed: int) -> list[tuple[list[int], int]]:
    steps = []
    for ids, batch, step_rows, _ in held.epoch(seed):
        assert list(batch["label"].numpy()) == [i % 10 for i in ids]  # the columns follow their ids
        steps.append((list(ids), step_rows))
    return steps


def test_held_workers_share_the_global_batches_and_train_on_each_id_once_whatever_the_block_order():
    in_order, reversed_ = list(range(ROWS // BLOCK)), list(reversed(range(ROWS // BLOCK)))
    # two workers, handed the blocks in different orders (as Ray Data may), batches of 64
    workers = [HeldBatches(FakeShard(blocks(order)), 64, rank, 2) for rank, order in ((0, in_order), (1, reversed_))]
    for seed in (0, 1):
        steps = [epoch(w, seed) for w in workers]
        assert [rows for _, rows in steps[0]] == [rows for _, rows in steps[1]] == [64] * 15 + [40]  # in step
        trained = [i for s in steps for ids, _ in s for i in ids]
        assert sorted(trained) == list(np.arange(ROWS) * 7 + 3)
        assert all(ids for s in steps for ids, _ in s[:5])  # both ranks train in the first steps
    # a new order each epoch, and a shuffle of the whole data, not of a buffer: the first batch reaches the end
    first = [ids for ids, _ in epoch(workers[0], 0)], [ids for ids, _ in epoch(workers[0], 1)]
    assert first[0] != first[1]
    assert max(first[0][0]) > 7 * ROWS * 0.8 and min(first[0][0]) < 7 * ROWS * 0.2


def test_held_epoch_is_the_same_for_the_same_seed():
    held = HeldBatches(FakeShard(blocks(list(range(ROWS // BLOCK)))), 128, 0, 1)
    assert epoch(held, 5) == epoch(held, 5)  # a resumed epoch draws the same batches


def test_streamed_worker_reads_its_share_in_batches_of_its_size_and_steps_until_all_are_used():
    class Stream(FakeShard):
        def iter_batches(self, batch_size=None, batch_format="numpy", local_shuffle_buffer_size=None):
            ids = np.concatenate([b["id"] for b in self.blocks])
            for start in range(0, len(ids), batch_size):
                yield {"id": ids[start : start + batch_size], "label": ids[start : start + batch_size] % 10}

    streamed = StreamedBatches(Stream(blocks([0, 1, 2])), 128, 1000, "cpu")
    steps = [(len(ids), rows) for ids, _, rows, _ in streamed.epoch(0)]
    assert steps == [(128, 128), (128, 128), (44, 44)]  # one worker: its own rows are the step's
    assert len([1 for _ in streamed.epoch(1)]) == 3  # and again next epoch


@pytest.mark.parametrize("world", [1, 3])
def test_held_batches_split_each_step_by_id_hash(world):
    workers = [HeldBatches(FakeShard(blocks(list(range(ROWS // BLOCK)))), 100, r, world) for r in range(world)]
    per_rank = [epoch(w, 2) for w in workers]
    for step in zip(*per_rank):
        ids = [i for ids, _ in step for i in ids]
        assert len(ids) == len(set(ids)) == step[0][1]  # the ranks' rows of a step are disjoint and complete


def shares(workers: list, seed: int = 0) -> list[list[tuple[list[int], int]]]:
    """Each worker's steps of one epoch: (its ids, the step's rows on all workers)."""
    return [[(list(ids), rows) for ids, _, rows, _ in w.epoch(seed)] for w in workers]


def trained_once_never_alone(steps: list[list[tuple[list[int], int]]], ids: list[int]) -> None:
    """Every id trained on once, no worker given one row, and the workers in step (the same steps, each step's
    rows the workers' together)."""
    assert sorted(i for s in steps for own, _ in s for i in own) == sorted(ids)
    assert all(len(own) != 1 for s in steps for own, _ in s)
    assert len({len(s) for s in steps}) == 1
    for step in zip(*steps):
        assert len({rows for _, rows in step}) == 1 and sum(len(own) for own, _ in step) == step[0][1]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_held_epoch_tail_of_one_row_joins_the_last_step_and_no_worker_trains_one_row(world):
    ids = list(np.arange(ROWS) * 7 + 3)
    # 1000 rows in batches of 333: three steps and a last row; batches of 3 over 2-3 workers: many single shares
    for batch_size in (333, 3):
        workers = [
            HeldBatches(FakeShard(blocks(list(range(ROWS // BLOCK)))), batch_size, r, world) for r in range(world)
        ]
        for seed in (0, 1):
            steps = shares(workers, seed)
            trained_once_never_alone(steps, ids)
            assert steps[0][-1][1] == batch_size + 1  # the last row trained in the last step
            assert len(steps[0]) == ROWS // batch_size


def test_held_batches_of_one_row_asked_for_stay_one_row():
    held = HeldBatches(FakeShard(blocks([0])), 1, 0, 1)
    assert [rows for _, rows in epoch(held, 0)] == [1] * BLOCK


class Stream(FakeShard):
    """A worker's share, read in batches of the size asked for, the last one short."""

    def iter_batches(self, batch_size=None, batch_format="numpy", local_shuffle_buffer_size=None):
        ids = np.concatenate([b["id"] for b in self.blocks]) if self.blocks else np.array([], dtype=np.int64)
        for start in range(0, len(ids), batch_size):
            yield {"id": ids[start : start + batch_size], "label": ids[start : start + batch_size] % 10}


class Collectives:
    """Threads standing in for DDP workers: ``all_reduce`` sums a tensor over them and ``gathered`` collects an
    item from each by rank, each call waiting until every worker has made it (as torch.distributed does)."""

    def __init__(self, world: int):
        self.barrier, self.slots, self.rank = threading.Barrier(world, timeout=10), [None] * world, threading.local()

    def _exchange(self, item):
        self.slots[self.rank.value] = item
        self.barrier.wait()
        items = list(self.slots)
        self.barrier.wait()
        return items

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return sum(self._exchange(t.clone()))

    def gathered(self, item):
        return self._exchange(item)

    def run(self, workers: list) -> list[list[tuple[list[int], int]]]:
        steps = [None] * len(workers)

        def worker(rank: int) -> None:
            self.rank.value = rank
            steps[rank] = shares([workers[rank]])[0]

        threads = [threading.Thread(target=worker, args=(r,)) for r in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return steps


@pytest.mark.parametrize(
    ("split", "size"),
    [
        ([[0, 1, 2]], 128),  # one worker: 300 rows, 2 batches of 128 and 44
        ([list(range(10))], 111),  # one worker: 1000 rows = 9 x 111 + 1, its last row joins the batch before
        ([[0, 1, 2, 3], list(range(4, 10))], 133),  # 400 = 3 x 133 + 1 and 600 = 4 x 133 + 68: 5 steps each
        ([[0], []], 64),  # a worker with no share takes every step with no rows
    ],
)
def test_streamed_workers_train_each_row_once_never_one_alone_and_in_step(monkeypatch, split, size):
    group = Collectives(len(split))
    monkeypatch.setattr(batches, "all_reduce", group.all_reduce)
    monkeypatch.setattr(batches, "gathered", group.gathered)
    shards = [Stream(blocks(share)) for share in split]
    workers = [StreamedBatches(s, size, 1000, "cpu", r, len(split)) for r, s in enumerate(shards)]
    steps = group.run(workers)
    trained_once_never_alone(steps, [i for b in blocks([u for share in split for u in share]) for i in b["id"]])
    assert [len(own) for own, _ in steps[0]][-1] != 1


def test_streamed_share_of_one_row_is_trained_by_another_worker_in_its_step(monkeypatch):
    # Ray's unequal split hands whole blocks to the worker with the fewest rows: a unit of one row can be a
    # worker's whole share, which no fold within that worker can join to anything
    group = Collectives(2)
    monkeypatch.setattr(batches, "all_reduce", group.all_reduce)
    monkeypatch.setattr(batches, "gathered", group.gathered)
    lone = {"id": np.array([5000]), "label": np.array([0])}
    shards = [Stream(blocks([0, 1])), Stream([lone])]
    steps = group.run([StreamedBatches(s, 64, 1000, "cpu", r, 2) for r, s in enumerate(shards)])
    trained_once_never_alone(steps, [*(i for b in blocks([0, 1]) for i in b["id"]), 5000])
    assert 5000 in steps[0][0][0] and steps[1] == [([], 65), ([], 64), ([], 64), ([], 8)]


def test_owners_hand_a_single_row_to_the_worker_with_the_most():
    assert owners([5]) == [0] and owners([3, 1]) == [0, 0] and owners([1, 1]) == [0, 0]
    assert owners([1, 2, 1, 0]) == [1, 1, 1, 3] and owners([2, 0, 2]) == [0, 1, 2]
