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

from distkd.evaluate.metrics import block_stats, compute_metrics, sum_stats

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
