"""The whole pipeline on a real local Ray instance and real CIFAR-10 rows, with tiny models."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from distkd import cluster, config, labelstore, pipeline, storage
from distkd.data.source import Split, decode
from distkd.distill.stage import rows_in_memory
from distkd.job import Job
from distkd.labels.formats import to_numpy
from distkd.models import load_weights
from distkd.softlabels import cache
from distkd.specs import TrainingRun
from tests.label_store import one_entry

ROOT = Path(__file__).resolve().parents[2]
ROWS = 300


def tiny_job(cifar10: Path, store: str, name: str = "tiny", **overrides) -> Job:
    raw = {
        "name": name,
        "store": store,
        "data": {"uri": str(cifar10), "limit": ROWS, "val_limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 100, "lr": 0.1}},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 100, "lr": 0.05, "augment": False}},
        "softlabels": {"batch_size": 256},
        "evaluate": {"batch_size": 256},
        **overrides,
    }
    return Job.prepare(config.parse(raw, f"<{name}>"))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def first_rows(split: Split) -> dict:
    table = split.read_table(["id", "image", "label"])
    return {
        "id": table["id"].to_pylist(),
        "image": np.stack([decode(b) for b in table["image"].to_pylist()]),
        "label": table["label"].to_numpy(),
    }


def outputs(store: Path) -> dict[str, str]:
    """The outputs found in ``store``, by the names ``pipeline.run`` gives them."""
    runs = {p.name.rsplit("-", 1)[0]: str(p / "model.pt") for p in (store / "runs").iterdir()}
    # beside the entries the label store keeps its shards and its writers' leases
    (labels,) = (p for p in (store / "softlabels").iterdir() if cache.KEY.fullmatch(p.name))
    (report,) = (store / "reports").iterdir()
    return {
        "teacher": runs["teacher"],
        "softlabels": str(labels),
        "distilled": runs["student-kd"],
        "scratch": runs["student-scratch"],
        "report": str(report),
    }


@pytest.fixture(scope="module")
def run(ray_cluster, cifar10, tmp_path_factory) -> tuple[Job, Path, dict[str, str], subprocess.CompletedProcess]:
    """The tiny job run as a user runs it, ``distkd pipeline JOB.yaml`` in a process of its own (joining this
    session's Ray): the job, its store, its outputs and what it printed."""
    import ray

    folder = tmp_path_factory.mktemp("pipeline")
    store = folder / "store"
    job = tiny_job(cifar10, str(store))
    raw = job.config.model_dump()
    raw["ray_address"] = ray.get_runtime_context().gcs_address
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "distkd", "pipeline", str(path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return job, store, outputs(store), done


def test_every_stage_commits_its_output(run):
    job, store, out, _ = run
    assert set(out) == {"teacher", "softlabels", "distilled", "scratch", "report"}
    for uri in (
        out["softlabels"],
        out["report"],
        *(str(Path(out[r]).parent) for r in ("teacher", "distilled", "scratch")),
    ):
        assert storage.is_committed(uri), uri
    history = storage.read_json(storage.join(str(Path(out["distilled"]).parent), "history.json"))
    assert [h["epoch"] for h in history] == [1]


def test_the_distilled_student_and_its_baseline_train_at_once(run):
    """The session's 2 CPUs hold both students' one-CPU workers: each run's span (its run.json, written as it
    starts, to its model.pt, written as it ends) overlaps the other's."""
    _, _, out, _ = run
    spans = [
        (Path(out[role]).with_name(TrainingRun.INFO).stat().st_mtime, Path(out[role]).stat().st_mtime)
        for role in ("distilled", "scratch")
    ]
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert b_start < a_end, spans


def test_soft_labels_hold_one_row_per_id_with_the_teachers_logits(run):
    job, _, out, _ = run
    manifest = labelstore.manifest(out["softlabels"])
    tables = [pq.read_table(labelstore.shard_uri(out["softlabels"], s.file)) for s in manifest.shards]
    ids = [i for t in tables for i in t["id"].to_pylist()]
    expected = first_rows(job.train)
    assert sorted(ids) == sorted(expected["id"]) and len(set(ids)) == ROWS == manifest.rows
    stored = {i: row for t in tables for i, row in zip(t["id"].to_pylist(), to_numpy(t["logits"], np.float32))}
    assert all(t["logits"].type.value_type.bit_width == 16 for t in tables)  # float16 by default

    teacher = load_weights(job.teacher.build(), out["teacher"]).eval()
    with torch.inference_mode():
        direct = teacher(job.inputs.normalize(torch.from_numpy(expected["image"][:16]))).numpy()
    np.testing.assert_allclose(np.stack([stored[i] for i in expected["id"][:16]]), direct, rtol=2e-3, atol=2e-3)


def test_second_run_reuses_everything_without_running_the_teacher(run, capsys):
    job, store, out, _ = run
    before = snapshot(store)
    capsys.readouterr()
    again = pipeline.run(job)
    printed = capsys.readouterr().out
    assert again == out
    assert snapshot(store) == before  # nothing written: no teacher, no training, no evaluation ran
    for stage in ("teacher", "softlabels", "student-kd", "student-scratch", "evaluate"):
        assert f"[{stage}] reusing" in printed


def test_aggregated_evaluation_equals_single_process_computation(run):
    job, _, out, _ = run
    models = storage.read_json(storage.join(out["report"], "metrics.json"))["models"]
    test = first_rows(job.evaluated)
    assert [m["role"] for m in models] == ["teacher", "distilled", "scratch"]
    for m in models:
        spec = job.teacher if m["role"] == "teacher" else job.student
        with torch.inference_mode():
            predicted = (
                load_weights(spec.build(), m["weights"])
                .eval()(job.inputs.normalize(torch.from_numpy(test["image"])))
                .argmax(1)
                .numpy()
            )
        metrics, labels = m["metrics"], list(range(10))
        assert metrics["count"] == ROWS
        assert metrics["accuracy"] == pytest.approx(accuracy_score(test["label"], predicted), abs=1e-12)
        assert metrics["f1_macro"] == pytest.approx(
            f1_score(test["label"], predicted, average="macro", labels=labels, zero_division=0), abs=1e-9
        )
        _, _, f1, support = precision_recall_fscore_support(test["label"], predicted, labels=labels, zero_division=0)
        assert [c["f1"] for c in metrics["per_class"]] == pytest.approx(f1.tolist(), abs=1e-9)
        assert [c["support"] for c in metrics["per_class"]] == support.tolist()
    report = Path(out["report"], "report.md").read_text()
    assert all(f"| {m['name']} |" in report for m in models)


def test_soft_labels_that_miss_training_ids_are_refused(run):
    job, _, out, _ = run
    more_rows = dataclasses.replace(job.train, limit=ROWS + 10)
    with pytest.raises(labelstore.CacheError, match="the shards do not line up with the rows of"):
        rows_in_memory(more_rows, one_entry(out["softlabels"]), job.inputs)


def test_a_stage_not_asked_for_needs_its_input_committed(ray_cluster, cifar10, tmp_path):
    from distkd.specs import MissingOutput

    job = tiny_job(cifar10, str(tmp_path / "empty"))
    with pytest.raises(MissingOutput, match="run the 'train_teacher' stage first"):
        pipeline.run(job, ["softlabels"])


def test_evaluation_job_on_any_checkpoint_and_split(run, tmp_path, capsys):
    from distkd.cli import main

    job, store, out, _ = run
    evaluation = {
        "name": "eval-only",
        "store": str(store),
        "stages": ["evaluate"],
        "data": {"uri": job.config.data.uri, "limit": 200},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}},
        "student": {"name": "lenet5"},
        "evaluate": {
            "split": "train",
            "models": [
                {"role": "teacher", "name": "resnet9", "kwargs": {"width": 4}, "weights": out["teacher"]},
                {"role": "distilled", "name": "lenet5", "weights": out["distilled"]},
            ],
        },
    }
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(evaluation))
    assert main(["evaluate", str(path)]) == 0
    # the outputs the command lists ("    report: URI"), wherever Ray's notices print
    folder = re.search(r"^ *report: (\S+)$", capsys.readouterr().out, re.M).group(1)
    metrics = storage.read_json(storage.join(folder, "metrics.json"))
    assert metrics["split"]["split"] == "train" and metrics["split"]["limit"] == 200
    assert [(m["role"], m["metrics"]["count"]) for m in metrics["models"]] == [("teacher", 200), ("distilled", 200)]
    assert "teacher_agreement" in metrics["models"][1]["metrics"]

    evaluation["stages"] = ["distill", "evaluate"]
    path.write_text(yaml.safe_dump(evaluation))
    assert main(["pipeline", str(path)]) == 2
    assert "a job with 'evaluate.models' only evaluates them" in capsys.readouterr().err


