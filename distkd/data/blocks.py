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

import numpy as np

from distkd.data.tokenizer import PAD

IGNORE = -100  # the target of a position with no next token: F.cross_entropy's ignore_index


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
