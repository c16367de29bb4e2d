"""Cost per student run: epoch time of plain training, distillation from cached labels (dense, top-k, views)
and online distillation with the teacher in the loop, as ratios against plain training.

One harness for every variant: distkd's per-batch code (``shown``, ``objective``, the schedule) in one
process over tensors in memory (``common.plain_training``), the cached variants reading the labels of real
committed cache entries, the online one running the teacher on each batch. Then distkd's own stage 2 (Ray
Train) for the first teacher's plain and cached runs, epoch times from its ``history.json``. Every epoch
includes the per-epoch validation. Teachers are randomly initialised with trained-like logit spread: the
cost does not depend on what they learned. A cached label's cost does not depend on the teacher that wrote
it, only on its format, so teachers after the first get dense labels only.

    python benchmarks/student_cost.py --rows 10000 --epochs 3 --teachers resnet9-w16,resnet18
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from common import (
    TEACHERS,
    cached_columns,
    decoded,
    header,
    loaded,
    merged,
    plain_training,
    quickstart_job,
    scratch_folder,
    start_ray,
    synthetic_teacher,
    table,
)

from distkd import storage
from distkd.distill.stage import train_run
from distkd.softlabels.stage import generate

FORMATS = {  # name -> softlabels settings
    "dense": {},
    "topk": {"format": "topk", "top_k": 3},
    "views": {"views": 4},
}


def ray_train_epoch(run) -> float:
    """Median epoch seconds of distkd's stage 2 on ``run`` (trained into a fresh store)."""
    train_run(run, "distill", compute=True)
    return statistics.median(h["seconds"] for h in storage.read_json(storage.join(run.uri, "history.json")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--val-rows", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--teachers", default="resnet9-w16,resnet18", help=f"of {', '.join(TEACHERS)}")
    p.add_argument("--formats", default="dense,topk,views", help=f"cached formats for the first teacher: {FORMATS}")
    p.add_argument("--ray-train", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    header("Cost per student run: plain vs cached KD vs online KD (LeNet-5 student)")
    start_ray()
    for n, name in enumerate(args.teachers.split(",")):
        model, kwargs = TEACHERS[name]
        folder = scratch_folder("student-cost")
        base = {
            "store": folder,
            "data": {"limit": args.rows, "val_limit": args.val_rows},
            "teacher": {"name": model, "kwargs": kwargs},
            "student": {"train": {"epochs": args.epochs}},
        }
        job = quickstart_job(base)
        ids, images, labels = decoded(job.train)
        _, val_images, val_labels = decoded(job.val)
        base["teacher"]["weights"] = synthetic_teacher(job.teacher, job.inputs.normalize(val_images[:256]), 3.0, folder)
        val = (val_images, val_labels)

        scratch = quickstart_job(base).scratch_run()
        plain = scratch
        seconds = {"plain": plain_training(plain, {"image": images}, labels, val=val).epoch_seconds}
        runs = {"plain": scratch}
        for fmt in args.formats.split(",") if n == 0 else ["dense"]:
            fjob = quickstart_job(merged(base, {"softlabels": FORMATS[fmt]}))
            labels_spec = fjob.softlabel_spec(base["teacher"]["weights"])
            entry = generate(labels_spec)
            runs[f"cached {fmt}"] = fjob.distilled_run(labels_spec)
            spec = runs[f"cached {fmt}"]
            seconds[f"cached {fmt}"] = plain_training(
                spec, {"image": images}, labels, cached_columns(entry, ids), val=val
            ).epoch_seconds
        online = dataclasses.replace(runs["cached dense"], views=0)
        teacher = loaded(job.teacher, base["teacher"]["weights"])
        seconds["online"] = plain_training(online, {"image": images}, labels, teacher=teacher, val=val).epoch_seconds

        ray_seconds = {}
        if args.ray_train and n == 0:
            ray_seconds = {variant: ray_train_epoch(run) for variant, run in runs.items()}
        median = {variant: statistics.median(s) for variant, s in seconds.items()}
        rows = [
            [
                variant,
                median[variant],
                median[variant] / median["plain"],
                ray_seconds.get(variant, "-"),
                f"{ray_seconds[variant] / ray_seconds['plain']:.2f}" if variant in ray_seconds else "-",
                f"{ray_seconds[variant] / median[variant]:.2f}" if variant in ray_seconds else "-",
            ]
            for variant in median
        ]
        print(
            f"### {name} ({model} {kwargs}) -> lenet5, {args.rows:,} rows, batch {plain.train.batch_size}, "
            f"{args.epochs} epochs (median), validation on {args.val_rows:,} rows each epoch\n"
        )
        print(
            table(
                [
                    "variant",
                    "plain loop: epoch s",
                    "vs plain",
                    "distkd stage 2 (Ray Train): epoch s",
                    "vs plain",
                    "Ray Train / plain loop",
                ],
                rows,
            )
        )
        print(f"\nonline / cached dense (plain loop): {median['online'] / median['cached dense']:.2f}x\n", flush=True)


if __name__ == "__main__":
    main()
