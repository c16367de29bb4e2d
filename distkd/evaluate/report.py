"""The report people read: one table of quality beside cost, per-class F1, and plots.

Writes ``report.md`` (with the PNGs beside it) and a self-contained ``report.html`` (PNGs inlined).
Figures are built as bare ``matplotlib.figure.Figure`` objects, which render with Agg and never
touch pyplot's global state or backend, so nothing needs closing and nothing leaks.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from distkd.evaluate import ranking_report
from distkd.evaluate.metrics import gain_text


def _si(value: float, unit: str = "", sep: str = " ") -> str:
    """3 significant figures with an SI prefix: 1.56K, 40.1 MFLOPs, 1.60 MB."""
    value = float(f"{value:.3g}")
    prefixes = ["", "K", "M", "G", "T", "P"]
    i = 0
    while abs(value) >= 1000 and i < len(prefixes) - 1:
        value /= 1000
        i += 1
    if i == 0 and value == int(value):  # a plain count: 512, not 512.00
        return f"{int(value)}{sep}{unit}".rstrip()
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f}{sep}{prefixes[i]}{unit}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _summary(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    ks = {m["metrics"]["top_k"] for m in models}
    header = [
        "model",
        "role",
        "params",
        "size",
        "FLOPs/sample",
        "accuracy",
        f"top-{ks.pop() if len(ks) == 1 else 'k'}",
        "macro F1",
        "ECE",
        "agreement with teacher",
        "latency ms (b=1)",
        "throughput/s",
    ]
    gpu = all("cost_gpu" in m for m in models)  # measured on a GPU too, when the evaluation had one
    if gpu:
        header += ["GPU latency ms (b=1)", "GPU throughput/s"]
    rows = []
    for m in models:
        met, cost = m["metrics"], m["cost"]
        agreement = met.get("teacher_agreement")
        rows.append(
            [
                m["name"],
                m["role"],
                _si(cost["params"], sep=""),
                _si(cost["size_bytes"], "B"),
                _si(cost["flops_per_sample"], "FLOPs"),
                _pct(met["accuracy"]),
                _pct(met["topk_accuracy"]),
                f"{met['f1_macro']:.4f}",
                f"{met['ece']:.4f}",
                "" if agreement is None else _pct(agreement),
                f"{cost['latency_ms']:.2f}",
                _si(cost["throughput"], sep=""),
            ]
        )
        if gpu:
            rows[-1] += [f"{m['cost_gpu']['latency_ms']:.2f}", _si(m["cost_gpu"]["throughput"], sep="")]
    return header, rows


def _gains(models: list[dict]) -> list[str]:
    """One sentence per model evaluated beside its baseline: the gain, its interval, McNemar's p and the counts."""
    lines = []
    for m in models:
        if "baseline" in m:
            vs = m["metrics"]["vs_baseline"]
            lines.append(
                f"{m['name']} vs {m['baseline']['name']}: {gain_text(m)}; McNemar p = {vs['p_value']:.2g}; "
                f"{vs['only_model']:,} rows right only by {m['name']}, {vs['only_baseline']:,} only by the baseline"
            )
    return lines


