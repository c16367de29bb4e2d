import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from distkd.evaluate import metrics
from distkd.evaluate.metrics import (
    baselines,
    block_stats,
    compute_metrics,
    gain_text,
    mcnemar_p,
    paired_gain,
    sum_stats,
)

N, C = 1000, 10


def make_data(seed: int, never_predicted: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, N)
    # Logits that lean towards the label, so accuracy is neither ~0 nor ~1.
    logits = rng.normal(0, 2, (N, C)) + 2.0 * np.eye(C)[labels]
    if never_predicted is not None:
        logits[:, never_predicted] = np.delete(logits, never_predicted, 1).max(1) - 1.0
    teacher = logits + rng.normal(0, 1.5, (N, C))
    return logits.astype(np.float32), labels, teacher.astype(np.float32)


def split_metrics(logits, labels, teacher, n_blocks: int, seed: int) -> dict:
    """Metrics over the data cut into ``n_blocks`` uneven blocks (some may be empty)."""
    cuts = np.sort(np.random.default_rng(seed).integers(0, len(labels), n_blocks - 1))
    blocks = [
        block_stats(z, y, t) for z, y, t in zip(np.split(logits, cuts), np.split(labels, cuts), np.split(teacher, cuts))
    ]
    return compute_metrics(sum_stats(blocks))


@pytest.mark.parametrize("never_predicted", [None, 3])
@pytest.mark.parametrize("n_blocks", [1, 3, 7])
def test_matches_sklearn(n_blocks: int, never_predicted: int | None) -> None:
    logits, labels, teacher = make_data(n_blocks, never_predicted)
    m = split_metrics(logits, labels, teacher, n_blocks, seed=n_blocks)
    pred = logits.argmax(1)
    if never_predicted is not None:
        assert never_predicted not in pred and m["per_class"][never_predicted]["precision"] == 0

    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    classes = list(range(C))
    assert m["count"] == N
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-9)
    assert m["top_k"] == 5
    assert m["topk_accuracy"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=classes), abs=1e-9)
    assert m["nll"] == pytest.approx(log_loss(labels, probs, labels=classes), abs=1e-9)
    assert m["confusion"] == confusion_matrix(labels, pred, labels=classes).tolist()
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=classes, average=avg, zero_division=0)
        assert [m[f"precision_{avg}"], m[f"recall_{avg}"], m[f"f1_{avg}"]] == pytest.approx([p, r, f], abs=1e-9)
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    per_class = m["per_class"]
    assert [c["class"] for c in per_class] == [str(i) for i in classes]
    assert [c["precision"] for c in per_class] == pytest.approx(p, abs=1e-9)
    assert [c["recall"] for c in per_class] == pytest.approx(r, abs=1e-9)
    assert [c["f1"] for c in per_class] == pytest.approx(f, abs=1e-9)
    assert [c["support"] for c in per_class] == s.tolist()


def test_split_invariant() -> None:
    logits, labels, teacher = make_data(0)
    whole = compute_metrics(sum_stats([block_stats(logits, labels, teacher)]))
    for n_blocks in (3, 7):
        parts = split_metrics(logits, labels, teacher, n_blocks, seed=n_blocks)
        assert parts.keys() == whole.keys()
        for key, v in whole.items():
            assert parts[key] == (pytest.approx(v, abs=1e-9) if isinstance(v, float) else v), key


def test_ece_matches_per_sample_loop() -> None:
    logits, labels, teacher = make_data(1)
    bins = 10
    m = compute_metrics(
        sum_stats(
            [
                block_stats(logits[:400], labels[:400], num_bins=bins),
                block_stats(logits[400:], labels[400:], num_bins=bins),
            ]
        )
    )
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    conf, pred = probs.max(1), probs.argmax(1)
    ece = 0.0
    for b in range(bins):
        members = [i for i in range(N) if b / bins < conf[i] <= (b + 1) / bins]
        if members:
            acc = np.mean([pred[i] == labels[i] for i in members])
            ece += len(members) / N * abs(acc - np.mean(conf[members]))
    assert ece > 0.01
    assert m["ece"] == pytest.approx(ece, abs=1e-9)


