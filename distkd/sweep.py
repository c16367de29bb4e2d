"""``distkd sweep``: many students on one teacher's cached labels, run concurrently as Ray Tune trials.

Each trial is the job with some dotted keys overridden (``--grid distill.alpha=0.5,0.9``), made into an ordinary
content-addressed run by the job's own specs and trained by the distill stage's own ``train_run``, so a trial whose
run folder is committed is read, not trained again. Every trial is checked before any work; the teacher and its
labels are computed (or reused) once, by the pipeline's stages, with the job as given.
"""

from __future__ import annotations

import copy
import io
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from distkd import config, storage
from distkd.config import ConfigError
from distkd.hashing import digest

SWEPT = ("student.", "distill.")  # a sweep trains students on one teacher's labels: only their keys may vary
SEED = "student.train.seed"


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[object, ...]


def parse_axes(items: Sequence[str]) -> list[Axis]:
    """``key=v1,v2`` items as axes; each value is read as YAML (``0.5`` a float, ``true`` a bool)."""
    axes: list[Axis] = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. distill.alpha=0.5,0.9)")
        if not key.startswith(SWEPT):
            raise ConfigError(
                f"--grid {key}: a sweep trains students on one teacher's cached labels, so only keys under "
                f"{' and '.join(p + '*' for p in SWEPT)} may vary"
            )
        if key in (a.key for a in axes):
            raise ConfigError(f"--grid {key}: given twice")
        parsed = tuple(_value(key, v) for v in values.split(","))
        if len(set(map(repr, parsed))) != len(parsed):
            raise ConfigError(f"--grid {key}: a value is listed twice ({values})")
        axes.append(Axis(key, parsed))
    if not axes:
        raise ConfigError("distkd sweep needs at least one --grid KEY=V1,V2,...")
    return axes


def _value(key: str, text: str) -> object:
    """One value of a ``--grid`` axis, read as YAML; a ``ConfigError`` naming the key and the value if it is not."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--grid {key}: {text!r} is not a YAML value ({problem}); values are split at ','") from None


def combinations(axes: Sequence[Axis], samples: int | None = None, seed: int = 0) -> list[dict[str, object]]:
    """Every combination of the axes' values (a grid), or ``samples`` distinct ones drawn with ``seed``."""
    grid = [dict(zip((a.key for a in axes), values)) for values in itertools.product(*(a.values for a in axes))]
    if samples is None:
        return grid
    if samples < 1:
        raise ConfigError(f"--random {samples}: expected a number of trials >= 1")
    return random.Random(seed).sample(grid, min(samples, len(grid)))


def overridden(raw: dict, overrides: dict[str, object]) -> dict:
    """A copy of the job's mapping with each dotted key set (missing mappings on the way are created)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--grid {key}: '{part}' is not a mapping in the job")
        node[leaf] = value
    return out


def trial_config(raw: dict, overrides: dict[str, object], source: str) -> config.JobConfig:
    """The job with ``overrides``, checked as a job file is (unknown keys and bad values named)."""
    label = " ".join(f"{k}={v}" for k, v in overrides.items())
    changed = overridden(raw, overrides)
    try:
        return config.parse(changed, f"{source} with {label}")
    except ConfigError as e:
        raise ConfigError(f"--grid: {e}") from None


@dataclass(frozen=True)
class Trial:
    overrides: dict[str, object]
    run: object  # a distkd.specs.TrainingRun (imported lazily: it pulls in torch)

    @property
    def role(self) -> str:
        return self.run.role


def plan(path: str, axes: Sequence[Axis], samples: int | None = None, seed: int = 0) -> tuple[object, list]:
    """The job as given and each trial's job, all checked before any work: (Job, [(overrides, Job)])."""
    from distkd.job import Job

    base = config.load(path)
    raw = yaml.safe_load(Path(path).read_text())
    configs = [(o, trial_config(raw, o, path)) for o in combinations(axes, samples, seed)]
    return Job.prepare(base, source=path), [(o, Job.prepare(c, source=path)) for o, c in configs]


def trials(jobs: list, teachers: list[str]) -> list[Trial]:
    """The distilled run of each trial's job (on the labels of the teachers with weights ``teachers``, in order)
    and, once per distinct run, its from-scratch baseline."""
    out: dict[str, Trial] = {}
    for overrides, job in jobs:
        run = job.distilled_run(*(job.softlabel_spec(uri, i=i) for i, uri in enumerate(teachers)))
        out.setdefault(run.uri, Trial(overrides, run))
        if scratch := job.scratch_run():
            student = {k: v for k, v in overrides.items() if not k.startswith("distill.")}
            out.setdefault(scratch.uri, Trial(student, scratch))
    return list(out.values())


