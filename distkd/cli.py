"""The ``distkd`` command: run a job's stages on local Ray or a cluster, and build reports."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from distkd import config
from distkd.config import STAGES

STAGE_COMMANDS = {s.replace("_", "-"): s for s in STAGES}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distkd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("pipeline", help="run the job's stages in order, reusing what the store holds")
    run.add_argument("job", help="job YAML file")
    run.add_argument("--verbose", action="store_true", help="show Ray's own logs and warnings too")
    plan = sub.add_parser("plan", help="check the job and print each stage's output and whether it is reused")
    plan.add_argument("job", help="job YAML file")
    for name, stage in STAGE_COMMANDS.items():
        s = sub.add_parser(name, help=f"run the {stage} stage (its inputs must be committed)")
        s.add_argument("job", help="job YAML file")
        s.add_argument("--verbose", action="store_true", help="show Ray's own logs and warnings too")
    sweep = sub.add_parser("sweep", help="many students on the job's cached labels, concurrently (Ray Tune)")
    sweep.add_argument("job", help="job YAML file")
    sweep.add_argument(
        "--grid", nargs="+", required=True, metavar="KEY=V1,V2", help="a student.* or distill.* key and its values"
    )
    sweep.add_argument("--random", type=int, metavar="N", help="N distinct combinations drawn at random, not all")
    sweep.add_argument("--seed", type=int, default=0, help="of the --random draw (default: 0)")
    sweep.add_argument("--verbose", action="store_true", help="show Ray's own logs and warnings too")
    report = sub.add_parser("report", help="one report from the evaluated models of several runs")
    report.add_argument("reports", nargs="+", help="report folders written by the evaluate stage")
    report.add_argument("--out", default="report", help="folder or URI for the combined report (default: ./report)")
    submit = sub.add_parser("submit", help="submit the job to a Ray cluster as a Ray job (job submission API)")
    submit.add_argument("job", help="job YAML file")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    submit.add_argument("--stage", choices=sorted(STAGE_COMMANDS), help="run one stage instead of the pipeline")
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish, then print its logs")
    jobs = sub.add_parser("jobs", help="list Ray jobs, or show the status or logs of one, or stop it")
    jobs.add_argument("action", choices=["ls", "status", "logs", "stop"])
    jobs.add_argument("id", nargs="?", help="the submission id (status, logs, stop)")
    jobs.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    cache = sub.add_parser(
        "cache", help="list, show, verify or remove cached soft labels; gc: leftovers and unlisted shards"
    )
    cache.add_argument("action", choices=["ls", "show", "verify", "rm", "gc"])
    cache.add_argument("key", nargs="?", help="the entry's key (show, verify, rm)")
    cache.add_argument("--store", default="store", help="the store folder or URI (default: ./store)")
    cache.add_argument(
        "--older-than",
        type=float,
        default=3600,
        metavar="SECONDS",
        help="gc: only leftovers and unlisted shards at least this old, as younger ones may belong to a running "
        "writer (default: 3600)",
    )
    cache.add_argument("--dry-run", action="store_true", help="gc: list what would be removed and the bytes freed")
    store = sub.add_parser("store", help="what the store holds: teachers, soft labels, runs, reports")
    store.add_argument("action", choices=["ls"])
    store.add_argument("--store", default="store", help="the store folder or URI (default: ./store)")
    store.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    export = sub.add_parser("export", help="write a run's trained model as a program, checked against it")
    export.add_argument("run", help="the run folder (model.pt, run.json), e.g. <store>/runs/student-kd-<hash>")
    export.add_argument("--format", required=True, choices=["export", "torchscript", "onnx"])
    export.add_argument("--tolerance", type=float, default=1e-4, help="max absolute logit difference (1e-4)")
    export.add_argument("--code", action="append", default=[], help="the run's 'code:' paths (import: models)")
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


def cache_command(action: str, key: str | None, store: str, older_than: float, dry_run: bool = False) -> int:
    from distkd import storage
    from distkd.softlabels import inspect
    from distkd.softlabels.cache import CacheError

    try:
        store = storage.absolute(storage.validate(store))
    except storage.URIError as e:
        print(f"distkd: --store: {e}", file=sys.stderr)
        return 2
    try:
        if action == "ls":
            print(inspect.format_listing(inspect.listing(store)))
            print(inspect.format_leftovers(store), end="")
            return 0
        if action == "gc":
            print(inspect.collect_garbage(store, older_than, dry_run))
            return 0
    except CacheError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    if key is None:
        print(f"distkd: cache {action} needs a KEY (see: distkd cache ls --store {store})", file=sys.stderr)
        return 2
    try:
        print({"show": inspect.show, "verify": inspect.verify, "rm": inspect.remove}[action](store, key))
    except config.ConfigError as e:  # not a key, or no entry under it
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    except CacheError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    return 0


def submit_job(path: str, address: str, stage: str | None, follow: bool) -> int:
    try:
        job = config.load(path)
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    from ray.job_submission import JobStatus, JobSubmissionClient

    from distkd import submit

    job_id = submit.submit(job, address, stage or "pipeline")
    print(f"submitted {job_id} to {address} (distkd jobs logs {job_id} --address {address})", flush=True)
    if not follow:
        return 0
    client = JobSubmissionClient(address)
    status = submit.wait(client, job_id)
    print(client.get_job_logs(job_id), end="")
    print(f"{job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def jobs_command(action: str, job_id: str | None, address: str) -> int:
    from ray.job_submission import JobSubmissionClient

    from distkd import submit

    if action != "ls" and job_id is None:
        print(f"distkd: jobs {action} needs a submission ID (see: distkd jobs ls --address {address})", file=sys.stderr)
        return 2
    client = JobSubmissionClient(address)
    if action == "ls":
        print(submit.listing(client))
        return 0
    if action == "status":
        print(client.get_job_status(job_id))
    elif action == "logs":
        print(client.get_job_logs(job_id), end="")
    else:
        print(f"{job_id}: {'stop requested' if client.stop_job(job_id) else 'not running'}")
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


def export_command(args: argparse.Namespace) -> int:
    from distkd import export

    try:
        record = export.export(args.run, args.format, args.tolerance, tuple(args.code))
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    except export.ExportError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    print(f"{record['file']}: max abs difference {record['max_abs_difference']:.3g} on {record['checked_rows']} rows")
    return 0


def store_command(store: str, as_json: bool) -> int:
    from distkd import catalog, storage

    store = storage.absolute(store)
    if not storage.exists(store):
        print(f"distkd: no store at {store}", file=sys.stderr)
        return 2
    print(catalog.format_listing(catalog.listing(store), as_json))
    return 0


def run_job(command: str, path: str, verbose: bool = False) -> int:
    from distkd import address, console

    try:
        loaded = config.load(path)
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    address.loopback_only(loaded.ray_address)  # read as Ray is imported, which distkd.job does
    from distkd.job import Job

    try:
        job = Job.prepare(loaded, source=path)
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    from distkd import cluster, pipeline
    from distkd.checks import data_error
    from distkd.distill.fit import Diverged
    from distkd.resources import ResourceShortage
    from distkd.softlabels.cache import CacheError
    from distkd.specs import MissingOutput
    from distkd.storage import StorageError

    stages = job.config.stages if command in ("pipeline", "plan") else [STAGE_COMMANDS[command]]
    if command == "plan":
        print(format_plan(pipeline.plan(job, stages)))
        return 0
    ray_logs = console.RayLogs(verbose)
    try:
        cluster.connect(job.config.ray_address, job.config.code, **ray_logs.ray_init_options())
    except config.ConfigError as e:  # an address that is malformed or where nothing answers
        print(f"distkd: {path}: {e}", file=sys.stderr)
        return 2
    print(f"Ray's logs: {ray_logs.open()}" + ("" if verbose else " (--verbose shows them here)"), flush=True)
    console.timeline.clear()
    try:
        outputs = pipeline.run(job, stages)
    except (MissingOutput, CacheError, StorageError, Diverged) as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    except (ResourceShortage, config.ConfigError) as e:  # what the cluster cannot run, found once joined
        print(f"distkd: {path}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if (bad := data_error(e)) is None:
            raise
        print(f"distkd: {bad.message}", file=sys.stderr)  # a bad row found by a Ray task: its cause, not a traceback
        return 2
    if command == "pipeline" and "report" in outputs:
        print(console.summary(outputs["report"]))
        return 0
    for name, uri in outputs.items():
        print(f"{name:>10}: {uri}")
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    from distkd import address, console

    try:
        address.loopback_only(config.load(args.job).ray_address)  # read as Ray is imported, which sweep does
        from distkd import sweep

        axes = sweep.parse_axes(args.grid)
        base, jobs = sweep.plan(args.job, axes, args.random, args.seed)
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    from distkd import cluster
    from distkd.distill.fit import Diverged
    from distkd.softlabels.cache import CacheError
    from distkd.storage import StorageError

    ray_logs = console.RayLogs(args.verbose)
    try:
        cluster.connect(base.config.ray_address, base.config.code, **ray_logs.ray_init_options())
        print(f"Ray's logs: {ray_logs.open()}", flush=True)
        out, records = sweep.run(base, jobs, [a.key for a in axes])
    except config.ConfigError as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 2
    except (CacheError, StorageError, Diverged) as e:
        print(f"distkd: {e}", file=sys.stderr)
        return 1
    trained = sum(r["trained"] for r in records)
    print(f"{len(records)} trials: {trained} trained, {len(records) - trained} reused")
    print(f"sweep report: {out}/report.md")
    return 0


def format_plan(steps: list) -> str:
    width = max(len(s.name) for s in steps)
    indent = " " * (width + 24)  # under the output
    return "\n".join(
        f"{s.stage:<13} {s.name:<{width}}  {s.action:<7}  {s.output}" + (f"\n{indent}{s.detail}" if s.detail else "")
        for s in steps
    )


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


def run() -> None:
    """The ``distkd`` command's process: ends as soon as the command is done. Once Ray is shut down and the
    log is flushed, the interpreter's own teardown (torch's and Ray's modules, about 1.6 s on 2 cores:
    benchmarks/RESULTS.md, "Issue 22") has nothing left to do for anyone, so it is skipped."""
    code = main()
    if "ray" in sys.modules:
        import ray

        ray.shutdown()  # what Ray's exit hook does: stop the processes of a local instance
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "report":
        return combine_reports(args.reports, args.out)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "cache":
        return cache_command(args.action, args.key, args.store, args.older_than, args.dry_run)
    if args.command == "store":
        return store_command(args.store, args.json)
    if args.command == "submit":
        return submit_job(args.job, args.address, args.stage, args.wait)
    if args.command == "export":
        return export_command(args)
    if args.command == "sweep":
        return sweep_command(args)
    if args.command == "jobs":
        return jobs_command(args.action, args.id, args.address)
    return run_job(args.command, args.job, getattr(args, "verbose", False))
