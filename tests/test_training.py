"""The training loop's schedule, its split of the data among Ray Train workers, and its restarts."""

from __future__ import annotations

import signal
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest
import ray.data
import ray.train
import torch

from distkd import config, storage
from distkd.data.source import Split
from distkd.distill import streaming
from distkd.distill.stage import decoded, in_memory
from distkd.distill.train import Diverged, TrainSpec, fit, lr_schedule, steps_per_epoch
from distkd.job import Job

ROWS = 200


@pytest.fixture(scope="module")
def data(ray_cluster, cifar10) -> tuple[Job, ray.data.Dataset, ray.data.Dataset]:
    """The first ROWS training rows (with their ids) and validation rows, in the object store."""
    raw = {
        "name": "train",
        "store": "unused",
        "data": {"uri": str(cifar10), "limit": ROWS, "val_limit": 100},
        "teacher": {"name": "lenet5"},
        "student": {"name": "lenet5", "train": {"augment": False}},
    }
    job = Job.prepare(config.parse(raw, "<train>"))
    shape = job.student.input_shape
    return (
        job,
        in_memory(decoded(job.train, shape), ["id", "image", "label"]),
        in_memory(decoded(job.val, shape), ["image", "label"]),
    )


def train(data, run: Path, epochs: int = 2, lr: float = 0.05, streamed: int = 0, **resources) -> list[dict]:
    """``streamed``: train on that many rows read as a stream (each worker its own share), else on ROWS in memory."""
    job, rows, val = data
    if streamed:
        split = Split.open(job.config.data.uri, "train", limit=streamed)
        # in 8 blocks, so that both workers get some (the stream's blocks are a unit's rows: one here)
        rows = streaming.stream(split, ["id", "image", "label"], job.student.input_shape).repartition(8)
    settings = config.TrainConfig(epochs=epochs, batch_size=32, lr=lr, augment=False)
    spec = TrainSpec(
        label="student",
        model=job.student,
        train=settings,
        normalize=job.normalize,
        steps_per_epoch=steps_per_epoch(streamed or ROWS, settings.batch_size),
        split=bool(streamed),
    )
    return fit(spec, rows, val, str(run), config.ResourcesConfig(**resources))


def test_learning_rate_warms_up_then_decays_per_step():
    spec = TrainSpec(
        label="x", model=None, train=config.TrainConfig(epochs=2, lr=0.1), normalize=None, steps_per_epoch=5
    )
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=spec.train.lr)
    scheduler = lr_schedule(optimizer, spec)
    rates = []
    for _ in range(11):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # 10 steps: warm-up over the first 20 %, then linear decay to zero, floored at 1 % of lr
    expected = [0.001, 0.05, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125, 0.001]
    assert rates == pytest.approx(expected)
    resumed = lr_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), spec)
    partial = lr_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), spec)
    for _ in range(4):
        partial.optimizer.step()
        partial.step()
    resumed.load_state_dict(partial.state_dict())
    assert resumed.get_last_lr()[0] == pytest.approx(expected[4])


def test_two_workers_train_on_every_id_once_and_follow_one_worker(data, tmp_path):
    curves = {}
    # streamed: each worker reads its own share of an odd row count, which Ray Train's equal split would
    # cut short by a row; half a CPU per worker leaves one for the read tasks
    for workers, streamed in ((1, 0), (2, 0), (2, ROWS - 1)):
        rows = streamed or ROWS
        ids = Split.open(data[0].config.data.uri, "train", limit=rows).read_table(["id"])["id"].to_pylist()
        checksum = sum(zlib.crc32(i.encode()) for i in ids)
        resources = {"num_workers": workers, **({"cpus_per_worker": 0.5} if streamed else {})}
        history = train(data, tmp_path / f"w{workers}-{streamed}", streamed=streamed, **resources)
        assert [e["epoch"] for e in history] == [1, 2]
        for epoch in history:
            assert epoch["samples"] == rows and epoch["id_checksum"] == checksum
            assert len(epoch["workers"]) == workers and sum(w["samples"] for w in epoch["workers"]) == rows
            assert all(w["samples"] > 0 for w in epoch["workers"])
        if not streamed:
            curves[workers] = [e["loss"] for e in history]
    # the same global batches, learning rate and schedule: the same curve up to float summation order
    assert curves[2] == pytest.approx(curves[1], rel=1e-3)


def test_killed_training_worker_resumes_from_the_latest_checkpoint(data, tmp_path):
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            # a checkpoint Ray Train has registered (its manager's snapshot lists it), not one being written
            if (tmp_path / "run" / "checkpoint_manager_snapshot.json").exists():
                for proc in psutil.Process().children(recursive=True):
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint)
    killer.start()
    history = train(data, tmp_path / "run", epochs=5, max_failures=1)
    killer.join()
    assert killed, "training finished before a worker could be killed"
    assert [e["epoch"] for e in history] == [1, 2, 3, 4, 5]
    assert history[0]["started_from"] == 0 and history[-1]["started_from"] > 0  # resumed, not from scratch


def test_diverging_loss_stops_the_run_with_a_message_and_commits_nothing(data, tmp_path):
    with pytest.raises(Diverged, match=r"student: the training loss became (nan|inf) in epoch 1 \(lr 1000000.0"):
        train(data, tmp_path / "run", epochs=3, lr=1e6)
    assert not storage.is_committed(str(tmp_path / "run"))
    assert not (tmp_path / "run" / "model.pt").exists()


def test_elastic_worker_range_reaches_ray_train_as_a_range():
    elastic = config.ResourcesConfig(num_workers=[1, 2])
    assert elastic.workers == (1, 2) and elastic.max_workers == 2
    assert ray.train.ScalingConfig(num_workers=elastic.workers).elasticity_enabled
    assert config.ResourcesConfig(num_workers=3).workers == 3
    for bad in ([2, 1], [0, 1], [1, 2, 3], 0):
        with pytest.raises(ValueError, match="num_workers"):
            config.ResourcesConfig(num_workers=bad)
