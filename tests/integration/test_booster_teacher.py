"""Gradient-boosted teachers through the stages on the session's Ray: a LightGBM booster trained here on a slice of
adult's raw columns labels the training split in the soft-label actors (its stored logits its own raw scores),
a small student distils from them, and the evaluation runs the booster on the test split's raw columns (its AUC
the booster's own); an XGBoost booster labels the same rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from distkd import config, labelstore, pipeline, storage
from distkd.job import Job
from tests.boosters import ADULT, CATEGORICAL, FEATURES, NUMERIC, frame, margins, rows, train

ROWS = 400
COLUMNS = CATEGORICAL + NUMERIC


def booster_job(teacher: str, store: str, stages: list[str]) -> Job:
    train_cfg = {"epochs": 1, "batch_size": 50, "lr": 0.003, "augment": False, "optimizer": {"name": "adamw"}}
    raw = {
        "name": "adult-booster",
        "store": store,
        "stages": stages,
        "data": {"uri": str(ADULT), "limit": ROWS, "val_limit": 100, "features": FEATURES},
        "teacher": {"name": teacher},
        "student": {"name": "tabular_mlp", "kwargs": {"dim": 2, "hidden": "4"}, "train": train_cfg},
        "softlabels": {"shard_rows": 200, "batch_size": 100, "dtype": "float32"},
        "evaluate": {"batch_size": 100},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    return Job.prepare(config.parse(raw, "<booster>"), "<booster>")


def stored_logits(entry: str) -> tuple[list[str], np.ndarray]:
    shards = pa.concat_tables(
        pq.read_table(labelstore.shard_uri(entry, s.file)) for s in labelstore.manifest(entry).shards
    )
    return shards["id"].to_pylist(), np.stack(shards["logits"].to_numpy(zero_copy_only=False))


def expected_margins(kind: str, path, training: pa.Table, ids: list[str]) -> np.ndarray:
    """The booster's own raw scores for the training rows ``ids``, in that order."""
    categories = {c: frame(training, COLUMNS)[c].cat.categories for c in CATEGORICAL}
    by_id = dict(zip(training["id"].to_pylist(), margins(kind, path, frame(training, COLUMNS, categories))))
    return np.array([by_id[i] for i in ids])


@pytest.mark.parametrize("kind", ["lightgbm", "xgboost"])
def test_a_booster_teacher_labels_in_the_actors_with_its_raw_margins(ray_cluster, tmp_path, kind):
    training = rows("train", ROWS)  # the job's training rows: the first ROWS of the first file
    path = train(kind, tmp_path, training, training["label"].to_numpy(), COLUMNS)
    stages = ["softlabels", "distill", "evaluate"] if kind == "lightgbm" else ["softlabels"]
    job = booster_job(f"{kind}:{path}", str(tmp_path / "store"), stages)
    assert job.teacher_run() is None  # inference only: no stage 0
    out = pipeline.run(job)

    ids, logits = stored_logits(out["softlabels"])
    assert sorted(ids) == sorted(training["id"].to_pylist()) and logits.shape == (ROWS, 2)
    assert not logits[:, 0].any()  # [0, m]
    np.testing.assert_allclose(logits[:, 1], expected_margins(kind, path, training, ids), rtol=1e-5, atol=1e-5)
    if kind != "lightgbm":
        return
    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    assert set(models) == {"teacher", "distilled", "scratch"}
    test = rows("test", ROWS)
    categories = {c: frame(training, COLUMNS)[c].cat.categories for c in CATEGORICAL}
    scores = margins(kind, path, frame(test, COLUMNS, categories))
    teacher = models["teacher"]["metrics"]
    assert teacher["count"] == ROWS
    assert abs(teacher["roc_auc"] - roc_auc_score(test["label"].to_numpy(), scores)) < 1e-4
    assert teacher["accuracy"] == pytest.approx(np.mean((scores > 0) == test["label"].to_numpy()))
    assert models["teacher"]["cost"]["params"] == 0 and models["teacher"]["cost"]["size_bytes"] >= path.stat().st_size
