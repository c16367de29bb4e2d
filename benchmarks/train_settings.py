"""What a Ray Train run of a trivial loop costs under each set of Ray Train's settings (environment variables read
as a run starts): its seconds, and the machine's CPU seconds while it ran, which count the helper actors Ray Train
starts beside the worker. ``distill/fit.py`` sets the controller's poll interval (``POLL_S``); the test session
turns the preemption watcher off (tests/conftest.py). Each setting runs ``--runs`` times on one local Ray, one
worker of half a CPU, ``--reports`` reports a run; the settings alternate, and the ratio to the first is printed
beside each. The CPU seconds are the whole machine's (``/proc/stat``): run it on a machine with nothing else to do.

    python benchmarks/train_settings.py --settings "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2.0" \
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2" \
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0"
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
import ray.train
from common import header, table, timed
from ray.train.torch import TorchTrainer

from distkd.distill.fit import POLL_ENV, POLL_S

DEFAULT = [f"{POLL_ENV}=2.0", f"{POLL_ENV}={POLL_S}", f"{POLL_ENV}={POLL_S} RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0"]
EXITS_S = 2  # the helper actors' exits after a run, which its CPU seconds count


def trivial(config: dict) -> None:
    for i in range(config["reports"]):
        ray.train.report({"step": i})


def one_run(setting: str, reports: int, storage: str, name: str) -> tuple[float, float]:
    """The run's seconds and the machine's CPU seconds, under ``setting`` (``NAME=VALUE ...``)."""
    saved = dict(os.environ)
    os.environ.update(pair.split("=", 1) for pair in setting.split())
    trainer = TorchTrainer(
        trivial,
        train_loop_config={"reports": reports},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage),
    )
    try:
        with timed() as t:
            trainer.fit()
            time.sleep(EXITS_S)
        return t["seconds"] - EXITS_S, t["machine_cpu"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT, help="'NAME=VALUE ...' environment, one a setting")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reports", type=int, default=3, help="ray.train.report calls a run (epochs)")
    args = parser.parse_args()
    header("Ray Train's settings: seconds and CPU seconds of a trivial run")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    runs: dict[str, list[tuple[float, float]]] = {s: [] for s in args.settings}
    with tempfile.TemporaryDirectory() as storage:
        one_run(args.settings[0], args.reports, storage, "warm-up")  # the first run imports more
        for r in range(args.runs):
            for i, setting in enumerate(args.settings):
                runs[setting].append(one_run(setting, args.reports, storage, f"setting-{i}-{r}"))
    first = [statistics.median(m[j] for m in runs[args.settings[0]]) for j in (0, 1)]
    rows = []
    for setting, measured in runs.items():
        cells = []
        for j, unit in enumerate(first):
            values = [m[j] for m in measured]
            cells += [statistics.median(values), " ".join(f"{v:.1f}" for v in values), statistics.median(values) / unit]
        rows.append([f"`{setting}`", *cells])
    print(table(["setting", "median run (s)", "runs (s)", "ratio", "median CPU s", "CPU s", "ratio"], rows))


if __name__ == "__main__":
    main()
