"""How the evaluate stage scores each task's models: ``SCORINGS``, an entry a task (``tasks.TASKS``'s names), so that
the stage, the report and the summary call the task's scoring instead of branching on the task."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from distkd.evaluate.classification import ClassificationScoring
from distkd.evaluate.language import LanguageScoring
from distkd.evaluate.metrics import Scored
from distkd.registry import Registry
from distkd.specs import EvalSpec


class Scoring(Protocol):
    target: str  # the batch column the models are scored against

    def block(self, scored: Scored) -> dict[str, np.ndarray]:
        """An evaluator's output for one batch: each model's mergeable statistics (against its teacher, its
        baseline, per slice)."""

    def rows(self, block: Mapping[str, np.ndarray]) -> int:
        """The rows an evaluator's output block covers (the console's progress)."""

    def results(
        self, blocks: list[dict], described: Mapping[str, dict], baselines: Mapping[str, str], spec: EvalSpec
    ) -> list[dict]:
        """The report's models: each role's ``described`` entry with its metrics from the summed ``blocks``."""

    def report(self, out: str | Path, models: list[dict], title: str) -> None:
        """``report.md`` and ``report.html`` of ``models`` into the local folder ``out``."""

    def summary(self, evaluated: list[dict]) -> list[str]:
        """The lines the console prints of a report's models after a pipeline."""


SCORINGS: Registry[Scoring] = Registry("task's scoring")
SCORINGS.register("classification")(ClassificationScoring())
SCORINGS.register("language_model")(LanguageScoring())
