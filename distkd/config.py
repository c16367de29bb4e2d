"""Typed job configs, loaded from one YAML file and validated before any cluster work.

A job file names the data, the teacher, the student, the stages to run, the store and the
resources. Unknown keys and wrong types are errors that name the key and the file.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from distkd import address as ray_address
from distkd import storage

Stage = Literal["train_teacher", "softlabels", "distill", "evaluate"]
STAGES: tuple[Stage, ...] = ("train_teacher", "softlabels", "distill", "evaluate")


class ConfigError(ValueError):
    """A job file that cannot run: says which file, which key and what was expected."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


S = TypeVar("S", bound=Strict)


MAX_CLASSES = 100_000  # a model's output layer is allocated from the class count before anything reads the data
MAX_LENGTH = 8192  # tokens per row (a model's max_length, a tokenizer's): every batch of token ids is sized by it


class DataConfig(Strict):
    """The data: its shards, splits and labels, how training reads it, and the image kind's decoding. Any other key is
    an input kind's settings (``data.tokenizer``, ``data.features``), kept here as the job gives them: the kind
    declares their schema in its own module and ``checks.settings`` validates them against it (``validated``), so
    that a kind and its settings are added without a line here."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    uri: str  # folder of Parquet shards named <split>-*.parquet with id, the input (image or text), label
    train_split: str = "train"
    test_split: str = "test"
    limit: int | None = Field(default=None, gt=0)  # first N rows of each split
    val_limit: int | None = Field(default=2000, gt=0)  # first N test rows for per-epoch accuracy
    num_classes: int | None = Field(default=None, gt=1, le=MAX_CLASSES)  # None: 1 + the largest label
    class_names: list[str] | None = None  # for the report; None: the class indices
    channels: Literal[1, 3] | None = None  # None: as the first image (grayscale 1, else 3); 1 or 3 converts all
    mean: list[float] = Field(default=[0.4914, 0.4822, 0.4465], min_length=1)  # per channel
    std: list[float] = Field(default=[0.2470, 0.2435, 0.2616], min_length=1)
    # Training data: held decoded in the object store (memory), or read and decoded each epoch
    # (stream); auto: memory when the decoded pixels take under 25% of the object store.
    cache: Literal["auto", "memory", "stream"] = "auto"
    shuffle_buffer: int = Field(default=10_000, gt=0)  # samples a streamed worker shuffles locally (held: all rows)
    input_column: str | None = None  # None: the column an input kind looks for ('image', 'text', ...)
    label: str = "label"  # the column of integer class labels (null: a row without one)
    # Labels of the training split's first N rows (in the shards' order) only, the rest read as unlabelled, for
    # experiments on labelled data; None: every row with a label is labelled.
    labelled_rows: int | None = Field(default=None, ge=0)

    @field_validator("uri")
    @classmethod
    def _absolute(cls, uri: str) -> str:
        return storage.absolute(storage.validate(uri))

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in values):
            raise ValueError("needs finite numbers")
        return values

    @field_validator("std")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if not all(v > 0 for v in values):
            raise ValueError("needs positive numbers (inputs are divided by them)")
        return values


class ModelConfig(Strict):
    name: str
    kwargs: dict[str, int | float | bool | str] = {}
    weights: str | None = None  # a state_dict file (path or URI); teacher: None trains one
    max_length: int | None = Field(default=None, gt=0, le=MAX_LENGTH)  # a text model's tokens; None: the tokenizer's

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return storage.validate_named(name)

    @field_validator("weights")
    @classmethod
    def _valid_uri(cls, uri: str | None) -> str | None:
        return uri if uri is None else storage.validate(uri)


class Entry(Strict):
    """A registry entry picked by name, with its own keyword arguments (their defaults are the entry's own).
    Whether the name is registered and takes the arguments is checked against its registry before work
    (``checks.settings``); the schema holds only the names."""

    name: str
    kwargs: dict[str, int | float | bool | str] = {}


class OptimizerConfig(Entry):
    name: str = "sgd"  # methods/optim.py: sgd (momentum 0.9, Nesterov), adamw


class ScheduleConfig(Entry):
    name: str = "one_cycle"  # of lr over all epochs' rows: one_cycle, cosine


class TrainConfig(Strict):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.1, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: bool = True  # random crop (pad 4) + horizontal flip
    seed: int = 0


class ResourcesConfig(Strict):
    # Ray Train workers: a count, or [min, max] for elastic training (Ray Train starts with as many as the
    # cluster can give, at least min, and grows towards max from the latest checkpoint as nodes join).
    num_workers: int | list[int] = Field(default=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # training autocast on a GPU
    max_failures: int = Field(default=2, ge=-1)  # worker-group restarts from the latest checkpoint; -1: no limit

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, n: int | list[int]) -> int | list[int]:
        counts = [n, n] if isinstance(n, int) else n
        if len(counts) != 2 or not 1 <= counts[0] <= counts[1]:
            raise ValueError("expected a worker count >= 1, or [min, max] with 1 <= min <= max")
        return n

    @property
    def workers(self) -> int | tuple[int, int]:
        """As Ray Train's ``ScalingConfig.num_workers`` takes it."""
        return self.num_workers if isinstance(self.num_workers, int) else tuple(self.num_workers)

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[-1]


class TrainableConfig(ModelConfig):
    """A model the job may train: a teacher or the student."""

    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig | None = None  # of its training runs; None: the job's 'resources'


class TeacherConfig(TrainableConfig):
    """The teacher ('teacher' as a mapping), or one of an ensemble's: trained in stage 0 unless it has weights."""


class StudentConfig(TrainableConfig):
    """The student: distilled in stage 2, and trained from scratch beside it for the report."""


WEIGHT = 1.0  # a teacher's weight in the combined target: a single teacher's, and an ensemble's teacher's default


class EnsembleTeacherConfig(TeacherConfig):
    """One teacher of an ensemble ('teacher' as a list): its weight in the combined target (normalised over the
    ensemble's teachers to sum to 1)."""

    weight: float = Field(default=WEIGHT, gt=0, allow_inf_nan=False)


def _teacher_form(raw: object) -> str | None:
    """A mapping is one teacher, a list an ensemble (anything else matches neither: ``TEACHER_FORMS``)."""
    return "ensemble" if isinstance(raw, list) else "one" if isinstance(raw, dict | BaseModel) else None


TEACHER_FORMS = ("one", "ensemble")  # the union's tags: not keys of the job file, left out of its messages
Teachers = Annotated[
    Annotated[TeacherConfig, Tag("one")] | Annotated[list[EnsembleTeacherConfig], Tag("ensemble")],
    Discriminator(
        _teacher_form,
        custom_error_type="teacher_form",
        custom_error_message="expected a mapping (one teacher) or a list of mappings (an ensemble)",
    ),
]


class SoftLabelConfig(Strict):
    format: Literal["dense", "topk"] = "dense"
    dtype: Literal["float16", "float32", "uint8"] = "float16"  # uint8: a language model's topk labels alone
    top_k: int | None = Field(default=None, gt=0)  # classes kept per row with format: topk (None: every class)
    views: int = Field(default=0, ge=0)  # augmented views recorded per image (0: the clean image)
    view_seed: int = 0
    shard_rows: int = Field(default=10_000, gt=0)  # rows per shard; each shard commits on its own
    batch_size: int = Field(default=512, gt=0)
    actors: int = Field(default=1, gt=0)
    cpus_per_actor: float = Field(default=1.0, ge=0)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype on a GPU
    compile: bool = False  # torch.compile the teacher in each actor (its seconds reported apart; not in the key)
    # An ensemble's target, from its teachers' outputs (labels/ensemble.py): the weighted mean of their
    # probabilities at distill.temperature, or of their logits. Read only with several teachers.
    combine: Literal["probs", "logits"] = "probs"

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, raw: object) -> object:
        if isinstance(raw, dict) and "temperature" in raw:
            raise _refuse(
                "softlabels.temperature",
                "removed: top-k labels are stored at 'distill.temperature', the one temperature of a job; "
                f"remove this key and write 'distill.temperature: {raw['temperature']}' instead",
            )
        return raw

    def kept(self, num_classes: int) -> int:
        """Classes kept per row of top-k labels: ``top_k``, else every class."""
        return self.top_k or num_classes


