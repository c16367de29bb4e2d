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
from distkd.softlabels.formats import TRAINING_COLUMNS


def decoded(split: Split, shape: tuple[int, int, int]) -> ray.data.Dataset:
    """The split's rows with images decoded to uint8 ``shape`` (C, H, W)."""
    return split.read().map_batches(decode_batch, fn_kwargs={"shape": shape}, batch_format="numpy")


def validation(job: Job, shape: tuple[int, int, int]) -> ray.data.Dataset:
    limits = [n for n in (job.config.data.val_limit, job.test.limit) if n is not None]
    return decoded(dataclasses.replace(job.test, limit=min(limits, default=None)), shape)


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
    shape = spec_.model.input_shape
    if softlabels:
        train = join_softlabels(job.train, softlabels, shape)
    else:
        train = in_memory(decoded(job.train, shape), ["image", "label"])
    fit(spec_, train, in_memory(validation(job, shape), ["image", "label"]), run, resources)
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
    Ray Data tasks, so the trainer may hold every CPU of a small machine, and nothing is decoded twice."""
    return ds.select_columns(columns).materialize()


def join_softlabels(split: Split, entry: str, shape: tuple[int, int, int]) -> ray.data.Dataset:
    """Training rows joined by id to the cached soft labels. The entry is verified first (checksums,
    and each training id exactly once), so a missing or extra id is an error, never a silent drop."""
    ids = split.read_table(["id"])["id"].to_pylist()
    info = cache.verify(entry, ids)
    columns = [*TRAINING_COLUMNS[info["inputs"]["format"]["layout"]], *(["views"] if info["inputs"]["views"] else [])]
    joined = decoded(split, shape).join(
        cache.read(entry), join_type="inner", num_partitions=max(1, len(ids) // 10_000), on=("id",)
    )
    return in_memory(joined, ["image", "label", *columns])
