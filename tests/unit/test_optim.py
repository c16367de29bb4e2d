"""Optimisers and schedules are registry entries a job picks by name; the defaults are today's SGD + one-cycle."""

import math

import pytest
import torch

from distkd.methods.optim import OPTIMIZERS, SCHEDULES
from distkd.registry import Registry


def test_registry_names_the_kind_and_the_known_entries():
    things = Registry("widget")
    things.register("b")(len)
    things.register("a")(str)
    assert list(things) == ["a", "b"] and "a" in things and things["b"] is len
    with pytest.raises(KeyError, match="unknown widget 'c'; known: a, b"):
        things["c"]
    with pytest.raises(ValueError, match="registered twice"):
        things.register("a")(str)


def test_one_cycle_warms_up_over_a_fifth_then_decays_linearly_to_a_floor():
    steps = 10
    rates = [SCHEDULES["one_cycle"](step / steps) for step in range(steps + 1)]
    assert rates == pytest.approx([0.01, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.01])


def test_cosine_is_half_a_cosine_after_its_warm_up():
    cosine = SCHEDULES["cosine"]
    assert cosine(0.0) == 1.0 and cosine(1.0) == pytest.approx(0.0)
    assert cosine(0.5) == pytest.approx(0.5)
    assert cosine(0.05, warmup=0.1) == pytest.approx(0.5)
    assert cosine(0.55, warmup=0.1, floor=0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize(
    ("name", "kwargs", "kind", "expected"),
    [
        ("sgd", {}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
        ("sgd", {"momentum": 0.0}, torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
        ("adamw", {"beta2": 0.98}, torch.optim.AdamW, {"betas": (0.9, 0.98), "weight_decay": 5e-4}),
    ],
)
def test_optimisers_are_built_from_lr_weight_decay_and_their_own_kwargs(name, kwargs, kind, expected):
    optimizer = OPTIMIZERS[name]([torch.nn.Parameter(torch.zeros(2))], lr=0.1, weight_decay=5e-4, **kwargs)
    assert isinstance(optimizer, kind)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.1 and {k: group[k] for k in expected} == expected


def test_kwargs_an_entry_does_not_take_are_named():
    assert OPTIMIZERS.refusal("sgd", {"momentum": 0.5}, fixed=3) is None
    assert OPTIMIZERS.refusal("sgd", {"betas": 1}, fixed=3) == "unknown argument(s) betas; sgd takes momentum, nesterov"
    assert OPTIMIZERS.refusal("adam", {}, fixed=3) == "unknown optimizer 'adam'; known: adamw, sgd"
