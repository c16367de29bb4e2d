"""Collectives that keep the training workers in step: every worker calls each of them, at the same point of
its loop, or DDP waits forever (a worker with no rows of a step still joins it, with ``idle_step``)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if distributed():
        dist.all_reduce(t)
    return t


def gathered(item: dict) -> list[dict]:
    """``item`` from every worker, by rank."""
    if not distributed():
        return [item]
    items = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


def rank0_buffers(module: torch.nn.Module) -> None:
    """Sets every worker's buffers (BatchNorm's running statistics) to rank 0's, the checkpointed model's:
    DDP broadcasts them before a training step's forward pass, and each worker's own batches update them."""
    if distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def idle_step(model: torch.nn.Module, example: torch.Tensor) -> torch.Tensor:
    """A zero loss that still runs DDP's forward and backward pass (its buffer broadcast and gradient
    all-reduce, in step with the other workers), from one blank input in eval mode, so that BatchNorm's
    running statistics do not see it."""
    model.eval()
    zero = model(example).sum() * 0
    model.train()
    return zero
