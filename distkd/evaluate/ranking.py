"""Ranking metrics, exact and mergeable over blocks: ROC AUC, PR AUC (average precision), logloss and normalised
entropy; and a distilled student's paired gain over its baseline on AUC and logloss.

A block reduces each scored class (class 1 of a binary task; every class, one-vs-rest, of more) to a sparse
histogram of the scores' log-odds ``log p - log(1 - p)``, clipped to [-LIMIT, LIMIT] and cut into BINS steps:
rows ``(step, positives, negatives)`` for the steps that occur. Merging blocks concatenates and adds them up, so
any split of the data gives the same totals as one pass. Two scores share a step only when they lie within
2 * LIMIT / BINS (3.6e-6) of each other in log-odds, where they count as a tie, so ROC AUC and average precision
are scikit-learn's on the same scores to far better than 1e-4 (``roc_auc_score``, ``average_precision_score``).

Logloss is the mean negative log-likelihood the evaluation already sums (``nll_sum``); normalised entropy (He et
al., ADKDD 2014) divides it by the entropy of the evaluated rows' class frequencies, so 1 is no better than
always predicting the base rate.

The gain's interval is a paired Poisson bootstrap over test rows: row ``i`` weighs ``Poisson(1)`` in replicate
``b``, drawn from a hash of its id and ``b`` (the same in every block, on every worker), and each block sums, per
replicate, the weighted logloss differences and weighted coarse histograms (BOOT_BINS steps) of both models'
scores. The interval is the exact gain plus the 2.5% and 97.5% quantiles of the replicates' deviations from the
coarse full-sample gain.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from distkd.evaluate.metrics import log_softmax

LIMIT = 30.0  # log-odds beyond this are clipped (p within 1e-13 of 0 or 1)
BINS = 1 << 24  # steps over [-LIMIT, LIMIT]
REPLICATES = 200  # bootstrap replicates of the paired gain
BOOT_BINS, BOOT_LIMIT = 256, 10.0  # replicates' histogram steps (all classes'), log-odds in [-BOOT_LIMIT, BOOT_LIMIT]
CURVE_POINTS = 200  # at most, kept of each ROC curve for the report's plot
Histograms = dict[int, np.ndarray]  # scored class -> int64 rows (step, positives, negatives), steps ascending


def scored_classes(num_classes: int) -> list[int]:
    """Class 1 of a binary task (the positive one), else each class one-vs-rest."""
    return [1] if num_classes == 2 else list(range(num_classes))


def log_odds(logits: np.ndarray, limit: float = LIMIT) -> np.ndarray:
    """[N, C] logits -> [N, C] log(p / (1 - p)) of each class, clipped to [-limit, limit]."""
    x = logits.astype(np.float64)
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        others = np.delete(x, c, axis=1)
        top = others.max(axis=1)
        out[:, c] = x[:, c] - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))
    return np.clip(out, -limit, limit)


def _steps(scores: np.ndarray, bins: int, limit: float = LIMIT) -> np.ndarray:
    """The step of each score (clipped to [-limit, limit]) among ``bins`` equal steps."""
    return np.minimum(((scores + limit) * (bins / (2 * limit))).astype(np.int64), bins - 1)


def histograms(logits: np.ndarray, labels: np.ndarray) -> Histograms:
    """One block's sparse score histograms, per scored class."""
    odds, labels = log_odds(logits), np.asarray(labels).astype(np.int64)
    out = {}
    for c in scored_classes(logits.shape[1]):
        steps, inverse = np.unique(_steps(odds[:, c], BINS), return_inverse=True)
        positive = labels == c
        pos = np.bincount(inverse, weights=positive, minlength=len(steps)).astype(np.int64)
        out[c] = np.stack([steps, pos, np.bincount(inverse, minlength=len(steps)) - pos], axis=1)
    return out


def merge(blocks: Iterable[Histograms]) -> Histograms:
    """The histograms of several blocks added up per class and step."""
    gathered: dict[int, list[np.ndarray]] = {}
    for block in blocks:
        for c, rows in block.items():
            gathered.setdefault(c, []).append(rows)
    out = {}
    for c, parts in gathered.items():
        rows = np.concatenate(parts)
        steps, inverse = np.unique(rows[:, 0], return_inverse=True)
        pos, neg = (np.bincount(inverse, weights=rows[:, i], minlength=len(steps)) for i in (1, 2))
        out[c] = np.stack([steps, pos.astype(np.int64), neg.astype(np.int64)], axis=1)
    return out


