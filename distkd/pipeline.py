"""Run a job's stages in order on a Ray cluster.

Every stage's output is content-addressed in the store: a stage whose output is committed is
skipped, and a stage that is not asked for must find its output committed.
"""

from __future__ import annotations

import os

import ray

from distkd.config import STAGES, Stage
from distkd.distill.stage import students, teacher_weights
from distkd.evaluate.stage import evaluate
from distkd.job import Job
from distkd.softlabels.stage import generate

FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local one."""
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # `limit` keeps the first rows
    context.raise_original_map_exception = True  # a DataError from a task reaches the driver as itself


def run(job: Job, stages: list[Stage] | None = None) -> dict[str, str]:
    """Stages up to the last one asked for; returns the URI of each output."""
    stages = stages or job.config.stages
    last = max(STAGES.index(s) for s in stages)
    connect(job.config.ray_address)
    if job.checkpoints:  # an evaluation job: the checkpoints it names, nothing upstream
        return {"report": evaluate(job, job.checkpoints)}
    out = {"teacher": teacher_weights(job, compute="train_teacher" in stages)}
    if last >= STAGES.index("softlabels"):
        out["softlabels"] = generate(job, out["teacher"], compute="softlabels" in stages)
    if last >= STAGES.index("distill"):
        out.update(students(job, out["softlabels"], compute="distill" in stages))
    if last >= STAGES.index("evaluate"):
        models = {
            role: (job.teacher if role == "teacher" else job.student, uri)
            for role, uri in out.items()
            if role != "softlabels"
        }
        out["report"] = evaluate(job, models)
    return out
