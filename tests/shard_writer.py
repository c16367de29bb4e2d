"""One writer of a job's soft-label entry, run as its own process by the concurrent-writers test:
``python -m tests.shard_writer JOB.yaml TAG BARRIER WRITERS``. Writes every shard of the job's entry
through ``cache.write_shard`` (each unit's ids, logits filled with TAG so that each writer's bytes
differ), commits, and prints the entry and the manifest's shard records as JSON. So that the writers
race, each starts writing once WRITERS processes have said they are ready in the folder BARRIER."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from distkd import config
from distkd.job import Job
from distkd.softlabels import cache


def table(ids: list[str], tag: float, classes: int) -> pa.Table:
    logits = pa.FixedSizeListArray.from_arrays(pa.array(np.full(len(ids) * classes, tag, np.float16)), classes)
    return pa.table({"id": ids, "logits": logits})


def main(path: str, tag: float, barrier: Path, writers: int) -> None:
    job = Job.prepare(config.load(path), source=path)
    spec = job.softlabel_spec(job.config.teacher.weights)
    units = spec.data.units(spec.shard_rows)
    ids = spec.data.read_table(["id"])["id"].to_pylist()
    tables = [table(ids[u.offset : u.offset + u.stop - u.start], tag, job.num_classes) for u in units]
    (barrier / f"ready-{tag}").touch()
    while len(list(barrier.iterdir())) < writers:
        time.sleep(0.01)
    records = [
        cache.write_shard(spec.uri, cache.shard_file(spec, u), t, t["id"].to_pylist()) for u, t in zip(units, tables)
    ]
    manifest = cache.commit(spec, tuple(records), len(units), len(ids), 1.0)
    print(json.dumps({"entry": spec.uri, "shards": [dataclasses.asdict(s) for s in manifest.shards]}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
