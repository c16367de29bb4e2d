"""Pack images into the Parquet shards distkd reads: `<split>-<i>-of-<n>.parquet` with id, image, label."""

from __future__ import annotations

import io
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from itertools import chain, islice, zip_longest
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from distkd import storage

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
ROW_GROUP = 2_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Row = tuple[str, bytes, int]


def write_split(rows: Iterable[Row], out_uri: str, split: str, rows_per_shard: int = 10_000) -> list[str]:
    """Write ``(id, image bytes, label)`` rows as the shards of ``split`` under ``out_uri``; return their URIs.

    Shards are written under hidden temporary names and renamed once the shard count is known.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    # The reader's rule for what belongs to a split (see source.Split.open).
    taken = [u for u in storage.list_files(out_uri, ".parquet") if u.rsplit("/", 1)[-1].startswith(f"{split}-")]
    if taken:
        raise ValueError(
            f"{out_uri}: split '{split}' already has shards ({taken[0]}, ...); remove them or write elsewhere"
        )
    fs, folder = storage.resolve(out_uri)
    fs.create_dir(folder, recursive=True)
    tag = uuid.uuid4().hex
    seen: set[str] = set()
    temps: list[str] = []
    rows = iter(rows)
    try:
        for first in rows:
            tmp = f"{folder}/.{split}-{len(temps):05d}.parquet.tmp-{tag}"
            with pq.ParquetWriter(tmp, SCHEMA, filesystem=fs, compression="zstd") as writer:
                temps.append(tmp)
                for group in _batches(chain([first], islice(rows, rows_per_shard - 1)), ROW_GROUP):
                    writer.write_table(_table(group, split, seen))  # one row group per call
        if not temps:
            raise ValueError(f"{out_uri}: no rows for split '{split}'")
    except BaseException:
        for tmp in temps:
            with suppress(FileNotFoundError):
                fs.delete_file(tmp)
        raise
    names = [f"{split}-{i:05d}-of-{len(temps):05d}.parquet" for i in range(len(temps))]
    for tmp, name in zip(temps, names):
        fs.move(tmp, f"{folder}/{name}")
    return [storage.join(out_uri, name) for name in names]


def from_image_folder(root: str | Path, out_uri: str, split: str, rows_per_shard: int = 10_000) -> list[str]:
    """Pack ``root/<class name>/<image file>`` (classes sorted as torchvision's ImageFolder) as ``split``,
    bytes unchanged, rows interleaved by class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected {root}/<class name>/<image file>)")
    classes = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/<class name>/<image file>)")
    files = []
    for label, folder in enumerate(classes):
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise ValueError(f"{folder}: no image files (extensions {', '.join(IMAGE_EXTENSIONS)})")
        files += [(f"{split}/{folder.name}/{p.stem}", p, label) for p in images]
    files = [files[i] for i in interleave_by_class([label for _, _, label in files])]  # any prefix is balanced
    return write_split(((id_, _checked_bytes(p), label) for id_, p, label in files), out_uri, split, rows_per_shard)


def from_torchvision_cifar10(
    root: str | Path, out_uri: str, download: bool = True, rows_per_shard: int = 10_000
) -> list[str]:
    """Pack torchvision's CIFAR-10 (``train`` and ``test``) as lossless PNG rows, interleaved by class."""
    from torchvision.datasets import CIFAR10

    uris = []
    for split in ("train", "test"):
        data = CIFAR10(str(root), train=split == "train", download=download)
        uris += write_split(_cifar_rows(data.data, data.targets, data.classes, split), out_uri, split, rows_per_shard)
    return uris


def interleave_by_class(labels: Sequence[int]) -> list[int]:
    """Row order taking one index of each class in turn (classes by label, each in original order)."""
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    turns = zip_longest(*(by_class[c] for c in sorted(by_class)))
    return [i for turn in turns for i in turn if i is not None]


def _cifar_rows(images: np.ndarray, labels: Sequence[int], classes: Sequence[str], split: str) -> Iterator[Row]:
    numbered = defaultdict(int)
    for i in interleave_by_class(labels):
        label = int(labels[i])
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="PNG")
        yield f"{split}/{classes[label]}/{numbered[label]:04d}", buffer.getvalue(), label
        numbered[label] += 1


def _checked_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as e:
        raise ValueError(f"{path}: not an image Pillow can open ({e})") from e
    return data


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    rows = iter(rows)
    while batch := list(islice(rows, size)):
        yield batch


def _table(rows: list[Row], split: str, seen: set[str]) -> pa.Table:
    ids, images, labels = zip(*rows)
    for id_ in ids:
        if id_ in seen:
            raise ValueError(f"duplicate id '{id_}' in split '{split}'")
        seen.add(id_)
    return pa.table([list(ids), list(images), list(labels)], schema=SCHEMA)
