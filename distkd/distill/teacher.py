"""Stage 0: train the teacher with cross-entropy, when the job gives no teacher weights."""

from __future__ import annotations

from distkd.distill.stage import train_run
from distkd.specs import TrainingRun


def teacher_weights(run: TrainingRun, compute: bool = True) -> str:
    """The trained teacher's ``model.pt`` in its committed run folder (trained only when missing)."""
    train_run(run, "train_teacher", compute)
    return run.weights_uri
