"""Stage 1: run the teacher over the training split on an actor pool and cache its outputs.

The split is cut into units of ``shard_rows`` rows, one shard each, named by the unit's inputs
(``cache.shard_file``). A shard that a committed entry lists is reused as that entry recorded it,
so a snapshot that grew by a file labels that file alone and one that lost a file runs no teacher.
Each other unit goes whole to one call of a teacher actor, which reads exactly the unit's rows,
labels them, checks the ids and writes the shard under its final name (create-if-absent); a unit
whose shard is already there is only checked, so a job that died part-way recomputes only the
rest, and a retried call after a killed actor cannot duplicate or drop a row. The driver gets one
record per shard and writes the manifest and the commit marker, all under a writer's lease
(``leases``) that keeps ``cache gc`` off the shards; no row order or Ray Data setting is relied on.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import ray.data

from distkd import console, labelstore
from distkd.data.source import Unit
from distkd.softlabels import cache, leases
from distkd.softlabels.writer import RECORD, ShardWriter
from distkd.specs import SoftLabelSpec, require


def generate(spec: SoftLabelSpec, compute: bool = True) -> str:
    """The committed cache entry for this teacher, data and format, computing only missing shards."""
    entry = spec.uri
    if labelstore.is_committed(entry):
        console.reusing("softlabels", "cached soft labels", entry)
        return entry
    require(compute, entry, "softlabels")
    with leases.hold(spec.store, leases.WRITERS):
        leases.wait_for_collectors(spec.store)
        plan = cache.shard_plan(spec)
        what = f"labelling with teacher {spec.teacher.model.name}: {describe(plan, spec)}"
        with console.computing("softlabels", what, entry):
            started = time.perf_counter()
            written = {r["index"]: r for r in label_units(spec, plan.to_write)}
            shards = tuple(
                labelstore.ShardRecord(**{k: written[u.index][k] for k in ("file", "rows", "bytes", "sha256")})
                if u.index in written
                else plan.listed[u.index][0]
                for u in plan.units
            )
            computed = sum(1 for r in written.values() if r["labelled"])
            labelled = sum(r["labelled"] for r in written.values())
            manifest = cache.commit(spec, shards, computed, labelled, time.perf_counter() - started)
            unit, per_row = manifest.unit, manifest.positions
            size = f"{manifest.bytes / (manifest.rows * per_row):.1f} bytes/{unit}"
            print(
                f"[softlabels] committed {manifest.rows * per_row} {unit}s in {len(shards)} shards "
                f"({size}; the teacher ran on {labelled * per_row})",
                flush=True,
            )
            if compiled := [r["compile_seconds"] for r in written.values() if r["compile_seconds"]]:
                longest = f"{max(compiled):.1f} s (longest of {len(compiled)} actors)"
                print(f"[softlabels] torch.compile of the teacher: {longest}", flush=True)
    return entry


def describe(plan: cache.ShardPlan, spec: SoftLabelSpec) -> str:
    """``<to label> of <total> rows to label`` (a language model's tokens: ``Task.unit``), and where the other shards
    come from."""
    reused = [f"{n} from {key}" for key, n in plan.reused_from().items()]
    if plan.present:
        reused.append(f"{len(plan.present)} written by an unfinished job, to check")
    shards = f"; shards reused: {', '.join(reused)}" if reused else ""
    per_row, unit = spec.task.positions(spec.inputs), spec.task.unit
    return f"{plan.to_label * per_row} of {plan.rows * per_row} {unit}s to label ({len(plan.units)} shards{shards})"


def writer_arguments(spec: SoftLabelSpec, units: list[Unit]) -> dict:
    """What each teacher actor's ShardWriter is built with, to write the shards of ``units``."""
    return {
        "entry": spec.uri,
        "files": {u.index: cache.shard_file(spec, u) for u in units},
        "teacher": spec.teacher,
        "inputs": spec.inputs,
        "fmt": spec.format,
        "views": spec.views,
        "view_seed": spec.view_seed,
        "precision": spec.precision,
        "batch_size": spec.execution.batch_size,
        "threads": max(1, int(spec.execution.cpus_per_actor)),
        "compile": spec.execution.compile,
    }


def label_units(spec: SoftLabelSpec, units: list[Unit]) -> list[dict]:
    """Each unit's shard written (or found) by a teacher actor; returns their records in unit order, after
    checking there is one per unit and that it holds the unit's rows. No actor starts for no units."""
    cfg, entry = spec.execution, spec.uri
    if not units:
        return []
    written = ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units)).map_batches(
        ShardWriter,
        fn_constructor_kwargs=writer_arguments(spec, units),
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
        raise labelstore.CacheError(
            f"{entry}: teacher actors did not return one whole shard per unit (e.g. {wrong[:3]})"
        )
    return [by_unit[u.index] for u in units]
