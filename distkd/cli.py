"""The ``distkd`` command: run a job's stages on local Ray or a cluster."""

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
    for name, stage in STAGE_COMMANDS.items():
        s = sub.add_parser(name, help=f"run the {stage} stage (its inputs must be committed)")
        s.add_argument("job", help="job YAML file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from distkd.job import Job, MissingOutput

    try:
        job = Job.prepare(config.load(args.job), source=args.job)
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    from distkd import pipeline

    stages = job.config.stages if args.command == "pipeline" else [STAGE_COMMANDS[args.command]]
    try:
        outputs = pipeline.run(job, stages)
    except MissingOutput as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    for name, uri in outputs.items():
        print(f"{name:>10}: {uri}")
    return 0
