"""A plug-in is one module and one registry line (issue 29, item 6). Each plug-in here is declared in this module
and nowhere else, registered for its tests alone, with no edit to config, checks or a stage: a toy ``vector`` input
kind (a fixed-length list<float32> column fed to an MLP) runs through ``Job.prepare``, ``distkd plan`` and a batch
through ``prepare``, and its settings are refused by their own key before Ray; a model source, a KD loss, an
optimiser and a schedule are picked by the job file's names and their bad arguments refused by their keys."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from pydantic import Field

from distkd import config
from distkd.cli import main
from distkd.config import ConfigError, DataConfig, Strict
from distkd.data import inputs
from distkd.data.kinds import Kind, OneColumn
from distkd.data.source import Split
from distkd.job import Job
from distkd.methods import losses, optim
from distkd.models import sources

LENGTH, ROWS = 4, 32
MLP = """
import torch


class MLP(torch.nn.Sequential):
    def __init__(self, num_classes, length, hidden=8):
        super().__init__(torch.nn.Linear(length, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))
"""


class VectorConfig(Strict):
    """``data.vector``: the length every row's vector has."""

    length: int = Field(gt=0)


@dataclass(frozen=True)
class VectorInput:
    """Rows of ``length`` float32 numbers, fed to the model as they are."""

    name: ClassVar[str] = "vector"
    columns: ClassVar[tuple[str, ...]] = ("vector",)
    augments: ClassVar[bool] = False
    identity_key: ClassVar[str] = "inputs"
    column: str
    length: int

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    def prepare(self, batch: dict[str, np.ndarray], pool: Executor | None = None) -> dict[str, np.ndarray]:
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in batch[self.column]])
        return {"id": batch["id"], "vector": vectors, "label": batch["label"]}

    def on_device(self, batch: dict[str, np.ndarray], device: torch.device, pool: Executor) -> dict[str, torch.Tensor]:
        return {"vector": torch.from_numpy(self.prepare(batch)["vector"]).to(device)}

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return batch["vector"].to(device).float()

    def example(self, rows: int) -> dict[str, torch.Tensor]:
        return {"vector": torch.zeros(rows, self.length)}

    def row_bytes(self) -> int:
        return 4 * self.length

    def model_kwargs(self) -> dict:
        return {"length": self.length}

    def identity(self) -> dict:
        return {"length": self.length}

    def pending(self) -> tuple[str, str] | None:
        return None

    def ready(self) -> None:
        pass

    def check(self, split: Split) -> None:
        pass


def vector_input(split: Split, data: DataConfig, settings: VectorConfig | None, store: str) -> VectorInput:
    (column,) = split.input.columns
    held = pq.read_schema(split.files[0]).field(column).type.list_size
    if settings is None or settings.length != held:
        raise ConfigError(f"key 'data.vector.length': column '{column}' holds vectors of {held} numbers")
    return VectorInput(column, settings.length)


def float32_vectors(kind: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32()


VECTOR = Kind(
    OneColumn((float32_vectors,)), vector_input, "float32 vectors", column="vector", settings=("vector", VectorConfig)
)


@pytest.fixture(autouse=True)
def vector_kind(monkeypatch):
    """The kind's one registry line, ``INPUTS.register("vector")(VECTOR)``, for this module's tests alone (other
    tests' messages list the known kinds)."""
    monkeypatch.setitem(inputs.INPUTS._entries, "vector", VECTOR)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two splits of ``ROWS`` vectors of ``LENGTH`` float32 numbers, and the MLP's code."""
    for split, seed in (("train", 0), ("test", 1)):
        values = np.random.default_rng(seed).normal(size=(ROWS, LENGTH)).astype(np.float32)
        table = pa.table(
            {
                "id": [f"{split}/{i}" for i in range(ROWS)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), LENGTH),
                "label": pa.array([i % 3 for i in range(ROWS)], pa.int64()),
            }
        )
        pq.write_table(table, tmp_path / f"{split}-0.parquet")
    (tmp_path / "mlp.py").write_text(MLP)
    return tmp_path


