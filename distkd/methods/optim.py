"""Optimisers and learning-rate schedules, by name: ``train.optimizer`` and ``train.schedule`` pick an entry.

An optimiser entry takes the parameters, ``lr`` and ``weight_decay`` (every job sets those) and its own
keyword arguments, whose defaults are declared here, once. A schedule entry maps training progress, the
fraction of all epochs' samples done (exact on any number of workers, whatever their shares), to the factor
applied to ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from distkd.config import TrainConfig
from distkd.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[..., float]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum: the default, as for CIFAR ResNets."""
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
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


def optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """The job's optimiser (``train.optimizer``) over ``model``'s parameters."""
    entry = OPTIMIZERS[train.optimizer.name]
    return entry(model.parameters(), train.lr, train.weight_decay, **train.optimizer.kwargs)


class RowSchedule:
    """Sets the optimiser's learning rate before each step to ``lr * schedule(rows done / total rows)``.

    On rows, not steps: streamed shares differ (``UnequalSplit``), so how many steps an epoch takes is known
    only once it ends, while its row count is known before; the schedule so ends at the last row on any
    number of workers, whatever their shares. Its state is checkpointed."""

    def __init__(self, optimizer: torch.optim.Optimizer, train: TrainConfig, rows_per_epoch: int) -> None:
        self.optimizer, self.base_lr = optimizer, train.lr
        self.factor = SCHEDULES[train.schedule.name]
        self.kwargs = train.schedule.kwargs
        self.total_rows, self.done = max(1, train.epochs * rows_per_epoch), 0
        self._apply()

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.base_lr * self.factor(self.done / self.total_rows, **self.kwargs)

    def step(self, rows: int) -> None:
        """After a step that trained on ``rows`` rows, all workers together."""
        self.done += rows
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.done = state["done"]
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
