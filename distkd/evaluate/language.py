"""How the evaluate stage scores a language model (``task: language_model``): the ``SCORINGS`` entry of the task.

Each evaluator block is reduced per model to ``token_metrics.token_stats`` (summed over the block's real tokens),
per slice of the rows alike, and, for a model beside its baseline, to paired sums over the block's documents (a row
is one document, ``data/blocks.py``): with ``d_i`` the document's summed NLL under the model minus under the
baseline and ``t_i`` its real tokens, ``n``, ``sum t``, ``sum d``, ``sum d^2``, ``sum d t`` and ``sum t^2``. The
gain is the perplexity ratio ``exp(D)``, ``D = sum d / sum t`` (below 1: the model is better), with a 95 %
interval ``exp(D +- 1.96 se)`` from the documents as clusters of tokens (the ratio estimator's standard error,
``sqrt(n / (n - 1) * sum (d_i - D t_i)^2) / sum t``): every sum merges exactly over blocks.
"""

from __future__ import annotations

import html
import math
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from distkd import console
from distkd.data.blocks import IGNORE
from distkd.evaluate.metrics import Scored, log_softmax, sum_stats
from distkd.evaluate.token_metrics import real_token_stats, token_metrics
from distkd.specs import EvalSpec

TARGET = "next"  # the batch column a language model is scored against (``tasks.LanguageModel.target``)
CELL = "language"  # the evaluators' output column: one pickled cell a block, per model
PAIRED = ("documents", "tokens", "d", "d2", "dt", "t2")  # the paired sums over documents, in this order
Z = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def paired_sums(model: np.ndarray, baseline: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``PAIRED`` over a block's documents: per-document NLL sums of a model and its baseline, their tokens."""
    d, t = model - baseline, tokens.astype(np.float64)
    return np.array([len(d), t.sum(), d.sum(), (d * d).sum(), (d * t).sum(), (t * t).sum()])


def perplexity_ratio(sums: np.ndarray) -> dict:
    """The model's perplexity over its baseline's, with its paired 95 % interval over documents (``PAIRED``)."""
    n, tokens, d, d2, dt, t2 = sums.tolist()
    mean = d / tokens
    spread = max(d2 - 2 * mean * dt + mean * mean * t2, 0.0) * n / max(n - 1, 1)
    se = math.sqrt(spread) / tokens
    return {
        "ratio": math.exp(mean),
        "low": math.exp(mean - Z * se),
        "high": math.exp(mean + Z * se),
        "documents": int(n),
        "tokens": int(tokens),
    }


class LanguageScoring:
    """The ``language_model`` task's evaluation: what the evaluators return per block (``block``), how many rows a
    block held (``rows``), the report's models (``results``), the report (``report``) and the summary's lines."""

    target = TARGET

    def block(self, scored: Scored) -> dict[str, np.ndarray]:
        following = scored.batch[TARGET]
        real = following != IGNORE
        row = np.nonzero(real)[0]  # each real token's row: its document
        targets = following[real].astype(np.int64)
        log_p = {role: log_softmax(z[real]) for role, z in scored.logits.items()}  # once a model, for every sum
        nll = {
            role: np.bincount(row, -lp[np.arange(len(targets)), targets], len(following)) for role, lp in log_p.items()
        }
        tokens = np.bincount(row, minlength=len(following))
        cells = []
        for role in scored.logits:
            log_t = log_p[scored.reference] if scored.teacher(role) is not None else None
            cell = {"stats": real_token_stats(log_p[role], targets, log_t), "slices": {}}
            for column, values in scored.slices.items():
                values = np.array(["" if v is None else str(v) for v in values], dtype=object)[row]
                cell["slices"][column] = {
                    value: real_token_stats(log_p[role][at], targets[at], None if log_t is None else log_t[at])
                    for value in sorted(set(values))
                    for at in [values == value]
                }
            if baseline := scored.baselines.get(role):
                cell["paired"] = paired_sums(nll[role], nll[baseline], tokens)
            cells.append(cell)
        return {CELL: np.array([pickle.dumps(cells)], dtype=object), "rows": np.array([len(following)])}

    @staticmethod
    def rows(block: Mapping[str, np.ndarray]) -> int:
        return int(block["rows"].sum())

    def results(
        self, blocks: list[dict], described: Mapping[str, dict], baselines: Mapping[str, str], spec: EvalSpec
    ) -> list[dict]:
        """Each model's report entry: ``described`` (name, role, cost, run record) with its metrics, per slice, and
        its perplexity ratio over its baseline; its cost's throughput in tokens (a block's positions) a second."""
        cells = [pickle.loads(cell) for b in blocks for cell in b[CELL]]
        positions = spec.inputs.shape[0]
        results = []
        for i, about in enumerate(described.values()):
            mine = [c[i] for c in cells]
            metrics = token_metrics(sum_stats(c["stats"] for c in mine))
            cost = {**about["cost"], "tokens_per_s": about["cost"]["throughput"] * positions}
            result = {**about, "cost": cost, "metrics": metrics}
            if mine[0]["slices"]:
                result["slices"] = {
                    column: {value: token_metrics(stats) for value, stats in summed.items()}
                    for column, summed in sum_slices(c["slices"] for c in mine).items()
                }
            if "paired" in mine[0]:
                result["metrics"]["perplexity_vs_baseline"] = perplexity_ratio(sum(c["paired"] for c in mine))
            results.append(result)
        by_role = {r["role"]: r for r in results}
        for role, baseline in baselines.items():
            by_role[role]["baseline"] = {"role": baseline, "name": by_role[baseline]["name"]}
        return results

    @staticmethod
    def report(out: str | Path, models: list[dict], title: str) -> None:
        """``report.md`` and ``report.html`` into the local folder ``out``: quality beside cost, the gains, the
        slices and the training runs, as tables."""
        from distkd.evaluate.report import CSS, _html_table, _markdown_table, _training  # matplotlib: driver only

        tables = {"Models": summary_table(models)}
        if sliced := [m for m in models if "slices" in m]:
            tables["Per slice (perplexity)"] = slice_table(sliced)
        if (training := _training(models))[1]:
            tables["Training"] = training
        gains = gain_lines(models)
        md = [f"# {title}", ""]
        page = [f"<h1>{html.escape(title)}</h1>"]
        for heading, (header, rows) in tables.items():
            md += [f"## {heading}", "", _markdown_table(header, rows, text_columns=1), ""]
            page += [f"<h2>{html.escape(heading)}</h2>", _html_table(header, rows)]
            if heading == "Models" and gains:
                md += ["## Gain over the baseline", "", *(f"- {line}" for line in gains), "", GAIN_NOTE, ""]
                page += ["<h2>Gain over the baseline</h2><ul>", *(f"<li>{html.escape(g)}</li>" for g in gains)]
                page += [f'</ul><p class="note">{html.escape(GAIN_NOTE)}</p>']
        out = Path(out)
        (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
        head = f'<head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>'
        body = "\n".join(page)
        (out / "report.html").write_text(f'<!DOCTYPE html>\n<html lang="en">{head}<body>\n{body}\n</body></html>\n')

    @staticmethod
    def summary(models: list[dict]) -> list[str]:
        """The console's lines after a pipeline: the models' table and each gain."""
        header, rows = summary_table(models)
        return console.table([header, *rows]) + gain_lines(models)


GAIN_NOTE = (
    "The perplexity ratio is the model's test perplexity over its baseline's (below 1: better), with a 95% interval "
    "paired over the same documents (each document's tokens a cluster)."
)


def sum_slices(blocks: Iterable[dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """Per-slice statistics of the blocks summed: column -> value -> summed ``token_stats``."""
    gathered: dict[str, dict[str, list]] = {}
    for block in blocks:
        for column, values in block.items():
            for value, stats in values.items():
                gathered.setdefault(column, {}).setdefault(value, []).append(stats)
    return {column: {value: sum_stats(parts) for value, parts in values.items()} for column, values in gathered.items()}


def summary_table(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Quality beside cost, a model a row."""
    header = ["model", "params", "perplexity", "next-token accuracy", "top-1 agreement", "ECE", "tokens/s"]
    return header, [summary_row(m["metrics"], m["cost"], m["name"]) for m in models]


def summary_row(met: dict, cost: dict, name: str) -> list[str]:
    """A model's row of ``summary_table``."""
    agreement = "" if (agreed := met.get("teacher_agreement")) is None else f"{100 * agreed:.2f}%"
    perplexity, accuracy, tokens = f"{met['perplexity']:.2f}", f"{100 * met['accuracy']:.2f}%", cost["tokens_per_s"]
    return [name, f"{cost['params']:,}", perplexity, accuracy, agreement, f"{met['ece']:.4f}", f"{tokens:,.0f}"]


def slice_table(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Each slice's perplexity, a model a column."""
    header = ["slice", *(m["name"] for m in models)]
    rows = []
    for column, values in models[0]["slices"].items():
        for value in values:
            cells = [f"{m['slices'][column][value]['perplexity']:.2f}" for m in models]
            rows.append([f"{column}={value}", *cells])
    return header, rows


def gain_lines(models: list[dict]) -> list[str]:
    """``<model> vs <baseline>: perplexity ratio r (95% CI lo to hi, paired over n documents)``, each compared one."""
    lines = []
    for m in models:
        if vs := m["metrics"].get("perplexity_vs_baseline"):
            lines.append(
                f"{m['name']} vs {m['baseline']['name']}: perplexity ratio {vs['ratio']:.4f} (95% CI {vs['low']:.4f} "
                f"to {vs['high']:.4f}, paired over {vs['documents']:,} documents, {vs['tokens']:,} tokens)"
            )
    return lines
