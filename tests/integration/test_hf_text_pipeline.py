"""A Hugging Face text teacher and student, each reading the reviews with its own tokenizer, through every stage
on the session's Ray (issue 33): the soft labels stay one row per review, whatever tokenizer made them."""

from __future__ import annotations

from pathlib import Path

from distkd import config, labelstore, pipeline, storage
from distkd.job import Job
from distkd.specs import TrainingRun
from tests.hf_text import tiny_bert

ROWS = 120
TRAIN = {"epochs": 1, "batch_size": 40, "lr": 0.001, "augment": False, "optimizer": {"name": "adamw"}}


def test_an_hf_teacher_and_student_with_their_own_tokenizers_through_every_stage(ray_cluster, reviews, tmp_path):
    teacher = tiny_bert(tmp_path / "teacher", vocab_size=120)
    student = tiny_bert(tmp_path / "student", vocab_size=80, layers=1, width=8, weights=False)
    raw = {
        "name": "hf-text",
        "store": str(tmp_path / "store"),
        "data": {
            "uri": str(reviews),
            "limit": ROWS,
            "val_limit": 40,
            "tokenizer": {"name": "wordpiece", "vocab_size": 300, "max_length": 24},
        },
        "teacher": {"name": f"hf:{teacher}", "max_length": 32, "train": TRAIN},
        "student": {"name": f"hf-config:{student}", "max_length": 16, "train": TRAIN},
        "softlabels": {"shard_rows": 60, "actors": 1},
        "evaluate": {"batch_size": 60},
    }
    job = Job.prepare(config.parse(raw, "<hf>"), "<hf>")
    out = pipeline.run(job)

    entry = labelstore.manifest(out["softlabels"])
    assert entry.rows == ROWS  # one row per review, labelled with the teacher's tokenizer
    assert entry.inputs["transform"]["inputs"]["tokenizer"] == job.teacher.inputs.made_of
    for role in ("distilled", "scratch"):
        info = storage.read_json(str(Path(out[role]).with_name(TrainingRun.INFO)))
        assert info["inputs"] == job.student.inputs.identity()  # read with the student's own
        assert info["inputs"]["max_length"] == 16
    models = {m["role"]: m for m in storage.read_json(storage.join(out["report"], "metrics.json"))["models"]}
    assert set(models) == {"teacher", "distilled", "scratch"}
    assert all(m["metrics"]["count"] == ROWS for m in models.values())
    assert 0 <= models["distilled"]["metrics"]["teacher_agreement"] <= 1
