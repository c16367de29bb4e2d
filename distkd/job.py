"""A job made concrete: its config checked against the data, the models and the store, and the
content-derived names of everything it writes. Built on the driver, before Ray starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from distkd import checks, storage
from distkd.config import ConfigError, JobConfig, ModelConfig, TeacherConfig
from distkd.data import inputs
from distkd.data import tokenizer as tokenizers
from distkd.data.kinds import InputKind
from distkd.data.source import DataError, Split
from distkd.labels.ensemble import Ensemble
from distkd.models import sources, weights_hash
from distkd.specs import EvalSpec, ModelSpec, SoftLabelSpec, SoftTargets, TrainingRun, Weights
from distkd.tasks import TASKS, Task

Hasher = Callable[[str], str]  # weights URI -> sha256


@dataclass(frozen=True)
class Teacher:
    """One teacher of the job (the only one, or one of an ensemble), with its own run, weights and soft labels."""

    key: str  # the job file's: 'teacher', or 'teacher.0', 'teacher.1', ... of an ensemble
    model: ModelSpec
    config: TeacherConfig
    weight: float  # in the ensemble's target, normalised: a job's teachers' weights sum to 1

    @property
    def role(self) -> str:
        """Its name in the pipeline's outputs and the report: 'teacher', or 'teacher-0', 'teacher-1', ..."""
        return self.key.replace(".", "-")

    @property
    def labels(self) -> str:
        """The name of its soft labels among the pipeline's outputs: 'softlabels', or 'softlabels-0', ..."""
        return "softlabels" + self.role.removeprefix("teacher")


def reachable(source: str, key: str, uri: str, must_exist: bool, publishes: bool = False) -> None:
    """A ``ConfigError`` naming the key and the URI when the store at ``uri`` cannot be used (unreachable,
    no bucket, wrong credentials, nothing there, no create-if-absent writes where ``publishes``)."""
    try:
        storage.check(uri, must_exist=must_exist, publishes=publishes)
    except storage.StorageError as e:
        raise ConfigError(f"{source}: key '{key}': {e}") from None


