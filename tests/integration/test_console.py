"""What the console prints: progress as plain lines, epoch lines, the MLflow refusal, the report's training
section, and nothing but distkd's own lines when a command starts a local Ray instance of its own."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tqdm import tqdm

from distkd import config, console
from distkd.evaluate.report import write_report
from distkd.models import sources
from distkd.tracking import EpochPrinter
from tests.unit.test_report import make_models

ROOT = Path(__file__).resolve().parents[2]
# "Ray's logs: PATH ...", "[stage] ...", and the outputs a stage command lists ("    report: URI")
DISTKD_LINE = re.compile(r"Ray's logs: \S+.*|\[[\w-]+\] .+|\s*\w+: \S+")


def test_progress_becomes_plain_lines_when_stdout_is_not_a_terminal(monkeypatch):
    out = io.StringIO()  # not a tty
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(console, "PLAIN_INTERVAL", 0)
    batches = [list(range(100))] * 5
    assert list(console.progress(batches, 500, "teacher")) == batches
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == len(set(lines))
    assert re.fullmatch(r"\[teacher\] 500/500 rows 100%, [\d.]+ rows/s, ETA 00:00", lines[-1])
    assert len(lines) <= 6  # at most one line per count of rows done


def test_plain_lines_stay_plain_beside_a_bar_left_open(monkeypatch):
    """A bar that an earlier generator left open (a progress abandoned part-way, closed only when collected) must
    not shift the next one's lines: tqdm would give it position 1 and write cursor moves into the log."""
    left_open = tqdm(total=1, file=io.StringIO())
    try:
        test_progress_becomes_plain_lines_when_stdout_is_not_a_terminal(monkeypatch)
    finally:
        left_open.close()


def test_epoch_line_shows_loss_parts_accuracy_and_speed():
    metrics = {"epoch": 3, "loss": 1.5, "kd": 1.0, "ce": 0.5, "val_accuracy": 0.625, "samples_per_s": 812.4}
    line = console.epoch_line("student-kd", 15, {**metrics, "seconds": 75.0})
    assert line == (
        "[student-kd] epoch 3/15  loss 1.5000 (kd 1.0000 + ce 0.5000)  val_acc 0.6250  812 samples/s  1m15s"
    )


def test_mlflow_asked_for_but_not_installed_is_refused_before_ray(monkeypatch):
    monkeypatch.setattr("distkd.config.mlflow_installed", lambda: False)  # whether or not it is here
    raw = {
        "name": "j",
        "store": "store",
        "data": {"uri": "data"},
        "teacher": {"name": "resnet9"},
        "student": {"name": "lenet5"},
        "tracking": {"mlflow": "http://127.0.0.1:5000"},
    }
    with pytest.raises(config.ConfigError, match=r"tracking\.mlflow.*mlflow is not installed"):
        config.parse(raw, "<job>")


def test_report_shows_training_settings_cost_and_curves(tmp_path):
    models = make_models()
    for i, m in enumerate(models):
        m["history"] = [
            {"epoch": e, "loss": 2.0 / e + i, "val_accuracy": 0.3 + 0.1 * e, "seconds": 10.0 + i} for e in (1, 2, 3)
        ]
    models[2]["settings"] = {
        "alpha": 0.5,
        "temperature": 4.0,
        "labels": "dense float16",
        "views": 2,
        "label_rows_per_second": 2400.0,
    }
    models[2]["trained_rows"] = {"labelled": 1200, "unlabelled": 300}  # rows without labels: issue 33
    paths = write_report(tmp_path, models)
    assert paths["training_curves.png"].read_bytes().startswith(b"\x89PNG")
    md = paths["report.md"].read_text()
    assert "| tiny distilled | 3 | 1,200 | 300 | 0.5 | 4 | dense float16 | 2 | 2.40K | 12.0 | 36 s |" in md
    assert "| resnet teacher | 3 |  |  |  |  |  |  |  | 10.0 | 30 s |" in md
    assert 'alt="training_curves.png"' in paths["report.html"].read_text()


