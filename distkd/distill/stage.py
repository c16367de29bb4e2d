"""Stages 0 and 2: train the teacher (cross-entropy), then the students (KD and from scratch)."""

from __future__ import annotations

import dataclasses

import ray.data

from distkd import storage
from distkd.config import TrainConfig
from distkd.data.source import Split, decode_batch
from distkd.distill.train import ModelSpec, TrainSpec, fit, steps_per_epoch
from distkd.job import Job, require
from distkd.softlabels import cache


class JoinError(RuntimeError):
    """Training rows and cached soft labels that do not match id for id."""


def decoded(split: Split) -> ray.data.Dataset:
    """Decoded once into the object store (uint8), so epochs do not decode again."""
    return split.read().map_batches(decode_batch, batch_format="numpy").materialize()


def validation(job: Job) -> ray.data.Dataset:
    limits = [n for n in (job.config.data.val_limit, job.test.limit) if n is not None]
    return decoded(dataclasses.replace(job.test, limit=min(limits, default=None))).select_columns(["image", "label"])


def spec(job: Job, label: str, model: ModelSpec, train: TrainConfig, rows: int, alpha: float = 0.0) -> TrainSpec:
    resources = job.config.resources
    return TrainSpec(
        label=label, model=model, train=train, normalize=job.normalize,
        steps_per_epoch=steps_per_epoch(rows, train.batch_size, resources.num_workers),
        alpha=alpha, temperature=job.config.distill.temperature, precision=resources.precision,
        threads=max(1, int(resources.cpus_per_worker)),
    )


def train_run(job: Job, spec_: TrainSpec, stage: str, compute: bool, softlabels: str | None = None) -> str:
    """The committed run folder for ``spec_`` (KD on ``softlabels`` when given); trained only when missing."""
    resources = job.config.resources
    key = cache.manifest(softlabels)["key"] if softlabels else None
    run = job.run_uri(spec_.label, spec_, resources.num_workers, job.train.identity(), key)
    if storage.is_committed(run):
        print(f"[{spec_.label}] reusing committed run {run}", flush=True)
        return run
    require(compute, run, stage)
    print(f"[{spec_.label}] training into {run}", flush=True)
    train = decoded(job.train)
    if softlabels:
        train = join_softlabels(train, softlabels)
    columns = ["image", "label", "teacher_logits"] if softlabels else ["image", "label"]
    fit(spec_, train.select_columns(columns), validation(job), run, resources)
    return run


def teacher_weights(job: Job, compute: bool = True) -> str:
    """Stage 0: the teacher's weights, given in the job or trained (and cached) in the store."""
    if job.config.teacher.weights is not None:
        return job.config.teacher.weights
    cfg = job.config.teacher
    run = train_run(job, spec(job, "teacher", job.teacher, cfg.train, len(job.train.read_labels())), "train_teacher", compute)
    return storage.join(run, "model.pt")


def students(job: Job, softlabels: str, compute: bool = True) -> dict[str, str]:
    """Stage 2: the distilled student and, if asked, the from-scratch baseline: {"distilled"|"scratch": weights}."""
    cfg, rows = job.config, len(job.train.read_labels())
    kd = spec(job, "student-kd", job.student, cfg.student.train, rows, cfg.distill.alpha)
    runs = {"distilled": train_run(job, kd, "distill", compute, softlabels if kd.alpha > 0 else None)}
    if cfg.distill.baseline:
        runs["scratch"] = train_run(
            job, spec(job, "student-scratch", job.student, cfg.student.train, rows), "distill", compute
        )
    return {role: storage.join(run, "model.pt") for role, run in runs.items()}


def join_softlabels(train: ray.data.Dataset, entry: str) -> ray.data.Dataset:
    """Training rows joined by id to the cached logits; a missing or extra id is an error."""
    labels = cache.read(entry)
    rows, label_rows = train.count(), cache.manifest(entry)["rows"]
    joined = train.join(labels, join_type="inner", num_partitions=max(1, rows // 10_000), on=("id",)).materialize()
    matched = joined.count()
    if not matched == rows == label_rows:
        raise JoinError(
            f"{entry}: soft labels do not match the training data id for id: {rows} training rows, "
            f"{label_rows} soft-label rows, {matched} matched"
        )
    return joined
