"""Per-token soft labels of a language model: at every position, the teacher's k most probable next tokens,
their log-probabilities at temperature 1, and the log of the teacher's mass outside them (the tail).

Stored at temperature 1 with the tail, one entry serves any KD temperature and the losses see the teacher's
whole mass: the k tokens and the tail as one more bin (``methods/token_losses.py``), nothing renormalised away.

- ids: the narrowest unsigned integer that holds the vocabulary (``id_type``): 1 byte up to 256 tokens, 2 up
  to 65,536, else 4.
- values (log-probabilities and the tail): ``float16``, or ``uint8`` in one fixed code (``to_code``): code
  ``c`` in 0..254 stands for log-probability ``-c / 16``, and 255 for probability 0. A fixed code in the log
  domain keeps every kept probability within a factor ``exp(1 / 32)`` (3.2 %) of the teacher's, on every row,
  with no per-row scale to store; a probability under ``exp(-254 / 16)`` (1.3e-7) is stored as that floor,
  and only an exact 0 (the tail when k is the whole vocabulary) as 0. The losses renormalise the k + 1 bins,
  which absorbs the rounding.

With k = 32 and a vocabulary under 65,536 a token takes 32 * 2 + 33 * 2 = 130 bytes in float16 and
32 * 2 + 33 = 97 in 8 bits, before Parquet's compression.
"""

from __future__ import annotations

import numpy as np
import torch

STEP = 1 / 16  # nats per step of the 8-bit code
ZERO = 255  # the 8-bit code of probability 0
FLOOR = -(ZERO - 1) * STEP  # the smallest log-probability the 8-bit code holds above 0
VALUE_TYPES = ("float16", "uint8")  # how the log-probabilities are stored
UNDERFLOW = -87.0  # float32 exp of less is under its smallest normal number: a sum of such terms may be 0


def id_type(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer type holding ids 0 .. vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} ids does not fit 32 bits")


def to_code(logprob: np.ndarray) -> np.ndarray:
    """Log-probabilities (<= 0, or -inf) -> the 8-bit code: nearest step, clamped at ``FLOOR``; -inf -> ``ZERO``."""
    steps = np.clip(np.rint(-logprob / STEP), 0, ZERO - 1)
    return np.where(np.isneginf(logprob), ZERO, steps).astype(np.uint8)


def from_code(code: np.ndarray) -> np.ndarray:
    """The 8-bit code -> float32 log-probabilities (``ZERO`` -> -inf)."""
    logprob = -code.astype(np.float32) * np.float32(STEP)
    return np.where(code == ZERO, np.float32(-np.inf), logprob)


def top_k_(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [..., V] -> the k most probable ids [..., k], their log-probabilities at temperature 1 [..., k] and the
    log of the mass outside them [...] (-inf when k >= V), taken in log space so that a small tail is exact.
    Overwrites ``logits`` (the trailing ``_``, as torch's in-place methods): pass a copy to keep them.

    One pass of ``exp``, in place, serves the normaliser and the tail: each token's probability relative to the
    most probable one's, at most 1, summed over all tokens and over those outside the top k, so the tail is a sum
    of positive terms (no ``1 - sum`` cancellation). Where every tail term underflows (all under ``exp(-87)`` of the
    most probable's) it is summed again shifted by its own largest, the (k+1)-th of the one ``topk``, from a copy of
    those rows' logits taken before the pass. As many passes over [..., V] as a log-softmax and its top-k, with no
    [..., V] copy (the bare loop of benchmarks/lm_labels.py)."""
    vocab = logits.shape[-1]
    top = logits.topk(min(k + 1, vocab), dim=-1)
    best, indices = top.values[..., :1], top.indices[..., :k]
    if k < vocab:
        largest = top.values[..., k]  # the tail's largest logit: -inf where the tail has no mass
        may_underflow = (largest - best[..., 0] < UNDERFLOW) & largest.isfinite()
        kept = logits[may_underflow]  # the few rows whose tail may sum to 0 below: a copy
    relative = logits.sub_(best).exp_()  # p / p_max
    total = relative.sum(dim=-1, keepdim=True)
    normaliser = best + total.log()  # logsumexp
    values = top.values[..., :k] - normaliser
    if k >= vocab:
        return indices, values, torch.full(logits.shape[:-1], float("-inf"), device=logits.device)
    rest = relative.scatter_(-1, indices, 0.0).sum(dim=-1)
    tail = (rest / total[..., 0]).log()
    under = (rest == 0) & may_underflow  # a tail of mass that underflowed, not one of none (-inf logits)
    if under.any():
        shifted = kept[under[may_underflow]].scatter(-1, indices[under], float("-inf")) - largest[under, None]
        tail[under] = shifted.exp().sum(dim=-1).log() + largest[under] - normaliser[under][..., 0]
    return indices, values, tail


def encode(values: np.ndarray, value_type: str) -> np.ndarray:
    """float32 log-probabilities -> as stored (``VALUE_TYPES``)."""
    return to_code(values) if value_type == "uint8" else values.astype(np.float16)


def decode(stored: np.ndarray) -> np.ndarray:
    """Stored values -> float32 log-probabilities: the 8-bit code by its type, float16 as it is."""
    return from_code(stored) if stored.dtype == np.uint8 else stored.astype(np.float32)
