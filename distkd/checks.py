"""Checks of a job against its data and its models, run on the driver before any Ray work starts.

Each check raises a ``ConfigError`` whose message names the key, the file or the row at fault and
says what to change; ``Job.prepare`` adds the job file's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from distkd import storage
from distkd.config import MAX_CLASSES, ConfigError, Entry, JobConfig, LossConfig, OptimizerConfig, ScheduleConfig
from distkd.data import tokenizer as tokenizers
from distkd.data.inputs import InputKind
from distkd.data.places import place, row
from distkd.data.source import LABEL, Split
from distkd.methods.losses import LOSSES, Targets, defined_on_topk
from distkd.methods.optim import OPTIMIZERS, SCHEDULES
from distkd.models import sources
from distkd.models.registry import read_state_dict
from distkd.models.sources import first_line as _first_line
from distkd.registry import Registry
from distkd.specs import ModelSpec
from distkd.tasks import TASKS

SHOWN = 5  # classes, keys or rows named in one message before "..."
MAX_SLICES = 100  # values of one 'evaluate.slices' column: each is a slice of every metric in metrics.json

# The registry each kind of entry is named in, and positional arguments for one trial call of an entry (built
# when called: torch tensors).
ENTRIES: dict[type[Entry], tuple[Registry, Callable[[], tuple]]] = {
    OptimizerConfig: (OPTIMIZERS, lambda: ([nn.Parameter(torch.zeros(1))], 0.1, 0.0)),  # parameters, lr, weight_decay
    ScheduleConfig: (SCHEDULES, lambda: (0.5,)),  # training progress
    # student logits, teacher targets, labels, temperature
    LossConfig: (
        LOSSES,
        lambda: (torch.zeros(1, 2), Targets(logits=torch.zeros(1, 2)), torch.zeros(1, dtype=torch.long), 1.0),
    ),
}


def settings(config: JobConfig) -> None:
    """The names the job picks from registries exist and take the arguments given, and the rules across keys that
    need a registry hold: what the config's schema cannot know."""
    if config.task not in TASKS:
        raise ConfigError(f"key 'task': unknown task '{config.task}'; known: {', '.join(TASKS)}")
    task = TASKS[config.task]
    for key, entry in job_entries(config).items():
        known(key, entry, task.losses if isinstance(entry, LossConfig) else None)
    try:  # only the dtype is tried: any class count
        task.label_format(config.softlabels, 2, config.distill.temperature)
    except ValueError as e:
        raise ConfigError(
            f"key 'softlabels.dtype': {e} ('softlabels.format: {config.softlabels.format}', task '{config.task}')"
        ) from None
    if config.data.tokenizer is not None:
        try:
            tokenizers.check_name(config.data.tokenizer.name)
        except ValueError as e:
            raise ConfigError(f"key 'data.tokenizer.name': {e} (got {config.data.tokenizer.name!r})") from None
    loss, labels = config.distill.loss, config.softlabels
    kd = config.distill.alpha > 0 and not config.evaluate.models
    if kd and labels.format == "topk" and not defined_on_topk(loss.name, loss.kwargs, loss.standardize, task.losses):
        raise ConfigError(
            f"key 'distill.loss': the '{loss.name}' loss{' with standardize' if loss.standardize else ''} needs the "
            "teacher's logits on every class, which top-k soft labels do not keep: use 'softlabels.format: "
            "dense', or the 'hinton' loss without 'standardize'"
        )


def job_entries(config: JobConfig) -> dict[str, Entry]:
    """Every registry entry of the job by its key: each trainable model's optimizer and schedule, the KD loss."""
    models = {**config.teachers(), "student": config.student}
    found: dict[str, Entry] = {"distill.loss": config.distill.loss}
    for key, model in models.items():
        found |= {f"{key}.train.optimizer": model.train.optimizer, f"{key}.train.schedule": model.train.schedule}
    return found


def known(key: str, entry: Entry, registry: Registry | None = None) -> None:
    """``entry`` names an entry of its registry (``registry``, else its kind's in ``ENTRIES``) that takes its
    kwargs: called once on tiny inputs when it is given any, so that it refuses what it cannot take
    (``momentum: 1.5``); its own defaults are not tried."""
    default, trial = ENTRIES[type(entry)]
    registry = registry or default
    arguments = trial()
    if problem := registry.refusal(entry.name, entry.kwargs, len(arguments)):
        raise ConfigError(f"key '{key}': {problem}")
    if not entry.kwargs:
        return
    try:
        registry[entry.name](*arguments, **entry.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"key '{key}': {entry.name} refuses {entry.kwargs}: {e}") from None


