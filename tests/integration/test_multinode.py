"""A real two-node Ray cluster on 127.0.0.1, started as cluster/README.md says (`ray start --head` and
`ray start --address`, token authentication), driven only through subprocesses since this process holds
the session's own Ray: jobs submitted with `distkd submit` and with `ray job submit`, work spread over
both nodes, and the second node lost mid-way through the soft-label stage."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from distkd import address, labelstore, storage
from distkd.data.source import Split
from distkd.models import sources
from distkd.softlabels import cache
from tests.processes import command_line, descendants
from tests.seaweedfs import free_ports
from tests.unit.test_sources import user_code

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
DRIVER = ["distkd", "pipeline", "job.yaml"]  # the end of the command line of a job `distkd submit` started
SHIPPED_STUDENT = {"name": "import:shipped_students:Net", "train": {"epochs": 1, "batch_size": 50, "augment": False}}
NODE_CPUS = 3  # a training worker or a teacher actor takes 2: one of each per node, 1 CPU left for tasks
# Waits for a job in one process (``submit.wait``, as `distkd submit --follow` waits), printing its last status:
# a `distkd jobs status` a second started Python and Ray's client again each time, seconds of the CPUs the
# job itself runs on.
WAIT = """
import sys
from ray.job_submission import JobSubmissionClient
from distkd import submit
print(submit.wait(JobSubmissionClient(sys.argv[1]), sys.argv[2], float(sys.argv[3])))
"""


@dataclass
class Cluster:
    env: dict[str, str]
    gcs: str  # 127.0.0.1:PORT, for `ray start --address`
    dashboard: str  # http://127.0.0.1:PORT, for jobs
    temp_dir: Path

    def run(self, *command: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def node_ports(self) -> list[str]:
        flags = (
            "--node-manager-port",
            "--object-manager-port",
            "--metrics-export-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
        )
        return [f"{flag}={port}" for flag, port in zip(flags, free_ports(len(flags)))]

    def start_worker(self) -> subprocess.CompletedProcess:
        return self.run(
            str(BIN / "ray"),
            "start",
            f"--address={self.gcs}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={NODE_CPUS}",
            *self.node_ports(),
        )

    def logs(self) -> str:
        """The tails of the nodes' raylet and GCS logs: why a node did not come up."""
        logs = sorted(self.temp_dir.glob("session_latest/logs/*"))
        tails = [
            f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
            for p in logs
            if p.name.startswith(("raylet", "gcs_server")) and p.is_file()
        ]
        return "\n".join(tails)

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those that name its temp folder or its GCS port (``--gcs-address=IP:PORT``,
        ``--gcs_server_port=PORT``, ``--address=IP:PORT``) on their command line; workers exit with their raylet."""
        port = self.gcs.rsplit(":", 1)[1]

        def ours(cmdline: list[str]) -> bool:
            return any(
                str(self.temp_dir) in part
                or (("gcs" in part or part.startswith("--address=")) and part.rsplit(":", 1)[-1].split("=")[-1] == port)
                for part in cmdline
            )

        return [p for p in psutil.process_iter(["cmdline"]) if ours(p.info["cmdline"] or [])]

    def descendants(self) -> list[psutil.Process]:
        """Every process this cluster's started, such as a job's driver (not another test's of that name)."""
        return [child for parent in self.processes() for child in descendants(parent)]

    def raylets(self) -> list[psutil.Process]:
        return [p for p in self.processes() if p.name() == "raylet"]

    def kill_node(self, raylet: psutil.Process) -> None:
        """The node of ``raylet`` lost as a machine would be: the raylet and every process it started, SIGKILL."""
        for p in [raylet, *descendants(raylet)]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> None:
        """Only this cluster's processes and their children, such as the agents each raylet starts (``ray
        stop`` would stop every Ray instance on the machine)."""
        for p in [*self.processes(), *self.descendants()]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def cluster():
    # Ray's sockets live under its temp folder and a socket's path must fit in 107 bytes: a short folder in /tmp,
    # not pytest's (under pytest-xdist a test's tmp_path is longer by the worker's name)
    with tempfile.TemporaryDirectory(prefix="distkd-ray-", ignore_cleanup_errors=True) as tmp:
        yield from started_cluster(Path(tmp))


def started_cluster(folder: Path) -> Iterator[Cluster]:
    """Two nodes (`ray start --head`, then `ray start --address`) with token auth, their files in ``folder``."""
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "240",  # a loaded CI machine
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(ROOT),  # the head's job drivers import this checkout (a real cluster: pip install)
    }
    env.pop("RAY_ADDRESS", None)
    env.pop(address.CLUSTERS_ENV, None)  # "0" (left by earlier tests' in-process distkd commands) turns nodes off
    failures = []
    for attempt in range(3):  # a raylet has 30 s to register with the GCS: a loaded machine may miss it
        port, dashboard, client = free_ports(3)
        c = Cluster(env, f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", folder / f"t{attempt}")
        head = c.run(
            *(str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}"),
            *(f"--num-cpus={NODE_CPUS}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"),
            *(f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}", f"--temp-dir={c.temp_dir}"),
            *c.node_ports(),
        )
        worker = c.start_worker() if head.returncode == 0 else None
        if worker is not None and worker.returncode == 0 and len(c.raylets()) == 2:
            break
        failures.append(
            f"attempt {attempt}: head exit {head.returncode}, worker exit {worker and worker.returncode}, "
            f"raylets {c.raylets()}\n{head.stderr[-1500:]}\n{worker and worker.stdout[-1500:]}"
            f"\n{worker and worker.stderr[-1500:]}\n{c.logs()}"
        )
        c.stop()
    else:
        pytest.fail("no 2-node cluster came up:\n" + "\n\n".join(failures))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """Untrained ResNet-9 weights: the teacher's outputs need not be good to be cached and distilled."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet9-w4.pt"
    torch.save(sources.build("resnet9", 10, 3, 32, width=4).state_dict(), path)
    return path


def job_file(folder: Path, cifar10: Path, store: Path, teacher: Path, name: str, **sections) -> Path:
    raw = {
        "name": name,
        "store": str(store),
        "data": {"uri": str(cifar10), "limit": 200, "val_limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "weights": str(teacher)},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 50, "augment": False}},
        "softlabels": {"batch_size": 50, "shard_rows": 50, "actors": 2, "cpus_per_actor": 2},
        "distill": {"baseline": False},
        "resources": {"num_workers": 2, "cpus_per_worker": 2},
        **sections,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def actor_nodes(cluster: Cluster, marker: str) -> set[str]:
    """The nodes on which actors whose description mentions ``marker`` ran (Ray's state API)."""
    out = cluster.run(
        str(BIN / "ray"), "list", "actors", f"--address={cluster.gcs}", "--detail", "--format=json", "--limit=10000"
    )
    assert out.returncode == 0, out.stderr
    return {a["node_id"] for a in json.loads(out.stdout) if marker in json.dumps(a)}


@pytest.fixture(scope="module")
def submitted(cluster, cifar10, teacher, tmp_path_factory):
    """Soft labels and the distilled student, submitted with `distkd submit` (the report is the next test's,
    through `ray job submit`). The student is a class of the test's own (``code:``), whose file is removed
    once the job is submitted: both nodes' training workers build it from the copy `submit` shipped."""
    folder = tmp_path_factory.mktemp("submit")
    store, code = folder / "store", user_code(folder, "shipped_students")
    job = job_file(
        folder, cifar10, store, teacher, "two-nodes", stages=["softlabels", "distill"], code=[str(code)],
        student=SHIPPED_STUDENT,
    )  # fmt: skip
    out = cluster.run(str(BIN / "distkd"), "submit", str(job), "--address", cluster.dashboard)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    code.unlink()
    job_id = out.stdout.split()[1]
    wait_for(cluster, job_id, timeout=600)
    status = cluster.run(str(BIN / "distkd"), "jobs", "status", job_id, "--address", cluster.dashboard).stdout
    logs = cluster.run(str(BIN / "distkd"), "jobs", "logs", job_id, "--address", cluster.dashboard).stdout
    assert status.strip() == "SUCCEEDED", logs[-4000:]
    return store, logs


def test_distkd_submit_runs_the_pipeline_across_two_nodes(cluster, submitted):
    store, logs = submitted
    assert "[student-kd] done" in logs
    assert len(cluster.raylets()) == 2
    softlabels = [p for p in (store / "softlabels").iterdir() if cache.KEY.fullmatch(p.name)]  # not shards/, leases
    assert len(softlabels) == 1 and storage.is_committed(str(softlabels[0]))
    assert labelstore.manifest(str(softlabels[0])).rows == 200
    runs = list((store / "runs").iterdir())
    assert [p.name.split("-")[1] for p in runs] == ["kd"] and storage.is_committed(str(runs[0]))
    assert storage.read_json(str(runs[0] / "run.json"))["model"]["name"] == SHIPPED_STUDENT["name"]
    workers = storage.read_json(str(runs[0] / "history.json"))[-1]["workers"]
    assert len({w["node"] for w in workers}) == 2 and sum(w["samples"] for w in workers) == 200
    assert len(actor_nodes(cluster, "ShardWriter")) == 2
    listing = cluster.run(str(BIN / "distkd"), "jobs", "ls", "--address", cluster.dashboard)
    assert listing.returncode == 0 and "SUCCEEDED" in listing.stdout and "two-nodes" in listing.stdout


def test_ray_job_submit_runs_a_job_file(cluster, submitted, cifar10, teacher, tmp_path):
    """README's command: `ray job submit --working-dir . -- distkd pipeline JOB.yaml`, from a folder that
    holds the package and the job file (here: the whole job, so the soft labels and the student are
    reused and the report is made)."""
    store, _ = submitted
    code = user_code(tmp_path, "shipped_students")  # the same class: the same student, reused
    job_file(tmp_path, cifar10, store, teacher, "two-nodes", code=[code.name], student=SHIPPED_STUDENT)
    (tmp_path / "distkd").symlink_to(ROOT / "distkd")
    out = cluster.run(
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={cluster.dashboard}",
        "--working-dir",
        ".",
        "--",
        "distkd",
        "pipeline",
        "job.yaml",
        cwd=tmp_path,
        timeout=600,
    )
    output = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in output.lower(), output[-8000:]
    assert "reusing committed run" in out.stdout and "reusing cached soft labels" in out.stdout
    (report,) = (store / "reports").iterdir()
    assert storage.is_committed(str(report))
    assert [m["role"] for m in storage.read_json(str(report / "metrics.json"))["models"]] == ["teacher", "distilled"]


def test_second_node_lost_mid_softlabels_finishes_on_the_head(cluster, submitted, cifar10, teacher, tmp_path):
    store, _ = submitted
    job = job_file(
        tmp_path,
        cifar10,
        store,
        teacher,
        "lost-node",
        stages=["softlabels"],
        softlabels={"batch_size": 10, "shard_rows": 20, "actors": 2, "cpus_per_actor": 2, "views": 2},
    )
    out = cluster.run(str(BIN / "distkd"), "submit", str(job), "--address", cluster.dashboard)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[1]
    entries = store / "softlabels"
    deadline = time.time() + 300
    head = min(cluster.raylets(), key=lambda p: p.create_time())
    while time.time() < deadline:
        fresh = [p for p in entries.glob(f"{cache.SHARDS}/*/*.parquet") if p.stat().st_mtime > job.stat().st_mtime]
        if fresh:
            break
        time.sleep(0.2)
    assert fresh, "no shard was written"
    cluster.kill_node(next(r for r in cluster.raylets() if r.pid != head.pid))
    status = wait_for(cluster, job_id, timeout=max(1.0, deadline - time.time()))
    logs = cluster.run(str(BIN / "distkd"), "jobs", "logs", job_id, "--address", cluster.dashboard).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    entry = next(
        p
        for p in entries.iterdir()
        if cache.KEY.fullmatch(p.name) and any(f.stat().st_mtime > job.stat().st_mtime for f in p.rglob("*"))
    )
    ids = Split.open(str(cifar10), "train", 200).read_table(["id"])["id"].to_pylist()
    assert cache.verify(str(entry), ids).rows == 200  # every id exactly once
    assert cluster.start_worker().returncode == 0  # for whatever runs after


def wait_for(cluster: Cluster, job_id: str, timeout: float = 300) -> str:
    """The job's status once it finished, or its last one after ``timeout`` seconds."""
    out = cluster.run(sys.executable, "-c", WAIT, cluster.dashboard, job_id, str(timeout), timeout=timeout + 120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_killed_driver_rerun_computes_only_uncommitted_shards(cluster, submitted, cifar10, teacher, tmp_path):
    store, _ = submitted
    job = job_file(
        tmp_path, cifar10, store, teacher, "killed-driver", stages=["softlabels"],
        softlabels={"batch_size": 10, "shard_rows": 10, "actors": 1, "cpus_per_actor": 1, "view_seed": 7, "views": 2},
    )  # fmt: skip
    committed = set(labelstore.entries(str(store)))
    first = cluster.run(str(BIN / "distkd"), "submit", str(job), "--address", cluster.dashboard).stdout.split()[1]
    deadline, drivers, shards = time.time() + 300, [], []
    while time.time() < deadline and not shards:  # the driver, then its first shard: 20 shards to write
        drivers = drivers or [p for p in cluster.descendants() if command_line(p)[-3:] == DRIVER]
        shards = [
            p
            for p in (store / "softlabels").glob(f"{cache.SHARDS}/*/*.parquet")
            if p.stat().st_mtime > job.stat().st_mtime
        ]
        time.sleep(0.05)
    assert len(drivers) == 1 and shards, (drivers, shards, wait_for(cluster, first, timeout=1))
    drivers[0].send_signal(signal.SIGKILL)
    assert wait_for(cluster, first) == "FAILED"
    assert set(labelstore.entries(str(store))) == committed  # the killed driver committed no entry
    before = len([p for p in shards[0].parent.glob("*.parquet") if p.stat().st_mtime > job.stat().st_mtime])
    second = cluster.run(str(BIN / "distkd"), "submit", str(job), "--address", cluster.dashboard).stdout.split()[1]
    assert wait_for(cluster, second) == "SUCCEEDED"
    (entry,) = set(labelstore.entries(str(store))) - committed  # the same job's entry, committed by the rerun
    manifest = labelstore.manifest(entry)
    assert manifest.computed_shards == 20 - before < 20 and manifest.rows == 200
