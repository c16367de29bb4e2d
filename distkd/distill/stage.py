"""Stages 0 and 2: train the teacher (cross-entropy), then the students (KD and from scratch)."""

from __future__ import annotations

import dataclasses

import ray.data

from distkd import storage
from distkd.config import TrainConfig
from distkd.data.source import Split, decode_batch
from distkd.distill import streaming
from distkd.distill.train import ModelSpec, TrainSpec, fit, steps_per_epoch
from distkd.job import Job, require
from distkd.softlabels import cache
from distkd.softlabels.formats import TRAINING_COLUMNS


def decoded(split: Split) -> ray.data.Dataset:
    return split.read().map_batches(decode_batch, batch_format="numpy")


def validation(job: Job) -> ray.data.Dataset:
    limits = [n for n in (job.config.data.val_limit, job.test.limit) if n is not None]
    return decoded(dataclasses.replace(job.test, limit=min(limits, default=None)))


def spec(job: Job, label: str, model: ModelSpec, train: TrainConfig, alpha: float = 0.0) -> TrainSpec:
    resources = job.config.resources
    return TrainSpec(
        label=label,
        model=model,
        train=train,
        normalize=job.normalize,
        steps_per_epoch=steps_per_epoch(job.train.num_rows(), train.batch_size, resources.num_workers),
        alpha=alpha,
        temperature=job.config.distill.temperature,
        precision=resources.precision,
        threads=max(1, int(resources.cpus_per_worker)),
        shuffle_buffer=job.config.data.shuffle_buffer,
    )


def train_run(job: Job, spec_: TrainSpec, stage: str, compute: bool, softlabels: str | None = None) -> str:
    """The committed run folder for ``spec_`` (KD on ``softlabels`` when given); trained only when missing."""
    resources = job.config.resources
    key = cache.manifest(softlabels)["key"] if softlabels else None
    run = job.run_uri(spec_.label, spec_.identity(), resources.num_workers, job.train.identity(), key)
    if storage.is_committed(run):
        print(f"[{spec_.label}] reusing committed run {run}", flush=True)
        return run
    require(compute, run, stage)
    print(f"[{spec_.label}] training into {run}", flush=True)
    val = in_memory(validation(job), ["image", "label"])
    if streaming.choose(job.config.data.cache, job.train, spec_.model.input_shape) == "stream":
        columns = ["image", "label", *(label_columns(cache.manifest(softlabels)) if softlabels else [])]
        train = streaming.stream(job.train, columns, streaming.block_rows(spec_.model.input_shape), softlabels)
        resources = streaming.reserve_data_cpus(resources)
        spec_ = dataclasses.replace(spec_, threads=max(1, int(resources.cpus_per_worker)))
    elif softlabels:
        train = join_softlabels(job.train, softlabels)
    else:
        train = in_memory(decoded(job.train), ["image", "label"])
    fit(spec_, train, val, run, resources)
    return run


def teacher_weights(job: Job, compute: bool = True) -> str:
    """Stage 0: the teacher's weights, given in the job or trained (and cached) in the store."""
    if job.config.teacher.weights is not None:
        return job.config.teacher.weights
    run = train_run(job, spec(job, "teacher", job.teacher, job.config.teacher.train), "train_teacher", compute)
    return storage.join(run, "model.pt")


def students(job: Job, softlabels: str, compute: bool = True) -> dict[str, str]:
    """Stage 2: the distilled student and, if asked, the from-scratch baseline: {"distilled"|"scratch": weights}."""
    cfg = job.config
    kd = spec(job, "student-kd", job.student, cfg.student.train, cfg.distill.alpha)
    inputs = cache.manifest(softlabels)["inputs"]
    if inputs["format"]["layout"] == "topk" and inputs["format"]["temperature"] != kd.temperature:
        raise cache.CacheError(
            f"{softlabels}: top-k labels stored at temperature {inputs['format']['temperature']}, "
            f"but distill.temperature is {kd.temperature}"
        )
    kd = dataclasses.replace(kd, views=(inputs["views"] or {}).get("count", 0))
    runs = {"distilled": train_run(job, kd, "distill", compute, softlabels if kd.alpha > 0 else None)}
    if cfg.distill.baseline:
        scratch = spec(job, "student-scratch", job.student, cfg.student.train)
        runs["scratch"] = train_run(job, scratch, "distill", compute)
    return {role: storage.join(run, "model.pt") for role, run in runs.items()}


def in_memory(ds: ray.data.Dataset, columns: list[str]) -> ray.data.Dataset:
    """The training columns, materialised (decoded uint8) in the object store: epochs then run no
    Ray Data tasks, so the trainer may hold every CPU of a small machine, and nothing is decoded twice.
    Each epoch takes the blocks in a new random order."""
    return ds.select_columns(columns).materialize().randomize_block_order()


def label_columns(manifest: dict) -> list[str]:
    """The training columns of a soft-label entry: its format's, and the views' parameters if it has views."""
    inputs = manifest["inputs"]
    return [*TRAINING_COLUMNS[inputs["format"]["layout"]], *(["views"] if inputs["views"] else [])]


def join_softlabels(split: Split, entry: str) -> ray.data.Dataset:
    """Training rows joined by id to the cached soft labels. The entry is verified first (checksums,
    and each training id exactly once), so a missing or extra id is an error, never a silent drop."""
    ids = split.read_table(["id"])["id"].to_pylist()
    columns = label_columns(cache.verify(entry, ids))
    joined = decoded(split).join(
        cache.read(entry), join_type="inner", num_partitions=max(1, len(ids) // 10_000), on=("id",)
    )
    return in_memory(joined, ["image", "label", *columns])
