"""The tabular input kind: categorical and numeric feature columns, read through statistics of the training split.

Each categorical column gets a vocabulary: its values seen at least ``min_count`` times in training, sorted, at
indices 1..V; index 0 takes nulls, rarer values and values never seen in training. A column with more than
``max_vocab`` such values is hashed instead (crc32 of the value into ``max_vocab`` buckets, 1..max_vocab; nulls 0).
Each numeric column is standardised by its training mean and spread; a null takes the mean (0 once standardised)
and sets the column's null indicator. So a prepared row is float32 ``features`` [C + 2K] laid out as::

    [ C categorical indices | K standardised numbers | K null indicators ]

and a model is built with ``cardinalities`` (indices per categorical column, index 0 included) and ``numeric``
(K); ``split_features`` cuts a batch back into the two parts (models/tabular.py, and ``import:`` models alike).

The statistics are computed once from the training split, on the driver before any Ray work (they are what the
job's checks and its models' shapes need), and kept in the store like a trained tokenizer:
``<store>/tabular/<hash of the data and settings>/statistics.json`` with the commit marker written last. Every
output made from the inputs names them by the sha256 of their content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import zlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from distkd import storage
from distkd.config import ConfigError, DataConfig, Strict
from distkd.data.kinds import STRINGS, Kind
from distkd.data.source import LABEL, Split
from distkd.hashing import digest

if TYPE_CHECKING:
    import torch

FILE = "statistics.json"
OOV = 0  # the index of nulls, rare values and values unseen in training
NUMERIC_TYPES: tuple[Callable[[pa.DataType], bool], ...] = (pa.types.is_integer, pa.types.is_floating)
# Taken as categorical when no column is listed: an integer code column (a product id) is listed by name.
DEFAULT_CATEGORICAL: tuple[Callable[[pa.DataType], bool], ...] = (*STRINGS, pa.types.is_boolean, pa.types.is_dictionary)
CATEGORICAL_TYPES = (*DEFAULT_CATEGORICAL, pa.types.is_integer)


class FeaturesConfig(Strict):
    """The feature columns (``data.features``) and how their statistics are computed on the training split. Both
    lists left out: every column beside id and label, categorical or numeric by its Arrow type."""

    categorical: list[str] | None = None  # one vocabulary each (index 0: null, rare and unseen values)
    numeric: list[str] | None = None  # standardised, with a null indicator; nulls take the mean
    min_count: int = Field(default=1, gt=0)  # values seen fewer times in training go to index 0
    max_vocab: int | None = Field(default=None, gt=0)  # a column with more values is hashed into this many buckets

    @model_validator(mode="after")
    def _disjoint(self) -> FeaturesConfig:
        if both := sorted(set(self.categorical or ()) & set(self.numeric or ())):
            raise ValueError(f"column(s) {', '.join(both)} listed as both categorical and numeric")
        return self

    def columns(self) -> tuple[str, ...]:
        """The listed columns, categorical first; () when none are listed (every column is a feature)."""
        return (*(self.categorical or ()), *(self.numeric or ()))


def value_key(value: object) -> str | None:
    """The vocabulary key of one value (None: null): integers as integers whether Arrow or numpy held them as
    floats (an integer column with nulls becomes float64 in a numpy batch)."""
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


@dataclass(frozen=True)
class Categorical:
    """One categorical column: its vocabulary (index i + 1 for ``values[i]``), or ``buckets`` when hashed."""

    name: str
    values: tuple[str, ...] = ()
    buckets: int | None = None
    rows: int = 0  # non-null training rows
    kept: int = 0  # of them, with a value in the vocabulary (all of them when hashed)

    @property
    def cardinality(self) -> int:
        """Indices a model embeds: the vocabulary (or the buckets) and index 0."""
        return 1 + (self.buckets if self.buckets is not None else len(self.values))

    def indices(self, column: np.ndarray) -> np.ndarray:
        keys = [value_key(v) for v in column.tolist()]
        if self.buckets is not None:
            hashed = [OOV if k is None else 1 + zlib.crc32(k.encode()) % self.buckets for k in keys]
            return np.asarray(hashed, dtype=np.float32)
        index = self._index
        return np.asarray([index.get(k, OOV) for k in keys], dtype=np.float32)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {v: i + 1 for i, v in enumerate(self.values)}


@dataclass(frozen=True)
class Numeric:
    """One numeric column: its training mean and standard deviation (1 when constant), and nulls seen there."""

    name: str
    mean: float
    std: float
    nulls: int = 0

    def standardised(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardised values with nulls at 0, the null indicator), float32."""
        values = np.array([np.nan if v is None else v for v in column.tolist()], dtype=np.float64)
        null = np.isnan(values)
        z = np.where(null, 0.0, (values - self.mean) / self.std)
        return z.astype(np.float32), null.astype(np.float32)