@dataclass(frozen=True)
class Job:
    config: JobConfig
    train: Split
    val: Split  # per-epoch validation: the test split's first ``val_limit`` rows
    evaluated: Split  # the split the evaluate stage reports on
    num_classes: int
    inputs: InputKind  # what the input column becomes (data/inputs.py)
    teachers: tuple[Teacher, ...]  # one, or an ensemble's
    student: ModelSpec
    checkpoints: dict[str, tuple[ModelSpec, str]]  # evaluate.models: role -> (model, weights URI)

    @classmethod
    def prepare(cls, config: JobConfig, source: str = "job") -> Job:
        """Check what can be checked without a cluster; errors name the key or the URI."""
        data = config.data
        try:
            checks.settings(config)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        reachable(source, "store", config.store, must_exist=False, publishes=True)
        if not storage.is_remote(config.store):
            try:
                checks.local_store(config.store)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
        reachable(source, "data.uri", data.uri, must_exist=False)  # a missing split is named below
        try:
            find = inputs.finder(data)
            train, test, evaluated = (
                Split.open(data.uri, name, data.limit, find, data.label)
                for name in (data.train_split, data.test_split, config.evaluate.split or data.test_split)
            )
        except DataError as e:
            raise ConfigError(f"{source}: key 'data.uri': {e}") from None
        splits = {"data.train_split": dataclasses.replace(train, labelled=data.labelled_rows), "data.test_split": test}
        if evaluated != test:
            splits["evaluate.split"] = evaluated
        try:
            num_classes = checks.data(config, splits)
            checks.same_input(splits)
            kind = inputs.for_data(train, data, config.store)
            checks.inputs(config, kind, splits)
            num_classes = TASKS[config.task].classes(num_classes, kind)
            checks.classes(config, num_classes)
            if config.evaluate.slices:
                checks.slice_columns(config.evaluate.slices, evaluated)
        except (ConfigError, DataError) as e:
            raise ConfigError(f"{source}: {e}") from None
        if data.class_names is not None and len(data.class_names) != num_classes:
            raise ConfigError(
                f"{source}: key 'data.class_names': {len(data.class_names)} names for {num_classes} classes"
            )

        trained = checks.trained(config)
        task = TASKS[config.task]

        def spec(key: str, model: ModelConfig) -> ModelSpec:
            try:
                sources.check(model.name, config.code)
            except sources.SourceError as e:
                raise ConfigError(f"{source}: key '{key}.name': {e}") from None
            if key in trained and not sources.trainable(model.name):
                raise ConfigError(
                    f"{source}: key '{key}.name': '{model.name}' is a program, inference only: it can label as a "
                    "teacher or be evaluated, not be trained (name a built-in, torchvision, timm, hf or import model)"
                )
            if model.weights == sources.OWN:
                try:
                    sources.check_own(model.name, num_classes, config.task)
                except sources.SourceError as e:
                    raise ConfigError(f"{source}: key '{key}.weights': {e}") from None
            loads = model.weights not in (None, sources.OWN) and model.weights != sources.own_weights(model.name)
            if loads:
                reachable(source, f"{key}.weights", model.weights, must_exist=True)
            code = tuple(config.code)
            try:
                name = sources.absolute(model.name)
                reads = inputs.read_by(kind, sources.own_tokenizer(name), model.max_length)
            except (sources.SourceError, tokenizers.TokenizerError) as e:
                raise ConfigError(f"{source}: key '{key}.name': {e}") from None
            except ConfigError as e:
                raise ConfigError(f"{source}: key '{key}.max_length': {e}") from None
            kwargs = {**model.kwargs, **reads.model_kwargs()}
            try:
                checks.one_reading(task, key, model.name, reads, kind, train.input.kind)
                own = reads if reads is not kind else None
                identity = checks.identity(key, name, code)
                built = ModelSpec(name, kwargs, num_classes, reads.shape, identity, code, own, config.task)
                network = checks.build(key, built)
                batch = checks.example(key, network, reads, train)
                checks.forward(key, network, reads.shape, num_classes, batch, task)
                if loads:
                    checks.weights(f"{key}.weights", network, model.weights)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
            return built

        checkpoints = {
            m.role: (spec(f"evaluate.models.{i}", m), sources.given_weights(m.weights, m.name))
            for i, m in enumerate(config.evaluate.models or [])
        }
        if len(checkpoints) != len(config.evaluate.models or []):
            raise ConfigError(f"{source}: key 'evaluate.models': each model needs its own 'role'")
        if checkpoints and config.stages != ["evaluate"]:
            raise ConfigError(
                f"{source}: key 'stages': a job with 'evaluate.models' only evaluates them: use [evaluate]"
            )
        weights = config.weights()
        total = sum(weights.values())
        teachers = tuple(Teacher(key, spec(key, t), t, weights[key] / total) for key, t in config.teachers().items())
        student = spec("student", config.student)
        limits = [n for n in (data.val_limit, test.limit) if n is not None]
        val = dataclasses.replace(test, limit=min(limits, default=None))
        return cls(config, train, val, evaluated, num_classes, kind, teachers, student, checkpoints)

    @property
    def task(self) -> Task:
        """What the job's models learn (``task``)."""
        return TASKS[self.config.task]

    @property
    def labelled(self) -> Split:
        """The training split as the training runs read it: its labels past ``data.labelled_rows`` hidden (the soft
        labels read ``train``, every row, whatever labels the runs see: the setting never relabels)."""
        return dataclasses.replace(self.train, labelled=self.config.data.labelled_rows)

    @property
    def teacher(self) -> ModelSpec:
        """The teacher's model (the first teacher's, in an ensemble)."""
        return self.teachers[0].model

    # The specs of the stages. Each takes the upstream outputs it depends on (weights, a cache entry),
    # hashed by content through ``sha256`` (tests may pass a stand-in).

    def _run(self, role: str, key: str, model: ModelSpec, **kd: object) -> TrainingRun:
        """A training run of the model at ``key`` (a teacher's, or 'student')."""
        c = self.config
        resources = c.training_resources(key)
        reads = model.reads(self.inputs)
        common = (c.store, c.name, model, c.trainable(key).train, self.labelled, self.val, reads, resources)
        return TrainingRun(role, *common, c.data, c.tracking, self.task, **kd)

    def teacher_run(self, i: int = 0) -> TrainingRun | None:
        """Stage 0 of teacher ``i``, or None when the job gives its weights (or names a program, which holds
        them). Every teacher's run is a 'teacher' run, so an ensemble's teacher and the same teacher alone meet."""
        teacher = self.teachers[i]
        return None if self.given_teacher_weights(i) else self._run("teacher", teacher.key, teacher.model)

    def given_teacher_weights(self, i: int = 0) -> str | None:
        teacher = self.teachers[i].config
        return sources.given_weights(teacher.weights, teacher.name)

    def teacher_weights_uri(self, i: int = 0) -> str:
        run = self.teacher_run(i)
        return run.weights_uri if run else self.given_teacher_weights(i)

    def softlabel_spec(self, teacher_weights: str, sha256: Hasher = weights_hash, i: int = 0) -> SoftLabelSpec:
        """Stage 1 of teacher ``i``: its own entry, whatever other teachers the job has."""
        c = self.config.softlabels
        fmt = self.task.label_format(c, self.num_classes, self.config.distill.temperature)
        return SoftLabelSpec(
            store=self.config.store,
            teacher=Weights(self.teachers[i].model, teacher_weights, sha256(teacher_weights)),
            data=self.train,
            inputs=self.teachers[i].model.reads(self.inputs),
            format=fmt,
            views=c.views,
            view_seed=c.view_seed,
            shard_rows=c.shard_rows,
            precision=c.precision,
            execution=c,
            task=self.task,
        )

    def ensemble(self, members: tuple[str, ...]) -> Ensemble:
        """How the teachers combine (``softlabels.combine``); ``members`` name them."""
        return Ensemble(members, tuple(t.weight for t in self.teachers), self.config.softlabels.combine)

    def distilled_run(self, *softlabels: SoftLabelSpec) -> TrainingRun:
        """The student trained with the KD loss on the soft labels of each teacher, in order (on the labels alone
        when alpha is 0)."""
        if len(softlabels) != len(self.teachers):
            raise ValueError(f"{len(softlabels)} soft-label specs for {len(self.teachers)} teachers")
        d = self.config.distill
        kd = d.alpha > 0
        targets = SoftTargets(tuple(s.uri for s in softlabels), self.ensemble(tuple(s.key for s in softlabels)))
        return self._run(
            "student-kd",
            "student",
            self.student,
            distill=d if kd else None,
            softlabels=targets if kd else None,
            views=softlabels[0].views if kd else 0,
        )

    def scratch_run(self) -> TrainingRun | None:
        """The from-scratch baseline, when the job asks for it."""
        baseline = self.config.distill.baseline
        return self._run("student-scratch", "student", self.student) if baseline else None

    def eval_spec(self, models: dict[str, tuple[ModelSpec, str]], sha256: Hasher = weights_hash) -> EvalSpec:
        """Stage 3 over role -> (model, weights URI); with an ensemble's teachers among them, their combination
        too (role ``ensemble``), as the students' teacher."""
        c = self.config
        roles = tuple(t.role for t in self.teachers)
        ensemble = self.ensemble(roles) if len(roles) > 1 and set(roles) <= set(models) else None
        return EvalSpec(
            store=c.store,
            job=c.name,
            models={role: Weights(model, uri, sha256(uri)) for role, (model, uri) in models.items()},
            data=self.evaluated,
            inputs=self.inputs,
            class_names=tuple(c.data.class_names) if c.data.class_names else None,
            execution=c.evaluate,
            ensemble=ensemble,
            distill=c.distill,
            task=self.task,
        )
