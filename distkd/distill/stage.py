"""Stage 2: the students (KD on the cached soft labels, and from scratch); the training runs of
stages 0 and 2 share ``train_run``."""

from __future__ import annotations

import ray.data

from distkd import storage
from distkd.data.source import Split, decode_batch
from distkd.distill.train import TrainSpec, fit, steps_per_epoch
from distkd.softlabels import cache
from distkd.softlabels.formats import TRAINING_COLUMNS
from distkd.specs import TrainingRun, plain, require


def decoded(split: Split, shape: tuple[int, int, int]) -> ray.data.Dataset:
    """The split's rows with images decoded to uint8 ``shape`` (C, H, W)."""
    return split.read().map_batches(decode_batch, fn_kwargs={"shape": shape}, batch_format="numpy")


def worker_spec(run: TrainingRun) -> TrainSpec:
    """What the Ray Train workers need of ``run``."""
    return TrainSpec(
        label=run.role,
        model=run.model,
        train=run.train,
        normalize=run.normalize,
        steps_per_epoch=steps_per_epoch(run.data.num_rows(), run.train.batch_size, run.resources.num_workers),
        alpha=run.alpha,
        temperature=run.temperature,
        views=run.views,
        precision=run.resources.precision,
        threads=max(1, int(run.resources.cpus_per_worker)),
    )


def train_run(run: TrainingRun, stage: str, compute: bool) -> str:
    """The committed run folder (KD on ``run.softlabels`` when alpha > 0); trained only when missing."""
    if storage.is_committed(run.uri):
        print(f"[{run.role}] reusing committed run {run.uri}", flush=True)
        return run.uri
    require(compute, run.uri, stage)
    print(f"[{run.role}] training into {run.uri}", flush=True)
    storage.write_json(storage.join(run.uri, "run.json"), {"job": run.job, "role": run.role, **plain(run.identity())})
    shape = run.model.input_shape
    if run.alpha > 0:
        train = join_softlabels(run.data, run.softlabels, shape)
    else:
        train = in_memory(decoded(run.data, shape), ["image", "label"])
    fit(worker_spec(run), train, in_memory(decoded(run.val, shape), ["image", "label"]), run.uri, run.resources)
    return run.uri


def students(distilled: TrainingRun, scratch: TrainingRun | None, compute: bool = True) -> dict[str, str]:
    """Stage 2: the distilled student and, if asked, the from-scratch baseline: {"distilled"|"scratch": weights}."""
    runs = {"distilled": distilled, **({"scratch": scratch} if scratch else {})}
    return {role: storage.join(train_run(run, "distill", compute), "model.pt") for role, run in runs.items()}


def in_memory(ds: ray.data.Dataset, columns: list[str]) -> ray.data.Dataset:
    """The training columns, materialised (decoded uint8) in the object store: epochs then run no
    Ray Data tasks, so the trainer may hold every CPU of a small machine, and nothing is decoded twice."""
    return ds.select_columns(columns).materialize()


def join_softlabels(split: Split, entry: str, shape: tuple[int, int, int]) -> ray.data.Dataset:
    """Training rows joined by id to the cached soft labels. The entry is verified first (checksums,
    and each training id exactly once), so a missing or extra id is an error, never a silent drop."""
    ids = split.read_table(["id"])["id"].to_pylist()
    info = cache.verify(entry, ids)
    columns = [*TRAINING_COLUMNS[info.format.layout], *(["views"] if info.views else [])]
    joined = decoded(split, shape).join(
        cache.read(entry), join_type="inner", num_partitions=max(1, len(ids) // 10_000), on=("id",)
    )
    return in_memory(joined, ["image", "label", *columns])
