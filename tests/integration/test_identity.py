"""Every output is keyed by exactly what made it: one table of config changes and the outputs they move."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from distkd import config, content
from distkd.data.source import Split
from distkd.job import Job

OUTPUTS = ("teacher", "softlabels", "distilled", "scratch", "report")


def stand_in_sha256(uri: str) -> str:
    """A trained model's weights differ exactly when its run differs: hash the run's URI instead of training."""
    return hashlib.sha256(uri.encode()).hexdigest()


def base_job(data: Path) -> dict:
    return {
        "name": "identity",
        "store": "/tmp/distkd-identity-store",
        "data": {"uri": str(data), "limit": 100, "val_limit": 50},
        "teacher": {"name": "resnet9", "kwargs": {"width": 4}, "train": {"epochs": 1, "batch_size": 50}},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 50, "augment": False}},
        "softlabels": {"shard_rows": 50},
        "distill": {"alpha": 0.5, "temperature": 4.0},
    }


def keys(raw: dict) -> dict[str, str]:
    """The hash part of each output's URI (run folders also carry the job's name, for people)."""
    job = Job.prepare(config.parse(raw, "<identity>"))
    teacher = job.teacher_run()
    labels = job.softlabel_spec(teacher.weights_uri, sha256=stand_in_sha256)
    distilled, scratch = job.distilled_run(labels), job.scratch_run()
    models = {"teacher": teacher, "distilled": distilled, "scratch": scratch}
    report = job.eval_spec({role: (run.model, run.weights_uri) for role, run in models.items()}, sha256=stand_in_sha256)
    uris = {**{role: run.uri for role, run in models.items()}, "softlabels": labels.uri, "report": report.uri}
    return {name: uri.rsplit("/", 1)[-1].rsplit("-", 1)[-1] for name, uri in uris.items()}


def set_path(raw: dict, dotted: str, value: object) -> dict:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return raw


EVERYTHING = set(OUTPUTS)
TABLE = [
    # (config field, new value, outputs whose key must change; every other output must keep its key)
    ("name", "other-job", set()),
    ("distill.temperature", 2.0, {"distilled", "report"}),
    ("distill.alpha", 0.9, {"distilled", "report"}),
    ("teacher.train.epochs", 2, {"teacher", "softlabels", "distilled", "report"}),
    ("teacher.kwargs.width", 8, {"teacher", "softlabels", "distilled", "report"}),
    ("student.train.lr", 0.01, {"distilled", "scratch", "report"}),
    ("student.train.seed", 1, {"distilled", "scratch", "report"}),
    ("softlabels.precision", "bf16", {"softlabels", "distilled", "report"}),
    ("softlabels.dtype", "float32", {"softlabels", "distilled", "report"}),
    ("softlabels.views", 2, {"softlabels", "distilled", "report"}),
    ("softlabels.shard_rows", 25, {"softlabels", "distilled", "report"}),
    ("softlabels.actors", 2, set()),
    ("softlabels.batch_size", 64, set()),
    ("data.limit", 200, EVERYTHING),
    ("data.mean", [0.5, 0.5, 0.5], EVERYTHING),
    ("data.val_limit", 20, set()),  # per-epoch validation only: the trained weights do not change
    ("data.class_names", [str(i) for i in range(10)], {"report"}),
    ("evaluate.batch_size", 64, set()),
    ("evaluate.actors", 2, set()),
    ("evaluate.split", "train", {"report"}),
    ("resources.cpus_per_worker", 2.0, set()),
]


@pytest.fixture(scope="module")
def base_keys(cifar10) -> dict[str, str]:
    return keys(base_job(cifar10))


@pytest.mark.parametrize(("field", "value", "moved"), TABLE, ids=[row[0] for row in TABLE])
def test_each_config_field_moves_exactly_the_outputs_it_shapes(cifar10, base_keys, field, value, moved):
    before, after = base_keys, keys(set_path(base_job(cifar10), field, value))
    assert {name for name in OUTPUTS if before[name] != after[name]} == moved


@pytest.fixture
def shard(tmp_path, cifar10) -> Path:
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(cifar10 / "train-00000-of-00005.parquet").slice(0, 100), path, row_group_size=50)
    return path


def rewrite(path: Path, edit) -> None:
    """Rewrite the shard with its images edited, at the same length and with the same footer statistics."""
    table = pq.read_table(path)
    images = table["image"].to_pylist()
    table = table.set_column(table.schema.get_field_index("image"), "image", [edit(images)])
    pq.write_table(table, path, row_group_size=50)


def test_dataset_fingerprint_hashes_content_and_remembers_it(shard):
    first = Split.open(str(shard.parent), "train").fingerprint()

    def swap(images: list[bytes]) -> list[bytes]:
        return [images[1], images[0], *images[2:]]

    rewrite(shard, swap)  # two images swapped: same names, same sizes
    swapped = Split.open(str(shard.parent), "train").fingerprint()
    assert swapped != first

    def flip_a_byte(images: list[bytes]) -> list[bytes]:
        data = bytearray(images[5])
        data[-3] ^= 0xFF  # inside the JPEG's entropy-coded data, same length
        return [*images[:5], bytes(data), *images[6:]]

    rewrite(shard, flip_a_byte)
    assert Split.open(str(shard.parent), "train").fingerprint() not in (first, swapped)


def test_content_hash_is_read_once_until_the_file_changes(shard, monkeypatch):
    expected = hashlib.sha256(shard.read_bytes()).hexdigest()
    assert content.sha256(str(shard)) == expected
    monkeypatch.setattr(content, "read_sha256", lambda uri: pytest.fail(f"{uri} was read again"))
    assert content.sha256(str(shard)) == expected  # from the table: no byte read
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000))
    monkeypatch.setattr(content, "read_sha256", lambda uri: "reread")
    assert content.sha256(str(shard)) == "reread"  # a new modification time is hashed again


def test_report_is_keyed_by_the_weights_content_not_their_path(cifar10, tmp_path):
    job = Job.prepare(config.parse(base_job(cifar10), "<identity>"))
    weights = tmp_path / "student.pt"
    model = job.student.build()
    torch.save(model.state_dict(), weights)
    first = job.eval_spec({"student": (job.student, str(weights))}).uri
    assert job.eval_spec({"student": (job.student, str(weights))}).uri == first
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.save(model.state_dict(), weights)  # overwritten at the same path
    assert job.eval_spec({"student": (job.student, str(weights))}).uri != first


def test_stages_1_and_3_and_the_cache_command_never_import_training(tmp_path):
    """Stages meet in the specs and the store: the soft-label and evaluation stages import nothing of
    stage 2, and ``distkd cache ls`` imports no Ray Train."""
    (tmp_path / "store" / "softlabels").mkdir(parents=True)  # a store with nothing cached
    probe = (
        "import sys\n"
        "import distkd.softlabels.stage, distkd.evaluate.stage\n"
        # the registries config.py validates against (losses, optimisers) are not stage 2's code
        "training = [m for m in sys.modules if m.startswith('distkd.distill')]\n"
        "assert set(training) <= {'distkd.distill', 'distkd.methods.losses', 'distkd.methods.optim'}, training\n"
        "from distkd.cli import main\n"
        "assert main(['cache', 'ls', '--store', sys.argv[1]]) == 0\n"
        "assert 'ray.train' not in sys.modules and 'distkd.distill.loop' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "store")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