# What a trial's own process holds: it only waits on its Ray Train workers, which hold the job's resources
# themselves, so it takes no CPU (a share of one would keep two 1-CPU trials off 2 CPUs); Tune refuses a trial of
# no resources at all, so it holds one byte of memory instead.
TRIAL_PROCESS = {"memory": 1}


def trial_resources(resources: config.ResourcesConfig) -> dict[str, float]:
    """What one trial's Ray Train workers hold, as the job's ``resources`` say (its own process holds no CPU)."""
    from distkd.resources import training_needs

    return training_needs(resources)


def _train(config: dict, runs: list) -> None:
    """A Tune trial: the distill stage's own ``train_run`` on one run; reports when it trained. It runs as a task
    outside the trial's placement group (which holds only the trial's own share), so that its Ray Data tasks and
    Ray Train workers are placed as the stage's are outside a sweep."""
    import ray
    from ray import tune

    from distkd.distill.stage import train_run

    started = time.time()
    task = ray.remote(train_run).options(num_cpus=0, scheduling_strategy="DEFAULT")
    uri = ray.get(task.remote(runs[config["trial"]], "distill", True))
    tune.report({"uri": uri, "start": started, "end": time.time()})


def label(trial: Trial) -> str:
    """How the console names a trial: its role and swept values."""
    return " ".join([trial.role, *(f"{k}={v}" for k, v in trial.overrides.items())])


def trial_lines(pending: list[Trial]) -> object:
    """A Tune callback printing a line as each trial starts and ends: the sweep's progress on the console."""
    from ray import tune

    from distkd.console import duration, say

    class TrialLines(tune.Callback):
        def __init__(self) -> None:
            self.started: dict[int, float] = {}
            self.ended = 0

        def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
            self.started[trial.config["trial"]] = time.time()
            say(f"[sweep] training {label(pending[trial.config['trial']])}")

        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            self._ended(trial, "done")

        def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
            self._ended(trial, f"failed ({failure(trial.get_pickled_error())})")

        def _ended(self, trial, how: str) -> None:
            index, self.ended = trial.config["trial"], self.ended + 1
            seconds = duration(time.time() - self.started[index])
            say(f"[sweep] {self.ended}/{len(pending)} {label(pending[index])}: {how} in {seconds}")

    return TrialLines()


def failure(error: BaseException | None) -> str:
    """Why a trial failed, in one line: the type and first line of what raised in it (Ray's task errors wrap it,
    with its traceback in their own message)."""
    if error is None:
        return "no error recorded: see Ray's logs"
    while isinstance(getattr(error, "cause", None), BaseException):
        error = error.cause
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def run_trials(pending: list[Trial], per_trial: dict[str, float]) -> dict[str, dict]:
    """Train ``pending`` as Ray Tune trials, as many at once as the cluster's CPUs and GPUs hold:
    run URI -> {start, end} (wall-clock seconds)."""
    import ray
    from ray import tune

    from distkd.resources import at_once

    if not pending:
        return {}
    runs = [t.run for t in pending]
    trainable = tune.with_resources(tune.with_parameters(_train, runs=runs), TRIAL_PROCESS)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(runs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=at_once(per_trial, ray.cluster_resources())),
        run_config=tune.RunConfig(
            name="distkd-sweep",
            storage_path=tempfile.mkdtemp(prefix="distkd-tune-"),
            verbose=0,
            callbacks=[trial_lines(pending)],
        ),
    )
    results = tuner.fit()
    failed = [r.error for r in results if r.error]
    if failed:
        raise failed[0]
    return {r.metrics["uri"]: {"start": r.metrics["start"], "end": r.metrics["end"]} for r in results}


def final_accuracy(run_uri: str) -> float:
    """The run's validation accuracy after its last epoch (the test split's first ``data.val_limit`` rows)."""
    from distkd.specs import TrainingRun

    return storage.read_json(storage.join(run_uri, TrainingRun.HISTORY))[-1]["val_accuracy"]


def run(base, jobs: list, keys: list[str]) -> tuple[str, list[dict]]:
    """The sweep ``plan`` made, on the cluster (joined or started here unless Ray is initialised): the teacher and
    its labels first (reused when committed), then every trial not committed yet; returns the report folder and
    one record per trial."""
    from distkd import cluster, pipeline, resources

    cluster.connect(base.config.ray_address, base.config.code)
    resources.check(base.config, ["train_teacher", "softlabels", "distill"])
    labelled = pipeline.run(base, ["train_teacher", "softlabels"])
    found = trials(jobs, [labelled[t.role] for t in base.teachers])
    pending = [t for t in found if not storage.is_committed(t.run.uri)]
    spans = run_trials(pending, trial_resources(base.config.training_resources("student")))
    records = [
        {
            "overrides": t.overrides,
            "role": t.role,
            "uri": t.run.uri,
            "accuracy": final_accuracy(t.run.uri),
            "trained": t.run.uri in spans,
            **spans.get(t.run.uri, {}),
        }
        for t in found
    ]
    runs = sorted(t.run.uri.rsplit("/", 1)[-1] for t in found)  # the runs' names: their content, not the store's path
    out = storage.join(base.config.store, "sweeps", digest(runs))
    write_report(out, keys, records)
    return out, records


