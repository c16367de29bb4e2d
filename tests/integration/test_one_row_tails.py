"""Models that shrink the image to 1x1 before a BatchNorm layer train as they do elsewhere (issue 34 item 1): no
training step hands a worker one row, on 1 and 2 workers, held in memory and streamed. Each case is sized so that
an epoch would end in a batch of one row without the fold (BatchNorm raises "Expected more than 1 value per
channel when training" on it)."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from distkd import config
from distkd.distill.teacher import teacher_weights
from distkd.job import Job

ROWS, BATCH = 257, 32  # 8 batches of 32 and a last row; over 2 streamed workers, 16 batches of 16 and a row


def digits(folder: Path) -> Path:
    """scikit-learn's 8x8 grayscale digits as the data's Parquet shards (id, PNG bytes, label): the training rows
    in a shard of ROWS - 1 and a shard of one row (a unit of its own: a streamed worker's whole share may be that
    row), and 64 test rows."""
    images, labels = load_digits(return_X_y=True)
    pixels = (images.reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)
    folder.mkdir()

    def shard(name: str, rows: range) -> None:
        encoded = []
        for i in rows:
            buffer = io.BytesIO()
            Image.fromarray(pixels[i], mode="L").save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        split = name.split("-")[0]
        columns = {
            "id": pa.array([f"{split}/{i:04d}" for i in rows], pa.string()),
            "image": pa.array(encoded, pa.binary()),
            "label": pa.array([int(labels[i]) for i in rows], pa.int64()),
        }
        pq.write_table(pa.table(columns), folder / f"{name}.parquet")

    shard("train-00000-of-00002", range(ROWS - 1))
    shard("train-00001-of-00002", range(ROWS - 1, ROWS))
    shard("test-00000-of-00001", range(1000, 1064))
    return folder


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory) -> Path:
    return digits(tmp_path_factory.mktemp("digits") / "data")


MODELS = {  # the model, its kwargs, the data it shrinks to 1x1 and that data's settings
    "timm-resnet10t-cifar10": ("timm:resnet10t", {}, "cifar10", {}),
    "resnet9-digits": ("resnet9", {"width": 4}, "digits_data", {"mean": [0.5], "std": [0.25]}),
}


@pytest.mark.parametrize("cache", ["memory", "stream"])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", list(MODELS))
def test_a_model_that_shrinks_images_to_1x1_trains_every_row_once(ray_cluster, request, tmp_path, case, workers, cache):
    name, kwargs, dataset, settings = MODELS[case]
    data = request.getfixturevalue(dataset)
    raw = {
        "name": "one-row-tails",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(data), "limit": ROWS, "val_limit": 32, "cache": cache, **settings},
        "teacher": {"name": name, "kwargs": kwargs, "train": {"epochs": 1, "batch_size": BATCH, "augment": False}},
        "student": {"name": name, "kwargs": kwargs, "train": {"augment": False}},  # LeNet-5 needs larger images
        "resources": {"num_workers": workers, "cpus_per_worker": 1, "max_failures": 0},
    }
    job = Job.prepare(config.parse(raw, "<one-row tails>"))  # no longer refused before Ray
    run = job.teacher_run()
    teacher_weights(run)
    (epoch,) = json.loads((Path(run.uri) / "history.json").read_text())
    ids = job.train.read_table(["id"])["id"].to_pylist()
    assert len(ids) == ROWS and epoch["samples"] == ROWS
    assert epoch["id_checksum"] == sum(zlib.crc32(i.encode()) for i in ids)  # every row once
    assert len(epoch["workers"]) == workers and sum(w["samples"] for w in epoch["workers"]) == ROWS
    if (case, workers, cache) == ("resnet9-digits", 2, "stream"):
        # the unequal split gave one worker the one-row shard alone: the other trained that row in its step
        assert sorted(w["samples"] for w in epoch["workers"]) == [0, ROWS]
