"""How teacher outputs are stored in a cache entry, and read back as training columns.

A layout is one entry of ``FORMATS`` (``softlabels.format`` names it): how logits become stored columns,
which training columns those are read back as, and the logits those give back.

- ``dense``: every logit, float16 or float32.
- ``topk``: the k most probable classes and their log-probabilities at the stored temperature;
  the mass outside them is ``1 - sum(exp(logprob))``, so a top-k label is exact on the stored
  classes and, with that remainder, sums to one (see ``methods.losses.topk_kl``).
- ``tokens``: a language model's labels, per position: the k most probable next tokens, their
  log-probabilities at temperature 1 and the log of the mass outside them, ids in the narrowest integer,
  values in float16 or an 8-bit code (``labels/tokens.py``).

With V recorded views a row holds V blocks of these (view-major) and the views' parameters. A training
column is ``TARGET_PREFIX`` and the name of the ``methods.losses.Targets`` field it fills.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

from distkd.labels import tokens
from distkd.registry import Registry

ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
TARGET_PREFIX = "teacher_"  # a training column holding the teacher's side of a batch: teacher_<Targets field>


@dataclass(frozen=True)
class Format:
    layout: str  # an entry of FORMATS: dense | topk | tokens
    dtype: str  # float16 | float32; tokens: float16 | uint8 (``labels/tokens.py``)
    top_k: int | None = None
    temperature: float | None = None  # topk log-probabilities are at this temperature (tokens: 1, not recorded)

    def columns(self, logits: torch.Tensor) -> dict[str, pa.Array]:
        """Teacher logits [N, V, C] (float32) -> the stored columns (one row per sample). Overwrites a language
        model's logits (``tokens.top_k_``): the teacher's, used once."""
        return FORMATS[self.layout].encode(self, logits)

    @property
    def training_names(self) -> list[str]:
        """The training columns its stored columns are read back as."""
        return list(FORMATS[self.layout].training)

    def training_columns(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Stored columns -> what the training loop reads (float32 logits or index + log-prob)."""
        return FORMATS[self.layout].read(self, table)

    def logits(self, columns: dict[str, np.ndarray], views: int) -> np.ndarray:
        """Training columns -> the teacher's logits [N, V, C], up to a constant per row and view."""
        return FORMATS[self.layout].logits(self, columns, views)


class Layout:
    """What a ``FORMATS`` entry implements; ``training`` maps each training column to its stored column and dtype."""

    training: ClassVar[dict[str, tuple[str, type]]]

    @staticmethod
    def format(dtype: str, top_k: int, temperature: float) -> Format:
        """The format of this layout for the ``softlabels`` settings (top_k: the kept classes, the class count
        when not given; temperature: of the stored labels); a ``ValueError`` for a dtype it does not store."""
        raise NotImplementedError

    @staticmethod
    def encode(fmt: Format, logits: torch.Tensor) -> dict[str, pa.Array]:
        raise NotImplementedError

    @classmethod
    def read(cls, fmt: Format, table: pa.Table) -> dict[str, np.ndarray]:
        """Stored columns -> the training columns: each stored column as its dtype."""
        return {name: to_numpy(table[stored], dtype) for name, (stored, dtype) in cls.training.items()}

    @staticmethod
    def logits(fmt: Format, columns: dict[str, np.ndarray], views: int) -> np.ndarray:
        raise NotImplementedError


FORMATS: Registry[type[Layout]] = Registry("soft-label format")


@FORMATS.register("dense")
class Dense(Layout):
    training = {f"{TARGET_PREFIX}logits": ("logits", np.float32)}

    @staticmethod
    def format(dtype: str, top_k: int, temperature: float) -> Format:
        return Format("dense", stored_as(dtype, ARROW_DTYPES))

    @staticmethod
    def encode(fmt: Format, logits: torch.Tensor) -> dict[str, pa.Array]:
        n, v, c = logits.shape
        return {"logits": fixed_list(logits.reshape(n, v * c).numpy(), ARROW_DTYPES[fmt.dtype])}

    @staticmethod
    def logits(fmt: Format, columns: dict[str, np.ndarray], views: int) -> np.ndarray:
        (logits,) = (columns[name] for name in Dense.training)
        return logits.reshape(len(logits), views, -1)


