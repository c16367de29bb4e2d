"""Rows without labels through every stage on the session's Ray (issue 33, item 3): a CIFAR-10 slice whose training
split has null labels, and whose rows past ``data.labelled_rows`` are treated as unlabelled too. The teacher and the
scratch baseline train on the labelled rows alone, the teacher labels every row, the distilled student learns every
row (the unlabelled from the KD term alone: its logged cross-entropy is the one computed here over the labelled rows),
and the report and the summary count each model's rows of each kind."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from distkd import config, labelstore, pipeline, storage
from distkd.data.source import decode
from distkd.evaluate.summary import summary
from distkd.job import Job
from distkd.labels.formats import to_numpy

ROWS, LABELLED_ROWS = 200, 150  # training rows; labels kept for the first 150 only
NULL = range(1, ROWS, 4)  # rows whose label is null in the shards
LABELLED = [i for i in range(LABELLED_ROWS) if i not in NULL]  # 112 rows
ALPHA, T = 0.9, 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory, cifar10) -> Path:
    folder = tmp_path_factory.mktemp("unlabelled-data")
    train = pq.read_table(sorted(cifar10.glob("train-*.parquet"))[0]).slice(0, ROWS)
    labels = [None if i in NULL else label for i, label in enumerate(train["label"].to_pylist())]
    train = train.set_column(train.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    pq.write_table(train, folder / "train-00000.parquet")
    test = pq.read_table(sorted(cifar10.glob("test-*.parquet"))[0]).slice(0, 100)
    pq.write_table(test, folder / "test-00000.parquet")
    return folder


def unlabelled_job(data: Path, store: Path) -> Job:
    # the students' learning rate is next to nothing: every step sees the initial weights, so the first epoch's
    # logged loss terms are the initial model's, computed here by hand; a second epoch shows that no run restarted
    student = {"epochs": 2, "batch_size": 50, "lr": 1e-9, "augment": False}
    raw = {
        "name": "unlabelled",
        "store": str(store),
        "data": {"uri": str(data), "num_classes": 10, "val_limit": 50, "labelled_rows": LABELLED_ROWS},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 2, "batch_size": 50}},
        "student": {"name": "lenet5", "train": student},
        "softlabels": {"batch_size": 100, "dtype": "float32"},
        "distill": {"alpha": ALPHA, "temperature": T},
        "evaluate": {"batch_size": 100},
    }
    return Job.prepare(config.parse(raw, "<unlabelled>"), "<unlabelled>")


def history(weights: str) -> dict:
    """The run's first epoch, once every epoch is found to have run in one go (``started_from`` 0: a worker that
    failed after an epoch's checkpoint would have been restarted from it)."""
    epochs = storage.read_json(storage.join(weights.rsplit("/", 1)[0], "history.json"))
    assert all(epoch["started_from"] == 0 for epoch in epochs)
    return epochs[0]


def checksum(ids: list[str]) -> int:
    return sum(zlib.crc32(i.encode()) for i in ids)


def test_unlabelled_rows_teach_the_distilled_student_alone_and_are_counted(ray_cluster, data, tmp_path):
    job = unlabelled_job(data, tmp_path / "store")
    out = pipeline.run(job)
    rows = pq.read_table(data / "train-00000.parquet")
    ids, labels = rows["id"].to_pylist(), rows["label"].to_pylist()
    unlabelled = ROWS - len(LABELLED)

    for role in ("teacher", "scratch"):  # trained on the labelled rows alone, each once an epoch
        epoch = history(out[role])
        assert (epoch["samples"], epoch["labelled"]) == (len(LABELLED), len(LABELLED))
        assert epoch["id_checksum"] == checksum([ids[i] for i in LABELLED]) and epoch["kd"] == 0
    kd = history(out["distilled"])  # every row, labelled or not
    assert (kd["samples"], kd["labelled"], kd["id_checksum"]) == (ROWS, len(LABELLED), checksum(ids))
    entry = labelstore.manifest(out["softlabels"])
    assert entry.rows == ROWS  # the teacher labelled every row

    # the logged terms, by hand from the initial student: the CE over the labelled rows, the KD term over all
    torch.manual_seed(job.config.student.train.seed)
    student = job.student.build().eval()
    images = torch.from_numpy(np.stack([decode(b) for b in rows["image"].to_pylist()]))
    with torch.inference_mode():
        logits = student(job.inputs.model_input({"image": images}, torch.device("cpu"))).double()
    ce = F.cross_entropy(logits[LABELLED], torch.tensor([labels[i] for i in LABELLED]))
    assert kd["ce"] == pytest.approx((1 - ALPHA) * ce.item(), rel=1e-6)
    # had the hidden rows' labels counted, the CE would be another (6.5e-5 apart relatively, on the run it was written
    # on: the initial student's per-row CE are all near log 10)
    known = [i for i in range(ROWS) if i not in NULL]
    hidden_too = F.cross_entropy(logits[known], torch.tensor([labels[i] for i in known])).item()
    assert not math.isclose((1 - ALPHA) * hidden_too, kd["ce"], rel_tol=1e-5)
    shards = [pq.read_table(labelstore.shard_uri(out["softlabels"], s.file)) for s in entry.shards]
    stored = {i: row for t in shards for i, row in zip(t["id"].to_pylist(), to_numpy(t["logits"], np.float64))}
    teacher = torch.from_numpy(np.stack([stored[i] for i in ids]))
    kl = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher / T, -1), reduction="batchmean", log_target=True)
    assert kd["kd"] == pytest.approx(ALPHA * T**2 * kl.item(), rel=1e-6)

    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    counts = {role: (m["trained_rows"]["labelled"], m["trained_rows"]["unlabelled"]) for role, m in models.items()}
    assert counts == {"teacher": (112, 0), "distilled": (112, unlabelled), "scratch": (112, 0)}
    assert all(m["metrics"]["count"] == 100 for m in models.values())  # the test split, every row labelled
    assert (
        "rows trained on (labelled + unlabelled): resnet9 teacher 112 + 0, lenet5 distilled 112 + 88, "
        "lenet5 scratch 112 + 0" in summary(out["report"])
    )
