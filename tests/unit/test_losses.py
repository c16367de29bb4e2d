"""The KD losses of the registry against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from distkd.methods.losses import LOSSES, Targets, UndefinedOnTopK, objective, warmup


def kd_loss(student, teacher, labels, alpha, temperature):
    return objective("hinton", student, Targets(logits=teacher), labels, alpha, temperature)


def kd_loss_topk(student, index, logprob, labels, alpha, temperature):
    return objective("hinton", student, Targets(index=index, logprob=logprob), labels, alpha, temperature)


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


# DKD, DIST and logit standardisation, each against its paper's formula written out in plain Python.


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def dkd_by_hand(s: list[float], t: list[float], y: int, T: float, a: float, b: float) -> float:
    ps, pt = softmax([x / T for x in s]), softmax([x / T for x in t])
    tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    rest_s = softmax([x / T for i, x in enumerate(s) if i != y])
    rest_t = softmax([x / T for i, x in enumerate(t) if i != y])
    return T * T * (a * tckd + b * kl(rest_t, rest_s))


def pearson_by_hand(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((z - mb) ** 2 for z in b))


def dist_by_hand(s: list[list[float]], t: list[list[float]], T: float, beta: float, gamma: float) -> float:
    ps = [softmax([x / T for x in row]) for row in s]
    pt = [softmax([x / T for x in row]) for row in t]
    inter = 1 - sum(pearson_by_hand(a, b) for a, b in zip(ps, pt)) / len(ps)
    columns = range(len(ps[0]))
    intra = 1 - sum(pearson_by_hand([r[j] for r in ps], [r[j] for r in pt]) for j in columns) / len(columns)
    return T * T * (beta * inter + gamma * intra)


def kd_term(name: str, temperature: float, **kwargs) -> float:
    s, t = torch.tensor(S, dtype=torch.float64), torch.tensor(T_, dtype=torch.float64)
    return objective(name, s, Targets(logits=t), torch.tensor(Y), 1.0, temperature, **kwargs).item()


@pytest.mark.parametrize(("temperature", "a", "b"), [(1.0, 1.0, 8.0), (4.0, 0.5, 2.0)])
def test_dkd_equals_its_target_and_non_target_terms_by_hand(temperature, a, b):
    expected = sum(dkd_by_hand(s, t, y, temperature, a, b) for s, t, y in zip(S, T_, Y)) / len(S)
    got = kd_term("dkd", temperature, target_weight=a, non_target_weight=b)
    assert got == pytest.approx(expected, rel=1e-9)


def test_dkd_with_equal_weights_is_hinton_kd_up_to_the_target_coupling():
    """Zhao et al. eq. 5: KD = TCKD + (1 - p_t) NCKD; with weights (1, 1) DKD differs from KD only by p_t NCKD."""
    T = 2.0
    hinton = kd_term("hinton", T)
    ps = [softmax([x / T for x in s]) for s in T_]
    coupling = sum(p[y] * dkd_by_hand(s, t, y, T, 0.0, 1.0) for p, s, t, y in zip(ps, S, T_, Y)) / len(S)
    assert kd_term("dkd", T, target_weight=1.0, non_target_weight=1.0) == pytest.approx(hinton + coupling, rel=1e-9)


@pytest.mark.parametrize(("temperature", "beta", "gamma"), [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_equals_one_minus_pearson_between_and_within_classes(temperature, beta, gamma):
    expected = dist_by_hand(S, T_, temperature, beta, gamma)
    assert kd_term("dist", temperature, inter_weight=beta, intra_weight=gamma) == pytest.approx(expected, rel=1e-6)


def test_logit_standardisation_z_scores_both_sides_before_the_kd_term():
    def z(row: list[float]) -> list[float]:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))
        return [(x - mean) / std for x in row]

    T = 2.0
    expected = sum(by_hand(z(s), z(t), 0, 1.0, T) for s, t in zip(S, T_)) / len(S)  # alpha 1: the label is unused
    assert kd_term("hinton", T, standardize=True) == pytest.approx(expected, rel=1e-6)
    # z-scoring makes the KD term blind to a teacher's scale and shift
    shifted = objective(
        "hinton", torch.tensor(S), Targets(logits=torch.tensor(T_) * 3 + 1), torch.tensor(Y), 1.0, T, standardize=True
    )
    assert shifted.item() == pytest.approx(kd_term("hinton", T, standardize=True), rel=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), [("dkd", {}), ("dist", {}), ("hinton", {"standardize": True})])
def test_methods_that_need_every_class_refuse_top_k_labels(name, kwargs):
    top = torch.tensor(T_).log_softmax(dim=1).topk(2, dim=1)
    with pytest.raises(UndefinedOnTopK, match="teacher's logits on every class"):
        objective(
            name, torch.tensor(S), Targets(index=top.indices, logprob=top.values), torch.tensor(Y), 0.9, 4.0, **kwargs
        )


def test_a_new_loss_is_one_registry_entry():
    @LOSSES.register("test-only-l2")
    def l2(student, targets, labels, temperature):
        return ((student - targets.logits) ** 2).mean()

    s, t = torch.tensor(S), torch.tensor(T_)
    got = objective("test-only-l2", s, Targets(logits=t), torch.tensor(Y), 0.5, 1.0)
    assert got.item() == pytest.approx(
        0.5 * ((s - t) ** 2).mean().item() + 0.5 * F.cross_entropy(s, torch.tensor(Y)).item()
    )


def test_a_warm_up_ramps_the_kd_term_alone_linearly():
    s, t, y = torch.tensor(S), torch.tensor(T_), torch.tensor(Y)
    ce = F.cross_entropy(s, y).item()
    kd = objective("dkd", s, Targets(logits=t), y, 1.0, 4.0).item()  # alpha 1: the KD term alone
    assert [warmup(2.0, done) for done in (0.0, 0.5, 2.0, 7.0)] == [0.0, 0.25, 1.0, 1.0]
    assert warmup(0.0, 0.0) == 1.0  # no warm-up: full weight from the first step
    ramped = objective("dkd", s, Targets(logits=t), y, 0.5, 4.0, ramp=warmup(2.0, 0.5)).item()
    assert ramped == pytest.approx(0.25 * 0.5 * kd + 0.5 * ce, rel=1e-6)  # the cross-entropy keeps its weight
