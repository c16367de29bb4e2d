"""Data paths that scale: workers write the shards, training streams its data, rows read by file counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from distkd import config, labelstore
from distkd.data.source import Split
from distkd.distill import streaming
from distkd.distill.batches import StreamedBatches
from distkd.job import Job
from distkd.softlabels.stage import generate, label_units
from distkd.softlabels.writer import RECORD
from tests.label_store import one_entry

ROWS = 1000


def job_for(data: Path, store: Path, cache_mode: str = "memory") -> Job:
    raw = {
        "name": "scale",
        "store": str(store),
        "data": {"uri": str(data), "limit": ROWS, "val_limit": 500, "cache": cache_mode, "shuffle_buffer": 200},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 100}},
        "student": {"name": "lenet5", "train": {"epochs": 6, "batch_size": 50, "lr": 0.02, "augment": False}},
        "softlabels": {"batch_size": 100, "shard_rows": 150},
        # A weak KD term: the 1-epoch teacher is barely better than chance.
        "distill": {"alpha": 0.2, "temperature": 1.0, "baseline": False},
    }
    return Job.prepare(config.parse(raw, "<test>"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, cifar10) -> Path:
    """The first 600 rows of two train files (so units cross a file boundary) and 500 test rows."""
    folder = tmp_path_factory.mktemp("data")
    for name, rows in (("train-00000-of-00005", 600), ("train-00001-of-00005", 600), ("test-00000-of-00001", 500)):
        pq.write_table(pq.read_table(cifar10 / f"{name}.parquet").slice(0, rows), folder / f"{name}.parquet")
    return folder


@pytest.fixture(scope="module")
def labelled(ray_cluster, data, tmp_path_factory) -> tuple[Job, str, str]:
    store = tmp_path_factory.mktemp("store")
    job = job_for(data, store)
    torch.manual_seed(0)
    weights = store / "teacher.pt"  # untrained: its outputs need not be good to be cached and streamed
    torch.save(job.teacher.build().state_dict(), weights)
    return job, str(weights), generate(job.softlabel_spec(str(weights)))


def test_read_takes_the_first_rows_by_file_counts_in_any_order(ray_cluster, data):
    split = Split.open(str(data), "train", limit=700)  # all of the first file, 100 rows of the second
    expected = split.read_table(["id"])["id"].to_pylist()
    ids = split.read(rows=64).select_columns(["id"]).take_all()
    assert sorted(r["id"] for r in ids) == sorted(expected) and len(ids) == 700


def test_driver_receives_one_small_record_per_shard_and_no_labels(labelled):
    job, weights, entry = labelled
    units = job.train.units(job.config.softlabels.shard_rows)
    assert [(u.file[-28:], u.rows) for u in units] == [("train-00000-of-00005.parquet", 150)] * 4 + [
        ("train-00001-of-00005.parquet", n) for n in (150, 150, 100)
    ]  # units stop at file ends and at the limit
    records = label_units(job.softlabel_spec(weights), units)  # the shards are there: only described
    assert all(set(r) == set(RECORD) for r in records)  # no label column ever reaches the driver
    assert [r["index"] for r in records] == [u.index for u in units]
    assert [r["rows"] for r in records] == [u.rows for u in units] and sum(u.rows for u in units) == ROWS
    assert all(r["labelled"] == 0 for r in records)  # nothing recomputed
    manifest = labelstore.manifest(entry)
    assert [s.sha256 for s in manifest.shards] == [r["sha256"] for r in records]


def test_stream_gives_every_id_once_per_epoch_in_a_new_order(labelled):
    job, weights, entry = labelled
    ds = streaming.stream(job.train, ["id", "label", "teacher_logits"], job.inputs, one_entry(entry))
    position = {i: n for n, i in enumerate(job.train.read_table(["id"])["id"].to_pylist())}
    rows = ds.map_batches(
        lambda b: {
            "id": b["id"],
            "row": [position[i] for i in b["id"]],
            "label": b["label"],
            "logits": b["teacher_logits"],
        },
        batch_format="numpy",
    )
    train, shuffle = job.config.student.train, job.config.data.shuffle_buffer
    iterator = rows.iterator()
    epochs = [
        [
            int(r)
            for _, batch, *_ in StreamedBatches(iterator, train.batch_size, shuffle, "cpu").epoch(epoch)
            for r in batch["row"]
        ]
        for epoch in range(2)
    ]
    for seen in epochs:
        assert sorted(seen) == list(range(ROWS))  # every id exactly once, the last short batch included
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])  # shuffled, and anew each epoch


def test_stream_rejects_a_shard_that_does_not_match(labelled, tmp_path):
    job, _, entry = labelled
    softlabels = tmp_path / "softlabels"  # the entry and the shards its manifest lists (../shards/...)
    shutil.copytree(Path(entry).parent, softlabels)
    copy = softlabels / Path(entry).name
    shard = Path(labelstore.shard_uri(str(copy), labelstore.manifest(entry).shards[2].file))
    assert shard.is_relative_to(softlabels)  # the copy's shard, not the original
    shard.write_bytes(shard.read_bytes()[:-50])
    with pytest.raises(Exception, match="checksum does not match"):
        streaming.stream(job.train, ["image", "label"], job.inputs, one_entry(str(copy))).take_all()
