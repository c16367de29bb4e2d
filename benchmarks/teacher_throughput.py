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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
import yaml
from common import (
    QUICKSTART,
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
    write_split,
)

from distkd import devices
from distkd.data import gpu_decode
from distkd.data.source import decode_batch
from distkd.softlabels.stage import generate
from distkd.softlabels.teacher import TeacherPredictor
from distkd.specs import SoftLabelSpec


def bare_loop(spec: SoftLabelSpec) -> dict[str, float]:
    """Seconds of each phase of labelling the spec's rows in this process, no Ray: decoding on a thread per
    CPU, the teacher on the GPU if there is one (in the spec's precision), else on a torch thread per CPU."""
    torch.set_num_threads(os.cpu_count())
    seconds = {}
    with timed() as t:
        table = spec.data.read_table(["id", "image", "label"])
    seconds["read Parquet"] = t["seconds"]
    with timed() as t, ThreadPoolExecutor(os.cpu_count()) as pool:
        columns = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
        images = decode_batch(columns, spec.teacher.model.input_shape, pool)["image"]
    seconds["decode images"] = t["seconds"]
    predictor = TeacherPredictor(spec.teacher, spec.inputs, spec.format, precision=spec.precision)
    ids, size = columns["id"], spec.execution.batch_size
    predictor({"id": ids[:size], "image": images[:size]})  # CUDA's and cuDNN's one-time set-up, not timed
    with timed() as t:
        labels = [predictor({"id": ids[i : i + size], "image": images[i : i + size]}) for i in range(0, len(ids), size)]
    seconds["teacher (normalise, forward, format)"] = t["seconds"]
    with timed() as t:
        pq.write_table(pa.concat_tables(labels), io.BytesIO(), compression="zstd")
    seconds["write Parquet"] = t["seconds"]
    return seconds


def forward_only(spec: SoftLabelSpec, batches: int = 10) -> float:
    """Images/s of the teacher alone (normalise, forward, logits to the host) on a uint8 batch already on its
    device: the limit a soft-label stage can approach."""
    predictor = TeacherPredictor(
        spec.teacher, spec.inputs, spec.format, precision=spec.precision, compile=spec.execution.compile
    )
    size = spec.execution.batch_size
    images = torch.randint(0, 256, (size, *spec.teacher.model.input_shape), dtype=torch.uint8)
    images = images.to(predictor.device)
    predictor.logits({"image": images})  # set-up (and compilation) not timed
    with timed() as t:
        for _ in range(batches):
            predictor.logits({"image": images})  # each ends with the logits on the host: synchronised
    return batches * size / t["seconds"]


def decode_rates(spec: SoftLabelSpec, rows: int) -> list[list[object]]:
    """Images/s of each decoder alone on the split's first ``rows`` rows, in the stage's batches, onto the
    device this process would label on (nvJPEG's call runs torchvision's CPU decoder on a CPU)."""
    table = spec.data.read_table(["id", "image", "label"]).slice(0, rows)
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    device, size, shape = devices.device(), spec.execution.batch_size, spec.teacher.model.input_shape
    out = []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for decode in gpu_decode.DECODERS.values():
            with timed() as t:
                for i in range(0, rows, size):
                    decode({k: v[i : i + size] for k, v in columns.items()}, shape, device, pool)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            label = f"decode only: {decode.__name__} (Pillow on {os.cpu_count()} threads where it decodes)"
            out.append([label, str(device), rows / t["seconds"]])
    return out


def limits(spec: SoftLabelSpec, rows: int) -> str:
    """The limits table: the teacher alone on device tensors, and each decoder alone."""
    where = str(devices.device()) + (f", {spec.precision}" if spec.precision != "fp32" else "")
    lines = [[f"forward only, uint8 batches on the device (the limit), batch {spec.execution.batch_size}", where,
              forward_only(spec)], *decode_rates(spec, rows)]  # fmt: skip
    return table(["", "device", "images/s"], lines)


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
    base: dict, weights: str, pool: tuple[int, float, float], rows: int, shard_rows: int, repeats: int
) -> dict:
    """The fastest of ``repeats`` runs of the soft-label stage into fresh stores (``timed``'s figures)."""
    runs, (actors, per_actor, gpus) = [], pool
    for _ in range(repeats):
        changes = {
            "store": scratch_folder("throughput-store"),
            "stages": ["softlabels"],
            "data": {"limit": rows},
            "softlabels": {
                "actors": actors,
                "cpus_per_actor": per_actor,
                "gpus_per_actor": gpus,
                "shard_rows": shard_rows,
            },
        }
        spec = quickstart_job(merged(base, changes)).softlabel_spec(weights)
        with timed() as t:
            generate(spec)
        runs.append(t)
    return min(runs, key=lambda r: r["seconds"])


