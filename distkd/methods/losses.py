"""Knowledge-distillation losses, by name: ``distill.loss: {name: hinton, kwargs: {...}}`` picks an entry.

An entry computes the KD term alone, the batch mean, from the student's logits and the teacher's stored
outputs (``Targets``: dense logits, or the top-k classes with their log-probabilities); ``objective`` weighs
it against the cross-entropy on the labels, which covers only the rows that have one (``UNLABELLED``: none; the
KD term covers every row). An entry that is not defined on top-k targets says so when given them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from distkd.data.source import UNLABELLED
from distkd.registry import Registry


class Targets(NamedTuple):
    """The teacher's side of a batch: ``logits`` [N, C] (dense labels), or ``index`` [N, k] with ``logprob``,
    the teacher's log-probabilities on those classes at the stored temperature (top-k labels); per-token labels
    add ``tail``, the log of the mass outside the k (``labels/tokens.py``, read by ``methods/token_losses.py``)."""

    logits: torch.Tensor | None = None
    index: torch.Tensor | None = None
    logprob: torch.Tensor | None = None
    tail: torch.Tensor | None = None


KDLoss = Callable[..., torch.Tensor]  # (student logits, Targets, labels, temperature, **kwargs) -> KD term
LOSSES: Registry[KDLoss] = Registry("KD loss")


class UndefinedOnTopK(ValueError):
    """A loss that needs the teacher's full distribution, given top-k labels."""