class LossConfig(Entry):
    name: str = "hinton"  # methods/losses.py: hinton, dkd, dist; a language_model task: methods/token_losses.py
    standardize: bool = False  # z-score both sides' logits in the KD term (Sun et al., CVPR 2024)


class DistillConfig(Strict):
    alpha: float = Field(default=0.9, ge=0, le=1)  # weight of the KD term; 0 = from scratch
    # Of the KD term, and of the stored top-k labels' log-probabilities (so that they are distilled at the
    # temperature they were softened at).
    temperature: float = Field(default=4.0, gt=0)
    loss: LossConfig = LossConfig()
    # Epochs over which the KD term's weight rises linearly from 0 to alpha (DKD's recipe: 20 of 240); 0: none.
    warmup_epochs: float = Field(default=0, ge=0)
    baseline: bool = True  # also train the student from scratch, for the report


class EvaluatedModel(ModelConfig):
    role: str  # "teacher" is the one students are compared with
    weights: str


class EvaluateConfig(Strict):
    batch_size: int = Field(default=1024, gt=0)
    actors: int = Field(default=1, gt=0)
    cpus_per_actor: float = Field(default=1.0, ge=0)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    split: str | None = None  # None: data.test_split
    # Checkpoints to evaluate instead of the job's own teacher and students.
    models: list[EvaluatedModel] | None = Field(default=None, min_length=1)
    slices: list[str] = []  # columns of the data: every metric also per value of each


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


