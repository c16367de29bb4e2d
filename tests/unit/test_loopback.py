"""Every distkd command that may start a local Ray turns Ray's clusters off before Ray is first imported:
Ray reads the setting as it is imported, and a local instance would otherwise listen on the machine's address."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Runs the command in a process of its own; at the first `import ray` it prints the setting and exits.
PROBE = """
import os, sys
class FirstRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray":
            print("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=" + str(os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")))
            sys.stdout.flush()
            os._exit(0)
sys.meta_path.insert(0, FirstRay())
from distkd.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", [["pipeline"], ["sweep", "--grid", "student.train.seed=0,1"]])
def test_the_command_turns_clusters_off_before_ray_is_imported(tmp_path, cifar10, command):
    job = tmp_path / "job.yaml"
    raw = {
        "name": "j",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 100},
        "teacher": {"name": "lenet5"},
        "student": {"name": "lenet5", "train": {"augment": False, "batch_size": 10}},
    }
    job.write_text(yaml.safe_dump(raw))
    name, *options = command
    out = subprocess.run(
        [sys.executable, "-c", PROBE, name, str(job), *options], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in out.stdout, out.stdout + out.stderr[-2000:]
