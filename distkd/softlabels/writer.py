"""The soft-label pool's actor: reads one unit of the split, runs the teacher, writes the unit's shard.

Every label row stays in the actor that computed it: the driver gets back one small record
per shard (unit index, rows, bytes, sha256), so its memory does not grow with the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import torch

from distkd.data.kinds import InputKind
from distkd.data.source import PATH, Unit
from distkd.labels.formats import Format
from distkd.softlabels import cache
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import Weights

# what the driver receives per shard; compile_seconds: torch.compile's share of the actor's first unit, else 0
RECORD = ("index", "file", "rows", "bytes", "sha256", "labelled", "compile_seconds")


class ShardWriter:
    """One teacher replica (on the GPU Ray assigned the actor, if any) that writes whole shards.

    A unit whose shard is already there (an earlier job, a concurrent writer, a retry after
    this actor was killed) is checked and described, not recomputed: each unit's ids end up in
    exactly one shard, and a shard is never replaced."""

    def __init__(
        self,
        entry: str,
        files: dict[int, str],  # unit index -> its shard, relative to the entry (cache.shard_file)
        teacher: Weights,
        inputs: InputKind,
        fmt: Format,
        views: int,
        view_seed: int,
        precision: str,
        batch_size: int,
        threads: int,
        compile: bool = False,
    ) -> None:
        torch.set_num_threads(threads)
        self.decoders = ThreadPoolExecutor(threads)  # on a GPU, decoding is what the teacher waits for
        self.entry, self.files, self.batch_size, self.inputs = entry, files, batch_size, inputs
        self.teacher = TeacherPredictor(teacher, inputs, fmt, views, view_seed, precision, compile)
        self.ahead = ThreadPoolExecutor(1)  # prepares the next batch while the teacher runs this one
        self.compile_reported = False

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.write(Unit(**unit)) for unit in batch.to_pylist()])

    def write(self, unit: Unit) -> dict:
        expected = unit.read(["id"])["id"].to_pylist()
        kept = cache.trusted_shard(self.entry, self.files[unit.index], expected)  # removes a torn or foreign file
        if kept is not None:
            return {"index": unit.index, **asdict(kept), "labelled": 0, "compile_seconds": 0.0}
        rows = unit.read()
        rows = rows.append_column(PATH, pa.array([unit.file] * len(rows), pa.string()))  # named in errors
        batches = [_numpy(rows.slice(i, self.batch_size)) for i in range(0, len(rows), self.batch_size)]
        labels = pa.concat_tables(self.teacher(batch) for batch in self.decoded(batches))
        record = cache.write_shard(self.entry, self.files[unit.index], labels, expected)
        return {"index": unit.index, **asdict(record), "labelled": len(rows), "compile_seconds": self.compiled()}

    def decoded(self, batches: list[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray | torch.Tensor]]:
        """Each batch with its input prepared on the teacher's device (images decoded: nvJPEG on a GPU, Pillow
        on a CPU), the next one prepared meanwhile."""
        pending = self.ahead.submit(self.decoded_batch, batches[0]) if batches else None
        for following in batches[1:]:
            current, pending = pending.result(), self.ahead.submit(self.decoded_batch, following)
            yield current
        if pending is not None:
            yield pending.result()

    def decoded_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray | torch.Tensor]:
        return {**batch, **self.inputs.on_device(batch, self.teacher.device, self.decoders)}

    def compiled(self) -> float:
        """torch.compile's seconds, in the record of the first unit labelled after it (0 in every other)."""
        if self.compile_reported or self.teacher.compile_seconds is None:
            return 0.0
        self.compile_reported = True
        return self.teacher.compile_seconds


def _numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
