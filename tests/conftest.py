"""Shared fixtures: one real local Ray instance, one real S3-compatible server, the real CIFAR-10 shards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = Path(os.environ.get("DISTKD_CIFAR10", ROOT.parent / "shared" / "datasets" / "cifar10"))
BUCKET = "distkd-test"


@pytest.fixture(scope="session", autouse=True)
def content_hash_table(tmp_path_factory) -> None:
    """The remembered content hashes (distkd.content) in a folder of the session's own."""
    os.environ["DISTKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("distkd-cache"))


@pytest.fixture(scope="session")
def cifar10() -> Path:
    if not (CIFAR10 / "train-00000-of-00005.parquet").exists():
        pytest.fail(f"CIFAR-10 Parquet shards not found at {CIFAR10} (set DISTKD_CIFAR10)")
    return CIFAR10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1, reached through AWS_ENDPOINT_URL by boto3, pyarrow and Ray workers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("moto S3 server did not start")
            time.sleep(0.2)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray instance for the whole session (workers inherit the S3 endpoint)."""
    import ray

    from distkd.pipeline import connect

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    connect(None)
    yield
    ray.shutdown()
