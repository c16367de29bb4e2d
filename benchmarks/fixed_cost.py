"""Ray's fixed cost: seconds from `distkd pipeline` to each stage's first work, and for a fully reused rerun.

Runs the quick start's job (all four stages) on so few rows that every stage does one batch or one
training step, as a new process into a fresh store, and timestamps each line it prints as it arrives
(a Ray worker's line reaches the driver's output a fraction of a second after it was printed). Then runs
it again (everything reused). Beside it, the same machinery with none of distkd's work, each in a fresh
process: importing distkd, starting Ray, a Ray Train run whose loop only reports once, and a Ray Data
actor pool mapping one row; what the pipeline spends beyond these is ours.

    python benchmarks/fixed_cost.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml
from common import QUICKSTART, header, merged, scratch_folder, table

EVENTS = {  # what a line says -> the event it marks (the first line that matches)
    "Ray's logs: ": "Ray started",
    r"\[teacher\] training ": "teacher training starts",
    r"\[teacher\] epoch 1/": "teacher's first epoch (one step) done",
    r"\[softlabels\] labelling": "soft-label stage starts",
    r"\[softlabels\] committed": "soft labels (one batch) committed",
    r"\[student-kd\] training ": "distilled student starts",
    r"\[student-kd\] epoch 1/": "distilled student's first epoch (one step) done",
    r"\[student-scratch\] epoch 1/": "scratch student's first epoch (one step) done",
    r"\[evaluate\] report:": "report written",
}

RAY_ONLY = {  # what each measures -> a program that prints its seconds after the imports
    "import distkd's command line (Ray, torch, pyarrow)": """
        import time; t = time.perf_counter()
        import distkd.cli, distkd.pipeline
        print(time.perf_counter() - t)
    """,
    "ray.init() on this machine": """
        import time, ray; t = time.perf_counter()
        ray.init(include_dashboard=False)
        print(time.perf_counter() - t)
    """,
    "Ray Train: a 1-worker run whose loop reports once": """
        import time, tempfile, ray, ray.train
        from ray.train.torch import TorchTrainer
        ray.init(include_dashboard=False); t = time.perf_counter()
        TorchTrainer(lambda: ray.train.report({"x": 1}),
                     scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
                     run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp())).fit()
        print(time.perf_counter() - t)
    """,
    "Ray Data: 2 actors (1 CPU each) map one row": """
        import time, ray
        ray.init(include_dashboard=False); t = time.perf_counter()
        class Identity:
            def __call__(self, batch): return batch
        ray.data.range(2, override_num_blocks=2).map_batches(
            Identity, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1).take_all()
        print(time.perf_counter() - t)
    """,
}


def timeline(command: list[str], env: dict[str, str]) -> tuple[dict[str, float], float]:
    """Seconds from launch to each event's first line, and to the process's exit."""
    started, seen = time.perf_counter(), {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            for pattern, event in EVENTS.items():
                if event not in seen and re.search(pattern, line):
                    seen[event] = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")
    return seen, time.perf_counter() - started


def ray_only(program: str) -> tuple[float, float]:
    """The program's own figure, and the whole process's wall seconds."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1]), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512, help="rows of each split: one batch, one step")
    args = p.parse_args()
    header("Ray's fixed cost: the quick start's pipeline on one batch")
    folder = scratch_folder("fixed-cost")
    one_batch = {"epochs": 1, "batch_size": args.rows}
    job = merged(
        yaml.safe_load(Path(QUICKSTART).read_text()),
        {
            "name": "fixed-cost",
            "store": folder,
            "data": {"limit": args.rows, "val_limit": args.rows},
            "teacher": {"train": one_batch},
            "student": {"train": one_batch},
            "softlabels": {"batch_size": args.rows},
            "evaluate": {"batch_size": args.rows},
        },
    )
    job_file = Path(folder) / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    # a new user's: no content hashes remembered yet
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DISTKD_CACHE_DIR": tempfile.mkdtemp(dir=folder)}
    command = [sys.executable, "-m", "distkd", "pipeline", str(job_file)]
    first, first_total = timeline(command, env)
    _, rerun_total = timeline(command, env)
    print(f"{args.rows} rows per split; every stage computes in the first run, none in the rerun\n")
    rows = [[event, seconds] for event, seconds in sorted(first.items(), key=lambda kv: kv[1])]
    rows += [["first run: process exits", first_total], ["rerun, everything reused: process exits", rerun_total]]
    print(table(["since `distkd pipeline` started", "s"], rows))
    print("\nThe same machinery without distkd's work (fresh processes):\n")
    print(
        table(
            ["", "s", "whole process s"],
            [[what, *ray_only(program)] for what, program in RAY_ONLY.items()],
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
