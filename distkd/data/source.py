"""Datasets as Parquet shards (``<split>-*.parquet`` with ``id``, the input's column(s), ``label``), read with Ray Data.

What a split's input is (its kind and the columns it reads) is found in the first shard's schema by a ``Finder``
that ``Split.open`` is given: the input kinds' registry makes one from the job's data settings
(``distkd.data.inputs.finder``), so this module knows no kind. Every shard is checked to hold the same columns of
the same types.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from PIL import Image, UnidentifiedImageError

from distkd import content, storage
from distkd.data.errors import DataError, InputChanged

LABEL = "label"  # the label's name in what distkd reads, whichever column holds it (``data.label``)
# The label of a row that has none, as the stages read it: null in the shards, or hidden (``data.labelled_rows``).
UNLABELLED = -1
READ_ROWS = 10_000  # rows per read task of ``Split.read``
PATH = "path"  # the file a row was read from, where the reader knows it (for error messages)
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes decoded as one channel
# column -> (the Arrow type tests that accept it, what a shard should hold instead)
COLUMN_TYPES: dict[str, tuple[tuple[Callable[[pa.DataType], bool], ...], str]] = {
    "id": (
        (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
        "strings, one unique name per row (soft labels are joined to their images by id)",
    ),
    "label": (
        (pa.types.is_integer,),
        "integer class indices 0..C-1 (map class names to indices first, e.g. with 'distkd prepare image-folder')",
    ),
}


@dataclass(frozen=True)
class Input:
    """A split's input as its kind found it in the shards' schema: the kind's name, the columns it reads, and what of
    them belongs in the data's identity (the kind's choice: image keys name no column)."""

    kind: str = ""  # "": no input looked for (a split opened for its ids and labels alone)
    columns: tuple[str, ...] = ()
    identity: dict = field(default_factory=dict, hash=False)  # hashed by kind and columns (a dict is not hashable)


# (a shard's schema, its URI for messages, the label's column) -> its input; a DataError when it has none
Finder = Callable[[pa.Schema, str, str], Input]


@dataclass(frozen=True)
class Split:
    """One split of a dataset: its shard files, in order, and the rows the job uses."""

    uri: str
    name: str
    files: tuple[str, ...]
    limit: int | None = None
    stamps: tuple[str, ...] = ()  # each file's size and modification time when opened: reads refuse a change
    input: Input = Input()  # what the rows' input is (``Finder``)
    label: str = LABEL  # the column that holds the label (read as ``LABEL``)
    labelled: int | None = None  # rows from this index of the split on read as ``UNLABELLED`` (None: none hidden)

    @classmethod
    def open(
        cls, uri: str, name: str, limit: int | None = None, find: Finder | None = None, label: str = LABEL
    ) -> Split:
        """The split's shards, each checked to hold the columns distkd reads, all of the same types; ``find`` says
        what the input is from the first shard's schema (None: no input, for a reader of ids and labels alone).
        ``label``: the column that holds the label."""
        files = tuple(f for f in storage.list_files(uri, ".parquet") if f.rsplit("/", 1)[-1].startswith(f"{name}-"))
        if not files:
            raise DataError(f"{uri}: no Parquet shards for split '{name}' (expected files named {name}-*.parquet)")
        schema = _schema(files[0])
        found = find(schema, files[0], label) if find else Input()
        first = _column_types(files[0], schema, found.columns, label)
        for file in files[1:]:
            types = _column_types(file, _schema(file), found.columns, label)
            if differing := [c for c in first if types[c] != first[c]]:
                raise DataError(
                    f"{file}: column(s) {', '.join(f'{c!r} ({types[c]})' for c in differing)} differ from "
                    f"{files[0]} ({', '.join(f'{c!r} {first[c]}' for c in differing)}); every shard of split "
                    f"'{name}' needs the same column types"
                )
        return cls(uri, name, files, limit, tuple(_stamp(f) for f in files), found, label)

    def fingerprint(self) -> str:
        """A hash of the names and contents of the files in use: changes whenever one byte does. Computed once
        per split (identities asked for later in the run all name the same data), of the files as opened."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:  # in the instance's __dict__: travels with it to Ray workers
        used = [uri for uri, _ in self.file_rows()]
        hashed = "".join(f"{uri.rsplit('/', 1)[-1]}:{content.sha256(uri)};" for uri in used)
        for uri in used:  # after hashing: the hashes are of the files as they were opened
            _check_unchanged(uri, self.stamp(uri))
        return hashlib.sha256(hashed.encode()).hexdigest()

    def stamp(self, file: str) -> str | None:
        """``file``'s size and modification time when the split was opened (None: not recorded)."""
        return dict(zip(self.files, self.stamps)).get(file)

    def identity(self) -> dict:
        """The rows in use by their content, never by where they are: the same bytes read through another path
        (a second checkout, a copy on S3) are the same data, and every output made of them keeps its key."""
        out = {"split": self.name, "fingerprint": self.fingerprint(), "limit": self.limit}
        out = out if self.label == LABEL else {**out, "label": self.label}
        out = out if self.labelled is None else {**out, "labelled_rows": self.labelled}
        return {**out, **self.input.identity}

    def record(self) -> dict:
        """``identity`` and where the rows were read (``uri``), as an output's records keep them (a manifest,
        run.json, a report): what ``distkd cache verify`` and ``distkd export`` read the data from again."""
        return {"uri": self.uri, **self.identity()}

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

    def label_counts(self) -> tuple[int, int]:
        """(rows with a label, rows without one) of the rows in use, as the stages read them."""
        return self._label_counts

    @functools.cached_property
    def _label_counts(self) -> tuple[int, int]:
        missing = int(unlabelled(self.read_table([LABEL])[LABEL], 0, self.labelled).sum())
        return self.num_rows() - missing, missing

    def read_table(self, columns: list[str]) -> pa.Table:
        """The rows in use, read here in the driver (for small columns, tests and benchmarks), their labels as the
        shards hold them (nulls kept, none hidden)."""
        tables = []
        for uri, rows in self.file_rows():
            fs, path = storage.resolve(uri)
            read = [self.label if c == LABEL else c for c in columns]
            tables.append(_as_read(pq.read_table(path, columns=read, filesystem=fs).slice(0, rows), self.label))
            _check_unchanged(uri, self.stamp(uri))
        return pa.concat_tables(tables)

    def units(self, rows: int) -> list[Unit]:
        """The rows in use, in order, cut into units of at most ``rows`` rows that do not cross files."""
        units, offset = [], 0
        read_as = {"inputs": self.input.columns, "label": self.label, "labelled": self.labelled}
        for uri, used in self.file_rows():
            stamp = self.stamp(uri)
            for start in range(0, used, rows):
                stop = min(start + rows, used)
                unit = Unit(len(units), uri, start, stop, offset + start, stamp, **read_as)
                units.append(unit)
            offset += used
        return units

    def read(self, rows: int = READ_ROWS, extra: tuple[str, ...] = ()) -> ray.data.Dataset:
        """The rows in use, one read task per unit of ``rows`` rows: exactly the first ``limit`` rows
        whatever order the tasks finish in (rows come back in any order); ``extra``: columns read beside."""
        return read_units(self.units(rows), extra)


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one Parquet file; ``offset`` is the index of its first row in the split."""

    index: int
    file: str
    start: int
    stop: int
    offset: int
    stamp: str | None = None  # the file's size and modification time when its split was opened
    inputs: tuple[str, ...] = ()  # the split's input columns (``Input.columns``)
    label: str = LABEL  # the column that holds the label
    labelled: int | None = None  # its split's ``labelled``: rows from this index of the split on have no label

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))  # a list or an array after a trip through Ray

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def columns(self) -> tuple[str, ...]:
        """What distkd reads of each row: id, the input's columns and the label (as ``LABEL``)."""
        return ("id", *self.inputs, LABEL)

    def read(self, columns: list[str] | tuple[str, ...] | None = None) -> pa.Table:
        """The unit's rows (``columns`` None: ``self.columns``), reading only the row groups that hold them, their
        labels int64 with ``UNLABELLED`` where a row has none; refused if the file changed since its split was
        opened."""
        columns = [self.label if c == LABEL else c for c in (self.columns if columns is None else columns)]
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
        _check_unchanged(self.file, self.stamp)  # after reading: a change during the read is seen too
        table = _as_read(pa.concat_tables(tables), self.label)
        if LABEL not in table.column_names:
            return table
        labels = table[LABEL]
        missing = pa.array(unlabelled(labels, self.offset, self.labelled))
        read = pc.if_else(missing, UNLABELLED, labels.cast(pa.int64()))
        return table.set_column(table.column_names.index(LABEL), LABEL, read)


