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
from distkd.data import inputs as kinds
from distkd.data.inputs import InputKind
from distkd.data.places import place, row
from distkd.data.source import LABEL, UNLABELLED, Split, unlabelled
from distkd.methods.losses import LOSSES, Targets, defined_on_topk, reads_labels
from distkd.methods.optim import OPTIMIZERS, SCHEDULES
from distkd.models import sources
from distkd.models.columns import ColumnModel, Columns
from distkd.models.registry import read_state_dict
from distkd.models.sources import first_line as _first_line
from distkd.registry import Registry
from distkd.specs import ModelSpec
from distkd.tasks import CLASSIFICATION, TASKS, Task

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
    kinds.settings(config.data)
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
    """Every split has rows, unique ids and integer labels in ``[0, num_classes)``, the evaluated splits a label in
    every row, the training split a label in some for the models trained on labels alone, and the training settings
    fit the data; ``splits`` maps the key that names each split to it (the train split first). Returns the class
    count."""
    labels = {key: read_labels(key, split) for key, split in splits.items()}
    (train_key, train), *evaluated = splits.items()
    for key, split in evaluated:
        fully_labelled(key, split, labels[key])
    rows, labelled = len(labels[train_key]), int((labels[train_key] != UNLABELLED).sum())
    on_labels = labels_alone(config)
    if not labelled and (on_labels or config.data.num_classes is None):
        no_labels(train_key, train, on_labels)
    num_classes = config.data.num_classes or class_count(train, labels[train_key])
    for key, split in splits.items():
        unique_ids(split)
        labels_in_range(split, labels[key], num_classes, inferred=config.data.num_classes is None)
    kd_loss(config, train, labels[train_key])
    for key in trained(config):
        workers = config.training_resources(key).max_workers
        workers_key = f"{config.training_resources_key(key)}.num_workers"
        batch_size = config.trainable(key).train.batch_size
        n = labelled if key in on_labels else rows
        which = "labelled training rows" if n < rows else "training rows"
        rows_per_worker(f"{key}.train.batch_size", n, workers, workers_key, batch_size, which)
    return num_classes


def classes(config: JobConfig, num_classes: int) -> None:
    """The soft-label settings fit what the models predict one of (``Task.classes``: a class, a token)."""
    if config.softlabels.kept(num_classes) > num_classes:
        raise ConfigError(f"key 'softlabels.top_k': {config.softlabels.top_k} is more than the {num_classes} classes")
    ensemble(config, num_classes)


def labels_alone(config: JobConfig) -> list[str]:
    """The keys of the models the job trains on labels alone, which train on the labelled rows only: each teacher
    stage 0 trains, and the student when it trains a baseline (``distill.baseline``) or has alpha 0."""
    return [k for k in trained(config) if k != "student" or config.distill.baseline or config.distill.alpha == 0]


def no_labels(key: str, split: Split, models: list[str]) -> None:
    """Refuses a training split without a labelled row: for ``models`` (keys), which train on labels alone, or for
    the class count, which is 1 + the largest label unless ``data.num_classes`` says it."""
    hidden = split.labelled is not None and split.labelled < split.num_rows()
    why = f"'data.labelled_rows' is {split.labelled}" if hidden else f"its label column '{split.label}' is all null"
    needs = "the class count ('data.num_classes' not set) comes from its labels; set 'data.num_classes'"
    if models:
        learners = ", ".join(f"'{m}'" + (" (its baseline or alpha 0)" if m == "student" else "") for m in models)
        needs = (
            f"{learners} train{'s' * (len(models) == 1)} on labelled rows alone; label some rows (or raise "
            "'data.labelled_rows'), give the teacher's 'weights', or leave out the baseline"
        )
    raise ConfigError(f"key '{key}': split '{split.name}' of {split.uri} has no labelled row ({why}), but {needs}")


def fully_labelled(key: str, split: Split, labels: np.ndarray) -> None:
    """An evaluated split has a label in every row: models are scored against them."""
    if len(missing := np.flatnonzero(labels == UNLABELLED)):
        raise ConfigError(
            f"{row(split, int(missing[0]))}: no label ({len(missing)} row(s) of split '{split.name}', named by "
            f"'{key}', have none); an evaluated split needs a label in every row"
        )


