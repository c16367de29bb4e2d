"""One training loop for every model: cross-entropy for teachers and baselines, KD for students.

``fit`` runs it on N Ray Train workers (DDP), checkpoints each epoch to ``<store>/runs/<run>/``
(a restarted worker resumes from the latest), and commits the final ``model.pt`` there.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import ray.data
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train.torch import TorchTrainer

from distkd import storage
from distkd.config import ResourcesConfig, TrackingConfig, TrainConfig
from distkd.data.transforms import Normalize, crop_flip, random_crop_flip
from distkd.distill import streaming
from distkd.distill.loss import kd_loss, kd_loss_topk
from distkd.models import placed
from distkd.specs import ModelSpec
from distkd.tracking import EpochPrinter, RunMetrics

CHECKPOINT_FILE = "checkpoint.pt"
WARMUP = 0.2  # fraction of the steps over which the learning rate ramps up


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops with what it had, uncommitted."""


@dataclass(frozen=True)
class TrainSpec:
    """Everything a worker needs. ``alpha`` 0 trains on the labels alone (no soft labels read)."""

    label: str  # shown in the per-epoch lines
    model: ModelSpec
    train: TrainConfig
    normalize: Normalize
    steps_per_epoch: int
    alpha: float = 0.0
    temperature: float = 1.0
    views: int = 0  # recorded views per image in the soft labels: train on one of them per sample
    precision: str = "fp32"
    threads: int = 1
    shuffle_buffer: int = 512  # samples shuffled locally by each worker, on top of the block order
    split: bool = False  # each worker reads its own share of the training data (streamed), else all of it


def run_params(spec: TrainSpec) -> dict:
    """The settings a tracking server shows beside the run's curves."""
    return {"model": spec.model.name, "alpha": spec.alpha, "temperature": spec.temperature, **spec.train.model_dump()}


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up to 1 over the first ``WARMUP`` of ``total`` steps, then linear decay (one-cycle),
    floored at 1 %: the factor ``LambdaLR`` applies to ``lr`` at ``step``."""
    progress = min(step / total, 1.0)
    ramp = progress / WARMUP if progress < WARMUP else (1 - progress) / (1 - WARMUP)
    return max(ramp, 0.01)


def sgd(model: torch.nn.Module, train: TrainConfig) -> torch.optim.SGD:
    """The job's optimiser: SGD with (Nesterov) momentum and weight decay."""
    return torch.optim.SGD(
        model.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.momentum > 0,
    )


def lr_schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """The job's learning-rate schedule, stepped once per global step (its state is checkpointed)."""
    total = spec.train.epochs * spec.steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, total=total))


def worker_rows(ids: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Which rows of a global batch this worker trains on: a stable hash of the id modulo the world size,
    so every id is trained on by exactly one worker, whatever the number of workers."""
    return np.array([zlib.crc32(str(i).encode()) % world == rank for i in ids], dtype=bool)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; ``config["spec"]`` is the TrainSpec.

    Every worker iterates the same global batches of ``batch_size`` rows in the same order and trains on its
    share of each (``worker_rows``); the loss is scaled so that DDP's gradient average is the mean over the
    whole global batch. Batch size, learning rate and schedule are therefore per job: 1 or N workers take the
    same optimisation steps."""
    spec: TrainSpec = config["spec"]
    tracking: TrackingConfig = config["tracking"]
    torch.set_num_threads(spec.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(spec.train.seed)
    device = ray.train.torch.get_device()
    model = spec.model.build()
    optimizer = sgd(model, spec.train)
    scheduler = lr_schedule(optimizer, spec)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    model = ray.train.torch.prepare_model(placed(model, device))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
    use_amp = amp_dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)
    generator = torch.Generator()
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    curves = RunMetrics(config["run_uri"], spec.label, run_params(spec), tracking.mlflow) if rank == 0 else None

    for epoch in range(start_epoch, spec.train.epochs):
        started = time.perf_counter()
        generator.manual_seed((spec.train.seed * 1000 + epoch) * 1000 + rank)  # a resumed epoch draws the same
        model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # summed loss, its KD part, samples
        checksum = 0  # of the ids trained on
        for ids, batch, share in epoch_batches(train_shard, spec, epoch, rank, world, device):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                if len(ids):
                    images, view = shown(spec, batch, generator)
                    x, y = spec.normalize(images.to(device)), batch["label"].to(device)
                    logits = model(x)
                    loss = objective(spec, logits.float(), y, batch, view, device)
                    # DDP averages the workers' gradients: so scaled, they are the global batch's mean loss's
                    scaled = loss * share
                else:  # no rows of this step here: join the gradient all-reduce with zeros (BatchNorm untouched)
                    scaled = idle_step(model, spec, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(scaled).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if len(ids):
                kd = loss.detach() - (1 - spec.alpha) * F.cross_entropy(logits.detach().float(), y)
                sums += len(ids) * torch.stack([loss.detach(), kd, torch.ones((), device=device)]).double()
                checksum += id_checksum(ids)
        train_seconds = time.perf_counter() - started
        val_accuracy = accuracy(model, val_shard, spec, device)
        workers = gathered({"rank": rank, "node": ray.get_runtime_context().get_node_id(), "samples": int(sums[2])})
        sums, checksum = all_reduce(sums), all_reduce(torch.tensor(checksum, dtype=torch.int64, device=device))
        loss, kd, samples = sums.tolist()
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss / samples,
                "kd": kd / samples,  # the weighted KD term of the loss; the rest is the weighted CE term
                "ce": (loss - kd) / samples,
                "val_accuracy": val_accuracy,
                "samples_per_s": samples / train_seconds,
                "seconds": time.perf_counter() - started,
                "lr": scheduler.get_last_lr()[0],
                "samples": int(samples),
                "id_checksum": int(checksum),
                "workers": workers,
                "started_from": start_epoch,  # > 0 in epochs run after a restart from a checkpoint
            }
        )
        report(model, optimizer, scheduler, epoch, history, rank)
        if not math.isfinite(loss):  # every worker sees the same reduced sums, so all stop here together
            break
        if curves:
            curves.log(history[-1])
    if curves:
        curves.close()