def test_report_command_combines_runs(run, tmp_path, capsys):
    import base64
    import shutil

    from distkd.cli import main

    _, _, out, _ = run
    other = shutil.copytree(out["report"], tmp_path / "other-run")
    assert main(["report", out["report"], str(other), out["report"], "--out", str(tmp_path / "combined")]) == 0
    markdown = (tmp_path / "combined" / "report.md").read_text()
    first = Path(out["report"]).name
    assert f"| {first}: lenet5 distilled |" in markdown and "| other-run: lenet5 distilled |" in markdown
    assert markdown.count(": lenet5 distilled | distilled |") == 2  # the report named twice counts once
    html = (tmp_path / "combined" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_plan_shows_every_output_reused_after_a_run(run, monkeypatch):
    job, _, out, _ = run
    monkeypatch.setattr(pipeline, "connect", lambda *a: pytest.fail("plan must start no Ray work"))
    steps = pipeline.plan(job)
    assert [(s.name, s.action) for s in steps] == [(name, "reuse") for name in out]
    locations = {s.name: s.output for s in steps}
    assert locations["softlabels"] == out["softlabels"] and locations["report"] == out["report"]
    for name in ("teacher", "distilled", "scratch"):
        assert storage.join(locations[name], "model.pt") == out[name]


def test_plan_command_on_an_empty_store_starts_nothing(cifar10, tmp_path, capsys, monkeypatch):
    from distkd.cli import main

    monkeypatch.setattr(cluster, "connect", lambda *a: pytest.fail("plan must start no Ray work"))
    path = tmp_path / "job.yaml"
    store = tmp_path / "store"
    raw = {
        "name": "planned",
        "store": str(store),
        "data": {"uri": str(cifar10), "limit": ROWS},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}},
        "student": {"name": "lenet5", "train": {"augment": False}},
    }
    path.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["train_teacher", "teacher", "compute"]
    assert lines[1].split()[:3] == ["softlabels", "softlabels", "compute"]
    assert "(decided by the teacher output)" in lines[1]
    assert [line.split()[1] for line in lines] == ["teacher", "softlabels", "distilled", "scratch", "report"]
    assert not store.exists()


