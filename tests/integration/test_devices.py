"""Ray tasks and actors run on the GPUs Ray assigned them, never on one they merely see (issue 16, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from distkd import devices
from distkd.data.inputs import ImageInput
from distkd.data.transforms import Normalize
from distkd.evaluate.stage import Evaluator, model_costs
from distkd.labels.formats import Format
from distkd.models import weights_hash
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import ModelSpec, Weights


@pytest.fixture
def gpus_visible(monkeypatch):
    """A worker that sees GPUs (as every Ray 2.60 worker on a GPU node does) and is assigned ``ids``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def assign(ids: list[str] | None, visible: str | None = None) -> None:
        monkeypatch.setattr(devices, "assigned_gpus", lambda: ids)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    return assign


def test_a_worker_assigned_no_gpu_runs_on_the_cpu_though_it_sees_gpus(gpus_visible):
    gpus_visible([], visible="0,1,2,3")  # Ray 2.60 leaves the node's list to a worker that asked for no GPU
    assert devices.device() == torch.device("cpu")


@pytest.mark.parametrize(
    ("ids", "visible", "expected"),
    [
        (["3"], "3", 0),  # what Ray sets: CUDA_VISIBLE_DEVICES is the assigned ids, so local index 0
        (["2", "5"], "2,5", 0),
        (["2"], "0,1,2,3", 2),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the node's list is kept
        (["1"], None, 1),
    ],
)
def test_a_worker_assigned_a_gpu_runs_on_it_by_its_local_index(gpus_visible, ids, visible, expected):
    gpus_visible(ids, visible)
    assert devices.device() == torch.device("cuda", expected)


def test_outside_a_ray_worker_any_gpu_is_used(gpus_visible):
    assert devices.assigned_gpus() is None  # this test process is no Ray worker
    gpus_visible(None)
    assert devices.device() == torch.device("cuda")


def test_teacher_evaluator_and_cost_task_take_the_device_ray_assigned(gpus_visible, tmp_path):
    """With no GPU assigned and GPUs visible, each stays on the CPU (picking cuda would fail here: no GPU)."""
    gpus_visible([], visible="0")
    model = ModelSpec("lenet5", {}, 10, (3, 32, 32))
    path = tmp_path / "lenet5.pt"
    torch.save(model.build().state_dict(), path)
    weights = Weights(model, str(path), weights_hash(str(path)))
    inputs, models = ImageInput("image", (3, 32, 32), Normalize((0.5,) * 3, (0.25,) * 3)), {"student": weights}
    batch = {"id": np.array(["a", "b"]), "image": np.zeros((2, 3, 32, 32), np.uint8), "label": np.array([0, 1])}
    teacher, evaluator = TeacherPredictor(weights, inputs, Format("dense", "float16")), Evaluator(models, inputs)
    assert teacher.device == evaluator.device == torch.device("cpu")
    assert len(teacher(batch)) == 2 and evaluator(batch)["m0_confusion"].sum() == 2  # models loaded, on the CPU
    costs = model_costs(models, inputs, threads=1)
    assert costs["student"]["cost"]["device"] == "cpu" and "cost_gpu" not in costs["student"]


def test_a_ray_task_that_asked_for_no_gpu_is_assigned_none(ray_cluster):
    @ray.remote(num_gpus=0)
    def probe() -> tuple[list[str] | None, str]:
        return devices.assigned_gpus(), str(devices.device())

    assert ray.get(probe.remote()) == ([], "cpu")
