"""Stage 1: run the teacher over the training split on an actor pool and cache its outputs.

The split is cut into units of ``shard_rows`` rows, one shard each. Units whose shard is
already in the entry are skipped, so a job that died part-way recomputes only the rest. Ray
Data streams the rest in order (read and decode in CPU tasks, teacher replicas on an actor
pool); the driver writes each unit's shard once all its rows are back, after checking that
they are exactly the unit's ids, so a retried task or a restarted actor cannot duplicate or
drop a row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from distkd import storage
from distkd.data.source import COLUMNS, PATH, Split, decode_batch
from distkd.softlabels import cache
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import SoftLabelSpec, require


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one Parquet file: the input of one shard; ``offset`` is the index of its
    first row in the split."""

    index: int
    file: str
    start: int
    stop: int
    offset: int


def plan(split: Split, shard_rows: int) -> list[Unit]:
    """The split's rows in use, in order, cut into units that do not cross files."""
    units, offset = [], 0
    for uri, rows in split.file_rows():
        for start in range(0, rows, shard_rows):
            units.append(Unit(len(units), uri, start, min(start + shard_rows, rows), offset + start))
        offset += rows
    return units


def read_units(batch: dict) -> Iterator[pa.Table]:
    """Ray Data UDF: the encoded rows of each unit in the batch (and their file), reading only the row groups
    needed."""
    for file, start, stop in zip(batch["file"], batch["start"], batch["stop"]):
        fs, path = storage.resolve(file)
        with fs.open_input_file(path) as f:
            parquet, first = pq.ParquetFile(f), 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if first < stop and first + rows > start:
                    table = parquet.read_row_group(group, columns=list(COLUMNS))
                    table = table.slice(max(start - first, 0), min(stop, first + rows) - max(start, first))
                    yield table.append_column(PATH, pa.array([file] * len(table), pa.string()))
                first += rows


def generate(spec: SoftLabelSpec, compute: bool = True) -> str:
    """The committed cache entry for this teacher, data and format, computing only missing shards."""
    entry = spec.uri
    if storage.is_committed(entry):
        print(f"[softlabels] reusing cached soft labels {entry}", flush=True)
        return entry
    require(compute, entry, "softlabels")
    units = plan(spec.data, spec.shard_rows)
    done = set(storage.list_files(storage.join(entry, cache.SHARDS), ".parquet"))
    missing = [u for u in units if storage.join(entry, cache.SHARDS, cache.shard_name(u.index, len(units))) not in done]
    print(
        f"[softlabels] teacher {spec.teacher.model.name} -> {entry}: {len(missing)} of {len(units)} shards to compute",
        flush=True,
    )
    started = time.perf_counter()
    ids = spec.data.read_table(["id"])["id"].to_pylist()
    labelled = compute_units(spec, missing, len(units), ids) if missing else 0
    manifest = cache.commit(spec, len(units), ids, len(missing), labelled, time.perf_counter() - started)
    print(
        f"[softlabels] committed {manifest.rows} rows in {len(units)} shards "
        f"({manifest.bytes / manifest.rows:.1f} bytes/row)",
        flush=True,
    )
    return entry


def compute_units(spec: SoftLabelSpec, units: list[Unit], count: int, ids: list[str]) -> int:
    """Run the teacher over ``units`` and write each one's shard (``ids``: the split's, in order); returns the
    rows the teacher labelled."""
    cfg, entry = spec.execution, spec.uri
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows come back unit by unit
    outputs = (
        ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units))
        .map_batches(read_units, batch_size=1, batch_format="numpy")
        .map_batches(decode_batch, fn_kwargs={"shape": spec.teacher.model.input_shape}, batch_format="numpy")
        .map_batches(
            TeacherPredictor,
            fn_constructor_kwargs={
                "model": spec.teacher.model,
                "weights": spec.teacher.uri,
                "normalize": spec.normalize,
                "fmt": spec.format,
                "views": spec.views,
                "view_seed": spec.view_seed,
                "precision": spec.precision,
            },
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            batch_size=cfg.batch_size,
            batch_format="numpy",
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
        )
    )
    pending, buffered, labelled = list(units), [], 0
    for batch in outputs.iter_batches(batch_size=None, batch_format="pyarrow"):
        buffered.append(batch)
        labelled += len(batch)
        while pending and sum(len(t) for t in buffered) >= pending[0].stop - pending[0].start:
            unit = pending.pop(0)
            rows = pa.concat_tables(buffered)
            size = unit.stop - unit.start
            write_unit(entry, unit, count, rows.slice(0, size), ids[unit.offset : unit.offset + size])
            buffered = [rows.slice(size)]
    if pending or sum(len(t) for t in buffered):
        raise cache.CacheError(f"{entry}: the teacher returned rows that do not add up to the planned shards")
    return labelled


def write_unit(entry: str, unit: Unit, count: int, rows: pa.Table, expected_ids: list[str]) -> None:
    if rows["id"].to_pylist() != expected_ids:
        raise cache.CacheError(
            f"{entry}: rows returned for shard {unit.index} are not the ids of {unit.file}[{unit.start}:{unit.stop}]"
        )
    cache.write_shard(entry, unit.index, count, rows)