class TrackingConfig(Strict):
    mlflow: str | None = None  # an MLflow tracking URI: each training run logs its params and curves there

    @field_validator("mlflow")
    @classmethod
    def _installed(cls, uri: str | None) -> str | None:
        if uri is not None and not mlflow_installed():
            raise ValueError("mlflow is not installed (pip install mlflow), or leave the key out")
        return uri


class JobConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    store: str
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance
    stages: list[Stage] = Field(default=list(STAGES), min_length=1)
    task: str = "classification"  # what the models learn (tasks.py: classification, language_model)
    data: DataConfig
    teacher: Teachers  # a mapping: one teacher; a list: an ensemble
    student: StudentConfig
    softlabels: SoftLabelConfig = SoftLabelConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    # The user's model code for 'import:<module>:<callable>' names: .py files (a module each) and package folders,
    # put on the Python path locally and shipped to every node by 'distkd submit'.
    code: list[str] = []

    @field_validator("code")
    @classmethod
    def _existing(cls, paths: list[str]) -> list[str]:
        absent = [p for p in paths if not os.path.exists(p)]
        if absent:
            raise ValueError(f"no such file or folder: {', '.join(absent)} (expected .py files or package folders)")
        return [os.path.abspath(p) for p in paths]

    @field_validator("teacher")
    @classmethod
    def _ensemble(cls, teacher: TeacherConfig | list[EnsembleTeacherConfig]) -> TeacherConfig | list:
        if not isinstance(teacher, list):
            return teacher
        if len(teacher) < 2:
            raise ValueError(
                f"an ensemble is a list of at least 2 teachers, got {len(teacher)}; give one teacher as a mapping"
            )
        if not math.isfinite(total := sum(t.weight for t in teacher)):
            raise ValueError(
                f"the teachers' weights sum to {total}, which is not a finite number; they are normalised to sum "
                "to 1, so only their ratios count: use smaller weights"
            )
        seen: dict[str, int] = {}
        for i, t in enumerate(teacher):
            same = t.model_dump_json(exclude={"weight"})
            if same in seen:
                raise ValueError(
                    f"'teacher.{seen[same]}' and 'teacher.{i}' are the same teacher (one run, one set of soft "
                    "labels): give it once, with the sum of their weights"
                )
            seen[same] = i
        return teacher

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, address: str | None) -> str | None:
        if address is not None and (problem := ray_address.malformed(address)):
            raise ValueError(problem)
        return address

    @field_validator("store")
    @classmethod
    def _committable(cls, uri: str) -> str:
        """Outputs commit by create-if-absent writes (``storage.publish``), which only a local folder and S3 make."""
        uri = storage.validate(uri)
        if storage.is_remote(uri) and not storage.is_s3(uri):
            raise ValueError(
                f"{uri.partition(':')[0]}:// cannot hold a store: its outputs are committed by create-if-absent "
                "writes, which distkd makes in a local folder (a path or file://) or on s3://bucket/prefix"
            )
        return storage.absolute(uri)

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        """Settings that each make sense alone but not together."""
        labels, distill = self.softlabels, self.distill
        if labels.top_k is not None and labels.format == "dense":
            raise _refuse("softlabels.top_k", "only used with 'softlabels.format: topk'; remove it or set that format")
        if self.evaluate.models:  # an evaluation job trains nothing
            return self
        if distill.alpha == 0 and labels.views > 0:
            raise _refuse(
                "softlabels.views",
                "views are soft labels for distillation, but 'distill.alpha' is 0 (no distillation): "
                "set 'softlabels.views: 0' or 'distill.alpha' above 0",
            )
        if distill.alpha > 0 and labels.views == 0 and self.student.train.augment:
            raise _refuse(
                "student.train.augment",
                "the distilled student would train on random crops and flips against soft labels of the clean "
                "images: set 'softlabels.views: N' (N augmented views, each with its own label) or "
                "'student.train.augment: false'",
            )
        return self

    def teachers(self) -> dict[str, TeacherConfig]:
        """Each teacher by the key that names it in messages: 'teacher', or 'teacher.0', 'teacher.1', ... of an
        ensemble."""
        if isinstance(self.teacher, list):
            return {f"teacher.{i}": t for i, t in enumerate(self.teacher)}
        return {"teacher": self.teacher}

    def weights(self) -> dict[str, float]:
        """Each teacher's weight in the combined target, as given (a single teacher's: ``WEIGHT``), by its key."""
        return {key: getattr(t, "weight", WEIGHT) for key, t in self.teachers().items()}

    def trainable(self, key: str) -> TrainableConfig:
        """The model at ``key``: 'student', or a key of ``teachers``."""
        return self.student if key == "student" else self.teachers()[key]

    def training_resources(self, key: str) -> ResourcesConfig:
        """What the training runs of the model at ``key`` ('student', or a teacher's key) hold: its own
        'resources', else the job's."""
        return self.trainable(key).resources or self.resources

    def training_resources_key(self, key: str) -> str:
        """The job file's key that ``training_resources`` reads, for messages."""
        return f"{key}.resources" if self.trainable(key).resources else "resources"