def test_console_shows_each_stage_once_and_ends_with_the_summary(run):
    """Each line once and none of Ray's noise; a line per epoch and progress to 100 %; then the summary."""
    *_, done = run
    printed, lines = done.stdout, done.stdout.splitlines()
    assert len(lines) == len(set(lines)), printed
    for noise in ("Active & requested resources", "TrainingReport(", "exclude_resources", "PreemptionWatcher"):
        assert noise not in printed + done.stderr
    log = re.search(r"^Ray's logs: (\S+)", printed, re.M).group(1)
    assert Path(log).is_file()
    for label in ("teacher", "student-kd", "student-scratch"):
        assert re.search(
            rf"^\[{label}\] epoch 1/1  loss \S+ \(kd \S+ \+ ce \S+\)  val_acc \S+  \d+ samples/s", printed, re.M
        )
    assert re.search(rf"^\[softlabels\] {ROWS}/{ROWS} rows 100%", printed, re.M)
    assert re.search(rf"^\[evaluate\] {ROWS}/{ROWS} rows 100%", printed, re.M)
    summary = printed[printed.index("model  ") :]
    assert all(f"lenet5 {r}" in summary for r in ("distilled", "scratch")) and "resnet9 teacher" in summary
    points = r"[+-]\d+\.\d\d"
    gain = rf"{points} points \(95% CI {points} to {points}, paired, [\d,]+ rows; one seed each \(seed 0\)\)"
    assert re.search(rf"^distilled student vs from scratch: {gain}$", summary, re.M)
    # the students train side by side: either may end first
    students = r"student-kd \S+, student-scratch \S+|student-scratch \S+, student-kd \S+"
    stages = rf"^stages: teacher \S+, softlabels \S+, ({students}), evaluate \S+; \S+ in all$"
    assert re.search(stages, summary, re.M)
    report = Path(lines[-1].removeprefix("report: "))
    assert report.name == "report.html" and 'alt="training_curves.png"' in report.read_text()
    assert (report.parent / "training_curves.png").read_bytes().startswith(b"\x89PNG")


def test_store_listing_and_tensorboard_curves(run, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distkd.cli import main

    _, store, out, _ = run
    assert main(["store", "ls", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    reports = [r for r in listed if r["kind"] == "report"]  # and one of the evaluation job's, if it ran first
    assert sorted(r["kind"] for r in listed if r not in reports) == ["run", "run", "softlabels", "teacher"]
    (report,) = (r for r in reports if r["name"] == Path(out["report"]).name)
    assert report["job"] == "tiny" and set(report["accuracy"]) == {"teacher", "distilled", "scratch"}
    assert main(["store", "ls", "--store", str(store)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["kind", "name", "job", "what"] and len(table) == 1 + len(listed)

    kd_run = Path(out["distilled"]).parent
    events = EventAccumulator(str(kd_run / "tensorboard")).Reload()
    assert {"loss", "kd", "ce", "val_accuracy"} <= set(events.Tags()["scalars"])
    history = storage.read_json(str(kd_run / "history.json"))
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([h["loss"] for h in history], rel=1e-6)
