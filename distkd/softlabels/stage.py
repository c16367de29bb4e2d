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

from distkd import console, storage
from distkd.data.source import Unit
from distkd.softlabels import cache
from distkd.softlabels.writer import RECORD, ShardWriter
from distkd.specs import SoftLabelSpec, require


def generate(spec: SoftLabelSpec, compute: bool = True) -> str:
    """The committed cache entry for this teacher, data and format, computing only missing shards."""
    entry = spec.uri
    if cache.is_committed(entry):
        console.reusing("softlabels", "cached soft labels", entry)
        return entry
    require(compute, entry, "softlabels")
    units = spec.data.units(spec.shard_rows)
    done = len(storage.list_files(storage.join(entry, cache.SHARDS), ".parquet"))
    what = f"labelling with teacher {spec.teacher.model.name}: {len(units) - done} of {len(units)} shards to compute"
    with console.computing("softlabels", what, entry):
        started = time.perf_counter()
        records = label_units(spec, units)
        shards = tuple(cache.ShardRecord(r["file"], r["rows"], r["bytes"], r["sha256"]) for r in records)
        computed, labelled = sum(1 for r in records if r["labelled"]), sum(r["labelled"] for r in records)
        manifest = cache.commit(spec, shards, computed, labelled, time.perf_counter() - started)
        print(
            f"[softlabels] committed {manifest.rows} rows in {len(units)} shards "
            f"({manifest.bytes / manifest.rows:.1f} bytes/row)",
            flush=True,
        )
    return entry


def writer_arguments(spec: SoftLabelSpec, count: int) -> dict:
    """What each teacher actor's ShardWriter is built with, for an entry of ``count`` shards."""
    return {
        "entry": spec.uri,
        "count": count,
        "teacher": spec.teacher,
        "normalize": spec.normalize,
        "fmt": spec.format,
        "views": spec.views,
        "view_seed": spec.view_seed,
        "precision": spec.precision,
        "batch_size": spec.execution.batch_size,
        "threads": max(1, int(spec.execution.cpus_per_actor)),
    }


def label_units(spec: SoftLabelSpec, units: list[Unit]) -> list[dict]:
    """Each unit's shard written (or found) by a teacher actor; returns their records in unit order,
    after checking there is one per unit and that it holds the unit's rows."""
    cfg, entry = spec.execution, spec.uri
    written = ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units)).map_batches(
        ShardWriter,
        fn_constructor_kwargs=writer_arguments(spec, len(units)),
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor,
    )
    rows = sum(u.rows for u in units)
    records = list(console.progress(written.iter_rows(), rows, "softlabels", lambda r: r["rows"]))
    by_unit = {r["index"]: {k: r[k] for k in RECORD} for r in records}
    wrong = [u.index for u in units if u.index not in by_unit or by_unit[u.index]["rows"] != u.rows]
    if wrong or len(records) != len(units):
        raise cache.CacheError(f"{entry}: teacher actors did not return one whole shard per unit (e.g. {wrong[:3]})")
    return [by_unit[u.index] for u in units]
