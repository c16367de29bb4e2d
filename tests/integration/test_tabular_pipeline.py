"""A tabular job through every stage on the session's Ray, its data and store on S3: the adult set's feature columns
encoded through statistics computed once and kept in the store, a DCN-v2 teacher, an embedding-MLP student and
its twin, evaluated by AUC and logloss overall and per gender, with the distilled student's paired gain."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distkd import config, pipeline, storage
from distkd.data import tabular
from distkd.evaluate.summary import summary
from distkd.job import Job
from tests.conftest import BUCKET, ROOT

ADULT = ROOT.parent / "shared" / "datasets" / "adult"
ROWS = 400
FEATURES = {
    "categorical": ["workclass", "education", "marital_status", "occupation", "relationship", "gender"],
    "numeric": ["age", "educational_num", "capital_gain", "hours_per_week"],
    "min_count": 3,
}


@pytest.fixture(scope="module")
def adult() -> Path:
    if not (ADULT / "test-00000-of-00001.parquet").exists():
        pytest.fail(f"adult Parquet shards not found at {ADULT}")
    return ADULT


def tabular_job(data: str, store: str) -> Job:
    train = {"epochs": 1, "batch_size": 50, "lr": 0.003, "augment": False, "optimizer": {"name": "adamw"}}
    raw = {
        "name": "adult-tiny",
        "store": store,
        "data": {"uri": data, "limit": ROWS, "val_limit": 100, "features": FEATURES},
        "teacher": {"name": "dcn_v2", "kwargs": {"dim": 4, "cross_layers": 2, "hidden": "16"}, "train": train},
        "student": {"name": "tabular_mlp", "kwargs": {"dim": 2, "hidden": "4"}, "train": train},
        "softlabels": {"shard_rows": 200, "batch_size": 100},
        "evaluate": {"slices": ["gender"], "batch_size": 100},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    return Job.prepare(config.parse(raw, "<adult>"), "<adult>")


def check_outputs(job: Job, out: dict[str, str]) -> None:
    """Every stage committed; the report judges the three models by AUC and logloss, overall and per gender."""
    assert all(storage.is_committed(uri.rsplit("/", 1)[0] if uri.endswith(".pt") else uri) for uri in out.values())
    folder = job.inputs.folder
    assert storage.is_committed(folder)
    kept = tabular.Statistics.from_json(storage.read_bytes(storage.join(folder, tabular.FILE)))
    assert kept == job.inputs.statistics and [c.name for c in kept.categorical] == FEATURES["categorical"]
    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    assert set(models) == {"teacher", "distilled", "scratch"}
    for m in models.values():
        assert m["metrics"]["count"] == ROWS and 0 < m["metrics"]["roc_auc"] <= 1 and m["metrics"]["logloss"] > 0
        assert sum(s["count"] for s in m["slices"]["gender"].values()) == ROWS
        assert all(0 < s["roc_auc"] <= 1 for s in m["slices"]["gender"].values())
    vs = models["distilled"]["metrics"]["ranking_vs_baseline"]
    assert vs["count"] == ROWS and vs["roc_auc"]["ci95"][0] <= vs["roc_auc"]["gain"] <= vs["roc_auc"]["ci95"][1]
    printed = summary(out["report"])
    assert "ROC AUC" in printed.splitlines()[0] and "paired bootstrap over 400 rows" in printed
    assert storage.exists(storage.join(out["report"], "roc.png"))


def test_a_tabular_job_on_s3_through_every_stage_with_statistics_computed_once(ray_cluster, s3_server, adult, capsys):
    """Data and store both on S3 (one run serves both: every other stage's test covers a local store)."""
    data = f"s3://{BUCKET}/datasets/adult-slice"
    for name in ("train-00000-of-00002", "test-00000-of-00001"):
        sink = io.BytesIO()
        pq.write_table(pq.read_table(adult / f"{name}.parquet").slice(0, ROWS), sink)
        storage.write_bytes(storage.join(data, f"{name}.parquet"), sink.getvalue())
    store = f"s3://{BUCKET}/tabular-store"
    job = tabular_job(data, store)
    out = pipeline.run(job)
    check_outputs(job, out)
    assert f"[inputs] keeping the statistics of 10 feature columns -> {job.inputs.folder}" in capsys.readouterr().out

    again = tabular_job(data, store)  # another job, the same data and settings: every output reused
    assert again.inputs.statistics == job.inputs.statistics
    assert all(step.action == "reuse" for step in pipeline.plan(again))
    assert pipeline.run(again) == out
