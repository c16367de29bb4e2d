"""Exact, mergeable classification metrics.

Evaluation runs over blocks of a dataset in parallel, so each block is reduced to sufficient
statistics (counts and sums) with ``block_stats``; ``sum_stats`` adds them up and
``compute_metrics`` turns the totals into metrics. Because only counts and sums are merged, the
result does not depend on how the data was split and equals a single pass over all of it.

The top-k statistic is keyed ``top{k}_correct`` with ``k = min(top_k, num_classes)``, so blocks
made with different ``k`` cannot be merged silently; ``compute_metrics`` reports it as
``topk_accuracy`` together with ``top_k``.

A model evaluated beside its baseline (``baseline_logits``, the same student trained from scratch)
also gets paired counts over the same rows, from which ``paired_gain`` gives the accuracy gain with
its 95% interval and McNemar's p-value: the rows both get right or both wrong cancel out, so the
interval is far narrower than one from two independent accuracies. ``baselines`` says which role
is compared with which.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np


class Scored(NamedTuple):
    """One evaluator batch as a task's scoring reduces it (``scoring.Scoring.block``): role -> ``logits``, the
    ``batch``'s prepared columns, the students' teacher's role (``reference``; the ``teachers``' roles have none),
    role -> its baseline's role, and column -> the batch's values of each slice column."""

    logits: Mapping[str, np.ndarray]
    batch: Mapping[str, np.ndarray]
    reference: str
    teachers: set[str]
    baselines: Mapping[str, str]
    slices: Mapping[str, np.ndarray]

    def teacher(self, role: str) -> np.ndarray | None:
        """The logits the model of ``role`` is compared with: its teacher's, none for a teacher."""
        return self.logits.get(self.reference) if role not in self.teachers else None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def block_stats(
    logits: np.ndarray,
    labels: np.ndarray,
    teacher_logits: np.ndarray | None = None,
    *,
    baseline_logits: np.ndarray | None = None,
    num_bins: int = 15,
    top_k: int = 5,
) -> dict[str, np.ndarray]:
    """Sufficient statistics of one block of predictions, each with a leading axis of length 1.

    ``logits`` [N, C], ``labels`` [N]; ``teacher_logits`` [N, C] adds teacher agreement and
    KL(p_teacher || p_student) at T=1; ``baseline_logits`` [N, C] adds the rows only this model
    gets right (``only_model``) and only the baseline does (``only_baseline``). Confidence bins
    are equal-width over [0, 1], right-closed.
    """
    n, c = logits.shape
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels have shape {labels.shape}, expected ({n},)")
    if n and not 0 <= labels.min() <= labels.max() < c:
        raise ValueError(f"labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]")
    log_p = log_softmax(logits)
    pred = log_p.argmax(axis=1)
    label_log_p = log_p[np.arange(n), labels]
    k = min(top_k, c)
    # Rank of the true class: how many classes score strictly higher.
    rank = (log_p > label_log_p[:, None]).sum(axis=1)
    correct = pred == labels

    stats = {
        "confusion": np.bincount(labels * c + pred, minlength=c * c).astype(np.int64).reshape(c, c),
        f"top{k}_correct": np.int64((rank < k).sum()),
        **calibration(log_p, correct, num_bins),
        "nll_sum": np.float64(-label_log_p.sum()),
    }
    if teacher_logits is not None:
        if teacher_logits.shape != logits.shape:
            raise ValueError(f"teacher_logits have shape {teacher_logits.shape}, expected {logits.shape}")
        log_t = log_softmax(teacher_logits)
        stats["teacher_agree"] = np.int64((log_t.argmax(axis=1) == pred).sum())
        stats["teacher_kl_sum"] = np.float64((np.exp(log_t) * (log_t - log_p)).sum())
    if baseline_logits is not None:
        if baseline_logits.shape != logits.shape:
            raise ValueError(f"baseline_logits have shape {baseline_logits.shape}, expected {logits.shape}")
        baseline_correct = log_softmax(baseline_logits).argmax(axis=1) == labels  # as its own block_stats
        stats["only_model"] = np.int64((correct & ~baseline_correct).sum())
        stats["only_baseline"] = np.int64((baseline_correct & ~correct).sum())
    return {key: np.asarray(v)[None] for key, v in stats.items()}


def calibration(log_p: np.ndarray, correct: np.ndarray, num_bins: int) -> dict[str, np.ndarray]:
    """Counts, summed confidence and hits of the predictions (``log_p`` [N, C], ``correct`` [N]) in equal-width,
    right-closed bins of their confidence over [0, 1]: what the expected calibration error is computed from."""
    conf = np.exp(log_p.max(axis=1))
    bins = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    return {
        "bin_count": np.bincount(bins, minlength=num_bins).astype(np.int64),
        "bin_confidence": np.bincount(bins, weights=conf, minlength=num_bins),
        "bin_correct": np.bincount(bins[correct], minlength=num_bins).astype(np.int64),
    }