def id_checksum(ids: np.ndarray) -> int:
    """A sum of per-id hashes: equal to the split's iff no id was dropped or repeated (up to a collision)."""
    return sum(zlib.crc32(str(i).encode()) for i in ids)


def gathered(item: dict) -> list[dict]:
    """``item`` from every worker, by rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [item]
    items = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


def epoch_batches(
    shard: ray.data.DataIterator,
    spec: TrainSpec,
    epoch: int,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], float]]:
    """This worker's rows of one epoch, each row once (the last batch may be short), shuffled within a
    buffer of ``spec.shuffle_buffer`` samples: (ids, batch, share), where the loss times ``share`` makes
    DDP's gradient average the gradient of the global batch's mean loss. No ids: this worker has no rows
    in this step but must take it with the others.

    Held in memory, the data is not split: every worker iterates the same global batches of
    ``batch_size`` rows (the same shuffle seed) and trains on the rows whose id hashes to its rank
    (``worker_rows``), so each id is trained on exactly once whatever the worker count. Streamed
    (``spec.split``), each worker reads its own share (``UnequalSplit``: every row goes to one worker, the
    shares may differ) in batches of ``batch_size / world`` rows, and the workers count each step's rows
    together: they step until every share is used up."""
    if spec.split:
        yield from own_share_batches(shard, spec, world, device)
        return
    for full in shard.iter_batches(
        batch_size=spec.train.batch_size,
        batch_format="numpy",
        local_shuffle_buffer_size=spec.shuffle_buffer,
        local_shuffle_seed=spec.train.seed * 1000 + epoch,  # the same order on every worker
    ):
        mine = worker_rows(full["id"], rank, world)
        batch = {k: torch.from_numpy(v[mine]) for k, v in full.items() if k != "id"}
        yield full["id"][mine], batch, int(mine.sum()) * world / len(mine)


def own_share_batches(
    shard: ray.data.DataIterator, spec: TrainSpec, world: int, device: str | torch.device
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], float]]:
    """``epoch_batches`` of a streamed (split) shard: the workers all-reduce each step's row count and step
    together until every share is used up, a worker whose share is used up with no rows."""
    size = max(1, spec.train.batch_size // world)
    batches = iter(
        shard.iter_batches(batch_size=size, batch_format="numpy", local_shuffle_buffer_size=spec.shuffle_buffer)
    )
    while True:
        full = next(batches, None)
        rows = 0 if full is None else len(full["id"])
        total = int(all_reduce(torch.tensor(rows, dtype=torch.int64, device=device)))
        if total == 0:
            return
        if full is None:
            yield np.array([]), {}, 0.0
        else:
            yield full["id"], {k: torch.from_numpy(v) for k, v in full.items() if k != "id"}, rows * world / total


def idle_step(model: torch.nn.Module, spec: TrainSpec, device: torch.device) -> torch.Tensor:
    """A zero loss that still runs DDP's backward pass (its gradient all-reduce), from one blank image in eval
    mode, so that BatchNorm's running statistics do not see it."""
    model.eval()
    zero = model(torch.zeros(1, *spec.model.input_shape, device=device)).sum() * 0
    model.train()
    return zero


