"""Teacher ensembles: several teachers' outputs combined into one target, by name (``softlabels.combine``).

Each teacher keeps its own soft-label entry; a student combines them as it reads them (``distill/streaming.py``)
and the evaluation combines the teachers' outputs on the test split alike, with this one function. An entry of
``COMBINATIONS`` takes the teachers' logits stacked [M, ..., C], their weights [M] (summing to 1) and the KD
temperature (``distill.temperature``, read where the combination is called), and returns logits [..., C] that
every KD loss takes as a teacher's:

- ``probs``: ``T * log(sum_i w_i softmax(z_i / T))``, whose softmax at T is exactly the weighted mean of the
  teachers' probabilities at T;
- ``logits``: ``sum_i w_i z_i``.

Both are unchanged by adding a constant to a teacher's logits of a row, so top-k labels that keep every class
(log-probabilities: the logits less a constant) combine exactly; top-k labels of fewer classes are refused
(``checks.ensemble``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distkd.labels.formats import FORMATS, Format
from distkd.registry import Registry

Combination = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (logits [M, ..., C], weights [M], T)
COMBINATIONS: Registry[Combination] = Registry("soft-label combination")
(TARGET,) = FORMATS["dense"].training  # a combined target's training column: dense logits, whatever the entries' format


@COMBINATIONS.register("probs")
def mean_probabilities(logits: np.ndarray, weights: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    log_p = scaled - scaled.max(axis=-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=-1, keepdims=True))  # each teacher's log-probabilities at T
    weighted = log_p + np.log(weights).reshape(-1, *[1] * (logits.ndim - 1))
    top = weighted.max(axis=0)
    return temperature * (top + np.log(np.exp(weighted - top).sum(axis=0)))  # T * logsumexp: T * log(mean)


@COMBINATIONS.register("logits")
def mean_logits(logits: np.ndarray, weights: np.ndarray, temperature: float) -> np.ndarray:
    return np.tensordot(weights, logits.astype(np.float64), axes=1)


@dataclass(frozen=True)
class Ensemble:
    """Several teachers combined: ``members`` names what each weight is of (the teachers' soft-label keys in a
    run, their roles in a report), ``weights`` sum to 1, ``combine`` is an entry of ``COMBINATIONS``. The KD
    temperature the combination takes is the caller's ``distill.temperature``."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    combine: str

    def __call__(self, logits: Sequence[np.ndarray], temperature: float) -> np.ndarray:
        """Each member's logits [..., C], in ``members`` order -> the ensemble's [..., C] (float32)."""
        stacked = np.stack([np.asarray(z) for z in logits])
        combined = COMBINATIONS[self.combine](stacked, np.asarray(self.weights, dtype=np.float64), temperature)
        return combined.astype(np.float32)

    def predictions(self, logits: Sequence[np.ndarray], temperature: float) -> np.ndarray:
        """The ensemble's own outputs for the report: logits whose softmax at 1 is its distribution (for ``probs``
        the mixture at T itself, ``log p``; for ``logits`` the weighted mean), so its NLL and calibration are its
        own, not those of the target sharpened by T."""
        combined = self(logits, temperature)
        return combined / temperature if self.combine == "probs" else combined

    def training_columns(
        self, teachers: Sequence[dict[str, np.ndarray]], fmt: Format, views: int, temperature: float
    ) -> dict:
        """One unit's training columns of each member (``labelstore.training_columns``: the unit's ids, views alike)
        -> one target: the combined logits per recorded view, [N, V * C], beside the ids and views' parameters."""
        first = teachers[0]
        combined = self([fmt.logits(t, max(views, 1)) for t in teachers], temperature)
        out = {"id": first["id"], TARGET: combined.reshape(len(combined), -1)}
        return {**out, "views": first["views"]} if views else out