def _mean_spread(values: list[float]) -> str:
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.2f}{spread} (n={len(values)})"


def grouped(keys: list[str], records: list[dict]) -> dict[tuple, list[dict]]:
    """Distilled trials grouped by their swept values other than the seed."""
    settings = [k for k in keys if k != SEED]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["role"] == "student-kd":
            groups.setdefault(tuple(r["overrides"].get(k) for k in settings), []).append(r)
    return groups


def gains(records: list[dict]) -> dict[str, float]:
    """Each distilled trial's accuracy minus its baseline's (the scratch run with the same student keys)."""
    baselines = {digest(r["overrides"]): r["accuracy"] for r in records if r["role"] == "student-scratch"}
    out = {}
    for r in records:
        student = {k: v for k, v in r["overrides"].items() if not k.startswith("distill.")}
        if r["role"] == "student-kd" and (base := baselines.get(digest(student))) is not None:
            out[r["uri"]] = r["accuracy"] - base
    return out


def markdown(keys: list[str], records: list[dict]) -> str:
    """The report: per setting, accuracy over seeds (and the gain over the same seed's scratch run); every trial."""
    settings = [k for k in keys if k != SEED]
    gain = gains(records)
    lines = [
        "# distkd sweep",
        "",
        "Accuracy: each run's validation accuracy after its last epoch (the test split's first `data.val_limit` "
        "rows), mean ± standard deviation over the trials of a setting (its seeds).",
        "",
        f"| {' | '.join(settings)} | accuracy (%) | gain over scratch (points) |",
        f"|{'---|' * (len(settings) + 2)}",
    ]
    for values, group in grouped(keys, records).items():
        paired = [gain[r["uri"]] for r in group if r["uri"] in gain]
        cells = [*map(str, values), _mean_spread([r["accuracy"] for r in group])]
        lines.append(f"| {' | '.join([*cells, _mean_spread(paired) if paired else '-'])} |")
    scratch = [r["accuracy"] for r in records if r["role"] == "student-scratch"]
    if scratch:
        lines += ["", f"From scratch: {_mean_spread(scratch)}."]
    lines += ["", "![accuracy against each swept key](accuracy.png)", "", "## Trials", ""]
    lines += ["| run | swept values | accuracy (%) | trained now | seconds |", "|---|---|---|---|---|"]
    for r in records:
        seconds = f"{r['end'] - r['start']:.1f}" if r["trained"] else "-"
        values = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        lines.append(
            f"| {r['uri'].rsplit('/', 1)[-1]} | {values} | {100 * r['accuracy']:.2f} | "
            f"{'yes' if r['trained'] else 'no (reused)'} | {seconds} |"
        )
    return "\n".join(lines) + "\n"


def figure(keys: list[str], records: list[dict]) -> Figure:
    """Accuracy against each swept key (mean and standard deviation over every distilled trial with that
    value), the from-scratch mean as a dashed line."""
    shown = [k for k in keys if k != SEED] or keys
    fig = Figure(figsize=(4 * len(shown), 3.5), layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    distilled = [r for r in records if r["role"] == "student-kd"]
    scratch = [r["accuracy"] for r in records if r["role"] == "student-scratch"]
    for ax, key in zip(axes, shown):
        values = list(dict.fromkeys(r["overrides"][key] for r in distilled))
        acc = [[100 * r["accuracy"] for r in distilled if r["overrides"][key] == v] for v in values]
        spread = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in acc]
        ax.errorbar(range(len(values)), [statistics.mean(a) for a in acc], yerr=spread, marker="o", capsize=4)
        if scratch:
            ax.axhline(100 * statistics.mean(scratch), color="grey", linestyle="--", label="from scratch")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    return fig


def write_report(out: str, keys: list[str], records: list[dict]) -> None:
    """``report.md``, ``accuracy.png`` and ``sweep.json`` (the records) into the sweep's folder."""
    png = io.BytesIO()
    figure(keys, records).savefig(png, format="png", dpi=110)
    storage.write_bytes(storage.join(out, "accuracy.png"), png.getvalue())
    storage.write_bytes(storage.join(out, "report.md"), markdown(keys, records).encode())
    storage.write_json(storage.join(out, "sweep.json"), {"keys": keys, "trials": records})


def overlapping(records: list[dict]) -> bool:
    """Whether any two trained trials ran at the same time."""
    spans = sorted((r["start"], r["end"]) for r in records if r["trained"])
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