class UnequalSplit(ray.train.DataConfig):
    """Ray Train's dataset config, except that the datasets it splits are cut unequally: its equal split
    leaves out up to ``world - 1`` rows an epoch to even the shares, while here every row goes to exactly one
    worker (``epoch_batches`` keeps the workers in step; ``accuracy`` only sums at the end)."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        named = set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
        split = named & set(datasets)  # Ray Train V2 configures one dataset at a time
        whole = {name: ds for name, ds in datasets.items() if name not in split}
        output = super().configure(whole, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in split:
            ds = datasets[name].copy(datasets[name])
            ds.set_name(name)
            ds.context.execution_options = self._resolve_execution_options(name)
            shards = ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for shard, iterator in zip(output, shards):
                shard[name] = iterator
        return output


def shown(spec: TrainSpec, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the model trains on, and which recorded view each one is (0 without views):
    with views, exactly a view the teacher saw, drawn per sample and epoch; else the configured
    augmentation."""
    images, view = batch["image"], torch.zeros(len(batch["image"]), dtype=torch.long)
    if spec.views:
        view = torch.randint(0, spec.views, (len(images),), generator=generator)
        params = batch["views"].view(len(images), spec.views, -1)[torch.arange(len(images)), view]
        return crop_flip(images, params), view
    if spec.train.augment:
        images = random_crop_flip(images, generator=generator)
    return images, view


def objective(
    spec: TrainSpec, logits: torch.Tensor, labels: torch.Tensor, batch: dict, view: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Cross-entropy, or the KD loss against the soft label of the view each sample was shown."""
    if spec.alpha == 0:
        return F.cross_entropy(logits, labels)

    def of_view(column: str) -> torch.Tensor:
        values = batch[column]
        return values.view(len(values), max(spec.views, 1), -1)[torch.arange(len(values)), view].to(device)

    if "teacher_logits" in batch:
        return kd_loss(logits, of_view("teacher_logits"), labels, spec.alpha, spec.temperature)
    return kd_loss_topk(
        logits, of_view("teacher_index"), of_view("teacher_logprob"), labels, spec.alpha, spec.temperature
    )


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


@torch.inference_mode()
def accuracy(model: torch.nn.Module, shard, spec: TrainSpec, device: torch.device) -> float:
    model.eval()
    counts = torch.zeros(2, device=device)  # correct, total
    for batch in shard.iter_torch_batches(batch_size=1024):
        predicted = model(spec.normalize(batch["image"].to(device))).argmax(-1)
        counts += torch.stack(
            [(predicted == batch["label"].to(device)).sum(), torch.tensor(len(predicted), device=device)]
        )
    counts = all_reduce(counts)
    return (counts[0] / counts[1].clamp(min=1)).item()


def report(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    history: list,
    rank: int,
) -> None:
    """Every worker reports each epoch; rank 0 attaches the checkpoint (model, optimiser, schedule, epoch,
    history and the torch RNG state: what a restarted worker group resumes from), except after an epoch whose
    loss is not finite: a run never resumes from a diverged model."""
    metrics = {k: v for k, v in history[-1].items() if k != "workers"}
    if rank != 0 or not math.isfinite(metrics["loss"]):
        ray.train.report(metrics)
        return
    module = getattr(model, "module", model)
    state = {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": epoch,
        "history": history,
    }
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit(
    spec: TrainSpec,
    train: ray.data.Dataset,
    val: ray.data.Dataset,
    run_uri: str,
    resources: ResourcesConfig,
    tracking: TrackingConfig | None = None,
) -> list[dict]:
    """Train on Ray Train workers; write ``model.pt`` and ``history.json`` to ``run_uri`` and commit it.
    The driver prints a line per epoch; rank 0 writes the curves (``tracking``)."""
    fs, path = storage.resolve(run_uri)
    parent, name = path.rsplit("/", 1)
    epoch_lines = EpochPrinter(spec.label, spec.train.epochs)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "run_uri": run_uri, "tracking": tracking or TrackingConfig()},
        datasets={"train": train, "val": val},
        # in memory every worker reads every global batch and trains on its rows; streamed, each its own share
        dataset_config=UnequalSplit(
            datasets_to_split=["train", "val"] if spec.split else ["val"],
            execution_options={"train": streaming.ingest_options(resources.max_workers)} if spec.split else None,
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
            f"{spec.label}: the training loss became {latest['loss']} in epoch {latest['epoch']} "
            f"(lr {spec.train.lr}, batch_size {spec.train.batch_size}); try a lower train.lr. "
            f"Nothing was committed to {run_uri}"
        )
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save(state["model"], buffer)
    storage.write_bytes(storage.join(run_uri, "model.pt"), buffer.getvalue())
    storage.write_json(storage.join(run_uri, "history.json"), state["history"])
    storage.commit(run_uri)
    return state["history"]


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Global steps per epoch: every row once, in batches of the job's ``batch_size`` (the last one smaller)."""
    return max(1, math.ceil(rows / batch_size))
