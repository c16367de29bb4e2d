"""A language model's KD losses, per token, by name: the loss family of the ``language_model`` task.

``token_terms`` keeps the positions that have a next token (padding's targets are ``IGNORE``), so that every
entry sees rows of real tokens: the student's logits [T, V] and the teacher's ``Targets`` at those positions,
dense logits [T, V] or per-token top-k labels (``labels/tokens.py``: ids and log-probabilities [T, k] at
temperature 1, the tail's log-mass [T, 1]). It mixes the entry's sum over real tokens with the next-token
cross-entropy's by ``alpha`` (``token_terms``), as ``losses.terms`` does for one label a row.

Top-k labels are compared on k + 1 bins: the k kept tokens and the tail, the student's tail its mass outside
those k (``bins``). With the tail as one more bin, forward KL is exact on the stored support and every
divergence sees the teacher's whole mass. A KD temperature T softens both sides' bins alike (at T = 1, the
default for language models, nothing changes); each term is scaled by T^2, as Hinton's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distkd.data.blocks import IGNORE
from distkd.methods.losses import KDLoss, Targets, Terms, terms
from distkd.registry import Registry

TOKEN_LOSSES: Registry[KDLoss] = Registry("per-token KD loss")


def token_terms(
    name: str, student: torch.Tensor, targets: Targets, next_tokens: torch.Tensor, *args, **kwargs
) -> Terms:
    """``ramp * alpha * KD`` and ``(1 - alpha) * CE`` summed over the real tokens of a batch (``Terms``, a token
    where ``losses.terms`` has a row): ``student`` [N, L, V], ``next_tokens`` [N, L] (``IGNORE`` where none), the
    teacher's columns [N, L * per position] as read; the rest (alpha, temperature, standardize, ramp, the entry's
    kwargs) as ``losses.terms`` takes them."""
    real = next_tokens != IGNORE
    per_token = Targets(*(t if t is None else t.reshape(*real.shape, -1)[real] for t in targets))
    return terms(name, student[real], per_token, next_tokens[real], *args, family=TOKEN_LOSSES, **kwargs)


def token_objective(
    name: str, student: torch.Tensor, targets: Targets, next_tokens: torch.Tensor, *args, **kwargs
) -> torch.Tensor:
    """The batch's loss, ``ramp * alpha * KD + (1 - alpha) * CE``, each term the mean over the real tokens."""
    real = int((next_tokens != IGNORE).sum())
    return token_terms(name, student, targets, next_tokens, *args, **kwargs).mean(real, real)


def bins(student: torch.Tensor, targets: Targets, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's and the student's log-probabilities on the same bins, softened at ``temperature``: every
    token of dense labels; of top-k labels the k tokens and the tail (no tail when k is the vocabulary). The
    teacher's stored bins are renormalised, which absorbs their storage's rounding."""
    log_q = F.log_softmax(student, dim=-1)
    if targets.logits is not None:
        log_p = F.log_softmax(targets.logits, dim=-1)
    else:
        log_q_top = log_q.gather(1, targets.index)
        if targets.index.shape[1] == student.shape[1]:  # every token kept: no tail
            log_p, log_q = targets.logprob, log_q_top
        else:
            log_q_tail = log_q.scatter(1, targets.index, float("-inf")).logsumexp(dim=1, keepdim=True)
            log_p = torch.cat([targets.logprob, targets.tail.reshape(-1, 1)], dim=1)
            log_q = torch.cat([log_q_top, log_q_tail], dim=1)
    return F.log_softmax(log_p / temperature, dim=1), F.log_softmax(log_q / temperature, dim=1)


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) of each row, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=1)


@TOKEN_LOSSES.register("forward_kl")
def forward_kl(student: torch.Tensor, targets: Targets, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher || student)``, the mean over tokens: mass-covering, Hinton's KD per token."""
    log_p, log_q = bins(student, targets, temperature)
    return temperature**2 * kl(log_p, log_q).mean()


@TOKEN_LOSSES.register("reverse_kl")
def reverse_kl(student: torch.Tensor, targets: Targets, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(student || teacher)``: mode-seeking (MiniLLM, Gu et al. 2024), on the same bins."""
    log_p, log_q = bins(student, targets, temperature)
    return temperature**2 * kl(log_q, log_p).mean()


@TOKEN_LOSSES.register("gkd_jsd")
def gkd_jsd(
    student: torch.Tensor, targets: Targets, labels: torch.Tensor, temperature: float, beta: float = 0.5
) -> torch.Tensor:
    """GKD's generalised Jensen-Shannon divergence (Agarwal et al., ICLR 2024): with ``M = beta P + (1 - beta) Q``,
    ``beta KL(P || M) + (1 - beta) KL(Q || M)``, P the teacher, Q the student; near forward KL (scaled by beta)
    as beta -> 0, near reverse KL as beta -> 1; beta 0.5 is the Jensen-Shannon divergence. Times T^2."""
    if not 0 < beta < 1:
        raise ValueError(
            f"beta must be strictly between 0 and 1 (got {beta}): use forward_kl or reverse_kl at the ends"
        )
    log_p, log_q = bins(student, targets, temperature)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    return temperature**2 * (beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)).mean()
