"""Ray's overhead on training: distkd's Ray Train stage against a plain PyTorch loop on the same rows.

Both train the same model with the same batch size, learning-rate schedule and augmentation,
one after the other in this process, and the ratio of their wall times is printed (this
machine is noisy: compare runs by the ratio, not by the seconds).

    python benchmarks/train_overhead.py --rows 10000 --epochs 3 --model lenet5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from distkd import config, pipeline, storage
from distkd.data.source import Split, decode
from distkd.data.transforms import random_crop_flip
from distkd.distill.stage import worker_spec
from distkd.distill.teacher import teacher_weights
from distkd.distill.train import lr_schedule
from distkd.job import Job


def decoded(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    table = split.read_table(["image", "label"])
    images = torch.from_numpy(np.stack([decode(b) for b in table["image"].to_pylist()]))
    return images, torch.from_numpy(table["label"].to_numpy())


def plain_loop(job: Job, rows: int) -> tuple[float, list[float]]:
    """nanoGPT-style: the decoded rows as one tensor, one process, no Ray. Total and per-epoch seconds."""
    started, epochs = time.perf_counter(), []
    images, labels = decoded(job.train)
    val_images, val_labels = decoded(job.val)
    s = worker_spec(job.teacher_run())
    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    model = s.model.build()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=s.train.lr, momentum=s.train.momentum, weight_decay=s.train.weight_decay, nesterov=True
    )
    scheduler = lr_schedule(optimizer, s)
    for _ in range(s.train.epochs):
        epoch_started = time.perf_counter()
        order = torch.randperm(rows)
        for i in range(0, rows - s.train.batch_size + 1, s.train.batch_size):
            idx = order[i : i + s.train.batch_size]
            x = s.normalize(random_crop_flip(images[idx]) if s.train.augment else images[idx])
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.inference_mode():  # the same validation as distkd's per-epoch line
            (model(s.normalize(val_images)).argmax(1) == val_labels).float().mean().item()
        model.train()
        epochs.append(time.perf_counter() - epoch_started)
    return time.perf_counter() - started, epochs


def ray_stage(job: Job) -> tuple[float, list[float]]:
    """distkd's stage 0 (Ray Train, one worker); total and per-epoch seconds (from its history.json)."""
    started = time.perf_counter()
    weights = teacher_weights(job.teacher_run())
    history = storage.read_json(weights.replace("model.pt", "history.json"))
    return time.perf_counter() - started, [h["seconds"] for h in history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="e.g. '{\"width\": 16}' for resnet9")
    p.add_argument("--data", default="../shared/datasets/cifar10")
    p.add_argument("--store", default="/tmp/distkd-bench-store")
    args = p.parse_args()
    raw = {
        "name": f"bench-{time.time_ns()}",
        "store": args.store,  # a fresh run name: never reused
        "data": {"uri": args.data, "limit": args.rows},
        "teacher": {
            "name": args.model,
            "kwargs": args.model_kwargs,
            "train": {"epochs": args.epochs, "batch_size": 128, "lr": 0.05},
        },
        "student": {"name": "lenet5", "train": {"augment": False}},
        "resources": {"cpus_per_worker": 2},
    }
    job = Job.prepare(config.parse(raw, "benchmark"))
    plain, plain_epochs = plain_loop(job, args.rows)
    pipeline.connect(None)
    ray_total, ray_epochs = ray_stage(job)
    per_epoch = statistics.median(ray_epochs) / statistics.median(plain_epochs)
    print(f"\n{args.model} {args.model_kwargs}, {args.rows} rows, {args.epochs} epochs")
    print("|  | total s | median epoch s |\n|---|---:|---:|")
    print(f"| plain PyTorch loop | {plain:.1f} | {statistics.median(plain_epochs):.2f} |")
    print(f"| distkd on Ray Train | {ray_total:.1f} | {statistics.median(ray_epochs):.2f} |")
    print(f"| ratio Ray / plain | {ray_total / plain:.2f} | {per_epoch:.2f} |")
    print(
        "(Ray's start excluded; distkd's total includes decoding into the object store, worker start-up and "
        "checkpoints; an epoch includes validation)"
    )


if __name__ == "__main__":
    main()
