"""What the stages know of a split's input, the ``InputKind`` protocol, apart from its implementations
(``data/inputs.py``: image and text; ``data/tabular.py``), so that specs and stages name it without importing those;
and ``Kind``, an input kind's entry in the registry (``inputs.INPUTS``): all that is kind-specific beside it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from distkd.config import DataConfig, Strict
from distkd.data.source import Input, Split

if TYPE_CHECKING:
    import torch


class InputKind(Protocol):
    name: ClassVar[str]
    column: str  # the input column of the shards
    columns: ClassVar[tuple[str, ...]]  # what ``prepare`` puts in a batch for the model, beside id and label
    augments: ClassVar[bool]  # whether views and random crops/flips apply
    identity_key: ClassVar[str]  # the key of ``identity()`` in the identities of the outputs made from the data

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one row of model input: what models are built for."""

    def prepare(self, batch: dict[str, np.ndarray], pool: Executor | None = None) -> dict[str, np.ndarray]:
        """A Ray Data batch of raw rows -> id, label and ``columns`` (a CPU task or actor)."""

    def on_device(self, batch: dict[str, np.ndarray], device: torch.device, pool: Executor) -> dict[str, torch.Tensor]:
        """A batch of raw rows -> ``columns`` as tensors on ``device`` (a teacher actor's, decoding there)."""

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """A batch of ``prepare``'s columns as tensors -> what the model is called with, on ``device``."""

    def example(self, rows: int) -> dict[str, torch.Tensor]:
        """A batch of ``rows`` blank rows as ``prepare`` makes them (for the checks' forward passes)."""

    def row_bytes(self) -> int:
        """Bytes of one prepared row: what deciding memory against stream counts."""

    def model_kwargs(self) -> dict:
        """What a model needs beyond the shape and the class count (text: the vocabulary size)."""

    def identity(self) -> dict:
        """What changes the model inputs beyond the data: part of every output's identity."""

    def pending(self) -> tuple[str, str] | None:
        """What ``ready`` has to make and where, as the console says it; None when nothing."""

    def ready(self) -> None:
        """Make the outputs the kind needs before any stage reads the data (text: train the tokenizer)."""

    def check(self, split: Split) -> None:
        """Refuse, before work, rows this kind cannot use (a ``ConfigError`` naming the file and row)."""


# (training split, data config, the kind's settings (None: not given), store) -> the kind, built for the job's data
Builder = Callable[[Split, DataConfig, Strict | None, str], InputKind]
# (a shard's schema, its input column if it has one (named by 'data.input_column', else a kind's default column the
# shard holds), the kind's settings, the label's column) -> (the columns it reads, what of them is in the data's
# identity), or None when the shard holds no input of the kind
Find = Callable[[pa.Schema, str | None, Strict | None, str], tuple[tuple[str, ...], dict] | None]
STRINGS = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)  # Arrow's string types


def same_columns(train: Input, other: Input) -> bool:
    """Two splits of one kind have the same input when it is in the same columns."""
    return train.columns == other.columns


@dataclass(frozen=True)
class Kind:
    """An input kind as the registry holds it: how it finds its input in a shard's schema (``find``, given the input
    column: ``data.input_column``, else the first kind's default ``column`` the shard has, whose type then says which
    kind it is; kinds whose settings the job gives are asked first, a ``catch_all`` last), builds itself for a job's
    data (``build``) and from a run's record (``recorded``, for ``distkd export``; None: not exported), its
    settings (the key under ``data`` and their schema, validated before work with the job file's messages), and what
    "the same input" means for it across splits (``same``)."""

    find: Find
    build: Builder
    holds: str  # what its input is, as a message says it ("encoded image bytes")
    column: str | None = None  # its default input column ("image"); None: it finds its columns itself
    settings: tuple[str, type[Strict]] | None = None  # ('tokenizer', TokenizerConfig): read from data.<key>
    recorded: Callable[[Split, dict], InputKind] | None = None  # (the run's split, its run.json) -> the kind
    same: Callable[[Input, Input], bool] = same_columns
    catch_all: bool = False  # takes whatever columns a shard has: asked after every other kind


@dataclass(frozen=True)
class OneColumn:
    """``Kind.find`` of a kind whose input is the input column, holding a type one of ``types`` accepts. The column
    is in the data's identity unless it is ``unnamed`` (image keys, older than input kinds, name no 'image')."""

    types: Sequence[Callable[[pa.DataType], bool]]
    unnamed: str | None = None

    def __call__(
        self, schema: pa.Schema, column: str | None, settings: Strict | None, label: str
    ) -> tuple[tuple[str, ...], dict] | None:
        if column is None or column not in schema.names:
            return None
        if not any(accept(schema.field(column).type) for accept in self.types):
            return None
        return (column,), {} if column == self.unnamed else {"input_column": column}
