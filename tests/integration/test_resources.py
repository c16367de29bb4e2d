"""What distkd asks of Ray: a local instance bound to loopback, and jobs refused at once when they ask for
resources the cluster can never give."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distkd import address, cli, cluster, config, resources
from tests.seaweedfs import free_ports

ROOT = Path(__file__).resolve().parents[2]
LISTENING = """
import json, psutil
from distkd import address
address.loopback_only(None)  # as the distkd command does, before Ray is imported
from distkd.cluster import connect
connect(None)
ours = psutil.Process().children(recursive=True)
sockets = [
    (p.name(), c.laddr.ip, c.laddr.port) for p in ours for c in p.net_connections("inet") if c.status == "LISTEN"
]
print(json.dumps(sockets))
"""


def test_local_ray_listens_on_loopback_only():
    """Every listening socket of the Ray processes a local run starts (GCS, raylet, object manager,
    agents, workers) is on 127.0.0.1."""
    out = subprocess.run(
        [sys.executable, "-c", LISTENING],
        capture_output=True,
        text=True,
        timeout=600,  # Ray start-up on a loaded machine
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    sockets = json.loads(out.stdout.strip().splitlines()[-1])
    assert {name for name, _, _ in sockets} >= {"gcs_server", "raylet"}, sockets
    assert [s for s in sockets if s[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == []


def test_a_local_instance_that_would_listen_beyond_loopback_is_refused():
    """Ray imported before clusters were turned off resolves 127.0.0.1 to the machine's address: no Ray starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the address Ray would resolve to
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the route's source address
            routed = probe.getsockname()[0]
        except OSError:  # no route at all
            routed = "127.0.0.1"
    if routed.startswith("127."):
        pytest.skip("this machine has no address but the loopback one")
    script = "import ray\nfrom distkd.cluster import connect\nconnect(None)"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", address.CLUSTERS_ENV)},
    )
    refusal = f"not on 127.0.0.1 only: set {address.CLUSTERS_ENV}=0 before Ray is imported"
    assert out.returncode == 1 and refusal in out.stderr, out.stderr


def job_file(tmp_path: Path, cifar10: Path, **sections) -> Path:
    raw = {
        "name": "greedy",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 100},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"batch_size": 20}},
        "student": {"name": "lenet5", "train": {"augment": False, "batch_size": 20}},
        **sections,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_jobs_asking_for_what_the_cluster_lacks_fail_at_once(ray_cluster, cifar10, tmp_path, capsys):
    """The session's cluster: 2 CPUs, no GPU."""
    cases = {
        "resources.num_workers": {"resources": {"use_gpu": True}},
        "resources.num_workers ": {"resources": {"num_workers": 3}},
        "softlabels.actors": {
            "stages": ["train_teacher", "softlabels"],
            "softlabels": {"actors": 1, "gpus_per_actor": 1},
        },
        "resources.num_workers  ": {"resources": {"num_workers": [3, 4]}},
    }
    for key, sections in cases.items():
        started = time.monotonic()
        assert cli.main(["pipeline", str(job_file(tmp_path, cifar10, **sections))]) == 2
        assert time.monotonic() - started < 30
        err = capsys.readouterr().err
        assert f"key '{key.strip()}'" in err and "the cluster has 2 CPU and 0 GPU on 1 node(s)" in err, err
    # each worker larger than any node
    assert cli.main(["pipeline", str(job_file(tmp_path, cifar10, resources={"cpus_per_worker": 4}))]) == 2
    assert "each needs 4 CPU, but no node has that many" in capsys.readouterr().err


def parsed(**sections) -> config.JobConfig:
    raw = {
        "name": "j",
        "store": "/data/store",
        "data": {"uri": "/data/cifar10"},
        "teacher": {"name": "resnet9", "weights": "/data/teacher.pt"},
        "student": {"name": "lenet5", "train": {"augment": False}},
        **sections,
    }
    return config.parse(raw, "<job>")


def node(host: str, alive: bool = True, cpus: float = 2.0) -> dict:
    """What ``ray.nodes()`` says of a node (the keys distkd reads)."""
    return {"NodeManagerAddress": host, "Alive": alive, "Resources": {"CPU": cpus}}