def data(config: JobConfig, splits: dict[str, Split]) -> int:
    """Every split has rows, unique ids and integer labels in ``[0, num_classes)``, the training settings fit the data;
    ``splits`` maps the key that names each split to it (the train split first). Returns the class count."""
    labels = {key: read_labels(key, split) for key, split in splits.items()}
    (train_key, train), *_ = splits.items()
    num_classes = config.data.num_classes or class_count(train, labels[train_key])
    for key, split in splits.items():
        unique_ids(split)
        labels_in_range(split, labels[key], num_classes, inferred=config.data.num_classes is None)
    if config.softlabels.kept(num_classes) > num_classes:
        raise ConfigError(f"key 'softlabels.top_k': {config.softlabels.top_k} is more than the {num_classes} classes")
    ensemble(config, num_classes)
    rows = len(labels[train_key])
    for key in trained(config):
        workers = config.training_resources(key).max_workers
        workers_key = f"{config.training_resources_key(key)}.num_workers"
        rows_per_worker(f"{key}.train.batch_size", rows, workers, workers_key, config.trainable(key).train.batch_size)
    return num_classes


def ensemble(config: JobConfig, num_classes: int) -> None:
    """An ensemble's teachers combine exactly only where each entry keeps every class: top-k labels of fewer
    classes lose the logits the combination needs."""
    labels = config.softlabels
    kept = labels.kept(num_classes)
    if len(config.teachers()) > 1 and labels.format == "topk" and kept < num_classes:
        raise ConfigError(
            f"keys 'softlabels.format', 'softlabels.top_k' and 'teacher': an ensemble of {len(config.teachers())} "
            f"teachers combines their outputs on every class, but top-{kept} labels keep {kept} of the "
            f"{num_classes}: use 'softlabels.format: dense', 'softlabels.top_k: {num_classes}' (or leave it out), "
            "or one teacher"
        )


def same_input(splits: dict[str, Split]) -> None:
    """Every split has the training split's input column, of the same kind (``splits``: the train split first)."""
    (train_key, train), *others = splits.items()
    for key, split in others:
        if (split.column, split.kind, split.features) != (train.column, train.kind, train.features):
            raise ConfigError(
                f"key '{key}': split '{split.name}' of {split.uri} has a{'n' * (split.kind == 'image')} {split.kind} "
                f"input in column '{split.column}', but '{train_key}' has a{'n' * (train.kind == 'image')} "
                f"{train.kind} input in column '{train.column}'; every split needs the same input"
            )


def inputs(config: JobConfig, kind: InputKind, splits: dict[str, Split]) -> None:
    """The job asks nothing of its input kind that the kind cannot do, and the kind can use every row."""
    task = TASKS[config.task]
    if task.target not in (LABEL, *kind.columns):
        raise ConfigError(
            f"key 'task': the {task.name} task trains on the column '{task.target}' of each batch, which a "
            f"{kind.name} input does not prepare (it prepares {', '.join(kind.columns)} and the label of each row)"
        )
    if not kind.augments:
        asked = ["softlabels.views"] if config.softlabels.views else []
        asked += [f"{key}.train.augment" for key in trained(config) if config.trainable(key).train.augment]
        if asked:
            raise ConfigError(
                f"key '{asked[0]}': views and random crops and flips are image augmentations; a {kind.name} "
                f"input has none: set 'softlabels.views: 0' and 'train.augment: false' "
                f"(asked by {', '.join(map(repr, asked))})"
            )
    for split in splits.values():
        kind.check(split)


