"""The ``distkd`` command: run a job's stages on local Ray or a cluster, and build reports.

Each command is a function of its parsed arguments (``set_defaults(func=...)``) that returns its exit code or raises;
``main`` reports what it raises as one line, ``distkd: <message>``, with the exit code ``EXIT_CODES`` gives its type.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from distkd import config
from distkd.config import STAGES, ConfigError

STAGE_COMMANDS = {s.replace("_", "-"): s for s in STAGES}

# What a command reports as one line, by the error's type, and its exit code: 2 for input refused before any work
# (or a bad row that a Ray task found), 1 for a failure during the work. Any other error is a bug: its traceback is
# shown. Types are named, not imported, so that a command imports only what it uses (an error of a module never
# imported cannot have been raised); tests/unit/test_command_refusals.py checks that each name is an error type.
EXIT_CODES: dict[tuple[str, str], int] = {
    ("distkd.config", "ConfigError"): 2,
    ("distkd.storage.uris", "URIError"): 2,
    ("distkd.data.errors", "DataError"): 2,
    ("distkd.resources", "ResourceShortage"): 2,
    ("distkd.specs", "MissingOutput"): 1,
    ("distkd.labelstore", "CacheError"): 1,
    ("distkd.storage.uris", "StorageError"): 1,
    ("distkd.distill.fit", "Diverged"): 1,
    ("distkd.export", "ExportError"): 1,
}
DATA_ERROR = ("distkd.data.errors", "DataError")


def reported_as(error: BaseException) -> tuple[str, str] | None:
    """The entry of ``EXIT_CODES`` that ``error`` is an instance of (its own type first), if any."""
    return next((key for c in type(error).__mro__ if (key := (c.__module__, c.__qualname__)) in EXIT_CODES), None)


def data_error(error: BaseException) -> BaseException | None:
    """The ``DataError`` behind ``error``: raised here, or in a Ray task (``RayTaskError.cause``) or a Ray Train
    worker (``worker_failures``) that wrapped it."""
    pending, seen = [error], set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # a RayTaskError(DataError) is a DataError too: prefer what it wraps
        if reported_as(e) == DATA_ERROR:
            return inner if isinstance(inner, BaseException) and reported_as(inner) == DATA_ERROR else e
        wrapped = [inner, e.__cause__, e.__context__, getattr(e, "controller_failure", None)]
        wrapped += list(getattr(e, "worker_failures", {}).values())
        pending += [w for w in wrapped if isinstance(w, BaseException)]
    return None


def cause(error: BaseException) -> BaseException:
    """What to report of ``error``: what the Ray task whose failure it is raised (``RayTaskError.cause``: the
    wrapper's own message holds the task's traceback); for an error the table does not name, the bad row behind it
    (``data_error``: a Ray Train run that failed on one); else ``error`` itself."""
    if reported_as(error) is None and (bad := data_error(error)) is not None:
        return bad
    while isinstance(getattr(error, "cause", None), BaseException):
        error = error.cause
    return error


def message(error: BaseException) -> str:
    """The error's message as written (a ``DataError`` keeps it apart from the retry advice Ray Data appends), with
    the credentials of any URI in it redacted."""
    from distkd.storage import redact

    text = error.message if isinstance(getattr(error, "message", None), str) else str(error)
    return redact(text)


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments); returns its exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and what is wrong (2), or the help (0)
        return int(e.code or 0)
    try:
        return args.func(args)
    except Exception as e:
        reported = cause(e)
        key = reported_as(reported)
        if key is None:
            raise
        print(f"distkd: {message(reported)}", file=sys.stderr)
        return EXIT_CODES[key]


def run() -> None:
    """The ``distkd`` command's process: ends as soon as the command is done. Once Ray is shut down and the
    log is flushed, the interpreter's own teardown (torch's and Ray's modules, about 1.6 s on 2 cores:
    benchmarks/RESULTS.md, "Issue 22") has nothing left to do for anyone, so it is skipped."""
    code = main()
    if "ray" in sys.modules:
        from distkd import console

        console.shutdown_ray()  # what Ray's exit hook does: stop the processes of a local instance
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- arguments ----------------------------------------------------------------------------------------


def seconds(text: str) -> float:
    """A number of seconds >= 0 (argparse type): ``nan``, ``inf`` and negative numbers are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def location(argument: str, uri: str) -> str:
    """A folder or URI a command was given, checked as every URI is (``storage.validate``: malformed, credentials
    in it) and made absolute; a refusal names the argument."""
    from distkd import storage

    try:
        return storage.absolute(storage.validate(uri))
    except storage.URIError as e:
        raise ConfigError(f"{argument}: {e}") from None