def job_file(folder: Path, **settings) -> Path:
    """A job on ``folder``'s vectors, ``settings`` beside ``data.uri``."""
    train = {"batch_size": 8, "augment": False, "epochs": 1}
    job = {
        "name": "vectors",
        "store": str(folder / "store"),
        "code": [str(folder / "mlp.py")],
        "data": {"uri": str(folder), **settings},
        "teacher": {"name": "import:mlp:MLP", "kwargs": {"hidden": 16}, "train": dict(train)},
        "student": {"name": "import:mlp:MLP", "train": dict(train)},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_kind_declared_in_its_own_module_runs_through_prepare_plan_and_a_batch(folder, capsys, ray_watch):
    path = job_file(folder, vector={"length": LENGTH})
    job = Job.prepare(config.load(path), str(path))
    assert job.train.input.kind == "vector" and isinstance(job.inputs, VectorInput) and job.inputs.shape == (LENGTH,)
    assert job.train.identity()["input_column"] == "vector" and job.student.input_shape == (LENGTH,)
    (unit,) = job.train.units(ROWS)
    rows = unit.read().to_pydict()
    prepared = job.inputs.prepare({k: np.array(v, dtype=object) for k, v in rows.items()})
    assert prepared["vector"].shape == (ROWS, LENGTH) and prepared["vector"].dtype == np.float32
    x = job.inputs.model_input({"vector": torch.from_numpy(prepared["vector"])}, torch.device("cpu"))
    assert job.student.build()(x).shape == (ROWS, 3)

    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "runs/teacher-" in out and "runs/student-scratch-" in out
    assert not ray_watch.joined(), ray_watch.joins


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"vector": {"length": 0}}, "key 'data.vector.length': Input should be greater than 0 (got 0)"),
        ({"vector": {"length": 4, "width": 2}}, "unknown key 'data.vector.width'"),
        ({"vector": {"length": 3}}, "key 'data.vector.length': column 'vector' holds vectors of 4 numbers"),
        (
            {"vectors": {"length": 4}},
            "unknown key 'data.vectors' (the input kinds' settings are 'data.blocks', 'data.features', ",
        ),
    ],
    ids=["schema", "unknown-setting", "kind's-own-check", "unknown-kind-key"],
)
def test_a_bad_setting_of_the_kind_is_refused_naming_its_key_before_ray(folder, capsys, ray_watch, settings, expected):
    path = job_file(folder, **settings)
    assert main(["plan", str(path)]) == 2
    out, err = capsys.readouterr()
    assert f"{path}: " in out + err and expected in out + err and "Traceback" not in out + err
    assert not ray_watch.joined(), ray_watch.joins
    assert not (folder / "store").exists()


# --- the other plug-ins: a model source, a KD loss, an optimiser and a schedule, each with one argument


def linear_source(rest: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict, code: tuple):
    return torch.nn.Linear(kwargs["length"], num_classes)


def linear_check(rest: str, code: tuple) -> None:
    if rest != "linear":
        raise sources.SourceError(f"the toy source builds 'linear' alone, not '{rest}'")


def squared_loss(student, targets, labels, temperature, weight: float = 1.0) -> torch.Tensor:
    if weight < 0:
        raise ValueError("weight must not be negative")
    return weight * (student - targets.logits).pow(2).mean()


