"""Gradient-boosted teachers (models/boosters.py): LightGBM and XGBoost boosters trained here on a slice of adult,
read back from their files as distkd models. Their logits are the boosters' own raw scores on the raw columns
(nulls and categories never seen in training included), binary and multiclass; a booster the job cannot feed, or
a missing extra, is refused by ``distkd plan`` before Ray."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from distkd import config
from distkd.cli import main
from distkd.job import Job
from distkd.models import load_weights, sources
from distkd.models.columns import ColumnModel, model_input
from tests.boosters import ADULT, CATEGORICAL, FEATURES, NUMERIC, frame, margins, rows, train
from tests.unit.test_job_refusals import refused

KINDS = ["lightgbm", "xgboost"]
COLUMNS = CATEGORICAL + NUMERIC
ROWS = 300


def as_read(table: pa.Table) -> dict[str, np.ndarray]:
    """A table's columns as a teacher actor and an evaluator get them (NumPy, nulls as None or NaN)."""
    return {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}


def with_gaps(table: pa.Table) -> pa.Table:
    """``table`` with nulls in categorical and numeric columns, and categories no training row has (in the columns
    every booster here splits on)."""
    changed = {"age": [None if i % 7 == 0 else v for i, v in enumerate(table["age"].to_pylist())]}
    for column in ("workclass", "marital_status", "relationship"):
        changed[column] = [None, "Never-seen", *table[column].to_pylist()[2:]]
    for column, values in changed.items():
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pa.array(values, table.schema.field(column).type))
    return table


@pytest.mark.parametrize("kind", KINDS)
def test_a_boosters_logits_are_its_raw_margins_on_the_raw_columns(tmp_path, kind):
    training = rows("train", ROWS)
    path = train(kind, tmp_path, training, training["label"].to_numpy(), COLUMNS)
    model = sources.build(f"{kind}:{path}", 2, 1, 1)
    assert isinstance(model, ColumnModel) and load_weights(model, str(path)) is model  # its file is its weights
    assert model.columns == tuple(COLUMNS) and set(model.numeric) == set(NUMERIC)
    test = with_gaps(rows("test", 200))
    logits = model(model_input(model, None, as_read(test), torch.device("cpu"))).numpy()
    categories = {c: frame(training, COLUMNS)[c].cat.categories for c in CATEGORICAL}
    expected = margins(kind, path, frame(test, COLUMNS, categories))
    assert logits.shape == (200, 2) and not logits[:, 0].any()  # [0, m]: the margin beside a fixed 0
    np.testing.assert_allclose(logits[:, 1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_multiclass_boosters_logits_are_its_per_class_margins(tmp_path, kind):
    training = rows("train", ROWS)
    labels = np.minimum(training["hours_per_week"].to_numpy() // 20, 2)  # 3 classes
    columns = [c for c in COLUMNS if c != "hours_per_week"]
    path = train(kind, tmp_path, training, labels, columns)
    model = sources.build(f"{kind}:{path}", 3, 1, 1)
    test = rows("test", 100)
    logits = model(as_read(test.select(columns))).numpy()
    categories = {c: frame(training, columns)[c].cat.categories for c in CATEGORICAL}
    expected = margins(kind, path, frame(test, columns, categories))
    assert logits.shape == (100, 3)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def tabular_job(tmp_path, teacher: str, student: str = "tabular_mlp") -> str:
    train_cfg = {"epochs": 1, "batch_size": 50, "lr": 0.003, "augment": False}
    raw = {
        "name": "booster",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(ADULT), "limit": ROWS, "val_limit": 50, "features": FEATURES},
        "teacher": {"name": teacher},
        "student": {"name": student, "kwargs": {"dim": 2, "hidden": "4"}, "train": train_cfg},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def booster(tmp_path, kind: str, columns: list[str], classes: int = 2) -> str:
    training = rows("train", ROWS)
    labels = training["label"].to_numpy() if classes == 2 else training["age"].to_numpy() % classes
    return f"{kind}:{train(kind, tmp_path, training, labels, columns)}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_booster_the_job_can_feed_is_planned(tmp_path, capsys, ray_watch, kind):
    assert main(["plan", tabular_job(tmp_path, booster(tmp_path, kind, COLUMNS))]) == 0, capsys.readouterr()
    assert "train_teacher" not in capsys.readouterr().out  # a booster is trained already: no stage 0
    assert not ray_watch.joined()


def test_a_booster_named_by_a_relative_path_loads_as_its_own_weights(tmp_path, monkeypatch):
    """The job's teacher file relative to where distkd runs: the weights the actors load are the booster's own file,
    not a state_dict to unpickle (as they were before the path was made absolute there too)."""
    path = booster(tmp_path, "lightgbm", COLUMNS).removeprefix("lightgbm:")
    monkeypatch.chdir(tmp_path)
    job = Job.prepare(config.load(tabular_job(tmp_path, f"lightgbm:{Path(path).name}")))
    assert job.teacher_run() is None and job.teacher_weights_uri() == path
    model = job.softlabel_spec(job.teacher_weights_uri()).teacher.load()
    assert isinstance(model, ColumnModel) and model.weights_uri == path


@pytest.mark.parametrize("kind", KINDS)
def test_a_booster_over_other_columns_is_refused_naming_them(tmp_path, capsys, ray_watch, kind):
    path = tabular_job(tmp_path, booster(tmp_path, kind, [*COLUMNS, "race", "native_country"]))
    printed = refused(["plan", path], capsys, ray_watch)
    assert "key 'teacher.name': the model reads columns that are not input columns of the data: race, " in printed
    assert "native_country" in printed and path in printed


@pytest.mark.parametrize("kind", KINDS)
def test_a_booster_for_another_class_count_is_refused(tmp_path, capsys, ray_watch, kind):
    printed = refused(["plan", tabular_job(tmp_path, booster(tmp_path, kind, COLUMNS, classes=3))], capsys, ray_watch)
    assert "key 'teacher.name': " in printed and ": a booster for 3 classes; the data has 2" in printed


def test_a_booster_is_no_student(tmp_path, capsys, ray_watch):
    name = booster(tmp_path, "lightgbm", COLUMNS)
    printed = refused(["plan", tabular_job(tmp_path, name, student=name)], capsys, ray_watch)
    assert "key 'student.name'" in printed and "inference only" in printed


def test_a_file_that_is_no_booster_is_refused(tmp_path, capsys, ray_watch):
    (tmp_path / "model.txt").write_text("not a model\n")
    printed = refused(["plan", tabular_job(tmp_path, f"lightgbm:{tmp_path / 'model.txt'}")], capsys, ray_watch)
    assert f"{tmp_path / 'model.txt'}: not a lightgbm model file (save_model): " in printed


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_extra_is_named_with_its_install_command(tmp_path, capsys, ray_watch, monkeypatch, kind):
    name = booster(tmp_path, kind, COLUMNS)
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == kind else found(module, *a))
    printed = refused(["plan", tabular_job(tmp_path, name)], capsys, ray_watch)
    assert f"key 'teacher.name': needs the '{kind}' package: pip install 'distkd[{kind}]'" in printed
