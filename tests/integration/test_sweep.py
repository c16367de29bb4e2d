"""``distkd sweep`` on the session's Ray: a grid of two students on one teacher's cached labels, trained as
concurrent Ray Tune trials, each an ordinary run in the store, reused by a rerun."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from distkd import storage, sweep
from distkd.models.registry import MODELS

# Two axes, two trials: both trials run at once on the session's 2 CPUs, and each trial is a Ray Train run of its
# own, so a 2x2 grid only added a second round of the same; the product of more values: the unit tests
GRID = ["distill.alpha=0.5,0.9", "distill.temperature=2"]


def job_file(cifar10: Path, tmp_path: Path) -> str:
    """The sweep's job; its teacher has weights (untrained: what a sweep reuses does not depend on what the
    teacher learned), so stage 0 trains none, which is the pipeline tests' part."""
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(MODELS["lenet5"](num_classes=10).state_dict(), teacher)
    job = {
        "name": "sweep",
        "store": str(tmp_path / "store"),
        "data": {"uri": str(cifar10), "limit": 200, "val_limit": 100},
        "teacher": {"name": "lenet5", "weights": str(teacher)},
        "student": {"name": "lenet5", "train": {"epochs": 1, "batch_size": 50, "lr": 0.02, "augment": False}},
        "distill": {"baseline": False},
        "softlabels": {"batch_size": 100},
        # One CPU a trial: two at once on the session's 2 CPUs only when a trial's own process holds none
        "resources": {"cpus_per_worker": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_grid_trains_concurrently_once_and_a_rerun_reuses_every_trial(ray_cluster, cifar10, tmp_path, capsys):
    path, axes = job_file(cifar10, tmp_path), sweep.parse_axes(GRID)
    base, jobs = sweep.plan(path, axes)
    out, records = sweep.run(base, jobs, [a.key for a in axes])
    assert len(records) == 2 and all(r["trained"] and r["role"] == "student-kd" for r in records)
    assert len({r["uri"] for r in records}) == 2 and all(storage.is_committed(r["uri"]) for r in records)
    assert sweep.overlapping(records), sorted((r["start"], r["end"]) for r in records)
    assert "[sweep] 2/2 student-kd" in capsys.readouterr().out  # the sweep's progress on the console
    report = Path(out, "report.md").read_text()
    assert "| 0.5 | 2 |" in report and Path(out, "accuracy.png").stat().st_size > 0

    again, rerun = sweep.run(*sweep.plan(path, axes), [a.key for a in axes])
    assert again == out and not any(r["trained"] for r in rerun)
    assert [r["accuracy"] for r in rerun] == [r["accuracy"] for r in records]
