"""What a model costs to keep and to run, to put beside what it scores."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

# Seconds each phase of a timing (warm-up, timed calls) may take before it stops early: a model whose forward
# takes seconds (a language model's batch of 256 blocks on the CPU) is timed on one call after one.
PHASE_BUDGET_S = 5.0
WARMUP = 3  # untimed calls before each timing


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device, budget_s: float) -> float:
    """Median wall time of up to ``repeats`` timed calls of ``fn()`` after up to ``WARMUP`` untimed ones (synchronising
    CUDA around each), each phase cut short once it has taken ``budget_s``."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def calls(n: int) -> Iterator[float]:
        spent = 0.0
        for _ in range(n):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            took = time.perf_counter() - start
            yield took
            spent += took
            if spent >= budget_s:
                return

    for _ in calls(WARMUP):
        pass
    return statistics.median(calls(repeats))


def model_cost(
    model: torch.nn.Module,
    example: Callable[[int], object],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    repeats: int = 20,
    phase_budget_s: float = PHASE_BUDGET_S,
) -> dict:
    """Parameters, serialised size, FLOPs per sample, batch-1 latency and batched throughput, on the model
    inputs ``example(rows)`` makes (on the CPU; any input kind's: ``InputKind.example``).

    Each timing's phases (warm-up, timed calls) stop early once they have taken ``phase_budget_s``.
    Moves ``model`` to ``device`` and puts it in eval mode (and leaves it so). FLOPs are what
    ``FlopCounterMode`` counts: 2 per multiply-add of convolutions and matmuls, nothing for
    elementwise ops.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)

    one, batch = _on(example(1), device), _on(example(batch_size), device)
    # Not around the .to() above: parameters copied in inference mode could never be trained again.
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(one)
        latency = _median_seconds(lambda: model(one), repeats, device, phase_budget_s)
        batch_time = _median_seconds(lambda: model(batch), max(3, repeats // 4), device, phase_budget_s)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "size_bytes": buffer.getbuffer().nbytes,
        "flops_per_sample": counter.get_total_flops(),
        "latency_ms": latency * 1e3,
        "throughput": batch_size / batch_time,
        "device": str(device),
    }


def _on(example: object, device: torch.device) -> object:
    """A tensor example on ``device``; a ``ColumnModel``'s raw columns as they are (it runs on the CPU)."""
    return example.to(device) if isinstance(example, torch.Tensor) else example


def summed_cost(costs: list[dict]) -> dict:
    """What models run one after the other cost together (an ensemble's teachers): their parameters, sizes,
    FLOPs and batch-1 latencies add up, and so do the seconds per sample that their throughputs give."""
    added = {key: sum(c[key] for c in costs) for key in ("params", "size_bytes", "flops_per_sample", "latency_ms")}
    return {**added, "throughput": 1 / sum(1 / c["throughput"] for c in costs), "device": costs[0]["device"]}
