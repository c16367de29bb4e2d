"""Stage 1: run the teacher over the training split on an actor pool and cache its outputs.

The split is cut into units of ``shard_rows`` rows, one shard each. Each unit goes whole to one
call of a teacher actor, which reads exactly the unit's rows, labels them, checks the ids and
writes the shard under its final name (create-if-absent); a unit whose shard is already there
is only checked, so a job that died part-way recomputes only the rest, and a retried call after
a killed actor cannot duplicate or drop a row. The driver gets one record per shard and writes
the manifest and the commit marker; no row order or process-wide Ray Data setting is relied on.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import ray.data

from distkd import storage
from distkd.config import SoftLabelConfig
from distkd.data.source import Unit
from distkd.data.transforms import PAD, Normalize
from distkd.distill.train import ModelSpec
from distkd.job import Job, require
from distkd.models import weights_hash
from distkd.softlabels import cache
from distkd.softlabels.formats import Format
from distkd.softlabels.writer import RECORD, ShardWriter


def output_format(job: Job) -> Format:
    cfg = job.config.softlabels
    if cfg.format == "dense":
        return Format("dense", cfg.dtype)
    return Format("topk", cfg.dtype, cfg.top_k or job.num_classes, cfg.temperature)


def key_inputs(job: Job, teacher_weights: str) -> dict:
    cfg = job.config.softlabels
    return {
        "teacher": {
            "name": job.teacher.name,
            "kwargs": job.teacher.kwargs,
            "num_classes": job.num_classes,
            "weights_sha256": weights_hash(teacher_weights),
        },
        "data": job.train.identity(),
        "transform": {"input_shape": list(job.teacher.input_shape), **job.normalize.identity()},
        "views": {"count": cfg.views, "seed": cfg.view_seed, "pad": PAD} if cfg.views else None,
        "format": asdict(output_format(job)),
        "shard_rows": cfg.shard_rows,
    }


def entry_uri(job: Job, teacher_weights: str) -> tuple[str, dict]:
    inputs = key_inputs(job, teacher_weights)
    return job.uri("softlabels", cache.key(inputs)), inputs


def generate(job: Job, teacher_weights: str, compute: bool = True) -> str:
    """The committed cache entry for this teacher, data and format, computing only missing shards."""
    entry, inputs = entry_uri(job, teacher_weights)
    if storage.is_committed(entry):
        print(f"[softlabels] reusing cached soft labels {entry}", flush=True)
        return entry
    require(compute, entry, "softlabels")
    units = job.train.units(job.config.softlabels.shard_rows)
    done = len(storage.list_files(storage.join(entry, cache.SHARDS), ".parquet"))
    print(
        f"[softlabels] teacher {job.teacher.name} -> {entry}: {len(units) - done} of {len(units)} shards to compute",
        flush=True,
    )
    started = time.perf_counter()
    records = label_units(
        entry, units, job.teacher, teacher_weights, job.normalize, output_format(job), job.config.softlabels
    )
    work = {
        "computed_shards": sum(1 for r in records if r["labelled"]),
        "teacher_rows": sum(r["labelled"] for r in records),
        "teacher_seconds": round(time.perf_counter() - started, 3),
    }
    shards = [{k: r[k] for k in ("file", "rows", "bytes", "sha256")} for r in records]
    manifest = cache.commit(entry, inputs, shards, work)
    print(
        f"[softlabels] committed {manifest['rows']} rows in {len(units)} shards "
        f"({manifest['bytes'] / manifest['rows']:.1f} bytes/row)",
        flush=True,
    )
    return entry


def label_units(
    entry: str,
    units: list[Unit],
    teacher: ModelSpec,
    weights: str,
    normalize: Normalize,
    fmt: Format,
    cfg: SoftLabelConfig,
) -> list[dict]:
    """Each unit's shard written (or found) by a teacher actor; returns their records in unit order,
    after checking there is one per unit and that it holds the unit's rows."""
    records = (
        ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units))
        .map_batches(
            ShardWriter,
            fn_constructor_kwargs={
                "entry": entry,
                "count": len(units),
                "model": teacher,
                "weights": weights,
                "normalize": normalize,
                "fmt": fmt,
                "views": cfg.views,
                "view_seed": cfg.view_seed,
                "precision": cfg.precision,
                "batch_size": cfg.batch_size,
                "threads": max(1, int(cfg.cpus_per_actor)),
            },
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
        )
        .take_all()
    )
    by_unit = {r["index"]: {k: r[k] for k in RECORD} for r in records}
    wrong = [u.index for u in units if u.index not in by_unit or by_unit[u.index]["rows"] != u.rows]
    if wrong or len(records) != len(units):
        raise cache.CacheError(
            f"{entry}: the teacher actors did not return one whole shard per unit (e.g. {wrong[:3]})"
        )
    return [by_unit[u.index] for u in units]
