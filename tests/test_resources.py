"""What distkd asks of Ray: a local instance bound to loopback, and jobs refused at once when they ask for
resources the cluster can never give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from distkd import cli

LISTENING = """
import json, psutil
from distkd.pipeline import connect
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
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", LISTENING],
        capture_output=True,
        text=True,
        timeout=600,  # Ray start-up on a loaded machine
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    sockets = json.loads(out.stdout.strip().splitlines()[-1])
    assert {name for name, _, _ in sockets} >= {"gcs_server", "raylet"}, sockets
    assert [s for s in sockets if s[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == []


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
        "softlabels.actors": {"stages": ["softlabels"], "softlabels": {"actors": 1, "gpus_per_actor": 1}},
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
