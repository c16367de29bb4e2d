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
    mass outside those classes. Exact on the stored classes; with k = C it equals ``kd_loss``."""
    hard = F.cross_entropy(student_logits, labels)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_q_top = log_q.gather(1, teacher_index)
    if teacher_index.shape[1] == student_logits.shape[1]:  # every class stored: there is no rest,
        teacher_logprob = teacher_logprob.log_softmax(dim=1)  # only storage rounding to normalise away
    p_top = teacher_logprob.exp()
    p_rest = (1 - p_top.sum(dim=1)).clamp(min=0)
    q_rest = (1 - log_q_top.exp().sum(dim=1)).clamp(min=1e-12)
    top = (p_top * (teacher_logprob - log_q_top)).sum(dim=1)
    rest = torch.xlogy(p_rest, p_rest) - p_rest * q_rest.log()
    return alpha * temperature**2 * (top + rest).mean() + (1 - alpha) * hard
