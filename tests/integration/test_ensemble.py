"""Teacher ensembles on the session's Ray, with fixed (untrained) LeNet-5 teachers on a small slice: the student
distils from exactly the weighted mean of its teachers' stored outputs, the report lists each teacher and the
ensemble, and an ensemble that adds a teacher labels with that teacher alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distkd import config, labelstore, pipeline, storage
from distkd.data.source import decode
from distkd.distill.stage import rows_in_memory
from distkd.job import Job
from distkd.models import load_weights
from distkd.models.students import LeNet5
from tests.label_store import shard_files

ROWS, SHARD_ROWS, T = 120, 40, 4.0
WEIGHTS = (3.0, 1.0, 1.0)  # the teachers' weights in the job files (the first two: 0.75 and 0.25)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cifar10) -> Path:
    """A private slice of CIFAR-10 (ROWS training rows, 40 test rows) and three fixed teachers' weights."""
    root = tmp_path_factory.mktemp("ensemble")
    (root / "data").mkdir()
    for name, rows in (("train-00000-of-00005", ROWS), ("test-00000-of-00001", 40)):
        pq.write_table(pq.read_table(cifar10 / f"{name}.parquet").slice(0, rows), root / "data" / f"{name}.parquet")
    for seed in range(3):
        torch.manual_seed(seed)
        torch.save(LeNet5(10).state_dict(), (root / f"teacher-{seed}.pt"))
    return root


def ensemble_job(folder: Path, teachers: int, **stages) -> Job:
    raw = {
        "name": f"ensemble-{teachers}",
        "store": str(folder / "store"),
        "data": {"uri": str(folder / "data"), "val_limit": 20},
        "teacher": [
            {"name": "lenet5", "weights": str(folder / f"teacher-{i}.pt"), "weight": WEIGHTS[i]}
            for i in range(teachers)
        ],
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 40, "augment": False}},
        "softlabels": {"shard_rows": SHARD_ROWS, "batch_size": 40},
        "distill": {"alpha": 0.5, "temperature": T, "baseline": False},
        "evaluate": {"batch_size": 40},
        **stages,
    }
    return Job.prepare(config.parse(raw, f"<ensemble of {teachers}>"))


def stored_logits(entry: str) -> dict[str, np.ndarray]:
    """id -> the teacher's stored logits, read from each shard the entry lists through the cache's own check."""
    info = labelstore.manifest(entry)
    out = {}
    for record in info.shards:
        table, _ = labelstore.read_shard(entry, record.file, None, record)
        columns = labelstore.training_columns(table, info.format)
        out.update(zip(columns["id"], columns["teacher_logits"]))
    return out


@pytest.fixture(scope="module")
def first(ray_cluster, folder) -> tuple[Job, dict[str, str]]:
    job = ensemble_job(folder, 2)
    return job, pipeline.run(job)


def test_the_student_distils_from_exactly_the_weighted_mean_of_its_teachers_stored_probabilities(first):
    job, out = first
    assert set(out) == {"teacher-0", "teacher-1", "softlabels-0", "softlabels-1", "distilled", "report"}
    specs = [job.softlabel_spec(out[t.role], i=i) for i, t in enumerate(job.teachers)]
    assert [s.uri for s in specs] == [out["softlabels-0"], out["softlabels-1"]]  # each teacher's own entry
    run = job.distilled_run(*specs)
    assert storage.join(run.uri, "model.pt") == out["distilled"]
    recorded = storage.read_json(storage.join(run.uri, "run.json"))["kd"]
    assert recorded["teachers"] == [{"softlabels": s.key, "weight": w} for s, w in zip(specs, (0.75, 0.25))]

    # what the distill stage's reader hands the loop (held in memory or streamed: the same reader)
    given = {
        r["id"]: r["teacher_logits"]
        for r in rows_in_memory(job.train, run.softlabels, job.inputs, run.distill).take_all()
    }
    teachers = [stored_logits(s.uri) for s in specs]
    assert sorted(given) == sorted(teachers[0]) == sorted(teachers[1]) and len(given) == ROWS
    ids = sorted(given)
    z = [torch.tensor(np.stack([teacher[i] for i in ids]), dtype=torch.float64) for teacher in teachers]
    mean = 0.75 * torch.softmax(z[0] / T, -1) + 0.25 * torch.softmax(z[1] / T, -1)
    target = torch.tensor(np.stack([given[i] for i in ids]), dtype=torch.float64)
    torch.testing.assert_close(torch.softmax(target / T, -1), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(target, T * mean.log(), rtol=1e-6, atol=1e-5)


def test_the_report_lists_each_teacher_and_the_ensemble_the_student_is_compared_with(first, folder):
    job, out = first
    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    assert list(models) == ["teacher-0", "teacher-1", "distilled", "ensemble"]
    assert models["ensemble"]["members"] == {"teacher-0": 0.75, "teacher-1": 0.25}
    assert models["ensemble"]["cost"]["params"] == 2 * models["teacher-0"]["cost"]["params"]
    assert "teacher_agreement" not in models["teacher-0"]["metrics"]

    test = job.evaluated.read_table(["image", "label"])
    images = job.inputs.normalize(torch.from_numpy(np.stack([decode(b) for b in test["image"].to_pylist()])))
    labels = torch.from_numpy(test["label"].to_numpy())

    def predicted(spec, weights: str) -> torch.Tensor:
        with torch.inference_mode():
            return load_weights(spec.build(), weights).eval()(images).double()

    z = [predicted(t.model, str(folder / f"teacher-{i}.pt")) for i, t in enumerate(job.teachers)]
    ensemble = (0.75 * torch.softmax(z[0] / T, -1) + 0.25 * torch.softmax(z[1] / T, -1)).argmax(-1)
    assert models["ensemble"]["metrics"]["accuracy"] == (ensemble == labels).double().mean().item()
    student = predicted(job.student, out["distilled"]).argmax(-1)
    assert models["distilled"]["metrics"]["teacher_agreement"] == (student == ensemble).double().mean().item()


def test_an_ensemble_that_adds_a_teacher_labels_with_the_new_teacher_only(first, folder):
    job, out = first
    store = folder / "store"
    bigger = ensemble_job(folder, 3, stages=["softlabels"])
    steps = {s.name: s for s in pipeline.plan(bigger)}
    assert [steps[f"softlabels-{i}"].action for i in range(3)] == ["reuse", "reuse", "compute"]
    before = {path: (mtime, Path(path).stat().st_size) for path, mtime in shard_files(store).items()}
    labelled = pipeline.run(bigger)
    assert [labelled[f"softlabels-{i}"] for i in range(2)] == [out["softlabels-0"], out["softlabels-1"]]
    after = {path: (mtime, Path(path).stat().st_size) for path, mtime in shard_files(store).items()}
    assert {path: after[path] for path in before} == before  # the first two teachers' shards: untouched
    third = labelstore.manifest(labelled["softlabels-2"])
    assert (third.teacher_rows, third.computed_shards, third.rows) == (ROWS, ROWS // SHARD_ROWS, ROWS)
    new = set(after) - set(before)
    spec = bigger.softlabel_spec(str(folder / "teacher-2.pt"), i=2)
    assert len(new) == ROWS // SHARD_ROWS and all(f"/{spec.teacher_key}/" in path for path in new)
    assert [labelstore.manifest(labelled[f"softlabels-{i}"]).teacher_rows for i in range(2)] == [ROWS, ROWS]  # as made
