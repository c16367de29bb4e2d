"""A language model through every stage on the session's Ray (issue 31): the review texts as documents of one block
each (``data.blocks``), a tiny causal Transformer teacher trained here on the next token, its per-token top-k soft
labels in 8 bits with the tail, a smaller student distilled from them and its baseline, scored by perplexity per
department with the paired perplexity ratio."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq

from distkd import config, labelstore, pipeline, storage
from distkd.data.blocks import IGNORE
from distkd.evaluate.summary import summary
from distkd.job import Job

ROWS, LENGTH, TOP_K = 160, 24, 8


def lm_job(reviews, store) -> Job:
    train = {"epochs": 1, "batch_size": 32, "lr": 0.003, "augment": False, "optimizer": {"name": "adamw"}}
    raw = {
        "name": "reviews-lm-tiny",
        "task": "language_model",
        "store": str(store),
        "data": {
            "uri": str(reviews),
            "limit": ROWS,
            "val_limit": 40,
            "blocks": {"name": "wordpiece", "vocab_size": 300, "max_length": LENGTH},
        },
        "teacher": {"name": "lm_transformer", "kwargs": {"layers": 1, "dim": 16, "heads": 2}, "train": train},
        "student": {
            "name": "lm_transformer",
            "kwargs": {"layers": 1, "dim": 8, "heads": 2},
            "train": train,
            "resources": {"num_workers": 1, "cpus_per_worker": 0.5},
        },
        "distill": {"alpha": 0.5, "temperature": 1.0, "loss": {"name": "forward_kl"}},
        "softlabels": {"format": "topk", "top_k": TOP_K, "dtype": "uint8", "shard_rows": 80, "actors": 1},
        "evaluate": {"slices": ["department"], "batch_size": 80},
    }
    return Job.prepare(config.parse(raw, "<reviews-lm>"), "<reviews-lm>")


def test_a_language_model_through_every_stage(ray_cluster, reviews, tmp_path, capsys):
    job = lm_job(reviews, tmp_path / "store")
    out = pipeline.run(job)

    manifest = labelstore.manifest(out["softlabels"])
    assert manifest.rows == ROWS and manifest.format.layout == "tokens" and manifest.format.top_k == TOP_K
    assert (manifest.unit, manifest.positions) == ("token", LENGTH)  # a label a position of each block
    assert manifest.bytes_per_unit == round(manifest.bytes / (ROWS * LENGTH), 3) < 2 * TOP_K
    printed = capsys.readouterr().out
    assert f"{ROWS * LENGTH} of {ROWS * LENGTH} tokens to label" in printed
    assert f"committed {ROWS * LENGTH} tokens in 2 shards" in printed
    history = storage.read_json(str(storage.join(out["distilled"].rsplit("/", 1)[0], "history.json")))
    assert history[-1]["samples"] == ROWS and math.isfinite(history[-1]["loss"]) and history[-1]["kd"] > 0

    report = storage.read_json(storage.join(out["report"], "metrics.json"))
    assert report["task"] == "language_model"
    models = {m["role"]: m for m in report["models"]}
    assert set(models) == {"teacher", "distilled", "scratch"}
    rows = job.evaluated.read_table(["id", "text", "label"]).to_pydict()
    tokens = int((job.inputs.prepare({k: np.array(v, dtype=object) for k, v in rows.items()})["next"] != IGNORE).sum())
    departments = pq.read_table(job.evaluated.file_rows()[0][0], columns=["department"])["department"].to_pylist()
    for m in models.values():
        met = m["metrics"]
        assert met["tokens"] == tokens and math.isclose(met["perplexity"], math.exp(met["nll"]))
        assert 1 < met["perplexity"] < job.num_classes and 0 <= met["accuracy"] <= 1 and m["cost"]["tokens_per_s"] > 0
        assert sum(s["tokens"] for s in m["slices"]["department"].values()) == tokens
        assert set(m["slices"]["department"]) == {d or "" for d in departments[: job.evaluated.num_rows()]}
    vs = models["distilled"]["metrics"]["perplexity_vs_baseline"]
    ratio = models["distilled"]["metrics"]["perplexity"] / models["scratch"]["metrics"]["perplexity"]
    assert math.isclose(vs["ratio"], ratio, rel_tol=1e-6) and vs["low"] < vs["ratio"] < vs["high"]
    assert "teacher_agreement" in models["distilled"]["metrics"]

    printed = summary(out["report"])
    assert "perplexity ratio" in printed and "distilled" in printed
    assert "perplexity" in (storage.read_bytes(storage.join(out["report"], "report.md")).decode())
