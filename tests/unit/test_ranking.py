"""Ranking metrics against scikit-learn's on the same predictions, and merged over blocks equal to one pass."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from distkd import storage
from distkd.evaluate import ranking
from distkd.evaluate.metrics import block_stats, compute_metrics, sum_stats
from distkd.evaluate.report import write_report
from distkd.evaluate.summary import summary

N = 6000


def predictions(classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skewed labels (about a quarter positive when binary), logits that rank them well but not perfectly, and
    ids; a fifth of the rows share a few rounded logits, so scores tie."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(N) < 0.24).astype(np.int64) if classes == 2 else rng.integers(0, classes, N)
    logits = rng.normal(size=(N, classes)) + 1.5 * np.eye(classes)[labels]
    logits[: N // 5] = np.round(logits[: N // 5])
    return logits.astype(np.float32), labels, np.array([f"test/{i}" for i in range(N)])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_pass(logits: np.ndarray, labels: np.ndarray) -> dict:
    return ranking.of(ranking.histograms(logits, labels), sum_stats([block_stats(logits, labels)]))


def test_binary_auc_ap_and_logloss_are_scikit_learns() -> None:
    logits, labels, _ = predictions()
    m, p = one_pass(logits, labels), softmax(logits.astype(np.float64))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, p[:, 1]), abs=1e-4)
    assert m["pr_auc"] == pytest.approx(average_precision_score(labels, p[:, 1]), abs=1e-4)
    assert m["logloss"] == pytest.approx(log_loss(labels, p), abs=1e-4)
    base = labels.mean()
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert m["normalized_entropy"] == pytest.approx(log_loss(labels, p) / entropy, abs=1e-4)
    curve = m["roc_curves"]["1"]
    assert curve["fpr"][0] == curve["tpr"][0] == 0 and curve["fpr"][-1] == curve["tpr"][-1] == 1


def test_more_classes_are_scored_one_vs_rest() -> None:
    logits, labels, _ = predictions(classes=4)
    m, p = one_pass(logits, labels), softmax(logits.astype(np.float64))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, p, multi_class="ovr", average="macro"), abs=1e-4)
    ap = np.mean([average_precision_score(labels == c, p[:, c]) for c in range(4)])
    assert m["pr_auc"] == pytest.approx(ap, abs=1e-4)
    assert m["logloss"] == pytest.approx(log_loss(labels, p), abs=1e-4)


def blocks_of(n: int, seed: int = 1) -> list[np.ndarray]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), 7, replace=False))
    return np.split(np.random.default_rng(seed).permutation(n), cuts)


def test_merged_over_blocks_equals_one_pass() -> None:
    logits, labels, ids = predictions()
    baseline = logits + np.random.default_rng(2).normal(scale=1.0, size=logits.shape).astype(np.float32)
    slices = {"group": np.array([["a", "b", None][i % 3] for i in range(N)], dtype=object)}
    whole = ranking.block(ids, labels, logits, baseline, slices)
    parts = [
        ranking.block(ids[r], labels[r], logits[r], baseline[r], {"group": slices["group"][r]}) for r in blocks_of(N)
    ]
    merged = ranking.merge_blocks(parts)
    np.testing.assert_array_equal(merged["all"][1], whole["all"][1])
    for value in ("a", "b", ""):
        np.testing.assert_array_equal(merged["slices"]["group"][value][1], whole["slices"]["group"][value][1])
    for key in ("rows", "logloss_diff", "hist"):
        np.testing.assert_allclose(merged["paired"][key], whole["paired"][key], rtol=1e-5)


def test_the_paired_gain_and_its_interval() -> None:
    logits, labels, ids = predictions()
    worse = logits + np.random.default_rng(3).normal(scale=2.0, size=logits.shape).astype(np.float32)
    model, base = one_pass(logits, labels), one_pass(worse, labels)
    vs = ranking.paired_gain(ranking.block(ids, labels, logits, worse)["paired"], model, base)
    p, q = softmax(logits.astype(np.float64)), softmax(worse.astype(np.float64))
    gain = roc_auc_score(labels, p[:, 1]) - roc_auc_score(labels, q[:, 1])
    assert vs["roc_auc"]["gain"] == pytest.approx(gain, abs=1e-4) and gain > 0.05
    assert 0 < vs["roc_auc"]["ci95"][0] < gain < vs["roc_auc"]["ci95"][1]
    assert vs["logloss"]["gain"] == pytest.approx(log_loss(labels, p) - log_loss(labels, q), abs=1e-4)
    assert vs["logloss"]["ci95"][0] < vs["logloss"]["gain"] < vs["logloss"]["ci95"][1] < 0
    assert (vs["count"], vs["replicates"]) == (N, ranking.REPLICATES)
    same = ranking.paired_gain(ranking.block(ids, labels, logits, logits)["paired"], model, model)
    assert same["roc_auc"] == {"gain": 0.0, "ci95": [0.0, 0.0]}  # a model against itself: no gain, no spread


def test_poisson_weights_depend_on_the_id_alone() -> None:
    w = ranking.poisson_weights(np.array(["a", "b", "a"]), replicates=4000)
    np.testing.assert_array_equal(w[0], w[2])
    assert w.mean() == pytest.approx(1.0, abs=0.05) and w.var() == pytest.approx(1.0, abs=0.1)


def binary_models() -> list[dict]:
    """A teacher and a distilled student beside its twin on one binary task, as the evaluation stage reports them."""
    logits, labels, ids = predictions()
    rng = np.random.default_rng(4)
    scratch = logits + rng.normal(scale=2.0, size=logits.shape).astype(np.float32)
    distilled = logits + rng.normal(scale=1.0, size=logits.shape).astype(np.float32)
    models = []
    for name, z, baseline in (
        ("dcn teacher", logits, None),
        ("mlp scratch", scratch, None),
        ("mlp distilled", distilled, scratch),
    ):
        stats = sum_stats([block_stats(z, labels, baseline_logits=baseline)])
        metrics = {**compute_metrics(stats), **ranking.of(ranking.histograms(z, labels), stats)}
        cost = {
            "params": 10,
            "size_bytes": 40,
            "flops_per_sample": 20,
            "latency_ms": 1.0,
            "throughput": 9.0,
            "device": "cpu",
        }
        models.append(
            {"name": name, "role": name.split()[1], "metrics": metrics, "cost": cost, "settings": {"seed": 0}}
        )
    models[2]["baseline"] = {"role": "scratch", "name": "mlp scratch", "seed": 0}
    paired = ranking.block(ids, labels, distilled, scratch)["paired"]
    models[2]["metrics"]["ranking_vs_baseline"] = ranking.paired_gain(
        paired, models[2]["metrics"], models[1]["metrics"]
    )
    return models


def test_the_report_and_the_summary_give_auc_logloss_the_gain_and_roc_curves(tmp_path) -> None:
    models = binary_models()
    paths = write_report(tmp_path / "report", models)
    md = paths["report.md"].read_text()
    assert "## Ranking" in md and "![roc](roc.png)" in md
    auc = models[2]["metrics"]["roc_auc"]
    assert f"| mlp distilled | {auc:.4f} |" in md
    gain = ranking.gain_text(models[2]["metrics"]["ranking_vs_baseline"])
    assert f"- mlp distilled vs mlp scratch: {gain}" in md and "Ranking" in paths["report.html"].read_text()
    assert paths["roc.png"].read_bytes().startswith(b"\x89PNG")
    storage.write_json(storage.join(str(tmp_path), "metrics.json"), {"title": "t", "models": models})
    lines = summary(str(tmp_path)).splitlines()
    assert lines[0].split()[-4:] == ["teacher", "ROC", "AUC", "logloss"] and f"  {gain}" in lines
    assert lines[3].split()[-2:] == [f"{auc:.4f}", f"{models[2]['metrics']['logloss']:.4f}"]


def test_rows_of_one_class_have_no_auc_and_no_auc_gain() -> None:
    logits, _, ids = predictions()
    labels = np.zeros(N, dtype=np.int64)
    model, base = one_pass(logits, labels), one_pass(logits[::-1].copy(), labels)
    assert model["roc_auc"] is None and model["logloss"] > 0
    vs = ranking.paired_gain(ranking.block(ids, labels, logits, logits[::-1].copy())["paired"], model, base)
    assert "roc_auc" not in vs and ranking.gain_text(vs).startswith("logloss ")
