"""Every output is named by the data's content, never by its path (issue 34 item 2): the same job reading the
same bytes from another folder (a second checkout, a copy, a symlink) into another store gets every key again,
and other bytes get other keys."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distkd import config
from distkd.job import Job

ROWS = {"train": 120, "test": 40}


def weights_of_run(uri: str) -> str:
    """A stand-in sha256 for weights not trained here: a run's weights are what its run folder is named by."""
    return hashlib.sha256(uri.split("/runs/", 1)[-1].encode()).hexdigest()


def keys(data: Path, job: dict) -> dict[str, str]:
    """Every output's key when ``job`` reads ``data`` into a store beside it (as a checkout's ./store): each run,
    the soft labels (and their teacher key), the report, a text job's tokenizer."""
    store = data.parent / "store"
    raw = {"name": "content", "store": str(store), **job, "data": {"uri": str(data), "val_limit": 20, **job["data"]}}
    prepared = Job.prepare(config.parse(raw, "<content>"))
    teacher = prepared.teacher_run()
    labels = prepared.softlabel_spec(teacher.weights_uri, sha256=weights_of_run)
    runs = {"teacher": teacher, "distilled": prepared.distilled_run(labels), "scratch": prepared.scratch_run()}
    models = {role: (run.model, run.weights_uri) for role, run in runs.items()}
    uris = {
        **{role: run.uri for role, run in runs.items()},
        "softlabels": labels.uri,
        "report": prepared.eval_spec(models, sha256=weights_of_run).uri,
    }
    out = {name: os.path.relpath(uri, store) for name, uri in uris.items()}
    out["teacher_key"] = labels.teacher_key
    if folder := getattr(prepared.inputs, "folder", None):
        out["tokenizer"] = os.path.relpath(folder, store)
    return out


def sliced(source: Path, folder: Path, edit: str | None = None) -> Path:
    """The first rows of each split's first shard of ``source``, as shards of ``folder``; ``edit``: a column
    whose first value is changed (other bytes)."""
    folder.mkdir(parents=True)
    for split, rows in ROWS.items():
        table = pq.read_table(next(source.glob(f"{split}-*.parquet"))).slice(0, rows)
        if edit and split == "train":
            values = table[edit].to_pylist()
            values[0] = values[1]
            table = table.set_column(table.schema.get_field_index(edit), edit, [values])
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    return folder


IMAGE_JOB = {
    "data": {},
    "softlabels": {"shard_rows": 60},
    "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 32}},
    "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 32, "augment": False}},
}
TEXT_JOB = {
    "data": {"tokenizer": {"name": "wordpiece", "vocab_size": 300, "max_length": 32}},
    "teacher": {"name": "text_cnn", "kwargs": {"dim": 8, "filters": 8}, "train": {"batch_size": 32, "augment": False}},
    "student": {"name": "text_cnn", "kwargs": {"dim": 4, "filters": 4}, "train": {"batch_size": 32, "augment": False}},
    "softlabels": {"shard_rows": 60, "views": 0},
    "evaluate": {"slices": ["department"]},
}


@pytest.mark.parametrize(("dataset", "job", "edited"), [("cifar10", IMAGE_JOB, "image"), ("reviews", TEXT_JOB, "text")])
def test_the_same_bytes_through_other_paths_and_stores_keep_every_key_other_bytes_move_them(
    request, tmp_path, dataset, job, edited
):
    source = request.getfixturevalue(dataset)
    original = sliced(source, tmp_path / "checkout-a" / "data")
    copy = tmp_path / "checkout-b" / "data"
    shutil.copytree(original, copy)  # a second checkout: the same bytes, other files, other times
    linked = tmp_path / "checkout-c" / "data"
    linked.parent.mkdir()
    linked.symlink_to(original, target_is_directory=True)

    first = keys(original, job)
    assert keys(copy, job) == first and keys(linked, job) == first
    other = keys(sliced(source, tmp_path / "checkout-d" / "data", edit=edited), job)
    # every output, the teacher key too (the teacher trained here is trained on the data)
    assert {name for name in first if other[name] != first[name]} == set(first)
