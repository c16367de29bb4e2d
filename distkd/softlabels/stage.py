"""Stage 1: run the teacher over the training split on an actor pool and cache its logits."""

from __future__ import annotations

import time

import ray.data

from distkd import storage
from distkd.data.source import decode_batch
from distkd.job import Job, require
from distkd.models import weights_hash
from distkd.softlabels import cache
from distkd.softlabels.teacher import TeacherPredictor


def key_inputs(job: Job, teacher_weights: str) -> dict:
    return {
        "teacher": {"name": job.teacher.name, "kwargs": job.teacher.kwargs, "num_classes": job.num_classes,
                    "weights_sha256": weights_hash(teacher_weights)},
        "data": job.train.identity(),
        "transform": {"input_shape": list(job.teacher.input_shape), **job.normalize.identity()},
        "format": {"layout": "dense", "dtype": job.config.softlabels.dtype},
    }


def entry_uri(job: Job, teacher_weights: str) -> tuple[str, dict]:
    inputs = key_inputs(job, teacher_weights)
    return job.uri("softlabels", cache.key(inputs)), inputs


def generate(job: Job, teacher_weights: str, compute: bool = True) -> str:
    """The committed cache entry for this teacher and data, computed only when missing."""
    entry, inputs = entry_uri(job, teacher_weights)
    if storage.is_committed(entry):
        print(f"[softlabels] reusing cached soft labels {entry}", flush=True)
        return entry
    require(compute, entry, "softlabels")
    storage.remove(entry)  # an uncommitted leftover of a job that died
    cfg = job.config.softlabels
    print(f"[softlabels] running the teacher ({job.teacher.name}) into {entry}", flush=True)
    started = time.perf_counter()
    logits = job.train.read().map_batches(decode_batch, batch_format="numpy").map_batches(
        TeacherPredictor,
        fn_constructor_kwargs={"model": job.teacher, "weights": teacher_weights, "normalize": job.normalize,
                               "dtype": cfg.dtype, "precision": cfg.precision},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        batch_size=cfg.batch_size, batch_format="numpy", num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
    )
    fs, path = storage.resolve(storage.join(entry, cache.SHARDS))
    logits.write_parquet(path, filesystem=fs)
    manifest = cache.write_manifest(entry, inputs, len(job.train.read_labels()), time.perf_counter() - started)
    print(f"[softlabels] committed {manifest['rows']} rows in {len(manifest['shards'])} shards "
          f"({manifest['rows_per_second']} rows/s)", flush=True)
    return entry
