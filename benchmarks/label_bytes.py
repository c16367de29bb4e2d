"""Bytes per sample of each soft-label format, on the first rows of the training split.

Runs the softlabels stage once per format with the given teacher weights and prints the size
of each committed entry (Parquet, zstd) per row, next to dense float16.

    python benchmarks/label_bytes.py --teacher store/runs/teacher-<hash>/model.pt --rows 10000
"""

from __future__ import annotations

import argparse

import yaml

from distkd import config, pipeline
from distkd.job import Job
from distkd.softlabels import cache
from distkd.softlabels.stage import generate

FORMATS = {
    "dense float16": {},
    "dense float32": {"dtype": "float32"},
    "top-3 float16": {"format": "topk", "top_k": 3},
    "top-1 float16": {"format": "topk", "top_k": 1},
    "dense float16, 8 views": {"views": 8},
    "top-3 float16, 8 views": {"format": "topk", "top_k": 3, "views": 8},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="weights of the quick start's teacher (model.pt)")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--store", default="/tmp/distkd-bench-store")
    args = p.parse_args()
    base = yaml.safe_load(open("jobs/quickstart.yaml"))
    base["store"], base["data"]["limit"] = args.store, args.rows
    base["teacher"]["weights"] = args.teacher
    sizes = {}
    for name, softlabels in FORMATS.items():
        job = Job.prepare(config.parse({**base, "softlabels": {**base["softlabels"], **softlabels}}, name))
        pipeline.connect(None)
        manifest = cache.manifest(generate(job.softlabel_spec(args.teacher)))
        sizes[name] = manifest.bytes / manifest.rows
    print(f"\n{args.rows} rows, 10 classes, Parquet + zstd (id column included)")
    print("| format | bytes/sample | vs dense float16 |\n|---|---:|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size:.1f} | {size / sizes['dense float16']:.2f} |")


if __name__ == "__main__":
    main()
