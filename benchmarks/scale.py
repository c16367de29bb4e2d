"""How the data paths scale: stage 1 (soft labels) and one epoch of stage 2 (streamed distillation)
on synthetic datasets of increasing size, with a 1000-class teacher head.

For each size it prints the seconds of stage 1 and of stage 2 (one epoch plus Ray Train's fixed
start-up and export), the epoch's own seconds and rows/s, the driver's peak resident memory above its
level before the size started, and the object store's peak use. Time should grow linearly
with rows while the driver's memory stays flat (it only ever holds one record per shard) and
the object store stays under Ray Data's streaming limit (half the object store by default),
in practice a few blocks per running task.

    python benchmarks/scale.py --sizes 10000,100000,500000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray
import torch
from common import write_split

from distkd import cluster, config, storage
from distkd.distill.stage import students
from distkd.job import Job
from distkd.models import sources
from distkd.softlabels.stage import generate


class Peaks:
    """Samples the driver's RSS and the object store's bytes in use until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        self.process, self.interval = psutil.Process(), interval
        self.capacity = ray.cluster_resources()["object_store_memory"]
        self.base_rss = self.process.memory_info().rss
        self.rss = self.store = 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            self.rss = max(self.rss, self.process.memory_info().rss)
            in_use = self.capacity - ray.available_resources().get("object_store_memory", 0)  # Ray's public view
            self.store = max(self.store, in_use)
            time.sleep(self.interval)

    def stop(self) -> tuple[float, float]:
        self.running = False
        self.thread.join()
        return (self.rss - self.base_rss) / 2**20, self.store / 2**20


def job_for(data: Path, store: Path, rows: int, args: argparse.Namespace, weights: str) -> Job:
    raw = {
        "name": f"scale{rows}",
        "store": str(store),
        "data": {"uri": str(data), "num_classes": args.classes, "val_limit": 1000, "cache": "stream"},
        "teacher": {"name": "lenet5", "weights": weights},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 256, "augment": False}},
        "softlabels": {"shard_rows": args.shard_rows, "batch_size": 1000, "actors": args.actors},
        "distill": {"alpha": 0.5, "baseline": False},
        "resources": {"cpus_per_worker": args.cpus_per_worker},
    }
    return Job.prepare(config.parse(raw, "<scale>"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2000,10000", help="training rows per dataset, comma-separated")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--side", type=int, default=32, help="image height and width")
    p.add_argument("--shard-rows", type=int, default=10_000)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = p.parse_args()
    cluster.connect(None)
    print("| rows | stage 1 s | stage 1 rows/s | stage 2 s | epoch s | epoch rows/s | driver peak MB | store peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        teacher = str(Path(tmp, "teacher.pt"))  # untrained: its outputs' values do not change the cost
        torch.manual_seed(0)
        torch.save(sources.build("lenet5", args.classes, 3, args.side).state_dict(), teacher)
        for rows in (int(s) for s in args.sizes.split(",")):
            data, store = Path(tmp, f"data{rows}"), Path(tmp, f"store{rows}")
            data.mkdir()
            write_split(data, "train", rows, args.classes, args.side, seed=rows)
            write_split(data, "test", 1000, args.classes, args.side, seed=rows + 1)
            job = job_for(data, store, rows, args, teacher)
            peaks = Peaks()
            started = time.perf_counter()
            softlabels = job.softlabel_spec(teacher)
            generate(softlabels)
            labelled = time.perf_counter()
            weights = students(job.distilled_run(softlabels), None)["distilled"]
            trained = time.perf_counter()
            driver, store_peak = peaks.stop()
            epoch = storage.read_json(storage.join(weights.rsplit("/", 1)[0], "history.json"))[0]["seconds"]
            print(
                f"| {rows:,} | {labelled - started:.1f} | {rows / (labelled - started):,.0f} | "
                f"{trained - labelled:.1f} | {epoch:.1f} | {rows / epoch:,.0f} | {driver:.0f} | {store_peak:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
