"""Datasets as Parquet shards (``<split>-*.parquet`` with ``id``, ``image`` bytes, ``label``), read with Ray Data."""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from PIL import Image, UnidentifiedImageError
from ray.exceptions import UserCodeException

from distkd import content, storage

COLUMNS = ("id", "image", "label")
READ_ROWS = 10_000  # rows per read task of ``Split.read``
PATH = "path"  # the file a row was read from, where the reader knows it (for error messages)
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes decoded as one channel


class DataError(ValueError, UserCodeException):
    """Data that does not match the layout: names the URI (and the row) and what was expected. Raised in a
    Ray Data task it is the user's error, not Ray's: Ray Data then logs no stack trace of its own."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # as written: Ray Data appends retry advice to ``args`` of errors in its tasks


@dataclass(frozen=True)
class Split:
    """One split of a dataset: its shard files, in order, and the rows the job uses."""

    uri: str
    name: str
    files: tuple[str, ...]
    limit: int | None = None

    @classmethod
    def open(cls, uri: str, name: str, limit: int | None = None) -> Split:
        files = tuple(f for f in storage.list_files(uri, ".parquet") if f.rsplit("/", 1)[-1].startswith(f"{name}-"))
        if not files:
            raise DataError(f"{uri}: no Parquet shards for split '{name}' (expected files named {name}-*.parquet)")
        for file in files:
            schema = _schema(file)
            missing = [c for c in COLUMNS if c not in schema.names]
            if missing:
                raise DataError(f"{file}: missing column(s) {missing}; expected columns {list(COLUMNS)}")
            label = schema.field("label").type
            if not pa.types.is_integer(label):
                raise DataError(
                    f"{file}: column 'label' holds {label} values; expected integer class indices 0..C-1 "
                    "(map class names to indices first, e.g. with 'distkd prepare image-folder')"
                )
        return cls(uri, name, files, limit)

    def fingerprint(self) -> str:
        """A hash of the names and contents of the files in use: changes whenever one byte does."""
        return hashlib.sha256(
            "".join(f"{uri.rsplit('/', 1)[-1]}:{content.sha256(uri)};" for uri, _ in self.file_rows()).encode()
        ).hexdigest()

    def identity(self) -> dict:
        return {"uri": self.uri, "split": self.name, "fingerprint": self.fingerprint(), "limit": self.limit}

    def file_rows(self) -> list[tuple[str, int]]:
        """(file, rows of it in use) for the files the split reads, from Parquet metadata alone."""
        used, remaining = [], self.limit
        for uri in self.files:
            fs, path = storage.resolve(uri)
            with fs.open_input_file(path) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            if remaining is not None:
                rows = min(rows, remaining)
                remaining -= rows
            used.append((uri, rows))
            if remaining == 0:
                break
        return used

    def num_rows(self) -> int:
        return sum(rows for _, rows in self.file_rows())

    def read_table(self, columns: list[str]) -> pa.Table:
        """The rows in use, read here in the driver (for small columns, tests and benchmarks)."""
        tables = []
        for uri, rows in self.file_rows():
            fs, path = storage.resolve(uri)
            tables.append(pq.read_table(path, columns=columns, filesystem=fs).slice(0, rows))
        return pa.concat_tables(tables)

    def units(self, rows: int) -> list[Unit]:
        """The rows in use, in order, cut into units of at most ``rows`` rows that do not cross files."""
        units, offset = [], 0
        for uri, used in self.file_rows():
            for start in range(0, used, rows):
                units.append(Unit(len(units), uri, start, min(start + rows, used), offset + start))
            offset += used
        return units

    def read(self, rows: int = READ_ROWS) -> ray.data.Dataset:
        """The rows in use, one read task per unit of ``rows`` rows: exactly the first ``limit`` rows
        whatever order the tasks finish in (rows come back in any order)."""
        return read_units(self.units(rows))


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one Parquet file; ``offset`` is the index of its first row in the split."""

    index: int
    file: str
    start: int
    stop: int
    offset: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def read(self, columns: list[str] | tuple[str, ...] = COLUMNS) -> pa.Table:
        """The unit's rows, reading only the row groups that hold them."""
        fs, path = storage.resolve(self.file)
        tables, first = [], 0
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if first < self.stop and first + rows > self.start:
                    table = parquet.read_row_group(group, columns=list(columns))
                    lo, hi = max(self.start, first), min(self.stop, first + rows)
                    tables.append(table.slice(lo - first, hi - lo))
                first += rows
        return pa.concat_tables(tables)


def read_units(units: list[Unit]) -> ray.data.Dataset:
    """The encoded rows of ``units``, one block (and one read task) per unit."""
    return ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units)).map_batches(
        _read_unit_rows, batch_size=1, batch_format="pyarrow"
    )


def _read_unit_rows(batch: pa.Table) -> Iterator[pa.Table]:
    for item in batch.to_pylist():
        unit = Unit(**item)
        rows = unit.read()
        yield rows.append_column(PATH, pa.array([unit.file] * len(rows), pa.string()))  # for error messages


def _schema(uri: str):
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_schema(f)


def image_shape(split: Split, channels: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of the split's first image; ``channels`` None: 1 for a grayscale image, else 3."""
    file = next((uri for uri, rows in split.file_rows() if rows), None)
    if file is None:
        raise DataError(f"{split.uri}: split '{split.name}' has no rows")
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as f:
        first = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=["id", "image"])).to_pylist()[0]
    return _decoded(first["image"], channels, first["id"], file).shape


def decode(data: bytes, channels: int | None = None) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> uint8 array [C, H, W]: 1 channel (grayscale) or 3 (RGB);
    ``channels`` None: 1 for a grayscale image, else 3."""
    with Image.open(io.BytesIO(data)) as image:
        channels = channels or (1 if image.mode in GRAYSCALE_MODES else 3)
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_batch(
    batch: dict[str, np.ndarray], shape: tuple[int, int, int], pool: Executor | None = None
) -> dict[str, np.ndarray]:
    """Ray Data batch of encoded rows -> ``image`` as a uint8 [N, C, H, W] array (a CPU task). Every image
    must decode to ``shape``; the first one that does not raises a DataError naming its id and file.
    ``pool``: threads that decode the images in parallel (Pillow releases the GIL for part of each decode, so
    threads help large images only partly: benchmarks/RESULTS.md, item 6)."""
    files = batch.get(PATH, [None] * len(batch["id"]))
    one, columns = functools.partial(_decoded_as, shape), (batch["image"], batch["id"], files)
    decoded = pool.map(one, *columns) if pool else map(one, *columns)
    images = np.empty((len(batch["id"]), *shape), dtype=np.uint8)
    for i, image in enumerate(decoded):
        images[i] = image
    return {"id": batch["id"], "image": images, "label": batch["label"]}


def _decoded_as(shape: tuple[int, int, int], data: bytes | None, id_: str, file: str | None) -> np.ndarray:
    image = _decoded(data, shape[0], id_, file)
    if image.shape != tuple(shape):
        size, expected = "x".join(map(str, image.shape[1:])), "x".join(map(str, shape[1:]))
        raise DataError(f"{_row(id_, file)}: image is {size} pixels, expected {expected} like the first image")
    return image


def _decoded(data: bytes | None, channels: int | None, id_: str, file: str | None) -> np.ndarray:
    try:
        return decode(data, channels)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes; all mean the same here
        detail = "unknown or corrupt format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise DataError(f"{_row(id_, file)}: not an image Pillow can decode ({detail})") from None


def _row(id_: str, file: str | None) -> str:
    return f"{file}: row id '{id_}'" if file else f"row id '{id_}'"