@FORMATS.register("topk")
class TopK(Layout):
    training = {
        f"{TARGET_PREFIX}index": ("topk_index", np.int64),
        f"{TARGET_PREFIX}logprob": ("topk_logprob", np.float32),
    }

    @staticmethod
    def format(dtype: str, top_k: int, temperature: float) -> Format:
        return Format("topk", stored_as(dtype, ARROW_DTYPES), top_k, temperature)

    @staticmethod
    def encode(fmt: Format, logits: torch.Tensor) -> dict[str, pa.Array]:
        n, _, c = logits.shape
        logprob = torch.log_softmax(logits / fmt.temperature, dim=-1)
        top = logprob.topk(min(fmt.top_k, c), dim=-1)
        return {
            "topk_index": fixed_list(top.indices.reshape(n, -1).numpy().astype(np.int32), pa.int32()),
            "topk_logprob": fixed_list(top.values.reshape(n, -1).numpy(), ARROW_DTYPES[fmt.dtype]),
        }

    @staticmethod
    def logits(fmt: Format, columns: dict[str, np.ndarray], views: int) -> np.ndarray:
        """Their log-probabilities times the stored temperature, which takes labels that keep every class (C = k)."""
        index, logprob = (columns[name].reshape(len(columns[name]), views, -1) for name in TopK.training)
        if not (np.sort(index, axis=-1) == np.arange(index.shape[-1])).all():
            raise ValueError(f"top-{fmt.top_k} labels do not keep every class: their logits are not known")
        dense = np.empty_like(logprob)
        np.put_along_axis(dense, index, logprob, axis=-1)
        return fmt.temperature * dense


@FORMATS.register("tokens")
class Tokens(Layout):
    """Per position of a block (logits [N, L, V]: the positions where other layouts have views), the top-k next
    tokens at temperature 1 and the log of the teacher's mass outside them (``labels/tokens.py``)."""

    training = {
        f"{TARGET_PREFIX}index": ("token_index", np.int64),
        f"{TARGET_PREFIX}logprob": ("token_logprob", np.float32),
        f"{TARGET_PREFIX}tail": ("token_tail", np.float32),
    }

    @staticmethod
    def format(dtype: str, top_k: int, temperature: float) -> Format:
        return Format("tokens", stored_as(dtype, tokens.VALUE_TYPES), top_k)  # at T = 1, whatever the KD temperature

    @staticmethod
    def encode(fmt: Format, logits: torch.Tensor) -> dict[str, pa.Array]:
        n, _, vocab = logits.shape
        index, logprob, tail = tokens.top_k_(logits, fmt.top_k)
        ids = index.reshape(n, -1).numpy().astype(tokens.id_type(vocab))
        values = {"token_logprob": logprob.reshape(n, -1).numpy(), "token_tail": tail.reshape(n, -1).numpy()}
        stored = {name: tokens.encode(v, fmt.dtype) for name, v in values.items()}
        return {
            "token_index": fixed_list(ids, pa.from_numpy_dtype(ids.dtype)),
            **{name: fixed_list(v, pa.from_numpy_dtype(v.dtype)) for name, v in stored.items()},
        }

    @classmethod
    def read(cls, fmt: Format, table: pa.Table) -> dict[str, np.ndarray]:
        """The ids as int64, the values decoded from their stored type to float32 log-probabilities."""
        out = {}
        for name, (stored, dtype) in cls.training.items():
            column = to_numpy(table[stored], table.schema.field(stored).type.value_type.to_pandas_dtype())
            out[name] = column.astype(dtype) if stored == "token_index" else tokens.decode(column)
        return out

    @staticmethod
    def logits(fmt: Format, columns: dict[str, np.ndarray], views: int) -> np.ndarray:
        raise ValueError("per-token top-k labels keep k tokens of the vocabulary: their logits are not known")


def stored_as(dtype: str, types: Iterable[str]) -> str:
    """``dtype``, if the layout stores values in it."""
    if dtype not in types:
        raise ValueError(f"{dtype} values are not stored by this format; it takes {', '.join(types)}")
    return dtype


def fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    """A 2-D array -> a fixed-size-list column of ``dtype``."""
    flat = pa.array(values.reshape(-1)).cast(dtype)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def to_numpy(column: pa.ChunkedArray | pa.FixedSizeListArray, dtype: type) -> np.ndarray:
    """A fixed-size-list column -> a 2-D array of ``dtype``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(column), column.type.list_size)
