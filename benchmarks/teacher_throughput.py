"""Teacher throughput: distkd's soft-label stage against a bare single-process PyTorch loop on the same cores.

Both label the same first rows of the training split (``NAME:ROWS``) with the same teacher, transform,
batch size and output format. The bare loop reads the Parquet rows, decodes them, runs the teacher
(``TeacherPredictor``, with as many torch threads as the machine has CPUs) and writes one zstd Parquet
file, in one process, each phase timed. The stage runs with 1 actor holding every CPU and with one 1-CPU
actor per CPU, into a fresh store each time, after Ray has started (Ray's start-up is item 3's), and once
more on one row per actor: that run's seconds are the stage's fixed cost (pool start-up, model loading,
commit), and the rate with them taken off is what the stage does per row. Teachers are randomly
initialised (throughput does not depend on the weights).

    python benchmarks/teacher_throughput.py --teachers resnet9-w16:50000,resnet18:10000
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from common import (
    TEACHERS,
    decoded,
    header,
    merged,
    quickstart_job,
    scratch_folder,
    start_ray,
    synthetic_teacher,
    table,
    timed,
)

from distkd.data.source import decode
from distkd.softlabels.stage import generate
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import SoftLabelSpec


def bare_loop(spec: SoftLabelSpec) -> dict[str, float]:
    """Seconds of each phase of labelling the spec's rows in this process, no Ray."""
    torch.set_num_threads(os.cpu_count())
    seconds = {}
    with timed() as t:
        table = spec.data.read_table(["id", "image", "label"])
    seconds["read Parquet"] = t["seconds"]
    with timed() as t:
        images = np.stack([decode(b) for b in table["image"].to_pylist()])
    seconds["decode JPEG"] = t["seconds"]
    predictor = TeacherPredictor(spec.teacher.model, spec.teacher.uri, spec.normalize, spec.format)
    ids, size = table["id"].to_numpy(zero_copy_only=False), spec.execution.batch_size
    with timed() as t:
        labels = [predictor({"id": ids[i : i + size], "image": images[i : i + size]}) for i in range(0, len(ids), size)]
    seconds["teacher (normalise, forward, format)"] = t["seconds"]
    with timed() as t:
        pq.write_table(pa.concat_tables(labels), io.BytesIO(), compression="zstd")
    seconds["write Parquet"] = t["seconds"]
    return seconds


@ray.remote
class ThreadProbe:
    """An actor like the pool's, reporting the torch threads it runs with."""

    def threads(self) -> tuple[int, str]:
        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS", "unset")


def actor_threads(cpus: float) -> str:
    probe = ThreadProbe.options(num_cpus=cpus).remote()
    threads, omp = ray.get(probe.threads.remote())
    ray.kill(probe)
    return f"{threads} (OMP_NUM_THREADS={omp})"


def stage_run(
    base: dict, weights: str, actors: int, per_actor: float, rows: int, shard_rows: int, repeats: int
) -> dict:
    """The fastest of ``repeats`` runs of the soft-label stage into fresh stores (``timed``'s figures)."""
    runs = []
    for _ in range(repeats):
        changes = {
            "store": scratch_folder("throughput-store"),
            "stages": ["softlabels"],
            "data": {"limit": rows},
            "softlabels": {"actors": actors, "cpus_per_actor": per_actor, "shard_rows": shard_rows},
        }
        spec = quickstart_job(merged(base, changes)).softlabel_spec(weights)
        with timed() as t:
            generate(spec)
        runs.append(t)
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--teachers", default="resnet9-w16:50000,resnet18:10000", help=f"NAME:ROWS,... of {', '.join(TEACHERS)}"
    )
    p.add_argument("--shard-rows", type=int, default=2_500, help="rows per shard (and per actor call)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each; the fastest is kept")
    args = p.parse_args()
    header("Teacher throughput: soft-label stage vs a bare PyTorch loop")
    cpus = os.cpu_count()
    pools = [(1, float(cpus)), (cpus, 1.0)]  # (actors, CPUs per actor): every CPU in use either way
    start_ray()
    folder = scratch_folder("throughput")
    for name, count in (t.split(":") for t in args.teachers.split(",")):
        model, kwargs, count = *TEACHERS[name], int(count)
        base = {"data": {"limit": count, "num_classes": 10}, "teacher": {"name": model, "kwargs": kwargs}}
        job = quickstart_job({**base, "store": folder})
        _, images, _ = decoded(job.val)  # the teacher's logits are scaled on other images than it labels
        weights = synthetic_teacher(job.teacher, job.normalize(images[:256]), 3.0, folder)
        base["teacher"]["weights"] = weights
        bare = min(
            (bare_loop(quickstart_job({**base, "store": folder}).softlabel_spec(weights)) for _ in range(args.repeats)),
            key=lambda s: sum(s.values()),
        )
        bare_total = sum(bare.values())
        rows = [[f"bare loop, 1 process, {cpus} torch threads", count / bare_total, 1.0, "-", "-", "-", "-", "-"]]
        for actors, per_actor in pools:
            t = stage_run(base, weights, actors, per_actor, count, args.shard_rows, args.repeats)
            fixed = stage_run(base, weights, actors, per_actor, actors, 1, args.repeats)["seconds"]
            rate, marginal = count / t["seconds"], count / max(t["seconds"] - fixed, 1e-9)
            rows.append(
                [
                    f"soft-label stage, {actors} actor(s) x {per_actor:g} CPU",
                    rate,
                    rate / (count / bare_total),
                    fixed,
                    marginal / (count / bare_total),
                    actor_threads(per_actor),
                    f"{t['driver_cpu'] / (t['seconds'] * cpus):.0%}",
                    f"{t['machine_cpu'] / (t['seconds'] * cpus):.0%}",
                ]
            )
        print(f"### {name} ({model} {kwargs}), {count:,} rows, batch {job.config.softlabels.batch_size}\n")
        print(
            table(
                [
                    "",
                    "rows/s",
                    "vs bare",
                    f"fixed s ({cpus} rows)",
                    "vs bare, fixed s taken off",
                    "torch threads per actor",
                    "driver's CPU share",
                    "machine busy",
                ],
                rows,
            )
        )
        print("\nBare loop by phase:\n")
        print(
            table(
                ["phase", "s", "share", "rows/s of the phase alone"],
                [[k, v, f"{v / bare_total:.0%}", count / v] for k, v in bare.items()],
            )
        )
        print(flush=True)


if __name__ == "__main__":
    main()
