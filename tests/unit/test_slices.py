"""Metrics per slice of a column: merged exactly from per-block counts, and the slices where a distilled model
falls behind its from-scratch twin."""

from __future__ import annotations

import numpy as np
import pytest

from distkd.evaluate.metrics import block_stats, compute_metrics, slice_gaps, slice_metrics, slice_stats, sum_slices


def test_slices_merged_from_blocks_equal_one_pass_over_each_slice() -> None:
    rng = np.random.default_rng(0)
    n, c = 300, 4
    logits, baseline = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    labels = rng.integers(0, c, n)
    department = rng.choice(["Tops", "Dresses", "Bottoms", None], n)
    department[:100] = "Tops"  # the first block holds one value only: absent values must merge
    blocks = [
        slice_stats({"department": department[s]}, logits[s], labels[s], baseline_logits=baseline[s])
        for s in (slice(0, 100), slice(100, 170), slice(170, n))
    ]
    merged = slice_metrics(sum_slices(blocks))["department"]
    assert set(merged) == {"Tops", "Dresses", "Bottoms", ""}  # a missing value is a slice of its own
    for value, metrics in merged.items():
        rows = np.array(["" if d is None else d for d in department]) == value
        alone = compute_metrics(
            {k: v[0] for k, v in block_stats(logits[rows], labels[rows], baseline_logits=baseline[rows]).items()}
        )
        sums = ("ece", "nll")  # float sums: equal up to the order they were added in
        assert {k: v for k, v in metrics.items() if k not in sums} == {k: v for k, v in alone.items() if k not in sums}
        assert [metrics[k] for k in sums] == pytest.approx([alone[k] for k in sums], rel=1e-12)
        assert metrics["count"] == rows.sum()


def test_slices_where_the_model_falls_behind_are_flagged_worst_first() -> None:
    labels = np.array([0, 1, 0, 1])
    right = np.eye(2)[labels] * 5
    wrong = np.eye(2)[1 - labels] * 5
    group = np.array(["a", "a", "b", "b"])
    model = np.concatenate([right[:2], wrong[2:]])  # right on a, wrong on b
    baseline = np.concatenate([wrong[:2], right[2:]])
    m = slice_metrics(sum_slices([slice_stats({"g": group}, model, labels)]))
    b = slice_metrics(sum_slices([slice_stats({"g": group}, baseline, labels)]))
    gaps = slice_gaps(m, b, "accuracy")
    assert [(g["value"], g["gap"], g["behind"], g["count"]) for g in gaps] == [
        ("b", -1.0, True, 2),
        ("a", 1.0, False, 2),
    ]