def _per_class(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["class", "support", *(m["name"] for m in models)]
    columns = [m["metrics"]["per_class"] for m in models]
    rows = [
        [c["class"], str(c["support"]), *(f"{col[i]['f1']:.4f}" for col in columns)] for i, c in enumerate(columns[0])
    ]
    return header, rows


def _sliced(models: list[dict]) -> list[dict]:
    """The models evaluated per slice (all of a report's models, or none: ``evaluate.slices``)."""
    return [m for m in models if "slices" in m]


def _per_slice(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per slice: its rows, each model's accuracy and macro F1, and each compared model's macro F1
    gap to its baseline (``behind`` where it falls behind)."""
    compared = [m for m in models if "slice_gaps" in m]
    header = ["slice", "rows", *(f"{m['name']} acc / F1" for m in models), *(f"{m['name']} gap" for m in compared)]
    gaps = [{(g["column"], g["value"]): g for g in m["slice_gaps"]} for m in compared]
    rows = []
    for column, values in models[0]["slices"].items():
        for value, first in values.items():
            cells = [f"{column} = {value or '(empty)'}", f"{first['count']:,}"]
            for m in models:
                metrics = m["slices"][column][value]
                cells.append(f"{_pct(metrics['accuracy'])} / {metrics['f1_macro']:.4f}")
            for by_slice in gaps:
                g = by_slice[(column, value)]
                cells.append(f"{g['gap']:+.4f}" + (" behind" if g["behind"] else ""))
            rows.append(cells)
    return header, rows


def _slice_figure(models: list[dict], column: str) -> Figure:
    values = list(models[0]["slices"][column])
    x, width = np.arange(len(values)), 0.8 / len(models)
    fig = Figure(figsize=(min(max(7.0, 0.6 * len(values) * len(models) + 2), 20), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, m in enumerate(models):
        f1 = [m["slices"][column][v]["f1_macro"] for v in values]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, f1, width, label=m["name"])
    counts = [models[0]["slices"][column][v]["count"] for v in values]
    ax.set_xticks(x, [f"{v or '(empty)'}\n{n:,} rows" for v, n in zip(values, counts)], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro F1")
    ax.set_title(f"macro F1 per {column}")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(models), 4), fontsize=9, frameon=False)
    return fig


def _markdown_table(header: list[str], rows: list[list[str]], text_columns: int) -> str:
    """A table whose first ``text_columns`` columns are left-aligned, the numbers right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return "\n".join([line(header), "|" + "|".join(align) + "|", *map(line, rows)])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _training(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The settings that made each trained model and what its training cost."""
    header = ["model", "epochs", "labelled rows", "unlabelled rows", "alpha", "temperature", "soft labels", "views"]
    header += ["label rows/s", "s/epoch", "train"]
    rows = []
    for m in models:
        if not m.get("history"):
            continue
        run, seconds = m.get("settings", {}), [h["seconds"] for h in m["history"]]
        rate, trained = run.get("label_rows_per_second"), m.get("trained_rows")  # none in a report from before
        rows.append(
            [
                m["name"],
                str(len(m["history"])),
                *((f"{trained['labelled']:,}", f"{trained['unlabelled']:,}") if trained else ("", "")),
                f"{run['alpha']:g}" if run.get("alpha") else "",
                f"{run['temperature']:g}" if run.get("temperature") else "",
                run.get("labels", ""),
                str(run.get("views") or ""),
                _si(rate, sep="") if rate else "",
                f"{sum(seconds) / len(seconds):.1f}",
                f"{sum(seconds):.0f} s",
            ]
        )
    return header, rows


def _curves_figure(models: list[dict]) -> Figure:
    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for m in models:
        if m.get("history"):
            epochs = [h["epoch"] for h in m["history"]]
            loss_ax.plot(epochs, [h["loss"] for h in m["history"]], marker="o", label=m["name"])
            accuracy_ax.plot(epochs, [100 * h["val_accuracy"] for h in m["history"]], marker="o", label=m["name"])
    for ax, name in ((loss_ax, "training loss (a KD run's: KD + CE terms)"), (accuracy_ax, "validation accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*loss_ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    return fig


def _tick_fontsize(num_classes: int) -> float:
    return 10 if num_classes <= 10 else 8 if num_classes <= 30 else 5


def _confusion_figure(model: dict) -> Figure:
    met = model["metrics"]
    names = [c["class"] for c in met["per_class"]]
    cm = np.asarray(met["confusion"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(max(4.5, 0.45 * len(names) + 2.5), 14)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")
    ticks = np.arange(len(names))
    size = _tick_fontsize(len(names))
    if len(names) <= 10:
        ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
    else:
        ax.set_xticks(ticks, names, rotation=90, fontsize=size)
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{model['name']}: accuracy {_pct(met['accuracy'])}")
    if len(names) <= 20:  # beyond that the numbers are unreadable
        for (i, j), v in np.ndenumerate(norm):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v > 0.5 else "black")
    return fig


def _per_class_f1_figure(models: list[dict]) -> Figure:
    names = [c["class"] for c in models[0]["metrics"]["per_class"]]
    x = np.arange(len(names))
    width = 0.8 / len(models)
    fig = Figure(figsize=(min(max(7.0, 0.25 * len(names) * len(models) + 2), 20), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, m in enumerate(models):
        f1 = [c["f1"] for c in m["metrics"]["per_class"]]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, f1, width, label=m["name"])
    ax.set_xticks(x, names, rotation=90 if len(names) > 10 else 0, fontsize=_tick_fontsize(len(names)))
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(models), 4), fontsize=9, frameon=False)
    return fig


def _accuracy_vs_size_figure(models: list[dict]) -> Figure:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for m in models:
        params, acc = m["cost"]["params"], 100 * m["metrics"]["accuracy"]
        ax.scatter(params, acc, s=60)
        ax.annotate(m["name"], (params, acc), xytext=(6, 6), textcoords="offset points", fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.2)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs model size")
    ax.grid(alpha=0.3, which="both")
    return fig


GAIN_NOTE = (
    "Paired: both models on the same rows. The 95% interval (Wald, for paired proportions) and McNemar's "
    "test count the rows that only one of the two gets right; they cover the choice of test rows, not "
    "training randomness: from one seed each, a gain within the spread between seeds may change sign with "
    "another seed."
)

SLICE_NOTE = (
    "Each metric on the rows of one value of a column (evaluate.slices), merged exactly from per-block "
    "counts. gap: macro F1 minus that of the model's baseline on the same rows; 'behind' where it is "
    "lower. A slice of few rows has a wide spread: read its count."
)

TRAINING_NOTE = (
    "alpha: weight of the KD term; temperature: of the KD term; label rows/s: how fast the teacher "
    "labelled the training split; s/epoch and train time: wall-clock, validation included."
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; vertical-align: bottom; white-space: normal; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
.per-class th:nth-child(2), .per-class td:nth-child(2) { text-align: right; }
tbody tr:nth-child(even) { background: #fafafa; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
.plots img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.8rem; }
"""


def write_report(out_dir: str | Path, models: list[dict], title: str = "distkd report") -> dict[str, Path]:
    """Write the comparison of ``models`` (dicts of name, role, metrics, cost) into ``out_dir``.

    Returns every written file's path, keyed by file name.
    """
    slugs = [slug(m["name"]) for m in models]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"model names must differ after slugging: {slugs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    figures = {f"confusion_{s}.png": _confusion_figure(m) for s, m in zip(slugs, models)}
    figures["per_class_f1.png"] = _per_class_f1_figure(models)
    figures["accuracy_vs_size.png"] = _accuracy_vs_size_figure(models)
    training = _training(models)
    if training[1]:
        figures["training_curves.png"] = _curves_figure(models)
    sliced = _sliced(models)
    slice_plots = [f"slices_{slug(column)}.png" for column in (sliced[0]["slices"] if sliced else {})]
    for name, column in zip(slice_plots, sliced[0]["slices"] if sliced else {}):
        figures[name] = _slice_figure(sliced, column)
    ranked = ranking_report.ranked(models)
    if ranked:
        figures[ranking_report.ROC] = ranking_report.roc_figure(models)
    paths = {}
    for name, fig in figures.items():
        paths[name] = out / name
        fig.savefig(paths[name], dpi=110)

    summary, per_class = _summary(models), _per_class(models)
    devices = ", ".join(sorted({m[key]["device"] for m in models for key in ("cost", "cost_gpu") if key in m}))
    count = models[0]["metrics"]["count"]
    truncated = models[0].get("truncated")  # a text input's rows longer than max_length tokens
    cut = "" if truncated is None else f" {truncated:,} of the {count:,} texts were cut to max_length tokens."
    note = (
        f"Evaluated on {count} samples.{cut} ECE: expected calibration error. "
        f"Latency (median, batch 1) and throughput measured on {devices}."
    )
    gains = _gains(models)
    overview = ["per_class_f1.png", "accuracy_vs_size.png"]
    confusions = [f"confusion_{s}.png" for s in slugs]

    md = [
        f"# {title}",
        "",
        _markdown_table(*summary, text_columns=2),
        "",
        note,
        "",
    ]
    if gains:
        md += ["## Gain over the baseline", "", *(f"- {line}" for line in gains), "", GAIN_NOTE, ""]
    if ranked:
        md += ranking_report.markdown(models, lambda header, rows: _markdown_table(header, rows, text_columns=1))
    md += [
        "## Per-class F1",
        "",
        _markdown_table(*per_class, text_columns=1),
        "",
        "## Plots",
        "",
    ]
    md += [f"![{name.removesuffix('.png')}]({name})" for name in overview + confusions]
    if sliced:
        per_slice = _per_slice(sliced)
        md += ["", "## Per slice", "", _markdown_table(*per_slice, text_columns=1), "", SLICE_NOTE, ""]
        md += [f"![{name.removesuffix('.png')}]({name})" for name in slice_plots]
    if training[1]:
        md += ["", "## Training", "", _markdown_table(*training, text_columns=1), "", TRAINING_NOTE, ""]
        md += ["![training_curves](training_curves.png)"]
    paths["report.md"] = out / "report.md"
    paths["report.md"].write_text("\n".join(md) + "\n", encoding="utf-8")

    def img(name: str) -> str:
        data = base64.b64encode(paths[name].read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'

    gains_html = (
        "<h2>Gain over the baseline</h2><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in gains)
        + f'</ul><p class="note">{html.escape(GAIN_NOTE)}</p>'
        if gains
        else ""
    )
    slices_html = (
        f'<h2>Per slice</h2>{_html_table(*per_slice)}<p class="note">{html.escape(SLICE_NOTE)}</p>'
        f'<div class="plots">{"".join(img(n) for n in slice_plots)}</div>'
        if sliced
        else ""
    )
    training_html = (
        f'<h2>Training</h2>{_html_table(*training)}<p class="note">{html.escape(TRAINING_NOTE)}</p>'
        f'<div class="plots">{img("training_curves.png")}</div>'
        if training[1]
        else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{_html_table(*summary)}
<p class="note">{html.escape(note)}</p>
{gains_html}
{ranking_report.html_section(models, _html_table, img) if ranked else ""}
{training_html}
<h2>Accuracy, size and per-class F1</h2>
<div class="plots">{"".join(img(n) for n in overview)}</div>
<div class="per-class">{_html_table(*per_class)}</div>
<h2>Confusion matrices</h2>
<div class="plots">{"".join(img(n) for n in confusions)}</div>
{slices_html}
</body></html>
"""
    paths["report.html"] = out / "report.html"
    paths["report.html"].write_text(page, encoding="utf-8")
    return paths
