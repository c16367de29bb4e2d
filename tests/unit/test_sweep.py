"""``distkd sweep``'s grid: parsing, combinations, overrides checked against the job before any work, the report."""

from __future__ import annotations

import pytest

from distkd import sweep
from distkd.config import ConfigError
from distkd.resources import at_once

RAW = {
    "name": "j",
    "store": "/tmp/store",
    "data": {"uri": "/tmp/data"},
    "teacher": {"name": "resnet9"},
    "student": {"name": "lenet5", "train": {"augment": False}},
}


def test_axes_read_values_as_yaml():
    axes = sweep.parse_axes(["distill.alpha=0.5,0.9", "student.train.seed=0,1,2", "distill.baseline=true"])
    assert [(a.key, a.values) for a in axes] == [
        ("distill.alpha", (0.5, 0.9)),
        ("student.train.seed", (0, 1, 2)),
        ("distill.baseline", (True,)),
    ]


@pytest.mark.parametrize(
    ("items", "named"),
    [
        (["distill.alpha"], "expected KEY=V1,V2"),
        (["distill.alpha="], "expected KEY=V1,V2"),
        (["teacher.train.epochs=1,2"], "--grid teacher.train.epochs: a sweep trains students"),
        (["distill.alpha=0.5", "distill.alpha=0.9"], "--grid distill.alpha: given twice"),
        (["distill.alpha=0.5,0.5"], "a value is listed twice"),
        ([], "at least one --grid"),
    ],
)
def test_bad_axes_are_refused(items, named):
    with pytest.raises(ConfigError, match=named):
        sweep.parse_axes(items)


def test_grid_is_every_combination_and_random_draws_distinct_ones():
    axes = sweep.parse_axes(["distill.alpha=0.5,0.9", "distill.temperature=2,4", "student.train.seed=0,1"])
    grid = sweep.combinations(axes)
    assert len(grid) == 8 and len({tuple(c.values()) for c in grid}) == 8
    assert grid[0] == {"distill.alpha": 0.5, "distill.temperature": 2, "student.train.seed": 0}
    drawn = sweep.combinations(axes, samples=3, seed=7)
    assert len(drawn) == 3 and all(c in grid for c in drawn) and len({tuple(c.values()) for c in drawn}) == 3
    assert drawn == sweep.combinations(axes, samples=3, seed=7)  # the seed fixes the draw
    assert len(sweep.combinations(axes, samples=50)) == 8  # no more than the grid holds
    with pytest.raises(ConfigError, match="--random 0"):
        sweep.combinations(axes, samples=0)


def test_overrides_set_dotted_keys_without_touching_the_job():
    out = sweep.overridden(RAW, {"student.train.seed": 3, "distill.alpha": 0.7})
    assert out["student"]["train"] == {"augment": False, "seed": 3} and out["distill"] == {"alpha": 0.7}
    assert RAW["student"]["train"] == {"augment": False} and "distill" not in RAW


def test_trial_configs_are_checked_as_job_files():
    assert sweep.trial_config(RAW, {"distill.temperature": 2}, "job.yaml").distill.temperature == 2
    with pytest.raises(ConfigError, match="unknown key 'student.train.epoch'"):
        sweep.trial_config(RAW, {"student.train.epoch": 3}, "job.yaml")
    with pytest.raises(ConfigError, match=r"(?s)job.yaml with distill.alpha=2: .*key 'distill.alpha'"):
        sweep.trial_config(RAW, {"distill.alpha": 2}, "job.yaml")
    with pytest.raises(ConfigError, match="--grid student.name.x: 'name' is not a mapping"):
        sweep.trial_config(RAW, {"student.name.x": 1}, "job.yaml")


def test_concurrency_is_what_the_cluster_holds_of_the_jobs_resources():
    assert at_once({"CPU": 0.5, "GPU": 0}, {"CPU": 2.0}) == 4
    assert at_once({"CPU": 0.501}, {"CPU": 2.0}) == 3  # a share over a fraction of the CPUs counts
    assert at_once({"CPU": 2, "GPU": 1}, {"CPU": 16.0, "GPU": 1.0}) == 1
    assert at_once({"CPU": 4, "GPU": 0}, {"CPU": 2.0}) == 1  # at least one