def ece(stats: dict[str, np.ndarray]) -> float:
    """The expected calibration error from summed ``calibration`` statistics."""
    gap = np.abs(stats["bin_correct"] - stats["bin_confidence"])  # |acc - conf| * count
    return float(_div(gap.sum(), stats["bin_count"].sum()))


def sum_stats(blocks: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Sum block statistics over their leading axes (one row per block, or several rows)."""
    total: dict[str, np.ndarray] | None = None
    for i, block in enumerate(blocks):
        summed = {key: np.asarray(v).sum(axis=0) for key, v in block.items()}
        if total is None:
            total = summed
            continue
        if summed.keys() != total.keys():
            diff = sorted(summed.keys() ^ total.keys())
            raise ValueError(f"block {i} has different statistics than block 0: {diff}")
        for key, v in summed.items():
            if v.shape != total[key].shape:
                what = "class count" if key == "confusion" else "shape"
                raise ValueError(f"block {i}: {what} mismatch in {key!r}: {v.shape} vs {total[key].shape}")
            total[key] = total[key] + v
    if total is None:
        raise ValueError("no blocks to sum")
    return total


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def compute_metrics(stats: dict[str, np.ndarray], class_names: list[str] | None = None) -> dict:
    """Metrics from summed statistics, as a JSON-serialisable dict.

    Averages run over all classes, including those absent from the data (as scikit-learn does
    given ``labels=range(C)``); ratios with a zero denominator are 0.
    """
    cm = stats["confusion"]
    c = cm.shape[0]
    names = [str(i) for i in range(c)] if class_names is None else list(class_names)
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    topk = {int(m[1]): key for key in stats if (m := re.fullmatch(r"top(\d+)_correct", key))}
    ((k, topk_key),) = topk.items()

    count = int(cm.sum())
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision = _div(tp, cm.sum(axis=0))
    recall = _div(tp, support)
    f1 = _div(2 * tp, cm.sum(axis=0) + support)
    weights = _div(support, count)

    metrics = {
        "count": count,
        "accuracy": float(_div(tp.sum(), count)),
        "top_k": k,
        "topk_accuracy": float(_div(stats[topk_key], count)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        ],
        "ece": ece(stats),
        "nll": float(_div(stats["nll_sum"], count)),
        "confusion": cm.tolist(),
    }
    if "teacher_agree" in stats:
        metrics["teacher_agreement"] = float(_div(stats["teacher_agree"], count))
        metrics["teacher_kl"] = float(_div(stats["teacher_kl_sum"], count))
    if "only_model" in stats:
        metrics["vs_baseline"] = paired_gain(int(stats["only_model"]), int(stats["only_baseline"]), count)
    return metrics


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
EXACT_MCNEMAR_LIMIT = 20_000  # discordant rows up to which McNemar's p-value is the exact binomial one


def paired_gain(only_model: int, only_baseline: int, count: int) -> dict:
    """Accuracy gain of a model over its baseline on the same ``count`` rows, from the discordant rows:
    ``only_model`` (b, the model right and the baseline wrong) and ``only_baseline`` (c).

    The gain is (b - c) / n. Its 95% interval is the Wald interval for the difference of two dependent
    proportions, gain +- 1.96 * sqrt(b + c - (b - c)^2 / n) / n (Agresti, *Categorical Data Analysis*,
    3rd ed., 2013, sec. 11.1). ``p_value`` is McNemar's two-sided test of "no difference": exact
    (binomial, b out of b + c at 1/2) up to ``EXACT_MCNEMAR_LIMIT`` discordant rows, else its
    chi-square form with continuity correction.
    """
    b, c, n = only_model, only_baseline, count
    gain = (b - c) / n if n else 0.0
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n if n else 0.0
    return {
        "gain": gain,
        "ci95": [gain - Z95 * se, gain + Z95 * se],
        "p_value": mcnemar_p(b, c),
        "only_model": b,
        "only_baseline": c,
        "count": n,
    }


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's two-sided p-value for ``b`` and ``c`` discordant rows (see ``paired_gain``)."""
    m = b + c
    if m == 0:
        return 1.0
    if m > EXACT_MCNEMAR_LIMIT:
        chi2 = max(abs(b - c) - 1, 0) ** 2 / m
        return math.erfc(math.sqrt(chi2 / 2))
    term, tail = 1, 1  # C(m, 0); the sum of C(m, k) for k <= min(b, c), exact integers
    for k in range(min(b, c)):
        term = term * (m - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2**m)


DISTILLED = re.compile(r"(?<![a-z0-9])distilled(?![a-z0-9])")
BASELINE = "scratch"


def baselines(models: Mapping[str, object]) -> dict[str, str]:
    """Role -> its baseline's role, among ``models`` (role -> the model it is, e.g. its ``ModelSpec``).

    A role with the word ``distilled`` in it is compared with the same role with ``scratch`` in its
    place (``lenet5-distilled`` with ``lenet5-scratch``) or else with the role ``scratch``, the first
    of them evaluated with the same model: the pipeline's ``distilled`` with its ``scratch``, and
    several distilled variants of one student (``distilled-t2``, ``distilled-t4``) each with it.
    """
    pairs = {}
    for role, model in models.items():
        if not DISTILLED.search(role):
            continue
        candidates = (DISTILLED.sub(BASELINE, role), BASELINE)
        baseline = next((b for b in candidates if b in models and models[b] == model), None)
        if baseline is not None:
            pairs[role] = baseline
    return pairs


def gain_text(model: dict) -> str:
    """``model``'s gain over its baseline, as the summary and the report say it:
    ``+0.99 points (95% CI +0.21 to +1.77, paired, 10,000 rows; one seed each)``.

    ``model`` is one entry of ``metrics.json``: its ``metrics.vs_baseline``, ``baseline.seed`` and
    ``settings.seed`` (a seed is None for weights that did not come from a run of distkd).
    """
    vs, seeds = model["metrics"]["vs_baseline"], (model.get("settings", {}).get("seed"), model["baseline"]["seed"])
    low, high = (100 * x for x in vs["ci95"])
    if None in seeds:
        runs = "one run each"
    elif seeds[0] == seeds[1]:
        runs = f"one seed each (seed {seeds[0]})"
    else:
        runs = f"one seed each (seeds {seeds[0]} and {seeds[1]})"
    return f"{100 * vs['gain']:+.2f} points (95% CI {low:+.2f} to {high:+.2f}, paired, {vs['count']:,} rows; {runs})"


def slice_stats(
    slices: Mapping[str, np.ndarray], logits: np.ndarray, labels: np.ndarray, **kwargs: object
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``block_stats`` of each slice of one block: column -> value -> statistics of the rows with that value
    (``slices``: column -> the block's values of it; ``kwargs`` and the teacher and baseline logits as
    ``block_stats`` takes them, sliced alike). Missing values are the slice ``""``."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for column, values in slices.items():
        values = np.array(["" if v is None else str(v) for v in values], dtype=object)
        out[column] = {}
        for value in sorted(set(values)):
            rows = values == value
            sliced = {k: v[rows] if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
            out[column][value] = block_stats(logits[rows], labels[rows], **sliced)
    return out


def sum_slices(blocks: Iterable[dict[str, dict[str, dict[str, np.ndarray]]]]) -> dict[str, dict[str, dict]]:
    """``slice_stats`` of several blocks summed exactly per column and value (a value may be absent from a block)."""
    gathered: dict[str, dict[str, list[dict[str, np.ndarray]]]] = {}
    for block in blocks:
        for column, values in block.items():
            for value, stats in values.items():
                gathered.setdefault(column, {}).setdefault(value, []).append(stats)
    return {column: {value: sum_stats(parts) for value, parts in values.items()} for column, values in gathered.items()}


def slice_metrics(summed: dict[str, dict[str, dict]], class_names: list[str] | None = None) -> dict[str, dict]:
    """Column -> value -> ``compute_metrics`` of the slice (its ``count`` is the slice's rows)."""
    return {
        column: {value: compute_metrics(stats, class_names) for value, stats in values.items()}
        for column, values in summed.items()
    }


def slice_gaps(model: dict[str, dict], baseline: dict[str, dict], metric: str = "f1_macro") -> list[dict]:
    """Per slice, ``metric`` of ``model`` minus its baseline's (both ``slice_metrics``), worst first; ``behind``
    flags the slices where the model falls behind."""
    gaps = [
        {
            "column": column,
            "value": value,
            "count": m["count"],
            "gap": m[metric] - baseline[column][value][metric],
            "behind": m[metric] < baseline[column][value][metric],
        }
        for column, values in model.items()
        for value, m in values.items()
    ]
    return sorted(gaps, key=lambda g: g["gap"])


def worst_slice(model: dict) -> str:
    """The slice where ``model`` falls furthest behind its baseline (macro F1), and on how many it is behind."""
    gaps = model["slice_gaps"]
    worst, behind = gaps[0], sum(g["behind"] for g in gaps)
    value = worst["value"] or "(empty)"
    return (
        f"worst slice {worst['column']} = {value} ({worst['count']:,} rows): macro F1 {worst['gap']:+.4f}; "
        f"behind on {behind} of {len(gaps)} slices"
    )