def command_run(base: dict, weights: str, pool: tuple[int, float, float], rows: int, shard_rows: int) -> float:
    """Wall seconds of the whole ``distkd pipeline`` command (``stages: [softlabels]``) as a user runs it: its own
    process, Ray started by it, into a fresh store."""
    actors, per_actor, gpus = pool
    changes = {
        "store": scratch_folder("command-store"),
        "stages": ["softlabels"],
        "data": {"limit": rows},
        "softlabels": {"actors": actors, "cpus_per_actor": per_actor, "gpus_per_actor": gpus, "shard_rows": shard_rows},
        "teacher": {"weights": weights},
    }
    raw = merged(yaml.safe_load(Path(QUICKSTART).read_text()), merged(base, changes))
    job = Path(scratch_folder("command-job")) / "job.yaml"
    job.write_text(yaml.safe_dump({**raw, "name": "bench-command"}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distkd", "pipeline", str(job)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def command_against_bare(
    base: dict, weights: str, count: int, shard_rows: int, repeats: int, folder: str, name: str
) -> None:
    """The bare loop and the whole command in turn, ``repeats`` times: each pair's ratio, and their spread."""
    pairs = []
    for _ in range(repeats):
        bare = sum(bare_loop(quickstart_job({**base, "store": folder}).softlabel_spec(weights)).values())
        pairs.append((bare, command_run(base, weights, (2, 1.0, 0.0), count, shard_rows)))
    ratios = [bare / command for bare, command in pairs]
    print(f"### {name}, {count:,} rows: `distkd pipeline` (2 actors x 1 CPU, shard_rows {shard_rows}) vs bare loop\n")
    runs = [[i + 1, *pair, ratio] for i, (pair, ratio) in enumerate(zip(pairs, ratios))]
    print(table(["run", "bare loop s", "command s", "bare / command"], runs))
    print(f"\nratio: mean {np.mean(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}\n", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--teachers", default="resnet9-w16:50000,resnet18:10000", help=f"NAME:ROWS,... of {', '.join(TEACHERS)}"
    )
    p.add_argument("--shard-rows", type=int, default=2_500, help="rows per shard (and per actor call)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each; the fastest is kept")
    p.add_argument("--synthetic", type=int, metavar="SIDE", help="label synthetic SIDExSIDE JPEGs of 1000 classes")
    p.add_argument(
        "--jpeg-noise", type=float, default=0.2, help="of the synthetic JPEGs: 0.75 is about 110 KB at 224x224"
    )
    p.add_argument("--gpu", action="store_true", help="teachers on the GPU in bf16 (1 actor, and 2 sharing it)")
    p.add_argument(
        "--command",
        action="store_true",
        help="the whole `distkd pipeline` command (stages: [softlabels], 2 actors x 1 CPU) against the bare loop",
    )
    args = p.parse_args()
    header("Teacher throughput: soft-label stage vs a bare PyTorch loop")
    cpus = os.cpu_count()
    # (actors, CPUs per actor, GPUs per actor): every CPU in use either way (on a GPU, 2 left to the driver)
    pools = [(1, cpus - 2.0, 1.0), (2, cpus / 2 - 1, 0.5)] if args.gpu else [(1, float(cpus), 0.0), (cpus, 1.0, 0.0)]
    if not args.command:  # the command starts its own Ray, as a user's does
        start_ray()
    folder = scratch_folder("throughput")
    data = {"num_classes": 10}
    if args.synthetic:
        rows = max(int(t.split(":")[1]) for t in args.teachers.split(","))
        images = scratch_folder("synthetic")
        data = {"uri": images, "num_classes": 1000, "class_names": None, "val_limit": 256}
        for split, n, seed in (("train", rows, 0), ("test", 256, 1)):
            write_split(Path(images), split, n, 1000, args.synthetic, seed, "JPEG", args.jpeg_noise)
    for name, count in (t.split(":") for t in args.teachers.split(",")):
        model, kwargs, count = *TEACHERS[name], int(count)
        base = {"data": {**data, "limit": count}, "teacher": {"name": model, "kwargs": kwargs}}
        if args.gpu:
            base["softlabels"] = {"precision": "bf16"}
        job = quickstart_job({**base, "store": folder})
        _, images, _ = decoded(job.val)  # the teacher's logits are scaled on other images than it labels
        weights = synthetic_teacher(job.teacher, job.inputs.normalize(images[:256]), 3.0, folder)
        base["teacher"]["weights"] = weights
        if args.command:
            command_against_bare(base, weights, count, args.shard_rows, args.repeats, folder, name)
            continue
        bare = min(
            (bare_loop(quickstart_job({**base, "store": folder}).softlabel_spec(weights)) for _ in range(args.repeats)),
            key=lambda s: sum(s.values()),
        )
        bare_total = sum(bare.values())
        where = "the GPU, bf16" if args.gpu else f"{cpus} torch threads"
        rows = [[f"bare loop, 1 process, {where}", count / bare_total, 1.0, "-", "-", "-", "-", "-"]]
        for actors, per_actor, gpus in pools:
            t = stage_run(base, weights, (actors, per_actor, gpus), count, args.shard_rows, args.repeats)
            fixed = stage_run(base, weights, (actors, per_actor, gpus), actors, 1, args.repeats)["seconds"]
            rate, marginal = count / t["seconds"], count / max(t["seconds"] - fixed, 1e-9)
            rows.append(
                [
                    f"soft-label stage, {actors} actor(s) x {per_actor:g} CPU" + (f", {gpus:g} GPU" if gpus else ""),
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
        print("\nLimits (each part alone):\n")
        print(limits(quickstart_job({**base, "store": folder}).softlabel_spec(weights), min(count, 5_000)))
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