def kd_loss(config: JobConfig, split: Split, labels: np.ndarray) -> None:
    """A KD loss that reads each row's label (DKD splits the target class off) needs one in every training row."""
    loss = config.distill.loss
    reads = reads_labels(loss.name, loss.kwargs, TASKS[config.task].losses)
    if "student" not in trained(config) or config.distill.alpha == 0 or not reads:
        return
    if len(missing := np.flatnonzero(labels == UNLABELLED)):
        raise ConfigError(
            f"key 'distill.loss': the '{loss.name}' loss reads each row's label, but {row(split, int(missing[0]))} "
            f"has none ({len(missing)} row(s) of split '{split.name}' without one); use the 'hinton' or 'dist' loss"
        )


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
    """Every split has the training split's kind of input, the same input as that kind means it (``Kind.same``:
    the same columns, by default; ``splits``: the train split first)."""
    (train_key, train), *others = splits.items()
    for key, split in others:
        if split.input.kind != train.input.kind or not kinds.INPUTS[train.input.kind].same(train.input, split.input):
            raise ConfigError(
                f"key '{key}': split '{split.name}' of {split.uri} has {_input(split)}, but '{train_key}' has "
                f"{_input(train)}; every split needs the same input"
            )


def _input(split: Split) -> str:
    """``an image input in column 'image'``, as a message says what a split's input is."""
    kind, columns = split.input.kind, split.input.columns
    where = f"column{'s' * (len(columns) > 1)} {_few([repr(c) for c in columns])}"
    return f"a{'n' * (kind[0] in 'aeiou')} {kind} input in {where}"


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
    if len(split.input.columns) == 1 and split.input.columns[0] in columns:  # an input of several columns: features
        raise ConfigError(
            f"key 'evaluate.slices': '{split.input.columns[0]}' is the input column; slice by a column beside it"
        )
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
        if stage0 and not (teacher.weights or sources.own_weights(teacher.name))  # 'own' resolved by spec: a Hub id
    ]
    return teachers + (["student"] if "distill" in config.stages else [])


def read_labels(key: str, split: Split) -> np.ndarray:
    """The split's labels, ``UNLABELLED`` where a row has none (null, or hidden by ``data.labelled_rows``); refuses
    an empty split and a negative label (the Parquet schema says they are integers)."""
    column = split.read_table([LABEL])[LABEL]
    if len(column) == 0:
        raise ConfigError(f"key '{key}': split '{split.name}' of {split.uri} has no rows")
    values = column.fill_null(0).to_numpy().astype(np.int64)
    if len(negative := np.flatnonzero(values < 0)):
        raise ConfigError(
            f"{row(split, int(negative[0]))}: label {values[negative[0]]} is negative ({len(negative)} row(s) of split "
            f"'{split.name}'); labels are class indices 0..C-1, and a row without a label holds null"
        )
    return np.where(unlabelled(column, 0, split.labelled), UNLABELLED, values)


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
    largest = int(labels.max())  # the labelled rows': UNLABELLED is below every class
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
    absent, smallest = np.setdiff1d(np.arange(largest + 1), labels), int(labels[labels != UNLABELLED].min())
    if len(absent):
        raise ConfigError(
            f"key 'data.num_classes' (not set): split '{split.name}' of {split.uri} has labels {smallest}"
            f"..{largest}, so the class count would be {largest + 1}, but class(es) {_few(absent.tolist())} never "
            "occur; use 0-based labels 0..C-1, or set 'data.num_classes' if those classes are truly absent here"
        )
    return largest + 1


def labels_in_range(split: Split, labels: np.ndarray, num_classes: int, inferred: bool) -> None:
    outside = np.flatnonzero(labels >= num_classes)  # no label is negative (``read_labels``)
    if len(outside):
        source = "1 + the largest training label" if inferred else "'data.num_classes'"
        raise ConfigError(
            f"{row(split, int(outside[0]))}: label {labels[outside[0]]} is outside [0, {num_classes}) "
            f"({len(outside)} row(s) outside it in split '{split.name}'; the class count {num_classes} is {source})"
        )


def rows_per_worker(
    key: str, rows: int, workers: int, workers_key: str, batch_size: int, which: str = "training rows"
) -> None:
    """Each training worker needs one full batch per epoch (partial batches are dropped); ``which``: what the rows
    are (a model trained on labels alone trains on the labelled rows)."""
    if rows // workers < batch_size:
        raise ConfigError(
            f"key '{key}': {rows} {which} over {workers} worker(s) ('{workers_key}') give "
            f"{rows // workers} per worker, fewer than the batch size {batch_size}, so no step would train; "
            f"use a batch size of at most {rows // workers}, fewer workers or more rows"
        )


