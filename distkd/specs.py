"""What each stage reads, and the identity and output URI it owns.

A spec is built from the job on the driver and handed to its stage; the stage reads nothing
else. ``identity()`` holds exactly what changes the stage's output (content, not names: weights
and data by their hashes), so two jobs asking for the same output meet at the same URI and a
change of anything that matters moves to a new one. Stages never import one another; they meet
here and in the store. This module imports no stage code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from distkd import storage
from distkd.config import (
    DataConfig,
    DistillConfig,
    EvaluateConfig,
    ResourcesConfig,
    SoftLabelConfig,
    TrackingConfig,
    TrainConfig,
)
from distkd.data.kinds import InputKind
from distkd.data.source import Split
from distkd.data.transforms import PAD
from distkd.hashing import digest, plain
from distkd.labels.ensemble import Ensemble
from distkd.labels.formats import Format
from distkd.models import load_weights, sources
from distkd.tasks import CLASSIFICATION, Task

FORMAT_VERSION = 3  # of the soft-label cache's layout: part of every key (3: shards shared by their inputs)


def recorded(spec: TrainingRun | SoftLabelSpec) -> dict:
    """``spec.identity()`` as plain data, as its output records it: with where its data was read (``Split.record``),
    which the key leaves out."""
    return {**plain(spec.identity()), "data": spec.data.record()}


class MissingOutput(RuntimeError):
    """A stage's input that is not committed in the store and that this run may not compute."""


