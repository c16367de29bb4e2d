"""Boosters trained the way their users train them: on a DataFrame of adult's raw columns, the categorical ones as
pandas categories, saved to a file; and their own raw scores, to hold distkd's logits against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import ROOT

ADULT = ROOT.parent / "shared" / "datasets" / "adult"
CATEGORICAL = ["workclass", "education", "marital_status", "occupation", "relationship", "gender"]
NUMERIC = ["age", "educational_num", "capital_gain", "hours_per_week"]
FEATURES = {"categorical": CATEGORICAL, "numeric": NUMERIC, "min_count": 3}
EXTENSIONS = {"lightgbm": "booster.txt", "xgboost": "booster.ubj"}  # the file each writes


def rows(split: str, count: int, start: int = 0) -> pa.Table:
    """``count`` rows of adult's ``split`` from row ``start`` (the first file's)."""
    return pq.read_table(sorted(ADULT.glob(f"{split}-*.parquet"))[0]).slice(start, count)


def frame(table: pa.Table, columns: list[str], categories: dict[str, pd.Index] | None = None) -> pd.DataFrame:
    """The user's DataFrame of ``columns``: the string ones as pandas categories (``categories``: those a booster
    was trained with, a value outside them missing, as a user predicting on new rows sets them)."""
    df = table.select(columns).to_pandas()
    for c in columns:
        if pa.types.is_string(table.schema.field(c).type):
            values = df[c].astype(object)
            if categories is not None:
                values = values.where(values.isin(categories[c]))
            df[c] = pd.Categorical(values, categories=None if categories is None else categories[c])
    return df


def train(kind: str, folder: Path, table: pa.Table, labels: np.ndarray, columns: list[str]) -> Path:
    """A small booster of ``kind`` on ``columns`` of ``table``, a few trees, saved into ``folder``; binary or
    multiclass by the labels' count."""
    df, classes, path = frame(table, columns), int(labels.max()) + 1, folder / EXTENSIONS[kind]
    if kind == "lightgbm":
        import lightgbm

        objective = {"objective": "binary"} if classes == 2 else {"objective": "multiclass", "num_class": classes}
        params = {**objective, "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1}
        lightgbm.train(params, lightgbm.Dataset(df, labels), num_boost_round=5).save_model(path)
    else:
        import xgboost

        objective = {"objective": "binary:logistic"} if classes == 2 else {"objective": "multi:softprob"}
        params = {**objective, **({"num_class": classes} if classes > 2 else {}), "max_depth": 3}
        xgboost.train(params, xgboost.DMatrix(df, labels, enable_categorical=True), num_boost_round=5).save_model(path)
    return path


def margins(kind: str, path: Path, df: pd.DataFrame) -> np.ndarray:
    """The booster's own raw scores for ``df``: [N] (binary) or [N, C]."""
    if kind == "lightgbm":
        import lightgbm

        return lightgbm.Booster(model_file=path).predict(df, raw_score=True)
    import xgboost

    return xgboost.Booster(model_file=path).predict(xgboost.DMatrix(df, enable_categorical=True), output_margin=True)
