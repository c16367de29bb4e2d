"""Soft-label stage throughput writing to S3 and to a local folder, side by side in one run.

Runs the softlabels stage twice on the same rows and teacher, once into a fresh local store and once
into a fresh S3 store, and prints each run's rows/s (the teacher's, from the manifest, and the whole
stage's including the commit, which reads every shard back) and the ratio S3 / local. Without
AWS_ENDPOINT_URL in the environment it starts a SeaweedFS server on 127.0.0.1 (``tests/seaweedfs.py``)
and uses it; with it, the bucket named by ``--bucket`` on that endpoint and this process's credentials.

    python benchmarks/s3_throughput.py --rows 10000
    python benchmarks/s3_throughput.py --rows 10000 --teacher store/runs/quickstart-teacher-<hash>/model.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.seaweedfs

from distkd import (  # noqa: E402
    cluster,
    config,
    labelstore,  # noqa: E402
    storage,
)
from distkd.job import Job  # noqa: E402
from distkd.models import sources  # noqa: E402
from distkd.softlabels.stage import generate  # noqa: E402
from tests.seaweedfs import seaweedfs  # noqa: E402


def run(base: dict, store: str, teacher: str) -> dict[str, float]:
    job = Job.prepare(config.parse({**base, "store": store}, store))
    started = time.perf_counter()
    manifest = labelstore.manifest(generate(job.softlabel_spec(teacher)))
    seconds = time.perf_counter() - started
    return {"teacher rows/s": manifest.rows_per_second, "stage rows/s": manifest.rows / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--shard-rows", type=int, default=500)
    p.add_argument("--teacher", help="teacher weights (default: an untrained ResNet-9 width 16, as the quick start's)")
    p.add_argument("--bucket", default="distkd-bench", help="with AWS_ENDPOINT_URL set: an existing bucket")
    args = p.parse_args()
    base = yaml.safe_load((ROOT / "jobs" / "quickstart.yaml").read_text())
    base["data"]["uri"] = str((ROOT / base["data"]["uri"]).resolve())
    base["data"]["limit"] = args.rows
    base["softlabels"]["shard_rows"] = args.shard_rows
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distkd-s3-bench-")))
        own_server = "AWS_ENDPOINT_URL" not in os.environ
        if own_server:
            server = stack.enter_context(seaweedfs(scratch / "seaweedfs", (args.bucket,)))
            os.environ.update(server.env())  # before Ray starts: local workers inherit it
        teacher = args.teacher
        if teacher is None:
            torch.manual_seed(0)
            teacher = str(scratch / "teacher.pt")
            torch.save(sources.build("resnet9", 10, 3, 32, **base["teacher"]["kwargs"]).state_dict(), Path(teacher))
        base["teacher"]["weights"] = teacher
        cluster.connect(None)
        s3_store = f"s3://{args.bucket}/distkd-bench-{uuid.uuid4().hex[:8]}"
        figures = {"local folder": run(base, str(scratch / "store"), teacher), "S3": run(base, s3_store, teacher)}
        if not own_server:
            storage.remove(s3_store)
    print(f"\n{args.rows} rows in shards of {args.shard_rows}, teacher resnet9 {base['teacher']['kwargs']}, CPU")
    print("| store | teacher rows/s | stage rows/s (with commit) |\n|---|---:|---:|")
    for name, f in figures.items():
        print(f"| {name} | {f['teacher rows/s']:.0f} | {f['stage rows/s']:.0f} |")
    ratio = {k: figures["S3"][k] / figures["local folder"][k] for k in figures["S3"]}
    print(f"| ratio S3 / local | {ratio['teacher rows/s']:.2f} | {ratio['stage rows/s']:.2f} |")


if __name__ == "__main__":
    main()