def test_a_trial_holds_the_students_resources_not_the_teachers():
    raw = {
        **RAW,
        "resources": {"cpus_per_worker": 2},
        "student": {**RAW["student"], "resources": {"cpus_per_worker": 0.5}},
    }
    job = sweep.trial_config(raw, {}, "job.yaml")
    assert sweep.trial_resources(job.training_resources("student")) == {"CPU": 0.5, "GPU": 0}
    assert job.training_resources("teacher").cpus_per_worker == 2


def record(role: str, accuracy: float, uri: str, **overrides) -> dict:
    return {"overrides": overrides, "role": role, "uri": uri, "accuracy": accuracy, "trained": False}


def test_report_pairs_each_distilled_trial_with_its_seeds_baseline(tmp_path):
    records = [
        record("student-kd", 0.60, "kd0", **{"distill.alpha": 0.5, "student.train.seed": 0}),
        record("student-kd", 0.64, "kd1", **{"distill.alpha": 0.5, "student.train.seed": 1}),
        record("student-scratch", 0.57, "s0", **{"student.train.seed": 0}),
        record("student-scratch", 0.60, "s1", **{"student.train.seed": 1}),
    ]
    assert sweep.gains(records) == pytest.approx({"kd0": 0.03, "kd1": 0.04})
    text = sweep.markdown(["distill.alpha", "student.train.seed"], records)
    # mean 62.00, sample standard deviation 2.83; gains 3 and 4 points: mean 3.50, spread 0.71
    assert "| 0.5 | 62.00 ± 2.83 (n=2) | 3.50 ± 0.71 (n=2) |" in text
    assert "From scratch: 58.50 ± 2.12 (n=2)." in text
    sweep.write_report(str(tmp_path), ["distill.alpha", "student.train.seed"], records)
    assert {p.name for p in tmp_path.iterdir()} == {"report.md", "accuracy.png", "sweep.json"}


def test_overlap_of_trial_spans():
    spans = [{"trained": True, "start": 0, "end": 10}, {"trained": True, "start": 5, "end": 12}]
    assert sweep.overlapping(spans)
    assert not sweep.overlapping([{"trained": True, "start": 0, "end": 4}, {"trained": True, "start": 5, "end": 6}])


def test_the_console_gets_a_line_as_each_trial_starts_and_ends(capsys):
    from types import SimpleNamespace

    pending = [sweep.Trial({"distill.alpha": 0.5}, SimpleNamespace(role="student-kd"))]
    lines, trial = sweep.trial_lines(pending), SimpleNamespace(config={"trial": 0})
    lines.on_trial_start(0, [], trial)
    lines.on_trial_complete(0, [], trial)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[sweep] training student-kd distill.alpha=0.5"
    assert out[1].startswith("[sweep] 1/1 student-kd distill.alpha=0.5: done in ")


def test_a_failed_trial_says_why_in_one_line(capsys):
    """A trial's error comes back wrapped twice by Ray (its task's, then the trial's): the line gives what raised."""
    from types import SimpleNamespace

    from ray.exceptions import RayTaskError

    from distkd.distill.fit import Diverged

    inner = RayTaskError("train_run", "Traceback ...\nDiverged: ...", Diverged("epoch 2: loss nan at lr 10"))
    outer = RayTaskError("_train", "Traceback (most recent call last):\n  ...", inner.as_instanceof_cause())
    pending = [sweep.Trial({"distill.alpha": 0.5}, SimpleNamespace(role="student-kd"))]
    lines = sweep.trial_lines(pending)
    trial = SimpleNamespace(config={"trial": 0}, get_pickled_error=lambda: outer.as_instanceof_cause())
    lines.on_trial_start(0, [], trial)
    lines.on_trial_error(0, [], trial)
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith("[sweep] 1/1 student-kd distill.alpha=0.5: failed (Diverged: epoch 2: loss nan at lr 10)")
    assert "Traceback" not in printed
    assert sweep.failure(None) == "no error recorded: see Ray's logs"