@dataclass(frozen=True)
class Statistics:
    """Every feature column's statistics from the training split: what a row is encoded with."""

    categorical: tuple[Categorical, ...]
    numeric: tuple[Numeric, ...]

    @property
    def width(self) -> int:
        return len(self.categorical) + 2 * len(self.numeric)

    def encode(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Raw feature columns -> float32 ``features`` [N, C + 2K] (the layout of the module's docstring)."""
        n = len(batch["id"])
        parts = [c.indices(np.asarray(batch[c.name], dtype=object)) for c in self.categorical]
        numbers = [x.standardised(np.asarray(batch[x.name], dtype=object)) for x in self.numeric]
        columns = parts + [z for z, _ in numbers] + [null for _, null in numbers]
        return np.stack(columns, axis=1) if columns else np.zeros((n, 0), np.float32)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Statistics:
        raw = json.loads(data)
        categorical = tuple(Categorical(**{**c, "values": tuple(c["values"])}) for c in raw["categorical"])
        return cls(categorical, tuple(Numeric(**x) for x in raw["numeric"]))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()


def compute(table: pa.Table, categorical: list[str], numeric: list[str], settings: FeaturesConfig) -> Statistics:
    """The statistics of ``table``'s feature columns (the training split's rows in use); a ``ConfigError`` names
    a column that has nothing to learn from (all null)."""
    cats = []
    for name in categorical:
        counts: dict[str, int] = {}
        for item in pc.value_counts(table[name]).to_pylist():
            if (key := value_key(item["values"])) is not None:
                counts[key] = counts.get(key, 0) + item["counts"]
        if not counts:
            raise ConfigError(
                f"key 'data.features': categorical column '{name}' is null in every training row; drop it"
            )
        kept = sorted(k for k, c in counts.items() if c >= settings.min_count)
        rows = sum(counts.values())
        if settings.max_vocab is not None and len(kept) > settings.max_vocab:
            cats.append(Categorical(name, (), settings.max_vocab, rows, rows))
        else:
            cats.append(Categorical(name, tuple(kept), None, rows, sum(counts[k] for k in kept)))
    nums = []
    for name in numeric:
        values = table[name].cast(pa.float64()).to_numpy(zero_copy_only=False)
        seen = values[~np.isnan(values)]
        if not len(seen):
            raise ConfigError(f"key 'data.features': numeric column '{name}' is null in every training row; drop it")
        std = float(seen.std())
        nums.append(Numeric(name, float(seen.mean()), std if std > 0 else 1.0, int(len(values) - len(seen))))
    return Statistics(tuple(cats), tuple(nums))


def roles(split: Split, settings: FeaturesConfig) -> tuple[list[str], list[str]]:
    """(categorical, numeric) feature columns: as the job lists them, or every feature column by its Arrow type;
    a ``ConfigError`` names a column whose type does not fit its role."""
    types = _types(split.files[0])
    if settings.categorical is None and settings.numeric is None:
        categorical, numeric = [], []
        for name in split.input.columns:
            if any(accept(types[name]) for accept in NUMERIC_TYPES):
                numeric.append(name)
            elif any(accept(types[name]) for accept in DEFAULT_CATEGORICAL):
                categorical.append(name)
            else:
                raise ConfigError(
                    f"key 'data.features': column '{name}' holds {types[name]} values, neither numbers nor "
                    "categories; list the feature columns under 'data.features: {categorical: [...], numeric: [...]}'"
                )
        return categorical, numeric
    return list(settings.categorical or ()), list(settings.numeric or ())


def check_types(split: Split, categorical: list[str], numeric: list[str]) -> None:
    """Every file of ``split`` holds numbers in each numeric column and categories in each categorical one."""
    for file in split.files:
        types = _types(file)
        for names, accepts, expected, role in (
            (numeric, NUMERIC_TYPES, "numbers (integers or floats)", "numeric"),
            (categorical, CATEGORICAL_TYPES, "strings, integers, booleans or dictionary values", "categorical"),
        ):
            for name in names:
                if not any(accept(types[name]) for accept in accepts):
                    raise ConfigError(
                        f"key 'data.features.{role}': {file}: column '{name}' holds {types[name]} values; a {role} "
                        f"column holds {expected}"
                    )


def _types(file: str) -> dict[str, pa.DataType]:
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as f:
        schema = pq.read_schema(f)
    return {field.name: field.type for field in schema}


def location(store: str, identity: dict) -> str:
    """``<store>/tabular/<hash of the data's identity and the settings>``."""
    return storage.join(store, "tabular", digest(identity, length=32))


def split_features(x: torch.Tensor, categorical: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``features`` -> (int64 categorical indices [N, C], float numbers and null indicators [N, 2K])."""
    return x[:, :categorical].long(), x[:, categorical:]


@dataclass(frozen=True)
class TabularInput:
    """Feature columns encoded through the training split's statistics (computed in ``tabular_input``, kept in the
    store by ``ready``)."""

    name: ClassVar[str] = "tabular"
    columns: ClassVar[tuple[str, ...]] = ("features",)
    augments: ClassVar[bool] = False
    identity_key: ClassVar[str] = "inputs"
    column: str  # "": a tabular input has feature columns instead
    statistics: Statistics
    folder: str  # where the statistics are kept in the store

    @property
    def shape(self) -> tuple[int]:
        return (self.statistics.width,)

    def prepare(self, batch: dict[str, np.ndarray], pool: Executor | None = None) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "features": self.statistics.encode(batch), "label": batch["label"]}

    def on_device(self, batch: dict[str, np.ndarray], device: torch.device, pool: Executor) -> dict[str, torch.Tensor]:
        from distkd.data import gpu_decode  # here, not at the top: data/inputs.py says why

        return {"features": gpu_decode.host_to_device(self.statistics.encode(batch), device)}

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return batch["features"].to(device, non_blocking=True).float()

    def example(self, rows: int) -> dict[str, torch.Tensor]:
        import torch

        return {"features": torch.zeros(rows, self.statistics.width)}  # index 0 and the means: a valid row

    def row_bytes(self) -> int:
        return 4 * self.statistics.width

    def model_kwargs(self) -> dict:
        cardinalities = tuple(c.cardinality for c in self.statistics.categorical)
        return {"cardinalities": cardinalities, "numeric": len(self.statistics.numeric)}

    def identity(self) -> dict:
        return {"statistics": self.statistics.sha256()}

    def pending(self) -> tuple[str, str] | None:
        if storage.is_committed(self.folder):
            return None
        columns = len(self.statistics.categorical) + len(self.statistics.numeric)
        return f"keeping the statistics of {columns} feature columns", self.folder

    def ready(self) -> None:
        if not storage.is_committed(self.folder):
            storage.publish(storage.join(self.folder, FILE), self.statistics.to_json())
            storage.commit(self.folder)

    def check(self, split: Split) -> None:
        categorical = [c.name for c in self.statistics.categorical]
        check_types(split, categorical, [x.name for x in self.statistics.numeric])


def find_features(
    schema: pa.Schema, column: str | None, settings: FeaturesConfig | None, label: str
) -> tuple[tuple[str, ...], dict] | None:
    """``Kind.find``: the columns ``data.features`` lists, else (with no input column named) every column beside id
    and the label."""
    if settings is None and column is not None:
        return None
    features = (settings and settings.columns()) or tuple(c for c in schema.names if c not in ("id", label, LABEL))
    return (features, {"features": list(features)}) if features else None


def tabular_input(split: Split, data: DataConfig, settings: FeaturesConfig | None, store: str) -> TabularInput:
    """The training split's statistics: those committed in the store, else computed here from its rows."""
    if data.input_column is not None:
        raise ConfigError(
            "key 'data.input_column': a tabular input reads its feature columns ('data.features'), not one input "
            "column; remove one of the two keys"
        )
    settings = settings or FeaturesConfig()
    categorical, numeric = roles(split, settings)
    check_types(split, categorical, numeric)
    made_of = {"data": split.identity(), "categorical": categorical, "numeric": numeric}
    folder = location(store, {**made_of, **settings.model_dump(include={"min_count", "max_vocab"})})
    if storage.is_committed(folder):
        statistics = Statistics.from_json(storage.read_bytes(storage.join(folder, FILE)))
    else:
        statistics = compute(split.read_table(categorical + numeric), categorical, numeric, settings)
    return TabularInput("", statistics, folder)


TABULAR = Kind(
    find_features,
    tabular_input,
    "feature columns beside 'id' and the label",
    settings=("features", FeaturesConfig),
    catch_all=True,
)
