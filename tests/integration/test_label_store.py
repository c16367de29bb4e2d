"""The label store on the session's Ray, with a fixed (untrained) teacher: a snapshot that grows, shrinks or has a
file replaced runs the teacher on exactly the rows it has not seen, and two jobs on overlapping snapshots at once
end with valid entries that share their common shards."""

from __future__ import annotations

import os
import threading

import pyarrow.parquet as pq
import pytest

from distkd import labelstore
from distkd.softlabels import cache, inspect
from distkd.softlabels.stage import generate
from tests.label_store import ROWS, catalogue, shard_files, snapshot, spec_for

files = pytest.fixture(scope="module")(catalogue)


def entry_of(spec) -> labelstore.Manifest:
    entry = generate(spec)
    assert "every id exactly once" in inspect.verify(str(spec.store), spec.key)
    return labelstore.manifest(entry)


def test_a_grown_snapshot_labels_exactly_the_new_file_and_leaves_every_earlier_shard(ray_cluster, files, tmp_path):
    store = tmp_path / "store"
    first = entry_of(spec_for(snapshot(tmp_path / "a", files, "train-0", "train-1"), store))
    assert first.teacher_rows == 2 * ROWS
    before = shard_files(store)
    grown = entry_of(spec_for(snapshot(tmp_path / "b", files, "train-0", "train-1", "train-2"), store))
    assert (grown.teacher_rows, grown.computed_shards, grown.rows) == (ROWS, 3, 3 * ROWS)
    assert grown.shards[:6] == first.shards  # the same files, records and checksums
    after = shard_files(store)
    assert {k: after[k] for k in before} == before and len(after) == 9
    entry = str(store / "softlabels" / grown.key)
    ids = [i for s in grown.shards[6:] for i in pq.read_table(labelstore.shard_uri(entry, s.file))["id"].to_pylist()]
    assert ids == pq.read_table(files["train-2"])["id"].to_pylist()


def test_a_removed_file_costs_no_teacher_run_and_a_replaced_one_relabels_itself_alone(ray_cluster, files, tmp_path):
    store = tmp_path / "store"
    first = entry_of(spec_for(snapshot(tmp_path / "a", files, "train-0", "train-1", "train-2"), store))
    shrunk = entry_of(spec_for(snapshot(tmp_path / "b", files, "train-0", "train-2"), store))
    assert (shrunk.teacher_rows, shrunk.computed_shards) == (0, 0)
    assert shrunk.shards == first.shards[:3] + first.shards[6:]

    changed = snapshot(tmp_path / "c", files, "train-0", "train-1", "train-2")
    os.unlink(changed / "train-00001.parquet")
    pq.write_table(pq.read_table(files["train-3"]), changed / "train-00001.parquet")  # new bytes, same name
    replaced = entry_of(spec_for(changed, store))
    assert (replaced.teacher_rows, replaced.computed_shards) == (ROWS, 3)
    assert replaced.shards[:3] == first.shards[:3] and replaced.shards[6:] == first.shards[6:]


def test_two_jobs_on_overlapping_snapshots_at_once_share_their_common_shards(ray_cluster, files, tmp_path):
    store = tmp_path / "store"
    specs = [
        spec_for(snapshot(tmp_path / "a", files, "train-0", "train-3"), store),
        spec_for(snapshot(tmp_path / "b", files, "train-1", "train-3"), store),  # train-3's rows: in both
    ]
    results, errors = {}, []

    def write(i: int) -> None:
        try:
            results[i] = entry_of(specs[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writers = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert not errors, errors
    assert results[0].shards[3:] == results[1].shards[3:]  # one file per shared shard, listed by both
    assert len(shard_files(store)) == 9  # 3 files x 3 units, none twice
    assert not cache.leftovers(str(store)) and not cache.unlisted_shards(str(store))
    assert results[0].teacher_rows + results[1].teacher_rows in range(3 * ROWS, 4 * ROWS + 1)
