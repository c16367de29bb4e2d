import time

import pytest
import torch
from torch import nn

from distkd.evaluate.cost import PHASE_BUDGET_S, model_cost


def test_tiny_convnet_counts() -> None:
    cin, cout, k, h, w, classes = 3, 4, 3, 8, 8, 10
    oh, ow = h - k + 1, w - k + 1
    model = nn.Sequential(nn.Conv2d(cin, cout, k), nn.ReLU(), nn.Flatten(), nn.Linear(cout * oh * ow, classes))
    model.train()

    cost = model_cost(model, lambda n: torch.randn(n, cin, h, w), batch_size=8, repeats=3)

    conv_params, fc_params = cout * (cin * k * k + 1), classes * (cout * oh * ow + 1)
    assert cost["params"] == conv_params + fc_params == 1562
    # 2 FLOPs per multiply-add; biases and ReLU are not counted.
    conv_macs, fc_macs = cout * oh * ow * cin * k * k, classes * cout * oh * ow
    assert cost["flops_per_sample"] == 2 * (conv_macs + fc_macs) == 10656
    assert 4 * cost["params"] < cost["size_bytes"] < 4 * cost["params"] + 4096
    assert cost["latency_ms"] > 0 and cost["throughput"] > 0
    assert cost["device"] == "cpu"
    assert not model.training


def test_flops_scale_with_input() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten())
    small = model_cost(model, lambda n: torch.randn(n, 1, 4, 4), batch_size=2, repeats=1)["flops_per_sample"]
    big = model_cost(model, lambda n: torch.randn(n, 1, 8, 8), batch_size=2, repeats=1)["flops_per_sample"]
    assert small == 2 * 2 * 16 * 9 and big == 4 * small
    assert torch.is_grad_enabled()


class Clocked(nn.Module):
    """Counts its forwards, each of which moves the test's clock by ``seconds``."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        super().__init__()
        self.layer, self.clock, self.seconds, self.calls = nn.Linear(2, 2), clock, seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.clock[0] += self.seconds
        return self.layer(x)


@pytest.mark.parametrize(
    "seconds, calls",
    [
        (1e-3, 1 + (3 + 20) + (3 + 5)),  # the FLOP count's call, then latency and throughput, each warmed up
        (PHASE_BUDGET_S, 1 + (1 + 1) + (1 + 1)),  # a forward as long as a phase may take: one call each
    ],
)
def test_a_slow_forward_is_timed_on_fewer_calls(monkeypatch, seconds: float, calls: int) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    model = Clocked(clock, seconds)
    cost = model_cost(model, lambda n: torch.randn(n, 2), batch_size=4, repeats=20)
    assert model.calls == calls
    assert cost["latency_ms"] == pytest.approx(seconds * 1e3) and cost["throughput"] == pytest.approx(4 / seconds)
