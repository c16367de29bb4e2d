"""What `distkd submit` ships: the package and the job file with absolute paths, and nothing else."""

from __future__ import annotations

import os

import yaml

import distkd
from distkd import cli, cluster, config, submit


def test_working_dir_holds_the_package_and_the_resolved_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {
        "name": "shipped",
        "store": "./store",
        "ray_address": "127.0.0.1:1",
        "data": {"uri": "data"},
        "teacher": {"name": "resnet9", "weights": "teacher.pt"},
        "student": {"name": "lenet5", "train": {"augment": False}},
    }
    folder = submit.package(config.parse(raw, "<job>"), tmp_path / "wd")
    shipped = yaml.safe_load((folder / submit.JOB_FILE).read_text())
    assert shipped["store"] == str(tmp_path / "store") and shipped["data"]["uri"] == str(tmp_path / "data")
    assert shipped["teacher"]["weights"] == str(tmp_path / "teacher.pt") and shipped["ray_address"] is None
    assert config.parse(shipped, "<shipped>").name == "shipped"  # a valid job file
    assert (folder / "distkd" / "cli.py").is_file() and not list(folder.rglob("__pycache__"))
    assert sorted(os.listdir(folder)) == ["distkd", "job.yaml"]  # no environment, no credentials
    assert submit.entrypoint("distill") == "python -m distkd distill job.yaml"


def test_working_dir_carries_only_the_packages_python_sources(tmp_path, monkeypatch):
    """A stray file beside the sources (git-ignored in an editable checkout) is not shipped to the cluster."""
    source = tmp_path / "src" / "distkd"
    (source / "softlabels" / "__pycache__").mkdir(parents=True)
    for name in ("__init__.py", "cli.py", ".env", "aws-credentials.txt", "softlabels/cache.py", "softlabels/key.pem"):
        (source / name).write_text("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI" if not name.endswith(".py") else "")
    (source / "softlabels" / "__pycache__" / "cache.cpython-311.pyc").write_bytes(b"")
    monkeypatch.setattr(distkd, "__file__", str(source / "__init__.py"))
    raw = {
        "name": "j",
        "store": "s",
        "data": {"uri": "d"},
        "teacher": {"name": "resnet9"},
        "student": {"name": "lenet5", "train": {"augment": False}},
    }
    folder = submit.package(config.parse(raw, "<job>"), tmp_path / "wd")
    shipped = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert shipped == ["distkd/__init__.py", "distkd/cli.py", "distkd/softlabels/cache.py", "job.yaml"]


def test_submit_refuses_a_bad_job_file_before_contacting_the_cluster(tmp_path, capsys):
    job = tmp_path / "bad.yaml"
    job.write_text("name: x\nstore: s\n")
    assert cli.main(["submit", str(job), "--address", "http://127.0.0.1:1"]) == 2
    assert "missing key 'data'" in capsys.readouterr().err
    assert cli.main(["jobs", "status", "--address", "http://127.0.0.1:1"]) == 2


def test_a_driver_joining_a_cluster_ships_the_jobs_code_and_a_local_one_reads_it_in_place(monkeypatch):
    """``ray_address`` without ``submit``: the workers on other nodes get the job's ``code:`` through
    ``py_modules``; a local instance's workers share the driver's disk."""
    started = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **options: started.append(options))
    monkeypatch.setattr(cluster.ray_address, "unreachable", lambda address: None)
    monkeypatch.setattr(cluster, "loopback_only", lambda: None)
    cluster.connect("10.0.0.1:6379", ("/home/me/own_models.py",))
    cluster.connect(None, ("/home/me/own_models.py",))
    joined, local = started
    assert joined["address"] == "10.0.0.1:6379" and joined["runtime_env"]["py_modules"] == ["/home/me/own_models.py"]
    assert local["address"] == "local" and "py_modules" not in (local["runtime_env"] or {})
