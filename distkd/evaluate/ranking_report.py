"""The report's ranking section (evaluate/ranking.py's metrics): ROC AUC, PR AUC, logloss and normalised entropy of
each model, each distilled student's paired gain over its twin, per slice, and the models' ROC curves."""

from __future__ import annotations

import html
from collections.abc import Callable

from matplotlib.figure import Figure

from distkd.evaluate.ranking import gain_text

ROC = "roc.png"
NOTE = (
    "ROC AUC and PR AUC (average precision) of the positive class, or their macro mean one-vs-rest over more "
    "classes; logloss is the mean negative log-likelihood and normalised entropy divides it by the entropy of the "
    "evaluated rows' class frequencies (1: no better than the base rate). A gain is the distilled student's value "
    "less its twin's (logloss: below 0 is better), its interval a paired bootstrap over the test rows."
)


def ranked(models: list[dict]) -> bool:
    """Whether every model has ranking metrics (reports written before them have none)."""
    return all(m["metrics"].get("roc_auc") is not None for m in models)


def _sliced(models: list[dict]) -> bool:
    return all(m.get("slices") for m in models)


def _number(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def table(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "ROC AUC", "PR AUC", "logloss", "normalised entropy"]
    keys = ("roc_auc", "pr_auc", "logloss", "normalized_entropy")
    return header, [[m["name"], *(_number(m["metrics"][k]) for k in keys)] for m in models]


def slice_table(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per slice: its rows and each model's ROC AUC and logloss there."""
    header = ["slice", "rows", *(f"{m['name']} AUC / logloss" for m in models)]
    rows = []
    for column, values in models[0].get("slices", {}).items():
        for value, first in values.items():
            cells = [f"{column} = {value or '(empty)'}", f"{first['count']:,}"]
            for m in models:
                sliced = m["slices"][column][value]
                cells.append(f"{_number(sliced['roc_auc']) or '-'} / {sliced['logloss']:.4f}")
            rows.append(cells)
    return header, rows


def gains(models: list[dict]) -> list[str]:
    return [
        f"{m['name']} vs {m['baseline']['name']}: {gain_text(m['metrics']['ranking_vs_baseline'])}"
        for m in models
        if "ranking_vs_baseline" in m["metrics"]
    ]


def roc_figure(models: list[dict]) -> Figure:
    """Each model's ROC curve, one panel per scored class (one for a binary task)."""
    classes = list(models[0]["metrics"]["roc_curves"])
    columns = min(5, len(classes))
    rows = -(-len(classes) // columns)
    fig = Figure(figsize=(4.2 * columns, 4 * rows), layout="constrained")
    for i, c in enumerate(classes):
        ax = fig.add_subplot(rows, columns, i + 1)
        for m in models:
            curve, auc = m["metrics"]["roc_curves"][c], m["metrics"]["ranking_per_class"][c]["roc_auc"]
            ax.plot(curve["fpr"], curve["tpr"], label=f"{m['name']} ({_number(auc)})")
        ax.plot([0, 1], [0, 1], color="#bbb", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, class {c}")
        ax.legend(fontsize=7, loc="lower right")
    return fig


def markdown(models: list[dict], render: Callable[[list[str], list[list[str]]], str]) -> list[str]:
    """The section in markdown; ``render`` writes a table (the report's own)."""
    lines = ["## Ranking", "", render(*table(models)), ""]
    lines += [f"- {line}" for line in gains(models)]
    if _sliced(models):
        lines += ["", render(*slice_table(models))]
    return [*lines, "", NOTE, "", f"![roc]({ROC})", ""]


def html_section(models: list[dict], render: Callable[..., str], img: Callable[[str], str]) -> str:
    """The section in HTML; ``render`` writes a table, ``img`` embeds a written figure."""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in gains(models))
    sliced = render(*slice_table(models)) if _sliced(models) else ""
    return (
        f"<h2>Ranking</h2>{render(*table(models))}<ul>{items}</ul>{sliced}"
        f'<p class="note">{html.escape(NOTE)}</p><div class="plots">{img(ROC)}</div>'
    )
