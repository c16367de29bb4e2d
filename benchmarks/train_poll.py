"""How long a Ray Train run of a trivial loop takes at each poll interval of its controller: the fixed cost that
``distill/fit.py``'s ``POLL_S`` cuts. The controller takes a worker's ``ray.train.report`` only when it polls the
workers, so each report, and the run's start and end, wait for a poll. Each interval runs ``--runs`` times on one
local Ray, one worker of half a CPU, ``--reports`` reports a run; the intervals alternate, and the ratio to the
first interval is printed beside each.

    python benchmarks/train_poll.py --intervals 2.0 0.5 0.2 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
import ray.train
from ray.train.torch import TorchTrainer

from distkd.distill.fit import POLL_ENV


def trivial(config: dict) -> None:
    for i in range(config["reports"]):
        ray.train.report({"step": i})


def one_run(interval: str, reports: int, storage: str, name: str) -> float:
    os.environ[POLL_ENV] = interval  # read as the run starts
    trainer = TorchTrainer(
        trivial,
        train_loop_config={"reports": reports},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage),
    )
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", nargs="+", default=["2.0", "0.5", "0.2"], help="seconds between polls")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reports", type=int, default=3, help="ray.train.report calls a run (epochs)")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    times: dict[str, list[float]] = {i: [] for i in args.intervals}
    with tempfile.TemporaryDirectory() as storage:
        one_run(args.intervals[0], args.reports, storage, "warm-up")  # the first run imports more
        for r in range(args.runs):
            for interval in args.intervals:
                times[interval].append(one_run(interval, args.reports, storage, f"poll-{interval}-{r}"))
    first = statistics.median(times[args.intervals[0]])
    print(f"{'poll (s)':>8} {'median run (s)':>15} {'runs (s)':>24} {'ratio':>6}")
    for interval, runs in times.items():
        median = statistics.median(runs)
        print(f"{interval:>8} {median:15.1f} {' '.join(f'{t:.1f}' for t in runs):>24} {median / first:6.2f}")


if __name__ == "__main__":
    main()