def test_runs_that_train_at_once_share_one_queue_and_each_prints_its_own_epochs(ray_cluster, capsys):
    """The distilled student and its baseline train at once: their controllers send their epochs through the
    process's one queue (an actor, a process of its own), and each epoch line and ``latest`` is its own run's."""
    scratch, distilled = EpochPrinter("student-scratch", 2), EpochPrinter("student-kd", 2)
    assert scratch.lines is distilled.lines
    with scratch, distilled:
        for epoch, printer in ((1, distilled), (1, scratch), (2, scratch), (2, distilled)):
            loss = epoch + (printer is distilled) / 2
            metrics = {"epoch": epoch, "loss": loss, "kd": 0.0, "ce": loss, "val_accuracy": 0.5}
            printer.callback.after_report(None, [{**metrics, "samples_per_s": 10.0, "seconds": 1.0}], None)
    printed = capsys.readouterr().out
    assert (scratch.latest["loss"], distilled.latest["loss"]) == (2, 2.5)
    for label, losses in (("student-scratch", ("1.0000", "2.0000")), ("student-kd", ("1.5000", "2.5000"))):
        lines = [line for line in printed.splitlines() if line.startswith(f"[{label}]")]
        assert [line.split("loss ")[1][:6] for line in lines] == list(losses)


# a quiet console over a local Ray of 1 CPU whose 16 idle actors make the raylet warn at 8, 9, 10 ... worker
# processes: its log deduplicator prints the first notice and holds the rest back until Ray shuts down
REPEATED_NOTICES = """
import sys, time
from distkd import address, console
address.loopback_only(None)
logs = console.RayLogs(verbose=False)
import ray
ray.init(num_cpus=1, include_dashboard=False, **logs.ray_init_options())
print(f"Ray's logs: {logs.open()}")
Idle = ray.remote(num_cpus=0)(type("Idle", (), {"ping": lambda self: 1}))
actors = []
for _ in range(16):
    actors.append(Idle.remote())
    ray.get(actors[-1].ping.remote())
print("[idle] 16 actors")
time.sleep(1)  # the last notices on their way to this driver
sys.exit(0)  # Ray shuts down in its exit hook
"""


def on_a_ray_of_its_own(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Python run with ``argv`` in a process that starts a local Ray instance of its own, not the test session's;
    its output, once it has ended well."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_notices_ray_holds_back_until_it_shuts_down_go_to_the_log():
    done = on_a_ray_of_its_own(["-c", REPEATED_NOTICES], ROOT)
    assert done.stdout.splitlines()[1:] == ["[idle] 16 actors"]
    log = Path(re.match(r"Ray's logs: (\S+)", done.stdout).group(1)).read_text()
    assert "PYTHON worker processes have been started" in log


def test_a_fresh_local_run_prints_only_distkd_lines(cifar10, tmp_path):
    """A command that starts its own local Ray instance (Ray's token-auth notice at ray.init, the C++ core's
    ``core_worker.cc`` line as Ray Data starts an actor pool): every line it prints is distkd's, on stdout."""
    weights = tmp_path / "lenet5.pt"
    torch.save(sources.build("lenet5", 10, 3, 32).state_dict(), weights)
    job = {
        "name": "quiet",
        "store": str(tmp_path / "store"),
        "stages": ["evaluate"],
        "data": {"uri": str(cifar10), "limit": 100},
        "teacher": {"name": "lenet5"},
        "student": {"name": "lenet5"},
        "evaluate": {"batch_size": 50, "models": [{"role": "teacher", "name": "lenet5", "weights": str(weights)}]},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    command = "import sys; from distkd.cli import main; sys.exit(main(sys.argv[1:]))"
    done = on_a_ray_of_its_own(["-c", command, "evaluate", str(path)], tmp_path)
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Ray's logs: ") and "[evaluate] done in" in done.stdout
    assert [line for line in lines if not DISTKD_LINE.fullmatch(line)] == []
