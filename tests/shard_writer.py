"""One writer of a soft-label entry, run as its own process by the concurrent-writers test:
``python -m tests.shard_writer ENTRY TAG BARRIER WRITERS``. Writes every shard of ENTRY through
``cache.write_shard`` (logits filled with TAG, so each writer's bytes differ), commits, and
prints the manifest's shard records as JSON. So that the writers race, each starts writing once
WRITERS processes have said they are ready in the folder BARRIER."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from distkd.softlabels import cache

SHARDS, ROWS, CLASSES = 8, 25, 10


def shard_ids(index: int) -> list[str]:
    return [f"sample-{index * ROWS + row:04d}" for row in range(ROWS)]


def table(index: int, tag: float) -> pa.Table:
    logits = pa.FixedSizeListArray.from_arrays(pa.array(np.full(ROWS * CLASSES, tag, np.float16)), CLASSES)
    return pa.table({"id": shard_ids(index), "logits": logits})


def main(entry: str, tag: float, barrier: Path, writers: int) -> None:
    tables = [table(i, tag) for i in range(SHARDS)]
    (barrier / f"ready-{tag}").touch()
    while len(list(barrier.iterdir())) < writers:
        time.sleep(0.01)
    records = [cache.write_shard(entry, i, SHARDS, t) for i, t in enumerate(tables)]
    ids = [i for index in range(SHARDS) for i in shard_ids(index)]
    work = {"computed_shards": SHARDS, "teacher_rows": len(ids), "teacher_seconds": 1.0}
    manifest = cache.commit(entry, {"writer test": True}, records, ids, work)
    print(json.dumps(manifest["shards"]))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