def slice_columns(columns: list[str], split: Split) -> None:
    """Each column of ``evaluate.slices`` is in every file of the evaluated split, is not its input, holds integers,
    strings or booleans (values to group by, not measurements), and at most ``MAX_SLICES`` of them in the rows in
    use."""
    if split.column in columns:
        raise ConfigError(f"key 'evaluate.slices': '{split.column}' is the input column; slice by a column beside it")
    for uri, _ in split.file_rows():
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
        if missing := [c for c in columns if c not in schema.names]:
            shown = ", ".join(schema.names[: SHOWN * 4])
            raise ConfigError(f"key 'evaluate.slices': {uri} has no column '{missing[0]}' (its columns: {shown})")
        for column in columns:
            kind = schema.field(column).type
            if not _category(kind.value_type if pa.types.is_dictionary(kind) else kind):
                raise ConfigError(
                    f"key 'evaluate.slices': column '{column}' of {uri} holds {kind} values; slices are made per "
                    "value of a column of integers, strings or booleans (a category)"
                )
    for column in columns:
        values = len(pc.unique(split.read_table([column])[column]))
        if values > MAX_SLICES:
            raise ConfigError(
                f"key 'evaluate.slices': column '{column}' of split '{split.name}' has {values:,} values, more than "
                f"the {MAX_SLICES} slices allowed per column (each value is a slice of every metric); slice by a "
                "coarser column"
            )


def trained(config: JobConfig) -> list[str]:
    """The keys of the models the job trains: each teacher without weights when stage 0 runs, the student when
    distill runs; none in an evaluation job."""
    if config.evaluate.models:
        return []
    stage0 = "train_teacher" in config.stages
    teachers = [
        key
        for key, teacher in config.teachers().items()
        if stage0 and not sources.given_weights(teacher.weights, teacher.name)
    ]
    return teachers + (["student"] if "distill" in config.stages else [])


def read_labels(key: str, split: Split) -> np.ndarray:
    """The split's labels (the Parquet schema says they are integers); refuses an empty split and missing labels."""
    column = split.read_table(["label"])["label"]
    if len(column) == 0:
        raise ConfigError(f"key '{key}': split '{split.name}' of {split.uri} has no rows")
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError(f"{row(split, first)}: no label")
    return column.to_numpy().astype(np.int64)


def unique_ids(split: Split) -> None:
    """Every row in use has an id and no two share one: soft labels are joined to their images by id."""
    ids = split.read_table(["id"])["id"]
    if ids.null_count:
        first = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError(f"{place(split, first)}: no id (each row needs a unique string id)")
    repeats = np.flatnonzero(ids.to_pandas().duplicated().to_numpy())  # rows whose id an earlier row has
    if len(repeats):
        id_ = ids[int(repeats[0])].as_py()
        first = pc.index(ids, id_).as_py()
        raise ConfigError(
            f"{place(split, int(repeats[0]))}: id '{id_}' is also the id of {place(split, first)} "
            f"({len(repeats)} row(s) of split '{split.name}' repeat an earlier id); ids must be unique within a split"
        )


def class_count(split: Split, labels: np.ndarray) -> int:
    """1 + the largest label, when every class from 0 to it occurs: labels that start at 1 (or skip a class)
    would otherwise add classes that no row has. At most ``MAX_CLASSES``: models are built with an output per
    class."""
    largest = int(labels.max())
    if largest >= MAX_CLASSES:
        raise ConfigError(
            f"{row(split, int(labels.argmax()))}: label {largest} would make {largest + 1} classes (1 + the largest "
            f"label), more than the {MAX_CLASSES:,} distkd builds models for; labels are class indices 0..C-1"
        )
    if largest < 1:
        raise ConfigError(
            f"key 'data.num_classes' (not set): split '{split.name}' of {split.uri} has no label above {largest}; "
            "labels are class indices 0..C-1 of at least 2 classes"
        )
    absent = np.setdiff1d(np.arange(largest + 1), labels)
    if len(absent):
        raise ConfigError(
            f"key 'data.num_classes' (not set): split '{split.name}' of {split.uri} has labels {int(labels.min())}"
            f"..{largest}, so the class count would be {largest + 1}, but class(es) {_few(absent.tolist())} never "
            "occur; use 0-based labels 0..C-1, or set 'data.num_classes' if those classes are truly absent here"
        )
    return largest + 1


def labels_in_range(split: Split, labels: np.ndarray, num_classes: int, inferred: bool) -> None:
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        source = "1 + the largest training label" if inferred else "'data.num_classes'"
        raise ConfigError(
            f"{row(split, int(outside[0]))}: label {labels[outside[0]]} is outside [0, {num_classes}) "
            f"({len(outside)} row(s) outside it in split '{split.name}'; the class count {num_classes} is {source})"
        )


def rows_per_worker(key: str, rows: int, workers: int, workers_key: str, batch_size: int) -> None:
    """Each training worker needs one full batch per epoch (partial batches are dropped)."""
    if rows // workers < batch_size:
        raise ConfigError(
            f"key '{key}': {rows} training rows over {workers} worker(s) ('{workers_key}') give "
            f"{rows // workers} per worker, fewer than the batch size {batch_size}, so no step would train; "
            f"use a batch size of at most {rows // workers}, fewer workers or more rows"
        )


