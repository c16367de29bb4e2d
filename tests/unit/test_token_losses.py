"""The per-token KD losses (methods/token_losses.py) against hand computations on dense distributions: the top-k
labels' k tokens and tail as one more bin, the mean over real tokens only, the mix with next-token CE."""

import math

import pytest
import torch

from distkd.labels import tokens
from distkd.methods.losses import Targets
from distkd.methods.token_losses import IGNORE, TOKEN_LOSSES, token_objective

V, K = 5, 2
GENERATOR = torch.Generator().manual_seed(3)
STUDENT = torch.randn(2, 3, V, generator=GENERATOR, dtype=torch.float64) * 2
TEACHER = torch.randn(2, 3, V, generator=GENERATOR, dtype=torch.float64) * 2
NEXT = torch.tensor([[1, 4, 0], [2, IGNORE, IGNORE]])  # three real tokens, the rest padding


def softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def jsd(p: list[float], q: list[float], beta: float) -> float:
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


DIVERGENCES = {  # (teacher p, student q, kwargs) -> the divergence, by hand
    "forward_kl": lambda p, q, **_: kl(p, q),
    "reverse_kl": lambda p, q, **_: kl(q, p),
    "gkd_jsd": lambda p, q, beta=0.5: jsd(p, q, beta),
}


def binned(probs: list[float], kept: list[int] | None) -> list[float]:
    """A distribution on the k kept tokens and one bin for all the others (all tokens when kept is None)."""
    if kept is None:
        return probs
    return [probs[i] for i in kept] + [sum(p for j, p in enumerate(probs) if j not in kept)]


def tempered(probs: list[float], T: float) -> list[float]:
    w = [p ** (1 / T) for p in probs]
    return [x / sum(w) for x in w]


def by_hand(name: str, k: int | None, alpha: float, T: float, **kwargs) -> float:
    """Mean over the real tokens of alpha * T^2 * divergence on the bins + (1 - alpha) * CE."""
    total, count = 0.0, 0
    for n in range(NEXT.shape[0]):
        for position in range(NEXT.shape[1]):
            y = int(NEXT[n, position])
            if y == IGNORE:
                continue
            p, q = softmax(TEACHER[n, position].tolist()), softmax(STUDENT[n, position].tolist())
            kept = None if k is None else sorted(range(V), key=lambda i: -p[i])[:k]
            kd = DIVERGENCES[name](tempered(binned(p, kept), T), tempered(binned(q, kept), T), **kwargs)
            total += alpha * T * T * kd + (1 - alpha) * -math.log(q[y])
            count += 1
    return total / count


def top_k_targets(k: int) -> Targets:
    """As the training loop reads per-token labels: [N, L * k] ids and log-probabilities, [N, L] tail."""
    index, logprob, tail = tokens.top_k_(TEACHER.clone(), k)
    n = len(TEACHER)
    return Targets(index=index.reshape(n, -1), logprob=logprob.double().reshape(n, -1), tail=tail.double())


def loss(name: str, targets: Targets, alpha: float = 1.0, T: float = 1.0, student=STUDENT, **kwargs) -> torch.Tensor:
    return token_objective(name, student, targets, NEXT, alpha, T, **kwargs)


@pytest.mark.parametrize(("name", "kwargs"), [("forward_kl", {}), ("reverse_kl", {}), ("gkd_jsd", {"beta": 0.3})])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_dense_labels_give_the_divergence_of_the_whole_distributions(name, kwargs, T):
    got = loss(name, Targets(logits=TEACHER.reshape(2, -1)), T=T, **kwargs).item()
    assert got == pytest.approx(by_hand(name, None, 1.0, T, **kwargs), rel=1e-9)


@pytest.mark.parametrize(("name", "kwargs"), [("forward_kl", {}), ("reverse_kl", {}), ("gkd_jsd", {"beta": 0.7})])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_top_k_labels_give_the_divergence_on_the_k_tokens_and_the_tail_bin(name, kwargs, T):
    got = loss(name, top_k_targets(K), T=T, **kwargs).item()
    assert got == pytest.approx(by_hand(name, K, 1.0, T, **kwargs), rel=1e-9)
    without_tail = by_hand(name, K, 1.0, T, **kwargs) != pytest.approx(
        loss(name, top_k_targets(K)._replace(tail=torch.full((2, 3), -30.0)), T=T, **kwargs).item(), rel=1e-3
    )
    assert without_tail  # the tail is read: a near-empty tail is another loss


@pytest.mark.parametrize("name", sorted(TOKEN_LOSSES))
def test_top_k_of_the_whole_vocabulary_is_the_dense_loss(name):
    assert loss(name, top_k_targets(V)).item() == pytest.approx(
        loss(name, Targets(logits=TEACHER.reshape(2, -1))).item(), rel=1e-9
    )


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_alpha_mixes_the_kd_term_with_next_token_cross_entropy_over_real_tokens(alpha):
    assert loss("forward_kl", top_k_targets(K), alpha=alpha).item() == pytest.approx(
        by_hand("forward_kl", K, alpha, 1.0), rel=1e-9
    )


@pytest.mark.parametrize("name", sorted(TOKEN_LOSSES))
def test_padding_takes_no_part_in_the_loss_or_its_gradient(name):
    student = STUDENT.clone().requires_grad_()
    base = loss(name, top_k_targets(K), alpha=0.5, student=student)
    base.backward()
    assert (student.grad[NEXT == IGNORE] == 0).all() and (student.grad[NEXT != IGNORE] != 0).any()
    changed = STUDENT.clone()
    changed[NEXT == IGNORE] = 100.0
    assert loss(name, top_k_targets(K), alpha=0.5, student=changed).item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(TOKEN_LOSSES))
@pytest.mark.parametrize("k", [K, V])
def test_float32_gradients_stay_finite_for_a_confident_student_and_labels_read_from_8_bits(name, k):
    index, logprob, tail = tokens.top_k_(TEACHER.float(), k)  # a copy
    decode = lambda x: torch.from_numpy(tokens.from_code(tokens.to_code(x.numpy())))  # noqa: E731
    targets = Targets(index=index.reshape(2, -1), logprob=decode(logprob).reshape(2, -1), tail=decode(tail))
    student = (STUDENT.float() * 20).requires_grad_()
    loss(name, targets, alpha=0.5, student=student).backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("beta", [0.0, 1.0, 1.5])
def test_gkd_refuses_a_beta_outside_zero_to_one(beta):
    with pytest.raises(ValueError, match="beta"):
        loss("gkd_jsd", top_k_targets(K), beta=beta)
