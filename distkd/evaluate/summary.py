"""What a report says in a few lines: its models read back from ``metrics.json`` (checked, for ``distkd report``
and the console) and the summary the command prints after a pipeline."""

from __future__ import annotations

import json

from distkd import storage
from distkd.config import ConfigError
from distkd.evaluate.scoring import SCORINGS

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


def task(report: str) -> str:
    """The task whose models the report folder ``report`` scored (a report from before tasks: a classifier's)."""
    return json.loads(storage.read_bytes(storage.join(report, METRICS))).get("task", "classification")


def summary(report: str, stages: str = "") -> str:
    """The report's models as its task's scoring tells them (``scoring.SCORINGS``: the comparison table, each
    distilled student's gain over its baseline with its 95% interval), the rows of each kind each trained model
    trained on, ``stages`` (the time each stage took, as the console's timeline says it) and where the report is."""
    evaluated = models(report)
    lines = SCORINGS[task(report)].summary(evaluated)
    if trained := [m for m in evaluated if "trained_rows" in m]:
        counts = (
            f"{m['name']} {m['trained_rows']['labelled']:,} + {m['trained_rows']['unlabelled']:,}" for m in trained
        )
        lines.append(f"rows trained on (labelled + unlabelled): {', '.join(counts)}")
    if stages:
        lines.append(stages)
    lines.append(f"report: {storage.join(report, 'report.html')}")
    return "\n".join(lines)
