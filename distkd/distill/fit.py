"""The driver's side of a training run: ``fit`` runs the loop (``loop.py``) on N Ray Train workers (DDP),
checkpoints each epoch to ``<store>/runs/<run>/`` (a restarted worker group resumes from the latest), and
commits the final ``model.pt`` there."""

from __future__ import annotations

import io
import math
import os

import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from distkd import storage
from distkd.config import ResourcesConfig
from distkd.distill import streaming
from distkd.distill.loop import CHECKPOINT_FILE, Worker, train_loop
from distkd.distill.split import UnequalSplit
from distkd.specs import TrainingRun
from distkd.tracking import EpochPrinter

# Ray Train's controller takes each worker's ``ray.train.report`` only when it polls the workers, every 2 s unless
# this variable says otherwise: a wait at each epoch's end and at a run's start and end, most of a small model's
# run (benchmarks/train_settings.py: a run of 3 reports, 15 s at 2 s, 7 s at 0.2 s). Set, the variable wins.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops with what it had, uncommitted."""


def fit(
    run: TrainingRun, worker: Worker, train: ray.data.Dataset, val: ray.data.Dataset, resources: ResourcesConfig
) -> list[dict]:
    """Train on Ray Train workers placed with ``resources``; write ``model.pt`` and ``history.json`` to the run's
    folder and commit it. The driver prints a line per epoch; rank 0 writes the curves."""
    fs, path = storage.resolve(run.uri)
    parent, name = path.rsplit("/", 1)
    epoch_lines = EpochPrinter(run.role, run.train.epochs)
    os.environ.setdefault(POLL_ENV, POLL_S)  # read when the run starts, passed on to its controller and workers
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"run": run, "worker": worker},
        datasets={"train": train, "val": val},
        # in memory every worker reads every global batch and trains on its rows; streamed, each its own share
        dataset_config=UnequalSplit(
            datasets_to_split=["train", "val"] if worker.split else ["val"],
            execution_options={"train": streaming.ingest_options(resources.max_workers)} if worker.split else None,
        ),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=parent,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[epoch_lines.callback],
        ),
    )
    with epoch_lines:
        result = trainer.fit()
    if (latest := epoch_lines.latest) and not math.isfinite(latest["loss"]):
        raise Diverged(
            f"{run.role}: the training loss became {latest['loss']} in epoch {latest['epoch']} "
            f"(lr {run.train.lr}, batch_size {run.train.batch_size}); try a lower train.lr. "
            f"Nothing was committed to {run.uri}"
        )
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save(state["model"], buffer)
    storage.write_bytes(run.weights_uri, buffer.getvalue())
    storage.write_json(run.history_uri, state["history"])
    storage.commit(run.uri)
    return state["history"]
