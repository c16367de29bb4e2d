"""The tabular input kind: vocabularies and statistics of the training split against hand-computed ones, unseen
and null values at test time, hashing, the statistics kept in the store, and bad columns refused before work."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distkd import config, storage
from distkd.config import ConfigError
from distkd.data import inputs, tabular
from distkd.data.source import DataError, Split

COLORS = ["red", "blue", "red", None, "green", "red", "blue"]
SIZES = [1.0, 2.0, 3.0, None, 4.0, 6.0, None]


def write(folder: Path, split: str, columns: dict, labels: pa.Array | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(columns.values())))
    labels = labels if labels is not None else pa.array([i % 2 for i in range(n)], pa.int64())
    table = pa.table({"id": [f"{split}/{i}" for i in range(n)], **columns, "label": labels})
    pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    columns = {"color": pa.array(COLORS), "size": pa.array(SIZES, pa.float64()), "shop": pa.array([7] * 7)}
    write(tmp_path / "data", "train", columns)
    test = {"color": pa.array(["purple", None, "red"]), "size": pa.array([None, 3.2, 10.0]), "shop": [8, 7, 7]}
    write(tmp_path / "data", "test", test)
    return tmp_path / "data"


def opened(folder: Path, label: str = "label", **data) -> Split:
    """The training split of ``folder``, its input found as a job with ``data`` settings finds it."""
    settings = config.DataConfig(uri=str(folder), label=label, **data)
    return Split.open(str(folder), "train", find=inputs.finder(settings), label=label)


def kind(data: Path, store: Path, **features) -> tabular.TabularInput:
    settings = config.DataConfig(uri=str(data), features=features or None)
    return inputs.for_data(opened(data, features=features or None), settings, str(store))


def test_vocabularies_and_statistics_are_the_hand_computed_ones(data: Path, tmp_path: Path) -> None:
    k = kind(data, tmp_path / "store", categorical=["color"], numeric=["size"], min_count=2)
    (color,), (size,) = k.statistics.categorical, k.statistics.numeric
    assert color.values == ("blue", "red")  # green is seen once: below min_count
    assert (color.cardinality, color.rows, color.kept) == (3, 6, 5)
    # seen: 1, 2, 3, 4, 6: mean 3.2, population variance (2.2^2 + 1.2^2 + 0.2^2 + 0.8^2 + 2.8^2) / 5 = 2.96
    assert (size.mean, size.std, size.nulls) == (pytest.approx(3.2), pytest.approx(math.sqrt(2.96)), 2)
    assert k.shape == (3,) and k.model_kwargs() == {"cardinalities": (3,), "numeric": 1}


def test_unseen_null_and_rare_values_take_index_0_and_null_numbers_the_mean(data: Path, tmp_path: Path) -> None:
    k = kind(data, tmp_path / "store", categorical=["color"], numeric=["size"], min_count=2)
    test = pq.read_table(data / "test-00000-of-00001.parquet").to_pydict()
    batch = {name: np.array(values, dtype=object) for name, values in test.items()}
    features = k.prepare(batch)["features"]
    std = math.sqrt(2.96)
    expected = [[0, 0.0, 1.0], [0, 0.0, 0.0], [2, (10.0 - 3.2) / std, 0.0]]  # purple unseen, null; red
    np.testing.assert_allclose(features, np.array(expected, np.float32), rtol=1e-6)
    train = pq.read_table(data / "train-00000-of-00001.parquet").to_pydict()
    train_features = k.prepare({name: np.array(v, dtype=object) for name, v in train.items()})["features"]
    assert train_features[:, 0].tolist() == [2, 1, 2, 0, 0, 2, 1]  # green: rare; None: null


def test_an_integer_column_with_nulls_keeps_its_keys(data: Path, tmp_path: Path) -> None:
    """Ray Data hands an integer column with nulls over as float64: 7.0 is still the value 7."""
    k = kind(data, tmp_path / "store", categorical=["shop"], numeric=[])
    batch = {"id": np.array(["a", "b", "c"]), "shop": np.array([7.0, np.nan, 8.0])}
    assert k.prepare({**batch, "label": np.zeros(3)})["features"][:, 0].tolist() == [1, 0, 0]


def test_a_column_of_many_values_is_hashed_into_buckets(data: Path, tmp_path: Path) -> None:
    k = kind(data, tmp_path / "store", categorical=["color"], numeric=[], max_vocab=2)
    (color,) = k.statistics.categorical
    assert (color.buckets, color.values, color.cardinality) == (2, (), 3)  # 3 values > 2: hashed
    batch = {"id": np.array(["a", "b"]), "color": np.array(["purple", None], dtype=object), "label": np.zeros(2)}
    assert k.prepare(batch)["features"][:, 0].tolist() == [1 + zlib.crc32(b"purple") % 2, 0]


def test_every_other_column_is_a_feature_by_its_arrow_type(data: Path, tmp_path: Path) -> None:
    split = opened(data)  # no image or text column: tabular
    assert (split.input.kind, split.input.columns) == ("tabular", ("color", "size", "shop"))
    k = kind(data, tmp_path / "store")
    assert [c.name for c in k.statistics.categorical] == ["color"]
    assert [x.name for x in k.statistics.numeric] == ["size", "shop"]  # integers are numbers unless listed


def test_the_statistics_are_kept_in_the_store_and_named_by_their_content(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    k = kind(data, store, categorical=["color"], numeric=["size"])
    assert k.pending() is not None and not storage.is_committed(k.folder)
    k.ready()
    assert k.pending() is None
    assert tabular.Statistics.from_json(storage.read_bytes(storage.join(k.folder, tabular.FILE))) == k.statistics
    again = kind(data, store, categorical=["color"], numeric=["size"])  # read from the store
    assert again.statistics == k.statistics and again.identity() == k.identity()
    other = kind(data, store, categorical=["color"], numeric=["size"], min_count=2)
    assert other.folder != k.folder and other.identity() != k.identity()


def test_bad_columns_are_refused_naming_them(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(DataError, match=r"missing column\(s\) \['weight'\]"):
        kind(data, store, categorical=["color"], numeric=["weight"])
    with pytest.raises(ConfigError, match="key 'data.features.numeric': .*column 'color' holds string values"):
        kind(data, store, categorical=[], numeric=["color"])
    write(tmp_path / "nulls", "train", {"color": pa.array([None, None], pa.string()), "size": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="categorical column 'color' is null in every training row"):
        kind(tmp_path / "nulls", store, categorical=["color"], numeric=["size"])
    write(tmp_path / "floats", "train", {"size": [1.0, 2.0]}, labels=pa.array([0.0, 1.0]))
    with pytest.raises(DataError, match="column 'label' holds double values; expected integer class indices"):
        opened(tmp_path / "floats", features={"numeric": ["size"]})
    with pytest.raises(ConfigError, match="key 'data.features': column.s. color listed as both categorical and"):
        kind(data, store, categorical=["color"], numeric=["color"])


def test_the_label_may_be_another_column(tmp_path: Path) -> None:
    """``data.label: clicked``: read as the label by every reader; a column named 'label' is then no input."""
    folder = tmp_path / "clicks"
    folder.mkdir()
    columns = {"id": ["a", "b", "c"], "label": ["x", "y", "x"], "shop": ["s", "t", "s"]}
    table = pa.table({**columns, "clicked": pa.array([1, 0, 1], pa.int64())})
    pq.write_table(table, folder / "train-0.parquet")
    split = opened(folder, label="clicked", features={})
    assert (split.input.columns, split.identity()["label"]) == (("shop",), "clicked")
    assert split.read_table(["id", "label"]).to_pydict() == {"id": ["a", "b", "c"], "label": [1, 0, 1]}
    (unit,) = split.units(10)
    assert unit.read().to_pydict() == {"id": ["a", "b", "c"], "shop": ["s", "t", "s"], "label": [1, 0, 1]}
    with pytest.raises(DataError, match="column 'label' cannot be an input while the label is column 'clicked'"):
        opened(folder, label="clicked", features={"categorical": ["label", "shop"]})
    pq.write_table(table.set_column(3, "clicked", pa.array([1.0, 0.0, 1.0])), folder / "train-0.parquet")
    with pytest.raises(DataError, match="column 'clicked' holds double values; expected integer class indices"):
        opened(folder, label="clicked", features={})
