import math

import pytest
import torch

from distkd.distill.loss import kd_loss, kd_loss_topk


def softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def by_hand(s: list[float], t: list[float], y: int, alpha: float, T: float) -> float:
    ps, pt = softmax([x / T for x in s]), softmax([x / T for x in t])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ce = -math.log(softmax(s)[y])
    return alpha * T * T * kl + (1 - alpha) * ce


S = [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]
T_ = [[1.5, 0.0, -0.5], [-1.0, 2.5, 0.0]]
Y = [0, 2]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_equals_hand_computation(alpha, temperature):
    expected = sum(by_hand(s, t, y, alpha, temperature) for s, t, y in zip(S, T_, Y)) / len(S)
    got = kd_loss(
        torch.tensor(S, dtype=torch.float64), torch.tensor(T_, dtype=torch.float64), torch.tensor(Y), alpha, temperature
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_temperature_squared_factor():
    s, t, y = torch.tensor(S), torch.tensor(T_), torch.tensor(Y)
    at_4 = kd_loss(s, t, y, 1.0, 4.0).item()
    kl_only = sum(by_hand(a, b, c, 1.0, 4.0) / 16 for a, b, c in zip(S, T_, Y)) / 2
    assert at_4 == pytest.approx(16 * kl_only, rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_identical_logits_give_zero_kd():
    s, y = torch.tensor(S), torch.tensor(Y)
    assert kd_loss(s, s * 7, y, 0.0, 4.0).item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())
    assert kd_loss(s, s, y, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def topk_reference(student: torch.Tensor, index: torch.Tensor, logprob: torch.Tensor, labels, T: float):
    """The top-k KD loss (alpha 1) and its gradient in float64, the student's rest summed directly."""
    s = student.double().requires_grad_()
    q = torch.softmax(s / T, dim=1)
    p_top, q_top = logprob.double().exp(), q.gather(1, index)
    p_rest = 1 - p_top.sum(1)
    q_rest = (q * torch.ones_like(q).scatter(1, index, 0)).sum(1)
    kl = (p_top * (p_top.log() - q_top.log())).sum(1) + p_rest * (p_rest.log() - q_rest.log())
    loss = T * T * kl.mean()
    loss.backward()
    return loss.item(), s.grad


@pytest.mark.parametrize("confidence", [8.0, 16.0])
def test_topk_loss_and_gradient_match_float64_on_confident_students(confidence):
    """A student far sharper than its teacher keeps almost no mass outside the teacher's top k: the rest
    must come from a logsumexp, not from 1 - sum(top), which cancels in float32."""
    generator = torch.Generator().manual_seed(0)
    n, classes, k, T = 64, 100, 5, 4.0
    teacher = torch.randn(n, classes, generator=generator, dtype=torch.float64) * 3
    top = torch.log_softmax(teacher / T, dim=1).topk(k, dim=1)
    index, logprob = top.indices, top.values.float()
    student = (teacher * confidence).float().requires_grad_()
    labels = torch.randint(0, classes, (n,), generator=generator)
    expected, expected_grad = topk_reference(student.detach(), index, logprob, labels, T)
    loss = kd_loss_topk(student, index, logprob, labels, 1.0, T)
    loss.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected) / expected < 1e-5
    assert ((student.grad.double() - expected_grad).norm() / expected_grad.norm()).item() < 1e-5