class Terms(NamedTuple):
    """A batch's weighted loss terms as sums over the rows each covers, so that the shares of one global batch that
    several workers hold add up: ``kd`` over every row, ``ce`` over the rows with a label."""

    kd: torch.Tensor
    ce: torch.Tensor

    def mean(self, rows: int, labelled: int) -> torch.Tensor:
        """The loss of a batch of ``rows`` rows, ``labelled`` of them with a label: each term averaged over the rows
        it covers (CE 0 in a batch without labels)."""
        return self.kd / rows + self.ce / max(labelled, 1)

    def batch_mean(self, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the batch of ``labels`` alone (no other worker's rows in its step)."""
        return self.mean(len(labels), int((labels != UNLABELLED).sum()))


def labelled_cross_entropy(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The cross-entropy summed over the rows that have a label (0 when none has)."""
    return F.cross_entropy(student, labels, ignore_index=UNLABELLED, reduction="sum")


def terms(
    name: str,
    student: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    standardize: bool = False,
    ramp: float = 1.0,
    family: Registry[KDLoss] = LOSSES,
    **kwargs,
) -> Terms:
    """``ramp * alpha * KD`` and ``(1 - alpha) * CE(student, labels)`` as sums (``Terms``); alpha 0 is plain
    cross-entropy. ``standardize``: the KD term sees z-scored logits (Sun et al., CVPR 2024), the cross-entropy the
    raw ones. ``ramp``: the KD term's share of its weight during a warm-up (``warmup``). ``family``: the registry
    ``name`` is looked up in (a task's loss family: ``methods/token_losses.py`` for a language model's tokens)."""
    hard = labelled_cross_entropy(student, labels)
    if alpha == 0:
        return Terms(torch.zeros((), device=student.device), hard)
    if standardize:
        student, targets = zscore(student), Targets(logits=zscore(dense(targets, "logit standardisation")))
    kd = family[name](student, targets, labels, temperature, **kwargs) * len(student)
    return Terms(ramp * alpha * kd, (1 - alpha) * hard)


def objective(
    name: str, student: torch.Tensor, targets: Targets, labels: torch.Tensor, *args: float | bool, **kwargs
) -> torch.Tensor:
    """The batch's loss, ``ramp * alpha * KD + (1 - alpha) * CE`` (``terms``, given the same arguments): the KD term
    the mean over its rows, the cross-entropy over its labelled rows."""
    return terms(name, student, targets, labels, *args, **kwargs).batch_mean(labels)


def warmup(epochs: float, epochs_done: float) -> float:
    """The KD term's share of its weight after ``epochs_done`` (fractional) epochs of a linear warm-up over
    ``epochs`` (Zhao et al. 2022 warm DKD up over 20 epochs: at full weight from the start it can swamp the
    cross-entropy while the student's logits are still random)."""
    return 1.0 if epochs <= 0 else min(1.0, epochs_done / epochs)


def defined_on_topk(name: str, kwargs: dict, standardize: bool, family: Registry[KDLoss] = LOSSES) -> bool:
    """Whether the loss (of ``family``) can be computed from top-k soft labels: tried on one row of two classes,
    top 1 (and a tail, which per-token labels have)."""
    index, logprob, tail = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), torch.zeros(1, 1)
    student, targets = torch.zeros(1, 2), Targets(index=index, logprob=logprob, tail=tail)
    try:
        labels = torch.zeros(1, dtype=torch.long)
        objective(name, student, targets, labels, 1.0, 1.0, standardize, family=family, **kwargs)
    except UndefinedOnTopK:
        return False
    return True


def reads_labels(name: str, kwargs: dict, family: Registry[KDLoss] = LOSSES) -> bool:
    """Whether the KD loss (of ``family``) reads the rows' labels (DKD does), so that it cannot teach a row without
    one: tried on one row of three classes, under two labels."""
    student, targets = torch.tensor([[0.3, -0.2, 0.5]]), Targets(logits=torch.tensor([[1.0, 0.1, -0.4]]))
    kd = [family[name](student, targets, torch.tensor([label]), 2.0, **kwargs) for label in (0, 1)]
    return not torch.equal(*kd)


def zscore(logits: torch.Tensor) -> torch.Tensor:
    """Each row's logits minus their mean, over their standard deviation (Sun et al. 2024, eq. 8)."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + 1e-7)


def dense(targets: Targets, method: str) -> torch.Tensor:
    """The teacher's full logits, or ``UndefinedOnTopK`` naming the method."""
    if targets.logits is None:
        raise UndefinedOnTopK(
            f"{method} needs the teacher's logits on every class; top-k soft labels keep only k of them: "
            "use 'softlabels.format: dense', or the 'hinton' loss"
        )
    return targets.logits


@LOSSES.register("hinton")
def hinton(student: torch.Tensor, targets: Targets, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``. The T^2 factor keeps the soft term's
    gradients on the scale of the hard term's as T grows."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    if targets.logits is not None:
        log_p = F.log_softmax(targets.logits / temperature, dim=-1)
        return temperature**2 * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return temperature**2 * topk_kl(log_q, targets.index, targets.logprob).mean()


def topk_kl(log_q: torch.Tensor, index: torch.Tensor, logprob: torch.Tensor) -> torch.Tensor:
    """Per row, KL from a top-k teacher to the student's ``log_q`` (both at the KD temperature): exact on the
    stored classes, with the rest of the teacher's mass in one more bin set against the student's mass outside
    those classes. With k = C it is the full KL.

    Both rests are taken in log space (the student's as a logsumexp over the classes outside the top k, the
    teacher's as ``-expm1(logsumexp(top))``), never as ``1 - sum(exp(top))``, which cancels to zero in float32
    for a confident student."""
    log_q_top = log_q.gather(1, index)
    every_class = index.shape[1] == log_q.shape[1]
    if every_class:  # there is no rest, only storage rounding to normalise away
        logprob = logprob.log_softmax(dim=1)
    kl = (logprob.exp() * (logprob - log_q_top)).sum(dim=1)
    if not every_class:
        p_rest = (-torch.expm1(logprob.logsumexp(dim=1))).clamp(min=0)
        log_q_rest = log_q.scatter(1, index, float("-inf")).logsumexp(dim=1)
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    return kl


@LOSSES.register("dkd")
def dkd(
    student: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float,
    target_weight: float = 1.0,
    non_target_weight: float = 8.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022, eq. 7): ``target_weight * TCKD + non_target_weight * NCKD``, each
    times T^2. TCKD is the KL between teacher and student on the binary split (target class, the rest); NCKD
    the KL between their distributions over the non-target classes alone. Defaults: the paper's CIFAR-100
    setting (alpha 1, beta 8)."""
    teacher = dense(targets, "DKD")
    gt = F.one_hot(labels, student.shape[-1]).bool()

    def binary(logits: torch.Tensor) -> torch.Tensor:  # log [p(target), p(the rest)]
        log_p = F.log_softmax(logits / temperature, dim=-1)[gt]
        return torch.stack([log_p, torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))], dim=1)

    def non_target(logits: torch.Tensor) -> torch.Tensor:  # log-probabilities over the other classes (0 at gt)
        masked = (logits / temperature).masked_fill(gt, torch.finfo(logits.dtype).min)
        return F.log_softmax(masked, dim=-1).masked_fill(gt, 0)

    tckd = F.kl_div(binary(student), binary(teacher), reduction="batchmean", log_target=True)
    non_q, non_p = non_target(student), non_target(teacher)
    nckd = (non_p.exp() * (non_p - non_q)).sum(dim=-1).mean()
    return temperature**2 * (target_weight * tckd + non_target_weight * nckd)


@LOSSES.register("dist")
def dist(
    student: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float,
    inter_weight: float = 1.0,
    intra_weight: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, eq. 9): one minus the Pearson correlation of the student's and the
    teacher's probabilities (at T), per sample over classes (inter-class relation, weight beta) and per class
    over the batch (intra-class relation, weight gamma), each times T^2 as in the authors' code."""
    q = F.softmax(student / temperature, dim=-1)
    p = F.softmax(dense(targets, "DIST") / temperature, dim=-1)
    inter = 1 - pearson(q, p, dim=1).mean()
    intra = 1 - pearson(q, p, dim=0).mean()
    return temperature**2 * (inter_weight * inter + intra_weight * intra)


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Pearson's correlation along ``dim``: the cosine of the centred vectors, as in the authors' code."""
    return F.cosine_similarity(a - a.mean(dim=dim, keepdim=True), b - b.mean(dim=dim, keepdim=True), dim=dim)