def unlabelled(labels: pa.ChunkedArray, first: int, labelled: int | None) -> np.ndarray:
    """Which of ``labels`` (rows ``first``, ``first + 1``, ... of their split) have none: a null, or a row at or
    past index ``labelled`` of the split (``data.labelled_rows``: labels hidden in the shards' order)."""
    missing = labels.is_null().to_numpy(zero_copy_only=False)
    return missing if labelled is None else missing | (np.arange(first, first + len(labels)) >= labelled)


def _as_read(table: pa.Table, label: str) -> pa.Table:
    """``table`` with its label column named ``LABEL``, as every reader of a split sees it."""
    return table.rename_columns([LABEL if c == label else c for c in table.column_names])


def read_units(units: list[Unit], extra: tuple[str, ...] = ()) -> ray.data.Dataset:
    """The encoded rows of ``units`` (and the ``extra`` columns), one block (and one read task) per unit."""
    return ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units)).map_batches(
        _read_unit_rows, fn_kwargs={"extra": tuple(extra)}, batch_size=1, batch_format="pyarrow"
    )


def _read_unit_rows(batch: pa.Table, extra: tuple[str, ...] = ()) -> Iterator[pa.Table]:
    for item in batch.to_pylist():
        unit = Unit(**item)
        rows = unit.read(list(dict.fromkeys([*unit.columns, *extra])))  # a slice column may be a feature
        yield rows.append_column(PATH, pa.array([unit.file] * len(rows), pa.string()))  # for error messages


