"""Storage: bytes per sample and per view of each soft-label format, at 10 and 1000 classes, against dense float32.

Writes each format's shards for the first ``--rows`` training rows with the soft-label stage's own
writer (its actor class, run in this process: the bytes are the stage's, without an actor pool to start
per format) and divides their bytes (zstd Parquet, the ``id`` column and, with views, the views'
parameters included) by the rows. 10 classes: the quick start's teacher (``--teacher`` weights if given, else a randomly
initialised one with trained-like logit spread); 1000 classes: the same network with a synthetic
1000-class head (random, scaled to the same spread), as a stand-in for an ImageNet-size label.

    python benchmarks/label_bytes.py --rows 10000 --views 8 --teacher store/runs/teacher-<hash>/model.pt
"""

from __future__ import annotations

import argparse

from common import decoded, header, merged, quickstart_job, scratch_folder, synthetic_teacher, table

from distkd.softlabels.stage import writer_arguments
from distkd.softlabels.writer import ShardWriter
from distkd.specs import SoftLabelSpec


def stored_bytes_per_row(spec: SoftLabelSpec) -> float:
    """Bytes per row of the spec's shards as the stage's teacher actors write them."""
    units = spec.data.units(spec.shard_rows)
    writer = ShardWriter(**writer_arguments(spec, units))
    records = [writer.write(unit) for unit in units]
    return sum(r["bytes"] for r in records) / sum(r["rows"] for r in records)


def formats(views: int, top: int) -> dict[str, dict]:
    flat = {
        "dense float32": {"dtype": "float32"},
        "dense float16": {},
        f"top-{top} float16": {"format": "topk", "top_k": top},
        "top-1 float16": {"format": "topk", "top_k": 1},
    }
    with_views = {f"{name}, {views} views": {**s, "views": views} for name, s in flat.items() if "16" in name}
    return {**flat, **with_views}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--classes", default="10,1000")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--teacher", help="trained weights of the quick start's teacher (10 classes)")
    args = p.parse_args()
    header("Storage: bytes per soft label")
    for classes in [int(c) for c in args.classes.split(",")]:
        folder = scratch_folder("label-bytes")
        names = {} if classes == 10 else {"class_names": None}  # the quick start names CIFAR-10's classes
        base = {"store": folder, "data": {"limit": args.rows, "num_classes": classes, **names}}
        job = quickstart_job(base)
        trained = args.teacher and classes == 10
        if trained:
            weights = args.teacher
        else:
            _, images, _ = decoded(job.val)
            weights = synthetic_teacher(job.teacher, job.inputs.normalize(images[:256]), 3.0, folder)
        sizes = {}
        for name, settings in formats(args.views, args.top_k).items():
            spec = quickstart_job(merged(base, {"softlabels": settings})).softlabel_spec(weights)
            sizes[name] = (stored_bytes_per_row(spec), max(spec.views, 1))
        dense32 = sizes["dense float32"][0]
        teacher = "trained teacher" if trained else "randomly initialised teacher, logit spread 3"
        print(f"### {classes} classes ({teacher}), {args.rows:,} rows, zstd Parquet, `id` column included\n")
        print(
            table(
                ["format", "bytes/sample", "bytes/view", "vs dense float32 (per sample)"],
                [[name, size, size / views, f"{size / dense32:.3f}"] for name, (size, views) in sizes.items()],
            )
        )
        print(f"\n(raw dense float32 logits: {4 * classes} bytes/sample)\n", flush=True)


if __name__ == "__main__":
    main()
