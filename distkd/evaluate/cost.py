"""What a model costs to keep and to run, to put beside what it scores."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` after ``warmup`` untimed calls (synchronising CUDA around each)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_cost(
    model: torch.nn.Module,
    example: Callable[[int], object],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    repeats: int = 20,
) -> dict:
    """Parameters, serialised size, FLOPs per sample, batch-1 latency and batched throughput, on the model
    inputs ``example(rows)`` makes (on the CPU; any input kind's: ``InputKind.example``).

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
        latency = _median_seconds(lambda: model(one), repeats, device)
        batch_time = _median_seconds(lambda: model(batch), max(3, repeats // 4), device)
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
