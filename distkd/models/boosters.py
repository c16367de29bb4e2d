"""Gradient-boosted teachers: a saved LightGBM or XGBoost model, run on the split's own columns.

``lightgbm:<file>`` (``Booster.save_model``'s text file) and ``xgboost:<file>`` (``save_model``'s JSON or UBJSON)
are programs, like ``torchscript:``: they hold their weights, label and are evaluated, never train. A booster was
trained on a DataFrame of the raw feature columns, so it reads those (a ``ColumnModel``): its feature names must
be columns of the job's data, its categorical features are given as pandas categories with exactly the
categories it stored (LightGBM's ``pandas_categorical``, XGBoost's ``get_categories``; a value it never saw, like
a null, is missing to it) and its numeric features as float64 with NaN for nulls.

Its logits are its raw margins: per class for a multiclass booster; for a binary one ``[0, m]``, the margin m
of the positive class beside a fixed 0. Softmax of ``[0, m]`` is the booster's own ``sigmoid(m)``, and the
column holds the booster's score exactly as ``predict(raw_score=True)`` gives it; ``[-m/2, m/2]`` has the same
softmax at every temperature (every KD loss here, logit standardisation and the ensembles' combinations see only
differences of logits) but would store a halved margin that no booster prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from distkd.models.columns import ColumnModel, Columns

# objective -> whether it scores one class against the other (one margin) or each of several (one per class)
LIGHTGBM_BINARY, LIGHTGBM_MULTICLASS = ("binary", "cross_entropy"), ("multiclass", "multiclassova")
XGBOOST_BINARY, XGBOOST_MULTICLASS = ("binary:logistic", "binary:logitraw"), ("multi:softprob", "multi:softmax")


class BoosterError(ValueError):
    """A booster that is not a classifier, or not one distkd can feed (a file that is no booster at all raises
    what its library raises)."""


class Booster(ColumnModel):
    """A booster's margins as logits (the module docstring). ``weights_uri``: its file, which holds its weights
    (as a program's, ``models.sources.Program``); the file's bytes are kept as a buffer, so the model's size is
    the file's."""

    def __init__(
        self, data: bytes, uri: str, columns: Sequence[str], categories: dict[str, list], classes: int
    ) -> None:
        super().__init__()
        self.weights_uri, self.classes = uri, classes
        self.columns = tuple(columns)
        self.categories = categories  # categorical column -> the categories the booster was trained with
        self.numeric = tuple(c for c in self.columns if c not in categories)
        self.register_buffer("file", torch.frombuffer(bytearray(data), dtype=torch.uint8))

    def frame(self, rows: Columns):
        """The rows as the DataFrame the booster was trained on: its columns in its order."""
        import pandas as pd

        def categories(column: str) -> pd.Categorical:
            values, known = pd.Series(rows[column], dtype=object), self.categories[column]
            return pd.Categorical(values.where(values.isin(known)), categories=known)  # unseen: missing, as null

        return pd.DataFrame(
            {
                c: categories(c) if c in self.categories else pd.Series(rows[c]).astype("float64").to_numpy()
                for c in self.columns
            }
        )

    def margins(self, rows: Columns) -> np.ndarray:
        """The raw scores, [N] (binary) or [N, C]."""
        raise NotImplementedError

    def forward(self, rows: Columns) -> torch.Tensor:
        margins = np.asarray(self.margins(rows), dtype=np.float64)
        if self.classes == 2 and margins.ndim == 1:
            margins = np.stack([np.zeros_like(margins), margins], axis=1)
        return torch.from_numpy(margins.reshape(len(margins), self.classes)).float()

    def train(self, mode: bool = True) -> Booster:
        """Only the flag: a booster does not train here."""
        self.training = mode
        return self


def _classes(objective: str, binary: tuple[str, ...], multiclass: tuple[str, ...], per_class: int) -> int:
    if objective in binary:
        return 2
    if objective in multiclass:
        return per_class
    raise BoosterError(
        f"a booster of objective '{objective}', not a classifier's (expected one of {', '.join(binary + multiclass)})"
    )


class LightGBM(Booster):
    def __init__(self, data: bytes, uri: str) -> None:
        import lightgbm

        booster = lightgbm.Booster(model_str=data.decode())
        columns = booster.feature_name()
        objective = str(booster.params.get("objective", "")).split()[0]
        classes = _classes(objective, LIGHTGBM_BINARY, LIGHTGBM_MULTICLASS, booster.num_model_per_iteration())
        categorical = [columns[i] for i in _indices(booster.params.get("categorical_feature"))]
        stored = booster.pandas_categorical or []
        if len(stored) != len(categorical):
            raise BoosterError(
                f"{len(categorical)} categorical features but {len(stored)} category lists (pandas_categorical): "
                "train it on a DataFrame whose categorical columns are pandas categories"
            )
        super().__init__(data, uri, columns, dict(zip(categorical, map(list, stored))), classes)
        self.booster = booster

    def margins(self, rows: Columns) -> np.ndarray:
        return self.booster.predict(self.frame(rows), raw_score=True, num_threads=torch.get_num_threads())


class XGBoost(Booster):
    def __init__(self, data: bytes, uri: str) -> None:
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        if not booster.feature_names:
            raise BoosterError("a booster without feature names: train it on a DataFrame of the feature columns")
        learner = json.loads(booster.save_config())["learner"]
        per_class = int(learner["learner_model_param"]["num_class"])
        classes = _classes(learner["objective"]["name"], XGBOOST_BINARY, XGBOOST_MULTICLASS, per_class)
        stored = dict(booster.get_categories(export_to_arrow=True).to_arrow())
        categories = {c: values.to_pylist() for c, values in stored.items() if values is not None}
        super().__init__(data, uri, booster.feature_names, categories, classes)
        self.booster = booster

    def margins(self, rows: Columns) -> np.ndarray:
        import xgboost

        self.booster.set_param({"nthread": torch.get_num_threads()})
        return self.booster.predict(xgboost.DMatrix(self.frame(rows), enable_categorical=True), output_margin=True)


def _indices(value: object) -> list[int]:
    """LightGBM's ``categorical_feature`` parameter as read back from a file: a list, one int or a ``1,3`` text."""
    if value in (None, ""):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return [int(i) for i in value.split(",") if i.strip()]
    return [int(i) for i in value]


BOOSTERS = {"lightgbm": LightGBM, "xgboost": XGBoost}  # source name -> the class that reads its files