def identity(key: str, name: str, code: tuple[str, ...]) -> str | None:
    """``sources.identity`` of the model at ``key``: the hash of a program's or folder's bytes, which reads them."""
    try:
        return sources.identity(name, code)
    except (sources.SourceError, OSError) as e:
        raise ConfigError(f"key '{key}.name': {storage.redact(_first_line(e))}") from None


def build(key: str, model: ModelSpec) -> nn.Module:
    """The model, built: a ``SourceError`` is the name's fault (a program or folder that does not load), any other
    error from its constructor means kwargs that cannot make it."""
    try:
        return model.build()
    except sources.SourceError as e:
        raise ConfigError(f"key '{key}.name': {e}") from None
    except Exception as e:  # noqa: BLE001 - a constructor raises what its arguments make it raise
        raise ConfigError(
            f"key '{key}.kwargs': cannot build '{model.name}' with {model.kwargs}: {_first_line(e)}"
        ) from None


def forward(
    key: str, model: nn.Module, shape: tuple[int, ...], num_classes: int, batch: torch.Tensor | None = None
) -> None:
    """One forward pass of a batch of the data's shape (``batch``: 2 rows of model input, None: zeros of ``shape``):
    kwargs that build a model need not make one that runs."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape) if batch is None else batch)
    except Exception as e:  # noqa: BLE001 - any failure here means the same: the model does not fit the data
        raise ConfigError(
            f"keys '{key}.name', '{key}.kwargs': the model fails on a batch of the data's shape "
            f"{list(shape)} (channels, height, width; or tokens of a text input): {_first_line(e)}"
        ) from None
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(
            f"keys '{key}.name', '{key}.kwargs': the model gives outputs of shape {list(out.shape)} for a batch "
            f"of 2, expected [2, {num_classes}] (one logit per class)"
        )


def weights(key: str, model: nn.Module, uri: str) -> None:
    """The state_dict at ``uri`` loads into ``model``: same parameter names and shapes."""
    try:
        state = read_state_dict(uri)
    except Exception as e:  # noqa: BLE001 - unreadable for any reason: not usable weights
        raise ConfigError(f"key '{key}': {uri}: not a PyTorch state_dict file ({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"key '{key}': {uri}: not a state_dict (a mapping of parameter names to tensors)")
    expected = model.state_dict()
    problems = []
    if missing := sorted(expected.keys() - state.keys()):
        problems.append(f"missing {_few(missing)}")
    if unexpected := sorted(state.keys() - expected.keys()):
        problems.append(f"unexpected {_few(unexpected)}")
    if resized := [k for k in expected if k in state and state[k].shape != expected[k].shape]:
        problems.append(
            "other shapes: " + _few([f"{k} {list(state[k].shape)} (model {list(expected[k].shape)})" for k in resized])
        )
    if problems:
        raise ConfigError(f"key '{key}': {uri} holds weights of another architecture or size: {'; '.join(problems)}")
    model.load_state_dict(state)


def local_store(uri: str) -> None:
    """The local store ``uri`` is a folder this process can create and write in. Probed by creating it and a
    temporary file in it, then removing exactly that file and the folders the probe created (so that
    ``distkd plan`` and a refused job leave nothing behind)."""
    path = Path(uri)
    created = [p for p in (path, *path.parents) if not os.path.exists(p)]  # deepest first
    found = (path, *path.parents)[len(created)]
    if not found.is_dir():
        where = "is a file" if found == path else f"is under {found}, which is a file"
        raise ConfigError(f"key 'store': {uri} {where}; expected a folder (or a path where one can be created)")
    probe = path / storage.temporary_name("probe")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.open("xb").close()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"key 'store': {uri}: cannot write there ({e.strerror or e})") from None
    finally:
        for folder in created:
            with suppress(OSError):  # not empty: another writer has started using it
                folder.rmdir()


def _category(kind: pa.DataType) -> bool:
    """Whether values of ``kind`` name categories: integers, strings or booleans."""
    return any(
        is_(kind) for is_ in (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string, pa.types.is_boolean)
    )


def _few(items: list) -> str:
    return ", ".join(map(str, items[:SHOWN])) + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")
