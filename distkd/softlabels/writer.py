"""The soft-label pool's actor: reads one unit of the split, runs the teacher, writes the unit's shard.

Every label row stays in the actor that computed it: the driver gets back one small record
per shard (unit index, rows, bytes, sha256), so its memory does not grow with the data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import torch

from distkd.data.source import PATH, Unit, decode_batch
from distkd.data.transforms import Normalize
from distkd.softlabels import cache
from distkd.softlabels.formats import Format
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import Weights

RECORD = ("index", "file", "rows", "bytes", "sha256", "labelled")  # what the driver receives per shard


class ShardWriter:
    """One teacher replica (on the GPU Ray assigned the actor, if any) that writes whole shards.

    A unit whose shard is already there (an earlier job, a concurrent writer, a retry after
    this actor was killed) is checked and described, not recomputed: each unit's ids end up in
    exactly one shard, and a shard is never replaced."""

    def __init__(
        self,
        entry: str,
        count: int,
        teacher: Weights,
        normalize: Normalize,
        fmt: Format,
        views: int,
        view_seed: int,
        precision: str,
        batch_size: int,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        self.decoders = ThreadPoolExecutor(threads)  # on a GPU, decoding is what the teacher waits for
        self.entry, self.count, self.batch_size, self.shape = entry, count, batch_size, teacher.model.input_shape
        self.teacher = TeacherPredictor(teacher, normalize, fmt, views, view_seed, precision)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.write(Unit(**unit)) for unit in batch.to_pylist()])

    def write(self, unit: Unit) -> dict:
        expected = unit.read(["id"])["id"].to_pylist()
        kept = cache.trusted_shard(self.entry, unit.index, self.count, expected)  # removes a torn or foreign file
        if kept is not None:
            return {"index": unit.index, **asdict(kept), "labelled": 0}
        rows = unit.read()
        rows = rows.append_column(PATH, pa.array([unit.file] * len(rows), pa.string()))  # named in errors
        labels = pa.concat_tables(
            self.teacher(decode_batch(_numpy(rows.slice(i, self.batch_size)), self.shape, self.decoders))
            for i in range(0, len(rows), self.batch_size)
        )
        self.check(unit, expected, labels["id"].to_pylist())
        record = cache.write_shard(self.entry, unit.index, self.count, labels)
        return {"index": unit.index, **asdict(record), "labelled": len(rows)}

    def check(self, unit: Unit, expected: list[str], ids: list[str]) -> None:
        if ids != expected:
            raise cache.CacheError(
                f"{self.entry}: shard {unit.index} does not hold exactly the ids of "
                f"{unit.file}[{unit.start}:{unit.stop}]"
            )


def _numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
