"""Bad job files fail before Ray starts, with a message that names the file, the key and the problem."""

from pathlib import Path

import pytest
import yaml

from distkd import pipeline
from distkd.cli import main


def write_job(tmp_path: Path, cifar10: Path, **changes) -> Path:
    job = {
        "name": "bad",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}},
        "student": {"name": "lenet5"},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = job
        for p in parents:
            node = node[p]
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
    ],
)
def test_bad_job_file_names_the_problem(tmp_path, cifar10, capsys, monkeypatch, change, expected):
    def no_cluster_work(*args, **kwargs):
        raise AssertionError("Ray was asked to start before the job file was checked")

    monkeypatch.setattr(pipeline, "connect", no_cluster_work)
    path = write_job(tmp_path, cifar10, **change)
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert expected in err
    assert not (tmp_path / "store").exists()


def test_missing_job_file_and_bad_yaml(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "nope.yaml")]) == 2
    assert "job file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    assert main(["softlabels", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
