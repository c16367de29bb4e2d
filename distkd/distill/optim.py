"""Optimisers and learning-rate schedules, by name: ``train.optimizer`` and ``train.schedule`` pick an entry.

An optimiser entry takes the parameters, ``lr`` and ``weight_decay`` (every job sets those) and its own
keyword arguments, whose defaults are declared here, once. A schedule entry maps training progress, the
fraction of all epochs' samples done (exact on any number of workers, whatever their shares), to the factor
applied to ``lr``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import torch

from distkd.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[..., float]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum: the default, as for CIFAR ResNets."""
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0
    )


@OPTIMIZERS.register("adamw")
def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019): the usual choice for transformers."""
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


@SCHEDULES.register("one_cycle")
def one_cycle(progress: float, warmup: float = 0.2, floor: float = 0.01) -> float:
    """Linear warm-up to 1 over the first ``warmup`` of training, then linear decay, floored at ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    ramp = progress / warmup if progress < warmup else (1 - progress) / (1 - warmup)
    return max(ramp, floor)


@SCHEDULES.register("cosine")
def cosine(progress: float, warmup: float = 0.0, floor: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup``, then half a cosine from 1 down to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    decay = (progress - warmup) / (1 - warmup) if warmup < 1 else 1.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * decay))


def unusable_kwargs(entry: Callable, kwargs: dict, fixed: int) -> str | None:
    """Why ``kwargs`` cannot be passed to ``entry`` after its first ``fixed`` positional arguments, or None."""
    names = list(inspect.signature(entry).parameters)[fixed:]
    if unknown := sorted(set(kwargs) - set(names)):
        return f"unknown argument(s) {', '.join(unknown)}; {entry.__name__} takes {', '.join(names) or 'none'}"
    return None
