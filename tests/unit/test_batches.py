"""The training batch strategies on a fake dataset iterator, without Ray: what each worker trains on per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from distkd.distill.batches import HeldBatches, StreamedBatches

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
    for ids, batch, step_rows in held.epoch(seed):
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
    steps = [(len(ids), rows) for ids, _, rows in streamed.epoch(0)]
    assert steps == [(128, 128), (128, 128), (44, 44)]  # one worker: its own rows are the step's
    assert len([1 for _ in streamed.epoch(1)]) == 3  # and again next epoch


@pytest.mark.parametrize("world", [1, 3])
def test_held_batches_split_each_step_by_id_hash(world):
    workers = [HeldBatches(FakeShard(blocks(list(range(ROWS // BLOCK)))), 100, r, world) for r in range(world)]
    per_rank = [epoch(w, 2) for w in workers]
    for step in zip(*per_rank):
        ids = [i for ids, _ in step for i in ids]
        assert len(ids) == len(set(ids)) == step[0][1]  # the ranks' rows of a step are disjoint and complete
