"""What a job asks of the cluster, checked against what the cluster has once connected, before any work
is submitted: Ray would otherwise wait forever for GPUs or CPUs that no node has."""

from __future__ import annotations

from dataclasses import dataclass

import ray

from distkd.config import JobConfig, Stage


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
    res, soft = config.resources, config.softlabels
    # Elastic training starts with as many workers as fit, at least its minimum.
    workers = res.num_workers if isinstance(res.num_workers, int) else res.num_workers[0]
    training = Request("resources.num_workers", workers, res.cpus_per_worker, 1.0 if res.use_gpu else 0.0)
    needed = {
        "train_teacher": [training] if config.teacher.weights is None else [],
        "softlabels": [Request("softlabels.actors", soft.actors, soft.cpus_per_actor, soft.gpus_per_actor)],
        "distill": [training],
        "evaluate": [Request("evaluate.actors", config.evaluate.actors, 1.0, 0.0)],
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


def check(config: JobConfig, stages: list[Stage]) -> None:
    """Raise ResourceShortage naming the key and what the cluster has (call once connected)."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    problems = [p for r in requests(config, stages) if (p := shortage(r, nodes))]
    if problems:
        raise ResourceShortage("the job asks for more than this cluster can ever give:\n  " + "\n  ".join(problems))