def _schema(uri: str) -> pa.Schema:
    try:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{uri}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _column_types(uri: str, schema: pa.Schema, inputs: tuple[str, ...], label: str) -> dict[str, pa.DataType]:
    """The types of id, ``label`` and the input's columns in the shard at ``uri``, id and label checked against
    ``COLUMN_TYPES`` (the input kind checks its own: ``Finder``)."""
    if label != LABEL and LABEL in inputs:
        raise DataError(
            f"{uri}: column '{LABEL}' cannot be an input while the label is column '{label}' (every reader sees the "
            f"label as '{LABEL}'); leave it out of the input's columns"
        )
    missing = [c for c in ("id", *inputs, label) if c not in schema.names]
    if missing:
        raise DataError(f"{uri}: missing column(s) {missing}; expected columns {['id', *inputs, label]}")
    types = {c: schema.field(c).type for c in ("id", label, *inputs)}
    for key, (accepts, expected) in COLUMN_TYPES.items():
        name = label if key == LABEL else key
        if not any(accept(types[name]) for accept in accepts):
            raise DataError(f"{uri}: column '{name}' holds {types[name]} values; expected {expected}")
    return types


def _stamp(uri: str) -> str:
    """The file's size and modification time: what the content table trusts to mean unchanged bytes."""
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    return f"{info.size}:{info.mtime_ns}"


def _check_unchanged(uri: str, stamp: str | None) -> None:
    if stamp is not None and (now := _stamp(uri)) != stamp:
        raise InputChanged(
            f"{uri}: changed since the job opened it (size:mtime_ns {stamp}, now {now}); "
            "run the job again to use the new data"
        )


def image_shape(split: Split, channels: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of the split's first image; ``channels`` None: 1 for a grayscale image, else 3."""
    file = next((uri for uri, rows in split.file_rows() if rows), None)
    if file is None:
        raise DataError(f"{split.uri}: split '{split.name}' has no rows")
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as f:
        (column,) = split.input.columns
        first = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=["id", column])).to_pylist()[0]
    return _decoded(first[column], channels, first["id"], file).shape


def decode(data: bytes, channels: int | None = None) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> uint8 array [C, H, W]: 1 channel (grayscale) or 3 (RGB);
    ``channels`` None: 1 for a grayscale image, else 3."""
    with Image.open(io.BytesIO(data)) as image:
        channels = channels or (1 if image.mode in GRAYSCALE_MODES else 3)
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_batch(
    batch: dict[str, np.ndarray], shape: tuple[int, int, int], pool: Executor | None = None, column: str = "image"
) -> dict[str, np.ndarray]:
    """Ray Data batch of encoded rows -> ``image`` as a uint8 [N, C, H, W] array (a CPU task). Every image
    must decode to ``shape``; the first one that does not raises a DataError naming its id and file.
    ``pool``: threads that decode the images in parallel (Pillow releases the GIL for part of each decode, so
    threads help large images only partly: benchmarks/RESULTS.md, item 6)."""
    files = batch.get(PATH, [None] * len(batch["id"]))
    one, columns = functools.partial(_decoded_as, shape), (batch[column], batch["id"], files)
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
