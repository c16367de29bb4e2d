"""The training loop every Ray Train worker runs: cross-entropy for teachers and baselines, KD for students.

Its settings are the job's own config sections, unchanged, on the run (``config["run"]``, a ``TrainingRun``), each
read where it is used; ``fit.py`` is the driver's side.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass

import ray.data
import ray.train
import torch

from distkd.data.transforms import crop_flip, random_crop_flip
from distkd.devices import autocast_dtype
from distkd.distill.batches import id_checksum, training_batches
from distkd.distill.ddp import all_reduce, gathered, idle_step, rank0_buffers
from distkd.labels.formats import TARGET_PREFIX
from distkd.methods.losses import Targets
from distkd.methods.optim import RowSchedule, optimizer
from distkd.models import placed
from distkd.specs import TrainingRun
from distkd.tracking import RunMetrics

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class Worker:
    """What each training worker is given beside the run (whose config sections carry every setting): what the
    driver found out about the data and the cluster."""

    rows_per_epoch: int  # every training row once: the schedule runs on rows (``RowSchedule``)
    split: bool  # streamed: each worker reads its own share of the training data, else all of it
    threads: int  # torch threads: the CPUs the worker holds


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; ``config["run"]`` is the ``TrainingRun``, ``config["worker"]`` the ``Worker``.

    Every worker takes the same optimisation steps, 1 or N of them: batch size, learning rate and schedule
    are per job, and each step's loss is scaled so that DDP's gradient average is the mean over the whole
    global batch (``Batches.epoch`` says how many rows it has on all workers)."""
    run: TrainingRun = config["run"]
    worker: Worker = config["worker"]
    train, kd = run.train, run.distill
    torch.set_num_threads(worker.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(train.seed)
    device = ray.train.torch.get_device()
    amp_dtype = autocast_dtype(run.resources.precision, device)
    module = placed(run.model.build(), device)  # placed first: the optimiser's restored state follows it
    opt = optimizer(module, train)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    state = TrainingState(module, opt, RowSchedule(opt, train, worker.rows_per_epoch), scaler, device)
    start_epoch, history = state.resume()
    model = ray.train.torch.prepare_model(module)  # DDP: only the training step calls it (``accuracy``)
    generator = torch.Generator()
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    curves = RunMetrics(run.uri, run.role, run_params(run), run.tracking.mlflow) if rank == 0 else None
    batches = training_batches(
        train_shard, train.batch_size, run.feed.shuffle_buffer, worker.split, rank, world, device, run.task
    )

    for epoch in range(start_epoch, train.epochs):
        started = time.perf_counter()
        generator.manual_seed((train.seed * 1000 + epoch) * 1000 + rank)  # a resumed epoch draws the same
        model.train()
        # summed KD and CE terms; samples, those with a target; the KD and CE terms' units (``Task.units``)
        sums = torch.zeros(6, dtype=torch.float64, device=device)
        checksum = 0  # of the ids trained on
        for step in batches.epoch(train.seed * 1000 + epoch):
            ids, batch = step.ids, step.columns
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if len(ids):
                    inputs, view = shown(run, batch, generator)
                    x, y = run.inputs.model_input(inputs, device), batch[run.task.target].to(device)
                    logits = model(x).float()
                    epochs_done = state.schedule.done / worker.rows_per_epoch  # all workers' rows: the same on each
                    targets = teacher_targets(batch, view, run.views, device)
                    loss = run.task.terms(kd, logits, y, targets, epochs_done)
                    # DDP averages the workers' gradients: so scaled, they are the global batch's mean loss's (each
                    # term averaged over the units it covers in the whole step)
                    scaled = loss.mean(*step.units) * world
                else:  # no rows of this step here: join the gradient all-reduce with zeros (BatchNorm untouched)
                    scaled = idle_step(model, run.inputs.model_input(run.inputs.example(1), device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(scaled).backward()
            scaler.step(opt)
            scaler.update()
            state.schedule.step(step.rows)
            if len(ids):
                units = run.task.units(y)
                rows = torch.stack([torch.tensor(len(ids), device=device), (units[:, 1] > 0).sum(), *units.sum(dim=0)])
                sums += torch.cat([torch.stack([loss.kd.detach(), loss.ce.detach()]).double(), rows.double()])
                checksum += id_checksum(ids)
        train_seconds = time.perf_counter() - started
        val_accuracy = accuracy(module, val_shard, run, device)
        workers = gathered({"rank": rank, "node": ray.get_runtime_context().get_node_id(), "samples": int(sums[2])})
        sums, checksum = all_reduce(sums), all_reduce(torch.tensor(checksum, dtype=torch.int64, device=device))
        kd_sum, ce_sum, samples, labelled, kd_units, ce_units = sums.tolist()
        kd_mean, ce_mean = kd_sum / max(kd_units, 1), ce_sum / max(ce_units, 1)  # each over the units it covers
        history.append(
            {
                "epoch": epoch + 1,
                "loss": kd_mean + ce_mean,
                "kd": kd_mean,  # the weighted KD term of the loss, the mean over every row (a language model's token)
                "ce": ce_mean,  # the weighted CE term, the mean over the labelled rows (real tokens)
                "labelled": int(labelled),  # of the samples: the rows with a label (the CE term's)
                "val_accuracy": val_accuracy,
                "samples_per_s": samples / train_seconds,
                "seconds": time.perf_counter() - started,
                "lr": state.schedule.lr,
                "samples": int(samples),
                "id_checksum": int(checksum),
                "workers": workers,
                "started_from": start_epoch,  # > 0 in epochs run after a restart from a checkpoint
            }
        )
        report(state, epoch, history, rank)
        if not math.isfinite(history[-1]["loss"]):  # every worker sees the same reduced sums: all stop here together
            break
        if curves:
            curves.log(history[-1])
    if curves:
        curves.close()


def run_params(run: TrainingRun) -> dict:
    """The settings a tracking server shows beside the run's curves."""
    kd = run.distill.model_dump() if run.distill else {}
    return {"model": run.model.name, **{f"distill.{k}": v for k, v in kd.items()}, **run.train.model_dump()}


def shown(run: TrainingRun, batch: dict, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """The input columns the model trains on, and which recorded view each row is (0 without views): with
    views, exactly a view the teacher saw, drawn per sample and epoch; else the configured augmentation. Both
    are image augmentations: asked of another input kind, they are refused before work (``checks.inputs``)."""
    view = torch.zeros(len(batch[run.task.target]), dtype=torch.long)
    if run.views:
        images = batch["image"]
        view = torch.randint(0, run.views, (len(images),), generator=generator)
        params = batch["views"].view(len(images), run.views, -1)[torch.arange(len(images)), view]
        return {"image": crop_flip(images, params)}, view
    if run.train.augment:
        return {"image": random_crop_flip(batch["image"], generator=generator)}, view
    return batch, view


def teacher_targets(batch: dict, view: torch.Tensor, views: int, device: torch.device) -> Targets:
    """The soft labels of the view each sample was shown: dense logits or top-k (none for a baseline)."""

    def of_view(column: str) -> torch.Tensor:
        values = batch[column]
        return values.view(len(values), max(views, 1), -1)[torch.arange(len(values)), view].to(device)

    teacher = [name for name in batch if name.startswith(TARGET_PREFIX)]
    return Targets(**{name.removeprefix(TARGET_PREFIX): of_view(name) for name in teacher})


@torch.inference_mode()
def accuracy(module: torch.nn.Module, shard: ray.data.DataIterator, run: TrainingRun, device: torch.device) -> float:
    """The accuracy of rank 0's model on the validation shards of all workers. ``module`` is the model
    unwrapped: a DDP forward pass broadcasts buffers first, which would wait forever for a worker whose
    shard is empty (and so runs none); here every collective is called by every worker."""
    rank0_buffers(module)
    module.eval()
    counts = torch.zeros(2, device=device)  # correct, total
    for batch in shard.iter_torch_batches(batch_size=1024):
        counts += torch.stack(
            run.task.hits(module(run.inputs.model_input(batch, device)), batch[run.task.target].to(device))
        )
    counts = all_reduce(counts)
    return (counts[0] / counts[1].clamp(min=1)).item()


@dataclass
class TrainingState:
    """What a checkpoint saves and a restarted worker restores, besides the epoch and the history: the model
    (unwrapped), optimiser, schedule, fp16 gradient scaler, and the torch RNG states (CUDA's on a GPU)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: RowSchedule
    scaler: torch.amp.GradScaler
    device: torch.device

    def checkpoint(self, epoch: int, history: list[dict]) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": history,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self, state: dict) -> tuple[int, list[dict]]:
        """Loads a ``checkpoint``; returns the epoch to resume from and the history so far."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        return state["epoch"] + 1, state["history"]

    def resume(self) -> tuple[int, list[dict]]:
        """From Ray Train's latest checkpoint when a restarted worker group has one, else (0, [])."""
        if not (checkpoint := ray.train.get_checkpoint()):
            return 0, []
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        return self.restore(saved)


def report(state: TrainingState, epoch: int, history: list, rank: int) -> None:
    """Every worker reports each epoch; rank 0 attaches the checkpoint (``TrainingState.checkpoint``: what a
    restarted worker group resumes from), except after an epoch whose loss is not finite: a run never resumes
    from a diverged model."""
    metrics = {k: v for k, v in history[-1].items() if k != "workers"}
    if rank != 0 or not math.isfinite(metrics["loss"]):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state.checkpoint(epoch, history), os.path.join(folder, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
