"""Packing an image folder (and torchvision's CIFAR-10, faked) into the Parquet shard layout."""

import io
import re
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distkd.data import prepare

# Created out of name order, so labels must come from sorting, not creation order.
IMAGES = {
    "cat": [("c0.png", (17, 9)), ("c1.jpg", (32, 32)), ("c2.JPEG", (5, 40))],
    "ant": [("b.png", (8, 8)), ("a.jpg", (21, 13))],
    "bee": [("z.webp", (12, 7)), ("m.png", (64, 3)), ("k.bmp", (10, 10)), ("n.jpeg", (3, 30))],
}
CLASSES = sorted(IMAGES)


def _image_bytes(name: str, size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[Path(name).suffix.lower()]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for seed, (cls, files) in enumerate(IMAGES.items()):
        (root / cls).mkdir(parents=True)
        (root / cls / "notes.txt").write_text("not an image")
        for i, (name, size) in enumerate(files):
            (root / cls / name).write_bytes(_image_bytes(name, size, 10 * seed + i))
    return root


def _shard_names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_image_folder_shards(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "ROW_GROUP", 2)
    out = tmp_path / "out"
    uris = prepare.from_image_folder(folder, str(out), "train", rows_per_shard=4)

    names = ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet"]
    assert [u.rsplit("/", 1)[-1] for u in uris] == names
    assert _shard_names(out) == names  # no temporary files left behind
    files = [pq.ParquetFile(u) for u in uris]
    assert [f.metadata.num_rows for f in files] == [4, 4, 1]
    assert [[f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] for f in files] == [[2, 2], [2, 2], [1]]
    assert {f.metadata.row_group(0).column(c).compression for f in files for c in range(3)} == {"ZSTD"}

    table = pa.concat_tables(f.read() for f in files)
    assert table.schema == pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
    rows = table.to_pylist()
    assert len(rows) == sum(len(v) for v in IMAGES.values())
    by_class = [
        (f"train/{cls}/{Path(name).stem}", label, name)
        for label, cls in enumerate(CLASSES)
        for name, _ in sorted(IMAGES[cls])
    ]
    expected = [by_class[i] for i in prepare.interleave_by_class([label for _, label, _ in by_class])]
    assert [label for _, label, _ in expected][:3] == [0, 1, 2]  # interleaved: any prefix is balanced
    assert [(r["id"], r["label"]) for r in rows] == [(i, label) for i, label, _ in expected]
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(re.fullmatch(r"train/(ant|bee|cat)/\w+", r["id"]) for r in rows)
    for row, (_, label, name) in zip(rows, expected):
        assert row["image"] == (folder / CLASSES[label] / name).read_bytes()

    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*'train'"):
        prepare.from_image_folder(folder, str(out), "train", rows_per_shard=4)
    assert _shard_names(out) == names
    assert len(prepare.from_image_folder(folder, str(out), "test")) == 1  # another split is fine


def test_folder_errors_name_the_path(folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        prepare.from_image_folder(tmp_path / "missing", str(out), "train")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(_image_bytes("x.png", (4, 4), 0))
    with pytest.raises(ValueError, match=r"flat: no class folders"):
        prepare.from_image_folder(tmp_path / "flat", str(out), "train")

    (folder / "dog").mkdir()
    (folder / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=re.escape(str(folder / "dog")) + ": no image files"):
        prepare.from_image_folder(folder, str(out), "train")
    (folder / "dog" / "d.png").write_bytes(_image_bytes("d.png", (4, 4), 1))

    broken = folder / "cat" / "c9.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        prepare.from_image_folder(folder, str(out), "train", rows_per_shard=2)
    assert _shard_names(out) == []  # shards written before the bad file are removed


def test_write_split_refuses_duplicate_ids_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    rows = [("a", b"1", 0), ("b", b"2", 1), ("c", b"3", 0), ("a", b"4", 1)]
    with pytest.raises(ValueError, match="duplicate id 'a' in split 'train'"):
        prepare.write_split(rows, str(out), "train", rows_per_shard=2)
    assert _shard_names(out) == []
    with pytest.raises(ValueError, match="no rows"):
        prepare.write_split([], str(out), "train")
    assert [u.rsplit("/", 1)[-1] for u in prepare.write_split(rows[:3], str(out), "train", rows_per_shard=3)] == [
        "train-00000-of-00001.parquet"
    ]


def test_interleave_by_class():
    assert prepare.interleave_by_class([2, 0, 1, 0, 2, 0]) == [1, 2, 0, 3, 4, 5]
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    order = prepare.interleave_by_class(labels)
    assert sorted(order) == list(range(len(labels)))
    assert [[labels[i] for i in order[k : k + 3]] for k in range(0, 9, 3)] == [[0, 1, 2]] * 3


def test_torchvision_cifar10_with_a_fake_dataset(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:
        classes = ("airplane", "automobile", "bird")

        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 6 if train else 3
            self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [2, 0, 1, 0, 2, 1][:n]

    monkeypatch.setitem(sys.modules, "torchvision.datasets", types.SimpleNamespace(CIFAR10=FakeCIFAR10))
    out = tmp_path / "out"
    uris = prepare.from_torchvision_cifar10(tmp_path / "raw", str(out), download=False, rows_per_shard=4)

    assert calls == [(str(tmp_path / "raw"), True, False), (str(tmp_path / "raw"), False, False)]
    assert [u.rsplit("/", 1)[-1] for u in uris] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
        "test-00000-of-00001.parquet",
    ]
    train = pa.concat_tables(pq.read_table(u) for u in uris[:2]).to_pylist()
    assert [r["id"] for r in train] == [
        "train/airplane/0000",
        "train/automobile/0000",
        "train/bird/0000",
        "train/airplane/0001",
        "train/automobile/0001",
        "train/bird/0001",
    ]
    assert [r["label"] for r in train] == [0, 1, 2, 0, 1, 2]
    data = FakeCIFAR10(None, True, None).data
    for row, i in zip(train, [1, 2, 0, 3, 5, 4]):
        with Image.open(io.BytesIO(row["image"])) as image:
            assert image.format == "PNG"
            assert np.array_equal(np.asarray(image), data[i])  # lossless
    assert [r["id"] for r in pq.read_table(uris[2]).to_pylist()] == [
        "test/airplane/0000",
        "test/automobile/0000",
        "test/bird/0000",
    ]


def test_write_split_to_s3(s3_server, tmp_path):
    from distkd import storage
    from tests.conftest import BUCKET

    out = f"s3://{BUCKET}/prepare-{tmp_path.name}"
    rows = [(f"train/c{i % 2}/{i:04d}", bytes([i]), i % 2) for i in range(5)]
    uris = prepare.write_split(rows, out, "train", rows_per_shard=2)
    assert uris == [f"{out}/train-0000{i}-of-00003.parquet" for i in range(3)]
    fs, path = storage.resolve(out)
    objects = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)))
    assert objects == [u.rsplit("/", 1)[-1] for u in uris]  # temporary objects are gone
    table = pa.concat_tables(pq.read_table(storage.resolve(u)[1], filesystem=fs) for u in uris)
    assert list(zip(*table.to_pydict().values())) == rows
    with pytest.raises(ValueError, match=re.escape(out)):
        prepare.write_split(rows, out, "train")
