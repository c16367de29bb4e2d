"""Ray jobs: submit a job file to a cluster through Ray's job submission API, and list, follow or stop jobs.

The runtime environment's ``working_dir`` carries the ``distkd`` package and the job file, its paths
made absolute where it was written (so a local store stays the same folder; a remote cluster needs
``s3://`` or shared paths). It carries no environment variables: credentials come from each node's own
environment. The cluster's nodes need distkd's dependencies (the image or ``pip install``).
With token authentication (Ray 2.60's default for ``ray start``), set ``RAY_AUTH_MODE=token`` and have the
cluster's token in ``~/.ray/auth_token`` (or ``$RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

import distkd
from distkd import storage
from distkd.config import JobConfig

JOB_FILE = "job.yaml"
CODE = "code"  # the working_dir's folder of the job's ``code:``
FINISHED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def entrypoint(command: str) -> str:
    """What runs on the head: ``command`` is ``pipeline`` or a stage command (``distill``, ...)."""
    return f"python -m distkd {command} {JOB_FILE}"


def resolved(job: JobConfig) -> dict:
    """The job as the cluster runs it: every path absolute (data and store already are), and no
    ``ray_address`` (the job's driver joins the cluster it runs on, through $RAY_ADDRESS)."""
    from distkd.models import sources  # torch: only for a submission, not for every `distkd jobs` command

    raw = job.model_dump(mode="json")
    raw["ray_address"] = None
    raw["code"] = [f"{CODE}/{Path(path).name}" for path in job.code]  # copied into the working_dir by ``package``
    teachers = raw["teacher"] if isinstance(raw["teacher"], list) else [raw["teacher"]]  # an ensemble, or one
    for model in (*teachers, raw["student"], *(raw["evaluate"]["models"] or [])):
        model["name"] = sources.absolute(model["name"])
        if model["weights"] is not None:
            model["weights"] = storage.absolute(model["weights"])
    return raw


def _not_source(folder: str, names: list[str]) -> set[str]:
    """What an install of distkd leaves out of the package: all but its Python sources, so a stray file in
    the package's folder (a ``.env``, a key) never travels to the cluster."""
    return {n for n in names if n == "__pycache__" or not (n.endswith(".py") or os.path.isdir(os.path.join(folder, n)))}


def package(job: JobConfig, folder: Path) -> Path:
    """A working_dir for the job: the distkd package (sources only), the job's ``code:`` (read on the head, where
    the job is checked and its models hashed) and the resolved job file."""
    shutil.copytree(Path(distkd.__file__).parent, folder / "distkd", ignore=_not_source)
    for path in map(Path, job.code):
        (folder / CODE).mkdir(exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, folder / CODE / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(path, folder / CODE / path.name)
    (folder / JOB_FILE).write_text(yaml.safe_dump(resolved(job), sort_keys=False))
    return folder


def submit(job: JobConfig, address: str, command: str = "pipeline") -> str:
    """Submit ``job`` to the cluster whose dashboard is at ``address``; returns the submission id."""
    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory(prefix="distkd-submit-") as folder:
        # the working_dir reaches every worker of the job on every node, as its current directory: the job
        # file's code paths (CODE/...) resolve there. (Ray 2.60's job client cannot ship a .py py_module.)
        return client.submit_job(
            entrypoint=entrypoint(command),
            runtime_env={"working_dir": str(package(job, Path(folder)))},
            metadata={"distkd_job": job.name, "distkd_command": command},
        )


def wait(client: JobSubmissionClient, job_id: str, timeout: float | None = None) -> JobStatus:
    """Poll until the job finishes (or ``timeout`` seconds pass); returns its last status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (status := client.get_job_status(job_id)) not in FINISHED:
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(1)
    return status


def listing(client: JobSubmissionClient) -> str:
    rows = [("SUBMISSION ID", "STATUS", "JOB", "ENTRYPOINT")]
    for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
        rows.append(
            (
                info.submission_id or info.job_id or "-",
                str(info.status),
                (info.metadata or {}).get("distkd_job", "-"),
                info.entrypoint,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]) for r in rows)
