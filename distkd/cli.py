"""The ``distkd`` command: run a job's stages on local Ray or a cluster, and build reports."""

from __future__ import annotations

import argparse
import sys

from distkd import config
from distkd.config import STAGES

STAGE_COMMANDS = {s.replace("_", "-"): s for s in STAGES}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distkd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("pipeline", help="run the job's stages in order, reusing what the store holds")
    run.add_argument("job", help="job YAML file")
    plan = sub.add_parser("plan", help="check the job and print each stage's output and whether it is reused")
    plan.add_argument("job", help="job YAML file")
    for name, stage in STAGE_COMMANDS.items():
        s = sub.add_parser(name, help=f"run the {stage} stage (its inputs must be committed)")
        s.add_argument("job", help="job YAML file")
    report = sub.add_parser("report", help="one report from the evaluated models of several runs")
    report.add_argument("reports", nargs="+", help="report folders written by the evaluate stage")
    report.add_argument("--out", default="report", help="folder or URI for the combined report (default: ./report)")
    cache = sub.add_parser("cache", help="list, show, verify or remove cached soft labels")
    cache.add_argument("action", choices=["ls", "show", "verify", "rm"])
    cache.add_argument("key", nargs="?", help="the entry's key (show, verify, rm)")
    cache.add_argument("--store", default="store", help="the store folder or URI (default: ./store)")
    prepare = sub.add_parser("prepare", help="pack a dataset as the Parquet shards that jobs read")
    source = prepare.add_subparsers(dest="source", required=True)
    folder = source.add_parser("image-folder", help="ROOT/<class name>/<image file> as one split")
    folder.add_argument("root")
    folder.add_argument("out", help="folder or URI for the shards")
    folder.add_argument("--split", required=True)
    cifar = source.add_parser("cifar10", help="torchvision's CIFAR-10 (downloaded into ROOT) as train and test")
    cifar.add_argument("root")
    cifar.add_argument("out", help="folder or URI for the shards")
    cifar.add_argument("--no-download", dest="download", action="store_false")
    return p


def cache_command(action: str, key: str | None, store: str) -> int:
    from distkd import storage
    from distkd.softlabels import inspect
    from distkd.softlabels.cache import CacheError

    store = storage.absolute(store)
    if action == "ls":
        print(inspect.format_listing(inspect.listing(store)))
        return 0
    if key is None:
        print(f"distkd: cache {action} needs a KEY (see: distkd cache ls --store {store})", file=sys.stderr)
        return 2
    try:
        print({"show": inspect.show, "verify": inspect.verify, "rm": inspect.remove}[action](store, key))
    except CacheError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    return 0


def prepare(args: argparse.Namespace) -> int:
    from distkd import storage
    from distkd.data import prepare as packing

    out = storage.absolute(args.out)
    try:
        if args.source == "image-folder":
            shards = packing.from_image_folder(args.root, out, args.split)
        else:
            shards = packing.from_torchvision_cifar10(args.root, out, download=args.download)
    except (OSError, ValueError) as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(shards)} shards to {out}")
    return 0


def run_job(command: str, path: str) -> int:
    from distkd.checks import data_error
    from distkd.job import Job

    try:
        job = Job.prepare(config.load(path), source=path)
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    from distkd import pipeline
    from distkd.softlabels.cache import CacheError
    from distkd.specs import MissingOutput

    stages = job.config.stages if command in ("pipeline", "plan") else [STAGE_COMMANDS[command]]
    if command == "plan":
        print(format_plan(pipeline.plan(job, stages)))
        return 0
    try:
        outputs = pipeline.run(job, stages)
    except (MissingOutput, CacheError) as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if (bad := data_error(e)) is None:
            raise
        print(f"distkd: {bad.message}", file=sys.stderr)  # a bad row found by a Ray task: its cause, not a traceback
        return 2
    for name, uri in outputs.items():
        print(f"{name:>10}: {uri}")
    return 0


def format_plan(steps: list) -> str:
    width = max(len(s.name) for s in steps)
    return "\n".join(f"{s.stage:<13} {s.name:<{width}}  {s.action:<7}  {s.output}" for s in steps)


def combine_reports(folders: list[str], out: str) -> int:
    from distkd import storage
    from distkd.evaluate.stage import combine

    missing = [f for f in folders if not storage.exists(storage.join(storage.absolute(f), "metrics.json"))]
    if missing:
        print(
            f"distkd: no metrics.json in {', '.join(missing)} (expected report folders of the evaluate stage)",
            file=sys.stderr,
        )
        return 2
    out = combine([storage.absolute(f) for f in folders], storage.absolute(out))
    print(f"report: {storage.join(out, 'report.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "report":
        return combine_reports(args.reports, args.out)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "cache":
        return cache_command(args.action, args.key, args.store)
    return run_job(args.command, args.job)
