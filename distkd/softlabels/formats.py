"""How teacher outputs are stored in a cache entry, and read back as training columns.

- ``dense``: every logit, float16 or float32.
- ``topk``: the k most probable classes and their log-probabilities at the stored temperature;
  the mass outside them is ``1 - sum(exp(logprob))``, so a top-k label is exact on the stored
  classes and, with that remainder, sums to one (see ``distill.losses.topk_kl``).

With V recorded views a row holds V blocks of these (view-major) and the views' parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
# training column -> (stored column, dtype), per layout
TRAINING_COLUMNS = {
    "dense": {"teacher_logits": ("logits", np.float32)},
    "topk": {"teacher_index": ("topk_index", np.int64), "teacher_logprob": ("topk_logprob", np.float32)},
}


@dataclass(frozen=True)
class Format:
    layout: str  # dense | topk
    dtype: str  # float16 | float32
    top_k: int | None = None
    temperature: float | None = None  # topk log-probabilities are at this temperature

    def columns(self, logits: torch.Tensor) -> dict[str, pa.Array]:
        """Teacher logits [N, V, C] (float32) -> the stored columns (one row per sample)."""
        n, v, c = logits.shape
        if self.layout == "dense":
            return {"logits": fixed_list(logits.reshape(n, v * c).numpy(), ARROW_DTYPES[self.dtype])}
        logprob = torch.log_softmax(logits / self.temperature, dim=-1)
        top = logprob.topk(min(self.top_k, c), dim=-1)
        return {
            "topk_index": fixed_list(top.indices.reshape(n, -1).numpy().astype(np.int32), pa.int32()),
            "topk_logprob": fixed_list(top.values.reshape(n, -1).numpy(), ARROW_DTYPES[self.dtype]),
        }

    def training_columns(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Stored columns -> what the training loop reads (float32 logits or index + log-prob)."""
        return {name: to_numpy(table[stored], dtype) for name, (stored, dtype) in TRAINING_COLUMNS[self.layout].items()}

    def logits(self, columns: dict[str, np.ndarray], views: int) -> np.ndarray:
        """Training columns -> the teacher's logits [N, V, C], up to a constant per row and view: top-k labels as
        their log-probabilities times the stored temperature, which takes labels that keep every class (C = k)."""
        if self.layout == "dense":
            (logits,) = (columns[name] for name in TRAINING_COLUMNS["dense"])
            return logits.reshape(len(logits), views, -1)
        index, logprob = (columns[name].reshape(len(columns[name]), views, -1) for name in TRAINING_COLUMNS["topk"])
        if not (np.sort(index, axis=-1) == np.arange(index.shape[-1])).all():
            raise ValueError(f"top-{self.top_k} labels do not keep every class: their logits are not known")
        dense = np.empty_like(logprob)
        np.put_along_axis(dense, index, logprob, axis=-1)
        return self.temperature * dense


def fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    """A 2-D array -> a fixed-size-list column of ``dtype``."""
    flat = pa.array(values.reshape(-1)).cast(dtype)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def to_numpy(column: pa.ChunkedArray | pa.FixedSizeListArray, dtype: type) -> np.ndarray:
    """A fixed-size-list column -> a 2-D array of ``dtype``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(column), column.type.list_size)
