"""A text split through every stage on the session's Ray: the review texts tokenised by a tokenizer trained once,
a Transformer teacher, a text CNN student on 2 workers, soft labels that resume, evaluation per department."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from distkd import config, labelstore, pipeline, storage
from distkd.data import tokenizer
from distkd.evaluate.summary import summary
from distkd.job import Job
from distkd.softlabels import cache
from distkd.softlabels.stage import generate
from distkd.specs import TrainingRun
from tests.integration.test_training import every_id_once

ROWS, SHARD_ROWS = 240, 120


def text_job(reviews: Path, store: Path) -> Job:
    raw = {
        "name": "reviews-tiny",
        "store": str(store),
        "data": {
            "uri": str(reviews),
            "limit": ROWS,
            "val_limit": 100,
            "tokenizer": {"name": "wordpiece", "vocab_size": 500, "max_length": 32},
        },
        "teacher": {
            "name": "text_transformer",
            "kwargs": {"layers": 1, "dim": 16, "heads": 2},
            "train": {"epochs": 1, "batch_size": 40, "lr": 0.001, "augment": False, "optimizer": {"name": "adamw"}},
        },
        "student": {
            "name": "text_cnn",
            "kwargs": {"dim": 16, "filters": 8},
            "train": {"epochs": 1, "batch_size": 40, "lr": 0.001, "augment": False, "optimizer": {"name": "adamw"}},
            # half a CPU a worker: the distilled student and its baseline, 2 workers each, train at once on the
            # session's 2 CPUs (one Ray Train run's wait, not two one after the other)
            "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
        },
        "softlabels": {"shard_rows": SHARD_ROWS, "actors": 1},
        "evaluate": {"slices": ["department"], "batch_size": 100},
    }
    return Job.prepare(config.parse(raw, "<reviews>"), "<reviews>")


def test_text_through_every_stage_with_a_tokenizer_trained_once_and_labels_that_resume(
    ray_cluster, reviews, tmp_path, capsys
):
    store = tmp_path / "store"
    job = text_job(reviews, store)
    out = pipeline.run(job)
    assert all(storage.is_committed(str(Path(uri).parent) if uri.endswith(".pt") else uri) for uri in out.values())

    (folder,) = (store / "tokenizers").iterdir()  # one tokenizer, trained once, for every stage
    assert storage.is_committed(str(folder)) and job.inputs.tokenizer.uri == str(folder / tokenizer.FILE)
    assert f"[inputs] training a wordpiece tokenizer of 500 ids -> {folder}" in capsys.readouterr().out
    meta = storage.read_json(str(folder / tokenizer.META))
    assert meta["rows"] == ROWS and 0 < meta["truncated"] <= ROWS  # reviews run past 32 tokens

    history = storage.read_json(str(Path(out["distilled"]).parent / "history.json"))
    every_id_once(history, ROWS, 2, (job,))  # the student trained on its 2 workers, each id once
    spans = sorted(
        (Path(out[role]).with_name(TrainingRun.INFO).stat().st_mtime, Path(out[role]).stat().st_mtime)
        for role in ("distilled", "scratch")
    )  # each run's run.json, written as it starts, to its model.pt, written as it ends
    assert spans[1][0] < spans[0][1], spans  # the distilled student and its baseline trained at once

    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    assert set(models) == {"teacher", "distilled", "scratch"}
    departments = pq.read_table(job.evaluated.file_rows()[0][0], columns=["department"])["department"][:ROWS]
    for m in models.values():
        assert m["metrics"]["count"] == ROWS and m["cost"]["params"] > 0 and 0 < m["truncated"] <= ROWS
        slices = m["slices"]["department"]
        assert set(slices) == {d or "" for d in departments.to_pylist()}
        assert sum(s["count"] for s in slices.values()) == ROWS
    assert len(models["distilled"]["slice_gaps"]) == len(models["distilled"]["slices"]["department"])
    assert "worst slice department = " in summary(out["report"])
    cut = f"{models['teacher']['truncated']:,} of the {ROWS:,} texts were cut to max_length tokens"
    assert cut in Path(out["report"], "report.md").read_text()

    made = (folder / tokenizer.FILE).stat().st_mtime_ns
    again = text_job(reviews, store)  # another job, the same data and settings: every output reused
    assert all(step.action == "reuse" for step in pipeline.plan(again))
    assert pipeline.run(again) == out and (folder / tokenizer.FILE).stat().st_mtime_ns == made
    assert "[inputs]" not in capsys.readouterr().out  # nothing to make

    entry, spec = out["softlabels"], again.softlabel_spec(out["teacher"])
    shards = [Path(labelstore.shard_uri(entry, s.file)) for s in labelstore.manifest(entry).shards]
    assert len(shards) == ROWS // SHARD_ROWS
    labelled = shards[1].read_bytes()
    for path in (Path(entry, "_COMMITTED"), Path(entry, "manifest.json"), shards[1]):
        path.unlink()  # as if the job had died after its first shard
    assert cache.shard_plan(spec).to_label == SHARD_ROWS
    assert generate(spec) == entry and labelstore.manifest(entry).teacher_rows == SHARD_ROWS
    assert shards[1].read_bytes() == labelled  # the teacher's tokens and logits again, to the byte
