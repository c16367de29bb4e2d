"""What the stages know of a split's input: the ``InputKind`` protocol, apart from its implementations
(``data/inputs.py``: image and text), so that specs and stages name it without importing those."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import ClassVar, Protocol

import numpy as np
import torch

from distkd.data.source import Split


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
