"""Run a job's stages in order on a Ray cluster.

Every stage's output is content-addressed in the store: a stage whose output is committed is
skipped, and a stage that is not asked for must find its output committed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from distkd import resources, storage
from distkd.cluster import connect
from distkd.config import STAGES, Stage
from distkd.data import inputs
from distkd.distill.stage import students
from distkd.distill.teacher import teacher_weights
from distkd.evaluate.stage import evaluate
from distkd.job import Job
from distkd.softlabels import cache
from distkd.softlabels.stage import describe, generate
from distkd.specs import ModelSpec


def run(job: Job, stages: list[Stage] | None = None) -> dict[str, str]:
    """Stages up to the last one asked for; returns the URI of each output."""
    stages = stages or job.config.stages
    last = max(STAGES.index(s) for s in stages)
    connect(job.config.ray_address, job.config.code)
    resources.check(job.config, stages)
    inputs.make_ready(job.inputs)  # a text input's tokenizer, trained once, before any stage reads the data
    if job.checkpoints:  # an evaluation job: the checkpoints it names, nothing upstream
        return {"report": evaluate(job.eval_spec(job.checkpoints))}
    runs = [job.teacher_run(i) for i in range(len(job.teachers))]
    weights = [
        teacher_weights(run, "train_teacher" in stages) if run else job.teacher_weights_uri(i)
        for i, run in enumerate(runs)
    ]
    out = {t.role: uri for t, uri in zip(job.teachers, weights)}
    if last >= STAGES.index("softlabels"):
        labels = [job.softlabel_spec(uri, i=i) for i, uri in enumerate(weights)]  # each teacher's own entry
        out.update({t.labels: generate(spec, compute="softlabels" in stages) for t, spec in zip(job.teachers, labels)})
    if last >= STAGES.index("distill"):
        out.update(students(job.distilled_run(*labels), job.scratch_run(), compute="distill" in stages))
    if last >= STAGES.index("evaluate"):
        out["report"] = evaluate(job.eval_spec(evaluated_models(job, out)))
    return out


def evaluated_models(job: Job, out: dict[str, str]) -> dict[str, tuple[ModelSpec, str]]:
    """role -> (model, weights) for the teachers and the students among the outputs."""
    models = {"distilled": job.student, "scratch": job.student, **{t.role: t.model for t in job.teachers}}
    return {role: (models[role], uri) for role, uri in out.items() if role in models}


@dataclass(frozen=True)
class Step:
    stage: Stage
    name: str  # the output's name, as ``run`` returns it
    output: str  # its URI, or what decides it when an upstream output does not exist yet
    action: str  # reuse | compute | missing (not committed, and the stage is not asked for)
    detail: str = ""  # soft labels to compute: rows the teacher runs on, shards reused from which entries


def plan(job: Job, stages: list[Stage] | None = None) -> list[Step]:
    """What ``run`` would do, starting no work: each output's URI, and whether it is reused or computed.
    A key that hashes an upstream output's content is known only once that output exists."""
    stages = stages or job.config.stages
    last = max(STAGES.index(s) for s in stages)

    def step(stage: Stage, name: str, uri: str | None, upstream: str = "") -> Step:
        if uri is None:
            return Step(stage, name, f"(decided by the {upstream} output)", "compute" if stage in stages else "missing")
        action = "reuse" if storage.is_committed(uri) else "compute" if stage in stages else "missing"
        return Step(stage, name, uri, action)

    if job.checkpoints:
        return [step("evaluate", "report", job.eval_spec(job.checkpoints).uri)]
    teacher_runs = [job.teacher_run(i) for i in range(len(job.teachers))]
    weights = {t.role: job.teacher_weights_uri(i) for i, t in enumerate(job.teachers)}
    labels = [
        job.softlabel_spec(uri, i=i) if not run or storage.is_committed(run.uri) else None
        for i, (run, uri) in enumerate(zip(teacher_runs, weights.values()))
    ]
    students = {"distilled": job.distilled_run(*labels) if all(labels) else None, "scratch": job.scratch_run()}
    steps = [step("train_teacher", t.role, run.uri) for t, run in zip(job.teachers, teacher_runs) if run]
    if last >= STAGES.index("softlabels"):
        for t, spec in zip(job.teachers, labels):
            labelled = step("softlabels", t.labels, spec.uri if spec else None, t.role)
            if spec and labelled.action != "reuse":
                labelled = dataclasses.replace(labelled, detail=describe(cache.shard_plan(spec), spec))
            steps.append(labelled)
    if last >= STAGES.index("distill"):
        steps.append(step("distill", "distilled", students["distilled"] and students["distilled"].uri, "softlabels"))
        if students["scratch"]:
            steps.append(step("distill", "scratch", students["scratch"].uri))
    if last >= STAGES.index("evaluate"):
        runs = {name: run for name, run in students.items() if name == "distilled" or run}
        ready = all(run and storage.is_committed(run.uri) for run in runs.values())
        weights.update({name: run.weights_uri for name, run in runs.items() if ready})
        steps.append(
            step("evaluate", "report", job.eval_spec(evaluated_models(job, weights)).uri if ready else None, "distill")
        )
    return steps