def test_teacher_agreement_and_kl() -> None:
    logits, labels, teacher = make_data(2)
    m = split_metrics(logits, labels, teacher, 3, seed=0)
    s, t = torch.from_numpy(logits).double(), torch.from_numpy(teacher).double()
    agreement = (s.argmax(1) == t.argmax(1)).double().mean().item()
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    assert 0.2 < agreement < 0.95
    assert m["teacher_agreement"] == pytest.approx(agreement, abs=1e-12)
    assert m["teacher_kl"] == pytest.approx(kl.item(), abs=1e-9)
    assert "teacher_agreement" not in compute_metrics(sum_stats([block_stats(logits, labels)]))


def test_block_shapes_and_empty_block() -> None:
    logits, labels, teacher = make_data(3)
    stats = block_stats(logits[:0], labels[:0], teacher[:0], num_bins=4, top_k=20)
    assert all(v.shape[0] == 1 and not v.any() for v in stats.values())
    assert stats["confusion"].shape == (1, C, C) and stats["bin_count"].shape == (1, 4)
    assert "top10_correct" in stats  # k is capped at the class count
    m = compute_metrics(sum_stats([stats]))
    assert m["count"] == 0 and m["accuracy"] == 0 and m["ece"] == 0 and m["top_k"] == 10


def test_sum_stats_rows_and_errors() -> None:
    logits, labels, _ = make_data(4)
    a, b = block_stats(logits[:300], labels[:300]), block_stats(logits[300:], labels[300:])
    # A Ray batch may hold several blocks' rows: summing it equals summing the blocks.
    batch = {k: np.concatenate([a[k], b[k]]) for k in a}
    assert all(np.array_equal(sum_stats([batch])[k], sum_stats([a, b])[k]) for k in a)

    with pytest.raises(ValueError, match="teacher_agree"):
        sum_stats([a, block_stats(logits, labels, logits)])
    with pytest.raises(ValueError, match="class count"):
        sum_stats([a, block_stats(logits[:, :5], labels % 5)])
    with pytest.raises(ValueError, match="top"):
        sum_stats([a, block_stats(logits, labels, top_k=3)])
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(sum_stats([a]), class_names=["x", "y"])


def test_class_names_and_low_precision_input() -> None:
    logits, labels, _ = make_data(5)
    names = [f"class-{i}" for i in range(C)]
    m16 = compute_metrics(sum_stats([block_stats(logits.astype(np.float16), labels)]), names)
    assert [c["class"] for c in m16["per_class"]] == names
    assert m16["accuracy"] == pytest.approx(accuracy_score(labels, logits.astype(np.float16).argmax(1)))


def test_paired_gain_against_a_hand_computed_case() -> None:
    # n = 1000 images, b = 30 only the model gets right, c = 10 only the baseline.
    g = paired_gain(30, 10, 1000)
    assert g["gain"] == pytest.approx(0.02, abs=1e-15)  # (30 - 10) / 1000
    # se = sqrt(b + c - (b - c)^2 / n) / n = sqrt(40 - 0.4) / 1000 = 0.00629285308...
    # 1.959964 * se = 0.01233377; the interval 0.02 -+ that.
    assert g["ci95"] == pytest.approx([0.00766623, 0.03233377], abs=1e-8)
    # McNemar exact: 2 * sum_{k<=10} C(40, k) / 2^40, the sum of
    # 1 + 40 + 780 + 9880 + 91390 + 658008 + 3838380 + 18643560 + 76904685 + 273438880 + 847660528 = 1221246132.
    assert g["p_value"] == pytest.approx(2 * 1221246132 / 2**40, rel=1e-12)  # 0.0022214
    assert (g["only_model"], g["only_baseline"], g["count"]) == (30, 10, 1000)
    # No discordant rows: no difference, a zero-width interval, p = 1; and nothing evaluated at all.
    assert paired_gain(0, 0, 50) == {**paired_gain(0, 0, 0), "count": 50}
    assert paired_gain(0, 0, 0)["ci95"] == [0.0, 0.0] and paired_gain(0, 0, 0)["p_value"] == 1.0


