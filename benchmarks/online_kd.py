"""Online KD on the quick start, for comparison with cached soft labels (benchmarks/kd_variants.py).

The teacher runs inside the student's training loop on exactly the augmented batch the
student sees (the reference that cached labels are measured against), in one plain PyTorch
process with the quick start's models, schedule and hyperparameters; prints test accuracy.

    python benchmarks/online_kd.py --teacher store/runs/teacher-<hash>/model.pt --alpha 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import yaml

from distkd import config
from distkd.data.source import Split, decode
from distkd.data.transforms import random_crop_flip
from distkd.distill.loss import kd_loss
from distkd.distill.stage import worker_spec
from distkd.distill.train import learning_rate
from distkd.job import Job
from distkd.models import load_weights


def decoded(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    table = split.read_table(["image", "label"])
    return torch.from_numpy(np.stack([decode(b) for b in table["image"].to_pylist()])), torch.from_numpy(
        table["label"].to_numpy()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    raw = yaml.safe_load(open("jobs/quickstart.yaml"))
    raw["distill"]["alpha"] = args.alpha
    job = Job.prepare(config.parse(raw, "online KD"))
    train = job.config.student.train.model_copy(update={"augment": args.augment})
    run = job.scratch_run()  # the student's run, with the KD settings of this comparison
    s = worker_spec(
        dataclasses.replace(
            run, role="online", train=train, alpha=args.alpha, temperature=job.config.distill.temperature
        )
    )
    torch.set_num_threads(2)
    torch.manual_seed(train.seed)
    images, labels = decoded(job.train)
    test_images, test_labels = decoded(job.evaluated)
    teacher = load_weights(job.teacher.build(), args.teacher).eval()
    student = s.model.build()
    optimizer = torch.optim.SGD(
        student.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True
    )
    step, started = 0, time.perf_counter()
    for epoch in range(train.epochs):
        order = torch.randperm(len(labels))
        for i in range(0, len(labels) - train.batch_size + 1, train.batch_size):
            idx = order[i : i + train.batch_size]
            x = s.normalize(random_crop_flip(images[idx]) if train.augment else images[idx])
            with torch.inference_mode():
                teacher_logits = teacher(x)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(s, step)
            loss = kd_loss(student(x), teacher_logits.clone(), labels[idx], s.alpha, s.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        print(
            f"epoch {epoch + 1}/{train.epochs} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    student.eval()
    with torch.inference_mode():
        accuracy = (student(s.normalize(test_images)).argmax(1) == test_labels).float().mean().item()
    print(
        f"\nonline KD, alpha {args.alpha}, augment {train.augment}: "
        f"test accuracy {accuracy:.2%} ({len(test_labels)} images)"
    )


if __name__ == "__main__":
    main()
