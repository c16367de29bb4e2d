"""Models that read the split's own columns, not the input kind's tensors.

A gradient-boosted teacher (``models/boosters.py``) was trained by its user on the raw feature columns: it needs
the values as the shards hold them (strings for its categories, numbers with their nulls), which the tabular
kind's encoding (vocabulary indices, standardised numbers) does not give back exactly. Such a model is a
``ColumnModel``: it names the ``columns`` it reads and is called with a batch's raw columns; every other model
is called with the kind's ``model_input``. ``model_input`` is the one place that tells them apart, for the
teacher actors, the evaluators and the checks alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distkd.data.kinds import InputKind

Columns = dict[str, np.ndarray]  # a batch's raw columns by name, NumPy arrays as a Ray Data numpy batch has them


class ColumnModel(nn.Module):
    """A model called with a batch's raw ``columns`` (``Columns``), returning logits [N, C] on the CPU."""

    columns: tuple[str, ...]  # the columns it reads
    numeric: tuple[str, ...]  # of them, those it reads as numbers (the others as categories)

    def example(self, rows: int) -> Columns:
        """``rows`` rows of null values, which every column may hold (for measuring the model's cost)."""
        return {c: np.full(rows, np.nan if c in self.numeric else None, dtype=object) for c in self.columns}


def model_input(model: nn.Module, kind: InputKind, batch: dict, device: torch.device) -> torch.Tensor | Columns:
    """What ``model`` is called with for ``batch`` (the raw columns and the kind's prepared ones): a
    ``ColumnModel`` its columns, any other the kind's model input on ``device``."""
    if isinstance(model, ColumnModel):
        return {c: np.asarray(batch[c]) for c in model.columns}
    return kind.model_input({name: torch.as_tensor(batch[name]) for name in kind.columns}, device)
