"""One path from the job file to the training loop: the config sections reach the workers unchanged, so every
setting's default is the one config.py (or its registry entry) declares, and nothing on the way re-declares it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from distkd import config
from distkd.distill.loop import Worker
from distkd.job import Job
from distkd.methods.losses import Targets, objective
from distkd.methods.optim import RowSchedule, optimizer
from distkd.specs import TrainingRun
from distkd.tasks import CLASSIFICATION


def prepared(cifar10: Path, tmp_path: Path) -> Job:
    raw = {
        "name": "path",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "weights": None, "train": {"batch_size": 50}},
        "student": {"name": "lenet5", "train": {"batch_size": 50, "augment": False}},
    }
    return Job.prepare(config.parse(raw, "<test>"))


def test_the_workers_read_the_job_files_own_config_objects(cifar10, tmp_path):
    job = prepared(cifar10, tmp_path)
    labels = job.softlabel_spec(str(tmp_path / "teacher.pt"), sha256=lambda uri: "0" * 64)
    for run, train in (
        (job.distilled_run(labels), job.config.student.train),
        (job.teacher_run(), job.config.teacher.train),
    ):
        assert run.train is train
        assert run.feed is job.config.data and run.resources is job.config.resources
        assert run.tracking is job.config.tracking
    assert job.distilled_run(labels).distill is job.config.distill
    assert job.scratch_run().distill is None


def test_nothing_between_the_config_and_the_loop_declares_a_setting_default():
    """A TrainingRun's fields with defaults are only the optional links to soft labels; a Worker has none."""
    defaulted = {
        f.name for cls in (TrainingRun, Worker) for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
    assert defaulted == {"distill", "softlabels", "views"}


def test_the_defaults_the_loop_uses_are_the_configs_and_its_entries():
    """The worker builds its optimiser, schedule and loss from the config's defaults alone: SGD with momentum 0.9
    and Nesterov (the sgd entry's own defaults), one-cycle warm-up over 20 % (one_cycle's), Hinton KD at
    alpha 0.9 and T 4 (DistillConfig's)."""
    train, distill = config.TrainConfig(), config.DistillConfig()
    model = torch.nn.Linear(4, 3)
    opt = optimizer(model, train)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and group["momentum"] == 0.9 and group["nesterov"]
    assert group["weight_decay"] == train.weight_decay == 5e-4
    schedule = RowSchedule(opt, train, rows_per_epoch=10)
    schedule.step(train.epochs * 10 // 5)  # a fifth of all rows: the end of one-cycle's warm-up
    assert schedule.lr == train.lr == 0.1
    logits, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    teacher = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    expected = objective("hinton", logits, Targets(logits=teacher), labels, 0.9, 4.0)
    assert CLASSIFICATION.loss(distill, logits, labels, Targets(logits=teacher), 0).item() == expected.item()


def test_a_kd_warm_up_names_another_run_and_no_warm_up_keeps_the_name(cifar10, tmp_path):
    job = prepared(cifar10, tmp_path)
    labels = job.softlabel_spec(str(tmp_path / "teacher.pt"), sha256=lambda uri: "0" * 64)
    plain = job.distilled_run(labels)
    assert "warmup_epochs" not in plain.identity()["kd"]  # runs from before the setting keep their names
    distill = job.config.distill.model_copy(update={"warmup_epochs": 2})
    warmed = dataclasses.replace(job, config=job.config.model_copy(update={"distill": distill}))
    assert warmed.distilled_run(labels).uri != plain.uri
    assert warmed.distilled_run(labels).identity()["kd"]["warmup_epochs"] == 2
