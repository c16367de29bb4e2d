"""What a job asks of the cluster, checked against what the cluster has once connected, before any work
is submitted: Ray would otherwise wait forever for GPUs or CPUs that no node has, and a local path on a
cluster of several machines names a different folder (or none) on each."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

from distkd import storage
from distkd.config import ConfigError, JobConfig, ResourcesConfig, Stage

# Folders mounted at the same path on every node (NFS, a cluster file system), separated by os.pathsep:
# local paths under them are shared, not the driver machine's own.
SHARED_ENV = "DISTKD_SHARED_PATHS"


def training_needs(resources: ResourcesConfig) -> dict[str, float]:
    """What one training run's Ray Train workers hold at most: CPUs and GPUs."""
    workers = resources.max_workers
    return {"CPU": workers * resources.cpus_per_worker, "GPU": workers * resources.use_gpu}


def at_once(per_run: dict[str, float], cluster: dict[str, float]) -> int:
    """How many runs needing ``per_run`` each the cluster holds at once (at least one)."""
    fits = [cluster.get(name, 0) // need for name, need in per_run.items() if need > 0]
    return max(1, int(min(fits, default=1)))


class ResourceShortage(RuntimeError):
    """A request no node or no sum of nodes of the cluster can ever satisfy."""


@dataclass(frozen=True)
class Request:
    key: str  # the job file's key(s) behind the request
    count: int  # workers or actors, all needed at once
    cpus: float  # each
    gpus: float  # each


def requests(config: JobConfig, stages: list[Stage]) -> list[Request]:
    """The gangs of workers or actors each asked-for stage needs at once."""
    soft, ev = config.softlabels, config.evaluate

    def training(model: str) -> Request:
        res = config.training_resources(model)
        key = config.training_resources_key(model)
        # Elastic training starts with as many workers as fit, at least its minimum.
        workers = res.num_workers if isinstance(res.num_workers, int) else res.num_workers[0]
        return Request(f"{key}.num_workers", workers, res.cpus_per_worker, 1.0 if res.use_gpu else 0.0)

    needed = {
        "train_teacher": [training(key) for key, teacher in config.teachers().items() if teacher.weights is None],
        "softlabels": [Request("softlabels.actors", soft.actors, soft.cpus_per_actor, soft.gpus_per_actor)],
        "distill": [training("student")],
        "evaluate": [Request("evaluate.actors", ev.actors, ev.cpus_per_actor, ev.gpus_per_actor)],
    }
    return [r for stage in stages for r in needed[stage]]


def shortage(request: Request, nodes: list[dict[str, float]]) -> str | None:
    """Why ``request`` can never be placed on ``nodes`` (each node's total resources), or None."""
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    have = f"the cluster has {total['CPU']:g} CPU and {total['GPU']:g} GPU on {len(nodes)} node(s)"
    for kind, each in (("CPU", request.cpus), ("GPU", request.gpus)):
        if each == 0:
            continue
        largest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        if each > largest:
            return f"key '{request.key}': each needs {each:g} {kind}, but no node has that many; {have}"
        fit = sum(int(n.get(kind, 0.0) // each) for n in nodes)
        if request.count > fit:
            return f"key '{request.key}': {request.count} x {each:g} {kind} asked, at most {fit} fit; {have}"
    return None


def local_paths(config: JobConfig) -> dict[str, str]:
    """key -> path for each location of the job that is a path on the driver's machine, not a URI."""
    models = {f"{key}.weights": teacher.weights for key, teacher in config.teachers().items()}
    models["student.weights"] = config.student.weights
    models.update({f"evaluate.models[{i}].weights": m.weights for i, m in enumerate(config.evaluate.models or [])})
    paths = {"store": config.store, "data.uri": config.data.uri, **models}
    return {key: storage.absolute(p) for key, p in paths.items() if p is not None and not storage.is_remote(p)}


def unshared(paths: dict[str, str], nodes: list[dict], shared: list[str]) -> str | None:
    """Why the local ``paths`` (key -> path) cannot serve a cluster whose alive ``nodes`` (``ray.nodes()``) are on
    several hosts (each node's NodeManagerAddress), or None; paths under a ``shared`` mount point are fine."""
    hosts = sorted({n["NodeManagerAddress"] for n in nodes if n["Alive"]})
    mounted = [os.path.join(os.path.abspath(m), "") for m in shared if m]
    local = {k: p for k, p in paths.items() if not any(os.path.join(p, "").startswith(m) for m in mounted)}
    if len(hosts) < 2 or not local:
        return None
    keys = ", ".join(f"key '{k}' ({p})" for k, p in local.items())
    return (
        f"{keys}: a local path, but the cluster's nodes are on {len(hosts)} hosts ({', '.join(hosts)}), each of "
        "which would read and write its own disk: use s3://bucket/prefix, or list the mount point of storage "
        f"mounted at the same path on every node in ${SHARED_ENV}"
    )


def check(config: JobConfig, stages: list[Stage]) -> None:
    """Raise ConfigError for local paths on a cluster of several hosts, and ResourceShortage naming the key and
    what the cluster has (call once connected)."""
    nodes = ray.nodes()
    if problem := unshared(local_paths(config), nodes, os.environ.get(SHARED_ENV, "").split(os.pathsep)):
        raise ConfigError(problem)
    totals = [node["Resources"] for node in nodes if node["Alive"]]
    problems = [p for r in requests(config, stages) if (p := shortage(r, totals))]
    if problems:
        raise ResourceShortage("the job asks for more than this cluster can ever give:\n  " + "\n  ".join(problems))