def _cumulative(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each threshold, highest score first, from (0, 0)."""
    return np.concatenate([[0.0], np.cumsum(pos[::-1])]), np.concatenate([[0.0], np.cumsum(neg[::-1])])


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """The area under the ROC curve (ties count half) from per-step counts; None without both kinds of rows."""
    tp, fp = _cumulative(pos, neg)
    if tp[-1] == 0 or fp[-1] == 0:
        return None
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Average precision: the sum over thresholds of the recall gained times the precision there."""
    tp, fp = _cumulative(pos, neg)
    if tp[-1] == 0:
        return None
    recall, precision = tp[1:] / tp[-1], tp[1:] / (tp[1:] + fp[1:])
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> dict[str, list[float]]:
    """At most CURVE_POINTS (false positive rate, true positive rate) points of the curve, its ends kept."""
    tp, fp = _cumulative(pos, neg)
    keep = np.unique(np.linspace(0, len(tp) - 1, min(CURVE_POINTS, len(tp))).round().astype(int))
    return {"fpr": (fp[keep] / max(fp[-1], 1)).tolist(), "tpr": (tp[keep] / max(tp[-1], 1)).tolist()}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def of(hist: Histograms, stats: dict[str, np.ndarray]) -> dict:
    """``metrics`` of the histograms beside the summed ``metrics.block_stats`` of the same rows."""
    return metrics(hist, stats["confusion"].sum(axis=1), float(stats["nll_sum"]))


def metrics(hist: Histograms, support: np.ndarray, nll_sum: float) -> dict:
    """ROC AUC and PR AUC (binary: of class 1; else the macro mean one-vs-rest, over the classes with both kinds
    of rows, beside each class's), logloss and normalised entropy, and the ROC curve of each scored class."""
    count = int(support.sum())
    freq = support[support > 0] / count
    entropy = float(-(freq * np.log(freq)).sum())
    logloss = nll_sum / count
    per_class = {
        c: (roc_auc(rows[:, 1], rows[:, 2]), average_precision(rows[:, 1], rows[:, 2])) for c, rows in hist.items()
    }
    return {
        "roc_auc": _mean([auc for auc, _ in per_class.values()]),
        "pr_auc": _mean([ap for _, ap in per_class.values()]),
        "logloss": logloss,
        "normalized_entropy": logloss / entropy if entropy > 0 else None,
        "ranking_per_class": {str(c): {"roc_auc": auc, "pr_auc": ap} for c, (auc, ap) in per_class.items()},
        "roc_curves": {str(c): roc_curve(rows[:, 1], rows[:, 2]) for c, rows in hist.items()},
    }


# --- the paired gain ---------------------------------------------------------------------------------------------


def poisson_weights(ids: np.ndarray, replicates: int = REPLICATES) -> np.ndarray:
    """[N, replicates] Poisson(1) weights, each from a hash of its row's id and replicate (splitmix64)."""
    seeds = np.array([zlib.crc32(str(i).encode()) for i in ids], dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seeds[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.arange(1, replicates + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    k = np.arange(20)
    cdf = np.cumsum(np.exp(-1.0) / np.cumprod(np.maximum(k, 1)))  # P(X <= k) for X ~ Poisson(1)
    return np.searchsorted(cdf, uniform).astype(np.float32)


def paired_block(ids: np.ndarray, labels: np.ndarray, logits: np.ndarray, baseline: np.ndarray) -> dict:
    """One block's sums for the paired gain of ``logits`` over ``baseline`` on the same rows: per replicate
    (index 0: every row once), the weighted row count, logloss difference (model - baseline) and both models'
    weighted histograms [model/baseline, scored class, negative/positive, steps] (``boot_bins`` steps)."""
    labels = np.asarray(labels).astype(np.int64)
    n, c = logits.shape
    w = np.concatenate([np.ones((n, 1), np.float32), poisson_weights(ids)], axis=1)  # [N, 1 + R]
    nll = [-log_softmax(z)[np.arange(n), labels] for z in (logits, baseline)]
    classes, bins = scored_classes(c), boot_bins(c)
    replicate = np.arange(w.shape[1]) * 2 * bins  # each replicate's first cell
    hist = np.zeros((w.shape[1], 2, len(classes), 2, bins), np.float32)
    for m, z in enumerate((logits, baseline)):
        odds = log_odds(z, BOOT_LIMIT)
        for j, cls in enumerate(classes):
            cell = (labels == cls) * bins + _steps(odds[:, cls], bins, BOOT_LIMIT)  # [N]
            counts = np.bincount((cell[:, None] + replicate).ravel(), w.ravel(), len(replicate) * 2 * bins)
            hist[:, m, j] = counts.reshape(-1, 2, bins)
    return {"rows": w.sum(axis=0), "logloss_diff": (w * (nll[0] - nll[1])[:, None]).sum(axis=0), "hist": hist}


def boot_bins(num_classes: int) -> int:
    """Steps of each replicate's histogram: BOOT_BINS over the scored classes, at least 32 each."""
    return max(32, BOOT_BINS // len(scored_classes(num_classes)))


def paired_gain(summed: dict, model: dict, baseline: dict) -> dict:
    """The model's gain over its baseline on ROC AUC (model - baseline) and logloss (model - baseline: below 0
    is better), each with its 95% paired bootstrap interval; ``model`` and ``baseline`` are their ``metrics`` (no
    AUC gain where they have none: rows of one class)."""

    def coarse_auc(hist: np.ndarray) -> float:  # [classes, negative/positive, steps] -> the macro AUC
        return _mean([roc_auc(h[1], h[0]) for h in hist]) or 0.0

    hist = summed["hist"]
    auc = np.array([coarse_auc(hist[r, 0]) - coarse_auc(hist[r, 1]) for r in range(len(hist))])
    ll = summed["logloss_diff"] / summed["rows"]
    gains = {
        key: model[key] - baseline[key] for key in ("roc_auc", "logloss") if None not in (model[key], baseline[key])
    }
    deviations = {"roc_auc": auc[1:] - auc[0], "logloss": ll[1:] - ll[0]}
    out = {
        key: {"gain": g, "ci95": (g + np.quantile(deviations[key], [0.025, 0.975])).tolist()}
        for key, g in gains.items()
    }
    return {**out, "replicates": len(hist) - 1, "count": int(summed["rows"][0])}


def judged_by_ranking(metrics: dict) -> bool:
    """Whether a model's summary shows its ROC AUC and logloss: a binary task's, where they are how it is judged."""
    return len(metrics["confusion"]) == 2 and metrics.get("roc_auc") is not None


def gain_text(vs: dict) -> str:
    """``ROC AUC +0.0123 (95% CI +0.0050 to +0.0190), logloss -0.0101 (95% CI ...)``, paired."""
    parts = [
        f"{label} {vs[key]['gain']:+.4f} (95% CI {vs[key]['ci95'][0]:+.4f} to {vs[key]['ci95'][1]:+.4f})"
        for key, label in (("roc_auc", "ROC AUC"), ("logloss", "logloss"))
        if key in vs  # no AUC where the rows hold one class only
    ]
    return f"{', '.join(parts)}; paired bootstrap over {vs['count']:,} rows, {vs['replicates']} replicates"


# --- what the evaluation stage calls -----------------------------------------------------------------------------


def block(
    ids: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    baseline: np.ndarray | None = None,
    slices: dict[str, np.ndarray] | None = None,
) -> dict:
    """One model's ranking statistics of one block: its histograms, per value of each slice column too, and the
    paired sums against its ``baseline`` (the same rows' logits) when it has one."""
    out: dict = {"all": histograms(logits, labels), "slices": {}}
    for column, values in (slices or {}).items():
        values = np.array(["" if v is None else str(v) for v in values], dtype=object)  # as metrics.slice_stats
        out["slices"][column] = {v: histograms(logits[values == v], labels[values == v]) for v in sorted(set(values))}
    if baseline is not None:
        out["paired"] = paired_block(ids, labels, logits, baseline)
    return out


def merge_blocks(blocks: Iterable[dict]) -> dict:
    """``block``'s statistics of one model over several blocks, added up."""
    blocks = list(blocks)
    slices: dict[str, dict[str, list]] = {}
    for b in blocks:
        for column, values in b["slices"].items():
            for value, hist in values.items():
                slices.setdefault(column, {}).setdefault(value, []).append(hist)
    out = {
        "all": merge(b["all"] for b in blocks),
        "slices": {column: {v: merge(parts) for v, parts in values.items()} for column, values in slices.items()},
    }
    if "paired" in blocks[0]:
        out["paired"] = {key: sum(b["paired"][key] for b in blocks) for key in blocks[0]["paired"]}
    return out