def require(compute: bool, uri: str, stage: str) -> None:
    """Stop unless this run may compute the output at ``uri`` (else say which stage makes it)."""
    if not compute:
        raise MissingOutput(
            f"{uri}: not committed; run the '{stage}' stage first (distkd {stage.replace('_', '-')} JOB.yaml)"
        )


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to build a model for this data: its name (a built-in one or ``<source>:<rest>``,
    ``models/sources.py``), arguments and input shape. ``source`` is what defines the model beyond its name
    (the hash of a program, a Hugging Face folder or the job's ``code:``; a package version), in the identity
    only when there is one, so built-in models keep their keys; ``code`` is where that code is, not identity.
    ``inputs`` is the model's own reading of the input (its tokenizer, its ``max_length``) where it has one, in
    its identity then; None: it reads the job's (``Job.inputs``). ``task`` is the job's task's name, which picks
    what a source that builds for several builds (``sources.HEADS``); the runs' and reports' identities hold it."""

    name: str
    kwargs: dict
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str | None = None
    code: tuple[str, ...] = ()
    inputs: InputKind | None = None
    task: str = CLASSIFICATION.name

    def build(self) -> torch.nn.Module:
        *_, c, h = (1, *self.input_shape[:2])  # (C, H, W); a text input's (L,): 1 channel of L tokens
        return sources.build(self.name, self.num_classes, c, h, self.code, self.task, **self.kwargs)

    def identity(self) -> dict:
        out = {
            "name": sources.located(self.name),
            "kwargs": self.kwargs,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }
        if self.source is not None:
            out["source"] = self.source
        return {**out, "inputs": self.inputs.identity()} if self.inputs is not None else out

    def reads(self, default: InputKind) -> InputKind:
        """The input kind the model reads: its own, else ``default`` (the job's)."""
        return self.inputs or default


@dataclass(frozen=True)
class Weights:
    """A model with the weights it runs, named by their sha256 in every identity."""

    model: ModelSpec
    uri: str
    sha256: str

    def identity(self) -> dict:
        return {"model": self.model, "weights_sha256": self.sha256}

    def load(self) -> torch.nn.Module:
        """The model with exactly these weights: the bytes read are the ones hashed, refused unless ``sha256``."""
        return load_weights(self.model.build(), self.uri, self.sha256)


@dataclass(frozen=True)
class SoftTargets:
    """What a distilled run's KD term reads: one committed soft-label entry per teacher, combined into one target
    as ``ensemble`` says (its members: the entries' keys) when there are several; a single entry is read as is."""

    entries: tuple[str, ...]  # URIs
    ensemble: Ensemble

    def identity(self) -> dict:
        """One teacher: its entry's key alone, as before ensembles (so such a run keeps its URI); an ensemble:
        each entry's key with its weight, and how they combine."""
        keys, weights = self.ensemble.members, self.ensemble.weights
        if len(keys) == 1:
            return {"softlabels": keys[0]}
        teachers = [{"softlabels": k, "weight": w} for k, w in zip(keys, weights)]
        return {"teachers": teachers, "combine": self.ensemble.combine}


@dataclass(frozen=True)
class TrainingRun:
    """A model trained by the Ray Train loop (stage 0 for the teacher, stage 2 for the students).

    The job's config sections travel here unchanged, to the workers: a setting and its default are declared
    once, in ``config.py``, and read where they are used. ``distill`` None trains on the labels alone; then the
    KD settings are not part of the identity, so changing the distillation temperature never retrains a
    teacher or a baseline."""

    role: str  # teacher | student-kd | student-scratch: the run folder's and the console's name
    store: str
    job: str  # the job that asked first: recorded in the run, not part of its identity
    model: ModelSpec
    train: TrainConfig
    data: Split
    val: Split
    inputs: InputKind  # what the input column becomes (``data/inputs.py``)
    resources: ResourcesConfig
    feed: DataConfig  # how the training data is fed (data.cache, data.shuffle_buffer): not part of the identity
    tracking: TrackingConfig  # where the curves go besides TensorBoard: not part of the identity
    task: Task  # what the model learns (``tasks.py``): its target, its losses; in the identity unless classification
    distill: DistillConfig | None = None  # the KD loss and its weight, against ``softlabels``
    softlabels: SoftTargets | None = None  # the committed cache entries the KD term reads
    views: int = 0  # recorded views in the soft labels: train on one of them per sample

    # The run folder's files: read by the catalog, the report, export and sweeps from any run folder.
    WEIGHTS: ClassVar[str] = "model.pt"  # the trained weights, written last before the commit marker
    INFO: ClassVar[str] = "run.json"  # what made the run: the job, the role and the identity
    HISTORY: ClassVar[str] = "history.json"  # the metrics of each epoch

    def identity(self) -> dict:
        out = {
            "model": self.model,
            "train": self.train,
            "data": self.data.identity(),
            self.inputs.identity_key: self.inputs.identity(),
            "num_workers": self.resources.num_workers,
            "precision": self.resources.precision,
            **self.task.identity(),
        }
        if self.distill is not None:
            d = self.distill
            kd = {"alpha": d.alpha, "temperature": d.temperature, "loss": d.loss}
            if d.warmup_epochs:  # in the identity only when set: runs without a warm-up keep their names
                kd["warmup_epochs"] = d.warmup_epochs
            out["kd"] = {**kd, **self.softlabels.identity()}
        return out

    def trained_rows(self) -> int:
        """The rows an epoch trains on: every row with soft labels to learn from, else those with a label."""
        return self.data.num_rows() if self.softlabels else self.data.label_counts()[0]

    @property
    def uri(self) -> str:
        """``<store>/runs/<role>-<hash of the identity>``: any job asking for this run finds it."""
        return storage.join(self.store, "runs", f"{self.role}-{digest(self.identity())}")

    @property
    def weights_uri(self) -> str:
        return storage.join(self.uri, self.WEIGHTS)

    @property
    def info_uri(self) -> str:
        return storage.join(self.uri, self.INFO)

    @property
    def history_uri(self) -> str:
        return storage.join(self.uri, self.HISTORY)


@dataclass(frozen=True)
class SoftLabelSpec:
    """Stage 1: the teacher's outputs on the training split, as a content-addressed cache entry."""

    store: str
    teacher: Weights
    data: Split
    inputs: InputKind  # what the input column becomes (``data/inputs.py``)
    format: Format
    views: int
    view_seed: int
    shard_rows: int
    precision: str  # of the teacher's forward pass: fp32, or bf16/fp16 autocast on a GPU
    execution: SoftLabelConfig  # pool size, batch size, CPUs and GPUs: not part of the key
    task: Task = CLASSIFICATION  # what a label is of (``Task.unit``): the format's layout is in the key, not this

    def identity(self) -> dict:
        """The key's inputs, in the readable form the manifest records."""
        return {
            "teacher": {
                "name": self.teacher.model.name,
                "kwargs": self.teacher.model.kwargs,
                "num_classes": self.teacher.model.num_classes,
                "weights_sha256": self.teacher.sha256,
                **({"source": self.teacher.model.source} if self.teacher.model.source is not None else {}),
            },
            "data": self.data.identity(),
            "transform": {
                "input_shape": list(self.teacher.model.input_shape),
                self.inputs.identity_key: self.inputs.identity(),
            },
            "views": {"count": self.views, "seed": self.view_seed, "pad": PAD} if self.views else None,
            "format": self.format,
            "shard_rows": self.shard_rows,
            "precision": self.precision,
        }

    @property
    def key(self) -> str:
        return digest({"format_version": FORMAT_VERSION, **self.identity()}, length=32)

    @property
    def teacher_key(self) -> str:
        """What makes a shard's outputs besides its input rows: the key's inputs less the data and the shard
        size (a shard is named by this and its rows' content, so any snapshot holding those rows reuses it)."""
        rest = {k: v for k, v in self.identity().items() if k not in ("data", "shard_rows")}
        return digest({"format_version": FORMAT_VERSION, **rest}, length=32)

    @property
    def uri(self) -> str:
        return storage.join(self.store, "softlabels", self.key)


@dataclass(frozen=True)
class EvalSpec:
    """Stage 3: metrics of each role's model and weights on one split, and the report."""

    store: str
    job: str  # recorded in the report, not part of its identity
    models: dict[str, Weights]  # role -> weights; "teacher" is the one students are compared with
    data: Split
    inputs: InputKind  # what the input column becomes (``data/inputs.py``)
    class_names: tuple[str, ...] | None
    execution: EvaluateConfig  # pool and batch sizes: not part of the identity; its slices are
    ensemble: Ensemble | None = None  # the teachers (by role) combined as the students' teacher, when several
    distill: DistillConfig | None = None  # an ensemble's teachers combine at its temperature
    task: Task = CLASSIFICATION  # how the models are scored (``evaluate/scoring.py``); in the identity unless that

    def identity(self) -> dict:
        # a report of one teacher keeps its key; an ensemble's holds how its teachers combine, at which temperature
        ensemble = {**plain(self.ensemble), "temperature": self.distill.temperature} if self.ensemble else None
        return {
            **self.task.identity(),
            "models": {role: w.identity() for role, w in self.models.items()},
            **({"ensemble": ensemble} if ensemble else {}),
            "data": self.data.identity(),
            self.inputs.identity_key: self.inputs.identity(),
            "class_names": self.class_names,
            # per-slice metrics add to a report; a report without them keeps its key
            **({"slices": self.execution.slices} if self.execution.slices else {}),
        }

    @property
    def uri(self) -> str:
        return storage.join(self.store, "reports", digest(self.identity()))
