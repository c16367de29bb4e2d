"""What a report says in a few lines: its models read back from ``metrics.json`` (checked, for ``distkd report``
and the console) and the summary the command prints after a pipeline."""

from __future__ import annotations

import json

from distkd import storage
from distkd.config import ConfigError
from distkd.evaluate import ranking
from distkd.evaluate.metrics import gain_text, worst_slice

METRICS = "metrics.json"  # what the evaluate stage writes into a report folder, beside report.md and the plots


def models(report: str) -> list[dict]:
    """The evaluated models of the report folder ``report``; a ``ConfigError`` naming the file when it is not a
    report's (no ``metrics.json``, one that does not parse, or one without its list of models)."""
    uri = storage.join(report, METRICS)
    if not storage.exists(uri):
        raise ConfigError(f"{report}: no {METRICS} (expected a report folder of the evaluate stage)")
    try:
        evaluated = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{uri}: not JSON ({e}); expected the metrics the evaluate stage writes") from None
    found = evaluated.get("models") if isinstance(evaluated, dict) else None
    if not found or not isinstance(found, list) or not all(isinstance(m, dict) and "name" in m for m in found):
        raise ConfigError(f'{uri}: no evaluated models in it (expected {{"models": [{{"name": ...}}, ...]}})')
    return found


def summary(report: str, stages: str = "") -> str:
    """The comparison table of the report's models, each distilled student's gain over its baseline with its 95%
    interval, the rows of each kind each trained model trained on, ``stages`` (the time each stage took, as the
    console's timeline says it) and where the report is."""
    evaluated = models(report)
    ranked = all(ranking.judged_by_ranking(m["metrics"]) for m in evaluated)  # binary: AUC and logloss beside
    header = ("model", "params", "accuracy", "macro F1", "agreement with teacher") + ranked * ("ROC AUC", "logloss")
    rows = [header] + [
        (
            m["name"],
            f"{m['cost']['params']:,}",
            f"{100 * m['metrics']['accuracy']:.2f}%",
            f"{m['metrics']['f1_macro']:.4f}",
            "" if m["metrics"].get("teacher_agreement") is None else f"{100 * m['metrics']['teacher_agreement']:.2f}%",
        )
        + ((f"{m['metrics']['roc_auc']:.4f}", f"{m['metrics']['logloss']:.4f}") if ranked else ())
        for m in evaluated
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    compared = [m for m in evaluated if "baseline" in m]
    for m in compared:
        what = "distilled student vs from scratch" if len(compared) == 1 else f"{m['name']} vs {m['baseline']['name']}"
        lines.append(f"{what}: {gain_text(m)}")
        if ranked:
            lines.append(f"  {ranking.gain_text(m['metrics']['ranking_vs_baseline'])}")
        if "slice_gaps" in m:
            lines.append(f"  {worst_slice(m)}")
    if trained := [m for m in evaluated if "trained_rows" in m]:
        counts = (
            f"{m['name']} {m['trained_rows']['labelled']:,} + {m['trained_rows']['unlabelled']:,}" for m in trained
        )
        lines.append(f"rows trained on (labelled + unlabelled): {', '.join(counts)}")
    if stages:
        lines.append(stages)
    lines.append(f"report: {storage.join(report, 'report.html')}")
    return "\n".join(lines)
