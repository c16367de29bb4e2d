"""A language model's rows: documents' token ids packed into blocks of ``length`` tokens.

Each document is followed by the separator and the next one starts after it, so blocks waste no padding and a
model learns where documents end; only the stream's last block is padded (``PAD``). Every position's target is
the next token of the stream, across block boundaries, and ``IGNORE`` where there is none (the stream's last token,
and padding), which every loss and metric leaves out. A block is named by its content (``block_ids``): the same
tokens with the same targets are the same block wherever they come from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from distkd.data.kinds import InputKind
from distkd.data.source import Split
from distkd.data.tokenizer import PAD

if TYPE_CHECKING:
    import torch

IGNORE = -100  # the target of a position with no next token: F.cross_entropy's ignore_index
# A document's end: the id of the tokenizer's own first token (its '[PAD]' when trained here), which no text
# tokenises to; the ids models see are the tokenizer's plus one (``tokenizer.PAD``, 0, is padding).
SEPARATOR = PAD + 1


def pack(documents: Iterable[Sequence[int]], length: int, separator: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents' token ids -> ``tokens`` int32 [B, length] and their targets ``next`` int64 [B, length]."""
    stream = np.array([t for doc in documents for t in (*doc, separator)], dtype=np.int64)
    blocks = max(1, -(-len(stream) // length))
    padded = np.full(blocks * length + 1, PAD, dtype=np.int64)
    padded[: len(stream)] = stream
    following = padded[1:].copy()
    following[max(len(stream) - 1, 0) :] = IGNORE
    return padded[:-1].reshape(blocks, length).astype(np.int32), following.reshape(blocks, length)


def block_ids(tokens: np.ndarray, following: np.ndarray) -> list[str]:
    """Each block's id: a hash of its tokens and its targets."""
    return [
        hashlib.blake2b(t.astype(np.int32).tobytes() + f.astype(np.int32).tobytes(), digest_size=16).hexdigest()
        for t, f in zip(tokens, following)
    ]


@dataclass(frozen=True)
class DocumentBlocks:
    """The ``blocks`` input kind: each row's text is one document, tokenised by the text kind's tokenizer (trained
    in the store, or a saved one), ended by the separator and packed (``pack``) into one block of ``max_length``
    tokens, its targets the next tokens (``next``), padding and the position after the separator ``IGNORE``; a
    document longer than the block is cut (the tokenizer counts the rows it cut). So a block is a row: the stages'
    row ids, shards and checks hold as they are, and a document's loss is its row's (the evaluation's paired
    interval over documents, its slices by the row's columns). The block is named by the row's content (the
    split's fingerprint, the tokenizer and ``max_length``, in every output's identity)."""

    name: ClassVar[str] = "blocks"
    columns: ClassVar[tuple[str, ...]] = ("tokens", "next")
    augments: ClassVar[bool] = False
    identity_key: ClassVar[str] = "inputs"
    text: InputKind  # the text kind that tokenises the documents (``inputs.TextInput``)

    @property
    def column(self) -> str:
        return self.text.column

    @property
    def shape(self) -> tuple[int, ...]:
        return self.text.shape

    @property
    def tokenizer(self):
        """The text kind's tokenizer (``tokenizer.Tokenizer``), which reads the documents."""
        return self.text.tokenizer

    def prepare(self, batch: dict[str, np.ndarray], pool: Executor | None = None) -> dict[str, np.ndarray]:
        text = self.text.prepare(batch)
        blocks = [pack([ids[:n]], len(ids), SEPARATOR) for ids, n in zip(text["tokens"], text["length"])]
        following = np.concatenate([f[:1] for _, f in blocks])
        following[text["truncated"], -1] = IGNORE  # a cut document's next token is not known
        tokens = np.concatenate([t[:1] for t, _ in blocks])
        return {"id": batch["id"], "tokens": tokens, "next": following, "label": batch["label"]}

    def on_device(self, batch: dict[str, np.ndarray], device: torch.device, pool: Executor) -> dict[str, torch.Tensor]:
        import torch  # here, not at the top: data/inputs.py says why

        prepared = self.prepare(batch)
        return {name: torch.from_numpy(prepared[name]).to(device) for name in self.columns}

    def model_input(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return self.text.model_input(batch, device)

    def example(self, rows: int) -> dict[str, torch.Tensor]:
        import torch

        tokens = self.text.example(rows)["tokens"]
        following = torch.full(tokens.shape, IGNORE, dtype=torch.int64)
        following[:, 0] = SEPARATOR  # the example's one real token, then its document's end
        return {"tokens": tokens, "next": following}

    def row_bytes(self) -> int:
        return 3 * self.text.row_bytes()  # int32 tokens, int64 targets

    def model_kwargs(self) -> dict:
        return self.text.model_kwargs()

    def identity(self) -> dict:
        return {**self.text.identity(), "blocks": "document"}

    def pending(self) -> tuple[str, str] | None:
        return self.text.pending()

    def ready(self) -> None:
        self.text.ready()

    def check(self, split: Split) -> None:
        self.text.check(split)
