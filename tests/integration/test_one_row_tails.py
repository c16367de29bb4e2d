"""Models that shrink the image to 1x1 before a BatchNorm layer train as they do elsewhere (issue 34 item 1): no
training step hands a worker one row, on 1 and 2 workers, held in memory and streamed. Each case is sized so that
an epoch would end in a batch of one row without the fold (BatchNorm raises "Expected more than 1 value per
channel when training" on it). Four runs cover every pair: the 4 ways of feeding the small ResNet on digits each
meet one another once, and timm's ResNet (the model the fold was first refused for) one of them, 1 worker held in
memory, as the fold does not depend on the model (tests/unit/test_batches.py holds the fold itself). They train
two at once (test_training's way): the held cases one after another beside the streamed ones, at half a CPU a
worker, so the session's 2 CPUs hold both runs' workers and a streamed run's read tasks wait at most for a held
run, which needs no task once it trains."""

from __future__ import annotations

import io
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
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


CACHES = ("memory", "stream")
Case = tuple[str, int, str]  # (MODELS key, workers, cache)
CASES: list[Case] = [
    ("timm-resnet10t-cifar10", 1, "memory"),
    ("resnet9-digits", 1, "stream"),
    ("resnet9-digits", 2, "memory"),
    ("resnet9-digits", 2, "stream"),
]


def case_job(case: Case, data: Path, store: Path) -> Job:
    name, kwargs, _, settings = MODELS[case[0]]
    workers, cache = case[1:]
    raw = {
        "name": "one-row-tails",
        "store": str(store),
        "data": {"uri": str(data), "limit": ROWS, "val_limit": 32, "cache": cache, **settings},
        "teacher": {"name": name, "kwargs": kwargs, "train": {"epochs": 1, "batch_size": BATCH, "augment": False}},
        "student": {"name": name, "kwargs": kwargs, "train": {"augment": False}},  # LeNet-5 needs larger images
        "resources": {"num_workers": workers, "cpus_per_worker": 0.5, "max_failures": 0},
    }
    return Job.prepare(config.parse(raw, "<one-row tails>"))  # no longer refused before Ray


@pytest.fixture(scope="module")
def trained(ray_cluster, request, tmp_path_factory) -> dict[Case, tuple[Job, list[dict]] | Exception]:
    """Each selected case's job and its teacher's history, or the error its training raised; the held cases train one
    after another in one thread, the streamed ones in another."""
    cases = [
        tuple(item.callspec.params[name] for name in ("case", "workers", "cache"))
        for item in request.session.items
        if item.module is request.module and "trained" in item.fixturenames
    ]  # only those this session runs (`-k digits`: three)
    jobs = {c: case_job(c, request.getfixturevalue(MODELS[c[0]][2]), tmp_path_factory.mktemp("store")) for c in cases}

    def train(lane: list[Case]) -> dict[Case, tuple[Job, list[dict]] | Exception]:
        outcomes = {}
        for c in lane:
            try:
                run = jobs[c].teacher_run()
                teacher_weights(run)
                outcomes[c] = jobs[c], json.loads((Path(run.uri) / "history.json").read_text())
            except Exception as error:  # noqa: BLE001 - raised by the case's own test
                outcomes[c] = error
        return outcomes

    with ThreadPoolExecutor(len(CACHES)) as pool:
        lanes = pool.map(train, ([c for c in cases if c[2] == cache] for cache in CACHES))
        return {c: outcome for lane in lanes for c, outcome in lane.items()}


@pytest.mark.parametrize(("case", "workers", "cache"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_a_model_that_shrinks_images_to_1x1_trains_every_row_once(trained, case, workers, cache):
    outcome = trained[case, workers, cache]
    if isinstance(outcome, Exception):
        raise outcome
    job, (epoch,) = outcome
    ids = job.train.read_table(["id"])["id"].to_pylist()
    assert len(ids) == ROWS and epoch["samples"] == ROWS
    assert epoch["id_checksum"] == sum(zlib.crc32(i.encode()) for i in ids)  # every row once
    assert len(epoch["workers"]) == workers and sum(w["samples"] for w in epoch["workers"]) == ROWS
    if (case, workers, cache) == ("resnet9-digits", 2, "stream"):
        # the unequal split gave one worker the one-row shard alone: the other trained that row in its step
        assert sorted(w["samples"] for w in epoch["workers"]) == [0, ROWS]