def test_local_paths_are_refused_on_a_cluster_of_several_hosts():
    """A node writes a local store to its own disk; nodes on one host (as in test_multinode) share it."""
    job = parsed()
    paths = resources.local_paths(job)
    assert paths == {"store": "/data/store", "data.uri": "/data/cifar10", "teacher.weights": "/data/teacher.pt"}
    one_host = [node("127.0.0.1"), node("127.0.0.1"), node("10.0.0.2", alive=False)]
    assert resources.unshared(paths, one_host, []) is None
    problem = resources.unshared(paths, [node("10.0.0.1"), node("10.0.0.2")], [])
    assert problem.startswith("key 'store' (/data/store), key 'data.uri' (/data/cifar10), key 'teacher.weights'")
    assert "2 hosts (10.0.0.1, 10.0.0.2)" in problem and "s3://" in problem and resources.SHARED_ENV in problem
    assert resources.unshared(paths, [node("10.0.0.1"), node("10.0.0.2")], ["/data/"]) is None  # a shared mount
    assert "key 'store'" in resources.unshared(paths, [node("10.0.0.1"), node("10.0.0.2")], ["/dat"])
    remote = parsed(store="s3://bucket/store", data={"uri": "s3://bucket/cifar10"})
    assert resources.local_paths(remote) == {"teacher.weights": "/data/teacher.pt"}


def test_the_checks_once_connected_refuse_local_paths_on_several_hosts(monkeypatch):
    monkeypatch.setattr(resources.ray, "nodes", lambda: [node("10.0.0.1"), node("10.0.0.2")])
    with pytest.raises(config.ConfigError, match=r"^key 'store' \(/data/store\).*on 2 hosts"):
        resources.check(parsed(), ["softlabels"])
    monkeypatch.setenv(resources.SHARED_ENV, f"/elsewhere{os.pathsep}/data")
    resources.check(parsed(), ["softlabels"])


def test_evaluation_actors_count_in_the_resource_check(monkeypatch):
    """``evaluate.gpus_per_actor: 0.5`` on a CPU cluster would hang after every other stage ran."""
    monkeypatch.setattr(resources.ray, "nodes", lambda: [node("127.0.0.1")])
    job = parsed(evaluate={"actors": 2, "cpus_per_actor": 1, "gpus_per_actor": 0.5})
    with pytest.raises(resources.ResourceShortage, match="key 'evaluate.actors': each needs 0.5 GPU, but no node"):
        resources.check(job, ["evaluate"])
    with pytest.raises(resources.ResourceShortage, match="key 'evaluate.actors': 2 x 1.5 CPU asked, at most 1 fit"):
        resources.check(parsed(evaluate={"actors": 2, "cpus_per_actor": 1.5}), ["evaluate"])
    resources.check(parsed(evaluate={"actors": 2, "cpus_per_actor": 1}), ["evaluate"])


def test_malformed_ray_addresses_are_refused_in_the_job_file():
    for good in ("auto", "local", "10.0.0.1:6379", "head-0.ray.svc:6379", "ray://head:10001", "[::1]:6379"):
        assert parsed(ray_address=good).ray_address == good
    for bad in ("localhost", "http://127.0.0.1:8265", "10.0.0.1:0", "head:99999", "ray://head", "a b:1"):
        with pytest.raises(config.ConfigError, match=r"key 'ray_address': not a Ray address: expected 'auto'"):
            parsed(ray_address=bad)
    with pytest.raises(config.ConfigError, match=r"\$RAY_ADDRESS: not a Ray address"):
        cluster.joinable("head", "$RAY_ADDRESS")


def test_an_unreachable_ray_address_is_refused_within_seconds(cifar10, tmp_path):
    """Nothing listens at the address: one line naming the key and the address, exit code 2, no Ray started."""
    (port,) = free_ports(1)
    path = job_file(tmp_path, cifar10, ray_address=f"127.0.0.1:{port}")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "distkd", "pipeline", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        f"distkd: {path}: key 'ray_address': nothing answers at 127.0.0.1:{port} (connection refused): "
        "start the cluster (`ray start --head`) or fix the address"
    ]
    assert time.monotonic() - started < 120  # the imports and the checks of the job, on a loaded machine
    assert address.unreachable(f"127.0.0.1:{port}", timeout=1.0).startswith(f"nothing answers at 127.0.0.1:{port}")
