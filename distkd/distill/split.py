"""How a training run's datasets reach its workers: ``UnequalSplit``, the dataset config ``fit`` gives Ray Train.

A module of its own, importing no torch: Ray Train's dataset manager, a process of each run, unpickles it (an
import of torch there costs 2 s of CPU)."""

from __future__ import annotations

import copy

import ray.train
from ray.data import ExecutionOptions


class UnequalSplit(ray.train.DataConfig):
    """Ray Train's dataset config, except that the datasets it splits are cut unequally: its equal split
    leaves out up to ``world - 1`` rows an epoch to even the shares, while here every row goes to exactly one
    worker (``StreamedBatches`` keeps the workers in step; validation only sums at the end). It keeps its own
    copy of what it splits and with which options: Ray's are private attributes."""

    def __init__(self, datasets_to_split: list[str], execution_options: dict[str, ExecutionOptions] | None = None):
        super().__init__(datasets_to_split=datasets_to_split, execution_options=execution_options)
        self.split = frozenset(datasets_to_split)
        self.options = execution_options or {}

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        split = self.split & set(datasets)  # Ray Train V2 configures one dataset at a time
        whole = {name: ds for name, ds in datasets.items() if name not in split}
        output = super().configure(whole, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in split:
            ds = datasets[name].copy(datasets[name])
            ds.set_name(name)
            ds.context.execution_options = copy.deepcopy(self.options.get(name) or self.default_ingest_options())
            shards = ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for shard, iterator in zip(output, shards):
                shard[name] = iterator
        return output
