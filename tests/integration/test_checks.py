"""Bad data and models are refused before any Ray work (exit code 2, naming the key, the file or the row), and a
bad image found by a Ray task mid-split stops the job with one message naming its row and file."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from distkd import checks, cluster, config
from distkd.cli import main
from distkd.data.source import decode
from distkd.job import Job
from distkd.models import sources

CLASSES = 4


def image(size: int = 32, mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


TYPES = {"id": pa.string(), "image": pa.binary(), "label": pa.int64()}


def write_split(
    folder: Path,
    split: str,
    images: list,
    labels: list,
    ids: list | None = None,
    types: dict | None = None,
    shard: int = 0,
) -> None:
    """Shard ``shard`` of ``split``; ids ``<split>/<i>`` unless given, columns of ``TYPES`` unless ``types`` says."""
    columns = {"id": ids or [f"{split}/{i}" for i in range(len(images))], "image": images, "label": labels}
    types = {**TYPES, **(types or {})}
    table = pa.table({c: pa.array(v, types[c]) for c, v in columns.items()})
    pq.write_table(table, folder / f"{split}-{shard}.parquet")


def dataset(folder: Path, train: dict | None = None, test: dict | None = None) -> Path:
    """8 training and 4 test rows of 32x32 RGB images, labels 0..3; ``train`` / ``test`` replace arguments."""
    folder.mkdir()
    for split, rows, changes in (("train", 8, train or {}), ("test", 4, test or {})):
        args = {"images": [image(seed=i) for i in range(rows)], "labels": [i % CLASSES for i in range(rows)]}
        write_split(folder, split, **{**args, **changes})
    return folder


def job_file(tmp_path: Path, data: Path, **changes) -> Path:
    job = {
        "name": "checks",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(data), "val_limit": 4},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 4}},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 4, "augment": False}},
        "softlabels": {"batch_size": 4, "shard_rows": 4},
        "evaluate": {"batch_size": 4},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = job
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture
def no_cluster(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was asked to start before the job was checked")

    monkeypatch.setattr(cluster, "connect", refuse)


def refused(path: Path, capsys) -> str:
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert not (path.parent / "store").exists()
    return err


@pytest.mark.parametrize(
    ("train", "test", "changes", "expected"),
    [
        (
            {"labels": ["cat", "dog"] * 4, "types": {"label": pa.string()}},
            None,
            {},
            "train-0.parquet: column 'label' holds string values; expected integer class indices",
        ),
        ({"labels": [1, 2, 3, 4] * 2}, None, {}, "class(es) 0 never occur; use 0-based labels 0..C-1"),
        ({"labels": [0, 1, 3, 0, 1, 3, 0, 1]}, None, {}, "labels 0..3, so the class count would be 4, but class(es) 2"),
        (None, {"labels": [0, 1, 7, 2]}, {}, "test-0.parquet: row id 'test/2': label 7 is outside [0, 4)"),
        (
            {"labels": [0, 1, 2, 3, -1, 1, 2, 3]},
            None,
            {"data__num_classes": 4},
            "train-0.parquet: row id 'train/4': label -1 is negative",
        ),
        (None, {"labels": [0, 1, None, 2]}, {}, "test-0.parquet: row id 'test/2': no label"),  # evaluated: labelled
        (
            {"ids": list(range(8)), "types": {"id": pa.int64()}},
            None,
            {},
            "train-0.parquet: column 'id' holds int64 values; expected strings, one unique name per row",
        ),
        (None, {"ids": ["a", "b", None, "d"]}, {}, "test-0.parquet row 2: no id (each row needs a unique string id)"),
        (
            {"ids": ["a", "b", "c", "d", "b", "e", "a", "f"]},
            None,
            {},
            "train-0.parquet row 4: id 'b' is also the id of {data}/train-0.parquet row 1 (2 row(s) of split 'train' "
            "repeat an earlier id)",
        ),
        (
            {"images": ["not bytes"] * 8, "types": {"image": pa.string()}},
            None,
            {},
            # strings are a text input (inputs by column, data/inputs.py): not the test split's kind
            "but 'data.train_split' has a text input in column 'image'; every split needs the same input",
        ),
        (None, {"images": [], "labels": []}, {}, "key 'data.test_split': split 'test' of "),
        (
            {"images": [b"not an image"] + [image(seed=i) for i in range(7)]},
            None,
            {},
            "train-0.parquet: row id 'train/0': not an image Pillow can decode (unknown or corrupt format)",
        ),
        (
            {"images": [image(mode="L", seed=i) for i in range(8)]},
            None,
            {},
            "keys 'data.mean' and 'data.std' need 1 values (one per channel; 'data.channels' sets",
        ),
        (
            {"images": [image(size=8, seed=i) for i in range(8)]},
            {"images": [image(size=8, seed=i) for i in range(4)]},
            {"stages": ["distill"]},  # a teacher that does not train: ResNet-9 runs (in eval mode) on 8x8 images
            "keys 'student.name', 'student.kwargs': the model fails on a batch of the data's shape [3, 8, 8]",
        ),
        (  # torchvision's ResNet-18 without the CIFAR stem takes 3 channels whatever the data has
            {"images": [image(mode="L", seed=i) for i in range(8)]},
            {"images": [image(mode="L", seed=i) for i in range(4)]},
            {"teacher__name": "resnet18", "teacher__kwargs": {}, "data__mean": [0.5], "data__std": [0.25]},
            "keys 'teacher.name', 'teacher.kwargs': the model fails on a batch of the data's shape [1, 32, 32] "
            "(channels, height, width; or tokens of a text input): RuntimeError",
        ),
    ],
)
def test_bad_data_is_refused_before_ray_starts(tmp_path, capsys, no_cluster, train, test, changes, expected):
    err = refused(job_file(tmp_path, dataset(tmp_path / "data", train, test), **changes), capsys)
    assert expected.replace("{data}", str(tmp_path / "data")) in err


def second_train_shard(**changes) -> Callable[[Path], dict]:
    """A setup that adds ``train-1.parquet`` (4 rows, ids ``more/<i>`` unless ``changes`` say) to the data."""

    def setup(tmp_path: Path) -> dict:
        ids = [f"more/{i}" for i in range(4)]
        args = {"images": [image(seed=i) for i in range(4)], "labels": [0, 1, 2, 3], "ids": ids}
        write_split(tmp_path / "data", "train", shard=1, **{**args, **changes})
        return {}

    return setup


def not_parquet(tmp_path: Path) -> dict:
    (tmp_path / "data" / "train-1.parquet").write_bytes(b"PAR1 not Parquet")
    return {}


def a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda tmp_path: {"store": "gs://bucket/store"}, "key 'store': gs:// cannot hold a store: its outputs are"),
        (lambda tmp_path: {"store": "hdfs://namenode/store"}, "or on s3://bucket/prefix (got 'hdfs://namenode/store')"),
        (lambda tmp_path: {"store": str(a_file(tmp_path))}, "a-file is a file; expected a folder"),
        (lambda tmp_path: {"store": str(a_file(tmp_path) / "store")}, "a-file/store is under "),
        (lambda tmp_path: {"store": "/proc/distkd-store"}, "key 'store': /proc/distkd-store: cannot write there"),
        (
            second_train_shard(types={"label": pa.int32()}),
            "train-1.parquet: column(s) 'label' (int32) differ from ",
        ),
        (
            second_train_shard(ids=["more/0", "train/5", "more/2", "more/3"]),
            "train-1.parquet row 1: id 'train/5' is also the id of {data}/train-0.parquet row 5",
        ),
        (not_parquet, "train-1.parquet: not a readable Parquet file (ArrowInvalid: "),
        (
            lambda tmp_path: {"teacher__kwargs": {"width": -1}},
            "key 'teacher.kwargs': cannot build 'resnet9' with {'width': -1}: RuntimeError: Trying to create tensor "
            "with negative dimension",
        ),
    ],
)
def test_bad_stores_shards_and_models_are_refused_before_ray_starts(tmp_path, capsys, no_cluster, setup, expected):
    data = dataset(tmp_path / "data")
    err = refused(job_file(tmp_path, data, **setup(tmp_path)), capsys)
    assert expected.replace("{data}", str(data)) in err


def test_an_evaluated_split_with_a_label_out_of_range_is_named(tmp_path, capsys, no_cluster):
    data = dataset(tmp_path / "data")
    write_split(data, "extra", [image(seed=i) for i in range(3)], [0, 9, 1])
    err = refused(job_file(tmp_path, data, evaluate__split="extra"), capsys)
    assert "extra-0.parquet: row id 'extra/1': label 9 is outside [0, 4)" in err
    assert "the class count 4 is 1 + the largest training label" in err


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (lambda: sources.build("lenet5", CLASSES, 3, 32), "holds weights of another architecture or size: missing"),
        (
            lambda: sources.build("resnet9", CLASSES, 3, 32, width=8),
            "other shapes: net.0.0.weight [8, 3, 3, 3] (model [4, 3, 3, 3])",
        ),
        (lambda: sources.build("resnet9", 10, 3, 32, width=4), "net.8.weight [10, 32] (model [4, 32])"),
        (lambda: b"garbage", "not a PyTorch state_dict file (UnpicklingError"),
    ],
)
def test_weights_that_do_not_fit_the_model_are_refused(tmp_path, capsys, no_cluster, weights, expected):
    made, path = weights(), tmp_path / "teacher.pt"
    path.write_bytes(made) if isinstance(made, bytes) else torch.save(made.state_dict(), path)
    data = dataset(tmp_path / "data")
    err = refused(job_file(tmp_path, data, teacher__weights=str(path)), capsys)
    assert f"key 'teacher.weights': {path}" in err and expected in err

    model = {"role": "teacher", "name": "resnet9", "kwargs": {"width": 4}, "weights": str(path)}
    err = refused(job_file(tmp_path, data, stages=["evaluate"], evaluate__models=[model]), capsys)
    assert f"key 'evaluate.models.0.weights': {path}" in err and expected in err


def test_grayscale_images_are_one_channel_unless_data_channels_says_three(tmp_path):
    gray = [image(mode="L", seed=i) for i in range(8)]
    data = dataset(tmp_path / "data", train={"images": gray}, test={"images": gray[:4]})
    pixels = decode(gray[0])
    assert pixels.shape == (1, 32, 32)
    np.testing.assert_array_equal(pixels[0], np.asarray(Image.open(io.BytesIO(gray[0]))))

    raw = yaml.safe_load(job_file(tmp_path, data, data__mean=[0.5], data__std=[0.25]).read_text())
    job = Job.prepare(config.parse(raw, "<gray>"))
    assert job.teacher.input_shape == job.student.input_shape == (1, 32, 32)
    raw["data"].update(channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    assert Job.prepare(config.parse(raw, "<rgb>")).student.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(decode(gray[0], channels=3), np.repeat(pixels, 3, axis=0))


@pytest.mark.parametrize(
    ("split", "row", "bad", "changes", "expected"),
    [
        # found while decoding the training rows for the teacher (Ray Data tasks, materialised)
        ("train", 5, b"\x89PNG garbage", {}, "not an image Pillow can decode"),
        # found by the soft-label stage (its own reader, an actor pool)
        ("train", 6, image(size=16), {"stages": ["softlabels"]}, "image is 16x16 pixels, expected 32x32"),
        # found by an evaluation job on its split
        ("test", 3, image(size=16), {"stages": ["evaluate"]}, "image is 16x16 pixels, expected 32x32"),
    ],
)
def test_a_bad_image_mid_split_stops_the_job_with_one_message(
    ray_cluster, tmp_path, capsys, split, row, bad, changes, expected
):
    rows = 8 if split == "train" else 4
    images = [image(seed=i) for i in range(rows)]
    images[row] = bad
    data = dataset(tmp_path / "data", **{split: {"images": images}})
    if "stages" in changes:  # start from given teacher weights: the stage under test is the first to run
        torch.save(sources.build("resnet9", CLASSES, 3, 32, width=4).state_dict(), tmp_path / "teacher.pt")
        changes = {**changes, "teacher__weights": str(tmp_path / "teacher.pt")}
    if changes.get("stages") == ["evaluate"]:
        model = {"role": "teacher", "name": "resnet9", "kwargs": {"width": 4}, "weights": str(tmp_path / "teacher.pt")}
        changes["evaluate__models"] = [model]
    path = job_file(tmp_path, data, **changes)
    assert main(["pipeline", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distkd:")]
    assert lines == [lines[0]] and f"{split}-0.parquet: row id '{split}/{row}': {expected}" in lines[0]


def test_the_store_probe_leaves_what_it_found(tmp_path):
    store = tmp_path / "a" / "b" / "store"
    checks.local_store(str(store))
    assert not (tmp_path / "a").exists()  # the folders it created are gone again
    store.mkdir(parents=True)
    (store / "kept").write_text("x")
    checks.local_store(str(store))
    assert [p.name for p in store.iterdir()] == ["kept"]
