"""Tasks: what a row's target is, how the teacher's outputs are stored, which loss family reads them, and how a
prediction is scored; the job's ``task`` picks one from ``TASKS``. Stages call the task, never branch on it, as
they call the input kind (``data/kinds.py``): the kind says what a row's input becomes, the task what is learnt.

| | classification | language_model |
| --- | --- | --- |
| target (batch column) | ``label``: a class a row | ``next``: each position's next token (``IGNORE``: none) |
| soft labels | ``softlabels.format`` | dense, or topk stored as ``tokens`` (per position, T = 1, tail) |
| loss family | ``losses.LOSSES`` | ``token_losses.TOKEN_LOSSES`` |
| hard term, accuracy | cross-entropy, hits, over labelled rows | next-token CE and accuracy, over real tokens |

``classification`` adds nothing to any identity, so the outputs of jobs that predate tasks keep their keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from distkd.config import DistillConfig, SoftLabelConfig
from distkd.data.blocks import IGNORE
from distkd.data.kinds import InputKind
from distkd.data.source import UNLABELLED
from distkd.labels.formats import FORMATS, Format
from distkd.methods.losses import LOSSES, KDLoss, Targets, Terms, labelled_cross_entropy, terms, warmup
from distkd.methods.token_losses import TOKEN_LOSSES, token_terms
from distkd.registry import Registry


class Task:
    """What a ``TASKS`` entry implements; ``terms`` is shared: the hard term alone, or the ``objective`` terms of the
    job's KD loss (``distill.loss``, an entry of ``losses``) warmed up and mixed with it. Terms are sums over units
    (``units``: a row, a real token) so that the workers' shares of a step add up (``losses.Terms``)."""

    name: ClassVar[str]
    target: ClassVar[str]  # the batch column the input kind fills with each row's target
    losses: ClassVar[Registry[KDLoss]]  # the loss family 'distill.loss' names an entry of
    objective: ClassVar[Callable[..., Terms]]  # as losses.terms: (name, student, teacher, targets, ...)
    outputs: ClassVar[str]  # what a model's logits are, as a message says it
    unit: ClassVar[str]  # what one soft label is of, as the console and the manifest count them: a row, a token
    # Every model reads the input as the job's input kind does (a language model's labels are per token of one
    # tokenizer); else a model may read it its own way (a classifier's own tokenizer): ``checks.one_reading``.
    one_reading: ClassVar[bool]

    def label_format(self, softlabels: SoftLabelConfig, num_classes: int, temperature: float) -> Format:
        """How the teacher's outputs are stored for the job's ``softlabels`` settings."""
        raise NotImplementedError

    def classes(self, labelled: int, inputs: InputKind) -> int:
        """What the models predict one of: the data's ``labelled`` classes, or the input's vocabulary."""
        raise NotImplementedError

    def output_shape(self, rows: int, classes: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a model's logits for ``rows`` rows of input ``shape``."""
        raise NotImplementedError

    def positions(self, inputs: InputKind) -> int:
        """The ``unit``s of one row of ``inputs``: the soft labels a row holds."""
        raise NotImplementedError

    def hard(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss on the targets alone (a teacher's, a baseline's), summed over the units that have a target."""
        raise NotImplementedError

    def units(self, targets: torch.Tensor) -> torch.Tensor:
        """Each row's units [N, 2] that the KD term and the hard term are averaged over (a step's, all workers'
        together: ``batches.Batch.units``)."""
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Correct predictions and predictions made, for the accuracy on the validation rows."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What the task adds to the identity of every output it shapes: nothing for ``classification``."""
        raise NotImplementedError

    def terms(
        self, kd: DistillConfig | None, logits: torch.Tensor, targets: torch.Tensor, teacher: Targets, epochs: float
    ) -> Terms:
        """A training batch's loss terms: ``hard`` for a teacher or a baseline (``kd`` None), else the job's KD term
        warmed up over ``distill.warmup_epochs`` (``epochs``: those done), mixed with ``hard`` by alpha."""
        if kd is None:
            return Terms(torch.zeros((), device=logits.device), self.hard(logits, targets))
        loss, ramp = kd.loss, warmup(kd.warmup_epochs, epochs)
        return self.objective(
            loss.name, logits, teacher, targets, kd.alpha, kd.temperature, loss.standardize, ramp, **loss.kwargs
        )

    def loss(
        self, kd: DistillConfig | None, logits: torch.Tensor, targets: torch.Tensor, teacher: Targets, epochs: float
    ) -> torch.Tensor:
        """The batch's loss alone (no other worker's rows in its step): ``terms``, each averaged over its units."""
        kd_units, ce_units = self.units(targets).sum(dim=0).tolist()
        return self.terms(kd, logits, targets, teacher, epochs).mean(kd_units, ce_units)


TASKS: Registry[Task] = Registry("task")


@dataclass(frozen=True)
class Classification(Task):
    """One class a row: today's teachers and students of images, texts and tabular rows. A row without a label
    (``UNLABELLED``) is in the KD term alone."""

    name: ClassVar[str] = "classification"
    target: ClassVar[str] = "label"
    losses: ClassVar[Registry[KDLoss]] = LOSSES
    objective = staticmethod(terms)

    def label_format(self, softlabels: SoftLabelConfig, num_classes: int, temperature: float) -> Format:
        return FORMATS[softlabels.format].format(softlabels.dtype, softlabels.kept(num_classes), temperature)

    outputs: ClassVar[str] = "one logit per class"
    unit: ClassVar[str] = "row"
    one_reading: ClassVar[bool] = False

    def classes(self, labelled: int, inputs: InputKind) -> int:
        return labelled

    def output_shape(self, rows: int, classes: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        return rows, classes

    def positions(self, inputs: InputKind) -> int:
        return 1

    def hard(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return labelled_cross_entropy(logits, targets)

    def units(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.ones_like(targets), (targets != UNLABELLED).long()], dim=1)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (logits.argmax(-1) == targets).sum(), torch.tensor(len(targets), device=targets.device)

    def identity(self) -> dict:
        return {}


@dataclass(frozen=True)
class LanguageModel(Task):
    """The next token at every position of a block of tokens ([N, L] targets, ``IGNORE`` where there is none):
    per-token soft labels (``softlabels.format: topk`` is stored as ``tokens``), per-token losses."""

    name: ClassVar[str] = "language_model"
    target: ClassVar[str] = "next"
    losses: ClassVar[Registry[KDLoss]] = TOKEN_LOSSES
    objective = staticmethod(token_terms)
    LAYOUTS: ClassVar[dict[str, str]] = {"dense": "dense", "topk": "tokens"}  # softlabels.format -> FORMATS

    def label_format(self, softlabels: SoftLabelConfig, num_classes: int, temperature: float) -> Format:
        layout = self.LAYOUTS[softlabels.format]
        return FORMATS[layout].format(softlabels.dtype, softlabels.kept(num_classes), 1.0)

    outputs: ClassVar[str] = "at each position, one logit per token of the vocabulary"
    unit: ClassVar[str] = "token"  # a block's position, padding included: each holds a label
    one_reading: ClassVar[bool] = True

    def classes(self, labelled: int, inputs: InputKind) -> int:
        return inputs.model_kwargs()["vocab_size"]

    def output_shape(self, rows: int, classes: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        return rows, shape[0], classes

    def positions(self, inputs: InputKind) -> int:
        return inputs.shape[0]

    def hard(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")

    def units(self, targets: torch.Tensor) -> torch.Tensor:
        real = (targets != IGNORE).sum(dim=1)
        return torch.stack([real, real], dim=1)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = targets != IGNORE
        return (logits.argmax(-1).eq(targets) & real).sum(), real.sum()

    def identity(self) -> dict:
        return {"task": self.name}


CLASSIFICATION = TASKS.register(Classification.name)(Classification())  # the task of a job that names none
TASKS.register(LanguageModel.name)(LanguageModel())
