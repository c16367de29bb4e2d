"""The Hinton et al. (2015) knowledge-distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean.

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T grows.
    """
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return hard
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def kd_loss_topk(
    student_logits: torch.Tensor,
    teacher_index: torch.Tensor,
    teacher_logprob: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``kd_loss`` for a top-k soft label: the teacher's log-probabilities (at ``temperature``) on
    ``teacher_index`` [N, k], and the rest of its mass in one more bin set against the student's
    mass outside those classes. Exact on the stored classes; with k = C it equals ``kd_loss``.

    Both rests are taken in log space (the student's as a logsumexp over the classes outside the
    top k, the teacher's as ``-expm1(logsumexp(top))``), never as ``1 - sum(exp(top))``, which
    cancels to zero in float32 for a confident student."""
    hard = F.cross_entropy(student_logits, labels)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_q_top = log_q.gather(1, teacher_index)
    every_class = teacher_index.shape[1] == student_logits.shape[1]
    if every_class:  # there is no rest, only storage rounding to normalise away
        teacher_logprob = teacher_logprob.log_softmax(dim=1)
    soft = (teacher_logprob.exp() * (teacher_logprob - log_q_top)).sum(dim=1)
    if not every_class:
        p_rest = (-torch.expm1(teacher_logprob.logsumexp(dim=1))).clamp(min=0)
        log_q_rest = log_q.scatter(1, teacher_index, float("-inf")).logsumexp(dim=1)
        soft = soft + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    return alpha * temperature**2 * soft.mean() + (1 - alpha) * hard
