"""A job made concrete: its config checked against the data, the models and the store, and the
content-derived names of everything it writes. Built on the driver, before Ray starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from distkd import checks, storage
from distkd.config import ConfigError, JobConfig, ModelConfig
from distkd.data.source import DataError, Split, image_shape
from distkd.data.transforms import Normalize
from distkd.distill.train import ModelSpec
from distkd.models import MODELS


def _jsonable(obj: object) -> object:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):  # pydantic configs
        return obj.model_dump()
    raise TypeError(f"cannot hash a {type(obj).__name__}")


def digest(obj: object, length: int = 16) -> str:
    """A short, stable hash of JSON-able data, dataclasses and configs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_jsonable).encode()).hexdigest()[:length]


class MissingOutput(RuntimeError):
    """A stage's input that is not committed in the store and that this run may not compute."""


def require(compute: bool, uri: str, stage: str) -> None:
    if not compute:
        raise MissingOutput(
            f"{uri}: not committed; run the '{stage}' stage first (distkd {stage.replace('_', '-')} JOB.yaml)"
        )


@dataclass(frozen=True)
class Job:
    config: JobConfig
    train: Split
    test: Split  # per-epoch validation (its first ``val_limit`` rows)
    evaluated: Split  # the split the evaluate stage reports on
    num_classes: int
    normalize: Normalize
    teacher: ModelSpec
    student: ModelSpec
    checkpoints: dict[str, tuple[ModelSpec, str]]  # evaluate.models: role -> (model, weights)

    @classmethod
    def prepare(cls, config: JobConfig, source: str = "job") -> Job:
        """Check what can be checked without a cluster; errors name the key or the URI."""
        data = config.data
        try:
            train, test, evaluated = (
                Split.open(data.uri, name, data.limit)
                for name in (data.train_split, data.test_split, config.evaluate.split or data.test_split)
            )
        except DataError as e:
            raise ConfigError(f"{source}: key 'data.uri': {e}") from None
        splits = {"data.train_split": train, "data.test_split": test}
        if evaluated != test:
            splits["evaluate.split"] = evaluated
        try:
            num_classes = checks.data(config, splits)
            shape = image_shape(train, data.channels)
        except (ConfigError, DataError) as e:
            raise ConfigError(f"{source}: {e}") from None
        if data.class_names is not None and len(data.class_names) != num_classes:
            raise ConfigError(
                f"{source}: key 'data.class_names': {len(data.class_names)} names for {num_classes} classes"
            )
        if not len(data.mean) == len(data.std) == shape[0]:
            raise ConfigError(
                f"{source}: keys 'data.mean' and 'data.std' need {shape[0]} values (one per channel; "
                f"'data.channels' sets how many the images are decoded to)"
            )

        def spec(key: str, model: ModelConfig) -> ModelSpec:
            if model.name not in MODELS:
                raise ConfigError(
                    f"{source}: key '{key}.name': unknown model '{model.name}'; known: {', '.join(sorted(MODELS))}"
                )
            if model.weights is not None and not storage.exists(model.weights):
                raise ConfigError(f"{source}: key '{key}.weights': no file at {model.weights}")
            built = ModelSpec(model.name, dict(model.kwargs), num_classes, shape)
            try:
                network = built.build()
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{source}: key '{key}.kwargs': cannot build '{model.name}': {e}") from None
            try:
                checks.forward(key, network, shape, num_classes)
                if model.weights is not None:
                    checks.weights(f"{key}.weights", network, model.weights)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
            return built

        checkpoints = {
            m.role: (spec(f"evaluate.models.{i}", m), m.weights) for i, m in enumerate(config.evaluate.models or [])
        }
        if len(checkpoints) != len(config.evaluate.models or []):
            raise ConfigError(f"{source}: key 'evaluate.models': each model needs its own 'role'")
        if checkpoints and config.stages != ["evaluate"]:
            raise ConfigError(
                f"{source}: key 'stages': a job with 'evaluate.models' only evaluates them: use [evaluate]"
            )
        normalize = Normalize(tuple(data.mean), tuple(data.std))
        teacher, student = spec("teacher", config.teacher), spec("student", config.student)
        return cls(config, train, test, evaluated, num_classes, normalize, teacher, student, checkpoints)

    def uri(self, *parts: str) -> str:
        return storage.join(self.config.store, *parts)

    def run_uri(self, role: str, *inputs: object) -> str:
        """``<store>/runs/<job>-<role>-<hash of everything that shapes the run>``."""
        return self.uri("runs", f"{self.config.name}-{role}-{digest(inputs)}")
