"""A language model's exact, mergeable metrics: next-token statistics of each block, summed on the driver.

As ``metrics.py`` does for one label a row, each block is reduced to sums over its real tokens (positions with a
next token; padding's target is ``IGNORE``): the summed negative log-likelihood and the token count, so that the
perplexity ``exp(nll / tokens)`` is exact over any split into blocks; next-token hits; confidence bins (expected
calibration error of the next-token distribution); with a teacher, top-1 agreement and KL(teacher || model).
No confusion matrix: over a vocabulary it would be V x V.
"""

from __future__ import annotations

import math

import numpy as np

from distkd.data.blocks import IGNORE
from distkd.evaluate.metrics import calibration, ece, log_softmax


def token_stats(
    logits: np.ndarray, following: np.ndarray, teacher_logits: np.ndarray | None = None, num_bins: int = 15
) -> dict[str, np.ndarray]:
    """Sums over the real tokens of a block, each with a leading axis of length 1: ``logits`` [N, L, V],
    ``following`` [N, L] (the next tokens, ``IGNORE`` where none), ``teacher_logits`` as ``logits``."""
    real = following != IGNORE
    log_t = None if teacher_logits is None else log_softmax(teacher_logits[real])
    return real_token_stats(log_softmax(logits[real]), following[real].astype(np.int64), log_t, num_bins)


def real_token_stats(
    log_p: np.ndarray, targets: np.ndarray, log_t: np.ndarray | None = None, num_bins: int = 15
) -> dict[str, np.ndarray]:
    """``token_stats`` of real tokens as rows: the model's log-probabilities ``log_p`` [T, V], the next tokens
    ``targets`` [T], the teacher's ``log_t`` as ``log_p`` (so an evaluator normalises each model's logits once
    for a block and all its slices)."""
    predicted = log_p.argmax(axis=1)
    correct = predicted == targets
    stats = {
        "tokens": np.int64(len(targets)),
        "nll_sum": np.float64(-log_p[np.arange(len(targets)), targets].sum()),
        "hits": np.int64(correct.sum()),
        **calibration(log_p, correct, num_bins),
    }
    if log_t is not None:
        stats["teacher_agree"] = np.int64((log_t.argmax(axis=1) == predicted).sum())
        stats["teacher_kl_sum"] = np.float64((np.exp(log_t) * (log_t - log_p)).sum())
    return {key: np.asarray(v)[None] for key, v in stats.items()}


def token_metrics(stats: dict[str, np.ndarray]) -> dict:
    """Metrics from summed ``token_stats`` (``metrics.sum_stats``), as a JSON-serialisable dict."""
    tokens = int(stats["tokens"])

    def per_token(key: str) -> float:
        return float(stats[key]) / tokens if tokens else 0.0

    nll = per_token("nll_sum")
    metrics = {
        "tokens": tokens,
        "nll": nll,
        "perplexity": math.exp(nll),
        "accuracy": per_token("hits"),
        "ece": ece(stats),
    }
    if "teacher_agree" in stats:
        metrics["teacher_agreement"] = per_token("teacher_agree")
        metrics["teacher_kl"] = per_token("teacher_kl_sum")
    return metrics