def test_mcnemar_p_small_and_large(monkeypatch) -> None:
    assert mcnemar_p(5, 0) == mcnemar_p(0, 5) == 2 / 2**5
    assert mcnemar_p(7, 7) == 1.0
    exact = mcnemar_p(10_100, 9_900)
    monkeypatch.setattr(metrics, "EXACT_MCNEMAR_LIMIT", 0)
    # chi2 = (|30 - 10| - 1)^2 / 40 = 9.025, p = P(|Z| > sqrt(9.025) = 3.00416) = 0.0026631
    assert mcnemar_p(30, 10) == pytest.approx(0.0026631, rel=1e-4)
    assert mcnemar_p(10_100, 9_900) == pytest.approx(exact, rel=1e-3)  # the approximation, where it takes over


def test_paired_counts_merge_exactly_and_match_a_per_row_count() -> None:
    logits, labels, _ = make_data(6)
    baseline = logits + np.random.default_rng(7).normal(0, 2, logits.shape).astype(np.float32)
    right, baseline_right = logits.argmax(1) == labels, baseline.argmax(1) == labels
    b, c = int((right & ~baseline_right).sum()), int((baseline_right & ~right).sum())
    assert b > 50 and c > 50

    whole = compute_metrics(sum_stats([block_stats(logits, labels, baseline_logits=baseline)]))
    cuts = [0, 1, 417, 417, 999]  # uneven blocks, one of them empty
    blocks = [
        block_stats(z, y, baseline_logits=zb)
        for z, y, zb in zip(np.split(logits, cuts), np.split(labels, cuts), np.split(baseline, cuts))
    ]
    assert compute_metrics(sum_stats(blocks))["vs_baseline"] == whole["vs_baseline"] == paired_gain(b, c, N)
    assert whole["vs_baseline"]["gain"] == pytest.approx(right.mean() - baseline_right.mean(), abs=1e-15)
    assert "vs_baseline" not in compute_metrics(sum_stats([block_stats(logits, labels)]))
    with pytest.raises(ValueError, match="baseline_logits have shape"):
        block_stats(logits, labels, baseline_logits=baseline[:10])


def test_each_distilled_role_is_paired_with_its_baseline() -> None:
    student, other = "lenet5", "resnet9"
    assert baselines({"teacher": other, "distilled": student, "scratch": student}) == {"distilled": "scratch"}
    roles = {
        "lenet5-distilled": student,
        "lenet5-scratch": student,
        "distilled-t4": student,  # no "scratch-t4": the plain baseline
        "scratch": student,
        "undistilled": student,  # not the word
        "distilled-wide": other,  # the same role, another model: nothing to compare with
    }
    assert baselines(roles) == {"lenet5-distilled": "lenet5-scratch", "distilled-t4": "scratch"}
    assert baselines({"distilled": student}) == {}


def test_gain_text_says_how_many_seeds() -> None:
    model = {
        "metrics": {"vs_baseline": paired_gain(30, 10, 10_000)},
        "settings": {"seed": 1},
        "baseline": {"seed": 1},
    }
    # +0.20 points, 95% CI 0.2 -+ 1.959964 * sqrt(40 - 400 / 10000) / 100 = 0.2 -+ 0.1239 = +0.08 to +0.32
    assert gain_text(model) == "+0.20 points (95% CI +0.08 to +0.32, paired, 10,000 rows; one seed each (seed 1))"
    assert gain_text({**model, "baseline": {"seed": 0}}).endswith("; one seed each (seeds 1 and 0))")
    assert gain_text({**model, "settings": {}}).endswith("; one run each)")