def plain_sgd(params, lr: float, weight_decay: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def linear_decay(progress: float, floor: float = 0.0) -> float:
    if not 0 <= floor <= 1:
        raise ValueError("floor is a fraction of train.lr, in [0, 1]")
    return max(floor, 1 - progress)


@pytest.fixture
def methods(monkeypatch):
    """Each plug-in's one registry line, for this module's tests alone."""
    monkeypatch.setitem(sources.SOURCES._entries, "toy", sources.Source(linear_source, linear_check))
    monkeypatch.setitem(losses.LOSSES._entries, "squared", squared_loss)
    monkeypatch.setitem(optim.OPTIMIZERS._entries, "plain_sgd", plain_sgd)
    monkeypatch.setitem(optim.SCHEDULES._entries, "linear_decay", linear_decay)


def picking(folder: Path, **changes) -> Path:
    """A job of the vector kind whose teacher is the toy source's and whose student trains with the toy loss,
    optimiser and schedule; ``changes``: dotted keys set."""
    path = job_file(folder, vector={"length": LENGTH})
    raw = yaml.safe_load(path.read_text())
    raw["teacher"] = {**raw["teacher"], "name": "toy:linear", "kwargs": {}}
    raw["student"]["train"] |= {
        "optimizer": {"name": "plain_sgd", "kwargs": {"momentum": 0.5}},
        "schedule": {"name": "linear_decay", "kwargs": {"floor": 0.1}},
    }
    raw["distill"] = {"loss": {"name": "squared", "kwargs": {"weight": 2.0}}}
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_source_loss_optimiser_and_schedule_are_picked_by_name(folder, methods, capsys, ray_watch):
    path = picking(folder)
    job = Job.prepare(config.load(path), str(path))
    teacher, student = job.teacher.build(), job.student.build()
    assert isinstance(teacher, torch.nn.Linear) and teacher.in_features == LENGTH
    train = job.config.student.train
    opt = optim.optimizer(student, train)  # as the training loop looks them up
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    schedule = optim.RowSchedule(opt, train, rows_per_epoch=ROWS)
    schedule.step(ROWS)  # every row of the only epoch: the floor
    assert schedule.lr == pytest.approx(0.1 * train.lr)
    loss = job.config.distill.loss
    x, labels = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    kd = losses.objective(loss.name, x, losses.Targets(logits=torch.zeros(2, 3)), labels, 1.0, 1.0, **loss.kwargs)
    assert kd.item() == pytest.approx(2.0)  # weight 2 x mean squared difference 1
    assert main(["plan", str(path)]) == 0, capsys.readouterr()
    assert not ray_watch.joined(), ray_watch.joins


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"teacher.name": "toy:conv"}, "key 'teacher.name': the toy source builds 'linear' alone, not 'conv'"),
        ({"distill.loss.kwargs": {"weight": -1.0}}, "key 'distill.loss': squared refuses {'weight': -1.0}"),
        ({"distill.loss.kwargs": {"scale": 1.0}}, "key 'distill.loss': unknown argument(s) scale; squared takes"),
        (
            {"student.train.optimizer.kwargs": {"momentum": -1.0}},
            "key 'student.train.optimizer': plain_sgd refuses {'momentum': -1.0}",
        ),
        ({"student.train.schedule.kwargs": {"floor": 2.0}}, "key 'student.train.schedule': linear_decay refuses"),
    ],
    ids=["source", "loss", "loss-argument", "optimiser", "schedule"],
)
def test_their_bad_arguments_are_refused_naming_the_key_before_ray(
    folder, methods, capsys, ray_watch, changes, expected
):
    path = picking(folder, **changes)
    assert main(["plan", str(path)]) == 2
    out, err = capsys.readouterr()
    assert expected in out + err and "Traceback" not in out + err
    assert not ray_watch.joined(), ray_watch.joins


def test_a_source_of_files_says_so_in_its_entry(monkeypatch, tmp_path):
    """A source whose names are paths (``path=True``) has them made absolute for Ray workers and left out of the
    identity (its bytes' hash stands for them), with no list of such sources to edit."""
    monkeypatch.setitem(sources.SOURCES._entries, "toyfile", sources.Source(linear_source, linear_check, path=True))
    monkeypatch.chdir(tmp_path)
    assert sources.absolute("toyfile:models/m.bin") == f"toyfile:{tmp_path}/models/m.bin"
    assert sources.located(f"toyfile:{tmp_path}/models/m.bin") == "toyfile:"
    assert sources.located("toy:linear") == "toy:linear"  # an unregistered or non-path source keeps its name
