"""Shared fixtures: one real local Ray instance, one real S3 server (SeaweedFS), the real CIFAR-10 and review
shards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.seaweedfs import SeaweedFS, seaweedfs

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = Path(os.environ.get("DISTKD_CIFAR10", ROOT.parent / "shared" / "datasets" / "cifar10"))
REVIEWS = Path(os.environ.get("DISTKD_REVIEWS", ROOT.parent / "shared" / "datasets" / "womens-reviews"))
BUCKET = "distkd-test"
BIN = Path(sys.executable).parent  # the environment's own commands (ray, distkd, weed)


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread for torch in each test process: the tests' tensors are tiny, and a second thread's
    wake-ups and spin-waits cost more than it computes (the unit tier took 69 CPU seconds with torch's default
    of one thread a core on 2 cores, 40 with one). distkd's Ray actors set their own thread counts.

    Ray's token (Ray 2.60 turns token authentication on) is made once, here, before pytest-xdist starts its
    workers: each worker's first ``ray.init`` would otherwise write ~/.ray/auth_token of its own on a fresh
    machine, and a process joining one worker's Ray could read the other's.

    Ray Train's preemption watcher is off: an actor a run that watches for nodes a cloud reclaims, which this
    machine's never are; 0.8 of the 11 CPU s a trivial run costs (benchmarks/train_settings.py), and the suite
    starts about 40 runs. Set before any Ray starts, so the test processes, their Ray workers and the `ray start`
    clusters inherit it."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), not an xdist worker
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def content_hash_table(tmp_path_factory) -> None:
    """The remembered content hashes (distkd.content) in a folder of the session's own."""
    os.environ["DISTKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("distkd-cache"))


@pytest.fixture(scope="session")
def cifar10() -> Path:
    if not (CIFAR10 / "train-00000-of-00005.parquet").exists():
        pytest.fail(f"CIFAR-10 Parquet shards not found at {CIFAR10} (set DISTKD_CIFAR10)")
    return CIFAR10


@pytest.fixture(scope="session")
def reviews() -> Path:
    """The women's clothing reviews (text, the star rating as the label, the product's department beside)."""
    if not (REVIEWS / "test-00000-of-00001.parquet").exists():
        pytest.fail(f"womens-reviews Parquet shards not found at {REVIEWS} (set DISTKD_REVIEWS)")
    return REVIEWS


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server on 127.0.0.1 with bucket BUCKET, reached by boto3, pyarrow and local Ray workers
    through AWS_ENDPOINT_URL and the keys it checks, set in this process's environment for the session."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs") / "server", (BUCKET,)) as server:
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        yield server
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RayWatch:
    """Whether a command started or joined Ray. ``ray.init`` and ``cluster.connect`` (distkd's one way in) are
    recorded instead of made; and as Ray may already be up in this process (the integration tests share one
    instance), a Ray that came up since the watch began counts too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ray

        from distkd import cluster

        self.joins: list[str] = []
        self.was_up = ray.is_initialized()
        monkeypatch.setattr(ray, "init", lambda *a, **k: self.joins.append("ray.init"))
        monkeypatch.setattr(cluster, "connect", lambda *a, **k: self.joins.append("cluster.connect"))

    def joined(self) -> bool:
        import ray

        return bool(self.joins) or (not self.was_up and ray.is_initialized())


@pytest.fixture
def ray_watch(monkeypatch) -> RayWatch:
    """For tests of what is refused before any cluster work."""
    return RayWatch(monkeypatch)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray instance for the whole session; its workers inherit this process's environment (the
    node's own S3 endpoint and keys), which is how a node gets credentials: never through runtime_env."""
    import ray

    from distkd.cluster import connect

    # "local": never join a cluster some other test process started with `ray start` (pytest-xdist workers
    # run beside each other, and `ray.init()` without an address joins the machine's latest such cluster)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    connect(None)
    yield
    ray.shutdown()