def identity(key: str, name: str, code: tuple[str, ...]) -> str | None:
    """``sources.identity`` of the model at ``key``: the hash of a program's or folder's bytes, which reads them."""
    try:
        return sources.identity(name, code)
    except (sources.SourceError, OSError) as e:
        raise ConfigError(f"key '{key}.name': {storage.redact(_first_line(e))}") from None


def one_reading(task: Task, key: str, name: str, reads: InputKind, job: InputKind, kind: str) -> None:
    """Where the task needs every model to read the input alike (``Task.one_reading``: a language model's teacher
    and student predict the next token of one tokenizer, position by position), a ``ConfigError`` naming the
    model, its tokenizer and the job's (the ``kind`` input's setting, which the models without their own read
    with) unless the model at ``key`` reads the input as the job does."""
    if task.one_reading and reads.identity() != job.identity():
        setting = f"data.{kinds.INPUTS[kind].settings[0]}"
        raise ConfigError(
            f"key '{key}.name': '{name}' reads the text with {_reading(reads)}; the job's '{setting}', which the "
            f"models without a tokenizer of their own read with, is {_reading(job)}: the {task.name} task's "
            f"teacher and student must share the vocabulary and the tokens; name the model's tokenizer in "
            f"'{setting}.name' (hf:<its folder or .gguf file>) so that every model reads with it"
        )


def _reading(kind: InputKind) -> str:
    """A text reading as a message names it: its tokenizer's file, vocabulary and length."""
    tokenizer = kind.tokenizer
    return f"the tokenizer {tokenizer.uri} ({tokenizer.vocab_size - 1:,} tokens, cut at {tokenizer.max_length})"


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
    key: str,
    model: nn.Module,
    shape: tuple[int, ...],
    num_classes: int,
    batch: torch.Tensor | Columns | None = None,
    task: Task = CLASSIFICATION,
) -> None:
    """One forward pass of a batch of the data's shape (``batch``: 2 rows of model input, None: zeros of ``shape``):
    kwargs that build a model need not make one that runs, nor one with the ``task``'s outputs."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape) if batch is None else batch)
    except Exception as e:  # noqa: BLE001 - any failure here means the same: the model does not fit the data
        raise ConfigError(
            f"keys '{key}.name', '{key}.kwargs': the model fails on a batch of the data's shape "
            f"{list(shape)} (channels, height, width; or tokens of a text input): {_first_line(e)}"
        ) from None
    if tuple(out.shape) != (expected := task.output_shape(2, num_classes, shape)):
        raise ConfigError(
            f"keys '{key}.name', '{key}.kwargs': the model gives outputs of shape {list(out.shape)} for a batch "
            f"of 2, expected {list(expected)} ({task.outputs})"
        )


def example(key: str, model: nn.Module, kind: InputKind, split: Split) -> torch.Tensor | Columns:
    """What ``forward`` calls ``model`` with: 2 blank rows of the kind's model input, or for a model of the raw
    columns (a booster) the first 2 rows of ``split``, checked by ``model_columns``."""
    if isinstance(model, ColumnModel):
        return model_columns(key, model, split)
    return kind.model_input(kind.example(2), torch.device("cpu"))


def model_columns(key: str, model: ColumnModel, split: Split) -> Columns:
    """The first 2 rows of ``split`` as ``model`` reads them: each of its columns one of the job's feature columns
    (those missing named), the ones it reads as numbers holding numbers."""
    if missing := [c for c in model.columns if c not in split.input.columns]:
        raise ConfigError(
            f"key '{key}.name': the model reads columns that are not input columns of the data: {_few(missing)}; "
            f"the data's are {_few(list(split.input.columns))} ('data.features' names a tabular input's)"
        )
    rows = split.units(2)[0].read(model.columns)
    if text := [c for c in model.numeric if not _number(rows.schema.field(c).type)]:
        raise ConfigError(
            f"key '{key}.name': the model reads {_few(text)} as numbers; {split.files[0]} holds "
            f"{', '.join(str(rows.schema.field(c).type) for c in text[:SHOWN])} there"
        )
    return {c: rows[c].to_numpy(zero_copy_only=False) for c in model.columns}


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


def _number(kind: pa.DataType) -> bool:
    return any(is_(kind) for is_ in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean))


def _few(items: list) -> str:
    return ", ".join(map(str, items[:SHOWN])) + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")
