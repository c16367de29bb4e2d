"""What runs is what was hashed: weights and data that change under a running job are refused, and a split's
identity is computed once per run (issue 16, item 6)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distkd import content
from distkd.data.inputs import ImageInput
from distkd.data.source import InputChanged, Split, Unit
from distkd.data.transforms import Normalize
from distkd.labels.formats import Format
from distkd.models import weights_hash
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import ModelSpec, Weights

MODEL = ModelSpec("lenet5", {}, 10, (3, 32, 32))
IMAGES = ImageInput("image", (3, 32, 32), Normalize((0.5,) * 3, (0.25,) * 3))


@pytest.fixture
def weights(tmp_path) -> Weights:
    """LeNet-5 weights as the job hashes them on the driver."""
    path = tmp_path / "teacher.pt"
    torch.save(MODEL.build().state_dict(), path)
    return Weights(MODEL, str(path), weights_hash(str(path)))


def test_weights_load_only_as_hashed(weights):
    model = weights.load()
    expected = torch.load(weights.uri, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_weights_rewritten_after_hashing_are_refused(weights):
    other = MODEL.build()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    torch.save(other.state_dict(), Path(weights.uri))  # at the same path, while the job runs
    teacher = TeacherPredictor(weights, IMAGES, Format("dense", "float16"))
    batch = {"id": np.array(["a"]), "image": np.zeros((1, 3, 32, 32), np.uint8)}
    for load in (weights.load, lambda: teacher(batch)):  # what each actor does: refused there, by URI
        with pytest.raises(InputChanged, match=f"{weights.uri}: weights changed since the job hashed them"):
            load()


@pytest.fixture
def shard(tmp_path, cifar10) -> Path:
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(cifar10 / "train-00000-of-00005.parquet").slice(0, 100), path, row_group_size=50)
    return path


def rewrite(path: Path) -> None:
    """The shard written again with one row less: another version of the data at the same path."""
    pq.write_table(pq.read_table(path).slice(1), path, row_group_size=50)


def test_data_rewritten_after_open_is_refused_where_it_is_read(shard):
    split = Split.open(str(shard.parent), "train")
    fingerprint, units = split.fingerprint(), split.units(50)
    rewrite(shard)
    assert split.fingerprint() == fingerprint  # the run's identity does not move under it
    shipped = Unit(**dataclasses.asdict(units[1]))  # as an actor receives it
    for read in (shipped.read, lambda: split.read_table(["id"])):
        with pytest.raises(InputChanged, match=f"{shard}: changed since the job opened it"):
            read()


def test_data_rewritten_before_its_first_fingerprint_is_refused(shard):
    split = Split.open(str(shard.parent), "train")
    rewrite(shard)
    with pytest.raises(InputChanged, match=f"{shard}: changed since the job opened it"):
        split.fingerprint()


def test_fingerprint_is_computed_once_and_travels_with_the_split(shard, monkeypatch):
    split = Split.open(str(shard.parent), "train")
    fingerprint = split.fingerprint()
    monkeypatch.setattr(content, "sha256", lambda uri: pytest.fail(f"{uri} hashed again"))
    assert split.identity()["fingerprint"] == fingerprint
    assert pickle.loads(pickle.dumps(split)).fingerprint() == fingerprint  # as Ray ships it to a worker