def store_folder(argument: str, uri: str) -> str:
    """The store a command reads or cleans (``location``), refused unless it is one (``catalog.check_store``)."""
    from distkd import catalog

    return catalog.check_store(location(argument, uri), argument)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distkd", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true", help="show Ray's own logs and warnings too")
    run = sub.add_parser(
        "pipeline", parents=[verbose], help="run the job's stages in order, reusing what the store holds"
    )
    run.add_argument("job", help="job YAML file")
    run.set_defaults(func=run_job)
    plan = sub.add_parser("plan", help="check the job and print each stage's output and whether it is reused")
    plan.add_argument("job", help="job YAML file")
    plan.set_defaults(func=run_job, verbose=False)
    for name, stage in STAGE_COMMANDS.items():
        s = sub.add_parser(name, parents=[verbose], help=f"run the {stage} stage (its inputs must be committed)")
        s.add_argument("job", help="job YAML file")
        s.set_defaults(func=run_job)
    sweep = sub.add_parser(
        "sweep", parents=[verbose], help="many students on the job's cached labels, concurrently (Ray Tune)"
    )
    sweep.add_argument("job", help="job YAML file")
    sweep.add_argument(
        "--grid", nargs="+", required=True, metavar="KEY=V1,V2", help="a student.* or distill.* key and its values"
    )
    sweep.add_argument("--random", type=int, metavar="N", help="N distinct combinations drawn at random, not all")
    sweep.add_argument("--seed", type=int, default=0, help="of the --random draw (default: 0)")
    sweep.set_defaults(func=sweep_command)
    report = sub.add_parser("report", help="one report from the evaluated models of several runs")
    report.add_argument("reports", nargs="+", help="report folders written by the evaluate stage")
    report.add_argument("--out", default="report", help="folder or URI for the combined report (default: ./report)")
    report.set_defaults(func=combine_reports)
    submit = sub.add_parser("submit", help="submit the job to a Ray cluster as a Ray job (job submission API)")
    submit.add_argument("job", help="job YAML file")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    submit.add_argument("--stage", choices=sorted(STAGE_COMMANDS), help="run one stage instead of the pipeline")
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish, then print its logs")
    submit.set_defaults(func=submit_job)
    jobs = sub.add_parser("jobs", help="list Ray jobs, or show the status or logs of one, or stop it")
    jobs.add_argument("action", choices=sorted(JOB_ACTIONS))
    jobs.add_argument("id", nargs="?", help="the submission id (status, logs, stop)")
    jobs.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    jobs.set_defaults(func=jobs_command)
    in_store = argparse.ArgumentParser(add_help=False)
    in_store.add_argument("--store", default="store", help="the store folder or URI (default: ./store)")
    cache = sub.add_parser(
        "cache", help="list, show, verify or remove cached soft labels; gc: leftovers and unlisted shards"
    ).add_subparsers(dest="action", required=True)
    cache.add_parser("ls", parents=[in_store], help="the entries, and writers' leftovers").set_defaults(
        func=cache_listing
    )
    for action, (what, _) in CACHE_ENTRY_ACTIONS.items():
        entry = cache.add_parser(action, parents=[in_store], help=what)
        entry.add_argument("key", help="the entry's key (see: distkd cache ls)")
        entry.set_defaults(func=cache_entry)
    gc = cache.add_parser("gc", parents=[in_store], help="remove writers' leftovers and shards no entry lists")
    gc.add_argument(
        "--older-than",
        type=seconds,
        default=3600,
        metavar="SECONDS",
        help="only leftovers and unlisted shards at least this old, as younger ones may belong to a running "
        "writer (default: 3600)",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed and the bytes freed")
    gc.set_defaults(func=cache_gc)
    store = sub.add_parser("store", help="what the store holds: teachers, soft labels, runs, reports")
    store.add_argument("action", choices=["ls"])
    store.add_argument("--store", default="store", help="the store folder or URI (default: ./store)")
    store.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    store.set_defaults(func=store_listing)
    export = sub.add_parser("export", help="write a run's trained model as a program, checked against it")
    export.add_argument("run", help="the run folder (model.pt, run.json), e.g. <store>/runs/student-kd-<hash>")
    export.add_argument("--format", required=True, choices=["export", "torchscript", "onnx"])
    export.add_argument("--tolerance", type=float, default=1e-4, help="max absolute logit difference (1e-4)")
    export.add_argument("--code", action="append", default=[], help="the run's 'code:' paths (import: models)")
    export.set_defaults(func=export_command)
    prepare = sub.add_parser("prepare", help="pack a dataset as the Parquet shards that jobs read")
    source = prepare.add_subparsers(dest="source", required=True)
    folder = source.add_parser("image-folder", help="ROOT/<class name>/<image file> as one split")
    folder.add_argument("root")
    folder.add_argument("out", help="folder or URI for the shards")
    folder.add_argument("--split", required=True)
    folder.set_defaults(func=prepare_shards)
    cifar = source.add_parser("cifar10", help="torchvision's CIFAR-10 (downloaded into ROOT) as train and test")
    cifar.add_argument("root")
    cifar.add_argument("out", help="folder or URI for the shards")
    cifar.add_argument("--no-download", dest="download", action="store_false")
    cifar.set_defaults(func=prepare_shards)
    return p


# -- the job's stages ---------------------------------------------------------------------------------


@contextmanager
def naming(path: str) -> Iterator[None]:
    """A refusal found once Ray is joined (an address where nothing answers, what the cluster cannot hold) names
    the job file, as one found before does."""
    from distkd.resources import ResourceShortage

    try:
        yield
    except (ConfigError, ResourceShortage) as e:
        raise type(e)(f"{path}: {e}") from None


def refuse_missing(path: str, steps: list) -> None:
    """Stop, before Ray starts, a command whose stages need an output that is not committed and that they do not
    make: name the first such output and the stage that makes it."""
    if missing := next((s for s in steps if s.action == "missing"), None):
        command = missing.stage.replace("_", "-")
        raise ConfigError(
            f"{path}: the {missing.name} output is not committed ({missing.output}); run the '{missing.stage}' "
            f"stage first (distkd {command} {path}), or the whole pipeline (distkd pipeline {path})"
        )


def run_job(args: argparse.Namespace) -> int:
    """``pipeline``, ``plan`` and the stage commands: check the job, then run what it asks on Ray."""
    from distkd import address, console

    path = args.job
    loaded = config.load(path)
    address.loopback_only(loaded.ray_address)  # read as Ray is imported, which distkd.job does
    from distkd.job import Job

    job = Job.prepare(loaded, source=path)
    from distkd import cluster, pipeline
    from distkd.evaluate.summary import summary

    stages = job.config.stages if args.command in ("pipeline", "plan") else [STAGE_COMMANDS[args.command]]
    steps = pipeline.plan(job, stages)
    if args.command == "plan":
        print(format_plan(steps))
        return 0
    refuse_missing(path, steps)
    ray_logs = console.RayLogs(args.verbose)
    with naming(path):
        cluster.connect(job.config.ray_address, job.config.code, **ray_logs.ray_init_options())
    print(f"Ray's logs: {ray_logs.open()}" + ("" if args.verbose else " (--verbose shows them here)"), flush=True)
    console.timeline.clear()
    with naming(path):
        outputs = pipeline.run(job, stages)
    if args.command == "pipeline" and "report" in outputs:
        print(summary(outputs["report"], console.timeline.line()))
        return 0
    for name, uri in outputs.items():
        print(f"{name:>10}: {uri}")
    return 0


def format_plan(steps: list) -> str:
    width = max(len(s.name) for s in steps)
    indent = " " * (width + 24)  # under the output
    return "\n".join(
        f"{s.stage:<13} {s.name:<{width}}  {s.action:<7}  {s.output}" + (f"\n{indent}{s.detail}" if s.detail else "")
        for s in steps
    )


def sweep_command(args: argparse.Namespace) -> int:
    from distkd import address, console

    address.loopback_only(config.load(args.job).ray_address)  # read as Ray is imported, which sweep does
    from distkd import cluster, sweep

    axes = sweep.parse_axes(args.grid)
    base, jobs = sweep.plan(args.job, axes, args.random, args.seed)
    ray_logs = console.RayLogs(args.verbose)
    cluster.connect(base.config.ray_address, base.config.code, **ray_logs.ray_init_options())
    print(f"Ray's logs: {ray_logs.open()}", flush=True)
    out, records = sweep.run(base, jobs, [a.key for a in axes])
    trained = sum(r["trained"] for r in records)
    print(f"{len(records)} trials: {trained} trained, {len(records) - trained} reused")
    print(f"sweep report: {out}/report.md")
    return 0


# -- Ray jobs -----------------------------------------------------------------------------------------


def submit_job(args: argparse.Namespace) -> int:
    job = config.load(args.job)
    from distkd import checks

    checks.settings(job)  # what the schema cannot know: the job's registry entries, before anything is sent
    from ray.job_submission import JobStatus

    from distkd import submit

    job_id = submit.submit(job, args.address, args.stage or "pipeline")
    print(f"submitted {job_id} to {args.address} (distkd jobs logs {job_id} --address {args.address})", flush=True)
    if not args.wait:
        return 0
    client = job_client(args.address)
    status = submit.wait(client, job_id)
    print(client.get_job_logs(job_id), end="")
    print(f"{job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _job_listing(client, job_id: None) -> str:
    from distkd import submit

    return submit.listing(client)


JOB_ACTIONS: dict[str, Callable] = {  # (client, submission id) -> what to print
    "ls": _job_listing,
    "status": lambda client, job_id: client.get_job_status(job_id),
    "logs": lambda client, job_id: client.get_job_logs(job_id).rstrip("\n"),
    "stop": lambda client, job_id: f"{job_id}: {'stop requested' if client.stop_job(job_id) else 'not running'}",
}


def jobs_command(args: argparse.Namespace) -> int:
    if args.action != "ls" and args.id is None:
        raise ConfigError(f"jobs {args.action} needs a submission ID (see: distkd jobs ls --address {args.address})")
    print(JOB_ACTIONS[args.action](job_client(args.address), args.id))
    return 0


def job_client(address: str):
    """Ray's job client at ``address``, or a ``ConfigError`` naming it when nothing answers there."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: no Ray job server answers there ({e})") from None


# -- the store ----------------------------------------------------------------------------------------

CACHE_ENTRY_ACTIONS = {  # action -> (its help, the function of distkd.softlabels.inspect that does it)
    "show": ("the entry's manifest", "show"),
    "verify": ("check the entry's rows, checksums and ids against its dataset", "verify"),
    "rm": ("remove the entry (never the shards other entries list)", "remove"),
}


def cache_listing(args: argparse.Namespace) -> int:
    from distkd.softlabels import inspect

    store = store_folder("--store", args.store)
    print(inspect.format_listing(inspect.listing(store)))
    print(inspect.format_leftovers(store), end="")
    return 0


def cache_entry(args: argparse.Namespace) -> int:
    from distkd.softlabels import inspect

    store = store_folder("--store", args.store)
    print(getattr(inspect, CACHE_ENTRY_ACTIONS[args.action][1])(store, args.key))
    return 0


def cache_gc(args: argparse.Namespace) -> int:
    from distkd.softlabels import inspect

    print(inspect.collect_garbage(store_folder("--store", args.store), args.older_than, args.dry_run))
    return 0


def store_listing(args: argparse.Namespace) -> int:
    from distkd import catalog

    print(catalog.format_listing(catalog.listing(store_folder("--store", args.store)), args.json))
    return 0


def combine_reports(args: argparse.Namespace) -> int:
    from distkd.evaluate.stage import combine

    folders = [location("REPORT", f) for f in args.reports]
    out = combine(folders, location("--out", args.out))
    print(f"report: {out}/report.md")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from distkd import export

    record = export.export(location("RUN", args.run), args.format, args.tolerance, tuple(args.code))
    print(f"{record['file']}: max abs difference {record['max_abs_difference']:.3g} on {record['checked_rows']} rows")
    return 0


def prepare_shards(args: argparse.Namespace) -> int:
    from distkd.data import prepare as packing

    out = location("OUT", args.out)
    try:
        if args.source == "image-folder":
            shards = packing.from_image_folder(args.root, out, args.split)
        else:
            shards = packing.from_torchvision_cifar10(args.root, out, download=args.download)
    except (OSError, ValueError) as e:  # a root that is not the dataset asked for, a folder without images
        raise ConfigError(str(e)) from None
    print(f"wrote {len(shards)} shards to {out}")
    return 0