def _refuse(key: str, message: str) -> PydanticCustomError:
    """A rule across keys, reported under ``key`` (a dotted path from the top level)."""
    return PydanticCustomError("job_rule", "{message}", {"key": key, "message": message})


def _describe(error: dict) -> str:
    if error["type"] == "job_rule":
        return f"key '{error['ctx']['key']}': {error['msg']}"
    loc = [part for part in error["loc"] if part not in TEACHER_FORMS]
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    got = storage.redact(error["input"]) if isinstance(error["input"], str) else error["input"]
    message = storage.redact(error["msg"].removeprefix("Value error, "))  # a validator's own message
    return f"key '{key}': {message} (got {got!r})"


def validated(schema: type[S], raw: object, key: str) -> S:
    """``raw`` validated by ``schema``: settings declared outside this schema (an input kind's, at ``key``), refused
    with the messages of the job file's own keys."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        prefix = tuple(key.split("."))
        raise ConfigError("; ".join(_describe({**err, "loc": (*prefix, *err["loc"])}) for err in e.errors())) from None


def parse(raw: object, source: str) -> JobConfig:
    """Validate an already-loaded mapping; ``source`` names it in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as e:
        problems = "\n  ".join(_describe(err) for err in e.errors())
        raise ConfigError(f"{source}: invalid job file:\n  {problems}") from None


def load(path: str | Path) -> JobConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: job file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start} is {e.object[e.start]:#04x})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse(raw, str(path))
