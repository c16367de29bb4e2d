"""One training loop for every model: cross-entropy for teachers and baselines, KD for students.

``fit`` runs it on N Ray Train workers (DDP), checkpoints each epoch to ``<store>/runs/<run>/``
(a restarted worker resumes from the latest), and commits the final ``model.pt`` there.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from dataclasses import dataclass

import ray.data
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train.torch import TorchTrainer

from distkd import storage
from distkd.config import ResourcesConfig, TrainConfig
from distkd.data.transforms import Normalize, crop_flip, random_crop_flip
from distkd.distill.loss import kd_loss, kd_loss_topk
from distkd.specs import ModelSpec

CHECKPOINT_FILE = "checkpoint.pt"
WARMUP = 0.2  # fraction of the steps over which the learning rate ramps up


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


def learning_rate(spec: TrainSpec, step: int) -> float:
    """Linear warm-up to ``lr`` then linear decay to zero (one-cycle)."""
    total = spec.train.epochs * spec.steps_per_epoch
    progress = min(step / total, 1.0)
    ramp = progress / WARMUP if progress < WARMUP else (1 - progress) / (1 - WARMUP)
    return spec.train.lr * max(ramp, 0.01)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; ``config["spec"]`` is the TrainSpec."""
    spec: TrainSpec = config["spec"]
    torch.set_num_threads(spec.threads)
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(spec.train.seed)
    device = ray.train.torch.get_device()
    model = spec.model.build()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=spec.train.lr,
        momentum=spec.train.momentum,
        weight_decay=spec.train.weight_decay,
        nesterov=spec.train.momentum > 0,
    )
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    model = ray.train.torch.prepare_model(model)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
    use_amp = amp_dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(spec.train.seed * 1000 + rank)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, spec.train.epochs):
        started, step = time.perf_counter(), epoch * spec.steps_per_epoch
        model.train()
        loss_sum = torch.zeros(2, device=device)  # summed loss, samples
        for batch in train_shard.iter_torch_batches(
            batch_size=spec.train.batch_size, local_shuffle_buffer_size=4 * spec.train.batch_size, drop_last=True
        ):
            images, view = shown(spec, batch, generator)
            x, y = spec.normalize(images.to(device)), batch["label"].to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(spec, step)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                logits = model(x)
                loss = objective(spec, logits.float(), y, batch, view, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += torch.stack([loss.detach() * len(y), torch.tensor(len(y), device=device)])
            step += 1
        val_accuracy = accuracy(model, val_shard, spec, device)
        loss_sum = all_reduce(loss_sum)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": (loss_sum[0] / loss_sum[1]).item(),
                "val_accuracy": val_accuracy,
                "seconds": time.perf_counter() - started,
            }
        )
        report(model, optimizer, epoch, history, rank)
        if rank == 0:
            h = history[-1]
            print(
                f"[{spec.label}] epoch {epoch + 1}/{spec.train.epochs}  loss {h['loss']:.4f}  "
                f"val_acc {h['val_accuracy']:.4f}  ({h['seconds']:.1f} s)",
                flush=True,
            )


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


def report(model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list, rank: int) -> None:
    """Every worker reports each epoch; rank 0 attaches the checkpoint."""
    metrics = dict(history[-1])
    if rank != 0:
        ray.train.report(metrics)
        return
    module = getattr(model, "module", model)
    state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history}
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit(
    spec: TrainSpec, train: ray.data.Dataset, val: ray.data.Dataset, run_uri: str, resources: ResourcesConfig
) -> list[dict]:
    """Train on Ray Train workers; write ``model.pt`` and ``history.json`` to ``run_uri`` and commit it."""
    fs, path = storage.resolve(run_uri)
    parent, name = path.rsplit("/", 1)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        datasets={"train": train, "val": val},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=parent,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=2),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save(state["model"], buffer)
    storage.write_bytes(storage.join(run_uri, "model.pt"), buffer.getvalue())
    storage.write_json(storage.join(run_uri, "history.json"), state["history"])
    storage.commit(run_uri)
    return state["history"]


def steps_per_epoch(rows: int, spec_batch_size: int, num_workers: int) -> int:
    return max(1, math.floor(rows / num_workers / spec_batch_size))
