"""A language model's evaluation statistics (evaluate/token_metrics.py): exact over any split into blocks, over real
tokens alone, and the same as the classification metrics on the real tokens taken as rows."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distkd.data.blocks import IGNORE
from distkd.evaluate.metrics import block_stats, compute_metrics, sum_stats
from distkd.evaluate.token_metrics import token_metrics, token_stats

RNG = np.random.default_rng(0)
N, L, V = 6, 5, 7
LOGITS = RNG.normal(size=(N, L, V)) * 2
TEACHER = RNG.normal(size=(N, L, V)) * 2
FOLLOWING = RNG.integers(0, V, (N, L))
FOLLOWING[-1, 2:] = IGNORE  # the stream's end: padding
FOLLOWING[2, 4] = IGNORE


def test_perplexity_is_exact_over_any_split_into_blocks():
    whole = token_metrics(sum_stats([token_stats(LOGITS, FOLLOWING, TEACHER)]))
    parts = [token_stats(LOGITS[i : i + 2], FOLLOWING[i : i + 2], TEACHER[i : i + 2]) for i in range(0, N, 2)]
    split = token_metrics(sum_stats(parts))
    assert split == pytest.approx(whole, rel=1e-12)
    nll = F.cross_entropy(torch.tensor(LOGITS).flatten(0, 1), torch.tensor(FOLLOWING).flatten(), ignore_index=IGNORE)
    assert whole["tokens"] == (FOLLOWING != IGNORE).sum() == N * L - 4
    assert whole["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-12)


def test_padding_takes_no_part_and_the_rest_are_the_classification_metrics_of_the_real_tokens():
    changed = LOGITS.copy()
    changed[FOLLOWING == IGNORE] = 50.0
    tokens = token_metrics(sum_stats([token_stats(changed, FOLLOWING, TEACHER)]))
    real = FOLLOWING != IGNORE
    rows = compute_metrics(sum_stats([block_stats(LOGITS[real], FOLLOWING[real], TEACHER[real])]))
    for key in ("accuracy", "ece", "nll", "teacher_agreement", "teacher_kl"):
        assert tokens[key] == pytest.approx(rows[key], rel=1e-12), key
    assert tokens["tokens"] == rows["count"]
