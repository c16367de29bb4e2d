"""Rows without labels (issue 33, item 3), without Ray: the cross-entropy's mask, the step's labelled rows that it
is averaged over on one and on several workers, the rows ``data.labelled_rows`` keeps labelled, and what the setting
is part of the identity of."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distkd import config, storage
from distkd.catalog import run_record
from distkd.data.source import LABEL, UNLABELLED, Split
from distkd.distill import batches
from distkd.distill.batches import HeldBatches, StreamedBatches
from distkd.evaluate.report import write_report
from distkd.evaluate.summary import summary
from distkd.job import Job
from distkd.methods.losses import Targets, objective, reads_labels, terms
from distkd.tasks import CLASSIFICATION
from tests.conftest import CIFAR10, REVIEWS
from tests.unit.test_batches import Collectives, FakeShard
from tests.unit.test_report import make_models

N = UNLABELLED
STUDENT = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 1.0, 3.0], [0.0, -2.0, 1.0]])
TEACHER = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]])


def ce_by_hand(row: int, label: int) -> float:
    """-log softmax(STUDENT[row])[label], from the exponentials."""
    exps = [math.exp(v) for v in STUDENT[row].tolist()]
    return -math.log(exps[label] / sum(exps))


def kd_by_hand(temperature: float) -> float:
    """T^2 * KL(softmax(TEACHER / T) || softmax(STUDENT / T)), the mean over every row."""
    total = 0.0
    for s, t in zip(STUDENT.tolist(), TEACHER.tolist()):
        q = [math.exp(v / temperature) for v in s]
        p = [math.exp(v / temperature) for v in t]
        q, p = [v / sum(q) for v in q], [v / sum(p) for v in p]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return temperature**2 * total / len(STUDENT)


def hinton(labels: list[int], alpha: float = 0.75, temperature: float = 2.0) -> float:
    return objective("hinton", STUDENT, Targets(logits=TEACHER), torch.tensor(labels), alpha, temperature).item()


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 0], [0, N, 2, N], [N, N, N, 1]],
    ids=["every-row", "some-rows", "one-row"],
)
def test_the_cross_entropy_covers_the_labelled_rows_averaged_over_them(labels):
    labelled = [(row, label) for row, label in enumerate(labels) if label != N]
    ce = sum(ce_by_hand(row, label) for row, label in labelled) / len(labelled)
    assert hinton(labels) == pytest.approx(0.75 * kd_by_hand(2.0) + 0.25 * ce, rel=1e-6)
    assert hinton(labels, alpha=0.0) == pytest.approx(ce, rel=1e-6)  # cross-entropy alone: a teacher's, a baseline's


def test_a_batch_without_labels_has_the_kd_term_alone_and_a_finite_gradient():
    student = STUDENT.clone().requires_grad_()
    loss = objective("hinton", student, Targets(logits=TEACHER), torch.full((4,), N), 0.75, 2.0)
    assert loss.item() == pytest.approx(0.75 * kd_by_hand(2.0), rel=1e-6)  # CE 0, not NaN
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    only_ce = CLASSIFICATION.loss(None, STUDENT.clone(), torch.full((4,), N), Targets(), 0)  # a baseline's batch
    assert only_ce.item() == 0.0


def test_workers_shares_of_a_step_add_up_to_the_whole_steps_loss():
    """Split over two workers, each averaging its terms over the step's rows and labelled rows (what the loop does
    before DDP averages the gradients), the shares sum to the loss of the whole batch: the cross-entropy averaged over
    the step's labelled rows, not each worker's."""
    labels = torch.tensor([0, 2, N, 1])  # worker 0 holds rows 0 and 1 (two labels), worker 1 rows 2 and 3 (one)
    parts = (slice(0, 2), slice(2, 4))
    whole = objective("hinton", STUDENT, Targets(logits=TEACHER), labels, 0.75, 2.0).item()
    shares = [
        terms("hinton", STUDENT[p], Targets(logits=TEACHER[p]), labels[p], 0.75, 2.0).mean(rows=4, labelled=3)
        for p in parts
    ]
    assert sum(shares).item() == pytest.approx(whole, rel=1e-6)
    own_means = [objective("hinton", STUDENT[p], Targets(logits=TEACHER[p]), labels[p], 0.75, 2.0) for p in parts]
    assert sum(own_means).item() / 2 != pytest.approx(whole, rel=1e-3)  # each worker's own mean would weigh rows apart


def test_only_a_loss_that_reads_the_labels_is_said_to():
    assert reads_labels("dkd", {}) and not reads_labels("hinton", {}) and not reads_labels("dist", {})


def labelled_blocks(rows: int = 1000, block: int = 100) -> list[dict[str, np.ndarray]]:
    """Ids 0..rows-1 in blocks, every third row without a label."""
    ids = np.arange(rows)
    labels = np.where(ids % 3 == 0, N, ids % 10)
    return [{"id": ids[b : b + block], "label": labels[b : b + block]} for b in range(0, rows, block)]


def unlabelled_ids() -> set[int]:
    return {i for b in labelled_blocks() for i, label in zip(b["id"], b["label"]) if label == N}


@pytest.mark.parametrize("world", [1, 3])
def test_held_steps_count_their_labelled_rows_on_all_workers(world):
    workers = [HeldBatches(FakeShard(labelled_blocks()), 64, r, world) for r in range(world)]
    for step in zip(*(w.epoch(7) for w in workers)):
        ids = [int(i) for part in step for i in part.ids]
        assert len({part.labelled for part in step}) == 1  # every worker knows the step's count
        assert step[0].labelled == len([i for i in ids if i not in unlabelled_ids()]) < step[0].rows == len(ids)


class Stream(FakeShard):
    """A worker's share, read in batches of the size asked for, with the blocks' labels."""

    def iter_batches(self, batch_size=None, batch_format="numpy", local_shuffle_buffer_size=None):
        rows = {name: np.concatenate([b[name] for b in self.blocks]) for name in ("id", "label")}
        for start in range(0, len(rows["id"]), batch_size):
            yield {name: values[start : start + batch_size] for name, values in rows.items()}


@pytest.mark.parametrize("split", [[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]])
def test_streamed_steps_count_their_labelled_rows_on_all_workers(monkeypatch, split):
    group = Collectives(len(split))
    monkeypatch.setattr(batches, "all_reduce", group.all_reduce)
    monkeypatch.setattr(batches, "gathered", group.gathered)
    blocks = labelled_blocks()
    shards = [Stream([blocks[b] for b in share]) for share in split]
    workers = [StreamedBatches(s, 64, 1000, "cpu", r, len(split)) for r, s in enumerate(shards)]
    steps = [None] * len(workers)

    def collect(rank: int) -> None:
        group.rank.value = rank
        steps[rank] = list(workers[rank].epoch(0))

    threads = [threading.Thread(target=collect, args=(r,)) for r in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for step in zip(*steps):
        ids = [int(i) for part in step for i in part.ids]
        assert len({(part.rows, part.labelled) for part in step}) == 1
        assert step[0].labelled == len([i for i in ids if i not in unlabelled_ids()]) and step[0].rows == len(ids)


# --- the rows data.labelled_rows keeps labelled, in the shards' order


@pytest.fixture
def shards(tmp_path) -> Path:
    """Two training files of 5 rows each (labels 0..9, the second file's second row null) and a test split."""
    source = pq.read_table(sorted(CIFAR10.glob("train-*.parquet"))[0]).slice(0, 10)
    labels = pa.array([0, 1, 2, 3, 4, 5, None, 7, 8, 9], pa.int64())
    source = source.set_column(source.schema.get_field_index(LABEL), LABEL, labels)
    for i in range(2):
        pq.write_table(source.slice(5 * i, 5), tmp_path / f"train-{i}.parquet")
    pq.write_table(pq.read_table(sorted(CIFAR10.glob("test-*.parquet"))[0]).slice(0, 8), tmp_path / "test-0.parquet")
    return tmp_path


def read_labels(split: Split, shard_rows: int) -> list[int]:
    return [label for unit in split.units(shard_rows) for label in unit.read()[LABEL].to_pylist()]


@pytest.mark.parametrize("shard_rows", [2, 5])
def test_all_but_the_first_n_rows_read_unlabelled_in_the_shards_order_whatever_the_units(shards, shard_rows):
    split = Split.open(str(shards), "train")
    assert read_labels(split, shard_rows) == [0, 1, 2, 3, 4, 5, N, 7, 8, 9]  # a null reads as no label
    assert split.label_counts() == (9, 1)
    hidden = dataclasses.replace(split, labelled=7)
    assert read_labels(hidden, shard_rows) == [0, 1, 2, 3, 4, 5, N, N, N, N]
    assert hidden.label_counts() == (6, 4)
    assert dataclasses.replace(split, labelled=0).label_counts() == (0, 10)
    assert hidden.read_table([LABEL])[LABEL].null_count == 1  # the driver's checks see the shards' own labels


def job(shards: Path, store: Path, **data) -> Job:
    train = {"epochs": 1, "batch_size": 2, "augment": False}
    raw = {
        "name": "unlabelled",
        "store": str(store),
        "data": {"uri": str(shards), "num_classes": 10, "val_limit": 4, **data},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": train},
        "student": {"name": "lenet5", "train": train},
    }
    return Job.prepare(config.parse(raw, "<test>"), "<test>")


def test_the_setting_names_the_runs_it_changes_and_never_the_soft_labels(shards, tmp_path):
    every, first = job(shards, tmp_path / "store"), job(shards, tmp_path / "store", labelled_rows=4)
    weights = str(tmp_path / "teacher.pt")
    sha = lambda uri: "0" * 64  # noqa: E731
    assert every.softlabel_spec(weights, sha).uri == first.softlabel_spec(weights, sha).uri  # the teacher labels all
    kd = (
        every.distilled_run(every.softlabel_spec(weights, sha)),
        first.distilled_run(first.softlabel_spec(weights, sha)),
    )
    for a, b in ((every.teacher_run(), first.teacher_run()), (every.scratch_run(), first.scratch_run()), kd):
        assert (
            a.uri != b.uri
            and b.identity()["data"]["labelled_rows"] == 4
            and "labelled_rows" not in a.identity()["data"]
        )
    assert first.teacher_run().trained_rows() == 4 and every.teacher_run().trained_rows() == 9  # one null
    assert kd[1].trained_rows() == 10  # the distilled student learns every row, from the KD term where unlabelled


# --- every input kind: a null label reads as none, and the job is accepted


def kind_data(folder: Path, source: Path, columns: list[str], label: str) -> Path:
    """The first 12 training rows of ``source`` (every third label null) and its first 6 test rows."""
    for split, rows in (("train", 12), ("test", 6)):
        table = pq.read_table(sorted(source.glob(f"{split}-*.parquet"))[0], columns=[*columns, label]).slice(0, rows)
        if split == "train":
            labels = [None if i % 3 == 0 else v for i, v in enumerate(table[label].to_pylist())]
            table = table.set_column(table.schema.get_field_index(label), label, pa.array(labels, pa.int64()))
        pq.write_table(table, folder / f"{split}-0.parquet")
    return folder


KINDS = {  # kind -> (data, its columns beside the label, the label column, the data settings, a model)
    "image": (CIFAR10, ["id", "image"], "label", {"num_classes": 10}, {"name": "lenet5"}),
    "text": (
        REVIEWS,
        ["id", "text"],
        "label",
        {"num_classes": 5, "tokenizer": {"vocab_size": 200, "max_length": 8}},
        {"name": "text_cnn"},
    ),
    "tabular": (
        CIFAR10.parent / "adult",
        ["id", "age", "gender"],
        "label",
        {"num_classes": 2, "features": {"categorical": ["gender"], "numeric": ["age"]}},
        {"name": "tabular_mlp"},
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_input_kind_reads_a_null_label_as_none_and_trains_its_teacher_on_the_rest(kind, tmp_path):
    source, columns, label, data, model = KINDS[kind]
    folder = kind_data(tmp_path, source, columns, label)
    train = {"epochs": 1, "batch_size": 4, "augment": False}
    raw = {
        "name": kind,
        "store": str(tmp_path / "store"),
        "data": {"uri": str(folder), "val_limit": 4, **data},
        "teacher": {**model, "train": train},
        "student": {**model, "train": train},
    }
    job = Job.prepare(config.parse(raw, "<test>"), "<test>")
    job.inputs.ready()  # a text input's tokenizer, trained here
    (unit,) = job.labelled.units(100)
    read = unit.read()
    prepared = job.inputs.prepare({name: read[name].to_numpy(zero_copy_only=False) for name in read.column_names})
    expected = pq.read_table(folder / "train-0.parquet")[label].to_pylist()
    assert list(prepared[LABEL]) == [N if v is None else v for v in expected]
    assert (
        job.teacher_run().trained_rows() == 8
        and job.distilled_run(job.softlabel_spec("t.pt", lambda uri: "0" * 64)).trained_rows() == 12
    )


# --- the report's counts


def test_a_runs_record_counts_its_rows_of_each_kind_and_the_report_and_summary_show_them(tmp_path):
    runs = {}
    for role, epoch in {
        "distilled": {"samples": 200, "labelled": 112},
        "scratch": {"samples": 112, "labelled": 112},
        "teacher": {"samples": 150},  # a run from before rows without labels: every row labelled
    }.items():
        folder = tmp_path / "runs" / role
        storage.write_json(str(folder / "history.json"), [{"epoch": 1, "seconds": 1.0, **epoch}])
        runs[role] = run_record(str(folder / "model.pt"))["trained_rows"]
    assert runs == {
        "distilled": {"labelled": 112, "unlabelled": 88},
        "scratch": {"labelled": 112, "unlabelled": 0},
        "teacher": {"labelled": 150, "unlabelled": 0},
    }
    models = make_models()  # teacher, scratch, distilled
    for m, role in zip(models, ("teacher", "scratch", "distilled")):
        m.update(trained_rows=runs[role], history=[{"epoch": 1, "loss": 1.0, "val_accuracy": 0.5, "seconds": 1.0}])
    report = tmp_path / "report"
    storage.write_json(str(report / "metrics.json"), {"title": "t", "models": models})
    assert (
        "rows trained on (labelled + unlabelled): resnet teacher 150 + 0, tiny scratch 112 + 0, tiny distilled 112 + 88"
        in summary(str(report)).splitlines()
    )
    table = write_report(tmp_path / "written", models)["report.md"].read_text()
    assert "| labelled rows | unlabelled rows |" in table and "| tiny distilled | 1 | 112 | 88 |" in table
