"""Student accuracy for soft-label variants on the quick start's teacher and student.

Each variant is the quick start job with some keys changed; all share the quick start's store,
so the teacher (and every soft-label entry and run already computed) is reused. Prints test
accuracy (full test split, from the evaluate stage) of the distilled and the scratch student.

    python benchmarks/kd_variants.py            # all variants
    python benchmarks/kd_variants.py views8     # some
"""

from __future__ import annotations

import copy
import sys

import yaml

from distkd import config, pipeline, storage
from distkd.job import Job

VARIANTS: dict[str, dict] = {
    "clean": {},  # the quick start as it is: clean-image labels, no augmentation
    "clean-alpha0.5": {"distill": {"alpha": 0.5}},
    "views8": {"softlabels": {"views": 8}},
    "views8-alpha0.5": {"softlabels": {"views": 8}, "distill": {"alpha": 0.5}},
}


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def main(names: list[str]) -> None:
    base = yaml.safe_load(open("jobs/quickstart.yaml"))
    rows = []
    for name in names or VARIANTS:
        job = Job.prepare(config.parse(merged(base, VARIANTS[name]), f"variant {name}"))
        report = pipeline.run(job)["report"]
        models = {m["role"]: m["metrics"] for m in storage.read_json(storage.join(report, "metrics.json"))["models"]}
        rows.append(
            (
                name,
                models["teacher"]["accuracy"],
                models["distilled"]["accuracy"],
                models["scratch"]["accuracy"],
                models["distilled"].get("teacher_agreement", float("nan")),
            )
        )
    print("\n| variant | teacher | distilled | scratch | distilled - scratch | agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t, d, s, a in rows:
        print(f"| {name} | {t:.2%} | {d:.2%} | {s:.2%} | {d - s:+.2%} | {a:.2%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
