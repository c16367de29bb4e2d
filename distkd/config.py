"""Typed job configs, loaded from one YAML file and validated before any cluster work.

A job file names the data, the teacher, the student, the stages to run, the store and the
resources. Unknown keys and wrong types are errors that name the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distkd import storage

Stage = Literal["train_teacher", "softlabels", "distill", "evaluate"]
STAGES: tuple[Stage, ...] = ("train_teacher", "softlabels", "distill", "evaluate")


class ConfigError(ValueError):
    """A job file that cannot run: says which file, which key and what was expected."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(Strict):
    uri: str  # folder of Parquet shards named <split>-*.parquet with id, image, label
    train_split: str = "train"
    test_split: str = "test"
    limit: int | None = Field(default=None, gt=0)  # first N rows of each split
    val_limit: int | None = Field(default=2000, gt=0)  # first N test rows for per-epoch accuracy
    num_classes: int | None = Field(default=None, gt=1)  # None: 1 + the largest label
    class_names: list[str] | None = None  # for the report; None: the class indices
    mean: list[float] = Field(default=[0.4914, 0.4822, 0.4465], min_length=1)  # per channel
    std: list[float] = Field(default=[0.2470, 0.2435, 0.2616], min_length=1)
    # Training data: held decoded in the object store (memory), or read and decoded each epoch
    # (stream); auto: memory when the decoded pixels take under 25% of the object store.
    cache: Literal["auto", "memory", "stream"] = "auto"
    shuffle_buffer: int = Field(default=10_000, gt=0)  # samples each training worker shuffles locally

    @field_validator("uri")
    @classmethod
    def _absolute(cls, uri: str) -> str:
        return storage.absolute(uri)


class ModelConfig(Strict):
    name: str
    kwargs: dict[str, int | float | bool | str] = {}
    weights: str | None = None  # a state_dict file (path or URI); teacher: None trains one


class TrainConfig(Strict):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    augment: bool = True  # random crop (pad 4) + horizontal flip
    seed: int = 0


class TeacherConfig(ModelConfig):
    train: TrainConfig = TrainConfig()


class StudentConfig(ModelConfig):
    train: TrainConfig = TrainConfig()


class SoftLabelConfig(Strict):
    format: Literal["dense", "topk"] = "dense"
    dtype: Literal["float16", "float32"] = "float16"
    top_k: int | None = Field(default=None, gt=0)  # classes kept per row with format: topk
    temperature: float = Field(default=4.0, gt=0)  # of the stored top-k log-probabilities
    views: int = Field(default=0, ge=0)  # augmented views recorded per image (0: the clean image)
    view_seed: int = 0
    shard_rows: int = Field(default=10_000, gt=0)  # rows per shard; each shard commits on its own
    batch_size: int = Field(default=512, gt=0)
    actors: int = Field(default=1, gt=0)
    cpus_per_actor: float = Field(default=1.0, ge=0)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype on a GPU


class DistillConfig(Strict):
    alpha: float = Field(default=0.9, ge=0, le=1)  # weight of the KD term; 0 = from scratch
    temperature: float = Field(default=4.0, gt=0)
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


class ResourcesConfig(Strict):
    num_workers: int = Field(default=1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # training autocast on a GPU


class JobConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    store: str
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance
    stages: list[Stage] = list(STAGES)
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    softlabels: SoftLabelConfig = SoftLabelConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("store")
    @classmethod
    def _absolute(cls, uri: str) -> str:
        return storage.absolute(uri)


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {error['msg']} (got {error['input']!r})"


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
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse(raw, str(path))
