"""Channels-last against the default (NCHW) layout on this machine's CPU, side by side in one run: a training
step and an inference batch of the quick start's models, each layout timed in turn, repeated, median kept.
``models.placed`` puts every model in channels-last on every device; this is the measurement behind it.

    python benchmarks/layout.py [--seconds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import machine, table
from distkd.models import sources

MODELS = {  # name: (registry name, kwargs, batch size as the quick start trains it)
    "resnet9-w8 (quick start teacher)": ("resnet9", {"width": 8}, 256),
    "resnet9-w16": ("resnet9", {"width": 16}, 256),
    "lenet5 (quick start student)": ("lenet5", {}, 128),
}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def rate(step: Callable[[], None], rows: int, seconds: float) -> float:
    step()  # one-time set-up (oneDNN primitives) not timed
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += 1
    return count * rows / (time.perf_counter() - started)


def rates(name: str, kwargs: dict, batch: int, layout: torch.memory_format, seconds: float) -> tuple[float, float]:
    """Images/s of a training step (SGD) and of inference, weights in ``layout``, inputs as decoded (NCHW)."""
    torch.manual_seed(0)
    model = sources.build(name, 10, 3, 32, **kwargs).to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def train() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            model(x)

    trained = rate(train, batch, seconds)
    model.eval()
    return trained, rate(infer, batch, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="each layout in turn, this many times")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    rows = []
    for label, (name, kwargs, batch) in MODELS.items():
        seen = {layout: [] for layout in LAYOUTS}
        for _ in range(args.repeats):  # interleaved: a noisy moment hits both layouts alike
            for layout, memory_format in LAYOUTS.items():
                seen[layout].append(rates(name, kwargs, batch, memory_format, args.seconds))
        median = {layout: [statistics.median(r[i] for r in runs) for i in (0, 1)] for layout, runs in seen.items()}
        (train_nchw, infer_nchw), (train_cl, infer_cl) = median["NCHW"], median["channels-last"]
        rows.append(
            [label, batch, train_nchw, train_cl, train_cl / train_nchw, infer_nchw, infer_cl, infer_cl / infer_nchw]
        )
    print(machine())
    print(f"{torch.get_num_threads()} torch threads, median of {args.repeats} x {args.seconds:g} s per figure\n")
    header = ["model", "batch", "train NCHW /s", "train CL /s", "CL/NCHW", "infer NCHW /s", "infer CL /s", "CL/NCHW"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
