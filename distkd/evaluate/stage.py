"""Stage 3: every model over the test split on an actor pool; per-block statistics summed exactly."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray.data
import torch

from distkd import console, devices, storage
from distkd.catalog import run_record
from distkd.config import ConfigError, DistillConfig
from distkd.data.kinds import InputKind
from distkd.evaluate import summary
from distkd.evaluate.cost import model_cost, summed_cost
from distkd.evaluate.metrics import Scored, baselines
from distkd.evaluate.scoring import SCORINGS
from distkd.labels.ensemble import Ensemble
from distkd.models import placed, sources
from distkd.models.columns import ColumnModel, Columns, model_input
from distkd.specs import EvalSpec, Weights

TEACHER = "teacher"
ENSEMBLE = "ensemble"  # an ensemble's combined outputs: the students' teacher where there is one


class Evaluator:
    """All models side by side in one actor, so each student is compared with its teacher on the same batch. With
    an ``ensemble``, its teachers' outputs are combined as the students distil from them (``Ensemble``) and are
    the students' teacher. The ``task``'s scoring (``scoring.SCORINGS``) reduces each batch to its statistics."""

    def __init__(
        self,
        models: dict[str, Weights],
        inputs: InputKind,
        slices: tuple[str, ...] = (),
        threads: int = 1,
        ensemble: Ensemble | None = None,
        distill: DistillConfig | None = None,
        task: str = "classification",
    ) -> None:
        torch.set_num_threads(threads)
        self.device, self.weights, self.scoring = devices.device(), models, SCORINGS[task]
        self.inputs, self.slices, self.ensemble, self.distill = inputs, slices, ensemble, distill
        self.baselines = baselines({role: w.model for role, w in models.items()})

    @functools.cached_property
    def models(self) -> dict[str, torch.nn.Module]:
        """Loaded at the first batch, as the teacher actors' model is (``TeacherPredictor.model``)."""
        return {role: placed(w.load(), self.device).eval() for role, w in self.weights.items()}

    def model_input(self, role: str, model: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor | Columns:
        """What the model of ``role`` is called with: the batch read its own way (its tokenizer: the batch keeps
        the raw input column for it, ``kept``), else ``columns.model_input`` (a booster's raw columns, or the job's
        input)."""
        own = self.weights[role].model.inputs
        if own is None:
            return model_input(model, self.inputs, batch, self.device)
        prepared = own.prepare(batch)
        return own.model_input({name: torch.from_numpy(prepared[name]) for name in own.columns}, self.device)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = {
            role: model(self.model_input(role, model, batch)).float().cpu().numpy()
            for role, model in self.models.items()
        }
        if self.ensemble:
            members = [logits[role] for role in self.ensemble.members]
            logits[ENSEMBLE] = self.ensemble.predictions(members, self.distill.temperature)
        reference, teachers = (ENSEMBLE, {ENSEMBLE, *self.ensemble.members}) if self.ensemble else (TEACHER, {TEACHER})
        values = {column: batch[column] for column in self.slices}
        return self.scoring.block(Scored(logits, batch, reference, teachers, self.baselines, values))


def evaluate(spec: EvalSpec) -> str:
    """Metrics, costs and the report for each role's model and weights; returns the committed report folder."""
    folder = spec.uri
    if storage.is_committed(folder):
        console.reusing("evaluate", "committed report", folder)
        return folder
    with console.computing("evaluate", f"evaluating {', '.join(spec.models)} on {spec.data.name}", folder):
        evaluate_into(folder, spec)
    return folder


def evaluate_into(folder: str, spec: EvalSpec) -> None:
    cfg = spec.execution
    slices = tuple(cfg.slices)
    stats = (
        spec.data.read(extra=tuple(c for c in slices if c not in ("id", "label")))
        .map_batches(prepared, fn_kwargs={"inputs": spec.inputs, "keep": kept(spec)}, batch_format="numpy")
        .map_batches(
            Evaluator,
            fn_constructor_kwargs={
                "models": spec.models,
                "inputs": spec.inputs,
                "slices": slices,
                "threads": max(1, int(cfg.cpus_per_actor)),
                "ensemble": spec.ensemble,
                "distill": spec.distill,
                "task": spec.task.name,
            },
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            batch_size=cfg.batch_size,
            batch_format="numpy",
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
        )
    )
    scoring = SCORINGS[spec.task.name]
    batches = stats.iter_batches(batch_size=None, batch_format="numpy")
    rows = spec.data.num_rows()
    blocks = list(console.progress(batches, rows, "evaluate", scoring.rows))
    costs = ray.get(
        measure_costs.options(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor).remote(
            spec.models, spec.inputs, max(1, int(cfg.cpus_per_actor))
        )
    )
    paired = baselines({role: w.model for role, w in spec.models.items()})
    results = scoring.results(blocks, described(spec, costs), paired, spec)
    title = f"distkd report: {spec.job}"
    save_report(folder, results, title, spec.task.name, job=spec.job, split=spec.data.record())
    storage.commit(folder)
    print(f"[evaluate] report: {storage.join(folder, 'report.html')}", flush=True)


def described(spec: EvalSpec, costs: dict[str, dict]) -> dict[str, dict]:
    """Role -> what the report says of each model besides its metrics, in the evaluators' order (the models, then
    the ensemble of the teachers where there is one: its members and weights, its cost that of all of them)."""
    out = {
        role: {
            "name": f"{weights.model.name} {role}",
            "role": role,
            "weights": weights.uri,
            "weights_sha256": weights.sha256,
            **costs[role],
            **run_record(weights.uri),
        }
        for role, weights in spec.models.items()
    }
    if ensemble := spec.ensemble:
        members = [costs[role] for role in ensemble.members]
        out[ENSEMBLE] = {
            "name": f"ensemble of {len(members)} teachers",
            "role": ENSEMBLE,
            "members": dict(zip(ensemble.members, ensemble.weights)),
            "combine": ensemble.combine,
            **{key: summed_cost([m[key] for m in members]) for key in ("cost", "cost_gpu") if key in members[0]},
        }
    return out


def kept(spec: EvalSpec) -> tuple[str, ...]:
    """The raw columns the evaluators need beside the prepared input: the slices', and the input's columns when a
    model reads them its own way (``ModelSpec.inputs``: its own tokenizer) or as they are (a booster:
    models/columns.py)."""
    raw = any(w.model.inputs is not None or sources.reads_columns(w.model.name) for w in spec.models.values())
    return tuple(dict.fromkeys((*spec.execution.slices, *(spec.data.input.columns if raw else ()))))


def prepared(batch: dict[str, np.ndarray], inputs: InputKind, keep: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The batch's input prepared for the models, with the columns ``keep`` (the slices') beside it."""
    return {**inputs.prepare(batch), **{column: batch[column] for column in keep}}


def model_costs(models: dict[str, Weights], inputs: InputKind, threads: int) -> dict[str, dict]:
    """Each model's ``cost`` (on the CPU) and ``cost_gpu`` (on the GPU Ray assigned, if any)."""
    torch.set_num_threads(threads)
    device, costs = devices.device(), {}

    for role, weights in models.items():
        model = weights.load()
        made = cost_inputs(model, weights.model.reads(inputs))
        costs[role] = {"cost": model_cost(model, made)}
        if device.type == "cuda":
            costs[role]["cost_gpu"] = model_cost(model, made, device=device)
    return costs


def cost_inputs(model: torch.nn.Module, reads: InputKind) -> Callable[[int], object]:
    """What ``model_cost`` runs ``model`` on: ``rows`` examples of the inputs it reads, on the CPU; a model of the
    raw columns makes its own (nulls)."""
    if isinstance(model, ColumnModel):
        return model.example
    return lambda rows: reads.model_input(reads.example(rows), torch.device("cpu"))


# On a worker with the evaluation actors' resources, where the models run, not on the driver.
measure_costs = ray.remote(model_costs)


def save_report(folder: str, models: list[dict], title: str, task: str, **about: object) -> None:
    """``metrics.json``, ``report.md``, ``report.html`` and the plots, into ``folder`` (any store URI), as the
    ``task``'s scoring writes them."""
    with tempfile.TemporaryDirectory() as local:
        SCORINGS[task].report(local, models, title)
        for path in Path(local).iterdir():
            storage.write_bytes(storage.join(folder, path.name), path.read_bytes())
    storage.write_json(storage.join(folder, summary.METRICS), {"title": title, "task": task, **about, "models": models})


def combine(folders: list[str], out: str) -> str:
    """One report from the models of several evaluated reports (``distkd report``); with several,
    each model's name starts with its report folder's name. ``out`` is refused where writing would replace what
    is there: a file, a committed report (the evaluate stage's, never rewritten) or one of ``folders`` (or a folder
    in one)."""
    folders = list(dict.fromkeys(f.rstrip("/") for f in folders))
    evaluated = {folder: summary.models(folder) for folder in folders}  # each refused, named, unless a report's
    fs, path = storage.resolve(out)
    if fs.get_file_info(path).type == pafs.FileType.File:
        raise ConfigError(f"--out {out}: a file is there; expected a folder for the combined report")
    if storage.is_committed(out):
        raise ConfigError(f"--out {out}: a committed report is there, and a committed output is never rewritten")
    if any(_under(out, folder) for folder in folders):
        raise ConfigError(f"--out {out}: in one of the reports it combines; choose another folder")
    models = []
    for folder, found in evaluated.items():
        for model in found:
            name = f"{folder.rsplit('/', 1)[-1]}: {model['name']}" if len(folders) > 1 else model["name"]
            models.append({**model, "name": name})
    save_report(out, models, "distkd report", summary.task(folders[0]), job="combined", sources=folders)
    return out


def _under(a: str, b: str) -> bool:
    """Whether location ``a`` is folder ``b`` or lies in it (local ones with their links resolved)."""
    if storage.is_remote(a) or storage.is_remote(b):
        a, b = a.rstrip("/"), b.rstrip("/")
    else:
        a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + "/")
