"""Snapshots of a small catalogue for the label-store tests (unit and integration): four training files of ROWS
rows and a test split, hard-linked into a folder per snapshot, and the soft-label spec of a fixed LeNet-5 teacher."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import torch

from distkd import config
from distkd.job import Job
from distkd.labels.ensemble import Ensemble
from distkd.models.students import LeNet5
from distkd.specs import SoftLabelSpec, SoftTargets

ROWS = 60  # per data file


def catalogue(tmp_path_factory, cifar10) -> dict[str, Path]:
    """Four training files of ROWS rows each (and a test split), to build snapshots from."""
    folder = tmp_path_factory.mktemp("files")
    source = pq.read_table(cifar10 / "train-00000-of-00005.parquet")
    out = {}
    for i in range(4):
        out[f"train-{i}"] = folder / f"train-{i:05d}.parquet"
        pq.write_table(source.slice(i * ROWS, ROWS), out[f"train-{i}"])
    out["test"] = folder / "test-00000.parquet"
    pq.write_table(pq.read_table(cifar10 / "test-00000-of-00001.parquet").slice(0, 20), out["test"])
    return out


def snapshot(folder: Path, files: dict[str, Path], *names: str) -> Path:
    folder.mkdir()
    for name in (*names, "test"):
        os.link(files[name], folder / files[name].name)
    return folder


def spec_for(data: Path, store: Path, shard_rows: int = 25) -> SoftLabelSpec:
    weights = store.parent / "teacher.pt"
    raw = {
        "name": "store",
        "store": str(store),
        "data": {"uri": str(data), "val_limit": 10, "num_classes": 10},
        "teacher": {"name": "lenet5", "weights": str(weights)},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 10, "augment": False}},
        "softlabels": {"shard_rows": shard_rows},
        "stages": ["softlabels"],
    }
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(LeNet5(10).state_dict(), weights)
    job = Job.prepare(config.parse(raw, "<test>"))
    return job.softlabel_spec(str(weights))


def one_entry(entry: str) -> SoftTargets:
    """The soft labels of one committed entry, as a distilled run of one teacher reads them."""
    return SoftTargets((entry,), Ensemble((entry.rstrip("/").rsplit("/", 1)[-1],), (1.0,), "probs"))


def shard_files(store: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (store / "softlabels" / "shards").rglob("*.parquet")}
