"""Stage 2: the students (KD on the cached soft labels, and from scratch); the training runs of
stages 0 and 2 share ``train_run``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import ray
import ray.data

from distkd import console, labelstore, storage
from distkd.config import DistillConfig
from distkd.data.kinds import InputKind
from distkd.data.source import Split
from distkd.distill import streaming
from distkd.distill.fit import fit
from distkd.distill.loop import Worker
from distkd.labels.ensemble import TARGET
from distkd.resources import training_needs
from distkd.specs import SoftTargets, TrainingRun, recorded, require
from distkd.tasks import CLASSIFICATION, Task


def decoded(split: Split, inputs: InputKind) -> ray.data.Dataset:
    """The split's rows with their input prepared (images decoded to uint8, texts tokenised)."""
    return split.read().map_batches(inputs.prepare, batch_format="numpy")


def train_run(run: TrainingRun, stage: str, compute: bool) -> str:
    """The committed run folder (KD on ``run.softlabels`` when it distils); trained only when missing."""
    if storage.is_committed(run.uri):
        console.reusing(run.role, "committed run", run.uri)
        return run.uri
    require(compute, run.uri, stage)
    what = f"training {run.model.name} for {run.train.epochs} epochs" + (" on soft labels" if run.distill else "")
    with console.computing(run.role, what, run.uri):
        info = {"job": run.job, "role": run.role, **recorded(run)}
        storage.write_json(run.info_uri, info)
        inputs = run.inputs
        val = in_memory(decoded(run.val, inputs), list(dict.fromkeys([*inputs.columns, run.task.target])))
        resources, softlabels = run.resources, run.softlabels if run.distill else None
        streamed = streaming.choose(run.feed.cache, run.data, inputs) == "stream"
        if streamed:
            columns = trained_columns(inputs, run.task, softlabels)
            train = streaming.stream(run.data, columns, inputs, softlabels, run.distill)
            resources = streaming.reserve_data_cpus(resources)
        else:
            train = rows_in_memory(run.data, softlabels, inputs, run.distill, run.task)
        worker = Worker(run.trained_rows(), split=streamed, threads=max(1, int(resources.cpus_per_worker)))
        fit(run, worker, train, val, resources)
    return run.uri


def students(distilled: TrainingRun, scratch: TrainingRun | None, compute: bool = True) -> dict[str, str]:
    """Stage 2: the distilled student and, if asked, the from-scratch baseline: {"distilled"|"scratch": weights}.
    The two train at once when the cluster holds both runs' workers and their data is held in memory (a streamed
    run needs free CPUs for its reads throughout), else one after the other."""
    runs = {"distilled": distilled, **({"scratch": scratch} if scratch else {})}

    def trained(run: TrainingRun) -> str:
        train_run(run, "distill", compute)
        return run.weights_uri

    if len(runs) > 1 and together(list(runs.values())):
        with ThreadPoolExecutor(len(runs)) as pool:  # each thread's fit() waits on its own Ray Train run
            return dict(zip(runs, pool.map(trained, runs.values())))
    return {role: trained(run) for role, run in runs.items()}


def together(runs: list[TrainingRun]) -> bool:
    """Whether ``runs`` can train at once: each still to train, held in memory, all their workers on the cluster."""
    pending = [run for run in runs if not storage.is_committed(run.uri)]
    held = all(streaming.choose(run.feed.cache, run.data, run.inputs) == "memory" for run in pending)
    needs = [training_needs(run.resources) for run in pending]
    cluster = ray.cluster_resources()
    fits = all(sum(n.get(k, 0) for n in needs) <= cluster.get(k, 0) for k in ("CPU", "GPU"))
    return len(pending) > 1 and held and fits


def in_memory(ds: ray.data.Dataset, columns: list[str]) -> ray.data.Dataset:
    """The training columns, materialised (prepared: decoded uint8, token ids) in the object store: epochs then run no
    Ray Data tasks, so the trainer may hold every CPU of a small machine, and nothing is decoded twice
    (each worker reads them once, ``HeldBatches``)."""
    return ds.select_columns(columns).materialize()


def trained_columns(inputs: InputKind, task: Task, labels: SoftTargets | None) -> list[str]:
    """The columns a training step reads: the rows' (their input as ``inputs`` prepares it, the ``task``'s target),
    and those of the soft labels of ``labels`` (an ensemble's: its combined target; with the views' parameters
    where views were recorded)."""
    rows = list(dict.fromkeys(["id", *inputs.columns, task.target]))
    if labels is None:
        return rows
    manifest = labelstore.manifest(labels.entries[0])
    targets = manifest.format.training_names if len(labels.entries) == 1 else [TARGET]
    return [*rows, *targets, *(["views"] if manifest.views else [])]


def rows_in_memory(
    split: Split,
    labels: SoftTargets | None,
    inputs: InputKind,
    distill: DistillConfig | None = None,
    task: Task = CLASSIFICATION,
) -> ray.data.Dataset:
    """The training rows (with the soft labels of ``labels``) held in the object store, read by the streamed
    reader once: each unit of the split beside its own shard (every teacher's), both checked (the shard's
    checksum, its ids those of the unit in order), so every id is labelled exactly once and no join (a shuffle)
    is needed."""
    columns = trained_columns(inputs, task, labels)
    return in_memory(streaming.stream(split, columns, inputs, labels, distill), columns)
