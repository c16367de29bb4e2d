"""The tabular models: built by the job for its data's vocabularies, run on the kind's batch; ``import:`` models
get the same inputs; a tabular job's bad columns are refused by ``Job.prepare`` naming the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from distkd import config
from distkd.config import ConfigError
from distkd.job import Job
from distkd.models import MODELS
from tests.unit.test_tabular_inputs import write

ROWS = 64
MODEL = "import:mymodels:Net"
CODE = """
import torch


class Net(torch.nn.Module):
    def __init__(self, num_classes, cardinalities, numeric):
        super().__init__()
        self.given = (tuple(cardinalities), numeric)
        self.linear = torch.nn.Linear(len(cardinalities) + 2 * numeric, num_classes)

    def forward(self, x):
        return self.linear(x)
"""


def columns(n: int, offset: int = 0) -> dict:
    return {
        "color": pa.array([["red", "blue", "green", None][(i + offset) % 4] for i in range(n)]),
        "shop": pa.array([(i + offset) % 5 for i in range(n)], pa.int64()),
        "price": pa.array([None if i % 7 == 0 else float(i + offset) for i in range(n)]),
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write(tmp_path / "data", "train", columns(ROWS))
    write(tmp_path / "data", "test", columns(ROWS // 2, offset=3))
    return tmp_path / "data"


def job_config(data: Path, store: Path, teacher: str = "dcn_v2", **features) -> config.JobConfig:
    train = {"batch_size": 8, "augment": False}
    raw = {
        "name": "tabular",
        "store": str(store),
        "data": {"uri": str(data), "features": features or {"categorical": ["color", "shop"], "numeric": ["price"]}},
        "teacher": {
            "name": teacher,
            "kwargs": {"dim": 4, "hidden": "8"} if teacher == "dcn_v2" else {},
            "train": train,
        },
        "student": {"name": "tabular_mlp", "kwargs": {"dim": 2, "hidden": "4"}, "train": train},
    }
    return config.parse(raw, "job.yaml")


def batch_of(data: Path, job: Job, split: str = "test") -> torch.Tensor:
    table = job.evaluated.read_table(["id", *job.evaluated.input.columns, "label"]).to_pydict()
    prepared = job.inputs.prepare({k: np.array(v, dtype=object) for k, v in table.items()})
    return job.inputs.model_input({"features": torch.from_numpy(prepared["features"])}, torch.device("cpu"))


@pytest.mark.parametrize("name", ["dcn_v2", "tabular_mlp", "tabular_wide"])
def test_each_model_is_built_for_the_vocabularies_and_runs_on_the_kinds_batch(
    data: Path, tmp_path: Path, name: str
) -> None:
    job = Job.prepare(job_config(data, tmp_path / "store", teacher=name))
    model = job.teacher.build()
    assert job.teacher.kwargs["cardinalities"] == (4, 6) and job.teacher.kwargs["numeric"] == 1
    x = batch_of(data, job)
    assert x.shape == (ROWS // 2, 4) and model(x).shape == (ROWS // 2, 2)
    loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long))
    loss.backward()  # every parameter the batch reaches trains
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name, additive", [("tabular_wide", True), ("tabular_mlp", False)])
def test_the_wide_model_is_logistic_regression(name: str, additive: bool) -> None:
    """Each column adds its own term to the logits, with no interaction: swapping one column's value changes them
    by the same amount whatever the other column holds (an MLP's hidden layer makes them interact)."""
    torch.manual_seed(0)
    model = MODELS[name](num_classes=2, cardinalities=(3, 4), numeric=1).eval()
    rows = [[a, b, 0.5, 0.0] for a in (1, 2) for b in (1, 3)]  # (a, b) in (1, 1), (1, 3), (2, 1), (2, 3)
    z = model(torch.tensor(rows))
    interaction = (z[0] - z[1]) - (z[2] - z[3])
    assert torch.allclose(interaction, torch.zeros(2), atol=1e-6) == additive
    assert not torch.allclose(z[0], z[3])  # the columns do count


def test_an_import_model_gets_the_same_inputs(data: Path, tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(CODE)
    raw = job_config(data, tmp_path / "store").model_dump()
    raw["student"] = {**raw["student"], "name": MODEL, "kwargs": {}}
    job = Job.prepare(config.parse({**raw, "code": [str(tmp_path / "mymodels.py")]}, "job.yaml"))
    assert job.student.build().given == ((4, 6), 1)


def test_a_tabular_jobs_bad_columns_are_refused_naming_them(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(ConfigError, match=r"job.yaml: key 'data.uri': .*missing column\(s\) \['size'\]"):
        Job.prepare(job_config(data, store, categorical=["color"], numeric=["size"]), "job.yaml")
    with pytest.raises(ConfigError, match="job.yaml: key 'data.features.numeric': .*column 'color' holds string"):
        Job.prepare(job_config(data, store, categorical=["shop"], numeric=["color"]), "job.yaml")
    write(tmp_path / "nulls", "train", {**columns(ROWS), "color": pa.array([None] * ROWS, pa.string())})
    write(tmp_path / "nulls", "test", columns(ROWS))
    with pytest.raises(ConfigError, match="job.yaml: key 'data.features': categorical column 'color' is null"):
        Job.prepare(job_config(tmp_path / "nulls", store, categorical=["color"], numeric=["price"]), "job.yaml")
