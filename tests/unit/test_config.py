"""Bad job files fail before Ray starts, with a message that names the file, the key and the problem."""

from pathlib import Path

import pytest
import yaml

from distkd import cluster, config
from distkd.cli import main
from distkd.job import Job


def write_job(tmp_path: Path, cifar10: Path, **changes) -> Path:
    job = {
        "name": "bad",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"batch_size": 50}},
        "student": {"name": "lenet5", "train": {"batch_size": 50, "augment": False}},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = job
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"epochs": 3}, "unknown key 'epochs'"),
        ({"teacher__train": {"epochs": "ten"}}, "key 'teacher.train.epochs'"),
        ({"teacher__train": {"lr": -1.0}}, "key 'teacher.train.lr'"),
        ({"student__name": "lenet6"}, "key 'student.name': unknown model 'lenet6'"),
        (
            {"data__uri": "/nonexistent/cifar"},
            "key 'data.uri': /nonexistent/cifar: no Parquet shards for split 'train'",
        ),
        ({"data__train_split": "training"}, "no Parquet shards for split 'training'"),
        ({"teacher__weights": "/nonexistent/teacher.pt"}, "key 'teacher.weights': /nonexistent/teacher.pt: not found"),
        ({"teacher__kwargs": {"depth": 3}}, "key 'teacher.kwargs': cannot build 'resnet9'"),
        ({"data__class_names": ["a", "b"]}, "key 'data.class_names': 2 names for 10 classes"),
        ({"stages": ["distil"]}, "key 'stages.0'"),
        ({"stages": []}, "key 'stages': List should have at least 1 item"),
        ({"data__std": [0.25, 0.0, 0.25]}, "key 'data.std': needs positive numbers"),
        ({"data__std": [0.25, -0.1, 0.25]}, "key 'data.std': needs positive numbers"),
        ({"data__std": [0.25, float("inf"), 0.25]}, "key 'data.std': needs finite numbers"),
        ({"data__mean": [0.5, float("nan"), 0.5]}, "key 'data.mean': needs finite numbers"),
        ({"data__channels": 2}, "key 'data.channels'"),
        (
            {"teacher__train": {"optimizer": {"kwargs": {"momentum": 1.0}}}},
            "key 'teacher.train.optimizer': sgd refuses {'momentum': 1.0}: momentum must be in [0, 1), got 1.0",
        ),
        ({"student__train": {"momentum": 0.5, "augment": False}}, "unknown key 'student.train.momentum'"),
        (
            {"student__train": {"optimizer": {"name": "adam"}, "augment": False}},
            "key 'student.train.optimizer': unknown optimizer 'adam'; known: adamw, sgd",
        ),
        (
            {"teacher__train": {"schedule": {"name": "cosine", "kwargs": {"warmup": 0.1, "floor": 0.0, "gamma": 2}}}},
            "key 'teacher.train.schedule': unknown argument(s) gamma; cosine takes warmup, floor",
        ),
        (
            {"distill__loss": {"name": "dkd", "kwargs": {"beta": 8}}},
            "unknown argument(s) beta; dkd takes target_weight",
        ),
        ({"softlabels__top_k": 3}, "key 'softlabels.top_k': only used with 'softlabels.format: topk'"),
        ({"distill__alpha": 0.0, "softlabels__views": 2}, "key 'softlabels.views': views are soft labels for"),
        ({"student__train": {"batch_size": 50}}, "key 'student.train.augment': the distilled student would train"),
        (
            {"softlabels__format": "topk", "softlabels__temperature": 2.0},
            "key 'softlabels.temperature': removed: top-k labels are stored at 'distill.temperature', the one "
            "temperature of a job; remove this key and write 'distill.temperature: 2.0' instead",
        ),
        # Checks against the data (100 rows of CIFAR-10: 10 classes, 3x32x32).
        ({"softlabels__format": "topk", "softlabels__top_k": 20}, "key 'softlabels.top_k': 20 is more than the 10"),
        (
            {"student__train": {"batch_size": 101, "augment": False}},
            "key 'student.train.batch_size': 100 training rows over 1 worker(s) ('resources.num_workers') give 100 "
            "per worker, fewer than the batch size 101",
        ),
        ({"resources__num_workers": 3}, "key 'teacher.train.batch_size': 100 training rows over 3 worker(s)"),
        ({"data__num_classes": 5}, "label 5 is outside [0, 5)"),
        (
            {"teacher__kwargs": {"width": 0}},
            "keys 'teacher.name', 'teacher.kwargs': the model fails on a batch of the data's shape [3, 32, 32]",
        ),
        ({"data__mean": [0.5], "data__std": [0.25]}, "keys 'data.mean' and 'data.std' need 3 values"),
    ],
)
def test_bad_job_file_names_the_problem(tmp_path, cifar10, capsys, monkeypatch, change, expected):
    def no_cluster_work(*args, **kwargs):
        raise AssertionError("Ray was asked to start before the job file was checked")

    monkeypatch.setattr(cluster, "connect", no_cluster_work)
    path = write_job(tmp_path, cifar10, **change)
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert expected in err
    assert not (tmp_path / "store").exists()


def test_batch_sizes_are_checked_only_for_the_stages_that_train(tmp_path, cifar10):
    """A soft-label job on few rows is not refused for a training batch it will never take."""
    batches = {"teacher__train": {"batch_size": 101}, "student__train": {"batch_size": 101, "augment": False}}
    job = Job.prepare(config.load(write_job(tmp_path, cifar10, stages=["softlabels"], **batches)))
    assert job.config.stages == ["softlabels"]
    with pytest.raises(config.ConfigError, match="'student.train.batch_size': 100 training rows"):
        Job.prepare(config.load(write_job(tmp_path, cifar10, stages=["distill"], **batches)))


def test_missing_job_file_and_bad_yaml(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "nope.yaml")]) == 2
    assert "job file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    assert main(["softlabels", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_the_sample_jobs_pass_the_config_rules_and_the_quick_start_its_data_checks(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    for path in sorted(root.glob("jobs/*.yaml")):
        config.load(path)
    monkeypatch.chdir(root)  # the quick start's paths are relative to the repository root
    job = Job.prepare(config.load("jobs/quickstart.yaml"))
    assert (job.num_classes, job.student.input_shape) == (10, (3, 32, 32))


def test_the_config_is_a_pure_schema():
    """config.py imports no data, model, distill or evaluate module, not even inside a function or behind
    TYPE_CHECKING; and no input kind imports the checks (which import the input kinds)."""
    import ast

    package = Path(__file__).resolve().parents[2] / "distkd"

    def imported(module: str) -> set[str]:
        tree = ast.parse((package / module).read_text())
        names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        names |= {
            f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names
        }
        return names

    upward = ("distkd.data", "distkd.models", "distkd.distill", "distkd.evaluate")
    assert not [name for name in imported("config.py") if name.startswith(upward)]
    assert not [name for name in imported("data/inputs.py") if name.startswith("distkd.checks")]
