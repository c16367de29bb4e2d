"""The training loop's schedule, its split of the data among Ray Train workers, and its restarts."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import ray.data
import ray.train

from distkd import config, storage
from distkd.data.source import Split
from distkd.distill import streaming
from distkd.distill.fit import Diverged, fit
from distkd.distill.loop import Worker
from distkd.distill.stage import decoded, in_memory
from distkd.job import Job
from distkd.methods.optim import SCHEDULES
from distkd.specs import ModelSpec

ROWS = 200
TWO_WORKERS = {"num_workers": 2, "max_failures": 0}  # a hang fails the run (``time_limit``) instead of restarting it
STREAMED_ROWS, STREAMED_LR = ROWS - 1, 0.05  # the streamed 2-worker run: an odd row count, its own learning rate


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
    return (
        job,
        in_memory(decoded(job.train, job.inputs), ["id", "image", "label"]),
        in_memory(decoded(job.val, job.inputs), ["image", "label"]),
    )


def train(
    data,
    run: Path,
    epochs: int = 2,
    lr: float = 0.05,
    streamed: int = 0,
    blocks: int = 8,
    model: ModelSpec | None = None,
    val_blocks: int | None = None,
    **resources,
) -> list[dict]:
    """Train the job's student in a store at ``run`` (its run folder under ``runs/``). ``streamed``: train on
    that many rows read as a stream in ``blocks`` blocks (each worker its own share), else on ROWS in memory;
    ``model``: instead of the job's LeNet-5; ``val_blocks``: the validation rows repartitioned so (one: a
    single worker gets them all)."""
    job, rows, val = data
    if streamed:
        split = dataclasses.replace(job.train, limit=streamed)
        # in 8 blocks by default, so that both workers get some (the stream's blocks are a unit's rows: one here)
        rows = streaming.stream(split, ["id", "image", "label"], job.inputs).repartition(blocks)
    if val_blocks:
        val = val.repartition(val_blocks).materialize()
        assert val.num_blocks() == val_blocks
    resources = config.ResourcesConfig(**resources)
    settings = config.TrainConfig(epochs=epochs, batch_size=32, lr=lr, augment=False)
    training = dataclasses.replace(
        job.scratch_run(),
        role="student",
        store=str(run),
        model=model or job.student,
        train=settings,
        resources=resources,
    )
    worker = Worker(rows_per_epoch=streamed or ROWS, split=bool(streamed), threads=1)
    return fit(training, worker, rows, val, resources)


def kill_training_workers() -> list[int]:
    """SIGKILLs this test process's Ray Train workers; their pids."""
    killed = []
    for proc in psutil.Process().children(recursive=True):
        if "RayTrainWorker" in " ".join(proc.cmdline()):
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)
    return killed


@contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Fails the test when ``what`` (a training run with ``max_failures=0``) takes longer than ``seconds``: its
    workers are then killed, which ends the run with an error (a signal in the driver, blocked in Ray, would
    leave the hung workers holding the session's CPUs)."""
    finished, killed = threading.Event(), []

    def watch() -> None:
        if not finished.wait(seconds):
            killed.extend(kill_training_workers())

    watchdog = threading.Thread(target=watch)
    watchdog.start()
    try:
        yield
    except Exception as error:
        if killed:
            raise AssertionError(f"{what} did not finish within {seconds} s (hung): its workers were killed") from error
        raise
    finally:
        finished.set()
        watchdog.join()


def every_id_once(history: list[dict], rows: int, workers: int, data) -> None:
    """Each epoch trained on each of the first ``rows`` ids exactly once, over ``workers`` workers."""
    ids = Split.open(data[0].config.data.uri, "train", limit=rows).read_table(["id"])["id"].to_pylist()
    checksum = sum(zlib.crc32(i.encode()) for i in ids)
    for epoch in history:
        assert epoch["samples"] == rows and epoch["id_checksum"] == checksum
        assert len(epoch["workers"]) == workers and sum(w["samples"] for w in epoch["workers"]) == rows


def test_two_workers_train_on_every_id_once_and_follow_one_worker(data, tmp_path):
    def run(workers: int) -> list[dict]:
        return train(data, tmp_path / f"w{workers}", num_workers=workers, cpus_per_worker=0.5)

    # the two runs at once, as the pipeline trains its two students: their 3 half-CPU workers fit the 2 CPUs
    with ThreadPoolExecutor(2) as pool:
        histories = dict(zip((1, 2), pool.map(run, (1, 2))))
    curves = {}
    for workers, history in histories.items():
        assert [e["epoch"] for e in history] == [1, 2]
        every_id_once(history, ROWS, workers, data)
        assert all(w["samples"] > 0 for e in history for w in e["workers"])
        curves[workers] = [e["loss"] for e in history]
    # the same global batches, learning rate and schedule: the same curve up to float summation order
    assert curves[2] == pytest.approx(curves[1], rel=1e-3)


def resnet9(data) -> ModelSpec:
    """A BatchNorm model: DDP broadcasts BatchNorm's buffers before each forward pass of the wrapped model, so
    validating with it hung the worker with the only validation block in that broadcast, the other in the
    accuracy's all-reduce."""
    return dataclasses.replace(data[0].student, name="resnet9", kwargs={"width": 4})


@pytest.fixture(scope="module")
def batchnorm_runs(data, tmp_path_factory) -> dict[str, list[dict] | Exception]:
    """The two 2-worker ResNet-9 runs of the next two tests, trained at once (each worker half a CPU: both runs'
    workers fit the session's 2 CPUs; the held run needs no read task once it trains, so the streamed run's reads
    wait for it at most): each run's history, or the error it raised. A hang in one kills both runs' workers."""
    runs = {
        "held": {"epochs": 1},
        # 3 blocks of 66-67 rows over 2 workers: shares of 2 blocks and 1 (or 3 and 0), so an epoch takes 9 (or 13)
        # steps of 16 rows a worker, not the 7 that equal shares would; a schedule on steps reached its floor
        # early. Each worker reads its own share of an odd row count, which Ray Train's equal split would cut short
        # by a row.
        "streamed": {"lr": STREAMED_LR, "streamed": STREAMED_ROWS, "blocks": 3},
    }

    def run(name: str) -> list[dict] | Exception:
        try:
            with time_limit(600, f"a {name} 2-worker ResNet-9 training"):
                return train(
                    data,
                    tmp_path_factory.mktemp(name),
                    model=resnet9(data),
                    val_blocks=1,
                    cpus_per_worker=0.5,
                    **runs[name],
                    **TWO_WORKERS,
                )
        except Exception as error:  # noqa: BLE001 - raised by the run's own test
            return error

    with ThreadPoolExecutor(len(runs)) as pool:
        return dict(zip(runs, pool.map(run, runs)))


def history_of(outcome: list[dict] | Exception) -> list[dict]:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def test_batchnorm_model_on_two_workers_finishes_with_validation_rows_on_one(data, batchnorm_runs):
    history = history_of(batchnorm_runs["held"])
    assert [e["epoch"] for e in history] == [1]
    every_id_once(history, ROWS, 2, data)
    assert all(w["samples"] > 0 for w in history[0]["workers"])


def test_streamed_batchnorm_model_on_uneven_shares_finishes_and_its_schedule_ends_with_the_last_row(
    data, batchnorm_runs
):
    history = history_of(batchnorm_runs["streamed"])
    assert all(len({w["samples"] for w in e["workers"]}) == 2 for e in history)  # unequal shares
    every_id_once(history, STREAMED_ROWS, 2, data)
    assert [e["lr"] for e in history] == pytest.approx(
        [STREAMED_LR * SCHEDULES["one_cycle"](0.5), STREAMED_LR * SCHEDULES["one_cycle"](1.0)]
    )


def test_killed_training_worker_resumes_from_the_latest_checkpoint(data, tmp_path):
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            # a checkpoint Ray Train has registered (its manager's snapshot lists it), not one being written
            if list((tmp_path / "run").glob("runs/*/checkpoint_manager_snapshot.json")):
                killed.extend(kill_training_workers())
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
    (folder,) = (tmp_path / "run" / "runs").glob("student-*")
    assert not storage.is_committed(str(folder))
    assert not (folder / "model.pt").exists()


def test_elastic_worker_range_reaches_ray_train_as_a_range():
    elastic = config.ResourcesConfig(num_workers=[1, 2])
    assert elastic.workers == (1, 2) and elastic.max_workers == 2
    assert ray.train.ScalingConfig(num_workers=elastic.workers).elasticity_enabled
    assert config.ResourcesConfig(num_workers=3).workers == 3
    for bad in ([2, 1], [0, 1], [1, 2, 3], 0):
        with pytest.raises(ValueError, match="num_workers"):
            config.ResourcesConfig(num_workers=bad)
