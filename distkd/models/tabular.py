"""CTR-style models over a tabular input's ``features`` (data/tabular.py): categorical indices, then standardised
numbers and their null indicators. Built like the other models (``num_classes, in_channels, image_size``:
``image_size`` is the feature width, ``in_channels`` unused), with ``cardinalities`` (indices per categorical
column) and ``numeric`` (numeric columns) from the job's statistics.

- ``dcn_v2``: DCN-v2 (Wang et al., WWW 2021): a cross network of full-rank cross layers beside a deep MLP over the
  embedded fields, stacked into one head; the teacher.
- ``tabular_mlp``: small embeddings and one small hidden layer; a student.
- ``tabular_wide``: logistic regression on the one-hot categories and the numbers (a weight per value).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from distkd.data.tabular import split_features


def _widths(hidden: str) -> list[int]:
    return [int(w) for w in hidden.split(",") if w.strip()]


class Fields(nn.Module):
    """Each categorical column's embedding (``dim`` each) beside the numbers and null indicators: [N, C * dim + 2K]."""

    def __init__(self, cardinalities: tuple[int, ...], numeric: int, dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n in cardinalities)
        self.width = len(cardinalities) * dim + 2 * numeric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, numbers = split_features(x, len(self.embeddings))
        embedded = [embed(indices[:, i]) for i, embed in enumerate(self.embeddings)]
        return torch.cat([*embedded, numbers], dim=1)


def _mlp(width: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers), width


class CrossLayer(nn.Module):
    """x_{l+1} = x_0 * (W x_l + b) + x_l: one full-rank cross layer of DCN-v2."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCNv2(nn.Module):
    """DCN-v2, the parallel form: cross network and deep network side by side over the embedded fields; with no
    cross layers, the head reads the deep network alone (``tabular_mlp``)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 0,
        cardinalities: tuple[int, ...] = (),
        numeric: int = 0,
        dim: int = 16,
        cross_layers: int = 3,
        hidden: str = "256,128",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.fields = Fields(tuple(cardinalities), numeric, dim)
        self.cross = nn.ModuleList(CrossLayer(self.fields.width) for _ in range(cross_layers))
        self.deep, deep_width = _mlp(self.fields.width, _widths(hidden), dropout)
        self.head = nn.Linear(self.fields.width * (cross_layers > 0) + deep_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.fields(x)
        if not self.cross:
            return self.head(self.deep(x0))
        crossed = x0
        for layer in self.cross:
            crossed = layer(x0, crossed)
        return self.head(torch.cat([crossed, self.deep(x0)], dim=1))


# Small embeddings and a small MLP: the student that serves next to the rest.
TabularMLP = functools.partial(DCNv2, dim=4, cross_layers=0, hidden="32", dropout=0.0)
# Logistic regression on the one-hot categories and the numbers: a scalar per value and no hidden layer, so each
# column adds its own term to the logits (exactly logistic regression for two classes; ``dim`` C for C classes).
TabularWide = functools.partial(DCNv2, dim=1, cross_layers=0, hidden="", dropout=0.0)
