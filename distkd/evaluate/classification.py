"""How the evaluate stage scores a classifier (``task: classification``): the ``SCORINGS`` entry of the task.

Each evaluator block is reduced per model to ``metrics.block_stats`` (and per slice, ``slice_stats``) and to its
ranking statistics (``ranking.block``), all summed exactly on the driver; a model beside its baseline gets the
paired gains of ``metrics`` and ``ranking``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from distkd import console
from distkd.evaluate import ranking
from distkd.evaluate.metrics import (
    Scored,
    block_stats,
    compute_metrics,
    gain_text,
    slice_gaps,
    slice_metrics,
    slice_stats,
    sum_slices,
    sum_stats,
    worst_slice,
)
from distkd.specs import EvalSpec

SLICES = "slices"  # the column of the evaluators' output that holds a block's per-slice statistics
RANKING = "ranking"  # the column that holds a block's ranking statistics, per model (evaluate/ranking.py)
TRUNCATED = "truncated"  # a text input's: rows longer than max_length tokens (``TextInput.prepare``)


class ClassificationScoring:
    """The ``classification`` task's evaluation (``scoring.Scoring``)."""

    target = "label"

    def block(self, scored: Scored) -> dict[str, np.ndarray]:
        logits, batch, slices = scored.logits, scored.batch, scored.slices
        out, sliced, ranked = {}, [], []
        for i, (role, z) in enumerate(logits.items()):
            teacher, baseline = scored.teacher(role), logits.get(scored.baselines.get(role))
            stats = block_stats(z, batch["label"], teacher, baseline_logits=baseline)
            out.update({f"m{i}_{key}": v for key, v in stats.items()})
            if slices:
                sliced.append(slice_stats(slices, z, batch["label"], teacher_logits=teacher, baseline_logits=baseline))
            ranked.append(ranking.block(batch["id"], batch["label"], z, baseline, slices))
        if slices:  # column -> value -> statistics, per model: nested, so one pickled cell per block
            out[SLICES] = np.array([pickle.dumps(sliced)], dtype=object)
        out[RANKING] = np.array([pickle.dumps(ranked)], dtype=object)
        if TRUNCATED in batch:  # a text input's rows cut to max_length tokens
            out[TRUNCATED] = np.array([int(batch[TRUNCATED].sum())])
        return out

    @staticmethod
    def rows(block: Mapping[str, np.ndarray]) -> int:
        return int(block["m0_confusion"].sum())

    def results(
        self, blocks: list[dict], described: Mapping[str, dict], baselines: Mapping[str, str], spec: EvalSpec
    ) -> list[dict]:
        results, class_names = [], list(spec.class_names) if spec.class_names else None
        slices = tuple(spec.execution.slices)
        paired: dict[str, dict | None] = {}  # role -> its paired ranking sums against its baseline
        for i, about in enumerate(described.values()):
            summed = sum_stats(
                {k.removeprefix(f"m{i}_"): v for k, v in b.items() if k.startswith(f"m{i}_")} for b in blocks
            )
            # a block holds one row per evaluator call, or several
            ranks = ranking.merge_blocks(pickle.loads(cell)[i] for b in blocks for cell in b[RANKING])
            results.append(
                {
                    **about,
                    "metrics": {**compute_metrics(summed, class_names), **ranking.of(ranks["all"], summed)},
                    **({TRUNCATED: sum(int(b[TRUNCATED].sum()) for b in blocks)} if TRUNCATED in blocks[0] else {}),
                }
            )
            paired[about["role"]] = ranks.get("paired")
            if slices:
                summed_slices = sum_slices(pickle.loads(cell)[i] for b in blocks for cell in b[SLICES])
                results[-1]["slices"] = slice_metrics(summed_slices, class_names)
                for column, values in summed_slices.items():
                    for value, stats in values.items():
                        results[-1]["slices"][column][value].update(ranking.of(ranks["slices"][column][value], stats))
        by_role = {r["role"]: r for r in results}
        for role, baseline in baselines.items():
            b = by_role[baseline]
            by_role[role]["baseline"] = {"role": baseline, "name": b["name"], "seed": b.get("settings", {}).get("seed")}
            by_role[role]["metrics"]["ranking_vs_baseline"] = ranking.paired_gain(
                paired[role], by_role[role]["metrics"], b["metrics"]
            )
            if slices:
                by_role[role]["slice_gaps"] = slice_gaps(by_role[role]["slices"], b["slices"])
        return results

    @staticmethod
    def report(out: str | Path, models: list[dict], title: str) -> None:
        from distkd.evaluate.report import write_report  # matplotlib: on the driver, not in every actor

        write_report(out, models, title=title)

    @staticmethod
    def summary(evaluated: list[dict]) -> list[str]:
        ranked = all(ranking.judged_by_ranking(m["metrics"]) for m in evaluated)  # binary: AUC and logloss beside
        header = ("model", "params", "accuracy", "macro F1", "agreement with teacher") + ranked * ("ROC AUC", "logloss")
        rows = [header] + [
            (
                m["name"],
                f"{m['cost']['params']:,}",
                f"{100 * m['metrics']['accuracy']:.2f}%",
                f"{m['metrics']['f1_macro']:.4f}",
                ""
                if m["metrics"].get("teacher_agreement") is None
                else f"{100 * m['metrics']['teacher_agreement']:.2f}%",
            )
            + ((f"{m['metrics']['roc_auc']:.4f}", f"{m['metrics']['logloss']:.4f}") if ranked else ())
            for m in evaluated
        ]
        lines = console.table(rows)
        compared = [m for m in evaluated if "baseline" in m]
        for m in compared:
            what = (
                "distilled student vs from scratch" if len(compared) == 1 else f"{m['name']} vs {m['baseline']['name']}"
            )
            lines.append(f"{what}: {gain_text(m)}")
            if ranked:
                lines.append(f"  {ranking.gain_text(m['metrics']['ranking_vs_baseline'])}")
            if "slice_gaps" in m:
                lines.append(f"  {worst_slice(m)}")
        return lines
