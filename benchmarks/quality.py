"""Quality: test accuracy of the quick start's student (LeNet-5) trained from scratch, by online KD and by
distillation from cached labels (clean, with recorded views, top-k), mean and spread over seeds.

The teacher (the quick start's ResNet-9, trained once by stage 0) and every cached variant run through
distkd's pipeline (stages 0-2) into one store, so a rerun reuses what exists; online KD (the teacher run
on exactly the augmented batch the student sees, the reference cached labels are measured against) runs
distkd's per-batch code in one process (``common.plain_training``). Seeds change the student's
initialisation and data order, not the teacher. Every model's accuracy is computed the same way here, on
the test split's rows in use (``--rows`` takes the first N rows of every split).

    python benchmarks/quality.py                                # the quick start's sizes: hours on 2 cores
    python benchmarks/quality.py --rows 10000 --epochs 10 --teacher-epochs 8
    python benchmarks/quality.py --store STORE --variant "cached KD, clean labels" --variant "DIST, warm-up 2"
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from common import accuracy, decoded, header, loaded, merged, plain_training, quickstart_job, table

from distkd import pipeline

CACHED = {  # variant -> job changes; each variant's pipeline run also trains (or reuses) its scratch baseline
    "cached KD, clean labels": {},
    "cached KD, 8 recorded views": {"softlabels": {"views": 8}},
    "cached KD, top-3": {"softlabels": {"format": "topk", "top_k": 3}},
    # The methods of the loss registry on the clean labels, their KD term warmed up over 2 epochs (DKD at its
    # paper's weights collapsed to chance without it here, and with it)
    "DKD, warm-up 2": {"distill": {"loss": {"name": "dkd"}, "warmup_epochs": 2}},
    "DKD non-target weight 1, warm-up 2": {
        "distill": {"loss": {"name": "dkd", "kwargs": {"non_target_weight": 1}}, "warmup_epochs": 2}
    },
    "DIST, warm-up 2": {"distill": {"loss": {"name": "dist"}, "warmup_epochs": 2}},
    "Hinton, logit standardisation": {"distill": {"loss": {"standardize": True}}},
}
SCRATCH = "student from scratch"
ONLINE = "online KD, student augmented"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, help="first N rows of each split (default: all)")
    p.add_argument("--epochs", type=int, help="student epochs (default: the quick start's)")
    p.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the quick start's)")
    p.add_argument("--alpha", type=float, help="weight of the KD term (default: the quick start's)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--variant", action="append", choices=[*CACHED, ONLINE], help="run this one (repeatable; default: all)"
    )
    p.add_argument("--store", default="/tmp/distkd-bench/quality", help="kept between runs: reruns reuse it")
    args = p.parse_args()
    header("Quality: LeNet-5 students of the quick start's teacher")
    base: dict = {"store": args.store, "data": {}, "teacher": {"train": {}}, "student": {"train": {}}}
    if args.rows:
        base["data"]["limit"] = args.rows
    if args.epochs:
        base["student"]["train"]["epochs"] = args.epochs
    if args.alpha is not None:
        base["distill"] = {"alpha": args.alpha}
    if args.teacher_epochs:
        base["teacher"]["train"]["epochs"] = args.teacher_epochs
    wanted = set(args.variant or [*CACHED, ONLINE])  # names hold commas: one option each
    job = quickstart_job(base)
    _, test_images, test_labels = decoded(job.evaluated)
    _, images, labels = decoded(job.train)
    evaluated = job.scratch_run()  # its normalisation is every model's

    def tested(model, weights: str) -> float:
        return accuracy(loaded(model, weights), test_images, test_labels, evaluated)

    results: dict[str, list[float]] = {}
    teacher = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        seeded = merged(base, {"student": {"train": {"seed": seed}}})
        for variant, changes in CACHED.items():
            if variant not in wanted:
                continue
            vjob = quickstart_job(merged(seeded, changes), name="quality")
            out = pipeline.run(vjob, ["train_teacher", "softlabels", "distill"])
            teacher = out["teacher"]
            results.setdefault(variant, []).append(tested(vjob.student, out["distilled"]))
            if len(results.get(SCRATCH, [])) < len(results[variant]):
                results.setdefault(SCRATCH, []).append(tested(vjob.student, out["scratch"]))
        if ONLINE in wanted:
            ojob = quickstart_job(seeded, name="quality")
            teacher = pipeline.run(ojob, ["train_teacher"])["teacher"]
            spec = ojob.distilled_run(ojob.softlabel_spec(teacher))  # alpha, T; no views
            spec = dataclasses.replace(spec, train=spec.train.model_copy(update={"augment": True}))
            student = plain_training(spec, {"image": images}, labels, teacher=loaded(ojob.teacher, teacher)).model
            results.setdefault(ONLINE, []).append(accuracy(student, test_images, test_labels, spec))
        print(f"seed {seed} done: { ({k: f'{v[-1]:.2%}' for k, v in results.items()}) }", flush=True)

    scratch = statistics.mean(results[SCRATCH]) if SCRATCH in results else None
    rows = [
        [
            f"teacher ({job.teacher.name} {job.teacher.kwargs}, one run)",
            f"{tested(job.teacher, teacher):.2%}",
            "-",
            "-",
            "-",
        ]
    ]
    for variant, accs in results.items():
        mean = statistics.mean(accs)
        rows.append(
            [
                variant,
                f"{mean:.2%}",
                f"{statistics.stdev(accs):.2%}" if len(accs) > 1 else "-",
                " / ".join(f"{a:.2%}" for a in accs),
                f"{mean - scratch:+.2%}" if scratch is not None else "-",
            ]
        )
    c = job.config
    print(
        f"\n{job.train.num_rows():,} training rows, {job.evaluated.num_rows():,} test rows; teacher "
        f"{c.teacher.train.epochs} epochs, students {c.student.train.epochs} epochs, alpha {c.distill.alpha}, "
        f"T {c.distill.temperature}; seeds {args.seeds}\n"
    )
    print(table(["model", "test accuracy (mean)", "std", "per seed", "vs scratch (no augmentation)"], rows), flush=True)


if __name__ == "__main__":
    main()
